"""The one attention entry point of every network of Kandinsky Video 1.1.

Every attention of the two U-Nets (spatial self-attention, cross-attention to the text, the
temporal attentions, the text pooling) and of the two MoVQs (spatial and temporal
attention) computes ``softmax(q k^T / sqrt(d)) v`` through :func:`attention`, and every one
of them has a name, its :class:`AttentionSite`, so that a host can address it.

Two levels of replacement, both host-independent:

* **backend** (:func:`attention_backend`): the function that computes the attention from the
  projected queries, keys and values. Default :func:`sdpa` (``F.scaled_dot_product_attention``,
  the computation of the release code). A host hands its own (e.g. ComfyUI's
  ``optimized_attention``, which its launch flags choose).
* **runner** (:func:`attention_runner`): a callable that receives the whole
  :class:`AttentionCall` of one attention (its site, its inputs before projection, the
  projections, the mask, the backend) and returns the attention output before the output
  projection; a host implements its patch protocols with it (the pack's ComfyUI glue:
  ``nodes/host/attention.py``).

With neither set, every network computes exactly what it computed before this entry point
existed (bit for bit: the same operations in the same order; the golden tests check it).
Both are ``with`` blocks, for one network (its :class:`AttentionSettings`, which a deep
copy of the network does not share, so copies on several GPUs run in threads side by
side) or for every network (the process-wide :data:`GLOBAL`); ``torch.compile`` sees them
as attributes it guards on.

Layout of the backend: ``q [B, heads, N, d]``, ``k, v [B, heads, M, d]``, ``mask`` None or
bool ``[B, 1, 1, M]`` (True = visible) -> ``[B, N, heads * d]``, scale ``d ** -0.5``: the
layout of ComfyUI's attention functions with ``skip_reshape=True``.

Naming (:class:`AttentionSite`, ``(block, block_id, index)`` plus the kind ``attn1`` (self-
attention, spatial or temporal) or ``attn2`` (attention to the text)); see docs/attention.md
for the table of every network.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Backend",
    "AttentionSettings",
    "GLOBAL",
    "AttentionSite",
    "AttentionCall",
    "sdpa",
    "attention",
    "attention_backend",
    "attention_runner",
    "current_runner",
    "attention_sites",
    "name_sites",
]

#: ``backend(q, k, v, heads, mask) -> out`` (layout in the module docstring).
Backend = Callable[..., torch.Tensor]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
         mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The default backend: PyTorch's scaled dot-product attention.
    ``[B, heads, N, d]`` -> ``[B, N, heads*d]`` (the computation of the release code)."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(-3, -2).flatten(-2)


class AttentionSettings:
    """The backend and runner one network's attentions use (None: not set here). Each
    network has one, shared by all its attention modules (``network.attention_settings``);
    a deep copy of the network (a host's copy for another GPU) gets its own, so networks
    running at once in several threads never see each other's settings. The process-wide
    settings (:data:`GLOBAL`) apply where a network's own are not set."""

    def __init__(self):
        self.backend: Optional[Backend] = None
        self.runner: Optional[Callable[["AttentionCall"], torch.Tensor]] = None


#: the process-wide settings (default: SDPA, no runner)
GLOBAL = AttentionSettings()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
              mask: Optional[torch.Tensor] = None, settings: Optional[AttentionSettings] = None) -> torch.Tensor:
    """Attention through the backend of ``settings`` (a network's), else the process-wide
    one (:func:`attention_backend`), else :func:`sdpa`."""
    backend = (settings.backend if settings is not None else None) or GLOBAL.backend or sdpa
    return backend(q, k, v, heads, mask)


def _target(network: Optional[nn.Module]) -> AttentionSettings:
    if network is None:
        return GLOBAL
    settings = getattr(network, "attention_settings", None)
    if not isinstance(settings, AttentionSettings):
        raise TypeError(f"{type(network).__name__} has no attention settings (not a kv_core network)")
    return settings


@contextlib.contextmanager
def attention_backend(backend: Optional[Backend], network: Optional[nn.Module] = None) -> Iterator[None]:
    """Compute the attentions of ``network`` (None: of every network) with ``backend`` inside
    the block (None: the default)."""
    target = _target(network)
    previous = target.backend
    target.backend = backend
    try:
        yield
    finally:
        target.backend = previous


@contextlib.contextmanager
def attention_runner(runner: Optional[Callable[["AttentionCall"], torch.Tensor]],
                     network: Optional[nn.Module] = None) -> Iterator[None]:
    """Hand every attention of ``network`` (None: of every network) inside the block to
    ``runner(call) -> out`` (see :class:`AttentionCall`); None: no runner."""
    target = _target(network)
    previous = target.runner
    target.runner = runner
    try:
        yield
    finally:
        target.runner = previous


