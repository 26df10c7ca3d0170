"""Golden runners for generation: the reference schedulers, the three sampling loops and
the whole pipeline. Everything comes from the case (configs, files, inputs, args,
recorded noises); the recorded draws are replayed in order through ``ReplayNoise``."""
from __future__ import annotations

import torch

from golden_support import GoldenCase, golden_kind

from kv_core.noise import ReplayNoise
from kv_core.schedulers import stage_sampler

_SAMPLER_OF = {"base": "keyframes", "interp": "interpolation"}


@golden_kind("ddpm_scheduler")
def run_ddpm_scheduler(case: GoldenCase) -> dict:
    inputs, noise = case.inputs, ReplayNoise(case.noises)
    samplers = {label: stage_sampler(stage) for label, stage in _SAMPLER_OF.items()}
    out = {
        "base_timesteps": samplers["base"].timesteps,
        "base_alphas_cumprod": samplers["base"].alphas_cumprod,
        "interp_timesteps": samplers["interp"].timesteps,
        "interp_alphas_cumprod": samplers["interp"].alphas_cumprod,
    }
    for i, step in enumerate(case.args["steps"]):
        sampler = samplers[step["sampler"]]
        index = step["index"]
        assert int(sampler.timesteps[index]) == step["timestep"]
        sample = inputs[f"step{i}_sample"]
        eps = noise.randn(sample.shape) if sampler.needs_noise(index) else None
        result = sampler.step(inputs[f"step{i}_model_output"], index, sample, eps)
        out[f"step{i}_prev_sample"] = result.prev_sample
        out[f"step{i}_pred_original_sample"] = result.pred_original_sample
    noise.assert_consumed()
    out["add_noise_out"] = samplers["base"].add_noise(
        inputs["add_noise_key_frame"], inputs["add_noise_noise"], case.args["add_noise_timestep"])
    return out
