"""The Encode First Frame node in a real ComfyUI: a batch of pictures is refused naming the
fix, transparency is shown over white (kv_core.image's rules, tests/kv_core/test_image.py)."""
from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from PIL import Image

from host_prompts import error_text, i2v_prompt, node_of


def _preview_pixels(host, result) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(host.view(i["filename"], i.get("subfolder", ""), i["type"]))))
            for i in result.outputs["900"]["images"]]


def test_node_refuses_a_batch_and_shows_transparency_over_white(kv):
    prompt = i2v_prompt(kv, seed=5)
    encode = node_of(prompt, "KandinskyVideoEncodeFirstFrame")
    load = node_of(prompt, "LoadImage")
    batch = copy.deepcopy(prompt)
    batch["950"] = {"class_type": "ImageBatch", "inputs": {"image1": [load, 0], "image2": [load, 0]}}
    batch[encode]["inputs"]["image"] = ["950", 0]
    result = kv.run(batch, timeout=300)
    assert result.status == "error" and result.error["node_id"] == encode
    assert "batch of 2" in error_text(result) and "Image From Batch" in error_text(result)

    # the example photo made fully transparent (RGBA IMAGE) must give the white picture's video
    transparent = copy.deepcopy(prompt)
    transparent["951"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 768, "height": 768}}
    transparent["952"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": [load, 0], "alpha": ["951", 0]}}
    transparent[encode]["inputs"]["image"] = ["952", 0]
    white = copy.deepcopy(prompt)
    white["953"] = {"class_type": "EmptyImage", "inputs": {"width": 768, "height": 768, "batch_size": 1,
                                                            "color": 0xFFFFFF}}
    white[encode]["inputs"]["image"] = ["953", 0]
    runs = {name: kv.run(p, timeout=600).raise_for_status() for name, p in
            (("transparent", transparent), ("white", white), ("photo", prompt))}
    videos = {name: _preview_pixels(kv, r) for name, r in runs.items()}
    assert all(np.array_equal(a, b) for a, b in zip(videos["transparent"], videos["white"]))
    assert not all(np.array_equal(a, b) for a, b in zip(videos["photo"], videos["white"]))


def test_a_picture_smaller_than_the_video_is_padded_with_a_warning():
    """'reference' keeps a small picture at its size and pads it black (the release's
    behaviour): that is said, never silent; 'cover' scales it up without a warning."""
    import warnings

    from kv_core.image import PaddedPictureWarning, prepare_first_frame

    small = Image.new("RGB", (64, 64), (200, 50, 50))
    with pytest.warns(PaddedPictureWarning, match=r"64x64\) is smaller than the video \(128x128\)"):
        padded = prepare_first_frame(small, 128, 128, "reference")
    assert float(padded[:, 0, 0].max()) == -1.0  # a black corner
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        covered = prepare_first_frame(small, 128, 128, "cover")
        prepare_first_frame(Image.new("RGB", (256, 256)), 128, 128, "reference")
    assert float(covered[:, 0, 0].min()) > -1.0
