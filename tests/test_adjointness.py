"""One adjointness test over every linear operator, in float64: <A x, y> = <x, A^H y> to 1e-10.

The linear operators are discovered (every ``Operator`` subclass with ``linear = True``); each must
have at least one case below, with random states and, where the operator takes them from data, real
ones (coil maps estimated by ESPIRiT from the real brain, its Poisson-disc mask; DPS's 61x61 blur
kernels, which run by FFT). For MRI the image is real (2 channels) and k-space complex, so the inner
product that makes A^H the adjoint is the real part of the complex one: Re<A x, y> = <x, A^H y>.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import h5py
import pytest
import torch

import ugodit_pl.operators
from method_problems import coil_maps
from ugodit_pl.operators import (
    GaussianBlur,
    Inpainting,
    MotionBlur,
    MultiCoilMRI,
    SingleCoilMRI,
    SuperResolution,
    estimate_coil_maps,
    make_mask,
)
from ugodit_pl.operators.base import Operator
from ugodit_pl.operators.blur import Convolution

Case = Callable[[Optional[Path]], Tuple[Operator, Tuple[int, ...]]]


def _masks(batch: int, size: int) -> torch.Tensor:
    return torch.stack([make_mask("random", (size, size), acceleration=4, center_fraction=0.125, seed=s) for s in range(batch)])


def _real_brain(data: Path) -> Tuple[MultiCoilMRI, Tuple[int, ...]]:
    """8-coil SENSE with ESPIRiT maps estimated from the real brain's k-space (centre 64 x 48) at 4x."""
    with h5py.File(data / "mri" / "espirit_brain_full.h5", "r") as handle:
        kspace = torch.from_numpy(handle["kspace"][0])
    h, w = kspace.shape[-2:]
    kspace = kspace[:, h // 2 - 32 : h // 2 + 32, w // 2 - 24 : w // 2 + 24]
    mask = make_mask("random", (64, 48), acceleration=4, center_fraction=0.25, seed=0)
    maps = estimate_coil_maps(kspace * mask, mask, cache_dir=False, kernel_width=4)
    return MultiCoilMRI(mask, maps), (2, 2, 64, 48)


def _real_poisson(data: Path) -> Tuple[SingleCoilMRI, Tuple[int, ...]]:
    """The real acquisition's 2-D variable-density Poisson-disc mask (about 8x)."""
    with h5py.File(data / "mri" / "sigpy_brain_poisson8x.h5", "r") as handle:
        mask = torch.from_numpy(handle["mask"][()]).float()
    return SingleCoilMRI(mask), (1, 2, *mask.shape)


def _kernel(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


CASES: Dict[str, Case] = {
    "MultiCoilMRI-random-masks": lambda _: (MultiCoilMRI(_masks(2, 32), coil_maps(3, 32).expand(2, -1, -1, -1)),
                                            (2, 2, 32, 32)),
    "MultiCoilMRI-fractional-mask": lambda _: (MultiCoilMRI(_kernel(2, 12, 10, seed=3), torch.randn(
        2, 3, 12, 10, dtype=torch.complex64, generator=torch.Generator().manual_seed(4))), (2, 2, 12, 10)),
    "MultiCoilMRI-poisson": lambda _: (
        MultiCoilMRI(make_mask("poisson", (32, 32), acceleration=3, center_fraction=0.1, seed=0), coil_maps(4, 32)),
        (2, 2, 32, 32),
    ),
    "MultiCoilMRI-real-brain-espirit": _real_brain,
    "SingleCoilMRI": lambda _: (SingleCoilMRI(_masks(2, 32)), (2, 2, 32, 32)),
    "SingleCoilMRI-real-poisson": _real_poisson,
    "SuperResolution-4x": lambda _: (SuperResolution(scale_factor=4), (2, 3, 32, 32)),
    "SuperResolution-4x-nonsquare": lambda _: (SuperResolution(scale_factor=4), (1, 3, 40, 24)),
    "SuperResolution-2x": lambda _: (SuperResolution(scale_factor=2), (1, 2, 14, 10)),
    "GaussianBlur-direct": lambda _: (GaussianBlur(kernel_size=7, sigma=1.5), (2, 3, 32, 32)),
    "GaussianBlur-dps-61-fft": lambda _: (GaussianBlur(), (1, 3, 64, 40)),
    "MotionBlur-direct": lambda _: (MotionBlur(kernel_size=9, intensity=0.5, seed=1), (2, 3, 32, 32)),
    "MotionBlur-fft": lambda _: (MotionBlur(kernel_size=9, intensity=0.5, seed=0, method="fft"), (2, 3, 32, 32)),
    "MotionBlur-dps-61-fft": lambda _: (MotionBlur(), (1, 3, 40, 64)),
    "Convolution-per-sample-rectangular": lambda _: (Convolution(_kernel(2, 5, 3, seed=1)), (2, 3, 12, 10)),
    "Convolution-kernel-near-image-size": lambda _: (Convolution(_kernel(9, 9, seed=2)), (1, 1, 5, 6)),
    "Convolution-kernel-near-image-size-fft": lambda _: (Convolution(_kernel(2, 9, 7, seed=2), method="fft"),
                                                         (2, 2, 5, 4)),
    "Inpainting-random": lambda _: (Inpainting.random((2, 3, 32, 32), drop_probability=0.5, seed=0), (2, 3, 32, 32)),
    "Inpainting-box": lambda _: (Inpainting.box((1, 3, 32, 32), box_size=8, margin=4, seed=0), (2, 3, 32, 32)),
}
REAL_DATA = {"MultiCoilMRI-real-brain-espirit", "SingleCoilMRI-real-poisson"}


def linear_operator_classes() -> set:
    """Every concrete ``Operator`` subclass in ``ugodit_pl.operators`` that declares itself linear."""
    for module in pkgutil.iter_modules(ugodit_pl.operators.__path__):
        importlib.import_module(f"ugodit_pl.operators.{module.name}")
    found, todo = set(), list(Operator.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.linear and cls.__module__.startswith("ugodit_pl.operators"):
            found.add(cls)
    return found


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.conj() * b).real.sum() if a.is_complex() else (a * b).sum()


def test_every_linear_operator_has_a_case():
    covered = {name.split("-")[0] for name in CASES}
    assert {cls.__name__ for cls in linear_operator_classes()} <= covered


@pytest.mark.parametrize("name", sorted(CASES))
def test_adjoint(name, request):
    data = request.getfixturevalue("shared_data") if name in REAL_DATA else None
    operator, shape = CASES[name](data)
    assert type(operator).__name__ == name.split("-")[0]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    ax = operator(x)
    if ax.is_complex():
        y = torch.randn(ax.shape, generator=generator, dtype=torch.complex128)
    else:
        y = torch.randn(ax.shape, generator=generator, dtype=torch.float64)
    back = operator.adjoint(y)
    assert back.shape == x.shape and back.dtype in (torch.float64, torch.complex128)
    lhs, rhs = _inner(ax, y), _inner(x, back)
    assert abs(float(lhs - rhs)) / abs(float(lhs)) < 1e-10, (name, float(lhs), float(rhs))


@pytest.mark.parametrize("name", ["SingleCoilMRI", "Inpainting-random"])
def test_data_consistent_update_keeps_measured_samples(name):
    operator, shape = CASES[name](None)
    generator = torch.Generator().manual_seed(1)
    truth, guess = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    y = operator(truth)
    merged = operator.data_consistent(guess, y)
    torch.testing.assert_close(operator(merged), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["MultiCoilMRI-random-masks", "SingleCoilMRI", "Inpainting-random"])
def test_data_consistent_update_fixes_the_truth(name):
    """An image that already explains the data is left as it is (coil maps with sum |s|^2 = 1)."""
    operator, shape = CASES[name](None)
    truth = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(operator.data_consistent(truth, operator(truth)), truth, rtol=1e-4, atol=1e-4)
