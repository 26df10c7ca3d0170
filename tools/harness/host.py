"""A ComfyUI server process with this pack: start, submit prompts, follow them, stop."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import requests
import websocket

from .install import PACK_LOG_MARKER, PACK_NAME, REPO_ROOT, HostError, ensure_comfyui
from .workflow import is_api_prompt, workflow_to_prompt

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- results


@dataclass
class PromptResult:
    """What became of one submitted prompt.

    ``status`` is ``"success"``, ``"error"`` (an execution error), ``"interrupted"`` or
    ``"rejected"`` (validation failed before anything ran: see ``error`` and
    ``node_errors``). ``outputs`` maps node id -> the UI outputs it reported (images,
    videos, text, ...), as in ``/history``.
    """

    prompt_id: str | None
    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    node_errors: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def executed(self) -> list[str]:
        """Ids of the nodes that ran (not cached), in order."""
        return [m["data"]["node"] for m in self.messages if m["type"] == "executing" and m["data"].get("node")]

    def describe(self) -> str:
        parts = [f"prompt {self.prompt_id}: {self.status}"]
        if self.error:
            err = self.error
            if "exception_message" in err:
                parts.append(
                    f"{err.get('node_type')} (node {err.get('node_id')}): "
                    f"{err.get('exception_type')}: {err.get('exception_message')}"
                )
                parts.append("".join(err.get("traceback") or []))
            else:
                parts.append(json.dumps(err, indent=1))
        if self.node_errors:
            parts.append("node errors: " + json.dumps(self.node_errors, indent=1))
        return "\n".join(parts)

    def raise_for_status(self) -> "PromptResult":
        if not self.ok:
            raise HostError(self.describe())
        return self


# --------------------------------------------------------------------------- the host


class ComfyHost:
    """One ComfyUI server process with this pack (and optionally others) loaded.

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``models`` maps a
    model folder name (``"checkpoints"``, ``"kandinsky_video"``, ...) to files that are
    linked into ``<base>/models/<folder>/`` before start; :meth:`add_model` does the
    same later (ComfyUI re-lists a folder whose modification time changed).
    ``frontend_root`` serves another web frontend (a ``static`` folder, e.g. from
    :func:`~.install.ensure_frontend`) through ComfyUI's ``--front-end-root`` instead of the
    installed ``comfyui-frontend-package``; :meth:`restart` switches it.
    """

    def __init__(
        self,
        comfyui: Path | str | None = None,
        *,
        base_dir: Path | str | None = None,
        packs: Sequence[Path | str] = (REPO_ROOT,),
        models: Mapping[str, Iterable[Path | str]] | None = None,
        python: str | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        cpu: bool = True,
        startup_timeout: float = 600.0,
        keep_base_dir: bool = False,
        frontend_root: Path | str | None = None,
    ):
        self.comfyui = Path(comfyui).resolve() if comfyui else None
        self.python = python or sys.executable
        self.packs = [Path(p).resolve() for p in packs]
        self._models = {k: list(v) for k, v in (models or {}).items()}
        self.port = port
        self.extra_args = list(extra_args)
        self.cpu = cpu  # False: let ComfyUI pick the GPU (quick start with real weights)
        self.startup_timeout = startup_timeout
        self.keep_base_dir = keep_base_dir or base_dir is not None
        self.base_dir = Path(base_dir).resolve() if base_dir else None
        self.frontend_root = Path(frontend_root).resolve() if frontend_root else None
        self.proc: subprocess.Popen | None = None
        self._log_fh = None
        self._object_info: dict | None = None
        self.client_id = uuid.uuid4().hex
        self.startup_seconds: float | None = None
        self._final_log: str | None = None

    # -- lifecycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "comfyui.log"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    def start(self) -> "ComfyHost":
        if self.proc is not None:
            raise HostError("already started")
        self.comfyui = self.comfyui or ensure_comfyui(self.python)
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="kv-comfy-"))
        for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        for pack in self.packs:
            name = PACK_NAME if pack == REPO_ROOT else pack.name
            link = self.base_dir / "custom_nodes" / name
            if not link.exists():
                link.symlink_to(pack, target_is_directory=True)
        for folder, files in self._models.items():
            for f in files:
                self.add_model(folder, f)
        self.port = self.port or free_port()
        cmd = [
            self.python, "main.py", *(["--cpu"] if self.cpu else []),
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",
            "--disable-api-nodes",
            *(["--front-end-root", str(self.frontend_root)] if self.frontend_root else []),
            *self.extra_args,
        ]
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        self._log_fh = open(self.log_path, "ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, cwd=self.comfyui, env=env, stdin=subprocess.DEVNULL, stdout=self._log_fh, stderr=subprocess.STDOUT
        )
        _LIVE_HOSTS.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise HostError(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/system_stats", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise HostError(f"ComfyUI did not answer within {self.startup_timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self, *, frontend_root: Path | str | None = None) -> "ComfyHost":
        """Stop the server and start it again in the same base folder (models, inputs,
        outputs and log kept), serving ``frontend_root`` (None: the installed frontend)."""
        keep, self.keep_base_dir = self.keep_base_dir, True
        try:
            self.stop()
        finally:
            self.keep_base_dir = keep
        self.frontend_root = Path(frontend_root).resolve() if frontend_root else None
        self._final_log = None
        self._object_info = None
        self.port = None  # a fresh free port: nothing waits on the old one
        return self.start()

    def stop(self) -> None:
        """Stop the server (SIGTERM to its own pid, SIGKILL after 20 s) and clean up."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            _LIVE_HOSTS.discard(self)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        if self.base_dir is not None and self.log_path.exists():
            self._final_log = self.log_path.read_text(errors="replace")
        if self.base_dir is not None and not self.keep_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "ComfyHost":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- log
    def log_text(self) -> str:
        if self._final_log is not None and self.proc is None:
            return self._final_log
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def log_mark(self) -> int:
        """A position in the log; :meth:`log_since` returns what was written after it."""
        return len(self.log_text())

    def log_since(self, mark: int) -> str:
        return self.log_text()[mark:]

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    def pack_import_problems(self) -> list[str]:
        """Log lines that say this pack (or one of its node modules) failed to load."""
        problems = []
        for line in self.log_text().splitlines():
            if PACK_LOG_MARKER in line and ("failed" in line.lower() or "error" in line.lower()):
                problems.append(line)
            elif PACK_NAME in line and (
                "IMPORT FAILED" in line or "Cannot import" in line or "comfy_entrypoint" in line or "Skip " in line
            ):
                problems.append(line)
        return problems

    # -- models
    def add_model(self, folder: str, src: Path | str, name: str | None = None) -> Path:
        """Link (or copy, where links are impossible) a model file or folder into
        ``models/<folder>/`` and return its path there."""
        src = Path(src).resolve()
        dest_dir = self.models_dir / folder
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / (name or src.name)
        if dest.is_symlink() or dest.exists():
            if dest.resolve() == src:
                return dest
            raise HostError(f"{dest} exists already")
        try:
            dest.symlink_to(src, target_is_directory=src.is_dir())
        except OSError:
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest)
        return dest

    # -- HTTP
    def get(self, path: str, **params) -> requests.Response:
        r = requests.get(self.url + path, params=params or None, timeout=60)
        r.raise_for_status()
        return r

    def post(self, path: str, payload: Any = None) -> requests.Response:
        return requests.post(self.url + path, json=payload, timeout=60)

    def object_info(self, node_type: str | None = None, *, refresh: bool = False) -> dict:
        if node_type is not None:
            return self.get(f"/object_info/{node_type}").json().get(node_type, {})
        if self._object_info is None or refresh:
            self._object_info = self.get("/object_info").json()
        return self._object_info

    def pack_node_types(self) -> dict[str, dict]:
        """The ``/object_info`` entries of the nodes this pack registered."""
        return {
            k: v for k, v in self.object_info(refresh=True).items()
            if str(v.get("python_module", "")).startswith(f"custom_nodes.{PACK_NAME}")
        }

    def history(self, prompt_id: str) -> dict | None:
        return self.get(f"/history/{prompt_id}").json().get(prompt_id)

    def queue(self) -> dict:
        return self.get("/queue").json()

    def interrupt(self) -> None:
        self.post("/interrupt", {})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        self.post("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        return self.get("/view", filename=filename, subfolder=subfolder, type=type).content

    def output_files(self, result: PromptResult) -> list[Path]:
        """Paths on disk of every file the prompt's nodes reported (images, videos, ...)."""
        roots = {"output": self.output_dir, "temp": self.base_dir / "temp", "input": self.input_dir}
        files = []
        for node_out in result.outputs.values():
            for items in node_out.values():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if isinstance(item, dict) and "filename" in item:
                        files.append(roots[item.get("type", "output")] / item.get("subfolder", "") / item["filename"])
        return files

    # -- prompts
    def submit(self, prompt: dict, *, extra_data: dict | None = None) -> tuple[str | None, dict]:
        """Queue an API-format prompt. Returns ``(prompt_id, response)``; ``prompt_id`` is
        None when the server rejected it (the response then holds ``error`` and
        ``node_errors``)."""
        payload = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            payload["extra_data"] = extra_data
        r = self.post("/prompt", payload)
        try:
            body = r.json()
        except ValueError:
            raise HostError(f"/prompt answered {r.status_code}: {r.text[:2000]}") from None
        if r.status_code == 200:
            return body["prompt_id"], body
        if r.status_code == 400:
            return None, body
        raise HostError(f"/prompt answered {r.status_code}: {body}")

    def run(self, prompt: dict, *, timeout: float = 900.0, check: bool = False, extra_data: dict | None = None) -> PromptResult:
        """Submit ``prompt`` and follow it to its end; with ``check`` raise unless it succeeded.

        On timeout the prompt is interrupted and :class:`TimeoutError` raised.
        """
        ws = None
        try:
            ws = websocket.create_connection(
                f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=5, suppress_origin=True
            )
        except (OSError, websocket.WebSocketException):
            ws = None  # fall back to polling /history
        try:
            prompt_id, body = self.submit(prompt, extra_data=extra_data)
            if prompt_id is None:
                result = PromptResult(None, "rejected", node_errors=body.get("node_errors") or {}, error=body.get("error"))
            else:
                messages = self._follow(ws, prompt_id, time.monotonic() + timeout)
                result = self._collect(prompt_id, messages, time.monotonic() + 30)
        finally:
            if ws is not None:
                ws.close()
        if check:
            result.raise_for_status()
        return result

    def wait(self, prompt_id: str, *, timeout: float = 900.0) -> PromptResult:
        """Follow an already queued prompt (e.g. one queued by the frontend) by polling."""
        self._follow(None, prompt_id, time.monotonic() + timeout)
        return self._collect(prompt_id, [], time.monotonic() + 30)

    def _follow(self, ws, prompt_id: str, deadline: float) -> list[dict]:
        messages: list[dict] = []
        while True:
            if not self.alive:
                raise HostError(f"ComfyUI died while running prompt {prompt_id}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.interrupt()
                raise TimeoutError(f"prompt {prompt_id} did not finish in time:\n{self.log_tail()}")
            if ws is None:
                if self.history(prompt_id) is not None:
                    return messages
                time.sleep(0.25)
                continue
            try:
                raw = ws.recv()
            except websocket.WebSocketTimeoutException:
                # a missed message must not hang us: /history knows when it ended
                if self.history(prompt_id) is not None:
                    return messages
                continue
            except (OSError, websocket.WebSocketException):
                ws = None
                continue
            if not isinstance(raw, str):
                continue  # binary preview frames
            msg = json.loads(raw)
            data = msg.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if msg.get("type") in ("executing", "executed", "execution_error", "execution_interrupted",
                                   "execution_success", "execution_cached", "execution_start", "progress"):
                if "prompt_id" in data:
                    messages.append(msg)
            kind = msg.get("type")
            if kind in ("execution_success", "execution_error", "execution_interrupted"):
                return messages
            if kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return messages

    def _collect(self, prompt_id: str, messages: list[dict], deadline: float) -> PromptResult:
        hist = self.history(prompt_id)
        while hist is None or not (hist.get("status") or {}).get("completed") and not _status_messages(hist):
            if time.monotonic() > deadline:
                raise HostError(f"no history for prompt {prompt_id}")
            time.sleep(0.2)
            hist = self.history(prompt_id)
        status_msgs = _status_messages(hist)
        error = next((d for k, d in status_msgs if k == "execution_error"), None)
        if error is None:
            error = next((m["data"] for m in messages if m["type"] == "execution_error"), None)
        interrupted = any(k == "execution_interrupted" for k, _ in status_msgs)
        if error is not None:
            status = "error"
        elif interrupted:
            status = "interrupted"
        elif (hist.get("status") or {}).get("status_str") == "success":
            status = "success"
        else:
            status = "error"
        return PromptResult(prompt_id, status, outputs=hist.get("outputs") or {}, error=error,
                            messages=messages, history=hist)

    # -- workflows
    def to_api(self, workflow: dict) -> dict:
        """A UI-format workflow as an API-format prompt (API-format input is returned as is)."""
        if is_api_prompt(workflow):
            return workflow
        return workflow_to_prompt(workflow, self.object_info(refresh=True))

    def run_workflow(self, workflow: dict | Path | str, **kw) -> PromptResult:
        if not isinstance(workflow, dict):
            workflow = json.loads(Path(workflow).read_text())
        return self.run(self.to_api(workflow), **kw)


def _status_messages(hist: dict) -> list[tuple[str, dict]]:
    return [tuple(m) for m in (hist.get("status") or {}).get("messages") or []
            if m and m[0] in ("execution_error", "execution_interrupted", "execution_success")]


_LIVE_HOSTS: set[ComfyHost] = set()


@atexit.register
def _stop_leftover_hosts() -> None:  # a crashed test session must not leave servers behind
    for host in list(_LIVE_HOSTS):
        host.stop()
