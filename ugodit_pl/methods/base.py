"""The machinery every method shares: fitting state, scale normalisation, EMA, logging, DDP sharding.

A method fits a fixed set of N measurements; one Lightning training step is one optimiser step.
Each batch carries the measurements of this process's shard (``batch["index"]`` gives their
positions 0..N-1 in the set). Subclasses implement two things:

- ``network_output(z, index)``: the network outputs f(z) for the rows ``index`` of the set;
- ``step_loss(...)``: the loss of one step (see ``ReconstructionMethod.training_step``).

Under DDP the loss is multiplied by the world size, because DDP averages gradients over
processes while the objectives sum over measurements: a shared encoder then receives the sum of
all measurements' gradients and each measurement's own parameters receive exactly their own
gradient, so N processes compute what one process computes. Inputs z and EMAs are per-row state,
shared between processes after every change (each row is owned by one process).

Usage (any subclass)::

    method = ASeqDIP(num_measurements=1, network="unet", network_args={"channels": [16, 32, 64, 64]})
    trainer = pl.Trainer(max_steps=500)
    trainer.fit(method, datamodule)        # or train_dataloaders= a loader of fixed batches
    image = method.reconstruction          # (N, C, H, W), in the measurement's units
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from ugodit_pl.methods.inputs import INPUT_INITS, check_choice, initial_input
from ugodit_pl.methods.losses import check_loss_norm, residual_norm
from ugodit_pl.methods.scaling import apply_scale, measurement_scale, undo_scale
from ugodit_pl.operators.base import Operator

OUTPUTS = ("ema", "last")

# The authors' learning rates (DESIGN.md), by network: natural images use the skip network,
# MRI the U-Net. Methods look their default up here when ``lr`` is None.
DEFAULT_LR = {"skip": 0.01, "unet": 3e-4}


def world_size(module: pl.LightningModule) -> int:
    """Number of processes taking part in the fit (1 outside a Trainer or without DDP)."""
    trainer = module._trainer if hasattr(module, "_trainer") else None
    if trainer is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return trainer.world_size


def adam(params: List[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam, with the fused kernel when every tensor is a floating-point CPU or CUDA tensor.

    The fused kernel does one pass over all tensors instead of a dozen small ops per tensor: 1.4 ms
    instead of 5.5 ms per step for the width-16 U-Net on one CPU thread (docs/RESULTS.md, speed).

    >>> adam([torch.nn.Parameter(torch.zeros(2))], lr=0.1).defaults["fused"]
    True
    """
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


