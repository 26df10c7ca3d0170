"""The prompt cache and the encoded-prompt files in the real ComfyUI: a second run of the
text-to-video template with the same prompts, in a fresh server, does not run Load Text
Encoder and makes the identical video; Save / Load Encoded Prompt give the same video
without any text encoder; names that lead out of the input / output folders are refused.

Two servers are started one after the other on one base folder (models, user folder with
the cache, input and output kept), so the second starts with an empty in-memory cache.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from kv_core.tiny import write_tiny_release
from host_prompts import RELEASE_FILES, fast, node_of, shipped_workflow
from tools.harness import ComfyHost, HostError

pytestmark = [pytest.mark.host,  # starts its own ComfyUI servers
              pytest.mark.xdist_group("comfyui")]  # never beside the session's server on another worker

TEMPLATE = "kandinsky_video_text_to_video_8fps"
LOADER, ENCODE = "KandinskyVideoTextEncoderLoader", "KandinskyVideoTextEncode"


def _start(base, release) -> ComfyHost:
    if os.environ.get("KV_SKIP_COMFY") and os.environ.get("CI", "").lower() in ("", "0", "false"):
        pytest.skip("KV_SKIP_COMFY is set: the tests that need a real ComfyUI are skipped")
    host = ComfyHost(base_dir=base, models={"kandinsky_video": [release / name for name in RELEASE_FILES]})
    try:
        return host.start()
    except HostError as e:
        pytest.fail(f"ComfyUI did not start: {e}", pytrace=False)


def _template(host, prefix: str) -> dict:
    """The template as a fast API prompt whose decoded frames are also saved as PNGs."""
    prompt = fast(host.to_api(shipped_workflow(TEMPLATE)), seed=5)
    prompt["901"] = {"class_type": "SaveImage", "inputs": {"images": [node_of(prompt, "KandinskyVideoDecode"), 0],
                                                          "filename_prefix": prefix}}
    return prompt


def _frames(host, result, node: str = "901") -> np.ndarray:
    items = result.outputs[node]["images"]
    files = sorted(host.output_dir / i.get("subfolder", "") / i["filename"] for i in items)
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])


def test_a_fresh_server_serves_known_prompts_without_the_text_encoder(tmp_path):
    release = tmp_path / "release"
    write_tiny_release(release)
    base = tmp_path / "comfy"
    host = _start(base, release)
    try:
        first = host.run(_template(host, "first"), timeout=900)
        assert first.ok, first.describe()
        prompt = first.history["prompt"][2]
        assert node_of(prompt, LOADER) in first.executed and node_of(prompt, ENCODE) in first.executed
        video = _frames(host, first)
    finally:
        host.stop()
    cache = base / "user" / "kandinsky_video" / "prompt_cache"
    assert len(list(cache.glob("*.safetensors"))) == 1

    host = _start(base, release)  # a fresh server: nothing in memory
    try:
        second_prompt = _template(host, "second")
        encode = node_of(second_prompt, ENCODE)
        second_prompt["902"] = {"class_type": "KandinskyVideoSaveEncodedPrompt",
                                "inputs": {"conditioning": [encode, 0], "filename_prefix": "shared/prompt"}}
        second = host.run(second_prompt, timeout=900)
        assert second.ok, second.describe()
        assert node_of(second_prompt, LOADER) not in second.executed, "the text encoder was loaded"
        assert encode in second.executed
        assert "from the prompt cache" in second.outputs[encode]["text"][0]
        assert np.array_equal(_frames(host, second), video)

        # the saved encoded prompt, loaded from input/, makes the same video without any text encoder
        saved = host.output_dir / "shared" / "prompt_00001_.safetensors"
        assert saved.is_file()
        shutil.copy(saved, host.input_dir / "my_prompt.safetensors")
        third = _template(host, "third")
        for key in [k for k, v in third.items() if v["class_type"] in (LOADER, ENCODE)]:
            del third[key]
        third["903"] = {"class_type": "KandinskyVideoLoadEncodedPrompt",
                        "inputs": {"encoded_prompt": "my_prompt.safetensors"}}
        for node in third.values():
            if node["inputs"].get("conditioning") == [encode, 0]:
                node["inputs"]["conditioning"] = ["903", 0]
        result = host.run(third, timeout=900)
        assert result.ok, result.describe()
        assert np.array_equal(_frames(host, result), video)
        # and from output/ with ComfyUI's [output] annotation
        third["903"]["inputs"]["encoded_prompt"] = "shared/prompt_00001_.safetensors [output]"
        third["901"]["inputs"]["filename_prefix"] = "fourth"
        result = host.run(third, timeout=900)
        assert result.ok, result.describe()
        assert np.array_equal(_frames(host, result), video)

        # names that lead out of the folders are refused before anything runs
        (base / "secret.safetensors").write_bytes(saved.read_bytes())
        for name in ("../secret.safetensors", str(base / "secret.safetensors"), "../secret.safetensors [output]"):
            third["903"]["inputs"]["encoded_prompt"] = name
            bad = host.run(third, timeout=300)
            assert bad.status == "rejected" and "903" in bad.node_errors, (name, bad.describe())
            assert "inside ComfyUI's" in str(bad.node_errors["903"]), bad.node_errors
        loader = node_of(second_prompt, LOADER)
        escape = {loader: second_prompt[loader], encode: second_prompt[encode],
                  "902": {"class_type": "KandinskyVideoSaveEncodedPrompt",
                          "inputs": {"conditioning": [encode, 0], "filename_prefix": "../../escaped"}}}
        bad = host.run(escape, timeout=300)
        assert bad.status == "error" and "leads outside" in bad.error["exception_message"], bad.describe()
        assert not list(base.parent.glob("escaped*")) and not list(base.glob("escaped*"))
    finally:
        host.stop()


def test_the_small_encoder_loads_and_encodes_through_the_loader_node(tmp_path):
    """An 8-bit .gguf encoder (kv_core.convert t5 --dtype q8_0) is listed, loaded by Load Text
    Encoder and encodes the template's prompt; the video is close to the full encoder's."""
    pytest.importorskip("gguf", reason="the optional gguf package (tests/requirements.txt)")
    import torch

    from kv_core.convert import convert_t5_encoder
    from kv_core.models.text_projection import PROJECTION_LABELS, TextProjection
    from kv_core.tiny import TINY_CONTEXT_DIM, randomize_, write_tiny_t5

    release = tmp_path / "release"
    write_tiny_release(release)
    wide = tmp_path / "wide"  # a 64-wide T5: every matrix has rows of a multiple of 32 (GGUF's block)
    write_tiny_t5(wide / "flan-ul2", d_model=64, d_kv=16)
    generator = torch.Generator().manual_seed(3)
    torch.save({label: randomize_(TextProjection(64, TINY_CONTEXT_DIM), generator).state_dict()
                for label in PROJECTION_LABELS}, wide / "wide_t5_projections.pt")
    small = convert_t5_encoder(wide / "flan-ul2", wide / "kv_t5_q8_0.gguf", dtype="q8_0")
    host = _start(tmp_path / "comfy", release)
    try:
        host.add_model("text_encoders", small)
        host.add_model("kandinsky_video", wide / "wide_t5_projections.pt")
        host.add_model("text_encoders", wide / "flan-ul2", name="wide-flan-ul2")
        spec = host.object_info(LOADER)["input"]["required"]["text_encoder_name"]
        names = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
        assert "kv_t5_q8_0.gguf" in names, names
        videos = {}
        for name in ("wide-flan-ul2", "kv_t5_q8_0.gguf"):
            prompt = _template(host, name.split(".")[0])
            loader = node_of(prompt, LOADER)
            prompt[loader]["inputs"].update(text_encoder_name=name, projections_name="wide_t5_projections.pt")
            result = host.run(prompt, timeout=900)
            assert result.ok, result.describe()
            assert loader in result.executed
            videos[name] = _frames(host, result).astype(np.int16)
        diff = np.abs(videos["kv_t5_q8_0.gguf"] - videos["wide-flan-ul2"])
        assert videos["kv_t5_q8_0.gguf"].shape == videos["wide-flan-ul2"].shape
        assert diff.mean() < 8, diff.mean()  # same prompt, 8-bit weights: a close video, not another one
    finally:
        host.stop()
