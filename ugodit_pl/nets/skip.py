"""The Deep-Image-Prior "skip" network, split into an encoder and a decoder as UGoDIT splits it.

Scale i = 0 .. n-1 works at resolution H / 2^i (n = ``len(channels_down)``, default 5):

- encoder, per scale: a skip branch on the scale's input (conv ``kernel_size_skip`` + BN + act;
  absent when ``channels_skip[i] == 0``) and a down branch (conv stride 2 + BN + act + conv + BN +
  act) whose output is the next scale's input. It returns ``(deepest, skips)``: the output of the
  last down branch (H / 2^n) and the skip features ordered finest first (``skips[i]`` at H / 2^i;
  ``None`` where a scale has no skip).
- decoder, per scale from the deepest: upsample x2, concatenate ``[skip_i, upsampled]``, conv
  ``kernel_size_up`` + BN + act, optional 1x1 conv + BN + act; then a 1x1 conv to ``out_channels``
  and an optional sigmoid.

"act" is LeakyReLU(0.2); BN is :class:`PerSampleBatchNorm2d`; every conv is preceded by reflection
padding of ``(k - 1) // 2`` (or uses zero padding with ``pad="zero"``). The original DIP skip network
has a BatchNorm right after each concatenation; UGoDIT's split decoder (``models/skip_shared.py``)
has none, and that is the default here (``bn_after_concat=False``). With ``bn_after_concat=True``
the network is the original DIP skip network. H and W must be divisible by 2^n (a ``ValueError``
says so otherwise); crop or pad the input beforehand.

>>> import torch
>>> net = SkipNet(channels_down=(8, 8), channels_up=(8, 8), channels_skip=(2, 2))
>>> deepest, skips = net.encoder(torch.randn(1, 3, 16, 16))
>>> deepest.shape, [s.shape for s in skips]
(torch.Size([1, 8, 4, 4]), [torch.Size([1, 2, 16, 16]), torch.Size([1, 2, 8, 8])])
>>> net.decoder(deepest, skips).shape
torch.Size([1, 3, 16, 16])
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ugodit_pl.arguments import check_choice

from .init import seeded
from .norm import PerSampleBatchNorm2d
from .stack import StackableConv2d

__all__ = ["SkipEncoder", "SkipDecoder", "SkipNet"]

_PADS = ("reflection", "zero")
_UPSAMPLE_MODES = ("bilinear", "nearest")


class _PaddedConv(nn.Module):
    """A convolution with 'same' padding of (k - 1) // 2: reflection padding or zero padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool, pad: str):
        super().__init__()
        self.padding = (kernel_size - 1) // 2
        self.reflect = pad == "reflection" and self.padding > 0
        zero_pad = 0 if self.reflect else self.padding
        self.conv = StackableConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=zero_pad, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.reflect:
            x = F.pad(x, [self.padding] * 4, mode="reflect")
        return self.conv(x)


