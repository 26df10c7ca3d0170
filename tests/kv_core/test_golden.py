"""The golden runner: every case of the manifest in $KV_GOLDEN_DIR (default tests/data/golden).

Each case is built from its own files, config and inputs by the runner registered for its
kind (tests/support/golden_kinds/), run in float32 and compared at the manifest's tolerances.
A kind without a runner is skipped with its kind named, never passed.
"""
from pathlib import Path

import pytest
import torch

import golden_kinds  # noqa: F401  (registers the runners)
from golden_support import RUNNERS, NotReproduced, compare_case, golden_dir, load_cases

pytestmark = pytest.mark.golden

_ROOT = golden_dir()
_CASES = load_cases(_ROOT) if (_ROOT / "manifest.json").exists() else []


def test_golden_folder_present():
    assert _CASES, f"no golden manifest at {_ROOT} (set KV_GOLDEN_DIR)"


@pytest.mark.parametrize("case", _CASES, ids=[c.name for c in _CASES])
def test_golden_case(case):
    runner = RUNNERS.get(case.kind)
    if runner is None:
        pytest.skip(f"golden kind {case.kind!r} has no runner yet")
    torch.manual_seed(0)  # runners must not depend on the global RNG; this makes a slip visible
    with torch.inference_mode():
        try:
            outputs = runner(case)
        except NotReproduced as why:
            pytest.skip(f"{case.kind}: {why}")
    problems = compare_case(case, outputs)
    assert not problems, f"{case.name} ({case.kind}):\n  " + "\n  ".join(problems)


def test_default_golden_folder_is_the_repository_copy(monkeypatch):
    """Without $KV_GOLDEN_DIR the suite reads the vectors kept in the repository, so a
    plain clone (nothing beside it) runs every golden case."""
    from golden_support import DEFAULT_GOLDEN_DIR

    monkeypatch.delenv("KV_GOLDEN_DIR", raising=False)
    assert golden_dir() == DEFAULT_GOLDEN_DIR.resolve()
    assert DEFAULT_GOLDEN_DIR.is_relative_to(Path(__file__).resolve().parents[1])  # tests/
    assert load_cases(golden_dir()), "the repository copy of the golden vectors has no cases"
    monkeypatch.setenv("KV_GOLDEN_DIR", "/elsewhere/golden")
    assert golden_dir() == Path("/elsewhere/golden")
