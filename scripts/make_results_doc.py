#!/usr/bin/env python
"""Generate docs/RESULTS.md from the committed benchmark results (benchmarks/results/*.json).

Usage::

    python scripts/make_results_doc.py                      # benchmarks/results -> docs/RESULTS.md
    python scripts/make_results_doc.py --results DIR --out FILE

Every table is read from the JSON files (nothing is typed in by hand); each section names the
command that produced it, the git revision and the machine, and whether the timings were taken
under load. The one hand-written part, ``benchmarks/results/decisions.md`` (which defaults the
results changed, with before/after figures and the files they come from), is included verbatim.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from ugodit_pl.apps.benchmarks.cli import timing_note  # noqa: E402
from ugodit_pl.apps.benchmarks.mri_quality import summarise  # noqa: E402

#: Hand-written record of the default changes, with the before/after figures and the files they come from.
DECISIONS = "decisions.md"
ORDER = ("mri-quality", "sr-quality", "speed", "early-stopping", "transfer-study", "volume")

MRI_ROWS = (
    ("zero_filled", "zero-filled A^H y"),
    ("sense", "CG-SENSE"),
    ("l1_wavelet", "L1-wavelet (default lambda)"),
    ("l1_wavelet_auto", "L1-wavelet, lambda by the automatic rule (no target)"),
    ("l1_wavelet_tuned", "L1-wavelet, lambda tuned on the target (oracle)"),
    ("total_variation", "total variation (default lambda)"),
    ("total_variation_auto", "total variation, lambda by the automatic rule (no target)"),
    ("total_variation_tuned", "total variation, lambda tuned on the target (oracle)"),
    ("dip", "DIP (noise input)"),
    ("dip_es", "DIP + ES-WMV"),
    ("reference_dip", "reference-guided DIP (input A^H y)"),
    ("self_guided_dip", "Self-Guided DIP"),
    ("aseqdip", "aSeqDIP"),
    ("ugodit", "UGoDIT (pre-trained encoder)"),
    ("ugodit_untrained", "UGoDIT fit, untrained encoder (control)"),
    ("deepinv_dip", "deepinv DIP (ConvDecoder, peer)"),
)
SR_ROWS = (("bilinear", "bilinear up-sampling"), ("dip", "DIP"), ("self_guided_dip", "Self-Guided DIP"),
           ("aseqdip", "aSeqDIP"), ("ugodit", "UGoDIT"))


def fmt(value: Any, digits: int = 2) -> str:
    """A number for a table cell ('-' for missing)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: List[str], rows: List[List[Any]], digits: int = 2) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v, digits) if not isinstance(v, str) else v for v in row) + " |")
    return "\n".join(lines)


def provenance(doc: Dict[str, Any]) -> str:
    m = doc["machine"]
    gpu = m.get("gpu") or "none"
    rev = (m.get("git_revision") or "unknown")[:12] + (" (+ uncommitted changes)" if m.get("git_dirty") else "")
    return "\n".join([
        f"- command: `{m.get('command')}`",
        f"- machine: {m.get('cpu_model')}, {m.get('cores')} cores, torch {m.get('torch')} "
        f"({m.get('torch_threads')} thread(s)), GPU: {gpu}, device: {m.get('device')}",
        f"- load average (1/5/15 min) at start {m.get('load_average_start')}, at end {m.get('load_average_end')}: "
        f"{timing_note(m)}",
        f"- git revision {rev}, {m.get('date_utc')}, wall time {doc.get('wall_seconds', 0) / 60:.1f} min",
    ])


def images(doc: Dict[str, Any], results_dir: Path, out_file: Path) -> str:
    rel = os.path.relpath(results_dir, out_file.parent)
    return "\n\n".join(f"![{name}]({rel}/{name})" for name in doc.get("plots", []))


