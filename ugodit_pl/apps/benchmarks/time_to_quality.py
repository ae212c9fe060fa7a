"""Time to quality: the wall seconds (and steps) from a measurement to a good image, per method.

Part of the ``speed`` suite. On problems of the real-MRI panel (:mod:`.mri_quality`, one fit at a time
so that the seconds compare), every network method at its defaults and the speed variants
(``bf16-mixed``, ``compile``, both) is fitted for aSeqDIP's default budget of T steps, UGoDIT
also behind its untrained encoder (the control that tells transfer from architecture). From each
PSNR curve (the EMA output every ``eval_every`` steps, with the fit's own seconds at each point; the
evaluation itself is not counted):

- ``l1_wavelet``: the first point at or above L1-wavelet's PSNR on that problem (its default lambda,
  maps from the measurement);
- ``aseqdip``: the first point at or above aSeqDIP's final PSNR (float32, eager, T steps: today's
  defaults, the bar users compare with);

each ``{"step", "seconds"}``, or None where the curve does not get there within T steps. DIP's
``dip_es`` (``WMVEarlyStopping`` on the same run) counts at its stopping step. The summary, per
method: the mean seconds to each level over the problems (where every problem reached it), the
speed-up against aSeqDIP's own time to its final PSNR (mean and worst problem), the final PSNR, and
for a variant the PSNR it costs against its method (mean and worst).

>>> reach({"steps": [10, 20, 30], "seconds": [1.0, 2.0, 3.0], "psnr": [20.0, 22.5, 23.0]}, 22.0)
{'step': 20, 'seconds': 2.0}
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from ugodit_pl.apps.benchmarks.common import plot_curves

__all__ = ["TIME_TO_QUALITY_PRESETS", "reach", "run_time_to_quality", "summarise_time_to_quality"]

#: The speed variants: a method under another Lightning precision and/or compiled.
SPEED_VARIANTS: Dict[str, Dict[str, Any]] = {
    "aseqdip_bf16": {"method": "aseqdip", "precision": "bf16-mixed"},
    "ugodit_bf16": {"method": "ugodit", "precision": "bf16-mixed"},
    "ugodit_compiled": {"method": "ugodit", "args": {"compile": True}},
    "ugodit_compiled_bf16": {"method": "ugodit", "args": {"compile": True}, "precision": "bf16-mixed"},
}

TIME_TO_QUALITY_PRESETS: Dict[str, Dict[str, Any]] = {
    # seconds, for the tests (the numbers mean nothing)
    "tiny": {"mri_preset": "tiny", "problems": ["brain 48x40 4x"], "methods": ["dip", "aseqdip", "ugodit"],
             "method_variants": {"ugodit_bf16": SPEED_VARIANTS["ugodit_bf16"]}},
    # about 20 min on 2 CPU cores: three anatomies at the panel's quick size, 600 steps
    "quick": {"mri_preset": "quick", "problems": ["brain 96x72 4x", "head 96x96 4x", "epi 96x72 4x"],
              "methods": ["dip", "self_guided_dip", "aseqdip", "ugodit", "ugodit_untrained"],
              "method_variants": SPEED_VARIANTS},
    # the papers' sizes, for a GPU
    "full": {"mri_preset": "full", "problems": ["brain 230x180 4x", "head 256x256 4x", "epi 128x96 4x"],
             "methods": ["dip", "self_guided_dip", "aseqdip", "ugodit", "ugodit_untrained"],
             "method_variants": SPEED_VARIANTS},
}


#: The curves hold PSNR to 0.001 dB: a point within half of that of a level has reached it.
ROUNDING_DB = 5e-4


def reach(curve: Mapping[str, List[Any]], level: float) -> Optional[Dict[str, Any]]:
    """The first point of ``curve`` whose PSNR is at least ``level``: ``{"step", "seconds"}``, or None."""
    for step, seconds, psnr in zip(curve["steps"], curve["seconds"], curve["psnr"]):
        if psnr is not None and psnr >= level - ROUNDING_DB:
            return {"step": int(step), "seconds": float(seconds)}
    return None


def _seconds_at(curve: Mapping[str, List[Any]], step: int) -> float:
    """The fit's seconds at the first curve point at or after ``step`` (its last point if none)."""
    for at, seconds in zip(curve["steps"], curve["seconds"]):
        if at >= step:
            return float(seconds)
    return float(curve["seconds"][-1])


