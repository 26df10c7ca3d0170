"""The one attention entry point (kv_core/attention.py) and ComfyUI's attention levers on it
(nodes/host/attention.py): every attention of each network — both U-Nets, both MoVQs — goes
through the backend, the runner, and under ComfyUI through each of the host's mechanisms
(launch-flag backend, ``optimized_attention_override``, ``patches_replace`` attn1/attn2,
``attn1_patch``/``attn2_patch``); each stand-in is called once per attention (counted
against the network's named sites) and changes the output. Tiny random networks
(kv_core.tiny), fp32, CPU; the host tests import the pinned ComfyUI's modules in process."""
from __future__ import annotations

import pytest
import torch

import kv_core
from kv_core.attention import attention_backend, attention_runner, attention_sites, sdpa

def _networks(kv):
    """name -> (module, run(), the sites that run() calls), built with the ``kv_core``
    package ``kv`` (the pack's own copy under ComfyUI: its attention settings are its own)."""
    import importlib
    tiny = importlib.import_module(kv.__name__ + ".tiny")
    ck = importlib.import_module(kv.__name__ + ".checkpoints")
    attention_sites = importlib.import_module(kv.__name__ + ".attention").attention_sites
    KEYFRAME_UNET, INTERPOLATION_UNET, MOVQ, VIDEO_MOVQ = ck.KEYFRAME_UNET, ck.INTERPOLATION_UNET, ck.MOVQ, ck.VIDEO_MOVQ

    def _movq(kind, config, g):
        module = tiny.randomize_(ck.build_network(kind, config, device="cpu", dtype=torch.float32), g).eval()
        return module.requires_grad_(False)

    g = torch.Generator().manual_seed(3)
    keyframe, _ = tiny.random_unet(KEYFRAME_UNET, g)
    interpolation, _ = tiny.random_unet(INTERPOLATION_UNET, g)
    image_movq = _movq(MOVQ, tiny.TINY_IMAGE_MOVQ_CONFIG, g)
    video_movq = _movq(VIDEO_MOVQ, tiny.TINY_VIDEO_MOVQ_CONFIG, g)
    d = tiny.TINY_CONTEXT_DIM
    # two prompts (cond, uncond) over 3 frames; the uncond's mask hides every token but one
    context = torch.randn(2, 5, d, generator=g).repeat_interleave(3, 0)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]).repeat_interleave(3, 0)
    kf_x = torch.randn(6, 9, 8, 8, generator=g)
    in_x = torch.randn(6, 20, 8, 8, generator=g)
    t = torch.full((6,), 500)
    picture = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    latents = torch.randn(3, 4, 4, 4, generator=g)

    def sites(module, prefix=""):
        return sorted((s for s in attention_sites(module) if s.block.startswith(prefix)), key=str)

    return {
        "keyframe U-Net (video)": (keyframe, lambda: keyframe(kf_x, t, context, mask, mode="video", num_frames=3),
                                   sites(keyframe)),
        "keyframe U-Net (image)": (keyframe, lambda: keyframe(kf_x, t, context, mask, mode="image"),
                                   [s for s in sites(keyframe) if not s.temporal]),
        "interpolation U-Net": (interpolation, lambda: interpolation(in_x, t, context, mask, num_groups=3),
                                sites(interpolation)),
        "image MoVQ encode": (image_movq, lambda: image_movq.encode(picture), sites(image_movq, "encoder")),
        "image MoVQ decode": (image_movq, lambda: image_movq.decode(latents[:2]), sites(image_movq, "decoder")),
        "video MoVQ decode": (video_movq, lambda: video_movq.decode(latents), sites(video_movq, "decoder")),
    }


@pytest.fixture(scope="module")
def networks():
    return _networks(kv_core)


NAMES = ["keyframe U-Net (video)", "keyframe U-Net (image)", "interpolation U-Net", "image MoVQ encode",
         "image MoVQ decode", "video MoVQ decode"]


