"""A suite run's journal: each finished unit of work on disk as it lands, so that a killed run resumes.

A long suite (the ``mri-quality`` panel at native size runs for hours on a CPU) keeps a folder beside its
result file, ``DIR/NAME.partial/``: ``identity.json`` (what makes the run: suite, preset, seed, overrides,
data, device, threads, git revision) and one JSON file per finished unit, each written atomically, plus
any file a later unit needs (UGoDIT's transferable weights). Rerunning the same command reads the
finished units instead of fitting them again; a run that differs in its identity is refused, naming the
keys that differ (mixing two runs' fits in one table would be wrong). When the result file is written
the journal is removed.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp()) / "mri-quality.partial"
>>> journal = Journal(folder, {"suite": "mri-quality", "seed": 0})
>>> journal.open()
0
>>> journal.put("brain 48x40 4x: dip", {"psnr": 25.0})
>>> Journal(folder, {"suite": "mri-quality", "seed": 0}).open(), journal.get("brain 48x40 4x: dip")
(1, {'psnr': 25.0})
>>> journal.close(); folder.exists()
False
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from ugodit_pl.apps.io import read_json, to_jsonable, write_json

__all__ = ["Journal", "kept_file", "run_unit"]

IDENTITY = "identity.json"


class Journal:
    """The finished units of one suite run, in ``folder``; ``identity`` is what makes the run (JSON-able).

    Args:
        folder: the journal's folder (created by :meth:`open`).
        identity: the run's settings; a journal written under another identity is refused.
        fresh: discard a journal found in ``folder`` instead of resuming it.
    """

    def __init__(self, folder: Path, identity: Dict[str, Any], *, fresh: bool = False) -> None:
        self.folder = Path(folder)
        self.identity = to_jsonable(identity)
        self.fresh = bool(fresh)

    def open(self) -> int:
        """Create the folder, or check the one there against the identity; returns how many units it holds.

        Raises ``ValueError`` naming the folder and the differing keys when the journal there was written
        by a run with another identity (and ``fresh`` is not set).
        """
        written = self.folder / IDENTITY
        if self.fresh and self.folder.exists():
            shutil.rmtree(self.folder)
        if written.is_file():
            before = read_json(written)
            differ = sorted(k for k in set(before) | set(self.identity) if before.get(k) != self.identity.get(k))
            if differ:
                raise ValueError(
                    f"{self.folder} holds the finished units of a run that differs in {', '.join(differ)} "
                    f"(there: {', '.join(f'{k}={before.get(k)!r}' for k in differ)}); rerun that command to resume it, "
                    f"or pass --fresh (or delete the folder) to start again")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(written, self.identity)
        return len(self)

    def get(self, key: str, writes: Sequence[Union[str, Path]] = ()) -> Optional[Any]:
        """The value put under ``key``, or None when that unit has not finished or a file it ``writes`` is gone."""
        path = self._path(key)
        if not path.is_file() or not all(Path(file).is_file() for file in writes):
            return None
        return read_json(path)["value"]

    def put(self, key: str, value: Any) -> None:
        """Record the finished unit ``key`` (atomically: a kill leaves it whole or absent)."""
        write_json(self._path(key), {"key": key, "value": value})

    def __len__(self) -> int:
        """How many finished units the journal holds."""
        return len(self._units())

    def file(self, name: str) -> Path:
        """The path of a file the run keeps in the journal (e.g. weights a later unit reads)."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name == IDENTITY:
            raise ValueError(f"a journal file name uses letters, digits, '_', '.', '-' and is not {IDENTITY}; got {name!r}")
        return self.folder / name

    def close(self) -> None:
        """Remove the journal (the run's result file is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _units(self) -> List[Path]:
        return sorted(self.folder.glob("unit-*.json"))

    def _path(self, key: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:60]
        return self.folder / f"unit-{slug}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.json"


def kept_file(journal: Optional[Journal], name: str, scratch: Path) -> Path:
    """Where a unit writes the file ``name`` that a later unit reads: in the ``journal``, so that it
    outlives a kill, or in the run's ``scratch`` folder without one.

    >>> kept_file(None, "encoder_4x.pt", Path("/tmp/run"))
    PosixPath('/tmp/run/encoder_4x.pt')
    """
    return journal.file(name) if journal is not None else Path(scratch) / name


def run_unit(journal: Optional[Journal], key: str, compute: Callable[[], Any],
             writes: Sequence[Union[str, Path]] = ()) -> Any:
    """The unit ``key``'s value: the ``journal``'s when it holds it (and the files it ``writes``), else
    ``compute()``'s, put in the journal; either way as the journal keeps it (JSON: tuples become lists,
    non-finite floats None), so that a resumed run gives the same result file as an uninterrupted one.

    >>> run_unit(None, "epi: aseqdip", lambda: {"psnr": (25.0, float("nan"))})
    {'psnr': [25.0, None]}
    """
    held = journal.get(key, writes) if journal is not None else None
    if held is not None:
        return held
    value = to_jsonable(compute())
    if journal is not None:
        journal.put(key, value)
    return value
