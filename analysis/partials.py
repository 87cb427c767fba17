"""Files being written, under names that no reader picks up; removed on failure and after a killed writer.

A partial file (or folder) is ``.<final name>.partial-<hex>`` beside the finished one, renamed into place
when complete. The leading dot hides it from pyarrow datasets and ``pandas.read_parquet`` of a folder
(they skip names starting with ``.`` or ``_``), and it does not end in ``.parquet`` or ``.csv``, so a
glob such as ``analysis/*.parquet`` (DuckDB, Polars, pandas) misses it too.

While it is written the partial is held under a shared ``flock`` (the kernel drops it when the process
dies, however it dies), taken under a lock on the folder. :func:`clean_partials` (run by ``gatelens
analyze`` and ``export`` before they write) removes, under the same folder lock, every partial that no
live process holds: what a killed writer left, never what a running one is writing.

Examples
--------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with partial_path(d / "t.parquet") as tmp:
...     _ = tmp.write_bytes(b"half")
...     hidden = tmp.name.startswith(".t.parquet.partial-")
>>> hidden, sorted(p.name for p in d.iterdir())     # not renamed: removed on the way out
(True, [])
>>> with partial_path(d / "t.parquet") as tmp:
...     _ = tmp.write_bytes(b"whole")
...     os.replace(tmp, d / "t.parquet")
>>> sorted(p.name for p in d.iterdir())
['t.parquet']
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

#: The names of partial files and folders (``.<final name>.partial-<hex>``).
PARTIAL_NAME = re.compile(r"^\..+\.partial-[0-9a-f]{12}$")


class Partial:
    """One partial file or folder for ``final``, held (``flock``) until :meth:`close`.

    Use :func:`partial_path` (a context manager) where the write sits in one block; this object where
    the partial outlives a block (created here, renamed by another function).

    Parameters
    ----------
    final : path
        Where the finished file goes; the partial is created beside it (the folder is made if needed).
    directory : bool
        A folder (e.g. a hive-partitioned table) instead of a file.

    Attributes
    ----------
    path : Path
        The partial's path (an empty file or folder when created).

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> part = Partial(d / "tables" / "events", directory=True)        # a folder, made beside the final one
    >>> part.path.is_dir(), bool(PARTIAL_NAME.match(part.path.name))
    (True, True)
    >>> _ = (part.path / "part-0.parquet").write_bytes(b"rows")
    >>> os.replace(part.path, d / "tables" / "events")                 # complete: renamed into place
    >>> part.close()
    >>> sorted(p.name for p in (d / "tables").iterdir())
    ['events']
    >>> other = Partial(d / "units.csv")
    >>> other.close(); other.path.exists()                             # not renamed: removed
    False
    """

    def __init__(self, final: str | os.PathLike, *, directory: bool = False) -> None:
        from gatelens.analysis.store import _locked

        final = Path(final)
        parent = final.parent
        parent.mkdir(parents=True, exist_ok=True)
        self.path = parent / f".{final.name}.partial-{uuid.uuid4().hex[:12]}"
        self._fd: int | None = None
        with _locked(parent):  # a cleaner holds it too: it cannot see the partial before it is held
            if directory:
                self.path.mkdir()
            else:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            self._fd = os.open(self.path, os.O_RDONLY)
            fcntl.flock(self._fd, fcntl.LOCK_SH)

    def close(self) -> None:
        """Remove the partial unless it was renamed away, then let go of it (idempotent)."""
        if self._fd is None:
            return
        try:
            _remove(self.path)
        finally:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # a partial dropped on an error path is removed, not held until the process ends
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.close()


def partial_path(final: str | os.PathLike, *, directory: bool = False) -> Partial:
    """A :class:`Partial` for ``final`` as a context manager: yields its path, removes it on the way out
    unless it was renamed into place (``os.replace(path, final)``).

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with partial_path(d / "units.csv") as tmp:
    ...     _ = tmp.write_text("layer,unit\\n")
    ...     print(tmp.name.startswith(".units.csv.partial-"), sorted(p.name for p in d.iterdir()) == [tmp.name])
    ...     os.replace(tmp, d / "units.csv")
    True True
    >>> sorted(p.name for p in d.iterdir())
    ['units.csv']
    """
    return Partial(final, directory=directory)


def clean_partials(folder: str | os.PathLike) -> list[Path]:
    """Remove the partials in ``folder`` that no live process holds (left by a killed or crashed writer).

    Returns the paths removed. A folder that does not exist, and every other name, are left as they are.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / ".events.parquet.partial-0123456789ab").write_bytes(b"left by a killed run")
    >>> _ = (d / "mine.parquet").write_bytes(b"not ours")
    >>> live = Partial(d / "units.parquet")              # being written right now: kept
    >>> [p.name for p in clean_partials(d)], sorted(p.name for p in d.iterdir()) == sorted(
    ...     ["mine.parquet", live.path.name])
    (['.events.parquet.partial-0123456789ab'], True)
    >>> live.close()
    """
    from gatelens.analysis.store import _locked

    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return []
    removed = []
    with _locked(folder):
        for p in sorted(folder.iterdir()):
            if not PARTIAL_NAME.match(p.name) or p.is_symlink():
                continue
            with _locked(p, blocking=False) as free:
                if free:
                    _remove(p)
                    removed.append(p)
    if removed:
        log.warning("removed %d partial file(s) left by an interrupted writer in %s", len(removed), folder)
    return removed


def _remove(path: Path) -> None:
    from gatelens.analysis.store import _remove_tree

    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            _remove_tree(path)
        else:
            path.unlink()


__all__ = ["PARTIAL_NAME", "Partial", "clean_partials", "partial_path"]
