"""Tests of kv_core.movq beyond the golden cases: official layout, quirk-M1 option,
video chunking, dtypes, meta-device loading and injected layer classes."""
import types

import pytest
import torch
from torch import nn

from kv_core.models.layers import LayerFactory
from kv_core.models.movq import (MoVQ, OFFICIAL_IMAGE_CONFIG, OFFICIAL_VIDEO_CONFIG, decode_video, to_uint8_frames,
                                 video_chunk_sizes)
from kv_core.models.movq_blocks import MoVQSpatialNorm

# Two levels (factor 2), attention on level 1 of encoder and decoder, 32-channel groups.
TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), in_channels=3,
            out_ch=3, resolution=16, z_channels=4, dropout=0.0, double_z=False)
TINY_VIDEO = dict(TINY, temporal=True, temporal_mid_blocks=True, temporal_attention_block=True,
                  build_3D_decoder=False, temporal_blocks=False,
                  temporal_kernel_size=(3, 3, 3), temporal_conv_padding=(1, 1, 1))


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tiny(config=TINY, seed=0, **kwargs) -> MoVQ:
    torch.manual_seed(seed)
    movq = MoVQ(**config, **kwargs).eval()
    with torch.no_grad():  # non-trivial temporal merges (the default zeros would hide them)
        for name, p in movq.named_parameters():
            if "temporal_merge" in name:
                p.uniform_(0.2, 0.8)
    return movq


def _latents(n, seed=1, size=6):
    return torch.randn(n, 4, size, size, generator=torch.Generator().manual_seed(seed))


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


# --- official layout -----------------------------------------------------------------

def test_official_parameter_counts():
    image = MoVQ(**OFFICIAL_IMAGE_CONFIG, device="meta")
    video = MoVQ(**OFFICIAL_VIDEO_CONFIG, device="meta")
    assert _count(image) == 270_603_567
    assert _count(video) == 666_131_275
    assert _count(video.decoder) == 556_645_919


def test_official_attention_placement_and_keys():
    keys = set(MoVQ(**OFFICIAL_VIDEO_CONFIG, device="meta").state_dict())
    # resolution 256, attn_resolutions [32]: attention on the lowest level only (32 = 256 / 8)
    assert "encoder.down.3.attn.1.q.weight" in keys
    assert not any(k.startswith(("encoder.down.2.attn", "decoder.up.2.attn")) for k in keys)
    assert "decoder.up.3.attn.2.norm.conv_y.weight" in keys
    assert "decoder.up.3.temporal_attn.2.norm.conv_b.bias" in keys  # dead weights (M2), still loaded
    assert "decoder.mid.temporal_attn_1.proj_out.weight" in keys
    assert "decoder.up.0.block.2.temporal_projection2.weight" in keys
    # channels 1024 -> 512 on level 2 and 512 -> 256 on level 0 (ch_mult 1, 2, 2, 4)
    shortcuts = {k for k in keys if "nin_shortcut.weight" in k}
    assert shortcuts == {"encoder.down.1.block.0.nin_shortcut.weight", "encoder.down.3.block.0.nin_shortcut.weight",
                         "decoder.up.2.block.0.nin_shortcut.weight", "decoder.up.0.block.0.nin_shortcut.weight"}
    assert "decoder.mid.block_1.temporal_merge1" in keys
    image_keys = set(MoVQ(**OFFICIAL_IMAGE_CONFIG, device="meta").state_dict())
    assert image_keys < keys
    assert not any("temporal" in k for k in image_keys)


@pytest.mark.parametrize("option", ["build_3D_decoder", "temporal_blocks", "flicker_augmentation"])
def test_unused_reference_options_raise(option):
    with pytest.raises(NotImplementedError, match=option):
        MoVQ(**dict(TINY_VIDEO, **{option: True}), device="meta")


def test_channels_must_fit_32_groups():
    with pytest.raises(ValueError, match="32"):
        MoVQ(**dict(TINY, ch=16), device="meta")


# --- shapes and building blocks --------------------------------------------------------

