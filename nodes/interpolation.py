"""Interpolate: one x4 pass of the interpolation U-Net (N frames -> 4N - 3).

An adapter of ``kv_core.stages.interpolate_frames``, once per video of the LATENT batch."""
from __future__ import annotations

import torch

from comfy_api.latest import io

from ..kv_core.rules import MAX_SKIP_FRAMES, SKIP_FRAMES
from ..kv_core.stages import interpolate_frames
from . import sockets
from .inputs import CATEGORY, CheckedCombos, sampler_inputs
from .networks import activation_memory, stage
from .progress import StepProgress


class KandinskyVideoInterpolate(CheckedCombos, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KandinskyVideoInterpolate",
            display_name="Kandinsky Video Interpolate",
            category=f"{CATEGORY}/sampling",
            description=("Puts three new frames between every two frames (N -> 4N-3): 12 keyframes at 2 fps "
                         "become 45 frames at 8 fps. Chain a second Interpolate with skip_frames 1 for 177 "
                         "frames at 32 fps."),
            inputs=[
                sockets.InterpolationUNet.Input("interpolation_unet",
                                               tooltip="From Load Kandinsky Video Interpolation U-Net."),
                sockets.Conditioning.Input("conditioning", tooltip="From Kandinsky Video Text Encode (the release "
                                                                  "uses the same prompt context as the keyframes), "
                                                                  "or a long video's last Extend: each group gets "
                                                                  "its segment's prompt."),
                io.Latent.Input("latent", tooltip="Video latent from Kandinsky Video Keyframes or a previous "
                                                  "Interpolate (or Load Latent of one)."),
                io.Int.Input("skip_frames", default=SKIP_FRAMES[1], min=0, max=MAX_SKIP_FRAMES,
                             tooltip="How many frames the model is told to fill between two given frames: 3 for "
                                     "the first pass (2 -> 8 fps), 1 for the second (8 -> 32 fps), as the release."),
                io.Float.Input("guidance_scale", default=0.5, min=0.0, max=30.0, step=0.05,
                               tooltip="Guidance (w+1)*cond - w*uncond (interpolation_guidance_scale, 0.5 in the "
                                       "release)."),
                *sampler_inputs(10),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Video latent with 4N-3 frames.")],
        )

    # No validate_inputs: the schema's min/max/options check each input on its own.

    @classmethod
    def execute(cls, interpolation_unet, conditioning, latent, skip_frames, guidance_scale, steps, sampler,
                seed) -> io.NodeOutput:
        videos = sockets.latent_videos(latent, "Kandinsky Video Interpolate")
        groups, (h, w) = videos[0].shape[0] - 1, videos[0].shape[-2:]
        progress = StepProgress(steps * len(videos), lambda x: x.reshape(-1, 4, *x.shape[-2:]))
        # a long video's prompt timeline gives each group its segment's prompt (checked before loading)
        cond = sockets.interpolation_condition(conditioning, groups + 1, interpolation_unet.null_embedding,
                                               "Kandinsky Video Interpolate")
        out = []
        memory = activation_memory(2 * max(groups, 1), h, w, interpolation_unet.compute_dtype, 15)
        with torch.inference_mode(), stage(interpolation_unet, memory_required=memory) as device:
            for i, frames in enumerate(videos):
                # the noise stream follows from the input frame count (kv_core's rule), which
                # survives Save/Load Latent: a pass on a loaded latent draws what the direct run drew
                out.append(interpolate_frames(
                    interpolation_unet.module, interpolation_unet.null_embedding, cond,
                    frames, skip_frames=skip_frames, guidance_scale=guidance_scale, sampler=sampler, steps=steps,
                    noise=seed, progress=lambda step, total, x, done=i * steps: progress(
                        done + step, progress.bar.total, x),
                    cancel=progress.cancel, device=device, dtype=interpolation_unet.compute_dtype).cpu())
        keyframes = sockets.recorded_keyframes(latent)  # passed on for Decode's frame rate, if known
        return io.NodeOutput(sockets.video_latent(out, keyframes, sockets.recorded_segments(latent)))


NODES = [KandinskyVideoInterpolate]
