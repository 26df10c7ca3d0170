"""Loading the official files: formats, configs vs detection, strictness and every error path."""
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from golden_support import golden_dir
from kv_core import checkpoints as ck

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
