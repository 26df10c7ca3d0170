"""The core sampling path in the real ComfyUI (one prompt): the first-frame stage of the
core-sampling template with a core sampler and scheduler other than the template's
(dpmpp_2m, karras from BasicScheduler), a core model patch (RescaleCFG) on the MODEL, and a
core KSampler beside SamplerCustomAdvanced; both report progress as core models do. The
template itself runs end to end in tests/host/test_workflows.py; the equivalence with the pack's
loops, previews, interrupt and torch.compile are in tests/nodes/test_core_sampling.py."""
from __future__ import annotations

from host_prompts import fast, node_of, shipped_workflow

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
