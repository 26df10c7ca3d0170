"""Packaging facts that users and CI rely on (no ComfyUI needed)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
