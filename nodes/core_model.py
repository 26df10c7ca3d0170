"""The Kandinsky Video U-Nets as ComfyUI core ``MODEL``s (host glue for the core sampling path).

:func:`core_model` wraps an already loaded network (``nodes.networks.Network``) in a
``comfy.model_base.BaseModel`` subclass and a ``ModelPatcher`` — the very module of the
loaded network, not a second copy — so ``SamplerCustomAdvanced`` / ``KSampler``, every core
sampler and scheduler, and core model patches run it.

What the model is to the host:

* model sampling: discrete, 1000 steps, the release's zero-terminal-SNR cosine schedule
  (``kv_core.stages.schedule_sigmas``: ``abar`` floored at 2**-24 only at t = 999,
  sigma_max ~ 4096), EPS for the keyframe U-Net (first frame and keyframes), V_PREDICTION
  for the interpolation U-Net;
* latents (identity latent format, the MoVQ's unscaled values):
  first frame ``[B, 4, h, w]`` (image mode), keyframes ``[B, 4, T, h, w]`` (video mode, the
  pack's LATENT layout), interpolation groups ``[B, 12, G, h, w]``: G = N - 1 groups, and
  the 12 channels of a group are its three new frames, frame-major (channels 0-3 frame
  4i+1, 4-7 frame 4i+2, 8-11 frame 4i+3), as ``kv_core.stages.interpolation.sample_interpolation``
  returns them;
* conditioning: the Kandinsky Video conditioning nodes put the text context in the
  CONDITIONING tensor ``[1, L, D]`` and the rest in its dict (keys ``KEY_*`` below);
  :meth:`KandinskyVideoModel.extra_conds` turns them into ``comfy.conds`` objects. Every
  cond of a stage has the same context length L (the null text is padded like the prompt),
  and the context mask is a ``CONDRegular``: conds whose lengths differ are never batched
  together (core ``CONDCrossAttn`` would pad them by repeating, and the U-Net's attention
  pooling averages over every position, padding included), so batching never changes a
  result.

Step caching on this path: the network's forward runs the host's diffusion-model wrappers
(``WrappersMP.DIFFUSION_MODEL``), so core EasyCache acts on it (core LazyCache wraps the
guider's noise prediction and needs nothing here), and :func:`apply_step_cache` patches a
MODEL with the pack's DeepCache-style cache (``kv_core.sampling.step_cache``): the step of a call
is found from its sigma in the run's sigmas, the rows are keyed by the host's cond uuids,
and every sampling run starts with an empty cache.
"""
from __future__ import annotations

import logging

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
import comfy.samplers

from ..kv_core.kinds import INTERPOLATION_UNET, KEYFRAME_UNET, activation_memory
from ..kv_core.stages import LATENT_CHANNELS, STAGE_TABLE, STAGES, clamp_x0, schedule_sigmas
from ..kv_core.stages.first_frame import first_frame_condition
from ..kv_core.stages.interpolation import GROUP_FRAMES, interpolation_input
from ..kv_core.stages.keyframes import frame_index, keyframe_guidance
from ..kv_core.sampling.step_cache import StepCache, StepCacheSettings
from .progress import MoVQLatentFormat


# keys of the conditioning dict our conditioning nodes fill
KEY_STAGE = "kandinsky_video_stage"            # "first_frame" | "keyframes" | "interpolation"
KEY_MASK = "kandinsky_video_context_mask"      # [1, L] bool: True = real token
KEY_CONDITION = "kandinsky_video_condition"    # keyframes: [1, 5, T, h, w] (latent 4 + mask 1)
KEY_MOTION = "kandinsky_video_motion"          # keyframes: [1] motion score
KEY_AUGMENTATION = "kandinsky_video_noise_augmentation"  # keyframes: [1] augmentation timestep
KEY_NEIGHBOURS = "kandinsky_video_neighbours"  # interpolation: [1, 8, G, h, w] (left 4, right 4)
KEY_SKIP = "kandinsky_video_skip_frames"       # interpolation: [1] int32
KEY_PERTURBATION = "kandinsky_video_perturbation_time"  # interpolation: [1] int32
KEY_TEMPORAL_MASK = "kandinsky_video_temporal_mask"     # interpolation: [1] float (1 cond, 0 uncond)

