"""Network-input strategies: how the input z starts and how it is updated between steps.

Starts (``input_init``):
- ``"measurement"``: ``operator.init_input(y)`` (A^H y for MRI, the upsampled / degraded image
  for natural images);
- ``"noise"``: U(0, 0.1) noise with ``channels`` channels (vanilla DIP), drawn per row
  (``ugodit_pl.methods.draws``);
- ``"reference"``: a reference image given in the batch under ``"reference"``.

Updates (``input_update``), applied every N steps by aSeqDIP and UGoDIT:
- ``"sequential"``: z <- f(z) (detached), the papers' rule;
- ``"data_consistent"``: z <- A^H((1 - P) A f(z) + P y): the measured samples replace the
  predicted ones (the authors' MRI notebooks); needs an operator with ``data_consistent``.

>>> import torch
>>> from ugodit_pl.operators import Inpainting
>>> op = Inpainting(torch.tensor([[[[1.0, 0.0]]]]))
>>> updated_input("data_consistent", torch.tensor([[[[5.0, 7.0]]]]), op, torch.tensor([[[[2.0, 0.0]]]]))
tensor([[[[2., 7.]]]])
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ugodit_pl.arguments import check_choice
from ugodit_pl.methods.draws import NOISE_INPUT, row_random
from ugodit_pl.operators.base import Operator

INPUT_INITS = ("measurement", "noise", "reference")
INPUT_UPDATES = ("sequential", "data_consistent")


def initial_input(
    init: str,
    operator: Operator,
    y: torch.Tensor,
    *,
    channels: int,
    seed: int,
    rows: Sequence[int],
    reference: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The starting input z for the measurements of a batch (rows ``rows`` of the set), in batch order.

    A noise input of row i depends only on ``seed`` and i, so a measurement gets the same noise
    whichever process or batch it is fitted in.
    """
    check_choice("input_init", init, INPUT_INITS)
    if init == "measurement":
        return operator.init_input(y).detach()
    if init == "reference":
        if reference is None:
            raise ValueError("input_init='reference' needs the batch to carry a 'reference' image")
        return reference.detach()
    height, width = operator.init_input(y).shape[-2:]
    return row_random("uniform", 0.1, seed, NOISE_INPUT, rows, (channels, height, width), device=y.device)


def updated_input(rule: str, output: torch.Tensor, operator: Operator, y: torch.Tensor) -> torch.Tensor:
    """The next input z from the network output f(z) by the update ``rule``."""
    check_choice("input_update", rule, INPUT_UPDATES)
    with torch.no_grad():
        if rule == "sequential":
            return output.detach().clone()
        consistent = getattr(operator, "data_consistent", None)
        if consistent is None:
            raise ValueError(
                f"input_update='data_consistent' needs an operator with data_consistent(x, y); "
                f"{type(operator).__name__} has none (use 'sequential')"
            )
        return consistent(output, y).detach()
