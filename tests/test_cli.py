"""The ``ugodit`` entry point: help without torch, command dispatch, one-line errors, reconstruct."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import h5py
import numpy as np
import pytest

from method_problems import tiny_transferable_weights
from ugodit_pl.apps import cli
from ugodit_pl.apps.cli import main, one_line

ROOT = Path(__file__).resolve().parents[1]
TINY_UNET = {"in_channels": 2, "out_channels": 2, "channels": [4, 8, 8, 8]}


def error_lines(capsys) -> list:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------ help and dispatch
def test_help_lists_every_command_without_importing_torch():
    code = ("import sys; from ugodit_pl.apps.cli import main; code = main(['--help']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("NO-TORCH 0")
    for command in ("fit", "validate", "test", "predict", "demo", "reconstruct", "benchmark"):
        assert f"\n  {command} " in result.stdout


def test_python_dash_m_runs_the_same_entry_point():
    result = subprocess.run([sys.executable, "-m", "ugodit_pl", "--help"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0 and "reconstruct" in result.stdout


def test_unknown_command_is_one_line_and_exit_code_2(capsys):
    assert main(["frobnicate"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "unknown command 'frobnicate'" in lines[0]


def test_benchmark_forwards_its_arguments(monkeypatch):
    calls = []
    module = types.ModuleType("ugodit_pl.apps.benchmarks.cli")
    module.__spec__ = importlib.machinery.ModuleSpec("ugodit_pl.apps.benchmarks.cli", None)
    module.main = lambda argv: calls.append(argv) or 3
    monkeypatch.setitem(sys.modules, "ugodit_pl.apps.benchmarks.cli", module)
    assert main(["benchmark", "speed", "--size", "64"]) == 3
    assert calls == [["speed", "--size", "64"]]


# ------------------------------------------------------------------------------------------ errors
def test_one_line_flattens_jsonargparse_messages():
    message = (
        'Parser key "model":\n  Does not validate against any of the Union subtypes\n  Subtypes: [A, B]\n'
        "  Errors:\n    - Problem with given class_path 'ugodit_pl.methods.ASeqDIP':\n"
        '        Parser key "lr":\n          Expected a <class \'float\'>\n'
        "          Given value type: <class 'str'>\n          Given value: abc\n    - Expected a <class 'NoneType'>"
    )
    assert one_line(ValueError(message)) == "model: ugodit_pl.methods.ASeqDIP: lr: expected a float, got abc"


def test_missing_config_key_is_one_line(tmp_path, capsys):
    config = tmp_path / "fit.yaml"
    config.write_text("model:\n  class_path: ugodit_pl.methods.UGoDITFit\n  init_args: {lr: 0.001}\n"
                      "data:\n  class_path: ugodit_pl.datamodules.FastMRIDataModule\n"
                      "  init_args: {test_files: x.h5}\n")
    assert main(["fit", "--config", str(config)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1
    assert lines[0].startswith("ugodit fit: error:") and "weights" in lines[0] and "required" in lines[0]


def test_missing_config_file_is_one_line(tmp_path, capsys):
    assert main(["fit", "--config", str(tmp_path / "nope.yaml")]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "nope.yaml" in lines[0] and "does not exist" in lines[0]


def test_bad_value_and_unknown_key_are_one_line(capsys):
    config = str(ROOT / "configs" / "mri_aseqdip.yaml")
    assert main(["fit", "--config", config, "--model.init_args.lr", "abc"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "lr: expected a float, got abc" in lines[0]
    assert main(["fit", "--config", config, "--trainer.max_stepz", "3"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "max_stepz" in lines[0]


def test_wrong_data_path_is_one_line(tmp_path, capsys):
    config = str(ROOT / "configs" / "mri_aseqdip.yaml")
    missing = tmp_path / "no_such_folder"
    assert main(["fit", "--config", config, "--data.init_args.data_dir", str(missing)]) == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and str(missing) in lines[0] and "no such file or folder" in lines[0]


def test_weights_for_another_network_is_one_line(tmp_path, capsys):
    from ugodit_pl.datamodules import make_mri_demo
    from ugodit_pl.methods import save_transferable_weights
    from ugodit_pl.nets import build_network

    make_mri_demo(tmp_path, num_files=1, num_slices=1, size=(16, 16), num_coils=2)

    weights = tmp_path / "tiny.pt"
    save_transferable_weights(weights, build_network("unet", **TINY_UNET).encoder, network="unet",
                              network_args=TINY_UNET)
    config = str(ROOT / "configs" / "mri_ugodit_fit_4x.yaml")
    other = json.dumps({"in_channels": 2, "out_channels": 2, "channels": [8, 16, 16, 16]})
    code = main(["fit", "--config", config, "--model.init_args.weights", str(weights),
                 "--model.init_args.network_args", other, "--data.init_args.data_dir", str(tmp_path),
                 "--data.init_args.test_files", "demo_mri_00.h5"])
    assert code == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and "differ from those of the transferable weights" in lines[0]


def test_debug_flag_and_environment_show_the_traceback(tmp_path, monkeypatch):
    with pytest.raises(Exception, match="nope.yaml"):
        main(["--debug", "fit", "--config", str(tmp_path / "nope.yaml")])
    monkeypatch.setenv("UGODIT_DEBUG", "1")
    with pytest.raises(Exception, match="nope.yaml"):
        main(["fit", "--config", str(tmp_path / "nope.yaml")])


def test_unexpected_errors_say_so_in_one_line(monkeypatch, capsys):
    def broken(argv):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setitem(cli.RUNNERS, "demo", broken)
    assert main(["demo"]) == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and "RuntimeError: boom second line" in lines[0] and "--debug" in lines[0]


def test_evaluation_commands_need_a_checkpoint(capsys):
    config = str(ROOT / "configs" / "mri_aseqdip.yaml")
    if not (ROOT.parent / "shared" / "data").is_dir():
        pytest.skip("real data not found at ../shared/data")
    assert main(["test", "--config", config, "--trainer.enable_progress_bar", "false"]) == 1
    lines = error_lines(capsys)
    assert lines[-1].startswith("ugodit test: error:") and "--ckpt_path" in lines[-1]


# ------------------------------------------------------------------------------------------ reconstruct
@pytest.fixture
def mri_folder(tmp_path):
    from ugodit_pl.datamodules import make_mri_demo

    folder = tmp_path / "data"
    make_mri_demo(folder, num_files=2, num_slices=2, size=(32, 32), num_coils=4)
    return folder


@pytest.fixture
def tiny_weights(tmp_path):
    return tiny_transferable_weights(tmp_path / "weights.pt", loss_norm="l2", input_update="data_consistent", lam=2.0,
                                     update_every=1)


def reconstruct_args(data, weights, out, *extra):
    return ["reconstruct", "--data", str(data), "--weights", str(weights), "--out", str(out), "--steps", "2",
            "--accelerator", "cpu", "--quiet", *extra]


def test_reconstruct_a_folder_then_resume_without_redoing(mri_folder, tiny_weights, tmp_path, monkeypatch, capsys):
    from ugodit_pl.apps import reconstruct

    out = tmp_path / "out"
    fits = []
    original = reconstruct.fit_chunk
    monkeypatch.setattr(reconstruct, "fit_chunk", lambda plan, chunk, *a, **k: fits.append(
        [item.label for item in chunk]) or original(plan, chunk, *a, **k))
    assert main(reconstruct_args(mri_folder, tiny_weights, out, "--chunk-size", "3")) == 0
    assert fits == [["demo_mri_00.h5/slice_000", "demo_mri_00.h5/slice_001", "demo_mri_01.h5/slice_000"],
                    ["demo_mri_01.h5/slice_001"]]
    for name in ("demo_mri_00.h5", "demo_mri_01.h5"):
        with h5py.File(out / name) as handle:
            assert list(handle.attrs["slices"]) == [0, 1]
            volume = handle["reconstruction"][()]
            assert volume.shape == (2, 32, 32) and np.isfinite(volume).all() and volume.max() > 0
    summary = json.loads((out / "reconstruct_summary.json").read_text())
    assert [row["status"] for row in summary["items"]] == ["reconstructed"] * 4
    assert all(np.isfinite(row["psnr"]) for row in summary["items"])  # the demo files are fully sampled
    assert summary["chunk_size"] == 3 and summary["items_per_hour"] == pytest.approx(4 * 3600 / summary["seconds"], 1e-2)
    out_text = capsys.readouterr().out
    assert "done demo_mri_01.h5/slice_001" in out_text
    assert "this run: 4 slices in" in out_text and "slices per hour (chunks of 3)" in out_text
    # an interrupted run loses only its chunk in progress: remove one slice and rerun
    with h5py.File(out / "demo_mri_01.h5") as handle:
        kept = handle["reconstruction"][0]
    from ugodit_pl.callbacks import ReconstructionWriter

    writer = ReconstructionWriter(out)
    assert writer.pending([("demo_mri_01.h5", 0), ("demo_mri_01.h5", 1)]) == []
    with h5py.File(out / "demo_mri_01.h5", "r+") as handle:
        data = handle["reconstruction"][:1]
        del handle["reconstruction"]
        handle["reconstruction"] = data
        handle.attrs["slices"] = np.array([0])
    fits.clear()
    assert main(reconstruct_args(mri_folder, tiny_weights, out)) == 0
    assert fits == [["demo_mri_01.h5/slice_001"]]
    with h5py.File(out / "demo_mri_01.h5") as handle:
        assert list(handle.attrs["slices"]) == [0, 1]
        np.testing.assert_array_equal(handle["reconstruction"][0], kept)
    summary = json.loads((out / "reconstruct_summary.json").read_text())
    assert [row["status"] for row in summary["items"]].count("already written") == 3
    assert summary["items_per_hour"] == pytest.approx(3600 / summary["seconds"], 1e-2)  # the one slice of this run


def test_reconstruct_images_with_a_config(tmp_path, capsys):
    from ugodit_pl.datamodules import demo_images
    from ugodit_pl.methods import save_transferable_weights
    from ugodit_pl.nets import build_network

    images = tmp_path / "images"
    demo_images(images, size=32, names=["coffee", "chelsea"])
    network_args = {"in_channels": 3, "out_channels": 3, "channels_down": [4, 4], "channels_up": [4, 4],
                    "channels_skip": [1, 1]}
    weights = tmp_path / "skip.pt"
    save_transferable_weights(weights, build_network("skip", **network_args).encoder, network="skip",
                              network_args=network_args, metadata={"operator": "SuperResolution"})
    out = tmp_path / "out"
    import yaml

    settings = yaml.safe_load((ROOT / "configs" / "sr_ugodit_fit.yaml").read_text())
    settings["data"]["init_args"]["size"] = 32  # the images are 32 x 32: 256 would upsample them (refused)
    config = tmp_path / "sr_fit.yaml"
    config.write_text(yaml.safe_dump(settings))
    assert main(reconstruct_args(images, weights, out, "--config", str(config), "--clean")) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["chelsea.png", "coffee.png"]
    summary = json.loads((out / "reconstruct_summary.json").read_text())
    assert {row["name"] for row in summary["items"]} == {"chelsea.png", "coffee.png"}
    assert all(0 < row["psnr"] < 60 for row in summary["items"])


def test_reconstruct_inpainted_images_with_held_out_pixels(tmp_path, capsys):
    """--stop heldout on images: pixels held out of the observed ones, a stop, then the refit on every pixel;
    refused, before any fitting, for an operator without observed pixels to hold out (super-resolution)."""
    from ugodit_pl.datamodules import demo_images
    from ugodit_pl.methods import save_transferable_weights
    from ugodit_pl.nets import build_network
    import yaml

    images = tmp_path / "images"
    demo_images(images, size=32, names=["coffee"])
    network_args = {"in_channels": 3, "out_channels": 3, "channels_down": [4, 4], "channels_up": [4, 4],
                    "channels_skip": [1, 1]}
    weights = tmp_path / "skip.pt"
    save_transferable_weights(weights, build_network("skip", **network_args).encoder, network="skip",
                              network_args=network_args, metadata={"operator": "Inpainting"})
    settings = yaml.safe_load((ROOT / "configs" / "inpainting_ugodit_fit.yaml").read_text())
    settings["data"]["init_args"].update(size=32, operator_args={"mask": "random", "drop_probability": 0.5})
    config = tmp_path / "inpainting_fit.yaml"
    config.write_text(yaml.safe_dump(settings))
    stopping = ("--config", str(config), "--clean", "--stop", "heldout", "--holdout-fraction", "0.2", "--patience", "2",
                "--steps", "12", "--refit-steps", "2")
    out = tmp_path / "out"
    assert main(reconstruct_args(images, weights, out, *stopping)) == 0
    summary = json.loads((out / "reconstruct_summary.json").read_text())
    assert summary["refit_steps"] == 2 and 3 + 2 <= summary["items"][0]["steps"] <= 12 + 2
    assert (out / "coffee.png").is_file() and 0 < summary["items"][0]["psnr"] < 60

    sr = tmp_path / "sr"
    assert main(reconstruct_args(images, weights, sr, "--clean", "--stop", "heldout")) == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and "'super_resolution'" in lines[0] and "--stop heldout" in lines[0]
    assert not (sr / "coffee.png").exists()
    assert main(reconstruct_args(images, weights, sr, *stopping[:3], "--mean-with", "l1_wavelet")) == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and "--mean-with l1_wavelet averages with compressed sensing" in lines[0], lines
    assert not (sr / "coffee.png").exists()


def test_reconstruct_refuses_weights_for_another_task(mri_folder, tmp_path, capsys):
    from ugodit_pl.methods import save_transferable_weights
    from ugodit_pl.nets import build_network

    network_args = {"in_channels": 3, "out_channels": 3, "channels_down": [4, 4], "channels_up": [4, 4],
                    "channels_skip": [1, 1]}
    weights = tmp_path / "skip.pt"
    save_transferable_weights(weights, build_network("skip", **network_args).encoder, network="skip",
                              network_args=network_args, metadata={"operator": "SuperResolution"})
    assert main(reconstruct_args(mri_folder, weights, tmp_path / "out")) == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and "SuperResolution" in lines[0] and "MRI" in lines[0]


def test_reconstruct_user_errors_are_one_line(mri_folder, tiny_weights, tmp_path, capsys):
    cases = [
        (reconstruct_args(tmp_path / "nowhere", tiny_weights, tmp_path / "o"), "no such file or folder"),
        (reconstruct_args(mri_folder, tmp_path / "none.pt", tmp_path / "o"), "does not exist"),
        (reconstruct_args(mri_folder, tiny_weights, tmp_path / "o", "--config", str(ROOT / "configs/mri_dip.yaml")),
         "UGoDITFit"),
        (reconstruct_args(mri_folder, tiny_weights, tmp_path / "o", "--devices", "8", "--strategy", "ddp"),
         "devices"),
    ]
    for args, expected in cases:
        assert main(args) == 1, args
        lines = error_lines(capsys)
        assert len(lines) == 1 and lines[0].startswith("ugodit reconstruct: error:") and expected in lines[0], lines
    with pytest.raises(SystemExit):  # argparse's own usage error for a missing required flag
        from ugodit_pl.apps.reconstruct import parse_args

        parse_args(["--data", "x"])
    assert main(["reconstruct", "--data", "x"]) == 2


def test_reconstruct_shards_over_two_processes_like_one(tmp_path, tiny_weights):
    """``--devices 2`` (DDP on 2 CPU processes; Lightning starts the second one by running the command
    again) writes every slice, equal to the single-process reconstruction."""
    from ugodit_pl.datamodules import make_mri_demo

    data = tmp_path / "ddp_data"
    make_mri_demo(data, num_files=1, num_slices=3, size=(32, 32), num_coils=2)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main(reconstruct_args(data, tiny_weights, single)) == 0
    command = [sys.executable, "-m", "ugodit_pl", *reconstruct_args(data, tiny_weights, sharded, "--devices", "2")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    with h5py.File(single / "demo_mri_00.h5") as one, h5py.File(sharded / "demo_mri_00.h5") as two:
        assert list(two.attrs["slices"]) == [0, 1, 2]
        np.testing.assert_allclose(two["reconstruction"][()], one["reconstruction"][()], rtol=1e-4, atol=1e-6)
    summary = json.loads((sharded / "reconstruct_summary.json").read_text())
    assert [row["status"] for row in summary["items"]] == ["reconstructed"] * 3


def test_an_interrupted_reconstruction_resumes_and_loses_nothing(mri_folder, tiny_weights, tmp_path, monkeypatch,
                                                                   capsys):
    """Ctrl-C in the second chunk: the first chunk stays written, nothing half-written, the rerun does the rest."""
    import signal

    from ugodit_pl.apps import reconstruct

    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT after an interrupt; restore it after
    out = tmp_path / "out"
    original = reconstruct.build_method
    built = []

    def build(plan, count, holdout=True):
        method = original(plan, count, holdout)
        built.append(method)
        if len(built) == 2:
            def interrupt(*args, **kwargs):
                raise KeyboardInterrupt

            method.training_step = interrupt
        return method

    monkeypatch.setattr(reconstruct, "build_method", build)
    try:
        assert main(reconstruct_args(mri_folder, tiny_weights, out, "--chunk-size", "2")) == 130
    finally:
        signal.signal(signal.SIGINT, handler)
    assert "run the same command again to resume" in capsys.readouterr().out
    with h5py.File(out / "demo_mri_00.h5") as handle:
        assert list(handle.attrs["slices"]) == [0, 1]
    assert not (out / "demo_mri_01.h5").exists() and not list(out.rglob("*.tmp"))
    monkeypatch.setattr(reconstruct, "build_method", original)
    assert main(reconstruct_args(mri_folder, tiny_weights, out, "--chunk-size", "2")) == 0
    with h5py.File(out / "demo_mri_01.h5") as handle:
        assert list(handle.attrs["slices"]) == [0, 1]
    summary = json.loads((out / "reconstruct_summary.json").read_text())
    assert [row["status"] for row in summary["items"]] == ["already written"] * 2 + ["reconstructed"] * 2


def test_a_signal_that_lands_inside_a_finaliser_still_stops_the_command(monkeypatch, capsys):
    """SIGTERM handled inside a ``__del__`` (where Python can only print an exception) is delivered again."""
    import signal
    import sys
    import time

    from ugodit_pl.apps import cli

    class SignalledWhileFinalised:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGTERM)
            for _ in range(1000):  # the handler runs here, inside the finaliser, and its Stopped is swallowed
                pass

    def command(argv):
        SignalledWhileFinalised()
        for _ in range(500):  # the redelivered signal stops the command long before this ends
            time.sleep(0.01)
        return 0

    monkeypatch.setitem(cli.RUNNERS, "demo", command)
    hook, term = sys.unraisablehook, signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    assert main(["demo"]) == 143
    assert time.monotonic() - started < 4.0
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert sys.unraisablehook is hook and signal.getsignal(signal.SIGTERM) is term
