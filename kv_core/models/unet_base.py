"""The Kandinsky 3.0 U-Net that both networks of Kandinsky Video 1.1 build on: its blocks,
the plan of its levels, and the scaffolding of levels and skip connections they share.

The keyframe U-Net (:mod:`.unet`) and the interpolation U-Net (:mod:`.unet_interpolation`)
have the same levels: per ResNet pair ``[ResNet, cross-attention | None, ResNet]`` (the
keyframe U-Net appends two temporal ResNet blocks), a self-attention block and a temporal
attention block at levels with self-attention, and skip connections from every down level
but the bottom one to the up level of the same width. What differs, and stays in their
modules, is the order in which a level runs its blocks (quirks U7, I7), their temporal
layers and their embeddings. Layers come from a :class:`~.layers.LayerFactory`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import name_sites
from .layers import Attention, ConditionalGroupNorm, FrameAxis, LayerFactory, conv_over_frames, feed_forward

__all__ = [
    "UNetAttentionBlock",
    "InterpolationTemporalConv",
    "UNetConvBlock",
    "UNetResNetBlock",
    "LevelSpec",
    "plan_levels",
    "down_level_channels",
    "up_level_channels",
    "ResNetPair",
    "level_pairs",
    "UNetBlocks",
    "UNetBase",
    "attention_of",
]

Resample = Optional[Literal["up", "down"]]


class UNetAttentionBlock(nn.Module):
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


class InterpolationTemporalConv(nn.Module):
    """Interpolation U-Net temporal mixing: a ``(3, 1, 1)`` Conv3d over the frame axis,
    merged as ``(1 - w) x + w conv(x)`` with ``w = temporal_merge * mask`` (quirk I3)."""

    def __init__(self, in_channels: int, out_channels: int, *, factory: LayerFactory):
        super().__init__()
        self.temporal_merge = factory.scalar()
        self.temporal_projection = factory.conv3d(in_channels, out_channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor, frames: FrameAxis) -> torch.Tensor:
        out = conv_over_frames(self.temporal_projection, x, frames.num_frames)
        return frames.merge(x, out, self.temporal_merge)


class UNetConvBlock(nn.Module):
    """ConditionalGroupNorm -> SiLU -> [2x2 transposed-conv up] -> conv -> [2x2/2 conv down]
    (quirk U10).

    The interpolation U-Net adds :class:`InterpolationTemporalConv` layers (quirk I6):
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
        self.temporal_post_upsample = (InterpolationTemporalConv(out_channels, out_channels, factory=factory)
                                       if new_up else None)
        self.temporal_projection_new = (InterpolationTemporalConv(out_channels, out_channels, factory=factory)
                                        if temporal else None)
        self.temporal_post_downsample = (InterpolationTemporalConv(out_channels, out_channels, factory=factory)
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


class UNetResNetBlock(nn.Module):
    """Four :class:`UNetConvBlock` s (kernels 1, 3, 3, 1; hidden width ``max(in, out) //
    compression_ratio``) plus a shortcut with the same resampling and a 1x1 projection when
    the width changes (quirk U10).

    ``resample="up"`` up-samples in the second block, ``"down"`` down-samples in the third.
    Interpolation U-Net options: ``temporal`` (an :class:`InterpolationTemporalConv` after
    every block conv) and ``new_temporal_params`` (temporal convs after the resampling of the blocks and of the
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
            UNetConvBlock(cin, cout, embed_dim, k, groups, r, temporal=temporal,
                          new_temporal_params=new_temporal_params, factory=factory)
            for (cin, cout), k, r in zip(widths, kernels, resamples)
        ])
        self.shortcut_up_sample = (factory.conv_transpose2d(in_channels, in_channels, 2, stride=2)
                                   if resample == "up" else None)
        self.shortcut_projection = (factory.conv2d(in_channels, out_channels, 1)
                                    if in_channels != out_channels else None)
        self.shortcut_down_sample = (factory.conv2d(out_channels, out_channels, 2, stride=2)
                                     if resample == "down" else None)
        self.temporal_post_upsample = (InterpolationTemporalConv(in_channels, out_channels, factory=factory)
                                       if new_temporal_params and resample == "up" else None)
        self.temporal_post_downsample = (InterpolationTemporalConv(out_channels, out_channels, factory=factory)
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


@dataclass(frozen=True)
class ResNetPair:
    """The two ResNet blocks of a level around its cross-attention:
    ``in_channels -> channels`` (resampled by ``resample_in``), cross-attention at
    ``channels``, ``channels -> out_channels`` (resampled by ``resample_out``)."""

    in_channels: int
    channels: int
    out_channels: int
    resample_in: Resample = None
    resample_out: Resample = None


def level_pairs(spec: LevelSpec, up: bool) -> list[ResNetPair]:
    """The ResNet pairs of a down level (the last pair down-samples after its
    cross-attention) or an up level (the first pair up-samples before it)."""
    if up:
        return [ResNetPair(cin, cin, cout, resample_in="up" if spec.resample and i == 0 else None)
                for i, (cin, cout) in enumerate(up_level_channels(spec))]
    pairs = down_level_channels(spec)
    return [ResNetPair(cin, cout, cout, resample_out="down" if spec.resample and i == len(pairs) - 1 else None)
            for i, (cin, cout) in enumerate(pairs)]


@dataclass(frozen=True)
class UNetBlocks:
    """Builds the blocks of a level with the network-wide options (config values of the
    U-Nets; the ``temporal`` options are the interpolation U-Net's, see
    :class:`UNetResNetBlock`)."""

    factory: LayerFactory
    time_embed_dim: int
    groups: int = 32
    head_dim: int = 64
    expansion_ratio: int = 4
    compression_ratio: int = 2
    temporal: bool = False
    new_temporal_params: bool = False
    fix_temporal_shortcut: bool = False

    def resnet(self, in_channels: int, out_channels: int, resample: Resample = None) -> UNetResNetBlock:
        return UNetResNetBlock(in_channels, out_channels, self.time_embed_dim, self.groups, self.compression_ratio,
                               resample, temporal=self.temporal, new_temporal_params=self.new_temporal_params,
                               fix_temporal_shortcut=self.fix_temporal_shortcut, factory=self.factory)

    def attention(self, channels: int, context_dim: Optional[int] = None) -> UNetAttentionBlock:
        return UNetAttentionBlock(channels, self.time_embed_dim, context_dim, self.groups, self.head_dim,
                                  self.expansion_ratio, factory=self.factory)

    def self_attention(self, spec: LevelSpec) -> Optional[UNetAttentionBlock]:
        """The level's self-attention block (at its ``in_channels``), None without one."""
        return self.attention(spec.in_channels) if spec.self_attention else None

    def resnet_attn_blocks(self, spec: LevelSpec, up: bool,
                           extra: Callable[[ResNetPair], Sequence[nn.Module]] = lambda pair: ()) -> nn.ModuleList:
        """``[ResNet, cross-attention | None, ResNet, *extra(pair)]`` for every pair of the
        level (:func:`level_pairs`); ``extra`` adds a network's own blocks."""
        return nn.ModuleList([
            nn.ModuleList([
                self.resnet(pair.in_channels, pair.channels, pair.resample_in),
                self.attention(pair.channels, spec.context_dim) if spec.context_dim is not None else None,
                self.resnet(pair.channels, pair.out_channels, pair.resample_out),
                *extra(pair),
            ])
            for pair in level_pairs(spec, up)
        ])


def attention_of(block: Optional[nn.Module], name: str = "attention") -> Optional[Attention]:
    """The :class:`~.layers.Attention` of an attention block (None without the block)."""
    return None if block is None else getattr(block, name)


class UNetBase(nn.Module):
    """What both U-Nets do the same around their levels: ``down_samples`` (one per level),
    ``up_samples`` (the same levels in reverse) and ``out_layer`` (GroupNorm -> SiLU -> 3x3
    conv), and running the levels with their skip connections."""

    def _build_levels(self, levels: Sequence[LevelSpec], down: Callable[[LevelSpec], nn.Module],
                      up: Callable[[LevelSpec], nn.Module], init_channels: int, out_channels: int,
                      groups: int, factory: LayerFactory) -> None:
        self.down_samples = nn.ModuleList([down(spec) for spec in levels])
        self.up_samples = nn.ModuleList([up(spec) for spec in reversed(levels)])
        self.out_layer = nn.Sequential(
            factory.group_norm(groups, init_channels),
            nn.SiLU(),
            factory.conv2d(init_channels, out_channels, 3, padding=1),
        )

    def _name_attention_sites(self) -> None:
        """Name every attention (:class:`~.attention.AttentionSite`) with ComfyUI's U-Net
        block names: the down levels but the bottom one are ``("input", level)``, the two
        bottom levels (down, then up) together ``("middle", 0)``, the other up levels
        ``("output", j)`` in the order they run (j = 0 right after the middle); the text
        pooling is ``("pooling", 0)``. Each level block lists its attentions in run order
        (``attention_order()``: ``(kind, module, temporal)``)."""
        last = len(self.down_samples) - 1
        entries = [("pooling", 0, [("attn2", self.feature_pooling.attention, False)])]
        middle = []
        for i, block in enumerate(self.down_samples):
            if i == last:
                middle += block.attention_order()
            else:
                entries.append(("input", i, block.attention_order()))
        for j, block in enumerate(self.up_samples):
            if j == 0:
                middle += block.attention_order()
            else:
                entries.append(("output", j - 1, block.attention_order()))
        entries.append(("middle", 0, middle))
        name_sites(self, entries)

    def _run_levels(self, h: torch.Tensor, *args, step_cache=None) -> torch.Tensor:
        """Down levels, then up levels, each up level but the first taking the output of the
        down level of its width concatenated along channels; ``args`` go to every level.

        ``step_cache`` (a :class:`~kv_core.sampling.step_cache.CacheCall`, or None): at its branch
        ``d`` the kept deeper features replace levels ``d + 1 ..`` on a cached step, and a
        full forward keeps them (the input of level ``d``'s up path from below, before the
        skip is concatenated). None: the plain forward."""
        levels = len(self.down_samples)
        branch = None
        if step_cache is not None:
            step_cache.check_depth(levels)
            branch = step_cache.branch
        skips, reuse = [], None
        for level, block in enumerate(self.down_samples):
            h = block(h, *args)
            if level < levels - 1:
                skips.append(h)
            if level == branch:
                reuse = step_cache.features(h)
                if reuse is not None:
                    break
        first = 0
        if reuse is not None:
            h, first = reuse, levels - 1 - branch
        for level in range(first, levels):
            if branch is not None and reuse is None and level == levels - 1 - branch:
                step_cache.keep(h)
            if level > 0:
                h = torch.cat([h, skips.pop()], dim=1)
            h = self.up_samples[level](h, *args)
        return h
