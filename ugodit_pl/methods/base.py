"""What every method shares: the fitting loop's two ends, the per-row state, EMA, logging, DDP.

A method fits a fixed set of N measurements (rows 0..N-1); one Lightning training step is one
optimiser step, and every batch of a process carries that process's rows (``batch["index"]``).
The loop, with the hooks it lives in (docs/ARCHITECTURE.md, "The fitting loop")::

    setup("fit")      prepare(first batch): scales s_i from y_i alone, inputs z_i, the FitState
    training_step     step = begin_step(batch)             rows, y_i / s_i, A_i (checked)
                      z = the rows' inputs                  (aSeqDIP / UGoDIT: z <- f(z) every N steps)
                      out = f(z)                            forward (the method's networks)
                      loss = the method's objective         (DESIGN.md's table)
                      return end_step(step, loss, ...)      EMA and last output, step counters, logs
                                                            (``logs_metrics_at``: every log_every_n_steps)
    Lightning         backward, gradient clipping, optimiser step (the weights; z of Self-Guided DIP)

Each method's ``training_step`` is that sequence, next to its equation. Nothing happens in
``optimizer_step`` or after it, so Lightning's own flags (``gradient_clip_val``,
``accumulate_grad_batches``, ``precision``) work unchanged. An input update due after step k is
made at the start of step k + 1 from the state after step k, so a checkpoint or snapshot taken
between two steps resumes exactly.

Under DDP each process multiplies its loss by the world size, because DDP averages gradients over
processes while the objectives sum over measurements: a shared encoder then receives the sum of all
measurements' gradients and each measurement's own parameters exactly their own gradient, so N
processes compute what one process computes.

Usage (any subclass)::

    method = ASeqDIP(num_measurements=1, network="unet", network_args={"channels": [16, 32, 64, 64]})
    pl.Trainer(max_steps=500).fit(method, datamodule)   # or train_dataloaders= a loader of fixed batches
    image = method.reconstruction                        # (N, C, H, W), in the measurement's units
"""

from __future__ import annotations

import inspect
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn

from ugodit_pl.methods.arguments import check_choice, fraction, positive, whole
from ugodit_pl.methods.inputs import INPUT_INITS, initial_input
from ugodit_pl.methods.losses import check_loss_norm, residual_norm
from ugodit_pl.methods.networks import NETWORK_INITS
from ugodit_pl.methods.optim import adam, check_optimizer_args
from ugodit_pl.methods.scaling import apply_scale, measurement_scale, undo_scale
from ugodit_pl.methods.state import FitState
from ugodit_pl.operators.base import Operator

# The methods define validation_step for ``ugodit validate`` (metrics of a finished fit); a fit has no
# validation set, so Lightning's warning about the missing val_dataloader is noise the library causes.
warnings.filterwarnings("ignore", message=r".*You defined a `validation_step` but have no `val_dataloader`.*")

OUTPUTS = ("ema", "last")
EMA_VARIANTS = ("corrected", "authors")

# The authors' learning rates (DESIGN.md), by network: natural images use the skip network,
# MRI the U-Net. Methods look their default up here when ``lr`` is None.
DEFAULT_LR = {"skip": 0.01, "unet": 3e-4}


def default_residual(network: str, input_init: str) -> bool:
    """``residual=None``: f(z) = z + g(z) for the U-Net with an image input (see ``ReconstructionMethod``).

    >>> default_residual("unet", "measurement"), default_residual("unet", "noise"), default_residual("skip", "measurement")
    (True, False, False)
    """
    return network == "unet" and input_init != "noise"


def world_size(module: pl.LightningModule) -> int:
    """Number of processes taking part in the fit (1 outside a Trainer or without DDP)."""
    trainer = module._trainer if hasattr(module, "_trainer") else None
    if trainer is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return trainer.world_size


def training_batch(trainer: pl.Trainer) -> Mapping[str, Any]:
    """The measurements this process will fit: its first training batch, read in ``setup``.

    A ugodit-pl data module gives its collated batch (``.batch``, after its own ``setup``); any
    other data module or dataloader gives the first item of its training dataloader.
    """
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None and isinstance(getattr(type(datamodule), "batch", None), property):
        return datamodule.batch
    source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)
    loader = source.dataloader() if source is not None else None
    if loader is None:
        raise ValueError("the fit has no training data: pass a data module or train_dataloaders to trainer.fit")
    try:
        return next(iter(loader))
    except StopIteration:
        raise ValueError("the training dataloader is empty: it must serve the measurements to fit") from None


