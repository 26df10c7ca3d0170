"""What travels between the Kandinsky Video nodes.

* the socket types of networks, conditioning and the first-frame condition, and the
  values the last two carry;
* video latents as core ``LATENT`` dictionaries ``{"samples": [B, 4, T, h, w]}``; the
  keyframe count rides along for the frame rate, and what a stage needs otherwise comes
  from the tensor or from the node's own inputs, so a saved and reloaded latent gives the
  same video.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..kv_core.conditioning import TextCondition
from ..kv_core.extend import PromptTimeline, long_video_frame_rate
from ..kv_core.rules import frame_rate, interpolation_passes

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
    then, as in the release)."""

    prompt: str
    negative_prompt: str
    condition: TextCondition

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


# --------------------------------------------------------------------------- LATENT format

KEYFRAMES_KEY = "kandinsky_video_keyframes"
SEGMENTS_KEY = "kandinsky_video_segments"  # a long video: keyframes each segment adds, [12, 11, 11]


def video_latent(videos, num_keyframes: Optional[int], segments: Optional[list] = None) -> dict:
    """Core LATENT dict from kv_core frames ``[T, 4, h, w]`` (one video, or a list of
    videos of one shape: a batch): ``samples`` ``[B, 4, T, h, w]`` (the layout of
    ComfyUI's video latents) on the intermediate device, plus the keyframe count the frame
    rate derives from when it is known (None: not recorded, e.g. an Interpolate of a
    loaded latent) and, for a long video, the keyframes each segment adds (their sum is
    the keyframe count; the first sets the rate, ``kv_core.extend`` rule 4)."""
    videos = [videos] if isinstance(videos, torch.Tensor) else list(videos)
    samples = torch.stack([v.detach().float().movedim(0, 1) for v in videos]).contiguous()
    out = {"samples": samples.to(mm.intermediate_device())}
    if num_keyframes is not None:
        out[KEYFRAMES_KEY] = int(num_keyframes)
        if segments is not None and len(segments) > 1:
            if sum(segments) != num_keyframes:
                raise ValueError(f"segments {segments} do not add up to {num_keyframes} keyframes")
            out[SEGMENTS_KEY] = [int(k) for k in segments]
    return out


def recorded_segments(latent: dict) -> Optional[list]:
    """The keyframes each segment of a long video adds, as Extend records them; None for
    a single video or a latent without the record (Load Latent)."""
    segments, keyframes = latent.get(SEGMENTS_KEY), recorded_keyframes(latent)
    ok = (isinstance(segments, list) and len(segments) > 1 and keyframes is not None
          and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in segments)
          and segments[0] >= 2 and sum(segments) == keyframes)
    return list(segments) if ok else None


def latent_videos(latent, what: str) -> list[torch.Tensor]:
    """The videos of a LATENT as kv_core frame tensors ``[T, 4, h, w]`` (float32)."""
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise ValueError(f"{what}: expected a LATENT from Kandinsky Video Keyframes / Interpolate "
                         "(or Load Latent of one)")
    s = latent["samples"]
    if s.ndim != 5 or s.shape[1] != 4:
        raise ValueError(f"{what}: expected a Kandinsky Video latent [batch, 4, frames, h, w], got "
                         f"shape {list(s.shape)}" + (" (an image latent, not a video)" if s.ndim == 4 else ""))
    return [v.movedim(0, 1).float() for v in s]


def recorded_keyframes(latent: dict) -> Optional[int]:
    """The keyframe count our nodes record in a LATENT; None when it is not there (core
    Save Latent keeps only ``samples``, so a loaded latent never has it)."""
    recorded = latent.get(KEYFRAMES_KEY)
    ok = isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 2
    return recorded if ok else None


def video_keyframes(latent: dict, num_frames: int, given: int, what: str) -> int:
    """The keyframe count a video was made from, for its frame rate: ``given`` (a node
    input, 0 = take it from the latent) or the latent's record, never guessed from the
    frame count (45 frames are 12 keyframes after one pass, or 45 keyframes). Refuses,
    saying what to set, when neither says it, when they disagree, or when the frame count
    is no video of that many keyframes."""
    recorded = recorded_keyframes(latent)
    if given and recorded is not None and given != recorded:
        raise ValueError(f"{what}: num_keyframes is {given} but this latent was made from {recorded} "
                         f"keyframes; set num_keyframes to 0 (the latent's count) or to {recorded}")
    keyframes = given or recorded
    if keyframes is None:
        raise ValueError(f"{what}: this latent does not say how many keyframes it was made from (Save Latent "
                         f"keeps only its {num_frames} frames) and the frame rate depends on it: set "
                         "num_keyframes on this node to the Keyframes node's num_keyframes (12 in the release); "
                         "for a long video (Extend), to its joined keyframe count, and segment_keyframes to its "
                         "first segment's")
    try:
        interpolation_passes(num_frames, keyframes)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    return keyframes


def video_frame_rate(latent: dict, num_frames: int, given: int, given_segment: int, what: str) -> float:
    """Frame rate of a video latent of ``num_frames`` frames: :func:`video_keyframes` for
    the keyframe count, and for a long video the rate of its first segment
    (``kv_core.extend.long_video_frame_rate``), whose keyframe count is ``given_segment``
    (a node input, 0 = as the latent records it; without a record the video is one
    segment). Refuses a ``given_segment`` that contradicts the record or exceeds the
    keyframe count."""
    keyframes = video_keyframes(latent, num_frames, given, what)
    segments = recorded_segments(latent)  # video_keyframes refused a given count that contradicts it
    first = segments[0] if segments else None
    if given_segment and first is not None and given_segment != first:
        raise ValueError(f"{what}: segment_keyframes is {given_segment} but this long video's first segment has "
                         f"{first} keyframes; set segment_keyframes to 0 (the latent's) or to {first}")
    first = given_segment or first or keyframes
    if first > keyframes:
        raise ValueError(f"{what}: segment_keyframes is {first} but the video has only {keyframes} keyframes "
                         "(segment_keyframes is the first segment's count, at most the whole video's)")
    if first == keyframes:
        return frame_rate(num_frames, keyframes)
    return long_video_frame_rate(num_frames, [first, keyframes - first])
