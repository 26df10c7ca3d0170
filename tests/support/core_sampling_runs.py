"""The core-sampling tests' runs (tests/nodes/): the text conditioning value, the tolerance
derived in tests/nodes/test_core_sampling.py, and each stage's core MODEL, conds, latent and
sigmas through the Kandinsky Video nodes, with the pack imported in-process (``pack``)."""
from __future__ import annotations

import math

import torch


U = 2.0 ** -24
STEPS = 5


class Text:
    """A KV_CONDITIONING value: the prompt's context (and an optional negative one)."""

    def __init__(self, pack, context, mask, negative=None):
        self.condition = pack.kv_core.conditioning.TextCondition(context, mask, *(negative or ()))

    def text_condition(self):
        return self.condition


def out(result):
    return result.result if hasattr(result, "result") else result


def tolerance(guidance_sum: float, steps: int = STEPS, magnitude: float = 4.0) -> float:
    return steps * guidance_sum * 2 ** 6 * U * magnitude


def core_sample(guider, noise, latent, sampler, sigmas, **options):
    import comfy.samplers
    sampler = comfy.samplers.sampler_object(sampler) if isinstance(sampler, str) else sampler
    return guider.sample(noise, latent, sampler, sigmas, seed=0, disable_pbar=True, **options)


def loop_sampler(name, prediction, spacing, **kw):
    from kvpack.kv_core.sampling.schedulers import make_sampler
    return make_sampler(name, STEPS, prediction_type=prediction, spacing=spacing, **kw)


def start_noise(sigmas, noise):
    """The loop's x at the first step for the core path's noise: the core sampler starts
    from ``noise * sigma`` (``sqrt(1 + sigma**2)`` at its sigma_max), in VP units
    ``noise * sqrt(1 - abar)`` (``noise`` at t = 999)."""
    s = float(sigmas[0])
    return noise * (s / math.sqrt(1 + s * s) if s < 4000 else 1.0)


def first_frame_run(pack, nets, guidance=5.0, clamp=True):
    cs = pack.nodes.core_sampling
    model = out(cs.KandinskyVideoKeyframeModel.execute(keyframe_unet=nets["keyframe"]))[0]
    pos, neg, latent = out(cs.KandinskyVideoFirstFrameConditioning.execute(model, nets["text"], 64, 64))
    sigmas = out(cs.KandinskyVideoSigmas.execute("first_frame", STEPS, "default"))[0]
    guider = out(cs.KandinskyVideoGuider.execute(model, pos, neg, guidance, 2.0, clamp))[0]
    return model, guider, latent["samples"], sigmas


def keyframes_run(pack, nets, frames=4, seed=7):
    cs = pack.nodes.core_sampling
    model = out(cs.KandinskyVideoKeyframeModel.execute(keyframe_unet=nets["keyframe"]))[0]
    key = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5
    first = pack.nodes.host.sockets.FirstFrameCondition(key, 64, 64)
    pos, image_only, neg, latent = out(cs.KandinskyVideoKeyframesConditioning.execute(
        model, nets["text"], first, frames, "medium", 20, seed))
    sigmas = out(cs.KandinskyVideoSigmas.execute("keyframes", STEPS, "default"))[0]
    guider = out(cs.KandinskyVideoGuider.execute(model, pos, neg, 5.0, 2.0, True, image_only))[0]
    return key, guider, latent, sigmas, (pos, image_only, neg, model)


def interpolation_run(pack, nets, frames):
    cs = pack.nodes.core_sampling
    model = out(cs.KandinskyVideoInterpolationModel.execute(interpolation_unet=nets["interpolation"]))[0]
    video = pack.nodes.host.latent.video_latent(frames, 3)
    pos, neg, groups = out(cs.KandinskyVideoInterpolationConditioning.execute(model, video, 3, nets["text"]))
    sigmas = out(cs.KandinskyVideoSigmas.execute("interpolation", STEPS, "default"))[0]
    guider = out(cs.KandinskyVideoGuider.execute(model, pos, neg, 0.5, 2.0, True))[0]
    return video, guider, groups["samples"], sigmas
