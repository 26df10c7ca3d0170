"""The noise schedule and the three samplers (reference DDPM, DDIM, DPM-Solver++(2M)).

Convergence is checked against closed forms: for a point-mass data distribution the ideal
denoiser is known exactly, and for Gaussian data the probability-flow ODE has an exact
solution, so solver accuracy can be measured without any network."""
import math

import pytest
import torch

from kv_core.sampling.schedulers import (DDPMSampler, EPSILON_ALPHA_FLOOR, SAMPLERS, kv_alphas_cumprod, make_sampler,
                                         make_timesteps, threshold_x0)
from kv_core.stages import stage_sampler


def test_schedule_zero_terminal_snr_and_monotone():
    a = kv_alphas_cumprod()
    assert a.shape == (1000,) and a.dtype == torch.float32
    assert a[-1] == 0.0 and a[-2] > 0.0
    assert (a[1:] < a[:-1]).all()
    # the rescale keeps the first value of the cosine schedule: abar(1/n)/abar(0)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abs(float(a[0]) - f(1 / 1000) / f(0)) < 1e-6


def test_timesteps_of_the_reference_stages():
    assert make_timesteps(50, "leading").tolist() == list(range(980, -1, -20))
    assert make_timesteps(10, "trailing").tolist() == list(range(999, 98, -100))
    ts = make_timesteps(7, "linspace")
    assert ts[0] == 999 and ts[-1] == 0 and (ts[1:] < ts[:-1]).all()
    assert make_timesteps(1000, "leading").tolist() == list(range(999, -1, -1))


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5, True, "10"])
def test_bad_step_counts(steps):
    with pytest.raises(ValueError, match="steps must be an integer from 1 to 1000"):
        make_timesteps(steps, "leading")


def test_bad_names():
    with pytest.raises(ValueError, match="sampler must be one of"):
        make_sampler("euler", 10)
    with pytest.raises(ValueError, match="spacing must be one of"):
        make_sampler("ddim", 10, spacing="karras")
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        make_sampler("ddim", 10, prediction_type="sample")
    with pytest.raises(ValueError, match="stage must be one of"):
        stage_sampler("decode")


def test_stage_defaults_are_the_reference():
    ff, kf, it = stage_sampler("first_frame"), stage_sampler("keyframes"), stage_sampler("interpolation")
    for s in (ff, kf):
        assert isinstance(s, DDPMSampler) and s.num_steps == 50 and s.prediction_type == "epsilon"
        assert s.spacing == "leading"
    assert isinstance(it, DDPMSampler) and it.num_steps == 10 and it.prediction_type == "v_prediction"
    assert it.spacing == "trailing"
    fast = stage_sampler("interpolation", "dpmpp_2m", 4)
    assert fast.name == "dpmpp_2m" and fast.prediction_type == "v_prediction" and fast.timesteps[0] == 999


def test_ddpm_noise_draws():
    base, interp = stage_sampler("keyframes"), stage_sampler("interpolation")
    assert [base.needs_noise(i) for i in range(50)] == [True] * 49 + [False]
    assert all(interp.needs_noise(i) for i in range(10))
    x = torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match="needs a noise tensor"):
        base.step(x, 0, x)
    for name in ("ddim", "dpmpp_2m"):
        s = make_sampler(name, 10)
        assert not any(s.needs_noise(i) for i in range(10))


def test_ddpm_step_matches_the_posterior():
    """One DDPM step = posterior mean of q(x_prev | x_t, x0) + its std times the noise."""
    s = stage_sampler("keyframes")
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    i = 10
    a = float(s.alphas_cumprod[int(s.timesteps[i])])
    ap = float(s.alphas_cumprod[int(s.timesteps[i + 1])])
    x0 = ((x.double() - math.sqrt(1 - a) * eps.double()) / math.sqrt(a)).clamp(-1, 1)
    beta = 1 - a / ap
    mean = math.sqrt(ap) * beta / (1 - a) * x0 + math.sqrt(1 - beta) * (1 - ap) / (1 - a) * x.double()
    std = math.sqrt((1 - ap) / (1 - a) * beta)
    out = s.step(eps, i, x, z)
    assert torch.allclose(out.pred_original_sample.double(), x0, atol=1e-5)
    assert torch.allclose(out.prev_sample.double(), mean + std * z.double(), atol=1e-5)


def test_thresholding():
    x = torch.linspace(-3, 3, 200).reshape(2, 1, 10, 10)
    assert torch.equal(threshold_x0(x), x.clamp(-1, 1))
    # sample_max_value > 1: per item s = clamp(quantile(|x|, r), 1, max); x -> clamp(x, -s, s) / s
    y = threshold_x0(x, 0.5, 2.5)
    for item in range(2):
        s = min(max(float(torch.quantile(x[item].abs().flatten(), 0.5)), 1.0), 2.5)
        assert torch.allclose(y[item], x[item].clamp(-s, s) / s)


