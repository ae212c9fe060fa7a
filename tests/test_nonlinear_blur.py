"""NonlinearBlur and the KernelWizard network (bkse), with random weights (the real GOPRO_wVAE.pth is not shipped)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ugodit_pl.operators import NonlinearBlur
from ugodit_pl.operators.nonlinear_blur import KernelWizard, load_kernel_wizard_state

SMALL = dict(nf=4, front_blocks=2, back_blocks=1)  # DPS's architecture, fewer channels and blocks
LATENT = 32  # 8 nf latent channels
SIZE = 128


def _image(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _small_op(seed: int = 0, image_size: int = SIZE) -> NonlinearBlur:
    return NonlinearBlur(allow_random_weights=True, seed=seed, image_size=image_size, network_config=SMALL)


def test_dps_configuration_matches_bkse_checkpoint_layout() -> None:
    # The keys and shapes of the blurring part of bkse's KernelWizard with DPS's options (nf 64, front_RBs 10,
    # back_RBs 20, norm none): what GOPRO_wVAE.pth holds besides the kernel extractor F, which blurring does not use.
    state = KernelWizard.empty(device="meta").state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert len(shapes) == 46 + 25 + 88  # features, adapter (biases only in the double convs), trunk
    expected = {
        "feature_extractor.0.weight": (64, 3, 3, 3),
        "feature_extractor.4.bias": (64,),
        "feature_extractor.15.conv2.weight": (64, 64, 3, 3),
        "adapter.model.down.0.weight": (64, 64, 4, 4),
        "adapter.model.up.1.double_conv.0.weight": (64, 128, 5, 5),
        "adapter.model.submodule.down.1.weight": (128, 64, 4, 4),
        "adapter.model.submodule.submodule.submodule.submodule.down.1.weight": (512, 512, 4, 4),
        "adapter.model.submodule.submodule.submodule.submodule.up.1.double_conv.0.weight": (512, 1024, 5, 5),
        "adapter.model.submodule.submodule.submodule.up.1.double_conv.2.bias": (256,),
        "recon_trunk.19.conv1.weight": (64, 64, 3, 3),
        "recon_trunk.20.weight": (256, 64, 3, 3),
        "recon_trunk.23.weight": (256, 64, 3, 3),
        "recon_trunk.26.weight": (64, 64, 3, 3),
        "recon_trunk.28.weight": (3, 64, 3, 3),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    assert "adapter.model.down.0.bias" not in shapes and not any(k.startswith("kernel_extractor.") for k in shapes)


def _reference_adapt_kernel(state: dict, x: torch.Tensor, latent: torch.Tensor, front: int, back: int) -> torch.Tensor:
    """bkse's adaptKernel written with functional ops on the checkpoint tensors (names as in bkse's checkpoints)."""

    def conv(h: torch.Tensor, name: str, stride: int = 1) -> torch.Tensor:
        weight = state[name + ".weight"]
        return F.conv2d(h, weight, state.get(name + ".bias"), stride, weight.shape[-1] // 2)

    def residual(h: torch.Tensor, name: str) -> torch.Tensor:
        return h + conv(F.relu(conv(h, name + ".conv1")), name + ".conv2")

    h = F.leaky_relu(conv(x, "feature_extractor.0"), 0.1)
    h = F.leaky_relu(conv(h, "feature_extractor.2", stride=2), 0.1)
    h = F.leaky_relu(conv(h, "feature_extractor.4", stride=2), 0.1)
    for i in range(front):
        h = residual(h, f"feature_extractor.{6 + i}")

    def up(h: torch.Tensor, prefix: str, top: bool) -> torch.Tensor:
        h = F.relu(h)
        h = F.relu(conv(h, prefix + ".up.1.double_conv.0"))
        h = F.relu(conv(h, prefix + ".up.1.double_conv.2"))
        h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=True)
        return torch.tanh(h) if top else h

    def level(h: torch.Tensor, depth: int) -> torch.Tensor:
        prefix = "adapter.model" + ".submodule" * depth
        if depth == 0:
            down = F.conv2d(h, state[prefix + ".down.0.weight"], stride=2, padding=1)
            return up(level(down, 1), prefix, top=True)
        activated = F.leaky_relu(h, 0.2)  # bkse's in-place LeakyReLU: the skip carries the activated input
        down = F.conv2d(activated, state[prefix + ".down.1.weight"], stride=2, padding=1)
        inner = torch.cat((down, latent), dim=1) if depth == 4 else level(down, depth + 1)
        return torch.cat((up(inner, prefix, top=False), activated), dim=1)

    h = level(h, 0)
    for i in range(back):
        h = residual(h, f"recon_trunk.{i}")
    h = F.leaky_relu(F.pixel_shuffle(conv(h, f"recon_trunk.{back}"), 2), 0.1)
    h = F.leaky_relu(F.pixel_shuffle(conv(h, f"recon_trunk.{back + 3}"), 2), 0.1)
    h = F.leaky_relu(conv(h, f"recon_trunk.{back + 6}"), 0.1)
    return x + conv(h, f"recon_trunk.{back + 8}")


def test_adapt_kernel_matches_functional_reference() -> None:
    network = KernelWizard.random(seed=3, **SMALL)
    x = _image(2, seed=1)
    latent = torch.randn(2, LATENT, 1, 1, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = network.adapt_kernel(x, latent)
        expected = _reference_adapt_kernel(network.state_dict(), x, latent, front=2, back=1)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    assert (ours - x).abs().mean() > 1e-3  # the random network really changes the image


def test_kernel_drawn_once_and_seeded() -> None:
    op = _small_op(seed=5)
    x = _image()
    first = op(x)
    assert torch.equal(first, op(x))  # DPS would draw a new kernel here
    assert torch.equal(first, _small_op(seed=5)(x))
    assert not torch.allclose(first, _small_op(seed=6)(x))
    expected_latent = torch.randn(1, LATENT, 1, 1, generator=torch.Generator().manual_seed(5)) * 1.2
    torch.testing.assert_close(op.latent, expected_latent)
    assert op.init_input(first) is first
    assert not op.linear
    with pytest.raises(NotImplementedError):
        op.adjoint(first)
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0


def test_gradients_reach_x_but_not_the_network() -> None:
    op = _small_op()
    op.train()
    assert not op.network.training
    x = (_image() * 0.5 + 0.25).requires_grad_(True)
    op(x).square().sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(not p.requires_grad and p.grad is None for p in op.network.parameters())


def test_missing_weights_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="GOPRO_wVAE.pth.*weights_path="):
        NonlinearBlur()
    with pytest.raises(FileNotFoundError, match="GOPRO_wVAE.pth"):
        NonlinearBlur(weights_path=tmp_path / "missing.pth")


def test_weights_round_trip_through_a_file(tmp_path: Path) -> None:
    # A checkpoint as bkse writes it: the full network, the kernel extractor F included (ignored here).
    network = KernelWizard.random(seed=11, **SMALL)
    full = {**network.state_dict(), "kernel_extractor.model.1.weight": torch.zeros(4, 8, 7, 7)}
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pth"
    torch.save(full, plain)
    torch.save({"state_dict": {"module." + k: v for k, v in full.items()}, "iter": 5}, wrapped)
    x = _image()
    with torch.no_grad():
        latent = torch.randn(1, LATENT, 1, 1, generator=torch.Generator().manual_seed(4)) * 1.2
        expected = network.adapt_kernel(x, latent)
    for path in (plain, wrapped):
        op = NonlinearBlur(weights_path=path, seed=4, image_size=SIZE, network_config=SMALL)
        torch.testing.assert_close(op(x), expected.clamp(0, 1))
    again = NonlinearBlur(weights_path=wrapped, seed=9, image_size=SIZE, network_config=SMALL)
    assert again.network is op.network  # a file is loaded once and its network shared
    assert set(load_kernel_wizard_state(wrapped)) == set(full)
    loaded = KernelWizard.from_checkpoint(plain, **SMALL)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), network.state_dict().values()))


def test_mismatched_checkpoint_lists_keys(tmp_path: Path) -> None:
    state = KernelWizard.empty(**SMALL).state_dict()
    good = dict(state)
    state.pop("recon_trunk.0.conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    message = r"1 missing keys \['recon_trunk.0.conv1.weight'\].*1 unexpected keys \['extra"
    with pytest.raises(ValueError, match=message):
        NonlinearBlur(weights_path=path, image_size=SIZE, network_config=SMALL)
    good["recon_trunk.0.conv1.bias"] = torch.zeros(5)
    torch.save(good, path)
    with pytest.raises(ValueError, match=r"1 shape mismatches .*\['recon_trunk.0.conv1.bias: \(5,\) vs \(4,\)'\]"):
        NonlinearBlur(weights_path=path, image_size=SIZE, network_config=SMALL)


def test_batched_stack_select_and_shape_checks() -> None:
    ops = [_small_op(seed=s) for s in range(2)]
    assert ops[0].network is ops[1].network  # one shared frozen network
    batch = NonlinearBlur.stack(ops)
    assert batch.latent.shape == (2, LATENT, 1, 1) and batch.batch_size == 2
    x = _image(2, seed=2)
    with torch.no_grad():
        y = batch(x)
        for b, op in enumerate(ops):
            torch.testing.assert_close(y[b : b + 1], op(x[b : b + 1]), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batch.select([1])(x[1:]), y[1:], rtol=1e-4, atol=1e-5)
        shared = ops[0](x)  # one latent kernel shared by a batch
        torch.testing.assert_close(shared[:1], y[:1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="batch size"):
        batch(_image(3))
    with pytest.raises(ValueError, match="x must be"):
        ops[0](torch.rand(1, 3, 256, 256))
    with pytest.raises(ValueError, match="multiples of 128"):
        _small_op(image_size=100)
    other = NonlinearBlur(network=KernelWizard.empty(**SMALL), image_size=SIZE)
    with pytest.raises(ValueError, match="share one network"):
        NonlinearBlur.stack([ops[0], other])
