"""The three sampling loops of Kandinsky Video 1.1.

``sample_first_frame``    the keyframe U-Net in image mode at twice the video size, with
                          classifier-free guidance ``(w + 1) cond - w uncond``.
``sample_keyframes``      the keyframe U-Net in video mode, conditioned on the encoded first
                          frame; three guidance passes per step in one forward of 3T rows.
``sample_interpolation``  the interpolation U-Net: three new frames between each pair of
                          consecutive frames (N - 1 groups), cond/uncond in one forward.

Each loop takes the network, a ``TextCondition`` (the prompt context, optionally a
negative-prompt context), the stage's null embedding, a sampler (``kv_core.schedulers``;
the reference DDPM of the stage by default) and a noise source (``kv_core.noise``: every
random tensor is drawn from it, in the reference order). Latents stay float32 on
``device`` (default: the device of the network's parameters); the network gets them as
they are and casts to its own dtype.

Host hooks: ``progress(step, total, latent)`` is called after every step;
``cancel()`` is called before every step and stops the loop with ``Interrupted`` when it
returns True (it may also raise its own exception). ``trace``, when a dict, receives the
per-step guided predictions (``trace["eps"]``) and latents (``trace["x"]``) as lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .noise import NoiseSource
from .schedulers import Sampler, stage_sampler
from .text import unconditional_context

ProgressFn = Callable[[int, int, torch.Tensor], None]
CancelFn = Callable[[], Optional[bool]]


class Interrupted(RuntimeError):
    """Sampling was stopped between two steps because the cancel check asked for it."""


@dataclass
class TextCondition:
    """Text conditioning of one video.

    ``context`` ``[1 or B, L, D]`` float and ``context_mask`` ``[1 or B, L]`` (int or bool)
    as the text encoder returns them (``projection_base``). With a negative prompt,
    ``negative_context``/``negative_mask`` replace the null-embedding context in every
    unconditional pass; without one the unconditional context is the reference's: zeros
    of the same length with the stage's null embedding at position 0 and mask ``[1, 0, …]``.
    """

    context: torch.Tensor
    context_mask: torch.Tensor
    negative_context: Optional[torch.Tensor] = None
    negative_mask: Optional[torch.Tensor] = None

    def __post_init__(self):
        _check_context(self.context, self.context_mask, "context")
        if (self.negative_context is None) != (self.negative_mask is None):
            raise ValueError("negative_context and negative_mask must be given together")
        if self.negative_context is not None:
            _check_context(self.negative_context, self.negative_mask, "negative_context")
            if self.negative_context.shape[-1] != self.context.shape[-1]:
                raise ValueError("negative_context and context must have the same width D")


def _check_context(context, mask, name):
    if not isinstance(context, torch.Tensor) or context.ndim != 3:
        raise ValueError(f"{name} must be a tensor [B, L, D]")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(context.shape[:2]):
        raise ValueError(f"{name} mask must be a tensor [B, L] matching {name} {tuple(context.shape)}")


def _rows(t: torch.Tensor, rows: int, what: str) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    if t.shape[0] == 1:
        return t.expand(rows, *t.shape[1:])
    raise ValueError(f"{what} has batch {t.shape[0]}; expected 1 or {rows}")


def _pad_length(context, mask, length):
    extra = length - context.shape[1]
    if extra == 0:
        return context, mask
    return F.pad(context, (0, 0, 0, extra)), F.pad(mask, (0, extra))


def guidance_contexts(cond: TextCondition, null_embedding: torch.Tensor, rows: int, device,
                      dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conditional and unconditional contexts of ``rows`` rows each, same length L.

    Returns ``(context, mask, uncond_context, uncond_mask)`` on ``device``, masks bool.
    A negative prompt of another length is zero-padded (mask 0) with the prompt to the
    longer of the two.
    """
    ctx = _rows(cond.context, rows, "context").to(device=device, dtype=dtype)
    mask = _rows(cond.context_mask, rows, "context_mask").to(device=device)
    if cond.negative_context is None:
        uc, um = unconditional_context(ctx, mask, null_embedding)
    else:
        uc = _rows(cond.negative_context, rows, "negative_context").to(device=device, dtype=dtype)
        um = _rows(cond.negative_mask, rows, "negative_mask").to(device=device, dtype=mask.dtype)
        length = max(ctx.shape[1], uc.shape[1])
        ctx, mask = _pad_length(ctx, mask, length)
        uc, um = _pad_length(uc, um, length)
    return ctx, mask.bool(), uc, um.bool()


def model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def check_cancel(cancel: CancelFn | None) -> None:
    if cancel is not None and cancel():
        raise Interrupted("generation was cancelled")


