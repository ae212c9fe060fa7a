"""The per-measurement state of a fit: inputs z, scales, EMA and last outputs, step counters.

A method fits a fixed set of N measurements (rows 0..N-1). :class:`FitState` holds everything a
fit keeps per row besides the network weights. It is a submodule of the method, so it moves with
``.to(device)``, converts with the precision plugin (``precision="64-true"``) and is part of
``state_dict()`` (checkpoints, ``DivergenceRollback`` snapshots).

- ``inputs`` (N, C_in, H, W): the network inputs z, in normalised units. A buffer, or an
  ``nn.Parameter`` when the method optimises them (Self-Guided DIP).
- ``scales`` (N,): s_i; row i fits y_i / s_i and its outputs are multiplied back by s_i.
- ``ema``, ``last`` (N, C, H, W): the moving average and the last of the outputs, normalised units.
- ``ema_count`` (N,): outputs averaged into ``ema`` so far (for the bias correction).
- ``projected`` (N, C, H, W): the reconstruction (EMA or last) with its measured samples put back,
  written only when the method's ``final_projection`` is on.
- ``classical`` (N, C, H, W) and ``classical_lamdas`` (N,): the compressed-sensing image the reconstruction
  is averaged with and its lambda, written in ``setup()`` only when the method's ``mean_with`` is set
  (``ugodit_pl.methods.classical_mean``).
- ``steps`` (N,): training steps each row has taken; the input-update and EMA schedules and the
  random draws of a row are functions of it, so they roll back with a snapshot (CPU, int64).
- ``names``: a readable name per row (e.g. ``file.h5/slice_017``).

The tensors are sized by :meth:`allocate` in the method's ``setup()`` from the data; before that they
have no rows. Loading a state dict of another size resizes them, so a fresh method loads any
checkpoint of its class. Under DDP every process holds all N rows: after each change a process
writes its own rows and :meth:`share` sums the row-masked copies over the processes (one
all-reduce), so a checkpoint written by rank 0 is complete.

>>> state = FitState()
>>> state.allocate(num_rows=2, input_shape=(2, 8, 8), output_shape=(2, 8, 8), dtype=torch.float32)
>>> tuple(state.inputs.shape), state.steps.tolist()
((2, 2, 8, 8), [0, 0])
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn

#: The tensors of the state that have one row per measurement and live on the module's device.
ROW_TENSORS = ("inputs", "scales", "ema", "ema_count", "last", "projected", "classical", "classical_lamdas")


class FitState(nn.Module):
    """Per-row state of a fit of N measurements (see the module docstring)."""

    inputs: torch.Tensor
    scales: torch.Tensor
    ema: torch.Tensor
    ema_count: torch.Tensor
    last: torch.Tensor
    projected: torch.Tensor
    classical: torch.Tensor
    classical_lamdas: torch.Tensor

    def __init__(self, trainable_inputs: bool = False) -> None:
        super().__init__()
        self.trainable_inputs = bool(trainable_inputs)
        empty = torch.zeros(0)
        if self.trainable_inputs:
            self.inputs = nn.Parameter(empty.clone())
        else:
            self.register_buffer("inputs", empty.clone())
        for name in ROW_TENSORS[1:]:
            self.register_buffer(name, empty.clone())
        self.steps = torch.zeros(0, dtype=torch.long)
        self.names: List[Optional[str]] = []
        self.owned: Optional[torch.Tensor] = None  # rows this process fits (set by the method), CPU bool
        self.fingerprints = torch.zeros(0, dtype=torch.float64)  # sum |y| per row, to notice a changed measurement

    # ----------------------------------------------------------------- sizing
    @property
    def num_rows(self) -> int:
        """N, the rows the state holds (0 before :meth:`allocate`)."""
        return int(self.scales.shape[0])

    @property
    def allocated(self) -> bool:
        return self.num_rows > 0

    def allocate(
        self,
        num_rows: int,
        input_shape: Sequence[int],
        output_shape: Sequence[int],
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        """Size every tensor for ``num_rows`` rows (zeros; scales 1; no steps taken)."""
        shapes = {
            "inputs": (num_rows, *input_shape),
            "scales": (num_rows,),
            "ema": (num_rows, *output_shape),
            "ema_count": (num_rows,),
            "last": (num_rows, *output_shape),
            "projected": (num_rows, *output_shape),
            "classical": (num_rows, *output_shape),
            "classical_lamdas": (num_rows,),
        }
        for name, shape in shapes.items():
            self._replace(name, torch.zeros(shape, dtype=dtype, device=device))
        self.scales.fill_(1.0)
        self.steps = torch.zeros(num_rows, dtype=torch.long)
        self.names = [None] * num_rows

    def _replace(self, name: str, value: torch.Tensor) -> None:
        current = getattr(self, name)
        if isinstance(current, nn.Parameter):
            current.data = value  # the optimiser keeps its reference to the parameter
        else:
            setattr(self, name, value)

    def fits(self, num_rows: int, input_shape: Sequence[int], output_shape: Sequence[int]) -> bool:
        """Whether the state is already sized for this problem (a fit that continues an earlier one)."""
        return (
            self.num_rows == num_rows
            and tuple(self.inputs.shape[1:]) == tuple(input_shape)
            and tuple(self.ema.shape[1:]) == tuple(output_shape)
        )

    # ----------------------------------------------------------------- updates
    def write(self, name: str, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Set rows ``rows`` of tensor ``name`` (no autograd history; z of Self-Guided DIP included)."""
        with torch.no_grad():
            getattr(self, name)[rows] = values.to(getattr(self, name).dtype)

    def share(self, *names: str) -> None:
        """Make every process hold every row of the named tensors: one all-reduce of row-masked copies.

        A no-op in a single process. Each row is owned by exactly one process (``owned``).
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        tensors = [getattr(self, name) for name in names]
        owned = self.owned.to(tensors[0].device)
        flat = [torch.where(owned.view(-1, *([1] * (t.ndim - 1))), t.detach(), torch.zeros_like(t)).reshape(len(t), -1)
                for t in tensors]
        sizes = [f.shape[1] for f in flat]
        joined = torch.cat([f.to(torch.float64) for f in flat], dim=1)
        dist.all_reduce(joined)
        with torch.no_grad():
            for tensor, part in zip(tensors, joined.split(sizes, dim=1)):
                tensor.copy_(part.view_as(tensor).to(tensor.dtype))

    # ----------------------------------------------------------------- checkpoints
    def get_extra_state(self) -> Dict[str, Any]:
        return {"steps": self.steps.clone(), "names": list(self.names)}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.steps = torch.as_tensor(state.get("steps", torch.zeros(self.num_rows)), dtype=torch.long).clone()
        self.names = list(state.get("names", [None] * self.num_rows))

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A checkpoint from before ``projected`` or ``classical`` existed: empty ones of the EMA's size.
        ema = state_dict.get(prefix + "ema")
        if isinstance(ema, torch.Tensor):
            for name in ("projected", "classical"):
                state_dict.setdefault(prefix + name, torch.zeros_like(ema))
            state_dict.setdefault(prefix + "classical_lamdas", torch.zeros(ema.shape[:1], dtype=ema.dtype))
        # Resize to the saved rows first, so that a fresh (unallocated) state loads any checkpoint.
        for name in ROW_TENSORS:
            saved = state_dict.get(prefix + name)
            current = getattr(self, name)
            if isinstance(saved, torch.Tensor) and saved.shape != current.shape:
                self._replace(name, torch.zeros(saved.shape, dtype=current.dtype, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        shape: Tuple[int, ...] = tuple(self.inputs.shape)
        return f"rows={self.num_rows}, inputs={shape}, trainable_inputs={self.trainable_inputs}"
