"""Random draws per measurement: a row's draws depend only on (seed, purpose, row, step).

Every random draw of a fit (DIP's noise input and its per-step perturbation, Self-Guided DIP's eta)
comes from a generator seeded from the method's seed, the purpose of the draw, the measurement's
position in the set and the row's step count. So a measurement's result does not depend on the
other measurements fitted beside it, on how the set is split over processes, or on whether the fit
was interrupted and resumed (the step count is part of the checkpoint).

>>> a = row_random("normal", 1.0, seed=0, purpose=PERTURBATION, rows=[0, 1], shape=(1, 2, 2), steps=[5, 5])
>>> b = row_random("normal", 1.0, seed=0, purpose=PERTURBATION, rows=[1], shape=(1, 2, 2), steps=[5])
>>> torch.equal(a[1], b[0])
True
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import torch

#: Purposes of the draws (each its own stream).
NOISE_INPUT, PERTURBATION, SELF_GUIDANCE = "noise_input", "perturbation", "self_guidance"


def row_seed(seed: int, purpose: str, row: int, step: int = 0) -> int:
    """A 63-bit seed for one row's draw; different for every (seed, purpose, row, step).

    >>> row_seed(0, NOISE_INPUT, 1) != row_seed(0, NOISE_INPUT, 2)
    True
    """
    digest = hashlib.blake2b(f"{seed}/{purpose}/{row}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def row_random(
    kind: str,
    scale: float,
    seed: int,
    purpose: str,
    rows: Sequence[int],
    shape: Sequence[int],
    steps: Optional[Sequence[int]] = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """float32 draws of ``(len(rows), *shape)``: ``kind="normal"`` N(0, scale^2), ``"uniform"`` U(0, scale).

    Row k comes from ``row_seed(seed, purpose, rows[k], steps[k])`` (step 0 when ``steps`` is None).
    """
    if kind not in ("normal", "uniform"):
        raise ValueError(f"kind must be 'normal' or 'uniform', got {kind!r}")
    device = torch.device(device)
    out = torch.empty((len(rows), *shape), device=device, dtype=torch.float32)
    for k, row in enumerate(rows):
        step = 0 if steps is None else int(steps[k])
        generator = torch.Generator(device=device).manual_seed(row_seed(seed, purpose, int(row), step))
        if kind == "normal":
            out[k].normal_(0.0, scale, generator=generator)
        else:
            out[k].uniform_(0.0, scale, generator=generator)
    return out
