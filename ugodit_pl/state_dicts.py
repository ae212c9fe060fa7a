"""Loading weights into a module with an error that says what does not fit.

>>> from torch import nn
>>> load_state_strict(nn.Linear(2, 2), {"weight": torch.zeros(3, 2)}, "'w.pt'")
Traceback (most recent call last):
...
ValueError: the weights in 'w.pt' do not fit Linear: 1 missing keys ['bias'], 0 unexpected keys [], 1 shape mismatches (file vs module) ['weight: (3, 2) vs (2, 2)']
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str = "") -> None:
    """``module.load_state_dict(state)``, or a ValueError naming (up to five of) the missing, unexpected and
    mis-shaped keys of ``source`` (a file name, quoted) against ``what`` (default: the module's class)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise ValueError(
            f"the weights in {source} do not fit {what or type(module).__name__}: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}, {len(shapes)} shape mismatches "
            f"(file vs module) {shapes[:5]}"
        )
    module.load_state_dict(state, strict=True)
