"""The 8/4-bit text encoder (kv_core.quantized, kv_core.checkpoints.gguf, kv_core.convert t5
--dtype q8_0|q4_1|q4_0): our dequantization is the GGUF reference's, the converter writes the
encoder one tensor at a time into a GGUF file that the loader reads back exactly, and the
small encoder encodes through TextEncoder and the pipeline."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the optional gguf package (tests/requirements.txt)")

from kv_core.checkpoints import CheckpointError, load_t5_encoder, load_t5_tokenizer  # noqa: E402
from kv_core.checkpoints.gguf import GGUFFile, quantizes  # noqa: E402
from kv_core.convert import convert_t5_encoder, main as convert_main  # noqa: E402
from kv_core.pipeline import KandinskyVideoPipeline  # noqa: E402
from kv_core.quantized import QUANT_TYPES, QuantEmbedding, QuantLinear, dequantize, quantized_bytes  # noqa: E402
from kv_core.text import TextEncoder  # noqa: E402
from kv_core.models.text_projection import PROJECTION_LABELS, TextProjection  # noqa: E402
from kv_core.tiny import (TINY_CONTEXT_DIM, TINY_TOKENS_LENGTH, randomize_, write_tiny_release,  # noqa: E402
                          write_tiny_t5)

PROMPTS = ["a red car drives along a coastal road", "a red panda climbing a snowy pine tree"]


WIDE = 64  # a tiny T5 whose matrices all have rows of a multiple of 32 (GGUF's block)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The tiny release with a 64-wide T5 (2 heads of 16) and projections to match."""
    release = write_tiny_release(tmp_path_factory.mktemp("release"))
    shutil.rmtree(release.t5_folder)
    write_tiny_t5(release.t5_folder, d_model=WIDE, d_kv=16)
    generator = torch.Generator().manual_seed(3)
    torch.save({label: randomize_(TextProjection(WIDE, TINY_CONTEXT_DIM), generator).state_dict()
                for label in PROJECTION_LABELS}, release.t5_projections)
    return release


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    return {q: convert_t5_encoder(release.t5_folder, out / f"t5_{q}.gguf", dtype=q) for q in ("q8_0", "q4_1", "q4_0")}


@pytest.mark.parametrize("qtype", sorted(QUANT_TYPES))
def test_dequantize_is_the_gguf_reference(qtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 96)).astype(np.float32) * rng.uniform(0.01, 10, (6, 1)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block (scale 0)
    x[1, 32:64] = 5.0  # a constant block
    packed = gguf.quants.quantize(x, gguf.GGMLQuantizationType[qtype])
    want = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType[qtype])
    got = dequantize(torch.from_numpy(packed), qtype, 96)
    assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(want))
    assert torch.equal(dequantize(torch.from_numpy(packed), qtype, 96, torch.bfloat16), got.bfloat16())
    with pytest.raises(ValueError, match="bytes"):
        dequantize(torch.from_numpy(packed[:, :-1]), qtype, 96)


def test_the_file_holds_every_encoder_tensor_and_the_loader_reads_them_exactly(release, converted):
    reference = load_t5_encoder(release.t5_folder, dtype=torch.float32)
    ref_state = reference.state_dict()
    for qtype, path in converted.items():
        gf = GGUFFile(path)
        assert set(gf.tensors) == set(ref_state) - {"encoder.embed_tokens.weight"}
        assert gf.metadata["kandinsky_video.network"] == "t5_encoder"
        model = load_t5_encoder(path, dtype=torch.float32)
        assert isinstance(model.shared, QuantEmbedding) and model.encoder.embed_tokens is model.shared
        quantized = [m for m in model.modules() if isinstance(m, (QuantLinear, QuantEmbedding))]
        assert len(quantized) == 1 + 2 * (4 + 3)  # embedding + per block: q, k, v, o, wi_0, wi_1, wo
        for name, module in model.named_modules():
            if isinstance(module, (QuantLinear, QuantEmbedding)):
                key = "shared.weight" if module is model.shared else name + ".weight"
                assert gf.qtype(key) == qtype.upper() and quantizes(key, tuple(ref_state[key].shape))
                want = gguf.quants.dequantize(gf.tensors[key].data, gf.tensors[key].tensor_type)
                weights = (module.dequantized() if isinstance(module, QuantLinear)
                           else dequantize(module.qweight, module.qtype, module.embedding_dim))
                assert torch.equal(weights, torch.from_numpy(want)), key
        for key, value in model.state_dict().items():  # norms and relative-attention biases: exact
            if not key.endswith("qweight"):
                assert torch.equal(value, ref_state[key]), key
        assert quantized_bytes(model) < 0.3 * sum(t.numel() * 4 for t in ref_state.values())


