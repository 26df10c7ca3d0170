"""The CPU fast paths of the U-Nets give the results of the plain computation.

* :class:`kv_core.models.layers.TextContext`: the text context's keys, values and pooled summary
  are computed once per distinct prompt, not once per frame (the samplers repeat one
  context over all frames of a pass);
* :func:`kv_core.models.layers.frame_conv3d_class`: ``(k, 1, 1)`` Conv3d kernels run as 2D
  convolutions (PyTorch's CPU Conv3d takes a slow unfold path for them).
"""
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kv_core.models.layers import Attention, AttentionPooling, LayerFactory, TextContext, frame_conv3d_class
from kv_core.models.unet import KeyframeUNet
from kv_core.models.unet_interpolation import InterpolationUNet
from kv_core.tiny import randomize_, tiny_configs


def _contexts(g, rows_per_prompt, length=6, dim=16):
    """Guidance-style contexts: prompt i repeated ``rows_per_prompt[i]`` times."""
    parts, masks = [], []
    for i, n in enumerate(rows_per_prompt):
        c = torch.randn(1, length, dim, generator=g)
        m = torch.zeros(1, length, dtype=torch.bool)
        m[:, : (length - i) if i < length else 0] = True  # the last prompt may be all masked
        parts.append(c.expand(n, -1, -1))
        masks.append(m.expand(n, -1))
    return torch.cat(parts), torch.cat(masks)


def test_text_context_groups_consecutive_equal_rows():
    g = torch.Generator().manual_seed(0)
    context, mask = _contexts(g, [3, 2, 4])
    text = TextContext.of(context, mask)
    assert text.tokens.shape[0] == 3
    assert text.rows.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert torch.equal(text.expand(text.tokens), context)
    assert torch.equal(text.expand(text.mask), mask)


def test_text_context_keeps_rows_that_differ_only_in_the_mask_or_hold_nan():
    context = torch.zeros(3, 2, 4)
    mask = torch.tensor([[True, True], [True, False], [True, False]])
    assert TextContext.of(context, mask).rows.tolist() == [0, 1, 1]
    nan = torch.full((2, 2, 4), float("nan"))
    assert TextContext.of(nan).rows is None  # NaN != NaN: nothing merged, nothing lost


@pytest.mark.parametrize("rows_per_prompt", [[3, 3], [1, 4, 2], [1, 1]])
def test_attention_and_pooling_with_a_text_context_equal_the_plain_computation(rows_per_prompt):
    g = torch.Generator().manual_seed(1)
    factory = LayerFactory()
    attention = randomize_(Attention(8, 16, 16, 4, factory=factory), g)
    pooling = randomize_(AttentionPooling(12, 16, 4, factory=factory), g)
    context, mask = _contexts(g, rows_per_prompt)
    x = torch.randn(context.shape[0], 5, 8, generator=g)
    emb = torch.randn(context.shape[0], 12, generator=g)
    text = TextContext.of(context, mask)
    torch.testing.assert_close(attention(x, text), attention(x, context, mask), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooling(emb, text), pooling(emb, context, mask), rtol=1e-5, atol=1e-6)


def _rows_projected(unet: nn.Module) -> list[int]:
    """Rows fed to every key projection of the text context during one forward."""
    seen = []
    for name, module in unet.named_modules():
        if name.endswith("attention.to_key") and "temporal" not in name and "self_attention" not in name:
            module.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    return seen


def test_keyframe_unet_projects_the_context_once_per_prompt(monkeypatch):
    """12 rows (4 frames x 3 guidance passes) with 2 distinct contexts: every key projection
    of the text sees 2 rows (12 before), and the output is that of the plain computation."""
    g = torch.Generator().manual_seed(2)
    cfg = tiny_configs()["t2v"]["configs"]
    unet = randomize_(KeyframeUNet(**cfg), g).eval()
    frames = 4
    context, mask = _contexts(g, [frames, 2 * frames], dim=cfg["context_dim"])
    n = context.shape[0]
    x = torch.randn(n, cfg["num_channels"], 8, 8, generator=g)
    time = torch.full((n,), 500.0)
    seen = _rows_projected(unet)
    with torch.no_grad():
        out = unet(x, time, context, mask, mode="video", num_frames=frames)
        assert seen and set(seen) == {2}, seen
        monkeypatch.setattr(TextContext, "of", classmethod(lambda cls, c, m=None: cls(c, m)))  # no grouping
        plain = unet(x, time, context, mask, mode="video", num_frames=frames)
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)


def test_interpolation_unet_projects_the_context_once_per_prompt():
    g = torch.Generator().manual_seed(3)
    cfg = tiny_configs()["interpolation"]["configs"]
    unet = randomize_(InterpolationUNet(**cfg), g).eval()
    groups = 3
    context, mask = _contexts(g, [groups, groups], dim=cfg["context_dim"])
    n = context.shape[0]
    x = torch.randn(n, cfg["num_channels"], 8, 8, generator=g)
    seen = _rows_projected(unet)
    with torch.no_grad():
        unet(x, torch.full((n,), 500), context, mask, num_groups=groups)
    assert seen and set(seen) == {2}, seen


# --- (k, 1, 1) convolutions over frames ---------------------------------------------------

class _CastingConv3d(nn.Conv3d):
    """Like comfy.ops' manual-cast Conv3d: casts its weights to the input's dtype at run time
    and calls ``_conv_forward`` with them."""

    comfy_cast_weights = True

    def forward(self, x):
        return self._conv_forward(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


@pytest.mark.parametrize("ops", [None, types.SimpleNamespace(Conv3d=_CastingConv3d)], ids=["torch.nn", "casting"])
@pytest.mark.parametrize("kernel,padding", [((3, 1, 1), (1, 0, 0)), ((1, 1, 1), 0)])
def test_frame_conv_runs_as_2d_and_equals_conv3d(monkeypatch, ops, kernel, padding):
    g = torch.Generator().manual_seed(4)
    conv = randomize_(LayerFactory(ops).conv3d(6, 5, kernel, padding=padding), g)
    assert isinstance(conv, ops.Conv3d if ops else nn.Conv3d)
    video = torch.randn(2, 7, 6, 3, 4, generator=g).transpose(1, 2)  # [b, C, t, H, W], as conv_over_frames
    expected = F.conv3d(video, conv.weight, conv.bias, padding=padding)

    def no_conv3d(*args, **kwargs):
        raise AssertionError("the slow CPU Conv3d path was taken")

    monkeypatch.setattr(F, "conv3d", no_conv3d)
    with torch.no_grad():
        out = conv(video)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert conv.state_dict().keys() == {"weight", "bias"}


def test_other_3d_kernels_keep_conv3d():
    g = torch.Generator().manual_seed(5)
    conv = randomize_(LayerFactory().conv3d(3, 4, (3, 3, 3), padding=1), g)
    video = torch.randn(1, 3, 5, 6, 6, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(conv(video), F.conv3d(video, conv.weight, conv.bias, padding=1))


def test_frame_conv_class_is_made_once_per_base():
    assert frame_conv3d_class(nn.Conv3d) is frame_conv3d_class(nn.Conv3d)
    assert frame_conv3d_class(nn.Conv3d).__name__ == "Conv3d"
