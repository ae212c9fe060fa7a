"""Seeded re-initialisation of a (decoder) network, as UGoDIT does before each test-time fit.

Convolutions, transposed convolutions and linear layers get weights ~ N(0, std^2) and zero biases;
batch-norm layers get weights ~ N(1, std^2), zero biases and reset running statistics (std = 0.02,
the ``init_weights(..., 'normal', 0.02)`` of the official code).

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
>>> a = reinit_decoder_(net, seed=1)[0].weight.clone()
>>> torch.equal(a, reinit_decoder_(net, seed=1)[0].weight)
True
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

__all__ = ["reinit_decoder_", "seeded", "zero_output_layer_"]


def _normal_(tensor: torch.Tensor, mean: float, std: float, generator: torch.Generator) -> None:
    """Fill ``tensor`` in place with N(mean, std^2) drawn on the generator's device (then copied)."""
    values = torch.empty(tensor.shape, dtype=torch.float32, device=generator.device)
    values.normal_(mean, std, generator=generator)
    tensor.copy_(values)


def reinit_decoder_(
    module: nn.Module, seed: Union[int, torch.Generator] = 0, *, std: float = 0.02
) -> nn.Module:
    """Re-initialise ``module`` in place and return it; deterministic given ``seed``.

    Args:
        module: any network (its submodules are visited in ``module.modules()`` order).
        seed: an int (a fresh CPU ``torch.Generator`` seeded with it) or a ``torch.Generator``
            (consumed in place). Draws are made on the generator's device and copied to the
            parameters, so the same seed gives the same weights on every device.
        std: standard deviation of the weight draws.

    >>> from torch import nn
    >>> bn = reinit_decoder_(nn.BatchNorm2d(3), seed=0)
    >>> bool((bn.bias == 0).all()) and bool((bn.running_var == 1).all())
    True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"reinit_decoder_: module must be an nn.Module, got {type(module).__name__}")
    if isinstance(seed, torch.Generator):
        generator = seed
    elif isinstance(seed, int) and not isinstance(seed, bool):
        generator = torch.Generator().manual_seed(seed)
    else:
        raise TypeError(f"reinit_decoder_: seed must be an int or a torch.Generator, got {seed!r}")
    if std < 0:
        raise ValueError(f"reinit_decoder_: std must be >= 0, got {std}")
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, (_ConvNd, nn.Linear)):
                _normal_(sub.weight, 0.0, std, generator)
                if sub.bias is not None:
                    sub.bias.zero_()
            elif isinstance(sub, _BatchNorm):
                if sub.affine:
                    _normal_(sub.weight, 1.0, std, generator)
                    sub.bias.zero_()
                sub.reset_running_stats()
    return module


def zero_output_layer_(module: nn.Module) -> nn.Module:
    """Zero the output convolution (``outc``) of a decoder, or of a network's ``.decoder``, in place.

    A residual network f(z) = z + g(z) then starts as the identity: it returns its input until the
    first steps have trained g (the methods' ``residual=True``).

    >>> from ugodit_pl.nets import UNet
    >>> net = zero_output_layer_(UNet(channels=(4, 8, 8)))
    >>> float(net(torch.randn(1, 2, 16, 16)).abs().max())
    0.0
    """
    decoder = getattr(module, "decoder", module)
    output = getattr(decoder, "outc", None)
    if not isinstance(output, _ConvNd):
        raise TypeError(f"zero_output_layer_: {type(module).__name__} has no output convolution 'outc'")
    with torch.no_grad():
        output.weight.zero_()
        if output.bias is not None:
            output.bias.zero_()
    return module


@contextlib.contextmanager
def seeded(seed: Optional[int]) -> Iterator[None]:
    """Run a block (e.g. building a network) with the CPU RNG seeded, leaving the global RNG as it was.

    PyTorch layers draw their default initial weights from the global CPU generator; this context
    forks that generator (``torch.random.fork_rng``), seeds the fork and restores the global state on
    exit, so a network's initial weights depend only on ``seed``. ``seed=None`` does nothing.

    >>> from torch import nn
    >>> with seeded(3):
    ...     a = nn.Linear(2, 2).weight
    >>> with seeded(3):
    ...     b = nn.Linear(2, 2).weight
    >>> torch.equal(a, b)
    True
    """
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
