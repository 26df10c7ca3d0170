"""Video latents between the nodes inside a real ComfyUI (tiny release): Save Latent / Load
Latent give the direct run, Decode of a loaded latent asks for what the latent cannot say,
long videos (Extend) and their saved latents, Extend's options."""
from __future__ import annotations

import copy
import shutil
import uuid

import numpy as np
import pytest
from PIL import Image

from host_prompts import fast, i2v_prompt, node_of, shipped_workflow


def _save_latent(prompt: dict, node: str, key: str, prefix: str) -> None:
    prompt[key] = {"class_type": "SaveLatent", "inputs": {"samples": [node, 0], "filename_prefix": prefix}}


def _decoded(prompt: dict, latent: list, key: str, prefix: str, num_keyframes: int | None = None) -> None:
    """Decode ``latent`` (a link) and keep its frames (SaveImage) and fps (PreviewAny)."""
    movq = node_of(prompt, "KandinskyVideoVideoMoVQLoader")
    inputs = {"video_movq": [movq, 0], "latent": latent, "chunk_size": 0}
    if num_keyframes is not None:
        inputs["num_keyframes"] = num_keyframes
    prompt[key] = {"class_type": "KandinskyVideoDecode", "inputs": inputs}
    prompt[key + "1"] = {"class_type": "SaveImage", "inputs": {"images": [key, 0], "filename_prefix": prefix}}
    prompt[key + "2"] = {"class_type": "PreviewAny", "inputs": {"source": [key, 1]}}


def _video(host, result, key: str) -> tuple[np.ndarray, float]:
    """Frames (uint8 [F, H, W, 3]) and fps of a ``_decoded`` output."""
    items = result.outputs[key + "1"]["images"]
    files = sorted(host.output_dir / i.get("subfolder", "") / i["filename"] for i in items)
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])
    return frames, float(result.outputs[key + "2"]["text"][0])


def _saved_latents(host, result) -> dict:
    """The ``.latent`` files a run saved, copied into input/ for Load Latent: the tag before
    the counter of each file name (``..._k_00001_.latent`` -> ``k``) -> file name."""
    saved = {}
    for p in host.output_files(result):
        if p.suffix == ".latent":
            shutil.copy(p, host.input_dir / p.name)
            saved[p.name.split("_")[-3]] = p.name
    return saved


def _interpolate(prompt: dict, like: dict, latent: list, key: str, skip_frames: int) -> None:
    """An Interpolate with the inputs of ``like`` but another latent and skip_frames."""
    prompt[key] = {"class_type": "KandinskyVideoInterpolate",
                   "inputs": dict(like["inputs"], latent=latent, skip_frames=skip_frames)}


