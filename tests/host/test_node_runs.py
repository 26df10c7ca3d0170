"""Running the nodes inside a real ComfyUI (tiny release): devices and weight dtypes of the
loaders, each stage node against its kv_core stage, a workflow of the previous release, no
second load on a second run, interrupt latency and memory over many prompts."""
from __future__ import annotations

import copy
import json
import statistics
import time
import uuid

import numpy as np
import pytest
import requests
import websocket

from host_prompts import REPO, SIZE, fast, i2v_prompt, node_of, shown_picture, shipped_workflow, tiny_networks


LOADERS = ("KandinskyVideoKeyframeUNetLoader", "KandinskyVideoInterpolationUNetLoader", "KandinskyVideoMoVQLoader",
           "KandinskyVideoVideoMoVQLoader", "KandinskyVideoTextEncoderLoader")


def _this_machines_devices() -> list[str]:
    import torch

    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return ["default", "cpu", *gpus]


def test_every_loader_offers_default_cpu_and_this_machines_gpus_last_and_optional(kv):
    """The device choice is the last input and optional: workflows saved without it (every
    template, every earlier release's workflow) load with ``default``."""
    for node_id in LOADERS:
        info = kv.object_info(node_id)
        assert kv.pack_node_types()[node_id]["input_order"]["optional"][-1] == "device", node_id
        spec = info["input"]["optional"]["device"]
        options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]
        assert options[:len(_this_machines_devices())] == _this_machines_devices(), (node_id, options)
        assert spec[1]["default"] == "default"


def test_a_stage_forced_to_cpu_gives_the_all_default_result(kv):
    """Text encoder and video MoVQ on ``cpu``, the rest on ComfyUI's choice: the loaders say
    where they put each network, and the frames are those of the all-default run (on a
    CPU-only host both choices are the CPU: this checks the wiring and the hand-overs)."""
    prompt = i2v_prompt(kv, steps=1, seed=11)
    default = kv.run(prompt, timeout=600)
    assert default.ok, default.describe()
    forced = copy.deepcopy(prompt)
    for class_type in ("KandinskyVideoTextEncoderLoader", "KandinskyVideoVideoMoVQLoader"):
        forced[node_of(forced, class_type)]["inputs"]["device"] = "cpu"
    # the first run put the prompt in the prompt cache, and a cached prompt never loads the
    # encoder: encode afresh so that the encoder forced to the CPU does run
    forced[node_of(forced, "KandinskyVideoTextEncode")]["inputs"]["use_cache"] = False
    mark = kv.log_mark()
    result = kv.run(forced, timeout=600)
    assert result.ok, result.describe()
    log = kv.log_since(mark)
    assert "Load Kandinsky Video Text Encoder: runs on cpu (device input)" in log, log[-2000:]
    assert "Load Kandinsky Video Video MoVQ: runs on cpu (device input)" in log, log[-2000:]
    pictures = [shown_picture(kv, item) for item in default.outputs["900"]["images"]]
    again = [shown_picture(kv, item) for item in result.outputs["900"]["images"]]
    assert len(pictures) == len(again) == 12
    for a, b in zip(pictures, again):
        assert np.array_equal(a, b)


def test_a_device_this_machine_lacks_runs_on_the_default_device_with_a_log_line(kv):
    """A workflow saved on a machine with four GPUs runs here, as ComfyUI's own loaders do:
    the loader puts the network on the default device and says so in the log."""
    prompt = i2v_prompt(kv, steps=1, seed=11)
    loader = node_of(prompt, "KandinskyVideoKeyframeUNetLoader")
    prompt[loader]["inputs"]["device"] = "cuda:3"
    mark = kv.log_mark()
    result = kv.run(prompt, timeout=600)
    assert result.ok, result.describe()
    log = kv.log_since(mark)
    assert "device 'cuda:3' is not on this machine" in log and "running on the default device" in log, log[-2000:]


