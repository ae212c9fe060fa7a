"""The ``mri-quality`` suite: every method on the real-MRI panel, each at its defaults, at one step budget.

The panel (:mod:`ugodit_pl.apps.benchmarks.panel`): the real 8-coil brain k-space at two k-space
crops, matplotlib's real head MRI and nibabel's real EPI brain slice simulated into 8-coil k-space;
4x random and 8x equispaced undersampling; ESPIRiT maps from the undersampled data; RSS target.

Methods, every network at the same number of optimiser steps with its documented defaults:

- classical (``ugodit_pl.classical``, estimated maps): zero-filled A^H y, CG-SENSE, and L1-wavelet and
  total variation each at its default lambda, at the lambda of ``l1_grid`` that an automatic rule
  picks without ground truth (``_auto``: held-out k-space cross-validation, or the discrepancy
  principle where the mask leaves too few lines to hold out; ``ugodit_pl.lamda_rules``), the
  compressed sensing a user would run and the bar network methods are judged against, and at the
  best lambda of ``l1_grid`` against the ground truth (``_tuned``, an oracle choice no real scan
  allows, shown beside it);
- ``dip`` (noise input) and ``dip_es`` (the same run's output kept by ``WMVEarlyStopping`` at its
  defaults, or ``es_args``), ``reference_dip`` (input A^H y), ``self_guided_dip``, ``aseqdip``;
- ``ugodit``: the test-time fit behind an encoder pre-trained on M *other* measurements (never the
  test slice), and ``ugodit_untrained``: the same fit behind the encoder as initialised (one
  pre-training step), the control that tells transfer from architecture;
- ``deepinv_dip``: deepinv's ``DeepImagePrior`` with its ``ConvDecoder`` (64 channels, 7 layers,
  lr 0.01) at the same steps, a peer baseline, when deepinv is installed (it is skipped, and the
  result says so, when it is not; see README: deepinv pulls a torchvision build).

UGoDIT's pre-training group (:func:`pretraining_group`), one per undersampling, at the preset's
``pretrain_crop`` (the encoder is convolutional, so one set of weights serves every test size): the
real, really undersampled ``mri/sigpy_brain_poisson8x.h5`` (another brain scan, its own 2-D Poisson
mask) and slices 4 and 20 of nibabel's EPI volume (the neighbours of the EPI test slice 12),
simulated and undersampled like the test; without nibabel, two scikit-image photographs instead.

Scoring: fastMRI conventions (data range = target max, 7x7 SSIM), of the magnitude multiplied by the
support of the coil maps (where the SENSE model sees the image; known without the ground truth).
Per problem: the table, PSNR-vs-step curves (EMA output), and ``budget_change``: the PSNR at the
full budget minus the PSNR at half of it (negative = a doubled budget costs). The ``summary``: per
method the mean and the worst PSNR margin over the panel against zero-filled, CG-SENSE, L1-wavelet
and tuned L1-wavelet, per undersampling.

``method_args`` and ``pretrain_args`` (preset entries, default none) give extra keyword arguments per
method and to ``UGoDITPretrain`` (e.g. ``--set 'method_args={"aseqdip": {"residual": false}}'`` for
the papers' network); they are recorded with the settings. ``method_variants`` (default none) add fits
of a method under another name, with other arguments or another Lightning precision, e.g.
``{"ugodit_bf16": {"method": "ugodit", "precision": "bf16-mixed"}, "ugodit_compiled": {"method":
"ugodit", "args": {"compile": true}}}``; they are scored and summarised like the methods. A variant may
fit for its own number of ``steps``, and as an ``ensemble`` of K: K fits of the measurement from their
own initial weights (``network_seeds="per_row"``), in one batch, scored as the mean of their
reconstructions (``ugodit_pl.methods.ensemble``; each member's PSNR is recorded too). ``workers``:
fits run in that many processes (2 on a 2-core CPU, one thread each; 4 sharing the GPU in
``full``; 1 where the fits' seconds are compared). Every curve carries the fit's seconds at each point.
A variant with ``holdout_fraction`` in its args is the held-out rule of ``ugodit reconstruct --stop
heldout`` within the step budget: ``HeldOutEarlyStopping`` (``holdout_args``: ``patience``,
``check_every``), then ``refit_steps`` on every sample from where it stopped; it is scored after the
refit (``held_out`` records the stop and the PSNR before the refit), its seconds and steps include both;
every problem's mask is checked for enough samples to hold out before anything is fitted.
A variant may start from a classical image (``input_from``, one of :data:`IMAGE_SOURCES`: the network's
input z_0 is that reconstruction instead of A^H y, ``input_init="reference"``) and may be scored a second
time as the mean of its image and a classical one (``mean_with``: an entry ``<variant>_mean_<source>``);
the classical reconstruction's seconds are added to the fit's (it uses no ground truth). The mean's entry
also records, as an oracle diagnostic, the PSNR of w x_net + (1 - w) x_cs for w in :data:`WEIGHT_GRID`
(``weight_grid``; "0.5" is the mean, "1.0" the network alone): how much a weight other than one half
could give, which only the target can tell.

>>> PRESETS["quick"]["panel"], PRESETS["quick"]["steps"]
('quick', 600)
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ugodit_pl.apps.benchmarks import panel
from ugodit_pl.apps.benchmarks.common import CurveTracker, data_root, fit_method, plot_curves, reported_curve
from ugodit_pl.apps.benchmarks.journal import Journal, kept_file
from ugodit_pl.apps.io import to_jsonable
from ugodit_pl.complex import channels_to_complex, complex_to_channels
from ugodit_pl.complex import magnitude as complex_magnitude
from ugodit_pl.arguments import whole
from ugodit_pl.lamda_rules import LAMDA_GRID
from ugodit_pl.methods.ensemble import ensemble_mean, repeat_measurements
from ugodit_pl.methods.holdout import holdout_mask

__all__ = ["PRESETS", "METHODS", "CLASSICAL", "run_mri_quality", "pretraining_group", "problem_metrics", "variant_of"]

#: The network methods, in table order (``dip_es`` comes out of the ``dip`` run).
METHODS = ("dip", "reference_dip", "self_guided_dip", "aseqdip", "ugodit", "ugodit_untrained", "deepinv_dip")
#: The compressed-sensing reconstructions, each at its default, automatic and oracle lambda.
CS_METHODS = ("l1_wavelet", "total_variation")
#: The classical reconstructions, in table order.
CLASSICAL = ("zero_filled", "sense", "l1_wavelet", "l1_wavelet_auto", "l1_wavelet_tuned", "total_variation",
             "total_variation_auto", "total_variation_tuned")
VARIANT_KEYS = ("method", "args", "precision", "steps", "ensemble", "input_from", "mean_with")
#: The network image's weights w of a ``mean_with`` entry's oracle diagnostic, w x_net + (1 - w) x_cs.
WEIGHT_GRID = tuple(k / 10 for k in range(11))
#: The classical reconstructions a variant may start from or be averaged with: those without ground truth.
IMAGE_SOURCES = ("zero_filled", "sense", "l1_wavelet", "l1_wavelet_auto", "total_variation", "total_variation_auto")
#: The references of the summary's margins (the network methods are judged against ``l1_wavelet_auto``).
REFERENCES = ("zero_filled", "sense", "l1_wavelet", "l1_wavelet_auto", "l1_wavelet_tuned", "total_variation_auto",
              "total_variation_tuned")

PRESETS: Dict[str, Dict[str, Any]] = {
    # seconds, for the tests: tiny sizes, a few steps (the numbers mean nothing)
    "tiny": {
        "panel": "tiny", "network_args": {"channels": [4, 8, 8, 8]}, "steps": 4, "pretrain_steps": 3,
        "pretrain_crop": (64, 64), "eval_every": 2, "coil_map_args": {"kernel_width": 4}, "sense_iter": 4,
        "l1_iter": 8, "l1_grid": [1e-3, 1e-2], "methods": METHODS, "workers": 1, "method_args": {},
        "es_args": {"window": 2, "patience": 2}, "pretrain_args": {}, "method_variants": {},
        "holdout_args": {"patience": 2, "check_every": 1, "refit_steps": 2},
    },
    # about 40 min on 2 CPU cores: six problems up to 144 x 112, width-16 U-Net, 600 steps
    "quick": {
        "panel": "quick", "network_args": {"channels": [16, 32, 64, 64]}, "steps": 600, "pretrain_steps": 600,
        "pretrain_crop": (96, 72), "eval_every": 30, "coil_map_args": {}, "sense_iter": None, "l1_iter": None,
        "l1_grid": list(LAMDA_GRID), "methods": METHODS, "workers": 2, "method_args": {}, "es_args": {},
        "pretrain_args": {}, "method_variants": {}, "holdout_args": {"patience": 200, "check_every": 10, "refit_steps": 100},
    },
    # the papers' setting (for a GPU, not run yet): full slices, the authors' U-Net width, 3000 steps; beside
    # the library's defaults (with the U-Net's total-variation term, decision 18), the papers' objectives
    "full": {
        "panel": "full", "network_args": {"channels": [64, 128, 256, 256]}, "steps": 3000, "pretrain_steps": 3000,
        "pretrain_crop": (128, 96), "eval_every": 100, "coil_map_args": {}, "sense_iter": None, "l1_iter": None,
        "l1_grid": list(LAMDA_GRID), "methods": METHODS, "workers": 4, "method_args": {}, "es_args": {},
        "pretrain_args": {}, "method_variants": {f"{m}_papers": {"method": m, "args": {"tv_weight": 0.0}}
                                                 for m in ("aseqdip", "ugodit", "ugodit_untrained")},
        "holdout_args": {"patience": 400, "check_every": 10, "refit_steps": 300},
    },
}


# --------------------------------------------------------------------------- metrics
def problem_metrics(recon: torch.Tensor, target: torch.Tensor, support: torch.Tensor) -> Dict[str, float]:
    """fastMRI-convention PSNR/SSIM/NMSE of a (1, 2, H, W) or complex (1, H, W) reconstruction's
    support-masked magnitude against the RSS ``target`` (1, 1, H, W); ``psnr_unmasked`` without the mask."""
    from ugodit_pl.metrics import mri_metrics, psnr

    magnitude = complex_magnitude(recon.detach().cpu()).float()
    target = target.cpu().float()
    out = {k: float(v.mean()) for k, v in mri_metrics(magnitude * support.cpu(), target).items()}
    out["psnr_unmasked"] = float(psnr(magnitude, target).mean())
    return out


def _curve_metrics(support: torch.Tensor, size: int = 1) -> Callable[[torch.Tensor, torch.Tensor], Dict[str, torch.Tensor]]:
    """Metrics of outputs against the target; with ``size`` > 1, of the mean of each ensemble of ``size`` rows."""
    from ugodit_pl.metrics import mri_metrics

    def metric_fn(output: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        output = ensemble_mean(output.detach().cpu(), size)
        return mri_metrics(complex_magnitude(output).float() * support.cpu(), target.cpu())

    return metric_fn


def _at(curve: Dict[str, List[float]], step: int) -> Optional[float]:
    """The curve's value at the last evaluated step <= ``step``."""
    value = None
    for s, v in zip(curve["steps"], curve["psnr"]):
        if s <= step:
            value = v
    return value


