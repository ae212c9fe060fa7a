"""``ugodit classical``: the classical baselines of a folder of fastMRI files, on the same measurement as a fit
config gives a network, written as ``ugodit reconstruct`` writes volumes; resuming; bad input refused first."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fastmri_fakes import write_fake_volume
from ugodit_pl.apps.cli import main


@pytest.fixture
def volume(tmp_path):
    from ugodit_pl.datamodules import make_mri_demo

    folder = tmp_path / "data"
    make_mri_demo(folder, num_files=1, num_slices=3, size=(32, 32), num_coils=2)
    return folder


def run(data, out, *extra) -> int:
    return main(["classical", "--data", str(data), "--out", str(out), "--quiet", *extra])


def written(out: Path):
    with h5py.File(out / "demo_mri_00.h5") as handle:
        return (handle["reconstruction"][()], list(handle.attrs["slices"]),
                json.loads(str(handle.attrs["slice_metrics"])), str(handle.attrs["method"]))


def config_file(tmp_path: Path, **data_args) -> Path:
    import yaml

    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump({"data": {"class_path": "ugodit_pl.datamodules.FastMRIDataModule",
                                             "init_args": {"test_files": "ignored.h5", **data_args}}}))
    return path


def test_total_variation_of_each_slice_of_the_configs_measurement(volume, tmp_path):
    from ugodit_pl import classical
    from ugodit_pl.datamodules import FastMRIDataModule

    data_args = {"acceleration": 3.0, "center_fraction": 0.2, "mask_seed": 5}
    out = tmp_path / "tv"
    config = config_file(tmp_path, **data_args)
    assert run(volume, out, "--lamda", "1e-3", "--slices", "0:2", "--config", str(config)) == 0
    images, slices, records, method = written(out)
    assert slices == [0, 1] and method == "total_variation"
    for k, record in enumerate(records):
        assert record["lamda"] == 1e-3 and record["lamda_rule"] == "given" and record["psnr"] > 10.0
        datamodule = FastMRIDataModule(test_files=None, test_slices=[(str(volume / "demo_mri_00.h5"), k)], **data_args)
        datamodule.setup("fit", rank=0, world_size=1)
        batch = datamodule.batch
        expected = classical.total_variation(batch["y"][0], batch["operator"].mask[0], batch["operator"].coil_maps[0],
                                             lamda=1e-3)
        scale = float(expected.abs().max())
        np.testing.assert_allclose(images[k], expected.abs().numpy(), rtol=1e-5, atol=1e-6 * scale)
    summary = json.loads((out / "classical_summary.json").read_text())
    assert summary["method"] == "total_variation" and summary["data_args"] == data_args
    assert [item["status"] for item in summary["items"]] == ["reconstructed", "reconstructed"]
    assert summary["mean_psnr"] == pytest.approx(np.mean([r["psnr"] for r in records]), abs=1e-3)


def test_the_automatic_lambda_is_the_rules_choice_and_is_recorded(volume, tmp_path):
    from ugodit_pl import lamda_rules
    from ugodit_pl.datamodules import FastMRIDataModule

    out = tmp_path / "l1"
    assert run(volume, out, "--method", "l1_wavelet", "--slices", "1") == 0
    _, slices, (record,), _ = written(out)
    datamodule = FastMRIDataModule(test_files=None, test_slices=[(str(volume / "demo_mri_00.h5"), 1)])
    datamodule.setup("fit", rank=0, world_size=1)
    batch = datamodule.batch
    chosen = lamda_rules.automatic_lamda(batch["y"][0], batch["operator"].mask[0], batch["operator"].coil_maps[0],
                                         method="l1_wavelet", rule="auto")
    assert slices == [1] and record["lamda"] == chosen.lamda
    assert record["lamda_rule"] == (f"held-out {chosen.held_out[0]} ({chosen.held_out[1]:g})" if chosen.held_out
                                    else "discrepancy")


def test_an_interrupted_run_resumes_to_the_same_volume(volume, tmp_path, monkeypatch):
    from ugodit_pl.apps import classical_volumes

    whole = tmp_path / "whole"
    assert run(volume, whole, "--method", "sense") == 0
    original, calls = classical_volumes._reconstruct_item, []

    def reconstruct_item(plan, item, writer):
        calls.append(item.label)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(plan, item, writer)

    handler = signal.getsignal(signal.SIGINT)
    out = tmp_path / "resumed"
    monkeypatch.setattr(classical_volumes, "_reconstruct_item", reconstruct_item)
    try:
        assert run(volume, out, "--method", "sense") == 130
    finally:
        signal.signal(signal.SIGINT, handler)
    assert not (out / "demo_mri_00.h5").exists()  # the volume is assembled after its last slice
    monkeypatch.setattr(classical_volumes, "_reconstruct_item", original)
    assert run(volume, out, "--method", "sense") == 0
    summary = json.loads((out / "classical_summary.json").read_text())
    assert [item["status"] for item in summary["items"]] == ["already written", "already written", "reconstructed"]
    np.testing.assert_array_equal(written(out)[0], written(whole)[0])
    assert [r["lamda"] for r in written(out)[2]] == [0.01] * 3 and summary["lamda"] == 0.01


def test_zero_filled_matches_the_library_function_and_an_existing_volume_is_kept(volume, tmp_path):
    from ugodit_pl import classical
    from ugodit_pl.datamodules import FastMRIDataModule

    out = tmp_path / "zf"
    assert run(volume, out, "--method", "zero_filled", "--slices", "2") == 0
    datamodule = FastMRIDataModule(test_files=None, test_slices=[(str(volume / "demo_mri_00.h5"), 2)])
    datamodule.setup("fit", rank=0, world_size=1)
    batch = datamodule.batch
    image = classical.zero_filled(batch["y"][0], batch["operator"].coil_maps[0], mask=batch["operator"].mask[0])
    np.testing.assert_allclose(written(out)[0][0], image.abs().numpy(), rtol=1e-5, atol=1e-7)
    assert "lamda" not in written(out)[2][0]
    assert run(volume, out, "--method", "zero_filled", "--slices", "2") == 0
    summary = json.loads((out / "classical_summary.json").read_text())
    assert [item["status"] for item in summary["items"]] == ["already written"]


@pytest.mark.parametrize("extra, message", [
    (("--method", "zero_filled", "--lamda", "1e-3"), "--lamda 1e-3: zero-filled reconstruction has no lambda"),
    (("--method", "sense", "--lamda", "auto"), "--lamda auto chooses the lambda of total_variation or l1_wavelet"),
    (("--lamda", "-1"), r"--lamda must be 'auto' or a number >= 0, got '-1'"),
    (("--lamda", "small"), r"--lamda must be 'auto' or a number >= 0, got 'small'"),
    (("--method", "pics"), "argument --method: invalid choice: 'pics'"),
    (("--device", "gpu0"), "--device gpu0"),
    *([] if torch.cuda.is_available() else [(("--device", "cuda"), "--device cuda: this torch sees no CUDA device")]),
])
def test_bad_options_are_refused_before_any_slice(volume, tmp_path, capsys, extra, message):
    assert run(volume, tmp_path / "out", *extra) != 0
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out" / "demo_mri_00.h5").exists()


def test_bad_data_is_named_before_any_slice(tmp_path, capsys):
    for folder in ("single", "images", "mixed"):
        (tmp_path / folder).mkdir()
    single = write_fake_volume(tmp_path / "single" / "file_single.h5", single_coil=True)
    assert run(single.parent, tmp_path / "out") == 1
    assert f"{single}: single-coil k-space; ugodit classical needs multi-coil files" in capsys.readouterr().err
    images = tmp_path / "images"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(images / "a.png")
    assert run(images, tmp_path / "out") == 1
    assert "holds images: ugodit classical reconstructs multi-coil fastMRI k-space" in capsys.readouterr().err
    good = write_fake_volume(tmp_path / "mixed" / "file_a.h5")
    broken = tmp_path / "mixed" / "file_b.h5"
    write_fake_volume(broken)
    with h5py.File(broken, "r+") as handle:
        kspace = handle["kspace"][()]
        kspace[1, 0, 0, 0] = np.nan
        handle["kspace"][...] = kspace
    assert run(good.parent, tmp_path / "out") == 1
    assert re.search(r"file_b\.h5 slice 1", capsys.readouterr().err)
    assert not (tmp_path / "out" / "file_a.h5").exists()


def test_a_config_for_images_is_refused(volume, tmp_path, capsys):
    import yaml

    config = tmp_path / "sr.yaml"
    config.write_text(yaml.safe_dump({"data": {"class_path": "ugodit_pl.datamodules.DegradedImageDataModule"}}))
    assert run(volume, tmp_path / "out", "--config", str(config)) == 1
    assert "its data module is ugodit_pl.datamodules.DegradedImageDataModule" in capsys.readouterr().err
