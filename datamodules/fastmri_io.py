"""Reading fastMRI-format HDF5 files: validation, the ISMRMRD header, slices, and the two crops.

A fastMRI file holds ``kspace`` (slices, coils, H, W) (multi-coil) or (slices, H, W) (single-coil),
complex; optionally ``reconstruction_rss`` / ``reconstruction_esc`` (slices, h, w) (ground truth),
``mask`` ((W,) or (H, W); present in files whose k-space is already undersampled), attributes
(``max``, ``norm``, ``acquisition``, ...) and ``ismrmrd_header`` (XML). H is the readout axis (the
ISMRMRD ``x``), W the phase-encode axis (``y``); masks select columns of W.

The two crops (they do different things):

- :func:`crop_image_domain` (``recon_crop``): the fastMRI reconstruction crop. Real fastMRI k-space
  is 640 x 368 (readout oversampling, zero padding) and its reconstruction is 320 x 320 (the
  header's ``reconSpace``). The coil IMAGES are centre-cropped and the k-space recomputed
  (ifft2c -> crop -> fft2c), so that the operator A on the cropped grid is consistent with the
  measurement; this changes the k-space grid (coarser sampling, same resolution). Masks are applied
  after it. For an already undersampled file only the fully sampled readout axis H may be cropped
  this way (cropping W would smear the unsampled columns), and a 2-D mask allows no crop at all.
- :func:`crop_kspace_center` (``crop_size``): keeps the centre of k-space; the image keeps its field of
  view at a LOWER resolution (fewer pixels). For reduced-size experiments.

>>> import torch
>>> k = torch.randn(2, 8, 6, dtype=torch.complex64)
>>> crop_kspace_center(k, (4, 4)).shape, crop_image_domain(k, (4, 4)).shape
(torch.Size([2, 4, 4]), torch.Size([2, 4, 4]))
"""

from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ugodit_pl.atomic import atomic_path
from ugodit_pl.complex import fft2c, ifft2c

from .errors import DataError

__all__ = [
    "SliceData",
    "VolumeInfo",
    "center_crop",
    "crop_image_domain",
    "crop_kspace_center",
    "inspect_volume",
    "minimal_ismrmrd_header",
    "parse_ismrmrd_sizes",
    "read_slice",
    "root_sum_of_squares",
    "write_fastmri_volume",
]


@dataclass(frozen=True)
class VolumeInfo:
    """What :func:`inspect_volume` learns about a fastMRI file without reading its k-space."""

    path: Path
    num_slices: int
    num_coils: int  # 1 for single-coil files
    multicoil: bool
    kspace_size: tuple[int, int]  # (H, W)
    recon_size: tuple[int, int] | None  # the header's reconSpace (x, y) = (H, W) axes, None if no header
    mask_ndim: int | None  # 1 or 2 when the file holds a mask (already undersampled), else None
    has_rss: bool
    has_esc: bool
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def undersampled(self) -> bool:
        """Whether the file's k-space is already undersampled (it carries its own ``mask``)."""
        return self.mask_ndim is not None


def _open(path: Path):
    import h5py

    if not path.exists():
        raise DataError(f"{path}: file does not exist (expected a fastMRI-format HDF5 file)")
    if not path.is_file():
        raise DataError(f"{path}: not a file (expected a fastMRI-format HDF5 file)")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path}: not an HDF5 file (no HDF5 signature; expected a fastMRI-format HDF5 file)")
    try:
        return h5py.File(path, "r")
    except OSError as error:  # e.g. "truncated file: eof = ..., stored_eof = ..."
        raise DataError(f"{path}: cannot open the HDF5 file, it is damaged or truncated ({error})") from None


