"""The rules that span the stages of a Kandinsky Video generation, checked before any network
runs: which sizes a set of networks runs (``size_rule``), keyframe and frame counts,
interpolation passes and frame rates. A stage's own checks (motion, noise augmentation,
skip frames, ...) live with the stage (``kv_core.stages``); nothing here runs a network.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .checks import is_int

FPS_PASSES = {"low": 0, "medium": 1, "high": 2}
VIDEO_SECONDS = 5.5         # a 12-keyframe video spans 5.5 s at every fps setting
REFERENCE_KEYFRAMES = 12


def check_size(width, height) -> None:
    """Width and height are positive integers (what every release needs; which multiples
    the networks take is :func:`size_rule`'s part)."""
    for name, value in (("width", width), ("height", height)):
        if not is_int(value) or value <= 0:
            raise ValueError(f"{name} must be a positive integer number of pixels, got {value!r}")


RELEASE_MOVQ_FACTOR = 8  # the release's MoVQs: 4 levels, 3 halvings


def _config(network, key: str, what: str):
    config = getattr(network, "config", None)
    if not isinstance(config, dict) or key not in config:
        raise TypeError(f"cannot tell {what} of {type(network).__name__}: expected a kv_core network, "
                        f"whose config (``.config``) holds {key!r}")
    return config[key]


def movq_factor(movq) -> int:
    """Spatial downsampling factor of a MoVQ: ``2^(L-1)`` for its ``L = len(ch_mult)``
    levels (8 in the release), read from its configuration (``movq.config``): the encoder
    halves the picture at every level but the last and the decoder doubles it back."""
    return 2 ** (len(_config(movq, "ch_mult", "the downsampling factor")) - 1)


def unet_latent_multiple(unet) -> int:
    """What a U-Net's latent sides must be a multiple of: ``2^(L-1)`` for its L levels
    (``len(dim_mult)`` of ``unet.config``; every level but the last halves the latent and
    the up path concatenates the skips, so the sizes must halve exactly). 8 in the release."""
    return 2 ** (len(_config(unet, "dim_mult", "which latent sizes")) - 1)


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


def check_num_keyframes(value) -> int:
    if not is_int(value) or value < 2:
        raise ValueError(f"num_keyframes must be an integer >= 2 (12 in the release), got {value!r}")
    return int(value)


def fps_passes(fps) -> int:
    """The interpolation passes of an fps setting (``low`` 0, ``medium`` 1, ``high`` 2)."""
    if fps not in FPS_PASSES:
        raise ValueError(f"fps must be one of {tuple(FPS_PASSES)} (0, 1 or 2 interpolation passes), "
                         f"got {fps!r}")
    return FPS_PASSES[fps]


def frame_count(num_keyframes: int, fps: str) -> int:
    """Frames of the video: T, 4T - 3 or 16T - 15 (12, 45, 177 for 12 keyframes)."""
    n = num_keyframes
    for _ in range(fps_passes(fps)):
        n = 4 * n - 3
    return n


def interpolation_passes(num_frames: int, num_keyframes: int) -> int:
    """How many interpolation passes turned ``num_keyframes`` keyframes into
    ``num_frames`` frames (0 for K, 1 for 4K - 3, 2 for 16K - 15, ...). ``ValueError``
    when no number of passes does: the frames are not a video of that many keyframes."""
    num_keyframes = check_num_keyframes(num_keyframes)
    if not is_int(num_frames) or num_frames < 1:
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
