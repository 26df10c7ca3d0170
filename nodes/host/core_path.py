"""What only the core-sampling path uses: the core ``MODEL`` of a loaded U-Net, the checks
of what is wired into it, and the release's guidance as a core guider.

The model itself (:class:`nodes.host.unet_model.KandinskyVideoModel`, its conds and
latents) is shared with the pack's own stage nodes; the nodes of this path are in
``nodes/core_sampling.py``.
"""
from __future__ import annotations

import comfy.model_patcher
import comfy.samplers

from ...kv_core.kinds import INTERPOLATION_UNET
from ...kv_core.stages import clamp_x0
from ...kv_core.stages.keyframes import keyframe_guidance
from .networks import Network
from .unet_model import KEY_STAGE, STAGES_OF, WHICH_NODE, KandinskyVideoModel


def _cond_stage(conditioning, name: str, what: str) -> str:
    """The stage a core CONDITIONING from our Conditioning nodes was made for."""
    stages = set()
    if isinstance(conditioning, list) and conditioning:
        for entry in conditioning:
            extra = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None
            stages.add(extra.get(KEY_STAGE) if isinstance(extra, dict) else None)
    if len(stages) != 1 or None in stages:
        raise ValueError(f"{what}: {name} is not from a Kandinsky Video Conditioning node (First Frame, Keyframes or "
                         f"Interpolation Conditioning); connect that node's {name} output")
    return stages.pop()


def check_guider_inputs(model, positive, negative, image_only, what: str) -> str:
    """The stage of a Kandinsky Video Guider's conds, checked: all from one stage, for this
    MODEL (a Kandinsky Video U-Net that runs that stage), and image_only given exactly for
    the keyframes (their release guidance needs all three conds; without it the two-cond
    formula would run with the no-image negative, a silently different result)."""
    stage = _cond_stage(positive, "positive", what)
    if _cond_stage(negative, "negative", what) != stage:
        raise ValueError(f"{what}: positive and negative come from different Conditioning nodes; connect both "
                         f"from the same {WHICH_NODE[stage]}")
    kandinsky_model(model, stage, what)
    if stage == "keyframes":
        if image_only is None:
            raise ValueError(f"{what}: keyframes need all three conds of {WHICH_NODE[stage]}: connect its image_only "
                             "output to image_only (the release's guidance mixes prompt, image and null text)")
        if _cond_stage(image_only, "image_only", what) != stage:
            raise ValueError(f"{what}: image_only comes from another Conditioning node; connect the image_only of "
                             f"the same {WHICH_NODE[stage]}")
    elif image_only is not None:
        raise ValueError(f"{what}: image_only is for the keyframes only; disconnect it for the "
                         f"{stage.replace('_', ' ')} stage")
    return stage


def core_model(network: Network) -> comfy.model_patcher.ModelPatcher:
    """The core ``MODEL`` of a loaded U-Net: a clone of its patcher (``network.patcher``),
    so patches that core nodes add to the MODEL stay on their clones and never reach the
    pack's own stages, and loading either one hands over the same weights. ``network`` is a
    :class:`nodes.host.networks.Network`."""
    if not isinstance(getattr(network.patcher, "model", None), KandinskyVideoModel):
        raise ValueError(f"{network.describe()} is not a Kandinsky Video U-Net; connect a Kandinsky Video "
                         "Keyframe or Interpolation U-Net loader")
    return network.patcher.clone()


def kandinsky_model(model, stage: str, what: str) -> KandinskyVideoModel:
    """The Kandinsky Video model inside a MODEL, checked to run ``stage``."""
    inner = getattr(model, "model", None)
    if not isinstance(inner, KandinskyVideoModel):
        raise ValueError(f"{what}: the MODEL is not a Kandinsky Video U-Net; connect Kandinsky Video "
                         f"{'Interpolation' if stage == 'interpolation' else 'Keyframe'} Model")
    if stage not in STAGES_OF[inner.kind]:
        need = "Interpolation" if stage == "interpolation" else "Keyframe"
        this = "interpolation" if inner.kind == INTERPOLATION_UNET else "keyframe"
        raise ValueError(f"{what}: this MODEL is the {this} U-Net; the {stage.replace('_', ' ')} stage needs "
                         f"Kandinsky Video {need} Model")
    if inner.null_embedding is None:
        raise ValueError(f"{what}: the U-Net was loaded without its null embedding (the null-text context)")
    return inner


class KandinskyVideoGuider(comfy.samplers.CFGGuider):
    """The release's guidance on core sampling, combined in full before the x0 clamp.

    Two conds (first frame, interpolation): ``(w + 1) cond - w uncond`` through core
    ``cfg_function`` (so ``sampler_cfg_function`` and post-CFG patches apply as for core
    CFG with ``cfg = w + 1``). Three conds (keyframes): ``(1 - wi) uncond +
    (wi - wp) image_only + wp full`` — core ``DualCFGGuider``'s regular style with cond1 =
    full, cond2 = image_only, negative = uncond, cfg_conds = wp, cfg_cond2_negative = wi —
    then the post-CFG patches. Then, when ``clamp`` is on (the release), ``clamp(x0, -1, 1)``
    of the whole combination (core's post-CFG hooks inside DualCFGGuider only see its
    partial ``cfg_function`` term, so a clamp there would differ)."""

    def set_weights(self, guidance_scale: float, image_guidance_scale: float = 0.0, clamp: bool = True):
        self.guidance_scale = float(guidance_scale)
        self.image_guidance_scale = float(image_guidance_scale)
        self.clamp = bool(clamp)
        self.set_cfg(self.guidance_scale + 1.0)

    def set_conds(self, positive, negative, image_only=None):
        conds = {"positive": positive, "negative": negative}
        if image_only is not None:
            conds["image_only"] = image_only
        self.inner_set_conds(conds)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        positive, negative = self.conds.get("positive"), self.conds.get("negative")
        image_only = self.conds.get("image_only")
        if image_only is None:
            out = comfy.samplers.calc_cond_batch(self.inner_model, [positive, negative], x, timestep, model_options)
            denoised = comfy.samplers.cfg_function(self.inner_model, out[0], out[1], self.cfg, x, timestep,
                                                   model_options=model_options, cond=positive, uncond=negative)
        else:
            out = comfy.samplers.calc_cond_batch(self.inner_model, [positive, image_only, negative], x, timestep,
                                                 model_options)
            denoised = keyframe_guidance(out[0], out[1], out[2], self.guidance_scale, self.image_guidance_scale)
            for fn in model_options.get("sampler_post_cfg_function", []):
                denoised = fn({"denoised": denoised, "cond": positive, "uncond": negative,
                               "cond_scale": self.guidance_scale, "model": self.inner_model,
                               "uncond_denoised": out[2], "cond_denoised": out[0], "sigma": timestep,
                               "model_options": model_options, "input": x})
        return clamp_x0(denoised) if self.clamp else denoised
