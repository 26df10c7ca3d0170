"""The core sampling path (nodes/core_model.py, nodes/core_sampling.py) against the pack's own
loops, inside this process with the pinned ComfyUI's modules (no server): tiny random
networks from the golden configs (kv_core.tiny), fp32, CPU.

Equivalence, per stage: the same initial noise through the pack's loop with its DDIM and
through ComfyUI's ``ddim`` sampler (Euler in sigma space) with the Kandinsky Video guider
and sigmas. Both samplers take the noise from the *clamped* x0 (kv_core's DDIM recomputes
it; Euler's ``(x - D) / sigma`` uses the guider's clamped D), so the update
``x' = (s'/s) x + (1 - s'/s) x0`` is the same function and the clamp may be active (it is:
the tiny networks' x0 reaches +-1).

Tolerance, derived (u = 2**-24, float32's unit roundoff): per step both paths evaluate the
network on inputs equal up to one rounding (``x / sqrt(1 + s**2)`` against the loop's
``x``), batched differently (other summation orders), and combine G = sum |guidance
weights| outputs (first frame w = 5: G = 11; keyframes wp = 5, wi = 2: G = 9;
interpolation w = 0.5: G = 2). Allowing 2**6 roundings per network output, latents of
magnitude M = 4 (Gaussian start; x0 is clamped to 1) and no growth between steps, the
result differs by at most ``steps * G * 2**6 * u * M``. Interpolation starts at t = 999:
the loop uses abar = 0 there, the core path sigma ~ 4096 (the floor, kv_core.stage_inputs);
its first Euler step subtracts two numbers of size 4096 |n| in float32, which costs up to
``4 u 4096 max|n|`` in x before scaling to the next step's ``sqrt(abar)`` — added for that
stage. The measured errors are far below (README "Two ways to sample").
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
COMFYUI = Path(os.environ.get("KV_CACHE_DIR", REPO / ".cache")) / "comfyui"
U = 2.0 ** -24
STEPS = 5


@pytest.fixture(scope="module")
def host():
    """ComfyUI's modules (``--cpu``) and this pack imported as a package, in this process."""
    if not (COMFYUI / "comfy" / "samplers.py").exists():
        pytest.skip(f"no ComfyUI at {COMFYUI} (scripts/test.sh installs it)")
    sys.path.insert(0, str(COMFYUI))
    from comfy.cli_args import args, LatentPreviewMethod
    args.cpu = True
    args.preview_method = LatentPreviewMethod.Latent2RGB
    import comfy.samplers  # noqa: F401

    if "kvpack" not in sys.modules:
        spec = importlib.util.spec_from_file_location("kvpack", REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["kvpack"] = pack
        spec.loader.exec_module(pack)
    import kvpack.nodes.core_sampling  # noqa: F401
    yield sys.modules["kvpack"]
    sys.path.remove(str(COMFYUI))  # later imports in this worker find their own modules again


class Text:
    """A KV_CONDITIONING value: the prompt's context (and an optional negative one)."""

    def __init__(self, pack, context, mask, negative=None):
        self.condition = pack.kv_core.conditioning.TextCondition(context, mask, *(negative or ()))

    def text_condition(self):
        return self.condition


@pytest.fixture(scope="module")
def nets(host):
    from kvpack.kv_core import checkpoints as ck, tiny
    from kvpack.nodes import networks

    g = torch.Generator().manual_seed(0)

    def net(kind):
        module, null = tiny.random_unet(kind, g)
        cpu = torch.device("cpu")
        return networks.wrap(module, kind, "tiny", torch.float32, load_device=cpu, offload_device=cpu,
                             null_embedding=null)

    keyframe, interpolation = net(ck.KEYFRAME_UNET), net(ck.INTERPOLATION_UNET)
    text = Text(host, torch.randn(1, 5, tiny.TINY_CONTEXT_DIM, generator=g), torch.tensor([[1, 1, 1, 0, 0]]))
    return dict(keyframe=keyframe, interpolation=interpolation, text=text, g=g)


def out(result):
    return result.result if hasattr(result, "result") else result


def tolerance(guidance_sum: float, steps: int = STEPS, magnitude: float = 4.0) -> float:
    return steps * guidance_sum * 2 ** 6 * U * magnitude


def core_sample(guider, noise, latent, sampler, sigmas, **options):
    import comfy.samplers
    sampler = comfy.samplers.sampler_object(sampler) if isinstance(sampler, str) else sampler
    return guider.sample(noise, latent, sampler, sigmas, seed=0, disable_pbar=True, **options)


def loop_sampler(name, prediction, spacing, **kw):
    from kvpack.kv_core.sampling.schedulers import make_sampler
    return make_sampler(name, STEPS, prediction_type=prediction, spacing=spacing, **kw)


def start_noise(sigmas, noise):
    """The loop's x at the first step for the core path's noise: the core sampler starts
    from ``noise * sigma`` (``sqrt(1 + sigma**2)`` at its sigma_max), in VP units
    ``noise * sqrt(1 - abar)`` (``noise`` at t = 999)."""
    s = float(sigmas[0])
    return noise * (s / math.sqrt(1 + s * s) if s < 4000 else 1.0)


# --------------------------------------------------------------------------- equivalence

def _first_frame(host, nets, guidance=5.0, clamp=True):
    cs = host.nodes.core_sampling
    model = out(cs.KandinskyVideoKeyframeModel.execute(keyframe_unet=nets["keyframe"]))[0]
    pos, neg, latent = out(cs.KandinskyVideoFirstFrameConditioning.execute(model, nets["text"], 64, 64))
    sigmas = out(cs.KandinskyVideoSigmas.execute("first_frame", STEPS, "default"))[0]
    guider = out(cs.KandinskyVideoGuider.execute(model, pos, neg, guidance, 2.0, clamp))[0]
    return model, guider, latent["samples"], sigmas


def test_first_frame_core_ddim_equals_the_loop(host, nets):
    from kvpack.kv_core.sampling.noise import ReplayNoise
    from kvpack.kv_core.stages.first_frame import sample_first_frame

    model, guider, latent, sigmas = _first_frame(host, nets)
    noise = torch.randn(latent.shape, generator=nets["g"])
    core = core_sample(guider, noise, latent, "ddim", sigmas)
    loop = sample_first_frame(nets["keyframe"].module, nets["text"].condition, nets["keyframe"].null_embedding,
                              latent_size=latent.shape[-2:], guidance_scale=5.0,
                              sampler=loop_sampler("ddim", "epsilon", "leading"),
                              noise=ReplayNoise([start_noise(sigmas, noise)]))
    assert float(loop.abs().max()) == 1.0  # the clamp was active
    error = float((core - loop).abs().max())
    assert error <= tolerance(11), error
    # the test sees a real difference: guidance 5.25 instead of 5
    other = core_sample(_first_frame(host, nets, guidance=5.25)[1], noise, latent, "ddim", sigmas)
    assert float((other - loop).abs().max()) > 10 * tolerance(11)


def _keyframes(host, nets, frames=4, seed=7):
    cs = host.nodes.core_sampling
    model = out(cs.KandinskyVideoKeyframeModel.execute(keyframe_unet=nets["keyframe"]))[0]
    key = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5
    first = host.nodes.sockets.FirstFrameCondition(key, 64, 64)
    pos, image_only, neg, latent = out(cs.KandinskyVideoKeyframesConditioning.execute(
        model, nets["text"], first, frames, "medium", 20, seed))
    sigmas = out(cs.KandinskyVideoSigmas.execute("keyframes", STEPS, "default"))[0]
    guider = out(cs.KandinskyVideoGuider.execute(model, pos, neg, 5.0, 2.0, True, image_only))[0]
    return key, guider, latent, sigmas, (pos, image_only, neg, model)


def _keyframe_loop(host, nets, key, sigmas, noise, sampler, step_noise=(), seed=7):
    from kvpack.kv_core.sampling.noise import ReplayNoise
    from kvpack.kv_core.stages.keyframes import keyframe_augmentation_noise, sample_keyframes

    frames = noise.shape[2]
    uniform = keyframe_augmentation_noise(seed, frames, *key.shape[-2:])
    replay = ReplayNoise([start_noise(sigmas, noise)[0].movedim(1, 0), uniform, *step_noise])
    return sample_keyframes(nets["keyframe"].module, nets["text"].condition, nets["keyframe"].null_embedding, key,
                            num_frames=frames, motion_score=10, noise_augmentation=20, sampler=sampler,
                            noise=replay)[None].movedim(2, 1)


def test_keyframes_core_ddim_equals_the_loop_and_keeps_the_keyframe_record(host, nets):
    key, guider, latent, sigmas, (pos, image_only, neg, model) = _keyframes(host, nets)
    assert latent["samples"].shape == (1, 4, 4, 8, 8) and latent[host.nodes.sockets.KEYFRAMES_KEY] == 4
    noise = torch.randn(latent["samples"].shape, generator=nets["g"])
    core = core_sample(guider, noise, latent["samples"], "ddim", sigmas)
    loop = _keyframe_loop(host, nets, key, sigmas, noise, loop_sampler("ddim", "epsilon", "leading"))
    error = float((core - loop).abs().max())
    assert error <= tolerance(9), error
    # wired wrongly (image_only and negative swapped), the result is far off
    swapped = host.nodes.core_model.KandinskyVideoGuider(model)
    swapped.set_conds(pos, image_only, neg)
    swapped.set_weights(5.0, 2.0)
    assert float((core_sample(swapped, noise, latent["samples"], "ddim", sigmas) - loop).abs().max()) > 0.01


def test_core_dual_cfg_guider_regular_is_the_keyframe_formula_without_the_clamp(host, nets):
    """Core DualCFGGuider, regular style, with cond1 = positive, cond2 = image_only, negative,
    cfg_conds = wp, cfg_cond2_negative = wi gives the keyframe guidance; it has no place for
    the release's clamp of the full combination, which the Kandinsky Video Guider adds."""
    from comfy_extras.nodes_custom_sampler import Guider_DualCFG

    key, guider, latent, sigmas, (pos, image_only, neg, model) = _keyframes(host, nets)
    dual = Guider_DualCFG(model)
    dual.set_conds(pos, image_only, neg)
    dual.set_cfg(5.0, 2.0, nested=False)
    ours = host.nodes.core_model.KandinskyVideoGuider(model)
    ours.set_conds(pos, neg, image_only)
    ours.set_weights(5.0, 2.0, clamp=False)
    noise = torch.randn(latent["samples"].shape, generator=nets["g"])
    a, b = (core_sample(g, noise, latent["samples"], "ddim", sigmas) for g in (dual, ours))
    assert float((a - b).abs().max()) <= tolerance(9)
    clamped = core_sample(guider, noise, latent["samples"], "ddim", sigmas)
    assert float((clamped - b).abs().max()) > 1e-3  # the clamp is active here and matters


def test_release_ddpm_through_core_ddpm_has_the_loops_transition(host, nets):
    """The release's DDPM (posterior mean of the clamped x0, ``fixed_small`` variance) and core
    ``ddpm`` (``DDPMSampler_step`` with the guider's clamped x0) are the same Markov chain:
    given the same state and the same standard-normal draw every step ends equal, so their
    distributions are equal. Checked pathwise: the loop's own draws are fed to core ``ddpm``
    through its ``noise_sampler``; the final latents agree within the deterministic
    tolerance (a wrong mean or variance would be off by the noise scale, ~0.1-1)."""
    import comfy.samplers
    from comfy.k_diffusion import sampling as kd

    key, guider, latent, sigmas, _ = _keyframes(host, nets)
    noise = torch.randn(latent["samples"].shape, generator=nets["g"])
    draws = [torch.randn(4, 4, 8, 8, generator=nets["g"]) for _ in range(STEPS - 1)]  # steps with t > 0
    loop = _keyframe_loop(host, nets, key, sigmas, noise, loop_sampler("ddpm", "epsilon", "leading"), draws)
    replay = iter(draws)
    sampler = comfy.samplers.KSAMPLER(kd.sample_ddpm, extra_options={
        "noise_sampler": lambda sigma, sigma_next: next(replay)[None].movedim(2, 1)})
    core = core_sample(guider, noise, latent["samples"], sampler, sigmas)
    assert next(replay, None) is None  # core drew exactly as many
    error = float((core - loop).abs().max())
    assert error <= tolerance(9), error


def _interpolation(host, nets, frames):
    cs = host.nodes.core_sampling
    model = out(cs.KandinskyVideoInterpolationModel.execute(interpolation_unet=nets["interpolation"]))[0]
    video = host.nodes.sockets.video_latent(frames, 3)
    pos, neg, groups = out(cs.KandinskyVideoInterpolationConditioning.execute(model, video, 3, nets["text"]))
    sigmas = out(cs.KandinskyVideoSigmas.execute("interpolation", STEPS, "default"))[0]
    guider = out(cs.KandinskyVideoGuider.execute(model, pos, neg, 0.5, 2.0, True))[0]
    return video, guider, groups["samples"], sigmas


def test_interpolation_core_ddim_equals_the_loop_and_assembles(host, nets):
    from kvpack.kv_core.sampling.noise import ReplayNoise
    from kvpack.kv_core.stages import floored_alphas_cumprod
    from kvpack.kv_core.stages.interpolation import assemble_interpolated, sample_interpolation

    frames = torch.randn(3, 4, 8, 8, generator=nets["g"]) * 0.5
    video, guider, latent, sigmas = _interpolation(host, nets, frames)
    assert latent.shape == (1, 12, 2, 8, 8)
    noise = torch.randn(latent.shape, generator=nets["g"])
    core = core_sample(guider, noise, latent, "ddim", sigmas)

    def loop(**kw):
        return sample_interpolation(nets["interpolation"].module, nets["text"].condition,
                                    nets["interpolation"].null_embedding, frames, skip_frames=3, guidance_scale=0.5,
                                    sampler=loop_sampler("ddim", "v_prediction", "trailing", **kw),
                                    noise=ReplayNoise([noise[0].movedim(1, 0)]))[None].movedim(2, 1)

    a1 = 1 / (1 + float(sigmas[1]) ** 2)
    first_step = 4 * U * float(sigmas[0]) * float(noise.abs().max()) * math.sqrt(a1)
    # the same schedule (floored at t = 999 in the loop too): rounding only
    error = float((core - loop(alphas_cumprod=floored_alphas_cumprod())).abs().max())
    assert error <= tolerance(2) + first_step, error
    # the release's loop (abar_999 = 0): the floor changes x0 of the first step by
    # 2**-12 x + (1 - sqrt(1 - 2**-24)) v, scaled by sqrt(abar) of the next step
    floor_term = (2 ** -12 * float(noise.abs().max()) + 2 ** -24) * math.sqrt(a1)
    error = float((core - loop()).abs().max())
    assert error <= tolerance(2) + first_step + floor_term, error

    assembled = out(host.nodes.core_sampling.KandinskyVideoAssembleFrames.execute(video, {"samples": core}))[0]
    assert assembled["samples"].shape == (1, 4, 9, 8, 8)
    assert assembled[host.nodes.sockets.KEYFRAMES_KEY] == 3
    expected = assemble_interpolated(frames, core[0].movedim(1, 0))
    assert torch.equal(assembled["samples"][0].movedim(1, 0), expected)


# --------------------------------------------------------------------------- the host's features

def test_cond_and_uncond_batched_equal_them_run_one_by_one(host, nets):
    """Every cond of a stage has one context length, and a context mask whose length
    differs keeps conds apart (core CONDCrossAttn would pad them by repeating): batching
    never changes a result, also for conds of different lengths."""
    from kvpack.kv_core.tiny import TINY_CONTEXT_DIM

    model, guider, latent, sigmas = _first_frame(host, nets)
    cs = host.nodes.core_sampling
    negative = (torch.randn(1, 9, TINY_CONTEXT_DIM, generator=nets["g"]), torch.ones(1, 9, dtype=torch.int64))
    text = Text(host, nets["text"].condition.context, nets["text"].condition.context_mask, negative)
    pos, neg, _ = out(cs.KandinskyVideoFirstFrameConditioning.execute(model, text, 64, 64))
    assert pos[0][0].shape[1] == neg[0][0].shape[1] == 9  # the prompt padded to the negative's length
    short_pos, _, _ = out(cs.KandinskyVideoFirstFrameConditioning.execute(model, nets["text"], 64, 64))
    noise = torch.randn(latent.shape, generator=nets["g"])
    diffusion = model.model.diffusion_model
    forward, batches = diffusion.forward, []
    diffusion.forward = lambda x, *a, **k: batches.append(x.shape[0]) or forward(x, *a, **k)
    for positive, batched in ((pos, [2, 2]), (short_pos, [1, 1, 1, 1])):  # same length / lengths 5 and 9
        runs = []
        for one_by_one in (False, True):
            batches.clear()
            g = host.nodes.core_model.KandinskyVideoGuider(model)
            g.set_conds(positive, neg)
            g.set_weights(5.0)
            inner = model.model
            if one_by_one:  # no room for a batch of two: calc_cond_batch runs each cond alone
                inner.memory_required = lambda *a, **k: 1e30
            try:
                runs.append(core_sample(g, noise, latent, "ddim", sigmas[-3:]))
            finally:
                inner.__dict__.pop("memory_required", None)
            assert batches == ([1, 1, 1, 1] if one_by_one else batched)
        # batched or not only changes the summation order: the rounding bound of 2 steps
        assert float((runs[0] - runs[1]).abs().max()) <= tolerance(11, steps=2)
    diffusion.forward = forward


def test_core_samplers_schedulers_and_model_patches_run_on_the_model(host, nets):
    """dpmpp_2m with karras sigmas; torch.compile through the core wrapper (dynamo traces the
    adapter; the eager backend keeps it fast — TorchCompileModel's inductor compiles the
    same graph, about 4 min for the tiny network on this CPU, so it only has to accept
    the MODEL here); a post-CFG patch (RescaleCFG) reaches the guider."""
    import comfy.samplers
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from comfy_extras.nodes_model_advanced import RescaleCFG
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    model, guider, latent, sigmas = _first_frame(host, nets)
    karras = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", 4)
    noise = torch.randn(latent.shape, generator=nets["g"])
    plain = core_sample(guider, noise, latent, "dpmpp_2m", karras)
    assert plain.isfinite().all() and plain.shape == latent.shape

    compiled = out(TorchCompileModel.execute(model, "inductor"))[0]  # accepted (compiles lazily)
    assert compiled.model is model.model
    eager = model.clone()
    set_torch_compile_wrapper(model=eager, backend="eager")
    cs = host.nodes.core_sampling
    pos, neg, _ = out(cs.KandinskyVideoFirstFrameConditioning.execute(eager, nets["text"], 64, 64))
    g = out(cs.KandinskyVideoGuider.execute(eager, pos, neg, 5.0, 2.0, True))[0]
    assert float((core_sample(g, noise, latent, "dpmpp_2m", karras) - plain).abs().max()) <= 1e-5

    rescaled = RescaleCFG().patch(model, 0.7)[0] if hasattr(RescaleCFG, "patch") else out(
        RescaleCFG.execute(model, 0.7))[0]
    g = out(cs.KandinskyVideoGuider.execute(rescaled, pos, neg, 5.0, 2.0, False))[0]
    assert float((core_sample(g, noise, latent, "dpmpp_2m", karras) - plain).abs().max()) > 1e-3


def test_sampler_custom_advanced_reports_progress_previews_and_stops_on_interrupt(host, nets):
    """Through core SamplerCustomAdvanced: one progress update per step with a preview
    (Latent2RGB with the MoVQ factors), and an interrupt raised from the progress hook (as
    the server does) stops sampling within one step."""
    import comfy.model_management as mm
    import comfy.utils
    from comfy_extras.nodes_custom_sampler import KSamplerSelect, RandomNoise, SamplerCustomAdvanced

    key, guider, latent, sigmas, _ = _keyframes(host, nets)
    calls, updates = [], []
    diffusion = guider.model_patcher.model.diffusion_model
    forward = diffusion.forward
    diffusion.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)

    def hook(value, total, preview, node_id=None):
        updates.append((value, total, preview))
        if len(updates) == 2 and stop:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()

    noise_node = out(RandomNoise.execute(0) if hasattr(RandomNoise, "execute") else RandomNoise().get_noise(0))[0]
    sampler = out(KSamplerSelect.execute("euler") if hasattr(KSamplerSelect, "execute")
                  else KSamplerSelect().get_sampler("euler"))[0]
    run = (SamplerCustomAdvanced.execute if hasattr(SamplerCustomAdvanced, "execute")
           else SamplerCustomAdvanced().sample)
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        stop = False
        result = out(run(noise_node, guider, sampler, sigmas, latent))[0]
        assert result["samples"].shape == latent["samples"].shape
        assert [u[0] for u in updates] == list(range(1, STEPS + 1)) and all(u[1] == STEPS for u in updates)
        assert all(u[2] is not None and u[2][0] == "JPEG" for u in updates)
        calls.clear(), updates.clear()
        stop = True
        with pytest.raises(mm.InterruptProcessingException):
            run(noise_node, guider, sampler, sigmas, latent)
        assert len(updates) == 2 and len(calls) == 2  # one model call per step (3 conds batched)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
        diffusion.forward = forward


