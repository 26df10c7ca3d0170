"""The modules of kv_core import each other without a circle.

Every import statement counts, also those inside functions (a lazy import that closes a
circle still ties both modules together). Edges are read with ``ast``, so nothing is run.
"""
import ast
from pathlib import Path

KV_CORE = Path(__file__).resolve().parents[1] / "kv_core"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = KV_CORE) -> dict[str, set[str]]:
    """kv_core module -> the kv_core modules it imports (``from . import x`` of a submodule
    counts as an import of ``x``)."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in files and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "kv_core"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from .. import a\n")
    graph = import_graph(pkg)
    assert graph["kv_core.a"] == {"kv_core.b"}
    assert graph["kv_core.b"] == {"kv_core.sub", "kv_core.sub.c"}
    assert find_cycle(graph) == ["kv_core.a", "kv_core.b", "kv_core.sub.c", "kv_core.a"]


def test_kv_core_has_no_import_cycle():
    graph = import_graph()
    assert "kv_core.checkpoints.networks" in graph and "kv_core.text" in graph
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"
