"""``ugodit benchmark volume``: whole volumes, slice after slice, and what they cost.

Volumes (real MRI magnitude slices that installed packages ship, simulated into 8-coil k-space by
``write_simulated_mri``: birdcage maps, complex noise, and a realistic phase shared by the slices of a
volume as in one real scan: the real brain's low-resolution phase of ../shared/data, drawn once per
volume, plus fine texture drawn per slice (``phase_across_slices="shared"``); each slice scaled to its
own maximum; the coil maps are estimated by ESPIRiT from each undersampled slice):

- ``epi``: nibabel's ``example4d.nii.gz``, the 24 axial echo-planar brain slices of its first frame (128 x 96);
- ``dwi``: dipy's ``S0_10slices.nii.gz``, 10 contiguous axial slices of the b = 0 image of a real
  diffusion scan (128 x 128); needs ``pip install dipy`` (the ``bench`` extra) and is skipped with a
  note without it.

For each method (aSeqDIP, UGoDIT, UGoDIT behind an untrained encoder (one pre-training step: the control
that tells transfer from architecture), Self-Guided DIP, DIP at the library's defaults) and volume, at 4x
(fastMRI random columns, centre 0.08), the slices are fitted one after another (``order``: from the first
to the last, ``"first_to_last"``, or from the centre slice outwards, ``"centre_out"``: the centre one
first, then two chains towards the ends, each slice from its neighbour nearer the centre):

- ``cold``: every slice from scratch for ``cold_steps`` (today's ``ugodit reconstruct``);
- ``warm``: the first slice as ``cold``, each next one started from its neighbour's fitted networks
  (``method.warm_start(previous.warm_state(), input=warm_input)``) for ``warm_steps``, with the method
  arguments ``warm_args`` (e.g. ``{"lr": 3e-4}``); ``warm_input="neighbour"`` also starts its input from
  the neighbour's image with the slice's own measured k-space put in;
- ``warm_stop``: the chain as ``ugodit reconstruct --warm-start --stop heldout`` runs it, every slice
  with ``holdout_fraction`` of the sampled k-space held out and ``HeldOutEarlyStopping`` (``patience``;
  at most ``cold_steps`` for the first slice, ``warm_steps`` for a warm one; ``heldout_slices="warm"``: the
  warm slices only, the chain's first slice fitted as ``cold`` fits it, on every sample); the kept reconstruction
  carries every measured sample (final projection). Then, with ``refit_steps`` > 0, a short refit on
  all the samples: a warm start from the stopped fit (its networks and kept image) for ``refit_steps``,
  with a fresh EMA or (``refit_ema="carry"``) the stopped fit's continued from its kept image; the image before the refit is scored too (``psnr_before_refit``), so that the projection alone and
  the refit are compared on the same fits. The fit runs on to its cap so that the best PSNR in
  hindsight is known, but everything reported (steps, seconds, the image, the state the next slice
  starts from) is what stopping would have given: the rule is applied as the fit goes, at the same
  checks, and its decision is recorded, not obeyed; the held-out error of every check is kept in the
  curves, so that other patiences can be judged offline.

``method_args`` are given to every network fit (e.g. ``{"mean_with": "l1_wavelet"}``: each slice's image
averaged with its compressed-sensing image, ``ugodit reconstruct --mean-with``; a warm slice then takes its
neighbour's lambda).

plus the classical reconstructions of ``mri-quality`` per slice (``CLASSICAL``): zero-filled, CG-SENSE, and
L1-wavelet and total variation each at its default lambda, at the lambda the automatic rule picks (its
lambdas, rules and held-out scores are kept per slice) and at the oracle-tuned one (each slice's PSNR at
every lambda of the grid is kept).
Reported per volume: fastMRI's volume PSNR / SSIM (the volume's maximum as data range), seconds of
fitting (cumulative over the slices), slices per hour, the steps each slice used, and for the
stopping rule the gap to the best PSNR of each slice's own fit in hindsight.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ugodit_pl.apps.benchmarks import panel
from ugodit_pl.arguments import check_choice
from ugodit_pl.apps.benchmarks.common import data_root, fit_method
from ugodit_pl.apps.benchmarks.journal import Journal, kept_file, run_unit
from ugodit_pl.apps.reconstruct import HELDOUT_SLICES
from ugodit_pl.apps.benchmarks.mri_quality import CLASSICAL, classical_results, network_method, pretrain, pretraining_group
from ugodit_pl.methods.warm import EMAS

VOLUME_METHODS = ("aseqdip", "ugodit", "ugodit_untrained", "self_guided_dip", "dip")
MODES = ("cold", "warm", "warm_stop")
ORDERS = ("first_to_last", "centre_out")

PRESETS: Dict[str, Dict[str, Any]] = {
    # seconds, for the tests: two slices of one volume, a few steps
    "tiny": {"volumes": {"epi": [11, 12]}, "crop": (32, 32), "network_args": {"channels": [4, 8, 8, 8]},
             "methods": ["aseqdip"], "cold_steps": 6, "warm_steps": 3, "patience": 2, "check_every": 1,
             "holdout_fraction": 0.3, "refit_steps": 2, "eval_every": 3, "pretrain_steps": 2, "l1_grid": [1e-3, 1e-2],
             "sense_iter": 3, "l1_iter": 3, "baselines": True, "warm_args": {}, "modes": list(MODES), "warm_input": "auto",
             "order": "first_to_last", "refit_ema": "fresh", "heldout_slices": "all", "method_args": {}},
    # for 2 CPU cores (about 35 minutes): 8 slices of each volume, aSeqDIP, UGoDIT and its untrained-encoder control
    "quick": {"volumes": {"epi": list(range(8, 16)), "dwi": list(range(1, 9))}, "crop": (96, 72),
              "network_args": {"channels": [16, 32, 64, 64]}, "methods": ["aseqdip", "ugodit", "ugodit_untrained"],
              "cold_steps": 600, "warm_steps": 200, "patience": 150, "check_every": 10, "holdout_fraction": 0.2,
              "refit_steps": 50, "eval_every": 25, "pretrain_steps": 600, "l1_grid": [3e-4, 1e-3, 3e-3, 1e-2],
              "sense_iter": None, "l1_iter": None, "baselines": True, "warm_args": {}, "modes": list(MODES), "warm_input": "auto",
             "order": "first_to_last", "refit_ema": "fresh", "heldout_slices": "all", "method_args": {}},
    # for a GPU: every slice at the native size, all four methods
    "full": {"volumes": {"epi": list(range(24)), "dwi": list(range(10))}, "crop": None,
             "network_args": {"channels": [32, 64, 128, 128]}, "methods": list(VOLUME_METHODS),
             "cold_steps": 1000, "warm_steps": 300, "patience": 150, "check_every": 10, "holdout_fraction": 0.15,
             "refit_steps": 75, "eval_every": 50, "pretrain_steps": 1000, "l1_grid": [3e-4, 1e-3, 3e-3, 1e-2],
             "sense_iter": None, "l1_iter": None, "baselines": True, "warm_args": {}, "modes": list(MODES), "warm_input": "auto",
             "order": "first_to_last", "refit_ema": "fresh", "heldout_slices": "all", "method_args": {}},
}


# --------------------------------------------------------------------------- volumes
def volume_slices(name: str) -> Tuple[np.ndarray, str]:
    """(S, H, W) magnitude slices of a real volume and where they come from."""
    if name == "epi":
        from ugodit_pl.datamodules.demo import real_mri_slices

        return real_mri_slices("example4d"), "nibabel tests/data/example4d.nii.gz, first frame (real EPI MRI)"
    if name == "dwi":
        try:
            import dipy
            import nibabel
        except ImportError:
            raise FileNotFoundError("the dwi volume is dipy's test data: pip install dipy (or ugodit-pl[bench])") from None
        path = Path(dipy.__file__).resolve().parent / "data" / "files" / "S0_10slices.nii.gz"
        data = np.asarray(nibabel.load(path).dataobj, dtype=np.float32)[..., 0]  # (128, 128, 10)
        return np.ascontiguousarray(np.moveaxis(data, -1, 0)), "dipy data/files/S0_10slices.nii.gz (real diffusion MRI, b = 0)"
    raise ValueError(f"unknown volume {name!r}; known: epi, dwi")


def volume_file(name: str, folder: Path, root: Path) -> Tuple[Path, str]:
    """The volume simulated into 8-coil k-space (a fastMRI-format file), written once into ``folder``, with
    the phase of the real brain under ``root`` (see the module)."""
    from ugodit_pl.datamodules.demo import write_simulated_mri

    slices, source = volume_slices(name)
    path = folder / f"volume_{name}_shared_phase.h5"
    if not path.is_file():
        write_simulated_mri(path, slices, num_coils=8, seed=11, source=source, acquisition="SIMULATED_FROM_REAL_MRI",
                            phase_reference=panel.real_brain_image(root), phase_across_slices="shared")
    return path, source


def slice_batch(path: Path, index: int, crop: Optional[Tuple[int, int]], cache: str, seed: int) -> Dict[str, Any]:
    """Slice ``index`` undersampled 4x (random columns), with ESPIRiT maps and its RSS target."""
    from ugodit_pl.datamodules import FastMRIDataModule

    kind, acceleration, fraction = panel.UNDERSAMPLINGS["4x"]
    dm = FastMRIDataModule(test_files=None, test_slices=[(str(path), int(index))], role="test", mask=kind,
                           acceleration=acceleration, center_fraction=fraction, mask_seed=seed, coil_maps="espirit",
                           coil_map_cache_dir=cache, target="rss", crop_size=None if crop is None else list(crop))
    dm.setup("fit", rank=0, world_size=1)
    return dm.batch


# --------------------------------------------------------------------------- one slice
class _Watch:
    """A callback that records each check of a fit: PSNR of the reconstruction, seconds, and (for a held-out
    fit) the stopping rule's decision, applied as it would have been without stopping the fit."""

    def __init__(self, batch: Dict[str, Any], every: int, stopper: Any = None) -> None:
        self.batch, self.every, self.stopper = batch, every, stopper
        self.steps: List[int] = []
        self.psnr: List[float] = []
        self.seconds: List[float] = []
        self.holdout: List[Tuple[int, float]] = []  # (step, held-out error) at every check, after a stop too
        self.stop_step: Optional[int] = None
        self.kept: Optional[torch.Tensor] = None
        self.kept_state: Optional[Dict[str, Any]] = None
        self.start = 0.0
        self.spent = 0.0  # seconds of our own evaluations, left out of the fit's time
        self.stop_seconds = 0.0  # the fit's seconds up to the stopping rule's decision

    def callback(self):
        import pytorch_lightning as pl

        watch = self

        class _Callback(pl.Callback):
            def on_train_start(self, trainer, pl_module) -> None:
                watch.start = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                watch.record(trainer, pl_module)

        return _Callback()

    def record(self, trainer: Any, method: Any) -> None:
        step = int(trainer.global_step)
        begin = time.perf_counter()
        stopper = self.stopper
        if stopper is not None and (step % stopper.check_every == 0 or step == trainer.max_steps):
            error = method.holdout_error().cpu()
            self.holdout.append((step, round(float(error[0]), 6)))
            if self.stop_step is None and stopper.check(error, method.network_reconstruction, [0], step):
                self.stop_step = step
                self.kept = stopper.kept_output([0])
                self.kept_state = method.warm_state(0)
                self.stop_seconds = begin - self.start - self.spent
        if step % self.every == 0 or step == trainer.max_steps:
            self.steps.append(step)
            self.seconds.append(round(begin - self.start - self.spent, 3))
            self.psnr.append(round(_psnr(method.reconstruction, self.batch), 4))
        self.spent += time.perf_counter() - begin


