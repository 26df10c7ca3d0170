"""The two learned text projections of Kandinsky Video 1.1 (``t5_projections.pt``), which map
Flan-UL2 encoder states to the context width of the U-Nets. How they are used is in
:mod:`kv_core.text`; how they are loaded in :mod:`kv_core.checkpoints`."""
from __future__ import annotations

from torch import nn

from . import constructor_config
from .layers import LayerFactory

PROJECTION_BASE = "projection_base"
PROJECTION_INTERPOLATION = "projection_interpolation"
PROJECTION_LABELS = (PROJECTION_BASE, PROJECTION_INTERPOLATION)


class TextProjection(nn.Sequential):
    """``Linear(d_model, context_dim, bias=False)`` followed by ``LayerNorm(context_dim)``.

    State-dict keys ``0.weight`` ``[context_dim, d_model]``, ``1.weight`` and ``1.bias``
    ``[context_dim]``, as in each entry of ``t5_projections.pt``.
    """

    def __init__(self, d_model: int, context_dim: int, *, operations=None, device=None, dtype=None):
        config = constructor_config(locals())
        factory = LayerFactory(operations, device, dtype)
        super().__init__(factory.linear(d_model, context_dim, bias=False), factory.layer_norm(context_dim))
        self.config = config

    @property
    def d_model(self) -> int:
        return self[0].in_features

    @property
    def context_dim(self) -> int:
        return self[0].out_features
