"""``ugodit demo``: UGoDIT against its baselines on embedded real MRI, in a few minutes on a CPU.

What it runs (``task="mri"``, the default; sizes and step counts are printed and stored):

1. data: ``make_real_mri_demo`` simulates real MRI images that installed packages ship into 8-coil
   k-space (birdcage maps, smooth phase, complex noise; nothing downloaded): the T = 2 test slices
   are matplotlib's sagittal head (``s1045``) and slice 12 of nibabel's EPI brain volume; the
   M = 3 pre-training slices are EPI slices 4, 8 and 20 (other slices of that scan, never a test
   slice). 96 x 96, 4x random column undersampling (centre 0.08), ESPIRiT coil maps estimated from
   each measurement.
2. the classical reconstructions a user already has, with those maps: zero-filled, CG-SENSE,
   L1-wavelet and total variation (``ugodit_pl.classical`` at its defaults);
3. UGoDIT group pre-training on the M slices; the encoder is saved as transferable weights to
   ``DIR/transferable_weights.pt``;
4. test-time fits of the T test slices (side by side, independently), every method at the
   library's defaults for the same number of steps: DIP, aSeqDIP, UGoDIT (encoder frozen to the
   transferable weights, fresh decoder) and the control "UGoDIT untrained": the same fit behind
   the encoder as initialised, which separates what transfer brings from what the architecture does;
5. a table (80 columns) of PSNR / SSIM, steps, seconds and the seconds each network took to reach
   the L1-wavelet PSNR; ``DIR/results.json`` (per-slice values, the curves), ``DIR/comparison.png``
   (per slice: ground truth, zero-filled, L1-wavelet, CG-SENSE, total variation and each method with a zoomed inset of
   the same region, error maps on one shared scale) and ``DIR/psnr_curve.png`` (PSNR against steps
   and against seconds), each written atomically.

MRI images are scored as in ``ugodit benchmark mri-quality``: the magnitude inside the support of
the estimated coil maps (where the measurement sees the image; known without the ground truth)
against the RSS target, fastMRI's PSNR / SSIM conventions.

``task="sr"``: 4x super-resolution of a bundled photograph (``demo_images``, T = 1) with the skip
network; pre-training on 4 other photographs; the baseline is the bilinear upsampling of the
measurement.

``--quick`` is a 30-second look (smaller, fewer steps); its numbers say little.

Usage::

    ugodit demo --out demo_output                  # MRI, defaults
    ugodit demo --quick
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
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ugodit_pl.apps.benchmarks import panel
from ugodit_pl.apps.io import machine_info, write_json
from ugodit_pl.apps.runtime import progress_display, quiet_lightning, step_progress
from ugodit_pl.atomic import atomic_path

TASKS = ("mri", "sr")
# The bundled scikit-image photographs of the sr demo, in order (test measurements first).
PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left")
#: The real MRI slices of the mri demo: (source of ``real_mri_slices``, index, name); tests, then pre-training.
MRI_TEST = (("s1045", 0, "head s1045"), ("example4d", 12, "EPI brain 12"))
MRI_PRETRAIN = (("example4d", 4, "EPI brain 4"), ("example4d", 8, "EPI brain 8"), ("example4d", 20, "EPI brain 20"),
                ("example4d", 16, "EPI brain 16"))

# Names of the methods in the table, results.json and the figures.
UGODIT, UNTRAINED, ASEQDIP, DIP_NAME = "UGoDIT", "UGoDIT untrained", "aSeqDIP", "DIP"
NETWORKS = (DIP_NAME, ASEQDIP, UGODIT, UNTRAINED)
ZERO_FILLED, SENSE, L1, TV, BILINEAR = "zero-filled", "CG-SENSE", "L1-wavelet", "total variation", "bilinear"
#: --quick: what it changes per task
QUICK = {"mri": {"size": 64, "steps": 60, "pretrain_steps": 60, "num_pretrain": 2},
         "sr": {"size": 48, "steps": 60, "pretrain_steps": 40, "num_pretrain": 2}}


@dataclass
class DemoSettings:
    """Everything the demo's result depends on (stored in results.json); methods at the library's defaults.

    >>> DemoSettings.for_task("mri").network
    'unet'
    """

    task: str = "mri"
    size: int = 96
    steps: int = 250
    pretrain_steps: int = 200
    num_pretrain: int = 3
    num_test: int = 2
    network: str = "unet"
    network_args: Dict[str, Any] = field(default_factory=dict)
    acceleration: float = 4.0
    center_fraction: float = 0.08
    num_coils: int = 8
    scale_factor: int = 4
    noise_sigma: float = 0.025
    seed: int = 0
    eval_every: int = 10

    @classmethod
    def for_task(cls, task: str, quick: bool = False, **overrides: Any) -> "DemoSettings":
        """The default settings of ``task`` ("mri" or "sr"), ``QUICK``'s with ``quick``, then ``overrides``
        (None values ignored)."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if task == "mri":
            settings = cls(task="mri", network="unet", network_args={"channels": [16, 32, 64, 64]})
        else:
            scales, width = 4, 32
            settings = cls(
                task="sr", network="skip", size=64, steps=250, pretrain_steps=150, num_pretrain=4, num_test=1,
                network_args={"in_channels": 3, "out_channels": 3, "channels_down": [width] * scales,
                              "channels_up": [width] * scales, "channels_skip": [4] * scales},
            )
        for key, value in [*(QUICK[task].items() if quick else ()), *overrides.items()]:
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
        if self.task == "mri":
            if self.num_test > len(MRI_TEST) or self.num_pretrain > len(MRI_PRETRAIN):
                raise ValueError(f"--num-test must be at most {len(MRI_TEST)} and --num-pretrain at most "
                                 f"{len(MRI_PRETRAIN)} (the real MRI slices the mri demo has), got {self.num_test} "
                                 f"and {self.num_pretrain}")
        elif self.num_pretrain + self.num_test > len(PHOTOGRAPHS):
            raise ValueError(f"--num-pretrain + --num-test must be at most {len(PHOTOGRAPHS)} (the sr demo's "
                             f"photographs), got {self.num_pretrain} + {self.num_test}")


