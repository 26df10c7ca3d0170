"""The help page of every node (web/docs/, made by tools/help_pages.py): present in English
(the default page) and per locale (ru, zh, zh-TW), and what the schemas, the translations and
tools/help_pages/ give. That the frontend serves and shows them is
tests/host/test_frontend_locales.py."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tools import help_pages, locales

REPO = Path(__file__).resolve().parents[1]
COMFYUI = Path(os.environ.get("COMFYUI_PATH") or Path(os.environ.get("KV_CACHE_DIR", REPO / ".cache")) / "comfyui")


@pytest.fixture(scope="module")
def infos():
    if not (COMFYUI / "comfy_api").is_dir():
        pytest.skip(f"no ComfyUI at {COMFYUI} (scripts/test.sh installs it)")
    return locales.node_infos()


def test_every_node_has_its_pages_and_they_are_up_to_date(infos):
    expected = help_pages.pages(infos)
    assert len(expected) == len(infos) * len(help_pages.LANGUAGES)
    problems = help_pages.problems(expected)
    assert not problems, "\n".join(problems)


def test_a_page_says_every_input_with_its_default_and_range_and_every_output(infos):
    info = next(i for i in infos if i["name"] == "KandinskyVideoInterpolate")
    page = help_pages.page_path("KandinskyVideoInterpolate", "en").read_text(encoding="utf-8")
    for name, _, opts in locales._inputs(info):
        line = next(ln for ln in page.splitlines() if ln.startswith(f"- **{help_pages.escape(name)}**"))
        if "default" in opts:
            assert f"default {help_pages.escape(help_pages._number(opts['default']))}" in line
        if "min" in opts:
            assert f"range {help_pages._number(opts['min'])} … {help_pages._number(opts['max'])}" in line
    assert "- **window** — default 0; range 0 … 4096; optional; expert setting." in page
    ru = help_pages.page_path("KandinskyVideoInterpolate", "ru").read_text(encoding="utf-8")
    texts = json.loads((REPO / "locales" / "ru" / "nodeDefs.json").read_text(encoding="utf-8"))
    assert ru.startswith(f"# {texts['KandinskyVideoInterpolate']['display_name']}\n")
    assert "## Как подключать" in ru and "## Частые ошибки" in ru


def test_a_change_in_a_source_makes_the_check_fail(infos):
    expected = help_pages.pages(infos)
    path = help_pages.page_path("KandinskyVideoDecode", "zh")
    changed = dict(expected)
    changed[path] = expected[path].replace("常见错误", "常见问题")
    assert help_pages.problems(changed) == [
        f"{path.relative_to(REPO)} is not what the schemas, locales/ and tools/help_pages/ give: run "
        "`python -m tools.help_pages generate`"]