def _magnitude(recon: torch.Tensor, batch: Dict[str, Any]) -> torch.Tensor:
    """(1, 1, H, W) support-masked magnitude of a (1, 2, H, W) reconstruction (as the panel scores it)."""
    from ugodit_pl.complex import magnitude

    return magnitude(recon.detach().cpu().float()) * panel.support_of(batch).cpu()


def _psnr(recon: torch.Tensor, batch: Dict[str, Any]) -> float:
    from ugodit_pl.metrics import psnr

    return float(psnr(_magnitude(recon, batch), batch["target"].cpu().float()).mean())


def fit_slice(method_name: str, batch: Dict[str, Any], settings: Dict[str, Any], weights: Optional[Path],
              seed: int, device: str, *, steps: int, warm: Optional[Dict[str, Any]] = None,
              stop: bool = False) -> Dict[str, Any]:
    """One slice's fit: its reconstruction, steps, seconds, curve, and the state the next slice starts from."""
    from ugodit_pl.callbacks import HeldOutEarlyStopping

    extra = dict(settings["method_args"])
    if stop:
        extra["holdout_fraction"] = float(settings["holdout_fraction"])
    if warm is not None:
        extra.update(settings["warm_args"])  # e.g. another learning rate for warm-started fits
    method = network_method(method_name, settings, weights, seed, extra)
    if warm is not None:
        method.warm_start(warm, input=settings["warm_input"])
    stopper = HeldOutEarlyStopping(patience=int(settings["patience"]), check_every=int(settings["check_every"])) \
        if stop else None
    watch = _Watch(batch, int(settings["eval_every"]), stopper)
    seconds = fit_method(method, batch, int(steps), callbacks=[watch.callback()], device=device)
    best = int(np.argmax(watch.psnr))
    entry = {"curve": {"steps": watch.steps, "psnr": watch.psnr, "seconds": watch.seconds},
             "best_psnr": watch.psnr[best], "best_step": watch.steps[best]}
    if stop:
        entry["curve"]["holdout_error"] = watch.holdout  # to judge other patiences offline
        stopped = watch.stop_step is not None
        kept = watch.kept if stopped else stopper.kept_output([0])
        state = watch.kept_state if stopped else method.warm_state(0)
        entry.update(steps=watch.stop_step if stopped else int(steps),
                     seconds=watch.stop_seconds if stopped else seconds - watch.spent,
                     kept_step=stopper.best_step.get(0), stopped=stopped,
                     image=_magnitude(method.with_mean(kept, torch.tensor([0])), batch),
                     state={**state, "reconstruction": kept[0].detach().cpu()})  # as the callback leaves it
    else:
        entry.update(steps=int(steps), seconds=seconds - watch.spent, image=_magnitude(method.reconstruction, batch),
                     state=method.warm_state(0))
    entry["psnr"] = _psnr_of_image(entry["image"], batch)
    if stop and int(settings["refit_steps"]) > 0:
        entry = _refit(entry, method_name, batch, settings, weights, seed, device, warm=warm is not None)
    return entry


