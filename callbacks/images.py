"""Images of the reconstruction in the user's logger while fitting, as fastMRI's modules log theirs.

Every ``every_n_steps`` steps and at the end of the fit, :class:`ReconstructionImages` takes
``pl_module.current_output`` (the end-of-fit image is ``pl_module.reconstruction`` when the module
has one, e.g. the output ``WMVEarlyStopping`` chose) and logs, per measurement of the batch (at most
``max_images``):

- ``images/<row>/reconstruction``: the magnitude (2-channel MRI outputs, 1-channel images) or the
  RGB image;
- ``images/<row>/target`` and ``images/<row>/error`` (|reconstruction - target|) when the batch
  carries ``target``.

Grey images share one scale per row: [0, max of the target] (else of the reconstruction); the error
map is shown on that scale times ``error_gain``. To every logger that takes images
(TensorBoard's ``SummaryWriter.add_image``, or any logger whose ``experiment`` has ``add_image``)
the images go as (C, H, W) floats in [0, 1]; when no logger takes images (a CSV logger, or none),
they are written as PNG files ``<log folder>/images/step_<step>/<row>_<kind>.png``, atomically (the
log folder is the first logger's ``log_dir``, else the Trainer's ``default_root_dir``). Rows are
named by ``batch["index"]``. Under DDP each process writes PNG files of its own rows, while a logger
receives rank zero's rows only (Lightning's loggers write from rank zero).

Usage::

    from pytorch_lightning.loggers import TensorBoardLogger
    images = ReconstructionImages(every_n_steps=200)
    pl.Trainer(max_steps=3000, logger=TensorBoardLogger("runs"), callbacks=[images]).fit(method, datamodule)

>>> ReconstructionImages(every_n_steps=100, max_images=2).max_images
2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from ugodit_pl.callbacks.early_stopping import current_output_of, row_ids

from ugodit_pl.arguments import positive, whole
from ugodit_pl.atomic import atomic_path

__all__ = ["ReconstructionImages", "display_images"]


def display_images(output: torch.Tensor, target: Optional[torch.Tensor] = None,
                   error_gain: float = 1.0) -> List[Dict[str, torch.Tensor]]:
    """Per row of ``output`` (B, C, H, W): ``{"reconstruction", "target", "error"}`` as (C, H, W)
    float tensors in [0, 1] (C = 1 grey or 3 RGB); "target" and "error" only with ``target``.

    >>> rows = display_images(torch.ones(1, 2, 4, 4), torch.full((1, 1, 4, 4), 2.0))
    >>> sorted(rows[0]), float(rows[0]["reconstruction"].max()), float(rows[0]["error"].max())
    (['error', 'reconstruction', 'target'], 0.7071067690849304, 0.2928932309150696)
    """
    output = output.detach().float().cpu()
    rgb = output.shape[1] == 3
    shown = output if rgb else (output.pow(2).sum(1, keepdim=True).sqrt() if output.shape[1] == 2 else output.abs())
    reference = None if target is None else target.detach().float().cpu()
    if reference is not None and not rgb:
        reference = reference.abs() if reference.shape[1] == 1 else reference.pow(2).sum(1, keepdim=True).sqrt()
    rows = []
    for row in range(shown.shape[0]):
        image = shown[row]
        truth = None if reference is None else reference[row]
        scale = 1.0 if rgb else float((truth if truth is not None else image).max()) or 1.0
        entry = {"reconstruction": (image / scale).clamp(0, 1)}
        if truth is not None:
            entry["target"] = (truth / scale).clamp(0, 1)
            error = (image - truth).abs()
            error = error.mean(0, keepdim=True) if rgb else error
            entry["error"] = (error / scale * float(error_gain)).clamp(0, 1)
        rows.append(entry)
    return rows


class ReconstructionImages(pl.Callback):
    """Log the current reconstruction, the target and the error map as images (see the module docstring).

    Args:
        every_n_steps: log when ``trainer.global_step`` is a multiple of this (and at the end of the fit).
        max_images: log at most this many rows of the batch.
        error_gain: the error map is |reconstruction - target| / scale x ``error_gain`` (5 shows
            errors of 20 % of the image maximum as white).
        prefix: the tag prefix (``"images/"``).

    Example::

        pl.Trainer(max_steps=3000, logger=TensorBoardLogger("runs"),
                   callbacks=[ReconstructionImages(every_n_steps=500, error_gain=5)]).fit(method, dm)
    """

    def __init__(self, every_n_steps: int = 100, max_images: int = 4, error_gain: float = 1.0,
                 prefix: str = "images/") -> None:
        super().__init__()
        whole("ReconstructionImages: every_n_steps", every_n_steps, minimum=1)
        whole("ReconstructionImages: max_images", max_images, minimum=1)
        positive("ReconstructionImages: error_gain", error_gain)
        self.every_n_steps, self.max_images = int(every_n_steps), int(max_images)
        self.error_gain, self.prefix = float(error_gain), str(prefix)
        self.written: List[Path] = []  # the PNG files written (no image-taking logger)
        self._last: Optional[Mapping[str, Any]] = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._last = batch if isinstance(batch, Mapping) else None
        step = int(trainer.global_step)
        if step % self.every_n_steps == 0 and step != trainer.max_steps:
            self._log(trainer, current_output_of(pl_module, "ReconstructionImages"), step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        final = getattr(pl_module, "reconstruction", None)
        output = final if isinstance(final, torch.Tensor) and final.ndim == 4 else \
            current_output_of(pl_module, "ReconstructionImages")
        self._log(trainer, output, int(trainer.global_step))

    def _log(self, trainer: pl.Trainer, output: torch.Tensor, step: int) -> None:
        batch = self._last or {}
        target = batch.get("target")
        if target is not None and target.shape[0] != output.shape[0]:
            target = None
        rows = display_images(output[: self.max_images],
                              None if target is None else target[: self.max_images], self.error_gain)
        ids = row_ids(batch, output.shape[0])[: len(rows)]
        takers = [lg.experiment for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_image")]
        for row_id, images in zip(ids, rows):
            for kind, image in images.items():
                if takers:
                    for experiment in takers:
                        experiment.add_image(f"{self.prefix}{row_id}/{kind}", image, global_step=step)
                else:
                    self.written.append(self._write_png(trainer, step, row_id, kind, image))

    @staticmethod
    def _write_png(trainer: pl.Trainer, step: int, row_id: int, kind: str, image: torch.Tensor) -> Path:
        from PIL import Image

        log_dir = next((lg.log_dir for lg in trainer.loggers if getattr(lg, "log_dir", None)), None)
        folder = Path(log_dir or trainer.default_root_dir) / "images" / f"step_{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        path = folder / f"{row_id}_{kind}.png"
        with atomic_path(path) as temporary:
            Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(temporary, format="PNG")
        return path
