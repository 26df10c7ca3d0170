"""The pack inside a real ComfyUI (the pinned 0.3.75, or $COMFYUI_PATH): it loads, its nodes
run, and the harness reports successes, rejections and execution errors faithfully.

The converter tests at the top need no server; the rest share one ComfyUI per session.
"""
from __future__ import annotations

import copy
import re
import socket

import pytest

from tools.harness import PACK_LOG_MARKER, PACK_NAME, ComfyHost, WorkflowError, workflow_to_prompt

FRAME_INFO = "KandinskyVideoFrameInfo"


# --------------------------------------------------------------------------- converter

# /object_info entries in the server's shape (V1 and V3 nodes report the same keys)
OBJECT_INFO = {
    "Sampler": {
        "input": {
            "required": {
                "model": ["MODEL", {}],
                "seed": ["INT", {"default": 0, "min": 0, "max": 2**32}],
                "steps": ["INT", {"default": 20, "control_after_generate": False}],
                "sampler": [["euler", "ddim"], {}],
                "cfg": ["FLOAT", {"default": 5.0}],
            },
            "optional": {
                "noise": ["INT", {"default": 0, "control_after_generate": True}],
                "style": ["COMBO", {"options": ["a", "b"], "control_after_generate": True}],
                "text": ["STRING", {"forceInput": True}],
                "flag": ["BOOLEAN", {"default": True}],
            },
        },
        "input_order": {"required": ["model", "seed", "steps", "sampler", "cfg"],
                        "optional": ["noise", "style", "text", "flag"]},
        "output": ["LATENT"],
    },
    "Loader": {"input": {"required": {"name": [["m.safetensors"], {}]}}, "output": ["MODEL", "CLIP"]},
    "Filter": {"input": {"required": {"model": ["MODEL", {}]}}, "output": ["MODEL"]},
    "Text": {"input": {"required": {"value": ["STRING", {"multiline": True}]}}, "output": ["STRING"]},
}


def _ui_workflow():
    """Loader -> Filter (bypassed) -> Reroute -> Sampler; seed from a PrimitiveNode;
    text from a muted node; a Note on the side."""
    return {
        "nodes": [
            {"id": 1, "type": "Loader", "mode": 0, "widgets_values": ["m.safetensors"],
             "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]}]},
            {"id": 2, "type": "Filter", "mode": 4, "inputs": [{"name": "model", "type": "MODEL", "link": 1}],
             "outputs": [{"name": "MODEL", "type": "MODEL", "links": [2]}]},
            {"id": 3, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 2}],
             "outputs": [{"name": "", "type": "MODEL", "links": [3]}]},
            {"id": 4, "type": "Sampler", "mode": 0, "title": "My sampler",
             "inputs": [{"name": "model", "type": "MODEL", "link": 3},
                        {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 4},
                        {"name": "text", "type": "STRING", "link": 5}],
             # seed + its control value, steps (control disabled), sampler, cfg,
             # noise + control, style + control + filter list, flag
             "widgets_values": [7, "randomize", 30, "ddim", 6.5, 11, "fixed", "b", "fixed", "", False]},
            {"id": 5, "type": "PrimitiveNode", "mode": 0, "widgets_values": [1234, "fixed"],
             "outputs": [{"name": "INT", "type": "INT", "links": [4]}]},
            {"id": 6, "type": "Text", "mode": 2, "widgets_values": ["muted"],
             "outputs": [{"name": "STRING", "type": "STRING", "links": [5]}]},
            {"id": 7, "type": "Note", "mode": 0, "widgets_values": ["a note"]},
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 4, 0, "MODEL"],
                  [4, 5, 0, 4, 1, "INT"], [5, 6, 0, 4, 2, "STRING"]],
    }


