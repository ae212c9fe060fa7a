"""The ``compile`` option of the methods: which ``torch.compile`` arguments it stands for."""

from __future__ import annotations

import inspect
from typing import Any, Dict, Mapping, Optional, Union

import torch


def compile_arguments(compile: Union[bool, Mapping[str, Any], None]) -> Optional[Dict[str, Any]]:
    """The ``torch.compile`` arguments a method's ``compile`` option asks for (None: no compilation).

    Static shapes (``dynamic=False``: a fit's shapes never change, and a dynamic-shape graph is what
    failed to compile when a second fit of another size recompiled), and where torch has it
    ``isolate_recompiles=True`` (each method's compilations count against its own limit, not against
    those of the fits before it); the dict given overrides them.

    >>> compile_arguments(False), compile_arguments(True)["dynamic"], compile_arguments({"mode": "max-autotune"})["mode"]
    (None, False, 'max-autotune')
    """
    if compile is None or compile is False:
        return None
    if compile is not True and not isinstance(compile, Mapping):
        raise TypeError(f"compile must be True, False or a dict of torch.compile arguments, got {compile!r}")
    known = set(inspect.signature(torch.compile).parameters) - {"model"}
    given = {} if compile is True else dict(compile)
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"compile: unknown torch.compile argument(s) {unknown}; it takes {sorted(known)}")
    defaults = {"dynamic": False, **({"isolate_recompiles": True} if "isolate_recompiles" in known else {})}
    return {**defaults, **given}
