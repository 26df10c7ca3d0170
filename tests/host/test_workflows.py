"""The shipped workflows (workflows/*.json, UI format) end to end in a real ComfyUI with
the tiny random-weight release: through the HTTP API, and through the real web frontend
in headless Chromium. Each ends in a video file whose frame count and frame rate are
checked. The only changes to the shipped settings are fewer steps and a 64x64 size.

They are also templates: each has its thumbnail (``<name>.jpg``, made by
tools/thumbnails.py), the metadata the frontend and ComfyUI-Manager read (``cnr_id`` /
``ver`` on every node, ``properties.models`` on every loader), a group per stage laid out
left to right, and a saved view that shows the whole graph when it opens.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

import av
import pytest

from kv_core.extend import long_video_frame_rate
from kv_core.rules import frame_rate
from host_prompts import REPO, SIZE, WORKFLOWS, fast, shipped_workflow
from tools.thumbnails import EXAMPLE_VIDEO, SMALL_TEXT_ENCODER, hidden_nodes, thumbnail_path

# workflow -> (frames, keyframes) of the video it writes
EXPECTED = {
    "kandinsky_video_text_to_video_8fps": (45, 12),
    "kandinsky_video_text_to_video_8fps_low_vram": (45, 12),
    "kandinsky_video_text_to_video_8fps_16gb_ram": (45, 12),
    "kandinsky_video_text_to_video_32fps": (177, 12),
    "kandinsky_video_image_to_video": (45, 12),
    "kandinsky_video_interpolate_any_video": (None, None),  # 4N - 3 frames of its input video: VIDEO_INPUTS
    "kandinsky_video_text_to_video_8fps_core_sampling": (45, 12),
    "kandinsky_video_long_video_3_prompts": (133, 34),
    "kandinsky_video_text_to_video_8fps_fast": (45, 12),
}
# long videos: the keyframes each segment adds (the rate is the first segment's, kv_core.extend)
SEGMENTS = {"kandinsky_video_long_video_3_prompts": [12, 11, 11]}
# workflow -> the video in ComfyUI's input/ that it interpolates once: the video it writes has
# 4N - 3 frames at 4 x the input's frame rate, at the input's size
VIDEO_INPUTS = {"kandinsky_video_interpolate_any_video": EXAMPLE_VIDEO}
PACK_ONLY = {"LoadImage", "PreviewImage", "CreateVideo", "SaveVideo", "MarkdownNote",  # core nodes used
             "LoadVideo", "GetVideoComponents", "SamplerCustomAdvanced", "KSamplerSelect", "RandomNoise",
             "TorchCompileModel"}
# Inductor compiles each U-Net for minutes on a CPU: the runs below bypass TorchCompileModel (a
# template's only other change); the compiled stage loop is tested in tests/nodes/test_attention_levers.py
COMPILE = "TorchCompileModel"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
RELEASE_URL = "https://huggingface.co/ai-forever/KandinskyVideo_1_1/resolve/main/"
# loader -> the official file its properties.models names (the widget value it ships with)
LOADER_FILES = {
    "KandinskyVideoKeyframeUNetLoader": "t2v.pt",
    "KandinskyVideoInterpolationUNetLoader": "interpolation.pt",
    "KandinskyVideoMoVQLoader": "movq.pt",
    "KandinskyVideoVideoMoVQLoader": "video_movq.pt",
    "KandinskyVideoTextEncoderLoader": "t5_projections.pt",
}
STAGES = ["Text", "First frame", "Keyframes", "Interpolation", "Decode"]  # group titles, left to right
VIDEO_STAGES = ["Video", "Encode", "Interpolation", "Decode"]  # those of a VIDEO_INPUTS template
AUTO_SKIP = -1  # Interpolate's skip_frames "from the frame rate" (nodes/host/latent.py)
TITLE_HEIGHT = 30  # LiteGraph's node title bar, drawn above a node's pos


def read_video(path: Path) -> tuple[int, float, tuple[int, int]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, float(stream.average_rate), (stream.codec_context.width, stream.codec_context.height)


def expected_video(host, name: str, size: int) -> tuple[int, float, tuple[int, int]]:
    """(frames, fps, (width, height)) of the video a template writes at the tests' size."""
    if name in VIDEO_INPUTS:  # x4 of a real input video, given back at its size
        frames, fps, wh = read_video(host.input_dir / VIDEO_INPUTS[name])
        return 4 * frames - 3, 4 * fps, wh
    frames, keyframes = EXPECTED[name]
    rate = long_video_frame_rate(frames, SEGMENTS[name]) if name in SEGMENTS else frame_rate(frames, keyframes)
    return frames, rate, (size, size)


