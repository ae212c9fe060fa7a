"""Natural-image forward operators: SuperResolution, Convolution / GaussianBlur / MotionBlur, Inpainting.

Adjointness of every linear operator is tested in test_adjointness.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from ugodit_pl.operators import GaussianBlur, Inpainting, MotionBlur, SuperResolution
from ugodit_pl.operators.blur import Convolution, gaussian_kernel, motion_kernel


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- super-resolution


def _keys_cubic(t: float) -> float:
    """Keys' cubic convolution kernel, a = -0.5, written out as in MATLAB's imresize."""
    s = abs(t)
    if s <= 1:
        return 1.5 * s**3 - 2.5 * s**2 + 1
    if s <= 2:
        return -0.5 * s**3 + 2.5 * s**2 - 4 * s + 2
    return 0.0


def _reference_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Per-pixel MATLAB imresize(image, 1/factor, 'bicubic'): separable sums, symmetric borders."""

    def source(j: int, n: int) -> int:  # symmetric padding: ... 1 0 | 0 1 ... n-1 | n-1 n-2 ...
        while j < 0 or j >= n:
            j = -j - 1 if j < 0 else 2 * n - 1 - j
        return j

    def resize_axis(a: np.ndarray) -> np.ndarray:  # resizes axis 0
        n = a.shape[0]
        out = np.zeros((n // factor,) + a.shape[1:])
        for i in range(n // factor):
            u = (i + 1) * factor + 0.5 * (1 - factor)  # MATLAB's 1-based coordinate of output pixel i + 1
            weights, values = [], []
            for p in range(int(np.floor(u - 2 * factor)) - 1, int(np.ceil(u + 2 * factor)) + 2):  # 1-based input pixels
                w = _keys_cubic((u - p) / factor) / factor
                if w != 0:
                    weights.append(w)
                    values.append(a[source(p - 1, n)])
            out[i] = sum(w * v for w, v in zip(weights, values)) / sum(weights)
        return out

    return resize_axis(resize_axis(image).T).T


def test_super_resolution_matches_per_pixel_reference() -> None:
    image = _rand(1, 1, 40, 24, seed=3)
    expected = _reference_downsample(image[0, 0].numpy(), 4)
    np.testing.assert_allclose(SuperResolution(4)(image)[0, 0].numpy(), expected, rtol=0, atol=1e-12)


def test_super_resolution_interior_matches_pillow_bicubic() -> None:
    # Pillow's antialiased bicubic (a = -0.5) is an independent implementation; it renormalises the kernel at the
    # border instead of mirroring, so only pixels whose support lies inside the image must agree.
    image = _rand(64, 48, seed=4).numpy().astype(np.float32)
    ours = SuperResolution(4)(torch.from_numpy(image)[None, None].double())[0, 0].numpy()
    pillow = np.asarray(Image.fromarray(image, mode="F").resize((12, 16), Image.BICUBIC))
    np.testing.assert_allclose(ours[2:-2, 2:-2], pillow[2:-2, 2:-2], atol=1e-5)
    assert np.abs(ours - pillow).max() > 1e-3  # the borders differ: symmetric mirroring is really used


def test_super_resolution_constant_and_ramp() -> None:
    op = SuperResolution(4)
    constant = torch.full((2, 3, 32, 32), 0.3, dtype=torch.float64)
    torch.testing.assert_close(op(constant), torch.full((2, 3, 8, 8), 0.3, dtype=torch.float64))
    # A linear ramp is reproduced at MATLAB's mapped coordinates u = 4 i + 1.5 (0-based) away from the borders.
    ramp = torch.arange(64, dtype=torch.float64).expand(1, 1, 64, 64)  # varies along the width
    y = op(ramp)[0, 0]
    centres = 4 * torch.arange(16, dtype=torch.float64) + 1.5
    torch.testing.assert_close(y[:, 2:-2], centres[2:-2].expand(16, 12))


def test_super_resolution_shapes_init_input_and_cache() -> None:
    op = SuperResolution(4)
    y = _rand(2, 3, 10, 6, seed=5)
    assert op.adjoint(y).shape == (2, 3, 40, 24)
    torch.testing.assert_close(
        op.init_input(y), F.interpolate(y, size=(40, 24), mode="bilinear", align_corners=False)
    )
    assert op.matrix(40, "cpu", torch.float32) is op.matrix(40, "cpu", torch.float32)
    assert op.matrix(40, "cpu", torch.float64).dtype == torch.float64
    assert list(op.buffers()) == []
    with pytest.raises(ValueError, match="not divisible"):
        op(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match="scale_factor"):
        SuperResolution(2.5)
    stacked = SuperResolution.stack([op, SuperResolution(4)])
    assert stacked.scale_factor == 4 and op.select([0]).scale_factor == 4
    with pytest.raises(ValueError, match="different scale factors"):
        SuperResolution.stack([op, SuperResolution(2)])


# ---------------------------------------------------------------------------------------------- blur


def test_blur_equals_scipy_mirror_correlation() -> None:
    # torch's "reflect" padding is scipy's "mirror" mode; DPS's nn.Conv2d is a correlation.
    ops = (
        GaussianBlur(kernel_size=7, sigma=1.5),
        MotionBlur(kernel_size=9, intensity=0.7, seed=5),
        MotionBlur(kernel_size=9, intensity=0.7, seed=5, method="fft"),
        GaussianBlur(),  # DPS's 61 x 61 kernel: FFT under method="auto"
        MotionBlur(kernel_size=31, intensity=0.5, seed=1),
    )
    for op in ops:
        x = _rand(2, 3, 64, 48, seed=6)
        kernel = op.kernel[0].double().numpy()
        expected = np.stack(
            [[ndimage.correlate(channel, kernel, mode="mirror") for channel in image] for image in x.numpy()]
        )
        np.testing.assert_allclose(op(x).numpy(), expected, atol=1e-12)


def test_gaussian_kernel_matches_dps_construction() -> None:
    # DPS: scipy.ndimage.gaussian_filter of a centred delta (radius int(4 sigma + 0.5) fits in 61 x 61).
    delta = np.zeros((61, 61))
    delta[30, 30] = 1.0
    expected = ndimage.gaussian_filter(delta, sigma=3.0)
    kernel = GaussianBlur().kernel[0]
    assert kernel.shape == (61, 61)
    np.testing.assert_allclose(kernel.numpy(), expected, atol=1e-8)
    assert abs(float(kernel.sum()) - 1) < 1e-6
    torch.testing.assert_close(gaussian_kernel(5, 0.0), F.pad(torch.ones(1, 1), (2, 2, 2, 2)))


def test_motion_kernel_seeded_normalised_and_shaped_by_intensity() -> None:
    a, b, c = motion_kernel(61, 0.5, seed=0), motion_kernel(61, 0.5, seed=0), motion_kernel(61, 0.5, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (61, 61) and (a >= 0).all()
    for kernel in (a, c, MotionBlur(9, 0.5, seed=2).kernel[0]):
        assert abs(float(kernel.sum()) - 1) < 1e-5

    def spread(kernel: torch.Tensor) -> tuple[float, float]:
        """Eigenvalues (ascending) of the second-moment matrix of the kernel's mass."""
        k = kernel.double()
        rows, cols = torch.meshgrid(torch.arange(k.shape[0]), torch.arange(k.shape[1]), indexing="ij")
        pos = torch.stack((rows.flatten(), cols.flatten())).double()
        mean = pos @ k.flatten()
        centred = pos - mean[:, None]
        cov = (centred * k.flatten()) @ centred.T
        low, high = torch.linalg.eigvalsh(cov).tolist()
        return low, high

    # Intensity 0 is a straight (smoothed) line: nearly all spread along one direction.
    for seed in range(3):
        low, high = spread(motion_kernel(61, 0.0, seed=seed))
        assert low < 0.05 * high and high > 1.0
    # Intensity 1 gives irregular paths: on average much less line-like.
    ratios = [np.divide(*spread(motion_kernel(61, 1.0, seed=seed))) for seed in range(6)]
    assert np.mean(ratios) > 0.1
    with pytest.raises(ValueError, match="intensity"):
        motion_kernel(9, 1.5)


def test_convolution_kernel_argument_validation_and_init_input() -> None:
    op = MotionBlur(kernel=torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 1.0, 0.0]]))
    torch.testing.assert_close(op.kernel.sum(), torch.tensor(1.0))
    y = torch.rand(1, 3, 8, 8)
    assert op.init_input(y) is y
    with pytest.raises(ValueError, match="odd"):
        Convolution(torch.ones(4, 4))
    with pytest.raises(ValueError, match="too small"):
        GaussianBlur(kernel_size=9, sigma=1.0)(torch.rand(1, 1, 4, 8))
    with pytest.raises(ValueError, match="kernel_size"):
        GaussianBlur(kernel_size=8)


def test_convolution_batched_stack_select() -> None:
    ops = [MotionBlur(9, 0.5, seed=s) for s in range(3)]
    batch = Convolution.stack(ops)
    x = _rand(3, 3, 16, 16, seed=7)
    y = batch(x)
    for b, op in enumerate(ops):
        torch.testing.assert_close(y[b : b + 1], op(x[b : b + 1]))
        torch.testing.assert_close(batch.adjoint(y)[b : b + 1], op.adjoint(y[b : b + 1]))
    picked = batch.select([2, 0])
    torch.testing.assert_close(picked(x[[2, 0]]), y[[2, 0]])
    shared = GaussianBlur(7, 1.5)
    torch.testing.assert_close(shared(x)[1:2], shared(x[1:2]))  # a shared kernel acts on every sample alike
    assert shared.select([1, 2]).kernel.shape[0] == 1
    with pytest.raises(ValueError, match="batch size"):
        batch(x[:2])
    with pytest.raises(ValueError, match="different kernel sizes"):
        Convolution.stack([ops[0], GaussianBlur(7, 1.0)])


def test_convolution_follows_device_and_dtype_of_input() -> None:
    op = GaussianBlur(5, 1.0)
    x = _rand(1, 2, 8, 8, seed=8)
    assert op(x).dtype == torch.float64 and op.kernel.dtype == torch.float32
    torch.testing.assert_close(op(x.float()), op(x).float())


# ---------------------------------------------------------------------------------------------- inpainting


def test_inpainting_random_mask() -> None:
    op = Inpainting.random((2, 3, 32, 32), drop_probability=0.7, seed=0)
    assert op.mask.shape == (2, 1, 32, 32)
    assert set(op.mask.unique().tolist()) == {0.0, 1.0}
    assert [int((m == 0).sum()) for m in op.mask] == [int(32 * 32 * 0.7)] * 2
    assert not torch.equal(op.mask[0], op.mask[1])
    assert torch.equal(op.mask, Inpainting.random((2, 3, 32, 32), drop_probability=0.7, seed=0).mask)
    assert not torch.equal(op.mask, Inpainting.random((2, 3, 32, 32), drop_probability=0.7, seed=1).mask)
    x = _rand(2, 3, 32, 32, seed=9)
    y = op(x)
    torch.testing.assert_close(y, x * op.mask)  # every channel masked alike
    assert op.init_input(y) is y
    assert Inpainting.random((16, 16), seed=0).mask.shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="drop_probability"):
        Inpainting.random((8, 8), drop_probability=1.5)


