"""Complex-valued helpers: the centred orthonormal FFT and the 2-channel image convention.

Networks see complex images as two real channels (real, imaginary); k-space is a complex tensor.
The FFT is the fastMRI / sigpy one: ``fftshift(fft2(ifftshift(x), norm="ortho"))``.

>>> import torch
>>> x = torch.randn(1, 2, 8, 8)
>>> torch.allclose(complex_to_channels(channels_to_complex(x)), x)
True
"""

from __future__ import annotations

import torch

_DIMS = (-2, -1)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two dimensions of a complex tensor."""
    x = torch.fft.ifftshift(x, dim=_DIMS)
    x = torch.fft.fft2(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D inverse FFT over the last two dimensions of a complex tensor."""
    k = torch.fft.ifftshift(k, dim=_DIMS)
    k = torch.fft.ifft2(k, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(k, dim=_DIMS)


def channels_to_complex(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) real (real, imaginary channels) -> (B, H, W) complex."""
    if x.ndim != 4 or x.shape[1] != 2:
        raise ValueError(f"expected a (B, 2, H, W) real/imaginary image, got shape {tuple(x.shape)}")
    return torch.complex(x[:, 0], x[:, 1])


def complex_to_channels(z: torch.Tensor) -> torch.Tensor:
    """(B, H, W) complex -> (B, 2, H, W) real (real, imaginary channels)."""
    if not z.is_complex() or z.ndim != 3:
        raise ValueError(f"expected a complex (B, H, W) image, got {z.dtype} of shape {tuple(z.shape)}")
    return torch.stack((z.real, z.imag), dim=1)


def magnitude(x: torch.Tensor) -> torch.Tensor:
    """Magnitude image (B, 1, H, W) of a (B, 2, H, W) real/imaginary image or a complex (B, H, W); a
    (B, 1, H, W) image is taken as a magnitude already and returned as it is.

    >>> magnitude(torch.tensor([[[[3.0]], [[4.0]]]])).flatten().tolist()
    [5.0]
    """
    if x.is_complex():
        if x.ndim != 3:
            raise ValueError(f"a complex image must be (B, H, W), got shape {tuple(x.shape)}")
        return x.abs().unsqueeze(1)
    if x.ndim != 4 or x.shape[1] not in (1, 2):
        raise ValueError(
            f"expected a (B, 2, H, W) real/imaginary image, a (B, 1, H, W) magnitude or a complex (B, H, W); "
            f"got shape {tuple(x.shape)}"
        )
    return channels_to_complex(x).abs().unsqueeze(1) if x.shape[1] == 2 else x
