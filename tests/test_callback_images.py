"""ReconstructionImages: what reaches TensorBoard, the PNG files for loggers without images, the scales."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_lightning.loggers import CSVLogger

from callback_problems import TINY_UNET, image_batch, loader, mri_batch, trainer
from ugodit_pl.callbacks import ReconstructionImages
from ugodit_pl.callbacks.images import display_images
from ugodit_pl.methods import DIP, ASeqDIP


def test_display_images_share_the_target_scale_and_show_the_error() -> None:
    output = torch.zeros(2, 2, 4, 4)
    output[:, 0] = 1.0  # magnitude 1
    target = torch.full((2, 1, 4, 4), 2.0)
    rows = display_images(output, target, error_gain=1.0)
    assert len(rows) == 2
    assert torch.allclose(rows[0]["reconstruction"], torch.full((1, 4, 4), 0.5))
    assert torch.allclose(rows[0]["target"], torch.ones(1, 4, 4))
    assert torch.allclose(rows[0]["error"], torch.full((1, 4, 4), 0.5))
    gained = display_images(output, target, error_gain=4.0)
    assert torch.allclose(gained[0]["error"], torch.ones(1, 4, 4))  # clipped at 1
    rgb = display_images(torch.full((1, 3, 4, 4), 1.5))
    assert sorted(rgb[0]) == ["reconstruction"] and rgb[0]["reconstruction"].shape == (3, 4, 4)
    assert float(rgb[0]["reconstruction"].max()) == 1.0


def test_pngs_in_the_csv_log_folder_every_k_steps_and_at_the_end(tmp_path) -> None:
    batch = mri_batch(num=2, size=16)
    images = ReconstructionImages(every_n_steps=2, max_images=1)
    logger = CSVLogger(tmp_path, name="run")
    trainer(5, [images], logger=logger).fit(ASeqDIP(num_measurements=2, network_args=TINY_UNET), loader(batch))
    folders = sorted(p.name for p in (tmp_path / "run" / "version_0" / "images").iterdir())
    assert folders == ["step_000002", "step_000004", "step_000005"]
    names = sorted(p.name for p in (tmp_path / "run" / "version_0" / "images" / "step_000005").iterdir())
    assert names == ["0_error.png", "0_reconstruction.png", "0_target.png"]  # max_images=1: row 0 only
    target = np.asarray(Image.open(tmp_path / "run" / "version_0" / "images" / "step_000005" / "0_target.png"))
    assert target.shape == (16, 16) and target.max() == 255
    assert len(images.written) == 9


def test_without_a_logger_the_pngs_go_to_the_root_dir_rgb_and_without_target(tmp_path) -> None:
    batch = image_batch(num=1, size=16)
    del batch["target"]
    images = ReconstructionImages(every_n_steps=10)
    method = DIP(num_measurements=1, network="skip", network_args={"channels_down": [4, 4], "channels_up": [4, 4],
                                                                   "channels_skip": [2, 2], "out_channels": 3})
    trainer(3, [images], default_root_dir=str(tmp_path)).fit(method, loader(batch))
    written = [p.relative_to(tmp_path).as_posix() for p in images.written]
    assert written == ["images/step_000003/0_reconstruction.png"]
    assert np.asarray(Image.open(images.written[0])).shape == (16, 16, 3)


def test_tensorboard_gets_the_images(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    batch = mri_batch(num=2, size=16)
    logger = TensorBoardLogger(tmp_path, name="tb")
    images = ReconstructionImages(every_n_steps=2)
    trainer(4, [images], logger=logger).fit(ASeqDIP(num_measurements=2, network_args=TINY_UNET), loader(batch))
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    tags = sorted(events.Tags()["images"])
    assert tags == [f"images/{row}/{kind}" for row in (0, 1) for kind in ("error", "reconstruction", "target")]
    assert [event.step for event in events.Images("images/1/reconstruction")] == [2, 4]
    assert images.written == []


@pytest.mark.parametrize("argument", [{"every_n_steps": 0}, {"max_images": True}, {"error_gain": 0.0}])
def test_bad_arguments_are_refused(argument) -> None:
    with pytest.raises(ValueError, match="ReconstructionImages"):
        ReconstructionImages(**argument)
