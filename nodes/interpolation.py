"""Interpolate: one x4 pass of the interpolation U-Net (N frames -> 4N - 3).

An adapter of ``kv_core.stages.interpolation.interpolate_frames``, once per video of the LATENT batch."""
from __future__ import annotations

import torch

from comfy_api.latest import io

from ..kv_core.conditioning import null_condition
from ..kv_core.stages.interpolation import MAX_SKIP_FRAMES, SKIP_FRAMES, interpolate_frames
from ..kv_core.stages import Hooks
from .host import latent as record
from .host import sockets, stage_model
from .host.inputs import CATEGORY, CheckedCombos, sampler_inputs, step_cache_input
from .host.latent import AUTO_SKIP, carry_video_record, resolve_skip_frames
from .host.networks import activation_memory, stage
from .host.progress import CacheReport, StepProgress

MAX_WINDOW = 4096


class KandinskyVideoInterpolate(CheckedCombos, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KandinskyVideoInterpolate",
            display_name="Kandinsky Video Interpolate",
            category=f"{CATEGORY}/sampling",
            description=("Puts three new frames between every two frames (N -> 4N-3): 12 keyframes at 2 fps "
                         "become 45 frames at 8 fps. Chain a second Interpolate with skip_frames 1 for 177 "
                         "frames at 32 fps. Any video works too (Kandinsky Video Encode Video): 4x its frame "
                         "rate per pass."),
            inputs=[
                sockets.InterpolationUNet.Input("interpolation_unet",
                                               tooltip="From Load Kandinsky Video Interpolation U-Net."),
                sockets.Conditioning.Input("conditioning", optional=True,
                                           tooltip="From Kandinsky Video Text Encode (the release uses the same "
                                                   "prompt context as the keyframes). Optional: without it, the "
                                                   "null-text context (no prompt; the frames alone guide it). From "
                                                   "a long video's last Extend: each group gets its segment's "
                                                   "prompt."),
                io.Latent.Input("latent", tooltip="Video latent from Kandinsky Video Keyframes or a previous "
                                                  "Interpolate (or Load Latent of one)."),
                io.Int.Input("skip_frames", default=SKIP_FRAMES[1], min=AUTO_SKIP, max=MAX_SKIP_FRAMES,
                             tooltip="How many frames the model is told to fill between two given frames: 3 for "
                                     "the first pass (2 -> 8 fps), 1 for the second (8 -> 32 fps), as the release. "
                                     "-1 (auto): from the latent's frame rate, 3 below 4.2 fps, 1 from there up."),
                io.Float.Input("guidance_scale", default=0.5, min=0.0, max=30.0, step=0.05,
                               tooltip="Guidance (w+1)*cond - w*uncond (interpolation_guidance_scale, 0.5 in the "
                                       "release)."),
                *sampler_inputs(10),
                io.Int.Input("window", default=0, min=0, max=MAX_WINDOW, optional=True,
                             tooltip="0: all frame groups in one U-Net batch, as the release. Otherwise groups "
                                     "per batch (a quarter of them shared with the next batch) for long videos "
                                     "that do not fit memory at once; 16 suits most. Same noise either way; "
                                     "results differ slightly where the batches meet."),
                stage_model.model_input(),
                step_cache_input(),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Video latent with 4N-3 frames.")],
            hidden=[io.Hidden.unique_id],
        )

    # No validate_inputs: the schema's min/max/options check each input on its own.

    @classmethod
    def execute(cls, interpolation_unet, latent, skip_frames, guidance_scale, steps, sampler, seed,
                conditioning=None, window=0, model=None, step_cache=None) -> io.NodeOutput:
        if model is not None:
            stage_model.check(model, interpolation_unet.patcher, "interpolation", "Kandinsky Video Interpolate")
        videos = record.latent_videos(latent, "Kandinsky Video Interpolate")
        step_cache = CacheReport.of(cls, "Kandinsky Video Interpolate", steps, len(videos)).settings(step_cache)
        skip_frames = resolve_skip_frames(skip_frames, latent, int(videos[0].shape[0]),
                                          "Kandinsky Video Interpolate")
        window = int(window) or None
        groups, (h, w) = videos[0].shape[0] - 1, videos[0].shape[-2:]
        # a long video's prompt timeline gives each group its segment's prompt (checked before loading)
        text = (sockets.interpolation_condition(conditioning, groups + 1, interpolation_unet.null_embedding,
                                                "Kandinsky Video Interpolate") if conditioning is not None
                else null_condition(interpolation_unet.null_embedding))
        progress = StepProgress(steps * len(videos), lambda x: x.reshape(-1, 4, *x.shape[-2:]))
        out = []
        rows = 2 * max(min(groups, window or groups), 1)  # a window's rows are what the U-Net holds at once
        memory = activation_memory(interpolation_unet, rows, h, w)
        unet = stage_model.unet_of(model, interpolation_unet, (2, guidance_scale + 1.0), "Kandinsky Video Interpolate")
        with torch.inference_mode(), stage(interpolation_unet, memory_required=memory, model=model) as device:
            for i, frames in enumerate(videos):
                # the noise stream follows from the input frame count (kv_core's rule), which
                # survives Save/Load Latent: a pass on a loaded latent draws what the direct run drew
                out.append(interpolate_frames(
                    unet, interpolation_unet.null_embedding, text,
                    frames, skip_frames=skip_frames, window=window, guidance_scale=guidance_scale, sampler=sampler,
                    steps=steps, noise=seed,
                    hooks=Hooks(progress=lambda step, total, x, done=i * steps: progress(
                        done + step, progress.bar.total, x), cancel=progress.cancel, device=device,
                        dtype=interpolation_unet.compute_dtype),
                    step_cache=step_cache).cpu())
        keyframes = record.recorded_keyframes(latent)  # passed on for Decode's frame rate, if known
        # an Encode Video latent's frame rate (x4) and size record go on to Decode
        out = record.video_latent(out, keyframes, record.recorded_segments(latent))  # a long video's segments too
        return io.NodeOutput(carry_video_record(latent, out))


NODES = [KandinskyVideoInterpolate]