def compile_arguments(compile: Union[bool, Mapping[str, Any], None]) -> Optional[Dict[str, Any]]:
    """The ``torch.compile`` arguments a method's ``compile`` option asks for (None: no compilation).

    Static shapes (``dynamic=False``: a fit's shapes never change, and a dynamic-shape graph is what
    failed to compile when a second fit of another size recompiled), and where torch has it
    ``isolate_recompiles=True`` (each method's compilations count against its own limit, not against
    those of the fits before it); the dict given overrides them.

    >>> compile_arguments(False), compile_arguments(True)["dynamic"], compile_arguments({"mode": "max-autotune"})["mode"]
    (None, False, 'max-autotune')
    """
    if compile is None or compile is False:
        return None
    if compile is not True and not isinstance(compile, Mapping):
        raise TypeError(f"compile must be True, False or a dict of torch.compile arguments, got {compile!r}")
    known = set(inspect.signature(torch.compile).parameters) - {"model"}
    given = {} if compile is True else dict(compile)
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"compile: unknown torch.compile argument(s) {unknown}; it takes {sorted(known)}")
    defaults = {"dynamic": False, **({"isolate_recompiles": True} if "isolate_recompiles" in known else {})}
    return {**defaults, **given}


def logs_metrics_at(trainer: pl.Trainer, step: int) -> bool:
    """Whether the methods log ``train/loss`` and ``train/data_consistency`` at optimiser step ``step`` (from 1).

    The first step, the last (``max_steps``) and every ``trainer.log_every_n_steps``-th: the steps whose
    values Lightning's loggers write. Between them ``trainer.callback_metrics`` and the progress bar
    hold the latest logged values. Logging a value costs Lightning about 1 ms (and an all-reduce under
    DDP), a few % of a small fit step; ``log_every_n_steps=1`` logs every step.

    >>> class T: log_every_n_steps, max_steps = 10, 25
    >>> [s for s in range(1, 26) if logs_metrics_at(T, s)]
    [1, 10, 20, 25]
    """
    return step == 1 or step % max(1, int(trainer.log_every_n_steps)) == 0 or step >= int(trainer.max_steps)