@pytest.mark.parametrize("num_keyframes", [8, 12])
def test_saved_latent_gives_the_direct_run(kv, num_keyframes):
    """Keyframes -> Interpolate -> Interpolate -> Decode directly, and the same from
    latents saved after each stage: Load Latent -> Decode (1 and 2 passes) and Load
    Latent -> Interpolate (once or twice) -> Decode give the direct run's frames and fps.
    Before: Decode after a load guessed 12 keyframes (8 keyframes: 2.18 fps instead of
    7.91) and an Interpolate after a load guessed its noise stream (frames 20/255 off)."""
    seed = 21
    prompt = fast(kv.to_api(shipped_workflow("kandinsky_video_text_to_video_8fps")), seed=seed)
    for key in [k for k, v in prompt.items() if v["class_type"] in ("KandinskyVideoDecode", "CreateVideo",
                                                                   "SaveVideo")]:
        del prompt[key]
    keyframes = node_of(prompt, "KandinskyVideoKeyframes")
    first = node_of(prompt, "KandinskyVideoInterpolate")
    prompt[keyframes]["inputs"]["num_keyframes"] = num_keyframes
    assert prompt[first]["inputs"]["skip_frames"] == 3
    like = copy.deepcopy(prompt[first])
    _interpolate(prompt, like, [first, 0], "800", 1)
    tag = f"kv_path_{num_keyframes}_{uuid.uuid4().hex[:6]}"
    _save_latent(prompt, keyframes, "810", f"latents/{tag}_k")
    _save_latent(prompt, first, "811", f"latents/{tag}_i")
    _decoded(prompt, [first, 0], "820", f"{tag}/direct1")
    _decoded(prompt, ["800", 0], "830", f"{tag}/direct2")
    direct = kv.run(prompt, timeout=900, check=True)
    saved = _saved_latents(kv, direct)
    assert set(saved) == {"k", "i"}
    one, fps1 = _video(kv, direct, "820")
    two, fps2 = _video(kv, direct, "830")
    n1, n2 = 4 * num_keyframes - 3, 16 * num_keyframes - 15
    assert (len(one), len(two)) == (n1, n2)
    assert fps1 == pytest.approx(n1 / (5.5 * num_keyframes / 12)) and fps2 == pytest.approx(n2 / (5.5 * num_keyframes / 12))

    loaded = {k: v for k, v in prompt.items() if v["class_type"] in (
        "KandinskyVideoTextEncoderLoader", "KandinskyVideoTextEncode", "KandinskyVideoInterpolationUNetLoader",
        "KandinskyVideoVideoMoVQLoader")}
    loaded["700"] = {"class_type": "LoadLatent", "inputs": {"latent": saved["k"]}}
    loaded["701"] = {"class_type": "LoadLatent", "inputs": {"latent": saved["i"]}}
    _interpolate(loaded, like, ["700", 0], "710", 3)  # keyframes -> pass 1 after a load
    _interpolate(loaded, like, ["710", 0], "711", 1)  # -> pass 2
    _interpolate(loaded, like, ["701", 0], "712", 1)  # pass 1 -> pass 2 after a load
    for key, link in (("720", ["701", 0]), ("730", ["710", 0])):
        _decoded(loaded, link, key, f"{tag}/{key}", num_keyframes)
    for key, link in (("740", ["711", 0]), ("750", ["712", 0])):
        _decoded(loaded, link, key, f"{tag}/{key}", num_keyframes)
    after = kv.run(loaded, timeout=900, check=True)
    for key, (frames, fps) in (("720", (one, fps1)), ("730", (one, fps1)), ("740", (two, fps2)),
                               ("750", (two, fps2))):
        got, got_fps = _video(kv, after, key)
        assert got_fps == pytest.approx(fps), key
        assert np.array_equal(got, frames), (key, int(np.abs(got.astype(int) - frames).max()))


