"""The loader nodes inside a real ComfyUI whose ``comfy.ops`` build layers the way current
ComfyUI does with dynamic VRAM (no weight until ``_load_from_state_dict``).

A ComfyUI of its own (the session's host must keep ordinary layers) is started with the
test-only pack ``tests/data/lazy_weights_pack`` beside this one: it swaps the lazy
``Linear``/``Embedding`` of tests/support/lazy_comfy_ops.py into ``comfy.ops`` and gives the host
newer ComfyUI's ``unload_model_and_clones``. The text-to-video (8 fps) workflow then runs
every loader (text encoder with its projections, keyframe and interpolation U-Nets, image
and video MoVQ) and every stage, with each weight dtype the loaders offer, and each stage
offloads its networks through the public unload call: this host runs with the forced
offload on (``KANDINSKY_VIDEO_OFFLOAD=1``; by default ComfyUI keeps the networks loaded,
tests/host/test_nodes.py::test_a_second_run_does_not_load_the_networks_again).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kv_core.tiny import write_tiny_release
from host_prompts import RELEASE_FILES, fast, node_of, shipped_workflow
from tools.harness import ComfyHost, HostError, REPO_ROOT

pytestmark = pytest.mark.host  # its own ComfyUI server (lazy_host), with the test-only pack

LAZY_PACK = Path(__file__).resolve().parents[1] / "data" / "lazy_weights_pack"
OUR_MODULES = {"KeyframeUNet", "InterpolationUNet", "MoVQ", "_TextStack"}
OFFLOAD_ENV = "KANDINSKY_VIDEO_OFFLOAD"  # nodes/host/networks.py: unload every network after its stage


@pytest.fixture(scope="module")
def lazy_host():
    if os.environ.get("KV_SKIP_COMFY") and os.environ.get("CI", "").lower() in ("", "0", "false"):
        pytest.skip("KV_SKIP_COMFY is set: the tests that need a real ComfyUI are skipped")
    host = ComfyHost(packs=(REPO_ROOT, LAZY_PACK))
    previous = os.environ.get(OFFLOAD_ENV)
    os.environ[OFFLOAD_ENV] = "1"  # the server inherits it: every stage unloads its networks
    try:
        host.start()
    except HostError as e:
        pytest.fail(f"ComfyUI did not start: {e}", pytrace=False)
    finally:
        if previous is None:
            del os.environ[OFFLOAD_ENV]
        else:
            os.environ[OFFLOAD_ENV] = previous
    try:
        release = write_tiny_release(host.base_dir / "kv_tiny_release")
        for name in RELEASE_FILES:
            host.add_model("kandinsky_video", release.folder / name)
        yield host
    finally:
        host.stop()


def _state(host, unload_model_and_clones: str = "as is") -> dict:
    """The test pack's report; ``unload_model_and_clones``: "present"/"absent" first adds or
    removes that call in the host's model_management (which offload path the pack takes)."""
    prompt = {"1": {"class_type": "KVTestHostState", "inputs": {"unload_model_and_clones": unload_model_and_clones}}}
    result = host.run(prompt, timeout=60, check=True)
    return json.loads(result.outputs["1"]["text"][0])


KEYFRAMES = 2  # 5 frames after the interpolation pass: CPU fp16 kernels are slow


def _text_to_video(host, weight_dtype: str) -> dict:
    """The shipped 8 fps workflow, fast and short, ending in PreviewImage, all loaders at
    one dtype."""
    prompt = fast(host.to_api(shipped_workflow("kandinsky_video_text_to_video_8fps")), steps=1, seed=7)
    prompt[node_of(prompt, "KandinskyVideoKeyframes")]["inputs"]["num_keyframes"] = KEYFRAMES
    for key in [k for k, v in prompt.items() if v["class_type"] in ("CreateVideo", "SaveVideo")]:
        del prompt[key]
    prompt["900"] = {"class_type": "PreviewImage",
                     "inputs": {"images": [node_of(prompt, "KandinskyVideoDecode"), 0]}}
    loaders = [k for k, v in prompt.items() if "weight_dtype" in v["inputs"]]
    assert len(loaders) == 5  # text encoder, keyframe U-Net, interpolation U-Net, image and video MoVQ
    for key in loaders:
        prompt[key]["inputs"]["weight_dtype"] = weight_dtype
    return prompt


def test_lazy_layers_are_in_force(lazy_host):
    state = _state(lazy_host)
    assert state["lazy_linear"], state
    assert set(state["replaced"]) == {"disable_weight_init.Linear", "disable_weight_init.Embedding",
                                      "manual_cast.Linear", "manual_cast.Embedding"}
    assert not lazy_host.pack_import_problems()


@pytest.mark.parametrize("weight_dtype", ["default", "bf16", "fp16", "fp8_e4m3fn"])
def test_every_loader_and_stage_runs_with_lazy_layers(lazy_host, weight_dtype):
    before = _state(lazy_host, "present")
    assert before["unload_model_and_clones"]
    result = lazy_host.run(_text_to_video(lazy_host, weight_dtype), timeout=900)
    assert result.ok, result.describe()
    assert len(result.outputs["900"]["images"]) == 4 * KEYFRAMES - 3  # one interpolation pass

    after = _state(lazy_host)
    # the loaders built lazy layers and filled them through _load_from_state_dict
    assert after["counts"]["built"] > before["counts"]["built"]
    assert after["counts"]["loaded"] > before["counts"]["loaded"]
    # every stage offloaded its networks through unload_model_and_clones: none stays loaded
    assert not OUR_MODULES & set(after["loaded"]), after["loaded"]
    unloaded = after["unloaded"][len(before["unloaded"]):]
    assert OUR_MODULES <= set(unloaded), unloaded


def test_stages_offload_through_free_memory_where_the_host_has_no_unload_call(lazy_host):
    """ComfyUI 0.3.75 has no unload_model_and_clones: offload() then uses free_memory with
    every other model kept, and still leaves none of the networks loaded."""
    before = _state(lazy_host, "absent")
    assert not before["unload_model_and_clones"]
    try:
        result = lazy_host.run(_text_to_video(lazy_host, "default"), timeout=900)
        assert result.ok, result.describe()
        after = _state(lazy_host)
    finally:
        _state(lazy_host, "present")
    assert not OUR_MODULES & set(after["loaded"]), after["loaded"]
    assert after["unloaded"] == before["unloaded"]  # the simulated newer call was not used
