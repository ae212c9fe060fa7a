"""4x super-resolution: the MATLAB-style bicubic ``imresize`` down-sampling that DPS uses.

DPS (Chung et al. 2023) down-samples with the "Resizer" port of MATLAB's ``imresize``: the cubic
convolution kernel with a = -0.5, stretched by the factor when shrinking (antialiasing), MATLAB's
mapping of output to input coordinates and mirrored (symmetric) indices at the borders. That map is
separable, so this operator writes it as two 1-D matrices: ``A(X) = R_h X R_w^T`` per channel. Its
adjoint is the true adjoint ``R_h^T Y R_w`` (DPS's "transpose", a nearest-neighbour upsampling, is
not).

The matrices depend only on the input size and the factor. They are built on demand for the size
of ``x`` (for the adjoint: the input size is ``scale_factor`` times the size of ``y``) and cached per
(size, device, dtype); they are not state, so the operator has no buffers.

>>> import torch
>>> op = SuperResolution(scale_factor=4)
>>> y = op(torch.rand(2, 3, 32, 32))
>>> y.shape, op.adjoint(y).shape, op.init_input(y).shape
(torch.Size([2, 3, 8, 8]), torch.Size([2, 3, 32, 32]), torch.Size([2, 3, 32, 32]))
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ugodit_pl.arguments import whole
from ugodit_pl.operators.base import Operator

__all__ = ["SuperResolution", "cubic_kernel", "imresize_matrix"]

CUBIC_A = -0.5
"""The parameter of Keys' cubic convolution kernel used by MATLAB's ``imresize`` (and DPS)."""


def cubic_kernel(t: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (support [-2, 2]).

    >>> cubic_kernel(np.array([0.0, 1.0, 2.0, 0.5])).round(4).tolist()
    [1.0, 0.0, 0.0, 0.5625]
    """
    a = CUBIC_A
    s = np.abs(t)
    inner = (a + 2) * s**3 - (a + 3) * s**2 + 1
    outer = a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
    return np.where(s <= 1, inner, np.where(s < 2, outer, 0.0))


def _mirror(index: np.ndarray, length: int) -> np.ndarray:
    """Symmetric (edge-repeating) reflection of indices into [0, length): -1 -> 0, length -> length - 1."""
    period = 2 * length
    index = np.mod(index, period)
    return np.where(index < length, index, period - 1 - index)


@functools.lru_cache(maxsize=64)
def _imresize_matrix_np(in_length: int, factor: int) -> np.ndarray:
    out_length = in_length // factor
    scale = 1.0 / factor
    # Antialiasing (only when shrinking): the kernel is stretched by the factor, k(t) -> scale * k(scale * t).
    width = 4.0 * factor
    # MATLAB's map from output to input coordinates, in 1-based pixel centres: u = x / scale + 0.5 (1 - 1 / scale);
    # shifted here to 0-based indices on both sides.
    centres = (np.arange(1, out_length + 1) / scale + 0.5 * (1 - 1 / scale)) - 1.0
    first = np.floor(centres - width / 2).astype(np.int64)
    taps = int(math.ceil(width)) + 2
    index = first[:, None] + np.arange(taps)[None, :]
    weights = scale * cubic_kernel(scale * (centres[:, None] - index))
    weights /= weights.sum(axis=1, keepdims=True)
    matrix = np.zeros((out_length, in_length))
    rows = np.repeat(np.arange(out_length), taps)
    np.add.at(matrix, (rows, _mirror(index, in_length).ravel()), weights.ravel())
    matrix.setflags(write=False)
    return matrix


def imresize_matrix(in_length: int, factor: int) -> np.ndarray:
    """The (in_length // factor, in_length) float64 matrix of MATLAB's bicubic 1/factor down-sampling.

    Row i holds the weights of output pixel i: the cubic kernel stretched by ``factor``, centred at
    input coordinate ``factor * i + (factor - 1) / 2`` (0-based), normalised to sum 1, with
    out-of-range taps folded back by symmetric mirroring.

    >>> m = imresize_matrix(16, 4)
    >>> m.shape, bool(np.allclose(m.sum(axis=1), 1.0))
    ((4, 16), True)
    """
    if factor < 1 or in_length % factor:
        raise ValueError(f"in_length ({in_length}) must be a positive multiple of factor ({factor})")
    return _imresize_matrix_np(int(in_length), int(factor))


class SuperResolution(Operator):
    """y = MATLAB-bicubic ``imresize(x, 1 / scale_factor)`` per channel (DPS's 4x super-resolution).

    ``x`` is (B, C, H, W) with H and W multiples of ``scale_factor``; ``y`` is (B, C, H/s, W/s).
    ``adjoint`` is the exact adjoint; ``init_input`` is the bilinear up-sampling of ``y``
    (``align_corners=False``), the input the authors start super-resolution from.

    >>> import torch
    >>> op = SuperResolution(4)
    >>> x = torch.full((1, 3, 16, 16), 0.25)
    >>> torch.allclose(op(x), torch.full((1, 3, 4, 4), 0.25))
    True
    """

    linear = True

    def __init__(self, scale_factor: int = 4) -> None:
        super().__init__()
        self.scale_factor = whole("scale_factor", scale_factor, minimum=1)
        self._matrices: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def matrix(
        self, in_length: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """The 1-D resize matrix for an input of ``in_length`` pixels, cached per (size, device, dtype)."""
        device = torch.device(device)
        key = (int(in_length), device, dtype)
        cached = self._matrices.get(key)
        if cached is None:
            cached = torch.tensor(imresize_matrix(int(in_length), self.scale_factor), dtype=dtype, device=device)
            self._matrices[key] = cached
        return cached

    def _check(self, t: torch.Tensor, name: str) -> None:
        if t.ndim != 4:
            raise ValueError(f"{name} must be a (B, C, H, W) image, got shape {tuple(t.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, "x")
        height, width = x.shape[-2:]
        s = self.scale_factor
        if height % s or width % s:
            raise ValueError(f"x of size {height}x{width} is not divisible by scale_factor={s}")
        r_h = self.matrix(height, x.device, x.dtype)
        r_w = self.matrix(width, x.device, x.dtype)
        return r_h @ x @ r_w.transpose(0, 1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, "y")
        height, width = (n * self.scale_factor for n in y.shape[-2:])
        r_h = self.matrix(height, y.device, y.dtype)
        r_w = self.matrix(width, y.device, y.dtype)
        return r_h.transpose(0, 1) @ y @ r_w

    def init_input(self, y: torch.Tensor) -> torch.Tensor:
        """Bilinear up-sampling of ``y`` to the full size (``align_corners=False``)."""
        self._check(y, "y")
        size = (y.shape[-2] * self.scale_factor, y.shape[-1] * self.scale_factor)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)

    @classmethod
    def stack(cls, operators: Sequence["SuperResolution"]) -> "SuperResolution":
        """One operator for a batch: super-resolution has no per-sample state, the factors must agree."""
        factors = {op.scale_factor for op in operators}
        if len(factors) != 1:
            raise ValueError(f"cannot stack SuperResolution operators with different scale factors {sorted(factors)}")
        return cls(factors.pop())

    def select(self, index: torch.Tensor | Sequence[int]) -> "SuperResolution":
        return type(self)(self.scale_factor)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}"
