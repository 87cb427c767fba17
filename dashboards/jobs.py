"""Background jobs: long work (loading, extraction, analysis) off the script thread, with progress.

A :class:`Job` runs a function in a small shared thread pool. The function receives ``stage(label)``,
which returns the library's ``progress(done, total)`` callback for that stage; the job records the
latest values, so a page can draw ``st.progress`` from them while the work goes on. The page's
script thread only polls (see :func:`gatelens.dashboards.state.wait_for`): a click elsewhere reruns the page
at once and the job keeps running; coming back finds it further along, or done.

No Streamlit here. Jobs are cached by content hash in ``st.cache_resource`` (bounded), so two
sessions asking for the same model + data share one job and its result.

Examples
--------
>>> def work(stage):
...     progress = stage("counting")
...     for i in range(3):
...         progress(i + 1, 3)
...     return "done"
>>> job = Job.start(work)
>>> job.wait(10), job.result(), job.fraction
(True, 'done', 1.0)

A cancelled job stops at its next progress call (:meth:`Job.cancel`: its session ended):

>>> import threading
>>> go = threading.Event()
>>> def slow(stage):
...     progress = stage("waiting")
...     go.wait(10)
...     progress(1, 2)
...     return "never"
>>> job = Job.start(slow)
>>> job.cancel(); go.set()
>>> job.wait(10), type(job.error).__name__, job.cancelled
(True, 'Cancelled', True)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


class Cancelled(Exception):
    """Raised inside a job's work by its progress callback once the job was cancelled (its session ended).

    Examples
    --------
    >>> job = Job(lambda stage: stage("loading"))         # made, not started yet
    >>> job.cancel()
    >>> job.submit().wait(10)                              # its first stage call raises Cancelled
    True
    >>> job.result()
    Traceback (most recent call last):
    ...
    gatelens.dashboards.jobs.Cancelled: ...
    """


#: Worker threads shared by all sessions (the machine is small; TensorFlow uses its own pool inside).
MAX_WORKERS = 2
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def executor() -> ThreadPoolExecutor:
    """The process-wide pool that runs jobs."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="gatelens-job")
        return _executor


class Job:
    """A function running in the background, with a label and a fraction done.

    Attributes
    ----------
    label : str
        What the job is doing now (the current stage).
    fraction : float
        Share done of the current stage, in [0, 1].
    stages_done : int
        Stages started before the current one.
    started, finished : float
        ``time.monotonic()`` at start and end (``finished`` is None while running).
    """

    def __init__(self, fn: Callable[[Callable[[str], Progress]], Any], *, n_stages: int = 1) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self.n_stages = max(1, int(n_stages))
        self.label = "Waiting to start"
        self.fraction = 0.0
        self.stages_done = -1
        self.started = time.monotonic()
        self.finished: float | None = None
        self._cancel = threading.Event()
        #: Called once with the result (None if the work stopped midway) when a cancelled job is dropped (e.g.
        #: removes a run's folder).
        self.on_discard: Callable[[Any], None] | None = None

    @classmethod
    def start(cls, fn: Callable[[Callable[[str], Progress]], Any], *, n_stages: int = 1) -> Job:
        """Create a job for ``fn(stage)`` and submit it to the pool."""
        return cls(fn, n_stages=n_stages).submit()

    def submit(self) -> Job:
        """Submit a job made with ``Job(fn)`` to the pool (to start it later than it was made); returns it."""
        executor().submit(self._run)
        return self

    def _stage(self, label: str) -> Progress:
        if self._cancel.is_set():
            raise Cancelled(f"cancelled before {label!r}")
        with self._lock:
            self.stages_done += 1
            self.label = label
            self.fraction = 0.0

        def progress(done: int, total: int) -> None:
            if self._cancel.is_set():
                raise Cancelled(f"cancelled during {label!r}")
            with self._lock:
                self.fraction = min(1.0, max(0.0, done / total)) if total else 1.0

        return progress

    def _run(self) -> None:
        try:
            self._result = self._fn(self._stage)
        except BaseException as e:  # handed to the page that waits for it
            self._error = e
            log.debug("job failed", exc_info=True)
        finally:
            self.finished = time.monotonic()
            with self._lock:
                self.fraction = 1.0
            self._done.set()
            if self._cancel.is_set():
                self._discard()

    def cancel(self) -> None:
        """Stop the work at its next progress call and drop the result (:attr:`on_discard` gets it).

        Safe to call from any thread, more than once. A cancelled job's :meth:`result` raises
        :class:`Cancelled`.

        Examples
        --------
        >>> job = Job.start(lambda stage: "a run folder")
        >>> job.wait(10)
        True
        >>> dropped = []
        >>> job.on_discard = dropped.append                 # e.g. removes the folder
        >>> job.cancel()                                    # done already: the result is dropped now
        >>> job.cancelled, dropped[0], type(job.error).__name__
        (True, 'a run folder', 'Cancelled')
        """
        self._cancel.set()
        if self.done:
            self._discard()

    def _discard(self) -> None:
        with self._lock:
            result, self._result = self._result, None
            # a fresh error without a traceback: the frames of the stopped work (and their temporary folders) go
            self._error = Cancelled("the session that asked for this work ended")
        if self.on_discard is not None:  # also without a result (stopped midway): it may hold a folder
            try:
                self.on_discard(result)
            except Exception:
                log.warning("could not release a cancelled job's result", exc_info=True)

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def overall(self) -> float:
        """Share of the whole job done, counting each stage equally."""
        with self._lock:
            if self.done:
                return 1.0
            stages = max(0, self.stages_done)
            return min(1.0, (stages + self.fraction) / self.n_stages)

    @property
    def error(self) -> BaseException | None:
        return self._error if self.done else None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds; True when the job is done."""
        return self._done.wait(timeout)

    def result(self) -> Any:
        """The function's return value; re-raises its exception. Only once :attr:`done`."""
        if not self.done:
            raise RuntimeError("the job is still running")
        if self._error is not None:
            raise self._error
        return self._result

    @property
    def seconds(self) -> float:
        """Wall-clock seconds the job ran (so far)."""
        end = self.finished if self.finished is not None else time.monotonic()
        return end - self.started
