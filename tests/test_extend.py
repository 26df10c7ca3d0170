"""Long videos (kv_core.extend) on tiny random networks: what conditions the next segment
and how it reaches the keyframe U-Net, the seam frame kept once, counts and rates, the
per-group prompts of the interpolation, seeds, and bad inputs refused."""
import math

import pytest
import torch

from kv_core.conditioning import TextCondition
from kv_core.extend import (PromptTimeline, condition_latents, extend_keyframes, generate_segment, join_segments,
                            long_video_frame_rate)
from kv_core.rules import frame_rate
from kv_core.sampling.noise import RecordingNoise, SeededNoise, extend_stage
from kv_core.stages import stage_sampler
from kv_core.stages.decode import decode_frames
from kv_core.stages.first_frame import decode_first_frame, encode_first_frame
from kv_core.stages.interpolation import interpolate_frames
from kv_core.stages.keyframes import generate_keyframes
from test_pipeline import tiny_condition, tiny_pipeline

FAST = dict(sampler="ddim", steps=2)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def video(n, seed=0):
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def condition(seed, length, negative_length=None):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1] * (length - 1) + [0]])
    if negative_length is None:
        return TextCondition(torch.randn(1, length, 16, generator=g), mask)
    return TextCondition(torch.randn(1, length, 16, generator=g), mask,
                         torch.randn(1, negative_length, 16, generator=g),
                         torch.tensor([[1] * (negative_length - 1) + [0]]))


