"""``ugodit demo``: UGoDIT against its baselines on the embedded demo data, in a few minutes on a CPU.

What it runs (``task="mri"``, the default; sizes and step counts are printed and stored):

1. data: ``make_mri_demo`` writes M + T simulated 8-coil slices (scikit-image's bundled photographs,
   nothing downloaded) to a temporary folder; 4x random column undersampling; ESPIRiT coil maps
   estimated from each measurement. The first M = 4 slices are for pre-training, the last T = 3 are
   held out as test measurements.
2. UGoDIT group pre-training on the M slices (shared encoder, M decoders); the encoder is saved as
   transferable weights to ``DIR/transferable_weights.pt``.
3. test-time fits of the T held-out slices (side by side, independently), each method for the same
   number of steps: UGoDIT (encoder frozen to the transferable weights, fresh decoder), aSeqDIP and
   DIP (networks from scratch), plus the zero-filled reconstruction A^H y (no fitting).
4. a rich table of the mean PSNR / SSIM over the held-out slices, the PSNR after a quarter of the
   steps, steps and seconds; ``DIR/results.json`` (also per-slice values and the PSNR curves),
   ``DIR/comparison.png`` (per slice: ground truth, degraded input, each method, error maps) and
   ``DIR/psnr_curve.png`` (mean PSNR against steps per method), each written atomically.

``task="sr"``: 4x super-resolution of a bundled photograph (``demo_images``, T = 1) with the skip
network; pre-training on 4 other photographs; the baseline is the bilinear upsampling of the measurement.

The settings are small so that the whole demo fits in a few minutes on a CPU (one thread by
default): 64 x 64 images, a U-Net of 16-32-64-64 channels (the authors' is 64-128-256-256 at
320 x 320), 200 steps each. The learning rates are raised for such short runs (the authors'
3e-4 / 4e-4 are tuned for thousands of steps), the same for every method, and each fit reports its
last output (``output="last"``: the EMA of the authors' code lags a 200-step run by its ~100-step
window). The numbers are what this small run gives, not the papers' figures.

Usage::

    ugodit demo --out demo_output                  # MRI, defaults
    ugodit demo --task sr --steps 300 --size 64

>>> parse_args(["--task", "sr", "--steps", "10"]).steps
10
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ugodit_pl.apps.io import machine_info, write_json
from ugodit_pl.apps.runtime import progress_display, quiet_lightning, step_progress
from ugodit_pl.atomic import atomic_path

TASKS = ("mri", "sr")
# The bundled scikit-image photographs the demo uses, in order (test measurements first for sr, last for mri).
PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left")
MRI_PHOTOGRAPHS = ("camera", "astronaut", "chelsea", "coffee", "rocket", "moon", "motorcycle_left", "coins", "brick",
                   "grass")

# Names of the methods in the table, results.json and the figures.
UGODIT, ASEQDIP, DIP_NAME = "UGoDIT", "aSeqDIP", "DIP"
BASELINE_NAMES = {"mri": "zero-filled", "sr": "bilinear upsampling"}


@dataclass
class DemoSettings:
    """Everything the demo's result depends on (stored in results.json).

    >>> DemoSettings.for_task("mri").network
    'unet'
    """

    task: str = "mri"
    size: int = 64
    steps: int = 200
    pretrain_steps: int = 200
    num_pretrain: int = 4
    num_test: int = 3
    network: str = "unet"
    network_args: Dict[str, Any] = field(default_factory=dict)
    lr_pretrain: float = 5e-3
    lr_fit: float = 1e-2
    loss_norm: str = "l2"
    input_update: str = "data_consistent"
    lam: float = 2.0
    update_every: int = 10
    acceleration: float = 4.0
    num_coils: int = 8
    scale_factor: int = 4
    noise_sigma: float = 0.025
    seed: int = 0
    eval_every: int = 10

    @classmethod
    def for_task(cls, task: str, **overrides: Any) -> "DemoSettings":
        """The default settings of ``task`` ("mri" or "sr") with ``overrides`` (None values ignored)."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if task == "mri":
            settings = cls(task="mri", network="unet", network_args={"channels": [16, 32, 64, 64]})
        else:
            scales, width = 4, 32
            settings = cls(
                task="sr", network="skip", steps=250, pretrain_steps=150, num_test=1, lr_pretrain=0.01, lr_fit=0.01,
                loss_norm="mse", input_update="sequential",
                network_args={"in_channels": 3, "out_channels": 3, "channels_down": [width] * scales,
                              "channels_up": [width] * scales, "channels_skip": [4] * scales},
            )
        for key, value in overrides.items():
            if value is not None:
                setattr(settings, key, value)
        settings.check()
        return settings

    def check(self) -> None:
        """Validate the settings, naming the argument."""
        multiple = 8 if self.network == "unet" else 2 ** len(self.network_args.get("channels_down", [0] * 5))
        if self.task == "sr":
            multiple = max(multiple, self.scale_factor)
        if self.size < 16 or self.size % multiple:
            raise ValueError(f"--size must be a multiple of {multiple} and at least 16 for task {self.task!r}, "
                             f"got {self.size}")
        for name in ("steps", "pretrain_steps", "num_pretrain", "num_test", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        available = len(PHOTOGRAPHS) if self.task == "sr" else len(MRI_PHOTOGRAPHS)
        if self.num_pretrain + self.num_test > available:
            raise ValueError(f"--num-pretrain + --num-test must be at most {available} (the {self.task} demo's "
                             f"photographs), got {self.num_pretrain} + {self.num_test}")


# --------------------------------------------------------------------------------------------- data
def make_data(settings: DemoSettings, folder: Path):
    """The (pre-training, test) data modules of the demo, set up, from files written to ``folder``."""
    from ugodit_pl.datamodules import DegradedImageDataModule, FastMRIDataModule, demo_images, make_mri_demo

    if settings.task == "mri":
        count = settings.num_pretrain + settings.num_test
        paths = make_mri_demo(folder, num_files=1, num_slices=count, size=(settings.size, settings.size),
                              num_coils=settings.num_coils, seed=settings.seed)
        held_out = list(range(settings.num_pretrain, count))  # pre-training on the first slices, testing on the rest
        common = dict(
            data_dir=None, mask="random", acceleration=settings.acceleration,
            # at least 4 fully sampled centre columns, so that ESPIRiT has a calibration region
            center_fraction=max(0.08, 4.0 / settings.size), mask_seed=settings.seed,
            coil_map_cache_dir=False, target="rss",
        )
        test = FastMRIDataModule(test_files=str(paths[0]), test_slices=held_out, role="test", **common)
        pretrain = FastMRIDataModule(
            test_files=str(paths[0]), test_slices=held_out, pretrain_files=str(paths[0]),
            pretrain_slices=list(range(settings.num_pretrain)), role="pretrain", **common,
        )
    else:
        paths = demo_images(folder, size=settings.size, names=PHOTOGRAPHS[: settings.num_test + settings.num_pretrain])
        tests, others = paths[: settings.num_test], paths[settings.num_test :]
        common = dict(operator="super_resolution", operator_args={"scale_factor": settings.scale_factor},
                      noise="gaussian", noise_sigma=settings.noise_sigma, size=settings.size, seed=settings.seed)
        test = DegradedImageDataModule(images=[str(p) for p in tests], role="test", **common)
        pretrain = DegradedImageDataModule(images=[str(p) for p in tests], pretrain_images=[str(p) for p in others],
                                           role="pretrain", **common)
    test.setup("fit", rank=0, world_size=1)
    pretrain.setup("fit", rank=0, world_size=1)
    return pretrain, test


# --------------------------------------------------------------------------------------------- methods
def _method_args(settings: DemoSettings) -> Dict[str, Any]:
    return {"loss_norm": settings.loss_norm, "output": "last", "seed": settings.seed}


def _sequential_args(settings: DemoSettings) -> Dict[str, Any]:
    return {"lam": settings.lam, "update_every": settings.update_every, "input_update": settings.input_update}


def build_pretraining(settings: DemoSettings):
    from ugodit_pl.methods import UGoDITPretrain

    return UGoDITPretrain(num_measurements=settings.num_pretrain, network=settings.network,
                          network_args=settings.network_args, lr=settings.lr_pretrain,
                          **_method_args(settings), **_sequential_args(settings))


def build_fit(name: str, settings: DemoSettings, weights: Optional[Path]):
    """The test-time method ``name`` (UGoDIT, aSeqDIP or DIP) for the held-out measurements."""
    from ugodit_pl.methods import ASeqDIP, DIP, UGoDITFit

    common = _method_args(settings)
    if name == UGODIT:
        return UGoDITFit(weights=str(weights), num_measurements=settings.num_test, lr=settings.lr_fit, **common,
                         **_sequential_args(settings))
    if name == ASEQDIP:
        return ASeqDIP(num_measurements=settings.num_test, network=settings.network, network_args=settings.network_args,
                       lr=settings.lr_fit, **common, **_sequential_args(settings))
    if name == DIP_NAME:
        args = dict(settings.network_args)
        if settings.network == "skip":
            args["in_channels"] = 32  # DIP's noise input has 32 channels in the authors' image code
        return DIP(num_measurements=settings.num_test, network=settings.network, network_args=args, lr=settings.lr_fit,
                   **common)
    raise ValueError(f"unknown demo method {name!r}")


# --------------------------------------------------------------------------------------------- fitting
@dataclass
class FitResult:
    """What one fit of the demo produced."""

    name: str
    steps: int
    seconds: float
    psnr: float  # mean over the measurements
    ssim: float
    curve: List[List[float]]  # [step, mean PSNR] every eval_every steps
    images: List[np.ndarray] = field(default_factory=list)  # per measurement, display layout
    psnr_each: List[float] = field(default_factory=list)
    ssim_each: List[float] = field(default_factory=list)


def run_fit(name: str, method, datamodule, steps: int, settings: DemoSettings, progress=None,
            accelerator: str = "auto") -> FitResult:
    """Fit ``method`` for ``steps`` steps; PSNR every ``eval_every`` steps; the final metrics and image."""
    import pytorch_lightning as pl

    from ugodit_pl.callbacks import ReconstructionMetrics

    metrics = ReconstructionMetrics(every_n_steps=settings.eval_every, log_ema=False, print_summary=False)
    callbacks = [metrics]
    if progress is not None:
        def latest_psnr() -> Dict[str, str]:
            last = metrics.history[max(metrics.history)] if metrics.history else {}
            return {"psnr": f"PSNR {last['psnr']:5.2f} dB"} if "psnr" in last else {}

        callbacks.append(step_progress(progress, progress.add_task(name, total=steps, psnr=""), latest_psnr))
    trainer = pl.Trainer(
        max_steps=steps, accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(method, train_dataloaders=datamodule.train_dataloader())
    seconds = time.perf_counter() - start
    curve = [[float(step), float(values["psnr"])] for step, values in sorted(metrics.history.items())]
    return _result(name, steps, seconds, method.reconstruction, datamodule.batch["target"], curve)


def _result(name: str, steps: int, seconds: float, images, target, curve) -> FitResult:
    """Per-measurement and mean PSNR / SSIM of ``images`` (B, C, H, W) against ``target``."""
    from ugodit_pl.metrics import reconstruction_metrics

    images = images.detach().float().cpu()
    values = reconstruction_metrics(images, target.detach().float().cpu())
    psnr, ssim = values["psnr"].tolist(), values["ssim"].tolist()
    return FitResult(name, steps, seconds, float(np.mean(psnr)), float(np.mean(ssim)), curve,
                     [display_image(image) for image in images], psnr, ssim)


def display_image(image) -> np.ndarray:
    """(C, H, W) network-layout tensor -> (H, W) magnitude (2 channels: real/imaginary; 1 channel) or
    (H, W, 3) RGB clipped to [0, 1], as numpy float32."""
    array = image.detach().float().cpu()
    if array.shape[0] == 2:
        return array.pow(2).sum(0).sqrt().numpy()
    if array.shape[0] == 1:
        return array[0].abs().numpy()
    return array.permute(1, 2, 0).clamp(0, 1).numpy()


def baseline(settings: DemoSettings, datamodule) -> FitResult:
    """The reconstruction without fitting: A^H y (MRI, zero-filled) or the bilinear upsampling (SR)."""
    batch = datamodule.batch
    start = time.perf_counter()
    operator = batch["operator"]
    image = operator.adjoint(batch["y"]) if settings.task == "mri" else operator.init_input(batch["y"])
    seconds = time.perf_counter() - start
    return _result(BASELINE_NAMES[settings.task], 0, seconds, image, batch["target"], [])


# --------------------------------------------------------------------------------------------- outputs
def _save_figure(path: Path, figure) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")


def _show(axis, image: np.ndarray, vmax: float, title: str) -> None:
    if image.ndim == 3:
        axis.imshow(np.clip(image, 0, 1))
    else:
        axis.imshow(image, cmap="gray", vmin=0.0, vmax=vmax)
    axis.set_title(title, fontsize=9)
    axis.axis("off")


def write_comparison(path: Path, targets: Sequence[np.ndarray], names: Sequence[str],
                     results: Sequence[FitResult]) -> None:
    """Per measurement: ground truth, degraded input and each method (one row), their absolute errors (next row)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    columns = 1 + len(results)
    figure = Figure(figsize=(2.3 * columns, 4.7 * len(targets)), dpi=100)
    axes = figure.subplots(2 * len(targets), columns, squeeze=False)
    for row, (target, name) in enumerate(zip(targets, names)):
        top, bottom = axes[2 * row], axes[2 * row + 1]
        vmax = float(target.max()) or 1.0
        _show(top[0], target, vmax, f"ground truth\n{name}")
        bottom[0].axis("off")
        errors = [_error(result.images[row], target) for result in results]
        error_max = max(float(np.percentile(e, 99.5)) for e in errors) or 1.0
        for column, (result, error) in enumerate(zip(results, errors), start=1):
            _show(top[column], result.images[row], vmax,
                  f"{result.name}\n{result.psnr_each[row]:.2f} dB, SSIM {result.ssim_each[row]:.3f}")
            bottom[column].imshow(error, cmap="magma", vmin=0.0, vmax=error_max)
            bottom[column].set_title(f"|error| {result.name}", fontsize=9)
            bottom[column].axis("off")
    figure.tight_layout()
    _save_figure(path, figure)


def _error(image: np.ndarray, target: np.ndarray) -> np.ndarray:
    error = np.abs(image - target)
    return error.mean(-1) if error.ndim == 3 else error


def write_psnr_curve(path: Path, results: Sequence[FitResult], baseline_result: FitResult, title: str) -> None:
    """PSNR against test-time steps per method, the baseline as a dashed line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), dpi=110)
    axis = figure.subplots()
    for result in results:
        if result.curve:
            steps, values = zip(*result.curve)
            axis.plot(steps, values, label=result.name, linewidth=1.6)
    axis.axhline(baseline_result.psnr, color="gray", linestyle="--", label=baseline_result.name)
    axis.set_xlabel("test-time optimiser steps")
    axis.set_ylabel("PSNR (dB)")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    _save_figure(path, figure)


