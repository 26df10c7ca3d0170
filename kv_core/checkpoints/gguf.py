"""Flan-UL2's encoder as a GGUF file with 8- or 4-bit weights (the format ComfyUI users load
quantized T5 encoders in), read and written with the ``gguf`` package (ggml's own Python
library; an optional dependency: ``pip install gguf``).

File layout (written by :func:`write_t5_gguf`, read by :func:`load_t5_gguf`):

* tensor names are the Hugging Face keys of the encoder (``shared.weight``,
  ``encoder.block.0.layer.0.SelfAttention.q.weight``, ...), shapes as in PyTorch;
* every matrix whose rows are a multiple of 32 wide (the token embedding and all linear
  layers: 99.99 % of the weights) in the chosen block type (``Q8_0``, ``Q4_0`` or ``Q4_1``,
  see :mod:`kv_core.quantized`); the rest (layer norms, relative-attention biases) in F32;
* string metadata: the keys of our safetensors (``kandinsky_video.network`` = ``t5_encoder``,
  ``kandinsky_video.config`` the T5Config JSON, ``kandinsky_video.tokenizer`` the tokenizer
  files, ``kandinsky_video.dtype`` the block type, ``kandinsky_video.source``), and
  ``general.architecture`` ``flan-ul2-encoder``.

Loading keeps the packed bytes (memory-mapped from the file, zero copy) in
:class:`~kv_core.quantized.QuantLinear`/:class:`~kv_core.quantized.QuantEmbedding` layers
that dequantize one layer at a time when it runs. A file of this layout with other block
types (K-quants, for instance, written by another tool) loads too: those tensors are
dequantized once, at load, by the ``gguf`` package into the compute dtype.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Mapping

import torch

from ..quantized import BLOCK, QUANT_TYPES, QuantEmbedding, QuantLinear, row_bytes
from ..kinds import T5_ENCODER
from .formats import META_CONFIG, META_DTYPE, META_NETWORK, CheckpointError, replaced_atomically

GGUF_SUFFIX = ".gguf"
ARCHITECTURE = "flan-ul2-encoder"
#: converter choice -> GGUF block type
GGUF_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1"}
_ROWS_PER_CHUNK = 1024  # rows quantized at a time (bounds the quantizer's temporaries)


def require_gguf():
    """The ``gguf`` module, or a :class:`CheckpointError` that says how to install it."""
    try:
        import gguf
    except ImportError:
        raise CheckpointError("reading or writing .gguf text encoders needs the 'gguf' package (ggml's GGUF "
                              "library): pip install gguf (in ComfyUI's Python environment)") from None
    return gguf


def quantizes(key: str, shape: tuple[int, ...]) -> bool:
    """Whether the converter stores tensor ``key`` of ``shape`` in the block type: matrices
    whose rows are a multiple of 32 wide, except relative-attention bias tables."""
    return len(shape) == 2 and shape[-1] % BLOCK == 0 and "relative_attention_bias" not in key


def write_t5_gguf(dst, keys, shapes: Mapping[str, tuple], get, *, qtype: str, metadata: Mapping[str, str],
                  release=None) -> Path:
    """Write the tensors ``keys`` (read one at a time with ``get(key)``, freed after writing;
    ``release(tensor)`` hands a read tensor's file pages back) to a GGUF file ``dst``
    (written to a temporary file beside it, renamed when complete)."""
    gguf = require_gguf()
    import numpy as np

    if qtype not in QUANT_TYPES:
        raise ValueError(f"unknown GGUF block type {qtype!r}; known: {sorted(QUANT_TYPES)}")
    ggml_type = gguf.GGMLQuantizationType[qtype]
    dst = Path(dst)
    with replaced_atomically(dst, GGUF_SUFFIX) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
        for key, value in metadata.items():
            writer.add_string(key, value)
        for key in keys:
            shape = tuple(shapes[key])
            if quantizes(key, shape):
                nbytes = shape[0] * row_bytes(qtype, shape[1])
                writer.add_tensor_info(key, (shape[0], nbytes // shape[0]), np.dtype(np.uint8), nbytes,
                                       raw_dtype=ggml_type)
            else:
                n = 1
                for s in shape:
                    n *= s
                writer.add_tensor_info(key, shape, np.dtype(np.float32), 4 * n)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for key in keys:
            t = get(key)
            data = t.detach().to("cpu", torch.float32).numpy()
            if quantizes(key, tuple(shapes[key])):
                data = np.concatenate([gguf.quants.quantize(data[i:i + _ROWS_PER_CHUNK], ggml_type)
                                       for i in range(0, data.shape[0], _ROWS_PER_CHUNK)])
            writer.write_tensor_data(np.ascontiguousarray(data))
            if release is not None:
                release(t)
            del t, data
        writer.close()
    return dst


class GGUFFile:
    """The string metadata and tensors of a GGUF file (memory-mapped, nothing read yet)."""

    def __init__(self, path):
        gguf = require_gguf()
        self.path = Path(path)
        try:
            self._reader = gguf.GGUFReader(str(self.path))
        except Exception as err:  # noqa: BLE001  (the reader raises ValueError and others on bad files)
            raise CheckpointError(f"could not read {self.path} (truncated, damaged or not a GGUF file): "
                                  f"{type(err).__name__}: {err}") from None
        self.metadata: dict[str, str] = {}
        for name, f in self._reader.fields.items():
            if f.types and f.types[0] == gguf.GGUFValueType.STRING:
                self.metadata[name] = bytes(f.parts[f.data[0]]).decode("utf-8")
        self.tensors = {t.name: t for t in self._reader.tensors}

    def qtype(self, key: str) -> str:
        return self.tensors[key].tensor_type.name

    def shape(self, key: str) -> tuple[int, ...]:
        """The tensor's PyTorch shape (GGUF stores dimensions innermost first)."""
        return tuple(int(d) for d in reversed(self.tensors[key].shape.tolist()))

    def raw(self, key: str) -> torch.Tensor:
        """The stored data, zero copy (a view of the read-only mapping: never written)."""
        data = self.tensors[key].data
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "non-writable array": it is only read
            return torch.from_numpy(data)

    def dense(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        """The tensor dequantized (by the ``gguf`` package for block types other than F32/F16)."""
        gguf = require_gguf()
        t = self.tensors[key]
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            return self.raw(key).reshape(self.shape(key)).to(dtype)
        try:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as err:
            raise CheckpointError(f"{self.path}: tensor {key!r} is stored as {t.tensor_type.name}, which the "
                                  f"gguf package cannot dequantize ({err})") from None
        return torch.from_numpy(values.reshape(self.shape(key))).to(dtype)


def _set(model, key: str, module) -> None:
    parent_name, _, name = key.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, name, module)


def load_t5_gguf(path, build_model, *, device=None, dtype=torch.bfloat16):
    """A transformers ``T5EncoderModel`` from a GGUF file of :func:`write_t5_gguf`'s layout:
    Q8_0/Q4_0/Q4_1 matrices stay packed (``QuantLinear``/``QuantEmbedding``, dequantized per
    layer into ``dtype`` when they run), other tensors are read into ``dtype``.
    ``build_model(config_dict, path=...)`` makes the encoder on the meta device
    (:func:`kv_core.checkpoints.load_t5_encoder` passes its own). Raises
    :class:`CheckpointError` for a GGUF file that is not a T5 encoder of this layout."""
    from .networks import check_state_dict

    dtype = dtype or torch.bfloat16
    gf = GGUFFile(path)
    network = gf.metadata.get(META_NETWORK)
    if network not in (None, T5_ENCODER) or META_CONFIG not in gf.metadata:
        found = network or gf.metadata.get("general.architecture", "unknown")
        raise CheckpointError(f"{path}: a GGUF file of {found!r}, not the Flan-UL2 encoder that kv_core.convert "
                              f"writes (metadata {META_NETWORK} = t5_encoder and {META_CONFIG})")
    try:
        config = json.loads(gf.metadata[META_CONFIG])
    except ValueError as err:
        raise CheckpointError(f"{path}: {META_CONFIG} is not JSON: {err}") from None
    model = build_model(config, path=path)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    embed = "shared.weight"
    shapes = {gf_key: gf.shape(gf_key) for gf_key in gf.tensors}
    found = dict(shapes)
    if embed in shapes:
        found["encoder.embed_tokens.weight"] = shapes[embed]
    check_state_dict(expected, found, path=path, network=T5_ENCODER)
    device = torch.device(device or "cpu")
    state = {}
    for key in shapes:
        qtype = gf.qtype(key)
        if qtype in QUANT_TYPES and len(shapes[key]) == 2:
            rows, cols = shapes[key]
            packed = gf.raw(key).reshape(rows, row_bytes(qtype, cols)).to(device)
            if key == embed:
                layer = QuantEmbedding(rows, cols, qtype, compute_dtype=dtype, device="meta")
                layer.qweight = packed
                model.shared = layer
                model.encoder.embed_tokens = layer
            else:
                layer = QuantLinear(cols, rows, qtype, device="meta")
                layer.qweight = packed
                _set(model, key.removesuffix(".weight"), layer)
        else:
            state[key] = gf.dense(key, dtype).to(device)
    if embed in state:
        state["encoder.embed_tokens.weight"] = state[embed]
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    leftover = [k for k in missing if not k.endswith(".qweight")]  # packed weights are already in place
    if leftover or unexpected:
        raise CheckpointError(f"{path}: tensors missing {leftover[:3]} or unexpected {unexpected[:3]}")
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if still_meta:
        raise CheckpointError(f"{path}: no tensor for {still_meta[:3]}")
    model.requires_grad_(False)
    model.kv_gguf_type = gf.metadata.get(META_DTYPE, "")
    return model.eval()
