"""Where a loaded network runs: the loaders' ``device`` choice.

``default`` is ComfyUI's choice for that kind of network (its torch device for the U-Nets
and MoVQs, its text-encoder device for the text encoder); the other choices put that one
network on that device. The choice becomes the network's ``ModelPatcher`` load device; the
stages move their inputs to it (``kv_core.stages``' ``device`` hook) and hand their outputs
on through ComfyUI's intermediate device, so stages on different devices work together.

The list follows the host: where ComfyUI has ``model_management.get_gpu_device_options()``
(current ComfyUI: ``default``, ``cpu`` and, on a machine with several GPUs, ``gpu:0``,
``gpu:1``, ...) the loaders offer those, resolved by its ``resolve_gpu_device_option``;
elsewhere (0.3.75) ``default``, ``cpu`` and each accelerator torch sees (``cuda:0``,
``xpu:0``, ``mps``). A saved workflow naming a device this machine lacks (another
machine's GPU) runs on the default device with a line in the log, as ComfyUI's own loaders
do, instead of being refused: the loaders' ``validate_inputs`` name ``device``, so the
host does not check it against this machine's list.
"""
from __future__ import annotations

import logging
import re

import torch

import comfy.model_management as mm
from comfy_api.latest import io

DEFAULT = "default"
DEVICE_TOOLTIP = (
    "Where this network runs. default: ComfyUI's choice. cpu, or one GPU (gpu:0, gpu:1... or cuda:0, cuda:1... "
    "depending on the ComfyUI version), puts this network alone there, e.g. the 8.7B text encoder on a second "
    "GPU or on the CPU (slow; pick weight_dtype bf16 there to halve its memory). The list shows the devices of "
    "this machine; a workflow saved elsewhere with a device missing here runs on the default device (logged).")

logger = logging.getLogger("kandinsky_video")


def _torch_choices() -> list[str]:
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


def device_choices() -> list[str]:
    """The host's device options where it has them, else :func:`_torch_choices`."""
    host = getattr(mm, "get_gpu_device_options", None)
    if callable(host):
        choices = [str(c) for c in host()]
        return choices if DEFAULT in choices else [DEFAULT, *choices]
    return _torch_choices()


def device_input() -> io.Combo.Input:
    """The loaders' last input: optional, so workflows saved before it existed load with
    ``default``."""
    return io.Combo.Input("device", options=device_choices(), default=DEFAULT, optional=True,
                          tooltip=DEVICE_TOOLTIP)


def _missing(choice: str, default: torch.device) -> torch.device:
    logger.warning("Kandinsky Video: device %r is not on this machine (a workflow saved on another one?): "
                   "running on the default device %s. This machine has: %s", choice, default,
                   ", ".join(device_choices()))
    return default


def resolve_device(choice, default: torch.device) -> torch.device:
    """The torch device for a loader's ``device`` choice (``default`` or None: ``default``).
    A device this machine lacks gives ``default``, with a log line."""
    if choice is None or choice == DEFAULT:
        return default
    choice = str(choice)
    host = getattr(mm, "resolve_gpu_device_option", None)
    if callable(host) and (choice == "cpu" or re.fullmatch(r"gpu:\d+", choice)):
        if choice not in device_choices():
            return _missing(choice, default)
        device = host(choice)
        return default if device is None else torch.device(device)
    if choice in _torch_choices():
        return torch.device(choice)
    match = re.fullmatch(r"gpu:(\d+)", choice)  # a newer host's name on this one
    accelerators = [c for c in _torch_choices() if c not in (DEFAULT, "cpu", "mps")]
    if match and int(match.group(1)) < len(accelerators):
        return torch.device(accelerators[int(match.group(1))])
    return _missing(choice, default)


def offload_device_for(load_device: torch.device, default_offload: torch.device) -> torch.device:
    """Where a network on ``load_device`` goes when ComfyUI unloads it: ComfyUI's offload
    device for its kind (normally the CPU), unless that is another accelerator (high-VRAM
    modes keep networks on the GPU): then the network stays on its own device."""
    default_offload = torch.device(default_offload)
    if default_offload.type == "cpu" or default_offload == load_device:
        return default_offload
    return load_device
