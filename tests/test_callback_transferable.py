"""TransferableWeightsCheckpoint: latest/periodic/best files, UGoDITFit from them, resuming pre-training."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from callback_problems import TINY_UNET, loader, mri_batch, trainer
from ugodit_pl.callbacks import TransferableWeightsCheckpoint
from ugodit_pl.methods import ASeqDIP, UGoDITFit, UGoDITPretrain, load_transferable_weights


class EncoderRecorder(pl.Callback):
    """The encoder weights and the monitored value after every step."""

    def __init__(self, monitor):
        self.monitor, self.encoders, self.values = monitor, {}, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.encoders[trainer.global_step] = copy.deepcopy(pl_module.encoder.state_dict())
        self.values[trainer.global_step] = float(trainer.callback_metrics[self.monitor])


def same_state(a, b):
    return set(a) == set(b) and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def pretrain(**kwargs):
    return UGoDITPretrain(num_measurements=2, network="unet", network_args=TINY_UNET, lr=0.01, **kwargs)


def test_latest_and_best_files_and_a_fit_from_them(tmp_path):
    batch = mri_batch(num=2, size=16)
    monitor = "train/data_consistency"
    ckpt = TransferableWeightsCheckpoint(tmp_path / "weights", every_n_steps=2, monitor=monitor)
    recorder = EncoderRecorder(monitor)
    method = pretrain()
    trainer(5, [recorder, ckpt], log_every_n_steps=1).fit(method, loader(batch))

    # the latest file: written at the end, holding the final encoder
    latest = load_transferable_weights(ckpt.last_path)
    assert same_state(latest["encoder"], method.encoder.state_dict())
    assert latest["network"] == "unet" and latest["network_args"]["channels"] == [4, 8, 8, 8]
    assert latest["metadata"]["steps"] == 5 and latest["metadata"]["num_measurements"] == 2
    assert ckpt.last_saved_step == 5
    # the best file: the encoder at the smallest monitored value among the checked steps (2, 4)
    checked = {s: v for s, v in recorder.values.items() if s % 2 == 0}
    best_step = min(checked, key=checked.get)
    assert ckpt.best_step == best_step and ckpt.best_score == pytest.approx(checked[best_step])
    best = load_transferable_weights(ckpt.best_path)
    assert same_state(best["encoder"], recorder.encoders[best_step])
    assert sorted(p.name for p in ckpt.dirpath.iterdir()) == [ckpt.best_path.name, ckpt.last_path.name]  # no temp files

    # a test-time fit starts from the file, with the encoder frozen to it
    fit = UGoDITFit(weights=str(ckpt.last_path), num_measurements=1)
    assert same_state(fit.encoder.state_dict(), latest["encoder"])
    trainer(2).fit(fit, loader(mri_batch(num=1, size=16, seed=5)))
    assert same_state(fit.encoder.state_dict(), latest["encoder"])


def test_periodic_writes_without_save_last(tmp_path):
    ckpt = TransferableWeightsCheckpoint(tmp_path, filename="enc.pt", every_n_steps=3, save_last=False)
    trainer(4, [ckpt]).fit(pretrain(), loader(mri_batch(num=2, size=16)))
    assert load_transferable_weights(tmp_path / "enc.pt")["metadata"]["steps"] == 3   # step 4 not written
    assert not ckpt.best_path.exists()


class InputsAtStart(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.inputs = pl_module.fit_state.inputs.clone()
        self.step = trainer.global_step


class InputsAtBatchEnd(pl.Callback):
    """The inputs as the callbacks (ModelCheckpoint included) see them at the end of each step."""

    def __init__(self):
        self.inputs = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.inputs[trainer.global_step] = pl_module.fit_state.inputs.clone()


def first_run(tmp_path, batch, steps=3):
    method = pretrain(update_every=1)                 # the inputs z_i move at every step
    weights = TransferableWeightsCheckpoint(tmp_path / "w", monitor="train/data_consistency")
    seen = InputsAtBatchEnd()
    lightning_ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=steps, save_top_k=-1)
    trainer(steps, [seen, weights, lightning_ckpt], enable_checkpointing=True).fit(method, loader(batch))
    return method, weights, seen, next((tmp_path / "ckpt").glob("*.ckpt"))


def resume(tmp_path, batch, checkpoint, steps=5):
    method = pretrain(update_every=1)
    weights = TransferableWeightsCheckpoint(tmp_path / "w", monitor="train/data_consistency")
    probe = InputsAtStart()
    trainer(steps, [weights, probe, ModelCheckpoint(dirpath=tmp_path / "ckpt2")], enable_checkpointing=True).fit(
        method, loader(batch), ckpt_path=str(checkpoint)
    )
    return method, weights, probe


def test_resuming_pretraining_restores_the_inputs_and_the_best_score(tmp_path):
    batch = mri_batch(num=2, size=16)
    method, weights, seen, checkpoint = first_run(tmp_path, batch)
    fresh_inputs = batch["operator"].adjoint(batch["y"] / method.fit_state.scales.view(-1, 1, 1, 1))
    assert not torch.allclose(seen.inputs[3], fresh_inputs, atol=1e-4)    # the input updates happened

    resumed_method, resumed_weights, probe = resume(tmp_path, batch, checkpoint)
    assert probe.step == 3
    # the inputs z_i are those of the checkpoint (saved by ModelCheckpoint at the end of step 3)
    torch.testing.assert_close(probe.inputs, seen.inputs[3])
    # the callback state came back too: the best score of the first run was the starting point
    assert resumed_weights.best_score <= weights.best_score
    assert load_transferable_weights(resumed_weights.last_path)["metadata"]["steps"] == 5


def test_a_resumed_pretraining_equals_an_uninterrupted_one(tmp_path):
    batch = mri_batch(num=2, size=16)
    _, _, _, checkpoint = first_run(tmp_path, batch)
    resumed, _, _ = resume(tmp_path, batch, checkpoint)
    straight = pretrain(update_every=1)
    trainer(5).fit(straight, loader(batch))
    torch.testing.assert_close(resumed.fit_state.inputs, straight.fit_state.inputs)
    assert same_state(resumed.encoder.state_dict(), straight.encoder.state_dict())


def test_modules_without_transferable_weights_get_a_clear_error(tmp_path):
    with pytest.raises(AttributeError, match="save_transferable_weights"):
        trainer(1, [TransferableWeightsCheckpoint(tmp_path)]).fit(
            ASeqDIP(network="unet", network_args=TINY_UNET), loader(mri_batch(num=1, size=16))
        )


def test_arguments_are_validated(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        TransferableWeightsCheckpoint(tmp_path, mode="lowest")
    with pytest.raises(ValueError, match="every_n_steps"):
        TransferableWeightsCheckpoint(tmp_path, every_n_steps=0)
    with pytest.raises(ValueError, match="never write"):
        TransferableWeightsCheckpoint(tmp_path, save_last=False)
    with pytest.raises(ValueError, match="filename"):
        TransferableWeightsCheckpoint(tmp_path, filename="sub/w.pt")
