"""Encoded prompts on disk: a cache that spares the text encoder for a prompt it has encoded
before, and the file format of a saved encoded prompt.

Flan-UL2's encoder is 17.4 GB in bf16; reading it takes longer than encoding a prompt. An
encoded prompt is a few MB at most (``[1, L, 4096]`` float32 with L <= 128, twice with a
negative prompt). The cache keeps, for each prompt, what the encoder made of it, so a run
whose prompts are all cached never loads the encoder (:func:`encode_prompt_cached` takes a
loader that it calls only on a miss).

**Key** (:meth:`kv_core.text_identity.TextIdentity.key`): a SHA-256 of the prompt, the negative prompt (blank
counts as none, as :func:`kv_core.stages.text.encode_prompt` treats it), the content fingerprints
of the encoder (file or folder, tokenizer included), of the projections and of a separate
tokenizer, ``tokens_length`` (and configs.json's ``context_dim``, which the loaders check), the
projection used, the encoder's weight and compute dtypes and the projections' dtype, and the
cache format. Any change of these misses the cache. Not
in the key: the device the encoder runs on (a CUDA and a CPU encoding differ by rounding
only; the first one made is served).

**Content fingerprint** (:func:`kv_core.text_identity.content_fingerprint`): a SHA-256 over each file's size and,
for files above 1 MiB, the safetensors header (every tensor's name, dtype, shape and offset,
and the metadata) plus 32 evenly spaced 32 KiB samples including the first and the last
(1 MiB read per file: 31 ms for a 0.35 GB file, 0.14 s for a 10-file folder, measured with
the files in the page cache; for ``.pt`` files the last sample holds the zip
directory with the CRC-32 of every tensor's data); smaller files are hashed whole. A folder
is fingerprinted file by file (names relative to it, hidden files left out). It sees a
renamed copy as the same model and any other release, fine-tune, conversion, dtype change,
truncation or re-save that moves a sampled byte as another; an edit confined to bytes
between two samples of a safetensors file is not seen (the full hash of 17 GB would cost
the read the cache is there to avoid). Fingerprints are memoised per process by path, size,
modification time and inode.

**Files**: one safetensors file per key (``<key>.safetensors``; tensors only, nothing is
executed on load) with tensors ``context`` ``[1, L, D]`` float32, ``context_mask``
``[1, L]`` int64 and, with a negative prompt, ``negative_context`` / ``negative_mask``;
the metadata holds the format, the key, the prompts, the identity and the prompt reports
(:class:`kv_core.text.PromptReport`, JSON). A file that cannot be read or does not hold
what its name promises is ignored with a logged warning, removed, and written anew after
the encoding. Writes go to a temporary file that is renamed into place, so a crash leaves
no half-written entry. The folder is kept under ``max_bytes`` by removing the least
recently used entries (a hit refreshes the file's modification time).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch

from .checkpoints.formats import replaced_atomically
from .conditioning import TextCondition
from .text_identity import CACHE_FORMAT, TextIdentity, normalise_negative

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 30          # 1 GiB: about 250 prompts with a negative prompt at full length
SUFFIX = ".safetensors"

_TENSORS = ("context", "context_mask", "negative_context", "negative_mask")


class EncodedPromptError(ValueError):
    """A file that is not a readable encoded prompt (the message says why)."""


# --------------------------------------------------------------------------- the file format

@dataclass
class EncodedPrompt:
    """One encoded prompt pair: its ``condition`` (``projection_base`` contexts, float32, on
    the CPU once stored), the prompts, the reports of what the encoder read of each
    (``{"prompt": PromptReport, "negative prompt": PromptReport}``; empty when the encoder
    was a plain callable) and the identity of the parts that made it (None when unknown)."""

    condition: TextCondition
    prompt: str
    negative_prompt: Optional[str] = None
    reports: dict = field(default_factory=dict)
    identity: Optional[TextIdentity] = None


def _report_dict(report) -> dict:
    d = asdict(report)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _report_of(d: Mapping):
    from .text import PromptReport

    if not isinstance(d, Mapping):
        raise EncodedPromptError("a prompt report is not a JSON object")
    try:
        return PromptReport(str(d["prompt"]), int(d["tokens"]), int(d["kept"]), int(d["unknown"]),
                            int(d["tokens_length"]), tuple(str(t) for t in d.get("unknown_text", ())),
                            str(d.get("dropped_text", "")), tuple(str(s) for s in d.get("scripts", ())))
    except (KeyError, TypeError, ValueError) as err:
        raise EncodedPromptError(f"a prompt report lacks {err}") from None


def write_encoded_prompt(path, entry: EncodedPrompt, *, key: str = "") -> Path:
    """Write ``entry`` as a safetensors file at ``path`` (atomically: a temporary file in the
    same folder renamed into place). Contexts are stored float32 (exact for float32, bfloat16
    and float16 contexts), masks int64."""
    from safetensors.torch import save_file

    path = Path(path)
    c = entry.condition
    tensors = {"context": c.context.detach().float().cpu().contiguous(),
               "context_mask": c.context_mask.detach().to("cpu", torch.int64).contiguous()}
    if c.negative_context is not None:
        tensors["negative_context"] = c.negative_context.detach().float().cpu().contiguous()
        tensors["negative_mask"] = c.negative_mask.detach().to("cpu", torch.int64).contiguous()
    metadata = {"format": CACHE_FORMAT, "key": key, "prompt": entry.prompt,
                "negative_prompt": entry.negative_prompt or "",
                "reports": json.dumps({label: _report_dict(r) for label, r in entry.reports.items()},
                                      ensure_ascii=False),
                "identity": json.dumps(asdict(entry.identity)) if entry.identity is not None else ""}
    with replaced_atomically(path, SUFFIX) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path


def read_encoded_prompt(path) -> tuple[EncodedPrompt, str]:
    """``(entry, key)`` from a file :func:`write_encoded_prompt` wrote (the key is empty for a
    saved prompt). Raises :class:`EncodedPromptError` naming what is wrong for a file that
    cannot be read, is no encoded prompt, or holds tensors of the wrong shape or type."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != CACHE_FORMAT:
                raise EncodedPromptError(f"{path.name} is not a Kandinsky Video encoded prompt "
                                         f"(format {metadata.get('format')!r}, expected {CACHE_FORMAT!r})")
            names = set(f.keys())
            unknown = names - set(_TENSORS)
            if unknown or not {"context", "context_mask"} <= names:
                raise EncodedPromptError(f"{path.name} holds the tensors {sorted(names)}; an encoded prompt holds "
                                         "context and context_mask (and negative_context/negative_mask)")
            tensors = {name: f.get_tensor(name) for name in names}
    except EncodedPromptError:
        raise
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise EncodedPromptError(f"{path.name} cannot be read as safetensors: {err}") from None
    for name in ("context", "negative_context"):
        t = tensors.get(name)
        if t is not None and (t.dtype != torch.float32 or t.ndim != 3 or not bool(torch.isfinite(t).all())):
            raise EncodedPromptError(f"{path.name}: {name} must be finite float32 [1, L, D], got "
                                     f"{t.dtype} {list(t.shape)}")
    for name in ("context_mask", "negative_mask"):
        t = tensors.get(name)
        if t is not None and t.dtype != torch.int64:
            raise EncodedPromptError(f"{path.name}: {name} must be int64, got {t.dtype}")
    try:
        condition = TextCondition(*(tensors.get(name) for name in _TENSORS))
        reports = {label: _report_of(d) for label, d in json.loads(metadata.get("reports") or "{}").items()}
        identity_json = metadata.get("identity") or ""
        identity = TextIdentity(**json.loads(identity_json)) if identity_json else None
    except EncodedPromptError:
        raise
    except (ValueError, TypeError, AttributeError) as err:
        raise EncodedPromptError(f"{path.name}: {err}") from None
    negative = normalise_negative(metadata.get("negative_prompt"))
    if (negative is None) != (condition.negative_context is None):
        raise EncodedPromptError(f"{path.name}: the negative prompt and the negative context do not go together")
    return EncodedPrompt(condition, metadata.get("prompt", ""), negative, reports, identity), metadata.get("key", "")


