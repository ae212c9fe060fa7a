"""ModuleStack: M copies in one vmapped pass equal a Python loop over M separate modules."""

from __future__ import annotations

import copy
from typing import List, Sequence

import pytest
import torch
from torch import nn

from ugodit_pl.nets import ModuleStack, SkipNet, UNet, reinit_decoder_

M = 4
SMALL_UNET = dict(channels=(8, 16, 32, 32), seed=0)
SMALL_SKIP = dict(channels_down=(8, 8, 8), channels_up=(8, 8, 8), channels_skip=(2, 2, 2), seed=0)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5, scale: float = 0.0) -> None:
    """max |actual - expected| <= tol * max(1, scale, max |expected|): float32 rounding grows with the magnitude.

    ``scale`` covers gradients that are zero in exact arithmetic (conv biases feeding a BatchNorm):
    in float32 they are rounding noise of sums whose terms are as large as the module's other gradients.
    """
    actual, expected = actual.detach(), expected.detach()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, scale, float(expected.abs().max()))
    error = float((actual - expected).abs().max())
    assert error <= tol * scale, f"max abs error {error:.3g} > {tol:g} x {scale:.3g}"


def _stacked(stack: ModuleStack, name: str) -> torch.Tensor:
    return getattr(stack, name.replace(".", "__"))


def _features(net: nn.Module, count: int, size: int, seed: int):
    with torch.no_grad():
        return net.encoder(_randn(count, net.config["in_channels"], size, size, seed=seed))


def _leaf(t):
    return None if t is None else t.detach().clone().requires_grad_(True)


def _compare_with_loop(stack: ModuleStack, loop: Sequence[nn.Module], inputs: tuple, indices: List[int],
                       pass_indices: bool = False) -> None:
    """Outputs, parameter gradients, input gradients and running buffers of stack vs loop.

    ``indices`` are passed to the stack unless they are all copies in order (and ``pass_indices`` is False).
    """
    batched = [[_leaf(t) for t in arg] if isinstance(arg, (list, tuple)) else _leaf(arg) for arg in inputs]
    everyone = indices == list(range(stack.num)) and not pass_indices
    kwargs = {} if everyone else {"indices": torch.tensor(indices)}
    before = {k: v.clone() for k, v in stack.named_buffers()}
    out = stack(*batched, **kwargs)
    probe = _randn(*out.shape, seed=99)
    (out * probe).sum().backward()
    for row, i in enumerate(indices):
        single_inputs = [
            [None if t is None else t[row : row + 1].detach().clone().requires_grad_(True) for t in arg]
            if isinstance(arg, (list, tuple))
            else arg[row : row + 1].detach().clone().requires_grad_(True)
            for arg in inputs
        ]
        single_out = loop[i](*single_inputs)
        assert_close_scaled(out[row : row + 1], single_out)
        (single_out * probe[row : row + 1]).sum().backward()
        flat_b = [t for a in batched for t in (a if isinstance(a, list) else [a]) if t is not None]
        flat_s = [t for a in single_inputs for t in (a if isinstance(a, list) else [a]) if t is not None]
        for tb, ts in zip(flat_b, flat_s):
            assert_close_scaled(tb.grad[row : row + 1], ts.grad)
        grad_scale = max(float(p.grad.abs().max()) for p in loop[i].parameters())
        for name, p in loop[i].named_parameters():
            assert_close_scaled(_stacked(stack, name).grad[i], p.grad, scale=grad_scale)
        for name, b in loop[i].named_buffers():
            if b.is_floating_point():
                torch.testing.assert_close(_stacked(stack, name)[i], b, atol=1e-6, rtol=1e-5)
            else:
                assert torch.equal(_stacked(stack, name)[i], b)
    for i in set(range(stack.num)) - set(indices):  # copies that did not run: no gradient, same buffers
        for name, p in loop[i].named_parameters():
            assert torch.all(_stacked(stack, name).grad[i] == 0)
        for name, _ in loop[i].named_buffers():
            key = name.replace(".", "__")
            assert torch.equal(_stacked(stack, name)[i], before[key][i])


def _decoder_setup(network: str):
    net = UNet(**SMALL_UNET) if network == "unet" else SkipNet(**SMALL_SKIP)
    stack = ModuleStack(net.decoder, M, reinit=3)
    # an independent construction of the same M decoders: copy i re-initialised with seed 3 + i
    loop = [reinit_decoder_(copy.deepcopy(net.decoder), 3 + i) for i in range(M)]
    return net, stack, loop


