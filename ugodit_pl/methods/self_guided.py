"""Self-Guided DIP (Liang, Bell, Qu, Wang, Ravishankar, IEEE TCI 2025).

The network weights theta and the input z are optimised jointly; each step averages the outputs of
J noisy copies of the input, which acts as a denoiser, and the averaged output guides the input:

    min_{theta, z} ||A m(z) - y||^2 + alpha ||m(z) - z||^2,   m(z) = (1/J) sum_j f(z + eta_j),
    eta_j ~ N(0, sigma_eta^2).

z is a parameter of the fit from the first step: its own group (with its own learning rate) in
the method's one Adam, so ``DivergenceRollback`` restores it and damps its learning rate like the
weights', and checkpoints hold its optimiser state.

>>> method = SelfGuidedDIP(num_measurements=1, network="unet", network_args={"channels": [4, 8, 8, 8]})
>>> (method.alpha, method.num_draws, method.input_lr, method.residual)
(0.5, 1, 0.001, True)
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import torch

from ugodit_pl.arguments import non_negative, positive, whole
from ugodit_pl.methods.base import ReconstructionMethod
from ugodit_pl.methods.batches import Step
from ugodit_pl.methods.defaults import DEFAULT_ALPHA, DEFAULT_INPUT_LR, DEFAULT_NUM_DRAWS, network_default
from ugodit_pl.methods.draws import SELF_GUIDANCE, row_random
from ugodit_pl.methods.networks import per_measurement_networks


class SelfGuidedDIP(ReconstructionMethod):
    """Joint optimisation of weights and input with a self-guidance (denoiser) regulariser.

    Args:
        alpha: weight of ||m(z) - z||; None = ``DEFAULT_ALPHA`` for the network.
        num_draws: J, noise draws averaged per step (3 or 4 in the paper); None = ``DEFAULT_NUM_DRAWS``
            for the network (1 for the MRI U-Net: the same PSNR at a quarter of the cost).
        noise_std: sigma_eta, the std of the input noise, in normalised units (the input's
            percentile scale is 1 for MRI; images are in [0, 1]).
        input_lr: Adam learning rate of the input z; None = ``DEFAULT_INPUT_LR`` for the network
            (the authors' MRI notebook: 0.1, from a noise input; see ``DEFAULT_INPUT_LR`` for why not).
        input_init: where z starts: ``"measurement"`` (A^H y), ``"noise"`` or ``"reference"`` (a
            reference image the batch carries); see ``ugodit_pl.methods.inputs``.
        **kwargs: the arguments of ``ReconstructionMethod``.

    Example::

        method = SelfGuidedDIP(network="unet", alpha=2.0, num_draws=4, input_lr=0.1, residual=False)  # the notebook's
    """

    optimises_inputs = True

    def __init__(
        self,
        *,
        alpha: Optional[float] = None,
        num_draws: Optional[int] = None,
        noise_std: float = 0.05,
        input_lr: Optional[float] = None,
        input_init: str = "measurement",
        **kwargs: Any,
    ) -> None:
        super().__init__(input_init=input_init, **kwargs)
        self.alpha = non_negative("alpha", network_default(DEFAULT_ALPHA, self.network_name) if alpha is None else alpha)
        self.num_draws = whole("num_draws", network_default(DEFAULT_NUM_DRAWS, self.network_name)
                               if num_draws is None else num_draws, minimum=1)
        self.noise_std = non_negative("noise_std", noise_std)
        self.input_lr = positive("input_lr", network_default(DEFAULT_INPUT_LR, self.network_name)
                                 if input_lr is None else input_lr)
        self.nets = per_measurement_networks(
            self.network_name, self.network_args, self.num_measurements, self.seed, self.network_init, self.residual,
            self.network_seeds,
        )
        self.save_hyperparameters()

    def network_output(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.nets(z, indices=rows)

    def averaged_output(self, z: torch.Tensor, step: Step) -> torch.Tensor:
        """m(z) = mean over J draws of f(z + eta_j), eta_j drawn per row and step."""
        draws = row_random("normal", self.noise_std, self.seed, SELF_GUIDANCE, step.row_list,
                           (self.num_draws, *z.shape[1:]), step.counts, z.device).to(z.dtype)
        total = 0.0
        for j in range(self.num_draws):
            total = total + self.forward_rows(z + draws[:, j], step.rows)
        return total / self.num_draws

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        """One step: ||A m(z) - y||^2 + alpha ||m(z) - z||^2; the optimiser then steps theta and z."""
        step = self.begin_step(batch)
        z = self.fit_state.inputs[step.rows]
        output = self.averaged_output(z, step)
        data = self.data_term(output, step)
        loss = data + self.alpha * self.proximity_term(output, z)
        return self.end_step(step, loss, data, output)

    def parameter_groups(self) -> List[Dict[str, Any]]:
        """The weights at ``lr`` and the inputs z at ``input_lr``."""
        return super().parameter_groups() + [{"params": [self.fit_state.inputs], "lr": self.input_lr, "name": "inputs"}]
