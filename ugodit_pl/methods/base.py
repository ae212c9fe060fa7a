"""What every method shares: the fitting loop's two ends, the per-row state, EMA, logging, DDP.

A method fits a fixed set of N measurements (rows 0..N-1); one Lightning training step is one
optimiser step, and every batch of a process carries that process's rows (``batch["index"]``).
The loop, with the hooks it lives in (docs/ARCHITECTURE.md, "The fitting loop")::

    setup("fit")      prepare(first batch): scales s_i from y_i alone, inputs z_i, the FitState
    training_step     step = begin_step(batch)             rows, y_i / s_i, A_i (checked)
                      z = the rows' inputs                  (aSeqDIP / UGoDIT: z <- f(z) every N steps)
                      out = f(z)                            forward (the method's networks)
                      loss = the method's objective         (its paper's equation, in its module)
                      return end_step(step, loss, ...)      + tv_weight * TV(out) + wavelet_weight * |W out|_1
                                                            (TV: on for the MRI U-Net; wavelet: an option),
                                                            EMA and last output, step counters, logs
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

import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn

from ugodit_pl.arguments import check_choice, fraction, non_negative, positive, whole
from ugodit_pl.methods.batches import CheckedBatch, Step, batch_rows, check_batch_layout, measurement_fingerprints
from ugodit_pl.methods.classical_mean import MEAN_SOURCES, classical_images
from ugodit_pl.methods.compiling import compile_arguments
from ugodit_pl.methods.defaults import DEFAULT_LR, DEFAULT_TV_WEIGHT, default_residual, network_default
from ugodit_pl.methods.holdout import PATTERNS as HOLDOUT_PATTERNS
from ugodit_pl.methods.holdout import check_holdout_fraction, holdout_error, split_measurement
from ugodit_pl.methods.inputs import INPUT_INITS, initial_input
from ugodit_pl.methods.losses import LOSS_NORMS, residual_norm, total_variation, wavelet_l1
from ugodit_pl.methods.networks import NETWORK_INITS, NETWORK_SEEDS
from ugodit_pl.methods.optim import adam, check_optimizer_args
from ugodit_pl.methods.results import FittedResults, ema_past_weight
from ugodit_pl.methods.scaling import apply_scale, in_precision, measurement_scale
from ugodit_pl.methods.state import FitState
from ugodit_pl.methods.trainer_access import attached_trainer, logs_metrics_at, training_batch, world_size
from ugodit_pl.methods.warm import WarmStarts
from ugodit_pl.operators.base import Operator

OUTPUTS = ("ema", "last")
EMA_VARIANTS = ("corrected", "authors")


class ReconstructionMethod(FittedResults, WarmStarts, pl.LightningModule):
    """Base class of the methods: the fitting loop around a method's objective.

    A subclass implements:

    - ``__init__``: build its networks (they must read ``self.network_name``, ``self.network_args``,
      ``self.seed``, ``self.network_init`` and ``self.residual``), then ``self.save_hyperparameters()``;
    - ``network_output(z, rows)``: f(z) for the rows ``rows`` of the set;
    - ``training_step(batch, batch_idx)``: its paper's equation between the loop's two ends,
      ``step = self.begin_step(batch)`` ... ``return self.end_step(step, loss, data, output)``, with the
      loop's terms ``forward_rows``, ``data_term`` and ``proximity_term`` and the rows' inputs in
      ``self.fit_state.inputs``;

    and may override ``schedule_period`` (steps between input updates), ``parameter_groups`` (more
    trainable tensors, e.g. Self-Guided DIP's z, with ``optimises_inputs = True``) and ``prepare``
    (checks of its own before the state is sized; call ``super().prepare(batch)``).
    Everything else, the state, scales, EMA, logging, DDP, the results (``FittedResults``) and warm starts
    (``WarmStarts``), is here.

    Args:
        num_measurements: N, the size of the set fitted together (the data module's
            ``num_measurements``).
        network: network name for ``ugodit_pl.nets.build_network`` (``"unet"`` or ``"skip"``).
        network_args: its constructor arguments.
        network_init: ``"default"`` (PyTorch's layer initialisation) or ``"normal"`` (the authors'
            notebooks: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm weights, zero biases).
        network_seeds: ``"shared"`` (every measurement's network starts from the same weights: batched
            equals looped) or ``"per_row"`` (row i's from its own draw: copies of one measurement are
            an ensemble, ``ugodit_pl.methods.ensemble``).
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
        normalize: divide each measurement by its scale (``ugodit_pl.methods.scaling``) and undo it on the
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
        final_projection: the reconstruction is the output with its measured k-space put back,
            S^H F^H((1 - P) F S x + P y) with every measured sample (an option of the reconstruction,
            not of the fit: the fit and ``current_output`` are unchanged). Needs an operator with
            ``data_consistent`` (MRI, inpainting). None = on for MRI (complex k-space; held-out samples
            are then not lost in the image); off for natural images, whose observed pixels carry their
            noise (held-out pixels come back with a refit on every pixel). On
            the real-MRI panel it added 0.003 to 0.026 dB to aSeqDIP and UGoDIT on all 12 problem and
            method pairs (docs/RESULTS.md, decision 10); False is the papers' reconstruction.
        holdout_fraction: 0 (off), or the fraction of the sampled k-space locations outside the
            calibration region (MRI), or of the observed pixels (inpainting, denoising), that the fit
            does not see (``ugodit_pl.methods.holdout``):
            ``holdout_error()`` is the output's error on them, which ``HeldOutEarlyStopping``
            watches. Must be below 0.5.
        holdout_pattern: what is held out: whole lines of a 1-D mask (``"lines"``), single sampled
            locations (``"points"``), or ``"auto"``: lines for a 1-D k-space mask, points otherwise.
        tv_weight: the weight of a sparsity term added to every method's objective: the total
            variation of the network output per pixel (``ugodit_pl.methods.losses.total_variation``),
            in the units of the data term (about 2 x the lambda of L1 compressed sensing on a max-1
            image). 0 is the papers' objectives. None takes ``DEFAULT_TV_WEIGHT`` for the network: on
            for the MRI U-Net (ours; its value and the panel's evidence are stated there, decision 18 of
            docs/RESULTS.md), off for the skip net.
        wavelet_weight: 0 (off: the papers' objectives), or the weight of the other sparsity term: the L1
            norm of the output's orthonormal db4 wavelet coefficients per pixel
            (``ugodit_pl.methods.losses.wavelet_l1``, sigpy's L1-wavelet prior), in the units of the data
            term: 2 x the lambda of L1 compressed sensing. Measured on the MRI panel in decision 14
            of docs/RESULTS.md; not the default.
        mean_with: None (off: the papers' reconstructions), ``"l1_wavelet"`` or ``"total_variation"``: the
            reconstruction is the mean of the network's and that compressed-sensing reconstruction of the
            same measurement, its lambda chosen without ground truth (``lamda_rules.automatic_lamda``) or
            carried from a warm start's neighbour (``ugodit_pl.methods.classical_mean``; MRI only). Worked
            out once, before the first step. On the real-phase MRI panel aSeqDIP's mean with L1-wavelet
            was +0.67 / +0.25 dB over the network alone (4x / 8x) and +0.38 / +0.24 dB over the
            automatic-lambda L1; on warm-started volumes +1.1 dB over the network alone (decision 13).
            Not the papers' reconstruction, so not the default. ``network_reconstruction`` is the
            network's image alone.
        mean_lamda: None (the lambda is chosen as ``mean_with`` says), or the lambda of the ``mean_with``
            image for every measurement (relative to the k-space scaled so that the zero-filled image has max
            1, as in ``ugodit_pl.classical``): one solve instead of the search, e.g. a lambda an earlier scan of
            the same protocol was given (its ``fit_state.classical_lamdas``). Needs ``mean_with``.
    """

    #: Whether the inputs z are optimised with the weights (Self-Guided DIP).
    optimises_inputs = False
    #: The per-measurement networks a warm start carries (``ugodit_pl.methods.warm``).
    warm_modules: Tuple[str, ...] = ("nets",)

    def __init__(
        self,
        *,
        num_measurements: int = 1,
        network: str = "unet",
        network_args: Optional[Dict[str, Any]] = None,
        network_init: str = "default",
        network_seeds: str = "shared",
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
        final_projection: Optional[bool] = None,
        holdout_fraction: float = 0.0,
        holdout_pattern: str = "auto",
        tv_weight: Optional[float] = None,
        wavelet_weight: float = 0.0,
        mean_with: Optional[str] = None,
        mean_lamda: Optional[float] = None,
    ) -> None:
        super().__init__()
        check_choice("loss_norm", loss_norm, LOSS_NORMS)
        check_choice("output", output, OUTPUTS)
        check_choice("input_init", input_init, INPUT_INITS)
        check_choice("ema_variant", ema_variant, EMA_VARIANTS)
        check_choice("network_init", network_init, NETWORK_INITS)
        check_choice("network_seeds", network_seeds, NETWORK_SEEDS)
        self.num_measurements = whole("num_measurements", num_measurements, minimum=1)
        self.network_name = network.lower()
        self.network_args = dict(network_args or {})
        self.network_init = network_init
        self.network_seeds = network_seeds
        self.lr = positive("lr", lr) if lr is not None else network_default(DEFAULT_LR, self.network_name)
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
        self.holdout_fraction = check_holdout_fraction(holdout_fraction)
        self.holdout_pattern = check_choice("holdout_pattern", holdout_pattern, HOLDOUT_PATTERNS)
        self.tv_weight = (network_default(DEFAULT_TV_WEIGHT, self.network_name) if tv_weight is None
                          else non_negative("tv_weight", tv_weight))
        self.wavelet_weight = non_negative("wavelet_weight", wavelet_weight)
        self.mean_with = None if mean_with is None else check_choice("mean_with", mean_with, MEAN_SOURCES)
        if mean_lamda is not None and mean_with is None:
            raise ValueError(f"mean_lamda={mean_lamda!r} is the lambda of the mean_with image: give mean_with too "
                             f"(one of {', '.join(MEAN_SOURCES)})")
        self.mean_lamda = None if mean_lamda is None else non_negative("mean_lamda", mean_lamda)
        self.final_projection_arg = final_projection
        # None is resolved in ``prepare`` (MRI or not) and kept in checkpoints
        self.final_projection = False if final_projection is None else bool(final_projection)
        self._compiled: Optional[Any] = None
        self.fit_state = FitState(trainable_inputs=self.optimises_inputs)
        self.final_output: Optional[torch.Tensor] = None
        self.last_index: Optional[torch.Tensor] = None
        self._complex_data = False
        self._checked_batch: Optional[CheckedBatch] = None
        self._warm_image_shape: Optional[Tuple[int, int]] = None
        self._warm_inputs: Dict[int, torch.Tensor] = {}  # row -> a neighbour's reconstruction (warm_start)
        self._warm_input_rule = "auto"  # warm_start's ``input``
        self._warm_emas: Dict[int, Tuple[torch.Tensor, float]] = {}  # row -> (image, count) (warm_start(ema="carry"))
        self._warm_lamdas: Dict[int, float] = {}  # row -> the neighbour's ``mean_with`` lambda (warm_start)

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
        check_batch_layout(batch, self.num_measurements, type(self).__name__)
        raw_y, operator = in_precision(batch["y"], self.dtype), batch["operator"]
        rows = batch_rows(batch, self.device).cpu()
        if self.final_projection_arg is None:  # on for MRI (complex k-space), held-out samples or not
            self.final_projection = bool(raw_y.is_complex() and hasattr(operator, "data_consistent"))
        if self.final_projection and not hasattr(operator, "data_consistent"):
            raise ValueError(f"final_projection puts the measured samples back into the reconstruction: it needs an "
                             f"operator with data_consistent (MRI, inpainting); {type(operator).__name__} has none")
        measured_operator, measured_y = operator, raw_y
        operator, raw_y, _ = self._fitted_samples(operator, raw_y, rows.tolist(), batch.get("name"))
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
        device = self.trainer.strategy.root_device if attached_trainer(self) is not None else self.device
        self.fit_state.owned = self._claim_rows(rows, device)
        if self._should_normalize(raw_y):
            scale = measurement_scale(operator, raw_y, self.normalize_percentile)
            y = apply_scale(raw_y, scale)
        else:
            scale, y = torch.ones(raw_y.shape[0], dtype=self.dtype), raw_y
        reference = batch.get("reference")
        reference = None if reference is None else in_precision(reference, self.dtype)
        if reference is not None and self._should_normalize(raw_y):
            reference = apply_scale(reference, scale)
        z = initial_input(self.input_init, operator, y, channels=self.input_channel_count, seed=self.seed,
                          rows=rows.tolist(), reference=reference)
        if self._warm_image_shape is not None and tuple(z.shape[-2:]) != self._warm_image_shape:
            raise ValueError(
                f"{batch.get('name') or 'the measurements'}: a warm start from a fit of {self._warm_image_shape[0]} x "
                f"{self._warm_image_shape[1]} images, but these are {z.shape[-2]} x {z.shape[-1]}: warm-start from a "
                f"neighbour of the same size"
            )
        z = self._warm_input(z, operator, y, scale, rows.tolist())
        self._check_network_input(z, batch)
        state = self.fit_state
        state.fingerprints = measurement_fingerprints(batch["y"], rows, self.num_measurements)
        self._checked_batch = None
        if state.fits(self.num_measurements, z.shape[1:], start.shape[1:]):
            return
        state.allocate(self.num_measurements, z.shape[1:], start.shape[1:], dtype=self.dtype, device=device)
        state.write("inputs", rows.to(device), z.to(device))
        state.write("scales", rows.to(device), scale.to(device))
        self._carry_emas(scale, rows.tolist(), self._should_normalize(raw_y))
        shared = ["inputs", "scales", "ema", "ema_count"]
        if self.mean_with is not None:
            self._write_classical(measured_operator, measured_y, scale, rows, batch.get("name"))
            shared += ["classical", "classical_lamdas"]
        state.share(*shared)
        names = batch.get("name") or [None] * len(rows)
        for row, name in zip(rows.tolist(), names):
            state.names[row] = name

    def _write_classical(self, operator: Operator, y: torch.Tensor, scale: torch.Tensor, rows: torch.Tensor,
                         names: Optional[List[Optional[str]]]) -> None:
        """The ``mean_with`` image of the rows (every measured sample, held-out ones too) and its lambda: ``mean_lamda``
        where given, else a warm start's neighbour's, else the automatic rule's."""
        row_list = rows.tolist()
        images, lamdas = classical_images(operator, y, self.mean_with,
                                          [self.mean_lamda if self.mean_lamda is not None else self._warm_lamdas.get(r)
                                           for r in row_list], names)
        if self._should_normalize(y):
            images = apply_scale(images, scale)
        device = self.fit_state.classical.device
        self.fit_state.write("classical", rows.to(device), images.to(device))
        self.fit_state.write("classical_lamdas", rows.to(device), torch.tensor(lamdas, device=device))

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
        return Step(rows=memo.rows, row_list=memo.row_list, counts=counts, y=memo.y, operator=memo.operator,
                    support=memo.support, measured_y=memo.measured_y, measured_operator=memo.measured_operator)

    def _check_step_batch(self, batch: Mapping[str, Any]) -> CheckedBatch:
        check_batch_layout(batch, self.num_measurements, type(self).__name__)
        rows = batch_rows(batch, self.device)
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
        measured_y = in_precision(raw_y, self.fit_state.scales.dtype)
        if self._should_normalize(measured_y):
            measured_y = apply_scale(measured_y, self.fit_state.scales[rows])
        operator, y, held_out = self._fitted_samples(batch["operator"], measured_y, row_list, batch.get("name"))
        support = batch["operator"].image_support()
        return CheckedBatch.of(batch, rows, row_list, y, None if support is None else support.to(y.device),
                               operator=operator, measured_y=measured_y, measured_operator=batch["operator"],
                               held_out=held_out)

    def _fitted_samples(self, operator: Operator, y: torch.Tensor, rows: List[int], names: Optional[List[str]] = None
                        ) -> Tuple[Operator, torch.Tensor, Optional[torch.Tensor]]:
        """The operator and measurements the fit sees, and the held-out mask (``holdout_fraction``; else None)."""
        if not self.holdout_fraction:
            return operator, y, None
        return split_measurement(operator, y, self.holdout_fraction, self.seed, rows, names, self.holdout_pattern)

    def end_step(self, step: Step, loss: torch.Tensor, data: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Add the sparsity terms (``tv_weight``, ``wavelet_weight``) to the method's loss, record the step's
        outputs (EMA, last), advance the rows' counters, log; return the loss to minimise."""
        if self.tv_weight:
            loss = loss + self.tv_weight * total_variation(output)
        if self.wavelet_weight:
            loss = loss + self.wavelet_weight * wavelet_l1(output)
        output = output.detach() if step.support is None else output.detach() * step.support.to(output.dtype)
        self._record_output(output, step)
        self.fit_state.steps[step.row_list] += 1
        if attached_trainer(self) is not None and logs_metrics_at(self.trainer, self.trainer.global_step + 1):
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
            past = ema_past_weight(state.ema_count[rows], self.ema_decay, self.ema_variant).view(-1, *([1] * (output.ndim - 1)))
            state.write("ema", rows, past * state.ema[rows] + (1.0 - past) * averaged)
            state.write("ema_count", rows, state.ema_count[rows] + 1)
        state.write("last", rows, output)
        shared = ["ema", "last", "ema_count"]
        if self.final_projection:
            source = state.ema[rows] if self.output == "ema" else output
            measured_y = step.y if step.measured_y is None else step.measured_y
            operator = step.operator if step.measured_operator is None else step.measured_operator
            state.write("projected", rows, operator.data_consistent(source.to(measured_y.real.dtype), measured_y))
            shared.append("projected")
        state.share(*shared)
        self.last_index = rows

    def holdout_error(self) -> Optional[torch.Tensor]:
        """(B,) the reconstruction's error on the held-out samples of the last batch's rows (before the final
        projection, which would put them back): ||H (A x - y)||^2 / ||H y||^2; None without held-out samples
        or before a step (``ugodit_pl.methods.holdout``)."""
        memo = self._checked_batch
        if memo is None or memo.held_out is None or self.last_index is None:
            return None
        source = self.fit_state.ema if self.output == "ema" else self.fit_state.last
        x = source[memo.rows.to(source.device)].to(memo.measured_y.device, memo.measured_y.real.dtype)
        return holdout_error(memo.measured_operator, x, memo.measured_y, memo.held_out)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["ugodit_final_projection"] = self.final_projection  # as resolved for these measurements

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self.final_projection = bool(checkpoint.get("ugodit_final_projection", self.final_projection))

    # ----------------------------------------------------------------- optimiser
    def parameter_groups(self) -> List[Dict[str, Any]]:
        """The optimiser's parameter groups: the trainable network weights at ``lr``."""
        weights = [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("fit_state.")]
        return [{"params": weights, "lr": self.lr, "name": "weights"}]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over ``parameter_groups()`` (see ``ugodit_pl.methods.optim``)."""
        return adam(self.parameter_groups(), self.optimizer_args, attached_trainer(self))
