"""Kandinsky Video through ComfyUI's own sampling: the U-Nets as core MODELs, conditioning
per stage, the release's guider and sigmas, and the assembly of interpolated frames.

The pack's stage nodes (First Frame, Keyframes, Interpolate) stay the faithful default;
these nodes add the core path: SamplerCustomAdvanced (or KSampler where it fits) with
any core sampler, scheduler and model patch. Thin adapters of ``nodes.core_model`` and
``kv_core.stage_inputs``.
"""
from __future__ import annotations

import logging

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..kv_core.checkpoints import DEFAULT_TOKENS_LENGTH
from ..kv_core.conditioning import guidance_contexts
from ..kv_core.rules import REFERENCE_KEYFRAMES, size_rule
from ..kv_core.sampling.noise import MAX_SEED
from ..kv_core.sampling.schedulers import NUM_TRAIN_TIMESTEPS
from ..kv_core.stages import Hooks, LATENT_CHANNELS, STAGES, release_sigmas, stage_defaults
from ..kv_core.stages.first_frame import decode_first_frame, first_frame_latent_size
from ..kv_core.stages.interpolation import GROUP_FRAMES, MAX_SKIP_FRAMES, SKIP_FRAMES, assemble_interpolated
from ..kv_core.stages.keyframes import (MOTION_PRESETS, augment_key_frame, keyframe_augmentation_noise,
                                        keyframe_condition, motion_score, score_tensor)
from . import core_model as cm
from . import sockets
from .inputs import CATEGORY, MAX_KEYFRAMES, CheckedCombos, size_inputs
from .networks import activation_memory, stage
from .video_input import AUTO_SKIP, carry_video_record, resolve_skip_frames

CORE = f"{CATEGORY}/core sampling"
LOSSES = ("What this path loses against the pack's own stage nodes: the noise comes from the core noise node, "
          "not from the pack's per-stage streams in the reference's order, so a seed gives another video than "
          "the pack's nodes and not the same video on every device.")


def _intermediate(t: torch.Tensor) -> torch.Tensor:
    return t.to(mm.intermediate_device())


def _contexts(model, conditioning, stage_name: str, what: str):
    """(context, mask, null context, null mask) ``[1, L, D]`` / ``[1, L]`` of one stage,
    all of one length L (the null text is the U-Net's null embedding, as in the loops)."""
    inner = cm.kandinsky_model(model, stage_name, what)
    null = inner.null_embedding.float().cpu()
    if conditioning is None:
        ctx = torch.zeros(1, DEFAULT_TOKENS_LENGTH, null.shape[-1])
        ctx[:, 0] = null
        mask = torch.zeros(1, DEFAULT_TOKENS_LENGTH, dtype=torch.bool)
        mask[:, 0] = True
        return ctx, mask, ctx, mask
    timeline = getattr(conditioning, "timeline", None)  # a long video's prompts (Kandinsky Video Extend)
    if stage_name == "interpolation" and timeline is not None and len(timeline.segments) > 1:
        raise ValueError(f"{what}: this conditioning is a long video's prompt timeline (one prompt per segment); "
                         "the core sampling path takes one prompt for every group: use Kandinsky Video Interpolate "
                         "for per-segment prompts, or wire one Text Encode here")
    cond = conditioning.text_condition()
    if cond.context.shape[-1] != null.shape[-1]:
        raise ValueError(f"{what}: the text conditioning has width {cond.context.shape[-1]} but this U-Net takes "
                         f"{null.shape[-1]}; use the text encoder of the same release")
    ctx, mask, uc, um = guidance_contexts(cond, null, 1, torch.device("cpu"))
    return ctx, mask, uc, um


def _cond(context, mask, **values) -> list:
    """Core CONDITIONING: one entry ``[context [1, L, D], {stage keys}]``."""
    return [[_intermediate(context.float()), {cm.KEY_MASK: mask.bool(), **values}]]


