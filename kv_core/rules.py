"""The rules of a Kandinsky Video generation, checked before any network runs: which
sizes a set of networks runs (``size_rule``), the settings' ranges, motion presets, frame
counts and frame rates. ``kv_core.stages`` and the ComfyUI nodes both use
them; nothing here runs a network.
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from .sampling import TextCondition
from .schedulers import NUM_TRAIN_TIMESTEPS, SAMPLERS

MOTION_PRESETS = {"low": 1, "medium": 10, "high": 50, "extreme": 100}
FPS_PASSES = {"low": 0, "medium": 1, "high": 2}
SKIP_FRAMES = {1: 3, 2: 1}  # interpolation pass -> skip_frames
MAX_SKIP_FRAMES = 19        # the interpolation U-Net's skip-frames embedding has 20 entries
VIDEO_SECONDS = 5.5         # a 12-keyframe video spans 5.5 s at every fps setting
REFERENCE_KEYFRAMES = 12


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_size(width, height) -> None:
    """Width and height are positive integers (what every release needs; which multiples
    the networks take is :func:`size_rule`'s part)."""
    for name, value in (("width", width), ("height", height)):
        if not _is_int(value) or value <= 0:
            raise ValueError(f"{name} must be a positive integer number of pixels, got {value!r}")


RELEASE_MOVQ_FACTOR = 8  # the release's MoVQs: 4 levels, 3 halvings


def movq_factor(movq) -> int:
    """Spatial downsampling factor of a MoVQ: ``2^(L-1)`` for ``L = len(ch_mult)`` levels
    (8 in the release), read from its encoder and decoder. A network that is not a
    ``kv_core.movq.MoVQ`` may declare it as ``downsampling_factor``."""
    declared = getattr(movq, "downsampling_factor", None)
    if declared is not None:
        return int(declared)
    encoder, decoder = getattr(movq, "encoder", None), getattr(movq, "decoder", None)
    if encoder is None or not hasattr(encoder, "down") or decoder is None or not hasattr(decoder, "up"):
        raise TypeError(f"cannot tell the downsampling factor of {type(movq).__name__}: expected a "
                        "kv_core.movq.MoVQ (or an object with a downsampling_factor attribute)")
    down, up = 2 ** (len(encoder.down) - 1), 2 ** (len(decoder.up) - 1)
    if down != up:
        raise ValueError(f"this MoVQ's encoder downsamples by {down} but its decoder upsamples by {up}")
    return down


def unet_latent_multiple(unet) -> int:
    """What a U-Net's latent sides must be a multiple of: ``2^(L-1)`` for its L levels
    (``len(dim_mult)``; every level but the last halves the latent and the up path
    concatenates the skips, so the sizes must halve exactly). 8 in the release. A network
    that is not a kv_core U-Net may declare it as ``latent_multiple``."""
    declared = getattr(unet, "latent_multiple", None)
    if declared is not None:
        return int(declared)
    levels = getattr(unet, "down_samples", None)
    if levels is None:
        raise TypeError(f"cannot tell which latent sizes {type(unet).__name__} takes: expected a kv_core "
                        "U-Net (or an object with a latent_multiple attribute)")
    return 2 ** (len(levels) - 1)


@dataclass(frozen=True)
class SizeRule:
    """The video sizes a set of networks can run, derived from them (:func:`size_rule`).

    ``factor``: the MoVQ downsampling factor (pixels per latent cell; None when no MoVQ
    was given). ``latent_multiple``: what each latent side must be a multiple of (the
    U-Nets' halvings). ``multiple`` = factor * latent_multiple: the pixel rule. The first
    frame is made at twice the size, which every accepted size also fits. ``reason``
    names where the rule comes from, for the messages.
    """

    factor: Optional[int]
    latent_multiple: int
    reason: str

    @property
    def multiple(self) -> int:
        return (self.factor or 1) * self.latent_multiple

    def check(self, width, height) -> None:
        """Raise ``ValueError`` naming the rule unless both are positive multiples."""
        check_size(width, height)
        for name, value in (("width", width), ("height", height)):
            if value % self.multiple:
                lo = value // self.multiple * self.multiple
                near = [v for v in (lo, lo + self.multiple) if v > 0]
                raise ValueError(
                    f"{name} {value} does not fit these networks: it must be a multiple of {self.multiple} "
                    f"({self.reason}); nearest: {' or '.join(map(str, near))}")

    def check_latent(self, h, w, what: str = "latent") -> None:
        """The same rule on latent sides (``[..., h, w]``), for stages that get a latent."""
        for name, value in (("height", h), ("width", w)):
            if value <= 0 or value % self.latent_multiple:
                raise ValueError(
                    f"the {what} is {h}x{w} (latent cells) but its {name} must be a multiple of "
                    f"{self.latent_multiple} ({self.reason})")


def _times(n: int) -> str:
    return {0: "no times", 1: "once", 2: "twice"}.get(n, f"{n} times")


def size_rule(*, movq=None, video_movq=None, unet=None, interpolation_unet=None) -> SizeRule:
    """The sizes the given networks can run: a multiple of the MoVQ factor times the
    largest U-Net latent multiple (``lcm``), e.g. 8 x 2^3 = 64 for the release; tiny
    networks with 3 U-Net levels give 8 x 2^2 = 32. Raises ``ValueError`` when the image
    and video MoVQs downsample differently (they are then not from one release)."""
    factors = {name: movq_factor(m) for name, m in (("image MoVQ", movq), ("video MoVQ", video_movq))
               if m is not None}
    if len(set(factors.values())) > 1:
        raise ValueError(f"the image MoVQ downsamples by {factors['image MoVQ']} but the video MoVQ by "
                         f"{factors['video MoVQ']}: the networks are not from one release")
    factor = next(iter(factors.values()), None)
    multiples = {name: unet_latent_multiple(u) for name, u in (("keyframe U-Net", unet),
                                                             ("interpolation U-Net", interpolation_unet))
                 if u is not None}
    latent = math.lcm(*multiples.values()) if multiples else 1
    parts = [f"the MoVQ downsamples by {factor}"] if factor else []
    parts += [f"the {name} halves the latent {_times(int(math.log2(m)))} (x{m})" for name, m in multiples.items()]
    return SizeRule(factor, latent, ", ".join(parts) or "no network constrains it")


def check_guidance(name: str, value) -> float:
    if not _is_real(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_sampler(stage: str, sampler, steps) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"{stage} sampler must be one of {SAMPLERS}, got {sampler!r}")
    if steps is not None and (not _is_int(steps) or not 1 <= steps <= NUM_TRAIN_TIMESTEPS):
        raise ValueError(f"{stage} steps must be an integer from 1 to {NUM_TRAIN_TIMESTEPS} "
                         f"(or None for the reference count), got {steps!r}")


def check_noise_augmentation(value) -> int:
    if not _is_int(value) or not 0 <= value < NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"noise_augmentation must be an integer timestep from 0 to "
                         f"{NUM_TRAIN_TIMESTEPS - 1}, got {value!r}")
    return int(value)