# --------------------------------------------------------------------------- classical
def classical_results(batch: Dict[str, Any], support: torch.Tensor, settings: Dict[str, Any],
                      keep_images: bool = False) -> Dict[str, Dict[str, Any]]:
    """Zero-filled, CG-SENSE, and L1-wavelet and total variation three ways each: at the default lambda,
    at the lambda the automatic rule picks without ground truth (``lamda_rules.automatic_lamda``,
    ``"auto"``: held-out k-space cross-validation, or the discrepancy principle where too few lines can
    be held out) and at the best lambda of ``l1_grid`` against the target (``_tuned``, an oracle).
    With ``keep_images`` each entry also holds its support-masked magnitude image (1, 1, H, W) as ``image``."""
    from ugodit_pl import lamda_rules

    y, mask, maps, target = batch["y"][0], batch["operator"].mask[0], batch["operator"].coil_maps[0], batch["target"]
    cs_args = {} if settings["l1_iter"] is None else {"max_iter": int(settings["l1_iter"])}
    grid = tuple(float(lamda) for lamda in settings["l1_grid"])
    out: Dict[str, Dict[str, Any]] = {}
    for name, run in classical_runs(batch, settings).items():
        start = time.perf_counter()
        recon, extra = run()
        out[name] = {"kind": "classical", "metrics": problem_metrics(recon[None], target, support),
                     "seconds": time.perf_counter() - start, **extra}
        if keep_images:
            out[name]["image"] = complex_magnitude(recon[None].cpu()).float() * support.cpu()
    for method in CS_METHODS:
        reconstruct = lamda_rules.RECONSTRUCTIONS[method]
        tuned = []
        for lamda in grid:
            recon = reconstruct(y, mask, maps, lamda=lamda, **cs_args)
            tuned.append((problem_metrics(recon[None], target, support), lamda, recon))
        best, lamda, recon = max(tuned, key=lambda item: item[0]["psnr"])
        out[f"{method}_tuned"] = {"kind": "classical", "metrics": best, "lamda": lamda,
                                  "grid": {str(g): m["psnr"] for m, g, _ in tuned}, "oracle": True}
        if keep_images:
            out[f"{method}_tuned"]["image"] = complex_magnitude(recon[None].cpu()).float() * support.cpu()
    return out


