"""Ensembles: the mean of K fits of one measurement from different initial weights, fitted as one batch.

A method with ``network_seeds="per_row"`` starts each row's network from its own draw. Fitting a batch
in which every measurement appears K times (``repeat_measurements``) then runs K independent fits on the
batched per-row machinery (one vmapped pass a step), and ``ensemble_mean`` averages each measurement's K
reconstructions. With the final projection on (MRI) the mean is still consistent with the measured
samples: each member is, and the projection is affine.

Example::

    batch = repeat_measurements(datamodule.batch, 3)          # every measurement three times
    method = ASeqDIP(num_measurements=len(batch["y"]), network_seeds="per_row")
    pl.Trainer(max_steps=600).fit(method, DataLoader([batch] * 600, batch_size=None))
    images = ensemble_mean(method.all_reconstructions(), 3)  # one per measurement

>>> import torch
>>> from ugodit_pl.operators import SingleCoilMRI
>>> op = SingleCoilMRI(torch.ones(8, 8))
>>> batch = {"y": op(torch.randn(2, 2, 8, 8)), "operator": op, "index": torch.tensor([0, 1]), "name": ["a", "b"]}
>>> three = repeat_measurements(batch, 3)
>>> three["y"].shape[0], three["index"].tolist(), three["name"]
(6, [0, 1, 2, 3, 4, 5], ['a#0', 'a#1', 'a#2', 'b#0', 'b#1', 'b#2'])
>>> ensemble_mean(torch.arange(6.0).view(6, 1), 3).flatten().tolist()
[1.0, 4.0]
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import torch

from ugodit_pl.arguments import whole
from ugodit_pl.operators.base import Operator


def repeat_measurements(batch: Mapping[str, Any], size: int) -> Dict[str, Any]:
    """``batch`` with every measurement repeated ``size`` times in a row (rows m * size + k): tensors and
    lists with one entry per measurement, and the operator (``select``); ``index`` numbers the new rows,
    ``name`` gets ``#k``. Raises a ValueError for a batch without ``y`` or a size below 1."""
    size = whole("ensemble size", size, minimum=1)
    if "y" not in batch or not isinstance(batch["y"], torch.Tensor):
        raise ValueError("repeat_measurements needs a batch with the measurements 'y' (B, ...)")
    count = int(batch["y"].shape[0])
    picks = torch.arange(count).repeat_interleave(size)
    out: Dict[str, Any] = {}
    for key, value in batch.items():
        if key == "index":
            out[key] = torch.arange(count * size)
        elif isinstance(value, Operator):
            out[key] = value.select(picks)
        elif isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == count:
            out[key] = value.index_select(0, picks.to(value.device))
        elif isinstance(value, (list, tuple)) and len(value) == count:
            out[key] = [f"{value[m]}#{k}" if key == "name" else value[m] for m in range(count) for k in range(size)]
        else:
            out[key] = value
    return out


def ensemble_mean(reconstructions: torch.Tensor, size: int) -> torch.Tensor:
    """(N, ...) the mean of each measurement's ``size`` consecutive rows of (N * size, ...) reconstructions."""
    size = whole("ensemble size", size, minimum=1)
    if reconstructions.shape[0] % size:
        raise ValueError(f"{reconstructions.shape[0]} reconstructions are not whole ensembles of {size}")
    return reconstructions.reshape(-1, size, *reconstructions.shape[1:]).mean(dim=1)
