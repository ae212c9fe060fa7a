"""The methods on tiny problems: they fit, they are deterministic, batched equals looped, bad input fails clearly."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from method_problems import TINY_SKIP, TINY_UNET, loader, mri_batch, sr_batch
from ugodit_pl.methods import (
    ASeqDIP,
    DIP,
    ReferenceGuidedDIP,
    SelfGuidedDIP,
    UGoDITFit,
    UGoDITPretrain,
    load_transferable_weights,
)
from ugodit_pl.methods.losses import total_variation, wavelet_l1
from ugodit_pl.operators import Operator


def trainer(steps: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def fit(method, batch, steps):
    trainer(steps).fit(method, loader(batch, steps))
    return method


MRI_METHODS = {
    "DIP": lambda: DIP(network="unet", network_args=TINY_UNET, lr=1e-2),
    "ReferenceGuidedDIP": lambda: ReferenceGuidedDIP(network="unet", network_args=TINY_UNET, lr=1e-2),
    "SelfGuidedDIP": lambda: SelfGuidedDIP(network="unet", network_args=TINY_UNET, lr=1e-2, num_draws=2, input_lr=1e-2),
    # the residual U-Net (f(z) = z + g(z), the default with an image input) overshoots at lr 1e-2 on this tiny problem
    "ASeqDIP": lambda: ASeqDIP(network="unet", network_args=TINY_UNET, lr=3e-3, update_every=5),
    "UGoDITPretrain": lambda: UGoDITPretrain(network="unet", network_args=TINY_UNET, lr=3e-3, update_every=5),
}


@pytest.mark.parametrize("name", sorted(MRI_METHODS))
def test_every_method_lowers_mri_data_consistency(name):
    batch = mri_batch(num=1, size=32)
    method = MRI_METHODS[name]()
    fit(method, batch, 1)
    before = method.trainer.callback_metrics["train/data_consistency"].item()
    fit(method, batch, 40)
    after = method.trainer.callback_metrics["train/data_consistency"].item()
    assert after < 0.5 * before, (name, before, after)
    recon = method.reconstruction
    assert recon.shape == (1, 2, 32, 32) and torch.isfinite(recon).all()


def test_natural_image_methods_lower_data_consistency():
    batch = sr_batch(num=1, size=32)
    for method in (
        ASeqDIP(network="skip", network_args=TINY_SKIP, update_every=5),
        DIP(network="skip", network_args={**TINY_SKIP, "in_channels": 4}),
        SelfGuidedDIP(network="skip", network_args=TINY_SKIP, num_draws=2, input_lr=1e-2),
    ):
        fit(method, batch, 1)
        before = method.trainer.callback_metrics["train/data_consistency"].item()
        fit(method, batch, 30)
        after = method.trainer.callback_metrics["train/data_consistency"].item()
        assert after < 0.5 * before, (type(method).__name__, before, after)
        assert method.reconstruction.min() >= 0 and method.reconstruction.max() <= 1  # sigmoid output


def test_scale_normalisation_makes_fit_independent_of_kspace_units():
    batch = mri_batch(num=1, size=32)
    scaled = dict(batch, y=batch["y"] * 1e4)
    # at the default learning rate: at 1e-2 the tiny residual fit amplifies round-off (a factor 1 + 1e-6 moves it
    # as much as 1e4 does), which is not what this test is about
    a = fit(ASeqDIP(network="unet", network_args=TINY_UNET), batch, 10)
    b = fit(ASeqDIP(network="unet", network_args=TINY_UNET), scaled, 10)
    torch.testing.assert_close(b.reconstruction, 1e4 * a.reconstruction, rtol=1e-3, atol=1e-3 * float(b.reconstruction.abs().max()))


@pytest.mark.parametrize("make", [lambda: ASeqDIP(network="unet", network_args=TINY_UNET, lr=1e-2, update_every=3),
                                  lambda: SelfGuidedDIP(network="unet", network_args=TINY_UNET, num_draws=2)])
def test_same_seed_same_result(make):
    batch = mri_batch(num=1, size=32)
    a, b = fit(make(), batch, 8), fit(make(), batch, 8)
    torch.testing.assert_close(a.reconstruction, b.reconstruction, rtol=0, atol=0)


def test_batched_fit_equals_separate_fits():
    batch = mri_batch(num=2, size=32)
    together = fit(ASeqDIP(num_measurements=2, network="unet", network_args=TINY_UNET, lr=3e-3, update_every=3), batch, 7)
    for row in range(2):
        single = {
            "y": batch["y"][row : row + 1],
            "operator": batch["operator"].select([row]),
            "index": torch.tensor([0]),
        }
        alone = fit(ASeqDIP(network="unet", network_args=TINY_UNET, lr=3e-3, update_every=3), single, 7)
        # batched (vmapped, grouped) and single convolutions round differently; Adam carries that along
        peak = float(alone.reconstruction.abs().max())
        torch.testing.assert_close(together.reconstruction[row : row + 1], alone.reconstruction, rtol=0, atol=2e-3 * peak)


def pretrain(tmp_path, steps=6, num=2):
    path = tmp_path / "encoder.pt"
    method = UGoDITPretrain(
        num_measurements=num, network="unet", network_args=TINY_UNET, lr=3e-3, update_every=3, weights_path=str(path)
    )
    fit(method, mri_batch(num=num, size=32, seed=1), steps)
    return method, path


def test_pretrain_save_fit_round_trip_keeps_encoder_frozen(tmp_path):
    pre, path = pretrain(tmp_path)
    payload = load_transferable_weights(path)
    assert payload["metadata"]["num_measurements"] == 2 and payload["metadata"]["steps"] == 6
    assert payload["metadata"]["operator"] == "MultiCoilMRI"
    for key, value in pre.encoder.state_dict().items():
        torch.testing.assert_close(payload["encoder"][key], value)

    test = mri_batch(num=1, size=32, seed=7)
    fitter = UGoDITFit(weights=str(path), lr=3e-3, update_every=3)
    before = {k: v.clone() for k, v in fitter.encoder.state_dict().items()}
    assert all(not p.requires_grad for p in fitter.encoder.parameters())
    optimised = {id(p) for group in fitter.configure_optimizers().param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in fitter.encoder.parameters()}
    fit(fitter, test, 1)
    first = fitter.trainer.callback_metrics["train/data_consistency"].item()
    fit(fitter, test, 30)
    assert fitter.trainer.callback_metrics["train/data_consistency"].item() < first
    for key, value in fitter.encoder.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=f"encoder {key} changed")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transferable_weights_keep_their_precision(tmp_path, dtype):
    """A float64 pre-training gives a float64 fit, its encoder bit for bit; float32 stays float32."""
    pre = UGoDITPretrain(num_measurements=2, network="unet", network_args=TINY_UNET, lr=3e-3, update_every=3,
                         weights_path=str(tmp_path / "encoder.pt")).to(dtype)
    fit(pre, mri_batch(num=2, size=32, seed=1), 2)
    fitter = UGoDITFit(weights=str(tmp_path / "encoder.pt"))
    assert fitter.dtype == dtype and {p.dtype for p in fitter.parameters()} == {dtype}
    for key, value in pre.encoder.state_dict().items():
        assert torch.equal(fitter.encoder.state_dict()[key], value), key
    fit(fitter, mri_batch(num=1, size=32, seed=7), 2)
    assert fitter.fit_state.ema.dtype == dtype and fitter.current_output.dtype == dtype


def test_a_float64_fit_computes_in_float64_from_its_measurements():
    """complex64 k-space enters a float64 fit as complex128: its scale and normalised data are float64."""
    batch = mri_batch(num=1, size=32, seed=3)
    method = fit(ASeqDIP(network="unet", network_args=TINY_UNET, lr=3e-3).double(), batch, 1)
    assert method.fit_state.scales.dtype == torch.float64
    assert method._checked_batch.y.dtype == torch.complex128
    assert batch["y"].dtype == torch.complex64  # the caller's batch is not touched


def test_fit_decoder_is_reinitialised(tmp_path):
    _, path = pretrain(tmp_path, steps=2)
    fitter = UGoDITFit(weights=str(path))
    weights = [p for n, p in fitter.decoders.named_parameters() if n.endswith("weight") and p.dim() == 5]
    assert weights and all(abs(float(w.detach().std()) - 0.02) < 0.005 for w in weights if w[0].numel() > 500)


def test_fit_network_init_chooses_the_fresh_decoder(tmp_path):
    """network_init="default" gives PyTorch's layer initialisation (seeded), not the authors' N(0, 0.02)."""
    _, path = pretrain(tmp_path, steps=2)
    normal, default = (UGoDITFit(weights=str(path), network_init=init, residual=False) for init in ("normal", "default"))
    again = UGoDITFit(weights=str(path), network_init="default", residual=False)
    for (name, a), b, c in zip(normal.decoders.named_parameters(), default.decoders.parameters(), again.decoders.parameters()):
        assert torch.equal(b, c), name
        if a.dim() == 5 and a[0].numel() > 500:
            assert abs(float(b.std()) - 0.02) > 0.005 and not torch.equal(a, b), name
    for key, value in normal.encoder.state_dict().items():  # the encoder is the file's either way
        assert torch.equal(value, default.encoder.state_dict()[key]), key


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fit_encoder_bn_mode_holds_during_a_lightning_fit(tmp_path, mode):
    """Without any ``.train()`` call by the user, the encoder runs in the requested mode inside Trainer.fit."""
    _, path = pretrain(tmp_path, steps=2)
    test = mri_batch(num=1, size=32, seed=7)
    fitter = UGoDITFit(weights=str(path), encoder_bn=mode)
    seen = []
    fitter.encoder.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    fit(fitter, test, 2)
    assert seen and all(training == (mode == "train") for training in seen)
    assert fitter.decoders.training


def test_fit_encoder_bn_eval_and_train_give_different_outputs(tmp_path):
    _, path = pretrain(tmp_path, steps=2)
    test = mri_batch(num=1, size=32, seed=7)
    outputs = {}
    for mode in ("train", "eval"):
        fitter = UGoDITFit(weights=str(path), encoder_bn=mode)
        fit(fitter, test, 2)
        outputs[mode] = fitter.current_output
    assert not torch.allclose(outputs["train"], outputs["eval"])


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        UGoDITFit(weights=str(tmp_path / "nowhere.pt"))


def test_weights_for_another_architecture_name_the_mismatch(tmp_path):
    _, path = pretrain(tmp_path, steps=1)
    with pytest.raises(ValueError, match="network_args"):
        UGoDITFit(weights=str(path), network_args={"channels": [8, 8, 8, 8]})
    payload = load_transferable_weights(path)
    payload["network_args"] = {"channels": [8, 8, 8, 8]}
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="shape mismatches"):
        UGoDITFit(weights=str(tmp_path / "other.pt"))


def test_not_a_weights_file(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt"):
        UGoDITFit(weights=str(tmp_path / "junk.pt"))


@pytest.mark.parametrize("cls", [DIP, ASeqDIP, SelfGuidedDIP, UGoDITPretrain])
def test_zero_measurements_is_refused(cls):
    with pytest.raises(ValueError, match="num_measurements"):
        cls(num_measurements=0, network="unet", network_args=TINY_UNET)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"loss_norm": "l1"}, "loss_norm"), ({"output": "best"}, "output"), ({"input_update": "magic"}, "input_update"),
     ({"update_every": 0}, "update_every"), ({"lam": -1.0}, "lam"), ({"network": "resnet"}, "resnet"),
     ({"tv_weight": -0.1}, "tv_weight"), ({"wavelet_weight": -1e-3}, "wavelet_weight")],
)
def test_bad_arguments_are_named(kwargs, match):
    args = {"network": "unet", "network_args": TINY_UNET, **kwargs}
    with pytest.raises(ValueError, match=match):
        ASeqDIP(**args)


def test_batch_index_beyond_the_set_is_refused():
    batch = mri_batch(num=2, size=32)
    with pytest.raises(ValueError, match="num_measurements=1"):
        fit(ASeqDIP(network="unet", network_args=TINY_UNET), batch, 1)


def test_mismatched_measurement_shape_is_refused():
    batch = mri_batch(num=1, size=32)
    bad = dict(batch, y=batch["y"][..., :16])
    with pytest.raises(ValueError, match="measurement"):
        fit(ASeqDIP(network="unet", network_args=TINY_UNET), bad, 1)


def test_batch_without_operator_is_refused():
    batch = mri_batch(num=1, size=32)
    with pytest.raises(KeyError, match="operator"):
        fit(ASeqDIP(network="unet", network_args=TINY_UNET), {"y": batch["y"]}, 1)


def test_checkpoint_restores_fitting_state(tmp_path):
    batch = mri_batch(num=1, size=32)
    method = fit(SelfGuidedDIP(network="unet", network_args=TINY_UNET, num_draws=2), batch, 5)
    state = method.state_dict()
    clone = SelfGuidedDIP(network="unet", network_args=TINY_UNET, num_draws=2)
    clone.load_state_dict(state)  # a fresh method takes the saved rows
    for name in ("inputs", "scales", "ema", "ema_count", "last"):
        torch.testing.assert_close(getattr(clone.fit_state, name), getattr(method.fit_state, name).detach())
    assert clone.fit_state.steps.tolist() == [5] and clone.fit_state.names == method.fit_state.names
    assert isinstance(batch["operator"], Operator)


def test_test_and_predict_report_the_fitted_reconstruction():
    batch = mri_batch(num=1, size=32)
    method = fit(ASeqDIP(network="unet", network_args=TINY_UNET, lr=1e-2), batch, 10)
    run = trainer(1)
    metrics = run.test(method, loader(batch, 1), verbose=False)[0]
    assert {"test/psnr", "test/ssim", "test/nmse"} <= set(metrics) and metrics["test/psnr"] > 0
    predicted = run.predict(method, loader(batch, 1))[0]
    torch.testing.assert_close(predicted["reconstruction"], method.all_reconstructions())
    assert predicted["name"] == batch["name"]


def test_test_without_targets_is_a_clear_error():
    batch = mri_batch(num=1, size=32)
    method = fit(ASeqDIP(network="unet", network_args=TINY_UNET), batch, 2)
    with pytest.raises(ValueError, match="target"):
        trainer(1).test(method, loader({k: v for k, v in batch.items() if k != "target"}, 1), verbose=False)


def test_input_moves_after_every_n_steps():
    """z_k is used for steps kN + 1 .. (k + 1)N; the move to f(z) is made when step kN + 1 starts."""
    batch = mri_batch(num=1, size=32)
    seen = []

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(module.fit_state.inputs.clone())

    method = ASeqDIP(network="unet", network_args=TINY_UNET, lr=1e-2, update_every=3)
    trainer(7, callbacks=[Spy()]).fit(method, loader(batch, 7))
    changed = [step for step in range(1, 7) if not torch.equal(seen[step], seen[step - 1])]
    assert changed == [3, 6]  # seen[k] is after step k + 1: steps 4 and 7 use the moved inputs


def test_all_reconstructions_follow_output_and_final_output():
    batch = mri_batch(num=2, size=32)
    method = fit(ASeqDIP(num_measurements=2, network="unet", network_args=TINY_UNET, output="last",
                         final_projection=False), batch, 3)
    torch.testing.assert_close(method.all_reconstructions(), method.current_output)
    method.final_output = torch.zeros_like(method.current_output)
    assert float(method.all_reconstructions().abs().max()) == 0.0


def test_mri_reconstructions_are_zero_outside_the_coil_support():
    batch = mri_batch(num=1, size=32)
    maps = batch["operator"].coil_maps.clone()
    maps[..., :4] = 0  # no coil sees the first four columns
    operator = type(batch["operator"])(batch["operator"].mask, maps)
    batch = dict(batch, operator=operator, y=operator(torch.randn(1, 2, 32, 32)))
    method = fit(ASeqDIP(network="unet", network_args=TINY_UNET), batch, 2)
    assert float(method.all_reconstructions()[..., :4].abs().max()) == 0.0
    assert float(method.all_reconstructions()[..., 4:].abs().max()) > 0.0


class OutputRecorder(pl.Callback):
    """Keeps the (normalised-unit) outputs f(z) of every step and the EMA after it."""

    def __init__(self):
        self.outputs, self.emas = [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.outputs.append(module.fit_state.last.clone())
        self.emas.append(module.fit_state.ema.clone())


@pytest.mark.parametrize("variant", ["corrected", "authors"])
def test_ema_is_the_weighted_average_of_the_outputs(variant):
    """Corrected: after t outputs, sum (1-d) d^(t-k) out_k / (1 - d^t). Authors': from zeros, once every N steps."""
    batch = mri_batch(num=1, size=32)
    recorder = OutputRecorder()
    method = ASeqDIP(network="unet", network_args=TINY_UNET, lr=1e-2, ema_decay=0.7, ema_variant=variant, update_every=2)
    trainer(6, callbacks=[recorder]).fit(method, loader(batch, 6))
    d = 0.7
    for t in range(1, 7):
        outs = recorder.outputs[:t]
        if variant == "corrected":
            expected = sum((1 - d) * d ** (t - 1 - k) * out for k, out in enumerate(outs)) / (1 - d**t)
        else:
            expected = torch.zeros_like(outs[0])
            for out in outs[1::2]:  # the outputs of steps 2, 4, 6
                expected = d * expected + (1 - d) * out
        torch.testing.assert_close(recorder.emas[t - 1], expected, rtol=1e-5, atol=1e-6)


