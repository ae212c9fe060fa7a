"""What the applications write: strict JSON result files, atomically, with the machine they ran on.

- :func:`write_json` / :func:`read_json`: indented strict JSON written atomically
  (``ugodit_pl.atomic``); NaN and Inf are written as ``null``, tensors and numpy values as numbers;
- :func:`machine_info`: CPU model, cores, torch version and threads, GPU name (if any), load
  average, git revision, Python and platform (timings mean nothing without them).

>>> info = machine_info(command=["ugodit", "benchmark", "speed"])
>>> sorted(k for k in ("cpu_model", "cores", "torch", "load_average", "git_revision") if k in info)
['cores', 'cpu_model', 'git_revision', 'load_average', 'torch']
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from ugodit_pl.atomic import atomic_path

__all__ = ["REPO_ROOT", "cpu_model", "git_revision", "machine_info", "read_json", "to_jsonable", "write_json"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_revision(root: Union[str, Path] = REPO_ROOT) -> Dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository at ``root`` (read-only git calls)."""
    def run(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", *args], cwd=str(root), capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def machine_info(command: Optional[Sequence[str]] = None, device: Any = None) -> Dict[str, Any]:
    """Facts about the machine and the run, for a result file.

    ``command``: the command line to record (default ``sys.argv``). ``device``: the device the
    benchmark ran on (the GPU name is recorded when it is, or when CUDA is available at all).
    """
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    import torch

    gpu = None
    if torch.cuda.is_available():
        index = torch.device(device).index if device is not None and torch.device(device).type == "cuda" else None
        gpu = torch.cuda.get_device_name(0 if index is None else index)
    revision = git_revision()
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": gpu,
        "device": str(device) if device is not None else ("cuda" if gpu else "cpu"),
        "load_average": load,
        "git_revision": revision["commit"],
        "git_dirty": revision["dirty"],
        "command": " ".join(list(command) if command is not None else sys.argv),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[0-9][0-9.eE+-]*|null)(?:,\s*(?:-?[0-9][0-9.eE+-]*|null))*)\s*\]")

def to_jsonable(value: Any) -> Any:
    """Plain JSON values: tensors and numpy scalars to numbers/lists, tuples to lists, NaN/Inf to None.

    >>> import torch
    >>> to_jsonable({"a": torch.tensor([1.5, float("nan")]), "b": (1, 2)})
    {'a': [1.5, None], 'b': [1, 2]}
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # tensors, numpy arrays and scalars
        return to_jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


def write_json(path: Union[str, Path], data: Any) -> Path:
    """Write ``data`` as indented strict JSON to ``path`` atomically; returns the path.

    >>> import tempfile
    >>> p = write_json(Path(tempfile.mkdtemp()) / "r.json", {"x": float("inf")})
    >>> read_json(p)
    {'x': None}
    """
    path = Path(path)
    text = json.dumps(to_jsonable(data), indent=1, allow_nan=False)
    # lists of numbers on one line each (curves stay readable and the file small)
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text) + "\n"
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def read_json(path: Union[str, Path]) -> Any:
    """Read a JSON result file."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
