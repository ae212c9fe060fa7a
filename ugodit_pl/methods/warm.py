"""Warm starts: a fit that starts from the networks a neighbouring measurement's fit ended with.

Neighbouring slices of a volume are close, so the next slice's fit can start where the last one
ended instead of from scratch: ``method.warm_start(previous.warm_state())``. What is carried is the
networks a measurement owns: the whole network for DIP, reference-guided DIP, Self-Guided DIP and
aSeqDIP (``nets``), the decoder for UGoDIT's test-time fit (``decoders``; its encoder is the frozen
transferable one, which must be the same). The new fit keeps its own input (from its own
measurement), a fresh EMA, a fresh optimiser and its own step budget.

A warm state is a dict of plain containers and tensors (``torch.save``-able, read with
``weights_only=True``)::

    {"format": "ugodit-pl/warm-state", "format_version": 1, "method": "ASeqDIP", "network": "unet",
     "network_args": {...}, "residual": True, "image_shape": [H, W], "encoder_checksum": None | float,
     "modules": {"nets": {state dict of one network}}, "source": "file.h5/slice_012", "ema_count": float,
     "reconstruction": (C, H, W) the network's image, "mean_with": None | "l1_wavelet", "mean_lamda": None | float}

With ``mean_with`` (``ugodit_pl.methods.classical_mean``) the state carries the lambda the neighbour's
compressed-sensing image was made with, and a warm start with the same ``mean_with`` reuses it: one
solve instead of the search over lambdas (neighbouring slices share their sampling and noise level).
The reconstruction it carries is the network's own, before the mean.

A warm start from another method, network, width, residual setting or encoder is refused when it
is applied; one from another image size when the fit is prepared (before any step).

``warm_start(state, input="neighbour")`` also starts the new fit's input from the neighbour's
reconstruction with the new slice's own measured k-space put in, z_0 = S^H F^H((1 - P) F S x_prev + P y),
instead of A^H y: the unmeasured frequencies come from the neighbour, the measured ones from the slice.
``input="auto"`` (the default) does so where it applies, a method whose input is A^H y
(``input_init="measurement"``) on an operator that can put measured samples in (MRI, inpainting), and
keeps the fit's own input otherwise (DIP's noise, a reference image, deblurring). Why: aSeqDIP's image
lives in its input (a residual U-Net on A^H y), so the neighbour's weights alone carry little. On two
simulated volumes (``ugodit benchmark volume``, 4x) warm aSeqDIP and UGoDIT chains of a third of the cold
steps were within 0.1 dB of the cold volumes (or above) with the neighbour's image as input, and 0.5 to
0.6 dB below them with their own A^H y (decision 9 of ``benchmarks/results/decisions.md``).

>>> import torch
>>> from ugodit_pl.methods import ASeqDIP
>>> first = ASeqDIP(network_args={"channels": [4, 8, 8, 8]})
>>> first.fit_state.allocate(1, (2, 16, 16), (2, 16, 16), torch.float32)
>>> second = ASeqDIP(network_args={"channels": [4, 8, 8, 8]}, seed=5).warm_start(first.warm_state())
>>> all(torch.equal(a, b) for a, b in zip(second.nets.parameters(), first.nets.parameters()))
True
>>> ASeqDIP(network_args={"channels": [8, 8, 8, 8]}).warm_start(first.warm_state())
Traceback (most recent call last):
...
ValueError: warm start from a ASeqDIP fit of a unet with {'channels': [4, 8, 8, 8]}, but this ASeqDIP has a unet with {'channels': [8, 8, 8, 8]}: start from a fit of the same network and width
"""

from __future__ import annotations

from pathlib import Path
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ugodit_pl.arguments import check_choice
from ugodit_pl.atomic import atomic_torch_save
from ugodit_pl.methods.transferable import _plain
from ugodit_pl.operators.base import Operator

FORMAT = "ugodit-pl/warm-state"
#: Where a warm-started fit's input starts: its own A^H y (or noise, or reference), the neighbour's image made
#: consistent with its own measured samples, or ``"auto"``: the neighbour's where that applies (see the module).
INPUTS = ("auto", "measurement", "neighbour")
#: Where a warm-started fit's EMA starts: empty (``"fresh"``, a neighbouring slice) or at the other fit's
#: reconstruction with its count of averaged outputs (``"carry"``: a refit of the same measurement).
EMAS = ("fresh", "carry")
FORMAT_VERSION = 1


