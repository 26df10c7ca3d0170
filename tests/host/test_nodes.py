"""The Kandinsky Video nodes inside a real ComfyUI (tests/comfy_host.py), with a tiny
random-weight release (kv_core.tiny) in models/kandinsky_video/.

Interface (ids, input names, tooltips, categories), model lists, node errors before and
during a run, Save/Load Latent, interrupt latency and memory over many prompts. The
shipped workflows are run by tests/host/test_workflows.py, which reuses the fixtures here.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import time

import pytest
from PIL import Image

from host_prompts import SIZE, WORKFLOWS, error_text, i2v_prompt, loader_error, node_of, shipped_workflow


# Node ids, input names (in order) and output types are an interface: saved workflows
# refer to them. Changing this table means breaking users' workflows.
INTERFACE = {
    "KandinskyVideoKeyframeUNetLoader": (["unet_name", "weight_dtype", "device"], ["KV_KEYFRAME_UNET"]),
    "KandinskyVideoInterpolationUNetLoader": (["unet_name", "weight_dtype", "device"], ["KV_INTERPOLATION_UNET"]),
    "KandinskyVideoMoVQLoader": (["movq_name", "weight_dtype", "device"], ["KV_MOVQ"]),
    "KandinskyVideoVideoMoVQLoader": (["movq_name", "weight_dtype", "device"], ["KV_VIDEO_MOVQ"]),
    "KandinskyVideoTextEncoderLoader": (["text_encoder_name", "projections_name", "weight_dtype", "device"],
                                        ["KV_TEXT_ENCODER"]),
    "KandinskyVideoTextEncode": (["text_encoder", "prompt", "negative_prompt", "use_cache"], ["KV_CONDITIONING"]),
    "KandinskyVideoSaveEncodedPrompt": (["conditioning", "filename_prefix"], []),
    "KandinskyVideoLoadEncodedPrompt": (["encoded_prompt"], ["KV_CONDITIONING"]),
    "KandinskyVideoFirstFrame": (["keyframe_unet", "movq", "conditioning", "width", "height", "guidance_scale",
                                  "steps", "sampler", "seed", "model", "step_cache"], ["IMAGE"]),
    "KandinskyVideoEncodeFirstFrame": (["movq", "image", "width", "height", "resize_mode"], ["KV_FIRST_FRAME"]),
    "KandinskyVideoKeyframes": (["keyframe_unet", "conditioning", "first_frame", "motion", "noise_augmentation",
                                 "guidance_weight_prompt", "guidance_weight_image", "steps", "sampler", "seed",
                                 "num_keyframes", "model", "step_cache"], ["LATENT"]),
    "KandinskyVideoInterpolate": (["interpolation_unet", "latent", "skip_frames", "guidance_scale", "steps",
                                   "sampler", "seed", "conditioning", "window", "model", "step_cache"], ["LATENT"]),
    "KandinskyVideoDecode": (["video_movq", "latent", "chunk_size", "num_keyframes", "segment_keyframes"],
                             ["IMAGE", "FLOAT"]),
    "KandinskyVideoEncodeVideo": (["movq", "interpolation_unet", "images", "fps", "fit", "max_side", "mask"],
                                  ["LATENT"]),
    # the core sampling path (nodes/core_sampling.py)
    "KandinskyVideoKeyframeModel": (["keyframe_unet"], ["MODEL"]),
    "KandinskyVideoInterpolationModel": (["interpolation_unet"], ["MODEL"]),
    "KandinskyVideoFirstFrameConditioning": (["model", "conditioning", "width", "height"],
                                             ["CONDITIONING", "CONDITIONING", "LATENT"]),
    "KandinskyVideoDecodeFirstFrame": (["movq", "latent"], ["IMAGE"]),
    "KandinskyVideoKeyframesConditioning": (["model", "conditioning", "first_frame", "num_keyframes", "motion",
                                             "noise_augmentation", "seed"],
                                            ["CONDITIONING", "CONDITIONING", "CONDITIONING", "LATENT"]),
    "KandinskyVideoInterpolationConditioning": (["model", "latent", "skip_frames", "conditioning"],
                                                ["CONDITIONING", "CONDITIONING", "LATENT"]),
    "KandinskyVideoAssembleFrames": (["frames", "groups"], ["LATENT"]),
    "KandinskyVideoGuider": (["model", "positive", "negative", "guidance_scale", "image_guidance_scale", "clamp_x0",
                              "image_only"], ["GUIDER"]),
    "KandinskyVideoSigmas": (["stage", "steps", "spacing"], ["SIGMAS"]),
    "KandinskyVideoExtend": (["keyframe_unet", "previous_conditioning", "latent", "motion", "noise_augmentation",
                              "guidance_weight_prompt", "guidance_weight_image", "steps", "sampler", "seed",
                              "num_keyframes", "conditioning", "condition_frames", "condition_source", "movq",
                              "step_cache"],
                             ["LATENT", "KV_CONDITIONING"]),
    "KandinskyVideoStepCache": (["interval", "branch", "start_step", "end_step"], ["KV_STEP_CACHE"]),
    "KandinskyVideoApplyStepCache": (["model", "step_cache"], ["MODEL"]),
}


# --------------------------------------------------------------------------- interface

def test_node_ids_inputs_and_outputs_are_stable(kv):
    nodes = kv.pack_node_types()
    for node_id, (inputs, outputs) in INTERFACE.items():
        assert node_id in nodes, f"{node_id} is missing: saved workflows would show a missing node"
        info = nodes[node_id]
        order = info["input_order"]
        assert order.get("required", []) + order.get("optional", []) == inputs, node_id
        assert info["output"] == outputs, node_id


def test_every_input_has_a_tooltip_and_one_category_tree(kv):
    for node_id in INTERFACE:
        info = kv.object_info(node_id)
        assert info["category"].startswith("Kandinsky Video/"), node_id
        assert info["description"], node_id
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_model_lists_show_the_release_files(kv):
    unet = kv.object_info("KandinskyVideoKeyframeUNetLoader")["input"]["required"]["unet_name"]
    files = unet[1]["options"] if unet[0] == "COMBO" else unet[0]
    assert {"t2v.pt", "interpolation.pt", "movq.pt", "video_movq.pt", "t5_projections.pt"} <= set(files)
    assert "configs.json" not in files
    text = kv.object_info("KandinskyVideoTextEncoderLoader")["input"]["required"]["text_encoder_name"]
    choices = text[1]["options"] if text[0] == "COMBO" else text[0]
    assert "flan-ul2" in choices  # the Hugging Face folder, not the shards inside it
    assert not any(c.startswith("flan-ul2/") for c in choices)
    dtypes = kv.object_info("KandinskyVideoMoVQLoader")["input"]["required"]["weight_dtype"]
    assert (dtypes[1]["options"] if dtypes[0] == "COMBO" else dtypes[0]) == ["default", "bf16", "fp16", "fp8_e4m3fn"]


def test_shipped_workflows_are_listed_as_templates(kv):
    listed = kv.get("/workflow_templates").json()
    ours = next((v for k, v in listed.items() if "kandinsky" in k.lower()), [])
    assert sorted(ours) == sorted(p.stem for p in WORKFLOWS.glob("*.json"))


# --------------------------------------------------------------------------- errors

def test_sizes_follow_from_the_networks(kv):
    """The tiny release's networks (MoVQ x8, U-Nets with 3 levels: x4) run every multiple
    of 32: 96 (no multiple of 64) runs, 100 is refused by the node, before its network
    runs, with the rule named. validate_inputs cannot see the networks, so the node checks."""
    prompt = i2v_prompt(kv)
    bad = copy.deepcopy(prompt)
    encode = node_of(bad, "KandinskyVideoEncodeFirstFrame")
    bad[encode]["inputs"]["width"] = 100
    result = kv.run(bad, timeout=300)
    assert result.status == "error" and result.error["node_id"] == encode
    message = result.error["exception_message"]
    assert "width 100 does not fit" in message and "multiple of 8 " in message  # the image MoVQ alone: x8
    assert "the MoVQ downsamples by 8" in message and "nearest: 96 or 104" in message
    odd = copy.deepcopy(prompt)
    odd[encode]["inputs"]["width"] = 104  # fits the MoVQ, not the keyframe U-Net's 2 halvings
    result = kv.run(odd, timeout=300)
    assert result.status == "error" and result.error["node_id"] == node_of(odd, "KandinskyVideoKeyframes")
    assert "multiple of 4 (the keyframe U-Net halves the latent twice" in result.error["exception_message"]
    good = copy.deepcopy(prompt)
    good[encode]["inputs"]["width"] = 96
    result = kv.run(good, timeout=600, check=True)
    images = [p for p in kv.output_files(result) if p.suffix == ".png"]
    assert images and Image.open(images[0]).size == (96, SIZE)


def test_missing_model_file_names_file_network_and_folders(kv):
    prompt = i2v_prompt(kv)
    bad = copy.deepcopy(prompt)
    loader = node_of(bad, "KandinskyVideoKeyframeUNetLoader")
    bad[loader]["inputs"]["unet_name"] = "kandinsky_t2v_missing.pt"
    result = kv.run(bad, timeout=120)
    assert result.status == "rejected"
    assert loader in result.node_errors
    text = error_text(result)
    assert "kandinsky_t2v_missing.pt" in text and "keyframe U-Net" in text
    assert str(kv.models_dir / "kandinsky_video") in text  # the folder searched
    assert kv.run(prompt, timeout=600).ok


def test_file_of_the_wrong_network_is_a_clear_node_error(kv):
    prompt = i2v_prompt(kv, seed=7)
    bad = copy.deepcopy(prompt)
    loader = node_of(bad, "KandinskyVideoKeyframeUNetLoader")
    bad[loader]["inputs"]["unet_name"] = "movq.pt"
    result = kv.run(bad, timeout=300)
    assert result.status == "error"
    assert result.error["node_id"] == loader
    message = result.error["exception_message"]
    assert "movq.pt" in message and "keyframe U-Net" in message and "image MoVQ" in message
    assert kv.run(prompt, timeout=600).ok


def test_text_encode_tells_what_the_encoder_cannot_read_and_runs_on(kv):
    """A Russian prompt (every word <unk> in the tiny vocabulary, mostly <unk> or single
    letters in Flan-UL2's) and a negative prompt past tokens_length (32 in the tiny release):
    the run goes on, the node shows the counts and the log has a warning for each."""
    prompt = i2v_prompt(kv, steps=1, seed=11)
    encode = node_of(prompt, "KandinskyVideoTextEncode")
    russian = "красная машина едет по прибрежной дороге"
    negative = "blurry, low quality, " * 12
    prompt[encode]["inputs"].update(prompt=russian, negative_prompt=negative)
    mark = kv.log_mark()
    result = kv.run(prompt, timeout=600)
    assert result.ok, result.describe()
    shown = result.outputs[encode]["text"][0]
    assert "prompt: 12 tokens read (up to 31), 6 unknown, 0 dropped" in shown
    assert "write prompts in English" in shown and "Cyrillic" in shown
    assert re.search(r"negative prompt: 31 tokens read \(up to 31\), 0 unknown, \d+ dropped", shown)
    log = kv.log_since(mark)
    assert "Kandinsky Video Text Encode: prompt 'красная машина" in log and "6 of the 12 tokens" in log
    assert "Kandinsky Video Text Encode: negative prompt 'blurry" in log and "were dropped" in log


def test_the_frontend_shows_the_token_report_on_the_text_encode_node(kv, comfy_browser, tmp_path):
    """In the real web frontend the report stays on the Text Encode node itself after the run,
    not only in /history and the log: in the progress-text widget that the pinned frontend
    keeps, or (frontends that clear progress text when the run ends, e.g. 1.58.1) in the text
    preview widget that web/token_report.js adds from the node's ``text`` output. Checked as
    the user sees it: one widget of that node holds the report, and the page shows it."""
    workflow = shipped_workflow("kandinsky_video_image_to_video")
    encode = next(n for n in workflow["nodes"] if n["type"] == "KandinskyVideoTextEncode")
    encode["widgets_values"][0] = "синее море и белые облака"  # five words, five <unk>
    for node in workflow["nodes"]:  # one step at the smallest size
        if node["type"] == "KandinskyVideoKeyframes":
            node["widgets_values"][4] = 1  # steps
        elif node["type"] == "KandinskyVideoEncodeFirstFrame":
            node["widgets_values"][:2] = [SIZE, SIZE]
    comfy_browser.load_workflow(workflow)
    result = comfy_browser.queue(timeout=600)
    assert result.ok, result.describe()
    # the widgets of the node that hold the report, and whether the page shows it: in the
    # rendered text, or in a visible textarea (the widgets are DOM elements in both frontends)
    probe = r"""(() => {
      const n = window.app.graph.nodes.find(n => n.type === 'KandinskyVideoTextEncode');
      if (!n) return null;
      const held = (n.widgets || []).filter(w => w && typeof w.value === 'string'
                                              && w.value.includes('tokens read'));
      if (!held.length) return null;
      const seen = (el) => { const r = el.getBoundingClientRect();
        return r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== 'hidden'; };
      const onPage = document.body.innerText.includes('tokens read')
        || [...document.querySelectorAll('textarea')].some(t => seen(t) && t.value.includes('tokens read'));
      return {widgets: held.map(w => [w.name, w.type, w.value]), onPage};
    })()"""
    try:
        comfy_browser.browser.wait_for(probe.replace("return {", "return onPage && {"), timeout=30)
    except Exception as e:
        picture = tmp_path / "token_report.png"
        comfy_browser.browser.screenshot(picture)
        widgets = comfy_browser.browser.evaluate(
            "window.app.graph.nodes.filter(n => n.type === 'KandinskyVideoTextEncode')"
            ".map(n => [n.id, (n.widgets || []).map(w => [w.name, w.type, String(w.value).slice(0, 80)])])")
        raise AssertionError(f"the page does not show the token report on the Text Encode node; "
                             f"{comfy_browser.browser.evaluate(probe)}; its nodes (id, widgets: name, type, value): "
                             f"{widgets}; the page: {picture}") from e
    time.sleep(2)  # still there once the frontend has cleared what lasts only for the run
    shown = comfy_browser.browser.evaluate(probe)
    assert shown and shown["onPage"] and len(shown["widgets"]) == 1, shown  # shown once, not twice
    text = shown["widgets"][0][2]
    assert "prompt: 10 tokens read (up to 31), 5 unknown, 0 dropped" in text and "English" in text, shown


def test_text_encoder_folder_without_tokenizer_is_refused_at_load(kv, kv_release, tmp_path_factory):
    folder = tmp_path_factory.mktemp("notok") / "flan-ul2-no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(kv_release / "flan-ul2" / name, folder / name)
    message = loader_error(kv, folder, "KandinskyVideoTextEncoderLoader", "text_encoder_name", folder.name, seed=12)
    assert folder.name in message and "tokenizer.json" in message and "spiece.model" in message


@pytest.mark.parametrize("key,value,says", [
    ("tokens_length", "thirty-two", "text_encoder.tokens_length is 'thirty-two'"),
    ("context_dim", 24, "says text_encoder.context_dim 24"),
])
def test_configs_json_that_contradicts_the_text_files_is_refused(kv, kv_release, tmp_path_factory, key, value, says):
    """An unusable tokens_length fell back to 128 in silence; a context_dim other than the
    projections' was ignored."""
    folder = tmp_path_factory.mktemp("badcfg") / f"kv_bad_{key}"
    folder.mkdir()
    shutil.copy(kv_release / "t5_projections.pt", folder / "t5_projections.pt")
    configs = json.loads((kv_release / "configs.json").read_text())
    configs["text_encoder"][key] = value
    (folder / "configs.json").write_text(json.dumps(configs))
    message = loader_error(kv, folder, "KandinskyVideoTextEncoderLoader", "projections_name",
                           f"{folder.name}/t5_projections.pt", seed=14)
    assert says in message


def test_a_file_of_another_model_family_is_described(kv, tmp_path_factory):
    from safetensors.torch import save_file
    import torch

    path = tmp_path_factory.mktemp("sd") / "kv_test_sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
               "first_stage_model.decoder.conv_out.weight": torch.zeros(3, 8, 3, 3),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(8)}, str(path))
    message = loader_error(kv, path, "KandinskyVideoKeyframeUNetLoader", "unet_name", path.name, seed=13)
    assert "a safetensors of 3 tensors" in message and "looks like a Stable Diffusion checkpoint" in message
    assert "keyframe U-Net" in message and "image_in_layer.weight" in message


