"""The methods' options for whole volumes (tiny MRI problems): held-out k-space self-validation, the final
data-consistency projection, and warm starts from a neighbour's fit."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from method_problems import TINY_UNET, aseqdip, fit, mri_batch, sr_batch
from ugodit_pl.callbacks import HeldOutEarlyStopping
from ugodit_pl.methods import DIP, ASeqDIP, SelfGuidedDIP
from ugodit_pl.methods.holdout import holdout_error, holdout_mask, split_measurement


def data_error(operator, x, y):
    return float((operator(x.float()) - y).abs().pow(2).sum() / y.abs().pow(2).sum())


def test_final_projection_puts_every_measured_sample_back():
    """The reconstruction is S^H F^H((1 - P) F S x + P y) of the EMA x, in the measurement's units."""
    batch = mri_batch(num=2, size=32, seed=1)
    method = fit(aseqdip(num_measurements=2, final_projection=True), batch, 6)
    operator, y = batch["operator"], batch["y"]
    recon, ema = method.all_reconstructions(), method.ema_output
    expected = operator.data_consistent(ema.float(), y)
    torch.testing.assert_close(recon.float(), expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    assert data_error(operator, recon, y) < 0.5 * data_error(operator, ema, y)
    assert torch.equal(method.reconstruction, recon)


def test_final_projection_is_an_option_of_the_reconstruction_not_of_the_fit():
    batch = mri_batch(num=1, size=32, seed=1)
    plain, projected = (fit(aseqdip(final_projection=flag), batch, 6) for flag in (False, True))
    torch.testing.assert_close(plain.current_output, projected.current_output, rtol=0, atol=0)
    torch.testing.assert_close(plain.ema_output, projected.ema_output, rtol=0, atol=0)
    assert not torch.allclose(plain.reconstruction, projected.reconstruction)


def test_held_out_samples_never_reach_the_fit():
    batch = mri_batch(num=1, size=32, seed=1)
    method = fit(aseqdip(holdout_fraction=0.4, holdout_pattern="points"), batch, 2)
    memo = method._checked_batch
    held, full = memo.held_out[:, 0], batch["operator"].mask
    assert held.sum() > 0 and torch.equal(memo.operator.mask + held, full.expand_as(held))
    assert (memo.y * memo.held_out).abs().sum() == 0
    # the input starts from the fitted samples only: A_fit^H y_fit, in the fit's units
    expected = memo.operator.adjoint(memo.y)
    torch.testing.assert_close(method.fit_state.inputs.float(), expected.float(), rtol=1e-5, atol=1e-6)


def test_held_out_error_is_the_relative_residual_on_the_held_out_samples():
    batch = mri_batch(num=1, size=32, seed=1)
    method = fit(aseqdip(holdout_fraction=0.4, holdout_pattern="points"), batch, 3)
    memo = method._checked_batch
    x = method.fit_state.ema[:1]
    residual = (memo.measured_operator(x) - memo.measured_y) * memo.held_out
    expected = residual.abs().pow(2).sum() / (memo.measured_y * memo.held_out).abs().pow(2).sum()
    torch.testing.assert_close(method.holdout_error(), expected.reshape(1).to(method.holdout_error().dtype))
    assert aseqdip().holdout_error() is None


def test_held_out_samples_depend_on_the_row_alone():
    """A measurement holds out the same samples whatever it is batched with (or which process fits it)."""
    batch = mri_batch(num=2, size=32, seed=1)
    _, _, together = split_measurement(batch["operator"], batch["y"], 0.4, seed=0, rows=[0, 1], pattern="points")
    _, _, alone = split_measurement(batch["operator"].select([1]), batch["y"][1:], 0.4, seed=0, rows=[1], pattern="points")
    assert torch.equal(together[1], alone[0])
    assert not torch.equal(together[0], together[1])


def test_lines_are_held_out_whole_and_the_calibration_region_never():
    mask = torch.zeros(32, 32)
    mask[:, 13:19] = 1
    mask[:, ::2] = 1
    held = holdout_mask(mask, 0.3, seed=3, row=0, pattern="lines")
    columns = held.sum(dim=0)
    assert set(columns.unique().tolist()) <= {0.0, 32.0} and columns.sum() > 0
    assert held[:, 13:19].sum() == 0 and bool((held <= mask).all())


@pytest.mark.parametrize("kwargs, match", [
    (dict(holdout_fraction=0.5), r"holdout_fraction must be 0 \(off\) or in \(0, 0.5\)"),
    (dict(holdout_fraction=-0.1), r"holdout_fraction must be 0 \(off\) or in \(0, 0.5\)"),
    (dict(holdout_pattern="random"), "holdout_pattern must be one of"),
])
def test_bad_holdout_arguments_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        aseqdip(**kwargs)


def test_too_few_locations_to_hold_out_is_refused_before_fitting():
    batch = mri_batch(num=1, size=32, seed=1)
    steps = []
    with pytest.raises(ValueError, match=r"phantom1/slice_000: holdout_fraction=0.01 holds out 0 of the 3 sampled lines"):
        fit(aseqdip(holdout_fraction=0.01), batch, 3, callbacks=[_StepCounter(steps)])
    with pytest.raises(ValueError, match="a mask of whole sampled lines"):
        holdout_mask(torch.ones(16, 16) * (torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) > 0.5),
                     0.2, 0, 0, pattern="lines")
    assert steps == []


