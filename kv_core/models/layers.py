"""Layers shared by the networks of Kandinsky Video 1.1: the layer factory every network
builds its weighted layers with, and the embeddings, norms and attention of the two
Kandinsky 3.0 U-Nets (:mod:`.unet`, :mod:`.unet_interpolation`; their blocks and levels are
in :mod:`.unet_base`). Conventions used throughout:

* feature maps are ``[N, C, H, W]``; for video ``N = b * t`` with the frame (or, in the
  interpolation U-Net, the group) axis ``t`` *inner*;
* per-row embeddings are ``[N, D]``;
* the compute dtype (:func:`compute_dtype`) is the weights' dtype, or the input's dtype when
  the layers cast their weights at run time (manual-cast operations, fp8 storage); inputs,
  embeddings, contexts and learned scalars are cast to it.

Every layer with weights, in every network of ``kv_core`` (U-Nets, MoVQ, text
projections), is created through :class:`LayerFactory`, i.e. from an ``operations``
namespace (``torch.nn`` by default, ``comfy.ops.*`` under ComfyUI, whose layers cast or
store fp8 or load lazily) on the requested device and dtype, so the networks also build on
the meta device. A network's public constructor takes ``operations``/``device``/``dtype``
and hands one factory down; its blocks take ``factory``. Attribute names follow the
official checkpoints exactly (they are the state-dict keys); an optional sub-module is
``None`` when absent.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..dtypes import layer_compute_dtype

__all__ = [
    "LayerFactory",
    "TextContext",
    "compute_dtype",
    "FrameAxis",
    "sinusoidal_embedding",
    "SinusoidalEmbedding",
    "TimestepEmbedding",
    "ConditionalGroupNorm",
    "Attention",
    "AttentionPooling",
    "feed_forward",
    "attention_over_frames",
    "conv_over_frames",
]

# --------------------------------------------------------------------------- factories


@dataclass(frozen=True)
class LayerFactory:
    """Creates the weighted layers of a network from an ``operations`` namespace.

    ``operations`` provides ``Linear, Conv2d, Conv3d, ConvTranspose2d, GroupNorm,
    LayerNorm, Embedding`` (``torch.nn`` when None), e.g. ``comfy.ops.manual_cast``; every
    layer is built on ``device``/``dtype`` (``"meta"`` for a network loaded later).
    """

    operations: Any = None
    device: Any = None
    dtype: Any = None

    @property
    def ops(self):
        return nn if self.operations is None else self.operations

    def _kw(self) -> dict:
        return {"device": self.device, "dtype": self.dtype}

    def linear(self, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
        return self.ops.Linear(in_features, out_features, bias=bias, **self._kw())

    def conv2d(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
               bias: bool = True) -> nn.Module:
        return self.ops.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                               bias=bias, **self._kw())

    def conv3d(self, in_channels: int, out_channels: int, kernel_size, padding=0) -> nn.Module:
        """A Conv3d of the namespace whose ``(k, 1, 1)`` kernels run as 2D convolutions on
        the CPU (see :func:`frame_conv3d_class`)."""
        return frame_conv3d_class(self.ops.Conv3d)(in_channels, out_channels, kernel_size, padding=padding,
                                                   **self._kw())

    def conv_transpose2d(self, in_channels: int, out_channels: int, kernel_size, stride=1) -> nn.Module:
        return self.ops.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=stride, **self._kw())

    def group_norm(self, groups: int, channels: int, eps: float = 1e-5) -> nn.Module:
        return self.ops.GroupNorm(groups, channels, eps=eps, affine=True, **self._kw())

    def layer_norm(self, channels: int) -> nn.Module:
        return self.ops.LayerNorm(channels, **self._kw())

    def embedding(self, num_embeddings: int, dim: int) -> nn.Module:
        return self.ops.Embedding(num_embeddings, dim, **self._kw())

    def scalar(self) -> nn.Parameter:
        """A learned merge scalar (shape ``[1]``), zero as in the official initialisation."""
        return nn.Parameter(torch.zeros(1, device=self.device, dtype=self.dtype))


def _frame_conv_as_2d(conv: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``conv`` (a Conv3d) applied to ``x`` with ``weight`` is a plain convolution over
    the frame axis only that :func:`frame_conv3d_class` may run as a 2D convolution."""
    return (x.device.type == "cpu" and x.dim() == 5 and weight.dim() == 5 and weight.shape[-2:] == (1, 1)
            and conv.groups == 1 and tuple(conv.stride) == (1, 1, 1) and tuple(conv.dilation) == (1, 1, 1)
            and isinstance(conv.padding, tuple) and tuple(conv.padding[1:]) == (0, 0)
            and conv.padding_mode == "zeros")


