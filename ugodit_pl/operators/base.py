"""The forward-operator interface shared by every task.

An operator is a ``torch.nn.Module`` that holds its state (masks, coil maps, kernels) in buffers,
so ``.to(device)`` moves it and Lightning moves it with a batch. It is batched over the leading
dimension B: sample b of ``x`` is measured with sample b of the operator's state (state with a
leading dimension of 1 is shared by the whole batch).

- ``forward(x)``: the measurement model A(x); ``x`` is what a network outputs
  ((B, 2, H, W) real/imaginary channels for MRI, (B, C, H, W) in [0, 1] for natural images).
- ``adjoint(y)``: A^H(y), for linear operators, in the same layout as ``x``.
- ``init_input(y)``: the network input a method starts from (A^H y, or the upsampled / degraded
  image), in the layout of ``x``.
- ``stack(operators)``: one batched operator from per-sample ones (the data loaders' collate).
- ``image_support()``: where the measurements see the image (MRI: inside the coil maps), or None.
- ``data_consistent(x, y)`` (MRI, inpainting): the image whose measurements are y where measured
  and A(x) elsewhere, the "data_consistent" input update of the methods.

These methods take tensors in whatever floating-point precision they come (a network under
``precision="bf16-mixed"`` returns bfloat16) and compute in at least float32, with autocast off:
half-precision inputs are converted first (``float32_compute``, applied to every subclass).

>>> import torch
>>> from ugodit_pl.operators import Inpainting
>>> op = Inpainting.random(shape=(1, 3, 8, 8), drop_probability=0.5, seed=0)
>>> y = op(torch.rand(1, 3, 8, 8))
>>> op.adjoint(y).shape
torch.Size([1, 3, 8, 8])
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch
from torch import nn

#: The methods of an operator that take images or measurements (see ``float32_compute``).
COMPUTING_METHODS = ("forward", "adjoint", "init_input", "data_consistent", "normal")
_HALF = (torch.float16, torch.bfloat16)


def float32_compute(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run an operator method in at least float32: half-precision tensor arguments are converted to
    float32 and autocast is disabled inside, so A(x) is never computed in half precision.

    >>> from ugodit_pl.operators import Inpainting
    >>> op = Inpainting(torch.ones(1, 1, 2, 2))
    >>> op(torch.ones(1, 1, 2, 2, dtype=torch.bfloat16)).dtype
    torch.float32
    """

    @functools.wraps(method)
    def wrapper(self: "Operator", *args: Any, **kwargs: Any) -> Any:
        args = tuple(a.float() if isinstance(a, torch.Tensor) and a.dtype in _HALF else a for a in args)
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return method(self, *args, **kwargs)

    wrapper.float32_compute = True  # type: ignore[attr-defined]
    return wrapper


class Operator(nn.Module):
    """Base class of forward models y = A(x). Subclasses set ``linear`` and implement the methods.

    ``linear`` tells whether the operator has an adjoint (the adjointness test discovers the linear
    operators by it).
    """

    linear: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in COMPUTING_METHODS:
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "float32_compute", False):
                setattr(cls, name, float32_compute(method))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^H(y). Non-linear operators have none and raise."""
        raise NotImplementedError(f"{type(self).__name__} is not linear and has no adjoint")

    def init_input(self, y: torch.Tensor) -> torch.Tensor:
        """The network input a method starts from; A^H(y) unless a subclass knows better."""
        return self.adjoint(y)

    def image_support(self) -> torch.Tensor | None:
        """(B|1, 1, H, W) mask of the pixels the measurements see, or None when they see all of them."""
        return None

    @property
    def samples_per_pixel(self) -> int:
        """How many measured values share one position (the coils of multi-coil MRI; 1 otherwise).

        The methods' ``"mse"`` data term is multiplied by it: a sum over the coils and a mean over the
        positions, so that its weight against the image-domain terms does not depend on the coil count.
        """
        return 1

    @classmethod
    def stack(cls, operators: Sequence["Operator"]) -> "Operator":
        """Concatenate per-sample operators of this class along the batch dimension."""
        raise NotImplementedError(f"{cls.__name__} cannot be stacked")

    def select(self, index: torch.Tensor | Sequence[int]) -> "Operator":
        """The operator of the samples ``index`` (state with batch dimension 1 is kept shared)."""
        raise NotImplementedError(f"{type(self).__name__} cannot select samples")

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={tuple(buf.shape)}" for name, buf in self.named_buffers(recurse=False))


def batch_size_of(*tensors: torch.Tensor) -> int:
    """The common batch size of state tensors whose leading dimension is B or 1."""
    sizes = {t.shape[0] for t in tensors if t.shape[0] != 1}
    if len(sizes) > 1:
        raise ValueError(f"operator state has inconsistent batch sizes {sorted(sizes)}")
    return sizes.pop() if sizes else 1
