"""Text encode: prompt and negative prompt -> the Kandinsky Video conditioning."""
from __future__ import annotations

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..kv_core.text import PROJECTION_LABELS
from . import common
from .common import CATEGORY


def encode_texts(network: common.Network, prompts: list[str]) -> list[dict]:
    """``[{label: (context [1, L, D], mask [1, L])}]`` for each prompt, on the intermediate
    device. Runs the Flan-UL2 encoder on its load device (partially loaded if needed)."""
    text = network.module.text_encoder
    out = []
    bar = common.StepProgress(len(prompts))
    with common.stage(network) as device:
        for i, prompt in enumerate(prompts):
            ids, mask = text.tokenize(prompt)
            mask = mask.to(device)
            hidden = text.encoder(input_ids=ids.to(device), attention_mask=mask).last_hidden_state
            projected = text.project(hidden, mask, PROJECTION_LABELS)
            out.append({label: (ctx.float().to(mm.intermediate_device()), m.to(mm.intermediate_device()))
                        for label, (ctx, m) in projected.items()})
            bar(i + 1, len(prompts))
    return out


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
                                tooltip="What the video shows. Up to 128 tokens are used."),
                io.String.Input("negative_prompt", multiline=True, default="",
                                tooltip="What to steer away from. Leave empty for the release's behaviour "
                                        "(null-text guidance)."),
            ],
            outputs=[common.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, text_encoder, prompt, negative_prompt="") -> io.NodeOutput:
        negative = negative_prompt if negative_prompt and negative_prompt.strip() else None
        with torch.inference_mode():
            encoded = encode_texts(text_encoder, [prompt] + ([negative] if negative else []))
        return io.NodeOutput(common.TextConditioning(prompt, negative_prompt or "", encoded[0],
                                                     encoded[1] if negative else None))


NODES = [KandinskyVideoTextEncode]