def test_authors_ema_clips_natural_image_outputs():
    batch = sr_batch(num=1, size=32)
    recorder = OutputRecorder()
    method = ASeqDIP(network="skip", network_args=TINY_SKIP, ema_variant="authors", update_every=1, ema_decay=0.5)
    trainer(2, callbacks=[recorder]).fit(method, loader(batch, 2))
    expected = 0.5 * (0.5 * recorder.outputs[0].clamp(0, 1)) + 0.5 * recorder.outputs[1].clamp(0, 1)
    torch.testing.assert_close(recorder.emas[1], expected)


@pytest.mark.parametrize("network, args, expected", [("unet", TINY_UNET, 1e-3), ("skip", TINY_SKIP, 0.01)])
def test_self_guided_input_lr_defaults_per_network(network, args, expected):
    assert SelfGuidedDIP(network=network, network_args=args).input_lr == expected
    assert SelfGuidedDIP(network=network, network_args=args, input_lr=0.5).input_lr == 0.5


@pytest.mark.parametrize("cls", [ASeqDIP, DIP, ReferenceGuidedDIP, SelfGuidedDIP, UGoDITPretrain])
def test_the_total_variation_term_is_on_for_the_mri_unet_and_off_for_the_skip_net(cls):
    """tv_weight=None: 0.002 for the U-Net (ours), 0 for the skip net; an explicit 0 is the papers' objective."""
    skip_args = dict(TINY_SKIP, need_sigmoid=False) if cls is ReferenceGuidedDIP else TINY_SKIP
    assert cls(network="unet", network_args=TINY_UNET).tv_weight == 0.002
    assert cls(network="skip", network_args=skip_args).tv_weight == 0.0
    assert cls(network="unet", network_args=TINY_UNET, tv_weight=0.0).tv_weight == 0.0
    assert cls(network="skip", network_args=skip_args, tv_weight=0.01).tv_weight == 0.01