def test_the_core_model_is_a_clone_of_the_loaders_one_patcher(host, nets):
    """Each U-Net has one ModelPatcher (around the core model, made at load) and the core
    MODEL is a clone of it: the module is counted and loaded once, mixing pack stages and
    core sampling never lists two holders of it, and a weight patch added to a clone of
    the MODEL (as a LoRA or model patch node does) applies while that clone samples and
    is gone when the pack's stage loads the U-Net."""
    import comfy.model_management as mm
    import comfy.utils

    from kvpack.nodes import networks

    kf = nets["keyframe"]
    model, guider, latent, sigmas = _first_frame(host, nets)
    assert model is not kf.patcher and model.is_clone(kf.patcher)
    assert model.model.diffusion_model.net is kf.module  # the kv_core module itself, no copy
    schedules = sum(b.numel() * b.element_size() for b in model.model.model_sampling.buffers())
    assert model.model_size() == mm.module_size(kf.module) + schedules  # the module counted once

    def holders():
        return [p for p in mm.loaded_models() if p is not None and p.is_clone(kf.patcher)]

    with networks.stage(kf):
        assert holders() == [kf.patcher]
    core_sample(guider, torch.zeros(latent.shape), latent, "ddim", sigmas[-2:])
    assert len(holders()) == 1 and holders()[0] is not kf.patcher
    with networks.stage(kf):
        assert holders() == [kf.patcher]

    key = next(k for k, v in kf.patcher.model.state_dict().items() if k.endswith(".weight") and v.ndim >= 2)
    original = comfy.utils.get_attr(kf.patcher.model, key).detach().clone()
    delta = torch.full_like(original, 0.25)
    patched = model.clone()
    patched.add_patches({key: (delta,)})
    assert not kf.patcher.patches and not model.patches
    pos, neg, _ = out(host.nodes.core_sampling.KandinskyVideoFirstFrameConditioning.execute(
        patched, nets["text"], 64, 64))
    patched_guider = out(host.nodes.core_sampling.KandinskyVideoGuider.execute(patched, pos, neg, 5.0, 2.0, True))[0]
    core_sample(patched_guider, torch.zeros(latent.shape), latent, "ddim", sigmas[-2:])
    assert [p for p in holders()] == [patched]
    assert torch.allclose(comfy.utils.get_attr(kf.patcher.model, key), original + delta)  # applied while it holds
    with networks.stage(kf):
        assert holders() == [kf.patcher]
        assert torch.equal(comfy.utils.get_attr(kf.module, key.removeprefix("diffusion_model.net.")), original)


