"""Extend: continue a video with one more segment (long videos).

An adapter of ``kv_core.extend`` (``generate_segment`` + ``join_segments`` and the
``PromptTimeline``): the previous keyframes' last latent conditions the new segment, its
frame 0 (the seam copy) is dropped, and the prompt timeline travels on the conditioning
output to the next Extend and to Interpolate. The rules are in ``kv_core/extend.py``.
"""
from __future__ import annotations

import torch

from comfy_api.latest import io

from ..kv_core.extend import CONDITION_SOURCES, PromptTimeline, generate_segment, join_segments
from ..kv_core.stages import Hooks
from .host import latent as record
from .host import sockets
from .host.inputs import CATEGORY, MAX_KEYFRAMES, CheckedCombos, keyframe_inputs, step_cache_input
from .host.networks import activation_memory, stage
from .host.progress import CacheReport, StepProgress

WHAT = "Kandinsky Video Extend"


class KandinskyVideoExtend(CheckedCombos, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KandinskyVideoExtend",
            display_name="Kandinsky Video Extend",
            category=f"{CATEGORY}/sampling",
            description=("Continues a video with one more segment of keyframes: the last keyframe of the video "
                         "so far is the new segment's first-frame condition, and the new segment, with its own "
                         "prompt, motion, seed and keyframe count, is joined on (its frame 0, which repeats the "
                         "condition, is dropped: 12 + 11 + 11 = 34 keyframes for three 12-keyframe segments). "
                         "Chain any number; interpolate the joined keyframes once at the end, with this node's "
                         "conditioning output (each interpolated group gets its segment's prompt). The video "
                         "plays at the rate of its first segment."),
            inputs=[
                sockets.KeyframeUNet.Input("keyframe_unet", tooltip="From Load Kandinsky Video Keyframe U-Net."),
                sockets.Conditioning.Input(
                    "previous_conditioning",
                    tooltip="The conditioning of the video so far: Text Encode's for a video from Keyframes, the "
                            "conditioning output of the previous Extend after that (it carries every segment's "
                            "prompt)."),
                io.Latent.Input("latent", tooltip="Keyframes of the video so far: from Kandinsky Video Keyframes or "
                                                  "a previous Extend (not interpolated)."),
                *keyframe_inputs(),  # the segment's own settings: the Keyframes node's
                sockets.Conditioning.Input(
                    "conditioning", optional=True,
                    tooltip="This segment's prompt and negative prompt (Text Encode). Not connected: the previous "
                            "segment's prompt goes on."),
                io.Int.Input("condition_frames", default=1, min=1, max=MAX_KEYFRAMES - 1, optional=True,
                             tooltip="How many of the last keyframes condition the new segment's first frames. 1 "
                                     "as the release (it conditions frame 0 only). More may carry motion across "
                                     "the seam but is outside what the release was trained for."),
                io.Combo.Input("condition_source", options=list(CONDITION_SOURCES), default="latent", optional=True,
                               tooltip="latent: the last keyframe's latent itself (default: the U-Net makes "
                                       "its frames in the latent space of the first-frame encoder). reencode: "
                                       "that frame decoded by the image MoVQ to a picture and encoded again, "
                                       "as Encode First Frame would (needs movq)."),
                sockets.MoVQ.Input("movq", optional=True,
                                   tooltip="Load Kandinsky Video Image MoVQ; only for condition_source reencode."),
                step_cache_input(),
            ],
            outputs=[
                io.Latent.Output(display_name="latent",
                                 tooltip="The joined keyframes [1, 4, frames, h, w], with the segments' keyframe "
                                         "counts for Decode's frame rate."),
                sockets.Conditioning.Output(display_name="conditioning",
                                            tooltip="Every segment's prompt: wire it to the next Extend's "
                                                    "previous_conditioning and to Interpolate."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, keyframe_unet, previous_conditioning, latent, motion, noise_augmentation,
                guidance_weight_prompt, guidance_weight_image, steps, sampler, seed, num_keyframes,
                conditioning=None, condition_frames=1, condition_source="latent", movq=None,
                step_cache=None) -> io.NodeOutput:
        videos = record.latent_videos(latent, WHAT)
        n, (h, w) = int(videos[0].shape[0]), videos[0].shape[-2:]
        if n < 2:
            raise ValueError(f"{WHAT}: the latent has {n} frame; a video to continue has at least 2 keyframes")
        if record.recorded_fps(latent) is not None:
            raise ValueError(f"{WHAT}: this latent is an encoded video (Encode Video) at its own frame rate, not "
                             "keyframes: to continue it, take its last frame (core Image From Batch) into Encode "
                             "First Frame -> Keyframes, then Extend that")
        recorded = record.recorded_keyframes(latent)
        if recorded is not None and recorded != n:
            raise ValueError(f"{WHAT}: this latent has {n} frames made from {recorded} keyframes: it is "
                             "interpolated. Extend continues keyframes: wire the latent of Keyframes or of the "
                             "previous Extend, and interpolate the joined keyframes at the end")
        if condition_source == "reencode" and movq is None:
            raise ValueError(f"{WHAT}: condition_source reencode decodes and encodes the last keyframe with the "
                             "image MoVQ: connect Load Kandinsky Video Image MoVQ to movq (or use latent)")
        if condition_frames >= num_keyframes:
            raise ValueError(f"{WHAT}: condition_frames ({condition_frames}) must be less than num_keyframes "
                             f"({num_keyframes}), or the segment adds no keyframe")
        if condition_frames > n:
            raise ValueError(f"{WHAT}: condition_frames ({condition_frames}) is more than the {n} keyframes of the "
                             "video so far")
        timeline: PromptTimeline = sockets.prompt_timeline(previous_conditioning, n, WHAT)
        segments = record.recorded_segments(latent) or timeline.keyframe_counts
        added = num_keyframes - condition_frames
        own = conditioning if conditioning is not None else previous_conditioning
        timeline = timeline.extended(own.text_condition(), added)

        progress = StepProgress(steps * len(videos), lambda x: x)
        step_cache = CacheReport.of(cls, WHAT, steps, len(videos)).settings(step_cache)
        memory = activation_memory(keyframe_unet, 3 * num_keyframes, h, w)
        networks = (keyframe_unet, movq) if condition_source == "reencode" else (keyframe_unet,)
        out = []
        with torch.inference_mode(), stage(*networks, memory_required=memory) as device:
            for i, previous in enumerate(videos):
                segment = generate_segment(
                    keyframe_unet.module, keyframe_unet.null_embedding, timeline.latest, previous,
                    num_keyframes=num_keyframes, condition_frames=condition_frames,
                    condition_source=condition_source, movq=movq.module if movq is not None else None,
                    movq_dtype=movq.compute_dtype if movq is not None else None, motion=motion,
                    noise_augmentation=noise_augmentation, guidance_weight_prompt=guidance_weight_prompt,
                    guidance_weight_image=guidance_weight_image, sampler=sampler, steps=steps, noise=seed,
                    hooks=Hooks(progress=lambda step, total, x, done=i * steps: progress(done + step,
                                                                                         progress.bar.total, x),
                                cancel=progress.cancel, device=device, dtype=keyframe_unet.compute_dtype),
                    step_cache=step_cache)
                out.append(join_segments(previous, segment.cpu(), condition_frames))
        joined = record.video_latent(out, n + added, [*segments, added])
        return io.NodeOutput(joined, sockets.ConditioningTimeline(own.prompt, own.negative_prompt,
                                                                  timeline.latest, timeline))


NODES = [KandinskyVideoExtend]
