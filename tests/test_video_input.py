"""Interpolation of any video in kv_core (kv_core.video_input, kv_core.windows) with the tiny
random-weight networks: sizes and their restoration, the skip_frames rule, windowed against
one-batch interpolation, determinism, and that the given frames keep their places."""
from __future__ import annotations

import math

import pytest
import torch

from kv_core.conditioning import TextCondition, null_condition
from kv_core.rules import frame_rate, size_rule
from kv_core.sampling.noise import RecordingNoise, SeededNoise, interpolation_stage, stage_seed
from kv_core.stages.interpolation import interpolate_frames
from kv_core.stages.windows import WindowedInterpolationUNet, window_layout
from kv_core.video_input import (FIT_MODES, VideoFit, apply_fit, auto_skip_frames, encode_video, interpolate_video,
                                 plan_fit, restore_frames)
from kv_core.stages import Hooks
from test_pipeline import tiny_condition, tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def frames(n, h, w, c=3, seed=0):
    return torch.rand(n, h, w, c, generator=torch.Generator().manual_seed(seed))


# --- sizes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", FIT_MODES)
@pytest.mark.parametrize("size", [(70, 50), (33, 97), (64, 64), (65, 31)])
def test_fit_gives_network_sizes_and_restores_the_input(mode, size):
    width, height = size
    if mode == "crop" and min(size) < 32:
        with pytest.raises(ValueError, match="fit 'crop' cannot fit .* use fit 'pad' or 'scale'"):
            plan_fit(width, height, 32, mode)
        return
    fit = plan_fit(width, height, 32, mode)
    assert fit.net_width % 32 == 0 and fit.net_height % 32 == 0
    x = frames(2, height, width).movedim(-1, 1)
    net = apply_fit(x, fit)
    assert net.shape[-2:] == (fit.net_height, fit.net_width)
    back = restore_frames(net, fit)
    if mode == "crop":  # the output is the kept part, and it says it was cropped
        assert fit.output_size == (width // 32 * 32, height // 32 * 32)
        assert back.shape[-2:] == (height // 32 * 32, width // 32 * 32)
        assert torch.equal(back, x[..., fit.top:fit.top + fit.net_height, fit.left:fit.left + fit.net_width])
        assert "CROPPED" in fit.describe() or (width, height) == (fit.net_width, fit.net_height)
        return
    assert back.shape[-2:] == (height, width) and fit.output_size == (width, height)
    if mode == "pad":  # padding is cropped off again: the input's pixels, untouched
        assert torch.equal(back, x)
    elif (width, height) == (fit.net_width, fit.net_height):
        assert torch.equal(back, x)


def test_pad_is_centred_and_scale_rounds_to_the_nearest_multiple():
    fit = plan_fit(70, 50, 32, "pad")
    assert (fit.net_width, fit.net_height, fit.left, fit.top) == (96, 64, 13, 7)
    assert (plan_fit(70, 50, 32, "scale").net_width, plan_fit(70, 50, 32, "scale").net_height) == (64, 64)
    assert (plan_fit(10, 10, 64, "scale").net_width, plan_fit(10, 10, 64, "scale").net_height) == (64, 64)
    assert plan_fit(70, 50, size_rule(movq=None), "pad").net_width == 70  # no network: anything runs


def test_max_side_scales_down_and_back():
    fit = plan_fit(1000, 500, 64, "pad", max_side=256)
    assert (fit.work_width, fit.work_height) == (256, 128) and (fit.net_width, fit.net_height) == (256, 128)
    assert fit.output_size == (1000, 500) and "max_side" in fit.describe()
    x = frames(1, 500, 1000).movedim(-1, 1)
    assert restore_frames(apply_fit(x, fit), fit).shape[-2:] == (500, 1000)
    crop = plan_fit(1000, 500, 64, "crop", max_side=300)  # 300x150 -> 256x128, at the input's scale
    assert (crop.net_width, crop.net_height) == (256, 128) and crop.output_size == (853, 427)
    assert plan_fit(100, 50, 32, "pad", max_side=200).scaled is False  # never scales up
    with pytest.raises(ValueError, match="max_side must be 0"):
        plan_fit(100, 50, 32, "pad", max_side=-1)
    for mode in FIT_MODES:  # a side shrunk below one multiple would be mostly padding (pad) or resampled up
        with pytest.raises(ValueError, match="max_side 8 is below the smallest size the networks take .64 pixels.*"
                                             "at least 64"):
            plan_fit(1000, 500, 64, mode, max_side=8)
    assert plan_fit(1000, 500, 64, "pad", max_side=64).net_width == 64
    with pytest.raises(ValueError, match="fit must be one of"):
        plan_fit(100, 50, 32, "stretch")


def test_fit_record_round_trips_and_refuses_garbage():
    fit = plan_fit(70, 50, 32, "pad", max_side=60)
    assert VideoFit.from_dict(fit.to_dict()) == fit
    with pytest.raises(ValueError, match="not a video fit record"):
        VideoFit.from_dict({"mode": "pad"})
    with pytest.raises(ValueError, match="does not belong to this fit"):
        restore_frames(torch.zeros(1, 3, 32, 32), fit)


# --- encoding ------------------------------------------------------------------------------

def test_encode_in_chunks_gives_the_one_batch_latents(pipe):
    x = frames(5, 40, 56)
    fit = plan_fit(56, 40, size_rule(movq=pipe.movq, interpolation_unet=pipe.interpolation_unet), "pad")
    one, clipped = encode_video(pipe.movq, x, fit, chunk_size=5)
    two, _ = encode_video(pipe.movq, x, fit, chunk_size=2)
    assert one.shape == (5, 4, fit.net_height // 8, fit.net_width // 8) and clipped == 0
    torch.testing.assert_close(one, two, rtol=0, atol=1e-5)
    seen = []
    encode_video(pipe.movq, x, fit, chunk_size=2, hooks=Hooks(progress=lambda d, t: seen.append((d, t))))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_alpha_is_shown_over_white_and_grey_is_rgb(pipe):
    fit = plan_fit(32, 32, 32)
    white = torch.ones(2, 32, 32, 3)
    clear = torch.cat([frames(2, 32, 32), torch.zeros(2, 32, 32, 1)], -1)  # RGBA, fully transparent
    want, _ = encode_video(pipe.movq, white, fit)
    assert torch.equal(encode_video(pipe.movq, clear, fit)[0], want)
    assert torch.equal(encode_video(pipe.movq, frames(2, 32, 32), fit, alpha=torch.zeros(1, 32, 32))[0], want)
    grey = frames(2, 32, 32, c=1)
    assert torch.equal(encode_video(pipe.movq, grey, fit)[0], encode_video(pipe.movq, grey.expand(-1, -1, -1, 3), fit)[0])


def test_encode_refuses_what_is_no_video_and_counts_clipping(pipe):
    fit = plan_fit(32, 32, 32)
    with pytest.raises(ValueError, match="at least 2 frames"):
        encode_video(pipe.movq, frames(1, 32, 32), fit)
    with pytest.raises(ValueError, match="float IMAGE batch"):
        encode_video(pipe.movq, torch.zeros(2, 32, 32, 5), fit)
    bad = frames(2, 32, 32)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="frames 0..1 hold NaN"):
        encode_video(pipe.movq, bad, fit)
    with pytest.raises(ValueError, match="alpha must be"):
        encode_video(pipe.movq, frames(2, 32, 32), fit, alpha=torch.ones(2, 16, 16))
    over = frames(2, 32, 32) * 1.5
    assert encode_video(pipe.movq, over, fit)[1] == int((over > 1).sum()) > 0


# --- skip_frames ----------------------------------------------------------------------------

def test_auto_skip_frames_gives_the_release_values_at_its_rates():
    assert auto_skip_frames(frame_rate(12, 12)) == 3   # keyframes, 2.18 fps: the first pass
    assert auto_skip_frames(frame_rate(45, 12)) == 1   # 8.18 fps: the second pass
    threshold = math.sqrt(frame_rate(12, 12) * frame_rate(45, 12))  # 4.22 fps
    assert auto_skip_frames(threshold * 0.999) == 3 and auto_skip_frames(threshold * 1.001) == 1
    assert [auto_skip_frames(f) for f in (0.5, 2, 4, 6, 8, 24, 29.97, 60, 240)] == [3, 3, 3, 1, 1, 1, 1, 1, 1]
    for bad in (0, -1, float("nan"), float("inf"), "24", True):
        with pytest.raises(ValueError, match="fps must be a positive finite number"):
            auto_skip_frames(bad)


# --- windows -------------------------------------------------------------------------------

@pytest.mark.parametrize("groups,window,overlap", [(32, 8, 2), (32, 16, 4), (33, 16, 0), (5, 4, 3), (100, 16, 4),
                                                   (7, 16, 4), (17, 16, 15)])
def test_window_layout_keeps_every_group_once_from_full_windows(groups, window, overlap):
    layout = window_layout(groups, window, overlap)
    kept = [g for w in layout for g in range(w.keep_start, w.keep_end)]
    assert kept == list(range(groups))
    assert all(w.end - w.start == min(window, groups) for w in layout)
    assert all(w.start <= w.keep_start < w.keep_end <= w.end for w in layout)
    for a, b in zip(layout, layout[1:]):  # a kept group sits at least overlap // 2 inside its window
        assert a.keep_end - b.start >= 0 and b.start <= a.end
        assert a.end - a.keep_end >= min(overlap, a.end - b.start) // 2


def test_window_layout_refuses_bad_settings():
    for window, overlap in ((0, 0), (8, 8), (8, -1), (True, 0), (8, 2.5)):
        with pytest.raises(ValueError, match="window must be|overlap must be"):
            window_layout(20, window, overlap)


def _interp(pipe, latents, cond=None, **kw):
    cond = tiny_condition() if cond is None else cond
    return interpolate_frames(pipe.interpolation_unet, pipe.interpolation_null_embedding, cond, latents,
                              skip_frames=1, steps=3, noise=kw.pop("noise", 5), **kw)


@pytest.fixture(scope="module")
def clip():
    return torch.randn(33, 4, 8, 8, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def one_batch(pipe, clip):
    return _interp(pipe, clip)


def relative_rms(a, b):
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


def test_windowed_interpolation_stays_close_to_one_batch(pipe, clip, one_batch):
    """32 groups in windows of 16 that overlap by 4 (the default) against one batch: the
    measured relative RMS difference is 0.4 % on the tiny networks (0 overlap: 11 %)."""
    windowed = _interp(pipe, clip, window=16)
    assert relative_rms(windowed, one_batch) < 0.01
    no_overlap = _interp(pipe, clip, window=16, overlap=0)
    assert relative_rms(no_overlap, one_batch) > 5 * relative_rms(windowed, one_batch)
    assert torch.equal(_interp(pipe, clip, window=32), one_batch)  # one window is the one-batch run
    assert torch.equal(_interp(pipe, clip, window=16), windowed)  # deterministic by seed
    assert not torch.equal(_interp(pipe, clip, window=16, noise=6), windowed)


def test_windowed_interpolation_draws_the_one_batch_noise(pipe, clip):
    """Each group gets the same noise whatever the windows: the draws are the one-batch run's."""
    def draws(**kw):
        rec = RecordingNoise(SeededNoise(stage_seed(5, interpolation_stage(33))))
        _interp(pipe, clip, noise=rec, **kw)
        return rec.draws
    one = draws()
    for window, overlap in ((16, 4), (8, 0), (5, 3)):
        got = draws(window=window, overlap=overlap)
        assert len(got) == len(one) and all(torch.equal(a, b) for a, b in zip(got, one))


def test_given_frames_keep_their_places(pipe, clip, one_batch):
    for out in (one_batch, _interp(pipe, clip, window=8, overlap=2)):
        assert out.shape[0] == 4 * 33 - 3
        assert torch.equal(out[::4], clip)  # frame 4i is input frame i


class RowEcho(torch.nn.Module):
    """A stand-in U-Net whose output row r is context[r, 0, 0] + time[r] (no mixing of groups),
    recording the groups of each call."""

    def __init__(self):
        super().__init__()
        self.groups = []
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, time, context, context_mask, *, num_groups, **rows):
        self.groups.append(num_groups)
        for key in ("skip_frames", "temporal_mask", "perturbation_time"):
            assert rows[key].shape[0] == x.shape[0]
        value = context[:, 0, 0] + time.float() + rows["temporal_mask"]
        return value[:, None, None, None].expand(x.shape[0], 12, *x.shape[-2:]).clone()


def test_per_group_contexts_follow_their_groups_through_the_windows():
    groups = 20
    cond = TextCondition(torch.arange(groups, dtype=torch.float32)[:, None, None].expand(groups, 3, 16).clone(),
                         torch.ones(groups, 3, dtype=torch.bool))
    x = torch.randn(2 * groups, 20, 4, 4)
    time = torch.arange(2 * groups)
    ctx = torch.cat([cond.context, cond.context])
    mask = torch.cat([cond.context_mask, cond.context_mask])
    rows = dict(perturbation_time=torch.zeros(2 * groups), skip_frames=torch.ones(2 * groups, dtype=torch.int32),
                temporal_mask=torch.cat([torch.ones(groups), torch.zeros(groups)]))
    net = RowEcho()
    want = net(x, time, ctx, mask, num_groups=groups, **rows)
    windowed = WindowedInterpolationUNet(net, 6, 2)
    assert torch.equal(windowed(x, time, ctx, mask, num_groups=groups, **rows), want)
    assert windowed.calls == [6] * len(window_layout(groups, 6, 2))


def test_cancel_between_windows():
    from kv_core.sampling.loop import Interrupted

    net = WindowedInterpolationUNet(RowEcho(), 4, 0, cancel=lambda: True)
    with pytest.raises(Interrupted):
        net(torch.zeros(16, 20, 2, 2), torch.zeros(16), torch.zeros(16, 1, 16), None, num_groups=8,
            perturbation_time=torch.zeros(16), skip_frames=torch.zeros(16), temporal_mask=torch.ones(16))


# --- the whole run -------------------------------------------------------------------------

def test_interpolate_video_counts_rates_sizes_and_positions(pipe):
    x = frames(4, 37, 50)
    run = dict(steps=2, noise=7)
    out = interpolate_video(pipe.interpolation_unet, pipe.interpolation_null_embedding, pipe.movq, pipe.video_movq,
                            x, 29.97, **run)
    assert out.frames.shape == (13, 37, 50, 3) and out.fps == 29.97 * 4
    assert out.frames.min() >= 0 and out.frames.max() <= 1
    rule = size_rule(movq=pipe.movq, interpolation_unet=pipe.interpolation_unet)
    encoded, _ = encode_video(pipe.movq, x, plan_fit(50, 37, rule))
    assert torch.equal(out.latents[::4], encoded)  # the given frames keep their places in latent space
    again = interpolate_video(pipe.interpolation_unet, pipe.interpolation_null_embedding, pipe.movq,
                              pipe.video_movq, x, 29.97, **run)
    assert torch.equal(again.frames, out.frames)
    two = interpolate_video(pipe.interpolation_unet, pipe.interpolation_null_embedding, pipe.movq, pipe.video_movq,
                            x[:3], 2.0, passes=2, fit="crop", window=4, **run)
    assert two.frames.shape == (16 * 3 - 15, 32, 32, 3) and two.fps == 32.0
    assert torch.equal(two.latents[::16], encode_video(pipe.movq, x[:3], plan_fit(50, 37, rule, "crop"))[0])


def test_no_prompt_is_the_null_text_context(pipe, clip):
    null = null_condition(pipe.interpolation_null_embedding)
    assert null.context.shape == (1, 1, 16) and torch.equal(null.context[0, 0], pipe.interpolation_null_embedding)
    a = _interp(pipe, clip[:5], cond=null)
    assert torch.equal(a, _interp(pipe, clip[:5], cond=null)) and not torch.equal(a, _interp(pipe, clip[:5]))
    # the same null context, at the text encoder's length: guidance then has no text direction either way
    long = TextCondition(torch.zeros(1, 4, 16), torch.tensor([[1, 0, 0, 0]]))
    long.context[0, 0] = pipe.interpolation_null_embedding
    torch.testing.assert_close(_interp(pipe, clip[:5], cond=long), a, rtol=0, atol=1e-5)
