"""DivergenceRollback: recovery from a NaN and from a loss jump, the restored state, the give-up error."""

from __future__ import annotations

import copy
import math

import pytest
import pytorch_lightning as pl
import torch

from callback_problems import TINY_UNET, loader, mri_batch, trainer
from ugodit_pl.callbacks import DivergenceRollback
from ugodit_pl.methods import ASeqDIP


class Corrupt(pl.Callback):
    """Before the forward pass of the given steps (1-based), corrupt a weight: NaN in the first one, or
    ("shift") add 10 to the output bias, which no normalisation undoes."""

    def __init__(self, steps, how="nan"):
        self.steps, self.how = set(steps), how

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step + 1 in self.steps:
            params = list(pl_module.parameters())
            with torch.no_grad():
                params[0].fill_(math.nan) if self.how == "nan" else params[-1].add_(10.0)


class StateLog(pl.Callback):
    """The module state before every step, and the state and loss seen after the roll-back callback."""

    def __init__(self):
        self.before, self.after, self.losses = {}, {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before[trainer.global_step] = copy.deepcopy(pl_module.state_dict())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[trainer.global_step] = copy.deepcopy(pl_module.state_dict())
        self.losses[trainer.global_step] = float(outputs["loss"])


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith("_extra_state"):  # the fitting state's step counters and names
            assert torch.equal(a[key]["steps"], b[key]["steps"]) and a[key]["names"] == b[key]["names"]
        else:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def method():
    return ASeqDIP(num_measurements=2, network="unet", network_args=TINY_UNET, lr=3e-3, update_every=2, seed=0)


def test_a_nan_is_rolled_back_to_the_last_good_snapshot():
    rollback = DivergenceRollback(snapshot_every=3, lr_factor=0.5, max_rollbacks=3, min_steps=1000)
    log = StateLog()
    model = method()
    fit = trainer(12, [rollback, Corrupt([8]), log])
    fit.fit(model, loader(mri_batch(num=2, size=16)))

    assert math.isnan(log.losses[8]) and rollback.count == 1 and rollback.events[0][0] == 8
    # restored to the state before step 7 (global_step 6: the last snapshot whose own step was healthy)
    assert_same_state(log.after[8], log.before[6])
    # training went on: finite weights, EMA, inputs and losses; learning rate halved once
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model.fit_state.ema).all() and torch.isfinite(model.fit_state.inputs).all()
    assert all(math.isfinite(log.losses[s]) for s in range(9, 13))
    assert fit.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0015)
    assert float(fit.logged_metrics["rollback/count"]) == 1.0
    assert rollback.snapshot_step == 9


def test_a_loss_jump_is_rolled_back_and_nothing_happens_on_healthy_steps():
    rollback = DivergenceRollback(factor=10.0, snapshot_every=2, lr_factor=1.0, min_steps=3)
    log = StateLog()
    model = method()
    trainer(9, [rollback, Corrupt([6], how="shift"), log]).fit(model, loader(mri_batch(num=2, size=16)))
    healthy = [log.losses[s] for s in range(1, 6)]
    assert log.losses[6] > 10 * min(healthy)                      # the injected jump
    assert rollback.count == 1 and rollback.events[0][0] == 6
    assert_same_state(log.after[6], log.before[4])                 # snapshot before step 5, verified by it
    assert rollback.best_loss == pytest.approx(min(v for s, v in log.losses.items() if s != 6))

    clean = DivergenceRollback(factor=10.0, snapshot_every=2, min_steps=3)
    trainer(6, [clean]).fit(method(), loader(mri_batch(num=2, size=16)))
    assert clean.count == 0


def test_it_gives_up_after_max_rollbacks_with_a_clear_error():
    rollback = DivergenceRollback(snapshot_every=2, max_rollbacks=2)
    with pytest.raises(RuntimeError, match=r"step 6 \(loss nan.*max_rollbacks=2"):
        trainer(20, [rollback, Corrupt(range(4, 21))]).fit(method(), loader(mri_batch(num=2, size=16)))
    assert rollback.count == 2 and [s for s, _ in rollback.events] == [4, 5]


def test_state_round_trip_and_validation():
    rollback = DivergenceRollback()
    rollback.count, rollback.events, rollback.best_loss = 2, [(5, math.nan), (9, 1e6)], 0.25
    other = DivergenceRollback()
    other.load_state_dict(rollback.state_dict())
    assert other.count == 2 and other.best_loss == 0.25 and other.events[1] == (9, 1e6)
    with pytest.raises(ValueError, match="factor"):
        DivergenceRollback(factor=1.0)
    with pytest.raises(ValueError, match="lr_factor"):
        DivergenceRollback(lr_factor=0.0)
    with pytest.raises(ValueError, match="snapshot_every"):
        DivergenceRollback(snapshot_every=0)


def test_self_guided_dip_input_is_restored_and_its_learning_rate_damped():
    """z is a parameter of the one optimiser: a roll-back restores it and halves its learning rate too."""
    from ugodit_pl.methods import SelfGuidedDIP

    rollback = DivergenceRollback(snapshot_every=2, lr_factor=0.5, min_steps=1000)
    log = StateLog()
    model = SelfGuidedDIP(num_measurements=2, network="unet", network_args=TINY_UNET, num_draws=2, input_lr=0.05)
    fit = trainer(7, [rollback, Corrupt([5]), log])
    fit.fit(model, loader(mri_batch(num=2, size=16)))
    assert rollback.count == 1 and rollback.events[0][0] == 5
    assert_same_state(log.after[5], log.before[2])  # the snapshot before step 3, verified by its loss
    assert not torch.equal(log.before[2]["fit_state.inputs"], log.before[0]["fit_state.inputs"])  # z had moved
    groups = {group["name"]: group["lr"] for group in fit.optimizers[0].param_groups}
    assert groups == {"weights": pytest.approx(model.lr / 2), "inputs": pytest.approx(0.025)}


def test_a_nan_at_the_last_step_ends_the_fit_on_the_restored_finite_state(tmp_path):
    from ugodit_pl.callbacks import ReconstructionWriter

    rollback = DivergenceRollback(snapshot_every=2, min_steps=1000)
    writer = ReconstructionWriter(tmp_path)
    model = method()
    trainer(6, [rollback, Corrupt([6]), writer]).fit(model, loader(mri_batch(num=2, size=16)))
    assert rollback.count == 1
    assert torch.isfinite(model.reconstruction).all() and torch.isfinite(model.all_reconstructions()).all()
    assert writer.done_slices("vol.h5") == [0, 1]  # written from the restored state


def test_a_rollback_to_before_the_first_step_writes_nothing():
    from ugodit_pl.callbacks.writer import NonFiniteReconstruction, ReconstructionWriter
    import tempfile

    rollback = DivergenceRollback(snapshot_every=50, min_steps=1000)  # only the start is a snapshot
    model = method()
    with pytest.raises(NonFiniteReconstruction, match="vol.h5 slice 0, vol.h5 slice 1 is not finite"):
        trainer(3, [rollback, Corrupt([3]), ReconstructionWriter(tempfile.mkdtemp())]).fit(
            model, loader(mri_batch(num=2, size=16)))
    assert model.fit_state.steps.tolist() == [0, 0] and torch.isnan(model.all_reconstructions()).all()
