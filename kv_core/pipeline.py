"""Kandinsky Video 1.1 generation: the stages, and the whole pipeline.

Stages (each usable alone — the ComfyUI nodes call them one by one — and each validating
its own arguments before any network runs):

1. ``encode_prompt``          prompt (+ optional negative prompt) -> ``TextCondition``
2. ``generate_first_frame``   text -> first-frame latent at twice the video size
   ``decode_first_frame``     -> uint8 picture ``[2H, 2W, 3]`` (truncated, as the reference)
3. ``encode_first_frame``     picture -> latent ``[4, H/8, W/8]`` (reference resize/crop, or
                              ``cover``)
4. ``generate_keyframes``     -> ``[T, 4, H/8, W/8]`` (T = 12 by default)
5. ``interpolate_frames``     N -> 4N - 3 frames; pass 1 (skip_frames 3), pass 2 (skip 1)
6. ``decode_frames``          video MoVQ in the reference's chunks -> float ``[F, 3, H, W]``

``KandinskyVideoPipeline`` holds the networks and runs them in order; ``__call__`` takes
either a prompt (with a text encoder) or a precomputed ``TextCondition`` and returns a
``VideoResult`` (uint8 frames, frame rate and, on request, the intermediate values).

Randomness: ``noise`` is a seed (int) or a ``kv_core.noise`` source. A seed is turned into
one CPU generator per stage (``noise.stage_seed``; an interpolation pass keys its stream on
its input frame count), so a stage run alone with the seed of a full run reproduces that
stage. What a seed guarantees: the same noise, bit for bit, on any device, with any thread
count and in any process; the video made from it is equal up to floating-point rounding
(other devices, thread counts and dtypes sum in other orders; on a CPU, 1 and 2 threads
gave a few values 1/255 apart). A source is shared by all stages in order (the golden
tests replay the reference's recorded draws that way).

Sizes: which widths and heights run follows from the networks (``size_rule``: the MoVQ
factor times the U-Nets' halvings, 64 for the release), checked before any network runs.
"""
from __future__ import annotations

import json
import math
import numbers
import warnings
from dataclasses import dataclass, field, fields
from typing import Callable, Optional

import torch

from .image import RESIZE_MODES, prepare_first_frame, to_pil
from .movq import decode_video, to_uint8_frames
from .noise import NoiseSource, as_noise_source, check_seed, interpolation_stage
from .sampling import (CancelFn, ProgressFn, TextCondition, assemble_interpolated, check_cancel,
                       model_device, sample_first_frame, sample_interpolation, sample_keyframes)
from .schedulers import NUM_TRAIN_TIMESTEPS, SAMPLERS, stage_sampler

MOTION_PRESETS = {"low": 1, "medium": 10, "high": 50, "extreme": 100}
FPS_PASSES = {"low": 0, "medium": 1, "high": 2}
SKIP_FRAMES = {1: 3, 2: 1}  # interpolation pass -> skip_frames
VIDEO_SECONDS = 5.5         # a 12-keyframe video spans 5.5 s at every fps setting
REFERENCE_KEYFRAMES = 12


# --- validation -----------------------------------------------------------------------

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


def _stage_noise(noise, stage: str) -> NoiseSource:
    if _is_int(noise):
        check_seed(int(noise))
    return as_noise_source(noise, stage)


# --- stages ------------------------------------------------------------------------------