def test_epsilon_at_zero_terminal_snr_stays_finite():
    """Trailing spacing starts at t = 999 where alpha = 0: epsilon prediction must not divide by 0."""
    assert kv_alphas_cumprod()[998] > EPSILON_ALPHA_FLOOR
    x = torch.randn(1, 4, 4, 4)
    for name in SAMPLERS:
        s = make_sampler(name, 5, prediction_type="epsilon", spacing="trailing")
        assert s.timesteps[0] == 999
        noise = torch.randn_like(x) if s.needs_noise(0) else None
        out = s.step(torch.randn_like(x), 0, x, noise)
        assert torch.isfinite(out.prev_sample).all()
        assert out.pred_original_sample.abs().max() <= 1.0


def _run(sampler, x, model, gen):
    sampler.reset()
    for i, t in enumerate(sampler.timesteps.tolist()):
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float64) if sampler.needs_noise(i) else None
        x = sampler.step(model(x, t), i, x, noise).prev_sample
    return x


def _output_for(sampler, x, t, x0):
    """What an ideal network predicts when the clean sample is ``x0``."""
    a = float(sampler.alphas_cumprod[t])
    if sampler.prediction_type == "epsilon":
        a = max(a, EPSILON_ALPHA_FLOOR)
        return (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
    eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a) if a < 1 else torch.zeros_like(x)
    return math.sqrt(a) * eps - math.sqrt(1 - a) * x0


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [1, 3, 50])
def test_point_mass_is_recovered(name, prediction, steps):
    """With a perfect denoiser of a point mass every sampler ends exactly on the point."""
    gen = torch.Generator().manual_seed(steps)
    target = torch.rand(2, 4, 3, 3, generator=gen, dtype=torch.float64) * 1.6 - 0.8
    sampler = make_sampler(name, steps, prediction_type=prediction)
    x = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    out = _run(sampler, x, lambda x, t: _output_for(sampler, x, t, target), gen)
    assert torch.allclose(out, target, atol=1e-5)


def _gaussian_ode(mu, s, prediction):
    """Data N(mu, s^2): ideal model output and the exact end point of the probability-flow
    ODE (x_t = sqrt(a) mu + sqrt(a s^2 + 1 - a) z with z constant along the trajectory)."""

    def model_for(sampler):
        def model(x, t):
            a = float(sampler.alphas_cumprod[t])
            x0 = mu + math.sqrt(a) * s * s / (a * s * s + 1 - a) * (x - math.sqrt(a) * mu)
            return _output_for(sampler, x, t, x0)
        return model

    def exact(sampler, x):
        a = float(sampler.alphas_cumprod[int(sampler.timesteps[0])])
        return mu + s * (x - math.sqrt(a) * mu) / math.sqrt(a * s * s + 1 - a)

    return model_for, exact


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_deterministic_samplers_solve_the_ode(prediction):
    """DDIM converges to the exact ODE solution at first order, DPM-Solver++(2M) at second
    order (error / 2 resp. / 4 when the step count doubles)."""
    mu, s = 0.3, 0.25
    model_for, exact = _gaussian_ode(mu, s, prediction)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1024, dtype=torch.float64, generator=gen).reshape(4, 4, 8, 8)
    errors = {}
    for name in ("ddim", "dpmpp_2m"):
        for steps in (50, 100, 200):
            sampler = make_sampler(name, steps, prediction_type=prediction, spacing="linspace", thresholding=False)
            x_start = x * math.sqrt(1 - float(sampler.alphas_cumprod[int(sampler.timesteps[0])]))
            out = _run(sampler, x_start, model_for(sampler), gen)
            errors[name, steps] = float((out - exact(sampler, x_start)).abs().max())
    for steps in (50, 100):
        assert 1.6 < errors["ddim", steps] / errors["ddim", 2 * steps] < 2.5
        assert errors["dpmpp_2m", steps] / errors["dpmpp_2m", 2 * steps] > 3.0
    assert errors["dpmpp_2m", 200] < errors["ddim", 200] / 3


def test_ddpm_samples_the_data_distribution():
    """The reference DDPM with a perfect Gaussian denoiser reproduces the data mean; its
    spread approaches the data's as the steps get finer (few steps lose the variance of x0
    given x_t, which the posterior-mean update ignores)."""
    mu, s = 0.3, 0.25
    model_for, _ = _gaussian_ode(mu, s, "epsilon")
    gen = torch.Generator().manual_seed(2)
    stds = []
    for steps in (50, 1000):
        sampler = make_sampler("ddpm", steps, thresholding=False)
        x = torch.randn(20000, dtype=torch.float64, generator=gen)
        out = _run(sampler, x, model_for(sampler), gen)
        assert abs(float(out.mean()) - mu) < 0.01
        stds.append(float(out.std()))
    assert stds[0] < stds[1] and abs(stds[1] - s) < 0.01


def test_add_noise():
    s = stage_sampler("keyframes")
    x, n = torch.randn(4, 8, 8), torch.rand(4, 8, 8)
    a = float(s.alphas_cumprod[20])
    assert torch.allclose(s.add_noise(x, n, 20), math.sqrt(a) * x + math.sqrt(1 - a) * n, atol=1e-6)


def test_dpmpp_state_is_reset_between_loops():
    s = make_sampler("dpmpp_2m", 6)
    x = torch.randn(1, 4, 2, 2)
    model = lambda x, t: 0.5 * x  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    first = _run(s, x, model, gen)
    second = _run(s, x, model, gen)
    assert torch.equal(first, second)
