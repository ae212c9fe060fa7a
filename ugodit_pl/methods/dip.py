"""Vanilla DIP (Ulyanov et al. 2018) and reference-guided DIP.

    loss_k = ||A f(z + sigma_p eta_k) - y||^2,   z ~ U(0, 0.1) fixed,   eta_k ~ N(0, 1) drawn every step.

Reference-guided DIP uses the fixed input A^H y (or a reference image from the batch) instead of
noise, without perturbation.

>>> method = DIP(num_measurements=1, network="unet", network_args={"channels": [4, 8, 8, 8]})
>>> method.input_init
'noise'
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from ugodit_pl.arguments import non_negative
from ugodit_pl.methods.base import ReconstructionMethod
from ugodit_pl.methods.draws import PERTURBATION, row_random
from ugodit_pl.methods.networks import per_measurement_networks


class DIP(ReconstructionMethod):
    """Deep Image Prior: one network per measurement fitted to a fixed (noise) input.

    Args:
        input_perturbation: std sigma_p of the Gaussian perturbation added to the input at
            every step (1/30 in DIP's code; 0 disables it).
        input_init: ``"noise"`` (default), or ``"measurement"`` / ``"reference"``.
        **kwargs: the arguments of ``ReconstructionMethod``.

    Example::

        method = DIP(network="skip", network_args={"in_channels": 32, "out_channels": 3})
    """

    def __init__(self, *, input_perturbation: float = 1.0 / 30.0, input_init: str = "noise", **kwargs: Any) -> None:
        super().__init__(input_init=input_init, **kwargs)
        self.input_perturbation = non_negative("input_perturbation", input_perturbation)
        self.nets = per_measurement_networks(
            self.network_name, self.network_args, self.num_measurements, self.seed, self.network_init, self.residual,
            self.network_seeds,
        )
        self.save_hyperparameters()

    def network_output(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.nets(z, indices=rows)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        """One step: ||A f(z + sigma_p eta_k) - y||^2 with a fresh eta_k per row and step."""
        step = self.begin_step(batch)
        z = self.fit_state.inputs[step.rows]
        if self.input_perturbation > 0:
            noise = row_random("normal", self.input_perturbation, self.seed, PERTURBATION, step.row_list,
                               tuple(z.shape[1:]), step.counts, z.device)
            z = z + noise.to(z.dtype)
        output = self.forward_rows(z, step.rows)
        data = self.data_term(output, step)
        return self.end_step(step, data, data, output)


class ReferenceGuidedDIP(DIP):
    """DIP whose fixed input is A^H y (``input_init="measurement"``) or a given reference image.

    For a reference image, put it in the batch under ``"reference"`` (network-output layout, the
    measurement's units) and pass ``input_init="reference"``. No input perturbation by default.

    ``residual`` is False by default, unlike the other image-input U-Net methods: with no regulariser,
    f(z) = z + g(z) starts at A^H y and fits its noise within about 60 steps (real-MRI panel, EPI
    slice: 21.00 dB against 24.30 dB without it, below the zero-filled 22.79 dB; decision 6 of
    docs/RESULTS.md).

    Example::

        method = ReferenceGuidedDIP(network="unet")          # input A^H y
    """

    def __init__(
        self, *, input_init: str = "measurement", input_perturbation: float = 0.0, residual: Optional[bool] = False,
        **kwargs: Any
    ) -> None:
        if input_init == "noise":
            raise ValueError("ReferenceGuidedDIP takes input_init='measurement' or 'reference'; use DIP for noise")
        super().__init__(input_init=input_init, input_perturbation=input_perturbation, residual=residual, **kwargs)
