"""Kandinsky Video 1.1 generation, stage by stage: the one orchestration that the whole
pipeline (:mod:`kv_core.pipeline`) and the ComfyUI nodes both call.

Each stage is usable alone and validates its own arguments before any network runs:

1. ``encode_prompt``          prompt (+ optional negative prompt) -> ``TextCondition``
2. ``generate_first_frame``   text -> first-frame latent at twice the video size
   ``decode_first_frame``     -> uint8 picture ``[2H, 2W, 3]`` (truncated, as the reference)
3. ``encode_first_frame``     picture -> latent ``[4, H/8, W/8]`` (reference resize/crop, or
                              ``cover``)
4. ``generate_keyframes``     -> ``[T, 4, H/8, W/8]`` (T = 12 by default)
5. ``interpolate_frames``     N -> 4N - 3 frames; pass 1 (skip_frames 3), pass 2 (skip 1)
6. ``decode_frames``          video MoVQ in the reference's chunks -> float ``[F, 3, H, W]``

Randomness: ``noise`` is a seed (int) or a ``kv_core.noise`` source. A seed is turned into
one CPU generator per stage (``noise.stage_seed``; an interpolation pass keys its stream on
its input frame count), so a stage run alone with the seed of a full run reproduces that
stage. What a seed guarantees: the same noise, bit for bit, on any device, with any thread
count and in any process; the video made from it is equal up to floating-point rounding
(other devices, thread counts and dtypes sum in other orders; on a CPU, 1 and 2 threads
gave a few values 1/255 apart). A source is shared by all stages in order (the golden
tests replay the reference's recorded draws that way).

The rules the stages check (sizes, settings, frame counts and rates) are in
:mod:`kv_core.rules`.
"""
from __future__ import annotations


from typing import Callable, Optional

import torch

from .dtypes import InputDtype
from .image import prepare_first_frame
from .movq import decode_video, to_uint8_frames, video_chunk_sizes
from .noise import NoiseSource, as_noise_source, check_seed, interpolation_stage
from .rules import (_is_int, check_context_width, check_guidance, check_noise_augmentation, check_num_keyframes,
                    check_sampler, check_skip_frames, first_frame_latent_size, motion_score, REFERENCE_KEYFRAMES,
                    size_rule, SKIP_FRAMES)
from .sampling import (CancelFn, ProgressFn, TextCondition, assemble_interpolated, check_cancel,
                       model_device, sample_first_frame, sample_interpolation, sample_keyframes)
