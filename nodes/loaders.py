"""Loader nodes: one per network of the release, each with a weight-dtype choice and a
device choice (:mod:`.devices`).

Files are listed from ``models/kandinsky_video/`` (text encoders also from
``models/text_encoders/``). A ``configs.json`` beside a checkpoint (as in the official
release folder) gives its configuration; without one the configuration stored in our
safetensors, or the official one adapted to the checkpoint's shapes, is used.
"""
from __future__ import annotations

import logging

import torch

import comfy.model_management as mm
import comfy.ops
from comfy_api.latest import io

from ..kv_core import checkpoints as ckpt, dtypes
from ..kv_core.text import TextEncoder as KVTextEncoder, check_text_parts
from . import model_files, sockets
from .devices import device_input, offload_device_for, resolve_device
from .common import (FP8, WEIGHT_DTYPE_TOOLTIP, WEIGHT_DTYPES, file_params, operations_for,
                     weight_and_compute_dtype)
from .inputs import CATEGORY, CheckedCombos
from .model_files import check_model_name, release_configs, resolve_model_file, resolve_text_encoder
from .networks import Network, wrap

LOADERS = f"{CATEGORY}/loaders"
logger = logging.getLogger(__name__)


def _placed(title: str, device: str, network: Network) -> io.NodeOutput:
    """The loader's output; a device chosen on the node is said in the log."""
    if device not in (None, "default"):
        logger.info("%s: runs on %s (device input)", title, network.load_device)
    return io.NodeOutput(network)


def _dtype_input() -> io.Combo.Input:
    return io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                          tooltip=WEIGHT_DTYPE_TOOLTIP)


def _load_error(network: str, name: str, path: str, err: Exception) -> ValueError:
    return ValueError(f"Could not load '{name}' as the Kandinsky Video {model_files.NETWORK_NAMES[network]} "
                      f"(expected {model_files.EXPECTED_FILES[network]}): {err}")


def load_network(network: str, name: str, weight_dtype: str, device: str = "default") -> Network:
    """Load a U-Net or MoVQ checkpoint into a ModelPatcher-wrapped :class:`Network` that
    runs on ``device`` (a loader's device choice, :mod:`.devices`)."""
    path = resolve_model_file(name, network)
    unet = network in (ckpt.KEYFRAME_UNET, ckpt.INTERPOLATION_UNET)
    load_device = resolve_device(device, mm.get_torch_device())
    offload_device = offload_device_for(load_device, mm.unet_offload_device() if unet else mm.vae_offload_device())
    weight, compute = weight_and_compute_dtype(weight_dtype, "unet" if unet else "movq", load_device,
                                               file_params(path))
    fp8 = weight if weight in FP8 else None
    ops = operations_for(weight, compute, load_device)
    configs = release_configs(path)
    kwargs = dict(device=offload_device, dtype=compute if fp8 else weight, operations=ops)
    null = None
    try:
        if network == ckpt.KEYFRAME_UNET:
            module, null = ckpt.load_keyframe_unet(path, configs, **kwargs)
        elif network == ckpt.INTERPOLATION_UNET:
            module, null = ckpt.load_interpolation_unet(path, configs, **kwargs)
        else:
            module = ckpt.load_movq(path, configs, video=network == ckpt.VIDEO_MOVQ, **kwargs)
    except ckpt.CheckpointError as err:
        raise _load_error(network, name, path, err) from None
    if fp8 is not None:
        dtypes.store_fp8(module, fp8)
    return wrap(module, network, name, compute, load_device=load_device, offload_device=offload_device,
                null_embedding=None if null is None else null.float().cpu(), configs=configs)


class _NetworkLoader(CheckedCombos, io.ComfyNode):
    """Base of the four network loaders.

    Each subclass defines its own ``validate_inputs`` naming its file input: ComfyUI skips
    its built-in combo check only for the inputs a ``validate_inputs`` names, so a shared
    ``**kwargs`` version here would also switch off the host's check of ``weight_dtype``.
    :class:`CheckedCombos` gives the host ``weight_dtype`` in the form it checks (0.3.75
    checks only list-type combos), so a bad value is one error on that input.
    """

    NETWORK: str = ""
    NODE_ID: str = ""
    TITLE: str = ""
    INPUT: str = ""
    OUTPUT = None
    DESCRIPTION: str = ""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.TITLE,
            category=LOADERS,
            description=cls.DESCRIPTION,
            inputs=[
                io.Combo.Input(cls.INPUT, options=model_files.model_files(),
                               tooltip=f"The {model_files.NETWORK_NAMES[cls.NETWORK]}: "
                                       f"{model_files.EXPECTED_FILES[cls.NETWORK]} in models/kandinsky_video/."),
                _dtype_input(),
                device_input(),
            ],
            outputs=[cls.OUTPUT.Output(display_name=cls.NETWORK)],
        )

    @classmethod
    def execute(cls, **kwargs) -> io.NodeOutput:
        device = kwargs.get("device", "default")
        return _placed(cls.TITLE, device, load_network(cls.NETWORK, kwargs[cls.INPUT], kwargs["weight_dtype"], device))


