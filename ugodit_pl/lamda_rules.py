"""Choosing the lambda of a compressed-sensing reconstruction without ground truth.

A user with one undersampled scan has no target to tune lambda on; two rules any user can run:

- ``"cv"``, held-out k-space cross-validation: a fraction of the sampled k-space outside the
  calibration region is set aside (:func:`ugodit_pl.methods.holdout.holdout_mask`; whole lines of a
  column mask, or single sampled locations where too few lines lie outside the calibration region:
  :func:`cross_validation_plan`); each lambda reconstructs from the rest, and the one whose image predicts the
  held-out samples best, ||H (F S x - y)||^2 / ||H y||^2, averaged over ``folds`` random hold-outs,
  reconstructs from every sample. A small matrix has few lines to hold out (96 x 72 at 4x: 10
  outside the centre), so one split is a noisy judge; three are the default.
- ``"discrepancy"``, Morozov's discrepancy principle as a model-error-tolerant variant: the largest
  lambda whose residual on the sampled k-space, ||P (F S x - y)||^2, exceeds the residual of the
  least regularised fit of the grid by at most the noise that fit absorbs, sigma^2 times the number
  of image values the model determines (pixels where a coil map is not zero). sigma^2 is estimated
  from the k-space corners (:func:`noise_variance`). The textbook rule (residual <= sampled values *
  sigma^2) never triggers with estimated maps: on the real brain at 96 x 72 the residual stays at
  2x that level for every lambda, because ESPIRiT maps do not explain every coil's data.
- ``"auto"``: ``"cv"`` where the mask leaves enough sampled k-space outside the calibration region to
  hold out (``holdout_fraction`` of its lines, at least 2; else single locations, at least 32, the
  fraction raised up to 0.5 to reach them: an 8x equispaced mask of 72 columns has one or two lines
  outside its centre), else ``"discrepancy"``. On the real-MRI panel at 8x, locations held out picked
  lambdas within 0.04 dB of the oracle where the discrepancy principle was 1.2 dB below it
  (decision 11 of benchmarks/results/decisions.md).
  Lines are also replaced by single locations where no lambda predicts the held-out lines better than
  zero (every error >= 1): on the real brain at 230 x 180, 8x equispaced, held-out lines picked the
  largest lambda, 2.9 dB below the oracle, and locations the oracle's (decision 13).
  Held-out errors within ``CV_TIE`` (1 %) of the smallest are ties that the held-out samples cannot
  break; the least lambda among them is chosen, the least regularisation the data allow
  (:func:`least_of_ties`). On nibabel's EPI slice at 128 x 96, 4x, lambdas 3e-3, 1e-2 and 3e-2 scored
  0.759, 0.761 and 0.759 for L1-wavelet: the smallest error picked 3e-2, 1.57 dB below the oracle's
  lambda, the least of the ties 3e-3, 0.13 dB below it; on the 27 other problems measured (the panel
  at every size, 16 volume slices) no L1 choice changes. Total variation's errors tie more often: with
  the solver run to its minimiser (decision 23), the largest of the ties would give it +0.02 to +0.62 dB
  on three of the 12 panel problems and -0.16 dB on the DWI volume (decision 27 of
  benchmarks/results/decisions.md), so the least of the ties serves both methods.

The grids (``LAMDA_GRID``) are relative to the k-space scaled so that the zero-filled coil-combined
image has max 1, as every ``lamda`` of :mod:`ugodit_pl.classical`.

>>> import torch
>>> from ugodit_pl.complex import fft2c
>>> maps = torch.ones(1, 32, 32, dtype=torch.complex64)
>>> mask = torch.zeros(32, 32); mask[:, 12:20] = 1; mask[:, ::2] = 1
>>> truth = torch.randn(32, 32, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
>>> image, lamda, scores, held_out = automatic_lamda(fft2c(truth)[None] * mask, mask, maps,
...                                                  method="total_variation", rule="cv", holdout_fraction=0.3,
...                                                  folds=2, max_iter=5)
>>> image.shape, lamda in scores, held_out
(torch.Size([32, 32]), True, ('lines', 0.3))
"""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import torch

from ugodit_pl import classical
from ugodit_pl.arguments import check_choice
from ugodit_pl.complex import fft2c

__all__ = ["AutomaticLamda", "CV_TIE", "LAMDA_GRID", "RECONSTRUCTIONS", "RULES", "automatic_lamda",
           "cross_validation_plan", "cross_validation_possible", "least_of_ties", "noise_variance"]

#: The lambdas each rule chooses from.
LAMDA_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
#: The regularised reconstructions a rule can tune: name -> function(kspace, mask, maps, lamda=, max_iter=).
RECONSTRUCTIONS: Dict[str, Callable[..., torch.Tensor]] = {
    "l1_wavelet": classical.l1_wavelet,
    "total_variation": classical.total_variation,
}
RULES = ("auto", "cv", "discrepancy")
#: The largest fraction of the sampled locations outside the calibration region that "cv" holds out.
MAX_POINTS_FRACTION = 0.5
#: Held-out errors within this fraction of the smallest are ties; "cv" takes the least lambda among them.
CV_TIE = 0.01
#: The side of each corner patch of k-space that :func:`noise_variance` reads, as a fraction of the matrix.
CORNER_FRACTION = 1 / 16


