"""``ugodit compare``: output folders side by side on their common slices, against one target."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ugodit_pl.apps.cli import main


def write_folder(folder: Path, images: dict, targets: dict, method: str = "Method") -> Path:
    """Volumes as ``ReconstructionWriter`` writes them: {(file, slice): (H, W) magnitude}, with their targets."""
    from ugodit_pl.callbacks import ReconstructionWriter

    writer = ReconstructionWriter(folder)
    writer.check_output_dir()
    for (name, number), image in images.items():
        channels = torch.stack([torch.as_tensor(image, dtype=torch.float32), torch.zeros(image.shape)])
        writer.write_slice(name, number, channels, method, "{}", {}, torch.as_tensor(targets[(name, number)])[None])
    writer.assemble_all()
    return folder


@pytest.fixture
def slices():
    """Two volumes of different sizes (as fastMRI's files are), two slices each."""
    generator = np.random.default_rng(0)
    targets = {(name, s): generator.random(size).astype(np.float32) for name, size in (("a.h5", (12, 10)),
                                                                                       ("b.h5", (16, 12)))
               for s in (0, 1)}
    return targets, generator


def test_each_folder_against_the_first_slice_by_slice(slices, tmp_path, capsys):
    from ugodit_pl.metrics import mri_metrics

    targets, generator = slices
    good = {key: t + 0.01 * generator.standard_normal(t.shape).astype(np.float32) for key, t in targets.items()}
    poor = {key: t + 0.05 * generator.standard_normal(t.shape).astype(np.float32) for key, t in targets.items()}
    del poor[("b.h5", 1)]  # only in the first folder: left out of the comparison
    first = write_folder(tmp_path / "poor", poor, targets, "TotalVariation")
    second = write_folder(tmp_path / "good", good, targets, "UGoDITFit")
    report = tmp_path / "compare.json"
    assert main(["compare", str(first), str(second), "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["slices"] == ["a.h5/slice_000", "a.h5/slice_001", "b.h5/slice_000"]
    keys = [("a.h5", 0), ("a.h5", 1), ("b.h5", 0)]
    for entry, images in zip(result["folders"], (poor, good)):  # the volumes hold magnitudes
        expected = [float(mri_metrics(torch.from_numpy(np.abs(images[k]))[None, None],
                                      torch.from_numpy(targets[k])[None, None])["psnr"][0]) for k in keys]
        np.testing.assert_allclose(entry["psnr"], expected, atol=1e-3)
    reference, other = result["folders"]
    difference = np.asarray(other["psnr"]) - np.asarray(reference["psnr"])
    assert other["psnr_minus_first"]["mean"] == pytest.approx(difference.mean(), abs=1e-3)
    assert other["psnr_minus_first"]["slices_above"] == 3 and other["psnr_minus_first"]["worst"] > 10.0
    assert reference["label"] == "poor (TotalVariation)" and sorted(other["volumes"]) == ["a.h5", "b.h5"]
    assert "above it on 3 of 3 slices" in " ".join(capsys.readouterr().out.split())


def test_folders_scored_against_different_targets_do_not_compare(slices, tmp_path, capsys):
    targets, _ = slices
    shifted = dict(targets)
    shifted[("b.h5", 0)] = targets[("b.h5", 0)] * 1.5
    first = write_folder(tmp_path / "one", targets, targets)
    second = write_folder(tmp_path / "two", targets, shifted)
    assert main(["compare", str(first), str(second)]) == 1
    assert re.search(r"b\.h5 slice 0: .* scored it against different targets", capsys.readouterr().err)


def test_bad_folders_are_named(slices, tmp_path, capsys):
    targets, _ = slices
    first = write_folder(tmp_path / "one", {("a.h5", 0): targets[("a.h5", 0)]}, targets)
    second = write_folder(tmp_path / "two", {("b.h5", 1): targets[("b.h5", 1)]}, targets)
    assert main(["compare", str(first), str(second)]) == 1
    assert "hold no slice in common" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", str(first), str(empty)]) == 1
    assert f"{empty}: no reconstructed volume with a target" in capsys.readouterr().err
    assert main(["compare", str(first), str(tmp_path / "missing")]) == 1
    assert "missing: no such folder" in capsys.readouterr().err
    assert main(["compare", str(first)]) == 1
    assert "needs two or more folders, got 1" in capsys.readouterr().err
