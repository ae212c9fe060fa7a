"""Building the networks of a method from a name and arguments, seeded.

``network_init`` chooses the initial weights: ``"default"`` (PyTorch's layer defaults, drawn from the
seed) or ``"normal"`` (the authors' notebooks: every convolution N(0, 0.02) with zero bias, every
BatchNorm weight N(1, 0.02), applied to the whole network before fitting).

>>> nets = per_measurement_networks("unet", {"channels": [4, 8, 8, 8]}, num=2, seed=0)
>>> nets.num
2
"""

from __future__ import annotations

from typing import Any, Dict

from torch import nn

from ugodit_pl.arguments import check_choice
from ugodit_pl.nets import ModuleStack, build_network, reinit_decoder_, zero_output_layer_
from ugodit_pl.nets.init import seeded

NETWORK_INITS = ("default", "normal")


def seeded_network(name: str, args: Dict[str, Any], seed: int, network_init: str = "default",
                   residual: bool = False) -> nn.Module:
    """``build_network(name, **args)`` with its initial weights drawn from ``seed`` (see ``network_init``);
    with ``residual`` its output layer starts at zero (f(z) = z + g(z) starts as the identity)."""
    check_choice("network_init", network_init, NETWORK_INITS)
    with seeded(seed):
        net = build_network(name, **args)
    if network_init == "normal":
        reinit_decoder_(net, seed)
    return zero_output_layer_(net) if residual else net


def per_measurement_networks(
    name: str, args: Dict[str, Any], num: int, seed: int, network_init: str = "default", residual: bool = False
) -> ModuleStack:
    """``num`` independent copies of one seeded network, evaluated in one batched pass.

    Every copy starts from the same weights, so a measurement fitted in a batch of B gets the
    result it gets when fitted alone with the same seed.
    """
    return ModuleStack(seeded_network(name, args, seed, network_init, residual), num)