from .schedulers import stage_sampler
from .step_cache import check_step_cache
from .windows import WindowedInterpolationUNet, window_layout


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
# ``kv_core.sampling``. ``step_cache`` (the three sampling stages): DeepCache-style step
# caching, a ``kv_core.step_cache.StepCacheSettings`` or a dict of its fields; None (the
# default) or interval 1 runs every step in full, bit for bit the uncached result.


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
    movq=None, device=None, dtype: Optional[torch.dtype] = None, step_cache=None,
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
    step_cache = check_step_cache(step_cache)
    noise = _stage_noise(noise, "first_frame")
    return sample_first_frame(_in_dtype(unet, dtype), cond, null_embedding, latent_size=latent_size,
                              guidance_scale=guidance_scale, sampler=stage_sampler("first_frame", sampler, steps),
                              noise=noise, device=_device(unet, device), progress=progress, cancel=cancel,
                              trace=trace, step_cache=step_cache)


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
    device=None, dtype: Optional[torch.dtype] = None, step_cache=None,
) -> torch.Tensor:
    """Keyframe latents ``[num_keyframes, 4, h, w]`` conditioned on ``key_latent``
    ``[4, h, w]`` (from ``encode_first_frame``; frame 0, as the release). ``motion``:
    preset name or number. A ``key_latent`` ``[m, 4, h, w]`` with 2 <= m < num_keyframes
    conditions frames 0 .. m-1 (``kv_core.extend``'s multi-frame option: outside what
    the release was trained for)."""
    num_keyframes = check_num_keyframes(num_keyframes)
    if not isinstance(key_latent, torch.Tensor) or key_latent.ndim not in (3, 4) or (
            key_latent.ndim == 4 and not 2 <= key_latent.shape[0] < num_keyframes):
        shape = list(key_latent.shape) if isinstance(key_latent, torch.Tensor) else type(key_latent).__name__
        raise ValueError(f"key_latent must be a tensor [4, h, w] from encode_first_frame, or [m, 4, h, w] with "
                         f"2 <= m < num_keyframes ({num_keyframes}) to condition the first m frames; got {shape}")
    size_rule(unet=unet).check_latent(*key_latent.shape[-2:], "first-frame latent")
    check_context_width(cond, null_embedding, "keyframe U-Net")
    score = motion_score(motion)
    noise_augmentation = check_noise_augmentation(noise_augmentation)
    wp = check_guidance("guidance_weight_prompt", guidance_weight_prompt)
    wi = check_guidance("guidance_weight_image", guidance_weight_image)
    check_sampler("keyframes", sampler, steps)
    step_cache = check_step_cache(step_cache)
    noise = _stage_noise(noise, "keyframes")
    return sample_keyframes(_in_dtype(unet, dtype), cond, null_embedding, key_latent, num_frames=num_keyframes,
                            guidance_weight_prompt=wp, guidance_weight_image=wi, motion_score=score,
                            noise_augmentation=noise_augmentation,
                            sampler=stage_sampler("keyframes", sampler, steps), noise=noise,
                            device=_device(unet, device), progress=progress, cancel=cancel, trace=trace,
                            step_cache=step_cache)


@torch.inference_mode()
def interpolate_frames(
    unet, null_embedding: torch.Tensor, cond: TextCondition, frames: torch.Tensor, *,
    pass_index: int = 1, guidance_scale: float = 0.5, sampler: str = "ddpm", steps: Optional[int] = None,
    noise=None, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
    trace: dict | None = None, skip_frames: Optional[int] = None, device=None,
    dtype: Optional[torch.dtype] = None, window: Optional[int] = None, overlap: Optional[int] = None,
    step_cache=None,
) -> torch.Tensor:
    """One interpolation pass: ``frames`` ``[N, 4, h, w]`` -> ``[4N - 3, 4, h, w]``.

    ``pass_index`` 1 (skip_frames 3, after the keyframes) or 2 (skip_frames 1, after pass
    1) sets only the skip_frames the U-Net is told; ``skip_frames`` (0 to 19) gives it
    directly instead. A seed draws the noise stream of
    ``interpolation_stage(N)``: keyed on the input frame count, which the frames carry, so
    interpolating a saved latent gives the direct run's result for any keyframe count.
    ``trace["interpolated"]`` receives the ``[N - 1, 12, h, w]`` loop result.

    ``window``: run the U-Net on windows of that many groups (``overlap`` groups shared by
    neighbours; default a quarter of the window) instead of all N - 1 at once, for long
    videos; None or 0: one batch, as the release. Same noise either way; see
    :mod:`kv_core.windows` (with ``step_cache`` every window keeps its own features)."""
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
    step_cache = check_step_cache(step_cache)
    network = _in_dtype(unet, dtype)
    if window:
        window_layout(int(frames.shape[0]) - 1, window, overlap)  # a bad window fails before anything runs
        network = WindowedInterpolationUNet(network, window, overlap, cancel=cancel)
    noise = _stage_noise(noise, interpolation_stage(int(frames.shape[0])))
    groups = sample_interpolation(network, cond, null_embedding, frames, skip_frames=skip_frames,
                                  guidance_scale=guidance_scale,
                                  sampler=stage_sampler("interpolation", sampler, steps),
                                  noise=noise, device=_device(unet, device), progress=progress, cancel=cancel,
                                  trace=trace, step_cache=step_cache)
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
