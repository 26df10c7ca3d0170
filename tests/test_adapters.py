"""The nodes are adapters of the kv_core stages, read from their source (no host needed).

``kv_core.pipeline`` holds the only orchestration: a node module never imports the
sampling loops, the MoVQ or the schedulers, and each stage node's ``execute`` calls its
stage functions (and no other kv_core stage). What the nodes give equals what the stages
give is checked through a real ComfyUI in tests/test_nodes.py
(``test_each_node_is_an_adapter_of_its_kv_core_stage``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

NODES = Path(__file__).resolve().parents[1] / "nodes"
FORBIDDEN = ("kv_core.sampling", "kv_core.movq", "kv_core.schedulers")
STAGES = {"encode_prompt", "generate_first_frame", "decode_first_frame", "encode_first_frame",
          "generate_keyframes", "interpolate_frames", "decode_frames"}
# node class -> the kv_core.pipeline stages its execute calls
EXPECTED = {
    "KandinskyVideoTextEncode": {"encode_prompt"},
    "KandinskyVideoFirstFrame": {"generate_first_frame", "decode_first_frame"},
    "KandinskyVideoEncodeFirstFrame": {"encode_first_frame"},
    "KandinskyVideoKeyframes": {"generate_keyframes"},
    "KandinskyVideoInterpolate": {"interpolate_frames"},
    "KandinskyVideoDecode": {"decode_frames"},
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
    assert not bad, f"nodes/{path.name} imports {bad}: call the kv_core.pipeline stages instead"


def test_the_import_check_sees_relative_and_absolute_imports():
    tree = ast.parse("from ..kv_core.sampling import x\nimport kv_core.movq\nfrom ..kv_core import schedulers\n")
    imported = {n.removeprefix("pack.") for n in _imported(tree, "pack.nodes")}
    assert {"kv_core.sampling", "kv_core.movq", "kv_core.schedulers"} <= imported


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
