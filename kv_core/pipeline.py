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

Rules (``kv_core.rules``, re-exported here): sizes, settings, frame counts and rates.
Sizes: which widths and heights run follows from the networks (``size_rule``: the MoVQ
factor times the U-Nets' halvings, 64 for the release), checked before any network runs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Callable, Optional

import numpy as np
import torch

from .dtypes import InputDtype
from .image import RESIZE_MODES, prepare_first_frame, to_pil
from .movq import decode_video, to_uint8_frames, video_chunk_sizes
from .noise import NoiseSource, as_noise_source, check_seed, interpolation_stage
from .sampling import (CancelFn, ProgressFn, TextCondition, assemble_interpolated, check_cancel,
                       model_device, sample_first_frame, sample_interpolation, sample_keyframes)
from .schedulers import NUM_TRAIN_TIMESTEPS, SAMPLERS, stage_sampler
from .rules import (_is_int, check_context_width, check_fps, check_guidance, check_noise_augmentation,
                    check_num_keyframes, check_sampler, check_size, check_skip_frames,
                    first_frame_latent_size, FPS_PASSES, frame_count, frame_rate, interpolation_passes,
                    MAX_SKIP_FRAMES, MOTION_PRESETS, motion_score, movq_factor, REFERENCE_KEYFRAMES,
                    reference_motion_score, RELEASE_MOVQ_FACTOR, size_rule, SizeRule, SKIP_FRAMES,
                    unet_latent_multiple, VIDEO_SECONDS)


def _stage_noise(noise, stage: str) -> NoiseSource:
    if _is_int(noise):
        check_seed(int(noise))
    return as_noise_source(noise, stage)


def _in_dtype(network, dtype: Optional[torch.dtype]):
    """``network`` called with its first input cast to ``dtype`` (None: as it comes). The
    sampling loops keep latents in float32; a host whose layers cast their weights at run
    time (e.g. fp8 storage) gives the dtype the network computes in."""
    return network if dtype is None else InputDtype(network, dtype)


def _device(network, device) -> torch.device:
    return torch.device(device) if device is not None else model_device(network)


# Host hooks every stage takes (the ComfyUI nodes pass them; the defaults suit a plain
# PyTorch run): ``device`` where the stage runs (default: the network's parameters'
# device; a host that loads a network in parts gives its load device), ``dtype`` the
# dtype the network computes in (default: its input's), ``progress``/``cancel`` as in
# ``kv_core.sampling``.


# the stages and the whole pipeline, and (from kv_core.rules) the rules they check
__all__ = ["encode_prompt", "generate_first_frame", "decode_first_frame", "encode_first_frame",
    "generate_keyframes", "interpolate_frames", "decode_frames", "decode_chunk_sizes", "GenerationSettings",
    "SETTING_NAMES", "VideoResult", "StageProgress", "KandinskyVideoPipeline", "TextCondition", "SAMPLERS",
    "NUM_TRAIN_TIMESTEPS", "MOTION_PRESETS", "FPS_PASSES", "SKIP_FRAMES", "MAX_SKIP_FRAMES", "VIDEO_SECONDS",
    "REFERENCE_KEYFRAMES", "check_size", "RELEASE_MOVQ_FACTOR", "movq_factor", "unet_latent_multiple",
    "SizeRule", "size_rule", "check_guidance", "check_sampler", "check_noise_augmentation",
    "check_skip_frames", "check_context_width", "check_num_keyframes", "check_fps", "motion_score",
    "reference_motion_score", "frame_count", "interpolation_passes", "frame_rate", "first_frame_latent_size"]


# --- stages ------------------------------------------------------------------------------

def encode_prompt(text_encoder, prompt: str, negative_prompt: Optional[str] = None, *, device=None,
                  warn: bool = True, progress: Callable[[int, int], None] | None = None) -> TextCondition:
    """Encode a prompt (and an optional negative prompt) with ``projection_base``.

    ``text_encoder``: a ``kv_core.text.TextEncoder`` or any callable ``prompt -> (context
    [1, L, D], mask [1, L])``. An empty or blank negative prompt counts as none (the
    reference's null-text guidance). ``device``: where the T5 encoder runs (default: its
    parameters' device); ``warn``: a ``PromptWarning`` for a prompt read only in part
    (a host that reports it itself turns it off); ``progress(done, total)`` after each
    prompt. The contexts come back as the encoder makes them, on its device.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise ValueError(f"negative_prompt must be a string or None, got {type(negative_prompt).__name__}")
    prompts = [prompt] if negative_prompt is None or not negative_prompt.strip() else [prompt, negative_prompt]

    def run(text):
        if not hasattr(text_encoder, "tokenize"):
            return text_encoder(text)
        from .text import PROJECTION_BASE
        ids, mask = text_encoder.tokenize(text, warn=warn)
        run_on = torch.device(device) if device is not None else text_encoder.device
        mask = mask.to(run_on)
        hidden = text_encoder.encoder(input_ids=ids.to(run_on), attention_mask=mask).last_hidden_state
        return text_encoder.project(hidden, mask, (PROJECTION_BASE,))[PROJECTION_BASE]

    encoded = []
    with torch.inference_mode():
        for i, text in enumerate(prompts):
            encoded.append(run(text))
            if progress is not None:
                progress(i + 1, len(prompts))
    return TextCondition(*encoded[0], *(encoded[1] if len(encoded) > 1 else ()))


@torch.inference_mode()
def generate_first_frame(
    unet, null_embedding: torch.Tensor, cond: TextCondition, *, width: int = 512, height: int = 512,
    guidance_scale: float = 5.0, sampler: str = "ddpm", steps: Optional[int] = None, noise=None,
    progress: ProgressFn | None = None, cancel: CancelFn | None = None, trace: dict | None = None,
    movq=None, device=None, dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """First-frame latent ``[1, 4, 2*height/f, 2*width/f]`` (twice the video size) from the
    keyframe U-Net in image mode; ``guidance_scale`` is the reference's
    ``key_frame_guidance_scale``. ``movq``: the image MoVQ that decodes it, which sets
    the factor f (None: the release's 8). Sizes the networks cannot run are refused
    before anything runs (:func:`size_rule`)."""
    latent_size = first_frame_latent_size(width, height, unet=unet, movq=movq)
    check_context_width(cond, null_embedding, "keyframe U-Net")
    guidance_scale = check_guidance("guidance_scale", guidance_scale)
    check_sampler("first_frame", sampler, steps)
    noise = _stage_noise(noise, "first_frame")
    return sample_first_frame(_in_dtype(unet, dtype), cond, null_embedding, latent_size=latent_size,
                              guidance_scale=guidance_scale, sampler=stage_sampler("first_frame", sampler, steps),
                              noise=noise, device=_device(unet, device), progress=progress, cancel=cancel,
                              trace=trace)


@torch.inference_mode()
def decode_first_frame(movq, latent: torch.Tensor, *, device=None,
                       dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Image-MoVQ decode of a first-frame latent ``[1, 4, h, w]`` -> uint8 ``[8h, 8w, 3]``
    (``x * 255`` truncated, as the reference's PIL conversion), on the CPU."""
    if not isinstance(latent, torch.Tensor) or latent.ndim != 4:
        raise ValueError("latent must be a tensor [1, 4, h, w] from generate_first_frame")
    image = movq.decode(latent.to(device=_device(movq, device), dtype=dtype)).float()
    image = torch.clip((image + 1.0) / 2.0, 0.0, 1.0)
    return to_uint8_frames(image[:1])[0].cpu()


@torch.inference_mode()
def encode_first_frame(movq, image, *, width: int = 512, height: int = 512, mode: str = "reference",
                       layout: Optional[str] = None, device=None, dtype: Optional[torch.dtype] = None
                       ) -> torch.Tensor:
    """Conditioning latent ``[4, height/8, width/8]`` (float32) of a picture: reference
    resize/centre-crop (``mode="reference"``, small pictures padded black) or ``cover``
    (scaled to cover the frame), then the image MoVQ encoder. See ``kv_core.image``
    (``layout`` "HWC"/"CHW" for an array whose shape fits both). The size must be a
    multiple of the MoVQ's factor (``size_rule``)."""
    size_rule(movq=movq).check(width, height)
    pixels = prepare_first_frame(image, width, height, mode, layout=layout)
    return movq.encode(pixels[None].to(device=_device(movq, device), dtype=dtype))[0].float()


@torch.inference_mode()
def generate_keyframes(
    unet, null_embedding: torch.Tensor, cond: TextCondition, key_latent: torch.Tensor, *,
    num_keyframes: int = REFERENCE_KEYFRAMES, motion="medium", noise_augmentation: int = 20,
    guidance_weight_prompt: float = 5.0, guidance_weight_image: float = 2.0,
    sampler: str = "ddpm", steps: Optional[int] = None, noise=None,
    progress: ProgressFn | None = None, cancel: CancelFn | None = None, trace: dict | None = None,
    device=None, dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Keyframe latents ``[num_keyframes, 4, h, w]`` conditioned on ``key_latent``
    ``[4, h, w]`` (from ``encode_first_frame``). ``motion``: preset name or number."""
    if not isinstance(key_latent, torch.Tensor) or key_latent.ndim != 3:
        raise ValueError("key_latent must be a tensor [4, h, w] from encode_first_frame")
    size_rule(unet=unet).check_latent(*key_latent.shape[-2:], "first-frame latent")
    check_context_width(cond, null_embedding, "keyframe U-Net")
    num_keyframes = check_num_keyframes(num_keyframes)
    score = motion_score(motion)
    noise_augmentation = check_noise_augmentation(noise_augmentation)
    wp = check_guidance("guidance_weight_prompt", guidance_weight_prompt)
    wi = check_guidance("guidance_weight_image", guidance_weight_image)
    check_sampler("keyframes", sampler, steps)
    noise = _stage_noise(noise, "keyframes")
    return sample_keyframes(_in_dtype(unet, dtype), cond, null_embedding, key_latent, num_frames=num_keyframes,
                            guidance_weight_prompt=wp, guidance_weight_image=wi, motion_score=score,
                            noise_augmentation=noise_augmentation,
                            sampler=stage_sampler("keyframes", sampler, steps), noise=noise,
                            device=_device(unet, device), progress=progress, cancel=cancel, trace=trace)


@torch.inference_mode()
def interpolate_frames(
    unet, null_embedding: torch.Tensor, cond: TextCondition, frames: torch.Tensor, *,
    pass_index: int = 1, guidance_scale: float = 0.5, sampler: str = "ddpm", steps: Optional[int] = None,
    noise=None, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
    trace: dict | None = None, skip_frames: Optional[int] = None, device=None,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """One interpolation pass: ``frames`` ``[N, 4, h, w]`` -> ``[4N - 3, 4, h, w]``.

    ``pass_index`` 1 (skip_frames 3, after the keyframes) or 2 (skip_frames 1, after pass
    1) sets only the skip_frames the U-Net is told; ``skip_frames`` (0 to 19) gives it
    directly instead. A seed draws the noise stream of
    ``interpolation_stage(N)``: keyed on the input frame count, which the frames carry, so
    interpolating a saved latent gives the direct run's result for any keyframe count.
    ``trace["interpolated"]`` receives the ``[N - 1, 12, h, w]`` loop result."""
    if skip_frames is None:
        if pass_index not in SKIP_FRAMES:
            raise ValueError(f"pass_index must be 1 (first interpolation, skip_frames 3) or 2 "
                             f"(second, skip_frames 1), got {pass_index!r}")
        skip_frames = SKIP_FRAMES[pass_index]
    skip_frames = check_skip_frames(skip_frames)
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError("frames must be a tensor [N, 4, h, w] with N >= 2 (a video of at least 2 frames)")
    size_rule(interpolation_unet=unet).check_latent(*frames.shape[-2:], "video latent")
    check_context_width(cond, null_embedding, "interpolation U-Net")
    guidance_scale = check_guidance("guidance_scale", guidance_scale)
    check_sampler("interpolation", sampler, steps)
    noise = _stage_noise(noise, interpolation_stage(int(frames.shape[0])))
    groups = sample_interpolation(_in_dtype(unet, dtype), cond, null_embedding, frames, skip_frames=skip_frames,
                                  guidance_scale=guidance_scale,
                                  sampler=stage_sampler("interpolation", sampler, steps),
                                  noise=noise, device=_device(unet, device), progress=progress, cancel=cancel,
                                  trace=trace)
    if trace is not None:
        trace["interpolated"] = groups
    return assemble_interpolated(frames.to(groups.device, torch.float32), groups)


@torch.inference_mode()
def decode_frames(video_movq, latents: torch.Tensor, *, chunk_size: Optional[int] = None,
                  progress: Callable[[int, int], None] | None = None,
                  cancel: CancelFn | None = None, device=None,
                  dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Video-MoVQ decode ``[F, 4, h, w]`` -> float frames ``[F, 3, 8h, 8w]`` in [0, 1], in
    the reference's chunks (``latents.chunk(F // 4)``, see :func:`decode_chunk_sizes`)
    unless ``chunk_size`` is given."""
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
        raise ValueError("latents must be a tensor [F, 4, h, w]")
    decode_chunk_sizes(int(latents.shape[0]), chunk_size)  # a bad chunk_size fails before decoding
    check_cancel(cancel)

    def on_chunk(done, total):
        if progress is not None:
            progress(done, total)
        if done < total:
            check_cancel(cancel)

    return decode_video(video_movq, latents.to(device=_device(video_movq, device), dtype=dtype), chunk_size,
                        progress=on_chunk)


def decode_chunk_sizes(num_frames: int, chunk_size: Optional[int] = None) -> list[int]:
    """Frame counts of the chunks :func:`decode_frames` decodes one after another (the
    reference's ``chunk(F // 4)`` by default); for progress bars and memory estimates."""
    return video_chunk_sizes(num_frames, chunk_size)


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
            # converted once, here: fails fast on a wrong type or an empty picture, and the
            # encoding gets plain sRGB pixels (no second file read, warning or colour conversion)
            image = np.asarray(to_pil(image))
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
            key_latent = encode_first_frame(self.movq, image, width=s.width, height=s.height, mode=s.image_mode,
                                            layout="HWC")
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
