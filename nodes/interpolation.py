"""Interpolate: one x4 pass of the interpolation U-Net (N frames -> 4N - 3)."""
from __future__ import annotations

import torch

from comfy_api.latest import io

from ..kv_core.noise import SeededNoise, interpolation_stage
from ..kv_core.pipeline import SKIP_FRAMES
from ..kv_core.sampling import assemble_interpolated, sample_interpolation
from ..kv_core.schedulers import stage_sampler
from . import common
from .common import CATEGORY
from .first_frame import sampler_inputs

MAX_SKIP_FRAMES = 19  # the U-Net's skip-frames embedding has 20 entries


class KandinskyVideoInterpolate(common.CheckedCombos, io.ComfyNode):
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
                common.InterpolationUNet.Input("interpolation_unet",
                                               tooltip="From Load Kandinsky Video Interpolation U-Net."),
                common.Conditioning.Input("conditioning", tooltip="From Kandinsky Video Text Encode (the release "
                                                                  "uses the same prompt context as the keyframes)."),
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
        common.check_context_dim(conditioning, interpolation_unet)
        videos = common.latent_videos(latent, "Kandinsky Video Interpolate")
        num_frames = videos[0].shape[0]
        if num_frames < 2:
            raise ValueError("Kandinsky Video Interpolate needs a video of at least 2 frames")
        common.size_rule(interpolation_unet=interpolation_unet).check_latent(*videos[0].shape[-2:], "video latent")
        guidance_scale = common.check_finite("guidance_scale", guidance_scale)
        # the noise stream follows from the input frame count, which survives Save/Load
        # Latent, so a pass on a loaded latent draws what the direct run drew (kv_core's rule)
        stream = interpolation_stage(num_frames)
        loop = stage_sampler("interpolation", sampler, steps)
        groups, (h, w) = num_frames - 1, videos[0].shape[-2:]
        progress = common.StepProgress(loop.num_steps * len(videos),
                                       lambda x: x.reshape(-1, 4, *x.shape[-2:]))
        out = []
        with torch.inference_mode():
            memory = common.activation_memory(2 * groups, h, w, interpolation_unet.compute_dtype, 15)
            with common.stage(interpolation_unet, memory_required=memory) as device:
                for i, frames in enumerate(videos):
                    done = i * loop.num_steps
                    new = sample_interpolation(
                        common.ComputeDtype(interpolation_unet), conditioning.text_condition(),
                        interpolation_unet.null_embedding, frames, skip_frames=int(skip_frames),
                        guidance_scale=float(guidance_scale), sampler=loop,
                        noise=SeededNoise.for_stage(seed, stream), device=device,
                        progress=lambda step, total, x: progress(done + step, progress.bar.total, x),
                        cancel=progress.cancel)
                    out.append(assemble_interpolated(frames.to(new.device), new).cpu())
        keyframes = common.recorded_keyframes(latent)  # passed on for Decode's frame rate, if known
        result = common.video_latent(out[0], keyframes)
        if len(out) > 1:
            result["samples"] = torch.cat([common.video_latent(v, keyframes)["samples"] for v in out])
        return io.NodeOutput(result)


NODES = [KandinskyVideoInterpolate]
