"""Image-quality metrics (PSNR, SSIM, NMSE) per sample, with the fastMRI and natural-image conventions.

Every metric takes (B, C, H, W) tensors and returns one value per sample, shape (B,).

Two SSIM conventions exist and this module offers both:

- ``window="uniform"``: fastMRI's ``evaluate.py`` (scikit-image ``structural_similarity`` defaults):
  a 7x7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance (N / (N - 1)), the mean over the
  pixels whose window lies inside the image, data_range = max of the target.
  Computed here directly in torch (``avg_pool2d``), because torchmetrics has no sample-covariance
  option and averages over reflect-padded borders (torchmetrics' uniform 7x7 SSIM differs from
  scikit-image's by up to 2e-3 on 40x36 test images); this one agrees with scikit-image to
  better than 1e-6 in float32 (the tests use 1e-5).
- ``window="gaussian"``: the natural-image convention (Wang et al. 2004; scikit-image with
  ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``): an 11x11 Gaussian window with
  sigma 1.5. Computed with torchmetrics' ``structural_similarity_index_measure``; its SSIM map is
  cropped to the pixels whose window lies inside the image (as scikit-image does) before averaging,
  which makes it agree with scikit-image to better than 1e-6 in float32 (uncropped torchmetrics
  differs by up to 3e-3).

PSNR uses torchmetrics' ``peak_signal_noise_ratio`` per sample (10 log10(data_range^2 / MSE)).

>>> import torch
>>> target = torch.rand(2, 1, 32, 32)
>>> psnr(target + 0.01, target, data_range=1.0).shape
torch.Size([2])
>>> reconstruction_metrics(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)).keys()
dict_keys(['psnr', 'ssim'])
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ugodit_pl.complex import magnitude

DataRange = Union[float, torch.Tensor, None]

__all__ = [
    "psnr",
    "ssim",
    "nmse",
    "center_crop",
    "mri_metrics",
    "volume_metrics",
    "image_metrics",
    "reconstruction_metrics",
]


def _check_pair(x: torch.Tensor, target: torch.Tensor) -> None:
    if x.ndim != 4 or target.ndim != 4:
        raise ValueError(
            f"x and target must be (B, C, H, W) tensors, got shapes {tuple(x.shape)} and {tuple(target.shape)}"
        )
    if x.shape != target.shape:
        raise ValueError(f"x and target must have the same shape, got {tuple(x.shape)} and {tuple(target.shape)}")
    if x.is_complex() or target.is_complex():
        raise ValueError("x and target must be real tensors (take the magnitude of complex images first)")


def _data_range(target: torch.Tensor, data_range: DataRange) -> torch.Tensor:
    """Per-sample data range (B,) as a tensor on target's device: given, or the max of each target sample."""
    batch = target.shape[0]
    if data_range is None:
        value = target.reshape(batch, -1).amax(dim=1)
    else:
        value = torch.as_tensor(data_range, dtype=target.dtype, device=target.device)
        if value.ndim == 0:
            value = value.expand(batch)
        value = value.reshape(-1)
        if value.numel() != batch:
            raise ValueError(f"data_range must be a number or have one value per sample ({batch}), got {value.numel()}")
    if bool((value <= 0).any()):
        raise ValueError(f"data_range must be positive, got {value.tolist()}")
    return value


def _per_sample(value: torch.Tensor) -> torch.Tensor:
    return value.reshape(-1, 1, 1, 1)


def psnr(x: torch.Tensor, target: torch.Tensor, data_range: DataRange = None) -> torch.Tensor:
    """Peak signal-to-noise ratio per sample (B,) in dB: 10 log10(data_range^2 / MSE).

    ``data_range``: a number, a (B,) tensor, or None for the max of each target sample (fastMRI).

    >>> import torch
    >>> t = torch.ones(1, 1, 4, 4)
    >>> psnr(t * 0.9, t).round(decimals=2)
    tensor([20.])
    """
    _check_pair(x, target)
    scale = _per_sample(_data_range(target, data_range))
    # PSNR is invariant to scaling both images and the range, so per-sample ranges become 1.
    return peak_signal_noise_ratio(x / scale, target / scale, data_range=1.0, reduction="none", dim=(1, 2, 3))


