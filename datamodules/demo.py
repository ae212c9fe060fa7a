"""Embedded data: real MRI images and photographs that installed packages ship, simulated into multi-coil MRI.

Nothing is downloaded: the images are files that the installed wheels ship (read directly from
there; ``skimage.data``'s loader functions, which may fetch files with pooch, are never called).

- :func:`real_mri_slices`: real MRI magnitude images: matplotlib's sample head MRI (``"s1045"``, one
  sagittal T1-weighted slice, 256 x 256) and nibabel's test volume (``"example4d"``, 24 adjacent
  axial echo-planar brain slices, 128 x 96); both packages are dependencies.
- :func:`make_real_mri_demo`: those real slices, padded to a square and resized, simulated into one
  multi-coil file (the MRI demo's data).
- :func:`write_simulated_mri` turns magnitude images into a fastMRI-format HDF5 file, so that
  simulated data go through the same reader as real data: each slice (magnitude, max 1) gets a
  smooth random phase, is multiplied by birdcage coil sensitivities (``sigpy.mri.birdcage_maps``,
  root-sum-of-squares 1) and Fourier transformed (centred, orthonormal), and complex Gaussian noise
  of standard deviation ``noise_std`` is added (0.011 of the image maximum per coil is what the real
  brain of ../shared/data shows); ``reconstruction_rss`` is the root-sum-of-squares of the fully
  sampled coil images (noise included, as in fastMRI). Deterministic for a ``seed``.
- :func:`make_mri_demo` does that for scikit-image's bundled photographs (cut to a soft-edged ellipse
  inside the field of view: MRI objects have empty background around them); :func:`demo_images`
  writes the photographs as RGB PNGs for :class:`~ugodit_pl.datamodules.DegradedImageDataModule`.

>>> import tempfile
>>> paths = make_mri_demo(tempfile.mkdtemp(), num_files=1, num_slices=2, size=(32, 32), num_coils=4)
>>> import h5py; h5py.File(paths[0])["kspace"].shape
(2, 4, 32, 32)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ugodit_pl.arguments import check_choice
from ugodit_pl.atomic import atomic_path
from ugodit_pl.complex import fft2c, ifft2c

from .errors import DataError
from .fastmri_io import write_fastmri_volume
from .image_io import read_rgb, resize_square, square_crop

__all__ = [
    "DEMO_IMAGE_NAMES",
    "MRI_IMAGE_NAMES",
    "REAL_MRI_SOURCES",
    "bundled_image",
    "bundled_image_names",
    "demo_images",
    "make_mri_demo",
    "make_real_mri_demo",
    "real_mri_slices",
    "write_simulated_mri",
]

DEMO_IMAGE_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left")
"""Colour photographs used by :func:`demo_images` by default."""

MRI_IMAGE_NAMES = ("camera", "astronaut", "chelsea", "coffee", "rocket", "moon", "motorcycle_left", "coins", "brick", "grass")
"""Photographs (converted to grayscale) used by :func:`make_mri_demo`, one per slice, in this order."""

_SUFFIXES = (".png", ".jpg")
_LUMINANCE = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)  # ITU-R BT.709, as skimage's rgb2gray


def _data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).resolve().parent / "data"


def bundled_image_names() -> list[str]:
    """Names of the images bundled with the installed scikit-image (files in ``skimage/data``)."""
    folder = _data_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.iterdir() if p.suffix in _SUFFIXES)


def bundled_image(name: str) -> np.ndarray:
    """The bundled photograph ``name`` (e.g. ``"astronaut"``) as (H, W, 3) float32 RGB in [0, 1].

    >>> bundled_image("camera").shape
    (512, 512, 3)
    """
    for suffix in _SUFFIXES:
        path = _data_dir() / f"{name}{suffix}"
        if path.is_file():
            return read_rgb(path)
    raise DataError(
        f"scikit-image has no bundled image {name!r} in {_data_dir()}; available: {', '.join(bundled_image_names())}"
    )


def demo_images(
    out_dir: str | os.PathLike, size: int = 256, names: Sequence[str] = DEMO_IMAGE_NAMES
) -> list[Path]:
    """Write the photographs ``names`` as ``<name>.png`` (RGB, centre square resized to ``size``) in ``out_dir``.

    >>> import tempfile
    >>> [p.name for p in demo_images(tempfile.mkdtemp(), size=32, names=["coffee", "chelsea"])]
    ['coffee.png', 'chelsea.png']
    """
    from PIL import Image

    if not names:
        raise ValueError("names must list at least one bundled image")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        image = resize_square(square_crop(bundled_image(name)), int(size))
        pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
        path = out / f"{name}.png"
        with atomic_path(path) as temporary:
            Image.fromarray(pixels).save(temporary, format="PNG")
        paths.append(path)
    return paths


def make_mri_demo(
    out_dir: str | os.PathLike,
    num_files: int = 2,
    num_slices: int = 3,
    size: Sequence[int] = (128, 128),
    num_coils: int = 8,
    seed: int = 0,
    noise_std: float = 0.005,
    names: Sequence[str] = MRI_IMAGE_NAMES,
) -> list[Path]:
    """Write ``num_files`` fastMRI-format files ``demo_mri_00.h5``, ... of ``num_slices`` slices each.

    Slice s of file f shows photograph ``names[(f * num_slices + s) % len(names)]`` (flipped when the
    list is reused), as (H, W) = ``size``; ``kspace`` is (num_slices, num_coils, H, W) complex64.
    """
    height, width = (int(s) for s in size)
    if num_files < 1 or num_slices < 1 or min(height, width) < 8:
        raise ValueError(f"need num_files, num_slices >= 1 and size >= 8, got {num_files}, {num_slices}, {tuple(size)}")
    if not names:
        raise ValueError("names must list at least one bundled image")
    paths = []
    for f in range(num_files):
        numbers = [f * num_slices + s for s in range(num_slices)]
        used = [names[n % len(names)] for n in numbers]
        images = np.stack([_grayscale(names[n % len(names)], (height, width), variant=n // len(names)) for n in numbers])
        paths.append(write_simulated_mri(
            Path(out_dir) / f"demo_mri_{f:02d}.h5", images, num_coils=num_coils, seed=(seed, f),
            noise_std=noise_std, source="scikit-image bundled photographs " + ", ".join(used),
            acquisition="DEMO_SKIMAGE_PHOTOGRAPHS"))
    return paths


def write_simulated_mri(
    path: str | os.PathLike,
    magnitudes: np.ndarray,
    *,
    num_coils: int = 8,
    seed: int | Sequence[int] = 0,
    noise_std: float = 0.011,
    source: str = "",
    acquisition: str = "SIMULATED",
    phase_reference: Optional[np.ndarray] = None,
    phase_across_slices: str = "independent",
) -> Path:
    """Write (S, H, W) magnitude images (each scaled to maximum 1) as a simulated multi-coil fastMRI file.

    ``seed`` (an int or a sequence of ints) seeds the phase and the noise of every slice. The phase is
    one smooth random quadratic, unless ``phase_reference`` (a complex image of a real scan) is given:
    then it is :func:`realistic_phase`, that scan's low-resolution phase plus fine random texture. One
    smooth phase flatters image priors; real phase varies across the object.

    ``phase_across_slices``: ``"independent"`` draws each slice's phase on its own (slices that are not
    neighbours, e.g. a panel's test slice and its pre-training group); ``"shared"`` draws the slowly
    varying part once for the file (the quadratic, or the reference's low-resolution phase with its flips
    and offset) and only the fine texture per slice, as in the neighbouring slices of one real scan,
    whose phase (field inhomogeneity, receive chain) changes little from one slice to the next.

    >>> import tempfile
    >>> path = write_simulated_mri(Path(tempfile.mkdtemp()) / "a.h5", np.ones((2, 16, 12)), num_coils=4)
    >>> import h5py; h5py.File(path)["kspace"].shape
    (2, 4, 16, 12)
    """
    import sigpy.mri

    magnitudes = np.asarray(magnitudes, dtype=np.float32)
    if magnitudes.ndim != 3 or min(magnitudes.shape[1:]) < 8 or not np.isfinite(magnitudes).all():
        raise ValueError(f"magnitudes must be finite (S, H, W) images with H, W >= 8, got shape {magnitudes.shape}")
    if num_coils < 1 or not noise_std >= 0:
        raise ValueError(f"need num_coils >= 1 and noise_std >= 0, got {num_coils} and {noise_std}")
    check_choice("phase_across_slices", phase_across_slices, PHASE_ACROSS_SLICES)
    slices, height, width = magnitudes.shape
    maps = torch.from_numpy(sigpy.mri.birdcage_maps((num_coils, height, width)).astype(np.complex64))
    kspace = np.empty((slices, num_coils, height, width), dtype=np.complex64)
    seeds = np.atleast_1d(seed).tolist()
    shared = None
    if phase_across_slices == "shared":  # its own stream: the slices' noise stays what it was
        volume_rng = np.random.default_rng([*seeds, slices, 2**31])
        shared = (_smooth_phase((height, width), volume_rng) if phase_reference is None
                  else low_resolution_phase(phase_reference, (height, width), volume_rng))
    for s, magnitude in enumerate(magnitudes):
        rng = np.random.default_rng([*seeds, s])
        peak = float(magnitude.max()) or 1.0
        if shared is None:
            angle = (_smooth_phase((height, width), rng) if phase_reference is None
                     else realistic_phase(phase_reference, (height, width), rng))
        else:
            angle = shared if phase_reference is None else shared + phase_texture((height, width), rng)
        phase = np.exp(1j * angle)
        image = torch.from_numpy((magnitude / peak * phase).astype(np.complex64))
        coil_kspace = fft2c(maps * image).numpy()
        noise = rng.standard_normal((2,) + coil_kspace.shape).astype(np.float32) * (noise_std / np.sqrt(2))
        kspace[s] = coil_kspace + noise[0] + 1j * noise[1]
    rss = ifft2c(torch.from_numpy(kspace)).abs().pow(2).sum(1).sqrt().numpy()
    attrs = {
        "max": float(rss.max()),
        "norm": float(np.linalg.norm(rss)),
        "acquisition": acquisition,
        "patient_id": f"simulated_seed{np.atleast_1d(seed).tolist()}",
        "source": f"{source}; sigpy birdcage coil maps, "
                  f"{'smooth random phase' if phase_reference is None else 'realistic phase (a real scan, low-pass, plus texture)'}"
                  f"{', its slowly varying part shared by the slices' if phase_across_slices == 'shared' else ''}"
                  f", complex noise std {noise_std}",
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_fastmri_volume(path, kspace, reconstruction_rss=rss, attrs=attrs)
    return path


REAL_MRI_SOURCES = ("s1045", "example4d")


def real_mri_slices(source: str) -> np.ndarray:
    """Real MRI magnitude slices that an installed package ships, (S, H, W) float32 (see the module docstring).

    >>> real_mri_slices("s1045").shape
    (1, 256, 256)
    """
    if source == "s1045":
        import gzip

        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "s1045.ima.gz"
        with gzip.open(path) as stream:
            pixels = np.frombuffer(stream.read(), dtype="<u2")
        return pixels.reshape(1, 256, 256).astype(np.float32)
    if source == "example4d":
        import nibabel

        path = Path(nibabel.__file__).resolve().parent / "tests" / "data" / "example4d.nii.gz"
        volume = np.asarray(nibabel.load(path).dataobj, dtype=np.float32)[..., 0]  # (128, 96, 24), first volume
        return np.ascontiguousarray(np.moveaxis(volume, -1, 0))
    raise DataError(f"unknown real MRI source {source!r}; known: {', '.join(REAL_MRI_SOURCES)}")


def make_real_mri_demo(
    path: str | os.PathLike,
    slices: Sequence[tuple[str, int]],
    size: int = 96,
    *,
    num_coils: int = 8,
    seed: int = 0,
    noise_std: float = 0.011,
) -> Path:
    """Write the real MRI slices ``slices`` ((source, index) pairs of :func:`real_mri_slices`) as one
    simulated ``num_coils``-coil fastMRI-format file, each zero-padded to a square and resized to
    ``size`` x ``size`` (bicubic, anti-aliased), in the order given.

    >>> import tempfile
    >>> path = make_real_mri_demo(Path(tempfile.mkdtemp()) / "d.h5", [("s1045", 0), ("example4d", 12)], size=32)
    >>> import h5py; h5py.File(path)["kspace"].shape
    (2, 8, 32, 32)
    """
    from skimage.transform import resize

    if int(size) < 8 or not slices:
        raise ValueError(f"need size >= 8 and at least one slice, got size {size} and {len(slices)} slices")
    images, names = [], []
    for source, index in slices:
        volume = real_mri_slices(source)
        if not 0 <= int(index) < len(volume):
            raise DataError(f"real MRI source {source!r} has {len(volume)} slices, got index {index}")
        image = np.clip(volume[int(index)], 0.0, None)
        side = max(image.shape)
        rows, cols = side - image.shape[0], side - image.shape[1]
        image = np.pad(image, ((rows // 2, rows - rows // 2), (cols // 2, cols - cols // 2)))
        image = resize(image, (int(size), int(size)), order=3, anti_aliasing=side > int(size), mode="constant")
        images.append(np.clip(image, 0.0, None))
        names.append(f"{source}[{index}]")
    return write_simulated_mri(path, np.stack(images), num_coils=num_coils, seed=seed, noise_std=noise_std,
                               source="real MRI " + ", ".join(names) + f" padded square, resized to {size}",
                               acquisition="SIMULATED_FROM_REAL_MRI")


def _grayscale(name: str, size: tuple[int, int], variant: int) -> np.ndarray:
    """The photograph as a (H, W) float32 magnitude with maximum 1 (cropped to the aspect ratio of ``size``)."""
    from skimage.transform import resize

    gray = bundled_image(name) @ _LUMINANCE
    height, width = size
    rows, cols = gray.shape
    if rows * width > cols * height:  # too tall: crop rows
        keep = max(1, round(cols * height / width))
        gray = gray[(rows - keep) // 2 : (rows - keep) // 2 + keep]
    else:
        keep = max(1, round(rows * width / height))
        gray = gray[:, (cols - keep) // 2 : (cols - keep) // 2 + keep]
    gray = resize(gray, size, order=3, anti_aliasing=gray.shape[0] > height, mode="reflect")
    gray = np.clip(gray, 0.0, None)
    if variant % 2 == 1:
        gray = gray[:, ::-1]
    if (variant // 2) % 2 == 1:
        gray = gray[::-1]
    gray = gray * _support(size)
    peak = gray.max()
    return np.ascontiguousarray(gray / peak if peak > 0 else gray, dtype=np.float32)


def _support(size: tuple[int, int]) -> np.ndarray:
    """A centred ellipse (semi-axes 45% of the field of view) with a soft edge: the object of an MRI slice
    lies inside the field of view, with empty background around it (which ESPIRiT relies on)."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, size[0]), np.linspace(-1, 1, size[1]), indexing="ij")
    radius = np.sqrt((yy / 0.9) ** 2 + (xx / 0.9) ** 2)
    return (0.5 * (1.0 - np.tanh((radius - 1.0) / 0.03))).astype(np.float32)


