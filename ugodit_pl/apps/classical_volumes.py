"""``ugodit classical``: the classical reconstructions of a whole folder of fastMRI files, resumably.

The honest baselines a network reconstruction should be shown beside, on the user's own data and on the
same measurement as ``ugodit reconstruct`` / ``ugodit fit`` sees: every selected slice of every
multi-coil ``.h5`` file in ``--data`` is undersampled, and its coil maps estimated, by the same
``FastMRIDataModule`` settings (its defaults, or a ``--config``'s ``data.init_args``: any MRI
``ugodit fit`` YAML), then reconstructed by ``--method``:

- ``total_variation`` (the default: the strongest classical answer on every data set measured here,
  ``benchmarks/results/decisions.md`` decision 23) or ``l1_wavelet``, with lambda chosen per slice without
  the target (``--lamda auto``, the default: ``ugodit_pl.lamda_rules.automatic_lamda``, held-out k-space
  cross-validation, the discrepancy principle where nothing can be held out) or given;
- ``sense`` (CG-SENSE at ``classical.SENSE_LAMDA`` unless given) or ``zero_filled``.

Outputs are those of ``ugodit reconstruct``: ``OUT/<file>.h5`` volumes in the fastMRI submission layout
(``ReconstructionWriter``), each slice with its PSNR / SSIM against the file's target when it is fully
sampled, its lambda, the rule that chose it and its seconds; every slice is written atomically, so an
interrupted run loses at most the slice in progress and the same command resumes it (assembling first
the slices it left in ``OUT/.partial``). Every selected slice is read and checked before the first is
reconstructed. ``OUT/classical_summary.json`` and the final table list every slice with per-volume
metrics (fastMRI's convention).

Usage::

    ugodit classical --data /data/multicoil_val --out recons_tv --config configs/mri_ugodit_fit_4x.yaml

>>> parse_args(["--data", "d", "--out", "o"]).method
'total_variation'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ugodit_pl.apps.io import write_json
from ugodit_pl.apps.reconstruct import (Item, check_output, config_sections, describe_source, find_items,
                                        item_metrics, items_per_hour, summary_table)
from ugodit_pl.apps.runtime import progress_display
from ugodit_pl.lamda_rules import RECONSTRUCTIONS

#: The methods whose lambda a rule can choose.
TUNED = tuple(RECONSTRUCTIONS)
METHODS = (*TUNED, "sense", "zero_filled")
SUMMARY = "classical_summary.json"
# Keys of a config's data.init_args that name the data (``--data`` and ``--slices`` do here).
_DATA_SELECTION_KEYS = ("test_files", "test_slices", "pretrain_files", "pretrain_slices", "role", "data_dir")


@dataclass
class ClassicalPlan:
    """What to reconstruct and how (see :func:`make_plan`)."""

    items: List[Item]
    out: Path
    method: str = "total_variation"
    lamda: Optional[float] = None  # None: chosen per slice (TV, L1); SENSE's is a number, zero-filled has none
    data_args: Dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    overwrite: bool = False

    def datamodule(self, items: Sequence[Item]):
        """The ``FastMRIDataModule`` serving exactly ``items`` (in order) with the plan's data settings."""
        from ugodit_pl.datamodules import FastMRIDataModule

        pairs = [(str(item.path), int(item.slice)) for item in items]
        return FastMRIDataModule(test_files=None, test_slices=pairs, role="test", **self.data_args)


def parse_lamda(value: str) -> Optional[float]:
    """``--lamda``: ``auto`` (None) or a number >= 0.

    >>> parse_lamda("auto"), parse_lamda("1e-3")
    (None, 0.001)
    """
    if str(value).strip().lower() == "auto":
        return None
    try:
        lamda = float(value)
    except ValueError:
        raise ValueError(f"--lamda must be 'auto' or a number >= 0, got {value!r}") from None
    if not lamda >= 0.0:
        raise ValueError(f"--lamda must be 'auto' or a number >= 0, got {value!r}")
    return lamda