def current_runner(settings: Optional[AttentionSettings] = None) -> Optional[Callable[["AttentionCall"], torch.Tensor]]:
    """The runner for a module with ``settings``: its network's, else the process-wide one."""
    return (settings.runner if settings is not None else None) or GLOBAL.runner


@dataclass(frozen=True)
class AttentionSite:
    """The name of one attention of a network.

    ``block``/``block_id``: the block it belongs to, ComfyUI's U-Net names where they fit
    (``"input"``, ``"middle"``, ``"output"``; the text pooling is ``"pooling"``; the MoVQs
    ``"encoder"``, ``"encoder_middle"``, ``"decoder_middle"``, ``"decoder"``). ``index``:
    its place among the attentions of the same ``kind`` in that block, in the order they
    run. ``kind``: ``"attn1"`` self-attention (spatial or temporal), ``"attn2"`` attention to
    the text. ``temporal``: attention over frames (or groups) rather than positions.
    """

    block: str
    block_id: int
    index: int
    kind: str
    temporal: bool = False

    @property
    def key(self) -> tuple[str, int, int]:
        """``(block, block_id, index)``: the key of ComfyUI's ``patches_replace`` entries."""
        return (self.block, self.block_id, self.index)

    def __str__(self) -> str:
        return f"{self.kind} {self.block} {self.block_id} #{self.index}{' (temporal)' if self.temporal else ''}"


class AttentionCall:
    """One attention, as a runner sees it.

    ``inputs()`` -> ``(x [B, N, C], context [B, M, Cc], value [B, M, Cc])``: the tokens
    before the projections, one row per batch row (``context`` and ``value`` are ``x`` for
    a self-attention). ``project(x, context, value)`` -> ``(q, k, v)`` in the backend
    layout, and ``mask`` (None or bool ``[B, 1, 1, M]``) fits them. ``projected()`` is
    ``project(*inputs())`` computed as the network does without a runner (the text's keys
    and values once per distinct prompt). ``heads``, ``head_dim``; ``backend`` the current
    backend function. The runner returns ``[B, N, heads * head_dim]``.
    """

    def __init__(self, site: AttentionSite, heads: int, head_dim: int,
                 inputs: Callable[[], tuple], project: Callable[..., tuple],
                 projected: Callable[[], tuple], mask: Optional[torch.Tensor],
                 mask_for: Optional[Callable[[torch.Tensor], Optional[torch.Tensor]]] = None,
                 settings: Optional[AttentionSettings] = None):
        self.backend = (settings.backend if settings is not None else None) or GLOBAL.backend or sdpa
        self.site = site
        self.heads = heads
        self.head_dim = head_dim
        self._inputs = inputs
        self._project = project
        self._projected = projected
        self.mask = mask
        self._mask_for = mask_for

    backend: Backend = staticmethod(sdpa)  # set per call to the backend in force

    def inputs(self) -> tuple:
        return self._inputs()

    def project(self, x: torch.Tensor, context: torch.Tensor, value: torch.Tensor) -> tuple:
        return self._project(x, context, value)

    def projected(self) -> tuple:
        return self._projected()

    def mask_for(self, k: torch.Tensor) -> Optional[torch.Tensor]:
        """The mask for keys ``k`` made by :meth:`project` from changed inputs (None when the
        keys are not the text's, e.g. a patch that swapped the context)."""
        if self.mask is None or self._mask_for is None:
            return self.mask
        return self._mask_for(k)


def name_sites(network: nn.Module, entries) -> None:
    """Give each module of ``entries`` — ``(block, block_id, [(kind, module, temporal), ...])``
    in run order — its :class:`AttentionSite` (attribute ``site``; the index counts per
    block and kind) and the network's :class:`AttentionSettings` (``network.attention_settings``,
    created here, shared by all of them)."""
    settings = AttentionSettings()
    network.attention_settings = settings
    for block, block_id, modules in entries:
        counts: dict[str, int] = {}
        for kind, module, temporal in modules:
            if module is None:
                continue
            index = counts.get(kind, 0)
            counts[kind] = index + 1
            module.site = AttentionSite(block, block_id, index, kind, temporal)
            module.attention_settings = settings


def attention_sites(network: nn.Module) -> list[AttentionSite]:
    """The sites of every attention of ``network``, in module order."""
    return [m.site for m in network.modules() if isinstance(getattr(m, "site", None), AttentionSite)]
