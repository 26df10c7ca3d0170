"""Reading a picture as an image viewer shows it, and fitting it to the video (first frame).

``to_pil(image)`` turns any accepted picture into an 8-bit sRGB ``RGB`` PIL image, the
colours a viewer shows; ``prepare_first_frame(image, width, height, mode)`` then returns a
float32 tensor ``[3, height, width]`` in [-1, 1] for the image MoVQ encoder.

Accepted pictures (anything else is refused with a ``ValueError``/``TypeError`` that says
what is accepted):

- A file path (``str`` / ``os.PathLike``), opened with Pillow, or a ``PIL.Image.Image`` in
  any Pillow mode: ``1``, ``L``, ``LA``, ``La``, ``P`` (with or without transparency:
  a tRNS index or palette alpha, or an RGBA palette), ``PA``, ``RGB``, ``RGBA``, ``RGBa``,
  ``RGBX``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``I;16`` / ``I;16B`` / ``I;16L`` /
  ``I;16N`` (16-bit, 0..65535 is black..white), ``I`` (only when the file says its depth:
  16-bit PNG, PGM/PPM (Pillow scales their maxval to 65535) and 16-bit TIFF; an ``I``
  image of unknown depth is refused), ``F`` (values in [0, 1], as float arrays).
  16-bit RGB(A) PNGs open in Pillow as 8-bit ``RGB``/``RGBA`` (the high byte), which is
  what an 8-bit display shows. 16-bit values become 8-bit by ``round(v / 257)``.
- Metadata a viewer applies is applied: the EXIF orientation (all 8 values, via
  ``ImageOps.exif_transpose``); an embedded ICC profile (RGB, grey, CMYK or Lab) is
  converted to sRGB with ``PIL.ImageCms`` using the profile's rendering intent (a profile
  that cannot be read, or does not match the picture's colours, is ignored with a
  warning, as viewers ignore it); without a profile, ``LAB`` pictures are D50 CIELAB and
  ``CMYK`` pictures use Pillow's plain conversion (Pillow already un-inverts Adobe/
  Photoshop CMYK JPEGs when it reads them); a PNG ``gAMA`` chunk (without ``sRGB`` or
  ``iCCP``) is applied to the colour channels (``cHRM`` is not).
- A file with several frames (animated GIF/PNG/WebP, multi-page TIFF): the frame the image
  is on is used (frame 0 after opening; ``img.seek(i)`` picks another) and a warning says
  so; the primary picture of an MPO camera file (frame 0) is used without a warning.
- A numpy array or torch tensor ``[H, W]``, ``[H, W, C]``, ``[C, H, W]`` or either of
  those with a batch of one in front (``[1, H, W, C]`` / ``[1, C, H, W]``), C = 1 (grey),
  2 (grey + alpha), 3 (RGB) or 4 (RGBA). The layout is read from the shape; a shape that
  fits both (e.g. ``[3, 5, 4]``) is refused unless ``layout="HWC"``/``"CHW"`` says which.
  dtypes: ``uint8`` (0..255); ``uint16`` (0..65535); ``bool`` (black/white); floats (any
  precision) in [0, 1], multiplied by 255 and rounded (so values within half an 8-bit
  step outside the range, 1/510, are still accepted; NaN, inf and anything further out
  are refused, naming the range found); other integer dtypes are 8-bit values and must
  lie in 0..255 (use ``uint16`` for 16-bit data).
- Refused: empty pictures (a zero width or height), batches of more than one picture,
  Pillow modes not listed above.

Alpha: transparent pixels are shown composited over **white** (``background``, default
``ALPHA_BACKGROUND``), as a browser shows a transparent PNG on an ordinary page, with
straight (not premultiplied) alpha; ``La``/``RGBa`` are un-premultiplied first. The
release instead drops alpha (Pillow ``convert("RGB")``), showing whatever colour is stored
under transparent pixels; for opaque pictures both agree.

Fitting (applied to the viewer's RGB picture):

- ``mode="reference"`` (default) reproduces the reference exactly with Pillow: scale by
  ``1 / r`` with ``r = max(1, min(w / width, h / height))`` (``Image.resize`` to
  ``(round(w / r), round(h / r))`` with BICUBIC, Pillow's default filter for RGB; a
  same-size resize is a copy), then ``Image.crop`` of the centred ``width × height`` box
  (Pillow rounds each coordinate half-to-even; parts outside the image become black). An
  image smaller than the video is therefore never scaled up: it is padded with black.
  For RGB pictures this is the release's result bit for bit; ``1`` and ``P`` pictures are
  scaled here in RGB with BICUBIC, where the release scales their palette indices with
  nearest neighbour (Pillow's default for those modes).
- ``mode="cover"`` scales the image, up or down, so that it covers the whole frame
  (``r = min(w / width, h / height)``), then crops the centre the same way: no black
  borders.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps

RESIZE_MODES = ("reference", "cover")
LAYOUTS = ("HWC", "CHW")
ALPHA_BACKGROUND = (255, 255, 255)
CHANNEL_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
ACCEPTED_ARRAYS = ("[H, W], [H, W, C], [C, H, W], [1, H, W, C] or [1, C, H, W] with C = 1 (grey), "
                   "2 (grey + alpha), 3 (RGB) or 4 (RGBA); uint8 0..255, uint16 0..65535, bool, "
                   "or floats in [0, 1]")
# Pillow modes that convert to an 8-bit viewer mode without any choice to make.
_PLAIN = {"1": "L", "La": "LA", "PA": "RGBA", "RGBa": "RGBA", "RGBX": "RGB", "YCbCr": "RGB", "HSV": "RGB"}
_VIEW_MODES = ("L", "LA", "RGB", "RGBA", "CMYK", "LAB")
_PROFILE_SPACE = {"L": "GRAY", "LA": "GRAY", "RGB": "RGB", "RGBA": "RGB", "CMYK": "CMYK", "LAB": "LAB"}
_HALF_STEP = 0.5 / 255.0


def to_pil(image, *, layout: str | None = None, background=ALPHA_BACKGROUND) -> Image.Image:
    """The 8-bit sRGB ``RGB`` picture a viewer shows for ``image`` (see the module docstring).

    ``layout``: ``"HWC"`` or ``"CHW"`` for arrays/tensors whose shape fits both; ``None``
    reads it from the shape. ``background``: RGB (0..255) that transparency is shown over.
    Raises ``TypeError`` for an unsupported type, ``ValueError`` for a picture that cannot
    be shown (empty, a batch, out-of-range values, unknown bit depth or mode).
    """
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS} or None, got {layout!r}")
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            return _flatten(_viewer_colours(opened), background).copy()
    if isinstance(image, Image.Image):
        pil = _viewer_colours(image)
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        pil = _from_array(image, layout)
    else:
        raise TypeError("image must be a file path, a PIL.Image.Image, a numpy array or a torch tensor "
                        f"({ACCEPTED_ARRAYS}), got {type(image).__name__}")
    return _flatten(pil, background)


class PaddedPictureWarning(UserWarning):
    """A first-frame picture smaller than the video, padded with black (``reference`` mode)."""


def resize_and_crop(image: Image.Image, width: int, height: int, mode: str = "reference") -> Image.Image:
    """Scale and centre-crop an ``RGB`` PIL ``image`` to ``width × height`` (see the module docstring)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"image mode must be one of {RESIZE_MODES}, got {mode!r}")
    if image.mode != "RGB":
        image = to_pil(image)
    ratio = min(image.width / width, image.height / height)
    if mode == "reference" and ratio < 1.0:
        warnings.warn(f"the picture ({image.width}x{image.height}) is smaller than the video ({width}x{height}): "
                      "resize_mode 'reference' keeps it at its size and pads it with black, as the release "
                      "does; 'cover' scales it up to fill the frame", PaddedPictureWarning, stacklevel=2)
        ratio = 1.0
    image = image.resize((round(image.width / ratio), round(image.height / ratio)), Image.BICUBIC)
    ow, oh = image.size
    return image.crop(((ow - width) / 2, (oh - height) / 2, (ow + width) / 2, (oh + height) / 2))