# --------------------------------------------------------------------------- the cache

class PromptCache:
    """Encoded prompts in ``folder``, one safetensors file per key, at most ``max_bytes`` in
    all (least recently used removed first). ``enabled=False`` turns the cache off: nothing
    is read or written."""

    def __init__(self, folder, *, max_bytes: int = DEFAULT_MAX_BYTES, enabled: bool = True):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)
        self.enabled = bool(enabled)

    def path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"a cache key is a hex SHA-256, got {key!r}")
        return self.folder / (key + SUFFIX)

    def get(self, key: str) -> Optional[EncodedPrompt]:
        """The entry stored under ``key``, or None (cache off, no entry, or an unusable file,
        which is logged and removed)."""
        if not self.enabled:
            return None
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry, stored_key = read_encoded_prompt(path)
            if stored_key != key:
                raise EncodedPromptError(f"{path.name} holds the entry of another key")
        except EncodedPromptError as err:
            logger.warning("Kandinsky Video prompt cache: ignoring %s (%s); the prompt is encoded again and "
                           "the entry rewritten", path, err)
            try:
                path.unlink()
            except OSError:
                pass
            return None
        try:
            os.utime(path)  # least recently used goes first
        except OSError:
            pass
        return entry

    def put(self, key: str, entry: EncodedPrompt) -> Optional[Path]:
        """Store ``entry`` under ``key`` and keep the folder under ``max_bytes``. A folder that
        cannot be written is logged, never an error (the run has its result)."""
        if not self.enabled:
            return None
        try:
            path = write_encoded_prompt(self.path(key), entry, key=key)
        except OSError as err:
            logger.warning("Kandinsky Video prompt cache: cannot write to %s (%s); the prompt is not cached",
                           self.folder, err)
            return None
        self.evict()
        return path if path.exists() else None

    def entries(self) -> list[Path]:
        """The entry files, least recently used first."""
        try:
            files = [p for p in self.folder.iterdir() if p.suffix == SUFFIX and not p.name.startswith(".")]
        except OSError:
            return []
        stats = []
        for p in files:
            try:
                stats.append((p.stat().st_mtime_ns, p.name, p))
            except OSError:
                pass
        return [p for _, _, p in sorted(stats)]

    def size(self) -> int:
        total = 0
        for p in self.entries():
            try:
                total += p.stat().st_size
            except OSError:
                pass
        return total

    def evict(self) -> list[Path]:
        """Remove least recently used entries until the folder holds at most ``max_bytes``;
        returns the removed files."""
        entries = self.entries()
        sizes = {}
        for p in entries:
            try:
                sizes[p] = p.stat().st_size
            except OSError:
                sizes[p] = 0
        total, removed = sum(sizes.values()), []
        for p in entries:
            if total <= self.max_bytes:
                break
            try:
                p.unlink()
            except OSError:
                continue
            total -= sizes[p]
            removed.append(p)
        return removed