@pytest.mark.parametrize("class_type,name,value", [
    ("KandinskyVideoKeyframes", "num_keyframes", 1),
    ("KandinskyVideoKeyframes", "motion", "fast"),
    ("KandinskyVideoKeyframes", "guidance_weight_image", 99.0),
    ("KandinskyVideoKeyframes", "steps", 0),
    ("KandinskyVideoEncodeFirstFrame", "width", 5000),
    ("KandinskyVideoEncodeFirstFrame", "resize_mode", "stretch"),
    ("KandinskyVideoDecode", "chunk_size", -1),
    ("KandinskyVideoDecode", "num_keyframes", 65),
    ("KandinskyVideoKeyframeUNetLoader", "weight_dtype", "fp4"),
    ("KandinskyVideoVideoMoVQLoader", "weight_dtype", "int8"),
    ("KandinskyVideoTextEncoderLoader", "weight_dtype", "fp4"),
    ("KandinskyVideoTextEncoderLoader", "text_encoder_name", "no_such_encoder"),
    ("KandinskyVideoTextEncoderLoader", "projections_name", "no_such_projections.pt"),
    ("KandinskyVideoKeyframeUNetLoader", "unet_name", "no_such_unet.pt"),
])
def test_a_bad_value_gives_one_error_on_its_input(kv, class_type, name, value):
    """ComfyUI attaches a validate_inputs message to every input the method takes; the
    schema's own min/max/options checks give one error on the input at fault."""
    prompt = i2v_prompt(kv)
    node = node_of(prompt, class_type)
    prompt[node]["inputs"][name] = value
    result = kv.run(prompt, timeout=120)
    assert result.status == "rejected"
    assert list(result.node_errors) == [node], result.node_errors
    errors = result.node_errors[node]["errors"]
    assert [e["extra_info"]["input_name"] for e in errors] == [name], errors


def test_two_bad_values_give_one_error_each_and_nan_is_refused(kv):
    prompt = i2v_prompt(kv)
    keyframes = node_of(prompt, "KandinskyVideoKeyframes")
    bad = copy.deepcopy(prompt)
    bad[keyframes]["inputs"].update(num_keyframes=1, sampler="euler")
    result = kv.run(bad, timeout=120)
    assert result.status == "rejected"
    errors = result.node_errors[keyframes]["errors"]
    assert sorted(e["extra_info"]["input_name"] for e in errors) == ["num_keyframes", "sampler"], errors
    # NaN passes every min/max comparison: the node refuses it before sampling
    bad = copy.deepcopy(prompt)
    bad[keyframes]["inputs"]["guidance_weight_image"] = "nan"  # the host converts it with float()
    result = kv.run(bad, timeout=300)
    assert result.status == "error" and result.error["node_id"] == keyframes
    assert "guidance_weight_image must be a finite number" in result.error["exception_message"]