def _run(sampler: Sampler, x: torch.Tensor, predict: Callable[[torch.Tensor, int], torch.Tensor],
         noise: NoiseSource, progress: ProgressFn | None, cancel: CancelFn | None, trace: dict | None):
    """Shared loop: ``predict(x, t)`` gives the guided model output at timestep t."""
    sampler.reset()
    if trace is not None:
        trace.setdefault("eps", [])
        trace.setdefault("x", [])
    total = sampler.num_steps
    for i, t in enumerate(sampler.timesteps.tolist()):
        check_cancel(cancel)
        guided = predict(x, t).float()
        step_noise = noise.randn(x.shape, device=x.device) if sampler.needs_noise(i) else None
        x = sampler.step(guided, i, x, step_noise).prev_sample
        if trace is not None:
            trace["eps"].append(guided)
            trace["x"].append(x)
        if progress is not None:
            progress(i + 1, total, x)
    return x


def sample_first_frame(
    unet: torch.nn.Module,
    cond: TextCondition,
    null_embedding: torch.Tensor,
    *,
    latent_size: tuple[int, int],
    guidance_scale: float = 5.0,
    sampler: Sampler | None = None,
    noise: NoiseSource,
    device=None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    trace: dict | None = None,
) -> torch.Tensor:
    """Generate the first-frame latent ``[B, 4, h, w]`` (B = rows of ``cond.context``).

    ``latent_size`` = (h, w) of the image latent (the pipeline uses twice the video's
    latent size). Input rows ``[x, x]`` with zero condition and mask channels; the U-Net
    runs in image mode; guidance ``(w + 1) cond - w uncond``.
    """
    sampler = sampler or stage_sampler("first_frame")
    device = device or model_device(unet)
    b = cond.context.shape[0]
    h, w = latent_size
    x = noise.randn((b, 4, h, w), device=device)
    ctx, mask, uc, um = guidance_contexts(cond, null_embedding, b, device)
    context, context_mask = torch.cat([ctx, uc]), torch.cat([mask, um])
    zero_condition = torch.zeros(2 * b, 5, h, w, device=device)  # condition latent 4 + mask 1

    def predict(x, t):
        inp = torch.cat([x.repeat(2, 1, 1, 1), zero_condition], dim=1)
        time = torch.full((2 * b,), float(t), device=device)
        e_cond, e_uncond = unet(inp, time, context, context_mask, mode="image").float().chunk(2)
        return (guidance_scale + 1.0) * e_cond - guidance_scale * e_uncond

    return _run(sampler, x, predict, noise, progress, cancel, trace)


def _score_tensor(value, rows, device):
    """Motion score / augmentation level per row: int32 as the reference passes them
    (float32 for a fractional motion score)."""
    dtype = torch.int32 if float(value).is_integer() else torch.float32
    return torch.full((rows,), value, dtype=dtype, device=device)


def sample_keyframes(
    unet: torch.nn.Module,
    cond: TextCondition,
    null_embedding: torch.Tensor,
    key_frame: torch.Tensor,
    *,
    num_frames: int = 12,
    guidance_weight_prompt: float = 5.0,
    guidance_weight_image: float = 2.0,
    motion_score: float = 10,
    noise_augmentation: int = 20,
    sampler: Sampler | None = None,
    noise: NoiseSource,
    device=None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    trace: dict | None = None,
) -> torch.Tensor:
    """Generate ``num_frames`` keyframe latents ``[T, 4, h, w]`` from the encoded first
    frame ``key_frame`` ``[4, h, w]``.

    The first frame is noised to timestep ``noise_augmentation`` with *uniform* noise (as
    the reference) and put in the condition channels of frame 0 with mask 1. A
    ``key_frame`` ``[m, 4, h, w]`` (1 <= m < T) conditions frames 0 .. m-1 the same way
    (the long-video option of ``kv_core.extend``; the release conditions frame 0 only and
    was trained for that). Each step
    runs one forward of 3T rows, copy-major: (text, image), (null text, image),
    (null text, no image), then ``(1 - wi) uncond + (wi - wp) image_only + wp full``.
    """
    sampler = sampler or stage_sampler("keyframes")
    device = device or model_device(unet)
    t_frames = num_frames
    h, w = key_frame.shape[-2:]
    x = noise.randn((t_frames, 4, h, w), device=device)
    key_frame = key_frame.to(device=device, dtype=torch.float32)
    uniform = noise.rand(key_frame.shape, device=device)
    noisy_key = sampler.add_noise(key_frame, uniform, noise_augmentation)

    # condition channels (latent 4 + mask 1) of the three copies: only frame 0 of the
    # first two copies carries the image
    condition = torch.zeros(3, t_frames, 5, h, w, device=device)
    conditioned = 1 if key_frame.ndim == 3 else key_frame.shape[0]  # frames 0 .. conditioned-1
    condition[:2, :conditioned, :4] = noisy_key.reshape(conditioned, -1, h, w)
    condition[:2, :conditioned, 4] = 1.0
    condition = condition.flatten(0, 1)

    ctx, mask, uc, um = guidance_contexts(cond, null_embedding, t_frames, device)
    context, context_mask = torch.cat([ctx, uc, uc]), torch.cat([mask, um, um])
    rows = 3 * t_frames
    frame_index = torch.arange(t_frames, device=device, dtype=torch.float32).repeat(3)
    aug = _score_tensor(noise_augmentation, rows, device)
    motion = _score_tensor(motion_score, rows, device)
    wp, wi = guidance_weight_prompt, guidance_weight_image

    def predict(x, t):
        inp = torch.cat([x.repeat(3, 1, 1, 1), condition], dim=1)
        time = torch.full((rows,), float(t), device=device)
        e = unet(inp, time, context, context_mask, mode="video", num_frames=t_frames,
                 temporal_embed=frame_index, noise_aug_time=aug, motion_score=motion).float()
        e_full, e_image, e_uncond = e.chunk(3)
        return (1 - wi) * e_uncond + (wi - wp) * e_image + wp * e_full

    return _run(sampler, x, predict, noise, progress, cancel, trace)


