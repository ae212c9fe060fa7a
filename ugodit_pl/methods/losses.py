"""Per-measurement loss norms shared by every method, and the sparsity terms (total variation, on by default
for the MRI U-Net; wavelet L1, an option).

``"mse"`` is the squared error averaged over the entries (the authors' natural-image code,
``nn.MSELoss``); ``"l2"`` is the unsquared Euclidean norm (the authors' MRI notebooks). Both
return one value per measurement, so a batch of B measurements sums to B independent losses.

>>> import torch
>>> residual_norm(torch.ones(2, 3, 4, 4), "mse")
tensor([1., 1.])
>>> residual_norm(torch.ones(2, 1, 2, 2), "l2")
tensor([2., 2.])
>>> bool((total_variation(torch.ones(2, 2, 8, 8)) < 1e-5).all())
True
>>> wavelet_l1(torch.zeros(2, 2, 16, 16)).shape
torch.Size([2])
"""

from __future__ import annotations

import torch

from ugodit_pl.arguments import check_choice
from ugodit_pl.methods.wavelets import wavelet_coefficients

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


#: Keeps the gradient of |D x| and |W x| finite where they are zero.
SPARSITY_EPSILON = 1e-12


def _channel_modulus(values: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The Euclidean norm over the channels (a complex MRI image's modulus), kept differentiable at zero."""
    return (values.square().sum(dim=dim) + SPARSITY_EPSILON).sqrt()


def total_variation(output: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of each (B, C, H, W) output, per pixel: a (B,) tensor.

    mean over pixels of |D_h x| + |D_w x|, where |.| is the Euclidean norm over the channels (the
    modulus of a complex MRI image stored as 2 channels): in the per-pixel units of the ``"mse"`` data
    term summed over coils, so that ``tv_weight`` compares with L1 compressed sensing's 2 lambda.

    >>> import torch
    >>> step = torch.zeros(1, 2, 4, 4); step[..., 2:] = 1.0
    >>> round(float(total_variation(step)), 4)  # a jump of sqrt(2) on 4 of the 16 pixel pairs
    0.3536
    """
    def modulus(difference: torch.Tensor) -> torch.Tensor:
        return _channel_modulus(difference).flatten(1).sum(dim=1)

    pixels = output.shape[-2] * output.shape[-1]
    return (modulus(output.diff(dim=-2)) + modulus(output.diff(dim=-1))) / pixels


def wavelet_l1(output: torch.Tensor) -> torch.Tensor:
    """L1 norm of the orthonormal db4 wavelet coefficients of each (B, C, H, W) output, per pixel: a (B,) tensor.

    sum over every coefficient (all levels, the coarsest approximation included, as in sigpy's
    L1-wavelet) of its norm over the channels (the modulus of a complex coefficient), divided by H W: in
    the units of the ``"mse"`` data term summed over coils, so that ``wavelet_weight`` is L1 compressed
    sensing's 2 lambda (``ugodit_pl.methods.wavelets``).

    >>> import torch
    >>> flat = torch.ones(1, 1, 16, 16)  # 1 level at 16 x 16: 64 approximation coefficients of 2, no detail
    >>> round(float(wavelet_l1(flat)), 4)  # 128 over 256 pixels
    0.5
    """
    pixels = output.shape[-2] * output.shape[-1]
    return sum(_channel_modulus(band).flatten(1).sum(dim=1) for band in wavelet_coefficients(output)) / pixels