def noise_variance(kspace: torch.Tensor, mask: torch.Tensor, corner_fraction: float = CORNER_FRACTION) -> float:
    """The noise variance of one complex k-space sample, E|n|^2, from the corners of k-space.

    For each corner, the sampled locations nearest to it (``corner_fraction`` squared of the sampled
    ones, at least 16: a corner patch of that area in a fully sampled k-space; any mask has them) give
    the mean |k|^2 over all coils; signal only adds to it, so the smallest of the four is taken.
    ``kspace`` (coils, H, W), ``mask`` broadcastable to (H, W).

    >>> import torch
    >>> noise = torch.randn(4, 256, 256, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    >>> 0.9 < noise_variance(noise, torch.ones(256, 256)) <= 1.0  # the least of four estimates: a little low
    True
    """
    k = classical._kspace(kspace)
    sampled = torch.nonzero(classical._mask(mask, k) > 0)
    height, width = k.shape[-2:]
    count = min(len(sampled), max(16, round(len(sampled) * corner_fraction ** 2)))
    position = sampled.to(torch.float64) / torch.tensor([max(height - 1, 1), max(width - 1, 1)], dtype=torch.float64)
    means = []
    for corner in ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)):
        nearest = (position - torch.tensor(corner, dtype=torch.float64)).norm(dim=1).argsort()[:count]
        rows, cols = sampled[nearest, 0], sampled[nearest, 1]
        means.append(float(k[:, rows, cols].abs().pow(2).mean()))
    return min(means)


def _cross_validated(reconstruct: Callable[..., torch.Tensor], k: torch.Tensor, m: torch.Tensor, s: torch.Tensor,
                     lamdas: Sequence[float], plan: Tuple[str, float], folds: int, seed: int, method: str,
                     **args) -> Dict[float, float]:
    """{lambda: mean over ``folds`` hold-outs (``plan``: pattern, fraction) of ||H (F S x - y)||^2 / ||H y||^2,
    x fitted to the other samples}."""
    from ugodit_pl.methods.holdout import holdout_mask

    pattern, fraction = plan
    errors = {float(lamda): 0.0 for lamda in lamdas}
    for fold in range(folds):
        held = holdout_mask(m.expand(k.shape[-2:]), fraction, seed, row=fold, name=f"{method} cv", pattern=pattern)
        kept = m * (1 - held)
        energy = float((k * held).abs().pow(2).sum())
        if energy == 0.0:
            raise ValueError(f"{method} cv: the held-out k-space is zero; nothing to validate lambda on")
        for lamda in errors:
            x = reconstruct(k * kept, kept, s, lamda=lamda, **args).to(k.device)
            errors[lamda] += float(((fft2c(s * x) - k) * held).abs().pow(2).sum()) / energy / folds
    return errors


def least_of_ties(errors: Dict[float, float], tie: float = CV_TIE) -> float:
    """The least lambda whose held-out error is within ``tie`` (a fraction) of the smallest error.

    >>> least_of_ties({1e-4: 1.698, 1e-3: 0.87, 3e-3: 0.759, 1e-2: 0.761, 3e-2: 0.759})
    0.003
    >>> least_of_ties({1e-3: 0.52, 3e-3: 0.54})
    0.001
    """
    if not errors:
        raise ValueError("least_of_ties needs at least one lambda's held-out error")
    if tie < 0:
        raise ValueError(f"tie must be a fraction >= 0, got {tie!r}")
    smallest = min(errors.values())
    return min(lamda for lamda, error in errors.items() if error <= smallest * (1.0 + tie))


def _discrepancies(reconstruct: Callable[..., torch.Tensor], k: torch.Tensor, m: torch.Tensor, s: torch.Tensor,
                   lamdas: Sequence[float], **args) -> Tuple[Dict[float, float], Dict[float, torch.Tensor]]:
    """{lambda: (||P (F S x - y)||^2 - that of the smallest lambda) / (sigma^2 * image values)} and the images."""
    values = float((s.abs().pow(2).sum(dim=0) > 0).sum())
    level = noise_variance(k, m) * max(values, 1.0)
    residuals, images = {}, {}
    for lamda in sorted(float(lamda) for lamda in lamdas):
        x = reconstruct(k, m, s, lamda=lamda, **args).to(k.device)
        residuals[lamda] = float(((fft2c(s * x) - k) * m).abs().pow(2).sum())
        images[lamda] = x
    floor = residuals[min(residuals)]
    return {lamda: (residual - floor) / level for lamda, residual in residuals.items()}, images