def classical_runs(batch: Dict[str, Any], settings: Dict[str, Any]
                   ) -> Dict[str, Callable[[], Tuple[torch.Tensor, Dict[str, Any]]]]:
    """The reconstructions of :data:`IMAGE_SOURCES` for the batch's one measurement, each a call giving the
    complex (H, W) image and what it chose (lambda, rule)."""
    from ugodit_pl import classical, lamda_rules

    y, mask, maps = batch["y"][0], batch["operator"].mask[0], batch["operator"].coil_maps[0]
    sense_args = {} if settings["sense_iter"] is None else {"max_iter": int(settings["sense_iter"])}
    cs_args = {} if settings["l1_iter"] is None else {"max_iter": int(settings["l1_iter"])}
    grid = tuple(float(lamda) for lamda in settings["l1_grid"])
    runs: Dict[str, Callable[[], Tuple[torch.Tensor, Dict[str, Any]]]] = {
        "zero_filled": lambda: (classical.zero_filled(y, maps), {}),
        "sense": lambda: (classical.sense(y, mask, maps, **sense_args), {}),
    }
    for method in CS_METHODS:
        reconstruct = lamda_rules.RECONSTRUCTIONS[method]
        runs[method] = lambda reconstruct=reconstruct: (reconstruct(y, mask, maps, **cs_args), {})
        runs[f"{method}_auto"] = lambda method=method: _automatic(y, mask, maps, method, grid, cs_args)
    return runs


def _automatic(y: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor, method: str, grid: Tuple[float, ...],
               args: Dict[str, Any]) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """``method`` at the lambda of ``grid`` that ``lamda_rules``' "auto" rule picks; the rule and lambda it used."""
    from ugodit_pl import lamda_rules

    chosen = lamda_rules.automatic_lamda(y, mask, maps, method=method, rule="auto", lamdas=grid, **args)
    plan = chosen.held_out
    held_out = {} if plan is None else {"held_out": plan[0], "holdout_fraction": plan[1]}
    return chosen.image, {"lamda": chosen.lamda, "rule": "discrepancy" if plan is None else "cv", **held_out,
                          "scores": {str(k): v for k, v in chosen.scores.items()}}


# --------------------------------------------------------------------------- networks
def network_method(name: str, settings: Dict[str, Any], weights: Optional[Path], seed: int,
                   extra: Optional[Dict[str, Any]] = None):
    """The method ``name`` at its defaults (plus ``extra`` keyword arguments), with the preset's U-Net."""
    from ugodit_pl import methods

    common = {"num_measurements": 1, "seed": seed, **dict(extra or {})}
    net = {"network": "unet", "network_args": dict(settings["network_args"])}
    classes = {"dip": methods.DIP, "reference_dip": methods.ReferenceGuidedDIP,
               "self_guided_dip": methods.SelfGuidedDIP, "aseqdip": methods.ASeqDIP}
    if name in classes:
        return classes[name](**{**net, **common})  # a variant's network_args replace the preset's
    if name in ("ugodit", "ugodit_untrained"):
        if weights is None:
            raise ValueError(f"the {name!r} method needs transferable weights")
        return methods.UGoDITFit(weights=str(weights), **common)
    raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")


