"""What a ``gatelens`` command writes for its user: the command line's one output path.

Library code never prints (it logs, or reports through a ``progress(done, total)`` callback). The commands
are the presentation layer: each writes its result lines through :func:`say` (standard output) and its
progress through :class:`ProgressBar` (standard error, only on a terminal). A test checks that no other
module of gatelens calls ``print``.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


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
