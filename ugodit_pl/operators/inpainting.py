"""Inpainting: y = mask * x, with DPS's random-pixel and box masks (seeded).

DPS's inpainting configuration draws, for "random", a drop fraction from U(0.3, 0.7) per image and
then exactly that many pixels (all channels together); for "box", a 128 x 128 hole at a random
position at least 16 pixels from the border of a 256 x 256 image. Here the drop fraction is a fixed
argument, ``drop_probability=0.5`` by default, the mean of DPS's range, so that an experiment is
described by one number; the hole's position is drawn from ``seed``.

>>> import torch
>>> op = Inpainting.box((1, 3, 64, 64), box_size=32, margin=8, seed=0)
>>> x = torch.rand(1, 3, 64, 64)
>>> int((op(x) == 0).sum() // 3)  # zeros in the hole (an exact 0 elsewhere is improbable)
1024
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ugodit_pl.operators.base import Operator, batch_size_of

__all__ = ["Inpainting"]


def _parse_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """(batch, height, width) from (H, W), (C, H, W) or (B, C, H, W)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3, 4) or min(shape) < 1:
        raise ValueError(f"shape must be (H, W), (C, H, W) or (B, C, H, W) with positive sizes, got {shape}")
    batch = shape[0] if len(shape) == 4 else 1
    return batch, shape[-2], shape[-1]


