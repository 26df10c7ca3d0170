"""Sampling loops and noise sources, with recording fake networks (the real networks are
covered by the golden loop cases and tests/test_pipeline.py)."""
import subprocess
import sys
import textwrap

import pytest
import torch

from kv_core.conditioning import TextCondition
from kv_core.sampling.loop import Interrupted
from kv_core.sampling.noise import (NAMED_STREAMS, RecordingNoise, ReplayNoise, SeededNoise, as_noise_source,
                                    check_seed, stage_seed)
from kv_core.sampling.schedulers import make_sampler
from kv_core.stages.first_frame import sample_first_frame
from kv_core.stages.interpolation import assemble_interpolated, sample_interpolation
from kv_core.stages.keyframes import sample_keyframes
from kv_core.stages import Hooks

D, L = 6, 3


class FakeUNet(torch.nn.Module):
    """Records every call; returns a per-row constant (row index / 10) so guidance can be
    checked exactly, shaped like the real network's output."""

    def __init__(self, out_channels):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.out_channels = out_channels
        self.calls = []

    def forward(self, x, time, context, context_mask, **kwargs):
        self.calls.append(dict(x=x.clone(), time=time.clone(), context=context.clone(),
                               context_mask=context_mask.clone(), **kwargs))
        rows = torch.arange(x.shape[0], dtype=torch.float32) / 10
        return rows[:, None, None, None].expand(x.shape[0], self.out_channels, *x.shape[2:]).clone()


def _cond(rows=1, negative=False, neg_len=L):
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(rows, L, D, generator=g)
    mask = torch.tensor([[1, 1, 0]] * rows)
    if not negative:
        return TextCondition(ctx, mask)
    return TextCondition(ctx, mask, torch.randn(1, neg_len, D, generator=g), torch.ones(1, neg_len, dtype=torch.int64))


NULL = torch.full((D,), 7.0)


# --- noise sources --------------------------------------------------------------------

def test_seeded_noise_is_reproducible_and_stage_streams_differ():
    a, b = SeededNoise(5), SeededNoise(5)
    assert torch.equal(a.randn((3, 4)), b.randn((3, 4)))
    assert torch.equal(a.rand((7,)), b.rand((7,)))
    assert not torch.equal(SeededNoise(5).randn((8,)), SeededNoise(6).randn((8,)))
    seeds = {stage_seed(s, st) for s in (0, 1, 2) for st in NAMED_STREAMS}
    assert len(seeds) == 3 * len(NAMED_STREAMS)
    assert all(0 <= s < 2 ** 63 for s in seeds)
    u = SeededNoise(1).rand((1000,))
    assert 0 <= float(u.min()) and float(u.max()) < 1


@pytest.mark.parametrize("seed", [-1, 2 ** 64, 1.5, True, "3"])
def test_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed must be an integer from 0 to 2\\*\\*64 - 1"):
        check_seed(seed)