@pytest.mark.parametrize("make", [
    lambda: ASeqDIP(network="unet", network_args=TINY_UNET, residual=True),
    lambda: ReferenceGuidedDIP(network="unet", network_args=TINY_UNET, residual=True),
    lambda: UGoDITPretrain(network="unet", network_args=TINY_UNET, residual=True),
])
def test_a_residual_method_starts_from_its_input(make):
    """f(z) = z + g(z) with g's output layer at zero: the first output is the input, A^H y / s."""
    batch = mri_batch(num=1, size=32)
    method = fit(make(), batch, 1)
    torch.testing.assert_close(method.fit_state.last, method.fit_state.inputs, rtol=0, atol=0)
    fit(method, batch, 5)
    assert not torch.allclose(method.fit_state.last, method.fit_state.inputs)


@pytest.mark.parametrize("make", [
    lambda: ASeqDIP(network="unet", network_args=TINY_UNET, input_init="reference", update_every=5),
    lambda: ReferenceGuidedDIP(network="unet", network_args=TINY_UNET, input_init="reference"),
])
def test_a_reference_input_starts_from_the_batch_reference_in_the_scaled_units(make):
    """``input_init="reference"``: z_0 is the batch's ``reference`` divided by the measurement's scale, as y is
    (a compressed-sensing image as the network's start, for example)."""
    from ugodit_pl.complex import complex_to_channels

    batch = mri_batch(num=1, size=32)
    reference = complex_to_channels(torch.randn(1, 32, 32, dtype=torch.complex64, generator=torch.Generator().manual_seed(3)))
    method = fit(make(), dict(batch, reference=reference), 1)
    torch.testing.assert_close(method.fit_state.inputs, reference / method.fit_state.scales.view(-1, 1, 1, 1))
    with pytest.raises(ValueError, match="needs the batch to carry a 'reference' image"):
        fit(make(), batch, 1)


