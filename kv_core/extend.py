"""Long videos: a video continued in segments, each with its own prompt, negative prompt,
motion, seed and keyframe count, then interpolated as one video.

The rules (the README's "Long videos" section says the same):

1. **Condition.** Segment k+1 is conditioned on the last keyframe latent of the video so
   far: its frame 0 gets that latent in the condition channels, as the release's frame 0
   gets the encoded first frame. ``condition_source="latent"`` (default) passes the latent
   itself; ``"reencode"`` decodes it with the image MoVQ to an 8-bit picture and encodes
   that again (what Load Image -> Encode First Frame of that frame would give; it needs
   ``movq``). The default is the latent because the keyframe U-Net makes its frames in
   the latent space of the image MoVQ encoder it is conditioned with (frame 0 of every
   release video reproduces the encoded picture), the noise augmentation (timestep 20)
   blurs the condition anyway, and a round trip through the lossy MoVQ and 8 bits only
   loses detail and costs a decode and an encode. The release's own text-to-video path
   makes that round trip only because its first frame is made at twice the size.
2. **Multi-frame condition** (``condition_frames`` m > 1, off by default): frames
   0 .. m-1 of the new segment carry the last m keyframes of the video so far, for motion
   continuity. The release conditions frame 0 only and was trained for that alone: m > 1
   is outside what it was trained for.
3. **Seam.** Frames 0 .. m-1 of segment k+1 reproduce its condition. They are dropped and
   segment k's frames kept, so the joined video is ``previous + segment[m:]`` and the
   video of segments 1..k is a prefix of the longer one, bit for bit. Joined keyframes:
   ``K1 + (K2 - m) + (K3 - m) + ...`` (12 + 11 + 11 = 34 for three 12-keyframe segments);
   after one pass ``4J - 3`` (133), after two ``16J - 15``.
4. **Frame rate** (:func:`long_video_frame_rate`): the rate of the first segment played
   alone after as many passes (a joined video of 12-keyframe segments plays at 12/5.5
   keyframes, 45/5.5 or 177/5.5 frames per second, the rates of one release video), so
   every segment moves at the speed it has alone. The rate cannot follow from the joined
   keyframe count (a single 34-keyframe video has another rate in ``rules.frame_rate``),
   so the segment counts are recorded (:class:`PromptTimeline`, the nodes' LATENT).
5. **Prompts in interpolation** (:meth:`PromptTimeline.condition`): the interpolation
   U-Net takes one context per group. Segment k owns the keyframes from the seam frame it
   was conditioned on (the last keyframe of segment k-1; frame 0 for the first) to its
   last keyframe; a group (the frames between two consecutive input frames) takes the
   prompt of the segment that owns both its frames. No group spans two segments' motion:
   the group just before a seam frame belongs to the earlier segment, the group just
   after it (between the seam frame and the next keyframe) to the later one, whose
   keyframe U-Net made that motion from that frame with its prompt. With m > 1 the seam
   frame is still the earlier segment's last keyframe. After a first pass the same rule
   holds on the keyframe positions (frame i of pass p lies at keyframe i / 4^p).
6. **A segment without a prompt** continues with the previous segment's conditioning
   (prompt and negative prompt).
7. **Contexts of different lengths** are padded to the longest with mask 0. The padded
   positions hold the mean of the row's own positions, not zeros: the U-Nets' feature
   pooling averages every position, masked or not (a reference quirk), and a mean-filled
   pad leaves that average, hence each group's result, as a run with its prompt alone
   gives (zeros would shrink the average). Masked positions are invisible to attention.
   A segment without a negative prompt gets the release's null-text context at its own
   prompt's length.
8. **Seeds.** A segment's seed draws the stream ``sampling.noise.extend_stage(N)``, keyed on the
   keyframe count N of the video it continues (as an interpolation pass keys on its input
   frame count): the same keyframes (also from a saved latent), settings and seed
   reproduce the segment, and one seed used for every segment still draws different noise
   for each (the ``keyframes`` stream of the first segment and ``extend_from_12``,
   ``extend_from_23`` ... after it). ``generate_keyframes`` from the condition with
   ``noise=SeededNoise.for_stage(seed, extend_stage(N))`` is the same segment.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .checks import is_int
from .conditioning import TextCondition, null_text, pad_length
from .rules import REFERENCE_KEYFRAMES, check_num_keyframes, frame_rate, interpolation_passes, movq_factor
from .sampling.noise import SeededNoise, check_seed, extend_stage
from .stages import NO_HOOKS, Hooks
from .stages.first_frame import decode_first_frame, encode_first_frame
from .stages.keyframes import generate_keyframes

CONDITION_SOURCES = ("latent", "reencode")

__all__ = ["CONDITION_SOURCES", "check_condition_frames", "condition_latents", "generate_segment",
           "join_segments", "extend_keyframes", "PromptSegment", "PromptTimeline", "long_video_frame_rate",
           "check_segments"]


def check_condition_frames(value) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"condition_frames must be an integer >= 1 (1 as the release: the last keyframe "
                         f"conditions frame 0), got {value!r}")
    return int(value)


def _check_video(frames, what: str) -> None:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4:
        raise ValueError(f"{what} must be a tensor [N, 4, h, w] of keyframe latents")
    if frames.shape[0] < 2:
        raise ValueError(f"{what} has {frames.shape[0]} keyframe(s): a video to continue has at least 2")


def condition_latents(previous: torch.Tensor, condition_frames: int = 1, *, source: str = "latent", movq=None,
                      hooks: Hooks = NO_HOOKS) -> torch.Tensor:
    """The condition of the next segment: the last ``condition_frames`` (m) keyframes of
    ``previous`` ``[N, 4, h, w]``, as ``[4, h, w]`` for m = 1 (what
    ``generate_keyframes`` takes for frame 0) or ``[m, 4, h, w]``, float32.

    ``source``: ``"latent"`` (the latents themselves) or ``"reencode"`` (each decoded by
    the image MoVQ ``movq`` to uint8 and encoded again, as ``decode_first_frame`` +
    ``encode_first_frame``). Raises ``ValueError`` for fewer than 2 keyframes, m > N, an
    unknown source or ``reencode`` without a MoVQ."""
    _check_video(previous, "previous")
    m = check_condition_frames(condition_frames)
    if m > previous.shape[0]:
        raise ValueError(f"condition_frames is {m} but the video to continue has only {previous.shape[0]} keyframes")
    if source not in CONDITION_SOURCES:
        raise ValueError(f"condition_source must be one of {CONDITION_SOURCES}, got {source!r}")
    last = previous[-m:].float()
    if source == "reencode":
        if movq is None:
            raise ValueError("condition_source 'reencode' needs the image MoVQ (movq=...)")
        f = movq_factor(movq)
        h, w = last.shape[-2:]
        last = torch.stack([
            encode_first_frame(movq, decode_first_frame(movq, z[None], hooks=hooks),
                               width=f * w, height=f * h, layout="HWC", hooks=hooks).cpu()
            for z in last])
    return last[0] if m == 1 else last


def generate_segment(
    unet, null_embedding: torch.Tensor, cond: TextCondition, previous: torch.Tensor, *,
    num_keyframes: int = REFERENCE_KEYFRAMES, condition_frames: int = 1, condition_source: str = "latent",
    movq=None, movq_dtype: Optional[torch.dtype] = None, motion="medium", noise_augmentation: int = 20,
    guidance_weight_prompt: float = 5.0, guidance_weight_image: float = 2.0, sampler: str = "ddpm", steps: Optional[int] = None, noise=None,
    hooks: Hooks = NO_HOOKS, step_cache=None,
) -> torch.Tensor:
    """The next segment, whole: ``[num_keyframes, 4, h, w]``, its frames 0 .. m-1
    conditioned on the last m keyframes of ``previous`` ``[N, 4, h, w]``
    (:func:`condition_latents`); everything else as ``stages.generate_keyframes``, which
    it calls. ``noise``: a seed (the stream ``extend_stage(N)``, rule 8) or a noise
    source. Join it with :func:`join_segments`.
    ``movq_dtype``: the dtype the image MoVQ computes in for ``"reencode"`` (``hooks.dtype`` is
    the U-Net's). ``step_cache``: as ``generate_keyframes`` (each segment is a loop of its
    own, so its cache starts empty: its first step is a full forward). ``ValueError``
    (before any network runs) for bad inputs, e.g. num_keyframes <= m."""
    _check_video(previous, "previous")
    num_keyframes = check_num_keyframes(num_keyframes)
    m = check_condition_frames(condition_frames)
    if m >= num_keyframes:
        raise ValueError(f"a segment of {num_keyframes} keyframes conditioned on {m} frames adds nothing: "
                         f"num_keyframes must be more than condition_frames")
    if noise is None or is_int(noise):  # a seed: the stream of this place in the video (rule 8)
        noise = SeededNoise.for_stage(check_seed(int(noise or 0)), extend_stage(int(previous.shape[0])))
    key = condition_latents(previous, m, source=condition_source, movq=movq,
                            hooks=Hooks(device=hooks.device, dtype=movq_dtype))
    return generate_keyframes(unet, null_embedding, cond, key, num_keyframes=num_keyframes, motion=motion,
                              noise_augmentation=noise_augmentation, guidance_weight_prompt=guidance_weight_prompt,
                              guidance_weight_image=guidance_weight_image, sampler=sampler, steps=steps, noise=noise,
                              hooks=hooks, step_cache=step_cache)


def join_segments(previous: torch.Tensor, segment: torch.Tensor, condition_frames: int = 1) -> torch.Tensor:
    """``previous`` ``[N, 4, h, w]`` followed by ``segment[m:]`` (its frames that reproduce
    the condition dropped, the earlier copies kept): ``[N + K - m, 4, h, w]``, float32 on
    ``previous``'s device. ``ValueError`` for shapes that do not fit."""
    _check_video(previous, "previous")
    _check_video(segment, "segment")
    m = check_condition_frames(condition_frames)
    if tuple(previous.shape[1:]) != tuple(segment.shape[1:]):
        raise ValueError(f"the segment's frames are {tuple(segment.shape[1:])} but the video's are "
                         f"{tuple(previous.shape[1:])} (channels, latent height, width): segments of one video "
                         "have one size")
    if m >= segment.shape[0]:
        raise ValueError(f"a segment of {segment.shape[0]} keyframes with {m} condition frames adds no frame")
    return torch.cat([previous.float(), segment[m:].to(previous.device, torch.float32)])


