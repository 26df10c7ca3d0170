"""Loading every network into layers that create their weights only while a state dict is
loaded, as current ComfyUI's ``comfy.ops`` do with dynamic VRAM (simulated on the CPU by
tests/lazy_comfy_ops.py), for every weight dtype the loader nodes offer.

The loads go through the real kv_core loaders on the tiny release, with the operations
and dtypes the loader nodes pick (nodes/common.py ``weight_and_compute_dtype`` and
``operations_for``: layers that cast at run time whenever weight and compute dtype
differ, fp8 stored after a load in the compute dtype) and kv_core's own fp8-at-load path.
Each lazy load must give the very tensors of the same load into ordinary layers, and the
strict checks must keep their errors. tests/test_loaders_lazy_host.py runs the loader
nodes themselves inside ComfyUI with these layers.
"""
from __future__ import annotations

import pytest
import torch

from kv_core import checkpoints as ck
from kv_core.dtypes import store_fp8
from kv_core.tiny import write_tiny_release
from lazy_comfy_ops import is_lazy, lazy_operations
from test_checkpoints import CastOps


class PlainOps:
    """torch.nn layers: what ``comfy.ops.disable_weight_init`` is to kv_core."""

    Linear, Conv1d, Conv2d, Conv3d = torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d
    ConvTranspose2d, GroupNorm, LayerNorm, Embedding = (torch.nn.ConvTranspose2d, torch.nn.GroupNorm,
                                                        torch.nn.LayerNorm, torch.nn.Embedding)


LAZY_PLAIN, LAZY_CAST = lazy_operations(PlainOps), lazy_operations(CastOps)
FP8 = torch.float8_e4m3fn

# (case, operations namespace, dtype passed to the kv_core loader, fp8 stored afterwards)
# default on a CPU: fp32 weights and compute (disable_weight_init); on a GPU: fp16/bf16
# the same way; bf16/fp16 on a CPU: casting layers (manual_cast) computing in fp32;
# fp8_e4m3fn: casting layers, loaded in the compute dtype then stored as fp8 (kv_core.dtypes.store_fp8);
# kv_core's dtype="fp8" keeps the fp8 policy at load time.
CASES = [
    ("default-cpu", PlainOps, LAZY_PLAIN, torch.float32, False),
    ("default-gpu-fp16", PlainOps, LAZY_PLAIN, torch.float16, False),
    ("default-gpu-bf16", PlainOps, LAZY_PLAIN, torch.bfloat16, False),
    ("bf16", CastOps, LAZY_CAST, torch.bfloat16, False),
    ("fp16", CastOps, LAZY_CAST, torch.float16, False),
    ("fp8_e4m3fn", CastOps, LAZY_CAST, torch.float32, True),
    ("kv_core-fp8-at-load", CastOps, LAZY_CAST, FP8, False),
    ("as-stored", CastOps, LAZY_CAST, None, False),
]
NETWORKS = [ck.KEYFRAME_UNET, ck.INTERPOLATION_UNET, ck.MOVQ, ck.VIDEO_MOVQ, ck.TEXT_PROJECTIONS]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_tiny_release(tmp_path_factory.mktemp("tiny"), seed=3)


def _store_fp8(module):
    """What the loader nodes do after a load: matrices of casting layers in fp8."""
    return store_fp8(module, FP8)


def _load(network, release, operations, dtype):
    """The network as the loader nodes load it; text projections as a dict of modules."""
    kw = dict(operations=operations, dtype=dtype)
    if network == ck.KEYFRAME_UNET:
        return ck.load_keyframe_unet(release.t2v, release.configs, **kw)[0]
    if network == ck.INTERPOLATION_UNET:
        return ck.load_interpolation_unet(release.interpolation, release.configs, **kw)[0]
    if network in (ck.MOVQ, ck.VIDEO_MOVQ):
        video = network == ck.VIDEO_MOVQ
        return ck.load_movq(release.video_movq if video else release.movq, release.configs, video=video, **kw)
    return torch.nn.ModuleDict(ck.load_text_projections(release.t5_projections, **kw))


def _lazy_layers_before_load(network, release, operations) -> int:
    """How many layers of the network as built (before any load) hold no weight yet."""
    if network == ck.TEXT_PROJECTIONS:
        from kv_core.models.text_projection import TextProjection

        module = TextProjection(8, 8, operations=operations, device="meta")
    else:
        cfg = ck.config_from(release.configs, network)
        module = ck.build_network(network, cfg, operations=operations)
    return sum(1 for m in module.modules() if is_lazy(m) and getattr(m, "weight", None) is None)


