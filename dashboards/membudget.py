"""A byte budget for the traces the dashboard copies into memory; every other trace is read from its run store.

A run's trace lives in its run store on disk (Zarr, chunks of at most 64 sequences), and the pages read one
sequence or one chunk at a time. Copying a small trace into memory makes the pages faster, so the
dashboard does that while the copies of all live runs together stay within ``GATELENS_TRACE_MEMORY_MB``
(default :data:`DEFAULT_MB`); a copy's bytes go back to the budget when its run is dropped (cache eviction,
or a session that ended: :mod:`gatelens.dashboards.sessions`). A run past the budget keeps its lazy,
store-backed trace. Server memory then grows with the budget, not with the number of sessions or sequences.

Examples
--------
>>> b = Budget(limit=100)
>>> class T: pass
>>> first, second = T(), T()
>>> b.hold(first, 60) is not None, b.hold(second, 60) is None, b.used
(True, True, 60)
>>> del first; import gc; _ = gc.collect(); b.used
0
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

BUDGET_ENV = "GATELENS_TRACE_MEMORY_MB"
#: Megabytes of traces the server keeps in memory (all sessions together).
DEFAULT_MB = 256.0


def budget_bytes() -> int:
    """``GATELENS_TRACE_MEMORY_MB`` in bytes (0 keeps every trace on disk), else :data:`DEFAULT_MB`.

    Examples
    --------
    >>> os.environ[BUDGET_ENV] = "0.5"; budget_bytes()
    524288
    >>> del os.environ[BUDGET_ENV]; budget_bytes() == int(DEFAULT_MB * 1024**2)
    True
    """
    raw = os.environ.get(BUDGET_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MB
    except ValueError:
        log.warning("%s=%r is not a number of megabytes; using %.0f", BUDGET_ENV, raw, DEFAULT_MB)
        mb = DEFAULT_MB
    return int(max(0.0, mb) * 1024**2)


class Budget:
    """Bytes held by live objects; :meth:`hold` admits an object only while the total stays within ``limit``."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = budget_bytes() if limit is None else int(limit)
        self._lock = threading.Lock()
        self.used = 0

    def hold(self, obj: Any, nbytes: int) -> Any | None:
        """Count ``nbytes`` for ``obj`` until it is garbage-collected; None (nothing counted) when over budget."""
        nbytes = int(nbytes)
        with self._lock:
            if self.used + nbytes > self.limit:
                return None
            self.used += nbytes
        weakref.finalize(obj, self._release, nbytes)
        return obj

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self.used -= nbytes


_budget: Budget | None = None
_budget_lock = threading.Lock()


def budget() -> Budget:
    """The server's budget (created on first use from ``GATELENS_TRACE_MEMORY_MB``)."""
    global _budget
    with _budget_lock:
        if _budget is None:
            _budget = Budget()
        return _budget


def maybe_in_memory(trace: Any, nbytes: int, copy: Callable[[Any], Any]) -> Any:
    """``copy(trace)`` (an in-memory copy) if ``nbytes`` more fit the server's budget, else ``trace`` itself."""
    b = budget()
    with b._lock:
        fits = b.used + int(nbytes) <= b.limit
    if not fits:
        log.info("trace of %.1f MB stays on disk (trace memory budget %.0f MB, %.1f MB used)", nbytes / 1e6,
                 b.limit / 1e6, b.used / 1e6)  # fmt: skip
        return trace
    held = b.hold(copy(trace), nbytes)
    return held if held is not None else trace  # another run took the room meanwhile: keep it on disk


__all__ = ["BUDGET_ENV", "DEFAULT_MB", "Budget", "budget", "budget_bytes", "maybe_in_memory"]
