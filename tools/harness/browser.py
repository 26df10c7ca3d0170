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

    def close_dialogs(self) -> int:
        """Close open dialogs as a user would (Escape, else the dialog's close button: the
        visible icon-only button nearest its top-right corner); returns how many were open."""
        count = self.browser.evaluate("document.querySelectorAll('.p-dialog').length")
        for _ in range(2 * count):
            self.browser.press_key("Escape", 27)
            time.sleep(0.3)
            self.browser.evaluate("""(() => {
                const d = document.querySelector('.p-dialog');
                if (!d) return false;
                const box = d.getBoundingClientRect();
                const buttons = [...d.querySelectorAll('.p-dialog-close-button, .p-dialog-header-close, button')]
                    .filter(b => !b.textContent.trim() && getComputedStyle(b).opacity !== '0'
                                 && getComputedStyle(b).pointerEvents !== 'none');
                const dist = b => { const r = b.getBoundingClientRect(); return Math.hypot(box.right - r.right, r.top - box.top); };
                buttons.sort((a, b) => dist(a) - dist(b));
                if (buttons.length) buttons[0].click();
                return buttons.length > 0;
            })()""")
            time.sleep(0.5)
            if not self.browser.evaluate("document.querySelectorAll('.p-dialog').length"):
                break
        return count

    def load_workflow(self, workflow: dict) -> None:
        """Load a UI-format workflow as a user opening the file would."""
        self.browser.call("async (wf) => { await window.app.loadGraphData(wf, true, true); return true; }", workflow)

    def missing_node_types(self) -> list[str]:
        """Node types of the loaded graph the frontend does not know (drawn as red 'missing')."""
        return self.browser.evaluate(
            "window.app.graph.nodes.filter(n => n.has_errors || !LiteGraph.registered_node_types[n.type]).map(n => n.type)"
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