def prepare_first_frame(image, width: int, height: int, mode: str = "reference", *,
                        layout: str | None = None, background=ALPHA_BACKGROUND) -> torch.Tensor:
    """``[3, height, width]`` float32 in [-1, 1], ready for ``MoVQ.encode``; ``image``,
    ``layout`` and ``background`` as for ``to_pil``, ``mode`` one of ``RESIZE_MODES``."""
    pil = resize_and_crop(to_pil(image, layout=layout, background=background), width, height, mode)
    arr = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy())
    return arr.permute(2, 0, 1).float().div(255.0).mul(2.0).sub(1.0)


def clip_unit_range(images: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    """Floats clipped to [0, 1] as ComfyUI's Preview/Save Image show them, and a note saying
    how much was outside (``None`` when nothing was). NaN/inf are refused (``ValueError``)."""
    if not images.is_floating_point() or images.numel() == 0:
        return images, None
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"image has {int((~torch.isfinite(images)).sum())} NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low >= 0.0 and high <= 1.0:
        return images, None
    outside = int(((images < 0) | (images > 1)).sum())
    note = (f"image values span [{low:.4g}, {high:.4g}], outside [0, 1] in {outside} of {images.numel()} "
            "values: clipped to [0, 1], as Preview Image shows it")
    return images.clamp(0.0, 1.0), note


def image_batch_picture(images: torch.Tensor, *, pick_hint: str = "take one, e.g. images[i:i + 1]",
                        ) -> tuple[torch.Tensor, str | None]:
    """The one picture ``[H, W, C]`` of a float image batch ``[B, H, W, C]`` in [0, 1] (a
    ComfyUI IMAGE), clipped by ``clip_unit_range``, and its note (``None`` when nothing was
    clipped). ``B`` must be 1: a batch of several pictures is refused (``ValueError``, with
    ``pick_hint`` saying how to choose one), never silently reduced to one of them."""
    if images.ndim != 4:
        raise ValueError(f"expected an image batch [B, H, W, C], got shape {list(images.shape)}")
    if images.shape[0] != 1:
        raise ValueError(f"expected one picture, got a batch of {images.shape[0]}: {pick_hint}")
    return clip_unit_range(images[0])


# --- PIL pictures ---------------------------------------------------------------------

def _viewer_colours(img: Image.Image) -> Image.Image:
    """An 8-bit ``L``/``LA``/``RGB``/``RGBA`` picture in sRGB (alpha not yet flattened)."""
    frames = getattr(img, "n_frames", 1)
    if frames > 1 and not (img.format == "MPO" and img.tell() == 0):
        warnings.warn(f"the {img.format or 'image'} file has {frames} frames; frame {img.tell()} is used "
                      "(the frame the image is on; img.seek(i) picks another)", stacklevel=3)
    if img.width == 0 or img.height == 0:
        raise ValueError(f"image has no pixels (size {img.size})")
    try:
        img.load()
    except OSError as err:
        raise ValueError(f"the picture cannot be decoded: {err}") from err
    info = dict(img.info)
    fmt, tags = img.format, getattr(img, "tag_v2", None)
    palette_alpha = img.mode == "P" and ("transparency" in info or (img.palette and img.palette.mode == "RGBA"))
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in _PLAIN:
        img = img.convert(_PLAIN[mode])
    elif mode == "P":
        img = img.convert("RGBA" if palette_alpha else "RGB")
    elif mode.startswith("I;16"):
        img = _gray16(np.asarray(img).astype(np.uint16))
    elif mode == "I":
        img = _gray16(_depth16(img, fmt, tags))
    elif mode == "F":
        img = Image.fromarray(_unit_floats(np.asarray(img), "mode F image"), "L")
    elif mode not in _VIEW_MODES:
        raise ValueError(f"unsupported Pillow mode {mode!r}: convert the picture to RGB or RGBA first")
    profile = info.get("icc_profile")
    if profile:
        img = _icc_to_srgb(img, profile)
    if img.mode == "LAB":
        img = _cms(img, ImageCms.createProfile("LAB"))
    elif img.mode == "CMYK":
        img = img.convert("RGB")
    gamma = info.get("gamma")
    if fmt == "PNG" and gamma and not profile and "srgb" not in info and abs(gamma * 2.2 - 1.0) > 0.01:
        img = _apply_gamma(img, 1.0 / (gamma * 2.2))
    return img


def _depth16(img: Image.Image, fmt, tags) -> np.ndarray:
    """Values of a mode ``I`` picture on the 16-bit scale, from the depth its file states."""
    bits = None
    if fmt in ("PNG", "PPM"):
        bits = 16  # 16-bit grey PNG; PGM with maxval > 255 (Pillow rescales it to 65535)
    elif fmt == "TIFF" and tags is not None:
        bits = (tags.get(258) or (None,))[0]
    if bits not in (8, 16):
        raise ValueError(f"a mode 'I' picture ({fmt or 'made in memory'}) has no known bit depth, so black "
                         "and white are unknown: convert it to 'I;16' (0..65535) or 'L' (0..255), or pass "
                         "a uint16 / float [0, 1] array")
    arr = np.asarray(img).astype(np.int64)
    if arr.min() < 0 or arr.max() >= 1 << bits:
        raise ValueError(f"a {bits}-bit picture holds values in [{arr.min()}, {arr.max()}], outside "
                         f"0..{(1 << bits) - 1}")
    return arr * 257 if bits == 8 else arr


def _gray16(values: np.ndarray) -> Image.Image:
    return Image.fromarray(_from_16bit(values), "L")


def _from_16bit(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 (``round(v / 257)``: 257 · k maps back to k)."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _icc_to_srgb(img: Image.Image, profile: bytes) -> Image.Image:
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    except (OSError, ImageCms.PyCMSError) as err:
        warnings.warn(f"the embedded ICC profile cannot be read ({err}); it is ignored", stacklevel=4)
        return img
    space = source.profile.xcolor_space.strip().upper()
    if space != _PROFILE_SPACE[img.mode]:
        warnings.warn(f"the embedded ICC profile describes {space} colours but the picture is {img.mode}; "
                      "the profile is ignored", stacklevel=4)
        return img
    return _cms(img, source)


def _cms(img: Image.Image, source) -> Image.Image:
    """Colour channels converted from ``source`` to sRGB; alpha kept as it is."""
    alpha = img.getchannel("A") if img.mode in ("LA", "RGBA") else None
    colours = img.convert({"LA": "L", "RGBA": "RGB"}.get(img.mode, img.mode))
    try:
        intent = ImageCms.getDefaultIntent(source)
        intent = intent if intent in (0, 1, 2, 3) else ImageCms.Intent.PERCEPTUAL
        out = ImageCms.profileToProfile(colours, source, ImageCms.createProfile("sRGB"),
                                        renderingIntent=intent, outputMode="RGB")
    except ImageCms.PyCMSError as err:
        warnings.warn(f"the colour profile cannot be applied ({err}); it is ignored", stacklevel=4)
        return img if img.mode not in ("LAB", "CMYK") else img.convert("RGB")
    if alpha is not None:
        out.putalpha(alpha)
    return out


def _apply_gamma(img: Image.Image, exponent: float) -> Image.Image:
    lut = [round(255.0 * (v / 255.0) ** exponent) for v in range(256)]
    bands = list(img.split())
    colour = len(bands) - (1 if img.mode in ("LA", "RGBA") else 0)
    return Image.merge(img.mode, [b.point(lut) if i < colour else b for i, b in enumerate(bands)])


def _flatten(img: Image.Image, background) -> Image.Image:
    """``RGB``: alpha composited over ``background`` (straight alpha)."""
    if img.mode in ("LA", "RGBA"):  # Pillow's integer compositing: round(c·a/255 + bg·(1 − a/255)) exactly
        under = Image.new("RGBA", img.size, tuple(int(v) for v in background) + (255,))
        return Image.alpha_composite(under, img.convert("RGBA")).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


# --- arrays and tensors ---------------------------------------------------------------

def _from_array(image, layout: str | None) -> Image.Image:
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        elif t.dtype in (torch.uint16, torch.uint32, torch.uint64):
            t = t.to(torch.int64) if t.dtype != torch.uint16 else t
        if t.is_complex():
            raise ValueError(f"image tensor must be real, got {t.dtype}; accepted: {ACCEPTED_ARRAYS}")
        arr = t.numpy()
    else:
        arr = image
    shape = tuple(arr.shape)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"expected one picture, got a batch of {arr.shape[0]} (shape {list(shape)}); "
                             "take one, e.g. image[i:i + 1]")
        arr = arr[0]
    if arr.ndim == 3:
        arr = _to_hwc(arr, shape, layout)
    elif arr.ndim != 2:
        raise ValueError(f"image must be {ACCEPTED_ARRAYS}; got shape {list(shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image has no pixels (shape {list(shape)})")
    pixels = _to_uint8(arr)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    channels = 1 if pixels.ndim == 2 else pixels.shape[-1]
    return Image.fromarray(np.ascontiguousarray(pixels), CHANNEL_MODES[channels])


def _to_hwc(arr: np.ndarray, shape: tuple, layout: str | None) -> np.ndarray:
    last, first = arr.shape[-1] in CHANNEL_MODES, arr.shape[0] in CHANNEL_MODES
    if layout is None:
        if last and first:
            raise ValueError(f"image shape {list(shape)} is ambiguous: it fits [H, W, C] and [C, H, W]. Pass "
                             "a PIL image, or kv_core.image.to_pil(image, layout='HWC' or 'CHW'), or a shape "
                             f"that fits one of {ACCEPTED_ARRAYS}")
        if not (last or first):
            raise ValueError(f"image shape {list(shape)} has no channel axis of 1 to 4; accepted: "
                             f"{ACCEPTED_ARRAYS}")
        layout = "HWC" if last else "CHW"
    if layout == "CHW":
        arr = np.moveaxis(arr, 0, -1)
    if arr.shape[-1] not in CHANNEL_MODES:
        raise ValueError(f"image shape {list(shape)} read as {layout} has {arr.shape[-1]} channels; "
                         "accepted: 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA)")
    return arr


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    kind = arr.dtype
    if kind == np.uint8:
        return arr
    if kind == np.bool_:
        return arr.astype(np.uint8) * 255
    if kind == np.uint16:
        return _from_16bit(arr)
    if np.issubdtype(kind, np.floating):
        return _unit_floats(arr, "float image")
    if np.issubdtype(kind, np.integer):
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high > 255:
            raise ValueError(f"{kind} image values span [{low}, {high}]; integer pictures other than uint16 "
                             "are 8-bit and must lie in 0..255 (use uint16 for 0..65535, or floats in [0, 1])")
        return arr.astype(np.uint8)
    raise ValueError(f"image dtype {kind} is not a picture; accepted: {ACCEPTED_ARRAYS}")


def _unit_floats(arr: np.ndarray, what: str) -> np.ndarray:
    """Floats in [0, 1] -> uint8 by ``round(255 · x)``; refuses NaN/inf and values further out."""
    values = arr.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        raise ValueError(f"{what} has {int((~finite).sum())} NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < -_HALF_STEP or high > 1.0 + _HALF_STEP:
        raise ValueError(f"{what} values span [{low:.4g}, {high:.4g}]; floats must lie in [0, 1] "
                         "(0 black, 1 white). Divide 0..255 data by 255, map [-1, 1] data with (x + 1) / 2")
    return np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)
