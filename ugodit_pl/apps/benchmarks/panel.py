"""The panel of real MRI test problems that the quality benchmarks and the defaults are judged on.

A problem is an anatomy, a k-space crop (the whole field of view at a lower resolution) and an
undersampling; every problem is read through :class:`~ugodit_pl.datamodules.FastMRIDataModule`, coil
maps estimated by ESPIRiT from the undersampled data, the RSS target (fastMRI).

Anatomies (``ANATOMIES``):

- ``brain``: the real, fully sampled 8-coil k-space of ../shared/data (``mri/espirit_brain_full.h5``,
  a slice of a 3-D T1-weighted brain scan, 230 x 180);
- ``head``: matplotlib's sample MRI (``s1045.ima.gz``, a sagittal T1-weighted head, 256 x 256),
  simulated into 8-coil k-space (``write_simulated_mri``: birdcage maps, complex noise 0.011 of the
  maximum per coil, as the real brain shows, and a realistic phase: the real brain's low-resolution
  phase (its ESPIRiT coil combination) plus fine random texture, ``realistic_phase``; one smooth
  random phase, used before, flattered the networks);
- ``epi``: slice 12 of nibabel's test volume (``example4d.nii.gz``, axial echo-planar brain images,
  128 x 96), simulated the same way. Slices 4 and 20 of that volume are its neighbours for group pre-training.

Undersampling (``UNDERSAMPLINGS``): ``4x`` = fastMRI's random columns with centre fraction 0.08;
``8x`` = equispaced columns with a centre of at least 8 columns (ESPIRiT needs a calibration region:
0.04 of 96 columns would leave 3, so the centre fraction is max(0.04, 8 / width)).

>>> [p["name"] for p in PANELS["quick"]][:2]
['brain 96x72 4x', 'brain 144x112 4x']
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import torch

if TYPE_CHECKING:
    import numpy as np

BRAIN_FILE = "mri/espirit_brain_full.h5"
PRETRAIN_BRAIN_FILE = "mri/sigpy_brain_poisson8x.h5"
EPI_TEST_SLICE, EPI_NEIGHBOURS = 12, (4, 20)
#: The slices next to the EPI test slice (the papers' MRI pre-training group: neighbouring slices of the
#: test scan); in the simulated file after the test slice and EPI_NEIGHBOURS (``epi_position``).
EPI_ADJACENT = (10, 11, 13, 14)
EPI_FILE_SLICES = (EPI_TEST_SLICE, *EPI_NEIGHBOURS, *EPI_ADJACENT)

#: anatomy -> (what it is, native size)
ANATOMIES: Dict[str, Tuple[str, Tuple[int, int]]] = {
    "brain": ("real 8-coil k-space, T1 brain slice (../shared/data)", (230, 180)),
    "head": ("matplotlib's s1045 T1 sagittal head, simulated 8 coils, realistic phase", (256, 256)),
    "epi": ("nibabel's example4d EPI brain slice 12, simulated 8 coils, realistic phase", (128, 96)),
}
UNDERSAMPLINGS = {"4x": ("random", 4.0, 0.08), "8x": ("equispaced", 8.0, 0.04)}


def problem(anatomy: str, crop: Optional[Sequence[int]], undersampling: str) -> Dict[str, Any]:
    """A panel entry: ``{"name", "anatomy", "crop", "undersampling"}``.

    >>> problem("head", (96, 96), "8x")["name"]
    'head 96x96 8x'
    """
    if anatomy not in ANATOMIES or undersampling not in UNDERSAMPLINGS:
        raise ValueError(f"unknown anatomy {anatomy!r} or undersampling {undersampling!r}")
    size = tuple(crop) if crop else ANATOMIES[anatomy][1]
    return {"name": f"{anatomy} {size[0]}x{size[1]} {undersampling}", "anatomy": anatomy,
            "crop": None if crop is None else list(crop), "undersampling": undersampling}


def named(name: str) -> Dict[str, Any]:
    """The panel entry called ``name`` ("anatomy HxW undersampling"; any size up to the native one).

    >>> named("brain 230x180 8x")["crop"] is None
    True
    """
    try:
        anatomy, size, undersampling = name.split()
        crop = tuple(int(n) for n in size.split("x"))
    except ValueError:
        raise ValueError(f"a panel problem is named 'anatomy HxW undersampling', e.g. 'brain 96x72 4x'; got {name!r}") from None
    return problem(anatomy, None if crop == ANATOMIES.get(anatomy, ("", None))[1] else crop, undersampling)


PANELS: Dict[str, List[Dict[str, Any]]] = {
    "tiny": [problem("brain", (48, 40), "4x"), problem("head", (64, 64), "8x")],
    "quick": [problem("brain", (96, 72), "4x"), problem("brain", (144, 112), "4x"), problem("head", (96, 96), "4x"),
              problem("epi", (96, 72), "4x"), problem("brain", (96, 72), "8x"), problem("head", (96, 96), "8x")],
    "full": [problem("brain", None, "4x"), problem("brain", (144, 112), "4x"), problem("head", None, "4x"),
             problem("epi", None, "4x"), problem("brain", None, "8x"), problem("head", None, "8x"),
             problem("epi", None, "8x")],
}


def anatomy_file(anatomy: str, root: Path, folder: Path) -> Path:
    """The fastMRI-format file of ``anatomy`` (real, or simulated into ``folder`` on first use)."""
    from ugodit_pl.datamodules.demo import real_mri_slices, write_simulated_mri

    if anatomy == "brain":
        return root / BRAIN_FILE
    path = folder / f"{anatomy}_realistic_phase.h5"
    if not path.is_file():
        if anatomy == "head":
            slices, note = real_mri_slices("s1045"), "matplotlib sample_data s1045.ima.gz (real MRI)"
        else:
            slices = real_mri_slices("example4d")[list(EPI_FILE_SLICES)]
            note = f"nibabel tests/data/example4d.nii.gz slices {list(EPI_FILE_SLICES)} (real MRI)"
        write_simulated_mri(path, slices, num_coils=8, seed=1, source=note, acquisition="SIMULATED_FROM_REAL_MRI",
                            phase_reference=real_brain_image(root))
    return path


def real_brain_image(root: Path) -> "np.ndarray":
    """The real brain of ../shared/data as one complex image (230, 180): its fully sampled coil images
    combined with ESPIRiT maps of the full k-space, so that it keeps the scan's own phase."""
    import h5py

    from ugodit_pl.classical import coil_combine
    from ugodit_pl.complex import ifft2c
    from ugodit_pl.operators.coil_maps import estimate_coil_maps

    with h5py.File(root / BRAIN_FILE, "r") as handle:
        kspace = torch.from_numpy(handle["kspace"][0])
    return coil_combine(ifft2c(kspace), estimate_coil_maps(kspace, cache_dir=False)).numpy()