class ReconstructionMethod(pl.LightningModule):
    """Base class of the methods. See the module docstring for the contract.

    Args:
        num_measurements: N, the size of the set fitted together (the data module's
            ``num_measurements``).
        network: network name for ``ugodit_pl.nets.build_network`` (``"unet"`` or ``"skip"``).
        network_args: its constructor arguments.
        lr: Adam learning rate of the network weights; None takes the authors' default for the
            network (``DEFAULT_LR``).
        loss_norm: ``"mse"`` (mean squared error) or ``"l2"`` (unsquared norm).
        output: what ``reconstruction`` returns: ``"ema"`` (exponential moving average of the
            outputs) or ``"last"``.
        ema_decay: EMA weight of the past (0.99 in the authors' code).
        ema_bias_correction: divide the EMA by ``1 - ema_decay**t`` after t outputs (as Adam does with
            its moments), so that early EMAs are averages of the outputs seen so far rather than
            dominated by the first, random output; False = the authors' uncorrected EMA.
        normalize: divide each measurement by its scale (DESIGN.md "Scale") and undo it on the
            outputs; None = only for complex (MRI) measurements.
        normalize_percentile: the percentile of |A^H y| that the scale maps to 1.
        input_init: how the input starts (see ``ugodit_pl.methods.inputs``).
        input_channels: channels of a noise input (default: the network's ``in_channels``).
        seed: seed of every random choice of the method (initialisation, noise).
    """

    def __init__(
        self,
        *,
        num_measurements: int = 1,
        network: str = "unet",
        network_args: Optional[Dict[str, Any]] = None,
        lr: Optional[float] = None,
        loss_norm: str = "mse",
        output: str = "ema",
        ema_decay: float = 0.99,
        ema_bias_correction: bool = True,
        normalize: Optional[bool] = None,
        normalize_percentile: float = 99.0,
        input_init: str = "measurement",
        input_channels: Optional[int] = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if int(num_measurements) < 1:
            raise ValueError(f"num_measurements must be >= 1, got {num_measurements}")
        check_loss_norm(loss_norm)
        check_choice("output", output, OUTPUTS)
        check_choice("input_init", input_init, INPUT_INITS)
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.num_measurements = int(num_measurements)
        self.network_name = network.lower()
        self.network_args = dict(network_args or {})
        self.lr = float(lr) if lr is not None else DEFAULT_LR.get(self.network_name, 1e-3)
        self.loss_norm = loss_norm
        self.output = output
        self.ema_decay = float(ema_decay)
        self.ema_bias_correction = bool(ema_bias_correction)
        self.normalize = normalize
        self.normalize_percentile = float(normalize_percentile)
        self.input_init = input_init
        self.input_channels = input_channels
        self.seed = int(seed)
        # Fitting state: created from the first batch, (N, ...) rows, in normalised units.
        self.register_buffer("inputs", None, persistent=False)
        self.register_buffer("ema", None, persistent=False)
        self.register_buffer("ema_count", None, persistent=False)
        self.register_buffer("last", None, persistent=False)
        self.register_buffer("scales", None, persistent=False)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.names: List[Optional[str]] = [None] * self.num_measurements
        self.current_output: Optional[torch.Tensor] = None
        self.ema_output: Optional[torch.Tensor] = None
        self.final_output: Optional[torch.Tensor] = None
        self.last_index: Optional[torch.Tensor] = None

    # ----------------------------------------------------------------- subclass hooks
    def network_output(self, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """f(z) for the rows ``index`` of the set (z holds exactly those rows)."""
        raise NotImplementedError

    def step_loss(self, z: torch.Tensor, y: torch.Tensor, operator: Operator, index: torch.Tensor):
        """Return (loss per measurement (B,), data-consistency term (B,), output (B, C, H, W))."""
        raise NotImplementedError

    def after_step(self, y: torch.Tensor, operator: Operator, index: torch.Tensor) -> None:
        """Called right after every optimiser step (input updates).

        Lightning increments ``global_step`` after this returns: the step just taken is number
        ``global_step + 1``.
        """

    # ----------------------------------------------------------------- helpers
    @property
    def input_channel_count(self) -> int:
        """Channels of a noise input: ``input_channels`` or the network's ``in_channels``."""
        if self.input_channels is not None:
            return int(self.input_channels)
        return int(self.network_args.get("in_channels", 2 if self.network_name == "unet" else 3))

    def data_term(self, output: torch.Tensor, y: torch.Tensor, operator: Operator) -> torch.Tensor:
        """||A f - y|| per measurement, in the chosen norm."""
        return residual_norm(operator(output) - y, self.loss_norm)

    def proximity_term(self, output: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """||f - z|| per measurement, in the chosen norm."""
        return residual_norm(output - z, self.loss_norm)

    def _should_normalize(self, y: torch.Tensor) -> bool:
        return bool(y.is_complex()) if self.normalize is None else bool(self.normalize)

    def _check_batch(self, batch: Dict[str, Any]) -> None:
        for key in ("y", "operator"):
            if key not in batch:
                raise KeyError(f"{type(self).__name__} needs batches with a {key!r} entry (see docs/ARCHITECTURE.md)")
        if not isinstance(batch["operator"], Operator):
            raise TypeError(f"batch['operator'] must be a ugodit_pl Operator, got {type(batch['operator']).__name__}")
        index = self._index_of(batch)
        if len(index) != batch["y"].shape[0]:
            raise ValueError(f"batch has {batch['y'].shape[0]} measurements but {len(index)} indices")
        if int(index.max()) >= self.num_measurements or int(index.min()) < 0:
            raise ValueError(
                f"batch index {index.tolist()} is outside the {self.num_measurements} measurements this "
                f"{type(self).__name__} was built for (num_measurements={self.num_measurements})"
            )

    def _index_of(self, batch: Dict[str, Any]) -> torch.Tensor:
        index = batch.get("index")
        if index is None:
            index = torch.arange(batch["y"].shape[0])
        return torch.as_tensor(index, dtype=torch.long).to(self.device).flatten()

    def _share_rows(self, tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Make rows owned by other processes visible here (sum of row-masked copies)."""
        if world_size(self) == 1:
            return tensor
        owned = torch.zeros(tensor.shape[0], dtype=torch.bool, device=tensor.device)
        owned[index] = True
        shared = torch.where(owned.view(-1, *([1] * (tensor.ndim - 1))), tensor, torch.zeros_like(tensor))
        dist.all_reduce(shared)
        return shared

    def _initialise_state(self, batch: Dict[str, Any], operator: Operator, index: torch.Tensor) -> None:
        """Create inputs, scales and names for the whole set from the first batch."""
        raw_y = batch["y"]
        try:
            expected = tuple(operator(operator.init_input(raw_y)).shape)
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"measurement {batch.get('name', '')} does not fit its operator: {error}") from error
        if expected != tuple(raw_y.shape):
            raise ValueError(
                f"measurement {batch.get('name', '')} has shape {tuple(raw_y.shape)} but its operator "
                f"{type(operator).__name__} produces {expected}"
            )
        if self._should_normalize(raw_y):
            scale = measurement_scale(operator, raw_y, self.normalize_percentile)
        else:
            scale = torch.ones(raw_y.shape[0], device=raw_y.device)
        y = apply_scale(raw_y, scale) if self._should_normalize(raw_y) else raw_y
        reference = batch.get("reference")
        if reference is not None and self._should_normalize(raw_y):
            reference = apply_scale(reference, scale)
        z = initial_input(
            self.input_init,
            operator,
            y,
            channels=self.input_channel_count,
            generator=self.generator,
            num_rows=self.num_measurements,
            index=index,
            reference=reference,
        )
        z = z.to(self.dtype)  # the networks' precision (e.g. float64 under precision="64-true")
        inputs = z.new_zeros((self.num_measurements, *z.shape[1:]))
        inputs[index] = z
        scales = scale.new_zeros(self.num_measurements)
        scales[index] = scale.float()
        self.inputs = self._share_rows(inputs, index)
        self.scales = self._share_rows(scales, index)
        for row, name in zip(index.tolist(), batch.get("name", [None] * len(index))):
            self.names[row] = name

    def _normalised(self, batch: Dict[str, Any], index: torch.Tensor) -> torch.Tensor:
        y = batch["y"]
        if not self._should_normalize(y):
            return y
        return apply_scale(y, self.scales[index])

    # ----------------------------------------------------------------- Lightning hooks
    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        self._check_batch(batch)
        operator: Operator = batch["operator"]
        index = self._index_of(batch)
        if self.inputs is None:
            self._initialise_state(batch, operator, index)
        y = self._normalised(batch, index)
        loss_per, data_per, output = self.step_loss(self.inputs[index], y, operator, index)
        self._record_output(self._within_support(output.detach(), operator), index)
        self._last_step = (y, operator, index)
        self.log("train/loss", loss_per.sum(), prog_bar=True, batch_size=len(index), sync_dist=world_size(self) > 1,
                 reduce_fx="sum")
        self.log("train/data_consistency", data_per.sum(), batch_size=len(index), sync_dist=world_size(self) > 1,
                 reduce_fx="sum")
        return loss_per.sum() * world_size(self)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """The optimiser step, then ``after_step`` (input updates) before any callback sees the step.

        Doing the input updates here rather than in ``on_train_batch_end`` matters: Lightning runs
        the callbacks' ``on_train_batch_end`` (e.g. ModelCheckpoint) before the module's, and a
        checkpoint must hold the inputs of the step it is named after.
        """
        optimizer.step(closure=optimizer_closure)
        y, operator, index = self._last_step
        self.after_step(y, operator, index)

    @staticmethod
    def _within_support(output: torch.Tensor, operator: Operator) -> torch.Tensor:
        """Zero the output where the operator sees nothing (outside the coil maps' support).

        The data never constrain those pixels, so what the network puts there is arbitrary; the
        reconstructions are reported inside the support only (the loss is unaffected).
        """
        support = operator.image_support()
        return output if support is None else output * support.to(output.dtype)

    def _record_output(self, output: torch.Tensor, index: torch.Tensor) -> None:
        """Update the EMA and last-output rows of this batch; expose them in measurement units."""
        if self.ema is None:
            self.ema = output.new_zeros((self.num_measurements, *output.shape[1:]))
            self.last = torch.zeros_like(self.ema)
            self.ema_count = output.new_zeros(self.num_measurements)
        past = self._ema_past_weight(self.ema_count[index]).view(-1, *([1] * (output.ndim - 1)))
        self.ema[index] = past * self.ema[index] + (1.0 - past) * output
        self.ema_count[index] += 1
        self.last[index] = output
        self.ema = self._share_rows(self.ema, index)
        self.last = self._share_rows(self.last, index)
        self.ema_count = self._share_rows(self.ema_count, index)
        scale = self.scales[index]
        self.current_output = undo_scale(output, scale)
        self.ema_output = undo_scale(self.ema[index], scale)
        self.last_index = index

    def _ema_past_weight(self, count: torch.Tensor) -> torch.Tensor:
        """Weight of the old EMA for rows that have had ``count`` outputs (0 for a first output).

        With bias correction the EMA after t outputs equals sum_k (1 - d) d^(t-k) out_k / (1 - d^t),
        which this weight, d (1 - d^n) / (1 - d^(n+1)) for n = count, produces step by step.

        >>> m = ReconstructionMethod(ema_decay=0.5)
        >>> m._ema_past_weight(torch.tensor([0.0, 1.0, 50.0]))
        tensor([0.0000, 0.3333, 0.5000])
        """
        decay = self.ema_decay
        if not self.ema_bias_correction:
            return torch.where(count > 0, torch.full_like(count, decay), torch.zeros_like(count))
        return decay * (1.0 - decay**count) / (1.0 - decay ** (count + 1))

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
        ``final_output`` when a callback chose one (e.g. ``WMVEarlyStopping``).
        """
        if self.ema is None:
            raise RuntimeError("nothing has been fitted yet: run trainer.fit first")
        rows = undo_scale(self.ema if self.output == "ema" else self.last, self.scales)
        if self.final_output is not None and self.last_index is not None:
            rows = rows.clone()
            rows[self.last_index] = self.final_output.to(rows.dtype)
        return rows

    def _evaluate(self, batch: Dict[str, Any], stage: str) -> Dict[str, torch.Tensor]:
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
            "name": [self.names[i] for i in index.tolist()],
        }

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the trainable parameters (fused where torch has the kernel, see ``adam``)."""
        return adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)

    # ----------------------------------------------------------------- state
    def get_extra_state(self) -> Dict[str, Any]:
        """Inputs, EMA, scales, names and RNG state: with ``state_dict`` the whole fitting state."""
        return {
            "inputs": self.inputs,
            "ema": self.ema,
            "ema_count": self.ema_count,
            "last": self.last,
            "scales": self.scales,
            "names": list(self.names),
            "generator": self.generator.get_state(),
        }

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        device = next(iter(self.parameters()), torch.empty(0)).device
        for key in ("inputs", "ema", "ema_count", "last", "scales"):
            value = state.get(key)
            setattr(self, key, None if value is None else value.to(device))
        self.names = list(state.get("names", self.names))
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])
