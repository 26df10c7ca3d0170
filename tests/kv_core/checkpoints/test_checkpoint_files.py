"""kv_core.checkpoints beyond the official formats: fp8 weights with casting operations, building
on meta, a deterministic tiny release, text-encoder folders that cannot tokenize, files of
something else, and the text_encoder section of configs.json."""
import json
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from cast_ops import CastOps
from kv_core import checkpoints as ck
from kv_core.checkpoints import networks
from kv_core.dtypes import supports_fp8_weights
from kv_core.tiny import write_tiny_release


# --- fp8 weights with an operations namespace that casts at run time (cast_ops) --------------------

def test_fp8_weights_kept_with_casting_operations(tmp_path, release):
    from kv_core.convert import convert_network

    path = convert_network(release.movq, tmp_path / "movq_fp8.safetensors", configs=release.configs, dtype="fp8")
    assert supports_fp8_weights(CastOps) and not supports_fp8_weights(torch.nn)
    kept = ck.load_movq(path, operations=CastOps, dtype=torch.float32)
    upcast = ck.load_movq(path, dtype=torch.float32)
    dtypes = {p.dtype for p in kept.parameters()}
    assert torch.float8_e4m3fn in dtypes
    assert {p.dtype for p in upcast.parameters()} == {torch.float32}
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(kept.encode(x), upcast.encode(x), atol=1e-5, rtol=1e-5)


def test_fp8_at_load_time_from_an_official_file(release):
    net, _ = ck.load_keyframe_unet(release.t2v, release.configs, dtype="fp8", operations=CastOps)
    sd = net.state_dict()
    assert sd["down_samples.1.resnet_attn_blocks.0.1.attention.to_query.weight"].dtype == torch.float8_e4m3fn
    assert sd["in_layer.weight"].dtype == torch.bfloat16 and sd["in_layer.bias"].dtype == torch.bfloat16
    with pytest.raises(ck.CheckpointError, match="fp8 weights .* need an operations namespace"):
        ck.load_keyframe_unet(release.t2v, release.configs, dtype="fp8")


def test_networks_are_built_on_meta_and_assigned(monkeypatch, release):
    seen = {}
    real = networks.network_class

    def spy(network):
        cls = real(network)

        class Spied(cls):
            def __init__(self, *args, **kwargs):
                seen["device"] = kwargs.get("device")
                super().__init__(*args, **kwargs)
                seen["param_devices"] = {p.device.type for p in self.parameters()}

            def load_state_dict(self, state_dict, strict=True, assign=False):
                seen["assign"], seen["strict"] = assign, strict
                return super().load_state_dict(state_dict, strict=strict, assign=assign)

        return Spied

    monkeypatch.setattr(networks, "network_class", spy)
    net = ck.load_movq(release.video_movq, release.configs)
    assert seen == {"device": "meta", "param_devices": {"meta"}, "assign": True, "strict": True}
    # the values are the file's
    raw = torch.load(release.video_movq, weights_only=True, mmap=True)
    assert torch.equal(net.state_dict()["decoder.conv_out.weight"], raw["decoder.conv_out.weight"])


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_tiny_release_is_deterministic(tmp_path, release):
    from safetensors.torch import load_file

    again = write_tiny_release(tmp_path / "again", seed=1)  # the fixture's seed
    other = write_tiny_release(tmp_path / "other", seed=2)
    for name in ("t2v.pt", "video_movq.pt", "t5_projections.pt"):
        a = torch.load(release.folder / name, weights_only=True)
        b = torch.load(again.folder / name, weights_only=True)
        c = torch.load(other.folder / name, weights_only=True)
        fa, fb, fc = (_flat(d) for d in (a, b, c))
        assert all(torch.equal(fa[k], fb[k]) for k in fa), name
        assert not all(torch.equal(fa[k], fc[k]) for k in fa), name
    ta = load_file(str(release.t5_folder / "model.safetensors"))
    tb = load_file(str(again.t5_folder / "model.safetensors"))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert (release.t5_folder / "tokenizer.json").read_text() == (again.t5_folder / "tokenizer.json").read_text()
    assert again.configs.read_text() == release.configs.read_text()


