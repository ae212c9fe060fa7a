"""Lightning callbacks for untrained-network fits, duck-typed on the module's outputs.

- :class:`WMVEarlyStopping`: ES-WMV early stopping (windowed moving variance, no ground truth);
- :class:`HeldOutEarlyStopping`: early stopping by the error on held-out k-space (MRI, no ground truth);
- :class:`ReconstructionMetrics`: PSNR / SSIM / NMSE against ``batch["target"]`` while fitting;
- :class:`ReconstructionImages`: the reconstruction, target and error map as images in the logger
  (TensorBoard's ``add_image``; PNG files in the log folder for other loggers);
- :class:`TransferableWeightsCheckpoint`: writes UGoDIT's transferable weights (latest, periodic, best);
- :class:`DivergenceRollback`: restores the last good state on a NaN or a loss jump;
- :class:`ReconstructionWriter`: fastMRI-format HDF5 volumes / PNGs, resumable over chunks of slices.

They work with the ugodit-pl methods and with any LightningModule exposing ``current_output`` (a
detached (B, C, H, W) tensor of the step's output; see docs/ARCHITECTURE.md). Names load on first use.

>>> from ugodit_pl.callbacks import WMVEarlyStopping, ReconstructionMetrics
>>> WMVEarlyStopping(window=50, patience=500).window
50
"""

from typing import TYPE_CHECKING

from ugodit_pl._lazy import lazy_getattr

_NAMES = {
    "WMVEarlyStopping": ".early_stopping",
    "HeldOutEarlyStopping": ".holdout",
    "ReconstructionMetrics": ".metrics",
    "ReconstructionImages": ".images",
    "TransferableWeightsCheckpoint": ".transferable",
    "DivergenceRollback": ".rollback",
    "ReconstructionWriter": ".writer",
}
if TYPE_CHECKING:  # names for IDEs and type checkers; at run time they load on first use
    from .early_stopping import WMVEarlyStopping
    from .holdout import HeldOutEarlyStopping
    from .images import ReconstructionImages
    from .metrics import ReconstructionMetrics
    from .rollback import DivergenceRollback
    from .transferable import TransferableWeightsCheckpoint
    from .writer import ReconstructionWriter

__all__ = sorted(_NAMES)
__getattr__ = lazy_getattr(__name__, _NAMES)
