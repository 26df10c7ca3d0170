"""Packaging facts that users and CI rely on (no ComfyUI needed): the registry metadata,
`comfy node validate` and `comfy node pack` (comfy-cli, from tests/requirements.txt; both run
offline), `pip install .` into a throwaway environment, and what kv_core may import."""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what the registry archive ships: the package ComfyUI imports and what a user reads
PACKED_TOP_LEVEL = {"__init__.py", "nodes", "kv_core", "web", "workflows", "requirements.txt", "pyproject.toml",
                    "README.md", "LICENSE",
                    # the UI text ComfyUI merges, the subgraph blueprints it serves, ComfyUI-Manager's
                    # node list, and the user guide in Russian and Chinese and its documents
                    "locales", "subgraphs", "node_list.json", "README_ru.md", "README_zh.md", "docs"}
# tracked but not packed: what only developers use
UNPACKED_TOP_LEVEL = {".ci", ".comfyignore", ".gitignore", "bench", "icon.png", "scripts", "tests", "tools",
                      "CONTRIBUTING.md"}
# import names of the distributions in requirements.txt, where they differ
IMPORT_NAMES = {"pillow": "PIL", "protobuf": "google"}


def _names(reqs):
    return {re.split(r"[<>=!~;\[ ]", r.strip(), maxsplit=1)[0].lower() for r in reqs if r.strip()}


def test_pyproject_dependencies_match_requirements_txt():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = [ln.split("#", 1)[0] for ln in (REPO / "requirements.txt").read_text().splitlines()]
    assert sorted(project["dependencies"]) == sorted(ln.strip() for ln in lines if ln.strip())
    assert "torch" not in _names(project["dependencies"])  # ComfyUI's own build must never be replaced


def test_comfy_registry_metadata():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert data["tool"]["comfy"]["PublisherId"] and data["tool"]["comfy"]["DisplayName"]
    assert data["project"]["name"] and data["project"]["version"]