def test_residual_by_default_for_the_image_input_unet_except_reference_guided_dip():
    assert ASeqDIP(network="unet", network_args=TINY_UNET).residual is True
    assert SelfGuidedDIP(network="unet", network_args=TINY_UNET).residual is True
    assert ReferenceGuidedDIP(network="unet", network_args=TINY_UNET).residual is False  # it overfits: decision 6
    assert DIP(network="unet", network_args=TINY_UNET).residual is False  # noise input
    assert ASeqDIP(network="skip", network_args=TINY_SKIP).residual is False


def test_residual_needs_an_image_input_and_an_unsquashed_output():
    with pytest.raises(ValueError, match="input_init='noise'"):
        DIP(network="unet", network_args=TINY_UNET, residual=True)
    with pytest.raises(ValueError, match="need_sigmoid=False"):
        ASeqDIP(network="skip", network_args=TINY_SKIP, residual=True)
    ASeqDIP(network="skip", network_args={**TINY_SKIP, "need_sigmoid": False}, residual=True)


def test_ugodit_fit_takes_the_residual_setting_of_its_pretraining(tmp_path):
    path = tmp_path / "encoder.pt"
    fit(UGoDITPretrain(network="unet", network_args=TINY_UNET, residual=True, weights_path=str(path)),
        mri_batch(num=1, size=32, seed=1), 2)
    assert load_transferable_weights(path)["metadata"]["residual"] is True
    assert UGoDITFit(weights=str(path)).residual is True
    assert UGoDITFit(weights=str(path), residual=False).residual is False


