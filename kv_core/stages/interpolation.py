"""The interpolation stage: the interpolation U-Net puts three new frames between each pair of
consecutive frames, N -> 4N - 3 (pass 1 after the keyframes, skip_frames 3; pass 2 after
pass 1, skip_frames 1).

Network input per group (the frames between two neighbours): ``[left(4), x(12), right(4)]``
(the neighbour frames; zeros for the unconditional pass), skip frames, perturbation time
and a temporal mask (1 cond, 0 uncond: the temporal layers are bypassed). Each step runs
one forward of 2(N - 1) rows (cond, uncond), guidance ``(w + 1) cond - w uncond``. The
stream of a seed is keyed on the input frame count (``sampling.noise.interpolation_stage``).
Long videos may run the U-Net on windows of groups (:mod:`kv_core.stages.windows`).
Reference sampling: DDPM, 10 trailing steps, v-prediction (``kv_core.stages.STAGE_TABLE``).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from ..checks import check_guidance, is_int
from ..conditioning import TextCondition, cfg, check_context_width, guidance_contexts
from ..rules import size_rule
from ..sampling.loop import cache_kwargs, in_dtype, run_device, run_steps, stage_noise
from ..sampling.step_cache import StepCacheSettings, check_step_cache
from ..sampling.noise import NoiseSource, interpolation_stage
from ..sampling.schedulers import Sampler, check_sampler
from . import Hooks, LATENT_CHANNELS, NO_HOOKS, STAGE_TABLE
from .windows import WindowedInterpolationUNet, window_layout

NAME = "interpolation"
DEFAULTS = STAGE_TABLE[NAME].sampling
SKIP_FRAMES = {1: 3, 2: 1}  # interpolation pass -> skip_frames
MAX_SKIP_FRAMES = 19        # the interpolation U-Net's skip-frames embedding has 20 entries
#: frames an interpolation group predicts (its latent has 3 x 4 channels, frame-major)
GROUP_FRAMES = 3


# --- checks -------------------------------------------------------------------------------

def check_skip_frames(value) -> int:
    if not is_int(value) or not 0 <= value <= MAX_SKIP_FRAMES:
        raise ValueError(f"skip_frames must be an integer from 0 to {MAX_SKIP_FRAMES} (3 for the first "
                         f"interpolation pass, 1 for the second), got {value!r}")
    return int(value)


# --- network inputs and outputs -----------------------------------------------------------

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


# --- the loop -----------------------------------------------------------------------------

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
    hooks: Hooks = NO_HOOKS,
    step_cache: StepCacheSettings | None = None,
) -> torch.Tensor:
    """Predict three frames between each pair of consecutive ``frames`` ``[N, 4, h, w]``.

    Returns ``[N - 1, 12, h, w]`` (group i = the frames between i and i + 1, frame-major
    channels). Each step runs one forward of 2(N - 1) rows: cond (text, neighbouring
    frames, temporal mask 1) and uncond (null text, zero frames, temporal mask 0 — the
    temporal layers are bypassed), guidance ``(w + 1) cond - w uncond``.
    ``skip_frames`` is 3 for the first interpolation pass and 1 for the second. ``hooks``:
    progress, cancel, trace and device (its dtype is the stage function's).
    """
    sampler = sampler or DEFAULTS.make()
    device = run_device(unet, hooks.device)
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

    def predict(x, t, cache=None):
        inp = interpolation_input(left, x.repeat(2, 1, 1, 1), right)
        time = torch.full((rows,), int(t), dtype=torch.int64, device=device)
        v = unet(inp, time, context, context_mask, num_groups=groups, perturbation_time=perturbation,
                 skip_frames=skip, temporal_mask=temporal_mask, **cache_kwargs(cache, rows)).float()
        v_cond, v_uncond = v.chunk(2)
        return cfg(v_cond, v_uncond, guidance_scale)

    return run_steps(sampler, x, predict, noise, hooks, step_cache)


# --- the stage ----------------------------------------------------------------------------

@torch.inference_mode()
def interpolate_frames(
    unet, null_embedding: torch.Tensor, cond: TextCondition, frames: torch.Tensor, *,
    pass_index: int = 1, guidance_scale: float = 0.5, sampler: str = "ddpm", steps: Optional[int] = None,
    noise=None, skip_frames: Optional[int] = None, window: Optional[int] = None, overlap: Optional[int] = None,
    hooks: Hooks = NO_HOOKS, step_cache=None,
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
    :mod:`kv_core.stages.windows`. ``step_cache``: DeepCache-style step caching (a
    ``kv_core.sampling.step_cache.StepCacheSettings`` or a dict of its fields; every window
    keeps its own features); None (the default) or interval 1 runs every step in full, bit
    for bit the uncached result."""
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
    check_sampler(NAME, sampler, steps)
    step_cache = check_step_cache(step_cache)
    network = in_dtype(unet, hooks.dtype)
    if window:
        window_layout(int(frames.shape[0]) - 1, window, overlap)  # a bad window fails before anything runs
        network = WindowedInterpolationUNet(network, window, overlap, cancel=hooks.cancel)
    noise = stage_noise(noise, interpolation_stage(int(frames.shape[0])))
    groups = sample_interpolation(network, cond, null_embedding, frames, skip_frames=skip_frames,
                                  guidance_scale=guidance_scale, sampler=DEFAULTS.make(sampler, steps),
                                  noise=noise, hooks=replace(hooks, device=run_device(unet, hooks.device)),
                                  step_cache=step_cache)
    if hooks.trace is not None:
        hooks.trace["interpolated"] = groups
    return assemble_interpolated(frames.to(groups.device, torch.float32), groups)
