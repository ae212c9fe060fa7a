"""Checks of the methods' constructor arguments: each error names the argument and what it must be.

>>> positive("lr", 1e-3)
0.001
>>> whole("update_every", 2.5, minimum=1)
Traceback (most recent call last):
...
ValueError: update_every must be a whole number >= 1, got 2.5
"""

from __future__ import annotations

import math
from typing import Any, Sequence


def _number(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def positive(name: str, value: Any) -> float:
    """``value`` as a float > 0 (finite)."""
    number = _number(name, value)
    if number <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def non_negative(name: str, value: Any) -> float:
    """``value`` as a float >= 0 (finite)."""
    number = _number(name, value)
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return number


def fraction(name: str, value: Any, low: float, high: float) -> float:
    """``value`` as a float in [low, high)."""
    number = _number(name, value)
    if not low <= number < high:
        raise ValueError(f"{name} must be in [{low}, {high}), got {value!r}")
    return number


def whole(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (2.0 is accepted, 2.5 and True are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Validate a string argument against its choices, naming the argument."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value