@functools.lru_cache(maxsize=None)
def frame_conv3d_class(base: type) -> type:
    """A subclass of the Conv3d class ``base`` (``torch.nn.Conv3d`` or a ``comfy.ops`` one)
    that runs kernels ``(k, 1, 1)`` (the temporal convolutions of the U-Nets and of the video
    MoVQ) on the CPU as a ``(k, 1)`` 2D convolution over ``[b, C, t, H*W]``.

    The same sums in the same order per output value, but PyTorch's CPU convolution takes its
    slow unfold-and-matmul path for such 3D kernels (``slow_conv3d_forward``) and the oneDNN
    path for the 2D one: 2-3x faster at the official sizes, same results to fp32 rounding.
    Only ``_conv_forward`` changes, after the layer cast its weight (``comfy.ops``), so
    casting, fp8 storage and offloading behave as in ``base``; any other kernel, stride,
    dilation, groups, padding mode or device goes to ``base``. State-dict keys are unchanged.
    """

    def _conv_forward(self, input, weight, bias, *args, **kwargs):
        if args or kwargs or not _frame_conv_as_2d(self, input, weight):
            return base._conv_forward(self, input, weight, bias, *args, **kwargs)
        b, c, t, h, w = input.shape
        out = F.conv2d(input.reshape(b, c, t, h * w), weight.reshape(*weight.shape[:3], 1), bias,
                       padding=(self.padding[0], 0))
        return out.view(b, out.shape[1], t, h, w)

    return type(base.__name__, (base,), {"_conv_forward": _conv_forward, "__module__": __name__,
                                         "__qualname__": f"frame_conv3d_class.<{base.__qualname__}>",
                                         "__doc__": base.__doc__})


@dataclass(frozen=True)
class TextContext:
    """The text context of a batch with each distinct row once, so that the projections of
    the context (keys, values, the pooled summary) are computed once per distinct prompt and
    not once per frame: the samplers repeat one context over all frames of a pass (36 rows,
    2 distinct, for the keyframes; 22 rows, 2 distinct, for the interpolation).

    ``tokens [U, L, D]``, ``mask [U, L]`` bool or None (all visible), ``rows [N]`` int64: the
    row of ``tokens`` that batch row ``i`` uses (None: ``U == N`` and row ``i`` is row ``i``).
    Build it with :meth:`of`; layers expand what they computed per distinct row with
    :meth:`expand`.
    """

    tokens: torch.Tensor
    mask: Optional[torch.Tensor] = None
    rows: Optional[torch.Tensor] = None

    @classmethod
    def of(cls, context: torch.Tensor, mask: Optional[torch.Tensor] = None) -> "TextContext":
        """Group the consecutive equal rows of ``context [N, L, D]`` (and of ``mask [N, L]``,
        bool) into one. Rows holding NaN never compare equal and stay separate."""
        n = context.shape[0]
        if n < 2 or not _has_values(context):
            return cls(context, mask)
        same = (context[1:] == context[:-1]).flatten(1).all(dim=1)
        if mask is not None:
            same &= (mask[1:] == mask[:-1]).all(dim=1)
        if not bool(same.any()):
            return cls(context, mask)
        starts = torch.cat([same.new_ones(1), ~same])
        keep = starts.nonzero().squeeze(1)
        return cls(context[keep], None if mask is None else mask[keep], starts.cumsum(0) - 1)

    def expand(self, t: torch.Tensor) -> torch.Tensor:
        """``t [U, ...]`` (one entry per distinct row) -> ``[N, ...]`` (one per batch row)."""
        return t if self.rows is None else t.index_select(0, self.rows.to(t.device))


def _has_values(t: torch.Tensor) -> bool:
    """Whether ``t``'s values can be compared here: not for meta or fake tensors (memory
    estimates run the networks on those) nor while torch.compile traces (a data-dependent
    branch would break its graph); the rows then simply stay ungrouped."""
    if t.device.type == "meta" or torch.compiler.is_compiling():
        return False
    try:
        from torch._subclasses.fake_tensor import is_fake
    except ImportError:  # pragma: no cover - older torch
        return True
    return not is_fake(t)


