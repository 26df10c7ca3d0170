"""The nodes are adapters of the kv_core stages, read from their source (no host needed).

``kv_core.stages`` holds the only orchestration: a node module never imports the
sampling loops (the step loop of ``kv_core.sampling.loop``, a stage's ``sample_*``), the
networks (``kv_core.models``) or the samplers (of ``kv_core.sampling`` only its constants:
sampler names, seed range, timestep count; and the step cache, whose settings the Step
Cache node makes and whose cache the core MODEL's patch runs), and each stage node's ``execute`` calls its
stage functions (and no other kv_core stage). What the nodes give equals what the stages
give is checked through a real ComfyUI in tests/host/test_nodes.py
(``test_each_node_is_an_adapter_of_its_kv_core_stage``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

NODES = Path(__file__).resolve().parents[2] / "nodes"
FORBIDDEN = ("kv_core.sampling.loop", "kv_core.models")
CONSTANTS_ONLY = "kv_core.sampling"  # sampler names, MAX_SEED, NUM_TRAIN_TIMESTEPS
STEP_CACHE = "kv_core.sampling.step_cache"  # the Step Cache settings and the core MODEL's cache
STAGES = {"encode_prompt", "generate_first_frame", "decode_first_frame", "encode_first_frame",
          "generate_keyframes", "interpolate_frames", "decode_frames", "decode_images",
          "generate_segment", "join_segments",  # kv_core.extend's, over generate_keyframes
          "encode_prompt_cached"}  # kv_core.prompt_cache's: encode_prompt behind the prompt cache
# node class -> the kv_core.stages stages its execute calls
EXPECTED = {
    "KandinskyVideoTextEncode": {"encode_prompt_cached"},  # the stage runs only on a cache miss
    "KandinskyVideoFirstFrame": {"generate_first_frame", "decode_first_frame"},
    "KandinskyVideoEncodeFirstFrame": {"encode_first_frame"},
    "KandinskyVideoKeyframes": {"generate_keyframes"},
    "KandinskyVideoInterpolate": {"interpolate_frames"},
    "KandinskyVideoDecode": {"decode_images"},
    "KandinskyVideoExtend": {"generate_segment", "join_segments"},
}


def _modules():
    """Every module of nodes/: the node modules and the host glue."""
    return sorted(NODES.rglob("*.py"))


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


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(NODES).as_posix())
def test_no_node_module_imports_the_sampling_layers(path):
    package = ".".join(["pack", *path.relative_to(NODES.parent).parent.parts])
    imported = _imported(ast.parse(path.read_text()), package)
    bad = sorted(name for name in imported for f in FORBIDDEN
                 if name.removeprefix("pack.") == f or name.removeprefix("pack.").startswith(f + "."))
    bad += sorted(name for name in imported if name.removeprefix("pack.").startswith(CONSTANTS_ONLY + ".")
                  and name.rpartition(".")[2] not in ("noise", "schedulers") and not name.rpartition(".")[2].isupper()
                  and not name.removeprefix("pack.").startswith(STEP_CACHE))
    bad += sorted(name for name in imported if name.removeprefix("pack.").startswith("kv_core.stages.")
                  and name.rpartition(".")[2].startswith("sample_"))
    assert not bad, f"nodes/{path.relative_to(NODES).as_posix()} imports {bad}: call the kv_core.stages stages instead"


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


# --- previews through the host's mechanism (in a subprocess with ComfyUI's modules) -----------

PREVIEW_SCRIPT = r"""
import json, sys
import torch
from tools.harness.inprocess import comfy_modules, import_pack
frames = torch.zeros(3, 4, 2, 2)
frames[0, 0] = 2.0    # red
frames[1, 1] = 2.0    # green
frames[2, 3] = -4.0   # dark
with comfy_modules({comfyui!r}, preview_method=sys.argv[1]):
    bar = import_pack().nodes.host.progress.StepProgress(1, lambda x: x)
    shown = bar.preview(frames)
out = {{"previewer": type(bar.previewer).__name__}}
if shown is not None:
    fmt, image, size = shown
    out.update(format=fmt, size=list(image.size), pixels=[list(image.getpixel((x, y))) for x, y in ((0, 0), (2, 0), (0, 2), (2, 2))])
print(json.dumps(out))
"""


def _preview(method: str) -> dict:
    """The preview of three frames in a fresh process (ComfyUI reads ``--preview-method``
    when it first builds a previewer), run from the repository root (``python -c`` puts it
    on ``sys.path``)."""
    import json
    import subprocess
    import sys

    from tools.harness.inprocess import comfyui_checkout

    comfyui = comfyui_checkout()
    if comfyui is None or not (comfyui / "latent_preview.py").exists():
        pytest.skip("no ComfyUI checkout (scripts/test.sh installs it)")
    script = PREVIEW_SCRIPT.format(comfyui=str(comfyui))
    run = subprocess.run([sys.executable, "-c", script, method], capture_output=True, text=True, timeout=300,
                         cwd=NODES.parent)
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