def test_the_frontend_loads_a_template_saved_without_the_device_input_with_default(kv, comfy_browser):
    """The templates were saved before the loaders had a device input: the frontend fills
    the missing trailing widget with its default, as the API conversion does."""
    workflow = shipped_workflow("kandinsky_video_text_to_video_8fps")
    loaders = [n for n in workflow["nodes"] if n["type"] in LOADERS]
    widgets_before = {"KandinskyVideoTextEncoderLoader": 3}  # the others: file and weight_dtype
    assert len(loaders) == 5
    assert all(len(n["widgets_values"]) == widgets_before.get(n["type"], 2) for n in loaders), loaders
    comfy_browser.load_workflow(workflow)
    comfy_browser.close_dialogs()
    prompt = comfy_browser.graph_to_prompt()
    devices = {v["class_type"]: v["inputs"].get("device") for v in prompt.values() if v["class_type"] in LOADERS}
    assert devices == dict.fromkeys(LOADERS, "default"), devices
    api = kv.to_api(workflow)
    assert all("device" not in v["inputs"] for v in api.values() if v["class_type"] in LOADERS)


# fp16 also runs (checked by hand) but CPU fp16 kernels are slow: it is left to GPU runs
@pytest.mark.parametrize("weight_dtype", ["bf16", "fp8_e4m3fn"])
def test_weight_dtypes_load_and_run(kv, weight_dtype):
    prompt = i2v_prompt(kv, steps=1, seed=5)
    loaders = [k for k, v in prompt.items() if "weight_dtype" in v["inputs"]]
    assert len(loaders) == 4  # text encoder, keyframe U-Net, image MoVQ, video MoVQ
    for key in loaders:
        prompt[key]["inputs"]["weight_dtype"] = weight_dtype
    result = kv.run(prompt, timeout=900)
    assert result.ok, result.describe()
    assert len(result.outputs["900"]["images"]) == 12


def test_each_node_is_an_adapter_of_its_kv_core_stage(kv, kv_release):
    """Every stage node gives what its ``kv_core.pipeline`` stage gives for the same
    inputs (fp32 on the CPU, one seed): the nodes add only the host's hooks. Each stage
    here gets the node chain's own intermediate values where the host lets them out
    (Save Latent, the pictures), so a mismatch points at one node."""
    import torch
    from safetensors.torch import load_file

    from kv_core.stages.decode import decode_frames
    from kv_core.stages.first_frame import decode_first_frame, encode_first_frame, generate_first_frame
    from kv_core.stages.interpolation import interpolate_frames
    from kv_core.stages.keyframes import generate_keyframes
    from kv_core.stages.text import encode_prompt

    seed, steps = 1234, 2
    prompt = fast(kv.to_api(shipped_workflow("kandinsky_video_text_to_video_8fps")), seed=seed, steps=steps)
    first, keyframes, interpolate, decode = (node_of(prompt, c) for c in (
        "KandinskyVideoFirstFrame", "KandinskyVideoKeyframes", "KandinskyVideoInterpolate", "KandinskyVideoDecode"))
    prefix = f"latents/kv_eq_{uuid.uuid4().hex[:8]}"
    prompt["901"] = {"class_type": "SaveLatent", "inputs": {"samples": [keyframes, 0], "filename_prefix": prefix + "_k"}}
    prompt["902"] = {"class_type": "SaveLatent", "inputs": {"samples": [interpolate, 0], "filename_prefix": prefix + "_i"}}
    prompt["903"] = {"class_type": "PreviewImage", "inputs": {"images": [first, 0]}}
    prompt["904"] = {"class_type": "PreviewImage", "inputs": {"images": [decode, 0]}}
    text = prompt[node_of(prompt, "KandinskyVideoTextEncode")]["inputs"]["prompt"]
    motion = prompt[keyframes]["inputs"]["motion"]
    result = kv.run(prompt, timeout=900, check=True)
    saved = {p.name.split("_")[-3]: load_file(str(p))["latent_tensor"][0].movedim(0, 1)
             for p in kv.output_files(result) if p.suffix == ".latent"}

    n = tiny_networks(kv_release)
    kw = dict(sampler="ddpm", steps=steps, noise=seed)
    cond = encode_prompt(n["text"], text)  # Text Encode
    picture = decode_first_frame(n["movq"], generate_first_frame(n["unet"], n["null"], cond, width=SIZE, height=SIZE,
                                                                  movq=n["movq"], **kw))  # First Frame
    # an IMAGE holds k/255; Preview Image truncates 255 * k/255, which may give k - 1
    [shown] = result.outputs["903"]["images"]
    assert np.abs(shown_picture(kv, shown) - picture.numpy().astype(int)).max() <= 1
    key = encode_first_frame(n["movq"], picture.float() / 255, width=SIZE, height=SIZE)  # Encode First Frame
    frames = generate_keyframes(n["unet"], n["null"], cond, key, motion=motion, **kw)  # Keyframes
    torch.testing.assert_close(saved["k"], frames, atol=1e-4, rtol=1e-4)
    frames = interpolate_frames(n["interp"], n["interp_null"], cond, saved["k"], **kw)  # Interpolate, on its input
    torch.testing.assert_close(saved["i"], frames, atol=1e-4, rtol=1e-4)
    video = decode_frames(n["video_movq"], saved["i"])  # Decode, on its input
    images = result.outputs["904"]["images"]
    assert len(images) == video.shape[0] == 45
    for i in (0, 22, 44):
        assert np.abs(shown_picture(kv, images[i]) - (video[i].permute(1, 2, 0) * 255).numpy().astype(int)).max() <= 1


