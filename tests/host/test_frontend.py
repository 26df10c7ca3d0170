"""The harness's view of the web frontend (tools/harness/browser.py ``ComfyFrontend``):
dialogs found by ARIA role and closed, really missing node types told apart from nodes
that only name an absent model file. First on a page of its own (Chromium only), then in
the real frontend of the pinned ComfyUI, with both the frontend it pins (1.32.9) and the
current one (1.58.1) — the ``comfy_browser`` fixture runs each test once per frontend.
"""
from __future__ import annotations

import copy
import io

import pytest

from tools.harness import Browser, BrowserError, ComfyFrontend

# --------------------------------------------------------------------------- a page of its own

# Dialogs as the two frontends draw them: PrimeVue (pinned: class p-dialog, closed by an
# icon-only button; this one ignores Escape), Reka UI (1.58.1: data-state open/closed, closes
# on Escape and lingers while it animates out), and an alert dialog closed only by its
# aria-label "Close" button. Not dialogs: a toast, a closed and a hidden dialog.
DIALOG_PAGE = """<!doctype html><html><body>
<div role="dialog" class="p-dialog" style="position:fixed;left:10px;top:10px;width:300px">
  <div>Prime dialog</div>
  <div role="dialog">nested, part of the one above</div>
  <button>Save</button>
  <button class="p-dialog-close-button" style="width:20px;height:20px"
          onclick="this.closest('[role=dialog]').remove()"><svg width="10" height="10"></svg></button>
</div>
<div role="dialog" data-state="open" class="reka" style="position:fixed;left:350px;top:10px">Reka dialog</div>
<div role="alertdialog" style="position:fixed;left:10px;top:300px">
  <div>Alert dialog</div>
  <button aria-label="Close" onclick="this.parentElement.remove()">OK then</button>
</div>
<div role="status">3 issues found</div>
<div role="dialog" data-state="closed">closing dialog</div>
<div role="dialog" style="display:none">hidden dialog</div>
<script>
document.addEventListener('keydown', e => {
  if (e.key !== 'Escape') return;
  const d = document.querySelector('.reka[data-state=open]');
  if (!d) return;
  d.setAttribute('data-state', 'closed');
  setTimeout(() => d.remove(), 300);
});
</script></body></html>"""

STUCK_PAGE = """<!doctype html><html><body>
<div role="dialog"><div>Stuck dialog</div><button>Keep</button></div></body></html>"""


def _page(chromium, html: str) -> ComfyFrontend:
    import base64

    chromium.navigate("data:text/html;base64," + base64.b64encode(html.encode()).decode())
    return ComfyFrontend(None, chromium)  # no host: the dialog methods only read the page


def test_dialogs_are_found_by_role_and_closed(chromium):
    page = _page(chromium, DIALOG_PAGE)
    assert page.open_dialogs() == ["Prime dialog", "Reka dialog", "Alert dialog"]
    assert page.close_dialogs() == 3
    assert page.open_dialogs() == []
    assert chromium.evaluate("document.querySelector('[role=status]').textContent") == "3 issues found"


def test_a_dialog_that_will_not_close_is_an_error(chromium):
    page = _page(chromium, STUCK_PAGE)
    with pytest.raises(BrowserError, match="Stuck dialog"):
        page.close_dialogs(timeout=2)


# Toasts as the two frontends show them: PrimeVue's (pinned) and 1.58.1's open alert item of a
# notification region; a closed item and an alert outside a region are not toasts.
TOAST_PAGE = """<!doctype html><html><body>
<div class="p-toast-message">Updated (pinned)</div>
<div role="region"><ol><li role="alert" data-state="open">Updated (1.58.1)</li>
  <li role="alert" data-state="closed">gone</li></ol></div>
<div role="alert">a form error, not a toast</div>
<script>setTimeout(() => document.querySelectorAll('.p-toast-message, li').forEach(t => t.remove()), 500);</script>
</body></html>"""


def test_toasts_of_both_frontends_are_found_and_waited_out(chromium):
    page = _page(chromium, TOAST_PAGE)
    assert page.toasts() == ["Updated (pinned)", "Updated (1.58.1)"]
    page.wait_toasts_gone(timeout=10)
    assert page.toasts() == []
    page = _page(chromium, TOAST_PAGE.replace("<script>", "<script>//"))
    with pytest.raises(BrowserError, match="timed out"):
        page.wait_toasts_gone(timeout=1)