def encoder_checksum(encoder: Optional[nn.Module]) -> Optional[float]:
    """A float that tells two frozen encoders apart (the sum of their weights in float64), or None."""
    if encoder is None:
        return None
    return float(sum(p.detach().double().sum() for p in encoder.state_dict().values() if p.is_floating_point()))


def warm_state(method: Any, row: int = 0) -> Dict[str, Any]:
    """What a neighbouring measurement's fit starts from: ``method``'s networks of ``row`` (see the module)."""
    if not method.warm_modules:
        raise ValueError(f"{type(method).__name__} has no per-measurement networks to warm-start another fit from")
    if not method.fit_state.allocated:
        raise RuntimeError(f"{type(method).__name__}.warm_state: nothing has been fitted yet")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": type(method).__name__,
        "network": method.network_name,
        "network_args": _plain(method.network_args),
        "residual": bool(method.residual),
        "image_shape": [int(n) for n in method.fit_state.ema.shape[-2:]],
        "encoder_checksum": encoder_checksum(getattr(method, "frozen_encoder", None)),
        "modules": {name: {key: value.detach().cpu().clone()
                           for key, value in getattr(method, name).module_at(row).state_dict().items()}
                    for name in method.warm_modules},
        "source": method.fit_state.names[row] if row < len(method.fit_state.names) else None,
        "ema_count": float(method.fit_state.ema_count[row]),  # outputs averaged (``warm_start(ema="carry")``)
        # the neighbour's image, in the measurement's units (the start of the next input, ``input="neighbour"``)
        "reconstruction": method.all_network_reconstructions()[row].detach().cpu().clone(),
        "mean_with": method.mean_with,
        "mean_lamda": float(method.fit_state.classical_lamdas[row]) if method.mean_with is not None else None,
    }


def apply_warm_state(method: Any, state: Dict[str, Any], rows: Optional[Sequence[int]] = None) -> Tuple[int, int]:
    """Load ``state`` into the networks of the measurements ``rows`` of ``method`` (default: all); return the
    image shape it needs."""
    own = type(method).__name__
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{own}.warm_start takes a warm state (method.warm_state() or a file saved with "
                         f"save_warm_state), got {type(state).__name__}")
    if state["method"] != own:
        raise ValueError(f"warm start from a {state['method']} fit, but this is a {own}: start from a fit of the same method")
    theirs, mine = (state["network"], dict(state["network_args"])), (method.network_name, _plain(method.network_args))
    if theirs != mine:
        raise ValueError(f"warm start from a {own} fit of a {theirs[0]} with {theirs[1]}, but this {own} has a "
                         f"{mine[0]} with {mine[1]}: start from a fit of the same network and width")
    if bool(state["residual"]) != bool(method.residual):
        raise ValueError(f"warm start from a fit with residual={state['residual']}, but this {own} has "
                         f"residual={method.residual}")
    mine_encoder = encoder_checksum(getattr(method, "frozen_encoder", None))
    if state.get("encoder_checksum") is not None and mine_encoder is not None and \
            abs(state["encoder_checksum"] - mine_encoder) > 1e-9 * max(1.0, abs(mine_encoder)):
        raise ValueError(f"warm start from a {own} fit behind another encoder: both must use the same transferable weights")
    if set(state["modules"]) != set(method.warm_modules):
        raise ValueError(f"warm state holds {sorted(state['modules'])}, this {own} needs {list(method.warm_modules)}")
    for name in method.warm_modules:
        stack = getattr(method, name)
        weights = {key: value.to(next(stack.parameters()).dtype) if value.is_floating_point() else value
                   for key, value in state["modules"][name].items()}
        for i in range(stack.num) if rows is None else rows:
            stack.load_module_at(int(i), weights)
    return int(state["image_shape"][0]), int(state["image_shape"][1])