class Recorder(torch.nn.Module):
    """Runs a U-Net and keeps what each call got."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []
        self.config = net.config  # the size rule reads the network's config

    def forward(self, x, time, context, context_mask, **kw):
        self.calls.append(dict(x=x.clone(), context=context.clone(), mask=context_mask.clone(), **kw))
        return self.net(x, time, context, context_mask, **kw)


# --- the condition of the next segment ---------------------------------------------------------

@pytest.mark.parametrize("m", [1, 2])
def test_the_last_keyframes_reach_the_condition_channels(pipe, m):
    previous, cond, seed = video(4), tiny_condition(), 3
    unet = Recorder(pipe.unet)
    noise = RecordingNoise(SeededNoise.for_stage(seed, extend_stage(4)))
    segment = generate_segment(unet, pipe.null_embedding, cond, previous, num_keyframes=3, condition_frames=m,
                               noise=noise, **FAST)
    assert segment.shape == (3, 4, 8, 8)
    # draws: initial latent, then the uniform augmentation noise of the condition
    uniform = noise.draws[1].reshape(m, 4, 8, 8)
    expected = stage_sampler("keyframes", "ddim", 2).add_noise(previous[-m:], uniform, 20)
    for call in unet.calls:
        condition = call["x"][:, 4:].reshape(3, 3, 5, 8, 8)  # copies (text+image, image, none), frames
        torch.testing.assert_close(condition[:2, :m, :4], expected.expand(2, m, 4, 8, 8), rtol=0, atol=0)
        assert torch.all(condition[:2, :m, 4] == 1) and torch.all(condition[:2, m:] == 0)
        assert torch.all(condition[2] == 0)  # the unconditional copy sees no image


def test_reencode_is_the_image_movq_round_trip_of_the_last_frame(pipe):
    previous = video(3)
    latent = condition_latents(previous)
    assert torch.equal(latent, previous[-1])
    again = condition_latents(previous, source="reencode", movq=pipe.movq)
    picture = decode_first_frame(pipe.movq, previous[-1:])  # what Load Image of that frame would give
    assert picture.shape == (64, 64, 3) and picture.dtype == torch.uint8
    assert torch.equal(again, encode_first_frame(pipe.movq, picture, width=64, height=64, layout="HWC"))
    assert not torch.allclose(again, latent)


# --- the seam, counts, rates and seeds ----------------------------------------------------------

def test_seam_frame_kept_once_the_earlier_copy(pipe):
    previous, cond = video(3), tiny_condition()
    segment = generate_segment(pipe.unet, pipe.null_embedding, cond, previous, num_keyframes=4, noise=1, **FAST)
    joined = extend_keyframes(pipe.unet, pipe.null_embedding, cond, previous, num_keyframes=4, noise=1, **FAST)
    assert joined.shape == (3 + 4 - 1, 4, 8, 8)
    assert torch.equal(joined[:3], previous) and torch.equal(joined[3:], segment[1:])
    two = extend_keyframes(pipe.unet, pipe.null_embedding, cond, previous, num_keyframes=4, condition_frames=2,
                           noise=1, **FAST)
    assert two.shape == (3 + 4 - 2, 4, 8, 8) and torch.equal(two[:3], previous)


def test_a_segment_alone_with_its_seed_reproduces_it(pipe):
    """Three segments, each with its own prompt; the seed of a segment draws the stream of
    its place (the keyframe count it continues): segment 3 run alone from the same
    keyframes and seed gives the joined video's tail, as does generate_keyframes with that
    stream; one seed for every segment still gives each segment its own noise."""
    prompts = [condition(s, 4 + s) for s in range(3)]
    seed = 7
    first = generate_keyframes(pipe.unet, pipe.null_embedding, prompts[0], video(1)[0], num_keyframes=3,
                               noise=seed, **FAST)
    joined, draws = first, []
    for cond in prompts[1:]:
        rec = RecordingNoise(SeededNoise.for_stage(seed, extend_stage(joined.shape[0])))
        segment = generate_segment(pipe.unet, pipe.null_embedding, cond, joined, num_keyframes=3, noise=seed,
                                   motion="high", **FAST)
        generate_segment(pipe.unet, pipe.null_embedding, cond, joined, num_keyframes=3, noise=rec, motion="high",
                         **FAST)
        draws.append(rec.draws[0])
        joined = join_segments(joined, segment)
    assert joined.shape[0] == 3 + 2 + 2
    assert not torch.equal(draws[0], draws[1])  # one seed, two places: two streams
    alone = generate_segment(pipe.unet, pipe.null_embedding, prompts[2], joined[:5].clone(), num_keyframes=3,
                             noise=seed, motion="high", **FAST)
    assert torch.equal(joined[5:], alone[1:])
    stream = SeededNoise.for_stage(seed, extend_stage(5))
    plain = generate_keyframes(pipe.unet, pipe.null_embedding, prompts[2], joined[4], num_keyframes=3, noise=stream,
                               motion="high", **FAST)
    assert torch.equal(joined[5:], plain[1:])
    other = extend_keyframes(pipe.unet, pipe.null_embedding, prompts[2], joined[:5], num_keyframes=3, noise=10,
                             motion="high", **FAST)
    assert not torch.equal(other[5:], joined[5:])


def test_counts_and_rates_of_a_long_video():
    segments = [12, 11, 11]
    assert math.isclose(long_video_frame_rate(34, segments), 12 / 5.5)
    assert math.isclose(long_video_frame_rate(4 * 34 - 3, segments), 45 / 5.5)   # 133 frames at 8.18 fps
    assert math.isclose(long_video_frame_rate(16 * 34 - 15, segments), 177 / 5.5)
    assert math.isclose(long_video_frame_rate(45, [12]), frame_rate(45, 12))
    assert math.isclose(long_video_frame_rate(4 * 20 - 3, [8, 12]), frame_rate(29, 8))  # the first segment's
    # a single 34-keyframe video has another rate: the rate needs the segments
    assert not math.isclose(frame_rate(133, 34), 45 / 5.5)
    with pytest.raises(ValueError, match="100 frames are not a video of 34 keyframes"):
        long_video_frame_rate(100, segments)
    with pytest.raises(ValueError, match="the first segment has at least 2 keyframes"):
        long_video_frame_rate(10, [1, 9])
    with pytest.raises(ValueError, match="every later one adds at least 1"):
        long_video_frame_rate(12, [12, 0])


# --- prompts per group --------------------------------------------------------------------------

def test_groups_take_their_segments_prompt_the_seam_group_the_later_one():
    a, b, c = condition(1, 4), condition(2, 7, negative_length=5), condition(3, 3)
    timeline = PromptTimeline.start(a, 12).extended(b, 11).extended(c, 11).extended(None, 11)
    assert timeline.num_keyframes == 45 and timeline.keyframe_counts == [12, 11, 11, 11]
    assert timeline.latest is c  # a segment without a prompt continues the previous one's
    groups = timeline.group_segments(45)
    assert groups[:11] == [0] * 11 and groups[11:22] == [1] * 11 and groups[22] == 2
    # keyframes 10-11: segment 1's motion; 11 (the seam frame) - 12: segment 2's
    assert groups[10] == 0 and groups[11] == 1
    after_pass = timeline.group_segments(4 * 45 - 3)
    assert after_pass[4 * 11 - 1] == 0 and after_pass[4 * 11] == 1 and len(after_pass) == 4 * 44
    null = torch.randn(16)
    rows = timeline.condition(45, null)
    assert rows.context.shape == (44, 7, 16) and rows.negative_context.shape == (44, 7, 16)
    # group 11 (after the seam) gets prompt b and its negative; group 10 prompt a and the null text
    torch.testing.assert_close(rows.context[11], b.context[0], rtol=0, atol=0)
    assert torch.equal(rows.context_mask[11], b.context_mask[0])
    torch.testing.assert_close(rows.negative_context[11, :5], b.negative_context[0], rtol=0, atol=0)
    torch.testing.assert_close(rows.context[10, :4], a.context[0], rtol=0, atol=0)
    assert rows.context_mask[10].tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert torch.equal(rows.negative_context[10, 0], null) and rows.negative_mask[10].tolist() == [1, 0, 0, 0, 0, 0, 0]
    # padding: the row's mean, so the feature pooling's average is the prompt's own
    torch.testing.assert_close(rows.context[10].mean(0), a.context[0].mean(0))
    torch.testing.assert_close(rows.negative_context[10].mean(0), null / 4)
    for g in (23, 40):
        torch.testing.assert_close(rows.context[g, :3], c.context[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="covers 45 keyframes \\(12 \\+ 11 \\+ 11 \\+ 11\\) but the video has 46 "
                                         "frames, no count of 45 keyframes .* \\(45, 177, 705, ...\\)"):
        timeline.condition(46, null)


def test_mean_padding_leaves_the_interpolation_unet_as_with_the_prompt_alone(pipe):
    """Why the pad is the row's mean: with it, a padded context gives what the prompt alone
    gives; zeros do not (the feature pooling averages every position)."""
    net, cond = pipe.interpolation_unet, condition(4, 4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 20, 8, 8, generator=g)
    kw = dict(num_groups=2, perturbation_time=torch.zeros(2, dtype=torch.int32),
              skip_frames=torch.full((2,), 3, dtype=torch.int32))
    time = torch.full((2,), 500)
    ctx, mask = cond.context.expand(2, -1, -1), cond.context_mask.expand(2, -1)
    alone = net(x, time, ctx, mask, **kw)
    long = PromptTimeline.start(cond, 3).extended(condition(5, 9), 1).condition(4, torch.zeros(16))
    padded = long.context[:2]
    assert padded.shape[1] == 9
    torch.testing.assert_close(net(x, time, padded, long.context_mask[:2], **kw), alone, rtol=1e-5, atol=1e-5)
    zeros = torch.cat([ctx, torch.zeros(2, 5, 16)], 1)
    assert not torch.allclose(net(x, time, zeros, long.context_mask[:2], **kw), alone, rtol=1e-3, atol=1e-3)


def test_per_group_contexts_reach_the_interpolation_unet(pipe):
    a, b = condition(1, 4), condition(2, 6)
    timeline = PromptTimeline.start(a, 3).extended(b, 2)
    frames = video(5)
    unet = Recorder(pipe.interpolation_unet)
    out = interpolate_frames(unet, pipe.interpolation_null_embedding, timeline.condition(5, pipe.interpolation_null_embedding),
                             frames, noise=2, **FAST)
    assert out.shape == (17, 4, 8, 8)
    context = unet.calls[0]["context"]  # cond rows (4 groups), then uncond rows
    assert context.shape == (8, 6, 16)
    for group, prompt in [(0, a), (1, a), (2, b), (3, b)]:
        length = prompt.context.shape[1]
        torch.testing.assert_close(context[group, :length], prompt.context[0], rtol=0, atol=0)
    # one segment: the plain conditioning's result
    one = PromptTimeline.start(a, 5).condition(5, pipe.interpolation_null_embedding)
    torch.testing.assert_close(
        interpolate_frames(pipe.interpolation_unet, pipe.interpolation_null_embedding, one, frames, noise=2, **FAST),
        interpolate_frames(pipe.interpolation_unet, pipe.interpolation_null_embedding, a, frames, noise=2, **FAST),
        rtol=0, atol=0)


def test_windows_give_each_group_its_segments_prompt(pipe):
    """Interpolation in windows of groups (``window=``, for long videos): each window's
    U-Net call gets the rows of its own groups, so the per-segment prompts follow them."""
    a, b = condition(1, 4), condition(2, 6)
    timeline = PromptTimeline.start(a, 3).extended(b, 2)  # groups: a, a, b, b
    unet = Recorder(pipe.interpolation_unet)
    null = pipe.interpolation_null_embedding
    interpolate_frames(unet, null, timeline.condition(5, null), video(5), noise=2, window=2, **FAST)
    calls = unet.calls[:2]  # the two windows of the first step
    assert [c["context"].shape[0] for c in calls] == [4, 4]  # 2 groups, cond and uncond rows
    for call, prompt in zip(calls, (a, b)):
        length = prompt.context.shape[1]
        for row in (0, 1):
            torch.testing.assert_close(call["context"][row, :length], prompt.context[0], rtol=0, atol=0)


# --- the documented loop ------------------------------------------------------------------------

def test_the_readme_loop_makes_a_long_video(pipe):
    from kv_core.extend import PromptTimeline, extend_keyframes, long_video_frame_rate
    prompts = [condition(1, 4), condition(2, 6), None]  # the third continues the second's prompt
    seeds, counts = [1, 2, 3], [3, 3, 4]
    first = pipe(conditioning=prompts[0], width=64, height=64, num_keyframes=counts[0], fps="low", noise=seeds[0],
                 keyframes_sampler="ddim", keyframes_steps=2, first_frame_sampler="ddim", first_frame_steps=2,
                 return_intermediates=True)
    frames = first.intermediates["base_frames"]
    timeline = PromptTimeline.start(prompts[0], counts[0])
    for cond, seed, k in zip(prompts[1:], seeds[1:], counts[1:]):
        frames = extend_keyframes(pipe.unet, pipe.null_embedding, cond or timeline.latest, frames,
                                  num_keyframes=k, noise=seed, **FAST)
        timeline = timeline.extended(cond, k - 1)
    assert frames.shape[0] == timeline.num_keyframes == 3 + 2 + 3
    frames = interpolate_frames(pipe.interpolation_unet, pipe.interpolation_null_embedding,
                                timeline.condition(frames.shape[0], pipe.interpolation_null_embedding), frames,
                                noise=0, **FAST)
    video_frames = decode_frames(pipe.video_movq, frames)
    assert video_frames.shape == (4 * 8 - 3, 3, 64, 64)
    assert math.isclose(long_video_frame_rate(29, timeline.keyframe_counts), frame_rate(9, 3))


# --- bad inputs ---------------------------------------------------------------------------------

def test_bad_inputs_are_refused_with_the_rule(pipe):
    cond, null = tiny_condition(), pipe.null_embedding
    cases = [
        (lambda: generate_segment(pipe.unet, null, cond, video(1)), "has 1 keyframe\\(s\\): a video to continue has at least 2"),
        (lambda: generate_segment(pipe.unet, null, cond, video(3)[0]), "previous must be a tensor \\[N, 4, h, w\\]"),
        (lambda: generate_segment(pipe.unet, null, cond, video(3), num_keyframes=2, condition_frames=2),
         "num_keyframes must be more than condition_frames"),
        (lambda: generate_segment(pipe.unet, null, cond, video(3), condition_frames=0), "condition_frames must be an integer >= 1"),
        (lambda: generate_segment(pipe.unet, null, cond, video(3), condition_frames=4), "only 3 keyframes"),
        (lambda: generate_segment(pipe.unet, null, cond, video(3), condition_source="pixels"), "condition_source must be one of"),
        (lambda: generate_segment(pipe.unet, null, cond, video(3), condition_source="reencode"), "needs the image MoVQ"),
        (lambda: generate_segment(pipe.unet, null, cond, video(3), num_keyframes=1), "num_keyframes must be an integer >= 2"),
        (lambda: join_segments(video(3), torch.zeros(3, 4, 8, 16)), "segments of one video have one size"),
        (lambda: join_segments(video(3), video(2), 2), "adds no frame"),
        (lambda: generate_keyframes(pipe.unet, null, cond, video(3), num_keyframes=3),
         "or \\[m, 4, h, w\\] with 2 <= m < num_keyframes \\(3\\)"),
        (lambda: PromptTimeline.start(cond, 12).extended(tiny_condition(dim=24), 11), "different widths"),
        (lambda: PromptTimeline.start(cond, 1), "num_keyframes must be an integer >= 2"),
        (lambda: PromptTimeline([]), "needs at least one PromptSegment"),
        (lambda: extend_stage(1), "a video to continue has at least 2 keyframes"),
        (lambda: SeededNoise.for_stage(0, "extend_from_1"), "'extend_from_<N>' \\(N >= 2 keyframes\\)"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
