"""Networks split into a shared ``.encoder`` and a ``.decoder``, and M decoders in one batched pass.

>>> import torch
>>> from ugodit_pl.nets import UNet
>>> net = UNet(in_channels=2, out_channels=2, channels=(8, 16, 32, 32))
>>> net(torch.randn(1, 2, 32, 32)).shape
torch.Size([1, 2, 32, 32])
"""

from typing import TYPE_CHECKING

from ugodit_pl._lazy import lazy_getattr

_NAMES = {
    "SkipNet": ".skip",
    "UNet": ".unet",
    "PerSampleBatchNorm2d": ".norm",
    "ModuleStack": ".stack",
    "reinit_decoder_": ".init",
    "zero_output_layer_": ".init",
    "build_network": ".registry",
}
if TYPE_CHECKING:  # names for IDEs and type checkers; at run time they load on first use
    from .init import reinit_decoder_, zero_output_layer_
    from .norm import PerSampleBatchNorm2d
    from .registry import build_network
    from .skip import SkipNet
    from .stack import ModuleStack
    from .unet import UNet

__all__ = sorted(_NAMES)
__getattr__ = lazy_getattr(__name__, _NAMES)
