"""The blocks of the MoVQ autoencoders (:mod:`.movq`): latent-conditioned norms,
resampling, ResNet and attention blocks (with the video decoder's temporal layers) and the
levels built from them. Layers come from a :class:`~.layers.LayerFactory`; an optional
sub-module is None when a block has none (state-dict keys are the reference's).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerFactory, conv_over_frames

__all__ = [
    "NORM_GROUPS",
    "MoVQSpatialNorm",
    "MoVQUpsample",
    "MoVQDownsample",
    "MoVQResnetBlock",
    "MoVQAttnBlock",
    "MoVQTemporalAttnBlock",
    "MoVQEncoderLevel",
    "MoVQMidBlock",
    "MoVQDecoderLevel",
]

NORM_GROUPS = 32  # fixed by the reference: every channel count must be a multiple of 32
_NORM_EPS = 1e-6


class MoVQSpatialNorm(nn.Module):
    """GroupNorm (32 groups, affine), optionally modulated by a latent ``zq``.

    With a latent: ``GN(x) * conv_y(zq') + conv_b(zq')`` where ``zq'`` is ``zq`` resized
    (nearest) to the size of ``x`` (then through ``conv``, a 3x3 conv, with ``add_conv``).
    ``zq`` may have batch 1 (broadcast over ``x``'s batch) or the batch of ``x``.
    """

    def __init__(self, channels: int, zq_channels: Optional[int] = None, add_conv: bool = False,
                 *, factory: LayerFactory):
        super().__init__()
        self.norm_layer = factory.group_norm(NORM_GROUPS, channels, eps=_NORM_EPS)
        conditioned = zq_channels is not None
        self.conv = factory.conv2d(zq_channels, zq_channels, 3, padding=1) if conditioned and add_conv else None
        self.conv_y = factory.conv2d(zq_channels, channels, 1) if conditioned else None
        self.conv_b = factory.conv2d(zq_channels, channels, 1) if conditioned else None

    def forward(self, x: torch.Tensor, zq: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.norm_layer(x)
        if zq is None:
            return h
        B, C, H, W = h.shape
        zh, zw = zq.shape[-2:]
        if self.conv is not None or H % zh or W % zw:
            zq = F.interpolate(zq, size=(H, W), mode="nearest")
            if self.conv is not None:
                zq = self.conv(zq)
            return torch.addcmul(self.conv_b(zq), h, self.conv_y(zq))
        # A 1x1 conv commutes with nearest up-sampling by an integer factor: apply the convs
        # at the latent's size and broadcast each latent pixel over its (sH, sW) block
        # instead of materialising two full-size modulation maps.
        sh, sw = H // zh, W // zw
        scale = self.conv_y(zq)[:, :, :, None, :, None]
        shift = self.conv_b(zq)[:, :, :, None, :, None]
        out = torch.addcmul(shift, h.view(B, C, zh, sh, zw, sw), scale)
        return out.view(B, C, H, W)


class MoVQUpsample(nn.Module):
    """Nearest 2x up-sampling, then a 3x3 convolution (when ``with_conv``)."""

    def __init__(self, channels: int, with_conv: bool = True, *, factory: LayerFactory):
        super().__init__()
        self.conv = factory.conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class MoVQDownsample(nn.Module):
    """2x down-sampling: zero-pad right/bottom by one, then a 3x3 stride-2 convolution
    (or 2x2 average pooling when not ``with_conv``)."""

    def __init__(self, channels: int, with_conv: bool = True, *, factory: LayerFactory):
        super().__init__()
        self.conv = factory.conv2d(channels, channels, 3, stride=2, padding=0) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class MoVQResnetBlock(nn.Module):
    """Pre-norm ResNet block: ``x + conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))``.

    The norms are :class:`MoVQSpatialNorm` conditioned on ``zq`` when ``zq_channels`` is
    given (decoder). With ``temporal``, after each convolution ``h`` is blended with a 3D
    convolution of the whole batch seen as one clip ``[1, C, T, H, W]`` (T = batch):
    ``h = (1 - a) * h + a * conv3d(h)`` with learned scalars ``temporal_merge1/2``.
    A 1x1 ``nin_shortcut`` projects the input when the channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0,
                 zq_channels: Optional[int] = None, add_conv: bool = False, temporal: bool = False,
                 temporal_kernel_size: Sequence[int] = (3, 3, 3),
                 temporal_conv_padding: Sequence[int] = (1, 1, 1), *, factory: LayerFactory):
        super().__init__()
        self.norm1 = MoVQSpatialNorm(in_channels, zq_channels, add_conv, factory=factory)
        self.conv1 = factory.conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = MoVQSpatialNorm(out_channels, zq_channels, add_conv, factory=factory)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = factory.conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = factory.conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        kernel, padding = tuple(temporal_kernel_size), tuple(temporal_conv_padding)
        self.temporal_merge1 = factory.scalar() if temporal else None
        self.temporal_projection1 = (factory.conv3d(out_channels, out_channels, kernel, padding=padding)
                                     if temporal else None)
        self.temporal_merge2 = factory.scalar() if temporal else None
        self.temporal_projection2 = (factory.conv3d(out_channels, out_channels, kernel, padding=padding)
                                     if temporal else None)

    @staticmethod
    def _mix_over_time(h: torch.Tensor, conv3d: Optional[nn.Module], alpha: torch.Tensor) -> torch.Tensor:
        """``lerp(h, conv3d(clip), alpha)`` with the batch ``[T, C, H, W]`` as one clip."""
        if conv3d is None:
            return h
        return torch.lerp(h, conv_over_frames(conv3d, h, h.shape[0]), alpha.to(h))

    def forward(self, x: torch.Tensor, zq: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, zq)))
        h = self._mix_over_time(h, self.temporal_projection1, self.temporal_merge1)
        h = self.conv2(self.dropout(F.silu(self.norm2(h, zq))))
        h = self._mix_over_time(h, self.temporal_projection2, self.temporal_merge2)
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class _MoVQAttentionBase(nn.Module):
    """Norm and the four 1x1 convolutions (``q``, ``k``, ``v``, ``proj_out``) of a
    single-head attention block with a residual connection."""

    def __init__(self, channels: int, zq_channels: Optional[int] = None, add_conv: bool = False,
                 *, factory: LayerFactory):
        super().__init__()
        self.norm = MoVQSpatialNorm(channels, zq_channels, add_conv, factory=factory)
        self.q = factory.conv2d(channels, channels, 1)
        self.k = factory.conv2d(channels, channels, 1)
        self.v = factory.conv2d(channels, channels, 1)
        self.proj_out = factory.conv2d(channels, channels, 1)


