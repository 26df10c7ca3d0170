"""Keyframes: the keyframe U-Net in video mode, from the first-frame condition.

An adapter of ``kv_core.stages.keyframes.generate_keyframes``."""
from __future__ import annotations

import torch

from comfy_api.latest import io

from ..kv_core.rules import REFERENCE_KEYFRAMES
from ..kv_core.sampling.schedulers import NUM_TRAIN_TIMESTEPS
from ..kv_core.stages.keyframes import MOTION_PRESETS, generate_keyframes
from ..kv_core.stages import Hooks
from . import sockets
from .inputs import CATEGORY, MAX_KEYFRAMES, CheckedCombos, sampler_inputs, step_cache_input
from .networks import activation_memory, stage
from .progress import CacheReport, StepProgress

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
                io.Combo.Input("motion", options=list(MOTION_PRESETS), default="medium",
                               tooltip="Amount of motion: low 1, medium 10, high 50, extreme 100 (the motion "
                                       "score the U-Net was trained with)."),
                io.Int.Input("noise_augmentation", default=20, min=0, max=NUM_TRAIN_TIMESTEPS - 1,
                             tooltip="Diffusion timestep the first frame is noised to before conditioning "
                                     "(20 in the release); higher lets the video drift from the picture."),
                io.Float.Input("guidance_weight_prompt", default=5.0, min=-30.0, max=30.0, step=0.1,
                               tooltip="Prompt guidance weight wp in (1-wi)*uncond + (wi-wp)*image + wp*full "
                                       "(5 in the release)."),
                io.Float.Input("guidance_weight_image", default=2.0, min=-30.0, max=30.0, step=0.1,
                               tooltip="Image guidance weight wi (2 in the release, 3 in its README examples)."),
                *sampler_inputs(50),
                io.Int.Input("num_keyframes", default=REFERENCE_KEYFRAMES, min=2, max=MAX_KEYFRAMES,
                             tooltip="Keyframes to generate (12 in the release, 0.5 s apart)."),
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
                num_keyframes, step_cache=None) -> io.NodeOutput:
        h, w = first_frame.latent.shape[-2:]
        progress = StepProgress(steps, lambda x: x)
        step_cache = CacheReport.of(cls, "Kandinsky Video Keyframes", steps).settings(step_cache)
        memory = activation_memory(keyframe_unet, 3 * num_keyframes, h, w)
        with torch.inference_mode(), stage(keyframe_unet, memory_required=memory) as device:
            frames = generate_keyframes(
                keyframe_unet.module, keyframe_unet.null_embedding, conditioning.text_condition(), first_frame.latent,
                num_keyframes=num_keyframes, motion=motion, noise_augmentation=noise_augmentation,
                guidance_weight_prompt=guidance_weight_prompt, guidance_weight_image=guidance_weight_image,
                sampler=sampler, steps=steps, noise=seed,
                hooks=Hooks(progress=progress, cancel=progress.cancel, device=device,
                            dtype=keyframe_unet.compute_dtype),
                step_cache=step_cache)
        return io.NodeOutput(sockets.video_latent(frames, num_keyframes))


NODES = [KandinskyVideoKeyframes]
