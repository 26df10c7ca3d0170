"""The keyframe U-Net of Kandinsky Video 1.1 (``t2v.pt``).

A Kandinsky 3.0 text-to-image U-Net with temporal layers added. One network serves two
modes, chosen explicitly by the caller (the official code infers it from the batch size):

* ``mode="image"`` — the first frame (Kandinsky 3.0 image generation): input convolution
  ``image_in_layer``, no temporal layer, no frame/motion/noise-augmentation embedding.
  ``x [B, 9, h, w]``, every row an independent image.
* ``mode="video"`` — the keyframes: input convolution ``in_layer``; temporal ResNet blocks
  (1D convolutions over frames) around every ResNet block and a temporal attention block
  beside every self-attention block. ``x [b * T, 9, h, w]``: ``b`` independent videos of
  ``T = num_frames`` frames each, frames inner.

Input channels (official use): noisy latent (4), condition latent (4), condition mask (1).
Output: the predicted noise ``[N, 4, h, w]``.

Embeddings: the diffusion time (sinusoidal + MLP) plus a text summary (attention pooling
over the context) conditions every block. In video mode the frame index, the motion score
and the noise-augmentation level each get their own sinusoidal + MLP embedding; their sum
is added to the time embedding for the temporal layers only (quirks U2, U3).

Block order of a level (quirk U7): down path: self-attention -> temporal attention -> per
ResNet pair [ResNet, temporal ResNet, cross-attention, ResNet, temporal ResNet]; up path:
per pair [temporal ResNet, ResNet, cross-attention, temporal ResNet, ResNet] -> temporal
attention -> self-attention.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn

from . import constructor_config
from .layers import (
    Attention,
    AttentionPooling,
    ConditionalGroupNorm,
    LayerFactory,
    TextContext,
    TimestepEmbedding,
    attention_over_frames,
    compute_dtype,
    conv_over_frames,
    feed_forward,
)
from .unet_base import LevelSpec, ResNetPair, UNetBase, UNetBlocks, attention_of, plan_levels

__all__ = ["KeyframeUNet", "OFFICIAL_CONFIG"]

#: ``configs.json["t2v"]["configs"]`` of the release (4,149,077,956 parameters).
OFFICIAL_CONFIG = {
    "model_channels": 384,
    "init_channels": 192,
    "num_channels": 9,
    "out_channels": 4,
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
    "noise_augmentation": True,
    "motion_score": True,
}


class KeyframeTemporalResNetBlock(nn.Module):
    """Residual stack of [ConditionalGroupNorm -> SiLU -> Conv3d (k, 1, 1) over frames] with
    kernels 1, 3, 3, 1 and hidden width ``channels // compression_ratio`` (quirk U9).
    ``x [(b t), C, H, W]`` -> same shape."""

    def __init__(self, channels: int, embed_dim: int, groups: int = 32, compression_ratio: int = 2, *,
                 factory: LayerFactory):
        super().__init__()
        hidden = channels // compression_ratio
        widths = [(channels, hidden), (hidden, hidden), (hidden, hidden), (hidden, channels)]
        self.temporal_resnet_blocks = nn.ModuleList([
            nn.ModuleList([
                ConditionalGroupNorm(groups, cin, embed_dim, factory=factory),
                nn.SiLU(),
                factory.conv3d(cin, cout, (k, 1, 1), padding=(k // 2, 0, 0)),
            ])
            for (cin, cout), k in zip(widths, [1, 3, 3, 1])
        ])

    def forward(self, x: torch.Tensor, emb: torch.Tensor, num_frames: int) -> torch.Tensor:
        out = x
        for norm, activation, conv in self.temporal_resnet_blocks:
            out = conv_over_frames(conv, activation(norm(out, emb)), num_frames)
        return x + out


class KeyframeTemporalAttentionBlock(nn.Module):
    """Self-attention over the T frames at every spatial position (no mask), then a
    feed-forward; both pre-normed and residual. ``x [(b t), C, H, W]``."""

    def __init__(self, channels: int, embed_dim: int, groups: int = 32, head_dim: int = 64,
                 expansion_ratio: int = 4, *, factory: LayerFactory):
        super().__init__()
        self.temporal_norm = ConditionalGroupNorm(groups, channels, embed_dim, factory=factory)
        self.temporal_attention = Attention(channels, channels, channels, head_dim, factory=factory)
        self.ff_norm = ConditionalGroupNorm(groups, channels, embed_dim, factory=factory)
        self.feed_forward = feed_forward(channels, expansion_ratio, factory=factory)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = x + attention_over_frames(self.temporal_attention, self.temporal_norm(x, emb), num_frames)
        return x + self.feed_forward(self.ff_norm(x, emb))


class _KeyframeBlocks(UNetBlocks):
    """The blocks of a keyframe level: the shared ones plus the temporal ResNet and
    temporal attention blocks of video mode."""

    def temporal_resnets(self, pair: ResNetPair) -> list[KeyframeTemporalResNetBlock]:
        """Two temporal ResNet blocks at the cross-attention width of ``pair`` (quirk U7)."""
        return [KeyframeTemporalResNetBlock(pair.channels, self.time_embed_dim, self.groups, self.compression_ratio,
                                            factory=self.factory) for _ in range(2)]

    def temporal_attention(self, spec: LevelSpec) -> Optional[KeyframeTemporalAttentionBlock]:
        if not spec.self_attention:
            return None
        return KeyframeTemporalAttentionBlock(spec.in_channels, self.time_embed_dim, self.groups, self.head_dim,
                                              self.expansion_ratio, factory=self.factory)


class KeyframeDownBlock(nn.Module):
    """One level of the down path; ``resnet_attn_blocks[i]`` holds
    ``[ResNet, cross-attention | None, ResNet, temporal ResNet, temporal ResNet]``."""

    def __init__(self, spec: LevelSpec, blocks: _KeyframeBlocks):
        super().__init__()
        self.self_attention_block = blocks.self_attention(spec)
        self.temporal_attention_block = blocks.temporal_attention(spec)
        self.resnet_attn_blocks = blocks.resnet_attn_blocks(spec, up=False, extra=blocks.temporal_resnets)

    def attention_order(self) -> list:
        return [("attn1", attention_of(self.self_attention_block), False),
                ("attn1", attention_of(self.temporal_attention_block, "temporal_attention"), True),
                *(("attn2", attention_of(pair[1]), False) for pair in self.resnet_attn_blocks)]

    def forward(self, x, emb, context, context_mask, temporal_emb=None, num_frames=None):
        video = temporal_emb is not None
        if self.self_attention_block is not None:
            x = self.self_attention_block(x, emb)
            if video:
                x = self.temporal_attention_block(x, temporal_emb, num_frames)
        for resnet_in, cross_attention, resnet_out, temporal_in, temporal_out in self.resnet_attn_blocks:
            x = resnet_in(x, emb)
            if video:
                x = temporal_in(x, temporal_emb, num_frames)
            if cross_attention is not None:
                x = cross_attention(x, emb, context, context_mask)
            x = resnet_out(x, emb)
            if video:
                x = temporal_out(x, temporal_emb, num_frames)
        return x


class KeyframeUpBlock(nn.Module):
    """One level of the up path (input: previous level concatenated with the skip); the
    temporal ResNet blocks act on the input width of their ResNet pair (quirk U7)."""

    def __init__(self, spec: LevelSpec, blocks: _KeyframeBlocks):
        super().__init__()
        self.resnet_attn_blocks = blocks.resnet_attn_blocks(spec, up=True, extra=blocks.temporal_resnets)
        self.temporal_attention_block = blocks.temporal_attention(spec)
        self.self_attention_block = blocks.self_attention(spec)

    def attention_order(self) -> list:
        return [*(("attn2", attention_of(pair[1]), False) for pair in self.resnet_attn_blocks),
                ("attn1", attention_of(self.temporal_attention_block, "temporal_attention"), True),
                ("attn1", attention_of(self.self_attention_block), False)]

    def forward(self, x, emb, context, context_mask, temporal_emb=None, num_frames=None):
        video = temporal_emb is not None
        for resnet_in, cross_attention, resnet_out, temporal_in, temporal_out in self.resnet_attn_blocks:
            if video:
                x = temporal_in(x, temporal_emb, num_frames)
            x = resnet_in(x, emb)
            if cross_attention is not None:
                x = cross_attention(x, emb, context, context_mask)
            if video:
                x = temporal_out(x, temporal_emb, num_frames)
            x = resnet_out(x, emb)
        if self.self_attention_block is not None:
            if video:
                x = self.temporal_attention_block(x, temporal_emb, num_frames)
            x = self.self_attention_block(x, emb)
        return x


class KeyframeUNet(UNetBase):
    """Keyframe / first-frame U-Net of Kandinsky Video 1.1 (see the module docstring).

    Constructor keywords are those of ``configs.json["t2v"]["configs"]``
    (:data:`OFFICIAL_CONFIG`), plus ``operations`` (namespace of layer classes, default
    ``torch.nn``), ``device`` and ``dtype``. State-dict keys are the official ones.
    """

    def __init__(self, model_channels: int, init_channels: Optional[int] = None, num_channels: int = 3,
                 out_channels: Optional[int] = None, time_embed_dim: Optional[int] = None,
                 context_dim: Optional[int] = None, groups: int = 32, head_dim: int = 64,
                 expansion_ratio: int = 4, compression_ratio: int = 2, dim_mult=(1, 2, 4, 8),
                 num_blocks=(3, 3, 3, 3), add_cross_attention=(False, True, True, True),
                 add_self_attention=(False, True, True, True), noise_augmentation: bool = False,
                 motion_score: bool = False, *, operations=None, device=None, dtype=None):
        config = constructor_config(locals())
        super().__init__()
        self.config = config
        if time_embed_dim is None or context_dim is None:
            raise ValueError("time_embed_dim and context_dim are required")
        factory = LayerFactory(operations, device, dtype)
        init_channels = init_channels or model_channels
        out_channels = out_channels or num_channels
        self.to_time_embed = TimestepEmbedding(init_channels, time_embed_dim, factory=factory)
        self.feature_pooling = AttentionPooling(time_embed_dim, context_dim, head_dim, factory=factory)
        self.to_temporal_embed = TimestepEmbedding(init_channels, time_embed_dim, factory=factory)
        self.temporal_noise_aug_time_encoding = (
            TimestepEmbedding(init_channels, time_embed_dim, factory=factory) if noise_augmentation else None)
        self.temporal_motion_score_encoding = (
            TimestepEmbedding(init_channels, time_embed_dim, factory=factory) if motion_score else None)

        self.in_layer = factory.conv2d(num_channels, init_channels, 3, padding=1)
        self.image_in_layer = factory.conv2d(num_channels, init_channels, 3, padding=1)

        blocks = _KeyframeBlocks(factory, time_embed_dim, groups, head_dim, expansion_ratio, compression_ratio)
        levels = plan_levels(model_channels, init_channels, dim_mult, num_blocks, add_cross_attention,
                             add_self_attention, context_dim)
        self._build_levels(levels, lambda spec: KeyframeDownBlock(spec, blocks),
                           lambda spec: KeyframeUpBlock(spec, blocks), init_channels, out_channels, groups, factory)
        self._name_attention_sites()

    def forward(self, x: torch.Tensor, time: torch.Tensor, context: torch.Tensor,
                context_mask: Optional[torch.Tensor], *, mode: Literal["image", "video"],
                num_frames: Optional[int] = None, temporal_embed: Optional[torch.Tensor] = None,
                noise_aug_time: Optional[torch.Tensor] = None,
                motion_score: Optional[torch.Tensor] = None, step_cache=None) -> torch.Tensor:
        """Predict the noise.

        Args:
            x: ``[N, num_channels, h, w]``; in video mode ``N = b * num_frames``, frames
                inner. Cast to the compute dtype (the weights' dtype, or x's own under
                manual-cast operations; see :func:`~.layers.compute_dtype`), which is also
                the output dtype.
            time: ``[N]`` diffusion timesteps (any real/integer dtype).
            context: ``[N, L, context_dim]`` text context; ``context_mask``: ``[N, L]`` bool or
                0/1 (True = real token) or None (all visible).
            mode: ``"image"`` or ``"video"`` (never inferred).
            num_frames: frames per video (video mode, required).
            temporal_embed: ``[N]`` frame index of each row (video mode; default
                ``arange(num_frames)`` for every video).
            noise_aug_time, motion_score: ``[N]`` (video mode, optional): added to the temporal
                embedding when given and the config has the embedding, ignored otherwise (as
                in the official code).
            step_cache: a :class:`~kv_core.sampling.step_cache.CacheCall` (DeepCache-style step
                caching, see :mod:`kv_core.sampling.step_cache`), or None (the plain forward).

        Returns:
            ``[N, out_channels, h, w]``.
        """
        if mode not in ("image", "video"):
            raise ValueError(f"mode must be 'image' or 'video', not {mode!r}")
        dtype = compute_dtype(self.in_layer, x)
        x, context = x.to(dtype), context.to(dtype)
        if context_mask is not None:
            context_mask = context_mask.to(torch.bool)
        text = TextContext.of(context, context_mask)  # projected once per distinct prompt
        emb = self.feature_pooling(self.to_time_embed(time, dtype), text)

        temporal_emb = None
        if mode == "image":
            if any(v is not None for v in (num_frames, temporal_embed, noise_aug_time, motion_score)):
                raise ValueError("image mode takes no num_frames/temporal_embed/noise_aug_time/motion_score")
            h = self.image_in_layer(x)
        else:
            if num_frames is None or num_frames < 1 or x.shape[0] % num_frames:
                raise ValueError(f"video mode needs num_frames dividing the batch {x.shape[0]}, got {num_frames}")
            if temporal_embed is None:
                temporal_embed = torch.arange(num_frames, device=x.device).repeat(x.shape[0] // num_frames)
            frame_emb = self.to_temporal_embed(temporal_embed, dtype)
            if self.temporal_noise_aug_time_encoding is not None and noise_aug_time is not None:
                frame_emb = frame_emb + self.temporal_noise_aug_time_encoding(noise_aug_time, dtype)
            if self.temporal_motion_score_encoding is not None and motion_score is not None:
                frame_emb = frame_emb + self.temporal_motion_score_encoding(motion_score, dtype)
            temporal_emb = emb + frame_emb
            h = self.in_layer(x)

        h = self._run_levels(h, emb, text, None, temporal_emb, num_frames, step_cache=step_cache)
        return self.out_layer(h)
