"""The fitting loop: Trainer flags in every combination, per-row randomness, rows and processes, the optimiser.

Each test here failed before the loop was rewritten (issue "one fitting loop"): bf16-mixed with one
measurement crashed in the MRI operator, clipping was impossible under mixed precision, a slice's
DIP result depended on the slice fitted beside it, Self-Guided DIP skipped its first input update,
and a data module that did not shard gave silently wrong rows.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from method_problems import TINY_SKIP, TINY_UNET, loader, mri_batch, sr_batch
from ugodit_pl.methods import ASeqDIP, DIP, ReferenceGuidedDIP, SelfGuidedDIP, UGoDITFit, UGoDITPretrain


def trainer(steps: int, **kwargs: Any) -> pl.Trainer:
    args = dict(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False)
    return pl.Trainer(**{**args, **kwargs})


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """Transferable weights of a tiny U-Net (two pre-training steps)."""
    path = tmp_path_factory.mktemp("weights") / "encoder.pt"
    pre = UGoDITPretrain(num_measurements=2, network="unet", network_args=TINY_UNET, weights_path=str(path))
    trainer(2).fit(pre, loader(mri_batch(num=2, size=16, seed=9), 2))
    return str(path)


def mri_methods(weights: str, num: int = 1) -> Dict[str, Callable[[], pl.LightningModule]]:
    """The methods that fit each measurement on its own, for ``num`` MRI measurements."""
    common = dict(num_measurements=num, network="unet", network_args=TINY_UNET, lr=1e-2)
    return {
        "DIP": lambda: DIP(**common),
        "ReferenceGuidedDIP": lambda: ReferenceGuidedDIP(**common),
        "SelfGuidedDIP": lambda: SelfGuidedDIP(num_draws=2, input_lr=1e-2, **common),
        "ASeqDIP": lambda: ASeqDIP(update_every=2, **common),
        "UGoDITFit": lambda: UGoDITFit(weights=weights, num_measurements=num, lr=1e-2, update_every=2),
    }


# ------------------------------------------------------------------------------------------ Trainer flags
@pytest.mark.parametrize("num", [1, 2])
@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("name", ["ASeqDIP", "SelfGuidedDIP", "UGoDITFit"])
def test_precision_and_gradient_clipping_in_every_combination(name, precision, clip, num, weights):
    method = mri_methods(weights, num)[name]()
    batch = mri_batch(num=num, size=16)
    trainer(3, precision=precision, gradient_clip_val=clip).fit(method, loader(batch, 3))
    recon = method.all_reconstructions()
    assert recon.shape == (num, 2, 16, 16) and recon.dtype == torch.float32 and torch.isfinite(recon).all()
    assert method.fit_state.steps.tolist() == [3] * num


def test_gradient_accumulation_counts_training_batches():
    method = ASeqDIP(num_measurements=1, network="unet", network_args=TINY_UNET, update_every=2)
    run = trainer(2, accumulate_grad_batches=2)
    run.fit(method, loader(mri_batch(num=1, size=16), 4))
    assert run.global_step == 2 and method.fit_state.steps.tolist() == [4]  # 4 batches, 2 optimiser steps
    assert torch.isfinite(method.all_reconstructions()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed needs a CUDA device")
def test_half_precision_on_cuda(weights):  # pragma: no cover - CI has no GPU
    method = mri_methods(weights)["ASeqDIP"]()
    trainer(3, accelerator="gpu", precision="16-mixed", gradient_clip_val=1.0).fit(method, loader(mri_batch(), 3))
    assert torch.isfinite(method.all_reconstructions()).all()


def test_optimizer_is_fused_unless_clipping_under_mixed_precision_or_asked():
    def fused(method, **flags):
        run = trainer(1, **flags)
        run.fit(method, loader(mri_batch(num=1, size=16), 1))
        return run.optimizers[0].defaults["fused"]

    make = lambda **kw: ASeqDIP(network="unet", network_args=TINY_UNET, **kw)  # noqa: E731
    assert fused(make()) is True
    assert fused(make(), precision="bf16-mixed", gradient_clip_val=1.0) is None  # Lightning could not clip a fused Adam
    assert fused(make(optimizer_args={"fused": False})) is False
    betas = make(optimizer_args={"betas": (0.5, 0.9)}).configure_optimizers().defaults["betas"]
    assert betas == (0.5, 0.9)
    with pytest.raises(ValueError, match="optimizer_args.*momentum"):
        make(optimizer_args={"momentum": 0.9})


# ------------------------------------------------------------------------------------------ Self-Guided DIP
def test_self_guided_dip_updates_its_input_from_the_first_step_in_the_one_optimiser():
    batch = mri_batch(num=1, size=16)
    method = SelfGuidedDIP(network="unet", network_args=TINY_UNET, num_draws=2)
    run = trainer(1)
    run.fit(method, loader(batch, 1))
    state = method.fit_state
    start = batch["operator"].init_input(batch["y"] / state.scales.view(-1, 1, 1, 1))
    assert not torch.allclose(state.inputs.detach(), start, atol=1e-6)  # z moved at step 1
    (optimizer,) = run.optimizers
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert groups["inputs"]["params"] == [state.inputs] and groups["inputs"]["lr"] == method.input_lr
    assert groups["weights"]["lr"] == method.lr


# ------------------------------------------------------------------------------------------ per-row randomness
def _row(batch: Dict[str, Any], row: int) -> Dict[str, Any]:
    return {"y": batch["y"][row : row + 1], "operator": batch["operator"].select([row]), "index": torch.tensor([0])}


@pytest.mark.parametrize("name", ["DIP", "ReferenceGuidedDIP", "SelfGuidedDIP", "ASeqDIP", "UGoDITFit"])
def test_a_slice_fitted_beside_another_equals_it_fitted_alone(name, weights):
    """Batched equals looped: every random draw of a fit is a function of the row, not of its neighbours.

    In float64, so that the round-off of the batched (vmapped) convolutions stays far below the tolerance.
    UGoDIT pre-training is not here: its measurements share the encoder by design.
    """
    pair = mri_batch(num=2, size=16)
    together = mri_methods(weights, num=2)[name]().double()
    trainer(6).fit(together, loader(pair, 6))
    alone = mri_methods(weights, num=1)[name]().double()
    trainer(6).fit(alone, loader(_row(pair, 0), 6))
    expected = alone.all_reconstructions()
    torch.testing.assert_close(together.all_reconstructions()[:1], expected, rtol=0,
                               atol=1e-7 * float(expected.abs().max()))


def test_dip_on_images_draws_its_noise_per_row():
    pair = sr_batch(num=2, size=16)
    args = dict(network="skip", network_args={**TINY_SKIP, "in_channels": 4})
    together = DIP(num_measurements=2, **args).double()
    trainer(4).fit(together, loader(pair, 4))
    alone = DIP(**args).double()
    trainer(4).fit(alone, loader(_row(pair, 0), 4))
    torch.testing.assert_close(together.all_reconstructions()[:1], alone.all_reconstructions(), rtol=0, atol=1e-9)
    assert not torch.allclose(together.fit_state.inputs[0], together.fit_state.inputs[1])  # rows draw their own


# ------------------------------------------------------------------------------------------ rows
def test_num_measurements_must_match_the_data():
    method = ASeqDIP(num_measurements=3, network="unet", network_args=TINY_UNET)
    with pytest.raises(ValueError, match=r"num_measurements=3 but the data serve 2 measurement\(s\) \(rows \[2\]"):
        trainer(1).fit(method, loader(mri_batch(num=2, size=16), 1))


class ChangingRows(IterableDataset):
    """Serves both rows at the first step, then only the first: not a fixed set."""

    def __init__(self, batch: Dict[str, Any]) -> None:
        self.batch = batch

    def __iter__(self):
        yield self.batch
        yield {**_row(self.batch, 0), "index": torch.tensor([0])}


def test_every_batch_must_carry_the_rows_the_process_was_set_up_with():
    method = ASeqDIP(num_measurements=2, network="unet", network_args=TINY_UNET)
    with pytest.raises(ValueError, match=r"set up to fit rows \[0, 1\] but a batch carries rows \[0\]"):
        trainer(2).fit(method, DataLoader(ChangingRows(mri_batch(num=2, size=16)), batch_size=None))


def test_a_second_fit_continues_the_first():
    batch = mri_batch(num=1, size=16)
    method = ASeqDIP(network="unet", network_args=TINY_UNET, update_every=2)
    trainer(3).fit(method, loader(batch, 3))
    inputs = method.fit_state.inputs.clone()
    trainer(2).fit(method, loader(batch, 2))
    assert method.fit_state.steps.tolist() == [5]
    assert not torch.equal(method.fit_state.inputs, inputs)  # the update due after 4 steps happened


def test_outputs_of_any_precision_reach_the_operator_in_float32():
    batch = mri_batch(num=1, size=16)
    operator = batch["operator"]
    half = torch.randn(1, 2, 16, 16).to(torch.bfloat16)
    assert operator(half).dtype == torch.complex64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert operator.adjoint(operator(half)).dtype == torch.float32


class SwappedMeasurement(IterableDataset):
    """Serves one measurement at the first step and another under the same index at the second."""

    def __init__(self) -> None:
        self.first, self.second = mri_batch(num=1, size=16, seed=0), mri_batch(num=1, size=16, seed=1)

    def __iter__(self):
        yield self.first
        yield self.second


def test_a_different_measurement_under_the_same_index_is_refused():
    method = ASeqDIP(network="unet", network_args=TINY_UNET)
    with pytest.raises(ValueError, match=r"measurements of rows \[0\] differ from those the fit was set up with"):
        trainer(2).fit(method, DataLoader(SwappedMeasurement(), batch_size=None))


def test_batches_need_only_y_and_operator():
    from ugodit_pl.datamodules import collate_measurements

    batch = mri_batch(num=2, size=16)
    items = [{"y": batch["y"][k], "operator": batch["operator"].select([k])} for k in range(2)]
    collated = collate_measurements(items)
    assert collated["index"].tolist() == [0, 1] and collated["name"] == ["measurement_0", "measurement_1"]
    method = ASeqDIP(num_measurements=2, network="unet", network_args=TINY_UNET)
    trainer(2).fit(method, loader(collated, 2))
    assert method.fit_state.names == ["measurement_0", "measurement_1"]


# ------------------------------------------------------------------------------------------ per-step work
class LoggingASeqDIP(ASeqDIP):
    """ASeqDIP that records the step of every value it logs."""

    def log(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.__dict__.setdefault("logged", []).append((self.trainer.global_step + 1, name))
        super().log(name, *args, **kwargs)


def test_metrics_are_logged_at_the_first_last_and_every_nth_step():
    method = LoggingASeqDIP(network="unet", network_args=TINY_UNET)
    fitter = trainer(7, log_every_n_steps=3)
    fitter.fit(method, loader(mri_batch(num=1, size=16), 7))
    assert sorted({step for step, _ in method.logged}) == [1, 3, 6, 7]
    assert {name for _, name in method.logged} == {"train/loss", "train/data_consistency"}
    assert set(fitter.callback_metrics) == {"train/loss", "train/data_consistency"}


class ScaleMeasurementInPlace(pl.Callback):
    """Doubles the served measurement in place after the first step (the loader serves the same tensor)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 1:
            batch["y"].mul_(2.0)