def _refit(entry: Dict[str, Any], method_name: str, batch: Dict[str, Any], settings: Dict[str, Any],
           weights: Optional[Path], seed: int, device: str, *, warm: bool) -> Dict[str, Any]:
    """A stopped fit continued on every measured sample for ``refit_steps``, from its networks and image."""
    extra = {**settings["method_args"], **(settings["warm_args"] if warm else {})}
    method = network_method(method_name, settings, weights, seed, extra)
    method.warm_start(entry["state"], input="auto", ema=settings["refit_ema"])
    steps = int(settings["refit_steps"])
    seconds = fit_method(method, batch, steps, device=device)
    image = _magnitude(method.reconstruction, batch)
    return {**entry, "psnr_before_refit": entry["psnr"], "image_before_refit": entry["image"], "steps": entry["steps"] + steps,
            "seconds": entry["seconds"] + seconds, "image": image, "state": method.warm_state(0),
            "psnr": _psnr_of_image(image, batch)}


def _psnr_of_image(image: torch.Tensor, batch: Dict[str, Any]) -> float:
    from ugodit_pl.metrics import psnr

    return float(psnr(image, batch["target"].cpu().float()).mean())


# --------------------------------------------------------------------------- one volume
def volume_scores(images: List[torch.Tensor], targets: List[torch.Tensor]) -> Dict[str, float]:
    """fastMRI's volume PSNR / SSIM / NMSE (the volume's maximum as data range) of magnitude slices."""
    from ugodit_pl.metrics import volume_metrics

    values = volume_metrics(torch.cat(images), torch.cat([t.cpu().float() for t in targets]))
    return {k: round(float(v), 4) for k, v in values.items()}