def test_convert_ui_workflow_offline():
    prompt = workflow_to_prompt(_ui_workflow(), OBJECT_INFO)
    assert set(prompt) == {"1", "4"}  # bypassed, muted, virtual nodes are not sent
    assert prompt["1"] == {"class_type": "Loader", "inputs": {"name": "m.safetensors"}}
    assert prompt["4"] == {
        "class_type": "Sampler",
        "_meta": {"title": "My sampler"},
        "inputs": {"model": ["1", 0], "seed": 1234, "steps": 30, "sampler": "ddim", "cfg": 6.5,
                   "noise": 11, "style": "b", "flag": False},
    }


def test_convert_accepts_link_objects_and_named_widgets():
    wf = _ui_workflow()
    wf["links"] = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
                   for link in wf["links"]]
    wf["nodes"][0]["widgets_values"] = {"name": "m.safetensors"}
    assert workflow_to_prompt(wf, OBJECT_INFO) == workflow_to_prompt(_ui_workflow(), OBJECT_INFO)


def test_convert_rejects_unknown_node_types():
    wf = copy.deepcopy(_ui_workflow())
    wf["nodes"][0]["type"] = "NotInstalled"
    with pytest.raises(WorkflowError, match="NotInstalled"):
        workflow_to_prompt(wf, OBJECT_INFO)


# --------------------------------------------------------------------------- the host


def _frame_info_prompt(keyframes, fps):
    prompt = {"1": {"class_type": FRAME_INFO, "inputs": {"keyframes": keyframes, "fps": fps}}}
    for slot in range(3):
        prompt[str(2 + slot)] = {"class_type": "PreviewAny", "inputs": {"source": ["1", slot]}}
    return prompt


def test_pack_loads_without_import_errors(comfy):
    log = comfy.log_text()
    assert comfy.pack_import_problems() == []
    assert re.search(rf"\d+\.\d seconds: .*custom_nodes/{re.escape(PACK_NAME)}$", log, re.M), (
        "the pack is missing from ComfyUI's import-time table:\n" + log[-4000:])
    loaded = re.search(rf"{re.escape(PACK_LOG_MARKER)} loaded (\d+) nodes", log)
    assert loaded, "the pack's extension never ran:\n" + log[-4000:]
    pack_nodes = comfy.pack_node_types()
    assert int(loaded.group(1)) == len(pack_nodes) >= 1
    assert FRAME_INFO in pack_nodes
    for node_id, info in pack_nodes.items():
        assert node_id.startswith("KandinskyVideo"), f"node ids are global: {node_id} needs the pack prefix"
        assert info["category"].startswith("Kandinsky Video"), node_id


def test_pack_node_runs_to_completion(comfy):
    result = comfy.run(_frame_info_prompt(12, "medium"), timeout=120, check=True)
    frames, fps, seconds = (result.outputs[str(i)]["text"][0] for i in (2, 3, 4))
    assert int(frames) == 45  # 12 keyframes, one interpolation pass: 4 * 12 - 3
    assert float(fps) == pytest.approx(45 / 5.5)
    assert float(seconds) == pytest.approx(5.5)
    assert "1" in result.executed  # the pack node really ran (it was not served from a cache)


def test_invalid_input_is_rejected_with_node_errors(comfy):
    result = comfy.run(_frame_info_prompt(1, "medium"), timeout=60)  # min is 2
    assert result.status == "rejected"
    assert result.prompt_id is None
    assert "1" in result.node_errors
    assert any(e["extra_info"]["input_name"] == "keyframes" for e in result.node_errors["1"]["errors"])


def test_execution_error_is_reported(comfy):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageToMask", "inputs": {"image": ["1", 0], "channel": "alpha"}},  # RGB only
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    result = comfy.run(prompt, timeout=60)
    assert result.status == "error"
    assert result.error["node_id"] == "2"
    assert result.error["node_type"] == "ImageToMask"
    assert result.error["exception_type"]
    with pytest.raises(Exception, match="ImageToMask"):
        result.raise_for_status()


