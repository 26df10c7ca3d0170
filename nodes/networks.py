"""Loaded networks: a kv_core network in a ComfyUI ``ModelPatcher``, and how a stage gets it
onto its device.

:class:`Network` wraps a network built with ``comfy.ops`` layers (so partial low-VRAM
loading and fp8 weight storage work); :func:`stage` loads it with ``load_models_gpu`` for
one stage. ComfyUI's model management decides what stays loaded.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension

from .core_model import STAGES_OF, unet_patcher
from ..kv_core import kinds
from ..kv_core.kinds import NETWORK_NAMES


@dataclass(eq=False)
class Network:
    """A loaded network: its ModelPatcher and what the stages need beside it."""

    kind: str                          # a kv_core.checkpoints network kind
    name: str                          # the file (or folder) chosen in the loader
    patcher: comfy.model_patcher.ModelPatcher
    compute_dtype: torch.dtype
    null_embedding: Optional[torch.Tensor] = None
    configs: Optional[str] = None      # configs.json used, if any

    @property
    def module(self) -> torch.nn.Module:
        """The kv_core network: for a U-Net the module inside the patcher's core model
        (``KandinskyVideoModel.kv_network``), for the others the patcher's model itself."""
        model = self.patcher.model
        return getattr(model, "kv_network", model)

    @property
    def load_device(self) -> torch.device:
        return self.patcher.load_device

    def describe(self) -> str:
        return f"{NETWORK_NAMES[self.kind]} '{self.name}'"


def wrap(module: torch.nn.Module, kind: str, name: str, compute_dtype, *, load_device, offload_device,
         null_embedding=None, configs=None) -> Network:
    """``module`` (on ``offload_device``) as a :class:`Network`. A U-Net gets its one
    patcher around the core model (``nodes.core_model.unet_patcher``), which both the
    pack's stages and the core MODEL (a clone of it) load; the others a plain patcher."""
    if kind in STAGES_OF:
        patcher = unet_patcher(module, kind, compute_dtype, null_embedding, load_device=load_device,
                               offload_device=offload_device)
    else:
        patcher = comfy.model_patcher.ModelPatcher(module, load_device=load_device, offload_device=offload_device)
    patcher.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_LOAD, "kandinsky_video", _placed_after_load)
    return Network(kind, name, patcher, compute_dtype, null_embedding, configs)


def _place_stray_parameters(module: torch.nn.Module, device) -> None:
    """Move the parameters that a partial (low-VRAM) load leaves behind and that cannot
    be cast at run time to the load device: direct parameters of modules with children
    (learned merge scalars, which ModelPatcher never places) and those of layers that are
    not ``comfy.ops`` classes (e.g. T5's norms). They are small; ``unpatch_model`` moves
    them back with the rest of the model when it is offloaded."""
    for m in module.modules():
        if hasattr(m, "comfy_cast_weights"):
            continue  # comfy.ops layers fetch their weights themselves
        for p in m.parameters(recurse=False):
            if p.device != device:
                p.data = p.data.to(device)


def _placed_after_load(patcher, device_to, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
    """ON_LOAD callback of every network's patcher (clones inherit it, so the core MODEL
    of a U-Net has it too): after any load, also a partial one by a clone that the pack's
    :func:`stage` never sees, the stray parameters are on the device it loaded to."""
    if device_to is not None:
        _place_stray_parameters(patcher.model, device_to)


def offload(network: Network) -> None:
    """Unload ``network`` to its offload device now (no-op when it is not loaded), through
    ComfyUI's own calls, which also keep its list of loaded models right.

    Hosts that have ``model_management.unload_model_and_clones`` (newer than 0.3.75; found
    by looking for it, never by version) unload the network's patcher with it. Older hosts
    (0.3.75) get ``free_memory`` on the network's load device with every loaded model but
    the patcher and its clones (a U-Net's core MODELs) in ``keep_loaded``, which is what
    that call does on the newer ones.
    """
    patcher = network.patcher
    unload = getattr(mm, "unload_model_and_clones", None)
    if unload is not None:
        unload(patcher)
    else:
        others = [mm.LoadedModel(p) for p in mm.loaded_models() if p is not None and not p.is_clone(patcher)]
        mm.free_memory(1e30, network.load_device, keep_loaded=others)
    mm.soft_empty_cache()


OFFLOAD_ENV = "KANDINSKY_VIDEO_OFFLOAD"


def offload_after_stage() -> bool:
    """Whether every stage unloads its networks when it ends: off unless the environment
    variable ``KANDINSKY_VIDEO_OFFLOAD`` is ``1``/``true``/``yes`` (read at each stage).
    Off, ComfyUI keeps them loaded while memory allows (a second run does not load them
    again) and unloads them itself when a later load needs the memory."""
    return os.environ.get(OFFLOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def stage(*networks: Network, memory_required: int = 0) -> Iterator[torch.device]:
    """Load ``networks`` for one stage with ComfyUI's ``load_models_gpu`` (which unloads
    other models when ``memory_required`` plus the networks do not fit) and yield the
    device to run on. The networks stay loaded afterwards for the next stage or prompt,
    unless :func:`offload_after_stage` says otherwise; a stage that fails or is
    interrupted unloads them, so the memory is free for the next prompt."""
    mm.load_models_gpu([n.patcher for n in networks], memory_required=int(memory_required))
    ok = False
    try:
        for n in networks:
            _place_stray_parameters(n.module, n.load_device)
        yield networks[0].load_device
        ok = True
    finally:
        if not ok or offload_after_stage():
            for n in networks:
                offload(n)


def activation_memory(network: Network, rows: int, h: int, w: int) -> int:
    """Rough peak activation memory (bytes) of one call of ``network`` on ``rows`` rows of
    ``h x w`` latent cells, in the way ComfyUI's models estimate it: rows × latent area ×
    dtype size × the factor of its kind (``kv_core.kinds.ACTIVATION_FACTOR``)."""
    return kinds.activation_memory(network.kind, rows, h, w, mm.dtype_size(network.compute_dtype))