def parse_ismrmrd_sizes(header: bytes | str, path: Path | str = "<header>") -> tuple[tuple[int, int], tuple[int, int]]:
    """((H, W) encoded, (H, W) reconstruction) matrix sizes from an ISMRMRD XML header (x -> H, y -> W).

    >>> xml = minimal_ismrmrd_header((640, 368), (320, 320))
    >>> parse_ismrmrd_sizes(xml)
    ((640, 368), (320, 320))
    """
    if isinstance(header, bytes):
        header = header.decode("utf-8", errors="replace")
    try:
        root = ET.fromstring(header)
    except ET.ParseError as error:
        raise DataError(f"{path}: ismrmrd_header is not valid XML ({error})") from None

    def size(space: str) -> tuple[int, int]:
        node = root.find(f".//{{*}}encoding/{{*}}{space}/{{*}}matrixSize")
        if node is None:
            raise DataError(f"{path}: ismrmrd_header has no encoding/{space}/matrixSize")
        try:
            return int(node.findtext("{*}x")), int(node.findtext("{*}y"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise DataError(f"{path}: ismrmrd_header {space}/matrixSize needs integer x and y") from None

    return size("encodedSpace"), size("reconSpace")


def inspect_volume(path: str | os.PathLike) -> VolumeInfo:
    """Open and validate a fastMRI file's layout (not its values); raises :class:`DataError`."""
    path = Path(path)
    with _open(path) as file:
        if "kspace" not in file:
            raise DataError(
                f"{path}: no 'kspace' dataset (it has {sorted(file.keys())}); expected a fastMRI-format HDF5 file"
            )
        kspace = file["kspace"]
        if not hasattr(kspace, "shape"):
            raise DataError(f"{path}: 'kspace' is a group, expected a dataset")
        if kspace.ndim not in (3, 4):
            raise DataError(
                f"{path}: 'kspace' has {kspace.ndim} dimensions {kspace.shape}; expected 4 "
                f"(slices, coils, H, W) for multi-coil or 3 (slices, H, W) for single-coil data"
            )
        if not np.issubdtype(kspace.dtype, np.complexfloating):
            raise DataError(f"{path}: 'kspace' has dtype {kspace.dtype}; expected complex values")
        multicoil = kspace.ndim == 4
        num_slices = kspace.shape[0]
        num_coils = kspace.shape[1] if multicoil else 1
        height, width = kspace.shape[-2:]
        if min(num_slices, num_coils, height, width) < 1:
            raise DataError(f"{path}: 'kspace' has an empty dimension, shape {kspace.shape}")
        mask_ndim = None
        if "mask" in file:
            mask_shape = tuple(file["mask"].shape)
            if mask_shape not in ((width,), (height, width)):
                raise DataError(
                    f"{path}: 'mask' has shape {mask_shape}; expected ({width},) or ({height}, {width}) "
                    f"to match k-space of size ({height}, {width})"
                )
            mask_ndim = len(mask_shape)
        recon_size = None
        if "ismrmrd_header" in file:
            _, recon_size = parse_ismrmrd_sizes(file["ismrmrd_header"][()], path)
        return VolumeInfo(
            path=path,
            num_slices=num_slices,
            num_coils=num_coils,
            multicoil=multicoil,
            kspace_size=(height, width),
            recon_size=recon_size,
            mask_ndim=mask_ndim,
            has_rss="reconstruction_rss" in file,
            has_esc="reconstruction_esc" in file,
            attrs=dict(file.attrs),
        )


@dataclass
class SliceData:
    """One slice as read from the file (before any crop)."""

    kspace: torch.Tensor  # (coils, H, W) complex64 (coils = 1 for single-coil files)
    mask: torch.Tensor | None  # (H, W) bool: the file's own mask, None when fully sampled
    rss: torch.Tensor | None  # (h, w) float32: reconstruction_rss, when present
    esc: torch.Tensor | None  # (h, w) float32: reconstruction_esc, when present


def read_slice(info: VolumeInfo, index: int) -> SliceData:
    """Read slice ``index`` of a file; checks that the k-space is finite and a file mask is not empty."""
    where = f"{info.path} slice {index}"
    if not 0 <= index < info.num_slices:
        raise DataError(f"{where}: out of range, the file has slices 0..{info.num_slices - 1}")
    with _open(info.path) as file:
        try:
            kspace = np.asarray(file["kspace"][index])
            rss = np.asarray(file["reconstruction_rss"][index], dtype=np.float32) if info.has_rss else None
            esc = np.asarray(file["reconstruction_esc"][index], dtype=np.float32) if info.has_esc else None
            mask = np.asarray(file["mask"][()]) if info.undersampled else None
        except (OSError, KeyError, IndexError) as error:
            raise DataError(f"{where}: cannot read the data, the file is damaged ({error})") from None
    if not np.isfinite(kspace).all():
        bad = int((~np.isfinite(kspace)).sum())
        raise DataError(f"{where}: 'kspace' holds {bad} NaN/Inf values; expected finite k-space")
    if rss is not None and not np.isfinite(rss).all():
        warnings.warn(f"{where}: 'reconstruction_rss' holds NaN/Inf values; the target is the RSS of the k-space "
                      f"instead", stacklevel=2)
        rss = None
    kspace_t = torch.from_numpy(kspace.astype(np.complex64, copy=False))
    if not info.multicoil:
        kspace_t = kspace_t.unsqueeze(0)
    mask_t = None
    if mask is not None:
        if np.iscomplexobj(mask):
            mask = np.abs(mask)
        mask = np.broadcast_to(mask != 0, info.kspace_size)
        if not mask.any():
            raise DataError(f"{where}: the file's 'mask' is all zero; expected at least one sampled point")
        mask_t = torch.from_numpy(np.array(mask, dtype=bool))  # a writable copy of the broadcast view
    if not np.any(kspace):
        raise DataError(f"{where}: 'kspace' is all zero: the slice holds no signal")
    return SliceData(
        kspace=kspace_t,
        mask=mask_t,
        rss=None if rss is None else torch.from_numpy(rss),
        esc=None if esc is None else torch.from_numpy(esc),
    )


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre crop of the last two dimensions to ``size`` (the centre index n // 2 stays the centre).

    >>> center_crop(torch.arange(6).reshape(1, 6), (1, 4)).tolist()
    [[1, 2, 3, 4]]
    """
    height, width = x.shape[-2:]
    h, w = size
    if not (0 < h <= height and 0 < w <= width):
        raise ValueError(f"cannot crop size ({height}, {width}) to {tuple(size)}")
    top = height // 2 - h // 2
    left = width // 2 - w // 2
    return x[..., top : top + h, left : left + w]


def crop_kspace_center(kspace: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Keep the central ``size`` of k-space: same field of view, lower resolution."""
    return center_crop(kspace, size).contiguous()


def crop_image_domain(kspace: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-crop the coil images to ``size`` and return their k-space (ifft2c -> crop -> fft2c)."""
    return fft2c(center_crop(ifft2c(kspace), size).contiguous())


def root_sum_of_squares(coil_images: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """sqrt(sum_c |x_c|^2) over ``dim``.

    >>> root_sum_of_squares(torch.tensor([[3.0], [4.0]])).tolist()
    [5.0]
    """
    return coil_images.abs().pow(2).sum(dim).sqrt()


def minimal_ismrmrd_header(encoded_size: tuple[int, int], recon_size: tuple[int, int]) -> str:
    """A minimal ISMRMRD XML header with the encoded and reconstruction matrix sizes ((H, W) = (x, y))."""

    def space(tag: str, size: tuple[int, int]) -> str:
        x, y = size
        return (
            f"  <{tag}><matrixSize><x>{x}</x><y>{y}</y><z>1</z></matrixSize>"
            f"<fieldOfView_mm><x>{x}</x><y>{y}</y><z>1</z></fieldOfView_mm></{tag}>\n"
        )

    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">\n'
        " <encoding>\n" + space("encodedSpace", encoded_size) + space("reconSpace", recon_size) + " </encoding>\n"
        "</ismrmrdHeader>"
    )


def write_fastmri_volume(
    path: str | os.PathLike,
    kspace: np.ndarray,
    *,
    reconstruction_rss: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
    recon_size: tuple[int, int] | None = None,
) -> Path:
    """Write a fastMRI-format HDF5 file atomically (a temporary file in the same folder, then ``os.replace``).

    ``kspace`` is (slices, coils, H, W) or (slices, H, W); it is stored as complex64. The header's
    encoded size is the k-space size and its reconstruction size ``recon_size`` (default: the same).
    """
    import h5py

    path = Path(path)
    kspace = np.asarray(kspace)
    if kspace.ndim not in (3, 4):
        raise ValueError(f"kspace must be (slices, coils, H, W) or (slices, H, W), got shape {kspace.shape}")
    size = tuple(int(s) for s in kspace.shape[-2:])
    with atomic_path(path) as temporary:
        with h5py.File(temporary, "w") as file:
            file.create_dataset("kspace", data=kspace.astype(np.complex64))
            if reconstruction_rss is not None:
                file.create_dataset("reconstruction_rss", data=np.asarray(reconstruction_rss, dtype=np.float32))
            if mask is not None:
                file.create_dataset("mask", data=np.asarray(mask, dtype=np.float32))
            file["ismrmrd_header"] = minimal_ismrmrd_header(size, tuple(recon_size or size))  # type: ignore[arg-type]
            for key, value in (attrs or {}).items():
                file.attrs[key] = value
    return path