def make_plan(args: argparse.Namespace) -> ClassicalPlan:
    """Resolve items, config and flags into a :class:`ClassicalPlan` (every error before the first slice)."""
    from ugodit_pl.datamodules.fastmri_io import inspect_volume

    lamda = None if args.lamda is None else parse_lamda(args.lamda)
    if args.method == "zero_filled" and args.lamda is not None:
        raise ValueError(f"--lamda {args.lamda}: zero-filled reconstruction has no lambda")
    if args.method == "sense" and args.lamda is not None and lamda is None:
        raise ValueError("--lamda auto chooses the lambda of total_variation or l1_wavelet; CG-SENSE takes a number "
                         "(default ugodit_pl.classical.SENSE_LAMDA)")
    kind, items = find_items(args.data, args.slices)
    if kind != "mri":
        raise ValueError(f"--data {args.data} holds images: ugodit classical reconstructs multi-coil fastMRI k-space")
    for path in sorted({item.path for item in items}):
        if not inspect_volume(path).multicoil:
            raise ValueError(f"{path}: single-coil k-space; ugodit classical needs multi-coil files (coil maps)")
    data_args: Dict[str, Any] = {}
    if args.config:
        config = config_sections(args.config)
        if config["data_class"].rsplit(".", 1)[-1] != "FastMRIDataModule":
            raise ValueError(f"--config {args.config}: its data module is {config['data_class'] or 'not given'}; "
                             f"ugodit classical takes the settings of a FastMRIDataModule (an MRI config)")
        data_args = {k: v for k, v in config["data"].items() if k not in _DATA_SELECTION_KEYS}
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise ValueError(f"--device {args.device}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: this torch sees no CUDA device")
    if args.method == "sense" and lamda is None:
        from ugodit_pl.classical import SENSE_LAMDA

        lamda = SENSE_LAMDA
    plan = ClassicalPlan(items, Path(args.out), args.method, lamda, data_args, str(device), bool(args.overwrite))
    check_output(plan.out)
    plan.datamodule(plan.items).check()
    return plan


def reconstruct_slice(kspace: torch.Tensor, mask: torch.Tensor, coil_maps: torch.Tensor, method: str,
                      lamda: Optional[float]) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """(the complex (H, W) reconstruction in the k-space's units, what to record with it: lambda and rule)
    of one multi-coil slice (coils, H, W) by ``method`` (:data:`METHODS`); ``lamda`` None: chosen by
    ``automatic_lamda`` (TV, L1) or the method's default (SENSE).

    >>> from ugodit_pl.complex import fft2c
    >>> maps = torch.ones(1, 16, 16, dtype=torch.complex64)
    >>> image, record = reconstruct_slice(fft2c(torch.rand(1, 16, 16) + 0j), torch.ones(16, 16), maps, "sense", None)
    >>> tuple(image.shape), record
    ((16, 16), {'lamda': 0.01})
    """
    from ugodit_pl import classical, lamda_rules

    if method == "zero_filled":
        return classical.zero_filled(kspace, coil_maps, mask=mask), {}
    if method == "sense":
        lamda = classical.SENSE_LAMDA if lamda is None else lamda
        return classical.sense(kspace, mask, coil_maps, lamda=lamda), {"lamda": lamda}
    if lamda is not None:
        return lamda_rules.RECONSTRUCTIONS[method](kspace, mask, coil_maps, lamda=lamda), {"lamda": lamda,
                                                                                           "lamda_rule": "given"}
    chosen = lamda_rules.automatic_lamda(kspace, mask, coil_maps, method=method, rule="auto")
    rule = f"held-out {chosen.held_out[0]} ({chosen.held_out[1]:g})" if chosen.held_out else "discrepancy"
    return chosen.image, {"lamda": chosen.lamda, "lamda_rule": rule}


def describe_lamda(method: str, lamda: Optional[float]) -> str:
    """How ``method``'s lambda is set, for the run's first line.

    >>> describe_lamda("total_variation", None), describe_lamda("sense", None)
    ('lambda chosen per slice without the target', 'lambda 0.01')
    """
    from ugodit_pl import classical

    if method == "zero_filled":
        return "no lambda"
    if lamda is None:
        return "lambda chosen per slice without the target" if method in TUNED else f"lambda {classical.SENSE_LAMDA:g}"
    return f"lambda {lamda:g}"


def _reconstruct_item(plan: ClassicalPlan, item: Item, writer) -> Dict[str, Any]:
    """Read, reconstruct and write one slice; the record written with it."""
    from ugodit_pl.complex import complex_to_channels

    datamodule = plan.datamodule([item])
    datamodule.setup("fit", rank=0, world_size=1)
    batch = datamodule.batch
    operator, device = batch["operator"], torch.device(plan.device)
    started = time.perf_counter()
    image, record = reconstruct_slice(batch["y"][0].to(device), operator.mask[0].to(device),
                                      operator.coil_maps[0].to(device), plan.method, plan.lamda)
    record["seconds"] = round(time.perf_counter() - started, 3)
    target = batch.get("target")
    settings = json.dumps({"method": plan.method, "lamda": plan.lamda, "data": plan.data_args}, sort_keys=True,
                          default=str)
    writer.write_slice(item.path.name, int(item.slice), complex_to_channels(image.cpu()[None])[0], plan.method,
                       settings, record, None if target is None else target[0])
    return dict(writer.metrics(item.path.name, int(item.slice)) or record)


