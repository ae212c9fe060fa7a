"""The ``mri-quality`` suite: every method on the real 8-coil brain slice, at one step budget.

Test measurement: ``mri/espirit_brain_full.h5`` of the real-data folder (fully sampled, 8 coils,
230 x 180), read by :class:`~ugodit_pl.datamodules.FastMRIDataModule` with ``crop_size`` (the
centre of k-space: the whole field of view at a lower resolution), retrospectively undersampled
by a 1-D random column mask per acceleration (4x: centre fraction 0.08, 8x: 0.04; mask seed fixed,
derived from ``mask_seed`` and the file name by the data module), coil maps by ESPIRiT from the
undersampled data itself (``coil_maps="espirit"``).

Methods:

- classical (``ugodit_pl.classical``): zero-filled (A^H y = S^H F^H y), the RSS of the zero-filled
  coil images, CG-SENSE and L1-wavelet, each with the ESPIRiT maps estimated from the
  measurement AND with oracle maps (ESPIRiT of the fully sampled k-space; not available in a real
  scan, reported beside for comparison);
- untrained networks, all with the same U-Net, the same number of optimiser steps and each with
  its documented defaults (``ugodit_pl.methods``): DIP (noise input), reference-guided DIP
  (input A^H y), Self-Guided DIP, aSeqDIP, and UGoDIT (test-time fit with the encoder pre-trained
  on M OTHER measurements, never the test slice).

UGoDIT's pre-training group (``pretrain="sigpy+demo"``): the real, really undersampled
``mri/sigpy_brain_poisson8x.h5`` (a different brain scan, measured with its own 2-D Poisson mask)
plus ``M - 1`` measurements simulated by :func:`~ugodit_pl.datamodules.make_mri_demo` from
scikit-image's bundled photographs (8 birdcage coils, complex noise, written at the test file's
230 x 180), all cropped and (the simulated ones) undersampled like the test measurement.

Scoring: every reconstruction's magnitude is multiplied by the support of the coil maps in use
(where the SENSE model sees the image; known without ground truth; zero-filled and SENSE are zero
outside it anyway), then compared with the target; ``psnr_unmasked`` keeps the unmasked PSNR.

Targets, both reported: ``rss`` (fastMRI: the root-sum-of-squares of the fully sampled coil
images, noise included, data range = its max) and ``coil_combined`` (the UGoDIT/DIP code's:
|S^H F^H k_full| with the maps of the run, max-normalised, i.e. data range = its max). For the
oracle-map classical results the coil-combined target uses the oracle maps.

``method_args`` (a preset entry, default none) gives extra keyword arguments per method, e.g.
``--set 'method_args={"self_guided_dip": {"input_lr": 0.01}}'``; they are recorded in the settings.

Per method the result holds the metrics of the final reconstruction (the EMA output for the
network methods, their documented default) against both targets, the wall time, the steps, the
PSNR-vs-step curves (EMA and last output) and the steps needed to reach reference levels (the
estimated-map SENSE and L1-wavelet PSNRs, and aSeqDIP's final PSNR minus 0.5 dB).

>>> PRESETS["quick"]["crop"], PRESETS["quick"]["network_args"]["channels"]
((96, 72), [16, 32, 64, 64])
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ugodit_pl.apps.benchmarks.common import CurveTracker, data_root, fit_method, plot_curves, steps_to_reach
from ugodit_pl.apps.benchmarks.panel import support_of
from ugodit_pl.complex import magnitude as complex_magnitude

__all__ = ["PRESETS", "METHODS", "CLASSICAL", "run_mri_quality", "test_problem", "pretraining_files"]

TEST_FILE = "mri/espirit_brain_full.h5"
PRETRAIN_FILE = "mri/sigpy_brain_poisson8x.h5"

#: The untrained-network methods, in table order.
METHODS = ("dip", "reference_dip", "self_guided_dip", "aseqdip", "ugodit")
#: The classical reconstructions, in table order.
CLASSICAL = ("zero_filled", "zero_filled_rss", "sense", "l1_wavelet")

PRESETS: Dict[str, Dict[str, Any]] = {
    # seconds, for the tests: tiny sizes, a few steps (the numbers mean nothing)
    "tiny": {
        "crop": (48, 40),
        "accelerations": {4: 0.16},
        "network_args": {"channels": [4, 8, 8, 8]},
        "steps": 4,
        "pretrain_steps": 3,
        "eval_every": 2,
        "num_demo": 1,
        "demo_names": ("camera",),
        "pretrain_per_acceleration": False,
        "coil_map_args": {"kernel_width": 4},
        "sense_iter": 4,
        "l1_iter": 8,
        "methods": METHODS,
    },
    # about 15 min on 2 idle CPU cores: 96 x 72, width-16 U-Net, 600 steps, M = 3 (see docs/RESULTS.md
    # for the arithmetic; the 112 x 88 / width-32 / 1500-step setting is ~8x more work:
    # --set crop=[112,88] --set 'network_args={"channels":[32,64,128,128]}' --set steps=1500 ...)
    "quick": {
        "crop": (96, 72),
        "accelerations": {4: 0.08, 8: 0.04},
        "network_args": {"channels": [16, 32, 64, 64]},
        "steps": 600,
        "pretrain_steps": 600,
        "eval_every": 20,
        "num_demo": 2,
        "demo_names": ("camera", "moon"),
        "pretrain_per_acceleration": False,
        "coil_map_args": {},
        "sense_iter": None,
        "l1_iter": None,
        "methods": METHODS,
    },
    # the papers' setting (for a GPU): full 230 x 180 slice, the authors' U-Net, 3000 steps, M = 5
    "full": {
        "crop": None,
        "accelerations": {4: 0.08, 8: 0.04},
        "network_args": {"channels": [64, 128, 256, 256]},
        "steps": 3000,
        "pretrain_steps": 3000,
        "eval_every": 50,
        "num_demo": 4,
        "demo_names": ("camera", "moon", "coins", "brick"),
        "pretrain_per_acceleration": True,
        "coil_map_args": {},
        "sense_iter": None,
        "l1_iter": None,
        "methods": METHODS,
    },
}

TARGETS = ("rss", "coil_combined")


# --------------------------------------------------------------------------- data
def _datamodule(root: Path, acceleration: float, center_fraction: float, preset: Dict[str, Any], *, target: Optional[str],
                coil_maps: str = "espirit", cache: Optional[str] = None, mask_seed: int = 0, pretrain: Sequence[Path] = (),
                role: str = "test"):
    from ugodit_pl.datamodules import FastMRIDataModule

    return FastMRIDataModule(
        test_files=str(root / TEST_FILE),
        test_slices=0,
        pretrain_files=[str(p) for p in pretrain] or None,
        pretrain_slices="all",
        role=role,
        mask="random",
        acceleration=acceleration,
        center_fraction=center_fraction,
        mask_seed=mask_seed,
        coil_maps=coil_maps,
        coil_map_cache_dir=cache if cache is not None else False,
        coil_map_args=dict(preset["coil_map_args"]),
        target=target,
        crop_size=preset["crop"],
    )


def test_problem(root: Path, acceleration: float, center_fraction: float, preset: Dict[str, Any], cache: Optional[str],
                 mask_seed: int = 0) -> Dict[str, Any]:
    """The test measurement as a batch (estimated maps), its two targets, and the oracle-map variant.

    Returns ``{"batch", "targets": {"rss", "coil_combined"}, "oracle_batch", "oracle_targets", "info"}``.
    """
    problems = {}
    for maps in ("espirit", "oracle"):
        batches = {}
        for target in TARGETS:
            dm = _datamodule(root, acceleration, center_fraction, preset, target=target, coil_maps=maps, cache=cache,
                             mask_seed=mask_seed)
            dm.setup("fit", rank=0, world_size=1)
            batches[target] = dm.batch
        problems[maps] = batches
    batch = problems["espirit"]["rss"]
    mask = batch["operator"].mask
    info = {
        "file": TEST_FILE,
        "name": batch["name"][0],
        "shape": list(batch["y"].shape[-2:]),
        "coils": int(batch["y"].shape[1]),
        "acceleration": acceleration,
        "center_fraction": center_fraction,
        "sampled_fraction": float(mask.float().mean()),
        "mask": "random (1-D columns)",
        "mask_seed": mask_seed,
    }
    return {
        "batch": batch,
        "targets": {t: problems["espirit"][t]["target"] for t in TARGETS},
        "oracle_batch": problems["oracle"]["rss"],
        "oracle_targets": {t: problems["oracle"][t]["target"] for t in TARGETS},
        "info": info,
    }


def pretraining_files(root: Path, folder: Path, preset: Dict[str, Any], seed: int = 0, include_real: bool = True
                      ) -> List[Path]:
    """The pre-training files: the real undersampled sigpy brain (unless ``include_real`` is False) and a
    demo file of ``preset["num_demo"]`` simulated slices (``preset["demo_names"]``) written to ``folder``."""
    import h5py

    from ugodit_pl.datamodules import make_mri_demo

    with h5py.File(root / TEST_FILE, "r") as handle:
        size = tuple(handle["kspace"].shape[-2:])
        coils = int(handle["kspace"].shape[1])
    files = [root / PRETRAIN_FILE] if include_real else []
    if preset["num_demo"] > 0:
        files += make_mri_demo(folder, num_files=1, num_slices=int(preset["num_demo"]), size=size, num_coils=coils,
                               seed=seed, names=tuple(preset["demo_names"]))
    return files


# --------------------------------------------------------------------------- metrics
def _metrics(recon: torch.Tensor, targets: Dict[str, torch.Tensor], support: torch.Tensor) -> Dict[str, Dict[str, float]]:
    """fastMRI-convention metrics of a (1, 2, H, W) or complex (1, H, W) reconstruction against each target.

    The magnitude is multiplied by ``support`` (see :func:`support_of`); ``psnr_unmasked`` is the PSNR
    without it.
    """
    from ugodit_pl.metrics import mri_metrics, psnr

    magnitude = complex_magnitude(recon.detach().cpu()).float()
    out = {}
    for name, target in targets.items():
        target = target.cpu().float()
        values = mri_metrics(magnitude * support.cpu(), target)
        out[name] = {k: float(v.mean()) for k, v in values.items()}
        out[name]["psnr_unmasked"] = float(psnr(magnitude, target).mean())
    return out


def _metric_fn_for(support: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], Dict[str, torch.Tensor]]:
    """Curve metrics (PSNR, SSIM, NMSE) of the support-masked magnitude."""
    from ugodit_pl.metrics import mri_metrics

    def metric_fn(output: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        return mri_metrics(complex_magnitude(output.detach().cpu()).float() * support.cpu(), target.cpu())

    return metric_fn


# --------------------------------------------------------------------------- methods
def _classical(batch: Dict[str, Any], preset: Dict[str, Any]) -> Dict[str, Callable[[], torch.Tensor]]:
    from ugodit_pl import classical

    y = batch["y"][0]
    mask = batch["operator"].mask[0]
    maps = batch["operator"].coil_maps[0]
    sense_args = {} if preset["sense_iter"] is None else {"max_iter": int(preset["sense_iter"])}
    l1_args = {} if preset["l1_iter"] is None else {"max_iter": int(preset["l1_iter"])}
    return {
        "zero_filled": lambda: classical.zero_filled(y, maps),
        "zero_filled_rss": lambda: classical.zero_filled(y),
        "sense": lambda: classical.sense(y, mask, maps, **sense_args),
        "l1_wavelet": lambda: classical.l1_wavelet(y, mask, maps, **l1_args),
    }


def _network_method(name: str, preset: Dict[str, Any], weights: Optional[Path], seed: int,
                    extra: Optional[Dict[str, Any]] = None):
    from ugodit_pl import methods

    common = {"num_measurements": 1, "seed": seed, **dict(extra or {})}
    net = {"network": "unet", "network_args": dict(preset["network_args"])}
    if name == "dip":
        return methods.DIP(**net, **common)
    if name == "reference_dip":
        return methods.ReferenceGuidedDIP(**net, **common)
    if name == "self_guided_dip":
        return methods.SelfGuidedDIP(**net, **common)
    if name == "aseqdip":
        return methods.ASeqDIP(**net, **common)
    if name == "ugodit":
        if weights is None:
            raise ValueError("the 'ugodit' method needs pre-trained transferable weights")
        return methods.UGoDITFit(weights=str(weights), **common)
    raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")


def _describe(method: Any) -> Dict[str, Any]:
    """The hyper-parameters that matter, for the result file."""
    keys = ("lr", "loss_norm", "output", "input_init", "lam", "update_every", "input_update", "alpha", "num_draws",
            "noise_std", "input_lr", "input_perturbation", "encoder_bn", "normalize_percentile")
    return {k: getattr(method, k) for k in keys if hasattr(method, k)}


def pretrain_ugodit(files: Sequence[Path], root: Path, acceleration: float, center_fraction: float, preset: Dict[str, Any],
                    out_path: Path, cache: Optional[str], seed: int = 0, device: str = "cpu",
                    method_kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Group pre-training on ``files`` (all slices); writes the transferable weights to ``out_path``.

    ``method_kwargs``: further arguments of ``UGoDITPretrain`` (e.g. ``lam``), default none.
    """
    from ugodit_pl.methods import UGoDITPretrain

    dm = _datamodule(root, acceleration, center_fraction, preset, target=None, cache=cache, pretrain=files,
                     role="pretrain")
    dm.setup("fit", rank=0, world_size=1)
    batch = dm.batch
    method = UGoDITPretrain(num_measurements=len(batch["name"]), network="unet",
                            network_args=dict(preset["network_args"]), seed=seed, weights_path=str(out_path),
                            **dict(method_kwargs or {}))
    seconds = fit_method(method, batch, int(preset["pretrain_steps"]), device=device)
    return {
        "measurements": list(batch["name"]),
        "M": len(batch["name"]),
        "steps": int(preset["pretrain_steps"]),
        "seconds": seconds,
        "acceleration": acceleration,
        "center_fraction": center_fraction,
        "settings": _describe(method),
        "sampled_fraction": [float(m.float().mean()) for m in batch["operator"].mask.expand(len(batch["name"]), -1, -1)],
    }


