"""Encode Video: any IMAGE batch (core Load Video -> Get Video Components, an animated picture
from Load Image, VideoHelperSuite's loader) -> a video latent that Interpolate and Decode take.

An adapter of ``kv_core.video_input``: the frames are fitted to a size the networks take
(``fit``: pad, crop or scale; ``max_side``) and encoded by the image MoVQ a few frames at a
time. The LATENT records the input's frame rate and the fit, so Interpolate picks its
skip_frames from the rate and passes both on (x4 per pass), and Decode gives the frames at
the input's size and the exact rate (input fps x 4 per pass).
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

from comfy_api.latest import io

from ..kv_core.rules import size_rule
from ..kv_core.stages import Hooks
from ..kv_core.video_input import DEFAULT_ENCODE_CHUNK, FIT_MODES, check_frame_rate, encode_video, plan_fit
from .host import sockets
from .host.inputs import CATEGORY, CheckedCombos, MAX_SIZE
from .host.latent import encoded_video_latent
from .host.networks import activation_memory, stage
from .host.progress import StepProgress

DEFAULT_FPS = 6.0  # core Save Animated WEBP's default: a WebP it wrote plays at this rate
NAME = "Kandinsky Video Encode Video"


def opacity(mask: Optional[torch.Tensor], images: torch.Tensor) -> Optional[torch.Tensor]:
    """Load Image's MASK (1 = transparent, ``[N or 1, H, W]``) -> alpha (1 = opaque), or None
    when the picture has no transparency (Load Image then gives a 64x64 zero mask)."""
    if mask is None:
        return None
    mask = mask[None] if mask.ndim == 2 else mask
    if not bool((mask != 0).any()):
        return None
    n, h, w = images.shape[:3]
    if mask.ndim != 3 or tuple(mask.shape[1:]) != (h, w) or mask.shape[0] not in (1, n):
        raise ValueError(f"{NAME}: the mask is {list(mask.shape)} but the frames are {n} x {w}x{h}: connect the "
                         "MASK that came with these frames (Load Image's), or none")
    return 1.0 - mask.float()


class KandinskyVideoEncodeVideo(CheckedCombos, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KandinskyVideoEncodeVideo",
            display_name=NAME,
            category=f"{CATEGORY}/conditioning",
            description=("Turns any video's frames (Get Video Components, an animated picture from Load Image, "
                         "a video loader) into a video latent for Interpolate: fitted to a size the networks "
                         "take and encoded with the image MoVQ. Decode gives the result back at the input's "
                         "size, at 4x the frame rate per Interpolate."),
            inputs=[
                sockets.MoVQ.Input("movq", tooltip="From Load Kandinsky Video Image MoVQ (encodes the frames)."),
                sockets.InterpolationUNet.Input(
                    "interpolation_unet", tooltip="From Load Kandinsky Video Interpolation U-Net: only the sizes it "
                                                  "takes are read here (multiples of 64 for the release)."),
                io.Image.Input("images", tooltip="The frames, in order (at least 2)."),
                io.Float.Input("fps", default=DEFAULT_FPS, min=0.001, max=1000.0, step=0.001,
                               tooltip="Frame rate of the frames. Connect Get Video Components' fps. Pictures "
                                       "that carry no rate (Load Image of an animated WebP/GIF) need it set by "
                                       f"hand; {DEFAULT_FPS:g} is core Save Animated WEBP's default."),
                io.Combo.Input("fit", options=list(FIT_MODES), default="pad",
                               tooltip="How frames of another size become a size the networks take. pad: add "
                                       "edge pixels, cropped off after decoding (nothing lost). crop: cut up to "
                                       "63 px off (the output is smaller by that). scale: resize, and back "
                                       "after decoding."),
                io.Int.Input("max_side", default=0, min=0, max=MAX_SIZE, step=8,
                             tooltip="0: work at the input's size. Otherwise scale the frames down so their "
                                     "longer side is at most this (512: the release's training size; less "
                                     "memory and time); Decode scales the result back up."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: Load Image's MASK of a transparent picture; transparent parts "
                                      "are shown over white."),
            ],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="Video latent (records the frame rate and size for Decode).")],
        )

    @classmethod
    def execute(cls, movq, interpolation_unet, images, fps, fit, max_side, mask=None) -> io.NodeOutput:
        fps = check_frame_rate(fps)
        alpha = opacity(mask, images)
        rule = size_rule(movq=movq.module, interpolation_unet=interpolation_unet.module)
        plan = plan_fit(int(images.shape[2]), int(images.shape[1]), rule, fit, int(max_side))
        logging.info("%s: %d frames at %g fps, %s", NAME, images.shape[0], fps, plan.describe())
        if plan.mode == "crop" and plan.output_size != (plan.width, plan.height):
            logging.warning("%s: %s", NAME, plan.describe())
        f = rule.factor or 8
        chunks = -(-int(images.shape[0]) // DEFAULT_ENCODE_CHUNK)
        bar = StepProgress(chunks)
        memory = activation_memory(movq, DEFAULT_ENCODE_CHUNK, plan.net_height // f, plan.net_width // f)
        with torch.inference_mode(), stage(movq, memory_required=memory) as device:
            latents, clipped = encode_video(movq.module, images, plan, alpha=alpha,
                                            hooks=Hooks(device=device, dtype=movq.compute_dtype, progress=bar,
                                                        cancel=bar.cancel))
        if clipped:
            logging.warning("%s: %d frame values were outside 0..1 and were clipped", NAME, clipped)
        return io.NodeOutput(encoded_video_latent(latents, fps, plan))


NODES = [KandinskyVideoEncodeVideo]
