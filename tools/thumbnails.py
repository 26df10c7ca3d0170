#!/usr/bin/env python
"""Template thumbnails: a screenshot of each workflow of ``workflows/`` as the real ComfyUI
frontend shows it when the template opens, saved beside it as ``<name>.jpg``.

    python -m tools.thumbnails              # every template
    python -m tools.thumbnails NAME ...     # some of them (file stems or paths)
    python -m tools.thumbnails --check      # only say which templates have no thumbnail (exit 1)

How ComfyUI finds them (ComfyUI 0.3.75 ``app/custom_node_manager.py``, frontend 1.32.9 and
1.58.1 ``workflowTemplatesStore.ts`` / ``useTemplateWorkflows.ts``): ``/api/workflow_templates``
lists every ``*.json`` in a custom node's ``example_workflows/`` folder (also ``example/``,
``examples/``, ``workflow/``, ``workflows/``), keyed by the pack's folder name under
``custom_nodes/``; the template browser shows each one under that name with the thumbnail
``/api/workflow_templates/<pack folder>/<name>.jpg``. Custom-node thumbnails are always
JPEG with the workflow's own name (the ``.jpg`` extension is fixed in the frontend).
ComfyUI 0.3.75 serves that folder statically; the newest ``custom_node_manager.py`` read
for this (Comfy-Org/ComfyUI at fcd026bf) looks each file up by name and answers only
``.json`` requests, so a ComfyUI with that change shows its default picture instead.

What it does: starts the pinned ComfyUI (tools/harness) with this pack and a tiny
random-weight release under the official file names (so every model list holds the
templates' files and no missing-model dialog opens), opens the frontend in headless
Chromium with a 1400x757 viewport (a 1400x900 window) at a device scale factor of 2, loads each template exactly as a
user opening it would (its saved view, ``extra.ds``, included) and captures the part of
the canvas that holds the graph, with the minimap, node-source badges and canvas info
switched off. The image is scaled to at most ``--width`` pixels and written as JPEG.
Needs Chromium (``apt-get install chromium`` or ``$KV_CHROMIUM``).
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKFLOWS = REPO / "workflows"
#: The viewport (CSS pixels) the templates' saved views are made for: a 1400x900 headless window.
VIEWPORT = (1400, 757)
#: the 4-bit text encoder the 16 GB template names (models/text_encoders/)
SMALL_TEXT_ENCODER = "flan_ul2_encoder_q4_0.gguf"


def write_small_text_encoder(release: Path) -> Path:
    """The tiny release's T5 as ``SMALL_TEXT_ENCODER`` beside it (once; needs the gguf
    package), for the templates that name it."""
    from kv_core.convert import convert_t5_encoder

    path = Path(release) / SMALL_TEXT_ENCODER
    if not path.is_file():
        convert_t5_encoder(Path(release) / "flan-ul2", path, dtype="q4_0")
    return path


RELEASE_FILES = ("configs.json", "t2v.pt", "interpolation.pt", "movq.pt", "video_movq.pt",
                 "t5_projections.pt", "flan-ul2")
#: The input video the any-video template names (its Load Video), which the tests and this tool put
#: into ComfyUI's input/ folder: see example_video_source.
EXAMPLE_VIDEO = "kandinsky_video_example.webm"


def example_video_source() -> Path:
    """A real video clip that no one in this project made: the smallest ``.webm`` shipped in
    ComfyUI's own frontend package (``comfyui_frontend_package``, a requirement of ComfyUI;
    in 1.32.9 ``images/cloud-subscription.webm``: 25 frames, 8 fps, 768x768, VP9).
    ``FileNotFoundError`` when that package is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("comfyui_frontend_package")
    roots = list(spec.submodule_search_locations or []) if spec else []
    clips = sorted((p for root in roots for p in Path(root).rglob("*.webm")), key=lambda p: p.stat().st_size)
    if not clips:
        raise FileNotFoundError("no .webm in comfyui_frontend_package (pip install comfyui-frontend-package, "
                                "which ComfyUI's requirements.txt names)")
    return clips[0]


#: Frontend settings for a clean picture (the saved view itself is left alone).
SCREENSHOT_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.NodeBadge.NodeSourceBadgeMode": "None",
    "Comfy.NodeBadge.NodeIdBadgeMode": "None",
    "Comfy.Graph.CanvasInfo": False,
    "Comfy.Graph.CanvasMenu": False,
}

#: JavaScript: the screen rectangles (CSS pixels) of every node (title included) and group.
GRAPH_RECTS = """() => {
    const canvas = window.app.canvas, ds = canvas.ds;
    const box = canvas.canvas.getBoundingClientRect();
    const toScreen = (x, y, w, h) => ({
        left: box.left + (x + ds.offset[0]) * ds.scale, top: box.top + (y + ds.offset[1]) * ds.scale,
        right: box.left + (x + w + ds.offset[0]) * ds.scale, bottom: box.top + (y + h + ds.offset[1]) * ds.scale,
    });
    const graph = window.app.graph;
    const nodes = graph.nodes.map(n => {
        const b = n.getBounding ? n.getBounding() : [n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT,
                                                   n.size[0], n.size[1] + LiteGraph.NODE_TITLE_HEIGHT];
        return {id: n.id, type: n.type, ...toScreen(b[0], b[1], b[2], b[3])};
    });
    const groups = (graph.groups || graph._groups || []).map(g => {
        const b = g._bounding || g.bounding;
        return {title: g.title, ...toScreen(b[0], b[1], b[2], b[3])};
    });
    return {nodes, groups, scale: ds.scale, width: window.innerWidth, height: window.innerHeight};
}"""