def test_entry_point_is_v3_only():
    # ComfyUI ignores comfy_entrypoint when NODE_CLASS_MAPPINGS is defined
    source = (REPO / "__init__.py").read_text()
    assert "comfy_entrypoint" in source
    assert "NODE_CLASS_MAPPINGS" not in re.sub(r'""".*?"""', "", source, flags=re.S)


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running the tests", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```bash\n(.+?)\n```", section).group(1).strip()
    ci = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.lstrip().startswith("#")]
    assert ci[-1] in (command, f"exec {command}"), (ci[-1], command)


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _tracked_files():
    """The repository's git-tracked files (what a clone holds), relative paths."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the packed file list is defined by git-tracked files")
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], check=True, capture_output=True).stdout
    return [f for f in out.decode().split("\0") if f and (REPO / f).is_file()]


def _clone_into(dest: Path) -> list[str]:
    """Copy the tracked files (working-tree content) to ``dest`` and make it a git repository,
    as a fresh clone would be; returns the copied paths."""
    files = _tracked_files()
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    return files


def _comfy(args, cwd, tmp_path):
    """Run comfy-cli offline, without telemetry and without touching the user's config."""
    if importlib.util.find_spec("comfy_cli") is None:
        pytest.fail("comfy-cli is missing from the test environment: pip install -r tests/requirements.txt")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(home), DO_NOT_TRACK="1", NO_COLOR="1", COLUMNS="200")
    env.pop("XDG_CONFIG_HOME", None)
    proc = subprocess.run([sys.executable, "-m", "comfy_cli", "--skip-prompt", *args], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A copy of the tracked files as a git repository: what a clone holds and what
    `comfy node publish` sees, whatever else lies in this checkout (caches, scratch files)."""
    root = tmp_path_factory.mktemp("clone")
    return root, _clone_into(root)


def test_comfy_node_validate_prints_no_warning(clone, tmp_path):
    """What the registry checks on publishing: the metadata parses (requires-comfyui, classifiers,
    license) and ruff finds no exec/eval/one-line compound statement (S102, S307, E702)."""
    rc, out = _comfy(["node", "validate"], clone[0], tmp_path)
    assert rc == 0, out
    assert "All validation checks passed" in out, out
    assert "warning" not in out.lower(), out


def test_registry_archive_holds_only_the_runtime_files(clone, tmp_path):
    """`comfy node pack`: git-tracked files minus .comfyignore."""
    src, files = clone
    rc, out = _comfy(["node", "pack"], src, tmp_path)
    assert rc == 0, out
    packed = set(zipfile.ZipFile(src / "node.zip").namelist())
    assert {name.split("/", 1)[0] for name in packed} == PACKED_TOP_LEVEL
    # everything tracked under the shipped folders goes (templates with their thumbnails)
    shipped = {f for f in files if f.split("/", 1)[0] in PACKED_TOP_LEVEL}
    assert packed == shipped, sorted(packed ^ shipped)
    assert any(f.startswith("workflows/") and f.endswith(".json") for f in packed)
    # every top-level item of the repository is deliberately packed or not
    assert {f.split("/", 1)[0] for f in files} == PACKED_TOP_LEVEL | UNPACKED_TOP_LEVEL


def test_pip_install_installs_kv_core_alone(tmp_path):
    """`pip install .` in a fresh environment that sees the test environment's packages (torch,
    setuptools, pip) through a .pth file, so nothing is downloaded: kv_core and its metadata
    are all it installs, and every kv_core module imports from there with the checkout off the
    path."""
    src = tmp_path / "src"
    src.mkdir()
    _clone_into(src)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "test_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    proc = subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--no-cache-dir", "--disable-pip-version-check", "-q", str(src)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    (dist,) = purelib.glob("comfyui_kandinsky_video-*.dist-info")
    installed = {line.split(",", 1)[0] for line in (dist / "RECORD").read_text().splitlines() if line}
    outside = {f for f in installed if not (f.startswith("kv_core/") or f.startswith(dist.name + "/"))}
    assert not outside, sorted(outside)  # no nodes/, bench/, tools/, workflows/ ..., no scripts
    assert (dist / "top_level.txt").read_text().split() == ["kv_core"]
    assert f"{dist.name}/licenses/LICENSE" in installed
    for name in ("nodes", "bench", "tools", "tests", "workflows"):
        assert not (purelib / name).exists(), name
    modules = sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                     for p in (REPO / "kv_core").rglob("*.py"))
    check = ("import importlib, kv_core\n"
             f"for m in {modules!r}: importlib.import_module(m)\n"
             "print(kv_core.__file__)")
    proc = subprocess.run([py, "-I", "-c", check], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).parent == purelib / "kv_core"


def test_kv_core_imports_only_itself_the_stdlib_and_its_dependencies():
    """kv_core is a library of its own (pip install . ships it alone): no comfy, folder_paths,
    nodes, tools or tests, and no third-party package that pyproject does not declare (torch
    aside: the host brings it)."""
    declared = {IMPORT_NAMES.get(n, n) for n in _names(_pyproject()["project"]["dependencies"])}
    # optional extras ([project.optional-dependencies]) only inside functions: kv_core imports without them
    optional = {IMPORT_NAMES.get(n, n) for extra in _pyproject()["project"].get("optional-dependencies", {}).values()
                for n in _names(extra)}
    allowed = set(sys.stdlib_module_names) | declared | {"torch", "kv_core"}
    bad = []
    for path in sorted((REPO / "kv_core").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops = [node.module.split(".")[0]]
            else:
                continue
            bad += [f"{path.name}:{node.lineno} {t}" for t in tops
                    if t not in allowed and (t not in optional or id(node) in top_level)]
    assert not bad, bad


def test_license_file_is_the_declared_apache_license():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a stub


def test_registry_icon_and_comfyui_range():
    data = _pyproject()
    comfy, urls = data["tool"]["comfy"], data["project"]["urls"]
    # the icon is this repository's icon.png under its public address
    assert comfy["Icon"] == urls["Repository"].rstrip("/") + "/raw/main/icon.png"
    assert (REPO / "icon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the tested ComfyUI lies inside the declared range
    low = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)", comfy["requires-comfyui"]).group(1)
    pinned = re.search(r'^COMFYUI_VERSION = "([\d.]+)"', (REPO / "tools/harness/install.py").read_text(), re.M)
    assert tuple(map(int, low.split("."))) <= tuple(map(int, pinned.group(1).split(".")))
