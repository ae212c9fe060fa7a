"""``ugodit compare``: reconstructions of the same slices side by side, slice by slice.

Each argument is an output folder of ``ugodit reconstruct`` or ``ugodit classical`` (``<file>.h5`` volumes in
the fastMRI submission layout with their ``target``, as ``ReconstructionWriter`` writes them). For the slices
every folder holds (matched by file name and slice number), the command

- checks that every folder scored them against the same target (the same file, crop and target kind);
  a slice whose targets differ is an error naming it: such folders do not compare;
- recomputes each slice's PSNR and SSIM from the stored images (fastMRI's conventions, the slice's own
  maximum as data range), and each volume's figures over the common slices (the volume's maximum);
- prints a table with one row per slice, a column per folder and the difference of each folder from the
  first, and under it the paired means: the mean difference, the slices each folder wins, its worst
  slice. A difference of a few tenths of a decibel on one slice is within a fit's round-off; read the
  means over many slices.

``--json FILE`` writes the same figures (atomically).

Usage::

    ugodit compare recons recons_tv recons_l1

>>> parse_args(["a", "b"]).folders
['a', 'b']
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ugodit_pl.apps.io import write_json

#: Targets of one slice in two folders agree when they differ by at most this, relative to the target's maximum.
TARGET_TOLERANCE = 1e-4

Key = Tuple[str, int]  # (volume file name, slice number)


@dataclass
class Folder:
    """The slices of one output folder: their images and targets, and the method that wrote each volume."""

    path: Path
    images: Dict[Key, np.ndarray]
    targets: Dict[Key, np.ndarray]
    methods: Dict[str, str]

    @property
    def label(self) -> str:
        """The folder's name with the method(s) its volumes record, e.g. ``recons_tv (total_variation)``."""
        methods = sorted(set(self.methods.values()))
        return f"{self.path.name} ({', '.join(methods)})" if methods else self.path.name


def read_folder(path: Path) -> Folder:
    """Every slice of every volume in ``path`` that has a stored target; a clear error when there is none."""
    import h5py

    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder (an output folder of ugodit reconstruct or ugodit classical)")
    images: Dict[Key, np.ndarray] = {}
    targets: Dict[Key, np.ndarray] = {}
    methods: Dict[str, str] = {}
    for volume in sorted(path.glob("*.h5")):
        with h5py.File(volume, "r") as handle:
            if "reconstruction" not in handle or "target" not in handle:
                continue
            recon, target = handle["reconstruction"][()], handle["target"][()]
            numbers = [int(s) for s in np.asarray(handle.attrs.get("slices", range(recon.shape[0])))]
            methods[volume.name] = str(handle.attrs.get("method", ""))
        for k, number in enumerate(numbers):
            images[(volume.name, number)] = np.asarray(recon[k], dtype=np.float64)
            targets[(volume.name, number)] = np.asarray(target[k], dtype=np.float64)
    if not images:
        raise ValueError(f"{path}: no reconstructed volume with a target (<file>.h5 with datasets reconstruction and "
                         f"target, as ugodit reconstruct and ugodit classical write for fully sampled files)")
    return Folder(path, images, targets, methods)


def common_slices(folders: Sequence[Folder]) -> List[Key]:
    """The slices every folder holds, in file and slice order; a ValueError naming the folders when none."""
    keys = set(folders[0].images)
    for folder in folders[1:]:
        keys &= set(folder.images)
    if not keys:
        raise ValueError(f"the folders {', '.join(str(f.path) for f in folders)} hold no slice in common "
                         f"(matched by file name and slice number)")
    return sorted(keys)


def check_targets(folders: Sequence[Folder], keys: Sequence[Key]) -> None:
    """Every folder scored each slice against the same target; a ValueError naming the first slice that differs."""
    first = folders[0]
    for folder in folders[1:]:
        for key in keys:
            a, b = first.targets[key], folder.targets[key]
            peak = float(np.abs(a).max()) or 1.0
            if a.shape != b.shape or float(np.abs(a - b).max()) > TARGET_TOLERANCE * peak:
                raise ValueError(f"{key[0]} slice {key[1]}: {first.path} and {folder.path} scored it against different "
                                 f"targets ({a.shape} and {b.shape}); run both from the same files and data settings "
                                 f"(mask, crop, target)")


