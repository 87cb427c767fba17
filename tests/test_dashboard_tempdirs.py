"""Temporary runs of a killed dashboard server are removed by the next one; nothing else is touched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gatelens.dashboards.tempdirs import MARKER, owned_tempdir, sweep_orphans


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_marked_folders_of_dead_owners(tmp_path):
    dead = tmp_path / "gatelens-run-dead"
    dead.mkdir()
    (dead / MARKER).write_text(json.dumps({"pid": _dead_pid(), "start": 1}))
    (dead / "run").mkdir()
    alive = tmp_path / "gatelens-run-alive"
    alive.mkdir()
    (alive / MARKER).write_text(json.dumps({"pid": os.getpid(), "start": None}))
    recycled = tmp_path / "gatelens-session-recycled"  # our pid, but another process's start time
    recycled.mkdir()
    (recycled / MARKER).write_text(json.dumps({"pid": os.getpid(), "start": -1}))
    unmarked = tmp_path / "gatelens-run-users-own"  # no marker: never ours to delete
    unmarked.mkdir()
    (unmarked / "keep.txt").write_text("mine")
    other = tmp_path / "unrelated"
    other.mkdir()
    (other / MARKER).write_text(json.dumps({"pid": _dead_pid()}))
    removed = sweep_orphans(tmp_path)
    assert sorted(p.name for p in removed) == ["gatelens-run-dead", "gatelens-session-recycled"]
    assert alive.is_dir() and (unmarked / "keep.txt").read_text() == "mine" and other.is_dir()


def test_owned_tempdir_marks_this_process(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    d = owned_tempdir("gatelens-run-")
    try:
        assert sweep_orphans(tmp_path) == []  # we are alive
    finally:
        d.cleanup()
    with pytest.raises(ValueError):
        owned_tempdir("something-else-")


@pytest.mark.slow
def test_a_new_server_removes_the_runs_of_a_killed_one(tmp_path):
    """A real server analyses the demo (a gatelens-run-* folder appears), is SIGKILLed, and the next removes it."""
    from e2e_helpers import StreamlitServer, build_tiny_demos, goto, launch_browser, require_chromium
    from playwright.sync_api import sync_playwright

    require_chromium()  # a skip outside CI only; in CI a missing Chromium fails

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    demos = tmp_path / "demos"
    demos.mkdir()
    build_tiny_demos(demos)
    env = {"TMPDIR": str(tmpdir), "GATELENS_DEMO_DIR": str(demos)}
    server = StreamlitServer(log_path=tmp_path / "a.log", env=env)
    with server, sync_playwright() as pw:
        browser = launch_browser(pw)
        page = browser.new_page()
        goto(page, server.url, "units")
        browser.close()
        runs = [p for p in tmpdir.iterdir() if p.name.startswith("gatelens-run-")]
        assert runs, sorted(p.name for p in tmpdir.iterdir())
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=30)
    assert all(r.is_dir() for r in runs)  # a killed server cannot clean up
    (tmpdir / "gatelens-run-users-own").mkdir()
    with StreamlitServer(log_path=tmp_path / "b.log", env=env) as again, sync_playwright() as pw:
        browser = launch_browser(pw)
        goto(browser.new_page(), again.url, "")
        browser.close()
        deadline = time.monotonic() + 30
        while any(r.exists() for r in runs) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not any(r.exists() for r in runs)
    assert (tmpdir / "gatelens-run-users-own").is_dir()
