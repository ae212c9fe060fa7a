"""Embedded demo data: bundled scikit-image photographs (no download) and the simulated multi-coil MRI files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from fastmri_fakes import ifft2c_np
from ugodit_pl.datamodules import DegradedImageDataModule, FastMRIDataModule, demo_images, make_mri_demo
from ugodit_pl.datamodules.demo import DEMO_IMAGE_NAMES, MRI_IMAGE_NAMES, bundled_image, bundled_image_names
from ugodit_pl.datamodules.fastmri_io import parse_ismrmrd_sizes

TINY = dict(num_files=2, num_slices=2, size=(32, 32), num_coils=4)
SMALL = dict(acceleration=2.0, center_fraction=0.25, coil_map_cache_dir=False, coil_map_args={"kernel_width": 4})


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt of scikit-image to fetch a file fail."""
    import skimage.data._fetchers as fetchers

    def refuse(*args, **kwargs):
        raise AssertionError("the demo tried to download a scikit-image data file")

    monkeypatch.setattr(fetchers, "_fetch", refuse)


def test_default_photographs_are_bundled(no_download: None) -> None:
    import skimage

    names = set(bundled_image_names())
    assert set(DEMO_IMAGE_NAMES) <= names and set(MRI_IMAGE_NAMES) <= names
    image = bundled_image("chelsea")
    assert image.shape == (300, 451, 3) and image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
    raw = np.asarray(Image.open(Path(skimage.__file__).parent / "data" / "chelsea.png"), dtype=np.float32) / 255
    np.testing.assert_allclose(image, raw, atol=1e-6)
    with pytest.raises(ValueError, match="no bundled image 'lena'"):
        bundled_image("lena")


def test_demo_images(tmp_path: Path, no_download: None) -> None:
    paths = demo_images(tmp_path / "imgs", size=48, names=["astronaut", "camera"])
    assert [p.name for p in paths] == ["astronaut.png", "camera.png"]
    astronaut = np.asarray(Image.open(paths[0]))
    assert astronaut.shape == (48, 48, 3) and astronaut.dtype == np.uint8
    camera = np.asarray(Image.open(paths[1]))  # grayscale photo -> 3 equal channels
    assert camera.shape == (48, 48, 3) and (camera[..., 0] == camera[..., 2]).all()
    again = demo_images(tmp_path / "again", size=48, names=["astronaut"])
    assert np.array_equal(np.asarray(Image.open(again[0])), astronaut)  # deterministic
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["astronaut.png", "camera.png"]  # no temp files
    dm = DegradedImageDataModule(images=str(tmp_path / "imgs"), size=48)
    dm.setup()
    assert dm.batch["y"].shape == (2, 3, 12, 12) and dm.batch["target"].shape == (2, 3, 48, 48)
    torch.testing.assert_close(dm.batch["target"][0], torch.from_numpy(astronaut / 255.0).float().permute(2, 0, 1))


def test_mri_demo_files(tmp_path: Path, no_download: None) -> None:
    paths = make_mri_demo(tmp_path, noise_std=0.0, **TINY)
    assert [p.name for p in paths] == ["demo_mri_00.h5", "demo_mri_01.h5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_mri_00.h5", "demo_mri_01.h5"]  # no temp files
    with h5py.File(paths[1]) as file:
        kspace = file["kspace"][()]
        rss = file["reconstruction_rss"][()]
        assert kspace.shape == (2, 4, 32, 32) and kspace.dtype == np.complex64
        assert rss.shape == (2, 32, 32) and rss.dtype == np.float32
        assert file.attrs["max"] == pytest.approx(rss.max()) and file.attrs["norm"] == pytest.approx(np.linalg.norm(rss))
        assert "acquisition" in file.attrs
        assert parse_ismrmrd_sizes(file["ismrmrd_header"][()]) == ((32, 32), (32, 32))
    np.testing.assert_allclose(np.sqrt((np.abs(ifft2c_np(kspace)) ** 2).sum(1)), rss, atol=1e-5)
    # noiseless, with birdcage maps of root-sum-of-squares 1: the RSS is the grayscale photo, max 1
    assert rss.max(axis=(1, 2)) == pytest.approx([1.0, 1.0], abs=1e-4)
    assert rss[:, 0, 0].max() < 1e-3  # empty background outside the elliptical object
    coil_images = ifft2c_np(kspace[0])
    assert np.std(np.angle(coil_images[0][rss[0] > 0.3])) > 0.1  # complex images, not real ones


