"""The first-frame stage: the keyframe U-Net in image mode makes the first frame at twice the
video size, the image MoVQ decodes it to a picture, and a picture (that one, or the user's
for image-to-video) is encoded to the latent that conditions the keyframes.

Network input per row: ``[x, zeros(5)]`` (no condition latent, mask 0); rows ``[x, x]``
with the prompt and the null text; guidance ``(w + 1) cond - w uncond`` (``w``: the
reference's ``key_frame_guidance_scale``). Reference sampling: DDPM, 50 leading steps,
epsilon prediction (``kv_core.stages.STAGE_TABLE``).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from ..checks import check_guidance
from ..conditioning import TextCondition, cfg, check_context_width, guidance_contexts
from ..image import prepare_first_frame
from ..models.movq import to_uint8_frames
from ..rules import RELEASE_MOVQ_FACTOR, SizeRule, size_rule
from ..sampling.loop import cache_kwargs, in_dtype, run_device, run_steps, stage_noise
from ..sampling.step_cache import StepCacheSettings, check_step_cache
from ..sampling.noise import NoiseSource
from ..sampling.schedulers import Sampler, check_sampler
from . import CONDITION_CHANNELS, Hooks, NO_HOOKS, STAGE_TABLE

NAME = "first_frame"
DEFAULTS = STAGE_TABLE[NAME].sampling


# --- network inputs -----------------------------------------------------------------------

def first_frame_condition(rows: int, h: int, w: int, device=None) -> torch.Tensor:
    """The condition channels of the first frame: zeros ``[rows, 5, h, w]`` (no latent, mask 0)."""
    return torch.zeros(rows, CONDITION_CHANNELS, h, w, device=device)


# --- checks -------------------------------------------------------------------------------

def _first_frame_rule(unet, movq) -> SizeRule:
    if movq is not None:
        return size_rule(unet=unet, movq=movq)
    rule = size_rule(unet=unet)
    return SizeRule(RELEASE_MOVQ_FACTOR, rule.latent_multiple,
                    f"the release's MoVQ downsamples by {RELEASE_MOVQ_FACTOR}, " + rule.reason)


def first_frame_latent_size(width, height, *, unet, movq=None) -> tuple[int, int]:
    """``(h, w)`` of the first-frame latent: twice the video size over the MoVQ factor
    (the release's 8 when no MoVQ is given). ``ValueError`` for a size the networks
    cannot run (``kv_core.rules.size_rule``)."""
    rule = _first_frame_rule(unet, movq)
    rule.check(width, height)
    return 2 * height // rule.factor, 2 * width // rule.factor


# --- the loop -----------------------------------------------------------------------------

def sample_first_frame(
    unet: torch.nn.Module,
    cond: TextCondition,
    null_embedding: torch.Tensor,
    *,
    latent_size: tuple[int, int],
    guidance_scale: float = 5.0,
    sampler: Sampler | None = None,
    noise: NoiseSource,
    hooks: Hooks = NO_HOOKS,
    step_cache: StepCacheSettings | None = None,
) -> torch.Tensor:
    """Generate the first-frame latent ``[B, 4, h, w]`` (B = rows of ``cond.context``).

    ``latent_size`` = (h, w) of the image latent (the pipeline uses twice the video's
    latent size). Input rows ``[x, x]`` with zero condition and mask channels; the U-Net
    runs in image mode; guidance ``(w + 1) cond - w uncond``. ``hooks``: progress, cancel,
    trace and device (``kv_core.sampling.loop.Hooks``; its dtype is the stage function's).
    """
    sampler = sampler or DEFAULTS.make()
    device = run_device(unet, hooks.device)
    b = cond.context.shape[0]
    h, w = latent_size
    x = noise.randn((b, 4, h, w), device=device)
    ctx, mask, uc, um = guidance_contexts(cond, null_embedding, b, device)
    context, context_mask = torch.cat([ctx, uc]), torch.cat([mask, um])
    zero_condition = first_frame_condition(2 * b, h, w, device)

    def predict(x, t, cache=None):
        inp = torch.cat([x.repeat(2, 1, 1, 1), zero_condition], dim=1)
        time = torch.full((2 * b,), float(t), device=device)
        e_cond, e_uncond = unet(inp, time, context, context_mask, mode="image",
                                **cache_kwargs(cache, 2 * b)).float().chunk(2)
        return cfg(e_cond, e_uncond, guidance_scale)

    return run_steps(sampler, x, predict, noise, hooks, step_cache)


# --- the stage ----------------------------------------------------------------------------

@torch.inference_mode()
def generate_first_frame(
    unet, null_embedding: torch.Tensor, cond: TextCondition, *, width: int = 512, height: int = 512,
    guidance_scale: float = 5.0, sampler: str = "ddpm", steps: Optional[int] = None, noise=None,
    movq=None, hooks: Hooks = NO_HOOKS, step_cache=None,
) -> torch.Tensor:
    """First-frame latent ``[1, 4, 2*height/f, 2*width/f]`` (twice the video size) from the
    keyframe U-Net in image mode; ``guidance_scale`` is the reference's
    ``key_frame_guidance_scale``. ``movq``: the image MoVQ that decodes it, which sets
    the factor f (None: the release's 8). Sizes the networks cannot run are refused
    before anything runs (``kv_core.rules.size_rule``). ``step_cache``: DeepCache-style step caching (a
    ``kv_core.sampling.step_cache.StepCacheSettings`` or a dict of its fields); None (the
    default) or interval 1 runs every step in full, bit for bit the uncached result."""
    latent_size = first_frame_latent_size(width, height, unet=unet, movq=movq)
    check_context_width(cond, null_embedding, "keyframe U-Net")
    guidance_scale = check_guidance("guidance_scale", guidance_scale)
    check_sampler(NAME, sampler, steps)
    step_cache = check_step_cache(step_cache)
    noise = stage_noise(noise, NAME)
    return sample_first_frame(in_dtype(unet, hooks.dtype), cond, null_embedding, latent_size=latent_size,
                              guidance_scale=guidance_scale, sampler=DEFAULTS.make(sampler, steps), noise=noise,
                              hooks=replace(hooks, device=run_device(unet, hooks.device)), step_cache=step_cache)


@torch.inference_mode()
def decode_first_frame(movq, latent: torch.Tensor, *, hooks: Hooks = NO_HOOKS) -> torch.Tensor:
    """Image-MoVQ decode of a first-frame latent ``[1, 4, h, w]`` -> uint8 ``[8h, 8w, 3]``
    (``x * 255`` truncated, as the reference's PIL conversion), on the CPU. ``hooks``:
    device and dtype."""
    if not isinstance(latent, torch.Tensor) or latent.ndim != 4:
        raise ValueError("latent must be a tensor [1, 4, h, w] from generate_first_frame")
    image = movq.decode(latent.to(device=run_device(movq, hooks.device), dtype=hooks.dtype)).float()
    image = torch.clip((image + 1.0) / 2.0, 0.0, 1.0)
    return to_uint8_frames(image[:1])[0].cpu()


@torch.inference_mode()
def encode_first_frame(movq, image, *, width: int = 512, height: int = 512, mode: str = "reference",
                       layout: Optional[str] = None, hooks: Hooks = NO_HOOKS) -> torch.Tensor:
    """Conditioning latent ``[4, height/8, width/8]`` (float32) of a picture: reference
    resize/centre-crop (``mode="reference"``, small pictures padded black) or ``cover``
    (scaled to cover the frame), then the image MoVQ encoder. See ``kv_core.image``
    (``layout`` "HWC"/"CHW" for an array whose shape fits both). The size must be a
    multiple of the MoVQ's factor (``kv_core.rules.size_rule``). ``hooks``: device and dtype."""
    size_rule(movq=movq).check(width, height)
    pixels = prepare_first_frame(image, width, height, mode, layout=layout)
    return movq.encode(pixels[None].to(device=run_device(movq, hooks.device), dtype=hooks.dtype))[0].float()
