"""What a checkpoint file holds: which network (:func:`identify`), what a file of something
else looks like (:func:`describe_file`), and the state dict of one network inside a file
(:func:`network_tensors`, checked against the network the caller expects)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from ..dtypes import NULL_EMBEDDING_KEY, dtype_name
from ..kinds import DESCRIPTIONS, INTERPOLATION_UNET, KEYFRAME_UNET, MOVQ, T5_ENCODER, TEXT_PROJECTIONS, VIDEO_MOVQ
from .formats import FORMAT_VERSION, META_FORMAT, CheckpointError, TensorFile, listing, open_tensor_file


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


def network_tensors(path_or_file, expected: str) -> NetworkTensors:
    """Open ``path_or_file`` and check that it holds the network ``expected``."""
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
                                      f"'null_embedding' in the {want}: {listing(extra)}")
        return NetworkTensors(tf, expected, prefix, null_key)
    return NetworkTensors(tf, expected, "", None)

