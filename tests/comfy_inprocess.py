"""The pinned ComfyUI's modules and this pack (as the package ``kvpack``) in the test's own
process, without a server (as tests/test_core_sampling.py does)."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMFYUI = Path(os.environ.get("KV_CACHE_DIR", REPO / ".cache")) / "comfyui"


def import_pack(*modules: str):
    """Import ComfyUI (``--cpu``) and the pack's ``modules`` (e.g. ``"nodes.loaders"``);
    returns the pack. Skips the test when ComfyUI is not installed."""
    if not (COMFYUI / "comfy" / "samplers.py").exists():
        pytest.skip(f"no ComfyUI at {COMFYUI} (scripts/test.sh installs it)")
    if str(COMFYUI) not in sys.path:
        sys.path.insert(0, str(COMFYUI))
    from comfy.cli_args import args
    args.cpu = True
    import comfy.samplers  # noqa: F401

    if "kvpack" not in sys.modules:
        spec = importlib.util.spec_from_file_location("kvpack", REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["kvpack"] = pack
        spec.loader.exec_module(pack)
    for name in modules:
        importlib.import_module(f"kvpack.{name}")
    return sys.modules["kvpack"]


def release_path() -> None:
    """Take ComfyUI off ``sys.path`` again (later imports in the worker find their own modules)."""
    if str(COMFYUI) in sys.path:
        sys.path.remove(str(COMFYUI))