def encode_prompt(text_encoder, prompt: str, negative_prompt: Optional[str] = None) -> TextCondition:
    """Encode a prompt (and an optional negative prompt) with ``projection_base``.

    ``text_encoder``: a ``kv_core.text.TextEncoder`` or any callable ``prompt -> (context
    [1, L, D], mask [1, L])``. An empty or blank negative prompt counts as none (the
    reference's null-text guidance).
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise ValueError(f"negative_prompt must be a string or None, got {type(negative_prompt).__name__}")

    def run(text):
        if hasattr(text_encoder, "encode"):
            from .text import PROJECTION_BASE
            return text_encoder.encode(text, labels=(PROJECTION_BASE,))[PROJECTION_BASE]
        return text_encoder(text)

    with torch.inference_mode():
        context, mask = run(prompt)
        if negative_prompt is None or not negative_prompt.strip():
            return TextCondition(context, mask)
        neg_context, neg_mask = run(negative_prompt)
    return TextCondition(context, mask, neg_context, neg_mask)


@torch.inference_mode()
def generate_first_frame(
    unet, null_embedding: torch.Tensor, cond: TextCondition, *, width: int = 512, height: int = 512,
    guidance_scale: float = 5.0, sampler: str = "ddpm", steps: Optional[int] = None, noise=None,
    progress: ProgressFn | None = None, cancel: CancelFn | None = None, trace: dict | None = None,
    movq=None,
) -> torch.Tensor:
    """First-frame latent ``[1, 4, 2*height/f, 2*width/f]`` (twice the video size) from the
    keyframe U-Net in image mode; ``guidance_scale`` is the reference's
    ``key_frame_guidance_scale``. ``movq``: the image MoVQ that decodes it, which sets
    the factor f (None: the release's 8). Sizes the networks cannot run are refused
    before anything runs (:func:`size_rule`)."""
    rule = _first_frame_rule(unet, movq)
    rule.check(width, height)
    guidance_scale = check_guidance("key_frame_guidance_scale", guidance_scale)
    check_sampler("first_frame", sampler, steps)
    noise = _stage_noise(noise, "first_frame")
    return sample_first_frame(unet, cond, null_embedding, latent_size=(2 * height // rule.factor,
                                                                       2 * width // rule.factor),
                              guidance_scale=guidance_scale, sampler=stage_sampler("first_frame", sampler, steps),
                              noise=noise, progress=progress, cancel=cancel, trace=trace)


@torch.inference_mode()
def decode_first_frame(movq, latent: torch.Tensor) -> torch.Tensor:
    """Image-MoVQ decode of a first-frame latent ``[1, 4, h, w]`` -> uint8 ``[8h, 8w, 3]``
    (``x * 255`` truncated, as the reference's PIL conversion), on the CPU."""
    image = movq.decode(latent.to(model_device(movq))).float()
    image = torch.clip((image + 1.0) / 2.0, 0.0, 1.0)
    return to_uint8_frames(image[:1])[0].cpu()


@torch.inference_mode()
def encode_first_frame(movq, image, *, width: int = 512, height: int = 512,
                       mode: str = "reference") -> torch.Tensor:
    """Conditioning latent ``[4, height/8, width/8]`` (float32) of a picture: reference
    resize/centre-crop (``mode="reference"``, small pictures padded black) or ``cover``
    (scaled to cover the frame), then the image MoVQ encoder. See ``kv_core.image``. The
    size must be a multiple of the MoVQ's factor (``size_rule``)."""
    size_rule(movq=movq).check(width, height)
    pixels = prepare_first_frame(image, width, height, mode)
    return movq.encode(pixels[None].to(model_device(movq)))[0].float()


@torch.inference_mode()
def generate_keyframes(
    unet, null_embedding: torch.Tensor, cond: TextCondition, key_latent: torch.Tensor, *,
    num_keyframes: int = REFERENCE_KEYFRAMES, motion="medium", noise_augmentation: int = 20,
    guidance_weight_prompt: float = 5.0, guidance_weight_image: float = 2.0,
    sampler: str = "ddpm", steps: Optional[int] = None, noise=None,
    progress: ProgressFn | None = None, cancel: CancelFn | None = None, trace: dict | None = None,
) -> torch.Tensor:
    """Keyframe latents ``[num_keyframes, 4, h, w]`` conditioned on ``key_latent``
    ``[4, h, w]`` (from ``encode_first_frame``). ``motion``: preset name or number."""
    if not isinstance(key_latent, torch.Tensor) or key_latent.ndim != 3:
        raise ValueError("key_latent must be a tensor [4, h, w] from encode_first_frame")
    size_rule(unet=unet).check_latent(*key_latent.shape[-2:], "first-frame latent")
    num_keyframes = check_num_keyframes(num_keyframes)
    score = motion_score(motion)
    noise_augmentation = check_noise_augmentation(noise_augmentation)
    wp = check_guidance("guidance_weight_prompt", guidance_weight_prompt)
    wi = check_guidance("guidance_weight_image", guidance_weight_image)
    check_sampler("keyframes", sampler, steps)
    noise = _stage_noise(noise, "keyframes")
    return sample_keyframes(unet, cond, null_embedding, key_latent, num_frames=num_keyframes,
                            guidance_weight_prompt=wp, guidance_weight_image=wi, motion_score=score,
                            noise_augmentation=noise_augmentation,
                            sampler=stage_sampler("keyframes", sampler, steps), noise=noise,
                            progress=progress, cancel=cancel, trace=trace)


@torch.inference_mode()
def interpolate_frames(
    unet, null_embedding: torch.Tensor, cond: TextCondition, frames: torch.Tensor, *,
    pass_index: int = 1, guidance_scale: float = 0.5, sampler: str = "ddpm", steps: Optional[int] = None,
    noise=None, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
    trace: dict | None = None,
) -> torch.Tensor:
    """One interpolation pass: ``frames`` ``[N, 4, h, w]`` -> ``[4N - 3, 4, h, w]``.

    ``pass_index`` 1 (skip_frames 3, after the keyframes) or 2 (skip_frames 1, after pass
    1) sets only the skip_frames the U-Net is told. A seed draws the noise stream of
    ``interpolation_stage(N)``: keyed on the input frame count, which the frames carry, so
    interpolating a saved latent gives the direct run's result for any keyframe count.
    ``trace["interpolated"]`` receives the ``[N - 1, 12, h, w]`` loop result."""
    if pass_index not in SKIP_FRAMES:
        raise ValueError(f"pass_index must be 1 (first interpolation, skip_frames 3) or 2 "
                         f"(second, skip_frames 1), got {pass_index!r}")
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError("frames must be a tensor [N, 4, h, w] with N >= 2")
    size_rule(interpolation_unet=unet).check_latent(*frames.shape[-2:], "video latent")
    guidance_scale = check_guidance("interpolation_guidance_scale", guidance_scale)
    check_sampler("interpolation", sampler, steps)
    noise = _stage_noise(noise, interpolation_stage(int(frames.shape[0])))
    groups = sample_interpolation(unet, cond, null_embedding, frames, skip_frames=SKIP_FRAMES[pass_index],
                                  guidance_scale=guidance_scale,
                                  sampler=stage_sampler("interpolation", sampler, steps),
                                  noise=noise, progress=progress, cancel=cancel, trace=trace)
    if trace is not None:
        trace["interpolated"] = groups
    return assemble_interpolated(frames.to(groups.device, torch.float32), groups)


@torch.inference_mode()
def decode_frames(video_movq, latents: torch.Tensor, *, chunk_size: Optional[int] = None,
                  progress: Callable[[int, int], None] | None = None,
                  cancel: CancelFn | None = None) -> torch.Tensor:
    """Video-MoVQ decode ``[F, 4, h, w]`` -> float frames ``[F, 3, 8h, 8w]`` in [0, 1], in
    the reference's chunks (``latents.chunk(F // 4)``) unless ``chunk_size`` is given."""
    check_cancel(cancel)

    def on_chunk(done, total):
        if progress is not None:
            progress(done, total)
        if done < total:
            check_cancel(cancel)

    return decode_video(video_movq, latents.to(model_device(video_movq)), chunk_size, progress=on_chunk)


# --- the whole pipeline ------------------------------------------------------------------

@dataclass
class GenerationSettings:
    """Every control of a generation, with the reference's defaults. ``None`` steps mean
    the stage's reference count (50, 50, 10)."""

    width: int = 512
    height: int = 512
    num_keyframes: int = REFERENCE_KEYFRAMES
    fps: str = "low"
    motion: object = "medium"
    noise_augmentation: int = 20
    key_frame_guidance_scale: float = 5.0
    guidance_weight_prompt: float = 5.0
    guidance_weight_image: float = 2.0
    interpolation_guidance_scale: float = 0.5
    first_frame_sampler: str = "ddpm"
    first_frame_steps: Optional[int] = None
    keyframes_sampler: str = "ddpm"
    keyframes_steps: Optional[int] = None
    interpolation_sampler: str = "ddpm"
    interpolation_steps: Optional[int] = None
    image_mode: str = "reference"

    def validate(self) -> "GenerationSettings":
        check_size(self.width, self.height)
        check_num_keyframes(self.num_keyframes)
        check_fps(self.fps)
        motion_score(self.motion)
        check_noise_augmentation(self.noise_augmentation)
        for name in ("key_frame_guidance_scale", "guidance_weight_prompt", "guidance_weight_image",
                     "interpolation_guidance_scale"):
            check_guidance(name, getattr(self, name))
        for stage in ("first_frame", "keyframes", "interpolation"):
            check_sampler(stage, getattr(self, f"{stage}_sampler"), getattr(self, f"{stage}_steps"))
        if self.image_mode not in RESIZE_MODES:
            raise ValueError(f"image_mode must be one of {RESIZE_MODES}, got {self.image_mode!r}")
        return self


SETTING_NAMES = tuple(f.name for f in fields(GenerationSettings))


@dataclass
class VideoResult:
    frames: torch.Tensor            # uint8 [F, H, W, 3], CPU
    fps: float
    intermediates: dict = field(default_factory=dict)


StageProgress = Callable[[str, int, int, Optional[torch.Tensor]], None]


class KandinskyVideoPipeline:
    """The networks of a release, run in order by ``__call__`` or stage by stage.

    ``text_encoder`` is optional: without it ``__call__`` needs ``conditioning``.
    """

    def __init__(self, *, unet, null_embedding, interpolation_unet, interpolation_null_embedding,
                 movq, video_movq, text_encoder=None):
        self.unet = unet
        self.null_embedding = null_embedding
        self.interpolation_unet = interpolation_unet
        self.interpolation_null_embedding = interpolation_null_embedding
        self.movq = movq
        self.video_movq = video_movq
        self.text_encoder = text_encoder

    @classmethod
    def from_release(cls, folder, *, device=None, unet_dtype=None, text_encoder_folder=None,
                     with_text_encoder: bool = True) -> "KandinskyVideoPipeline":
        """Load a release folder in the official layout (``configs.json``, ``t2v.pt``,
        ``interpolation.pt``, ``movq.pt``, ``video_movq.pt``, ``t5_projections.pt`` and a
        T5 encoder folder, ``flan-ul2`` unless ``text_encoder_folder`` says otherwise).
        ``unet_dtype``: e.g. ``torch.float16`` for the U-Nets (the release's choice); the
        MoVQs and the text encoder stay float32."""
        from pathlib import Path

        from .checkpoints import load_interpolation_unet, load_keyframe_unet, load_movq
        from .text import TextEncoder

        folder = Path(folder)
        configs = folder / "configs.json"
        configs = configs if configs.exists() else None
        unet, null = load_keyframe_unet(folder / "t2v.pt", configs, device=device, dtype=unet_dtype)
        interp, interp_null = load_interpolation_unet(folder / "interpolation.pt", configs, device=device,
                                                      dtype=unet_dtype)
        text_encoder = None
        if with_text_encoder:
            text_cfg = json.loads(configs.read_text()).get("text_encoder", {}) if configs else {}
            text_encoder = TextEncoder.from_files(text_encoder_folder or folder / "flan-ul2",
                                                  folder / "t5_projections.pt", device=device,
                                                  tokens_length=text_cfg.get("tokens_length", 128))
        return cls(unet=unet.eval(), null_embedding=null, interpolation_unet=interp.eval(),
                   interpolation_null_embedding=interp_null,
                   movq=load_movq(folder / "movq.pt", configs, video=False, device=device).eval(),
                   video_movq=load_movq(folder / "video_movq.pt", configs, video=True, device=device).eval(),
                   text_encoder=text_encoder)

    def size_rule(self, *, interpolation: bool = True) -> SizeRule:
        """The video sizes these networks run (:func:`size_rule`); without
        ``interpolation`` the interpolation U-Net (unused at fps "low") does not count."""
        return size_rule(movq=self.movq, video_movq=self.video_movq, unet=self.unet,
                         interpolation_unet=self.interpolation_unet if interpolation else None)

    def encode_prompt(self, prompt: str, negative_prompt: Optional[str] = None) -> TextCondition:
        if self.text_encoder is None:
            raise ValueError("this pipeline has no text encoder: pass conditioning=TextCondition(...)")
        return encode_prompt(self.text_encoder, prompt, negative_prompt)

    def __call__(
        self, prompt: Optional[str] = None, *, negative_prompt: Optional[str] = None,
        conditioning: Optional[TextCondition] = None, image=None, noise=0,
        progress: StageProgress | None = None, cancel: CancelFn | None = None,
        return_intermediates: bool = False, **settings,
    ) -> VideoResult:
        """Generate a video. ``settings``: the fields of ``GenerationSettings``
        (width, height, num_keyframes, fps, motion, noise_augmentation, the four guidance
        weights, ``<stage>_sampler``/``<stage>_steps``, image_mode). ``image``: a picture
        for image-to-video (PIL, array or tensor), else the first frame is generated.
        ``noise``: seed (int) or noise source. ``progress(stage, step, total, latent)``."""
        unknown = set(settings) - set(SETTING_NAMES)
        if unknown:
            raise TypeError(f"unknown settings {sorted(unknown)}; known: {SETTING_NAMES}")
        s = GenerationSettings(**settings).validate()
        if conditioning is None:
            if not isinstance(prompt, str):
                raise ValueError("give a prompt (string) or conditioning=TextCondition(...)")
            if self.text_encoder is None:
                raise ValueError("this pipeline has no text encoder: pass conditioning=TextCondition(...)")
        elif not isinstance(conditioning, TextCondition):
            raise ValueError("conditioning must be a kv_core.sampling.TextCondition")
        if image is not None:
            to_pil(image)  # fails fast on a wrong type or an empty image
        if _is_int(noise):
            check_seed(int(noise))
        self.size_rule(interpolation=FPS_PASSES[s.fps] > 0).check(s.width, s.height)

        def hook(stage):
            if progress is None:
                return None
            return lambda step, total, latent: progress(stage, step, total, latent)

        info: dict = {}
        with torch.inference_mode():
            cond = conditioning if conditioning is not None else self.encode_prompt(prompt, negative_prompt)
            if image is None:
                latent = generate_first_frame(
                    self.unet, self.null_embedding, cond, width=s.width, height=s.height,
                    guidance_scale=s.key_frame_guidance_scale, sampler=s.first_frame_sampler,
                    steps=s.first_frame_steps, noise=noise, progress=hook("first_frame"), cancel=cancel,
                    movq=self.movq)
                image = decode_first_frame(self.movq, latent)
                if return_intermediates:
                    info["first_frame_latent"], info["keyframe_image"] = latent, image
            check_cancel(cancel)
            key_latent = encode_first_frame(self.movq, image, width=s.width, height=s.height, mode=s.image_mode)
            frames = generate_keyframes(
                self.unet, self.null_embedding, cond, key_latent, num_keyframes=s.num_keyframes,
                motion=s.motion, noise_augmentation=s.noise_augmentation,
                guidance_weight_prompt=s.guidance_weight_prompt, guidance_weight_image=s.guidance_weight_image,
                sampler=s.keyframes_sampler, steps=s.keyframes_steps, noise=noise,
                progress=hook("keyframes"), cancel=cancel)
            if return_intermediates:
                info["keyframe_latent"], info["base_frames"] = key_latent, frames
            for pass_index in range(1, FPS_PASSES[s.fps] + 1):
                frames = interpolate_frames(
                    self.interpolation_unet, self.interpolation_null_embedding, cond, frames,
                    pass_index=pass_index, guidance_scale=s.interpolation_guidance_scale,
                    sampler=s.interpolation_sampler, steps=s.interpolation_steps, noise=noise,
                    progress=hook(f"interpolation_{pass_index}"), cancel=cancel)
                if return_intermediates:
                    info[f"interpolated_{pass_index}"] = frames
            decode_hook = None if progress is None else (lambda done, total: progress("decode", done, total, None))
            video = decode_frames(self.video_movq, frames, progress=decode_hook, cancel=cancel)
            frames_uint8 = to_uint8_frames(video).cpu()
        return VideoResult(frames_uint8, frame_rate(int(frames_uint8.shape[0]), s.num_keyframes), info)
