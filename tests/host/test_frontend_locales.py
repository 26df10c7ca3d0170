"""The pack in Russian and Chinese in the real frontend, and each node's help page.

Through the pinned ComfyUI: its ``/i18n`` merges the pack's ``locales/`` and its static
route serves ``web/docs/``. In the browser (the ``comfy_browser`` fixture, once per
frontend): with the frontend's language set to ``ru`` and to ``zh``, a shipped template's
node titles and widget labels and an input's tooltip (hovered as a user does) read in that
language; in the current frontend (1.58.1) the info panel of a selected node shows its help
page in that language. Screenshots of each are kept in the ``artifacts`` folder
(``out/test-artifacts/`` unless ``$KV_ARTIFACTS`` says otherwise) for a person to look at.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.harness import PACK_NAME

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "workflows" / "kandinsky_video_text_to_video_8fps.json"
NODE, WIDGET = "KandinskyVideoKeyframes", "motion"
LANGS = ("ru", "zh")


def _node_defs(lang: str) -> dict:
    return json.loads((REPO / "locales" / lang / "nodeDefs.json").read_text(encoding="utf-8"))


def test_the_server_merges_the_packs_translations(comfy):
    served = comfy.get("/i18n").json()
    for lang in ("en", "ru", "zh", "zh-TW"):
        node_defs = _node_defs(lang)
        assert {k: served[lang]["nodeDefs"][k] for k in node_defs} == node_defs
        main = json.loads((REPO / "locales" / lang / "main.json").read_text(encoding="utf-8"))
        assert all(served[lang]["nodeCategories"][k] == v for k, v in main["nodeCategories"].items())


def test_the_server_serves_every_help_page(comfy):
    pages = sorted((REPO / "web" / "docs").rglob("*.md"))
    assert len(pages) >= 4 * len(_node_defs("en"))
    for page in pages:
        url = f"/extensions/{PACK_NAME}/docs/{page.relative_to(REPO / 'web' / 'docs').as_posix()}"
        response = comfy.get(url)
        assert response.status_code == 200, url
        assert response.content == page.read_bytes(), url


def _set_locale(frontend, lang: str) -> None:
    frontend.host.post("/settings/Comfy.Locale", lang).raise_for_status()
    frontend.open()


@pytest.fixture
def localized(comfy_browser):
    """Set the frontend's language for one test; English again afterwards (a fresh page)."""
    yield lambda lang: _set_locale(comfy_browser, lang)
    _set_locale(comfy_browser, "en")


#: The page coordinates of a widget's centre on the canvas.
_WIDGET_CENTRE_JS = """(type, name) => {
    const node = window.app.graph.nodes.find(n => n.type === type);
    const w = node.widgets.find(w => w.name === name);
    const canvas = window.app.canvas;
    const h = w.computedHeight || LiteGraph.NODE_WIDGET_HEIGHT;
    const [cx, cy] = canvas.ds.convertOffsetToCanvas(
        [node.pos[0] + node.size[0] / 2, node.pos[1] + (w.y ?? w.last_y) + h / 2]);
    const r = canvas.canvas.getBoundingClientRect();
    const scale = canvas.canvas.width / r.width;
    return [r.left + cx / scale, r.top + cy / scale];
}"""

_TOOLTIP_JS = """(() => { const t = document.querySelector('.node-tooltip');
    return t && t.offsetParent !== null && t.innerText.trim() ? t.innerText.trim() : null })()"""


def _current_frontend_only(frontend, why: str) -> None:
    if not frontend.version.startswith("1.58"):
        pytest.skip(f"{why}; this page runs {frontend.version}")


@pytest.mark.parametrize("lang", LANGS)
def test_a_template_reads_in_the_users_language(comfy, comfy_browser, localized, lang, artifacts):
    _current_frontend_only(comfy_browser, "frontend 1.32.9 (pinned by ComfyUI 0.3.75) merges custom nodes' "
                           "translations before it loads the language's own messages, which then replace them, "
                           "so the pack's nodes stay English there; 1.58 merges them again after loading")
    expected = _node_defs(lang)
    localized(lang)
    assert comfy_browser.browser.evaluate("window.app.extensionManager.setting.get('Comfy.Locale')") == lang
    comfy_browser.load_workflow(json.loads(TEMPLATE.read_text()))
    comfy_browser.close_dialogs()
    nodes = comfy_browser.browser.evaluate(
        "window.app.graph.nodes.map(n => ({type: n.type, title: n.title, "
        "labels: Object.fromEntries((n.widgets || []).map(w => [w.name, w.label || null]))}))")
    ours = [n for n in nodes if n["type"] in expected]
    assert len(ours) >= 8
    for node in ours:
        assert node["title"] == expected[node["type"]]["display_name"]
    keyframes = next(n for n in ours if n["type"] == NODE)
    assert keyframes["labels"][WIDGET] == expected[NODE]["inputs"][WIDGET]["name"]

    # hover the widget as a user does: the frontend's tooltip shows the translated text
    browser = comfy_browser.browser
    x, y = browser.call(_WIDGET_CENTRE_JS, NODE, WIDGET)
    browser.page.mouse.move(x - 4, y)
    browser.page.mouse.move(x, y)
    tooltip = browser.wait_for(_TOOLTIP_JS, timeout=15)
    assert tooltip == expected[NODE]["inputs"][WIDGET]["tooltip"]
    browser.screenshot(artifacts / f"locale-{lang}-frontend-{comfy_browser.version}.png")


@pytest.mark.parametrize("lang", LANGS)
def test_the_info_panel_shows_the_help_page(comfy, comfy_browser, localized, lang, artifacts):
    """Select a node and open the right side panel's Info tab: the panel renders
    web/docs/<NodeId>/<lang>.md."""
    _current_frontend_only(comfy_browser, "the Info tab of the right side panel is the current frontend's (1.58)")
    page = (REPO / "web" / "docs" / NODE / f"{lang}.md").read_text(encoding="utf-8")
    heading = page.splitlines()[0].removeprefix("# ")
    wiring = page.split("\n## ")[-2].splitlines()[2]  # the first line of the wiring section
    localized(lang)
    comfy_browser.load_workflow(json.loads(TEMPLATE.read_text()))
    comfy_browser.close_dialogs()
    browser = comfy_browser.browser
    browser.call(_SIDE_PANEL_JS, NODE, True)
    try:
        shown = browser.wait_for(
            "(() => { const el = document.querySelector('.node-help-content'); "
            "return el && el.innerText.includes('## ') === false && el.innerText.length > 200 ? el.innerText : null })()",
            timeout=30)
        assert heading in shown
        assert wiring.replace("\\", "") in shown.replace("\n", " ")
        browser.screenshot(artifacts / f"help-{lang}-frontend-{comfy_browser.version}.png")
    finally:
        # the panel's state is a user setting the server keeps (Comfy.RightSidePanel.IsOpen):
        # left open, it would cover the right of every graph the later tests open
        browser.call(_SIDE_PANEL_JS, NODE, False)


#: Select the node of type ``type`` and open the right side panel on its Info tab (what the
#: panel's button and tab do), or close the panel.
_SIDE_PANEL_JS = """(type, open) => {
    const pinia = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia;
    const panel = pinia._s.get('rightSidePanel');
    if (!open) { panel.closePanel(); return true; }
    window.app.canvas.selectNode(window.app.graph.nodes.find(n => n.type === type));
    panel.openPanel('info');
    return true; }"""
