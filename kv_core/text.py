"""Text conditioning of Kandinsky Video 1.1.

A prompt becomes a U-Net context in four steps:

1. the T5 tokenizer turns it into ``tokens_length`` (128) ids: the prompt's pieces and the
   end-of-sequence id, cut to ``tokens_length``, then padded with the pad id; the attention
   mask is 1 on the prompt's tokens and 0 on the padding;
2. the Flan-UL2 encoder (a transformers ``T5EncoderModel``, gated-silu feed-forward) maps
   the ids to ``last_hidden_state`` ``[B, tokens_length, d_model]``;
3. one of the two learned projections of ``t5_projections.pt``
   (``Linear(d_model, context_dim, bias=False)`` then ``LayerNorm(context_dim)``) maps it to
   the context dimension of the U-Nets (:func:`project_context`), the padded positions are
   set to zero, and the sequence is cut to ``max(mask.sum(-1)) + 1`` positions, i.e. one
   padded position after the longest prompt is kept;
4. the unconditional ("null text") context of a U-Net has the same length: zeros, the
   U-Net's learned ``null_embedding`` at position 0 and mask ``[1, 0, 0, ...]``
   (``kv_core.conditioning.null_text``).

Masks are int64 as in the release (the U-Nets take them as bool). The release pipeline uses
``projection_base`` for the first frame, the keyframes *and* the interpolation;
``projection_interpolation`` is loaded but never used by it.

What the encoder cannot read is never dropped in silence: :func:`prompt_report` counts, for
one prompt, the tokens the encoder reads, those cut by ``tokens_length`` and those the
tokenizer can only map to ``<unk>`` (Flan-UL2's 32k SentencePiece vocabulary covers English
and a few European languages; Cyrillic, CJK and most other scripts become ``<unk>`` or
single letters). :meth:`TextEncoder.tokenize` issues a :class:`PromptWarning` for every
prompt with such a problem; generation still runs.
"""
from __future__ import annotations

import unicodedata
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from .checkpoints import (DEFAULT_TOKENS_LENGTH, check_t5_tokenizer, load_t5_encoder, load_t5_tokenizer,
                          load_text_projections)
from .dtypes import is_compute_dtype
from .models.text_projection import PROJECTION_LABELS


