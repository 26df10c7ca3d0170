"""The core-sampling path's host features inside this process with the pinned ComfyUI's modules
(no server; the ``pack`` fixture of tests/support/comfy_fixtures.py): batching, core samplers,
schedulers and model patches, progress, previews and interrupt, the loaders' one patcher,
refusals that name the wiring, the Sigmas node, encoded videos, the plain-CFG note and long
videos. The equivalence with the pack's own loops is tests/nodes/test_core_sampling.py."""
from __future__ import annotations

import pytest
import torch

from core_sampling_runs import (STEPS, Text, core_sample, first_frame_run, interpolation_run, keyframes_run, out, tolerance)


# --------------------------------------------------------------------------- the host's features

def test_cond_and_uncond_batched_equal_them_run_one_by_one(pack, nets):
    """Every cond of a stage has one context length, and a context mask whose length
    differs keeps conds apart (core CONDCrossAttn would pad them by repeating): batching
    never changes a result, also for conds of different lengths."""
    from kvpack.kv_core.tiny import TINY_CONTEXT_DIM

    model, guider, latent, sigmas = first_frame_run(pack, nets)
    cs = pack.nodes.core_sampling
    negative = (torch.randn(1, 9, TINY_CONTEXT_DIM, generator=nets["g"]), torch.ones(1, 9, dtype=torch.int64))
    text = Text(pack, nets["text"].condition.context, nets["text"].condition.context_mask, negative)
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
            g = pack.nodes.host.core_path.KandinskyVideoGuider(model)
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


def test_core_samplers_schedulers_and_model_patches_run_on_the_model(pack, nets):
    """dpmpp_2m with karras sigmas; torch.compile through the core wrapper (dynamo traces the
    adapter; the eager backend keeps it fast — TorchCompileModel's inductor compiles the
    same graph, about 4 min for the tiny network on this CPU, so it only has to accept
    the MODEL here); a post-CFG patch (RescaleCFG) reaches the guider."""
    import comfy.samplers
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from comfy_extras.nodes_model_advanced import RescaleCFG
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    model, guider, latent, sigmas = first_frame_run(pack, nets)
    karras = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", 4)
    noise = torch.randn(latent.shape, generator=nets["g"])
    plain = core_sample(guider, noise, latent, "dpmpp_2m", karras)
    assert plain.isfinite().all() and plain.shape == latent.shape

    compiled = out(TorchCompileModel.execute(model, "inductor"))[0]  # accepted (compiles lazily)
    assert compiled.model is model.model
    eager = model.clone()
    set_torch_compile_wrapper(model=eager, backend="eager")
    cs = pack.nodes.core_sampling
    pos, neg, _ = out(cs.KandinskyVideoFirstFrameConditioning.execute(eager, nets["text"], 64, 64))
    g = out(cs.KandinskyVideoGuider.execute(eager, pos, neg, 5.0, 2.0, True))[0]
    assert float((core_sample(g, noise, latent, "dpmpp_2m", karras) - plain).abs().max()) <= 1e-5

    rescaled = RescaleCFG().patch(model, 0.7)[0] if hasattr(RescaleCFG, "patch") else out(
        RescaleCFG.execute(model, 0.7))[0]
    g = out(cs.KandinskyVideoGuider.execute(rescaled, pos, neg, 5.0, 2.0, False))[0]
    assert float((core_sample(g, noise, latent, "dpmpp_2m", karras) - plain).abs().max()) > 1e-3


def test_sampler_custom_advanced_reports_progress_previews_and_stops_on_interrupt(pack, nets):
    """Through core SamplerCustomAdvanced: one progress update per step with a preview
    (Latent2RGB with the MoVQ factors), and an interrupt raised from the progress hook (as
    the server does) stops sampling within one step."""
    import comfy.model_management as mm
    import comfy.utils
    from comfy_extras.nodes_custom_sampler import KSamplerSelect, RandomNoise, SamplerCustomAdvanced

    key, guider, latent, sigmas, _ = keyframes_run(pack, nets)
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


def test_the_core_model_is_a_clone_of_the_loaders_one_patcher(pack, nets):
    """Each U-Net has one ModelPatcher (around the core model, made at load) and the core
    MODEL is a clone of it: the module is counted and loaded once, mixing pack stages and
    core sampling never lists two holders of it, and a weight patch added to a clone of
    the MODEL (as a LoRA or model patch node does) applies while that clone samples and
    is gone when the pack's stage loads the U-Net."""
    import comfy.model_management as mm
    import comfy.utils

    from kvpack.nodes.host import networks

    kf = nets["keyframe"]
    model, guider, latent, sigmas = first_frame_run(pack, nets)
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
    pos, neg, _ = out(pack.nodes.core_sampling.KandinskyVideoFirstFrameConditioning.execute(
        patched, nets["text"], 64, 64))
    patched_guider = out(pack.nodes.core_sampling.KandinskyVideoGuider.execute(patched, pos, neg, 5.0, 2.0, True))[0]
    core_sample(patched_guider, torch.zeros(latent.shape), latent, "ddim", sigmas[-2:])
    assert [p for p in holders()] == [patched]
    assert torch.allclose(comfy.utils.get_attr(kf.patcher.model, key), original + delta)  # applied while it holds
    with networks.stage(kf):
        assert holders() == [kf.patcher]
        assert torch.equal(comfy.utils.get_attr(kf.module, key.removeprefix("diffusion_model.net.")), original)