class _ConvNormAct(nn.Module):
    """Padded conv + PerSampleBatchNorm2d + LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool, pad: str):
        super().__init__()
        self.conv = _PaddedConv(in_channels, out_channels, kernel_size, stride, bias, pad)
        self.norm = PerSampleBatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(self.norm(self.conv(x)), 0.2)


def _check_args(
    channels_down: Sequence[int], channels_up: Sequence[int], channels_skip: Sequence[int], pad: str, upsample_mode: str
) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
    down, up, skip = (tuple(int(c) for c in v) for v in (channels_down, channels_up, channels_skip))
    if not (len(down) == len(up) == len(skip)) or len(down) == 0:
        raise ValueError(
            f"SkipNet: channels_down, channels_up and channels_skip must be non-empty and of equal length, "
            f"got lengths {len(down)}, {len(up)}, {len(skip)}"
        )
    if any(c < 1 for c in down + up) or any(c < 0 for c in skip):
        raise ValueError("SkipNet: channels_down/channels_up must be >= 1 and channels_skip >= 0")
    check_choice("SkipNet: pad", pad, _PADS)
    check_choice("SkipNet: upsample_mode", upsample_mode, _UPSAMPLE_MODES)
    return down, up, skip


class SkipEncoder(nn.Module):
    """``x -> (deepest, skips)``: per-scale skip branches and stride-2 down branches.

    >>> enc = SkipEncoder(3, (4, 4, 4), (1, 0, 1))
    >>> deepest, skips = enc(torch.randn(1, 3, 16, 16))
    >>> deepest.shape, skips[1] is None
    (torch.Size([1, 4, 2, 2]), True)
    """

    def __init__(
        self,
        in_channels: int,
        channels_down: Sequence[int],
        channels_skip: Sequence[int],
        kernel_size_down: int = 3,
        kernel_size_skip: int = 1,
        bias: bool = True,
        pad: str = "reflection",
    ):
        super().__init__()
        down, _, skip = _check_args(channels_down, channels_down, channels_skip, pad, "bilinear")
        self.scales = len(down)
        self.minimum_size = 2 ** (self.scales + 1)  # the deepest scale needs more than one value per channel
        self.size_multiple = 2**self.scales
        self.has_skip = tuple(c > 0 for c in skip)
        current = in_channels
        for i in range(self.scales):
            if skip[i] > 0:
                self.add_module(f"skip{i}", _ConvNormAct(current, skip[i], kernel_size_skip, 1, bias, pad))
            self.add_module(
                f"down{i}",
                nn.Sequential(
                    _ConvNormAct(current, down[i], kernel_size_down, 2, bias, pad),
                    _ConvNormAct(down[i], down[i], kernel_size_down, 1, bias, pad),
                ),
            )
            current = down[i]

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[Optional[Tensor], ...]]:
        factor = 2**self.scales
        if x.dim() != 4 or x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"SkipNet encoder: expected input (B, C, H, W) with H and W divisible by 2^{self.scales} = {factor} "
                f"({self.scales} scales), got shape {tuple(x.shape)}; crop or pad the input first"
            )
        skips: List[Optional[Tensor]] = []
        for i in range(self.scales):
            skips.append(getattr(self, f"skip{i}")(x) if self.has_skip[i] else None)
            x = getattr(self, f"down{i}")(x)
        return x, tuple(skips)


class SkipDecoder(nn.Module):
    """``(deepest, skips) -> image``; ``skips`` finest first, as :class:`SkipEncoder` returns them.

    >>> dec = SkipDecoder(3, (4, 4), (4, 4), (1, 1))
    >>> dec(torch.randn(1, 4, 2, 2), (torch.randn(1, 1, 8, 8), torch.randn(1, 1, 4, 4))).shape
    torch.Size([1, 3, 8, 8])
    """

    def __init__(
        self,
        out_channels: int,
        channels_down: Sequence[int],
        channels_up: Sequence[int],
        channels_skip: Sequence[int],
        kernel_size_up: int = 3,
        bias: bool = True,
        pad: str = "reflection",
        upsample_mode: str = "bilinear",
        need_sigmoid: bool = True,
        need1x1_up: bool = True,
        bn_after_concat: bool = False,
    ):
        super().__init__()
        down, up, skip = _check_args(channels_down, channels_up, channels_skip, pad, upsample_mode)
        self.scales = len(down)
        self.upsample_mode = upsample_mode
        self.need_sigmoid = need_sigmoid
        for i in reversed(range(self.scales)):
            deeper = down[i] if i == self.scales - 1 else up[i + 1]
            layers: List[nn.Module] = []
            if bn_after_concat:
                layers.append(PerSampleBatchNorm2d(skip[i] + deeper))
            layers.append(_ConvNormAct(skip[i] + deeper, up[i], kernel_size_up, 1, bias, pad))
            if need1x1_up:
                layers.append(_ConvNormAct(up[i], up[i], 1, 1, bias, pad))
            self.add_module(f"up{i}", nn.Sequential(*layers))
        self.outc = StackableConv2d(up[0], out_channels, kernel_size=1, bias=bias)

    def forward(self, deepest: Tensor, skips: Sequence[Optional[Tensor]]) -> Tensor:
        if len(skips) != self.scales:
            raise ValueError(f"SkipNet decoder: expected {self.scales} skips (finest first), got {len(skips)}")
        x = deepest
        align = False if self.upsample_mode == "bilinear" else None
        for i in reversed(range(self.scales)):
            x = F.interpolate(x, scale_factor=2, mode=self.upsample_mode, align_corners=align)
            if skips[i] is not None:
                x = torch.cat([skips[i], x], dim=1)
            x = getattr(self, f"up{i}")(x)
        x = self.outc(x)
        return torch.sigmoid(x) if self.need_sigmoid else x


class SkipNet(nn.Module):
    """The DIP skip network (natural-image experiments): ``forward(x) = decoder(*encoder(x))``.

    Defaults: 5 scales, 128 channels down and up, 4-channel 1x1 skips, stride-2 downsampling,
    reflection padding, bilinear upsampling, sigmoid output. ``seed`` seeds the (PyTorch default)
    initial weights (``None``: the global RNG).

    >>> net = SkipNet(channels_down=(8, 8), channels_up=(8, 8), channels_skip=(2, 2))
    >>> net(torch.rand(2, 3, 16, 16)).shape
    torch.Size([2, 3, 16, 16])
    >>> SkipNet(**net.config).config == net.config
    True
    """

    network_name = "skip"

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        channels_down: Sequence[int] = (128,) * 5,
        channels_up: Sequence[int] = (128,) * 5,
        channels_skip: Sequence[int] = (4,) * 5,
        kernel_size_down: int = 3,
        kernel_size_up: int = 3,
        kernel_size_skip: int = 1,
        pad: str = "reflection",
        upsample_mode: str = "bilinear",
        need_sigmoid: bool = True,
        need1x1_up: bool = True,
        need_bias: bool = True,
        bn_after_concat: bool = False,
        seed: Optional[int] = None,
    ):
        super().__init__()
        down, up, skip = _check_args(channels_down, channels_up, channels_skip, pad, upsample_mode)
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"SkipNet: in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        for name, k in (("kernel_size_down", kernel_size_down), ("kernel_size_up", kernel_size_up), ("kernel_size_skip", kernel_size_skip)):
            if k < 1 or k % 2 == 0:
                raise ValueError(f"SkipNet: {name} must be a positive odd integer, got {k}")
        self._config: Dict[str, Any] = {
            "in_channels": int(in_channels),
            "out_channels": int(out_channels),
            "channels_down": list(down),
            "channels_up": list(up),
            "channels_skip": list(skip),
            "kernel_size_down": int(kernel_size_down),
            "kernel_size_up": int(kernel_size_up),
            "kernel_size_skip": int(kernel_size_skip),
            "pad": pad,
            "upsample_mode": upsample_mode,
            "need_sigmoid": bool(need_sigmoid),
            "need1x1_up": bool(need1x1_up),
            "need_bias": bool(need_bias),
            "bn_after_concat": bool(bn_after_concat),
            "seed": seed,
        }
        with seeded(seed):
            self.encoder = SkipEncoder(in_channels, down, skip, kernel_size_down, kernel_size_skip, need_bias, pad)
            self.decoder = self._new_decoder()

    def _new_decoder(self) -> SkipDecoder:
        c = self._config
        return SkipDecoder(
            c["out_channels"], c["channels_down"], c["channels_up"], c["channels_skip"], c["kernel_size_up"],
            c["need_bias"], c["pad"], c["upsample_mode"], c["need_sigmoid"], c["need1x1_up"], c["bn_after_concat"],
        )

    @property
    def config(self) -> Dict[str, Any]:
        """The constructor arguments (plain Python values): ``build_network("skip", **net.config)``."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}

    def make_decoder(self, seed: Optional[int] = None) -> SkipDecoder:
        """A fresh decoder of the same architecture (PyTorch default initialisation).

        ``seed`` seeds its weights; ``None`` draws them from the global RNG (e.g. inside a caller's
        seeded block).
        """
        with seeded(seed):
            return self._new_decoder()

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(*self.encoder(x))