def test_mri_demo_is_deterministic(tmp_path: Path) -> None:
    first = make_mri_demo(tmp_path / "a", seed=1, **TINY)
    second = make_mri_demo(tmp_path / "b", seed=1, **TINY)
    other = make_mri_demo(tmp_path / "c", seed=2, **TINY)
    read = lambda path: h5py.File(path)["kspace"][()]  # noqa: E731
    assert np.array_equal(read(first[1]), read(second[1]))
    assert not np.array_equal(read(first[1]), read(other[1]))  # the seed changes phase and noise
    slices = read(first[0])
    assert not np.allclose(np.abs(slices[0]), np.abs(slices[1]))  # different photographs per slice


def test_mri_demo_goes_through_the_fastmri_reader(tmp_path: Path) -> None:
    paths = make_mri_demo(tmp_path, **TINY)
    common = dict(test_files=str(paths[1]), test_slices="middle", pretrain_files=str(paths[0]), pretrain_slices="all")
    pre = FastMRIDataModule(role="pretrain", **common, **SMALL)
    test = FastMRIDataModule(role="test", **common, **SMALL)
    assert pre.num_measurements == 2 and test.num_measurements == 1
    pre.setup()
    test.setup()
    batch = pre.batch
    assert batch["y"].shape == (2, 4, 32, 32) and batch["target"].shape == (2, 1, 32, 32)
    assert batch["name"] == ["demo_mri_00.h5/slice_000", "demo_mri_00.h5/slice_001"]
    assert batch["operator"].adjoint(batch["y"]).shape == (2, 2, 32, 32)
    assert test.batch["name"] == ["demo_mri_01.h5/slice_001"] and test.batch["index"].tolist() == [0]
    mask = batch["operator"].mask
    assert torch.count_nonzero(batch["y"] * (1 - mask.unsqueeze(1))) == 0


def test_real_mri_demo_holds_the_real_slices_padded_and_resized(tmp_path: Path) -> None:
    from skimage.transform import resize

    from ugodit_pl.datamodules import make_real_mri_demo
    from ugodit_pl.datamodules.demo import real_mri_slices

    path = make_real_mri_demo(tmp_path / "real.h5", [("s1045", 0), ("example4d", 12)], size=48, noise_std=0.0)
    with h5py.File(path) as handle:
        assert handle["kspace"].shape == (2, 8, 48, 48) and handle.attrs["acquisition"] == "SIMULATED_FROM_REAL_MRI"
        assert "s1045[0], example4d[12]" in handle.attrs["source"]
        rss = handle["reconstruction_rss"][()]
    # without noise the RSS image is the real image, padded to a square and resized (max 1)
    epi = real_mri_slices("example4d")[12]
    assert epi.shape == (128, 96)
    padded = np.pad(epi, ((0, 0), (16, 16)))
    expected = np.clip(resize(padded, (48, 48), order=3, anti_aliasing=True, mode="constant"), 0, None)
    np.testing.assert_allclose(rss[1], expected / expected.max(), atol=1e-4)
    assert rss[1][:, :5].max() < 0.02  # the padded columns stay empty: an MRI object inside its field of view
    with pytest.raises(ValueError, match="'example4d' has 24 slices, got index 30"):
        make_real_mri_demo(tmp_path / "bad.h5", [("example4d", 30)])
    with pytest.raises(ValueError, match="unknown real MRI source 'knee'"):
        make_real_mri_demo(tmp_path / "bad.h5", [("knee", 0)])
    assert not (tmp_path / "bad.h5").exists()
