"""Reading a golden folder (see tests/data/golden/README.md) and comparing results.

Nothing here knows any case by name: everything comes from the folder's manifest.
Runners for each *kind* live in ``tests/support/golden_kinds/*.py`` and register themselves
with :func:`golden_kind`; a kind with no runner is reported as skipped.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

#: The reference vectors kept in the repository (a copy of the official implementation's
#: output, see its README.md); ``$KV_GOLDEN_DIR`` runs another such folder instead.
DEFAULT_GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"


def golden_dir() -> Path:
    return Path(os.environ.get("KV_GOLDEN_DIR", DEFAULT_GOLDEN_DIR)).resolve()


class NotReproduced(Exception):
    """Raised by a runner for a case it deliberately does not reproduce (it is skipped,
    with this reason, never passed)."""


@dataclass
class GoldenCase:
    root: Path
    spec: dict
    _data: dict | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def kind(self) -> str:
        return self.spec["kind"]

    @property
    def args(self) -> dict:
        return self.spec.get("args") or {}

    def path(self, rel: str) -> Path:
        return self.root / rel

    @cached_property
    def configs(self) -> dict:
        return json.loads((self.root / "configs.json").read_text())

    def _load(self) -> dict:
        if self._data is None:
            from safetensors.torch import load_file

            # copy: tensors read from safetensors may be unaligned (see the golden README)
            self._data = {k: v.clone() for k, v in load_file(self.root / self.spec["inputs_file"]).items()}
        return self._data

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        data = self._load()
        return {k: data[k] for k in self.spec["inputs"]}

    @property
    def expected(self) -> dict[str, torch.Tensor]:
        data = self._load()
        return {k: data[k] for k in self.spec["outputs"]}

    @property
    def noises(self) -> list[torch.Tensor]:
        data = self._load()
        return [data[n["name"]] for n in self.spec.get("noises", [])]


def load_cases(root: Path | None = None) -> list[GoldenCase]:
    root = root or golden_dir()
    manifest = json.loads((root / "manifest.json").read_text())
    return [GoldenCase(root, spec) for spec in manifest["cases"]]


# --- registry --------------------------------------------------------------------

Runner = Callable[[GoldenCase], dict]
RUNNERS: dict[str, Runner] = {}


def golden_kind(kind: str):
    """Register ``fn(case) -> {output_name: tensor}`` as the runner of ``kind``."""

    def register(fn: Runner) -> Runner:
        if kind in RUNNERS:
            raise ValueError(f"two runners for golden kind {kind!r}")
        RUNNERS[kind] = fn
        return fn

    return register


# --- comparison ------------------------------------------------------------------

def compare_output(name: str, spec: dict, got: torch.Tensor, want: torch.Tensor) -> str | None:
    """Return None if ``got`` matches ``want`` under the manifest's tolerance, else a message."""
    got = torch.as_tensor(got).detach().cpu()
    if tuple(got.shape) != tuple(want.shape):
        return f"{name}: shape {tuple(got.shape)} != expected {tuple(want.shape)}"
    tol = spec.get("tolerance", "exact")
    if want.dtype == torch.uint8:
        if got.dtype != torch.uint8:
            return f"{name}: dtype {got.dtype} != uint8"
        diff = (got.int() - want.int()).abs()
        atol = tol["atol"] if isinstance(tol, dict) else 0
        frac = tol.get("max_mismatch_fraction", 0.0) if isinstance(tol, dict) else 0.0
        worst = int(diff.max()) if diff.numel() else 0
        mismatch = float((diff > 0).float().mean()) if diff.numel() else 0.0
        if worst > atol or mismatch > frac:
            return f"{name}: max |diff| {worst} (atol {atol}), mismatching fraction {mismatch:.4f} (max {frac})"
        return None
    if tol == "exact" or not want.is_floating_point():
        if got.dtype != want.dtype and not (got.is_floating_point() or want.is_floating_point()):
            got = got.to(want.dtype)
        if not torch.equal(got.to(want.dtype), want):
            n = int((got.to(want.dtype) != want).sum())
            return f"{name}: {n} of {want.numel()} values differ (exact match required)"
        return None
    got = got.to(torch.float64)
    want64 = want.to(torch.float64)
    if not torch.isfinite(got).all():
        return f"{name}: non-finite values"
    err = (got - want64).abs()
    bound = tol["atol"] + tol.get("rtol", 0.0) * want64.abs()
    if (err > bound).any():
        i = int(torch.argmax(err - bound))
        return (f"{name}: max |diff| {float(err.max()):.3e} > atol {tol['atol']:.3e} "
                f"(worst at flat index {i}: got {float(got.flatten()[i]):.6g}, want {float(want64.flatten()[i]):.6g})")
    return None


def compare_case(case: GoldenCase, outputs: dict) -> list[str]:
    problems = []
    expected = case.expected
    for name, spec in case.spec["outputs"].items():
        if name not in outputs:
            problems.append(f"{name}: not produced by the runner")
            continue
        msg = compare_output(name, spec, outputs[name], expected[name])
        if msg:
            problems.append(msg)
    return problems
