"""Self-validation on held-out samples: the measurements a fit does not see, and its error on them.

A fraction of the sampled k-space locations outside the calibration region (MRI), or of the
observed pixels (inpainting, and denoising as inpainting with nothing missing), is set aside before
the fit (``ReconstructionMethod(holdout_fraction=...)``); the network is fitted to the rest, and
the residual of its output on the held-out samples, relative to their energy,

    e = ||H (A x - y)||^2 / ||H y||^2,

tells, without ground truth, when the fit starts to reproduce noise instead of the image
(``ugodit_pl.callbacks.HeldOutEarlyStopping`` stops there and keeps the best-validated output).

What is held out (``pattern``): whole lines (``"lines"``, for a 1-D pattern where every sampled
column, or row, is fully sampled: predicting a held-out line is the same task as predicting an
unsampled one), or single sampled locations (``"points"``, any mask); ``"auto"`` (default) takes lines
where the mask is a 1-D pattern and points otherwise. Points inside sampled lines are the wrong
test for a 1-D pattern: on the simulated EPI slice (96 x 72, 4x, aSeqDIP) their error kept falling for
600 steps after the PSNR had peaked (kept image 0.98 dB below the best), where held-out lines
stopped within 0.1 dB of it. The calibration region is never held out (the coil maps and the low frequencies come from it).
Pixels are held out one by one (``"points"``; there is no calibration region). The choice depends only on the mask,
``seed`` and the row, so it is the same on every process and after a resume.

>>> import torch
>>> mask = torch.zeros(16, 16); mask[:, 6:10] = 1; mask[:, ::2] = 1
>>> held = holdout_mask(mask, 0.4, seed=0, row=0, pattern="lines")
>>> bool((held <= mask).all()), bool(held[:, 6:10].any()), int(held[0].sum()), int(held[:, 0].sum()) in (0, 16)
(True, False, 2, True)
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ugodit_pl.arguments import check_choice
from ugodit_pl.methods.draws import row_seed
from ugodit_pl.operators.base import Operator
from ugodit_pl.operators.coil_maps import find_calibration_region
from ugodit_pl.operators.inpainting import Inpainting

HOLDOUT = "holdout"  # the purpose of the draws (``draws.row_seed``)
PATTERNS = ("auto", "lines", "points")
MIN_HELD_OUT_LINES = 2
MIN_HELD_OUT_POINTS = 32


def check_holdout_fraction(fraction: float) -> float:
    """0 (no hold-out) or a fraction in (0, 0.5): more than half would leave too little to fit."""
    value = float(fraction)
    if value != 0.0 and not 0.0 < value < 0.5:
        raise ValueError(f"holdout_fraction must be 0 (off) or in (0, 0.5), got {fraction!r}")
    return value


def _line_axis(sampled: torch.Tensor) -> Optional[int]:
    """1 if the mask samples whole columns, 0 if whole rows, None for a 2-D pattern."""
    if bool((sampled.all(dim=0) | ~sampled.any(dim=0)).all()):
        return 1
    if bool((sampled.all(dim=1) | ~sampled.any(dim=1)).all()):
        return 0
    return None


def holdout_mask(mask: torch.Tensor, fraction: float, seed: int, row: int, name: str = "",
                 pattern: str = "auto", calibration: bool = True) -> torch.Tensor:
    """(H, W) float: 1 at the held-out locations of ``mask`` (H, W), a ``fraction`` of the sampled ones
    outside the calibration region (``pattern``: single locations, or whole lines of a 1-D pattern;
    ``calibration=False``: of all the sampled ones, for pixels).

    Raises a ValueError naming ``name`` when fewer than 2 lines (32 locations) would be held out.
    """
    sampled = mask.detach().cpu() > 0
    outside = sampled.clone()
    if calibration:
        rows, cols = find_calibration_region(sampled)
        outside[rows, cols] = False
    generator = torch.Generator().manual_seed(row_seed(seed, HOLDOUT, row, 0))
    held = torch.zeros_like(sampled)
    where = f"{name}: " if name else ""
    check_choice("holdout_pattern", pattern, PATTERNS)
    axis = _line_axis(sampled)
    if not calibration and pattern == "lines":
        raise ValueError(f"{where}holdout_pattern='lines' holds out lines of k-space; pixels are held out one by one: "
                         f"use 'points' or 'auto'")
    if pattern == "auto":
        pattern = "points" if axis is None or not calibration else "lines"
    if pattern == "lines":
        if axis is None:
            raise ValueError(f"{where}holdout_pattern='lines' needs a mask of whole sampled lines (a 1-D pattern); "
                             f"this one is 2-D: use 'points'")
        lines = torch.nonzero(outside.any(dim=1 - axis)).flatten()
        count = int(round(fraction * len(lines)))
        if count < MIN_HELD_OUT_LINES:
            raise ValueError(
                f"{where}holdout_fraction={fraction} holds out {count} of the {len(lines)} sampled lines outside the "
                f"calibration region; at least {MIN_HELD_OUT_LINES} are needed (raise holdout_fraction, hold out "
                f"single locations with holdout_pattern='points', or fit without held-out validation)"
            )
        chosen = lines[torch.randperm(len(lines), generator=generator)[:count]]
        if axis == 1:
            held[:, chosen] = outside[:, chosen]
        else:
            held[chosen, :] = outside[chosen, :]
    else:
        points = torch.nonzero(outside.flatten()).flatten()
        count = int(round(fraction * len(points)))
        if count < MIN_HELD_OUT_POINTS:
            raise ValueError(
                f"{where}holdout_fraction={fraction} holds out {count} of the {len(points)} sampled locations"
                f"{' outside the calibration region' if calibration else ''}; at least {MIN_HELD_OUT_POINTS} are needed"
            )
        held.view(-1)[points[torch.randperm(len(points), generator=generator)[:count]]] = True
    return held.to(torch.float32).to(mask.device)


def split_measurement(
    operator: Operator, y: torch.Tensor, fraction: float, seed: int, rows: Sequence[int],
    names: Optional[Sequence[Optional[str]]] = None, pattern: str = "auto",
) -> Tuple[Operator, torch.Tensor, torch.Tensor]:
    """(the operator of the fitted samples, y on them, the held-out mask (B, 1, H, W)) of a batch of MRI
    or inpainting measurements (rows ``rows`` of the set; pixels are held out from every channel).

    >>> from ugodit_pl.operators import SingleCoilMRI
    >>> mask = torch.zeros(16, 16); mask[:, 6:10] = 1; mask[:, ::2] = 1
    >>> op = SingleCoilMRI(mask)
    >>> y = op(torch.randn(1, 2, 16, 16))
    >>> fit_op, fit_y, held = split_measurement(op, y, 0.3, seed=0, rows=[0], pattern="lines")
    >>> bool(torch.equal(fit_op.mask[0] + held[0, 0], op.mask[0])), bool((fit_y * held).abs().sum() == 0)
    (True, True)
    """
    masks = getattr(operator, "mask", None)
    if masks is None or not hasattr(operator, "with_mask"):
        raise ValueError(f"holdout_fraction needs measurements with a sampling mask (MRI, inpainting, denoising); "
                         f"{type(operator).__name__} has none")
    pixels = isinstance(operator, Inpainting)
    if pixels and masks.shape[1] != 1:
        raise ValueError(f"holdout_fraction holds out pixels from every channel: it needs one mask for all channels, "
                         f"got a mask of shape {tuple(masks.shape)}")
    plane = masks[:, 0] if pixels else masks  # (B|1, H, W)
    names = list(names) if names is not None else [None] * len(rows)
    held = torch.stack([
        holdout_mask(plane[k if plane.shape[0] > 1 else 0], fraction, seed, int(row), names[k] or f"row {row}", pattern,
                     calibration=not pixels)
        for k, row in enumerate(rows)
    ])
    fit_operator = operator.with_mask((plane * (1.0 - held)).unsqueeze(1) if pixels else masks * (1.0 - held))
    held = held.unsqueeze(1)
    return fit_operator, y * (1.0 - held).to(y.real.dtype if y.is_complex() else y.dtype), held


def holdout_error(operator: Operator, x: torch.Tensor, y: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
    """(B,) ||H (A x - y)||^2 / ||H y||^2 on the held-out samples ``held`` (B, 1, H, W); ``operator`` and
    ``y`` are those of all measured samples."""
    with torch.no_grad():
        residual = _real((operator(x) - y) * held)
        energy = _real(y * held).square().flatten(1).sum(1)
        return residual.square().flatten(1).sum(1) / energy.clamp_min(torch.finfo(energy.dtype).tiny)


def _real(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t
