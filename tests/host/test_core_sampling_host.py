"""The core sampling path in the real ComfyUI (one prompt): the first-frame stage of the
core-sampling template with a core sampler and scheduler other than the template's
(dpmpp_2m, karras from BasicScheduler), a core model patch (RescaleCFG) on the MODEL, and a
core KSampler beside SamplerCustomAdvanced; both report progress as core models do. Step caching
on that MODEL (Apply Step Cache). The template itself runs end to end in
tests/host/test_workflows.py; the equivalence with the pack's
loops, previews, interrupt and torch.compile are in tests/nodes/test_core_sampling.py."""
from __future__ import annotations

import numpy as np

from host_prompts import fast, node_of, shipped_workflow, shown_picture

TEMPLATE = "kandinsky_video_text_to_video_8fps_core_sampling"
FIRST_FRAME = {"KandinskyVideoTextEncoderLoader", "KandinskyVideoTextEncode", "KandinskyVideoKeyframeUNetLoader",
               "KandinskyVideoMoVQLoader", "KandinskyVideoKeyframeModel", "KandinskyVideoFirstFrameConditioning",
               "KandinskyVideoGuider", "KSamplerSelect", "RandomNoise", "SamplerCustomAdvanced",
               "KandinskyVideoDecodeFirstFrame"}


def test_core_samplers_schedulers_and_patches_run_the_first_frame(kv):
    full = fast(kv.to_api(shipped_workflow(TEMPLATE)))
    first = node_of(full, "KandinskyVideoFirstFrameConditioning")
    prompt = {}
    for key, node in full.items():  # the first-frame stage only (the first node of each type)
        if node["class_type"] in FIRST_FRAME and node_of(full, node["class_type"]) == key:
            prompt[key] = node
    sca, guider = node_of(prompt, "SamplerCustomAdvanced"), node_of(prompt, "KandinskyVideoGuider")
    model = node_of(prompt, "KandinskyVideoKeyframeModel")
    assert prompt[guider]["inputs"]["positive"] == [first, 0]
    prompt[node_of(prompt, "KSamplerSelect")]["inputs"]["sampler_name"] = "dpmpp_2m"
    prompt["901"] = {"class_type": "RescaleCFG", "inputs": {"model": [model, 0], "multiplier": 0.7}}
    prompt[guider]["inputs"]["model"] = ["901", 0]
    prompt["902"] = {"class_type": "BasicScheduler", "inputs": {"model": ["901", 0], "scheduler": "karras",
                                                                "steps": 3, "denoise": 1.0}}
    prompt[sca]["inputs"]["sigmas"] = ["902", 0]
    prompt["903"] = {"class_type": "PreviewImage", "inputs": {"images": [node_of(prompt,
                                                                               "KandinskyVideoDecodeFirstFrame"), 0]}}
    # core KSampler on the same MODEL: cfg = w + 1 (no x0 clamp: that needs the Kandinsky Video Guider)
    prompt["904"] = {"class_type": "KSampler", "inputs": {
        "model": [model, 0], "seed": 1, "steps": 3, "cfg": 6.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
        "positive": [first, 0], "negative": [first, 1], "latent_image": [first, 2], "denoise": 1.0}}
    prompt["905"] = {"class_type": "KandinskyVideoDecodeFirstFrame",
                     "inputs": {"movq": [node_of(prompt, "KandinskyVideoMoVQLoader"), 0], "latent": ["904", 0]}}
    prompt["906"] = {"class_type": "PreviewImage", "inputs": {"images": ["905", 0]}}

    result = kv.run(prompt, timeout=600)
    assert result.ok, result.describe()
    for preview in ("903", "906"):
        assert len(result.outputs[preview]["images"]) == 1
    progress = [m["data"] for m in result.messages if m["type"] == "progress"]
    for node in (sca, "904"):
        steps = [p["value"] for p in progress if p.get("node") == node]
        assert steps[-3:] == [1, 2, 3], (node, progress)


def test_apply_step_cache_runs_the_counted_full_steps_on_the_core_path(kv):
    """Step Cache -> Apply Step Cache on the first frame's core MODEL, in the real ComfyUI:
    6 steps at interval 2 from step 0 run 3 full and 3 cached steps (the cache's own counts,
    logged), the picture differs from the uncached one; interval 1 gives the uncached
    picture exactly."""
    full = fast(kv.to_api(shipped_workflow(TEMPLATE)))
    prompt = {}
    for key, node in full.items():  # the first-frame stage only (the first node of each type)
        if node["class_type"] in FIRST_FRAME and node_of(full, node["class_type"]) == key:
            prompt[key] = node
    guider, model = node_of(prompt, "KandinskyVideoGuider"), node_of(prompt, "KandinskyVideoKeyframeModel")
    sigmas = {"class_type": "KandinskyVideoSigmas", "inputs": {"stage": "first_frame", "steps": 6,
                                                                "spacing": "default"}}
    prompt["910"] = sigmas
    prompt[node_of(prompt, "SamplerCustomAdvanced")]["inputs"]["sigmas"] = ["910", 0]
    prompt[node_of(prompt, "KSamplerSelect")]["inputs"]["sampler_name"] = "ddim"
    prompt["903"] = {"class_type": "PreviewImage", "inputs": {"images": [node_of(prompt,
                                                                               "KandinskyVideoDecodeFirstFrame"), 0]}}

    def run(interval):
        p = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in prompt.items()}
        if interval is not None:
            p["911"] = {"class_type": "KandinskyVideoStepCache",
                        "inputs": {"interval": interval, "branch": 0, "start_step": 0, "end_step": -1}}
            p["912"] = {"class_type": "KandinskyVideoApplyStepCache",
                        "inputs": {"model": [model, 0], "step_cache": ["911", 0]}}
            p[guider]["inputs"]["model"] = ["912", 0]
        mark = kv.log_mark()
        result = kv.run(p, timeout=600)
        assert result.ok, result.describe()
        return shown_picture(kv, result.outputs["903"]["images"][0]), kv.log_since(mark)

    plain, _ = run(None)
    cached, log = run(2)
    assert "Kandinsky Video Step Cache: 3 full + 3 cached steps of 6 (interval 2, branch 0)" in log, log[-2000:]
    assert not np.array_equal(plain, cached)
    every, _ = run(1)
    assert np.array_equal(plain, every)