@pytest.mark.parametrize("network", ["unet", "skip"])
@pytest.mark.parametrize("indices", [[0, 1, 2, 3], [2, 0], [3]])
def test_decoder_stack_equals_loop_in_training(network, indices):
    net, stack, loop = _decoder_setup(network)
    deepest, skips = _features(net, len(indices), 16, seed=1)
    _compare_with_loop(stack, loop, (deepest, list(skips)), indices)
    # a second step goes on from the updated running statistics in the same way
    for p in list(stack.parameters()) + [p for m in loop for p in m.parameters()]:
        p.grad = None
    deepest, skips = _features(net, len(indices), 16, seed=2)
    _compare_with_loop(stack, loop, (deepest, list(skips)), indices)


@pytest.mark.parametrize("network", ["unet", "skip"])
def test_decoder_stack_equals_loop_in_eval(network):
    net, stack, loop = _decoder_setup(network)
    deepest, skips = _features(net, M, 16, seed=3)
    stack(deepest, skips)  # one training step so that the running statistics differ per copy
    for i, dec in enumerate(loop):
        dec(deepest[i : i + 1], [s[i : i + 1] for s in skips])
    stack.eval()
    for dec in loop:
        dec.eval()
    assert not stack.template.training
    stack.zero_grad()
    _compare_with_loop(stack, loop, (deepest, list(skips)), list(range(M)))


def test_full_network_stack_equals_loop():
    net = UNet(**SMALL_UNET)
    stack = ModuleStack(net, M, reinit=7)
    loop = [reinit_decoder_(copy.deepcopy(net), 7 + i) for i in range(M)]
    _compare_with_loop(stack, loop, (_randn(M, 2, 16, 16, seed=4),), list(range(M)))


@pytest.mark.parametrize("pass_indices", [False, True])
def test_a_stack_of_one_equals_its_module_over_two_steps(pass_indices):
    # the one-copy path runs on views of the stacked tensors (no vmap): gradients and running
    # statistics must reach the stack as they reach the module
    net = UNet(**SMALL_UNET)
    stack = ModuleStack(net, 1, reinit=5)
    loop = [reinit_decoder_(copy.deepcopy(net), 5)]
    for seed in (4, 5):
        for p in list(stack.parameters()) + list(loop[0].parameters()):
            p.grad = None
        _compare_with_loop(stack, loop, (_randn(1, 2, 16, 16, seed=seed),), [0], pass_indices)


def test_the_template_holds_no_weights_after_a_call_even_a_failing_one():
    stack = ModuleStack(UNet(**SMALL_UNET), 2, reinit=0)
    stack(_randn(2, 2, 16, 16))
    with pytest.raises(RuntimeError):
        stack(_randn(2, 3, 16, 16))  # 3 channels where the network takes 2: fails inside the network
    tensors = list(stack.template.parameters()) + list(stack.template.buffers())
    assert tensors and all(t.device.type == "meta" for t in tensors)


def test_stack_with_missing_skip_passes_none_through():
    net = SkipNet(channels_down=(4, 4), channels_up=(4, 4), channels_skip=(0, 2), seed=0)
    stack = ModuleStack(net.encoder, 2, reinit=0)
    deepest, skips = stack(_randn(2, 3, 16, 16, seed=5))
    assert skips[0] is None and skips[1].shape == (2, 2, 8, 8)
    decoders = ModuleStack(net.decoder, 2, reinit=1)
    loop = [reinit_decoder_(copy.deepcopy(net.decoder), 1 + i) for i in range(2)]
    _compare_with_loop(decoders, loop, (deepest.detach(), [None, skips[1].detach()]), [0, 1])


def test_parameters_are_exactly_the_stacked_tensors():
    net = UNet(**SMALL_UNET)
    stack = ModuleStack(net.decoder, M)
    count = sum(p.numel() for p in net.decoder.parameters())
    assert sum(p.numel() for p in stack.parameters()) == M * count
    assert len(list(stack.parameters())) == len(list(net.decoder.parameters()))
    assert all(p.shape[0] == M for p in stack.parameters())
    assert list(stack.children()) == []  # the template is not a registered submodule
    assert all(p.is_meta for p in stack.template.parameters())
    # reinit=None: every copy starts with the module's weights
    for name, p in net.decoder.named_parameters():
        assert all(torch.equal(_stacked(stack, name)[i], p.detach()) for i in range(M))


def test_reinit_determinism_and_distinct_copies():
    dec = SkipNet(**SMALL_SKIP).decoder
    a, b = ModuleStack(dec, 3, reinit=11), ModuleStack(dec, 3, reinit=11)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    w = a.outc__weight
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    assert not torch.equal(ModuleStack(dec, 3, reinit=12).outc__weight, w)
    calls = []
    ModuleStack(dec, 2, reinit=lambda module, i: calls.append(i))
    assert calls == [0, 1]


