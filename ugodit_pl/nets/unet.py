"""The U-Net of the UGoDIT MRI experiments, split into a shared encoder and a decoder.

Layout (widths ``channels = (c0, c1, c2, c3)``, default (64, 128, 256, 256)):

- encoder: ``inc`` = DoubleConv(in, c0); ``down1..3`` = MaxPool2d(2) + DoubleConv to c1, c2, c3;
  it returns ``(deepest, skips)`` with ``skips = (x1, x2, x3)`` ordered from the finest
  (full resolution) to the coarsest; ``deepest`` = x4 (H/8).
- decoder: ``up1..3`` each upsample by 2 (bilinear, ``align_corners=True``), pad to the skip's size,
  concatenate ``[skip, upsampled]`` and apply DoubleConv(in, out, mid=in // 2), where ``out`` is the
  width of the next (finer) skip and c0 for the last block: (c3 + c2 -> c1), (c1 + c1 -> c0),
  (c0 + c0 -> c0); then a 1x1 output convolution (with bias).
- DoubleConv = (3x3 conv + BatchNorm + ReLU) x 2, with :class:`PerSampleBatchNorm2d`.

The 3x3 convolutions carry a bias by default (``conv_bias=True``): that is the variant whose size is
the 4,283,842 parameters of the authors' network for 2 channels in and out (without the biases it
has 4,281,730). More (or fewer) levels follow from a longer (or shorter) ``channels``.

>>> import torch
>>> net = UNet(channels=(8, 16, 32, 32))
>>> deepest, skips = net.encoder(torch.randn(1, 2, 20, 28))
>>> deepest.shape, [s.shape[-2:] for s in skips]
(torch.Size([1, 32, 2, 3]), [torch.Size([20, 28]), torch.Size([10, 14]), torch.Size([5, 7])])
>>> net.decoder(deepest, skips).shape
torch.Size([1, 2, 20, 28])
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .init import seeded
from .norm import PerSampleBatchNorm2d
from .stack import StackableConv2d

__all__ = ["DoubleConv", "UNetEncoder", "UNetDecoder", "UNet"]


def _check_channels(channels: Sequence[int]) -> Tuple[int, ...]:
    widths = tuple(int(c) for c in channels)
    if len(widths) < 2 or any(c < 1 for c in widths):
        raise ValueError(f"UNet: channels must be at least 2 positive widths (e.g. (64, 128, 256, 256)), got {channels!r}")
    return widths


class DoubleConv(nn.Module):
    """(3x3 conv + BatchNorm + ReLU) x 2; the middle width defaults to ``out_channels``.

    >>> DoubleConv(2, 8)(torch.randn(1, 2, 6, 6)).shape
    torch.Size([1, 8, 6, 6])
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: Optional[int] = None, bias: bool = True):
        super().__init__()
        mid = out_channels if mid_channels is None else mid_channels
        self.conv1 = StackableConv2d(in_channels, mid, kernel_size=3, padding=1, bias=bias)
        self.norm1 = PerSampleBatchNorm2d(mid)
        self.conv2 = StackableConv2d(mid, out_channels, kernel_size=3, padding=1, bias=bias)
        self.norm2 = PerSampleBatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x)))


class _Down(nn.Module):
    """MaxPool2d(2) then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool):
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.max_pool2d(x, 2))


class _Up(nn.Module):
    """Bilinear x2 upsampling, padding to the skip's size, ``cat([skip, up])``, DoubleConv(mid=in // 2)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool):
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2, bias=bias)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        dy = skip.shape[-2] - x.shape[-2]
        dx = skip.shape[-1] - x.shape[-1]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNetEncoder(nn.Module):
    """``x -> (deepest, skips)``, skips ordered finest first (see the module docstring).

    >>> enc = UNetEncoder(2, (8, 16, 32))
    >>> deepest, skips = enc(torch.randn(1, 2, 16, 16))
    >>> deepest.shape, len(skips)
    (torch.Size([1, 32, 4, 4]), 2)
    """

    def __init__(self, in_channels: int, channels: Sequence[int], bias: bool = True):
        super().__init__()
        widths = _check_channels(channels)
        self.inc = DoubleConv(in_channels, widths[0], bias=bias)
        for k in range(1, len(widths)):
            self.add_module(f"down{k}", _Down(widths[k - 1], widths[k], bias))
        self.levels = len(widths) - 1
        self.minimum_size = 2 ** (self.levels + 1)  # the deepest level needs more than one value per channel
        self.size_multiple = 1

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[Tensor, ...]]:
        need = 2**self.levels
        if x.dim() != 4 or x.shape[-2] < need or x.shape[-1] < need:
            raise ValueError(
                f"UNet encoder: expected input (B, C, H, W) with H, W >= {need} "
                f"({self.levels} max-pool downsamplings), got shape {tuple(x.shape)}"
            )
        features = [self.inc(x)]
        for k in range(1, self.levels + 1):
            features.append(getattr(self, f"down{k}")(features[-1]))
        return features[-1], tuple(features[:-1])


