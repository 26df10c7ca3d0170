"""Headless Chromium driven by Playwright for Python, and the ComfyUI frontend in it.

:class:`Browser` is a thin layer over Playwright's sync API (``playwright`` in
tools/requirements.txt): one page of a Chromium that Playwright launches with
``executable_path`` — Debian's ``chromium`` (:func:`find_chromium`), because Playwright's own
browser download (``playwright install``) does not work offline. Measured here: the wheel
(1.65.2) is a 53.5 MB download and 165 MB installed (it carries its Node.js driver). Against
the hand-written DevTools client this replaces, on a loaded 2-core machine: starting takes
1.9-4.7 s instead of 1.2-1.6 s (once per browser session), an :meth:`Browser.evaluate` about
4-5 ms instead of 0.4 ms (Node.js in between, plus the timeout guard), and an idle open
frontend costs the same CPU; the frontend tests' time is dominated by the workflow runs.

The sync API runs its own asyncio loop in the calling thread: a :class:`Browser` must not be
started inside a running event loop (it raises :class:`BrowserError` saying so), and it is
used from the thread that started it. Browsers open at the same time in one thread share one
Playwright driver (Playwright allows one sync instance per thread); each has its own
Chromium. pytest-xdist workers are processes of their own, and the ComfyUI server is another.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from .host import ComfyHost, PromptResult


def find_chromium() -> str | None:
    """The Chromium to drive: ``$KV_CHROMIUM`` or Debian's ``chromium`` on PATH."""
    explicit = os.environ.get("KV_CHROMIUM")
    if explicit:
        return explicit if shutil.which(explicit) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    """Chromium failed, or JavaScript evaluated in the page threw or did not finish in time."""


def _api():
    """``playwright.sync_api``, imported when a browser starts (the rest of the harness works
    without it); :class:`BrowserError` naming the fix when it cannot be imported."""
    try:
        from playwright import sync_api
    except ImportError as e:
        raise BrowserError(f"Playwright for Python cannot be imported ({e}): pip install -r tools/requirements.txt. "
                           "(A folder named 'playwright' with an __init__.py, e.g. this repository checked out "
                           "under that name and run by pytest, hides the package: rename the checkout.)") from None
    return sync_api


class _Driver(threading.local):
    """The Playwright driver of this thread, started by the first open :class:`Browser` and
    stopped when the last one closes (a second ``sync_playwright()`` in one thread fails)."""

    playwright = None
    users = 0

    def acquire(self):
        if self.playwright is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                raise BrowserError("Browser uses Playwright's sync API, which cannot run inside a running "
                                   "asyncio event loop: start it from plain (non-async) code or another thread")
            self.playwright = _api().sync_playwright().start()
        self.users += 1
        return self.playwright

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0 and self.playwright is not None:
            playwright, self.playwright, self.users = self.playwright, None, 0
            playwright.stop()


_DRIVER = _Driver()

#: Calls ``BODY`` (an expression; ``args`` is the argument list) and awaits it, rejecting
#: after ``MS`` milliseconds: a promise that never settles is an error, not a hang.
_GUARDED_JS = """async (args) => {
    let timer;
    const limit = new Promise((_, reject) => { timer = setTimeout(
        () => reject(new Error('no result after SECONDS s')), MS); });
    try { return await Promise.race([(async () => (BODY
    ))(), limit]); } finally { clearTimeout(timer); }
}"""


