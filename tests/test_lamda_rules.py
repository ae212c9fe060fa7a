"""Compressed sensing with lambda chosen without ground truth: total variation, cross-validation, discrepancy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ugodit_pl import classical, lamda_rules
from ugodit_pl.complex import fft2c, ifft2c
from ugodit_pl.methods.holdout import holdout_mask

SIZE = 48


def phantom() -> torch.Tensor:
    """Piecewise-constant complex image (SIZE, SIZE): a disc and a square with a phase step."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    image = (xx ** 2 + yy ** 2 < 0.6).to(torch.complex64)
    image[(xx.abs() < 0.25) & (yy.abs() < 0.25)] = 0.5 * torch.exp(torch.tensor(1j * 0.8))
    return image


def problem(sampled_columns: torch.Tensor, noise: float = 0.02, coils: int = 4):
    """(k-space, mask, maps) of the phantom seen by smooth coil maps, noise of std ``noise`` per sample."""
    generator = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    maps = torch.stack([torch.exp(-((xx - np.cos(a)) ** 2 + (yy - np.sin(a)) ** 2) / 2) * torch.exp(torch.tensor(1j * a))
                        for a in np.linspace(0, 2 * np.pi, coils, endpoint=False)]).to(torch.complex64)
    maps = maps / maps.abs().pow(2).sum(0).sqrt()
    mask = torch.zeros(SIZE, SIZE)
    mask[:, sampled_columns] = 1
    clean = fft2c(maps * phantom())
    k = (clean + noise * torch.randn(clean.shape, dtype=torch.complex64, generator=generator)) * mask
    return k, mask, maps


def four_fold() -> torch.Tensor:
    """A 4x column pattern: the 8 central columns and every fifth other one (clean to hold out)."""
    return torch.tensor(sorted(set(range(20, 28)) | set(range(0, SIZE, 5))))


def psnr(x: torch.Tensor) -> float:
    error = (x.abs() - phantom().abs()).pow(2).mean()
    return float(10 * torch.log10(phantom().abs().max() ** 2 / error))


def test_total_variation_recovers_a_fully_sampled_image_and_flattens_with_lambda():
    k, mask, maps = problem(torch.arange(SIZE), noise=0.0)
    exact = classical.total_variation(k, mask, maps, lamda=1e-5, max_iter=200)
    assert torch.allclose(exact, phantom(), atol=2e-2)
    tv = lambda x: float((x.diff(dim=0).abs().sum() + x.diff(dim=1).abs().sum()))  # noqa: E731
    smooth = classical.total_variation(k, mask, maps, lamda=5.0, max_iter=200)
    assert tv(smooth) < 0.1 * tv(exact)  # a large lambda flattens the image
    assert torch.equal(smooth, classical.total_variation(k, mask, maps, lamda=5.0, max_iter=200))  # no random start


@pytest.mark.parametrize("weighted", [False, True])
def test_total_variation_is_sigpys_primal_dual_iteration(weighted):
    """The torch solver takes sigpy TotalVariationRecon's iterates: the same steps give the same image, with a
    binary mask and with sampling weights (sigpy's data sqrt(w) y)."""
    from sigpy.mri.app import TotalVariationRecon

    k, mask, maps = problem(four_fold())
    if weighted:
        mask = mask * torch.linspace(0.3, 1.0, SIZE)
    lamda, ratio = 3e-3, 50.0
    image = classical.total_variation(k, mask, maps, lamda=lamda, max_iter=60, step_ratio=ratio)
    y, m, s, scale, step, _ = classical._prepare(k, mask, maps)
    norm2 = 1.0 / step + 8.0
    reference = TotalVariationRecon(y, s, lamda=lamda, weights=m, max_iter=60, tau=np.sqrt(ratio / norm2),
                                    sigma=1.0 / np.sqrt(ratio * norm2), solver="PrimalDualHybridGradient",
                                    show_pbar=False).run() * scale
    reference = torch.from_numpy(np.asarray(reference, dtype=np.complex64))
    assert float((image - reference).norm() / reference.norm()) < 1e-5


def tv_objective(x: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor, lamda: float) -> float:
    """1/2 ||P F S x - y||^2 + lamda ||G x||_1 (circular differences), in the solver's scaled units."""
    scale = float(classical.coil_combine(ifft2c(k), maps).abs().max())
    x, y = x / scale, k / scale
    residual = (fft2c(maps * x) - y) * mask
    differences = (x - x.roll(1, 0)).abs().sum() + (x - x.roll(1, 1)).abs().sum()
    return float(0.5 * residual.abs().pow(2).sum() + lamda * differences)