def describe(method: Any) -> Dict[str, Any]:
    """The hyper-parameters that matter, for the result file."""
    keys = ("lr", "loss_norm", "output", "input_init", "lam", "update_every", "input_update", "alpha", "num_draws",
            "noise_std", "input_lr", "input_perturbation", "encoder_bn", "residual", "normalize_percentile")
    return {k: getattr(method, k) for k in keys if hasattr(method, k)}


def _compact(curve: Dict[str, List[float]]) -> Dict[str, List[float]]:
    return {m: [round(v, 3) if isinstance(v, float) else v for v in curve[m]]
            for m in ("steps", "psnr", "ssim", "seconds") if m in curve}


def variant_of(name: str, settings: Dict[str, Any]) -> Tuple[str, Dict[str, Any], str]:
    """(method, its extra arguments, Lightning precision) of a method or ``method_variants`` name of the settings.

    >>> variant_of("ugodit_bf16", {"method_variants": {"ugodit_bf16": {"method": "ugodit", "precision": "bf16-mixed"}}})
    ('ugodit', {}, 'bf16-mixed')
    """
    method_args = dict((settings.get("method_args") or {}).get(name) or {})
    variant = (settings.get("method_variants") or {}).get(name)
    if variant is None:
        return name, method_args, "32-true"
    base = variant.get("method")
    if base not in METHODS or base == "deepinv_dip":
        raise ValueError(f"variant {name!r}: 'method' must be one of the network methods "
                         f"{', '.join(m for m in METHODS if m != 'deepinv_dip')}, got {base!r}")
    unknown = sorted(set(variant) - set(VARIANT_KEYS))
    if unknown:
        raise ValueError(f"variant {name!r}: unknown key(s) {unknown}; a variant has {', '.join(VARIANT_KEYS)}")
    for key in ("input_from", "mean_with"):
        if variant.get(key) is not None and variant[key] not in IMAGE_SOURCES:
            raise ValueError(f"variant {name!r}: {key} must be one of {', '.join(IMAGE_SOURCES)}, got {variant[key]!r}")
    return base, {**method_args, **dict(variant.get("args") or {})}, str(variant.get("precision", "32-true"))


def variant_budget(name: str, settings: Dict[str, Any]) -> Tuple[int, int]:
    """(steps, ensemble size) of a method or ``method_variants`` name: the preset's steps and 1 unless the
    variant gives ``steps`` or ``ensemble``.

    >>> variant_budget("aseqdip_k3", {"steps": 600, "method_variants": {"aseqdip_k3": {"method": "aseqdip", "ensemble": 3, "steps": 200}}})
    (200, 3)
    """
    variant = (settings.get("method_variants") or {}).get(name) or {}
    if int(variant.get("ensemble", 1)) > 1 and (variant.get("args") or {}).get("holdout_fraction"):
        raise ValueError(f"variant {name!r}: an ensemble with held-out samples is not measured; drop one of them")
    return (whole(f"variant {name!r}: steps", variant.get("steps", settings["steps"]), minimum=1),
            whole(f"variant {name!r}: ensemble", variant.get("ensemble", 1), minimum=1))