# --------------------------------------------------------------------------- sections
def mri_section(doc: Dict[str, Any]) -> str:
    result = doc["result"]
    s = result["settings"]
    out = [
        f"The real-MRI panel (`ugodit_pl/apps/benchmarks/panel.py`): estimated ESPIRiT maps, RSS target, U-Net "
        f"channels {s['network_args'].get('channels')}, {s['steps']} steps for every network method, each at its "
        f"documented defaults; UGoDIT pre-trained {s['pretrain_steps']} steps on other measurements. PSNR/SSIM/NMSE in "
        f"the fastMRI convention (data range = target max, 7x7 SSIM) of the magnitude masked by the coil-map support "
        f"(known without the ground truth). `head` and `epi` are real MRI images (matplotlib's s1045, nibabel's "
        f"example4d) simulated into 8-coil k-space (with one smooth random phase before the real-phase panel, with the "
        f"real brain's low-resolution phase plus texture since; each problem's line says which); `brain` is real "
        f"8-coil k-space. At 8x the centre keeps at least "
        f"8 columns for ESPIRiT.",
    ]
    for note in result.get("notes", []):
        out.append(f"\n- {note}")
    rows_of = list(MRI_ROWS) + [(name, _method_label(name, s)) for name in (s.get("method_variants") or {})]
    for label, group in summarise(result["problems"]).items():
        out.append(f"\n#### {label}: mean over {len(group['problems'])} problems ({', '.join(group['problems'])})\n")
        rows = []
        for key, text in rows_of:
            row = group["methods"].get(key)
            if row is None:
                continue
            margins = [row.get(f"margin_{ref}") for ref in ("zero_filled", "l1_wavelet", "l1_wavelet_auto",
                                                             "l1_wavelet_tuned")]
            rows.append([text, row["mean_psnr"], row["mean_ssim"]]
                        + [f"{m['mean']:+.2f} / {m['worst']:+.2f}" if m else "-" for m in margins]
                        + [row.get("budget_change_worst")])
        out.append(table(["method", "mean PSNR", "mean SSIM", "vs zero-filled (mean / worst)",
                          "vs L1-wavelet (mean / worst)", "vs automatic-lambda L1 (mean / worst)",
                          "vs tuned L1 (mean / worst)",
                          "worst PSNR(T) - PSNR(T/2)"], rows, 3))
        for pair, changes in group.get("size_change", {}).items():
            out.append(f"\nSize: the margin over L1-wavelet (automatic lambda) from {pair} changes by " + ", ".join(
                f"{name} {value:+.2f}" for name, value in changes.items()) + " dB.")
    for name, problem in result["problems"].items():
        p = problem["problem"]
        out.append(f"\n#### {name}: {p['what']}; {p['mask']}, centre fraction {p['center_fraction']:.3f}, sampled "
                   f"{100 * p['sampled_fraction']:.1f}% of k-space\n")
        rows = []
        for key, text in rows_of:
            e = problem["methods"].get(key)
            if e is None:
                continue
            m = e["metrics"]
            rows.append([text, m["psnr"], m["ssim"], m["nmse"], e.get("steps"), e.get("seconds")])
        out.append(table(["method", "PSNR", "SSIM", "NMSE", "steps", "seconds"], rows, 3))
    for key, info in (result.get("pretraining") or {}).items():
        out.append(f"\nUGoDIT pre-training {key}: M = {info['M']} ({info['group']}); {info['steps']} steps at "
                   f"{info['crop'][0]}x{info['crop'][1]}, {info['seconds']:.0f} s.")
    return "\n".join(out)