# --------------------------------------------------------------------------------------------- data
def make_data(settings: DemoSettings, folder: Path):
    """The (pre-training, test) data modules of the demo, set up, from files written to ``folder``."""
    from ugodit_pl.datamodules import DegradedImageDataModule, FastMRIDataModule, demo_images, make_real_mri_demo

    if settings.task == "mri":
        chosen = [*MRI_TEST[: settings.num_test], *MRI_PRETRAIN[: settings.num_pretrain]]
        path = make_real_mri_demo(folder / "demo_mri.h5", [(source, index) for source, index, _ in chosen],
                                  size=settings.size, num_coils=settings.num_coils, seed=settings.seed)
        tests = list(range(settings.num_test))
        common = dict(
            data_dir=None, mask="random", acceleration=settings.acceleration,
            # at least 8 fully sampled centre columns, so that ESPIRiT has a calibration region
            center_fraction=max(settings.center_fraction, 8.0 / settings.size), mask_seed=settings.seed,
            coil_map_cache_dir=False, target="rss",
        )
        test = FastMRIDataModule(test_files=str(path), test_slices=tests, role="test", **common)
        pretrain = FastMRIDataModule(
            test_files=str(path), test_slices=tests, pretrain_files=str(path),
            pretrain_slices=list(range(settings.num_test, len(chosen))), role="pretrain", **common,
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


def measurement_names(settings: DemoSettings) -> List[str]:
    """What each test measurement shows.

    >>> measurement_names(DemoSettings.for_task("mri"))
    ['head s1045', 'EPI brain 12']
    """
    if settings.task == "mri":
        return [name for _, _, name in MRI_TEST[: settings.num_test]]
    return list(PHOTOGRAPHS[: settings.num_test])


# --------------------------------------------------------------------------------------------- scoring
class Scorer:
    """Metrics and display images of (B, C, H, W) reconstructions against the test batch's target.

    MRI: the magnitude inside the support of the estimated coil maps (where A sees the image), against
    the RSS target, fastMRI conventions; images: natural-image conventions in [0, 1].
    """

    def __init__(self, batch: Dict[str, Any], task: str) -> None:
        self.target = batch["target"].detach().float().cpu()
        self.mri = task == "mri"
        self.support = panel.support_of(batch).detach().cpu() if self.mri else None

    def shown(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) support-masked magnitude (MRI) or (B, 3, H, W) clipped RGB."""
        from ugodit_pl.complex import magnitude

        images = images.detach().float().cpu()
        return magnitude(images) * self.support if self.mri else images.clamp(0, 1)

    def metrics(self, images: torch.Tensor) -> Dict[str, List[float]]:
        """``{"psnr": [per row], "ssim": [per row]}``."""
        from ugodit_pl.metrics import image_metrics, mri_metrics

        values = mri_metrics(self.shown(images), self.target) if self.mri else image_metrics(self.shown(images),
                                                                                               self.target)
        return {name: values[name].tolist() for name in ("psnr", "ssim")}

    def metric_fn(self, output: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """For ``CurveTracker``: the PSNR per row of ``output`` as ``metrics`` computes it, without SSIM
        (``target`` is this scorer's)."""
        from ugodit_pl.metrics import psnr

        return {"psnr": psnr(self.shown(output), self.target, None if self.mri else 1.0)}


# --------------------------------------------------------------------------------------------- results
@dataclass
class FitResult:
    """What one reconstruction of the demo produced."""

    name: str
    steps: int
    seconds: float
    psnr: float  # mean over the measurements
    ssim: float
    curve: List[List[float]]  # [step, seconds, mean PSNR] every eval_every steps
    images: List[np.ndarray] = field(default_factory=list)  # per measurement, display layout (H, W) or (H, W, 3)
    psnr_each: List[float] = field(default_factory=list)
    ssim_each: List[float] = field(default_factory=list)


def _result(name: str, steps: int, seconds: float, images: torch.Tensor, scorer: Scorer,
            curve: Sequence[Sequence[float]] = ()) -> FitResult:
    values = scorer.metrics(images)
    shown = scorer.shown(images)
    display = [(image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)).numpy() for image in shown]
    return FitResult(name, steps, seconds, float(np.mean(values["psnr"])), float(np.mean(values["ssim"])),
                     [list(point) for point in curve], display, values["psnr"], values["ssim"])


def classical_baselines(settings: DemoSettings, batch: Dict[str, Any], scorer: Scorer) -> List[FitResult]:
    """MRI: zero-filled, L1-wavelet, CG-SENSE and total variation with the estimated maps; SR: the bilinear
    upsampling."""
    if settings.task == "sr":
        start = time.perf_counter()
        image = batch["operator"].init_input(batch["y"])
        return [_result(BILINEAR, 0, time.perf_counter() - start, image, scorer)]
    from ugodit_pl import classical
    from ugodit_pl.complex import complex_to_channels

    operator, results = batch["operator"], []
    runs = {ZERO_FILLED: lambda y, m, s: classical.zero_filled(y, s), L1: classical.l1_wavelet,
            SENSE: classical.sense, TV: classical.total_variation}
    for name, run in runs.items():
        start = time.perf_counter()
        images = torch.stack([run(y, operator.mask[min(row, len(operator.mask) - 1)], operator.coil_maps[row])
                              for row, y in enumerate(batch["y"])])
        results.append(_result(name, 0, time.perf_counter() - start, complex_to_channels(images), scorer))
    return results


# --------------------------------------------------------------------------------------------- methods
def build_pretraining(settings: DemoSettings):
    """UGoDIT's group pre-training at the library's defaults."""
    from ugodit_pl.methods import UGoDITPretrain

    return UGoDITPretrain(num_measurements=settings.num_pretrain, network=settings.network,
                          network_args=settings.network_args, seed=settings.seed)


def build_fit(name: str, settings: DemoSettings, weights: Dict[str, Path]):
    """The test-time method ``name`` (one of ``NETWORKS``) at the library's defaults."""
    from ugodit_pl.methods import ASeqDIP, DIP, UGoDITFit

    common = {"num_measurements": settings.num_test, "seed": settings.seed}
    if name in (UGODIT, UNTRAINED):
        return UGoDITFit(weights=str(weights[name]), **common)
    if name == ASEQDIP:
        return ASeqDIP(network=settings.network, network_args=settings.network_args, **common)
    if name == DIP_NAME:
        args = dict(settings.network_args)
        if settings.network == "skip":
            args["in_channels"] = 32  # DIP's noise input has 32 channels in the authors' image code
        return DIP(network=settings.network, network_args=args, **common)
    raise ValueError(f"unknown demo method {name!r}")


def run_fit(name: str, method, batch: Dict[str, Any], steps: int, settings: DemoSettings, scorer: Scorer,
            progress=None, device: str = "cpu") -> FitResult:
    """Fit ``method`` to ``batch`` for ``steps`` steps; PSNR of its output every ``eval_every`` steps."""
    from ugodit_pl.apps.benchmarks.common import CurveTracker, fit_method, reported_curve

    tracker = CurveTracker({"target": scorer.target}, scorer.metric_fn, settings.eval_every, steps)
    callbacks = [tracker.callback()]
    if progress is not None:
        def latest() -> Dict[str, str]:
            curve = reported_curve(tracker.curves["target"])
            return {"psnr": f"{curve['psnr'][-1]:5.2f} dB"} if curve.get("psnr") else {}

        callbacks.append(step_progress(progress, progress.add_task(name, total=steps, psnr=""), latest))
    seconds = fit_method(method, batch, steps, callbacks=callbacks, device=device)
    curve = reported_curve(tracker.curves["target"])
    points = list(zip(curve["steps"], curve["seconds"], curve.get("psnr", [])))
    return _result(name, steps, seconds, method.reconstruction, scorer, points)


def seconds_to_reach(curve: Sequence[Sequence[float]], level: Optional[float]) -> Optional[float]:
    """The fit seconds at the first point of ``curve`` ([step, seconds, PSNR]) at or above ``level``.

    >>> seconds_to_reach([[10, 1.0, 20.0], [20, 2.0, 25.0]], 24.0)
    2.0
    """
    if level is None:
        return None
    return next((float(seconds) for _, seconds, value in curve if value >= level), None)


# --------------------------------------------------------------------------------------------- figures
def _save_figure(path: Path, figure) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")


def detail_window(target: np.ndarray, fraction: float = 0.3) -> Tuple[int, int, int]:
    """(top, left, side) of the square window (``fraction`` of the image side) with the most detail:
    the largest summed gradient magnitude of ``target``; the region every inset zooms into.

    >>> image = np.zeros((20, 20)); image[12:16, 3:7] = 1.0
    >>> detail_window(image, 0.3)
    (11, 2, 6)
    """
    gray = target.mean(-1) if target.ndim == 3 else target
    gy, gx = np.gradient(gray.astype(np.float64))
    energy = np.hypot(gy, gx)
    side = max(4, int(round(fraction * min(gray.shape))))
    integral = np.pad(energy, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    sums = integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top), int(left), side


def _show(axis, image: np.ndarray, vmax: float, title: str, window: Optional[Tuple[int, int, int]] = None) -> None:
    from matplotlib.patches import Rectangle

    options = {} if image.ndim == 3 else {"cmap": "gray", "vmin": 0.0, "vmax": vmax}
    axis.imshow(np.clip(image, 0, 1) if image.ndim == 3 else image, **options)
    axis.set_title(title, fontsize=8)
    axis.axis("off")
    if window is not None:
        top, left, side = window
        axis.add_patch(Rectangle((left - 0.5, top - 0.5), side, side, fill=False, edgecolor="yellow", linewidth=0.8))
        inset = axis.inset_axes([0.62, 0.0, 0.38, 0.38])
        crop = image[top : top + side, left : left + side]
        inset.imshow(np.clip(crop, 0, 1) if crop.ndim == 3 else crop, **options)
        inset.set_xticks([])
        inset.set_yticks([])
        for spine in inset.spines.values():
            spine.set_edgecolor("yellow")


def write_comparison(path: Path, targets: Sequence[np.ndarray], names: Sequence[str],
                     results: Sequence[FitResult]) -> None:
    """Per measurement: ground truth and each reconstruction with a zoomed inset of the same region
    (one row), their absolute errors on one shared scale (next row)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    columns = 1 + len(results)
    figure = Figure(figsize=(2.0 * columns, 4.3 * len(targets)), dpi=100)
    axes = figure.subplots(2 * len(targets), columns, squeeze=False)
    for row, (target, name) in enumerate(zip(targets, names)):
        top, bottom = axes[2 * row], axes[2 * row + 1]
        vmax = float(target.max()) or 1.0
        window = detail_window(target)
        _show(top[0], target, vmax, f"ground truth\n{name}", window)
        bottom[0].axis("off")
        errors = [_error(result.images[row], target) for result in results]
        error_max = max(float(np.percentile(e, 99.5)) for e in errors) or 1.0
        bottom[0].text(0.5, 0.5, f"|error| scale:\n0 to {error_max / vmax:.2f}\nof the image max", ha="center",
                       va="center", fontsize=8, transform=bottom[0].transAxes)
        for column, (result, error) in enumerate(zip(results, errors), start=1):
            _show(top[column], result.images[row], vmax,
                  f"{result.name}\n{result.psnr_each[row]:.2f} dB, SSIM {result.ssim_each[row]:.3f}", window)
            bottom[column].imshow(error, cmap="magma", vmin=0.0, vmax=error_max)
            bottom[column].set_title(f"|error| {result.name}", fontsize=8)
            bottom[column].axis("off")
    figure.tight_layout()
    _save_figure(path, figure)


def _error(image: np.ndarray, target: np.ndarray) -> np.ndarray:
    error = np.abs(image - target)
    return error.mean(-1) if error.ndim == 3 else error


def write_psnr_curve(path: Path, fits: Sequence[FitResult], baselines: Sequence[FitResult], title: str) -> None:
    """Mean PSNR against test-time steps (left) and against fit seconds (right) per network method; the
    classical reconstructions as dashed lines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10.0, 4.0), dpi=100)
    by_steps, by_seconds = figure.subplots(1, 2, sharey=True)
    for k, result in enumerate(fits):
        if result.curve:
            steps, seconds, values = zip(*result.curve)
            by_steps.plot(steps, values, label=result.name, linewidth=1.5, color=f"C{k}")
            by_seconds.plot(seconds, values, label=result.name, linewidth=1.5, color=f"C{k}")
    for k, result in enumerate(baselines):
        for axis in (by_steps, by_seconds):
            axis.axhline(result.psnr, color=f"C{len(fits) + k}", linestyle="--", linewidth=1.0, label=result.name)
    by_steps.set_xlabel("test-time optimiser steps")
    by_seconds.set_xlabel("fit seconds (this machine)")
    by_steps.set_ylabel("mean PSNR (dB)")
    for axis in (by_steps, by_seconds):
        axis.grid(alpha=0.3)
    by_seconds.legend(fontsize=8, loc="lower right")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    _save_figure(path, figure)