def run(plan: ClassicalPlan, *, show_progress: bool = True, console=None) -> Dict[str, Any]:
    """Reconstruct the plan's pending slices one by one, each volume assembled when its last slice is written;
    print and return the summary."""
    from rich.console import Console

    from ugodit_pl.callbacks import ReconstructionWriter

    console = console or Console()
    writer = ReconstructionWriter(plan.out, overwrite=plan.overwrite)
    writer.remove_stale_temporaries()
    writer.assemble_all()  # the slices an interrupted run wrote before its volume was assembled
    keys = [item.key for item in plan.items]
    pending_keys = {tuple(key) for key in (keys if plan.overwrite else writer.pending(keys))}
    pending = [item for item in plan.items if item.key in pending_keys]
    how = describe_lamda(plan.method, plan.lamda)
    count = f"{len(plan.items)} slice{'' if len(plan.items) == 1 else 's'}"
    console.print(f"[bold]ugodit classical[/bold] ({plan.method}, {how}): {count} in {describe_source(plan.items)}; "
                  f"{len(plan.items) - len(pending)} already written in {plan.out}, {len(pending)} to do")
    last_of_volume = {item.path.name: item for item in pending}
    done_now: Dict[str, Dict[str, Any]] = {}
    started = time.perf_counter()
    progress = progress_display(show_progress, console, description_width=40)
    with progress or contextlib.nullcontext():
        task = progress.add_task("slices", total=len(pending)) if progress is not None else None
        for item in pending:
            done_now[item.label] = entry = _reconstruct_item(plan, item, writer)
            if last_of_volume[item.path.name] is item:
                writer.assemble(item.path.name)
            metric = f"PSNR {entry['psnr']:.2f} dB, SSIM {entry['ssim']:.3f}" if "psnr" in entry else "no ground truth"
            chosen = f", lambda {entry['lamda']:g}" if "lamda" in entry else ""
            console.print(f"  done {item.label}: {metric}{chosen} ({entry['seconds']:.1f} s)")
            if progress is not None:
                progress.update(task, advance=1)
    seconds = time.perf_counter() - started
    summary = {"command": "ugodit classical", "data": describe_source(plan.items),
               "out": str(plan.out), "method": plan.method, "lamda": plan.lamda if plan.lamda is not None else
               ("auto" if plan.method in TUNED else None), "data_args": plan.data_args,
               **item_metrics(plan.items, "mri", done_now, [], writer), "how": "one slice at a time",
               "seconds": round(seconds, 3), "items_per_hour": items_per_hour(len(done_now), seconds)}
    write_json(plan.out / SUMMARY, summary)
    console.print(summary_table(summary))
    return summary


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The ``ugodit classical`` options."""
    parser = argparse.ArgumentParser(
        prog="ugodit classical",
        description="Classical reconstructions (total variation, L1-wavelet, CG-SENSE, zero-filled) of every slice "
                    "of a folder of multi-coil fastMRI files, lambda chosen per slice without the target; the "
                    "baselines to show beside a network's reconstruction. Resumable: run the same command again "
                    "after an interruption.",
    )
    parser.add_argument("--data", required=True, help="a multi-coil fastMRI .h5 file or a folder of them")
    parser.add_argument("--out", required=True, help="output folder (volumes <file>.h5, as ugodit reconstruct)")
    parser.add_argument("--method", choices=METHODS, default="total_variation",
                        help="the reconstruction (default total_variation, the strongest measured here)")
    parser.add_argument("--lamda", default=None,
                        help="auto (default for total_variation and l1_wavelet: held-out k-space cross-validation "
                             "per slice, the discrepancy principle where nothing can be held out) or a number "
                             "(relative to k-space scaled so that the zero-filled image has max 1); CG-SENSE: a "
                             "number, default 0.01")
    parser.add_argument("--config", default=None,
                        help="an MRI `ugodit fit` YAML whose data.init_args (mask, acceleration, centre fraction, "
                             "mask seed, coil maps, target, crop) make the same measurement a network was given")
    parser.add_argument("--slices", default="all", help="slices of each file: all (default), middle, 'a:b', an int")
    parser.add_argument("--device", default="cpu",
                        help="torch device of total variation's iteration, e.g. cuda (default cpu; L1-wavelet and "
                             "CG-SENSE run on sigpy's CPU path)")
    parser.add_argument("--overwrite", action="store_true", help="redo slices already written in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    """Entry point of ``ugodit classical``."""
    args = parse_args(argv)
    plan = make_plan(args)
    run(plan, show_progress=not args.quiet)
    return 0
