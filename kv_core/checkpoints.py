"""Loading Kandinsky Video 1.1 checkpoints: the official release files and our safetensors.

Official files (``ai-forever/KandinskyVideo_1_1``), read exactly as released and only with
``torch.load(weights_only=True)`` (a file carrying any pickled Python object other than
tensors is refused and nothing in it runs):

- ``t2v.pt``, ``interpolation.pt``: ``{'unet': state_dict, 'null_embedding': [context_dim]}``
- ``movq.pt``, ``video_movq.pt``: MoVQ state dicts (the second with the temporal decoder)
- ``t5_projections.pt``: ``{'projection_base': sd, 'projection_interpolation': sd}``
- ``configs.json``: ``{"t2v": {"configs": kwargs}, "interpolation": {...}, "image_movq": {...},
  "video_movq": {...}, "text_encoder": {...}}``
- ``google/flan-ul2``: a Hugging Face T5 folder, of which only the encoder is read.

Our single-file form (written by :mod:`kv_core.convert`) is a safetensors file holding the
network's tensors under their official state-dict names (plus ``null_embedding`` for the
U-Nets) and, in its metadata, the format version, the network kind and its constructor
config (see :data:`META_FORMAT` and friends).

Configuration of a network, in order of precedence: the ``configs`` argument (a
``configs.json`` path or dict, a section of it, or the kwargs themselves); the config stored
in our safetensors; otherwise the official configuration of the network module with every
value that the checkpoint's keys and shapes determine taken from the checkpoint
(:func:`detect_config`). Only ``groups`` and ``head_dim`` of the U-Nets and ``resolution``,
``dropout`` and the temporal padding of the MoVQs cannot be seen in a state dict.

Networks are built on the meta device and receive the checkpoint's tensors with
``load_state_dict(assign=True)``, cast one tensor at a time, so a network never exists twice
in memory. Loading is strict: every problem raises :class:`CheckpointError` naming the file,
the network expected and the first offending keys.
"""
from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

# --- our safetensors format --------------------------------------------------------------

FORMAT_VERSION = "1"
META_FORMAT = "kandinsky_video.format_version"
META_NETWORK = "kandinsky_video.network"
META_CONFIG = "kandinsky_video.config"
META_DTYPE = "kandinsky_video.dtype"
META_SOURCE = "kandinsky_video.source"
META_TOKENIZER = "kandinsky_video.tokenizer"
NULL_EMBEDDING_KEY = "null_embedding"

KEYFRAME_UNET = "keyframe_unet"
INTERPOLATION_UNET = "interpolation_unet"
MOVQ = "movq"
VIDEO_MOVQ = "video_movq"
TEXT_PROJECTIONS = "text_projections"
T5_ENCODER = "t5_encoder"
NETWORK_KINDS = (KEYFRAME_UNET, INTERPOLATION_UNET, MOVQ, VIDEO_MOVQ, TEXT_PROJECTIONS, T5_ENCODER)

# section of configs.json for each network
CONFIG_SECTIONS = {KEYFRAME_UNET: "t2v", INTERPOLATION_UNET: "interpolation",
                   MOVQ: "image_movq", VIDEO_MOVQ: "video_movq"}

_DESCRIPTIONS = {
    KEYFRAME_UNET: "keyframe U-Net (t2v.pt)",
    INTERPOLATION_UNET: "interpolation U-Net (interpolation.pt)",
    MOVQ: "image MoVQ (movq.pt)",
    VIDEO_MOVQ: "video MoVQ (video_movq.pt)",
    TEXT_PROJECTIONS: "text projections (t5_projections.pt)",
    T5_ENCODER: "T5 text encoder",
}

FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))
# dtype of the non-fp8 tensors of an fp8 file, and of fp8 weights loaded without fp8 support
FP8_COMPANION_DTYPE = torch.bfloat16

_MAX_LISTED = 5


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not match the network it should hold."""


def _listing(keys, limit: int = _MAX_LISTED) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(value) -> torch.dtype | None:
    """``torch.float16``, ``"fp16"``, ``"float16"``, ``"bf16"``, ``"fp8"``... -> torch dtype."""
    if value is None or isinstance(value, torch.dtype):
        return value
    aliases = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16",
               "bf16": "bfloat16", "fp8": "float8_e4m3fn", "fp8_e4m3fn": "float8_e4m3fn",
               "fp8_e5m2": "float8_e5m2"}
    name = aliases.get(str(value).lower(), str(value).lower())
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {value!r}")
    return dtype


# --- reading files -------------------------------------------------------------------------

@dataclass
class TensorFile:
    """The tensors of one checkpoint file, read lazily where the format allows.

    ``shapes`` lists every tensor (flattened names: nested dicts joined with ``.``);
    :meth:`get` reads one. ``metadata`` is the safetensors metadata (empty for ``.pt``).
    """

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    metadata: dict[str, str]
    _get: Callable[[str], torch.Tensor] = field(repr=False)

    def get(self, key: str) -> torch.Tensor:
        return self._get(key)

    def keys(self):
        return self.shapes.keys()

    @property
    def network(self) -> str | None:
        """The network kind recorded in our safetensors metadata, if any."""
        return self.metadata.get(META_NETWORK)

    @property
    def config(self) -> dict | None:
        raw = self.metadata.get(META_CONFIG)
        return json.loads(raw) if raw else None


#: safetensors dtype names -> torch dtypes
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
for _name, _st in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        SAFETENSORS_DTYPES[_st] = getattr(torch, _name)


def _flatten(obj, prefix: str, out: dict, path: Path):
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out, path)
    else:
        raise CheckpointError(f"{path}: unexpected {type(obj).__name__} at {prefix or 'top level'!r} "
                              "(a checkpoint holds tensors and dicts of tensors only)")


def _torch_load(path: Path):
    mmap = zipfile.is_zipfile(path)  # the legacy (non-zip) torch format cannot be memory-mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {path}: it contains pickled Python objects that are not tensors, "
            "and checkpoints are only read with torch.load(weights_only=True). Nothing in the "
            f"file was executed. ({str(err).splitlines()[0]})") from None
    except Exception as err:  # noqa: BLE001 - every reader failure becomes one error class
        raise CheckpointError(f"could not read {path} (truncated, damaged or not a torch "
                              f"checkpoint): {type(err).__name__}: {err}") from err


def open_tensor_file(path) -> TensorFile:
    """Open a ``.pt``/``.pth``/``.bin`` (weights only) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), e.g. an interrupted download or copy: "
                              "download or copy it again")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
            metadata = dict(handle.metadata() or {})
            shapes, dtypes = {}, {}
            for key in handle.keys():
                sl = handle.get_slice(key)
                shapes[key] = tuple(sl.get_shape())
                dtypes[key] = SAFETENSORS_DTYPES.get(sl.get_dtype(), torch.float32)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"could not read {path} (truncated, damaged or not a "
                                  f"safetensors file): {type(err).__name__}: {err}") from err

        def get(key: str) -> torch.Tensor:
            try:
                return handle.get_tensor(key)
            except Exception as err:  # noqa: BLE001
                raise CheckpointError(f"{path}: could not read tensor {key!r}: {err}") from err

        return TensorFile(path, shapes, dtypes, metadata, get)

    flat: dict[str, torch.Tensor] = {}
    _flatten(_torch_load(path), "", flat, path)
    return TensorFile(path, {k: tuple(v.shape) for k, v in flat.items()},
                      {k: v.dtype for k, v in flat.items()}, {}, flat.__getitem__)