def test_a_workflow_saved_by_the_previous_release_still_converts_and_runs(kv):
    """The 8 fps text-to-video workflow as release 98a84ec saved it (node ids, widget
    values in input order) loads into this pack's nodes and makes its 45-frame video."""
    from test_workflows import check_video

    workflow = json.loads((REPO / "tests" / "data" / "previous_release_text_to_video_8fps.json").read_text())
    prompt = fast(kv.to_api(workflow), seed=3)
    result = kv.run(prompt, timeout=900)
    assert result.ok, result.describe()
    check_video(kv, result, "kandinsky_video_text_to_video_8fps", SIZE)


def test_a_second_run_does_not_load_the_networks_again(kv):
    """ComfyUI keeps the networks loaded between stages and prompts while memory allows:
    a second run that re-runs the sampling and decoding nodes (another seed; identical
    inputs would be served from the cache) loads nothing (``load_models_gpu`` logs
    "Requested to load" for each model it has to load)."""
    assert kv.run(i2v_prompt(kv, seed=21), timeout=600).ok
    mark = kv.log_mark()
    result = kv.run(i2v_prompt(kv, seed=22), timeout=600)
    assert result.ok, result.describe()
    prompt = result.history["prompt"][2]
    for stage in ("KandinskyVideoKeyframes", "KandinskyVideoDecode"):
        assert node_of(prompt, stage) in result.executed
    loads = [line for line in kv.log_since(mark).splitlines() if "Requested to load" in line]
    assert loads == [], loads


# --------------------------------------------------------------------------- interrupt, memory

def _submit(host, prompt) -> str:
    r = requests.post(host.url + "/prompt", json={"prompt": prompt, "client_id": host.client_id}, timeout=60)
    r.raise_for_status()
    return r.json()["prompt_id"]


