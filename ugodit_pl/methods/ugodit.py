"""UGoDIT (NeurIPS 2025): group pre-training of a shared encoder, then test-time fitting.

Pre-training fits one encoder h_phi and M decoders g_psi_i jointly to M undersampled
measurements (no clean image):

    sum_i ||A_i g_i(h(z_i)) - y_i||^2 + lambda ||g_i(h(z_i)) - z_i||^2,   z_i,0 = A_i^H y_i,

with z_i <- g_i(h(z_i)) every N steps. The encoder weights are saved as *transferable weights*.
A new measurement is then fitted by g_psi o h_phi_hat with the encoder frozen and a fresh decoder,
with the same objective (aSeqDIP's).

>>> pre = UGoDITPretrain(num_measurements=2, network="unet", network_args={"channels": [4, 8, 8, 8]})
>>> pre.decoders.num
2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from ugodit_pl.arguments import check_choice
from ugodit_pl.methods.aseqdip import SequentialInputObjective
from ugodit_pl.methods.networks import seeded_network, stack_of_networks
from ugodit_pl.methods.trainer_access import world_size
from ugodit_pl.methods.transferable import (
    check_weights_task,
    load_transferable_weights,
    save_transferable_weights,
    weights_dtype,
)
from ugodit_pl.nets import ModuleStack, PerSampleBatchNorm2d, build_network, reinit_decoder_, zero_output_layer_
from ugodit_pl.operators.mri import MultiCoilMRI
from ugodit_pl.state_dicts import load_state_strict

ENCODER_BN_MODES = ("train", "eval")
#: BatchNorm statistics of the shared encoder during pre-training: each measurement its own (ours,
#: "measurement") or over the group of M measurements in one encoder call (the authors' code, "group").
ENCODER_NORMS = ("measurement", "group")


class UGoDITPretrain(SequentialInputObjective):
    """Group pre-training: a shared encoder and M decoders fitted to M measurements (no warm starts:
    its product is the transferable weights).

    Args:
        num_measurements: M, the number of measurements (and decoders).
        weights_path: where to write the transferable weights at the end of training (also
            see ``ugodit_pl.callbacks.TransferableWeightsCheckpoint``); None writes nothing.
        encoder_norm: BatchNorm statistics of the shared encoder: ``"measurement"`` (each
            measurement normalised with its own, as at test time; a batch of M equals M separate
            passes, and DDP equals one process) or ``"group"`` (the authors' code: the M inputs go
            through the encoder as one batch and share its statistics; one process only).
        **kwargs: the arguments of ``SequentialInputObjective`` and ``ReconstructionMethod``
            (``lr=None`` and ``lam=None`` take ``SEQUENTIAL_DEFAULTS`` for the network;
            ``network_init="normal"`` is the authors' whole-network N(0, 0.02)).

    Example::

        pre = UGoDITPretrain(num_measurements=5, network="unet", weights_path="encoder.pt")
        pl.Trainer(max_steps=3000).fit(pre, FastMRIDataModule(..., role="pretrain"))
    """

    warm_modules = ()

    def __init__(self, *, weights_path: Optional[str] = None, encoder_norm: str = "measurement", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weights_path = weights_path
        self.encoder_norm = check_choice("encoder_norm", encoder_norm, ENCODER_NORMS)
        net = seeded_network(self.network_name, self.network_args, self.seed, self.network_init)
        self.encoder = net.encoder
        for layer in self.encoder.modules():
            if isinstance(layer, PerSampleBatchNorm2d):
                layer.per_sample = encoder_norm == "measurement"
        decoders = [net.make_decoder(seed=self.seed + 1 + i) for i in range(self.num_measurements)]
        if self.network_init == "normal":
            decoders = [reinit_decoder_(decoder, self.seed + 1 + i) for i, decoder in enumerate(decoders)]
        if self.residual:
            decoders = [zero_output_layer_(decoder) for decoder in decoders]
        self.decoders = ModuleStack.from_modules(decoders)
        self.operator_name: Optional[str] = None
        self.save_hyperparameters()

    def network_output(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        deepest, skips = self.encoder(z)
        return self.decoders(deepest, skips, indices=rows)

    def prepare(self, batch: Mapping[str, Any]) -> None:
        if self.encoder_norm == "group" and world_size(self) > 1:
            raise ValueError(
                "encoder_norm='group' takes BatchNorm statistics over all M measurements in one process; "
                "it cannot be split over DDP processes (use encoder_norm='measurement', or one device)"
            )
        self.operator_name = type(batch["operator"]).__name__
        super().prepare(batch)

    def transferable_metadata(self) -> Dict[str, Any]:
        """What the transferable-weights file records about the pre-training run."""
        return {
            "method": "UGoDITPretrain",
            "operator": self.operator_name,
            "num_measurements": self.num_measurements,
            "steps": int(self.global_step),
            "lam": self.lam,
            "update_every": self.update_every,
            "input_update": self.input_update,
            "loss_norm": self.loss_norm,
            "lr": self.lr,
            "encoder_norm": self.encoder_norm,
            "network_init": self.network_init,
            "residual": self.residual,
            "normalize_percentile": self.normalize_percentile,
            "seed": self.seed,
        }

    def save_transferable_weights(self, path: Union[str, Path]) -> Path:
        """Write the encoder and metadata to ``path`` atomically."""
        return save_transferable_weights(
            path,
            self.encoder,
            network=self.network_name,
            network_args=self.network_args,
            metadata=self.transferable_metadata(),
        )

    def on_train_end(self) -> None:
        if self.weights_path and self.trainer.is_global_zero:
            self.save_transferable_weights(self.weights_path)


class UGoDITFit(SequentialInputObjective):
    """Test-time fitting with transferable weights: frozen encoder, fresh decoder per measurement.

    The encoder comes from ``weights`` and is frozen: it is not in the optimiser, its parameters
    have ``requires_grad=False`` and its forward pass builds no autograd graph. Its BatchNorm
    layers (``encoder_bn``):

    - ``"train"`` (default): normalise with the statistics of the test input itself, as the
      encoder did during pre-training (the authors' networks always run in training mode); the
      running statistics are not updated, so the encoder's buffers stay as loaded too;
    - ``"eval"``: normalise with the running statistics collected during pre-training.

    The decoder is initialised afresh from ``seed`` (``network_init``); every measurement of a batch
    starts from the same decoder (or, with ``network_seeds="per_row"``, each from its own draw).

    Args:
        weights: path of the transferable-weights file written by ``UGoDITPretrain``.
        network, network_args: optional; if given they must match the file's architecture.
        network_init: the fresh decoder's weights: ``"normal"`` (the authors' test-time
            re-initialisation: convolutions N(0, 0.02), BatchNorm weights N(1, 0.02), zero biases) or
            ``"default"`` (PyTorch's layer defaults, drawn from ``seed``).
        lr: decoder learning rate; None = ``SEQUENTIAL_DEFAULTS`` for the network.
        residual: f(z) = z + g(z) (see ``ReconstructionMethod``); None = as the encoder was pre-trained.
        **kwargs: the arguments of ``SequentialInputObjective`` and ``ReconstructionMethod``.

    Example::

        fit = UGoDITFit(weights="encoder.pt", num_measurements=1)
        pl.Trainer(max_steps=2000).fit(fit, FastMRIDataModule(..., role="test"))
    """

    warm_modules = ("decoders",)

    def __init__(
        self,
        *,
        weights: str,
        encoder_bn: str = "train",
        network_init: str = "normal",
        network: Optional[str] = None,
        network_args: Optional[Dict[str, Any]] = None,
        lr: Optional[float] = None,
        residual: Optional[bool] = None,
        **kwargs: Any,
    ) -> None:
        payload = load_transferable_weights(weights)
        if residual is None:  # as the encoder was pre-trained
            residual = bool((payload.get("metadata") or {}).get("residual", False))
        file_network, file_args = payload["network"], dict(payload["network_args"])
        if network is not None and network.lower() != file_network:
            raise ValueError(f"network={network!r} but the transferable weights {weights!r} hold a {file_network!r} encoder")
        if network_args is not None and dict(network_args) != file_args:
            raise ValueError(
                f"network_args={dict(network_args)} differ from those of the transferable weights {weights!r}: {file_args}"
            )
        check_choice("encoder_bn", encoder_bn, ENCODER_BN_MODES)
        super().__init__(network=file_network, network_args=file_args, network_init=network_init, lr=lr,
                         residual=residual, **kwargs)
        self.weights = str(weights)
        self.encoder_bn = encoder_bn
        self.pretraining = dict(payload.get("metadata", {}))
        dtype = weights_dtype(payload)  # the file's precision, kept: float64 pre-training is not rounded on load

        def fresh_network(seed: int) -> torch.nn.Module:  # its decoder is drawn from ``seed`` (``network_init``)
            if self.network_init == "normal":
                with torch.device("meta"):  # the architecture only: the weights come from the file and the re-initialisation
                    net = build_network(self.network_name, **self.network_args)
                net = net.to_empty(device="cpu").to(dtype)
                reinit_decoder_(net.decoder, seed)
                return net
            return seeded_network(self.network_name, self.network_args, seed).to(dtype)

        def fresh_decoder(seed: int) -> torch.nn.Module:
            decoder = fresh_network(seed).decoder
            return zero_output_layer_(decoder) if self.residual else decoder

        self.encoder = fresh_network(self.seed).encoder
        load_state_strict(self.encoder, payload["encoder"], repr(str(weights)), f"this {self.network_name} encoder")
        self.encoder.requires_grad_(False)
        if encoder_bn == "train":
            for layer in self.encoder.modules():
                if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                    layer.track_running_stats = False  # batch statistics, buffers left as loaded
        self.decoders = stack_of_networks(fresh_decoder, self.num_measurements, self.seed, self.network_seeds)
        self.to(dtype)  # the module's dtype (Lightning's ``self.dtype``, which sizes the fitting state) is the file's
        self.save_hyperparameters()
        self.train(self.training)  # Lightning >= 2.2 keeps a module's modes at fit start: set them now

    def prepare(self, batch: Mapping[str, Any]) -> None:
        mri = isinstance(batch["operator"], MultiCoilMRI)
        try:
            check_weights_task({"metadata": self.pretraining, "network_args": self.network_args,
                                "network": self.network_name}, mri=mri)
        except ValueError as error:
            raise ValueError(f"UGoDITFit: the transferable weights {self.weights!r}: {error}") from None
        super().prepare(batch)

    def train(self, mode: bool = True) -> "UGoDITFit":
        super().train(mode)
        if self.encoder_bn == "eval":
            self.encoder.eval()
        return self

    def on_train_start(self) -> None:
        self.train(True)  # also after a user's own ``.train()`` / ``.eval()`` calls on submodules

    @property
    def frozen_encoder(self) -> torch.nn.Module:
        """The transferable encoder; a warm start must come from a fit behind the same one."""
        return self.encoder

    def network_output(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            deepest, skips = self.encoder(z)
        return self.decoders(deepest, skips, indices=rows)