class Browser:
    """Headless Chromium with one page, driven by Playwright.

    ``viewport`` is the page's size in CSS pixels (the default is what a 1400x900 headless
    window showed, which the templates' saved views are made for) and ``device_scale_factor``
    the device pixels per CSS pixel (2 for sharp screenshots). ``timeout`` (seconds) bounds
    navigation, :meth:`evaluate` and :meth:`wait_for` unless a call names its own.
    JavaScript console lines and uncaught page errors collect in :attr:`console`.
    """

    #: Beside Playwright's own flags (no first run, background networking, component
    #: updates or sync; a fresh profile removed on close): offline and container friendly.
    ARGS = ("--disable-gpu", "--disable-quic", "--disable-dev-shm-usage")

    def __init__(self, executable: str | None = None, *, viewport: tuple[int, int] = (1400, 757),
                 device_scale_factor: float = 1.0, timeout: float = 60.0):
        self.executable = executable or find_chromium()
        if not self.executable:
            raise BrowserError("no Chromium found (apt-get install chromium, or set KV_CHROMIUM)")
        self.viewport = viewport
        self.device_scale_factor = device_scale_factor
        self.timeout = timeout
        self.page = None  #: the Playwright ``Page`` while started
        self._browser = None
        self._playwright = None
        self.console: list[str] = []

    def start(self) -> "Browser":
        self._playwright = _DRIVER.acquire()
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=self.executable, headless=True, args=list(self.ARGS), timeout=self.timeout * 1000)
            self.page = self._browser.new_page(
                viewport={"width": self.viewport[0], "height": self.viewport[1]},
                device_scale_factor=self.device_scale_factor)
        except BaseException as e:
            self.close()
            if isinstance(e, _api().Error):
                raise BrowserError(f"Chromium ({self.executable}) did not start: {e}") from None
            raise
        self.page.set_default_timeout(self.timeout * 1000)
        self.page.on("console", lambda message: self.console.append(message.text))
        self.page.on("pageerror", lambda error: self.console.append(f"exception: {error}"))
        return self

    def _run(self, body: str, args: list, timeout: float | None) -> Any:
        if self.page is None:
            raise BrowserError("the browser is not started (Browser.start, or use it as a context manager)")
        seconds = timeout or self.timeout
        script = (_GUARDED_JS.replace("SECONDS", f"{seconds:g}").replace("MS", str(round(seconds * 1000)))
                  .replace("BODY", body))
        try:
            return self.page.evaluate(script, args)
        except _api().Error as e:
            raise BrowserError(f"JavaScript failed: {e.message}") from None

    def evaluate(self, expression: str, *, timeout: float | None = None) -> Any:
        """Evaluate a JavaScript expression in the page; a promise is awaited. Returns its
        value as JSON-like Python (``undefined`` → None); raises :class:`BrowserError` when it
        throws or has not settled after ``timeout`` seconds (default :attr:`timeout`)."""
        return self._run(expression, [], timeout)

    def call(self, function: str, *args: Any, timeout: float | None = None) -> Any:
        """Call a JavaScript function expression with JSON arguments: ``call("(a) => a + 1", 2)``."""
        return self._run(f"({function})(...args)", list(args), timeout)

    def wait_for(self, expression: str, *, timeout: float | None = None, interval: float = 0.25) -> Any:
        """Poll a JavaScript expression every ``interval`` seconds until it is truthy; return
        its value. Raises :class:`BrowserError` with the console's last lines on timeout."""
        if self.page is None:
            raise BrowserError("the browser is not started (Browser.start, or use it as a context manager)")
        try:
            handle = self.page.wait_for_function(f"() => ({expression}\n)", timeout=(timeout or self.timeout) * 1000,
                                                 polling=interval * 1000)
        except _api().TimeoutError:
            raise BrowserError(f"timed out waiting for {expression!r}; console:\n" + "\n".join(self.console[-20:])) from None
        except _api().Error as e:
            raise BrowserError(f"waiting for {expression!r} failed: {e.message}") from None
        return handle.json_value()

    def press_key(self, key: str) -> None:
        """Press and release one key, named as ``KeyboardEvent.key`` (e.g. ``"Escape"``)."""
        self.page.keyboard.press(key)

    def navigate(self, url: str) -> None:
        """Open ``url`` and wait for its ``load`` event (``document.readyState === 'complete'``)."""
        try:
            self.page.goto(url, wait_until="load")
        except _api().Error as e:
            raise BrowserError(f"could not open {url[:200]}: {e.message}") from None

    def screenshot(self, path: Path | str | None = None, *, clip: dict | None = None) -> bytes:
        """A PNG of the viewport, or of ``clip`` (``{"x", "y", "width", "height"}`` in CSS
        pixels), at :attr:`device_scale_factor` pixels per CSS pixel; written to ``path`` too
        when one is given."""
        return self.page.screenshot(path=path, clip=clip, type="png")

    def close(self) -> None:
        """Close Chromium and release the driver; safe to call twice."""
        browser, playwright = self._browser, self._playwright
        self.page = self._browser = self._playwright = None
        try:
            if browser is not None:
                browser.close()
        finally:
            if playwright is not None:
                _DRIVER.release()

    def __enter__(self) -> "Browser":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


#: The outermost open dialogs (ARIA roles; see :meth:`ComfyFrontend.open_dialogs`).
_OPEN_DIALOGS_JS = """[...document.querySelectorAll('[role=dialog], [role=alertdialog]')].filter(d =>
    d.getAttribute('data-state') !== 'closed' && d.getClientRects().length > 0
    && getComputedStyle(d).visibility !== 'hidden'
    && !(d.parentElement && d.parentElement.closest('[role=dialog], [role=alertdialog]')))"""

