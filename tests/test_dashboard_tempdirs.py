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


#: Pages of the app, by their sidebar title.
PAGE_TITLES = ["Model", "Data", "Gates over the input", "Units", "Features", "Memory", "Unit explained", "What if",
               "Search", "Export"]  # fmt: skip
IDLE_S = 3  # GATELENS_SESSION_IDLE_S in the test: a closed browser's session ends within seconds
N_SEQUENCES, N_STEPS, N_UNITS = 5_000, 20, 6


def _ours(tmpdir, *prefixes: str) -> list:
    return sorted(p for p in tmpdir.iterdir() if p.name.startswith(prefixes))


@pytest.mark.slow
def test_a_server_holds_up_sessions_end_and_a_new_server_removes_a_killed_ones_runs(tmp_path):
    """``gatelens dashboard``'s app (asgi.py, with the download route), 5,000 uploaded sequences, every page visited:
    the Streamlit process's peak RSS stays under 1.5 GB (/proc/PID/status VmHWM) and the activations download
    streams the file written to disk; closing the browser removes the session's folders and its run within the
    idle timeout; a run of a server that is SIGKILLed is removed by the next server, a folder it did not create
    stays."""
    import urllib.request

    import keras
    import numpy as np
    from e2e_helpers import (
        REPO,
        StreamlitServer,
        build_tiny_demos,
        goto,
        launch_browser,
        nav,
        require_chromium,
        rss_bytes,
        wait_idle,
    )
    from playwright.sync_api import sync_playwright

    require_chromium()  # a skip outside CI only; in CI a missing Chromium fails

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    demos = tmp_path / "demos"
    demos.mkdir()
    build_tiny_demos(demos)
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [keras.Input((N_STEPS, 3)), keras.layers.LSTM(N_UNITS, return_sequences=True, name="lstm"),
         keras.layers.Dense(1)], name="memory_e2e")  # fmt: skip
    model_path = tmp_path / "model.keras"
    model.save(model_path)
    data_path = tmp_path / "x.npy"
    np.save(data_path, np.random.default_rng(5).normal(size=(N_SEQUENCES, N_STEPS, 3)).astype(np.float32))

    def upload(page, path):
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').nth(0).set_input_files(str(path))
        page.wait_for_timeout(500)
        wait_idle(page, 600_000)

    def no_exception(page):
        exc = page.locator('[data-testid="stException"]')
        assert exc.count() == 0, exc.first.inner_text()

    env = {"TMPDIR": str(tmpdir), "GATELENS_DEMO_DIR": str(demos), "GATELENS_SESSION_IDLE_S": str(IDLE_S)}
    server = StreamlitServer(log_path=tmp_path / "a.log", env=env, script=REPO / "dashboards" / "asgi.py")
    with server, sync_playwright() as pw:
        browser = launch_browser(pw)
        context = browser.new_context(accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(600_000)
        goto(page, server.url, "")
        page.get_by_test_id("stRadioGroup").get_by_text("Upload my own").click()
        wait_idle(page)
        upload(page, model_path)
        page.get_by_text("Verification needs input").wait_for()
        nav(page, "Data")
        upload(page, data_path)  # every sequence is analysed (no slice asked for)
        page.get_by_text("Sequences analysed").wait_for()
        assert page.locator('[data-testid="stMetricValue"]').first.inner_text().strip() == f"{N_SEQUENCES:,}"
        for title in PAGE_TITLES:
            nav(page, title, 600_000)
            no_exception(page)
        # Export: the activations, written to the session's folder on demand, streamed by the download route
        page.get_by_role("button", name="Write activations.csv").click()
        link = page.locator('[data-testid="stLinkButton"] a').filter(has_text="activations.csv")
        link.wait_for(timeout=600_000)
        href = link.get_attribute("href")
        assert href.startswith("/gatelens/download/")
        (written,) = [p for p in tmpdir.rglob("activations.csv")]
        assert written.is_relative_to(_ours(tmpdir, "gatelens-session-")[0])
        with urllib.request.urlopen(server.url + href, timeout=120) as r, open(tmp_path / "dl.csv", "wb") as f:
            while block := r.read(1 << 20):
                f.write(block)
        assert (tmp_path / "dl.csv").read_bytes() == written.read_bytes()
        with open(written, "rb") as f:
            assert sum(1 for _ in f) == 1 + N_SEQUENCES * N_STEPS * N_UNITS  # header + one row per unit and step
        peak = rss_bytes(server.proc.pid, "VmHWM")
        assert peak < 1.5e9, f"the server's peak RSS was {peak / 1e9:.2f} GB"
        print(f"server peak RSS {peak / 1e6:.0f} MB, now {rss_bytes(server.proc.pid) / 1e6:.0f} MB")

        session = _ours(tmpdir, "gatelens-session-", "gatelens-run-")
        assert len(session) >= 2, session  # the session's uploads + exports, and its run
        context.close()  # the browser leaves: the session ends within the idle timeout
        deadline = time.monotonic() + IDLE_S + 60
        while any(p.exists() for p in session) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not any(p.exists() for p in session), [p.name for p in session if p.exists()]
        with urllib.request.urlopen(server.url + "/_stcore/health", timeout=10) as r:
            assert r.status == 200  # the server itself stays up
        try:
            urllib.request.urlopen(server.url + href, timeout=10)
            raise AssertionError("the download outlived its session")
        except urllib.error.HTTPError as e:
            assert e.code == 404

        # a new session analyses the demo; the server is SIGKILLed while the browser is still connected
        page = browser.new_page()
        goto(page, server.url, "units")
        runs = _ours(tmpdir, "gatelens-run-")
        assert runs, sorted(p.name for p in tmpdir.iterdir())
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=30)
        browser.close()
    assert all(r.is_dir() for r in runs)  # a killed server cannot clean up
    (tmpdir / "gatelens-run-users-own").mkdir()
    with StreamlitServer(log_path=tmp_path / "b.log", env=env) as again, sync_playwright() as pw:
        browser = launch_browser(pw)
        goto(browser.new_page(), again.url, "")
        browser.close()
        # kill -USR1: the server writes every thread's stack to its log and stays up (a hung page, diagnosed)
        os.kill(again.proc.pid, signal.SIGUSR1)
        # faulthandler writes one thread after another: wait for the whole dump, not for its first header
        deadline = time.monotonic() + 30

        def dumped(log: str) -> bool:
            return log.count("Thread 0x") >= 2 and "threading.py" in log

        while not dumped(dump := again.log_tail(1 << 20)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert dumped(dump), dump[-3000:]
        with urllib.request.urlopen(again.url + "/_stcore/health", timeout=10) as r:
            assert r.status == 200
        deadline = time.monotonic() + 30
        while any(r.exists() for r in runs) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not any(r.exists() for r in runs)
    assert (tmpdir / "gatelens-run-users-own").is_dir()