def test_a_partial_load_of_the_core_model_places_the_stray_parameters(host, monkeypatch):
    """A low-VRAM (partial) load by the core MODEL — a clone that the pack's stage() never
    sees — places the parameters that cannot be cast at run time (the U-Net's learned
    merge scalars: direct parameters of modules with children) on the load device. The
    load goes to the meta device here (a second device on a CPU-only machine; a tensor
    cannot be moved there in place, so the call is recorded, not made)."""
    from kvpack.kv_core import checkpoints as ck, tiny
    from kvpack.nodes import core_model, networks

    module, null = tiny.random_unet(ck.KEYFRAME_UNET, torch.Generator().manual_seed(1))
    meta = torch.device("meta")
    net = networks.wrap(module, ck.KEYFRAME_UNET, "tiny", torch.float32, load_device=meta,
                        offload_device=torch.device("cpu"), null_embedding=null)
    placed = []
    monkeypatch.setattr(networks, "_place_stray_parameters", lambda m, device: placed.append((m, device)))

    clone = core_model.core_model(net)
    clone.load(meta, lowvram_model_memory=1, full_load=False)
    assert placed == [(net.patcher.model, meta)]


def test_simple_scheduler_gives_the_trailing_interpolation_sigmas(host, nets):
    """Core ``simple`` = the release's trailing spacing when the step count divides 1000
    (the release's 10 steps); otherwise they differ by one timestep at most (``simple``
    floors ``k * 1000 / steps``, trailing rounds it)."""
    import comfy.samplers

    cs = host.nodes.core_sampling
    model = out(cs.KandinskyVideoInterpolationModel.execute(interpolation_unet=nets["interpolation"]))[0]
    ms = model.get_model_object("model_sampling")
    for steps in (10, 20, 25, 50):
        simple = comfy.samplers.calculate_sigmas(ms, "simple", steps)
        assert torch.equal(simple.float(), out(cs.KandinskyVideoSigmas.execute("interpolation", steps, "default"))[0])
    for steps in range(1, 60):
        simple = comfy.samplers.calculate_sigmas(ms, "simple", steps)[:-1]
        t_simple = ms.timestep(simple.float())
        t_trailing = ms.timestep(out(cs.KandinskyVideoSigmas.execute("interpolation", steps, "default"))[0][:-1])
        assert int((t_simple - t_trailing).abs().max()) <= 1