#: Click the close button of the topmost open dialog (the last one in document order).
_CLICK_CLOSE_JS = f"""(() => {{
    const dialogs = {_OPEN_DIALOGS_JS};
    const d = dialogs[dialogs.length - 1];
    if (!d) return false;
    const visible = b => b.getClientRects().length > 0 && getComputedStyle(b).opacity !== '0'
                         && getComputedStyle(b).pointerEvents !== 'none' && !b.disabled;
    const buttons = [...d.querySelectorAll('button, [role=button]')].filter(visible);
    let button = buttons.find(b => /^close$/i.test((b.getAttribute('aria-label') || '').trim()));
    if (!button) {{
        const box = d.getBoundingClientRect();
        const dist = b => {{ const r = b.getBoundingClientRect(); return Math.hypot(box.right - r.right, r.top - box.top); }};
        button = buttons.filter(b => !b.textContent.trim()).sort((a, b) => dist(a) - dist(b))[0];
    }}
    if (button) button.click();
    return !!button;
}})()"""

#: The notification toasts on screen: PrimeVue's in the pinned frontend, and 1.58.1's (an
#: open ``role="alert"`` item of its ``role="region"`` notification list).
_TOASTS_JS = """[...document.querySelectorAll('.p-toast-message, [role=region] [role=alert][data-state=open]')]
    .filter(t => t.getClientRects().length > 0)"""

#: A node's id as a number where it is one (1.58.1 keeps ids as strings, the pinned one as numbers).
_NODE_ID_JS = "(n => /^\\d+$/.test(String(n.id)) ? Number(n.id) : n.id)"

#: Every node of the loaded workflow: the root graph's and those inside its subgraphs.
_ALL_NODES_JS = """[...window.app.graph.nodes,
    ...[...((window.app.graph.subgraphs && window.app.graph.subgraphs.values()) || [])].flatMap(g => g.nodes || [])]"""


