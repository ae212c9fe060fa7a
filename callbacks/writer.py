"""Writing reconstructions at the end of a fit: fastMRI-format HDF5 volumes (MRI) and PNGs (images).

MRI rows (batches with ``fname`` and ``slice``) are written as magnitude images to
``output_dir/<fname>``, an HDF5 file in the fastMRI submission layout: dataset ``reconstruction``
(slices, H, W) float32, slices in increasing slice number, with attributes

- ``slices``: the slice numbers present, in the order of the dataset's first axis;
- ``method``: the class name of the LightningModule; ``settings``: its ``hparams`` as JSON;
- ``library_version``: ``ugodit_pl.__version__``.

- ``slice_metrics``: one JSON object per slice (same order): its PSNR / SSIM / NMSE against the
  batch's ``target`` when the batch had one (fastMRI conventions, the slice's own maximum as data
  range), the steps and seconds of its fit;
- ``target`` (dataset, when every slice had a target): the targets, for volume metrics
  (:meth:`ReconstructionWriter.volume_metrics`: fastMRI's evaluate, the volume maximum as data range).

Natural-image rows (no ``fname``/``slice``) are written as ``output_dir/<name>.png`` (8-bit, the
output clamped to [0, 1]; the metrics in the PNG's ``ugodit_metrics`` text chunk); with
``write_png=True`` MRI magnitudes are also written as PNGs (``output_dir/<fname stem>_slice<NNN>.png``,
each scaled by its own maximum).

Checks before the first step: the output folder is writable (``check_output_dir``), and with
``overwrite=False`` no row of the fit is written already (a fit whose result would be thrown away is
an error, not an info line). A reconstruction that is not finite (a diverged fit) is never written
or marked done: the finite rows are written, then :class:`NonFiniteReconstruction` names the others.

Resumable layout. A folder is reconstructed one fit per chunk of slices, so the slices of one
volume may come from several fits (and from several processes under DDP). Every slice is first
written on its own, atomically, to ``output_dir/.partial/<fname>/<slice>.npz`` (magnitude plus the
method and settings); then the volume file is re-assembled from its previous content and the
partial slices (a temporary file moved into place with ``os.replace``), and only then are the
partial files it now contains deleted. An interruption at any point therefore loses no finished
slice and never duplicates one (slices are keyed by number), and a slice's metrics travel in the
same file as the slice; the next assembly picks up what an interrupted one left in ``.partial``, and
temporary files that a killed run left behind are removed (``remove_stale_temporaries``). A fit that ends by an exception or an interrupt writes
nothing (its chunk is simply redone). ``is_done`` / ``pending`` tell a driver what is already
written, and with ``overwrite=False`` (the default) already written slices and images are never
replaced. One process at a time should assemble a given volume (under DDP the global-zero process
does it, after a barrier).

Usage::

    writer = ReconstructionWriter("recons/")
    for chunk in chunks_of_slices:                  # the driver loop
        todo = writer.pending(chunk)                # [(fname, slice), ...] not yet written
        if todo:
            pl.Trainer(max_steps=2000, callbacks=[writer]).fit(method_for(todo), datamodule_for(todo))

>>> import tempfile
>>> writer = ReconstructionWriter(tempfile.mkdtemp())
>>> writer.is_done("file1000.h5", 3), writer.pending([("file1000.h5", 3), "00002"])
(False, [('file1000.h5', 3), '00002'])
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from ugodit_pl.callbacks.early_stopping import row_ids

from ugodit_pl.atomic import atomic_path
from ugodit_pl.complex import magnitude

PARTIAL_DIR = ".partial"
FORMAT = "ugodit-pl/reconstruction"
PNG_METRICS_KEY = "ugodit_metrics"

Item = Union[str, Tuple[str, int], Mapping[str, Any]]


def _volume_name(fname: str) -> str:
    name = Path(str(fname)).name
    if name in ("", ".", "..") or name.startswith(PARTIAL_DIR):
        raise ValueError(f"ReconstructionWriter: {fname!r} is not a usable volume file name")
    return name


def _image_stem(name: str) -> str:
    stem = str(name)
    if stem.lower().endswith(".png"):
        stem = stem[:-4]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    if not stem:
        raise ValueError(f"ReconstructionWriter: the image name {name!r} gives no usable file name")
    return stem


def _magnitude(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) network output (2 channels: real/imaginary; 1 channel) or a complex (H, W) image -> (H, W) float32."""
    image = image.detach().cpu()
    batch = image.reshape(1, *image.shape[-2:]) if image.is_complex() else image.float().unsqueeze(0)
    return magnitude(batch)[0, 0].float().numpy()


