"""A core ``MODEL`` in front of the pack's stage nodes (host glue).

First Frame, Keyframes and Interpolate take an optional ``model``: the core MODEL of their
U-Net (Kandinsky Video Keyframe / Interpolation Model, then any MODEL-patching nodes). The
stage keeps its own loop, guidance and seeds; what the MODEL carries acts inside that
loop:

* weight patches (LoRA-style): the stage loads the MODEL's patcher, so ComfyUI patches the
  shared U-Net's weights (and restores them when the plain U-Net is loaded next);
* attention levers of ``transformer_options`` (``nodes.host.attention``: replace patches,
  ``attn1_patch``/``attn2_patch``, ``optimized_attention_override``);
* ``TorchCompileModel`` (its ``apply_model`` wrapper): every U-Net call of the loop goes
  through the compiled module;
* Perturbed-Attention Guidance (core ``comfy_extras/nodes_pag.py``, a post-CFG function):
  each step also predicts with the self-attention of its block (``middle`` 0) replaced by
  its values, and the guided prediction moves by ``scale`` times the prompt's prediction
  minus that one, as core sampling does (:class:`StageUNet`).

Everything else a MODEL can carry works on the core-sampling path only, because it is
defined on core sampling (the other CFG functions, e.g. Self-Attention Guidance,
RescaleCFG; sampler and diffusion-model wrappers, e.g. EasyCache, LazyCache;
``model_function_wrapper``; object patches such as another model sampling): the stage
refuses it by name (:func:`check`) instead of ignoring it.
"""
from __future__ import annotations

from typing import Optional

import torch

import comfy.model_patcher
import comfy.patcher_extension
from comfy.patcher_extension import WrappersMP
from comfy_api.latest import io

from ...kv_core.kinds import INTERPOLATION_UNET
from .attention import host_attention
from .unet_model import KEY_DIRECT, STEP_CACHE_KEY, KandinskyVideoModel

#: wrappers the stage path runs (key of core's torch.compile wrapper) or that are the pack's own
COMPILE_KEY = "torch.compile"
OWN_WRAPPERS = {(WrappersMP.OUTER_SAMPLE, "kandinsky_video_guidance")}

STAGE_LEVERS = ("weight patches (LoRA-style), attention patches (patches_replace attn1/attn2, attn1_patch/attn2_patch, "
                "optimized_attention_override), Perturbed-Attention Guidance and TorchCompileModel")
CORE_PATH = ("the core-sampling path (Kandinsky Video Keyframe / Interpolation Model → the patching node → "
             "Kandinsky Video Guider → SamplerCustomAdvanced; template kandinsky_video_text_to_video_8fps_core_sampling)")

_CFG_FUNCTIONS = {
    "sampler_post_cfg_function": "a post-CFG function (e.g. Self-Attention Guidance, RescaleCFG)",
    "sampler_pre_cfg_function": "a pre-CFG function",
    "sampler_cfg_function": "a CFG function",
    "model_function_wrapper": "a model function wrapper (unet wrapper)",
}


def _wrappers(model) -> list[tuple[str, str]]:
    """(type, key) of every wrapper on the patcher or in its transformer_options."""
    found = [(t, k) for t, by_key in (getattr(model, "wrappers", None) or {}).items() for k, fns in by_key.items() if fns]
    to = model.model_options.get("transformer_options") or {}
    found += [(t, k) for t, by_key in (to.get("wrappers") or {}).items() for k, fns in by_key.items() if fns]
    return found


def perturbed_attention_guidance(fn) -> Optional[tuple[float, str, int]]:
    """``(scale, block, block_id)`` of a post-CFG function made by core Perturbed-Attention
    Guidance (``comfy_extras/nodes_pag.py``), read from the function's closure; None for
    any other function (which the stage nodes then refuse)."""
    code = getattr(fn, "__code__", None)
    if code is None or not str(getattr(fn, "__module__", "")).endswith("nodes_pag"):
        return None
    values = {}
    for name, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or ()):
        try:
            values[name] = cell.cell_contents
        except ValueError:  # an empty cell
            pass
    if not {"scale", "unet_block", "unet_block_id"} <= set(values):
        return None
    return float(values["scale"]), str(values["unet_block"]), int(values["unet_block_id"])


def _cfg_functions(model, key: str) -> list:
    """The functions of ``model_options[key]`` the stage loops cannot run (all but
    Perturbed-Attention Guidance's post-CFG function)."""
    found = model.model_options.get(key) or []
    found = list(found) if isinstance(found, (list, tuple)) else [found]
    if key == "sampler_post_cfg_function":
        found = [fn for fn in found if perturbed_attention_guidance(fn) is None]
    return found


def check(model, unet_patcher, stage: str, what: str) -> None:
    """Refuse a ``model`` the stage cannot honour: not the core MODEL of this very U-Net, or
    carrying a kind of patch that acts on the core path only (each named, with what works
    here and where the rest works)."""
    inner = getattr(model, "model", None)
    if not isinstance(inner, KandinskyVideoModel) or not model.is_clone(unet_patcher):
        need = "Interpolation" if stage == "interpolation" else "Keyframe"
        raise ValueError(f"{what}: model must be the core MODEL of the U-Net connected to this node (Kandinsky Video "
                         f"{need} Model from the same loader, then any patching nodes); this MODEL is another model")
    kinds = [text for key, text in _CFG_FUNCTIONS.items() if _cfg_functions(model, key)]
    kinds += [f"a {t} wrapper ({k!r})" for t, k in _wrappers(model)
              if not (t == WrappersMP.APPLY_MODEL and k == COMPILE_KEY) and (t, k) not in OWN_WRAPPERS]
    kinds += [f"an object patch of {name!r}" for name in getattr(model, "object_patches", {})]
    if getattr(model, "hook_patches", None):
        kinds.append("hook patches (scheduled LoRA / hooks)")
    if kinds:
        cache = (" For step caching on this node, connect Kandinsky Video Step Cache to its step_cache input "
                 "instead of Apply Step Cache." if any(k == STEP_CACHE_KEY for _, k in _wrappers(model)) else "")
        raise ValueError(f"{what}: the model carries {'; '.join(kinds)}, which acts on {CORE_PATH} only. On this node "
                         f"work: {STAGE_LEVERS}. Sample this stage on the core path, or remove that node.{cache}")


