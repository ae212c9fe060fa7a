"""ReconstructionWriter: fastMRI-format volumes over chunked, interrupted and resumed runs; PNGs."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

import ugodit_pl
from callback_problems import TINY_UNET, image_batch, loader, mri_batch, trainer
from ugodit_pl.callbacks import ReconstructionWriter, WMVEarlyStopping
from ugodit_pl.methods import ASeqDIP
from ugodit_pl.metrics import reconstruction_metrics

ITEMS = [("a.h5", 0), ("a.h5", 1), ("a.h5", 2), ("b.h5", 0), ("b.h5", 1), ("b.h5", 2)]
CHUNKS = [ITEMS[0:2], ITEMS[2:4], ITEMS[4:6]]


def magnitude(rows: torch.Tensor) -> np.ndarray:
    return rows.pow(2).sum(dim=1).sqrt().numpy().astype(np.float32)


class Expect(pl.Callback):
    """Records the magnitude of each row's reconstruction at the end of training (before the writer writes)."""

    def __init__(self, keys, expected):
        self.keys, self.expected = keys, expected

    def on_train_end(self, trainer, pl_module):
        for k, key in enumerate(self.keys):
            self.expected[key] = magnitude(pl_module.reconstruction)[k]


def fit_chunk(writer, chunk, expected, *, extra_callbacks=(), steps=2):
    """What the driver does: fit the pending slices of a chunk with the writer; record what was fitted."""
    todo = writer.pending(chunk)
    if not todo:
        return []
    # different data per chunk, so a slice written under the wrong key is detected
    seed = 100 * ("b" in todo[0][0]) + todo[0][1]
    batch = mri_batch(num=len(todo), size=16, seed=seed, fnames=[f for f, _ in todo], slices=[s for _, s in todo])
    method = ASeqDIP(num_measurements=len(todo), network="unet", network_args=TINY_UNET, lr=0.01)
    trainer(steps, [writer, Expect(todo, expected), *extra_callbacks]).fit(method, loader(batch))
    return todo


def read_volume(path):
    with h5py.File(path, "r") as handle:
        return handle["reconstruction"][()], dict(handle.attrs)