# --- a text-encoder folder that cannot tokenize (issue 9 §2) -----------------------------------

def _t5_copy(release, tmp_path, keep=()):
    """The tiny Flan-UL2 folder with config.json, the weights and only the files in ``keep``."""
    folder = tmp_path / "flan-ul2"
    folder.mkdir()
    for f in release.t5_folder.iterdir():
        if f.name in ("config.json", "model.safetensors") or f.name in keep:
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


@pytest.mark.parametrize("keep", [(), ("tokenizer_config.json",)])
def test_t5_folder_without_tokenizer_is_refused_naming_what_is_missing(tmp_path, release, keep):
    """Without tokenizer.json and spiece.model transformers builds a tokenizer that maps every
    word to <unk> ('a red car' and 'the blue sea' gave the same ids, so the same video)."""
    folder = _t5_copy(release, tmp_path, keep)
    with pytest.raises(ck.CheckpointError) as err:
        ck.load_t5_tokenizer(folder)
    msg = str(err.value)
    assert str(folder) in msg and "tokenizer.json" in msg and "spiece.model" in msg
    assert ck.load_t5_encoder(folder) is not None  # the weights themselves are fine
    from kv_core.text import TextEncoder
    with pytest.raises(ck.CheckpointError, match="no tokenizer"):
        TextEncoder.from_files(folder, release.t5_projections)


@pytest.mark.parametrize("missing,named", [(("google.protobuf",), "protobuf"),
                                           (("sentencepiece",), "sentencepiece"),
                                           (("sentencepiece", "google.protobuf"), "sentencepiece and protobuf")])
def test_spiece_model_without_its_packages_names_them(tmp_path, release, monkeypatch, missing, named):
    folder = _t5_copy(release, tmp_path, ("spiece.model", "tokenizer_config.json"))
    for module in missing:
        monkeypatch.setitem(sys.modules, module, None)  # "import module" now raises ImportError
    with pytest.raises(ck.CheckpointError) as err:
        ck.load_t5_tokenizer(folder)
    msg = str(err.value)
    assert f"needs the Python package{'s' if len(missing) > 1 else ''} {named}" in msg
    assert "tokenizer.json" in msg and str(folder) in msg and "tiktoken" not in msg


@pytest.mark.parametrize("keep", [("spiece.model", "tokenizer_config.json"), ("tokenizer.json", "tokenizer_config.json"),
                                  ("tokenizer.json",)])
def test_either_tokenizer_file_is_enough(tmp_path, release, keep):
    tok = ck.load_t5_tokenizer(_t5_copy(release, tmp_path, keep))
    want = ck.load_t5_tokenizer(release.t5_folder)
    for prompt in ("a red car", "the blue sea"):
        assert tok(prompt)["input_ids"] == want(prompt)["input_ids"]
    assert tok("a red car")["input_ids"] != tok("the blue sea")["input_ids"]


def test_tokenizer_larger_than_the_encoder_embedding_is_refused(release):
    """ComfyUI's real T5 tokenizer (32100 ids) with the tiny encoder (about 100 rows): ids past
    the embedding would fail (or read garbage) at the first prompt."""
    from kv_core.text import TextEncoder
    from tools.harness import ensure_comfyui

    real = ensure_comfyui(install_requirements=False) / "comfy" / "text_encoders" / "t5_tokenizer"
    with pytest.raises(ck.CheckpointError, match=r"32100 tokens but the encoder's embedding only \d+ rows"):
        TextEncoder.from_files(release.t5_folder, release.t5_projections, tokenizer_path=real)


def _word_level_tokenizer(folder, vocab, **special):
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir()
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", **special}))
    return folder


