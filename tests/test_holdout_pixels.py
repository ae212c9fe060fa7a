"""Held-out self-validation on natural images: pixels held out of inpainting and denoising (tiny problems)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from method_problems import TINY_SKIP, loader
from ugodit_pl.callbacks import HeldOutEarlyStopping
from ugodit_pl.methods import DIP
from ugodit_pl.methods.holdout import holdout_error, split_measurement
from ugodit_pl.operators import Inpainting


def noisy_batch(operator: Inpainting, size: int = 32, sigma: float = 0.1, seed: int = 0):
    coarse = torch.rand(1, 3, size // 8, size // 8, generator=torch.Generator().manual_seed(seed))
    clean = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    noise = sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + 1))
    return {"y": operator(clean + noise), "operator": operator, "index": torch.tensor([0]), "target": clean,
            "name": ["photo"]}


def test_pixels_are_held_out_of_the_observed_ones_in_every_channel():
    operator = Inpainting.random((1, 3, 32, 32), drop_probability=0.5, seed=0)
    y = operator(torch.rand(1, 3, 32, 32))
    fit_operator, fit_y, held = split_measurement(operator, y, 0.2, seed=0, rows=[0])
    observed = operator.mask[0, 0]
    assert held.shape == (1, 1, 32, 32) and int(held.sum()) == round(0.2 * int(observed.sum()))
    assert torch.equal(fit_operator.mask[0, 0] + held[0, 0], observed)  # a subset of the observed pixels
    assert (fit_y * held).abs().sum() == 0 and torch.equal(fit_y + y * held, y)
    x = torch.rand(1, 3, 32, 32)
    expected = ((operator(x) - y) * held).square().sum() / (y * held).square().sum()
    torch.testing.assert_close(holdout_error(operator, x, y, held), expected.reshape(1))


def test_denoising_dip_stops_on_held_out_pixels_and_keeps_its_best_output():
    """Denoising is inpainting with nothing missing: pixels are held out of the noisy image; the kept output
    is the network's (no projection: putting the observed pixels back would put their noise back)."""
    batch = noisy_batch(Inpainting(torch.ones(32, 32)), sigma=0.2)
    method = DIP(network="skip", network_args=TINY_SKIP, input_channels=TINY_SKIP["in_channels"], lr=0.05,
                 holdout_fraction=0.2)
    stop = HeldOutEarlyStopping(patience=20, check_every=5, min_delta=0.0)  # every new minimum counts
    pl.Trainer(max_steps=400, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, callbacks=[stop]).fit(method, loader(batch, 400))
    errors = dict(stop.history[0])
    assert not method.final_projection
    assert stop.best_error[0] == min(errors.values()) and stop.best_step[0] == min(errors, key=errors.get)
    # the held-out error falls to the noise level and stays there: the fit stops
    assert stop.stopped_step is not None and stop.stopped_step - stop.best_step[0] >= 20 and stop.stopped_step < 400
    assert torch.equal(method.reconstruction, stop.kept_output([0]))
    assert not torch.allclose(method.reconstruction, batch["y"], atol=1e-3)


@pytest.mark.parametrize("operator, kwargs, match", [
    (Inpainting(torch.ones(32, 32)), {"pattern": "lines"}, "pixels are held out one by one"),
    (Inpainting(torch.ones(1, 3, 32, 32)), {}, "one mask for all channels"),
    (Inpainting(torch.zeros(32, 32).index_fill_(0, torch.tensor([0]), 1.0)), {}, "holds out 6 of the 32 sampled"),
])
def test_bad_pixel_hold_outs_are_refused(operator, kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_measurement(operator, operator(torch.rand(1, 3, 32, 32)), 0.2, seed=0, rows=[0], **kwargs)
