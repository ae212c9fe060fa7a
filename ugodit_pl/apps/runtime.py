"""What the applications share at run time: a quiet Lightning and progress bars that follow fits.

>>> quiet_lightning()
>>> progress_display(show=False) is None
True
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, Dict, Optional

# Messages that are noise for these fits (each serves one fixed batch) or that Lightning prints for
# every Trainer (accelerator banners, the litlogger tip).
_NOISE = (
    r".*LightningCLI's args parameter is intended to run from within Python.*",
    r".*does not have many workers.*",
    r".*You defined a `validation_step` but have no `val_dataloader`.*",
    r".*Your `IterableDataset` has `__len__` defined.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*(litlogger|GPU available|TPU available).*",
    r"(?s).*`tensorboardX` has been removed as a dependency.*",
    r".*`max_epochs` was not set.*",  # max_steps -1: the methods refuse it themselves
    r"(?s).*was deprecated in v4\.\d+.*",  # jsonargparse deprecations inside LightningCLI, not ours
    r"(?s).*only one JsonargparseDeprecationWarning per type is shown.*",
    r"(?s).*skip_none parameter was deprecated.*",
)
_LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric",
                      "pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")


def quiet_lightning() -> None:
    """Silence Lightning's per-Trainer banners and the warnings that do not apply to these fits."""
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def progress_display(show: bool = True, console: Any = None, fields: str = "", description_width: int = 34) -> Any:
    """A rich ``Progress`` with a bar, step counts and times (and ``fields``, e.g. ``"{task.fields[psnr]}"``),
    or None when ``show`` is False (use it with ``contextlib.nullcontext``)."""
    if not show:
        return None
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = [TextColumn(f"{{task.description:<{description_width}}}"), BarColumn(), MofNCompleteColumn()]
    if fields:
        columns.append(TextColumn(fields))
    columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    return Progress(*columns, console=console)


def step_progress(progress: Any, task_id: Any, fields: Optional[Callable[[], Dict[str, str]]] = None) -> Any:
    """A Lightning callback that advances ``task_id`` of ``progress`` by one per training step (on rank
    zero), setting the task's ``fields()`` as it goes."""
    import pytorch_lightning as pl

    class StepProgress(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.is_global_zero:
                progress.update(task_id, advance=1, **(fields() if fields else {}))

    return StepProgress()
