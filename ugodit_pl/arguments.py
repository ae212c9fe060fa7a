"""Checks of constructor arguments (methods, networks, data modules, callbacks): each error names the
argument and what it must be, before any work starts. The one set of validators of the library.

``error`` chooses the exception class (a ``ValueError`` subclass: the data modules raise their
``DataError``); a ``name`` such as ``"WMVEarlyStopping: window"`` says whose argument it is.

>>> positive("lr", 1e-3)
0.001
>>> whole("update_every", 2.5, minimum=1)
Traceback (most recent call last):
...
ValueError: update_every must be a whole number >= 1, got 2.5
"""

from __future__ import annotations

import math
from typing import Any, Sequence, Type

Error = Type[ValueError]


def number(name: str, value: Any, *, error: Error = ValueError) -> float:
    """``value`` as a finite float."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise error(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(result):
        raise error(f"{name} must be a finite number, got {value!r}")
    return result


def positive(name: str, value: Any, *, error: Error = ValueError) -> float:
    """``value`` as a float > 0 (finite)."""
    result = number(name, value, error=error)
    if result <= 0:
        raise error(f"{name} must be > 0, got {value!r}")
    return result


def non_negative(name: str, value: Any, *, error: Error = ValueError) -> float:
    """``value`` as a float >= 0 (finite)."""
    result = number(name, value, error=error)
    if result < 0:
        raise error(f"{name} must be >= 0, got {value!r}")
    return result


def fraction(name: str, value: Any, low: float, high: float, *, error: Error = ValueError) -> float:
    """``value`` as a float in [low, high)."""
    result = number(name, value, error=error)
    if not low <= result < high:
        raise error(f"{name} must be in [{low}, {high}), got {value!r}")
    return result


def whole(name: str, value: Any, minimum: int, *, error: Error = ValueError) -> int:
    """``value`` as an int >= ``minimum`` (2.0 is accepted, 2.5 and True are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < minimum:
        raise error(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name: str, value: Any, choices: Sequence[Any], *, error: Error = ValueError) -> Any:
    """Validate an argument against its choices, naming the argument."""
    if value not in choices:
        raise error(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value
