"""The decode stage: the video MoVQ turns latents ``[F, 4, h, w]`` into frames, in the
reference's chunks (``latents.chunk(F // 4)``), with progress and cancel between chunks:
``decode_frames`` as float ``[F, 3, H, W]``, ``decode_images`` straight into one IMAGE
batch ``[F, H, W, 3]`` (e.g. a video fit undone per chunk), the output held once."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..models.movq import decode_video, video_chunk_sizes
from ..sampling.loop import check_cancel, run_device
from . import NO_HOOKS, Hooks


def decode_chunk_sizes(num_frames: int, chunk_size: Optional[int] = None) -> list[int]:
    """Frame counts of the chunks :func:`decode_frames` decodes one after another (the
    reference's ``chunk(F // 4)`` by default); for progress bars and memory estimates."""
    return video_chunk_sizes(num_frames, chunk_size)


@torch.inference_mode()
def decode_frames(video_movq, latents: torch.Tensor, *, chunk_size: Optional[int] = None,
                  hooks: Hooks = NO_HOOKS,
                  sink: Callable[[int, torch.Tensor], None] | None = None) -> Optional[torch.Tensor]:
    """Video-MoVQ decode ``[F, 4, h, w]`` -> float frames ``[F, 3, 8h, 8w]`` in [0, 1], in
    the reference's chunks (``latents.chunk(F // 4)``, see :func:`decode_chunk_sizes`)
    unless ``chunk_size`` is given. ``hooks``: ``progress(done, total)`` after each chunk,
    cancel before each, device and dtype. With ``sink``, each chunk goes to
    ``sink(first, frames)`` instead and None is returned (``kv_core.models.movq.decode_video``)."""
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
        raise ValueError("latents must be a tensor [F, 4, h, w]")
    decode_chunk_sizes(int(latents.shape[0]), chunk_size)  # a bad chunk_size fails before decoding
    check_cancel(hooks.cancel)

    def on_chunk(done, total):
        if hooks.progress is not None:
            hooks.progress(done, total)
        if done < total:
            check_cancel(hooks.cancel)

    return decode_video(video_movq, latents.to(device=run_device(video_movq, hooks.device), dtype=hooks.dtype),
                        chunk_size, progress=on_chunk, sink=sink)


class FrameBuffer:
    """One IMAGE batch ``[total, H, W, C]`` float32 on ``device``, allocated when the first
    frames arrive (their size is the decoder's) and filled in order by :meth:`write`.

    Decoding into it holds the output once: each decoded chunk is restored, laid out as
    ``[n, H, W, C]`` and copied into its place, then freed. Host memory of a pass's output:
    ``frames x H x W x 3 x 4`` bytes (477 frames of 640x360: 1.32 GB)."""

    def __init__(self, total: int, device="cpu"):
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"a frame buffer needs at least one frame, got {total!r}")
        self.total = int(total)
        self.device = torch.device(device)
        self.images: Optional[torch.Tensor] = None
        self.filled = 0

    def write(self, frames: torch.Tensor) -> torch.Tensor:
        """Append float frames ``[n, C, H, W]`` (any device); returns their slice of the buffer."""
        n, c, h, w = frames.shape
        if self.images is None:
            self.images = torch.empty((self.total, h, w, c), dtype=torch.float32, device=self.device)
        if tuple(self.images.shape[1:]) != (h, w, c):
            raise ValueError(f"frames [{n}, {c}, {h}, {w}] do not fit a buffer of {list(self.images.shape)}: every "
                             "video of one batch must decode to the same size")
        if self.filled + n > self.total:
            raise ValueError(f"{self.filled + n} frames written to a buffer of {self.total}")
        part = self.images[self.filled:self.filled + n]
        part.copy_(frames.movedim(1, -1))  # layout change and device transfer in one copy
        self.filled += n
        return part

    def result(self) -> torch.Tensor:
        """The filled batch; an error while frames are missing."""
        if self.images is None or self.filled != self.total:
            raise RuntimeError(f"the frame buffer holds {self.filled} of {self.total} frames")
        return self.images


def decode_images(video_movq, latents: torch.Tensor, restore: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  *, into: Optional[FrameBuffer] = None, chunk_size: Optional[int] = None,
                  hooks: Hooks = NO_HOOKS) -> torch.Tensor:
    """Video-MoVQ decode ``[F, 4, h, w]`` straight into IMAGE layout: float32 ``[F, H, W, 3]``
    in [0, 1], as :func:`decode_frames` decodes it (same chunks, same values). ``restore``:
    applied to each decoded chunk ``[n, 3, 8h, 8w]`` before it is placed, e.g. undoing a
    video fit (``functools.partial(kv_core.video_input.restore_frames, fit=fit)``: H x W is
    then the fit's output size).

    ``into``: the :class:`FrameBuffer` to append to (several videos in one batch); default a
    new one on the CPU. Returns this video's frames (a slice of the buffer). Peak memory
    beside the output: one decoded chunk (on the decoder's device) and its restored copy."""
    buffer = into if into is not None else FrameBuffer(int(latents.shape[0]) if isinstance(latents, torch.Tensor)
                                                       and latents.ndim == 4 else 1)
    first = buffer.filled

    def place(_start: int, frames: torch.Tensor) -> None:
        buffer.write(frames if restore is None else restore(frames))

    decode_frames(video_movq, latents, chunk_size=chunk_size, hooks=hooks, sink=place)
    return buffer.images[first:buffer.filled]
