"""The decode stage: the video MoVQ turns latents ``[F, 4, h, w]`` into frames, in the
reference's chunks (``latents.chunk(F // 4)``), with progress and cancel between chunks."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..models.movq import decode_video, video_chunk_sizes
from ..sampling.loop import CancelFn, check_cancel, run_device


def decode_chunk_sizes(num_frames: int, chunk_size: Optional[int] = None) -> list[int]:
    """Frame counts of the chunks :func:`decode_frames` decodes one after another (the
    reference's ``chunk(F // 4)`` by default); for progress bars and memory estimates."""
    return video_chunk_sizes(num_frames, chunk_size)


@torch.inference_mode()
def decode_frames(video_movq, latents: torch.Tensor, *, chunk_size: Optional[int] = None,
                  progress: Callable[[int, int], None] | None = None,
                  cancel: CancelFn | None = None, device=None,
                  dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Video-MoVQ decode ``[F, 4, h, w]`` -> float frames ``[F, 3, 8h, 8w]`` in [0, 1], in
    the reference's chunks (``latents.chunk(F // 4)``, see :func:`decode_chunk_sizes`)
    unless ``chunk_size`` is given."""
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
        raise ValueError("latents must be a tensor [F, 4, h, w]")
    decode_chunk_sizes(int(latents.shape[0]), chunk_size)  # a bad chunk_size fails before decoding
    check_cancel(cancel)

    def on_chunk(done, total):
        if progress is not None:
            progress(done, total)
        if done < total:
            check_cancel(cancel)

    return decode_video(video_movq, latents.to(device=run_device(video_movq, device), dtype=dtype), chunk_size,
                        progress=on_chunk)
