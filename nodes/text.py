"""Text encode: prompt and negative prompt -> the Kandinsky Video conditioning.

What the encoder reads of each prompt (tokens read, unknown, dropped; see
``kv_core.text.PromptReport``) is shown on the node, kept as its ``text`` UI output (in
``/history``) and, when part of a prompt is lost, logged as a warning. The run goes on.
"""
from __future__ import annotations

import logging

import torch

import comfy.model_management as mm
from comfy_api.latest import io, ui

from ..kv_core.text import PROJECTION_LABELS, PromptReport
from . import common
from .common import CATEGORY

logger = logging.getLogger(__name__)


def encode_texts(network: common.Network, prompts: list[str]) -> list[dict]:
    """``[{label: (context [1, L, D], mask [1, L])}]`` for each prompt, on the intermediate
    device. Runs the Flan-UL2 encoder on its load device (partially loaded if needed)."""
    text = network.module.text_encoder
    out = []
    bar = common.StepProgress(len(prompts))
    with common.stage(network) as device:
        for i, prompt in enumerate(prompts):
            ids, mask = text.tokenize(prompt, warn=False)  # the node reports (prompt_reports)
            mask = mask.to(device)
            hidden = text.encoder(input_ids=ids.to(device), attention_mask=mask).last_hidden_state
            projected = text.project(hidden, mask, PROJECTION_LABELS)
            out.append({label: (ctx.float().to(mm.intermediate_device()), m.to(mm.intermediate_device()))
                        for label, (ctx, m) in projected.items()})
            bar(i + 1, len(prompts))
    return out


def prompt_reports(network: common.Network, prompts: dict[str, str]) -> tuple[str, dict[str, PromptReport]]:
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
                common.TextEncoder.Input("text_encoder", tooltip="From Load Kandinsky Video Text Encoder."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="What the video shows, in English (Flan-UL2 was trained on English). "
                                        "Up to 127 tokens are read (tokens_length 128); the node shows how "
                                        "many were read, unknown or dropped."),
                io.String.Input("negative_prompt", multiline=True, default="",
                                tooltip="What to steer away from. Leave empty for the release's behaviour "
                                        "(null-text guidance)."),
            ],
            outputs=[common.Conditioning.Output(display_name="conditioning")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, text_encoder, prompt, negative_prompt="") -> io.NodeOutput:
        negative = negative_prompt if negative_prompt and negative_prompt.strip() else None
        shown, _ = prompt_reports(text_encoder, {"prompt": prompt, **({"negative prompt": negative} if negative else {})})
        show_text(cls.hidden.unique_id if cls.hidden is not None else None, shown)
        with torch.inference_mode():
            encoded = encode_texts(text_encoder, [prompt] + ([negative] if negative else []))
        return io.NodeOutput(common.TextConditioning(prompt, negative_prompt or "", encoded[0],
                                                     encoded[1] if negative else None),
                             ui=ui.PreviewText(shown))


NODES = [KandinskyVideoTextEncode]
