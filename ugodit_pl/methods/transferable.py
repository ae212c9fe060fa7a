"""Transferable weights: the encoder that UGoDIT's group pre-training produces, with metadata.

The file is a ``torch.save`` of plain containers (readable with ``weights_only=True``)::

    {"format": "ugodit-pl/transferable-weights", "format_version": 1,
     "network": "unet", "network_args": {...},         # rebuilds the architecture
     "encoder": {state_dict},
     "metadata": {"task": ..., "num_measurements": M, "steps": ..., "lam": ..., "library_version": ...}}

It is written atomically (a temporary file in the same folder, then ``os.replace``).

>>> import tempfile, os
>>> from ugodit_pl.nets import build_network
>>> net = build_network("unet", channels=[4, 8, 8, 8])
>>> path = os.path.join(tempfile.mkdtemp(), "encoder.pt")
>>> _ = save_transferable_weights(path, net.encoder, network="unet", network_args={"channels": [4, 8, 8, 8]})
>>> load_transferable_weights(path)["network"]
'unet'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

import ugodit_pl
from ugodit_pl.atomic import atomic_torch_save

FORMAT = "ugodit-pl/transferable-weights"
FORMAT_VERSION = 1


def _plain(value: Any) -> Any:
    """Convert tuples and other containers to lists/dicts so the file loads with weights_only=True."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def save_transferable_weights(
    path: Union[str, Path],
    encoder: nn.Module,
    *,
    network: str,
    network_args: Dict[str, Any],
    metadata: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write the encoder's weights and what rebuilds it to ``path`` (atomically)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "network": network,
        "network_args": _plain(network_args),
        "encoder": {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()},
        "metadata": _plain({"library_version": ugodit_pl.__version__, **(metadata or {})}),
    }
    atomic_torch_save(payload, path)
    return Path(path)


def load_transferable_weights(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a transferable-weights file safely (``weights_only=True``), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"transferable weights file {str(path)!r} does not exist (run UGoDIT pre-training first)")
    if path.stat().st_size == 0:
        raise ValueError(f"{str(path)!r} is empty, not a transferable-weights file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types; its text stays in the cause (``--debug``)
        raise ValueError(f"{str(path)!r} is not a transferable-weights file: it could not be read as one, and "
                         f"nothing in it was executed (weights_only loading)") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a ugodit-pl transferable-weights file (no {FORMAT!r} marker)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} has format version {payload['format_version']}; this ugodit-pl reads up to {FORMAT_VERSION}"
        )
    broken = [key for key, value in payload.get("encoder", {}).items()
              if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if broken:
        raise ValueError(f"{str(path)!r}: the encoder holds NaN/Inf weights ({', '.join(broken[:3])}): it comes from a "
                         f"pre-training that diverged; pre-train again or take earlier weights")
    return payload


def weights_dtype(payload: Dict[str, Any]) -> torch.dtype:
    """The floating dtype of a transferable-weights file's encoder (the widest of its tensors; float32 if none).

    ``UGoDITFit`` builds its networks in it, so that float64 pre-training is not rounded to float32 on load.

    >>> weights_dtype({"encoder": {"w": torch.zeros(2, dtype=torch.float64), "n": torch.tensor(3)}})
    torch.float64
    """
    dtype = None
    for value in payload.get("encoder", {}).values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            dtype = value.dtype if dtype is None else torch.promote_types(dtype, value.dtype)
    return dtype or torch.float32


MRI_OPERATORS = ("MultiCoilMRI", "SingleCoilMRI")


def check_weights_task(payload: Dict[str, Any], mri: bool) -> None:
    """Refuse weights pre-trained for another kind of data (MRI or natural images).

    The weights record the operator class of their pre-training and the network's input channels
    (2 = real/imaginary for MRI, 3 = RGB for images).

    >>> check_weights_task({"metadata": {"operator": "SuperResolution"}, "network_args": {}, "encoder": {}}, mri=True)
    Traceback (most recent call last):
    ...
    ValueError: the weights were pre-trained on SuperResolution measurements, but these are MRI; use transferable weights pre-trained for this task
    """
    data = "MRI" if mri else "natural images"
    operator = (payload.get("metadata") or {}).get("operator")
    if operator and (operator in MRI_OPERATORS) != mri:
        raise ValueError(f"the weights were pre-trained on {operator} measurements, but these are {data}; use "
                         f"transferable weights pre-trained for this task")
    channels = (payload.get("network_args") or {}).get("in_channels")
    expected = 2 if mri else 3
    if channels is not None and int(channels) != expected:
        raise ValueError(f"the weights hold a {payload.get('network')} encoder with {channels} input channels, but "
                         f"{data} need {expected}")
