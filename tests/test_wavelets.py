"""The wavelet transform of the sparsity term: PyWavelets' coefficients, orthonormal, differentiable."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from ugodit_pl.methods.losses import wavelet_l1
from ugodit_pl.methods.wavelets import wavelet_coefficients, wavelet_levels


@pytest.mark.parametrize("height, width", [(32, 24), (96, 72), (30, 22), (230, 180)])
def test_the_coefficients_are_pywavelets_periodization_bands(height, width):
    """Band by band the same as pywt.wavedec2(mode="periodization") of the image zero-padded to whole levels."""
    image = torch.randn(2, 2, height, width, generator=torch.Generator().manual_seed(height), dtype=torch.float64)
    levels = wavelet_levels(height, width)
    assert levels == pywt.dwt_max_level(min(height, width), 8)  # sigpy's level rule for db4
    padded = np.pad(image.numpy(), [(0, 0), (0, 0), (0, -height % 2**levels), (0, -width % 2**levels)])
    expected = pywt.wavedec2(padded, "db4", mode="periodization", level=levels, axes=(-2, -1))
    bands = wavelet_coefficients(image)
    assert len(bands) == levels + 1
    np.testing.assert_allclose(bands[-1][:, :, 0].numpy(), expected[0], atol=1e-12)
    for level, details in enumerate(reversed(expected[1:])):  # ours finest first
        for j, band in enumerate(details):
            np.testing.assert_allclose(bands[level][:, :, j].numpy(), band, atol=1e-12)


def test_the_transform_is_orthonormal_and_the_l1_per_pixel_of_the_complex_coefficients():
    image = torch.randn(3, 2, 40, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bands = wavelet_coefficients(image)
    energy = sum(band.square().sum(dim=(1, 2, 3, 4)) for band in bands)
    torch.testing.assert_close(energy, image.square().sum(dim=(1, 2, 3)))
    # the channels are a complex image's real and imaginary parts: the term sums the complex moduli
    complex_image = torch.complex(image[:, 0], image[:, 1]).numpy()
    for row in range(3):
        coefficients = pywt.wavedec2(complex_image[row], "db4", mode="periodization", level=wavelet_levels(40, 48))
        total = np.abs(coefficients[0]).sum() + sum(np.abs(band).sum() for level in coefficients[1:] for band in level)
        assert float(wavelet_l1(image)[row]) == pytest.approx(total / (40 * 48), rel=1e-9)


def test_the_term_has_a_finite_gradient_at_a_zero_image_and_keeps_the_dtype():
    image = torch.zeros(1, 2, 16, 16, requires_grad=True)
    wavelet_l1(image).sum().backward()
    assert image.grad is not None and bool(torch.isfinite(image.grad).all())
    assert wavelet_l1(torch.zeros(1, 2, 16, 16, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("shape, levels", [((1, 1, 2, 16), None), ((1, 1, 16, 16), 4)])
def test_an_image_too_small_for_its_levels_is_refused_by_name(shape, levels):
    with pytest.raises(ValueError, match=f"{shape[2]} x {shape[3]} pixels is too small"):
        wavelet_coefficients(torch.zeros(shape), levels=levels)
    with pytest.raises(ValueError, match="levels must be at least 1"):
        wavelet_coefficients(torch.zeros(1, 1, 16, 16), levels=0)
