"""What travels between the Kandinsky Video nodes on the pack's own sockets: the socket
types of networks, conditioning and the first-frame condition, and the values the last two
carry. Video latents travel as core ``LATENT`` dictionaries (``nodes.host.latent``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from comfy_api.latest import io

from ...kv_core.extend import PromptTimeline
from ...kv_core.conditioning import TextCondition

KeyframeUNet = io.Custom("KV_KEYFRAME_UNET")
InterpolationUNet = io.Custom("KV_INTERPOLATION_UNET")
MoVQ = io.Custom("KV_MOVQ")
VideoMoVQ = io.Custom("KV_VIDEO_MOVQ")
TextEncoder = io.Custom("KV_TEXT_ENCODER")
Conditioning = io.Custom("KV_CONDITIONING")
FirstFrame = io.Custom("KV_FIRST_FRAME")
#: carries a ``kv_core.sampling.step_cache.StepCacheSettings`` (from Kandinsky Video Step Cache)
StepCache = io.Custom("KV_STEP_CACHE")


@dataclass(eq=False)
class TextConditioning:
    """What ``KV_CONDITIONING`` carries: the prompts and kv_core's ``TextCondition`` of
    them (``projection_base`` contexts ``[1, L, D]`` float32 on the intermediate device;
    no negative context when the negative prompt is blank: the null-text context is used
    then, as in the release). ``reports``: what the encoder read of each prompt
    (``{"prompt": PromptReport, ...}``) and ``identity``: the text parts that made it
    (``kv_core.text_identity.TextIdentity``), kept for Save Encoded Prompt."""

    prompt: str
    negative_prompt: str
    condition: TextCondition
    reports: dict = field(default_factory=dict, kw_only=True)
    identity: Optional[object] = field(default=None, kw_only=True)

    def text_condition(self) -> TextCondition:
        return self.condition


@dataclass(eq=False)
class ConditioningTimeline(TextConditioning):
    """``KV_CONDITIONING`` of a long video (from Kandinsky Video Extend): every segment's
    conditioning with the keyframes it adds (``kv_core.extend.PromptTimeline``). Where one
    prompt is needed (First Frame, Keyframes, Extend's ``conditioning``) it is the latest
    segment's (``prompt``, ``negative_prompt``, ``condition``); Interpolate gives each
    group its segment's prompt (:func:`interpolation_condition`)."""

    timeline: PromptTimeline


def prompt_timeline(conditioning: TextConditioning, num_keyframes: int, what: str) -> PromptTimeline:
    """The timeline of a video of ``num_keyframes`` keyframes: a long video's own, or one
    segment of one prompt. Refuses a timeline of another keyframe count."""
    if isinstance(conditioning, ConditioningTimeline):
        timeline = conditioning.timeline
        if timeline.num_keyframes != num_keyframes:
            raise ValueError(f"{what}: the conditioning is the prompt timeline of a long video of "
                             f"{timeline.num_keyframes} keyframes ({' + '.join(map(str, timeline.keyframe_counts))}) "
                             f"but the latent has {num_keyframes}: wire the conditioning output of the Extend node "
                             "whose latent this is")
        return timeline
    return PromptTimeline.start(conditioning.text_condition(), num_keyframes)


def interpolation_condition(conditioning: TextConditioning, num_frames: int, null_embedding: torch.Tensor,
                            what: str) -> TextCondition:
    """The interpolation U-Net's conditioning of a pass over ``num_frames`` frames: one
    prompt, or for a long video's timeline one row per group (``PromptTimeline.condition``)."""
    if not isinstance(conditioning, ConditioningTimeline):
        return conditioning.text_condition()
    try:
        return conditioning.timeline.condition(num_frames, null_embedding)
    except ValueError as e:
        raise ValueError(f"{what}: {e}: wire the conditioning output of the Extend node whose latent this "
                         "is") from None


@dataclass(eq=False)
class FirstFrameCondition:
    """What ``KV_FIRST_FRAME`` carries: the MoVQ latent ``[4, h, w]`` (float32) of the
    conditioning picture at the video size."""

    latent: torch.Tensor
    width: int
    height: int
