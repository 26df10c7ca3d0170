"""The pack's UI text in every language (locales/, tools/locales.py).

``locales/en`` is generated from the node schemas; ``ru``, ``zh`` and ``zh-TW`` must have
exactly its keys (every node, input, option and output; nothing stale) and translate its
current English (tools/locales.py records which English text each translation was made
from). The files are what ComfyUI's ``app/custom_node_manager.py`` merges into ``/i18n``;
that the frontend shows them is tests/host/test_frontend_locales.py.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest

from tools import locales

REPO = Path(__file__).resolve().parents[1]
COMFYUI = Path(os.environ.get("COMFYUI_PATH") or Path(os.environ.get("KV_CACHE_DIR", REPO / ".cache")) / "comfyui")
ALL = ("en", *locales.LANGUAGES)


def _load(lang: str, name: str) -> dict:
    return json.loads((REPO / "locales" / lang / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def infos():
    """What /object_info gives for each node (read in a child process with ComfyUI's modules)."""
    if not (COMFYUI / "comfy_api").is_dir():
        pytest.skip(f"no ComfyUI at {COMFYUI} (scripts/test.sh installs it)")
    return locales.node_infos()


@pytest.fixture(scope="module")
def generated(infos):
    return locales.english(infos)


def test_every_language_has_exactly_the_schemas_keys_and_current_english(infos, generated):
    problems = locales.check(generated, locales.node_list(infos))
    assert not problems, "\n".join(problems)
    # the generated English covers every node, input, fixed option and output of the schemas
    infos = {i["name"]: i for i in infos}
    node_defs = generated["nodeDefs.json"]
    assert set(node_defs) == set(infos)
    for node_id, info in infos.items():
        names = [name for name, _, _ in locales._inputs(info)]
        assert list(node_defs[node_id].get("inputs", {})) == names
        assert list(node_defs[node_id].get("outputs", {})) == [str(i) for i in range(len(info["output"]))]


def test_node_list_json_names_every_node_for_comfyui_manager(infos):
    """ComfyUI-Manager's scanner takes the keys of a repository's node_list.json as the node
    types it provides (it finds no NODE_CLASS_MAPPINGS in a V3-only pack)."""
    listed = json.loads((REPO / "node_list.json").read_text(encoding="utf-8"))
    assert set(listed) == {i["name"] for i in infos}
    assert all(isinstance(v, str) and v for v in listed.values())


def test_the_check_reports_missing_stale_and_outdated_entries(generated):
    """The check fails for each kind of drift, naming the place (so it can fail at all)."""
    node_defs = generated["nodeDefs.json"]
    node = "KandinskyVideoKeyframes"
    ru = _load("ru", "nodeDefs.json")
    missing = copy.deepcopy(ru)
    del missing[node]["inputs"]["motion"]["options"]["extreme"]
    stale = copy.deepcopy(ru)
    stale[node]["inputs"]["old_input"] = {"name": "x"}
    assert locales.differences(node_defs, ru, "ru") == []
    assert locales.differences(node_defs, missing, "ru") == [
        f"ru: missing /{node}/inputs/motion/options/extreme: str"]
    assert locales.differences(node_defs, stale, "ru") == [f"ru: stale /{node}/inputs/old_input/name: str"]
    # a changed English tooltip: every translation is out of date for it until stamped again
    changed = copy.deepcopy(generated)
    changed["nodeDefs.json"][node]["inputs"]["motion"]["tooltip"] += " More."
    outdated = [p for p in locales.check(changed) if "translates another English text" in p]
    assert len(outdated) == len(locales.LANGUAGES)
    assert all(f"nodeDefs.json/{node}/inputs/motion/tooltip" in p for p in outdated)


def _texts(data, path=""):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _texts(value, f"{path}/{key}")
    else:
        yield path, data


@pytest.mark.parametrize("lang", ALL)
def test_no_text_uses_the_frontends_message_syntax(lang):
    """The frontend reads names and descriptions through vue-i18n, which treats { } | @ $ as
    message syntax (a '|' would cut a name to its first part)."""
    bad = [(p, t) for name in locales.FILES for p, t in _texts(_load(lang, name)) if re.search(r"[{}|@$]", t)]
    assert not bad


SCRIPTS = {"ru": re.compile("[а-яё]", re.I), "zh": re.compile("[\u4e00-\u9fff]"), "zh-TW": re.compile("[\u4e00-\u9fff]")}
#: Characters that exist only in simplified Chinese, all of which the zh files use.
SIMPLIFIED_ONLY = "帧关键视频码载数设备图样认选择输为这与时间从"
#: The field's terms each language uses for the pack's two main stages.
TERMS = {
    "ru": {"KandinskyVideoKeyframes": "ключевые кадры", "KandinskyVideoInterpolate": "интерполяция кадров"},
    "zh": {"KandinskyVideoKeyframes": "关键帧", "KandinskyVideoInterpolate": "帧插值"},
    "zh-TW": {"KandinskyVideoKeyframes": "關鍵影格", "KandinskyVideoInterpolate": "影格插補"},
}


@pytest.mark.parametrize("lang", locales.LANGUAGES)
def test_translations_are_written_in_their_language(lang):
    english = dict(_texts(_load("en", "nodeDefs.json")))
    node_defs = _load(lang, "nodeDefs.json")
    texts = dict(_texts(node_defs))
    for path, text in texts.items():
        if path.endswith(("/description", "/tooltip", "/display_name")):
            assert text != english[path], f"{lang}{path} is the English text"
            assert SCRIPTS[lang].search(text), f"{lang}{path} has no {lang} text: {text!r}"
    for node_id, term in TERMS[lang].items():
        assert term in node_defs[node_id]["display_name"].lower()
    if lang == "zh":
        assert set(SIMPLIFIED_ONLY) <= set("".join(texts.values()))
    if lang == "zh-TW":
        left = sorted(set(SIMPLIFIED_ONLY) & set("".join(texts.values())))
        assert not left, f"simplified characters in zh-TW: {left}"


def test_core_category_labels_stay_the_frontends():
    """Category segments the pack shares with core nodes are merged over the frontend's own
    labels for every node: they keep the labels the frontend (1.58.1) gives them."""
    core = {"ru": {"conditioning": "условие", "sampling": "выборка", "loaders": "загрузчики"},
            "zh": {"conditioning": "条件", "sampling": "采样", "loaders": "加载器"},
            "zh-TW": {"conditioning": "條件", "sampling": "取樣", "loaders": "載入器"}}
    for lang, labels in core.items():
        categories = _load(lang, "main.json")["nodeCategories"]
        assert {k: categories[k] for k in labels} == labels