# --- what a file holds -----------------------------------------------------------------------

def identify(keys) -> str | None:
    """Guess which network a set of (flattened) keys belongs to; None if none fits."""
    keys = set(keys)
    strip = {k.removeprefix("unet.") for k in keys}
    if any(k.startswith(("projection_base.", "projection_interpolation.")) for k in keys):
        return TEXT_PROJECTIONS
    if any(re.search(r"(^|\.)block\.0\.layer\.0\.SelfAttention\.q\.weight$", k) for k in keys):
        return T5_ENCODER
    if "encoder.conv_in.weight" in strip or "decoder.conv_out.weight" in strip:
        if any(k.startswith("decoder.") and ".temporal_" in k for k in strip):
            return VIDEO_MOVQ
        return MOVQ
    if "image_in_layer.weight" in strip:
        return KEYFRAME_UNET
    if "in_layer.weight" in strip and any(k.startswith("down_samples.") for k in strip):
        return INTERPOLATION_UNET
    return None


# what each network's keys look like (for the message about a file of something else)
_SIGNATURES = {
    KEYFRAME_UNET: "{'unet': {'image_in_layer.weight', 'in_layer.weight', 'down_samples.0...', ...}, "
                   "'null_embedding'} (or our safetensors with kandinsky_video.* metadata)",
    INTERPOLATION_UNET: "{'unet': {'in_layer.weight', 'down_samples.0...', 'temporal_...', ...}, "
                        "'null_embedding'} (or our safetensors with kandinsky_video.* metadata)",
    MOVQ: "'encoder.conv_in.weight', 'quant_conv.weight', 'decoder.conv_out.weight', ...",
    VIDEO_MOVQ: "'encoder.conv_in.weight', 'decoder.up.0.block.0.temporal_...', 'decoder.conv_out.weight', ...",
    TEXT_PROJECTIONS: "'projection_base.0.weight', 'projection_interpolation.0.weight', ...",
    T5_ENCODER: "'shared.weight', 'encoder.block.0.layer.0.SelfAttention.q.weight', ...",
}

# (test on the keys, what such a file is); first match wins
_FAMILIES = (
    (lambda ks: any(re.search(r"(^|[._])lora[._]|\.lora_(up|down|A|B)\.|^lora_(unet|te)", k) for k in ks),
     "a LoRA (low-rank weight deltas for another model), not a full network"),
    (lambda ks: any(k.startswith("model.diffusion_model.") for k in ks)
     and any(k.startswith("conditioner.embedders.") for k in ks),
     "a Stable Diffusion XL checkpoint (model.diffusion_model / conditioner / first_stage_model)"),
    (lambda ks: any(k.startswith("model.diffusion_model.") for k in ks),
     "a Stable Diffusion checkpoint (model.diffusion_model / cond_stage_model / first_stage_model)"),
    (lambda ks: any(k.startswith(("input_blocks.", "control_model.", "input_hint_block.")) for k in ks),
     "a Stable Diffusion U-Net or ControlNet"),
    (lambda ks: any(k.startswith(("double_blocks.", "single_blocks.")) for k in ks), "a Flux transformer"),
    (lambda ks: any(k.startswith("joint_blocks.") for k in ks), "a Stable Diffusion 3 transformer"),
    (lambda ks: any(k.startswith("text_model.encoder.layers.") for k in ks), "a CLIP text encoder"),
    (lambda ks: any(k.startswith("vision_model.") for k in ks), "a CLIP vision encoder"),
    (lambda ks: any(re.match(r"(model\.)?layers\.\d+\.self_attn\.", k) for k in ks), "a language model"),
    (lambda ks: any(k.startswith(("first_stage_model.", "encoder.down.", "decoder.up.")) for k in ks),
     "an image autoencoder (VAE) of another model"),
)


def describe_file(tf: TensorFile, limit: int = 4) -> str:
    """What a file that holds no Kandinsky Video network looks like: its format and
    metadata, tensor count, parameters, dtypes, main key prefixes and, when the keys show
    it, the model family (SD/SDXL checkpoint, LoRA, Flux, CLIP, ...)."""
    fmt = "safetensors" if tf.path.suffix == ".safetensors" else "torch checkpoint"
    if not tf.shapes:
        meta = f" (metadata: {_listing(sorted(tf.metadata), limit)})" if tf.metadata else ""
        return f"a {fmt} with no tensors at all{meta}"
    count = len(tf.shapes)
    params = sum(math.prod(s) for s in tf.shapes.values())
    groups: dict[str, list[list[str]]] = {}
    for key in tf.shapes:
        parts = key.split(".")
        groups.setdefault(parts[0], []).append(parts)
    prefixes: dict[str, int] = {}
    for members in groups.values():  # each first name with the dotted prefix all its keys share
        common = members[0]
        for parts in members[1:]:
            n = next((i for i, (a, b) in enumerate(zip(common, parts)) if a != b), min(len(common), len(parts)))
            common = common[:n]
        shortest = min(len(parts) for parts in members)
        name = ".".join(common) if len(members) == 1 else ".".join(common[: shortest - 1]) + ".*"
        prefixes[name] = len(members)
    top = sorted(prefixes.items(), key=lambda kv: -kv[1])[:limit]
    dtypes = sorted({dtype_name(d) for d in tf.dtypes.values()})
    size = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M" if params >= 1e6 else f"{params:,}"
    parts = [f"a {fmt} of {count} tensor{'s' if count != 1 else ''} ({size} values, {'/'.join(dtypes)})",
             "keys " + ", ".join(f"{p} ({n})" if n > 1 else p for p, n in top)
             + (", ..." if len(prefixes) > limit else "")]
    if tf.metadata:
        shown = [f"{k}={tf.metadata[k][:40]}" for k in ("format", "modelspec.architecture", "ss_network_module")
                 if k in tf.metadata]
        others = [k for k in sorted(tf.metadata) if k not in ("format", "modelspec.architecture", "ss_network_module")]
        parts.append("metadata " + ", ".join(shown + others[: max(0, limit - len(shown))])
                     + (", ..." if len(shown) + len(others) > limit else ""))
    family = next((what for test, what in _FAMILIES if test(tf.shapes)), None)
    if family:
        parts.append(f"it looks like {family}")
    return "; ".join(parts)


