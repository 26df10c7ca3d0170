"""The interpolation U-Net of Kandinsky Video 1.1 (``interpolation.pt``).

It predicts the three frames between two keyframes, for ``G`` consecutive keyframe pairs
("groups") at once. Input ``x [b * G, 20, h, w]``: left keyframe latent (channels 0-3),
the three noisy in-between frames (4-15, frame-major: channel ``4 + 4k + c``), right
keyframe (16-19); rows are ``b`` blocks (in the sampler: cond, uncond) of ``G`` groups,
groups inner. Output ``[b * G, 12, h, w]``: the v-prediction of the three frames.

Structure: the Kandinsky 3.0 U-Net where every ResNet sub-block conv is followed by a
:class:`~.unet_base.InterpolationTemporalConv` (a ``(3, 1, 1)`` Conv3d over the *group* axis merged
through a learned scalar), and a temporal self-attention block (over the groups, merged
likewise) follows every self-attention block. Every temporal merge weight is multiplied by
``temporal_mask`` per row (0 lets a row bypass the temporal layers). With
``add_new_temporal_params`` there are also temporal convs after the input convolution,
before the output layer and after every up/down-sampling.

The time embedding merges the diffusion time with a perturbation-time embedding
(``time_embed_merge``) and adds a learned skip-frames embedding (``skip_merge``), then a
text summary as in the keyframe U-Net (quirks I1-I3, U2).

Official behaviour kept on purpose (``tests/data/golden/README.md``): the ResNet shortcut
applies ``temporal_post_upsample`` twice and never ``temporal_post_downsample`` (I5;
``fix_temporal_shortcut=True`` applies each once instead); down levels run self-attention
then temporal attention before their blocks, up levels their blocks then self-attention
then temporal attention (I7). ``time_downsample`` cannot run in the official code (I8) and
is not supported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from . import constructor_config
from .layers import (
    Attention,
    AttentionPooling,
    ConditionalGroupNorm,
    FrameAxis,
    LayerFactory,
    TextContext,
    TimestepEmbedding,
    attention_over_frames,
    compute_dtype,
    feed_forward,
    sinusoidal_embedding,
)
from .unet_base import InterpolationTemporalConv, LevelSpec, UNetBase, UNetBlocks, attention_of, plan_levels

__all__ = ["InterpolationUNet", "OFFICIAL_CONFIG", "NUM_SKIP_FRAMES"]

#: ``configs.json["interpolation"]["configs"]`` of the release, with
#: ``add_new_temporal_params=True`` (4,038,236,008 parameters; 3,979,941,530 without).
OFFICIAL_CONFIG = {
    "model_channels": 384,
    "init_channels": 192,
    "num_channels": 20,
    "out_channels": 12,
    "time_embed_dim": 1536,
    "context_dim": 4096,
    "groups": 32,
    "head_dim": 64,
    "expansion_ratio": 4,
    "compression_ratio": 2,
    "dim_mult": (1, 2, 4, 8),
    "num_blocks": (3, 3, 3, 3),
    "add_cross_attention": (False, True, True, True),
    "add_self_attention": (False, True, True, True),
    "time_downsample": (False, False, False, False),
    "temporal": True,
    "use_perturbation_time_embed": True,
    "merge_perturbation_time_with_diffusion_time": True,
    "merge_perturbation_time_with_context": False,
    "pass_skip_frames": True,
    "temporal_type": "conv3D",
    "add_new_temporal_params": True,
    "add_temporal_attention": True,
}

#: Entries of the skip-frames embedding table.
NUM_SKIP_FRAMES = 20
#: Values the official forward uses when perturbation_time / skip_frames are not given (I1).
DEFAULT_PERTURBATION_TIME = 25.0
DEFAULT_SKIP_FRAMES = 1


class InterpolationTemporalAttentionBlock(nn.Module):
    """Self-attention over the groups at every spatial position, then a feed-forward; each
    pre-normed and merged into ``x`` through a learned scalar times the temporal mask
    (quirks I3, I4). ``x [(b G), C, H, W]``."""

    def __init__(self, channels: int, embed_dim: int, groups: int = 32, head_dim: int = 64,
                 expansion_ratio: int = 4, *, factory: LayerFactory):
        super().__init__()
        self.in_norm = ConditionalGroupNorm(groups, channels, embed_dim, factory=factory)
        self.attention = Attention(channels, channels, channels, head_dim, factory=factory)
        self.out_norm = ConditionalGroupNorm(groups, channels, embed_dim, factory=factory)
        self.feed_forward = feed_forward(channels, expansion_ratio, factory=factory)
        self.temporal_merge1 = factory.scalar()
        self.temporal_merge2 = factory.scalar()

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: FrameAxis) -> torch.Tensor:
        out = attention_over_frames(self.attention, self.in_norm(x, emb), frames.num_frames)
        x = frames.merge(x, out, self.temporal_merge1)
        out = self.feed_forward(self.out_norm(x, emb))
        return frames.merge(x, out, self.temporal_merge2)


@dataclass(frozen=True)
class _InterpolationBlocks(UNetBlocks):
    """The blocks of an interpolation level: the shared ones (with temporal convolutions)
    plus the temporal attention block."""

    add_temporal_attention: bool = True

    def temporal_attention(self, spec: LevelSpec) -> Optional[InterpolationTemporalAttentionBlock]:
        if not (spec.self_attention and self.add_temporal_attention):
            return None
        return InterpolationTemporalAttentionBlock(spec.in_channels, self.time_embed_dim, self.groups,
                                                   self.head_dim, self.expansion_ratio, factory=self.factory)


def _run_pairs(pairs: nn.ModuleList, x, emb, context, context_mask, frames: FrameAxis) -> torch.Tensor:
    """ResNet -> cross-attention (when the level has it) -> ResNet, for every pair of a level."""
    for resnet_in, cross_attention, resnet_out in pairs:
        x = resnet_in(x, emb, frames)
        if cross_attention is not None:
            x = cross_attention(x, emb, context, context_mask)
        x = resnet_out(x, emb, frames)
    return x


class InterpolationDownBlock(nn.Module):
    """Down level: self-attention -> temporal attention -> per pair [ResNet,
    cross-attention, ResNet]; ``resnet_attn_blocks[i] = [ResNet, cross-attention | None, ResNet]``."""

    def __init__(self, spec: LevelSpec, blocks: _InterpolationBlocks):
        super().__init__()
        self.self_attention_block = blocks.self_attention(spec)
        self.temporal_attention_block = blocks.temporal_attention(spec)
        self.resnet_attn_blocks = blocks.resnet_attn_blocks(spec, up=False)

    def attention_order(self) -> list:
        return [("attn1", attention_of(self.self_attention_block), False),
                ("attn1", attention_of(self.temporal_attention_block), True),
                *(("attn2", attention_of(pair[1]), False) for pair in self.resnet_attn_blocks)]

    def forward(self, x, emb, context, context_mask, frames: FrameAxis):
        if self.self_attention_block is not None:
            x = self.self_attention_block(x, emb)
        if self.temporal_attention_block is not None:
            x = self.temporal_attention_block(x, emb, frames)
        return _run_pairs(self.resnet_attn_blocks, x, emb, context, context_mask, frames)


class InterpolationUpBlock(nn.Module):
    """Up level: per pair [ResNet, cross-attention, ResNet] -> self-attention -> temporal
    attention (quirk I7)."""

    def __init__(self, spec: LevelSpec, blocks: _InterpolationBlocks):
        super().__init__()
        self.resnet_attn_blocks = blocks.resnet_attn_blocks(spec, up=True)
        self.self_attention_block = blocks.self_attention(spec)
        self.temporal_attention_block = blocks.temporal_attention(spec)

    def attention_order(self) -> list:
        return [*(("attn2", attention_of(pair[1]), False) for pair in self.resnet_attn_blocks),
                ("attn1", attention_of(self.self_attention_block), False),
                ("attn1", attention_of(self.temporal_attention_block), True)]

    def forward(self, x, emb, context, context_mask, frames: FrameAxis):
        x = _run_pairs(self.resnet_attn_blocks, x, emb, context, context_mask, frames)
        if self.self_attention_block is not None:
            x = self.self_attention_block(x, emb)
        if self.temporal_attention_block is not None:
            x = self.temporal_attention_block(x, emb, frames)
        return x


class InterpolationUNet(UNetBase):
    """Interpolation U-Net of Kandinsky Video 1.1 (see the module docstring).

    Constructor keywords are those of ``configs.json["interpolation"]["configs"]``
    (:data:`OFFICIAL_CONFIG`), plus ``fix_temporal_shortcut`` (default False: reproduce the
    official double ``temporal_post_upsample``, quirk I5), ``operations`` (namespace of layer
    classes, default ``torch.nn``), ``device`` and ``dtype``. ``temporal_type`` is accepted
    and ignored, as in the official code (the temporal layers are always 3D convolutions).
    State-dict keys are the official ones.
    """

    def __init__(self, model_channels: int, init_channels: Optional[int] = None, num_channels: int = 3,
                 out_channels: int = 3, time_embed_dim: Optional[int] = None, context_dim: Optional[int] = None,
                 groups: int = 32, head_dim: int = 64, expansion_ratio: int = 4, compression_ratio: int = 2,
                 dim_mult=(1, 2, 4, 8), num_blocks=(3, 3, 3, 3),
                 add_cross_attention=(False, True, True, True), add_self_attention=(False, True, True, True),
                 time_downsample=(False, False, False, False), temporal: bool = True,
                 use_perturbation_time_embed: bool = True, merge_perturbation_time_with_diffusion_time: bool = True,
                 merge_perturbation_time_with_context: bool = False, pass_skip_frames: bool = True,
                 temporal_type: str = "conv3D", add_new_temporal_params: bool = False,
                 add_temporal_attention: bool = True, *, fix_temporal_shortcut: bool = False,
                 operations=None, device=None, dtype=None):
        config = constructor_config(locals())
        super().__init__()
        self.config = config
        if any(time_downsample):
            raise NotImplementedError(
                "time_downsample=True is not supported: the official interpolation U-Net cannot run it "
                "either (after CompressTemporal halves the batch, the time embedding keeps the full batch "
                "and ConditionalGroupNorm fails), so no released or reproducible weights use it")
        if time_embed_dim is None or context_dim is None:
            raise ValueError("time_embed_dim and context_dim are required")
        factory = LayerFactory(operations, device, dtype)
        init_channels = init_channels or model_channels
        self.temporal_type = temporal_type
        self.context_dim = context_dim

        self.to_time_embed = TimestepEmbedding(init_channels, time_embed_dim, factory=factory)
        merge_with_time = use_perturbation_time_embed and merge_perturbation_time_with_diffusion_time
        merge_with_context = use_perturbation_time_embed and merge_perturbation_time_with_context
        self.perturbation_to_time_embed = (TimestepEmbedding(init_channels, time_embed_dim, factory=factory)
                                           if merge_with_time else None)
        self.time_embed_merge = factory.scalar() if merge_with_time else None
        self.time_embed_context_merge = factory.scalar() if merge_with_context else None
        self.skip_merge = factory.scalar() if pass_skip_frames else None
        self.skip_embeddings = factory.embedding(NUM_SKIP_FRAMES, time_embed_dim) if pass_skip_frames else None
        self.feature_pooling = AttentionPooling(time_embed_dim, context_dim, head_dim, factory=factory)

        self.in_layer = factory.conv2d(num_channels, init_channels, 3, padding=1)
        blocks = _InterpolationBlocks(
            factory, time_embed_dim, groups, head_dim, expansion_ratio, compression_ratio, temporal=temporal,
            new_temporal_params=add_new_temporal_params, fix_temporal_shortcut=fix_temporal_shortcut,
            add_temporal_attention=add_temporal_attention)
        levels = plan_levels(model_channels, init_channels, dim_mult, num_blocks, add_cross_attention,
                             add_self_attention, context_dim)
        self._build_levels(levels, lambda spec: InterpolationDownBlock(spec, blocks),
                           lambda spec: InterpolationUpBlock(spec, blocks), init_channels, out_channels, groups,
                           factory)
        self._name_attention_sites()
        new = add_new_temporal_params
        self.temporal_conv_in = (InterpolationTemporalConv(init_channels, init_channels, factory=factory)
                                 if new else None)
        self.temporal_conv_out = (InterpolationTemporalConv(init_channels, init_channels, factory=factory)
                                  if new else None)

    def _time_embedding(self, time, perturbation_time, skip_frames, dtype):
        emb = self.to_time_embed(time, dtype)
        if self.perturbation_to_time_embed is not None:
            # learned scalars follow the activations' device and dtype: under ComfyUI's partial
            # loading a scalar parameter may stay on the offload device
            m = self.time_embed_merge.to(emb)
            emb = m * self.perturbation_to_time_embed(perturbation_time, dtype) + (1 - m) * emb
        if self.skip_embeddings is not None:
            skip = self.skip_embeddings(skip_frames.long()).to(dtype)
            emb = self.skip_merge.to(emb) * skip + emb
        return emb

    def forward(self, x: torch.Tensor, time: torch.Tensor, context: torch.Tensor,
                context_mask: Optional[torch.Tensor], *, num_groups: int,
                perturbation_time: Optional[torch.Tensor] = None, skip_frames: Optional[torch.Tensor] = None,
                temporal_mask: Optional[torch.Tensor] = None, step_cache=None) -> torch.Tensor:
        """Predict the in-between frames of every group.

        Args:
            x: ``[b * num_groups, num_channels, h, w]``, groups inner; cast to the compute
                dtype (the weights' dtype, or x's own under manual-cast operations; see
                :func:`~.layers.compute_dtype`), which is also the output dtype.
            time: ``[N]`` diffusion timesteps (the official sampler passes int64).
            context: ``[N, L, context_dim]``; ``context_mask``: ``[N, L]`` bool or 0/1, or None.
            num_groups: ``G``, the length of the temporal (group) axis.
            perturbation_time: ``[N]`` (default 25 for every row, as the official forward).
            skip_frames: ``[N]`` integer indices into the 20-entry skip-frames embedding
                (default 1).
            temporal_mask: ``[N]`` weights of every temporal merge per row (default 1).
            step_cache: a :class:`~kv_core.sampling.step_cache.CacheCall` (DeepCache-style step
                caching, see :mod:`kv_core.sampling.step_cache`), or None (the plain forward).

        Returns:
            ``[N, out_channels, h, w]``.
        """
        n = x.shape[0]
        if num_groups < 1 or n % num_groups:
            raise ValueError(f"num_groups ({num_groups}) must divide the batch ({n})")
        dtype, device = compute_dtype(self.in_layer, x), x.device
        x = x.to(dtype)
        if perturbation_time is None:
            perturbation_time = torch.full((n,), DEFAULT_PERTURBATION_TIME, device=device)
        if skip_frames is None:
            skip_frames = torch.full((n,), DEFAULT_SKIP_FRAMES, dtype=torch.long, device=device)
        mask = None if temporal_mask is None else temporal_mask.to(device=device, dtype=dtype).view(n, 1, 1, 1)
        frames = FrameAxis(num_groups, mask)

        context = context.to(dtype)
        if context_mask is not None:
            context_mask = context_mask.to(torch.bool)
        if self.time_embed_context_merge is not None:
            features = sinusoidal_embedding(perturbation_time, self.context_dim).to(dtype)
            context = context + self.time_embed_context_merge.to(context) * features[:, None]
        text = TextContext.of(context, context_mask)  # projected once per distinct prompt
        emb = self._time_embedding(time, perturbation_time, skip_frames, dtype)
        emb = self.feature_pooling(emb, text)

        h = self.in_layer(x)
        if self.temporal_conv_in is not None:
            h = self.temporal_conv_in(h, frames)
        h = self._run_levels(h, emb, text, None, frames, step_cache=step_cache)
        if self.temporal_conv_out is not None:
            h = self.temporal_conv_out(h, frames)
        return self.out_layer(h)
