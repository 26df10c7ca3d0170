"""kv_core.image: every picture Pillow opens is read as an image viewer shows it, or refused
with a message; arrays and tensors in every dtype and layout; the Encode First Frame node's
IMAGE rules (batch, RGBA) in a real ComfyUI.

Each example is built here (16-bit PNGs, EXIF orientation, ICC profiles written byte by
byte, animated GIFs); real photos come from the ComfyUI tree.
"""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from kv_core.image import ALPHA_BACKGROUND, prepare_first_frame, to_pil
from pictures import png, saved, swapped_cmyk_profile, view


# --- the example of the issue ------------------------------------------------------------

def test_16bit_grey_png_is_scaled_not_clipped_to_white():
    """Failed before: Pillow's I;16 -> L conversion clips, so 50 % grey became 255."""
    ramp = np.array([[0, 16384, 32768, 49152, 65535]], dtype=np.uint16)
    opened = saved(Image.fromarray(ramp), "PNG")
    assert opened.mode.startswith("I")
    assert view(opened)[0, :, 0].tolist() == [0, 64, 128, 191, 255]
    grey = saved(Image.fromarray(np.full((4, 4), 32768, np.uint16)), "PNG")
    assert np.all(view(grey) == 128)
    x = prepare_first_frame(grey, 4, 4)
    assert torch.allclose(x, torch.full_like(x, 128 / 255 * 2 - 1), atol=1e-6)


# --- every Pillow mode --------------------------------------------------------------------

def _frombytes(mode: str, values, size=(1, 1), dtype=np.uint8) -> Image.Image:
    return Image.frombytes(mode, size, np.asarray(values, dtype=dtype).tobytes())


def _palette(mode="RGB") -> Image.Image:
    p = Image.new("P", (3, 1))
    colours = [255, 0, 0, 0, 0, 255, 0, 255, 0] if mode == "RGB" else [255, 0, 0, 255, 0, 0, 255, 0, 0, 255, 0, 64]
    p.putpalette(colours, mode)
    for x in range(3):
        p.putpixel((x, 0), x)
    return p


def _over_white(colour, alpha):
    return [round(c * alpha / 255 + 255 * (1 - alpha / 255)) for c in colour]


MODES = {
    "1": (_frombytes("L", [0, 255], (2, 1)).convert("1"),
          [[0, 0, 0], [255, 255, 255]]),
    "L": (_frombytes("L", [0, 128], (2, 1)), [[0, 0, 0], [128, 128, 128]]),
    "LA opaque": (_frombytes("LA", [128, 255]), [[128] * 3]),
    "LA transparent": (_frombytes("LA", [0, 0]), [[255] * 3]),
    "LA half": (_frombytes("LA", [0, 128]), [_over_white([0, 0, 0], 128)]),
    "La": (_frombytes("La", [64, 128]), [[191] * 3]),  # premultiplied 64 at alpha 128 = 127.5 straight
    "P": (_palette(), [[255, 0, 0], [0, 0, 255], [0, 255, 0]]),
    "RGB": (_frombytes("RGB", [10, 20, 30]), [[10, 20, 30]]),
    "RGBA opaque": (_frombytes("RGBA", [10, 20, 30, 255]), [[10, 20, 30]]),
    "RGBA transparent red": (_frombytes("RGBA", [255, 0, 0, 0]), [[255, 255, 255]]),
    "RGBA half": (_frombytes("RGBA", [0, 0, 255, 128]), [_over_white([0, 0, 255], 128)]),
    "RGBa": (_frombytes("RGBa", [64, 0, 0, 128]), [[191, 127, 127]]),
    "RGBX": (_frombytes("RGBX", [10, 20, 30, 0]), [[10, 20, 30]]),
    "CMYK": (_frombytes("CMYK", [255, 0, 0, 0]), [[0, 255, 255]]),
    "YCbCr": (_frombytes("YCbCr", [128, 128, 128]), [[128, 128, 128]]),
    "HSV": (_frombytes("HSV", [0, 255, 255]), [[255, 0, 0]]),
    "LAB white": (_frombytes("LAB", [255, 0, 0]), [[255, 255, 255]]),  # a, b: signed bytes
    "LAB grey": (_frombytes("LAB", [128, 0, 0]), [[119, 119, 119]]),  # L* 50 in sRGB
    "LAB red": (ImageCms.profileToProfile(Image.new("RGB", (1, 1), (200, 50, 50)), ImageCms.createProfile("sRGB"),
                                          ImageCms.createProfile("LAB"), outputMode="LAB"), [[200, 50, 50]]),
    "I;16": (_frombytes("I;16", [0, 32768, 65535], (3, 1), "<u2"), [[0] * 3, [128] * 3, [255] * 3]),
    "I;16L": (_frombytes("I;16L", [32768], dtype="<u2"), [[128] * 3]),
    "I;16B": (_frombytes("I;16B", [32768], dtype=">u2"), [[128] * 3]),
    "I;16N": (_frombytes("I;16N", [32768], dtype="=u2"), [[128] * 3]),
    "F": (_frombytes("F", [0.0, 0.5, 1.0], (3, 1), "<f4"), [[0] * 3, [128] * 3, [255] * 3]),
}


@pytest.mark.parametrize("name", list(MODES))
def test_every_pillow_mode_shows_its_colours(name):
    image, want = MODES[name]
    assert np.abs(view(image)[0] - np.array(want)).max() <= 1, name


