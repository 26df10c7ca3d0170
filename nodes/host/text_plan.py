"""Load Text Encoder's plan, found without reading the weights: the files, the release's
configs.json settings, the devices and the dtypes (:func:`text_plan`). Load Text Encoder
loads by it, and Text Encode keys its prompt cache by its identity before the loader runs
(``nodes/host/prompt_cache.py``), so both live here in the glue."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

import comfy.model_management as mm

from ...kv_core import checkpoints as ckpt
from ...kv_core.text_identity import TextIdentity
from .devices import offload_device_for, resolve_device
from .model_files import release_configs, resolve_model_file, resolve_text_encoder
from .weight_dtype import file_params, weight_and_compute_dtype


def _text_settings(projections_path: str, projections_name: str) -> tuple[int, int | None, str | None]:
    """``(tokens_length, context_dim, configs.json path)`` from the release's configs.json beside
    the projections, read and checked by :func:`kv_core.checkpoints.text_settings` (128 and None
    without configs.json or those entries); a configs.json that cannot be used is refused."""
    configs = release_configs(projections_path)
    try:
        tokens_length, context_dim = ckpt.text_settings(configs or None)
    except ckpt.CheckpointError as err:
        raise ValueError(f"The configs.json beside the text projections '{projections_name}' cannot be used: "
                         f"{err}") from None
    return tokens_length, context_dim, configs


@dataclass(frozen=True)
class TextPlan:
    """What Load Text Encoder will load, found without reading the weights: the files, the
    configs.json settings, the devices and the dtypes."""

    encoder_path: str
    projections_path: str
    tokens_length: int
    context_dim: int | None
    configs: str | None
    load_device: torch.device
    offload_device: torch.device
    weight: torch.dtype | str   # "gguf": the file's 8/4-bit blocks
    compute: torch.dtype

    def identity(self) -> TextIdentity:
        """The cache identity of these parts (content fingerprints; the projections are
        loaded in float32)."""
        return TextIdentity.of_files(self.encoder_path, self.projections_path, tokens_length=self.tokens_length,
                                     weight_dtype=self.weight, compute_dtype=self.compute,
                                     projection_dtype=torch.float32, context_dim=self.context_dim)


def is_gguf(path: str) -> bool:
    return os.path.isfile(path) and path.endswith(".gguf")


def gguf_dtypes(weight_dtype: str, compute: torch.dtype, name: str) -> tuple[str, torch.dtype]:
    """(weight, compute) of a ``.gguf`` encoder: its weights stay in the file's 8/4-bit blocks
    (weight ``"gguf"``); ``weight_dtype`` picks the dtype they are dequantized into per layer:
    bf16 (default where the device supports it, and for fp8_e4m3fn) or float32. T5 overflows
    in fp16, so fp16 is refused."""
    if weight_dtype == "fp16":
        raise ValueError(f"'{name}' is an 8/4-bit .gguf text encoder: it computes in bf16 or float32 (T5 overflows "
                         "in fp16); set weight_dtype to default or bf16")
    return "gguf", torch.bfloat16 if weight_dtype in ("bf16", "fp8_e4m3fn") else compute


def text_plan(text_encoder_name: str, projections_name: str, weight_dtype: str, device: str = "default") -> TextPlan:
    """The :class:`TextPlan` of Load Text Encoder's inputs (raises as the loader does for a
    missing file or an unusable configs.json)."""
    encoder_path = resolve_text_encoder(text_encoder_name)
    projections_path = resolve_model_file(projections_name, ckpt.TEXT_PROJECTIONS)
    tokens_length, context_dim, configs = _text_settings(projections_path, projections_name)  # fails fast
    load_device = resolve_device(device, mm.text_encoder_device())
    offload_device = offload_device_for(load_device, mm.text_encoder_offload_device())
    weight, compute = weight_and_compute_dtype(weight_dtype, "text", load_device, file_params(encoder_path))
    if is_gguf(encoder_path):
        weight, compute = gguf_dtypes(weight_dtype, compute, text_encoder_name)
    return TextPlan(encoder_path, projections_path, tokens_length, context_dim, configs, load_device, offload_device,
                    weight, compute)
