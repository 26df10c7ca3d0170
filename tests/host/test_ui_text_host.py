"""Text that a user or a file controls never reaches the frontend as markup, in the real web
frontends of the pinned ComfyUI (1.32.9 and 1.58.1, the ``comfy_browser`` fixture): a
shared workflow's prompt quoted by Text Encode's token report, and file and widget values
named in node errors. For each payload: no dialog opened by script (Chromium's ``dialog``
event), no element of the payload in the page, no link made from it, and the text still
reads as typed (``nodes.host.ui_text.plain``: ``< > &`` in their fullwidth forms).
"""
from __future__ import annotations

import pytest

from host_prompts import SIZE, shipped_workflow
from ui_payloads import PAYLOADS, plain_quote

# elements or links any payload would have made, by their ids and addresses (all name "kvx")
INJECTED = """(() => [...document.querySelectorAll('[id^=kvx], a[href*=kvx], a[href^="javascript:"], script')]
  .filter(e => e.tagName !== 'SCRIPT' || (e.id || '').startsWith('kvx') || (e.textContent || '').includes('kvx'))
  .map(e => e.outerHTML.slice(0, 120)))()"""
# records every element of a payload the page ever gets, also one shown only while the run
# goes on (1.58.1 removes progress text when the run ends)
WATCH = """(() => { window.__kvxSeen = [];
  const sel = '[id^=kvx], a[href*=kvx], a[href^="javascript:"]';
  new MutationObserver(records => { for (const r of records) for (const n of r.addedNodes) {
    if (!(n instanceof Element)) continue;
    for (const e of [n, ...n.querySelectorAll(sel)]) if (e.matches(sel)) window.__kvxSeen.push(e.outerHTML.slice(0, 120));
  } }).observe(document.body, {childList: true, subtree: true});
  return true; })()"""
# what the page shows: rendered text and the values of visible text areas
SHOWN = """(() => [document.body.innerText,
  ...[...document.querySelectorAll('textarea')].filter(t => t.getBoundingClientRect().width > 0).map(t => t.value)]
  .join('\\n'))()"""


@pytest.fixture
def dialogs(comfy_browser):
    """Messages of the JavaScript dialogs (alert, confirm, prompt) the page opens, dismissed."""
    seen: list[str] = []

    def on_dialog(dialog):
        seen.append(dialog.message)
        dialog.dismiss()

    page = comfy_browser.browser.page
    page.on("dialog", on_dialog)
    yield seen
    page.remove_listener("dialog", on_dialog)


def _tokenizer(kv_release):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(kv_release / "flan-ul2"))


def _cut_before(tokenizer, payload: str, tokens_length: int = 32) -> str:
    """A prompt whose first ``tokens_length - 1`` tokens are ordinary words and whose cut-off
    part starts with ``payload``: the report quotes the payload itself."""
    from kv_core.text import prompt_report

    words = "a red car driving along a coastal road at sunset".split()
    for n in range(1, 200):
        text = " ".join((words * 20)[:n]) + " " + payload
        report = prompt_report(tokenizer, text, tokens_length)
        if report.kept == tokens_length - 1 and report.dropped_text.startswith(payload[:8]):
            return text
    raise AssertionError(f"no prompt cuts right before {payload!r}")


def _encode_workflow(prompt: str, negative: str) -> dict:
    workflow = shipped_workflow("kandinsky_video_image_to_video")
    for node in workflow["nodes"]:  # one step at the smallest size
        if node["type"] == "KandinskyVideoTextEncode":
            node["widgets_values"][:2] = [prompt, negative]
        elif node["type"] == "KandinskyVideoKeyframes":
            node["widgets_values"][4] = 1  # steps
        elif node["type"] == "KandinskyVideoEncodeFirstFrame":
            node["widgets_values"][:2] = [SIZE, SIZE]
    return workflow


REPORT = """(() => { const n = window.app.graph.nodes.find(n => n.type === 'KandinskyVideoTextEncode');
  const w = (n && n.widgets || []).find(w => typeof w.value === 'string' && w.value.includes('tokens read'));
  return w ? w.value : null; })()"""


@pytest.mark.parametrize("pair", [PAYLOADS[i:i + 2] for i in range(0, len(PAYLOADS), 2)],
                         ids=lambda pair: "+".join(name for name, _ in pair))
