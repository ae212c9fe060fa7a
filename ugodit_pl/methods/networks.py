"""Building the networks of a method from a name and arguments, seeded.

``network_init`` chooses the initial weights: ``"default"`` (PyTorch's layer defaults, drawn from the
seed) or ``"normal"`` (the authors' notebooks: every convolution N(0, 0.02) with zero bias, every
BatchNorm weight N(1, 0.02), applied to the whole network before fitting). ``network_seeds`` chooses
whether the measurements' networks start alike (``"shared"``: a measurement fitted in a batch gets what
it gets alone) or each from its own draw (``"per_row"``: row i from ``row_seed(seed, "network", i)``, so
that K copies of one measurement are K different fits, an ensemble; ``ugodit_pl.methods.ensemble``).

>>> nets = per_measurement_networks("unet", {"channels": [4, 8, 8, 8]}, num=2, seed=0)
>>> nets.num
2
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from torch import nn

from ugodit_pl.arguments import check_choice
from ugodit_pl.methods.draws import row_seed
from ugodit_pl.nets import ModuleStack, build_network, reinit_decoder_, zero_output_layer_
from ugodit_pl.nets.init import seeded

NETWORK_INITS = ("default", "normal")
NETWORK_SEEDS = ("shared", "per_row")
NETWORK = "network"  # the purpose of per-row network draws (``draws.row_seed``)


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
    name: str, args: Dict[str, Any], num: int, seed: int, network_init: str = "default", residual: bool = False,
    network_seeds: str = "shared",
) -> ModuleStack:
    """``num`` independent copies of one seeded network, evaluated in one batched pass.

    With ``network_seeds="shared"`` every copy starts from the same weights, so a measurement fitted in a
    batch of B gets the result it gets when fitted alone with the same seed; with ``"per_row"`` copy i
    starts from its own draw (see the module).
    """
    return stack_of_networks(lambda s: seeded_network(name, args, s, network_init, residual), num, seed, network_seeds)


def stack_of_networks(draw: Callable[[int], nn.Module], num: int, seed: int, network_seeds: str = "shared") -> ModuleStack:
    """A ``ModuleStack`` of ``num`` networks ``draw(seed)`` (``"shared"``), or ``draw(row_seed(seed, "network",
    i))`` for copy i (``"per_row"``).

    >>> import torch
    >>> stack = stack_of_networks(lambda s: seeded_network("unet", {"channels": [4, 8]}, s), 2, 0, "per_row")
    >>> first, second = (stack.module_at(i).state_dict()["encoder.inc.conv1.weight"] for i in (0, 1))
    >>> bool(torch.equal(first, second))
    False
    """
    check_choice("network_seeds", network_seeds, NETWORK_SEEDS)
    if network_seeds == "shared":
        return ModuleStack(draw(seed), num)
    return ModuleStack(draw(seed), num,
                       reinit=lambda copy, i: copy.load_state_dict(draw(row_seed(seed, NETWORK, i)).state_dict()))