class ComfyFrontend:
    """The real ComfyUI web frontend of a running :class:`ComfyHost`, in a :class:`Browser`."""

    def __init__(self, host: ComfyHost, browser: Browser):
        self.host = host
        self.browser = browser

    def open(self) -> "ComfyFrontend":
        # a returning user: the first-run Templates browser is not opened over the canvas
        self.host.post("/settings/Comfy.TutorialCompleted", True).raise_for_status()
        self.browser.navigate(self.host.url + "/")
        # the page restores the user's last workflow after the app exists (a returning user):
        # ready once the workflow store names an open workflow, so that no graph built or
        # loaded next is replaced by that restore (stores without one: ready with the app)
        self.browser.wait_for("!!(window.app && window.app.graph && window.app.canvas"
                              " && (!(window.app.extensionManager && window.app.extensionManager.workflow)"
                              "     || window.app.extensionManager.workflow.activeWorkflow))", timeout=120)
        self.close_dialogs()
        return self

    @property
    def version(self) -> str | None:
        """The version the loaded frontend reports (``window.__COMFYUI_FRONTEND_VERSION__``)."""
        return self.browser.evaluate("window.__COMFYUI_FRONTEND_VERSION__ || null")

    def open_dialogs(self) -> list[str]:
        """The dialogs open over the page, by ARIA role (``dialog`` / ``alertdialog``), as
        their first line of text. Both the pinned frontend (PrimeVue's ``.p-dialog``) and
        1.58.1 (Reka UI, ``data-state="open"``) give their dialogs these roles; a closing one
        (``data-state="closed"``), a hidden one and a dialog nested in another are not counted.
        Toasts (``role="status"``, e.g. 1.58.1's "N issues found") are not dialogs."""
        return self.browser.evaluate(f"{_OPEN_DIALOGS_JS}.map(d => (d.innerText || '').trim().split('\\n')[0].slice(0, 80))")

    def close_dialogs(self, *, timeout: float = 10.0) -> int:
        """Close every open dialog (:meth:`open_dialogs`) as a user would: Escape, else the
        topmost dialog's close button (``aria-label`` "Close", else the visible icon-only
        button nearest its top-right corner). Returns how many were open; raises
        :class:`BrowserError` naming the dialogs still open after ``timeout`` seconds."""
        first = len(self.open_dialogs())
        deadline = time.monotonic() + timeout
        remaining = first
        while remaining:
            if time.monotonic() > deadline:
                raise BrowserError(f"could not close the dialogs {self.open_dialogs()} (Escape and their close buttons failed)")
            self.browser.press_key("Escape")
            if self._wait_dialogs_below(remaining, 0.6):
                remaining = len(self.open_dialogs())
                continue
            self.browser.evaluate(_CLICK_CLOSE_JS)
            self._wait_dialogs_below(remaining, 1.0)
            remaining = len(self.open_dialogs())
        return first

    def _wait_dialogs_below(self, count: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while len(self.open_dialogs()) >= count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def toasts(self) -> list[str]:
        """The notification toasts on screen (both frontends), as their text."""
        return self.browser.evaluate(f"{_TOASTS_JS}.map(t => (t.innerText || '').trim())")

    def wait_toasts_gone(self, *, timeout: float = 30.0) -> None:
        """Wait until no toast (:meth:`toasts`) covers the page, e.g. the "Node definitions
        updated" one that a refresh shows over the canvas's top right; :class:`BrowserError`
        naming the toasts still shown after ``timeout`` seconds."""
        try:
            self.browser.wait_for(f"{_TOASTS_JS}.length === 0", timeout=timeout)
        except BrowserError as err:
            raise BrowserError(f"toasts still shown after {timeout:.0f} s: {self.toasts()}\n{err}") from None

    def dismiss_toasts(self) -> list[str]:
        """Close the toasts on screen with their close buttons, as a user would (a sticky
        one left by an earlier action stays until closed); returns their text."""
        shown = self.toasts()
        self.browser.evaluate(f"""{_TOASTS_JS}.forEach(t => {{
            const b = t.querySelector('.p-toast-close-button, button[aria-label=Close], button[aria-label=close], button');
            if (b) b.click();
        }})""")
        return shown

    def load_workflow(self, workflow: dict) -> None:
        """Load a UI-format workflow as a user opening the file would."""
        self.browser.call("async (wf) => { await window.app.loadGraphData(wf, true, true); return true; }", workflow)

    def missing_node_types(self) -> list[str]:
        """Node types of the loaded graph (and its subgraphs) that the frontend does not know:
        the placeholders it draws in red as missing nodes. Nodes that 1.58.1 only flags
        (``has_errors``) because a model file they name is absent are known types and are not
        listed here; see :meth:`missing_models`."""
        return self.browser.evaluate(
            f"{_ALL_NODES_JS}.filter(n => !Object.hasOwn(LiteGraph.registered_node_types, n.type)).map(n => n.type)"
        )

    def missing_models(self) -> list[dict]:
        """Choices the server does not offer: ``{"node", "type", "widget", "value"}`` for each
        combo widget of a known node whose value is not among its options — for a loader, a
        model file that is not in its ``models/`` folder. The same in every frontend version
        (the check reads the widgets, not the frontend's own error stores)."""
        return self.browser.evaluate(f"""{_ALL_NODES_JS}
            .filter(n => Object.hasOwn(LiteGraph.registered_node_types, n.type))
            .flatMap(n => (n.widgets || []).filter(w => w.type === 'combo').map(w => {{
                let values = w.options && w.options.values;
                if (typeof values === 'function') values = values(w, n);
                return Array.isArray(values) && !values.includes(w.value)
                    ? {{node: {_NODE_ID_JS}(n), type: n.type, widget: w.name, value: w.value}} : null;
            }}))
            .filter(x => x)""")

    def flagged_nodes(self) -> list[dict]:
        """Nodes the frontend marks with errors (``has_errors``: drawn with a red border):
        ``{"node", "type", "missing_type"}``. 1.58.1 also flags nodes whose model file is
        absent; ``missing_type`` tells the really missing node types apart."""
        return self.browser.evaluate(
            f"{_ALL_NODES_JS}.filter(n => n.has_errors).map(n => ({{node: {_NODE_ID_JS}(n), type: n.type, "
            "missing_type: !Object.hasOwn(LiteGraph.registered_node_types, n.type)}))"
        )

    def graph_to_prompt(self) -> dict:
        """The API-format prompt the frontend would queue for the current graph."""
        return self.browser.evaluate("window.app.graphToPrompt().then(p => p.output)")

    def workflow(self) -> dict:
        """The current graph serialized as the frontend saves it (UI format)."""
        return self.browser.evaluate("window.app.graph.serialize()")

    def widget_values(self, node_id: int | str) -> dict:
        return self.browser.call(
            "(id) => Object.fromEntries((window.app.graph.getNodeById(Number(id)).widgets || []).map(w => [w.name, w.value]))",
            node_id,
        )

    def queue(self, *, timeout: float = 900.0) -> PromptResult:
        """Press 'Run' (``app.queuePrompt``) and follow the queued prompt to its end."""
        before = set(self.host.get("/history").json())
        queue = self.host.queue()
        before |= {item[1] for key in ("queue_running", "queue_pending") for item in queue.get(key, [])}
        self.browser.evaluate("window.app.queuePrompt(0, 1).then(() => true)")
        errors = self.browser.evaluate("window.app.lastNodeErrors || null")
        if errors:
            return PromptResult(None, "rejected", node_errors=errors)
        deadline = time.monotonic() + 30
        while True:
            queue = self.host.queue()
            seen = set(self.host.get("/history").json())
            seen |= {item[1] for key in ("queue_running", "queue_pending") for item in queue.get(key, [])}
            new = seen - before
            if new:
                return self.host.wait(new.pop(), timeout=timeout)
            if time.monotonic() > deadline:
                raise BrowserError("the frontend queued no prompt; console:\n" + "\n".join(self.browser.console[-20:]))
            time.sleep(0.2)