def _problem_table(methods: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """Per network method of one problem: its final PSNR, seconds and the two reach points."""
    levels = {"l1_wavelet": methods["l1_wavelet"]["metrics"]["psnr"], "aseqdip": methods["aseqdip"]["metrics"]["psnr"]}
    table: Dict[str, Any] = {"levels": levels, "methods": {}}
    for name, entry in methods.items():
        if entry.get("kind") != "network":
            continue
        if name == "dip_es":
            curve, stop = methods["dip"]["curve"], int(entry["stopped_step"] or entry["budget"])
            psnr = entry["metrics"]["psnr"]
            point = {"step": stop, "seconds": _seconds_at(curve, stop)}
            reached = {key: point if psnr >= level else None for key, level in levels.items()}
            seconds, steps = point["seconds"], stop
        else:
            reached = {key: reach(entry["curve"], level) for key, level in levels.items()}
            seconds, steps = entry["curve"]["seconds"][-1], entry["steps"]
        table["methods"][name] = {"psnr": entry["metrics"]["psnr"], "steps": steps, "seconds": seconds,
                                  "seconds_per_step": entry["seconds"] / max(1, entry.get("budget", entry["steps"])),
                                  "reach": reached, "settings": entry.get("settings", {})}
        if "curve" in entry:
            table["methods"][name]["curve"] = {k: entry["curve"][k] for k in ("steps", "seconds", "psnr")}
    return table


def summarise_time_to_quality(problems: Mapping[str, Mapping[str, Any]],
                              variants: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """Per method, over the problems: mean seconds to each level, speed-up against aSeqDIP, quality of variants."""
    names = [n for n in next(iter(problems.values()))["methods"] if all(n in p["methods"] for p in problems.values())]
    out: Dict[str, Any] = {}
    for name in names:
        rows = [p["methods"][name] for p in problems.values()]
        row: Dict[str, Any] = {"mean_psnr": statistics.mean(r["psnr"] for r in rows),
                               "mean_seconds": statistics.mean(r["seconds"] for r in rows)}
        for key in ("l1_wavelet", "aseqdip"):
            points = [r["reach"][key] for r in rows]
            row[f"reached_{key}"] = sum(p is not None for p in points)
            row[f"mean_seconds_to_{key}"] = (statistics.mean(p["seconds"] for p in points)
                                             if all(p is not None for p in points) else None)
        speedups = []
        for problem in problems.values():
            own = problem["methods"]["aseqdip"]["reach"]["aseqdip"]
            theirs = problem["methods"][name]["reach"]["aseqdip"]
            speedups.append(own["seconds"] / theirs["seconds"] if own and theirs and theirs["seconds"] > 0 else None)
        if all(s is not None for s in speedups):
            row["speedup_to_aseqdip_final"] = {"mean": statistics.mean(speedups), "worst": min(speedups)}
        base = (variants.get(name) or {}).get("method")
        if base is not None and base in names:
            costs = [p["methods"][name]["psnr"] - p["methods"][base]["psnr"] for p in problems.values()]
            row["psnr_change_vs_method"] = {"method": base, "mean": statistics.mean(costs), "worst": min(costs)}
            ratios = [p["methods"][base]["seconds_per_step"] / p["methods"][name]["seconds_per_step"]
                      for p in problems.values()]
            row["step_speedup_vs_method"] = {"mean": statistics.mean(ratios), "worst": min(ratios)}
        out[name] = row
    return out


def run_time_to_quality(preset: str = "quick", out_dir: Optional[Path] = None, *, data: Optional[Path] = None,
                        device: str = "cpu", seed: int = 0, overrides: Optional[Dict[str, Any]] = None,
                        log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Fit the preset's problems and methods one at a time; returns per problem the reach table and the summary.

    ``overrides`` replace preset entries, and any other key is passed to the panel's settings (e.g.
    ``{"steps": 300}``). One PSNR-vs-seconds plot per problem is written to ``out_dir``
    (``speed_time_to_quality_<problem>.png``).
    """
    from ugodit_pl.apps.benchmarks.mri_quality import run_mri_quality

    if preset not in TIME_TO_QUALITY_PRESETS:
        raise ValueError(f"preset must be one of {', '.join(TIME_TO_QUALITY_PRESETS)}, got {preset!r}")
    settings = dict(TIME_TO_QUALITY_PRESETS[preset], **(overrides or {}))
    panel_overrides = {k: v for k, v in settings.items() if k != "mri_preset"}
    panel_overrides.update(workers=1, l1_grid=[1e-3])  # one fit at a time; no oracle lambda search
    panel = run_mri_quality(settings["mri_preset"], None, data=data, device=device, seed=seed,
                            overrides=panel_overrides, log=log)
    problems = {name: _problem_table(problem["methods"]) for name, problem in panel["problems"].items()}
    for name, problem in problems.items():
        levels = problem["levels"]
        log(f"time to quality, {name}: L1-wavelet {levels['l1_wavelet']:.2f} dB, aSeqDIP final {levels['aseqdip']:.2f} dB")
        for method, row in problem["methods"].items():
            marks = ", ".join(f"{key} at {'-' if point is None else format(point['seconds'], '.1f') + ' s'}"
                              for key, point in row["reach"].items())
            log(f"  {method:22s} {row['psnr']:6.2f} dB in {row['seconds']:6.1f} s; {marks}")
        if out_dir is not None:
            curves = {m: e["curve"] for m, e in panel["problems"][name]["methods"].items() if "curve" in e}
            plot_curves(curves, Path(out_dir) / f"speed_time_to_quality_{name.replace(' ', '_')}.png",
                        levels={"L1-wavelet": levels["l1_wavelet"], "aSeqDIP final": levels["aseqdip"]}, x="seconds",
                        title=f"{name}: PSNR against the fit's seconds, one fit at a time")
    return {"settings": settings, "pretraining": panel["pretraining"], "problems": problems,
            "summary": summarise_time_to_quality(problems, settings.get("method_variants") or {}),
            "total_seconds": panel["total_seconds"]}
