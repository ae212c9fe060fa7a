"""PSNR / SSIM (/ NMSE) tracking against the ground truth during a fit.

When the batches carry ``target``, every ``every_n_steps`` steps the callback computes
``ugodit_pl.metrics.reconstruction_metrics`` of ``pl_module.current_output`` (and of
``pl_module.ema_output`` when the module has one) against ``batch["target"]`` (fastMRI conventions
for 2-channel MRI outputs with a magnitude target, natural-image conventions otherwise), logs the
batch averages to the Trainer's loggers as ``metrics/psnr``, ``metrics/ssim``, ``metrics/nmse``
(MRI) and ``metrics/psnr_ema``, ..., keeps the history (for PSNR-vs-step curves) and the best step,
and prints a summary table at the end of the fit. The targets are used for reporting only.

Under DDP the per-measurement values are summed over processes (``trainer.strategy.reduce``) before
averaging, so the logged value is the average over all measurements of the set whatever their
split over processes (the same on every rank; logged with ``sync_dist=False`` because it is
already synchronised).

Usage::

    metrics = ReconstructionMetrics(every_n_steps=10)
    pl.Trainer(max_steps=2000, callbacks=[metrics]).fit(method, datamodule)
    steps = sorted(metrics.history); psnr = [metrics.history[s]["psnr"] for s in steps]
    metrics.best_step, metrics.best["psnr"]

>>> ReconstructionMetrics(every_n_steps=5).every_n_steps
5
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from ugodit_pl.callbacks.early_stopping import current_output_of, row_ids

from ugodit_pl.arguments import whole

# Direction of improvement of each metric (True: higher is better).
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "nmse": False}


def _better(name: str, value: float, best: Optional[float]) -> bool:
    if best is None or value != value:  # NaN never improves
        return best is None and value == value
    base = name[: -len("_ema")] if name.endswith("_ema") else name
    return value > best if HIGHER_IS_BETTER.get(base, True) else value < best


class ReconstructionMetrics(pl.Callback):
    """Log PSNR/SSIM(/NMSE) of the current (and EMA) output against ``batch["target"]``.

    Args:
        every_n_steps: compute the metrics when ``trainer.global_step`` is a multiple of this
            (and at the last step, ``max_steps``).
        log_ema: also evaluate ``pl_module.ema_output`` when the module has one (suffix ``_ema``).
        print_summary: print a table (last, best, and the final reconstruction's values) at the
            end of the fit, on rank zero.
        prefix: the logging prefix (``"metrics/"``).

    Attributes after a fit:
        history: {step: {"psnr": mean over the measurements, "ssim": ..., "psnr_ema": ...}}.
        per_measurement: {step: {"index": [row ids], "psnr": [per row values], ...}} (this
            process's rows).
        best: {metric: (step, value)}, best value of each metric (max PSNR/SSIM, min NMSE).
        best_step: the step of the best ``psnr`` (of the current output), or None.
        final: metrics of ``pl_module.reconstruction`` (what the fit returns, e.g. the output
            chosen by ``WMVEarlyStopping``) against the last target, computed at the end of the fit.

    Batches without ``target`` are skipped silently (a fit of real data has no ground truth).
    A "step" is ``trainer.global_step`` after the optimiser step whose forward pass produced the
    output.

    Example::

        metrics = ReconstructionMetrics(every_n_steps=50, print_summary=False)
        pl.Trainer(max_steps=3000, callbacks=[metrics]).fit(method, datamodule)
        metrics.best["psnr"]       # (step, dB)
    """

    def __init__(
        self, every_n_steps: int = 10, log_ema: bool = True, print_summary: bool = True, prefix: str = "metrics/"
    ) -> None:
        super().__init__()
        whole("ReconstructionMetrics: every_n_steps", every_n_steps, minimum=1)
        self.every_n_steps = int(every_n_steps)
        self.log_ema = bool(log_ema)
        self.print_summary = bool(print_summary)
        self.prefix = str(prefix)
        self.history: Dict[int, Dict[str, float]] = {}
        self.per_measurement: Dict[int, Dict[str, List[float]]] = {}
        self.best: Dict[str, Tuple[int, float]] = {}
        self.final: Dict[str, float] = {}
        self._last_target: Optional[torch.Tensor] = None
        self._last_ids: List[int] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, prefix=self.prefix)

    @property
    def best_step(self) -> Optional[int]:
        """Step of the best PSNR of the current output (None before any evaluation)."""
        entry = self.best.get("psnr")
        return None if entry is None else entry[0]

    # ----------------------------------------------------------------- computation
    def _due(self, trainer: pl.Trainer) -> bool:
        step = int(trainer.global_step)
        return step % self.every_n_steps == 0 or (trainer.max_steps is not None and step == trainer.max_steps)

    @staticmethod
    def _compute(output: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        from ugodit_pl.metrics import reconstruction_metrics

        with torch.no_grad():
            values = reconstruction_metrics(output.detach().float(), target.detach().to(output.device).float())
        return {name: v.reshape(-1) for name, v in values.items()}

    def _evaluate(self, pl_module: pl.LightningModule, batch: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        """Per-row metric values (B,) for this batch: current output and, optionally, EMA output."""
        target = batch["target"]
        output = current_output_of(pl_module, type(self).__name__)
        if not isinstance(target, torch.Tensor) or target.ndim != 4 or target.shape[0] != output.shape[0]:
            raise ValueError(
                f"ReconstructionMetrics: batch['target'] must be a (B, C, H, W) tensor with B = {output.shape[0]} "
                f"rows like current_output, got {getattr(target, 'shape', type(target).__name__)}"
            )
        values = self._compute(output, target)
        ema = getattr(pl_module, "ema_output", None) if self.log_ema else None
        if isinstance(ema, torch.Tensor):
            values.update({f"{name}_ema": v for name, v in self._compute(ema, target).items()})
        return values

    @staticmethod
    def _batch_means(trainer: pl.Trainer, values: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """Average over all measurements of all processes (sum and count reduced over ranks)."""
        names = sorted(values)
        if not names:
            return {}
        rows = values[names[0]].numel()
        sums = torch.stack([values[n].double().sum() for n in names] + [torch.tensor(float(rows), dtype=torch.float64,
                                                                                     device=values[names[0]].device)])
        sums = trainer.strategy.reduce(sums, reduce_op="sum") if trainer.world_size > 1 else sums
        totals = sums.cpu().tolist()
        count = totals[-1]
        return {n: totals[k] / count for k, n in enumerate(names)}

    # ----------------------------------------------------------------- Lightning hooks
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(batch, Mapping) or batch.get("target") is None:
            return
        self._last_target = batch["target"].detach()
        self._last_ids = row_ids(batch, batch["target"].shape[0])
        if not self._due(trainer):
            return
        step = int(trainer.global_step)
        values = self._evaluate(pl_module, batch)
        means = self._batch_means(trainer, values)
        self.history[step] = means
        self.per_measurement[step] = {"index": list(self._last_ids), **{n: v.cpu().tolist() for n, v in values.items()}}
        for name, value in means.items():
            if _better(name, value, self.best.get(name, (None, None))[1]):
                self.best[name] = (step, value)
            pl_module.log(
                f"{self.prefix}{name}", value, on_step=True, on_epoch=False, sync_dist=False,
                batch_size=len(self._last_ids),
            )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_fit_end runs after every callback's on_train_end, so an early-stopping callback has
        # already set the module's final output.
        reconstruction = getattr(pl_module, "reconstruction", None)
        if self._last_target is not None and isinstance(reconstruction, torch.Tensor) \
                and reconstruction.shape[0] == self._last_target.shape[0]:
            self.final = self._batch_means(trainer, self._compute(reconstruction, self._last_target))
        if self.print_summary:
            self._print_summary()
        self._last_target = None

    @rank_zero_only
    def _print_summary(self) -> None:
        if not self.history:
            return
        from rich.console import Console
        from rich.table import Table

        last_step = max(self.history)
        table = Table(title="Reconstruction metrics (mean over the measurements)")
        table.add_column("metric")
        table.add_column(f"last (step {last_step})", justify="right")
        table.add_column("best", justify="right")
        table.add_column("best step", justify="right")
        if self.final:
            table.add_column("reconstruction", justify="right")
        for name in sorted(self.history[last_step], key=lambda n: (n.endswith("_ema"), n)):
            step, best = self.best.get(name, (None, float("nan")))
            row = [name, f"{self.history[last_step][name]:.4f}", f"{best:.4f}", str(step)]
            if self.final:
                row.append(f"{self.final[name]:.4f}" if name in self.final else "")
            table.add_row(*row)
        Console().print(table)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        return {
            "history": {int(k): dict(v) for k, v in self.history.items()},
            "per_measurement": {int(k): {n: list(v) for n, v in d.items()} for k, d in self.per_measurement.items()},
            "best": {k: [int(s), float(v)] for k, (s, v) in self.best.items()},
            "final": dict(self.final),
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.history = {int(k): dict(v) for k, v in state_dict.get("history", {}).items()}
        self.per_measurement = {int(k): dict(v) for k, v in state_dict.get("per_measurement", {}).items()}
        self.best = {k: (int(s), float(v)) for k, (s, v) in state_dict.get("best", {}).items()}
        self.final = dict(state_dict.get("final", {}))
