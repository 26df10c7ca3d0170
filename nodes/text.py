"""Text encode: prompt and negative prompt -> the Kandinsky Video conditioning (an
adapter of ``kv_core.stages.text.encode_prompt``).

What the encoder reads of each prompt (tokens read, unknown, dropped; see
``kv_core.text.PromptReport``) is shown on the node, kept as its ``text`` UI output (in
``/history``) and, when part of a prompt is lost, logged as a warning. The run goes on.
"""
from __future__ import annotations

import logging

import torch

import comfy.model_management as mm
from comfy_api.latest import io, ui

from ..kv_core.conditioning import TextCondition
from ..kv_core.stages.text import encode_prompt
from ..kv_core.text import PromptReport
from ..kv_core.stages import Hooks
from . import sockets
from .inputs import CATEGORY
from .networks import Network, stage
from .progress import StepProgress

logger = logging.getLogger(__name__)


def _on_host(cond: TextCondition) -> TextCondition:
    """The condition's contexts as float32 and its masks, on the intermediate device."""
    device = mm.intermediate_device()
    return TextCondition(*(None if t is None else t.to(device, torch.float32 if t.is_floating_point() else t.dtype)
                           for t in (cond.context, cond.context_mask, cond.negative_context, cond.negative_mask)))


def prompt_reports(network: Network, prompts: dict[str, str]) -> tuple[str, dict[str, PromptReport]]:
    """``(text shown on the node, {label: report})`` for ``{label: prompt}``; logs a warning
    for each prompt the encoder reads only in part."""
    text = network.module.text_encoder
    reports = {label: text.report(prompt) for label, prompt in prompts.items()}
    lines = []
    for label, report in reports.items():
        lines.append(report.summary(label))
        lines += [f"  ! {problem}" for problem in report.problems()]
        if not report.ok:
            logger.warning("Kandinsky Video Text Encode: %s", report.message(label))
    return "\n".join(lines), reports


def show_text(node_id, text: str) -> None:
    """Show ``text`` on the node in the ComfyUI frontend (the progress-text preview that core
    API nodes use); nothing when there is no server (or no node id). Frontends up to about
    1.3x keep that preview after the run; newer ones (1.58.1) clear it when the run ends, and
    there ``web/token_report.js`` shows the node's ``text`` UI output (ui.PreviewText) instead."""
    try:
        from server import PromptServer
    except ImportError:  # pragma: no cover - outside ComfyUI
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is not None and node_id is not None:
        instance.send_progress_text(text, node_id)


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
                sockets.TextEncoder.Input("text_encoder", tooltip="From Load Kandinsky Video Text Encoder."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="What the video shows, in English (Flan-UL2 was trained on English). "
                                        "Up to 127 tokens are read (tokens_length 128); the node shows how "
                                        "many were read, unknown or dropped."),
                io.String.Input("negative_prompt", multiline=True, default="",
                                tooltip="What to steer away from. Leave empty for the release's behaviour "
                                        "(null-text guidance)."),
            ],
            outputs=[sockets.Conditioning.Output(display_name="conditioning")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, text_encoder, prompt, negative_prompt="") -> io.NodeOutput:
        negative = negative_prompt if negative_prompt and negative_prompt.strip() else None
        shown, _ = prompt_reports(text_encoder, {"prompt": prompt, **({"negative prompt": negative} if negative else {})})
        show_text(cls.hidden.unique_id if cls.hidden is not None else None, shown)
        bar = StepProgress(2 if negative else 1)
        with torch.inference_mode(), stage(text_encoder) as device:
            # the node reports what the encoder reads (above): no PromptWarning from kv_core
            cond = encode_prompt(text_encoder.module.text_encoder, prompt, negative, warn=False,
                                 hooks=Hooks(device=device, progress=bar))
        return io.NodeOutput(sockets.TextConditioning(prompt, negative_prompt or "", _on_host(cond)),
                             ui=ui.PreviewText(shown))


NODES = [KandinskyVideoTextEncode]
