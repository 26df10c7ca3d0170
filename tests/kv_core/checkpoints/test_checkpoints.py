"""Loading the official files: formats, configs vs detection, strictness and every error path."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from golden_support import golden_dir
from kv_core import checkpoints as ck
from kv_core.checkpoints import networks
from kv_core.dtypes import supports_fp8_weights
from kv_core.tiny import write_tiny_release

GOLDEN = golden_dir()
def needs_golden(test):
    """A test that reads the golden files: marked ``golden``, skipped without them."""
    return pytest.mark.golden(pytest.mark.skipif(not (GOLDEN / "configs.json").exists(),
                                                 reason="no golden folder")(test))

# network, file in a release, section of configs.json
OFFICIAL = [
    (ck.KEYFRAME_UNET, "t2v.pt", "t2v"),
    (ck.INTERPOLATION_UNET, "interpolation.pt", "interpolation"),
    (ck.MOVQ, "movq.pt", "image_movq"),
    (ck.VIDEO_MOVQ, "video_movq.pt", "video_movq"),
]
# what a state dict cannot show (see kv_core.checkpoints.detect_config)
UNDETECTABLE = {"groups", "head_dim", "resolution", "attn_resolutions", "dropout"}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_tiny_release(tmp_path_factory.mktemp("tiny"), seed=1)


def _load(network, path, configs=None, **kw):
    if network == ck.KEYFRAME_UNET:
        return ck.load_keyframe_unet(path, configs, **kw)[0]
    if network == ck.INTERPOLATION_UNET:
        return ck.load_interpolation_unet(path, configs, **kw)[0]
    return ck.load_movq(path, configs, video=network == ck.VIDEO_MOVQ, **kw)


def _attention_levels(cfg):
    n = len(cfg["ch_mult"])
    return [cfg["resolution"] // 2 ** i in cfg["attn_resolutions"] for i in range(n)]


# --- official formats ----------------------------------------------------------------------

@needs_golden
@pytest.mark.parametrize("network,name,section", OFFICIAL)
def test_golden_official_files_load_with_configs_json(network, name, section):
    configs = json.loads((GOLDEN / "configs.json").read_text())
    loaded = ck.load_network(network, GOLDEN / name, GOLDEN / "configs.json")
    net = loaded.module
    sd = torch.load(GOLDEN / name, weights_only=True)
    sd = sd["unet"] if "unet" in sd else sd
    got = net.state_dict()
    assert set(got) == set(sd)
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    assert not any(t.is_meta for t in [*net.parameters(), *net.buffers()])
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    assert loaded.config == ck.config_from(configs, network)
    counts = json.loads((GOLDEN / "manifest.json").read_text())["param_counts"]
    key = {ck.KEYFRAME_UNET: "t2v", ck.INTERPOLATION_UNET: "interp", ck.MOVQ: "movq",
           ck.VIDEO_MOVQ: "video_movq"}[network]
    assert sum(p.numel() for p in net.parameters()) == counts[key]


@needs_golden
def test_golden_unet_null_embeddings_and_new_params_variant():
    _, null = ck.load_keyframe_unet(GOLDEN / "t2v.pt", GOLDEN / "configs.json")
    want = torch.load(GOLDEN / "t2v.pt", weights_only=True)["null_embedding"]
    assert torch.equal(null, want) and null.dtype == torch.float32
    configs = json.loads((GOLDEN / "configs.json").read_text())
    loaded = ck.load_network(ck.INTERPOLATION_UNET, GOLDEN / "interpolation_new_params.pt",
                             configs["interpolation_new_params"])
    assert loaded.config["add_new_temporal_params"] is True
    assert torch.equal(ck.load_null_embedding(GOLDEN / "interpolation.pt"),
                       torch.load(GOLDEN / "interpolation.pt", weights_only=True)["null_embedding"])


@needs_golden
def test_golden_text_projections():
    projections = ck.load_text_projections(GOLDEN / "t5_projections.pt")
    raw = torch.load(GOLDEN / "t5_projections.pt", weights_only=True)
    for label, proj in projections.items():
        for k, v in proj.state_dict().items():
            assert torch.equal(v, raw[label][k])


def test_tiny_release_loads_in_official_formats(release):
    for network, name, section in OFFICIAL:
        net = _load(network, release.folder / name, release.configs)
        assert not any(t.is_meta for t in net.parameters())
    assert set(ck.load_text_projections(release.t5_projections)) == {"projection_base", "projection_interpolation"}


def test_tiny_release_weights_are_not_degenerate(release):
    for network, name, _ in OFFICIAL:
        sd = torch.load(release.folder / name, weights_only=True)
        sd = sd.get("unet", sd)
        zero = [k for k, v in sd.items() if v.is_floating_point() and not bool(v.abs().max() > 0)]
        assert not zero, f"{name}: all-zero tensors {zero[:3]}"
        merges = [v for k, v in sd.items() if "merge" in k]
        assert all(bool(((v > 0.1) & (v < 0.9)).all()) for v in merges)


def test_dtype_and_device_at_load(release):
    net, null = ck.load_keyframe_unet(release.t2v, release.configs, dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16}
    assert null.dtype == torch.float32
    movq = ck.load_movq(release.video_movq, release.configs, dtype="fp16")
    assert {p.dtype for p in movq.parameters()} == {torch.float16}


def test_loaded_cpu_tensors_are_aligned_whatever_the_file_format(release, tmp_path):
    """safetensors/mmap'd tensors can start at any byte; the loader copies those into
    64-byte-aligned memory so the same weights compute bit-identical outputs from either
    file format (unaligned weights take other CPU kernel paths)."""
    from kv_core import convert as cv

    ours = tmp_path / "t2v.safetensors"
    cv.convert_network(release.t2v, ours, configs=release.configs, dtype="fp32")
    for path in (release.t2v, ours):
        net = _load(ck.KEYFRAME_UNET, path, release.configs)
        misaligned = [n for n, p in net.named_parameters() if p.numel() and p.data_ptr() % 64]
        assert not misaligned, f"{path.name}: {misaligned[:3]}"


# --- configuration: configs.json vs detection -----------------------------------------------

def _check_detection_agrees(configs_path, files):
    configs = json.loads(Path(configs_path).read_text())
    for network, path, section in files:
        want = ck.config_from(configs[section], network)
        shapes = ck.network_tensors(path, network).shapes
        detected = ck.detect_config(network, shapes)  # official base
        for key, value in want.items():
            if key in UNDETECTABLE:
                continue
            assert detected.get(key) == value, f"{path.name}: {key} detected {detected.get(key)} != {value}"
        if network in (ck.MOVQ, ck.VIDEO_MOVQ):
            assert _attention_levels(detected) == _attention_levels(want)
        # with the undetectable values given, detection reproduces configs.json exactly
        base = {**ck.official_config(network), **{k: want[k] for k in UNDETECTABLE if k in want}}
        assert ck.detect_config(network, shapes, base) == want


@needs_golden
def test_detection_agrees_with_golden_configs_json():
    files = [(n, GOLDEN / f, s) for n, f, s in OFFICIAL]
    files.append((ck.INTERPOLATION_UNET, GOLDEN / "interpolation_new_params.pt", "interpolation_new_params"))
    _check_detection_agrees(GOLDEN / "configs.json", files)


def test_detection_agrees_with_tiny_configs_json(release):
    _check_detection_agrees(release.configs, [(n, release.folder / f, s) for n, f, s in OFFICIAL])


@pytest.mark.parametrize("network,changes", [
    (ck.KEYFRAME_UNET, {}),
    (ck.KEYFRAME_UNET, {"noise_augmentation": False, "motion_score": False}),
    (ck.INTERPOLATION_UNET, {"add_new_temporal_params": True}),
    (ck.INTERPOLATION_UNET, {"add_new_temporal_params": False}),
    (ck.MOVQ, {}),
    (ck.VIDEO_MOVQ, {}),
    (ck.VIDEO_MOVQ, {"temporal_attention_block": False, "temporal_mid_blocks": False}),
])
def test_detection_of_official_size_variants(network, changes):
    """Built on the meta device at full size: detection from the keys alone gives back the
    official config with each release variant's switches."""
    cfg = {**ck.official_config(network), **changes}
    meta = ck.build_network(network, cfg)
    shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    assert ck.detect_config(network, shapes) == cfg


