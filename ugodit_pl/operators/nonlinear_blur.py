"""Non-linear (learned-kernel) blur: the bkse "KernelWizard" blur model that DPS uses.

Tran et al., "Explore Image Deblurring via Encoded Blur Kernel Space" (CVPR 2021), learn a blur
operator ``G(x, k)`` that blurs a sharp image ``x`` with an encoded kernel ``k``. DPS (Chung et al.
2023) uses their GOPRO model with VAE (``GOPRO_wVAE.pth``) as a non-linear forward model:
``y = G(x, k)`` with a random latent kernel ``k ~ 1.2 N(0, I)`` of shape (1, 512, 2, 2) for 256 x 256
images. DPS draws a new ``k`` on every call; here ``k`` is drawn once per measurement from ``seed``
at construction and kept in the buffer ``latent``, so the forward model is a fixed function.

The network is written here from the paper's architecture, with module names that match the keys of
bkse's checkpoints (``feature_extractor.*``, ``adapter.*``, ``recon_trunk.*``) so that
``GOPRO_wVAE.pth`` loads. Layout (nf = 64 in DPS's configuration):

- ``feature_extractor``: conv 3x3 (input_nc -> nf), two stride-2 convs 3x3, LeakyReLU(0.1) after each,
  ``front_blocks`` residual blocks (conv-ReLU-conv, no normalisation);
- ``adapter`` (G's kernel injection): a 5-level U-Net; each level downsamples with a 4x4 stride-2 conv
  (LeakyReLU(0.2) before it, except at the top) and upsamples with ReLU, a double 5x5 conv and
  bilinear x2 (``align_corners=True``); the latent kernel is concatenated at the bottom, every level
  but the top concatenates its (activated) input as a skip, and the top ends with tanh;
- ``recon_trunk``: ``back_blocks`` residual blocks, two conv + PixelShuffle(2) + LeakyReLU(0.1)
  up-samplings, conv + LeakyReLU, conv to input_nc; the input image is added at the end;
- bkse's ``kernel_extractor`` (F, the encoder of a kernel from a sharp/blurred pair) is not needed to
  blur: it is not built, and its weights in a checkpoint are ignored.

Images: bkse's network works on [0, 1] images (DPS maps its [-1, 1] images to [0, 1] before the
network and back after, clipping to the range), so a [0, 1] image goes in unchanged here and the
output is clipped to [0, 1]. Image sides must be multiples of 128 (2 x 2 stride-2 convs in the
features, 5 in the U-Net); the latent kernel has shape (1, 8 nf, H / 128, W / 128).

>>> import torch
>>> op = NonlinearBlur(allow_random_weights=True, image_size=128,
...                    network_config=dict(nf=8, front_blocks=1, back_blocks=1))
>>> x = torch.rand(1, 3, 128, 128, requires_grad=True)
>>> y = op(x)
>>> torch.equal(y, op(x)), y.shape
(True, torch.Size([1, 3, 128, 128]))
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ugodit_pl.operators.base import Operator, batch_size_of
from ugodit_pl.state_dicts import load_state_strict

__all__ = ["KernelWizard", "NonlinearBlur", "load_kernel_wizard_state"]

DOWNSAMPLING = 128
"""The total down-sampling of KernelWizard's kernel path: 4 in the features times 32 in the U-Net."""


class ResidualBlockNoBN(nn.Module):
    """x + conv(ReLU(conv(x))), 3x3 convolutions with bias, no normalisation."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class DoubleConv(nn.Module):
    """(conv 5x5 -> ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 5, padding=2), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 5, padding=2), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class UNetLevel(nn.Module):
    """One level of the kernel adapter's U-Net (``outer`` channels outside, ``inner`` inside).

    ``top``: conv down, the levels below, ReLU-DoubleConv-upsample-tanh up, no skip.
    ``bottom``: LeakyReLU(0.2)-conv down, concatenation with the latent kernel, up, skip.
    Otherwise: LeakyReLU(0.2)-conv down, the levels below, up, skip. The skip is the input after the
    LeakyReLU (bkse applies that activation in place, so its skip carries the activated input).
    """

    def __init__(self, outer: int, inner: int, input_nc: int | None = None, submodule: "UNetLevel | None" = None,
                 top: bool = False) -> None:
        super().__init__()
        self.top = top
        self.bottom = submodule is None
        input_nc = outer if input_nc is None else input_nc
        conv = nn.Conv2d(input_nc, inner, kernel_size=4, stride=2, padding=1, bias=False)
        if top:
            self.down = nn.Sequential(conv)
        elif self.bottom:
            self.down = nn.Sequential(nn.LeakyReLU(0.2), conv)
        else:
            self.down = nn.Sequential(nn.LeakyReLU(0.2), conv, nn.Identity())
        if submodule is not None:
            self.submodule = submodule
        upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.up = nn.Sequential(nn.ReLU(), DoubleConv(inner * 2, outer), upsample, nn.Tanh() if top else nn.Identity())

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        if self.top:
            return self.up(self.submodule(self.down(x), latent))
        skip = self.down[0](x)
        inner = self.down[1:](skip)
        if self.bottom:
            expected_channels = self.up[1].double_conv[0].in_channels
            if latent.shape[-2:] != inner.shape[-2:] or latent.shape[1] + inner.shape[1] != expected_channels:
                raise ValueError(
                    f"latent kernel of shape {tuple(latent.shape)} does not fit the U-Net bottom "
                    f"({inner.shape[1]} channels of size {tuple(inner.shape[-2:])})"
                )
            inner = torch.cat((inner, latent), dim=1)
        else:
            inner = self.submodule(inner, latent)
        return torch.cat((self.up(inner), skip), dim=1)


