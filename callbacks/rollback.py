"""Divergence roll-back: restore the last good state when the loss becomes NaN/Inf or jumps.

Untrained-network fits occasionally blow up (a NaN from an unlucky step, or a sudden jump of the
loss by orders of magnitude after thousands of good steps). This callback snapshots the fitting
state every ``snapshot_every`` healthy steps and, on a divergence, restores it and lowers the
learning rate, so a 20 000-step fit does not have to be restarted by hand.

A snapshot is a deep copy of ``pl_module.state_dict()`` (for the ugodit-pl methods this includes
the inputs z, the EMA and the RNG state through ``get_extra_state``) and of every optimiser's
``state_dict()``. A snapshot is taken before a step (so it holds everything the previous steps
changed, including a method's input updates, whichever hook makes them) and only becomes the
"last good" one once the loss of that step, computed from exactly that state, is healthy: a state
whose own loss was never checked is never restored to.

Divergence at a step: the loss (``outputs["loss"]`` in ``on_train_batch_end``) is NaN/Inf, or,
from ``min_steps`` on, it exceeds ``factor`` times the smallest healthy loss seen so far. Under DDP
the decision is shared (any process diverging rolls every process back).

Put this callback first in ``callbacks=[...]``: the callbacks after it then see the restored
state in the same step. Lightning's ``global_step`` is not rolled back (the steps are spent).

Usage::

    rollback = DivergenceRollback(factor=10.0, snapshot_every=50, lr_factor=0.5, max_rollbacks=5)
    pl.Trainer(max_steps=20_000, callbacks=[rollback, WMVEarlyStopping()]).fit(method, dm)
    rollback.count, rollback.events         # number of roll-backs, [(step, loss), ...]

>>> DivergenceRollback(factor=5.0).factor
5.0
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from ugodit_pl.arguments import whole


def step_loss_of(outputs: Any) -> torch.Tensor:
    """The loss of a training step from what ``training_step`` returned (a tensor or ``{"loss": ...}``)."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if not isinstance(loss, torch.Tensor):
        raise TypeError(
            "DivergenceRollback needs training_step to return the loss (a tensor, or a dict with a 'loss' "
            f"tensor); on_train_batch_end received {type(outputs).__name__}"
        )
    return loss.detach()