def sr_section(doc: Dict[str, Any]) -> str:
    result = doc["result"]
    s, p = result["settings"], result["problem"]
    out = [f"4x super-resolution of FFHQ 00002 resized to {p['size']}x{p['size']} (measurement "
           f"{p['measurement_shape'][0]}x{p['measurement_shape'][1]}, Gaussian noise sigma {p['noise_sigma']} on [0, 1]); "
           f"skip network {s['network_args'].get('channels_down')}, {s['steps']} steps for every method; UGoDIT "
           f"pre-trained on {', '.join(Path(i).name for i in p['pretrain_images'])} for {s['pretrain_steps']} steps. "
           f"PSNR/SSIM on [0, 1] (11x11 Gaussian SSIM). The paper's figure is at 256x256 after far more steps.\n"]
    rows = []
    for key, label in SR_ROWS:
        e = result["methods"].get(key)
        if e is None:
            continue
        rows.append([label, e["metrics"]["psnr"], e["metrics"]["ssim"], (e.get("metrics_last") or {}).get("psnr"),
                     e.get("best_psnr_ema"), e.get("paper_psnr_256"), e.get("steps"), e.get("seconds")])
    out.append(table(["method", "PSNR (EMA)", "SSIM (EMA)", "PSNR (last)", "best PSNR on the curve", "paper (256 px)",
                      "steps", "seconds"], rows, 3))
    levels = result.get("levels", {})
    if levels:
        rows = [[label] + [result["methods"][key]["steps_to_reach"].get(n) for n in levels]
                for key, label in SR_ROWS if key in result["methods"] and result["methods"][key]["kind"] == "network"]
        out.append("\nSteps (EMA output) to reach a PSNR level:\n")
        out.append(table(["method"] + [f"{n} ({v:.2f} dB)" for n, v in levels.items()], rows))
    pre = result.get("pretraining")
    if pre:
        out.append(f"\nPre-training: M = {pre['M']}, {pre['steps']} steps, {pre['seconds']:.0f} s.")
    return "\n".join(out)


def speed_section(doc: Dict[str, Any]) -> str:
    r = doc["result"]
    s = r["settings"]
    peak = r["matmul_peak"]
    out = [f"U-Net channels {s['network_args'].get('channels')} at {s['size'][0]}x{s['size'][1]}, 8 coils; "
           f"medians of {s['repeats']} timed steps. Matrix-multiply peak of this run: "
           f"{peak['flop_per_s'] / 1e9:.1f} GFLOP/s fp32 (n = {peak['n']}), "
           f"{r['matmul_peak_bf16']['flop_per_s'] / 1e9:.1f} GFLOP/s bf16. CPU features: {', '.join(r.get('cpu_flags', []))}.\n"]
    if r["pretrain_step"]:
        out.append("UGoDIT pre-training step (forward, loss, backward, Adam) for M measurements:\n")
        rows = [[x["M"], x["batched_s"], x["looped_s"], x["speedup"], x["flops_per_step"] / 1e9,
                 x["batched_flop_per_s"] / 1e9, 100 * x["fraction_of_matmul_peak"]] for x in r["pretrain_step"]]
        out.append(table(["M", "batched s/step", "looped s/step", "speed-up", "GFLOP/step", "GFLOP/s (batched)",
                          "% of matmul peak"], rows, 3))
    if r["fit_throughput"]:
        out.append("\nTest-time fit throughput (UGoDIT, B measurements fitted at once):\n")
        rows = [[x["B"], x["step_s"], x["steps_per_fit"], x["seconds_per_fit"] / 60, x["measurements_per_hour"]]
                for x in r["fit_throughput"]]
        out.append(table(["B", "s/step", "steps per fit", "minutes per fit", "measurements/hour"], rows))
    v = r["variants"]
    out.append("\nOne U-Net fit step in CPU variants:\n")
    rows = [[k, v["step_s"][k], v["speedup_vs_fp32"][k], v["flop_per_s"][k] / 1e9, 100 * v["fraction_of_matmul_peak"][k]]
            for k in v["step_s"]]
    c = r.get("compile", {})
    if c.get("status") == "ok":
        rows.append(["torch.compile (fp32)", c["compiled_s"], c["eager_s"] / c["compiled_s"] if c.get("eager_s") else None,
                     None, None])
    out.append(table(["variant", "s/step", "speed-up vs fp32", "GFLOP/s", "% of matmul peak"], rows, 3))
    if c.get("status") == "ok":
        out.append(f"\ntorch.compile: compiled in {c['compile_s']:.0f} s; compiled {c['compiled_s']:.3f} s/step vs eager "
                   f"{c['eager_s']:.3f} s/step in the same subprocess.")
    elif c:
        out.append(f"\ntorch.compile: {c.get('status')} {c.get('error', '')} "
                   f"{'(limit ' + str(c.get('timeout_s')) + ' s)' if c.get('status') == 'timeout' else ''}")
    if r.get("threads"):
        out.append("\nThreads (same fp32 step):\n")
        out.append(table(["threads", "s/step"], [[x["threads"], x["step_s"]] for x in r["threads"]], 3))
    if r.get("overhead"):
        out.append("\nThe library's aSeqDIP fit step (a `pl.Trainer`) against the same objective as a plain PyTorch loop "
                   "(`loop_overhead`; medians, both in one run, alternating):\n")
        rows = [[f"{x['size'][0]}x{x['size'][1]}", x["network_args"]["channels"][0], x["threads"], 1e3 * x["library_s"],
                 1e3 * x["plain_s"], 100 * x["overhead"], x["same_outputs"]] for x in r["overhead"]]
        out.append(table(["size", "width", "threads", "library ms/step", "plain loop ms/step", "overhead %",
                          "same outputs"], rows, 1))
    if r.get("tv_solver"):
        out.append("\nOne total-variation solve: the library's primal-dual iteration in torch against sigpy's "
                   "`TotalVariationRecon` with the same steps (`tv_solver_speed`; medians, both in one run, alternating):\n")
        rows = [[f"{x['size'][0]}x{x['size'][1]}", x["coils"], x["iterations"], x["device"], x["threads"], x["torch_s"],
                 x["sigpy_s"], x["speedup"], f"{x['relative_difference']:.1e}"] for x in r["tv_solver"]]
        out.append(table(["size", "coils", "iterations", "device", "threads", "torch s", "sigpy s", "speed-up",
                          "relative difference"], rows, 3))
    if r.get("time_to_quality"):
        out.append("\n" + time_to_quality_section(r["time_to_quality"]))
    return "\n".join(out)


