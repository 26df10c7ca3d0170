"""Pictures and ICC profiles made by hand for the kv_core.image tests: what a viewer shows,
PNGs written chunk by chunk (16-bit RGB, gAMA) and ICC profiles (ImageCms only creates sRGB,
LAB and XYZ)."""
from __future__ import annotations

import io
import itertools
import struct
import zlib

import numpy as np
from PIL import Image, ImageCms

from kv_core.image import to_pil


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


# --- ICC profiles ---------------------------------------------------------------------------

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