def check_skip_frames(value) -> int:
    if not _is_int(value) or not 0 <= value <= MAX_SKIP_FRAMES:
        raise ValueError(f"skip_frames must be an integer from 0 to {MAX_SKIP_FRAMES} (3 for the first "
                         f"interpolation pass, 1 for the second), got {value!r}")
    return int(value)


def check_context_width(cond: TextCondition, null_embedding: torch.Tensor, network: str) -> None:
    """Refuse a conditioning whose context width is not the U-Net's (its null embedding's):
    the text projections and the U-Net are then not from one release."""
    want, got = int(null_embedding.shape[-1]), int(cond.context.shape[-1])
    if got != want:
        raise ValueError(f"The conditioning is {got}-wide but the {network} takes {want}-wide contexts: the "
                         "text projections and the U-Net are not from the same release.")


def check_num_keyframes(value) -> int:
    if not _is_int(value) or value < 2:
        raise ValueError(f"num_keyframes must be an integer >= 2 (12 in the release), got {value!r}")
    return int(value)


def check_fps(fps) -> int:
    if fps not in FPS_PASSES:
        raise ValueError(f"fps must be one of {tuple(FPS_PASSES)} (0, 1 or 2 interpolation passes), "
                         f"got {fps!r}")
    return FPS_PASSES[fps]


