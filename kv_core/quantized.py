"""Block-quantized weights as GGUF stores them, dequantized one layer at a time when the
layer runs.

Three GGUF block types, each a block of 32 consecutive weights of one row (the facts of the
layout are those of the GGUF format, ggml's ``block_q8_0``/``block_q4_0``/``block_q4_1``):

========  =====  ========================================================  ============
type      bytes  block layout                                              bits/weight
========  =====  ========================================================  ============
``Q8_0``  34     fp16 scale ``d``, 32 int8 ``q``: ``w = d * q``                 8.5
``Q4_0``  18     fp16 ``d``, 16 bytes of nibbles: ``w = d * (q - 8)``           4.5
``Q4_1``  20     fp16 ``d``, fp16 ``m``, 16 bytes of nibbles: ``w = d * q + m`` 5.0
========  =====  ========================================================  ============

In a nibble block, byte ``j`` holds weight ``j`` in its low and weight ``j + 16`` in its high
four bits. :class:`QuantLinear` and :class:`QuantEmbedding` keep the packed bytes
(``uint8 [rows, row_bytes]``, a buffer: ``.to(device)`` moves them as they are) and
dequantize with torch on the device they are on, into the dtype of the input (Linear) or
:attr:`QuantEmbedding.compute_dtype`: memory holds the packed weights plus one layer's
dequantized matrix at a time. Quantizing is the converter's job (``kv_core.convert``, with
the ``gguf`` package's reference quantizers).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 32
#: type name -> (GGML type id, bytes per block of 32 weights)
QUANT_TYPES = {"Q8_0": (8, 34), "Q4_0": (2, 18), "Q4_1": (3, 20)}


def row_bytes(qtype: str, columns: int) -> int:
    """Bytes of one packed row of ``columns`` weights (a multiple of 32)."""
    if qtype not in QUANT_TYPES:
        raise ValueError(f"unknown quantization {qtype!r}; known: {sorted(QUANT_TYPES)}")
    if columns % BLOCK:
        raise ValueError(f"{qtype} packs rows of a multiple of {BLOCK} weights, got {columns}")
    return columns // BLOCK * QUANT_TYPES[qtype][1]


def _fp16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The little-endian fp16 at byte ``start`` of every block ``[..., n, bytes]`` as float32 ``[..., n, 1]``."""
    pair = blocks[..., start:start + 2].contiguous()
    return pair.view(torch.float16).float()


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """16 bytes per block ``[..., n, 16]`` -> the 32 4-bit values ``[..., n, 32]`` (low
    nibbles first, then high), as float32."""
    return torch.cat((packed & 0x0F, packed >> 4), dim=-1).float()


def dequantize(packed: torch.Tensor, qtype: str, columns: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Packed rows ``uint8 [..., row_bytes]`` -> weights ``[..., columns]`` in ``dtype``, on
    the device of ``packed``."""
    size = QUANT_TYPES[qtype][1]
    lead = packed.shape[:-1]
    if packed.shape[-1] != row_bytes(qtype, columns):
        raise ValueError(f"{qtype} rows of {columns} weights take {row_bytes(qtype, columns)} bytes, "
                         f"got {packed.shape[-1]}")
    blocks = packed.reshape(*lead, columns // BLOCK, size)
    d = _fp16(blocks, 0)
    if qtype == "Q8_0":
        w = d * blocks[..., 2:].contiguous().view(torch.int8).float()
    elif qtype == "Q4_0":
        w = d * (_nibbles(blocks[..., 2:]) - 8.0)
    else:
        w = d * _nibbles(blocks[..., 4:]) + _fp16(blocks, 2)
    return w.reshape(*lead, columns).to(dtype)


class QuantLinear(nn.Module):
    """``Linear(in_features, out_features, bias=False)`` with block-quantized weights,
    dequantized (into the input's dtype) each time it runs. ``qweight``: ``uint8
    [out_features, row_bytes]``. It has no ``weight`` tensor: code that casts its input to
    a layer's weight dtype (transformers' T5 feed-forward) leaves the input as it is."""

    weight = None

    def __init__(self, in_features: int, out_features: int, qtype: str, *, device=None):
        super().__init__()
        self.in_features, self.out_features, self.qtype = in_features, out_features, qtype
        self.register_buffer("qweight", torch.empty(out_features, row_bytes(qtype, in_features), dtype=torch.uint8,
                                                    device=device))

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.qweight, self.qtype, self.in_features, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype}"


class QuantEmbedding(nn.Module):
    """``Embedding(num_embeddings, embedding_dim)`` with block-quantized rows: only the rows
    looked up are dequantized, into :attr:`compute_dtype`."""

    weight = None

    def __init__(self, num_embeddings: int, embedding_dim: int, qtype: str, *, compute_dtype=torch.float32,
                 device=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.qtype = num_embeddings, embedding_dim, qtype
        self.compute_dtype = compute_dtype
        self.register_buffer("qweight", torch.empty(num_embeddings, row_bytes(qtype, embedding_dim),
                                                    dtype=torch.uint8, device=device))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return dequantize(self.qweight[ids], self.qtype, self.embedding_dim, self.compute_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, qtype={self.qtype}"


def quantized_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``module`` (packed weights counted as stored)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
