"""Self-Guided DIP (Liang, Bell, Qu, Wang, Ravishankar, IEEE TCI 2025).

The network weights theta and the input z are optimised jointly (z with its own Adam and a larger
learning rate). Each step averages the outputs of J noisy copies of the input, which acts as a
denoiser, and the averaged output guides the input:

    min_{theta, z} ||A m(z) - y||^2 + alpha ||m(z) - z||^2,   m(z) = mean_j f(z + eta_j),
    eta_j ~ N(0, sigma_eta^2).

>>> method = SelfGuidedDIP(num_measurements=1, network="unet", network_args={"channels": [4, 8, 8, 8]})
>>> (method.alpha, method.num_draws, method.input_lr)
(2.0, 4, 0.1)
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ugodit_pl.methods.base import ReconstructionMethod, adam, world_size
from ugodit_pl.methods.inputs import row_noise
from ugodit_pl.methods.networks import per_measurement_networks
from ugodit_pl.operators.base import Operator


#: Default Adam learning rate of the input z per network. On 4x super-resolution of FFHQ 00002
#: (``ugodit benchmark sr-quality --preset quick``) the skip net gave 15.65 dB with 0.1 and 27.48 dB
#: with 0.01 (docs/RESULTS.md).
DEFAULT_INPUT_LR = {"unet": 0.1, "skip": 0.01}


class SelfGuidedDIP(ReconstructionMethod):
    """Joint optimisation of weights and input with a self-guidance (denoiser) regulariser.

    Args:
        alpha: weight of ||m(z) - z|| (2 in the authors' MRI notebook).
        num_draws: J, noise draws averaged per step (3 or 4 in the paper).
        noise_std: sigma_eta, the std of the input noise, in normalised units (the input's
            percentile scale is 1 for MRI; images are in [0, 1]).
        input_lr: Adam learning rate of the input z; None = ``DEFAULT_INPUT_LR`` for the network:
            0.1 for the U-Net (the authors' MRI notebook), 0.01 for the skip net (natural images
            in [0, 1]: 0.1 moves z far off the image, see docs/RESULTS.md).
        input_init: ``"measurement"`` (A^H y, default) or ``"noise"``.
        **kwargs: the arguments of ``ReconstructionMethod``.

    Example::

        method = SelfGuidedDIP(network="unet", alpha=2.0, num_draws=4, input_lr=0.1)
    """

    def __init__(
        self,
        *,
        alpha: float = 2.0,
        num_draws: int = 4,
        noise_std: float = 0.05,
        input_lr: Optional[float] = None,
        input_init: str = "measurement",
        **kwargs: Any,
    ) -> None:
        super().__init__(input_init=input_init, **kwargs)
        if input_lr is None:
            input_lr = DEFAULT_INPUT_LR.get(self.network_name, 0.01)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if int(num_draws) < 1:
            raise ValueError(f"num_draws must be >= 1, got {num_draws}")
        if noise_std < 0 or input_lr <= 0:
            raise ValueError(f"noise_std must be >= 0 and input_lr > 0, got {noise_std} and {input_lr}")
        self.alpha = float(alpha)
        self.num_draws = int(num_draws)
        self.noise_std = float(noise_std)
        self.input_lr = float(input_lr)
        self.input_optimizer: Optional[torch.optim.Adam] = None
        self._pending_input_optimizer_state: Optional[Dict[str, Any]] = None
        self.nets = per_measurement_networks(self.network_name, self.network_args, self.num_measurements, self.seed)
        self.save_hyperparameters()

    def network_output(self, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.nets(z, indices=index)

    def averaged_output(self, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """m(z) = mean over J draws of f(z + eta_j)."""
        shape = tuple(z.shape[1:])
        total = 0.0
        for _ in range(self.num_draws):
            eta = row_noise(self.generator, self.num_measurements, shape, index, z.device, self.noise_std)
            total = total + self.network_output(z + eta, index)
        return total / self.num_draws

    def step_loss(self, z: torch.Tensor, y: torch.Tensor, operator: Operator, index: torch.Tensor):
        output = self.averaged_output(z, index)
        data = self.data_term(output, y, operator)
        loss = data + self.alpha * self.proximity_term(output, z)
        return loss, data.detach(), output

    def _ensure_input_optimizer(self) -> torch.optim.Adam:
        if self.input_optimizer is None:
            self.inputs.requires_grad_(True)
            self.input_optimizer = adam([self.inputs], lr=self.input_lr)
            if self._pending_input_optimizer_state is not None:
                self.input_optimizer.load_state_dict(self._pending_input_optimizer_state)
                self._pending_input_optimizer_state = None
        return self.input_optimizer

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.inputs is not None:
            self.inputs.requires_grad_(True)
        return super().training_step(batch, batch_idx)

    def after_step(self, y: torch.Tensor, operator: Operator, index: torch.Tensor) -> None:
        """Step the input z with the gradients of the step the weights just took."""
        input_optimizer = self._ensure_input_optimizer()
        if self.inputs.grad is not None:
            # the loss carries a factor world_size for DDP's gradient averaging; z is not averaged
            self.inputs.grad.div_(world_size(self))
            input_optimizer.step()
        input_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.inputs.copy_(self._share_rows(self.inputs.detach(), index))

    def get_extra_state(self) -> Dict[str, Any]:
        state = super().get_extra_state()
        if state["inputs"] is not None:
            state["inputs"] = state["inputs"].detach()
        state["input_optimizer"] = None if self.input_optimizer is None else self.input_optimizer.state_dict()
        return state

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.input_optimizer = None
        self._pending_input_optimizer_state = state.get("input_optimizer")