def test_detected_config_loads_without_configs_json_when_official_values_fit(tmp_path, release):
    # a release whose undetectable values are the official ones loads with no configs.json
    cfg = {**ck.official_config(ck.VIDEO_MOVQ), "ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1}
    net = ck.build_network(ck.VIDEO_MOVQ, cfg, device="cpu")
    torch.save(net.state_dict(), tmp_path / "video_movq.pt")
    loaded = ck.load_network(ck.VIDEO_MOVQ, tmp_path / "video_movq.pt")
    assert loaded.config == cfg


def test_configs_argument_forms(release):
    configs = json.loads(release.configs.read_text())
    for form in (release.configs, str(release.configs), configs, configs["t2v"], configs["t2v"]["configs"]):
        assert ck.config_from(form, ck.KEYFRAME_UNET) == configs["t2v"]["configs"]
    with pytest.raises(ck.CheckpointError, match="no 'video_movq' section"):
        ck.config_from({"t2v": configs["t2v"]}, ck.VIDEO_MOVQ)


# --- error paths ------------------------------------------------------------------------------

def _unet_dict(path):
    return torch.load(path, weights_only=True)


def test_truncated_pt_file(tmp_path, release):
    data = release.t2v.read_bytes()
    bad = tmp_path / "t2v.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="truncated") as err:
        ck.load_keyframe_unet(bad, release.configs)
    assert str(bad) in str(err.value)


def test_truncated_safetensors_file(tmp_path, release):
    from kv_core.convert import convert_network

    good = convert_network(release.movq, tmp_path / "movq.safetensors", configs=release.configs)
    data = good.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ck.CheckpointError, match="truncated") as err:
        ck.load_movq(bad)
    assert "cut.safetensors" in str(err.value)


