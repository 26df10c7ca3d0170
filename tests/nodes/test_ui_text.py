"""Text the nodes show in the frontend (``nodes/host/ui_text.py``) reads the same whether a
frontend shows it as text, parses it as HTML or renders it as Markdown, and every path by
which the pack sends text to the frontend goes through it. In the real frontends:
tests/host/test_ui_text_host.py."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ui_payloads import PAYLOADS, load_ui_text

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name,payload", PAYLOADS, ids=[n for n, _ in PAYLOADS])
def test_plain_text_has_nothing_a_frontend_reads_as_markup(name, payload):
    ui = load_ui_text()
    shown = ui.plain(payload)
    assert not set("<>&") & set(shown)
    assert not re.search(r"(https?|ftp|file)://|\bwww\.|\[\[|\]\(|__LNK|@\w", shown, re.IGNORECASE)
    # the same characters to a reader: fullwidth signs, invisible joiners
    readable = shown.replace(ui.JOINER, "").translate({ord(v): k for k, v in ui.SIGNS.items()})
    assert readable == payload


def test_plain_text_keeps_lines_and_ordinary_text_and_is_idempotent():
    ui = load_ui_text()
    text = "prompt: 31 tokens read (up to 31), 2 unknown, 4 dropped\n  ! (<unk>: 'é', '字')  www.a.b a@b user_name"
    shown = ui.plain(text)
    assert shown.splitlines()[0] == text.splitlines()[0]
    assert "(\uff1cunk\uff1e: 'é', '字')" in shown
    assert ui.plain(shown) == shown


def _ui_sends(tree: ast.AST) -> list[str]:
    """Calls in a module that send text to the frontend by another way than nodes/host/ui_text.py."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            if isinstance(f, ast.Attribute) and name in ("send_progress_text", "send_sync"):
                bad.append(name)
            if owner == "ui" and name not in ("PreviewImage", "PreviewAudio", "PreviewVideo"):
                # a ui.* text output must be given plain(...) text
                arg = node.args[0] if node.args else None
                if not (isinstance(arg, ast.Name) and arg.id in _plain_names(tree)):
                    bad.append(f"ui.{name} without plain()")
        if isinstance(node, ast.ImportFrom) and node.module == "server":
            bad.append("from server import")
    return bad


def _plain_names(tree: ast.AST) -> set[str]:
    """Names assigned from ``plain(...)`` in a module."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and getattr(node.value.func, "id", None) == "plain":
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


@pytest.mark.parametrize("path", sorted((REPO / "nodes").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_text_to_the_frontend_goes_through_ui_text(path):
    if path.name == "ui_text.py":
        return
    assert _ui_sends(ast.parse(path.read_text())) == []


def test_the_check_sees_a_raw_send_and_a_raw_ui_text():
    tree = ast.parse("from server import PromptServer\nPromptServer.instance.send_progress_text(t, n)\n"
                     "x = ui.PreviewText(t)\nshown = plain(t)\ny = ui.PreviewText(shown)\n")
    assert sorted(_ui_sends(tree)) == ["from server import", "send_progress_text", "ui.PreviewText without plain()"]


def test_the_frontend_extension_writes_no_html():
    source = (REPO / "web" / "token_report.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|v-html|\.html\(", source)