class Inpainting(Operator):
    """y = mask * x; the adjoint is mask * y; ``init_input(y)`` is ``y`` (the masked image).

    ``mask`` is (H, W) or (B|1, 1|C, H, W), 1 where a pixel is observed and 0 where it is missing
    (bool or float; fractional values act as weights). It is kept in the float32 buffer ``mask`` of
    shape (B|1, 1|C, H, W); a leading 1 is shared by the batch, a channel 1 by all channels.

    >>> import torch
    >>> op = Inpainting.random((2, 3, 8, 8), drop_probability=0.25, seed=0)
    >>> op.mask.shape, [int(m.sum()) for m in op.mask]
    (torch.Size([2, 1, 8, 8]), [48, 48])
    """

    linear = True

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        mask = torch.as_tensor(mask)
        if mask.ndim == 2:
            mask = mask[None, None]
        if mask.ndim != 4 or mask.is_complex():
            raise ValueError(f"mask must be a real (H, W) or (B, C, H, W) tensor, got shape {tuple(mask.shape)}")
        mask = mask.to(torch.float32)
        if not torch.isfinite(mask).all():
            raise ValueError("mask has non-finite entries")
        self.register_buffer("mask", mask.contiguous())

    @classmethod
    def random(cls, shape: Sequence[int], drop_probability: float = 0.5, seed: int = 0) -> "Inpainting":
        """Random-pixel inpainting: exactly ``int(H * W * drop_probability)`` pixels missing per sample.

        The missing pixels are drawn without replacement, the same for every channel (as in DPS); a
        (B, C, H, W) ``shape`` gives B different masks drawn one after another from ``seed``.
        """
        if not 0.0 <= drop_probability <= 1.0:
            raise ValueError(f"drop_probability must be in [0, 1], got {drop_probability!r}")
        batch, height, width = _parse_shape(shape)
        rng = np.random.default_rng(seed)
        total = height * width
        count = int(total * drop_probability)
        mask = np.ones((batch, total), dtype=np.float32)
        for b in range(batch):
            mask[b, rng.choice(total, size=count, replace=False)] = 0.0
        return cls(torch.from_numpy(mask.reshape(batch, 1, height, width)))

    @classmethod
    def box(cls, shape: Sequence[int], box_size: int | Sequence[int] = 128, margin: int | Sequence[int] = 16,
            seed: int = 0) -> "Inpainting":
        """Box inpainting: a ``box_size`` hole whose top-left corner is uniform in the allowed range.

        The hole stays at least ``margin`` pixels from every border: its top row is drawn uniformly
        from ``margin .. H - margin - box_height`` (both ends included), its left column likewise.
        Defaults are DPS's (128 x 128 in a 256 x 256 image, margin 16).
        """
        batch, height, width = _parse_shape(shape)
        box_h, box_w = (box_size, box_size) if isinstance(box_size, int) else tuple(int(s) for s in box_size)
        margin_h, margin_w = (margin, margin) if isinstance(margin, int) else tuple(int(m) for m in margin)
        last_top, last_left = height - margin_h - box_h, width - margin_w - box_w
        if min(box_h, box_w) < 1 or min(margin_h, margin_w) < 0 or last_top < margin_h or last_left < margin_w:
            raise ValueError(
                f"a box of {box_h}x{box_w} with margin ({margin_h}, {margin_w}) "
                f"does not fit in a {height}x{width} image"
            )
        rng = np.random.default_rng(seed)
        mask = torch.ones(batch, 1, height, width)
        for b in range(batch):
            top = int(rng.integers(margin_h, last_top, endpoint=True))
            left = int(rng.integers(margin_w, last_left, endpoint=True))
            mask[b, :, top : top + box_h, left : left + box_w] = 0.0
        return cls(mask)

    def _check(self, t: torch.Tensor, name: str) -> None:
        if t.ndim != 4 or t.shape[-2:] != self.mask.shape[-2:]:
            height, width = self.mask.shape[-2:]
            raise ValueError(f"{name} must be (B, C, {height}, {width}), got {tuple(t.shape)}")
        if self.mask.shape[0] not in (1, t.shape[0]) or self.mask.shape[1] not in (1, t.shape[1]):
            raise ValueError(
                f"{name} of shape {tuple(t.shape)} does not match the mask of shape {tuple(self.mask.shape)}"
            )

    def _mask_for(self, t: torch.Tensor) -> torch.Tensor:
        return self.mask.to(dtype=t.real.dtype) if t.is_complex() else self.mask.to(dtype=t.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, "x")
        return self._mask_for(x) * x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, "y")
        return self._mask_for(y) * y

    def with_mask(self, mask: torch.Tensor) -> "Inpainting":
        """Inpainting with another mask, e.g. a subset of this one's observed pixels (held-out validation).

        >>> Inpainting(torch.ones(4, 4)).with_mask(torch.zeros(1, 1, 4, 4)).mask.sum().item()
        0.0
        """
        return type(self)(torch.as_tensor(mask).to(self.mask.device))

    def data_consistent(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(1 - m) x + m y: the observed pixels replace the predicted ones."""
        self._check(x, "x")
        mask = self._mask_for(x)
        return (1 - mask) * x + mask * y

    def init_input(self, y: torch.Tensor) -> torch.Tensor:
        """The masked image itself, the input the authors start inpainting from."""
        self._check(y, "y")
        return y

    @classmethod
    def stack(cls, operators: Sequence["Inpainting"]) -> "Inpainting":
        """One operator whose masks are those of ``operators``, one after another."""
        if not operators:
            raise ValueError("stack needs at least one operator")
        masks = [op.mask for op in operators]
        if len({m.shape[-2:] for m in masks}) != 1:
            sizes = sorted({tuple(m.shape[-2:]) for m in masks})
            raise ValueError(f"cannot stack masks of different image sizes {sizes}")
        channels = max(m.shape[1] for m in masks)
        if any(m.shape[1] not in (1, channels) for m in masks):
            raise ValueError(f"cannot stack masks with channel counts {sorted({m.shape[1] for m in masks})}")
        return cls(torch.cat([m.expand(-1, channels, -1, -1) for m in masks]))

    def select(self, index: torch.Tensor | Sequence[int]) -> "Inpainting":
        """The operator of the samples ``index`` (a shared mask stays shared)."""
        if self.mask.shape[0] == 1:
            return type(self)(self.mask)
        index = torch.as_tensor(index, dtype=torch.long, device=self.mask.device).reshape(-1)
        return type(self)(self.mask[index])

    @property
    def batch_size(self) -> int:
        return batch_size_of(self.mask)
