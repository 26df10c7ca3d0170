"""The documents a user reads: README.md is a short guide (at most 12 KB) that links the
Russian and Chinese guides at its top and every document the rest moved to; no relative
link of any document points to nothing."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "README_ru.md", "README_zh.md", "CONTRIBUTING.md", "bench/RESULTS.md",
             *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)|<img src=\"([^\"]+)\"")


def _links(path: str) -> list[str]:
    text = (REPO / path).read_text(encoding="utf-8")
    return [m.group(1) or m.group(2) for m in LINK.finditer(text)]


def test_the_readme_is_a_short_guide():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) <= 12 * 1024
    top = "\n".join(readme.splitlines()[:4])
    assert "(README_ru.md)" in top and "(README_zh.md)" in top
    for heading in ("## Install", "## Model files", "## First run", "## Templates", "## The five most common problems",
                    "## Quick start (for developers)", "## Running the tests (for developers)"):
        assert f"\n{heading}\n" in readme, heading
    assert readme.count("<img src=\"workflows/") == len(list((REPO / "workflows").glob("*.jpg")))
    problems = readme.split("## The five most common problems", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"(?m)^\d\. ", problems)) == 5


def test_the_readme_links_every_document():
    linked = {link.split("#", 1)[0] for link in _links("README.md")}
    wanted = {p for p in DOCUMENTS if p != "README.md"}
    assert wanted <= linked, sorted(wanted - linked)


@pytest.mark.parametrize("path", DOCUMENTS)
def test_relative_links_point_to_files(path):
    base = (REPO / path).parent
    broken = [link for link in _links(path) if not re.match(r"[a-z]+:", link)
              and not (base / link.split("#", 1)[0]).exists()]
    assert not broken


@pytest.mark.parametrize("path, letters", [("README_ru.md", "[а-яё]"), ("README_zh.md", "[\u4e00-\u9fff]")])
def test_the_translated_guides_are_in_their_language(path, letters):
    text = (REPO / path).read_text(encoding="utf-8")
    prose = re.sub(r"```.*?```|`[^`]*`|\([^)]*\)|<[^>]*>", "", text, flags=re.S)
    assert len(re.findall(letters, prose, flags=re.I)) > 0.5 * len(re.findall(r"\w", prose))
    # the same sections as the English guide, by its five problems and its templates
    english = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(re.findall(r"(?m)^\d\. \*\*", text)) == 5
    assert text.count("<img src=\"workflows/") == english.count("<img src=\"workflows/") == len(
        list((REPO / "workflows").glob("*.json")))