class MoVQAttnBlock(_MoVQAttentionBase):
    """Spatial self-attention over the ``H*W`` positions of each item, one head of
    ``C`` channels (scale ``C**-0.5``)."""

    def forward(self, x: torch.Tensor, zq: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x, zq)
        # [B, C, H, W] -> [B, 1, H*W, C]
        q, k, v = (conv(h).flatten(2).transpose(1, 2).unsqueeze(1) for conv in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.squeeze(1).transpose(1, 2).reshape(B, C, H, W)
        return x + self.proj_out(h)


class MoVQTemporalAttnBlock(_MoVQAttentionBase):
    """Temporal self-attention: at each position, the ``T`` items of the batch (the frames
    of one chunk) attend to each other; one head of ``C`` channels.

    Quirk M2: the norm is a plain GroupNorm (the reference never passes the latent here),
    so ``norm.conv_y``/``norm.conv_b`` are built for the checkpoint keys but not used.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, C, H, W = x.shape
        h = self.norm(x)
        # [T, C, H, W] -> [H*W, 1, T, C]
        q, k, v = (conv(h).permute(2, 3, 0, 1).reshape(H * W, 1, T, C) for conv in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.reshape(H, W, T, C).permute(2, 3, 0, 1)
        return x + self.proj_out(h)


class MoVQEncoderLevel(nn.Module):
    """One resolution of the encoder: ResNet blocks (each followed by attention when the
    level has it) and, except on the last level, a down-sampling."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, attention: bool,
                 downsample: bool, dropout: float, resamp_with_conv: bool, *, factory: LayerFactory):
        super().__init__()
        self.block = nn.ModuleList(
            MoVQResnetBlock(in_channels if i == 0 else out_channels, out_channels, dropout, factory=factory)
            for i in range(num_blocks))
        self.attn = nn.ModuleList(MoVQAttnBlock(out_channels, factory=factory)
                                  for _ in range(num_blocks if attention else 0))
        self.downsample = MoVQDownsample(out_channels, resamp_with_conv, factory=factory) if downsample else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        if self.downsample is not None:
            h = self.downsample(h)
        return h


