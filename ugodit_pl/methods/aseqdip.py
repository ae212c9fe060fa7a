"""aSeqDIP (Alkhouri et al., NeurIPS 2024): the objective that UGoDIT also uses.

    loss_k = ||A f(z_k) - y||^2 + lambda ||f(z_k) - z_k||^2,     z_0 = A^H y,
    z_{k+1} = f(z_k) (detached) after every N steps, or its data-consistent version.

>>> method = ASeqDIP(num_measurements=1, network="unet", network_args={"channels": [4, 8, 8, 8]})
>>> (method.lam, method.update_every, method.input_update)
(0.4, 10, 'sequential')
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from ugodit_pl.arguments import check_choice, non_negative, whole
from ugodit_pl.methods.base import ReconstructionMethod
from ugodit_pl.methods.batches import Step
from ugodit_pl.methods.defaults import SEQUENTIAL_DEFAULTS, network_default
from ugodit_pl.methods.inputs import INPUT_UPDATES, updated_input
from ugodit_pl.methods.networks import per_measurement_networks


class SequentialInputObjective(ReconstructionMethod):
    """The aSeqDIP objective and input schedule, for any network layout (aSeqDIP and UGoDIT).

    Args:
        lam: weight lambda of ||f(z) - z||; None = ``SEQUENTIAL_DEFAULTS`` for the network (whose
            comment says which value is the authors' and why the other one changed).
        update_every: N, steps between input updates (the authors' value).
        input_update: ``"sequential"`` (z <- f(z)) or ``"data_consistent"``.
        **kwargs: the arguments of ``ReconstructionMethod``; ``lr=None`` takes
            ``SEQUENTIAL_DEFAULTS`` for the network.
    """

    def __init__(
        self,
        *,
        lam: Optional[float] = None,
        update_every: int = 10,
        input_update: str = "sequential",
        **kwargs: Any,
    ) -> None:
        defaults = network_default(SEQUENTIAL_DEFAULTS, kwargs.get("network", "unet"))
        if kwargs.get("lr") is None:
            kwargs["lr"] = defaults["lr"]
        super().__init__(**kwargs)
        self.lam = non_negative("lam", defaults["lam"] if lam is None else lam)
        self.update_every = whole("update_every", update_every, minimum=1)
        self.input_update = check_choice("input_update", input_update, INPUT_UPDATES)

    @property
    def schedule_period(self) -> int:
        return self.update_every

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        """One step: ||A f(z_k) - y||^2 + lambda ||f(z_k) - z_k||^2, after moving z to f(z) every N steps."""
        step = self.begin_step(batch)
        z = self.scheduled_input(step)
        output = self.forward_rows(z, step.rows)
        data = self.data_term(output, step)
        loss = data + self.lam * self.proximity_term(output, z) if self.lam > 0 else data
        return self.end_step(step, loss, data, output)

    def scheduled_input(self, step: Step) -> torch.Tensor:
        """z_k of the step's rows; a row that has taken a multiple of N steps first moves to f(z) (detached)."""
        state = self.fit_state
        due = [k for k, count in enumerate(step.counts) if count > 0 and count % self.update_every == 0]
        if due:
            position = torch.tensor(due, device=step.rows.device)
            rows = step.rows[position]
            everyone = len(due) == len(step.counts)
            operator = step.operator if everyone else step.operator.select(position)
            with torch.no_grad():
                output = self.forward_rows(state.inputs[rows], rows)
                state.write("inputs", rows, updated_input(self.input_update, output, operator, step.y[position]))
            state.share("inputs")
        return state.inputs[step.rows]


class ASeqDIP(SequentialInputObjective):
    """aSeqDIP: one network per measurement, input z_0 = A^H y, sequential input updates.

    Example::

        method = ASeqDIP(network="skip", network_args={"in_channels": 3, "out_channels": 3}, lr=0.01)
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nets = per_measurement_networks(
            self.network_name, self.network_args, self.num_measurements, self.seed, self.network_init, self.residual,
            self.network_seeds,
        )
        self.save_hyperparameters()

    def network_output(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.nets(z, indices=rows)
