"""Weight and compute dtypes of the networks the loaders make (the loaders' ``weight_dtype``
choice and ComfyUI's per-device defaults; the rules are ``kv_core.dtypes``)."""
from __future__ import annotations

import os

import torch

import comfy.model_management as mm
import comfy.ops

from ...kv_core import dtypes


WEIGHT_DTYPES = ("default", "bf16", "fp16", "fp8_e4m3fn")
WEIGHT_DTYPE_TOOLTIP = (
    "Storage dtype of the weights. default: ComfyUI's choice for this device (fp16/bf16 on a "
    "GPU for the U-Nets, its VAE dtype for the MoVQs, bf16 or fp32 for the text encoder). "
    "fp8_e4m3fn halves the memory of bf16; layers compute in fp16/bf16 (fp32 on a CPU).")
_NAMED = {"bf16": torch.bfloat16, "fp16": torch.float16,
          "fp8_e4m3fn": getattr(torch, "float8_e4m3fn", None)}
FP8 = dtypes.FP8_DTYPES


def file_params(path: str) -> int:
    """Rough parameter count from the file size (2 bytes per parameter), for ComfyUI's
    dtype heuristics."""
    try:
        if os.path.isdir(path):
            return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs) // 4
        return os.path.getsize(path) // 2
    except OSError:
        return 0


def weight_and_compute_dtype(choice: str, role: str, load_device, params: int = 0
                             ) -> tuple[torch.dtype, torch.dtype]:
    """(weight dtype, compute dtype) for a network role: ``unet``, ``movq`` or ``text``."""
    if choice not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {WEIGHT_DTYPES}, got {choice!r}")
    if choice == "default":
        if role == "unet":
            weight = mm.unet_dtype(load_device, params, [torch.float16, torch.bfloat16, torch.float32])
        elif role == "movq":
            weight = mm.vae_dtype(load_device, [torch.bfloat16, torch.float32])
        else:  # T5 overflows in fp16; bf16 is what it was trained in
            weight = torch.bfloat16 if mm.should_use_bf16(load_device) else torch.float32
    else:
        weight = _NAMED[choice]
        if weight is None:
            raise ValueError(f"this PyTorch has no {choice}")
    host = None
    if role == "unet":
        host = mm.unet_manual_cast(weight, load_device, [torch.float16, torch.bfloat16, torch.float32]) or weight
    bf16 = host is None and weight in FP8 and mm.should_use_bf16(load_device)
    return weight, dtypes.compute_dtype_for_weights(weight, host, bf16_supported=bf16)


def operations_for(weight: torch.dtype, compute: torch.dtype, load_device):
    """The ``comfy.ops`` namespace for these dtypes (casting layers when they differ)."""
    return comfy.ops.pick_operations(weight, compute, load_device=load_device)