#: How the slices of one simulated file share their phase (``write_simulated_mri``).
PHASE_ACROSS_SLICES = ("independent", "shared")
#: The k-space block of the real scan kept for its low-resolution phase, and the fine texture added.
REFERENCE_PHASE_BLOCK = 16
TEXTURE_STD, TEXTURE_WIDTH = 0.3, 1.5


def realistic_phase(reference: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A phase map (H, W) in radians: a real scan's low-resolution phase plus fine random texture
    (:func:`low_resolution_phase` + :func:`phase_texture`, both drawn from ``rng``).

    >>> yy, xx = np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 30), indexing="ij")
    >>> reference = np.exp(1j * 2 * (xx + yy ** 2))
    >>> phase = realistic_phase(reference, (24, 20), np.random.default_rng(0))
    >>> phase.shape, bool(np.isfinite(phase).all())
    ((24, 20), True)
    """
    low = low_resolution_phase(reference, size, rng, offset=False)
    return low + phase_texture(size, rng) + rng.uniform(-np.pi, np.pi)


def low_resolution_phase(reference: np.ndarray, size: tuple[int, int], rng: np.random.Generator,
                         offset: bool = True) -> np.ndarray:
    """A real scan's low-resolution phase (H, W), randomly flipped (and offset, with ``offset``).

    It is the angle of the central ``REFERENCE_PHASE_BLOCK`` x ``REFERENCE_PHASE_BLOCK`` k-space block of
    ``reference`` (complex (H0, W0), magnitude-weighted, so that the background does not count),
    zero-padded to ``size``.

    >>> low_resolution_phase(np.exp(1j * np.ones((40, 30))), (24, 20), np.random.default_rng(0)).shape
    (24, 20)
    """
    reference = np.asarray(reference)
    if reference.ndim != 2 or not np.iscomplexobj(reference) or not np.isfinite(reference).all():
        raise ValueError(f"phase_reference must be a finite complex (H, W) image, got {reference.dtype} "
                         f"{reference.shape}")
    height, width = size
    spectrum = np.fft.fftshift(np.fft.fft2(reference))
    block = min(REFERENCE_PHASE_BLOCK, height, width, *reference.shape)
    top, left = (reference.shape[0] - block) // 2, (reference.shape[1] - block) // 2
    padded = np.zeros((height, width), dtype=np.complex128)
    row, col = (height - block) // 2, (width - block) // 2
    padded[row:row + block, col:col + block] = spectrum[top:top + block, left:left + block]
    low = np.angle(np.fft.ifft2(np.fft.ifftshift(padded)))
    if rng.random() < 0.5:
        low = low[::-1]
    if rng.random() < 0.5:
        low = low[:, ::-1]
    return low + rng.uniform(-np.pi, np.pi) if offset else low


def phase_texture(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Fine random phase (H, W): a Gaussian random field of ``TEXTURE_STD`` radians correlated over
    ``TEXTURE_WIDTH`` pixels (the fine phase of vessels and tissue boundaries).

    >>> round(float(phase_texture((32, 24), np.random.default_rng(0)).std()), 6)
    0.3
    """
    height, width = size
    fy, fx = np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij")
    kernel = np.exp(-2 * (np.pi * TEXTURE_WIDTH) ** 2 * (fx ** 2 + fy ** 2))
    field = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((height, width))) * kernel))
    return field * (TEXTURE_STD / (field.std() or 1.0))


def _smooth_phase(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth random phase map: a random quadratic polynomial over [-1, 1]^2, at most about pi."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, size[0]), np.linspace(-1, 1, size[1]), indexing="ij")
    c = rng.uniform(-1.0, 1.0, size=6) * np.array([np.pi, 0.8, 0.8, 0.5, 0.5, 0.5])
    return c[0] + c[1] * xx + c[2] * yy + c[3] * xx * yy + c[4] * xx**2 + c[5] * yy**2
