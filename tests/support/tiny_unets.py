"""Tiny U-Net configurations, random parameters that reach every code path, and random inputs
of the keyframe and interpolation U-Nets (tests/kv_core/models/)."""
from __future__ import annotations

import torch
from torch import nn


TINY_KEYFRAME = dict(
    model_channels=8, init_channels=8, num_channels=9, out_channels=4, time_embed_dim=16, context_dim=12,
    groups=4, head_dim=8, dim_mult=(1, 2), num_blocks=(2, 2), add_cross_attention=(False, True),
    add_self_attention=(True, True), noise_augmentation=True, motion_score=True,
)
TINY_INTERP = dict(
    model_channels=8, init_channels=8, num_channels=20, out_channels=12, time_embed_dim=16, context_dim=12,
    groups=4, head_dim=8, dim_mult=(1, 2), num_blocks=(2, 2), add_cross_attention=(False, True),
    add_self_attention=(True, True), time_downsample=(False, False), add_new_temporal_params=True,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter a non-trivial value (the official init zeroes merge scalars,
    temporal convs and norm MLPs, which would hide whole code paths)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in net.named_parameters():
        if p.numel() == 1:  # learned merge scalars
            p.copy_(0.2 + 0.6 * torch.rand(1, generator=gen))
        elif p.dim() == 1:
            base = 1.0 if name.endswith("weight") else 0.0
            p.copy_(base + 0.2 * (2 * torch.rand(p.shape, generator=gen) - 1))
        else:
            bound = p[0].numel() ** -0.5
            p.copy_(bound * (2 * torch.rand(p.shape, generator=gen) - 1))
    return net.eval()


def keyframe_inputs(batch: int, seed: int = 1, length: int = 5, size: int = 8):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 9, size, size, generator=gen)
    time = torch.randint(0, 1000, (batch,), generator=gen).float()
    context = torch.randn(batch, length, TINY_KEYFRAME["context_dim"], generator=gen)
    mask = torch.rand(batch, length, generator=gen) < 0.7
    mask[:, 0] = True
    return x, time, context, mask


def interp_inputs(groups: int, seed: int = 2, length: int = 5, size: int = 8):
    gen = torch.Generator().manual_seed(seed)
    n = 2 * groups
    return dict(
        x=torch.randn(n, 20, size, size, generator=gen),
        time=torch.randint(0, 1000, (n,), generator=gen),
        context=torch.randn(n, length, TINY_INTERP["context_dim"], generator=gen),
        context_mask=torch.rand(n, length, generator=gen) < 0.7,
        perturbation_time=torch.randint(0, 1000, (n,), generator=gen, dtype=torch.int32),
        skip_frames=torch.randint(0, 20, (n,), generator=gen, dtype=torch.int32),
        temporal_mask=torch.cat([torch.ones(groups), torch.zeros(groups)]),
    )


def run_interp(net, inputs, groups, **overrides):
    kw = {**inputs, **overrides}
    return net(kw.pop("x"), kw.pop("time"), kw.pop("context"), kw.pop("context_mask"), num_groups=groups, **kw)
