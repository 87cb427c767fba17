"""Session lifetime and memory bounds of the dashboard server, without a browser (the browser test is in
tests/test_dashboard_tempdirs.py): the ledger ends idle sessions, removes their folders and cancels the work
no live session holds; a cancelled job stops at its next progress call and releases its run; the trace
memory budget admits copies only within its bytes."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from gatelens.dashboards import membudget, sessions
from gatelens.dashboards.jobs import Cancelled, Job
from gatelens.dashboards.tempdirs import owned_tempdir


def test_an_idle_session_loses_its_folders_and_its_unshared_work(tmp_path):
    ledger = sessions.Ledger(idle_s=10)
    mine, shared = tmp_path / "mine", tmp_path / "shared-run"
    for d in (mine, shared):
        d.mkdir()
        (d / "f.bin").write_bytes(b"x" * 100)
    gate = threading.Event()
    progressed = []

    def long_work(stage):
        progress = stage("working")
        for i in range(1000):
            gate.wait(0.01)
            progress(i, 1000)
            progressed.append(i)
        return "finished"

    own, both = Job.start(long_work), Job.start(lambda stage: "a shared run")
    assert both.wait(10)
    ledger.touch("a", now=0.0)
    ledger.own_folder("a", mine)
    ledger.own_job("a", own)
    ledger.own_job("a", both)
    ledger.own_job("b", both, now=0.0)
    assert ledger.reap(now=10.0) == []  # not idle yet (10 s is the limit, not past it)
    assert ledger.reap(now=15.0, active={"b"}) == ["a"]  # b's browser is connected: seen now
    assert not mine.exists()
    assert own.wait(10) and isinstance(own.error, Cancelled) and own.cancelled
    assert len(progressed) < 1000  # stopped at a progress call, long before the end
    assert not both.cancelled and both.result() == "a shared run"  # b still holds it
    assert ledger.touch("a", now=16.0) is False  # a comes back: told that its files are gone
    ledger.forget_end("a")
    assert ledger.touch("a", now=17.0) is True
    assert sorted(ledger.reap(now=40.0)) == ["a", "b"]
    assert both.cancelled
    with pytest.raises(Cancelled):
        both.result()
    assert shared.exists()  # a folder nobody registered is never touched


def test_a_cancelled_run_job_removes_its_temporary_folder():
    tmp = owned_tempdir("gatelens-run-")

    class Run:
        _tmp = tmp

    job = Job.start(lambda stage: Run())
    job.on_discard = sessions.release_run
    assert job.wait(10)
    folder = tmp.name
    import os

    assert os.path.isdir(folder)
    job.cancel()
    assert not os.path.isdir(folder)
    assert job.error is not None and job.error.__traceback__ is None  # nothing of the stopped work is kept


def test_a_job_cancelled_while_it_runs_releases_its_result_when_it_ends():
    release = []
    go = threading.Event()

    def work(stage):
        go.wait(10)
        return "result"  # finishes without another progress call

    job = Job.start(work)
    job.on_discard = release.append
    job.cancel()
    go.set()
    assert job.wait(10)
    assert release == ["result"] and isinstance(job.error, Cancelled)


def test_idle_timeout_from_the_environment(monkeypatch):
    monkeypatch.setenv(sessions.IDLE_ENV, "0.5")
    assert sessions.Ledger().idle_s == 0.5
    monkeypatch.setenv(sessions.IDLE_ENV, "-3")
    assert sessions.idle_seconds() == sessions.DEFAULT_IDLE_S


def test_trace_memory_budget_counts_bytes_of_live_copies():
    b = membudget.Budget(limit=1000)

    class Copy:
        def __init__(self, n):
            self.a = np.zeros(n, np.uint8)

    first = b.hold(Copy(600), 600)
    assert first is not None and b.used == 600
    assert b.hold(Copy(600), 600) is None and b.used == 600  # over the budget: not admitted, not counted
    second = b.hold(Copy(400), 400)
    assert second is not None and b.used == 1000
    del first
    gc.collect()
    assert b.used == 400  # the dropped copy's bytes are back


def test_maybe_in_memory_keeps_a_trace_on_disk_past_the_budget(monkeypatch):
    monkeypatch.setattr(membudget, "_budget", membudget.Budget(limit=100))
    copies = []

    class Trace:
        pass

    def copy(t):
        copies.append(Trace())
        return copies[-1]

    lazy = Trace()
    assert membudget.maybe_in_memory(lazy, 80, copy) is copies[0]
    assert membudget.maybe_in_memory(lazy, 80, copy) is lazy and len(copies) == 1  # no copy made past it