def sample_interpolation(
    unet: torch.nn.Module,
    cond: TextCondition,
    null_embedding: torch.Tensor,
    frames: torch.Tensor,
    *,
    skip_frames: int,
    guidance_scale: float = 0.5,
    perturbation_time: int = 0,
    use_temporal_mask: bool = True,
    sampler: Sampler | None = None,
    noise: NoiseSource,
    device=None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    trace: dict | None = None,
) -> torch.Tensor:
    """Predict three frames between each pair of consecutive ``frames`` ``[N, 4, h, w]``.

    Returns ``[N - 1, 12, h, w]`` (group i = the frames between i and i + 1, frame-major
    channels). Each step runs one forward of 2(N - 1) rows: cond (text, neighbouring
    frames, temporal mask 1) and uncond (null text, zero frames, temporal mask 0 — the
    temporal layers are bypassed), guidance ``(w + 1) cond - w uncond``.
    ``skip_frames`` is 3 for the first interpolation pass and 1 for the second.
    """
    sampler = sampler or stage_sampler("interpolation")
    device = device or model_device(unet)
    n, c, h, w = frames.shape
    if n < 2:
        raise ValueError(f"interpolation needs at least 2 frames, got {n}")
    groups = n - 1
    x = noise.randn((groups, 3 * c, h, w), device=device)
    frames = frames.to(device=device, dtype=torch.float32)
    left = torch.cat([frames[:-1], torch.zeros_like(frames[:-1])])
    right = torch.cat([frames[1:], torch.zeros_like(frames[1:])])

    ctx, mask, uc, um = guidance_contexts(cond, null_embedding, groups, device)
    context, context_mask = torch.cat([ctx, uc]), torch.cat([mask, um])
    rows = 2 * groups
    perturbation = torch.full((rows,), perturbation_time, dtype=torch.int32, device=device)
    skip = torch.full((rows,), skip_frames, dtype=torch.int32, device=device)
    temporal_mask = torch.ones(rows, device=device)
    if use_temporal_mask:
        temporal_mask[groups:] = 0.0

    def predict(x, t):
        inp = torch.cat([left, x.repeat(2, 1, 1, 1), right], dim=1)
        time = torch.full((rows,), int(t), dtype=torch.int64, device=device)
        v = unet(inp, time, context, context_mask, num_groups=groups, perturbation_time=perturbation,
                 skip_frames=skip, temporal_mask=temporal_mask).float()
        v_cond, v_uncond = v.chunk(2)
        return (guidance_scale + 1.0) * v_cond - guidance_scale * v_uncond

    return _run(sampler, x, predict, noise, progress, cancel, trace)


def assemble_interpolated(frames: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Interleave ``frames`` ``[N, C, h, w]`` with ``groups`` ``[N - 1, 3C, h, w]`` into
    ``[4N - 3, C, h, w]``: frame 4i is ``frames[i]``, frames 4i+1 … 4i+3 are group i."""
    n, c, h, w = frames.shape
    groups = groups.to(frames.dtype).reshape(n - 1, 3, c, h, w)
    body = torch.cat([frames[:-1, None], groups], dim=1).reshape(4 * (n - 1), c, h, w)
    return torch.cat([body, frames[-1:]])
