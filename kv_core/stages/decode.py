"""The decode stage: the video MoVQ turns latents ``[F, 4, h, w]`` into frames, in the
reference's chunks (``latents.chunk(F // 4)``), with progress and cancel between chunks."""
from __future__ import annotations

from typing import Optional

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
                  hooks: Hooks = NO_HOOKS) -> torch.Tensor:
    """Video-MoVQ decode ``[F, 4, h, w]`` -> float frames ``[F, 3, 8h, 8w]`` in [0, 1], in
    the reference's chunks (``latents.chunk(F // 4)``, see :func:`decode_chunk_sizes`)
    unless ``chunk_size`` is given. ``hooks``: ``progress(done, total)`` after each chunk,
    cancel before each, device and dtype."""
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
                        chunk_size, progress=on_chunk)
