"""What each Kandinsky Video stage feeds its network, its release sigmas and its guidance:
the one definition the pack's sampling loops (:mod:`kv_core.sampling`) and the host's own
sampling path (ComfyUI's samplers, ``nodes/core_model.py``) both use.

Stages and their per-row network inputs (``x`` is the latent being denoised):

``first_frame``   keyframe U-Net, image mode: ``[x, zeros(5)]`` (no condition latent, mask 0).
``keyframes``     keyframe U-Net, video mode: ``[x, condition(5)]`` per frame, where the
                  condition is the first frame noised to ``noise_augmentation`` with
                  *uniform* noise (channels 0-3) and a mask 1 (channel 4) on frame 0 of the
                  copies that see the image, zeros elsewhere; the frame index, motion
                  score and augmentation level go to the temporal embedding.
``interpolation`` interpolation U-Net: ``[left(4), x(12), right(4)]`` per group (the
                  neighbour frames; zeros for the unconditional pass), skip frames,
                  perturbation time and a temporal mask (1 cond, 0 uncond).

Guidance (combined on the model output, or equally on x0: every formula's weights sum
to 1) and then, once, the clamp of x0 to [-1, 1] (:func:`clamp_x0`; the release's
thresholding with ``sample_max_value`` 1): ``cfg(cond, uncond, w) = (w + 1) cond - w uncond``
for the first frame and interpolation, ``keyframe_guidance`` for the keyframes.

Sigmas (:func:`release_sigmas`): ``sqrt((1 - abar_t) / abar_t)`` at the stage's timesteps
(``kv_core.schedulers.make_timesteps`` with its spacing), then 0. The schedule is zero
terminal SNR (``abar_999 = 0``, an infinite sigma); a sampler in sigma space needs a finite
one, so ``abar`` is floored at ``EPSILON_ALPHA_FLOOR`` = 2**-24 (sigma sqrt(2**24 - 1) ~ 4096 at
t = 999), the floor the loops already use to get x0 from an epsilon prediction. Only t = 999 is
affected; the release's epsilon stages (leading spacing, first timestep 980) never reach
it, its v-prediction stage (trailing, first timestep 999) does: there the loops use
``abar = 0`` exactly (x0 = -v) and a floored schedule gives
``x0 = 2**-12 x - sqrt(1 - 2**-24) v`` (see :func:`floored_alphas_cumprod`).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .noise import as_noise_source
from .schedulers import (EPSILON_ALPHA_FLOOR, STAGE_DEFAULTS, add_noise, kv_alphas_cumprod, make_timesteps,
                         threshold_x0)
from .text import unconditional_context

STAGES = tuple(STAGE_DEFAULTS)
#: prediction type of each stage's network output
PREDICTION = {stage: cfg["prediction_type"] for stage, cfg in STAGE_DEFAULTS.items()}
#: the release's step spacing of each stage (leading for the first frame and keyframes,
#: trailing for interpolation)
SPACING = {stage: cfg["spacing"] for stage, cfg in STAGE_DEFAULTS.items()}
#: the release's step count of each stage
STEPS = {stage: cfg["steps"] for stage, cfg in STAGE_DEFAULTS.items()}
#: channels of the first-frame / keyframe condition (latent 4 + mask 1)
CONDITION_CHANNELS = 5
LATENT_CHANNELS = 4
#: frames an interpolation group predicts (its latent has 3 x 4 channels, frame-major)
GROUP_FRAMES = 3


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return stage


# --- text contexts ----------------------------------------------------------------------

def _rows(t: torch.Tensor, rows: int, what: str) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    if t.shape[0] == 1:
        return t.expand(rows, *t.shape[1:])
    raise ValueError(f"{what} has batch {t.shape[0]}; expected 1 or {rows}")


def _pad_length(context, mask, length):
    extra = length - context.shape[1]
    if extra == 0:
        return context, mask
    return F.pad(context, (0, 0, 0, extra)), F.pad(mask, (0, extra))


def guidance_contexts(cond, null_embedding: torch.Tensor, rows: int, device,
                      dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conditional and unconditional contexts of ``rows`` rows each, same length L, from a
    ``kv_core.sampling.TextCondition`` ``cond`` and the U-Net's ``null_embedding`` ``[D]``.

    Returns ``(context, mask, uncond_context, uncond_mask)`` on ``device``, masks bool.
    A negative prompt of another length is zero-padded (mask 0) with the prompt to the
    longer of the two.
    """
    ctx = _rows(cond.context, rows, "context").to(device=device, dtype=dtype)
    mask = _rows(cond.context_mask, rows, "context_mask").to(device=device)
    if cond.negative_context is None:
        uc, um = unconditional_context(ctx, mask, null_embedding)
    else:
        uc = _rows(cond.negative_context, rows, "negative_context").to(device=device, dtype=dtype)
        um = _rows(cond.negative_mask, rows, "negative_mask").to(device=device, dtype=mask.dtype)
        length = max(ctx.shape[1], uc.shape[1])
        ctx, mask = _pad_length(ctx, mask, length)
        uc, um = _pad_length(uc, um, length)
    return ctx, mask.bool(), uc, um.bool()


# --- the schedule in sigma space -------------------------------------------------------

def floored_alphas_cumprod(floor: float = EPSILON_ALPHA_FLOOR) -> torch.Tensor:
    """``alphas_cumprod`` float32 ``[1000]`` of the release with every value below ``floor``
    raised to it (only t = 999, which is 0). Sigmas ``sqrt((1 - a) / a)`` are then finite:
    the last is ``sqrt(2**24 - 1)`` ~ 4096."""
    return kv_alphas_cumprod().clamp(min=floor)


