"""Tests of the keyframe and interpolation U-Nets (kv_core.unet, kv_core.unet_interpolation).

Equivalence with the official code is checked by the golden runner (tests/test_golden.py,
kinds t2v_unet_*, interp_unet); these tests cover sizes, building, modes, dtypes, options
and the attention semantics on tiny random networks.
"""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from golden_support import golden_dir, load_cases
from kv_core.models.layers import Attention, LayerFactory
from kv_core.models.unet import KeyframeUNet, OFFICIAL_CONFIG as KEYFRAME_CONFIG
from kv_core.models.unet_interpolation import InterpolationUNet, OFFICIAL_CONFIG as INTERP_CONFIG

TINY_KEYFRAME = dict(
    model_channels=8, init_channels=8, num_channels=9, out_channels=4, time_embed_dim=16, context_dim=12,
    groups=4, head_dim=8, dim_mult=(1, 2), num_blocks=(2, 2), add_cross_attention=(False, True),
    add_self_attention=(True, True), noise_augmentation=True, motion_score=True,
)
TINY_INTERP = dict(
    model_channels=8, init_channels=8, num_channels=20, out_channels=12, time_embed_dim=16, context_dim=12,
    groups=4, head_dim=8, dim_mult=(1, 2), num_blocks=(2, 2), add_cross_attention=(False, True),
    add_self_attention=(True, True), time_downsample=(False, False), add_new_temporal_params=True,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter a non-trivial value (the official init zeroes merge scalars,
    temporal convs and norm MLPs, which would hide whole code paths)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in net.named_parameters():
        if p.numel() == 1:  # learned merge scalars
            p.copy_(0.2 + 0.6 * torch.rand(1, generator=gen))
        elif p.dim() == 1:
            base = 1.0 if name.endswith("weight") else 0.0
            p.copy_(base + 0.2 * (2 * torch.rand(p.shape, generator=gen) - 1))
        else:
            bound = p[0].numel() ** -0.5
            p.copy_(bound * (2 * torch.rand(p.shape, generator=gen) - 1))
    return net.eval()


def keyframe_inputs(batch: int, seed: int = 1, length: int = 5, size: int = 8):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 9, size, size, generator=gen)
    time = torch.randint(0, 1000, (batch,), generator=gen).float()
    context = torch.randn(batch, length, TINY_KEYFRAME["context_dim"], generator=gen)
    mask = torch.rand(batch, length, generator=gen) < 0.7
    mask[:, 0] = True
    return x, time, context, mask


def interp_inputs(groups: int, seed: int = 2, length: int = 5, size: int = 8):
    gen = torch.Generator().manual_seed(seed)
    n = 2 * groups
    return dict(
        x=torch.randn(n, 20, size, size, generator=gen),
        time=torch.randint(0, 1000, (n,), generator=gen),
        context=torch.randn(n, length, TINY_INTERP["context_dim"], generator=gen),
        context_mask=torch.rand(n, length, generator=gen) < 0.7,
        perturbation_time=torch.randint(0, 1000, (n,), generator=gen, dtype=torch.int32),
        skip_frames=torch.randint(0, 20, (n,), generator=gen, dtype=torch.int32),
        temporal_mask=torch.cat([torch.ones(groups), torch.zeros(groups)]),
    )


def run_interp(net, inputs, groups, **overrides):
    kw = {**inputs, **overrides}
    return net(kw.pop("x"), kw.pop("time"), kw.pop("context"), kw.pop("context_mask"), num_groups=groups, **kw)


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


# ---------------------------------------------------------------- keyframe modes


def _perturbed(net: nn.Module, prefix: str) -> nn.Module:
    """A copy of ``net`` with every parameter under ``prefix`` (substring) changed."""
    clone = KeyframeUNet(**TINY_KEYFRAME)
    clone.load_state_dict(net.state_dict())
    with torch.no_grad():
        hit = [p.add_(0.5) for n, p in clone.named_parameters() if prefix in n]
    assert hit, prefix
    return clone.eval()


