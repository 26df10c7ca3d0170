"""The help page of every node, shown by the frontend's node library (its info panel).

  python -m tools.help_pages generate    write web/docs/<NodeId>.md (English) and
                                         web/docs/<NodeId>/<lang>.md (ru, zh, zh-TW)
  python -m tools.help_pages check       exit 1 when a page is missing or not what the
                                         schemas, locales/ and tools/help_pages/ give

Where the frontend looks (ComfyUI_frontend's node help service, 1.58): for a node of a
custom pack, ``/extensions/<pack folder>/docs/<NodeId>/<locale>.md``, then
``/extensions/<pack folder>/docs/<NodeId>.md``; ComfyUI serves a pack's ``WEB_DIRECTORY``
(``web/``) under ``/extensions/<pack folder>/``.

A page is put together from three sources, so it never disagrees with the node:

* the schema (defaults, ranges, choices, which inputs are optional or expert settings), read
  as tools/locales.py reads it;
* the node's texts in that language: ``locales/<lang>/nodeDefs.json`` (English:
  ``locales/en``), i.e. exactly the tooltips the node shows;
* ``tools/help_pages/<lang>.json``: what no schema says — the typical wiring and the mistakes
  users make — and the page's headings.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from tools import locales

DOCS = REPO / "web" / "docs"
SOURCES = REPO / "tools" / "help_pages"
LANGUAGES = ("en", "ru", "zh", "zh-TW")  #: en is the default page, the others per-locale pages


def page_path(node_id: str, lang: str) -> Path:
    return DOCS / f"{node_id}.md" if lang == "en" else DOCS / node_id / f"{lang}.md"


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def escape(text: str) -> str:
    """Plain text for Markdown: ``*`` and ``_`` stay characters (formulas, input names)."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_")


def _facts(kind: str, opts: dict, labels: dict, choice_labels: dict | None) -> list[str]:
    """Default, range and choices of one input, as short phrases in the page's language."""
    facts = []
    choice_labels = choice_labels or {}
    if "default" in opts and opts["default"] not in ("", None):
        default = opts["default"]
        if kind == "BOOLEAN":
            default = "true" if default else "false"
        facts.append(f"{labels['default']} {escape(choice_labels.get(str(default), _number(default)))}")
    if kind in ("INT", "FLOAT") and "min" in opts and "max" in opts:
        facts.append(f"{labels['range']} {_number(opts['min'])} … {_number(opts['max'])}")
    if kind == "COMBO" and choice_labels:
        shown = [choice_labels[str(c)] for c in opts.get("options", []) if str(c) in choice_labels]
        facts.append(f"{labels['choices']}{labels['colon']}" + labels["list"].join(escape(c) for c in shown))
    return facts


def render(info: dict, texts: dict, source: dict, labels: dict, types: dict) -> str:
    """One page: ``info`` from /object_info, ``texts`` the node's nodeDefs entry and
    ``types`` the socket types' labels (main.json ``dataTypes``) in the page's language."""
    lines = [f"# {texts['display_name']}", ""]
    if texts.get("description"):
        lines += [escape(texts["description"]), ""]
    advanced = set(info.get("kv_advanced", ()))
    inputs = locales._inputs(info)
    optional = set(info["input"].get("optional", {}))
    if inputs:
        lines += [f"## {labels['inputs']}", ""]
        for name, kind, opts in inputs:
            entry = texts["inputs"][locales.i18n_key(name)]
            title = f"**{escape(entry['name'])}**" + ("" if entry["name"] == name else f" (`{name}`)")
            facts = []
            if kind not in ("COMBO", "INT", "FLOAT", "STRING", "BOOLEAN"):
                facts.append(f"{labels['connect']} {escape(types.get(kind, kind))}")
            facts += _facts(kind, opts, labels, entry.get("options"))
            if name in optional:
                facts.append(labels["optional"])
            if name in advanced:
                facts.append(labels["advanced"])
            head = title + (f" — {labels['sep'].join(facts)}" if facts else "")
            tip = entry.get("tooltip", "")
            lines.append(f"- {head}{labels['end']}" + (escape(tip) if tip else ""))
        if advanced & {name for name, _, _ in inputs}:
            lines += ["", f"*{labels['advanced_note']}*"]
        lines.append("")
    outputs = texts.get("outputs", {})
    if outputs:
        lines += [f"## {labels['outputs']}", ""]
        for i, kind in enumerate(info["output"]):
            entry = outputs[str(i)]
            tip = entry.get("tooltip")
            lines.append(f"- **{escape(entry['name'])}** ({escape(types.get(kind, kind))})"
                         + (f"{labels['colon']}{escape(tip)}" if tip else ""))
        lines.append("")
    lines += [f"## {labels['wiring']}", "", escape(source["wiring"]), "", f"## {labels['mistakes']}", ""]
    lines += [f"- {escape(m)}" for m in source["mistakes"]]
    return "\n".join(lines) + "\n"


def pages(infos: list[dict]) -> dict[Path, str]:
    """Every help page, by path."""
    out = {}
    for lang in LANGUAGES:
        node_texts = json.loads((REPO / "locales" / lang / "nodeDefs.json").read_text(encoding="utf-8"))
        types = json.loads((REPO / "locales" / lang / "main.json").read_text(encoding="utf-8"))["dataTypes"]
        sources = json.loads((SOURCES / f"{lang}.json").read_text(encoding="utf-8"))
        labels = sources["_labels"]
        for info in infos:
            node_id = info["name"]
            if node_id not in sources:
                raise SystemExit(f"tools/help_pages/{lang}.json has no wiring and mistakes for {node_id}")
            out[page_path(node_id, lang)] = render(info, node_texts[locales.i18n_key(node_id)], sources[node_id],
                                                   labels, types)
    return out


def problems(expected: dict[Path, str]) -> list[str]:
    found = []
    for path, text in expected.items():
        rel = path.relative_to(REPO)
        if not path.exists():
            found.append(f"{rel} is missing: run `python -m tools.help_pages generate`")
        elif path.read_text(encoding="utf-8") != text:
            found.append(f"{rel} is not what the schemas, locales/ and tools/help_pages/ give: run "
                         "`python -m tools.help_pages generate`")
    stale = {p for p in DOCS.rglob("*.md")} - set(expected)
    found += [f"{p.relative_to(REPO)} belongs to no node" for p in sorted(stale)]
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("generate", "check"))
    args = parser.parse_args(argv)
    expected = pages(locales.node_infos())
    if args.command == "generate":
        for path, text in expected.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        print(f"wrote {len(expected)} pages under {DOCS.relative_to(REPO)}/")
    found = problems(expected)
    for p in found:
        print(p, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
