"""Two CPU processes (gloo, Lightning's "ddp" strategy) compute what one process computes.

Group pre-training shards the measurements over the ranks (uneven shards included) and
all-reduces the encoder gradients; fitting a set of measurements gives each rank its own (and, with
``mean_with``, its rows' compressed-sensing images, shared with the other rank); Self-Guided
DIP's inputs z are parameters whose gradients DDP reduces, and its noise is drawn per row. Mixed
precision with clipping runs under DDP, and a loader that serves every rank the same rows is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
SCRIPT = Path(__file__).with_name("ddp_fit.py")


def launch(kind: str, devices: int, tmp_path: Path) -> subprocess.CompletedProcess:
    out = tmp_path / f"{kind}-{devices}.pt"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), kind, str(devices), str(out)],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )


def run(kind: str, devices: int, tmp_path: Path) -> dict:
    result = launch(kind, devices, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp_path / f"{kind}-{devices}.pt", weights_only=True)


@pytest.mark.parametrize("kind", ["pretrain", "fit", "selfguided"])
def test_two_processes_equal_one_process(kind, tmp_path):
    one, two = run(kind, 1, tmp_path), run(kind, 2, tmp_path)
    assert one["parameters"].keys() == two["parameters"].keys()
    for name, value in one["parameters"].items():
        torch.testing.assert_close(two["parameters"][name], value, rtol=1e-5, atol=1e-5, msg=f"parameter {name} differs")
    torch.testing.assert_close(two["inputs"], one["inputs"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(two["reconstructions"], one["reconstructions"], rtol=1e-4, atol=1e-4)


def test_mixed_precision_and_clipping_under_ddp(tmp_path):
    result = run("flags", 2, tmp_path)
    assert torch.isfinite(result["reconstructions"]).all() and result["reconstructions"].dtype == torch.float32


def test_a_data_module_that_does_not_shard_is_refused_before_fitting(tmp_path):
    result = launch("unsharded", 2, tmp_path)
    assert result.returncode != 0
    assert "measurements [0, 1] are served to more than one process" in result.stderr
    assert not (tmp_path / "unsharded-2.pt").exists()
