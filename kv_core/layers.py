"""Building blocks shared by the keyframe U-Net (:mod:`.unet`) and the interpolation U-Net
(:mod:`.unet_interpolation`) of Kandinsky Video 1.1.

Both networks are Kandinsky 3.0 U-Nets. Conventions used throughout:

* feature maps are ``[N, C, H, W]``; for video ``N = b * t`` with the frame (or, in the
  interpolation U-Net, the group) axis ``t`` *inner*;
* per-row embeddings are ``[N, D]``;
* the compute dtype (:func:`compute_dtype`) is the weights' dtype, or the input's dtype when
  the layers cast their weights at run time (manual-cast operations, fp8 storage); inputs,
  embeddings, contexts and learned scalars are cast to it.

Every layer with weights is created through :class:`LayerFactory`, i.e. from an
``operations`` namespace (``torch.nn`` by default, ``comfy.ops.*`` under ComfyUI) on the
requested device and dtype, so the networks also build on the meta device. Attribute names
follow the official checkpoints exactly (they are the state-dict keys).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .dtypes import layer_compute_dtype

__all__ = [
    "LayerFactory",
    "compute_dtype",
    "FrameAxis",
    "sinusoidal_embedding",
    "SinusoidalEmbedding",
    "TimestepEmbedding",
    "ConditionalGroupNorm",
    "Attention",
    "AttentionPooling",
    "AttentionBlock",
    "feed_forward",
    "attention_over_frames",
    "conv_over_frames",
    "TemporalConv3D",
    "Block",
    "ResNetBlock",
    "LevelSpec",
    "plan_levels",
    "down_level_channels",
    "up_level_channels",
]

Resample = Optional[Literal["up", "down"]]


# --------------------------------------------------------------------------- factories


@dataclass(frozen=True)
class LayerFactory:
    """Creates the weighted layers of a network from an ``operations`` namespace.

    ``operations`` provides ``Linear, Conv2d, Conv3d, ConvTranspose2d, GroupNorm,
    Embedding`` (``torch.nn`` when None); every layer is built on ``device``/``dtype``.
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
        return self.ops.Conv3d(in_channels, out_channels, kernel_size, padding=padding, **self._kw())

    def conv_transpose2d(self, in_channels: int, out_channels: int, kernel_size, stride=1) -> nn.Module:
        return self.ops.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=stride, **self._kw())

    def group_norm(self, groups: int, channels: int) -> nn.Module:
        return self.ops.GroupNorm(groups, channels, affine=True, **self._kw())

    def embedding(self, num_embeddings: int, dim: int) -> nn.Module:
        return self.ops.Embedding(num_embeddings, dim, **self._kw())

    def scalar(self) -> nn.Parameter:
        """A learned merge scalar (shape ``[1]``), zero as in the official initialisation."""
        return nn.Parameter(torch.zeros(1, device=self.device, dtype=self.dtype))


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
    None). ``context_mask [B, M]`` (bool or 0/1; True = visible) reproduces the reference's
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

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
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
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return self.output_layer(out.transpose(-3, -2).flatten(-2))