def test_interrupt_stops_keyframe_sampling_within_one_step(kv, record_property):
    prompt = i2v_prompt(kv, steps=400, seed=11)
    keyframes = node_of(prompt, "KandinskyVideoKeyframes")
    ws = websocket.create_connection(f"ws://127.0.0.1:{kv.port}/ws?clientId={kv.client_id}", timeout=120,
                                     suppress_origin=True)
    try:
        prompt_id = _submit(kv, prompt)
        step_times, last_step, sent_at, sent_step, end = [], 0, None, None, None
        while end is None:
            raw = ws.recv()
            if not isinstance(raw, str):
                continue
            msg = json.loads(raw)
            data = msg.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if msg["type"] == "progress" and data.get("node") == keyframes:
                last_step = data["value"]
                step_times.append(time.monotonic())
                if sent_at is None and last_step >= 5:
                    sent_at, sent_step = time.monotonic(), last_step
                    kv.interrupt()
            elif msg["type"] in ("execution_interrupted", "execution_error", "execution_success"):
                end = (msg["type"], time.monotonic())
    finally:
        ws.close()
    assert end[0] == "execution_interrupted"
    assert sent_at is not None, "keyframe sampling reported no progress"
    step = statistics.median(b - a for a, b in zip(step_times, step_times[1:]) if b <= sent_at)
    latency = end[1] - sent_at
    steps_after = last_step - sent_step
    record_property("interrupt_latency_s", round(latency, 3))
    record_property("step_time_s", round(step, 3))
    record_property("steps_after_interrupt", steps_after)
    print(f"interrupt: {latency:.3f} s after the request, {steps_after} step(s) reported after it, "
          f"median step {step:.3f} s")
    assert steps_after <= 1
    assert latency < 2 * step + 1.0
    # the server keeps serving: the next prompt runs to the end
    assert kv.run(i2v_prompt(kv, seed=12), timeout=600).ok


def test_memory_stays_bounded_over_twenty_prompts(kv, record_property):
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process(kv.proc.pid)
    rss = []
    for i in range(20):
        result = kv.run(i2v_prompt(kv, seed=1000 + i), timeout=600)
        assert result.ok, result.describe()
        assert node_of(result.history["prompt"][2], "KandinskyVideoKeyframes") in result.executed
        rss.append(proc.memory_info().rss / 2**20)
    growth = max(rss[10:]) - rss[4]
    record_property("rss_mib", [round(r) for r in rss])
    record_property("rss_growth_mib_prompts_5_to_20", round(growth, 1))
    print("RSS MiB after each prompt:", [round(r) for r in rss], f"growth after warm-up {growth:.1f} MiB")
    assert growth < 64, f"server memory grew by {growth:.0f} MiB from prompt 5 to 20: {rss}"


# --------------------------------------------------------------------------- step cache

def test_keyframes_with_the_step_cache_node_run_the_counted_full_steps(kv):
    """Step Cache -> Keyframes: 6 steps at interval 2 from step 0 run 3 full and 3 cached
    steps (the node logs the cache's own counts); the video differs from the uncached one
    but stays close to it; an end_step before start_step is refused by name."""
    prompt = i2v_prompt(kv, steps=6, seed=5)
    plain = kv.run(prompt, timeout=600)
    assert plain.ok, plain.describe()
    cached = copy.deepcopy(prompt)
    cached["950"] = {"class_type": "KandinskyVideoStepCache",
                     "inputs": {"interval": 2, "branch": 0, "start_step": 0, "end_step": -1}}
    cached[node_of(cached, "KandinskyVideoKeyframes")]["inputs"]["step_cache"] = ["950", 0]
    mark = kv.log_mark()
    result = kv.run(cached, timeout=600)
    assert result.ok, result.describe()
    log = kv.log_since(mark)
    assert "Kandinsky Video Keyframes: step cache ran 3 full + 3 cached steps" in log, log[-2000:]
    a = np.stack([shown_picture(kv, item) for item in plain.outputs["900"]["images"]]).astype(np.float64)
    b = np.stack([shown_picture(kv, item) for item in result.outputs["900"]["images"]]).astype(np.float64)
    assert a.shape == b.shape and not np.array_equal(a, b)
    other = kv.run(i2v_prompt(kv, steps=6, seed=6), timeout=600)
    c = np.stack([shown_picture(kv, item) for item in other.outputs["900"]["images"]]).astype(np.float64)
    assert np.abs(b - a).mean() < 0.5 * np.abs(c - a).mean()  # nearer the uncached video than another seed's
    bad = copy.deepcopy(cached)
    bad["950"]["inputs"].update(start_step=4, end_step=2)
    refused = kv.run(bad, timeout=300)
    assert refused.status == "error" and refused.error["node_id"] == "950"
    assert "end_step (2) is before start_step (4)" in refused.error["exception_message"]