def fit_network(name: str, batch: Dict[str, Any], support: torch.Tensor, settings: Dict[str, Any],
                weights: Optional[Path], seed: int, device: str) -> Dict[str, Dict[str, Any]]:
    """One network fit with its curves; ``dip`` also yields ``dip_es`` (WMVEarlyStopping on the same run); a
    variant with ``holdout_fraction`` stops on held-out k-space and is refitted (see the module)."""
    from ugodit_pl.callbacks import HeldOutEarlyStopping, WMVEarlyStopping

    steps, size = variant_budget(name, settings)
    base, extra, precision = variant_of(name, settings)
    target = batch["target"]
    variant = (settings.get("method_variants") or {}).get(name) or {}
    runs, sources, classical_seconds = classical_runs(batch, settings), {}, 0.0
    for source in {variant.get("input_from"), variant.get("mean_with")} - {None}:
        start = time.perf_counter()
        sources[source] = runs[source]()[0][None]
        classical_seconds += time.perf_counter() - start
    if variant.get("input_from"):  # the network starts from the classical image (scaled like y by the method)
        batch = dict(batch, reference=complex_to_channels(sources[variant["input_from"]]).to(batch["y"].real.dtype))
        extra = {**extra, "input_init": "reference"}
    if size > 1:  # K fits from their own initial weights, as one batch; scored as their mean
        batch, extra = repeat_measurements(batch, size), {**extra, "num_measurements": size, "network_seeds": "per_row"}
    method = network_method(base, settings, weights, seed, extra)
    tracker = CurveTracker({"rss": target}, _curve_metrics(support, size), int(settings["eval_every"]), steps)
    callbacks = [tracker.callback()]
    stopper = WMVEarlyStopping(**dict(settings.get("es_args") or {})) if name == "dip" else None
    if stopper is not None:
        callbacks.append(stopper)
    holdout = dict(settings["holdout_args"]) if extra.get("holdout_fraction") else None
    held_out_stop = HeldOutEarlyStopping(patience=int(holdout["patience"]), check_every=int(holdout["check_every"])) \
        if holdout else None
    if held_out_stop is not None:
        callbacks.append(held_out_stop)
    seconds = classical_seconds + fit_method(method, batch, steps, callbacks=callbacks, device=device,
                                             precision=precision)
    ema = reported_curve(tracker.curves["rss"])  # the EMA, with the measured k-space put back by default
    fitted_steps = steps
    held_out = None
    if held_out_stop is not None:  # the refit on every sample, from where the held-out fit stopped
        before = problem_metrics(method.reconstruction, batch["target"], support)
        refit = network_method(base, settings, weights, seed, {k: v for k, v in extra.items() if k != "holdout_fraction"})
        refit.warm_start(method.warm_state(0))
        seconds += fit_method(refit, batch, int(holdout["refit_steps"]), device=device, precision=precision)
        fitted_steps = int(held_out_stop.stopped_step or steps) + int(holdout["refit_steps"])
        held_out = {"stopped_step": held_out_stop.stopped_step, "kept_step": held_out_stop.best_step.get(0),
                    "refit_steps": int(holdout["refit_steps"]), "psnr_before_refit": before["psnr"]}
        method = refit
    final = method.ema_output if name == "dip" else method.reconstruction
    entry = {
        "kind": "network", "steps": fitted_steps, "seconds": seconds, "seconds_metrics": tracker.eval_seconds,
        "metrics": problem_metrics(ensemble_mean(final, size), target, support),
        "metrics_last": problem_metrics(ensemble_mean(method.current_output, size), target, support),
        "settings": dict(describe(method), **({"precision": precision} if precision != "32-true" else {}),
                         **({"compile": method.compile_args} if method.compile_args is not None else {})),
        "curve": _compact(ema), "curve_last": _compact(tracker.curves["rss"]["last"]),
        "budget_change": _budget_change(ema, steps),
        **({"held_out": held_out} if held_out is not None else {}),
        **({"ensemble": {"size": size, "member_psnr": [round(problem_metrics(final[k:k + 1], target, support)["psnr"], 4)
                                                        for k in range(size)]}} if size > 1 else {}),
    }
    out = {name: entry}
    if variant.get("mean_with"):
        image = channels_to_complex(ensemble_mean(final, size).detach().cpu())
        other = sources[variant["mean_with"]].cpu().to(image.dtype)
        out[f"{name}_mean_{variant['mean_with']}"] = {
            "kind": "network", "steps": fitted_steps, "seconds": seconds,
            "metrics": problem_metrics((image + other) / 2, target, support),
            "settings": {"mean_of": [name, variant["mean_with"]]},
            "weight_grid": {f"{w:.1f}": problem_metrics(w * image + (1 - w) * other, target, support)["psnr"]
                            for w in WEIGHT_GRID}}
    if stopper is not None:
        kept = stopper.best_step.get(0, next(iter(stopper.best_step.values()), None))
        out["dip_es"] = {"kind": "network", "steps": kept, "budget": steps, "seconds": seconds,
                         "metrics": problem_metrics(method.reconstruction, batch["target"], support),
                         "settings": {"window": stopper.window, "patience": stopper.patience},
                         "stopped_step": stopper.stopped_step}
    return out


