"""MoVQ autoencoders of Kandinsky Video 1.1: the image MoVQ and the temporal video decoder.

Both files of a release (``movq.pt`` and ``video_movq.pt``) are state dicts of the same
network, :class:`MoVQ`, built from the ``configs`` dict of ``configs.json``
(``image_movq`` or ``video_movq``):

* ``encode(images)``: ``[B, 3, H, W]`` in [-1, 1] -> ``[B, z, H/f, W/f]`` (encoder and
  ``quant_conv``; the vector quantiser is never used, so latents are continuous).
* ``decode(latents)``: ``post_quant_conv`` then the decoder, whose spatially conditioned
  group norms are modulated by the latent itself (``zq = latents``).

The video MoVQ adds temporal layers to the decoder only (``temporal=True``): every ResNet
block mixes in two 3D convolutions through learned scalars, and a single-head temporal
attention follows each spatial attention. For it, the batch of one ``decode`` call is one
chunk of consecutive frames and that batch axis *is* the temporal axis.
:func:`decode_video` splits a whole video into chunks as the reference pipeline does.

Reference behaviour kept on purpose (see ``tests/data/golden/README.md``, quirks M1-M7):

* M1: inside the decoder's attention blocks every item of the batch is normalised with the
  latent of the *first* item (``per_item_attention_norm=True`` uses each item's own).
* M2: temporal attention normalises without the latent: its ``conv_y``/``conv_b`` weights
  exist in the checkpoints but are never used.
* M7: which levels have attention depends on ``resolution`` and ``attn_resolutions`` of
  the config, never on the input size.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .dtypes import layer_compute_dtype

__all__ = [
    "MoVQ",
    "Encoder",
    "Decoder",
    "OFFICIAL_IMAGE_CONFIG",
    "OFFICIAL_VIDEO_CONFIG",
    "video_chunk_sizes",
    "decode_video",
    "to_uint8_frames",
]

#: ``configs.json["image_movq"]["configs"]`` of the release (270,603,567 parameters).
OFFICIAL_IMAGE_CONFIG = {
    "double_z": False,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 256,
    "ch_mult": (1, 2, 2, 4),
    "num_res_blocks": 2,
    "attn_resolutions": (32,),
    "dropout": 0.0,
}

#: ``configs.json["video_movq"]["configs"]`` of the release (666,131,275 parameters, of
#: which 556,645,919 in the decoder).
OFFICIAL_VIDEO_CONFIG = {
    **OFFICIAL_IMAGE_CONFIG,
    "temporal": True,
    "temporal_mid_blocks": True,
    "build_3D_decoder": False,
    "temporal_attention_block": True,
    "temporal_blocks": False,
    "temporal_kernel_size": (3, 3, 3),
    "temporal_conv_padding": (1, 1, 1),
}

_NORM_GROUPS = 32  # fixed by the reference: every channel count must be a multiple of 32
_NORM_EPS = 1e-6


class SpatialNorm(nn.Module):
    """GroupNorm (32 groups, affine), optionally modulated by a latent ``zq``.

    With a latent: ``GN(x) * conv_y(zq') + conv_b(zq')`` where ``zq'`` is ``zq`` resized
    (nearest) to the size of ``x``. ``zq`` may have batch 1 (broadcast over ``x``'s batch)
    or the batch of ``x``.
    """

    def __init__(self, channels: int, zq_channels: Optional[int] = None, add_conv: bool = False,
                 *, operations=nn, device=None, dtype=None):
        super().__init__()
        self.norm_layer = operations.GroupNorm(_NORM_GROUPS, channels, eps=_NORM_EPS, affine=True,
                                               device=device, dtype=dtype)
        self.add_conv = bool(add_conv) and zq_channels is not None
        if zq_channels is not None:
            if self.add_conv:
                self.conv = operations.Conv2d(zq_channels, zq_channels, 3, padding=1,
                                              device=device, dtype=dtype)
            self.conv_y = operations.Conv2d(zq_channels, channels, 1, device=device, dtype=dtype)
            self.conv_b = operations.Conv2d(zq_channels, channels, 1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, zq: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.norm_layer(x)
        if zq is None:
            return h
        B, C, H, W = h.shape
        zh, zw = zq.shape[-2:]
        if self.add_conv or H % zh or W % zw:
            zq = F.interpolate(zq, size=(H, W), mode="nearest")
            if self.add_conv:
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


class Upsample(nn.Module):
    """Nearest 2x up-sampling, then a 3x3 convolution (when ``with_conv``)."""

    def __init__(self, channels: int, with_conv: bool = True, *, operations=nn, device=None, dtype=None):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = operations.Conv2d(channels, channels, 3, padding=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """2x down-sampling: zero-pad right/bottom by one, then a 3x3 stride-2 convolution
    (or 2x2 average pooling when not ``with_conv``)."""

    def __init__(self, channels: int, with_conv: bool = True, *, operations=nn, device=None, dtype=None):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = operations.Conv2d(channels, channels, 3, stride=2, padding=0,
                                          device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


def _merge(h: torch.Tensor, temporal: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``(1 - alpha) * h + alpha * temporal`` with the learned scalar cast to ``h``."""
    return torch.lerp(h, temporal, alpha.to(device=h.device, dtype=h.dtype))


class ResnetBlock(nn.Module):
    """Pre-norm ResNet block: ``x + conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))``.

    The norms are :class:`SpatialNorm` conditioned on ``zq`` when ``zq_channels`` is given
    (decoder). With ``temporal``, after each convolution ``h`` is blended with a 3D
    convolution of the whole batch seen as one clip ``[1, C, T, H, W]`` (T = batch):
    ``h = (1 - a) * h + a * conv3d(h)`` with learned scalars ``temporal_merge1/2``.
    A 1x1 ``nin_shortcut`` projects the input when the channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0,
                 zq_channels: Optional[int] = None, add_conv: bool = False, temporal: bool = False,
                 temporal_kernel_size: Sequence[int] = (3, 3, 3),
                 temporal_conv_padding: Sequence[int] = (1, 1, 1),
                 *, operations=nn, device=None, dtype=None):
        super().__init__()
        ops = dict(device=device, dtype=dtype)
        self.norm1 = SpatialNorm(in_channels, zq_channels, add_conv, operations=operations, **ops)
        self.conv1 = operations.Conv2d(in_channels, out_channels, 3, padding=1, **ops)
        self.norm2 = SpatialNorm(out_channels, zq_channels, add_conv, operations=operations, **ops)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = operations.Conv2d(out_channels, out_channels, 3, padding=1, **ops)
        if in_channels != out_channels:
            self.nin_shortcut = operations.Conv2d(in_channels, out_channels, 1, **ops)
        self.temporal = temporal
        if temporal:
            kernel, padding = tuple(temporal_kernel_size), tuple(temporal_conv_padding)
            self.temporal_merge1 = nn.Parameter(torch.zeros(1, **ops))
            self.temporal_projection1 = operations.Conv3d(out_channels, out_channels, kernel,
                                                          padding=padding, **ops)
            self.temporal_merge2 = nn.Parameter(torch.zeros(1, **ops))
            self.temporal_projection2 = operations.Conv3d(out_channels, out_channels, kernel,
                                                          padding=padding, **ops)

    @staticmethod
    def _over_time(conv3d: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """Apply a Conv3d to ``[T, C, H, W]`` seen as the clip ``[1, C, T, H, W]``."""
        return conv3d(h.transpose(0, 1).unsqueeze(0)).squeeze(0).transpose(0, 1)

    def forward(self, x: torch.Tensor, zq: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, zq)))
        if self.temporal:
            h = _merge(h, self._over_time(self.temporal_projection1, h), self.temporal_merge1)
        h = self.conv2(self.dropout(F.silu(self.norm2(h, zq))))
        if self.temporal:
            h = _merge(h, self._over_time(self.temporal_projection2, h), self.temporal_merge2)
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class _AttentionBase(nn.Module):
    """Norm and the four 1x1 convolutions (``q``, ``k``, ``v``, ``proj_out``) of a
    single-head attention block with a residual connection."""

    def __init__(self, channels: int, zq_channels: Optional[int] = None, add_conv: bool = False,
                 *, operations=nn, device=None, dtype=None):
        super().__init__()
        ops = dict(device=device, dtype=dtype)
        self.norm = SpatialNorm(channels, zq_channels, add_conv, operations=operations, **ops)
        self.q = operations.Conv2d(channels, channels, 1, **ops)
        self.k = operations.Conv2d(channels, channels, 1, **ops)
        self.v = operations.Conv2d(channels, channels, 1, **ops)
        self.proj_out = operations.Conv2d(channels, channels, 1, **ops)


class AttnBlock(_AttentionBase):
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


class TemporalAttnBlock(_AttentionBase):
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


class EncoderLevel(nn.Module):
    """One resolution of the encoder: ResNet blocks (each followed by attention when the
    level has it) and, except on the last level, a down-sampling."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, attention: bool,
                 downsample: bool, dropout: float, resamp_with_conv: bool,
                 *, operations=nn, device=None, dtype=None):
        super().__init__()
        ops = dict(operations=operations, device=device, dtype=dtype)
        self.block = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, dropout, **ops)
            for i in range(num_blocks))
        self.attn = nn.ModuleList(AttnBlock(out_channels, **ops) for _ in range(num_blocks if attention else 0))
        if downsample:
            self.downsample = Downsample(out_channels, resamp_with_conv, **ops)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        if hasattr(self, "downsample"):
            h = self.downsample(h)
        return h