def check_video(host, result, name: str, size: int) -> None:
    videos = [p for p in host.output_files(result) if p.suffix in (".mp4", ".webm", ".webp")]
    assert len(videos) == 1, result.outputs
    frames, fps, wh = read_video(videos[0])
    want_frames, want_fps, want_size = expected_video(host, name, size)
    assert frames == want_frames
    assert fps == pytest.approx(want_fps, abs=2e-3)
    assert wh == want_size


def test_shipped_workflows_use_only_this_pack_and_core_nodes():
    assert sorted(p.stem for p in WORKFLOWS.glob("*.json")) == sorted(EXPECTED)
    for name in EXPECTED:
        types = {n["type"] for n in shipped_workflow(name)["nodes"]}
        assert all(t.startswith("KandinskyVideo") or t in PACK_ONLY for t in types), (name, types)
        assert "SaveVideo" in types


def test_shipped_workflows_keep_the_release_defaults():
    for name in EXPECTED:
        for node in shipped_workflow(name)["nodes"]:
            values = node.get("widgets_values")
            if node["type"] == "KandinskyVideoKeyframes":  # motion, aug, wp, wi, steps, sampler, ...
                assert values[:6] == ["medium", 20, 5, 2, 50, "ddpm"] and values[-1] == 12
            elif node["type"] == "KandinskyVideoFirstFrame":
                assert values[:5] == [512, 512, 5, 50, "ddpm"]
            elif node["type"] == "KandinskyVideoInterpolate":  # an input video's pass picks its skip_frames
                assert values[1:4] == [0.5, 10, "ddpm"] and values[0] in ((AUTO_SKIP,) if name in VIDEO_INPUTS
                                                                          else (3, 1))
            elif node["type"] == "KandinskyVideoEncodeFirstFrame":
                assert values == [512, 512, "reference"]
            elif node["type"] == "KandinskyVideoSigmas":  # the release's steps and spacing of its stage
                assert values[1:] == [0, "default"]
            elif node["type"] == "KSamplerSelect":  # the release's DDPM (core ddpm is the same chain)
                assert values == ["ddpm"]
            elif node["type"] == "KandinskyVideoKeyframesConditioning":  # num_keyframes, motion, augmentation
                assert values[:3] == [12, "medium", 20]
            elif node["type"] == "KandinskyVideoGuider":  # w 5 / (wp 5, wi 2) / w 0.5, with the clamp
                assert values in ([5, 2, True], [0.5, 2, True])
            elif node["type"] == "KandinskyVideoExtend":  # the Keyframes settings, then the seam options
                assert values[:6] == ["medium", 20, 5, 2, 50, "ddpm"] and values[-3:] == [12, 1, "latent"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_template_noise_seeds_are_distinct(name):
    """Each RandomNoise starts its own noise stream: one seed in the first frame's, the
    keyframes' and the interpolation's RandomNoise would start all three identically."""
    seeds = [n["widgets_values"][0] for n in shipped_workflow(name)["nodes"] if n["type"] == "RandomNoise"]
    assert len(seeds) == len(set(seeds)), f"{name}: RandomNoise seeds {seeds} repeat"


def _widgets(workflow: dict) -> dict:
    return {n["id"]: (n["type"], n.get("widgets_values")) for n in workflow["nodes"]}


def test_low_vram_template_is_the_8fps_one_with_fp8_weights():
    low = shipped_workflow("kandinsky_video_text_to_video_8fps_low_vram")
    base = shipped_workflow("kandinsky_video_text_to_video_8fps")
    assert low["links"] == base["links"]
    fp8 = {"KandinskyVideoTextEncoderLoader", "KandinskyVideoKeyframeUNetLoader",
           "KandinskyVideoInterpolationUNetLoader"}
    changed = {}
    for node_id, (type_, values) in _widgets(low).items():
        base_type, base_values = _widgets(base)[node_id]
        assert type_ == base_type
        if values != base_values:
            changed[type_] = values
    assert {t: v[-1] for t, v in changed.items() if t in fp8} == dict.fromkeys(fp8, "fp8_e4m3fn")
    assert set(changed) - fp8 <= {"SaveVideo", "MarkdownNote"}  # its own file name and note


def test_16gb_template_is_the_low_vram_one_with_the_small_encoder_on_the_cpu_and_small_decode_chunks():
    small = shipped_workflow("kandinsky_video_text_to_video_8fps_16gb_ram")
    low = shipped_workflow("kandinsky_video_text_to_video_8fps_low_vram")
    assert small["links"] == low["links"]
    changed = {}
    for node_id, (type_, values) in _widgets(small).items():
        assert type_ == _widgets(low)[node_id][0]
        if values != _widgets(low)[node_id][1]:
            changed[type_] = values
    assert changed.pop("KandinskyVideoTextEncoderLoader") == [SMALL_TEXT_ENCODER, "t5_projections.pt", "default",
                                                              "cpu"]
    assert changed.pop("KandinskyVideoDecode") == [2]  # chunk_size 2 (README: 4.3 GiB instead of 7.1)
    assert set(changed) <= {"SaveVideo", "MarkdownNote"}
    encode = next(n for n in small["nodes"] if n["type"] == "KandinskyVideoTextEncode")
    assert encode["widgets_values"][-1] is True  # use_cache


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_template_has_its_thumbnail(name):
    from PIL import Image

    path = thumbnail_path(name)
    assert path.name == f"{name}.jpg"  # the only name the template browser asks for
    assert path.is_file(), f"no thumbnail for {name}: run python -m tools.thumbnails {name}"
    with Image.open(path) as image:
        assert image.format == "JPEG"
        assert image.width >= 1000 and image.height >= 400, image.size  # readable when shown large


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_template_carries_pack_and_model_metadata(name):
    for node in shipped_workflow(name)["nodes"]:
        props = node.get("properties", {})
        if node["type"] == "MarkdownNote":  # a frontend-only node of no pack
            continue
        if node["type"].startswith("KandinskyVideo"):
            assert (props.get("cnr_id"), props.get("ver")) == (PROJECT["name"], PROJECT["version"]), node["type"]
        else:
            assert props.get("cnr_id") == "comfy-core" and props.get("ver"), node["type"]
        if node["type"] in LOADER_FILES:
            file = LOADER_FILES[node["type"]]
            assert props.get("models") == [{"name": file, "url": RELEASE_URL + file, "directory": "kandinsky_video"}]
        models = props.get("models", [])
        # the frontends only consider entries whose name is one of the node's widget values
        assert all(m["name"] in node["widgets_values"] for m in models), node["type"]


def _node_box(node: dict) -> tuple[float, float, float, float]:
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE_HEIGHT, x + w, y + h


def _inside(box, bounding) -> bool:
    gx, gy, gw, gh = bounding
    return gx <= box[0] and gy <= box[1] and box[2] <= gx + gw and box[3] <= gy + gh


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_template_has_a_group_per_stage_left_to_right(name):
    workflow = shipped_workflow(name)
    groups = sorted(workflow["groups"], key=lambda g: g["bounding"][0])
    stages = VIDEO_STAGES if name in VIDEO_INPUTS else STAGES
    assert [next(s for s in stages if s in g["title"]) for g in groups] == stages, [g["title"] for g in groups]
    for left, right in zip(groups, groups[1:]):
        assert left["bounding"][0] + left["bounding"][2] <= right["bounding"][0]  # side by side
    stage = {}
    for node in workflow["nodes"]:
        inside = [i for i, g in enumerate(groups) if _inside(_node_box(node), g["bounding"])]
        if node["type"] == "MarkdownNote":
            assert inside == []
            continue
        assert len(inside) == 1, f"{node['type']} #{node['id']} is in groups {inside}"
        stage[node["id"]] = inside[0]
    for _, src, _, dst, _, _ in workflow["links"]:  # data flows left to right, stage by stage
        assert stage[src] <= stage[dst], (src, dst)


def test_model_metadata_matches_the_server_model_lists(kv):
    """The pinned frontend finds a ``properties.models`` file in the list
    ``/experiment/models/<directory>`` gives; with the release in place no template may
    raise a missing-model dialog."""
    assert "kandinsky_video" in {f["name"] for f in kv.get("/experiment/models").json()}
    listed = {f["name"] for f in kv.get("/experiment/models/kandinsky_video").json()}
    assert set(LOADER_FILES.values()) <= listed


def without_compile(prompt: dict) -> dict:
    """An API prompt with every TorchCompileModel bypassed (its MODEL input goes on)."""
    compile_nodes = {k: v["inputs"]["model"] for k, v in prompt.items() if v["class_type"] == COMPILE}
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value[0] in compile_nodes:
                node["inputs"][name] = compile_nodes[value[0]]
    return {k: v for k, v in prompt.items() if k not in compile_nodes}


def test_the_fast_template_is_the_8fps_one_with_the_levers_and_the_step_cache_wired():
    fast_ = shipped_workflow("kandinsky_video_text_to_video_8fps_fast")
    base = shipped_workflow("kandinsky_video_text_to_video_8fps")
    ids = {n["id"]: n["type"] for n in fast_["nodes"]}
    compiled = [i for i, t in ids.items() if t == COMPILE]
    assert len(compiled) == 2
    into = {(ids[link[1]], ids[link[3]]) for link in fast_["links"] if link[1] in compiled}
    assert into == {(COMPILE, "KandinskyVideoFirstFrame"), (COMPILE, "KandinskyVideoKeyframes"),
                    (COMPILE, "KandinskyVideoInterpolate")}
    assert all(n["widgets_values"] == ["inductor"] for n in fast_["nodes"] if n["type"] == COMPILE)
    # step caching on: one Step Cache node (interval 3 from step 2) into Keyframes and Interpolate
    (cache,) = [n for n in fast_["nodes"] if n["type"] == "KandinskyVideoStepCache"]
    assert cache["widgets_values"] == [3, 0, 2, -1]
    assert {ids[link[3]] for link in fast_["links"] if link[1] == cache["id"]} == {
        "KandinskyVideoKeyframes", "KandinskyVideoInterpolate"}
    same = {n["id"]: n.get("widgets_values") for n in base["nodes"] if n["type"] not in ("SaveVideo", "MarkdownNote")}
    assert {i: v for i, v in _widgets_of(fast_).items() if i in same} == same  # the release's settings


def _widgets_of(workflow: dict) -> dict:
    return {n["id"]: n.get("widgets_values") for n in workflow["nodes"]}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_workflow_runs_through_the_api(kv, name):
    prompt = fast(without_compile(kv.to_api(shipped_workflow(name))))
    result = kv.run(prompt, timeout=900)
    assert result.ok, result.describe()
    check_video(kv, result, name, SIZE)


# --------------------------------------------------------------------------- frontend

def _spec_problems(value, spec) -> str | None:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if isinstance(kind, list) or kind == "COMBO":
        options = kind if isinstance(kind, list) else opts.get("options", [])
        return None if value in options else f"{value!r} not in {options[:10]}"
    if kind in ("INT", "FLOAT"):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{value!r} is not a number"
        if "min" in opts and value < opts["min"] or "max" in opts and value > opts["max"]:
            return f"{value} outside [{opts.get('min')}, {opts.get('max')}]"
    return None


def invalid_widget_values(prompt: dict, object_info: dict) -> list[str]:
    """Inputs of an API prompt (as the frontend made it) whose values the node types reject."""
    problems = []
    for node_id, node in prompt.items():
        info = object_info[node["class_type"]]["input"]
        specs = {**info.get("required", {}), **info.get("optional", {})}
        for name, value in node["inputs"].items():
            if isinstance(value, list) or name not in specs:
                continue  # a link
            problem = _spec_problems(value, specs[name])
            if problem:
                problems.append(f"{node['class_type']}.{name}: {problem}")
    return problems


SET_FAST = """(size) => {
    for (const node of window.app.graph.nodes) {
        if (!node.type.startsWith('KandinskyVideo')) continue;
        for (const w of node.widgets || []) {
            if (w.name === 'steps') w.value = 2;
            if (w.name === 'width' || w.name === 'height' || w.name === 'max_side') w.value = size;
        }
    }
    return true;
}"""


#: Bypass every TorchCompileModel as a user would (mode 4: its MODEL input passes through).
BYPASS_COMPILE = """(() => {
    for (const node of window.app.graph.nodes) if (node.type === 'TorchCompileModel') node.mode = 4;
    return true;
})()"""


#: Refresh the model lists as the 'r' key does; resolves once the page has drawn its toast.
REFRESH = """(window.app.refreshComboInNodes ? window.app.refreshComboInNodes() : Promise.resolve())
    .then(() => new Promise(done => setTimeout(() => done(true), 0)))"""


@pytest.fixture
def frontend(kv, comfy_browser):
    browser = comfy_browser.browser
    # toasts left by earlier tests in this browser (sticky ones stay until closed) are not
    # this template's doing: close them as a user would
    comfy_browser.dismiss_toasts()
    browser.evaluate(REFRESH)
    # the refresh announces itself in a toast over the canvas's top right ("Updated", gone
    # after a second in both frontends): let it go, as a user would, so that what covers the
    # graph afterwards is the template's doing; one that stays is a real problem (an error)
    comfy_browser.wait_toasts_gone(timeout=30)
    return comfy_browser


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_workflow_loads_and_runs_in_the_frontend(kv, frontend, name):
    frontend.load_workflow(shipped_workflow(name))
    frontend.close_dialogs()
    # it opens with the whole graph in view (1400x900 window), drawn in full detail
    assert hidden_nodes(frontend) == []
    assert frontend.browser.evaluate("window.app.canvas.low_quality === true") is False
    assert frontend.missing_node_types() == []
    prompt = frontend.graph_to_prompt()
    assert {v["class_type"] for v in prompt.values()} >= {"KandinskyVideoDecode", "SaveVideo"}
    assert invalid_widget_values(prompt, kv.object_info(refresh=True)) == []
    frontend.browser.call(SET_FAST, SIZE)
    frontend.browser.evaluate(BYPASS_COMPILE)
    result = frontend.queue(timeout=900)
    assert result.ok, result.describe()
    check_video(kv, result, name, SIZE)
