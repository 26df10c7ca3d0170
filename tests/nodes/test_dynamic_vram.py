"""Dynamic VRAM: the pack's patchers are the host's own class, reproduced on the CPU.

Current ComfyUI loads its models into ``comfy.model_patcher.CoreModelPatcher`` (rebound to
``ModelPatcherDynamic`` when dynamic VRAM is on), asks ``patcher.is_dynamic()``, loads the
weights with ``assign=patcher.is_dynamic()``, keeps every weight in host memory and streams
it to the GPU layer by layer at run time, and demotes a clone to the legacy ``ModelPatcher``
(``clone(disable_dynamic=True)``, e.g. under weight hooks) by loading the model again
through the patcher's ``cached_patcher_init``. 0.3.75 has none of it (the legacy path).

:class:`EmulatedDynamicPatcher` is that behaviour on 0.3.75's machinery: ``is_dynamic()``,
a load that leaves every weight where it is and casts it per layer at run time (a partial
load of no bytes), and the demotion through ``cached_patcher_init``. The loaders run inside
this process with the pinned ComfyUI's modules, on the tiny release.
"""
from __future__ import annotations

import pytest
import torch

from kv_core.tiny import write_tiny_release


@pytest.fixture(scope="module")
def host(pack, tmp_path_factory):
    import folder_paths
    release = write_tiny_release(tmp_path_factory.mktemp("tiny"), seed=5)
    folder_paths.add_model_folder_path("kandinsky_video", str(release.folder))
    return pack


@pytest.fixture
def dynamic_host(host, monkeypatch):
    """The host with dynamic VRAM on: ``CoreModelPatcher`` is the dynamic patcher."""
    import comfy.model_patcher as mp

    class EmulatedDynamicPatcher(mp.ModelPatcher):
        loads = []

        def is_dynamic(self):
            return True

        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
            EmulatedDynamicPatcher.loads.append(self)
            # nothing resident: every comfy.ops layer casts its weight to the device per call
            return super().load(device_to, lowvram_model_memory=1, force_patch_weights=force_patch_weights,
                                full_load=False)

        def clone(self, disable_dynamic=False, model_override=None):
            if disable_dynamic:
                function, args = self.cached_patcher_init
                legacy = function(*args, disable_dynamic=True)
                legacy.patches = {k: v[:] for k, v in self.patches.items()}
                return legacy
            n = super().clone()
            n.cached_patcher_init = getattr(self, "cached_patcher_init", None)
            return n

    monkeypatch.setattr(mp, "CoreModelPatcher", EmulatedDynamicPatcher, raising=False)
    return EmulatedDynamicPatcher


NETWORKS = [("keyframe_unet", "t2v.pt"), ("interpolation_unet", "interpolation.pt"), ("movq", "movq.pt"),
            ("video_movq", "video_movq.pt")]


@pytest.mark.parametrize("kind, name", NETWORKS)
def test_on_a_host_without_dynamic_vram_the_legacy_patcher_stays(host, kind, name):
    import comfy.model_patcher as mp
    network = host.nodes.loaders.load_network(kind, name, "default")
    assert not hasattr(mp, "CoreModelPatcher")  # 0.3.75
    assert type(network.patcher) is mp.ModelPatcher


@pytest.mark.parametrize("kind, name", NETWORKS)
def test_with_dynamic_vram_the_loaders_use_the_hosts_patcher_and_assign_the_weights(host, dynamic_host, kind, name,
                                                                                   monkeypatch):
    assigned = []
    original = torch.nn.Module.load_state_dict

    def recording(self, state_dict, strict=True, assign=False):
        assigned.append(assign)
        return original(self, state_dict, strict=strict, assign=assign)

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", recording)
    network = host.nodes.loaders.load_network(kind, name, "default")
    assert isinstance(network.patcher, dynamic_host) and network.patcher.is_dynamic()
    assert assigned and all(assigned)  # the file's tensors become the weights (assign=True), as the host loads them
    assert network.patcher.cached_patcher_init[0] is not None
    if kind.endswith("unet"):
        core = host.nodes.host.core_path.core_model(network)
        assert isinstance(core, dynamic_host) and core.is_clone(network.patcher)


def _keyframes(host, network):
    import core_sampling_runs as tcs
    g = torch.Generator().manual_seed(0)
    text = tcs.Text(host, torch.randn(1, 5, 16, generator=g), torch.tensor([[1, 1, 1, 0, 0]]))
    first = host.nodes.host.sockets.FirstFrameCondition(torch.randn(4, 8, 8, generator=g) * 0.5, 64, 64)
    out = host.nodes.keyframes.KandinskyVideoKeyframes.execute(network, text, first, "medium", 20, 5.0, 2.0, 2, "ddim",
                                                               3, 2)
    out = out.result if hasattr(out, "result") else out
    return out[0]["samples"]


def test_a_stage_under_dynamic_vram_streams_the_weights_and_computes_the_legacy_result(host, dynamic_host):
    import comfy.model_management as mm
    legacy = _keyframes(host, host.nodes.loaders.load_network("keyframe_unet", "t2v.pt", "default"))
    network = host.nodes.loaders.load_network("keyframe_unet", "t2v.pt", "default")
    dynamic_host.loads.clear()
    streamed = _keyframes(host, network)
    assert network.patcher in dynamic_host.loads  # the stage loaded it through the dynamic patcher
    layers = [m for m in network.module.modules() if hasattr(m, "comfy_cast_weights")]
    assert layers and all(m.comfy_cast_weights for m in layers)  # every weight cast per call, none resident
    assert torch.equal(streamed, legacy)
    mm.unload_all_models()


def test_the_hosts_demotion_to_the_legacy_patcher_reloads_the_network(host, dynamic_host):
    import comfy.model_patcher as mp
    network = host.nodes.loaders.load_network("interpolation_unet", "interpolation.pt", "default")
    legacy = network.patcher.clone(disable_dynamic=True)
    assert type(legacy) is mp.ModelPatcher and not isinstance(legacy, dynamic_host)
    assert legacy.model is not network.patcher.model  # a fresh load, as the host's cached_patcher_init gives
    ours, theirs = network.patcher.model.state_dict(), legacy.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
