"""Every method's output after 20 fixed-seed steps at a tiny size, pinned (MRI and images).

``data/pinned_outputs.json`` holds the reconstruction (EMA) and the last output of each method, fitted
in float64 end to end (the problems are built in float64 and rounded once, the measurements enter the
fit in its precision, and UGoDITFit keeps the float64 transferable weights), so that neither the CPU's
instruction set nor the thread count moves them by more than the tolerance; each at its
defaults but for the learning rate (1e-2; 3e-3 for the residual MRI U-Nets, whose tiny fits amplify
round-off at 1e-2). History: the natural-image values and the MRI DIP were recorded after the
fitting loop was rewritten (its noise is drawn per measurement, Self-Guided DIP moves its input from
the first step); the other MRI values after the residual U-Net, the coil-summed data term and the new
Self-Guided DIP defaults (with ``residual=False`` and the old defaults the previous values still
held to 1e-7); all of them again when the fit became float64 end to end (before, UGoDITFit rounded
its encoder to float32 on load and the problems were built in float32, which moved UGoDITFit by 3e-5
of the peak on an AMD EPYC against the Intel Xeon that recorded them); the MRI values again when the U-Net's
default objective took the total-variation term (``DEFAULT_TV_WEIGHT``; the natural-image values did not move);
ASeqDIP's and UGoDIT's MRI values again when the U-Net's lambda went from 0.8 to 0.4 (``SEQUENTIAL_DEFAULTS``).
A change that moves any of them is a change of the methods' results: say so, then
re-record with ``python tests/test_pinned_outputs.py`` (with this checkout first on ``PYTHONPATH``).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import pytest
import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from method_problems import TINY_SKIP, TINY_UNET, loader, mri_batch, sr_batch  # noqa: E402
from ugodit_pl.methods import DIP, ASeqDIP, ReferenceGuidedDIP, SelfGuidedDIP, UGoDITFit, UGoDITPretrain  # noqa: E402

FIXTURE = Path(__file__).with_name("data") / "pinned_outputs.json"
STEPS = 20
METHODS = ("DIP", "ReferenceGuidedDIP", "SelfGuidedDIP", "ASeqDIP", "UGoDITPretrain", "UGoDITFit")


def pinned_outputs(task: str) -> Dict[str, Dict[str, List[float]]]:
    """Fit every method for ``STEPS`` steps on the task's tiny problem; their outputs, flattened."""
    if task == "mri":
        batch, group = mri_batch(num=1, size=16, seed=2), mri_batch(num=2, size=16, seed=5)
        network, args, dip_args = "unet", TINY_UNET, TINY_UNET
    else:
        batch, group = sr_batch(num=1, size=16, seed=2), sr_batch(num=2, size=16, seed=5)
        network, args, dip_args = "skip", TINY_SKIP, {**TINY_SKIP, "in_channels": 4}
    common = dict(network=network, lr=1e-2)
    image_input = dict(network=network, lr=3e-3 if task == "mri" else 1e-2)  # residual U-Nets for MRI
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        weights = str(Path(folder) / "encoder.pt")
        makers = {
            "DIP": lambda: DIP(network_args=dip_args, **common),
            "ReferenceGuidedDIP": lambda: ReferenceGuidedDIP(network_args=args, residual=task == "mri", **image_input),
            "SelfGuidedDIP": lambda: SelfGuidedDIP(network_args=args, num_draws=2, input_lr=1e-2, **image_input),
            "ASeqDIP": lambda: ASeqDIP(network_args=args, update_every=5, **image_input),
            "UGoDITPretrain": lambda: UGoDITPretrain(num_measurements=2, network_args=args, update_every=5,
                                                     weights_path=weights, **image_input),
            "UGoDITFit": lambda: UGoDITFit(weights=weights, lr=image_input["lr"], update_every=5),
        }
        for name in METHODS:  # in this order: UGoDITFit reads the pre-training's weights
            method = makers[name]().double()
            pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                       enable_progress_bar=False, enable_model_summary=False).fit(
                method, loader(group if name == "UGoDITPretrain" else batch, STEPS))
            results[name] = {"reconstruction": method.all_reconstructions().flatten().tolist(),
                             "last": method.current_output.flatten().tolist()}
    return results


@pytest.fixture(scope="module", params=[("mri", 1), ("mri", 2), ("sr", 1), ("sr", 2)], ids=lambda p: f"{p[0]}-{p[1]}thread")
def outputs(request):
    """The task's outputs fitted at 1 and at 2 threads: neither the CPU nor the thread count may move them."""
    task, threads = request.param
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return task, pinned_outputs(task)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", METHODS)
def test_outputs_are_the_pinned_ones(outputs, name):
    task, current = outputs
    expected = json.loads(FIXTURE.read_text())[task][name]
    for kind in ("reconstruction", "last"):
        want, got = torch.tensor(expected[kind]), torch.tensor(current[name][kind])
        peak = float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * peak, msg=f"{task} {name} {kind} moved")


if __name__ == "__main__":  # re-record the fixture (see the module docstring)
    torch.set_num_threads(1)
    record = {task: {name: {kind: [float(f"{v:.9g}") for v in values] for kind, values in outs.items()}
                     for name, outs in pinned_outputs(task).items()} for task in ("mri", "sr")}
    FIXTURE.write_text(json.dumps(record, separators=(",", ":")) + "\n")
    print(f"wrote {FIXTURE}")
