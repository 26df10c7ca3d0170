"""Core Save Model of the pack's core MODEL writes a file the pack's loaders read back."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from kv_core import checkpoints as ck
from unet_files import RELEASE_NAMES, load_unet as _load, same as _same, tiny_release


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return tiny_release(tmp_path_factory)


@pytest.mark.parametrize("network", [ck.KEYFRAME_UNET, ck.INTERPOLATION_UNET])
def test_core_save_model_of_the_pack_model_loads_back(tmp_path, pack, release, network):
    """Core Save Model (``comfy.sd.save_checkpoint`` with the MODEL alone, what
    ``ModelSave`` calls) of the core MODEL of a loaded U-Net writes a file the loaders read
    back as the same network, null embedding included."""
    import comfy.sd

    from kvpack.nodes import core_sampling
    from kvpack.nodes.host import networks

    module, null = _load(network, release.folder / RELEASE_NAMES[network], release.folder / "configs.json")
    cpu = torch.device("cpu")
    wrapped = networks.wrap(module, network, RELEASE_NAMES[network], torch.float32, load_device=cpu,
                            offload_device=cpu, null_embedding=null)
    node = core_sampling.KandinskyVideoKeyframeModel if network == ck.KEYFRAME_UNET \
        else core_sampling.KandinskyVideoInterpolationModel
    model = node.execute(**{node.INPUT: wrapped})
    model = (model.result if hasattr(model, "result") else model)[0]
    path = tmp_path / "saved.safetensors"
    comfy.sd.save_checkpoint(str(path), model, metadata={"format": "pt"})
    keys = set(load_file(str(path)))
    assert any(k.startswith("net.") for k in keys) and "null_embedding" in keys
    _same(_load(network, path, release.folder / "configs.json"), (module, null))
