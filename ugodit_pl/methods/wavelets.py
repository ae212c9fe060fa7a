"""An orthonormal 2-D discrete wavelet transform in torch, differentiable, for a wavelet sparsity term.

Daubechies-4 (``"db4"``, sigpy's L1-wavelet default) with periodic boundaries, the same coefficients as
PyWavelets' ``wavedec2(..., mode="periodization")``. The number of levels is sigpy's rule
(``pywt.dwt_max_level`` of the shorter side); an image whose sides are not multiples of 2^levels is
zero-padded at the bottom and right first, so every level halves exactly.

>>> import torch
>>> image = torch.randn(1, 2, 32, 24, dtype=torch.float64)
>>> bands = wavelet_coefficients(image)
>>> torch.allclose(sum(band.square().sum() for band in bands), image.square().sum())  # orthonormal
True
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Optional, Tuple

import pywt
import torch
import torch.nn.functional as F

#: sigpy's ``L1WaveletRecon`` default.
WAVELET = "db4"


@lru_cache(maxsize=None)
def _filter_bank(name: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The low- and high-pass decomposition filters of an orthogonal wavelet, reversed for correlation."""
    wavelet = pywt.Wavelet(name)
    if not wavelet.orthogonal:
        raise ValueError(f"wavelet {name!r} is not orthogonal: the sparsity term needs an orthonormal transform")
    return tuple(reversed(wavelet.dec_lo)), tuple(reversed(wavelet.dec_hi))


def wavelet_levels(height: int, width: int, name: str = WAVELET) -> int:
    """sigpy's number of levels for an image of this size: ``pywt.dwt_max_level`` of the shorter side."""
    return max(1, pywt.dwt_max_level(min(height, width), len(_filter_bank(name)[0])))


def _analysis_step(signal: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """One periodic filter-and-halve step along the last axis: (N, 1, H, W) -> (N, 2, H, W / 2), low then high.

    Coefficient k is sum_n h[n] x[(2k + L/2 - n) mod W] for a filter h of even length L (PyWavelets'
    periodization alignment).
    """
    taps = bank.shape[-1]
    left = taps // 2 - 1
    padded = F.pad(signal, (left, taps - 2 - left, 0, 0), mode="circular")
    return F.conv2d(padded, bank, stride=(1, 2))


def wavelet_coefficients(image: torch.Tensor, levels: Optional[int] = None, name: str = WAVELET) -> List[torch.Tensor]:
    """Every coefficient band of each (B, C, H, W) image: a list of (B, C, 3, h, w) detail bands (finest first)
    and the coarsest (B, C, 1, h, w) approximation. Real and imaginary parts are separate channels.
    """
    batch, channels, height, width = image.shape
    levels = wavelet_levels(height, width, name) if levels is None else levels
    if levels < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    block = 2**levels
    low, high = _filter_bank(name)
    coarsest = min(height + -height % block, width + -width % block) // 2 ** (levels - 1)
    if coarsest < len(low) // 2:
        raise ValueError(f"an image of {height} x {width} pixels is too small for {levels} level(s) of the "
                         f"{name} wavelet: each level's side must keep at least {len(low) // 2} pixels")
    image = F.pad(image, (0, -width % block, 0, -height % block))
    bank = torch.tensor([low, high], dtype=image.dtype, device=image.device).view(2, 1, 1, -1)
    approximation = image.reshape(batch * channels, 1, *image.shape[-2:])
    bands: List[torch.Tensor] = []
    for _ in range(levels):
        rows = _analysis_step(approximation, bank)  # (N, 2, H, W/2): along the width
        n, _, h, w = rows.shape
        both = _analysis_step(rows.reshape(n * 2, 1, h, w).transpose(-1, -2), bank)  # along the height
        both = both.transpose(-1, -2).reshape(n, 4, h // 2, w)  # LL, LH (low width), HL, HH
        bands.append(both[:, 1:].reshape(batch, channels, 3, h // 2, w))
        approximation = both[:, :1]
    bands.append(approximation.reshape(batch, channels, 1, *approximation.shape[-2:]))
    return bands