def _method_label(name: str, settings: Dict[str, Any]) -> str:
    labels = dict(MRI_ROWS)
    variant = (settings.get("method_variants") or {}).get(name)
    if variant is None:
        return labels.get(name, name)
    parts = [variant.get("precision", "")] + [f"{k}={v}" for k, v in (variant.get("args") or {}).items()]
    return f"{labels.get(variant['method'], variant['method'])}, {', '.join(p for p in parts if p)}"


def _point(point: Optional[Dict[str, Any]]) -> str:
    return "not reached" if point is None else f"{point['seconds']:.1f} s (step {point['step']})"


def time_to_quality_section(ttq: Dict[str, Any]) -> str:
    """The time-to-quality tables of the speed suite: per problem, and the means over the problems."""
    settings = ttq["settings"]
    out = [f"Time to quality (`time_to_quality`, panel problems {', '.join(ttq['problems'])}; one fit at a time; "
           "seconds of the fit itself, compilation included, evaluation excluded):\n"]
    rows = []
    for name, row in ttq["summary"].items():
        speedup = row.get("speedup_to_aseqdip_final")
        change = row.get("psnr_change_vs_method")
        step_speedup = row.get("step_speedup_vs_method")
        rows.append([_method_label(name, settings), row["mean_psnr"], row["mean_seconds"],
                     f"{fmt(row['mean_seconds_to_l1_wavelet'], 1)} ({row['reached_l1_wavelet']}/{len(ttq['problems'])})",
                     f"{fmt(row['mean_seconds_to_aseqdip'], 1)} ({row['reached_aseqdip']}/{len(ttq['problems'])})",
                     "-" if speedup is None else f"x{speedup['mean']:.2f} (worst x{speedup['worst']:.2f})",
                     "-" if step_speedup is None else f"x{step_speedup['mean']:.2f}",
                     "-" if change is None else f"{change['mean']:+.2f} (worst {change['worst']:+.2f})"])
    out.append(table(["method", "mean PSNR (dB)", "mean seconds", "mean s to L1-wavelet (reached)",
                      "mean s to aSeqDIP's final (reached)", "speed-up to aSeqDIP's final", "step speed-up vs method",
                      "PSNR vs method (dB)"], rows))
    for problem, entry in ttq["problems"].items():
        levels = entry["levels"]
        out.append(f"\n{problem}: L1-wavelet {levels['l1_wavelet']:.2f} dB, aSeqDIP's final {levels['aseqdip']:.2f} dB\n")
        rows = [[_method_label(name, settings), row["psnr"], row["seconds"], 1e3 * row["seconds_per_step"],
                 _point(row["reach"]["l1_wavelet"]), _point(row["reach"]["aseqdip"])]
                for name, row in entry["methods"].items()]
        out.append(table(["method", "PSNR (dB)", "seconds", "ms/step", "to L1-wavelet", "to aSeqDIP's final"], rows))
    return "\n".join(out)


