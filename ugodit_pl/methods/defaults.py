"""The methods' defaults that depend on the network: the one place where their values are stated.

An argument left at None takes its value here for the method's network (``"unet"``: MRI,
``"skip"``: natural images). Docstrings, the command line's help, the configs and the README refer
to these tables rather than repeat their numbers (``tests/test_documented_defaults.py`` checks the
configs, the help and the README against them). Imports nothing heavy, so ``ugodit --help`` can read it.

>>> network_default(SEQUENTIAL_DEFAULTS, "unet")["lam"]
0.4
>>> network_default(DEFAULT_TV_WEIGHT, "UNet")
0.002
>>> network_default(DEFAULT_LR, "vgg")
Traceback (most recent call last):
...
ValueError: no default for network 'vgg': the defaults know 'skip', 'unet'
"""

from __future__ import annotations

from typing import Any, Mapping

#: Adam learning rate of the network weights (DIP, reference-guided DIP, Self-Guided DIP): the
#: authors' values in their official code, by network.
DEFAULT_LR = {"skip": 0.01, "unet": 3e-4}

#: lambda and lr of the aSeqDIP objective (aSeqDIP, UGoDIT pre-training and fitting).
#: The skip net keeps the authors' lambda = 2 and lr 0.01 (their natural-image code, mean squared
#: errors). For the MRI U-Net the authors' lambda = 2 holds the output near A^H y; on the real brain
#: slice (4x, 600 steps) lambda 0.1 with lr 1e-3 gave UGoDIT 22.66 dB and aSeqDIP 21.35 dB against
#: 20.00 / 19.07 dB with lambda 2 and lr 3e-4 / 4e-4 (docs/RESULTS.md, transfer-study_settings), and
#: 0.03 or 1 were worse on the real-MRI panel. That 0.1 was measured with the data term averaged over
#: 8 coils; the data term is now summed over the coils (``ReconstructionMethod.data_term``), so the
#: same weight was 0.8. With the total-variation term (``DEFAULT_TV_WEIGHT``) regularising the output,
#: half of it, 0.4, fits faster on the real-phase panel: +0.16 to +0.18 / +0.05 to +0.13 dB (4x / 8x
#: means, two seeds) at width 16 and 600 steps, +0.10 / +0.04 dB at width 32 and 1500 steps, +0.02 /
#: +0.02 dB at 3000 steps (the same images, in half the steps), no problem lower by more than a fit's
#: round-off (docs/RESULTS.md decision 19).
SEQUENTIAL_DEFAULTS = {"unet": {"lam": 0.4, "lr": 1e-3}, "skip": {"lam": 2.0, "lr": 0.01}}

#: Self-Guided DIP's Adam learning rate of the input z. The authors' MRI notebook takes 0.1 (with
#: z from U(0, 1) noise); from A^H y (max about 1) Adam's first steps of 0.1 per pixel replace the
#: image by noise: on the real-MRI panel (4x, 600 steps, docs/RESULTS.md decisions) 1e-3 with the
#: residual U-Net gave +2.8 dB on the real brain over 0.1. On 4x super-resolution of FFHQ 00002
#: (``ugodit benchmark sr-quality --preset quick``) the skip net gave 15.65 dB with 0.1 and 27.48 dB
#: with 0.01 (docs/RESULTS.md).
DEFAULT_INPUT_LR = {"unet": 1e-3, "skip": 0.01}

#: Self-Guided DIP's alpha: the authors' 2 for the skip net (natural images, mean squared errors);
#: 0.5 for the MRI U-Net, whose data term is summed over the coils (2 weighs the self-guidance 4x
#: more than the data here and held the output near A^H y: panel sweep in docs/RESULTS.md decisions).
DEFAULT_ALPHA = {"unet": 0.5, "skip": 2.0}

#: Self-Guided DIP's J, the noisy copies of the input averaged per step: the paper's 4 for the skip
#: net; 1 for the MRI U-Net, where each step costs J forward and backward passes and Adam averages
#: the single draws over steps anyway. On the real-phase MRI panel (600 steps, docs/RESULTS.md
#: decision 11) J = 1 gave 23.63 / 21.82 dB (4x / 8x means) against 23.68 / 21.85 dB with J = 4, in
#: a quarter of the time: about aSeqDIP's time per step instead of 3.9x.
DEFAULT_NUM_DRAWS = {"unet": 1, "skip": 4}


#: The weight of the total-variation term added to the objective (``tv_weight``; ``ugodit_pl.methods.losses``),
#: by network. 0 is the papers' objectives. For the MRI U-Net 0.002 (about the lambda 1e-3 of L1
#: compressed sensing that held-out k-space picks on the panel). On the real-MRI panel it raised every
#: 4x problem at every width (16, 32, 64) and budget measured (+0.02 to +1.26 dB; the 4x mean +0.13 to
#: +0.68 dB) and both native-size problems at 8x (+0.6 dB), and lowered one problem, the 96x72 brain
#: crop at 8x (nine sampled columns; -0.15 to -0.45 dB), whose native 230x180 slice it raises
#: (docs/RESULTS.md decisions 11, 15 and 18). Not measured on natural images: 0 for the skip net.
DEFAULT_TV_WEIGHT = {"unet": 0.002, "skip": 0.0}


def default_residual(network: str, input_init: str) -> bool:
    """``residual=None``: f(z) = z + g(z) for the U-Net with an image input (see ``ReconstructionMethod``).

    >>> default_residual("unet", "measurement"), default_residual("unet", "noise"), default_residual("skip", "measurement")
    (True, False, False)
    """
    return network == "unet" and input_init != "noise"


def network_default(table: Mapping[str, Any], network: str) -> Any:
    """``table``'s entry for ``network`` (case-insensitive), or a ValueError naming the known networks."""
    key = str(network).lower()
    if key not in table:
        raise ValueError(f"no default for network {network!r}: the defaults know {', '.join(map(repr, sorted(table)))}")
    return table[key]
