"""Data modules: fixed sets of measurements served as one batch per step, and the embedded demo data.

- :class:`FastMRIDataModule`: multi-coil / single-coil MRI slices from fastMRI-format HDF5 files;
- :class:`DegradedImageDataModule`: natural images degraded by a DPS forward model (or already degraded);
- :func:`collate_measurements`: per-measurement dicts -> the batch dict of docs/ARCHITECTURE.md;
- :func:`demo_images`, :func:`make_mri_demo`: demo data from scikit-image's bundled photographs,
  :func:`make_real_mri_demo`: real MRI slices that matplotlib and nibabel ship (nothing downloaded);
- :class:`DataError`: the error raised for unusable data (a ``ValueError``).

Names load on first use, so importing one does not import the others.

>>> from ugodit_pl.datamodules import collate_measurements, DataError
>>> issubclass(DataError, ValueError)
True
"""

from typing import TYPE_CHECKING

from ugodit_pl._lazy import lazy_getattr

_NAMES = {
    "DataError": ".errors",
    "collate_measurements": ".collate",
    "MeasurementDataModule": ".base",
    "RepeatedBatch": ".base",
    "FastMRIDataModule": ".fastmri",
    "DegradedImageDataModule": ".images",
    "OPERATOR_NAMES": ".images",
    "demo_images": ".demo",
    "make_mri_demo": ".demo",
    "make_real_mri_demo": ".demo",
    "stable_seed": ".seeding",
}
if TYPE_CHECKING:  # names for IDEs and type checkers; at run time they load on first use
    from .base import MeasurementDataModule, RepeatedBatch
    from .collate import collate_measurements
    from .demo import demo_images, make_mri_demo, make_real_mri_demo
    from .errors import DataError
    from .fastmri import FastMRIDataModule
    from .images import DegradedImageDataModule, OPERATOR_NAMES
    from .seeding import stable_seed

__all__ = sorted(_NAMES)
__getattr__ = lazy_getattr(__name__, _NAMES)
