"""Text encode: prompt and negative prompt -> the Kandinsky Video conditioning (an
adapter of ``kv_core.stages.text.encode_prompt``).

What the encoder reads of each prompt (tokens read, unknown, dropped; see
``kv_core.text.PromptReport``) is shown on the node, kept as its ``text`` UI output (in
``/history``) and, when part of a prompt is lost, logged as a warning. The run goes on.
The node shows it as progress text (frontends up to about 1.3x keep that preview after the
run; newer ones, e.g. 1.58.1, clear it when the run ends, and there ``web/token_report.js``
shows the ``text`` output instead), both as ``nodes.host.ui_text.plain`` text: the report quotes
the prompt, which must never reach a frontend as markup.

Encoded prompts are kept on disk (``kv_core.prompt_cache``): the node's ``text_encoder``
input is lazy, and the node asks the host for it only when a prompt is not in the cache, so
a run whose prompts are all cached never runs Load Text Encoder (its weights are not read).
The cache key needs the loader's files and dtypes before the loader runs: the node reads
them from the queued prompt (the loader node wired to ``text_encoder``, its inputs as
widget values) and fingerprints the files. When it cannot (another node in between, an
input fed by a link), it asks for the encoder and uses the cache after loading.

Where the cache lives: ``$KANDINSKY_VIDEO_PROMPT_CACHE`` (a folder; ``off`` turns the cache
off for the whole server), else ``<ComfyUI user directory>/kandinsky_video/prompt_cache``;
at most ``$KANDINSKY_VIDEO_PROMPT_CACHE_MB`` megabytes (default 1024), least recently used
entries removed first. The node's ``use_cache`` switch turns it off for one node.
"""
from __future__ import annotations

import logging

import torch

from comfy_api.latest import io, ui

from ..kv_core.prompt_cache import EncodedPrompt, encode_prompt_cached
from .host import sockets
from .host.inputs import CATEGORY
from .host.networks import stage
from .host.progress import StepProgress
from .host.ui_text import plain, send_progress_text
from .host.prompt_cache import loader_identity, on_host, prompt_cache, report_text

logger = logging.getLogger(__name__)


_PENDING: dict[tuple, EncodedPrompt] = {}  # cache hits found by check_lazy_status, for execute
_PENDING_LIMIT = 16


class KandinskyVideoTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KandinskyVideoTextEncode",
            display_name="Kandinsky Video Text Encode",
            category=f"{CATEGORY}/conditioning",
            description=("Encodes the prompt with Flan-UL2 and both Kandinsky Video projections. A blank "
                         "negative prompt gives the release's null-text guidance; a negative prompt "
                         "replaces it in every unconditional pass (the release ignores it)."),
            inputs=[
                sockets.TextEncoder.Input("text_encoder", lazy=True,
                                          tooltip="From Load Kandinsky Video Text Encoder. Loaded only when a prompt "
                                                  "is not in the prompt cache."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="What the video shows, in English (Flan-UL2 was trained on English). "
                                        "Up to 127 tokens are read (tokens_length 128); the node shows how "
                                        "many were read, unknown or dropped."),
                io.String.Input("negative_prompt", multiline=True, default="",
                                tooltip="What to steer away from. Leave empty for the release's behaviour "
                                        "(null-text guidance)."),
                io.Boolean.Input("use_cache", default=True, optional=True,
                                 tooltip="Keep encoded prompts on disk (user/kandinsky_video/prompt_cache, or "
                                         "the folder in KANDINSKY_VIDEO_PROMPT_CACHE) and reuse them: a known "
                                         "prompt does not load the text encoder at all."),
            ],
            outputs=[sockets.Conditioning.Output(display_name="conditioning")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def _hidden(cls, name: str):
        return getattr(cls.hidden, name, None) if cls.hidden is not None else None

    @classmethod
    def check_lazy_status(cls, text_encoder=None, prompt="", negative_prompt="", use_cache=True, **_) -> list[str]:
        """Ask for the encoder unless the prompt pair is in the cache."""
        if text_encoder is not None:
            return []
        if not use_cache:
            return ["text_encoder"]
        cache = prompt_cache()
        identity = loader_identity(cls._hidden("prompt"), cls._hidden("unique_id")) if cache.enabled else None
        if identity is None:
            return ["text_encoder"]
        entry = cache.get(identity.key(prompt, negative_prompt))
        if entry is None or entry.prompt != prompt:
            return ["text_encoder"]
        if len(_PENDING) >= _PENDING_LIMIT:
            _PENDING.clear()
        _PENDING[(cls._hidden("unique_id"), identity.key(prompt, negative_prompt))] = entry
        return []

    @classmethod
    def execute(cls, text_encoder, prompt, negative_prompt="", use_cache=True) -> io.NodeOutput:
        node_id = cls._hidden("unique_id")
        cache = prompt_cache() if use_cache else None
        if text_encoder is None:  # check_lazy_status found the prompts in the cache
            entry = next((_PENDING.pop(k) for k in list(_PENDING) if k[0] == node_id
                          and _PENDING[k].prompt == prompt), None)
            if entry is None:
                raise RuntimeError("Kandinsky Video Text Encode: the cached encoding of this prompt disappeared "
                                   "before the node ran (another process cleared the prompt cache); queue the "
                                   "prompt again")
            hit = True
        else:
            bar = StepProgress(2 if negative_prompt and negative_prompt.strip() else 1)
            with torch.inference_mode(), stage(text_encoder) as device:
                # the node reports what the encoder reads (below): no PromptWarning from kv_core
                entry, hit = encode_prompt_cached(text_encoder.module.text_encoder, prompt, negative_prompt,
                                                  identity=text_encoder.text_identity, cache=cache, device=device,
                                                  warn=False, progress=bar)
        shown = report_text(entry.reports)
        if hit:
            shown += "\n(from the prompt cache: the text encoder was not run)"
        shown = plain(shown)  # what the frontends show: never markup (nodes/host/ui_text.py)
        send_progress_text(node_id, shown)
        conditioning = sockets.TextConditioning(prompt, negative_prompt or "", on_host(entry.condition),
                                                reports=dict(entry.reports), identity=entry.identity)
        return io.NodeOutput(conditioning, ui=ui.PreviewText(shown))


NODES = [KandinskyVideoTextEncode]