def test_a_foreign_model_or_the_wrong_unet_is_refused_with_the_node_to_use(host, nets):
    cs = host.nodes.core_sampling
    interpolation = out(cs.KandinskyVideoInterpolationModel.execute(interpolation_unet=nets["interpolation"]))[0]
    with pytest.raises(ValueError, match="needs Kandinsky Video Keyframe Model"):
        cs.KandinskyVideoFirstFrameConditioning.execute(interpolation, nets["text"], 64, 64)
    with pytest.raises(ValueError, match="not a Kandinsky Video U-Net"):
        cs.KandinskyVideoFirstFrameConditioning.execute(object(), nets["text"], 64, 64)


def test_the_guider_refuses_conds_that_do_not_fit_naming_the_wiring(host, nets):
    """Wiring mistakes that used to run silently wrong (keyframe conds without image_only:
    the two-cond formula with the no-image negative) or end in a tensor size error deep in
    the host (a foreign MODEL, conds of two stages, image_only on another stage, a latent
    from another Conditioning node) are refused with the connection to make."""
    import comfy.model_patcher

    cs = host.nodes.core_sampling
    guider_node = cs.KandinskyVideoGuider.execute
    model, _, ff_latent, ff_sigmas = _first_frame(host, nets)
    ff_pos, ff_neg, _ = out(cs.KandinskyVideoFirstFrameConditioning.execute(model, nets["text"], 64, 64))
    _, kf_guider, kf_latent, kf_sigmas, (kf_pos, kf_image_only, kf_neg, _) = _keyframes(host, nets)
    with pytest.raises(ValueError, match="connect its image_only output"):
        guider_node(model, kf_pos, kf_neg, 5.0, 2.0, True)
    with pytest.raises(ValueError, match="image_only is for the keyframes only"):
        guider_node(model, ff_pos, ff_neg, 5.0, 2.0, True, kf_image_only)
    with pytest.raises(ValueError, match="different Conditioning nodes"):
        guider_node(model, kf_pos, ff_neg, 5.0, 2.0, True, kf_image_only)
    with pytest.raises(ValueError, match="negative is not from a Kandinsky Video Conditioning node"):
        guider_node(model, ff_pos, [[torch.zeros(1, 77, 768), {}]], 5.0, 2.0, True)
    foreign = comfy.model_patcher.ModelPatcher(torch.nn.Linear(2, 2), "cpu", "cpu")
    with pytest.raises(ValueError, match="not a Kandinsky Video U-Net"):
        guider_node(foreign, ff_pos, ff_neg, 5.0, 2.0, True)
    interpolation = out(cs.KandinskyVideoInterpolationModel.execute(interpolation_unet=nets["interpolation"]))[0]
    with pytest.raises(ValueError, match="needs Kandinsky Video Keyframe Model"):
        guider_node(interpolation, ff_pos, ff_neg, 5.0, 2.0, True)

    # a latent from another node: named before sampling, not a torch size error
    ff_guider = out(guider_node(model, ff_pos, ff_neg, 5.0, 2.0, True))[0]
    samples = kf_latent["samples"]
    with pytest.raises(ValueError, match="First Frame Conditioning and need its latent"):
        core_sample(ff_guider, torch.zeros(samples.shape), samples, "ddim", ff_sigmas)
    for wrong in (ff_latent, torch.zeros(1, 4, 6, 8, 8), torch.zeros(1, 4, 4, 16, 16)):
        with pytest.raises(ValueError, match=r"Keyframes Conditioning and need its latent \[1, 4, 4, 8, 8\]"):
            core_sample(kf_guider, torch.zeros(wrong.shape), wrong, "ddim", kf_sigmas)
    frames = torch.randn(3, 4, 8, 8, generator=nets["g"])
    _, in_guider, _, in_sigmas = _interpolation(host, nets, frames)
    with pytest.raises(ValueError, match=r"Interpolation Conditioning and need its latent \[1, 12, 2, 8, 8\]"):
        core_sample(in_guider, torch.zeros(1, 12, 4, 8, 8), torch.zeros(1, 12, 4, 8, 8), "ddim", in_sigmas)


