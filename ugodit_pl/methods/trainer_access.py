"""What the methods read from the Lightning Trainer that fits them, in one place.

Everything here uses Lightning's public API except ``training_batch``, which needs the dataloader a
``trainer.fit(model, train_dataloaders=...)`` call was given before Lightning has built it: Lightning
has no public accessor for it at ``setup`` time, so that one private attribute
(``trainer.fit_loop._data_source``) is read here and nowhere else in the library.

>>> attached_trainer(pl.LightningModule()) is None
True
>>> world_size(pl.LightningModule())
1
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import pytorch_lightning as pl
import torch.distributed as dist


def attached_trainer(module: pl.LightningModule) -> Optional[pl.Trainer]:
    """The Trainer fitting ``module``, or None outside a Trainer (``module.trainer`` raises there)."""
    try:
        return module.trainer
    except RuntimeError:  # "... is not attached to a `Trainer`"
        return None


def world_size(module: pl.LightningModule) -> int:
    """Number of processes taking part in the fit (1 outside a Trainer or without DDP)."""
    trainer = attached_trainer(module)
    if trainer is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return trainer.world_size


def training_batch(trainer: pl.Trainer) -> Mapping[str, Any]:
    """The measurements this process will fit: its first training batch, read in ``setup``.

    A ugodit-pl data module gives its collated batch (``.batch``, after its own ``setup``); any
    other data module or dataloader gives the first item of its training dataloader.
    """
    datamodule = trainer.datamodule
    if datamodule is not None and isinstance(getattr(type(datamodule), "batch", None), property):
        return datamodule.batch
    source = getattr(trainer.fit_loop, "_data_source", None)  # private: see the module docstring
    loader = source.dataloader() if source is not None else None
    if loader is None:
        raise ValueError("the fit has no training data: pass a data module or train_dataloaders to trainer.fit")
    try:
        return next(iter(loader))
    except StopIteration:
        raise ValueError("the training dataloader is empty: it must serve the measurements to fit") from None


def logs_metrics_at(trainer: pl.Trainer, step: int) -> bool:
    """Whether the methods log ``train/loss`` and ``train/data_consistency`` at optimiser step ``step`` (from 1).

    The first step, the last (``max_steps``) and every ``trainer.log_every_n_steps``-th: the steps whose
    values Lightning's loggers write. Between them ``trainer.callback_metrics`` and the progress bar
    hold the latest logged values. Logging a value costs Lightning about 1 ms (and an all-reduce under
    DDP), a few % of a small fit step; ``log_every_n_steps=1`` logs every step.

    >>> class T: log_every_n_steps, max_steps = 10, 25
    >>> [s for s in range(1, 26) if logs_metrics_at(T, s)]
    [1, 10, 20, 25]
    """
    return step == 1 or step % max(1, int(trainer.log_every_n_steps)) == 0 or step >= int(trainer.max_steps)
