"""The pack's UI text: ``locales/en/`` generated from the node schemas, and the check that
every translation has exactly the schemas' keys.

  python -m tools.locales generate     write locales/en/{main,nodeDefs}.json from the schemas, and
                                       node_list.json (ComfyUI-Manager's list of the pack's node
                                       ids: its scanner finds no NODE_CLASS_MAPPINGS in a V3 pack)
  python -m tools.locales check        exit 1, listing every difference, when locales/en is not
                                       what the schemas give or a translation (ru, zh, zh-TW)
                                       lacks a key, has a stale one, or translates an older
                                       English text than locales/en holds
  python -m tools.locales stamp LANG   after updating LANG's translation: record which English
                                       text each of its strings now translates

The schemas are read from the node classes themselves: a child process imports ComfyUI's
modules (``$COMFYUI_PATH`` or the pinned ComfyUI in ``.cache/comfyui``, as the tests do) and
this pack, and asks each class for the node info ComfyUI's ``/object_info`` sends to the
frontend (``GET_NODE_INFO_V1``). So a tooltip added to a schema changes ``locales/en`` here,
and the check (also a test: tests/test_locales.py) fails until every language has it.

File formats (what ComfyUI's ``app/custom_node_manager.py`` merges into ``/i18n`` and the
frontend reads): ``nodeDefs.json`` maps each node id (dots replaced by ``_``, the frontend's
``normalizeI18nKey``) to ``display_name``, ``description``, ``inputs`` (input name ->
``name``, ``tooltip`` and, for a combo with a fixed list, ``options``: value -> label) and
``outputs`` (output index as a string -> ``name``, ``tooltip``); ``main.json`` holds
``nodeCategories`` (each segment of a category path -> its label) and ``dataTypes`` (the
pack's socket types -> label).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCALES = REPO / "locales"
LANGUAGES = ("ru", "zh", "zh-TW")  #: the translations kept beside the generated English
FILES = ("main.json", "nodeDefs.json")
#: Combos whose choices depend on the machine: model files (``*_name``) and the loaders'
#: ``device``; only their machine-independent choices are labelled.
MACHINE_CHOICES = {"device": ("default", "cpu")}
#: Socket types of this pack (``dataTypes``); the core ones are the frontend's.
PACK_TYPE_PREFIX = "KV_"

_CHILD = r"""
import asyncio, dataclasses, json
from pathlib import Path
from tools.harness.inprocess import comfy_modules, import_pack
with comfy_modules(Path(__import__("sys").argv[1])):
    pack = import_pack()

    extension = asyncio.run(pack.comfy_entrypoint())  # the nodes as the host gets them
    out = []
    for cls in asyncio.run(extension.get_node_list()):
        info = cls.GET_NODE_INFO_V1()
        info = dict(dataclasses.asdict(info) if dataclasses.is_dataclass(info) else info)
        info["kv_advanced"] = list(getattr(cls, "_kv_advanced", ()))  # for the help pages
        out.append(info)
print("KV_NODE_INFO " + json.dumps(out))
"""


def i18n_key(key: str) -> str:
    """The frontend's ``normalizeI18nKey``: dots would split the message path."""
    return key.replace(".", "_")


def comfyui_path() -> Path:
    from tools.harness.install import cache_root

    return Path(os.environ.get("COMFYUI_PATH") or cache_root() / "comfyui")