def extend_keyframes(unet, null_embedding: torch.Tensor, cond: TextCondition, previous: torch.Tensor, *,
                     condition_frames: int = 1, **settings) -> torch.Tensor:
    """:func:`generate_segment` then :func:`join_segments`: the joined keyframes
    ``[N + K - m, 4, h, w]``. ``settings``: those of :func:`generate_segment`."""
    segment = generate_segment(unet, null_embedding, cond, previous, condition_frames=condition_frames, **settings)
    return join_segments(previous, segment, condition_frames)


# --------------------------------------------------------------------------- counts and rates

def check_segments(segments: Sequence[int]) -> list[int]:
    """The keyframes each segment adds to a joined video, in order: the first >= 2 (all
    its keyframes), the others >= 1 (K - m). ``ValueError`` otherwise."""
    segments = list(segments) if isinstance(segments, (list, tuple)) else segments
    if not isinstance(segments, list) or not segments or not all(is_int(k) for k in segments):
        raise ValueError(f"segments must be a non-empty list of keyframe counts, got {segments!r}")
    if segments[0] < 2 or any(k < 1 for k in segments[1:]):
        raise ValueError(f"segments {segments}: the first segment has at least 2 keyframes and every later one "
                         "adds at least 1")
    return [int(k) for k in segments]


