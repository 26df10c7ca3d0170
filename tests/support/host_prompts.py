"""Helpers of the tests that run the nodes in a real ComfyUI (tests/host/): the tiny release's
files, the shipped workflows as fast API prompts, and reading what a run gave."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
RELEASE_FILES = ("configs.json", "t2v.pt", "interpolation.pt", "movq.pt", "video_movq.pt", "t5_projections.pt",
                 "flan-ul2")
SIZE = 64  # smallest video size the networks take (tests keep the tiny runs fast)


def shipped_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def fast(prompt: dict, *, steps: int = 2, size: int = SIZE, seed: int | None = None) -> dict:
    """A copy of an API prompt with few steps and a small size (``max_side`` of Encode Video
    too) — the tests' only changes to the shipped defaults."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"].startswith("KandinskyVideo"):
            if "steps" in inputs:
                inputs["steps"] = steps
            for key in ("width", "height", "max_side"):
                if key in inputs:
                    inputs[key] = size
            if seed is not None and "seed" in inputs:
                inputs["seed"] = seed
    return prompt


def i2v_prompt(host, **kw) -> dict:
    """The shipped image-to-video workflow as a fast API prompt that decodes the 12
    keyframes (no interpolation pass) and ends in PreviewImage (no video file) — the
    cheapest full run of the pack."""
    prompt = fast(host.to_api(shipped_workflow("kandinsky_video_image_to_video")), **kw)
    drop = ("CreateVideo", "SaveVideo", "KandinskyVideoInterpolate", "KandinskyVideoInterpolationUNetLoader")
    for key in [k for k, v in prompt.items() if v["class_type"] in drop]:
        del prompt[key]
    decode = next(k for k, v in prompt.items() if v["class_type"] == "KandinskyVideoDecode")
    prompt[decode]["inputs"]["latent"] = [node_of(prompt, "KandinskyVideoKeyframes"), 0]
    prompt["900"] = {"class_type": "PreviewImage", "inputs": {"images": [decode, 0]}}
    return prompt


def node_of(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def loader_error(host, model: Path, loader_type: str, input_name: str, value: str, *, seed: int) -> str:
    """Put ``model`` (a file or folder) into models/kandinsky_video/, pick ``value`` in the
    ``input_name`` of the i2v workflow's ``loader_type`` node, run, and return the error
    message, checking that it is that loader's and that no later stage ran."""
    host.add_model("kandinsky_video", model)
    prompt = i2v_prompt(host, seed=seed)
    loader = node_of(prompt, loader_type)
    prompt[loader]["inputs"][input_name] = value
    result = host.run(prompt, timeout=300)
    assert result.status == "error" and result.error["node_id"] == loader, result.describe()
    assert node_of(prompt, "KandinskyVideoKeyframes") not in result.executed
    return result.error["exception_message"]


def error_text(result) -> str:
    return json.dumps(result.node_errors) + json.dumps(result.error or {})


def tiny_networks(release: Path) -> dict:
    """The tiny release's networks loaded in this process, fp32 on the CPU (as the host
    runs them), to call the kv_core stages with."""
    from kv_core import checkpoints as ckpt
    from kv_core.text import TextEncoder

    configs = release / "configs.json"
    unet, null = ckpt.load_keyframe_unet(release / "t2v.pt", configs)
    interp, interp_null = ckpt.load_interpolation_unet(release / "interpolation.pt", configs)
    tokens = json.loads(configs.read_text())["text_encoder"]["tokens_length"]
    return dict(unet=unet.eval(), null=null, interp=interp.eval(), interp_null=interp_null,
                movq=ckpt.load_movq(release / "movq.pt", configs, video=False).eval(),
                video_movq=ckpt.load_movq(release / "video_movq.pt", configs, video=True).eval(),
                text=TextEncoder.from_files(release / "flan-ul2", release / "t5_projections.pt", tokens_length=tokens))


def shown_picture(host, item: dict) -> np.ndarray:
    """An image a node reported (Preview Image writes lossless PNG into temp/) as int RGB."""
    root = {"output": host.output_dir, "temp": host.base_dir / "temp"}[item["type"]]
    return np.asarray(Image.open(root / item["subfolder"] / item["filename"])).astype(int)
