"""Ensembles on the per-row machinery: per-row network seeds, a batch of repeated measurements, their mean."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from method_problems import TINY_UNET, loader, mri_batch, tiny_transferable_weights
from ugodit_pl.methods import ASeqDIP, UGoDITFit, ensemble_mean, repeat_measurements


def fit(method, batch, steps):
    pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(method, loader(batch, steps))
    return method


def aseqdip(**kwargs):
    return ASeqDIP(**{"network_args": TINY_UNET, "lr": 3e-3, "update_every": 5, **kwargs})


def first_weights(stack, row):
    return next(iter(stack.module_at(row).state_dict().values()))


def test_per_row_seeds_give_each_row_its_own_network_and_a_row_the_same_in_any_batch_size():
    shared, two, three = aseqdip(num_measurements=2), aseqdip(num_measurements=2, network_seeds="per_row"), \
        aseqdip(num_measurements=3, network_seeds="per_row")
    assert torch.equal(first_weights(shared.nets, 0), first_weights(shared.nets, 1))
    assert not torch.equal(first_weights(two.nets, 0), first_weights(two.nets, 1))
    assert torch.equal(first_weights(two.nets, 1), first_weights(three.nets, 1))
    with pytest.raises(ValueError, match="network_seeds"):
        aseqdip(network_seeds="each")


def test_ugodit_decoders_take_per_row_seeds_too(tmp_path):
    weights = tiny_transferable_weights(tmp_path / "w.pt")
    shared, own = (UGoDITFit(weights=str(weights), num_measurements=2, network_seeds=kind) for kind in ("shared", "per_row"))
    assert torch.equal(first_weights(shared.decoders, 0), first_weights(shared.decoders, 1))
    assert not torch.equal(first_weights(own.decoders, 0), first_weights(own.decoders, 1))
    again = UGoDITFit(weights=str(weights), num_measurements=1)  # "shared" is the decoder it always was
    assert torch.equal(first_weights(again.decoders, 0), first_weights(shared.decoders, 0))


def test_repeated_measurements_are_independent_fits_and_the_mean_is_their_average():
    batch = mri_batch(num=1, size=32, seed=1)
    alone = fit(aseqdip(num_measurements=1), batch, 4)
    twice = repeat_measurements(batch, 2)
    assert twice["name"] == [f"{batch['name'][0]}#0", f"{batch['name'][0]}#1"] and twice["index"].tolist() == [0, 1]
    assert torch.equal(twice["y"][0], twice["y"][1]) and torch.equal(twice["target"][1], batch["target"][0])
    same = fit(aseqdip(num_measurements=2), twice, 4)  # shared seeds: both rows are the lone fit
    for row in (0, 1):
        torch.testing.assert_close(same.all_reconstructions()[row], alone.all_reconstructions()[0], rtol=1e-4, atol=1e-3)
    ensemble = fit(aseqdip(num_measurements=2, network_seeds="per_row"), twice, 4)
    members = ensemble.all_reconstructions()
    assert not torch.allclose(members[0], members[1])
    torch.testing.assert_close(ensemble_mean(members, 2)[0], (members[0] + members[1]) / 2)
    # the final projection is affine: the mean of the projected members is the projection of their mean
    expected = batch["operator"].data_consistent(ensemble_mean(ensemble.ema_output, 2).float(), batch["y"])
    torch.testing.assert_close(ensemble_mean(members, 2).float(), expected, rtol=0, atol=1e-4 * float(expected.abs().max()))


def test_ensemble_helpers_refuse_bad_sizes():
    with pytest.raises(ValueError, match="ensemble size"):
        repeat_measurements(mri_batch(num=1, size=32), 0)
    with pytest.raises(ValueError, match="not whole ensembles of 2"):
        ensemble_mean(torch.zeros(3, 2), 2)