class MoVQMidBlock(nn.Module):
    """ResNet block, attention, [temporal attention], ResNet block."""

    def __init__(self, channels: int, dropout: float, zq_channels: Optional[int] = None,
                 add_conv: bool = False, temporal: bool = False, temporal_attention: bool = False,
                 temporal_kernel_size=(3, 3, 3), temporal_conv_padding=(1, 1, 1), *, factory: LayerFactory):
        super().__init__()
        res = dict(dropout=dropout, zq_channels=zq_channels, add_conv=add_conv, temporal=temporal,
                   temporal_kernel_size=temporal_kernel_size, temporal_conv_padding=temporal_conv_padding,
                   factory=factory)
        self.block_1 = MoVQResnetBlock(channels, channels, **res)
        self.attn_1 = MoVQAttnBlock(channels, zq_channels, add_conv, factory=factory)
        self.temporal_attn_1 = (MoVQTemporalAttnBlock(channels, zq_channels, add_conv, factory=factory)
                                if temporal_attention else None)
        self.block_2 = MoVQResnetBlock(channels, channels, **res)

    def forward(self, h: torch.Tensor, zq: Optional[torch.Tensor] = None,
                attn_zq: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.block_1(h, zq)
        h = self.attn_1(h, attn_zq)
        if self.temporal_attn_1 is not None:
            h = self.temporal_attn_1(h)
        return self.block_2(h, zq)


class MoVQDecoderLevel(nn.Module):
    """One resolution of the decoder: ``num_res_blocks + 1`` ResNet blocks, each followed by
    attention (and temporal attention) when the level has it, then, except on level 0,
    an up-sampling."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, attention: bool,
                 temporal_attention: bool, upsample: bool, dropout: float, resamp_with_conv: bool,
                 zq_channels: int, add_conv: bool, temporal: bool, temporal_kernel_size,
                 temporal_conv_padding, *, factory: LayerFactory):
        super().__init__()
        self.block = nn.ModuleList(
            MoVQResnetBlock(in_channels if i == 0 else out_channels, out_channels, dropout, zq_channels,
                            add_conv, temporal, temporal_kernel_size, temporal_conv_padding, factory=factory)
            for i in range(num_blocks))
        n_attn = num_blocks if attention else 0
        self.attn = nn.ModuleList(MoVQAttnBlock(out_channels, zq_channels, add_conv, factory=factory)
                                  for _ in range(n_attn))
        self.temporal_attn = nn.ModuleList(
            MoVQTemporalAttnBlock(out_channels, zq_channels, add_conv, factory=factory)
            for _ in range(n_attn if temporal_attention else 0))
        self.upsample = MoVQUpsample(out_channels, resamp_with_conv, factory=factory) if upsample else None

    def forward(self, h: torch.Tensor, zq: torch.Tensor, attn_zq: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h, zq)
            if len(self.attn):
                h = self.attn[i](h, attn_zq)
                if len(self.temporal_attn):
                    h = self.temporal_attn[i](h)
        if self.upsample is not None:
            h = self.upsample(h)
        return h
