"""Type checks every module of ``kv_core`` uses on user values, before any network runs.

``bool`` is an ``int`` to Python but never a count, a seed or a weight here, so every check
refuses it.
"""
from __future__ import annotations

import math
import numbers


def is_int(value) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A real number (int, float, numpy scalar), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_guidance(name: str, value) -> float:
    """A guidance weight: any finite real number, returned as float. ``ValueError`` names ``name``."""
    if not is_real(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)