class StageUNet:
    """The U-Net a stage's loop calls, routed through its core MODEL: the MODEL's
    ``apply_model`` wrappers (TorchCompileModel's swaps in the compiled diffusion model)
    around a direct call of the (possibly compiled) adapter. Attribute reads go to the
    kv_core module (its size rules, parameters, config).

    Perturbed-Attention Guidance on the MODEL: every call runs a second time with the
    self-attention of PAG's block replaced by its values (the MODEL's other attention
    levers still act; no step cache), and the prompt's rows — the first of ``chunks``
    equal parts of the batch, which the stage's guidance weighs by ``weight`` — move by
    ``scale / weight`` times their difference to that run, so the guided prediction moves
    by ``scale`` times it: core sampling's ``cfg + (cond - pag) * scale``, taken in the
    network's prediction space (the prediction-to-x0 map is the same affine one for every
    row of a step, and the guidance weights sum to 1)."""

    def __init__(self, model, guidance: tuple[int, float] = (2, 1.0), what: str = "Kandinsky Video"):
        self._model = model
        self._base: KandinskyVideoModel = model.model
        self._chunks, self._weight = guidance
        self._what = what
        post = model.model_options.get("sampler_post_cfg_function") or []
        self._pag = [p for p in map(perturbed_attention_guidance, post) if p is not None and p[0] != 0]
        if self._pag and self._weight == 0:
            raise ValueError(f"{what}: Perturbed-Attention Guidance moves the prompt's prediction, but its guidance "
                             "weight is 0 here: raise the prompt's guidance, or remove the Perturbed-Attention "
                             "Guidance node")

    def __getattr__(self, name):
        return getattr(self._base.kv_network, name)

    def _run(self, x, time, context, context_mask, **kwargs):
        base = self._base
        wrappers = comfy.patcher_extension.get_all_wrappers(WrappersMP.APPLY_MODEL, self._model.model_options,
                                                            is_model_options=True)
        wrappers += [fn for fns in (getattr(self._model, "wrappers", None) or {}).get(WrappersMP.APPLY_MODEL, {}).values()
                     for fn in fns]

        def run(*_args, **_kw):
            return base.diffusion_model(x, time, context, **{KEY_DIRECT: dict(context_mask=context_mask, **kwargs)})

        return comfy.patcher_extension.WrapperExecutor.new_class_executor(run, base, wrappers).execute()

    def __call__(self, x, time, context, context_mask, **kwargs):
        out = self._run(x, time, context, context_mask, **kwargs)
        if not self._pag:
            return out
        options = self._model.model_options.get("transformer_options") or {}
        plain = {k: v for k, v in kwargs.items() if k != "step_cache"}
        rows = out.shape[0] // self._chunks
        cond = out[:rows]
        moved = cond.clone()
        for scale, block, block_id in self._pag:
            perturbed_options = comfy.model_patcher.set_model_options_patch_replace(
                {"transformer_options": options}, _values, "attn1", block, block_id)["transformer_options"]
            with host_attention(perturbed_options, self._what, self._base.kv_network):
                perturbed = self._run(x, time, context, context_mask, **plain)[:rows]
            moved = moved + (scale / self._weight) * (cond - perturbed)
        return torch.cat([moved, out[rows:]])


def _values(q, k, v, extra_options, mask=None):
    """Perturbed-Attention Guidance's perturbation: the attention gives its values."""
    return v


def model_input() -> io.Model.Input:
    """The stage nodes' last input: optional, so workflows saved without it load unchanged."""
    return io.Model.Input("model", optional=True, tooltip=(
        "Optional: the core MODEL of the U-Net connected above (Kandinsky Video Keyframe / Interpolation Model, "
        "then MODEL-patching nodes). Acting in this node's own loop: " + STAGE_LEVERS + ". Other patches (SAG, "
        "EasyCache, LazyCache, Apply Step Cache) need the core-sampling path and are refused here by name; "
        "for step caching on this node use its step_cache input."))


def unet_of(model, network, guidance: tuple[int, float] = (2, 1.0), what: str = "Kandinsky Video") -> object:
    """What the stage hands kv_core as its U-Net: the network's module, or with a MODEL the
    :class:`StageUNet` routed through it. ``guidance``: the stage's guidance rows (the number
    of equal parts of a batch, the prompt's part first) and the weight its guidance gives
    the prompt's part (Perturbed-Attention Guidance needs both)."""
    return network.module if model is None else StageUNet(model, guidance, what)


def stage_kind(network) -> str:
    return "interpolation" if network.kind == INTERPOLATION_UNET else "keyframes"


def transformer_options(model) -> Optional[dict]:
    return None if model is None else (model.model_options.get("transformer_options") or {})