def cross_validation_plan(mask: classical.ArrayLike, holdout_fraction: float = 0.2,
                          patterns: Sequence[str] = ("lines", "points")) -> Optional[Tuple[str, float]]:
    """What ``"cv"`` holds out of ``mask`` (H, W): ``("lines", holdout_fraction)`` where the sampled lines outside
    the calibration region allow it, else ``("points", fraction)`` with the least of ``holdout_fraction``,
    0.3, 0.4 and 0.5 that holds out enough single locations; None where neither does (of ``patterns``).

    >>> import torch
    >>> mask = torch.zeros(32, 32); mask[:, 12:20] = 1
    >>> cross_validation_plan(mask), cross_validation_plan(mask.index_fill(1, torch.arange(0, 32, 2), 1))
    (None, ('lines', 0.2))
    >>> cross_validation_plan(mask.index_fill(1, torch.tensor([2, 28]), 1))  # 64 locations outside, 2 lines
    ('points', 0.5)
    """
    from ugodit_pl.methods.holdout import holdout_mask

    for pattern in patterns:
        check_choice("patterns", pattern, ("lines", "points"))
    m = torch.as_tensor(mask)
    m = m.expand(m.shape[-2:])
    fractions = [float(holdout_fraction)] + [f for f in (0.3, 0.4, MAX_POINTS_FRACTION) if f > holdout_fraction]
    for pattern, choices in (("lines", fractions[:1]), ("points", fractions)):
        if pattern not in patterns:
            continue
        for fraction in choices:
            try:
                holdout_mask(m, fraction, seed=0, row=0, pattern=pattern)
            except ValueError:
                continue
            return pattern, fraction
    return None


def cross_validation_possible(mask: classical.ArrayLike, holdout_fraction: float = 0.2) -> bool:
    """Whether ``mask`` leaves enough sampled k-space outside its calibration region to hold out
    (:func:`cross_validation_plan`).

    >>> import torch
    >>> mask = torch.zeros(32, 32); mask[:, 12:20] = 1
    >>> cross_validation_possible(mask), cross_validation_possible(mask.index_fill(1, torch.arange(0, 32, 2), 1))
    (False, True)
    """
    return cross_validation_plan(mask, holdout_fraction) is not None


class AutomaticLamda(NamedTuple):
    """What :func:`automatic_lamda` chose."""

    image: torch.Tensor  #: (H, W) complex64, the reconstruction at ``lamda``
    lamda: float
    scores: Dict[float, float]  #: per lambda: the held-out error ("cv") or the residual / noise-level ratio
    held_out: Optional[Tuple[str, float]]  #: what cross-validation held out (pattern, fraction); None: discrepancy


def automatic_lamda(kspace: classical.ArrayLike, mask: classical.ArrayLike, coil_maps: classical.ArrayLike, *,
                    method: str = "l1_wavelet", rule: str = "cv", lamdas: Sequence[float] = LAMDA_GRID,
                    holdout_fraction: float = 0.2, folds: int = 3, seed: int = 0,
                    max_iter: Optional[int] = None) -> AutomaticLamda:
    """``method`` (``RECONSTRUCTIONS``) at the lambda of ``lamdas`` that ``rule`` (``RULES``) picks.

    Returns :class:`AutomaticLamda` ``(image, lamda, scores, held_out)``. Where held-out lines are
    predicted no better than by zero at any lambda (every error >= 1: an equispaced pattern, whose
    missing line no reconstruction can fill), ``"cv"`` judges on single sampled locations instead. Of
    lambdas whose held-out errors tie (within ``CV_TIE`` of the smallest), ``"cv"`` takes the least.
    """
    check_choice("method", method, tuple(RECONSTRUCTIONS))
    check_choice("rule", rule, RULES)
    if not lamdas or any(float(lamda) < 0 for lamda in lamdas):
        raise ValueError(f"lamdas must be a non-empty sequence of values >= 0, got {lamdas!r}")
    if int(folds) < 1:
        raise ValueError(f"folds must be >= 1, got {folds!r}")
    k = classical._kspace(kspace)
    m = classical._mask(mask, k)
    s = classical._maps(coil_maps, k)
    reconstruct = RECONSTRUCTIONS[method]
    args = {} if max_iter is None else {"max_iter": int(max_iter)}
    plan = cross_validation_plan(m, holdout_fraction) if rule != "discrepancy" else None
    if rule == "auto":
        rule = "cv" if plan is not None else "discrepancy"
    if rule == "cv":  # without a plan, holding out lines raises the error that says why
        plan = plan or ("lines", holdout_fraction)
        scores = _cross_validated(reconstruct, k, m, s, lamdas, plan, int(folds), seed, method, **args)
        points = cross_validation_plan(m, holdout_fraction, patterns=("points",)) if plan[0] == "lines" else None
        if points is not None and min(scores.values()) >= 1.0:
            plan, scores = points, _cross_validated(reconstruct, k, m, s, lamdas, points, int(folds), seed, method, **args)
        best = least_of_ties(scores)
        return AutomaticLamda(reconstruct(k, m, s, lamda=best, **args), best, scores, plan)
    scores, images = _discrepancies(reconstruct, k, m, s, lamdas, **args)
    within = [lamda for lamda, ratio in scores.items() if ratio <= 1.0]
    best = max(within) if within else min(scores, key=scores.get)
    return AutomaticLamda(images[best], best, scores, None)