@pytest.fixture(scope="module")
def keyframe_net():
    return randomize(KeyframeUNet(**TINY_KEYFRAME))


@torch.no_grad()
def test_image_mode_uses_image_in_layer_and_no_temporal_layer(keyframe_net):
    x, t, ctx, mask = keyframe_inputs(4)
    base = keyframe_net(x, t, ctx, mask, mode="image")
    unchanged = ["temporal_resnet_blocks", "temporal_attention", "to_temporal_embed",
                 "temporal_noise_aug_time_encoding", "temporal_motion_score_encoding"]
    for prefix in unchanged:
        assert torch.equal(_perturbed(keyframe_net, prefix)(x, t, ctx, mask, mode="image"), base), prefix
    in_layer_changed = _perturbed_exact(keyframe_net, "in_layer.weight")
    assert torch.equal(in_layer_changed(x, t, ctx, mask, mode="image"), base)
    assert not torch.allclose(_perturbed(keyframe_net, "image_in_layer")(x, t, ctx, mask, mode="image"), base)
    # rows are independent images
    x2 = x.clone()
    x2[1:] = torch.randn_like(x2[1:])
    assert torch.equal(keyframe_net(x2, t, ctx, mask, mode="image")[0], base[0])


def _perturbed_exact(net: nn.Module, key: str) -> nn.Module:
    clone = KeyframeUNet(**TINY_KEYFRAME)
    state = dict(net.state_dict())
    state[key] = state[key] + 0.5
    clone.load_state_dict(state)
    return clone.eval()


@torch.no_grad()
def test_video_mode_uses_in_layer_and_temporal_layers(keyframe_net):
    x, t, ctx, mask = keyframe_inputs(6)
    kw = dict(mode="video", num_frames=3, temporal_embed=torch.arange(3.0).repeat(2),
              noise_aug_time=torch.full((6,), 20, dtype=torch.int32), motion_score=torch.full((6,), 10))
    base = keyframe_net(x, t, ctx, mask, **kw)
    assert torch.equal(_perturbed_exact(keyframe_net, "image_in_layer.weight")(x, t, ctx, mask, **kw), base)
    for prefix in ["in_layer", "temporal_resnet_blocks", "temporal_attention", "to_temporal_embed",
                   "temporal_noise_aug_time_encoding", "temporal_motion_score_encoding"]:
        key = "in_layer.weight" if prefix == "in_layer" else None
        net = _perturbed_exact(keyframe_net, key) if key else _perturbed(keyframe_net, prefix)
        assert not torch.allclose(net(x, t, ctx, mask, **kw), base, atol=1e-6), prefix
    # frames of one video interact, the two videos (frames inner) do not
    x2 = x.clone()
    x2[4] += 1.0  # video 1, frame 1
    out2 = keyframe_net(x2, t, ctx, mask, **kw)
    assert torch.equal(out2[:3], base[:3])
    assert not torch.allclose(out2[3], base[3], atol=1e-6)
    # the embeddings of aug/motion are optional, frame indices default to arange per video
    no_extra = dict(mode="video", num_frames=3)
    assert not torch.allclose(keyframe_net(x, t, ctx, mask, **no_extra), base, atol=1e-6)
    assert torch.equal(keyframe_net(x, t, ctx, mask, **no_extra),
                       keyframe_net(x, t, ctx, mask, mode="video", num_frames=3, temporal_embed=kw["temporal_embed"]))


def test_mode_arguments_are_checked(keyframe_net):
    x, t, ctx, mask = keyframe_inputs(6)
    with pytest.raises(ValueError):
        keyframe_net(x, t, ctx, mask, mode="auto")
    with pytest.raises(ValueError):
        keyframe_net(x, t, ctx, mask, mode="image", num_frames=3)
    with pytest.raises(ValueError):
        keyframe_net(x, t, ctx, mask, mode="video")
    with pytest.raises(ValueError):
        keyframe_net(x, t, ctx, mask, mode="video", num_frames=4)


