"""What a checkpoint file holds: which network (:func:`identify`), what a file of something
else looks like (:func:`describe_file`), and the state dict of one network inside a file
(:func:`network_tensors`, checked against the network the caller expects)."""
from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import torch

from ..dtypes import NULL_EMBEDDING_KEY, dtype_name
from ..kinds import DESCRIPTIONS, INTERPOLATION_UNET, KEYFRAME_UNET, MOVQ, T5_ENCODER, TEXT_PROJECTIONS, VIDEO_MOVQ
from .formats import FORMAT_VERSION, META_FORMAT, CheckpointError, TensorFile, listing, open_tensor_file


#: Key prefixes a U-Net's state dict may carry, besides none (our safetensors): the official
#: files' ``unet.``, ComfyUI's Save Model of this pack's MODEL (``net.``, the adapter's
#: attribute; 0.3.75 and 0.38.x keep a model's keys as its ``diffusion_model`` holds them),
#: and the ``model.diffusion_model.`` / ``diffusion_model.`` prefixes that checkpoint
#: savers and other tools put in front of a diffusion model's keys, with or without ``net.``.
UNET_PREFIXES = ("unet.", "net.", "diffusion_model.", "diffusion_model.net.", "model.diffusion_model.",
                 "model.diffusion_model.net.")
#: Empty marker tensors ComfyUI's Save Model writes beside a model's keys (``v_pred`` for a
#: v-prediction model such as the interpolation U-Net); they carry no weights.
HOST_MARKERS = ("v_pred",)


def unet_layout(keys) -> tuple[str, str] | None:
    """``(network, prefix)`` when the keys hold a Kandinsky Video U-Net under one of
    ``UNET_PREFIXES`` (or none); None otherwise. The longest matching prefix wins, so a
    key ``model.diffusion_model.net.in_layer.weight`` reads as prefix
    ``model.diffusion_model.net.``."""
    keys = set(keys)
    for prefix in sorted(("", *UNET_PREFIXES), key=len, reverse=True):
        if prefix + "image_in_layer.weight" in keys:
            return KEYFRAME_UNET, prefix
        if prefix + "in_layer.weight" in keys and any(k.startswith(prefix + "down_samples.") for k in keys):
            return INTERPOLATION_UNET, prefix
    return None


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
    layout = unet_layout(keys)
    return layout[0] if layout else None


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
        meta = f" (metadata: {listing(sorted(tf.metadata), limit)})" if tf.metadata else ""
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


def missing_null_embedding(tf: TensorFile, network: str, prefix: str) -> CheckpointError:
    """The error for a U-Net file that holds the weights but not the null embedding (a save
    by a tool that writes only a model's weights), saying what is missing and the command
    that writes a complete file."""
    want = DESCRIPTIONS[network]
    release = tf.path.parent / ("t2v.pt" if network == KEYFRAME_UNET else "interpolation.pt")
    out = tf.path.with_name(tf.path.stem + "_complete.safetensors")
    where = f"under '{prefix}'" if prefix else "without a prefix"
    configs = tf.path.parent / "configs.json"  # a release folder's (the tiny test releases need it)
    command = convert_command("network", str(tf.path), str(out), "--null-embedding", str(release),
                              *(["--configs", str(configs)] if configs.is_file() else []))
    return CheckpointError(
        f"{tf.path}: this file holds the {want}'s weights {where}, but not its '{NULL_EMBEDDING_KEY}' (the "
        f"empty-prompt context its guidance needs; official files are {{'unet': state_dict, "
        f"'null_embedding': tensor}}). Write a complete file with the null embedding of the release file "
        f"these weights came from ({release.name}; name yours if it lies elsewhere): {command}, then pick "
        f"{out.name}")


def convert_command(*arguments: str) -> str:
    """The shell command that runs :mod:`kv_core.convert` with ``arguments`` from the folder
    that holds ``kv_core`` (the node pack's folder; the registry archive ships it)."""
    root = Path(__file__).resolve().parents[2]
    return f"cd {shlex.quote(str(root))} && python -m kv_core.convert {' '.join(map(shlex.quote, arguments))}"


def not_recognised(tf: TensorFile, expected: str) -> CheckpointError:
    want = DESCRIPTIONS[expected]
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


def network_tensors(path_or_file, expected: str, *, require_null: bool = True) -> NetworkTensors:
    """Open ``path_or_file`` and check that it holds the network ``expected``. A U-Net file
    without its null embedding is an error unless ``require_null`` is False (the converter
    adding one: ``null_key`` is then None)."""
    tf = path_or_file if isinstance(path_or_file, TensorFile) else open_tensor_file(path_or_file)
    want = DESCRIPTIONS[expected]
    if tf.network is not None:
        if tf.metadata.get(META_FORMAT) != FORMAT_VERSION:
            raise CheckpointError(f"{tf.path}: kandinsky_video safetensors format "
                                  f"{tf.metadata.get(META_FORMAT)!r} is not supported (expected "
                                  f"{FORMAT_VERSION!r}) while loading the {want}")
        found = tf.network
    else:
        found = identify(tf.keys())
    if found is None:
        raise not_recognised(tf, expected)
    if found != expected:
        what = DESCRIPTIONS.get(found, f"network {found!r}")
        raise CheckpointError(f"{tf.path}: expected the {want}, but the file holds the {what} "
                              f"(first keys: {listing(sorted(tf.keys()))})")
    if expected in (KEYFRAME_UNET, INTERPOLATION_UNET):
        prefix = (unet_layout(tf.keys()) or (expected, ""))[1]
        null_key = NULL_EMBEDDING_KEY if NULL_EMBEDDING_KEY in tf.shapes else None
        extra = [k for k in tf.keys() if not k.startswith(prefix) and k != null_key
                 and not (prefix and k in HOST_MARKERS)]
        if extra:
            where = f"'{prefix[:-1]}'" if prefix else "the network's keys"
            raise CheckpointError(f"{tf.path}: unexpected entries beside {where} and 'null_embedding' in the "
                                  f"{want}: {listing(extra)}")
        if null_key is None and require_null:
            raise missing_null_embedding(tf, expected, prefix)
        return NetworkTensors(tf, expected, prefix, null_key)
    return NetworkTensors(tf, expected, "", None)

