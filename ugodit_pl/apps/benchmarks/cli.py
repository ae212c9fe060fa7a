"""``ugodit benchmark SUITE --preset tiny|quick|full --out DIR``: one command per claim.

Suites: ``mri-quality``, ``sr-quality``, ``speed``, ``early-stopping``, ``transfer-study``, ``volume``. Each
writes ``DIR/SUITE.json`` (the results, the settings, the command line, the git revision and the
machine: CPU model, cores, threads, GPU, load average at the start and the end) and its PNG plots.

``mri-quality``, ``transfer-study`` and ``volume`` keep each finished unit (a fit; a method's chains on
a volume) in ``DIR/NAME.partial/`` as it lands (``ugodit_pl.apps.benchmarks.journal``): a killed run,
rerun with the same command, fits only what was not finished; the folder is removed when the result
file is written. ``--fresh`` starts again.

Presets: ``quick`` (reduced size and steps, for 2 CPU cores), ``full`` (the papers' sizes and step
counts, meant for a GPU) and ``tiny`` (seconds; for the tests, the numbers mean nothing).
``--set KEY=VALUE`` overrides a preset entry (VALUE is JSON, e.g. ``--set steps=50``) and is recorded.

>>> main(["--help"]) == 0  # doctest: +ELLIPSIS
usage: ugodit benchmark ...
True
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ugodit_pl.apps.benchmarks.journal import Journal

SUITES = ("mri-quality", "sr-quality", "speed", "early-stopping", "transfer-study", "volume")
#: The suites that keep a journal of their finished units and resume an interrupted run.
RESUMABLE = ("mri-quality", "transfer-study", "volume")
PRESET_NAMES = ("tiny", "quick", "full")

__all__ = ["SUITES", "main", "run_suite"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ugodit benchmark",
        description="Run a benchmark suite and write DIR/SUITE.json (+ PNG plots).",
    )
    parser.add_argument("suite", choices=SUITES, help="the suite to run")
    parser.add_argument("--preset", choices=PRESET_NAMES, default="quick",
                        help="quick: reduced size for 2 CPU cores; full: the papers' setting (GPU); tiny: seconds, tests")
    parser.add_argument("--out", default="benchmarks/results", help="output folder (default: benchmarks/results)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice); 1 is faster on an overloaded CPU")
    parser.add_argument("--data", default=None, help="real-data folder (default: $UGODIT_DATA or ../shared/data)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (masks, noise, inits)")
    parser.add_argument("--name", default=None,
                        help="file stem of the outputs (default: the suite name), e.g. for a variant run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset entry; VALUE is JSON (repeatable)")
    parser.add_argument("--fresh", action="store_true",
                        help=f"discard the finished fits of an interrupted run (DIR/NAME.partial) instead of resuming "
                             f"it ({', '.join(RESUMABLE)})")
    return parser


def _parse_overrides(items: List[str]) -> Dict[str, Any]:
    overrides: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def _runner(suite: str, journal: Optional[Journal] = None) -> Callable[..., Dict[str, Any]]:
    """The function that runs ``suite``: ``fn(preset, out_dir, data, device, seed, overrides) -> result``;
    a suite of :data:`RESUMABLE` keeps its finished units in ``journal``."""
    if suite == "mri-quality":
        from ugodit_pl.apps.benchmarks.mri_quality import run_mri_quality

        return lambda preset, out, data, device, seed, overrides: run_mri_quality(
            preset, out, data=data, device=device, seed=seed, overrides=overrides, journal=journal)
    if suite == "sr-quality":
        from ugodit_pl.apps.benchmarks.sr_quality import run_sr_quality

        return lambda preset, out, data, device, seed, overrides: run_sr_quality(
            preset, out, data=data, device=device, seed=seed, overrides=overrides)
    if suite == "speed":
        from ugodit_pl.apps.benchmarks.speed import run_speed_suite

        return lambda preset, out, data, device, seed, overrides: run_speed_suite(
            preset, device=device, overrides=overrides, data=data, out_dir=out, seed=seed)
    if suite == "early-stopping":
        from ugodit_pl.apps.benchmarks.early_stopping import run_early_stopping_suite

        return lambda preset, out, data, device, seed, overrides: run_early_stopping_suite(
            preset, data=data, device=device, overrides=dict(overrides, seed=seed), out_dir=out)
    if suite == "transfer-study":
        from ugodit_pl.apps.benchmarks.transfer_study import run_transfer_study

        return lambda preset, out, data, device, seed, overrides: run_transfer_study(
            preset, out, data=data, device=device, seed=seed, overrides=overrides, journal=journal)
    if suite == "volume":
        from ugodit_pl.apps.benchmarks.volume import run_volume_suite

        return lambda preset, out, data, device, seed, overrides: run_volume_suite(
            preset, out, data=data, device=device, seed=seed, overrides=overrides, journal=journal)
    raise ValueError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")


def timing_note(machine: Dict[str, Any]) -> str:
    """Whether the timings were taken under load: the 1-minute load average at the start or the end above
    the number of cores means other jobs shared the CPU (the benchmark itself counts for its threads).

    >>> timing_note({"cores": 2, "load_average_start": [3.0, 1, 1], "load_average_end": [1.0, 1, 1]})[:18]
    'timings under load'
    """
    cores = machine.get("cores") or 1
    ones = [v[0] for v in (machine.get("load_average_start"), machine.get("load_average_end")) if v]
    if not ones:
        return "load average unknown"
    if max(ones) > cores:
        return (f"timings under load: 1-minute load average up to {max(ones):.1f} on {cores} cores (other jobs shared "
                f"the CPU), so seconds are upper bounds")
    return f"1-minute load average at most {max(ones):.1f} on {cores} cores"


def run_suite(suite: str, preset: str = "quick", out: str = "benchmarks/results", *, device: Optional[str] = None,
              threads: Optional[int] = None, data: Optional[str] = None, seed: int = 0,
              overrides: Optional[Dict[str, Any]] = None, command: Optional[List[str]] = None,
              name: Optional[str] = None, fresh: bool = False) -> Path:
    """Run ``suite`` and write ``out/NAME.json`` (NAME defaults to the suite); returns its path.

    Plots are written as ``SUITE*.png`` and renamed to ``NAME*.png`` when a name is given. A suite of
    :data:`RESUMABLE` resumes from ``out/NAME.partial`` (see the module), unless ``fresh``.
    """
    import torch

    from ugodit_pl.apps.io import machine_info, write_json

    if preset not in PRESET_NAMES:
        raise ValueError(f"preset must be one of {PRESET_NAMES}, got {preset!r}")
    stem = name or suite
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", stem) or not stem.startswith(suite):
        raise ValueError(f"name must start with the suite name {suite!r} and use only letters, digits, '_', '.', '-'; "
                         f"got {stem!r}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    journal, resumed = None, 0
    if suite in RESUMABLE:
        journal = Journal(out_dir / f"{stem}.partial", _identity(suite, preset, seed, overrides, data, device),
                          fresh=fresh)
        resumed = journal.open()
    # plots are written to a fresh folder first, so that only this run's plots are listed and moved
    scratch = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=out_dir))
    before = machine_info(command=command, device=device)
    start = time.perf_counter()
    try:
        result = _runner(suite, journal)(preset, scratch, data, device, seed, dict(overrides or {}))
        plots = []
        for png in sorted(scratch.glob(f"{suite}*.png")):
            target = out_dir / (stem + png.name[len(suite):])
            os.replace(png, target)
            plots.append(target.name)
    except BaseException:
        if journal is not None and not len(journal):
            journal.close()  # nothing finished (e.g. a setting refused before fitting): nothing to resume
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    wall = time.perf_counter() - start
    after_load = machine_info(command=command, device=device)["load_average"]
    machine = dict(before, load_average_start=before.pop("load_average"), load_average_end=after_load)
    document = {
        "suite": suite,
        "name": stem,
        "preset": preset,
        "seed": seed,
        "overrides": overrides or {},
        "wall_seconds": wall,
        "machine": machine,
        "timing_note": timing_note(machine),
        "result": result,
        "plots": plots,
        **({"resumed_units": resumed} if resumed else {}),
    }
    path = write_json(out_dir / f"{stem}.json", document)
    if journal is not None:
        journal.close()
    return path


def _identity(suite: str, preset: str, seed: int, overrides: Optional[Dict[str, Any]], data: Optional[str],
              device: str) -> Dict[str, Any]:
    """What makes a run's results: a journal written under another identity is not resumed."""
    import torch

    from ugodit_pl.apps.benchmarks.common import data_root
    from ugodit_pl.apps.io import git_revision

    revision = git_revision()
    return {"suite": suite, "preset": preset, "seed": seed, "overrides": overrides or {},
            "data": str(data_root(data).resolve()), "device": str(device), "threads": torch.get_num_threads(),
            "git_revision": revision["commit"], "git_dirty": revision["dirty"]}


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``ugodit benchmark`` (``argv`` without the ``benchmark`` word); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "benchmark":  # also accept the full ``ugodit`` argument list
        argv = argv[1:]
    parser = _parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help(sys.stdout)
        return 0
    args = parser.parse_args(argv)
    try:
        overrides = _parse_overrides(args.overrides)
        path = run_suite(args.suite, args.preset, args.out, device=args.device, threads=args.threads, data=args.data,
                         seed=args.seed, overrides=overrides, command=["ugodit", "benchmark", *argv], name=args.name,
                         fresh=args.fresh)
    except (FileNotFoundError, ValueError) as error:
        print(f"ugodit benchmark: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