def test_palette_transparency_tRNS_index_and_palette_alpha():
    p = _palette()
    p.info["transparency"] = 1  # tRNS: index 1 (blue) is transparent
    assert view(saved(p, "PNG"))[0].tolist() == [[255, 0, 0], [255, 255, 255], [0, 255, 0]]
    p.info["transparency"] = bytes([128, 255, 0])  # palette alpha per entry
    got = view(saved(p, "PNG"))[0].tolist()
    assert got == [_over_white([255, 0, 0], 128), [0, 0, 255], [255, 255, 255]]
    rgba = _palette("RGBA")  # an RGBA palette (as GIF/WebP decoders make)
    assert view(rgba)[0].tolist() == [[255, 0, 0], [255, 255, 255], _over_white([0, 255, 0], 64)]
    pa = Image.merge("PA", [_palette(), Image.new("L", (3, 1), 0)])
    assert np.all(view(pa) == 255)


def test_alpha_background_can_be_chosen():
    image = _frombytes("RGBA", [255, 0, 0, 0])
    assert view(image, background=(0, 0, 0)).tolist() == [[[0, 0, 0]]]
    assert ALPHA_BACKGROUND == (255, 255, 255)


def test_16bit_colour_pngs_and_grey_alpha():
    rgb = np.array([[[0, 32768, 65535], [65535, 32768, 0]]], dtype=">u2")
    assert view(png(2, 1, 2, 16, rgb.tobytes()))[0].tolist() == [[0, 128, 255], [255, 128, 0]]
    rgba = np.array([[[0, 0, 65535, 0]]], dtype=">u2")
    assert view(png(1, 1, 6, 16, rgba.tobytes())).tolist() == [[[255, 255, 255]]]
    la = np.array([[[32768, 65535], [0, 0]]], dtype=">u2")
    assert view(png(2, 1, 4, 16, la.tobytes()))[0].tolist() == [[128] * 3, [255] * 3]


def tiff16_rgb(pixels: np.ndarray) -> Image.Image:
    """An uncompressed 16-bit RGB TIFF written tag by tag (Pillow cannot write one)."""
    h, w, c = pixels.shape
    data = pixels.astype("<u2").tobytes()
    depths = 8 + 2 + 12 * 9 + 4  # after the header and the directory
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, c, depths), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, depths + 2 * c), (277, 3, 1, c), (278, 3, 1, h), (279, 4, 1, len(data))]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, n) + (struct.pack("<HH", v, 0) if kind == 3 else struct.pack("<I", v))
        for tag, kind, n, v in tags) + b"\0\0\0\0"
    return Image.open(io.BytesIO(b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<3H", 16, 16, 16) + data))


def test_16bit_rgb_tiff():
    opened = tiff16_rgb(np.array([[[0, 32768, 65535], [65535, 257, 0]]], np.uint16))
    assert view(opened)[0].tolist() == [[0, 128, 255], [255, 1, 0]]


def test_mode_I_uses_the_depth_its_file_states():
    # PGM with maxval 1000: Pillow opens mode I scaled to 65535
    pgm = Image.open(io.BytesIO(b"P5 3 1 1000\n" + np.array([0, 500, 1000], ">u2").tobytes()))
    assert pgm.mode == "I" and view(pgm)[0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="no known bit depth.*I;16"):
        to_pil(Image.fromarray(np.array([[0, 100]], np.int32)))
    with pytest.raises(ValueError, match="no known bit depth"):
        to_pil(saved(Image.fromarray(np.array([[0, 100]], np.int32)), "TIFF"))  # 32-bit integer TIFF


def test_float_pictures_outside_0_1_or_nan_are_refused():
    with pytest.raises(ValueError, match=r"span \[0, 2\].*\[0, 1\]"):
        to_pil(_frombytes("F", [0.0, 2.0], (2, 1), "<f4"))
    with pytest.raises(ValueError, match="NaN"):
        to_pil(_frombytes("F", [np.nan], dtype="<f4"))


def test_cmyk_jpeg_is_read_as_a_viewer_shows_it():
    """Pillow writes CMYK JPEGs the Adobe way (inverted) and un-inverts them when it reads."""
    cyan = saved(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), "JPEG", quality=100)
    assert cyan.info.get("adobe") is not None
    assert np.abs(view(cyan) - [0, 255, 255]).max() <= 2


def test_cmyk_jpeg_with_icc_profile_uses_the_profile():
    profile = swapped_cmyk_profile()
    for ink, shown in (((255, 0, 0, 0), [255, 0, 0]), ((0, 0, 255, 0), [0, 0, 255]), ((0, 0, 0, 255), [0, 0, 0]),
                       ((0, 0, 0, 0), [255, 255, 255])):
        jpeg = saved(Image.new("CMYK", (8, 8), ink), "JPEG", quality=100, icc_profile=profile)
        assert jpeg.mode == "CMYK" and jpeg.info.get("adobe") is not None
        assert np.abs(view(jpeg) - shown).max() <= 6, ink


def test_unknown_or_empty_pictures_are_refused():
    with pytest.raises(ValueError, match="no pixels"):
        to_pil(Image.new("RGB", (0, 5)))
    with pytest.raises(TypeError, match="file path, a PIL.Image.Image, a numpy array or a torch tensor"):
        to_pil([[0, 1]])
