"""The import graph of the pack (kv_core and nodes), derived from the source.

Rules:

* no import circle, in kv_core alone or across kv_core and nodes;
* kv_core imports nothing of nodes (it is host-independent);
* every module directly in ``nodes/`` is a node module (it defines ``NODES``) and imports no
  other node module: what node modules share is host glue in ``nodes/host/``, which
  defines no ``NODES`` and imports no node module.

Every import statement counts, also those inside functions and under ``TYPE_CHECKING`` (a
lazy import that closes a circle still ties both modules together). Edges are read with
``ast``, so nothing is run.
"""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KV_CORE = REPO / "kv_core"
NODES = REPO / "nodes"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(*roots: Path) -> dict[str, set[str]]:
    """Module -> the modules it imports, over the packages ``roots`` (sibling folders, kv_core
    alone by default; names relative to their parent, e.g. ``nodes.host.latent``).
    ``from . import x`` of a submodule counts as an import of ``x``; imports of anything
    outside ``roots`` are left out."""
    roots = roots or (KV_CORE,)
    files = {_module_name(p, root): p for root in roots for p in root.rglob("*.py")}
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


def node_module_problems(graph: dict[str, set[str]], sources: dict[str, str]) -> list[str]:
    """What breaks the rules of ``nodes/`` (module docstring): ``sources`` maps each module
    of ``graph`` to its source text."""
    def is_glue(name: str) -> bool:
        return name == "nodes.host" or name.startswith("nodes.host.")

    def is_node_module(name: str) -> bool:
        return name.count(".") == 1 and name.startswith("nodes.") and not is_glue(name)

    def defines_nodes(name: str) -> bool:
        return any(isinstance(n, (ast.Assign, ast.AnnAssign)) and any(
            isinstance(t, ast.Name) and t.id == "NODES" for t in (n.targets if isinstance(n, ast.Assign) else [n.target]))
            for n in ast.parse(sources[name]).body)

    problems = []
    for name in sorted(graph):
        if name.startswith("kv_core") and any(t.startswith("nodes") for t in graph[name]):
            problems.append(f"{name} imports {sorted(t for t in graph[name] if t.startswith('nodes'))}: kv_core is "
                            "host-independent")
        if is_node_module(name):
            others = sorted(t for t in graph[name] if is_node_module(t))
            if others:
                problems.append(f"node module {name} imports node module(s) {others}: move what they share to "
                                "nodes/host/")
            if not defines_nodes(name):
                problems.append(f"{name} defines no NODES: a module directly in nodes/ is a node module (glue goes "
                                "to nodes/host/)")
        if is_glue(name):
            nodes = sorted(t for t in graph[name] if is_node_module(t))
            if nodes:
                problems.append(f"host glue {name} imports node module(s) {nodes}")
            if defines_nodes(name):
                problems.append(f"host glue {name} defines NODES: nodes live directly in nodes/")
    return problems


def _sources(*roots: Path) -> dict[str, str]:
    return {_module_name(p, root): p.read_text() for root in roots for p in root.rglob("*.py")}


def test_the_node_rules_see_node_to_node_imports_and_misplaced_modules(tmp_path):
    kv, nodes = tmp_path / "kv_core", tmp_path / "nodes"
    (nodes / "host").mkdir(parents=True)
    kv.mkdir()
    files = {
        kv / "__init__.py": "",
        kv / "rules.py": "def f():\n    from ..nodes import keyframes\n",
        nodes / "__init__.py": "",
        nodes / "keyframes.py": "from ..kv_core import rules\nfrom .host import inputs\nNODES = []\n",
        nodes / "extend.py": "from .keyframes import KandinskyVideoKeyframes\nNODES = []\n",
        nodes / "helpers.py": "from .host.inputs import x\n",
        nodes / "host" / "__init__.py": "",
        nodes / "host" / "inputs.py": "from .. import extend\nNODES: list = []\n",
    }
    for path, text in files.items():
        path.write_text(text)
    graph = import_graph(kv, nodes)
    assert graph["nodes.extend"] == {"nodes.keyframes"}
    assert graph["nodes.keyframes"] == {"kv_core", "kv_core.rules", "nodes.host", "nodes.host.inputs"}
    problems = node_module_problems(graph, _sources(kv, nodes))
    assert [p.split(" ")[0:3] for p in problems] == [
        ["kv_core.rules", "imports", "['nodes',"],
        ["node", "module", "nodes.extend"],
        ["nodes.helpers", "defines", "no"],
        ["host", "glue", "nodes.host.inputs"],
        ["host", "glue", "nodes.host.inputs"],
    ]
    assert find_cycle(graph) == ["kv_core.rules", "nodes.keyframes", "kv_core.rules"]


def test_the_pack_has_no_import_cycle():
    graph = import_graph(KV_CORE, NODES)
    assert "nodes.host.latent" in graph and "nodes.keyframes" in graph
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_node_modules_import_host_glue_never_each_other():
    graph = import_graph(KV_CORE, NODES)
    assert node_module_problems(graph, _sources(KV_CORE, NODES)) == []
    node_modules = {name for name in graph if name.count(".") == 1 and name.startswith("nodes.")} - {"nodes.host"}
    assert {"nodes.keyframes", "nodes.extend", "nodes.core_sampling", "nodes.frame_info"} <= node_modules