# the stages each U-Net runs, and the conditioning node of each stage (kv_core.stages' list)
STAGES_OF = {kind: tuple(s.name for s in STAGE_TABLE.values() if s.network == kind)
             for kind in (KEYFRAME_UNET, INTERPOLATION_UNET)}
WHICH_NODE = {stage: f"Kandinsky Video {stage.replace('_', ' ').title()} Conditioning" for stage in STAGES}


class GroupLatentFormat(comfy.latent_formats.LatentFormat):
    """Interpolation groups: 12 channels = 3 frames x 4 MoVQ channels (frame-major). The
    preview shows the mean of the three frames with the MoVQ format's factors."""

    latent_channels = GROUP_FRAMES * LATENT_CHANNELS
    latent_rgb_factors = [[v / GROUP_FRAMES for v in row] for row in MoVQLatentFormat.latent_rgb_factors] * GROUP_FRAMES


def model_sampling(prediction: str):
    """Discrete model sampling over the release schedule; ``prediction`` "eps" or "v"."""
    base = comfy.model_sampling.EPS if prediction == "eps" else comfy.model_sampling.V_PREDICTION

    class KandinskyVideoSampling(comfy.model_sampling.ModelSamplingDiscrete, base):
        def __init__(self):
            super().__init__(None)
            self.set_sigmas(schedule_sigmas())

    return KandinskyVideoSampling()


class _Config:
    """The part of a ``comfy.supported_models_base.BASE`` that ``BaseModel`` and the
    samplers read (no U-Net is created: the network is already loaded)."""

    def __init__(self, latent_format):
        self.unet_config = {"disable_unet_model_creation": True}
        self.latent_format = latent_format
        self.manual_cast_dtype = None
        self.custom_operations = None
        self.optimizations = {}
        self.scaled_fp8 = None
        self.memory_usage_factor = 1.0
        self.sampling_settings = {}
        self.supported_inference_dtypes = [torch.float32, torch.bfloat16, torch.float16]

    def process_unet_state_dict(self, sd):
        return sd

    def process_unet_state_dict_for_saving(self, sd):
        return sd


class CoreAdapter(torch.nn.Module):
    """``diffusion_model(xc, t, context=..., **extra)`` as core models are called -> the
    kv_core network's own call. Rows are video-major with frames (groups) inner, as the
    pack's loops batch them."""

    def __init__(self, network: torch.nn.Module, kind: str):
        super().__init__()
        self.net = network
        self.kind = kind

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kw):
        """Runs the host's diffusion-model wrappers (core EasyCache is one) around
        :meth:`_forward`, as core diffusion models do; ``transformer_options`` comes last
        among the positional arguments, where those wrappers look for it."""
        options = transformer_options if transformer_options is not None else {}
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, options),
        ).execute(x, timesteps, context, control, options, **kw)

    def _forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kw):
        stage = kw.get(KEY_STAGE)
        mask = kw.get(KEY_MASK)
        if stage not in STAGES_OF[self.kind] or mask is None or context is None:
            got = f"a stage {stage!r}" if stage else "conditioning without the Kandinsky Video inputs"
            raise ValueError(f"this Kandinsky Video MODEL needs conditioning from "
                             f"{' or '.join(WHICH_NODE[s] for s in STAGES_OF[self.kind])} (got {got})")
        b = x.shape[0]
        if self.kind == KEYFRAME_UNET:
            if stage == "first_frame":
                if x.ndim != 4:
                    raise ValueError(f"the first frame is an image latent [B, 4, h, w], got {list(x.shape)}")
                return self.net(x, timesteps, context, mask, mode="image",
                                **_step_cache(transformer_options, x.shape[0]))
            if x.ndim != 5:
                raise ValueError(f"keyframes are a video latent [B, 4, T, h, w], got {list(x.shape)}")
            t_frames = x.shape[2]
            rows = _rows(x)
            per_row = lambda v: v.repeat_interleave(t_frames, 0)  # noqa: E731
            out = self.net(rows, per_row(timesteps), per_row(context), per_row(mask), mode="video",
                           num_frames=t_frames, temporal_embed=frame_index(t_frames, b, x.device),
                           noise_aug_time=per_row(kw[KEY_AUGMENTATION]), motion_score=per_row(kw[KEY_MOTION]),
                           **_step_cache(transformer_options, rows.shape[0]))
            return _unrows(out, b)
        if x.ndim != 5:
            raise ValueError(f"interpolation groups are a latent [B, 12, G, h, w], got {list(x.shape)}")
        groups = x.shape[2]
        per_row = lambda v: v.repeat_interleave(groups, 0)  # noqa: E731
        neighbours = _rows(kw[KEY_NEIGHBOURS].to(x))
        inp = interpolation_input(neighbours[:, :LATENT_CHANNELS], _rows(x), neighbours[:, LATENT_CHANNELS:])
        out = self.net(inp, per_row(timesteps), per_row(context), per_row(mask), num_groups=groups,
                       perturbation_time=per_row(kw[KEY_PERTURBATION]), skip_frames=per_row(kw[KEY_SKIP]),
                       temporal_mask=per_row(kw[KEY_TEMPORAL_MASK]), **_step_cache(transformer_options, inp.shape[0]))
        return _unrows(out, b)


