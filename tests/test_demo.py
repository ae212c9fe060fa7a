"""``ugodit demo`` at a tiny size: its files, their content, 80 columns, the verdict's honesty."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ugodit_pl.apps.cli import main
from ugodit_pl.apps.demo import (UGODIT, UNTRAINED, DemoSettings, FitResult, assemble_results, detail_window,
                                  seconds_to_reach, verdict)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        return image.size


@pytest.mark.parametrize("task", ["mri", "sr"])
def test_tiny_demo_writes_results_comparison_and_curve(tmp_path, task, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = tmp_path / "demo"
    num_test = 2 if task == "mri" else 1
    args = ["demo", "--task", task, "--size", "32", "--steps", "3", "--pretrain-steps", "2", "--num-pretrain", "2",
            "--num-test", str(num_test), "--out", str(out), "--accelerator", "cpu"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == task
    baselines = ["zero-filled", "L1-wavelet", "CG-SENSE", "total variation"] if task == "mri" else ["bilinear"]
    assert list(results["methods"]) == baselines + ["DIP", "aSeqDIP", "UGoDIT", "UGoDIT untrained"]
    assert results["reference"] == baselines[1 if task == "mri" else 0]
    for name, values in results["methods"].items():
        assert set(values) >= {"psnr", "ssim", "steps", "seconds"}, name
        assert isinstance(values["psnr"], float) and -1.0 <= values["ssim"] <= 1.0
        assert values["steps"] == (0 if name in baselines else 3)
        assert values["seconds"] >= 0
        assert len(values["psnr_each"]) == len(values["ssim_each"]) == num_test
        assert values["psnr"] == pytest.approx(sum(values["psnr_each"]) / num_test, abs=1e-3)
        assert ("seconds_to_reference" in values) == (name not in baselines)
    if task == "mri":
        assert results["test_measurements"] == ["head s1045", "EPI brain 12"]
        # the zero-filled image is A^H y: below the reconstructions that use a model
        assert results["methods"]["zero-filled"]["psnr"] < results["methods"]["CG-SENSE"]["psnr"]
    assert results["methods"]["UGoDIT"]["pretrain_steps"] == 2
    assert results["pretraining"]["num_measurements"] == 2
    assert results["settings"]["size"] == 32 and results["settings"]["steps"] == 3
    # each curve is [step, seconds, PSNR], ending with the reported value (the method's output, its EMA)
    for name in ("DIP", "aSeqDIP", "UGoDIT", "UGoDIT untrained"):
        curve = results["psnr_curves"][name]
        step, seconds, value = curve[-1]
        assert step == 3 and value == pytest.approx(results["methods"][name]["psnr"], abs=1e-3)
        assert [point[1] for point in curve] == sorted(point[1] for point in curve) and seconds >= 0
    width, height = read_png(out / "comparison.png")
    # per measurement: ground truth + every reconstruction in a row, their errors in the next row
    columns = 1 + len(results["methods"])
    assert width / height == pytest.approx(columns * 2.0 / (4.3 * num_test), rel=0.05)
    read_png(out / "psnr_curve.png")
    assert (out / "transferable_weights.pt").is_file() and (out / "untrained_encoder.pt").is_file()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "s to " in printed and "32x32" in printed
    # readable at 80 columns: no line longer, nothing cut ("200/2…")
    assert max(len(line) for line in printed.splitlines()) <= 80 and "\u2026" not in printed


def test_seconds_to_reach_and_the_detail_window():
    assert seconds_to_reach([[10, 1.5, 20.0], [20, 3.0, 26.0]], 26.0) == 3.0
    assert seconds_to_reach([[10, 1.5, 20.0]], 26.0) is None and seconds_to_reach([[10, 1.5, 20.0]], None) is None
    image = np.zeros((40, 40))
    image[30:36, 4:10] = 1.0  # the only detail: bottom left
    top, left, side = detail_window(image, 0.25)
    assert side == 10 and top <= 30 and top + side >= 36 and left <= 4 and left + side >= 10


def test_demo_rejects_a_size_the_networks_cannot_take(tmp_path, capsys):
    assert main(["demo", "--size", "30", "--out", str(tmp_path), "--quiet"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--size must be a multiple of 8" in lines[0]
    assert not (tmp_path / "results.json").exists()


def test_verdict_tells_when_ugodit_loses_and_whether_transfer_helps():
    def fit(name, psnr):
        return FitResult(name, 200, 1.0, psnr, 0.5, [[10.0, 0.1, psnr - 5], [50.0, 0.5, psnr], [200.0, 2.0, psnr]],
                         psnr_each=[psnr - 1, psnr + 1], ssim_each=[0.4, 0.6])

    settings = DemoSettings.for_task("mri")
    baselines = [FitResult("zero-filled", 0, 0.0, 20.0, 0.6, [], psnr_each=[19.0, 21.0], ssim_each=[0.6, 0.6]),
                 FitResult("L1-wavelet", 0, 1.0, 21.5, 0.6, [], psnr_each=[20.5, 22.5], ssim_each=[0.6, 0.6])]
    losing = assemble_results(settings, baselines, [fit("DIP", 18.0), fit("aSeqDIP", 21.0), fit(UGODIT, 19.0),
                                                    fit(UNTRAINED, 18.9)], 5.0, 1.0)
    assert "does NOT beat L1-wavelet here (2.50 dB behind on average; ahead on 0 of 2" in verdict(losing)
    assert "0.10 dB above the untrained one (within a single fit's noise" in verdict(losing)
    assert losing["methods"]["aSeqDIP"]["seconds_to_reference"] is None
    assert losing["methods"][UGODIT]["pretrain_seconds"] == 5.0
    winning = assemble_results(settings, baselines, [fit("DIP", 18.0), fit("aSeqDIP", 21.0), fit(UGODIT, 22.5),
                                                     fit(UNTRAINED, 21.5)], 5.0, 1.0)
    assert verdict(winning).startswith("UGoDIT beats the best other method (L1-wavelet) by 1.00 dB on average")
    assert "ahead on 2 of 2 test measurements" in verdict(winning)
    assert "1.00 dB above the untrained one." in verdict(winning)
    assert winning["methods"][UGODIT]["seconds_to_reference"] == 0.5


def test_default_settings_are_the_documented_ones():
    mri = DemoSettings.for_task("mri")
    assert (mri.size, mri.steps, mri.pretrain_steps, mri.num_pretrain, mri.num_test) == (96, 250, 200, 3, 2)
    quick = DemoSettings.for_task("mri", quick=True, steps=5)
    assert (quick.size, quick.steps) == (64, 5)
    assert mri.network_args == {"channels": [16, 32, 64, 64]}
    sr = DemoSettings.for_task("sr", steps=7)
    assert sr.steps == 7 and sr.network == "skip"
    with pytest.raises(ValueError, match="task must be one of"):
        DemoSettings.for_task("ct")
    with pytest.raises(ValueError, match="--num-test must be at most 2"):
        DemoSettings.for_task("mri", num_test=3)
