"""The ``transfer-study`` suite: what UGoDIT's advantage over aSeqDIP depends on, on the real brain slice.

The test problem is a problem of ``mri-quality``'s panel (``problem``: the real 8-coil brain, k-space
crop, 4x 1-D random mask, ESPIRiT maps from the measurement, support-masked scoring against the RSS
target). Each *variant* changes one thing against the default UGoDIT (pre-training group =
``mri_quality.pretraining_group``, the library's defaults everywhere) and is fitted for the same number of steps as
aSeqDIP; every variant that changes the shared objective (lambda, N, input-update rule, learning
rate) is compared with an aSeqDIP run that gets the same change, so each row reads "UGoDIT minus
aSeqDIP under the same settings".

Studied (``VARIANTS``): pre-training group size M (1, 2, default, 8), pre-training data close to the
test image (the real brain only) or far from it (photographs only), pre-training length (a quarter),
a control with an untrained encoder (one pre-training step: what the UGoDIT fit gives without
transfer), the papers' MRI setting: the slices next to the test slice of the same scan (EPI slices
10, 11, 13, 14 around the EPI test slice 12; run with ``--set 'problem="epi 96x72 4x"'``), pre-trained
for the preset's steps and for three times as many, encoder BatchNorm at test time (train / eval), lambda, N, the input-update rule (sequential /
data-consistent, with the notebooks' unsquared norm), the test-time learning rate, lambda and
learning rate together (pre-trained with them too), our bias-corrected EMA or the authors', EMA vs
last output (from the same runs), and network width (``full`` only). Run a subset with
``--set 'variants=[...]'`` (e.g. one process for the data variants and one for the settings).

Per variant: final PSNR of the EMA (and last) output, best PSNR on the curve, PSNR at an early
step (a quarter of the budget), steps to reach aSeqDIP's final PSNR, and the same for its aSeqDIP
partner. The curves go to ``transfer-study.png``.

>>> [v[0] for v in VARIANTS][:3]
['default', 'M = 1 (real brain only)', 'M = 8 (default + 5 photographs)']
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ugodit_pl.apps.benchmarks import panel
from ugodit_pl.apps.benchmarks.common import data_root, plot_curves, steps_to_reach
from ugodit_pl.apps.benchmarks.journal import Journal, kept_file, run_unit
from ugodit_pl.apps.benchmarks.mri_quality import PRESETS as MRI_PRESETS, _at, fit_network, pretrain, pretraining_group

__all__ = ["PRESETS", "VARIANTS", "PRETRAININGS", "run_transfer_study"]

#: Pre-training groups: name -> (the measurements: "default" = ``pretraining_group``, "brain" = the real
#: sigpy brain only, or a number of scikit-image photographs simulated into k-space, optionally after
#: the default group; fraction of the preset's pre-training steps).
PRETRAININGS: Dict[str, Tuple[Tuple[str, int], float]] = {
    "default": (("default", 0), 1.0),
    "brain_only": (("brain", 0), 1.0),
    "M8": (("default", 5), 1.0),
    "photos_only": (("photos", 3), 1.0),
    "short": (("default", 0), 0.25),
    "untrained": (("default", 0), 0.0),        # one step: a control, the encoder as initialised
    "adjacent": (("adjacent", 0), 1.0),         # the papers' MRI group: the slices next to the test slice
    "adjacent_long": (("adjacent", 0), 3.0),
}
PHOTOS = ("camera", "moon", "coins", "brick", "astronaut", "chelsea", "coffee", "rocket")

#: (label, pre-training group, fit keyword arguments shared with the aSeqDIP partner,
#:  UGoDIT-only keyword arguments, network_args override or None)
VARIANTS: List[Tuple[str, str, Dict[str, Any], Dict[str, Any], Optional[Dict[str, Any]]]] = [
    ("default", "default", {}, {}, None),
    ("M = 1 (real brain only)", "brain_only", {}, {}, None),
    ("M = 8 (default + 5 photographs)", "M8", {}, {}, None),
    ("far data (photographs only)", "photos_only", {}, {}, None),
    ("pre-training 1/4 as long", "short", {}, {}, None),
    ("untrained encoder (1 pre-training step)", "untrained", {}, {}, None),
    ("encoder BatchNorm eval", "default", {}, {"encoder_bn": "eval"}, None),
    ("lambda = 4", "default", {"lam": 4.0}, {}, None),
    ("lambda = 0.2", "default", {"lam": 0.2}, {}, None),
    ("N = 1", "default", {"update_every": 1}, {}, None),
    ("data-consistent input update", "default", {"input_update": "data_consistent"}, {}, None),
    ("notebooks: l2 norm, data-consistent update, N = 1", "default",
     {"loss_norm": "l2", "input_update": "data_consistent", "update_every": 1}, {}, None),
    ("fit lr 1e-3", "default", {"lr": 1e-3}, {}, None),
    ("authors' EMA (every N steps, from zeros)", "default", {"ema_variant": "authors"}, {}, None),
    ("adjacent slices of the test scan (M = 4)", "adjacent", {}, {}, None),
    ("adjacent slices, 3x pre-training steps", "adjacent_long", {}, {}, None),
]
WIDE = {"channels": [32, 64, 128, 128]}
#: The ``quick`` preset's variants: the ones that fit in 15 minutes on 2 CPU cores. The others run with
#: ``--set 'variants=[...]'`` and ``--name transfer-study_<part>`` (docs/RESULTS.md has such parts).
QUICK_VARIANTS = ["default", "untrained encoder (1 pre-training step)", "M = 1 (real brain only)",
                  "far data (photographs only)", "encoder BatchNorm eval", "data-consistent input update",
                  "authors' EMA (every N steps, from zeros)"]

PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(MRI_PRESETS["tiny"], problem="brain 48x40 4x", variants=[
        "default", "encoder BatchNorm eval", "lambda = 4", "untrained encoder (1 pre-training step)",
        "adjacent slices of the test scan (M = 4)"]),
    "quick": dict(MRI_PRESETS["quick"], problem="brain 96x72 4x", variants=QUICK_VARIANTS),
    "full": dict(MRI_PRESETS["full"], problem="brain 230x180 4x",
                 variants=[v[0] for v in VARIANTS] + ["width 32 (vs width 16)"]),
}


def _variant(label: str) -> Tuple[str, str, Dict[str, Any], Dict[str, Any], Optional[Dict[str, Any]]]:
    if label == "width 32 (vs width 16)":
        return (label, "default", {}, {}, WIDE)
    for v in VARIANTS:
        if v[0] == label:
            return v
    raise ValueError(f"unknown transfer-study variant {label!r}; known: {[v[0] for v in VARIANTS]}")


def _fit(name: str, settings: Dict[str, Any], batch: Dict[str, Any], support, weights: Optional[Path], seed: int,
         extra: Dict[str, Any], device: str) -> Dict[str, Any]:
    """One fit (``mri_quality.fit_network`` with ``extra`` keyword arguments) with its EMA/last curves."""
    entry = fit_network(name, batch, support, dict(settings, method_args={name: extra}), weights, seed, device)[name]
    return {
        "final_psnr": entry["metrics"]["psnr"], "final_psnr_last": entry["metrics_last"]["psnr"],
        "best_psnr": max(entry["curve"]["psnr"]), "seconds": entry["seconds"],
        "curve": entry["curve"], "curve_last": entry["curve_last"],
    }


def _group(key: Tuple[str, int], root: Path, folder: Path, seed: int) -> Tuple[List[Tuple[str, int]], str]:
    """The (file, slice) pairs of a pre-training group of ``PRETRAININGS``, and what they are."""
    base, photos = key
    if base == "default":
        pairs, text = pretraining_group("4x", root, folder)
    elif base == "brain":
        pairs, text = [(str(root / panel.PRETRAIN_BRAIN_FILE), 0)], "the real sigpy brain"
    elif base == "adjacent":
        epi = panel.anatomy_file("epi", root, folder)
        pairs = [(str(epi), panel.epi_position(s)) for s in panel.EPI_ADJACENT]
        text = (f"EPI slices {list(panel.EPI_ADJACENT)}, next to the EPI test slice {panel.EPI_TEST_SLICE} "
                f"(the papers' MRI setting: neighbouring slices of the test scan)")
    else:
        pairs, text = [], ""
    if photos:
        from ugodit_pl.datamodules import make_mri_demo

        names = PHOTOS[:photos]
        files = make_mri_demo(folder / f"photos{photos}", num_files=1, num_slices=photos, size=(230, 180), seed=seed,
                              names=names)
        pairs = pairs + [(str(files[0]), i) for i in range(photos)]
        text = (text + " and " if text else "") + f"{photos} scikit-image photographs {list(names)} simulated into k-space"
    return pairs, text


def run_transfer_study(preset: str = "quick", out_dir: Optional[Path] = None, *, data: Optional[Path] = None,
                       device: str = "cpu", seed: int = 0, overrides: Optional[Dict[str, Any]] = None,
                       log: Callable[[str], None] = print, journal: Optional[Journal] = None) -> Dict[str, Any]:
    """Run the study; returns the result dict and writes ``transfer-study.png`` to ``out_dir``.

    With an opened ``journal`` (``ugodit_pl.apps.benchmarks.journal``) each pre-training (and its weights),
    aSeqDIP partner and UGoDIT fit is put in it as it finishes, and those it holds are not run again."""
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
        problem = panel.named(settings["problem"])
        folder = scratch_path / "data"
        batch = panel.test_batch(problem, root, folder, cache=cache, coil_map_args=settings["coil_map_args"])
        support = panel.support_of(batch)
        weights: Dict[str, Path] = {}
        for label in labels:
            _, group, shared, ugodit_only, net_args = _variant(label)
            run_settings = dict(settings, network_args=net_args) if net_args else settings
            key = group + ("_wide" if net_args else "")
            if key not in weights:
                members, fraction = PRETRAININGS[group]
                path = kept_file(journal, f"encoder_{key}.pt", scratch_path)
                steps_pre = max(1, int(round(settings["pretrain_steps"] * fraction)))

                def pretrained() -> Dict[str, Any]:
                    pairs, text = _group(members, root, folder, seed)
                    info = pretrain(problem["undersampling"], pairs, run_settings, path, steps_pre, cache, seed, device)
                    return dict(info, group=text)

                info = run_unit(journal, f"pre-training {key}", pretrained, writes=[path])
                weights[key] = path
                pretrain_info[key] = info
                log(f"transfer-study: pre-training {key}: M={info['M']} {info['steps']} steps {info['seconds']:.0f} s")
            aseq_key = repr(sorted(shared.items())) + repr(net_args)
            if aseq_key not in aseq_runs:
                aseq_runs[aseq_key] = run_unit(journal, f"aseqdip {aseq_key}", lambda: _fit(
                    "aseqdip", run_settings, batch, support, None, seed, shared, device))
                log(f"transfer-study: aSeqDIP {shared or 'defaults'}: {aseq_runs[aseq_key]['final_psnr']:.2f} dB")
            partner = aseq_runs[aseq_key]
            run = run_unit(journal, f"ugodit {label}", lambda: _fit(
                "ugodit", run_settings, batch, support, weights[key], seed, dict(shared, **ugodit_only), device))
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
        "description": (f"{settings['problem']}, U-Net {settings['network_args']['channels']}, "
                        f"{steps} fit steps, pre-training {settings['pretrain_steps']} steps (unless the variant "
                        f"changes it). advantage = UGoDIT - aSeqDIP under the same fit settings."),
        "settings": settings, "early_step": early, "problem": problem,
        "pretraining": pretrain_info, "variants": variants, "total_seconds": time.perf_counter() - start,
    }
