"""The text stage: a prompt (and an optional negative prompt) -> the ``TextCondition`` every
sampling stage takes.

The encoder is a ``kv_core.text.TextEncoder`` (T5 tokenizer, Flan-UL2 encoder, the two
projections): the release encodes with ``projection_base`` for the first frame, the
keyframes and the interpolation. An empty or blank negative prompt counts as none: the
unconditional passes then use the reference's null text (``kv_core.conditioning``).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..conditioning import TextCondition
from ..models.text_projection import PROJECTION_BASE
from . import NO_HOOKS, Hooks


def encode_prompt(text_encoder, prompt: str, negative_prompt: Optional[str] = None, *, warn: bool = True,
                  hooks: Hooks = NO_HOOKS) -> TextCondition:
    """Encode a prompt (and an optional negative prompt) with ``projection_base``.

    ``text_encoder``: a ``kv_core.text.TextEncoder`` (its :meth:`~kv_core.text.TextEncoder.encode`)
    or any callable ``prompt -> (context [1, L, D], mask [1, L])``. ``warn``: a
    ``PromptWarning`` for a prompt read only in part (a host that reports it itself turns
    it off). ``hooks``: ``device`` where the T5 encoder runs (default: its parameters'
    device), ``progress(done, total)`` after each prompt. The contexts come back as the encoder makes
    them, on its device.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise ValueError(f"negative_prompt must be a string or None, got {type(negative_prompt).__name__}")
    prompts = [prompt] if negative_prompt is None or not negative_prompt.strip() else [prompt, negative_prompt]

    def run(text):
        if not hasattr(text_encoder, "encode"):
            return text_encoder(text)
        return text_encoder.encode(text, (PROJECTION_BASE,), device=hooks.device, warn=warn)[PROJECTION_BASE]

    encoded = []
    with torch.inference_mode():
        for i, text in enumerate(prompts):
            encoded.append(run(text))
            if hooks.progress is not None:
                hooks.progress(i + 1, len(prompts))
    return TextCondition(*encoded[0], *(encoded[1] if len(encoded) > 1 else ()))
