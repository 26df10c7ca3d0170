"""The dtype policy of Kandinsky Video: which dtype a network computes in and which of its
tensors are stored in fp8. Every module of ``kv_core`` and the ComfyUI nodes ask here.

Compute dtype (:func:`compute_dtype`, :func:`layer_compute_dtype`): a network runs in its
weights' dtype when that is a compute dtype (:data:`COMPUTE_DTYPES`) and its layers use the
weights as stored. When the layers cast their weights at run time (manual-cast operations,
which set ``comfy_cast_weights``) or the weights are in a storage-only dtype (fp8), the
caller chose the compute dtype, and it is the input's. For a weight dtype picked by a host,
:func:`compute_dtype_for_weights` gives the compute dtype beside it (fp8 weights compute in
bfloat16 where the device supports it, else float32).

fp8 storage: one rule for files (:mod:`kv_core.convert`), the loaders given
``dtype=float8_*`` and networks already loaded in their compute dtype (:func:`store_fp8`,
what the ComfyUI loaders do): :func:`storage_dtype`. A tensor may be fp8 only if it is a
floating matrix or kernel (:func:`fp8_matrix`: two or more dimensions, more than one value)
and a candidate by name (:func:`fp8_candidate`: not the first or last layers, the embedding
tables, T5's feed-forward outputs ``wo`` or the null embedding), and only if its fp8 cast
keeps the error under :data:`FP8_MAX_RELATIVE_ERROR` of its norm. Measured on the golden
networks (``bench/fp8_rule.py``): keeping the first and last layers lowers the output
error of four of the five networks (interpolation U-Net 0.100 -> 0.096, image MoVQ decode
0.143 -> 0.137, encode 0.143 -> 0.129, video MoVQ 0.094 -> 0.089; keyframe U-Net 0.319 ->
0.321) for 2 to 6 small matrices each. T5's ``wo`` stays out of fp8 as transformers keeps it
out of fp16 (``_keep_in_fp32_modules``): its activations are the largest of the encoder.
"""
from __future__ import annotations

import re
import torch
from torch import nn

#: dtypes a network can compute in
COMPUTE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: the fp8 storage dtypes this PyTorch has
FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))
#: dtype of the non-fp8 tensors of an fp8 file, and of fp8 weights loaded without fp8 support
FP8_COMPANION_DTYPE = torch.bfloat16
#: a matrix is kept in :data:`FP8_COMPANION_DTYPE` if its fp8 cast loses more than this fraction of its norm
FP8_MAX_RELATIVE_ERROR = 0.25
#: the U-Nets' learned unconditional embedding, always float32
NULL_EMBEDDING_KEY = "null_embedding"

# tensors never stored as fp8: the first and last layers, the embedding tables and T5's
# feed-forward outputs
_FP8_EXCLUDED = re.compile(
    r"^(in_layer|image_in_layer|out_layer|temporal_conv_in|temporal_conv_out|skip_embeddings"
    r"|quant_conv|post_quant_conv|encoder\.conv_in|encoder\.conv_out|decoder\.conv_in|decoder\.conv_out"
    r"|shared|encoder\.embed_tokens|encoder\.block\.[0-9]+\.layer\.[0-9]+\.DenseReluDense\.wo)\."
    r"|relative_attention_bias\.weight$")

_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16",
            "bf16": "bfloat16", "fp8": "float8_e4m3fn", "fp8_e4m3fn": "float8_e4m3fn",
            "fp8_e5m2": "float8_e5m2"}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(value) -> torch.dtype | None:
    """``torch.float16``, ``"fp16"``, ``"float16"``, ``"bf16"``, ``"fp8"``... -> torch dtype
    (None stays None). Raises ``ValueError`` for a name that is no torch dtype."""
    if value is None or isinstance(value, torch.dtype):
        return value
    name = _ALIASES.get(str(value).lower(), str(value).lower())
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {value!r}")
    return dtype


def is_fp8(dtype) -> bool:
    return dtype in FP8_DTYPES


def is_compute_dtype(dtype) -> bool:
    """Whether a network can compute in ``dtype`` (not a storage-only dtype such as fp8)."""
    return dtype in COMPUTE_DTYPES


# --- compute dtype ---------------------------------------------------------------------------

def compute_dtype(weight_dtype: torch.dtype, input_dtype: torch.dtype, *, casts_weights: bool = False
                  ) -> torch.dtype:
    """The dtype a layer with weights in ``weight_dtype`` computes in for an input in
    ``input_dtype``: the weights' dtype, unless the layer casts its weights at run time
    (``casts_weights``) or stores them in a non-compute dtype (fp8); then the input's."""
    if casts_weights or not is_compute_dtype(weight_dtype):
        return input_dtype
    return weight_dtype


def casts_weights(layer: nn.Module) -> bool:
    """True for a layer that casts its weights at run time (ComfyUI's manual-cast layers and
    layers holding fp8 weights set ``comfy_cast_weights``)."""
    return bool(getattr(layer, "comfy_cast_weights", False))


def layer_compute_dtype(layer: nn.Module, x: torch.Tensor) -> torch.dtype:
    """The dtype a network runs in, judged from one of its weighted layers and its input
    ``x`` (see :func:`compute_dtype`)."""
    return compute_dtype(layer.weight.dtype, x.dtype, casts_weights=casts_weights(layer))


