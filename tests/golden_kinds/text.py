"""Golden runner for the text conditioning (kind ``text_condition``).

The T5 stack is replaced by the case's ``last_hidden_state``: the runner checks the two
projections of the case's ``t5_projections.pt``, the zeroing of padded positions, the
truncation to ``max(mask.sum) + 1`` and the unconditional contexts built from the null
embeddings of the case's ``t2v.pt`` and ``interpolation.pt``.
"""
from golden_support import GoldenCase, golden_kind

from kv_core.checkpoints import load_null_embedding, load_text_projections
from kv_core.conditioning import null_text
from kv_core.models.text_projection import PROJECTION_BASE, PROJECTION_INTERPOLATION
from kv_core.text import project_context

# output suffix of each projection label, and the U-Net file whose null embedding pairs with it
_LABELS = {PROJECTION_BASE: ("base", "t2v", "t2v.pt"),
           PROJECTION_INTERPOLATION: ("interpolation", "interpolation", "interpolation.pt")}


@golden_kind("text_condition")
def run_text_condition(case: GoldenCase) -> dict:
    projections = load_text_projections(case.path("t5_projections.pt"))
    hidden = case.inputs["last_hidden_state"]
    mask = case.inputs["attention_mask"]
    out = {}
    for label, (suffix, uncond_suffix, unet_file) in _LABELS.items():
        context, context_mask = project_context(hidden, mask, projections[label])
        uc, um = null_text(context, context_mask, load_null_embedding(case.path(unet_file)))
        out[f"context_{suffix}"] = context
        out[f"context_mask_{suffix}"] = context_mask
        out[f"uncond_context_{uncond_suffix}"] = uc
        out[f"uncond_context_mask_{uncond_suffix}"] = um
    return out