def test_seeded_noise_matches_in_another_process():
    code = textwrap.dedent("""
        import sys, torch
        from kv_core.sampling.noise import SeededNoise
        n = SeededNoise.for_stage(1234, "keyframes")
        x = torch.cat([n.randn((4, 4, 8, 8)).flatten(), n.rand((4, 8, 8)).flatten()])
        sys.stdout.buffer.write(x.numpy().tobytes())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, cwd=_repo_root()).stdout
    n = SeededNoise.for_stage(1234, "keyframes")
    here = torch.cat([n.randn((4, 4, 8, 8)).flatten(), n.rand((4, 8, 8)).flatten()])
    assert out == here.numpy().tobytes()


def _repo_root():
    import pathlib
    return str(pathlib.Path(__file__).resolve().parents[1])


def test_replay_noise():
    draws = [torch.randn(2, 3), torch.rand(4)]
    r = ReplayNoise(draws)
    assert torch.equal(r.randn((2, 3)), draws[0])
    with pytest.raises(ValueError, match="recorded draw 1 has shape"):
        r.rand((5,))
    assert torch.equal(r.rand((4,)), draws[1])
    with pytest.raises(RuntimeError, match="only 2 recorded draws"):
        r.randn((1,))
    r2 = ReplayNoise(draws)
    r2.randn((2, 3))
    with pytest.raises(AssertionError, match="1 recorded draws were not used"):
        r2.assert_consumed()


def test_recording_then_replay_reproduces_a_loop():
    unet = FakeUNet(4)
    rec = RecordingNoise(SeededNoise(3))
    a = sample_first_frame(unet, _cond(), NULL, latent_size=(4, 4), noise=rec, sampler=make_sampler("ddpm", 5))
    b = sample_first_frame(unet, _cond(), NULL, latent_size=(4, 4), noise=ReplayNoise(rec.draws),
                           sampler=make_sampler("ddpm", 5))
    assert torch.equal(a, b) and len(rec.draws) == 5  # initial latent + 4 steps with t > 0


def test_as_noise_source():
    assert torch.equal(as_noise_source(9, "keyframes").randn((3,)), SeededNoise.for_stage(9, "keyframes").randn((3,)))
    src = SeededNoise(1)
    assert as_noise_source(src, "keyframes") is src
    with pytest.raises(TypeError, match="noise must be a seed"):
        as_noise_source("seed", "keyframes")


# --- first frame ------------------------------------------------------------------------

def test_first_frame_batches_cond_and_uncond_in_one_forward():
    unet, trace = FakeUNet(4), {}
    steps = 4
    out = sample_first_frame(unet, _cond(), NULL, latent_size=(6, 4), guidance_scale=3.0,
                             sampler=make_sampler("ddpm", steps), noise=SeededNoise(0), hooks=Hooks(trace=trace))
    assert out.shape == (1, 4, 6, 4) and out.dtype == torch.float32
    assert len(unet.calls) == steps
    c = unet.calls[0]
    assert c["mode"] == "image" and c["x"].shape == (2, 9, 6, 4)
    assert torch.equal(c["x"][0, :4], c["x"][1, :4]) and not c["x"][:, 4:].any()
    assert c["time"].dtype == torch.float32 and c["time"].tolist() == [750.0, 750.0]
    assert c["context_mask"].dtype == torch.bool
    assert c["context_mask"].tolist() == [[True, True, False], [True, False, False]]
    assert torch.equal(c["context"][1, 0], NULL) and not c["context"][1, 1:].any()
    # (w + 1) cond - w uncond with cond = 0.0 and uncond = 0.1
    assert torch.allclose(trace["eps"][0], torch.full((1, 4, 6, 4), -0.3))
    assert len(trace["x"]) == steps and torch.equal(trace["x"][-1], out)


def test_negative_prompt_replaces_the_null_context():
    unet = FakeUNet(4)
    cond = _cond(negative=True, neg_len=5)
    sample_first_frame(unet, cond, NULL, latent_size=(4, 4), sampler=make_sampler("ddim", 1), noise=SeededNoise(0))
    c = unet.calls[0]
    assert c["context"].shape == (2, 5, D)
    assert torch.equal(c["context"][0, :L], cond.context[0]) and not c["context"][0, L:].any()
    assert torch.equal(c["context"][1], cond.negative_context[0])
    assert c["context_mask"].tolist() == [[True, True, False, False, False], [True] * 5]


# --- keyframes --------------------------------------------------------------------------

def test_keyframes_three_guidance_passes_in_one_forward():
    unet, trace, t_frames = FakeUNet(4), {}, 3
    key = torch.randn(4, 5, 6)
    noise = RecordingNoise(SeededNoise(1))
    sampler = make_sampler("ddpm", 3)
    sample_keyframes(unet, _cond(), NULL, key, num_frames=t_frames, guidance_weight_prompt=4.0,
                     guidance_weight_image=2.5, motion_score=50, noise_augmentation=30, sampler=sampler,
                     noise=noise, hooks=Hooks(trace=trace))
    assert len(unet.calls) == 3
    c = unet.calls[0]
    assert c["mode"] == "video" and c["num_frames"] == t_frames and c["x"].shape == (3 * t_frames, 9, 5, 6)
    x = c["x"]
    assert torch.equal(x[:t_frames, :4], x[t_frames:2 * t_frames, :4])
    # uniform noise augmentation of the key frame (draw 1), on frame 0 of the first two copies
    u = noise.draws[1]
    assert 0 <= float(u.min()) and float(u.max()) < 1
    noisy = sampler.add_noise(key, u, 30)
    for row in (0, t_frames):
        assert torch.allclose(x[row, 4:8], noisy) and torch.all(x[row, 8] == 1)
    others = [r for r in range(3 * t_frames) if r not in (0, t_frames)]
    assert not x[others, 4:].any()
    assert c["temporal_embed"].tolist() == [0.0, 1.0, 2.0] * 3
    assert c["noise_aug_time"].dtype == torch.int32 and c["noise_aug_time"].tolist() == [30] * 9
    assert c["motion_score"].dtype == torch.int32 and c["motion_score"].tolist() == [50] * 9
    assert c["context_mask"][:t_frames].tolist() == [[True, True, False]] * t_frames
    assert c["context_mask"][t_frames:].tolist() == [[True, False, False]] * (2 * t_frames)
    # (1 - wi) uncond + (wi - wp) image + wp full, per frame f: full = f/10, image = (T+f)/10, uncond = (2T+f)/10
    f = torch.arange(t_frames, dtype=torch.float32)
    want = (1 - 2.5) * (2 * t_frames + f) / 10 + (2.5 - 4.0) * (t_frames + f) / 10 + 4.0 * f / 10
    assert torch.allclose(trace["eps"][0][:, 0, 0, 0], want)


def test_fractional_motion_score_is_float():
    unet = FakeUNet(4)
    sample_keyframes(unet, _cond(), NULL, torch.zeros(4, 2, 2), num_frames=2, motion_score=12.5,
                     sampler=make_sampler("ddim", 1), noise=SeededNoise(0))
    assert unet.calls[0]["motion_score"].dtype == torch.float32


# --- interpolation ----------------------------------------------------------------------

def test_interpolation_batches_groups_and_masks_the_uncond_half():
    unet, trace = FakeUNet(12), {}
    frames = torch.randn(4, 4, 2, 3)
    groups = sample_interpolation(unet, _cond(), NULL, frames, skip_frames=3, guidance_scale=0.5,
                                  sampler=make_sampler("ddpm", 2, prediction_type="v_prediction"),
                                  noise=SeededNoise(0), hooks=Hooks(trace=trace))
    assert groups.shape == (3, 12, 2, 3)
    c = unet.calls[0]
    x = c["x"]
    assert c["num_groups"] == 3 and x.shape == (6, 20, 2, 3)
    assert torch.equal(x[:3, :4], frames[:-1]) and torch.equal(x[:3, 16:], frames[1:])
    assert not x[3:, :4].any() and not x[3:, 16:].any()
    assert torch.equal(x[:3, 4:16], x[3:, 4:16])
    assert c["time"].dtype == torch.int64 and c["time"].tolist() == [999] * 6
    assert c["temporal_mask"].tolist() == [1, 1, 1, 0, 0, 0]
    assert c["skip_frames"].dtype == torch.int32 and c["skip_frames"].tolist() == [3] * 6
    assert c["perturbation_time"].tolist() == [0] * 6
    g = torch.arange(3, dtype=torch.float32)
    assert torch.allclose(trace["eps"][0][:, 0, 0, 0], 1.5 * g / 10 - 0.5 * (3 + g) / 10)


def test_assemble_interpolated_order():
    frames = torch.arange(3, dtype=torch.float32).reshape(3, 1, 1, 1).expand(3, 2, 1, 1) * 10
    groups = torch.arange(2 * 6, dtype=torch.float32).reshape(2, 6, 1, 1)  # 2 groups x 3 frames x 2 channels
    video = assemble_interpolated(frames, groups)
    assert video.shape == (9, 2, 1, 1)
    assert video[:, 0, 0, 0].tolist() == [0, 0, 2, 4, 10, 6, 8, 10, 20]
    assert video[:, 1, 0, 0].tolist() == [0, 1, 3, 5, 10, 7, 9, 11, 20]


# --- host hooks ---------------------------------------------------------------------------

def test_progress_and_cancel():
    unet, seen = FakeUNet(4), []
    sample_first_frame(unet, _cond(), NULL, latent_size=(4, 4), sampler=make_sampler("ddim", 3),
                       noise=SeededNoise(0), hooks=Hooks(progress=lambda i, n, x: seen.append((i, n, tuple(x.shape)))))
    assert seen == [(1, 3, (1, 4, 4, 4)), (2, 3, (1, 4, 4, 4)), (3, 3, (1, 4, 4, 4))]

    unet = FakeUNet(4)
    with pytest.raises(Interrupted):
        sample_first_frame(unet, _cond(), NULL, latent_size=(4, 4), sampler=make_sampler("ddim", 3),
                           noise=SeededNoise(0), hooks=Hooks(cancel=lambda: True))
    assert unet.calls == []

    unet, calls = FakeUNet(4), []

    def cancel_after_two():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Interrupted):
        sample_keyframes(unet, _cond(), NULL, torch.zeros(4, 2, 2), num_frames=2, sampler=make_sampler("ddim", 5),
                         noise=SeededNoise(0), hooks=Hooks(cancel=cancel_after_two))
    assert len(unet.calls) == 2

    class HostStop(Exception):
        pass

    def host_cancel():
        raise HostStop

    with pytest.raises(HostStop):
        sample_interpolation(FakeUNet(12), _cond(), NULL, torch.zeros(2, 4, 2, 2), skip_frames=1,
                             noise=SeededNoise(0), hooks=Hooks(cancel=host_cancel))


def test_condition_errors():
    with pytest.raises(ValueError, match="context must be a tensor"):
        TextCondition(torch.zeros(3, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="given together"):
        TextCondition(torch.zeros(1, 2, 3), torch.ones(1, 2), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="same width"):
        TextCondition(torch.zeros(1, 2, 3), torch.ones(1, 2), torch.zeros(1, 2, 4), torch.ones(1, 2))
    with pytest.raises(ValueError, match="expected 1 or 3"):
        sample_keyframes(FakeUNet(4), _cond(rows=2), NULL, torch.zeros(4, 2, 2), num_frames=3,
                         noise=SeededNoise(0))
    with pytest.raises(ValueError, match="at least 2 frames"):
        sample_interpolation(FakeUNet(12), _cond(), NULL, torch.zeros(1, 4, 2, 2), skip_frames=1, noise=SeededNoise(0))
