"""The first frame: Kandinsky 3.0 text-to-image through the keyframe U-Net (image mode),
and the encoding of any picture into the first-frame condition of the keyframes.

Adapters of ``kv_core.stages``' ``generate_first_frame`` + ``decode_first_frame`` and
``encode_first_frame``: the nodes add the host's hooks (loading, device, dtype, progress,
interrupt) and convert between sockets and kv_core values.
"""
from __future__ import annotations

import logging
import warnings

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..kv_core.image import RESIZE_MODES, image_batch_picture
from ..kv_core.stages.first_frame import (decode_first_frame, encode_first_frame, first_frame_latent_size,
                                          generate_first_frame)
from ..kv_core.stages import Hooks
from .host import sockets, stage_model
from .host.inputs import CATEGORY, CheckedCombos, sampler_inputs, size_inputs, step_cache_input
from .host.networks import activation_memory, stage
from .host.progress import CacheReport, StepProgress

PICK_HINT = "choose one with the core Image From Batch node (batch_index, length 1) before this node"


class KandinskyVideoFirstFrame(CheckedCombos, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KandinskyVideoFirstFrame",
            display_name="Kandinsky Video First Frame",
            category=f"{CATEGORY}/sampling",
            description=("Text-to-image with the keyframe U-Net in its Kandinsky 3.0 image mode, at twice "
                         "the video size, decoded by the image MoVQ. The picture is an ordinary IMAGE: "
                         "look at it, keep it, or replace it with any image before encoding."),
            inputs=[
                sockets.KeyframeUNet.Input("keyframe_unet", tooltip="From Load Kandinsky Video Keyframe U-Net."),
                sockets.MoVQ.Input("movq", tooltip="From Load Kandinsky Video Image MoVQ (decodes the picture)."),
                sockets.Conditioning.Input("conditioning", tooltip="From Kandinsky Video Text Encode."),
                *size_inputs("The picture is made at twice this size."),
                io.Float.Input("guidance_scale", default=5.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance (w+1)*cond - w*uncond "
                                       "(key_frame_guidance_scale, 5 in the release)."),
                *sampler_inputs(50),
                stage_model.model_input(),
                step_cache_input(),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The first frame, at twice the video size.")],
            hidden=[io.Hidden.unique_id],
        )

    # No validate_inputs: the schema's min/max/options check each input on its own (a
    # validate_inputs would get its message attached to every input it takes), and which
    # sizes run depends on the networks, which only execute sees.

    @classmethod
    def execute(cls, keyframe_unet, movq, conditioning, width, height, guidance_scale, steps, sampler,
                seed, model=None, step_cache=None) -> io.NodeOutput:
        if model is not None:
            stage_model.check(model, keyframe_unet.patcher, "first_frame", "Kandinsky Video First Frame")
        h, w = first_frame_latent_size(width, height, unet=keyframe_unet.module, movq=movq.module)
        progress = StepProgress(steps, lambda x: x)
        step_cache = CacheReport.of(cls, "Kandinsky Video First Frame", steps).settings(step_cache)
        with torch.inference_mode():
            with stage(keyframe_unet, memory_required=activation_memory(keyframe_unet, 2, h, w),
                       model=model) as device:
                latent = generate_first_frame(
                    stage_model.unet_of(model, keyframe_unet, (2, guidance_scale + 1.0), "Kandinsky Video First Frame"),
                    keyframe_unet.null_embedding,
                    conditioning.text_condition(), width=width, height=height, guidance_scale=guidance_scale,
                    sampler=sampler, steps=steps, noise=seed,
                    movq=movq.module, hooks=Hooks(progress=progress, cancel=progress.cancel, device=device,
                                                  dtype=keyframe_unet.compute_dtype),
                    step_cache=step_cache)
            with stage(movq, memory_required=activation_memory(movq, 1, h, w)) as device:
                # uint8 as the release (truncated), so encoding this picture matches its re-encoding
                picture = decode_first_frame(movq.module, latent, hooks=Hooks(device=device, dtype=movq.compute_dtype))
        return io.NodeOutput((picture[None].float() / 255.0).to(mm.intermediate_device()))


class KandinskyVideoEncodeFirstFrame(CheckedCombos, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KandinskyVideoEncodeFirstFrame",
            display_name="Kandinsky Video Encode First Frame",
            category=f"{CATEGORY}/conditioning",
            description=("Fits a picture to the video size and encodes it with the image MoVQ: the first "
                         "frame the keyframes start from (image-to-video, or the generated first frame)."),
            inputs=[
                sockets.MoVQ.Input("movq", tooltip="From Load Kandinsky Video Image MoVQ."),
                io.Image.Input("image", tooltip="The first frame: one picture (a batch of several is refused). "
                                                "Transparent parts (RGBA) are shown over white; values outside "
                                                "0..1 are clipped, with a warning in the log."),
                *size_inputs("This sets the size of the whole video."),
                io.Combo.Input("resize_mode", options=list(RESIZE_MODES), default="reference",
                               tooltip="reference: as the release (scale down to fit the shorter side, "
                                       "centre crop; a smaller picture is padded black, never enlarged). "
                                       "cover: scale up or down to cover the frame, centre crop."),
            ],
            outputs=[sockets.FirstFrame.Output(display_name="first_frame")],
        )

    @classmethod
    def execute(cls, movq, image, width, height, resize_mode) -> io.NodeOutput:
        picture, note = image_batch_picture(image, pick_hint=PICK_HINT)
        if note:
            logging.warning("Kandinsky Video Encode First Frame: %s", note)
        memory = activation_memory(movq, 1, height // 8, width // 8)
        with torch.inference_mode(), stage(movq, memory_required=memory) as device, \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            latent = encode_first_frame(movq.module, picture, width=width, height=height, mode=resize_mode,
                                        layout="HWC", hooks=Hooks(device=device, dtype=movq.compute_dtype))
        for w in caught:  # every run says it, not only the first (Python shows a warning once)
            logging.warning("Kandinsky Video Encode First Frame: %s", w.message)
        return io.NodeOutput(sockets.FirstFrameCondition(latent.to(mm.intermediate_device()), width, height))


NODES = [KandinskyVideoFirstFrame, KandinskyVideoEncodeFirstFrame]
