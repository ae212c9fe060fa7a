"""``mean_with``: a method's reconstruction averaged with compressed sensing of the same measurement, its lambda
chosen without ground truth, given (``mean_lamda``) or carried from a warm start's neighbour (tiny MRI problems)."""

from __future__ import annotations

import pytest
import torch

from method_problems import TINY_SKIP, aseqdip, fit, mri_batch, sr_batch
from ugodit_pl import classical, lamda_rules
from ugodit_pl.callbacks import HeldOutEarlyStopping
from ugodit_pl.complex import complex_to_channels
from ugodit_pl.methods import DIP


def l1_image(batch, row, lamda=None):
    """(2, H, W) L1-wavelet image of ``row`` at ``lamda`` (None: the automatic rule's), and its lambda."""
    y, mask, maps = batch["y"][row], batch["operator"].mask[row], batch["operator"].coil_maps[row]
    if lamda is None:
        image, lamda = lamda_rules.automatic_lamda(y, mask, maps, method="l1_wavelet", rule="auto")[:2]
    else:
        image = classical.l1_wavelet(y, mask, maps, lamda=lamda)
    return complex_to_channels(image[None])[0], lamda


def close(actual, expected):
    torch.testing.assert_close(actual.float(), expected.float(), rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_the_reconstruction_is_the_mean_of_the_networks_and_the_automatic_lambda_l1_image():
    batch = mri_batch(num=2, size=32, seed=1)
    plain = fit(aseqdip(num_measurements=2), batch, 5)
    mean = fit(aseqdip(num_measurements=2, mean_with="l1_wavelet"), batch, 5)
    # the fit and the network's image are those of the same fit without the option
    assert torch.equal(mean.all_network_reconstructions(), plain.all_reconstructions())
    assert torch.equal(mean.network_reconstruction, plain.reconstruction)
    for row in range(2):
        image, lamda = l1_image(batch, row)
        assert float(mean.fit_state.classical_lamdas[row]) == pytest.approx(lamda)
        close(mean.all_reconstructions()[row], (plain.all_reconstructions()[row] + image) / 2)
    assert torch.equal(mean.reconstruction, mean.all_reconstructions())
    assert not torch.allclose(mean.reconstruction, plain.reconstruction)


def test_mean_with_total_variation_and_without_the_final_projection():
    batch = mri_batch(num=1, size=32, seed=2)
    plain = fit(aseqdip(final_projection=False), batch, 3)
    mean = fit(aseqdip(final_projection=False, mean_with="total_variation"), batch, 3)
    y, mask, maps = batch["y"][0], batch["operator"].mask[0], batch["operator"].coil_maps[0]
    image = lamda_rules.automatic_lamda(y, mask, maps, method="total_variation", rule="auto").image
    close(mean.reconstruction[0], (plain.ema_output[0] + complex_to_channels(image[None])[0]) / 2)


def test_a_given_mean_lamda_replaces_the_search_and_wins_over_a_warm_starts(monkeypatch):
    def no_search(*args, **kwargs):
        raise AssertionError("mean_lamda is given: no lambda search")

    monkeypatch.setattr(lamda_rules, "automatic_lamda", no_search)
    batch = mri_batch(num=2, size=32, seed=1)
    mean = fit(aseqdip(num_measurements=2, mean_with="l1_wavelet", mean_lamda=3e-3), batch, 3)
    assert mean.fit_state.classical_lamdas.tolist() == pytest.approx([3e-3, 3e-3])
    for row in range(2):
        close(mean.all_reconstructions()[row],
              (mean.all_network_reconstructions()[row] + l1_image(batch, row, lamda=3e-3)[0]) / 2)
    state = mean.warm_state(0)
    assert state["mean_lamda"] == pytest.approx(3e-3)
    nxt = aseqdip(mean_with="l1_wavelet", mean_lamda=1e-2).warm_start(state)
    assert float(fit(nxt, mri_batch(num=1, size=32, seed=2), 2).fit_state.classical_lamdas[0]) == pytest.approx(1e-2)


@pytest.mark.parametrize("make, match", [
    (lambda: aseqdip(mean_with="sense"), "mean_with must be one of"),
    (lambda: aseqdip(mean_with="L1"), "mean_with must be one of"),
    (lambda: aseqdip(mean_lamda=1e-3), r"mean_lamda=0.001 is the lambda of the mean_with image: give mean_with too"),
    (lambda: aseqdip(mean_with="total_variation", mean_lamda=-1e-3), "mean_lamda must be >= 0"),
])
def test_an_unknown_mean_is_refused_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_mean_with_needs_multi_coil_k_space_and_says_so_before_fitting():
    method = DIP(num_measurements=1, network="skip", network_args=TINY_SKIP, mean_with="l1_wavelet")
    with pytest.raises(ValueError, match=r"mean_with='l1_wavelet' averages with compressed sensing of multi-coil "
                                         r"k-space: it needs an MRI operator .* image0 measurements have SuperResolution"):
        fit(method, sr_batch(num=1, size=32), 3)
    assert int(method.fit_state.steps.sum()) == 0


def test_a_warm_start_takes_the_neighbours_lambda_and_image_but_not_its_mean(monkeypatch):
    first_batch, batch = mri_batch(num=1, size=32, seed=1), mri_batch(num=1, size=32, seed=2)
    first = fit(aseqdip(mean_with="l1_wavelet"), first_batch, 4)
    state = first.warm_state()
    assert state["mean_with"] == "l1_wavelet" and state["mean_lamda"] == float(first.fit_state.classical_lamdas[0])
    assert torch.equal(state["reconstruction"], first.all_network_reconstructions()[0])  # the network's own image

    def no_search(*args, **kwargs):
        raise AssertionError("a warm-started fit reuses its neighbour's lambda: no search")

    monkeypatch.setattr(lamda_rules, "automatic_lamda", no_search)
    second = fit(aseqdip(mean_with="l1_wavelet").warm_start(state), batch, 2)
    assert float(second.fit_state.classical_lamdas[0]) == pytest.approx(state["mean_lamda"])
    image, _ = l1_image(batch, 0, lamda=state["mean_lamda"])
    close(second.reconstruction[0], (second.network_reconstruction[0] + image) / 2)
    monkeypatch.undo()
    # a neighbour fitted without the mean gives no lambda: this fit chooses its own
    other = fit(aseqdip(mean_with="l1_wavelet").warm_start(fit(aseqdip(), first_batch, 2).warm_state()), batch, 2)
    assert float(other.fit_state.classical_lamdas[0]) == pytest.approx(l1_image(batch, 0)[1])


def test_held_out_stopping_keeps_the_networks_image_and_the_mean_uses_every_measured_sample():
    batch = mri_batch(num=1, size=32, seed=1)
    stop = HeldOutEarlyStopping(patience=4, check_every=1, min_delta=0.0)
    method = fit(aseqdip(holdout_fraction=0.4, holdout_pattern="points", lr=2e-2, mean_with="l1_wavelet"), batch, 60,
                 callbacks=[stop])
    assert torch.equal(method.final_output, stop.kept_output([0]))
    image, lamda = l1_image(batch, 0)  # from all of y: the held-out samples too
    assert float(method.fit_state.classical_lamdas[0]) == pytest.approx(lamda)
    close(method.reconstruction[0], (stop.kept_output([0])[0] + image) / 2)


def test_the_mean_survives_a_checkpoint_and_an_old_checkpoint_still_loads():
    batch = mri_batch(num=1, size=32, seed=1)
    method = fit(aseqdip(mean_with="l1_wavelet"), batch, 3)
    fresh = aseqdip(mean_with="l1_wavelet", final_projection=True)  # as prepare() resolved it for MRI
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.all_reconstructions(), method.all_reconstructions())
    old = {k: v for k, v in method.state_dict().items() if not k.startswith("fit_state.classical")}
    plain = aseqdip(final_projection=True)
    plain.load_state_dict(old)
    assert torch.equal(plain.all_reconstructions(), method.all_network_reconstructions())
    assert plain.fit_state.classical.shape == method.fit_state.ema.shape