class MidBlock(nn.Module):
    """ResNet block, attention, [temporal attention], ResNet block."""

    def __init__(self, channels: int, dropout: float, zq_channels: Optional[int] = None,
                 add_conv: bool = False, temporal: bool = False, temporal_attention: bool = False,
                 temporal_kernel_size=(3, 3, 3), temporal_conv_padding=(1, 1, 1),
                 *, operations=nn, device=None, dtype=None):
        super().__init__()
        ops = dict(operations=operations, device=device, dtype=dtype)
        res = dict(dropout=dropout, zq_channels=zq_channels, add_conv=add_conv, temporal=temporal,
                   temporal_kernel_size=temporal_kernel_size,
                   temporal_conv_padding=temporal_conv_padding, **ops)
        self.block_1 = ResnetBlock(channels, channels, **res)
        self.attn_1 = AttnBlock(channels, zq_channels, add_conv, **ops)
        if temporal_attention:
            self.temporal_attn_1 = TemporalAttnBlock(channels, zq_channels, add_conv, **ops)
        self.block_2 = ResnetBlock(channels, channels, **res)

    def forward(self, h: torch.Tensor, zq: Optional[torch.Tensor] = None,
                attn_zq: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.block_1(h, zq)
        h = self.attn_1(h, attn_zq)
        if hasattr(self, "temporal_attn_1"):
            h = self.temporal_attn_1(h)
        return self.block_2(h, zq)


class DecoderLevel(nn.Module):
    """One resolution of the decoder: ``num_res_blocks + 1`` ResNet blocks, each followed by
    attention (and temporal attention) when the level has it, then, except on level 0,
    an up-sampling."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, attention: bool,
                 temporal_attention: bool, upsample: bool, dropout: float, resamp_with_conv: bool,
                 zq_channels: int, add_conv: bool, temporal: bool, temporal_kernel_size,
                 temporal_conv_padding, *, operations=nn, device=None, dtype=None):
        super().__init__()
        ops = dict(operations=operations, device=device, dtype=dtype)
        self.block = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, dropout, zq_channels,
                        add_conv, temporal, temporal_kernel_size, temporal_conv_padding, **ops)
            for i in range(num_blocks))
        n_attn = num_blocks if attention else 0
        self.attn = nn.ModuleList(AttnBlock(out_channels, zq_channels, add_conv, **ops) for _ in range(n_attn))
        self.temporal_attn = nn.ModuleList(
            TemporalAttnBlock(out_channels, zq_channels, add_conv, **ops)
            for _ in range(n_attn if temporal_attention else 0))
        if upsample:
            self.upsample = Upsample(out_channels, resamp_with_conv, **ops)

    def forward(self, h: torch.Tensor, zq: torch.Tensor, attn_zq: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h, zq)
            if len(self.attn):
                h = self.attn[i](h, attn_zq)
                if len(self.temporal_attn):
                    h = self.temporal_attn[i](h)
        if hasattr(self, "upsample"):
            h = self.upsample(h)
        return h


def _check_channels(ch: int, ch_mult: Sequence[int]) -> None:
    bad = [ch * m for m in ch_mult if (ch * m) % _NORM_GROUPS]
    if bad:
        raise ValueError(f"MoVQ norms use {_NORM_GROUPS} groups: channel counts {bad} "
                         f"(ch={ch}, ch_mult={tuple(ch_mult)}) are not multiples of {_NORM_GROUPS}")


class Encoder(nn.Module):
    """Image encoder: ``[B, in_channels, H, W] -> [B, z_channels, H/2^(L-1), W/2^(L-1)]``
    with L = ``len(ch_mult)`` levels. Level ``i`` has attention iff
    ``resolution // 2^i`` is in ``attn_resolutions``."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], dropout: float, resamp_with_conv: bool,
                 in_channels: int, resolution: int, z_channels: int,
                 operations=nn, device=None, dtype=None):
        super().__init__()
        _check_channels(ch, ch_mult)
        ops = dict(operations=operations, device=device, dtype=dtype)
        self.conv_in = operations.Conv2d(in_channels, ch, 3, padding=1, device=device, dtype=dtype)
        levels, res, block_in = [], resolution, ch
        for i, mult in enumerate(ch_mult):
            last = i == len(ch_mult) - 1
            levels.append(EncoderLevel(block_in, ch * mult, num_res_blocks, res in attn_resolutions,
                                       not last, dropout, resamp_with_conv, **ops))
            block_in = ch * mult
            if not last:
                res //= 2
        self.down = nn.ModuleList(levels)
        self.mid = MidBlock(block_in, dropout, **ops)
        self.norm_out = SpatialNorm(block_in, **ops)
        self.conv_out = operations.Conv2d(block_in, z_channels, 3, padding=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Decoder with latent-conditioned norms: ``z [B, z_channels, h, w]`` and the latent
    ``zq`` (same size) -> ``[B, out_ch, h*2^(L-1), w*2^(L-1)]``.

    ``self.up[i]`` is level ``i`` (level ``L-1`` runs first); level ``i`` has attention iff
    ``resolution // 2^(L-1) * 2^(L-1-i)`` is in ``attn_resolutions``; the middle block always
    has. With ``temporal``/``temporal_attention_block`` the batch is one clip (see
    :class:`ResnetBlock`, :class:`TemporalAttnBlock`).
    """

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], dropout: float, resamp_with_conv: bool,
                 resolution: int, z_channels: int, zq_channels: int, add_conv: bool = False,
                 temporal: bool = False, temporal_mid_blocks: bool = True,
                 temporal_attention_block: bool = False,
                 temporal_kernel_size: Sequence[int] = (3, 3, 3),
                 temporal_conv_padding: Sequence[int] = (1, 1, 1),
                 operations=nn, device=None, dtype=None):
        super().__init__()
        _check_channels(ch, ch_mult)
        ops = dict(operations=operations, device=device, dtype=dtype)
        temporal_cfg = dict(temporal_kernel_size=temporal_kernel_size,
                            temporal_conv_padding=temporal_conv_padding)
        n = len(ch_mult)
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (n - 1)
        self.conv_in = operations.Conv2d(z_channels, block_in, 3, padding=1, device=device, dtype=dtype)
        self.mid = MidBlock(block_in, dropout, zq_channels, add_conv, temporal and temporal_mid_blocks,
                            temporal_attention_block, **temporal_cfg, **ops)
        levels = [None] * n
        for i in reversed(range(n)):
            block_out = ch * ch_mult[i]
            levels[i] = DecoderLevel(block_in, block_out, num_res_blocks + 1, res in attn_resolutions,
                                     temporal_attention_block, i != 0, dropout, resamp_with_conv,
                                     zq_channels, add_conv, temporal, **temporal_cfg, **ops)
            block_in = block_out
            if i != 0:
                res *= 2
        self.up = nn.ModuleList(levels)
        self.norm_out = SpatialNorm(block_in, zq_channels, add_conv, **ops)
        self.conv_out = operations.Conv2d(block_in, out_ch, 3, padding=1, device=device, dtype=dtype)

    def forward(self, z: torch.Tensor, zq: torch.Tensor, *, per_item_attention_norm: bool = False) -> torch.Tensor:
        # Quirk M1: the reference normalises every item inside attention blocks with the
        # latent of the first item of the batch.
        attn_zq = zq if per_item_attention_norm else zq[:1]
        h = self.conv_in(z)
        h = self.mid(h, zq, attn_zq)
        for level in reversed(self.up):
            h = level(h, zq, attn_zq)
        return self.conv_out(F.silu(self.norm_out(h, zq)))


class MoVQ(nn.Module):
    """The MoVQ autoencoder (image or video), built from the official config kwargs.

    Args (the ``configs`` of ``configs.json``; tuples may be given as lists):
        ch, ch_mult, num_res_blocks, attn_resolutions, resolution: layout (see
            :class:`Encoder`, :class:`Decoder`); channel counts must be multiples of 32.
        in_channels, out_ch, z_channels: image and latent channels.
        dropout: dropout inside the ResNet blocks (0 in the release).
        double_z: must be False (a doubled encoder output does not fit ``quant_conv``).
        resamp_with_conv: strided conv / conv after up-sampling (True) or pooling only.
        add_conv: a 3x3 conv on the resized latent inside each decoder norm.
        temporal, temporal_mid_blocks, temporal_kernel_size, temporal_conv_padding:
            3D temporal convolutions in the decoder's ResNet blocks (video MoVQ).
        temporal_attention_block: temporal attention after each decoder attention.
        build_3D_decoder, temporal_blocks, flicker_augmentation: reference options the
            release does not use; only False is supported.
        per_item_attention_norm (keyword only, not a config key): fix for quirk M1, see
            :meth:`decode`. Default False (reference behaviour).
        operations, device, dtype: layer namespace (``torch.nn`` by default, or e.g.
            ``comfy.ops.manual_cast``) and where/how to allocate the parameters.
    """

    def __init__(self, *, ch: int, ch_mult: Sequence[int] = (1, 2, 4, 8), num_res_blocks: int,
                 attn_resolutions: Sequence[int], in_channels: int, out_ch: int, resolution: int,
                 z_channels: int, dropout: float = 0.0, double_z: bool = False,
                 resamp_with_conv: bool = True, add_conv: bool = False, temporal: bool = False,
                 temporal_mid_blocks: bool = True, temporal_attention_block: bool = False,
                 temporal_kernel_size: Sequence[int] = (3, 3, 3),
                 temporal_conv_padding: Sequence[int] = (1, 1, 1),
                 build_3D_decoder: bool = False, temporal_blocks: bool = False,
                 flicker_augmentation: bool = False,
                 per_item_attention_norm: bool = False,
                 operations=None, device=None, dtype=None):
        super().__init__()
        for name, value in (("build_3D_decoder", build_3D_decoder), ("temporal_blocks", temporal_blocks),
                            ("flicker_augmentation", flicker_augmentation)):
            if value:
                raise NotImplementedError(f"MoVQ option {name}=True is not used by Kandinsky Video 1.1 "
                                          "and is not implemented")
        if double_z:
            raise ValueError("double_z=True does not fit quant_conv (z_channels inputs); "
                             "the Kandinsky Video MoVQs use double_z=False")
        operations = nn if operations is None else operations
        common = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                      attn_resolutions=tuple(attn_resolutions), dropout=dropout,
                      resamp_with_conv=resamp_with_conv, resolution=resolution, z_channels=z_channels,
                      operations=operations, device=device, dtype=dtype)
        self.encoder = Encoder(in_channels=in_channels, **common)
        self.quant_conv = operations.Conv2d(z_channels, z_channels, 1, device=device, dtype=dtype)
        self.post_quant_conv = operations.Conv2d(z_channels, z_channels, 1, device=device, dtype=dtype)
        self.decoder = Decoder(out_ch=out_ch, zq_channels=z_channels, add_conv=add_conv, temporal=temporal,
                               temporal_mid_blocks=temporal_mid_blocks,
                               temporal_attention_block=temporal_attention_block,
                               temporal_kernel_size=tuple(temporal_kernel_size),
                               temporal_conv_padding=tuple(temporal_conv_padding), **common)
        self.per_item_attention_norm = per_item_attention_norm

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The compute dtype for input ``x`` (policy: :func:`kv_core.dtypes.layer_compute_dtype`)."""
        return layer_compute_dtype(self.post_quant_conv, x)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, H, W]`` in [-1, 1] -> latents ``[B, z_channels, H/8, W/8]``
        (for 4 levels); encoder then ``quant_conv``, no quantisation."""
        images = images.to(self._compute_dtype(images))
        return self.quant_conv(self.encoder(images))

    def decode(self, latents: torch.Tensor, *, per_item_attention_norm: Optional[bool] = None) -> torch.Tensor:
        """Latents ``[B, z_channels, h, w]`` -> images ``[B, out_ch, 8h, 8w]`` (≈[-1, 1], not
        clipped).

        Video MoVQ: the batch is one chunk of consecutive frames, and its length is the
        temporal axis of the temporal layers. Image MoVQ: items are independent except for
        quirk M1: the attention-block norms of every item use the latent of item 0, as in
        the reference. ``per_item_attention_norm=True`` (default: the module's attribute,
        False unless set) makes each item use its own latent; it changes every output
        item except the first.
        """
        latents = latents.to(self._compute_dtype(latents))
        if per_item_attention_norm is None:
            per_item_attention_norm = self.per_item_attention_norm
        return self.decoder(self.post_quant_conv(latents), latents,
                            per_item_attention_norm=per_item_attention_norm)


def video_chunk_sizes(num_frames: int, chunk_size: Optional[int] = None) -> list[int]:
    """Frame counts of the chunks :func:`decode_video` decodes one after another.

    By default as the reference: ``latents.chunk(N // 4)``, i.e. chunks of
    ``ceil(N / (N // 4))`` frames with a shorter last one (13 -> [5, 5, 3]; 21 -> [5, 5, 5,
    5, 1]). The reference fails for N < 4; here such a video is one chunk of N frames.
    With ``chunk_size``: chunks of that many frames (the last one shorter).
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if chunk_size is None:
        chunk_size = math.ceil(num_frames / (num_frames // 4)) if num_frames >= 4 else num_frames
    elif int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive number of frames, got {chunk_size}")
    chunk_size = int(chunk_size)
    full, rest = divmod(num_frames, chunk_size)
    return [chunk_size] * full + ([rest] if rest else [])


def decode_video(movq: MoVQ, latents: torch.Tensor, chunk_size: Optional[int] = None,
                 progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Decode the latents ``[N, z, h, w]`` of a video with the video MoVQ, chunk by chunk.

    Returns float32 frames ``[N, out_ch, 8h, 8w]`` = ``clip((x + 1) / 2, 0, 1)`` on the
    device of the decoder's output.

    Chunks follow :func:`video_chunk_sizes` (reference: ``latents.chunk(N // 4)``; N < 4
    gives one chunk). Each chunk is one temporal sequence for the decoder's temporal
    layers, so ``chunk_size`` (fewer frames per call, less memory) changes the temporal
    context of every frame and therefore the result; the default reproduces the
    reference. ``progress(done, total)`` is called after each decoded chunk.
    """
    sizes = video_chunk_sizes(latents.shape[0], chunk_size)
    frames = None
    start = 0
    with torch.no_grad():
        for i, chunk in enumerate(latents.split(sizes)):
            decoded = movq.decode(chunk)
            if frames is None:
                frames = torch.empty((latents.shape[0], *decoded.shape[1:]), dtype=torch.float32,
                                     device=decoded.device)
            out = frames[start:start + chunk.shape[0]]
            out.copy_(decoded).add_(1.0).div_(2.0).clamp_(0.0, 1.0)
            start += chunk.shape[0]
            del decoded
            if progress is not None:
                progress(i + 1, len(sizes))
    return frames


def to_uint8_frames(frames: torch.Tensor) -> torch.Tensor:
    """Float frames ``[N, C, H, W]`` in [0, 1] -> uint8 ``[N, H, W, C]``, truncating
    ``x * 255`` toward zero as the reference's ``ToPILImage`` does (quirk P7), not
    rounding."""
    return (frames.float().clamp(0.0, 1.0) * 255.0).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
