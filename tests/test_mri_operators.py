"""MultiCoilMRI / SingleCoilMRI: shapes, agreement with sigpy's SENSE operator, batching (adjointness: test_adjointness.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ugodit_pl.complex import channels_to_complex, complex_to_channels
from ugodit_pl.operators import MultiCoilMRI, SingleCoilMRI
from ugodit_pl.operators.mri import MultiCoilMRI as DirectMultiCoilMRI

H, W, COILS = 12, 10, 3


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _maps(batch: int, seed: int = 0, coils: int = COILS) -> torch.Tensor:
    return torch.randn(batch, coils, H, W, dtype=torch.complex64, generator=_generator(seed))


def _masks(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, H, W, generator=_generator(seed)) < 0.4


def _image(batch: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, 2, H, W, generator=_generator(seed))


def _kspace(batch: int, coils: int = COILS, seed: int = 3) -> torch.Tensor:
    return torch.randn(batch, coils, H, W, dtype=torch.complex64, generator=_generator(seed))


def test_lazy_export_is_the_module_class():
    assert MultiCoilMRI is DirectMultiCoilMRI


def test_shapes_dtypes_and_buffers():
    op = MultiCoilMRI(_masks(1)[0], _maps(1)[0])  # (H, W) mask, (coils, H, W) maps
    assert op.mask.shape == (1, H, W) and op.mask.dtype == torch.float32
    assert op.coil_maps.shape == (1, COILS, H, W) and op.coil_maps.dtype == torch.complex64
    assert set(dict(op.named_buffers())) == {"mask", "coil_maps"}
    y = op(_image(4))
    assert y.shape == (4, COILS, H, W) and y.dtype == torch.complex64
    x = op.adjoint(y)
    assert x.shape == (4, 2, H, W) and x.dtype == torch.float32
    assert torch.equal(op.init_input(y), x)
    assert torch.allclose(op.normal(_image(4)), op.adjoint(op(_image(4))))
    single = SingleCoilMRI(_masks(2))
    assert single(_image(2)).shape == (2, 1, H, W)


def test_forward_matches_the_definition():
    mask, maps, x = _masks(2), _maps(2), _image(2)
    y = MultiCoilMRI(mask, maps)(x)
    image = channels_to_complex(x)
    expected = torch.stack(
        [
            torch.stack([mask[b] * torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(maps[b, c] * image[b]), norm="ortho"))
                         for c in range(COILS)])
            for b in range(2)
        ]
    )
    assert torch.allclose(y, expected, atol=1e-5)
    # Unsampled k-space is exactly zero.
    assert (y.abs()[~mask.unsqueeze(1).expand_as(y)] == 0).all()


def test_single_coil_is_multi_coil_with_unit_map():
    mask, x = _masks(2), _image(2)
    single = SingleCoilMRI(mask)
    multi = MultiCoilMRI(mask, torch.ones(1, 1, H, W, dtype=torch.complex64))
    assert torch.allclose(single(x), multi(x))
    y = single(x)
    assert torch.allclose(single.adjoint(y), multi.adjoint(y))
    # Fully sampled single coil: A^H A = identity (orthonormal FFT).
    full = SingleCoilMRI(torch.ones(H, W))
    assert torch.allclose(full.normal(x), x, atol=1e-5)


def test_agrees_with_sigpy_sense():
    mr = pytest.importorskip("sigpy.mri")
    rng = np.random.default_rng(0)
    maps = (rng.standard_normal((COILS, H, W)) + 1j * rng.standard_normal((COILS, H, W))).astype(np.complex64)
    mask = (rng.random((H, W)) < 0.5).astype(np.float32)
    image = (rng.standard_normal((H, W)) + 1j * rng.standard_normal((H, W))).astype(np.complex64)
    sense = mr.linop.Sense(maps, weights=mask)
    ours = MultiCoilMRI(torch.from_numpy(mask), torch.from_numpy(maps))
    x = complex_to_channels(torch.from_numpy(image)[None])
    y_ours = ours(x)[0].numpy()
    y_sigpy = sense(image)
    assert np.linalg.norm(y_ours - y_sigpy) / np.linalg.norm(y_sigpy) < 1e-5
    k = (rng.standard_normal((COILS, H, W)) + 1j * rng.standard_normal((COILS, H, W))).astype(np.complex64)
    back_ours = channels_to_complex(ours.adjoint(torch.from_numpy(k)[None]))[0].numpy()
    back_sigpy = sense.H(k)
    assert np.linalg.norm(back_ours - back_sigpy) / np.linalg.norm(back_sigpy) < 1e-5


def test_batched_equals_per_sample_loop():
    masks, maps, x = _masks(3), _maps(3), _image(3)
    y = _kspace(3)
    batched = MultiCoilMRI(masks, maps)
    for b in range(3):
        one = MultiCoilMRI(masks[b], maps[b])
        assert torch.allclose(batched(x)[b : b + 1], one(x[b : b + 1]), atol=1e-6)
        assert torch.allclose(batched.adjoint(y)[b : b + 1], one.adjoint(y[b : b + 1]), atol=1e-5)


def test_shared_state_broadcasts_over_the_batch():
    maps = _maps(1)
    op = MultiCoilMRI(_masks(3), maps)  # per-sample masks, shared maps
    x = _image(3)
    expected = torch.cat([MultiCoilMRI(op.mask[b], maps)(x[b : b + 1]) for b in range(3)])
    assert torch.allclose(op(x), expected)


def test_stack_select_round_trip():
    ops = [MultiCoilMRI(_masks(1, seed=s), _maps(1, seed=10 + s)) for s in range(3)]
    stacked = MultiCoilMRI.stack(ops)
    assert stacked.batch_size == 3 and stacked.mask.shape == (3, H, W)
    x = _image(3)
    assert torch.allclose(stacked(x), torch.cat([op(x[b : b + 1]) for b, op in enumerate(ops)]))
    for b, op in enumerate(ops):
        picked = stacked.select([b])
        assert torch.equal(picked.mask, op.mask) and torch.equal(picked.coil_maps, op.coil_maps)
    again = MultiCoilMRI.stack([stacked.select([b]) for b in range(3)])
    assert torch.equal(again.mask, stacked.mask) and torch.equal(again.coil_maps, stacked.coil_maps)
    reordered = stacked.select(torch.tensor([2, 0]))
    assert torch.equal(reordered.mask, torch.stack([ops[2].mask[0], ops[0].mask[0]]))


def test_stack_mixed_batch_sizes_broadcasts_shared_state():
    shared_maps = _maps(1)
    a = MultiCoilMRI(_masks(2), shared_maps)  # 2 samples sharing maps
    b = MultiCoilMRI(_masks(1, seed=5), _maps(1, seed=6))  # 1 sample
    stacked = MultiCoilMRI.stack([a, b])
    assert stacked.mask.shape == (3, H, W) and stacked.coil_maps.shape == (3, COILS, H, W)
    assert torch.equal(stacked.coil_maps[0], shared_maps[0]) and torch.equal(stacked.coil_maps[1], shared_maps[0])
    x = _image(3)
    assert torch.allclose(stacked(x), torch.cat([a(x[:2]), b(x[2:])]))
    # Identical batch-1 state stays shared; the differing masks are concatenated.
    same = MultiCoilMRI.stack([MultiCoilMRI(_masks(1, seed=s), shared_maps) for s in range(2)])
    assert same.coil_maps.shape == (1, COILS, H, W) and same.mask.shape == (2, H, W)
    # Selecting keeps batch-1 state shared.
    assert same.select([1]).coil_maps.shape == (1, COILS, H, W)


def test_single_coil_stack_and_select_keep_the_class():
    ops = [SingleCoilMRI(_masks(1, seed=s)) for s in range(2)]
    stacked = SingleCoilMRI.stack(ops)
    assert type(stacked) is SingleCoilMRI and type(stacked.select([0])) is SingleCoilMRI
    assert stacked(_image(2)).shape == (2, 1, H, W)
    with pytest.raises(TypeError, match="all must be SingleCoilMRI"):
        SingleCoilMRI.stack([ops[0], MultiCoilMRI(_masks(1), _maps(1))])


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="mask has spatial shape"):
        MultiCoilMRI(torch.ones(H, W + 1), _maps(1))
    with pytest.raises(ValueError, match="inconsistent batch sizes"):
        MultiCoilMRI(_masks(2), _maps(3))
    with pytest.raises(ValueError, match="coil_maps must be complex"):
        MultiCoilMRI(torch.ones(H, W), torch.ones(1, COILS, H, W))
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 1\]"):
        MultiCoilMRI(2 * torch.ones(H, W), _maps(1))
    with pytest.raises(ValueError, match="mask must be"):
        MultiCoilMRI(torch.ones(1, 1, H, W), _maps(1))
    op = MultiCoilMRI(_masks(2), _maps(2))
    with pytest.raises(ValueError, match=rf"x must have shape \(B, 2, {H}, {W}\)"):
        op(torch.randn(2, 2, H, W + 2))
    with pytest.raises(ValueError, match="x has batch size 3 but the operator holds 2"):
        op(_image(3))
    with pytest.raises(ValueError, match="y must be complex"):
        op.adjoint(torch.randn(2, COILS, H, W))
    with pytest.raises(ValueError, match=rf"y must have shape \(B, {COILS}, {H}, {W}\)"):
        op.adjoint(_kspace(2, coils=COILS + 1))
    with pytest.raises(IndexError, match="out of range"):
        op.select([2])


def test_module_to_moves_state():
    op = MultiCoilMRI(_masks(1), _maps(1)).to(torch.device("meta"))
    assert op.mask.device.type == "meta" and op.coil_maps.device.type == "meta"