class KernelAdapter(nn.Module):
    """G's kernel injection: a 5-level U-Net on nf-channel features, the latent (8 nf channels) at the bottom."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        level = UNetLevel(nf * 8, nf * 8)
        level = UNetLevel(nf * 4, nf * 8, submodule=level)
        level = UNetLevel(nf * 2, nf * 4, submodule=level)
        level = UNetLevel(nf, nf * 2, submodule=level)
        self.model = UNetLevel(nf, nf, input_nc=nf, submodule=level, top=True)

    def forward(self, features: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return self.model(features, latent)


class KernelWizard(nn.Module):
    """The blurring part of bkse's KernelWizard: ``adapt_kernel(x, k)`` blurs x with the encoded kernel k (G).

    Arguments map to bkse's options: ``input_nc``, ``nf``, ``front_blocks`` (front_RBs) and
    ``back_blocks`` (back_RBs); the defaults are DPS's configuration (normalisation "none",
    reflection padding, no dropout: the only configuration supported). The latent kernel has 8 nf
    channels (bkse's kernel_dim = 512 for nf = 64).

    Building it like any module initialises it from the global RNG; ``KernelWizard.empty``,
    ``.random(seed)`` and ``.from_checkpoint(path)`` build it on the meta device first and never touch it.

    >>> net = KernelWizard.empty()
    >>> net.latent_channels, tuple(net.adapter.model.down[0].weight.shape)
    (512, (64, 64, 4, 4))
    """

    def __init__(self, input_nc: int = 3, nf: int = 64, front_blocks: int = 10, back_blocks: int = 20) -> None:
        super().__init__()
        self.config = dict(input_nc=input_nc, nf=nf, front_blocks=front_blocks, back_blocks=back_blocks)
        self.input_nc = input_nc
        self.latent_channels = 8 * nf
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(input_nc, nf, 3, 1, 1), nn.LeakyReLU(0.1),
            nn.Conv2d(nf, nf, 3, 2, 1), nn.LeakyReLU(0.1),
            nn.Conv2d(nf, nf, 3, 2, 1), nn.LeakyReLU(0.1),
            *[ResidualBlockNoBN(nf) for _ in range(front_blocks)],
        )
        self.adapter = KernelAdapter(nf)
        self.recon_trunk = nn.Sequential(
            *[ResidualBlockNoBN(nf) for _ in range(back_blocks)],
            nn.Conv2d(nf, nf * 4, 3, 1, 1), nn.PixelShuffle(2), nn.LeakyReLU(0.1),
            nn.Conv2d(nf, nf * 4, 3, 1, 1), nn.PixelShuffle(2), nn.LeakyReLU(0.1),
            nn.Conv2d(nf, nf, 3, 1, 1), nn.LeakyReLU(0.1),
            nn.Conv2d(nf, input_nc, 3, 1, 1),
        )

    def adapt_kernel(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Blur ``x`` (B, input_nc, H, W) in [0, 1] with the latent kernel (B, 8 nf, H / 128, W / 128)."""
        return x + self.recon_trunk(self.adapter(self.feature_extractor(x), latent))

    # -- construction without the global RNG --------------------------------------------------------------

    @classmethod
    def empty(cls, device: torch.device | str = "cpu", **config: Any) -> "KernelWizard":
        """A network with uninitialised weights (built on the meta device, then allocated on ``device``)."""
        with torch.device("meta"):
            network = cls(**config)
        return network.to_empty(device=device)

    @classmethod
    def random(cls, seed: int = 0, **config: Any) -> "KernelWizard":
        """A network with seeded random weights (for tests): Kaiming-normal convs, zero biases.

        Residual-block convs and the last conv are scaled by 0.1 (as bkse initialises its residual
        blocks), so that the random blur model stays close to the identity.
        """
        network = cls.empty(**config)
        generator = torch.Generator().manual_seed(seed)
        small = {id(m) for block in network.modules() if isinstance(block, ResidualBlockNoBN) for m in block.children()}
        small.add(id(network.recon_trunk[-1]))
        with torch.no_grad():
            for module in network.modules():
                if isinstance(module, nn.Conv2d):
                    fan_in = module.weight[0].numel()
                    std = (2.0 / fan_in) ** 0.5 * (0.1 if id(module) in small else 1.0)
                    module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                    if module.bias is not None:
                        module.bias.zero_()
        return network

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **config: Any) -> "KernelWizard":
        """A network loaded from a bkse checkpoint (the weights of its kernel extractor F are ignored)."""
        network = cls.empty(**config)
        state = {k: v for k, v in load_kernel_wizard_state(path).items() if not k.startswith("kernel_extractor.")}
        load_state_strict(network, state, repr(str(path)), f"KernelWizard {network.config}")
        return network


