"""The ``transfer-study`` suite: what UGoDIT's advantage over aSeqDIP depends on, on the real brain slice.

The test problem is ``mri-quality``'s (real 8-coil brain, k-space crop, 4x 1-D random mask, ESPIRiT
maps from the measurement, support-masked scoring against the RSS target). Each *variant* changes
one thing against the default UGoDIT (pre-training group = the real sigpy brain + simulated
photographs, the library's defaults everywhere) and is fitted for the same number of steps as
aSeqDIP; every variant that changes the shared objective (lambda, N, input-update rule, learning
rate) is compared with an aSeqDIP run that gets the same change, so each row reads "UGoDIT minus
aSeqDIP under the same settings".

Studied (``VARIANTS``): pre-training group size M (1, 2, default, 8), pre-training data close to the
test image (the real brain only) or far from it (photographs only), pre-training length (a quarter),
a control with an untrained encoder (one pre-training step: what the UGoDIT fit gives without
transfer), encoder BatchNorm at test time (train / eval), lambda, N, the input-update rule (sequential /
data-consistent, with the notebooks' unsquared norm), the test-time learning rate, lambda and
learning rate together (pre-trained with them too), our bias-corrected EMA or the authors', EMA vs
last output (from the same runs), and network width (``full`` only). Run a subset with
``--set 'variants=[...]'`` (e.g. one process for the data variants and one for the settings).

Per variant: final PSNR of the EMA (and last) output, best PSNR on the curve, PSNR at an early
step (a quarter of the budget), steps to reach aSeqDIP's final PSNR, and the same for its aSeqDIP
partner. The curves go to ``transfer-study.png``.

>>> [v[0] for v in VARIANTS][:3]
['default', 'M = 1 (real brain only)', 'M = 2']
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ugodit_pl.apps.benchmarks.common import CurveTracker, data_root, fit_method, plot_curves, steps_to_reach
from ugodit_pl.apps.benchmarks.mri_quality import (
    PRESETS as MRI_PRESETS,
    _metric_fn_for,
    _metrics,
    _network_method,
    pretrain_ugodit,
    pretraining_files,
    support_of,
    test_problem,
)

__all__ = ["PRESETS", "VARIANTS", "PRETRAININGS", "run_transfer_study"]

#: Pre-training groups: name -> (include the real sigpy brain, number of simulated photographs,
#: fraction of the preset's pre-training steps, UGoDITPretrain keyword arguments).
PRETRAININGS: Dict[str, Tuple[bool, Optional[int], float, Dict[str, Any]]] = {
    "default": (True, None, 1.0, {}),          # None: the preset's num_demo
    "brain_only": (True, 0, 1.0, {}),
    "M2": (True, 1, 1.0, {}),
    "M8": (True, 7, 1.0, {}),
    "photos_only": (False, None, 1.0, {}),
    "short": (True, None, 0.25, {}),
    "untrained": (True, None, 0.0, {}),        # one step: a control, the encoder as initialised
    "lam0.1_lr1e-3": (True, None, 1.0, {"lam": 0.1, "lr": 1e-3}),
}

#: (label, pre-training group, fit keyword arguments shared with the aSeqDIP partner,
#:  UGoDIT-only keyword arguments, network_args override or None)
VARIANTS: List[Tuple[str, str, Dict[str, Any], Dict[str, Any], Optional[Dict[str, Any]]]] = [
    ("default", "default", {}, {}, None),
    ("M = 1 (real brain only)", "brain_only", {}, {}, None),
    ("M = 2", "M2", {}, {}, None),
    ("M = 8", "M8", {}, {}, None),
    ("far data (photographs only)", "photos_only", {}, {}, None),
    ("pre-training 1/4 as long", "short", {}, {}, None),
    ("untrained encoder (1 pre-training step)", "untrained", {}, {}, None),
    ("encoder BatchNorm eval", "default", {}, {"encoder_bn": "eval"}, None),
    ("lambda = 0.5", "default", {"lam": 0.5}, {}, None),
    ("lambda = 0.1", "default", {"lam": 0.1}, {}, None),
    ("N = 1", "default", {"update_every": 1}, {}, None),
    ("data-consistent input update", "default", {"input_update": "data_consistent"}, {}, None),
    ("notebooks: l2 norm, data-consistent update, N = 1", "default",
     {"loss_norm": "l2", "input_update": "data_consistent", "update_every": 1}, {}, None),
    ("fit lr 1e-3", "default", {"lr": 1e-3}, {}, None),
    ("lambda = 0.1, lr 1e-3 (pre-training too)", "lam0.1_lr1e-3", {"lam": 0.1, "lr": 1e-3}, {}, None),
    ("authors' EMA (every N steps, from zeros)", "default", {"ema_variant": "authors"}, {}, None),
]
WIDE = {"channels": [32, 64, 128, 128]}
#: The ``quick`` preset's variants: the ones that fit in 15 minutes on 2 CPU cores. The others run with
#: ``--set 'variants=[...]'`` and ``--name transfer-study_<part>`` (docs/RESULTS.md has such parts).
QUICK_VARIANTS = ["default", "untrained encoder (1 pre-training step)", "M = 1 (real brain only)",
                  "far data (photographs only)", "encoder BatchNorm eval", "data-consistent input update",
                  "authors' EMA (every N steps, from zeros)"]

_BASE = {k: v for k, v in MRI_PRESETS["quick"].items()}
PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(MRI_PRESETS["tiny"], variants=["default", "encoder BatchNorm eval", "lambda = 0.5"],
                 pretrainings_m8=1),
    "quick": dict(_BASE, variants=QUICK_VARIANTS, pretrainings_m8=7),
    "full": dict(MRI_PRESETS["full"], variants=[v[0] for v in VARIANTS] + ["width 32 (vs width 16)"],
                 pretrainings_m8=7),
}
ACCELERATION, CENTER_FRACTION = 4.0, 0.08


def _variant(label: str) -> Tuple[str, str, Dict[str, Any], Dict[str, Any], Optional[Dict[str, Any]]]:
    if label == "width 32 (vs width 16)":
        return (label, "default", {}, {}, WIDE)
    for v in VARIANTS:
        if v[0] == label:
            return v
    raise ValueError(f"unknown transfer-study variant {label!r}; known: {[v[0] for v in VARIANTS]}")


def _fit(name: str, settings: Dict[str, Any], problem: Dict[str, Any], support, weights: Optional[Path], seed: int,
         extra: Dict[str, Any], device: str) -> Dict[str, Any]:
    """One fit with its EMA/last curves on the RSS target."""
    method = _network_method(name, settings, weights, seed, extra)
    steps = int(settings["steps"])
    targets = {"rss": problem["targets"]["rss"]}
    tracker = CurveTracker(targets, _metric_fn_for(support), int(settings["eval_every"]), steps)
    seconds = fit_method(method, problem["batch"], steps, callbacks=[tracker.callback()], device=device)
    curves = tracker.curves["rss"]
    return {
        "final_psnr": _metrics(method.reconstruction, targets, support)["rss"]["psnr"],
        "final_psnr_last": _metrics(method.current_output, targets, support)["rss"]["psnr"],
        "best_psnr": max(curves["ema"]["psnr"]),
        "seconds": seconds,
        "curve": {"steps": curves["ema"]["steps"], "psnr": [round(v, 4) for v in curves["ema"]["psnr"]]},
        "curve_last": {"steps": curves["last"]["steps"], "psnr": [round(v, 4) for v in curves["last"]["psnr"]]},
    }


def _at(curve: Dict[str, List[float]], step: int) -> Optional[float]:
    """The curve's value at the last evaluated step <= ``step``."""
    value = None
    for s, v in zip(curve["steps"], curve["psnr"]):
        if s <= step:
            value = v
    return value