def test_chunks_interrupted_and_resumed_lose_and_duplicate_nothing(tmp_path):
    expected = {}
    writer = ReconstructionWriter(tmp_path)
    assert fit_chunk(writer, CHUNKS[0], expected) == CHUNKS[0]
    volume, attrs = read_volume(tmp_path / "a.h5")
    assert list(attrs["slices"]) == [0, 1] and volume.shape == (2, 16, 16)

    # chunk 2 is interrupted between writing its slices and assembling the volumes
    def crash():
        raise RuntimeError("killed while assembling")

    writer.assemble_all = crash
    with pytest.raises(RuntimeError, match="killed"):
        fit_chunk(writer, CHUNKS[1], expected)
    assert sorted(p.name for p in (tmp_path / ".partial").iterdir()) == ["a.h5", "b.h5"]
    assert not (tmp_path / "b.h5").exists()

    # chunk 3 is interrupted inside the fit: nothing of it is written
    class Kill(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            raise RuntimeError("killed while fitting")

    fresh = ReconstructionWriter(tmp_path)
    with pytest.raises(RuntimeError, match="killed while fitting"):
        fit_chunk(fresh, CHUNKS[2], {}, extra_callbacks=[Kill()])
    assert fresh.pending(ITEMS) == [("b.h5", 1), ("b.h5", 2)]

    # the re-run (a new process: a new writer) goes over every chunk again and fits only what is missing
    rerun = ReconstructionWriter(tmp_path)
    fitted = [fit_chunk(rerun, chunk, expected) for chunk in CHUNKS]
    assert fitted == [[], [], [("b.h5", 1), ("b.h5", 2)]]
    assert rerun.pending(ITEMS) == []
    for fname in ("a.h5", "b.h5"):
        volume, attrs = read_volume(tmp_path / fname)
        assert list(attrs["slices"]) == [0, 1, 2] and volume.shape == (3, 16, 16) and volume.dtype == np.float32
        for k in range(3):
            np.testing.assert_allclose(volume[k], expected[(fname, k)], rtol=1e-6)
        assert attrs["method"] == "ASeqDIP" and attrs["library_version"] == ugodit_pl.__version__
        assert json.loads(attrs["settings"])["network_args"] == TINY_UNET
    assert not (tmp_path / ".partial").exists()            # every partial slice made it into its volume
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_fit_of_written_slices_is_refused_before_its_first_step_unless_overwrite(tmp_path):
    expected = {}
    writer = ReconstructionWriter(tmp_path)
    fit_chunk(writer, [("a.h5", 4)], expected)
    first = read_volume(tmp_path / "a.h5")[0].copy()
    batch = mri_batch(num=1, size=16, seed=9, fnames=["a.h5"], slices=[4])
    steps = []

    class Count(pl.Callback):
        def on_train_batch_end(self, *args):
            steps.append(1)

    with pytest.raises(ValueError, match=r"already holds \[\('a.h5', 4\)\].*overwrite=True"):
        trainer(2, [writer, Count()]).fit(ASeqDIP(network="unet", network_args=TINY_UNET, lr=0.05), loader(batch))
    assert not steps  # refused before any fitting
    np.testing.assert_array_equal(read_volume(tmp_path / "a.h5")[0], first)
    overwriting = ReconstructionWriter(tmp_path, overwrite=True)
    method = ASeqDIP(network="unet", network_args=TINY_UNET, lr=0.05)
    trainer(2, [overwriting]).fit(method, loader(batch))
    np.testing.assert_allclose(read_volume(tmp_path / "a.h5")[0][0], magnitude(method.reconstruction)[0], rtol=1e-6)
    assert not np.allclose(read_volume(tmp_path / "a.h5")[0], first)


def test_the_early_stopping_output_is_what_gets_written(tmp_path):
    batch = mri_batch(num=2, size=16, fnames=["c.h5", "c.h5"], slices=[3, 1])
    writer = ReconstructionWriter(tmp_path, write_png=True)
    es = WMVEarlyStopping(window=3, patience=3)
    method = ASeqDIP(num_measurements=2, network="unet", network_args=TINY_UNET, lr=0.01)
    trainer(60, [writer, es]).fit(method, loader(batch))        # the writer first: it still sees ES's choice
    volume, attrs = read_volume(tmp_path / "c.h5")
    assert list(attrs["slices"]) == [1, 3]                         # sorted by slice number
    kept = magnitude(method.final_output)
    np.testing.assert_allclose(volume[0], kept[1], rtol=1e-6)     # slice 1 was row 1 of the batch
    np.testing.assert_allclose(volume[1], kept[0], rtol=1e-6)
    assert not np.allclose(volume[1], magnitude(method.ema_output)[0])
    png = np.asarray(Image.open(tmp_path / "c_slice003.png"))
    np.testing.assert_array_equal(png, np.round(np.clip(kept[0] / kept[0].max(), 0, 1) * 255).astype(np.uint8))


def test_natural_images_are_written_as_pngs_with_their_metrics_and_not_refitted(tmp_path):
    batch = image_batch(num=2, size=16, names=["00002.png", "faces/00013"])
    net = {**TINY_UNET, "in_channels": 3, "out_channels": 3}
    writer = ReconstructionWriter(tmp_path)
    method = ASeqDIP(num_measurements=2, network="unet", network_args=net, lr=0.01)
    trainer(2, [writer]).fit(method, loader(batch))
    for k, name in enumerate(["00002.png", "faces_00013.png"]):
        pixels = np.asarray(Image.open(tmp_path / name))
        expected = np.round(method.reconstruction[k].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        assert pixels.shape == (16, 16, 3)
        np.testing.assert_array_equal(pixels, expected)
    assert writer.is_done("00002.png") and writer.pending(["00002", "faces/00013", "other"]) == ["other"]
    stored = writer.metrics("00002.png")
    expected_psnr = reconstruction_metrics(method.reconstruction[:1], batch["target"][:1])["psnr"]
    assert stored["steps"] == 2 and stored["psnr"] == pytest.approx(float(expected_psnr), abs=1e-3)
    before = (tmp_path / "00002.png").read_bytes()
    again = ReconstructionWriter(tmp_path)
    with pytest.raises(ValueError, match="already holds"):
        trainer(3, [again]).fit(ASeqDIP(num_measurements=2, network="unet", network_args=net, lr=0.01), loader(batch))
    assert (tmp_path / "00002.png").read_bytes() == before


def test_queries_accept_dicts_tuples_and_names(tmp_path):
    writer = ReconstructionWriter(tmp_path)
    fit_chunk(writer, [("d.h5", 0)], {})
    items = [{"fname": "d.h5", "slice": 0}, {"fname": "d.h5", "slice": 1}, ("d.h5", 0), {"name": "x"}]
    assert writer.pending(items) == [{"fname": "d.h5", "slice": 1}, {"name": "x"}]
    assert writer.is_done("d.h5", 0) and not writer.is_done("d.h5", 1) and not writer.is_done("e.h5", 0)
    with pytest.raises(TypeError):
        writer.pending([3])


class Poison(pl.Callback):
    """Turns row ``row`` of the method's outputs into NaN at the end of the fit (a diverged fit)."""

    def __init__(self, row):
        self.row = row

    def on_train_end(self, trainer, pl_module):
        poisoned = pl_module.reconstruction.clone()
        poisoned[self.row] = float("nan")
        pl_module.final_output = poisoned


def test_a_non_finite_reconstruction_is_never_written(tmp_path):
    writer = ReconstructionWriter(tmp_path)
    batch = mri_batch(num=2, size=16, fnames=["n.h5", "n.h5"], slices=[0, 1])
    method = ASeqDIP(num_measurements=2, network="unet", network_args=TINY_UNET, lr=0.05)
    with pytest.raises(ValueError, match=r"n.h5 slice 1 is not finite.*not written") as error:
        trainer(2, [Poison(1), writer]).fit(method, loader(batch))
    assert error.value.keys == [("n.h5", 1)]
    assert writer.done_slices("n.h5") == [0] and writer.pending([("n.h5", 0), ("n.h5", 1)]) == [("n.h5", 1)]


def test_metrics_travel_with_each_slice_and_volume_metrics_use_the_volume_maximum(tmp_path):
    writer = ReconstructionWriter(tmp_path)
    batch = mri_batch(num=3, size=16, fnames=["m.h5"] * 3, slices=[0, 1, 2])
    method = ASeqDIP(num_measurements=3, network="unet", network_args=TINY_UNET, lr=0.05)
    trainer(3, [writer]).fit(method, loader(batch))
    per_slice = reconstruction_metrics(method.reconstruction, batch["target"])
    for k in range(3):
        stored = writer.metrics("m.h5", k)
        assert stored["psnr"] == pytest.approx(float(per_slice["psnr"][k]), abs=1e-3) and stored["steps"] == 3
    with h5py.File(tmp_path / "m.h5") as handle:
        np.testing.assert_allclose(handle["target"][()], batch["target"][:, 0].numpy(), rtol=1e-6)
    volume = writer.volume_metrics("m.h5")
    from ugodit_pl.metrics import volume_metrics

    expected = volume_metrics(torch.from_numpy(read_volume(tmp_path / "m.h5")[0])[:, None], batch["target"])
    assert volume["psnr"] == pytest.approx(float(expected["psnr"]))
    assert volume["psnr"] != pytest.approx(float(per_slice["psnr"].mean()), abs=1e-3)  # not the mean of slices


def test_the_output_folder_is_checked_before_fitting(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(ValueError, match=f"output_dir {not_a_folder} exists and is not a folder"):
        trainer(1, [ReconstructionWriter(not_a_folder)]).fit(
            ASeqDIP(network="unet", network_args=TINY_UNET), loader(mri_batch(num=1, size=16)))


def test_an_unwritable_output_folder_is_named(tmp_path, monkeypatch):
    import ugodit_pl.callbacks.writer as writer_module

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(writer_module, "write_probe", refuse)  # what an unwritable folder does (root can write anywhere)
    with pytest.raises(ValueError, match=f"output_dir {tmp_path}: cannot write there \\(Permission denied\\)"):
        ReconstructionWriter(tmp_path).check_output_dir()


def test_two_processes_checking_one_folder_do_not_trip_over_each_other(tmp_path):
    """Under DDP every process checks --out while the main one clears stale temporaries: the probes are
    per process and never look like temporaries (this was a flaky 2-process reconstruct)."""
    first, second = ReconstructionWriter(tmp_path), ReconstructionWriter(tmp_path)
    for _ in range(20):
        first.check_output_dir()
        assert first.remove_stale_temporaries() == []
        second.check_output_dir()
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_files_of_a_killed_run_are_removed(tmp_path):
    (tmp_path / ".partial" / "a.h5").mkdir(parents=True)
    stale = [tmp_path / ".a.h5.x1y2.tmp", tmp_path / ".partial" / "a.h5" / ".00003.npz.abc.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    keep = tmp_path / "a.h5.tmp"  # not a temporary of ours
    keep.write_bytes(b"user file")
    assert sorted(ReconstructionWriter(tmp_path).remove_stale_temporaries()) == sorted(stale)
    assert not any(p.exists() for p in stale) and keep.exists()
