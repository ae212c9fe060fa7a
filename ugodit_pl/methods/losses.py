"""Per-measurement loss norms shared by every method.

``"mse"`` is the squared error averaged over the entries (the authors' natural-image code,
``nn.MSELoss``); ``"l2"`` is the unsquared Euclidean norm (the authors' MRI notebooks). Both
return one value per measurement, so a batch of B measurements sums to B independent losses.

>>> import torch
>>> residual_norm(torch.ones(2, 3, 4, 4), "mse")
tensor([1., 1.])
>>> residual_norm(torch.ones(2, 1, 2, 2), "l2")
tensor([2., 2.])
"""

from __future__ import annotations

import torch

from ugodit_pl.arguments import check_choice

LOSS_NORMS = ("mse", "l2")


def residual_norm(residual: torch.Tensor, loss_norm: str) -> torch.Tensor:
    """Norm of each sample of a (B, ...) residual, real or complex: a (B,) tensor."""
    # |r|^2 of a complex residual as re^2 + im^2 (no square root of abs())
    squared = (torch.view_as_real(residual).square().sum(-1) if residual.is_complex() else residual**2).flatten(1)
    if loss_norm == "mse":
        return squared.mean(dim=1)
    check_choice("loss_norm", loss_norm, LOSS_NORMS)
    # the small constant keeps the gradient finite at an exact fit
    return torch.sqrt(squared.sum(dim=1) + 1e-20)
