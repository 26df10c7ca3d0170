"""The pipeline of tiny random networks (kv_core.tiny configs, fp32, CPU) and a random text
condition, built the same way in every process (the cross-process determinism test runs them
in a second interpreter)."""
import torch

from kv_core.checkpoints import INTERPOLATION_UNET, KEYFRAME_UNET, MOVQ, VIDEO_MOVQ, build_network
from kv_core.conditioning import TextCondition
from kv_core.pipeline import KandinskyVideoPipeline
from kv_core.tiny import randomize_, tiny_configs

#: two DDIM steps per stage: the tests' runs of the whole pipeline
FAST = dict(first_frame_sampler="ddim", first_frame_steps=2, keyframes_sampler="ddim", keyframes_steps=2,
            interpolation_sampler="ddim", interpolation_steps=2)


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


def run(pipe, cond, **kw):
    settings = dict(width=64, height=64, num_keyframes=3, conditioning=cond, **FAST)
    settings.update(kw)
    return pipe(**settings)


class Boom(torch.nn.Module):
    """A network that must never run (its config has the release's levels)."""

    config = {"ch_mult": (1, 2, 2, 4), "dim_mult": (1, 2, 4, 8)}  # as a MoVQ (x8) and a U-Net (x8)

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, *args, **kwargs):
        raise AssertionError("a network ran before the input was validated")

    encode = decode = forward