STEP_CACHE_KEY = "kandinsky_video_step_cache"  # transformer_options entry of a patched MODEL


class CoreStepCache:
    """The pack's step cache on a core MODEL (``transformer_options[STEP_CACHE_KEY]``):
    its settings and, while a sampling run goes on, that run's :class:`StepCache` (made by
    the ``OUTER_SAMPLE`` wrapper :func:`_step_cache_run` for the run's step count)."""

    def __init__(self, settings: StepCacheSettings):
        self.settings = settings
        self.run: StepCache | None = None
        self.sigmas: torch.Tensor | None = None

    def call(self, transformer_options: dict, rows: int):
        """The network's ``step_cache`` for a call of ``rows`` rows, or None (not sampling)."""
        run, sigmas = self.run, self.sigmas
        sigma = transformer_options.get("sigmas")
        if run is None or sigmas is None or sigma is None:
            return None
        # the step whose interval [sigmas[i], sigmas[i + 1]) holds this call's sigma (a
        # sampler's extra evaluations inside a step share its decision)
        s = float(sigma.reshape(-1)[0])
        below = (sigmas[:-1] >= s * (1 - 1e-6)).nonzero()
        step = int(below[-1]) if len(below) else 0
        if step != run.step:
            run.begin(step)
        uuids = transformer_options.get("uuids") or [None]
        per = rows // len(uuids)
        return run.call([(u, r) for u in uuids for r in range(per)])


def _step_cache(transformer_options, rows: int) -> dict:
    holder = (transformer_options or {}).get(STEP_CACHE_KEY)
    call = holder.call(transformer_options, rows) if isinstance(holder, CoreStepCache) else None
    return {} if call is None else {"step_cache": call}


def _step_cache_run(executor, *args, **kwargs):
    """``OUTER_SAMPLE`` wrapper of a step-cached MODEL: a fresh cache for this run's steps,
    its counts logged at the end."""
    guider = executor.class_obj
    holder: CoreStepCache = guider.model_options["transformer_options"][STEP_CACHE_KEY]
    sigmas = args[3]
    holder.sigmas = sigmas.detach().float().cpu()
    holder.run = StepCache(holder.settings, max(len(sigmas) - 1, 1))
    try:
        return executor(*args, **kwargs)
    finally:
        run, holder.run, holder.sigmas = holder.run, None, None
        run.finish()
        logging.info("Kandinsky Video Step Cache: %d full + %d cached steps of %d (interval %d, branch %d)",
                     run.full_steps, run.cached_steps, len(run.plan), run.settings.interval, run.settings.branch)