def save_warm_state(state: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Write a warm state atomically (a run can resume its chain of warm starts from it)."""
    atomic_torch_save(state, path)
    return Path(path)


def load_warm_state(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a warm state written by :func:`save_warm_state` (``weights_only=True``), with a clear error."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types; its text stays in the cause
        raise ValueError(f"{str(path)!r} is not a warm-start file (it could not be read as one)") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a ugodit-pl warm-start file (no {FORMAT!r} marker)")
    return state


class WarmStarts:
    """The warm-start API of ``ReconstructionMethod`` (a mixin: it reads ``warm_modules``, ``input_init``,
    ``num_measurements`` and ``fit_state`` and keeps ``_warm_image_shape``, ``_warm_inputs`` and
    ``_warm_input_rule``, which the
    method initialises; ``prepare`` calls ``_warm_input`` and checks the image size)."""

    def warm_state(self, row: int = 0) -> Dict[str, Any]:
        """The networks this fit ended with for measurement ``row``, for a neighbour's fit to start from
        (``warm_start``; ``ugodit_pl.methods.warm``)."""
        return warm_state(self, row)

    def warm_start(self, state: Union[Dict[str, Any], str, "os.PathLike[str]"],
                   rows: Optional[List[int]] = None, input: str = "auto", ema: str = "fresh") -> Any:
        """Start the measurements ``rows`` of this fit (default: all) from a neighbour's ``warm_state()`` (or
        a file saved with ``ugodit_pl.methods.warm.save_warm_state``), before ``trainer.fit``; returns the
        method. Under DDP every process must make the same warm starts (all rows' networks are shared).
        ``input``: the rows' inputs start from their own measurement (``"measurement"``, A^H y), from the
        neighbour's reconstruction with their measured samples put in (``"neighbour"``; MRI and inpainting),
        or (``"auto"``) from the neighbour's where the method's input is A^H y and the operator allows it.
        ``ema``: the rows' EMA starts empty (``"fresh"``) or continues the other fit's (``"carry"``: it starts at
        ``state``'s reconstruction, weighted as the outputs it averaged; for a refit of the same measurement).
        With the same ``mean_with`` as ``state``'s fit, the rows' compressed-sensing image takes its lambda.

        Example::

            previous = ASeqDIP(); pl.Trainer(max_steps=1000).fit(previous, slice_11)
            nxt = ASeqDIP().warm_start(previous.warm_state()); pl.Trainer(max_steps=300).fit(nxt, slice_12)
        """
        check_choice("input", input, INPUTS)
        check_choice("ema", ema, EMAS)
        if input == "neighbour" and self.input_init == "noise":
            raise ValueError(f"{type(self).__name__} starts from noise (input_init='noise'): a warm start cannot give "
                             f"it the neighbour's image as input; use input='measurement'")
        if not isinstance(state, dict):
            state = load_warm_state(state)
        self._warm_image_shape = apply_warm_state(self, state, rows)
        self._warm_input_rule = input
        if input == "neighbour" or (input == "auto" and self.input_init == "measurement"):
            for row in range(self.num_measurements) if rows is None else rows:
                self._warm_inputs[int(row)] = state["reconstruction"]
        for row in range(self.num_measurements) if rows is None else rows:
            if self.mean_with is not None and state.get("mean_with") == self.mean_with and state.get("mean_lamda"):
                self._warm_lamdas[int(row)] = float(state["mean_lamda"])
            else:
                self._warm_lamdas.pop(int(row), None)
            if ema == "carry":
                self._warm_emas[int(row)] = (state["reconstruction"], float(state.get("ema_count", 0.0)))
            else:
                self._warm_emas.pop(int(row), None)
        return self

    def _carry_emas(self, scale: torch.Tensor, rows: List[int], normalized: bool) -> None:
        """Start the EMA of the rows that ``warm_start(ema="carry")`` named at the other fit's reconstruction
        (in this fit's units), counted as the outputs it averaged."""
        state = self.fit_state
        for k, row in enumerate(rows):
            if row not in self._warm_emas:
                continue
            image, count = self._warm_emas[row]
            image = image.to(state.ema.device, state.ema.dtype)
            image = image / scale[k].to(image.device, image.dtype) if normalized else image
            index = torch.tensor([row], device=state.ema.device)
            state.write("ema", index, image[None])
            state.write("ema_count", index, torch.tensor([count], device=state.ema.device))

    def _warm_input(self, z: torch.Tensor, operator: Operator, y: torch.Tensor, scale: torch.Tensor,
                    rows: List[int]) -> torch.Tensor:
        """z with the rows that ``warm_start(input="neighbour"/"auto")`` named started from their neighbour's image."""
        positions = [k for k, row in enumerate(rows) if row in self._warm_inputs]
        if not positions:
            return z
        if not hasattr(operator, "data_consistent"):
            if self._warm_input_rule == "auto":
                return z
            raise ValueError(f"warm_start(input='neighbour') puts the measured samples into the neighbour's image: it "
                             f"needs an operator with data_consistent (MRI, inpainting); {type(operator).__name__} has none")
        z = z.clone()
        for k in positions:
            image = self._warm_inputs[rows[k]].to(z.device, z.dtype)[None]  # its size checked by ``prepare``
            image = image / scale[k].to(z.device, z.dtype) if self._should_normalize(y) else image
            z[k:k + 1] = operator.select([k]).data_consistent(image, y[k:k + 1]).to(z.dtype)
        return z
