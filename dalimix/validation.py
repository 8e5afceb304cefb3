"""Checking user-facing arguments, once, with errors that name the argument.

Every check raises `ArgumentError` (a `ValueError`) whose `.argument` is the argument's name as the API
spells it (`batch_size`, `mixup_alpha`, ...), so a command line can say which flag was wrong by a table
lookup instead of by reading the message. No torch, no DALI.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np


class ArgumentError(ValueError):
    """A bad argument; `argument` is its name, the message says what was expected."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def positive_int(name: str, value: Any, *, label: Optional[str] = None) -> int:
    if not _is_int(value) or value < 1:
        raise ArgumentError(name, f"{label or name} must be a positive int, got {value!r}")
    return int(value)


def optional_epoch(name: str, value: Any, *, label: Optional[str] = None) -> Optional[int]:
    """None or an epoch index >= 0."""
    if value is not None and (not _is_int(value) or value < 0):
        raise ArgumentError(name, f"{label or name} must be None or an int >= 0, got {value!r}")
    return None if value is None else int(value)


def index_below(name: str, value: Any, limit: int, limit_name: str) -> int:
    if not _is_int(value) or not 0 <= value < limit:
        raise ArgumentError(name, f"{name} must be an int in [0, {limit_name}={limit}), got {value!r}")
    return int(value)


def probability(name: str, value: Any, *, label: Optional[str] = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= value <= 1.0:
        raise ArgumentError(name, f"{label or name} must be in [0, 1], got {value!r}")
    return float(value)


def non_negative(name: str, value: Any, *, label: Optional[str] = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value) \
            or value < 0:
        raise ArgumentError(name, f"{label or name} must be a finite number >= 0, got {value!r}")
    return float(value)


def below_one(name: str, value: Any, *, label: Optional[str] = None) -> float:
    """A number in [0, 1) (label smoothing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= value < 1.0:
        raise ArgumentError(name, f"{label or name} must be in [0, 1), got {value!r}")
    return float(value)


def one_of(name: str, value: Any, options: Sequence[Any], *, label: Optional[str] = None) -> Any:
    if value not in options:
        raise ArgumentError(name, f"{label or name} must be one of {tuple(options)}, got {value!r}")
    return value


def flag(name: str, value: Any, *, label: Optional[str] = None) -> bool:
    if not isinstance(value, bool):
        raise ArgumentError(name, f"{label or name} must be a bool, got {value!r}")
    return value


def range_pair(name: str, value: Any, low: float = 0.0) -> tuple[float, float]:
    """(min, max) with low < min <= max."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ArgumentError(name, f"{name} must be a (min, max) pair, got {value!r}") from None
    if not (low < a <= b):
        raise ArgumentError(name, f"{name} must satisfy {low} < min <= max, got {value!r}")
    return a, b
