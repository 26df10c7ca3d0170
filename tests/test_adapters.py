"""The nodes are adapters of the kv_core stages, read from their source (no host needed).

``kv_core.stages`` holds the only orchestration: a node module never imports the
sampling loops (the step loop of ``kv_core.sampling.loop``, a stage's ``sample_*``), the
networks (``kv_core.models``) or the samplers (of ``kv_core.sampling`` only its constants:
sampler names, seed range, timestep count), and each stage node's ``execute`` calls its
stage functions (and no other kv_core stage). What the nodes give equals what the stages
give is checked through a real ComfyUI in tests/test_nodes.py
(``test_each_node_is_an_adapter_of_its_kv_core_stage``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

NODES = Path(__file__).resolve().parents[1] / "nodes"
FORBIDDEN = ("kv_core.sampling.loop", "kv_core.models")
CONSTANTS_ONLY = "kv_core.sampling"  # sampler names, MAX_SEED, NUM_TRAIN_TIMESTEPS
STAGES = {"encode_prompt", "generate_first_frame", "decode_first_frame", "encode_first_frame",
          "generate_keyframes", "interpolate_frames", "decode_frames",
          "generate_segment", "join_segments"}  # kv_core.extend's, over generate_keyframes
# node class -> the kv_core.stages stages its execute calls
EXPECTED = {
    "KandinskyVideoTextEncode": {"encode_prompt"},
    "KandinskyVideoFirstFrame": {"generate_first_frame", "decode_first_frame"},
    "KandinskyVideoEncodeFirstFrame": {"encode_first_frame"},
    "KandinskyVideoKeyframes": {"generate_keyframes"},
    "KandinskyVideoInterpolate": {"interpolate_frames"},
    "KandinskyVideoDecode": {"decode_frames"},
    "KandinskyVideoExtend": {"generate_segment", "join_segments"},
}


def _modules():
    return sorted(NODES.glob("*.py"))


def _imported(tree: ast.Module, package: str) -> set[str]:
    """Absolute names of the modules (and ``from`` targets) a module of ``package`` imports."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[:len(base) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_no_node_module_imports_the_sampling_layers(path):
    imported = _imported(ast.parse(path.read_text()), "pack.nodes")
    bad = sorted(name for name in imported for f in FORBIDDEN
                 if name.removeprefix("pack.") == f or name.removeprefix("pack.").startswith(f + "."))
    bad += sorted(name for name in imported if name.removeprefix("pack.").startswith(CONSTANTS_ONLY + ".")
                  and name.rpartition(".")[2] not in ("noise", "schedulers") and not name.rpartition(".")[2].isupper())
    bad += sorted(name for name in imported if name.removeprefix("pack.").startswith("kv_core.stages.")
                  and name.rpartition(".")[2].startswith("sample_"))
    assert not bad, f"nodes/{path.name} imports {bad}: call the kv_core.stages stages instead"


def test_the_import_check_sees_relative_and_absolute_imports():
    tree = ast.parse("from ..kv_core.sampling.loop import x\nimport kv_core.models.movq\n"
                     "from ..kv_core.sampling import schedulers\n")
    imported = {n.removeprefix("pack.") for n in _imported(tree, "pack.nodes")}
    assert {"kv_core.sampling.loop", "kv_core.models.movq", "kv_core.sampling.schedulers"} <= imported


def _calls(func: ast.FunctionDef) -> set[str]:
    return {n.func.id if isinstance(n.func, ast.Name) else n.func.attr
            for n in ast.walk(func) if isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute))}


def test_each_stage_node_calls_its_stages_and_no_other():
    found = {}
    for path in _modules():
        for cls in ast.parse(path.read_text()).body:
            if isinstance(cls, ast.ClassDef) and cls.name in EXPECTED:
                execute = next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "execute")
                found[cls.name] = _calls(execute) & STAGES
    assert found == EXPECTED


def test_node_modules_do_not_import_each_other_in_a_circle():
    graph = {}
    for path in _modules():
        imported = _imported(ast.parse(path.read_text()), "pack.nodes")
        graph[path.stem] = {n.split(".")[2] for n in imported if n.startswith("pack.nodes.") and
                            (NODES / f"{n.split('.')[2]}.py").exists()} - {path.stem}

    def visit(name, trail):
        assert name not in trail, f"import circle: {' -> '.join(trail + [name])}"
        for other in graph.get(name, ()):
            visit(other, trail + [name])

    for name in graph:
        visit(name, [])
    # a stage's node module does not import another stage's for shared inputs
    stages = {"text", "first_frame", "keyframes", "interpolation", "decode"}
    assert {name: graph[name] & stages for name in stages} == {name: set() for name in stages}


# --- previews through the host's mechanism (in a subprocess with ComfyUI's modules) -----------

PREVIEW_SCRIPT = r"""
import importlib.util, json, sys
sys.argv = ["main.py", "--cpu", "--preview-method", sys.argv[1]]
sys.path.insert(0, {comfyui!r})
import comfy.options
comfy.options.enable_args_parsing()
import torch
spec = importlib.util.spec_from_file_location("kvpack", {init!r}, submodule_search_locations=[{repo!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules["kvpack"] = pack
spec.loader.exec_module(pack)
from kvpack.nodes import progress
frames = torch.zeros(3, 4, 2, 2)
frames[0, 0] = 2.0    # red
frames[1, 1] = 2.0    # green
frames[2, 3] = -4.0   # dark
bar = progress.StepProgress(1, lambda x: x)
shown = bar.preview(frames)
out = {{"previewer": type(bar.previewer).__name__}}
if shown is not None:
    fmt, image, size = shown
    out.update(format=fmt, size=list(image.size), pixels=[list(image.getpixel((x, y))) for x, y in ((0, 0), (2, 0), (0, 2), (2, 2))])
print(json.dumps(out))
"""


def _preview(method: str) -> dict:
    import json
    import os
    import subprocess
    import sys

    comfyui = Path(os.environ.get("KV_CACHE_DIR", NODES.parent / ".cache")) / "comfyui"
    if not (comfyui / "latent_preview.py").exists():
        pytest.skip(f"no ComfyUI at {comfyui} (scripts/test.sh installs it)")
    script = PREVIEW_SCRIPT.format(comfyui=str(comfyui), init=str(NODES.parent / "__init__.py"),
                                   repo=str(NODES.parent))
    run = subprocess.run([sys.executable, "-c", script, method], capture_output=True, text=True, timeout=300,
                         cwd=comfyui)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_previews_follow_the_users_preview_method():
    """The sampling nodes' previews come from ComfyUI's ``latent_preview`` with the MoVQ
    latent format: ``--preview-method none`` shows none; latent2rgb (and auto) maps the
    channels with the format's factors; the frames are tiled into one picture."""
    assert _preview("none") == {"previewer": "NoneType"}
    shown = _preview("latent2rgb")
    assert shown["previewer"] == "Latent2RGBPreviewer" and shown["format"] == "JPEG"
    assert shown["size"] == [4, 4]  # 3 frames of 2x2 in a 2x2 grid
    red, green, dark, empty = shown["pixels"]
    assert red[0] > 200 and max(red[1:]) < 160
    assert green[1] > 200 and green[0] < 160 and green[2] < 160
    assert max(dark) < 40 and all(100 < v < 160 for v in empty)