# --------------------------------------------------------------------------------------------- the job
def run_demo(settings: DemoSettings, out: Path, *, show_progress: bool = True, accelerator: str = "auto",
             console=None) -> Dict[str, Any]:
    """Run the demo with ``settings``, write its files into ``out`` and return results.json's content."""
    from rich.console import Console

    console = console or Console()
    quiet_lightning()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total_start = time.perf_counter()
    console.print(describe(settings))
    progress = progress_display(show_progress, console, fields="{task.fields[psnr]}")
    with tempfile.TemporaryDirectory(prefix="ugodit_demo_") as folder:
        with progress or contextlib.nullcontext():
            pretrain_dm, test_dm = make_data(settings, Path(folder))
            targets = [display_image(t) for t in test_dm.batch["target"]]
            names = list(test_dm.batch["name"])
            base = baseline(settings, test_dm)
            pre = build_pretraining(settings)
            pre_result = run_fit(f"{UGODIT} pre-training (M={settings.num_pretrain})", pre, pretrain_dm,
                                 settings.pretrain_steps, settings, progress, accelerator)
            weights = out / "transferable_weights.pt"
            pre.save_transferable_weights(weights)
            fits = [
                run_fit(name, build_fit(name, settings, weights), test_dm, settings.steps, settings, progress,
                        accelerator)
                for name in (UGODIT, ASEQDIP, DIP_NAME)
            ]
    total = time.perf_counter() - total_start
    results = assemble_results(settings, base, pre_result, fits, total, names)
    write_json(out / "results.json", results)
    write_comparison(out / "comparison.png", targets, names, [base, *fits])
    title = (f"{settings.task.upper()} demo, {settings.size}x{settings.size}: mean PSNR of {settings.num_test} "
             f"held-out measurement(s)\n(UGoDIT pre-trained {settings.pretrain_steps} steps on M={settings.num_pretrain})")
    write_psnr_curve(out / "psnr_curve.png", fits, base, title)
    console.print(results_table(results))
    console.print(verdict(results))
    console.print(f"wrote {out / 'results.json'}, {out / 'comparison.png'}, {out / 'psnr_curve.png'} "
                  f"and {weights.name} in {total:.0f} s")
    return results