def compute_dtype(layer: nn.Module, x: torch.Tensor) -> torch.dtype:
    """The dtype a network runs in, judged from one of its weighted layers (the policy of
    :func:`kv_core.dtypes.layer_compute_dtype`): the weights' dtype, unless the layer casts
    its weights at run time or stores them in fp8; then the caller chose it, and it is ``x``'s.
    """
    return layer_compute_dtype(layer, x)


@dataclass(frozen=True)
class FrameAxis:
    """How the batch axis of a feature map splits into sequences for the temporal layers.

    ``num_frames`` is the length ``t`` of the inner axis of ``N = b * t``. ``mask`` (optional,
    ``[N, 1, 1, 1]`` in the compute dtype) scales every learned temporal merge weight per row
    (the interpolation U-Net's ``temporal_mask``; None means 1 everywhere).
    """

    num_frames: int
    mask: Optional[torch.Tensor] = None

    def merge(self, x: torch.Tensor, out: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """``(1 - w) * x + w * out`` with ``w = alpha * mask``."""
        weight = alpha.to(x)
        if self.mask is not None:
            weight = weight * self.mask
        return torch.lerp(x, out, weight)


def conv_over_frames(conv: nn.Module, x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Apply a Conv3d over ``[b, C, t, H, W]`` to ``x = [(b t), C, H, W]``."""
    n, c, h, w = x.shape
    video = x.view(n // num_frames, num_frames, c, h, w).transpose(1, 2)
    out = conv(video)
    return out.transpose(1, 2).reshape(n, out.shape[1], h, w)


# ---------------------------------------------------------------------------- embeddings


def sinusoidal_embedding(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``cat(sin(x f), cos(x f))`` in float32, ``f_j = exp(-j ln(10000) / (dim//2 - 1))``.

    ``x``: ``[N]`` (any real or integer dtype) -> ``[N, 2 * (dim // 2)]`` float32.
    Note the ``half - 1`` denominator (official Kandinsky 3.0 formula, quirk U4).
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=x.device, dtype=torch.float32) * (-math.log(10000) / (half - 1)))
    angles = x.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class SinusoidalEmbedding(nn.Module):
    """Parameter-free module form of :func:`sinusoidal_embedding` (float32 output)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class TimestepEmbedding(nn.Sequential):
    """Scalar per row -> sinusoidal features -> Linear -> SiLU -> Linear: ``[N] -> [N, D]``.

    A Sequential so that the official keys (``.1.weight``, ``.3.weight``) hold. The
    sinusoidal features are computed in float32 and cast to ``dtype`` (the compute dtype).
    """

    def __init__(self, freq_dim: int, embed_dim: int, *, factory: LayerFactory):
        super().__init__(
            SinusoidalEmbedding(freq_dim),
            factory.linear(freq_dim, embed_dim),
            nn.SiLU(),
            factory.linear(embed_dim, embed_dim),
        )

    def forward(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        h = self[0](x).to(dtype)
        return self[3](self[2](self[1](h)))


# ------------------------------------------------------------------------ normalisation


class ConditionalGroupNorm(nn.Module):
    """GroupNorm without affine (eps 1e-5) modulated by an embedding (quirk U6).

    ``x [N, C, ...]``, ``emb [N, D]``: ``norm(x) * (1 + scale) + shift`` with
    ``[scale, shift] = Linear(SiLU(emb))`` split along channels.
    """

    def __init__(self, groups: int, channels: int, embed_dim: int, *, factory: LayerFactory):
        super().__init__()
        self.groups = groups
        self.context_mlp = nn.Sequential(nn.SiLU(), factory.linear(embed_dim, 2 * channels))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        params = self.context_mlp(emb)
        params = params.view(*params.shape, *((1,) * (x.dim() - 2)))
        scale, shift = params.chunk(2, dim=1)
        return torch.addcmul(shift, F.group_norm(x, self.groups, eps=1e-5), scale + 1.0)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


# ---------------------------------------------------------------------------- attention


class Attention(nn.Module):
    """Multi-head attention with bias-free projections, through SDPA.

    ``x [B, N, in_channels]`` attends to ``context [B, M, context_dim]`` (``x`` itself when
    None), or to a :class:`TextContext` (then ``context_mask`` is ignored: the context's own
    mask applies), whose keys and values are projected once per distinct row. ``context_mask [B, M]`` (bool or 0/1; True = visible) reproduces the reference's
    ``masked_fill(~mask, -finfo.max)`` before the softmax (quirk U5): masked keys get zero
    weight, and a row with *no* visible key gets uniform weights over all M keys (the
    reference's constant row), implemented exactly by zeroing that row's keys, so no large
    finite fill value is ever needed and fp16/bf16 cannot overflow. Scale ``head_dim**-0.5``.
    Returns ``[B, N, out_channels]``.
    """

    def __init__(self, in_channels: int, out_channels: int, context_dim: int, head_dim: int = 64, *,
                 factory: LayerFactory):
        super().__init__()
        if out_channels % head_dim:
            raise ValueError(f"attention width {out_channels} is not a multiple of head_dim {head_dim}")
        self.num_heads = out_channels // head_dim
        self.to_query = factory.linear(in_channels, out_channels, bias=False)
        self.to_key = factory.linear(context_dim, out_channels, bias=False)
        self.to_value = factory.linear(context_dim, out_channels, bias=False)
        self.output_layer = factory.linear(out_channels, out_channels, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(-3, -2)  # [B, heads, N, d]

    def forward(self, x: torch.Tensor, context: Union[torch.Tensor, TextContext, None] = None,
                context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        text = context if isinstance(context, TextContext) else None
        if text is not None:
            context, context_mask = text.tokens, text.mask
        context = x if context is None else context
        query = self._split_heads(self.to_query(x))
        key = self._split_heads(self.to_key(context))
        value = self._split_heads(self.to_value(context))
        mask = None
        if context_mask is not None:
            visible = context_mask.to(torch.bool)
            blind = ~visible.any(dim=-1)  # rows with every key masked
            key = key.masked_fill(blind[:, None, None, None], 0.0)  # equal scores -> uniform weights
            mask = (visible | blind[:, None])[:, None, None, :]
        if text is not None and text.rows is not None:
            key, value = text.expand(key), text.expand(value)
            mask = None if mask is None else text.expand(mask)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return self.output_layer(out.transpose(-3, -2).flatten(-2))


class AttentionPooling(nn.Module):
    """Adds a text summary to the time embedding (quirk U2).

    The query is the mean of ``context [B, L, D]`` over *all* L positions (padding
    included); it attends to the context under ``context_mask``. ``emb [B, E]`` -> ``[B, E]``.
    ``context`` may be a :class:`TextContext` (``context_mask`` then ignored): the summary is
    computed once per distinct row.
    """

    def __init__(self, embed_dim: int, context_dim: int, head_dim: int = 64, *, factory: LayerFactory):
        super().__init__()
        self.attention = Attention(context_dim, embed_dim, context_dim, head_dim, factory=factory)

    def forward(self, emb: torch.Tensor, context: Union[torch.Tensor, TextContext],
                context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        text = context if isinstance(context, TextContext) else TextContext(context, context_mask)
        pooled = self.attention(text.tokens.mean(dim=1, keepdim=True), text.tokens, text.mask)
        return emb + text.expand(pooled.squeeze(1))


def feed_forward(channels: int, expansion_ratio: int, *, factory: LayerFactory) -> nn.Sequential:
    """1x1 conv -> SiLU -> 1x1 conv (no biases) on ``[N, C, H, W]``."""
    hidden = expansion_ratio * channels
    return nn.Sequential(
        factory.conv2d(channels, hidden, 1, bias=False),
        nn.SiLU(),
        factory.conv2d(hidden, channels, 1, bias=False),
    )


def attention_over_frames(attention: Attention, x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Unmasked self-attention along the frame axis at every spatial position.

    ``x [(b t), C, H, W]`` -> tokens ``[(b H W), t, C]`` -> ``attention`` -> ``[(b t), C', H, W]``.
    """
    n, c, h, w = x.shape
    b = n // num_frames
    tokens = x.view(b, num_frames, c, h * w).permute(0, 3, 1, 2).reshape(b * h * w, num_frames, c)
    out = attention(tokens)
    out = out.view(b, h * w, num_frames, -1).permute(0, 2, 3, 1)
    return out.reshape(n, -1, h, w)
