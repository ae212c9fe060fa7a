"""Cartesian MRI forward models: multi-coil SENSE and single-coil, with the centred orthonormal FFT.

A(x) = M F S x: the image x (B, 2, H, W) (real, imaginary channels) is multiplied by the coil
sensitivities S, Fourier transformed per coil (``ugodit_pl.complex.fft2c``) and masked by M.
A^H(y) = S^H F^H M y, returned as (B, 2, H, W); it is the adjoint for the real inner product,
Re<A x, y> = <x, A^H y>.

>>> import torch
>>> mask = torch.zeros(16, 16); mask[:, ::2] = 1
>>> maps = torch.randn(1, 4, 16, 16, dtype=torch.complex64)
>>> op = MultiCoilMRI(mask, maps)
>>> y = op(torch.randn(2, 2, 16, 16))
>>> y.shape, y.dtype, op.adjoint(y).shape
(torch.Size([2, 4, 16, 16]), torch.complex64, torch.Size([2, 2, 16, 16]))
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ugodit_pl.complex import channels_to_complex, complex_to_channels, fft2c, ifft2c
from ugodit_pl.operators.base import Operator, batch_size_of


class MultiCoilMRI(Operator):
    """SENSE model y_c = M F (s_c x) for coils c.

    Args:
        mask: sampling mask (H, W) or (B|1, H, W), bool or float in [0, 1]; stored as float32.
        coil_maps: sensitivities (B|1, coils, H, W) or (coils, H, W), complex; stored as complex64.

    State with batch size 1 is shared by every sample of a batch.

    >>> import torch
    >>> op = MultiCoilMRI(torch.ones(8, 8), torch.ones(2, 8, 8, dtype=torch.complex64) / 2**0.5)
    >>> x = torch.randn(1, 2, 8, 8)
    >>> torch.allclose(op.normal(x), x, atol=1e-6)  # orthonormal FFT, sum_c |s_c|^2 = 1
    True
    """

    mask: torch.Tensor
    coil_maps: torch.Tensor

    def __init__(self, mask: torch.Tensor, coil_maps: torch.Tensor) -> None:
        super().__init__()
        coil_maps = _as_coil_maps(coil_maps)
        mask = _as_mask(mask, device=coil_maps.device)
        if mask.shape[-2:] != coil_maps.shape[-2:]:
            raise ValueError(
                f"mask has spatial shape {tuple(mask.shape[-2:])} but coil_maps have "
                f"{tuple(coil_maps.shape[-2:])}; they must agree"
            )
        batch_size_of(mask, coil_maps)  # raises on inconsistent batch sizes
        self.register_buffer("mask", mask)
        self.register_buffer("coil_maps", coil_maps)

    @classmethod
    def _from_state(cls, mask: torch.Tensor, coil_maps: torch.Tensor) -> "MultiCoilMRI":
        """An operator of this class from already-batched state (used by ``stack`` and ``select``)."""
        operator = cls.__new__(cls)
        MultiCoilMRI.__init__(operator, mask, coil_maps)
        return operator

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W)."""
        return tuple(self.mask.shape[-2:])  # type: ignore[return-value]

    @property
    def num_coils(self) -> int:
        return self.coil_maps.shape[1]

    @property
    def batch_size(self) -> int:
        """The batch size of the state (1 when shared by any batch)."""
        return batch_size_of(self.mask, self.coil_maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2, H, W) real/imaginary image -> (B, coils, H, W) complex k-space."""
        self._check_batch(x, "x", expect_channels=2)
        image = channels_to_complex(x).unsqueeze(1)
        return fft2c(self.coil_maps * image) * self.mask.unsqueeze(1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """(B, coils, H, W) complex k-space -> (B, 2, H, W) real/imaginary image."""
        if not y.is_complex():
            raise ValueError(f"y must be complex k-space (B, coils, H, W), got dtype {y.dtype}")
        self._check_batch(y, "y", expect_channels=self.num_coils)
        coil_images = ifft2c(y * self.mask.unsqueeze(1))
        return complex_to_channels((self.coil_maps.conj() * coil_images).sum(dim=1))

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^H A x, (B, 2, H, W) -> (B, 2, H, W)."""
        return self.adjoint(self.forward(x))

    @property
    def samples_per_pixel(self) -> int:
        """The number of coils: each k-space position is measured once per coil."""
        return self.num_coils

    def image_support(self) -> torch.Tensor:
        """(B|1, 1, H, W): 1 where some coil map is non-zero (ESPIRiT zeroes the maps outside the object)."""
        return (self.coil_maps.abs().sum(dim=1, keepdim=True) > 0).to(torch.float32)

    def data_consistent(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """S^H F^H((1 - P) F S x + P y): measured k-space replaces the predicted one where sampled.

        The input update of the authors' MRI notebooks; (B, 2, H, W) -> (B, 2, H, W).
        """
        self._check_batch(x, "x", expect_channels=2)
        self._check_batch(y, "y", expect_channels=self.num_coils)
        mask = self.mask.unsqueeze(1)
        predicted = fft2c(self.coil_maps * channels_to_complex(x).unsqueeze(1))
        merged = (1 - mask) * predicted + mask * y
        return complex_to_channels((self.coil_maps.conj() * ifft2c(merged)).sum(dim=1))

    def _check_batch(self, tensor: torch.Tensor, name: str, expect_channels: int) -> None:
        height, width = self.image_shape
        if tensor.ndim != 4 or tensor.shape[1] != expect_channels or tuple(tensor.shape[-2:]) != (height, width):
            raise ValueError(
                f"{name} must have shape (B, {expect_channels}, {height}, {width}), got {tuple(tensor.shape)}"
            )
        state_batch = self.batch_size
        if state_batch != 1 and tensor.shape[0] != state_batch:
            raise ValueError(
                f"{name} has batch size {tensor.shape[0]} but the operator holds {state_batch} samples"
            )

    @classmethod
    def stack(cls, operators: Sequence[Operator]) -> "MultiCoilMRI":
        """Concatenate operators along B. State that every operator shares unchanged stays batch 1.

        >>> import torch
        >>> maps = torch.ones(1, 2, 8, 8, dtype=torch.complex64)
        >>> a, b = MultiCoilMRI(torch.ones(8, 8), maps), MultiCoilMRI(torch.zeros(2, 8, 8), maps)
        >>> s = MultiCoilMRI.stack([a, b])
        >>> tuple(s.mask.shape), tuple(s.coil_maps.shape)
        ((3, 8, 8), (1, 2, 8, 8))
        """
        operators = list(operators)
        if not operators:
            raise ValueError("stack needs at least one operator")
        for op in operators:
            if type(op) is not cls:
                raise TypeError(f"{cls.__name__}.stack got a {type(op).__name__}; all must be {cls.__name__}")
            if op.image_shape != operators[0].image_shape or op.num_coils != operators[0].num_coils:
                raise ValueError(
                    f"cannot stack operators of image shapes / coil counts "
                    f"{[(o.image_shape, o.num_coils) for o in operators]}"
                )
        sizes = [op.batch_size for op in operators]
        mask = _concat_state([op.mask for op in operators], sizes)
        maps = _concat_state([op.coil_maps for op in operators], sizes)
        return cls._from_state(mask, maps)

    def with_mask(self, mask: torch.Tensor) -> "MultiCoilMRI":
        """The same coils with another sampling mask (B|1, H, W), e.g. a subset of this one's samples.

        >>> import torch
        >>> op = SingleCoilMRI(torch.ones(4, 4))
        >>> op.with_mask(torch.zeros(1, 4, 4)).mask.sum().item()
        0.0
        """
        return type(self)._from_state(_as_mask(mask, device=self.coil_maps.device), self.coil_maps)

    def select(self, index: torch.Tensor | Sequence[int]) -> "MultiCoilMRI":
        """The operator of samples ``index`` (batch-1 state stays shared)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.mask.device).reshape(-1)
        batch = self.batch_size
        if batch != 1 and index.numel() and (index.min() < -batch or index.max() >= batch):
            raise IndexError(f"index {index.tolist()} out of range for an operator of {batch} samples")

        def pick(state: torch.Tensor) -> torch.Tensor:
            return state if state.shape[0] == 1 else state.index_select(0, index % batch)

        return type(self)._from_state(pick(self.mask), pick(self.coil_maps))


class SingleCoilMRI(MultiCoilMRI):
    """Single-coil model y = M F x: a :class:`MultiCoilMRI` with one all-ones coil; y is (B, 1, H, W).

    >>> import torch
    >>> op = SingleCoilMRI(torch.ones(8, 8))
    >>> x = torch.randn(3, 2, 8, 8)
    >>> op(x).shape, torch.allclose(op.adjoint(op(x)), x, atol=1e-6)
    (torch.Size([3, 1, 8, 8]), True)
    """

    def __init__(self, mask: torch.Tensor) -> None:
        mask = torch.as_tensor(mask)
        if mask.ndim not in (2, 3):
            raise ValueError(f"mask must be (H, W) or (B|1, H, W), got shape {tuple(mask.shape)}")
        ones = torch.ones((1, 1) + tuple(mask.shape[-2:]), dtype=torch.complex64, device=mask.device)
        super().__init__(mask, ones)


def _as_mask(mask: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    mask = torch.as_tensor(mask, device=device)
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise ValueError(f"mask must be (H, W) or (B|1, H, W), got shape {tuple(mask.shape)}")
    if mask.is_complex():
        raise ValueError("mask must be real (bool or float in [0, 1]), got a complex tensor")
    mask = mask.to(torch.float32)
    if mask.numel() and (mask.min() < 0 or mask.max() > 1):
        raise ValueError(f"mask values must lie in [0, 1], got range [{mask.min():.3g}, {mask.max():.3g}]")
    return mask.contiguous()


def _as_coil_maps(coil_maps: torch.Tensor | np.ndarray) -> torch.Tensor:
    coil_maps = torch.as_tensor(coil_maps)
    if coil_maps.ndim == 3:
        coil_maps = coil_maps.unsqueeze(0)
    if coil_maps.ndim != 4:
        raise ValueError(f"coil_maps must be (B|1, coils, H, W) or (coils, H, W), got shape {tuple(coil_maps.shape)}")
    if not coil_maps.is_complex():
        raise ValueError(f"coil_maps must be complex, got dtype {coil_maps.dtype}")
    return coil_maps.to(torch.complex64).contiguous()


def _concat_state(states: list[torch.Tensor], sizes: list[int]) -> torch.Tensor:
    """Concatenate per-operator state; keep it batch 1 when all operators share one identical tensor."""
    first = states[0]
    if all(s.shape[0] == 1 for s in states) and all(
        s is first or (s.device == first.device and torch.equal(s, first)) for s in states[1:]
    ):
        return first
    device = first.device
    return torch.cat([s.to(device).expand(n, *s.shape[1:]) for s, n in zip(states, sizes)], dim=0)
