"""Bad input fails clearly before any fitting, nothing is lost on interruption.

``test_bad_input_fails_before_fitting`` is the matrix: every case names the exception type, a piece of
the message that names the argument or the file (and slice), and checks that no training step ran.
Count them with ``python -m pytest tests/test_bad_inputs.py -k matrix -q``. The interruption tests
kill ``ugodit reconstruct`` (SIGTERM, SIGINT, SIGKILL at random moments) and check exit codes, that
no slice or metric is lost or duplicated, and that no temporary file is left.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from method_problems import TINY_SKIP, TINY_UNET, loader, mri_batch
from ugodit_pl.apps.cli import main
from ugodit_pl.callbacks import ReconstructionWriter
from ugodit_pl.datamodules import DataError, DegradedImageDataModule, FastMRIDataModule, make_mri_demo
from ugodit_pl.methods import ASeqDIP, UGoDITFit, save_transferable_weights
from ugodit_pl.nets import build_network

ROOT = Path(__file__).resolve().parents[1]


class StepCounter(pl.Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_end(self, *args: Any) -> None:
        self.steps += 1


def fit(method_factory: Callable[[], pl.LightningModule], batch: Dict[str, Any], steps: int = 3,
        counter: StepCounter = None, **trainer_args: Any) -> None:
    method = method_factory()
    pl.Trainer(**{"max_steps": steps, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
                  "enable_progress_bar": False, "enable_model_summary": False, **trainer_args},
               callbacks=[counter]).fit(method, loader(batch, max(steps, 1)))


def unet(**kwargs: Any) -> Callable[[], ASeqDIP]:
    return lambda: ASeqDIP(network="unet", network_args=TINY_UNET, **kwargs)


def skip_weights(folder: Path) -> Path:
    args = {**TINY_SKIP, "need_sigmoid": True}
    path = folder / "skip.pt"
    save_transferable_weights(path, build_network("skip", **args).encoder, network="skip", network_args=args,
                              metadata={"operator": "SuperResolution"})
    return path


def nan_weights(folder: Path) -> Path:
    encoder = build_network("unet", **TINY_UNET).encoder
    with torch.no_grad():
        next(encoder.parameters()).fill_(float("nan"))
    path = folder / "nan.pt"
    save_transferable_weights(path, encoder, network="unet", network_args=TINY_UNET, metadata={"operator": "MultiCoilMRI"})
    return path


def fastmri_file(folder: Path, name: str = "bad.h5", *, nan_slice: int = None, zero: bool = False,
                 size: int = 32) -> Path:
    path = make_mri_demo(folder / name.replace(".h5", ""), num_files=1, num_slices=2, size=(size, size),
                         num_coils=2)[0].rename(folder / name)
    with h5py.File(path, "r+") as handle:
        kspace = handle["kspace"][()]
        if nan_slice is not None:
            kspace[nan_slice, 0, 0, 0] = np.nan
        if zero:
            kspace[:] = 0
        handle["kspace"][...] = kspace
    return path


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


# (case id, what it runs, exception type, text the message must hold)
Case = Tuple[str, Callable[[Path, StepCounter], Any], type, str]
CASES: List[Case] = [
    ("lr zero", lambda d, c: fit(unet(lr=0), mri_batch(), counter=c), ValueError, "lr must be > 0"),
    ("lr nan", lambda d, c: fit(unet(lr=float("nan")), mri_batch(), counter=c), ValueError, "lr must be a finite"),
    ("fractional update_every", lambda d, c: fit(unet(update_every=2.5), mri_batch(), counter=c), ValueError,
     "update_every must be a whole number"),
    ("zero measurements", lambda d, c: fit(unet(num_measurements=0), mri_batch(), counter=c), ValueError,
     "num_measurements"),
    ("ema_decay 1", lambda d, c: fit(unet(ema_decay=1.0), mri_batch(), counter=c), ValueError, "ema_decay"),
    ("unknown optimizer argument", lambda d, c: fit(unet(optimizer_args={"momentum": 0.9}), mri_batch(), counter=c),
     ValueError, "optimizer_args"),
    ("unknown compile argument", lambda d, c: fit(unet(compile={"modes": "max-autotune"}), mri_batch(), counter=c),
     ValueError, "compile: unknown torch.compile argument"),
    ("y without batch dimension", lambda d, c: fit(unet(), {**mri_batch(), "y": mri_batch()["y"][0]}, counter=c),
     ValueError, "need a batch dimension"),
    ("8x8 k-space", lambda d, c: fit(unet(), mri_batch(size=8), counter=c), ValueError,
     "phantom0/slice_000: the image is 8 x 8 pixels"),
    ("num_measurements differs from the data", lambda d, c: fit(unet(num_measurements=3), mri_batch(num=2), counter=c),
     ValueError, "num_measurements=3 but the data serve 2"),
    ("max_steps -1", lambda d, c: fit(unet(), mri_batch(), steps=-1, counter=c, max_epochs=1), ValueError, "max_steps"),
    ("max_steps 0", lambda d, c: fit(unet(), mri_batch(), steps=0, counter=c), ValueError, "max_steps"),
    ("image weights for MRI", lambda d, c: fit(lambda: UGoDITFit(weights=str(skip_weights(d))), mri_batch(), counter=c),
     ValueError, "pre-trained on SuperResolution measurements, but these are MRI"),
    ("NaN encoder weights", lambda d, c: UGoDITFit(weights=str(nan_weights(d))), ValueError, "NaN/Inf weights"),
    ("pickle as weights", lambda d, c: UGoDITFit(weights=str(write(d / "evil.pt", b"\x80\x04cos\nsystem\n."))),
     ValueError, "evil.pt' is not a transferable-weights file"),
    ("random bytes as weights", lambda d, c: UGoDITFit(weights=str(write(d / "noise.pt", os.urandom(64)))),
     ValueError, "noise.pt' is not a transferable-weights file"),
    ("empty weights file", lambda d, c: UGoDITFit(weights=str(write(d / "empty.pt", b""))), ValueError,
     "empty.pt' is empty"),
    ("acceleration not a number", lambda d, c: FastMRIDataModule(test_files="x.h5", acceleration="four"), DataError,
     "acceleration must be a number"),
    ("NaN k-space", lambda d, c: FastMRIDataModule(test_files=str(fastmri_file(d, nan_slice=1)), test_slices="all",
                                                   coil_map_cache_dir=False).check(), DataError,
     "bad.h5 slice 1: 'kspace' holds 1 NaN/Inf"),
    ("all-zero k-space", lambda d, c: FastMRIDataModule(test_files=str(fastmri_file(d, zero=True)), test_slices=0,
                                                        coil_map_cache_dir=False).check(), DataError,
     "slice 0: 'kspace' is all zero: the slice holds no signal"),
    ("image smaller than size", lambda d, c: DegradedImageDataModule(images=str(tiny_png(d)), size=64).setup(),
     DataError, "tiny.png: 3x3"),
    ("writer output is a file", lambda d, c: fit(unet(), mri_batch(), counter=c).__class__ if False else
     pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                callbacks=[ReconstructionWriter(write(d / "out", b"x")), c]).fit(unet()(), loader(mri_batch(), 2)),
     ValueError, "output_dir"),
]


def tiny_png(folder: Path) -> Path:
    from PIL import Image

    path = folder / "tiny.png"
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_bad_input_fails_before_fitting_matrix(name, tmp_path):
    _, run, error, text = next(case for case in CASES if case[0] == name)
    counter = StepCounter()
    with pytest.raises(error) as raised:
        run(tmp_path, counter)
    assert text in str(raised.value), str(raised.value)
    assert counter.steps == 0


# ------------------------------------------------------------------------------------------ the command line
@pytest.fixture
def folder(tmp_path) -> Path:
    data = tmp_path / "data"
    make_mri_demo(data, num_files=3, num_slices=2, size=(32, 32), num_coils=2)
    return data


@pytest.fixture
def weights(tmp_path) -> Path:
    path = tmp_path / "weights.pt"
    save_transferable_weights(path, build_network("unet", **TINY_UNET).encoder, network="unet",
                              network_args=TINY_UNET, metadata={"operator": "MultiCoilMRI"})
    return path


def reconstruct(data: Path, weights: Path, out: Path, *extra: str) -> List[str]:
    return ["reconstruct", "--data", str(data), "--weights", str(weights), "--out", str(out), "--steps", "2",
            "--accelerator", "cpu", "--quiet", *extra]


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("case", ["out is a file", "nan in the third file", "steps 0", "weights for images"])
def test_reconstruct_refuses_before_fitting_matrix(case, folder, weights, tmp_path, capsys, monkeypatch):
    from ugodit_pl.apps import reconstruct as module

    fits = []
    monkeypatch.setattr(module, "fit_chunk", lambda *a, **k: fits.append(1))
    out = tmp_path / "out"
    if case == "out is a file":
        write(out, b"x")
        args, expected = reconstruct(folder, weights, out), f"--out {out} exists and is not a folder"
    elif case == "nan in the third file":
        with h5py.File(folder / "demo_mri_02.h5", "r+") as handle:
            handle["kspace"][1, 0, 0, 0] = np.nan
        args, expected = reconstruct(folder, weights, out), "demo_mri_02.h5 slice 1: 'kspace' holds 1 NaN/Inf"
    elif case == "steps 0":
        args, expected = reconstruct(folder, weights, out, "--steps", "0"), "--steps"
    else:
        args, expected = reconstruct(folder, skip_weights(tmp_path), out), "--weights"
    assert main(args) == 1
    line = one_error_line(capsys)
    assert line.startswith("ugodit reconstruct: error:") and expected in line, line
    assert not fits


def test_fit_refuses_bad_configs_before_fitting_matrix(tmp_path, capsys):
    config = ROOT / "configs" / "mri_aseqdip.yaml"
    no_data = tmp_path / "no_data.yaml"
    no_data.write_text("model:\n  class_path: ugodit_pl.methods.ASeqDIP\ntrainer:\n  max_steps: 2\n")
    for args, expected in (
        (["fit", "--config", str(no_data)], "needs data: the config has no data section"),
        (["fit", "--config", str(config), "--data.init_args.acceleration", "nan"], "acceleration: expected a float"),
        (["fit", "--config", str(config), "--trainer.max_steps", "-1", "--data.init_args.crop_size", "[32, 32]"],
         "max_steps"),
    ):
        assert main(args) in (1, 2), args
        assert expected in one_error_line(capsys)


def test_nan_in_a_files_target_falls_back_with_a_warning(tmp_path):
    path = fastmri_file(tmp_path, "target.h5")
    with h5py.File(path, "r+") as handle:
        handle["reconstruction_rss"][0, 0, 0] = np.nan
    dm = FastMRIDataModule(test_files=str(path), test_slices=0, acceleration=2, center_fraction=0.25,
                           coil_map_cache_dir=False, coil_map_args={"kernel_width": 4})
    with pytest.warns(UserWarning, match="target.h5 slice 0: 'reconstruction_rss' holds NaN/Inf"):
        dm.setup("fit")
    assert torch.isfinite(dm.batch["target"]).all()


# ------------------------------------------------------------------------------------------ interruption
def launch(args: List[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "ugodit_pl", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def written(out: Path) -> List[Tuple[str, int]]:
    writer = ReconstructionWriter(out)
    return [(f"demo_mri_{f:02d}.h5", s) for f in range(3) for s in range(2) if writer.is_done(f"demo_mri_{f:02d}.h5", s)]


def wait_until(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    start = time.time()
    while not condition():
        if time.time() - start > timeout:
            raise TimeoutError("the condition did not come true in time")
        time.sleep(0.05)


def assert_complete(out: Path) -> None:
    """Every slice once, with its metrics, no temporary file left."""
    writer = ReconstructionWriter(out)
    for f in range(3):
        with h5py.File(out / f"demo_mri_{f:02d}.h5") as handle:
            assert list(handle.attrs["slices"]) == [0, 1]
        for s in range(2):
            assert "psnr" in writer.metrics(f"demo_mri_{f:02d}.h5", s)
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_reconstruction_with_its_exit_code_and_a_rerun_completes(signum, code, folder, weights,
                                                                                 tmp_path):
    out = tmp_path / "out"
    args = reconstruct(folder, weights, out, "--chunk-size", "1", "--steps", "150")
    process = launch(args, tmp_path)
    wait_until(lambda: bool(written(out)) or process.poll() is not None)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-2000:]
    assert f"stopped by {signal.Signals(signum).name}" in stderr
    before = written(out)
    assert 1 <= len(before) < 6
    rerun = launch(reconstruct(folder, weights, out, "--chunk-size", "1"), tmp_path)
    assert rerun.wait(timeout=300) == 0
    assert_complete(out)


def test_sigkill_at_random_moments_loses_nothing(folder, weights, tmp_path):
    out = tmp_path / "out"
    rng = random.Random(3)
    args = reconstruct(folder, weights, out, "--chunk-size", "1", "--steps", "40")
    for _ in range(3):
        process = launch(args, tmp_path)
        time.sleep(rng.uniform(2.0, 6.0))
        process.kill()
        process.wait(timeout=60)
    final = launch(args, tmp_path)
    assert final.wait(timeout=300) == 0
    assert_complete(out)