def test_tokenizer_of_another_vocabulary_is_refused(tmp_path):
    folder = _word_level_tokenizer(tmp_path / "tok", {"<pad>": 0, "</s>": 1, "<unk>": 2, "машина": 3},
                                   pad_token="<pad>", eos_token="</s>")
    with pytest.raises(ck.CheckpointError, match=r"reads \d+ of the \d+ pieces .* as <unk>"):
        ck.load_t5_tokenizer(folder)


def test_tokenizer_without_pad_or_eos_is_refused(tmp_path):
    vocab = {w: i for i, w in enumerate("<unk> a red car driving along coastal road at sunset".split())}
    folder = _word_level_tokenizer(tmp_path / "tok", vocab)
    with pytest.raises(ck.CheckpointError, match="no pad_token and no eos_token"):
        ck.load_t5_tokenizer(folder)


def test_encoder_file_without_tokenizer_is_refused(tmp_path, release):
    from kv_core.convert import convert_t5_encoder

    out = convert_t5_encoder(release.t5_folder, tmp_path / "enc.safetensors", dtype="fp32")
    meta = ck.open_tensor_file(out).metadata
    tensors = load_file(str(out))
    bare = tmp_path / "bare" / "enc.safetensors"
    bare.parent.mkdir()
    save_file(tensors, str(bare), metadata={k: v for k, v in meta.items() if k != ck.META_TOKENIZER})
    with pytest.raises(ck.CheckpointError, match="no tokenizer embedded in the file nor beside it") as err:
        ck.load_t5_tokenizer(bare)
    assert "tokenizer.json or spiece.model" in str(err.value)
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata={**meta, ck.META_TOKENIZER: "{not json"})
    with pytest.raises(ck.CheckpointError, match="tokenizer in its metadata"):
        ck.load_t5_tokenizer(broken)


def test_t5_config_that_cannot_describe_the_encoder_is_refused(tmp_path, release):
    folder = _t5_copy(release, tmp_path, ("tokenizer.json",))
    (folder / "config.json").write_text('{"d_model": 16,')
    with pytest.raises(ck.CheckpointError, match="config.json: not a readable JSON file"):
        ck.load_t5_encoder(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "clip_text_model", "hidden_size": 16}))
    with pytest.raises(ck.CheckpointError, match="'clip_text_model' model, not T5"):
        ck.load_t5_encoder(folder)


# --- what a file of something else looks like (issue 9 §6) ------------------------------------

def _sd_checkpoint(path):
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
               "model.diffusion_model.out.2.weight": torch.zeros(4, 8, 3, 3),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
               "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(10, 8)},
              str(path), metadata={"format": "pt", "modelspec.architecture": "stable-diffusion-v1"})
    return path


def _lora(path):
    base = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{base}.lora_down.weight": torch.zeros(4, 8), f"{base}.lora_up.weight": torch.zeros(8, 4),
               f"{base}.alpha": torch.tensor(4.0)}, str(path), metadata={"ss_network_module": "networks.lora"})
    return path


@pytest.mark.parametrize("make,says", [
    (_sd_checkpoint, ["a safetensors of 4 tensors", "model.diffusion_model.* (2)", "first_stage_model.encoder.conv_in.weight",
                      "modelspec.architecture=stable-diffusion-v1", "looks like a Stable Diffusion checkpoint"]),
    (_lora, ["a safetensors of 3 tensors", "ss_network_module=networks.lora", "looks like a LoRA"]),
    (lambda p: save_file({}, str(p)) or p, ["a safetensors with no tensors at all"]),
])
@pytest.mark.parametrize("loader,expected", [
    (lambda p: ck.load_keyframe_unet(p), "keyframe U-Net (t2v.pt) has keys like {'unet'"),
    (lambda p: ck.load_movq(p), "image MoVQ (movq.pt) has keys like 'encoder.conv_in.weight'"),
    (ck.load_text_projections, "has keys like 'projection_base.0.weight'"),
    (ck.load_t5_encoder, "T5 text encoder has keys like 'shared.weight'"),
])
def test_a_file_of_no_kandinsky_network_is_described(tmp_path, make, says, loader, expected):
    path = make(tmp_path / "model.safetensors")
    with pytest.raises(ck.CheckpointError) as err:
        loader(path)
    msg = str(err.value)
    assert str(path) in msg and "nothing this loader recognises: " in msg and expected in msg
    for part in says:
        assert part in msg