def apply_step_cache(model, settings: StepCacheSettings):
    """A clone of the Kandinsky Video MODEL ``model`` whose sampling runs use the pack's
    step cache with ``settings`` (interval 1: an unpatched clone)."""
    model = model.clone()
    if settings is None or not settings.enabled:
        return model
    model.model_options = comfy.model_patcher.create_model_options_clone(model.model_options)
    model.model_options.setdefault("transformer_options", {})[STEP_CACHE_KEY] = CoreStepCache(settings)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, STEP_CACHE_KEY, _step_cache_run)
    return model


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, h, w]`` -> ``[B*T, C, h, w]`` (frames inner)."""
    b, c, t, h, w = x.shape
    return x.movedim(2, 1).reshape(b * t, c, h, w)


def _unrows(rows: torch.Tensor, b: int) -> torch.Tensor:
    n, c, h, w = rows.shape
    return rows.reshape(b, n // b, c, h, w).movedim(1, 2)


class KandinskyVideoModel(comfy.model_base.BaseModel):
    """A kv_core U-Net as a core model (see the module docstring).

    Adds no parameters: its state is the U-Net's (under ``diffusion_model.net.``) plus the
    model sampling's buffers (two 1000-value schedules). Built on the module where it lies;
    nothing is copied or moved (``device`` is left to the ModelPatcher, which takes its
    offload device, where the loaders put the weights). ``kv_network`` is the kv_core
    module itself, kept outside the module tree (it is registered once, inside
    ``diffusion_model``) so that an object patch of ``diffusion_model`` by a core node
    never changes what the pack's own stages run."""

    def __init__(self, module: torch.nn.Module, kind: str, compute_dtype: torch.dtype,
                 null_embedding: torch.Tensor | None = None):
        if kind not in STAGES_OF:
            raise ValueError(f"a {kind!r} network is not a Kandinsky Video U-Net")
        video = kind == INTERPOLATION_UNET
        model_type = comfy.model_base.ModelType.V_PREDICTION if video else comfy.model_base.ModelType.EPS
        super().__init__(_Config(GroupLatentFormat() if video else MoVQLatentFormat()), model_type, device=None)
        self.model_sampling = model_sampling("v" if video else "eps")
        self.diffusion_model = CoreAdapter(module, kind)
        object.__setattr__(self, "kv_network", module)  # a plain attribute, not a second submodule
        self.kind = kind
        self.compute_dtype = compute_dtype
        self.null_embedding = null_embedding

    def get_dtype(self):
        return self.compute_dtype

    def memory_required(self, input_shape, cond_shapes={}):
        # as the pack's own stages estimate it (kv_core.kinds.activation_memory): rows x area
        rows = input_shape[0] * (input_shape[2] if len(input_shape) == 5 else 1)
        return activation_memory(self.kind, rows, *input_shape[-2:], mm.dtype_size(self.compute_dtype))

    def extra_conds(self, **kwargs):
        stage = kwargs.get(KEY_STAGE)
        out = {}
        if kwargs.get("cross_attn") is not None:
            out["c_crossattn"] = comfy.conds.CONDCrossAttn(kwargs["cross_attn"])
        if stage is None:
            return out
        check_latent_fits(stage, kwargs)
        out[KEY_STAGE] = comfy.conds.CONDConstant(stage)
        out[KEY_MASK] = comfy.conds.CONDRegular(kwargs[KEY_MASK])
        if stage == "first_frame":
            noise = kwargs["noise"]
            out["c_concat"] = comfy.conds.CONDNoiseShape(first_frame_condition(1, *noise.shape[-2:], noise.device))
        elif stage == "keyframes":
            out["c_concat"] = comfy.conds.CONDNoiseShape(kwargs[KEY_CONDITION])
            out[KEY_MOTION] = comfy.conds.CONDRegular(kwargs[KEY_MOTION])
            out[KEY_AUGMENTATION] = comfy.conds.CONDRegular(kwargs[KEY_AUGMENTATION])
        else:
            out[KEY_NEIGHBOURS] = comfy.conds.CONDNoiseShape(kwargs[KEY_NEIGHBOURS])
            for key in (KEY_SKIP, KEY_PERTURBATION, KEY_TEMPORAL_MASK):
                out[key] = comfy.conds.CONDRegular(kwargs[key])
        return out