def _png_bytes(array: np.ndarray, stream: Any, text: Optional[Dict[str, str]] = None) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    Image.fromarray(array).save(stream, format="PNG", pnginfo=info)


def _metrics(image: torch.Tensor, target: Optional[torch.Tensor]) -> Dict[str, float]:
    """PSNR / SSIM (/ NMSE) of one (C, H, W) reconstruction against its target (none without a target)."""
    if target is None:
        return {}
    from ugodit_pl.metrics import reconstruction_metrics

    values = reconstruction_metrics(image[None], target[None].to(image.dtype))
    return {name: round(float(value[0]), 4) for name, value in values.items()}


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


class NonFiniteReconstruction(ValueError):
    """Some rows of a fit ended as NaN/Inf (a diverged fit): they were not written; ``keys`` names them."""

    def __init__(self, keys: List[Union[str, Tuple[str, int]]]) -> None:
        self.keys = list(keys)
        names = ", ".join(key if isinstance(key, str) else f"{key[0]} slice {key[1]}" for key in self.keys)
        super().__init__(
            f"ReconstructionWriter: the reconstruction of {names} is not finite (NaN/Inf): not written; fit it again "
            f"(a DivergenceRollback callback restores the last good state when a fit diverges)"
        )


def write_probe(folder: Path) -> None:
    """Create and remove a file in ``folder`` (an OSError if it cannot be written). The probe is this
    process's own (several DDP processes check one folder at once) and not named like the temporaries
    that ``ReconstructionWriter.remove_stale_temporaries`` clears."""
    handle, probe = tempfile.mkstemp(prefix=".write_check.", suffix=".probe", dir=folder)
    os.close(handle)
    os.unlink(probe)


