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

from ..kv_core.rules import frame_rate, size_rule
from ..kv_core.video_input import (DEFAULT_ENCODE_CHUNK, FIT_MODES, VideoFit, auto_skip_frames, check_frame_rate,
                                   encode_video, interpolated_fps, plan_fit)
from ..kv_core.stages import Hooks
from . import sockets
from .inputs import CATEGORY, CheckedCombos, MAX_SIZE
from .networks import activation_memory, stage
from .progress import StepProgress

FPS_KEY = "kandinsky_video_fps"   # frames per second of the latent's frames (an input video's, x4 per pass)
FIT_KEY = "kandinsky_video_fit"   # kv_core.video_input.VideoFit.to_dict(): how to give the input's size back
DEFAULT_FPS = 6.0                 # core Save Animated WEBP's default: a WebP it wrote plays at this rate
AUTO_SKIP = -1                    # Interpolate's skip_frames value for "from the frame rate"
NAME = "Kandinsky Video Encode Video"


def recorded_fps(latent: dict) -> Optional[float]:
    """The frame rate an Encode Video latent records (x4 per Interpolate); None otherwise."""
    value = latent.get(FPS_KEY)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def recorded_fit(latent: dict) -> Optional[VideoFit]:
    value = latent.get(FIT_KEY)
    return VideoFit.from_dict(value) if isinstance(value, dict) else None


def latent_fps(latent: dict, num_frames: int) -> Optional[float]:
    """The frame rate of a latent's frames: an input video's as recorded, or a generated
    video's from its recorded keyframe count; None when the latent says neither (Load Latent)."""
    fps = recorded_fps(latent)
    if fps is not None:
        return fps
    keyframes = sockets.recorded_keyframes(latent)
    if keyframes is None:
        return None
    try:
        return frame_rate(num_frames, keyframes)
    except ValueError:
        return None


def resolve_skip_frames(skip_frames: int, latent: dict, num_frames: int, what: str) -> int:
    """``skip_frames`` as given, or for ``AUTO_SKIP`` kv_core's rule applied to the latent's
    frame rate; refuses auto when the latent does not say its rate."""
    if skip_frames != AUTO_SKIP:
        return skip_frames
    fps = latent_fps(latent, num_frames)
    if fps is None:
        raise ValueError(f"{what}: skip_frames is auto (-1), but this latent does not say its frame rate (Save "
                         "Latent keeps only the frames): set skip_frames to 3 (frames about 0.5 s apart, the "
                         "release's first pass) or 1 (8 fps and faster, its second pass)")
    return auto_skip_frames(fps)


def carry_video_record(source: dict, out: dict, passes: int = 1) -> dict:
    """Copy an Encode Video latent's record from ``source`` to ``out``, the rate x4 per pass."""
    fps = recorded_fps(source)
    if fps is not None:
        out[FPS_KEY] = interpolated_fps(fps, passes)
    if isinstance(source.get(FIT_KEY), dict):
        out[FIT_KEY] = dict(source[FIT_KEY])
    return out


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
        out = sockets.video_latent(latents, None)
        out[FPS_KEY], out[FIT_KEY] = fps, plan.to_dict()
        return io.NodeOutput(out)


NODES = [KandinskyVideoEncodeVideo]
