"""Stand-in for the official unet_interpolation.py (tests only)."""
import torch

from kv_core.models.unet_interpolation import InterpolationUNet


def _f32(t):
    return t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t


class UNet(InterpolationUNet):
    def forward(self, x, time, context, context_mask, num_predicted_groups, perturbation_time=None,
                skip_frames=None, temporal_mask=None):
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(_f32(x), time, _f32(context), context_mask, num_groups=num_predicted_groups,
                                   perturbation_time=perturbation_time, skip_frames=skip_frames,
                                   temporal_mask=_f32(temporal_mask))
