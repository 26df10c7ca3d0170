"""Windowed interpolation: the interpolation U-Net run over windows of groups, so that a long
video does not have to pass through it in one batch.

The interpolation U-Net's temporal layers (3D convolutions and temporal attention) run
across the *groups* of a pass (group i = the three frames between given frames i and i + 1),
so one U-Net call over all N - 1 groups holds activations for 2(N - 1) rows: fine for the
release's 11 and 44 groups, too much for a clip of hundreds of frames.

:class:`WindowedInterpolationUNet` wraps the network: every call of the sampling loop (one
per step) runs the network on windows of ``window`` consecutive groups that overlap by
``overlap`` groups, and keeps each group's prediction from the window in which it lies
farthest from an inner window edge (where it has the most temporal context); the
predictions of the other windows for that group are dropped, not blended (a blend would
mix two predictions that each saw a cut-off context, and averaging velocity predictions
is not a prediction of either). The sampler then steps the whole latent at once, so:

- the noise is the one-batch run's, drawn for all groups at once from the stage's one
  stream: each group gets the same noise whatever the window layout (and the result is
  deterministic by seed);
- the windows see one another's groups every step (the overlap carries the state the
  neighbouring window kept), so the pieces stay consistent at their seams;
- ``window >= groups`` is exactly the one-batch run.

Step caching (:mod:`kv_core.sampling.step_cache`): a ``step_cache`` the loop passes is split with
the rows, each window's rows keyed apart (``(window, row)``), so every window keeps its own
features, filled by its own full forward at the first step.

Memory: the network's activations are those of ``2 * window`` rows instead of
``2 * (N - 1)``; the latents (input, state, output) stay whole, a few MB even for long clips.
Time: each step computes ``sum(window sizes)`` groups instead of ``groups``, i.e. about
``window / (window - overlap)`` times the one-batch work for long clips.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..sampling.step_cache import CacheCall

DEFAULT_WINDOW = 16   # groups per call in kv_core's windowed runs (the node's own default is 0: one batch)


def default_overlap(window: int) -> int:
    """Groups shared by consecutive windows when none is given: a quarter of the window
    (4 for 16). Each kept group then has at least ``overlap // 2`` groups of context beyond
    it on each inner side."""
    return window // 4


@dataclass(frozen=True)
class Window:
    """Groups ``start .. end - 1`` go through one call; ``keep_start .. keep_end - 1`` of them
    are kept (the rest belong to a neighbouring window)."""

    start: int
    end: int
    keep_start: int
    keep_end: int


def window_layout(groups: int, window: int, overlap: Optional[int] = None) -> list[Window]:
    """The windows a pass of ``groups`` groups is split into.

    Windows have ``window`` groups and start every ``window - overlap`` groups; the last
    one is moved back to end at the last group, so every window is full. A group is kept
    from the window where it is farthest from an inner edge (an edge that is not the
    video's own start or end); ties go to the earlier window. ``window >= groups``: one
    window. ``ValueError`` for ``window < 1`` or an overlap outside ``0 .. window - 1``.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive number of groups, got {window!r}")
    if overlap is None:
        overlap = default_overlap(window)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < window:
        raise ValueError(f"overlap must be an integer from 0 to window - 1 ({window - 1}), got {overlap!r}")
    if groups < 1:
        raise ValueError(f"groups must be positive, got {groups}")
    if window >= groups:
        return [Window(0, groups, 0, groups)]
    starts, stride = [], window - overlap
    s = 0
    while s + window < groups:
        starts.append(s)
        s += stride
    starts.append(groups - window)
    spans = [(s, s + window) for s in starts]

    def margin(g, span):
        s, e = span
        left = g - s if s > 0 else groups
        right = e - 1 - g if e < groups else groups
        return min(left, right)

    owner = [max((i for i, span in enumerate(spans) if span[0] <= g < span[1]),
                 key=lambda i: (margin(g, spans[i]), -i)) for g in range(groups)]
    out = []
    for i, (s, e) in enumerate(spans):
        kept = [g for g in range(s, e) if owner[g] == i]
        if kept:
            out.append(Window(s, e, kept[0], kept[-1] + 1))
    return out


class WindowedInterpolationUNet:
    """Calls an interpolation U-Net (or any callable with its signature) window by window
    over the groups of each call and stitches the kept rows back together.

    Rows of a call are ``[b * G]`` with the groups inner (``b`` copies: conditional,
    unconditional); every per-row argument (``context``, ``context_mask``, ``time``,
    ``perturbation_time``, ``skip_frames``, ``temporal_mask``) is sliced with the rows, so a
    context with one row per group (per-group prompts) follows its groups; a
    ``step_cache`` (:class:`~kv_core.sampling.step_cache.CacheCall`) gets the window's rows, keyed
    by window.
    ``cancel()`` is checked between windows (it may raise)."""

    def __init__(self, network, window: int, overlap: Optional[int] = None,
                 cancel: Optional[Callable[[], Optional[bool]]] = None):
        self.network = network
        self.window = window
        self.overlap = default_overlap(window) if overlap is None else overlap
        window_layout(max(window + 1, 2), window, self.overlap)  # checks window and overlap now
        self.cancel = cancel
        self.calls: list[int] = []  # groups per network call (for tests and benchmarks)

    def __call__(self, x: torch.Tensor, time, context, context_mask, *, num_groups: int, **rows):
        n = x.shape[0]
        if num_groups < 1 or n % num_groups:
            raise ValueError(f"num_groups ({num_groups}) must divide the batch ({n})")
        layout = window_layout(num_groups, self.window, self.overlap)
        if len(layout) == 1:
            self.calls.append(num_groups)
            return self.network(x, time, context, context_mask, num_groups=num_groups, **rows)
        copies = n // num_groups
        out = None
        for k, win in enumerate(layout):
            if k and self.cancel is not None and self.cancel():
                from ..sampling.loop import Interrupted
                raise Interrupted("generation was cancelled")
            index = torch.cat([torch.arange(b * num_groups + win.start, b * num_groups + win.end)
                               for b in range(copies)]).to(x.device)

            def take(t):
                if isinstance(t, CacheCall):
                    return t.select(index.tolist(), k)
                return t if t is None or not isinstance(t, torch.Tensor) or t.ndim == 0 or t.shape[0] != n \
                    else t.index_select(0, index.to(t.device))

            size = win.end - win.start
            pred = self.network(take(x), take(time), take(context), take(context_mask), num_groups=size,
                                **{key: take(value) for key, value in rows.items()})
            self.calls.append(size)
            if out is None:
                out = pred.new_empty((n, *pred.shape[1:]))
            a, b_ = win.keep_start - win.start, win.keep_end - win.start
            for b in range(copies):
                out[b * num_groups + win.keep_start:b * num_groups + win.keep_end] = \
                    pred[b * size + a:b * size + b_]
            del pred
        return out
