"""The shipped workflows (workflows/*.json, UI format) end to end in a real ComfyUI with
the tiny random-weight release: through the HTTP API, and through the real web frontend
in headless Chromium. Each ends in a video file whose frame count and frame rate are
checked. The only changes to the shipped settings are fewer steps and a 64x64 size.
"""
from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from kv_core.pipeline import frame_rate
from test_nodes import SIZE, WORKFLOWS, fast, kv, kv_release, shipped_workflow  # noqa: F401 (fixtures)

# workflow -> (frames, keyframes) of the video it writes
EXPECTED = {
    "kandinsky_video_text_to_video_8fps": (45, 12),
    "kandinsky_video_text_to_video_32fps": (177, 12),
    "kandinsky_video_image_to_video": (12, 12),
}
PACK_ONLY = {"LoadImage", "PreviewImage", "CreateVideo", "SaveVideo", "MarkdownNote"}  # core nodes used


def read_video(path: Path) -> tuple[int, float, tuple[int, int]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, float(stream.average_rate), (stream.codec_context.width, stream.codec_context.height)


def check_video(host, result, name: str, size: int) -> None:
    videos = [p for p in host.output_files(result) if p.suffix in (".mp4", ".webm", ".webp")]
    assert len(videos) == 1, result.outputs
    frames, fps, wh = read_video(videos[0])
    want_frames, keyframes = EXPECTED[name]
    assert frames == want_frames
    assert fps == pytest.approx(frame_rate(want_frames, keyframes), abs=2e-3)
    assert wh == (size, size)


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
            elif node["type"] == "KandinskyVideoInterpolate":
                assert values[1:4] == [0.5, 10, "ddpm"] and values[0] in (3, 1)
            elif node["type"] == "KandinskyVideoEncodeFirstFrame":
                assert values == [512, 512, "reference"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_workflow_runs_through_the_api(kv, name):
    prompt = fast(kv.to_api(shipped_workflow(name)))
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
            if (w.name === 'width' || w.name === 'height') w.value = size;
        }
    }
    return true;
}"""


@pytest.fixture
def frontend(kv, comfy_browser):
    comfy_browser.browser.evaluate("window.app.refreshComboInNodes ? window.app.refreshComboInNodes().then(() => true) : true")
    return comfy_browser


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_workflow_loads_and_runs_in_the_frontend(kv, frontend, name):
    frontend.load_workflow(shipped_workflow(name))
    frontend.close_dialogs()
    assert frontend.missing_node_types() == []
    prompt = frontend.graph_to_prompt()
    assert {v["class_type"] for v in prompt.values()} >= {"KandinskyVideoDecode", "SaveVideo"}
    assert invalid_widget_values(prompt, kv.object_info(refresh=True)) == []
    frontend.browser.call(SET_FAST, SIZE)
    result = frontend.queue(timeout=900)
    assert result.ok, result.describe()
    check_video(kv, result, name, SIZE)
