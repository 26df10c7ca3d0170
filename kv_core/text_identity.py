"""Who made an encoded prompt: the content fingerprint of the text encoder's files and
:class:`TextIdentity`, everything that changes what an encoder makes of a prompt. The key
of the prompt cache (``kv_core.prompt_cache``, which documents what the key covers and what
the fingerprint sees) and the identity stored with a saved encoded prompt.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from .dtypes import dtype_name
from .models.text_projection import PROJECTION_BASE

#: the version of the encoded-prompt format, part of every key
CACHE_FORMAT = "kandinsky-video-encoded-prompt/1"
WHOLE_FILE_BYTES = 1 << 20           # files up to this size are hashed whole
SAMPLE_COUNT = 32
SAMPLE_BYTES = 32 << 10

_fingerprints: dict[tuple, str] = {}
_fingerprints_lock = threading.Lock()


def _safetensors_header(f, size: int) -> bytes:
    """The 8-byte length and the JSON header of a safetensors file, or b"" for another file."""
    f.seek(0)
    head = f.read(8)
    if len(head) < 8:
        return b""
    n = int.from_bytes(head, "little")
    if not 2 <= n <= min(size - 8, 100 << 20):
        return b""
    header = f.read(n)
    return head + header if header[:1] == b"{" else b""


def _file_fingerprint(path: str) -> str:
    st = os.stat(path)
    memo = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _fingerprints_lock:
        if memo in _fingerprints:
            return _fingerprints[memo]
    h = hashlib.sha256(b"size:%d;" % st.st_size)
    with open(path, "rb") as f:
        if st.st_size <= WHOLE_FILE_BYTES:
            h.update(f.read())
        else:
            h.update(_safetensors_header(f, st.st_size))
            last = st.st_size - SAMPLE_BYTES
            for i in range(SAMPLE_COUNT):
                f.seek(last * i // (SAMPLE_COUNT - 1))
                h.update(f.read(SAMPLE_BYTES))
    digest = h.hexdigest()
    with _fingerprints_lock:
        _fingerprints[memo] = digest
    return digest


def content_fingerprint(path) -> str:
    """Hex SHA-256 fingerprint of a file's or a folder's content (see the module docstring
    for what it covers). Raises ``OSError`` for a path that cannot be read."""
    path = Path(path)
    if not path.is_dir():
        return _file_fingerprint(str(path))
    h = hashlib.sha256(b"folder;")
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):
            continue
        h.update(rel.as_posix().encode() + b"\0" + _file_fingerprint(str(file)).encode() + b";")
    return h.hexdigest()


@dataclass(frozen=True)
class TextIdentity:
    """Everything besides the prompts that decides what the text stage makes of a prompt.

    ``encoder`` / ``projections`` / ``tokenizer``: content fingerprints
    (:func:`content_fingerprint`; ``tokenizer`` empty when it comes with the encoder);
    ``tokens_length``: configs.json's ``text_encoder.tokens_length``; ``weight_dtype`` /
    ``compute_dtype``: the encoder's stored and computing dtypes; ``projection_dtype``: the
    projections'; ``projection``: the label used (``projection_base``, as the release);
    ``context_dim``: configs.json's ``text_encoder.context_dim`` (None: not given). The
    context width does not change an encoding, but the loaders check it against the
    projections: a configs.json that contradicts them must reach that check, not a cached
    entry made under another configs.json."""

    encoder: str
    projections: str
    tokens_length: int
    weight_dtype: str
    compute_dtype: str
    projection_dtype: str = "float32"
    tokenizer: str = ""
    projection: str = PROJECTION_BASE
    context_dim: Optional[int] = None

    @classmethod
    def of_files(cls, encoder_path, projections_path, *, tokens_length: int, weight_dtype, compute_dtype=None,
                 projection_dtype=torch.float32, tokenizer_path=None, context_dim: Optional[int] = None
                 ) -> "TextIdentity":
        """The identity of the text parts in these files (fingerprints read, nothing loaded)."""
        return cls(content_fingerprint(encoder_path), content_fingerprint(projections_path), int(tokens_length),
                   dtype_name(weight_dtype), dtype_name(compute_dtype if compute_dtype is not None else weight_dtype),
                   dtype_name(projection_dtype),
                   content_fingerprint(tokenizer_path) if tokenizer_path is not None else "",
                   context_dim=None if context_dim is None else int(context_dim))

    def key(self, prompt: str, negative_prompt: Optional[str] = None) -> str:
        """Hex SHA-256 cache key of a prompt pair encoded by these parts."""
        payload = {"format": CACHE_FORMAT, "identity": asdict(self), "prompt": prompt,
                   "negative_prompt": normalise_negative(negative_prompt) or ""}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def normalise_negative(negative_prompt: Optional[str]) -> Optional[str]:
    """None for a missing or blank negative prompt (the release's null-text guidance)."""
    return negative_prompt if negative_prompt is not None and negative_prompt.strip() else None
