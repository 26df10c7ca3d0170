"""Keyframes: the keyframe U-Net in video mode, from the first-frame condition.

An adapter of ``kv_core.stages.keyframes.generate_keyframes``."""
from __future__ import annotations

import torch

from comfy_api.latest import io

from ..kv_core.stages.keyframes import generate_keyframes
from ..kv_core.stages import Hooks
from .host import sockets, stage_model
from .host.inputs import CATEGORY, CheckedCombos, keyframe_inputs, step_cache_input
from .host.latent import video_latent
from .host.networks import activation_memory, stage
from .host.progress import CacheReport, StepProgress


class KandinskyVideoKeyframes(CheckedCombos, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KandinskyVideoKeyframes",
            display_name="Kandinsky Video Keyframes",
            category=f"{CATEGORY}/sampling",
            description=("Generates the keyframes (12 in the release, 2 fps, 5.5 s) from the first frame "
                         "with three guidance passes per step. The output is a core LATENT "
                         "[1, 4, frames, h, w]: Save Latent / Load Latent can keep it."),
            inputs=[
                sockets.KeyframeUNet.Input("keyframe_unet", tooltip="From Load Kandinsky Video Keyframe U-Net."),
                sockets.Conditioning.Input("conditioning", tooltip="From Kandinsky Video Text Encode."),
                sockets.FirstFrame.Input("first_frame", tooltip="From Kandinsky Video Encode First Frame; "
                                                               "it also sets the video size."),
                *keyframe_inputs(),
                stage_model.model_input(),
                step_cache_input(),
            ],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="Keyframe latents [1, 4, frames, h, w].")],
            hidden=[io.Hidden.unique_id],
        )

    # No validate_inputs: the schema's min/max/options give one error on the input at
    # fault (a validate_inputs would have its message shown under every input it takes).

    @classmethod
    def execute(cls, keyframe_unet, conditioning, first_frame, motion, noise_augmentation,
                guidance_weight_prompt, guidance_weight_image, steps, sampler, seed,
                num_keyframes, model=None, step_cache=None) -> io.NodeOutput:
        if model is not None:
            stage_model.check(model, keyframe_unet.patcher, "keyframes", "Kandinsky Video Keyframes")
        h, w = first_frame.latent.shape[-2:]
        progress = StepProgress(steps, lambda x: x)
        step_cache = CacheReport.of(cls, "Kandinsky Video Keyframes", steps).settings(step_cache)
        memory = activation_memory(keyframe_unet, 3 * num_keyframes, h, w)
        with torch.inference_mode(), stage(keyframe_unet, memory_required=memory, model=model) as device:
            frames = generate_keyframes(
                stage_model.unet_of(model, keyframe_unet, (3, guidance_weight_prompt), "Kandinsky Video Keyframes"),
                keyframe_unet.null_embedding,
                conditioning.text_condition(), first_frame.latent,
                num_keyframes=num_keyframes, motion=motion, noise_augmentation=noise_augmentation,
                guidance_weight_prompt=guidance_weight_prompt, guidance_weight_image=guidance_weight_image,
                sampler=sampler, steps=steps, noise=seed,
                hooks=Hooks(progress=progress, cancel=progress.cancel, device=device,
                            dtype=keyframe_unet.compute_dtype),
                step_cache=step_cache)
        return io.NodeOutput(video_latent(frames, num_keyframes))


NODES = [KandinskyVideoKeyframes]
