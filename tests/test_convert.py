"""The converter: official files -> our safetensors (round trip, dtypes, fp8 policy, metadata),
and the Flan-UL2 encoder extraction that never reads the decoder."""
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from kv_core import checkpoints as ck, convert as cv
from kv_core.dtypes import FP8_DTYPES, parse_dtype
from kv_core.tiny import TINY_CONTEXT_DIM, write_tiny_release, write_tiny_t5


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_tiny_release(tmp_path_factory.mktemp("tiny"), seed=2)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randn(4, 5, TINY_CONTEXT_DIM, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 4, dtype=torch.bool)
    return g, ctx, mask


def _run(network, net):
    """One forward of a tiny network on fixed random inputs (float32 in, float32 out)."""
    g, ctx, mask = _inputs()
    dtype = next(p for p in net.parameters() if p.is_floating_point()).dtype
    dtype = torch.bfloat16 if dtype in FP8_DTYPES else dtype
    with torch.no_grad():
        if network == ck.KEYFRAME_UNET:
            x = torch.randn(4, 9, 4, 4, generator=g)
            t = torch.full((4,), 500.0)
            video = net(x.to(dtype), t, ctx.to(dtype), mask, mode="video", num_frames=2,
                        temporal_embed=torch.arange(2.0).repeat(2), noise_aug_time=torch.full((4,), 20, dtype=torch.int32),
                        motion_score=torch.full((4,), 10, dtype=torch.int32))
            image = net(x[:2].to(dtype), t[:2], ctx[:2].to(dtype), mask[:2], mode="image")
            return torch.cat([video.flatten(), image.flatten()]).float()
        if network == ck.INTERPOLATION_UNET:
            x = torch.randn(4, 20, 4, 4, generator=g)
            out = net(x.to(dtype), torch.full((4,), 899), ctx[:4].to(dtype), mask[:4], num_groups=2,
                      perturbation_time=torch.zeros(4, dtype=torch.int32),
                      skip_frames=torch.full((4,), 3, dtype=torch.int32),
                      temporal_mask=torch.tensor([1.0, 1.0, 0.0, 0.0]))
            return out.float().flatten()
        image = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
        latents = torch.randn(2, 4, 4, 4, generator=g)
        enc = net.encode(image.to(dtype))
        dec = net.decode(latents.to(dtype))
        return torch.cat([enc.flatten(), dec.flatten()]).float()


NETWORKS = [(ck.KEYFRAME_UNET, "t2v"), (ck.INTERPOLATION_UNET, "interpolation"), (ck.MOVQ, "movq"),
            (ck.VIDEO_MOVQ, "video_movq")]


def _load(network, path, configs=None, **kw):
    if network == ck.KEYFRAME_UNET:
        return ck.load_keyframe_unet(path, configs, **kw)
    if network == ck.INTERPOLATION_UNET:
        return ck.load_interpolation_unet(path, configs, **kw)
    return ck.load_movq(path, configs, **kw), None


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    out = {}
    for dtype in ("fp32", "bf16", "fp16", "fp8"):
        out[dtype] = cv.convert_release(release.folder, tmp_path_factory.mktemp(dtype), dtype=dtype,
                                        movq_dtype=dtype)
    return out


@pytest.fixture(scope="module")
def reference(release):
    """Outputs of the networks loaded from the official files (computed once per network)."""
    cache = {}

    def get(network, attr):
        if network not in cache:
            cache[network] = _run(network, _load(network, getattr(release, attr), release.configs)[0])
        return cache[network]

    return get