def _ssim_uniform(x: torch.Tensor, target: torch.Tensor, window_size: int, k1: float, k2: float) -> torch.Tensor:
    """SSIM per sample of images already divided by their data range (so the range is 1), uniform window.

    The formula of scikit-image's ``structural_similarity`` (the fastMRI one): local means by a
    uniform filter, (co)variances with the sample-covariance factor N / (N - 1), the SSIM map
    averaged over the "valid" pixels (window fully inside the image) and over channels.
    """
    n = window_size * window_size
    cov_norm = n / (n - 1.0)
    stack = torch.cat((x, target, x * x, target * target, x * target), dim=1)
    means = F.avg_pool2d(stack, window_size, stride=1)
    ux, uy, uxx, uyy, uxy = means.chunk(5, dim=1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = k1**2, k2**2
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def _ssim_gaussian(x: torch.Tensor, target: torch.Tensor, sigma: float, k1: float, k2: float) -> torch.Tensor:
    """SSIM per sample (range 1) with torchmetrics' Gaussian window, averaged over the valid pixels."""
    _, full = structural_similarity_index_measure(
        x, target, gaussian_kernel=True, sigma=sigma, data_range=1.0, k1=k1, k2=k2,
        reduction="none", return_full_image=True,
    )
    pad = int(3.5 * sigma + 0.5)  # torchmetrics' (and scikit-image's) Gaussian window radius
    return full[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3))