class _CoreModel(io.ComfyNode):
    """A loaded U-Net (one input) -> a core MODEL; subclasses name the node and the input."""

    NODE_ID = DISPLAY_NAME = DESCRIPTION = INPUT = TOOLTIP = ""
    SOCKET = None

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id=cls.NODE_ID, display_name=cls.DISPLAY_NAME, category=CORE,
                         description=cls.DESCRIPTION + " Uses the loaded network itself (no second copy). " + LOSSES,
                         inputs=[cls.SOCKET.Input(cls.INPUT, tooltip=cls.TOOLTIP)],
                         outputs=[io.Model.Output(display_name="model")])

    @classmethod
    def execute(cls, **unet):
        return io.NodeOutput(cm.core_model(unet[cls.INPUT]))


class KandinskyVideoKeyframeModel(_CoreModel):
    NODE_ID, DISPLAY_NAME = "KandinskyVideoKeyframeModel", "Kandinsky Video Keyframe Model"
    SOCKET, INPUT, TOOLTIP = sockets.KeyframeUNet, "keyframe_unet", "From Load Kandinsky Video Keyframe U-Net."
    DESCRIPTION = ("The keyframe U-Net as a core MODEL (first frame and keyframes) for SamplerCustomAdvanced, "
                   "KSampler and core model patches: epsilon prediction on the release's zero-terminal-SNR schedule.")


class KandinskyVideoInterpolationModel(_CoreModel):
    NODE_ID, DISPLAY_NAME = "KandinskyVideoInterpolationModel", "Kandinsky Video Interpolation Model"
    SOCKET, INPUT = sockets.InterpolationUNet, "interpolation_unet"
    TOOLTIP = "From Load Kandinsky Video Interpolation U-Net."
    DESCRIPTION = ("The interpolation U-Net as a core MODEL: v-prediction on the release's schedule; its latent is "
                   "the groups of three new frames [1, 12, groups, h, w].")


class KandinskyVideoFirstFrameConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KandinskyVideoFirstFrameConditioning", display_name="Kandinsky Video First Frame Conditioning",
            category=CORE,
            description=("Conditioning of the first frame (the keyframe U-Net in image mode) for core sampling: "
                         "positive (the prompt), negative (the negative prompt, or the release's null text) and an "
                         "empty LATENT at twice the video size. Guide it with Kandinsky Video Guider "
                         "(guidance_scale 5), sigmas from Kandinsky Video Sigmas (first_frame). " + LOSSES),
            inputs=[io.Model.Input("model", tooltip="From Kandinsky Video Keyframe Model."),
                    sockets.Conditioning.Input("conditioning", tooltip="From Kandinsky Video Text Encode."),
                    *size_inputs("The first frame is made at twice this size.")],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative"),
                     io.Latent.Output(display_name="latent", tooltip="Empty first-frame latent [1, 4, 2h, 2w].")])

    @classmethod
    def execute(cls, model, conditioning, width, height):
        what = "Kandinsky Video First Frame Conditioning"
        inner = cm.kandinsky_model(model, "first_frame", what)
        h, w = first_frame_latent_size(width, height, unet=inner.diffusion_model.net)
        ctx, mask, uc, um = _contexts(model, conditioning, "first_frame", what)
        stage_key = {cm.KEY_STAGE: "first_frame"}
        latent = {"samples": _intermediate(torch.zeros(1, LATENT_CHANNELS, h, w))}
        return io.NodeOutput(_cond(ctx, mask, **stage_key), _cond(uc, um, **stage_key), latent)