def schedule_sigmas() -> torch.Tensor:
    """Sigma of every training timestep, float32 ``[1000]``, ascending (t = 0 … 999), from
    :func:`floored_alphas_cumprod`: what a discrete sigma-space model sampling holds."""
    a = floored_alphas_cumprod().double()
    return ((1 - a) / a).sqrt().float()


def release_sigmas(stage: str, steps: Optional[int] = None, spacing: Optional[str] = None) -> torch.Tensor:
    """The sigmas of a stage's schedule for a sigma-space sampler: float32 ``[steps + 1]``,
    descending, ending in 0. ``steps`` defaults to the release's (50, 50, 10), ``spacing``
    to the stage's (leading, leading, trailing); ``sigma_i = sqrt((1 - a) / a)`` at the
    i-th timestep of ``kv_core.schedulers.make_timesteps(steps, spacing)`` with the floored
    schedule (:func:`floored_alphas_cumprod`)."""
    check_stage(stage)
    steps = STEPS[stage] if steps is None else steps
    timesteps = make_timesteps(steps, SPACING[stage] if spacing is None else spacing)
    sigmas = schedule_sigmas()[timesteps]
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def clamp_x0(x0: torch.Tensor) -> torch.Tensor:
    """The release's clamp of the predicted clean latent, applied once after the full
    guidance combination: ``clamp(x0, -1, 1)``."""
    return threshold_x0(x0)


# --- guidance -------------------------------------------------------------------------

def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """First frame and interpolation: ``(w + 1) cond - w uncond`` (a core CFG of ``w + 1``)."""
    return (scale + 1.0) * cond - scale * uncond


def keyframe_guidance(full: torch.Tensor, image_only: torch.Tensor, uncond: torch.Tensor,
                      prompt_weight: float, image_weight: float) -> torch.Tensor:
    """Keyframes: ``(1 - wi) uncond + (wi - wp) image_only + wp full`` with
    ``full`` = text + image, ``image_only`` = null text + image, ``uncond`` = null text, no image."""
    wp, wi = prompt_weight, image_weight
    return (1 - wi) * uncond + (wi - wp) * image_only + wp * full


# --- first frame -----------------------------------------------------------------------

def first_frame_condition(rows: int, h: int, w: int, device=None) -> torch.Tensor:
    """The condition channels of the first frame: zeros ``[rows, 5, h, w]`` (no latent, mask 0)."""
    return torch.zeros(rows, CONDITION_CHANNELS, h, w, device=device)


# --- keyframes ---------------------------------------------------------------------------

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
    source = as_noise_source(int(seed), "keyframes")
    source.randn((num_frames, LATENT_CHANNELS, h, w), device="cpu")
    return source.rand((LATENT_CHANNELS, h, w), device="cpu")


# --- interpolation -------------------------------------------------------------------------

def interpolation_neighbours(frames: torch.Tensor, conditional: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Left and right neighbours ``[N - 1, 4, h, w]`` of each group of ``frames``
    ``[N, 4, h, w]`` (zeros for the unconditional pass)."""
    left, right = frames[:-1], frames[1:]
    if not conditional:
        return torch.zeros_like(left), torch.zeros_like(right)
    return left, right


def interpolation_input(left: torch.Tensor, x: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Network input of the groups: ``[left, x, right]`` on channels -> ``[rows, 20, h, w]``."""
    return torch.cat([left, x, right], dim=1)


def interpolation_scalars(rows: int, skip_frames: int, perturbation_time: int, conditional,
                          device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(perturbation int32, skip int32, temporal_mask float32)`` ``[rows]``;
    ``conditional`` (bool or a bool tensor ``[rows]``) sets the temporal mask to 1, else 0
    (the temporal layers are bypassed)."""
    perturbation = torch.full((rows,), perturbation_time, dtype=torch.int32, device=device)
    skip = torch.full((rows,), skip_frames, dtype=torch.int32, device=device)
    mask = torch.as_tensor(conditional, device=device).to(torch.float32).expand(rows).clone()
    return perturbation, skip, mask


def split_groups(groups: torch.Tensor) -> torch.Tensor:
    """Interpolation result ``[G, 12, h, w]`` (frame-major channels) -> frames ``[G, 3, 4, h, w]``."""
    g, c, h, w = groups.shape
    if c != GROUP_FRAMES * LATENT_CHANNELS:
        raise ValueError(f"interpolation groups have {GROUP_FRAMES * LATENT_CHANNELS} channels "
                         f"(3 frames x 4), got {c}")
    return groups.reshape(g, GROUP_FRAMES, LATENT_CHANNELS, h, w)


def assemble_interpolated(frames: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Interleave ``frames`` ``[N, C, h, w]`` with ``groups`` ``[N - 1, 3C, h, w]`` into
    ``[4N - 3, C, h, w]``: frame 4i is ``frames[i]``, frames 4i+1 … 4i+3 are group i."""
    n, c, h, w = frames.shape
    if groups.shape[0] != n - 1 or groups.shape[1] != GROUP_FRAMES * c or groups.shape[-2:] != frames.shape[-2:]:
        raise ValueError(f"{n} frames [{n}, {c}, {h}, {w}] need groups [{n - 1}, {GROUP_FRAMES * c}, {h}, {w}], "
                         f"got {list(groups.shape)}")
    groups = groups.to(frames.dtype).reshape(n - 1, GROUP_FRAMES, c, h, w)
    body = torch.cat([frames[:-1, None], groups], dim=1).reshape(4 * (n - 1), c, h, w)
    return torch.cat([body, frames[-1:]])
