"""The core sampling path (nodes/host/unet_model.py, nodes/host/core_path.py,
nodes/core_sampling.py) against the pack's own loops, inside this process with the pinned
ComfyUI's modules (no server; the ``pack`` fixture of tests/support/comfy_fixtures.py): tiny random
networks from the golden configs (kv_core.tiny), fp32, CPU.

Equivalence, per stage: the same initial noise through the pack's loop with its DDIM and
through ComfyUI's ``ddim`` sampler (Euler in sigma space) with the Kandinsky Video guider
and sigmas. Both samplers take the noise from the *clamped* x0 (kv_core's DDIM recomputes
it; Euler's ``(x - D) / sigma`` uses the guider's clamped D), so the update
``x' = (s'/s) x + (1 - s'/s) x0`` is the same function and the clamp may be active (it is:
the tiny networks' x0 reaches +-1).

Tolerance, derived (u = 2**-24, float32's unit roundoff): per step both paths evaluate the
network on inputs equal up to one rounding (``x / sqrt(1 + s**2)`` against the loop's
``x``), batched differently (other summation orders), and combine G = sum |guidance
weights| outputs (first frame w = 5: G = 11; keyframes wp = 5, wi = 2: G = 9;
interpolation w = 0.5: G = 2). Allowing 2**6 roundings per network output, latents of
magnitude M = 4 (Gaussian start; x0 is clamped to 1) and no growth between steps, the
result differs by at most ``steps * G * 2**6 * u * M``. Interpolation starts at t = 999:
the loop uses abar = 0 there, the core path sigma ~ 4096 (the floor, kv_core.stage_inputs);
its first Euler step subtracts two numbers of size 4096 |n| in float32, which costs up to
``4 u 4096 max|n|`` in x before scaling to the next step's ``sqrt(abar)`` — added for that
stage. The measured errors are far below (README "Two ways to sample").
"""
from __future__ import annotations

import math

import torch

from core_sampling_runs import (STEPS, U, core_sample, first_frame_run, interpolation_run, keyframes_run, loop_sampler, out, start_noise, tolerance)


# --------------------------------------------------------------------------- equivalence

def test_first_frame_core_ddim_equals_the_loop(pack, nets):
    from kvpack.kv_core.sampling.noise import ReplayNoise
    from kvpack.kv_core.stages.first_frame import sample_first_frame

    model, guider, latent, sigmas = first_frame_run(pack, nets)
    noise = torch.randn(latent.shape, generator=nets["g"])
    core = core_sample(guider, noise, latent, "ddim", sigmas)
    loop = sample_first_frame(nets["keyframe"].module, nets["text"].condition, nets["keyframe"].null_embedding,
                              latent_size=latent.shape[-2:], guidance_scale=5.0,
                              sampler=loop_sampler("ddim", "epsilon", "leading"),
                              noise=ReplayNoise([start_noise(sigmas, noise)]))
    assert float(loop.abs().max()) == 1.0  # the clamp was active
    error = float((core - loop).abs().max())
    assert error <= tolerance(11), error
    # the test sees a real difference: guidance 5.25 instead of 5
    other = core_sample(first_frame_run(pack, nets, guidance=5.25)[1], noise, latent, "ddim", sigmas)
    assert float((other - loop).abs().max()) > 10 * tolerance(11)


def _keyframe_loop(pack, nets, key, sigmas, noise, sampler, step_noise=(), seed=7):
    from kvpack.kv_core.sampling.noise import ReplayNoise
    from kvpack.kv_core.stages.keyframes import keyframe_augmentation_noise, sample_keyframes

    frames = noise.shape[2]
    uniform = keyframe_augmentation_noise(seed, frames, *key.shape[-2:])
    replay = ReplayNoise([start_noise(sigmas, noise)[0].movedim(1, 0), uniform, *step_noise])
    return sample_keyframes(nets["keyframe"].module, nets["text"].condition, nets["keyframe"].null_embedding, key,
                            num_frames=frames, motion_score=10, noise_augmentation=20, sampler=sampler,
                            noise=replay)[None].movedim(2, 1)


def test_keyframes_core_ddim_equals_the_loop_and_keeps_the_keyframe_record(pack, nets):
    key, guider, latent, sigmas, (pos, image_only, neg, model) = keyframes_run(pack, nets)
    assert latent["samples"].shape == (1, 4, 4, 8, 8) and latent[pack.nodes.host.latent.KEYFRAMES_KEY] == 4
    noise = torch.randn(latent["samples"].shape, generator=nets["g"])
    core = core_sample(guider, noise, latent["samples"], "ddim", sigmas)
    loop = _keyframe_loop(pack, nets, key, sigmas, noise, loop_sampler("ddim", "epsilon", "leading"))
    error = float((core - loop).abs().max())
    assert error <= tolerance(9), error
    # wired wrongly (image_only and negative swapped), the result is far off
    swapped = pack.nodes.host.core_path.KandinskyVideoGuider(model)
    swapped.set_conds(pos, image_only, neg)
    swapped.set_weights(5.0, 2.0)
    assert float((core_sample(swapped, noise, latent["samples"], "ddim", sigmas) - loop).abs().max()) > 0.01


