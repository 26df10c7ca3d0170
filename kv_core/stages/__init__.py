"""The stages of a Kandinsky Video 1.1 generation, one module each, read top to bottom:

``text``           prompt (+ negative prompt) -> ``TextCondition`` (T5 encoder, projection)
``first_frame``    text -> first-frame latent at twice the video size (keyframe U-Net, image
                   mode), its decode to a picture and a picture's encode to the conditioning latent
``keyframes``      first-frame latent -> T keyframe latents (keyframe U-Net, video mode)
``interpolation``  N frames -> 4N - 3 (interpolation U-Net; ``windows``: the same pass in
                   windows of groups for long videos)
``decode``         latents -> frames (video MoVQ, in the reference's chunks)

Each sampling stage module holds its network inputs, guidance, sampling loop, checks and
public functions. :data:`STAGE_TABLE` is the one list of the sampling stages (the names
of their modules, noise streams and settings) with the network each runs and its reference
sampling; a stage module reads its own entry (``DEFAULTS``). The list lives here, in a package ``__init__``
that imports none of the stage modules, so that ``kv_core.sampling.noise`` and the nodes
can read it by name without importing every stage.

Randomness: ``noise`` is a seed (int) or a ``kv_core.sampling.noise`` source. A seed is
turned into one CPU generator per stage (``sampling.noise.stage_seed``; an interpolation pass
keys its stream on its input frame count), so a stage run alone with the seed of a full run
reproduces that stage. What a seed guarantees: the same noise, bit for bit, on any device,
with any thread count and in any process; the video made from it is equal up to
floating-point rounding (other devices, thread counts and dtypes sum in other orders; on a
CPU, 1 and 2 threads gave a few values 1/255 apart). A source is shared by all stages in
order (the golden tests replay the reference's recorded draws that way).

Host hooks (progress, cancel, trace, device, dtype) travel as one :class:`Hooks` object
through every stage function and loop.

Sigmas (:func:`release_sigmas`): ``sqrt((1 - abar_t) / abar_t)`` at the stage's timesteps
(``kv_core.sampling.schedulers.make_timesteps`` with its spacing), then 0. The schedule is
zero terminal SNR (``abar_999 = 0``, an infinite sigma); a sampler in sigma space needs a
finite one, so ``abar`` is floored at ``EPSILON_ALPHA_FLOOR`` = 2**-24 (sigma
sqrt(2**24 - 1) ~ 4096 at t = 999), the floor the loops already use to get x0 from an
epsilon prediction. Only t = 999 is affected; the release's epsilon stages (leading
spacing, first timestep 980) never reach it, its v-prediction stage (trailing, first
timestep 999) does: there the loops use ``abar = 0`` exactly (x0 = -v) and a floored
schedule gives ``x0 = 2**-12 x - sqrt(1 - 2**-24) v``
(see :func:`floored_alphas_cumprod`). These sigma-space helpers are what a host's own
sampler (ComfyUI's, ``nodes/core_model.py``) needs of the stages.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from ..kinds import INTERPOLATION_UNET, KEYFRAME_UNET
from ..sampling.schedulers import (EPSILON_ALPHA_FLOOR, Sampler, SamplerDefaults, kv_alphas_cumprod, make_timesteps,
                                   threshold_x0)


@dataclass(frozen=True)
class Stage:
    """A sampling stage: its name (that of its module, noise stream and settings), the
    network kind it runs (``kv_core.kinds``) and the release's sampling of it."""

    name: str
    network: str
    sampling: SamplerDefaults


#: the sampling stages in the order of a generation, each a module of this package
STAGE_TABLE = {stage.name: stage for stage in (
    Stage("first_frame", KEYFRAME_UNET, SamplerDefaults("ddpm", 50, "epsilon", "leading")),
    Stage("keyframes", KEYFRAME_UNET, SamplerDefaults("ddpm", 50, "epsilon", "leading")),
    Stage("interpolation", INTERPOLATION_UNET, SamplerDefaults("ddpm", 10, "v_prediction", "trailing")),
)}
STAGES = tuple(STAGE_TABLE)
@dataclass(frozen=True)
class Hooks:
    """What a host gives a stage (the ComfyUI nodes give all of it; the defaults suit a
    plain PyTorch run).

    ``progress``: called after every sampling step as ``progress(step, total, latent)``;
    the decode and the text stage, which have no latent, call ``progress(done, total)``
    after each chunk or prompt. ``cancel()``: called before every step (chunk) and stops
    the stage with ``kv_core.sampling.loop.Interrupted`` when it returns True (it may also raise its own
    exception). ``trace``: a dict that receives the per-step guided predictions
    (``trace["eps"]``) and latents (``trace["x"]``) as lists. ``device``: where the stage
    runs (default: the network's parameters' device; a host that loads a network in parts
    gives its load device). ``dtype``: the dtype the network computes in (default: its
    input's; the loops keep latents float32 and a host whose layers cast their weights at
    run time, e.g. fp8 storage, gives it).
    """

    progress: Optional[Callable] = None
    cancel: Optional[Callable[[], Optional[bool]]] = None
    trace: Optional[dict] = None
    device: Union[torch.device, str, None] = None
    dtype: Optional[torch.dtype] = None


NO_HOOKS = Hooks()


#: channels of a MoVQ latent
LATENT_CHANNELS = 4
#: channels of the first-frame / keyframe condition (latent 4 + mask 1)
CONDITION_CHANNELS = 5


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return stage


def stage_defaults(stage: str) -> SamplerDefaults:
    """The reference sampling of ``stage`` (sampler, steps, prediction type, spacing)."""
    return STAGE_TABLE[check_stage(stage)].sampling


def stage_sampler(stage: str, sampler: Optional[str] = None, steps: Optional[int] = None) -> Sampler:
    """The sampler of ``stage``: the reference DDPM by default; ``sampler``/``steps``
    override name and step count while the stage keeps its prediction type and spacing."""
    return stage_defaults(stage).make(sampler, steps)


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


def clamp_x0(x0: torch.Tensor) -> torch.Tensor:
    """The release's clamp of the predicted clean latent, applied once after the full
    guidance combination: ``clamp(x0, -1, 1)``."""
    return threshold_x0(x0)


def release_sigmas(stage: str, steps: Optional[int] = None, spacing: Optional[str] = None) -> torch.Tensor:
    """The sigmas of a stage's schedule for a sigma-space sampler: float32 ``[steps + 1]``,
    descending, ending in 0. ``steps`` defaults to the release's (50, 50, 10), ``spacing``
    to the stage's (leading, leading, trailing); ``sigma_i = sqrt((1 - a) / a)`` at the
    i-th timestep of ``make_timesteps(steps, spacing)`` with the floored schedule."""
    defaults = stage_defaults(stage)
    timesteps = make_timesteps(defaults.steps if steps is None else steps,
                               defaults.spacing if spacing is None else spacing)
    sigmas = schedule_sigmas()[timesteps]
    return torch.cat([sigmas, sigmas.new_zeros(1)])
