"""The Kandinsky Video U-Nets as ComfyUI models: what both sampling paths use.

:func:`unet_patcher` wraps a loaded U-Net in a ``comfy.model_base.BaseModel`` subclass and
its one ``ModelPatcher`` — the very module of the loaded network, not a second copy. The
pack's stage nodes load that patcher (``nodes.host.networks.stage``) and run the kv_core
network inside it; the core-sampling path (``nodes.host.core_path``) hands out clones of it
as core ``MODEL``s, so ``SamplerCustomAdvanced`` / ``KSampler``, every core sampler and
scheduler, and core model patches run it.

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

from ...kv_core.dtypes import NULL_EMBEDDING_KEY
from ...kv_core.kinds import INTERPOLATION_UNET, KEYFRAME_UNET, activation_memory
from ...kv_core.stages import LATENT_CHANNELS, STAGE_TABLE, STAGES, schedule_sigmas
from ...kv_core.stages.first_frame import first_frame_condition
from ...kv_core.stages.interpolation import GROUP_FRAMES, interpolation_input
from ...kv_core.stages.keyframes import frame_index
from .attention import host_attention
from ...kv_core.sampling.step_cache import StepCache, StepCacheSettings
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
KEY_DIRECT = "kandinsky_video_direct"          # a stage loop's call: the kv_core network's own keyword arguments

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
        """The network's call inside the host's attention (``nodes.host.attention``: the MODEL's
        attention patches, override and backend act on every attention), with the host's
        diffusion-model wrappers (core EasyCache is one) around :meth:`_forward`, as core
        diffusion models run them (``transformer_options`` last among the positional
        arguments, where those wrappers look for it). ``control`` (a ControlNet /
        T2I-Adapter's residuals) has nowhere to go in these U-Nets: refused."""
        if x.ndim == 5 and _self_attention_guidance(transformer_options):
            raise ValueError("Self-Attention Guidance reads a 2D attention map and blurs a 4D image latent; it works on "
                             "the Kandinsky Video first frame only, not on video latents (keyframes, interpolation): "
                             "remove it from this MODEL (Perturbed-Attention Guidance works on every stage)")
        if control:
            raise ValueError("a ControlNet / T2I-Adapter is applied to the conditioning, but the Kandinsky Video U-Nets "
                             "have no control inputs: remove the Apply ControlNet node before this sampler")
        direct = kw.get(KEY_DIRECT)
        if direct is not None:  # a stage's loop (nodes.host.stage_model), inside its own host attention
            return self.net(x, timesteps, context, **direct)
        options = transformer_options if transformer_options is not None else {}
        with host_attention(options, "Kandinsky Video MODEL", self.net):
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


def _self_attention_guidance(transformer_options) -> bool:
    """Whether core Self-Attention Guidance (comfy_extras/nodes_sag.py) patched this MODEL:
    its attention replace patch comes from that module."""
    replace = ((transformer_options or {}).get("patches_replace") or {}).get("attn1") or {}
    return any(getattr(fn, "__module__", "").endswith("nodes_sag") for fn in replace.values())


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

    def state_dict_for_saving(self, *args, **kwargs):
        """What core Save Model writes: the U-Net's keys as its ``diffusion_model`` holds them
        (``net.*``; ``v_pred`` for the interpolation U-Net) plus ``null_embedding``, so the
        saved file is complete and the pack's loaders read it back
        (``kv_core.checkpoints.UNET_PREFIXES``)."""
        sd = super().state_dict_for_saving(*args, **kwargs)
        if self.null_embedding is not None:
            sd[NULL_EMBEDDING_KEY] = self.null_embedding.detach().to("cpu", torch.float32).contiguous()
        return sd

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


def patcher_class(disable_dynamic: bool = False) -> type:
    """The ModelPatcher class the host's own loaders use: ``comfy.model_patcher.CoreModelPatcher``
    where the host has it (current ComfyUI: ``ModelPatcherDynamic`` when dynamic VRAM is on,
    read at each call as the host resolves it then), else ``ModelPatcher`` (0.3.75); always
    ``ModelPatcher`` with ``disable_dynamic`` (the host's demotion, e.g. for hooks)."""
    mp = comfy.model_patcher
    return mp.ModelPatcher if disable_dynamic else getattr(mp, "CoreModelPatcher", mp.ModelPatcher)


def is_dynamic(patcher) -> bool:
    """Whether the host manages ``patcher`` with dynamic VRAM (False where it cannot)."""
    check = getattr(patcher, "is_dynamic", None)
    return bool(check()) if callable(check) else False


def unet_patcher(module: torch.nn.Module, kind: str, compute_dtype: torch.dtype, null_embedding=None, *,
                 load_device, offload_device, disable_dynamic: bool = False) -> comfy.model_patcher.ModelPatcher:
    """The one ModelPatcher of a loaded U-Net (``nodes.host.networks.wrap`` makes it at load):
    a :class:`KandinskyVideoModel` around ``module``, which stays where it is, in the
    host's patcher class (:func:`patcher_class`)."""
    patcher = patcher_class(disable_dynamic)(KandinskyVideoModel(module, kind, compute_dtype, null_embedding),
                                             load_device=load_device, offload_device=offload_device)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "kandinsky_video_guidance",
                                 _note_plain_cfg_on_keyframes)
    return patcher
