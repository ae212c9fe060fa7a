"""Defaults are stated once (``ugodit_pl.methods.defaults`` and the signatures); what documents them agrees.

The configs, ``ugodit reconstruct --help`` and the README's sentence on the MRI defaults are checked
against the tables, and the docstrings against the code where they name a choice.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from ugodit_pl.apps.reconstruct import DEFAULT_STEPS, parse_args
from ugodit_pl.methods import ASeqDIP, DIP, ReferenceGuidedDIP, SelfGuidedDIP, UGoDITFit, UGoDITPretrain
from ugodit_pl.methods.defaults import (DEFAULT_ALPHA, DEFAULT_INPUT_LR, DEFAULT_LR, DEFAULT_NUM_DRAWS, DEFAULT_TV_WEIGHT,
                                       SEQUENTIAL_DEFAULTS)
from ugodit_pl.methods.inputs import INPUT_INITS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
OVERRIDE = "overrides the library default"


def library_default(method: str, key: str, network: str):
    """What ``key=None`` resolves to for ``method`` with ``network`` (None: not a network-dependent default)."""
    if key == "tv_weight":
        return DEFAULT_TV_WEIGHT[network]
    if method in ("ASeqDIP", "UGoDITPretrain", "UGoDITFit"):
        return SEQUENTIAL_DEFAULTS[network].get(key)
    if method == "SelfGuidedDIP":
        return {"alpha": DEFAULT_ALPHA, "input_lr": DEFAULT_INPUT_LR, "lr": DEFAULT_LR,
                "num_draws": DEFAULT_NUM_DRAWS}.get(key, {}).get(network)
    return DEFAULT_LR[network] if key == "lr" else None


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_values_are_the_library_defaults_or_say_they_are_not(path):
    config = yaml.safe_load(path.read_text())
    method = config["model"]["class_path"].rsplit(".", 1)[1]
    args = config["model"]["init_args"]
    network = args.get("network") or ("unet" if path.name.startswith("mri_") else "skip")
    lines = path.read_text().splitlines()
    checked = 0
    for key in ("lam", "lr", "alpha", "input_lr", "num_draws", "tv_weight"):
        expected = library_default(method, key, network)
        if key not in args or expected is None:
            continue
        line = next(text for text in lines if re.match(rf"\s+{key}:", text))
        if OVERRIDE not in line:
            assert float(args[key]) == expected, f"{path.name}: {key} {args[key]} is not the library default {expected}"
        checked += 1
    assert checked or method in ("DIP",), f"{path.name} sets none of lam, lr, alpha, input_lr"


def test_config_comments_state_no_library_value_of_their_own():
    """The header of an MRI config names the tables instead of repeating (and mis-stating) their values."""
    for path in CONFIGS:
        header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
        for stale in ("lambda 0.1", "lambda 0.8", "lr 1e-3", "alpha 0.5"):
            assert stale not in header, f"{path.name} states {stale!r}; refer to ugodit_pl.methods.defaults"


def test_reconstruct_help_gives_the_library_defaults(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{SEQUENTIAL_DEFAULTS['unet']['lr']:g} for the U-Net" in text
    assert f"{SEQUENTIAL_DEFAULTS['skip']['lr']:g} for the skip network" in text
    assert f"{DEFAULT_STEPS['mri']} for MRI" in text


def test_readme_states_the_mri_defaults_of_the_tables():
    text = " ".join((ROOT / "README.md").read_text().split())
    found = re.search(r"lambda ([\d.e-]+) and lr ([\d.e-]+) for aSeqDIP and UGoDIT, alpha ([\d.e-]+) and input lr "
                      r"([\d.e-]+) for Self-Guided DIP", text)
    assert found, "the README's sentence on the MRI configs' defaults is gone: update this test with it"
    assert [float(v) for v in found.groups()] == [SEQUENTIAL_DEFAULTS["unet"]["lam"], SEQUENTIAL_DEFAULTS["unet"]["lr"],
                                                  DEFAULT_ALPHA["unet"], DEFAULT_INPUT_LR["unet"]]


@pytest.mark.parametrize("cls", [DIP, ReferenceGuidedDIP, SelfGuidedDIP, ASeqDIP, UGoDITPretrain, UGoDITFit])
def test_every_argument_is_documented(cls):
    """Each argument of a method's own signature is in its docstring (or its bases')."""
    docs = "".join(inspect.getdoc(klass) or "" for klass in cls.__mro__ if klass.__module__.startswith("ugodit_pl"))
    for name in inspect.signature(cls.__init__).parameters:
        if name not in ("self", "kwargs"):
            assert re.search(rf"\b{name}\b", docs), f"{cls.__name__}: argument {name!r} is not documented"


def test_documented_input_inits_are_the_accepted_ones():
    doc = inspect.getdoc(SelfGuidedDIP)
    for init in INPUT_INITS:
        assert f'"{init}"' in doc, f"SelfGuidedDIP's docstring does not list input_init={init!r}"


def test_no_docstring_cites_a_file_outside_the_repository():
    for folder in ("ugodit_pl", "datamodules", "callbacks"):
        for path in (ROOT / folder).rglob("*.py"):
            assert "DESIGN.md" not in path.read_text(), f"{path.relative_to(ROOT)} cites DESIGN.md, not in the repository"