@pytest.mark.parametrize("lamda", [1e-3, 1e-1])
def test_total_variation_reaches_its_minimiser_at_any_lambda_where_sigpys_steps_do_not(lamda):
    k, mask, maps = problem(four_fold())
    best = tv_objective(classical.total_variation(k, mask, maps, lamda=lamda, max_iter=2000), k, mask, maps, lamda)
    default = tv_objective(classical.total_variation(k, mask, maps, lamda=lamda), k, mask, maps, lamda)
    assert (default - best) / best < 2e-3  # the default steps and iterations are at the minimiser
    if lamda == 1e-3:
        lipschitz = float(maps.abs().pow(2).sum(0).max())
        sigpys = classical.total_variation(k, mask, maps, lamda=lamda, max_iter=100, step_ratio=1 / (lipschitz + 8))
        assert (tv_objective(sigpys, k, mask, maps, lamda) - best) / best > 0.1
    with pytest.raises(ValueError, match="step_ratio"):
        classical.total_variation(k, mask, maps, step_ratio=0.0)


def test_noise_variance_reads_the_corners_of_any_mask():
    noise = torch.randn(4, 128, 128, dtype=torch.complex64, generator=torch.Generator().manual_seed(1)) * 0.1
    full = lamda_rules.noise_variance(noise, torch.ones(128, 128))
    centre_and_one = torch.zeros(128, 128)
    centre_and_one[:, 60:68] = 1
    centre_and_one[:, 30] = 1  # no sampled column in any corner: the nearest sampled samples stand in
    sparse = lamda_rules.noise_variance(noise, centre_and_one)
    assert 0.008 < full <= 0.01 and 0.006 < sparse < 0.013
    image = torch.zeros(4, 128, 128, dtype=torch.complex64)
    image[:, 64, 64] = 100.0  # a DC peak far from every corner changes nothing
    assert lamda_rules.noise_variance(noise + image, torch.ones(128, 128)) == pytest.approx(full)