def project_context(
    hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, projection: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project encoder states to a U-Net context.

    Args:
        hidden_states: ``[B, N, d_model]``, the encoder's ``last_hidden_state``.
        attention_mask: ``[B, N]`` (1 = token, 0 = padding), or None for "all tokens".
        projection: a :class:`TextProjection` (or any module ``[.., d_model] -> [.., D]``).

    Returns:
        ``context [B, L, D]`` with padded positions zeroed and ``mask [B, L]`` int64, where
        ``L = min(N, max(mask.sum(-1)) + 1)``. Without a mask nothing is cut and the mask is
        all ones.
    """
    weight = next(projection.parameters(), None)
    if weight is not None and is_compute_dtype(weight.dtype):
        # the encoder may run in another dtype than the projections (fp32 in the release)
        hidden_states = hidden_states.to(device=weight.device, dtype=weight.dtype)
    context = projection(hidden_states)
    if attention_mask is None:
        mask = torch.ones(context.shape[:-1], dtype=torch.int64, device=context.device)
        return context, mask
    mask = attention_mask.to(device=context.device, dtype=torch.int64)
    context = context.masked_fill((mask == 0).unsqueeze(-1), 0.0)
    length = int(mask.sum(-1).max()) + 1
    return context[:, :length], mask[:, :length]


def tokenize(tokenizer, prompts: str | Sequence[str], tokens_length: int = DEFAULT_TOKENS_LENGTH
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask ``[B, tokens_length]`` (int64) for a prompt or a list.

    Each prompt is tokenized alone with truncation to ``tokens_length`` (the end-of-sequence
    id included) and padded on the right with the pad id, as the release does.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    ids, masks = [], []
    for prompt in prompts:
        encoded = tokenizer(prompt, max_length=tokens_length, truncation=True)
        n = len(encoded["input_ids"])
        pad = tokens_length - n
        ids.append(list(encoded["input_ids"]) + [tokenizer.pad_token_id] * pad)
        masks.append(list(encoded["attention_mask"]) + [0] * pad)
    return torch.tensor(ids, dtype=torch.int64), torch.tensor(masks, dtype=torch.int64)


class PromptWarning(UserWarning):
    """A prompt the text encoder reads only in part (unknown tokens, cut by ``tokens_length``,
    a script Flan-UL2 was not trained on). The run goes on; the warning says what was lost."""


_SHOWN_PIECES = 8   # unknown pieces quoted in a report
_SHOWN_CHARS = 40   # characters of a prompt (or of its dropped tail) quoted in a report


def _quote(text: str, limit: int = _SHOWN_CHARS) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _scripts(text: str) -> tuple[str, ...]:
    """Writing systems of the letters of ``text`` other than Latin (Unicode name prefixes:
    ``CYRILLIC``, ``CJK``, ``GREEK``, ``ARABIC``, ``HIRAGANA``...), in order of appearance."""
    found: dict[str, None] = {}
    for ch in text:
        if ch.isalpha():
            script = unicodedata.name(ch, "UNKNOWN").split(" ")[0]
            if script != "LATIN":
                found[script] = None
    return tuple(found)


@dataclass(frozen=True)
class PromptReport:
    """What the text encoder reads of one prompt.

    Counts are tokenizer pieces of the prompt, the end-of-sequence token not included:
    ``tokens`` in the whole prompt, ``kept`` of them read by the encoder (at most
    ``tokens_length - 1``: the end-of-sequence token takes the last place), ``dropped`` cut
    off the end, ``unknown`` of the kept ones that the tokenizer maps to ``<unk>`` (the
    encoder cannot tell them apart: two prompts that differ only there encode the same).
    ``unknown_text``: the first distinct pieces of the prompt that became ``<unk>``;
    ``dropped_text``: the start of the cut part; ``scripts``: non-Latin writing systems in
    the prompt.
    """

    prompt: str
    tokens: int
    kept: int
    unknown: int
    tokens_length: int
    unknown_text: tuple[str, ...] = ()
    dropped_text: str = ""
    scripts: tuple[str, ...] = ()

    @property
    def dropped(self) -> int:
        return self.tokens - self.kept

    @property
    def ok(self) -> bool:
        """True when the encoder reads the whole prompt and every token of it."""
        return not (self.unknown or self.dropped or self.scripts)

    def summary(self, label: str = "prompt") -> str:
        """One line, e.g. ``prompt: 12 tokens read (up to 127), 0 unknown, 0 dropped``."""
        return (f"{label}: {self.kept} tokens read (up to {self.tokens_length - 1}), "
                f"{self.unknown} unknown, {self.dropped} dropped")

    def problems(self) -> list[str]:
        """One sentence per problem (empty when :attr:`ok`)."""
        out = []
        if self.unknown:
            shown = ", ".join(repr(t) for t in self.unknown_text)
            out.append(f"{self.unknown} of the {self.kept} tokens read are unknown to the tokenizer "
                       f"(<unk>{': ' + shown if shown else ''}); the encoder cannot read them")
        if self.scripts:
            names = ", ".join(s.title() for s in self.scripts)
            out.append(f"it is written in {names} letters")
        if self.unknown or self.scripts:
            out.append("Flan-UL2 was trained on English: write prompts in English")
        if self.dropped:
            out.append(f"{self.dropped} of its {self.tokens} tokens were dropped: the encoder reads "
                       f"{self.tokens_length - 1} (tokens_length {self.tokens_length} with the "
                       f"end-of-sequence token); dropped: {_quote(self.dropped_text)}")
        return out

    def message(self, label: str = "prompt") -> str:
        """The summary and every problem, for a log line or a warning."""
        text = f"{label} {_quote(self.prompt)}: {self.kept} tokens read"
        problems = self.problems()
        return text + ("; " + "; ".join(problems) + "." if problems else ".")


def prompt_report(tokenizer, prompt: str, tokens_length: int = DEFAULT_TOKENS_LENGTH) -> PromptReport:
    """Count what the encoder reads of ``prompt`` (see :class:`PromptReport`), tokenizing it
    as :func:`tokenize` does but without the cut."""
    kwargs = {"return_offsets_mapping": True} if getattr(tokenizer, "is_fast", False) else {}
    full = tokenizer(prompt, truncation=False, verbose=False, **kwargs)
    ids = list(full["input_ids"])
    offsets = list(full.get("offset_mapping") or [])
    eos = tokenizer.eos_token_id
    n = len(ids) - (1 if ids and ids[-1] == eos else 0)
    cut = list(tokenizer(prompt, max_length=tokens_length, truncation=True)["input_ids"])
    kept = min(n, len(cut) - (1 if cut and cut[-1] == eos else 0))
    unk = tokenizer.unk_token_id
    unknown = sum(1 for i in ids[:kept] if unk is not None and i == unk)
    pieces: dict[str, None] = {}
    if offsets:
        for i, (start, end) in zip(ids[:kept], offsets[:kept]):
            if unk is not None and i == unk and end > start and len(pieces) < _SHOWN_PIECES:
                pieces[prompt[start:end]] = None
    dropped_text = ""
    if kept < n:
        dropped_text = prompt[offsets[kept][0]:] if offsets else tokenizer.decode(ids[kept:n])
    return PromptReport(prompt, n, kept, unknown, tokens_length, tuple(pieces), dropped_text,
                        _scripts(prompt))


def warn_prompt(report: PromptReport, label: str = "prompt", *, stacklevel: int = 2) -> None:
    """Issue a :class:`PromptWarning` for ``report`` unless it is :attr:`~PromptReport.ok`."""
    if not report.ok:
        warnings.warn(report.message(label), PromptWarning, stacklevel=stacklevel + 1)


def check_text_parts(encoder: nn.Module, projections: Mapping[str, nn.Module], context_dim: int | None = None,
                     *, configs="configs.json") -> None:
    """Refuse text parts that load but could not work together.

    ``encoder``: the T5 encoder (its ``config.d_model``); ``projections``: label ->
    :class:`TextProjection` (``d_model`` in, ``context_dim`` out); ``context_dim``:
    ``text_encoder.context_dim`` of ``configs`` (a path or name, only quoted in the message;
    see :func:`kv_core.checkpoints.text_settings`), None to leave the output width unchecked.
    Widths a part does not expose are not checked.

    Raises ``ValueError`` for a projection whose input width is not the encoder's
    ``d_model`` or whose output width is not ``context_dim``.
    """
    d_model = getattr(getattr(encoder, "config", None), "d_model", None)
    for label, projection in dict(projections).items():
        width = getattr(projection, "d_model", None)
        if d_model is not None and width is not None and width != d_model:
            raise ValueError(f"the text projection {label!r} takes {width}-wide encoder states but the "
                             f"encoder makes {d_model}-wide ones: they are not from the same release "
                             "(Kandinsky Video 1.1 needs google/flan-ul2, d_model 4096)")
    widths = {getattr(p, "context_dim", None) for p in dict(projections).values()} - {None}
    if context_dim is not None and widths - {context_dim}:
        made = " and ".join(str(w) for w in sorted(widths))
        raise ValueError(f"the text projections make {made}-wide contexts but {configs} says "
                         f"text_encoder.context_dim {context_dim}: the projections and configs.json are not "
                         "from the same release")


class TextEncoder(nn.Module):
    """Tokenizer + Flan-UL2 encoder + the two KV projections.

    Build it with :meth:`from_files` (a Hugging Face T5 folder or our encoder-only
    safetensors, plus ``t5_projections.pt`` / its safetensors form), or directly from the
    parts. :meth:`encode` returns, for each projection label, ``(context, mask)`` exactly as
    the release's condition encoder returns them.
    """

    def __init__(self, encoder: nn.Module, projections: Mapping[str, nn.Module], tokenizer=None,
                 tokens_length: int = DEFAULT_TOKENS_LENGTH, context_dim: int | None = None):
        super().__init__()
        check_text_parts(encoder, projections, context_dim)
        if tokens_length < 2:
            raise ValueError(f"tokens_length must be at least 2 (the prompt and the end-of-sequence "
                             f"token), got {tokens_length}")
        self.encoder = encoder
        self.projections = nn.ModuleDict(dict(projections))
        self.tokenizer = tokenizer
        self.tokens_length = tokens_length

    @classmethod
    def from_files(cls, encoder_path, projections_path, *, tokenizer_path=None,
                   tokens_length: int = DEFAULT_TOKENS_LENGTH, context_dim: int | None = None, device=None,
                   dtype: torch.dtype = torch.float32, projection_dtype: torch.dtype | None = None,
                   operations=None) -> "TextEncoder":
        """Load every part.

        ``encoder_path``: a transformers T5 folder (``config.json`` + weights; only the
        encoder is loaded) or an encoder-only safetensors written by ``kv_core.convert``.
        ``tokenizer_path``: a folder with the tokenizer files; by default the encoder folder,
        or the tokenizer embedded in the encoder-only safetensors. ``dtype`` is the encoder's
        dtype (the release runs it in float32; T5 overflows in float16, bfloat16 is fine);
        the projections use ``projection_dtype`` (default float32, as the release).
        ``tokens_length`` and ``context_dim``: the ``text_encoder`` settings of configs.json
        (:func:`kv_core.checkpoints.text_settings`); ``context_dim`` None leaves the
        projections' output width unchecked.

        Raises ``CheckpointError`` for parts that load but could not work together: a folder
        without tokenizer, a tokenizer with more ids than the encoder's embedding, and
        ``ValueError`` for projections whose input width is not the encoder's ``d_model`` or
        whose output width is not ``context_dim`` (:func:`check_text_parts`).
        """
        tokenizer_path = tokenizer_path if tokenizer_path is not None else encoder_path
        tokenizer = load_t5_tokenizer(tokenizer_path)  # first: fails before the encoder's big read
        encoder = load_t5_encoder(encoder_path, device=device, dtype=dtype)
        check_t5_tokenizer(tokenizer, path=tokenizer_path, vocab_size=encoder.get_input_embeddings().num_embeddings)
        projections = load_text_projections(projections_path, device=device,
                                            dtype=projection_dtype or torch.float32,
                                            operations=operations)
        return cls(encoder, projections, tokenizer, tokens_length, context_dim)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def tokenize(self, prompts: str | Sequence[str], *, warn: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and mask ``[B, tokens_length]`` as :func:`tokenize`; with ``warn`` a
        :class:`PromptWarning` for each prompt the encoder reads only in part."""
        if self.tokenizer is None:
            raise RuntimeError("this TextEncoder has no tokenizer")
        if warn:
            for prompt in [prompts] if isinstance(prompts, str) else prompts:
                warn_prompt(self.report(prompt), stacklevel=3)
        return tokenize(self.tokenizer, prompts, self.tokens_length)

    def report(self, prompt: str) -> PromptReport:
        """What the encoder reads of ``prompt`` (see :func:`prompt_report`)."""
        if self.tokenizer is None:
            raise RuntimeError("this TextEncoder has no tokenizer")
        return prompt_report(self.tokenizer, prompt, self.tokens_length)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, device=None) -> torch.Tensor:
        """``last_hidden_state`` ``[B, N, d_model]`` of the T5 encoder, run on ``device``
        (default: its parameters' device; a host that loads the encoder in parts gives its
        load device)."""
        device = torch.device(device) if device is not None else self.device
        out = self.encoder(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        return out.last_hidden_state

    def project(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor,
                labels: Sequence[str] = PROJECTION_LABELS) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for label in labels:
            if label not in self.projections:
                raise KeyError(f"unknown projection {label!r}; known: {sorted(self.projections)}")
            out[label] = project_context(hidden_states, attention_mask, self.projections[label])
        return out

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str], labels: Sequence[str] = PROJECTION_LABELS, *,
               device=None, warn: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{label: (context [B, L, D], mask [B, L] int64)}`` for one prompt or a list.
        ``device``: where the encoder runs (:meth:`hidden_states`); ``warn``: as :meth:`tokenize`."""
        input_ids, attention_mask = self.tokenize(prompts, warn=warn)
        hidden = self.hidden_states(input_ids, attention_mask, device=device)
        return self.project(hidden, attention_mask, labels)