def _expected_latent(stage: str, values: dict):
    """The latent shape a stage's conds were made for, batch left out: ``[4, h, w]`` (first
    frame: any size, only the rank is fixed), ``[4, T, h, w]`` (keyframes), ``[12, G, h, w]``
    (interpolation); None for the first frame."""
    if stage == "keyframes":
        c = values.get(KEY_CONDITION)
        return None if c is None else (LATENT_CHANNELS, *c.shape[2:])
    if stage == "interpolation":
        n = values.get(KEY_NEIGHBOURS)
        return None if n is None else (GROUP_FRAMES * LATENT_CHANNELS, *n.shape[2:])
    return None


def check_latent_fits(stage: str, values: dict) -> None:
    """Refuse, naming the fix, a latent that is not the one the conds' Conditioning node
    made (another stage's, another size, frame or group count): without this check the
    host fails deep inside with a tensor size error."""
    noise = values.get("noise")
    if not isinstance(noise, torch.Tensor):
        return
    node = WHICH_NODE.get(stage, "the Kandinsky Video Conditioning node")
    expected = _expected_latent(stage, values)
    if stage == "first_frame":
        ok, want = noise.ndim == 4 and noise.shape[1] == LATENT_CHANNELS, "[1, 4, h, w]"
    else:
        ok = expected is not None and tuple(noise.shape[1:]) == tuple(expected)
        want = f"[1, {', '.join(str(v) for v in expected or ())}]"
    if not ok:
        raise ValueError(f"the latent being sampled is {list(noise.shape)}, but the guider's conds come from "
                         f"{node} and need its latent {want}: connect that node's latent output to the "
                         f"sampler's latent_image (the conds and the latent of one Conditioning node belong "
                         f"together)")


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


def _note_plain_cfg_on_keyframes(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: a guider with only positive and negative (core KSampler /
    CFGGuider) on the keyframes' conds runs plain CFG between prompt + image and null text
    without image; that runs, but is not the release's keyframe guidance, so say so."""
    conds = getattr(executor.class_obj, "conds", None) or {}
    stages = {c.get(KEY_STAGE) for group in conds.values() for c in (group or []) if isinstance(c, dict)}
    if "keyframes" in stages and set(conds) <= {"positive", "negative"}:
        logging.warning("Kandinsky Video keyframes sampled with positive and negative only (KSampler / CFGGuider): "
                        "plain CFG, not the release's keyframe guidance; for that use Kandinsky Video Guider with "
                        "image_only (or core DualCFGGuider regular: cond1 positive, cond2 image_only)")
    return executor(*args, **kwargs)


def unet_patcher(module: torch.nn.Module, kind: str, compute_dtype: torch.dtype, null_embedding=None, *,
                 load_device, offload_device) -> comfy.model_patcher.ModelPatcher:
    """The one ModelPatcher of a loaded U-Net (``nodes.networks.wrap`` makes it at load):
    a :class:`KandinskyVideoModel` around ``module``, which stays where it is."""
    patcher = comfy.model_patcher.ModelPatcher(KandinskyVideoModel(module, kind, compute_dtype, null_embedding),
                                               load_device=load_device, offload_device=offload_device)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "kandinsky_video_guidance",
                                 _note_plain_cfg_on_keyframes)
    return patcher


def core_model(network) -> comfy.model_patcher.ModelPatcher:
    """The core ``MODEL`` of a loaded U-Net: a clone of its patcher (``network.patcher``),
    so patches that core nodes add to the MODEL stay on their clones and never reach the
    pack's own stages, and loading either one hands over the same weights. ``network`` is a
    ``nodes.networks.Network`` (not imported: that module imports this one)."""
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