def test_a_partial_load_of_the_core_model_places_the_stray_parameters(pack, monkeypatch):
    """A low-VRAM (partial) load by the core MODEL — a clone that the pack's stage() never
    sees — places the parameters that cannot be cast at run time (the U-Net's learned
    merge scalars: direct parameters of modules with children) on the load device. The
    load goes to the meta device here (a second device on a CPU-only machine; a tensor
    cannot be moved there in place, so the call is recorded, not made)."""
    from kvpack.kv_core import checkpoints as ck, tiny
    from kvpack.nodes.host import core_path, networks

    module, null = tiny.random_unet(ck.KEYFRAME_UNET, torch.Generator().manual_seed(1))
    meta = torch.device("meta")
    net = networks.wrap(module, ck.KEYFRAME_UNET, "tiny", torch.float32, load_device=meta,
                        offload_device=torch.device("cpu"), null_embedding=null)
    placed = []
    monkeypatch.setattr(networks, "_place_stray_parameters", lambda m, device: placed.append((m, device)))

    clone = core_path.core_model(net)
    clone.load(meta, lowvram_model_memory=1, full_load=False)
    assert placed == [(net.patcher.model, meta)]


def test_simple_scheduler_gives_the_trailing_interpolation_sigmas(pack, nets):
    """Core ``simple`` = the release's trailing spacing when the step count divides 1000
    (the release's 10 steps); otherwise they differ by one timestep at most (``simple``
    floors ``k * 1000 / steps``, trailing rounds it)."""
    import comfy.samplers

    cs = pack.nodes.core_sampling
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


def test_a_foreign_model_or_the_wrong_unet_is_refused_with_the_node_to_use(pack, nets):
    cs = pack.nodes.core_sampling
    interpolation = out(cs.KandinskyVideoInterpolationModel.execute(interpolation_unet=nets["interpolation"]))[0]
    with pytest.raises(ValueError, match="needs Kandinsky Video Keyframe Model"):
        cs.KandinskyVideoFirstFrameConditioning.execute(interpolation, nets["text"], 64, 64)
    with pytest.raises(ValueError, match="not a Kandinsky Video U-Net"):
        cs.KandinskyVideoFirstFrameConditioning.execute(object(), nets["text"], 64, 64)


def test_the_guider_refuses_conds_that_do_not_fit_naming_the_wiring(pack, nets):
    """Wiring mistakes that used to run silently wrong (keyframe conds without image_only:
    the two-cond formula with the no-image negative) or end in a tensor size error deep in
    the host (a foreign MODEL, conds of two stages, image_only on another stage, a latent
    from another Conditioning node) are refused with the connection to make."""
    import comfy.model_patcher

    cs = pack.nodes.core_sampling
    guider_node = cs.KandinskyVideoGuider.execute
    model, _, ff_latent, ff_sigmas = first_frame_run(pack, nets)
    ff_pos, ff_neg, _ = out(cs.KandinskyVideoFirstFrameConditioning.execute(model, nets["text"], 64, 64))
    _, kf_guider, kf_latent, kf_sigmas, (kf_pos, kf_image_only, kf_neg, _) = keyframes_run(pack, nets)
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
    _, in_guider, _, in_sigmas = interpolation_run(pack, nets, frames)
    with pytest.raises(ValueError, match=r"Interpolation Conditioning and need its latent \[1, 12, 2, 8, 8\]"):
        core_sample(in_guider, torch.zeros(1, 12, 4, 8, 8), torch.zeros(1, 12, 4, 8, 8), "ddim", in_sigmas)


def test_assemble_frames_refuses_groups_of_another_video_naming_the_wiring(pack, nets):
    cs = pack.nodes.core_sampling
    video = pack.nodes.host.latent.video_latent(torch.zeros(3, 4, 8, 8), 3)
    for groups in (torch.zeros(1, 12, 4, 8, 8), torch.zeros(1, 4, 2, 8, 8), torch.zeros(1, 12, 2, 16, 16)):
        with pytest.raises(ValueError, match=r"Assemble Frames: the 3 frames .* need their groups \[1, 12, 2, 8, 8\]"):
            cs.KandinskyVideoAssembleFrames.execute(video, {"samples": groups})


def test_sigmas_refuse_one_step_that_denoises_nothing_and_warn_of_few_leading_steps(pack, nets, caplog):
    """Leading (and linspace) spacing with 1 step is timestep 0 alone (sigma 0.006): the
    sampler would return its start, a blank latent; few leading steps start below pure
    noise (a washed-out result), which the log says."""
    import logging

    cs = pack.nodes.core_sampling
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


