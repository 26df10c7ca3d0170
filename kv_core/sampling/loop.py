"""The loop machinery every sampling stage shares: the step loop, the host hooks and
where a stage runs.

A stage's loop (``kv_core.stages.first_frame.sample_first_frame`` and its two siblings)
builds its network inputs once and hands :func:`run_steps` a ``predict(x, t)`` that
returns the guided model output at timestep t; :func:`run_steps` draws the per-step noise
from the stage's noise source (``kv_core.sampling.noise``) and steps the sampler
(``kv_core.sampling.schedulers``). Latents stay float32 on the stage's device.

Host hooks travel as one ``kv_core.stages.Hooks`` object through every stage function and loop.

Step caching (``step_cache``, off by default): a ``kv_core.sampling.step_cache.StepCacheSettings``
makes :func:`run_steps` run the U-Net in full only every ``interval`` steps and reuse its
deep features in between (DeepCache; see :mod:`kv_core.sampling.step_cache`). Each loop
starts with an empty cache; ``trace["step_cache"]`` receives the counts of full and cached steps.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..checks import is_int
from ..dtypes import InputDtype
from .noise import NoiseSource, as_noise_source, check_seed
from .schedulers import Sampler
from .step_cache import StepCache, StepCacheSettings, check_step_cache

ProgressFn = Callable[[int, int, torch.Tensor], None]
CancelFn = Callable[[], Optional[bool]]


class Interrupted(RuntimeError):
    """Sampling was stopped between two steps because the cancel check asked for it."""


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a module without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def check_cancel(cancel: CancelFn | None) -> None:
    """Raise ``Interrupted`` when ``cancel()`` returns True."""
    if cancel is not None and cancel():
        raise Interrupted("generation was cancelled")


def stage_noise(noise, stage: str) -> NoiseSource:
    """The noise source of a stage: a seed (checked) draws the stage's stream
    (``noise.stage_seed``), a source is used as it is."""
    if is_int(noise):
        check_seed(int(noise))
    return as_noise_source(noise, stage)


def in_dtype(network, dtype: Optional[torch.dtype]):
    """``network`` called with its first input cast to ``dtype`` (None: as it comes). The
    sampling loops keep latents in float32; a host whose layers cast their weights at run
    time (e.g. fp8 storage) gives the dtype the network computes in."""
    return network if dtype is None else InputDtype(network, dtype)


def run_device(network, device) -> torch.device:
    """Where a stage runs: ``device`` when given (a host that loads a network in parts
    gives its load device), else the device of the network's parameters."""
    return torch.device(device) if device is not None else model_device(network)


def run_steps(sampler: Sampler, x: torch.Tensor, predict: Callable[..., torch.Tensor],
              noise: NoiseSource, hooks, step_cache: StepCacheSettings | None = None):
    """The step loop: ``predict(x, t)`` gives the guided model output at timestep t; the
    sampler's per-step noise is drawn from ``noise`` (after the prediction, as the
    reference); ``hooks``' progress, cancel and trace (``kv_core.stages.Hooks``) are called.
    With ``step_cache`` the loop's :class:`StepCache` goes to ``predict(x, t, cache)``,
    whose network gets ``cache_kwargs(cache, rows)``."""
    progress, cancel, trace = hooks.progress, hooks.cancel, hooks.trace
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
        guided = (predict(x, t) if cache is None else predict(x, t, cache)).float()
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


def cache_kwargs(cache: StepCache | None, rows: int) -> dict:
    """The network's ``step_cache`` keyword for a batch of ``rows`` (none without a cache,
    so a network that does not know the keyword runs as before)."""
    return {} if cache is None else {"step_cache": cache.call(n=rows)}
