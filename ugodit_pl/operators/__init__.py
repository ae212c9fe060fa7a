"""Forward models as ``torch.nn.Module``s: MRI (multi-coil SENSE, single-coil), DPS image degradations, noise.

>>> import torch
>>> from ugodit_pl.operators import MultiCoilMRI, make_mask
>>> mask = make_mask("random", (32, 32), acceleration=4, center_fraction=0.08, seed=0)
>>> maps = torch.ones(1, 1, 32, 32, dtype=torch.complex64)
>>> op = MultiCoilMRI(mask, maps)
>>> op(torch.randn(1, 2, 32, 32)).shape
torch.Size([1, 1, 32, 32])
"""

from typing import TYPE_CHECKING

from ugodit_pl._lazy import lazy_getattr

_NAMES = {
    "Operator": ".base",
    "MultiCoilMRI": ".mri",
    "SingleCoilMRI": ".mri",
    "make_mask": ".masks",
    "estimate_coil_maps": ".coil_maps",
    "SuperResolution": ".resize",
    "GaussianBlur": ".blur",
    "MotionBlur": ".blur",
    "Inpainting": ".inpainting",
    "NonlinearBlur": ".nonlinear_blur",
    "GaussianNoise": ".noise",
    "PoissonNoise": ".noise",
}
if TYPE_CHECKING:  # names for IDEs and type checkers; at run time they load on first use
    from .base import Operator
    from .blur import GaussianBlur, MotionBlur
    from .coil_maps import estimate_coil_maps
    from .inpainting import Inpainting
    from .masks import make_mask
    from .mri import MultiCoilMRI, SingleCoilMRI
    from .noise import GaussianNoise, PoissonNoise
    from .nonlinear_blur import NonlinearBlur
    from .resize import SuperResolution

__all__ = sorted(_NAMES)
__getattr__ = lazy_getattr(__name__, _NAMES)
