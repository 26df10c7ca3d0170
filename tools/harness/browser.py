"""Headless Chromium over the Chrome DevTools Protocol, and the ComfyUI frontend in it."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import websocket

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
    """Chromium failed, or JavaScript evaluated in the page threw."""


class Browser:
    """Headless Chromium driven over the Chrome DevTools Protocol (one page).

    Flags that work offline: no GPU, no QUIC, no first-run/background networking,
    component updates or sync, and a fresh user-data dir that is removed on :meth:`close`.
    """

    FLAGS = (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--no-default-browser-check", "--mute-audio",
    )

    def __init__(self, executable: str | None = None, *, window: tuple[int, int] = (1400, 900), timeout: float = 60.0):
        self.executable = executable or find_chromium()
        if not self.executable:
            raise BrowserError("no Chromium found (apt-get install chromium, or set KV_CHROMIUM)")
        self.window = window
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.user_data_dir: Path | None = None
        self._ws = None
        self._next_id = 0
        self.events: list[dict] = []
        self.console: list[str] = []

    def start(self) -> "Browser":
        self.user_data_dir = Path(tempfile.mkdtemp(prefix="kv-chromium-"))
        cmd = [self.executable, *self.FLAGS, f"--user-data-dir={self.user_data_dir}",
               f"--window-size={self.window[0]},{self.window[1]}", "--remote-debugging-port=0", "about:blank"]
        self._stderr = open(self.user_data_dir / "chromium.log", "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=subprocess.STDOUT)
        try:
            port_file = self.user_data_dir / "DevToolsActivePort"
            deadline = time.monotonic() + self.timeout
            while not (port_file.is_file() and port_file.read_text().strip()):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BrowserError(f"Chromium did not start:\n{self.log_tail()}")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            while True:
                targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    break
                if time.monotonic() > deadline:
                    raise BrowserError("Chromium opened no page")
                time.sleep(0.1)
            self._ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=self.timeout,
                                                   suppress_origin=True)
            self.send("Page.enable")
            self.send("Runtime.enable")
        except BaseException:
            self.close()
            raise
        return self

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return (self.user_data_dir / "chromium.log").read_text(errors="replace")[-chars:]
        except (OSError, TypeError):
            return ""

    def send(self, method: str, timeout: float | None = None, **params) -> dict:
        """Send one CDP command and return its result (events met meanwhile are kept)."""
        self._next_id += 1
        msg_id = self._next_id
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            self._ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                msg = json.loads(self._ws.recv())
            except websocket.WebSocketTimeoutException:
                raise BrowserError(f"{method}: no answer from Chromium") from None
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result") or {}
            self._event(msg)

    def _event(self, msg: dict) -> None:
        self.events.append(msg)
        if msg.get("method") == "Runtime.consoleAPICalled":
            args = msg["params"].get("args") or []
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif msg.get("method") == "Runtime.exceptionThrown":
            details = msg["params"].get("exceptionDetails") or {}
            self.console.append("exception: " + str((details.get("exception") or {}).get("description") or details.get("text")))

    def evaluate(self, expression: str, *, timeout: float | None = None) -> Any:
        """Evaluate JavaScript in the page (promises are awaited); returns the JSON value."""
        res = self.send("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True,
                        returnByValue=True, userGesture=True)
        if "exceptionDetails" in res:
            details = res["exceptionDetails"]
            text = (details.get("exception") or {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript failed: {text}")
        return (res.get("result") or {}).get("value")

    def call(self, function: str, *args: Any, timeout: float | None = None) -> Any:
        """Call a JavaScript function expression with JSON arguments: ``call("(a) => a + 1", 2)``."""
        return self.evaluate(f"({function})(...{json.dumps(list(args))})", timeout=timeout)

    def wait_for(self, expression: str, *, timeout: float | None = None, interval: float = 0.25) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression!r}; console:\n" + "\n".join(self.console[-20:]))
            time.sleep(interval)

    def press_key(self, key: str, key_code: int) -> None:
        """Press and release one key (e.g. ``press_key("Escape", 27)``)."""
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=key_code)

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def screenshot(self, path: Path | str) -> Path:
        import base64

        data = self.send("Page.captureScreenshot", format="png")["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.send(json.dumps({"id": 0, "method": "Browser.close"}))
            with contextlib.suppress(Exception):
                self._ws.close()
            self._ws = None
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None
        if getattr(self, "_stderr", None) is not None:
            self._stderr.close()
            self._stderr = None
        if self.user_data_dir is not None:
            shutil.rmtree(self.user_data_dir, ignore_errors=True)
            self.user_data_dir = None

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
        self.browser.wait_for("!!(window.app && window.app.graph && window.app.canvas)", timeout=120)
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
            self.browser.press_key("Escape", 27)
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
