"""Encode Video -> Interpolate -> Decode in a real ComfyUI on real media that no one in this
project made: animated WebPs of the ComfyUI template media packages (through core Load Image,
which also gives their alpha as a MASK) and core's input/example.png. With the tiny random
release the pixels are noise, so structure is checked: frame counts, frame rates (exact),
sizes (odd, non-square; fit pad, crop and scale), that the given frames keep their places in
latent space, and the errors for what is no video. (Core Load Video is the template's path:
tests/test_workflows.py runs it on a real clip.)"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from PIL import Image

from test_nodes import _tiny_networks, kv, kv_release  # noqa: F401 (fixtures)

FRAMES = 5  # frames taken from each animation (core Image From Batch): 4 * 5 - 3 = 17 out


def _animations() -> list[Path]:
    files = []
    for name in ("video", "other", "api"):
        spec = importlib.util.find_spec(f"comfyui_workflow_templates_media_{name}")
        if spec and spec.submodule_search_locations:
            files += sorted(Path(next(iter(spec.submodule_search_locations))).rglob("*.webp"))
    return files


def _pick(files, want) -> Path:
    for path in files:
        with Image.open(path) as image:
            if getattr(image, "n_frames", 1) >= FRAMES and want(image.size):
                return path
    pytest.skip("no comfyui-workflow-templates-media-* animation of this kind installed")


def _branch(prompt: dict, key: str, image: str, fit: str, *, window: int = 0, mask: bool = False,
            max_side: int = 64) -> str:
    """Load Image -> Image From Batch -> Encode Video (fit) -> Interpolate (auto) -> Decode ->
    Save Animated WEBP + Preview as Text (the fps), under ids ``key``0 .. ``key``7."""
    k = key
    prompt.update({
        f"{k}0": {"class_type": "LoadImage", "inputs": {"image": image}},
        f"{k}1": {"class_type": "ImageFromBatch", "inputs": {"image": [f"{k}0", 0], "batch_index": 0,
                                                             "length": FRAMES}},
        f"{k}2": {"class_type": "KandinskyVideoEncodeVideo", "inputs": {
            "movq": ["m", 0], "interpolation_unet": ["u", 0], "images": [f"{k}1", 0], "fps": 6.0, "fit": fit,
            "max_side": max_side, **({"mask": [f"{k}0", 1]} if mask else {})}},
        f"{k}3": {"class_type": "KandinskyVideoInterpolate", "inputs": {
            "interpolation_unet": ["u", 0], "latent": [f"{k}2", 0], "skip_frames": -1, "guidance_scale": 0.5,
            "steps": 2, "sampler": "ddpm", "seed": 3, "window": window}},
        f"{k}4": {"class_type": "KandinskyVideoDecode", "inputs": {"video_movq": ["v", 0], "latent": [f"{k}3", 0],
                                                                  "chunk_size": 0}},
        f"{k}5": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": [f"{k}4", 0], "filename_prefix": f"kv_{k}",
                                                               "fps": [f"{k}4", 1], "lossless": False,
                                                               "quality": 50, "method": "fastest"}},
        f"{k}6": {"class_type": "PreviewAny", "inputs": {"source": [f"{k}4", 1]}},
    })
    return k


def _networks() -> dict:
    return {
        "m": {"class_type": "KandinskyVideoMoVQLoader", "inputs": {"movq_name": "movq.pt", "weight_dtype": "default"}},
        "u": {"class_type": "KandinskyVideoInterpolationUNetLoader",
              "inputs": {"unet_name": "interpolation.pt", "weight_dtype": "default"}},
        "v": {"class_type": "KandinskyVideoVideoMoVQLoader",
              "inputs": {"movq_name": "video_movq.pt", "weight_dtype": "default"}},
    }


def _webp(host, result, node: str) -> tuple[int, tuple[int, int]]:
    files = [p for p in host.output_files(result) if p.name.startswith(f"kv_{node[:-1]}")]
    assert len(files) == 1, files
    with Image.open(files[0]) as image:
        return image.n_frames, image.size


def _load_image_frames(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first FRAMES frames as core Load Image gives them (RGB / 255) and their alpha."""
    import numpy as np
    from PIL import ImageOps, ImageSequence

    rgb, alpha = [], []
    with Image.open(path) as image:
        for i, frame in enumerate(ImageSequence.Iterator(image)):  # one image object, seeked: read it now
            if i == FRAMES:
                break
            frame = ImageOps.exif_transpose(frame)
            rgb.append(torch.from_numpy(np.asarray(frame.convert("RGB"), dtype=np.float32) / 255))
            if "A" in frame.getbands():
                alpha.append(torch.from_numpy(np.asarray(frame.getchannel("A"), dtype=np.float32) / 255))
    return torch.stack(rgb), (torch.stack(alpha) if alpha else None)


