"""Where a loaded network runs: the loaders' ``device`` choice.

``default`` is ComfyUI's choice for that kind of network (its torch device for the U-Nets
and MoVQs, its text-encoder device for the text encoder); ``cpu`` and each accelerator the
host's torch sees (``cuda:0``, ``cuda:1``... ``xpu:0``..., ``mps``) put that one network
there. The choice becomes the network's ``ModelPatcher`` load device; the stages move
their inputs to it (``kv_core.stages``' ``device`` hook) and hand their outputs on through
ComfyUI's intermediate device, so stages on different devices work together.
"""
from __future__ import annotations

import torch

from comfy_api.latest import io

DEFAULT = "default"
DEVICE_TOOLTIP = (
    "Where this network runs. default: ComfyUI's choice. cpu, or one GPU by number (cuda:0, cuda:1...), "
    "puts this network alone there, e.g. the 8.7B text encoder on a second GPU or on the CPU (slow; "
    "pick weight_dtype bf16 there to halve its memory). The list shows the devices of this machine; a "
    "workflow saved elsewhere with a device missing here is refused before anything runs.")


def device_choices() -> list[str]:
    """``default``, ``cpu`` and every accelerator this process's torch sees."""
    choices = [DEFAULT, "cpu"]
    if torch.cuda.is_available():
        choices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        choices += [f"xpu:{i}" for i in range(xpu.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        choices.append("mps")
    return choices


def device_input() -> io.Combo.Input:
    """The loaders' last input: optional, so workflows saved before it existed load with
    ``default``."""
    return io.Combo.Input("device", options=device_choices(), default=DEFAULT, optional=True,
                          tooltip=DEVICE_TOOLTIP)


def resolve_device(choice, default: torch.device) -> torch.device:
    """The torch device for a loader's ``device`` choice (``default`` or None: ``default``).
    ``ValueError`` naming this machine's choices for a device it does not have."""
    if choice is None or choice == DEFAULT:
        return default
    choices = device_choices()
    if choice not in choices:
        raise ValueError(f"device {choice!r} is not available on this machine; choose one of: "
                         f"{', '.join(choices)} (a workflow saved on another machine may name a GPU this "
                         f"one does not have)")
    return torch.device(choice)


def offload_device_for(load_device: torch.device, default_offload: torch.device) -> torch.device:
    """Where a network on ``load_device`` goes when ComfyUI unloads it: ComfyUI's offload
    device for its kind (normally the CPU), unless that is another accelerator (high-VRAM
    modes keep networks on the GPU): then the network stays on its own device."""
    default_offload = torch.device(default_offload)
    if default_offload.type == "cpu" or default_offload == load_device:
        return default_offload
    return load_device