def es_section(doc: Dict[str, Any]) -> str:
    tasks = doc["result"]["tasks"]
    rows, held = [], []
    for name, t in tasks.items():
        rows.append([name, "x".join(str(v) for v in t["shape"]), t["max_steps"], t["window"], t["patience"],
                     t["es_stop_step"], t["es_kept_step"], t["es_psnr"], t["best_psnr"], t["best_step"], t["final_psnr"],
                     t["gap_db"], t["steps_saved"]])
        if "holdout_psnr" in t:
            held.append([name, t["holdout_fraction"], t["holdout_patience"], t["holdout_stop_step"], t["holdout_kept_step"],
                         t["holdout_psnr"], t["best_reconstruction_psnr"], t["holdout_gap_db"], t["refit_steps"],
                         t["refit_psnr"], t["refit_gap_db"], t["holdout_steps_saved"]])
    out = ["DIP fitted from the same seed: with WMVEarlyStopping (no ground truth) and for a fixed number of "
           "steps (the oracle's best PSNR over that run). MRI: real brain, 4x, U-Net; denoise: FFHQ 00002 crop, "
           "sigma 25/255, skip net.\n",
           table(["task", "size", "max steps", "window", "patience", "ES stop step", "ES kept step", "ES PSNR",
                  "best PSNR", "best step", "final PSNR", "PSNR lost (dB)", "steps saved"], rows)]
    if held:
        out += ["\nThe held-out rule on the same problems (HeldOutEarlyStopping; k-space lines held out for MRI, "
                "pixels for denoising), then a refit on every sample from where it stopped. It keeps the "
                "reconstruction (the EMA; MRI: with the measured samples put back), so its loss is against the best "
                "reconstruction of the fixed run:\n",
                table(["task", "held out", "patience", "stop step", "kept step", "PSNR", "best reconstruction PSNR",
                       "PSNR lost (dB)", "refit steps", "PSNR after the refit", "lost after the refit (dB)",
                       "steps saved"], held)]
    return "\n".join(out)


def transfer_section(doc: Dict[str, Any]) -> str:
    result = doc["result"]
    early = result.get("early_step")
    rows = []
    for v in result["variants"]:
        a = v["aseqdip"]
        rows.append([v["label"], v["final_psnr"], v["final_psnr_last"], a["final_psnr"], v["advantage_db"],
                     v["psnr_at"]["early"], a["psnr_at_early"], v["advantage_early_db"], v["steps_to_reach_aseqdip"]])
    out = [result.get("description", ""), "",
           table(["variant", "UGoDIT PSNR (EMA)", "UGoDIT PSNR (last)", "aSeqDIP PSNR (same settings)", "advantage (dB)",
                  f"UGoDIT at step {early}", f"aSeqDIP at step {early}", f"advantage at step {early}",
                  "UGoDIT steps to aSeqDIP's final PSNR"], rows)]
    pre = result.get("pretraining", {})
    if pre:
        out.append("\nPre-training groups: " + "; ".join(
            f"{k}: M = {i['M']} ({', '.join(i['measurements'])}), {i['steps']} steps, {i['seconds']:.0f} s"
            for k, i in pre.items()) + ".")
    return "\n".join(out)


