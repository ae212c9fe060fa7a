"""ReconstructionMetrics: values against independent computations, logging, history, summary, state."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from skimage.metrics import structural_similarity

from callback_problems import TINY_UNET, image_batch, loader, mri_batch, trainer
from ugodit_pl.callbacks import ReconstructionMetrics, WMVEarlyStopping
from ugodit_pl.methods import ASeqDIP


class Recorder(pl.Callback):
    """Keeps a copy of current_output / ema_output at every step."""

    def __init__(self):
        self.current, self.ema = {}, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.current[trainer.global_step] = pl_module.current_output.clone()
        self.ema[trainer.global_step] = pl_module.ema_output.clone()


def mri_reference(output: torch.Tensor, target: torch.Tensor) -> dict:
    """fastMRI-convention PSNR / SSIM / NMSE of |output| vs target, per sample then averaged (numpy/skimage)."""
    mag = np.sqrt((output.double().numpy() ** 2).sum(axis=1))
    gt = target[:, 0].double().numpy()
    psnr, ssim, nmse = [], [], []
    for x, t in zip(mag, gt):
        psnr.append(10 * np.log10(t.max() ** 2 / np.mean((x - t) ** 2)))
        ssim.append(structural_similarity(t, x, data_range=t.max()))
        nmse.append(np.sum((t - x) ** 2) / np.sum(t**2))
    return {"psnr": np.mean(psnr), "ssim": np.mean(ssim), "nmse": np.mean(nmse)}


def test_mri_metrics_match_an_independent_computation_and_are_logged():
    batch = mri_batch(num=2, size=16)
    metrics = ReconstructionMetrics(every_n_steps=2, print_summary=False)
    recorder = Recorder()
    fit = trainer(7, [metrics, recorder])
    fit.fit(ASeqDIP(num_measurements=2, network="unet", network_args=TINY_UNET, lr=0.01), loader(batch))

    assert sorted(metrics.history) == [2, 4, 6, 7]                 # every 2 steps and the last step
    for step, values in metrics.history.items():
        assert set(values) == {"psnr", "ssim", "nmse", "psnr_ema", "ssim_ema", "nmse_ema"}
        for name, expected in mri_reference(recorder.current[step], batch["target"]).items():
            assert values[name] == pytest.approx(expected, rel=1e-4, abs=1e-5), (step, name)
        for name, expected in mri_reference(recorder.ema[step], batch["target"]).items():
            assert values[f"{name}_ema"] == pytest.approx(expected, rel=1e-4, abs=1e-5), (step, name)
        assert metrics.per_measurement[step]["index"] == [0, 1]
        assert np.mean(metrics.per_measurement[step]["psnr"]) == pytest.approx(values["psnr"], rel=1e-6)
    # logged to the trainer under metrics/..., the last value
    logged = fit.logged_metrics
    assert float(logged["metrics/psnr"]) == pytest.approx(metrics.history[7]["psnr"], rel=1e-5)
    assert "metrics/nmse_ema" in logged
    # best = max PSNR / min NMSE over the history
    best_step = max(metrics.history, key=lambda s: metrics.history[s]["psnr"])
    assert metrics.best_step == best_step
    assert metrics.best["nmse"][1] == min(v["nmse"] for v in metrics.history.values())
    # final: the reconstruction the fit returns (for MRI the EMA with the measured k-space put back) at the end
    projected = batch["operator"].data_consistent(recorder.ema[7].float(), batch["y"])
    assert metrics.final["psnr"] == pytest.approx(mri_reference(projected, batch["target"])["psnr"], rel=1e-4)


def test_natural_images_use_psnr_and_ssim_in_unit_range_without_ema():
    batch = image_batch(num=1, size=16)
    metrics = ReconstructionMetrics(every_n_steps=3, log_ema=False, print_summary=False)
    recorder = Recorder()
    net = {**TINY_UNET, "in_channels": 3, "out_channels": 3}
    trainer(6, [metrics, recorder]).fit(
        ASeqDIP(num_measurements=1, network="unet", network_args=net, lr=0.01), loader(batch)
    )
    assert sorted(metrics.history) == [3, 6]
    values = metrics.history[6]
    assert set(values) == {"psnr", "ssim"}
    x = recorder.current[6].clamp(0, 1).double().numpy()[0]
    t = batch["target"].double().numpy()[0]
    assert values["psnr"] == pytest.approx(10 * np.log10(1.0 / np.mean((x - t) ** 2)), rel=1e-4)
    expected_ssim = structural_similarity(
        t, x, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert values["ssim"] == pytest.approx(expected_ssim, rel=1e-3, abs=1e-4)


def test_final_metrics_follow_the_early_stopping_choice_and_the_summary_prints(capsys):
    batch = mri_batch(num=2, size=16)
    es = WMVEarlyStopping(window=5, patience=5)
    metrics = ReconstructionMetrics(every_n_steps=1)
    method = ASeqDIP(num_measurements=2, network="unet", network_args=TINY_UNET, lr=0.01)
    trainer(100, [es, metrics]).fit(method, loader(batch))
    kept = mri_reference(method.final_output, batch["target"])
    assert metrics.final["psnr"] == pytest.approx(kept["psnr"], rel=1e-4)
    # with one output kept at step s for both measurements, it equals the history at s
    if len(set(es.best_step.values())) == 1:
        step = es.best_step[0]
        assert metrics.final["psnr"] == pytest.approx(metrics.history[step]["psnr"], rel=1e-5)
    printed = capsys.readouterr().out
    assert "Reconstruction metrics" in printed and "psnr_ema" in printed and "reconstruction" in printed


def test_batches_without_target_are_skipped_and_state_round_trips():
    batch = mri_batch(num=1, size=16)
    del batch["target"]
    quiet = ReconstructionMetrics(every_n_steps=1, print_summary=False)
    trainer(2, [quiet]).fit(ASeqDIP(network="unet", network_args=TINY_UNET), loader(batch))
    assert quiet.history == {} and quiet.best_step is None

    metrics = ReconstructionMetrics(every_n_steps=1, print_summary=False)
    trainer(3, [metrics]).fit(ASeqDIP(network="unet", network_args=TINY_UNET), loader(mri_batch(num=1, size=16)))
    restored = ReconstructionMetrics(every_n_steps=1)
    state = metrics.state_dict()
    restored.load_state_dict(state)
    assert restored.history == metrics.history and restored.best == metrics.best
    assert restored.per_measurement == metrics.per_measurement


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="every_n_steps"):
        ReconstructionMetrics(every_n_steps=0)
