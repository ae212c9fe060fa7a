"""The methods as LightningModules: DIP, reference-guided DIP, Self-Guided DIP, aSeqDIP, UGoDIT.

>>> from ugodit_pl.methods import ASeqDIP
>>> method = ASeqDIP(network="unet", network_args={"channels": [4, 8, 8, 8]})
>>> method.lam, method.lr
(0.4, 0.001)
"""

from typing import TYPE_CHECKING

from ugodit_pl._lazy import lazy_getattr

_NAMES = {
    "ReconstructionMethod": ".base",
    "DIP": ".dip",
    "ReferenceGuidedDIP": ".dip",
    "SelfGuidedDIP": ".self_guided",
    "ASeqDIP": ".aseqdip",
    "SequentialInputObjective": ".aseqdip",
    "UGoDITPretrain": ".ugodit",
    "UGoDITFit": ".ugodit",
    "save_transferable_weights": ".transferable",
    "load_transferable_weights": ".transferable",
    "repeat_measurements": ".ensemble",
    "ensemble_mean": ".ensemble",
}
if TYPE_CHECKING:  # names for IDEs and type checkers; at run time they load on first use
    from .aseqdip import ASeqDIP, SequentialInputObjective
    from .base import ReconstructionMethod
    from .dip import DIP, ReferenceGuidedDIP
    from .ensemble import ensemble_mean, repeat_measurements
    from .self_guided import SelfGuidedDIP
    from .transferable import load_transferable_weights, save_transferable_weights
    from .ugodit import UGoDITFit, UGoDITPretrain

__all__ = sorted(_NAMES)
__getattr__ = lazy_getattr(__name__, _NAMES)