VOLUME_MODES = (("cold", "cold, fixed steps"), ("warm", "warm starts, fixed steps"),
                ("warm_stop", "warm starts + held-out stopping"))


def _stop_budget(settings: Dict[str, Any]) -> str:
    """The step budget of the held-out-stopping chain, as the file's settings ran it."""
    if "refit_steps" not in settings:  # files written before the refit: every slice up to the cold budget
        return f"at most {settings['cold_steps']} steps"
    return (f"at most {settings['cold_steps']} steps for the first slice and {settings['warm_steps']} for a warm one, "
            f"then {settings['refit_steps']} steps of refit on every sample")


def volume_section(doc: Dict[str, Any]) -> str:
    result = doc["result"]
    s = result["settings"]
    out = [f"Whole volumes, 4x, slices in order (`ugodit_pl/apps/benchmarks/volume.py`): cold fits of {s['cold_steps']} "
           f"steps, warm-started fits of {s['warm_steps']} steps (input: {s.get('warm_input', 'measurement')}), warm "
           f"starts with {s['holdout_fraction']} of the sampled k-space held out and HeldOutEarlyStopping (patience "
           f"{s['patience']}, {_stop_budget(s)}); U-Net "
           f"channels {s['network_args'].get('channels')}. Volume PSNR / SSIM in fastMRI's convention (the volume's "
           f"maximum as data range); seconds = fitting time summed over the slices.", ""]
    for name, volume in result["volumes"].items():
        out.append(f"**{name}**: {volume['source']}, slices {volume['slices'][0]}..{volume['slices'][-1]}, "
                   f"{volume['shape'][0]}x{volume['shape'][1]}\n")
        rows = []
        for method, runs in volume["methods"].items():
            if "cold" not in runs:
                rows.append([method, runs["volume"]["psnr"], runs["volume"]["ssim"], runs["seconds"], "-", "-", "-"])
                continue
            for mode, label in VOLUME_MODES:
                if mode not in runs:
                    continue
                run = runs[mode]
                gap = f"{100 * run['within_0_3_db']:.0f}%" if run.get("within_0_3_db") is not None else "-"
                rows.append([f"{method}: {label}", run["volume"]["psnr"], run["volume"]["ssim"], run["seconds"],
                             run["slices_per_hour"], f"{min(run['steps'])}-{max(run['steps'])}", gap])
                if "volume_before_refit" in run:
                    rows.append([f"{method}: {label}, before the refit", run["volume_before_refit"]["psnr"],
                                 run["volume_before_refit"]["ssim"], "-", "-", "-", "-"])
        out.append(table(["method", "volume PSNR (dB)", "SSIM", "seconds", "slices/hour", "steps per slice",
                          "stop within 0.3 dB of the best"], rows, digits=3))
        out.append("")
    for note in result.get("notes", []):
        out.append(f"- {note}")
    return "\n".join(out)


