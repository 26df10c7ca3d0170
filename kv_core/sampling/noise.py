"""Sources of the random numbers a sampling loop draws.

Every random tensor of generation comes from a ``NoiseSource`` the caller passes in, in
a fixed order (initial latent, key-frame augmentation noise, per-step sampler noise):

- ``SeededNoise(seed)``: draws on the CPU from a ``torch.Generator`` seeded with
  ``seed`` (always float32, whatever the thread count) and moves the result to the
  requested device, so a seed gives bit-identical noise on any device, with any number
  of threads and in any process. The videos made from that noise are equal up to
  floating-point rounding: different devices, thread counts or dtypes sum in different
  orders (measured on a CPU with 1 and 2 threads: a few values 1/255 apart).
- ``ReplayNoise(tensors)``: hands out recorded tensors in order (the golden vectors, or
  draws captured by ``RecordingNoise``), checking each shape.

``stage_seed(seed, stage)`` derives the seed of each pipeline stage from one user seed,
so the stages of a pipeline draw independent streams and a stage run alone with the same
seed reproduces the same stage of a full run. An interpolation pass keys its stream on
what its input carries, the number of frames it interpolates (``interpolation_stage``):
the first pass over 12 keyframes and the second over 45 frames draw different streams,
and a pass run on a saved latent draws the stream of the direct run, whatever the
keyframe count and however many passes came before.
"""
from __future__ import annotations

import hashlib
import re
from typing import Protocol, Sequence

import torch

from ..stages import STAGES

#: the stages whose stream is keyed on the stage name alone (an interpolation pass keys
#: its stream on its input instead: :func:`interpolation_stage`)
NAMED_STREAMS = tuple(stage for stage in STAGES if stage != "interpolation")
_INTERPOLATION = re.compile(r"interpolation_from_([0-9]+)")
_EXTEND = re.compile(r"extend_from_([0-9]+)")
MAX_SEED = 2 ** 64 - 1


class NoiseSource(Protocol):
    def randn(self, shape: Sequence[int], *, device=None, dtype=torch.float32) -> torch.Tensor:
        """Standard normal draw."""

    def rand(self, shape: Sequence[int], *, device=None, dtype=torch.float32) -> torch.Tensor:
        """Uniform [0, 1) draw."""


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer from 0 to 2**64 - 1, got {seed!r}")
    return seed


def interpolation_stage(num_frames: int) -> str:
    """The noise stream of an interpolation pass over ``num_frames`` input frames
    (``"interpolation_from_12"``): derived from the input tensor alone, so the pass draws
    the same noise whether its input came straight from the previous stage or from a
    saved latent."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 2:
        raise ValueError(f"an interpolation pass needs at least 2 input frames, got {num_frames!r}")
    return f"interpolation_from_{num_frames}"


def extend_stage(num_keyframes: int) -> str:
    """The noise stream of a segment that continues a video of ``num_keyframes``
    keyframes (``"extend_from_12"``, ``kv_core.extend``): keyed on what its input carries,
    so the segment is reproduced from the same keyframes and seed (a loaded latent too),
    and segments of one seed at different places draw different noise."""
    if isinstance(num_keyframes, bool) or not isinstance(num_keyframes, int) or num_keyframes < 2:
        raise ValueError(f"a video to continue has at least 2 keyframes, got {num_keyframes!r}")
    return f"extend_from_{num_keyframes}"


def stage_seed(seed: int, stage: str) -> int:
    """The seed of one pipeline stage (one of ``NAMED_STREAMS``, ``interpolation_stage(N)`` or
    ``extend_stage(N)``), derived from the user seed with a hash so that neighbouring seeds
    and different stages never share a stream."""
    check_seed(seed)
    match = (_INTERPOLATION.fullmatch(stage) or _EXTEND.fullmatch(stage)) if isinstance(stage, str) else None
    if stage not in NAMED_STREAMS and not (match and int(match.group(1)) >= 2):
        raise ValueError(f"stage must be one of {NAMED_STREAMS}, 'interpolation_from_<N>' (N >= 2 input frames) or "
                         f"'extend_from_<N>' (N >= 2 keyframes), got {stage!r}")
    digest = hashlib.blake2b(f"kandinsky-video:{stage}:{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # torch.Generator takes < 2**63 safely


class SeededNoise:
    """Draws from a CPU ``torch.Generator`` (float32), then moves to ``device``/``dtype``."""

    def __init__(self, seed: int):
        self.seed = check_seed(seed)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    @classmethod
    def for_stage(cls, seed: int, stage: str) -> "SeededNoise":
        return cls(stage_seed(seed, stage))

    def randn(self, shape, *, device=None, dtype=torch.float32):
        x = torch.randn(tuple(shape), generator=self.generator, dtype=torch.float32)
        return x.to(device=device, dtype=dtype)

    def rand(self, shape, *, device=None, dtype=torch.float32):
        x = torch.rand(tuple(shape), generator=self.generator, dtype=torch.float32)
        return x.to(device=device, dtype=dtype)


class NoiseExhausted(RuntimeError):
    pass


class ReplayNoise:
    """Returns the given tensors in order, whatever the kind of draw asked for."""

    def __init__(self, tensors: Sequence[torch.Tensor]):
        self._tensors = list(tensors)
        self._next = 0

    @property
    def remaining(self) -> int:
        return len(self._tensors) - self._next

    def _take(self, shape, device, dtype):
        if self._next >= len(self._tensors):
            raise NoiseExhausted(f"replay has only {len(self._tensors)} recorded draws")
        x = self._tensors[self._next]
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"recorded draw {self._next} has shape {tuple(x.shape)}, "
                             f"the sampler asked for {tuple(shape)}")
        self._next += 1
        return x.to(device=device, dtype=dtype)

    def randn(self, shape, *, device=None, dtype=torch.float32):
        return self._take(shape, device, dtype)

    def rand(self, shape, *, device=None, dtype=torch.float32):
        return self._take(shape, device, dtype)

    def assert_consumed(self) -> None:
        if self.remaining:
            raise AssertionError(f"{self.remaining} recorded draws were not used")


class RecordingNoise:
    """Wraps a source and keeps a CPU copy of every draw (``.draws``) for later replay."""

    def __init__(self, source: NoiseSource):
        self.source = source
        self.draws: list[torch.Tensor] = []

    def randn(self, shape, *, device=None, dtype=torch.float32):
        x = self.source.randn(shape, device=device, dtype=dtype)
        self.draws.append(x.detach().cpu().clone())
        return x

    def rand(self, shape, *, device=None, dtype=torch.float32):
        x = self.source.rand(shape, device=device, dtype=dtype)
        self.draws.append(x.detach().cpu().clone())
        return x


def as_noise_source(noise, stage: str) -> NoiseSource:
    """``None``/int seed → ``SeededNoise.for_stage``; a source is returned as is."""
    if noise is None:
        noise = 0
    if isinstance(noise, int) and not isinstance(noise, bool):
        return SeededNoise.for_stage(noise, stage)
    if hasattr(noise, "randn") and hasattr(noise, "rand"):
        return noise
    raise TypeError(f"noise must be a seed (int) or a noise source with randn/rand, got {type(noise).__name__}")
