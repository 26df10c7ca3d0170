"""Golden runners of the MoVQ kinds: movq_encode, movq_decode, video_movq_decode, decode_video.

Each network is built from the case's own ``configs.json`` entry and checkpoint, loaded
strictly; nothing here depends on a particular case.
"""
import torch

from golden_support import GoldenCase, golden_kind
from kv_core.models.movq import MoVQ, decode_video, to_uint8_frames


def _load_movq(case: GoldenCase, config_key: str, filename: str) -> MoVQ:
    movq = MoVQ(**case.configs[config_key]["configs"], device="meta")
    state_dict = torch.load(case.path(filename), map_location="cpu", weights_only=True)
    movq.load_state_dict(state_dict, strict=True, assign=True)
    return movq.eval()


def _image_movq(case: GoldenCase) -> MoVQ:
    return _load_movq(case, "image_movq", "movq.pt")


def _video_movq(case: GoldenCase) -> MoVQ:
    return _load_movq(case, "video_movq", "video_movq.pt")


@golden_kind("movq_encode")
def run_movq_encode(case: GoldenCase) -> dict:
    return {"latent": _image_movq(case).encode(case.inputs["image"])}


@golden_kind("movq_decode")
def run_movq_decode(case: GoldenCase) -> dict:
    return {"image": _image_movq(case).decode(case.inputs["latent"])}


@golden_kind("video_movq_decode")
def run_video_movq_decode(case: GoldenCase) -> dict:
    return {"frames": _video_movq(case).decode(case.inputs["latents"])}


@golden_kind("decode_video")
def run_decode_video(case: GoldenCase) -> dict:
    frames = decode_video(_video_movq(case), case.inputs["latents"])
    return {"frames_float": frames, "frames_uint8": to_uint8_frames(frames)}
