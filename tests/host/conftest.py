"""Fixtures of the tests that run the nodes in a real ComfyUI: the session's host (from
tests/support/comfy_fixtures.py) with the tiny release in place."""
import shutil

import pytest

from host_prompts import RELEASE_FILES
from kv_core.tiny import write_tiny_release
from tools.thumbnails import EXAMPLE_VIDEO, example_video_source, write_small_text_encoder


@pytest.fixture(scope="session")
def kv_release(comfy_host):
    """The tiny release under its official file names in models/kandinsky_video/, and
    ComfyUI's example.png in input/ (for the image-to-video workflow) and a real video clip
    (for the any-video template)."""
    folder = comfy_host.base_dir / "kv_tiny_release"  # one per host, whichever module asks first
    if not (folder / "flan-ul2").is_dir():
        write_tiny_release(folder)
    for name in RELEASE_FILES:
        comfy_host.add_model("kandinsky_video", folder / name)
    example = comfy_host.comfyui / "input" / "example.png"
    shutil.copy(example, comfy_host.input_dir / "example.png")
    shutil.copy(example_video_source(), comfy_host.input_dir / EXAMPLE_VIDEO)  # the any-video template's input
    comfy_host.add_model("text_encoders", write_small_text_encoder(folder))  # the 16 GB template's
    return folder


@pytest.fixture
def kv(comfy, kv_release):
    """The session's ComfyUI with the tiny release in place."""
    return comfy
