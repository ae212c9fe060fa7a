"""``ugodit reconstruct``: reconstruct a whole folder with UGoDIT's transferable weights, resumably.

Every slice of every fastMRI file in ``--data`` (a file or a folder of ``.h5``), or every image of a
folder of images, is fitted by ``UGoDITFit`` (encoder frozen to ``--weights``, fresh decoder):

- the pending items (not yet written by the ``ReconstructionWriter`` in ``--out``) are split into
  chunks of ``--chunk-size``; each chunk is ONE ``Trainer.fit`` of a batch of independent fits;
- with ``--devices D`` (and ``--strategy ddp``, the default for D > 1) each chunk is sharded over the
  D processes (rank r fits the chunk's items r, r + D, ...); Lightning starts the other processes by
  running the same command again, and every process computes the same chunks;
- before any fitting: ``--out`` must be a writable folder, and every selected slice (or image) is read
  and checked (finite, non-zero k-space; a file that fails is named, with its slice);
- after each chunk the writer stores every slice atomically (``DIR/<file>.h5`` volumes in the fastMRI
  submission layout, or ``DIR/<image>.png``), each with its metrics against the ground truth when the
  data have one (fully sampled files, clean images); an interrupted run loses at most the chunk in
  progress, and running the same command again skips everything already written (``--overwrite``
  redoes it) and removes the temporary files a killed run left;
- a slice whose reconstruction is not finite (a diverged fit) is not written: the run goes on with
  the other chunks, names the failed slices and exits with status 1;
- the final table and ``DIR/reconstruct_summary.json`` list every item, reconstructed now or in an
  earlier run, with per-slice metrics (each slice's own maximum as data range) and, for MRI, per-volume
  metrics as fastMRI's evaluate reports them (the volume maximum as data range).

Settings come from, in increasing priority: the defaults of ``UGoDITFit`` and the data module, the
objective recorded in the weights file (loss norm, lambda, N, input update of the pre-training), a
``--config`` (a ``ugodit fit`` YAML such as ``configs/mri_ugodit_fit_4x.yaml``: its
``model.init_args``, ``data.init_args`` and ``trainer.max_steps``; file lists are ignored), then
the flags.

Usage::

    ugodit reconstruct --data /data/multicoil_val --weights runs/mri_ugodit_4x/transferable_weights.pt \\
        --out recons --config configs/mri_ugodit_fit_4x.yaml --devices 4

>>> parse_args(["--data", "d", "--weights", "w.pt", "--out", "o"]).chunk_size
4
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ugodit_pl.apps.io import write_json
from ugodit_pl.arguments import non_negative, whole
from ugodit_pl.apps.runtime import progress_display, quiet_lightning, step_progress
from ugodit_pl.methods.classical_mean import MEAN_SOURCES
from ugodit_pl.methods.defaults import SEQUENTIAL_DEFAULTS
from ugodit_pl.methods.warm import INPUTS

HELDOUT_SLICES = ("all", "warm")  # which slices of a warm-started chain hold samples out (``--heldout-slices``)

SUMMARY = "reconstruct_summary.json"
DEFAULT_STEPS = {"mri": 2000, "image": 20000}

# Keys of a config's data.init_args that name the data (reconstruct takes them from --data).
_DATA_SELECTION_KEYS = ("test_files", "test_slices", "pretrain_files", "pretrain_slices", "role", "images",
                        "pretrain_images", "data_dir")
# Keys of model.init_args that reconstruct sets itself.
_MODEL_FIXED_KEYS = ("num_measurements", "weights")
# Objective settings recorded in the weights' metadata that the test-time fit reuses by default.
_INHERITED = ("lam", "update_every", "input_update", "loss_norm", "normalize_percentile", "residual")


@dataclass(frozen=True)
class Item:
    """One thing to reconstruct: a slice of a fastMRI file, or an image file."""

    path: Path
    slice: Optional[int] = None

    @property
    def key(self) -> Union[str, Tuple[str, int]]:
        """The writer's key: (file name, slice) for MRI, the image file name otherwise."""
        return self.path.name if self.slice is None else (self.path.name, int(self.slice))

    @property
    def label(self) -> str:
        """``file.h5/slice_003`` or ``image.png`` (the data modules' measurement names)."""
        return self.path.name if self.slice is None else f"{self.path.name}/slice_{self.slice:03d}"