def test_module_at_load_module_at_and_from_modules():
    net = UNet(**SMALL_UNET)
    stack = ModuleStack(net.decoder, 3, reinit=0)
    stack.train(False)
    one = stack.module_at(1)
    assert isinstance(one, type(net.decoder)) and not one.training
    for name, t in one.state_dict().items():
        assert torch.equal(t, _stacked(stack, name)[1])
        assert not t.is_meta
    fresh = reinit_decoder_(copy.deepcopy(net.decoder), 42)
    stack.load_module_at(2, fresh.state_dict())
    for name, t in fresh.state_dict().items():
        assert torch.equal(_stacked(stack, name)[2], t)
        assert torch.equal(_stacked(stack, name)[1], one.state_dict()[name])  # other copies untouched
    rebuilt = ModuleStack.from_modules([stack.module_at(i) for i in range(3)])
    for (ka, va), (kb, vb) in zip(rebuilt.state_dict().items(), stack.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    with pytest.raises(KeyError, match="missing keys"):
        stack.load_module_at(0, {"outc.weight": fresh.outc.weight})
    with pytest.raises(IndexError):
        stack.module_at(3)
    with pytest.raises(ValueError, match="differs"):
        ModuleStack.from_modules([net.decoder, UNet(channels=(8, 16, 32, 64)).decoder])


def test_state_dict_round_trip_and_input_checks():
    net = UNet(**SMALL_UNET)
    stack = ModuleStack(net.decoder, M, reinit=0)
    other = ModuleStack(net.decoder, M)
    other.load_state_dict(stack.state_dict())
    deepest, skips = _features(net, M, 16, seed=6)
    stack.eval(), other.eval()
    torch.testing.assert_close(other(deepest, skips), stack(deepest, skips))
    with pytest.raises(ValueError, match="leading dimension 4"):
        stack(deepest[:3], skips)
    with pytest.raises(ValueError, match="leading dimension 2"):
        stack(deepest, skips, indices=torch.tensor([0, 1]))
    with pytest.raises(IndexError, match="indices must lie"):
        stack(deepest[:1], [s[:1] for s in skips], indices=torch.tensor([4]))
    with pytest.raises(ValueError, match="distinct"):
        stack(deepest[:2], [s[:2] for s in skips], indices=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="num must be a whole number >= 1"):
        ModuleStack(net.decoder, 0)


@pytest.mark.parametrize("in_dims", [(0, 0), (None, 0), (0, None)])
def test_stackable_conv_vmap_rule_equals_separate_convolutions(in_dims):
    import torch.nn.functional as F

    from ugodit_pl.nets.stack import StackableConv2d

    conv = StackableConv2d(10, 6, 3, stride=2, padding=1)  # 10 channels: the channels-last grouped rule
    x = _randn(M, 2, 10, 9, 11, seed=20).requires_grad_(True)
    w = _randn(M, 6, 10, 3, 3, seed=21).requires_grad_(True)
    b = _randn(M, 6, seed=22)
    xs = x if in_dims[0] == 0 else x[0]
    ws = w if in_dims[1] == 0 else w[0]

    def run(xi, wi, bi):
        return torch.func.functional_call(conv, {"weight": wi, "bias": bi}, (xi,))

    out = torch.func.vmap(run, in_dims=in_dims + (0,))(xs, ws, b)
    probe = _randn(*out.shape, seed=23)
    gx, gw = torch.autograd.grad((out * probe).sum(), (x, w))
    x2, w2 = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    ref = torch.stack(
        [
            F.conv2d(x2[m if in_dims[0] == 0 else 0], w2[m if in_dims[1] == 0 else 0], b[m], stride=2, padding=1)
            for m in range(M)
        ]
    )
    rx, rw = torch.autograd.grad((ref * probe).sum(), (x2, w2))
    assert_close_scaled(out, ref)
    assert_close_scaled(gx, rx)
    assert_close_scaled(gw, rw)
    # outside vmap it is nn.Conv2d, and the op itself is differentiable
    plain = x[0].detach().requires_grad_(True)
    torch.testing.assert_close(conv(plain), F.conv2d(plain, conv.weight, conv.bias, stride=2, padding=1))
    op_out = torch.ops.ugodit_pl.stacked_conv2d(plain, w[0], [2, 2], [1, 1], [1, 1])
    (g,) = torch.autograd.grad(op_out.sum(), plain)
    (g_ref,) = torch.autograd.grad(F.conv2d(plain, w[0], stride=2, padding=1).sum(), plain)
    assert_close_scaled(g, g_ref)


def test_stacked_conv_op_with_shared_weight_under_vmap():
    import torch.nn.functional as F

    import ugodit_pl.nets.stack  # noqa: F401  (registers the op)

    x = _randn(3, 2, 5, 8, 8, seed=24)
    w = _randn(4, 5, 3, 3, seed=25)
    out = torch.func.vmap(lambda xi: torch.ops.ugodit_pl.stacked_conv2d(xi, w, [1, 1], [1, 1], [1, 1]))(x)
    assert_close_scaled(out, torch.stack([F.conv2d(xi, w, padding=1) for xi in x]))
