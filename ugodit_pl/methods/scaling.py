"""Measurement scale normalisation.

MRI k-space arrives in arbitrary scanner units. Each measurement is divided by a scale s chosen
from the measurement alone (never the ground truth) so that the ``percentile`` of |A^H y| is 1;
the method fits the normalised problem and multiplies its outputs by s. One set of
hyper-parameters then works across files.

>>> import torch
>>> from ugodit_pl.operators import SingleCoilMRI
>>> op = SingleCoilMRI(torch.ones(8, 8))
>>> y = 1000 * op(torch.randn(1, 2, 8, 8))
>>> s = measurement_scale(op, y, percentile=100.0)
>>> round(float(magnitude(op.adjoint(y / s.view(-1, 1, 1, 1))).amax()), 4)
1.0
"""

from __future__ import annotations

import torch

from ugodit_pl.complex import magnitude
from ugodit_pl.operators.base import Operator


def measurement_scale(operator: Operator, y: torch.Tensor, percentile: float = 99.0) -> torch.Tensor:
    """Per-measurement scale (B,): the ``percentile`` of the magnitude of ``operator.init_input(y)``.

    For 2-channel complex images the magnitude is taken pixel-wise; for real images the
    absolute value. A measurement whose scale is zero (all-zero data) raises.
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"normalize_percentile must be in (0, 100], got {percentile}")
    with torch.no_grad():
        image = operator.init_input(y)
        mag = magnitude(image) if image.shape[1] == 2 else image.abs()
        flat = in_precision(mag.flatten(1), torch.float32)  # quantile needs float32 or float64
        scale = torch.quantile(flat, percentile / 100.0, dim=1)
    if bool((scale <= 0).any()) or not bool(torch.isfinite(scale).all()):
        raise ValueError(
            "cannot normalise a measurement whose adjoint image is zero or not finite "
            f"(scales {scale.tolist()}): check the k-space and the mask"
        )
    return scale


def in_precision(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``y`` in at least the precision of the fit's ``dtype``, never less than its own.

    A float64 fit computes in float64 from its measurements on: complex64 k-space becomes complex128
    (exactly), so that nothing in the fit depends on a CPU's float32 FFT or reductions.

    >>> in_precision(torch.zeros(2, dtype=torch.complex64), torch.float64).dtype
    torch.complex128
    >>> in_precision(torch.zeros(2, dtype=torch.complex64), torch.bfloat16).dtype
    torch.complex64
    """
    return y.to(torch.promote_types(y.dtype, dtype))


def apply_scale(y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Divide each measurement of a (B, ...) batch by its scale, in the measurement's precision."""
    real = y.real.dtype if y.is_complex() else y.dtype
    return y / scale.view(-1, *([1] * (y.ndim - 1))).to(real)


def undo_scale(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Multiply each image of a (B, ...) batch by its scale (back to the measurement's units)."""
    return x * scale.view(-1, *([1] * (x.ndim - 1)))
