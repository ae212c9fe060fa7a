"""Classical MRI reconstructions of one multi-coil measurement: zero-filled, CG-SENSE, L1-wavelet and
total-variation CS (their lambda chosen without ground truth: :mod:`ugodit_pl.lamda_rules`).

Inputs are torch tensors or numpy arrays: k-space (coils, H, W) complex (zero where not sampled,
or give ``mask``), a sampling mask (H, W) (anything broadcastable to it, e.g. (1, W) for a column
mask; 1 = sampled), coil maps (coils, H, W) complex. Reconstructions are complex64 torch tensors
(H, W) on the device of the k-space tensor (CPU for numpy input). The FFT is the centred orthonormal
one (:func:`ugodit_pl.complex.ifft2c`, the same as sigpy's ``sp.ifft(k, axes=(-2, -1))``).

SENSE and L1-wavelet run sigpy on numpy (CPU); total variation runs sigpy's primal-dual iteration
written in torch, on the k-space's device. Each first scales the k-space so that the
zero-filled coil-combined image has max 1, so that one ``lamda`` serves any scanner scale, and undoes
the scale afterwards. The gradient step is 1 / (max_xy sum_c |s_c|^2 * max mask), an upper bound of
the Lipschitz constant, instead of sigpy's randomly started power iteration (global RNG).

Targets for metrics (both magnitudes (H, W)): :func:`rss_target` (fastMRI: root-sum-of-squares of
the fully sampled coil images) and :func:`coil_combined_target` (UGoDIT/DIP code: |S^H F^H k_full|).
The UGoDIT convention "target normalised to max 1, PSNR with data_range 1" equals PSNR with
data_range = target max when reconstruction and target keep their common scale.

>>> import torch
>>> kspace = torch.randn(4, 16, 16, dtype=torch.complex64)
>>> zero_filled(kspace).shape, zero_filled(kspace).dtype
(torch.Size([16, 16]), torch.complex64)
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch
from torch.fft import fft2, fftshift, ifft2, ifftshift

from ugodit_pl.complex import ifft2c

ArrayLike = Union[torch.Tensor, np.ndarray]

__all__ = [
    "rss",
    "coil_combine",
    "zero_filled",
    "sense",
    "l1_wavelet",
    "total_variation",
    "tv_step_ratio",
    "rss_target",
    "coil_combined_target",
]

# Defaults chosen on the real brain (shared/data/mri/espirit_brain_full.h5, 230x180, 8 coils) at
# 4x and 8x with 1-D random column masks and ESPIRiT maps of the full data (see the docstrings).
SENSE_LAMDA = 0.01
SENSE_MAX_ITER = 30
L1_LAMDA = 0.001
L1_MAX_ITER = 100
TV_LAMDA = 0.001
TV_MAX_ITER = 500
#: ||G||^2 of sigpy's 2-D circular finite difference is at most 4 per axis.
_FINITE_DIFFERENCE_NORM2 = 8.0


def _as_tensor(value: ArrayLike, name: str, device: Optional[torch.device] = None) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    elif not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    return value if device is None else value.to(device)


def _kspace(kspace: ArrayLike) -> torch.Tensor:
    k = _as_tensor(kspace, "kspace")
    if not k.is_complex():
        raise ValueError(f"kspace must be complex (coils, H, W), got dtype {k.dtype}")
    if k.ndim != 3:
        raise ValueError(f"kspace must be (coils, H, W), got shape {tuple(k.shape)}")
    return k.to(torch.complex64)


def _maps(coil_maps: ArrayLike, kspace: torch.Tensor) -> torch.Tensor:
    s = _as_tensor(coil_maps, "coil_maps", kspace.device)
    if not s.is_complex():
        raise ValueError(f"coil_maps must be complex (coils, H, W), got dtype {s.dtype}")
    if s.shape != kspace.shape:
        raise ValueError(f"coil_maps must have the k-space shape {tuple(kspace.shape)}, got {tuple(s.shape)}")
    return s.to(torch.complex64)


def _mask(mask: ArrayLike, kspace: torch.Tensor) -> torch.Tensor:
    m = _as_tensor(mask, "mask", kspace.device)
    if m.is_complex():
        raise ValueError("mask must be real (1 = sampled, 0 = not sampled), got a complex tensor")
    try:
        m = torch.broadcast_to(m, kspace.shape[-2:])
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(m.shape)} does not broadcast to the image size {tuple(kspace.shape[-2:])}"
        ) from None
    m = m.to(torch.float32)
    if bool((m < 0).any()) or not bool((m > 0).any()):
        raise ValueError("mask must be non-negative with at least one sampled location")
    return m


def rss(coil_images: ArrayLike) -> torch.Tensor:
    """Root-sum-of-squares magnitude over the coil dimension (-3): (..., coils, H, W) -> (..., H, W).

    >>> import torch
    >>> rss(torch.full((4, 2, 2), 0.5 + 0j))
    tensor([[1., 1.],
            [1., 1.]])
    """
    x = _as_tensor(coil_images, "coil_images")
    if x.ndim < 3:
        raise ValueError(f"coil_images must be (..., coils, H, W), got shape {tuple(x.shape)}")
    return x.abs().pow(2).sum(dim=-3).sqrt()


def coil_combine(coil_images: ArrayLike, coil_maps: ArrayLike) -> torch.Tensor:
    """Coil combination with sensitivity maps, sum_c conj(s_c) x_c: (..., coils, H, W) -> (..., H, W).

    >>> import torch
    >>> maps = torch.full((4, 2, 2), 0.5 + 0j)
    >>> coil_combine(maps * (2 + 1j), maps)[0, 0]
    tensor(2.+1.j)
    """
    x = _as_tensor(coil_images, "coil_images")
    s = _as_tensor(coil_maps, "coil_maps", x.device)
    if not (x.is_complex() and s.is_complex()):
        raise ValueError(f"coil_images and coil_maps must be complex, got {x.dtype} and {s.dtype}")
    if x.ndim < 3 or s.shape[-3:] != x.shape[-3:]:
        raise ValueError(
            f"coil_maps {tuple(s.shape)} must match coil_images (..., coils, H, W) {tuple(x.shape)}"
        )
    return (s.conj() * x).sum(dim=-3)


def zero_filled(
    kspace: ArrayLike, coil_maps: Optional[ArrayLike] = None, *, mask: Optional[ArrayLike] = None
) -> torch.Tensor:
    """Zero-filled reconstruction (H, W) complex64: S^H F^H k with maps, else the RSS of F^H k.

    Without maps the result is the RSS magnitude stored as a complex tensor (zero phase), so every
    reconstruction here has the same type. ``mask`` (optional) zeroes unsampled k-space first.

    >>> import torch
    >>> image = torch.randn(16, 16, dtype=torch.complex64)
    >>> from ugodit_pl.complex import fft2c
    >>> torch.allclose(zero_filled(fft2c(image)[None], torch.ones(1, 16, 16, dtype=torch.complex64)), image, atol=1e-5)
    True
    """
    k = _kspace(kspace)
    if mask is not None:
        k = k * _mask(mask, k)
    coil_images = ifft2c(k)
    if coil_maps is None:
        return rss(coil_images).to(torch.complex64)
    return coil_combine(coil_images, _maps(coil_maps, k))


def _scaled(kspace: ArrayLike, mask: ArrayLike, coil_maps: ArrayLike):
    """Validated tensors (k-space scaled so that the zero-filled coil-combined image has max 1, mask, maps),
    the scale, and the step size 1 / L of the SENSE model (L: the Lipschitz bound of the module docstring)."""
    k = _kspace(kspace)
    m = _mask(mask, k)
    s = _maps(coil_maps, k)
    k = k * m
    scale = float(coil_combine(ifft2c(k), s).abs().max())
    if scale == 0.0:
        raise ValueError("the zero-filled coil-combined image is zero: no signal in kspace (or coil_maps)")
    lipschitz = float(s.abs().pow(2).sum(dim=0).max()) * float(m.max())
    return k / scale, m, s, scale, 1.0 / lipschitz


def _prepare(kspace: ArrayLike, mask: ArrayLike, coil_maps: ArrayLike):
    """Validated numpy inputs for sigpy, the k-space scale, the step size and the output device."""
    k, m, s, scale, step = _scaled(kspace, mask, coil_maps)
    to_np = lambda t: t.detach().cpu().numpy()  # noqa: E731
    return to_np(k), to_np(m), to_np(s), scale, step, k.device


def _finish(image: np.ndarray, scale: float, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.complex64) * scale).to(device)


def sense(
    kspace: ArrayLike,
    mask: ArrayLike,
    coil_maps: ArrayLike,
    lamda: float = SENSE_LAMDA,
    max_iter: int = SENSE_MAX_ITER,
) -> torch.Tensor:
    """CG-SENSE (sigpy ``SenseRecon``): argmin_x 1/2 ||P F S x - y||^2 + lamda/2 ||x||^2, complex (H, W).

    ``lamda`` is relative to the k-space scaled so that the zero-filled coil-combined image has max 1.
    Defaults (lamda 0.01, 30 conjugate-gradient iterations) were chosen on the real brain
    (espirit_brain_full.h5) at 4x and 8x (1-D random masks, oracle ESPIRiT maps): smaller lamda
    amplifies noise at 8x, larger blurs at 4x.

    >>> import torch
    >>> from ugodit_pl.complex import fft2c
    >>> maps = torch.ones(1, 16, 16, dtype=torch.complex64)
    >>> image = torch.randn(16, 16, dtype=torch.complex64)
    >>> x = sense(fft2c(image)[None], torch.ones(16, 16), maps, lamda=0.0)
    >>> torch.allclose(x, image, atol=1e-4)
    True
    """
    from sigpy.mri.app import SenseRecon

    if lamda < 0 or max_iter < 1:
        raise ValueError(f"lamda must be >= 0 and max_iter >= 1, got lamda={lamda}, max_iter={max_iter}")
    y, m, s, scale, _, device = _prepare(kspace, mask, coil_maps)
    app = SenseRecon(y, s, lamda=lamda, weights=m, max_iter=max_iter, show_pbar=False)
    return _finish(app.run(), scale, device)


def l1_wavelet(
    kspace: ArrayLike,
    mask: ArrayLike,
    coil_maps: ArrayLike,
    lamda: float = L1_LAMDA,
    max_iter: int = L1_MAX_ITER,
    wave_name: str = "db4",
) -> torch.Tensor:
    """L1-wavelet compressed sensing (sigpy ``L1WaveletRecon``), complex (H, W).

    argmin_x 1/2 ||P F S x - y||^2 + lamda ||W x||_1 by accelerated proximal gradient (FISTA) with
    ``max_iter`` iterations; ``lamda`` is relative to the k-space scaled so that the zero-filled
    coil-combined image has max 1. Defaults (lamda 0.001, 100 iterations, Daubechies-4) were chosen
    on the real brain (espirit_brain_full.h5) at 4x and 8x (1-D random masks, oracle ESPIRiT maps).
    100 iterations stop short of the minimiser, and that helps: at 400 or 1500 the oracle-lambda PSNR of
    every real-MRI panel problem is 0.2 to 0.6 dB lower (decision 23 of ``benchmarks/results/decisions.md``).

    >>> import torch
    >>> from ugodit_pl.complex import fft2c
    >>> maps = torch.ones(1, 16, 16, dtype=torch.complex64)
    >>> l1_wavelet(fft2c(torch.ones(16, 16, dtype=torch.complex64))[None], torch.ones(16, 16), maps).shape
    torch.Size([16, 16])
    """
    from sigpy.mri.app import L1WaveletRecon

    if lamda < 0 or max_iter < 1:
        raise ValueError(f"lamda must be >= 0 and max_iter >= 1, got lamda={lamda}, max_iter={max_iter}")
    y, m, s, scale, step, device = _prepare(kspace, mask, coil_maps)
    app = L1WaveletRecon(
        y, s, lamda=lamda, weights=m, wave_name=wave_name, max_iter=max_iter, alpha=step, show_pbar=False
    )
    return _finish(app.run(), scale, device)


def tv_step_ratio(start: torch.Tensor, lamda: float) -> float:
    """tau / sigma for primal-dual hybrid gradient on 1/2 ||A x - y||^2 + lamda ||G x||_1 from the
    image ``start`` (H, W), the zero-filled coil-combined one in the solver's units.

    The method's error bound after k steps, ||x* - x0||^2 / tau + ||u* - u0||^2 / sigma over k, is least
    for a fixed tau * sigma when tau / sigma = ||x* - x0|| / ||u* - u0||. From zero, x* is about the
    zero-filled image (root mean square r per pixel), and the dual of the TV term, which dominates
    u*, is at most lamda per finite difference (two per pixel): the ratio r / (sqrt(2) lamda). With
    lamda = 0 there is no TV dual, and the ratio is 1.

    >>> import torch
    >>> round(tv_step_ratio(torch.full((4, 4), 0.5), 1e-3), 1)
    353.6
    """
    if lamda <= 0:
        return 1.0
    return max(float(start.abs().pow(2).mean().sqrt()), 1e-12) / (math.sqrt(2.0) * lamda)


def total_variation(
    kspace: ArrayLike,
    mask: ArrayLike,
    coil_maps: ArrayLike,
    lamda: float = TV_LAMDA,
    max_iter: int = TV_MAX_ITER,
    step_ratio: Optional[float] = None,
) -> torch.Tensor:
    """Total-variation compressed sensing, complex (H, W), on the k-space's device.

    argmin_x 1/2 ||P F S x - y||^2 + lamda ||G x||_1 (G: circular finite differences along both axes,
    anisotropic TV of the complex image) by primal-dual hybrid gradient with ``max_iter`` iterations
    (:func:`_tv_pdhg`: sigpy ``TotalVariationRecon``'s iteration, in torch); ``lamda`` is
    relative to the k-space scaled so that the zero-filled coil-combined image has max 1. The steps
    satisfy tau * sigma * (L + 8) = 1 (L the Lipschitz bound of the SENSE model, 8 bounds ||G||^2; no
    randomly started power iteration runs), and their ratio tau / sigma is ``step_ratio``, by default
    :func:`tv_step_ratio`'s estimate of the ratio of the primal and dual solutions' norms. sigpy's own
    steps (sigma 1, tau 1 / (L + 8)) stay far from the minimiser after its default 100 iterations: on the
    real-MRI panel 0.5 to 3.7 dB below it in PSNR (oracle lambda), 500 of them still 3.5 to 9 % above
    the minimum objective at lambda <= 1e-3. With the default ratio 500 iterations come within 0.2 % of
    it at every lambda of ``lamda_rules.LAMDA_GRID`` on the three panel problems measured (decision 23
    of ``benchmarks/results/decisions.md``). The default lamda 0.001 is L1-wavelet's; choose it from the
    data with :func:`ugodit_pl.lamda_rules.automatic_lamda`.

    >>> import torch
    >>> from ugodit_pl.complex import fft2c
    >>> maps = torch.ones(1, 16, 16, dtype=torch.complex64)
    >>> flat = torch.ones(16, 16, dtype=torch.complex64)
    >>> torch.allclose(total_variation(fft2c(flat)[None], torch.ones(16, 16), maps, lamda=0.01), flat, atol=1e-3)
    True
    """
    if lamda < 0 or max_iter < 1 or (step_ratio is not None and not step_ratio > 0):
        raise ValueError(f"lamda must be >= 0, max_iter >= 1 and step_ratio > 0 (or None), got lamda={lamda}, "
                         f"max_iter={max_iter}, step_ratio={step_ratio}")
    k, m, s, scale, step = _scaled(kspace, mask, coil_maps)
    tau, sigma = _tv_steps(k, s, step, lamda, step_ratio)
    return _tv_pdhg(k, m, s, lamda, max_iter, tau, sigma) * scale


def _tv_steps(k: torch.Tensor, s: torch.Tensor, step: float, lamda: float, step_ratio: Optional[float]):
    """(tau, sigma) of :func:`_tv_pdhg` for the scaled k-space ``k``, maps ``s`` and SENSE step 1 / L: tau sigma
    (L + 8) = 1, and tau / sigma = ``step_ratio`` (None: :func:`tv_step_ratio` of the zero-filled image)."""
    if step_ratio is None:
        step_ratio = tv_step_ratio(coil_combine(ifft2c(k), s), lamda)
    norm2 = 1.0 / step + _FINITE_DIFFERENCE_NORM2
    return math.sqrt(step_ratio / norm2), 1.0 / math.sqrt(step_ratio * norm2)


@torch.no_grad()
def _tv_pdhg(k: torch.Tensor, m: torch.Tensor, s: torch.Tensor, lamda: float, max_iter: int, tau: float,
             sigma: float) -> torch.Tensor:
    """``max_iter`` iterations of primal-dual hybrid gradient (Chambolle and Pock 2011, theta = 1) from x = 0 on
    1/2 ||A x - d||^2 + lamda ||G x||_1 with A = sqrt(m) F S and d = sqrt(m) k (sigpy's weighted data; ``k``
    (coils, H, W) is already multiplied by ``m``), G x = (x - x shifted by one row, x - x shifted by one column),
    circular. Each iteration steps the dual of the data term to (u + sigma (A x_ext - d)) / (1 + sigma), that of
    the TV term to its projection on |v| <= lamda, the image to x - tau (A^H u + G^H v), and extrapolates to
    x_ext = 2 x - x_old: the iteration, steps and operators of sigpy's ``TotalVariationRecon`` with
    ``solver="PrimalDualHybridGradient"``, in torch on ``k``'s device (the same image to 1e-5: tests)."""
    # The centred FFT is fftshift . FFT . ifftshift: the iteration runs on ifftshift-ed images and k-space, where
    # it is the plain FFT (circular differences commute with the shift), and shifts the image back at the end.
    dims = (-2, -1)
    root = ifftshift(m.sqrt(), dims)
    data = root * ifftshift(k, dims)
    s = ifftshift(s, dims)
    s_conj = s.conj()
    x = torch.zeros(k.shape[-2:], dtype=k.dtype, device=k.device)
    extrapolated = torch.zeros_like(x)
    u = torch.zeros_like(k)  # the data term's dual
    v = torch.zeros((2, *k.shape[-2:]), dtype=k.dtype, device=k.device)  # the TV term's dual
    tiny = torch.finfo(v.real.dtype).tiny
    for _ in range(max_iter):
        u.add_(root * fft2(s * extrapolated, norm="ortho") - data, alpha=sigma).div_(1.0 + sigma)
        v[0].add_(extrapolated - extrapolated.roll(1, -2), alpha=sigma)
        v[1].add_(extrapolated - extrapolated.roll(1, -1), alpha=sigma)
        v.mul_((lamda / v.abs().clamp_min_(tiny)).clamp_(max=1.0))  # the projection on |v| <= lamda
        adjoint = (v[0] - v[0].roll(-1, -2)).add_(v[1] - v[1].roll(-1, -1))  # G^H v
        adjoint.add_((s_conj * ifft2(root * u, norm="ortho")).sum(dim=0))  # + A^H u
        extrapolated.copy_(x)
        x.sub_(adjoint, alpha=tau)
        extrapolated.mul_(-1.0).add_(x, alpha=2.0)  # 2 x - x_old
    return fftshift(x, dims)


def rss_target(kspace_full: ArrayLike) -> torch.Tensor:
    """The fastMRI target: RSS of the fully sampled coil images, a magnitude (H, W).

    >>> import torch
    >>> rss_target(torch.zeros(2, 8, 8, dtype=torch.complex64)).shape
    torch.Size([8, 8])
    """
    return rss(ifft2c(_kspace(kspace_full)))


def coil_combined_target(kspace_full: ArrayLike, coil_maps: ArrayLike) -> torch.Tensor:
    """The UGoDIT/DIP-code target |S^H F^H k_full|, a magnitude (H, W) (not normalised).

    >>> import torch
    >>> k = torch.randn(2, 8, 8, dtype=torch.complex64)
    >>> coil_combined_target(k, torch.zeros(2, 8, 8, dtype=torch.complex64)).abs().max()
    tensor(0.)
    """
    k = _kspace(kspace_full)
    return coil_combine(ifft2c(k), _maps(coil_maps, k)).abs()
