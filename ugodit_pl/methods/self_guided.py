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
(0.5, 4, 0.001, True)
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import torch

from ugodit_pl.methods.arguments import non_negative, positive, whole
from ugodit_pl.methods.base import ReconstructionMethod, Step
from ugodit_pl.methods.draws import SELF_GUIDANCE, row_random
from ugodit_pl.methods.networks import per_measurement_networks


#: Default Adam learning rate of the input z per network. The authors' MRI notebook takes 0.1 (with
#: z from U(0, 1) noise); from A^H y (max about 1) Adam's first steps of 0.1 per pixel replace the
#: image by noise: on the real-MRI panel (4x, 600 steps, docs/RESULTS.md decisions) 1e-3 with the
#: residual U-Net gave +2.8 dB on the real brain over 0.1. On 4x super-resolution of FFHQ 00002
#: (``ugodit benchmark sr-quality --preset quick``) the skip net gave 15.65 dB with 0.1 and 27.48 dB
#: with 0.01 (docs/RESULTS.md).
DEFAULT_INPUT_LR = {"unet": 1e-3, "skip": 0.01}
#: Default alpha per network: the authors' 2 for the skip net (natural images, mean squared errors);
#: 0.5 for the MRI U-Net, whose data term is summed over the coils (2 weighs the self-guidance 4x
#: more than the data here and held the output near A^H y: panel sweep in docs/RESULTS.md decisions).
DEFAULT_ALPHA = {"unet": 0.5, "skip": 2.0}


class SelfGuidedDIP(ReconstructionMethod):
    """Joint optimisation of weights and input with a self-guidance (denoiser) regulariser.

    Args:
        alpha: weight of ||m(z) - z||; None = ``DEFAULT_ALPHA`` for the network (2 in the authors'
            notebooks, kept for the skip net; 0.5 for the MRI U-Net).
        num_draws: J, noise draws averaged per step (3 or 4 in the paper).
        noise_std: sigma_eta, the std of the input noise, in normalised units (the input's
            percentile scale is 1 for MRI; images are in [0, 1]).
        input_lr: Adam learning rate of the input z; None = ``DEFAULT_INPUT_LR`` for the network:
            1e-3 for the U-Net (the authors' MRI notebook: 0.1, from a noise input), 0.01 for the
            skip net (natural images in [0, 1]: 0.1 moves z far off the image, see docs/RESULTS.md).
        input_init: ``"measurement"`` (A^H y, default) or ``"noise"``.
        **kwargs: the arguments of ``ReconstructionMethod``.

    Example::

        method = SelfGuidedDIP(network="unet", alpha=2.0, num_draws=4, input_lr=0.1, residual=False)  # the notebook's
    """

    optimises_inputs = True

    def __init__(
        self,
        *,
        alpha: Optional[float] = None,
        num_draws: int = 4,
        noise_std: float = 0.05,
        input_lr: Optional[float] = None,
        input_init: str = "measurement",
        **kwargs: Any,
    ) -> None:
        super().__init__(input_init=input_init, **kwargs)
        self.alpha = non_negative("alpha", DEFAULT_ALPHA.get(self.network_name, 2.0) if alpha is None else alpha)
        self.num_draws = whole("num_draws", num_draws, minimum=1)
        self.noise_std = non_negative("noise_std", noise_std)
        self.input_lr = positive("input_lr", DEFAULT_INPUT_LR.get(self.network_name, 0.01) if input_lr is None else input_lr)
        self.nets = per_measurement_networks(
            self.network_name, self.network_args, self.num_measurements, self.seed, self.network_init, self.residual
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