class DivergenceRollback(pl.Callback):
    """Restore the last good snapshot (module + optimisers) when the loss diverges.

    Args:
        factor: a loss above ``factor`` x the smallest healthy loss so far counts as a divergence
            (from step ``min_steps`` on); NaN/Inf losses always do. None disables the jump test.
        snapshot_every: take a snapshot every this many steps (kept once its step's loss is healthy).
        lr_factor: multiply every optimiser's learning rates (and the ``base_lrs`` of the
            schedulers) by this after each roll-back (1.0 keeps them).
        max_rollbacks: the most roll-backs allowed; the next divergence raises a RuntimeError that
            names the step, the loss and the limit.
        min_steps: the jump test starts at this step (the first steps of a fit move the loss by
            large factors on their own).

    Attributes: ``count`` (roll-backs so far, also logged as ``rollback/count``), ``events``
    ([(step, loss)] of each roll-back), ``snapshot_step`` (``global_step`` when the last good snapshot
    was taken, i.e. the number of steps it had done).

    Example::

        pl.Trainer(max_steps=5000, callbacks=[DivergenceRollback(snapshot_every=100)]).fit(method, dm)
    """

    def __init__(
        self,
        factor: Optional[float] = 10.0,
        snapshot_every: int = 50,
        lr_factor: float = 0.5,
        max_rollbacks: int = 5,
        min_steps: int = 100,
    ) -> None:
        super().__init__()
        if factor is not None and not (float(factor) > 1.0):
            raise ValueError(f"DivergenceRollback: factor must be > 1 (or None), got {factor!r}")
        whole("DivergenceRollback: snapshot_every", snapshot_every, minimum=1)
        if not 0.0 < float(lr_factor) <= 1.0:
            raise ValueError(f"DivergenceRollback: lr_factor must be in (0, 1], got {lr_factor!r}")
        whole("DivergenceRollback: max_rollbacks", max_rollbacks, minimum=0)
        whole("DivergenceRollback: min_steps", min_steps, minimum=0)
        self.factor = None if factor is None else float(factor)
        self.snapshot_every = int(snapshot_every)
        self.lr_factor = float(lr_factor)
        self.max_rollbacks = int(max_rollbacks)
        self.min_steps = int(min_steps)
        self.count = 0
        self.events: List[Tuple[int, float]] = []
        self.best_loss = math.inf
        self.snapshot_step: Optional[int] = None
        self._good: Optional[Dict[str, Any]] = None      # the last verified snapshot
        self._pending: Optional[Dict[str, Any]] = None   # taken before a step, verified by its loss

    @property
    def state_key(self) -> str:
        return self._generate_state_key(factor=self.factor, snapshot_every=self.snapshot_every)

    # ----------------------------------------------------------------- snapshots
    @staticmethod
    def _snapshot(trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> Dict[str, Any]:
        return {
            "step": step,
            "module": copy.deepcopy(pl_module.state_dict()),
            "optimizers": [copy.deepcopy(opt.state_dict()) for opt in trainer.optimizers],
        }

    def _restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        snapshot = self._good
        pl_module.load_state_dict(copy.deepcopy(snapshot["module"]))
        for optimizer, state in zip(trainer.optimizers, snapshot["optimizers"]):
            current_lrs = [group["lr"] for group in optimizer.param_groups]
            optimizer.load_state_dict(copy.deepcopy(state))
            for group, lr in zip(optimizer.param_groups, current_lrs):
                group["lr"] = lr * self.lr_factor
        if self.lr_factor != 1.0:
            for config in getattr(trainer, "lr_scheduler_configs", []):
                scheduler = config.scheduler
                if hasattr(scheduler, "base_lrs"):
                    scheduler.base_lrs = [lr * self.lr_factor for lr in scheduler.base_lrs]

    # ----------------------------------------------------------------- Lightning hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The state at the start (fresh, or restored from a checkpoint) is the first fallback.
        self._good = self._snapshot(trainer, pl_module, int(trainer.global_step))
        self._pending = None
        self.snapshot_step = int(trainer.global_step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        # Taken before the step, so it holds everything the previous step changed (weights, and
        # input updates, even those a module makes in its own on_train_batch_end).
        step = int(trainer.global_step)
        if step % self.snapshot_every == 0 and step != self.snapshot_step:
            self._pending = self._snapshot(trainer, pl_module, step)

    def _diverged(self, loss: float, step: int) -> bool:
        if not math.isfinite(loss):
            return True
        return self.factor is not None and step >= self.min_steps and math.isfinite(self.best_loss) \
            and loss > self.factor * self.best_loss

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        loss = float(step_loss_of(outputs).float().sum())
        diverged = trainer.strategy.reduce_boolean_decision(self._diverged(loss, step), all=False)
        if diverged:
            self._pending = None
            if self.count >= self.max_rollbacks:
                raise RuntimeError(
                    f"DivergenceRollback: the loss diverged at step {step} (loss {loss:.6g}, smallest healthy loss "
                    f"{self.best_loss:.6g}, factor {self.factor}) and the limit of max_rollbacks={self.max_rollbacks} "
                    "roll-backs is reached; lower the learning rate or check the data"
                )
            if self._good is None:
                raise RuntimeError(f"DivergenceRollback: the loss diverged at step {step} before any snapshot was taken")
            self._restore(trainer, pl_module)
            self.count += 1
            self.events.append((step, loss))
            rank_zero_warn(
                f"DivergenceRollback: loss {loss:.6g} at step {step}; restored the state after step "
                f"{self._good['step']} and multiplied the learning rates by {self.lr_factor} "
                f"(roll-back {self.count} of at most {self.max_rollbacks})"
            )
        else:
            self.best_loss = min(self.best_loss, loss)
            if self._pending is not None:
                # This step's loss was computed from the pending snapshot's state: it is good.
                self._good, self._pending = self._pending, None
                self.snapshot_step = self._good["step"]
        pl_module.log("rollback/count", float(self.count), on_step=True, on_epoch=False, batch_size=1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._good = self._pending = None   # free the memory of the snapshots

    # ----------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        return {"count": self.count, "events": [list(e) for e in self.events], "best_loss": self.best_loss}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.count = int(state_dict.get("count", 0))
        self.events = [(int(s), float(v)) for s, v in state_dict.get("events", [])]
        self.best_loss = float(state_dict.get("best_loss", math.inf))
