"""The README is executable documentation: its CI commands, its CLI examples and its code example."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block_after(marker: str) -> tuple[str, str]:
    """(language, code) of the first fenced block after ``marker`` in the README."""
    start = README.index(marker) + len(marker)
    match = re.compile(r"```(\w*)\n(.*?)\n```", re.S).search(README, start)
    assert match is not None, f"no code block after {marker}"
    return match.group(1), match.group(2)


def first_command(marker: str) -> str:
    """What .ci/run executes: the first non-empty line of the block after the marker."""
    _, code = block_after(marker)
    return next(line for line in code.splitlines() if line.strip())


def test_ci_commands_install_run_the_demo_and_test():
    install = first_command("<!-- ci:install -->")
    assert 'pip install "torch==2.13.0" -e ".[test]"' in install
    assert "&& ugodit demo --out demo_output" in install
    assert first_command("<!-- ci:test -->") == "python -m pytest"
    # the two commands come first: before any other section of the README
    assert README.index("<!-- ci:install -->") < README.index("<!-- ci:test -->") < README.index("## The demo")


def test_every_config_the_readme_names_exists():
    named = set(re.findall(r"configs/([\w.*-]+\.yaml)", README)) - {"X.yaml"}  # X.yaml: the placeholder
    assert len(named) >= 10, "the README shows the configs"
    missing = sorted(name for name in named if not list((ROOT / "configs").glob(name)))
    assert not missing


def readme_commands() -> list:
    """The ``ugodit ...`` lines of the README's bash blocks (comments removed, without the install line)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)\n```", README, re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("ugodit "):
                lines.append(shlex.split(line)[1:])
    return lines


def test_readme_cli_examples_parse(capsys, monkeypatch):
    """Every ``ugodit`` example of the README parses: LightningCLI lines with --print_config (which checks
    every key and value), the other commands with their own parsers."""
    from ugodit_pl.apps import classical_volumes, compare, demo, reconstruct
    from ugodit_pl.apps.cli import LIGHTNING_COMMANDS, main

    monkeypatch.chdir(ROOT)
    commands = readme_commands()
    assert {args[0] for args in commands} >= {"fit", "test", "reconstruct", "classical", "compare"}
    for args in commands:
        if args[0] in LIGHTNING_COMMANDS:
            assert main([*args, "--print_config"]) == 0, args
        elif args[0] == "reconstruct":
            reconstruct.parse_args(args[1:])
        elif args[0] == "classical":
            classical_volumes.parse_args(args[1:])
        elif args[0] == "compare":
            compare.parse_args(args[1:])
        elif args[0] == "demo":
            demo.parse_args(args[1:])
        else:
            raise AssertionError(f"unknown command in the README: {args}")
    capsys.readouterr()


def test_demo_numbers_in_readme_match_the_documented_settings():
    section = README[README.index("## The demo"):README.index("## The command line")]
    assert "96x96" in section and "250 steps" in section and "--quick" in section
    assert "PSNR" in section and "SSIM" in section and "L1-wavelet" in section and "UGoDIT untrained" in section


def test_the_lightning_example_runs(tmp_path, monkeypatch):
    language, code = block_after("<!-- readme:example -->")
    assert language == "python"
    assert re.search(r"^STEPS = \d+", code, re.M), "the example's step count is the marked variable STEPS"
    tiny = re.sub(r"^STEPS = \d+", "STEPS = 2", code, flags=re.M)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(tiny, "README.md example", "exec"), namespace)  # noqa: S102 - executing our own README
    assert (tmp_path / "runs" / "readme" / "transferable_weights.pt").is_file()
    metrics, fit = namespace["metrics"], namespace["fit"]
    assert set(metrics.final) >= {"psnr", "ssim"}
    assert tuple(fit.reconstruction.shape) == (1, 2, 96, 96)
    written = sorted(p.name for p in (tmp_path / "runs" / "readme" / "images" / "step_000002").iterdir())
    assert written == ["0_error.png", "0_reconstruction.png", "0_target.png"]
