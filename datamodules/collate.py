"""Collate per-measurement dicts into the batch dict that methods consume (docs/ARCHITECTURE.md, "Batches").

Rules, per key:

- tensors are stacked along a new leading dimension (per-item tensors carry no batch dimension);
  tensors of different shapes are an error that names the key and the shapes;
- Python ints / floats / bools become a tensor (``index`` and ``slice`` thus become LongTensors);
- strings (and any other value) are gathered into a list;
- :class:`~ugodit_pl.operators.base.Operator` s are concatenated with ``type(op).stack(ops)``
  (all items must hold the same operator class).

The keys ``y`` and ``operator`` must be in every item (docs/ARCHITECTURE.md, "Data modules", has the
whole batch contract). ``index`` defaults to the item's position and ``name`` to
``measurement_<index>``, as the methods default them. Another key (``target``, ``reference``, ...)
that only some items have is dropped from the whole batch with a warning: a group may mix
measurements with and without ground truth (e.g. a fully sampled file and a really undersampled one
in a pre-training set); metrics are then simply not reported for it.

>>> import torch
>>> from ugodit_pl.operators import SingleCoilMRI
>>> items = [dict(y=torch.zeros(1, 4, 4, dtype=torch.complex64), operator=SingleCoilMRI(torch.ones(4, 4)),
...               index=i, name=f"m{i}") for i in range(3)]
>>> batch = collate_measurements(items)
>>> batch["y"].shape, batch["index"].tolist(), batch["name"], batch["operator"].batch_size
(torch.Size([3, 1, 4, 4]), [0, 1, 2], ['m0', 'm1', 'm2'], 1)
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import torch

__all__ = ["REQUIRED_KEYS", "collate_measurements"]

REQUIRED_KEYS = ("y", "operator")
"""Keys every measurement dict must have (``index`` and ``name`` have defaults)."""


def collate_measurements(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One batch dict from per-measurement dicts (see the module docstring for the rules)."""
    items = list(items)
    if not items:
        raise ValueError("collate_measurements needs at least one measurement, got none")
    for key in REQUIRED_KEYS:
        lacking = [i for i, item in enumerate(items) if key not in item]
        if lacking:
            raise ValueError(f"measurement(s) {lacking} have no {key!r}; every measurement needs {REQUIRED_KEYS}")
    items = [dict(item) for item in items]
    for position, item in enumerate(items):
        item.setdefault("index", position)
        item.setdefault("name", f"measurement_{int(item['index'])}")
    keys: list[str] = []
    for item in items:
        keys.extend(k for k in item if k not in keys)
    batch: dict[str, Any] = {}
    for key in keys:
        having = [key in item for item in items]
        if not all(having):
            warnings.warn(
                f"collate_measurements: {key!r} is present in {sum(having)} of {len(items)} measurements "
                f"and is dropped from the batch",
                stacklevel=2,
            )
            continue
        batch[key] = _collate_values(key, [item[key] for item in items])
    return batch


def _collate_values(key: str, values: list[Any]) -> Any:
    from ugodit_pl.operators.base import Operator

    first = values[0]
    if isinstance(first, Operator):
        kinds = {type(v) for v in values}
        if len(kinds) != 1:
            raise TypeError(f"{key!r}: cannot stack operators of different classes {sorted(k.__name__ for k in kinds)}")
        return type(first).stack(values)
    if isinstance(first, torch.Tensor):
        if not all(isinstance(v, torch.Tensor) for v in values):
            raise TypeError(f"{key!r}: some measurements hold a tensor and some do not")
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) != 1:
            raise ValueError(
                f"{key!r}: measurements of different shapes {sorted(shapes)} cannot be batched "
                f"(crop or resize them to one size)"
            )
        return torch.stack(values)
    if isinstance(first, (bool, int, float)) and all(isinstance(v, (bool, int, float)) for v in values):
        return torch.tensor(values)
    return list(values)