@pytest.mark.parametrize("network,attr", NETWORKS)
def test_fp32_round_trip_is_exact(release, converted, reference, network, attr):
    path = converted["fp32"][network]
    official, null = _load(network, getattr(release, attr), release.configs)
    ours, our_null = _load(network, path)  # config from the file's metadata
    assert (ck.load_network(network, path).config
            == ck.load_network(network, getattr(release, attr), release.configs).config)
    a, b = official.state_dict(), ours.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    if null is not None:
        assert torch.equal(null, our_null)
    assert torch.equal(reference(network, attr), _run(network, ours))


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp8"])
@pytest.mark.parametrize("network,attr", NETWORKS)
def test_reduced_precision_files_load_and_run(converted, reference, network, attr, dtype):
    path = converted[dtype][network]
    assert f"_{dtype}.safetensors" in path.name
    net, null = _load(network, path)
    assert {p.dtype for p in net.parameters()} == {parse_dtype(dtype) if dtype != "fp8" else torch.bfloat16}
    if null is not None:
        assert null.dtype == torch.float32
    got = _run(network, net)
    want = reference(network, attr)
    assert torch.isfinite(got).all()
    # relative RMS error against fp32; random tiny networks amplify rounding (bf16 computes in
    # bf16 here; fp8 weights lose 2-8 % each)
    err = (got - want).norm() / want.norm()
    assert err < {"bf16": 0.1, "fp16": 0.03, "fp8": 0.35}[dtype], f"relative error {float(err):.3g}"


def test_reduced_precision_file_computes_in_float32(converted):
    net = ck.load_movq(converted["fp8"][ck.VIDEO_MOVQ], dtype=torch.float32)
    assert {p.dtype for p in net.parameters()} == {torch.float32}


def test_metadata(converted, release):
    path = converted["bf16"][ck.INTERPOLATION_UNET]
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta[ck.META_FORMAT] == "1" and meta[ck.META_NETWORK] == ck.INTERPOLATION_UNET
    assert meta[ck.META_DTYPE] == "bfloat16" and meta[ck.META_SOURCE] == "interpolation.pt"
    configs = json.loads(release.configs.read_text())
    assert json.loads(meta[ck.META_CONFIG]) == configs["interpolation"]["configs"]
    assert ck.NULL_EMBEDDING_KEY in keys and not any(k.startswith("unet.") for k in keys)


