"""Tiny random U-Nets loaded as the loaders load them (one ModelPatcher each, fp32, CPU) and a
text condition, for the core-sampling tests (``pack``: the pack imported in-process)."""
import pytest
import torch

from core_sampling_runs import Text


@pytest.fixture(scope="module")
def nets(pack):
    from kvpack.kv_core import checkpoints as ck, tiny
    from kvpack.nodes.host import networks

    g = torch.Generator().manual_seed(0)

    def net(kind):
        module, null = tiny.random_unet(kind, g)
        cpu = torch.device("cpu")
        return networks.wrap(module, kind, "tiny", torch.float32, load_device=cpu, offload_device=cpu,
                             null_embedding=null)

    keyframe, interpolation = net(ck.KEYFRAME_UNET), net(ck.INTERPOLATION_UNET)
    text = Text(pack, torch.randn(1, 5, tiny.TINY_CONTEXT_DIM, generator=g), torch.tensor([[1, 1, 1, 0, 0]]))
    return dict(keyframe=keyframe, interpolation=interpolation, text=text, g=g)
