"""The ``ugodit`` command (also ``python -m ugodit_pl``).

Commands::

    ugodit fit|validate|test|predict --config configs/X.yaml [--key value ...]   (LightningCLI)
    ugodit demo [--task mri|sr] [--quick] [--out DIR] [--steps N] [--size S]
    ugodit reconstruct --data PATH --weights FILE --out DIR [--steps N] [--config X.yaml]
    ugodit classical --data PATH --out DIR [--method total_variation] [--lamda auto] [--config X.yaml]
    ugodit compare DIR DIR [DIR ...] [--json FILE]
    ugodit benchmark ...

``fit`` / ``validate`` / ``test`` / ``predict`` are Lightning's ``LightningCLI`` in subclass mode:
``model`` and ``data`` take a ``class_path`` (any LightningModule / LightningDataModule, e.g.
``ugodit_pl.methods.UGoDITFit`` and ``ugodit_pl.datamodules.FastMRIDataModule``) with ``init_args``;
``data.num_measurements`` is linked to ``model.init_args.num_measurements`` (the data decide N);
``--print_config`` prints the resolved configuration; any key can be overridden on the command line
(``--trainer.max_steps 500``, ``--model.init_args.lr 1e-3``); ``--trainer.devices 4
--trainer.strategy ddp`` runs on 4 GPUs. ``validate`` / ``test`` / ``predict`` evaluate (or return)
the reconstructions of a finished fit and need ``--ckpt_path`` (a checkpoint ``fit`` wrote).

Every command ends a user error (a missing config key, a wrong path, weights for another network, a
bad argument) with ONE line on stderr and exit code 1 (2 for command-line syntax); a SIGINT (Ctrl-C)
or SIGTERM (what a cluster scheduler sends) stops it at once with 128 + the signal's number (130,
143), keeping what was written; ``--debug`` (anywhere on the line) or ``UGODIT_DEBUG=1`` shows the
full traceback instead.

Subcommands are imported only when used, so ``ugodit --help`` answers at once (no torch import).

>>> main(["--help"]) == 0  # doctest: +ELLIPSIS
usage: ugodit ...
True
"""

from __future__ import annotations

import _thread
import os
import re
import signal
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

PROG = "ugodit"

LIGHTNING_COMMANDS: Dict[str, str] = {
    "fit": "fit a method to the measurements of a config (LightningCLI; --help for every key)",
    "validate": "metrics of a fitted reconstruction against the ground truth (needs --ckpt_path)",
    "test": "the same as validate, logged as test/* (needs --ckpt_path)",
    "predict": "the reconstructions of a finished fit, saved to predictions.pt (needs --ckpt_path)",
}
OTHER_COMMANDS: Dict[str, str] = {
    "demo": "the one-command demo: UGoDIT vs DIP, aSeqDIP, L1-wavelet and TV on real MRI, in minutes on a CPU",
    "reconstruct": "reconstruct every slice of a folder of fastMRI files (or every image) with transferable weights",
    "classical": "total variation, L1-wavelet, CG-SENSE or zero-filled of every slice of a folder of fastMRI files",
    "compare": "output folders of reconstruct and classical side by side, slice by slice (PSNR, SSIM, differences)",
    "benchmark": "the benchmarks (ugodit benchmark --help)",
}
COMMANDS: Dict[str, str] = {**LIGHTNING_COMMANDS, **OTHER_COMMANDS}

DEBUG_ENV = "UGODIT_DEBUG"

# Errors a user causes (bad configuration, paths, data, arguments): one line, no traceback.
_USER_ERROR_NAMES = ("ArgumentError", "MisconfigurationException", "DataError")