def test_fp8_storage_policy(converted):
    with safe_open(str(converted["fp8"][ck.KEYFRAME_UNET]), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        assert f.metadata()[ck.META_DTYPE] == "float8_e4m3fn"
    assert dtypes["null_embedding"] == "F32"
    for key in ("in_layer.weight", "image_in_layer.weight", "out_layer.2.weight", "in_layer.bias"):
        assert dtypes[key] == "BF16", key
    assert all(v == "BF16" for k, v in dtypes.items() if k.endswith(".bias"))
    fp8 = [k for k, v in dtypes.items() if v == "F8_E4M3"]
    assert len(fp8) > len(dtypes) // 4
    assert any("attention.to_query.weight" in k for k in fp8)
    assert all(k.endswith(".weight") for k in fp8)


def test_fp8_keeps_tensors_that_would_flush_to_zero():
    tiny = torch.full((8, 8), 1e-4)
    assert cv.storage_dtype("down_samples.0.x.weight", tiny, torch.float8_e4m3fn) == torch.bfloat16
    normal = torch.linspace(-0.5, 0.5, 64).reshape(8, 8)
    assert cv.storage_dtype("down_samples.0.x.weight", normal, torch.float8_e4m3fn) == torch.float8_e4m3fn
    assert cv.storage_dtype("skip_embeddings.weight", normal, torch.float8_e4m3fn) == torch.bfloat16
    assert cv.storage_dtype("null_embedding", normal[0], torch.float16) == torch.float32


def test_text_projections_round_trip(release, converted):
    a = ck.load_text_projections(release.t5_projections)
    b = ck.load_text_projections(converted["fp32"][ck.TEXT_PROJECTIONS])
    for label in a:
        for k, v in a[label].state_dict().items():
            assert torch.equal(v, b[label].state_dict()[k])


def test_converter_refuses_a_file_of_another_network(release, tmp_path):
    with pytest.raises(ck.CheckpointError, match="expected the keyframe U-Net"):
        cv.convert_network(release.movq, tmp_path / "x.safetensors", network=ck.KEYFRAME_UNET)
    assert not (tmp_path / "x.safetensors").exists()


def test_cli(release, tmp_path, capsys):
    assert cv.main(["release", str(release.folder), str(tmp_path / "out"), "--dtype", "fp16",
                    "--t5", str(release.t5_folder), "--t5-dtype", "fp32"]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["flan_ul2_encoder_fp32.safetensors", "kv11_interpolation_fp16.safetensors",
                     "kv11_movq_fp32.safetensors", "kv11_t2v_fp16.safetensors",
                     "kv11_t5_projections.safetensors", "kv11_video_movq_fp32.safetensors"]
    assert cv.main(["network", str(release.movq), str(tmp_path / "bad.safetensors"),
                    "--network", "keyframe_unet"]) == 1
    assert "expected the keyframe U-Net" in capsys.readouterr().err


# --- Flan-UL2 encoder ---------------------------------------------------------------------------

def _hidden(encoder, tokenizer):
    enc = tokenizer(["a red car at sunset", "a cat"], padding="max_length", max_length=12,
                    truncation=True, return_tensors="pt")
    with torch.no_grad():
        return encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state


def _reference_hidden(folder):
    from transformers import T5EncoderModel

    return _hidden(T5EncoderModel.from_pretrained(str(folder)).eval(), ck.load_t5_tokenizer(folder))


@pytest.fixture
def read_keys(monkeypatch):
    """Records every tensor read through safetensors and every shard opened."""
    import safetensors

    record = {"keys": [], "files": []}
    real = safetensors.safe_open

    class Spy:
        def __init__(self, filename, *args, **kwargs):
            record["files"].append(Path(filename).name)
            self._f = real(filename, *args, **kwargs)

        def __enter__(self):
            self._f.__enter__()
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def get_tensor(self, key):
            record["keys"].append(key)
            return self._f.get_tensor(key)

        def __getattr__(self, name):
            return getattr(self._f, name)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    return record


def _decoder_only_shards(folder, index_name):
    weight_map = json.loads((folder / index_name).read_text())["weight_map"]
    files = {}
    for key, file in weight_map.items():
        files.setdefault(file, set()).add(key.split(".")[0])
    return sorted(f for f, prefixes in files.items() if prefixes <= {"decoder", "lm_head"})


def test_t5_sharded_safetensors_to_encoder_only(tmp_path, read_keys):
    folder = write_tiny_t5(tmp_path / "flan-ul2", seed=5, max_shard_size="4KB")
    dead = _decoder_only_shards(folder, "model.safetensors.index.json")
    assert dead, "the test needs shards that hold decoder tensors only"
    want = _reference_hidden(folder)
    read_keys["keys"].clear()
    read_keys["files"].clear()

    out = cv.convert_t5_encoder(folder, tmp_path / "enc.safetensors", dtype="fp32")
    assert read_keys["keys"], "the spy saw no reads"
    assert not [k for k in read_keys["keys"] if not (k.startswith("encoder.") or k == "shared.weight")]
    assert not set(read_keys["files"]) & set(dead)

    with safe_open(str(out), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert "shared.weight" in keys and all(k == "shared.weight" or k.startswith("encoder.") for k in keys)
    assert meta[ck.META_NETWORK] == ck.T5_ENCODER
    assert json.loads(meta[ck.META_CONFIG])["feed_forward_proj"] == "gated-silu"
    encoder = ck.load_t5_encoder(out)
    got = _hidden(encoder, ck.load_t5_tokenizer(out))  # tokenizer embedded in the file
    assert torch.equal(got, want)


def test_t5_folder_loads_directly_with_only_the_encoder(tmp_path, read_keys):
    folder = write_tiny_t5(tmp_path / "flan-ul2", seed=6)
    want = _reference_hidden(folder)
    read_keys["keys"].clear()
    encoder = ck.load_t5_encoder(folder)
    assert not any(k.startswith(("decoder.", "lm_head.")) for k in read_keys["keys"])
    assert torch.equal(_hidden(encoder, ck.load_t5_tokenizer(folder)), want)


def _write_bin_shards(src, folder, per_shard=6):
    """Re-save a T5 folder as ``pytorch_model-*.bin`` shards + index (the old HF layout)."""
    from safetensors.torch import load_file

    folder.mkdir()
    state = load_file(str(src / "model.safetensors"))
    keys = sorted(state)
    weight_map = {}
    chunks = [keys[i:i + per_shard] for i in range(0, len(keys), per_shard)]
    for i, chunk in enumerate(chunks):
        name = f"pytorch_model-{i + 1:05d}-of-{len(chunks):05d}.bin"
        torch.save({k: state[k] for k in chunk}, folder / name)
        weight_map.update({k: name for k in chunk})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "spiece", "config")):
            (folder / f.name).write_bytes(f.read_bytes())


def test_t5_sharded_bin_to_encoder_only(tmp_path):
    src = write_tiny_t5(tmp_path / "src", seed=7)
    folder = tmp_path / "bin"
    _write_bin_shards(src, folder)
    want = _reference_hidden(src)
    # shards with decoder tensors only are made unreadable: reading one would fail the test
    dead = _decoder_only_shards(folder, "pytorch_model.bin.index.json")
    assert dead
    for name in dead:
        (folder / name).write_bytes(b"not a checkpoint")
    out = cv.convert_t5_encoder(folder, tmp_path / "enc.safetensors", dtype="fp32")
    assert torch.equal(_hidden(ck.load_t5_encoder(out), ck.load_t5_tokenizer(out)), want)
    assert torch.equal(_hidden(ck.load_t5_encoder(folder), ck.load_t5_tokenizer(folder)), want)


def test_t5_reduced_precision_and_errors(tmp_path, release):
    out = cv.convert_t5_encoder(release.t5_folder, tmp_path / "enc_bf16.safetensors", dtype="bf16")
    enc = ck.load_t5_encoder(out, dtype=torch.float32)
    assert {p.dtype for p in enc.parameters()} == {torch.float32}
    want = _reference_hidden(release.t5_folder)
    got = _hidden(enc, ck.load_t5_tokenizer(out))
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    with pytest.raises(ck.CheckpointError, match="expected the T5 text encoder"):
        ck.load_t5_encoder(release.t2v)
    with pytest.raises(ck.CheckpointError, match="not a Hugging Face T5 folder"):
        cv.convert_t5_encoder(tmp_path, tmp_path / "x.safetensors")


def test_streaming_writer_round_trip(tmp_path):
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g).to(torch.bfloat16),
               "c": torch.tensor(2.5), "d": torch.arange(6, dtype=torch.int64).reshape(2, 3),
               "e": torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn), "f": torch.zeros(0, 3),
               "g": torch.tensor([True, False])}
    entries = [cv.Entry(k, tuple(v.shape), v.dtype, lambda v=v: v) for k, v in tensors.items()]
    path = cv.write_safetensors(tmp_path / "x.safetensors", entries, {"k": "v"})
    back = load_file(str(path))
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k].float(), v.float()), k
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"k": "v"}
    assert not list(tmp_path.glob("*.partial"))


def test_re_encoding_our_own_file(converted, tmp_path):
    src = converted["fp32"][ck.KEYFRAME_UNET]
    out = cv.convert_network(src, tmp_path / "t2v_bf16.safetensors", dtype="bf16")
    a, null_a = ck.load_keyframe_unet(src, dtype=torch.bfloat16)
    b, null_b = ck.load_keyframe_unet(out)
    assert ck.load_network(ck.KEYFRAME_UNET, src).config == ck.load_network(ck.KEYFRAME_UNET, out).config
    assert torch.equal(null_a, null_b)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