def long_video_frame_rate(num_frames: int, segments: Sequence[int]) -> float:
    """Frames per second of a joined video of ``num_frames`` frames whose segments added
    ``segments`` keyframes (``[12, 11, 11]``): the rate of the first segment alone after
    the same number of interpolation passes (rule 4). One segment gives
    ``rules.frame_rate``. ``ValueError`` when ``num_frames`` is no count of ``sum(segments)``
    keyframes after 0, 1, 2, ... passes."""
    segments = check_segments(segments)
    passes = interpolation_passes(num_frames, sum(segments))
    first = segments[0]
    for _ in range(passes):
        first = 4 * first - 3
    return frame_rate(first, segments[0])


# --------------------------------------------------------------------------- prompt timeline

@dataclass(frozen=True)
class PromptSegment:
    """One segment of a :class:`PromptTimeline`: the keyframes it adds to the joined video
    and its conditioning."""

    keyframes: int
    condition: TextCondition


def _pad_mean(context: torch.Tensor, mask: torch.Tensor, length: int):
    """``[B, L, D]`` / ``[B, L]`` -> length ``length``: new positions hold each row's mean
    over its L positions, mask 0 (rule 7)."""
    extra = length - context.shape[1]
    if extra == 0:
        return context, mask
    fill = context.mean(dim=1, keepdim=True).expand(-1, extra, -1)
    return torch.cat([context, fill], 1), torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], 1)


