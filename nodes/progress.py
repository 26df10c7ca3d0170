"""Progress bars that are also interrupt points, and latent previews on them."""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional

import torch

import comfy.model_management as mm
import comfy.utils
from comfy.cli_args import LatentPreviewMethod, args


def previews_enabled() -> bool:
    return args.preview_method != LatentPreviewMethod.NoPreviews


def latent_preview(latent: torch.Tensor, max_size: Optional[int] = None):
    """A quick RGB view of MoVQ latents ``[N, 4, h, w]`` (frames tiled in a grid): the
    first three channels, each normalised to its own range (no decoder is run)."""
    from PIL import Image

    x = latent.detach().float()
    if x.ndim == 3:
        x = x[None]
    n, _, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    rgb = x[:, :3]
    lo = rgb.amin(dim=(0, 2, 3), keepdim=True)
    hi = rgb.amax(dim=(0, 2, 3), keepdim=True)
    rgb = ((rgb - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    grid = torch.zeros(3, rows * h, cols * w, device=rgb.device)
    for i in range(n):  # a handful of frames, once per step
        r, c = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = rgb[i]
    img = Image.fromarray((grid.permute(1, 2, 0) * 255).to(torch.uint8).cpu().numpy())
    scale = max(1, min(8, (max_size or args.preview_size) // max(img.width, img.height)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return ("JPEG", img, max_size or args.preview_size)


class StepProgress:
    """ComfyUI progress bar for one sampling loop; every step is an interrupt point and,
    when previews are on, shows the current latent. ``to_frames`` maps the loop's latent
    to ``[N, 4, h, w]`` frames for the preview."""

    def __init__(self, total: int, to_frames: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.bar = comfy.utils.ProgressBar(total)
        self.to_frames = to_frames if previews_enabled() else None

    def cancel(self) -> bool:
        mm.throw_exception_if_processing_interrupted()
        return False

    def __call__(self, step: int, total: int, latent: Optional[torch.Tensor] = None) -> None:
        preview = None
        if self.to_frames is not None and latent is not None:
            with contextlib.suppress(Exception):  # a preview must never break a run
                preview = latent_preview(self.to_frames(latent))
        self.bar.update_absolute(step, total, preview)
        mm.throw_exception_if_processing_interrupted()
