"""Early stopping by self-validation on held-out samples: k-space for MRI, pixels for inpainting and denoising.

The method holds out part of its measured samples (``holdout_fraction``, ``ugodit_pl.methods.holdout``)
and reports its reconstruction's error on them (``pl_module.holdout_error()``). The error falls while
the network fits the image and rises once it fits the noise of the samples it sees; no ground
truth is needed. Every ``check_every`` steps the callback reads the error of each measurement and
keeps the reconstruction at its minimum (``pl_module.network_reconstruction``: for MRI, with the method's
``final_projection``, on by default there, it carries every measured sample, the held-out ones
included; images keep the network's output, their held-out pixels come back with a refit). Training stops when every measurement has gone
``patience`` steps without a new minimum (a new minimum must beat the old one by ``min_delta``,
relative); the kept reconstructions then become ``pl_module.final_output``.

Holding out costs data: on the volume benchmark (96 x 72, 4x, 0.2 of the lines outside the
calibration region held out) the kept images were 0.25 to 0.7 dB below the same chain fitted on
every sample, and the final projection alone does not take that back. A short refit does: the
stopped fit's networks and image, fitted on every sample for a quarter of a warm slice's budget,
took back 0.15 to 0.35 dB (``ugodit reconstruct --stop heldout`` does it, ``--refit-steps``;
decision 9 of ``benchmarks/results/decisions.md``).

Usage::

    method = ASeqDIP(holdout_fraction=0.1)
    stop = HeldOutEarlyStopping(patience=200)
    pl.Trainer(max_steps=3000, callbacks=[stop]).fit(method, datamodule)
    stop.best_step                  # {measurement index: step of the kept reconstruction}
    refit = ASeqDIP().warm_start(method.warm_state())   # every sample, from the stopped fit
    pl.Trainer(max_steps=50).fit(refit, datamodule)

>>> HeldOutEarlyStopping(patience=100, check_every=10).state_key
"HeldOutEarlyStopping{'patience': 100, 'check_every': 10, 'min_delta': 0.001}"
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from ugodit_pl.arguments import non_negative, whole
from ugodit_pl.callbacks.early_stopping import row_ids


class HeldOutEarlyStopping(pl.Callback):
    """Stop when the error on held-out k-space stops falling; keep each measurement's best reconstruction.

    Args:
        patience: steps without a new minimum of a measurement's held-out error after which it is done;
            training stops when every measurement is done.
        check_every: read the held-out error every this many steps.
        min_delta: a new minimum must be below ``(1 - min_delta)`` times the old one.
        verbose: print a line when training stops.

    After the fit: ``best_step`` and ``best_error`` ({measurement index: value}), ``history``
    ({index: [(step, error), ...]}), ``stopped_step`` (None if the fit ran to ``max_steps``), and
    ``pl_module.final_output`` holds the kept reconstructions of the last batch's rows.
    """

    def __init__(self, patience: int = 200, check_every: int = 10, min_delta: float = 1e-3,
                 verbose: bool = False) -> None:
        super().__init__()
        self.patience = whole("HeldOutEarlyStopping: patience", patience, minimum=1)
        self.check_every = whole("HeldOutEarlyStopping: check_every", check_every, minimum=1)
        self.min_delta = non_negative("HeldOutEarlyStopping: min_delta", min_delta)
        self.verbose = bool(verbose)
        self.stopped_step: Optional[int] = None
        self._best: Dict[int, Dict[str, Any]] = {}  # index -> {"error", "step", "output"}
        self.history: Dict[int, List[tuple]] = {}
        self._last_ids: List[int] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(patience=self.patience, check_every=self.check_every, min_delta=self.min_delta)

    @property
    def best_step(self) -> Dict[int, int]:
        return {i: int(b["step"]) for i, b in self._best.items()}

    @property
    def best_error(self) -> Dict[int, float]:
        return {i: float(b["error"]) for i, b in self._best.items()}

    def check(self, errors: torch.Tensor, outputs: torch.Tensor, ids: Sequence[int], step: int) -> bool:
        """Record one error (and the reconstruction) per measurement; True when every one is done.

        >>> stop = HeldOutEarlyStopping(patience=20, check_every=10)
        >>> image = torch.zeros(1, 2, 4, 4)
        >>> [stop.check(torch.tensor([e]), image, [0], s) for s, e in zip((10, 20, 30, 40), (0.5, 0.3, 0.4, 0.35))]
        [False, False, False, True]
        >>> stop.best_step
        {0: 20}
        """
        self._last_ids = list(ids)
        for k, (index, error) in enumerate(zip(ids, errors.tolist())):
            self.history.setdefault(index, []).append((int(step), float(error)))
            best = self._best.get(index)
            if error == error and (best is None or error < (1.0 - self.min_delta) * best["error"]):  # NaN never wins
                self._best[index] = {"error": error, "step": int(step), "output": outputs[k].detach().clone()}
        return self.all_done(step)

    def all_done(self, step: int) -> bool:
        """True when every measurement seen has gone ``patience`` steps without a new minimum."""
        if not self._last_ids or any(i not in self._best for i in self._last_ids):
            return False
        return all(step - self._best[i]["step"] >= self.patience for i in self._last_ids)

    def kept_output(self, ids: Sequence[int]) -> Optional[torch.Tensor]:
        """The kept reconstructions of ``ids`` (in that order), or None if one has none."""
        if not ids or any(i not in self._best for i in ids):
            return None
        return torch.stack([self._best[i]["output"] for i in ids])

    # ----------------------------------------------------------------- Lightning hooks
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if step % self.check_every != 0 and step < int(trainer.max_steps):
            return
        errors = pl_module.holdout_error() if hasattr(pl_module, "holdout_error") else None
        if errors is None:
            raise ValueError(
                f"HeldOutEarlyStopping needs a method that holds out k-space: give {type(pl_module).__name__} "
                f"holdout_fraction (e.g. 0.1); it has none"
            )
        reconstruction = pl_module.network_reconstruction  # ``final_output`` is the network's (before ``mean_with``)
        done = self.check(errors.cpu(), reconstruction, row_ids(batch, len(errors)), step)
        pl_module.log("holdout/error", errors.mean(), batch_size=len(errors))
        if trainer.strategy.reduce_boolean_decision(done, all=True) and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_step = step
            self._set_final_output(pl_module)
            if self.verbose:
                rank_zero_info(f"HeldOutEarlyStopping: stopping at step {step}; kept the reconstructions of steps "
                               f"{self.best_step} (patience {self.patience})")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._set_final_output(pl_module)

    def _set_final_output(self, pl_module: pl.LightningModule) -> None:
        kept = self.kept_output(self._last_ids)
        if kept is not None:
            pl_module.final_output = kept

    # ----------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        best = {i: {**b, "output": b["output"].detach().cpu()} for i, b in self._best.items()}
        return {"best": best, "history": {i: list(h) for i, h in self.history.items()},
                "last_ids": list(self._last_ids), "stopped_step": self.stopped_step}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._best = {int(i): dict(b) for i, b in state_dict["best"].items()}
        self.history = {int(i): list(h) for i, h in state_dict.get("history", {}).items()}
        self._last_ids = list(state_dict.get("last_ids", []))
        self.stopped_step = state_dict.get("stopped_step")
