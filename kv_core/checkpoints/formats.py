"""File formats of Kandinsky Video checkpoints and how they are read safely.

Official ``.pt`` files are read only with ``torch.load(weights_only=True)`` (a file carrying
any pickled Python object other than tensors is refused and nothing in it runs);
safetensors are read lazily, key by key. Our safetensors form stores the network's tensors
under their official state-dict names and, in its metadata (``META_*``), the format version,
the network kind, its constructor config, dtype, source and (T5) tokenizer.

Also here: the network kinds (``KEYFRAME_UNET``...), :class:`CheckpointError`, and
:func:`aligned`, the copy that makes tensors read from a file start on a 64-byte boundary.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import mmap
import os
import pickle
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from ..dtypes import NULL_EMBEDDING_KEY  # noqa: F401  (part of the file format)
from ..kinds import INTERPOLATION_UNET, KEYFRAME_UNET, MOVQ, VIDEO_MOVQ

# --- our safetensors format --------------------------------------------------------------

FORMAT_VERSION = "1"
META_FORMAT = "kandinsky_video.format_version"
META_NETWORK = "kandinsky_video.network"
META_CONFIG = "kandinsky_video.config"
META_DTYPE = "kandinsky_video.dtype"
META_SOURCE = "kandinsky_video.source"
META_TOKENIZER = "kandinsky_video.tokenizer"

# section of configs.json for each network
CONFIG_SECTIONS = {KEYFRAME_UNET: "t2v", INTERPOLATION_UNET: "interpolation",
                   MOVQ: "image_movq", VIDEO_MOVQ: "video_movq"}

_MAX_LISTED = 5


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not match the network it should hold."""


def listing(keys, limit: int = _MAX_LISTED) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")



@contextlib.contextmanager
def replaced_atomically(dst: Path, suffix: str = "") -> Iterator[str]:
    """A temporary path beside ``dst`` to write the new file to; on leaving the block it
    replaces ``dst`` in one step (``os.replace``), so a reader never sees half a file. On
    an error (or an interrupt) the temporary file is removed and ``dst`` is unchanged."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=dst.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- reading files -------------------------------------------------------------------------

@dataclass
class TensorFile:
    """The tensors of one checkpoint file, read lazily where the format allows.

    ``shapes`` lists every tensor (flattened names: nested dicts joined with ``.``);
    :meth:`get` reads one. ``metadata`` is the safetensors metadata (empty for ``.pt``).
    Tensors read from a memory-mapped file are views of the mapping; once a loader has made
    its own copy of one (a cast, an aligned copy), :meth:`release` hands the pages it read
    back to the kernel (see :class:`PageReleaser`).
    """

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    metadata: dict[str, str]
    _get: Callable[[str], torch.Tensor] = field(repr=False)
    _release: Callable[[torch.Tensor], None] | None = field(default=None, repr=False)

    def get(self, key: str) -> torch.Tensor:
        return self._get(key)

    def release(self, tensor: torch.Tensor) -> None:
        """Drop from this process the mapped file pages holding ``tensor`` (a tensor :meth:`get`
        returned and that nothing uses any more); nothing for tensors not in a mapping."""
        if self._release is not None:
            self._release(tensor)

    def keys(self):
        return self.shapes.keys()

    @property
    def network(self) -> str | None:
        """The network kind recorded in our safetensors metadata, if any."""
        return self.metadata.get(META_NETWORK)

    @property
    def config(self) -> dict | None:
        raw = self.metadata.get(META_CONFIG)
        return json.loads(raw) if raw else None


#: safetensors dtype names -> torch dtypes
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
for _name, _st in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        SAFETENSORS_DTYPES[_st] = getattr(torch, _name)


def _flatten(obj, prefix: str, out: dict, path: Path):
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out, path)
    else:
        raise CheckpointError(f"{path}: unexpected {type(obj).__name__} at {prefix or 'top level'!r} "
                              "(a checkpoint holds tensors and dicts of tensors only)")


class PageReleaser:
    """Gives back to the kernel the pages of file mappings that a loader has finished with.

    A memory-mapped checkpoint costs no memory until read; each page read then stays in the
    process's resident set (as file-backed memory) as long as the mapping lives, i.e. as long
    as any tensor of the file does. A loader that casts (or copies) every tensor would so hold
    the whole file *and* its copy: twice the weights at the peak. Calling this on each source
    tensor after its copy was made keeps the peak at the loaded weights plus one tensor.

    Only whole pages inside a private or shared mapping of one of ``paths`` are released
    (``madvise(MADV_DONTNEED)``); for such mappings the kernel reads the file again if the
    pages are touched later, so a released tensor still reads correctly (it is never written
    to: the loaders only read checkpoints). Anything else (anonymous memory, other files,
    other systems than Linux) is left alone.
    """

    def __init__(self, paths):
        self.paths = {os.path.realpath(p) for p in paths}
        self._ranges: list[tuple[int, int]] = []
        self._page = mmap.PAGESIZE
        self._madvise = _libc_madvise()

    def _scan(self) -> None:
        ranges = []
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].rstrip("\n") in self.paths:
                        start, end = (int(v, 16) for v in parts[0].split("-"))
                        ranges.append((start, end))
        except OSError:
            pass
        self._ranges = ranges

    def _inside(self, start: int, end: int) -> bool:
        return any(a <= start and end <= b for a, b in self._ranges)

    def __call__(self, tensor: torch.Tensor) -> None:
        if self._madvise is None or tensor.device.type != "cpu" or not tensor.numel():
            return
        storage = tensor.untyped_storage()
        start, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        start = -(-start // self._page) * self._page  # whole pages only: neighbours keep theirs
        end = end // self._page * self._page
        if end <= start:
            return
        if not self._inside(start, end):
            self._scan()
            if not self._inside(start, end):
                return
        self._madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


_MADV_DONTNEED = 4


def trim_heap() -> None:
    """Give the C heap's free memory back to the kernel (glibc ``malloc_trim``; nothing
    elsewhere). Loaders that make large short-lived temporaries per tensor (the fp8 error
    check of :func:`kv_core.dtypes.storage_dtype`) call it every few tensors: otherwise the
    holes those temporaries leave between the tensors kept stay resident (an fp8 load of the
    image MoVQ peaked at 2.6x its weights, 1.5x with this)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