def test_an_encoded_video_keeps_its_rate_and_size_through_the_core_path(pack, nets):
    """Encode Video -> Interpolation Conditioning -> sampler -> Assemble Frames -> Decode:
    skip_frames -1 takes the rate the latent records (as Interpolate does), and Assemble
    Frames passes the rate (x4) and the fit on, so Decode gives 4 x fps at the input's
    size (before, the record was dropped: Decode asked for a keyframe count, and with one
    gave the release's rate at the network's padded size)."""
    import kvpack.nodes.host.latent as record
    from kvpack.kv_core.video_input import plan_fit

    cs, cm = pack.nodes.core_sampling, pack.nodes.host.unet_model
    model = out(cs.KandinskyVideoInterpolationModel.execute(interpolation_unet=nets["interpolation"]))[0]
    frames = torch.randn(3, 4, 8, 8, generator=nets["g"])
    fit = plan_fit(60, 50, 32, "pad")
    for fps, skip in ((24.0, 1), (2.0, 3)):
        video = record.video_latent(frames, None)
        video[record.FPS_KEY], video[record.FIT_KEY] = fps, fit.to_dict()
        pos, neg, groups = out(cs.KandinskyVideoInterpolationConditioning.execute(model, video, -1))
        assert int(pos[0][1][cm.KEY_SKIP]) == int(neg[0][1][cm.KEY_SKIP]) == skip
        assembled = out(cs.KandinskyVideoAssembleFrames.execute(video, groups))[0]
        assert assembled["samples"].shape == (1, 4, 9, 8, 8)
        assert assembled[record.FPS_KEY] == 4 * fps and assembled[record.FIT_KEY] == fit.to_dict()
        assert record.recorded_fit(assembled) == fit
    generated = record.video_latent(frames, 3)  # 3 keyframes: 3 / 5.5 fps -> 3
    pos, _, _ = out(cs.KandinskyVideoInterpolationConditioning.execute(model, generated, -1))
    assert int(pos[0][1][cm.KEY_SKIP]) == 3
    with pytest.raises(ValueError, match="does not say its frame rate.*set skip_frames to 3"):
        cs.KandinskyVideoInterpolationConditioning.execute(model, {"samples": generated["samples"]}, -1)


def test_plain_cfg_on_the_keyframes_is_logged_as_not_the_release_guidance(pack, nets, caplog):
    """Core KSampler / CFGGuider can only take positive and negative: on the keyframes that
    is plain CFG (prompt + image against null text without image), which runs but is not
    the release's three-cond guidance, so the log says it; the Kandinsky Video Guider and
    core DualCFGGuider (three conds) are not flagged, nor is CFG on another stage."""
    import logging

    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Guider_DualCFG

    _, guider, latent, sigmas, (pos, image_only, neg, model) = keyframes_run(pack, nets)
    samples = latent["samples"]
    cfg = comfy.samplers.CFGGuider(model)
    cfg.set_conds(pos, neg)
    cfg.set_cfg(6.0)
    dual = Guider_DualCFG(model)
    dual.set_conds(pos, image_only, neg)
    dual.set_cfg(5.0, 2.0, nested=False)
    _, ff_guider, ff_latent, ff_sigmas = first_frame_run(pack, nets)
    for g, lat, sig, flagged in ((cfg, samples, sigmas, True), (guider, samples, sigmas, False),
                                 (dual, samples, sigmas, False), (ff_guider, ff_latent, ff_sigmas, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            core_sample(g, torch.zeros(lat.shape), lat, "ddim", sig[-2:])
        assert ("not the release's keyframe guidance" in caplog.text) == flagged, (g, caplog.text)


def test_a_long_videos_prompt_timeline_is_refused_by_the_core_interpolation(pack, nets):
    """Core sampling takes one context for every group: a prompt timeline of several
    segments (Kandinsky Video Extend) is refused, naming the node that honours it; a
    timeline of one segment is its prompt."""
    cs, sockets, record = pack.nodes.core_sampling, pack.nodes.host.sockets, pack.nodes.host.latent
    PromptTimeline = sockets.PromptTimeline  # the pack's own kv_core, as the host loaded it
    model = out(cs.KandinskyVideoInterpolationModel.execute(interpolation_unet=nets["interpolation"]))[0]
    text = nets["text"]
    video = record.video_latent(torch.zeros(5, 4, 8, 8), 5)
    two = sockets.ConditioningTimeline("a", "", text.condition,
                                       PromptTimeline.start(text.condition, 3).extended(text.condition, 2))
    with pytest.raises(ValueError, match="use Kandinsky Video Interpolate for per-segment prompts"):
        cs.KandinskyVideoInterpolationConditioning.execute(model, video, 3, two)
    one = sockets.ConditioningTimeline("a", "", text.condition, PromptTimeline.start(text.condition, 5))
    got = out(cs.KandinskyVideoInterpolationConditioning.execute(model, video, 3, one))
    want = out(cs.KandinskyVideoInterpolationConditioning.execute(model, video, 3, text))
    assert torch.equal(got[0][0][0], want[0][0][0])