def load_kernel_wizard_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a bkse checkpoint (``torch.load(..., weights_only=True)`` on the CPU).

    Unwraps checkpoints that nest the weights (under ``state_dict``, ``params``, ``model``, ``network``,
    ``net``, ``netG`` or ``params_ema``) and strips a ``module.`` prefix (DataParallel).
    """
    obj: Any = torch.load(Path(path), map_location="cpu", weights_only=True)
    for _ in range(3):
        if not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        nested = [k for k in ("state_dict", "params", "model", "network", "net", "netG", "params_ema")
                  if isinstance(obj.get(k), Mapping)]
        if not nested:
            break
        obj = obj[nested[0]]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict of KernelWizard weights")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


@functools.lru_cache(maxsize=4)
def _cached_checkpoint(path: str, mtime_ns: int, size: int, config: tuple) -> KernelWizard:
    return _freeze(KernelWizard.from_checkpoint(path, **dict(config)))


@functools.lru_cache(maxsize=4)
def _cached_random(config: tuple) -> KernelWizard:
    return _freeze(KernelWizard.random(seed=0, **dict(config)))


def _freeze(network: KernelWizard) -> KernelWizard:
    network.requires_grad_(False)
    return network.eval()


_MISSING_WEIGHTS = (
    "NonlinearBlur needs the GOPRO_wVAE.pth weights of bkse (Tran et al., CVPR 2021, "
    "VinAIResearch/blur-kernel-space-exploring; the blur model DPS uses for non-linear deblurring): "
    "pass weights_path=... (or allow_random_weights=True for tests only)"
)


def _image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < DOWNSAMPLING or any(s % DOWNSAMPLING for s in size):
        raise ValueError(
            f"image_size must be (H, W) with H and W positive multiples of {DOWNSAMPLING}, got {image_size!r}"
        )
    return size  # type: ignore[return-value]


class NonlinearBlur(Operator):
    """y = clip(G(x, k), 0, 1): DPS's non-linear blur with one fixed latent kernel per measurement.

    Arguments:
        weights_path: bkse's ``GOPRO_wVAE.pth`` (loaded once per file and shared by operators).
        seed: seeds the latent kernel ``k = kernel_scale * N(0, I)`` of shape
            (1, 8 nf, H / 128, W / 128), drawn at construction (DPS: (1, 512, 2, 2), scale 1.2).
        kernel_scale: the standard deviation of the latent kernel (DPS: 1.2).
        image_size: the (H, W) of the images (multiples of 128); DPS's 256.
        allow_random_weights: without ``weights_path``, use a seeded random network (tests only).
        network: an existing ``KernelWizard`` to share (takes precedence over ``weights_path``).
        network_config: ``KernelWizard`` arguments for a non-default architecture.
        latent: an explicit latent kernel (B|1, 8 nf, H / 128, W / 128) instead of drawing one.
        clip: clip the output to [0, 1] as DPS does (which stops gradients where it clips).

    Not linear: no adjoint; ``init_input(y)`` is ``y``. The network is frozen (no gradients, eval
    mode) and shared between operators built from the same file; gradients flow to ``x``.

    >>> op = NonlinearBlur(allow_random_weights=True, image_size=128, seed=1,
    ...                    network_config=dict(nf=8, front_blocks=1, back_blocks=1))
    >>> op.latent.shape
    torch.Size([1, 64, 1, 1])
    """

    linear = False

    def __init__(
        self,
        weights_path: str | os.PathLike | None = None,
        seed: int = 0,
        kernel_scale: float = 1.2,
        image_size: int | Sequence[int] = 256,
        *,
        allow_random_weights: bool = False,
        network: KernelWizard | None = None,
        network_config: Mapping[str, Any] | None = None,
        latent: torch.Tensor | None = None,
        clip: bool = True,
    ) -> None:
        super().__init__()
        config = tuple(sorted((network_config or {}).items()))
        if network is None:
            if weights_path is not None:
                path = Path(weights_path).expanduser().resolve()
                if not path.is_file():
                    raise FileNotFoundError(f"{_MISSING_WEIGHTS}; no file at {str(path)!r}")
                stat = path.stat()
                network = _cached_checkpoint(str(path), stat.st_mtime_ns, stat.st_size, config)
            elif allow_random_weights:
                network = _cached_random(config)
            else:
                raise ValueError(_MISSING_WEIGHTS)
        elif not isinstance(network, KernelWizard):
            raise TypeError(f"network must be a KernelWizard, got {type(network).__name__}")
        self.network = _freeze(network)
        self.image_size = _image_size(image_size)
        self.kernel_scale = float(kernel_scale)
        self.seed = seed
        self.clip = bool(clip)
        height, width = self.image_size
        shape = (self.network.latent_channels, height // DOWNSAMPLING, width // DOWNSAMPLING)
        if latent is None:
            generator = torch.Generator().manual_seed(int(seed))
            latent = torch.randn((1, *shape), generator=generator) * self.kernel_scale
        latent = torch.as_tensor(latent, dtype=torch.float32)
        if latent.ndim != 4 or tuple(latent.shape[1:]) != shape:
            raise ValueError(
                f"latent must have shape (B|1, {shape[0]}, {shape[1]}, {shape[2]}), got {tuple(latent.shape)}"
            )
        self.register_buffer("latent", latent.contiguous())

    def train(self, mode: bool = True) -> "NonlinearBlur":
        super().train(mode)
        self.network.eval()  # the blur model is fixed: always evaluation mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.network.input_nc or tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(
                f"x must be (B, {self.network.input_nc}, {self.image_size[0]}, {self.image_size[1]}), "
                f"got {tuple(x.shape)}"
            )
        if self.latent.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"x has batch size {x.shape[0]} but the operator holds {self.latent.shape[0]} latent kernels"
            )
        dtype = next(self.network.parameters()).dtype
        latent = self.latent.to(dtype).expand(x.shape[0], -1, -1, -1)
        out = self.network.adapt_kernel(x.to(dtype), latent).to(x.dtype)
        return out.clamp(0.0, 1.0) if self.clip else out

    def init_input(self, y: torch.Tensor) -> torch.Tensor:
        """The blurred image itself, the input the authors start deblurring from."""
        return y

    def _like(self, latent: torch.Tensor) -> "NonlinearBlur":
        return type(self)(network=self.network, seed=self.seed, kernel_scale=self.kernel_scale,
                          image_size=self.image_size, latent=latent, clip=self.clip)

    @classmethod
    def stack(cls, operators: Sequence["NonlinearBlur"]) -> "NonlinearBlur":
        """One operator with the latent kernels of ``operators`` (which must share one network)."""
        if not operators:
            raise ValueError("stack needs at least one operator")
        first = operators[0]
        if any(op.network is not first.network for op in operators):
            raise ValueError("stack needs NonlinearBlur operators that share one network (the same weights_path "
                             "or network=...)")
        if any(op.image_size != first.image_size or op.clip != first.clip for op in operators):
            raise ValueError("cannot stack NonlinearBlur operators with different image sizes or clip settings")
        return first._like(torch.cat([op.latent for op in operators]))

    def select(self, index: torch.Tensor | Sequence[int]) -> "NonlinearBlur":
        """The operator of the samples ``index`` (a shared latent kernel stays shared)."""
        if self.latent.shape[0] == 1:
            return self._like(self.latent)
        index = torch.as_tensor(index, dtype=torch.long, device=self.latent.device).reshape(-1)
        return self._like(self.latent[index])

    @property
    def batch_size(self) -> int:
        return batch_size_of(self.latent)

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, kernel_scale={self.kernel_scale}, seed={self.seed}, "
            f"latent={tuple(self.latent.shape)}"
        )
