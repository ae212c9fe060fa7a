"""Natural images degraded by a DPS forward model, as a fixed set of measurements: :class:`DegradedImageDataModule`.

Like :class:`~ugodit_pl.datamodules.FastMRIDataModule` there are two sets, ``images`` (the test
images) and ``pretrain_images`` (the group UGoDIT pre-trains on), and ``role`` chooses the one the
train dataloader serves; an image in both sets is an error.

Per image (in [0, 1], RGB; grayscale gets 3 channels, alpha is dropped):

1. centre-crop to a square, then resize to ``size`` x ``size`` (bicubic with anti-aliasing) when
   ``size`` is given. With ``size=None`` nothing is resized and all images of the set must have the
   same square size (an error lists them otherwise); with a ``size`` every image is resized, so
   sizes cannot differ;
2. the operator by name (:data:`OPERATOR_NAMES`) with ``operator_args`` (the operators' own
   defaults are DPS's); per-image random choices (motion kernel, inpainting mask, latent kernel of
   the non-linear blur) are seeded with ``stable_seed(seed, "operator", file name)``;
3. ``y = noise(A(x))``: ``noise="gaussian"`` adds N(0, noise_sigma^2), with ``noise_sigma=0.025``
   by default: DPS's sigma 0.05 on its [-1, 1] scale is 0.025 on [0, 1]; ``"poisson"`` is DPS's
   Poisson noise with ``noise_rate``; ``"none"`` adds nothing. The noise is seeded with
   ``stable_seed(seed, "noise", file name)``.

``degraded=True``: the files are ALREADY degraded measurements (no ground truth, no target). ``y``
is the image itself (square-cropped; resized to the measurement size ``size / scale_factor`` for
super-resolution, ``size`` otherwise, when ``size`` is given); the operator is still built by name,
for an image of ``size`` (or, without ``size``, ``scale_factor`` times the measurement size).
No noise is added.

Items hold ``y`` (3, h, w), ``operator``, ``index``, ``name`` (the file name) and ``target``
(3, H, W) in [0, 1] (not with ``degraded=True``).

>>> import tempfile
>>> from ugodit_pl.datamodules import demo_images
>>> folder = tempfile.mkdtemp()
>>> paths = demo_images(folder, size=64, names=["astronaut", "coffee", "chelsea"])
>>> dm = DegradedImageDataModule(images=[paths[0]], pretrain_images=paths[1:], role="pretrain", size=64)
>>> dm.num_measurements
2
>>> dm.setup("fit")
>>> dm.batch["y"].shape, dm.batch["target"].shape, dm.batch["name"]
(torch.Size([2, 3, 16, 16]), torch.Size([2, 3, 64, 64]), ['coffee.png', 'chelsea.png'])
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ugodit_pl.arguments import check_choice, non_negative, positive, whole

from .base import MeasurementDataModule
from .errors import DataError
from .image_io import IMAGE_SUFFIXES, probe_size, read_rgb, resize_square, square_crop
from .seeding import stable_seed
from .selection import PathSpec, expand_paths

__all__ = ["DegradedImageDataModule", "NOISE_KINDS", "OPERATOR_NAMES", "build_operator"]

OPERATOR_NAMES = (
    "super_resolution",
    "gaussian_blur",
    "motion_blur",
    "nonlinear_blur",
    "inpainting",
    "inpainting_random",
    "inpainting_box",
)
"""Known operator names; ``"inpainting"`` takes ``operator_args["mask"]`` = ``"random"`` (default) or ``"box"``."""

NOISE_KINDS = ("gaussian", "poisson", "none")


def build_operator(name: str, args: dict[str, Any], image_size: tuple[int, int], seed: int):
    """The operator ``name`` for a (1, 3, H, W) image, with ``args`` and the per-image ``seed``.

    >>> op = build_operator("inpainting", {"mask": "box", "box_size": 8, "margin": 2}, (16, 16), seed=0)
    >>> type(op).__name__, tuple(op(torch.ones(1, 3, 16, 16)).shape)
    ('Inpainting', (1, 3, 16, 16))
    """
    from ugodit_pl import operators

    if name not in OPERATOR_NAMES:
        raise DataError(f"unknown operator {name!r}; known operators: {', '.join(OPERATOR_NAMES)}")
    args = dict(args)
    if "seed" in args:
        raise DataError("operator_args must not hold 'seed': per-image seeds derive from the data module's seed")
    if name == "inpainting":
        kind = args.pop("mask", "random")
        if kind not in ("random", "box"):
            raise DataError(f"operator 'inpainting' needs operator_args mask='random' or 'box', got {kind!r}")
        name = f"inpainting_{kind}"
    shape = (1, 3) + tuple(image_size)
    if name == "super_resolution":
        return operators.SuperResolution(**args)
    if name == "gaussian_blur":
        return operators.GaussianBlur(**args)
    if name == "motion_blur":
        return operators.MotionBlur(seed=seed, **args)
    if name == "nonlinear_blur":
        return operators.NonlinearBlur(seed=seed, image_size=tuple(image_size), **args)
    if name == "inpainting_random":
        return operators.Inpainting.random(shape, seed=seed, **args)
    return operators.Inpainting.box(shape, seed=seed, **args)


class DegradedImageDataModule(MeasurementDataModule):
    """Degraded natural images (see the module docstring).

    Args:
        images: the test images: a file, a folder (its .png / .jpg / .jpeg files, sorted) or a list.
        pretrain_images: the group pre-training images, likewise; optional.
        data_dir: folder that relative paths are relative to; ``None``: the working directory.
        role: ``"test"`` or ``"pretrain"``: the set the train dataloader serves.
        operator: one of :data:`OPERATOR_NAMES`.
        operator_args: keyword arguments of the operator (e.g. ``{"scale_factor": 4}``,
            ``{"kernel_size": 61, "sigma": 3.0}``, ``{"weights_path": ...}`` for the non-linear blur).
        noise: ``"gaussian"``, ``"poisson"`` or ``"none"``.
        noise_sigma: Gaussian noise level on the [0, 1] scale (DPS's 0.05 on [-1, 1] = 0.025).
        noise_rate: Poisson rate (DPS's meaning; see ``ugodit_pl.operators.PoissonNoise``).
        size: side of the square images after cropping and resizing; ``None``: no resizing. A clean
            image smaller than ``size`` is refused (it would be invented by upsampling), unless
            ``allow_upscale``.
        allow_upscale: resize clean images smaller than ``size`` up to it.
        degraded: the files are already degraded measurements (no target, no noise added).
        seed: base seed of the per-image operator and noise seeds.
        steps_per_epoch: training steps per epoch (see :class:`.base.MeasurementDataModule`).
    """

    def __init__(
        self,
        images: Optional[PathSpec] = None,
        pretrain_images: Optional[PathSpec] = None,
        data_dir: Optional[str] = None,
        role: str = "test",
        operator: str = "super_resolution",
        operator_args: Optional[dict[str, Any]] = None,
        noise: str = "gaussian",
        noise_sigma: float = 0.025,
        noise_rate: float = 1.0,
        size: Optional[int] = 256,
        degraded: bool = False,
        allow_upscale: bool = False,
        seed: int = 0,
        steps_per_epoch: int = 100,
    ) -> None:
        super().__init__(role=role, steps_per_epoch=steps_per_epoch)
        if operator not in OPERATOR_NAMES:
            raise DataError(f"unknown operator {operator!r}; known operators: {', '.join(OPERATOR_NAMES)}")
        check_choice("noise", noise, NOISE_KINDS, error=DataError)
        if noise == "gaussian":
            non_negative("noise_sigma", noise_sigma, error=DataError)
        if noise == "poisson":
            positive("noise_rate", noise_rate, error=DataError)
        if size is not None:
            whole("size", size, minimum=1, error=DataError)
        self.images = images
        self.pretrain_images = pretrain_images
        self.data_dir = data_dir
        self.operator = operator
        self.operator_args = dict(operator_args or {})
        self.noise = noise
        self.noise_sigma = float(noise_sigma)
        self.noise_rate = float(noise_rate)
        self.size = None if size is None else int(size)
        self.degraded = bool(degraded)
        self.allow_upscale = bool(allow_upscale)
        self.seed = int(seed)
        self._sets: dict[str, list] | None = None
        self.save_hyperparameters()

    # -- the index ----------------------------------------------------------------------------
    def _image_sets(self) -> dict[str, list]:
        if self._sets is None:
            sets = {}
            for role, spec in (("test", self.images), ("pretrain", self.pretrain_images)):
                if spec is None:
                    if role == self.role:
                        key = "images" if role == "test" else "pretrain_images"
                        raise DataError(f"role={role!r} but no {key} are given")
                    continue
                sets[role] = expand_paths(spec, self.data_dir, IMAGE_SUFFIXES, "images")
            _check_sets(sets)
            self._sets = sets
        return self._sets

    def _paths(self) -> list:
        return self._image_sets()[self.role]

    def _measurement_count(self) -> int:
        return len(self._paths())

    @property
    def measurement_names(self) -> list[str]:
        """The file names of the served set, in index order."""
        return [path.name for path in self._paths()]

    def _validate_selection(self) -> None:
        sizes = {path: probe_size(path) for path in self._paths()}
        if self.size is not None and not self.degraded and not self.allow_upscale:
            small = [f"{p.name}: {h}x{w}" for p, (h, w) in sizes.items() if min(h, w) < self.size]
            if small:
                raise DataError(
                    f"images smaller than size={self.size} would be upsampled into made-up detail ({', '.join(small)}); "
                    f"use a smaller size, size=None, or allow_upscale=True"
                )
        if self.size is None:
            squares = {path: min(shape) for path, shape in sizes.items()}
            if len(set(squares.values())) > 1:
                listing = ", ".join(f"{p.name}: {sizes[p][0]}x{sizes[p][1]}" for p in squares)
                raise DataError(
                    f"images of different sizes cannot be batched without size= ({listing}); "
                    f"give size= to resize them all"
                )

    # -- loading one measurement -----------------------------------------------------------------
    def _check_measurement(self, position: int) -> None:
        read_rgb(self._paths()[position])

    def _load_measurement(self, position: int) -> dict[str, Any]:
        path = self._paths()[position]
        image = square_crop(read_rgb(path))
        operator_seed = stable_seed(self.seed, "operator", path.name)
        if self.degraded:
            y, operator = self._degraded_measurement(image, operator_seed, path)
            item = {"y": y}
        else:
            if self.size is not None:
                image = resize_square(image, self.size)
            x = torch.from_numpy(image).permute(2, 0, 1).contiguous()
            operator = self._operator(tuple(x.shape[-2:]), operator_seed, path)
            with torch.no_grad():
                try:
                    clean = operator(x.unsqueeze(0))
                except (ValueError, RuntimeError) as error:
                    raise DataError(f"{path}: the {self.operator!r} operator cannot measure this image: {error}") from None
            y = self._add_noise(clean, stable_seed(self.seed, "noise", path.name))[0]
            item = {"y": y.to(torch.float32).contiguous(), "target": x}
        item.update(operator=operator, index=position, name=path.name)
        return item

    def _operator(self, image_size: tuple[int, int], seed: int, path):
        try:
            return build_operator(self.operator, self.operator_args, image_size, seed)
        except DataError:
            raise
        except (TypeError, ValueError, FileNotFoundError) as error:
            raise DataError(
                f"{path}: cannot build operator {self.operator!r} with operator_args {self.operator_args} "
                f"for a {image_size[0]}x{image_size[1]} image: {error}"
            ) from None

    def _degraded_measurement(self, image, seed: int, path):
        probe = self._operator((self.size or image.shape[0],) * 2, seed, path)
        factor = int(getattr(probe, "scale_factor", 1))
        if self.size is not None:
            measured = self.size // factor
            image = resize_square(image, measured)
            operator = probe
        else:
            side = image.shape[0] * factor
            operator = probe if factor == 1 else self._operator((side, side), seed, path)
        y = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        return y, operator

    def _add_noise(self, y: torch.Tensor, seed: int) -> torch.Tensor:
        from ugodit_pl.operators import GaussianNoise, PoissonNoise

        if self.noise == "gaussian" and self.noise_sigma > 0:
            return GaussianNoise(self.noise_sigma, seed=seed)(y)
        if self.noise == "poisson":
            return PoissonNoise(self.noise_rate, seed=seed)(y)
        return y.clone()


def _check_sets(sets: dict[str, list]) -> None:
    """No file twice in a set, none in both sets, and unique file names (they are the measurement names)."""
    names: dict[str, str] = {}
    for role, paths in sets.items():
        seen: set[str] = set()
        for path in paths:
            resolved = str(path.resolve())
            if resolved in seen:
                raise DataError(f"{path}: listed twice in the {role} images")
            seen.add(resolved)
            other = names.setdefault(path.name, resolved)
            if other != resolved:
                raise DataError(
                    f"two different images are named {path.name!r} ({other} and {resolved}); "
                    f"measurement names must be unique, rename one"
                )
    if "test" in sets and "pretrain" in sets:
        pretrain = {str(p.resolve()) for p in sets["pretrain"]}
        for path in sets["test"]:
            if str(path.resolve()) in pretrain:
                raise DataError(f"{path}: the test image is also in the pre-training images; a test measurement must not be used for pre-training")
