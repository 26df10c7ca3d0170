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

from ..kv_core.rules import interpolation_passes
from ..kv_core.stages import TextCondition

KeyframeUNet = io.Custom("KV_KEYFRAME_UNET")
InterpolationUNet = io.Custom("KV_INTERPOLATION_UNET")
MoVQ = io.Custom("KV_MOVQ")
VideoMoVQ = io.Custom("KV_VIDEO_MOVQ")
TextEncoder = io.Custom("KV_TEXT_ENCODER")
Conditioning = io.Custom("KV_CONDITIONING")
FirstFrame = io.Custom("KV_FIRST_FRAME")


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
class FirstFrameCondition:
    """What ``KV_FIRST_FRAME`` carries: the MoVQ latent ``[4, h, w]`` (float32) of the
    conditioning picture at the video size."""

    latent: torch.Tensor
    width: int
    height: int


# --------------------------------------------------------------------------- LATENT format

KEYFRAMES_KEY = "kandinsky_video_keyframes"


def video_latent(videos, num_keyframes: Optional[int]) -> dict:
    """Core LATENT dict from kv_core frames ``[T, 4, h, w]`` (one video, or a list of
    videos of one shape: a batch): ``samples`` ``[B, 4, T, h, w]`` (the layout of
    ComfyUI's video latents) on the intermediate device, plus the keyframe count the frame
    rate derives from when it is known (None: not recorded, e.g. an Interpolate of a
    loaded latent)."""
    videos = [videos] if isinstance(videos, torch.Tensor) else list(videos)
    samples = torch.stack([v.detach().float().movedim(0, 1) for v in videos]).contiguous()
    out = {"samples": samples.to(mm.intermediate_device())}
    if num_keyframes is not None:
        out[KEYFRAMES_KEY] = int(num_keyframes)
    return out


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
                         "num_keyframes on this node to the Keyframes node's num_keyframes (12 in the release)")
    try:
        interpolation_passes(num_frames, keyframes)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    return keyframes
