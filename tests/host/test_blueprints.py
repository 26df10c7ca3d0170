"""The subgraph blueprints in ``subgraphs/`` (made by tools/blueprints.py in the frontend).

The files on their own: one subgraph node and its definition, with the inputs and outputs
each blueprint promises, built only from this pack's nodes. Through the pinned ComfyUI:
``/global_subgraphs`` lists them for this pack and serves their content. In the browser
(frontend 1.58.1): the frontend registers each as a node of its library; dropped into a
workflow between core video nodes, the frontend turns the graph into a prompt the server
runs with the tiny release, giving the frames and frame rate the blueprint promises.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from host_prompts import fast
from tools import blueprints
from tools.harness import PACK_NAME
from tools.thumbnails import EXAMPLE_VIDEO
from tools.video_info import video_info

REPO = Path(__file__).resolve().parents[2]
FOLDER = REPO / "subgraphs"
SPECS = {spec["name"]: spec for spec in blueprints.BLUEPRINTS}
X4, T2V = "Kandinsky Video Interpolate x4", "Kandinsky Video Text to Video"
SIZE = 64


def _load(name: str) -> dict:
    return json.loads((FOLDER / f"{name}.json").read_text(encoding="utf-8"))


def test_the_folder_holds_exactly_the_blueprints():
    assert sorted(p.name for p in FOLDER.iterdir()) == sorted(f"{name}.json" for name in SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_blueprint_is_one_subgraph_with_its_promised_inputs_and_outputs(name):
    blueprint, spec = _load(name), SPECS[name]
    (node,) = blueprint["nodes"]
    (subgraph,) = blueprint["definitions"]["subgraphs"]
    assert node["type"] == subgraph["id"]
    assert [i["name"] for i in subgraph["inputs"]] == spec["inputs"] == [i["name"] for i in node["inputs"]]
    assert [o["name"] for o in subgraph["outputs"]] == spec["outputs"] == [o["name"] for o in node["outputs"]]
    assert [o["type"] for o in subgraph["outputs"]] == ["IMAGE", "FLOAT"]
    inner = {n["id"]: n["type"] for n in subgraph["nodes"]}
    wanted = {t for key, t, _, _ in spec["nodes"] if key in spec["inner"]}
    assert sorted(inner.values()) == sorted(wanted) and all(t.startswith("KandinskyVideo") for t in wanted)
    # every inner link joins existing nodes (-10 / -20: the subgraph's input and output nodes)
    for link in subgraph["links"]:
        assert link["origin_id"] in inner or link["origin_id"] == -10, link
        assert link["target_id"] in inner or link["target_id"] == -20, link
    assert blueprint["extra"]["BlueprintDescription"]


def test_the_server_lists_and_serves_the_blueprints(comfy):
    listed = comfy.get("/global_subgraphs").json()
    ours = {entry["name"]: key for key, entry in listed.items() if entry["info"]["node_pack"] == f"custom_nodes.{PACK_NAME}"}
    assert set(ours) == set(SPECS)
    for name, key in ours.items():
        served = comfy.get(f"/global_subgraphs/{key}").json()
        assert json.loads(served["data"]) == _load(name)


#: The frontend's blueprint node definitions by display name (its subgraph store registers
#: one per file, named after the file).
_BLUEPRINT_DEFS_JS = """(() => {
    const defs = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia._s.get('nodeDef');
    return Object.fromEntries([...defs.blueprintNodeDefsByName.entries()]
        .map(([k, d]) => [d.display_name, {inputs: Object.keys(d.inputs), outputs: d.outputs.map(o => o.type),
                              category: d.category, python_module: d.python_module}]));
})()"""


def _around(blueprint: dict, before: list[dict], after: list[dict], links: list[list]) -> dict:
    """The blueprint file as a workflow, with core nodes wired to its inputs and outputs."""
    workflow = copy.deepcopy(blueprint)
    node = workflow["nodes"][0]
    workflow["nodes"] += before + after
    workflow["links"] = links
    for link_id, origin, o_slot, target, t_slot, kind in links:
        for n in workflow["nodes"]:
            if n["id"] == target:
                n["inputs"][t_slot]["link"] = link_id
            if n["id"] == origin:
                n["outputs"][o_slot].setdefault("links", [])
                n["outputs"][o_slot]["links"] = (n["outputs"][o_slot]["links"] or []) + [link_id]
    workflow["last_link_id"] = max(link[0] for link in links)
    workflow["last_node_id"] = max(n["id"] for n in workflow["nodes"])
    node["pos"] = [400, 100]
    return workflow


def _core(node_id: int, node_type: str, pos, inputs=(), outputs=(), widgets=()) -> dict:
    return {"id": node_id, "type": node_type, "pos": pos, "size": [300, 120], "flags": {}, "order": 0, "mode": 0,
            "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
            "outputs": [{"name": n, "type": t, "links": []} for n, t in outputs],
            "properties": {"Node name for S&R": node_type}, "widgets_values": list(widgets)}


@pytest.fixture
def frontend_1_58(comfy_browser):
    if not comfy_browser.version.startswith("1.58"):
        pytest.skip(f"the blueprints are checked in the current frontend (1.58); this page runs {comfy_browser.version}")
    comfy_browser.open()  # a fresh page loads /global_subgraphs
    return comfy_browser


def test_the_frontend_lists_both_blueprints(comfy, frontend_1_58):
    defs = frontend_1_58.browser.wait_for(
        f"(() => {{ const d = {_BLUEPRINT_DEFS_JS}; return Object.keys(d).length >= 2 ? d : null }})()", timeout=30)
    assert set(SPECS) <= set(defs), sorted(defs)
    assert defs[X4]["inputs"] == ["images", "fps"]
    assert defs[T2V]["inputs"] == ["prompt", "seed"]
    for name in SPECS:
        assert defs[name]["outputs"] == ["IMAGE", "FLOAT"]
        assert defs[name]["category"].startswith("Subgraph Blueprints")


def _run(kv, frontend, workflow: dict) -> dict:
    """Load ``workflow`` in the frontend, take its prompt (subgraph flattened by the
    frontend), run it fast with the tiny release; the saved video's facts."""
    frontend.load_workflow(workflow)
    frontend.close_dialogs()
    assert frontend.missing_node_types() == []
    prompt = frontend.graph_to_prompt()
    assert any(v["class_type"] == "KandinskyVideoDecode" for v in prompt.values())
    result = kv.run(fast(prompt, size=SIZE), timeout=900)
    assert result.ok, result.describe()
    (video,) = [p for p in kv.output_files(result) if p.suffix in (".mp4", ".webm", ".webp")]
    return video_info(str(video))