@pytest.mark.parametrize("loader,src,expected,found", [
    ("keyframe", "movq", "keyframe U-Net", "image MoVQ"),
    ("keyframe", "interpolation", "keyframe U-Net", "interpolation U-Net"),
    ("interpolation", "t2v", "interpolation U-Net", "keyframe U-Net"),
    ("movq_video", "movq", "video MoVQ", "image MoVQ"),
    ("movq_image", "video_movq", "image MoVQ", "video MoVQ"),
    ("movq_image", "t5_projections", "image MoVQ", "text projections"),
    ("projections", "t2v", "text projections", "keyframe U-Net"),
])
def test_file_of_another_network(release, loader, src, expected, found):
    path = getattr(release, src)
    call = {
        "keyframe": lambda: ck.load_keyframe_unet(path, release.configs),
        "interpolation": lambda: ck.load_interpolation_unet(path, release.configs),
        "movq_video": lambda: ck.load_movq(path, release.configs, video=True),
        "movq_image": lambda: ck.load_movq(path, release.configs, video=False),
        "projections": lambda: ck.load_text_projections(path),
    }[loader]
    with pytest.raises(ck.CheckpointError) as err:
        call()
    msg = str(err.value)
    assert str(path) in msg and f"expected the {expected}" in msg and found in msg


def _modified_t2v(tmp_path, release, change):
    data = _unet_dict(release.t2v)
    change(data["unet"])
    path = tmp_path / "t2v_modified.pt"
    torch.save(data, path)
    return path


def test_missing_key(tmp_path, release):
    path = _modified_t2v(tmp_path, release, lambda sd: sd.pop("out_layer.2.bias"))
    with pytest.raises(ck.CheckpointError, match=r"missing keys: out_layer\.2\.bias") as err:
        ck.load_keyframe_unet(path, release.configs)
    assert "t2v_modified.pt" in str(err.value) and "keyframe U-Net" in str(err.value)


def test_unexpected_key(tmp_path, release):
    path = _modified_t2v(tmp_path, release, lambda sd: sd.__setitem__("extra.weight", torch.zeros(3)))
    with pytest.raises(ck.CheckpointError, match=r"unexpected keys: extra\.weight"):
        ck.load_keyframe_unet(path, release.configs)


def test_shape_mismatch(tmp_path, release):
    def change(sd):
        sd["in_layer.bias"] = torch.zeros(sd["in_layer.bias"].shape[0] + 1)

    path = _modified_t2v(tmp_path, release, change)
    with pytest.raises(ck.CheckpointError, match=r"shape mismatches: in_layer\.bias \(9,\)"):
        ck.load_keyframe_unet(path, release.configs)


def test_config_that_does_not_match_the_file(release):
    configs = json.loads(release.configs.read_text())
    configs["interpolation"]["configs"]["add_new_temporal_params"] = False
    with pytest.raises(ck.CheckpointError, match=r"unexpected keys: .*temporal_post_downsample") as err:
        ck.load_interpolation_unet(release.interpolation, configs)
    assert "the checkpoint's keys say add_new_temporal_params=true" in str(err.value)