@dataclass
class Plan:
    """What to reconstruct and how (see :func:`make_plan`)."""

    kind: str  # "mri" or "image"
    items: List[Item]
    weights: Path
    out: Path
    steps: int
    chunk_size: int
    model_args: Dict[str, Any] = field(default_factory=dict)
    data_args: Dict[str, Any] = field(default_factory=dict)
    trainer_args: Dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    warm_start: bool = False
    warm_steps: Optional[int] = None  # steps of a warm-started chunk (None: a third of ``steps``, rounded up)
    warm_input: str = "auto"  # where a warm slice's input starts (``ugodit_pl.methods.warm.INPUTS``)
    stop: str = "none"  # "heldout": HeldOutEarlyStopping on held-out samples (``holdout_fraction``), then a refit
    holdout_fraction: float = 0.0
    patience: int = 200
    refit_steps: Optional[int] = None  # after a held-out stop, steps on every sample (None: a quarter of a warm budget)
    heldout_slices: str = "all"  # "warm": only warm-started slices hold out and stop; a chain's first fits every sample

    def holds_out(self, warm: bool) -> bool:
        """Whether a chunk (warm-started or not) holds samples out and stops by the held-out rule.

        >>> plan = Plan("mri", [], Path("w.pt"), Path("out"), steps=600, chunk_size=1, warm_start=True,
        ...             stop="heldout", heldout_slices="warm")
        >>> plan.holds_out(warm=False), plan.holds_out(warm=True)
        (False, True)
        """
        return self.stop == "heldout" and (self.heldout_slices == "all" or warm)

    def steps_for(self, warm: bool) -> int:
        """The step budget of a chunk: ``warm_steps`` (default a third of ``steps``, the budget at which the
        volume benchmark's warm chains matched cold fits) when every slice of it starts warm.

        >>> Plan("mri", [], Path("w.pt"), Path("out"), steps=600, chunk_size=1, warm_start=True).steps_for(warm=True)
        200
        """
        if not warm:
            return self.steps
        return int(self.warm_steps) if self.warm_steps else -(-self.steps // 3)

    def refit(self) -> int:
        """Steps of the refit on every measured sample after a held-out stop (0 without ``--stop heldout``):
        ``refit_steps``, by default a quarter of a warm slice's budget (as ``ugodit benchmark volume`` ran it).

        >>> Plan("mri", [], Path("w.pt"), Path("out"), steps=600, chunk_size=1, stop="heldout").refit()
        50
        """
        if self.stop != "heldout":
            return 0
        return int(self.refit_steps) if self.refit_steps is not None else -(-self.steps_for(warm=True) // 4)


# --------------------------------------------------------------------------------------------- planning
def find_items(data: Union[str, os.PathLike], slices: str = "all") -> Tuple[str, List[Item]]:
    """(kind, items) for a file or folder: every selected slice of every ``.h5`` file, else every image.

    >>> find_items("/nonexistent")
    Traceback (most recent call last):
    ...
    FileNotFoundError: --data /nonexistent: no such file or folder
    """
    from ugodit_pl.datamodules.fastmri import H5_SUFFIXES as MRI_SUFFIXES
    from ugodit_pl.datamodules.fastmri_io import inspect_volume
    from ugodit_pl.datamodules.image_io import IMAGE_SUFFIXES
    from ugodit_pl.datamodules.selection import select_slices

    path = Path(data).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--data {path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        volumes = [p for p in files if p.suffix.lower() in MRI_SUFFIXES]
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        volumes = [path] if path.suffix.lower() in MRI_SUFFIXES else []
        images = [path] if path.suffix.lower() in IMAGE_SUFFIXES else []
    if volumes:
        items = []
        for volume in volumes:
            info = inspect_volume(volume)
            items.extend(Item(volume, s) for s in select_slices(slices, info.num_slices, volume))
        return "mri", items
    if images:
        return "image", [Item(p) for p in images]
    raise FileNotFoundError(
        f"--data {path}: no fastMRI files ({', '.join(MRI_SUFFIXES)}) or images ({', '.join(IMAGE_SUFFIXES)}) found"
    )


def config_sections(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The sections of a ``ugodit fit`` YAML config: ``model_class``, ``model`` (its init_args),
    ``data_class``, ``data`` (its init_args) and ``trainer``; a clear error when the file is missing or
    not a config."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"--config {path}: not valid YAML ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"--config {path}: expected a mapping with model / data / trainer sections")
    model = config.get("model") or {}
    data = config.get("data") or {}
    return {
        "model_class": str(model.get("class_path", "ugodit_pl.methods.UGoDITFit")),
        "model": dict(model.get("init_args") or {}),
        "data_class": str(data.get("class_path", "")),
        "data": dict(data.get("init_args") or {}),
        "trainer": dict(config.get("trainer") or {}),
    }


def read_config(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The model / data / trainer sections of a ``ugodit fit`` YAML config (UGoDITFit only)."""
    config = config_sections(path)
    if config["model_class"].rsplit(".", 1)[-1] != "UGoDITFit":
        raise ValueError(
            f"--config {path}: reconstruct fits with transferable weights (ugodit_pl.methods.UGoDITFit), "
            f"but the config's model is {config['model_class']}; use a *_fit config such as "
            f"configs/mri_ugodit_fit_4x.yaml"
        )
    return config


def make_plan(args: argparse.Namespace) -> Plan:
    """Resolve items, weights, config and flags into a :class:`Plan` (all errors before any fitting)."""
    from ugodit_pl.methods.holdout import check_holdout_fraction
    from ugodit_pl.methods.transferable import load_transferable_weights

    weights = Path(args.weights).expanduser()
    payload = load_transferable_weights(weights)  # FileNotFoundError / ValueError with a clear message
    kind, items = find_items(args.data, args.slices)
    config = read_config(args.config) if args.config else {"model": {}, "data": {}, "trainer": {}, "data_class": ""}
    expected = "FastMRIDataModule" if kind == "mri" else "DegradedImageDataModule"
    if config["data_class"] and config["data_class"].rsplit(".", 1)[-1] != expected:
        raise ValueError(f"--config {args.config}: its data module is {config['data_class']}, but --data holds "
                         f"{'fastMRI files' if kind == 'mri' else 'images'} ({expected})")
    metadata = dict(payload.get("metadata") or {})
    check_weights_fit_data(weights, payload, kind)
    model_args = {k: metadata[k] for k in _INHERITED if metadata.get(k) is not None}
    model_args.update({k: v for k, v in config["model"].items() if k not in _MODEL_FIXED_KEYS})
    if args.lr is not None:
        model_args["lr"] = args.lr
    data_args = {k: v for k, v in config["data"].items() if k not in _DATA_SELECTION_KEYS}
    if kind == "image" and args.degraded is not None:
        data_args["degraded"] = args.degraded
    steps = args.steps if args.steps is not None else config["trainer"].get("max_steps") or DEFAULT_STEPS[kind]
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps (or the config's trainer.max_steps) must be a positive number of steps, got {steps}")
    if args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    count = _device_count(args.devices)
    devices = str(args.devices).strip()
    trainer_args = {"accelerator": args.accelerator, "devices": devices if "," in devices else count}
    if args.strategy is not None:
        trainer_args["strategy"] = args.strategy
    elif count > 1:
        trainer_args["strategy"] = "ddp"
    if args.precision is not None:
        trainer_args["precision"] = args.precision
    if args.num_nodes != 1:
        trainer_args["num_nodes"] = whole("--num-nodes", args.num_nodes, minimum=1)
        trainer_args.setdefault("strategy", "ddp")
    if args.warm_steps is not None:
        whole("--warm-steps", args.warm_steps, minimum=1)
    if (args.warm_steps is not None or args.warm_input is not None) and not args.warm_start:
        raise ValueError("--warm-steps and --warm-input set how slices are warm-started: give --warm-start too")
    if args.heldout_slices != "all" and not (args.warm_start and args.stop == "heldout"):
        raise ValueError(f"--heldout-slices {args.heldout_slices} chooses which slices of a warm-started chain hold "
                         f"samples out: give --warm-start and --stop heldout too")
    if args.refit_steps is not None:
        whole("--refit-steps", args.refit_steps, minimum=0)
        if args.stop != "heldout":
            raise ValueError("--refit-steps refits a slice after its held-out stop: give --stop heldout too")
    if args.mean_with is not None:
        if kind != "mri":
            raise ValueError(f"--mean-with {args.mean_with} averages with compressed sensing of multi-coil k-space: it "
                             f"needs fastMRI files, but --data holds images")
        model_args["mean_with"] = args.mean_with
        if args.mean_lamda is not None:
            model_args["mean_lamda"] = non_negative("--mean-lamda", args.mean_lamda)
    elif args.mean_lamda is not None:
        raise ValueError(f"--mean-lamda {args.mean_lamda} is the lambda of the --mean-with image: give --mean-with too")
    holdout = 0.0
    if args.stop == "heldout":
        check_holds_out(kind, data_args)
        holdout = check_holdout_fraction(args.holdout_fraction)
        if holdout == 0.0:
            raise ValueError("--stop heldout needs --holdout-fraction in (0, 0.5)")
        model_args["holdout_fraction"] = holdout
    plan = Plan(kind, items, weights, Path(args.out), int(steps), int(args.chunk_size), model_args, data_args,
                trainer_args, bool(args.overwrite), warm_start=bool(args.warm_start), warm_steps=args.warm_steps,
                warm_input=args.warm_input or "auto",
                stop=args.stop, holdout_fraction=holdout, patience=whole("--patience", args.patience, minimum=1),
                refit_steps=args.refit_steps, heldout_slices=args.heldout_slices)
    check_output(plan.out)
    check_data(plan)
    return plan


def check_output(out: Path) -> None:
    """``--out`` must be a folder that can be written (created when missing)."""
    from ugodit_pl.callbacks import ReconstructionWriter

    ReconstructionWriter(out).check_output_dir("--out")


def check_data(plan: Plan) -> None:
    """Read and check every item (values, sizes) before anything is fitted; the first bad file is named."""
    build_datamodule(plan, plan.items).check()


def check_holds_out(kind: str, data_args: Dict[str, Any]) -> None:
    """``--stop heldout`` needs samples to hold out: k-space (fastMRI files) or observed pixels (inpainting)."""
    if kind == "mri":
        return
    import inspect

    from ugodit_pl.datamodules import DegradedImageDataModule

    operator = data_args.get("operator", inspect.signature(DegradedImageDataModule).parameters["operator"].default)
    if not str(operator).startswith("inpainting"):
        raise ValueError(f"--stop heldout holds out measured samples: k-space of fastMRI files or observed pixels of "
                         f"inpainting; these images are degraded by {operator!r} (give a --config with operator: "
                         f"inpainting, or fit without --stop heldout)")


def check_weights_fit_data(weights: Path, payload: Dict[str, Any], kind: str) -> None:
    """Refuse transferable weights pre-trained for another kind of data (MRI vs images), naming --weights."""
    from ugodit_pl.methods.transferable import check_weights_task

    try:
        check_weights_task(payload, mri=kind == "mri")
    except ValueError as error:
        raise ValueError(f"--weights {weights}: {error}") from None


def _device_count(devices: str) -> int:
    """How many processes ``--devices`` asks for ("auto": one)."""
    text = str(devices).strip()
    if text == "auto":
        return 1
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"--devices must be a positive int, 'auto' or a comma-separated list of device ids, "
                         f"got {devices!r}")
    return count


def chunks(items: Sequence[Item], size: int, world_size: int = 1) -> List[List[Item]]:
    """Split ``items`` into chunks of ``size`` (rounded up to a multiple of ``world_size``); a last chunk
    with fewer items than processes joins the previous one, so every process always has an item.

    >>> [len(c) for c in chunks(list(range(10)), 4)]
    [4, 4, 2]
    >>> [len(c) for c in chunks(list(range(9)), 4, world_size=2)]
    [4, 5]
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if items and len(items) < world_size:
        raise ValueError(f"{len(items)} item(s) left to reconstruct but {world_size} devices: use --devices "
                         f"{len(items)} or fewer")
    size = max(size, world_size)
    size = -(-size // world_size) * world_size
    result = [list(items[i : i + size]) for i in range(0, len(items), size)]
    if len(result) > 1 and len(result[-1]) < world_size:
        result[-2].extend(result.pop())
    return result


def warm_chunks(items: Sequence[Item], world_size: int = 1) -> Tuple[List[List[Item]], Dict[Any, Optional[Item]]]:
    """The chunks of a warm-started run and the neighbour each item starts from (None: from scratch).

    Each of the ``world_size`` processes takes a contiguous slab of ``items`` (as even as possible) and
    fits it in order, one item per chunk: chunk k holds the k-th item of every slab, so process r fits
    row r and its chain runs between neighbours. Where slabs differ in length, the last items join the
    last full chunk (their process fits them beside their predecessor, both from the same neighbour).
    An item starts from the item before it in its slab when both are slices of the same file.

    >>> chunks_, source = warm_chunks([Item(Path("a.h5"), s) for s in range(5)], 2)
    >>> [[item.slice for item in chunk] for chunk in chunks_]
    [[0, 3], [1, 4, 2]]
    >>> {key[1]: None if item is None else item.slice for key, item in source.items()}
    {0: None, 1: 0, 2: 0, 3: None, 4: 3}
    """
    if world_size < 1 or (items and len(items) < world_size):
        raise ValueError(f"{len(items)} item(s) to reconstruct but {world_size} processes: use fewer devices or nodes")
    size, extra = divmod(len(items), world_size)
    slabs, start = [], 0
    for rank in range(world_size):
        length = size + (rank < extra)
        slabs.append(list(items[start:start + length]))
        start += length
    work = [[slab[k] for slab in slabs] for k in range(size)]
    if extra:
        leftovers = [slab[size] for slab in slabs[:extra]]
        if work:
            work[-1].extend(leftovers)
        else:
            work.append(leftovers)
    source: Dict[Any, Optional[Item]] = {}
    for slab in slabs:
        for position, item in enumerate(slab):
            back = 2 if extra and size and position == size else 1  # a leftover starts from its slab's item before last
            before = slab[position - back] if position >= back else None
            source[_hashable(item.key)] = before if before is not None and before.path == item.path else None
    return work, source


def warm_path(out: Path, item: Item) -> Path:
    """Where the warm state of ``item`` (the decoder its fit ended with) is kept, beside the output."""
    return out / ".warm" / f"{item.path.name}.slice_{int(item.slice or 0):04d}.pt"


# --------------------------------------------------------------------------------------------- fitting
def _is_global_zero() -> bool:
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) in ("0", "")


def build_datamodule(plan: Plan, chunk: Sequence[Item]):
    """The data module serving exactly the items of ``chunk`` (in order) as the test set."""
    from ugodit_pl.datamodules import DegradedImageDataModule, FastMRIDataModule

    if plan.kind == "mri":
        pairs = [(str(item.path), int(item.slice)) for item in chunk]
        return FastMRIDataModule(test_files=None, test_slices=pairs, role="test", **plan.data_args)
    return DegradedImageDataModule(images=[str(item.path) for item in chunk], role="test", **plan.data_args)


def build_method(plan: Plan, count: int, holdout: bool = True):
    """``UGoDITFit`` for ``count`` measurements with the plan's weights and settings (``holdout=False``: every
    measured sample fitted, for the refit after a held-out stop)."""
    from ugodit_pl.methods import UGoDITFit

    model_args = {k: v for k, v in plan.model_args.items() if holdout or k != "holdout_fraction"}
    try:
        return UGoDITFit(weights=str(plan.weights), num_measurements=count, **model_args)
    except TypeError as error:
        raise ValueError(f"the model settings {plan.model_args} do not fit UGoDITFit: {error}") from None


def fit_chunk(plan: Plan, chunk: Sequence[Item], writer, progress=None, label: str = "",
              warm: Optional[Sequence[Optional[Dict[str, Any]]]] = None) -> Tuple[Dict[str, Dict[str, Any]], Any]:
    """Fit one chunk (one Trainer.fit, sharded over the processes), row i warm-started from ``warm[i]`` where
    given; after a held-out stop, a second fit on every measured sample (``plan.refit()`` steps) continues
    from the stopped one. Returns ({item label: the metrics the writer stored with it, and with ``--mean-with``
    the lambda of its compressed-sensing image} for every item, the fitted method)."""
    from ugodit_pl.callbacks import HeldOutEarlyStopping

    started_warm = bool(warm) and all(state is not None for state in warm)
    ruled = plan.holds_out(warm=started_warm)  # this chunk holds samples out and stops by the held-out rule
    datamodule = build_datamodule(plan, chunk)
    method = build_method(plan, len(chunk), holdout=ruled)
    for row, state in enumerate(warm or []):
        if state is not None:
            method.warm_start(state, rows=[row], input=plan.warm_input)
    steps, refit = plan.steps_for(warm=started_warm), plan.refit() if ruled else 0
    stop = [HeldOutEarlyStopping(patience=plan.patience)] if ruled else []
    started = time.perf_counter()
    trainer = _fit(plan, method, datamodule, steps, stop + ([] if refit else [writer]), progress, label)
    if refit:  # the stopped fit's networks and best image, fitted on every sample (the held-out ones too)
        stopped, method = method, build_method(plan, len(chunk), holdout=False)
        for row in range(len(chunk)):
            method.warm_start(stopped.warm_state(row), rows=[row], input="auto")
        writer.continues(steps=int(trainer.global_step), seconds=time.perf_counter() - started)
        trainer = _fit(plan, method, datamodule, refit, [writer], progress, f"{label} refit")
    if not trainer.is_global_zero:  # the main process reports; the volumes are its to assemble
        return {}, method
    lamdas = method.fit_state.classical_lamdas.tolist() if method.mean_with is not None else None
    return {item.label: dict(writer.metrics(*_writer_key(item)) or {},
                             **({"mean_lamda": lamdas[row]} if lamdas is not None else {}))
            for row, item in enumerate(chunk)}, method


def _fit(plan: Plan, method: Any, datamodule: Any, steps: int, callbacks: List[Any], progress: Any, label: str):
    """One ``Trainer.fit`` of ``steps`` with a progress line; an interrupt tells how to resume. Returns the trainer."""
    import pytorch_lightning as pl

    task_id = None
    if progress is not None:
        task_id = progress.add_task(label, total=steps)
        callbacks = [*callbacks, step_progress(progress, task_id)]
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
                         **plan.trainer_args)
    try:
        trainer.fit(method, datamodule=datamodule)
    except BaseException as stop:
        if trainer.interrupted and trainer.is_global_zero:
            print(f"interrupted: the slices written so far are kept in {plan.out}; run the same command again to "
                  f"resume", flush=True)
        if isinstance(stop, SystemExit) and trainer.interrupted:  # Lightning's exit(1) after a KeyboardInterrupt
            raise KeyboardInterrupt from None
        raise
    if progress is not None:
        progress.remove_task(task_id)
    return trainer


def _writer_key(item: Item) -> Tuple[Any, ...]:
    return (item.path.name,) if item.slice is None else (item.path.name, int(item.slice))


@quiet_lightning()
def run(plan: Plan, *, show_progress: bool = True, console=None) -> Dict[str, Any]:
    """Reconstruct the plan's pending items chunk by chunk; print and return the summary.

    A chunk whose fit diverged writes its finite slices and names the others in ``summary["failed"]``;
    the run goes on with the next chunks.
    """
    from rich.console import Console

    from ugodit_pl.callbacks import ReconstructionWriter
    from ugodit_pl.callbacks.writer import NonFiniteReconstruction

    console = console or Console()
    main_process = _is_global_zero()
    writer = ReconstructionWriter(plan.out, overwrite=plan.overwrite)
    if main_process:
        writer.remove_stale_temporaries()
    pending_keys = writer.pending([item.key for item in plan.items]) if not plan.overwrite else \
        [item.key for item in plan.items]
    pending_set = set(map(_hashable, pending_keys))
    pending = [item for item in plan.items if _hashable(item.key) in pending_set]
    world = _device_count(plan.trainer_args.get("devices", 1)) * int(plan.trainer_args.get("num_nodes", 1))
    source: Dict[Any, Optional[Item]] = {}
    if plan.warm_start:
        work, source = warm_chunks(plan.items, world) if plan.items else ([], {})
        work = [chunk for chunk in work if _pending_chunk(chunk, pending_set)]
    else:
        work = chunks(pending, plan.chunk_size, world) if pending else []
    if main_process:
        what = "slices" if plan.kind == "mri" else "images"
        largest = max((len(c) for c in work), default=0)
        console.print(f"[bold]ugodit reconstruct[/bold]: {len(plan.items)} {what} in "
                      f"{describe_source(plan.items)}; "
                      f"{len(plan.items) - len(pending)} already written in {plan.out}, {len(pending)} to do in "
                      f"{len(work)} chunk(s) of up to {largest}; {plan.steps} steps each with the transferable "
                      f"weights {plan.weights}")
    progress = progress_display(show_progress and main_process, console, description_width=40)
    done_now: Dict[str, Dict[str, Any]] = {}
    failed: List[str] = []
    warm_states: Dict[Any, Dict[str, Any]] = {}
    fitting = time.perf_counter()
    with progress or contextlib.nullcontext():
        overall = progress.add_task("items", total=len(plan.items), completed=len(plan.items) - len(pending)) \
            if progress is not None else None
        for number, chunk in enumerate(work, start=1):
            label = f"chunk {number}/{len(work)} ({len(chunk)} items)"
            warm = [_warm_state_of(plan, source.get(_hashable(item.key)), warm_states) for item in chunk] \
                if plan.warm_start else None
            try:
                results, method = fit_chunk(plan, chunk, writer, progress, label, warm)
                if plan.warm_start:
                    warm_states = _keep_warm_states(plan, chunk, method, main_process)
            except NonFiniteReconstruction as error:
                bad = {_hashable(key) for key in error.keys}
                failed += [item.label for item in chunk if _hashable(item.key) in bad]
                results = {item.label: writer.metrics(*_writer_key(item)) or {} for item in chunk
                           if _hashable(item.key) not in bad} if main_process else {}
                if main_process:
                    console.print(f"[red]  {error}[/red]")
            done_now.update(results)
            if main_process:
                for name, entry in results.items():
                    metric = (f"PSNR {entry['psnr']:.2f} dB, SSIM {entry['ssim']:.3f}" if "psnr" in entry
                              else "no ground truth")
                    console.print(f"  done {name}: {metric} ({entry.get('seconds', 0.0):.1f} s)")
                if progress is not None:
                    progress.update(overall, advance=len(chunk))
    summary = summarize(plan, done_now, failed, writer, seconds=time.perf_counter() - fitting)
    if main_process:
        write_json(plan.out / SUMMARY, summary)
        console.print(summary_table(summary))
        if failed:
            console.print(f"[red]not reconstructed (not finite): {', '.join(failed)}; run the same command again to "
                          f"fit them again[/red]")
    return summary


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _pending_chunk(chunk: Sequence[Item], pending: set) -> bool:
    """Whether a warm-start chunk is still to do: all of its items (done in lockstep), or none of them."""
    todo = [_hashable(item.key) in pending for item in chunk]
    if any(todo) and not all(todo):
        names = ", ".join(item.label for item, left in zip(chunk, todo) if not left)
        raise ValueError(f"a warm-started chunk is partly written ({names} written, the rest not): run again with "
                         f"--overwrite, or without --warm-start")
    return all(todo)


def _warm_state_of(plan: Plan, neighbour: Optional[Item], kept: Dict[Any, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The state a slice starts from: its neighbour's, from this run or from the file an earlier run kept."""
    from ugodit_pl.methods.warm import load_warm_state

    if neighbour is None:
        return None
    key = _hashable(neighbour.key)
    if key in kept:
        return kept[key]
    path = warm_path(plan.out, neighbour)
    return load_warm_state(path) if path.is_file() else None


def _keep_warm_states(plan: Plan, chunk: Sequence[Item], method: Any, main_process: bool) -> Dict[Any, Dict[str, Any]]:
    """The warm states of the chunk's fitted items, kept for the next chunk and (by the main process) on disk."""
    from ugodit_pl.methods.warm import save_warm_state

    states = {}
    for row, item in enumerate(chunk):
        state = method.warm_state(row)
        states[_hashable(item.key)] = state
        if main_process:
            save_warm_state(state, warm_path(plan.out, item))
    return states


def describe_source(items: Sequence[Item]) -> str:
    """The folder the items come from, or how many folders."""
    folders = sorted({str(item.path.parent) for item in items})
    return folders[0] if len(folders) == 1 else f"{len(folders)} folders"


def item_metrics(items: Sequence[Item], kind: str, done_now: Dict[str, Dict[str, Any]], failed: Sequence[str],
                 writer) -> Dict[str, Any]:
    """Every item with its status and the metrics stored with it (from this run or an earlier one), their mean
    PSNR and SSIM, and for MRI every volume's metrics in fastMRI's convention."""
    rows = []
    for item in items:
        entry = dict(done_now.get(item.label) or writer.metrics(*_writer_key(item)) or {})
        entry["name"] = item.label
        entry["status"] = ("failed (not finite)" if item.label in failed else
                           "reconstructed" if item.label in done_now else
                           "already written" if writer.is_done(*_writer_key(item)) else "not written")
        rows.append(entry)
    psnrs = [r["psnr"] for r in rows if "psnr" in r]
    ssims = [r["ssim"] for r in rows if "ssim" in r]
    volumes = {}
    if kind == "mri":
        for name in sorted({item.path.name for item in items}):
            values = writer.volume_metrics(name)
            if values is not None:
                volumes[name] = {k: round(v, 4) for k, v in values.items()}
    return {
        "items": rows,
        "failed": list(failed),
        "mean_psnr": round(sum(psnrs) / len(psnrs), 4) if psnrs else None,
        "mean_ssim": round(sum(ssims) / len(ssims), 4) if ssims else None,
        "volumes": volumes,
        "metrics": ("per item: PSNR / SSIM (/ NMSE) of each slice against its target with the slice's own maximum as "
                    "data range (mean_psnr, mean_ssim: their means); per volume: fastMRI's evaluate, the volume's "
                    "maximum as data range, PSNR over the whole volume"),
    }


def summarize(plan: Plan, done_now: Dict[str, Dict[str, Any]], failed: Sequence[str], writer,
              seconds: float = 0.0) -> Dict[str, Any]:
    """:func:`item_metrics` of the plan's items, with the run's settings and its throughput: ``seconds`` of
    reconstruction (reading, fitting and writing the chunks) and the items per hour it gives."""
    return {
        "data": describe_source(plan.items),
        "weights": str(plan.weights),
        "out": str(plan.out),
        "steps": plan.steps,
        **item_metrics(plan.items, plan.kind, done_now, failed, writer),
        "chunk_size": plan.chunk_size,
        "warm_start": plan.warm_start,
        "warm_steps": plan.steps_for(warm=True) if plan.warm_start else None,
        "stop": plan.stop,
        "refit_steps": plan.refit(),
        "heldout_slices": plan.heldout_slices if plan.stop == "heldout" and plan.warm_start else None,
        "mean_with": plan.model_args.get("mean_with"),
        "seconds": round(seconds, 3),
        "items_per_hour": items_per_hour(len(done_now), seconds),
    }


def items_per_hour(count: int, seconds: float) -> Optional[float]:
    """Throughput of a run that reconstructed ``count`` items in ``seconds`` (None when it did nothing).

    >>> items_per_hour(3, 36.0)
    300.0
    """
    return round(count * 3600.0 / round(seconds, 3), 1) if count and seconds >= 1e-3 else None


def summary_table(summary: Dict[str, Any]):
    """The final rich table: one row per item (with its lambda where the items record one: ``ugodit classical``).
    ``summary["command"]`` names the command (default ``ugodit reconstruct``), ``summary["how"]`` how it went
    through the items (default: chunks, or warm-started chains)."""
    from rich.table import Table

    table = Table(title=f"{summary.get('command', 'ugodit reconstruct')}: {len(summary['items'])} items -> "
                        f"{summary['out']}")
    lamdas = any("lamda" in row for row in summary["items"])
    for column, justify in (("item", "left"), ("status", "left"), ("PSNR (dB)", "right"), ("SSIM", "right"),
                            ("seconds", "right"), *((("lambda", "right"),) if lamdas else ())):
        table.add_column(column, justify=justify)
    for row in summary["items"]:
        table.add_row(row["name"], row["status"], f"{row['psnr']:.2f}" if "psnr" in row else "-",
                      f"{row['ssim']:.3f}" if "ssim" in row else "-",
                      f"{row['seconds']:.1f}" if "seconds" in row else "-",
                      *((f"{row['lamda']:g}" if "lamda" in row else "-",) if lamdas else ()))
    captions = []
    if summary["mean_psnr"] is not None:
        captions.append(f"mean of the slices: PSNR {summary['mean_psnr']:.2f} dB, SSIM {summary['mean_ssim']:.3f} "
                        f"(each slice's maximum as data range)")
    for name, values in summary.get("volumes", {}).items():
        captions.append(f"volume {name}: PSNR {values['psnr']:.2f} dB, SSIM {values['ssim']:.3f} (fastMRI: the "
                        f"volume maximum as data range)")
    if summary.get("items_per_hour"):
        what = "slices" if summary["volumes"] or any("slice_" in row["name"] for row in summary["items"]) else "images"
        done = sum(row["status"] == "reconstructed" for row in summary["items"])
        how = summary.get("how") or ("warm-started, one slice per process at a time" if summary.get("warm_start")
                                     else f"chunks of {summary['chunk_size']}")
        count = f"{done} {what[:-1] if done == 1 else what}"
        captions.append(f"this run: {count} in {summary['seconds']:.0f} s, {summary['items_per_hour']:.0f} {what} "
                        f"per hour ({how})")
    table.caption = "\n".join(captions) or None
    return table


# --------------------------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The ``ugodit reconstruct`` options."""
    parser = argparse.ArgumentParser(
        prog="ugodit reconstruct",
        description="Reconstruct every slice of a folder of fastMRI files (or every image of a folder) with "
                    "UGoDIT's transferable weights; resumable: run the same command again after an interruption.",
    )
    parser.add_argument("--data", required=True, help="a fastMRI .h5 file, a folder of them, or a folder of images")
    parser.add_argument("--weights", required=True, help="transferable weights written by UGoDIT pre-training")
    parser.add_argument("--out", required=True, help="output folder (volumes <file>.h5 or <image>.png)")
    parser.add_argument("--config", default=None, help="a `ugodit fit` YAML (e.g. configs/mri_ugodit_fit_4x.yaml) "
                        "for the model and data settings")
    parser.add_argument("--steps", type=int, default=None, help="test-time steps per chunk (default: the config's "
                        f"trainer.max_steps, else {DEFAULT_STEPS['mri']} for MRI and {DEFAULT_STEPS['image']} for images)")
    parser.add_argument("--slices", default="all", help="slices of each file: all (default), middle, 'a:b', an int")
    parser.add_argument("--chunk-size", type=int, default=4,
                        help="items fitted together in one Trainer.fit (default 4)")
    parser.add_argument("--lr", type=float, default=None, help="decoder learning rate (default: the config's, else "
                        f"{SEQUENTIAL_DEFAULTS['unet']['lr']:g} for the U-Net and {SEQUENTIAL_DEFAULTS['skip']['lr']:g} "
                        "for the skip network: ugodit_pl.methods.defaults)")
    parser.add_argument("--devices", default="1", help="devices per chunk: a number (default 1) or a list of ids "
                        "such as 0,1; more than one shards each chunk over processes (DDP)")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto (default), cpu, gpu")
    parser.add_argument("--strategy", default=None, help="Lightning strategy (default: ddp when devices > 1)")
    parser.add_argument("--precision", default=None, help="Lightning precision, e.g. 32-true (default) or 64-true")
    degraded = parser.add_mutually_exclusive_group()
    degraded.add_argument("--degraded", dest="degraded", action="store_true", default=None,
                          help="images: the files are already degraded measurements (no ground truth)")
    degraded.add_argument("--clean", dest="degraded", action="store_false",
                          help="images: the files are clean; degrade them with the config's operator and report PSNR")
    parser.add_argument("--warm-start", action="store_true",
                        help="fit the slices of each volume in order, each from its neighbour's fitted decoder "
                             "(each process a contiguous slab of slices, one slice at a time; the state of every "
                             "slice is kept in OUT/.warm so that an interrupted run resumes its chains)")
    parser.add_argument("--warm-steps", type=int, default=None,
                        help="steps of a warm-started slice (default: a third of --steps, rounded up)")
    parser.add_argument("--warm-input", default=None, choices=INPUTS,
                        help="where a warm-started slice's input starts: its own A^H y (measurement), the neighbour's "
                             "image with the slice's measured k-space put in (neighbour), or auto (default): the "
                             "neighbour's where the method's input is A^H y (aSeqDIP, Self-Guided DIP, UGoDIT), its "
                             "own otherwise (DIP's noise)")
    parser.add_argument("--stop", default="none", choices=("none", "heldout"),
                        help="heldout: hold out --holdout-fraction of the sampled k-space (or of an inpainted image's "
                             "observed pixels), stop a slice when its error there has not fallen for --patience steps, "
                             "keep its best reconstruction and refit it on every sample (--refit-steps); none "
                             "(default): fixed steps")
    parser.add_argument("--holdout-fraction", type=float, default=0.1,
                        help="the part of the sampled k-space outside the calibration region (or of the observed "
                             "pixels) held out (default 0.1)")
    parser.add_argument("--patience", type=int, default=200, help="steps without improvement before a stop (default 200)")
    parser.add_argument("--refit-steps", type=int, default=None,
                        help="after a held-out stop, fit the slice on every measured sample for this many steps, from "
                             "where it stopped (default: a quarter of a warm slice's steps; 0: only put the measured "
                             "samples back into the kept image)")
    parser.add_argument("--heldout-slices", default="all", choices=HELDOUT_SLICES,
                        help="with --warm-start --stop heldout: all (default): every slice holds samples out and "
                             "stops by the rule; warm: only the warm-started ones, the first slice of each chain fits "
                             "every sample for --steps")
    parser.add_argument("--mean-with", default=None, choices=MEAN_SOURCES,
                        help="write the mean of each slice's network reconstruction and its L1-wavelet (or total-"
                             "variation) reconstruction, lambda chosen without ground truth by held-out k-space "
                             "cross-validation (a warm-started slice takes its neighbour's); on the benchmarks' "
                             "means 0.25 to 1.1 dB above the network alone (docs/RESULTS.md, decision 13); "
                             "default: the network's alone")
    parser.add_argument("--mean-lamda", type=float, default=None,
                        help="with --mean-with: its lambda for every slice (relative to the k-space scaled so that "
                             "the zero-filled image has max 1), one solve instead of the search; e.g. the "
                             "mean_lamda that reconstruct_summary.json records for a slice of an earlier scan of the "
                             "same protocol")
    parser.add_argument("--num-nodes", type=int, default=1,
                        help="machines taking part (Lightning's num_nodes, DDP): launch the same command on each, "
                             "with torchrun or SLURM's srun (README, 'Multi-GPU and multi-node')")
    parser.add_argument("--overwrite", action="store_true", help="redo items that are already written")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    """``ugodit reconstruct ...``; returns the exit code (1 when some item could not be reconstructed)."""
    args = parse_args(argv)
    plan = make_plan(args)
    summary = run(plan, show_progress=not args.quiet)
    return 1 if summary["failed"] else 0
