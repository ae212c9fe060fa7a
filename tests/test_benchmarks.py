"""The benchmark suites at the tiny preset: each runs in seconds and writes well-formed JSON (no timing claims)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ugodit_pl.apps.benchmarks import cli
from ugodit_pl.apps.benchmarks.common import CurveTracker, plot_curves, steps_to_reach
from ugodit_pl.apps.benchmarks.mri_quality import CLASSICAL
from ugodit_pl.apps.io import machine_info, read_json, to_jsonable, write_json
from ugodit_pl.callbacks import HeldOutEarlyStopping
from ugodit_pl.lamda_rules import least_of_ties


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _run(suite: str, out: Path, data: Path | None = None, *extra: str) -> dict:
    argv = [suite, "--preset", "tiny", "--out", str(out), "--threads", "1", "--device", "cpu", *extra]
    if data is not None:
        argv += ["--data", str(data)]
    assert cli.main(argv) == 0
    path = out / f"{suite}.json"
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    document = json.loads(text)
    assert document["suite"] == suite and document["preset"] == "tiny"
    machine = document["machine"]
    for key in ("cpu_model", "cores", "torch", "git_revision", "command", "load_average_start", "torch_threads"):
        assert key in machine
    assert machine["command"].startswith(f"ugodit benchmark {suite}")
    assert machine["torch_threads"] == 1
    return document


def _check_curve(curve: dict, steps: int) -> None:
    assert curve["steps"][0] == 1 and curve["steps"][-1] == steps
    assert curve["steps"] == sorted(curve["steps"])
    assert len(curve["psnr"]) == len(curve["steps"])
    assert all(math.isfinite(v) for v in curve["psnr"])


# --------------------------------------------------------------------------- common helpers
def test_write_json_is_atomic_strict_and_readable(tmp_path):
    path = write_json(tmp_path / "sub" / "r.json", {"t": torch.tensor([1.0, float("nan")]), "p": tmp_path, "x": (1, 2)})
    assert read_json(path) == {"t": [1.0, None], "p": str(tmp_path), "x": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary left behind


def test_to_jsonable_converts_numpy_scalars():
    import numpy as np

    assert to_jsonable({"a": np.float32(1.5), "b": np.int64(3), "c": np.array([1, 2])}) == {"a": 1.5, "b": 3, "c": [1, 2]}


def test_machine_info_records_command_and_load():
    info = machine_info(command=["a", "b"])
    assert info["command"] == "a b"
    assert info["cores"] >= 1 and info["torch"] == torch.__version__
    assert info["load_average"] is None or len(info["load_average"]) == 3


def test_steps_to_reach_first_crossing():
    curve = {"steps": [1, 5, 10, 15], "psnr": [10.0, 21.0, 19.0, 25.0]}
    assert steps_to_reach(curve, 20.0) == 5
    assert steps_to_reach(curve, 24.0) == 15
    assert steps_to_reach(curve, 30.0) is None
    assert steps_to_reach(curve, None) is None


def test_curve_tracker_matches_direct_psnr():
    from ugodit_pl.metrics import psnr

    target = torch.rand(2, 1, 8, 8)
    output = target + 0.1
    tracker = CurveTracker({"t": target}, lambda o, t: {"psnr": psnr(o, t)}, every=1, max_steps=1)
    tracker.record(3, {"ema": output, "last": None})
    curve = tracker.curves["t"]["ema"]
    assert curve["steps"] == [3]
    assert curve["psnr"][0] == pytest.approx(float(psnr(output, target).mean()), abs=1e-6)
    assert tracker.curves["t"]["last"] == {"steps": []}


def test_plot_curves_writes_png(tmp_path):
    path = plot_curves({"a": {"steps": [1, 2], "psnr": [1.0, 2.0]}}, tmp_path / "c.png", levels={"l": 1.5}, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert cli.main(["speed", "--preset", "tiny", "--out", str(tmp_path), "--set", "nokeyvalue"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["no-such-suite"])
    assert cli.main(["mri-quality", "--preset", "tiny", "--out", str(tmp_path), "--data", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- the suites
def test_speed_suite_tiny(tmp_path):
    document = _run("speed", tmp_path)
    result = document["result"]
    assert [r["M"] for r in result["pretrain_step"]] == [2]
    step = result["pretrain_step"][0]
    assert step["batched_s"] > 0 and step["looped_s"] > 0 and step["flops_per_step"] > 0
    assert step["speedup"] == pytest.approx(step["looped_s"] / step["batched_s"])
    fits = {r["B"]: r for r in result["fit_throughput"]}
    assert set(fits) == {1, 2}
    for b, r in fits.items():
        assert r["measurements_per_hour"] == pytest.approx(b * 3600 / (r["steps_per_fit"] * r["step_s"]))
    assert set(result["variants"]["step_s"]) == {"fp32", "channels_last", "bf16_autocast"}
    assert result["compile"]["status"] == "skipped"
    assert result["matmul_peak"]["flop_per_s"] > 0
    # the library's step beside the same objective as a plain loop: both compute the same outputs
    (overhead,) = result["overhead"]
    assert overhead["same_outputs"] and overhead["largest_output_difference"] < 1e-4
    assert overhead["overhead"] == pytest.approx(overhead["library_s"] / overhead["plain_s"] - 1)
    # total variation in torch beside sigpy's solver with the same steps: the same image
    (tv,) = result["tv_solver"]
    assert tv["size"] == [16, 16] and tv["iterations"] == 5 and tv["same_image"] and tv["relative_difference"] < 1e-5
    assert tv["speedup"] == pytest.approx(tv["sigpy_s"] / tv["torch_s"])
    assert result["time_to_quality"] is None  # the tiny preset has no real data; tested on its own below


def test_time_to_quality_tiny(tmp_path, shared_data):
    from ugodit_pl.apps.benchmarks.time_to_quality import run_time_to_quality

    result = run_time_to_quality("tiny", tmp_path, data=shared_data, log=lambda line: None)
    (name, problem), = result["problems"].items()
    assert name == "brain 48x40 4x" and (tmp_path / "speed_time_to_quality_brain_48x40_4x.png").exists()
    rows, levels = problem["methods"], problem["levels"]
    assert set(rows) == {"dip", "dip_es", "aseqdip", "ugodit", "ugodit_bf16"}
    assert levels["aseqdip"] == rows["aseqdip"]["psnr"]
    for row in rows.values():
        for key, point in row["reach"].items():
            # a reach point is the first of the curve at or above the level, in seconds of the fit itself
            if point is not None:
                assert 0 < point["seconds"] <= row["seconds"] + 1e-9 and point["step"] <= row["steps"]
    # aSeqDIP's EMA curve ends at its final PSNR (stored to 0.001 dB), so it always reaches it, at a
    # speed-up of 1 against itself
    assert rows["aseqdip"]["reach"]["aseqdip"] is not None
    assert rows["aseqdip"]["curve"]["psnr"][-1] == pytest.approx(levels["aseqdip"], abs=5e-4)
    summary = result["summary"]
    assert summary["aseqdip"]["speedup_to_aseqdip_final"] == {"mean": 1.0, "worst": 1.0}
    cost = summary["ugodit_bf16"]["psnr_change_vs_method"]
    assert cost["method"] == "ugodit" and cost["mean"] == pytest.approx(rows["ugodit_bf16"]["psnr"] - rows["ugodit"]["psnr"])
    assert result["pretraining"]["4x"]["steps"] == 3


def test_speed_flop_count_is_exact_for_a_convolution():
    from ugodit_pl.apps.benchmarks.speed import count_flops

    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    x = torch.randn(1, 3, 8, 8)
    assert count_flops(lambda: conv(x)) == 2 * 3 * 4 * 9 * 8 * 8


def test_pretrain_step_batched_and_looped_compute_the_same_loss():
    """The two timed paths must do the same work: equal losses from the same weights."""
    from ugodit_pl.apps.benchmarks.speed import _mri_problem
    from ugodit_pl.methods import UGoDITPretrain
    from ugodit_pl.methods.losses import residual_norm

    problem = _mri_problem(3, (16, 16))
    method = UGoDITPretrain(num_measurements=3, network="unet", network_args={"channels": [4, 8, 8, 8]}, seed=0,
                            tv_weight=0.0)  # as pretrain_step_speed: the papers' objective, which the loop writes out
    batch = {"y": problem["y"], "operator": problem["operator"], "index": problem["index"], "name": problem["name"]}
    method.prepare(batch)
    batched = method.training_step(batch, 0)
    y = method.begin_step(batch).y
    z = method.fit_state.inputs
    looped = []
    for i in range(3):
        decoder = method.decoders.module_at(i)
        out = decoder(*method.encoder(z[i : i + 1])) + (z[i : i + 1] if method.residual else 0)
        op = problem["operator"].select([i])
        data = residual_norm(op(out) - y[i : i + 1], method.loss_norm) * op.samples_per_pixel
        looped.append(data + method.lam * method.proximity_term(out, z[i : i + 1]))
    assert torch.allclose(batched, torch.cat(looped).sum(), rtol=1e-4, atol=1e-6)


def test_mri_quality_suite_tiny(tmp_path, shared_data):
    from ugodit_pl.apps.benchmarks.mri_quality import deepinv_available

    document = _run("mri-quality", tmp_path, shared_data)
    result = document["result"]
    assert list(result["problems"]) == ["brain 48x40 4x", "head 64x64 8x"]
    networks = {"dip", "dip_es", "reference_dip", "self_guided_dip", "aseqdip", "ugodit", "ugodit_untrained"}
    if deepinv_available():
        networks.add("deepinv_dip")
    else:
        assert any(note.startswith("deepinv_dip: skipped") for note in result["notes"])
    for name, problem in result["problems"].items():
        methods = problem["methods"]
        assert set(methods) == set(CLASSICAL) | networks
        for entry in methods.values():
            assert set(entry["metrics"]) == {"psnr", "ssim", "nmse", "psnr_unmasked"}
            assert math.isfinite(entry["metrics"]["psnr"]) and entry["metrics"]["nmse"] > 0
        for key in ("dip", "aseqdip", "ugodit", "self_guided_dip"):
            assert methods[key]["steps"] == 4
            _check_curve(methods[key]["curve"], 4)
        # the default lambda (1e-3) is in the tiny grid: tuning can only help
        for cs in ("l1_wavelet", "total_variation"):
            tuned, auto = methods[f"{cs}_tuned"], methods[f"{cs}_auto"]
            assert tuned["metrics"]["psnr"] >= methods[cs]["metrics"]["psnr"] - 1e-9 and tuned["oracle"] is True
            # the rule picks from the same grid without the target, so it can only match the oracle
            assert auto["lamda"] in (1e-3, 1e-2) and tuned["metrics"]["psnr"] >= auto["metrics"]["psnr"] - 1e-9
            assert auto["rule"] in ("cv", "discrepancy") and set(auto["scores"]) == {"0.001", "0.01"}
    assert result["problems"]["head 64x64 8x"]["problem"]["center_fraction"] == pytest.approx(8 / 64)
    # UGoDIT's encoders were pre-trained on other measurements, never a test slice; the control had one step
    pre = result["pretraining"]
    assert set(pre) == {"4x", "4x untrained", "8x", "8x untrained"}
    for info in pre.values():
        assert not any("espirit_brain_full" in m or "head" in m for m in info["measurements"])
        assert any("sigpy_brain_poisson8x" in m for m in info["measurements"]) and info["M"] == 3
    assert pre["4x untrained"]["steps"] == 1 and pre["4x"]["steps"] == 3
    # the summary's margins are differences of the table's PSNRs
    brain = result["problems"]["brain 48x40 4x"]["methods"]
    margin = result["summary"]["4x"]["methods"]["aseqdip"]["margin_zero_filled"]
    assert margin["mean"] == pytest.approx(brain["aseqdip"]["metrics"]["psnr"] - brain["zero_filled"]["metrics"]["psnr"])
    assert document["plots"] == ["mri-quality_brain_48x40_4x.png", "mri-quality_head_64x64_8x.png"]


def test_mri_quality_summary_margins_and_size_change():
    from ugodit_pl.apps.benchmarks.mri_quality import summarise

    def problem(name, shape, psnrs):
        methods = {key: {"kind": "classical" if key.startswith("l1") else "network",
                         "metrics": {"psnr": value, "ssim": 0.5}} for key, value in psnrs.items()}
        return {"problem": {"name": name, "anatomy": name.split()[0], "shape": list(shape), "acceleration": 4.0},
                "methods": methods}

    problems = {"brain 48x40 4x": problem("brain 48x40 4x", (48, 40), {"l1_wavelet_auto": 20.0, "aseqdip": 21.0}),
                "brain 96x80 4x": problem("brain 96x80 4x", (96, 80), {"l1_wavelet_auto": 22.0, "aseqdip": 22.5}),
                "head 64x64 4x": problem("head 64x64 4x", (64, 64), {"l1_wavelet_auto": 25.0, "aseqdip": 27.0})}
    group = summarise(problems)["4x"]
    margin = group["methods"]["aseqdip"]["margin_l1_wavelet_auto"]
    assert margin["mean"] == pytest.approx((1.0 + 0.5 + 2.0) / 3) and margin["worst"] == pytest.approx(0.5)
    assert group["methods"]["aseqdip"]["mean_psnr"] == pytest.approx((21.0 + 22.5 + 27.0) / 3)
    # the larger brain costs 0.5 dB of margin; no pair across anatomies
    assert group["size_change"] == {"brain 48x40 4x -> brain 96x80 4x": {"aseqdip": pytest.approx(-0.5)}}


def test_mri_quality_two_worker_processes_give_the_one_process_results(tmp_path, shared_data):
    subset = ["--set", 'problems=["brain 48x40 4x"]', "--set", 'methods=["aseqdip"]']
    one = _run("mri-quality", tmp_path / "one", shared_data, *subset)
    two = _run("mri-quality", tmp_path / "two", shared_data, *subset, "--set", "workers=2")
    first, second = (d["result"]["problems"]["brain 48x40 4x"]["methods"]["aseqdip"] for d in (one, two))
    assert first["metrics"] == second["metrics"]
    assert {k: v for k, v in first["curve"].items() if k != "seconds"} == \
        {k: v for k, v in second["curve"].items() if k != "seconds"}


def test_mri_quality_held_out_variant_stops_then_refits(tmp_path, shared_data):
    variant = '{"aseqdip_heldout": {"method": "aseqdip", "args": {"holdout_fraction": 0.3}}}'
    document = _run("mri-quality", tmp_path, shared_data, "--set", 'problems=["brain 48x40 4x"]',
                    "--set", 'methods=["aseqdip"]', "--set", f"method_variants={variant}")
    methods = document["result"]["problems"]["brain 48x40 4x"]["methods"]
    held, plain = methods["aseqdip_heldout"], methods["aseqdip"]
    assert set(held["held_out"]) == {"stopped_step", "kept_step", "refit_steps", "psnr_before_refit"}
    assert held["steps"] == (held["held_out"]["stopped_step"] or 4) + 2 and plain["steps"] == 4
    assert math.isfinite(held["held_out"]["psnr_before_refit"]) and held["metrics"]["psnr"] != plain["metrics"]["psnr"]


def test_mri_quality_ensemble_variant_scores_the_mean_of_its_members_at_its_own_steps(tmp_path, shared_data):
    variant = '{"aseqdip_k2": {"method": "aseqdip", "ensemble": 2, "steps": 3}}'
    document = _run("mri-quality", tmp_path, shared_data, "--set", 'problems=["brain 48x40 4x"]',
                    "--set", 'methods=["aseqdip"]', "--set", f"method_variants={variant}")
    methods = document["result"]["problems"]["brain 48x40 4x"]["methods"]
    ensemble, plain = methods["aseqdip_k2"], methods["aseqdip"]
    members = ensemble["ensemble"]["member_psnr"]
    assert ensemble["steps"] == 3 and plain["steps"] == 4 and "ensemble" not in plain
    assert len(members) == 2 and ensemble["curve"]["steps"][-1] == 3  # (members differ: test_ensemble.py)
    assert ensemble["metrics"]["psnr"] == pytest.approx(ensemble["curve"]["psnr"][-1], abs=1e-3)


def test_mri_quality_variant_starts_from_a_classical_image_and_is_scored_averaged_with_one(shared_data, monkeypatch):
    """``input_from``: the network's first input is the classical image (scaled as y is); ``mean_with``: a
    second entry scores the mean of the fitted image and the classical one."""
    from ugodit_pl.apps.benchmarks import mri_quality, panel
    from ugodit_pl.apps.benchmarks.mri_quality import PRESETS, classical_runs, fit_network, problem_metrics
    from ugodit_pl.complex import channels_to_complex, complex_to_channels

    settings = dict(PRESETS["tiny"], method_variants={"v": {"method": "aseqdip", "input_from": "sense",
                                                             "mean_with": "zero_filled"}})
    batch = panel.test_batch(panel.named("brain 48x40 4x"), shared_data, shared_data, cache=None,
                             coil_map_args=settings["coil_map_args"])
    support = panel.support_of(batch)
    runs = classical_runs(batch, settings)
    sense, zero_filled = runs["sense"]()[0][None], runs["zero_filled"]()[0][None]
    fitted, original = [], mri_quality.fit_method

    def recording_fit(method, fit_batch, steps, **kwargs):
        seconds = original(method, fit_batch, steps, **kwargs)
        fitted.append((method, fit_batch))
        return seconds

    monkeypatch.setattr(mri_quality, "fit_method", recording_fit)
    out = fit_network("v", batch, support, settings, None, 0, "cpu")
    (method, fit_batch), = fitted
    assert method.input_init == "reference" and out["v"]["settings"]["input_init"] == "reference"
    torch.testing.assert_close(fit_batch["reference"], complex_to_channels(sense))  # the method scales it as y
    mean = (channels_to_complex(method.reconstruction.detach()) + zero_filled) / 2
    assert out["v_mean_zero_filled"]["metrics"] == problem_metrics(mean, batch["target"], support)
    grid = out["v_mean_zero_filled"]["weight_grid"]
    assert list(grid) == [f"{k / 10:.1f}" for k in range(11)]
    assert grid["0.5"] == pytest.approx(out["v_mean_zero_filled"]["metrics"]["psnr"], abs=1e-4)
    assert grid["1.0"] == pytest.approx(out["v"]["metrics"]["psnr"], abs=1e-4)
    assert grid["0.0"] == pytest.approx(problem_metrics(zero_filled, batch["target"], support)["psnr"], abs=1e-4)
    assert out["v_mean_zero_filled"]["seconds"] == out["v"]["seconds"] > 0


@pytest.mark.parametrize("variant, match", [
    ({"method": "aseqdip", "ensemble": 2, "args": {"holdout_fraction": 0.3}}, "ensemble with held-out samples"),
    ({"method": "aseqdip", "ensemble": 0}, "ensemble"),
    ({"method": "aseqdip", "seeds": 2}, "unknown key"),
    ({"method": "aseqdip", "input_from": "l1_wavelet_tuned"}, "input_from must be one of"),
    ({"method": "aseqdip", "mean_with": "target"}, "mean_with must be one of"),
])
def test_mri_quality_refuses_a_bad_variant_before_fitting(variant, match):
    from ugodit_pl.apps.benchmarks.mri_quality import variant_budget, variant_of

    settings = {"steps": 4, "method_variants": {"v": variant}}
    with pytest.raises(ValueError, match=match):
        variant_of("v", settings)
        variant_budget("v", settings)


@pytest.mark.parametrize("overrides, named", [
    ({"methods": ["ugodit"], "method_variants": {"aseqdip_heldout": {"method": "aseqdip",
                                                                     "args": {"holdout_fraction": 0.3}}}},
     "variant 'aseqdip_heldout'"),
    ({"methods": ["aseqdip"], "method_args": {"aseqdip": {"holdout_fraction": 0.3}}}, "method 'aseqdip'"),
])
def test_mri_quality_refuses_held_out_samples_a_mask_cannot_serve_before_fitting(tmp_path, shared_data, monkeypatch,
                                                                                 overrides, named):
    """The tiny panel's 8x head samples no line outside its calibration region, so the held-out rule has
    nothing to hold out there (the 4x brain has 7 lines; 0.3 of them serves): the suite says so, naming
    problem and method or variant, before it pre-trains or fits anything (it used to fail after the
    other fits)."""
    from ugodit_pl.apps.benchmarks import mri_quality

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted before the held-out variant was checked")

    monkeypatch.setattr(mri_quality, "fit_method", no_fit)
    with pytest.raises(ValueError, match=rf"head 64x64 8x, {named}: holdout_fraction=0.3 holds out 0 of the 0"):
        mri_quality.run_mri_quality("tiny", tmp_path, data=shared_data, overrides=overrides)


@pytest.mark.parametrize("method_args", [{"lam": 0.4}, {"aseqdip": 0.4}])
def test_mri_quality_refuses_method_args_not_keyed_by_a_method_before_fitting(tmp_path, method_args):
    """A flat ``method_args`` (keyword arguments without the method's name) would be silently unused."""
    from ugodit_pl.apps.benchmarks.mri_quality import run_mri_quality

    with pytest.raises(ValueError, match="method_args maps a method or variant name"):
        run_mri_quality("tiny", tmp_path, data=tmp_path / "absent", overrides={"method_args": method_args})
    assert not any(tmp_path.iterdir())


def test_mri_quality_zero_filled_matches_an_independent_computation(shared_data):
    """The zero-filled PSNR of the suite equals a direct computation from the file (same mask, maps, target)."""
    import h5py

    from ugodit_pl.apps.benchmarks import panel
    from ugodit_pl.apps.benchmarks.mri_quality import PRESETS, classical_results
    from ugodit_pl.complex import ifft2c
    from ugodit_pl.metrics import psnr

    batch = panel.test_batch(panel.named("brain 48x40 4x"), shared_data, shared_data, cache=None,
                             coil_map_args=PRESETS["tiny"]["coil_map_args"])
    support = panel.support_of(batch)
    ours = classical_results(batch, support, PRESETS["tiny"])["zero_filled"]["metrics"]["psnr"]
    with h5py.File(shared_data / "mri" / "espirit_brain_full.h5", "r") as handle:
        kspace = torch.from_numpy(handle["kspace"][0])
    h, w = 48, 40
    top, left = (230 - h) // 2, (180 - w) // 2
    cropped = kspace[:, top : top + h, left : left + w]
    rss = ifft2c(cropped).abs().pow(2).sum(0).sqrt()
    maps = batch["operator"].coil_maps[0]
    mask = batch["operator"].mask[0]
    direct = (maps.conj() * ifft2c(cropped * mask)).sum(0).abs() * support[0, 0]
    expected = float(psnr(direct[None, None], rss[None, None]))
    assert ours == pytest.approx(expected, abs=1e-3)


def test_sr_quality_suite_tiny(tmp_path, shared_data):
    document = _run("sr-quality", tmp_path, shared_data)
    result = document["result"]
    assert set(result["methods"]) == {"bilinear", "dip", "self_guided_dip", "aseqdip", "ugodit"}
    assert result["pretraining"]["M"] == 4 and "00002.png" not in result["pretraining"]["images"]
    assert result["problem"]["measurement_shape"] == [8, 8]
    for name in ("dip", "self_guided_dip", "aseqdip", "ugodit"):
        entry = result["methods"][name]
        assert set(entry["metrics"]) == {"psnr", "ssim"} and entry["steps"] == 4
        _check_curve(entry["curves"]["ema"], 4)
    assert result["methods"]["ugodit"]["paper_psnr_256"] == 32.03
    assert (tmp_path / "sr-quality.png").is_file()


def test_early_stopping_suite_tiny(tmp_path, shared_data):
    document = _run("early-stopping", tmp_path, shared_data)
    task = document["result"]["tasks"]["denoise"]
    assert task["max_steps"] == 12
    assert task["best_psnr"] >= max(task["curve"]["psnr"]) - 1e-6
    assert task["steps_saved"] == task["max_steps"] - (task["es_stop_step"] or task["max_steps"])
    # the held-out rule beside it: checks every 2 steps, the kept step is the one of least held-out error
    errors = dict(task["holdout_errors"])
    kept, min_delta = None, HeldOutEarlyStopping().min_delta  # a new minimum must beat the kept one by min_delta
    for step in sorted(errors):
        kept = step if kept is None or errors[step] < (1.0 - min_delta) * errors[kept] else kept
    assert sorted(errors) == list(range(2, 2 + 2 * len(errors), 2)) and task["holdout_kept_step"] == kept
    assert task["refit_steps"] == 2 and math.isfinite(task["refit_psnr"])
    assert task["holdout_steps_saved"] == task["max_steps"] - (task["holdout_stop_step"] or task["max_steps"])
    assert (tmp_path / "early-stopping.png").is_file()
    text = _results_doc_module().render(tmp_path, tmp_path / "RESULTS.md")
    assert "| denoise | 0.10 | 2 |" in text and "held-out rule: lost" in text
    assert task["holdout_gap_db"] == pytest.approx(max(task["reconstruction_curve"]["psnr"]) - task["holdout_psnr"], abs=1e-3)


def test_overrides_are_applied_and_recorded(tmp_path, shared_data):
    document = _run("sr-quality", tmp_path, shared_data, "--set", "steps=2", "--set", 'methods=["aseqdip"]')
    assert document["overrides"] == {"steps": 2, "methods": ["aseqdip"]}
    assert set(document["result"]["methods"]) == {"bilinear", "aseqdip"}
    assert document["result"]["methods"]["aseqdip"]["curves"]["ema"]["steps"] == [1, 2]


def test_transfer_study_tiny(tmp_path, shared_data):
    document = _run("transfer-study", tmp_path, shared_data)
    result = document["result"]
    labels = [v["label"] for v in result["variants"]]
    assert labels == ["default", "encoder BatchNorm eval", "lambda = 4", "untrained encoder (1 pre-training step)",
                      "adjacent slices of the test scan (M = 4)"]
    # one pre-training shared by the first three variants, a second one (1 step) for the control, and the
    # papers' MRI group: the EPI slices next to the EPI test slice
    assert list(result["pretraining"]) == ["default", "untrained", "adjacent"]
    assert result["pretraining"]["untrained"]["steps"] == 1
    adjacent = result["pretraining"]["adjacent"]
    assert adjacent["M"] == 4 and [name.split("/")[-1] for name in adjacent["measurements"]] == \
        ["slice_003", "slice_004", "slice_005", "slice_006"]
    assert result["problem"]["name"] == "brain 48x40 4x"
    for v in result["variants"]:
        assert v["advantage_db"] == pytest.approx(v["final_psnr"] - v["aseqdip"]["final_psnr"])
        _check_curve(v["curve"], 4)
    assert result["variants"][2]["fit_kwargs"] == {"lam": 4.0}
    assert (tmp_path / "transfer-study.png").is_file()

    # the results document: the study's table and the hand-written decisions, included verbatim
    (tmp_path / "decisions.md").write_text("- lambda: 2 -> 0.1, see the table.\n", encoding="utf-8")
    text = _results_doc_module().render(tmp_path, tmp_path / "RESULTS.md")
    assert "## Defaults chosen from these results\n\n- lambda: 2 -> 0.1, see the table." in text
    assert "| encoder BatchNorm eval |" in text and "transfer study, UGoDIT - aSeqDIP" in text


def test_volume_suite_runs_ugodit_beside_its_untrained_encoder_control(tmp_path, shared_data):
    document = _run("volume", tmp_path, shared_data, "--set", 'methods=["ugodit", "ugodit_untrained"]',
                    "--set", 'modes=["warm"]', "--set", "baselines=false")
    result = document["result"]
    assert result["pretraining"]["steps"] == 2 and result["pretraining_untrained"]["steps"] == 1
    ugodit, control = (result["volumes"]["epi"]["methods"][m]["cold"] for m in ("ugodit", "ugodit_untrained"))
    assert ugodit["slice_psnr"] != control["slice_psnr"]  # the same fit behind another encoder
    assert {"ugodit epi", "ugodit_untrained epi"} <= set(result["summary"])


def test_volume_suite_chains_from_the_centre_outwards(tmp_path, shared_data):
    document = _run("volume", tmp_path, shared_data, "--set", 'order="centre_out"', "--set", 'modes=["warm"]',
                    "--set", "baselines=false")
    cold, warm = (document["result"]["volumes"]["epi"]["methods"]["aseqdip"][mode] for mode in ("cold", "warm"))
    assert cold["fit_order"] == [0, 1] and warm["fit_order"] == [1, 0]  # of slices 11 and 12: 12 first, then 11
    assert warm["steps"] == [3, 6] and warm["slice_psnr"][1] == cold["slice_psnr"][1]


def test_volume_suite_holds_out_on_the_warm_slices_only(tmp_path, shared_data):
    document = _run("volume", tmp_path, shared_data, "--set", 'heldout_slices="warm"', "--set", 'modes=["warm_stop"]',
                    "--set", "baselines=false")
    cold, chain = (document["result"]["volumes"]["epi"]["methods"]["aseqdip"][m] for m in ("cold", "warm_stop"))
    assert chain["steps"][0] == 6 and chain["slice_psnr"][0] == cold["slice_psnr"][0]  # the cold fit, every sample
    assert chain["gap_to_best"][0] is None and chain["gap_to_best"][1] is not None  # the rule judged where it ruled
    assert chain["steps"][1] == 5 and chain["stopped"][0] is False  # held out and capped at 3, then 2 refit steps
    assert "heldout_slices" in document["result"]["settings"]
    assert cli.main(["volume", "--preset", "tiny", "--out", str(tmp_path), "--data", str(shared_data),
                     "--set", 'heldout_slices="first"']) == 2


def _results_doc_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "make_results_doc.py"
    spec = importlib.util.spec_from_file_location("make_results_doc", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_named_variant_run_with_method_args(tmp_path, shared_data):
    argv = ["sr-quality", "--preset", "tiny", "--out", str(tmp_path), "--threads", "1", "--data", str(shared_data),
            "--name", "sr-quality_sgdip-lr", "--set", 'methods=["self_guided_dip"]',
            "--set", 'method_args={"self_guided_dip": {"input_lr": 0.01}}']
    assert cli.main(argv) == 0
    document = read_json(tmp_path / "sr-quality_sgdip-lr.json")
    assert document["name"] == "sr-quality_sgdip-lr" and document["plots"] == ["sr-quality_sgdip-lr.png"]
    assert document["result"]["methods"]["self_guided_dip"]["settings"]["input_lr"] == 0.01
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr-quality_sgdip-lr.json", "sr-quality_sgdip-lr.png"]
    assert cli.main(["speed", "--preset", "tiny", "--out", str(tmp_path), "--name", "other"]) == 2


def test_transfer_study_presets_name_known_variants():
    from ugodit_pl.apps.benchmarks.transfer_study import PRESETS, _variant

    for preset in PRESETS.values():
        for label in preset["variants"]:
            assert _variant(label)[0] == label
    with pytest.raises(ValueError, match="unknown transfer-study variant"):
        _variant("no such variant")


def test_volume_suite_tiny(tmp_path, shared_data):
    """Cold, warm and warm-with-stopping chains over two slices, with the classical baselines and the plot."""
    document = _run("volume", tmp_path, shared_data)
    volume = document["result"]["volumes"]["epi"]
    runs = volume["methods"]["aseqdip"]
    assert runs["cold"]["steps"] == [6, 6] and runs["warm"]["steps"] == [6, 3]
    assert runs["warm"]["slice_psnr"][0] == runs["cold"]["slice_psnr"][0]  # the warm chain starts with the cold fit
    # stopped (patience 2) by its cap: 6 steps cold, 3 warm; then 2 refit steps on all the samples
    first, second = runs["warm_stop"]["steps"]
    assert 5 <= first <= 8 and second == 5 and len(runs["warm_stop"]["gap_to_best"]) == 2
    assert len(runs["warm_stop"]["slice_psnr_before_refit"]) == 2
    assert math.isfinite(runs["warm_stop"]["volume_before_refit"]["psnr"])
    for name in CLASSICAL:
        assert math.isfinite(volume["methods"][name]["volume"]["psnr"])
    for name in ("l1_wavelet_auto", "total_variation_auto"):
        assert all(lamda in (1e-3, 1e-2) for lamda in volume["methods"][name]["lamdas"])
        assert set(volume["methods"][name]["rules"]) == {"cv"}  # both slices hold out lines
        # each slice's scores per lambda, and the oracle's PSNR per lambda: a lambda rule can be scored from the file
        scores, grids = volume["methods"][name]["scores"], volume["methods"][name.replace("_auto", "_tuned")]["slice_grids"]
        assert len(scores) == len(grids) == 2 and all(set(s) == set(g) == {"0.001", "0.01"} for s, g in zip(scores, grids))
        for lamda, score in zip(volume["methods"][name]["lamdas"], scores):  # the errors the choice was made from
            assert lamda == least_of_ties({float(k): v for k, v in score.items()})
    row = document["result"]["summary"]["aseqdip epi"]
    assert row["warm_time_ratio"] == round(runs["warm"]["seconds"] / runs["cold"]["seconds"], 3)
    assert row["warm_stop_psnr_change_before_refit"] == round(
        runs["warm_stop"]["volume_before_refit"]["psnr"] - runs["cold"]["volume"]["psnr"], 3)
    assert (tmp_path / "volume_epi.png").is_file()

    # the results document: the projection-only image beside the refit one; a superseded file says so
    text = _results_doc_module().render(tmp_path, tmp_path / "RESULTS.md")
    assert "| aseqdip: warm starts + held-out stopping, before the refit |" in text and "then 2 steps of refit" in text
    document["superseded"] = "run on another simulation"
    (tmp_path / "volume.json").write_text(json.dumps(document))
    text = _results_doc_module().render(tmp_path, tmp_path / "RESULTS.md")
    assert "**Superseded**: run on another simulation" in text and "[volume.json, preset tiny, superseded]" in text
