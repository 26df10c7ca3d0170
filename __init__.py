"""ComfyUI entry point of the Kandinsky Video 1.1 node pack.

ComfyUI imports this folder as a package (named after the folder) from its
``custom_nodes/`` and calls :func:`comfy_entrypoint`, the V3 extension API. There is
deliberately no ``NODE_CLASS_MAPPINGS`` here: ComfyUI ignores the entry point when a
package defines one.

Outside ComfyUI (pytest imports this file too, because the repository root is a package)
there is no ``comfy_api`` and nothing is registered; ``kv_core`` stays importable alone.
"""
import importlib.util

if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint

    #: Frontend extension: web/token_report.js keeps the Text Encode token report on the node.
    WEB_DIRECTORY = "./web"
    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