# --------------------------------------------------------------------------------------------- the job
def _device(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    if accelerator not in ("auto", "cpu"):
        raise ValueError(f"--accelerator must be auto, cpu or gpu, got {accelerator!r}")
    return "cpu"


@quiet_lightning()
def run_demo(settings: DemoSettings, out: Path, *, show_progress: bool = True, accelerator: str = "auto",
             console=None) -> Dict[str, Any]:
    """Run the demo with ``settings``, write its files into ``out`` and return results.json's content."""
    from rich.console import Console

    from ugodit_pl.apps.benchmarks.common import fit_method

    console = console or Console()
    device = _device(accelerator)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total_start = time.perf_counter()
    console.print(describe(settings))
    progress = progress_display(show_progress, console, fields="{task.fields[psnr]}", description_width=16)
    names = measurement_names(settings)
    weights = {UGODIT: out / "transferable_weights.pt", UNTRAINED: out / "untrained_encoder.pt"}
    with tempfile.TemporaryDirectory(prefix="ugodit_demo_") as folder:
        with progress or contextlib.nullcontext():
            pretrain_dm, test_dm = make_data(settings, Path(folder))
            batch = test_dm.batch
            scorer = Scorer(batch, settings.task)
            baselines = classical_baselines(settings, batch, scorer)
            pre = build_pretraining(settings)
            pre.save_transferable_weights(weights[UNTRAINED])  # the encoder as initialised: the control
            callbacks = [] if progress is None else [step_progress(progress, progress.add_task(
                f"pre-train M={settings.num_pretrain}", total=settings.pretrain_steps, psnr=""))]
            start = time.perf_counter()
            fit_method(pre, pretrain_dm.batch, settings.pretrain_steps, callbacks=callbacks, device=device)
            pre_seconds = time.perf_counter() - start
            pre.save_transferable_weights(weights[UGODIT])
            fits = [run_fit(name, build_fit(name, settings, weights), batch, settings.steps, settings, scorer,
                            progress, device) for name in NETWORKS]
    total = time.perf_counter() - total_start
    results = assemble_results(settings, baselines, fits, pre_seconds, total, names)
    write_json(out / "results.json", results)
    targets = [(t[0] if t.shape[0] == 1 else t.permute(1, 2, 0)).numpy() for t in scorer.target]
    write_comparison(out / "comparison.png", targets, names, [*baselines, *fits])
    title = (f"{settings.task.upper()} demo, {settings.size}x{settings.size}, mean of {settings.num_test} test "
             f"measurement(s); UGoDIT pre-trained {settings.pretrain_steps} steps on M={settings.num_pretrain}")
    write_psnr_curve(out / "psnr_curve.png", fits, baselines, title)
    console.print(results_table(results))
    console.print(verdict(results))
    console.print(f"wrote {out / 'results.json'}, {out / 'comparison.png'}, {out / 'psnr_curve.png'} "
                  f"and {weights[UGODIT].name} in {total:.0f} s")
    return results


def describe(settings: DemoSettings) -> str:
    """One paragraph saying what the demo runs (data, sizes, steps)."""
    if settings.task == "mri":
        problem = (f"real MRI ({', '.join(measurement_names(settings))}) simulated into {settings.num_coils}-coil k-space, "
                   f"{settings.size}x{settings.size}, {settings.acceleration:g}x random columns, ESPIRiT maps "
                   f"from the measurement")
        network = f"U-Net {settings.network_args.get('channels')}"
        pretraining = ", ".join(name for _, _, name in MRI_PRETRAIN[: settings.num_pretrain])
    else:
        problem = (f"{settings.scale_factor}x super-resolution of {settings.size}x{settings.size} photographs, "
                   f"noise sigma {settings.noise_sigma}")
        network = (f"skip net {len(settings.network_args.get('channels_down', []))} scales x "
                   f"{settings.network_args.get('channels_down', [0])[0]}")
        pretraining = ", ".join(PHOTOGRAPHS[settings.num_test : settings.num_test + settings.num_pretrain])
    return (
        f"[bold]ugodit demo ({settings.task})[/bold]: {problem}; {network}.\n"
        f"UGoDIT pre-trains on M={settings.num_pretrain} ({pretraining}) for {settings.pretrain_steps} steps; "
        f"then {', '.join(NETWORKS)} each fit the test data for {settings.steps} steps, every method at the "
        f"library's defaults. Nothing is downloaded."
    )


def assemble_results(settings: DemoSettings, baselines: Sequence[FitResult], fits: Sequence[FitResult],
                     pretrain_seconds: float, total: float, names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The content of results.json (PSNR / SSIM: means over the test measurements, and each one)."""
    def entry(result: FitResult) -> Dict[str, Any]:
        return {"psnr": _finite(result.psnr), "ssim": _finite(result.ssim), "steps": result.steps,
                "seconds": round(result.seconds, 2), "psnr_each": [_finite(v) for v in result.psnr_each],
                "ssim_each": [_finite(v) for v in result.ssim_each]}

    methods = {result.name: entry(result) for result in baselines}
    reference = methods[L1]["psnr"] if L1 in methods else methods[baselines[0].name]["psnr"]
    for result in fits:
        methods[result.name] = entry(result)
        methods[result.name]["seconds_to_reference"] = seconds_to_reach(result.curve, reference)
    methods[UGODIT]["pretrain_steps"] = settings.pretrain_steps
    methods[UGODIT]["pretrain_seconds"] = round(pretrain_seconds, 2)
    return {
        "task": settings.task,
        "methods": methods,
        "reference": L1 if L1 in methods else baselines[0].name,
        "test_measurements": list(names or []),
        "pretraining": {"num_measurements": settings.num_pretrain, "steps": settings.pretrain_steps,
                        "seconds": round(pretrain_seconds, 2)},
        "psnr_curves": {result.name: result.curve for result in fits},
        "settings": asdict(settings),
        "machine": machine_info(),
        "total_seconds": round(total, 1),
        "metrics": ("fastMRI conventions: magnitude inside the support of the estimated coil maps against the RSS "
                    "target, data range = its max, 7x7 uniform SSIM" if settings.task == "mri"
                    else "images in [0, 1], data range 1, 11x11 Gaussian SSIM"),
    }


def _finite(value: float) -> Optional[float]:
    return round(float(value), 4) if np.isfinite(value) else None


def results_table(results: Dict[str, Any]):
    """The rich table (fits 80 columns): PSNR / SSIM, steps, seconds, seconds to the reference PSNR."""
    from rich.table import Table

    settings = results["settings"]
    count = settings["num_test"]
    reference = results["reference"]
    over = f"mean of {count} test slices" if count > 1 else "the test measurement"
    table = Table(title=f"ugodit demo ({results['task']}, {settings['size']}x{settings['size']}): {over}")
    for column, justify in (("method", "left"), ("PSNR", "right"), ("SSIM", "right"), ("steps", "right"),
                            ("s", "right"), (f"s to {reference}", "right")):
        table.add_column(column, justify=justify)
    best = max((m["psnr"] for m in results["methods"].values() if m["psnr"] is not None), default=None)
    for name, values in results["methods"].items():
        psnr = "n/a" if values["psnr"] is None else f"{values['psnr']:.2f}"
        if values["psnr"] is not None and values["psnr"] == best:
            psnr = f"[bold]{psnr}[/bold]"
        ssim = "n/a" if values["ssim"] is None else f"{values['ssim']:.3f}"
        if "seconds_to_reference" not in values:
            reach = ""
        else:
            reach = "never" if values["seconds_to_reference"] is None else f"{values['seconds_to_reference']:.1f}"
        table.add_row(name, psnr, ssim, str(values["steps"]), f"{values['seconds']:.1f}", reach)
    pre = results["pretraining"]
    table.add_row(f"[dim]pre-train M={pre['num_measurements']}[/dim]", "", "", f"[dim]{pre['steps']}[/dim]",
                  f"[dim]{pre['seconds']:.1f}[/dim]", "")
    table.caption = (f"PSNR in dB. \"s to {reference}\": fit seconds until the PSNR first reached {reference}'s. "
                     f"\"{UNTRAINED}\": the UGoDIT fit behind the encoder as initialised (no transfer). "
                     f"Pre-training runs once and serves every new measurement.")
    return table


def verdict(results: Dict[str, Any]) -> str:
    """Plain sentences: does UGoDIT beat the best other reconstruction, and does its pre-training help?"""
    methods = results["methods"]
    ugodit = methods[UGODIT]
    others = {name: m["psnr"] for name, m in methods.items() if name not in (UGODIT, UNTRAINED) and m["psnr"] is not None}
    if ugodit["psnr"] is None or not others:
        return "UGoDIT produced no finite PSNR in this run."
    rival, value = max(others.items(), key=lambda item: item[1])
    gap = ugodit["psnr"] - value
    mine, theirs = ugodit.get("psnr_each") or [], methods[rival].get("psnr_each") or []
    count = ""
    if len(mine) > 1 and len(mine) == len(theirs):
        ahead = sum(1 for a, b in zip(mine, theirs) if a is not None and b is not None and a > b)
        count = f"; ahead on {ahead} of {len(mine)} test measurements"
    if gap > 0:
        sentence = f"UGoDIT beats the best other method ({rival}) by {gap:.2f} dB on average{count}."
    else:
        sentence = f"UGoDIT does NOT beat {rival} here ({-gap:.2f} dB behind on average{count})."
    control = methods.get(UNTRAINED, {}).get("psnr")
    if control is not None:
        transfer = ugodit["psnr"] - control
        sentence += (f" Its pre-trained encoder is {abs(transfer):.2f} dB {'above' if transfer >= 0 else 'below'} "
                     f"the untrained one" + (" (within a single fit's noise, about 0.4 dB: no sign of transfer)."
                                             if abs(transfer) < 0.5 else "."))
    return sentence + " A small run at this size and budget; see psnr_curve.png for the whole course."


# --------------------------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The ``ugodit demo`` options."""
    parser = argparse.ArgumentParser(
        prog="ugodit demo",
        description="UGoDIT against DIP, aSeqDIP, its untrained-encoder control and the classical reconstructions "
                    "on embedded real MRI (nothing downloaded); about 3 minutes on 2 CPU cores, --quick 30 s.",
    )
    parser.add_argument("--task", choices=TASKS, default="mri",
                        help="mri (default): 4x multi-coil MRI of real anatomy; sr: 4x super-resolution of photographs")
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--quick", action="store_true", help="a 30-second look: smaller images, fewer steps")
    parser.add_argument("--steps", type=int, default=None, help="test-time steps per method (mri and sr: 250)")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help="UGoDIT pre-training steps (mri: 200, sr: 150)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (mri: 96, sr: 64)")
    parser.add_argument("--num-pretrain", type=int, default=None,
                        help="M, the pre-training measurements (mri: 3, at most 4; sr: 4)")
    parser.add_argument("--num-test", type=int, default=None,
                        help="test measurements, fitted side by side (mri: 2, at most 2; sr: 1)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the data and the methods (default 0)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default 0: torch's choice, one per core)")
    parser.add_argument("--accelerator", default="auto", help="auto (default), cpu or gpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    """``ugodit demo ...``; returns the exit code."""
    args = parse_args(argv)
    settings = DemoSettings.for_task(args.task, quick=args.quick, steps=args.steps, pretrain_steps=args.pretrain_steps,
                                     size=args.size, num_pretrain=args.num_pretrain, num_test=args.num_test,
                                     seed=args.seed)
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's choice), got {args.threads}")
    _device(args.accelerator)
    previous = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        run_demo(settings, Path(args.out), show_progress=not args.quiet, accelerator=args.accelerator)
    finally:
        torch.set_num_threads(previous)
    return 0
