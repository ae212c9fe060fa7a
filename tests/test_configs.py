"""Every YAML config parses through the CLI and runs through it at a tiny size.

The configs point at ``../shared/data`` relative to the repository root, so each run happens in a
temporary "repository" folder whose ``../shared`` is the real shared folder and whose ``configs/``
holds the real configs; outputs (``runs/...``) land there. The network widths, image sizes and step
counts are overridden on the command line to tiny values, in-process through ``ugodit_pl.apps.cli.main``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from ugodit_pl.apps.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
SHARED = ROOT.parent / "shared"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))

EXPECTED = {
    "mri_ugodit_pretrain_4x", "mri_ugodit_fit_4x", "mri_ugodit_pretrain_8x", "mri_ugodit_fit_8x",
    "mri_self_guided_dip", "mri_aseqdip", "mri_dip",
    "sr_ugodit_pretrain", "sr_ugodit_fit",
    "deblur_gaussian_ugodit_pretrain", "deblur_gaussian_ugodit_fit",
    "deblur_motion_ugodit_pretrain", "deblur_motion_ugodit_fit",
    "deblur_nonlinear_ugodit_pretrain", "deblur_nonlinear_ugodit_fit",
    "inpainting_ugodit_pretrain", "inpainting_ugodit_fit",
}
TINY_UNET = json.dumps({"in_channels": 2, "out_channels": 2, "channels": [4, 8, 8, 8]})
TINY_SKIP = json.dumps({"in_channels": 3, "out_channels": 3, "channels_down": [4, 4], "channels_up": [4, 4],
                        "channels_skip": [1, 1]})
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def load(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())


# ------------------------------------------------------------------------------------------ the files
def test_the_paper_experiments_all_have_a_config():
    assert EXPECTED <= {path.stem for path in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_documented(path):
    text = path.read_text()
    assert text.startswith("# "), "a config starts with a comment saying what it runs"
    assert f"ugodit fit --config configs/{path.name}" in text, "the header shows the command that runs it"
    keys = [line for line in text.splitlines() if re.match(r"^\s+\w+:\s*\S", line) and "class_path" not in line]
    commented = [line for line in keys if "#" in line]
    assert len(commented) >= len(keys) // 3, "most non-obvious keys carry a comment"
    # YAML 1.1 reads an unquoted 10:20 as the base-60 integer 620: slice ranges must be quoted
    assert not re.search(r"_slices:\s*\d+:\d+", text)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_through_the_cli(path, capsys):
    assert main(["fit", "--config", str(path), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    original = yaml.safe_load(path.read_text())
    assert printed["model"]["class_path"].rsplit(".", 1)[-1] == original["model"]["class_path"].rsplit(".", 1)[-1]
    assert printed["data"]["class_path"].rsplit(".", 1)[-1] == original["data"]["class_path"].rsplit(".", 1)[-1]
    assert printed["trainer"]["max_steps"] == original["trainer"]["max_steps"]
    for key, value in original["model"]["init_args"].items():
        assert printed["model"]["init_args"][key] == value, key
    # num_measurements is linked from the data module, not a model key of the config
    assert "num_measurements" not in printed["model"]["init_args"]


def test_authors_defaults_in_the_super_resolution_demo():
    pre, fit = load("sr_ugodit_pretrain"), load("sr_ugodit_fit")
    data = pre["data"]["init_args"]
    assert data["pretrain_images"] == ["00013.png", "00016.png", "00018.png", "00019.png"]
    assert data["images"] == ["00002.png"] and data["operator_args"] == {"scale_factor": 4}
    net = pre["model"]["init_args"]["network_args"]
    assert net["channels_down"] == [128] * 5 and net["channels_up"] == [128] * 5 and net["channels_skip"] == [4] * 5
    for config in (pre, fit):
        args = config["model"]["init_args"]
        assert (args["lr"], args["lam"], args["update_every"]) == (0.01, 2.0, 10)
        assert config["trainer"]["max_steps"] == 20000
    assert fit["model"]["init_args"]["weights"] == "runs/sr_ugodit/transferable_weights.pt"


def test_mri_configs_read_the_shared_data_and_pair_up():
    for name in ("mri_ugodit_pretrain_4x", "mri_ugodit_fit_4x", "mri_aseqdip", "mri_dip", "mri_self_guided_dip"):
        assert load(name)["data"]["init_args"]["data_dir"] == "../shared/data/mri"
    for factor, fraction in (("4x", 0.08), ("8x", 0.04)):
        pre, fit = load(f"mri_ugodit_pretrain_{factor}"), load(f"mri_ugodit_fit_{factor}")
        assert pre["data"]["init_args"]["acceleration"] == fit["data"]["init_args"]["acceleration"] == float(factor[0])
        assert pre["data"]["init_args"]["center_fraction"] == fit["data"]["init_args"]["center_fraction"] == fraction
        writes = pre["trainer"]["callbacks"][0]["init_args"]["dirpath"]
        assert fit["model"]["init_args"]["weights"] == f"{writes}/transferable_weights.pt"
        for key in ("loss_norm", "lam", "update_every", "input_update"):
            assert pre["model"]["init_args"][key] == fit["model"]["init_args"][key], key


# ------------------------------------------------------------------------------------------ tiny runs
@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A temporary working copy whose ../shared is the real shared folder (configs' relative paths)."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"real data not found at {SHARED / 'data'} (the project's ../shared/data)")
    work = tmp_path / "repo"
    (work / "configs").mkdir(parents=True)
    for path in CONFIGS:
        shutil.copy(path, work / "configs" / path.name)
    os.symlink(SHARED, tmp_path / "shared")
    monkeypatch.chdir(work)
    return work


def run(*args: str) -> int:
    return main([*args, *QUIET])


def test_mri_ugodit_4x_pretrain_fit_test_predict(repo, capsys):
    assert run("fit", "--config", "configs/mri_ugodit_pretrain_4x.yaml", "--trainer.max_steps", "2",
               "--model.init_args.network_args", TINY_UNET, "--data.init_args.crop_size", "[32, 32]") == 0
    weights = repo / "runs/mri_ugodit_4x/transferable_weights.pt"
    assert weights.is_file()
    assert run("fit", "--config", "configs/mri_ugodit_fit_4x.yaml", "--trainer.max_steps", "2",
               "--data.init_args.crop_size", "[32, 32]") == 0
    assert (repo / "runs/mri_ugodit_4x/reconstructions/espirit_brain_full.h5").is_file()
    checkpoint = repo / "runs/mri_ugodit_4x/checkpoints/last.ckpt"
    assert checkpoint.is_file()
    capsys.readouterr()
    for command in ("test", "validate", "predict"):
        assert run(command, "--config", "configs/mri_ugodit_fit_4x.yaml", "--data.init_args.crop_size", "[32, 32]",
                   "--ckpt_path", str(checkpoint)) == 0, command
    out = capsys.readouterr().out
    assert "test/psnr" in out and "val/psnr" in out
    predictions = torch.load(repo / "runs/mri_ugodit_4x/predictions.pt", weights_only=True)
    assert predictions["name"] == ["espirit_brain_full.h5/slice_000"]
    assert tuple(predictions["reconstruction"].shape) == (1, 2, 32, 32)


def test_mri_ugodit_8x_pretrain_and_fit(repo):
    assert run("fit", "--config", "configs/mri_ugodit_pretrain_8x.yaml", "--trainer.max_steps", "2",
               "--model.init_args.network_args", TINY_UNET, "--data.init_args.crop_size", "[48, 48]") == 0
    assert run("fit", "--config", "configs/mri_ugodit_fit_8x.yaml", "--trainer.max_steps", "2",
               "--data.init_args.crop_size", "[48, 48]") == 0
    assert (repo / "runs/mri_ugodit_8x/reconstructions/espirit_brain_full.h5").is_file()


@pytest.mark.parametrize("name", ["mri_self_guided_dip", "mri_aseqdip", "mri_dip"])
def test_mri_baselines_run(repo, name):
    assert run("fit", "--config", f"configs/{name}.yaml", "--trainer.max_steps", "2",
               "--model.init_args.network_args", TINY_UNET, "--data.init_args.crop_size", "[32, 32]") == 0
    assert (repo / f"runs/{name}/reconstructions/espirit_brain_full.h5").is_file()


@pytest.mark.parametrize("task", ["sr", "deblur_gaussian", "deblur_motion", "inpainting"])
def test_image_ugodit_pretrain_and_fit(repo, task):
    tiny_operator = {
        "sr": [],
        "deblur_gaussian": ["--data.init_args.operator_args", '{"kernel_size": 7, "sigma": 1.0}'],
        "deblur_motion": ["--data.init_args.operator_args", '{"kernel_size": 7, "intensity": 0.5}'],
        "inpainting": ["--data.init_args.operator_args", '{"mask": "box", "box_size": 8, "margin": 4}'],
    }[task]
    common = ["--trainer.max_steps", "2", "--data.init_args.size", "32", *tiny_operator]
    assert run("fit", "--config", f"configs/{task}_ugodit_pretrain.yaml", "--model.init_args.network_args", TINY_SKIP,
               *common) == 0
    assert (repo / f"runs/{task}_ugodit/transferable_weights.pt").is_file()
    if task == "sr":  # two test images: the CLI links data.num_measurements (2) to the model's
        common += ["--data.init_args.images", "[00002.png, 00001.png]"]
    assert run("fit", "--config", f"configs/{task}_ugodit_fit.yaml", *common) == 0
    written = sorted(p.name for p in (repo / f"runs/{task}_ugodit/reconstructions").glob("*.png"))
    assert written == (["00001.png", "00002.png"] if task == "sr" else ["00002.png"])


@pytest.mark.parametrize("stage", ["pretrain", "fit"])
def test_nonlinear_deblurring_without_its_weights_says_where_to_put_them(repo, stage, capsys):
    from ugodit_pl.methods import save_transferable_weights
    from ugodit_pl.nets import build_network

    config = f"configs/deblur_nonlinear_ugodit_{stage}.yaml"
    assert "weights/GOPRO_wVAE.pth" in (repo / config).read_text()
    assert not (repo / "weights/GOPRO_wVAE.pth").exists()
    args = ["--trainer.max_steps", "2", "--data.init_args.size", "128"]
    if stage == "pretrain":
        args += ["--model.init_args.network_args", TINY_SKIP]
    else:  # transferable weights of a tiny skip network, so that the data are the only thing missing
        network_args = json.loads(TINY_SKIP)
        save_transferable_weights("tiny.pt", build_network("skip", **network_args).encoder, network="skip",
                                  network_args=network_args)
        args += ["--model.init_args.weights", "tiny.pt"]
    capsys.readouterr()
    code = run("fit", "--config", config, *args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1
    assert "Traceback" not in err
    assert lines[-1].startswith("ugodit fit: error:")
    assert "GOPRO_wVAE.pth" in lines[-1] and "no file at" in lines[-1]
