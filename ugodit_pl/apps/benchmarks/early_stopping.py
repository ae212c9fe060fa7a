"""How good are the stopping rules' choices? The PSNR of the kept output against the best PSNR of a long fixed run.

Three fits of the same DIP from the same seed on the same measurement:

1. with :class:`~ugodit_pl.callbacks.WMVEarlyStopping` (no ground truth): it stops at some step
   and keeps one output; its PSNR is measured afterwards;
2. a fixed run of ``max_steps`` steps recording the PSNR of every ``eval_every``-th output: the best
   PSNR over the run is what an oracle (who knew the ground truth) would stop at (of the output for
   ES-WMV, which keeps outputs; of the reconstruction, the EMA, for the held-out rule, which keeps it);
3. with ``holdout_fraction`` of the samples held out (k-space lines for MRI, pixels for denoising) and
   :class:`~ugodit_pl.callbacks.HeldOutEarlyStopping` (``holdout_patience``, no ground truth): the kept
   output (MRI: with every measured sample put back), then ``refit_steps`` more on every sample
   from the stopped fit (a warm start), both scored.

Tasks, both on real data from ``shared/data`` (see its PROVENANCE.md):

- ``"mri"``: the fully sampled 8-coil brain slice ``mri/espirit_brain_full.h5``, its k-space cropped
  around the centre to ``mri_crop`` (a low-resolution image of the whole field of view, so the fit
  is fast), retrospectively undersampled by a 1-D random column mask (``acceleration``,
  8% centre), ESPIRiT maps estimated from the undersampled data; DIP with a U-Net. The outputs are
  scored inside the maps' support (zero outside, where the forward model does not see them). PSNR/SSIM in
  the fastMRI convention against the RSS of the fully sampled (cropped) k-space, and the PSNR
  against |S^H F^H k_full| with the same estimated maps, data range its maximum (the UGoDIT
  code's target: max-normalised, data range 1);
- ``"denoise"``: a ``image_size`` crop of ``ffhq/00002.png`` with Gaussian noise ``noise_sigma``
  (images in [0, 1]); DIP with the skip network (the ES-WMV paper's main setting).

Run it by hand (it is not a test)::

    python -c "from ugodit_pl.apps.benchmarks.early_stopping import early_stopping_benchmark as b; print(b('mri'))"

>>> from ugodit_pl.apps.benchmarks.early_stopping import early_stopping_benchmark  # doctest: +SKIP
>>> early_stopping_benchmark("denoise", max_steps=3000, patience=500)        # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from ugodit_pl.apps.runtime import quiet_lightning
from ugodit_pl.callbacks import HeldOutEarlyStopping, WMVEarlyStopping
from ugodit_pl.complex import ifft2c
from ugodit_pl.methods import DIP
from ugodit_pl.metrics import psnr, reconstruction_metrics

__all__ = ["early_stopping_benchmark", "mri_problem", "denoising_problem"]

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


class _Repeat(IterableDataset):
    def __init__(self, batch: Dict[str, Any], times: int) -> None:
        self.batch, self.times = batch, times

    def __iter__(self):
        for _ in range(self.times):
            yield self.batch


class _Trace(pl.Callback):
    """PSNR (and SSIM) of the current output every ``every`` steps against the batch's targets, and the PSNR
    of the reconstruction (the EMA, for MRI with the measured samples put back: what the held-out rule keeps)."""

    def __init__(self, every: int, targets: Dict[str, torch.Tensor], support: Optional[torch.Tensor]) -> None:
        self.every, self.targets, self.support = every, targets, support
        self.psnr: Dict[str, Dict[int, float]] = {name: {} for name in targets}
        self.ssim: Dict[int, float] = {}
        self.reconstruction_psnr: Dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every:
            return
        values = _scores(pl_module.current_output, self.targets, self.support)
        for name in self.targets:
            self.psnr[name][step] = values[f"psnr_{name}"]
        self.ssim[step] = values["ssim"]
        main = next(iter(self.targets))
        self.reconstruction_psnr[step] = _scores(pl_module.reconstruction, self.targets, self.support)[f"psnr_{main}"]


def _scores(output: torch.Tensor, targets: Dict[str, torch.Tensor], support: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """PSNR against every target, SSIM against the first (the main one); the output is first
    multiplied by ``support`` (MRI: where the coil maps are non-zero) when given."""
    if support is not None:
        output = output * support.to(output.device)
    out: Dict[str, float] = {}
    for k, (name, target) in enumerate(targets.items()):
        target = target.to(output.device)
        if k == 0:
            values = reconstruction_metrics(output.float(), target)
            out[f"psnr_{name}"] = float(values["psnr"].mean())
            out["ssim"] = float(values["ssim"].mean())
        else:
            mag = output.float().pow(2).sum(dim=1, keepdim=True).sqrt() if output.shape[1] == 2 else output.float()
            out[f"psnr_{name}"] = float(psnr(mag, target).mean())   # data range: the target's max
    return out


def mri_problem(
    data_root: Union[str, Path] = DEFAULT_DATA,
    crop: Sequence[int] = (96, 72),
    acceleration: float = 4.0,
    seed: int = 0,
) -> Dict[str, Any]:
    """The brain slice as a batch (docs/ARCHITECTURE.md layout) plus its two targets."""
    import h5py

    from ugodit_pl.operators import MultiCoilMRI, estimate_coil_maps, make_mask

    path = Path(data_root) / "mri" / "espirit_brain_full.h5"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the benchmark reads the real brain slice from shared/data")
    with h5py.File(path, "r") as handle:
        kspace = torch.from_numpy(handle["kspace"][0]).to(torch.complex64)        # (coils, 230, 180)
    height, width = kspace.shape[-2:]
    h, w = int(crop[0]), int(crop[1])
    top, left = height // 2 - h // 2, width // 2 - w // 2
    kspace = kspace[:, top : top + h, left : left + w]                            # centre stays at (h//2, w//2)
    mask = make_mask("random", (h, w), acceleration=acceleration, center_fraction=0.08, seed=seed)
    under = kspace * mask.to(kspace.dtype)
    maps = estimate_coil_maps(under, mask, cache_dir=False)
    coil_images = ifft2c(kspace)
    rss = coil_images.abs().pow(2).sum(dim=0).sqrt()
    combined = (maps.conj() * coil_images).sum(dim=0).abs()
    operator = MultiCoilMRI(mask, maps[None])
    # The SENSE model sees the image only where the maps are non-zero (ESPIRiT zeroes them outside
    # the object, ``crop``); outside, the network output is unconstrained, so it is scored as 0.
    support = (maps.abs().pow(2).sum(dim=0) > 0).float()[None, None]
    batch = {
        "y": under[None],
        "operator": operator,
        "index": torch.tensor([0]),
        "target": rss[None, None].float(),
        "name": ["espirit_brain_full.h5/slice_000"],
    }
    targets = {"rss": batch["target"], "coil_combined": combined[None, None].float()}
    return {"batch": batch, "targets": targets, "shape": (h, w), "mask_fraction": float(mask.float().mean()),
            "support": support}


def denoising_problem(
    data_root: Union[str, Path] = DEFAULT_DATA, size: int = 64, sigma: float = 25.0 / 255.0, seed: int = 0
) -> Dict[str, Any]:
    """A centre ``size`` crop of ffhq/00002.png in [0, 1] with Gaussian noise, as a batch."""
    from PIL import Image

    from ugodit_pl.operators import GaussianNoise, Inpainting

    path = Path(data_root) / "ffhq" / "00002.png"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the benchmark reads the FFHQ image from shared/data")
    image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    top = (image.shape[0] - size) // 2
    left = (image.shape[1] - size) // 2
    clean = torch.from_numpy(image[top : top + size, left : left + size]).permute(2, 0, 1)[None].contiguous()
    identity = Inpainting(torch.ones(size, size))
    noisy = GaussianNoise(sigma, seed=seed)(identity(clean))
    batch = {"y": noisy, "operator": identity, "index": torch.tensor([0]), "target": clean, "name": ["00002"]}
    return {"batch": batch, "targets": {"clean": clean}, "shape": (size, size), "noise_sigma": sigma, "support": None}


def _fit(method: DIP, batch: Dict[str, Any], steps: int, callbacks: list, device: str) -> float:
    with quiet_lightning():
        trainer = pl.Trainer(
            max_steps=steps, accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
        )
        start = time.perf_counter()
        trainer.fit(method, DataLoader(_Repeat(batch, steps + 1), batch_size=None))
        return time.perf_counter() - start


def early_stopping_benchmark(
    task: str = "mri",
    *,
    max_steps: int = 3000,
    window: int = 100,
    patience: int = 500,
    check_every: int = 1,
    keep: str = "latest",
    eval_every: int = 5,
    lr: Optional[float] = None,
    network_args: Optional[Dict[str, Any]] = None,
    input_perturbation: Optional[float] = None,
    holdout_fraction: float = 0.2,
    holdout_patience: Optional[int] = None,
    holdout_check_every: int = 10,
    refit_steps: int = 100,
    mri_crop: Sequence[int] = (96, 72),
    acceleration: float = 4.0,
    image_size: int = 64,
    noise_sigma: float = 25.0 / 255.0,
    seed: int = 0,
    device: str = "cpu",
    data_root: Union[str, Path] = DEFAULT_DATA,
) -> Dict[str, Any]:
    """Run the three fits (and the held-out rule's refit) and return the figures (a flat dict, JSON-serialisable).

    Args:
        task: ``"mri"`` or ``"denoise"`` (see the module docstring).
        max_steps: length of the fixed run (and the cap of the early-stopped one).
        window, patience, check_every, keep: the ``WMVEarlyStopping`` settings.
        eval_every: the fixed run's PSNR is recorded every this many steps.
        lr, network_args: DIP settings; defaults: MRI U-Net channels (16, 32, 64, 64) with lr 1e-3,
            denoising skip network with 64 channels per scale and lr 0.01.
        input_perturbation: DIP's sigma_p (None: the method's default, 1/30).
        holdout_fraction, holdout_patience, holdout_check_every: the held-out rule's fit (patience None:
            ``patience``); refit_steps: its refit on every sample.
        mri_crop, acceleration: MRI k-space crop (H, W) and undersampling factor.
        image_size, noise_sigma: denoising crop size and noise std (images in [0, 1]).
        seed: seed of the mask/noise and of the method.
        device: ``"cpu"`` or ``"cuda"``.

    Returns keys: ``es_stop_step`` (where ES stopped; None if it never did), ``es_kept_step``,
    ``es_psnr`` / ``es_ssim`` (of the kept output), ``best_psnr`` / ``best_step`` (best over the
    fixed run), ``final_psnr`` (last output of the fixed run), ``gap_db`` = best - ES,
    ``steps_saved`` = max_steps - es_stop_step, ``psnr_near_kept_step_in_fixed_run`` (at the evaluated
    step ``fixed_run_step_near_kept`` nearest to the kept one: the two runs follow the same path when
    it is close to ``es_psnr``), extra PSNRs per target, wall times, the settings and ``curve``
    (the fixed run's PSNR-vs-step curve of the main target, ``{"steps": [...], "psnr": [...]}``); for the
    held-out rule ``holdout_stop_step``, ``holdout_kept_step``, ``holdout_psnr``, ``holdout_gap_db``,
    ``holdout_steps_saved``, ``refit_psnr``, ``refit_gap_db`` (both gaps against ``best_reconstruction_psnr``,
    the best of the fixed run's ``reconstruction_curve``) and ``holdout_errors`` ([step, error], each check).
    """
    if task == "mri":
        problem = mri_problem(data_root, mri_crop, acceleration, seed)
        network, net_args = "unet", dict(network_args or {"channels": [16, 32, 64, 64]})
        lr = 1e-3 if lr is None else lr
        method_args: Dict[str, Any] = {}
    elif task == "denoise":
        problem = denoising_problem(data_root, image_size, noise_sigma, seed)
        network = "skip"
        net_args = dict(network_args or {"in_channels": 32, "out_channels": 3, "channels_down": [64] * 5,
                                          "channels_up": [64] * 5})
        lr = 0.01 if lr is None else lr
        method_args = {"input_channels": net_args.get("in_channels", 32)}
    else:
        raise ValueError(f"task must be 'mri' or 'denoise', got {task!r}")
    batch, targets, support = problem["batch"], problem["targets"], problem["support"]
    main = next(iter(targets))

    if input_perturbation is not None:
        method_args["input_perturbation"] = float(input_perturbation)

    def make(**extra: Any) -> DIP:
        return DIP(num_measurements=1, network=network, network_args=net_args, lr=lr, seed=seed, **method_args, **extra)

    es = WMVEarlyStopping(window=window, patience=patience, check_every=check_every, keep=keep)
    es_method = make()
    es_wall = _fit(es_method, batch, max_steps, [es], device)
    kept = es.best_outputs.get(0)
    es_scores = _scores(kept[None], targets, support) if kept is not None else {}

    held = _held_out_fit(make, batch, targets, support, max_steps, holdout_fraction,
                         patience if holdout_patience is None else holdout_patience, holdout_check_every,
                         refit_steps, device)

    trace = _Trace(eval_every, targets, support)
    fixed_method = make()
    fixed_wall = _fit(fixed_method, batch, max_steps, [trace], device)
    curve, recon_curve = trace.psnr[main], trace.reconstruction_psnr
    best_step, best_recon_step = max(curve, key=curve.get), max(recon_curve, key=recon_curve.get)
    kept_step = es.best_step.get(0)
    near = min(curve, key=lambda step: abs(step - kept_step)) if kept_step is not None else None
    result: Dict[str, Any] = {
        "task": task,
        "shape": list(problem["shape"]),
        "max_steps": max_steps,
        "window": window,
        "patience": patience,
        "check_every": check_every,
        "keep": keep,
        "lr": lr,
        "input_perturbation": method_args.get("input_perturbation", "default"),
        "network": network,
        "network_args": net_args,
        "seed": seed,
        "device": device,
        "target": main,
        "es_stop_step": es.stopped_step,
        "es_kept_step": kept_step,
        "es_psnr": es_scores.get(f"psnr_{main}"),
        "es_ssim": es_scores.get("ssim"),
        "best_psnr": curve[best_step],
        "best_step": best_step,
        "best_ssim": trace.ssim[best_step],
        "final_psnr": curve[max(curve)],
        "final_ema_psnr": _scores(fixed_method.ema_output, targets, support)[f"psnr_{main}"],
        "fixed_run_step_near_kept": near,
        "psnr_near_kept_step_in_fixed_run": curve[near] if near is not None else None,
        "gap_db": (curve[best_step] - es_scores[f"psnr_{main}"]) if es_scores else None,
        "steps_saved": (max_steps - es.stopped_step) if es.stopped_step is not None else 0,
        "es_wall_s": es_wall,
        "fixed_wall_s": fixed_wall,
        "eval_every": eval_every,
        "curve": {"steps": sorted(curve), "psnr": [round(curve[k], 4) for k in sorted(curve)]},
        **held,
        "best_reconstruction_psnr": recon_curve[best_recon_step],
        "best_reconstruction_step": best_recon_step,
        "holdout_gap_db": recon_curve[best_recon_step] - held["holdout_psnr"],
        "refit_gap_db": recon_curve[best_recon_step] - held["refit_psnr"],
        "reconstruction_curve": {"steps": sorted(recon_curve), "psnr": [round(recon_curve[k], 4) for k in sorted(recon_curve)]},
    }
    for name in list(targets)[1:]:
        other = trace.psnr[name]
        other_best = max(other, key=other.get)
        result[f"es_psnr_{name}"] = es_scores.get(f"psnr_{name}")
        result[f"best_psnr_{name}"] = other[other_best]
        result[f"best_step_{name}"] = other_best
        result[f"final_psnr_{name}"] = other[max(other)]
    if task == "mri":
        result["sampled_fraction"] = problem["mask_fraction"]
    else:
        result["noise_sigma"] = problem["noise_sigma"]
    return result


def _held_out_fit(make: Any, batch: Dict[str, Any], targets: Dict[str, torch.Tensor], support: Optional[torch.Tensor],
                  max_steps: int, fraction: float, patience: int, check_every: int, refit_steps: int,
                  device: str) -> Dict[str, Any]:
    """The held-out rule's fit and its refit on every sample (see the module), as result entries."""
    main = next(iter(targets))
    stop = HeldOutEarlyStopping(patience=patience, check_every=check_every)
    method = make(holdout_fraction=fraction)
    wall = _fit(method, batch, max_steps, [stop], device)
    kept = _scores(stop.kept_output([0]), targets, support)
    refit = make().warm_start(method.warm_state(0))
    refit_wall = _fit(refit, batch, refit_steps, [], device) if refit_steps else 0.0
    refitted = _scores(refit.reconstruction, targets, support) if refit_steps else kept
    stopped = stop.stopped_step
    return {"holdout_fraction": fraction, "holdout_patience": patience, "holdout_stop_step": stopped,
            "holdout_kept_step": stop.best_step.get(0), "holdout_psnr": kept[f"psnr_{main}"],
            "holdout_steps_saved": (max_steps - stopped) if stopped is not None else 0, "refit_steps": refit_steps,
            "refit_psnr": refitted[f"psnr_{main}"], "holdout_wall_s": wall, "refit_wall_s": refit_wall,
            "holdout_errors": [[step, round(error, 6)] for step, error in stop.history.get(0, [])]}


# ============================================================================ the ``early-stopping`` suite
#: Suite presets, per task the keyword arguments of :func:`early_stopping_benchmark`.
ES_PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "tiny": {
        "denoise": {"max_steps": 12, "window": 3, "patience": 2, "eval_every": 2, "image_size": 32,
                    "holdout_fraction": 0.1, "holdout_check_every": 2, "refit_steps": 2,
                    "network_args": {"in_channels": 8, "out_channels": 3, "channels_down": [4, 4],
                                     "channels_up": [4, 4], "channels_skip": [2, 2]}},
    },
    # < 15 min on 2 idle CPU cores (the module's default networks; W = 100 as in the paper, shorter patience)
    "quick": {
        "mri": {"max_steps": 1500, "window": 100, "patience": 300, "eval_every": 10, "mri_crop": (96, 72),
                "holdout_fraction": 0.2, "refit_steps": 100},
        "denoise": {"max_steps": 1500, "window": 100, "patience": 300, "eval_every": 10, "image_size": 64,
                    "holdout_fraction": 0.1, "refit_steps": 100},
    },
    # the ES-WMV paper's window and patience, long fixed runs (for a GPU)
    "full": {
        "mri": {"max_steps": 10000, "window": 100, "patience": 1000, "eval_every": 20, "mri_crop": (224, 176),
                "network_args": {"channels": [64, 128, 256, 256]}, "lr": 3e-4, "holdout_fraction": 0.1,
                "refit_steps": 300},
        "denoise": {"max_steps": 10000, "window": 100, "patience": 1000, "eval_every": 20, "image_size": 256,
                    "network_args": {"in_channels": 32, "out_channels": 3, "channels_down": [128] * 5,
                                     "channels_up": [128] * 5}, "holdout_fraction": 0.1, "refit_steps": 300},
    },
}


def run_early_stopping_suite(preset: str = "quick", *, data: Optional[Union[str, Path]] = None, device: str = "cpu",
                             overrides: Optional[Dict[str, Any]] = None, out_dir: Optional[Path] = None,
                             log=print) -> Dict[str, Any]:
    """The ``early-stopping`` suite: :func:`early_stopping_benchmark` for each task of the preset.

    ``overrides`` (e.g. ``{"max_steps": 20}``) apply to every task. With ``out_dir`` the fixed runs'
    PSNR-vs-step curves are plotted (``early-stopping.png``) with the ES-kept steps marked.
    """
    from ugodit_pl.apps.benchmarks.common import data_root as resolve_data
    from ugodit_pl.apps.benchmarks.common import plot_curves

    if preset not in ES_PRESETS:
        raise ValueError(f"preset must be one of {', '.join(ES_PRESETS)}, got {preset!r}")
    root = resolve_data(data)
    start = time.perf_counter()
    tasks: Dict[str, Any] = {}
    for task, kwargs in ES_PRESETS[preset].items():
        settings = dict(kwargs, **(overrides or {}))
        result = early_stopping_benchmark(task, device=device, data_root=root, **settings)
        tasks[task] = result
        log(f"early-stopping {task}: stopped at {result['es_stop_step']} (kept {result['es_kept_step']}), "
            f"ES {result['es_psnr']:.2f} dB vs best {result['best_psnr']:.2f} dB at {result['best_step']}, "
            f"saved {result['steps_saved']} of {result['max_steps']} steps; held-out rule: stopped at "
            f"{result['holdout_stop_step']} (kept {result['holdout_kept_step']}), {result['holdout_psnr']:.2f} dB, "
            f"after its refit {result['refit_psnr']:.2f} dB")
    if out_dir is not None:
        levels = {f"{task}: {label}": r[key] for task, r in tasks.items()
                  for label, key in (("ES-kept output", "es_psnr"), ("held-out rule + refit", "refit_psnr"))}
        curves = {f"{task} (fixed run{label})": r[key] for task, r in tasks.items()
                  for label, key in (("", "curve"), (", reconstruction", "reconstruction_curve"))}
        plot_curves(curves,
                    Path(out_dir) / "early-stopping.png", levels=levels,
                    title="DIP PSNR vs step (fixed run); the PSNR of ES-WMV's and the held-out rule's choices")
    return {"tasks": tasks, "total_seconds": time.perf_counter() - start}
