"""A training batch as the methods read it: its layout, its rows, and what a step works on.

A batch is a dict with ``y`` (B measurements), ``operator`` and optionally ``index`` (each
measurement's row in the set; default 0..B-1), ``target``, ``reference``, ``name``
(docs/ARCHITECTURE.md, "Data modules").

>>> from ugodit_pl.operators import SingleCoilMRI
>>> batch = {"y": torch.zeros(2, 1, 4, 4, dtype=torch.complex64), "operator": SingleCoilMRI(torch.ones(4, 4))}
>>> batch_rows(batch, "cpu").tolist()
[0, 1]
>>> check_batch_layout(batch, num_measurements=1, owner="ASeqDIP")
Traceback (most recent call last):
...
ValueError: batch['y'] has shape (2, 1, 4, 4): its first dimension is read as 2 measurements (2 indices, num_measurements=1); measurements need a batch dimension: (B, coils, H, W) k-space or (B, C, h, w) images (y[None] for one)
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Tuple

import torch

from ugodit_pl.operators.base import Operator


def batch_rows(batch: Mapping[str, Any], device: Any) -> torch.Tensor:
    """The rows (positions in the fitted set) of the batch's measurements, a (B,) LongTensor on ``device``."""
    index = batch.get("index")
    if index is None:
        index = torch.arange(batch["y"].shape[0])
    return torch.as_tensor(index, dtype=torch.long).to(device).flatten()


def check_batch_layout(batch: Mapping[str, Any], num_measurements: int, owner: str) -> None:
    """The batch has ``y`` and an ``Operator``, one row per measurement, rows in 0..N-1 without repeats.

    ``owner`` (the method's class name) is named in the errors.
    """
    for key in ("y", "operator"):
        if key not in batch:
            raise KeyError(f"{owner} needs batches with a {key!r} entry (see docs/ARCHITECTURE.md)")
    if not isinstance(batch["operator"], Operator):
        raise TypeError(f"batch['operator'] must be a ugodit_pl Operator, got {type(batch['operator']).__name__}")
    index = batch_rows(batch, "cpu")
    y = batch["y"]
    if len(index) != y.shape[0] or ("index" not in batch and len(index) > num_measurements):
        raise ValueError(
            f"batch['y'] has shape {tuple(y.shape)}: its first dimension is read as {y.shape[0]} measurements "
            f"({len(index)} indices, num_measurements={num_measurements}); measurements need a batch "
            f"dimension: (B, coils, H, W) k-space or (B, C, h, w) images (y[None] for one)"
        )
    if int(index.max()) >= num_measurements or int(index.min()) < 0:
        raise ValueError(
            f"batch index {index.tolist()} is outside the {num_measurements} measurements this "
            f"{owner} was built for (num_measurements={num_measurements})"
        )
    if index.unique().numel() != index.numel():
        raise ValueError(f"batch index {index.tolist()} repeats a measurement")


def measurement_fingerprints(y: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """(num_rows,) float64: sum |y_i| of each row's measurement (rows not in ``rows`` are 0).

    The fit checks every step that a row's measurement is the one it was set up with.
    """
    sums = y.detach().abs().to(torch.float64).reshape(len(rows), -1).sum(dim=1)
    out = torch.zeros(num_rows, dtype=torch.float64, device=y.device)
    out[rows.to(y.device)] = sums
    return out


@dataclass
class CheckedBatch:
    """A training batch that ``begin_step`` has checked, and what it derived from it.

    It recognises the batch by identity: the same ``y``, ``operator`` and ``index`` objects, with ``y``
    not modified in place since (its version counter). A loader that builds new tensors every step is
    checked every step. ``support`` is the operator's image support (None: the whole image); the
    outputs are recorded inside it only (the data never constrain the pixels outside it, so what the
    network puts there is arbitrary; the reconstructions are reported inside the support only and
    the loss is unaffected).
    """

    parts: Tuple[Any, ...]  # weak references to y, the operator and the index (or None)
    version: int
    rows: torch.Tensor
    row_list: List[int]
    y: torch.Tensor
    support: Optional[torch.Tensor]
    operator: Operator  # the operator the fit uses: the batch's, or its samples less the held-out ones
    measured_y: torch.Tensor  # every measured sample, normalised (``y`` unless samples are held out)
    measured_operator: Operator
    held_out: Optional[torch.Tensor] = None  # (B, 1, H, W): 1 at the held-out samples (``methods.holdout``)

    @staticmethod
    def _parts(batch: Mapping[str, Any]) -> Optional[Tuple[Any, ...]]:
        index = batch.get("index")
        if index is not None and not isinstance(index, torch.Tensor):
            return None  # a list or tuple: no identity to rely on
        return (weakref.ref(batch["y"]), weakref.ref(batch["operator"]), None if index is None else weakref.ref(index))

    @classmethod
    def of(cls, batch: Mapping[str, Any], rows: torch.Tensor, row_list: List[int], y: torch.Tensor,
           support: Optional[torch.Tensor], **derived: Any) -> "CheckedBatch":
        """``derived``: ``operator``, ``measured_y``, ``measured_operator``, ``held_out``."""
        return cls(cls._parts(batch) or (), batch["y"]._version, rows, row_list, y, support, **derived)

    def serves(self, batch: Mapping[str, Any]) -> bool:
        """Whether ``batch`` is the checked one, unchanged."""
        index = batch.get("index")
        if not self.parts or (index is None) != (self.parts[2] is None) or not isinstance(index, (torch.Tensor, type(None))):
            return False
        same = self.parts[0]() is batch["y"] and self.parts[1]() is batch["operator"]
        return same and (index is None or self.parts[2]() is index) and batch["y"]._version == self.version


@dataclass
class Step:
    """What one training step works on: this process's rows, their normalised measurements, their operator."""

    rows: torch.Tensor      # (B,) positions in the set, on the module's device
    row_list: List[int]     # the same, as Python ints
    counts: List[int]       # training steps each row has taken before this one
    y: torch.Tensor         # (B, ...) the fitted measurements divided by their scales
    operator: Operator      # their operator
    support: Optional[torch.Tensor] = None  # (B|1, 1, H, W): where the outputs are recorded (None: everywhere)
    measured_y: Optional[torch.Tensor] = None  # every measured sample (None: ``y``; differs when some are held out)
    measured_operator: Optional[Operator] = None
