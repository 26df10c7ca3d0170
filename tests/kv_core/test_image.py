"""kv_core.image: every picture Pillow opens is read as an image viewer shows it, or refused
with a message; arrays and tensors in every dtype and layout; the Encode First Frame node's
IMAGE rules (batch, RGBA) in a real ComfyUI.

Each example is built here (16-bit PNGs, EXIF orientation, ICC profiles written byte by
byte, animated GIFs); real photos come from the ComfyUI tree.
"""
from __future__ import annotations

import io
import itertools
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from kv_core.image import ALPHA_BACKGROUND, image_batch_picture, prepare_first_frame, to_pil


def view(image, **kw) -> np.ndarray:
    """The viewer's RGB pixels as an int array [H, W, 3]."""
    out = to_pil(image, **kw)
    assert out.mode == "RGB"
    return np.asarray(out).astype(int)


def saved(image: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    buf.seek(0)
    return Image.open(buf)


def png(width: int, height: int, colour_type: int, depth: int, data: bytes, extra: dict | None = None) -> Image.Image:
    """A PNG written chunk by chunk (Pillow cannot write 16-bit RGB or a gAMA chunk)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    stride = len(data) // height
    raw = b"".join(b"\0" + data[i * stride:(i + 1) * stride] for i in range(height))
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0))
    for kind, payload in (extra or {}).items():
        body += chunk(kind, payload)
    return Image.open(io.BytesIO(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IDAT", zlib.compress(raw))
                                 + chunk(b"IEND", b"")))


# --- ICC profiles, written by hand (ImageCms only creates sRGB, LAB and XYZ) ---------------

D50 = (0.9642, 1.0, 0.8249)
SRGB_COLORANTS = {"r": (0.4360747, 0.2225045, 0.0139322), "g": (0.3850649, 0.7168786, 0.0971045),
                  "b": (0.1430804, 0.0606169, 0.7141733)}


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(x) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(c) for c in x)


def _curve(gamma: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"


def _desc(text: str) -> bytes:
    ascii_ = text.encode() + b"\0"
    body = b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + struct.pack(">II", 0, 0)
    body += struct.pack(">HB", 0, 0) + b"\0" * 67
    return body + b"\0" * (-len(body) % 4)


def icc_profile(space: bytes, tags: dict, cls: bytes = b"mntr", pcs: bytes = b"XYZ ") -> bytes:
    """A version 2 profile of class ``cls`` (display by default) for colour ``space``
    (b'RGB ', b'GRAY', b'CMYK') with connection space ``pcs`` and ``tags``."""
    tags = {b"desc": _desc("kv test profile"), b"wtpt": _xyz(D50), b"cprt": b"text\0\0\0\0none\0\0\0\0", **tags}
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags.items():
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body + b"\0" * (-len(body) % 4)
    size = offset + len(data)
    header = struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000) + cls + space + pcs
    header += b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + b"".join(_s15(c) for c in D50)
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + data


def swapped_rgb_profile() -> bytes:
    """An RGB profile whose first channel is sRGB's green primary and second sRGB's red:
    stored red must be shown green, a check that the profile is applied."""
    c = SRGB_COLORANTS
    return icc_profile(b"RGB ", {b"rXYZ": _xyz(c["g"]), b"gXYZ": _xyz(c["r"]), b"bXYZ": _xyz(c["b"]),
                                 b"rTRC": _curve(2.2), b"gTRC": _curve(2.2), b"bTRC": _curve(2.2)})


def swapped_cmyk_profile() -> bytes:
    """A CMYK printer profile (A2B0 lut8 to Lab) in which cyan, magenta and yellow ink print
    red, green and blue and black ink black: cyan shown red means the profile is applied."""
    nodes = list(itertools.product((0, 1), repeat=4))  # (c, m, y, k), c varying slowest
    colours = []
    for *inks, k in nodes:
        rgb = np.ones(3)
        for ink, primary in zip(inks, np.eye(3)):
            rgb = rgb * primary if ink else rgb
        colours.append(tuple(int(v * 255 * (1 - k)) for v in rgb))
    strip = Image.new("RGB", (len(nodes), 1))
    strip.putdata(colours)
    lab = ImageCms.profileToProfile(strip, ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"),
                                    outputMode="LAB")
    grid = np.frombuffer(lab.tobytes(), np.uint8).reshape(-1, 3).astype(int)
    grid[:, 1:] = (grid[:, 1:] + 128) % 256  # Pillow's a*, b* are signed bytes; lut8 Lab adds 128
    ramp = bytes(range(256))
    lut = b"mft1\0\0\0\0" + bytes([4, 3, 2, 0]) + b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    lut += ramp * 4 + grid.astype(np.uint8).tobytes() + ramp * 3
    return icc_profile(b"CMYK", {b"A2B0": lut}, cls=b"prtr", pcs=b"Lab ")


def linear_gray_profile() -> bytes:
    return icc_profile(b"GRAY", {b"kTRC": _curve(1.0)})


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