class KandinskyVideoKeyframeUNetLoader(_NetworkLoader):
    NETWORK = ckpt.KEYFRAME_UNET
    NODE_ID = "KandinskyVideoKeyframeUNetLoader"
    TITLE = "Load Kandinsky Video Keyframe U-Net"
    INPUT = "unet_name"
    OUTPUT = sockets.KeyframeUNet
    DESCRIPTION = ("Loads the keyframe U-Net (t2v.pt, 4.1B parameters). It makes the first frame "
                   "(Kandinsky 3.0 image mode) and the keyframes.")

    @classmethod
    def validate_inputs(cls, unet_name=None):
        return check_model_name(unet_name, cls.NETWORK)


class KandinskyVideoInterpolationUNetLoader(_NetworkLoader):
    NETWORK = ckpt.INTERPOLATION_UNET
    NODE_ID = "KandinskyVideoInterpolationUNetLoader"
    TITLE = "Load Kandinsky Video Interpolation U-Net"
    INPUT = "unet_name"
    OUTPUT = sockets.InterpolationUNet
    DESCRIPTION = "Loads the interpolation U-Net (interpolation.pt, 4.0B parameters) for the 8 and 32 fps passes."

    @classmethod
    def validate_inputs(cls, unet_name=None):
        return check_model_name(unet_name, cls.NETWORK)


class KandinskyVideoMoVQLoader(_NetworkLoader):
    NETWORK = ckpt.MOVQ
    NODE_ID = "KandinskyVideoMoVQLoader"
    TITLE = "Load Kandinsky Video Image MoVQ"
    INPUT = "movq_name"
    OUTPUT = sockets.MoVQ
    DESCRIPTION = "Loads the image MoVQ (movq.pt): decodes the first frame and encodes the conditioning image."

    @classmethod
    def validate_inputs(cls, movq_name=None):
        return check_model_name(movq_name, cls.NETWORK)


class KandinskyVideoVideoMoVQLoader(_NetworkLoader):
    NETWORK = ckpt.VIDEO_MOVQ
    NODE_ID = "KandinskyVideoVideoMoVQLoader"
    TITLE = "Load Kandinsky Video Video MoVQ"
    INPUT = "movq_name"
    OUTPUT = sockets.VideoMoVQ
    DESCRIPTION = "Loads the video MoVQ (video_movq.pt), whose temporal decoder turns video latents into frames."

    @classmethod
    def validate_inputs(cls, movq_name=None):
        return check_model_name(movq_name, cls.NETWORK)


# --------------------------------------------------------------------------- text encoder

class _TextStack(torch.nn.Module):
    """Holds the kv_core TextEncoder for the ModelPatcher (which sets ``.device`` on the
    module it manages; the TextEncoder's ``device`` is a read-only property)."""

    def __init__(self, text_encoder: KVTextEncoder):
        super().__init__()
        self.text_encoder = text_encoder


def adopt_operations(module: torch.nn.Module, operations, *, compute=None, fp32_names=()) -> None:
    """Replace the ``torch.nn.Linear``/``Embedding`` layers of a transformers model by the
    ``comfy.ops`` classes (same parameters), so ComfyUI can load it partially and
    :func:`kv_core.dtypes.store_fp8` can store its matrices in fp8. Layers named in
    ``fp32_names`` are stored in fp32 (T5's ``wo`` in fp16, as transformers does); layers
    whose weights are not in ``compute`` cast them at run time."""
    replaced: dict[int, torch.nn.Module] = {}  # shared layers (T5's token embedding) stay shared
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in replaced:
                setattr(parent, name, replaced[id(child)])
                continue
            if type(child) is torch.nn.Linear:
                new = operations.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                        device="meta")
            elif type(child) is torch.nn.Embedding:
                new = operations.Embedding(child.num_embeddings, child.embedding_dim,
                                           padding_idx=child.padding_idx, device="meta")
            else:
                continue
            w = child.weight.detach()
            if name in fp32_names:
                w = w.float()
            new.weight = torch.nn.Parameter(w, requires_grad=False)
            if getattr(child, "bias", None) is not None:
                new.bias = torch.nn.Parameter(child.bias.detach(), requires_grad=False)
            elif isinstance(new, torch.nn.Linear):
                new.bias = None
            if w.dtype != compute:
                new.comfy_cast_weights = True
            replaced[id(child)] = new
            setattr(parent, name, new)


def _text_settings(projections_path: str, projections_name: str) -> tuple[int, int | None, str | None]:
    """``(tokens_length, context_dim, configs.json path)`` from the release's configs.json beside
    the projections, read and checked by :func:`kv_core.checkpoints.text_settings` (128 and None
    without configs.json or those entries); a configs.json that cannot be used is refused."""
    configs = release_configs(projections_path)
    try:
        tokens_length, context_dim = ckpt.text_settings(configs or None)
    except ckpt.CheckpointError as err:
        raise ValueError(f"The configs.json beside the text projections '{projections_name}' cannot be used: "
                         f"{err}") from None
    return tokens_length, context_dim, configs