def test_final_projection_needs_measured_samples():
    with pytest.raises(ValueError, match="final_projection .* SuperResolution has none"):
        fit(SelfGuidedDIP(network="skip", network_args={**TINY_UNET_SKIP}, final_projection=True), sr_batch(size=32), 1)


TINY_UNET_SKIP = {"in_channels": 3, "out_channels": 3, "channels_down": [8, 8], "channels_up": [8, 8],
                  "channels_skip": [2, 2]}


class _StepCounter(pl.Callback):
    def __init__(self, steps):
        self.steps = steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append(trainer.global_step)


class _Reconstructions(pl.Callback):
    def __init__(self):
        self.seen = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen[trainer.global_step] = pl_module.reconstruction.clone()


def test_held_out_stopping_keeps_the_best_validated_reconstruction():
    batch = mri_batch(num=1, size=32, seed=1)
    stop, seen = HeldOutEarlyStopping(patience=10, check_every=2, min_delta=0.0), _Reconstructions()
    method = fit(aseqdip(holdout_fraction=0.4, holdout_pattern="points", lr=2e-2), batch, 200, callbacks=[seen, stop])
    errors = dict(stop.history[0])
    best = stop.best_step[0]
    assert errors[best] == min(errors.values()) and stop.best_error[0] == errors[best]
    assert stop.stopped_step is not None and stop.stopped_step - best >= 10 and stop.stopped_step < 200
    assert method.trainer.global_step == stop.stopped_step
    assert torch.equal(method.reconstruction, seen.seen[best]) and torch.equal(method.all_reconstructions(), seen.seen[best])


def test_with_held_out_samples_the_final_projection_uses_every_measured_sample():
    batch = mri_batch(num=1, size=32, seed=1)
    method = fit(aseqdip(holdout_fraction=0.4, holdout_pattern="points"), batch, 4)
    assert method.final_projection  # on by default for MRI, so the held-out samples come back
    expected = batch["operator"].data_consistent(method.ema_output.float(), batch["y"])
    torch.testing.assert_close(method.reconstruction.float(), expected, rtol=0, atol=1e-4 * float(expected.abs().max()))


def test_held_out_stopping_state_round_trip():
    stop = HeldOutEarlyStopping(patience=5, check_every=1)
    image = torch.zeros(2, 2, 4, 4)
    for step, errors in enumerate(([0.5, 0.6], [0.4, 0.7], [0.45, 0.65])):
        stop.check(torch.tensor(errors), image + step, [3, 5], step)
    again = HeldOutEarlyStopping(patience=5, check_every=1)
    again.load_state_dict(stop.state_dict())
    assert again.best_step == stop.best_step == {3: 1, 5: 0}
    assert torch.equal(again.kept_output([5, 3]), torch.stack([image[1], image[0] + 1]))
    assert again.check(torch.tensor([0.5, 0.7]), image, [3, 5], 6) and not stop.check(torch.tensor([0.5, 0.7]), image, [3, 5], 4)


def test_held_out_stopping_needs_a_method_that_holds_out():
    with pytest.raises(ValueError, match="give ASeqDIP holdout_fraction"):
        fit(aseqdip(), mri_batch(num=1, size=32), 12, callbacks=[HeldOutEarlyStopping(check_every=10)])


