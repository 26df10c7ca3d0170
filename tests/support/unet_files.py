"""A tiny release's U-Nets as files (tests/kv_core/checkpoints/test_unet_prefixes.py,
tests/nodes/test_core_save_model.py): the official ``{unet, null_embedding}`` dicts, a loader
by network, and an exact comparison of two loaded networks."""
from __future__ import annotations

import torch

from kv_core import checkpoints as ck
from kv_core.tiny import write_tiny_release

RELEASE_NAMES = {ck.KEYFRAME_UNET: "t2v.pt", ck.INTERPOLATION_UNET: "interpolation.pt"}


def tiny_release(tmp_path_factory):
    return write_tiny_release(tmp_path_factory.mktemp("tiny"), seed=3)


def load_unet(network, path, configs):
    load = ck.load_keyframe_unet if network == ck.KEYFRAME_UNET else ck.load_interpolation_unet
    return load(path, configs)


def official(release, network):
    data = torch.load(release.folder / RELEASE_NAMES[network], weights_only=True)
    return data["unet"], data["null_embedding"]


def same(a, b):
    (net_a, null_a), (net_b, null_b) = a, b
    sa, sb = net_a.state_dict(), net_b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)
    torch.testing.assert_close(null_a, null_b, rtol=0, atol=0)