def chain_order(count: int, order: str) -> List[Tuple[int, Optional[int]]]:
    """(slice position, the position it starts from, None: from scratch) in fitting order.

    >>> chain_order(5, "centre_out")
    [(2, None), (3, 2), (4, 3), (1, 2), (0, 1)]
    """
    if check_choice("order", order, ORDERS) == "first_to_last":
        return [(k, k - 1 if k else None) for k in range(count)]
    centre = count // 2
    return ([(centre, None)] + [(k, k - 1) for k in range(centre + 1, count)]
            + [(k, k + 1) for k in range(centre - 1, -1, -1)])


def run_chain(method_name: str, mode: str, batches: List[Dict[str, Any]], settings: Dict[str, Any],
              weights: Optional[Path], seed: int, device: str, cold: Optional[List[Dict[str, Any]]] = None,
              log: Any = print) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The slices of a volume in ``settings["order"]``, for one method and mode: (the volume's summary, each
    slice's fit, in slice order); ``cold`` (the cold run's fits) gives the warm chain its first slice."""
    order = chain_order(len(batches), "first_to_last" if mode == "cold" else settings["order"])
    done: Dict[int, Dict[str, Any]] = {}
    for k, source in order:
        batch, state = batches[k], None if source is None else done[source]["state"]
        if mode == "cold":
            fit = fit_slice(method_name, batch, settings, weights, seed, device, steps=settings["cold_steps"])
        elif mode == "warm":
            fit = cold[k] if source is None else fit_slice(method_name, batch, settings, weights, seed, device,
                                                           steps=settings["warm_steps"], warm=state)
        elif source is None and settings["heldout_slices"] == "warm":  # the chain's first slice as cold fits it
            fit = {**cold[k], "stopped": False, "ruled": False}
        else:
            fit = fit_slice(method_name, batch, settings, weights, seed, device, warm=state, stop=True,
                            steps=settings["cold_steps"] if source is None else settings["warm_steps"])
        done[k] = fit
        log(f"    {method_name} {mode} slice {k}: {fit['psnr']:.2f} dB, {fit['steps']} steps, {fit['seconds']:.1f} s")
    fits = [done[k] for k in range(len(batches))]
    fitted = [k for k, _ in order]
    scores = volume_scores([f["image"] for f in fits], [b["target"] for b in batches])
    seconds = float(sum(f["seconds"] for f in fits))
    out = {"volume": scores, "seconds": round(seconds, 2), "slices_per_hour": round(3600.0 * len(fits) / seconds, 1),
           "steps": [f["steps"] for f in fits], "slice_psnr": [round(f["psnr"], 4) for f in fits],
           "best_psnr": [f["best_psnr"] for f in fits], "fit_order": fitted,
           "cumulative_seconds": list(np.cumsum([done[k]["seconds"] for k in fitted]).round(2)),  # in fitting order
           "curves": [f["curve"] for f in fits]}
    if mode == "warm_stop":
        ruled = [f.get("ruled", True) for f in fits]  # slices the rule stopped (not a first slice fitted as cold)
        gaps = [round(f["best_psnr"] - f.get("psnr_before_refit", f["psnr"]), 4) if r else None
                for f, r in zip(fits, ruled)]  # the rule's own
        judged = [g for g in gaps if g is not None]
        out.update(gap_to_best=gaps, stopped=[f["stopped"] for f in fits],
                   within_0_3_db=round(sum(g <= 0.3 for g in judged) / len(judged), 4) if judged else None)
        if any("psnr_before_refit" in f for f in fits):
            before = [f.get("image_before_refit", f["image"]) for f in fits]
            out.update(volume_before_refit=volume_scores(before, [b["target"] for b in batches]),
                       slice_psnr_before_refit=[round(f.get("psnr_before_refit", f["psnr"]), 4) for f in fits])
    return out, fits


def run_volume_suite(preset: str = "quick", out_dir: Optional[Path] = None, *, data: Optional[str] = None,
                     device: str = "cpu", seed: int = 0, overrides: Optional[Dict[str, Any]] = None,
                     log: Any = print, journal: Optional[Journal] = None) -> Dict[str, Any]:
    """Run the suite (see the module docstring) and return its results; plots go to ``out_dir``.

    With an opened ``journal`` (``ugodit_pl.apps.benchmarks.journal``) each pre-training (and its weights),
    each volume's baselines and each method's chains on a volume are put in it as they finish, and those
    it holds are not run again."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
    settings = {**PRESETS[preset], **dict(overrides or {})}
    if "warm_stop" in settings["modes"] or "warm" in settings["modes"]:
        check = [m for m in settings["modes"] if m not in MODES]
        if check:
            raise ValueError(f"unknown mode(s) {check}; the volume suite runs {MODES} (cold always)")
    unknown = sorted(set(settings) - set(PRESETS[preset]))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; the volume suite takes {sorted(PRESETS[preset])}")
    methods = list(settings["methods"])
    bad = [m for m in methods if m not in VOLUME_METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; the volume suite runs {VOLUME_METHODS}")
    check_choice("order", settings["order"], ORDERS)
    check_choice("refit_ema", settings["refit_ema"], EMAS)
    check_choice("heldout_slices", settings["heldout_slices"], HELDOUT_SLICES)
    root = data_root(data)
    results: Dict[str, Any] = {"settings": {k: v for k, v in settings.items()}, "volumes": {}, "notes": []}
    with tempfile.TemporaryDirectory(prefix="ugodit_volume_") as scratch:
        folder, cache = Path(scratch), str(Path(scratch) / "coil_maps")
        weights: Dict[str, Path] = {}  # UGoDIT's transferable weights, and the control's untrained ones
        encoders = [(name, key, steps) for name, key, steps in (
            ("ugodit", "pretraining", int(settings["pretrain_steps"])),
            ("ugodit_untrained", "pretraining_untrained", 1)) if name in methods]
        if encoders:
            pairs, about = pretraining_group("4x", root, folder)
            crop = settings["crop"] or (128, 96)
        for method_name, key, steps in encoders:
            weights[method_name] = kept_file(journal, f"{method_name}_weights.pt", folder)
            info = run_unit(journal, f"pre-training {method_name}", lambda: pretrain(
                "4x", pairs, {"pretrain_crop": crop, "network_args": settings["network_args"], "coil_map_args": {},
                              "pretrain_args": {}}, weights[method_name], steps, cache, seed, device),
                writes=[weights[method_name]])
            results[key] = {**info, "group": about}
            log(f"  pre-trained {method_name} on {about}, {steps} step(s) ({info['seconds']:.0f} s)")
        for name, indices in settings["volumes"].items():
            try:
                path, source = volume_file(name, folder, root)
            except FileNotFoundError as error:
                results["notes"].append(f"volume {name} skipped: {error}")
                log(f"  volume {name} skipped: {error}")
                continue
            crop = settings["crop"]
            batches = [slice_batch(path, i, crop, cache, seed) for i in indices]
            shape = list(batches[0]["target"].shape[-2:])
            entry: Dict[str, Any] = {"source": source, "slices": list(indices), "shape": shape, "methods": {}}
            if settings["baselines"]:  # off for the parallel parts of a GPU run (one part computes them)
                entry["methods"].update(run_unit(journal, f"{name}: baselines", lambda: _baselines(batches, settings)))
                log(f"  {name} ({len(indices)} slices {shape[0]}x{shape[1]}): L1-wavelet "
                    f"{entry['methods']['l1_wavelet']['volume']['psnr']:.2f} dB")
            for method_name in methods:
                entry["methods"][method_name] = run_unit(journal, f"{name}: {method_name}", lambda: _chains(
                    method_name, batches, settings, weights.get(method_name), seed, device, log))
            entry["target_note"] = "RSS of the fully sampled simulated k-space, support-masked magnitudes"
            results["volumes"][name] = entry
    results["summary"] = summarise(results)
    if out_dir is not None:
        plot(results, Path(out_dir))
    return results


def _baselines(batches: List[Dict[str, Any]], settings: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Each reconstruction of ``CLASSICAL`` over the volume's slices: its volume scores and seconds; for the
    automatic ones each slice's lambda, rule and scores (held-out errors or discrepancy ratios, per lambda), and
    for the oracle ones each slice's PSNR at every lambda of the grid, so that another way to choose lambda can
    be scored from the file."""
    classical = [classical_results(b, panel.support_of(b), settings, keep_images=True) for b in batches]
    out = {key: {"volume": _classical_volume(classical, key, batches),
                 "seconds": round(sum(c[key].get("seconds", 0.0) for c in classical), 2)} for key in CLASSICAL}
    for key in ("l1_wavelet_auto", "total_variation_auto"):
        out[key]["lamdas"] = [c[key]["lamda"] for c in classical]
        out[key]["rules"] = [c[key]["rule"] for c in classical]
        out[key]["scores"] = [c[key]["scores"] for c in classical]
    for key in ("l1_wavelet_tuned", "total_variation_tuned"):
        out[key]["slice_grids"] = [c[key]["grid"] for c in classical]
    return out


def _chains(method_name: str, batches: List[Dict[str, Any]], settings: Dict[str, Any], weights: Optional[Path],
            seed: int, device: str, log: Any) -> Dict[str, Any]:
    """The cold chain of one method on a volume, and the warm ones of ``settings["modes"]`` after it."""
    cold_summary, cold_fits = run_chain(method_name, "cold", batches, settings, weights, seed, device, log=log)
    runs = {"cold": cold_summary}
    if "warm" in settings["modes"]:
        runs["warm"], _ = run_chain(method_name, "warm", batches, settings, weights, seed, device, cold_fits, log)
    if "warm_stop" in settings["modes"]:
        runs["warm_stop"], _ = run_chain(method_name, "warm_stop", batches, settings, weights, seed, device,
                                         cold_fits, log)
    return runs


def _classical_volume(classical: List[Dict[str, Any]], key: str, batches: List[Dict[str, Any]]) -> Dict[str, float]:
    """Volume metrics of a classical method from its per-slice images (kept by classical_results)."""
    images = [c[key]["image"] for c in classical]
    return volume_scores(images, [b["target"] for b in batches])


def summarise(results: Dict[str, Any]) -> Dict[str, Any]:
    """Per method and volume: the volume PSNR of each mode, the time of warm (stopped) against cold, and
    whether the targets hold (within 0.1 dB of cold in at most half its time; the rule within 0.3 dB of
    the best in hindsight on 90 % of slices, never below zero-filled)."""
    out: Dict[str, Any] = {}
    for name, volume in results["volumes"].items():
        zero = volume["methods"].get("zero_filled", {}).get("volume", {}).get("psnr")
        for method, runs in volume["methods"].items():
            if "cold" not in runs:
                continue
            cold = runs["cold"]
            row = {"cold_psnr": cold["volume"]["psnr"], "cold_seconds": cold["seconds"]}
            for mode in ("warm", "warm_stop"):
                if mode not in runs:
                    continue
                run = runs[mode]
                row[f"{mode}_psnr"] = run["volume"]["psnr"]
                row[f"{mode}_seconds"] = run["seconds"]
                row[f"{mode}_time_ratio"] = round(run["seconds"] / cold["seconds"], 3)
                row[f"{mode}_psnr_change"] = round(run["volume"]["psnr"] - cold["volume"]["psnr"], 3)
            if "volume_before_refit" in runs.get("warm_stop", {}):
                row["warm_stop_psnr_change_before_refit"] = round(runs["warm_stop"]["volume_before_refit"]["psnr"]
                                                                  - cold["volume"]["psnr"], 3)
            if "warm_stop" in runs:
                row["stop_within_0_3_db"] = runs["warm_stop"]["within_0_3_db"]
                row["stop_never_below_zero_filled"] = (None if zero is None
                                                       else bool(runs["warm_stop"]["volume"]["psnr"] > zero))
                row["target_met"] = bool(row["warm_stop_psnr_change"] >= -0.1 and row["warm_stop_time_ratio"] <= 0.5)
            out[f"{method} {name}"] = row
    return out


def plot(results: Dict[str, Any], out_dir: Path) -> None:
    """``volume_<name>.png``: volume PSNR against cumulative fitting seconds, per method and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, volume in results["volumes"].items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        styles = {"cold": "-", "warm": "--", "warm_stop": ":"}
        for method, runs in volume["methods"].items():
            if "cold" not in runs:
                ax.axhline(runs["volume"]["psnr"], color="grey", lw=0.8, ls="-." if "l1" in method else ":")
                ax.text(0, runs["volume"]["psnr"], f" {method}", fontsize=7, va="bottom", color="grey")
                continue
            for mode, run in runs.items():
                seconds = [0.0] + list(run["cumulative_seconds"])
                partial = _running_volume_psnr(run)
                ax.plot(seconds[1:], partial, styles[mode], marker="o", ms=3, label=f"{method} {mode}")
        ax.set_xlabel("cumulative fitting seconds")
        ax.set_ylabel("PSNR of the slices done so far (dB, mean)")
        ax.set_title(f"volume {name}: {len(volume['slices'])} slices {volume['shape'][0]}x{volume['shape'][1]}, 4x")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / f"volume_{name}.png", dpi=110)
        plt.close(fig)


def _running_volume_psnr(run: Dict[str, Any]) -> List[float]:
    """The mean PSNR of the slices fitted so far, in fitting order."""
    values = [run["slice_psnr"][k] for k in run.get("fit_order", range(len(run["slice_psnr"])))]
    return [float(np.mean(values[: k + 1])) for k in range(len(values))]