def ssim(
    x: torch.Tensor,
    target: torch.Tensor,
    data_range: DataRange = None,
    *,
    window: Literal["gaussian", "uniform"] = "gaussian",
    window_size: Optional[int] = None,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per sample (B,), averaged over channels and valid pixels.

    ``window="gaussian"`` (natural images; scikit-image ``gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False``): Gaussian window of std ``sigma``, size 2*int(3.5*sigma+0.5)+1
    (11 for sigma 1.5). ``window="uniform"`` (fastMRI; scikit-image defaults): a ``window_size``
    (default 7) square uniform window with sample covariance. ``data_range``: a number, a (B,)
    tensor or None for the max of each target sample. Images must be at least the window's size.

    >>> import torch
    >>> t = torch.rand(2, 1, 16, 16)
    >>> ssim(t, t, window="uniform").tolist()
    [1.0, 1.0]
    """
    _check_pair(x, target)
    if window not in ("gaussian", "uniform"):
        raise ValueError(f"window must be 'gaussian' or 'uniform', got {window!r}")
    if window == "gaussian":
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        size = 2 * int(3.5 * sigma + 0.5) + 1
        if window_size is not None and window_size != size:
            raise ValueError(
                f"window='gaussian' with sigma={sigma} has size {size} (2*int(3.5*sigma+0.5)+1), "
                f"got window_size={window_size}"
            )
    else:
        size = 7 if window_size is None else int(window_size)
        if size < 3 or size % 2 == 0:
            raise ValueError(f"window_size must be an odd integer >= 3, got {window_size}")
    if min(x.shape[-2:]) < size:
        raise ValueError(f"images of size {tuple(x.shape[-2:])} are smaller than the {size}x{size} SSIM window")
    scale = _per_sample(_data_range(target, data_range))
    # SSIM with range D on (x, t) equals SSIM with range 1 on (x / D, t / D).
    xs, ts = x / scale, target / scale
    if window == "gaussian":
        return _ssim_gaussian(xs, ts, sigma, k1, k2)
    return _ssim_uniform(xs, ts, size, k1, k2)


def nmse(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Normalised mean squared error per sample (B,): ||target - x||^2 / ||target||^2.

    >>> import torch
    >>> t = torch.ones(1, 1, 4, 4)
    >>> nmse(t * 0.5, t)
    tensor([0.2500])
    """
    _check_pair(x, target)
    err = (target - x).reshape(x.shape[0], -1).pow(2).sum(dim=1)
    return err / target.reshape(x.shape[0], -1).pow(2).sum(dim=1)


def center_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Centre crop of the last two dimensions to ``shape`` = (h, w) (fastMRI's offsets: (H - h) // 2).

    >>> import torch
    >>> center_crop(torch.arange(16.).reshape(4, 4), (2, 2))
    tensor([[ 5.,  6.],
            [ 9., 10.]])
    """
    if len(shape) != 2:
        raise ValueError(f"shape must be (height, width), got {tuple(shape)}")
    h, w = int(shape[0]), int(shape[1])
    height, width = x.shape[-2:]
    if not (0 < h <= height and 0 < w <= width):
        raise ValueError(f"cannot centre-crop an image of size {(height, width)} to {(h, w)}")
    top, left = (height - h) // 2, (width - w) // 2
    return x[..., top : top + h, left : left + w]


def mri_metrics(
    recon: torch.Tensor, target: torch.Tensor, *, crop: bool = True, data_range: DataRange = None
) -> dict[str, torch.Tensor]:
    """fastMRI-convention metrics per sample: ``{"psnr", "ssim", "nmse"}``, each (B,).

    ``recon``: (B, 2, H, W) real/imaginary (its magnitude is used), (B, 1, H, W) magnitude or
    complex (B, H, W). ``target``: magnitude (B, 1, Ht, Wt). With ``crop`` both are centre-cropped
    to the target size (or the smaller of the two sizes per axis). ``data_range`` defaults to the
    max of each target slice; fastMRI uses the max of the whole volume, pass it to match.
    SSIM uses the 7x7 uniform window (fastMRI's evaluate).

    >>> import torch
    >>> target = torch.rand(2, 1, 24, 20)
    >>> recon = torch.zeros(2, 2, 32, 32); recon[:, 0, 4:28, 6:26] = target[:, 0]
    >>> mri_metrics(recon, target)["nmse"]
    tensor([0., 0.])
    """
    mag = magnitude(recon)
    if target.ndim != 4 or target.shape[1] != 1 or target.is_complex():
        raise ValueError(f"target must be a real magnitude (B, 1, H, W), got {target.dtype} {tuple(target.shape)}")
    if mag.shape[0] != target.shape[0]:
        raise ValueError(f"recon and target batch sizes differ: {mag.shape[0]} vs {target.shape[0]}")
    if crop:
        shape = (min(mag.shape[-2], target.shape[-2]), min(mag.shape[-1], target.shape[-1]))
        mag, target = center_crop(mag, shape), center_crop(target, shape)
    elif mag.shape != target.shape:
        raise ValueError(
            f"with crop=False recon and target sizes must match, got {tuple(mag.shape)} and {tuple(target.shape)}"
        )
    mag = mag.to(target.dtype)
    dr = _data_range(target, data_range)
    return {
        "psnr": psnr(mag, target, dr),
        "ssim": ssim(mag, target, dr, window="uniform"),
        "nmse": nmse(mag, target),
    }


def volume_metrics(recon: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """fastMRI's ``evaluate`` of one volume: ``{"psnr", "ssim", "nmse"}``, each a 0-d tensor.

    ``recon`` and ``target`` are the volume's magnitude slices (S, 1, H, W). PSNR and NMSE are taken over
    the whole volume, SSIM is the mean over the slices, all with the volume's maximum as the data range
    (the per-slice figures of :func:`mri_metrics` use each slice's own maximum, and their mean is not
    the volume's PSNR).

    >>> import torch
    >>> target = torch.rand(3, 1, 16, 16)
    >>> round(float(volume_metrics(target, target)["nmse"]), 6)
    0.0
    """
    _check_pair(recon, target)
    recon, target = recon.double(), target.double()
    peak = target.max()
    mse = (recon - target).pow(2).mean()
    return {
        "psnr": 10 * torch.log10(peak**2 / mse),
        "ssim": ssim(recon, target, peak, window="uniform").mean(),
        "nmse": (recon - target).pow(2).sum() / target.pow(2).sum(),
    }


def image_metrics(x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Natural-image metrics per sample: ``{"psnr", "ssim"}``, each (B,); images in [0, 1].

    ``x`` is clamped to [0, 1]; data_range 1; SSIM with the 11x11 Gaussian window (sigma 1.5).

    >>> import torch
    >>> t = torch.rand(1, 3, 16, 16)
    >>> image_metrics(t + 2.0, t)["psnr"] < 10
    tensor([True])
    """
    _check_pair(x, target)
    x = x.clamp(0.0, 1.0)
    return {"psnr": psnr(x, target, 1.0), "ssim": ssim(x, target, 1.0, window="gaussian")}


def reconstruction_metrics(output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Metrics with the convention the shapes imply (what callbacks and benchmarks call).

    A 2-channel (real/imaginary) or complex ``output`` with a 1-channel ``target`` is MRI:
    :func:`mri_metrics` (psnr, ssim, nmse). Anything else is a natural image in [0, 1]:
    :func:`image_metrics` (psnr, ssim).

    >>> import torch
    >>> sorted(reconstruction_metrics(torch.rand(1, 2, 16, 16), torch.rand(1, 1, 16, 16)))
    ['nmse', 'psnr', 'ssim']
    """
    is_mri = target.ndim == 4 and target.shape[1] == 1 and (
        output.is_complex() or (output.ndim == 4 and output.shape[1] == 2)
    )
    if is_mri:
        return mri_metrics(output, target)
    return image_metrics(output, target)
