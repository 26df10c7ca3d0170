"""The first frame: Kandinsky 3.0 text-to-image through the keyframe U-Net (image mode),
and the encoding of any picture into the first-frame condition of the keyframes."""
from __future__ import annotations

import logging

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..kv_core.image import RESIZE_MODES, image_batch_picture, prepare_first_frame
from ..kv_core.movq import to_uint8_frames
from ..kv_core.noise import MAX_SEED, SeededNoise
from ..kv_core.sampling import sample_first_frame
from ..kv_core.schedulers import SAMPLERS, stage_sampler
from . import common
from .common import CATEGORY

SIZE_TOOLTIP = ("{} of the video in pixels. The networks set which sizes run: multiples of 64 for the "
                "release (its MoVQ downsamples by 8 and its U-Nets halve the latent 3 times; it is trained "
                "at 512x512); another size is refused before anything runs, naming the rule. {}")
SIZE_STEP = 8  # the finest step a MoVQ-based release could take; the networks' rule is checked at run time
SAMPLER_TOOLTIP = ("ddpm: the release's sampler (50 steps for the first frame and the keyframes, 10 for "
                   "interpolation). ddim and dpmpp_2m give usable results in fewer steps.")
PICK_HINT = "choose one with the core Image From Batch node (batch_index, length 1) before this node"
SEED_TOOLTIP = ("Seed of this stage's noise. Using one seed on every Kandinsky Video node reproduces "
                "the kv_core pipeline run with that seed. A seed gives the same noise on every device; "
                "the video is equal up to floating-point rounding (other devices or thread counts may "
                "differ by about 1/255 in a few values).")


def size_inputs(extra: str) -> list:
    return [
        io.Int.Input("width", default=512, min=SIZE_STEP, max=common.MAX_SIZE, step=SIZE_STEP,
                     tooltip=SIZE_TOOLTIP.format("Width", extra)),
        io.Int.Input("height", default=512, min=SIZE_STEP, max=common.MAX_SIZE, step=SIZE_STEP,
                     tooltip=SIZE_TOOLTIP.format("Height", extra)),
    ]


def sampler_inputs(steps: int) -> list:
    return [
        io.Int.Input("steps", default=steps, min=1, max=1000,
                     tooltip=f"Denoising steps ({steps} in the release)."),
        io.Combo.Input("sampler", options=list(SAMPLERS), default="ddpm", tooltip=SAMPLER_TOOLTIP),
        io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True, tooltip=SEED_TOOLTIP),
    ]


def image_output(frames: torch.Tensor) -> torch.Tensor:
    """kv_core float frames ``[N, 3, H, W]`` in [0, 1] -> ComfyUI IMAGE ``[N, H, W, 3]``."""
    return frames.float().clamp(0, 1).movedim(1, -1).contiguous().to(mm.intermediate_device())


class KandinskyVideoFirstFrame(common.CheckedCombos, io.ComfyNode):
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
                common.KeyframeUNet.Input("keyframe_unet", tooltip="From Load Kandinsky Video Keyframe U-Net."),
                common.MoVQ.Input("movq", tooltip="From Load Kandinsky Video Image MoVQ (decodes the picture)."),
                common.Conditioning.Input("conditioning", tooltip="From Kandinsky Video Text Encode."),
                *size_inputs("The picture is made at twice this size."),
                io.Float.Input("guidance_scale", default=5.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance (w+1)*cond - w*uncond "
                                       "(key_frame_guidance_scale, 5 in the release)."),
                *sampler_inputs(50),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The first frame, at twice the video size.")],
        )

    # No validate_inputs: the schema's min/max/options check each input on its own (a
    # validate_inputs would get its message attached to every input it takes), and which
    # sizes run depends on the networks, which only execute sees.

    @classmethod
    def execute(cls, keyframe_unet, movq, conditioning, width, height, guidance_scale, steps, sampler,
                seed) -> io.NodeOutput:
        rule = common.size_rule(unet=keyframe_unet, movq=movq)
        rule.check(width, height)
        guidance_scale = common.check_finite("guidance_scale", guidance_scale)
        common.check_context_dim(conditioning, keyframe_unet)
        loop = stage_sampler("first_frame", sampler, steps)
        progress = common.StepProgress(loop.num_steps, lambda x: x)
        h, w = 2 * height // rule.factor, 2 * width // rule.factor
        with torch.inference_mode():
            memory = common.activation_memory(2, h, w, keyframe_unet.compute_dtype, 15)
            with common.stage(keyframe_unet, memory_required=memory) as device:
                latent = sample_first_frame(
                    common.ComputeDtype(keyframe_unet), conditioning.text_condition(), keyframe_unet.null_embedding,
                    latent_size=(h, w), guidance_scale=float(guidance_scale), sampler=loop,
                    noise=SeededNoise.for_stage(seed, "first_frame"), device=device, progress=progress,
                    cancel=progress.cancel)
            memory = common.activation_memory(1, h, w, movq.compute_dtype, 300)
            with common.stage(movq, memory_required=memory) as device:
                decoded = movq.module.decode(latent.to(device=device, dtype=movq.compute_dtype)).float()
            # uint8 as the release (truncated), so encoding this picture matches its re-encoding
            pixels = to_uint8_frames(((decoded + 1.0) / 2.0).clamp(0, 1)).float() / 255.0
        return io.NodeOutput(pixels.to(mm.intermediate_device()))


class KandinskyVideoEncodeFirstFrame(common.CheckedCombos, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KandinskyVideoEncodeFirstFrame",
            display_name="Kandinsky Video Encode First Frame",
            category=f"{CATEGORY}/conditioning",
            description=("Fits a picture to the video size and encodes it with the image MoVQ: the first "
                         "frame the keyframes start from (image-to-video, or the generated first frame)."),
            inputs=[
                common.MoVQ.Input("movq", tooltip="From Load Kandinsky Video Image MoVQ."),
                io.Image.Input("image", tooltip="The first frame: one picture (a batch of several is refused). "
                                                "Transparent parts (RGBA) are shown over white; values outside "
                                                "0..1 are clipped, with a warning in the log."),
                *size_inputs("This sets the size of the whole video."),
                io.Combo.Input("resize_mode", options=list(RESIZE_MODES), default="reference",
                               tooltip="reference: as the release (scale down to fit the shorter side, "
                                       "centre crop; a smaller picture is padded black, never enlarged). "
                                       "cover: scale up or down to cover the frame, centre crop."),
            ],
            outputs=[common.FirstFrame.Output(display_name="first_frame")],
        )

    @classmethod
    def execute(cls, movq, image, width, height, resize_mode) -> io.NodeOutput:
        common.size_rule(movq=movq).check(width, height)
        picture, note = image_batch_picture(image, pick_hint=PICK_HINT)
        if note:
            logging.warning("Kandinsky Video Encode First Frame: %s", note)
        with torch.inference_mode():
            pixels = prepare_first_frame(picture, width, height, resize_mode, layout="HWC")
            memory = common.activation_memory(1, height // 8, width // 8, movq.compute_dtype, 300)
            with common.stage(movq, memory_required=memory) as device:
                latent = movq.module.encode(pixels[None].to(device=device, dtype=movq.compute_dtype))[0]
            latent = latent.float().to(mm.intermediate_device())
        return io.NodeOutput(common.FirstFrameCondition(latent, width, height))


NODES = [KandinskyVideoFirstFrame, KandinskyVideoEncodeFirstFrame]