def test_decode_of_a_loaded_latent_asks_for_the_keyframe_count(kv):
    """A loaded latent carries only its frames: Decode refuses to guess the frame rate and
    says what to set; a count that contradicts the latent's record is refused too."""
    prompt = i2v_prompt(kv, seed=3)
    keyframes = node_of(prompt, "KandinskyVideoKeyframes")
    prefix = f"latents/kv_{uuid.uuid4().hex[:8]}"
    _save_latent(prompt, keyframes, "901", prefix)
    result = kv.run(prompt, timeout=600, check=True)
    saved = [p for p in kv.output_files(result) if p.suffix == ".latent"]
    assert len(saved) == 1
    shutil.copy(saved[0], kv.input_dir / saved[0].name)
    decode = {
        "1": {"class_type": "LoadLatent", "inputs": {"latent": saved[0].name}},
        "2": {"class_type": "KandinskyVideoVideoMoVQLoader", "inputs": {"movq_name": "video_movq.pt",
                                                                       "weight_dtype": "default"}},
        "3": {"class_type": "KandinskyVideoDecode", "inputs": {"video_movq": ["2", 0], "latent": ["1", 0],
                                                              "chunk_size": 0}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    result = kv.run(decode, timeout=600)
    assert result.status == "error" and result.error["node_id"] == "3"
    assert "set num_keyframes on this node" in result.error["exception_message"]
    decode["3"]["inputs"]["num_keyframes"] = 5  # 12 frames are no video of 5 keyframes
    result = kv.run(decode, timeout=600)
    assert result.status == "error" and "12 frames are not a video of 5 keyframes" in result.error["exception_message"]
    direct = copy.deepcopy(prompt)
    direct[node_of(direct, "KandinskyVideoDecode")]["inputs"]["num_keyframes"] = 6
    result = kv.run(direct, timeout=600)
    assert result.status == "error"
    assert "num_keyframes is 6 but this latent was made from 12 keyframes" in result.error["exception_message"]


def _long_video(host, seed: int) -> dict:
    """The shipped three-prompt template as a fast API prompt without its video file."""
    prompt = fast(host.to_api(shipped_workflow("kandinsky_video_long_video_3_prompts")), seed=seed)
    for key in [k for k, v in prompt.items() if v["class_type"] in ("KandinskyVideoDecode", "CreateVideo",
                                                                   "SaveVideo")]:
        del prompt[key]
    return prompt


def test_long_video_chain_and_its_saved_latents(kv):
    """Keyframes -> Extend -> Extend (three prompts, 12 keyframes each) -> Interpolate ->
    Decode: 34 joined keyframes, 133 frames at the rate of one segment (45 / 5.5 s). A saved
    latent reproduces the run: Load Latent of the joined keyframes -> Interpolate with the
    Extend's prompt timeline, and Load Latent of the interpolated one -> Decode with the
    counts set; without them Decode refuses and names segment_keyframes. A timeline of
    another video and an interpolated latent given to Extend are refused."""
    prompt = _long_video(kv, seed=31)
    extends = sorted(k for k, v in prompt.items() if v["class_type"] == "KandinskyVideoExtend")
    interpolate = node_of(prompt, "KandinskyVideoInterpolate")
    last = next(k for k in extends if prompt[interpolate]["inputs"]["latent"] == [k, 0])
    assert prompt[interpolate]["inputs"]["conditioning"] == [last, 1]  # the prompt timeline
    tag = f"kv_long_{uuid.uuid4().hex[:6]}"
    _save_latent(prompt, last, "810", f"latents/{tag}_k")
    _save_latent(prompt, interpolate, "811", f"latents/{tag}_i")
    _decoded(prompt, [interpolate, 0], "820", f"{tag}/direct")
    _decoded(prompt, [last, 0], "821", f"{tag}/keyframes")
    direct = kv.run(prompt, timeout=900, check=True)
    frames, fps = _video(kv, direct, "820")
    keyframes, keyframe_fps = _video(kv, direct, "821")
    assert (len(keyframes), len(frames)) == (34, 133)
    assert fps == pytest.approx(45 / 5.5) and keyframe_fps == pytest.approx(12 / 5.5)
    saved = _saved_latents(kv, direct)
    assert set(saved) == {"k", "i"}

    loaded = copy.deepcopy(prompt)
    for key in ("810", "811", "820", "8201", "8202", "821", "8211", "8212"):
        del loaded[key]
    loaded["700"] = {"class_type": "LoadLatent", "inputs": {"latent": saved["k"]}}
    loaded["701"] = {"class_type": "LoadLatent", "inputs": {"latent": saved["i"]}}
    _interpolate(loaded, prompt[interpolate], ["700", 0], "710", 3)
    _decoded(loaded, ["710", 0], "720", f"{tag}/720", 34)
    loaded["720"]["inputs"]["segment_keyframes"] = 12
    _decoded(loaded, ["701", 0], "730", f"{tag}/730", 34)
    loaded["730"]["inputs"]["segment_keyframes"] = 12
    after = kv.run(loaded, timeout=900, check=True)
    for key in ("720", "730"):
        got, got_fps = _video(kv, after, key)
        assert got_fps == pytest.approx(fps), key
        assert np.array_equal(got, frames), (key, int(np.abs(got.astype(int) - frames).max()))

    movq = node_of(prompt, "KandinskyVideoVideoMoVQLoader")
    bare = {"1": {"class_type": "LoadLatent", "inputs": {"latent": saved["i"]}},
            "2": {"class_type": "KandinskyVideoVideoMoVQLoader", "inputs": dict(prompt[movq]["inputs"])},
            "3": {"class_type": "KandinskyVideoDecode", "inputs": {"video_movq": ["2", 0], "latent": ["1", 0],
                                                                  "chunk_size": 0}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
    result = kv.run(bare, timeout=600)
    assert result.status == "error" and "segment_keyframes to its first segment's" in result.error["exception_message"]

    wrong = copy.deepcopy(prompt)
    first = next(k for k in extends if k != last)
    wrong[interpolate]["inputs"]["conditioning"] = [first, 1]  # the timeline of 23 keyframes
    result = kv.run(wrong, timeout=600)
    assert result.status == "error" and result.error["node_id"] == interpolate
    assert "the prompt timeline covers 23 keyframes (12 + 11) but the video has 34 frames" in \
        result.error["exception_message"]
    wrong = copy.deepcopy(prompt)
    keyframes_node = node_of(prompt, "KandinskyVideoKeyframes")
    _interpolate(wrong, prompt[interpolate], [keyframes_node, 0], "715", 3)
    wrong["715"]["inputs"]["conditioning"] = prompt[keyframes_node]["inputs"]["conditioning"]
    wrong[first]["inputs"]["latent"] = ["715", 0]  # 45 interpolated frames of 12 keyframes
    result = kv.run(wrong, timeout=600)
    assert result.status == "error" and result.error["node_id"] == first
    assert "45 frames made from 12 keyframes: it is interpolated" in result.error["exception_message"]
    wrong = copy.deepcopy(prompt)
    wrong[last]["inputs"]["latent"] = ["701", 0]  # loaded: no record, but its prompt timeline has 23 keyframes
    wrong["701"] = loaded["701"]
    result = kv.run(wrong, timeout=600)
    assert result.status == "error" and result.error["node_id"] == last
    assert "the latent has 133: wire the conditioning output of the Extend node" in result.error["exception_message"]


def test_extend_options_reencode_and_multi_frame_condition(kv):
    """Extend's non-default options in the host: the condition re-encoded by the image MoVQ
    and conditioning on the last 2 keyframes (12 + 4 - 2 = 14 keyframes, at the rate of
    the 12-keyframe first segment); reencode without a MoVQ is refused before sampling."""
    prompt = i2v_prompt(kv, seed=5)
    keyframes = node_of(prompt, "KandinskyVideoKeyframes")
    decode = node_of(prompt, "KandinskyVideoDecode")
    prompt["600"] = {"class_type": "KandinskyVideoExtend", "inputs": {
        **{k: v for k, v in prompt[keyframes]["inputs"].items() if k not in ("first_frame", "conditioning")},
        "previous_conditioning": prompt[keyframes]["inputs"]["conditioning"], "latent": [keyframes, 0],
        "num_keyframes": 4, "condition_frames": 2, "condition_source": "reencode",
        "movq": [node_of(prompt, "KandinskyVideoMoVQLoader"), 0]}}
    prompt[decode]["inputs"]["latent"] = ["600", 0]
    prompt["901"] = {"class_type": "PreviewAny", "inputs": {"source": [decode, 1]}}
    result = kv.run(prompt, timeout=600, check=True)
    assert len(result.outputs["900"]["images"]) == 14
    assert float(result.outputs["901"]["text"][0]) == pytest.approx(12 / 5.5)
    del prompt["600"]["inputs"]["movq"]
    result = kv.run(prompt, timeout=600)
    assert result.status == "error" and result.error["node_id"] == "600"
    assert "connect Load Kandinsky Video Image MoVQ to movq" in result.error["exception_message"]
    # an encoded video (4 copies of the picture at 6 fps) is no keyframes latent
    prompt["600"]["inputs"].update(condition_source="latent", condition_frames=1)
    image = node_of(prompt, "KandinskyVideoEncodeFirstFrame")
    prompt["610"] = {"class_type": "RepeatImageBatch", "inputs": {"image": prompt[image]["inputs"]["image"],
                                                                 "amount": 4}}
    prompt["611"] = {"class_type": "KandinskyVideoInterpolationUNetLoader",
                     "inputs": {"unet_name": "interpolation.pt", "weight_dtype": "default"}}
    prompt["612"] = {"class_type": "KandinskyVideoEncodeVideo", "inputs": {
        "movq": [node_of(prompt, "KandinskyVideoMoVQLoader"), 0], "interpolation_unet": ["611", 0],
        "images": ["610", 0], "fps": 6.0, "fit": "pad", "max_side": 0}}
    prompt["600"]["inputs"]["latent"] = ["612", 0]
    result = kv.run(prompt, timeout=600)
    assert result.status == "error" and result.error["node_id"] == "600"
    assert "this latent is an encoded video (Encode Video)" in result.error["exception_message"]