def test_real_animations_keep_count_rate_size_and_positions(kv, kv_release):
    files = _animations()
    odd = _pick(files, lambda wh: wh[0] % 2 == 1)               # 349x350 in the 0.3.x media packages
    wide = _pick(files, lambda wh: wh[0] >= 1.5 * wh[1])       # 768x512
    for path in (odd, wide):
        shutil.copy(path, kv.input_dir / f"kv_{path.name}")
    with Image.open(odd) as image:
        odd_size, odd_rgba = image.size, image.mode == "RGBA"
    with Image.open(wide) as image:
        wide_size = image.size
    prompt = _networks()
    # 349x350 -> 80x80, padded to 96x96; its alpha comes as Load Image's MASK
    _branch(prompt, "a", f"kv_{odd.name}", "pad", mask=odd_rgba, max_side=80)
    _branch(prompt, "b", f"kv_{wide.name}", "crop")
    _branch(prompt, "c", f"kv_{wide.name}", "scale", window=2)     # 4 groups in windows of 2
    prompt["s0"] = {"class_type": "SaveLatent", "inputs": {"samples": ["a2", 0], "filename_prefix": "latents/kv_in"}}
    prompt["s1"] = {"class_type": "SaveLatent", "inputs": {"samples": ["a3", 0], "filename_prefix": "latents/kv_out"}}
    mark = kv.log_mark()
    result = kv.run(prompt, timeout=900)
    assert result.ok, result.describe()

    out_frames = 4 * FRAMES - 3
    for branch in ("a", "b", "c"):  # 6 fps given (Load Image carries no rate) -> exactly 24 fps
        assert result.outputs[f"{branch}6"]["text"] == ["24.0"]
    assert _webp(kv, result, "a5") == (out_frames, odd_size)    # odd size: padded, then cropped back
    assert _webp(kv, result, "c5") == (out_frames, wide_size)   # scaled back to the input's size
    # crop: max_side 64 makes 768x512 64x43, cropped to 64x32; the output is that part at the input's scale
    work_h = round(64 * wide_size[1] / wide_size[0])
    crop_h = round(32 * wide_size[1] / work_h)
    assert _webp(kv, result, "b5") == (out_frames, (wide_size[0], crop_h)) and crop_h < wide_size[1]
    log = kv.log_since(mark)
    assert f"CROPPED by 0x{work_h - 32} pixels" in log  # nothing cropped in silence: the log says so
    assert "padded by 16x16 edge pixels" in log

    saved = {}
    for path in kv.output_files(result):
        if path.suffix == ".latent":
            saved[path.name.split("_0")[0]] = safetensors.torch.load_file(path)["latent_tensor"]
    given, interpolated = saved["kv_in"], saved["kv_out"]
    assert given.shape[2] == FRAMES and interpolated.shape[2] == out_frames
    assert torch.equal(interpolated[:, :, ::4], given)  # frame 4i of the output is input frame i

    # the nodes are adapters of kv_core: its stages give the same latents from the same frames
    from kv_core.conditioning import null_condition
    from kv_core.rules import size_rule
    from kv_core.stages.interpolation import interpolate_frames
    from kv_core.video_input import auto_skip_frames, encode_video, plan_fit

    n = _tiny_networks(kv_release)
    frames, alpha = _load_image_frames(odd)
    fit = plan_fit(odd_size[0], odd_size[1], size_rule(movq=n["movq"], interpolation_unet=n["interp"]), "pad", 80)
    latents, _ = encode_video(n["movq"], frames, fit, alpha=alpha)
    torch.testing.assert_close(given[0].movedim(0, 1), latents, atol=1e-4, rtol=1e-4)
    want = interpolate_frames(n["interp"], n["interp_null"], null_condition(n["interp_null"]), latents,
                              skip_frames=auto_skip_frames(6.0), sampler="ddpm", steps=2, noise=3)
    torch.testing.assert_close(interpolated[0].movedim(0, 1), want, atol=1e-4, rtol=1e-4)


def test_a_still_picture_is_refused_by_name(kv):
    """core's input/example.png through Load Image is one frame: Encode Video says so."""
    prompt = _networks()
    _branch(prompt, "a", "example.png", "pad")
    result = kv.run(prompt, timeout=300)
    assert result.status == "error" and result.error["node_id"] == "a2", result.describe()
    assert "needs at least 2 frames, got 1" in result.error["exception_message"]
