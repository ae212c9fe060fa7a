"""What a fit returns: the reconstructions, in the measurements' units, and their metrics.

``FittedResults`` is the part of ``ReconstructionMethod`` that reads the fitting state after (or
during) a fit: the outputs the callbacks use, ``all_reconstructions()``, and Lightning's
``validation_step`` / ``test_step`` / ``predict_step`` (``ugodit validate|test|predict``).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from ugodit_pl.methods.batches import batch_rows
from ugodit_pl.methods.scaling import undo_scale
from ugodit_pl.methods.trainer_access import world_size


def ema_past_weight(count: torch.Tensor, decay: float, variant: str) -> torch.Tensor:
    """Weight of the old EMA for rows that have had ``count`` outputs averaged.

    Corrected: the EMA after t outputs equals sum_k (1 - d) d^(t-k) out_k / (1 - d^t), which this
    weight, d (1 - d^n) / (1 - d^(n+1)) for n = count, produces step by step. Authors': d, from a
    zero EMA.

    >>> ema_past_weight(torch.tensor([0.0, 1.0, 50.0]), 0.5, "corrected")
    tensor([0.0000, 0.3333, 0.5000])
    """
    if variant == "authors":
        return torch.full_like(count, decay)
    return decay * (1.0 - decay**count) / (1.0 - decay ** (count + 1))


class FittedResults:
    """The reconstructions of a ``ReconstructionMethod`` (a mixin: it reads ``fit_state``, ``output``,
    ``final_projection``, ``mean_with``, ``final_output`` and ``last_index``, which the method sets)."""

    def _rows_in_units(self, name: str, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Rows of the state's ``ema``, ``last`` or ``projected`` in the measurement's units; NaN where a row has
        none yet.

        Read from the state, so after a ``DivergenceRollback`` restore they are the restored ones.
        """
        state = self.fit_state
        # after a fit on a GPU Lightning moves the module (and its state) back to the CPU: follow the state
        rows = torch.arange(state.num_rows, device=state.ema.device) if rows is None else rows.to(state.ema.device)
        averaged = name == "ema" or (name == "projected" and self.output == "ema")
        count = (state.ema_count if averaged else state.steps.to(state.ema.device))[rows]
        values = undo_scale(getattr(state, name)[rows], state.scales[rows])
        return torch.where((count > 0).view(-1, *([1] * (values.ndim - 1))), values, torch.full_like(values, float("nan")))

    @property
    def current_output(self) -> Optional[torch.Tensor]:
        """The last output of the last batch's rows (B, C, H, W), in measurement units (None before a step)."""
        return None if self.last_index is None else self._rows_in_units("last", self.last_index)

    @property
    def ema_output(self) -> Optional[torch.Tensor]:
        """The EMA of the outputs of the last batch's rows, in measurement units (None before a step)."""
        return None if self.last_index is None else self._rows_in_units("ema", self.last_index)

    @property
    def network_reconstruction(self) -> Optional[torch.Tensor]:
        """The network's reconstruction of the last batch's measurements, in measurement units.

        ``final_output`` when a callback chose one (e.g. ``WMVEarlyStopping``), else the EMA or
        the last output as ``output`` says, with its measured samples put back if ``final_projection``.
        """
        if self.final_output is not None:
            return self.final_output
        return None if self.last_index is None else self._rows_in_units(self._result, self.last_index)

    @property
    def reconstruction(self) -> Optional[torch.Tensor]:
        """The reconstruction of the last batch's measurements, in measurement units: ``network_reconstruction``,
        averaged with the compressed-sensing image of each measurement when ``mean_with`` is set."""
        network = self.network_reconstruction
        return None if network is None else self.with_mean(network, self.last_index)

    @property
    def _result(self) -> str:
        """The state tensor that holds the reconstructions."""
        if self.final_projection:
            return "projected"
        return "ema" if self.output == "ema" else "last"

    def with_mean(self, images: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Network images of the measurements ``rows`` (default: all), in measurement units, averaged with their
        compressed-sensing images when ``mean_with`` is set (unchanged otherwise)."""
        if self.mean_with is None:
            return images
        state = self.fit_state  # every process holds every row's image (shared in ``prepare``)
        rows = torch.arange(state.num_rows, device=state.ema.device) if rows is None else rows.to(state.ema.device)
        classical = undo_scale(state.classical[rows], state.scales[rows])
        return (images + classical.to(images.device, images.dtype)) / 2

    def all_network_reconstructions(self) -> torch.Tensor:
        """The network's reconstructions of all N measurements, (N, C, H, W), in measurement units.

        The EMA or the last outputs per ``output`` (projected per ``final_projection``), with the rows of
        the last batch replaced by
        ``final_output`` when a callback chose one (e.g. ``WMVEarlyStopping``). A row that has no output
        yet (or was rolled back to before its first step) is NaN, which no writer writes.
        """
        if not self.fit_state.allocated:
            raise RuntimeError("nothing has been fitted yet: run trainer.fit first")
        rows = self._rows_in_units(self._result)
        if self.final_output is not None and self.last_index is not None:
            rows = rows.clone()
            rows[self.last_index.to(rows.device)] = self.final_output.to(rows.device, rows.dtype)
        return rows

    def all_reconstructions(self) -> torch.Tensor:
        """Reconstructions of all N measurements, (N, C, H, W), in measurement units:
        ``all_network_reconstructions()``, averaged with their compressed-sensing images when ``mean_with``
        is set."""
        return self.with_mean(self.all_network_reconstructions())

    def _evaluate(self, batch: Mapping[str, Any], stage: str) -> Dict[str, torch.Tensor]:
        """Metrics of the current reconstructions of the batch's measurements against its targets."""
        from ugodit_pl.metrics import reconstruction_metrics

        if "target" not in batch:
            raise ValueError(f"{stage} needs batches with a 'target' (ground truth); these measurements have none")
        index = batch_rows(batch, self.device)
        values = reconstruction_metrics(self.all_reconstructions()[index], batch["target"])
        for name, value in values.items():
            self.log(f"{stage}/{name}", value.mean(), batch_size=len(index), sync_dist=world_size(self) > 1)
        return values

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> Dict[str, torch.Tensor]:
        """PSNR / SSIM (/ NMSE) of the reconstructions fitted so far (``ugodit validate``)."""
        return self._evaluate(batch, "val")

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> Dict[str, torch.Tensor]:
        """PSNR / SSIM (/ NMSE) of the fitted reconstructions (``ugodit test --ckpt_path ...``)."""
        return self._evaluate(batch, "test")

    def predict_step(self, batch: Dict[str, Any], batch_idx: int) -> Dict[str, Any]:
        """The fitted reconstructions of the batch's measurements, with their index and names."""
        index = batch_rows(batch, self.device)
        return {
            "reconstruction": self.all_reconstructions()[index],
            "index": index,
            "name": [self.fit_state.names[i] for i in index.tolist()],
        }
