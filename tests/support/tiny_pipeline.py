"""The pipeline of tiny random networks (kv_core.tiny configs, fp32, CPU) and a random text
condition, built the same way in every process (the cross-process determinism test runs them
in a second interpreter)."""
import torch

from kv_core.checkpoints import INTERPOLATION_UNET, KEYFRAME_UNET, MOVQ, VIDEO_MOVQ, build_network
from kv_core.conditioning import TextCondition
from kv_core.pipeline import KandinskyVideoPipeline
from kv_core.tiny import randomize_, tiny_configs


def tiny_pipeline(seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = tiny_configs()

    def net(kind, section):
        return randomize_(build_network(kind, cfg[section]["configs"], device="cpu", dtype=torch.float32), g).eval()
    dim = cfg["t2v"]["configs"]["context_dim"]
    return KandinskyVideoPipeline(
        unet=net(KEYFRAME_UNET, "t2v"), null_embedding=torch.randn(dim, generator=g),
        interpolation_unet=net(INTERPOLATION_UNET, "interpolation"),
        interpolation_null_embedding=torch.randn(dim, generator=g),
        movq=net(MOVQ, "image_movq"), video_movq=net(VIDEO_MOVQ, "video_movq"))


def tiny_condition(seed=1, dim=16, length=5):
    g = torch.Generator().manual_seed(seed)
    return TextCondition(torch.randn(1, length, dim, generator=g), torch.tensor([[1] * (length - 1) + [0]]))