def test_inpainting_box_mask() -> None:
    shape = (4, 3, 64, 48)
    op = Inpainting.box(shape, box_size=(20, 10), margin=8, seed=3)
    assert torch.equal(op.mask, Inpainting.box(shape, box_size=(20, 10), margin=8, seed=3).mask)
    corners = set()
    for m in op.mask[:, 0]:
        rows = torch.nonzero((m == 0).any(dim=1)).flatten()
        cols = torch.nonzero((m == 0).any(dim=0)).flatten()
        assert int((m == 0).sum()) == 20 * 10
        assert len(rows) == 20 and len(cols) == 10
        assert rows.min() >= 8 and rows.max() <= 64 - 8 - 1 and cols.min() >= 8 and cols.max() <= 48 - 8 - 1
        corners.add((int(rows.min()), int(cols.min())))
    assert len(corners) > 1
    default = Inpainting.box((1, 3, 256, 256), seed=0)  # DPS: a 128 x 128 hole at least 16 pixels from the border
    assert int((default.mask == 0).sum()) == 128 * 128
    with pytest.raises(ValueError, match="does not fit"):
        Inpainting.box((1, 3, 32, 32), box_size=20, margin=8)


def test_inpainting_stack_select_and_shapes() -> None:
    ops = [Inpainting.random((1, 3, 16, 16), drop_probability=0.5, seed=s) for s in range(3)]
    batch = Inpainting.stack(ops)
    assert batch.mask.shape == (3, 1, 16, 16) and batch.batch_size == 3
    x = _rand(3, 3, 16, 16, seed=10)
    for b, op in enumerate(ops):
        torch.testing.assert_close(batch(x)[b : b + 1], op(x[b : b + 1]))
    torch.testing.assert_close(batch.select([1]).mask, ops[1].mask)
    per_channel = Inpainting(torch.ones(1, 3, 16, 16))
    assert Inpainting.stack([ops[0], per_channel]).mask.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="does not match"):
        batch(_rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="must be"):
        batch(_rand(3, 3, 8, 8))
    torch.testing.assert_close(Inpainting(torch.ones(16, 16, dtype=torch.bool)).mask, torch.ones(1, 1, 16, 16))