def test_small_encoders_encode_close_to_the_full_one_and_8_bit_closest(release, converted):
    tokenizer = load_t5_tokenizer(release.t5_folder)
    ids = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = load_t5_encoder(release.t5_folder, dtype=torch.float32)(**ids).last_hidden_state
        errors = {}
        for qtype, path in converted.items():
            got = load_t5_encoder(path, dtype=torch.float32)(**ids).last_hidden_state
            mask = ids["attention_mask"].bool()
            errors[qtype] = float(((got - want).norm(dim=-1) / want.norm(dim=-1))[mask].mean())
    # measured on this tiny random encoder: q8_0 1.1 %, q4_1 16 %, q4_0 18 % mean relative error per
    # token (two blocks of 64-wide random weights; the full-size figures are in bench/bench_text_encoder.py)
    assert errors["q8_0"] < 0.02 and errors["q8_0"] < errors["q4_1"] / 4, errors
    assert errors["q4_1"] < 0.3 and errors["q4_0"] < 0.3, errors


def test_the_small_encoder_runs_through_text_encoder_and_the_pipeline(release, converted, tmp_path):
    path = converted["q8_0"]
    text = TextEncoder.from_files(path, release.t5_projections, tokens_length=TINY_TOKENS_LENGTH, dtype=torch.bfloat16)
    assert text.report(PROMPTS[0]).ok  # the tokenizer embedded in the .gguf
    full = TextEncoder.from_files(release.t5_folder, release.t5_projections, tokens_length=TINY_TOKENS_LENGTH)
    (ctx, mask), (ctx_full, mask_full) = text.encode(PROMPTS[0])["projection_base"], \
        full.encode(PROMPTS[0])["projection_base"]
    assert torch.equal(mask, mask_full) and ctx.shape == ctx_full.shape
    assert float((ctx.float() - ctx_full).norm() / ctx_full.norm()) < 0.05
    pipe = KandinskyVideoPipeline.from_release(release.folder, text_encoder_folder=path,
                                               text_encoder_dtype=torch.bfloat16, prompt_cache=tmp_path / "cache")
    video = pipe(PROMPTS[0], width=64, height=64, num_keyframes=2, fps="low", noise=1, first_frame_steps=2,
                 keyframes_steps=2)
    assert video.frames.shape == (2, 64, 64, 3) and pipe.prompt_cache_hit is False
    assert isinstance(pipe.text_encoder.encoder.shared, QuantEmbedding)


def test_the_converter_command_line_and_its_refusals(release, tmp_path, capsys):
    out = tmp_path / "enc.gguf"
    assert convert_main(["t5", str(release.t5_folder), str(out), "--dtype", "q4_0"]) == 0
    assert GGUFFile(out).metadata["kandinsky_video.dtype"] == "Q4_0"
    # from our encoder safetensors too
    st = convert_t5_encoder(release.t5_folder, tmp_path / "enc.safetensors", dtype="bf16")
    assert GGUFFile(convert_t5_encoder(st, tmp_path / "from_st.gguf", dtype="q8_0")).qtype("shared.weight") == "Q8_0"
    assert convert_main(["t5", str(release.t5_folder), str(tmp_path / "enc.safetensors2"), "--dtype", "q4_0"]) == 1
    assert ".gguf file" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="not a T5 encoder"):
        convert_t5_encoder(release.t5_projections, tmp_path / "x.gguf", dtype="q4_0")
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_damaged_or_foreign_gguf_is_refused_naming_the_file(release, converted, tmp_path):
    data = converted["q4_0"].read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.gguf"):
        load_t5_encoder(truncated)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(CheckpointError, match="garbage.gguf"):
        load_t5_encoder(garbage)
    foreign = tmp_path / "foreign.gguf"
    writer = gguf.GGUFWriter(str(foreign), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="not the Flan-UL2 encoder"):
        load_t5_encoder(foreign)