def _not_recognised(tf: TensorFile, expected: str) -> CheckpointError:
    want = _DESCRIPTIONS[expected]
    return CheckpointError(f"{tf.path}: expected the {want}, but the file holds nothing this loader recognises: "
                           f"{describe_file(tf)}. The {want} has keys like {_SIGNATURES[expected]}")


@dataclass
class NetworkTensors:
    """The state dict of one network inside a :class:`TensorFile` (names without prefix)."""

    file: TensorFile
    network: str
    prefix: str
    null_key: str | None

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        n = len(self.prefix)
        return {k[n:]: s for k, s in self.file.shapes.items()
                if k.startswith(self.prefix) and k != self.null_key}

    def get(self, key: str) -> torch.Tensor:
        return self.file.get(self.prefix + key)

    def null_embedding(self) -> torch.Tensor | None:
        if self.null_key is None:
            return None
        return self.file.get(self.null_key).to(torch.float32)


def network_tensors(path_or_file, expected: str) -> NetworkTensors:
    """Open ``path_or_file`` and check that it holds the network ``expected``."""
    tf = path_or_file if isinstance(path_or_file, TensorFile) else open_tensor_file(path_or_file)
    want = _DESCRIPTIONS[expected]
    if tf.network is not None:
        if tf.metadata.get(META_FORMAT) != FORMAT_VERSION:
            raise CheckpointError(f"{tf.path}: kandinsky_video safetensors format "
                                  f"{tf.metadata.get(META_FORMAT)!r} is not supported (expected "
                                  f"{FORMAT_VERSION!r}) while loading the {want}")
        found = tf.network
    else:
        found = identify(tf.keys())
    if found is None:
        raise _not_recognised(tf, expected)
    if found != expected:
        what = _DESCRIPTIONS.get(found, f"network {found!r}")
        raise CheckpointError(f"{tf.path}: expected the {want}, but the file holds the {what} "
                              f"(first keys: {_listing(sorted(tf.keys()))})")
    if expected in (KEYFRAME_UNET, INTERPOLATION_UNET):
        official = any(k.startswith("unet.") for k in tf.keys())
        prefix = "unet." if official else ""
        null_key = NULL_EMBEDDING_KEY if NULL_EMBEDDING_KEY in tf.shapes else None
        if null_key is None:
            raise CheckpointError(f"{tf.path}: the {want} has no '{NULL_EMBEDDING_KEY}' "
                                  f"(official files are {{'unet': state_dict, 'null_embedding': tensor}})")
        if official:
            extra = [k for k in tf.keys() if not k.startswith("unet.") and k != null_key]
            if extra:
                raise CheckpointError(f"{tf.path}: unexpected entries beside 'unet' and "
                                      f"'null_embedding' in the {want}: {_listing(extra)}")
        return NetworkTensors(tf, expected, prefix, null_key)
    return NetworkTensors(tf, expected, "", None)


# --- configurations --------------------------------------------------------------------------

@dataclass(frozen=True)
class _NetworkClass:
    module: str
    cls: str
    official: str


_CLASSES = {
    KEYFRAME_UNET: _NetworkClass("unet", "KeyframeUNet", "OFFICIAL_CONFIG"),
    INTERPOLATION_UNET: _NetworkClass("unet_interpolation", "InterpolationUNet", "OFFICIAL_CONFIG"),
    MOVQ: _NetworkClass("movq", "MoVQ", "OFFICIAL_IMAGE_CONFIG"),
    VIDEO_MOVQ: _NetworkClass("movq", "MoVQ", "OFFICIAL_VIDEO_CONFIG"),
}


def _network_module(network: str):
    return importlib.import_module(f".{_CLASSES[network].module}", __package__)


def network_class(network: str) -> type[nn.Module]:
    return getattr(_network_module(network), _CLASSES[network].cls)


def official_config(network: str) -> dict:
    """A copy of the official constructor kwargs of ``network`` (lists for tuples)."""
    return _jsonable(getattr(_network_module(network), _CLASSES[network].official))


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def read_configs_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"could not read configs {path}: {err}") from err


def config_from(configs, network: str) -> dict | None:
    """The constructor kwargs of ``network`` from any of the accepted forms of ``configs``:
    a path to ``configs.json``, its parsed dict, one section (``{"configs": {...}}``) or the
    kwargs themselves. None if ``configs`` is None."""
    if configs is None:
        return None
    if isinstance(configs, (str, os.PathLike)):
        configs = read_configs_json(configs)
    if not isinstance(configs, Mapping):
        raise TypeError(f"configs must be a path or a dict, not {type(configs).__name__}")
    section = CONFIG_SECTIONS[network]
    if section in configs:
        configs = configs[section]
    elif any(s in configs for s in CONFIG_SECTIONS.values()):
        raise CheckpointError(f"configs.json has no {section!r} section (needed for the "
                              f"{_DESCRIPTIONS[network]}); sections: {sorted(configs)}")
    if "configs" in configs and isinstance(configs["configs"], Mapping):
        configs = configs["configs"]
    return _jsonable(configs)


def _indices(shapes, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in shapes if (m := rx.match(k))})