class UNetDecoder(nn.Module):
    """``(deepest, skips) -> image``; ``skips`` ordered finest first, as the encoder returns them.

    >>> dec = UNetDecoder(2, (8, 16, 32))
    >>> dec(torch.randn(1, 32, 4, 4), (torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8))).shape
    torch.Size([1, 2, 16, 16])
    """

    def __init__(self, out_channels: int, channels: Sequence[int], bias: bool = True):
        super().__init__()
        widths = _check_channels(channels)
        self.levels = len(widths) - 1
        current = widths[-1]
        for k in range(1, self.levels + 1):
            level = self.levels - k  # the skip this block concatenates
            out = widths[level - 1] if level > 0 else widths[0]
            self.add_module(f"up{k}", _Up(current + widths[level], out, bias))
            current = out
        self.outc = StackableConv2d(current, out_channels, kernel_size=1)

    def forward(self, deepest: Tensor, skips: Sequence[Tensor]) -> Tensor:
        if len(skips) != self.levels:
            raise ValueError(f"UNet decoder: expected {self.levels} skips (finest first), got {len(skips)}")
        x = deepest
        for k in range(1, self.levels + 1):
            x = getattr(self, f"up{k}")(x, skips[self.levels - k])
        return self.outc(x)


class UNet(nn.Module):
    """The authors' MRI U-Net: ``forward(x) = decoder(*encoder(x))``.

    Args:
        in_channels, out_channels: 2 and 2 for complex MRI images (real, imaginary).
        channels: encoder widths, finest first; the decoder widths follow from them.
        conv_bias: biases on the 3x3 convolutions (True: the authors' 4,283,842-parameter network).
        seed: seed of the (PyTorch default) initial weights; ``None`` draws from the global RNG.

    >>> net = UNet()
    >>> sum(p.numel() for p in net.parameters())
    4283842
    >>> UNet(**net.config).config == net.config
    True
    """

    network_name = "unet"

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 2,
        channels: Sequence[int] = (64, 128, 256, 256),
        conv_bias: bool = True,
        seed: Optional[int] = None,
    ):
        super().__init__()
        widths = _check_channels(channels)
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"UNet: in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        self._config: Dict[str, Any] = {
            "in_channels": int(in_channels),
            "out_channels": int(out_channels),
            "channels": list(widths),
            "conv_bias": bool(conv_bias),
            "seed": seed,
        }
        with seeded(seed):
            self.encoder = UNetEncoder(in_channels, widths, conv_bias)
            self.decoder = UNetDecoder(out_channels, widths, conv_bias)

    @property
    def config(self) -> Dict[str, Any]:
        """The constructor arguments (plain Python values): ``build_network("unet", **net.config)``."""
        return dict(self._config, channels=list(self._config["channels"]))

    def make_decoder(self, seed: Optional[int] = None) -> UNetDecoder:
        """A fresh decoder of the same architecture (PyTorch default initialisation).

        ``seed`` seeds its weights; ``None`` draws them from the global RNG (e.g. inside a caller's
        seeded block).
        """
        with seeded(seed):
            return UNetDecoder(self._config["out_channels"], self._config["channels"], self._config["conv_bias"])

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(*self.encoder(x))