class PromptTimeline:
    """The conditioning of each segment of a long video, with the keyframes it adds.

    ``PromptTimeline.start(cond, K1)`` then ``.extended(cond or None, K - m)`` per segment
    (None: the previous segment's conditioning, rule 6). :meth:`condition` gives the
    interpolation U-Net's per-group ``TextCondition`` for a pass over the joined video."""

    def __init__(self, segments: Sequence[PromptSegment]):
        segments = tuple(segments)
        if not segments or not all(isinstance(s, PromptSegment) and isinstance(s.condition, TextCondition)
                                   for s in segments):
            raise ValueError("a PromptTimeline needs at least one PromptSegment(keyframes, TextCondition)")
        check_segments([s.keyframes for s in segments])
        for s in segments:
            if s.condition.context.shape[0] != 1:
                raise ValueError("each segment's conditioning is one prompt (context batch 1)")
        widths = {int(s.condition.context.shape[-1]) for s in segments}
        if len(widths) > 1:
            raise ValueError(f"the segments' contexts have different widths {sorted(widths)}: one text encoder "
                             "makes every prompt of a video")
        self.segments = segments

    @classmethod
    def start(cls, cond: TextCondition, keyframes: int) -> "PromptTimeline":
        return cls([PromptSegment(check_num_keyframes(keyframes), cond)])

    def extended(self, cond: Optional[TextCondition], keyframes: int) -> "PromptTimeline":
        """A new timeline with one more segment adding ``keyframes`` (K - m) keyframes;
        ``cond`` None continues the last segment's conditioning."""
        return PromptTimeline([*self.segments, PromptSegment(keyframes, cond or self.latest)])

    @property
    def latest(self) -> TextCondition:
        return self.segments[-1].condition

    @property
    def keyframe_counts(self) -> list[int]:
        return [s.keyframes for s in self.segments]

    @property
    def num_keyframes(self) -> int:
        return sum(self.keyframe_counts)

    def group_segments(self, num_frames: int) -> list[int]:
        """Segment index of each of the ``num_frames - 1`` groups of an interpolation pass
        over ``num_frames`` frames of this video (rule 5). ``ValueError`` when the frame
        count is no count of this video (``4^p (J - 1) + 1`` frames)."""
        j = self.num_keyframes
        try:
            passes = interpolation_passes(num_frames, j)
        except ValueError:
            raise ValueError(f"the prompt timeline covers {j} keyframes ({' + '.join(map(str, self.keyframe_counts))}) "
                             f"but the video has {num_frames} frames, no count of {j} keyframes after 0, 1, 2, ... "
                             f"interpolation passes ({j}, {4 * j - 3}, {16 * j - 15}, ...)") from None
        scale = 4 ** passes
        ends, total = [], 0
        for s in self.segments:
            total += s.keyframes
            ends.append((total - 1) * scale)  # input-frame index of the segment's last keyframe
        out, k = [], 0
        for g in range(num_frames - 1):
            while g + 1 > ends[k]:
                k += 1
            out.append(k)
        return out

    def condition(self, num_frames: int, null_embedding: torch.Tensor) -> TextCondition:
        """``TextCondition`` with one row per group (``[G, L, D]``, G = num_frames - 1)
        for ``interpolate_frames``/``sample_interpolation`` over ``num_frames`` frames of
        this video: each group's segment's prompt (rule 5), and as negative the segment's
        negative prompt or the null-text context made from ``null_embedding`` (the
        interpolation U-Net's), every row padded to one length (rule 7)."""
        index = self.group_segments(num_frames)
        rows = []
        for s in self.segments:
            c = s.condition
            ctx, mask = c.context.float().cpu(), c.context_mask.cpu().to(torch.int64)
            if c.negative_context is None:
                neg, neg_mask = null_text(ctx, mask, null_embedding.float().cpu())
            else:  # first as a run of this prompt alone pads them (conditioning.guidance_contexts)
                neg, neg_mask = c.negative_context.float().cpu(), c.negative_mask.cpu().to(torch.int64)
                pair = max(ctx.shape[1], neg.shape[1])
                ctx, mask = pad_length(ctx, mask, pair)
                neg, neg_mask = pad_length(neg, neg_mask, pair)
            rows.append((ctx, mask, neg, neg_mask))
        length = max(max(r[0].shape[1], r[2].shape[1]) for r in rows)
        padded = []
        for ctx, mask, neg, neg_mask in rows:
            padded.append((*_pad_mean(ctx, mask, length), *_pad_mean(neg, neg_mask, length)))
        pick = torch.tensor(index)
        parts = [torch.cat([p[i] for p in padded])[pick] for i in range(4)]
        return TextCondition(*parts)
