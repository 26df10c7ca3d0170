"""The markup payloads the UI-text tests quote (tests/nodes/test_ui_text.py, and in the real
frontends tests/host/test_ui_text_host.py), and ``nodes/host/ui_text.py`` loaded on its own
(the ``nodes`` package needs ComfyUI)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: (name, payload) pairs the frontend tests quote; every id, link and handler says "kvx"
PAYLOADS = [
    ("img-onerror", "<img src=x id=kvx1 onerror=alert(1)>"),
    ("svg-onload", "<svg id=kvx2 onload=alert(2)>"),
    ("script", "<script id=kvx3>alert('kvx3')</script>"),
    ("javascript-link", '<a id=kvx4 href="javascript:alert(4)">'),
    ("entities", "&lt;b id=kvx5&gt;bold&lt;/b&gt;"),
    ("wiki-link", "[[kvx6|https://kvx6.example.com]]"),
    ("bare-url", "https://kvx7.example.com/x"),
    ("markdown", "![kvx8](https://kvx8.example.com)"),
]


def load_ui_text():
    """nodes/host/ui_text.py on its own (the ``nodes`` package needs ComfyUI)."""
    spec = importlib.util.spec_from_file_location("kv_ui_text", REPO / "nodes" / "host" / "ui_text.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plain_quote(payload: str) -> str:
    """How the token report shows ``payload`` (quoted as ``kv_core.text`` quotes, then plain)."""
    return load_ui_text().plain(repr(payload)[1:-1])
