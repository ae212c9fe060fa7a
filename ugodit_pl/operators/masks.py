"""Cartesian k-space sampling masks: fastMRI-style 1-D column masks, 2-D Poisson disc, masks from files.

Every generated mask reaches the acceleration asked for (H*W / number of sampled points) within 5%:
the column masks pick an exact number of columns instead of fastMRI's per-column coin flips.
The k-space centre is at index ``n // 2`` of each axis (the centred-FFT convention of
:mod:`ugodit_pl.complex`).

>>> mask = make_mask("random", (64, 40), acceleration=4, center_fraction=0.1, seed=0)
>>> mask.shape, mask.dtype, round(mask.numel() / mask.sum().item(), 2)
(torch.Size([64, 40]), torch.bool, 4.0)
>>> bool(mask[:, 18:22].all())  # the fully sampled centre
True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ugodit_pl.arguments import check_choice

MASK_KINDS = ("random", "equispaced", "poisson", "file")
ACCELERATION_TOLERANCE = 0.05  # relative


def make_mask(
    kind: str,
    shape: Sequence[int],
    acceleration: float = 4.0,
    center_fraction: float = 0.08,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    *,
    dataset: str = "mask",
    crop_corner: bool = True,
) -> torch.Tensor:
    """A boolean sampling mask of ``shape`` = (H, W).

    Args:
        kind: ``"random"`` (fully sampled centre of ``round(W * center_fraction)`` columns plus
            random other columns), ``"equispaced"`` (the same centre plus regularly spaced
            columns), ``"poisson"`` (2-D variable-density Poisson disc from ``sigpy.mri.poisson``
            with a fully sampled square of side ``min(H, W) * center_fraction`` rounded to an even
            number, so that it is centred on the k-space centre) or
            ``"file"`` (read from ``path``).
        shape: (H, W); the columns are the last dimension W.
        acceleration: H*W / number of sampled points, >= 1 (ignored for ``"file"``).
        center_fraction: fraction of the k-space width (``"poisson"``: of min(H, W)) that is
            fully sampled, in (0, 1) (ignored for ``"file"``).
        seed: seed of the random choices; the same seed gives the same mask.
        path: an ``.npy`` file or an HDF5 file (``.h5``/``.hdf5``) with a ``dataset`` of shape
            (H, W) or (W,) (a 1-D column mask is broadcast over the rows).
        dataset: name of the HDF5 dataset holding the mask.
        crop_corner: ``"poisson"`` only: leave the k-space corners outside the inscribed ellipse
            unsampled (sigpy's default).

    >>> m = make_mask("equispaced", (16, 32), acceleration=4, center_fraction=0.125, seed=0)
    >>> m[0].nonzero().flatten().tolist()  # the centre 14..17 and every 7th other column
    [4, 11, 14, 15, 16, 17, 22, 29]
    """
    check_choice("kind", kind, MASK_KINDS)
    height, width = _check_shape(shape)
    if kind == "file":
        if path is None:
            raise ValueError("kind='file' needs path= (an .npy or HDF5 file with a mask)")
        return _mask_from_file(Path(path), (height, width), dataset)
    acceleration = float(acceleration)
    center_fraction = float(center_fraction)
    if not acceleration >= 1.0:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}")
    if not 0.0 < center_fraction < 1.0:
        raise ValueError(f"center_fraction must lie in (0, 1), got {center_fraction}")
    if kind == "poisson":
        mask = _poisson_mask((height, width), acceleration, center_fraction, seed, crop_corner)
    else:
        columns = _column_mask(kind, width, acceleration, center_fraction, seed)
        mask = np.broadcast_to(columns, (height, width))
    _check_acceleration(mask, acceleration, kind, (height, width))
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))


def center_slice(n: int, num_center: int) -> slice:
    """The ``num_center`` fully sampled indices of an axis of length ``n`` around its centre ``n // 2``.

    >>> center_slice(180, 7), center_slice(180, 14)
    (slice(87, 94, None), slice(83, 97, None))
    """
    start = (n - num_center + 1) // 2
    return slice(start, start + num_center)


def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (H, W), got {shape!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"shape must be (H, W) with positive sizes, got {tuple(shape)}")
    return height, width


def _check_acceleration(mask: np.ndarray, acceleration: float, kind: str, shape: tuple[int, int]) -> None:
    sampled = int(np.count_nonzero(mask))
    obtained = mask.size / max(sampled, 1)
    if abs(obtained - acceleration) > ACCELERATION_TOLERANCE * acceleration:
        raise ValueError(
            f"a {kind!r} mask of shape {shape} cannot reach acceleration={acceleration} within "
            f"{ACCELERATION_TOLERANCE:.0%} (got {obtained:.3f}); use a larger shape or another acceleration"
        )


def _column_mask(kind: str, width: int, acceleration: float, center_fraction: float, seed: int) -> np.ndarray:
    """A 1-D (W,) mask with exactly ``round(W / acceleration)`` columns, the centre ones included."""
    num_center = max(1, round(width * center_fraction))
    num_total = max(1, round(width / acceleration))
    if num_center > num_total:
        raise ValueError(
            f"center_fraction={center_fraction} samples {num_center} centre columns, more than the "
            f"{num_total} columns that acceleration={acceleration} allows for width {width}"
        )
    columns = np.zeros(width, dtype=bool)
    columns[center_slice(width, num_center)] = True
    others = np.flatnonzero(~columns)
    num_others = num_total - num_center
    if num_others == 0:
        return columns
    rng = np.random.default_rng(seed)
    if kind == "random":
        chosen = rng.choice(others, size=num_others, replace=False)
    else:
        # Equispaced over the non-centre columns, with a random offset within one spacing.
        spacing = len(others) / num_others
        offset = rng.uniform(0.0, spacing)
        chosen = others[np.floor(offset + spacing * np.arange(num_others)).astype(int)]
    columns[chosen] = True
    return columns


def _poisson_mask(
    shape: tuple[int, int], acceleration: float, center_fraction: float, seed: int, crop_corner: bool
) -> np.ndarray:
    if acceleration == 1.0:
        return np.ones(shape, dtype=bool)
    # An even side: sigpy places the square at int(n/2 - side/2), which is centred on n // 2 only then.
    side = max(2, 2 * round(min(shape) * center_fraction / 2))
    if side * side > shape[0] * shape[1] / acceleration:
        raise ValueError(
            f"center_fraction={center_fraction} gives a {side}x{side} calibration square, more samples "
            f"than acceleration={acceleration} allows for shape {shape}"
        )
    from sigpy.mri import poisson

    # sigpy's tolerance is absolute; ask for a tighter one than our 5% relative check.
    tolerance = min(0.1, 0.04 * acceleration)
    try:
        mask = poisson(
            shape, acceleration, calib=(side, side), seed=int(seed), crop_corner=crop_corner, tol=tolerance
        )
    except ValueError as error:
        raise ValueError(
            f"sigpy.mri.poisson could not reach acceleration={acceleration} for shape {shape} "
            f"(center_fraction={center_fraction}): {error}"
        ) from None
    return np.abs(mask) > 0.5


def _mask_from_file(path: Path, shape: tuple[int, int], dataset: str) -> torch.Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"mask file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as file:
            if dataset not in file:
                raise KeyError(
                    f"HDF5 file {str(path)!r} has no {dataset!r} dataset (it has {sorted(file.keys())})"
                )
            array = np.asarray(file[dataset][()])
    else:
        raise ValueError(f"mask file {str(path)!r} must be .npy, .h5 or .hdf5, got suffix {suffix!r}")
    array = np.squeeze(array)
    if array.ndim == 1:
        if array.shape[0] != shape[1]:
            raise ValueError(f"1-D mask in {str(path)!r} has length {array.shape[0]}, expected width {shape[1]}")
        array = np.broadcast_to(array, shape)
    elif array.shape != shape:
        raise ValueError(f"mask in {str(path)!r} has shape {array.shape}, expected {shape} or ({shape[1]},)")
    if np.iscomplexobj(array):
        array = np.abs(array)
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"mask in {str(path)!r} must hold only 0/1 (or booleans)")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=bool))
