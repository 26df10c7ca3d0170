"""Preparing the conditioning (first-frame) image for the MoVQ encoder.

``prepare_first_frame(image, width, height, mode)`` returns a float32 tensor
``[3, height, width]`` in [-1, 1]:

- ``mode="reference"`` (default) reproduces the reference exactly with Pillow: scale by
  ``1 / r`` with ``r = max(1, min(w / width, h / height))`` (``Image.resize`` to
  ``(round(w / r), round(h / r))`` with Pillow's default filter, BICUBIC for RGB; a
  same-size resize is a copy), then
  ``Image.crop`` of the centred ``width × height`` box (Pillow rounds each coordinate
  half-to-even; parts outside the image become black), then RGB. An image smaller than
  the video is therefore never scaled up: it is padded with black.
- ``mode="cover"`` scales the image, up or down, so that it covers the whole frame
  (``r = min(w / width, h / height)``), then crops the centre the same way: no black
  borders.

Accepted images: a ``PIL.Image.Image``; a uint8 or float numpy array / torch tensor
``[H, W]``, ``[H, W, C]`` or ``[1, H, W, C]`` (C = 1, 3 or 4; floats in [0, 1], as a
ComfyUI IMAGE; they are rounded to uint8 so that an image that came from uint8 converts
back exactly).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

RESIZE_MODES = ("reference", "cover")


def to_pil(image) -> Image.Image:
    """A PIL image from any accepted image type (see the module docstring)."""
    if isinstance(image, Image.Image):
        pil = image
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image
        if arr.ndim == 4:
            if arr.shape[0] != 1:
                raise ValueError(f"expected one image, got a batch of {arr.shape[0]}")
            arr = arr[0]
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise ValueError("image array must be [H, W], [H, W, C] or [1, H, W, C] with C in (1, 3, 4), "
                             f"got shape {tuple(image.shape)}")
        if arr.dtype == np.uint8:
            pass
        elif np.issubdtype(arr.dtype, np.floating):
            if arr.size and not np.isfinite(arr).all():
                raise ValueError("image has non-finite values")
            arr = np.clip(np.round(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        else:
            raise ValueError(f"image array must be uint8 or float in [0, 1], got {arr.dtype}")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"image has no pixels (shape {tuple(image.shape)})")
        pil = Image.fromarray(np.ascontiguousarray(arr))
    else:
        raise TypeError("image must be a PIL.Image.Image, a numpy array or a torch tensor "
                        f"([H, W, C] / [1, H, W, C]), got {type(image).__name__}")
    if pil.width == 0 or pil.height == 0:
        raise ValueError(f"image has no pixels (size {pil.size})")
    return pil


def resize_and_crop(image: Image.Image, width: int, height: int, mode: str = "reference") -> Image.Image:
    """Scale and centre-crop ``image`` to ``width × height`` (see the module docstring)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"image mode must be one of {RESIZE_MODES}, got {mode!r}")
    ratio = min(image.width / width, image.height / height)
    if mode == "reference":
        ratio = max(1.0, ratio)  # Pillow's default filter, as the reference (BICUBIC for RGB)
        image = image.resize((round(image.width / ratio), round(image.height / ratio)))
    else:
        if image.mode not in ("RGB", "RGBA", "L"):
            image = image.convert("RGB")
        image = image.resize((round(image.width / ratio), round(image.height / ratio)), Image.BICUBIC)
    ow, oh = image.size
    image = image.crop(((ow - width) / 2, (oh - height) / 2, (ow + width) / 2, (oh + height) / 2))
    return image if image.mode == "RGB" else image.convert("RGB")


def prepare_first_frame(image, width: int, height: int, mode: str = "reference") -> torch.Tensor:
    """``[3, height, width]`` float32 in [-1, 1], ready for ``MoVQ.encode``."""
    pil = resize_and_crop(to_pil(image), width, height, mode)
    arr = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy())
    return arr.permute(2, 0, 1).float().div(255.0).mul(2.0).sub(1.0)
