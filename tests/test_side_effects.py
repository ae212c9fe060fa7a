"""The library leaves a user's process as it found it: warning filters and Lightning's messages.

Importing the core, building its data modules' loaders and fitting a method change no warning
filter; the applications silence Lightning's banners (the litlogger tip, "GPU available") for their
own Trainers only. Each check runs in a fresh interpreter, so that nothing imported earlier by the
suite hides an import-time change.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=TESTS,
                          timeout=300)


def test_importing_and_fitting_change_no_warning_filter():
    result = run_python("""
        import warnings
        before = list(warnings.filters)
        import pytorch_lightning as pl
        after_lightning = list(warnings.filters)
        import ugodit_pl.methods, ugodit_pl.callbacks, ugodit_pl.operators, ugodit_pl.nets, ugodit_pl.metrics
        import ugodit_pl.datamodules, ugodit_pl.classical
        from method_problems import TINY_UNET, mri_batch
        from ugodit_pl.datamodules.base import MeasurementDataModule
        from ugodit_pl.methods import ASeqDIP

        class Fixed(MeasurementDataModule):
            def _measurement_count(self):
                return 1
            def _load_measurement(self, position):
                batch = mri_batch(num=1, size=16)
                return {"y": batch["y"][0], "operator": batch["operator"], "index": position}

        pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False).fit(ASeqDIP(network_args=TINY_UNET), Fixed())
        assert list(warnings.filters) == after_lightning, set(warnings.filters) ^ set(after_lightning)
        print("filters unchanged")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "filters unchanged" in result.stdout


def test_the_applications_silence_lightning_only_for_their_own_trainers():
    result = run_python("""
        import warnings
        import pytorch_lightning as pl
        from method_problems import TINY_UNET, loader, mri_batch
        from ugodit_pl.apps.benchmarks.common import fit_method
        from ugodit_pl.methods import ASeqDIP

        filters = list(warnings.filters)
        print("library fit", flush=True)
        fit_method(ASeqDIP(network_args=TINY_UNET), mri_batch(num=1, size=16), steps=2)
        assert list(warnings.filters) == filters
        print("user fit", flush=True)
        pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False).fit(ASeqDIP(network_args=TINY_UNET), loader(mri_batch(num=1, size=16), 2))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    library, user = text.split("user fit")
    assert "litlogger" not in library and "GPU available" not in library, library
    assert "GPU available" in user  # Lightning's own messages reach the user's Trainer unchanged