def motion_score(motion) -> float:
    """A motion preset (``low`` 1, ``medium`` 10, ``high`` 50, ``extreme`` 100) or a
    non-negative number -> the score fed to the keyframe U-Net."""
    if isinstance(motion, str):
        if motion not in MOTION_PRESETS:
            raise ValueError(f"motion must be one of {tuple(MOTION_PRESETS)} or a number >= 0, got {motion!r}")
        return MOTION_PRESETS[motion]
    if not _is_real(motion) or not math.isfinite(motion) or motion < 0:
        raise ValueError(f"motion must be one of {tuple(MOTION_PRESETS)} or a finite number >= 0, got {motion!r}")
    return motion


def reference_motion_score(motion) -> int:
    """The reference ``__call__``'s reading of ``motion``: a preset name, anything else
    (its own default ``'normal'`` included) warns and falls back to medium. Only for
    reproducing the reference; ``motion_score`` rejects unknown values."""
    if motion not in MOTION_PRESETS:
        warnings.warn(f"motion must be in {tuple(MOTION_PRESETS)}; {motion!r} falls back to medium "
                      "as in the reference")
        motion = "medium"
    return MOTION_PRESETS[motion]


def frame_count(num_keyframes: int, fps: str) -> int:
    """Frames of the video: T, 4T - 3 or 16T - 15 (12, 45, 177 for 12 keyframes)."""
    n = num_keyframes
    for _ in range(check_fps(fps)):
        n = 4 * n - 3
    return n


def interpolation_passes(num_frames: int, num_keyframes: int) -> int:
    """How many interpolation passes turned ``num_keyframes`` keyframes into
    ``num_frames`` frames (0 for K, 1 for 4K - 3, 2 for 16K - 15, ...). ``ValueError``
    when no number of passes does: the frames are not a video of that many keyframes."""
    num_keyframes = check_num_keyframes(num_keyframes)
    if not _is_int(num_frames) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    n, passes, counts = num_keyframes, 0, [num_keyframes]
    while n < num_frames:
        n, passes = 4 * n - 3, passes + 1
        counts.append(n)
    if n != num_frames:
        raise ValueError(f"{num_frames} frames are not a video of {num_keyframes} keyframes (that has "
                         f"{', '.join(map(str, counts[:3]))}, ... frames after 0, 1, 2, ... interpolation "
                         "passes): set num_keyframes to the keyframe count the video was made with")
    return passes


def frame_rate(num_frames: int, num_keyframes: int) -> float:
    """Frames per second of a video of ``num_frames`` frames made from ``num_keyframes``
    keyframes: a 12-keyframe video spans 5.5 s (12, 45, 177 frames -> 2.18, 8.18, 32.2
    fps); other keyframe counts keep the duration per keyframe (8 keyframes: 3.67 s, so
    8, 29, 113 frames -> 2.18, 7.91, 30.8 fps). The keyframe count cannot be read from
    the frames (45 frames are 12 keyframes after one pass or 45 keyframes), so it is an
    argument; ``ValueError`` when the two do not fit (:func:`interpolation_passes`)."""
    interpolation_passes(num_frames, num_keyframes)
    return num_frames / (VIDEO_SECONDS * num_keyframes / REFERENCE_KEYFRAMES)


def _first_frame_rule(unet, movq) -> SizeRule:
    if movq is not None:
        return size_rule(unet=unet, movq=movq)
    rule = size_rule(unet=unet)
    return SizeRule(RELEASE_MOVQ_FACTOR, rule.latent_multiple,
                    f"the release's MoVQ downsamples by {RELEASE_MOVQ_FACTOR}, " + rule.reason)


def first_frame_latent_size(width, height, *, unet, movq=None) -> tuple[int, int]:
    """``(h, w)`` of the first-frame latent: twice the video size over the MoVQ factor
    (the release's 8 when no MoVQ is given). ``ValueError`` for a size the networks
    cannot run (:func:`size_rule`)."""
    rule = _first_frame_rule(unet, movq)
    rule.check(width, height)
    return 2 * height // rule.factor, 2 * width // rule.factor
