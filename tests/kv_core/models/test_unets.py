"""Tests of the keyframe and interpolation U-Nets (kv_core.unet, kv_core.unet_interpolation).

Equivalence with the official code is checked by the golden runner (tests/kv_core/test_golden.py,
kinds t2v_unet_*, interp_unet); these tests cover sizes, building, modes, dtypes, options
and the attention semantics on tiny random networks.
"""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kv_core.models.layers import Attention, LayerFactory
from kv_core.models.unet import KeyframeUNet, OFFICIAL_CONFIG as KEYFRAME_CONFIG
from kv_core.models.unet_interpolation import InterpolationUNet, OFFICIAL_CONFIG as INTERP_CONFIG
from tiny_unets import TINY_INTERP, TINY_KEYFRAME, interp_inputs, keyframe_inputs, n_params, randomize, run_interp


# ------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("cls, config, expected", [
    (KeyframeUNet, KEYFRAME_CONFIG, 4_149_077_956),
    (InterpolationUNet, INTERP_CONFIG, 4_038_236_008),
    (InterpolationUNet, {**INTERP_CONFIG, "add_new_temporal_params": False}, 3_979_941_530),
])
def test_official_parameter_counts(cls, config, expected):
    net = cls(**config, device=torch.device("meta"))
    assert n_params(net) == expected
    assert all(p.is_meta for p in net.parameters())


def test_interpolation_time_downsample_is_refused():
    with pytest.raises(NotImplementedError, match="time_downsample"):
        InterpolationUNet(**{**TINY_INTERP, "time_downsample": (True, False)})


# ---------------------------------------------------------------------- building

@torch.no_grad()
def test_one_block_level_keeps_its_input_width():
    """Quirk U8: with num_blocks 1 the up level's channel list is cut to its first entry."""
    config = {**TINY_KEYFRAME, "num_blocks": (1, 2)}  # level 0: 8 -> 8 channels, so this is valid
    net = randomize(KeyframeUNet(**config))
    (pair,) = net.up_samples[-1].resnet_attn_blocks
    assert pair[0].resnet_blocks[0].projection.in_channels == 16  # 8 + 8 skip channels
    assert pair[2].resnet_blocks[-1].projection.out_channels == 8
    x, t, ctx, mask = keyframe_inputs(4)
    assert net(x, t, ctx, mask, mode="video", num_frames=2).shape == (4, 4, 8, 8)


@pytest.mark.parametrize("cls, config", [(KeyframeUNet, TINY_KEYFRAME), (InterpolationUNet, TINY_INTERP)])
def test_meta_build_and_assign_load_equals_normal_build(cls, config):
    torch.manual_seed(0)
    normal = randomize(cls(**config))
    meta = cls(**config, device="meta")
    meta.load_state_dict(normal.state_dict(), strict=True, assign=True)
    assert not any(p.is_meta for p in meta.parameters())
    with torch.no_grad():
        if cls is KeyframeUNet:
            x, t, ctx, mask = keyframe_inputs(6)
            for kw in (dict(mode="image"), dict(mode="video", num_frames=3)):
                assert torch.equal(normal(x, t, ctx, mask, **kw), meta(x, t, ctx, mask, **kw))
        else:
            inputs = interp_inputs(3)
            assert torch.equal(run_interp(normal, inputs, 3), run_interp(meta, inputs, 3))


class _Counting:
    """Mixin for operation classes: counts constructions and forward calls per class."""

    built: Counter = Counter()
    called: Counter = Counter()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _Counting.built[type(self).__name__] += 1

    def forward(self, *args, **kwargs):
        _Counting.called[type(self).__name__] += 1
        return super().forward(*args, **kwargs)


def counting_operations() -> SimpleNamespace:
    names = ["Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d", "GroupNorm", "LayerNorm", "Embedding"]
    return SimpleNamespace(**{n: type(n, (_Counting, getattr(nn, n)), {}) for n in names})