def test_missing_null_embedding_and_extra_entries(tmp_path, release):
    data = _unet_dict(release.t2v)
    torch.save({"unet": data["unet"]}, tmp_path / "no_null.pt")
    with pytest.raises(ck.CheckpointError, match="null_embedding"):
        ck.load_keyframe_unet(tmp_path / "no_null.pt", release.configs)
    torch.save({**data, "optimizer": {"step": torch.tensor(1)}}, tmp_path / "extra.pt")
    with pytest.raises(ck.CheckpointError, match="optimizer"):
        ck.load_keyframe_unet(tmp_path / "extra.pt", release.configs)


class _Payload:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["t2v.pt", "movq.pt", "t5_projections.pt"])
def test_pickled_callable_is_refused_and_never_runs(tmp_path, release, name):
    marker = tmp_path / "payload_ran"
    data = torch.load(release.folder / name, weights_only=True)
    data["payload"] = _Payload(marker)
    evil = tmp_path / name
    torch.save(data, evil)
    assert not marker.exists()
    loaders = {"t2v.pt": lambda: ck.load_keyframe_unet(evil, release.configs),
               "movq.pt": lambda: ck.load_movq(evil, release.configs),
               "t5_projections.pt": lambda: ck.load_text_projections(evil)}
    with pytest.raises(ck.CheckpointError, match="refused to load") as err:
        loaders[name]()
    assert str(evil) in str(err.value) and "weights_only" in str(err.value)
    assert not marker.exists()


def test_not_a_file(tmp_path):
    with pytest.raises(ck.CheckpointError, match="no such file"):
        ck.load_keyframe_unet(tmp_path / "absent.pt")


def test_our_safetensors_with_a_wrong_network_label(tmp_path, release):
    from kv_core.convert import convert_network

    path = convert_network(release.movq, tmp_path / "movq.safetensors", configs=release.configs)
    with pytest.raises(ck.CheckpointError, match="expected the keyframe U-Net.*image MoVQ"):
        ck.load_keyframe_unet(path)
    # a future format version is refused, not misread
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "v2.safetensors"), metadata={**meta, ck.META_FORMAT: "2"})
    with pytest.raises(ck.CheckpointError, match="format '2' is not supported"):
        ck.load_movq(tmp_path / "v2.safetensors")


# --- fp8 weights with an operations namespace that casts at run time ---------------------------

class _CastMixin:
    comfy_cast_weights = True

    def _cast(self, x):
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if getattr(self, "bias", None) is not None else None
        return w, b


class _Linear(_CastMixin, torch.nn.Linear):
    def forward(self, x):
        return torch.nn.functional.linear(x, *self._cast(x))


class _Conv2d(_CastMixin, torch.nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, *self._cast(x))


class _Conv1d(_CastMixin, torch.nn.Conv1d):
    def forward(self, x):
        return self._conv_forward(x, *self._cast(x))


class _Conv3d(_CastMixin, torch.nn.Conv3d):
    def forward(self, x):
        return self._conv_forward(x, *self._cast(x))


class _ConvTranspose2d(_CastMixin, torch.nn.ConvTranspose2d):
    def forward(self, x, output_size=None):
        w, b = self._cast(x)
        return torch.nn.functional.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding,
                                                    self.groups, self.dilation)


class _GroupNorm(_CastMixin, torch.nn.GroupNorm):
    def forward(self, x):
        w, b = self._cast(x) if self.affine else (None, None)
        return torch.nn.functional.group_norm(x, self.num_groups, w, b, self.eps)


class _LayerNorm(_CastMixin, torch.nn.LayerNorm):
    def forward(self, x):
        w, b = self._cast(x) if self.elementwise_affine else (None, None)
        return torch.nn.functional.layer_norm(x, self.normalized_shape, w, b, self.eps)


class _Embedding(_CastMixin, torch.nn.Embedding):
    def forward(self, x):
        return torch.nn.functional.embedding(x, self.weight)


class CastOps:
    Linear, Conv1d, Conv2d, Conv3d = _Linear, _Conv1d, _Conv2d, _Conv3d
    ConvTranspose2d, GroupNorm, LayerNorm, Embedding = _ConvTranspose2d, _GroupNorm, _LayerNorm, _Embedding


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
    data = _unet_dict(getattr(release, name))
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
