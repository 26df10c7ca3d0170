"""The U-Nets' modes on tiny random networks: the keyframe U-Net in image and video mode, the
interpolation U-Net's groups and options, and half precision against fp32 (the golden runner,
tests/kv_core/test_golden.py, pins fp32 against the official code)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from golden_support import golden_dir, load_cases
from kv_core.models.unet import KeyframeUNet
from kv_core.models.unet_interpolation import InterpolationUNet
from tiny_unets import TINY_INTERP, TINY_KEYFRAME, interp_inputs, keyframe_inputs, randomize, run_interp


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


@pytest.mark.golden
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
