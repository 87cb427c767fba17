"""Cold start of ``gatelens extract``: the safe loader imports TensorFlow while its isolated worker reads the
weights (a real worker process on a real .keras file), and the worker's limits and timing still hold."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from gatelens._examples import tiny_model_path
from gatelens.models.safety import LoadLimits
from gatelens.models.worker import run_worker


def _alive_with(arg: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line holds ``arg``."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if arg.encode() in cmd and state != "Z":
            pids.append(int(d.name))
    return pids


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model_path(tmp_path_factory.mktemp("cold"))


def test_the_worker_runs_while_the_loader_waits(model_path, tmp_path):
    """while_waiting runs once the worker has started: the worker's result appears during it; the reported
    seconds are the worker's own (its start to the finish it records), not the time spent in while_waiting.
    Checked by the order of the timestamps (the worker's ``finished_monotonic`` is CLOCK_MONOTONIC, the same clock
    as the test's), not by how long anything took."""
    work = tmp_path / "work"
    work.mkdir()
    seen = {}

    def meanwhile():
        t0 = time.monotonic()
        while not (work / "result.json").exists() and time.monotonic() - t0 < 600:
            time.sleep(0.005)
        seen["result_at"] = time.monotonic()
        seen["finished_meanwhile"] = (work / "result.json").exists()
        time.sleep(0.5)  # still busy here after the worker finished

    called = time.monotonic()
    res = run_worker("keras_weights", model_path, work, "tiny.keras", LoadLimits(), while_waiting=meanwhile)
    returned = time.monotonic()
    assert res.ok, res.message
    assert res.weights_path is not None and res.weights_path.is_file()
    assert seen["finished_meanwhile"], "the worker should have finished while while_waiting ran"
    finished = json.loads((work / "result.json").read_text())["finished_monotonic"]
    assert called < finished <= seen["result_at"] < returned, (called, finished, seen, returned)
    # counted to the worker's own finish: the half second while_waiting went on after it is not in it
    assert 0 < res.seconds <= finished - called, (res.seconds, finished - called)


def test_a_failing_while_waiting_stops_the_worker(model_path, tmp_path):
    work = tmp_path / "work"
    work.mkdir()

    def meanwhile():
        t0 = time.monotonic()  # (its command line shows in /proc a moment after exec)
        while not _alive_with(str(work / "job.json")) and time.monotonic() - t0 < 5:
            time.sleep(0.005)
        assert _alive_with(str(work / "job.json")), "the worker should be running"
        raise KeyboardInterrupt  # e.g. Ctrl-C during the TensorFlow import

    with pytest.raises(KeyboardInterrupt):
        run_worker("keras_weights", model_path, work, "tiny.keras", LoadLimits(), while_waiting=meanwhile)
    assert _alive_with(str(work / "job.json")) == []  # stopped and reaped, not left running
    assert not (work / "result.json").exists()


def test_the_time_limit_counts_from_the_workers_start(model_path, tmp_path):
    """A worker that finished past its time limit while the loader was busy is refused all the same (its own
    clock says when it finished); with a limit it kept, the same wait is fine."""

    def until_done(work):
        def wait():
            t0 = time.monotonic()
            while not (work / "result.json").exists() and time.monotonic() - t0 < 60:
                time.sleep(0.01)
            time.sleep(0.2)

        return wait

    for limit, ok in ((0.01, False), (30.0, True)):
        work = tmp_path / f"work{limit}"
        work.mkdir()
        limits = LoadLimits(worker_timeout_s=limit)
        res = run_worker("keras_weights", model_path, work, "tiny.keras", limits, while_waiting=until_done(work))
        assert (work / "result.json").exists()  # it did finish, and wrote its weights
        assert res.ok is ok, res.message
        if ok:
            assert os.path.getsize(res.weights_path) > 0
        else:
            assert res.error == "UnsafeModelError" and res.weights_path is None
            assert "tiny.keras: loading the model took longer than 0.01 s" in res.message, res.message
