"""DegradedImageDataModule: reading, cropping, the DPS operators by name, noise, roles, errors, Lightning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from ugodit_pl.datamodules import DataError, DegradedImageDataModule
from ugodit_pl.datamodules.seeding import stable_seed
from ugodit_pl.operators import GaussianNoise, Inpainting, SuperResolution
from ugodit_pl.operators.blur import Convolution

FFHQ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ffhq"


def smooth_rgb(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth uint8 RGB test picture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    channels = [0.5 + 0.4 * np.sin(rng.uniform(1, 6) * xx + rng.uniform(1, 6) * yy + c) for c in range(3)]
    return np.round(np.stack(channels, axis=-1) * 255).astype(np.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three 32 x 32 PNGs (img0..img2) in a folder."""
    out = tmp_path / "images"
    out.mkdir()
    for i in range(3):
        Image.fromarray(smooth_rgb(32, 32, i)).save(out / f"img{i}.png")
    return out


def test_reading_and_super_resolution_batch(folder: Path) -> None:
    dm = DegradedImageDataModule(images=str(folder), size=None, noise="none")
    assert dm.num_measurements == 3
    dm.setup("fit")
    batch = dm.batch
    assert set(batch) == {"y", "operator", "index", "name", "target"}
    assert batch["name"] == ["img0.png", "img1.png", "img2.png"] and batch["index"].tolist() == [0, 1, 2]
    assert isinstance(batch["operator"], SuperResolution) and batch["operator"].scale_factor == 4
    for i in range(3):  # the target is the file's pixels / 255, channels first
        expected = torch.from_numpy(smooth_rgb(32, 32, i).astype(np.float32) / 255).permute(2, 0, 1)
        torch.testing.assert_close(batch["target"][i], expected, rtol=0, atol=1e-6)
    assert batch["y"].shape == (3, 3, 8, 8) and batch["y"].dtype == torch.float32
    torch.testing.assert_close(batch["y"], SuperResolution(4)(batch["target"]))  # noise="none"