def describe(settings: DemoSettings) -> str:
    """One paragraph saying what the demo runs (sizes, steps)."""
    if settings.task == "mri":
        problem = (f"{settings.num_coils}-coil MRI, {settings.size}x{settings.size}, {settings.acceleration:g}x "
                   f"random column undersampling, ESPIRiT coil maps from the measurement")
        network = f"U-Net channels {settings.network_args.get('channels')}"
    else:
        problem = (f"{settings.scale_factor}x super-resolution of {settings.size}x{settings.size} RGB photographs, "
                   f"Gaussian noise sigma {settings.noise_sigma}")
        network = (f"skip network {len(settings.network_args.get('channels_down', []))} scales x "
                   f"{settings.network_args.get('channels_down', [0])[0]} channels")
    return (
        f"[bold]ugodit demo ({settings.task})[/bold]: {problem}; {network}.\n"
        f"UGoDIT pre-trains on M={settings.num_pretrain} measurements for {settings.pretrain_steps} steps "
        f"(lr {settings.lr_pretrain:g}), then UGoDIT, aSeqDIP and DIP each fit the {settings.num_test} held-out "
        f"measurement{'s' if settings.num_test > 1 else ''} for "
        f"{settings.steps} steps (lr {settings.lr_fit:g}, {settings.loss_norm} loss, "
        f"{settings.input_update} input update every {settings.update_every} steps, lambda {settings.lam:g})."
    )


