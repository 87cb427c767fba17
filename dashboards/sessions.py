"""Session lifetime: a session's temporary files are deleted, and its work cancelled, once the session is gone.

Streamlit has no public "session ended" hook, so gatelens keeps its own ledger (:class:`Ledger`, one per
server process) of what each browser session owns -- its temporary folders (uploads, exports) and the
background jobs it asked for (runs, probes, exports: :class:`gatelens.dashboards.jobs.Job`) -- with a
heartbeat: the time the session was last seen. Every script run of the session refreshes it
(:func:`heartbeat`, called by the app on every page), and a reaper thread refreshes it while the
session's browser is still connected (the runtime's thread-safe ``is_active_session``; a browser that
closes drops its websocket at once). A session not seen for ``GATELENS_SESSION_IDLE_S`` seconds (default
600: a reload or a short network loss reconnects within it) has ended: its folders are removed and each
job it owned that no live session still holds is cancelled (:meth:`Job.cancel`: the work stops at its
next progress call, and the result -- a run with its temporary folder -- is released). Jobs are shared
by content hash between sessions (the caches in :mod:`gatelens.dashboards.state`), so a run lives as long
as the last session that uses it.

A server killed before its reaper could run leaves its folders behind; the next server removes them at
start-up (:func:`gatelens.dashboards.tempdirs.sweep_orphans`).

No Streamlit import at module level (the ledger is plain Python, tested without a server).

Examples
--------
>>> from gatelens.dashboards.jobs import Job
>>> ledger = Ledger(idle_s=10)
>>> job = Job.start(lambda stage: "a run")
>>> _ = ledger.touch("s1", now=0.0); ledger.own_job("s1", job); ledger.own_job("s2", job, now=0.0)
>>> ledger.reap(now=5.0), ledger.reap(now=20.0, active={"s2"}), job.cancelled
([], ['s1'], False)
>>> ledger.reap(now=40.0), job.cancelled
(['s2'], True)
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatelens.dashboards.compat import connected_sessions, script_session_id

log = logging.getLogger(__name__)

IDLE_ENV = "GATELENS_SESSION_IDLE_S"
#: Seconds a session may go unseen (no script run, no connected browser) before its files are removed.
DEFAULT_IDLE_S = 600.0


def idle_seconds() -> float:
    """The idle timeout: ``GATELENS_SESSION_IDLE_S`` (seconds, > 0), else :data:`DEFAULT_IDLE_S`.

    Examples
    --------
    >>> os.environ[IDLE_ENV] = "2.5"; idle_seconds()
    2.5
    >>> os.environ[IDLE_ENV] = "soon"; idle_seconds() == DEFAULT_IDLE_S
    True
    >>> del os.environ[IDLE_ENV]
    """
    raw = os.environ.get(IDLE_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_IDLE_S
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %.0f", IDLE_ENV, raw, DEFAULT_IDLE_S)
        return DEFAULT_IDLE_S
    return value if value > 0 else DEFAULT_IDLE_S


@dataclass
class _Session:
    last_seen: float
    folders: list[Path] = field(default_factory=list)
    jobs: list[Any] = field(default_factory=list)  # gatelens.dashboards.jobs.Job


class Ledger:
    """What each session owns and when it was last seen; :meth:`reap` ends the sessions gone idle.

    Thread-safe: the script threads of many sessions and the reaper thread call it at once.

    Examples
    --------
    >>> import tempfile
    >>> ledger = Ledger(idle_s=60)
    >>> upload = Path(tempfile.mkdtemp())                  # a session's temporary folder
    >>> ledger.touch("s1", now=0.0), ledger.sessions()
    (True, ['s1'])
    >>> ledger.own_folder("s1", upload, now=0.0)
    >>> ledger.reap(now=30.0), ledger.reap(now=61.0), upload.exists()   # unseen for more than 60 s: ended
    ([], ['s1'], False)
    >>> ledger.touch("s1", now=62.0)                      # it comes back: its files are gone, start afresh
    False
    """

    def __init__(self, idle_s: float | None = None) -> None:
        self.idle_s = float(idle_s) if idle_s is not None else idle_seconds()
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._ended: set[str] = set()

    def _get(self, session_id: str, now: float | None) -> _Session:
        s = self._sessions.get(session_id)
        if s is None:
            s = self._sessions[session_id] = _Session(last_seen=time.monotonic() if now is None else now)
        return s

    def touch(self, session_id: str, *, now: float | None = None) -> bool:
        """Mark the session as seen now; False when it had already ended (its files are gone: start afresh)."""
        with self._lock:
            self._get(session_id, now).last_seen = time.monotonic() if now is None else now
            return session_id not in self._ended

    def forget_end(self, session_id: str) -> None:
        """The session started afresh after it had ended (see :meth:`touch`)."""
        with self._lock:
            self._ended.discard(session_id)

    def own_folder(self, session_id: str, folder: str | os.PathLike, *, now: float | None = None) -> None:
        """Remove ``folder`` when the session ends."""
        with self._lock:
            s = self._get(session_id, now)
            p = Path(folder)
            if p not in s.folders:
                s.folders.append(p)

    def own_job(self, session_id: str, job: Any, *, now: float | None = None) -> None:
        """The session uses ``job``: cancel it when no live session uses it any more."""
        with self._lock:
            s = self._get(session_id, now)
            if not any(j is job for j in s.jobs):
                s.jobs.append(job)

    def sessions(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def owns(self, session_id: str) -> tuple[list[Path], list[Any]]:
        """The folders and jobs of a live session (copies)."""
        with self._lock:
            s = self._sessions.get(session_id)
            return ([], []) if s is None else (list(s.folders), list(s.jobs))

    def reap(self, *, now: float | None = None, active: Iterable[str] = ()) -> list[str]:
        """End every session not seen for :attr:`idle_s` seconds; ``active`` sessions (connected) are seen now.

        Returns the ids of the sessions ended. Their folders are removed and the jobs no live session holds
        are cancelled, outside the lock.
        """
        now = time.monotonic() if now is None else now
        active = set(active)
        with self._lock:
            for sid in active & set(self._sessions):
                self._sessions[sid].last_seen = now
            ended = [sid for sid, s in self._sessions.items() if now - s.last_seen > self.idle_s]
            gone = [self._sessions.pop(sid) for sid in ended]
            self._ended.update(ended)
            held = {id(j) for s in self._sessions.values() for j in s.jobs}
            jobs = {id(j): j for s in gone for j in s.jobs if id(j) not in held}
            folders = [f for s in gone for f in s.folders]
        for job in jobs.values():
            job.cancel()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        if folders:
            from gatelens.dashboards.exporting import forget

            forget(folders)  # their download links die with them
        if ended:
            log.info("ended %d idle session(s): %d folder(s) removed, %d job(s) cancelled", len(ended),
                     len(folders), len(jobs))  # fmt: skip
        return ended


# ----------------------------------------------------------------------------------------------------------------
# the server's ledger and its reaper thread


_ledger: Ledger | None = None
_reaper: threading.Thread | None = None
_start_lock = threading.Lock()


def _active_sessions() -> set[str]:
    """Ids of the sessions whose browser is connected now (empty without a Streamlit runtime, e.g. AppTest)."""
    return connected_sessions(ledger().sessions())


def reap_interval(idle_s: float) -> float:
    """How often the reaper looks: a quarter of the timeout, between 0.25 and 30 seconds.

    Examples
    --------
    >>> reap_interval(600), reap_interval(2), reap_interval(0.1)
    (30.0, 0.5, 0.25)
    """
    return float(min(30.0, max(0.25, idle_s / 4)))


def _reap_forever(stop: Callable[[], bool]) -> None:
    while not stop():
        led = ledger()
        time.sleep(reap_interval(led.idle_s))
        try:
            led.reap(active=_active_sessions())
        except Exception:  # the reaper must outlive any one failure
            log.warning("session reaper failed once", exc_info=True)


def ledger() -> Ledger:
    """The server's ledger; starts the reaper thread on first use."""
    global _ledger, _reaper
    with _start_lock:
        if _ledger is None:
            _ledger = Ledger()
        if _reaper is None or not _reaper.is_alive():
            _reaper = threading.Thread(
                target=_reap_forever, args=(lambda: False,), name="gatelens-session-reaper", daemon=True
            )
            _reaper.start()
        return _ledger


