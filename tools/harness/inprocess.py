"""ComfyUI's modules and this pack inside the current process, without a server.

For the tests and benchmarks that call the pack's host glue and nodes directly (the
core-sampling path against the pack's loops, the previews): :func:`comfy_modules` puts a
ComfyUI checkout first on ``sys.path`` while it is open (the only place in the project that
edits ``sys.path``: everything else imports from the repository root, which pytest's
``pythonpath`` setting and ``python -m`` put there) and sets ComfyUI's command-line options
as ``main.py --cpu`` would; :func:`import_pack` then imports this repository as a package,
as ComfyUI's custom-node loader does from ``custom_nodes/``, so the node modules' relative
imports (``from ..kv_core``) resolve.

The ComfyUI checkout is ``$COMFYUI_PATH`` when set, otherwise the pinned one under the cache
(:func:`comfyui_checkout`); nothing is installed here.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import pkgutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator, Optional

from .install import REPO_ROOT, cache_root

#: The module name the pack is imported under (ComfyUI uses the folder name; any name works).
PACK_MODULE = "kvpack"


def comfyui_checkout() -> Optional[Path]:
    """``$COMFYUI_PATH``, or the pinned ComfyUI under the cache; None when neither holds
    ComfyUI's modules (``comfy/samplers.py``)."""
    path = Path(os.environ.get("COMFYUI_PATH") or cache_root() / "comfyui")
    return path if (path / "comfy" / "samplers.py").is_file() else None


@contextlib.contextmanager
def comfy_modules(comfyui: Path, *, preview_method: str = "latent2rgb") -> Iterator[None]:
    """ComfyUI's modules importable while open, with the options of ``main.py --cpu
    --preview-method <preview_method>`` (``none``, ``auto``, ``latent2rgb``, ``taesd``).

    The options are set before ``comfy.model_management`` is first imported, which reads
    ``--cpu`` once; in a process that already imported it they apply only as far as
    ComfyUI reads them at call time (the preview method does). On leaving, the checkout
    leaves ``sys.path`` again, so later imports of the same names (ComfyUI has top-level
    modules such as ``nodes``, ``utils`` and ``server``) find their own modules; the modules
    already imported stay loaded."""
    entry = str(comfyui)
    sys.path.insert(0, entry)
    try:
        from comfy.cli_args import LatentPreviewMethod, args

        args.cpu = True
        args.preview_method = LatentPreviewMethod(preview_method)
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def import_pack() -> ModuleType:
    """This repository imported as the package :data:`PACK_MODULE` with every node module
    (``<pack>.nodes`` and the modules it registers). Call it inside :func:`comfy_modules`;
    a second call returns the same package."""
    pack = sys.modules.get(PACK_MODULE)
    if pack is None:
        spec = importlib.util.spec_from_file_location(PACK_MODULE, REPO_ROOT / "__init__.py",
                                                      submodule_search_locations=[str(REPO_ROOT)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules[PACK_MODULE] = pack
        try:
            spec.loader.exec_module(pack)
        except BaseException:
            del sys.modules[PACK_MODULE]
            raise
    nodes = importlib.import_module(f"{PACK_MODULE}.nodes")
    for info in pkgutil.iter_modules(nodes.__path__):  # every node module; an import error is raised
        if not info.name.startswith("_") and not info.ispkg:
            importlib.import_module(f"{nodes.__name__}.{info.name}")
    return pack