def test_a_measurement_changed_in_place_between_steps_is_refused():
    # the batch is checked in full once and then recognised by identity: an in-place change must
    # still be noticed (its version counter), not hidden by that shortcut
    method = ASeqDIP(network="unet", network_args=TINY_UNET)
    with pytest.raises(ValueError, match=r"measurements of rows \[0\] differ from those the fit was set up with"):
        trainer(3, callbacks=[ScaleMeasurementInPlace()]).fit(method, loader(mri_batch(num=1, size=16), 3))


# ------------------------------------------------------------------------------------------ compile
def _fit_last_output(steps: int = 3, **kwargs: Any) -> torch.Tensor:
    method = ASeqDIP(network="unet", network_args=TINY_UNET, update_every=2, **kwargs)
    trainer(steps).fit(method, loader(mri_batch(num=1, size=16), steps))
    return method.current_output


def test_a_compiled_network_fits_as_the_eager_one():
    # dynamo traces the network (ModuleStack's bound template, the input update under no_grad); the
    # "eager" backend runs the traced graph without Inductor, so CI needs no C++ compiler
    torch._dynamo.reset()
    compiled = _fit_last_output(compile={"backend": "eager"})
    torch.testing.assert_close(compiled, _fit_last_output(), rtol=1e-4, atol=1e-5)


def test_a_network_that_cannot_be_compiled_runs_eagerly_with_one_warning():
    with pytest.warns(UserWarning, match="torch.compile could not compile the network") as warned:
        fallback = _fit_last_output(compile={"backend": "no_such_backend"})
    assert sum("torch.compile" in str(w.message) for w in warned) == 1
    torch.testing.assert_close(fallback, _fit_last_output(), rtol=0, atol=0)


def test_a_fitted_method_pickles_and_goes_on_fitting():
    # the per-step shortcuts (the checked batch, the checked rows) hold weak references, which do not pickle
    import pickle

    batch = mri_batch(num=1, size=16)
    method = ASeqDIP(network="unet", network_args=TINY_UNET)
    trainer(2).fit(method, loader(batch, 2))
    copy = pickle.loads(pickle.dumps(method))
    torch.testing.assert_close(copy.fit_state.last, method.fit_state.last, rtol=0, atol=0)
    trainer(4).fit(copy, loader(batch, 4))
    assert copy.fit_state.steps.tolist() == [6]