def test_core_dual_cfg_guider_regular_is_the_keyframe_formula_without_the_clamp(pack, nets):
    """Core DualCFGGuider, regular style, with cond1 = positive, cond2 = image_only, negative,
    cfg_conds = wp, cfg_cond2_negative = wi gives the keyframe guidance; it has no place for
    the release's clamp of the full combination, which the Kandinsky Video Guider adds."""
    from comfy_extras.nodes_custom_sampler import Guider_DualCFG

    key, guider, latent, sigmas, (pos, image_only, neg, model) = keyframes_run(pack, nets)
    dual = Guider_DualCFG(model)
    dual.set_conds(pos, image_only, neg)
    dual.set_cfg(5.0, 2.0, nested=False)
    ours = pack.nodes.host.core_path.KandinskyVideoGuider(model)
    ours.set_conds(pos, neg, image_only)
    ours.set_weights(5.0, 2.0, clamp=False)
    noise = torch.randn(latent["samples"].shape, generator=nets["g"])
    a, b = (core_sample(g, noise, latent["samples"], "ddim", sigmas) for g in (dual, ours))
    assert float((a - b).abs().max()) <= tolerance(9)
    clamped = core_sample(guider, noise, latent["samples"], "ddim", sigmas)
    assert float((clamped - b).abs().max()) > 1e-3  # the clamp is active here and matters


def test_release_ddpm_through_core_ddpm_has_the_loops_transition(pack, nets):
    """The release's DDPM (posterior mean of the clamped x0, ``fixed_small`` variance) and core
    ``ddpm`` (``DDPMSampler_step`` with the guider's clamped x0) are the same Markov chain:
    given the same state and the same standard-normal draw every step ends equal, so their
    distributions are equal. Checked pathwise: the loop's own draws are fed to core ``ddpm``
    through its ``noise_sampler``; the final latents agree within the deterministic
    tolerance (a wrong mean or variance would be off by the noise scale, ~0.1-1)."""
    import comfy.samplers
    from comfy.k_diffusion import sampling as kd

    key, guider, latent, sigmas, _ = keyframes_run(pack, nets)
    noise = torch.randn(latent["samples"].shape, generator=nets["g"])
    draws = [torch.randn(4, 4, 8, 8, generator=nets["g"]) for _ in range(STEPS - 1)]  # steps with t > 0
    loop = _keyframe_loop(pack, nets, key, sigmas, noise, loop_sampler("ddpm", "epsilon", "leading"), draws)
    replay = iter(draws)
    sampler = comfy.samplers.KSAMPLER(kd.sample_ddpm, extra_options={
        "noise_sampler": lambda sigma, sigma_next: next(replay)[None].movedim(2, 1)})
    core = core_sample(guider, noise, latent["samples"], sampler, sigmas)
    assert next(replay, None) is None  # core drew exactly as many
    error = float((core - loop).abs().max())
    assert error <= tolerance(9), error


def test_interpolation_core_ddim_equals_the_loop_and_assembles(pack, nets):
    from kvpack.kv_core.sampling.noise import ReplayNoise
    from kvpack.kv_core.stages import floored_alphas_cumprod
    from kvpack.kv_core.stages.interpolation import assemble_interpolated, sample_interpolation

    frames = torch.randn(3, 4, 8, 8, generator=nets["g"]) * 0.5
    video, guider, latent, sigmas = interpolation_run(pack, nets, frames)
    assert latent.shape == (1, 12, 2, 8, 8)
    noise = torch.randn(latent.shape, generator=nets["g"])
    core = core_sample(guider, noise, latent, "ddim", sigmas)

    def loop(**kw):
        return sample_interpolation(nets["interpolation"].module, nets["text"].condition,
                                    nets["interpolation"].null_embedding, frames, skip_frames=3, guidance_scale=0.5,
                                    sampler=loop_sampler("ddim", "v_prediction", "trailing", **kw),
                                    noise=ReplayNoise([noise[0].movedim(1, 0)]))[None].movedim(2, 1)

    a1 = 1 / (1 + float(sigmas[1]) ** 2)
    first_step = 4 * U * float(sigmas[0]) * float(noise.abs().max()) * math.sqrt(a1)
    # the same schedule (floored at t = 999 in the loop too): rounding only
    error = float((core - loop(alphas_cumprod=floored_alphas_cumprod())).abs().max())
    assert error <= tolerance(2) + first_step, error
    # the release's loop (abar_999 = 0): the floor changes x0 of the first step by
    # 2**-12 x + (1 - sqrt(1 - 2**-24)) v, scaled by sqrt(abar) of the next step
    floor_term = (2 ** -12 * float(noise.abs().max()) + 2 ** -24) * math.sqrt(a1)
    error = float((core - loop()).abs().max())
    assert error <= tolerance(2) + first_step + floor_term, error

    assembled = out(pack.nodes.core_sampling.KandinskyVideoAssembleFrames.execute(video, {"samples": core}))[0]
    assert assembled["samples"].shape == (1, 4, 9, 8, 8)
    assert assembled[pack.nodes.host.latent.KEYFRAMES_KEY] == 3
    expected = assemble_interpolated(frames, core[0].movedim(1, 0))
    assert torch.equal(assembled["samples"][0].movedim(1, 0), expected)