def test_assemble_frames_refuses_groups_of_another_video_naming_the_wiring(host, nets):
    cs = host.nodes.core_sampling
    video = host.nodes.sockets.video_latent(torch.zeros(3, 4, 8, 8), 3)
    for groups in (torch.zeros(1, 12, 4, 8, 8), torch.zeros(1, 4, 2, 8, 8), torch.zeros(1, 12, 2, 16, 16)):
        with pytest.raises(ValueError, match=r"Assemble Frames: the 3 frames .* need their groups \[1, 12, 2, 8, 8\]"):
            cs.KandinskyVideoAssembleFrames.execute(video, {"samples": groups})


def test_sigmas_refuse_one_step_that_denoises_nothing_and_warn_of_few_leading_steps(host, nets, caplog):
    """Leading (and linspace) spacing with 1 step is timestep 0 alone (sigma 0.006): the
    sampler would return its start, a blank latent; few leading steps start below pure
    noise (a washed-out result), which the log says."""
    import logging

    cs = host.nodes.core_sampling
    for spacing in ("default", "leading", "linspace"):
        with pytest.raises(ValueError, match="1 step with .* spacing is timestep 0 alone.*use spacing 'trailing'"):
            cs.KandinskyVideoSigmas.execute("keyframes", 1, spacing)
    assert float(out(cs.KandinskyVideoSigmas.execute("keyframes", 1, "trailing"))[0][0]) > 4000
    with caplog.at_level(logging.WARNING):
        cs.KandinskyVideoSigmas.execute("keyframes", 4, "default")
    assert "4 leading steps start at sigma 2.45, only 93 % of pure noise" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for steps in (0, 8, 1000):
            cs.KandinskyVideoSigmas.execute("first_frame", steps, "default")
        cs.KandinskyVideoSigmas.execute("interpolation", 1, "default")
    assert "Kandinsky Video Sigmas" not in caplog.text


