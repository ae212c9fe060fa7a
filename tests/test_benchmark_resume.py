"""A killed ``mri-quality``, ``transfer-study`` or ``volume`` run loses only the units under way: its journal
resumes it with the same results."""

from __future__ import annotations

import json

import pytest
import torch

from ugodit_pl.apps.benchmarks import cli, mri_quality, transfer_study, volume
from ugodit_pl.apps.benchmarks.journal import Journal

SUBSET = ["--set", 'problems=["brain 48x40 4x"]', "--set", 'methods=["aseqdip", "ugodit"]']


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _argv(out, data, *extra):
    return ["mri-quality", "--preset", "tiny", "--out", str(out), "--threads", "1", "--device", "cpu",
            "--data", str(data), *SUBSET, *extra]


def _counting(monkeypatch, kill_at=None):
    """Count the units ``mri_quality`` runs (all in this process: the tiny preset has one worker); with
    ``kill_at``, interrupt the run as that unit starts, as a kill would."""
    run, labels = mri_quality._task, []

    def task(unit):
        labels.append(unit["label"])
        if kill_at is not None and len(labels) == kill_at:
            raise KeyboardInterrupt
        return run(unit)

    monkeypatch.setattr(mri_quality, "_task", task)
    return labels


def _without_timings(value):
    """A result with every timing left out (they differ between any two runs)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if "seconds" not in k and k not in ("slices_per_hour", "warm_time_ratio")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_a_killed_run_resumes_where_it_stopped_and_writes_the_uninterrupted_results(tmp_path, shared_data,
                                                                                     monkeypatch, capsys):
    assert cli.main(_argv(tmp_path / "reference", shared_data)) == 0
    reference = json.loads((tmp_path / "reference" / "mri-quality.json").read_text())

    out = tmp_path / "killed"
    labels = _counting(monkeypatch, kill_at=3)
    with pytest.raises(KeyboardInterrupt):
        cli.main(_argv(out, shared_data))
    # the pre-training and the first unit of the panel landed; nothing else was written
    assert labels[0] == "pre-training 4x" and len(Journal(out / "mri-quality.partial", {})) == 2
    assert (out / "mri-quality.partial" / "encoder_4x.pt").is_file() and not (out / "mri-quality.json").exists()

    # another run's settings are refused, naming the folder and what differs; nothing is fitted
    labels.clear()
    assert cli.main(_argv(out, shared_data, "--set", "steps=5")) == 2
    error = capsys.readouterr().err
    assert "mri-quality.partial" in error and "overrides" in error and "--fresh" in error and labels == []

    labels = _counting(monkeypatch)
    assert cli.main(_argv(out, shared_data)) == 0
    resumed = json.loads((out / "mri-quality.json").read_text())
    assert len(labels) == 2 and "pre-training 4x" not in labels  # only the two units that had not finished
    assert resumed["resumed_units"] == 2 and not (out / "mri-quality.partial").exists()
    ours, theirs = (d["result"]["problems"]["brain 48x40 4x"]["methods"] for d in (resumed, reference))
    assert set(ours) == set(theirs) and _without_timings(ours) == _without_timings(theirs)
    assert resumed["result"]["summary"]["4x"]["methods"]["aseqdip"]["mean_psnr"] == \
        reference["result"]["summary"]["4x"]["methods"]["aseqdip"]["mean_psnr"]


def test_fresh_discards_an_interrupted_run_and_a_refused_setting_leaves_no_journal(tmp_path, shared_data,
                                                                                   monkeypatch):
    out = tmp_path / "out"
    _counting(monkeypatch, kill_at=2)
    with pytest.raises(KeyboardInterrupt):
        cli.main(_argv(out, shared_data))
    labels = _counting(monkeypatch)
    assert cli.main(_argv(out, shared_data, "--fresh")) == 0
    assert len(labels) == 4 and "resumed_units" not in json.loads((out / "mri-quality.json").read_text())
    # a setting refused before any fit leaves nothing to resume (the next, corrected, run is not refused)
    assert cli.main(_argv(out, shared_data, "--set", 'methods=["nonsense"]')) == 2
    assert not (out / "mri-quality.partial").exists()


def test_a_failed_fit_is_raised_after_the_others_landed(tmp_path, shared_data, monkeypatch, capsys):
    run = mri_quality._task

    def task(unit):
        if unit["label"].endswith(": aseqdip"):
            raise RuntimeError("out of memory")
        return run(unit)

    monkeypatch.setattr(mri_quality, "_task", task)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="out of memory"):
        cli.main(_argv(out, shared_data))
    assert "failed: brain 48x40 4x: aseqdip: RuntimeError: out of memory" in capsys.readouterr().out
    journal = Journal(out / "mri-quality.partial", {})
    assert len(journal) == 3 and journal.get("brain 48x40 4x: ugodit") is not None  # fitted after the failure
    monkeypatch.setattr(mri_quality, "_task", run)
    labels = _counting(monkeypatch)
    assert cli.main(_argv(out, shared_data)) == 0 and labels == ["brain 48x40 4x: aseqdip"]


def test_journal_refuses_another_identity_and_keeps_files_inside_its_folder(tmp_path):
    folder = tmp_path / "run.partial"
    journal = Journal(folder, {"seed": 0, "preset": "quick"})
    assert journal.open() == 0 and journal.get("a: dip") is None
    journal.put("a: dip", {"psnr": [1.5, None]})
    journal.put("a/b: dip", {"psnr": 2.0})  # keys are any text; the file names stay in the folder
    assert journal.get("a: dip") == {"psnr": [1.5, None]} and journal.get("a/b: dip") == {"psnr": 2.0}
    with pytest.raises(ValueError, match=r"run\.partial holds .* differs in seed \(there: seed=0\)"):
        Journal(folder, {"seed": 1, "preset": "quick"}).open()
    assert Journal(folder, {"seed": 1, "preset": "quick"}, fresh=True).open() == 0
    with pytest.raises(ValueError, match="journal file name"):
        journal.file("../encoder.pt")
    assert journal.file("encoder_4x.pt").parent == folder


def _volume_argv(out, data, *extra):
    return ["volume", "--preset", "tiny", "--out", str(out), "--threads", "1", "--device", "cpu", "--data", str(data),
            "--set", 'methods=["aseqdip", "ugodit"]', "--set", 'modes=["warm"]', *extra]


def test_a_killed_volume_run_resumes_with_the_chains_that_finished(tmp_path, shared_data, monkeypatch):
    assert cli.main(_volume_argv(tmp_path / "reference", shared_data)) == 0
    reference = json.loads((tmp_path / "reference" / "volume.json").read_text())

    chain, chains = volume.run_chain, []

    def killed_at_ugodit(method_name, *args, **kwargs):
        chains.append(method_name)
        if method_name == "ugodit":
            raise KeyboardInterrupt
        return chain(method_name, *args, **kwargs)

    out = tmp_path / "killed"
    monkeypatch.setattr(volume, "run_chain", killed_at_ugodit)
    with pytest.raises(KeyboardInterrupt):
        cli.main(_volume_argv(out, shared_data))
    # the encoder's pre-training, the baselines and aSeqDIP's two chains landed
    assert chains == ["aseqdip", "aseqdip", "ugodit"] and len(Journal(out / "volume.partial", {})) == 3

    chains.clear()
    monkeypatch.setattr(volume, "run_chain", lambda method_name, *a, **k: chains.append(method_name) or chain(
        method_name, *a, **k))
    assert cli.main(_volume_argv(out, shared_data)) == 0
    resumed = json.loads((out / "volume.json").read_text())
    assert chains == ["ugodit", "ugodit"] and resumed["resumed_units"] == 3  # its cold and warm chains only
    assert not (out / "volume.partial").exists()
    assert _without_timings(resumed["result"]["volumes"]) == _without_timings(reference["result"]["volumes"])
    assert resumed["result"]["pretraining"]["measurements"] == reference["result"]["pretraining"]["measurements"]


def test_a_killed_transfer_study_resumes_with_the_fits_that_finished(tmp_path, shared_data, monkeypatch):
    argv = ["transfer-study", "--preset", "tiny", "--threads", "1", "--device", "cpu", "--data", str(shared_data),
            "--set", 'variants=["default", "lambda = 4", "untrained encoder (1 pre-training step)"]']
    assert cli.main([*argv, "--out", str(tmp_path / "reference")]) == 0
    reference = json.loads((tmp_path / "reference" / "transfer-study.json").read_text())

    fit, fits = transfer_study._fit, []

    def killed_at_the_second_ugodit_fit(name, *args, **kwargs):
        fits.append(name)
        if fits.count("ugodit") == 2:
            raise KeyboardInterrupt
        return fit(name, *args, **kwargs)

    out = tmp_path / "killed"
    monkeypatch.setattr(transfer_study, "_fit", killed_at_the_second_ugodit_fit)
    with pytest.raises(KeyboardInterrupt):
        cli.main([*argv, "--out", str(out)])
    # the default group's pre-training, aSeqDIP at the defaults and at lambda 4, UGoDIT at the defaults
    assert fits == ["aseqdip", "ugodit", "aseqdip", "ugodit"] and len(Journal(out / "transfer-study.partial", {})) == 4

    fits.clear()
    monkeypatch.setattr(transfer_study, "_fit", lambda name, *a, **k: fits.append(name) or fit(name, *a, **k))
    assert cli.main([*argv, "--out", str(out)]) == 0
    resumed = json.loads((out / "transfer-study.json").read_text())
    assert fits == ["ugodit", "ugodit"] and resumed["resumed_units"] == 4  # lambda 4, then the control
    assert _without_timings(resumed["result"]["variants"]) == _without_timings(reference["result"]["variants"])
