"""kv_core.stage_inputs: the release sigmas of each stage, the floor at t = 999, the
keyframe augmentation noise a host path reproduces, and the frame assembly (no host)."""
import math

import pytest
import torch

from kv_core import conditioning
from kv_core import stages as st
from kv_core.stages import Hooks, interpolation as ip
from kv_core.stages import keyframes as kf
from kv_core.conditioning import TextCondition
from kv_core.sampling.noise import RecordingNoise, as_noise_source
from kv_core.sampling.schedulers import EPSILON_ALPHA_FLOOR, kv_alphas_cumprod, make_sampler, make_timesteps
from kv_core.stages.keyframes import sample_keyframes


def test_release_sigmas_are_the_stage_timesteps_of_the_schedule_ending_in_zero():
    a = kv_alphas_cumprod().double()
    for stage, steps, spacing, first in (("first_frame", 50, "leading", 980), ("keyframes", 50, "leading", 980),
                                         ("interpolation", 10, "trailing", 999)):
        sigmas = st.release_sigmas(stage)
        ts = make_timesteps(steps, spacing)
        assert int(ts[0]) == first and sigmas.shape == (steps + 1,) and sigmas.dtype == torch.float32
        assert float(sigmas[-1]) == 0.0
        assert bool((sigmas[:-1] > sigmas[1:]).all())
        for t, s in zip(ts.tolist(), sigmas[:-1].tolist()):
            expected = math.sqrt((1 - max(float(a[t]), EPSILON_ALPHA_FLOOR)) / max(float(a[t]), EPSILON_ALPHA_FLOOR))
            assert s == pytest.approx(expected, rel=1e-6)
    # t = 999 (zero terminal SNR): floored at 2**-24, sigma sqrt(2**24 - 1) ~ 4096
    assert float(st.schedule_sigmas()[-1]) == pytest.approx(math.sqrt(2 ** 24 - 1), rel=1e-7)
    assert float(st.release_sigmas("interpolation")[0]) == float(st.schedule_sigmas()[-1])
    # only t = 999 is floored
    assert torch.equal(st.floored_alphas_cumprod()[:-1], kv_alphas_cumprod()[:-1])
    assert st.release_sigmas("keyframes", 7, "trailing").shape == (8,)
    with pytest.raises(ValueError, match="stage must be one of"):
        st.release_sigmas("decode")


def test_keyframe_augmentation_noise_is_the_uniform_draw_of_the_pack_keyframes_stage():
    """A host path that conditions with this noise gets the very augmented first frame the
    pack's Keyframes stage (seeded the same) builds."""

    class Net(torch.nn.Module):
        def forward(self, x, *args, **kwargs):
            return torch.zeros(x.shape[0], 4, *x.shape[2:])

    seed, frames, h, w = 123, 3, 4, 6
    recorded = RecordingNoise(as_noise_source(seed, "keyframes"))
    cond = TextCondition(torch.randn(1, 2, 5), torch.ones(1, 2, dtype=torch.int64))
    sample_keyframes(Net(), cond, torch.zeros(5), torch.zeros(4, h, w), num_frames=frames,
                     sampler=make_sampler("ddim", 1), noise=recorded, hooks=Hooks(device="cpu"))
    # draws: the initial noise [frames, 4, h, w], then the uniform noise [4, h, w]
    assert [tuple(d.shape) for d in recorded.draws] == [(frames, 4, h, w), (4, h, w)]
    assert torch.equal(kf.keyframe_augmentation_noise(seed, frames, h, w), recorded.draws[1])
    assert 0 <= float(recorded.draws[1].min()) and float(recorded.draws[1].max()) < 1


def test_assemble_interleaves_groups_frame_major_and_checks_shapes():
    frames = torch.arange(3.0)[:, None, None, None].expand(3, 4, 2, 2)
    groups = torch.zeros(2, 12, 2, 2)  # frame-major channels: frame k of group i is 10 (i + 1) + k
    for i in range(2):
        for k in range(3):
            groups[i, 4 * k:4 * k + 4] = 10 * (i + 1) + k
    out = ip.assemble_interpolated(frames, groups)
    assert out.shape == (9, 4, 2, 2)
    assert out[:, :, 0, 0].tolist() == [[v] * 4 for v in (0, 10, 11, 12, 1, 20, 21, 22, 2)]
    with pytest.raises(ValueError, match="need groups"):
        ip.assemble_interpolated(frames, groups[:1])


def test_guidance_formulas_have_weights_summing_to_one():
    """So combining model outputs (the loops) and combining x0 (a host's denoised values)
    give the same guided x0."""
    c, i, u, x, s = (torch.randn(5) for _ in range(5))
    x0 = lambda e: x - s * e  # noqa: E731  (x0 is affine in the output with the same x for every cond)
    assert torch.allclose(x0(conditioning.cfg(c, u, 5.0)), conditioning.cfg(x0(c), x0(u), 5.0), atol=1e-5)
    assert torch.allclose(x0(kf.keyframe_guidance(c, i, u, 5.0, 2.0)),
                          kf.keyframe_guidance(x0(c), x0(i), x0(u), 5.0, 2.0), atol=1e-5)
