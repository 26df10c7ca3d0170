"""Step caching for the Kandinsky Video U-Nets (the DeepCache method): fewer full network
evaluations per sampling loop, at a small cost in fidelity. Off by default.

The method (Ma, Fang, Wang, "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024;
github.com/horseee/DeepCache): the deep features of a U-Net change slowly from one
denoising step to the next, so one *full* forward every ``interval`` steps is followed by
``interval - 1`` *cached* steps that compute only a shallow branch of the U-Net and reuse
the deep features kept from the last full forward.

Here, on the level structure of :class:`~kv_core.models.unet_base.UNetBase` (both U-Nets of the
release have 4 levels, each level's down path joined to its up path by one skip
connection): the *skip branch* ``branch = d`` (0 = the shallowest) is the skip connection
of level ``d``. A full forward keeps, per batch row, the input of level ``d``'s up path
that comes from below (the output of level ``d + 1``'s up path, before the skip is
concatenated). A cached forward runs the input layer, the down paths of levels
``0 .. d`` (which give the fresh skip features), takes the kept features in place of
everything deeper, and runs the up paths of levels ``d .. 0`` and the output layer. The
deeper a branch, the more is recomputed: slower and closer to the uncached run. Levels
``d + 1 ..`` (with the bottom level) are skipped, so ``d`` runs from 0 to levels - 2.

Schedule (:meth:`StepCacheSettings.plan`): steps before ``start_step`` and after
``end_step`` are full; inside, step ``i`` is full when ``(i - start_step) % interval == 0``
(DeepCache's uniform 1:N strategy, started at ``start_step``). ``interval`` 1 is the
uncached run: every step full, bit for bit the same result.

Rows: the guidance passes of a step run as one batch (keyframes: 3 copies of T frames;
interpolation: 2 copies of G groups; first frame: 2 images). The kept features are stored
per row under a row key, and a cached call gathers its rows by key, so a call whose rows
differ from those of the last full call (another order, a subset, or rows never computed
at the last full step) still gets each row's own features, and a row without kept
features (or features of another size, dtype or device) makes the call run full and keep
its features. The loops give row keys ``0 .. N-1``; the windowed interpolation
(:mod:`kv_core.stages.windows`) keys each window's rows apart (a window's rows see other
neighbours than the same groups in another window, so their features differ), so every
window is filled by its own full forward at the first step.

One :class:`StepCache` lives for one sampling loop (:func:`kv_core.sampling.loop.run_steps`
makes it): a new stage, interpolation pass or long-video segment starts empty, hence with
a full forward. Counted: full and cached steps and network calls (:meth:`StepCache.summary`).

Published figures (DeepCache's paper and README, other U-Nets, real weights): Stable
Diffusion 1.5 2.3x faster with a CLIP-score drop of 0.05; Stable Video Diffusion's
U-Net3D 1.7x (98.7 s -> 59.3 s). For Kandinsky Video with random weights the pack
measures time, FLOPs and the distance to the uncached latent (``python -m bench.bench_step_cache``);
how the videos look with the released weights is not measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional, Sequence

import torch

from ..checks import is_int as _is_int

__all__ = ["StepCacheSettings", "StepCache", "CacheCall", "DEFAULT_START_STEP", "MAX_INTERVAL",
           "check_step_cache", "cache_summary_text"]

#: steps before this one are always full forwards (the first steps shape the video)
DEFAULT_START_STEP = 2
#: largest interval accepted (a full forward at least every this many steps)
MAX_INTERVAL = 100


@dataclass(frozen=True)
class StepCacheSettings:
    """How a sampling loop caches (see the module docstring).

    ``interval``: a full forward every ``interval`` steps inside the active range
    (1 = no caching, the default). ``branch``: the skip branch recomputed on cached steps,
    0 (shallowest, fastest) to the network's levels - 2 (2 for the release's U-Nets).
    ``start_step``: the first step (0-based) that may be cached (earlier steps are full;
    default :data:`DEFAULT_START_STEP`). ``end_step``: the last step that may be cached
    (inclusive; -1 = up to the last step; later steps are full). ``report``: called after
    every step with the counts so far, ``report(full_steps, cached_steps)`` (a host's
    progress display; not part of the settings' equality).
    ``ValueError`` naming the setting for a value out of range.
    """

    interval: int = 1
    branch: int = 0
    start_step: int = DEFAULT_START_STEP
    end_step: int = -1
    report: Optional[Callable[[int, int], None]] = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if not _is_int(self.interval) or not 1 <= self.interval <= MAX_INTERVAL:
            raise ValueError(f"step cache interval must be an integer from 1 (no caching) to {MAX_INTERVAL}, "
                             f"got {self.interval!r}")
        if not _is_int(self.branch) or self.branch < 0:
            raise ValueError(f"step cache branch must be an integer >= 0 (0: the shallowest skip branch), "
                             f"got {self.branch!r}")
        if not _is_int(self.start_step) or self.start_step < 0:
            raise ValueError(f"step cache start_step must be an integer >= 0, got {self.start_step!r}")
        if not _is_int(self.end_step) or self.end_step < -1:
            raise ValueError(f"step cache end_step must be an integer >= 0, or -1 for the last step; "
                             f"got {self.end_step!r}")
        if self.end_step != -1 and self.end_step < self.start_step:
            raise ValueError(f"step cache end_step ({self.end_step}) is before start_step ({self.start_step}): "
                             "no step could be cached; set end_step to -1 (the last step) or later")

    @property
    def enabled(self) -> bool:
        """Whether any step can be cached (``interval`` > 1)."""
        return self.interval > 1

    def plan(self, num_steps: int) -> list[bool]:
        """Per step of a loop of ``num_steps``: True for a full forward, False for a cached one."""
        end = num_steps - 1 if self.end_step == -1 else min(self.end_step, num_steps - 1)
        return [not (self.start_step <= i <= end) or (i - self.start_step) % self.interval == 0
                for i in range(num_steps)]

    def counts(self, num_steps: int) -> tuple[int, int]:
        """``(full, cached)`` steps of a loop of ``num_steps`` as planned."""
        plan = self.plan(num_steps)
        return sum(plan), len(plan) - sum(plan)


def check_step_cache(value) -> Optional[StepCacheSettings]:
    """``None``, a :class:`StepCacheSettings` or a dict of its fields -> settings or None
    (None or interval 1: no cache). ``ValueError`` for anything else."""
    if value is None:
        return None
    if isinstance(value, dict):
        unknown = set(value) - {"interval", "branch", "start_step", "end_step", "report"}
        if unknown:
            raise ValueError(f"unknown step cache settings {sorted(unknown)}; known: interval, branch, "
                             "start_step, end_step")
        value = StepCacheSettings(**value)
    if not isinstance(value, StepCacheSettings):
        raise ValueError(f"step_cache must be a StepCacheSettings, a dict of its fields or None, "
                         f"got {type(value).__name__}")
    return value if value.enabled else None


class StepCache:
    """The cache of one sampling loop: which steps are full, the kept features per row key,
    and counts. The loop calls :meth:`begin` before each step and passes
    :meth:`call` (row keys of the batch) to the network as ``step_cache=``."""

    def __init__(self, settings: StepCacheSettings, num_steps: int):
        self.settings = settings
        self.plan = settings.plan(num_steps)
        self.step: Optional[int] = None
        self._features: dict[Hashable, tuple[torch.Tensor, int]] = {}
        self.full_calls = 0
        self.cached_calls = 0
        self.full_steps = 0
        self.cached_steps = 0
        self._step_full = False   # a call of the current step ran full

    @property
    def branch(self) -> int:
        return self.settings.branch

    def begin(self, step: int) -> None:
        """Start step ``step`` (0-based); the previous step is counted."""
        self._tally()
        self.step = step
        self._step_full = False

    def finish(self) -> None:
        """Count the last step (call once after the loop); also frees the kept features."""
        self._tally()
        self.step = None
        self._features.clear()

    def _tally(self) -> None:
        if self.step is None:
            return
        if self._step_full:
            self.full_steps += 1
        else:
            self.cached_steps += 1

    @property
    def reuse_step(self) -> bool:
        """Whether the current step may reuse kept features (planned cached)."""
        return self.step is not None and not self.plan[self.step]

    def call(self, rows: Optional[Sequence[Hashable]] = None, n: Optional[int] = None) -> "CacheCall":
        """The cache for one network call whose batch rows have keys ``rows`` (default
        ``0 .. n-1``)."""
        if rows is None:
            if n is None:
                raise ValueError("give the row keys or the batch size")
            rows = range(n)
        return CacheCall(self, tuple(rows))

    def counts(self) -> tuple[int, int]:
        """``(full, cached)`` steps so far, the current one included."""
        current = self.step is not None
        return (self.full_steps + (current and self._step_full),
                self.cached_steps + (current and not self._step_full))

    def summary(self) -> dict:
        """Counts so far: full/cached steps and network calls, and the settings."""
        s = self.settings
        return {"full_steps": self.full_steps, "cached_steps": self.cached_steps, "full_calls": self.full_calls,
                "cached_calls": self.cached_calls, "interval": s.interval, "branch": s.branch,
                "start_step": s.start_step, "end_step": s.end_step}

    # --- used by CacheCall -----------------------------------------------------------------

    def _lookup(self, keys: tuple, like: torch.Tensor) -> Optional[torch.Tensor]:
        if not self.reuse_step:
            return None
        kept = [self._features.get(k) for k in keys]
        if any(entry is None for entry in kept):
            return None
        first = kept[0][0]
        if all(t is first for t, _ in kept) and [i for _, i in kept] == list(range(first.shape[0])):
            features = first  # the rows of the last full call, in its order
        else:
            features = torch.stack([t[i] for t, i in kept])
        if (features.shape[0] != like.shape[0] or features.shape[2:] != like.shape[2:]
                or features.dtype != like.dtype or features.device != like.device):
            return None
        return features

    def _store(self, keys: tuple, features: torch.Tensor) -> None:
        for i, k in enumerate(keys):
            self._features[k] = (features, i)


class CacheCall:
    """What a U-Net forward gets as ``step_cache``: the loop's :class:`StepCache` and the
    row keys of this call's batch. ``UNetBase._run_levels`` asks :meth:`features` at the
    branch and :meth:`keep` on a full forward."""

    def __init__(self, cache: StepCache, rows: tuple):
        self.cache = cache
        self.rows = rows

    @property
    def branch(self) -> int:
        return self.cache.branch

    def check_depth(self, levels: int) -> None:
        """``ValueError`` when the branch does not exist in a U-Net of ``levels`` levels."""
        if self.branch > levels - 2:
            raise ValueError(f"step cache branch {self.branch} does not exist: this U-Net has {levels} levels, "
                             f"so the branch is 0 (shallowest, fastest) to {levels - 2} (deepest)")

    def features(self, skip: torch.Tensor) -> Optional[torch.Tensor]:
        """Kept features for the rows of this call, fitting the branch's skip features
        ``skip`` (batch, size, dtype, device), or None: run full. Counts the call."""
        if len(self.rows) != skip.shape[0]:
            raise ValueError(f"step cache: {len(self.rows)} row keys for a batch of {skip.shape[0]}")
        out = self.cache._lookup(self.rows, skip)
        if out is None:
            self.cache.full_calls += 1
            self.cache._step_full = True
        else:
            self.cache.cached_calls += 1
        return out

    def keep(self, features: torch.Tensor) -> None:
        """Keep a full forward's features at the branch, row by row."""
        self.cache._store(self.rows, features)

    def select(self, index: Sequence[int], tag: Hashable) -> "CacheCall":
        """The call for rows ``index`` of this batch, their keys tagged with ``tag`` (the
        windowed interpolation's window), so they are kept apart from other windows'."""
        return CacheCall(self.cache, tuple((tag, self.rows[int(i)]) for i in index))


def cache_summary_text(summary: dict) -> str:
    """One line for logs and node text: ``"step cache: 17 full + 33 cached steps ..."``."""
    return (f"step cache: {summary['full_steps']} full + {summary['cached_steps']} cached steps "
            f"(interval {summary['interval']}, branch {summary['branch']})")