def _budget_change(curve: Dict[str, List[float]], steps: int) -> Optional[float]:
    half, full = _at(curve, steps // 2), _at(curve, steps)
    return None if half is None or full is None else full - half


def deepinv_dip(batch: Dict[str, Any], support: torch.Tensor, steps: int, seed: int) -> Dict[str, Any]:
    """deepinv's ``DeepImagePrior`` with its ``ConvDecoder`` (64 channels, 7 layers, lr 0.01) on the same
    measurement, maps and step budget (deepinv's own MultiCoilMRI operator; the k-space is scaled so that
    the zero-filled image has maximum 1 and the output scaled back)."""
    from deepinv.models import ConvDecoder, DeepImagePrior
    from deepinv.physics import MultiCoilMRI

    y, mask, maps = batch["y"][0], batch["operator"].mask[0], batch["operator"].coil_maps[0]
    height, width = y.shape[-2:]
    physics = MultiCoilMRI(mask=mask.float().expand(height, width)[None].clone(), coil_maps=maps[None],
                           img_size=(height, width))
    measured = torch.stack([y.real, y.imag])[None]
    zero_filled = physics.A_adjoint(measured)
    scale = float(zero_filled.pow(2).sum(dim=1).sqrt().max())
    torch.manual_seed(seed)
    generator = ConvDecoder(img_size=(2, height, width), in_size=(4, 4), layers=7, channels=64)
    start = time.perf_counter()
    x = DeepImagePrior(generator, img_size=(64, 4, 4), iterations=int(steps), learning_rate=0.01)(measured / scale, physics)
    recon = torch.complex(x[0, 0], x[0, 1]).detach()[None] * scale
    return {"kind": "network", "steps": int(steps), "seconds": time.perf_counter() - start,
            "metrics": problem_metrics(recon, batch["target"], support),
            "settings": {"network": "deepinv ConvDecoder(in_size=(4, 4), layers=7, channels=64)", "lr": 0.01},
            "peer": True}


def deepinv_available() -> bool:
    """Whether deepinv can be imported here."""
    try:
        import deepinv  # noqa: F401
    except Exception:  # an install with a mismatched torchvision fails with other errors than ImportError
        return False
    return True


# --------------------------------------------------------------------------- UGoDIT pre-training
def pretraining_group(undersampling: str, root: Path, folder: Path) -> Tuple[List[Tuple[str, int]], str]:
    """The (file, slice) pairs UGoDIT pre-trains on for ``undersampling``, and what they are.

    Never a test slice: the real sigpy brain (another scan) and EPI slices 4 and 20 (the neighbours of
    the EPI test slice 12).
    """
    pairs = [(str(root / panel.PRETRAIN_BRAIN_FILE), 0)]
    epi = panel.anatomy_file("epi", root, folder)
    return pairs + [(str(epi), panel.epi_position(s)) for s in panel.EPI_NEIGHBOURS], (
        f"the real sigpy brain (undersampled by its own 2-D Poisson mask) and EPI slices {panel.EPI_NEIGHBOURS} "
        f"(neighbours of the test slice {panel.EPI_TEST_SLICE}), {undersampling} like the test")


def pretrain(undersampling: str, pairs: List[Tuple[str, int]], settings: Dict[str, Any], out_path: Path,
             steps: int, cache: str, seed: int, device: str) -> Dict[str, Any]:
    """UGoDIT group pre-training on ``pairs`` at the preset's ``pretrain_crop``; writes the weights to ``out_path``."""
    from ugodit_pl.methods import UGoDITPretrain

    entry = panel.problem("brain", settings["pretrain_crop"], undersampling)
    dm = panel.datamodule(entry, Path(pairs[0][0]), role="pretrain", pretrain=pairs, cache=cache,
                          coil_map_args=settings["coil_map_args"], mask_seed=seed)
    dm.setup("fit", rank=0, world_size=1)
    batch = dm.batch
    method = UGoDITPretrain(num_measurements=len(batch["name"]), network="unet",
                            network_args=dict(settings["network_args"]), seed=seed, weights_path=str(out_path),
                            **dict(settings.get("pretrain_args") or {}))
    seconds = fit_method(method, batch, int(steps), device=device)
    return {"measurements": list(batch["name"]), "M": len(batch["name"]), "steps": int(steps), "seconds": seconds,
            "crop": list(settings["pretrain_crop"]), "settings": describe(method)}


# --------------------------------------------------------------------------- tasks (run in worker processes)
def _task(task: Dict[str, Any]) -> Dict[str, Any]:
    """One unit of work, ``{"kind": "pretrain" | "classical" | "network" | "deepinv", ...}``; its result."""
    torch.set_num_threads(int(task["threads"]))
    settings, root, folder = task["settings"], Path(task["root"]), Path(task["folder"])
    if task["kind"] == "pretrain":
        return pretrain(task["undersampling"], task["pairs"], settings, Path(task["weights"]), task["steps"],
                        task["cache"], task["seed"], task["device"])
    batch = panel.test_batch(task["entry"], root, folder, cache=task["cache"], coil_map_args=settings["coil_map_args"])
    support = panel.support_of(batch)
    if task["kind"] == "classical":
        return classical_results(batch, support, settings)
    if task["kind"] == "deepinv":
        return {"deepinv_dip": deepinv_dip(batch, support, int(settings["steps"]), task["seed"])}
    weights = Path(task["weights"]) if task.get("weights") else None
    return fit_network(task["method"], batch, support, settings, weights, task["seed"], task["device"])


def _run_tasks(tasks: List[Dict[str, Any]], workers: int, log: Callable[[str], None],
               journal: Optional[Journal] = None) -> List[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """(task, result) for every task, in the tasks' order. A task the ``journal`` holds (and whose written
    files are there) is read, not run; the others run ``workers`` at a time, and each is logged and put in
    the journal as it finishes, so that a killed run loses only the fits under way. A task that fails is
    logged and the others go on; then the first failure is raised (a rerun resumes the rest)."""
    results: Dict[int, Dict[str, Any]] = {}
    failures: List[BaseException] = []
    for k, task in enumerate(tasks):
        held = journal.get(task["label"], task.get("writes", ())) if journal is not None else None
        if held is not None:
            results[k] = held
    if results:
        log(f"  resumed {len(results)} of {len(tasks)} from {journal.folder}")
    pending = [k for k in range(len(tasks)) if k not in results]

    def finished(k: int, result: Dict[str, Any]) -> None:
        results[k] = to_jsonable(result)  # as the journal gives it back: a resumed run writes the same file
        if journal is not None:
            journal.put(tasks[k]["label"], results[k])
        log(f"  done {len(results)}/{len(tasks)}: {tasks[k]['label']}")

    def failed(k: int, error: Exception) -> None:
        failures.append(error)
        log(f"  failed: {tasks[k]['label']}: {type(error).__name__}: {error}")

    if workers <= 1:
        for k in pending:
            try:
                result = _task(tasks[k])
            except Exception as error:  # noqa: BLE001 - reported, then raised after the others
                failed(k, error)
                continue
            finished(k, result)
    else:
        import multiprocessing

        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_task, tasks[k]): k for k in pending}
            for future in as_completed(futures):
                if future.exception() is not None:
                    failed(futures[future], future.exception())
                else:
                    finished(futures[future], future.result())
    if failures:
        raise failures[0]
    return [(task, results[k]) for k, task in enumerate(tasks)]