def test_every_attention_is_named_once(networks):
    for name in NAMES:
        module, _, sites = networks[name]
        every = attention_sites(module)
        assert len({(s.kind, s.key) for s in every}) == len(every), name  # unique names
        assert all(s.block != "unnamed" for s in every), name
        assert sites, name
    keyframe_sites = {str(s) for s in attention_sites(networks["keyframe U-Net (video)"][0])}
    # Perturbed-Attention Guidance's default target: the first spatial self-attention of the middle
    assert "attn1 middle 0 #0" in keyframe_sites


@pytest.mark.parametrize("name", NAMES)
def test_a_backend_is_called_for_every_attention_and_changes_the_output(networks, name):
    _, run, sites = networks[name]
    with torch.no_grad():
        plain = run()
        calls = []

        def stand_in(q, k, v, heads, mask=None):
            calls.append(q.shape)
            return sdpa(q, k, v, heads, mask) * 1.25

        with attention_backend(stand_in):
            changed = run()
        with attention_backend(sdpa):
            again = run()
    assert len(calls) == len(sites)
    assert not torch.allclose(changed, plain)
    assert torch.equal(again, plain)  # the default backend is the networks' own computation


@pytest.mark.parametrize("name", NAMES)
def test_a_runner_sees_every_attention_by_name(networks, name):
    _, run, sites = networks[name]
    seen = []

    def runner(call):
        seen.append(call.site)
        q, k, v = call.projected()
        return call.backend(q, k, v, call.heads, call.mask)

    with torch.no_grad():
        plain = run()
        with attention_runner(runner):
            same = run()
    assert sorted(seen, key=str) == sites
    assert torch.equal(same, plain)


# ------------------------------------------------------------------------------ under ComfyUI


@pytest.fixture(scope="module")
def host(pack):
    """ComfyUI's modules (``--cpu``) and this pack imported as a package, in this process."""
    return pack


@pytest.fixture(scope="module")
def host_networks(host):
    return _networks(host.kv_core)


def _host_run(host, run, options):
    with torch.no_grad(), host.nodes.host.attention.host_attention(options):
        return run()


@pytest.mark.parametrize("name", NAMES)
def test_under_comfyui_without_levers_the_result_is_the_networks_own(host, host_networks, name):
    _, run, _ = host_networks[name]
    with torch.no_grad():
        plain = run()
    assert torch.equal(_host_run(host, run, {}), plain)


@pytest.mark.parametrize("name", NAMES)
def test_each_comfyui_mechanism_reaches_every_attention(host, host_networks, name, monkeypatch):
    import comfy.ldm.modules.attention as comfy_attention
    from kvpack.nodes.host.attention import sdpa_host_signature

    _, run, sites = host_networks[name]
    with torch.no_grad():
        plain = run()

    # 1. the launch flags' choice: ComfyUI's optimized_attention
    calls = []

    def launch_flag_backend(q, k, v, heads, mask=None, skip_reshape=False, **kw):
        calls.append(skip_reshape)
        return sdpa_host_signature(q, k, v, heads, mask=mask, skip_reshape=skip_reshape, **kw) * 1.25

    monkeypatch.setattr(comfy_attention, "optimized_attention", launch_flag_backend)
    out = _host_run(host, run, {})
    monkeypatch.undo()
    assert len(calls) == len(sites) and not torch.allclose(out, plain)

    # 2. optimized_attention_override
    calls = []

    def override(func, *args, **kwargs):
        calls.append(kwargs["transformer_options"])
        return func(*args, **kwargs) * 1.25

    out = _host_run(host, run, {"optimized_attention_override": override})
    assert len(calls) == len(sites) and not torch.allclose(out, plain)

    # 3. patches_replace attn1 / attn2 keyed (block, id, index) — every site by its own key
    seen = []

    def replace(q, k, v, extra, mask=None):
        seen.append(extra["kandinsky_video_site"])
        assert extra["block"] == seen[-1].key[:2] and extra["transformer_index"] == seen[-1].index
        return sdpa_host_signature(q, k, v, extra["n_heads"], mask=mask) * 1.25

    patches = {"attn1": {}, "attn2": {}}
    for s in sites:
        patches[s.kind][s.key] = replace
    out = _host_run(host, run, {"patches_replace": patches})
    assert sorted(seen, key=str) == sites and not torch.allclose(out, plain)

    # 4. attn1_patch / attn2_patch on the tokens before the projections
    seen = []

    def patch(n, context, value, extra):
        seen.append(extra["kandinsky_video_site"])
        return n * 1.25, context, value

    out = _host_run(host, run, {"patches": {"attn1_patch": [patch], "attn2_patch": [patch]}})
    assert sorted(seen, key=str) == sites and not torch.allclose(out, plain)