class AttentionPooling(nn.Module):
    """Adds a text summary to the time embedding (quirk U2).

    The query is the mean of ``context [B, L, D]`` over *all* L positions (padding
    included); it attends to the context under ``context_mask``. ``emb [B, E]`` -> ``[B, E]``.
    """

    def __init__(self, embed_dim: int, context_dim: int, head_dim: int = 64, *, factory: LayerFactory):
        super().__init__()
        self.attention = Attention(context_dim, embed_dim, context_dim, head_dim, factory=factory)

    def forward(self, emb: torch.Tensor, context: torch.Tensor,
                context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        pooled = self.attention(context.mean(dim=1, keepdim=True), context, context_mask)
        return emb + pooled.squeeze(1)


def feed_forward(channels: int, expansion_ratio: int, *, factory: LayerFactory) -> nn.Sequential:
    """1x1 conv -> SiLU -> 1x1 conv (no biases) on ``[N, C, H, W]``."""
    hidden = expansion_ratio * channels
    return nn.Sequential(
        factory.conv2d(channels, hidden, 1, bias=False),
        nn.SiLU(),
        factory.conv2d(hidden, channels, 1, bias=False),
    )


class AttentionBlock(nn.Module):
    """Spatial self-attention (``context_dim`` None) or cross-attention to the text, then a
    feed-forward; both pre-normed by ConditionalGroupNorm and residual. ``[N, C, H, W]``."""

    def __init__(self, channels: int, embed_dim: int, context_dim: Optional[int] = None, groups: int = 32,
                 head_dim: int = 64, expansion_ratio: int = 4, *, factory: LayerFactory):
        super().__init__()
        self.in_norm = ConditionalGroupNorm(groups, channels, embed_dim, factory=factory)
        self.attention = Attention(channels, channels, context_dim or channels, head_dim, factory=factory)
        self.out_norm = ConditionalGroupNorm(groups, channels, embed_dim, factory=factory)
        self.feed_forward = feed_forward(channels, expansion_ratio, factory=factory)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.in_norm(x, emb).flatten(2).transpose(1, 2).contiguous()  # [N, HW, C]
        out = self.attention(tokens, context, context_mask)
        x = x + out.transpose(1, 2).unflatten(2, (h, w))
        return x + self.feed_forward(self.out_norm(x, emb))


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


# ----------------------------------------------------------------------- ResNet blocks


class TemporalConv3D(nn.Module):
    """Interpolation U-Net temporal mixing: a ``(3, 1, 1)`` Conv3d over the frame axis,
    merged as ``(1 - w) x + w conv(x)`` with ``w = temporal_merge * mask`` (quirk I3)."""

    def __init__(self, in_channels: int, out_channels: int, *, factory: LayerFactory):
        super().__init__()
        self.temporal_merge = factory.scalar()
        self.temporal_projection = factory.conv3d(in_channels, out_channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor, frames: FrameAxis) -> torch.Tensor:
        out = conv_over_frames(self.temporal_projection, x, frames.num_frames)
        return frames.merge(x, out, self.temporal_merge)


class Block(nn.Module):
    """ConditionalGroupNorm -> SiLU -> [2x2 transposed-conv up] -> conv -> [2x2/2 conv down]
    (quirk U10).

    The interpolation U-Net adds :class:`TemporalConv3D` layers (quirk I6):
    ``temporal_projection_new`` after the conv (``temporal``), and with
    ``new_temporal_params`` ``temporal_post_upsample`` / ``temporal_post_downsample`` after
    the resampling. Those need a :class:`FrameAxis` in ``forward``.
    """

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, kernel_size: int = 3,
                 groups: int = 32, resample: Resample = None, *, temporal: bool = False,
                 new_temporal_params: bool = False, factory: LayerFactory):
        super().__init__()
        self.group_norm = ConditionalGroupNorm(groups, in_channels, embed_dim, factory=factory)
        self.up_sample = (factory.conv_transpose2d(in_channels, in_channels, 2, stride=2)
                          if resample == "up" else None)
        self.projection = factory.conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.down_sample = (factory.conv2d(out_channels, out_channels, 2, stride=2)
                            if resample == "down" else None)
        new_up = new_temporal_params and resample == "up"
        new_down = new_temporal_params and resample == "down"
        self.temporal_post_upsample = (TemporalConv3D(out_channels, out_channels, factory=factory)
                                       if new_up else None)
        self.temporal_projection_new = (TemporalConv3D(out_channels, out_channels, factory=factory)
                                        if temporal else None)
        self.temporal_post_downsample = (TemporalConv3D(out_channels, out_channels, factory=factory)
                                         if new_down else None)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: Optional[FrameAxis] = None) -> torch.Tensor:
        x = F.silu(self.group_norm(x, emb))
        if self.up_sample is not None:
            x = self.up_sample(x)
        if self.temporal_post_upsample is not None:
            x = self.temporal_post_upsample(x, frames)
        x = self.projection(x)
        if self.temporal_projection_new is not None:
            x = self.temporal_projection_new(x, frames)
        if self.down_sample is not None:
            x = self.down_sample(x)
        if self.temporal_post_downsample is not None:
            x = self.temporal_post_downsample(x, frames)
        return x


