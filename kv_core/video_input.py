"""Any video as interpolation input: frames -> image-MoVQ latents at a size the networks take,
the ``skip_frames`` rule for a frame rate, and the way back to the input's size.

Frames come as a ComfyUI ``IMAGE`` batch: float ``[N, H, W, C]`` in [0, 1], C = 3 (RGB), or
1 (grey), 2 (grey + alpha), 4 (RGBA); ``alpha`` ``[N or 1, H, W]`` (1 = opaque) may be given
apart (ComfyUI's Load Image puts transparency in a separate MASK, which is ``1 - alpha``).
Transparent pixels are shown over white, as :mod:`kv_core.image` shows a first frame.

Sizes (:func:`plan_fit`). The networks take sizes that are multiples of
``size_rule(...).multiple`` (64 for the release: the MoVQ's 8 times the U-Net's 2^3); an input
of any other size is fitted, and :func:`restore_frames` undoes the fit on the decoded frames:

- ``pad`` (default): pad to the next multiple with copies of the edge pixels (centred);
  the decoded frames are cropped back to the input's size. No input pixel is lost or resampled.
- ``crop``: centre-crop to the largest multiple that fits (at most ``multiple - 1`` pixels
  per side are removed, and said so); the output is the cropped picture, so it is smaller
  than the input by the crop. Refused when a side is shorter than one multiple.
- ``scale``: resize (bicubic, antialiased) to the nearest multiple on each side; the output
  is resized back to the input's size, so size and aspect are the input's.

``max_side`` (0: off) first scales the frames down so their longer side is at most that
many pixels (the release is trained at 512 x 512, and the U-Nets' memory grows with the
area); the output is scaled back up to the input's size in every mode (crop: to the input's
scale of the cropped part).

Frame rates. ``skip_frames`` tells the interpolation U-Net how far apart its given frames
are in the release's terms: 3 for the first pass (keyframes at 12 / 5.5 = 2.18 fps) and 1 for
the second (45 / 5.5 = 8.18 fps). :func:`auto_skip_frames` picks the trained value whose
rate is nearest to the input's on a log scale: 3 below sqrt(2.18 x 8.18) = 4.22 fps, 1 from
there up (so it never gives a value the release did not use). Interpolating a video of
``fps`` frames per second gives ``4 * fps`` exactly: the given frames keep their times and
three new frames fall between each two.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .checks import is_int, is_real
from .conditioning import null_condition
from .rules import REFERENCE_KEYFRAMES, VIDEO_SECONDS, SizeRule, size_rule
from .sampling.loop import check_cancel, run_device
from .stages import NO_HOOKS, Hooks
from .stages.decode import decode_frames
from .stages.interpolation import SKIP_FRAMES, interpolate_frames

FIT_MODES = ("pad", "crop", "scale")
DEFAULT_ENCODE_CHUNK = 8  # frames per image-MoVQ call
#: The frame rates of the given frames in the release's two passes -> the skip_frames it uses.
RELEASE_SKIP_RATES = {REFERENCE_KEYFRAMES / VIDEO_SECONDS: SKIP_FRAMES[1],
                      (4 * REFERENCE_KEYFRAMES - 3) / VIDEO_SECONDS: SKIP_FRAMES[2]}
BACKGROUND = 1.0  # transparent pixels are shown over white


def check_frame_rate(fps) -> float:
    if not is_real(fps) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive finite number of frames per second, got {fps!r}")
    return float(fps)


def auto_skip_frames(fps) -> int:
    """The ``skip_frames`` for given frames at ``fps``: the release's value (3 or 1) whose
    rate is nearest on a log scale (3 below 4.22 fps, 1 from 4.22 fps up). The release's
    own rates give its own values: 12/5.5 fps -> 3, 45/5.5 fps -> 1."""
    fps = check_frame_rate(fps)
    return min(RELEASE_SKIP_RATES.items(), key=lambda item: (abs(math.log(fps / item[0])), -item[0]))[1]


def interpolated_fps(fps, passes: int = 1) -> float:
    """Frame rate after ``passes`` x4 passes: ``fps * 4 ** passes`` (exact in floating point)."""
    return check_frame_rate(fps) * 4 ** int(passes)


# --------------------------------------------------------------------------- sizes

@dataclass(frozen=True)
class VideoFit:
    """How the input frames were fitted to the networks, and how to undo it.

    ``width``/``height``: the input; ``work_width``/``work_height``: after ``max_side``
    (equal to the input when it did not scale); ``net_width``/``net_height``: what the
    networks run (multiples of the rule); ``left``/``top``: padding added (``pad``) or
    pixels cut (``crop``) on the left and top, in working pixels. :attr:`output_size` is the
    size :func:`restore_frames` gives."""

    mode: str
    width: int
    height: int
    work_width: int
    work_height: int
    net_width: int
    net_height: int
    left: int = 0
    top: int = 0

    @property
    def scaled(self) -> bool:
        return (self.work_width, self.work_height) != (self.width, self.height)

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) of the restored frames: the input's, except ``crop``, which gives
        the kept part at the input's scale."""
        if self.mode != "crop":
            return self.width, self.height
        return (max(1, round(self.net_width * self.width / self.work_width)),
                max(1, round(self.net_height * self.height / self.work_height)))

    def describe(self) -> str:
        """One line for a log: what was done to the frames."""
        text = f"{self.width}x{self.height}"
        if self.scaled:
            text += f" scaled to {self.work_width}x{self.work_height} (max_side)"
        if (self.net_width, self.net_height) == (self.work_width, self.work_height):
            return text + ", run as it is"
        dw, dh = abs(self.net_width - self.work_width), abs(self.net_height - self.work_height)
        action = {"pad": f"padded by {dw}x{dh} edge pixels (cropped off again after decoding)",
                  "crop": f"CROPPED by {dw}x{dh} pixels (the output lacks them; fit 'pad' or 'scale' keeps them)",
                  "scale": "resized (scaled back after decoding)"}[self.mode]
        return f"{text} {action} to {self.net_width}x{self.net_height}, which the networks take"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VideoFit":
        try:
            fit = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except TypeError as err:
            raise ValueError(f"not a video fit record: {data!r} ({err})") from None
        if fit.mode not in FIT_MODES:
            raise ValueError(f"unknown fit mode {fit.mode!r} in {data!r}")
        return fit