def assemble_results(settings: DemoSettings, base: FitResult, pre: FitResult, fits: Sequence[FitResult],
                     total: float, names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The content of results.json (PSNR / SSIM: means over the held-out measurements, and each one)."""
    def entry(result: FitResult) -> Dict[str, Any]:
        return {"psnr": _finite(result.psnr), "ssim": _finite(result.ssim), "steps": result.steps,
                "seconds": round(result.seconds, 2), "psnr_each": [_finite(v) for v in result.psnr_each],
                "ssim_each": [_finite(v) for v in result.ssim_each]}

    methods = {base.name: entry(base)}
    early = early_step(settings)
    for result in fits:
        methods[result.name] = entry(result)
        at = [value for step, value in result.curve if step >= early]
        methods[result.name]["psnr_early"] = _finite(at[0]) if at else None
    methods[UGODIT]["pretrain_steps"] = pre.steps
    methods[UGODIT]["pretrain_seconds"] = round(pre.seconds, 2)
    return {
        "task": settings.task,
        "methods": methods,
        "test_measurements": list(names or []),
        "pretraining": {"num_measurements": settings.num_pretrain, "steps": pre.steps,
                        "seconds": round(pre.seconds, 2), "psnr_on_pretraining_set": _finite(pre.psnr)},
        "psnr_curves": {result.name: result.curve for result in fits},
        "early_step": early,
        "settings": asdict(settings),
        "machine": machine_info(),
        "total_seconds": round(total, 1),
        "metrics": ("fastMRI conventions: magnitude, data range = max of the RSS target, 7x7 uniform SSIM"
                    if settings.task == "mri" else "images in [0, 1], data range 1, 11x11 Gaussian SSIM"),
    }


def early_step(settings: DemoSettings) -> int:
    """The step of the table's "early" PSNR column: a quarter of the budget, on the evaluation grid.

    >>> early_step(DemoSettings(steps=200, eval_every=10))
    50
    """
    quarter = max(1, settings.steps // 4)
    return min(settings.steps, -(-quarter // settings.eval_every) * settings.eval_every)


def _finite(value: float) -> Optional[float]:
    return round(float(value), 4) if np.isfinite(value) else None


def results_table(results: Dict[str, Any]):
    """The rich table of PSNR / SSIM / steps / seconds per method."""
    from rich.table import Table

    settings = results["settings"]
    count = settings["num_test"]
    over = f"mean over the {count} held-out measurements" if count > 1 else "the held-out measurement"
    table = Table(title=f"ugodit demo ({results['task']}, {settings['size']}x{settings['size']}): {over}")
    early = results.get("early_step")
    for column, justify in (("method", "left"), ("PSNR (dB)", "right"), ("SSIM", "right"),
                            (f"PSNR @{early}", "right"), ("steps", "right"), ("seconds", "right")):
        table.add_column(column, justify=justify)
    best = max((m["psnr"] for m in results["methods"].values() if m["psnr"] is not None), default=None)
    for name, values in results["methods"].items():
        psnr = "n/a" if values["psnr"] is None else f"{values['psnr']:.2f}"
        if values["psnr"] is not None and values["psnr"] == best:
            psnr = f"[bold]{psnr}[/bold]"
        ssim = "n/a" if values["ssim"] is None else f"{values['ssim']:.3f}"
        early_psnr = "-" if values.get("psnr_early") is None else f"{values['psnr_early']:.2f}"
        table.add_row(name, psnr, ssim, early_psnr, str(values["steps"]), f"{values['seconds']:.1f}")
    pre = results["pretraining"]
    table.add_row(f"[dim](UGoDIT pre-training, M={pre['num_measurements']}, once)[/dim]", "", "", "",
                  f"[dim]{pre['steps']}[/dim]", f"[dim]{pre['seconds']:.1f}[/dim]")
    table.caption = (f"PSNR @{early}: after {early} of the {settings['steps']} test-time steps. UGoDIT's pre-training "
                     f"on the other M measurements runs once and is reused for every new measurement.")
    return table


def verdict(results: Dict[str, Any]) -> str:
    """One honest sentence: does UGoDIT beat the best other method at this size and budget?"""
    methods = results["methods"]
    ugodit = methods[UGODIT]
    others = {name: m["psnr"] for name, m in methods.items() if name != UGODIT and m["psnr"] is not None}
    if ugodit["psnr"] is None or not others:
        return "UGoDIT produced no finite PSNR in this run."
    rival, value = max(others.items(), key=lambda item: item[1])
    gap = ugodit["psnr"] - value
    mine, theirs = ugodit.get("psnr_each") or [], methods[rival].get("psnr_each") or []
    count = ""
    if len(mine) > 1 and len(mine) == len(theirs):
        ahead = sum(1 for a, b in zip(mine, theirs) if a is not None and b is not None and a > b)
        count = f"; ahead on {ahead} of {len(mine)} held-out measurements"
    if gap > 0:
        return (f"UGoDIT beats the best other method ({rival}) by {gap:.2f} dB on average at this size and step "
                f"budget{count}.")
    return (f"At this size and step budget UGoDIT does NOT beat {rival} on average ({-gap:.2f} dB behind{count}); "
            f"see psnr_curve.png for the whole course.")


# --------------------------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The ``ugodit demo`` options."""
    parser = argparse.ArgumentParser(
        prog="ugodit demo",
        description="UGoDIT vs aSeqDIP vs DIP vs the degraded input on embedded demo data (nothing downloaded); "
                    "defaults take a few minutes on 2 CPU cores.",
    )
    parser.add_argument("--task", choices=TASKS, default="mri",
                        help="mri (default): 4x multi-coil MRI; sr: 4x super-resolution")
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--steps", type=int, default=None, help="test-time steps per method (mri: 200, sr: 250)")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help="UGoDIT pre-training steps (mri: 200, sr: 150)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 64)")
    parser.add_argument("--num-pretrain", type=int, default=None, help="M, the pre-training measurements (default 4)")
    parser.add_argument("--num-test", type=int, default=None,
                        help="held-out measurements, fitted side by side (mri: 3, sr: 1)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the data and the methods (default 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: these small networks gain little from more, the numbers "
                             "do not depend on the core count, and OpenMP threads on a busy CPU wait on each other; "
                             "0: torch's choice)")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto (default), cpu, gpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    """``ugodit demo ...``; returns the exit code."""
    args = parse_args(argv)
    settings = DemoSettings.for_task(args.task, steps=args.steps, pretrain_steps=args.pretrain_steps, size=args.size,
                                     num_pretrain=args.num_pretrain, num_test=args.num_test, seed=args.seed)
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's choice), got {args.threads}")
    import torch

    previous = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        run_demo(settings, Path(args.out), show_progress=not args.quiet, accelerator=args.accelerator)
    finally:
        torch.set_num_threads(previous)
    return 0
