"""fastMRI-format MRI slices as a fixed set of measurements: :class:`FastMRIDataModule`.

Two sets are configured side by side: the **test** set (``test_files`` / ``test_slices``: the
measurements reconstructed one by one, or by any single-measurement method) and the **pre-training**
set (``pretrain_files`` / ``pretrain_slices``: the group that UGoDIT pre-trains its shared encoder
on). ``role`` chooses which one the train dataloader serves (``"test"`` or ``"pretrain"``); the
other one is still read to check that no test slice is also a pre-training slice (that would leak
the test measurement into the transferable weights), which is an error naming the slice.

Per slice (file ``f``, slice ``s``), in this order (see :mod:`.fastmri_io` for the two crops):

1. read ``kspace[s]`` (coils, H, W) (single-coil files give one coil); it must be finite;
2. ``recon_crop=True``: when the ISMRMRD header's ``reconSpace`` is smaller than the k-space
   (fastMRI: 640 x 368 -> 320 x 320), centre-crop the coil IMAGES to it and recompute the k-space;
   files without a header, or whose header size equals the k-space size, are not cropped;
3. ``crop_size=(h, w)``: keep the centre (h, w) of k-space (a lower-resolution image);
4. the mask: a file that carries its own ``mask`` is already undersampled and is always measured
   with it (retrospective undersampling applies to fully sampled files only); otherwise the mask is
   ``make_mask(mask, (H, W), acceleration, center_fraction, seed)`` with the seed
   ``stable_seed(mask_seed, file name, slice)`` (the same in every run), or ``mask="path"``: a
   mask read from ``mask_path``. ``mask="file"`` requires every file to carry its own mask;
5. ``y = mask * kspace``;
6. coil maps (multi-coil): ``coil_maps="espirit"`` estimates them from ``y`` itself (ESPIRiT on the
   fully sampled centre, cached on disk by ``estimate_coil_maps``); ``"oracle"`` estimates them
   from the fully sampled k-space, which a real scan does not have: only for benchmark comparisons
   (and an error for undersampled files). The operator is ``MultiCoilMRI(mask, maps)``, or
   ``SingleCoilMRI(mask)`` for single-coil files;
7. the target (fully sampled files only; undersampled files have no ground truth and their items no
   ``target``): ``"rss"`` is the file's ``reconstruction_rss`` when present and of the same size
   (no ``crop_size``), else the root-sum-of-squares of ``ifft2c`` of the fully sampled k-space;
   ``"coil_combined"`` is ``|S^H F^H k_full|`` with the maps in use (|F^H k| for single-coil);
   ``"esc"`` is the file's ``reconstruction_esc`` (the target of fastMRI's single-coil files), which
   must be present and of the image's size.
   Targets are (1, H, W) magnitude images in the scale of the measurement (no normalisation).

Items hold ``y`` (coils, H, W) complex64, ``operator``, ``index`` (global position in the served set),
``name`` (``"file.h5/slice_003"``), ``fname``, ``slice`` and optionally ``target`` (1, H, W); the
batch stacks them (see :mod:`.collate`). Data errors raise :class:`~.errors.DataError` naming the
file and slice, from ``num_measurements`` (file layout, slice ranges, overlaps) or ``setup()``
(values: NaN/Inf, empty masks), before any fitting starts.

>>> import tempfile
>>> from ugodit_pl.datamodules import make_mri_demo
>>> paths = make_mri_demo(tempfile.mkdtemp(), num_files=1, num_slices=2, size=(32, 32), num_coils=4)
>>> dm = FastMRIDataModule(test_files=str(paths[0]), test_slices="all", acceleration=2, center_fraction=0.25,
...                        coil_map_cache_dir=False, coil_map_args={"kernel_width": 4})
>>> dm.num_measurements
2
>>> dm.setup("fit")
>>> dm.batch["y"].shape, dm.batch["name"]
(torch.Size([2, 4, 32, 32]), ['demo_mri_00.h5/slice_000', 'demo_mri_00.h5/slice_001'])
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple, Union

import torch

from ugodit_pl.arguments import check_choice, number

from .base import MeasurementDataModule
from .errors import DataError
from .fastmri_io import (
    SliceData,
    VolumeInfo,
    center_crop,
    crop_image_domain,
    crop_kspace_center,
    inspect_volume,
    read_slice,
    root_sum_of_squares,
)
from .seeding import stable_seed
from .selection import PathSpec, SliceSpec, expand_paths, is_pair_list, resolve_path, select_slices

__all__ = ["COIL_MAP_KINDS", "FastMRIDataModule", "MASK_KINDS", "TARGET_KINDS"]

MASK_KINDS = ("random", "equispaced", "poisson", "file", "path")
COIL_MAP_KINDS = ("espirit", "oracle")
TARGET_KINDS = ("rss", "coil_combined", "esc")
H5_SUFFIXES = (".h5", ".hdf5")

Measurement = Tuple[VolumeInfo, int]


class FastMRIDataModule(MeasurementDataModule):
    """Multi-coil (or single-coil) MRI slices from fastMRI-format HDF5 files (see the module docstring).

    Args:
        data_dir: folder that relative file names (in ``*_files`` and in (file, slice) pairs) are
            relative to; ``None``: the working directory.
        test_files: an HDF5 file, a folder of them, or a list of files and folders.
        test_slices: slice spec applied to every test file (``"all"``, ``"middle"``, ``"a:b"``, an
            int, a list of ints) or a list of (file, slice) pairs (then ``test_files`` stays None).
        pretrain_files, pretrain_slices: the same for the pre-training set.
        role: ``"test"`` or ``"pretrain"``: the set the train dataloader serves.
        mask: ``"random"``, ``"equispaced"``, ``"poisson"`` (``make_mask`` kinds), ``"file"`` (the
            files' own masks) or ``"path"`` (a mask read from ``mask_path``).
        acceleration, center_fraction: of generated masks; acceleration >= 1.
        mask_seed: base seed of generated masks (combined with file name and slice).
        mask_path: ``.npy`` / HDF5 mask for ``mask="path"``.
        coil_maps: ``"espirit"`` (from the measurement) or ``"oracle"`` (from fully sampled data;
            benchmark comparisons only).
        coil_map_cache_dir: cache folder of the ESPIRiT maps; ``None``: ``estimate_coil_maps``'s
            default cache; ``False``: no cache.
        coil_map_args: further keyword arguments of ``estimate_coil_maps`` (e.g. ``kernel_width``).
        target: ``"rss"``, ``"coil_combined"``, ``"esc"`` or ``None`` (no target).
        recon_crop: crop to the header's reconstruction size in the image domain (fastMRI).
        crop_size: (h, w) centre of k-space to keep (lower resolution), or ``None``.
        steps_per_epoch: training steps per epoch (see :class:`.base.MeasurementDataModule`).
    """

    def __init__(
        self,
        data_dir: Optional[str] = None,
        test_files: Optional[PathSpec] = None,
        test_slices: SliceSpec = "middle",
        pretrain_files: Optional[PathSpec] = None,
        pretrain_slices: SliceSpec = "middle",
        role: str = "test",
        mask: str = "random",
        acceleration: float = 4.0,
        center_fraction: float = 0.08,
        mask_seed: int = 0,
        mask_path: Optional[str] = None,
        coil_maps: str = "espirit",
        coil_map_cache_dir: Union[str, bool, None] = None,
        coil_map_args: Optional[dict[str, Any]] = None,
        target: Optional[str] = "rss",
        recon_crop: bool = True,
        crop_size: Optional[Tuple[int, int]] = None,
        steps_per_epoch: int = 100,
    ) -> None:
        super().__init__(role=role, steps_per_epoch=steps_per_epoch)
        check_choice("mask", mask, MASK_KINDS, error=DataError)
        acceleration = number("acceleration", acceleration, error=DataError)
        center_fraction = number("center_fraction", center_fraction, error=DataError)
        if mask in ("random", "equispaced", "poisson"):
            if not acceleration >= 1.0:
                raise DataError(f"acceleration must be >= 1 (full sampling), got {acceleration}")
            if not 0.0 < center_fraction < 1.0:
                raise DataError(f"center_fraction must lie in (0, 1), got {center_fraction}")
        if (mask == "path") != (mask_path is not None):
            raise DataError("mask='path' and mask_path go together: give both or neither")
        check_choice("coil_maps", coil_maps, COIL_MAP_KINDS, error=DataError)
        check_choice("target", target, (*TARGET_KINDS, None), error=DataError)
        if crop_size is not None:
            if len(crop_size) != 2 or any(int(c) < 1 for c in crop_size):
                raise DataError(f"crop_size must be (h, w) with positive sizes, got {crop_size!r}")
            crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.data_dir = data_dir
        self.test_files, self.test_slices = test_files, test_slices
        self.pretrain_files, self.pretrain_slices = pretrain_files, pretrain_slices
        self.mask = mask
        self.acceleration = float(acceleration)
        self.center_fraction = float(center_fraction)
        self.mask_seed = int(mask_seed)
        self.mask_path = mask_path
        self.coil_maps = coil_maps
        self.coil_map_cache_dir = coil_map_cache_dir
        self.coil_map_args = dict(coil_map_args or {})
        self.target = target
        self.recon_crop = bool(recon_crop)
        self.crop_size = crop_size
        self._volumes: dict[str, VolumeInfo] = {}
        self._sets: dict[str, list[Measurement]] | None = None
        self.save_hyperparameters()

    # -- the index ----------------------------------------------------------------------------
    def _volume(self, path: os.PathLike) -> VolumeInfo:
        key = str(path)
        if key not in self._volumes:
            self._volumes[key] = inspect_volume(path)
        return self._volumes[key]

    def _build_set(self, files: Optional[PathSpec], slices: SliceSpec, which: str) -> list[Measurement]:
        measurements: list[Measurement] = []
        if is_pair_list(slices):
            if files is not None:
                raise DataError(f"{which}_slices lists (file, slice) pairs, so {which}_files must be None")
            for file, index in slices:  # type: ignore[misc]
                info = self._volume(resolve_path(file, self.data_dir))
                measurements.extend((info, s) for s in select_slices(int(index), info.num_slices, info.path))
        else:
            if files is None:
                raise DataError(f"no {which} data: give {which}_files (or (file, slice) pairs as {which}_slices)")
            for path in expand_paths(files, self.data_dir, H5_SUFFIXES, "fastMRI HDF5 files"):
                info = self._volume(path)
                measurements.extend((info, s) for s in select_slices(slices, info.num_slices, info.path))
        seen: dict[tuple[str, int], None] = {}
        for info, index in measurements:
            key = (str(info.path.resolve()), index)
            if key in seen:
                raise DataError(f"{info.path} slice {index}: selected twice in the {which} set")
            seen[key] = None
        return measurements

    def _measurement_sets(self) -> dict[str, list[Measurement]]:
        if self._sets is None:
            sets: dict[str, list[Measurement]] = {}
            if self.test_files is not None or is_pair_list(self.test_slices) or self.role == "test":
                sets["test"] = self._build_set(self.test_files, self.test_slices, "test")
            if self.pretrain_files is not None or is_pair_list(self.pretrain_slices) or self.role == "pretrain":
                sets["pretrain"] = self._build_set(self.pretrain_files, self.pretrain_slices, "pretrain")
            _check_disjoint(sets)
            _check_unique_names([m for group in sets.values() for m in group])
            self._sets = sets
        return self._sets

    def _measurements(self) -> list[Measurement]:
        return self._measurement_sets()[self.role]

    def _measurement_count(self) -> int:
        return len(self._measurements())

    @property
    def measurement_names(self) -> list[str]:
        """``"file.h5/slice_003"`` for every measurement of the served set, in index order."""
        return [_name(info, index) for info, index in self._measurements()]

    # -- loading one measurement -----------------------------------------------------------------
    def _check_measurement(self, position: int) -> None:
        info, index = self._measurements()[position]
        data = read_slice(info, index)
        self._crop(info, data.kspace, data.mask, f"{info.path} slice {index}")

    def _load_measurement(self, position: int) -> dict[str, Any]:
        from ugodit_pl.operators import MultiCoilMRI, SingleCoilMRI

        info, index = self._measurements()[position]
        where = f"{info.path} slice {index}"
        data = read_slice(info, index)
        kspace, file_mask = self._crop(info, data.kspace, data.mask, where)
        size = tuple(kspace.shape[-2:])
        mask = file_mask if file_mask is not None else self._make_mask(info, index, size, where)
        if not bool(mask.any()):
            raise DataError(f"{where}: the sampling mask is all zero; expected at least one sampled point")
        y = kspace * mask
        maps = None
        if info.multicoil:
            maps = self._coil_maps(info, kspace, y, mask, where)
            operator = MultiCoilMRI(mask, maps.unsqueeze(0))
        else:
            operator = SingleCoilMRI(mask)
        item: dict[str, Any] = {
            "y": y.to(torch.complex64).contiguous(),
            "operator": operator,
            "index": position,
            "name": _name(info, index),
            "fname": info.path.name,
            "slice": index,
        }
        if self.target is not None and file_mask is None:
            item["target"] = self._target(data, kspace, maps, size, where).unsqueeze(0)
        return item

    def _crop(
        self, info: VolumeInfo, kspace: torch.Tensor, file_mask: torch.Tensor | None, where: str
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        height, width = kspace.shape[-2:]
        if self.recon_crop and info.recon_size is not None:
            crop = (min(info.recon_size[0], height), min(info.recon_size[1], width))
            if file_mask is not None and info.mask_ndim == 1:
                crop = (crop[0], width)  # only the fully sampled readout axis may be cropped
            elif file_mask is not None:
                crop = (height, width)  # a 2-D mask: every axis is undersampled, no crop
            if crop != (height, width):
                kspace = crop_image_domain(kspace, crop)
                if file_mask is not None:
                    file_mask = center_crop(file_mask, crop).contiguous()
                    kspace = kspace * file_mask
        if self.crop_size is not None:
            current = tuple(kspace.shape[-2:])
            if self.crop_size[0] > current[0] or self.crop_size[1] > current[1]:
                raise DataError(f"{where}: crop_size {self.crop_size} is larger than the k-space size {current}")
            kspace = crop_kspace_center(kspace, self.crop_size)
            if file_mask is not None:
                file_mask = center_crop(file_mask, self.crop_size).contiguous()
        return kspace, file_mask

    def _make_mask(self, info: VolumeInfo, index: int, size: tuple[int, int], where: str) -> torch.Tensor:
        from ugodit_pl.operators import make_mask

        if self.mask == "file":
            raise DataError(
                f"{where}: mask='file' but the file has no 'mask' dataset (it is fully sampled); "
                f"choose a mask kind such as 'random' to undersample it"
            )
        kind = "file" if self.mask == "path" else self.mask
        seed = stable_seed(self.mask_seed, info.path.name, index)
        try:
            mask = make_mask(kind, size, self.acceleration, self.center_fraction, seed=seed, path=self.mask_path)
        except (ValueError, KeyError, OSError) as error:
            raise DataError(f"{where}: cannot make a {self.mask!r} mask of size {size}: {error}") from None
        return mask.to(torch.bool)

    def _coil_maps(
        self, info: VolumeInfo, kspace: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, where: str
    ) -> torch.Tensor:
        from ugodit_pl.operators import estimate_coil_maps

        if self.coil_maps == "oracle":
            if info.undersampled:
                raise DataError(
                    f"{where}: coil_maps='oracle' needs fully sampled k-space, but the file is undersampled; "
                    f"use coil_maps='espirit'"
                )
            source, source_mask = kspace, None
        else:
            source, source_mask = y, mask
        try:
            maps = estimate_coil_maps(source, source_mask, cache_dir=self.coil_map_cache_dir, **self.coil_map_args)
        except ValueError as error:
            raise DataError(f"{where}: cannot estimate coil maps ({self.coil_maps}): {error}") from None
        if not bool(maps.abs().amax() > 0):
            raise DataError(
                f"{where}: the estimated coil maps ({self.coil_maps}) are all zero: the calibration region "
                f"is too small for the ESPIRiT kernel; sample more of the k-space centre (center_fraction) "
                f"or pass a smaller coil_map_args={{'kernel_width': ...}}"
            )
        return maps.to(torch.complex64)

    def _target(
        self, data: SliceData, kspace: torch.Tensor, maps: torch.Tensor | None, size: tuple, where: str
    ) -> torch.Tensor:
        from ugodit_pl.complex import ifft2c

        if self.target == "esc":
            if data.esc is None or self.crop_size is not None or tuple(data.esc.shape) != size:
                found = "none" if data.esc is None else f"size {tuple(data.esc.shape)}"
                raise DataError(
                    f"{where}: target='esc' needs the file's 'reconstruction_esc' of the image size {size} "
                    f"(and no crop_size); found {found}"
                )
            return data.esc.to(torch.float32)
        if self.target == "rss":
            file_rss = data.rss
            if file_rss is not None and self.crop_size is None and tuple(file_rss.shape) == size:
                return file_rss.to(torch.float32)
            return root_sum_of_squares(ifft2c(kspace), dim=0).to(torch.float32)
        images = ifft2c(kspace)
        combined = images[0] if maps is None else (maps.conj() * images).sum(dim=0)
        return combined.abs().to(torch.float32)


def _name(info: VolumeInfo, index: int) -> str:
    return f"{info.path.name}/slice_{index:03d}"


def _check_disjoint(sets: dict[str, list[Measurement]]) -> None:
    if "test" not in sets or "pretrain" not in sets:
        return
    pretrain = {(str(info.path.resolve()), index) for info, index in sets["pretrain"]}
    for info, index in sets["test"]:
        if (str(info.path.resolve()), index) in pretrain:
            raise DataError(
                f"{info.path} slice {index}: the test slice is also in the pre-training set; "
                f"a test measurement must not be used for pre-training"
            )


def _check_unique_names(measurements: list[Measurement]) -> None:
    paths: dict[str, str] = {}
    for info, _ in measurements:
        resolved = str(info.path.resolve())
        other = paths.setdefault(info.path.name, resolved)
        if other != resolved:
            raise DataError(
                f"two different files are named {info.path.name!r} ({other} and {resolved}); measurement "
                f"names ('file/slice') must be unique, rename one"
            )
