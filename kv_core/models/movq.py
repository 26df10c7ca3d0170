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

from ..dtypes import layer_compute_dtype
from . import constructor_config
from .layers import LayerFactory
from .movq_blocks import (
    NORM_GROUPS,
    MoVQDecoderLevel,
    MoVQEncoderLevel,
    MoVQMidBlock,
    MoVQSpatialNorm,
)

__all__ = [
    "MoVQ",
    "MoVQEncoder",
    "MoVQDecoder",
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

def _check_channels(ch: int, ch_mult: Sequence[int]) -> None:
    bad = [ch * m for m in ch_mult if (ch * m) % NORM_GROUPS]
    if bad:
        raise ValueError(f"MoVQ norms use {NORM_GROUPS} groups: channel counts {bad} "
                         f"(ch={ch}, ch_mult={tuple(ch_mult)}) are not multiples of {NORM_GROUPS}")


class MoVQEncoder(nn.Module):
    """Image encoder: ``[B, in_channels, H, W] -> [B, z_channels, H/2^(L-1), W/2^(L-1)]``
    with L = ``len(ch_mult)`` levels. Level ``i`` has attention iff
    ``resolution // 2^i`` is in ``attn_resolutions``."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], dropout: float, resamp_with_conv: bool,
                 in_channels: int, resolution: int, z_channels: int,
                 factory: LayerFactory):
        super().__init__()
        _check_channels(ch, ch_mult)
        self.conv_in = factory.conv2d(in_channels, ch, 3, padding=1)
        levels, res, block_in = [], resolution, ch
        for i, mult in enumerate(ch_mult):
            last = i == len(ch_mult) - 1
            levels.append(MoVQEncoderLevel(block_in, ch * mult, num_res_blocks, res in attn_resolutions,
                                           not last, dropout, resamp_with_conv, factory=factory))
            block_in = ch * mult
            if not last:
                res //= 2
        self.down = nn.ModuleList(levels)
        self.mid = MoVQMidBlock(block_in, dropout, factory=factory)
        self.norm_out = MoVQSpatialNorm(block_in, factory=factory)
        self.conv_out = factory.conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class MoVQDecoder(nn.Module):
    """Decoder with latent-conditioned norms: ``z [B, z_channels, h, w]`` and the latent
    ``zq`` (same size) -> ``[B, out_ch, h*2^(L-1), w*2^(L-1)]``.

    ``self.up[i]`` is level ``i`` (level ``L-1`` runs first); level ``i`` has attention iff
    ``resolution // 2^(L-1) * 2^(L-1-i)`` is in ``attn_resolutions``; the middle block always
    has. With ``temporal``/``temporal_attention_block`` the batch is one clip (see
    :class:`~.movq_blocks.MoVQResnetBlock`, :class:`~.movq_blocks.MoVQTemporalAttnBlock`).
    """

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], dropout: float, resamp_with_conv: bool,
                 resolution: int, z_channels: int, zq_channels: int, add_conv: bool = False,
                 temporal: bool = False, temporal_mid_blocks: bool = True,
                 temporal_attention_block: bool = False,
                 temporal_kernel_size: Sequence[int] = (3, 3, 3),
                 temporal_conv_padding: Sequence[int] = (1, 1, 1),
                 factory: LayerFactory):
        super().__init__()
        _check_channels(ch, ch_mult)
        temporal_cfg = dict(temporal_kernel_size=temporal_kernel_size,
                            temporal_conv_padding=temporal_conv_padding)
        n = len(ch_mult)
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (n - 1)
        self.conv_in = factory.conv2d(z_channels, block_in, 3, padding=1)
        self.mid = MoVQMidBlock(block_in, dropout, zq_channels, add_conv, temporal and temporal_mid_blocks,
                                temporal_attention_block, **temporal_cfg, factory=factory)
        levels = [None] * n
        for i in reversed(range(n)):
            block_out = ch * ch_mult[i]
            levels[i] = MoVQDecoderLevel(block_in, block_out, num_res_blocks + 1, res in attn_resolutions,
                                         temporal_attention_block, i != 0, dropout, resamp_with_conv,
                                         zq_channels, add_conv, temporal, **temporal_cfg, factory=factory)
            block_in = block_out
            if i != 0:
                res *= 2
        self.up = nn.ModuleList(levels)
        self.norm_out = MoVQSpatialNorm(block_in, zq_channels, add_conv, factory=factory)
        self.conv_out = factory.conv2d(block_in, out_ch, 3, padding=1)

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
            :class:`MoVQEncoder`, :class:`MoVQDecoder`); channel counts must be multiples of 32.
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
        config = constructor_config(locals())
        super().__init__()
        self.config = config
        for name, value in (("build_3D_decoder", build_3D_decoder), ("temporal_blocks", temporal_blocks),
                            ("flicker_augmentation", flicker_augmentation)):
            if value:
                raise NotImplementedError(f"MoVQ option {name}=True is not used by Kandinsky Video 1.1 "
                                          "and is not implemented")
        if double_z:
            raise ValueError("double_z=True does not fit quant_conv (z_channels inputs); "
                             "the Kandinsky Video MoVQs use double_z=False")
        factory = LayerFactory(operations, device, dtype)
        common = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                      attn_resolutions=tuple(attn_resolutions), dropout=dropout,
                      resamp_with_conv=resamp_with_conv, resolution=resolution, z_channels=z_channels,
                      factory=factory)
        self.encoder = MoVQEncoder(in_channels=in_channels, **common)
        self.quant_conv = factory.conv2d(z_channels, z_channels, 1)
        self.post_quant_conv = factory.conv2d(z_channels, z_channels, 1)
        self.decoder = MoVQDecoder(out_ch=out_ch, zq_channels=z_channels, add_conv=add_conv, temporal=temporal,
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