def compare(folders: Sequence[Folder]) -> Dict[str, Any]:
    """Per slice and per volume, each folder's PSNR / SSIM on the common slices, and the paired summary."""
    import torch

    from ugodit_pl.metrics import mri_metrics, volume_metrics

    keys = common_slices(folders)
    check_targets(folders, keys)

    def stacked(arrays: Dict[Key, np.ndarray], chosen: Sequence[Key]) -> torch.Tensor:
        return torch.from_numpy(np.stack([arrays[key] for key in chosen]))[:, None]  # (S, 1, H, W)

    per_folder = []
    for folder in folders:
        slices = [mri_metrics(stacked(folder.images, [key]), stacked(folders[0].targets, [key])) for key in keys]
        volumes = {}
        for name in sorted({key[0] for key in keys}):  # the slices of one volume share its size
            chosen = [key for key in keys if key[0] == name]
            values = volume_metrics(stacked(folder.images, chosen), stacked(folders[0].targets, chosen))
            volumes[name] = {m: round(float(v), 4) for m, v in values.items()}
        per_folder.append({"folder": str(folder.path), "label": folder.label,
                           "psnr": [round(float(v["psnr"][0]), 4) for v in slices],
                           "ssim": [round(float(v["ssim"][0]), 4) for v in slices], "volumes": volumes})
    reference = np.asarray(per_folder[0]["psnr"])
    for entry in per_folder:
        difference = np.asarray(entry["psnr"]) - reference
        entry["mean_psnr"] = round(float(np.mean(entry["psnr"])), 4)
        entry["mean_ssim"] = round(float(np.mean(entry["ssim"])), 4)
        entry["psnr_minus_first"] = {"mean": round(float(difference.mean()), 4),
                                     "worst": round(float(difference.min()), 4),
                                     "best": round(float(difference.max()), 4),
                                     "slices_above": int((difference > 0).sum())}
    return {"slices": [f"{name}/slice_{number:03d}" for name, number in keys], "folders": per_folder,
            "metrics": "PSNR / SSIM of each slice's magnitude against the stored target, the slice's own maximum as "
                       "data range; per volume: fastMRI's evaluate over the common slices"}


def table(result: Dict[str, Any]):
    """The rich table: a row per slice, each folder's PSNR and its difference from the first folder."""
    from rich.table import Table

    folders = result["folders"]
    out = Table(title=f"ugodit compare: {len(result['slices'])} slices in common, PSNR (dB)")
    out.add_column("slice")
    for k, entry in enumerate(folders):
        out.add_column(entry["label"], justify="right")
        if k:
            out.add_column(f"- {folders[0]['label'].split(' ')[0]}", justify="right")
    for row, name in enumerate(result["slices"]):
        cells = []
        for k, entry in enumerate(folders):
            cells.append(f"{entry['psnr'][row]:.2f}")
            if k:
                cells.append(f"{entry['psnr'][row] - folders[0]['psnr'][row]:+.2f}")
        out.add_row(name, *cells)
    captions = []
    for k, entry in enumerate(folders):
        line = f"{entry['label']}: mean PSNR {entry['mean_psnr']:.2f} dB, SSIM {entry['mean_ssim']:.3f}"
        if k:
            paired = entry["psnr_minus_first"]
            line += (f"; against {folders[0]['label']}: {paired['mean']:+.2f} dB on average, above it on "
                     f"{paired['slices_above']} of {len(result['slices'])} slices, worst {paired['worst']:+.2f}")
        captions.append(line)
        for name, values in entry["volumes"].items():
            captions.append(f"  volume {name}: PSNR {values['psnr']:.2f} dB, SSIM {values['ssim']:.3f}")
    out.caption = "\n".join(captions)
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The ``ugodit compare`` options."""
    parser = argparse.ArgumentParser(
        prog="ugodit compare",
        description="Reconstructions of the same slices side by side (output folders of ugodit reconstruct or "
                    "ugodit classical), slice by slice, with each folder's difference from the first.",
    )
    parser.add_argument("folders", nargs="+", help="two or more output folders; the first is the reference")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    """Entry point of ``ugodit compare``."""
    from rich.console import Console

    args = parse_args(argv)
    if len(args.folders) < 2:
        raise ValueError(f"ugodit compare needs two or more folders, got {len(args.folders)}")
    folders = [read_folder(Path(folder).expanduser()) for folder in args.folders]
    result = compare(folders)
    if args.json:
        write_json(Path(args.json), result)
    Console().print(table(result))
    return 0