def _detect_unet(shapes: Mapping[str, tuple], cfg: dict, network: str) -> dict:
    cfg = dict(cfg)
    if "in_layer.weight" in shapes:
        cfg["init_channels"], cfg["num_channels"] = shapes["in_layer.weight"][:2]
    if "out_layer.2.weight" in shapes:
        cfg["out_channels"] = shapes["out_layer.2.weight"][0]
    if "to_time_embed.1.weight" in shapes:
        cfg["time_embed_dim"] = shapes["to_time_embed.1.weight"][0]
    if "feature_pooling.attention.to_key.weight" in shapes:
        cfg["context_dim"] = shapes["feature_pooling.attention.to_key.weight"][1]

    levels = _indices(shapes, r"down_samples\.(\d+)\.")
    if levels:
        n = levels[-1] + 1
        blocks = [len(_indices(shapes, rf"down_samples\.{lv}\.resnet_attn_blocks\.(\d+)\.")) for lv in range(n)]
        cross = [f"down_samples.{lv}.resnet_attn_blocks.0.1.attention.to_key.weight" in shapes for lv in range(n)]
        self_attn = [any(k.startswith(f"down_samples.{lv}.self_attention_block.") for k in shapes)
                     for lv in range(n)]
        out_key = "down_samples.{}.resnet_attn_blocks.0.0.resnet_blocks.3.projection.weight"
        dims = [shapes.get(out_key.format(lv), (None,))[0] for lv in range(n)]
        cfg["num_blocks"], cfg["add_cross_attention"], cfg["add_self_attention"] = blocks, cross, self_attn
        if all(dims):
            base = cfg.get("model_channels")
            if not (base and all(d % base == 0 for d in dims)):
                base = math.gcd(*dims)
            cfg["model_channels"], cfg["dim_mult"] = base, [d // base for d in dims]
        first = "down_samples.0.resnet_attn_blocks.0.0.resnet_blocks.{}.projection.weight"
        if first.format(0) in shapes and first.format(3) in shapes:
            hidden, c_in = shapes[first.format(0)][:2]
            c_out = shapes[first.format(3)][0]
            if max(c_in, c_out) % hidden == 0:
                cfg["compression_ratio"] = max(c_in, c_out) // hidden
    for k, s in shapes.items():
        if k.endswith(("attention_block.feed_forward.0.weight", ".1.feed_forward.0.weight")) and s[0] % s[1] == 0:
            cfg["expansion_ratio"] = s[0] // s[1]
            break

    if network == KEYFRAME_UNET:
        cfg["noise_augmentation"] = any(k.startswith("temporal_noise_aug_time_encoding.") for k in shapes)
        cfg["motion_score"] = any(k.startswith("temporal_motion_score_encoding.") for k in shapes)
    else:
        cfg["add_new_temporal_params"] = any(k.startswith("temporal_conv_in.") for k in shapes)
        cfg["add_temporal_attention"] = any(".temporal_attention_block." in k for k in shapes)
        cfg["pass_skip_frames"] = "skip_embeddings.weight" in shapes
        with_time = any(k.startswith("perturbation_to_time_embed.") for k in shapes)
        with_context = "time_embed_context_merge" in shapes
        cfg["use_perturbation_time_embed"] = with_time or with_context
        if with_time or with_context:
            cfg["merge_perturbation_time_with_diffusion_time"] = with_time
            cfg["merge_perturbation_time_with_context"] = with_context
        if levels and len(cfg.get("time_downsample") or []) != levels[-1] + 1:
            cfg["time_downsample"] = [False] * (levels[-1] + 1)
    return cfg


def _detect_movq(shapes: Mapping[str, tuple], cfg: dict, network: str) -> dict:
    cfg = dict(cfg)
    if "encoder.conv_in.weight" in shapes:
        cfg["ch"], cfg["in_channels"] = shapes["encoder.conv_in.weight"][:2]
    if "quant_conv.weight" in shapes:
        cfg["z_channels"] = shapes["quant_conv.weight"][0]
        if "encoder.conv_out.weight" in shapes:
            cfg["double_z"] = shapes["encoder.conv_out.weight"][0] == 2 * cfg["z_channels"]
    if "decoder.conv_out.weight" in shapes:
        cfg["out_ch"] = shapes["decoder.conv_out.weight"][0]
    levels = _indices(shapes, r"encoder\.down\.(\d+)\.")
    if levels and "ch" in cfg:
        n = levels[-1] + 1
        mult = [shapes.get(f"encoder.down.{i}.block.0.conv1.weight", (None,))[0] for i in range(n)]
        if all(mult) and all(m % cfg["ch"] == 0 for m in mult):
            cfg["ch_mult"] = [m // cfg["ch"] for m in mult]
        cfg["num_res_blocks"] = len(_indices(shapes, r"encoder\.down\.0\.block\.(\d+)\."))
        attn_levels = [i for i in range(n) if f"encoder.down.{i}.attn.0.q.weight" in shapes]
        res = cfg.get("resolution")
        if res:
            placed = [i for i in range(n) if res // 2 ** i in (cfg.get("attn_resolutions") or [])]
            if placed != attn_levels:
                cfg["attn_resolutions"] = [res // 2 ** i for i in attn_levels]
    if network == VIDEO_MOVQ:
        temporal_keys = [k for k in shapes if k.startswith("decoder.") and ".temporal_projection1.weight" in k]
        cfg["temporal"] = bool(temporal_keys)
        cfg["temporal_mid_blocks"] = "decoder.mid.block_1.temporal_projection1.weight" in shapes or not temporal_keys
        cfg["temporal_attention_block"] = any(k.startswith("decoder.mid.temporal_attn_1.") for k in shapes)
        cfg["temporal_blocks"] = any(k.startswith("decoder.mid.temporal_block_1.") for k in shapes)
        conv1 = shapes.get("decoder.mid.block_1.conv1.weight")
        cfg["build_3D_decoder"] = bool(conv1) and len(conv1) == 5
        if temporal_keys:
            kernel = list(shapes[temporal_keys[0]][2:])
            if list(cfg.get("temporal_kernel_size") or []) != kernel:
                cfg["temporal_kernel_size"] = kernel
                cfg["temporal_conv_padding"] = [k // 2 for k in kernel]
    return cfg


def detect_config(network: str, shapes: Mapping[str, tuple], base: Mapping | None = None) -> dict:
    """Constructor kwargs of ``network`` for a state dict with these key shapes.

    Starts from ``base`` (default: the official configuration) and replaces every value the
    keys and shapes determine: for the U-Nets channels, levels, blocks, attention placement,
    context/time dims, ratios and the variant switches (keyframe: noise_augmentation,
    motion_score; interpolation: add_new_temporal_params, add_temporal_attention,
    pass_skip_frames, perturbation embeddings); for the MoVQs channels, levels, attention
    placement and the temporal options of the video decoder.
    """
    cfg = _jsonable(dict(base)) if base is not None else official_config(network)
    shapes = {k: tuple(v) for k, v in shapes.items()}
    if network in (KEYFRAME_UNET, INTERPOLATION_UNET):
        return _detect_unet(shapes, cfg, network)
    if network in (MOVQ, VIDEO_MOVQ):
        return _detect_movq(shapes, cfg, network)
    raise ValueError(f"no config detection for {network!r}")


def resolve_config(network: str, configs, tensors: NetworkTensors) -> tuple[dict, str]:
    """``(config, origin)`` with origin 'configs', 'file' or 'detected'."""
    explicit = config_from(configs, network)
    if explicit is not None:
        return explicit, "configs"
    stored = tensors.file.config
    if stored is not None:
        return stored, "file"
    return detect_config(network, tensors.shapes), "detected"


# --- building --------------------------------------------------------------------------------

def supports_fp8_weights(operations) -> bool:
    """True for operation namespaces whose layers cast their weights at run time (ComfyUI's
    ``comfy.ops`` manual-cast classes set ``comfy_cast_weights``)."""
    linear = getattr(operations, "Linear", None)
    return bool(getattr(linear, "comfy_cast_weights", False))


#: a matrix is kept in bfloat16 if its fp8 cast loses more than this fraction of its norm
FP8_MAX_RELATIVE_ERROR = 0.25

# tensors never stored as fp8: the first and last layers and the embedding tables
_FP8_EXCLUDED = re.compile(
    r"^(in_layer|image_in_layer|out_layer|temporal_conv_in|temporal_conv_out|skip_embeddings"
    r"|quant_conv|post_quant_conv|encoder\.conv_in|encoder\.conv_out|decoder\.conv_in|decoder\.conv_out"
    r"|shared|encoder\.embed_tokens)\."
    r"|relative_attention_bias\.weight$")


def fp8_candidate(key: str, tensor: torch.Tensor) -> bool:
    """Whether the fp8 policy considers storing this tensor as fp8 (shape and name only:
    ``tensor`` may be on the meta device); :func:`storage_dtype` then checks its values."""
    return (tensor.is_floating_point() and key != NULL_EMBEDDING_KEY and tensor.ndim >= 2
            and tensor.numel() > 1 and not _FP8_EXCLUDED.search(key))


def storage_dtype(key: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor named ``key`` gets when a network is stored (or loaded) as ``dtype``.

    Non-floating tensors keep theirs and ``null_embedding`` stays float32. For an fp8
    ``dtype`` only the matrices and kernels of inner layers become fp8; biases, norms, merge
    scalars, embedding tables, the first and last layers and any matrix whose fp8 cast would
    lose more than :data:`FP8_MAX_RELATIVE_ERROR` of its norm use :data:`FP8_COMPANION_DTYPE`.
    """
    if not tensor.is_floating_point():
        return tensor.dtype
    if key == NULL_EMBEDDING_KEY:
        return torch.float32
    if dtype not in FP8_DTYPES:
        return dtype
    if not fp8_candidate(key, tensor):
        return FP8_COMPANION_DTYPE
    x = tensor.float()
    norm = x.norm()
    if norm == 0 or (x.to(dtype).float() - x).norm() > FP8_MAX_RELATIVE_ERROR * norm:
        return FP8_COMPANION_DTYPE
    return dtype


def _target_dtype(key: str, t: torch.Tensor, dtype: torch.dtype | None, keep_fp8: bool) -> torch.dtype:
    """dtype of a checkpoint tensor once loaded (see :func:`assign_state_dict`)."""
    if not t.is_floating_point():
        return t.dtype
    if dtype in FP8_DTYPES:  # fp8 weights requested at load time
        if t.dtype in FP8_DTYPES:
            return t.dtype
        return storage_dtype(key, t, dtype)
    if t.dtype in FP8_DTYPES:
        return t.dtype if keep_fp8 else (dtype or FP8_COMPANION_DTYPE)
    return dtype or t.dtype


def _constructor_kwargs(cls, cfg: dict, path, network: str) -> dict:
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(cfg)
    unknown = [k for k in cfg if k not in params]
    if unknown:
        warnings.warn(f"{path}: ignoring config keys the {_DESCRIPTIONS[network]} does not take: "
                      f"{', '.join(unknown)}", stacklevel=3)
    return {k: v for k, v in cfg.items() if k in params}


_DETECTION_HINT = ("; the config was detected from the checkpoint, and what a state dict cannot "
                   "show (U-Net groups and head_dim, MoVQ resolution) is the official value: pass "
                   "the release's configs.json")


def build_network(network: str, config: dict, *, operations=None, dtype=None, device="meta",
                  path=None, hint: str = "") -> nn.Module:
    """Instantiate ``network`` with ``config`` (on the meta device by default)."""
    cls = network_class(network)
    kwargs = _constructor_kwargs(cls, config, path, network)
    try:
        return cls(**kwargs, operations=operations, device=device, dtype=dtype)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: could not build the {_DESCRIPTIONS[network]} from its "
                              f"config {json.dumps(config)}: {type(err).__name__}: {err}{hint}") from err


def check_state_dict(expected: Mapping[str, tuple], found: Mapping[str, tuple], *, path, network: str):
    """Raise :class:`CheckpointError` unless both key sets and all shapes agree."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k} {tuple(found[k])} (network expects {tuple(expected[k])})"
             for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if wrong:
            parts.append(f"shape mismatches: {_listing(wrong)}")
        raise CheckpointError(f"{path}: does not match the {_DESCRIPTIONS[network]} of this "
                              f"configuration; " + "; ".join(parts))


_ALIGNMENT = 64  # bytes: what torch's CPU allocator gives and its vectorised kernels expect


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` in memory aligned to 64 bytes. Tensors read from a safetensors file (or an
    mmap'd .pt) can start at any byte of the file; CPU kernels then take other code paths
    whose last-bit rounding differs, so the same weights would compute slightly different
    outputs depending on the file format they came from. A copy (one tensor at a time)
    makes results independent of the file and keeps the fast paths."""
    if t.device.type == "cpu" and t.numel() and t.data_ptr() % _ALIGNMENT:
        return t.clone()
    return t


def _unregistered_tensors(layer: nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the tensors a layer has not registered yet but will create when a
    state dict is loaded into it.

    ComfyUI's ``comfy.ops`` (``disable_weight_init`` / ``manual_cast``) with dynamic VRAM
    on (newer than 0.3.x, NVIDIA, torch >= 2.8) build ``Linear`` with ``weight = None``,
    ``bias = None`` and ``comfy_need_lazy_init_bias`` (the ``bias`` argument), and create both
    only in ``_load_from_state_dict``; their shapes are those the layer declares
    (``out_features``, ``in_features``). An ``Embedding`` left without weight is handled the
    same way (``num_embeddings``, ``embedding_dim``).
    """
    out: dict[str, tuple[int, ...]] = {}
    if isinstance(layer, nn.Linear):
        if getattr(layer, "weight", None) is None:
            out["weight"] = (layer.out_features, layer.in_features)
        if getattr(layer, "bias", None) is None and getattr(layer, "comfy_need_lazy_init_bias", False):
            out["bias"] = (layer.out_features,)
    elif isinstance(layer, nn.Embedding) and getattr(layer, "weight", None) is None:
        out["weight"] = (layer.num_embeddings, layer.embedding_dim)
    return out


def expected_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor that ``module.load_state_dict`` needs: its state dict
    (on the meta device, shapes only) plus the tensors of layers that create their weights
    only while a state dict is loaded (see :func:`_unregistered_tensors`). Works for both
    kinds of layers, so the same strict check holds on every ComfyUI version."""
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    for name, layer in module.named_modules(remove_duplicate=False):
        prefix = f"{name}." if name else ""
        for key, shape in _unregistered_tensors(layer).items():
            shapes.setdefault(prefix + key, shape)
    return shapes


def assign_state_dict(module: nn.Module, tensors: Mapping[str, tuple] | None, get: Callable[[str], torch.Tensor],
                      *, path, network: str, device=None, dtype=None, keep_fp8=False) -> nn.Module:
    """Check keys/shapes of a meta-built ``module`` against a checkpoint, then load the
    checkpoint's tensors (cast and moved one at a time) with ``load_state_dict(strict=True,
    assign=True)``, so layers that create their weights while loading (ComfyUI's lazy
    ``comfy.ops`` layers) get them too. Raises :class:`CheckpointError` on missing or
    unexpected keys, shape mismatches, or tensors left unset or on the meta device."""
    expected = expected_shapes(module)
    check_state_dict(expected, tensors, path=path, network=network)
    state = {}
    for key in expected:
        t = get(key)
        state[key] = _aligned(t.to(device=device or "cpu", dtype=_target_dtype(key, t, dtype, keep_fp8)))
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:  # a layer that loads differently from what it declared
        raise CheckpointError(f"{path}: the {_DESCRIPTIONS[network]} did not take the checkpoint: {err}") from None
    leftover = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    unset = [f"{n}.{k}" if n else k for n, m in module.named_modules() for k in _unregistered_tensors(m)]
    if leftover or unset:
        raise CheckpointError(f"{path}: the {_DESCRIPTIONS[network]} has tensors outside its state "
                              f"dict that stay unset or on the meta device: {_listing(leftover + unset)}")
    module.requires_grad_(False)
    return module.eval()


def _load_network(network: str, path, configs, *, device, dtype, operations, keep_fp8):
    tensors = network_tensors(path, network)
    config, origin = resolve_config(network, configs, tensors)
    dtype = parse_dtype(dtype)
    if keep_fp8 is None:
        keep_fp8 = supports_fp8_weights(operations)
    if dtype in FP8_DTYPES and not keep_fp8:
        raise CheckpointError(f"{tensors.file.path}: fp8 weights ({dtype_name(dtype)}) need an operations "
                              "namespace that casts weights at run time (e.g. comfy.ops.manual_cast)")
    hint = _DETECTION_HINT if origin == "detected" else ""
    module = build_network(network, config, operations=operations, dtype=dtype, path=tensors.file.path,
                           hint=hint)
    try:
        assign_state_dict(module, tensors.shapes, tensors.get, path=tensors.file.path, network=network,
                          device=device, dtype=dtype, keep_fp8=keep_fp8)
    except CheckpointError as err:
        if origin != "detected":
            detected = detect_config(network, tensors.shapes, config)
            says = ", ".join(f"{k}={json.dumps(v)}" for k, v in detected.items() if config.get(k) != v)
            where = "the configs given" if origin == "configs" else "the file's metadata"
            raise CheckpointError(f"{err} (config from {where}"
                                  + (f"; the checkpoint's keys say {says})" if says else ")")) from None
        raise
    module.kv_config = config  # the kwargs it was built with (used by the converter)
    return module, tensors


def _null_embedding(net, tensors: NetworkTensors) -> torch.Tensor:
    """The U-Net's null embedding, refused unless it is ``[context_dim]`` of the network (a
    wrong one loads but breaks every unconditional pass)."""
    null = tensors.null_embedding()
    width = net.kv_config.get("context_dim")
    if width is not None and tuple(null.shape) != (width,):
        raise CheckpointError(f"{tensors.file.path}: '{NULL_EMBEDDING_KEY}' has shape {tuple(null.shape)} but the "
                              f"{_DESCRIPTIONS[tensors.network]} takes a context of width {width}: "
                              f"expected [{width}]")
    return null


def load_keyframe_unet(path, configs=None, *, device=None, dtype=None, operations=None, keep_fp8=None):
    """``(KeyframeUNet, null_embedding [context_dim] float32)`` from ``t2v.pt`` or our safetensors.

    ``configs``: ``configs.json`` (path or dict), its ``t2v`` section or the kwargs; default:
    the config stored in our safetensors, else the official one adapted to the checkpoint.
    ``dtype``: cast every floating tensor to it (default: keep the stored dtype). fp8 weights
    of our fp8 files stay fp8 when ``keep_fp8`` (default: when ``operations`` casts weights at
    run time, as ComfyUI's ops do), otherwise they are cast to ``dtype`` (or bfloat16).
    ``dtype=torch.float8_e4m3fn`` (with such ``operations``) stores the weights of any file
    as fp8 at load time, with the converter's policy (:func:`storage_dtype`).
    """
    net, tensors = _load_network(KEYFRAME_UNET, path, configs, device=device, dtype=dtype,
                                 operations=operations, keep_fp8=keep_fp8)
    return net, _null_embedding(net, tensors).to(device or "cpu")


def load_interpolation_unet(path, configs=None, *, device=None, dtype=None, operations=None, keep_fp8=None):
    """``(InterpolationUNet, null_embedding)`` from ``interpolation.pt`` or our safetensors
    (``configs`` section ``interpolation``; otherwise as :func:`load_keyframe_unet`)."""
    net, tensors = _load_network(INTERPOLATION_UNET, path, configs, device=device, dtype=dtype,
                                 operations=operations, keep_fp8=keep_fp8)
    return net, _null_embedding(net, tensors).to(device or "cpu")


def load_movq(path, configs=None, *, video=None, device=None, dtype=None, operations=None, keep_fp8=None):
    """The image MoVQ (``movq.pt``) or the video MoVQ (``video_movq.pt``), or our safetensors.

    ``video``: None to take what the file holds, True/False to require the video/image MoVQ.
    ``configs`` section ``image_movq`` or ``video_movq``.
    """
    tf = open_tensor_file(path)
    found = tf.network or identify(tf.keys())
    if video is None:
        network = VIDEO_MOVQ if found == VIDEO_MOVQ else MOVQ
    else:
        network = VIDEO_MOVQ if video else MOVQ
    net, _ = _load_network(network, tf, configs, device=device, dtype=dtype,
                           operations=operations, keep_fp8=keep_fp8)
    return net


def load_null_embedding(path) -> torch.Tensor:
    """The ``null_embedding`` (float32) of a U-Net file, without building the network."""
    tf = open_tensor_file(path)
    kind = tf.network or identify(tf.keys())
    if kind is None:
        raise _not_recognised(tf, KEYFRAME_UNET)
    if kind not in (KEYFRAME_UNET, INTERPOLATION_UNET):
        raise CheckpointError(f"{path}: expected a U-Net file (t2v.pt or interpolation.pt) with a "
                              f"null embedding, found the {_DESCRIPTIONS.get(kind, kind)}")
    return network_tensors(tf, kind).null_embedding()


# --- text ------------------------------------------------------------------------------------

def load_text_projections(path, *, device=None, dtype=None, operations=None) -> dict[str, nn.Module]:
    """``{'projection_base': TextProjection, 'projection_interpolation': TextProjection}`` from
    ``t5_projections.pt`` or our safetensors form (``dtype`` default: as stored)."""
    from .text import PROJECTION_LABELS, TextProjection

    tensors = network_tensors(path, TEXT_PROJECTIONS)
    shapes = tensors.shapes
    out = {}
    for label in PROJECTION_LABELS:
        w = shapes.get(f"{label}.0.weight")
        if w is None or len(w) != 2:
            raise CheckpointError(f"{tensors.file.path}: the {_DESCRIPTIONS[TEXT_PROJECTIONS]} lacks "
                                  f"'{label}.0.weight' [context_dim, d_model] (keys: {_listing(sorted(shapes))})")
        context_dim, d_model = w
        proj = TextProjection(d_model, context_dim, operations=operations, device="meta")
        sub = {k[len(label) + 1:]: s for k, s in shapes.items() if k.startswith(label + ".")}
        assign_state_dict(proj, sub, lambda k, label=label: tensors.get(f"{label}.{k}"),
                          path=tensors.file.path, network=TEXT_PROJECTIONS, device=device,
                          dtype=parse_dtype(dtype), keep_fp8=supports_fp8_weights(operations))
        out[label] = proj
    others = [k for k in shapes if not k.startswith(tuple(f"{lb}." for lb in PROJECTION_LABELS))]
    if others:
        raise CheckpointError(f"{tensors.file.path}: unexpected keys in the "
                              f"{_DESCRIPTIONS[TEXT_PROJECTIONS]}: {_listing(others)}")
    return out


def t5_encoder_keys(keys) -> list[str]:
    """The keys of a full T5 checkpoint that the encoder needs (embedding + ``encoder.*``)."""
    return [k for k in keys if k.startswith("encoder.") or k == "shared.weight"]


def _t5_weight_files(folder: Path) -> tuple[list[tuple[Path, list[str] | None]], str]:
    """[(file, encoder keys in it or None for "look inside")], format ('safetensors'|'bin')."""
    for index_name, fmt in (("model.safetensors.index.json", "safetensors"),
                            ("pytorch_model.bin.index.json", "bin")):
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            by_file: dict[str, list[str]] = {}
            for key in t5_encoder_keys(weight_map):
                by_file.setdefault(weight_map[key], []).append(key)
            return [(folder / f, keys) for f, keys in sorted(by_file.items())], fmt
    for name, fmt in (("model.safetensors", "safetensors"), ("pytorch_model.bin", "bin")):
        if (folder / name).is_file():
            return [(folder / name, None)], fmt
    raise CheckpointError(f"{folder}: no T5 weights (model.safetensors[.index.json] or "
                          "pytorch_model.bin[.index.json])")


def t5_encoder_file(folder) -> TensorFile:
    """The encoder tensors of a Hugging Face T5 folder, as a lazily read :class:`TensorFile`.

    Only the encoder is ever read: with an index, shards holding no encoder tensor are never
    opened; safetensors are read key by key; ``.bin`` shards are memory-mapped
    (``weights_only``), so the decoder tensors beside the encoder's are never read into memory.
    """
    from safetensors import safe_open

    folder = Path(folder)
    files, fmt = _t5_weight_files(folder)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, torch.dtype] = {}
    getters: dict[str, Callable[[], torch.Tensor]] = {}
    for file, keys in files:
        try:
            if fmt == "safetensors":
                handle = safe_open(str(file), framework="pt", device="cpu")
                for key in keys if keys is not None else t5_encoder_keys(handle.keys()):
                    sl = handle.get_slice(key)
                    shapes[key] = tuple(sl.get_shape())
                    dtypes[key] = SAFETENSORS_DTYPES.get(sl.get_dtype(), torch.float32)
                    getters[key] = lambda handle=handle, key=key: handle.get_tensor(key)
            else:
                state = _torch_load(file)
                if not isinstance(state, Mapping):
                    raise CheckpointError(f"{file}: not a state dict")
                for key in keys if keys is not None else t5_encoder_keys(state.keys()):
                    if key not in state:
                        raise CheckpointError(f"{file}: the index names {key!r} but the shard lacks it")
                    shapes[key], dtypes[key] = tuple(state[key].shape), state[key].dtype
                    getters[key] = lambda t=state[key]: t
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"could not read {file}: {type(err).__name__}: {err}") from err

    def get(key: str) -> torch.Tensor:
        try:
            return getters[key]()
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"{folder}: could not read tensor {key!r}: {err}") from err

    return TensorFile(folder, shapes, dtypes, {}, get)


def iter_t5_encoder_tensors(folder) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, tensor)`` for the encoder tensors of a Hugging Face T5 folder (see
    :func:`t5_encoder_file`)."""
    tf = t5_encoder_file(folder)
    for key in tf.keys():
        yield key, tf.get(key)


def _t5_encoder_model(config_dict: dict, *, path):
    from transformers import T5Config, T5EncoderModel

    if not isinstance(config_dict, Mapping):
        raise CheckpointError(f"{path}: the T5 config is a {type(config_dict).__name__}, not a JSON object")
    model_type = config_dict.get("model_type")
    if model_type not in (None, "t5"):
        raise CheckpointError(f"{path}: the config describes a {model_type!r} model, not T5 (Kandinsky Video "
                              "needs google/flan-ul2)")
    try:
        config = T5Config.from_dict(dict(config_dict))
        config.is_encoder_decoder = False
        config.use_cache = False
        with torch.device("meta"):
            model = T5EncoderModel(config)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: could not build a T5 encoder from its config: "
                              f"{type(err).__name__}: {err}") from err
    return model


def _assign_t5(model, shapes: Mapping[str, tuple], get, *, path, device, dtype):
    # the token embedding is shared by the model and its encoder stack
    embed = "shared.weight" if "shared.weight" in shapes else "encoder.embed_tokens.weight"
    if embed not in shapes:
        raise CheckpointError(f"{path}: the T5 encoder has no token embedding (shared.weight)")
    aliases = {"shared.weight": embed, "encoder.embed_tokens.weight": embed}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: shapes[aliases.get(k, k)] for k in expected if aliases.get(k, k) in shapes}
    found.update({k: s for k, s in shapes.items() if k not in aliases})
    check_state_dict(expected, found, path=path, network=T5_ENCODER)
    cache: dict[str, torch.Tensor] = {}
    state = {}
    for key in expected:
        src = aliases.get(key, key)
        if src not in cache:
            t = get(src)
            cache[src] = t.to(device=device or "cpu", dtype=_target_dtype(src, t, dtype, False))
        state[key] = cache[src]
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
    return model.eval()


def load_t5_encoder(path, *, device=None, dtype=torch.float32):
    """A transformers ``T5EncoderModel`` from a Hugging Face T5 folder (only its encoder
    tensors are read) or from our encoder-only safetensors."""
    path = Path(path)
    dtype = parse_dtype(dtype)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{path}: a T5 folder needs config.json")
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{config_file}: not a readable JSON file: {err}") from None
        model = _t5_encoder_model(config, path=path)
        tf = t5_encoder_file(path)
        return _assign_t5(model, tf.shapes, tf.get, path=path, device=device, dtype=dtype)
    tf = open_tensor_file(path)
    found = tf.network or identify(tf.keys())
    if found is None:
        raise _not_recognised(tf, T5_ENCODER)
    if found != T5_ENCODER:
        raise CheckpointError(f"{path}: expected the {_DESCRIPTIONS[T5_ENCODER]}, but the file holds "
                              f"the {_DESCRIPTIONS.get(found, found)}")
    config = tf.config
    if config is None:
        raise CheckpointError(f"{path}: a T5 encoder safetensors needs its config in the metadata "
                              f"({META_CONFIG}); convert the Hugging Face folder with kv_core.convert")
    model = _t5_encoder_model(config, path=path)
    keys = t5_encoder_keys(tf.keys())
    extra = [k for k in tf.keys() if k not in keys]
    if extra:
        raise CheckpointError(f"{path}: unexpected keys in the T5 encoder file: {_listing(extra)}")
    return _assign_t5(model, tf.shapes, tf.get, path=path, device=device, dtype=dtype)


#: files from which transformers can build a T5 tokenizer (either is enough)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
#: an English sentence every Flan-UL2 tokenizer reads without ``<unk>``
TOKENIZER_PROBE = "a red car driving along a coastal road at sunset"


def _missing_modules(*names: str) -> list[str]:
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _tokenizer_from_folder(folder: Path, what: str):
    """``AutoTokenizer`` of ``folder``, refusing folders it would build a useless tokenizer
    from: without ``tokenizer.json`` and ``spiece.model`` transformers makes one that maps
    every word to ``<unk>`` (every prompt then gives the same video); ``spiece.model`` alone
    needs sentencepiece and protobuf, without which transformers asks for ``tiktoken``."""
    from transformers import AutoTokenizer

    present = [n for n in TOKENIZER_FILES if (folder / n).is_file()]
    if not present:
        raise CheckpointError(
            f"{what} has no tokenizer: {folder} lacks both tokenizer.json and spiece.model "
            f"(found: {_listing(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else 'nothing'}). "
            "Without them every word becomes <unk> and every prompt gives the same video: copy "
            "tokenizer.json (or spiece.model), tokenizer_config.json and special_tokens_map.json "
            "of google/flan-ul2 into that folder")
    if present == ["spiece.model"]:
        missing = _missing_modules("sentencepiece", "google.protobuf")
        if missing:
            names = " and ".join("protobuf" if m == "google.protobuf" else m for m in missing)
            raise CheckpointError(
                f"{what}: {folder} has spiece.model but no tokenizer.json, and reading spiece.model "
                f"needs the Python package{'s' if len(missing) > 1 else ''} {names}, not installed here: "
                f"`pip install {' '.join('protobuf' if m == 'google.protobuf' else m for m in missing)}` "
                "in ComfyUI's environment (both are in requirements.txt), or put the tokenizer.json of "
                "google/flan-ul2 into the folder")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - transformers raises many kinds
        raise CheckpointError(f"{what}: could not build the T5 tokenizer from {folder} "
                              f"({', '.join(present)}): {type(err).__name__}: {err}") from err


def check_t5_tokenizer(tokenizer, *, path, vocab_size: int | None = None):
    """Refuse a tokenizer the encoder cannot use: no pad or end-of-sequence token, more ids
    than the encoder's embedding has rows (``vocab_size``), or one that reads the English
    :data:`TOKENIZER_PROBE` mostly as ``<unk>`` (a vocabulary of another model)."""
    absent = [name for name in ("pad_token_id", "eos_token_id") if getattr(tokenizer, name, None) is None]
    if absent:
        raise CheckpointError(f"{path}: the tokenizer has no {' and no '.join(a[:-3] for a in absent)} "
                              "(a T5 tokenizer has <pad> = 0 and </s> = 1): it is not Flan-UL2's")
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise CheckpointError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the encoder's embedding "
                              f"only {vocab_size} rows: the tokenizer is not this encoder's (Flan-UL2: 32100 "
                              "tokens, 32128 rows)")
    ids = tokenizer(TOKENIZER_PROBE)["input_ids"]
    unknown = sum(1 for i in ids if i == tokenizer.unk_token_id)
    if tokenizer.unk_token_id is not None and 2 * unknown >= len(ids) - 1:
        raise CheckpointError(f"{path}: the tokenizer reads {unknown} of the {len(ids) - 1} pieces of the English "
                              f"sentence {TOKENIZER_PROBE!r} as <unk>: its vocabulary is not Flan-UL2's "
                              "(every prompt would give nearly the same video)")
    return tokenizer


def load_t5_tokenizer(path, *, vocab_size: int | None = None):
    """The T5 tokenizer of a Hugging Face folder, or the one embedded in our encoder-only
    safetensors (or, for a safetensors without one, the tokenizer files beside it).

    Raises :class:`CheckpointError` naming the folder and what is missing for a folder
    without ``tokenizer.json``/``spiece.model``, for ``spiece.model`` without sentencepiece
    or protobuf, and for a tokenizer :func:`check_t5_tokenizer` refuses (``vocab_size``: the
    rows of the encoder's token embedding, checked when given).
    """
    path = Path(path)
    if path.is_dir():
        tokenizer = _tokenizer_from_folder(path, f"the T5 folder {path}")
    else:
        tf = open_tensor_file(path)
        embedded = tf.metadata.get(META_TOKENIZER)
        if embedded is None:
            if not any((path.parent / n).is_file() for n in TOKENIZER_FILES):
                raise CheckpointError(f"{path}: no tokenizer embedded in the file nor beside it "
                                      f"({' or '.join(TOKENIZER_FILES)} in {path.parent}); convert the "
                                      "Flan-UL2 folder with tools/kv_convert.py t5, which embeds it")
            tokenizer = _tokenizer_from_folder(path.parent, f"{path} (no embedded tokenizer)")
        else:
            try:
                files = json.loads(embedded)
                if not isinstance(files, Mapping):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                raise CheckpointError(f"{path}: the tokenizer in its metadata ({META_TOKENIZER}) is not "
                                      f"readable: {err}") from None
            with tempfile.TemporaryDirectory() as tmp:
                for name, text in files.items():
                    (Path(tmp) / Path(name).name).write_text(text)
                tokenizer = _tokenizer_from_folder(Path(tmp), f"the tokenizer embedded in {path}")
    return check_t5_tokenizer(tokenizer, path=path, vocab_size=vocab_size)


def tokenizer_files(tokenizer) -> dict[str, str]:
    """The text files of a tokenizer's ``save_pretrained`` (to embed in our metadata)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        out = {}
        for f in sorted(Path(tmp).iterdir()):
            try:
                out[f.name] = f.read_text()
            except UnicodeDecodeError:
                continue  # binary files (spiece.model): tokenizer.json carries the same model
        if "tokenizer.json" not in out:
            raise CheckpointError("the tokenizer could not be saved as tokenizer.json")
        return out
