"""Atomic file writing: readers (and a crash) never see a half-written file.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
>>> with atomic_path(target) as tmp:
...     _ = tmp.write_text("done")
>>> target.read_text()
'done'
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it is synced and moved onto ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was. Libraries that
    open files themselves (h5py, numpy, torch, matplotlib) write to the yielded path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if _no_space(error):
            raise OSError(errno.ENOSPC, f"no space left on device while writing {path}; what was written before is kept"
                          ) from error
        raise


def _no_space(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a full disk; h5py reports it only in its message."""
    while error is not None:
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` atomically."""
    import torch

    with atomic_path(path) as temporary:
        torch.save(obj, temporary)
