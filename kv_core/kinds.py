"""The network kinds of a Kandinsky Video 1.1 release, named once: the key every loader,
converter, file header and node uses, the name messages give each, the release file that
holds it, and the activation memory a call of it needs.

``ACTIVATION_FACTOR`` (ComfyUI's ``memory_usage_factor`` idea): the peak activation memory
of one network call, in KiB per row, latent cell and byte of the compute dtype
(``rows * h * w * dtype_size * factor * 1024`` bytes). 15 for the U-Nets, 300 for the
MoVQs, whose decoders run at 8x the latent size with wide channels; hosts reserve that
much before a call (the ComfyUI nodes do).
"""
from __future__ import annotations

KEYFRAME_UNET = "keyframe_unet"
INTERPOLATION_UNET = "interpolation_unet"
MOVQ = "movq"
VIDEO_MOVQ = "video_movq"
TEXT_PROJECTIONS = "text_projections"
T5_ENCODER = "t5_encoder"

#: what each network is called in messages
NETWORK_NAMES = {
    KEYFRAME_UNET: "keyframe U-Net",
    INTERPOLATION_UNET: "interpolation U-Net",
    MOVQ: "image MoVQ",
    VIDEO_MOVQ: "video MoVQ",
    TEXT_PROJECTIONS: "text projections",
    T5_ENCODER: "T5 text encoder",
}
#: the file of the official release that holds each (the T5 encoder is a folder, flan-ul2)
RELEASE_FILES = {
    KEYFRAME_UNET: "t2v.pt",
    INTERPOLATION_UNET: "interpolation.pt",
    MOVQ: "movq.pt",
    VIDEO_MOVQ: "video_movq.pt",
    TEXT_PROJECTIONS: "t5_projections.pt",
}
#: name and release file, for the loaders' messages: "keyframe U-Net (t2v.pt)"
DESCRIPTIONS = {kind: f"{name} ({RELEASE_FILES[kind]})" if kind in RELEASE_FILES else name
                for kind, name in NETWORK_NAMES.items()}
#: KiB of activations per row, latent cell and byte of compute dtype (see the module docstring)
ACTIVATION_FACTOR = {KEYFRAME_UNET: 15, INTERPOLATION_UNET: 15, MOVQ: 300, VIDEO_MOVQ: 300}


def activation_memory(kind: str, rows: int, h: int, w: int, dtype_size: int) -> int:
    """Rough peak activation memory (bytes) of one call of a ``kind`` network on ``rows``
    rows of ``h x w`` latent cells computing with ``dtype_size``-byte values."""
    return int(rows * h * w * dtype_size * ACTIVATION_FACTOR[kind] * 1024)
