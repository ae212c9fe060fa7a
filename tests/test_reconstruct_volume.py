"""Whole volumes with ``ugodit reconstruct``: warm starts along the slices, held-out stopping, resuming a
warm-started run, and two nodes of one process each (gloo on localhost) against one process."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from method_problems import tiny_transferable_weights
from ugodit_pl.apps.cli import main


@pytest.fixture
def volume(tmp_path):
    from ugodit_pl.datamodules import make_mri_demo

    folder = tmp_path / "data"
    make_mri_demo(folder, num_files=1, num_slices=4, size=(32, 32), num_coils=2)
    return folder


@pytest.fixture
def weights(tmp_path):
    return tiny_transferable_weights(tmp_path / "weights.pt")


def args(data, weights, out, *extra):
    return ["reconstruct", "--data", str(data), "--weights", str(weights), "--out", str(out), "--steps", "4",
            "--accelerator", "cpu", "--quiet", *extra]


def volume_of(out: Path) -> np.ndarray:
    with h5py.File(out / "demo_mri_00.h5") as handle:
        return handle["reconstruction"][()]


def test_warm_start_chains_the_slices_with_fewer_steps(volume, weights, tmp_path, monkeypatch):
    from ugodit_pl.apps import reconstruct

    starts = []
    original = reconstruct.fit_chunk
    monkeypatch.setattr(reconstruct, "fit_chunk", lambda plan, chunk, writer, progress, label, warm: starts.append(
        [state is not None for state in warm or []]) or original(plan, chunk, writer, progress, label, warm))
    out = tmp_path / "warm"
    assert main(args(volume, weights, out, "--warm-start")) == 0
    assert starts[:4] == [[False], [True], [True], [True]]  # one slice per chunk, each from the one before
    summary = json.loads((out / "reconstruct_summary.json").read_text())
    assert [row["steps"] for row in summary["items"]] == [4, 2, 2, 2]  # warm: a third of --steps 4, rounded up
    assert summary["warm_steps"] == 2
    assert sorted(p.name for p in (out / ".warm").iterdir()) == [f"demo_mri_00.h5.slice_{s:04d}.pt" for s in range(4)]
    cold = tmp_path / "cold"
    assert main(args(volume, weights, cold, "--chunk-size", "1")) == 0
    np.testing.assert_array_equal(volume_of(out)[0], volume_of(cold)[0])  # the first slice starts cold in both
    assert not np.array_equal(volume_of(out)[1], volume_of(cold)[1])


def test_an_interrupted_warm_run_resumes_to_the_same_volume_bit_for_bit(volume, weights, tmp_path, monkeypatch, capsys):
    from ugodit_pl.apps import reconstruct

    whole = tmp_path / "whole"
    assert main(args(volume, weights, whole, "--warm-start", "--warm-steps", "3")) == 0
    handler = signal.getsignal(signal.SIGINT)
    original, built = reconstruct.build_method, []

    def build(plan, count, holdout=True):
        method = original(plan, count, holdout)
        built.append(method)
        if len(built) == 3:
            def interrupt(*a, **k):
                raise KeyboardInterrupt

            method.training_step = interrupt
        return method

    out = tmp_path / "resumed"
    monkeypatch.setattr(reconstruct, "build_method", build)
    try:
        assert main(args(volume, weights, out, "--warm-start", "--warm-steps", "3")) == 130
    finally:
        signal.signal(signal.SIGINT, handler)
    with h5py.File(out / "demo_mri_00.h5") as handle:
        assert list(handle.attrs["slices"]) == [0, 1]
    monkeypatch.setattr(reconstruct, "build_method", original)
    assert main(args(volume, weights, out, "--warm-start", "--warm-steps", "3")) == 0
    np.testing.assert_array_equal(volume_of(out), volume_of(whole))


def test_held_out_stopping_in_reconstruct_then_a_refit_on_every_sample(volume, weights, tmp_path):
    stopping = ("--stop", "heldout", "--holdout-fraction", "0.4", "--patience", "2", "--steps", "30", "--slices", "0:2",
                "--chunk-size", "1")
    projected, refitted = tmp_path / "projected", tmp_path / "refitted"
    assert main(args(volume, weights, projected, *stopping, "--refit-steps", "0")) == 0
    assert main(args(volume, weights, refitted, *stopping)) == 0
    alone, refit = (json.loads((out / "reconstruct_summary.json").read_text()) for out in (projected, refitted))
    assert alone["refit_steps"] == 0 and refit["refit_steps"] == 3  # a quarter of a warm slice's 10 steps
    assert all(2 <= row["steps"] <= 30 for row in alone["items"]) and np.isfinite(volume_of(projected)).all()
    # the same held-out fits, each continued for 3 steps on every sample
    assert [row["steps"] + 3 for row in alone["items"]] == [row["steps"] for row in refit["items"]]
    assert np.isfinite(volume_of(refitted)).all() and not np.array_equal(volume_of(refitted), volume_of(projected))


def test_held_out_stopping_on_the_warm_slices_only(volume, weights, tmp_path):
    chain = ("--warm-start", "--stop", "heldout", "--holdout-fraction", "0.4", "--patience", "2", "--steps", "30",
             "--slices", "0:3")
    warm_only, cold = tmp_path / "warm_only", tmp_path / "cold"
    assert main(args(volume, weights, warm_only, *chain, "--heldout-slices", "warm")) == 0
    assert main(args(volume, weights, cold, "--steps", "30", "--slices", "0:1")) == 0
    summary = json.loads((warm_only / "reconstruct_summary.json").read_text())
    assert summary["heldout_slices"] == "warm" and summary["refit_steps"] == 3
    first, *rest = summary["items"]
    assert first["steps"] == 30  # every sample, the full budget, no refit: the slice as a cold run fits it
    np.testing.assert_array_equal(volume_of(warm_only)[0], volume_of(cold)[0])
    assert all(2 + 3 <= row["steps"] <= 10 + 3 for row in rest)  # held out, stopped within the warm budget, refitted


@pytest.mark.parametrize("extra, message", [
    (("--stop", "heldout", "--heldout-slices", "warm"),
     "--heldout-slices warm chooses which slices of a warm-started chain hold samples out: give --warm-start and "
     "--stop heldout too"),
    (("--warm-steps", "2"), "--warm-steps and --warm-input set how slices are warm-started: give --warm-start too"),
    (("--stop", "heldout", "--holdout-fraction", "0.5"), r"holdout_fraction must be 0 \(off\) or in \(0, 0.5\)"),
    (("--stop", "heldout", "--holdout-fraction", "0.01"), "demo_mri_00.h5/slice_000: holdout_fraction=0.01 holds out"),
    (("--num-nodes", "0"), "--num-nodes must be a whole number >= 1"),
    (("--refit-steps", "5"), "--refit-steps refits a slice after its held-out stop: give --stop heldout too"),
    (("--stop", "heldout", "--refit-steps", "-1"), "--refit-steps must be a whole number >= 0"),
    (("--mean-with", "sense"), "argument --mean-with: invalid choice: 'sense'"),
    (("--mean-lamda", "0.001"), "--mean-lamda 0.001 is the lambda of the --mean-with image: give --mean-with too"),
    (("--mean-with", "total_variation", "--mean-lamda", "-1"), "--mean-lamda must be >= 0"),
])
def test_bad_volume_options_are_refused_before_fitting(volume, weights, tmp_path, capsys, extra, message):
    import re

    assert main(args(volume, weights, tmp_path / "out", *extra)) != 0
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out" / "demo_mri_00.h5").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_write_the_same_volume_as_one_process(volume, weights, tmp_path):
    """``--num-nodes 2``: two torchrun launches of one process each (gloo, localhost), as two machines would."""
    single, nodes = tmp_path / "single", tmp_path / "nodes"
    assert main(args(volume, weights, single)) == 0
    port = str(free_port())
    launches = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
         "--master-addr", "127.0.0.1", "--master-port", port, "-m", "ugodit_pl",
         *args(volume, weights, nodes, "--num-nodes", "2")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path) for rank in (0, 1)]
    outputs = [launch.communicate(timeout=300)[0] for launch in launches]
    assert [launch.returncode for launch in launches] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    np.testing.assert_allclose(volume_of(nodes), volume_of(single), rtol=1e-4, atol=1e-6)


def test_mean_with_l1_along_a_warm_chain_carries_the_first_slices_lambda(volume, weights, tmp_path):
    from ugodit_pl.methods.warm import load_warm_state

    plain, mean = tmp_path / "plain", tmp_path / "mean"
    assert main(args(volume, weights, plain, "--warm-start", "--slices", "0:3")) == 0
    assert main(args(volume, weights, mean, "--warm-start", "--slices", "0:3", "--mean-with", "l1_wavelet")) == 0
    summary = json.loads((mean / "reconstruct_summary.json").read_text())
    assert summary["mean_with"] == "l1_wavelet" and json.loads((plain / "reconstruct_summary.json").read_text())[
        "mean_with"] is None
    states = [load_warm_state(mean / ".warm" / f"demo_mri_00.h5.slice_{s:04d}.pt") for s in range(3)]
    assert all(state["mean_with"] == "l1_wavelet" for state in states)
    assert len({state["mean_lamda"] for state in states}) == 1  # chosen on the first slice, reused by the chain
    # the networks are those of the run without the mean: the chain carries the network's image, not the mean
    for state, other in zip(states, (load_warm_state(plain / ".warm" / f"demo_mri_00.h5.slice_{s:04d}.pt")
                                     for s in range(3))):
        assert torch.equal(state["reconstruction"], other["reconstruction"])
    assert np.isfinite(volume_of(mean)).all() and not np.array_equal(volume_of(mean), volume_of(plain))


def test_mean_lamda_fixes_each_slices_lambda_and_the_summary_records_it(volume, weights, tmp_path):
    out = tmp_path / "mean"
    assert main(args(volume, weights, out, "--slices", "0:2", "--mean-with", "l1_wavelet", "--mean-lamda", "0.003")) == 0
    items = json.loads((out / "reconstruct_summary.json").read_text())["items"]
    assert [item["mean_lamda"] for item in items] == pytest.approx([0.003, 0.003])


def test_warm_input_from_the_neighbour_by_default(volume, weights, tmp_path):
    own, neighbour = tmp_path / "own", tmp_path / "neighbour"
    assert main(args(volume, weights, own, "--warm-start", "--warm-input", "measurement", "--slices", "0:2")) == 0
    assert main(args(volume, weights, neighbour, "--warm-start", "--slices", "0:2")) == 0  # auto: the neighbour's
    first, second = volume_of(own), volume_of(neighbour)
    np.testing.assert_array_equal(first[0], second[0])  # the first slice has no neighbour
    assert np.isfinite(second).all() and not np.array_equal(first[1], second[1])