def test_cross_validation_picks_the_lambda_whose_image_predicts_the_held_out_lines():
    k, mask, maps = problem(four_fold())
    grid = (1e-5, 1e-3, 1e-2, 1e-1, 1.0)
    image, lamda, errors, held_out = lamda_rules.automatic_lamda(k, mask, maps, method="l1_wavelet", rule="cv",
                                                                 lamdas=grid, max_iter=50)
    assert held_out == ("lines", 0.2)
    assert set(errors) == set(grid) and lamda == min(errors, key=errors.get)
    assert torch.equal(image, classical.l1_wavelet(k, mask, maps, lamda=lamda, max_iter=50))
    oracle = {g: psnr(classical.l1_wavelet(k, mask, maps, lamda=g, max_iter=50)) for g in grid}
    assert oracle[lamda] >= sorted(oracle.values())[len(grid) // 2]  # at least the median lambda's image
    assert errors[1.0] > errors[lamda]  # a lambda that wipes the image predicts nothing


def test_discrepancy_takes_the_largest_lambda_within_the_noise_it_absorbs():
    k, mask, maps = problem(four_fold())
    grid = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    image, lamda, scores, held_out = lamda_rules.automatic_lamda(k, mask, maps, method="total_variation",
                                                                 rule="discrepancy", lamdas=grid, max_iter=200)
    assert held_out is None
    assert scores[1e-4] == 0.0 and all(scores[a] <= scores[b] + 1e-6 for a, b in zip(grid, grid[1:]))
    assert lamda == max(g for g in grid if scores[g] <= 1.0) and scores[1.0] > 1.0
    assert torch.equal(image, classical.total_variation(k, mask, maps, lamda=lamda, max_iter=200))


def test_auto_falls_back_to_the_discrepancy_principle_when_too_few_lines_can_be_held_out():
    k, mask, maps = problem(torch.tensor([*range(20, 28), 5]))
    assert not lamda_rules.cross_validation_possible(mask)
    auto = lamda_rules.automatic_lamda(k, mask, maps, rule="auto", lamdas=(1e-3, 1e-1), max_iter=10)
    discrepancy = lamda_rules.automatic_lamda(k, mask, maps, rule="discrepancy", lamdas=(1e-3, 1e-1), max_iter=10)
    assert auto[1:] == discrepancy[1:] and torch.equal(auto[0], discrepancy[0])
    with pytest.raises(ValueError, match="holds out .* sampled lines"):
        lamda_rules.automatic_lamda(k, mask, maps, rule="cv", lamdas=(1e-3,), max_iter=10)


def test_cross_validation_holds_out_single_locations_where_too_few_lines_lie_outside_the_centre():
    """Two lines outside the centre (an 8x-like mask): "cv" and "auto" hold out single sampled locations,
    the fraction raised until at least 32 are held out, instead of falling back to the discrepancy principle."""
    k, mask, maps = problem(torch.tensor([*range(20, 28), 5, 40]))  # 96 sampled locations outside the centre
    assert lamda_rules.cross_validation_plan(mask) == ("points", 0.4)  # 0.2 and 0.3 hold out 19 and 29
    grid = (1e-3, 1e-1)
    auto = lamda_rules.automatic_lamda(k, mask, maps, rule="auto", lamdas=grid, max_iter=10, folds=1)
    cv = lamda_rules.automatic_lamda(k, mask, maps, rule="cv", lamdas=grid, max_iter=10, folds=1)
    assert auto[1:] == cv[1:] and torch.equal(auto[0], cv[0])
    held = holdout_mask(mask, 0.4, 0, row=0, pattern="points")
    assert int(held.sum()) == 38 and held[:, 20:28].sum() == 0  # nothing of the calibration region
    kept = mask * (1 - held)
    for lamda in grid:  # each score: the held-out error of the image fitted to the other samples
        x = classical.l1_wavelet(k * kept, kept, maps, lamda=lamda, max_iter=10)
        expected = float(((fft2c(maps * x) - k) * held).abs().pow(2).sum() / (k * held).abs().pow(2).sum())
        assert cv[2][lamda] == pytest.approx(expected, rel=1e-5)


def test_lines_that_no_lambda_predicts_better_than_zero_give_way_to_single_locations(monkeypatch):
    """An equispaced pattern: a held-out line is a hole no reconstruction fills, every lambda's error is >= 1,
    so "cv" judges on single sampled locations (the real brain at 230 x 180, 8x: lines picked the largest
    lambda, 2.9 dB below the oracle; locations the oracle's)."""
    k, mask, maps = problem(four_fold())
    grid = (1e-3, 1e-2)
    judged = []
    original = lamda_rules._cross_validated

    def unpredictable_lines(reconstruct, k, m, s, lamdas, plan, *args, **kwargs):
        judged.append(plan)
        scores = original(reconstruct, k, m, s, lamdas, plan, *args, **kwargs)
        return {lamda: 1.0 + score for lamda, score in scores.items()} if plan[0] == "lines" else scores

    monkeypatch.setattr(lamda_rules, "_cross_validated", unpredictable_lines)
    chosen = lamda_rules.automatic_lamda(k, mask, maps, rule="auto", lamdas=grid, max_iter=10, folds=1)
    points = lamda_rules.cross_validation_plan(mask, patterns=("points",))
    assert judged == [("lines", 0.2), points] and chosen.held_out == points and points[0] == "points"
    assert all(score < 1.0 for score in chosen.scores.values()) and chosen.lamda == lamda_rules.least_of_ties(chosen.scores)
    monkeypatch.setattr(lamda_rules, "_cross_validated", original)
    assert lamda_rules.automatic_lamda(k, mask, maps, rule="auto", lamdas=grid, max_iter=10, folds=1).held_out == \
        ("lines", 0.2)  # predictable lines are kept


def test_tied_held_out_errors_give_the_least_lambda_among_them(monkeypatch):
    """Errors within 1 % of the smallest are ties the held-out samples cannot break: "cv" takes the least
    lambda among them (nibabel's EPI slice at 128 x 96, 4x: 3e-3, 1e-2 and 3e-2 scored 0.759, 0.761 and
    0.759; the smallest error's 3e-2 was 1.57 dB below the oracle, 3e-3 0.13 dB), and its image is that
    lambda's reconstruction from every sample."""
    k, mask, maps = problem(four_fold())
    grid = (1e-4, 1e-3, 1e-2, 3e-2)
    tied = {1e-4: 1.7, 1e-3: 0.7605, 1e-2: 0.761, 3e-2: 0.759}
    monkeypatch.setattr(lamda_rules, "_cross_validated", lambda *args, **kwargs: dict(tied))
    chosen = lamda_rules.automatic_lamda(k, mask, maps, rule="cv", lamdas=grid, max_iter=10, folds=1)
    assert chosen.lamda == 1e-3 and chosen.scores == tied
    assert torch.equal(chosen.image, classical.l1_wavelet(k, mask, maps, lamda=1e-3, max_iter=10))
    tied[1e-3] = 0.77  # 1.4 % above the smallest: no longer a tie
    assert lamda_rules.automatic_lamda(k, mask, maps, rule="cv", lamdas=grid, max_iter=10, folds=1).lamda == 1e-2
    assert lamda_rules.least_of_ties(tied, tie=0.0) == 3e-2
    with pytest.raises(ValueError, match="tie must be a fraction >= 0"):
        lamda_rules.least_of_ties(tied, tie=-0.1)
    with pytest.raises(ValueError, match="at least one lambda"):
        lamda_rules.least_of_ties({})


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "tv"}, "method must be one of"),
    ({"rule": "gcv"}, "rule must be one of"),
    ({"lamdas": ()}, "lamdas must be a non-empty"),
    ({"lamdas": (-1.0,)}, "lamdas must be a non-empty"),
    ({"folds": 0}, "folds must be >= 1"),
])
def test_bad_arguments_are_named(kwargs, message):
    k, mask, maps = problem(four_fold())
    with pytest.raises(ValueError, match=message):
        lamda_rules.automatic_lamda(k, mask, maps, **kwargs)
