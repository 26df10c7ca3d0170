"""Text the nodes show in the ComfyUI frontend: one representation that every supported
frontend shows as the same characters, and never as markup.

The frontends differ in what they do with a node's text (read from their source and
checked in headless Chromium by tests/host/test_ui_text_host.py):

* progress text (``PromptServer.send_progress_text``), ComfyUI 0.3.75's frontend 1.32.9:
  turned into links (``http://``, ``www.``, ``[[label|url]]``), newlines into ``<br />``, and
  inserted with ``innerHTML``, unsanitised: ``<img src=x onerror=...>`` in a prompt runs;
* progress text, frontend 1.58.1: HTML-escaped first, then the same links and ``<br />``,
  then DOMPurify (links and line breaks only): ``&lt;`` sent by a node shows as ``&lt;``;
* a node's ``text`` UI output in the text preview widget (web/token_report.js; 1.58.1):
  a plain textarea, or Markdown rendered and sanitised when the user switches it to Markdown.
  The Vue node renderer of 1.32.9 shows progress text as Markdown too.

So HTML escaping reads wrongly on 1.58.1, and raw text is markup on 1.32.9. :func:`plain`
instead leaves out what any of these would interpret: ``< > &`` become their fullwidth forms
``＜ ＞ ＆`` (read as the same signs), and an invisible WORD JOINER (U+2060) breaks what
would become a link or a placeholder (``://``, ``www.``, ``[[``, ``](``, ``__LNK``, ``@``).
Newlines stay: every frontend shows them as line breaks.
"""
from __future__ import annotations

import re

JOINER = "\u2060"
#: sign -> what is shown instead (fullwidth forms, never parsed as markup or entities)
SIGNS = {"<": "\uff1c", ">": "\uff1e", "&": "\uff06"}
#: sequences a frontend turns into links or placeholders, broken by a WORD JOINER after
#: their first character: 1.32.9's linkifyHtml (scheme://, www.), the [[label|url]] links
#: and their __LNK<n>__ placeholders (both frontends), Markdown's inline links ``[x](url)``
#: and its e-mail autolinks
_LINKS = re.compile(r"(:)(?=//)|(w)(?=ww\.)|(\[)(?=\[)|(\])(?=\()|(_)(?=_LNK)|(@)(?=\w)", re.IGNORECASE)
_SIGNS = re.compile("[<>&]")


def plain(text: str) -> str:
    """``text`` with nothing a frontend reads as markup (see the module docstring); every
    other character, newlines included, unchanged."""
    text = _SIGNS.sub(lambda m: SIGNS[m.group()], str(text))
    return _LINKS.sub(lambda m: m.group() + JOINER, text)


def send_progress_text(node_id, text: str) -> None:
    """Show ``text`` (as :func:`plain`) on node ``node_id`` as progress text, the preview
    that core API nodes use; nothing when there is no server or no node id."""
    try:
        from server import PromptServer
    except ImportError:  # pragma: no cover - outside ComfyUI
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is not None and node_id is not None:
        instance.send_progress_text(plain(text), node_id)