def test_a_replace_patch_by_block_reaches_every_attention_of_that_block(host, host_networks):
    """``(block, id)`` without the index (as set_model_options_patch_replace stores it when no
    transformer index is given, e.g. Perturbed-Attention Guidance) matches each index."""
    _, run, sites = host_networks["keyframe U-Net (video)"]
    seen = []

    def replace(q, k, v, extra, mask=None):
        seen.append(extra["kandinsky_video_site"])
        return v

    _host_run(host, run, {"patches_replace": {"attn1": {("middle", 0): replace}}})
    assert sorted(seen, key=str) == [s for s in sites if s.kind == "attn1" and s.key[:2] == ("middle", 0)]


def test_patch_kinds_these_networks_lack_are_refused_by_name(host, host_networks):
    _, run, _ = host_networks["interpolation U-Net"]
    with pytest.raises(ValueError, match=r"output_block_patch.*attn1_patch"):
        _host_run(host, run, {"patches": {"output_block_patch": [lambda h, hsp, o: (h, hsp)]}})
    with pytest.raises(ValueError, match=r"patches_replace\['dit'\]"):
        _host_run(host, run, {"patches_replace": {"dit": {("double_block", 0): lambda *a: a}}})


# --------------------------------------------------------------- the core-sampling path


def _out(result):
    return result.result if hasattr(result, "result") else result


def _core_model(host, nets, stage):
    cs = host.nodes.core_sampling
    if stage == "interpolation":
        return _out(cs.KandinskyVideoInterpolationModel.execute(interpolation_unet=nets["interpolation"]))[0]
    return _out(cs.KandinskyVideoKeyframeModel.execute(keyframe_unet=nets["keyframe"]))[0]


def _sample(host, nets, stage, model, steps=3):
    """One stage sampled on the core path with ``model`` (patched or not): the same conds,
    noise and sigmas for every MODEL."""
    import core_sampling_runs as tcs
    cs = host.nodes.core_sampling
    if stage == "first_frame":
        pos, neg, latent = _out(cs.KandinskyVideoFirstFrameConditioning.execute(model, nets["text"], 64, 64))
        guider = _out(cs.KandinskyVideoGuider.execute(model, pos, neg, 5.0, 2.0, True))[0]
    elif stage == "keyframes":
        key = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5
        first = host.nodes.host.sockets.FirstFrameCondition(key, 64, 64)
        pos, image_only, neg, latent = _out(cs.KandinskyVideoKeyframesConditioning.execute(
            model, nets["text"], first, 3, "medium", 20, 7))
        guider = _out(cs.KandinskyVideoGuider.execute(model, pos, neg, 5.0, 2.0, True, image_only))[0]
    else:
        frames = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
        video = host.nodes.host.latent.video_latent(frames, 3)
        pos, neg, latent = _out(cs.KandinskyVideoInterpolationConditioning.execute(model, video, 3, nets["text"]))
        guider = _out(cs.KandinskyVideoGuider.execute(model, pos, neg, 0.5, 2.0, True))[0]
    sigmas = _out(cs.KandinskyVideoSigmas.execute(stage, steps, "default"))[0]
    latent = latent["samples"]
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(5))
    return tcs.core_sample(guider, noise, latent, "ddim", sigmas)


def _patch_node(node, model, *args):
    return node().patch(model, *args)[0] if hasattr(node, "patch") else _out(node.execute(model, *args))[0]


@pytest.mark.parametrize("stage", ["first_frame", "keyframes", "interpolation"])
def test_perturbed_attention_guidance_changes_the_core_path_result(host, nets, stage):
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance

    model = _core_model(host, nets, stage)
    plain = _sample(host, nets, stage, model)
    guided = _sample(host, nets, stage, _patch_node(PerturbedAttentionGuidance, model, 3.0))
    assert guided.isfinite().all()
    assert float((guided - plain).abs().max()) > 1e-2  # the patch acts (it did not: 1.2e-4 at scale 100)