def test_script_errors_and_promises_that_never_settle_are_errors(chromium):
    chromium.navigate("data:text/html,<title>t</title>")
    assert chromium.call("(a, b) => a + b", 2, 3) == 5
    assert chromium.evaluate("Promise.resolve({x: [1, 'a']})") == {"x": [1, "a"]}
    with pytest.raises(BrowserError, match="nope is not defined"):
        chromium.evaluate("nope.x")
    with pytest.raises(BrowserError, match="no result after 1 s"):
        chromium.evaluate("new Promise(() => {})", timeout=1)
    with pytest.raises(BrowserError, match="timed out waiting for 'false'"):
        chromium.wait_for("false", timeout=1)


def test_a_second_browser_at_device_scale_2_beside_the_first(chromium):
    """Two browsers open at once in one thread share Playwright's driver (it allows one sync
    instance per thread); tools/thumbnails.py takes its screenshots at device scale 2."""
    from PIL import Image

    with Browser(device_scale_factor=2) as second:
        second.navigate("data:text/html,<body style='margin:0;background:rgb(255,0,0)'>")
        assert second.evaluate("devicePixelRatio") == 2
        shot = Image.open(io.BytesIO(second.screenshot(clip={"x": 0, "y": 0, "width": 10, "height": 6})))
        assert shot.size == (20, 12)
        assert shot.convert("RGB").getpixel((5, 5)) == (255, 0, 0)
    assert chromium.evaluate("1 + 1") == 2  # the first one still works after the second closed


# --------------------------------------------------------------------------- the real frontends

LOADER = "KandinskyVideoKeyframeUNetLoader"
ABSENT = "absent_keyframe_unet.pt"
UNKNOWN = "KandinskyVideoNoSuchNode"


def _workflow(*nodes: dict) -> dict:
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": 0, "nodes": list(nodes),
            "links": [], "groups": [], "config": {}, "extra": {}, "version": 0.4}


def _node(node_id: int, node_type: str, widgets_values: list, **properties) -> dict:
    return {"id": node_id, "type": node_type, "pos": [100 + 400 * (node_id - 1), 100], "size": [320, 100],
            "flags": {}, "order": node_id - 1, "mode": 0, "inputs": [], "outputs": [],
            "properties": {"Node name for S&R": node_type, **properties}, "widgets_values": widgets_values}


# the loader names a file that is not in models/kandinsky_video/, with the metadata that
# makes the pinned frontend open its "Missing Models" dialog
ABSENT_MODEL = _node(1, LOADER, [ABSENT, "default"], models=[{
    "name": ABSENT, "directory": "kandinsky_video",
    "url": f"https://huggingface.co/ai-forever/KandinskyVideo_1_1/resolve/main/{ABSENT}"}])


def test_an_absent_model_file_is_not_a_missing_node_type(comfy, comfy_browser):
    comfy_browser.load_workflow(_workflow(copy.deepcopy(ABSENT_MODEL)))
    comfy_browser.close_dialogs()
    assert comfy_browser.open_dialogs() == []
    assert comfy_browser.missing_node_types() == []
    assert comfy_browser.missing_models() == [{"node": 1, "type": LOADER, "widget": "unet_name", "value": ABSENT}]
    # 1.58.1 draws the loader in red (has_errors); that flag alone never means a missing type
    assert all(not n["missing_type"] for n in comfy_browser.flagged_nodes())


def test_an_unknown_node_type_is_missing(comfy, comfy_browser):
    unknown = _node(2, UNKNOWN, [1, "x"])
    comfy_browser.load_workflow(_workflow(copy.deepcopy(ABSENT_MODEL), unknown))
    comfy_browser.close_dialogs()  # the pinned frontend opens "missing nodes" (and "missing models")
    assert comfy_browser.open_dialogs() == []
    assert comfy_browser.missing_node_types() == [UNKNOWN]
    assert {"node": 2, "type": UNKNOWN, "missing_type": True} in comfy_browser.flagged_nodes()
    assert [m["type"] for m in comfy_browser.missing_models()] == [LOADER]


def test_the_settings_dialog_is_found_and_closed(comfy, comfy_browser):
    comfy_browser.browser.evaluate(
        "window.app.extensionManager.command.execute('Comfy.ShowSettingsDialog').then(() => true)")
    comfy_browser.browser.wait_for("document.querySelector('[role=dialog]') !== null", timeout=20)
    assert len(comfy_browser.open_dialogs()) == 1
    assert comfy_browser.close_dialogs() == 1
    assert comfy_browser.open_dialogs() == []
