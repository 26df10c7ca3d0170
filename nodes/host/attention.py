"""ComfyUI's attention levers on the Kandinsky Video networks (host glue of
``kv_core.attention``, the networks' one attention entry point).

:class:`HostAttention` is the runner every stage and the core MODEL install around a
network call. For each attention it does what ComfyUI's own transformer blocks do
(``comfy/ldm/modules/attention.py``, ``BasicTransformerBlock``), in this order:

1. ``transformer_options["patches"]["attn1_patch" | "attn2_patch"]``: each
   ``p(n, context, value, extra_options) -> (n, context, value)`` on the tokens before the
   projections (``n [B, N, C]``; ``context``/``value`` ``[B, M, C']``, ``n`` itself for a
   self-attention);
2. ``transformer_options["patches_replace"]["attn1" | "attn2"]`` keyed by
   ``(block, block_id, index)`` or ``(block, block_id)``: ``fn(q, k, v, extra_options[,
   mask=])`` with ``q, k, v [B, L, heads * d]`` replaces the attention;
3. otherwise ``transformer_options["optimized_attention_override"](backend, q, k, v, heads,
   mask=, skip_reshape=True, transformer_options=)`` when set,
4. otherwise the backend: the host's ``optimized_attention`` (chosen by the launch flags
   ``--use-pytorch-cross-attention``, ``--use-sage-attention``, ``--use-flash-attention``,
   ...), except where ComfyUI fell back to sub-quadratic attention only because PyTorch
   attention is not enabled (a CPU without ``--use-quad-cross-attention``): there the
   pack's SDPA, which is what PyTorch attention computes.

``extra_options`` holds every other ``transformer_options`` entry (``cond_or_uncond``,
``sigmas``, ...) plus ``n_heads``, ``dim_head``, ``attn_precision`` (None), ``block`` ``(name,
id)``, ``block_index`` and ``transformer_index`` (the site's index) and
``kandinsky_video_site`` (the :class:`kv_core.attention.AttentionSite`). Block names: see
docs/attention.md. Masks reach host functions as additive float masks ``[B, 1, 1, M]``.

Any other patch kind in ``transformer_options`` (ComfyUI's ``output_block_patch``,
``middle_patch``, ``attn1_output_patch``, ...) is refused by :func:`check_patches`, naming
it and the kinds that work, instead of doing nothing.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F

import comfy.ldm.modules.attention as comfy_attention

from ...kv_core.attention import AttentionCall, attention_runner

#: patch kinds that act on the Kandinsky Video networks
PATCH_KINDS = ("attn1_patch", "attn2_patch")
REPLACE_KINDS = ("attn1", "attn2")


def host_backend():
    """The host's attention function, or None where the pack's SDPA stands for it (see the
    module docstring). Read at each call: the launch flags set it at import."""
    fn = comfy_attention.optimized_attention
    if fn is getattr(comfy_attention, "attention_sub_quad", None):
        try:
            from comfy.cli_args import args
            quad = bool(getattr(args, "use_quad_cross_attention", False))
        except ImportError:  # pragma: no cover - a host without cli_args
            quad = False
        if not quad:
            return None
    return fn


def sdpa_host_signature(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                        skip_output_reshape=False, **kwargs):
    """The pack's SDPA with the signature of ComfyUI's attention functions (for overrides
    that call the backend they are given)."""
    if not skip_reshape:
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
    if mask is not None and mask.ndim < 4:
        mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out if skip_output_reshape else out.transpose(1, 2).flatten(-2)


def additive(mask: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """A bool mask (True = visible) as the additive float mask ComfyUI's functions take."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, -torch.finfo(dtype).max)


def check_patches(transformer_options: Optional[dict], where: str) -> None:
    """Refuse, by name, patch kinds that would otherwise do nothing on these networks."""
    to = transformer_options or {}
    bad = [f"patches[{k!r}]" for k, v in (to.get("patches") or {}).items() if v and k not in PATCH_KINDS]
    bad += [f"patches_replace[{k!r}]" for k, v in (to.get("patches_replace") or {}).items()
            if v and k not in REPLACE_KINDS]
    if bad:
        raise ValueError(
            f"{where}: the MODEL carries {', '.join(bad)}, a kind of model patch the Kandinsky Video networks do "
            f"not have (they have no such blocks); remove the node that adds it. Patches that act on them: "
            f"attention replace patches (patches_replace 'attn1'/'attn2', e.g. Perturbed-Attention Guidance), "
            f"attention patches ('attn1_patch'/'attn2_patch') and optimized_attention_override (README, "
            f"'The host's levers')")


class HostAttention:
    """The runner of one network call under ComfyUI (see the module docstring)."""

    def __init__(self, transformer_options: Optional[dict] = None):
        self.options = transformer_options or {}
        self.host = host_backend()

    def backend(self, q, k, v, heads, mask=None, **kwargs):
        """The backend with ComfyUI's signature (``skip_reshape`` etc. in ``kwargs``)."""
        kwargs.pop("transformer_options", None)
        kwargs.pop("_inside_attn_wrapper", None)
        if self.host is None:
            return sdpa_host_signature(q, k, v, heads, mask=mask, **kwargs)
        return self.host(q, k, v, heads, mask=additive(mask, q.dtype), **kwargs)

    def extra_options(self, call: AttentionCall) -> dict:
        site = call.site
        extra = {k: v for k, v in self.options.items() if k not in ("patches", "patches_replace")}
        extra.update(n_heads=call.heads, dim_head=call.head_dim, attn_precision=None, block=(site.block, site.block_id),
                     block_index=site.index, transformer_index=site.index, kandinsky_video_site=site)
        return extra

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        to = self.options
        site = call.site
        patches = (to.get("patches") or {}).get(f"{site.kind}_patch") or []
        replace = (to.get("patches_replace") or {}).get(site.kind) or {}
        fn = replace.get(site.key, replace.get(site.key[:2]))
        override = to.get("optimized_attention_override")
        if not (patches or fn is not None or override is not None):
            q, k, v = call.projected()
            return self.backend(q, k, v, call.heads, mask=call.mask, skip_reshape=True)
        extra = self.extra_options(call)
        if patches:
            n, context, value = call.inputs()
            for p in patches:
                n, context, value = p(n, context, value, extra)
            q, k, v = call.project(n, context, value)
            mask = call.mask_for(k)
        else:
            q, k, v = call.projected()
            mask = call.mask
        if fn is not None:
            flat = [t.transpose(1, 2).flatten(-2) for t in (q, k, v)]  # [B, L, heads * d]
            return fn(*flat, extra) if mask is None else fn(*flat, extra, mask=additive(mask, q.dtype))
        if override is not None:
            return override(self.backend, q, k, v, call.heads, mask=mask, skip_reshape=True, transformer_options=to,
                            _inside_attn_wrapper=True)
        return self.backend(q, k, v, call.heads, mask=mask, skip_reshape=True)


@contextlib.contextmanager
def host_attention(transformer_options: Optional[dict] = None, where: str = "Kandinsky Video", *networks):
    """Run ``networks`` (kv_core modules; others are skipped; none given: every network)
    inside the block with ComfyUI's attention levers (patches of ``transformer_options``
    checked first). Each network's own settings are set, so copies of a network on other
    GPUs, run by the host in threads, keep theirs."""
    check_patches(transformer_options, where)
    runner = HostAttention(transformer_options)
    targets = [n for n in networks if hasattr(n, "attention_settings")] if networks else [None]
    with contextlib.ExitStack() as stack:
        for network in targets:
            stack.enter_context(attention_runner(runner, network))
        yield
