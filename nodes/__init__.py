"""The pack's ComfyUI extension: gathers the node classes of every module of this package.

Every module directly in this package is a node module: it exports a list ``NODES`` of
its ``io.ComfyNode`` classes. What they share (sockets, the LATENT record, inputs, loaded
networks, progress...) is host glue in the sub-package ``nodes/host/``, which defines no
node. This package imports the node modules in name order (skipping ``_private`` ones and
sub-packages) and registers every class listed.
Each class gets the pack's presentation (:mod:`.host.presentation`: expert inputs marked
advanced, search aliases) where the host supports it.
A module that fails to import is reported in the server log with the marker
``[Kandinsky Video]`` and its traceback, and the others still load, so one broken stage
never hides the rest of the pack.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil

from comfy_api.latest import ComfyExtension, io

from .host.presentation import present

LOG_MARKER = "[Kandinsky Video]"
logger = logging.getLogger(__name__)


def collect_nodes() -> list[type[io.ComfyNode]]:
    """Node classes of all modules of this package, in module-name order.

    Raises ``ValueError`` when two classes claim the same node id: ids are global in
    ComfyUI, and a silent overwrite would break saved workflows.
    """
    classes: list[type[io.ComfyNode]] = []
    owners: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.ispkg:  # host/ is glue, not nodes
            continue
        try:
            module = importlib.import_module(f".{info.name}", __name__)
        except Exception:
            logger.exception("%s failed to import nodes/%s.py; its nodes are unavailable", LOG_MARKER, info.name)
            continue
        for cls in getattr(module, "NODES", ()):
            node_id = cls.GET_SCHEMA().node_id
            if node_id in owners:
                raise ValueError(f"node id {node_id!r} defined in nodes/{owners[node_id]}.py and nodes/{info.name}.py")
            owners[node_id] = info.name
            classes.append(present(cls))
    return classes


class KandinskyVideoExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        nodes = collect_nodes()
        logger.info("%s loaded %d nodes", LOG_MARKER, len(nodes))
        return nodes


async def comfy_entrypoint() -> KandinskyVideoExtension:
    return KandinskyVideoExtension()
