"""The one dtype policy (kv_core/dtypes.py): compute dtype and fp8 storage."""
import pytest
import torch
from test_checkpoints import CastOps

from kv_core import dtypes
from kv_core.models.layers import compute_dtype
from kv_core.models.movq import MoVQ
from kv_core.models.text_projection import TextProjection
from kv_core.text import project_context
from kv_core.tiny import TINY_IMAGE_MOVQ_CONFIG

FP8 = torch.float8_e4m3fn


@torch.no_grad()
def test_every_network_follows_the_one_compute_dtype_rule():
    """fp16-stored weights in layers that cast at run time compute in the input's dtype
    (bf16 here), in the U-Nets' layers, the MoVQ and the text projections alike; plain layers
    compute in their weights' dtype. (The MoVQ had its own rule and ran such layers in fp16.)"""
    movq = MoVQ(**TINY_IMAGE_MOVQ_CONFIG, operations=CastOps, dtype=torch.float16).eval()
    latents = torch.randn(1, TINY_IMAGE_MOVQ_CONFIG["z_channels"], 4, 4, dtype=torch.bfloat16)
    assert movq.decode(latents).dtype == torch.bfloat16
    assert compute_dtype(movq.post_quant_conv, latents) == torch.bfloat16
    plain = MoVQ(**TINY_IMAGE_MOVQ_CONFIG, dtype=torch.float16).eval()
    assert plain.decode(latents).dtype == torch.float16
    assert compute_dtype(plain.post_quant_conv, latents) == torch.float16

    projection = TextProjection(8, 16, dtype=torch.float16)
    context, _ = project_context(torch.randn(1, 3, 8, dtype=torch.float32), None, projection)
    assert context.dtype == torch.float16


@pytest.mark.parametrize("weight,host,bf16,want", [
    (torch.bfloat16, None, False, torch.bfloat16),
    (torch.float16, torch.float32, True, torch.float32),   # a host's manual-cast choice wins
    (FP8, None, True, torch.bfloat16),
    (FP8, None, False, torch.float32),
    (FP8, FP8, True, torch.float32),                       # never compute in fp8
])
def test_compute_dtype_beside_stored_weights(weight, host, bf16, want):
    assert dtypes.compute_dtype_for_weights(weight, host, bf16_supported=bf16) == want


def test_store_fp8_stores_what_the_file_rule_stores_of_casting_layers_only():
    class FeedForward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wi = CastOps.Linear(4, 8)
            self.wo = CastOps.Linear(8, 4)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.DenseReluDense = FeedForward()
            self.flat = CastOps.Linear(4, 4)
            self.norm = CastOps.LayerNorm(4)
            self.embed = CastOps.Embedding(10, 4)
            self.plain = torch.nn.Linear(4, 4)  # not a casting layer: keeps its dtype
            with torch.no_grad():
                self.flat.weight.zero_()  # its fp8 cast would lose everything: kept

    class T5Like(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = torch.nn.ModuleList([torch.nn.ModuleDict({"layer": torch.nn.ModuleList([Block(), Block()])})])

    model = torch.nn.Module()
    model.in_layer = CastOps.Linear(4, 4)  # a first layer: kept, as in a file
    model.encoder = T5Like()
    dtypes.store_fp8(model, FP8)
    block = model.encoder.block[0]["layer"][1]
    assert block.DenseReluDense.wi.weight.dtype == FP8 and block.DenseReluDense.wi.bias.dtype == torch.float32
    assert not block.DenseReluDense.wi.weight.requires_grad and block.DenseReluDense.wi.comfy_cast_weights
    for kept in (block.DenseReluDense.wo.weight, model.in_layer.weight, block.flat.weight, block.norm.weight,
                 block.embed.weight, block.plain.weight):
        assert kept.dtype == torch.float32
    for name, m in model.named_modules():  # the loaders' fp8 is the file's fp8, layer by layer
        w = getattr(m, "weight", None)
        if hasattr(m, "comfy_cast_weights") and not isinstance(m, torch.nn.Embedding) and w is not None:
            stored = dtypes.storage_dtype(f"{name}.weight", w.float(), FP8)
            assert (w.dtype == FP8) == (stored == FP8), name


def test_file_storage_refines_the_matrix_rule():
    g = torch.Generator().manual_seed(0)
    matrix = torch.randn(8, 8, generator=g)
    inner = "down_samples.0.resnet_attn_blocks.0.1.attention.to_query.weight"
    assert dtypes.storage_dtype(inner, matrix, FP8) == FP8
    assert dtypes.storage_dtype("in_layer.weight", torch.randn(8, 4, 3, 3, generator=g), FP8) == torch.bfloat16
    assert dtypes.storage_dtype(inner, torch.zeros(8, 8), FP8) == torch.bfloat16  # would flush to zero
    assert dtypes.storage_dtype(inner.replace("weight", "bias"), torch.randn(8, generator=g), FP8) == torch.bfloat16
    assert dtypes.storage_dtype("null_embedding", torch.randn(8, generator=g), FP8) == torch.float32
    assert dtypes.storage_dtype("ids", torch.arange(4), FP8) == torch.int64
    assert dtypes.storage_dtype(inner, matrix, torch.float16) == torch.float16