def test_a_warm_start_carries_the_networks_and_can_start_from_the_neighbours_image():
    from ugodit_pl.methods.warm import load_warm_state, save_warm_state

    first = fit(aseqdip(), mri_batch(num=1, size=32, seed=1), 5)
    state = first.warm_state()
    second = aseqdip(seed=9).warm_start(state)
    for a, b in zip(first.nets.parameters(), second.nets.parameters()):
        assert torch.equal(a, b)
    batch = mri_batch(num=1, size=32, seed=2)
    neighbour = fit(aseqdip(seed=9).warm_start(state, input="neighbour"), batch, 1)
    own = fit(aseqdip(seed=9).warm_start(state, input="measurement"), batch, 1)
    auto = fit(aseqdip(seed=9).warm_start(state), batch, 1)  # aSeqDIP's input is A^H y: auto takes the neighbour's
    assert torch.equal(auto.fit_state.inputs, neighbour.fit_state.inputs)
    scale = neighbour.fit_state.scales[0]
    expected = batch["operator"].data_consistent(state["reconstruction"][None].float() / scale.float(),
                                                 batch["y"] / scale.float())
    assert torch.allclose(neighbour.fit_state.inputs[:1].float(), expected, atol=1e-4 * float(expected.abs().max()))
    assert not torch.allclose(own.fit_state.inputs, neighbour.fit_state.inputs)
    loaded = load_warm_state(save_warm_state(state, Path(tempfile.mkdtemp()) / "w.pt"))
    assert all(torch.equal(loaded["modules"]["nets"][k], v) for k, v in state["modules"]["nets"].items())


def test_a_refit_can_carry_the_ema_of_the_fit_it_continues():
    """ema="carry": the EMA goes on from the other fit's reconstruction, weighted as the outputs it averaged."""
    from ugodit_pl.methods.results import ema_past_weight

    batch = mri_batch(num=1, size=32, seed=1)
    state = fit(aseqdip(), batch, 5).warm_state()
    assert state["ema_count"] == 5.0
    carried = fit(aseqdip().warm_start(state, ema="carry"), batch, 1)
    past = float(ema_past_weight(torch.tensor(5.0), carried.ema_decay, carried.ema_variant))
    expected = past * state["reconstruction"][None].float() + (1.0 - past) * carried.current_output.float()
    torch.testing.assert_close(carried.ema_output.float(), expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    fresh = fit(aseqdip().warm_start(state), batch, 1)
    torch.testing.assert_close(fresh.ema_output, fresh.current_output, rtol=0, atol=0)
    with pytest.raises(ValueError, match="ema"):
        aseqdip().warm_start(state, ema="keep")


def test_the_automatic_warm_input_keeps_dips_noise_and_neighbour_is_refused_for_it():
    def dip(**kwargs):
        return DIP(**{"num_measurements": 1, "network": "unet", "network_args": TINY_UNET, "seed": 9, **kwargs})

    state = fit(dip(seed=0), mri_batch(num=1, size=32, seed=1), 2).warm_state()
    batch = mri_batch(num=1, size=32, seed=2)
    auto = fit(dip().warm_start(state), batch, 1)
    own = fit(dip().warm_start(state, input="measurement"), batch, 1)
    assert torch.equal(auto.fit_state.inputs, own.fit_state.inputs)
    with pytest.raises(ValueError, match="starts from noise"):
        dip().warm_start(state, input="neighbour")


@pytest.mark.parametrize("make, match", [
    (lambda: ASeqDIP(network_args={"channels": [8, 8, 8, 8]}), "same network and width"),
    (lambda: SelfGuidedDIP(network_args=TINY_UNET), "warm start from a ASeqDIP fit, but this is a SelfGuidedDIP"),
    (lambda: ASeqDIP(network_args=TINY_UNET, residual=False), "residual=True, but this ASeqDIP has residual=False"),
])
def test_a_warm_start_from_another_network_is_refused(make, match):
    state = fit(aseqdip(), mri_batch(num=1, size=32, seed=1), 2).warm_state()
    with pytest.raises(ValueError, match=match):
        make().warm_start(state)


def test_a_warm_start_from_another_image_size_is_refused_before_fitting():
    state = fit(aseqdip(), mri_batch(num=1, size=32, seed=1), 2).warm_state()
    with pytest.raises(ValueError, match="a warm start from a fit of 32 x 32 images, but these are 48 x 48"):
        fit(aseqdip().warm_start(state), mri_batch(num=1, size=48, seed=1), 2)


def test_a_checkpoint_from_before_the_final_projection_still_loads():
    method = fit(aseqdip(), mri_batch(num=1, size=32, seed=1), 2)
    state = {k: v for k, v in method.state_dict().items() if k != "fit_state.projected"}
    fresh = aseqdip()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.fit_state.ema, method.fit_state.ema) and fresh.fit_state.projected.shape == method.fit_state.ema.shape