@pytest.mark.parametrize("case,ops,lazy_ops,dtype,fp8", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("network", NETWORKS)
def test_every_network_loads_into_lazy_layers(release, network, case, ops, lazy_ops, dtype, fp8):
    # the simulation is in force (the MoVQs are convolutions and norms only: nothing lazy)
    assert (_lazy_layers_before_load(network, release, lazy_ops) > 0) == (network not in (ck.MOVQ, ck.VIDEO_MOVQ))
    eager = _load(network, release, ops, dtype)
    lazy = _load(network, release, lazy_ops, dtype)
    if fp8:
        eager, lazy = _store_fp8(eager), _store_fp8(lazy)
    want, got = eager.state_dict(), lazy.state_dict()
    assert list(got) == list(want)  # every key, the lazily created ones included, in order
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype and got[key].device.type == "cpu", key
        assert torch.equal(got[key].float(), tensor.float()), key
    assert not any(p.requires_grad or p.is_meta for p in lazy.parameters())
    assert not any(m.training for m in lazy.children())
    assert all(isinstance(m.weight, torch.nn.Parameter) for m in lazy.modules() if is_lazy(m))
    if dtype is not None and dtype != FP8 and not fp8:
        assert {t.dtype for t in got.values() if t.is_floating_point()} <= {dtype, torch.float32}


@pytest.mark.parametrize("case,ops,lazy_ops,dtype,fp8", [CASES[0], CASES[5]], ids=[CASES[0][0], CASES[5][0]])
def test_lazy_networks_compute_what_ordinary_ones_do(release, case, ops, lazy_ops, dtype, fp8):
    """The lazily created weights and biases are the ones used: a keyframe U-Net step and
    the text projections give exactly the outputs of ordinary layers."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 9, 8, 8, generator=g)
    time = torch.tensor([500])
    context = torch.randn(1, 5, 16, generator=g)
    mask = torch.ones(1, 5, dtype=torch.bool)
    states = torch.randn(1, 5, 16, generator=g)
    outs = []
    for operations in (ops, lazy_ops):
        unet = _load(ck.KEYFRAME_UNET, release, operations, dtype)
        projections = _load(ck.TEXT_PROJECTIONS, release, operations, dtype)
        if fp8:
            unet, projections = _store_fp8(unet), _store_fp8(projections)
        with torch.no_grad():
            outs.append([unet(x, time, context, mask, mode="image"), *(p(states) for p in projections.values())])
    for want, got in zip(*outs):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# --- the strict checks hold with lazy layers (which accept any shape themselves) -------------

def _modified(tmp_path, path, change):
    data = torch.load(path, weights_only=True)
    change(data)
    out = tmp_path / f"modified_{path.name}"
    torch.save(data, out)
    return out


def test_lazy_layer_shape_mismatch_is_refused(tmp_path, release):
    def change(data):
        data["unet"]["to_time_embed.1.weight"] = data["unet"]["to_time_embed.1.weight"][:, :-1].clone()

    path = _modified(tmp_path, release.t2v, change)
    with pytest.raises(ck.CheckpointError, match=r"shape mismatches: to_time_embed\.1\.weight \(16, 7\) "
                                                 r"\(network expects \(16, 8\)\)"):
        ck.load_keyframe_unet(path, release.configs, operations=LAZY_CAST)


def test_lazy_layer_missing_and_unexpected_keys_are_refused(tmp_path, release):
    path = _modified(tmp_path, release.t2v, lambda d: d["unet"].pop("to_time_embed.1.bias"))
    with pytest.raises(ck.CheckpointError, match=r"missing keys: to_time_embed\.1\.bias"):
        ck.load_keyframe_unet(path, release.configs, operations=LAZY_PLAIN)
    # the projection's Linear is declared without bias: a bias in the file is unexpected
    path = _modified(tmp_path, release.t5_projections,
                     lambda d: d["projection_base"].__setitem__("0.bias", torch.zeros(16)))
    with pytest.raises(ck.CheckpointError, match=r"unexpected keys: 0\.bias"):
        ck.load_text_projections(path, operations=LAZY_CAST)


def test_lazy_linear_bias_is_expected_from_its_declaration(release):
    """A lazy Linear declared with a bias needs one in the file (the keyframe U-Net's
    time embedding), one declared without must not get one (the text projection)."""
    cfg = ck.config_from(release.configs, ck.KEYFRAME_UNET)
    unet = ck.build_network(ck.KEYFRAME_UNET, cfg, operations=LAZY_PLAIN)
    shapes = ck.expected_shapes(unet)
    assert "to_time_embed.1.weight" not in unet.state_dict()
    assert shapes["to_time_embed.1.weight"] == (cfg["time_embed_dim"], cfg["model_channels"])
    assert shapes["to_time_embed.1.bias"] == (cfg["time_embed_dim"],)
    assert ck.expected_shapes(unet) == ck.expected_shapes(ck.build_network(ck.KEYFRAME_UNET, cfg))