# ------------------------------------------------------------------ interpolation


@pytest.fixture(scope="module")
def interp_net():
    return randomize(InterpolationUNet(**TINY_INTERP))


@torch.no_grad()
def test_interpolation_temporal_mask_and_group_axis(interp_net):
    groups = 3
    inputs = interp_inputs(groups)
    base = run_interp(interp_net, inputs, groups)
    x2 = inputs["x"].clone()
    x2[1] += 1.0  # cond block, group 1
    x2[groups + 1] += 1.0  # uncond block, group 1
    out = run_interp(interp_net, {**inputs, "x": x2}, groups)
    # temporal mask 1 (cond rows): groups exchange information; 0 (uncond rows): they do not
    assert not torch.allclose(out[0], base[0], atol=1e-6)
    assert torch.equal(out[groups], base[groups])
    # the blocks (cond / uncond) never mix
    x3 = inputs["x"].clone()
    x3[groups:] = torch.randn_like(x3[groups:])
    assert torch.equal(run_interp(interp_net, {**inputs, "x": x3}, groups)[:groups], base[:groups])


@torch.no_grad()
def test_interpolation_defaults(interp_net):
    groups = 2
    inputs = interp_inputs(groups)
    n = 2 * groups
    explicit = run_interp(interp_net, inputs, groups, perturbation_time=torch.full((n,), 25.0),
                          skip_frames=torch.ones(n, dtype=torch.int32), temporal_mask=torch.ones(n))
    default = run_interp(interp_net, inputs, groups, perturbation_time=None, skip_frames=None, temporal_mask=None)
    assert torch.allclose(default, explicit, atol=1e-6)
    other = run_interp(interp_net, inputs, groups, perturbation_time=None, skip_frames=None)
    assert not torch.allclose(other, default, atol=1e-6)  # the given temporal mask matters


@torch.no_grad()
def test_interpolation_shortcut_quirk_and_fix(interp_net):
    groups = 2
    inputs = interp_inputs(groups)
    state = interp_net.state_dict()
    fixed = InterpolationUNet(**TINY_INTERP, fix_temporal_shortcut=True).eval()
    fixed.load_state_dict(state)
    base = run_interp(interp_net, inputs, groups)
    assert not torch.allclose(run_interp(fixed, inputs, groups), base, atol=1e-6)

    # official behaviour: the shortcut's temporal_post_downsample is dead, with the fix it is used
    dead = [k for k in state if ".temporal_post_downsample." in k and ".resnet_blocks." not in k]
    assert dead
    poked = {k: v + 0.5 if k in dead else v for k, v in state.items()}
    official = InterpolationUNet(**TINY_INTERP).eval()
    official.load_state_dict(poked)
    assert torch.equal(run_interp(official, inputs, groups), base)
    fixed_poked = InterpolationUNet(**TINY_INTERP, fix_temporal_shortcut=True).eval()
    fixed_poked.load_state_dict(poked)
    assert not torch.allclose(run_interp(fixed_poked, inputs, groups), run_interp(fixed, inputs, groups), atol=1e-6)


@pytest.mark.parametrize("options, keys", [
    (dict(merge_perturbation_time_with_diffusion_time=False, merge_perturbation_time_with_context=True),
     {"time_embed_context_merge"}),
    (dict(use_perturbation_time_embed=False, pass_skip_frames=False), set()),
])
@torch.no_grad()
def test_interpolation_time_embedding_options(options, keys):
    net = randomize(InterpolationUNet(**TINY_INTERP, **options))
    state = set(net.state_dict())
    optional = {"time_embed_merge", "time_embed_context_merge", "skip_merge", "skip_embeddings.weight"}
    assert {k for k in state if k in optional} | {k for k in state if k.startswith("perturbation_to_time_embed")} \
        == keys | ({"skip_merge", "skip_embeddings.weight"} if options.get("pass_skip_frames", True) else set())
    inputs = interp_inputs(2)
    base = run_interp(net, inputs, 2)
    later = run_interp(net, inputs, 2, perturbation_time=inputs["perturbation_time"] + 100)
    # the perturbation time reaches the network only through the context merge, if at all
    assert torch.equal(later, base) == (not keys)


