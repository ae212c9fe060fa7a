"""The optimiser of every method: Adam (the papers'), configurable through ``optimizer_args``.

Adam runs fused (one kernel pass over all tensors instead of a dozen small ops per tensor: 1.4 ms
instead of 5.5 ms per step for the width-16 U-Net on one CPU thread, docs/RESULTS.md) wherever
torch has the kernel, except when the Trainer clips gradients under mixed precision: Lightning
refuses to clip the gradients of an optimiser that unscales them itself, which fused Adam does.
``optimizer_args`` are passed to ``torch.optim.Adam`` (``betas``, ``eps``, ``weight_decay``,
``amsgrad``, ``fused``, ...); ``fused: true`` or ``false`` overrides the automatic choice.

>>> p = torch.nn.Parameter(torch.zeros(2))
>>> adam([{"params": [p], "lr": 0.1}]).defaults["fused"]
True
>>> adam([{"params": [p], "lr": 0.1}], {"fused": False, "betas": (0.9, 0.99)}).defaults["betas"]
(0.9, 0.99)
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Mapping, Optional

import torch

_MIXED = ("16-mixed", "bf16-mixed", "16", "bf16")


def check_optimizer_args(optimizer_args: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Validate ``optimizer_args`` against ``torch.optim.Adam``'s keyword arguments, naming the bad key."""
    args = dict(optimizer_args or {})
    known = set(inspect.signature(torch.optim.Adam.__init__).parameters) - {"self", "params", "lr"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"optimizer_args: unknown Adam argument(s) {unknown}; Adam takes {sorted(known)}")
    return args


def _clips_under_mixed_precision(trainer: Any) -> bool:
    if trainer is None:
        return False
    clipping = bool(getattr(trainer, "gradient_clip_val", None))
    precision = str(getattr(trainer, "precision", "32-true"))
    return clipping and precision in _MIXED


def adam(
    param_groups: List[Dict[str, Any]], optimizer_args: Optional[Mapping[str, Any]] = None, trainer: Any = None
) -> torch.optim.Adam:
    """``torch.optim.Adam`` over ``param_groups`` (each with its ``lr``), fused when it can be (see above)."""
    args = check_optimizer_args(optimizer_args)
    params = [p for group in param_groups for p in group["params"]]
    if args.get("fused") is None:
        fusable = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        args["fused"] = True if fusable and not _clips_under_mixed_precision(trainer) else None
    return torch.optim.Adam(param_groups, **args)
