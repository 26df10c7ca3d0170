"""Messages that point at what exists: the pack's U-Nets are read under the key prefixes
ComfyUI and other tools write (and a file missing its null embedding says what to run); every
command a message or a user-facing doc tells a user to run exists in the registry archive;
nothing in the repository unpickles without ``weights_only``."""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kv_core import checkpoints as ck
from kv_core.kinds import DESCRIPTIONS
from kv_core.tiny import write_tiny_release

REPO = Path(__file__).resolve().parents[1]
COMFYUI = Path(os.environ.get("KV_CACHE_DIR", REPO / ".cache")) / "comfyui"
RELEASE_NAMES = {ck.KEYFRAME_UNET: "t2v.pt", ck.INTERPOLATION_UNET: "interpolation.pt"}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_tiny_release(tmp_path_factory.mktemp("tiny"), seed=3)


def _load(network, path, configs):
    load = ck.load_keyframe_unet if network == ck.KEYFRAME_UNET else ck.load_interpolation_unet
    return load(path, configs)


def _official(release, network):
    data = torch.load(release.folder / RELEASE_NAMES[network], weights_only=True)
    return data["unet"], data["null_embedding"]


def _same(a, b):
    (net_a, null_a), (net_b, null_b) = a, b
    sa, sb = net_a.state_dict(), net_b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)
    torch.testing.assert_close(null_a, null_b, rtol=0, atol=0)


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