def test_encode_decode_shapes():
    movq = _tiny()
    with torch.no_grad():
        z = movq.encode(torch.rand(2, 3, 16, 24) * 2 - 1)
        assert z.shape == (2, 4, 8, 12)
        assert movq.decode(z).shape == (2, 3, 16, 24)


def test_spatial_norm_broadcast_equals_resized_latent():
    torch.manual_seed(0)
    norm = MoVQSpatialNorm(64, zq_channels=4, factory=LayerFactory())
    x, zq = torch.randn(3, 64, 16, 12), torch.randn(3, 4, 4, 3)
    with torch.no_grad():
        up = nn.functional.interpolate(zq, size=(16, 12), mode="nearest")
        want = norm.norm_layer(x) * norm.conv_y(up) + norm.conv_b(up)
        torch.testing.assert_close(norm(x, zq), want)
        # a batch-1 latent modulates every item (the M1 path)
        torch.testing.assert_close(norm(x, zq[:1]), norm.norm_layer(x) * norm.conv_y(up[:1]) + norm.conv_b(up[:1]))


# --- quirk M1 and its fix ----------------------------------------------------------------

def test_quirk_m1_attention_norms_use_first_item():
    movq, z = _tiny(), _latents(3)
    with torch.no_grad():
        batch = movq.decode(z)
        fixed = movq.decode(z, per_item_attention_norm=True)
        alone = torch.cat([movq.decode(z[i:i + 1]) for i in range(3)])
        # reference: item i is decoded as if the attention norms saw item 0's latent
        for i in range(3):
            pair = movq.decode(torch.stack([z[0], z[i]]))
            torch.testing.assert_close(batch[i], pair[1], rtol=1e-5, atol=1e-5)
    # the fix makes items independent and leaves item 0 as it was
    torch.testing.assert_close(fixed, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fixed[0], batch[0], rtol=1e-5, atol=1e-5)
    for i in (1, 2):
        assert (fixed[i] - batch[i]).abs().max() > 1e-3


def test_quirk_m1_fix_as_module_default():
    z = _latents(2)
    reference, fixed = _tiny(), _tiny(per_item_attention_norm=True)
    with torch.no_grad():
        torch.testing.assert_close(fixed.decode(z), reference.decode(z, per_item_attention_norm=True))
        torch.testing.assert_close(fixed.decode(z, per_item_attention_norm=False), reference.decode(z))


def test_video_decoder_batch_is_the_time_axis():
    movq, z = _tiny(TINY_VIDEO), _latents(4)
    with torch.no_grad():
        whole = movq.decode(z)
        reversed_order = movq.decode(z.flip(0)).flip(0)
        first_alone = movq.decode(z[:1])
    # frames interact: order and context matter
    assert (whole - reversed_order).abs().max() > 1e-3
    assert (whole[:1] - first_alone).abs().max() > 1e-3


# --- video chunking ----------------------------------------------------------------------

@pytest.mark.parametrize("n, sizes", [(13, [5, 5, 3]), (21, [5, 5, 5, 5, 1]), (9, [5, 4]),
                                      (12, [4, 4, 4]), (4, [4]), (7, [7]), (3, [3]), (1, [1])])
def test_chunk_sizes(n, sizes):
    assert video_chunk_sizes(n) == sizes