# --------------------------------------------------------------------------- the suite
def run_mri_quality(preset: str = "quick", out_dir: Optional[Path] = None, *, data: Optional[Path] = None,
                    device: str = "cpu", seed: int = 0, overrides: Optional[Dict[str, Any]] = None,
                    log: Callable[[str], None] = print, journal: Optional[Journal] = None) -> Dict[str, Any]:
    """Run the panel; returns the result dict and writes one curve plot per problem to ``out_dir``.

    ``overrides`` replace preset entries (e.g. ``{"steps": 10}``, ``{"problems": ["brain 96x72 4x"]}``
    to run a subset of the panel); they are recorded in the result. With an opened ``journal``
    (``ugodit_pl.apps.benchmarks.journal``) every finished pre-training, classical set and fit is put in
    it as it lands (the encoders' weights are kept there too), and those it holds are not run again.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    settings = dict(PRESETS[preset], **(overrides or {}))
    unknown = sorted(set(settings["methods"]) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    variants = dict(settings.get("method_variants") or {})
    for name in variants:
        if name in METHODS or name in CLASSICAL:
            raise ValueError(f"variant name {name!r} is a method's name; give the variant its own name")
        variant_of(name, settings)
        variant_budget(name, settings)
    for name, args in dict(settings.get("method_args") or {}).items():
        if name not in METHODS and name not in variants or not isinstance(args, dict):
            raise ValueError(f"method_args maps a method or variant name to its keyword arguments, e.g. "
                             f"{{\"aseqdip\": {{\"lam\": 0.4}}}}; got {name!r}: {args!r} (methods: {', '.join(METHODS)})")
    entries, notes = list(panel.PANELS[settings["panel"]]), []
    if settings.get("problems"):
        entries = [e for e in entries if e["name"] in settings["problems"]]
        if not entries:
            raise ValueError(f"no panel problem named {settings['problems']}")
    methods = list(settings["methods"])
    if "deepinv_dip" in methods and not deepinv_available():
        methods.remove("deepinv_dip")
        notes.append("deepinv_dip: skipped, deepinv is not installed (pip install deepinv; it pulls torchvision)")
    workers = max(1, int(settings["workers"]))
    threads = max(1, torch.get_num_threads() // workers) if workers > 1 else torch.get_num_threads()
    root = data_root(data)
    start = time.perf_counter()
    result: Dict[str, Any] = {"settings": settings, "notes": notes, "problems": {}, "pretraining": {}}
    with tempfile.TemporaryDirectory(prefix="ugodit-mri-bench-") as scratch:
        folder, cache = Path(scratch) / "data", str(Path(scratch) / "coil_maps")
        base = {"settings": settings, "root": str(root), "folder": str(folder), "cache": cache, "seed": seed,
                "device": device, "threads": threads}
        infos = {}
        for entry in entries:  # in this process: simulate the files and estimate (cache) the maps once
            batch = panel.test_batch(entry, root, folder, cache=cache, coil_map_args=settings["coil_map_args"])
            infos[entry["name"]] = _problem_info(entry, batch)
            _check_held_out(entry["name"], batch, [*methods, *variants], settings)
            log(f"mri-quality: {entry['name']}: {infos[entry['name']]['sampled_fraction']:.3f} of k-space sampled")
        weights: Dict[Tuple[str, bool], Path] = {}
        pre_tasks = []
        for undersampling in sorted({e["undersampling"] for e in entries}):
            pairs, description = pretraining_group(undersampling, root, folder)
            for untrained in (False, True):
                wanted = "ugodit_untrained" if untrained else "ugodit"
                if wanted not in methods and wanted not in [variant_of(v, settings)[0] for v in variants]:
                    continue
                stem = f"encoder_{undersampling}{'_untrained' if untrained else ''}.pt"
                path = kept_file(journal, stem, Path(scratch))
                weights[(undersampling, untrained)] = path
                pre_tasks.append(dict(base, kind="pretrain", undersampling=undersampling, pairs=pairs,
                                      weights=str(path), writes=[str(path)],
                                      steps=1 if untrained else int(settings["pretrain_steps"]),
                                      label=f"pre-training {undersampling}{' (1 step)' if untrained else ''}",
                                      description=description))
        for task, info in _run_tasks(pre_tasks, workers, log, journal):
            key = task["undersampling"] + (" untrained" if task["steps"] == 1 else "")
            result["pretraining"][key] = dict(info, group=task["description"])
        tasks = []
        for entry in entries:
            tasks.append(dict(base, kind="classical", entry=entry, label=f"{entry['name']}: classical"))
            for name in methods + list(variants):
                if name == "deepinv_dip":
                    tasks.append(dict(base, kind="deepinv", entry=entry, label=f"{entry['name']}: deepinv_dip"))
                    continue
                method = variant_of(name, settings)[0]
                path = weights.get((entry["undersampling"], method == "ugodit_untrained"))
                tasks.append(dict(base, kind="network", entry=entry, method=name,
                                  weights=str(path) if path and method.startswith("ugodit") else None,
                                  label=f"{entry['name']}: {name}"))
        tasks.sort(key=_cost, reverse=True)  # longest first: the pool ends evenly
        result["problems"] = {entry["name"]: {"problem": infos[entry["name"]], "methods": {}} for entry in entries}
        for task, outcome in _run_tasks(tasks, workers, log, journal):
            result["problems"][task["entry"]["name"]]["methods"].update(outcome)
    for name, problem in result["problems"].items():
        problem["methods"] = _ordered(problem["methods"])
        _log_problem(name, problem, log)
        if out_dir is not None:
            _plot(name, problem, Path(out_dir) / f"mri-quality_{_slug(name)}.png", settings)
    result["summary"] = summarise(result["problems"])
    result["total_seconds"] = time.perf_counter() - start
    return result


def _check_held_out(problem: str, batch: Dict[str, Any], names: List[str], settings: Dict[str, Any]) -> None:
    """Raise, before anything is fitted, where a method's or variant's ``holdout_fraction`` leaves too few
    samples to hold out on this problem's mask (e.g. 0.3 of the four sampled lines outside the calibration
    region of an 8x mask 96 columns wide): the error names the problem and the method or variant."""
    for name in names:
        extra = variant_of(name, settings)[1]
        if extra.get("holdout_fraction"):
            kind = "variant" if name in (settings.get("method_variants") or {}) else "method"
            holdout_mask(batch["operator"].mask[0], float(extra["holdout_fraction"]), 0, 0,
                         name=f"{problem}, {kind} {name!r}", pattern=extra.get("holdout_pattern", "auto"))


def _problem_info(entry: Dict[str, Any], batch: Dict[str, Any]) -> Dict[str, Any]:
    kind, acceleration, _ = panel.UNDERSAMPLINGS[entry["undersampling"]]
    return {
        "name": entry["name"], "anatomy": entry["anatomy"], "what": panel.ANATOMIES[entry["anatomy"]][0],
        "shape": list(batch["y"].shape[-2:]), "coils": int(batch["y"].shape[1]), "mask": f"{kind} (1-D columns)",
        "acceleration": acceleration, "center_fraction": panel.center_fraction(entry),
        "sampled_fraction": float(batch["operator"].mask.float().mean()),
        "support_fraction": float(panel.support_of(batch).mean()),
    }


def _cost(task: Dict[str, Any]) -> float:
    height, width = task["entry"]["crop"] or panel.ANATOMIES[task["entry"]["anatomy"]][1]
    draws = 1.0
    if task["kind"] == "network":
        method, args, _ = variant_of(task["method"], task["settings"])
        draws = float(args.get("num_draws") or 1) if method == "self_guided_dip" else 1.0  # J passes per step
        steps, size = variant_budget(task["method"], task["settings"])
        draws *= size * steps / int(task["settings"]["steps"])
    factor = {"classical": 0.1, "deepinv": 1.5, "network": draws}
    return height * width * factor[task["kind"]]


def _ordered(methods: Dict[str, Any]) -> Dict[str, Any]:
    order = list(CLASSICAL) + ["dip", "dip_es"] + [m for m in METHODS if m != "dip"]
    return {**{k: methods[k] for k in order if k in methods}, **{k: v for k, v in methods.items() if k not in order}}


def summarise(problems: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Per undersampling and method: mean PSNR/SSIM, and the mean and worst PSNR margin against each reference."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for problem in problems.values():
        groups.setdefault(f"{problem['problem']['acceleration']:g}x", []).append(problem)
    out: Dict[str, Any] = {}
    for label, members in sorted(groups.items()):
        names = [n for n in members[0]["methods"] if all(n in p["methods"] for p in members)]
        table = {}
        for name in names:
            psnrs = [p["methods"][name]["metrics"]["psnr"] for p in members]
            row = {"mean_psnr": sum(psnrs) / len(psnrs),
                   "mean_ssim": sum(p["methods"][name]["metrics"]["ssim"] for p in members) / len(members)}
            for ref in REFERENCES:
                if all(ref in p["methods"] for p in members) and name != ref:
                    margins = [p["methods"][name]["metrics"]["psnr"] - p["methods"][ref]["metrics"]["psnr"] for p in members]
                    row[f"margin_{ref}"] = {"mean": sum(margins) / len(margins), "worst": min(margins)}
            changes = [p["methods"][name].get("budget_change") for p in members]
            if all(c is not None for c in changes):
                row["budget_change_worst"] = min(changes)
            table[name] = row
        out[label] = {"problems": [p["problem"]["name"] for p in members], "methods": table,
                      "size_change": _size_change(members)}
    return out


def _size_change(members: List[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Per pair of problems of one anatomy at two sizes (smaller first) and per method: the change of the
    PSNR margin over L1-wavelet at its automatic lambda from the smaller to the larger size (negative =
    the larger size costs)."""
    out: Dict[str, Dict[str, float]] = {}
    for small in members:
        for large in members:
            a, b = small["problem"], large["problem"]
            if a["anatomy"] != b["anatomy"] or a["shape"][0] * a["shape"][1] >= b["shape"][0] * b["shape"][1]:
                continue
            if "l1_wavelet_auto" not in small["methods"] or "l1_wavelet_auto" not in large["methods"]:
                continue
            pair = {}
            for name, entry in small["methods"].items():
                if entry["kind"] == "network" and name in large["methods"]:
                    margin = lambda p: p["methods"][name]["metrics"]["psnr"] - p["methods"]["l1_wavelet_auto"]["metrics"]["psnr"]  # noqa: E731
                    pair[name] = margin(large) - margin(small)
            out[f"{a['name']} -> {b['name']}"] = pair
    return out


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def _log_problem(name: str, problem: Dict[str, Any], log: Callable[[str], None]) -> None:
    log(f"mri-quality {name}:")
    for key, entry in problem["methods"].items():
        seconds = entry.get("seconds")
        log(f"  {key:18s} {entry['metrics']['psnr']:6.2f} dB  SSIM {entry['metrics']['ssim']:.3f}"
            + (f"  {seconds:6.1f} s" if seconds is not None else ""))


def _plot(name: str, problem: Dict[str, Any], path: Path, settings: Dict[str, Any]) -> None:
    methods = problem["methods"]
    curves = {key: entry["curve"] for key, entry in methods.items() if "curve" in entry}
    levels = {key: methods[key]["metrics"]["psnr"] for key in ("zero_filled", "sense", "l1_wavelet_auto",
                                                              "l1_wavelet_tuned", "total_variation_auto")
              if key in methods}
    plot_curves(curves, path, levels=levels,
                title=f"{name}: PSNR (RSS target) of the EMA output, U-Net {settings['network_args']['channels'][0]} wide")

