"""What every measurement data module shares: a fixed set of N measurements, sharded over ranks,
served as ONE pre-collated batch at every training step.

Every method fits a fixed set of N measurements with one optimiser step per training step, and every
step needs the whole set (of this rank). So ``train_dataloader()`` is :class:`RepeatedBatch`, an
iterable that yields the same collated batch ``steps_per_epoch`` times in this process. It is not
a ``DataLoader``: Lightning injects no ``DistributedSampler`` into it (the sharding below is the
only one) and has no worker or ``__len__`` warning to give about it.

Sharding: rank r of w ranks holds the measurements at global positions r, r + w, r + 2w, ... (no
padding, no duplicates; N need not be divisible by w); each batch's ``index`` holds the global
positions. A rank without any measurement is an error. The rank and world size come from, in this
order: the ``rank`` / ``world_size`` arguments of :meth:`MeasurementDataModule.setup`, the attached
trainer (``trainer.global_rank``, ``trainer.world_size``), ``torch.distributed`` when initialised,
else 0 / 1.

Subclasses implement ``_measurement_count()`` (cheap: builds and validates the index of the
selected set) and ``_load_measurement(position)`` (reads one measurement, returns its item dict).

>>> shard_positions(5, rank=1, world_size=2)
[1, 3]
"""

from __future__ import annotations

from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from torch.utils.data import IterableDataset

from ugodit_pl.arguments import check_choice, whole

from .collate import collate_measurements
from .errors import DataError

__all__ = ["ROLES", "MeasurementDataModule", "RepeatedBatch", "resolve_shard", "shard_positions"]

ROLES = ("test", "pretrain")
"""Which set the train dataloader serves: the test measurements (fitted one by one, or DIP-style
methods) or the group pre-training measurements (UGoDIT pre-training)."""


class RepeatedBatch(IterableDataset):
    """Yields (a shallow copy of) ``batch`` ``steps`` times.

    >>> list(RepeatedBatch({"a": 1}, steps=2))
    [{'a': 1}, {'a': 1}]
    """

    def __init__(self, batch: dict[str, Any], steps: int) -> None:
        super().__init__()
        whole("steps", steps, minimum=1)
        self.batch = batch
        self.steps = int(steps)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _ in range(self.steps):
            yield dict(self.batch)  # a method that pops keys does not alter the next step's batch

    def __len__(self) -> int:
        return self.steps


def shard_positions(num_measurements: int, rank: int, world_size: int) -> list[int]:
    """Global positions of the measurements that ``rank`` of ``world_size`` holds: ``rank::world_size``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    positions = list(range(rank, num_measurements, world_size))
    if not positions:
        raise DataError(
            f"rank {rank} of {world_size} has no measurement: the set holds only {num_measurements}; "
            f"use at most {num_measurements} devices"
        )
    return positions


def resolve_shard(trainer: Any = None, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit values, else the trainer's, else torch.distributed's, else (0, 1)."""
    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither")
    if rank is not None:
        return int(rank), int(world_size)  # type: ignore[arg-type]
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class MeasurementDataModule(pl.LightningDataModule):
    """Base of the data modules: role switch, lazy ``num_measurements``, sharded ``setup``, repeated batch.

    Args:
        role: ``"test"`` (serve the test set) or ``"pretrain"`` (serve the pre-training set).
        steps_per_epoch: training steps (= optimiser steps) per epoch; ``trainer.max_steps`` sets
            the total. An epoch is only a unit for epoch-level logging and callbacks.
    """

    def __init__(self, role: str = "test", steps_per_epoch: int = 100) -> None:
        super().__init__()
        check_choice("role", role, ROLES, error=DataError)
        whole("steps_per_epoch", steps_per_epoch, minimum=1, error=DataError)
        self.role = role
        self.steps_per_epoch = int(steps_per_epoch)
        self._batch: dict[str, Any] | None = None
        self._shard: tuple[int, int] | None = None

    # -- subclass hooks -------------------------------------------------------------------------
    def _measurement_count(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load_measurement(self, position: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _validate_selection(self) -> None:
        """Checks that need more than the index (e.g. image sizes); run in setup, on every rank."""

    def _check_measurement(self, position: int) -> None:  # pragma: no cover - abstract
        """Read measurement ``position`` and check its values (cheap next to fitting it); DataError if unusable."""
        raise NotImplementedError

    # -- public API -----------------------------------------------------------------------------
    @property
    def num_measurements(self) -> int:
        """N, the number of measurements in the served set (all ranks together); cheap, lazy."""
        return self._measurement_count()

    def check(self) -> None:
        """Check the whole served set, layout and values, without loading it for a fit.

        Raises :class:`DataError` naming the first unusable file (and slice): a folder with a broken third
        file fails here, in seconds, instead of after the first two files are fitted.
        """
        self._validate_selection()
        for position in range(self._measurement_count()):
            self._check_measurement(position)

    def setup(self, stage: str | None = None, *, rank: int | None = None, world_size: int | None = None) -> None:
        """Validate the selected set and load this rank's shard into one collated batch.

        ``rank`` / ``world_size`` override the trainer's (for use without a trainer, and tests).
        """
        shard = resolve_shard(self.trainer, rank, world_size)
        if self._batch is not None and self._shard == shard:
            return
        count = self._measurement_count()
        self._validate_selection()
        positions = shard_positions(count, *shard)
        items = [self._load_measurement(p) for p in positions]
        try:
            self._batch = collate_measurements(items)
        except ValueError as error:
            names = [item["name"] for item in items]
            raise DataError(f"cannot batch the measurements {names}: {error}") from None
        self._shard = shard

    @property
    def batch(self) -> dict[str, Any]:
        """The collated batch of this rank's measurements (after :meth:`setup`)."""
        if self._batch is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not been called yet")
        return self._batch

    def train_dataloader(self) -> RepeatedBatch:
        """The rank's whole batch, ``steps_per_epoch`` times per epoch.

        A plain iterable with a length rather than a ``DataLoader``: the batch is collated already and
        served in this process, so Lightning has no sampler to inject and no worker or ``__len__``
        warning to give (nothing here changes the user's warning filters).
        """
        return RepeatedBatch(self.batch, self.steps_per_epoch)

    def predict_dataloader(self) -> RepeatedBatch:
        """The rank's whole batch once (e.g. to write reconstructions after a fit)."""
        return RepeatedBatch(self.batch, 1)