@pytest.mark.parametrize("cls, config", [(KeyframeUNet, TINY_KEYFRAME), (InterpolationUNet, TINY_INTERP)])
def test_injected_operations_build_every_weighted_layer(cls, config):
    ops = counting_operations()
    _Counting.built.clear()
    _Counting.called.clear()
    net = randomize(cls(**config, operations=ops))
    injected = tuple(vars(ops).values())
    weighted = [m for m in net.modules() if list(m.parameters(recurse=False))]
    for module in weighted:
        own = dict(module.named_parameters(recurse=False))
        if isinstance(module, injected):
            continue
        # only the learned merge scalars may live outside the operations' layers
        assert all(p.numel() == 1 for p in own.values()), f"{type(module).__name__} has {list(own)}"
    n_injected = sum(isinstance(m, injected) for m in net.modules())
    assert sum(_Counting.built.values()) == n_injected > 0
    for name in ("Linear", "Conv2d", "Conv3d", "ConvTranspose2d", "GroupNorm"):
        assert _Counting.built[name] > 0, name
    with torch.no_grad():
        if cls is KeyframeUNet:
            x, t, ctx, mask = keyframe_inputs(4)
            net(x, t, ctx, mask, mode="video", num_frames=2)
        else:
            run_interp(net, interp_inputs(2), 2)
            assert _Counting.built["Embedding"] == 1 and _Counting.called["Embedding"] == 1
    assert _Counting.called["Conv3d"] > 0 and _Counting.called["Linear"] > 0


class _ManualCast:
    """Mixin imitating ComfyUI's manual-cast operations: weights are stored in one dtype and
    cast to the input's dtype at every call."""

    comfy_cast_weights = True

    def forward(self, x, *args, **kwargs):
        stored = dict(self._parameters)
        try:
            for name, p in stored.items():
                if p is not None:
                    self._parameters[name] = p.to(x.dtype)
            return super().forward(x, *args, **kwargs)
        finally:
            self._parameters.update(stored)


def manual_cast_operations() -> SimpleNamespace:
    names = ["Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d", "GroupNorm", "LayerNorm"]
    ops = {n: type(n, (_ManualCast, getattr(nn, n)), {}) for n in names}
    return SimpleNamespace(Embedding=nn.Embedding, **ops)


@pytest.mark.parametrize("cls, config", [(KeyframeUNet, TINY_KEYFRAME), (InterpolationUNet, TINY_INTERP)])
@torch.no_grad()
def test_manual_cast_operations_compute_in_the_input_dtype(cls, config):
    """fp16-stored weights under manual-cast operations run in the caller's dtype (bf16 here);
    with plain layers the network runs in its weights' dtype whatever the input dtype."""
    plain = randomize(cls(**config))
    cast = cls(**config, operations=manual_cast_operations(), dtype=torch.float16).eval()
    cast.load_state_dict(plain.state_dict())
    plain.load_state_dict(cast.state_dict())  # the same fp16-rounded values, stored in float32
    if cls is KeyframeUNet:
        x, t, ctx, mask = keyframe_inputs(4)
        call = lambda net, x: net(x, t, ctx, mask, mode="video", num_frames=2)  # noqa: E731
    else:
        inputs = interp_inputs(2)
        x = inputs["x"]
        call = lambda net, x: run_interp(net, {**inputs, "x": x}, 2)  # noqa: E731
    # float32 input: computed in float32 from the stored fp16 values, exactly like `plain`
    assert torch.allclose(call(cast, x), call(plain, x), rtol=1e-5, atol=1e-6)
    got = call(cast, x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    assert call(plain.to(torch.float16), x.to(torch.bfloat16)).dtype == torch.float16


# ----------------------------------------------------------------------- attention

def reference_attention(att: Attention, x, context, mask):
    """The official formula: einsum scores, masked_fill(~mask, -finfo.max), softmax, in fp32."""
    att = att.float()
    heads = att.num_heads
    split = lambda t: t.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731
    q, k, v = split(att.to_query(x.float())), split(att.to_key(context.float())), split(att.to_value(context.float()))
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~mask[:, None, None, :], -torch.finfo(scores.dtype).max)
    out = torch.einsum("bhij,bhjd->bhid", scores.softmax(dim=-1), v)
    return att.output_layer(out.transpose(1, 2).flatten(2))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_masked_attention_matches_reference_semantics(dtype, tol):
    torch.manual_seed(0)
    att = Attention(16, 32, 24, head_dim=8, factory=LayerFactory())
    x, context = 3 * torch.randn(3, 7, 16), 3 * torch.randn(3, 5, 24)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    want = reference_attention(att, x, context, mask)
    # row 1 sees no key at all: the reference gives uniform weights, i.e. the mean value
    v = att.to_value(context[1]).mean(0)
    assert torch.allclose(want[1], att.output_layer(v).expand(7, -1), atol=1e-5)
    got = att.to(dtype)(x.to(dtype), context.to(dtype), mask)
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert (got.float() - want).abs().max() <= tol * want.abs().max()
    # an int 0/1 mask means the same as the bool mask
    assert torch.equal(att(x.to(dtype), context.to(dtype), mask.long()), got)