def _multiple(rule) -> int:
    m = rule.multiple if isinstance(rule, SizeRule) else rule
    if not is_int(m) or m < 1:
        raise ValueError(f"the size multiple must be a positive integer, got {m!r}")
    return int(m)


def plan_fit(width: int, height: int, rule, mode: str = "pad", max_side: int = 0) -> VideoFit:
    """The :class:`VideoFit` of a ``width`` x ``height`` input for the networks' ``rule`` (a
    :class:`~kv_core.rules.SizeRule` or its pixel multiple). ``ValueError`` for an unknown
    mode, a bad ``max_side`` (negative, or below one multiple: a video shrunk that far is
    mostly padding), or ``crop`` of a side shorter than one multiple."""
    if mode not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {mode!r}")
    for name, value in (("width", width), ("height", height)):
        if not is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not is_int(max_side) or max_side < 0:
        raise ValueError(f"max_side must be 0 (off) or a positive number of pixels, got {max_side!r}")
    m = _multiple(rule)
    if max_side and max_side < m:
        raise ValueError(f"max_side {max_side} is below the smallest size the networks take ({m} pixels): the frames "
                         f"would be mostly padding or resampling; set max_side to 0 (off) or at least {m}")
    ww, wh = width, height
    if max_side and max(width, height) > max_side:
        s = max_side / max(width, height)
        ww, wh = max(1, round(width * s)), max(1, round(height * s))
    if mode == "pad":
        nw, nh = -(-ww // m) * m, -(-wh // m) * m
        return VideoFit(mode, width, height, ww, wh, nw, nh, (nw - ww) // 2, (nh - wh) // 2)
    if mode == "crop":
        nw, nh = ww // m * m, wh // m * m
        if not nw or not nh:
            raise ValueError(f"fit 'crop' cannot fit {ww}x{wh} pixels: the networks take multiples of {m}, and a "
                             f"side shorter than {m} would be cropped away; use fit 'pad' or 'scale'")
        return VideoFit(mode, width, height, ww, wh, nw, nh, (ww - nw) // 2, (wh - nh) // 2)
    nw, nh = max(m, round(ww / m) * m), max(m, round(wh / m) * m)
    return VideoFit(mode, width, height, ww, wh, nw, nh)


def _resize(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``[N, C, H, W]`` float in [0, 1] resized (bicubic, antialiased when shrinking) and
    clamped to [0, 1]; unchanged when the size is already right."""
    if tuple(frames.shape[-2:]) == (height, width):
        return frames
    out = F.interpolate(frames, size=(height, width), mode="bicubic", align_corners=False,
                        antialias=bool(height < frames.shape[-2] or width < frames.shape[-1]))
    return out.clamp_(0.0, 1.0)


def apply_fit(frames: torch.Tensor, fit: VideoFit) -> torch.Tensor:
    """Frames ``[N, C, H, W]`` in [0, 1] (the input's size) -> ``[N, C, net_height, net_width]``."""
    if tuple(frames.shape[-2:]) != (fit.height, fit.width):
        raise ValueError(f"frames are {frames.shape[-1]}x{frames.shape[-2]}, the fit is for {fit.width}x{fit.height}")
    if fit.mode == "scale":  # one resampling, straight to the network size
        return _resize(frames, fit.net_width, fit.net_height)
    x = _resize(frames, fit.work_width, fit.work_height)
    if fit.mode == "crop":
        return x[..., fit.top:fit.top + fit.net_height, fit.left:fit.left + fit.net_width]
    right, bottom = fit.net_width - fit.work_width - fit.left, fit.net_height - fit.work_height - fit.top
    if not (fit.left or right or fit.top or bottom):
        return x
    return F.pad(x, (fit.left, right, fit.top, bottom), mode="replicate")


def restore_frames(frames: torch.Tensor, fit: VideoFit, chunk_size: int = 16) -> torch.Tensor:
    """Decoded frames ``[F, C, net_height, net_width]`` -> ``[F, C, out_h, out_w]`` with
    ``(out_w, out_h) = fit.output_size``: the padding cropped off (``pad``), scaled back
    (``scale``, ``max_side``), ``chunk_size`` frames at a time (resizing needs a copy)."""
    if tuple(frames.shape[-2:]) != (fit.net_height, fit.net_width):
        raise ValueError(f"the decoded frames are {frames.shape[-1]}x{frames.shape[-2]} but this video was run at "
                         f"{fit.net_width}x{fit.net_height}: the latent does not belong to this fit")
    if fit.mode == "pad":
        frames = frames[..., fit.top:fit.top + fit.work_height, fit.left:fit.left + fit.work_width]
    out_w, out_h = fit.output_size
    if tuple(frames.shape[-2:]) == (out_h, out_w):
        return frames
    return torch.cat([_resize(c, out_w, out_h) for c in frames.split(chunk_size)])


# --------------------------------------------------------------------------- frames

def _rgb(chunk: torch.Tensor, alpha: Optional[torch.Tensor], background: float) -> torch.Tensor:
    """IMAGE chunk ``[n, H, W, C]`` -> float32 RGB ``[n, 3, H, W]`` in [0, 1], alpha shown over
    ``background``."""
    x = chunk.float()
    c = x.shape[-1]
    own_alpha = x[..., -1:] if c in (2, 4) else None
    colour = x[..., :c - 1] if own_alpha is not None else x
    if colour.shape[-1] == 1:
        colour = colour.expand(*colour.shape[:-1], 3)
    a = own_alpha
    if alpha is not None:
        a = alpha[..., None] if a is None else a * alpha[..., None]
    if a is not None:
        colour = colour * a + background * (1.0 - a)
    return colour.movedim(-1, 1).contiguous()


def check_frames(images, alpha=None) -> None:
    """Refuse what is no video: not ``[N, H, W, C]`` (C 1-4) float, fewer than 2 frames,
    empty, or an ``alpha`` that does not match."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (1, 2, 3, 4) \
            or not images.is_floating_point():
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"frames must be a float IMAGE batch [N, H, W, C] in [0, 1] with C = 1, 2, 3 or 4, "
                         f"got {shape}")
    n, h, w, _ = images.shape
    if n < 2:
        raise ValueError(f"a video to interpolate needs at least 2 frames, got {n}: an animated picture read as "
                         "one frame (e.g. a still image) has nothing to interpolate")
    if not h or not w:
        raise ValueError(f"frames have no pixels ({w}x{h})")
    if alpha is not None:
        if not isinstance(alpha, torch.Tensor) or alpha.ndim != 3 or alpha.shape[0] not in (1, n) \
                or tuple(alpha.shape[1:]) != (h, w):
            raise ValueError(f"alpha must be [{n} or 1, {h}, {w}] (one value per pixel, 1 opaque), got "
                             f"{list(alpha.shape) if isinstance(alpha, torch.Tensor) else alpha!r}")


def encode_video(movq, images: torch.Tensor, fit: VideoFit, *, alpha: Optional[torch.Tensor] = None,
                 background: float = BACKGROUND, chunk_size: int = DEFAULT_ENCODE_CHUNK,
                 hooks: Hooks = NO_HOOKS) -> tuple[torch.Tensor, int]:
    """Image-MoVQ latents ``[N, 4, net_height / f, net_width / f]`` (float32, on the CPU) of a
    frame batch ``images`` ``[N, H, W, C]`` fitted by ``fit`` (:func:`plan_fit`), encoded
    ``chunk_size`` frames at a time (the encoder treats frames independently, so the chunk
    size does not change the result). Returns ``(latents, clipped)``: values outside [0, 1]
    are clipped, and ``clipped`` says how many there were (NaN/inf are refused).
    ``hooks``: ``progress(done, total)`` after each chunk, ``cancel()`` before each (True
    raises ``kv_core.sampling.loop.Interrupted``), device and dtype."""
    check_frames(images, alpha)
    if tuple(images.shape[1:3]) != (fit.height, fit.width):
        raise ValueError(f"the frames are {images.shape[2]}x{images.shape[1]}, the fit is for {fit.width}x{fit.height}")
    if not is_int(chunk_size) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of frames, got {chunk_size!r}")
    device, dtype, progress, cancel = run_device(movq, hooks.device), hooks.dtype, hooks.progress, hooks.cancel
    n = images.shape[0]
    starts = list(range(0, n, chunk_size))
    latents, clipped = [], 0
    with torch.inference_mode():
        for k, s in enumerate(starts):
            check_cancel(cancel)
            chunk = images[s:s + chunk_size]
            if not bool(torch.isfinite(chunk).all()):
                raise ValueError(f"frames {s}..{s + len(chunk) - 1} hold NaN or infinite values")
            clipped += int(((chunk < 0) | (chunk > 1)).sum())
            a = None if alpha is None else (alpha if alpha.shape[0] == 1 else alpha[s:s + chunk_size]).float()
            rgb = _rgb(chunk.clamp(0, 1), None if a is None else a.clamp(0, 1), background)
            pixels = apply_fit(rgb, fit).mul(2.0).sub(1.0)  # the MoVQ takes [-1, 1]
            latents.append(movq.encode(pixels.to(device=device, dtype=dtype)).float().cpu())
            if progress is not None:
                progress(k + 1, len(starts))
    return torch.cat(latents), clipped


# --------------------------------------------------------------------------- the whole run

@dataclass
class InterpolatedVideo:
    """What :func:`interpolate_video` returns: ``frames`` float ``[F, H, W, 3]`` in [0, 1]
    (F = 4N - 3 per pass, the input's size unless ``crop``), ``fps`` (the input's x 4 per
    pass), ``latents`` ``[F, 4, h, w]`` (before decoding) and the ``fit`` used."""

    frames: torch.Tensor
    fps: float
    latents: torch.Tensor
    fit: VideoFit


def interpolate_video(interpolation_unet, null_embedding: torch.Tensor, movq, video_movq, images: torch.Tensor,
                      fps, *, passes: int = 1, cond=None, fit: str = "pad", max_side: int = 0,
                      skip_frames: Optional[int] = None, window: Optional[int] = None,
                      overlap: Optional[int] = None, guidance_scale: float = 0.5, sampler: str = "ddpm",
                      steps: Optional[int] = None, noise=None, alpha: Optional[torch.Tensor] = None,
                      decode_chunk_size: Optional[int] = None, hooks: Hooks = NO_HOOKS) -> InterpolatedVideo:
    """Any video ``images`` ``[N, H, W, C]`` at ``fps`` -> 4N - 3 frames at 4 x fps (``passes``
    2: 16N - 15 at 16 x fps): fit and encode (image MoVQ), ``passes`` interpolation passes
    (``skip_frames`` None: :func:`auto_skip_frames` of each pass's input rate; ``window``:
    see :mod:`kv_core.stages.windows`), decode (video MoVQ) and restore the input's size.
    ``cond`` None: no prompt (``kv_core.conditioning.null_condition``). ``noise``: a seed; pass k draws the
    stream of its input frame count, as :func:`~kv_core.stages.interpolation.interpolate_frames`."""
    fps = check_frame_rate(fps)
    if not is_int(passes) or passes < 1:
        raise ValueError(f"passes must be 1 or more, got {passes!r}")
    rule = size_rule(movq=movq, video_movq=video_movq, interpolation_unet=interpolation_unet)
    check_frames(images, alpha)
    plan = plan_fit(int(images.shape[2]), int(images.shape[1]), rule, fit, max_side)
    on_device = Hooks(device=hooks.device)  # each network computes in its own dtype
    latents, _ = encode_video(movq, images, plan, alpha=alpha, hooks=on_device)
    cond = null_condition(null_embedding) if cond is None else cond
    rate = fps
    for _ in range(passes):
        skip = auto_skip_frames(rate) if skip_frames is None else skip_frames
        latents = interpolate_frames(interpolation_unet, null_embedding, cond, latents, skip_frames=skip,
                                     guidance_scale=guidance_scale, sampler=sampler, steps=steps, noise=noise,
                                     window=window, overlap=overlap, hooks=on_device).cpu()
        rate *= 4
    decoded = decode_frames(video_movq, latents, chunk_size=decode_chunk_size, hooks=on_device).cpu()
    frames = restore_frames(decoded, plan).movedim(1, -1).contiguous()
    return InterpolatedVideo(frames, rate, latents, plan)
