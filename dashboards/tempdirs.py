"""The dashboard's temporary folders: marked with their owner, removed by the next server when orphaned.

Every temporary folder the dashboard creates (a session's uploads, a run, an export) is made by
:func:`owned_tempdir`, which writes a marker file naming the server process (pid and the process's start
time, so a recycled pid does not count). A server killed before it could clean up leaves them behind;
the next server, at start-up, removes every folder that carries a marker whose process is gone
(:func:`sweep_orphans`). A folder without the marker is never touched: nothing the dashboard did not
create is deleted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = ".gatelens-owner.json"
PREFIXES = ("gatelens-run-", "gatelens-session-", "gatelens-export-")


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19]) if len(fields) > 19 and fields[0] != "Z" else None


def owned_tempdir(prefix: str) -> tempfile.TemporaryDirectory:
    """A ``TemporaryDirectory`` with the marker of this process inside (removed with it).

    Examples
    --------
    >>> d = owned_tempdir("gatelens-run-")
    >>> (Path(d.name) / MARKER).is_file(), Path(d.name).name.startswith("gatelens-run-")
    (True, True)
    >>> d.cleanup()
    """
    if not prefix.startswith(PREFIXES):
        raise ValueError(f"prefix must start with one of {PREFIXES}, got {prefix!r}")
    tmp = tempfile.TemporaryDirectory(prefix=prefix)
    pid = os.getpid()
    (Path(tmp.name) / MARKER).write_text(json.dumps({"pid": pid, "start": _start_ticks(pid)}))
    return tmp


def _orphaned(folder: Path) -> bool:
    try:
        owner = json.loads((folder / MARKER).read_text())
        pid, start = int(owner["pid"]), owner.get("start")
    except (OSError, ValueError, KeyError, TypeError):
        return False  # no (readable) marker: not ours to judge
    now = _start_ticks(pid)
    return now is None or (start is not None and now != start)


def sweep_orphans(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove the dashboard's temporary folders under ``root`` (default the temp dir) whose server is gone.

    Returns the folders removed.
    """
    base = Path(root) if root is not None else Path(tempfile.gettempdir())
    removed = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return removed
    for folder in entries:
        if folder.name.startswith(PREFIXES) and folder.is_dir() and not folder.is_symlink() and _orphaned(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        log.info("removed %d temporary folder(s) of a previous dashboard server", len(removed))
    return removed


__all__ = ["MARKER", "owned_tempdir", "sweep_orphans"]
