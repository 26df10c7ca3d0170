"""kv_core.image beyond the pixel modes: metadata (EXIF orientation, ICC profiles and PNG gamma
applied, multi-frame files), file paths, arrays and tensors of every dtype and layout, and real
photos (ComfyUI's example and the workflow templates' pictures)."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from kv_core.image import image_batch_picture, prepare_first_frame, to_pil
from pictures import linear_gray_profile, png, saved, swapped_rgb_profile, view


# --- metadata -------------------------------------------------------------------------------

# What a viewer does for each EXIF orientation, in numpy (rows, columns of the stored pixels).
ORIENTATIONS = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
                5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
                7: lambda a: np.rot90(a, 2).swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_exif_orientation(orientation):
    stored = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    opened = saved(image, "PNG", exif=exif)
    assert opened.getexif().get(0x0112) == orientation
    assert np.array_equal(view(opened), ORIENTATIONS[orientation](stored).astype(int))


def test_icc_profile_is_converted_to_srgb():
    stored = Image.fromarray(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 0], [255, 255, 255]]], np.uint8))
    tagged = saved(stored, "PNG", icc_profile=swapped_rgb_profile())
    got = view(tagged)[0]
    assert np.abs(got[0] - [0, 255, 0]).max() <= 3 and np.abs(got[1] - [255, 0, 0]).max() <= 3
    assert np.abs(got[2:] - [[0, 0, 0], [255, 255, 255]]).max() <= 3
    # alpha survives the conversion; the same profile in a JPEG
    rgba = Image.fromarray(np.array([[[255, 0, 0, 255], [255, 0, 0, 0]]], np.uint8))
    got = view(saved(rgba, "PNG", icc_profile=swapped_rgb_profile()))[0]
    assert np.abs(got - [[0, 255, 0], [255, 255, 255]]).max() <= 3
    jpeg = saved(Image.new("RGB", (8, 8), (255, 0, 0)), "JPEG", quality=100, icc_profile=swapped_rgb_profile())
    assert np.abs(view(jpeg) - [0, 255, 0]).max() <= 4
    # an embedded sRGB profile changes (almost) nothing
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    colours = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    assert np.abs(view(saved(colours, "PNG", icc_profile=srgb)) - view(colours)).max() <= 2


def test_grey_icc_profile_and_16bit_picture_with_profile():
    linear = linear_gray_profile()
    grey = saved(Image.new("L", (2, 2), 128), "PNG", icc_profile=linear)
    want = round(255 * (1.055 * (128 / 255) ** (1 / 2.4) - 0.055))  # linear 0.5 in sRGB: 188
    assert np.abs(view(grey) - want).max() <= 2
    deep = Image.fromarray(np.full((2, 2), 32896, np.uint16))
    deep.info["icc_profile"] = linear
    assert np.abs(view(deep) - want).max() <= 2


def test_unusable_icc_profiles_are_ignored_with_a_warning():
    grey = Image.new("L", (2, 2), 128)
    grey.info["icc_profile"] = swapped_rgb_profile()
    with pytest.warns(UserWarning, match="describes RGB colours but the picture is L"):
        assert np.all(view(grey) == 128)
    grey.info["icc_profile"] = b"not a profile"
    with pytest.warns(UserWarning, match="cannot be read"):
        assert np.all(view(grey) == 128)


def test_png_gamma_chunk_is_applied():
    linear = png(1, 1, 0, 8, bytes([128]), {b"gAMA": struct.pack(">I", 100000)})
    assert view(linear)[0, 0, 0] == round(255 * (128 / 255) ** (1 / 2.2))
    usual = png(1, 1, 0, 8, bytes([128]), {b"gAMA": struct.pack(">I", 45455)})
    assert view(usual)[0, 0, 0] == 128


def test_multi_frame_files_use_the_current_frame_and_say_so():
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    for fmt in ("GIF", "TIFF", "PNG"):
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:])
        buf.seek(0)
        anim = Image.open(buf)
        assert anim.n_frames == 2, fmt
        with pytest.warns(UserWarning, match="2 frames; frame 0 is used"):
            assert np.abs(view(anim) - [255, 0, 0]).max() <= 2, fmt
        anim.seek(1)
        with pytest.warns(UserWarning, match="frame 1 is used"):
            assert np.abs(view(anim) - [0, 0, 255]).max() <= 2, fmt


def test_file_paths_are_opened(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((3, 3), 32768, np.uint16)).save(path)
    assert np.all(view(path) == 128) and np.all(view(str(path)) == 128)


# --- arrays and tensors ------------------------------------------------------------------

RGB = np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8)  # H, W and C differ
RAMP = np.array([0, 1, 128, 254, 255], np.uint8)


@pytest.mark.parametrize("make", [
    lambda a: a,
    lambda a: a.astype(np.uint16) * 257,
    lambda a: a.astype(np.float32) / 255,
    lambda a: a.astype(np.float64) / 255,
    lambda a: torch.from_numpy(a),
    lambda a: torch.from_numpy(a).float() / 255,
    lambda a: (torch.from_numpy(a).float() / 255).half(),
    lambda a: (torch.from_numpy(a).double() / 255),
    lambda a: torch.from_numpy(a.astype(np.int32)),
    lambda a: torch.from_numpy(a).long(),
    lambda a: torch.from_numpy(a.astype(np.int32) * 257).to(torch.uint16),
], ids=["uint8", "uint16", "float32", "float64", "torch-uint8", "torch-float", "torch-half", "torch-double",
        "torch-int32", "torch-int64", "torch-uint16"])
def test_array_dtypes(make):
    assert np.array_equal(view(make(RAMP[None, :]))[0, :, 0], RAMP.astype(int))


def test_bfloat16_and_bool():
    bf = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.bfloat16)
    assert view(bf)[0, :, 0].tolist() == [0, 128, 255]
    assert view(np.array([[False, True]]))[0, :, 0].tolist() == [0, 255]
    assert view(torch.tensor([[True, False]]))[0, :, 0].tolist() == [255, 0]


@pytest.mark.parametrize("layout", ["HW", "HWC", "CHW", "1HWC", "1CHW", "torch-CHW", "torch-1HWC"])
def test_array_layouts(layout):
    picture = RGB
    arrays = {"HWC": picture, "CHW": picture.transpose(2, 0, 1), "1HWC": picture[None],
              "1CHW": picture.transpose(2, 0, 1)[None], "torch-CHW": torch.from_numpy(picture).permute(2, 0, 1),
              "torch-1HWC": torch.from_numpy(picture)[None], "HW": picture[..., 0]}
    want = picture if layout != "HW" else np.repeat(picture[..., :1], 3, axis=2)
    assert np.array_equal(view(arrays[layout]), want.astype(int))


def test_grey_and_alpha_channels():
    grey = np.full((6, 5, 1), 77, np.uint8)
    assert np.all(view(grey) == 77)
    la = np.array([[[0, 0], [0, 255]]], np.uint8)  # [1, 2, 2] is ambiguous: say it is HWC
    assert view(la, layout="HWC")[0].tolist() == [[255] * 3, [0] * 3]
    rgba = np.zeros((6, 5, 4), np.float32)  # black, fully transparent: white
    assert np.all(view(rgba) == 255)
    rgba[..., 3] = 1.0
    assert np.all(view(torch.from_numpy(rgba).permute(2, 0, 1)) == 0)


def test_ambiguous_layout_is_refused_and_layout_resolves_it():
    ambiguous = np.zeros((3, 5, 4), np.uint8)  # [C=3, H=5, W=4] or [H=3, W=5, C=4]
    ambiguous[..., 3] = 255
    with pytest.raises(ValueError, match="ambiguous.*layout='HWC' or 'CHW'"):
        to_pil(ambiguous)
    with pytest.raises(ValueError, match="ambiguous"):
        to_pil(torch.from_numpy(ambiguous))
    assert view(ambiguous, layout="HWC").shape == (3, 5, 3)
    assert view(ambiguous, layout="CHW").shape == (5, 4, 3)
    with pytest.raises(ValueError, match="layout must be one of"):
        to_pil(ambiguous, layout="WHC")


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 8, 8, 3), np.uint8), "batch of 2"),
    (np.zeros((0, 8, 3), np.uint8), "no pixels"),
    (np.zeros((8, 0), np.float32), "no pixels"),
    (np.zeros((8, 8, 7), np.uint8), "no channel axis"),
    (np.zeros((8,), np.uint8), r"\[H, W\], \[H, W, C\]"),
    (np.array([[0.0, np.nan]]), "NaN"),
    (np.array([[0.0, np.inf]]), "NaN or infinite"),
    (np.array([[0.0, 1.5]]), r"span \[0, 1.5\].*\[0, 1\]"),
    (np.array([[-1.0, 1.0]]), r"\[-1, 1\].*\(x \+ 1\) / 2"),
    (np.array([[0.0, 255.0]]), "Divide 0..255 data by 255"),
    (np.array([[0, 300]], np.int32), r"span \[0, 300\].*0\.\.255.*uint16"),
    (np.array([[-1, 3]], np.int64), "0..255"),
    (np.array([[1 + 1j]]), "not a picture"),
    (torch.zeros(3, 8, 8, 3), "batch of 3"),
    (torch.tensor([[float("nan")]]), "NaN"),
])
def test_bad_arrays_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        to_pil(bad)


def test_floats_within_half_a_step_of_the_range_are_kept():
    assert view(np.array([[-0.0015, 1.0015]]))[0, :, 0].tolist() == [0, 255]


def test_image_batch_picture_refuses_batches_and_clips_with_a_note():
    with pytest.raises(ValueError, match="batch of 2: pick it"):
        image_batch_picture(torch.zeros(2, 4, 4, 3), pick_hint="pick it")
    picture, note = image_batch_picture(torch.full((1, 4, 4, 3), 0.5))
    assert picture.shape == (4, 4, 3) and note is None
    over = torch.full((1, 2, 2, 3), 0.5)
    over[0, 0, 0, 0] = 1.25
    picture, note = image_batch_picture(over)
    assert float(picture.max()) == 1.0 and "[0.5, 1.25]" in note and "1 of 12" in note
    with pytest.raises(ValueError, match="NaN"):
        image_batch_picture(torch.full((1, 2, 2, 3), float("nan")))


# --- real photos -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def comfyui_dir():
    from tools.harness import ensure_comfyui

    return ensure_comfyui(install_requirements=False)


def test_comfyui_example_photo_is_read_unchanged(comfyui_dir):
    path = comfyui_dir / "input" / "example.png"
    with Image.open(path) as plain:
        want = np.asarray(plain.convert("RGB")).astype(int)
    assert np.array_equal(view(path), want)
    x = prepare_first_frame(path, 512, 512)
    assert x.shape == (3, 512, 512) and x.min() >= -1 and x.max() <= 1
    # the same photo with an EXIF rotation, as a phone writes it
    with Image.open(path) as plain:
        exif = plain.getexif()
        exif[0x0112] = 6
        rotated = saved(plain.convert("RGB"), "JPEG", quality=95, exif=exif)
    assert view(rotated).shape == (want.shape[1], want.shape[0], 3)
    assert np.abs(view(rotated).mean(axis=2) - np.rot90(want, -1).mean(axis=2)).mean() < 3


def _template_pictures():
    """Every picture of the installed ComfyUI template media packages (WebP, some with an
    ICC profile, alpha or 60 frames), or a skip when none is installed."""
    import importlib.util
    from pathlib import Path

    files = []
    for name in ("api", "image", "other", "video"):
        spec = importlib.util.find_spec(f"comfyui_workflow_templates_media_{name}")
        if spec and spec.submodule_search_locations:
            files += sorted(Path(next(iter(spec.submodule_search_locations))).rglob("*.webp"))
    if not files:
        pytest.skip("no comfyui-workflow-templates-media-* package installed")
    return files


def _first(files, want):
    for path in files:
        with Image.open(path) as image:
            if want(image):
                return path
    pytest.skip("no template picture of this kind")


def test_template_photos_with_profile_alpha_and_frames():
    files = _template_pictures()
    profiled = _first(files, lambda im: im.mode == "RGB" and im.info.get("icc_profile"))
    with Image.open(profiled) as image:  # their profiles are sRGB: colours stay
        assert np.abs(view(image) - np.asarray(image.convert("RGB")).astype(int)).max() <= 2
    transparent = _first(files, lambda im: im.mode == "RGBA" and getattr(im, "n_frames", 1) == 1
                         and np.asarray(im.getchannel("A")).min() == 0)
    with Image.open(transparent) as image:
        rgba = np.asarray(image).astype(float)
        got = view(image)
    alpha = rgba[..., 3:] / 255
    assert np.abs(got - (rgba[..., :3] * alpha + 255 * (1 - alpha))).max() <= 3
    assert np.all(got[rgba[..., 3] == 0] == 255)
    animated = _first(files, lambda im: getattr(im, "n_frames", 1) > 1)
    with Image.open(animated) as image:
        with pytest.warns(UserWarning, match=f"{image.n_frames} frames; frame 0 is used"):
            first = view(image)
        assert np.abs(first - view(np.asarray(image.convert("RGBA")))).max() <= 1
