"""ES-WMV: early stopping for DIP-type fits by the windowed moving variance of the outputs.

Wang, Li, Zhuang, Chen, Liang, Sun, "Early Stopping for Deep Image Prior", TMLR 2023. Untrained
networks first fit the image and later the noise/artefacts; while they fit the image the outputs
settle, so the variance of the outputs over a sliding window dips near the peak of the
reconstruction quality. No ground truth is needed.

For each measurement (row of ``pl_module.current_output``) the callback keeps the last W outputs
x_1..x_W it looked at and computes

    VAR = (1 / W) sum_w mean_pixels (x_w - xbar)^2,   xbar = (1 / W) sum_w x_w,

i.e. the paper's (1/W) sum_w ||x_w - xbar||^2 divided by the number of pixels (the authors' code
uses this per-pixel MSE; the scale does not move the minimum). It is evaluated from running sums
(sum of outputs, sum of squared norms, in float64) over a ring buffer, so one check costs O(pixels),
not O(W * pixels); the sums are recomputed exactly from the buffer every W pushes so rounding
errors cannot accumulate.

Whenever VAR is a new minimum for a measurement the callback keeps one output of that window
(``keep``): ``"latest"`` (the newest output of the window, the one the authors' code reports at
the ES point), ``"middle"`` (the output in the middle of the window, where the window is centred)
or ``"mean"`` (the window mean xbar, a free by-product of the running sums). Training stops when
*every* measurement has gone ``patience`` checks without a new minimum; the kept outputs then
become ``pl_module.final_output`` (and so the method's ``reconstruction``).

Usage::

    es = WMVEarlyStopping(window=100, patience=1000)
    trainer = pl.Trainer(max_steps=20_000, callbacks=[es])
    trainer.fit(DIP(network="skip"), datamodule)
    es.best_step                    # {measurement index: step of the kept output}

>>> es = WMVEarlyStopping(window=10, patience=50)
>>> es.window, es.patience, es.keep
(10, 50, 'latest')
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from ugodit_pl.arguments import check_choice, whole

KEEP_CHOICES = ("latest", "middle", "mean")


def current_output_of(pl_module: pl.LightningModule, caller: str) -> torch.Tensor:
    """``pl_module.current_output`` as a detached (B, C, H, W) tensor, or a clear error."""
    if not hasattr(pl_module, "current_output"):
        raise AttributeError(
            f"{caller} needs the LightningModule to expose `current_output` (a detached (B, C, H, W) tensor "
            f"of this step's output); {type(pl_module).__name__} has no attribute 'current_output'"
        )
    output = pl_module.current_output
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"{caller}: {type(pl_module).__name__}.current_output must be a (B, C, H, W) tensor set in "
            f"training_step, got {type(output).__name__}"
        )
    if output.ndim != 4:
        raise ValueError(
            f"{caller}: {type(pl_module).__name__}.current_output must be (B, C, H, W), got shape {tuple(output.shape)}"
        )
    return output.detach()


def row_ids(batch: Any, num_rows: int) -> List[int]:
    """Identities of a batch's rows: ``batch["index"]`` when present, else 0..B-1."""
    index = batch.get("index") if isinstance(batch, Mapping) else None
    if index is None:
        return list(range(num_rows))
    ids = [int(i) for i in torch.as_tensor(index).flatten().tolist()]
    if len(ids) != num_rows:
        raise ValueError(f"batch['index'] has {len(ids)} entries but current_output has {num_rows} rows")
    return ids