def summary(docs: List[Any]) -> List[str]:
    """One line per headline comparison, computed from the files (the claims at a glance)."""
    lines: List[str] = []
    for path, doc in docs:
        suite, r = doc["suite"], doc["result"]
        where = f"[{path.name}, preset {doc['preset']}{', superseded' if doc.get('superseded') else ''}]"
        if suite == "mri-quality":
            for label, group in summarise(r["problems"]).items():
                rows = group["methods"]
                parts = []
                automatic = any("margin_l1_wavelet_auto" in row for row in rows.values())
                reference, text = (("l1_wavelet_auto", "automatic-lambda L1") if automatic
                                   else ("l1_wavelet", "L1-wavelet"))
                variants = list((r.get("settings") or {}).get("method_variants") or {})
                variant_keys = [k for k in rows if k in variants or any(k.startswith(f"{v}_mean_") for v in variants)]
                for key in ("aseqdip", "ugodit", "ugodit_untrained", "self_guided_dip", "dip", *variant_keys):
                    margin = rows.get(key, {}).get(f"margin_{reference}")
                    if margin:
                        parts.append(f"{key} {rows[key]['mean_psnr']:.2f} dB ({margin['mean']:+.2f}, worst "
                                     f"{margin['worst']:+.2f} vs {text})")
                for key in ("zero_filled", "sense", "l1_wavelet", "l1_wavelet_auto", "l1_wavelet_tuned",
                            "total_variation_auto"):
                    if key in rows:
                        parts.append(f"{key} {rows[key]['mean_psnr']:.2f} dB")
                lines.append(f"- MRI panel {label}, mean of {len(group['problems'])}: " + "; ".join(parts) + f" {where}")
        elif suite == "sr-quality":
            m = r["methods"]
            if "ugodit" in m and "aseqdip" in m:
                diff = m["ugodit"]["metrics"]["psnr"] - m["aseqdip"]["metrics"]["psnr"]
                lines.append(f"- SR 4x at {r['problem']['size']} px: UGoDIT {m['ugodit']['metrics']['psnr']:.2f} dB, aSeqDIP "
                             f"{m['aseqdip']['metrics']['psnr']:.2f} dB ({diff:+.2f}; the paper: +0.79 at 256 px) {where}")
            elif "self_guided_dip" in m:
                e = m["self_guided_dip"]
                lines.append(f"- SR 4x, Self-Guided DIP with {e['settings']}: {e['metrics']['psnr']:.2f} dB {where}")
        elif suite == "speed":
            steps = r["pretrain_step"]
            if steps:
                lines.append("- speed: batched/looped pre-training step speed-up " + ", ".join(
                    f"M={x['M']}: x{x['speedup']:.2f}" for x in steps) + "; fp32 fit step at "
                    f"{100 * r['variants']['fraction_of_matmul_peak']['fp32']:.0f}% of the matmul peak {where}")
            if r.get("overhead"):
                lines.append("- speed: library fit step against a plain PyTorch loop: " + ", ".join(
                    f"{x['size'][0]}x{x['size'][1]} width {x['network_args']['channels'][0]} {100 * x['overhead']:+.1f}%"
                    for x in r["overhead"]) + f" {where}")
            ttq = r.get("time_to_quality")
            if ttq:
                rows = ttq["summary"]
                reached = [k for k in rows if rows[k]["mean_seconds_to_aseqdip"] is not None]
                short = [k for k in rows if k not in reached]
                parts = [f"{_method_label(k, ttq['settings'])} {rows[k]['mean_seconds_to_aseqdip']:.1f} s" for k in reached]
                lines.append(f"- time to aSeqDIP's final PSNR, mean of {len(ttq['problems'])} problems, one fit at a time: "
                             + "; ".join(parts) + "; short of it on some problem: "
                             + ", ".join(_method_label(k, ttq["settings"]) for k in short) + f" {where}")
        elif suite == "early-stopping":
            for task, t in r["tasks"].items():
                held = (f"; held-out rule: lost {fmt(t['holdout_gap_db'])} dB ({fmt(t['refit_gap_db'])} dB after its "
                        f"{t['refit_steps']}-step refit), steps saved {t['holdout_steps_saved']}") if "holdout_psnr" in t else ""
                lines.append(f"- ES-WMV {task}: PSNR lost {fmt(t['gap_db'])} dB, steps saved {t['steps_saved']} of "
                             f"{t['max_steps']}{held} {where}")
        elif suite == "volume":
            warm_args = r["settings"].get("warm_args") or {}
            extra = ([str(warm_args)] if warm_args else []) + (
                ["input from the neighbour's image"] if r["settings"].get("warm_input") in ("neighbour", "auto") else [])
            how = f"warm ({', '.join([str(r['settings']['warm_steps']) + ' steps'] + extra)})"
            method_args = r["settings"].get("method_args") or {}
            every = f" (every fit with {method_args})" if method_args else ""
            for key, row in r["summary"].items():
                parts = [f"cold{every} {row['cold_psnr']:.2f} dB in {row['cold_seconds']:.0f} s"]
                if "warm_psnr" in row:
                    parts.append(f"{how} {row['warm_psnr_change']:+.2f} dB in x{row['warm_time_ratio']:.2f} of the time")
                if "warm_stop_psnr" in row:
                    share = row.get("stop_within_0_3_db")
                    parts.append(f"warm + held-out stopping {row['warm_stop_psnr_change']:+.2f} dB in "
                                 f"x{row['warm_stop_time_ratio']:.2f}" + ("" if share is None else
                                 f" (stop within 0.3 dB of the best on {100 * share:.0f}% of the slices it ruled)"))
                if "warm_stop_psnr_change_before_refit" in row:
                    parts.append(f"before its refit {row['warm_stop_psnr_change_before_refit']:+.2f} dB")
                lines.append(f"- volume {key}: " + "; ".join(parts) + f" {where}")
        elif suite == "transfer-study":
            adv = [(v["label"], v["advantage_db"]) for v in r["variants"]]
            if adv:
                lines.append("- transfer study, UGoDIT - aSeqDIP (final PSNR): " + ", ".join(
                    f"{k} {v:+.2f}" for k, v in adv) + f" dB {where}")
    return lines