def measurement_fingerprints(y: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """(num_rows,) float64: sum |y_i| of each row's measurement (rows not in ``rows`` are 0).

    The fit checks every step that a row's measurement is the one it was set up with.
    """
    sums = y.detach().abs().to(torch.float64).reshape(len(rows), -1).sum(dim=1)
    out = torch.zeros(num_rows, dtype=torch.float64, device=y.device)
    out[rows.to(y.device)] = sums
    return out


@dataclass
class CheckedBatch:
    """A training batch that ``begin_step`` has checked, and what it derived from it.

    It recognises the batch by identity: the same ``y``, ``operator`` and ``index`` objects, with ``y``
    not modified in place since (its version counter). A loader that builds new tensors every step is
    checked every step. ``support`` is the operator's image support (None: the whole image); the
    outputs are recorded inside it only (the data never constrain the pixels outside it, so what the
    network puts there is arbitrary; the reconstructions are reported inside the support only and
    the loss is unaffected).
    """

    parts: Tuple[Any, ...]  # weak references to y, the operator and the index (or None)
    version: int
    rows: torch.Tensor
    row_list: List[int]
    y: torch.Tensor
    support: Optional[torch.Tensor]

    @staticmethod
    def _parts(batch: Mapping[str, Any]) -> Optional[Tuple[Any, ...]]:
        index = batch.get("index")
        if index is not None and not isinstance(index, torch.Tensor):
            return None  # a list or tuple: no identity to rely on
        return (weakref.ref(batch["y"]), weakref.ref(batch["operator"]), None if index is None else weakref.ref(index))

    @classmethod
    def of(cls, batch: Mapping[str, Any], rows: torch.Tensor, row_list: List[int], y: torch.Tensor,
           support: Optional[torch.Tensor]) -> "CheckedBatch":
        return cls(cls._parts(batch) or (), batch["y"]._version, rows, row_list, y, support)

    def serves(self, batch: Mapping[str, Any]) -> bool:
        """Whether ``batch`` is the checked one, unchanged."""
        index = batch.get("index")
        if not self.parts or (index is None) != (self.parts[2] is None) or not isinstance(index, (torch.Tensor, type(None))):
            return False
        same = self.parts[0]() is batch["y"] and self.parts[1]() is batch["operator"]
        return same and (index is None or self.parts[2]() is index) and batch["y"]._version == self.version


@dataclass
class Step:
    """What one training step works on: this process's rows, their normalised measurements, their operator."""

    rows: torch.Tensor      # (B,) positions in the set, on the module's device
    row_list: List[int]     # the same, as Python ints
    counts: List[int]       # training steps each row has taken before this one
    y: torch.Tensor         # (B, ...) the measurements divided by their scales
    operator: Operator
    support: Optional[torch.Tensor] = None  # (B|1, 1, H, W): where the outputs are recorded (None: everywhere)


class ReconstructionMethod(pl.LightningModule):
    """Base class of the methods. See the module docstring for the loop.

    Args:
        num_measurements: N, the size of the set fitted together (the data module's
            ``num_measurements``).
        network: network name for ``ugodit_pl.nets.build_network`` (``"unet"`` or ``"skip"``).
        network_args: its constructor arguments.
        network_init: ``"default"`` (PyTorch's layer initialisation) or ``"normal"`` (the authors'
            notebooks: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm weights, zero biases).
        lr: Adam learning rate of the network weights; None takes the authors' default for the
            network (``DEFAULT_LR``).
        optimizer_args: further arguments of ``torch.optim.Adam`` (``betas``, ``weight_decay``,
            ``fused``, ...; see ``ugodit_pl.methods.optim``).
        loss_norm: ``"mse"`` (mean squared error) or ``"l2"`` (unsquared norm).
        output: what ``reconstruction`` returns: ``"ema"`` (exponential moving average of the
            outputs) or ``"last"``.
        ema_decay: EMA weight of the past (0.99 in the authors' code).
        ema_variant: ``"corrected"`` (ours: every step, divided by ``1 - ema_decay**t`` after t outputs
            as Adam does with its moments, so early EMAs average the outputs seen so far) or
            ``"authors"`` (the authors' code: once every input-update period, starting from zeros,
            on the output clipped to [0, 1] for natural images).
        normalize: divide each measurement by its scale (DESIGN.md "Scale") and undo it on the
            outputs; None = only for complex (MRI) measurements.
        normalize_percentile: the percentile of |A^H y| that the scale maps to 1.
        residual: the network predicts a correction of its input, f(z) = z + g(z), with g's output
            layer starting at zero, so the fit starts from z (A^H y: every measured frequency is in the
            output from the first step, where a plain network first has to learn them). Needs an image
            input (not ``input_init="noise"``) and a network whose output is not squashed (the skip
            net's ``need_sigmoid=False``). None (default) = True for the U-Net with an image input
            (ours; +1.1 to +2.0 dB on the real-MRI panel at 600 steps, docs/RESULTS.md), False
            otherwise; False is the papers' network.
        input_init: how the input starts (see ``ugodit_pl.methods.inputs``).
        input_channels: channels of a noise input (default: the network's ``in_channels``).
        seed: seed of every random choice of the method (initialisation, noise).
        compile: run the network through ``torch.compile`` (Inductor): True, or a dict of
            ``torch.compile`` arguments (``{"mode": "max-autotune"}``, ``{"backend": "eager"}``; see
            ``compile_arguments``). The first step waits for the compilation (30 to 50 s for the
            width-16 U-Net on a 2-core CPU; about 3 s when Inductor's on-disk cache already holds the
            graph of that size, as for the second slice of a folder), the later ones run about x1.4
            faster there (docs/RESULTS.md, "Speed"): it pays for long fits and for folders, not for one
            600-step fit. Where the network cannot be compiled, the fit warns once and runs eagerly.
    """

    #: Whether the inputs z are optimised with the weights (Self-Guided DIP).
    optimises_inputs = False

    def __init__(
        self,
        *,
        num_measurements: int = 1,
        network: str = "unet",
        network_args: Optional[Dict[str, Any]] = None,
        network_init: str = "default",
        lr: Optional[float] = None,
        optimizer_args: Optional[Dict[str, Any]] = None,
        loss_norm: str = "mse",
        output: str = "ema",
        ema_decay: float = 0.99,
        ema_variant: str = "corrected",
        normalize: Optional[bool] = None,
        normalize_percentile: float = 99.0,
        residual: Optional[bool] = None,
        input_init: str = "measurement",
        input_channels: Optional[int] = None,
        seed: int = 0,
        compile: Union[bool, Dict[str, Any]] = False,
    ) -> None:
        super().__init__()
        check_loss_norm(loss_norm)
        check_choice("output", output, OUTPUTS)
        check_choice("input_init", input_init, INPUT_INITS)
        check_choice("ema_variant", ema_variant, EMA_VARIANTS)
        check_choice("network_init", network_init, NETWORK_INITS)
        self.num_measurements = whole("num_measurements", num_measurements, minimum=1)
        self.network_name = network.lower()
        self.network_args = dict(network_args or {})
        self.network_init = network_init
        self.lr = positive("lr", lr) if lr is not None else DEFAULT_LR.get(self.network_name, 1e-3)
        self.optimizer_args = check_optimizer_args(optimizer_args)
        self.loss_norm = loss_norm
        self.output = output
        self.ema_decay = fraction("ema_decay", ema_decay, 0.0, 1.0)
        self.ema_variant = ema_variant
        self.normalize = normalize
        self.normalize_percentile = positive("normalize_percentile", normalize_percentile)
        if self.normalize_percentile > 100:
            raise ValueError(f"normalize_percentile must be in (0, 100], got {normalize_percentile!r}")
        self.input_init = input_init
        self.residual = default_residual(self.network_name, input_init) if residual is None else bool(residual)
        if self.residual and input_init == "noise":
            raise ValueError("residual=True adds the network's input to its output: it needs an image input, not "
                             "input_init='noise'")
        if self.residual and self.network_name == "skip" and self.network_args.get("need_sigmoid", True):
            raise ValueError("residual=True needs an output that is not squashed: give the skip net "
                             "network_args need_sigmoid=False")
        self.input_channels = None if input_channels is None else whole("input_channels", input_channels, minimum=1)
        self.seed = whole("seed", seed, minimum=0)
        self.compile_args = compile_arguments(compile)
        self._compiled: Optional[Any] = None
        self.fit_state = FitState(trainable_inputs=self.optimises_inputs)
        self.final_output: Optional[torch.Tensor] = None
        self.last_index: Optional[torch.Tensor] = None
        self._complex_data = False
        self._checked_batch: Optional[CheckedBatch] = None

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__()
        state["_checked_batch"] = None  # weak references to a batch: not picklable, and only a shortcut
        state["_compiled"] = None
        return state

    # ----------------------------------------------------------------- what subclasses provide
    def network_output(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """f(z) for the rows ``rows`` of the set (z holds exactly those rows)."""
        raise NotImplementedError

    @property
    def schedule_period(self) -> int:
        """Steps between input updates (1 for methods without any); the authors' EMA follows it."""
        return 1

    # ----------------------------------------------------------------- objective terms
    @property
    def input_channel_count(self) -> int:
        """Channels of a noise input: ``input_channels`` or the network's ``in_channels``."""
        if self.input_channels is not None:
            return int(self.input_channels)
        return int(self.network_args.get("in_channels", 2 if self.network_name == "unet" else 3))

    def forward_rows(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """f(z) in the precision of the fitting state (mixed-precision networks return half floats);
        z + g(z) for a ``residual`` method."""
        output = self._network_call(z, rows).to(self.fit_state.ema.dtype)
        return z + output if self.residual else output

    def _network_call(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``network_output``, compiled when ``compile`` asks (eagerly, with one warning, where it cannot be)."""
        if self.compile_args is None:
            return self.network_output(z, rows)
        try:
            if self._compiled is None:
                self._compiled = torch.compile(self.network_output, **self.compile_args)
            return self._compiled(z, rows)
        except Exception as error:  # noqa: BLE001 - any compiler failure: the eager network still works
            warnings.warn(f"{type(self).__name__}: torch.compile could not compile the network ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}); running it without compiling")
            self.compile_args = None
            return self.network_output(z, rows)

    def data_term(self, output: torch.Tensor, step: Step) -> torch.Tensor:
        """||A f - y|| per measurement, in the chosen norm; the ``"mse"`` summed over the coils of multi-coil
        MRI (``Operator.samples_per_pixel``), so that lambda means the same with 8 or 20 coils."""
        norm = residual_norm(step.operator(output) - step.y, self.loss_norm)
        return norm * step.operator.samples_per_pixel if self.loss_norm == "mse" else norm

    def proximity_term(self, output: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """||f - z|| per measurement, in the chosen norm."""
        return residual_norm(output - z, self.loss_norm)

    # ----------------------------------------------------------------- preparing the fit
    def setup(self, stage: str) -> None:
        """Size the fitting state from the measurements before the optimiser is built (fit only)."""
        if stage == "fit":
            steps = self.trainer.max_steps
            if steps is None or steps < 1:
                raise ValueError(
                    f"{type(self).__name__}: the Trainer's max_steps must be a positive number of optimiser steps "
                    f"(a fit of an untrained network is as long as its max_steps), got {steps}"
                )
            self.prepare(training_batch(self.trainer))

    def _should_normalize(self, y: torch.Tensor) -> bool:
        return bool(y.is_complex()) if self.normalize is None else bool(self.normalize)

    def prepare(self, batch: Mapping[str, Any]) -> None:
        """Claim this process's rows and initialise their scales and inputs (``setup`` calls it).

        A state already sized for the same problem (a second ``trainer.fit`` that continues a fit)
        is kept as it is.
        """
        self._check_batch_layout(batch)
        raw_y, operator = batch["y"], batch["operator"]
        rows = self._index_of(batch).cpu()
        try:
            start = operator.init_input(raw_y)
            measured = tuple(operator(start).shape)
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"measurement {batch.get('name', '')} does not fit its operator: {error}") from error
        if measured != tuple(raw_y.shape):
            raise ValueError(
                f"measurement {batch.get('name', '')} has shape {tuple(raw_y.shape)} but its operator "
                f"{type(operator).__name__} produces {measured}"
            )
        self._complex_data = bool(raw_y.is_complex())
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        self.fit_state.owned = self._claim_rows(rows, device)
        if self._should_normalize(raw_y):
            scale = measurement_scale(operator, raw_y, self.normalize_percentile)
            y = apply_scale(raw_y, scale)
        else:
            scale, y = torch.ones(raw_y.shape[0], dtype=torch.float32), raw_y
        reference = batch.get("reference")
        if reference is not None and self._should_normalize(raw_y):
            reference = apply_scale(reference, scale)
        z = initial_input(self.input_init, operator, y, channels=self.input_channel_count, seed=self.seed,
                          rows=rows.tolist(), reference=reference)
        self._check_network_input(z, batch)
        state = self.fit_state
        state.fingerprints = measurement_fingerprints(raw_y, rows, self.num_measurements)
        self._checked_batch = None
        if state.fits(self.num_measurements, z.shape[1:], start.shape[1:]):
            return
        state.allocate(self.num_measurements, z.shape[1:], start.shape[1:], dtype=self.dtype, device=device)
        state.write("inputs", rows.to(device), z.to(device))
        state.write("scales", rows.to(device), scale.to(device))
        state.share("inputs", "scales")
        names = batch.get("name") or [None] * len(rows)
        for row, name in zip(rows.tolist(), names):
            state.names[row] = name

    @property
    def network_encoder(self) -> nn.Module:
        """The encoder of the method's network (UGoDIT's shared one, or the per-measurement networks')."""
        encoder = getattr(self, "encoder", None)
        return encoder if isinstance(encoder, nn.Module) else self.nets.template.encoder

    def _check_network_input(self, z: torch.Tensor, batch: Mapping[str, Any]) -> None:
        """The network takes z: its channels and, for its depth, its size (an error naming the measurements)."""
        encoder = self.network_encoder
        names = ", ".join(str(n) for n in (batch.get("name") or ["the measurements"]))
        first = next(m for m in encoder.modules() if isinstance(m, nn.Conv2d))
        if z.shape[1] != first.in_channels:
            raise ValueError(
                f"{names}: the network input has {z.shape[1]} channels but this {self.network_name} takes "
                f"{first.in_channels} (MRI images are 2 channels, real and imaginary; RGB images 3)"
            )
        height, width = z.shape[-2:]
        if min(height, width) < encoder.minimum_size or height % encoder.size_multiple or width % encoder.size_multiple:
            rule = f"at least {encoder.minimum_size} x {encoder.minimum_size}"
            if encoder.size_multiple > 1:
                rule += f" and multiples of {encoder.size_multiple}"
            raise ValueError(
                f"{names}: the image is {height} x {width} pixels but this {self.network_name} (its depth) needs {rule}; "
                f"use a larger image (crop_size, size) or a network with fewer levels"
            )

    def _claim_rows(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        """This process's rows as a mask; every row of the set must be fitted by exactly one process."""
        owned = torch.zeros(self.num_measurements, dtype=torch.bool)
        owned[rows] = True
        counts = owned.to(torch.float64)
        if world_size(self) > 1:
            counts = counts.to(device)
            dist.all_reduce(counts)
            counts = counts.cpu()
        shared = [r for r in range(self.num_measurements) if counts[r] > 1]
        if shared:
            raise ValueError(
                f"measurements {shared} are served to more than one process: under DDP each process must serve its "
                f"own shard of the set (rows r, r + w, ... for rank r of w), as the ugodit-pl data modules do; "
                f"shard your dataset by trainer.global_rank and trainer.world_size"
            )
        missing = [r for r in range(self.num_measurements) if counts[r] == 0]
        if missing:
            served = self.num_measurements - len(missing)
            raise ValueError(
                f"num_measurements={self.num_measurements} but the data serve {served} measurement(s) (rows {missing} "
                f"are missing): set num_measurements to the data module's num_measurements"
            )
        return owned

    # ----------------------------------------------------------------- the two ends of a step
    def begin_step(self, batch: Mapping[str, Any]) -> Step:
        """Check the batch and return its rows with their normalised measurements.

        A batch is checked in full once; the same tensors served again unchanged (a data module's
        repeated batch) reuse that check, its rows and its normalised measurements, so that a step
        spends no time or host synchronisation on them (``CheckedBatch``).
        """
        memo = self._checked_batch
        if memo is None or not memo.serves(batch):
            memo = self._check_step_batch(batch)
            self._checked_batch = memo
        counts = self.fit_state.steps[memo.row_list].tolist()
        return Step(rows=memo.rows, row_list=memo.row_list, counts=counts, y=memo.y, operator=batch["operator"],
                    support=memo.support)

    def _check_step_batch(self, batch: Mapping[str, Any]) -> "CheckedBatch":
        self._check_batch_layout(batch)
        rows = self._index_of(batch)
        row_list = rows.tolist()
        owned = self.fit_state.owned
        if owned is None or not self.fit_state.allocated:
            raise RuntimeError(f"{type(self).__name__}: the fitting state is not prepared; fit with a pl.Trainer")
        if sorted(row_list) != torch.nonzero(owned).flatten().tolist():
            raise ValueError(
                f"this process was set up to fit rows {torch.nonzero(owned).flatten().tolist()} but a batch carries "
                f"rows {row_list}: every training batch of a process must carry the same measurements (its shard)"
            )
        raw_y = batch["y"]
        changed = ~torch.isclose(measurement_fingerprints(raw_y, rows, self.num_measurements)[rows],
                                 self.fit_state.fingerprints.to(raw_y.device)[rows], rtol=1e-5, atol=0)
        if bool(changed.any()):
            raise ValueError(
                f"the measurements of rows {rows[changed].tolist()} differ from those the fit was set up with: a loader "
                f"must serve the same measurement under the same index at every step"
            )
        y = raw_y
        if self._should_normalize(y):
            y = apply_scale(y, self.fit_state.scales[rows].float())  # y keeps its own precision
        support = batch["operator"].image_support()
        return CheckedBatch.of(batch, rows, row_list, y, None if support is None else support.to(y.device))

    def end_step(self, step: Step, loss: torch.Tensor, data: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Record the step's outputs (EMA, last), advance the rows' counters, log; return the loss to minimise."""
        output = output.detach() if step.support is None else output.detach() * step.support.to(output.dtype)
        self._record_output(output, step)
        self.fit_state.steps[step.row_list] += 1
        if self._trainer is not None and logs_metrics_at(self.trainer, self.trainer.global_step + 1):
            sync = world_size(self) > 1
            self.log("train/loss", loss.sum(), prog_bar=True, batch_size=len(step.row_list), sync_dist=sync,
                     reduce_fx="sum")
            self.log("train/data_consistency", data.detach().sum(), batch_size=len(step.row_list), sync_dist=sync,
                     reduce_fx="sum")
        return loss.sum() * world_size(self)

    def _record_output(self, output: torch.Tensor, step: Step) -> None:
        """Update the rows' EMA (per ``ema_variant``) and last output; expose them in measurement units."""
        state, rows = self.fit_state, step.rows
        due = [(count + 1) % self.schedule_period == 0 for count in step.counts]
        if self.ema_variant == "corrected" or all(due):
            averaged = output.clamp(0.0, 1.0) if self.ema_variant == "authors" and not self._complex_data else output
            past = self._ema_past_weight(state.ema_count[rows]).view(-1, *([1] * (output.ndim - 1)))
            state.write("ema", rows, past * state.ema[rows] + (1.0 - past) * averaged)
            state.write("ema_count", rows, state.ema_count[rows] + 1)
        state.write("last", rows, output)
        state.share("ema", "last", "ema_count")
        self.last_index = rows

    def _ema_past_weight(self, count: torch.Tensor) -> torch.Tensor:
        """Weight of the old EMA for rows that have had ``count`` outputs averaged.

        Corrected: the EMA after t outputs equals sum_k (1 - d) d^(t-k) out_k / (1 - d^t), which this
        weight, d (1 - d^n) / (1 - d^(n+1)) for n = count, produces step by step. Authors': d, from a
        zero EMA.

        >>> m = ReconstructionMethod(ema_decay=0.5)
        >>> m._ema_past_weight(torch.tensor([0.0, 1.0, 50.0]))
        tensor([0.0000, 0.3333, 0.5000])
        """
        decay = self.ema_decay
        if self.ema_variant == "authors":
            return torch.full_like(count, decay)
        return decay * (1.0 - decay**count) / (1.0 - decay ** (count + 1))

    # ----------------------------------------------------------------- batches
    def _check_batch_layout(self, batch: Mapping[str, Any]) -> None:
        for key in ("y", "operator"):
            if key not in batch:
                raise KeyError(f"{type(self).__name__} needs batches with a {key!r} entry (see docs/ARCHITECTURE.md)")
        if not isinstance(batch["operator"], Operator):
            raise TypeError(f"batch['operator'] must be a ugodit_pl Operator, got {type(batch['operator']).__name__}")
        index = self._index_of(batch)
        y = batch["y"]
        if len(index) != y.shape[0] or ("index" not in batch and len(index) > self.num_measurements):
            raise ValueError(
                f"batch['y'] has shape {tuple(y.shape)}: its first dimension is read as {y.shape[0]} measurements "
                f"({len(index)} indices, num_measurements={self.num_measurements}); measurements need a batch "
                f"dimension: (B, coils, H, W) k-space or (B, C, h, w) images (y[None] for one)"
            )
        if int(index.max()) >= self.num_measurements or int(index.min()) < 0:
            raise ValueError(
                f"batch index {index.tolist()} is outside the {self.num_measurements} measurements this "
                f"{type(self).__name__} was built for (num_measurements={self.num_measurements})"
            )
        if index.unique().numel() != index.numel():
            raise ValueError(f"batch index {index.tolist()} repeats a measurement")

    def _index_of(self, batch: Mapping[str, Any]) -> torch.Tensor:
        index = batch.get("index")
        if index is None:
            index = torch.arange(batch["y"].shape[0])
        return torch.as_tensor(index, dtype=torch.long).to(self.device).flatten()

    # ----------------------------------------------------------------- results
    def _rows_in_units(self, name: str, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Rows of the state's ``ema`` or ``last`` in the measurement's units; NaN where a row has none yet.

        Read from the state, so after a ``DivergenceRollback`` restore they are the restored ones.
        """
        state = self.fit_state
        rows = torch.arange(state.num_rows, device=state.ema.device) if rows is None else rows
        count = (state.ema_count if name == "ema" else state.steps.to(state.ema.device))[rows]
        values = undo_scale(getattr(state, name)[rows], state.scales[rows])
        return torch.where((count > 0).view(-1, *([1] * (values.ndim - 1))), values, torch.full_like(values, float("nan")))

    @property
    def current_output(self) -> Optional[torch.Tensor]:
        """The last output of the last batch's rows (B, C, H, W), in measurement units (None before a step)."""
        return None if self.last_index is None else self._rows_in_units("last", self.last_index)

    @property
    def ema_output(self) -> Optional[torch.Tensor]:
        """The EMA of the outputs of the last batch's rows, in measurement units (None before a step)."""
        return None if self.last_index is None else self._rows_in_units("ema", self.last_index)

    @property
    def reconstruction(self) -> Optional[torch.Tensor]:
        """The reconstruction of the last batch's measurements, in measurement units.

        ``final_output`` when a callback chose one (e.g. ``WMVEarlyStopping``), else the EMA or
        the last output as ``output`` says.
        """
        if self.final_output is not None:
            return self.final_output
        return self.ema_output if self.output == "ema" else self.current_output

    def all_reconstructions(self) -> torch.Tensor:
        """Reconstructions of all N measurements, (N, C, H, W), in measurement units.

        The EMA or the last outputs per ``output``, with the rows of the last batch replaced by
        ``final_output`` when a callback chose one (e.g. ``WMVEarlyStopping``). A row that has no output
        yet (or was rolled back to before its first step) is NaN, which no writer writes.
        """
        if not self.fit_state.allocated:
            raise RuntimeError("nothing has been fitted yet: run trainer.fit first")
        rows = self._rows_in_units("ema" if self.output == "ema" else "last")
        if self.final_output is not None and self.last_index is not None:
            rows = rows.clone()
            rows[self.last_index] = self.final_output.to(rows.dtype)
        return rows

    def _evaluate(self, batch: Mapping[str, Any], stage: str) -> Dict[str, torch.Tensor]:
        """Metrics of the current reconstructions of the batch's measurements against its targets."""
        from ugodit_pl.metrics import reconstruction_metrics

        if "target" not in batch:
            raise ValueError(f"{stage} needs batches with a 'target' (ground truth); these measurements have none")
        index = self._index_of(batch)
        values = reconstruction_metrics(self.all_reconstructions()[index], batch["target"])
        for name, value in values.items():
            self.log(f"{stage}/{name}", value.mean(), batch_size=len(index), sync_dist=world_size(self) > 1)
        return values

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> Dict[str, torch.Tensor]:
        """PSNR / SSIM (/ NMSE) of the reconstructions fitted so far (``ugodit validate``)."""
        return self._evaluate(batch, "val")

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> Dict[str, torch.Tensor]:
        """PSNR / SSIM (/ NMSE) of the fitted reconstructions (``ugodit test --ckpt_path ...``)."""
        return self._evaluate(batch, "test")

    def predict_step(self, batch: Dict[str, Any], batch_idx: int) -> Dict[str, Any]:
        """The fitted reconstructions of the batch's measurements, with their index and names."""
        index = self._index_of(batch)
        return {
            "reconstruction": self.all_reconstructions()[index],
            "index": index,
            "name": [self.fit_state.names[i] for i in index.tolist()],
        }

    # ----------------------------------------------------------------- optimiser
    def parameter_groups(self) -> List[Dict[str, Any]]:
        """The optimiser's parameter groups: the trainable network weights at ``lr``."""
        weights = [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("fit_state.")]
        return [{"params": weights, "lr": self.lr, "name": "weights"}]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over ``parameter_groups()`` (see ``ugodit_pl.methods.optim``)."""
        return adam(self.parameter_groups(), self.optimizer_args, self._trainer)