def test_the_token_report_quotes_a_prompt_as_text(kv, kv_release, comfy_browser, dialogs, pair):
    tokenizer = _tokenizer(kv_release)
    texts = [_cut_before(tokenizer, payload) for _, payload in pair] + [""]
    comfy_browser.load_workflow(_encode_workflow(texts[0], texts[1]))
    comfy_browser.browser.evaluate(WATCH)
    result = comfy_browser.queue(timeout=600)
    assert result.ok, result.describe()
    comfy_browser.browser.wait_for(REPORT, timeout=30)
    comfy_browser.browser.wait_for("new Promise(r => setTimeout(() => r(true), 1500))")  # after the run's end
    report = comfy_browser.browser.evaluate(REPORT)
    shown = comfy_browser.browser.evaluate(SHOWN)
    assert dialogs == []
    assert comfy_browser.browser.evaluate(INJECTED) == []
    assert comfy_browser.browser.evaluate("window.__kvxSeen") == []  # not even while the run went on
    for name, payload in pair:
        quoted = plain_quote(payload)
        assert quoted in report, f"{name}: the report does not quote {quoted!r}: {report!r}"
        assert quoted in shown, f"{name}: the page does not show {quoted!r}"
    comfy_browser.close_dialogs()


# --------------------------------------------------------------------------- node errors

# a widget value of a shared workflow (validation: the loader names the file it cannot find)
BAD_NAME = "<img src=x id=kvx9 onerror=alert(9)>.pt"
# a model file's own name (execution: the loader names the file it cannot read)
BAD_FILE = "<svg id=kvx10 onload=alert(10)>.safetensors"


def _loader_workflow(name: str) -> dict:
    workflow = _encode_workflow("a red car", "")
    for node in workflow["nodes"]:
        if node["type"] == "KandinskyVideoKeyframeUNetLoader":
            node["widgets_values"][0] = name
    return workflow


def _error_shown(comfy_browser, dialogs, tmp_path, what: str, marker: str) -> None:
    """After a failed run: no script ran, nothing was injected, and the frontend has the
    error, as text: the pinned frontend opens a dialog with it; 1.58.1 flags the node and
    keeps the error for its errors panel (``app.lastNodeErrors`` / ``lastExecutionError``)."""
    held = f"""(() => document.body.innerText.includes('{marker}')
      || JSON.stringify(window.app.lastNodeErrors || null).includes('{marker}')
      || JSON.stringify(window.app.lastExecutionError || null).includes('{marker}'))()"""
    try:
        comfy_browser.browser.wait_for(held, timeout=30)
    except Exception:
        comfy_browser.browser.screenshot(tmp_path / f"{what}.png")
        raise
    comfy_browser.browser.wait_for("new Promise(r => setTimeout(() => r(true), 2000))")  # whatever it draws
    assert dialogs == []
    assert comfy_browser.browser.evaluate(INJECTED) == [], f"{what}: see {tmp_path}"
    assert comfy_browser.browser.evaluate("window.__kvxSeen") == []
    shown = comfy_browser.browser.evaluate(SHOWN)
    if marker in shown:  # where the page shows it, it shows the name as typed
        assert (BAD_NAME if marker == "kvx9" else BAD_FILE).split(">")[0] in shown


def test_a_file_name_in_a_validation_error_is_text(kv, comfy_browser, dialogs, tmp_path):
    comfy_browser.load_workflow(_loader_workflow(BAD_NAME))
    comfy_browser.close_dialogs()
    comfy_browser.browser.evaluate(WATCH)
    result = comfy_browser.queue(timeout=120)
    assert result.status == "rejected", result.describe()
    _error_shown(comfy_browser, dialogs, tmp_path, "validation", "kvx9")
    comfy_browser.close_dialogs()


def test_a_file_name_in_an_execution_error_is_text(kv, comfy_browser, dialogs, tmp_path):
    from safetensors.torch import save_file
    import torch

    bad = tmp_path / BAD_FILE
    save_file({"something.else": torch.zeros(2)}, str(bad))
    path = kv.models_dir / "kandinsky_video" / BAD_FILE
    if not path.exists():
        kv.add_model("kandinsky_video", bad)
    comfy_browser.load_workflow(_loader_workflow(BAD_FILE))
    comfy_browser.close_dialogs()
    comfy_browser.browser.evaluate(WATCH)
    result = comfy_browser.queue(timeout=300)
    assert result.status == "error", result.describe()
    assert BAD_FILE in result.error["exception_message"]
    _error_shown(comfy_browser, dialogs, tmp_path, "execution", "kvx10")
    comfy_browser.close_dialogs()