def usage() -> str:
    """The text of ``ugodit --help``."""
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"usage: {PROG} <command> [options]   ({PROG} <command> --help for a command's options)",
        "",
        "Image reconstruction with untrained networks: UGoDIT, Self-Guided DIP, aSeqDIP, DIP.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {text}" for name, text in COMMANDS.items()]
    lines += [
        "",
        "examples:",
        f"  {PROG} demo --out demo_output",
        f"  {PROG} fit --config configs/mri_ugodit_pretrain_4x.yaml",
        f"  {PROG} fit --config configs/mri_ugodit_fit_4x.yaml --trainer.devices 2 --trainer.strategy ddp",
        f"  {PROG} reconstruct --data /data/multicoil_val --weights runs/mri_ugodit_4x/transferable_weights.pt "
        "--out recons",
        f"  {PROG} classical --data /data/multicoil_val --out recons_tv --config configs/mri_ugodit_fit_4x.yaml",
        f"  {PROG} compare recons recons_tv",
        "",
        f"--debug (or {DEBUG_ENV}=1) shows the full traceback of an error.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- errors
def _is_user_error(error: BaseException) -> bool:
    if isinstance(error, (ValueError, OSError, KeyError, ImportError)):
        return True
    return any(cls.__name__ in _USER_ERROR_NAMES for cls in type(error).__mro__)


_BOILERPLATE = (
    re.compile(r"^Does not validate against any of the (Union )?(sub)?types"),
    re.compile(r"^Subtypes: "),
    re.compile(r"^Errors:$"),
    re.compile(r"^Expected a <class 'NoneType'>$"),
    re.compile(r"^Given value type: "),
    re.compile(r"^Given value: (NestedArg|Namespace)\("),
)
_REWRITES = (
    (re.compile(r'Parser key "([^"]+)":'), r"\1:"),
    (re.compile(r"Problem with given class_path '([^']+)':"), r"\1:"),
    (re.compile(r"Expected a <class '(\w+)'>\.? ?(Got|Given) value: "), r"expected a \1, got "),
    (re.compile(r"Expected a <class '(\w+)'>"), r"expected a \1,"),
    (re.compile(r"Given value: "), "got "),
)


def one_line(error: BaseException) -> str:
    """A one-line description of ``error``: jsonargparse's nested messages are flattened.

    >>> one_line(ValueError("lr must be > 0,\\n  got -1"))
    'lr must be > 0, got -1'
    >>> one_line(KeyError("weights"))
    "missing key 'weights'"
    """
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        text = f"missing key {error.args[0]!r}" if " " not in error.args[0] else error.args[0]
    else:
        text = str(error) or type(error).__name__
    kept = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("- "):
            line = line[2:]
        if not line or any(pattern.match(line) for pattern in _BOILERPLATE):
            continue
        kept.append(line)
    if not kept:
        return type(error).__name__
    text = " ".join(kept)
    for pattern, replacement in _REWRITES:
        text = pattern.sub(replacement, text)
    return text.rstrip(",")


def _report(command: str, error: BaseException) -> int:
    """Print the one-line message of ``error`` for ``ugodit <command>`` and return the exit code
    (2 for a command-line or config syntax error, 1 otherwise)."""
    if type(error).__name__ == "ArgumentError":
        print(f"{PROG} {command}: error: {one_line(error)} (see {PROG} {command} --help)", file=sys.stderr)
        return 2
    if _is_user_error(error):
        message = one_line(error)
    else:
        message = (
            f"{type(error).__name__}: {one_line(error)} (an unexpected error; run again with --debug for the "
            f"traceback and report it)"
        )
    print(f"{PROG} {command}: error: {message}", file=sys.stderr)
    return 1


def _exit_code(exit_: SystemExit) -> int:
    code = exit_.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _split_debug(argv: Sequence[str]) -> Tuple[List[str], bool]:
    """Remove ``--debug`` (before a ``--`` separator) and tell whether debugging is on."""
    debug = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    rest: List[str] = []
    passthrough = False
    for arg in argv:
        if arg == "--" and not passthrough:
            passthrough = True
        elif arg == "--debug" and not passthrough:
            debug = True
            continue
        rest.append(arg)
    return rest, debug


# --------------------------------------------------------------------------------------------- LightningCLI
_CLI_CLASS = None


def lightning_cli_class():
    """The ``LightningCLI`` subclass behind ``ugodit fit|validate|test|predict`` (built on first use).

    It links ``data.num_measurements`` to ``model.init_args.num_measurements`` (after the data module
    is instantiated), requires ``--ckpt_path`` for validate/test/predict, and serves a measurement data
    module's fitted set to validate/test when the data module has no val/test dataloader of its own.
    """
    global _CLI_CLASS
    if _CLI_CLASS is not None:
        return _CLI_CLASS
    from pytorch_lightning.cli import LightningCLI
    from pytorch_lightning.utilities.model_helpers import is_overridden

    class UgoditCLI(LightningCLI):
        """LightningCLI for ugodit-pl: subclass mode, the N link, fitted-set evaluation."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.link_arguments(
                "data.num_measurements", "model.init_args.num_measurements", apply_on="instantiate"
            )

        def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
            kwargs = super()._prepare_subcommand_kwargs(subcommand)
            if kwargs.get("datamodule") is None and not kwargs.get("train_dataloaders"):
                raise ValueError(
                    f"`{PROG} {subcommand}` needs data: the config has no data section (data.class_path, e.g. "
                    f"ugodit_pl.datamodules.FastMRIDataModule, with its init_args)"
                )
            if subcommand in ("validate", "test", "predict"):
                if not kwargs.get("ckpt_path"):
                    raise ValueError(
                        f"`{PROG} {subcommand}` works on a finished fit: give --ckpt_path, a checkpoint written by "
                        f"`{PROG} fit` (e.g. a ModelCheckpoint's last.ckpt); an untrained network has nothing to "
                        f"{'return' if subcommand == 'predict' else 'evaluate'}"
                    )
                hook = {"validate": "val_dataloader", "test": "test_dataloader", "predict": "predict_dataloader"}[
                    subcommand
                ]
                datamodule = kwargs.get("datamodule")
                if datamodule is not None and not is_overridden(hook, datamodule):
                    if not is_overridden("predict_dataloader", datamodule):
                        raise ValueError(
                            f"the data module {type(datamodule).__name__} has neither {hook}() nor "
                            f"predict_dataloader(); `{PROG} {subcommand}` has nothing to evaluate"
                        )
                    kwargs["datamodule"] = fitted_set_datamodule(datamodule)
            return kwargs

        def predict(self, **kwargs) -> None:
            """``trainer.predict``, then save what it returned to ``<default_root_dir>/predictions.pt``."""
            outputs = self.trainer.predict(**kwargs)
            if self.trainer.is_global_zero and outputs:
                path = save_predictions(outputs, self.trainer.default_root_dir)
                print(f"{PROG} predict: wrote {path}")

    _CLI_CLASS = UgoditCLI
    return UgoditCLI


def save_predictions(outputs, folder) -> str:
    """Collect ``trainer.predict``'s batches (dicts of ``reconstruction``, ``index``, ``name``, as the methods'
    ``predict_step`` returns them) into one file ``folder/predictions.pt``, written atomically.

    The file holds ``{"name": [...], "index": LongTensor (N,), "reconstruction": Tensor (N, C, H, W)}``
    (on the CPU, in the measurements' units); other outputs are saved as the list Lightning returned.
    """
    from pathlib import Path

    import torch

    from ugodit_pl.atomic import atomic_torch_save

    batches = [b for group in outputs for b in (group if isinstance(group, list) else [group])]
    if all(isinstance(b, dict) and {"reconstruction", "index", "name"} <= set(b) for b in batches):
        payload = {
            "name": [name for b in batches for name in b["name"]],
            "index": torch.cat([torch.as_tensor(b["index"]).cpu() for b in batches]),
            "reconstruction": torch.cat([b["reconstruction"].detach().cpu() for b in batches]),
        }
    else:
        payload = {"outputs": outputs}
    path = Path(folder) / "predictions.pt"
    atomic_torch_save(payload, path)
    return str(path)


def fitted_set_datamodule(datamodule):
    """A LightningDataModule that serves ``datamodule.predict_dataloader()`` (the fitted set, once) as the
    validation and test set too, for data modules (like ugodit-pl's) that only define training and
    predict loaders: an untrained-network fit has no separate validation set, its "validation" is the
    fitted measurements against their ground truth.
    """
    import pytorch_lightning as pl

    class FittedSet(pl.LightningDataModule):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def setup(self, stage: str) -> None:
            self.inner.trainer = self.trainer
            self.inner.setup(stage)

        def val_dataloader(self):
            return self.inner.predict_dataloader()

        def test_dataloader(self):
            return self.inner.predict_dataloader()

        def predict_dataloader(self):
            return self.inner.predict_dataloader()

    return FittedSet(datamodule)


def run_lightning(argv: Sequence[str]) -> int:
    """``ugodit fit|validate|test|predict ...``: run the LightningCLI on ``argv`` (subcommand first)."""
    from ugodit_pl.apps.runtime import quiet_lightning

    with quiet_lightning():
        lightning_cli_class()(
            model_class=None,
            datamodule_class=None,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=list(argv),
            run=True,
            seed_everything_default=False,
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False},
            save_config_kwargs={"overwrite": True},
        )
    return 0


# --------------------------------------------------------------------------------------------- other commands
def run_demo(argv: Sequence[str]) -> int:
    from ugodit_pl.apps.demo import main as demo_main

    return demo_main(list(argv))


def run_reconstruct(argv: Sequence[str]) -> int:
    from ugodit_pl.apps.reconstruct import main as reconstruct_main

    return reconstruct_main(list(argv))


def run_classical(argv: Sequence[str]) -> int:
    from ugodit_pl.apps.classical_volumes import main as classical_main

    return classical_main(list(argv))


def run_compare(argv: Sequence[str]) -> int:
    from ugodit_pl.apps.compare import main as compare_main

    return compare_main(list(argv))


def run_benchmark(argv: Sequence[str]) -> int:
    from ugodit_pl.apps.benchmarks.cli import main as benchmark_main

    return int(benchmark_main(list(argv)) or 0)


RUNNERS: Dict[str, Callable[[Sequence[str]], int]] = {
    "demo": run_demo,
    "reconstruct": run_reconstruct,
    "classical": run_classical,
    "compare": run_compare,
    "benchmark": run_benchmark,
}


# --------------------------------------------------------------------------------------------- entry point
class Stopped(BaseException):
    """A SIGINT or SIGTERM received while a command runs; it ends the command with 128 + the signal number.

    A ``BaseException`` other than ``KeyboardInterrupt``, so that Lightning tears the fit down and lets
    it through (it turns a ``KeyboardInterrupt`` into exit status 1).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)


def _stop(signum: int, frame: Any) -> None:
    raise Stopped(signum)


def _redeliver_swallowed_stop(unraisable: Any) -> None:
    """``sys.unraisablehook`` while a command runs: a :class:`Stopped` raised inside a finaliser is sent again.

    Python runs a signal handler between any two bytecodes, also inside a weakref callback or a
    ``__del__``, where an exception cannot propagate and is only printed ("Exception ignored in ...").
    The signal would then be lost and the command would run to its end; marking it pending again a
    moment later lets the handler run outside the finaliser (and, if it lands in one again, once more).
    """
    if isinstance(unraisable.exc_value, Stopped):
        # From another thread, a moment later: a pending signal marked here would run its handler inside
        # this hook, which is itself a place where exceptions are swallowed.
        again = threading.Timer(0.01, _thread.interrupt_main, (unraisable.exc_value.signum,))
        again.daemon = True
        again.start()
    else:
        sys.__unraisablehook__(unraisable)


def _install_signal_handlers() -> Dict[int, Any]:
    """Route SIGINT and SIGTERM to :class:`Stopped` (main thread only); returns what to restore.

    The returned mapping holds the previous handler of each signal, and the previous
    ``sys.unraisablehook`` under the key ``"unraisablehook"``.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: Dict[Any, Any] = {"unraisablehook": sys.unraisablehook}
    sys.unraisablehook = _redeliver_swallowed_stop
    previous.update({signum: signal.signal(signum, _stop) for signum in (signal.SIGINT, signal.SIGTERM)})
    return previous


def _restore_signal_handlers(previous: Dict[Any, Any]) -> None:
    """Undo :func:`_install_signal_handlers`."""
    for key, value in previous.items():
        if key == "unraisablehook":
            sys.unraisablehook = value
        else:
            signal.signal(key, value)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``ugodit`` console script; returns the exit code.

    ``argv`` defaults to ``sys.argv[1:]``; tests call ``main([...])`` in-process.
    """
    args, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        import ugodit_pl

        print(f"{PROG} {ugodit_pl.__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"{PROG}: error: unknown command {command!r}; commands: {', '.join(COMMANDS)} "
              f"(see {PROG} --help)", file=sys.stderr)
        return 2
    previous = _install_signal_handlers()
    try:
        if command in LIGHTNING_COMMANDS:
            return run_lightning([command, *rest])
        return int(RUNNERS[command](rest) or 0)
    except SystemExit as exit_:
        return _exit_code(exit_)
    except (Stopped, KeyboardInterrupt) as stop:
        if debug:
            raise
        signum = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
        print(f"{PROG} {command}: stopped by {signal.Signals(signum).name}; what was written so far is kept",
              file=sys.stderr)
        return 128 + int(signum)
    except Exception as error:  # noqa: BLE001 - the top level turns every error into one line
        if debug:
            raise
        return _report(command, error)
    finally:
        _restore_signal_handlers(previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