def test_interpolate_x4_in_a_workflow_quadruples_any_videos_frame_rate(kv, frontend_1_58):
    source = video_info(str(kv.input_dir / EXAMPLE_VIDEO))
    workflow = _around(_load(X4), [
        _core(101, "LoadVideo", [-700, 100], outputs=[("VIDEO", "VIDEO")], widgets=[EXAMPLE_VIDEO, "image"]),
        _core(102, "GetVideoComponents", [-350, 100], inputs=[("video", "VIDEO")],
              outputs=[("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")]),
    ], [
        _core(103, "CreateVideo", [800, 100], inputs=[("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")],
              outputs=[("VIDEO", "VIDEO")], widgets=[30]),
        _core(104, "SaveVideo", [1150, 100], inputs=[("video", "VIDEO")], widgets=["video/blueprint_x4", "auto", "auto"]),
    ], [[1, 101, 0, 102, 0, "VIDEO"], [2, 102, 0, _load(X4)["nodes"][0]["id"], 0, "IMAGE"],
        [3, 102, 2, _load(X4)["nodes"][0]["id"], 1, "FLOAT"], [4, _load(X4)["nodes"][0]["id"], 0, 103, 0, "IMAGE"],
        [5, _load(X4)["nodes"][0]["id"], 1, 103, 2, "FLOAT"], [6, 103, 0, 104, 0, "VIDEO"]])
    made = _run(kv, frontend_1_58, workflow)
    assert made["frames"] == 4 * source["frames"] - 3
    assert made["fps"] == pytest.approx(4 * source["fps"], rel=1e-3)


def test_text_to_video_in_a_workflow_makes_the_8fps_video(kv, frontend_1_58):
    node_id = _load(T2V)["nodes"][0]["id"]
    workflow = _around(_load(T2V), [
        _core(101, "PrimitiveStringMultiline", [-400, 0], outputs=[("STRING", "STRING")],
              widgets=["a red panda climbing a snowy pine tree"]),
        _core(102, "PrimitiveInt", [-400, 250], outputs=[("INT", "INT")], widgets=[7, "fixed"]),
    ], [
        _core(103, "CreateVideo", [800, 100], inputs=[("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")],
              outputs=[("VIDEO", "VIDEO")], widgets=[30]),
        _core(104, "SaveVideo", [1150, 100], inputs=[("video", "VIDEO")], widgets=["video/blueprint_t2v", "auto", "auto"]),
    ], [[1, 101, 0, node_id, 0, "STRING"], [2, 102, 0, node_id, 1, "INT"], [3, node_id, 0, 103, 0, "IMAGE"],
        [4, node_id, 1, 103, 2, "FLOAT"], [5, 103, 0, 104, 0, "VIDEO"]])
    made = _run(kv, frontend_1_58, workflow)
    assert made["frames"] == 45
    assert made["fps"] == pytest.approx(45 / 5.5, rel=1e-3)