class KandinskyVideoDecodeFirstFrame(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KandinskyVideoDecodeFirstFrame", display_name="Kandinsky Video Decode First Frame",
            category=CORE,
            description=("Decodes a first-frame LATENT (from core sampling with the First Frame Conditioning) with "
                         "the image MoVQ, as the First Frame node does: connect the IMAGE to Encode First Frame."),
            inputs=[sockets.MoVQ.Input("movq", tooltip="From Load Kandinsky Video Image MoVQ."),
                    io.Latent.Input("latent", tooltip="The sampled first frame [1, 4, 2h, 2w].")],
            outputs=[io.Image.Output(display_name="image")])

    @classmethod
    def execute(cls, movq, latent):
        samples = latent.get("samples") if isinstance(latent, dict) else None
        if not isinstance(samples, torch.Tensor) or samples.ndim != 4 or samples.shape[1] != LATENT_CHANNELS:
            raise ValueError("Kandinsky Video Decode First Frame: expected a first-frame LATENT [1, 4, h, w] from "
                             "core sampling with Kandinsky Video First Frame Conditioning")
        h, w = samples.shape[-2:]
        with torch.inference_mode(), stage(movq, memory_required=activation_memory(movq, 1, h, w)
                                           ) as device:
            pictures = [decode_first_frame(movq.module, s[None].float(),
                                           hooks=Hooks(device=device, dtype=movq.compute_dtype))
                        for s in samples]
        return io.NodeOutput(_intermediate(torch.stack(pictures).float() / 255.0))


class KandinskyVideoKeyframesConditioning(CheckedCombos, io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KandinskyVideoKeyframesConditioning", display_name="Kandinsky Video Keyframes Conditioning",
            category=CORE,
            description=("Conditioning of the keyframes for core sampling: positive (prompt + first frame), "
                         "image_only (null text + first frame), negative (null text, no first frame) and an empty "
                         "video LATENT [1, 4, frames, h, w]. Guide with Kandinsky Video Guider (all three conds, "
                         "guidance 5, image guidance 2) or core DualCFGGuider regular (cond1 positive, cond2 "
                         "image_only, cfg_conds 5, cfg_cond2_negative 2; without the release's x0 clamp). The "
                         "first frame is noised with uniform noise from this node's seed (the pack's Keyframes node "
                         "draws the same for the same seed). " + LOSSES),
            inputs=[io.Model.Input("model", tooltip="From Kandinsky Video Keyframe Model."),
                    sockets.Conditioning.Input("conditioning", tooltip="From Kandinsky Video Text Encode."),
                    sockets.FirstFrame.Input("first_frame", tooltip="From Kandinsky Video Encode First Frame; it "
                                                                   "sets the video size."),
                    io.Int.Input("num_keyframes", default=REFERENCE_KEYFRAMES, min=2, max=MAX_KEYFRAMES,
                                 tooltip="Keyframes to generate (12 in the release)."),
                    io.Combo.Input("motion", options=list(MOTION_PRESETS), default="medium",
                                   tooltip="Motion score: low 1, medium 10, high 50, extreme 100."),
                    io.Int.Input("noise_augmentation", default=20, min=0, max=NUM_TRAIN_TIMESTEPS - 1,
                                 tooltip="Timestep the first frame is noised to (20 in the release)."),
                    io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                                 tooltip="Seed of the uniform noise of the first frame's augmentation (the same "
                                         "draw as the pack's Keyframes node with this seed).")],
            outputs=[io.Conditioning.Output(display_name="positive"),
                     io.Conditioning.Output(display_name="image_only"),
                     io.Conditioning.Output(display_name="negative"),
                     io.Latent.Output(display_name="latent", tooltip="Empty keyframes latent [1, 4, frames, h, w].")])

    @classmethod
    def execute(cls, model, conditioning, first_frame, num_keyframes, motion, noise_augmentation, seed):
        what = "Kandinsky Video Keyframes Conditioning"
        inner = cm.kandinsky_model(model, "keyframes", what)
        key = first_frame.latent.float().cpu()
        h, w = key.shape[-2:]
        size_rule(unet=inner.diffusion_model.net).check_latent(h, w, "first-frame latent")
        ctx, mask, uc, um = _contexts(model, conditioning, "keyframes", what)
        uniform = keyframe_augmentation_noise(seed, num_keyframes, h, w)
        noisy_key = augment_key_frame(key, uniform, noise_augmentation)

        def video(condition):  # [T, 5, h, w] -> [1, 5, T, h, w]
            return _intermediate(condition.movedim(0, 1)[None])

        scores = {cm.KEY_STAGE: "keyframes", cm.KEY_MOTION: score_tensor(motion_score(motion), 1),
                  cm.KEY_AUGMENTATION: score_tensor(noise_augmentation, 1)}
        with_image = video(keyframe_condition(noisy_key, num_keyframes, h, w))
        without = video(keyframe_condition(None, num_keyframes, h, w))
        latent = sockets.video_latent(torch.zeros(num_keyframes, LATENT_CHANNELS, h, w), num_keyframes)
        return io.NodeOutput(_cond(ctx, mask, **scores, **{cm.KEY_CONDITION: with_image}),
                             _cond(uc, um, **scores, **{cm.KEY_CONDITION: with_image}),
                             _cond(uc, um, **scores, **{cm.KEY_CONDITION: without}), latent)


class KandinskyVideoInterpolationConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KandinskyVideoInterpolationConditioning",
            display_name="Kandinsky Video Interpolation Conditioning", category=CORE,
            description=("Conditioning of one interpolation pass for core sampling: positive (prompt, neighbour "
                         "frames, temporal layers on), negative (null text, no frames, temporal layers off) and a "
                         "LATENT of zeros [1, 12, N-1, h, w]: the three new frames of each of the N-1 gaps, "
                         "frame-major on the 12 channels. Guide with Kandinsky Video Guider (guidance 0.5 = core "
                         "cfg 1.5), sigmas from Kandinsky Video Sigmas (interpolation), then Kandinsky Video "
                         "Assemble Frames. The sampler runs all N-1 groups in one U-Net batch (no window): for "
                         "long videos that do not fit memory use Kandinsky Video Interpolate with a window. "
                         + LOSSES),
            inputs=[io.Model.Input("model", tooltip="From Kandinsky Video Interpolation Model."),
                    io.Latent.Input("latent", tooltip="The video to interpolate: from Keyframes (either path), a "
                                                      "previous Assemble Frames or Interpolate, Encode Video (any "
                                                      "video), or Load Latent."),
                    io.Int.Input("skip_frames", default=SKIP_FRAMES[1], min=AUTO_SKIP, max=MAX_SKIP_FRAMES,
                                 tooltip="3 for the first pass (2 -> 8 fps), 1 for the second (8 -> 32 fps). -1 "
                                         "(auto): from the latent's frame rate, 3 below 4.2 fps, 1 from there up "
                                         "(as Interpolate)."),
                    sockets.Conditioning.Input("conditioning", optional=True,
                                               tooltip="From Kandinsky Video Text Encode (the release uses the "
                                                       "keyframes' prompt). Without it, both sides use the null "
                                                       "text.")],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative"),
                     io.Latent.Output(display_name="latent", tooltip="Empty groups latent [1, 12, N-1, h, w].")])

    @classmethod
    def execute(cls, model, latent, skip_frames, conditioning=None):
        what = "Kandinsky Video Interpolation Conditioning"
        inner = cm.kandinsky_model(model, "interpolation", what)
        videos = sockets.latent_videos(latent, what)
        if len(videos) != 1:
            raise ValueError(f"{what}: the latent holds {len(videos)} videos; core sampling interpolates one at a "
                             "time (pick one with core Latent From Batch, or use Kandinsky Video Interpolate)")
        frames = videos[0].cpu()
        n, _, h, w = frames.shape
        if n < 2:
            raise ValueError(f"{what}: interpolation needs a video of at least 2 frames, got {n}")
        size_rule(interpolation_unet=inner.diffusion_model.net).check_latent(h, w, "video latent")
        skip_frames = resolve_skip_frames(skip_frames, latent, n, what)
        ctx, mask, uc, um = _contexts(model, conditioning, "interpolation", what)
        groups = n - 1

        def neighbours(conditional: bool):  # [1, 8, G, h, w]: left frame 4 channels, right 4
            left, right = (frames[:-1], frames[1:]) if conditional else (torch.zeros_like(frames[:-1]),) * 2
            return _intermediate(torch.cat([left, right], dim=1).movedim(0, 1)[None])

        def values(conditional: bool):
            return {cm.KEY_STAGE: "interpolation", cm.KEY_NEIGHBOURS: neighbours(conditional),
                    cm.KEY_SKIP: torch.tensor([skip_frames], dtype=torch.int32),
                    cm.KEY_PERTURBATION: torch.tensor([0], dtype=torch.int32),
                    cm.KEY_TEMPORAL_MASK: torch.tensor([1.0 if conditional else 0.0])}

        out = {"samples": _intermediate(torch.zeros(1, GROUP_FRAMES * LATENT_CHANNELS, groups, h, w))}
        return io.NodeOutput(_cond(ctx, mask, **values(True)), _cond(uc, um, **values(False)), out)


class KandinskyVideoAssembleFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KandinskyVideoAssembleFrames", display_name="Kandinsky Video Assemble Frames", category=CORE,
            description=("Puts the sampled groups between the given frames: N frames + [1, 12, N-1, h, w] groups "
                         "-> a video latent [1, 4, 4N-3, h, w], keeping the keyframe count Decode reads."),
            inputs=[io.Latent.Input("frames", tooltip="The video that was interpolated (the Interpolation "
                                                      "Conditioning's latent input)."),
                    io.Latent.Input("groups", tooltip="The sampled groups (SamplerCustomAdvanced's output).")],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Video latent with 4N-3 frames.")])

    @classmethod
    def execute(cls, frames, groups):
        what = "Kandinsky Video Assemble Frames"
        video = sockets.latent_videos(frames, what)
        g = groups.get("samples") if isinstance(groups, dict) else None
        if len(video) != 1 or not isinstance(g, torch.Tensor) or g.ndim != 5 or g.shape[0] != 1:
            raise ValueError(f"{what}: expected one video in frames and the sampled groups [1, 12, N-1, h, w] of the "
                             "Interpolation Conditioning in groups")
        n, _, h, w = video[0].shape
        if tuple(g.shape[1:]) != (GROUP_FRAMES * LATENT_CHANNELS, n - 1, h, w):
            raise ValueError(f"{what}: the {n} frames [1, 4, {n}, {h}, {w}] need their groups "
                             f"[1, 12, {n - 1}, {h}, {w}], got {list(g.shape)}: connect to groups the sampler "
                             "output whose latent_image came from the Interpolation Conditioning of this very video "
                             "(frames = that node's latent input)")
        assembled = assemble_interpolated(video[0].cpu(), g[0].movedim(1, 0).float().cpu())
        # an Encode Video latent's frame rate (x4) and size record go on to Decode, as through Interpolate
        return io.NodeOutput(carry_video_record(frames, sockets.video_latent(assembled,
                                                                             sockets.recorded_keyframes(frames))))


class KandinskyVideoGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KandinskyVideoGuider", display_name="Kandinsky Video Guider", category=CORE,
            description=("The release's guidance for SamplerCustomAdvanced. Positive + negative: (w+1)*positive - "
                         "w*negative (first frame w 5, interpolation w 0.5; core CFG = w + 1). With image_only "
                         "(keyframes): (1-wi)*negative + (wi-wp)*image_only + wp*positive, wp = guidance_scale, "
                         "wi = image_guidance_scale. Then x0 is clamped to [-1, 1] after the whole combination, "
                         "as the release does."),
            inputs=[io.Model.Input("model", tooltip="From Kandinsky Video Keyframe / Interpolation Model (patched "
                                                    "or not)."),
                    io.Conditioning.Input("positive", tooltip="positive of a Kandinsky Video Conditioning node."),
                    io.Conditioning.Input("negative", tooltip="negative of the same Conditioning node."),
                    io.Float.Input("guidance_scale", default=5.0, min=-30.0, max=30.0, step=0.05,
                                   tooltip="w (first frame 5, interpolation 0.5) or wp (keyframes 5)."),
                    io.Float.Input("image_guidance_scale", default=2.0, min=-30.0, max=30.0, step=0.05,
                                   tooltip="wi (keyframes 2); unused without image_only."),
                    io.Boolean.Input("clamp_x0", default=True,
                                     tooltip="Clamp the guided x0 to [-1, 1] as the release does."),
                    io.Conditioning.Input("image_only", optional=True,
                                          tooltip="Keyframes (required there): the image_only output of the Keyframes "
                                                  "Conditioning. Leave it unconnected for the first frame and "
                                                  "interpolation.")],
            outputs=[io.Guider.Output()])

    @classmethod
    def execute(cls, model, positive, negative, guidance_scale, image_guidance_scale, clamp_x0, image_only=None):
        cm.check_guider_inputs(model, positive, negative, image_only, "Kandinsky Video Guider")
        guider = cm.KandinskyVideoGuider(model)
        guider.set_conds(positive, negative, image_only)
        guider.set_weights(guidance_scale, image_guidance_scale, clamp_x0)
        return io.NodeOutput(guider)


class KandinskyVideoSigmas(CheckedCombos, io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KandinskyVideoSigmas", display_name="Kandinsky Video Sigmas", category=CORE,
            description=("The release's schedule of a stage as SIGMAS: sqrt((1-abar)/abar) at its timesteps "
                         "(first frame and keyframes: 50 steps, leading spacing, which no core scheduler gives; "
                         "interpolation: 10 steps, trailing, which equals core 'simple'), ending in 0. t = 999 "
                         "(zero terminal SNR, an infinite sigma) is given as 4096."),
            inputs=[io.Combo.Input("stage", options=list(STAGES), default="keyframes",
                                   tooltip="The stage whose schedule to give (its network's timesteps)."),
                    io.Int.Input("steps", default=0, min=0, max=NUM_TRAIN_TIMESTEPS,
                                 tooltip="0 = the release's (50, 50, 10). Leading spacing starts below pure "
                                         "noise with few steps (4: t = 750, 93 % noise): use trailing below 8."),
                    io.Combo.Input("spacing", options=["default", "leading", "trailing", "linspace"],
                                   default="default",
                                   tooltip="default = the release's (first frame / keyframes leading, "
                                           "interpolation trailing).")],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, stage, steps, spacing):
        defaults = stage_defaults(stage)
        steps, spacing = steps or defaults.steps, defaults.spacing if spacing == "default" else spacing
        sigmas = release_sigmas(stage, steps, spacing)
        # a sampler starts from noise * sigmas[0]: its share of pure noise (VP) is s / sqrt(1 + s^2)
        start = float(sigmas[0]) / (1.0 + float(sigmas[0]) ** 2) ** 0.5
        if steps == 1 and spacing != "trailing":
            raise ValueError(f"Kandinsky Video Sigmas: 1 step with {spacing} spacing is timestep 0 alone (sigma "
                             f"{float(sigmas[0]):.3g}: nothing would be denoised); use spacing 'trailing' (it starts "
                             "at pure noise) or more steps")
        if start < 0.98:
            logging.warning("Kandinsky Video Sigmas: %d %s steps start at sigma %.3g, only %.0f %% of pure noise: the "
                            "sampler starts from a partly noised blank latent (the pack's stage nodes start from pure "
                            "noise there); use spacing 'trailing' or 8 steps or more", steps, spacing,
                            float(sigmas[0]), 100 * start)
        return io.NodeOutput(sigmas)


NODES = [KandinskyVideoKeyframeModel, KandinskyVideoInterpolationModel, KandinskyVideoFirstFrameConditioning,
         KandinskyVideoDecodeFirstFrame, KandinskyVideoKeyframesConditioning,
         KandinskyVideoInterpolationConditioning, KandinskyVideoAssembleFrames, KandinskyVideoGuider,
         KandinskyVideoSigmas]