def test_a_torch_file_of_something_else_is_described(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"layers.0.self_attn.q_proj.weight": torch.zeros(4, 4),
                               "layers.0.mlp.weight": torch.zeros(4, 4)}}, path)
    with pytest.raises(ck.CheckpointError, match=r"a torch checkpoint of 2 tensors \(32 values, float32\); "
                                                 r"keys state_dict\.layers\.0\.\* \(2\)") as err:
        ck.load_keyframe_unet(path)
    assert "null embedding" not in str(err.value)


@pytest.mark.parametrize("name", ["t2v.pt", "t2v.safetensors"])
def test_an_empty_file_says_it_is_empty(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(ck.CheckpointError, match=r"the file is empty \(0 bytes\)"):
        ck.load_keyframe_unet(path)


@pytest.mark.parametrize("name,loader", [("t2v", ck.load_keyframe_unet), ("interpolation", ck.load_interpolation_unet)])
def test_null_embedding_of_another_width_is_refused(tmp_path, release, name, loader):
    """It loaded, then broke the first unconditional pass."""
    data = torch.load(getattr(release, name), weights_only=True)
    width = data["null_embedding"].shape[0]
    torch.save({**data, "null_embedding": torch.zeros(width + 8)}, tmp_path / f"{name}.pt")
    with pytest.raises(ck.CheckpointError, match=rf"'null_embedding' has shape \({width + 8},\).*expected \[{width}\]"):
        loader(tmp_path / f"{name}.pt", release.configs)


def test_t5_index_naming_files_outside_its_folder_is_refused(tmp_path, release):
    """A shard index (``model.safetensors.index.json``) is data from the download: a weight
    file named ``../x`` would be read from outside the text-encoder folder."""
    import shutil

    folder = tmp_path / "flan-ul2"
    shutil.copytree(release.t5_folder, folder)
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(folder / "model.safetensors", outside)
    keys = list(load_file(str(outside)))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "../elsewhere.safetensors" for k in keys}}))
    with pytest.raises(ck.CheckpointError, match="outside its folder"):
        ck.t5_encoder_file(folder)


# --- the text_encoder section of configs.json (issue 10) -----------------------------------------

def test_text_settings_defaults_without_file_or_section(tmp_path):
    assert ck.text_settings(None) == (128, None)
    (tmp_path / "configs.json").write_text(json.dumps({"t2v": {"configs": {}}}))
    assert ck.text_settings(tmp_path / "configs.json") == (128, None)
    (tmp_path / "configs.json").write_text(json.dumps({"text_encoder": {"tokens_length": 32, "context_dim": 24}}))
    assert ck.text_settings(tmp_path / "configs.json") == (32, 24)


@pytest.mark.parametrize("section,says", [
    ({"tokens_length": "thirty-two"}, "text_encoder.tokens_length is 'thirty-two'"),
    ({"tokens_length": 1}, "text_encoder.tokens_length is 1"),
    ({"tokens_length": True}, "text_encoder.tokens_length is True"),
    ({"context_dim": 24.5}, "text_encoder.context_dim is 24.5"),
    ({"context_dim": 0}, "text_encoder.context_dim is 0"),
    ([32], "text_encoder is [32], not a JSON object"),
])
def test_text_settings_refuse_unusable_values(tmp_path, section, says):
    path = tmp_path / "configs.json"
    path.write_text(json.dumps({"text_encoder": section}))
    with pytest.raises(ck.CheckpointError) as err:
        ck.text_settings(path)
    assert says in str(err.value) and str(path) in str(err.value)


def test_text_settings_refuse_unreadable_json(tmp_path):
    path = tmp_path / "configs.json"
    path.write_text("{not json")
    with pytest.raises(ck.CheckpointError, match="could not read configs"):
        ck.text_settings(path)
