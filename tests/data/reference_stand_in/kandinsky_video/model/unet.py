"""Stand-in for the official unet.py (tests only): kv_core's network behind the reference's call."""
import torch

from kv_core.models.unet import KeyframeUNet


def _f32(t):
    return t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t


class UNet(KeyframeUNet):
    def forward(self, x, time, context, context_mask, temporal_embed=None, num_frames=None, noise_aug_time=None,
                motion_score=None):
        mode = "image" if x.shape[0] <= 2 else "video"
        kw = {} if mode == "image" else dict(num_frames=num_frames, temporal_embed=_f32(temporal_embed),
                                              noise_aug_time=noise_aug_time, motion_score=motion_score)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(_f32(x), time, _f32(context), context_mask, mode=mode, **kw)
