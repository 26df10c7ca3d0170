"""Prompt-cache glue shared by Text Encode and Load Encoded Prompt: the server's cache as the
environment sets it (:func:`prompt_cache`), the cache identity of a queued prompt's Load
Text Encoder (:func:`loader_identity`), the text a node shows of what the encoder read
(:func:`report_text`) and a condition moved to the intermediate device (:func:`on_host`).

Where the cache lives: ``$KANDINSKY_VIDEO_PROMPT_CACHE`` (a folder; ``off`` turns the cache
off for the whole server), else ``<ComfyUI user directory>/kandinsky_video/prompt_cache``;
at most ``$KANDINSKY_VIDEO_PROMPT_CACHE_MB`` megabytes (default 1024), least recently used
entries removed first.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

import comfy.model_management as mm

from ...kv_core.conditioning import TextCondition
from ...kv_core.prompt_cache import DEFAULT_MAX_BYTES, PromptCache
from ...kv_core.text import PromptReport
from .text_plan import text_plan

logger = logging.getLogger(__name__)


def on_host(cond: TextCondition) -> TextCondition:
    """The condition's contexts as float32 and its masks, on the intermediate device."""
    device = mm.intermediate_device()
    return TextCondition(*(None if t is None else t.to(device, torch.float32 if t.is_floating_point() else t.dtype)
                           for t in (cond.context, cond.context_mask, cond.negative_context, cond.negative_mask)))


def report_text(reports: dict[str, PromptReport]) -> str:
    """The text shown on the node for ``{label: report}``; logs a warning for each prompt
    the encoder reads only in part."""
    lines = []
    for label, report in reports.items():
        lines.append(report.summary(label))
        lines += [f"  ! {problem}" for problem in report.problems()]
        if not report.ok:
            logger.warning("Kandinsky Video Text Encode: %s", report.message(label))
    return "\n".join(lines)


# --------------------------------------------------------------------------- the prompt cache

CACHE_ENV = "KANDINSKY_VIDEO_PROMPT_CACHE"
CACHE_MB_ENV = "KANDINSKY_VIDEO_PROMPT_CACHE_MB"
_OFF = ("off", "0", "false", "no", "none")
LOADER = "KandinskyVideoTextEncoderLoader"


def prompt_cache() -> PromptCache:
    """The server's prompt cache, as the environment sets it (see the module docstring)."""
    import folder_paths

    where = os.environ.get(CACHE_ENV, "").strip()
    enabled = where.lower() not in _OFF
    folder = where if where and enabled else os.path.join(folder_paths.get_user_directory(), "kandinsky_video",
                                                          "prompt_cache")
    max_bytes = DEFAULT_MAX_BYTES
    mb = os.environ.get(CACHE_MB_ENV, "").strip()
    if mb:
        try:
            max_bytes = int(float(mb) * (1 << 20))
            if max_bytes < 0:
                raise ValueError
        except ValueError:
            logger.warning("Kandinsky Video prompt cache: %s=%r is not a size in megabytes; using %d", CACHE_MB_ENV,
                           mb, DEFAULT_MAX_BYTES >> 20)
            max_bytes = DEFAULT_MAX_BYTES
    return PromptCache(os.path.expanduser(folder), max_bytes=max_bytes, enabled=enabled)


def loader_identity(prompt: Optional[dict], node_id, input_name: str = "text_encoder"):
    """The cache identity of the text encoder a queued prompt wires to ``input_name`` of
    node ``node_id``, from the Load Text Encoder node's widget values, without loading it;
    None when it cannot be known that way (not wired straight to that loader, an input fed
    by a link, files that do not resolve)."""
    if not isinstance(prompt, dict) or node_id is None:
        return None
    link = (prompt.get(str(node_id)) or {}).get("inputs", {}).get(input_name)
    if not (isinstance(link, list) and len(link) == 2):
        return None
    source = prompt.get(str(link[0])) or {}
    inputs = source.get("inputs") or {}
    if source.get("class_type") != LOADER or any(isinstance(v, list) for v in inputs.values()):
        return None
    try:
        return text_plan(inputs["text_encoder_name"], inputs["projections_name"], inputs.get("weight_dtype", "default"),
                         inputs.get("device", "default")).identity()
    except Exception as err:  # the loader itself says what is wrong when it runs
        logger.debug("Kandinsky Video Text Encode: no cache identity from the loader's inputs: %s", err)
        return None