def test_grayscale_alpha_jpeg_crop_and_resize(tmp_path: Path) -> None:
    gray = smooth_rgb(40, 48, 0)[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgba = np.concatenate([smooth_rgb(40, 48, 1), np.full((40, 48, 1), 7, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(smooth_rgb(48, 40, 2)).save(tmp_path / "photo.jpg", quality=95)
    dm = DegradedImageDataModule(images=str(tmp_path), size=None, noise="none", operator_args={"scale_factor": 2})
    dm.setup()
    target = dm.batch["target"]
    assert dm.batch["name"] == ["gray.png", "photo.jpg", "rgba.png"] and target.shape == (3, 3, 40, 40)
    crop = torch.from_numpy(gray[:, 4:44].astype(np.float32) / 255)  # centre square of a 40 x 48 image
    for channel in range(3):
        torch.testing.assert_close(target[0, channel], crop, rtol=0, atol=1e-6)
    torch.testing.assert_close(target[2], torch.from_numpy(rgba[:, 4:44, :3] / 255.0).float().permute(2, 0, 1))
    jpeg = torch.from_numpy(smooth_rgb(48, 40, 2)[4:44].astype(np.float32) / 255).permute(2, 0, 1)
    assert (target[1] - jpeg).abs().mean() < 0.02  # lossy
    resized = DegradedImageDataModule(images=str(tmp_path), size=16, noise="none", operator_args={"scale_factor": 2})
    resized.setup()
    assert resized.batch["target"].shape == (3, 3, 16, 16) and resized.batch["y"].shape == (3, 3, 8, 8)
    assert 0 <= resized.batch["target"].min() and resized.batch["target"].max() <= 1
    assert abs(resized.batch["target"][0].mean() - crop.mean()) < 0.02  # resizing keeps the brightness


def test_gaussian_noise_is_seeded_per_image(folder: Path) -> None:
    dm = DegradedImageDataModule(images=str(folder), size=None, noise="gaussian", noise_sigma=0.1, seed=3)
    again = DegradedImageDataModule(images=str(folder), size=None, noise="gaussian", noise_sigma=0.1, seed=3)
    other = DegradedImageDataModule(images=str(folder), size=None, noise="gaussian", noise_sigma=0.1, seed=4)
    for d in (dm, again, other):
        d.setup()
    assert torch.equal(dm.batch["y"], again.batch["y"]) and not torch.equal(dm.batch["y"], other.batch["y"])
    clean = SuperResolution(4)(dm.batch["target"])
    for i, name in enumerate(dm.batch["name"]):
        expected = GaussianNoise(0.1, seed=stable_seed(3, "noise", name))(clean[i : i + 1])
        torch.testing.assert_close(dm.batch["y"][i : i + 1], expected)
    assert 0.07 < (dm.batch["y"] - clean).std() < 0.13
    poisson = DegradedImageDataModule(images=str(folder), size=None, noise="poisson", noise_rate=1.0)
    poisson.setup()
    assert not torch.equal(poisson.batch["y"], clean) and (poisson.batch["y"] >= 0).all()


@pytest.mark.parametrize(
    "name, args, cls, y_shape",
    [
        ("gaussian_blur", {"kernel_size": 7, "sigma": 1.5}, Convolution, (3, 3, 32, 32)),
        ("motion_blur", {"kernel_size": 7}, Convolution, (3, 3, 32, 32)),
        ("inpainting", {"mask": "box", "box_size": 8, "margin": 2}, Inpainting, (3, 3, 32, 32)),
        ("inpainting_random", {"drop_probability": 0.7}, Inpainting, (3, 3, 32, 32)),
    ],
)
def test_operators_by_name(folder: Path, name: str, args: dict, cls: type, y_shape: tuple) -> None:
    dm = DegradedImageDataModule(images=str(folder), size=None, operator=name, operator_args=args, noise="none")
    dm.setup()
    op = dm.batch["operator"]
    assert isinstance(op, cls)
    assert dm.batch["y"].shape == y_shape
    torch.testing.assert_close(dm.batch["y"], op(dm.batch["target"]))
    if name.startswith("inpainting"):  # a different, seeded mask per image, the same in every run
        masks = op.mask
        assert not torch.equal(masks[0], masks[1])
        kind = args.get("mask", "random")
        expected = (Inpainting.box((1, 3, 32, 32), box_size=8, margin=2, seed=stable_seed(0, "operator", "img1.png"))
                    if kind == "box" else
                    Inpainting.random((1, 3, 32, 32), drop_probability=0.7, seed=stable_seed(0, "operator", "img1.png")))
        assert torch.equal(masks[1], expected.mask[0])


def test_nonlinear_blur_by_name(tmp_path: Path) -> None:
    Image.fromarray(smooth_rgb(128, 128, 0)).save(tmp_path / "a.png")
    args = {"allow_random_weights": True, "network_config": {"nf": 8, "front_blocks": 1, "back_blocks": 1}}
    dm = DegradedImageDataModule(images=str(tmp_path), size=128, operator="nonlinear_blur", operator_args=args, noise="none")
    dm.setup()
    assert dm.batch["y"].shape == (1, 3, 128, 128)
    torch.testing.assert_close(dm.batch["y"], dm.batch["operator"](dm.batch["target"]))


def test_degraded_mode(folder: Path) -> None:
    dm = DegradedImageDataModule(images=str(folder), size=16, degraded=True)
    dm.setup()
    batch = dm.batch
    assert "target" not in batch and batch["y"].shape == (3, 3, 4, 4)  # SR: y is the small image
    assert batch["operator"](torch.zeros(3, 3, 16, 16)).shape == (3, 3, 4, 4)
    raw = DegradedImageDataModule(images=str(folder), size=None, degraded=True, noise="gaussian")
    raw.setup()  # no resizing, no noise: y is the file
    expected = torch.from_numpy(smooth_rgb(32, 32, 0).astype(np.float32) / 255).permute(2, 0, 1)
    torch.testing.assert_close(raw.batch["y"][0], expected, rtol=0, atol=1e-6)
    assert raw.batch["operator"].adjoint(raw.batch["y"]).shape == (3, 3, 128, 128)


def test_roles_and_overlap(folder: Path) -> None:
    names = dict(images=[str(folder / "img0.png")], pretrain_images=[str(folder / "img1.png"), str(folder / "img2.png")])
    test = DegradedImageDataModule(size=None, **names)
    pre = DegradedImageDataModule(size=None, role="pretrain", **names)
    assert test.measurement_names == ["img0.png"] and pre.measurement_names == ["img1.png", "img2.png"]
    pre.setup()
    assert pre.batch["index"].tolist() == [0, 1]
    clash = DegradedImageDataModule(images=str(folder / "img1.png"), pretrain_images=str(folder), role="pretrain")
    with pytest.raises(DataError, match=r"img1.png: the test image is also in the pre-training images"):
        clash.num_measurements
    with pytest.raises(DataError, match="no pretrain_images"):
        DegradedImageDataModule(images=str(folder), role="pretrain").num_measurements


def test_errors(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: no such file or folder"):
        DegradedImageDataModule(images=str(tmp_path / "nowhere")).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: folder holds no images"):
        DegradedImageDataModule(images=str(tmp_path / "empty")).setup()
    with pytest.raises(DataError, match=r"unknown operator 'deblur'; known operators: super_resolution, gaussian_blur"):
        DegradedImageDataModule(images=str(folder), operator="deblur")
    Image.fromarray(smooth_rgb(24, 24, 5)).save(folder / "small.png")
    with pytest.raises(DataError, match=r"different sizes .*small.png: 24x24"):
        DegradedImageDataModule(images=str(folder), size=None).setup()
    DegradedImageDataModule(images=str(folder), size=16).setup()  # with a size everything is resized
    (folder / "garbage.png").write_bytes(b"\x00\x01 definitely not a PNG" * 10)
    with pytest.raises(DataError, match=r"garbage.png: not a readable image"):
        DegradedImageDataModule(images=str(folder), size=16).setup()
    truncated = tmp_path / "cut.png"
    Image.fromarray(smooth_rgb(32, 32, 0)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cut.png: cannot decode the image"):
        DegradedImageDataModule(images=str(truncated), size=16).setup()
    with pytest.raises(DataError, match=r"must not hold 'seed'"):
        DegradedImageDataModule(images=str(folder / "img0.png"), operator="motion_blur", operator_args={"seed": 1},
                                size=None).setup()
    with pytest.raises(DataError, match=r"cannot build operator 'gaussian_blur' with operator_args"):
        DegradedImageDataModule(images=str(folder / "img0.png"), operator="gaussian_blur", operator_args={"radius": 1},
                                size=None).setup()


class _Recorder(pl.LightningModule):
    """Records the measurements each training step receives."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["index"].tolist())
        assert batch["operator"](batch["target"]).shape == batch["y"].shape
        return ((batch["y"].mean() - self.weight) ** 2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_sees_the_whole_set_every_step(folder: Path) -> None:
    dm = DegradedImageDataModule(images=str(folder), size=None, steps_per_epoch=2)
    model = _Recorder()
    trainer = pl.Trainer(max_steps=5, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    assert model.seen == [[0, 1, 2]] * 5 and trainer.global_step == 5
    assert trainer.num_training_batches == 2  # steps_per_epoch


@pytest.mark.skipif(not FFHQ.is_dir(), reason=f"FFHQ images not found at {FFHQ}")
def test_ffhq_super_resolution_selection() -> None:
    """The authors' SR demo: pre-train on 00013, 00016, 00018, 00019; test on 00002."""
    args = dict(images=["00002.png"], pretrain_images=["00013.png", "00016.png", "00018.png", "00019.png"],
                data_dir=str(FFHQ), operator="super_resolution", operator_args={"scale_factor": 4})
    pre = DegradedImageDataModule(role="pretrain", **args)
    test = DegradedImageDataModule(role="test", **args)
    assert pre.num_measurements == 4 and test.num_measurements == 1
    pre.setup()
    test.setup()
    assert pre.batch["y"].shape == (4, 3, 64, 64) and pre.batch["target"].shape == (4, 3, 256, 256)
    assert test.batch["y"].shape == (1, 3, 64, 64) and test.batch["name"] == ["00002.png"]
    noise = test.batch["y"] - test.batch["operator"](test.batch["target"])
    assert 0.02 < noise.std() < 0.03  # DPS's sigma 0.05 on [-1, 1] = 0.025 on [0, 1]


def test_small_images_are_not_upsampled_unless_asked(folder: Path) -> None:
    with pytest.raises(DataError, match=r"smaller than size=64 would be upsampled .*img0.png: 32x32.*allow_upscale"):
        DegradedImageDataModule(images=str(folder), size=64).setup()
    upscaled = DegradedImageDataModule(images=str(folder), size=64, allow_upscale=True)
    upscaled.setup()
    assert upscaled.batch["target"].shape[-1] == 64