SECTIONS: Dict[str, Callable[[Dict[str, Any]], str]] = {
    "mri-quality": mri_section, "sr-quality": sr_section, "speed": speed_section, "early-stopping": es_section,
    "transfer-study": transfer_section, "volume": volume_section,
}
TITLES = {"mri-quality": "MRI reconstruction quality", "sr-quality": "4x super-resolution quality",
          "speed": "Speed", "early-stopping": "Early stopping (ES-WMV)", "transfer-study": "Transfer study",
          "volume": "Whole volumes: warm starts and held-out stopping"}


def render(results_dir: Path, out_file: Path) -> str:
    """The Markdown text for every ``SUITE*.json`` in ``results_dir``."""
    docs = []
    for path in sorted(results_dir.glob("*.json")):
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
        if doc.get("suite") in SECTIONS:
            docs.append((path, doc))
    docs.sort(key=lambda item: (ORDER.index(item[1]["suite"]), item[0].name))
    lines = ["# Results", "",
             "Generated by `python scripts/make_results_doc.py` from `benchmarks/results/*.json`; do not edit by hand.",
             "Each section names the command that produced it; rerun the command and this script to refresh it.",
             "Presets: `quick` = reduced size and steps for 2 CPU cores, `full` = the papers' setting (GPU).", ""]
    if not docs:
        lines.append("No results yet.")
    else:
        lines += ["## Summary", ""] + summary(docs) + [""]
    decisions = results_dir / DECISIONS
    if decisions.is_file():
        lines += ["## Defaults chosen from these results", "", decisions.read_text(encoding="utf-8").strip(), ""]
    for path, doc in docs:
        suite = doc["suite"]
        lines += [f"## {TITLES[suite]} (`{doc.get('name', suite)}`, preset `{doc['preset']}`)", "", provenance(doc), ""]
        if doc.get("superseded"):  # kept as history; the file says what replaced it and why
            lines += [f"**Superseded**: {doc['superseded']}", ""]
        lines += [SECTIONS[suite](doc), ""]
        pictures = images(doc, results_dir, out_file)
        if pictures:
            lines += [pictures, ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "RESULTS.md"))
    args = parser.parse_args(argv)
    results_dir, out_file = Path(args.results), Path(args.out)
    text = render(results_dir, out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out_file.name}.", dir=out_file.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(temporary, out_file)
    print(f"wrote {out_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