def node_infos(python: str | None = None) -> list[dict]:
    """What ``/object_info`` gives for each node of the pack, in registration order (a child
    process: ComfyUI's modules and the pack, whose ``comfy_entrypoint`` gives the node
    classes as it gives them to the host, on the CPU), plus ``kv_advanced``: the inputs the
    pack marks as expert settings where the host supports it (nodes/host/presentation.py)."""
    comfyui = comfyui_path()
    if not (comfyui / "comfy_api").is_dir():
        raise SystemExit(f"no ComfyUI at {comfyui}: run `python -m tools.comfy_host install` or set COMFYUI_PATH")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")  # the device list of a CPU machine
    proc = subprocess.run([python or sys.executable, "-c", _CHILD, str(comfyui)], capture_output=True,
                          text=True, env=env, timeout=600, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("KV_NODE_INFO ")]
    if proc.returncode or not lines:
        raise SystemExit(f"reading the node schemas failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("KV_NODE_INFO "):])


def _inputs(info: dict) -> list[tuple[str, str, dict]]:
    """``(name, type, options dict)`` of every visible input, in the node's order."""
    out = []
    for section in ("required", "optional"):
        specs = info["input"].get(section, {})
        for name in info.get("input_order", {}).get(section, list(specs)):
            spec = specs[name]
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(kind, list):  # a legacy list-of-options combo
                kind, opts = "COMBO", {**opts, "options": kind}
            out.append((name, kind, opts))
    return out


def combo_choices(name: str, kind: str, opts: dict) -> list[str] | None:
    """The labelled choices of a combo input (None: not a combo, or a model-file list)."""
    if kind != "COMBO" or name.endswith("_name"):
        return None
    if name in MACHINE_CHOICES:
        return list(MACHINE_CHOICES[name])
    return [str(v) for v in opts.get("options", [])]


def english(infos: list[dict]) -> dict[str, dict]:
    """``{"main.json": ..., "nodeDefs.json": ...}`` in English, from the node infos."""
    node_defs, categories, types = {}, {}, {}
    for info in infos:
        inputs = {}
        for name, kind, opts in _inputs(info):
            entry = {"name": opts.get("display_name") or name}
            if opts.get("tooltip"):
                entry["tooltip"] = opts["tooltip"]
            choices = combo_choices(name, kind, opts)
            if choices:
                entry["options"] = {c: c for c in choices}
            inputs[i18n_key(name)] = entry
            if str(kind).startswith(PACK_TYPE_PREFIX):
                types[kind] = kind
        outputs = {}
        for i, kind in enumerate(info["output"]):
            entry = {"name": info["output_name"][i]}
            tips = info.get("output_tooltips") or []
            if i < len(tips) and tips[i]:
                entry["tooltip"] = tips[i]
            outputs[str(i)] = entry
            if str(kind).startswith(PACK_TYPE_PREFIX):
                types[kind] = kind
        node = {"display_name": info["display_name"] or info["name"]}
        if info.get("description"):
            node["description"] = info["description"]
        if inputs:
            node["inputs"] = inputs
        if outputs:
            node["outputs"] = outputs
        node_defs[i18n_key(info["name"])] = node
        for segment in info["category"].split("/"):
            categories[i18n_key(segment)] = segment
    main = {"nodeCategories": dict(sorted(categories.items())), "dataTypes": dict(sorted(types.items()))}
    return {"main.json": main, "nodeDefs.json": dict(sorted(node_defs.items()))}


NODE_LIST = REPO / "node_list.json"


def node_list(infos: list[dict]) -> dict[str, str]:
    """ComfyUI-Manager's ``node_list.json``: ``{node id: description}`` (its scanner reads the
    keys as the node types the repository provides, for "Install Missing Custom Nodes")."""
    return {i["name"]: i["display_name"] or i["name"] for i in sorted(infos, key=lambda i: i["name"])}


def dumps(data) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def shape(data, path: str = "") -> set[str]:
    """Every key path of a locale file with its kind of value: what a translation must match."""
    if isinstance(data, dict):
        out = set()
        for key, value in data.items():
            out |= shape(value, f"{path}/{key}")
        return out
    return {f"{path}: {type(data).__name__}"}


def differences(reference: dict, other: dict, label: str) -> list[str]:
    ref, got = shape(reference), shape(other)
    return ([f"{label}: missing {p}" for p in sorted(ref - got)]
            + [f"{label}: stale {p}" for p in sorted(got - ref)])


STAMPS = LOCALES / "translated_from.json"  #: outside every language folder: the server ignores it


def leaves(data, path: str = "") -> dict[str, str]:
    """Every text of a locale file by its key path."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out.update(leaves(value, f"{path}/{key}"))
        return out
    return {path: data}


def fingerprint(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def english_fingerprints(generated: dict[str, dict]) -> dict[str, str]:
    return {f"{name}{path}": fingerprint(text) for name, data in generated.items()
            for path, text in leaves(data).items()}


def stamps() -> dict[str, dict[str, str]]:
    return json.loads(STAMPS.read_text(encoding="utf-8")) if STAMPS.exists() else {}


def check(generated: dict[str, dict], nodes: dict[str, str] | None = None) -> list[str]:
    """Every problem of the files on disk against the generated English (and ``node_list.json``
    against ``nodes``, when given)."""
    problems = []
    if nodes is not None and (not NODE_LIST.exists() or json.loads(NODE_LIST.read_text(encoding="utf-8")) != nodes):
        problems.append("node_list.json does not list the schemas' node ids: run `python -m tools.locales generate`")
    current, recorded = english_fingerprints(generated), stamps()
    for lang in LANGUAGES:
        old = recorded.get(lang, {})
        changed = sorted(p for p, h in current.items() if old.get(p) != h)
        problems += [f"locales/{lang}: {p} translates another English text than locales/en has now: update the "
                     f"translation, then `python -m tools.locales stamp {lang}`" for p in changed]
    for name, data in generated.items():
        path = LOCALES / "en" / name
        if not path.exists() or json.loads(path.read_text(encoding="utf-8")) != data:
            problems.append(f"locales/en/{name} is not what the schemas give: run `python -m tools.locales generate`")
        for lang in LANGUAGES:
            other = LOCALES / lang / name
            if not other.exists():
                problems.append(f"locales/{lang}/{name} is missing")
                continue
            problems += differences(data, json.loads(other.read_text(encoding="utf-8")), f"locales/{lang}/{name}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("generate", "check", "stamp"))
    parser.add_argument("languages", nargs="*", metavar="LANG",
                        help=f"stamp: the languages whose translations are up to date ({', '.join(LANGUAGES)})")
    args = parser.parse_args(argv)
    unknown = set(args.languages) - set(LANGUAGES)
    if unknown or (args.command == "stamp") != bool(args.languages):
        parser.error(f"stamp takes one or more of {', '.join(LANGUAGES)}; the other commands none")
    infos = node_infos()
    generated, nodes = english(infos), node_list(infos)
    if args.command == "stamp":
        recorded = stamps()
        for lang in args.languages:
            recorded[lang] = english_fingerprints(generated)
        STAMPS.write_text(dumps(dict(sorted(recorded.items()))), encoding="utf-8")
    if args.command == "generate":
        (LOCALES / "en").mkdir(parents=True, exist_ok=True)
        for name, data in generated.items():
            (LOCALES / "en" / name).write_text(dumps(data), encoding="utf-8")
            print(f"wrote locales/en/{name}")
        NODE_LIST.write_text(dumps(nodes), encoding="utf-8")
        print("wrote node_list.json")
    problems = check(generated, nodes)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
