"""Stand-in for the official movq.py (tests only)."""
import torch

from kv_core.models.movq import MoVQ as _MoVQ


class MoVQ(_MoVQ):
    def __init__(self, config):
        super().__init__(**config)

    def decode(self, z):
        with torch.autocast(z.device.type, enabled=False):
            return super().decode(z.float())