def run_acceleration(problem: Dict[str, Any], preset: Dict[str, Any], weights: Optional[Path], seed: int = 0,
                     device: str = "cpu", log: Callable[[str], None] = print) -> Dict[str, Any]:
    """All methods on one test problem; returns ``{"problem", "methods", "levels"}``."""
    results: Dict[str, Dict[str, Any]] = {}
    support = support_of(problem["batch"])
    for maps, batch, targets in (("estimated", problem["batch"], problem["targets"]),
                                 ("oracle", problem["oracle_batch"], problem["oracle_targets"])):
        for name, run in _classical(batch, preset).items():
            if name == "zero_filled_rss" and maps == "oracle":
                continue  # does not use maps
            start = time.perf_counter()
            recon = run()
            seconds = time.perf_counter() - start
            key = name if name == "zero_filled_rss" else f"{name}[{maps}]"
            results[key] = {"method": name, "kind": "classical", "maps": None if name == "zero_filled_rss" else maps,
                            "metrics": _metrics(recon[None], targets, support_of(batch)), "seconds": seconds,
                            "steps": None}
            log(f"  {key:28s} rss {results[key]['metrics']['rss']['psnr']:6.2f} dB  "
                f"cc {results[key]['metrics']['coil_combined']['psnr']:6.2f} dB  {seconds:6.1f} s")
    steps = int(preset["steps"])
    for name in preset["methods"]:
        method = _network_method(name, preset, weights, seed, (preset.get("method_args") or {}).get(name))
        tracker = CurveTracker(problem["targets"], _metric_fn_for(support), int(preset["eval_every"]), steps)
        seconds = fit_method(method, problem["batch"], steps, callbacks=[tracker.callback()], device=device)
        final = _metrics(method.reconstruction, problem["targets"], support)
        last = _metrics(method.current_output, problem["targets"], support)
        results[name] = {
            "method": name, "kind": "network", "maps": "estimated", "metrics": final, "metrics_last": last,
            "seconds": seconds, "seconds_metrics": tracker.eval_seconds, "steps": steps,
            "settings": _describe(method), "curves": _compact_curves(tracker.curves),
        }
        log(f"  {name:28s} rss {final['rss']['psnr']:6.2f} dB  cc {final['coil_combined']['psnr']:6.2f} dB  "
            f"{seconds:6.1f} s")
    levels = _levels(results)
    for entry in results.values():
        if entry["kind"] == "network":
            entry["steps_to_reach"] = {
                target: {level: steps_to_reach(entry["curves"][target]["ema"], value[target])
                         for level, value in levels.items()}
                for target in TARGETS
            }
    info = dict(problem["info"], support_fraction=float(support.mean()))
    return {"problem": info, "methods": results, "levels": levels}