def test_an_encoded_video_keeps_its_rate_and_size_through_the_core_path(host, nets):
    """Encode Video -> Interpolation Conditioning -> sampler -> Assemble Frames -> Decode:
    skip_frames -1 takes the rate the latent records (as Interpolate does), and Assemble
    Frames passes the rate (x4) and the fit on, so Decode gives 4 x fps at the input's
    size (before, the record was dropped: Decode asked for a keyframe count, and with one
    gave the release's rate at the network's padded size)."""
    import kvpack.nodes.video_input as vi
    from kvpack.kv_core.video_input import plan_fit

    cs, cm = host.nodes.core_sampling, host.nodes.core_model
    model = out(cs.KandinskyVideoInterpolationModel.execute(interpolation_unet=nets["interpolation"]))[0]
    frames = torch.randn(3, 4, 8, 8, generator=nets["g"])
    fit = plan_fit(60, 50, 32, "pad")
    for fps, skip in ((24.0, 1), (2.0, 3)):
        video = host.nodes.sockets.video_latent(frames, None)
        video[vi.FPS_KEY], video[vi.FIT_KEY] = fps, fit.to_dict()
        pos, neg, groups = out(cs.KandinskyVideoInterpolationConditioning.execute(model, video, -1))
        assert int(pos[0][1][cm.KEY_SKIP]) == int(neg[0][1][cm.KEY_SKIP]) == skip
        assembled = out(cs.KandinskyVideoAssembleFrames.execute(video, groups))[0]
        assert assembled["samples"].shape == (1, 4, 9, 8, 8)
        assert assembled[vi.FPS_KEY] == 4 * fps and assembled[vi.FIT_KEY] == fit.to_dict()
        assert vi.recorded_fit(assembled) == fit
    generated = host.nodes.sockets.video_latent(frames, 3)  # 3 keyframes: 3 / 5.5 fps -> 3
    pos, _, _ = out(cs.KandinskyVideoInterpolationConditioning.execute(model, generated, -1))
    assert int(pos[0][1][cm.KEY_SKIP]) == 3
    with pytest.raises(ValueError, match="does not say its frame rate.*set skip_frames to 3"):
        cs.KandinskyVideoInterpolationConditioning.execute(model, {"samples": generated["samples"]}, -1)


