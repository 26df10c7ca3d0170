"""The keyframes stage: the keyframe U-Net in video mode makes T keyframe latents (12 in the
release) conditioned on the encoded first frame.

Network input per frame: ``[x, condition(5)]``, where the condition is the first frame
noised to ``noise_augmentation`` with *uniform* noise (channels 0-3) and a mask 1
(channel 4) on frame 0 of the copies that see the image, zeros elsewhere; the frame index,
motion score and augmentation level go to the temporal embedding. Each step runs one
forward of 3T rows, copy-major: (text, image), (null text, image), (null text, no image),
combined by :func:`keyframe_guidance`. Reference sampling: DDPM, 50 leading steps, epsilon
prediction (``kv_core.stages.STAGE_TABLE``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Optional

import torch

from ..checks import check_guidance, is_int, is_real
from ..conditioning import TextCondition, check_context_width, guidance_contexts
from ..rules import REFERENCE_KEYFRAMES, check_num_keyframes, size_rule
from ..sampling.loop import cache_kwargs, in_dtype, run_device, run_steps, stage_noise
from ..sampling.step_cache import StepCacheSettings, check_step_cache
from ..sampling.noise import NoiseSource, as_noise_source
from ..sampling.schedulers import NUM_TRAIN_TIMESTEPS, Sampler, add_noise, check_sampler, kv_alphas_cumprod
from . import CONDITION_CHANNELS, Hooks, LATENT_CHANNELS, NO_HOOKS, STAGE_TABLE

NAME = "keyframes"
DEFAULTS = STAGE_TABLE[NAME].sampling
MOTION_PRESETS = {"low": 1, "medium": 10, "high": 50, "extreme": 100}


# --- checks -------------------------------------------------------------------------------

def motion_score(motion) -> float:
    """A motion preset (``low`` 1, ``medium`` 10, ``high`` 50, ``extreme`` 100) or a
    non-negative number -> the score fed to the keyframe U-Net."""
    if isinstance(motion, str):
        if motion not in MOTION_PRESETS:
            raise ValueError(f"motion must be one of {tuple(MOTION_PRESETS)} or a number >= 0, got {motion!r}")
        return MOTION_PRESETS[motion]
    if not is_real(motion) or not math.isfinite(motion) or motion < 0:
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


def check_noise_augmentation(value) -> int:
    if not is_int(value) or not 0 <= value < NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"noise_augmentation must be an integer timestep from 0 to "
                         f"{NUM_TRAIN_TIMESTEPS - 1}, got {value!r}")
    return int(value)


# --- network inputs -----------------------------------------------------------------------

def augment_key_frame(key_frame: torch.Tensor, uniform: torch.Tensor, noise_augmentation: int,
                      alphas_cumprod: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The first frame ``[4, h, w]`` noised to timestep ``noise_augmentation`` with ``uniform``
    noise (U[0, 1), as the release): ``sqrt(a) key + sqrt(1 - a) uniform``."""
    a = kv_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    return add_noise(a, key_frame, uniform, noise_augmentation)


def keyframe_condition(noisy_key: Optional[torch.Tensor], num_frames: int, h: int, w: int,
                       device=None) -> torch.Tensor:
    """Condition channels of one video copy ``[num_frames, 5, h, w]``: ``noisy_key``
    ``[4, h, w]`` and mask 1 on frame 0 (None: no image, all zeros). ``noisy_key``
    ``[m, 4, h, w]`` conditions frames 0 .. m-1 the same way (``kv_core.extend``'s
    multi-frame option, outside what the release was trained for)."""
    condition = torch.zeros(num_frames, CONDITION_CHANNELS, h, w, device=device)
    if noisy_key is not None:
        keys = noisy_key if noisy_key.ndim == 4 else noisy_key[None]
        condition[:keys.shape[0], :LATENT_CHANNELS] = keys.to(device=condition.device, dtype=condition.dtype)
        condition[:keys.shape[0], LATENT_CHANNELS] = 1.0
    return condition


def score_tensor(value, rows: int, device=None) -> torch.Tensor:
    """Motion score / augmentation level per row: int32 as the release passes them (float32
    for a fractional value)."""
    dtype = torch.int32 if float(value).is_integer() else torch.float32
    return torch.full((rows,), value, dtype=dtype, device=device)