def test_self_attention_guidance_works_on_the_first_frame_and_is_refused_by_name_on_video(host, nets):
    from comfy_extras.nodes_sag import SelfAttentionGuidance

    model = _core_model(host, nets, "first_frame")
    plain = _sample(host, nets, "first_frame", model)
    sag = _patch_node(SelfAttentionGuidance, model, 0.5, 2.0)
    guided = _sample(host, nets, "first_frame", sag)
    assert guided.isfinite().all() and float((guided - plain).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="Self-Attention Guidance .* first frame only"):
        _sample(host, nets, "keyframes", sag)


def test_a_controlnet_on_the_conds_is_refused_by_name(host, nets):
    model = _core_model(host, nets, "first_frame")
    adapter = model.model.diffusion_model
    x = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="ControlNet"):
        adapter(x, torch.zeros(1), context=torch.zeros(1, 5, 16), control={"output": [torch.zeros(1)]})


# ------------------------------------------------- a core MODEL in front of the stage nodes


def _keyframes_node(host, nets, model=None, steps=2):
    key = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5
    first = host.nodes.host.sockets.FirstFrameCondition(key, 64, 64)
    node = host.nodes.keyframes.KandinskyVideoKeyframes
    result = _out(node.execute(nets["keyframe"], nets["text"], first, "medium", 20, 5.0, 2.0, steps, "ddim", 11, 2,
                               model=model))
    return result[0]["samples"]


def _interpolate_node(host, nets, model=None):
    frames = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    node = host.nodes.interpolation.KandinskyVideoInterpolate
    video = host.nodes.host.latent.video_latent(frames, 3)
    return _out(node.execute(nets["interpolation"], video, 3, 0.5, 2, "ddim", 11, model=model))[0]["samples"]


def test_the_stage_nodes_run_a_plain_core_model_as_their_own_unet(host, nets):
    plain = _keyframes_node(host, nets)
    assert torch.equal(_keyframes_node(host, nets, _core_model(host, nets, "keyframes")), plain)
    plain = _interpolate_node(host, nets)
    assert torch.equal(_interpolate_node(host, nets, _core_model(host, nets, "interpolation")), plain)


def test_attention_patches_of_the_model_act_in_the_stage_loop(host, nets):
    plain = _keyframes_node(host, nets)
    model = _core_model(host, nets, "keyframes").clone()
    seen = []

    def perturbed(q, k, v, extra, mask=None):
        seen.append(extra["kandinsky_video_site"])
        return v

    model.set_model_attn1_replace(perturbed, "middle", 0, 0)
    changed = _keyframes_node(host, nets, model)
    assert seen and {str(s) for s in seen} == {"attn1 middle 0 #0"}
    assert float((changed - plain).abs().max()) > 1e-3
    assert torch.equal(_keyframes_node(host, nets), plain)  # the U-Net's own patcher stays unpatched


def test_weight_patches_of_the_model_act_in_the_stage_loop_and_are_undone_after(host, nets):
    plain = _interpolate_node(host, nets)
    model = _core_model(host, nets, "interpolation").clone()
    key = "diffusion_model.net.in_layer.weight"
    weight = model.model.state_dict()[key]
    assert model.add_patches({key: ("diff", (torch.full_like(weight, 0.05),))}, 1.0) == [key]
    changed = _interpolate_node(host, nets, model)
    assert float((changed - plain).abs().max()) > 1e-3
    assert torch.equal(_interpolate_node(host, nets), plain)  # loading the plain U-Net restores its weights


def test_torch_compile_model_compiles_the_stage_loop(host, nets):
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    plain = _keyframes_node(host, nets)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = _core_model(host, nets, "keyframes").clone()
    set_torch_compile_wrapper(model=model, backend=counting_backend)
    torch._dynamo.reset()
    compiled = _keyframes_node(host, nets, model)
    assert graphs  # the loop's U-Net calls went through torch.compile
    assert float((compiled - plain).abs().max()) <= 1e-5


