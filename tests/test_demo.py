"""``ugodit demo`` at a tiny size: its three files, their content, the table's honesty."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ugodit_pl.apps.cli import main
from ugodit_pl.apps.demo import UGODIT, DemoSettings, assemble_results, verdict, FitResult

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        return image.size


@pytest.mark.parametrize("task", ["mri", "sr"])
def test_tiny_demo_writes_results_comparison_and_curve(tmp_path, task, capsys):
    out = tmp_path / "demo"
    num_test = 2 if task == "mri" else 1
    args = ["demo", "--task", task, "--size", "32", "--steps", "3", "--pretrain-steps", "2", "--num-pretrain", "2",
            "--num-test", str(num_test), "--out", str(out), "--quiet", "--accelerator", "cpu"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == task
    baseline = "zero-filled" if task == "mri" else "bilinear upsampling"
    assert list(results["methods"]) == [baseline, "UGoDIT", "aSeqDIP", "DIP"]
    for name, values in results["methods"].items():
        assert set(values) >= {"psnr", "ssim", "steps", "seconds"}, name
        assert isinstance(values["psnr"], float) and -1.0 <= values["ssim"] <= 1.0
        assert values["steps"] == (0 if name == baseline else 3)
        assert values["seconds"] >= 0
        assert len(values["psnr_each"]) == len(values["ssim_each"]) == num_test
        assert values["psnr"] == pytest.approx(sum(values["psnr_each"]) / num_test, abs=1e-3)
    assert len(results["test_measurements"]) == num_test
    assert results["methods"]["UGoDIT"]["pretrain_steps"] == 2
    assert results["pretraining"]["num_measurements"] == 2
    assert results["settings"]["size"] == 32 and results["settings"]["steps"] == 3
    # the PSNR curve ends with the reported value (the last output, output="last")
    for name in ("UGoDIT", "aSeqDIP", "DIP"):
        step, value = results["psnr_curves"][name][-1]
        assert step == 3 and value == pytest.approx(results["methods"][name]["psnr"], abs=1e-3)
    width, height = read_png(out / "comparison.png")
    # per measurement: ground truth + input + 3 methods in a row, their errors in the next row
    assert width / height == pytest.approx(5 * 2.3 / (4.7 * num_test), rel=0.05)
    read_png(out / "psnr_curve.png")
    assert (out / "transferable_weights.pt").is_file()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "seconds" in printed and "32x32" in printed


def test_demo_rejects_a_size_the_networks_cannot_take(tmp_path, capsys):
    assert main(["demo", "--size", "30", "--out", str(tmp_path), "--quiet"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--size must be a multiple of 8" in lines[0]
    assert not (tmp_path / "results.json").exists()


def test_verdict_tells_when_ugodit_loses():
    def fit(name, psnr):
        return FitResult(name, 200, 1.0, psnr, 0.5, [[10.0, psnr - 5], [50.0, psnr], [200.0, psnr]],
                         psnr_each=[psnr - 1, psnr + 1], ssim_each=[0.4, 0.6])

    settings = DemoSettings.for_task("mri")
    base = FitResult("zero-filled", 0, 0.0, 20.0, 0.6, [])
    losing = assemble_results(settings, base, fit("pre", 25.0), [fit(UGODIT, 19.0), fit("aSeqDIP", 21.0),
                                                                  fit("DIP", 18.0)], 1.0)
    assert "does NOT beat aSeqDIP" in verdict(losing) and "2.00 dB behind" in verdict(losing)
    assert losing["methods"][UGODIT]["psnr_early"] == 19.0 and losing["early_step"] == 50
    winning = assemble_results(settings, base, fit("pre", 25.0), [fit(UGODIT, 22.5), fit("aSeqDIP", 21.0),
                                                                   fit("DIP", 18.0)], 1.0)
    assert verdict(winning).startswith("UGoDIT beats the best other method (aSeqDIP) by 1.50 dB on average")
    assert "ahead on 2 of 2 held-out measurements" in verdict(winning)


def test_default_settings_are_the_documented_ones():
    mri = DemoSettings.for_task("mri")
    assert (mri.size, mri.steps, mri.pretrain_steps, mri.num_pretrain, mri.num_test) == (64, 200, 200, 4, 3)
    assert mri.network_args == {"channels": [16, 32, 64, 64]}
    sr = DemoSettings.for_task("sr", steps=7)
    assert sr.steps == 7 and sr.network == "skip"
    with pytest.raises(ValueError, match="task must be one of"):
        DemoSettings.for_task("ct")
