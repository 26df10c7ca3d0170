"""The three sampling loops of Kandinsky Video 1.1.

``sample_first_frame``    the keyframe U-Net in image mode at twice the video size, with
                          classifier-free guidance ``(w + 1) cond - w uncond``.
``sample_keyframes``      the keyframe U-Net in video mode, conditioned on the encoded first
                          frame; three guidance passes per step in one forward of 3T rows.
``sample_interpolation``  the interpolation U-Net: three new frames between each pair of
                          consecutive frames (N - 1 groups), cond/uncond in one forward.

Each loop takes the network, a ``TextCondition`` (the prompt context, optionally a
negative-prompt context), the stage's null embedding, a sampler (``kv_core.schedulers``;
the reference DDPM of the stage by default) and a noise source (``kv_core.noise``: every
random tensor is drawn from it, in the reference order). Latents stay float32 on
``device`` (default: the device of the network's parameters); the network gets them as
they are and casts to its own dtype.

Step caching (``step_cache``, off by default): a ``kv_core.step_cache.StepCacheSettings``
makes the loop run the U-Net in full only every ``interval`` steps and reuse its deep
features in between (DeepCache; see :mod:`kv_core.step_cache`). Each loop starts with an
empty cache; ``trace["step_cache"]`` receives the counts of full and cached steps.

Host hooks: ``progress(step, total, latent)`` is called after every step;
``cancel()`` is called before every step and stops the loop with ``Interrupted`` when it
returns True (it may also raise its own exception). ``trace``, when a dict, receives the
per-step guided predictions (``trace["eps"]``) and latents (``trace["x"]``) as lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .noise import NoiseSource
from .schedulers import Sampler, stage_sampler
from .step_cache import StepCache, StepCacheSettings, check_step_cache
from .stage_inputs import assemble_interpolated  # noqa: F401  (kv_core.sampling.assemble_interpolated, as before)
from .stage_inputs import (augment_key_frame, cfg, first_frame_condition, frame_index, guidance_contexts,
                           interpolation_input, interpolation_neighbours, interpolation_scalars, keyframe_condition,
                           keyframe_guidance, score_tensor)

ProgressFn = Callable[[int, int, torch.Tensor], None]
CancelFn = Callable[[], Optional[bool]]


class Interrupted(RuntimeError):
    """Sampling was stopped between two steps because the cancel check asked for it."""


@dataclass
class TextCondition:
    """Text conditioning of one video.

    ``context`` ``[1 or B, L, D]`` float and ``context_mask`` ``[1 or B, L]`` (int or bool)
    as the text encoder returns them (``projection_base``). With a negative prompt,
    ``negative_context``/``negative_mask`` replace the null-embedding context in every
    unconditional pass; without one the unconditional context is the reference's: zeros
    of the same length with the stage's null embedding at position 0 and mask ``[1, 0, …]``.
    """

    context: torch.Tensor
    context_mask: torch.Tensor
    negative_context: Optional[torch.Tensor] = None
    negative_mask: Optional[torch.Tensor] = None

    def __post_init__(self):
        _check_context(self.context, self.context_mask, "context")
        if (self.negative_context is None) != (self.negative_mask is None):
            raise ValueError("negative_context and negative_mask must be given together")
        if self.negative_context is not None:
            _check_context(self.negative_context, self.negative_mask, "negative_context")
            if self.negative_context.shape[-1] != self.context.shape[-1]:
                raise ValueError("negative_context and context must have the same width D")


def _check_context(context, mask, name):
    if not isinstance(context, torch.Tensor) or context.ndim != 3:
        raise ValueError(f"{name} must be a tensor [B, L, D]")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(context.shape[:2]):
        raise ValueError(f"{name} mask must be a tensor [B, L] matching {name} {tuple(context.shape)}")


def model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def check_cancel(cancel: CancelFn | None) -> None:
    if cancel is not None and cancel():
        raise Interrupted("generation was cancelled")


def _run(sampler: Sampler, x: torch.Tensor, predict: Callable[..., torch.Tensor],
         noise: NoiseSource, progress: ProgressFn | None, cancel: CancelFn | None, trace: dict | None,
         step_cache: StepCacheSettings | None = None):
    """Shared loop: ``predict(x, t, cache)`` gives the guided model output at timestep t;
    ``cache`` is the loop's :class:`StepCache` (None without caching), whose
    ``call(n=rows)`` the network gets as ``step_cache``."""
    sampler.reset()
    if trace is not None:
        trace.setdefault("eps", [])
        trace.setdefault("x", [])
    total = sampler.num_steps
    settings = check_step_cache(step_cache)
    cache = StepCache(settings, total) if settings is not None else None
    for i, t in enumerate(sampler.timesteps.tolist()):
        check_cancel(cancel)
        if cache is not None:
            cache.begin(i)
        guided = predict(x, t, cache).float()
        step_noise = noise.randn(x.shape, device=x.device) if sampler.needs_noise(i) else None
        x = sampler.step(guided, i, x, step_noise).prev_sample
        if trace is not None:
            trace["eps"].append(guided)
            trace["x"].append(x)
        if cache is not None and settings.report is not None:
            settings.report(*cache.counts())
        if progress is not None:
            progress(i + 1, total, x)
    if cache is not None:
        cache.finish()
        if trace is not None:
            trace["step_cache"] = cache.summary()
    return x


def _cache_kwargs(cache: StepCache | None, rows: int) -> dict:
    """The network's ``step_cache`` keyword for a batch of ``rows`` (none without a cache,
    so a network that does not know the keyword runs as before)."""
    return {} if cache is None else {"step_cache": cache.call(n=rows)}


def sample_first_frame(
    unet: torch.nn.Module,
    cond: TextCondition,
    null_embedding: torch.Tensor,
    *,
    latent_size: tuple[int, int],
    guidance_scale: float = 5.0,
    sampler: Sampler | None = None,
    noise: NoiseSource,
    device=None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    trace: dict | None = None,
    step_cache: StepCacheSettings | None = None,
) -> torch.Tensor:
    """Generate the first-frame latent ``[B, 4, h, w]`` (B = rows of ``cond.context``).

    ``latent_size`` = (h, w) of the image latent (the pipeline uses twice the video's
    latent size). Input rows ``[x, x]`` with zero condition and mask channels; the U-Net
    runs in image mode; guidance ``(w + 1) cond - w uncond``.
    """
    sampler = sampler or stage_sampler("first_frame")
    device = device or model_device(unet)
    b = cond.context.shape[0]
    h, w = latent_size
    x = noise.randn((b, 4, h, w), device=device)
    ctx, mask, uc, um = guidance_contexts(cond, null_embedding, b, device)
    context, context_mask = torch.cat([ctx, uc]), torch.cat([mask, um])
    zero_condition = first_frame_condition(2 * b, h, w, device)

    def predict(x, t, cache):
        inp = torch.cat([x.repeat(2, 1, 1, 1), zero_condition], dim=1)
        time = torch.full((2 * b,), float(t), device=device)
        e_cond, e_uncond = unet(inp, time, context, context_mask, mode="image",
                                **_cache_kwargs(cache, 2 * b)).float().chunk(2)
        return cfg(e_cond, e_uncond, guidance_scale)

    return _run(sampler, x, predict, noise, progress, cancel, trace, step_cache)


def sample_keyframes(
    unet: torch.nn.Module,
    cond: TextCondition,
    null_embedding: torch.Tensor,
    key_frame: torch.Tensor,
    *,
    num_frames: int = 12,
    guidance_weight_prompt: float = 5.0,
    guidance_weight_image: float = 2.0,
    motion_score: float = 10,
    noise_augmentation: int = 20,
    sampler: Sampler | None = None,
    noise: NoiseSource,
    device=None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    trace: dict | None = None,
    step_cache: StepCacheSettings | None = None,
) -> torch.Tensor:
    """Generate ``num_frames`` keyframe latents ``[T, 4, h, w]`` from the encoded first
    frame ``key_frame`` ``[4, h, w]``.

    The first frame is noised to timestep ``noise_augmentation`` with *uniform* noise (as
    the reference) and put in the condition channels of frame 0 with mask 1. A
    ``key_frame`` ``[m, 4, h, w]`` (2 <= m < T) conditions frames 0 .. m-1 the same way
    (the long-video option of ``kv_core.extend``; the release conditions frame 0 only and
    was trained for that). Each step
    runs one forward of 3T rows, copy-major: (text, image), (null text, image),
    (null text, no image), then ``(1 - wi) uncond + (wi - wp) image_only + wp full``.
    """
    sampler = sampler or stage_sampler("keyframes")
    device = device or model_device(unet)
    t_frames = num_frames
    h, w = key_frame.shape[-2:]
    x = noise.randn((t_frames, 4, h, w), device=device)
    key_frame = key_frame.to(device=device, dtype=torch.float32)
    uniform = noise.rand(key_frame.shape, device=device)
    noisy_key = augment_key_frame(key_frame, uniform, noise_augmentation, sampler.alphas_cumprod)

    # condition channels (latent 4 + mask 1) of the three copies: only frame 0 (0 .. m-1)
    # of the first two copies carries the image
    with_image = keyframe_condition(noisy_key, t_frames, h, w, device)
    condition = torch.cat([with_image, with_image, keyframe_condition(None, t_frames, h, w, device)])

    ctx, mask, uc, um = guidance_contexts(cond, null_embedding, t_frames, device)
    context, context_mask = torch.cat([ctx, uc, uc]), torch.cat([mask, um, um])
    rows = 3 * t_frames
    frames_index = frame_index(t_frames, 3, device)
    aug = score_tensor(noise_augmentation, rows, device)
    motion = score_tensor(motion_score, rows, device)
    wp, wi = guidance_weight_prompt, guidance_weight_image

    def predict(x, t, cache):
        inp = torch.cat([x.repeat(3, 1, 1, 1), condition], dim=1)
        time = torch.full((rows,), float(t), device=device)
        e = unet(inp, time, context, context_mask, mode="video", num_frames=t_frames,
                 temporal_embed=frames_index, noise_aug_time=aug, motion_score=motion,
                 **_cache_kwargs(cache, rows)).float()
        e_full, e_image, e_uncond = e.chunk(3)
        return keyframe_guidance(e_full, e_image, e_uncond, wp, wi)

    return _run(sampler, x, predict, noise, progress, cancel, trace, step_cache)


def sample_interpolation(
    unet: torch.nn.Module,
    cond: TextCondition,
    null_embedding: torch.Tensor,
    frames: torch.Tensor,
    *,
    skip_frames: int,
    guidance_scale: float = 0.5,
    perturbation_time: int = 0,
    use_temporal_mask: bool = True,
    sampler: Sampler | None = None,
    noise: NoiseSource,
    device=None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    trace: dict | None = None,
    step_cache: StepCacheSettings | None = None,
) -> torch.Tensor:
    """Predict three frames between each pair of consecutive ``frames`` ``[N, 4, h, w]``.

    Returns ``[N - 1, 12, h, w]`` (group i = the frames between i and i + 1, frame-major
    channels). Each step runs one forward of 2(N - 1) rows: cond (text, neighbouring
    frames, temporal mask 1) and uncond (null text, zero frames, temporal mask 0 — the
    temporal layers are bypassed), guidance ``(w + 1) cond - w uncond``.
    ``skip_frames`` is 3 for the first interpolation pass and 1 for the second.
    """
    sampler = sampler or stage_sampler("interpolation")
    device = device or model_device(unet)
    n, c, h, w = frames.shape
    if n < 2:
        raise ValueError(f"interpolation needs at least 2 frames, got {n}")
    groups = n - 1
    x = noise.randn((groups, 3 * c, h, w), device=device)
    frames = frames.to(device=device, dtype=torch.float32)
    (left_c, right_c), (left_u, right_u) = interpolation_neighbours(frames), interpolation_neighbours(frames, False)
    left, right = torch.cat([left_c, left_u]), torch.cat([right_c, right_u])

    ctx, mask, uc, um = guidance_contexts(cond, null_embedding, groups, device)
    context, context_mask = torch.cat([ctx, uc]), torch.cat([mask, um])
    rows = 2 * groups
    conditional = torch.ones(rows, dtype=torch.bool)
    if use_temporal_mask:
        conditional[groups:] = False
    perturbation, skip, temporal_mask = interpolation_scalars(rows, skip_frames, perturbation_time, conditional,
                                                              device)

    def predict(x, t, cache):
        inp = interpolation_input(left, x.repeat(2, 1, 1, 1), right)
        time = torch.full((rows,), int(t), dtype=torch.int64, device=device)
        v = unet(inp, time, context, context_mask, num_groups=groups, perturbation_time=perturbation,
                 skip_frames=skip, temporal_mask=temporal_mask, **_cache_kwargs(cache, rows)).float()
        v_cond, v_uncond = v.chunk(2)
        return cfg(v_cond, v_uncond, guidance_scale)

    return _run(sampler, x, predict, noise, progress, cancel, trace, step_cache)