class ReconstructionWriter(pl.Callback):
    """Write the reconstructions of a fit: HDF5 volumes for MRI, PNGs for images; resumable.

    Args:
        output_dir: the output folder.
        write_png: also write PNGs of the MRI magnitudes.
        overwrite: replace slices/images that are already written (default: keep them and skip).

    The writer reads ``fname``, ``slice``, ``name`` and ``index`` from the batches of the fit and,
    at the end of the fit (``on_fit_end``, after every callback's ``on_train_end``, so an
    early-stopping choice is included), takes each row's image from ``pl_module.reconstruction``
    (rows of the last batch) or ``pl_module.all_reconstructions()[index]`` (other rows).

    After a fit: ``written`` (paths written by this process), ``skipped`` (keys already done).

    Example::

        writer = ReconstructionWriter("recons/", write_png=True)
        pl.Trainer(max_steps=2000, callbacks=[WMVEarlyStopping(), writer]).fit(method, datamodule)
        writer.is_done("file1000.h5", 17)
    """

    def __init__(self, output_dir: Union[str, Path], write_png: bool = False, overwrite: bool = False) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.write_png = bool(write_png)
        self.overwrite = bool(overwrite)
        self.written: List[Path] = []
        self.skipped: List[Union[str, Tuple[str, int]]] = []
        self._rows: Dict[int, Dict[str, Any]] = {}
        self._last_ids: List[int] = []
        self._last_signature: Optional[Tuple[Any, ...]] = None
        self._started = 0.0
        self._earlier = (0, 0.0)  # steps and seconds of an earlier fit that the next one continues (``continues``)

    # ----------------------------------------------------------------- paths and queries
    @property
    def partial_dir(self) -> Path:
        return self.output_dir / PARTIAL_DIR

    def volume_path(self, fname: str) -> Path:
        """``output_dir/<fname>`` (the base name of ``fname``)."""
        return self.output_dir / _volume_name(fname)

    def image_path(self, name: str) -> Path:
        """``output_dir/<name>.png``."""
        return self.output_dir / f"{_image_stem(name)}.png"

    def _partial_path(self, fname: str, slice_num: int) -> Path:
        return self.partial_dir / _volume_name(fname) / f"{int(slice_num):05d}.npz"

    def volume_slices(self, fname: str) -> List[int]:
        """Slice numbers in the volume file (empty if it does not exist)."""
        path = self.volume_path(fname)
        if not path.is_file():
            return []
        import h5py

        with h5py.File(path, "r") as handle:
            return [int(s) for s in np.asarray(handle.attrs.get("slices", []))]

    def _partial_slices(self, fname: str) -> List[int]:
        folder = self.partial_dir / _volume_name(fname)
        return sorted(int(p.stem) for p in folder.glob("*.npz") if p.stem.isdigit()) if folder.is_dir() else []

    def check_output_dir(self, what: str = "ReconstructionWriter: output_dir") -> None:
        """Create ``output_dir`` if needed and check that files can be written there (a ValueError naming it,
        as ``what``, if not)."""
        where = f"{what} {self.output_dir}"
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"{where} exists and is not a folder")
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_probe(self.output_dir)
        except OSError as error:
            raise ValueError(f"{where}: cannot write there ({error.strerror or error})") from None

    def remove_stale_temporaries(self) -> List[Path]:
        """Remove the temporary files (``.<name>.<random>.tmp``) that a killed run left; returns them."""
        stale = [p for p in self.output_dir.rglob(".*.tmp") if p.is_file()] if self.output_dir.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def done_slices(self, fname: str) -> List[int]:
        """Slice numbers of ``fname`` already written (in the volume or waiting in ``.partial``)."""
        return sorted(set(self.volume_slices(fname)) | set(self._partial_slices(fname)))

    def is_done(self, key: str, slice: Optional[int] = None) -> bool:  # noqa: A002 (the batch key's name)
        """Whether slice ``slice`` of volume ``key`` (MRI), or image ``key`` (slice None), is written."""
        if slice is None:
            return self.image_path(key).is_file()
        return self._partial_path(key, slice).is_file() or int(slice) in self.volume_slices(key)

    @staticmethod
    def _key(item: Item) -> Tuple[str, Optional[int]]:
        if isinstance(item, Mapping):
            if item.get("fname") is not None and item.get("slice") is not None:
                return str(item["fname"]), int(item["slice"])
            if item.get("name") is not None:
                return str(item["name"]), None
            raise ValueError(f"ReconstructionWriter.pending: an item needs 'fname' and 'slice', or 'name': {item!r}")
        if isinstance(item, tuple) and len(item) == 2:
            return str(item[0]), int(item[1])
        if isinstance(item, str):
            return item, None
        raise TypeError(f"ReconstructionWriter.pending: items are names, (fname, slice) tuples or dicts, got {item!r}")

    def pending(self, items: Iterable[Item]) -> List[Item]:
        """The items not written yet, in their order (names, (fname, slice) tuples or per-sample dicts)."""
        done_cache: Dict[str, set] = {}
        result = []
        for item in items:
            key, slice_num = self._key(item)
            if slice_num is None:
                done = self.image_path(key).is_file()
            else:
                if key not in done_cache:
                    done_cache[key] = set(self.done_slices(key))
                done = slice_num in done_cache[key]
            if not done:
                result.append(item)
        return result

    # ----------------------------------------------------------------- collecting rows
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.check_output_dir()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows, self._last_ids, self._last_signature = {}, [], None
        self.written, self.skipped = [], []
        self._started = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if not isinstance(batch, Mapping):
            raise TypeError(f"ReconstructionWriter needs dict batches (docs/ARCHITECTURE.md), got {type(batch).__name__}")
        names = batch.get("name")
        signature = (tuple(str(n) for n in names),) if names is not None else None
        if signature is not None and signature == self._last_signature:
            return  # the same rows as the previous batch (the usual fixed batch): nothing new
        num = self._batch_rows(batch)
        ids = row_ids(batch, num)
        fnames = batch.get("fname")
        slices = batch.get("slice")
        if (fnames is None) != (slices is None):
            raise KeyError("ReconstructionWriter: MRI batches need both 'fname' and 'slice' (volume and slice number)")
        slice_list = None if slices is None else [int(s) for s in torch.as_tensor(slices).flatten().tolist()]
        target = batch.get("target")
        done = []
        for k, row in enumerate(ids):
            entry: Dict[str, Any] = {"name": str(names[k]) if names is not None else f"measurement_{row:04d}"}
            if fnames is not None:
                entry["fname"] = _volume_name(str(fnames[k]))
                entry["slice"] = slice_list[k]
            if isinstance(target, torch.Tensor):
                entry["target"] = target[k].detach().float().cpu()
            self._rows[row] = entry
            key = (entry["fname"], entry["slice"]) if "fname" in entry else entry["name"]
            if not self.overwrite and (self.is_done(*key) if isinstance(key, tuple) else self.is_done(key)):
                done.append(key)
        if done:
            raise ValueError(
                f"ReconstructionWriter: {self.output_dir} already holds {done}; this fit would be thrown away. "
                f"Leave them out of the fit, or pass overwrite=True to replace them"
            )
        self._last_ids = ids
        self._last_signature = signature

    @staticmethod
    def _batch_rows(batch: Mapping[str, Any]) -> int:
        for key in ("index", "name", "fname"):
            if batch.get(key) is not None:
                return len(batch[key])
        y = batch.get("y")
        if isinstance(y, torch.Tensor):
            return int(y.shape[0])
        raise KeyError("ReconstructionWriter: a batch needs 'index', 'name' or 'y' to tell its rows")

    def _images(self, pl_module: pl.LightningModule) -> Dict[int, torch.Tensor]:
        """{row index: (C, H, W) reconstruction} for every row seen in this fit."""
        images: Dict[int, torch.Tensor] = {}
        reconstruction = getattr(pl_module, "reconstruction", None)
        if isinstance(reconstruction, torch.Tensor) and reconstruction.shape[0] == len(self._last_ids):
            images.update({row: reconstruction[k] for k, row in enumerate(self._last_ids)})
        missing = [row for row in self._rows if row not in images]
        if missing:
            every = getattr(pl_module, "all_reconstructions", None)
            if not callable(every):
                raise AttributeError(
                    f"ReconstructionWriter needs the LightningModule to expose `reconstruction` (rows of the last "
                    f"batch) and, for rows {missing} outside the last batch, `all_reconstructions()`; "
                    f"{type(pl_module).__name__} lacks them"
                )
            full = every()
            images.update({row: full[row] for row in missing})
        return images

    def continues(self, steps: int, seconds: float) -> None:
        """The next fit continues an earlier fit of the same rows (e.g. a refit on every sample after a held-out
        stop): the slices it writes record the ``steps`` and ``seconds`` of both.

        >>> writer = ReconstructionWriter("recons"); writer.continues(steps=180, seconds=4.2)
        """
        self._earlier = (int(steps), float(seconds))

    # ----------------------------------------------------------------- writing
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(trainer, "interrupted", False):
            return
        images = self._images(pl_module) if self._rows else {}
        method = type(pl_module).__name__
        settings = json.dumps(dict(getattr(pl_module, "hparams", {}) or {}), default=str, sort_keys=True)
        (earlier_steps, earlier_seconds), self._earlier = self._earlier, (0, 0.0)
        seconds = time.perf_counter() - self._started + earlier_seconds
        record = {"steps": int(trainer.global_step) + earlier_steps, "fit_seconds": round(seconds, 3),
                  "seconds": round(seconds / max(1, len(self._rows)), 3)}
        failed: List[Union[str, Tuple[str, int]]] = []
        for row, entry in sorted(self._rows.items()):
            image = images[row].detach().float().cpu()
            key = (entry["fname"], entry["slice"]) if "fname" in entry else entry["name"]
            if not bool(torch.isfinite(image).all()):
                failed.append(key)
                continue
            if "fname" in entry:
                self.write_slice(entry["fname"], entry["slice"], image, method, settings, record, entry.get("target"))
            else:
                self._write_image(entry["name"], image, dict(record, **_metrics(image, entry.get("target"))))
        trainer.strategy.barrier("ReconstructionWriter")   # every process's slices are on disk
        if trainer.is_global_zero:
            self.assemble_all()
        if failed:
            raise NonFiniteReconstruction(failed)

    def write_slice(self, fname: str, slice_num: int, image: torch.Tensor, method: str, settings: str,
                    record: Dict[str, Any], target: Optional[torch.Tensor] = None) -> None:
        """Write one slice's (C, H, W) reconstruction (2 channels: real and imaginary) to ``.partial``
        (atomically), with ``record`` and its metrics against ``target`` (1, H, W) when given; :meth:`assemble`
        puts it into its volume. A slice written already is kept unless ``overwrite``. Used by
        :meth:`on_fit_end`, and by drivers that reconstruct without a Trainer (``ugodit classical``)."""
        if not self.overwrite and self.is_done(fname, slice_num):
            self.skipped.append((fname, slice_num))
            rank_zero_info(f"ReconstructionWriter: {fname} slice {slice_num} is already written; kept (overwrite=False)")
            return
        metrics = dict(record, **_metrics(image, target))
        magnitude = _magnitude(image)
        path = self._partial_path(fname, slice_num)
        arrays = {"reconstruction": magnitude, "method": np.array(method), "settings": np.array(settings),
                  "metrics": np.array(json.dumps(metrics))}
        if target is not None:
            arrays["target"] = _magnitude(target)
        with atomic_path(path) as tmp, open(tmp, "wb") as stream:
            np.savez(stream, **arrays)
        self.written.append(path)
        if self.write_png:
            png = self.output_dir / f"{_image_stem(Path(fname).stem)}_slice{int(slice_num):03d}.png"
            scale = float(magnitude.max()) or 1.0
            with atomic_path(png) as tmp, open(tmp, "wb") as stream:
                _png_bytes(_to_uint8(magnitude / scale), stream)
            self.written.append(png)

    def _write_image(self, name: str, image: torch.Tensor, metrics: Dict[str, Any]) -> None:
        path = self.image_path(name)
        if not self.overwrite and path.is_file():
            self.skipped.append(name)
            rank_zero_info(f"ReconstructionWriter: {path} exists; kept (overwrite=False)")
            return
        if image.is_complex() or image.shape[0] == 2:
            magnitude = _magnitude(image)
            pixels = _to_uint8(magnitude / (float(magnitude.max()) or 1.0))
        elif image.shape[0] in (1, 3):
            pixels = _to_uint8(image.permute(1, 2, 0).numpy())
            pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
        else:
            raise ValueError(f"ReconstructionWriter: cannot write a {image.shape[0]}-channel image as a PNG ({name!r})")
        with atomic_path(path) as tmp, open(tmp, "wb") as stream:
            _png_bytes(pixels, stream, text={PNG_METRICS_KEY: json.dumps(metrics)})
        self.written.append(path)

    # ----------------------------------------------------------------- metrics
    def metrics(self, key: str, slice: Optional[int] = None) -> Optional[Dict[str, Any]]:  # noqa: A002
        """The metrics written with slice ``slice`` of volume ``key`` (MRI), or with image ``key``; None if absent."""
        if slice is None:
            path = self.image_path(key)
            if not path.is_file():
                return None
            from PIL import Image

            with Image.open(path) as image:
                text = getattr(image, "text", {}).get(PNG_METRICS_KEY)
            return json.loads(text) if text else None
        part = self._partial_path(key, slice)
        if part.is_file():
            with np.load(part, allow_pickle=False) as archive:
                return json.loads(str(archive["metrics"])) if "metrics" in archive else None
        path = self.volume_path(key)
        if not path.is_file():
            return None
        import h5py

        with h5py.File(path, "r") as handle:
            numbers = [int(s) for s in np.asarray(handle.attrs.get("slices", []))]
            records = json.loads(str(handle.attrs.get("slice_metrics", "[]")))
        return records[numbers.index(int(slice))] if int(slice) in numbers and len(records) == len(numbers) else None

    def volume_metrics(self, fname: str) -> Optional[Dict[str, float]]:
        """fastMRI's volume metrics of a written volume against its stored targets (None without targets)."""
        path = self.volume_path(fname)
        if not path.is_file():
            return None
        import h5py

        from ugodit_pl.metrics import volume_metrics

        with h5py.File(path, "r") as handle:
            if "target" not in handle:
                return None
            recon, target = handle["reconstruction"][()], handle["target"][()]
        values = volume_metrics(torch.from_numpy(recon)[:, None], torch.from_numpy(target)[:, None])
        return {name: float(value) for name, value in values.items()}

    # ----------------------------------------------------------------- volume assembly
    def assemble_all(self) -> List[Path]:
        """Assemble every volume that has partial slices waiting (see the module docstring)."""
        if not self.partial_dir.is_dir():
            return []
        return [self.assemble(folder.name) for folder in sorted(self.partial_dir.iterdir()) if folder.is_dir()]

    def assemble(self, fname: str) -> Path:
        """(Re)write ``output_dir/<fname>`` from its current slices and the partial ones, atomically."""
        import h5py

        import ugodit_pl

        name = _volume_name(fname)
        path = self.volume_path(name)
        folder = self.partial_dir / name
        parts = {int(p.stem): p for p in folder.glob("*.npz") if p.stem.isdigit()} if folder.is_dir() else {}
        slices: Dict[int, np.ndarray] = {}
        targets: Dict[int, np.ndarray] = {}
        records: Dict[int, Any] = {}
        provenance: Dict[int, Tuple[str, str]] = {}
        version = ugodit_pl.__version__
        if path.is_file():
            with h5py.File(path, "r") as handle:
                data = handle["reconstruction"][()]
                stored_targets = handle["target"][()] if "target" in handle else None
                numbers = [int(s) for s in np.asarray(handle.attrs.get("slices", range(data.shape[0])))]
                old_records = json.loads(str(handle.attrs.get("slice_metrics", "[]")))
                old = (str(handle.attrs.get("method", "")), str(handle.attrs.get("settings", "")))
                for k, number in enumerate(numbers):
                    slices[number] = data[k]
                    provenance[number] = old
                    records[number] = old_records[k] if len(old_records) == len(numbers) else None
                    if stored_targets is not None:
                        targets[number] = stored_targets[k]
        for number, part in sorted(parts.items()):
            with np.load(part, allow_pickle=False) as archive:
                slices[number] = np.asarray(archive["reconstruction"], dtype=np.float32)
                provenance[number] = (str(archive["method"]), str(archive["settings"]))
                records[number] = json.loads(str(archive["metrics"])) if "metrics" in archive else None
                if "target" in archive:
                    targets[number] = np.asarray(archive["target"], dtype=np.float32)
                else:
                    targets.pop(number, None)
        if not slices:
            raise FileNotFoundError(f"ReconstructionWriter: nothing to assemble for {name!r}")
        order = sorted(slices)
        shapes = {slices[n].shape for n in order}
        if len(shapes) != 1:
            raise ValueError(f"ReconstructionWriter: the slices of {name!r} have different shapes {sorted(shapes)}")
        newest = provenance[max(parts)] if parts else provenance[order[-1]]
        if len(set(provenance.values())) > 1:
            rank_zero_warn(f"ReconstructionWriter: {name} holds slices reconstructed with different methods/settings; "
                           f"its attributes record the newest ({newest[0]})")
        volume = np.stack([slices[n] for n in order]).astype(np.float32)
        target_volume = np.stack([targets[n] for n in order]).astype(np.float32) \
            if all(n in targets and targets[n].shape == slices[n].shape for n in order) else None

        def write(tmp: str) -> None:
            with h5py.File(tmp, "w") as handle:
                handle.create_dataset("reconstruction", data=volume)
                if target_volume is not None:
                    handle.create_dataset("target", data=target_volume)
                handle.attrs["slices"] = np.asarray(order, dtype=np.int64)
                handle.attrs["slice_metrics"] = json.dumps([records.get(n) for n in order])
                handle.attrs["method"] = newest[0]
                handle.attrs["settings"] = newest[1]
                handle.attrs["library_version"] = version
                handle.attrs["format"] = FORMAT

        with atomic_path(path) as tmp:
            write(str(tmp))
        for part in parts.values():
            part.unlink(missing_ok=True)
        for empty in (folder, self.partial_dir):
            try:
                empty.rmdir()
            except OSError:
                pass  # not empty (a slice arrived meanwhile, another volume waits) or already gone
        if path not in self.written:
            self.written.append(path)
        return path
