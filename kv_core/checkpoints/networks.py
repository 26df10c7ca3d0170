"""Building the networks and loading checkpoints into them.

Networks are built on the meta device and receive the checkpoint's tensors with
``load_state_dict(assign=True)``, cast one tensor at a time (dtypes from
:mod:`kv_core.dtypes`), so a network never exists twice in memory. Loading is strict: every
problem raises :class:`CheckpointError` naming the file, the network expected and the first
offending keys.
"""
from __future__ import annotations

import inspect
import json
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from ..dtypes import NULL_EMBEDDING_KEY, dtype_name, is_fp8, load_dtype, parse_dtype, supports_fp8_weights
from ..models.text_projection import PROJECTION_LABELS, TextProjection
from .configs import detect_config, network_class, resolve_config
from .contents import NetworkTensors, identify, network_tensors, not_recognised
from ..kinds import DESCRIPTIONS, INTERPOLATION_UNET, KEYFRAME_UNET, MOVQ, TEXT_PROJECTIONS, VIDEO_MOVQ
from .formats import CheckpointError, HeapTrimmer, aligned, listing, open_tensor_file


def _constructor_kwargs(cls, cfg: dict, path, network: str) -> dict:
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(cfg)
    unknown = [k for k in cfg if k not in params]
    if unknown:
        warnings.warn(f"{path}: ignoring config keys the {DESCRIPTIONS[network]} does not take: "
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
        raise CheckpointError(f"{path}: could not build the {DESCRIPTIONS[network]} from its "
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
            parts.append(f"missing keys: {listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {listing(unexpected)}")
        if wrong:
            parts.append(f"shape mismatches: {listing(wrong)}")
        raise CheckpointError(f"{path}: does not match the {DESCRIPTIONS[network]} of this "
                              f"configuration; " + "; ".join(parts))


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
                      *, path, network: str, device=None, dtype=None, keep_fp8=False,
                      release: Callable[[torch.Tensor], None] | None = None) -> nn.Module:
    """Check keys/shapes of a meta-built ``module`` against a checkpoint, then load the
    checkpoint's tensors (cast and moved one at a time) with ``load_state_dict(strict=True,
    assign=True)``, so layers that create their weights while loading (ComfyUI's lazy
    ``comfy.ops`` layers) get them too. Raises :class:`CheckpointError` on missing or
    unexpected keys, shape mismatches, or tensors left unset or on the meta device.

    ``release`` (e.g. :meth:`TensorFile.release`) is called with every tensor ``get`` returned
    of which a copy was loaded, so the file pages it occupied do not stay resident beside the
    copy: the peak memory of a load is the loaded weights plus one tensor."""
    expected = expected_shapes(module)
    check_state_dict(expected, tensors, path=path, network=network)
    state = {}
    trimmer = HeapTrimmer() if is_fp8(dtype) else None  # the fp8 error check's temporaries
    for key in expected:
        t = get(key)
        if trimmer is not None:
            trimmer.count(t.numel() * t.element_size())
        loaded = aligned(t.to(device=device or "cpu", dtype=load_dtype(key, t, dtype, keep_fp8)))
        if release is not None and not _same_memory(loaded, t):
            release(t)
        state[key] = loaded
        del t, loaded
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:  # a layer that loads differently from what it declared
        raise CheckpointError(f"{path}: the {DESCRIPTIONS[network]} did not take the checkpoint: {err}") from None
    leftover = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    unset = [f"{n}.{k}" if n else k for n, m in module.named_modules() for k in _unregistered_tensors(m)]
    if leftover or unset:
        raise CheckpointError(f"{path}: the {DESCRIPTIONS[network]} has tensors outside its state "
                              f"dict that stay unset or on the meta device: {listing(leftover + unset)}")
    module.requires_grad_(False)
    return module.eval()


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@dataclass
class LoadedNetwork:
    """A network loaded from a checkpoint: the module, the constructor kwargs it was built
    with (``config``), where they came from (``origin``: 'configs', 'file' or 'detected')
    and the file's tensors (for the U-Nets' null embedding)."""

    module: nn.Module
    config: dict
    origin: str
    tensors: NetworkTensors

    def null_embedding(self, device=None) -> torch.Tensor:
        """The U-Net's ``null_embedding`` ``[context_dim]`` float32, refused unless its width is
        the network's ``context_dim`` (a wrong one loads but breaks every unconditional pass)."""
        null = self.tensors.null_embedding()
        width = self.config.get("context_dim")
        if width is not None and tuple(null.shape) != (width,):
            raise CheckpointError(f"{self.tensors.file.path}: '{NULL_EMBEDDING_KEY}' has shape {tuple(null.shape)} "
                                  f"but the {DESCRIPTIONS[self.tensors.network]} takes a context of width "
                                  f"{width}: expected [{width}]")
        return null.to(device or "cpu")


def load_network(network: str, path, configs=None, *, device=None, dtype=None, operations=None,
                 keep_fp8=None) -> LoadedNetwork:
    """Load a U-Net or MoVQ ``network`` kind from ``path`` (a file or an open
    :class:`TensorFile`); arguments as :func:`load_keyframe_unet`."""
    tensors = network_tensors(path, network)
    config, origin = resolve_config(network, configs, tensors)
    dtype = parse_dtype(dtype)
    if keep_fp8 is None:
        keep_fp8 = supports_fp8_weights(operations)
    if is_fp8(dtype) and not keep_fp8:
        raise CheckpointError(f"{tensors.file.path}: fp8 weights ({dtype_name(dtype)}) need an operations "
                              "namespace that casts weights at run time (e.g. comfy.ops.manual_cast)")
    hint = _DETECTION_HINT if origin == "detected" else ""
    module = build_network(network, config, operations=operations, dtype=dtype, path=tensors.file.path,
                           hint=hint)
    try:
        assign_state_dict(module, tensors.shapes, tensors.get, path=tensors.file.path, network=network,
                          device=device, dtype=dtype, keep_fp8=keep_fp8, release=tensors.file.release)
    except CheckpointError as err:
        if origin != "detected":
            detected = detect_config(network, tensors.shapes, config)
            says = ", ".join(f"{k}={json.dumps(v)}" for k, v in detected.items() if config.get(k) != v)
            where = "the configs given" if origin == "configs" else "the file's metadata"
            raise CheckpointError(f"{err} (config from {where}"
                                  + (f"; the checkpoint's keys say {says})" if says else ")")) from None
        raise
    return LoadedNetwork(module, config, origin, tensors)


def load_keyframe_unet(path, configs=None, *, device=None, dtype=None, operations=None, keep_fp8=None):
    """``(KeyframeUNet, null_embedding [context_dim] float32)`` from ``t2v.pt`` or our safetensors.

    ``configs``: ``configs.json`` (path or dict), its ``t2v`` section or the kwargs; default:
    the config stored in our safetensors, else the official one adapted to the checkpoint.
    ``dtype``: cast every floating tensor to it (default: keep the stored dtype). fp8 weights
    of our fp8 files stay fp8 when ``keep_fp8`` (default: when ``operations`` casts weights at
    run time, as ComfyUI's ops do), otherwise they are cast to ``dtype`` (or bfloat16).
    ``dtype=torch.float8_e4m3fn`` (with such ``operations``) stores the weights of any file
    as fp8 at load time, with the converter's policy (:func:`kv_core.dtypes.storage_dtype`).
    """
    loaded = load_network(KEYFRAME_UNET, path, configs, device=device, dtype=dtype,
                          operations=operations, keep_fp8=keep_fp8)
    return loaded.module, loaded.null_embedding(device)


def load_interpolation_unet(path, configs=None, *, device=None, dtype=None, operations=None, keep_fp8=None):
    """``(InterpolationUNet, null_embedding)`` from ``interpolation.pt`` or our safetensors
    (``configs`` section ``interpolation``; otherwise as :func:`load_keyframe_unet`)."""
    loaded = load_network(INTERPOLATION_UNET, path, configs, device=device, dtype=dtype,
                          operations=operations, keep_fp8=keep_fp8)
    return loaded.module, loaded.null_embedding(device)


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
    return load_network(network, tf, configs, device=device, dtype=dtype,
                        operations=operations, keep_fp8=keep_fp8).module


def load_null_embedding(path) -> torch.Tensor:
    """The ``null_embedding`` (float32) of a U-Net file, without building the network."""
    tf = open_tensor_file(path)
    kind = tf.network or identify(tf.keys())
    if kind is None:
        raise not_recognised(tf, KEYFRAME_UNET)
    if kind not in (KEYFRAME_UNET, INTERPOLATION_UNET):
        raise CheckpointError(f"{path}: expected a U-Net file (t2v.pt or interpolation.pt) with a "
                              f"null embedding, found the {DESCRIPTIONS.get(kind, kind)}")
    return network_tensors(tf, kind).null_embedding()


# --- text ------------------------------------------------------------------------------------

def load_text_projections(path, *, device=None, dtype=None, operations=None) -> dict[str, nn.Module]:
    """``{'projection_base': TextProjection, 'projection_interpolation': TextProjection}`` from
    ``t5_projections.pt`` or our safetensors form (``dtype`` default: as stored)."""
    tensors = network_tensors(path, TEXT_PROJECTIONS)
    shapes = tensors.shapes
    out = {}
    for label in PROJECTION_LABELS:
        w = shapes.get(f"{label}.0.weight")
        if w is None or len(w) != 2:
            raise CheckpointError(f"{tensors.file.path}: the {DESCRIPTIONS[TEXT_PROJECTIONS]} lacks "
                                  f"'{label}.0.weight' [context_dim, d_model] (keys: {listing(sorted(shapes))})")
        context_dim, d_model = w
        proj = TextProjection(d_model, context_dim, operations=operations, device="meta")
        sub = {k[len(label) + 1:]: s for k, s in shapes.items() if k.startswith(label + ".")}
        assign_state_dict(proj, sub, lambda k, label=label: tensors.get(f"{label}.{k}"),
                          path=tensors.file.path, network=TEXT_PROJECTIONS, device=device,
                          dtype=parse_dtype(dtype), keep_fp8=supports_fp8_weights(operations),
                          release=tensors.file.release)
        out[label] = proj
    others = [k for k in shapes if not k.startswith(tuple(f"{lb}." for lb in PROJECTION_LABELS))]
    if others:
        raise CheckpointError(f"{tensors.file.path}: unexpected keys in the "
                              f"{DESCRIPTIONS[TEXT_PROJECTIONS]}: {listing(others)}")
    return out
