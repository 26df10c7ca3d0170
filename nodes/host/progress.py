"""Progress bars that are also interrupt points, with the host's latent previews."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Callable, Optional

import torch

import comfy.latent_formats
import comfy.model_management as mm
import comfy.utils
import latent_preview

from ...kv_core.sampling.step_cache import StepCacheSettings
from .ui_text import send_progress_text

logger = logging.getLogger(__name__)


class MoVQLatentFormat(comfy.latent_formats.LatentFormat):
    """The Kandinsky Video MoVQ latents (4 channels, unscaled) for ComfyUI's previewers.

    ``latent_rgb_factors`` is an approximation, not fitted on the release's MoVQ: channels
    1-3 are shown as red, green and blue and channel 4 as brightness, each at half
    strength (Latent2RGB then maps ``[-1, 1]`` to black..white). It shows where and how
    the picture forms; colours are not the decoded ones. There is no TAESD for these
    latents, so ``--preview-method taesd`` falls back to this, as for core models
    without one."""

    latent_channels = 4
    latent_rgb_factors = [
        #  R     G     B
        [0.5, 0.0, 0.0],
        [0.0, 0.5, 0.0],
        [0.0, 0.0, 0.5],
        [0.25, 0.25, 0.25],
    ]


def tile_frames(frames: torch.Tensor) -> torch.Tensor:
    """Frames ``[N, C, h, w]`` tiled row by row into one latent ``[1, C, rows*h, cols*w]``
    (a near-square grid, unused cells zero), so a previewer that shows the first item of
    a batch shows the whole video; a linear previewer maps each cell as its frame."""
    x = frames.detach()
    if x.ndim == 3:
        x = x[None]
    n, c, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = x.new_zeros(rows * cols, c, h, w)
    grid[:n] = x
    return grid.reshape(rows, cols, c, h, w).permute(2, 0, 3, 1, 4).reshape(1, c, rows * h, cols * w)


class StepProgress:
    """ComfyUI progress bar for one sampling loop; every step is an interrupt point and
    shows the current latent through the host's previewer (``latent_preview``: the
    user's ``--preview-method``, none by default). ``to_frames`` maps the loop's latent
    to ``[N, 4, h, w]`` frames for the preview (None: no preview)."""

    def __init__(self, total: int, to_frames: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.bar = comfy.utils.ProgressBar(total)
        self.to_frames = to_frames
        self.previewer = None
        if to_frames is not None:
            self.previewer = latent_preview.get_previewer(mm.get_torch_device(), MoVQLatentFormat())

    def cancel(self) -> bool:
        mm.throw_exception_if_processing_interrupted()
        return False

    def preview(self, latent: torch.Tensor):
        """The host's preview (``(format, PIL image, max size)``) of a loop latent, or None."""
        if self.previewer is None:
            return None
        return self.previewer.decode_latent_to_preview_image("JPEG", tile_frames(self.to_frames(latent).float()))

    def __call__(self, step: int, total: int, latent: Optional[torch.Tensor] = None) -> None:
        preview = None
        if latent is not None:
            with contextlib.suppress(Exception):  # a preview must never break a run
                preview = self.preview(latent)
        self.bar.update_absolute(step, total, preview)
        mm.throw_exception_if_processing_interrupted()


class CacheReport:
    """The step counts of a stage node's cached loops, shown on the node after every step
    (``"step cache: 5 full + 7 cached steps of 50"``) and logged when a loop ends; the
    counts are the cache's own (a step that had to run in full counts as full)."""

    def __init__(self, what: str, node_id, steps: int, loops: int = 1):
        self.what, self.node_id, self.steps, self.loops = what, node_id, steps, loops
        self.loop = 0
        self.last: tuple[int, int] = (0, 0)

    @classmethod
    def of(cls, node, what: str, steps: int, loops: int = 1) -> "CacheReport":
        """The report of the running node class ``node`` (its hidden ``unique_id``, if any)."""
        hidden = getattr(node, "hidden", None)
        return cls(what, getattr(hidden, "unique_id", None), steps, loops)

    def settings(self, settings: Optional[StepCacheSettings]) -> Optional[StepCacheSettings]:
        """``settings`` reporting here (None or interval 1 stays None: no caching)."""
        if settings is None or not settings.enabled:
            return None
        return dataclasses.replace(settings, report=self)

    def __call__(self, full: int, cached: int) -> None:
        if full + cached == 1:
            self.loop += 1
        self.last = (full, cached)
        which = f" (video {self.loop} of {self.loops})" if self.loops > 1 else ""
        send_progress_text(self.node_id, f"step cache{which}: {full} full + {cached} cached steps of {self.steps}")
        if full + cached == self.steps:
            logger.info("%s%s: step cache ran %d full + %d cached steps", self.what, which, full, cached)
