"""ComfyUI glue shared by the Kandinsky Video nodes.

* the ``models/kandinsky_video/`` folder and how model files and text-encoder folders are
  listed and resolved (with errors that name the file, the network and the folders);
* the socket types that carry networks, conditioning and the first-frame condition;
* :class:`Network`: a kv_core network wrapped in a ``comfy.model_patcher.ModelPatcher``,
  built with ``comfy.ops`` layers so that partial (low-VRAM) loading and fp8 weight
  storage work, plus :func:`stage`, which loads it with ``load_models_gpu`` for one stage
  and offloads it afterwards (also when the stage fails or is interrupted);
* progress bars that are also interrupt points, and latent previews;
* video latents as core ``LATENT`` dictionaries ``{"samples": [B, 4, T, h, w]}``; the
  keyframe count rides along for the frame rate, and what a stage needs otherwise comes
  from the tensor or from the node's own inputs, so a saved and reloaded latent gives the
  same video.

Nothing here runs a network: the stages are ``kv_core`` functions.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.utils
import folder_paths
from comfy.cli_args import LatentPreviewMethod, args
from comfy_api.latest import io

from ..kv_core import checkpoints as ckpt
from ..kv_core import dtypes

logger = logging.getLogger(__name__)

CATEGORY = "Kandinsky Video"
MODEL_FOLDER = "kandinsky_video"
TEXT_ENCODER_FOLDERS = (MODEL_FOLDER, "text_encoders")
MAX_SIZE = 4096


# --------------------------------------------------------------------------- model folders

def register_model_folder() -> None:
    """Register ``models/kandinsky_video/`` (idempotent; extra paths from
    ``extra_model_paths.yaml`` under the key ``kandinsky_video`` are kept)."""
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    folder_paths.add_model_folder_path(MODEL_FOLDER, default, is_default=True)
    paths, _ = folder_paths.folder_names_and_paths[MODEL_FOLDER]
    # a key created by add_model_folder_path lists every file; keep checkpoints only
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, set(folder_paths.supported_pt_extensions))
    with contextlib.suppress(OSError):
        os.makedirs(default, exist_ok=True)


register_model_folder()

# what each loader expects, for the error messages and tooltips
EXPECTED_FILES = {
    ckpt.KEYFRAME_UNET: "t2v.pt (or its .safetensors conversion)",
    ckpt.INTERPOLATION_UNET: "interpolation.pt (or its .safetensors conversion)",
    ckpt.MOVQ: "movq.pt (or its .safetensors conversion)",
    ckpt.VIDEO_MOVQ: "video_movq.pt (or its .safetensors conversion)",
    ckpt.TEXT_PROJECTIONS: "t5_projections.pt (or its .safetensors conversion)",
    ckpt.T5_ENCODER: "a Flan-UL2 folder (google/flan-ul2: config.json, weights, tokenizer) "
                     "or our encoder-only .safetensors",
}
NETWORK_NAMES = {
    ckpt.KEYFRAME_UNET: "keyframe U-Net",
    ckpt.INTERPOLATION_UNET: "interpolation U-Net",
    ckpt.MOVQ: "image MoVQ",
    ckpt.VIDEO_MOVQ: "video MoVQ",
    ckpt.TEXT_PROJECTIONS: "text projections",
    ckpt.T5_ENCODER: "text encoder (Flan-UL2)",
}


def model_files() -> list[str]:
    """Checkpoint files under the ``kandinsky_video`` model folders (relative names)."""
    return folder_paths.get_filename_list(MODEL_FOLDER)


def _folders(keys) -> list[str]:
    out = []
    for key in keys:
        with contextlib.suppress(KeyError):
            out += [p for p in folder_paths.get_folder_paths(key) if p not in out]
    return out


def text_encoder_choices() -> list[str]:
    """Text encoders under ``models/kandinsky_video/`` and ``models/text_encoders/``:
    Hugging Face T5 folders (a folder with ``config.json``, up to two levels deep) and
    ``.safetensors`` files outside such folders."""
    names: list[str] = []
    for base in _folders(TEXT_ENCODER_FOLDERS):
        if not os.path.isdir(base):
            continue
        hf_dirs = []
        for root, dirs, files in os.walk(base, followlinks=True):
            rel = os.path.relpath(root, base)
            depth = 0 if rel == "." else rel.count(os.sep) + 1
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if depth > 0 and "config.json" in files:
                hf_dirs.append(rel)
                dirs[:] = []  # the weights inside are part of this folder
                continue
            if depth >= 2:
                dirs[:] = []
            names += [os.path.normpath(os.path.join(rel, f)) for f in sorted(files) if f.endswith(".safetensors")]
        names += [d.replace(os.sep, "/") for d in hf_dirs]
    return sorted(dict.fromkeys(n.replace(os.sep, "/") for n in names))


class ModelFileError(FileNotFoundError):
    """A model file that is not where the loader looks."""


def missing_file_message(name: str, network: str, keys=(MODEL_FOLDER,)) -> str:
    folders = _folders(keys)
    return (f"{NETWORK_NAMES[network]} file '{name}' was not found. Expected "
            f"{EXPECTED_FILES[network]}. Folders searched: {', '.join(folders) or '(none)'}. "
            f"Put the file into models/{keys[0]}/ and press R (refresh) in ComfyUI.")


def resolve_model_file(name: str, network: str) -> str:
    """Full path of a checkpoint chosen in a loader (raises :class:`ModelFileError`)."""
    path = folder_paths.get_full_path(MODEL_FOLDER, name) if isinstance(name, str) and name else None
    if path is None:
        raise ModelFileError(missing_file_message(name, network))
    return path


def resolve_text_encoder(name: str) -> str:
    """Full path of a text encoder folder or file from :func:`text_encoder_choices`."""
    if isinstance(name, str) and name:
        rel = os.path.normpath(name.replace("/", os.sep))
        if not rel.startswith("..") and not os.path.isabs(rel):
            for base in _folders(TEXT_ENCODER_FOLDERS):
                path = os.path.join(base, rel)
                if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
                    return path
                if os.path.isfile(path):
                    return path
    raise ModelFileError(missing_file_message(name, ckpt.T5_ENCODER, TEXT_ENCODER_FOLDERS))


def release_configs(path: str) -> Optional[str]:
    """``configs.json`` of the release a checkpoint belongs to: beside the file or in a
    parent folder up to the model folder. None when there is none (official values and
    the checkpoint's shapes are used, or the config stored in our safetensors)."""
    roots = [os.path.abspath(p) for p in _folders(TEXT_ENCODER_FOLDERS)]
    folder = os.path.dirname(os.path.abspath(path))
    for _ in range(4):
        candidate = os.path.join(folder, "configs.json")
        if os.path.isfile(candidate):
            return candidate
        if folder in roots or os.path.dirname(folder) == folder:
            break
        folder = os.path.dirname(folder)
    return None


def check_model_name(name, network: str):
    """For ``validate_inputs``: True, or the message of a missing file."""
    if name is None:  # linked from another node: checked when it runs
        return True
    if not isinstance(name, str) or folder_paths.get_full_path(MODEL_FOLDER, name) is None:
        return missing_file_message(str(name), network)
    return True


# --------------------------------------------------------------------------- socket types

KeyframeUNet = io.Custom("KV_KEYFRAME_UNET")
InterpolationUNet = io.Custom("KV_INTERPOLATION_UNET")
MoVQ = io.Custom("KV_MOVQ")
VideoMoVQ = io.Custom("KV_VIDEO_MOVQ")
TextEncoder = io.Custom("KV_TEXT_ENCODER")
Conditioning = io.Custom("KV_CONDITIONING")
FirstFrame = io.Custom("KV_FIRST_FRAME")


# --------------------------------------------------------------------------- dtypes

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


# --------------------------------------------------------------------------- networks

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
        return self.patcher.model

    @property
    def load_device(self) -> torch.device:
        return self.patcher.load_device

    def describe(self) -> str:
        return f"{NETWORK_NAMES[self.kind]} '{self.name}'"


def wrap(module: torch.nn.Module, kind: str, name: str, compute_dtype, *, load_device, offload_device,
         null_embedding=None, configs=None) -> Network:
    patcher = comfy.model_patcher.ModelPatcher(module, load_device=load_device, offload_device=offload_device)
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


def offload(network: Network) -> None:
    """Unload ``network`` to its offload device now (no-op when it is not loaded), through
    ComfyUI's own calls, which also keep its list of loaded models right.

    Hosts that have ``model_management.unload_model_and_clones`` (newer than 0.3.75; found
    by looking for it, never by version) unload the network's patcher with it. Older hosts
    (0.3.75) get ``free_memory`` on the network's load device with every other loaded model
    in ``keep_loaded``, which is what that call does on the newer ones.
    """
    patcher = network.patcher
    unload = getattr(mm, "unload_model_and_clones", None)
    if unload is not None:
        unload(patcher)
    else:
        others = [mm.LoadedModel(p) for p in mm.loaded_models() if p is not None and p is not patcher]
        mm.free_memory(1e30, network.load_device, keep_loaded=others)
    mm.soft_empty_cache()


@contextlib.contextmanager
def stage(*networks: Network, memory_required: int = 0) -> Iterator[torch.device]:
    """Load ``networks`` for one stage, yield the device to run on, offload afterwards
    (also after an error or an interrupt, so the memory is free for the next prompt)."""
    mm.load_models_gpu([n.patcher for n in networks], memory_required=int(memory_required))
    try:
        for n in networks:
            _place_stray_parameters(n.module, n.load_device)
        yield networks[0].load_device
    finally:
        for n in networks:
            offload(n)


def activation_memory(rows: int, h: int, w: int, dtype: torch.dtype, factor: float) -> int:
    """Rough peak activation memory of a U-Net / decoder call (bytes), in the way
    ComfyUI's models estimate it: proportional to rows × latent area × dtype size."""
    return int(rows * h * w * mm.dtype_size(dtype) * factor * 1024)


# --------------------------------------------------------------------------- progress

def previews_enabled() -> bool:
    return args.preview_method != LatentPreviewMethod.NoPreviews


def latent_preview(latent: torch.Tensor, max_size: Optional[int] = None):
    """A quick RGB view of MoVQ latents ``[N, 4, h, w]`` (frames tiled in a grid): the
    first three channels, each normalised to its own range (no decoder is run)."""
    from PIL import Image

    x = latent.detach().float()
    if x.ndim == 3:
        x = x[None]
    n, _, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    rgb = x[:, :3]
    lo = rgb.amin(dim=(0, 2, 3), keepdim=True)
    hi = rgb.amax(dim=(0, 2, 3), keepdim=True)
    rgb = ((rgb - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    grid = torch.zeros(3, rows * h, cols * w, device=rgb.device)
    for i in range(n):  # a handful of frames, once per step
        r, c = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = rgb[i]
    img = Image.fromarray((grid.permute(1, 2, 0) * 255).to(torch.uint8).cpu().numpy())
    scale = max(1, min(8, (max_size or args.preview_size) // max(img.width, img.height)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return ("JPEG", img, max_size or args.preview_size)


class StepProgress:
    """ComfyUI progress bar for one sampling loop; every step is an interrupt point and,
    when previews are on, shows the current latent. ``to_frames`` maps the loop's latent
    to ``[N, 4, h, w]`` frames for the preview."""

    def __init__(self, total: int, to_frames: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.bar = comfy.utils.ProgressBar(total)
        self.to_frames = to_frames if previews_enabled() else None

    def cancel(self) -> bool:
        mm.throw_exception_if_processing_interrupted()
        return False

    def __call__(self, step: int, total: int, latent: Optional[torch.Tensor] = None) -> None:
        preview = None
        if self.to_frames is not None and latent is not None:
            with contextlib.suppress(Exception):  # a preview must never break a run
                preview = latent_preview(self.to_frames(latent))
        self.bar.update_absolute(step, total, preview)
        mm.throw_exception_if_processing_interrupted()


# --------------------------------------------------------------------------- LATENT format

KEYFRAMES_KEY = "kandinsky_video_keyframes"


def video_latent(frames: torch.Tensor, num_keyframes: Optional[int]) -> dict:
    """Core LATENT dict of one video from kv_core frames ``[T, 4, h, w]``:
    ``samples`` ``[1, 4, T, h, w]`` (the layout of ComfyUI's video latents) on the
    intermediate device, plus the keyframe count the frame rate derives from when it is
    known (None: not recorded, e.g. an Interpolate of a loaded latent)."""
    samples = frames.detach().float().movedim(0, 1).unsqueeze(0).contiguous()
    out = {"samples": samples.to(mm.intermediate_device())}
    if num_keyframes is not None:
        out[KEYFRAMES_KEY] = int(num_keyframes)
    return out


def latent_videos(latent, what: str) -> list[torch.Tensor]:
    """The videos of a LATENT as kv_core frame tensors ``[T, 4, h, w]`` (float32)."""
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise ValueError(f"{what}: expected a LATENT from Kandinsky Video Keyframes / Interpolate "
                         "(or Load Latent of one)")
    s = latent["samples"]
    if s.ndim != 5 or s.shape[1] != 4:
        raise ValueError(f"{what}: expected a Kandinsky Video latent [batch, 4, frames, h, w], got "
                         f"shape {list(s.shape)}" + (" (an image latent, not a video)" if s.ndim == 4 else ""))
    return [v.movedim(0, 1).float() for v in s]


def recorded_keyframes(latent: dict) -> Optional[int]:
    """The keyframe count our nodes record in a LATENT; None when it is not there (core
    Save Latent keeps only ``samples``, so a loaded latent never has it)."""
    recorded = latent.get(KEYFRAMES_KEY)
    ok = isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 2
    return recorded if ok else None


def video_keyframes(latent: dict, num_frames: int, given: int, what: str) -> int:
    """The keyframe count a video was made from, for its frame rate: ``given`` (a node
    input, 0 = take it from the latent) or the latent's record, never guessed from the
    frame count (45 frames are 12 keyframes after one pass, or 45 keyframes). Refuses,
    saying what to set, when neither says it, when they disagree, or when the frame count
    is no video of that many keyframes."""
    from ..kv_core.pipeline import interpolation_passes

    recorded = recorded_keyframes(latent)
    if given and recorded is not None and given != recorded:
        raise ValueError(f"{what}: num_keyframes is {given} but this latent was made from {recorded} "
                         f"keyframes; set num_keyframes to 0 (the latent's count) or to {recorded}")
    keyframes = given or recorded
    if keyframes is None:
        raise ValueError(f"{what}: this latent does not say how many keyframes it was made from (Save Latent "
                         f"keeps only its {num_frames} frames) and the frame rate depends on it: set "
                         "num_keyframes on this node to the Keyframes node's num_keyframes (12 in the release)")
    try:
        interpolation_passes(num_frames, keyframes)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    return keyframes


def size_rule(**networks: Optional[Network]):
    """kv_core's ``size_rule`` for loaded networks (``movq=``, ``video_movq=``, ``unet=``,
    ``interpolation_unet=``): the sizes they can run. The nodes check it at run time
    before anything runs; their ``validate_inputs`` cannot see the networks."""
    from ..kv_core.pipeline import size_rule as rule

    return rule(**{k: n.module for k, n in networks.items() if n is not None})


# --------------------------------------------------------------------------- validation

def _host_skips_v3_combos() -> bool:
    """True on hosts whose prompt validation checks a combo's value only for legacy list
    types (ComfyUI 0.3.75); newer ones also check V3 ``COMBO`` inputs, and they expand
    input types by name (``DYNAMIC_INPUT_LOOKUP``), where a list type must not appear."""
    try:
        import execution
        from comfy_api.latest import _io

        source = inspect.getsource(execution.validate_inputs)
    except Exception:  # unknown host: leave the types as they are (the nodes check at run time)
        return False
    return "Combo.io_type" not in source and not hasattr(_io, "DYNAMIC_INPUT_LOOKUP")


LEGACY_COMBOS = _host_skips_v3_combos()


class CheckedCombos:
    """Mixin (before ``io.ComfyNode``) that has the host check every combo value on its own
    input. ComfyUI 0.3.75 checks a combo's value only when its type is the legacy list of
    options, not a V3 ``COMBO`` (newer hosts check both); a ``validate_inputs`` would show
    its message under every input it takes. So on such a host the input types the
    executor reads are given in the legacy form; ``/object_info`` (the frontend's view)
    is unchanged, and newer hosts get the V3 types untouched."""

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


def check_finite(name: str, value) -> float:
    """A FLOAT input as a finite float. ComfyUI's min/max checks let NaN through
    (every comparison with NaN is False), so the nodes call this before running."""
    from ..kv_core.pipeline import check_guidance

    return check_guidance(name, value)


# --------------------------------------------------------------------------- values on sockets

@dataclass(eq=False)
class TextConditioning:
    """What ``KV_CONDITIONING`` carries: the prompt's contexts for both projections
    (``{label: (context [1, L, D], mask [1, L])}``, on the intermediate device) and those of
    the negative prompt (None when it is blank: the null-text context is used then, as in
    the release)."""

    prompt: str
    negative_prompt: str
    contexts: dict
    negative_contexts: Optional[dict] = None

    def text_condition(self, label: str = "projection_base"):
        from ..kv_core.sampling import TextCondition

        context, mask = self.contexts[label]
        if self.negative_contexts is None:
            return TextCondition(context, mask)
        neg, neg_mask = self.negative_contexts[label]
        return TextCondition(context, mask, neg, neg_mask)

    @property
    def context_dim(self) -> int:
        return int(next(iter(self.contexts.values()))[0].shape[-1])


@dataclass(eq=False)
class FirstFrameCondition:
    """What ``KV_FIRST_FRAME`` carries: the MoVQ latent ``[4, h, w]`` (float32) of the
    conditioning picture at the video size."""

    latent: torch.Tensor
    width: int
    height: int


def check_context_dim(conditioning: TextConditioning, network: Network) -> None:
    """Fail clearly when a conditioning and a U-Net come from different releases."""
    want = int(network.null_embedding.shape[-1]) if network.null_embedding is not None else None
    if want is not None and conditioning.context_dim != want:
        raise ValueError(f"The conditioning is {conditioning.context_dim}-wide but the {network.describe()} "
                         f"takes {want}-wide contexts: the text projections and the U-Net are not from the "
                         "same release.")


def ComputeDtype(network: Network) -> dtypes.InputDtype:  # noqa: N802 - the stage nodes call it by this name
    """The network's module called with its first input in the network's compute dtype
    (:class:`kv_core.dtypes.InputDtype`)."""
    return dtypes.InputDtype(network.module, network.compute_dtype)
