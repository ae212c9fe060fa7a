"""The mean of a network's reconstruction and compressed sensing of the same measurement (``mean_with``).

With ``ReconstructionMethod(mean_with="l1_wavelet")`` the method's reconstruction is

    x = (x_net + x_cs) / 2,

where x_net is the network's reconstruction (the EMA with its measured samples put back, as without
the option) and x_cs the L1-wavelet (or total-variation) reconstruction of the same k-space and coil
maps, its lambda chosen without ground truth by ``ugodit_pl.lamda_rules.automatic_lamda`` (rule
``"auto"``: held-out k-space cross-validation, the discrepancy principle where nothing can be held out),
or given (``ReconstructionMethod(mean_lamda=...)``) or taken from a warm start's neighbour (``lamdas``), which
costs one solve instead of the search.

Why: on the real-phase MRI panel the network and compressed sensing err in different places, and
the mean of the two was above both on average: aSeqDIP at its defaults +0.67 / +0.25 dB over the
network alone (4x / 8x; five of six problems, the sixth -0.1 dB) and +0.38 / +0.24 dB over the
automatic-lambda L1; width 32 + TV +0.60 dB over that L1 at 4x. On two simulated volumes, warm-started
with the lambda carried, +1.1 dB over the networks alone and 0.6 to 1.1 dB over L1
(``benchmarks/results/decisions.md``, decisions 11 and 13). Averaged with total variation solved to its
minimiser instead (decision 23), aSeqDIP at width 32 and 1500 steps is +1.14 dB over the automatic L1 at 4x
and level with TV alone (+0.07 dB); its warm volume chains are 0.50 / 0.84 dB above the L1 mean. At native
size (decision 27) the mean at the defaults is 0.41 dB below TV alone at 4x and 0.26 dB above it at 8x. It is
not the papers' reconstruction, and the search over lambdas costs 12 to 60 s a slice of 96x72 to 144x112 on
one CPU core (L1-wavelet 12 to 27 s, total variation 28 to 60 s; decision 26), so it is an option, off by
default.

>>> import torch
>>> from ugodit_pl.operators import MultiCoilMRI
>>> mask = torch.zeros(32, 32); mask[:, 12:20] = 1; mask[:, ::2] = 1
>>> op = MultiCoilMRI(mask, torch.ones(1, 1, 32, 32, dtype=torch.complex64))
>>> y = op(torch.rand(1, 2, 32, 32))
>>> images, lamdas = classical_images(op, y, "l1_wavelet", lamdas=[1e-3])
>>> tuple(images.shape), lamdas
((1, 2, 32, 32), [0.001])
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from ugodit_pl.complex import complex_to_channels
from ugodit_pl.operators.base import Operator

#: What a reconstruction may be averaged with: compressed sensing with lambda chosen without the target.
MEAN_SOURCES = ("l1_wavelet", "total_variation")


def classical_images(operator: Operator, y: torch.Tensor, source: str, lamdas: Sequence[Optional[float]],
                     names: Optional[Sequence[Optional[str]]] = None) -> Tuple[torch.Tensor, List[float]]:
    """((B, 2, H, W) real images in y's units, the lambda of each row): ``source`` (:data:`MEAN_SOURCES`) of
    each row of the multi-coil k-space ``y`` (B, coils, H, W) with ``operator``'s mask and coil maps, at
    ``lamdas[k]`` where given, else at the lambda ``automatic_lamda`` chooses.

    Raises a ValueError naming the measurement (``names``) when ``operator`` is not a multi-coil MRI model.
    """
    from ugodit_pl import lamda_rules

    masks, maps = getattr(operator, "mask", None), getattr(operator, "coil_maps", None)
    if masks is None or maps is None or not y.is_complex():
        raise ValueError(f"mean_with={source!r} averages with compressed sensing of multi-coil k-space: it needs an "
                         f"MRI operator with a mask and coil maps; {', '.join(str(n) for n in names or []) or 'these'} "
                         f"measurements have {type(operator).__name__}")
    reconstruct = lamda_rules.RECONSTRUCTIONS[source]
    images, chosen = [], []
    for k in range(y.shape[0]):
        mask = masks[k if masks.shape[0] > 1 else 0]
        coil_maps = maps[k if maps.shape[0] > 1 else 0]
        kspace = y[k].detach()
        if lamdas[k] is None:
            image, lamda = lamda_rules.automatic_lamda(kspace, mask, coil_maps, method=source, rule="auto")[:2]
        else:
            lamda = float(lamdas[k])
            image = reconstruct(kspace, mask, coil_maps, lamda=lamda)
        images.append(complex_to_channels(image.to(y.device)[None])[0])
        chosen.append(float(lamda))
    return torch.stack(images), chosen
