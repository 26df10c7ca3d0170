"""The pack's subgraph blueprints (``subgraphs/``), built in the real frontend.

  python -m tools.blueprints            start ComfyUI with the pack and the current frontend,
                                        build each blueprint there and write subgraphs/<name>.json

ComfyUI serves every ``<pack>/subgraphs/*.json`` at ``/global_subgraphs`` (0.3.75 already
does, ``app/subgraph_manager.py``), and the frontend lists each one in its node library
under *Subgraph Blueprints*, named after the file. A blueprint file is a workflow holding one
subgraph node and its definition (``definitions.subgraphs``) — what the frontend's own
*Publish Subgraph* writes — so this tool builds each graph with the frontend's LiteGraph
API, lets the frontend convert the inner nodes to a subgraph (``convertToSubgraph``: links
that cross the selection become the subgraph's inputs and outputs) and serialises it as
*Publish Subgraph* does. tests/host/test_blueprints.py loads the files in the frontend.

Each blueprint: the nodes (key, type, position, widget values), the links, which nodes go
inside (the nodes left outside only give the subgraph its inputs and outputs) and the names of
the inputs and outputs it ends up with.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

OUT = REPO / "subgraphs"

INTERPOLATE_X4 = {
    # the frontend names a blueprint after its file; comfy-cli's archive drops non-ASCII file names
    "name": "Kandinsky Video Interpolate x4",
    "description": ("Four times the frame rate of any video: N frames at fps in, 4N-3 frames at 4 x fps out, at "
                    "the input's size (Kandinsky Video 1.1's interpolation U-Net; the model files go in "
                    "models/kandinsky_video/)."),
    "aliases": ["frame interpolation", "interpolate video", "интерполяция кадров", "帧插值", "Kandinsky", "KV 1.1"],
    "nodes": [
        ("source", "GetVideoComponents", [0, 0], {}),
        ("movq", "KandinskyVideoMoVQLoader", [350, -250], {"movq_name": "movq.pt"}),
        ("unet", "KandinskyVideoInterpolationUNetLoader", [350, 0], {"unet_name": "interpolation.pt"}),
        ("video_movq", "KandinskyVideoVideoMoVQLoader", [350, 250], {"movq_name": "video_movq.pt"}),
        ("encode", "KandinskyVideoEncodeVideo", [750, -150], {"max_side": 512}),
        ("interpolate", "KandinskyVideoInterpolate", [1100, -150], {"skip_frames": -1, "window": 16}),
        ("decode", "KandinskyVideoDecode", [1450, -150], {}),
        ("sink", "CreateVideo", [1800, 0], {}),
    ],
    "links": [
        ("source", "images", "encode", "images"), ("source", "fps", "encode", "fps"),
        ("movq", "movq", "encode", "movq"), ("unet", "interpolation_unet", "encode", "interpolation_unet"),
        ("unet", "interpolation_unet", "interpolate", "interpolation_unet"), ("encode", "latent", "interpolate", "latent"),
        ("video_movq", "video_movq", "decode", "video_movq"), ("interpolate", "latent", "decode", "latent"),
        ("decode", "images", "sink", "images"), ("decode", "fps", "sink", "fps"),
    ],
    "inner": ["movq", "unet", "video_movq", "encode", "interpolate", "decode"],
    "inputs": ["images", "fps"],
    "outputs": ["images", "fps"],
}

TEXT_TO_VIDEO = {
    "name": "Kandinsky Video Text to Video",
    "description": ("Text to a 5.5 s video at 8 fps (45 frames, 512x512) with Kandinsky Video 1.1: prompt and "
                    "seed in, frames and their frame rate out (to Create Video). The model files go in "
                    "models/kandinsky_video/; open the blueprint to change any stage."),
    "aliases": ["text to video", "t2v", "текст в видео", "文生视频", "Kandinsky", "Кандинский", "康定斯基", "KV 1.1"],
    "nodes": [
        ("prompt", "PrimitiveStringMultiline", [-400, 0], {"value": "a red panda climbing a snowy pine tree"}),
        ("seed", "PrimitiveInt", [-400, 300], {"value": 0}),
        ("text_encoder", "KandinskyVideoTextEncoderLoader", [0, -300],
         {"text_encoder_name": "flan-ul2", "projections_name": "t5_projections.pt"}),
        ("keyframe_unet", "KandinskyVideoKeyframeUNetLoader", [0, -50], {"unet_name": "t2v.pt"}),
        ("movq", "KandinskyVideoMoVQLoader", [0, 200], {"movq_name": "movq.pt"}),
        ("interpolation_unet", "KandinskyVideoInterpolationUNetLoader", [0, 450], {"unet_name": "interpolation.pt"}),
        ("video_movq", "KandinskyVideoVideoMoVQLoader", [0, 700], {"movq_name": "video_movq.pt"}),
        ("encode_text", "KandinskyVideoTextEncode", [400, -300], {}),
        ("first_frame", "KandinskyVideoFirstFrame", [750, -300], {}),
        ("encode_first", "KandinskyVideoEncodeFirstFrame", [1100, -300], {}),
        ("keyframes", "KandinskyVideoKeyframes", [1450, -300], {}),
        ("interpolate", "KandinskyVideoInterpolate", [1800, -300], {"skip_frames": 3}),
        ("decode", "KandinskyVideoDecode", [2150, -300], {}),
        ("sink", "CreateVideo", [2500, 0], {}),
    ],
    "links": [
        ("text_encoder", "text_encoder", "encode_text", "text_encoder"), ("prompt", "STRING", "encode_text", "prompt"),
        ("keyframe_unet", "keyframe_unet", "first_frame", "keyframe_unet"), ("movq", "movq", "first_frame", "movq"),
        ("encode_text", "conditioning", "first_frame", "conditioning"), ("seed", "INT", "first_frame", "seed"),
        ("movq", "movq", "encode_first", "movq"), ("first_frame", "image", "encode_first", "image"),
        ("keyframe_unet", "keyframe_unet", "keyframes", "keyframe_unet"),
        ("encode_text", "conditioning", "keyframes", "conditioning"),
        ("encode_first", "first_frame", "keyframes", "first_frame"), ("seed", "INT", "keyframes", "seed"),
        ("interpolation_unet", "interpolation_unet", "interpolate", "interpolation_unet"),
        ("keyframes", "latent", "interpolate", "latent"), ("encode_text", "conditioning", "interpolate", "conditioning"),
        ("seed", "INT", "interpolate", "seed"),
        ("video_movq", "video_movq", "decode", "video_movq"), ("interpolate", "latent", "decode", "latent"),
        ("decode", "images", "sink", "images"), ("decode", "fps", "sink", "fps"),
    ],
    "inner": ["text_encoder", "keyframe_unet", "movq", "interpolation_unet", "video_movq", "encode_text",
              "first_frame", "encode_first", "keyframes", "interpolate", "decode"],
    "inputs": ["prompt", "seed"],
    "outputs": ["images", "fps"],
}

BLUEPRINTS = (INTERPOLATE_X4, TEXT_TO_VIDEO)

#: Builds one blueprint in the page and returns the file's content (see the module docstring).
BUILD_JS = """(spec) => {
    const graph = window.app.graph;
    graph.clear();
    const made = {};
    for (const [key, type, pos, widgets] of spec.nodes) {
        const node = LiteGraph.createNode(type);
        if (!node) throw new Error(`unknown node type ${type}`);
        node.pos = pos;
        graph.add(node);
        for (const [name, value] of Object.entries(widgets)) {
            const widget = (node.widgets || []).find(w => w.name === name);
            if (!widget) throw new Error(`${type} has no widget ${name}`);
            widget.value = value;
        }
        made[key] = node;
    }
    for (const [from, output, to, input] of spec.links) {
        const out = made[from].findOutputSlot(output), inp = made[to].findInputSlot(input);
        if (out < 0 || inp < 0) throw new Error(`no slot ${from}.${output} -> ${to}.${input}`);
        if (!made[from].connect(out, made[to], inp)) throw new Error(`cannot link ${from}.${output} -> ${to}.${input}`);
    }
    const { node } = graph.convertToSubgraph(new Set(spec.inner.map(k => made[k])));
    // the frontend also promotes inner seed widgets to inputs: keep only the blueprint's own
    for (const input of [...node.subgraph.inputs])
        if (!spec.inputs.includes(input.name)) node.subgraph.removeInput(input);
    node.title = spec.name;
    node.subgraph.name = spec.name;
    node.subgraph.description = spec.description;
    const { nodes, subgraphs } = window.app.canvas._serializeItems([node]);
    return { revision: 0, last_node_id: node.id, last_link_id: 0, nodes, links: [], version: 0.4,
             definitions: { subgraphs },
             extra: { BlueprintDescription: spec.description, BlueprintSearchAliases: spec.aliases } };
}"""


def build(frontend) -> dict[str, dict]:
    """``{file name: blueprint}`` built in an open :class:`ComfyFrontend` (frontend 1.58)."""
    return {f"{spec['name']}.json": frontend.browser.call(BUILD_JS, spec) for spec in BLUEPRINTS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    from tools.harness import Browser, ComfyFrontend, ComfyHost
    from tools.harness.install import ensure_frontend

    with ComfyHost(frontend_root=ensure_frontend()) as host, Browser() as browser:
        files = build(ComfyFrontend(host, browser).open())
    OUT.mkdir(exist_ok=True)
    for name, blueprint in files.items():
        (OUT / name).write_text(json.dumps(blueprint, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"wrote subgraphs/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