@pytest.mark.parametrize("make", [
    lambda **kw: ASeqDIP(network="unet", network_args=TINY_UNET, lr=3e-3, update_every=5, seed=2, **kw),
    lambda **kw: SelfGuidedDIP(network="unet", network_args=TINY_UNET, lr=3e-3, num_draws=2, seed=2, **kw),
])
@pytest.mark.parametrize("weight, term", [("tv_weight", total_variation), ("wavelet_weight", wavelet_l1)])
def test_a_sparsity_weight_adds_its_term_of_the_output_to_the_objective(make, weight, term):
    """The loss is the paper's objective plus weight * term(output), and a fit with it ends sparser."""
    batch = mri_batch(num=1, size=32)
    terms = {"tv_weight": 0.0, "wavelet_weight": 0.0}  # the papers' objective, then one term on
    plain, sparse = (fit(make(final_projection=False, **{**terms, weight: w}), batch, 30) for w in (0.0, 10.0))
    assert float(term(sparse.reconstruction)) < 0.8 * float(term(plain.reconstruction))
    # a step taken by hand: the loss returned is the method's plus exactly the weighted term of its output
    method = fit(make(**{**terms, weight: 0.25}), batch, 1)  # sets up the state
    method.trainer = None
    step = method.begin_step(batch)
    output = method.forward_rows(method.fit_state.inputs[step.rows], step.rows)
    base = method.data_term(output, step)
    total = method.end_step(step, base.clone(), base.detach(), output)
    assert torch.allclose(total, (base + 0.25 * term(output)).sum())
