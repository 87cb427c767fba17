"""``gatelens dashboard`` forwards SIGTERM/SIGINT to the Streamlit server and waits for it: no orphan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from e2e_helpers import free_port

from gatelens.dashboards.server import STREAMLIT_OPTIONS, streamlit_command

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"gatelens dashboard exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError("the dashboard did not become healthy")


def test_the_command_line_carries_the_server_settings():
    cmd = streamlit_command(8599, "127.0.0.1")
    for key, value in STREAMLIT_OPTIONS.items():
        assert cmd[cmd.index(f"--{key}") + 1] == value
    assert Path(cmd[4]).name == "asgi.py" and Path(cmd[4]).is_file()  # app.py served through st.App
    # the repository's config file says the same (streamlit run from the checkout reads it)
    config = (REPO / ".streamlit" / "config.toml").read_text()
    assert "maxUploadSize = 100" in config and STREAMLIT_OPTIONS["server.maxUploadSize"] == "100"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_gatelens_dashboard_stops_streamlit(tmp_path, sig):
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gatelens", "dashboard", "--port", str(port), "--address", "127.0.0.1"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    try:
        _wait_healthy(port, proc)
        children = _children(proc.pid)
        assert children, "gatelens dashboard runs Streamlit as its child"
        proc.send_signal(sig)
        assert proc.wait(timeout=30) in (0, -sig, 128 + sig, 1), (tmp_path / "server.log").read_text()[-2000:]
        deadline = time.monotonic() + 10
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(c) for c in children), f"Streamlit child {children} outlived gatelens dashboard"
    finally:
        if proc.poll() is None:
            proc.kill()
        for c in _children(proc.pid):
            os.kill(c, signal.SIGKILL)
        log.close()