def load_text_encoder(text_encoder_name: str, projections_name: str, weight_dtype: str,
                      device: str = "default") -> Network:
    """Load Flan-UL2's encoder and the projections into a :class:`Network` that runs on
    ``device`` (a loader's device choice, :mod:`.devices`)."""
    encoder_path = resolve_text_encoder(text_encoder_name)
    projections_path = resolve_model_file(projections_name, ckpt.TEXT_PROJECTIONS)
    tokens_length, context_dim, configs = _text_settings(projections_path, projections_name)  # fails fast
    load_device = resolve_device(device, mm.text_encoder_device())
    offload_device = offload_device_for(load_device, mm.text_encoder_offload_device())
    weight, compute = weight_and_compute_dtype(weight_dtype, "text", load_device, file_params(encoder_path))
    fp8 = weight if weight in FP8 else None
    try:
        tokenizer = ckpt.load_t5_tokenizer(encoder_path)  # first: a folder without one fails before the big read
        encoder = ckpt.load_t5_encoder(encoder_path, device=offload_device, dtype=compute if fp8 else weight)
        ckpt.check_t5_tokenizer(tokenizer, path=encoder_path, vocab_size=encoder.get_input_embeddings().num_embeddings)
    except ckpt.CheckpointError as err:
        raise _load_error(ckpt.T5_ENCODER, text_encoder_name, encoder_path, err) from None
    except (OSError, ValueError) as err:
        raise _load_error(ckpt.T5_ENCODER, text_encoder_name, encoder_path,
                          f"no usable T5 tokenizer: {err}") from None
    try:  # fp32 as the release: 2 x d_model x 4096, small
        projections = ckpt.load_text_projections(projections_path, device=offload_device, dtype=torch.float32,
                                                 operations=comfy.ops.disable_weight_init)
    except ckpt.CheckpointError as err:
        raise _load_error(ckpt.TEXT_PROJECTIONS, projections_name, projections_path, err) from None
    try:  # before the encoder's weights are converted
        check_text_parts(encoder, projections, context_dim, configs=configs)
    except ValueError as err:
        raise ValueError(f"The text projections '{projections_name}' and the text encoder '{text_encoder_name}' "
                         f"do not fit together: {err}.") from None
    adopt_operations(encoder, operations_for(weight, compute, load_device), compute=compute,
                     fp32_names=("wo",) if weight == torch.float16 else ())
    if fp8 is not None:  # the file rule: T5's feed-forward outputs (wo) keep the compute dtype
        dtypes.store_fp8(encoder, fp8)
    text = KVTextEncoder(encoder, projections, tokenizer, tokens_length)
    return wrap(_TextStack(text), ckpt.T5_ENCODER, text_encoder_name, compute, load_device=load_device,
                offload_device=offload_device)


class KandinskyVideoTextEncoderLoader(CheckedCombos, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KandinskyVideoTextEncoderLoader",
            display_name="Load Kandinsky Video Text Encoder",
            category=LOADERS,
            description=("Loads the Flan-UL2 text encoder (only its encoder half is read) and the two "
                         "Kandinsky Video text projections (t5_projections.pt)."),
            inputs=[
                io.Combo.Input("text_encoder_name", options=model_files.text_encoder_choices(),
                               tooltip="A google/flan-ul2 folder (config.json, weights, tokenizer) or our "
                                       "encoder-only .safetensors, in models/kandinsky_video/ or "
                                       "models/text_encoders/."),
                io.Combo.Input("projections_name", options=model_files.model_files(),
                               tooltip="t5_projections.pt of the release, in models/kandinsky_video/."),
                _dtype_input(),
                device_input(),
            ],
            outputs=[sockets.TextEncoder.Output(display_name="text_encoder")],
        )

    @classmethod
    def validate_inputs(cls, text_encoder_name=None, projections_name=None):
        if text_encoder_name is not None:
            try:
                resolve_text_encoder(text_encoder_name)
            except model_files.ModelFileError as err:
                return str(err)
        return check_model_name(projections_name, ckpt.TEXT_PROJECTIONS)

    @classmethod
    def execute(cls, text_encoder_name, projections_name, weight_dtype, device="default") -> io.NodeOutput:
        return _placed("Load Kandinsky Video Text Encoder", device,
                       load_text_encoder(text_encoder_name, projections_name, weight_dtype, device))


NODES = [
    KandinskyVideoKeyframeUNetLoader,
    KandinskyVideoInterpolationUNetLoader,
    KandinskyVideoMoVQLoader,
    KandinskyVideoVideoMoVQLoader,
    KandinskyVideoTextEncoderLoader,
]