def test_chunk_sizes_follow_torch_chunk():
    for n in range(4, 200):
        assert video_chunk_sizes(n) == [len(c) for c in torch.arange(n).chunk(n // 4)], n


def test_chunk_sizes_user_choice_and_errors():
    assert video_chunk_sizes(13, chunk_size=4) == [4, 4, 4, 1]
    assert video_chunk_sizes(3, chunk_size=8) == [3]
    with pytest.raises(ValueError):
        video_chunk_sizes(13, chunk_size=0)
    with pytest.raises(ValueError):
        video_chunk_sizes(0)


def _decode_in_chunks(movq, z, sizes):
    with torch.no_grad():
        return torch.cat([movq.decode(c) for c in z.split(sizes)]).add(1).div(2).clamp(0, 1)


def test_decode_video_reference_chunks_and_progress():
    movq, z = _tiny(TINY_VIDEO), _latents(13, size=4)
    calls = []
    frames = decode_video(movq, z, progress=lambda i, total: calls.append((i, total)))
    assert frames.dtype == torch.float32 and frames.shape == (13, 3, 8, 8)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    torch.testing.assert_close(frames, _decode_in_chunks(movq, z, [5, 5, 3]))
    assert float(frames.min()) >= 0 and float(frames.max()) <= 1


def test_decode_video_short_video_is_one_chunk():
    movq, z = _tiny(TINY_VIDEO), _latents(3, size=4)
    torch.testing.assert_close(decode_video(movq, z), _decode_in_chunks(movq, z, [3]))
    assert decode_video(movq, z[:1]).shape == (1, 3, 8, 8)


def test_decode_video_chunk_size_changes_temporal_context():
    movq, z = _tiny(TINY_VIDEO), _latents(8, size=4)
    small = decode_video(movq, z, chunk_size=3)
    torch.testing.assert_close(small, _decode_in_chunks(movq, z, [3, 3, 2]))
    assert (small - decode_video(movq, z)).abs().max() > 1e-4


def test_to_uint8_frames_truncates():
    frames = torch.tensor([0.0, 0.5, 0.999, 1.0, 1 / 255 - 1e-6, 2 / 255]).view(1, 1, 2, 3).expand(1, 3, 2, 3)
    out = to_uint8_frames(frames)
    assert out.dtype == torch.uint8 and out.shape == (1, 2, 3, 3)
    assert out[0, :, :, 0].flatten().tolist() == [0, 127, 254, 255, 0, 2]


# --- dtypes, meta loading, injected operations --------------------------------------------

@pytest.mark.parametrize("config", [TINY, TINY_VIDEO], ids=["image", "video"])
def test_bf16_close_to_fp32(config):
    movq = _tiny(config)
    images, z = torch.rand(2, 3, 16, 16) * 2 - 1, _latents(3)
    with torch.no_grad():
        want_z, want_x = movq.encode(images), movq.decode(z)
        movq.to(torch.bfloat16)
        got_z, got_x = movq.encode(images), movq.decode(z)  # fp32 inputs are cast
    assert got_z.dtype == got_x.dtype == torch.bfloat16
    assert _rel(got_z, want_z) < 0.05
    assert _rel(got_x, want_x) < 0.05


def test_meta_build_and_assign_load_equals_normal_build():
    movq = _tiny(TINY_VIDEO)
    state_dict = movq.state_dict()
    meta = MoVQ(**TINY_VIDEO, device="meta")
    assert list(meta.state_dict()) == list(state_dict)
    meta.load_state_dict(state_dict, strict=True, assign=True)
    meta.eval()
    assert not any(p.is_meta for p in meta.parameters())
    z, images = _latents(3), torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(meta.decode(z), movq.decode(z), rtol=0, atol=0)
        torch.testing.assert_close(meta.encode(images), movq.encode(images), rtol=0, atol=0)


def test_injected_operations_are_used():
    built, called = [], []

    def counting(base):
        class Counted(base):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                built.append(type(self).__name__)

            def forward(self, *args, **kwargs):
                called.append(type(self).__name__)
                return super().forward(*args, **kwargs)

        Counted.__name__ = base.__name__
        return Counted

    ops = types.SimpleNamespace(**{name: counting(getattr(nn, name)) for name in (
        "Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d", "GroupNorm", "LayerNorm", "Embedding")})
    movq = MoVQ(**TINY_VIDEO, operations=ops, dtype=torch.float64)
    injected = tuple(vars(ops).values())
    for name, module in movq.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if own and not isinstance(module, injected):
            # only the learned temporal merge scalars live outside the layer classes
            assert all(n.startswith("temporal_merge") for n in own), (name, own)
    assert {"Conv2d", "Conv3d", "GroupNorm"} <= set(built)
    assert all(p.dtype == torch.float64 for p in movq.parameters())
    with torch.no_grad():
        movq.decode(_latents(2).double())
    assert {"Conv2d", "Conv3d", "GroupNorm"} <= set(called)
