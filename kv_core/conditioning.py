"""Text conditioning as the U-Nets take it: the prompt's :class:`TextCondition`, the one
null-text builder, the guidance contexts of a sampling step and classifier-free guidance.

The unconditional ("null text") context of a U-Net has the length of the prompt's:
zeros, the U-Net's learned ``null_embedding`` at position 0 and mask ``[1, 0, 0, ...]``
(:func:`null_text`). A negative prompt replaces it in every unconditional pass
(:func:`guidance_contexts`). Guidance is combined on the model output (or equally on x0:
every formula's weights sum to 1): ``cfg(cond, uncond, w) = (w + 1) cond - w uncond`` for
the first frame and interpolation; the keyframes' three-way formula is their stage's
(``kv_core.stages.keyframes.keyframe_guidance``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class TextCondition:
    """Text conditioning of one video.

    ``context`` ``[1 or B, L, D]`` float and ``context_mask`` ``[1 or B, L]`` (int or bool)
    as the text encoder returns them (``projection_base``). With a negative prompt,
    ``negative_context``/``negative_mask`` replace the null-embedding context in every
    unconditional pass; without one the unconditional context is the reference's: zeros
    of the same length with the stage's null embedding at position 0 and mask ``[1, 0, …]``.
    """

    context: torch.Tensor
    context_mask: torch.Tensor
    negative_context: Optional[torch.Tensor] = None
    negative_mask: Optional[torch.Tensor] = None

    def __post_init__(self):
        _check_context(self.context, self.context_mask, "context")
        if (self.negative_context is None) != (self.negative_mask is None):
            raise ValueError("negative_context and negative_mask must be given together")
        if self.negative_context is not None:
            _check_context(self.negative_context, self.negative_mask, "negative_context")
            if self.negative_context.shape[-1] != self.context.shape[-1]:
                raise ValueError("negative_context and context must have the same width D")


def _check_context(context, mask, name):
    if not isinstance(context, torch.Tensor) or context.ndim != 3:
        raise ValueError(f"{name} must be a tensor [B, L, D]")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(context.shape[:2]):
        raise ValueError(f"{name} mask must be a tensor [B, L] matching {name} {tuple(context.shape)}")


def check_context_width(cond: TextCondition, null_embedding: torch.Tensor, network: str) -> None:
    """Refuse a conditioning whose context width is not the U-Net's (its null embedding's):
    the text projections and the U-Net are then not from one release."""
    want, got = int(null_embedding.shape[-1]), int(cond.context.shape[-1])
    if got != want:
        raise ValueError(f"The conditioning is {got}-wide but the {network} takes {want}-wide contexts: the "
                         "text projections and the U-Net are not from the same release.")


# --- the null text ------------------------------------------------------------------------

def null_text(context: torch.Tensor, mask: torch.Tensor, null_embedding: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The "null text" context matching ``context`` ``[B, L, D]`` / ``mask`` ``[B, L]``.

    Returns zeros ``[B, L, D]`` with ``null_embedding`` ``[D]`` at position 0 of every row,
    and a mask of the same dtype as ``mask`` that is 1 at position 0 and 0 elsewhere.
    """
    uncond = torch.zeros_like(context)
    uncond[:, 0] = null_embedding.to(device=context.device, dtype=context.dtype)
    uncond_mask = torch.zeros_like(mask)
    uncond_mask[:, 0] = 1
    return uncond, uncond_mask


def null_condition(null_embedding: torch.Tensor) -> TextCondition:
    """The ``TextCondition`` of no prompt: the null text of length 1 (the null embedding,
    mask ``[1]``, on the CPU, float32) for the conditional pass too, so guidance has no text
    direction and only the frames condition the result."""
    width = int(null_embedding.shape[-1])
    context, mask = null_text(torch.zeros(1, 1, width), torch.zeros(1, 1, dtype=torch.bool),
                              null_embedding.detach().float().cpu())
    return TextCondition(context, mask)


# --- the contexts of a guided step --------------------------------------------------------

def _rows(t: torch.Tensor, rows: int, what: str) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    if t.shape[0] == 1:
        return t.expand(rows, *t.shape[1:])
    raise ValueError(f"{what} has batch {t.shape[0]}; expected 1 or {rows}")


def pad_length(context: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``context`` ``[B, L, D]`` / ``mask`` ``[B, L]`` zero-padded (mask 0) to ``length`` positions."""
    extra = length - context.shape[1]
    if extra == 0:
        return context, mask
    return F.pad(context, (0, 0, 0, extra)), F.pad(mask, (0, extra))


def guidance_contexts(cond: TextCondition, null_embedding: torch.Tensor, rows: int, device,
                      dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conditional and unconditional contexts of ``rows`` rows each, same length L, from
    ``cond`` and the U-Net's ``null_embedding`` ``[D]``.

    Returns ``(context, mask, uncond_context, uncond_mask)`` on ``device``, masks bool.
    A negative prompt of another length is zero-padded (mask 0) with the prompt to the
    longer of the two.
    """
    ctx = _rows(cond.context, rows, "context").to(device=device, dtype=dtype)
    mask = _rows(cond.context_mask, rows, "context_mask").to(device=device)
    if cond.negative_context is None:
        uc, um = null_text(ctx, mask, null_embedding)
    else:
        uc = _rows(cond.negative_context, rows, "negative_context").to(device=device, dtype=dtype)
        um = _rows(cond.negative_mask, rows, "negative_mask").to(device=device, dtype=mask.dtype)
        length = max(ctx.shape[1], uc.shape[1])
        ctx, mask = pad_length(ctx, mask, length)
        uc, um = pad_length(uc, um, length)
    return ctx, mask.bool(), uc, um.bool()


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """First frame and interpolation: ``(w + 1) cond - w uncond`` (a core CFG of ``w + 1``)."""
    return (scale + 1.0) * cond - scale * uncond