class ResNetBlock(nn.Module):
    """Four :class:`Block` s (kernels 1, 3, 3, 1; hidden width ``max(in, out) //
    compression_ratio``) plus a shortcut with the same resampling and a 1x1 projection when
    the width changes (quirk U10).

    ``resample="up"`` up-samples in the second block, ``"down"`` down-samples in the third.
    Interpolation U-Net options: ``temporal`` (a TemporalConv3D after every block conv) and
    ``new_temporal_params`` (temporal convs after the resampling of the blocks and of the
    shortcut). The official shortcut applies ``temporal_post_upsample`` twice (after the
    up-sampling and again after the down-sampling position) and never its
    ``temporal_post_downsample`` (quirk I5); ``fix_temporal_shortcut=True`` applies each once
    where it belongs instead.
    """

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, groups: int = 32,
                 compression_ratio: int = 2, resample: Resample = None, *, temporal: bool = False,
                 new_temporal_params: bool = False, fix_temporal_shortcut: bool = False,
                 factory: LayerFactory):
        super().__init__()
        hidden = max(in_channels, out_channels) // compression_ratio
        widths = [(in_channels, hidden), (hidden, hidden), (hidden, hidden), (hidden, out_channels)]
        kernels = [1, 3, 3, 1]
        resamples = [None, "up" if resample == "up" else None, "down" if resample == "down" else None, None]
        self.resnet_blocks = nn.ModuleList([
            Block(cin, cout, embed_dim, k, groups, r, temporal=temporal,
                  new_temporal_params=new_temporal_params, factory=factory)
            for (cin, cout), k, r in zip(widths, kernels, resamples)
        ])
        self.shortcut_up_sample = (factory.conv_transpose2d(in_channels, in_channels, 2, stride=2)
                                   if resample == "up" else None)
        self.shortcut_projection = (factory.conv2d(in_channels, out_channels, 1)
                                    if in_channels != out_channels else None)
        self.shortcut_down_sample = (factory.conv2d(out_channels, out_channels, 2, stride=2)
                                     if resample == "down" else None)
        self.temporal_post_upsample = (TemporalConv3D(in_channels, out_channels, factory=factory)
                                       if new_temporal_params and resample == "up" else None)
        self.temporal_post_downsample = (TemporalConv3D(out_channels, out_channels, factory=factory)
                                         if new_temporal_params and resample == "down" else None)
        self.fix_temporal_shortcut = fix_temporal_shortcut

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: Optional[FrameAxis] = None) -> torch.Tensor:
        out = x
        for block in self.resnet_blocks:
            out = block(out, emb, frames)

        if self.shortcut_up_sample is not None:
            x = self.shortcut_up_sample(x)
        if self.temporal_post_upsample is not None:
            x = self.temporal_post_upsample(x, frames)
        if self.shortcut_projection is not None:
            x = self.shortcut_projection(x)
        if self.shortcut_down_sample is not None:
            x = self.shortcut_down_sample(x)
        second = self.temporal_post_downsample if self.fix_temporal_shortcut else self.temporal_post_upsample
        if second is not None:
            x = second(x, frames)
        return x + out


# ------------------------------------------------------------------------ U-Net levels


@dataclass(frozen=True)
class LevelSpec:
    """One resolution level of a Kandinsky 3.0 U-Net.

    ``in_channels``/``out_channels`` are those of the down path (the up path runs from
    ``out`` back to ``in``); ``skip_channels`` are concatenated at the start of the level's
    up path (0 at the bottom level); ``resample`` is False at the bottom level.
    """

    in_channels: int
    out_channels: int
    num_blocks: int
    context_dim: Optional[int]
    self_attention: bool
    skip_channels: int
    resample: bool


def plan_levels(model_channels: int, init_channels: int, dim_mult, num_blocks, add_cross_attention,
                add_self_attention, context_dim: Optional[int]) -> list[LevelSpec]:
    """Per-level widths and options, from the official config values."""
    widths = [init_channels] + [model_channels * m for m in dim_mult]
    count = len(dim_mult)
    if not (len(num_blocks) == len(add_cross_attention) == len(add_self_attention) == count):
        raise ValueError("dim_mult, num_blocks, add_cross_attention and add_self_attention "
                         "must have one entry per level")
    levels = []
    for i in range(count):
        last = i == count - 1
        levels.append(LevelSpec(
            in_channels=widths[i], out_channels=widths[i + 1], num_blocks=int(num_blocks[i]),
            context_dim=context_dim if add_cross_attention[i] else None,
            self_attention=bool(add_self_attention[i]),
            skip_channels=0 if last else widths[i + 1], resample=not last,
        ))
    return levels


def down_level_channels(level: LevelSpec) -> list[tuple[int, int]]:
    """(in, out) of each ResNet pair of a down level."""
    return [(level.in_channels, level.out_channels)] + [(level.out_channels,) * 2] * (level.num_blocks - 1)


def up_level_channels(level: LevelSpec) -> list[tuple[int, int]]:
    """(in, out) of each ResNet pair of an up level, from ``out_channels + skip`` back to
    ``in_channels``. As in the official code the list is cut to ``num_blocks`` entries, so a
    one-block level keeps its input width (quirk U8)."""
    cin, cout, n = level.out_channels, level.in_channels, level.num_blocks
    pairs = [(cin + level.skip_channels, cin)] + [(cin, cin)] * (n - 2) + [(cin, cout)]
    return pairs[:n]
