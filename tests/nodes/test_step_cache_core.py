"""Step caching on the core sampling path (nodes/host/unet_model.py), inside this process with the
pinned ComfyUI's modules: the pack's cache as a MODEL patch (Kandinsky Video Apply Step
Cache), and core EasyCache / LazyCache, which act on the Kandinsky Video MODELs (counted
network forwards), on the tiny random networks."""
from __future__ import annotations

import pytest
import torch

from core_sampling_runs import core_sample, keyframes_run, out

STEPS = 10


class Counter:
    """Forwards of the U-Net's outer and bottom levels (the bottom runs only in full forwards)."""

    def __init__(self, unet):
        self.outer = self.bottom = 0
        self.handles = [unet.down_samples[0].register_forward_hook(lambda *a: self._add("outer")),
                        unet.down_samples[-1].register_forward_hook(lambda *a: self._add("bottom"))]

    def _add(self, name):
        setattr(self, name, getattr(self, name) + 1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


@pytest.fixture(scope="module")
def host(pack):
    return pack


def _setup(host, nets):
    key, guider, latent, _, (pos, image_only, neg, model) = keyframes_run(host, nets)
    sigmas = out(host.nodes.core_sampling.KandinskyVideoSigmas.execute("keyframes", STEPS, "default"))[0]
    noise = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(0))

    def sample(patched):
        g = host.nodes.host.core_path.KandinskyVideoGuider(patched)
        g.set_conds(pos, neg, image_only)
        g.set_weights(5.0, 2.0)
        with Counter(nets["keyframe"].module) as counted:
            result = core_sample(g, noise, latent["samples"], "ddim", sigmas)
        return result, counted

    return model, sample


def _step_cache(host, model, **settings):
    cache = out(host.nodes.step_cache.KandinskyVideoStepCache.execute(**{
        "interval": 3, "branch": 0, "start_step": 0, "end_step": -1, **settings}))[0]
    return out(host.nodes.step_cache.KandinskyVideoApplyStepCache.execute(model, cache))[0]


def test_apply_step_cache_runs_the_planned_full_forwards(host, nets):
    model, sample = _setup(host, nets)
    base, plain = sample(model)
    assert plain.bottom == plain.outer  # uncached: every forward is full
    calls_per_step = plain.outer // STEPS
    cached, counted = sample(_step_cache(host, model, interval=3, start_step=0))
    assert counted.outer == plain.outer                      # every step ran the shallow branch
    assert counted.bottom == 4 * calls_per_step              # steps 0, 3, 6, 9 in full
    assert torch.isfinite(cached).all() and not torch.equal(cached, base)
    assert float((cached - base).abs().mean()) < 0.25 * float(base.abs().mean())
    # the MODEL given is untouched: a run with it is the uncached one again
    assert torch.equal(sample(model)[0], base)


def test_apply_step_cache_with_every_step_full_is_the_plain_model_exactly(host, nets):
    model, sample = _setup(host, nets)
    base, _ = sample(model)
    for patched in (_step_cache(host, model, interval=1), _step_cache(host, model, interval=2, start_step=100)):
        result, counted = sample(patched)
        assert torch.equal(result, base)
        assert counted.bottom == counted.outer


def test_apply_step_cache_refuses_a_model_that_is_not_kandinsky_video(host):
    class Other:
        model = object()

    cache = out(host.nodes.step_cache.KandinskyVideoStepCache.execute(3, 0, 2, -1))[0]
    with pytest.raises(ValueError, match="not a Kandinsky Video U-Net.*Keyframe Model or Interpolation Model"):
        host.nodes.step_cache.KandinskyVideoApplyStepCache.execute(Other(), cache)


@pytest.mark.parametrize("node", ["EasyCacheNode", "LazyCacheNode"])
def test_core_easycache_and_lazycache_skip_network_forwards(host, nets, node):
    """Core EasyCache needs the network's forward to run the host's diffusion-model wrapper
    (without it, it skipped nothing and changed nothing); LazyCache wraps the guider."""
    import comfy_extras.nodes_easycache as easycache

    model, sample = _setup(host, nets)
    base, plain = sample(model)
    patched = out(getattr(easycache, node).execute(model, 0.3, 0.1, 0.95, False))[0]
    result, counted = sample(patched)
    assert counted.outer < plain.outer, (node, counted.outer, plain.outer)
    assert torch.isfinite(result).all() and not torch.equal(result, base)
