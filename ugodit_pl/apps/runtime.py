"""What the applications share at run time: a quiet Lightning and progress bars that follow fits.

>>> with quiet_lightning():
...     pass
>>> progress_display(show=False) is None
True
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Callable, Dict, Iterator, Optional

# Warnings that are noise for the library's own fits (each serves one fixed batch, has no validation
# set, and runs from the ``ugodit`` command).
_NOISE = (
    r".*LightningCLI's args parameter is intended to run from within Python.*",
    r".*does not have many workers.*",
    r".*You defined a `validation_step` but have no `val_dataloader`.*",
    r".*Your `IterableDataset` has `__len__` defined.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r"(?s).*`tensorboardX` has been removed as a dependency.*",
    r".*`max_epochs` was not set.*",  # max_steps -1: the methods refuse it themselves
    r".*in eval mode at the start of training.*",  # UGoDITFit's frozen encoder with encoder_bn="eval"
    r"(?s).*was deprecated in v4\.\d+.*",  # jsonargparse deprecations inside LightningCLI, not ours
    r"(?s).*only one JsonargparseDeprecationWarning per type is shown.*",
    r"(?s).*skip_none parameter was deprecated.*",
)
# The loggers of Lightning's rank-zero messages: the banners every Trainer prints at INFO level
# ("GPU available", the litlogger tip, "`Trainer.fit` stopped").
_BANNER_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                   "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                   "pytorch_lightning.accelerators.cuda", "lightning.pytorch.accelerators.cuda")


def _no_banner(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Within this block, the Trainers the applications create print no banners and none of the warnings
    that do not apply to their fits; Lightning's warnings and errors still show.

    Scoped: the warning filters and the loggers are restored on exit, so a user's own Trainers (in
    the same process, after or beside a ``ugodit_pl.apps`` call) print what Lightning prints.
    """
    loggers = [logging.getLogger(name) for name in _BANNER_LOGGERS]
    with warnings.catch_warnings():
        for pattern in _NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        for logger in loggers:
            logger.addFilter(_no_banner)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(_no_banner)


def progress_display(show: bool = True, console: Any = None, fields: str = "", description_width: int = 34) -> Any:
    """A rich ``Progress`` with a bar, step counts and times (and ``fields``, e.g. ``"{task.fields[psnr]}"``),
    or None when ``show`` is False (use it with ``contextlib.nullcontext``)."""
    if not show:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

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
