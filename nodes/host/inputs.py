"""Inputs the stage nodes share (sizes, sampler and seed), their tooltips, and how the host
checks combo values. The rules behind them live in ``kv_core.rules``; the schema's
min/max/options give one error on the input at fault, and the stages refuse anything the
schema cannot express (the sizes the networks run, NaN) when they run.
"""
from __future__ import annotations

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ...kv_core.rules import REFERENCE_KEYFRAMES
from ...kv_core.sampling.noise import MAX_SEED
from ...kv_core.sampling.schedulers import NUM_TRAIN_TIMESTEPS, SAMPLERS
from ...kv_core.stages.keyframes import MOTION_PRESETS

CATEGORY = "Kandinsky Video"
MAX_SIZE = 4096
MAX_KEYFRAMES = 64
SIZE_STEP = 8  # the finest step a MoVQ-based release could take; the networks' rule is checked at run time

SIZE_TOOLTIP = ("{} of the video in pixels. The networks set which sizes run: multiples of 64 for the "
                "release (its MoVQ downsamples by 8 and its U-Nets halve the latent 3 times; it is trained "
                "at 512x512); another size is refused before anything runs, naming the rule. {}")
SAMPLER_TOOLTIP = ("ddpm: the release's sampler (50 steps for the first frame and the keyframes, 10 for "
                   "interpolation). ddim and dpmpp_2m give usable results in fewer steps.")
SEED_TOOLTIP = ("Seed of this stage's noise. Using one seed on every Kandinsky Video node reproduces "
                "the kv_core pipeline run with that seed. A seed gives the same noise on every device; "
                "the video is equal up to floating-point rounding (other devices or thread counts may "
                "differ by about 1/255 in a few values).")


def size_inputs(extra: str) -> list:
    return [
        io.Int.Input("width", default=512, min=SIZE_STEP, max=MAX_SIZE, step=SIZE_STEP,
                     tooltip=SIZE_TOOLTIP.format("Width", extra)),
        io.Int.Input("height", default=512, min=SIZE_STEP, max=MAX_SIZE, step=SIZE_STEP,
                     tooltip=SIZE_TOOLTIP.format("Height", extra)),
    ]


def sampler_inputs(steps: int) -> list:
    return [
        io.Int.Input("steps", default=steps, min=1, max=1000,
                     tooltip=f"Denoising steps ({steps} in the release)."),
        io.Combo.Input("sampler", options=list(SAMPLERS), default="ddpm", tooltip=SAMPLER_TOOLTIP),
        io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True, tooltip=SEED_TOOLTIP),
    ]


def keyframe_inputs() -> list:
    """The settings of a keyframe segment, in this order: motion, noise_augmentation, the two
    guidance weights, steps, sampler, seed, num_keyframes (the Keyframes node's, and the
    Extend node's for each new segment)."""
    return [
        io.Combo.Input("motion", options=list(MOTION_PRESETS), default="medium",
                       tooltip="Amount of motion: low 1, medium 10, high 50, extreme 100 (the motion "
                               "score the U-Net was trained with)."),
        io.Int.Input("noise_augmentation", default=20, min=0, max=NUM_TRAIN_TIMESTEPS - 1,
                     tooltip="Diffusion timestep the first frame is noised to before conditioning "
                             "(20 in the release); higher lets the video drift from the picture."),
        io.Float.Input("guidance_weight_prompt", default=5.0, min=-30.0, max=30.0, step=0.1,
                       tooltip="Prompt guidance weight wp in (1-wi)*uncond + (wi-wp)*image + wp*full "
                               "(5 in the release)."),
        io.Float.Input("guidance_weight_image", default=2.0, min=-30.0, max=30.0, step=0.1,
                       tooltip="Image guidance weight wi (2 in the release, 3 in its README examples)."),
        *sampler_inputs(50),
        io.Int.Input("num_keyframes", default=REFERENCE_KEYFRAMES, min=2, max=MAX_KEYFRAMES,
                     tooltip="Keyframes to generate (12 in the release, 0.5 s apart)."),
    ]


STEP_CACHE_TOOLTIP = ("Optional, from Kandinsky Video Step Cache: run the U-Net in full only every few steps "
                      "and reuse its deep features in between (DeepCache): faster, slightly different "
                      "result. Not connected: every step in full, as the release.")


def step_cache_input():
    """The stage nodes' optional step-cache input (absent in older workflows: no caching)."""
    from .sockets import StepCache
    return StepCache.Input("step_cache", optional=True, tooltip=STEP_CACHE_TOOLTIP)


def image_output(frames: torch.Tensor) -> torch.Tensor:
    """kv_core float frames ``[N, 3, H, W]`` in [0, 1] -> ComfyUI IMAGE ``[N, H, W, 3]``."""
    return frames.float().clamp(0, 1).movedim(1, -1).contiguous().to(mm.intermediate_device())


def _host_forbids_list_types() -> bool:
    """True on hosts that expand input types by name (``comfy_api``'s
    ``DYNAMIC_INPUT_LOOKUP``, newer than 0.3.75), where an input type must be a name and
    a legacy list of options must not appear. Those hosts check V3 ``COMBO`` values
    themselves; older ones (0.3.75) check a combo's value only for list types."""
    try:
        from comfy_api.latest import _io
    except ImportError:  # not a host with V3 nodes: nothing reads these types
        return True
    return hasattr(_io, "DYNAMIC_INPUT_LOOKUP")


LEGACY_COMBOS = not _host_forbids_list_types()


class CheckedCombos:
    """Mixin (before ``io.ComfyNode``) that has the host check every combo value on its own
    input. ComfyUI 0.3.75 checks a combo's value only when its type is the legacy list of
    options, not a V3 ``COMBO`` (newer hosts check both); a ``validate_inputs`` would show
    its message under every input it takes. So where list types are allowed, the input
    types the executor reads are given in that form (every host checks them);
    ``/object_info`` (the frontend's view) is unchanged, and hosts that forbid list types
    get the V3 types untouched."""

    @classmethod
    def INPUT_TYPES(cls, *args, **kwargs):
        out = super().INPUT_TYPES(*args, **kwargs)
        if not LEGACY_COMBOS:
            return out
        inputs = out[0] if isinstance(out, tuple) else out
        for section in ("required", "optional"):
            for name, spec in list(inputs.get(section, {}).items()):
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if spec[0] == "COMBO" and isinstance(opts.get("options"), list) and not opts.get("remote"):
                    inputs[section][name] = (list(opts["options"]), opts)
        return out
