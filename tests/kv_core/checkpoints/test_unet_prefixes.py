"""The pack's U-Nets are read under the key prefixes ComfyUI and other tools write, and a
file missing its null embedding says what to run (``python -m kv_core.convert network ...
--null-embedding``), a command that works as written."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kv_core import checkpoints as ck
from kv_core.kinds import DESCRIPTIONS
from unet_files import RELEASE_NAMES, load_unet as _load, official as _official, same as _same, tiny_release

REPO = Path(__file__).resolve().parents[3]

@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return tiny_release(tmp_path_factory)


# --------------------------------------------------------------------------- U-Nets under host prefixes

@pytest.mark.parametrize("network", [ck.KEYFRAME_UNET, ck.INTERPOLATION_UNET])
@pytest.mark.parametrize("prefix", ["net.", "model.diffusion_model.", "model.diffusion_model.net.",
                                    "diffusion_model."])
def test_a_unet_saved_under_a_host_prefix_loads(tmp_path, release, network, prefix):
    unet, null = _official(release, network)
    path = tmp_path / "saved.safetensors"
    markers = {"v_pred": torch.tensor([])} if network == ck.INTERPOLATION_UNET else {}
    save_file({**{prefix + k: v.contiguous() for k, v in unet.items()}, "null_embedding": null, **markers},
              str(path), metadata={"format": "pt"})
    configs = release.folder / "configs.json"
    _same(_load(network, path, configs), _load(network, release.folder / RELEASE_NAMES[network], configs))


@pytest.mark.parametrize("network", [ck.KEYFRAME_UNET, ck.INTERPOLATION_UNET])
def test_a_unet_without_null_embedding_says_what_to_run_and_that_command_works(tmp_path, release, network):
    unet, _ = _official(release, network)
    path = tmp_path / "ComfyUI_00001_.safetensors"  # moved into a model folder with the release's configs.json
    save_file({"net." + k: v.contiguous() for k, v in unet.items()}, str(path))
    configs = shutil.copy(release.folder / "configs.json", tmp_path / "configs.json")
    with pytest.raises(ck.CheckpointError) as err:
        _load(network, path, configs)
    msg = str(err.value)
    assert "nothing this loader recognises" not in msg and "Stable Diffusion" not in msg
    assert f"{DESCRIPTIONS[network]}'s weights under 'net.'" in msg and "'null_embedding'" in msg
    # the command in the message, run as it says (with the release file where it is here)
    command = msg.split(": cd ", 1)[1].rsplit(", then pick ", 1)[0]
    folder, _, convert = ("cd " + command).partition(" && ")
    argv = shlex.split(convert)
    assert argv[:3] == ["python", "-m", "kv_core.convert"] and shlex.split(folder)[1] == str(REPO)
    argv[argv.index("--null-embedding") + 1] = str(release.folder / RELEASE_NAMES[network])
    done = subprocess.run([sys.executable, *argv[1:]], cwd=shlex.split(folder)[1], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = Path(argv[argv.index("network") + 2])
    assert out.name == msg.rsplit(", then pick ", 1)[1] == "ComfyUI_00001__complete.safetensors"
    _same(_load(network, out, configs), _load(network, release.folder / RELEASE_NAMES[network], configs))


def test_the_null_embedding_of_another_network_is_refused(tmp_path, release):
    from kv_core.convert import convert_network

    unet, _ = _official(release, ck.KEYFRAME_UNET)
    path = tmp_path / "saved.safetensors"
    save_file({"net." + k: v.contiguous() for k, v in unet.items()}, str(path))
    with pytest.raises(ck.CheckpointError, match="expected a keyframe_unet file to take the null embedding from"):
        convert_network(path, tmp_path / "out.safetensors", null_embedding=release.folder / "interpolation.pt")


def test_other_entries_beside_a_prefixed_unet_are_named(tmp_path, release):
    unet, null = _official(release, ck.KEYFRAME_UNET)
    path = tmp_path / "saved.safetensors"
    save_file({**{"net." + k: v.contiguous() for k, v in unet.items()}, "null_embedding": null,
               "first_stage_model.x": torch.zeros(1)}, str(path))
    with pytest.raises(ck.CheckpointError, match=r"unexpected entries beside 'net' and 'null_embedding'.*"
                                                 r"first_stage_model\.x"):
        _load(ck.KEYFRAME_UNET, path, release.folder / "configs.json")
