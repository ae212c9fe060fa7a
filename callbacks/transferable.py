"""Checkpointing of UGoDIT's transferable weights (the pre-trained encoder) during pre-training.

The file is the one ``ugodit_pl.methods.load_transferable_weights`` reads and
``UGoDITFit(weights=path)`` starts from; the module writes it with its own
``save_transferable_weights(path)`` (duck-typed: any LightningModule with that method works).
Every write goes to a temporary file in the target folder first and is then moved into place with
``os.replace``, so a reader (or a crash) never sees a half-written file.

Usage::

    ckpt = TransferableWeightsCheckpoint("runs/pretrain", every_n_steps=500, monitor="train/data_consistency")
    pl.Trainer(max_steps=3000, callbacks=[ckpt]).fit(UGoDITPretrain(num_measurements=5), datamodule)
    fit = UGoDITFit(weights=ckpt.last_path)           # or ckpt.best_path

>>> ckpt = TransferableWeightsCheckpoint("runs", monitor="train/loss")
>>> ckpt.last_path.name, ckpt.best_path.name
('transferable_weights.pt', 'best_transferable_weights.pt')
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from ugodit_pl.arguments import check_choice, whole
from ugodit_pl.atomic import atomic_path
from ugodit_pl.methods.trainer_access import logs_metrics_at

MODES = ("min", "max")


class TransferableWeightsCheckpoint(pl.Callback):
    """Write the transferable-weights file at the end of pre-training, every k steps, and the best one.

    Args:
        dirpath: folder of the files (created when needed).
        filename: name of the latest file (``dirpath/filename``).
        every_n_steps: also write the latest file every this many steps (None: only at the end).
        monitor: a logged metric (a key of ``trainer.callback_metrics``, e.g.
            ``"train/data_consistency"``); when set, the best value is tracked and the weights at
            the best value are written to ``dirpath/best_<filename>``. It is checked at the steps
            where the method logs it (the first, the last and every ``log_every_n_steps``-th of the
            Trainer, ``ugodit_pl.methods.trainer_access.logs_metrics_at``) that are also multiples of
            ``every_n_steps`` when that is set; each improvement writes a file, so these settings limit
            the writes on large encoders.
        mode: ``"min"`` or ``"max"``: whether a smaller or a larger ``monitor`` value is better.
        save_last: write ``dirpath/filename`` at the end of training.

    Only the global-zero process writes. ``state_dict`` holds the best score, its step and the
    paths, so a resumed run (``trainer.fit(..., ckpt_path=...)``) keeps comparing with the best
    value seen before the interruption.

    Example::

        ckpt = TransferableWeightsCheckpoint("runs/ugodit", every_n_steps=1000)
        pl.Trainer(max_steps=3000, callbacks=[ckpt]).fit(UGoDITPretrain(num_measurements=5), dm)
    """

    def __init__(
        self,
        dirpath: Union[str, Path],
        filename: str = "transferable_weights.pt",
        every_n_steps: Optional[int] = None,
        monitor: Optional[str] = None,
        mode: str = "min",
        save_last: bool = True,
    ) -> None:
        super().__init__()
        if not filename or os.sep in filename or (os.altsep and os.altsep in filename):
            raise ValueError(f"TransferableWeightsCheckpoint: filename must be a plain file name, got {filename!r}")
        if every_n_steps is not None:
            whole("TransferableWeightsCheckpoint: every_n_steps (or None)", every_n_steps, minimum=1)
        check_choice("TransferableWeightsCheckpoint: mode", mode, MODES)
        if not save_last and every_n_steps is None and monitor is None:
            raise ValueError(
                "TransferableWeightsCheckpoint would never write a file: set save_last=True, every_n_steps or monitor"
            )
        self.dirpath = Path(dirpath)
        self.filename = filename
        self.every_n_steps = every_n_steps
        self.monitor = monitor
        self.mode = mode
        self.save_last = bool(save_last)
        self.best_score: Optional[float] = None
        self.best_step: Optional[int] = None
        self.best_model_path: Optional[str] = None
        self.last_saved_step: Optional[int] = None
        self.last_model_path: Optional[str] = None
        self._warned_missing = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(dirpath=str(self.dirpath), filename=self.filename, monitor=self.monitor)

    @property
    def last_path(self) -> Path:
        """``dirpath/filename``: the latest weights."""
        return self.dirpath / self.filename

    @property
    def best_path(self) -> Path:
        """``dirpath/best_<filename>``: the weights at the best ``monitor`` value."""
        return self.dirpath / f"best_{self.filename}"

    # ----------------------------------------------------------------- writing
    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, path: Path) -> None:
        save = getattr(pl_module, "save_transferable_weights", None)
        if not callable(save):
            raise AttributeError(
                f"TransferableWeightsCheckpoint needs a LightningModule with save_transferable_weights(path) "
                f"(e.g. ugodit_pl.methods.UGoDITPretrain); {type(pl_module).__name__} has none"
            )
        if not trainer.is_global_zero:
            return
        with atomic_path(path) as tmp:
            save(str(tmp))

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_score is None:
            return True
        return value < self.best_score if self.mode == "min" else value > self.best_score

    def _check_monitor(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            if not self._warned_missing:
                rank_zero_warn(
                    f"TransferableWeightsCheckpoint: monitor {self.monitor!r} is not among the logged metrics "
                    f"{sorted(metrics)}; the best weights are tracked from the first step that logs it"
                )
                self._warned_missing = True
            return
        value = metrics[self.monitor]
        value = float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)
        if self._improved(value):
            self.best_score = value
            self.best_step = int(trainer.global_step)
            self._write(trainer, pl_module, self.best_path)
            self.best_model_path = str(self.best_path)

    def save_now(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        """Write the latest file now (what the periodic and final saves do)."""
        self._write(trainer, pl_module, self.last_path)
        self.last_saved_step = int(trainer.global_step)
        self.last_model_path = str(self.last_path)
        return self.last_path

    # ----------------------------------------------------------------- Lightning hooks
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        due = self.every_n_steps is not None and step % self.every_n_steps == 0
        if self.monitor is not None and (self.every_n_steps is None or due) and logs_metrics_at(trainer, step):
            self._check_monitor(trainer, pl_module)
        if due:
            self.save_now(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and self.last_saved_step != int(trainer.global_step):
            self.save_now(trainer, pl_module)
        if self.monitor is not None and self.best_score is None:
            rank_zero_warn(
                f"TransferableWeightsCheckpoint: monitor {self.monitor!r} was never logged, so no best weights "
                f"were written (logged metrics: {sorted(trainer.callback_metrics)})"
            )

    # ----------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        return {
            "best_score": self.best_score,
            "best_step": self.best_step,
            "best_model_path": self.best_model_path,
            "last_saved_step": self.last_saved_step,
            "last_model_path": self.last_model_path,
            "monitor": self.monitor,
            "mode": self.mode,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if state_dict.get("monitor") == self.monitor and state_dict.get("mode", self.mode) == self.mode:
            self.best_score = state_dict.get("best_score")
            self.best_step = state_dict.get("best_step")
            self.best_model_path = state_dict.get("best_model_path")
        else:
            rank_zero_warn(
                f"TransferableWeightsCheckpoint: the checkpoint tracked monitor={state_dict.get('monitor')!r} "
                f"(mode {state_dict.get('mode')!r}); this callback monitors {self.monitor!r} (mode {self.mode!r}), "
                "so the best score starts afresh"
            )
        self.last_saved_step = state_dict.get("last_saved_step")
        self.last_model_path = state_dict.get("last_model_path")
