"""What a ``gatelens`` command writes for its user: the command line's one output path.

Library code never prints (it logs, or reports through a ``progress(done, total)`` callback). The commands
are the presentation layer: each writes its result lines through :func:`say` (standard output) and its
progress through :class:`ProgressBar` (standard error, only on a terminal). A test checks that no other
module of gatelens calls ``print``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO


def check_replaceable(path: str | os.PathLike, option: str, headers: Sequence[Sequence[str]] = ()) -> Path:
    """``path`` as a ``Path``, once it is known that writing it loses nothing of the user's: it does not exist, or it
    is a CSV gatelens wrote (its first line is one of ``headers``, the headers that command writes); else a
    :class:`~gatelens.errors.UsageError` (exit 2) naming ``option`` and the path, before any work is done.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> mine = pathlib.Path(tempfile.mkdtemp()) / "notes.csv"
    >>> _ = mine.write_text("my,own,notes\\n")
    >>> try:
    ...     check_replaceable(mine, "--out", [["rank", "query"]])
    ... except Exception as e:
    ...     print(str(e).split(": ", 1)[1])
    exists and was not written by gatelens (its first line is not a header gatelens writes); not replacing it
    >>> _ = mine.write_text("rank,query\\r\\n1,x\\r\\n")
    >>> check_replaceable(mine, "--out", [["rank", "query"]]).name
    'notes.csv'
    """
    from gatelens.errors import UsageError

    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{option} {path}: is a directory; expected a file to write")
    if not os.path.lexists(p):
        return p
    if p.is_symlink() or not p.is_file():
        raise UsageError(f"{option} {path}: exists and is not a regular file; not replacing it")
    if headers:
        with open(p, "rb") as f:
            first = f.readline(1 << 16).decode("utf-8", errors="replace").rstrip("\r\n")
        if first in {",".join(h) for h in headers}:
            return p
        why = "its first line is not a header gatelens writes"
    else:
        why = "gatelens cannot tell it wrote it"
    raise UsageError(f"{option} {path}: exists and was not written by gatelens ({why}); not replacing it")


def say(*lines: str, stream: TextIO | None = None) -> None:
    """Write each of ``lines`` as one line of a command's result (standard output by default).

    Examples
    --------
    >>> say("wrote run: 3 sequences", "  skipped probes: no features")
    wrote run: 3 sequences
      skipped probes: no features
    """
    out = stream if stream is not None else sys.stdout
    for line in lines:
        out.write(f"{line}\n")
    out.flush()


class ProgressBar:
    """A one-line progress bar on stderr (only when stderr is a terminal, or forced).

    Examples
    --------
    >>> import io
    >>> buf = io.StringIO()
    >>> bar = ProgressBar("extract", stream=buf, force=True)
    >>> bar(2, 2)
    >>> buf.getvalue().split("]")[0].strip()
    'extract [##############################'
    """

    def __init__(self, label: str, *, stream: TextIO | None = None, force: bool = False) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = force or self.stream.isatty()
        self.t0 = time.perf_counter()
        self._last = -1.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        frac = done / max(total, 1)
        bar = "#" * int(30 * frac)
        self.stream.write(f"\r{self.label} [{bar:<30}] {done}/{total} {now - self.t0:5.1f}s")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()