def test_plain_cfg_on_the_keyframes_is_logged_as_not_the_release_guidance(host, nets, caplog):
    """Core KSampler / CFGGuider can only take positive and negative: on the keyframes that
    is plain CFG (prompt + image against null text without image), which runs but is not
    the release's three-cond guidance, so the log says it; the Kandinsky Video Guider and
    core DualCFGGuider (three conds) are not flagged, nor is CFG on another stage."""
    import logging

    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Guider_DualCFG

    _, guider, latent, sigmas, (pos, image_only, neg, model) = _keyframes(host, nets)
    samples = latent["samples"]
    cfg = comfy.samplers.CFGGuider(model)
    cfg.set_conds(pos, neg)
    cfg.set_cfg(6.0)
    dual = Guider_DualCFG(model)
    dual.set_conds(pos, image_only, neg)
    dual.set_cfg(5.0, 2.0, nested=False)
    _, ff_guider, ff_latent, ff_sigmas = _first_frame(host, nets)
    for g, lat, sig, flagged in ((cfg, samples, sigmas, True), (guider, samples, sigmas, False),
                                 (dual, samples, sigmas, False), (ff_guider, ff_latent, ff_sigmas, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            core_sample(g, torch.zeros(lat.shape), lat, "ddim", sig[-2:])
        assert ("not the release's keyframe guidance" in caplog.text) == flagged, (g, caplog.text)


def test_a_long_videos_prompt_timeline_is_refused_by_the_core_interpolation(host, nets):
    """Core sampling takes one context for every group: a prompt timeline of several
    segments (Kandinsky Video Extend) is refused, naming the node that honours it; a
    timeline of one segment is its prompt."""
    cs, sockets = host.nodes.core_sampling, host.nodes.sockets
    PromptTimeline = sockets.PromptTimeline  # the pack's own kv_core, as the host loaded it
    model = out(cs.KandinskyVideoInterpolationModel.execute(interpolation_unet=nets["interpolation"]))[0]
    text = nets["text"]
    video = sockets.video_latent(torch.zeros(5, 4, 8, 8), 5)
    two = sockets.ConditioningTimeline("a", "", text.condition,
                                       PromptTimeline.start(text.condition, 3).extended(text.condition, 2))
    with pytest.raises(ValueError, match="use Kandinsky Video Interpolate for per-segment prompts"):
        cs.KandinskyVideoInterpolationConditioning.execute(model, video, 3, two)
    one = sockets.ConditioningTimeline("a", "", text.condition, PromptTimeline.start(text.condition, 5))
    got = out(cs.KandinskyVideoInterpolationConditioning.execute(model, video, 3, one))
    want = out(cs.KandinskyVideoInterpolationConditioning.execute(model, video, 3, text))
    assert torch.equal(got[0][0][0], want[0][0][0])