def supports_fp8_weights(operations) -> bool:
    """True for operation namespaces whose layers cast their weights at run time (ComfyUI's
    ``comfy.ops`` manual-cast classes set ``comfy_cast_weights``)."""
    return casts_weights(getattr(operations, "Linear", None))


def compute_dtype_for_weights(weight: torch.dtype, host_compute: torch.dtype | None = None, *,
                              bf16_supported: bool = False) -> torch.dtype:
    """The compute dtype beside weights stored in ``weight``: ``host_compute`` when a host
    chose one (ComfyUI's manual-cast choice for a U-Net), else the weights' own dtype, and for
    fp8 weights bfloat16 where the device supports it (``bf16_supported``), else float32.
    Never an fp8 dtype."""
    compute = host_compute
    if compute is None:
        compute = (torch.bfloat16 if bf16_supported else torch.float32) if is_fp8(weight) else weight
    if is_fp8(weight) and is_fp8(compute):
        compute = torch.float32
    return compute


class InputDtype:
    """Calls ``module`` with its first input cast to ``dtype`` (sampling loops keep latents
    in float32; kv_core networks compute in their input's dtype when they cast weights)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        self.module = module
        self.dtype = dtype

    def __call__(self, x, *args, **kwargs):
        return self.module(x.to(self.dtype), *args, **kwargs)


# --- fp8 storage -----------------------------------------------------------------------------

def fp8_matrix(tensor: torch.Tensor) -> bool:
    """Whether a tensor may be stored as fp8 at all: a floating matrix or kernel (two or more
    dimensions, more than one value). ``tensor`` may be on the meta device."""
    return tensor.is_floating_point() and tensor.ndim >= 2 and tensor.numel() > 1


def fp8_candidate(key: str, tensor: torch.Tensor) -> bool:
    """Whether a tensor named ``key`` (state-dict name) is stored as fp8 in a file when its
    values allow (shape and name only: ``tensor`` may be on the meta device);
    :func:`storage_dtype` then checks its values."""
    return key != NULL_EMBEDDING_KEY and fp8_matrix(tensor) and not _FP8_EXCLUDED.search(key)


def storage_dtype(key: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor named ``key`` gets when a network is stored (or loaded) as ``dtype``.

    Non-floating tensors keep theirs and ``null_embedding`` stays float32. For an fp8
    ``dtype`` only the candidates (:func:`fp8_candidate`) become fp8, and only if their fp8
    cast keeps the error under :data:`FP8_MAX_RELATIVE_ERROR` of their norm; every other
    floating tensor uses :data:`FP8_COMPANION_DTYPE`.
    """
    if not tensor.is_floating_point():
        return tensor.dtype
    if key == NULL_EMBEDDING_KEY:
        return torch.float32
    if not is_fp8(dtype):
        return dtype
    if not fp8_candidate(key, tensor):
        return FP8_COMPANION_DTYPE
    x = tensor.float()
    norm = x.norm()
    if norm == 0:
        return FP8_COMPANION_DTYPE
    error = x.to(dtype).float().sub_(x)  # in place: one float32 temporary fewer per matrix
    if error.norm() > FP8_MAX_RELATIVE_ERROR * norm:
        return FP8_COMPANION_DTYPE
    return dtype


def load_dtype(key: str, tensor: torch.Tensor, dtype: torch.dtype | None, keep_fp8: bool) -> torch.dtype:
    """The dtype of a checkpoint tensor once loaded with the loaders' ``dtype``: fp8 asks
    for :func:`storage_dtype` (fp8 tensors of the file stay fp8); otherwise every floating
    tensor becomes ``dtype`` (None: as stored), except that the fp8 tensors of a file stay
    fp8 when ``keep_fp8`` (layers that cast at run time) and otherwise become ``dtype`` or
    :data:`FP8_COMPANION_DTYPE`."""
    if not tensor.is_floating_point():
        return tensor.dtype
    if is_fp8(dtype):
        return tensor.dtype if is_fp8(tensor.dtype) else storage_dtype(key, tensor, dtype)
    if is_fp8(tensor.dtype):
        return tensor.dtype if keep_fp8 else (dtype or FP8_COMPANION_DTYPE)
    return dtype or tensor.dtype


def store_fp8(module: nn.Module, fp8: torch.dtype) -> nn.Module:
    """Store in ``fp8`` the weights of a loaded network's layers that can cast at run time
    (those with a ``comfy_cast_weights`` attribute: ComfyUI's ``comfy.ops`` classes) that
    the file rule puts in fp8 (:func:`storage_dtype` of their state-dict name, e.g.
    ``down_samples.0....to_query.weight``); those layers then cast their weights at run
    time. Every other tensor keeps its dtype. Returns ``module``."""
    for name, m in module.named_modules():
        if not hasattr(m, "comfy_cast_weights") or isinstance(m, nn.Embedding):
            continue
        w = getattr(m, "weight", None)
        key = f"{name}.weight" if name else "weight"
        if isinstance(w, nn.Parameter) and storage_dtype(key, w, fp8) == fp8:
            m.weight = nn.Parameter(w.detach().to(fp8), requires_grad=False)
            m.comfy_cast_weights = True
    return module
