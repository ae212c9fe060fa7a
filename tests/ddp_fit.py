"""Fit a tiny problem on 1 or 2 CPU processes and save the result (run by tests/test_ddp.py).

Usage: python tests/ddp_fit.py {pretrain,fit,selfguided,flags,unsharded} DEVICES OUT.pt
With DEVICES=2, Lightning's "ddp" strategy starts the second process by running this script again.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from method_problems import TINY_UNET, FixedBatch, ShardedFixedBatch, mri_batch  # noqa: E402
from ugodit_pl.methods import ASeqDIP, SelfGuidedDIP, UGoDITPretrain  # noqa: E402

STEPS = 20
# Float64: right after an input update z = f(z) the proximity term's gradient is zero and Adam
# turns round-off (which depends on the all-reduce's summation order) into full-size steps, so
# float32 runs drift apart chaotically; in float64 the round-off stays far below the tolerance.
# A bias right before BatchNorm has an exactly-zero gradient for the same reason: none here.
NETWORK = {**TINY_UNET, "conv_bias": False}


def main(kind: str, devices: int, out: str) -> None:
    precision, clip, dataset = "64-true", None, ShardedFixedBatch
    if kind == "pretrain":
        batch = mri_batch(num=3, size=16, seed=3)  # 3 measurements on 2 ranks: shards of 2 and 1
        method = UGoDITPretrain(num_measurements=3, network="unet", network_args=NETWORK, lr=1e-3, update_every=5)
    elif kind == "selfguided":  # z optimised with the weights, noise drawn per row
        batch = mri_batch(num=2, size=16, seed=5)
        method = SelfGuidedDIP(num_measurements=2, network="unet", network_args=NETWORK, lr=1e-3, num_draws=2)
    else:
        batch = mri_batch(num=2, size=16, seed=4)
        method = ASeqDIP(num_measurements=2, network="unet", network_args=NETWORK, lr=1e-3, update_every=5,
                         mean_with="l1_wavelet" if kind == "fit" else None)  # each rank works out its rows' L1 image
        if kind == "flags":
            precision, clip = "bf16-mixed", 1.0
        elif kind == "unsharded":
            dataset = FixedBatch  # every process is served both rows: refused before the first step
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision=precision,
        gradient_clip_val=clip,
    )
    trainer.fit(method, torch.utils.data.DataLoader(dataset(batch, STEPS), batch_size=None))
    if trainer.is_global_zero:
        torch.save(
            {
                "parameters": {k: v.detach() for k, v in method.named_parameters()},
                "inputs": method.fit_state.inputs.detach(),
                "reconstructions": method.all_reconstructions(),
            },
            out,
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