class WMVEarlyStopping(pl.Callback):
    """Early stopping by the windowed moving variance of the outputs (ES-WMV), per measurement.

    Args:
        window: W, the number of outputs in the sliding window (100 in the paper).
        patience: P, the number of checks without a new variance minimum after which a
            measurement is done (1000 in the paper); training stops when every measurement is done.
        check_every: look at the output every this many steps (1 = every step, as in the paper).
            The window then holds outputs ``check_every`` steps apart and ``patience`` counts checks.
        keep: which output of the minimum-variance window is kept: ``"latest"`` (default, the
            authors' choice), ``"middle"`` or ``"mean"`` (see the module docstring).
        verbose: print a line when training stops.

    After the fit: ``best_step`` ({measurement index: trainer step of the kept output}),
    ``best_variance`` ({index: minimum VAR}), ``best_outputs`` ({index: kept output (C, H, W)}),
    ``stopped_step`` (the step at which it stopped training, or None), and
    ``pl_module.final_output`` holds the kept outputs of the last batch's rows, in batch order.

    Measurements are identified by ``batch["index"]`` (or row position if the batch has none), so
    batches may hold different subsets of the set. A "step" is ``trainer.global_step`` after the
    optimiser step whose forward pass produced the output.

    Example::

        es = WMVEarlyStopping(window=100, patience=1000)
        pl.Trainer(max_steps=20_000, callbacks=[es]).fit(method, datamodule)
        image = method.reconstruction          # the kept (minimum-variance) outputs

    >>> WMVEarlyStopping(window=5, patience=3, keep="mean").state_key
    "WMVEarlyStopping{'window': 5, 'patience': 3, 'check_every': 1, 'keep': 'mean'}"
    """

    def __init__(
        self, window: int = 100, patience: int = 1000, check_every: int = 1, keep: str = "latest", verbose: bool = False
    ) -> None:
        super().__init__()
        whole("WMVEarlyStopping: window (a variance needs two outputs)", window, minimum=2)
        whole("WMVEarlyStopping: patience", patience, minimum=1)
        whole("WMVEarlyStopping: check_every", check_every, minimum=1)
        check_choice("WMVEarlyStopping: keep", keep, KEEP_CHOICES)
        self.window = int(window)
        self.patience = int(patience)
        self.check_every = int(check_every)
        self.keep = keep
        self.verbose = bool(verbose)
        self.stopped_step: Optional[int] = None
        self._reset()

    def _reset(self) -> None:
        self._ids: List[int] = []                       # measurement index of each slot
        self._buffer: Optional[torch.Tensor] = None     # (W, K, C, H, W) ring buffer, float32
        self._buffer_steps: Optional[torch.Tensor] = None  # (W, K) steps of the buffered outputs
        self._sum: Optional[torch.Tensor] = None        # (K, C, H, W) float64 sum over the window
        self._sumsq: Optional[torch.Tensor] = None      # (K,) float64 sum of squared norms
        self._count = torch.zeros(0, dtype=torch.long)  # outputs pushed per slot
        self._best_var = torch.zeros(0, dtype=torch.float64)
        self._best_step = torch.zeros(0, dtype=torch.long)
        self._since_best = torch.zeros(0, dtype=torch.long)  # checks since the last new minimum
        self._best_output: Optional[torch.Tensor] = None  # (K, C, H, W) float32
        self._last_ids: List[int] = []                  # rows of the last batch looked at

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            window=self.window, patience=self.patience, check_every=self.check_every, keep=self.keep
        )

    # ----------------------------------------------------------------- public results
    @property
    def best_step(self) -> Dict[int, int]:
        """{measurement index: step of the kept output}, for measurements whose window has filled."""
        return {i: int(s) for i, s in zip(self._ids, self._best_step.tolist()) if s >= 0}

    @property
    def best_variance(self) -> Dict[int, float]:
        """{measurement index: the minimum windowed variance}."""
        return {i: float(v) for i, v, s in zip(self._ids, self._best_var.tolist(), self._best_step.tolist()) if s >= 0}

    @property
    def best_outputs(self) -> Dict[int, torch.Tensor]:
        """{measurement index: the kept output (C, H, W)}."""
        if self._best_output is None:
            return {}
        return {i: self._best_output[k] for k, (i, s) in enumerate(zip(self._ids, self._best_step.tolist())) if s >= 0}

    def variances(self) -> Dict[int, float]:
        """The windowed variance of each measurement's current window (NaN until the window fills)."""
        if self._sum is None:
            return {}
        var = self._variance(list(range(len(self._ids))))
        return {i: (float(v) if c >= self.window else math.nan) for i, v, c in zip(self._ids, var.tolist(), self._count.tolist())}

    # ----------------------------------------------------------------- core
    def _slots(self, ids: Sequence[int], output: torch.Tensor) -> torch.Tensor:
        """Slot of each row id, allocating state for ids seen for the first time."""
        new = [i for i in ids if i not in self._ids]
        if self._buffer is not None and self._buffer.shape[2:] != output.shape[1:]:
            raise ValueError(
                f"WMVEarlyStopping: current_output rows have shape {tuple(output.shape[1:])} but earlier steps had "
                f"{tuple(self._buffer.shape[2:])}"
            )
        if new:
            k = len(new)
            shape = tuple(output.shape[1:])
            grow = lambda t, fill: torch.cat((t, fill), dim=0)  # noqa: E731
            if self._buffer is None:
                self._buffer = output.new_zeros((self.window, 0, *shape), dtype=torch.float32)
                self._buffer_steps = torch.zeros(self.window, 0, dtype=torch.long)
                self._sum = output.new_zeros((0, *shape), dtype=torch.float64)
                self._sumsq = output.new_zeros(0, dtype=torch.float64)
                self._best_output = output.new_zeros((0, *shape), dtype=torch.float32)
            self._buffer = torch.cat((self._buffer, self._buffer.new_zeros((self.window, k, *shape))), dim=1)
            self._buffer_steps = torch.cat((self._buffer_steps, torch.zeros(self.window, k, dtype=torch.long)), dim=1)
            self._sum = grow(self._sum, self._sum.new_zeros((k, *shape)))
            self._sumsq = grow(self._sumsq, self._sumsq.new_zeros(k))
            self._best_output = grow(self._best_output, self._best_output.new_zeros((k, *shape)))
            self._count = grow(self._count, torch.zeros(k, dtype=torch.long))
            self._best_var = grow(self._best_var, torch.full((k,), math.inf, dtype=torch.float64))
            self._best_step = grow(self._best_step, torch.full((k,), -1, dtype=torch.long))
            self._since_best = grow(self._since_best, torch.zeros(k, dtype=torch.long))
            self._ids.extend(new)
        self._to_device(output.device)
        position = {i: k for k, i in enumerate(self._ids)}
        return torch.tensor([position[i] for i in ids], dtype=torch.long)

    def _to_device(self, device: torch.device) -> None:
        for name in ("_buffer", "_sum", "_sumsq", "_best_output"):
            value = getattr(self, name)
            if value is not None and value.device != device:
                setattr(self, name, value.to(device))

    def _variance(self, slots: Sequence[int]) -> torch.Tensor:
        """VAR per slot (float64, on the buffer's device) from the running sums."""
        slots_t = torch.as_tensor(list(slots), dtype=torch.long, device=self._sum.device)
        total = self._sum[slots_t].flatten(1)
        pixels = total.shape[1]
        var = (self._sumsq[slots_t] / self.window - (total / self.window).pow(2).sum(dim=1)) / pixels
        return var.clamp_min(0.0)

    def _recompute_sums(self, slots: torch.Tensor) -> None:
        """Exact sums over the buffer (undoes the drift of the running updates)."""
        dev = slots.to(self._buffer.device)
        window = self._buffer[:, dev].double()
        self._sum[dev] = window.sum(dim=0)
        self._sumsq[dev] = window.flatten(2).pow(2).sum(dim=(0, 2))

    def _push(self, output: torch.Tensor, slots: torch.Tensor, step: int) -> None:
        """Add one output per slot to the window, dropping the oldest once the window is full."""
        dev = slots.to(output.device)
        position = (self._count[slots] % self.window)
        pos_dev = position.to(output.device)
        full = (self._count[slots] >= self.window).to(output.device)
        x = output.to(torch.float32)
        old = self._buffer[pos_dev, dev].double()
        keep_old = full.view(-1, *([1] * (x.ndim - 1)))
        old = torch.where(keep_old, old, torch.zeros_like(old))
        x64 = x.double()
        self._sum[dev] += x64 - old
        self._sumsq[dev] += x64.flatten(1).pow(2).sum(dim=1) - old.flatten(1).pow(2).sum(dim=1)
        self._buffer[pos_dev, dev] = x
        self._buffer_steps[position, slots] = step
        self._count[slots] += 1
        refresh = slots[(self._count[slots] % self.window) == 0]
        if len(refresh):
            self._recompute_sums(refresh)

    def _chosen(self, slots: torch.Tensor, output: torch.Tensor) -> tuple:
        """The output to keep for each slot (its window just filled or moved) and its step."""
        newest = (self._count[slots] - 1) % self.window
        if self.keep == "latest":
            return output.to(torch.float32), self._buffer_steps[newest, slots]
        if self.keep == "mean":
            return (self._sum[slots.to(self._sum.device)] / self.window).to(torch.float32), self._buffer_steps[newest, slots]
        # middle: chronological position (W - 1) // 2 ... W // 2 from the oldest; take W // 2
        oldest = self._count[slots] % self.window
        middle = (oldest + self.window // 2) % self.window
        dev = slots.to(self._buffer.device)
        return self._buffer[middle.to(self._buffer.device), dev].clone(), self._buffer_steps[middle, slots]

    def check(self, output: torch.Tensor, ids: Sequence[int], step: int) -> bool:
        """Push one output per measurement, update the minima; True when every measurement is done.

        The Lightning hooks call this; it can also drive the criterion outside a Trainer. Rows
        with NaN/Inf values are skipped (they never enter the window).

        >>> es = WMVEarlyStopping(window=2, patience=1)
        >>> [es.check(torch.full((1, 1, 2, 2), v), [0], s) for s, v in enumerate([0.0, 1.0, 1.5, 1.0])]
        [False, False, False, True]
        >>> es.best_step
        {0: 2}
        """
        output = output.detach()
        self._last_ids = list(ids)
        finite = torch.isfinite(output.flatten(1)).all(dim=1).cpu()
        if not bool(finite.all()):
            # a diverged step (e.g. one that DivergenceRollback undoes) must not enter the window
            ids = [i for i, ok in zip(ids, finite.tolist()) if ok]
            output = output[finite.to(output.device)]
            if not ids:
                return self.all_done()
        slots = self._slots(ids, output)
        self._push(output, slots, int(step))
        full = self._count[slots] >= self.window
        if bool(full.any()):
            ready = slots[full]
            var = self._variance(ready.tolist()).cpu()
            improved = var < self._best_var[ready]
            if bool(improved.any()):
                chosen, chosen_steps = self._chosen(ready[improved], output[full.to(output.device)][improved.to(output.device)])
                better = ready[improved]
                self._best_output[better.to(self._best_output.device)] = chosen
                self._best_step[better] = chosen_steps
                self._best_var[better] = var[improved]
                self._since_best[better] = 0
            self._since_best[ready[~improved]] += 1
        return self.all_done()

    def all_done(self) -> bool:
        """True when every measurement seen has gone ``patience`` checks without a new minimum."""
        if not self._ids:
            return False
        filled = self._best_step >= 0
        return bool(filled.all()) and bool((self._since_best >= self.patience).all())

    def kept_output(self, ids: Sequence[int]) -> Optional[torch.Tensor]:
        """The kept outputs of ``ids`` (rows in that order), or None if some window never filled."""
        if not ids or any(i not in self._ids for i in ids):
            return None
        position = {i: k for k, i in enumerate(self._ids)}
        slots = torch.tensor([position[i] for i in ids], dtype=torch.long)
        if bool((self._best_step[slots] < 0).any()):
            return None
        return self._best_output[slots.to(self._best_output.device)].clone()

    # ----------------------------------------------------------------- Lightning hooks
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if step % self.check_every != 0:
            return
        output = current_output_of(pl_module, type(self).__name__)
        done = self.check(output, row_ids(batch, output.shape[0]), step)
        should_stop = trainer.strategy.reduce_boolean_decision(done, all=True)
        if should_stop and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_step = step
            self._set_final_output(pl_module)
            if self.verbose:
                rank_zero_info(
                    f"WMVEarlyStopping: stopping at step {step}; kept outputs from steps {self.best_step} "
                    f"(window {self.window}, patience {self.patience})"
                )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._set_final_output(pl_module)

    def _set_final_output(self, pl_module: pl.LightningModule) -> None:
        kept = self.kept_output(self._last_ids)
        if kept is None:
            if self._last_ids:
                rank_zero_warn(
                    f"WMVEarlyStopping: the variance window ({self.window} outputs, one every {self.check_every} "
                    "steps) never filled for some measurement, so no output was kept; final_output is left unchanged"
                )
            return
        pl_module.final_output = kept

    # ----------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        cpu = lambda t: None if t is None else t.detach().cpu().clone()  # noqa: E731
        return {
            "ids": list(self._ids),
            "buffer": cpu(self._buffer),
            "buffer_steps": cpu(self._buffer_steps),
            "count": cpu(self._count),
            "best_var": cpu(self._best_var),
            "best_step": cpu(self._best_step),
            "since_best": cpu(self._since_best),
            "best_output": cpu(self._best_output),
            "last_ids": list(self._last_ids),
            "stopped_step": self.stopped_step,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._reset()
        self._ids = list(state_dict["ids"])
        self._buffer = state_dict["buffer"]
        self._buffer_steps = state_dict["buffer_steps"]
        self._count = state_dict["count"].clone()
        self._best_var = state_dict["best_var"].clone()
        self._best_step = state_dict["best_step"].clone()
        self._since_best = state_dict["since_best"].clone()
        self._best_output = state_dict["best_output"]
        self._last_ids = list(state_dict.get("last_ids", []))
        self.stopped_step = state_dict.get("stopped_step")
        if self._buffer is not None:
            if self._buffer.shape[0] != self.window:
                raise ValueError(
                    f"WMVEarlyStopping: the saved state has a window of {self._buffer.shape[0]} outputs but this "
                    f"callback has window={self.window}"
                )
            shape = self._buffer.shape[2:]
            self._sum = self._buffer.new_zeros((len(self._ids), *shape), dtype=torch.float64)
            self._sumsq = self._buffer.new_zeros(len(self._ids), dtype=torch.float64)
            # Rebuild the exact sums over the valid part of each window.
            for k, count in enumerate(self._count.tolist()):
                valid = self._buffer[: min(count, self.window), k].double()
                self._sum[k] = valid.sum(dim=0)
                self._sumsq[k] = valid.flatten(1).pow(2).sum()
