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
from ugodit_pl.complex import ifft2c
from ugodit_pl.datamodules.demo import DEMO_IMAGE_NAMES, MRI_IMAGE_NAMES, bundled_image, bundled_image_names
from ugodit_pl.datamodules.demo import realistic_phase, write_simulated_mri
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


def test_realistic_phase_is_seeded_and_adds_texture_to_the_reference_phase():
    flat = np.ones((40, 30), dtype=np.complex64) * np.exp(1j * 0.5)
    first = realistic_phase(flat, (32, 24), np.random.default_rng(0))
    assert np.array_equal(first, realistic_phase(flat, (32, 24), np.random.default_rng(0)))
    assert not np.array_equal(first, realistic_phase(flat, (32, 24), np.random.default_rng(1)))
    assert first.std() == pytest.approx(0.3, rel=1e-6)  # a flat reference leaves the texture alone
    yy, xx = np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 30), indexing="ij")
    ramp = realistic_phase(np.exp(1j * 1.5 * yy), (32, 24), np.random.default_rng(0))
    rows = ramp.mean(axis=1)
    assert abs(np.corrcoef(rows, np.arange(32))[0, 1]) > 0.9  # the reference's low-resolution phase is kept
    with pytest.raises(ValueError, match="phase_reference must be a finite complex"):
        realistic_phase(np.ones((40, 30)), (32, 24), np.random.default_rng(0))


def test_simulated_mri_with_a_phase_reference_keeps_the_magnitude(tmp_path):
    magnitude = np.zeros((1, 32, 24), dtype=np.float32)
    magnitude[0, 8:24, 6:18] = 1.0
    reference = np.exp(1j * np.linspace(0, 3, 40 * 30)).reshape(40, 30)
    path = write_simulated_mri(tmp_path / "a.h5", magnitude, num_coils=2, noise_std=0.0, phase_reference=reference)
    with h5py.File(path) as handle:
        coil_images = ifft2c(torch.from_numpy(handle["kspace"][()]))
        assert "realistic phase" in handle.attrs["source"]
        rss = handle["reconstruction_rss"][()]
    np.testing.assert_allclose(rss[0], magnitude[0], atol=1e-5)
    assert coil_images.angle()[0, 0, 8:24, 6:18].std() > 0.2  # not one smooth phase


def _slice_phases(path: Path) -> np.ndarray:
    """(S, H, W) phase of each slice's coil-1 image of a simulated file."""
    with h5py.File(path) as handle:
        return np.angle(ifft2c(torch.from_numpy(handle["kspace"][()]))[:, 0].numpy())


@pytest.mark.parametrize("reference", [False, True])
def test_slices_of_a_volume_share_the_slowly_varying_phase(tmp_path, reference):
    magnitude = np.zeros((3, 32, 24), dtype=np.float32)
    magnitude[:, 8:24, 6:18] = 1.0
    yy, xx = np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 30), indexing="ij")
    options = dict(num_coils=2, noise_std=0.0, phase_reference=np.exp(2j * (xx + yy ** 2)) if reference else None)
    shared = _slice_phases(write_simulated_mri(tmp_path / "s.h5", magnitude, phase_across_slices="shared", **options))
    independent = _slice_phases(write_simulated_mri(tmp_path / "i.h5", magnitude, **options))
    inside = (slice(8, 24), slice(6, 18))
    spread = lambda phases: [np.angle(np.exp(1j * (phases[s] - phases[0])))[inside].std() for s in (1, 2)]  # noqa: E731
    offsets = lambda phases: [abs(np.angle(np.exp(1j * (phases[s] - phases[0])))[inside].mean()) for s in (1, 2)]  # noqa: E731
    if reference:  # one low-resolution phase and offset; only the texture (0.3 rad per slice) differs
        assert max(offsets(shared)) < 0.1 and 0.3 < min(spread(shared)) and max(spread(shared)) < 0.6
    else:  # one smooth phase, identical in every slice
        assert max(spread(shared)) < 1e-4 and max(offsets(shared)) < 1e-4
    assert max(offsets(independent)) > 0.3  # each slice its own draw
    with pytest.raises(ValueError, match="phase_across_slices must be one of"):
        write_simulated_mri(tmp_path / "x.h5", magnitude, phase_across_slices="per_volume")