def _compact_curves(curves: Dict[str, Dict[str, Dict[str, List[float]]]]) -> Dict[str, Any]:
    """PSNR and SSIM curves rounded to 3 decimals; the last-output curve for the RSS target only (small JSON)."""
    out: Dict[str, Any] = {}
    for target, kinds in curves.items():
        out[target] = {}
        for kind, curve in kinds.items():
            if kind == "last" and target != "rss":
                continue
            out[target][kind] = {m: [round(v, 3) if isinstance(v, float) else v for v in curve[m]]
                                 for m in ("steps", "psnr", "ssim") if m in curve}
    return out


def _levels(results: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Optional[float]]]:
    """PSNR levels per target: estimated-map SENSE and L1-wavelet, and aSeqDIP's final PSNR - 0.5 dB."""
    levels: Dict[str, Dict[str, Optional[float]]] = {}
    for key in ("sense[estimated]", "l1_wavelet[estimated]"):
        if key in results:
            levels[key] = {t: results[key]["metrics"][t]["psnr"] for t in TARGETS}
    if "aseqdip" in results:
        levels["aseqdip_final-0.5dB"] = {t: results["aseqdip"]["metrics"][t]["psnr"] - 0.5 for t in TARGETS}
    return levels


def run_mri_quality(preset: str = "quick", out_dir: Optional[Path] = None, *, data: Optional[Path] = None,
                    device: str = "cpu", seed: int = 0, overrides: Optional[Dict[str, Any]] = None,
                    log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the suite; returns the result dict (without machine facts) and writes curve plots to ``out_dir``.

    ``overrides`` replace preset entries (e.g. ``{"steps": 10}``); they are recorded in the result.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    settings = dict(PRESETS[preset], **(overrides or {}))
    root = data_root(data)
    start = time.perf_counter()
    result: Dict[str, Any] = {"settings": settings, "accelerations": {}, "pretraining": {}}
    with tempfile.TemporaryDirectory(prefix="ugodit-mri-bench-") as scratch:
        scratch_path = Path(scratch)
        cache = str(scratch_path / "coil_maps")
        files = pretraining_files(root, scratch_path / "demo", settings, seed) if "ugodit" in settings["methods"] else []
        weights: Optional[Path] = None
        for acceleration, center_fraction in sorted(settings["accelerations"].items(), key=lambda kv: float(kv[0])):
            label = f"{float(acceleration):g}x"
            log(f"mri-quality {label}: test problem")
            problem = test_problem(root, float(acceleration), float(center_fraction), settings, cache, seed)
            if files and (weights is None or settings["pretrain_per_acceleration"]):
                weights = scratch_path / f"encoder_{label}.pt"
                log(f"mri-quality {label}: UGoDIT pre-training on {len(files)} file(s)")
                info = pretrain_ugodit(files, root, float(acceleration), float(center_fraction), settings, weights,
                                       cache, seed, device)
                info["used_for"] = [label]
                result["pretraining"][label] = info
                log(f"  pre-training M={info['M']} {info['steps']} steps {info['seconds']:.1f} s")
            elif files:
                next(iter(result["pretraining"].values()))["used_for"].append(label)
            outcome = run_acceleration(problem, settings, weights, seed, device, log)
            result["accelerations"][label] = outcome
            if out_dir is not None:
                _plot(outcome, Path(out_dir) / f"mri-quality_{label}.png", label, settings)
    result["pretraining_data"] = {
        "real": PRETRAIN_FILE + " (really undersampled, its own 2-D Poisson mask, cropped like the test)",
        "simulated": f"make_mri_demo: {settings['num_demo']} slices from scikit-image photographs "
                     f"{list(settings['demo_names'])}, 8 birdcage coils, 1-D random masks like the test",
    }
    result["total_seconds"] = time.perf_counter() - start
    return result


def _plot(outcome: Dict[str, Any], path: Path, label: str, settings: Dict[str, Any]) -> None:
    curves = {name: entry["curves"]["rss"]["ema"] for name, entry in outcome["methods"].items()
              if entry["kind"] == "network"}
    levels = {key: outcome["methods"][key]["metrics"]["rss"]["psnr"]
              for key in ("zero_filled[estimated]", "sense[estimated]", "l1_wavelet[estimated]") if key in outcome["methods"]}
    crop = settings["crop"]
    size = f"{crop[0]}x{crop[1]}" if crop else "230x180"
    plot_curves(curves, path, title=f"brain {size}, {label}: PSNR (RSS target) of the EMA output", levels=levels)