def epi_position(volume_slice: int) -> int:
    """Where slice ``volume_slice`` of nibabel's EPI volume lies in the simulated ``epi.h5`` (each slice's
    noise and phase are seeded by its position, so adding slices at the end changes none before them).

    >>> epi_position(EPI_TEST_SLICE), [epi_position(s) for s in EPI_ADJACENT]
    (0, [3, 4, 5, 6])
    """
    return EPI_FILE_SLICES.index(volume_slice)


def center_fraction(entry: Dict[str, Any]) -> float:
    """The fully sampled centre: the undersampling's, or at least 8 columns at 8x (for ESPIRiT)."""
    kind, _, fraction = UNDERSAMPLINGS[entry["undersampling"]]
    width = (entry["crop"] or ANATOMIES[entry["anatomy"]][1])[1]
    return max(fraction, 8.0 / width) if kind == "equispaced" else fraction


def datamodule(entry: Dict[str, Any], path: Path, *, role: str = "test", slices: Any = 0,
               pretrain: Optional[List[Tuple[str, int]]] = None, cache: Optional[str] = None,
               coil_map_args: Optional[Dict[str, Any]] = None, mask_seed: int = 0):
    """The data module of a panel problem (the test slice, or with ``role="pretrain"`` the given
    (file, slice) pairs of ``pretrain``, undersampled and cropped like the test)."""
    from ugodit_pl.datamodules import FastMRIDataModule

    kind, acceleration, _ = UNDERSAMPLINGS[entry["undersampling"]]
    return FastMRIDataModule(
        test_files=None, test_slices=[(str(path), slices)] if role == "test" else "middle", pretrain_files=None,
        pretrain_slices=pretrain if pretrain else "middle", role=role, mask=kind, acceleration=acceleration,
        center_fraction=center_fraction(entry), mask_seed=mask_seed, coil_maps="espirit",
        coil_map_cache_dir=cache if cache is not None else False, coil_map_args=dict(coil_map_args or {}),
        target="rss" if role == "test" else None, crop_size=entry["crop"],
    )


def test_batch(entry: Dict[str, Any], root: Path, folder: Path, cache: Optional[str] = None,
               coil_map_args: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The test measurement of a panel problem as a batch (y, operator with ESPIRiT maps, RSS target)."""
    dm = datamodule(entry, anatomy_file(entry["anatomy"], root, folder), cache=cache, coil_map_args=coil_map_args)
    dm.setup("fit", rank=0, world_size=1)
    return dm.batch


def support_of(batch: Dict[str, Any]) -> torch.Tensor:
    """(B, 1, H, W) float mask of the pixels the SENSE model sees: where each row's coil maps are not all zero.

    ESPIRiT zeroes the maps outside the object (its eigenvalue ``crop``); there A ignores the image,
    so a network's output is unconstrained. Every reconstruction (classical or network) is scored
    after multiplication by this support, which is known without the ground truth.
    """
    maps = batch["operator"].coil_maps
    return (maps.abs().pow(2).sum(dim=1, keepdim=True) > 0).float()