def _first_frame_call(host, model, guidance_scale=5.0):
    """One call of the first-frame stage's U-Net (image mode, cond and uncond rows) through
    the stage's StageUNet of ``model``, inside the host attention of ``model``."""
    sm = host.nodes.host.stage_model
    g = torch.Generator().manual_seed(0)
    x, time = torch.randn(2, 9, 8, 8, generator=g), torch.full((2,), 500.0)
    context, mask = torch.randn(2, 5, 16, generator=g), torch.ones(2, 5, dtype=torch.bool)
    options = model.model_options.get("transformer_options") or {}
    unet = sm.unet_of(model, None, (2, guidance_scale + 1.0), "test")
    with torch.no_grad(), host.nodes.host.attention.host_attention(options, "test", model.model.kv_network):
        return unet(x, time, context, mask, mode="image")


def test_perturbed_attention_guidance_in_a_stage_call_is_core_samplings_formula(host, nets):
    """The prompt's row moves by scale / (w + 1) times its difference to the run with the
    middle block's self-attention giving its values, so the guided prediction
    (w + 1) cond - w uncond moves by scale times that difference: core's
    ``cfg + (cond - pag) * scale``."""
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance

    model = _core_model(host, nets, "first_frame")
    plain = _first_frame_call(host, model)
    values = model.clone()
    values.set_model_attn1_replace(lambda q, k, v, extra, mask=None: v, "middle", 0)
    perturbed = _first_frame_call(host, values)
    assert float((perturbed[:1] - plain[:1]).abs().max()) > 1e-3
    got = _first_frame_call(host, _patch_node(PerturbedAttentionGuidance, model, 3.0))
    expected = torch.cat([plain[:1] + 3.0 / 6.0 * (plain[:1] - perturbed[:1]), plain[1:]])
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    # guided: (w + 1) * cond - w * uncond, before and after
    moved = (6.0 * got[:1] - 5.0 * got[1:]) - (6.0 * plain[:1] - 5.0 * plain[1:])
    assert torch.allclose(moved, 3.0 * (plain[:1] - perturbed[:1]), atol=1e-5, rtol=0)


def test_perturbed_attention_guidance_acts_in_the_stage_loops(host, nets):
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance

    for stage, run in (("keyframes", _keyframes_node), ("interpolation", _interpolate_node)):
        plain = run(host, nets)
        model = _core_model(host, nets, stage)
        guided = run(host, nets, _patch_node(PerturbedAttentionGuidance, model, 3.0))
        assert guided.isfinite().all() and float((guided - plain).abs().max()) > 1e-3, stage
        assert torch.equal(run(host, nets, _patch_node(PerturbedAttentionGuidance, model, 0.0)), plain), stage
    with pytest.raises(ValueError, match="Perturbed-Attention Guidance moves the prompt's prediction.*weight is 0"):
        key = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5
        first = host.nodes.host.sockets.FirstFrameCondition(key, 64, 64)
        pag = _patch_node(PerturbedAttentionGuidance, _core_model(host, nets, "keyframes"), 3.0)
        host.nodes.keyframes.KandinskyVideoKeyframes.execute(nets["keyframe"], nets["text"], first, "medium", 20,
                                                             0.0, 2.0, 2, "ddim", 11, 2, model=pag)


def test_patches_that_need_core_sampling_are_refused_by_name_on_the_stage_nodes(host, nets):
    from comfy_extras.nodes_sag import SelfAttentionGuidance

    sag = _patch_node(SelfAttentionGuidance, _core_model(host, nets, "keyframes"), 0.5, 2.0)
    with pytest.raises(ValueError, match=r"post-CFG function.*core-sampling path.*On this node work: weight patches"):
        _keyframes_node(host, nets, sag)
    sampling = _core_model(host, nets, "keyframes").clone()
    sampling.add_object_patch("model_sampling", sampling.get_model_object("model_sampling"))
    with pytest.raises(ValueError, match="object patch of 'model_sampling'"):
        _keyframes_node(host, nets, sampling)
    with pytest.raises(ValueError, match="core MODEL of the U-Net connected to this node"):
        _keyframes_node(host, nets, _core_model(host, nets, "interpolation"))