@pytest.fixture(scope="module")
def host():
    """ComfyUI's modules (``--cpu``) and this pack as the package ``kvpack``, in this process."""
    if not (COMFYUI / "comfy" / "sd.py").exists():
        pytest.skip(f"no ComfyUI at {COMFYUI} (scripts/test.sh installs it)")
    sys.path.insert(0, str(COMFYUI))
    from comfy.cli_args import args
    args.cpu = True
    if "kvpack" not in sys.modules:
        spec = importlib.util.spec_from_file_location("kvpack", REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["kvpack"] = pack
        spec.loader.exec_module(pack)
    import kvpack.nodes.core_sampling  # noqa: F401
    yield sys.modules["kvpack"]
    sys.path.remove(str(COMFYUI))


@pytest.mark.parametrize("network", [ck.KEYFRAME_UNET, ck.INTERPOLATION_UNET])
def test_core_save_model_of_the_pack_model_loads_back(tmp_path, host, release, network):
    """Core Save Model (``comfy.sd.save_checkpoint`` with the MODEL alone, what
    ``ModelSave`` calls) of the core MODEL of a loaded U-Net writes a file the loaders read
    back as the same network, null embedding included."""
    import comfy.sd

    from kvpack.nodes import core_sampling, networks

    module, null = _load(network, release.folder / RELEASE_NAMES[network], release.folder / "configs.json")
    cpu = torch.device("cpu")
    wrapped = networks.wrap(module, network, RELEASE_NAMES[network], torch.float32, load_device=cpu,
                            offload_device=cpu, null_embedding=null)
    node = core_sampling.KandinskyVideoKeyframeModel if network == ck.KEYFRAME_UNET \
        else core_sampling.KandinskyVideoInterpolationModel
    model = node.execute(**{node.INPUT: wrapped})
    model = (model.result if hasattr(model, "result") else model)[0]
    path = tmp_path / "saved.safetensors"
    comfy.sd.save_checkpoint(str(path), model, metadata={"format": "pt"})
    keys = set(load_file(str(path)))
    assert any(k.startswith("net.") for k in keys) and "null_embedding" in keys
    _same(_load(network, path, release.folder / "configs.json"), (module, null))


# --------------------------------------------------------------------------- what a user has

# what the registry archive ships (.comfyignore; tests/test_packaging.py checks it against
# `comfy node pack`)
PACKED_TOP_LEVEL = {"__init__.py", "nodes", "kv_core", "web", "workflows", "requirements.txt", "pyproject.toml",
                    "README.md", "LICENSE"}
# README sections for users of the pack (the others are for developers, in a clone)
USER_SECTIONS = ("Installing into your ComfyUI", "Model files", "Workflows", "Interpolating any video",
                 "Long videos", "Nodes", "Troubleshooting", "Using `kv_core` without ComfyUI")
COMMAND = re.compile(r"(?:^|[\s`(;&|])(?:\S*python(?:3(?:\.\d+)?)?|bash|sh)\s+(-m\s+[\w.]+|[\w./-]+\.(?:py|sh))")
# in a message, a path of the repository's developer folders is an instruction too
PATH = re.compile(r"(?<![\w/.-])((?:tools|bench|scripts|tests|\.ci)/[\w./-]*\w)")


def _packed_files() -> set[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    return {f for f in out.decode().split("\0") if f and f.split("/", 1)[0] in PACKED_TOP_LEVEL}


def _exists(target: str, packed: set[str]) -> bool:
    if target.startswith("-m"):
        module = target.split()[-1].replace(".", "/")
        return f"{module}.py" in packed or f"{module}/__main__.py" in packed
    return target.lstrip("./") in packed


def _messages(path: Path) -> list[str]:
    """The string constants of a module that are not docstrings (messages, help texts)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def _told_to_run(text: str, paths: bool = True) -> list[str]:
    """Scripts and modules ``text`` tells to run: ``python X.py`` / ``python -m M`` /
    ``bash X.sh``, and with ``paths`` every path into the developer folders."""
    return [m.group(1) for m in COMMAND.finditer(text)] + (PATH.findall(text) if paths else [])


def _user_readme() -> str:
    readme = (REPO / "README.md").read_text()
    parts = re.split(r"^## ", readme, flags=re.M)
    return "\n".join(p for p in parts[1:] if p.split("\n", 1)[0].strip() in USER_SECTIONS)


def test_the_readme_user_sections_are_found():
    text = _user_readme()
    assert all(f"{name}\n" in "\n" + text or name in text for name in USER_SECTIONS)
    assert "python -m kv_core.convert" in text


def test_every_command_a_message_or_user_doc_names_is_in_the_registry_archive():
    packed = _packed_files()
    told = {}
    for f in sorted(packed):
        if f.endswith(".py"):
            for text in _messages(REPO / f):
                for target in _told_to_run(text):
                    told.setdefault(target, f)
        elif f.endswith((".js", ".json")) and not f.startswith("workflows/"):
            for target in _told_to_run((REPO / f).read_text()):
                told.setdefault(target, f)
    for target in _told_to_run(_user_readme(), paths=False):  # the docs may cite tests and benches
        told.setdefault(target, "README.md (user sections)")
    missing = {t: where for t, where in told.items() if not _exists(t, packed)}
    assert missing == {}, f"commands or paths users are told about that the registry archive lacks: {missing}"
    assert "-m kv_core.convert" in told  # the checker sees the commands it should


def test_the_command_check_sees_what_is_not_packed():
    assert _told_to_run("convert it with tools/kv_convert.py t5, or `python bench/x.py --y`") == \
        ["bench/x.py", "tools/kv_convert.py", "bench/x.py"]
    assert _told_to_run("run: cd /a && python -m kv_core.convert t5 A B") == ["-m kv_core.convert"]
    assert not _exists("tools/kv_convert.py", _packed_files())
    assert _exists("-m kv_core.convert", _packed_files())


def test_the_bare_t5_message_names_the_packed_converter(tmp_path, release):
    from kv_core.convert import convert_t5_encoder

    out = convert_t5_encoder(release.t5_folder, tmp_path / "enc.safetensors", dtype="fp32")
    meta = ck.open_tensor_file(out).metadata
    bare = tmp_path / "bare" / "enc.safetensors"
    bare.parent.mkdir()
    save_file(load_file(str(out)), str(bare), metadata={k: v for k, v in meta.items() if k != ck.META_TOKENIZER})
    with pytest.raises(ck.CheckpointError) as err:
        ck.load_t5_tokenizer(bare)
    msg = str(err.value)
    assert "tools/" not in msg and f"cd {REPO} && python -m kv_core.convert t5 FLAN_UL2_FOLDER" in msg
    # and that command, with the folder filled in, writes a file whose tokenizer loads
    convert = msg.split(" && ", 1)[1]
    argv = shlex.split(convert.replace("FLAN_UL2_FOLDER", shlex.quote(str(release.t5_folder))))
    done = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert ck.load_t5_tokenizer(Path(argv[-1])) is not None


# --------------------------------------------------------------------------- no unrestricted unpickling

UNPICKLERS = {("torch", "load"), ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"),
              ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("cloudpickle", "load"),
              ("cloudpickle", "loads"), ("marshal", "loads"), ("shelve", "open"), ("pandas", "read_pickle")}


def _unrestricted(tree: ast.AST) -> list[str]:
    """Calls that unpickle without restriction: torch.load without ``weights_only=True``,
    pickle (and relatives) loading, numpy.load with ``allow_pickle=True``."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module:
            aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            owner, name = aliases.get(f.value.id, f.value.id).split(".")[-1], f.attr
        elif isinstance(f, ast.Name) and "." in aliases.get(f.id, ""):
            owner, name = aliases[f.id].split(".")[-2:]
        else:
            continue
        kw = {k.arg: k.value for k in node.keywords}
        if (owner, name) == ("torch", "load"):
            if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
        elif (owner, name) in UNPICKLERS:
            found.append(f"line {node.lineno}: {owner}.{name}")
        elif (owner, name) == ("numpy", "load") or (owner, name) == ("np", "load"):
            if isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value:
                found.append(f"line {node.lineno}: numpy.load(allow_pickle=True)")
    return found


def _repository_python() -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "*.py"], capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f]


def test_nothing_in_the_repository_unpickles_without_restriction():
    bad = {}
    for f in _repository_python():
        found = _unrestricted(ast.parse((REPO / f).read_text(), filename=f))
        if found:
            bad[f] = found
    assert bad == {}


def test_the_unpickling_check_sees_each_form():
    source = ("import torch, pickle\nimport numpy as np\nfrom pickle import loads as l\n"
              "torch.load(p)\ntorch.load(p, weights_only=False)\ntorch.load(p, weights_only=True)\n"
              "pickle.load(f)\nl(b)\nnp.load(p, allow_pickle=True)\nnp.load(p)\n")
    assert _unrestricted(ast.parse(source)) == [
        "line 4: torch.load without weights_only=True", "line 5: torch.load without weights_only=True",
        "line 7: pickle.load", "line 8: pickle.loads", "line 9: numpy.load(allow_pickle=True)"]
