"""Tiny reconstruction problems for the method tests: a fixed batch served for every step.

The problems are computed in float64 and rounded to float32 / complex64 once, at the end, so that
they are the same on every CPU: float32 FFTs and transcendental functions differ in the last bit
between instruction sets (AVX2, AVX-512), and 20 steps of Adam amplify that to the size of the
pinned outputs' tolerance (``test_pinned_outputs.py``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset

from ugodit_pl.complex import complex_to_channels, ifft2c, magnitude
from ugodit_pl.operators import MultiCoilMRI, SuperResolution, make_mask

TINY_UNET = {"channels": [4, 8, 8, 8]}
TINY_SKIP = {
    "in_channels": 3,
    "out_channels": 3,
    "channels_down": [8, 8],
    "channels_up": [8, 8],
    "channels_skip": [2, 2],
}


def tiny_transferable_weights(path, **metadata: Any):
    """A transferable-weights file of the tiny U-Net's encoder (as initialised) for MRI, at ``path``."""
    from ugodit_pl.methods import save_transferable_weights
    from ugodit_pl.nets import build_network

    save_transferable_weights(path, build_network("unet", **TINY_UNET).encoder, network="unet", network_args=TINY_UNET,
                              metadata={"operator": "MultiCoilMRI", **metadata})
    return path


def smooth_images(num: int, size: int, seed: int) -> torch.Tensor:
    """(num, size, size) complex images: low-pass random fields with a smooth phase."""
    generator = torch.Generator().manual_seed(seed)
    spectrum = torch.zeros(num, size, size, dtype=torch.complex128)
    low = size // 4
    start = size // 2 - low // 2
    block = torch.randn(num, low, low, 2, generator=generator).double()
    spectrum[:, start : start + low, start : start + low] = torch.view_as_complex(block)
    return ifft2c(spectrum) * size


def coil_maps(num_coils: int, size: int, dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    """(1, coils, size, size) smooth coil maps normalised so that sum_c |s_c|^2 = 1."""
    axis = torch.linspace(-1, 1, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    maps = []
    for c in range(num_coils):
        angle = 2 * torch.pi * c / num_coils
        weight = torch.exp(-((xx - 0.8 * math.cos(angle)) ** 2 + (yy - 0.8 * math.sin(angle)) ** 2))
        maps.append(weight * torch.exp(1j * (xx + c * yy)))
    maps = torch.stack(maps)
    maps = maps / torch.sqrt((maps.abs() ** 2).sum(0, keepdim=True))
    return maps.unsqueeze(0).to(dtype)


def mri_batch(num: int = 1, size: int = 32, coils: int = 2, seed: int = 0, index_offset: int = 0) -> Dict[str, Any]:
    """A batch of ``num`` multi-coil measurements at 4x (1-D random masks), with RSS-like targets."""
    images = smooth_images(num, size, seed) * 1000.0  # scanner units: far from 1
    maps = coil_maps(coils, size, torch.complex128).expand(num, -1, -1, -1).contiguous()
    masks = torch.stack(
        [make_mask("random", (size, size), acceleration=4, center_fraction=0.125, seed=seed + i) for i in range(num)]
    )
    operator = MultiCoilMRI(masks, maps)  # holds the maps as complex64
    x = complex_to_channels(images)
    return {
        "y": operator(x).to(torch.complex64),  # computed in complex128, rounded once
        "operator": operator,
        "index": torch.arange(num) + index_offset,
        "target": magnitude(x).float(),
        "name": [f"phantom{seed}/slice_{i:03d}" for i in range(num)],
    }


def sr_batch(num: int = 1, size: int = 32, seed: int = 0) -> Dict[str, Any]:
    """A batch of ``num`` 4x super-resolution measurements of smooth RGB images in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num, 3, size // 8, size // 8, generator=generator).double()
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    operator = SuperResolution(scale_factor=4)
    return {
        "y": operator(images).float(),  # computed in float64, rounded once
        "operator": operator,
        "index": torch.arange(num),
        "target": images.float(),
        "name": [f"image{i}" for i in range(num)],
    }


def fit(method, batch: Dict[str, Any], steps: int, callbacks=()):
    """``method`` fitted to ``batch`` for ``steps`` steps on the CPU (no logger, checkpoints or bars); returns it."""
    import pytorch_lightning as pl

    pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks)).fit(
        method, loader(batch, steps))
    return method


def aseqdip(**kwargs: Any):
    """aSeqDIP with the tiny U-Net, at a learning rate and input period that suit the tiny problems."""
    from ugodit_pl.methods import ASeqDIP

    return ASeqDIP(**{"num_measurements": 1, "network_args": TINY_UNET, "lr": 3e-3, "update_every": 5, **kwargs})


class FixedBatch(IterableDataset):
    """Yields the same batch ``steps`` times (one optimiser step each)."""

    def __init__(self, batch: Dict[str, Any], steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for _ in range(self.steps):
            yield self.batch


def loader(batch: Dict[str, Any], steps: int) -> DataLoader:
    """A DataLoader serving ``batch`` for ``steps`` steps."""
    return DataLoader(FixedBatch(batch, steps), batch_size=None)


class ShardedFixedBatch(IterableDataset):
    """Yields this process's shard (rows r::w) of a batch ``steps`` times, as the data modules do."""

    def __init__(self, batch: Dict[str, Any], steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        import torch.distributed as dist

        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        rows = list(range(rank, self.batch["y"].shape[0], world))
        shard = {
            "y": self.batch["y"][rows],
            "operator": self.batch["operator"].select(rows),
            "index": self.batch["index"][rows],
        }
        for _ in range(self.steps):
            yield shard