def test_ui_workflow_runs_through_object_info_conversion(comfy):
    workflow = {
        "nodes": [
            {"id": 10, "type": FRAME_INFO, "mode": 0, "widgets_values": [5, "high"],
             "outputs": [{"name": "frames", "type": "INT", "links": [1]}]},
            {"id": 11, "type": "PreviewAny", "mode": 0, "inputs": [{"name": "source", "type": "*", "link": 1}]},
        ],
        "links": [[1, 10, 0, 11, 0, "INT"]],
    }
    result = comfy.run_workflow(workflow, timeout=120, check=True)
    assert result.outputs["11"]["text"] == [str(16 * 5 - 15)]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.host  # starts its own server
def test_host_stops_by_its_pid_when_the_body_fails(tmp_path):
    host = ComfyHost(base_dir=tmp_path / "base")
    with pytest.raises(RuntimeError, match="deliberate"):
        with host:
            proc, port = host.proc, host.port
            assert _port_open(port)
            raise RuntimeError("deliberate failure inside the host's block")
    assert proc.poll() is not None  # the server process itself has ended
    assert not _port_open(port)
    assert host.log_text()  # the log outlives the server


# --------------------------------------------------------------------------- frontend

BUILD_GRAPH_JS = """() => {
    const app = window.app;
    app.graph.clear();
    const info = LiteGraph.createNode("%s");
    info.pos = [50, 50];
    app.graph.add(info);
    info.widgets.find(w => w.name === "keyframes").value = 6;
    info.widgets.find(w => w.name === "fps").value = "medium";
    const noise = LiteGraph.createNode("RandomNoise");
    noise.pos = [50, 300];
    app.graph.add(noise);
    noise.widgets.find(w => w.name === "noise_seed").value = 4242;
    const previews = [0, 1, 2].map(slot => {
        const p = LiteGraph.createNode("PreviewAny");
        p.pos = [450, 50 + 150 * slot];
        app.graph.add(p);
        info.connect(slot, p, 0);
        return p.id;
    });
    return {info: info.id, noise: noise.id, previews};
}""" % FRAME_INFO


def test_frontend_graph_converts_like_the_server_side_converter(comfy, comfy_browser):
    ids = comfy_browser.browser.call(BUILD_GRAPH_JS)
    saved = comfy_browser.workflow()  # the UI format, exactly as the frontend saves it
    node = next(n for n in saved["nodes"] if str(n["id"]) == str(ids["noise"]))  # 1.58.1: live ids are strings
    assert len(node["widgets_values"]) == 2  # the seed and its "control after generate"
    info = comfy.object_info(refresh=True)
    assert workflow_to_prompt(saved, info) == _server_view(comfy_browser.graph_to_prompt(), info)


def _server_view(prompt: dict, info: dict) -> dict:
    """What the server reads of a frontend prompt: not the ``_meta`` titles, nor the inputs
    of frontend-only widgets (e.g. the text box PreviewAny gets from a frontend extension)."""
    def known(node_type):
        spec = info[node_type]["input"]
        return {**spec.get("required", {}), **spec.get("optional", {})}

    return {k: {"class_type": v["class_type"],
                "inputs": {n: x for n, x in v["inputs"].items() if n in known(v["class_type"])}}
            for k, v in prompt.items()}


def test_frontend_loads_and_queues_a_saved_workflow(comfy, comfy_browser):
    ids = comfy_browser.browser.call(BUILD_GRAPH_JS)
    saved = comfy_browser.workflow()
    comfy_browser.browser.evaluate("window.app.graph.clear(), true")
    comfy_browser.load_workflow(saved)
    assert comfy_browser.missing_node_types() == []
    assert comfy_browser.widget_values(ids["info"]) == {"keyframes": 6, "fps": "medium"}
    result = comfy_browser.queue(timeout=120).raise_for_status()
    texts = [result.outputs[str(i)]["text"][0] for i in ids["previews"]]
    assert int(texts[0]) == 4 * 6 - 3
    assert float(texts[2]) == pytest.approx(5.5 * 6 / 12)
