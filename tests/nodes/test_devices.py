"""Devices (nodes/host/devices.py) and several GPUs on the core path, in this process with the
pinned ComfyUI's modules; newer hosts' device functions and other GPUs are emulated.

* the loaders' ``device`` list follows ``model_management.get_gpu_device_options()`` where the
  host has it (current ComfyUI), resolved by its ``resolve_gpu_device_option``;
* a device this machine lacks runs on the default device with a log line (as ComfyUI's
  loaders do), on either kind of host;
* core multi-GPU work units run deep copies of the MODEL (one per extra GPU) in threads at
  once: each copy is a whole network of its own whose attention settings the others never
  see (stand-in: two deep copies on the CPU, in two threads).
"""
from __future__ import annotations

import copy
import logging
import threading

import pytest
import torch



@pytest.fixture(scope="module")
def host(pack):
    return pack


def test_the_device_list_is_the_hosts_where_it_has_one(host, monkeypatch):
    import comfy.model_management as mm
    devices = host.nodes.host.devices
    assert not hasattr(mm, "get_gpu_device_options")  # 0.3.75: the pack's own list
    assert devices.device_choices()[:2] == ["default", "cpu"]
    monkeypatch.setattr(mm, "get_gpu_device_options", lambda: ["default", "cpu", "gpu:0", "gpu:1"], raising=False)
    resolved = []

    def resolve(option):
        resolved.append(option)
        return torch.device("cpu")  # this CPU stands in for the host's GPU

    monkeypatch.setattr(mm, "resolve_gpu_device_option", resolve, raising=False)
    assert devices.device_choices() == ["default", "cpu", "gpu:0", "gpu:1"]
    assert devices.device_input().options == ["default", "cpu", "gpu:0", "gpu:1"]
    assert devices.resolve_device("gpu:1", torch.device("meta")) == torch.device("cpu") and resolved == ["gpu:1"]


@pytest.mark.parametrize("newer_host", [False, True])
def test_a_saved_device_this_machine_lacks_runs_on_the_default_with_a_log_line(host, monkeypatch, caplog, newer_host):
    import comfy.model_management as mm
    devices = host.nodes.host.devices
    if newer_host:
        monkeypatch.setattr(mm, "get_gpu_device_options", lambda: ["default", "cpu"], raising=False)
        monkeypatch.setattr(mm, "resolve_gpu_device_option", lambda option: torch.device("cpu"), raising=False)
    default = torch.device("meta")
    with caplog.at_level(logging.WARNING):
        for saved in ("cuda:3", "gpu:3", "xpu:1"):
            assert devices.resolve_device(saved, default) == default
            assert f"device '{saved}' is not on this machine" in caplog.text
    assert devices.resolve_device("cpu", default) == torch.device("cpu")
    assert devices.resolve_device("default", default) == default


def test_the_loaders_name_device_in_validate_inputs_so_the_host_does_not_refuse_a_missing_gpu(host):
    import inspect
    loaders = host.nodes.loaders
    for cls in (loaders.KandinskyVideoKeyframeUNetLoader, loaders.KandinskyVideoInterpolationUNetLoader,
                loaders.KandinskyVideoMoVQLoader, loaders.KandinskyVideoVideoMoVQLoader,
                loaders.KandinskyVideoTextEncoderLoader):
        assert "device" in inspect.signature(cls.validate_inputs).parameters, cls.__name__


def test_deep_copies_for_other_gpus_run_side_by_side_in_threads(host):
    """What core multi-GPU (CFG split into work units) does with a MODEL: a deep copy of the
    model per extra device, each run in its own thread at the same time as the others."""
    from kvpack.kv_core import checkpoints as ck, tiny
    from kvpack.nodes.host import core_path, networks, unet_model

    g = torch.Generator().manual_seed(0)
    module, null = tiny.random_unet(ck.KEYFRAME_UNET, g)
    cpu = torch.device("cpu")
    network = networks.wrap(module, ck.KEYFRAME_UNET, "tiny", torch.float32, load_device=cpu, offload_device=cpu,
                            null_embedding=null)
    model = core_path.core_model(network)
    other = copy.deepcopy(model.model)  # the copy core makes for another GPU
    assert other.kv_network is other.diffusion_model.net is not model.model.kv_network
    assert other.kv_network.attention_settings is not module.attention_settings

    x = torch.randn(2, 9, 8, 8, generator=g)
    t = torch.tensor([500, 500])
    context = torch.randn(2, 5, tiny.TINY_CONTEXT_DIM, generator=g)
    kw = {unet_model.KEY_STAGE: "first_frame", unet_model.KEY_MASK: torch.tensor([[1, 1, 1, 0, 0]] * 2).bool()}

    def perturbed(q, k, v, extra, mask=None):
        return v

    patched = {"patches_replace": {"attn1": {("middle", 0): perturbed}}}
    with torch.no_grad():
        plain_alone = model.model.diffusion_model(x, t, context=context, transformer_options={}, **kw)
        patched_alone = other.diffusion_model(x, t, context=context, transformer_options=patched, **kw)
    assert float((plain_alone - patched_alone).abs().max()) > 1e-3

    results, errors = {}, []
    start = threading.Barrier(2)

    def run(name, m, options):
        try:
            start.wait()
            with torch.no_grad():
                for i in range(6):
                    results[(name, i)] = m.diffusion_model(x, t, context=context, transformer_options=options, **kw)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=("plain", model.model, {})),
               threading.Thread(target=run, args=("patched", other, patched))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for i in range(6):
        assert torch.equal(results[("plain", i)], plain_alone)
        assert torch.equal(results[("patched", i)], patched_alone)