def frame_index(num_frames: int, videos: int, device=None) -> torch.Tensor:
    """Temporal embedding input of ``videos`` videos of ``num_frames`` rows each (frames
    inner): ``arange(num_frames)`` repeated, float32 ``[videos * num_frames]``."""
    return torch.arange(num_frames, device=device, dtype=torch.float32).repeat(videos)


def keyframe_augmentation_noise(seed: int, num_frames: int, h: int, w: int) -> torch.Tensor:
    """The uniform noise ``[4, h, w]`` the pack's Keyframes stage draws for ``seed`` (its
    stage stream: the initial normal noise ``[num_frames, 4, h, w]`` first, then this), so
    a host sampling path conditions on the very augmented first frame of the pack's run."""
    source = as_noise_source(int(seed), NAME)
    source.randn((num_frames, LATENT_CHANNELS, h, w), device="cpu")
    return source.rand((LATENT_CHANNELS, h, w), device="cpu")


# --- guidance -----------------------------------------------------------------------------

def keyframe_guidance(full: torch.Tensor, image_only: torch.Tensor, uncond: torch.Tensor,
                      prompt_weight: float, image_weight: float) -> torch.Tensor:
    """Keyframes: ``(1 - wi) uncond + (wi - wp) image_only + wp full`` with
    ``full`` = text + image, ``image_only`` = null text + image, ``uncond`` = null text, no image."""
    wp, wi = prompt_weight, image_weight
    return (1 - wi) * uncond + (wi - wp) * image_only + wp * full


# --- the loop -----------------------------------------------------------------------------

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
    hooks: Hooks = NO_HOOKS,
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
    ``hooks``: progress, cancel, trace and device (its dtype is the stage function's).
    """
    sampler = sampler or DEFAULTS.make()
    device = run_device(unet, hooks.device)
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

    def predict(x, t, cache=None):
        inp = torch.cat([x.repeat(3, 1, 1, 1), condition], dim=1)
        time = torch.full((rows,), float(t), device=device)
        e = unet(inp, time, context, context_mask, mode="video", num_frames=t_frames,
                 temporal_embed=frames_index, noise_aug_time=aug, motion_score=motion,
                 **cache_kwargs(cache, rows)).float()
        e_full, e_image, e_uncond = e.chunk(3)
        return keyframe_guidance(e_full, e_image, e_uncond, wp, wi)

    return run_steps(sampler, x, predict, noise, hooks, step_cache)


# --- the stage ----------------------------------------------------------------------------

@torch.inference_mode()
def generate_keyframes(
    unet, null_embedding: torch.Tensor, cond: TextCondition, key_latent: torch.Tensor, *,
    num_keyframes: int = REFERENCE_KEYFRAMES, motion="medium", noise_augmentation: int = 20,
    guidance_weight_prompt: float = 5.0, guidance_weight_image: float = 2.0,
    sampler: str = "ddpm", steps: Optional[int] = None, noise=None, hooks: Hooks = NO_HOOKS, step_cache=None,
) -> torch.Tensor:
    """Keyframe latents ``[num_keyframes, 4, h, w]`` conditioned on ``key_latent``
    ``[4, h, w]`` (from ``encode_first_frame``; frame 0, as the release). ``motion``:
    preset name or number. A ``key_latent`` ``[m, 4, h, w]`` with 2 <= m < num_keyframes
    conditions frames 0 .. m-1 (``kv_core.extend``'s multi-frame option: outside what
    the release was trained for). ``step_cache``: DeepCache-style step caching (a
    ``kv_core.sampling.step_cache.StepCacheSettings`` or a dict of its fields); None (the
    default) or interval 1 runs every step in full, bit for bit the uncached result."""
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
    check_sampler(NAME, sampler, steps)
    step_cache = check_step_cache(step_cache)
    noise = stage_noise(noise, NAME)
    return sample_keyframes(in_dtype(unet, hooks.dtype), cond, null_embedding, key_latent, num_frames=num_keyframes,
                            guidance_weight_prompt=wp, guidance_weight_image=wi, motion_score=score,
                            noise_augmentation=noise_augmentation, sampler=DEFAULTS.make(sampler, steps),
                            noise=noise, hooks=replace(hooks, device=run_device(unet, hooks.device)),
                            step_cache=step_cache)