def current_session_id() -> str | None:
    """The id of the Streamlit session whose script runs on this thread (None outside a script run)."""
    return script_session_id()


def heartbeat() -> bool:
    """The current session was seen (every page calls it); False when it had ended (start afresh)."""
    sid = current_session_id()
    if sid is None:
        return True
    led = ledger()
    alive = led.touch(sid)
    if not alive:
        led.forget_end(sid)
    return alive


def keep_alive() -> None:
    """The app's heartbeat (every page): a session that comes back after it ended starts afresh, with a note."""
    if heartbeat():
        return
    import streamlit as st

    for key in [k for k in st.session_state if str(k).startswith(("gatelens_", "_gatelens_"))]:
        del st.session_state[key]
    st.info(
        "This session was idle for more than the server's timeout, so its uploads and results were removed. "
        "Pick the model and data again on the **Model** and **Data** pages.",
        icon=":material/schedule:",
    )


def release_run(result: Any) -> None:
    """Remove the temporary folder of a run (a cancelled job's result, see :attr:`Job.on_discard`)."""
    tmp = getattr(result, "_tmp", None)
    if tmp is not None and hasattr(tmp, "cleanup"):
        tmp.cleanup()


def own_live(lv: Any) -> Any:
    """The current session uses a staged run (:class:`gatelens.dashboards.stages.Live`): its extraction + analysis
    job and its feature job, cancelled when no live session uses them; the run's folder goes with the first.
    Returns ``lv``."""
    base = lv.base
    if base.job.on_discard is None:
        base.job.on_discard = lambda _result, base=base: release_run(base.run)  # extracted, even if stopped later
    own_job(base.job)
    own_job(lv.feats.job)
    return lv


