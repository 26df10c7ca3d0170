"""Constructor configs of the networks: the official ones, the sections of the release's
``configs.json``, and detection from a state dict's keys and shapes.

Order of precedence (:func:`resolve_config`): the ``configs`` argument (a ``configs.json``
path or dict, a section of it, or the kwargs themselves); the config stored in our
safetensors; otherwise the official configuration with every value that the checkpoint's
keys and shapes determine taken from the checkpoint (:func:`detect_config`). Only ``groups``
and ``head_dim`` of the U-Nets and ``resolution``, ``dropout`` and the temporal padding of the
MoVQs cannot be seen in a state dict.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Mapping

from torch import nn

from ..models import movq, unet, unet_interpolation
from .contents import NetworkTensors
from ..kinds import DESCRIPTIONS, INTERPOLATION_UNET, KEYFRAME_UNET, MOVQ, VIDEO_MOVQ
from .formats import CONFIG_SECTIONS, CheckpointError

# network kind -> (class, official constructor kwargs)
_NETWORKS = {
    KEYFRAME_UNET: (unet.KeyframeUNet, unet.OFFICIAL_CONFIG),
    INTERPOLATION_UNET: (unet_interpolation.InterpolationUNet, unet_interpolation.OFFICIAL_CONFIG),
    MOVQ: (movq.MoVQ, movq.OFFICIAL_IMAGE_CONFIG),
    VIDEO_MOVQ: (movq.MoVQ, movq.OFFICIAL_VIDEO_CONFIG),
}


def network_class(network: str) -> type[nn.Module]:
    """The class of a network kind (``KEYFRAME_UNET``... but not the text networks)."""
    return _NETWORKS[network][0]


def official_config(network: str) -> dict:
    """A copy of the official constructor kwargs of ``network`` (lists for tuples)."""
    return _jsonable(_NETWORKS[network][1])


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


DEFAULT_TOKENS_LENGTH = 128  # text_encoder.tokens_length of the release


def text_settings(configs) -> tuple[int, int | None]:
    """``(tokens_length, context_dim)`` from the ``text_encoder`` section of a ``configs.json``.

    ``configs``: its path, or None (no configs.json). Without the file, the section or an
    entry, ``tokens_length`` is :data:`DEFAULT_TOKENS_LENGTH` (128 tokens) and
    ``context_dim`` (the width of the projections' output) None, i.e. unchecked.

    Raises :class:`CheckpointError` naming the file and the key for a file that cannot be
    read, a section that is not an object, a ``tokens_length`` that is not a whole number of
    at least 2 or a ``context_dim`` that is not a positive whole number: such values are
    refused rather than replaced by the defaults in silence.
    """
    if configs is None:
        return DEFAULT_TOKENS_LENGTH, None
    parsed = read_configs_json(configs)
    if not isinstance(parsed, Mapping):
        raise CheckpointError(f"{configs} holds {type(parsed).__name__}, not a JSON object of sections.")
    section = parsed.get("text_encoder", {})
    if not isinstance(section, Mapping):
        raise CheckpointError(f"{configs}: text_encoder is {section!r}, not a JSON object.")
    tokens_length = section.get("tokens_length", DEFAULT_TOKENS_LENGTH)
    if isinstance(tokens_length, bool) or not isinstance(tokens_length, int) or tokens_length < 2:
        raise CheckpointError(f"{configs}: text_encoder.tokens_length is {tokens_length!r}; it must be a whole "
                              f"number of tokens of at least 2 (the release uses {DEFAULT_TOKENS_LENGTH}).")
    context_dim = section.get("context_dim")
    if context_dim is not None and (isinstance(context_dim, bool) or not isinstance(context_dim, int)
                                    or context_dim < 1):
        raise CheckpointError(f"{configs}: text_encoder.context_dim is {context_dim!r}; it must be a positive "
                              "whole number (the width of the text projections' output).")
    return tokens_length, context_dim


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
                              f"{DESCRIPTIONS[network]}); sections: {sorted(configs)}")
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

