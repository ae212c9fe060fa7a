"""The ``sr-quality`` suite: 4x super-resolution of FFHQ 00002 by UGoDIT, aSeqDIP, Self-Guided DIP and DIP.

The UGoDIT authors' own demo: the encoder is pre-trained (group pre-training, M = 4) on the
degraded versions of ``ffhq/00013, 00016, 00018, 00019`` and transferred to ``ffhq/00002``; the
paper's figure reports 32.03 dB (UGoDIT), 31.24 dB (aSeqDIP) and 29.17 dB (Self-Guided DIP) on
00002 at 256 x 256. Measurements come from
:class:`~ugodit_pl.datamodules.DegradedImageDataModule`: the image (centre square, resized to
``size``), DPS's 4x bicubic down-sampling, Gaussian noise sigma 0.025 on [0, 1] (DPS's 0.05 on
[-1, 1]), seeded.

Methods, all with the same skip network (``network_args``), the same number of steps and their
documented defaults (lr 0.01; aSeqDIP/UGoDIT lambda 2, N 10, input = bilinear up-sampling of y;
Self-Guided DIP alpha 2, J 4 draws): DIP uses DIP's own input (32 channels of U(0, 0.1) noise, so its
first layer takes 32 channels); the others take the 3-channel up-sampled measurement. Baseline:
the bilinear up-sampling itself. ``method_args`` (a preset entry, default none) gives extra keyword
arguments per method (e.g. ``{"self_guided_dip": {"input_lr": 0.01}}``). Metrics: PSNR / SSIM (11x11 Gaussian window) on [0, 1], of the
EMA output (the methods' default reconstruction) and of the last output.

>>> PRESETS["full"]["size"], PAPER_PSNR["ugodit"]
(256, 32.03)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ugodit_pl.apps.benchmarks.common import CurveTracker, data_root, fit_method, plot_curves, steps_to_reach

__all__ = ["PRESETS", "PAPER_PSNR", "METHODS", "run_sr_quality"]

TEST_IMAGE = "ffhq/00002.png"
PRETRAIN_IMAGES = ("ffhq/00013.png", "ffhq/00016.png", "ffhq/00018.png", "ffhq/00019.png")
#: The paper's figure (4x SR of 00002 at 256 x 256).
PAPER_PSNR = {"ugodit": 32.03, "aseqdip": 31.24, "self_guided_dip": 29.17}
METHODS = ("dip", "self_guided_dip", "aseqdip", "ugodit")
DIP_INPUT_CHANNELS = 32


def _skip(width: int, scales: int = 5, skip: int = 4) -> Dict[str, Any]:
    return {"channels_down": [width] * scales, "channels_up": [width] * scales, "channels_skip": [skip] * scales}


PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": {"size": 32, "network_args": _skip(4, scales=2, skip=2), "steps": 4, "pretrain_steps": 3, "eval_every": 2,
             "methods": METHODS},
    # < 15 min on 2 idle CPU cores: 128 x 128 (the whole face, resized), 32-channel skip net, 400 steps
    "quick": {"size": 128, "network_args": _skip(32), "steps": 400, "pretrain_steps": 400, "eval_every": 10,
              "methods": METHODS},
    # the paper's setting (for a GPU): 256 x 256, the 128-channel skip net, 20 000 pre-training steps
    "full": {"size": 256, "network_args": _skip(128), "steps": 3000, "pretrain_steps": 20000, "eval_every": 50,
             "methods": METHODS},
}


def _datamodule(root: Path, size: int, role: str):
    from ugodit_pl.datamodules import DegradedImageDataModule

    return DegradedImageDataModule(
        images=[str(root / TEST_IMAGE)], pretrain_images=[str(root / p) for p in PRETRAIN_IMAGES], role=role,
        operator="super_resolution", operator_args={"scale_factor": 4}, noise="gaussian", noise_sigma=0.025,
        size=int(size), seed=0,
    )


def _metric_fn(output, target):
    from ugodit_pl.metrics import image_metrics

    return image_metrics(output, target)


def _metrics(output, target) -> Dict[str, float]:
    return {k: float(v.mean()) for k, v in _metric_fn(output.detach().cpu().float(), target.cpu().float()).items()}


def _network_args(settings: Dict[str, Any], in_channels: int) -> Dict[str, Any]:
    return dict(settings["network_args"], in_channels=in_channels, out_channels=3)


def _method(name: str, settings: Dict[str, Any], weights: Optional[Path], seed: int):
    from ugodit_pl import methods

    extra = dict((settings.get("method_args") or {}).get(name) or {})
    common = {"num_measurements": 1, "seed": seed, "network": "skip", **extra}
    if name == "dip":
        return methods.DIP(network_args=_network_args(settings, DIP_INPUT_CHANNELS), input_channels=DIP_INPUT_CHANNELS,
                           **common)
    if name == "self_guided_dip":
        return methods.SelfGuidedDIP(network_args=_network_args(settings, 3), **common)
    if name == "aseqdip":
        return methods.ASeqDIP(network_args=_network_args(settings, 3), **common)
    if name == "ugodit":
        if weights is None:
            raise ValueError("the 'ugodit' method needs pre-trained transferable weights")
        return methods.UGoDITFit(weights=str(weights), num_measurements=1, seed=seed, **extra)
    raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")


def _describe(method: Any) -> Dict[str, Any]:
    keys = ("lr", "loss_norm", "output", "input_init", "lam", "update_every", "input_update", "alpha", "num_draws",
            "noise_std", "input_lr", "input_perturbation", "encoder_bn", "input_channels")
    return {k: getattr(method, k) for k in keys if hasattr(method, k)}


def run_sr_quality(preset: str = "quick", out_dir: Optional[Path] = None, *, data: Optional[Path] = None,
                   device: str = "cpu", seed: int = 0, overrides: Optional[Dict[str, Any]] = None,
                   log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the suite; returns the result dict and writes the PSNR-vs-step plot to ``out_dir``."""
    from ugodit_pl.methods import UGoDITPretrain

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    settings = dict(PRESETS[preset], **(overrides or {}))
    root = data_root(data)
    start = time.perf_counter()
    test = _datamodule(root, settings["size"], "test")
    test.setup("fit", rank=0, world_size=1)
    batch, target = test.batch, test.batch["target"]
    results: Dict[str, Dict[str, Any]] = {}
    upsampled = batch["operator"].init_input(batch["y"])
    results["bilinear"] = {"kind": "baseline", "metrics": _metrics(upsampled, target), "steps": None, "seconds": 0.0}
    log(f"sr-quality {settings['size']}px: bilinear {results['bilinear']['metrics']['psnr']:.2f} dB")
    pretraining: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ugodit-sr-bench-") as scratch:
        weights = None
        if "ugodit" in settings["methods"]:
            group = _datamodule(root, settings["size"], "pretrain")
            group.setup("fit", rank=0, world_size=1)
            weights = Path(scratch) / "encoder.pt"
            pre = UGoDITPretrain(num_measurements=len(group.batch["name"]), network="skip",
                                 network_args=_network_args(settings, 3), seed=seed, weights_path=str(weights))
            seconds = fit_method(pre, group.batch, int(settings["pretrain_steps"]), device=device)
            pre_psnr = _metrics(pre.all_reconstructions(), group.batch["target"])
            pretraining = {"images": list(group.batch["name"]), "M": len(group.batch["name"]),
                           "steps": int(settings["pretrain_steps"]), "seconds": seconds, "settings": _describe(pre),
                           "group_psnr_ema": pre_psnr["psnr"]}
            log(f"  pre-training M={pretraining['M']} {pretraining['steps']} steps {seconds:.1f} s "
                f"(group PSNR {pre_psnr['psnr']:.2f} dB)")
        steps = int(settings["steps"])
        for name in settings["methods"]:
            method = _method(name, settings, weights, seed)
            tracker = CurveTracker({"clean": target}, _metric_fn, int(settings["eval_every"]), steps)
            seconds = fit_method(method, batch, steps, callbacks=[tracker.callback()], device=device)
            curves = tracker.curves["clean"]
            results[name] = {
                "kind": "network", "metrics": _metrics(method.reconstruction, target),
                "metrics_last": _metrics(method.current_output, target), "steps": steps, "seconds": seconds,
                "seconds_metrics": tracker.eval_seconds, "settings": _describe(method),
                "curves": {k: {m: [round(v, 4) if isinstance(v, float) else v for v in vals] for m, vals in c.items()}
                           for k, c in curves.items()},
                "best_psnr_ema": max(curves["ema"]["psnr"]),
                "paper_psnr_256": PAPER_PSNR.get(name),
            }
            log(f"  {name:16s} {results[name]['metrics']['psnr']:6.2f} dB (EMA)  "
                f"{results[name]['metrics_last']['psnr']:6.2f} dB (last)  {seconds:6.1f} s")
    levels = {"bilinear": results["bilinear"]["metrics"]["psnr"]}
    if "aseqdip" in results:
        levels["aseqdip_final-0.5dB"] = results["aseqdip"]["metrics"]["psnr"] - 0.5
    for entry in results.values():
        if entry["kind"] == "network":
            entry["steps_to_reach"] = {k: steps_to_reach(entry["curves"]["ema"], v) for k, v in levels.items()}
    if out_dir is not None:
        plot_curves({n: e["curves"]["ema"] for n, e in results.items() if e["kind"] == "network"},
                    Path(out_dir) / "sr-quality.png", levels={"bilinear": levels["bilinear"]},
                    title=f"4x SR of FFHQ 00002 at {settings['size']}px: PSNR of the EMA output")
    return {
        "settings": settings,
        "problem": {"image": TEST_IMAGE, "pretrain_images": list(PRETRAIN_IMAGES), "size": settings["size"],
                    "scale_factor": 4, "noise_sigma": 0.025, "measurement_shape": list(batch["y"].shape[-2:])},
        "pretraining": pretraining,
        "methods": results,
        "levels": levels,
        "paper_psnr_256": PAPER_PSNR,
        "total_seconds": time.perf_counter() - start,
    }