class HeapTrimmer:
    """Calls :func:`trim_heap` once every ``every`` bytes counted with :meth:`count` (the
    bytes of checkpoint read by a loop making large temporaries per tensor)."""

    def __init__(self, every: int = 64 * 2**20):
        self.every, self.pending = every, 0

    def count(self, nbytes: int) -> None:
        self.pending += nbytes
        if self.pending >= self.every:
            trim_heap()
            self.pending = 0


def _libc_function(name: str):
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True), name)
    except (OSError, AttributeError):
        return None


def _libc_madvise():
    fn = _libc_function("madvise")
    if fn is not None:
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
    return fn


_malloc_trim = _libc_function("malloc_trim")
if _malloc_trim is not None:
    _malloc_trim.argtypes = [ctypes.c_size_t]
    _malloc_trim.restype = ctypes.c_int


def torch_load(path: Path):
    mmap = zipfile.is_zipfile(path)  # the legacy (non-zip) torch format cannot be memory-mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {path}: it contains pickled Python objects that are not tensors, "
            "and checkpoints are only read with torch.load(weights_only=True). Nothing in the "
            f"file was executed. ({str(err).splitlines()[0]})") from None
    except Exception as err:  # noqa: BLE001 - every reader failure becomes one error class
        raise CheckpointError(f"could not read {path} (truncated, damaged or not a torch "
                              f"checkpoint): {type(err).__name__}: {err}") from err


def open_tensor_file(path) -> TensorFile:
    """Open a ``.pt``/``.pth``/``.bin`` (weights only) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), e.g. an interrupted download or copy: "
                              "download or copy it again")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
            metadata = dict(handle.metadata() or {})
            shapes, dtypes = {}, {}
            for key in handle.keys():
                sl = handle.get_slice(key)
                shapes[key] = tuple(sl.get_shape())
                dtypes[key] = SAFETENSORS_DTYPES.get(sl.get_dtype(), torch.float32)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"could not read {path} (truncated, damaged or not a "
                                  f"safetensors file): {type(err).__name__}: {err}") from err

        def get(key: str) -> torch.Tensor:
            try:
                return handle.get_tensor(key)
            except Exception as err:  # noqa: BLE001
                raise CheckpointError(f"{path}: could not read tensor {key!r}: {err}") from err

        return TensorFile(path, shapes, dtypes, metadata, get, PageReleaser([path]))

    flat: dict[str, torch.Tensor] = {}
    _flatten(torch_load(path), "", flat, path)
    mapped = zipfile.is_zipfile(path)  # as torch_load: only the zip format is memory-mapped
    return TensorFile(path, {k: tuple(v.shape) for k, v in flat.items()},
                      {k: v.dtype for k, v in flat.items()}, {}, flat.__getitem__,
                      PageReleaser([path]) if mapped else None)



_ALIGNMENT = 64  # bytes: what torch's CPU allocator gives and its vectorised kernels expect


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` in memory aligned to 64 bytes. Tensors read from a safetensors file (or an
    mmap'd .pt) can start at any byte of the file; CPU kernels then take other code paths
    whose last-bit rounding differs, so the same weights would compute slightly different
    outputs depending on the file format they came from. A copy (one tensor at a time)
    makes results independent of the file and keeps the fast paths."""
    if t.device.type == "cpu" and t.numel() and t.data_ptr() % _ALIGNMENT:
        return t.clone()
    return t

