"""Decode holds its output once: ``kv_core.stages.decode_images`` fills one IMAGE batch
(``FrameBuffer``) chunk by chunk, every decode path (an encoded video restored to its size, a
batch of generated videos, a long video), and gives exactly what ``decode_frames`` followed by
``restore_frames`` and the IMAGE layout give. The Decode node's peak host memory:
tests/nodes/test_decode_memory.py."""
from __future__ import annotations

import pytest
import torch

from kv_core import tiny
from kv_core.checkpoints import VIDEO_MOVQ, build_network
from kv_core.stages.decode import FrameBuffer, decode_frames, decode_images
from kv_core.video_input import plan_fit, restore_frames


@pytest.fixture(scope="module")
def video_movq():
    torch.manual_seed(0)
    return build_network(VIDEO_MOVQ, tiny.TINY_VIDEO_MOVQ_CONFIG, device="cpu", dtype=torch.float32).eval()


@pytest.mark.parametrize("mode,max_side", [("pad", 0), ("scale", 40), ("crop", 0)])
def test_decode_images_equals_decode_restore_and_layout(video_movq, mode, max_side):
    fit = plan_fit(50, 30, 16, mode, max_side)
    latents = torch.randn(9, 4, fit.net_height // 8, fit.net_width // 8, generator=torch.Generator().manual_seed(1))
    want = restore_frames(decode_frames(video_movq, latents), fit).movedim(1, -1)
    got = decode_images(video_movq, latents, lambda chunk: restore_frames(chunk, fit))
    assert got.shape == (9, *fit.output_size[::-1], 3) and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_videos_of_a_batch_fill_one_buffer_in_order(video_movq):
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 4, 2, 3, generator=g), torch.randn(6, 4, 2, 3, generator=g)
    buffer = FrameBuffer(11)
    first = decode_images(video_movq, a, into=buffer, chunk_size=2)
    second = decode_images(video_movq, b, into=buffer, chunk_size=2)
    images = buffer.result()
    assert images.shape == (11, 16, 24, 3)
    assert first.data_ptr() == images.data_ptr() and second.data_ptr() == images[5:].data_ptr()
    torch.testing.assert_close(images, torch.cat([decode_frames(video_movq, a, chunk_size=2),
                                                  decode_frames(video_movq, b, chunk_size=2)]).movedim(1, -1),
                               rtol=0, atol=1e-6)


def test_a_buffer_refuses_frames_of_another_size_and_an_incomplete_result():
    buffer = FrameBuffer(3)
    buffer.write(torch.zeros(2, 3, 4, 4))
    with pytest.raises(RuntimeError, match="2 of 3 frames"):
        buffer.result()
    with pytest.raises(ValueError, match="same size"):
        buffer.write(torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="4 frames written to a buffer of 3"):
        buffer.write(torch.zeros(2, 3, 4, 4))


def test_the_decoder_hands_each_chunk_to_the_sink_and_keeps_nothing(video_movq):
    latents = torch.randn(9, 4, 2, 2, generator=torch.Generator().manual_seed(3))
    seen = []
    assert decode_frames(video_movq, latents, sink=lambda first, frames: seen.append((first, frames.clone()))) is None
    assert [(first, f.shape[0]) for first, f in seen] == [(0, 5), (5, 4)]  # the release's chunks of 9 frames
    torch.testing.assert_close(torch.cat([f for _, f in seen]), decode_frames(video_movq, latents), rtol=0, atol=0)