def run_transfer_study(preset: str = "quick", out_dir: Optional[Path] = None, *, data: Optional[Path] = None,
                       device: str = "cpu", seed: int = 0, overrides: Optional[Dict[str, Any]] = None,
                       log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the study; returns the result dict and writes ``transfer-study.png`` to ``out_dir``."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    settings = dict(PRESETS[preset], **(overrides or {}))
    labels = list(settings["variants"])
    root = data_root(data)
    start = time.perf_counter()
    steps = int(settings["steps"])
    early = max(1, steps // 4)
    variants: List[Dict[str, Any]] = []
    pretrain_info: Dict[str, Any] = {}
    aseq_runs: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ugodit-transfer-") as scratch:
        scratch_path = Path(scratch)
        cache = str(scratch_path / "coil_maps")
        problem = test_problem(root, ACCELERATION, CENTER_FRACTION, settings, cache, seed)
        support = support_of(problem["batch"])
        weights: Dict[str, Path] = {}
        for label in labels:
            _, group, shared, ugodit_only, net_args = _variant(label)
            run_settings = dict(settings, network_args=net_args) if net_args else settings
            key = group + ("_wide" if net_args else "")
            if key not in weights:
                real, demo, fraction, kwargs = PRETRAININGS[group]
                if group == "M8":
                    demo = int(settings["pretrainings_m8"])
                group_settings = dict(run_settings, num_demo=settings["num_demo"] if demo is None else demo,
                                      pretrain_steps=max(1, int(round(settings["pretrain_steps"] * fraction))))
                names = list(MRI_PRESETS["full"]["demo_names"]) + ["astronaut", "chelsea", "coffee", "rocket"]
                group_settings["demo_names"] = tuple(names[: group_settings["num_demo"]])
                folder = scratch_path / f"demo_{key}"
                files = pretraining_files(root, folder, group_settings, seed, include_real=real)
                path = scratch_path / f"encoder_{key}.pt"
                info = pretrain_ugodit(files, root, ACCELERATION, CENTER_FRACTION, group_settings, path, cache, seed,
                                       device, kwargs)
                weights[key] = path
                pretrain_info[key] = info
                log(f"transfer-study: pre-training {key}: M={info['M']} {info['steps']} steps {info['seconds']:.0f} s")
            aseq_key = repr(sorted(shared.items())) + repr(net_args)
            if aseq_key not in aseq_runs:
                aseq_runs[aseq_key] = _fit("aseqdip", run_settings, problem, support, None, seed, shared, device)
                log(f"transfer-study: aSeqDIP {shared or 'defaults'}: {aseq_runs[aseq_key]['final_psnr']:.2f} dB")
            partner = aseq_runs[aseq_key]
            run = _fit("ugodit", run_settings, problem, support, weights[key], seed, dict(shared, **ugodit_only), device)
            level = partner["final_psnr"]
            entry = {
                "label": label, "pretraining": key, "fit_kwargs": dict(shared, **ugodit_only),
                "network_args": run_settings["network_args"], **run,
                "psnr_at": {"early": _at(run["curve"], early)},
                "steps_to_reach_aseqdip": steps_to_reach(run["curve"], level),
                "aseqdip": {"final_psnr": partner["final_psnr"], "best_psnr": partner["best_psnr"],
                            "psnr_at_early": _at(partner["curve"], early), "curve": partner["curve"]},
                "advantage_db": run["final_psnr"] - partner["final_psnr"],
                "advantage_early_db": (_at(run["curve"], early) or 0.0) - (_at(partner["curve"], early) or 0.0),
                "pretrain_seconds": pretrain_info[key]["seconds"],
            }
            variants.append(entry)
            log(f"transfer-study: {label}: UGoDIT {run['final_psnr']:.2f} dB vs aSeqDIP {level:.2f} dB "
                f"({entry['advantage_db']:+.2f}); at step {early}: {entry['advantage_early_db']:+.2f} dB")
    if out_dir is not None:
        curves = {v["label"]: v["curve"] for v in variants}
        default_aseq = next((v["aseqdip"]["curve"] for v in variants if v["label"] == "default"), None)
        if default_aseq is not None:
            curves["aSeqDIP (defaults)"] = default_aseq
        plot_curves(curves, Path(out_dir) / "transfer-study.png",
                    title="UGoDIT variants vs aSeqDIP: PSNR (RSS target) of the EMA output, 4x")
    return {
        "description": (f"Real brain, 4x, {settings['crop']} crop, U-Net {settings['network_args']['channels']}, "
                        f"{steps} fit steps, pre-training {settings['pretrain_steps']} steps (unless the variant "
                        f"changes it). advantage = UGoDIT - aSeqDIP under the same fit settings."),
        "settings": settings, "early_step": early, "problem": problem["info"],
        "pretraining": pretrain_info, "variants": variants, "total_seconds": time.perf_counter() - start,
    }
