"""The pack's LATENT record: how a video travels between the Kandinsky Video nodes.

A video latent is a core ``LATENT`` dictionary ``{"samples": [B, 4, T, h, w]}`` (the
layout of ComfyUI's video latents), so Save Latent, Load Latent and core latent nodes take
it. What a stage needs otherwise comes from the tensor or from the node's own inputs, so a
saved and reloaded latent gives the same video; beside ``samples`` the nodes record

* ``kandinsky_video_keyframes``: the keyframe count a generated video was made from (its
  frame rate derives from it);
* ``kandinsky_video_segments``: for a long video (Extend), the keyframes each segment adds;
* ``kandinsky_video_fps`` and ``kandinsky_video_fit``: for an encoded video (Encode
  Video), its frame rate (x4 per Interpolate) and how to give its size back
  (``kv_core.video_input.VideoFit``).

Core Save Latent keeps only ``samples``: every reader here says what to set on the node
when a record is missing, and never guesses it.
"""
from __future__ import annotations

from typing import Optional

import torch

import comfy.model_management as mm

from ...kv_core.extend import long_video_frame_rate
from ...kv_core.rules import frame_rate, interpolation_passes
from ...kv_core.video_input import VideoFit, auto_skip_frames, interpolated_fps

KEYFRAMES_KEY = "kandinsky_video_keyframes"
SEGMENTS_KEY = "kandinsky_video_segments"  # a long video: keyframes each segment adds, [12, 11, 11]
FPS_KEY = "kandinsky_video_fps"   # frames per second of the latent's frames (an input video's, x4 per pass)
FIT_KEY = "kandinsky_video_fit"   # kv_core.video_input.VideoFit.to_dict(): how to give the input's size back
AUTO_SKIP = -1                    # Interpolate's skip_frames value for "from the frame rate"


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


def recorded_fps(latent: dict) -> Optional[float]:
    """The frame rate an Encode Video latent records (x4 per Interpolate); None otherwise."""
    value = latent.get(FPS_KEY)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def recorded_fit(latent: dict) -> Optional[VideoFit]:
    value = latent.get(FIT_KEY)
    return VideoFit.from_dict(value) if isinstance(value, dict) else None


def latent_fps(latent: dict, num_frames: int) -> Optional[float]:
    """The frame rate of a latent's frames: an input video's as recorded, or a generated
    video's from its recorded keyframe count; None when the latent says neither (Load Latent)."""
    fps = recorded_fps(latent)
    if fps is not None:
        return fps
    keyframes = recorded_keyframes(latent)
    if keyframes is None:
        return None
    try:
        return frame_rate(num_frames, keyframes)
    except ValueError:
        return None


def resolve_skip_frames(skip_frames: int, latent: dict, num_frames: int, what: str) -> int:
    """``skip_frames`` as given, or for ``AUTO_SKIP`` kv_core's rule applied to the latent's
    frame rate; refuses auto when the latent does not say its rate."""
    if skip_frames != AUTO_SKIP:
        return skip_frames
    fps = latent_fps(latent, num_frames)
    if fps is None:
        raise ValueError(f"{what}: skip_frames is auto (-1), but this latent does not say its frame rate (Save "
                         "Latent keeps only the frames): set skip_frames to 3 (frames about 0.5 s apart, the "
                         "release's first pass) or 1 (8 fps and faster, its second pass)")
    return auto_skip_frames(fps)


def carry_video_record(source: dict, out: dict, passes: int = 1) -> dict:
    """Copy an Encode Video latent's record from ``source`` to ``out``, the rate x4 per pass."""
    fps = recorded_fps(source)
    if fps is not None:
        out[FPS_KEY] = interpolated_fps(fps, passes)
    if isinstance(source.get(FIT_KEY), dict):
        out[FIT_KEY] = dict(source[FIT_KEY])
    return out


def encoded_video_latent(latents: torch.Tensor, fps: float, fit: VideoFit) -> dict:
    """The LATENT of an encoded video (Encode Video): frames ``[T, 4, h, w]``, the input's
    frame rate and its fit, no keyframe count (it was not made from keyframes)."""
    out = video_latent(latents, None)
    out[FPS_KEY], out[FIT_KEY] = float(fps), fit.to_dict()
    return out