# --------------------------------------------------------------------------- encoding through the cache

def encode_prompt_cached(text_encoder, prompt: str, negative_prompt: Optional[str] = None, *,
                         load_text_encoder: Callable[[], object] | None = None,
                         identity: Optional[TextIdentity] = None, cache: Optional[PromptCache] = None,
                         device=None, warn: bool = True,
                         progress: Callable[[int, int], None] | None = None) -> tuple[EncodedPrompt, bool]:
    """Encode a prompt pair as :func:`kv_core.stages.text.encode_prompt` does, through ``cache``.

    ``text_encoder``: a :class:`kv_core.text.TextEncoder` (or any encoder
    :func:`~kv_core.stages.text.encode_prompt` takes), or None with ``load_text_encoder``, a
    function that returns one: it is called only on a miss (the encoder is loaded on first
    need). ``identity``: the key's :class:`TextIdentity` (no cache without it). Returns
    ``(entry, hit)``; on a hit the reports come from the cache and, with ``warn``, a
    :class:`kv_core.text.PromptWarning` is issued for a prompt read only in part, as on a
    miss. The condition is the stored one on a hit (float32, CPU) and the encoder's on a
    miss: the same values.
    """
    from .stages import Hooks
    from .stages.text import encode_prompt
    from .text import warn_prompt

    negative = normalise_negative(negative_prompt)
    labelled = {"prompt": prompt, **({"negative prompt": negative} if negative is not None else {})}
    use_cache = cache is not None and cache.enabled and identity is not None
    key = identity.key(prompt, negative) if use_cache else ""
    if use_cache:
        entry = cache.get(key)
        if entry is not None and entry.prompt == prompt and entry.negative_prompt == negative:
            if warn:
                for label, report in entry.reports.items():
                    warn_prompt(report, label, stacklevel=2)
            if progress is not None:
                progress(len(labelled), len(labelled))
            return entry, True
    encoder = text_encoder
    if encoder is None:
        if load_text_encoder is None:
            raise ValueError("give a text encoder or load_text_encoder")
        encoder = load_text_encoder()
    reports = {}
    if hasattr(encoder, "report"):
        reports = {label: encoder.report(text) for label, text in labelled.items()}
        if warn:
            for label, report in reports.items():
                warn_prompt(report, label, stacklevel=2)
    condition = encode_prompt(encoder, prompt, negative, warn=False, hooks=Hooks(device=device, progress=progress))
    entry = EncodedPrompt(condition, prompt, negative, reports, identity)
    if use_cache:
        cache.put(key, entry)
    return entry, False