def test_interpolation_keys_follow_add_new_temporal_params():
    with_new = set(InterpolationUNet(**TINY_INTERP, device="meta").state_dict())
    without = set(InterpolationUNet(**{**TINY_INTERP, "add_new_temporal_params": False}, device="meta").state_dict())
    extra = with_new - without
    assert without < with_new
    assert {"temporal_conv_in.temporal_merge", "temporal_conv_out.temporal_projection.weight"} <= extra
    assert all(".temporal_post_" in k or k.startswith("temporal_conv_") for k in extra)


# -------------------------------------------------------------------- dtypes


def _golden_case(kind: str):
    root = golden_dir()
    if not (root / "manifest.json").exists():
        pytest.skip("no golden folder")
    for case in load_cases(root):
        if case.kind == kind:
            return case
    pytest.skip(f"no {kind} case")


def _golden_network(case, cls, checkpoint, config):
    net = cls(**config, device="meta")
    net.load_state_dict(torch.load(case.path(checkpoint), weights_only=True)["unet"], strict=True, assign=True)
    return net.eval()


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).norm() / want.norm())


@pytest.mark.parametrize("kind", ["t2v_unet_video", "interp_unet"])
@torch.no_grad()
def test_half_precision_forward_is_close_to_fp32(kind):
    case = _golden_case(kind)
    inputs = dict(case.inputs)
    if kind == "interp_unet":
        net = _golden_network(case, InterpolationUNet, case.args["checkpoint"],
                              case.configs[case.args["config_key"]]["configs"])
        kw = dict(num_groups=case.args["num_predicted_groups"], perturbation_time=inputs.get("perturbation_time"),
                  skip_frames=inputs.get("skip_frames"), temporal_mask=inputs.get("temporal_mask"))
    else:
        net = _golden_network(case, KeyframeUNet, "t2v.pt", case.configs["t2v"]["configs"])
        kw = dict(mode="video", num_frames=case.args["num_frames"], temporal_embed=inputs["temporal_embed"],
                  noise_aug_time=inputs.get("noise_aug_time"), motion_score=inputs.get("motion_score"))
    args = [inputs[k] for k in ("x", "time", "context", "context_mask")]
    want = net(*args, **kw)
    assert torch.allclose(want, case.expected["out"], atol=case.spec["outputs"]["out"]["tolerance"]["atol"])
    for dtype, bound in ((torch.bfloat16, 0.15), (torch.float16, 0.05)):
        half = net.to(dtype)
        x, t, ctx, mask = args
        got = half(x, t, ctx, mask, **kw)  # float32 latents: the network casts them to its dtype
        assert got.dtype == dtype and torch.isfinite(got).all()
        err = relative_error(got, want)
        print(f"{kind} {dtype}: relative L2 error {err:.2e}")
        assert err < bound
        net.float()


@torch.no_grad()
def test_fp16_fully_masked_context_stays_finite(keyframe_net):
    net = KeyframeUNet(**TINY_KEYFRAME)
    net.load_state_dict(keyframe_net.state_dict())
    x, t, ctx, mask = keyframe_inputs(2)
    mask[1] = False  # a row whose every token is masked: uniform attention, never NaN
    want = net(x, t, ctx, mask, mode="image")
    got = net.half()(x.half(), t, ctx, mask, mode="image")
    assert torch.isfinite(want).all() and torch.isfinite(got).all()
    assert relative_error(got, want) < 0.03
