"""What every benchmark suite shares: the data folder, fitting with PSNR-vs-step curves, plots.

Result files are written with ``ugodit_pl.apps.io.write_json`` and record
``ugodit_pl.apps.io.machine_info`` (timings mean nothing without the machine).

- :class:`CurveTracker` and :func:`fit_method`: fit a method on a fixed batch for a number of
  steps with a Lightning ``Trainer``, recording metrics of the current and EMA outputs against
  one or more targets every few steps (the PSNR-vs-step curves);
- :func:`steps_to_reach`: the first step of a curve at or above a level;
- :func:`plot_curves`: PSNR-vs-step curves as a PNG (matplotlib, Agg backend).

>>> steps_to_reach({"steps": [0, 10, 20], "psnr": [10.0, 20.0, 30.0]}, 15.0)
10
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from ugodit_pl.apps.io import REPO_ROOT
from ugodit_pl.atomic import atomic_path

__all__ = ["DEFAULT_DATA", "CurveTracker", "data_root", "fit_method", "plot_curves", "steps_to_reach"]

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"


def data_root(path: Union[str, Path, None] = None) -> Path:
    """The real-data folder: ``path``, else ``$UGODIT_DATA``, else ``../shared/data`` beside the repository.

    Raises ``FileNotFoundError`` naming the folder when it does not exist.
    """
    root = Path(path or os.environ.get("UGODIT_DATA") or DEFAULT_DATA)
    if not root.is_dir():
        raise FileNotFoundError(
            f"real data folder {root} not found: the benchmarks read shared/data (see its PROVENANCE.md); "
            f"pass --data DIR or set UGODIT_DATA"
        )
    return root


# --------------------------------------------------------------------------- fitting with curves
MetricFn = Callable[[torch.Tensor, torch.Tensor], Dict[str, torch.Tensor]]


class CurveTracker:
    """Lightning callback: metrics of ``current_output`` and ``ema_output`` every ``every`` steps.

    Args:
        targets: ``{name: target (B, C, H, W)}``; every target gets its own curve.
        metric_fn: ``fn(output, target) -> {"psnr": (B,), ...}`` (e.g.
            ``ugodit_pl.metrics.reconstruction_metrics``).
        every: evaluation period in steps (the last step is always evaluated).
        max_steps: the run's length (to evaluate its last step).

    After the fit, ``curves[target][output]`` is ``{"steps": [...], "seconds": [...], "psnr": [...], ...}``
    with ``output`` in ``("ema", "last")``, each value the mean over the batch's rows; "seconds" is the
    fit's wall time from its start to that step, the tracker's own evaluations left out.

    It is a ``pl.Callback`` built lazily (``CurveTracker.callback()``) so that importing this module
    does not import Lightning.
    """

    def __init__(self, targets: Mapping[str, torch.Tensor], metric_fn: MetricFn, every: int, max_steps: int) -> None:
        if int(every) < 1:
            raise ValueError(f"every must be a positive int, got {every}")
        self.targets = dict(targets)
        self.metric_fn = metric_fn
        self.every = int(every)
        self.max_steps = int(max_steps)
        self.curves: Dict[str, Dict[str, Dict[str, List[float]]]] = {
            name: {"ema": {"steps": []}, "last": {"steps": []}, "reconstruction": {"steps": []}} for name in self.targets
        }
        self.eval_seconds = 0.0
        self.started: Optional[float] = None  # set when the fit starts

    def record(self, step: int, outputs: Mapping[str, Optional[torch.Tensor]]) -> None:
        """Evaluate ``outputs`` (``{"ema": ..., "last": ...}``) against every target at ``step``."""
        start = time.perf_counter()
        elapsed = start - (self.started if self.started is not None else start) - self.eval_seconds
        with torch.no_grad():
            for name, target in self.targets.items():
                for kind, output in outputs.items():
                    if output is None:
                        continue
                    values = self.metric_fn(output.detach().float(), target.to(output.device).float())
                    curve = self.curves[name][kind]
                    curve["steps"].append(int(step))
                    curve.setdefault("seconds", []).append(round(elapsed, 4))
                    for metric, value in values.items():
                        curve.setdefault(metric, []).append(float(value.float().mean()))
        self.eval_seconds += time.perf_counter() - start

    def callback(self):
        """The Lightning callback that calls :meth:`record` after the due steps."""
        import pytorch_lightning as pl

        tracker = self

        class _Callback(pl.Callback):
            def on_train_start(self, trainer, pl_module) -> None:
                tracker.started = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                step = int(trainer.global_step)
                if step % tracker.every == 0 or step == tracker.max_steps or step == 1:
                    # the reconstruction when it differs from the EMA (MRI: with its measured k-space put back)
                    projected = pl_module.reconstruction if getattr(pl_module, "final_projection", False) else None
                    tracker.record(step, {"ema": pl_module.ema_output, "last": pl_module.current_output,
                                          "reconstruction": projected})

        return _Callback()


class _RepeatBatch(torch.utils.data.IterableDataset):
    """The same batch ``times`` times (a fixed set of measurements, one optimiser step each)."""

    def __init__(self, batch: Dict[str, Any], times: int) -> None:
        super().__init__()
        self.batch, self.times = batch, int(times)

    def __iter__(self):
        for _ in range(self.times):
            yield dict(self.batch)

    def __len__(self) -> int:
        return self.times


def fit_method(
    method: Any,
    batch: Dict[str, Any],
    steps: int,
    *,
    callbacks: Sequence[Any] = (),
    device: Union[str, torch.device] = "cpu",
    precision: Any = "32-true",
) -> float:
    """Fit ``method`` (a ugodit_pl method) to the fixed ``batch`` for ``steps`` optimiser steps.

    Returns the wall time of ``trainer.fit`` in seconds (callbacks included). No logger, no
    checkpoints, no progress bar.
    """
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from ugodit_pl.apps.runtime import quiet_lightning

    dev = torch.device(device)
    accelerator = "gpu" if dev.type == "cuda" else "cpu"
    with quiet_lightning():
        trainer = pl.Trainer(
            max_steps=int(steps), accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks), precision=precision,
            num_sanity_val_steps=0, max_epochs=-1,
        )
        loader = DataLoader(_RepeatBatch(batch, int(steps)), batch_size=None, num_workers=0)
        start = time.perf_counter()
        trainer.fit(method, train_dataloaders=loader)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start


def reported_curve(curves: Mapping[str, Dict[str, List[float]]]) -> Dict[str, List[float]]:
    """The curve of what a method reports: its reconstruction where it differs from the EMA (MRI: the
    final projection), else the EMA, else the last output (a method without one).

    >>> reported_curve({"ema": {"steps": [1], "psnr": [20.0]}, "last": {"steps": [1]}, "reconstruction": {"steps": []}})
    {'steps': [1], 'psnr': [20.0]}
    """
    for kind in ("reconstruction", "ema", "last"):
        if curves.get(kind, {}).get("psnr"):
            return curves[kind]
    return curves["last"]


def steps_to_reach(curve: Mapping[str, Sequence[float]], level: Optional[float], metric: str = "psnr") -> Optional[int]:
    """First step of ``curve`` whose ``metric`` is >= ``level`` (None if never, or if level is None)."""
    if level is None:
        return None
    for step, value in zip(curve["steps"], curve[metric]):
        if value is not None and value >= level:
            return int(step)
    return None


# --------------------------------------------------------------------------- plots
def plot_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    path: Union[str, Path],
    *,
    title: str = "",
    metric: str = "psnr",
    ylabel: str = "PSNR (dB)",
    levels: Optional[Mapping[str, float]] = None,
    x: str = "steps",
) -> Path:
    """Plot ``{label: {x: [...], metric: [...]}}`` as lines (and ``levels`` as dashed lines) to a PNG.

    ``x`` is ``"steps"`` or ``"seconds"`` (the fit's wall seconds at each point, ``CurveTracker``).

    Uses matplotlib's Agg backend (no display needed); written atomically; small (6 x 4 inches, 80 dpi).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 4), dpi=80)
    try:
        for label, curve in curves.items():
            if curve.get(x):
                axes.plot(curve[x], curve[metric], label=label, linewidth=1.4)
        for k, (label, value) in enumerate((levels or {}).items()):
            if value is not None:
                axes.axhline(value, linestyle="--", linewidth=0.9, color=f"C{(k + len(curves)) % 10}", label=label)
        axes.set_xlabel("step" if x == "steps" else f"{x} of the fit")
        axes.set_ylabel(ylabel)
        if title:
            axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="lower right")
        figure.tight_layout()
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png")
    finally:
        plt.close(figure)
    return path