#: JavaScript: nodes not fully visible — a corner or the centre is off the window or
#: covered by the frontend's own panels (the element there is not the graph canvas).
HIDDEN_NODES = """(rects) => {
    const canvas = window.app.canvas.canvas;
    const onGraph = (x, y) => {  // the canvas, a widget drawn over it as HTML, or a node in the Vue renderer
        const el = document.elementFromPoint(x, y);
        return !!el && (el === canvas || !!el.closest('.dom-widget, [data-node-id]'));
    };
    const hidden = [];
    for (const r of rects.nodes) {
        const i = 3, pts = [[r.left + i, r.top + i], [r.right - i, r.top + i], [r.left + i, r.bottom - i],
                            [r.right - i, r.bottom - i], [(r.left + r.right) / 2, (r.top + r.bottom) / 2]];
        const off = pts.filter(([x, y]) => x < 0 || y < 0 || x >= window.innerWidth || y >= window.innerHeight
                                          || !onGraph(x, y));
        if (off.length) hidden.push(`${r.type} #${r.id}`);
    }
    return hidden;
}"""


def template_names(names: list[str] | None = None) -> list[str]:
    """Stems of the templates to process (all of ``workflows/*.json`` by default)."""
    if not names:
        return sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    out = []
    for name in names:
        stem = Path(name).stem
        if not (WORKFLOWS / f"{stem}.json").is_file():
            raise SystemExit(f"no template workflows/{stem}.json")
        out.append(stem)
    return out


def thumbnail_path(name: str) -> Path:
    """Where the template browser looks for the thumbnail of template ``name``."""
    return WORKFLOWS / f"{name}.jpg"


def graph_rects(frontend) -> dict:
    """Screen rectangles of the loaded graph's nodes and groups (see :data:`GRAPH_RECTS`)."""
    return frontend.browser.call(GRAPH_RECTS)


def hidden_nodes(frontend) -> list[str]:
    """Nodes of the loaded graph that are not wholly in view (``["Type #id", ...]``)."""
    return frontend.browser.call(HIDDEN_NODES, graph_rects(frontend))


def graph_box(rects: dict, margin: float = 8.0) -> dict:
    """The rectangle (CSS pixels, clipped to the window) around every node and group."""
    items = rects["nodes"] + rects["groups"]
    left = max(0.0, min(r["left"] for r in items) - margin)
    top = max(0.0, min(r["top"] for r in items) - margin)
    right = min(float(rects["width"]), max(r["right"] for r in items) + margin)
    bottom = min(float(rects["height"]), max(r["bottom"] for r in items) + margin)
    return {"x": left, "y": top, "width": right - left, "height": bottom - top}


def capture(frontend, workflow: dict, out: Path, *, width: int = 1600, quality: int = 90) -> Path:
    """Load ``workflow`` as a user opening it would, screenshot the graph, write a JPEG."""
    from PIL import Image

    frontend.load_workflow(workflow)
    frontend.close_dialogs()
    browser = frontend.browser
    browser.evaluate("window.app.graph.setDirtyCanvas(true, true), true")
    time.sleep(1.0)  # one animation frame is enough; fonts and images may take longer
    hidden = hidden_nodes(frontend)
    if hidden:
        raise RuntimeError(f"{out.stem}: not all of the graph is in view when it opens: {hidden} "
                           "(fix the template's extra.ds or layout)")
    clip = graph_box(graph_rects(frontend))
    image = Image.open(io.BytesIO(browser.screenshot(clip=clip))).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.save(out, "JPEG", quality=quality, optimize=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="templates (default: all of workflows/)")
    parser.add_argument("--check", action="store_true", help="only list templates without a thumbnail")
    parser.add_argument("--width", type=int, default=1600, help="largest image width in pixels")
    args = parser.parse_args(argv)
    names = template_names(args.names)
    if args.check:
        missing = [n for n in names if not thumbnail_path(n).is_file()]
        for n in missing:
            print(f"missing: {thumbnail_path(n).relative_to(REPO)}")
        return 1 if missing else 0

    from kv_core.tiny import write_tiny_release
    from tools.harness import Browser, ComfyFrontend, ComfyHost, ensure_comfyui, find_chromium

    if not find_chromium():
        print("no Chromium found: apt-get install chromium, or set KV_CHROMIUM", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kv-thumbnails-") as tmp:
        release = Path(tmp) / "release"
        write_tiny_release(release)
        host = ComfyHost(ensure_comfyui(), models={"kandinsky_video": [release / n for n in RELEASE_FILES],
                                                   "text_encoders": [write_small_text_encoder(release)]})
        with host:
            shutil.copy(host.comfyui / "input" / "example.png", host.input_dir / "example.png")
            shutil.copy(example_video_source(), host.input_dir / EXAMPLE_VIDEO)
            for key, value in SCREENSHOT_SETTINGS.items():
                host.post(f"/settings/{key}", value).raise_for_status()
            # twice the pixels: the canvas is drawn at device scale 2, so text stays sharp
            # after scaling down
            with Browser(viewport=VIEWPORT, device_scale_factor=2) as browser:
                frontend = ComfyFrontend(host, browser).open()
                for name in names:
                    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
                    path = capture(frontend, workflow, thumbnail_path(name), width=args.width)
                    print(path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