def own_folder(folder: str | os.PathLike) -> None:
    """Remove ``folder`` when the current session ends."""
    sid = current_session_id()
    if sid is not None:
        ledger().own_folder(sid, folder)


def own_job(job: Any) -> Any:
    """The current session uses ``job`` (cancelled when no live session uses it); returns ``job``."""
    sid = current_session_id()
    if sid is not None:
        ledger().own_job(sid, job)
    return job


__all__ = [
    "DEFAULT_IDLE_S",
    "IDLE_ENV",
    "Ledger",
    "current_session_id",
    "heartbeat",
    "idle_seconds",
    "keep_alive",
    "ledger",
    "own_folder",
    "own_job",
    "own_live",
    "release_run",
]


# ----------------------------------------------------------------------------------------------------------------
# diagnosing a server that hangs

#: The signal that makes a running dashboard server write every thread's Python stack to its stderr.
STACK_DUMP_SIGNAL = "SIGUSR1"
_stack_dump_installed = False


def install_stack_dump() -> bool:
    """``kill -USR1 <server pid>`` writes the Python stack of every thread of the server to its stderr.

    For a page that never shows: the stacks say which thread waits for what. Installed once per process
    (:mod:`faulthandler`, which works from the script thread; nothing else is changed); returns whether this
    call installed it (False on a platform without the signal, or when it already was).

    Examples
    --------
    >>> _ = install_stack_dump()
    >>> install_stack_dump()  # once per process
    False
    """
    global _stack_dump_installed
    import faulthandler
    import signal
    import sys

    sig = getattr(signal, STACK_DUMP_SIGNAL, None)
    with _start_lock:
        if _stack_dump_installed or sig is None:
            return False
        faulthandler.register(sig, file=sys.stderr, all_threads=True, chain=False)
        _stack_dump_installed = True
        return True
