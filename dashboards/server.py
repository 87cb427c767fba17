"""Run the Streamlit server for ``gatelens dashboard`` as a child that never outlives its parent.

``gatelens dashboard`` starts ``python -m streamlit run dashboards/asgi.py`` (``app.py``'s pages, served through
``st.App`` with the Export page's streaming download route) with the server options below
passed as flags (so an installed wheel, which has no ``.streamlit/config.toml`` beside the user's working
folder, serves with the same settings as ``make run``), forwards SIGTERM, SIGINT and SIGHUP to it and waits
for it: stopping the command stops the server, with no orphan left behind (``make run`` stops on Ctrl-C).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

APP = Path(__file__).resolve().parent / "app.py"
#: What ``streamlit run`` serves: ``app.py``'s pages through ``st.App``, with the Export page's streaming route.
ASGI_APP = Path(__file__).resolve().parent / "asgi.py"

#: Server options (the same as the repository's .streamlit/config.toml, which `streamlit run` reads there).
STREAMLIT_OPTIONS: dict[str, str] = {
    "server.headless": "true",
    "server.maxUploadSize": "100",
    "server.maxMessageSize": "200",
    "server.runOnSave": "false",
    "server.fileWatcherType": "none",
    "browser.gatherUsageStats": "false",
    "client.toolbarMode": "minimal",
    "theme.primaryColor": "#2166ac",
}
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Seconds the child has to exit after a forwarded signal before it is killed.
STOP_TIMEOUT_S = 10.0


def streamlit_command(port: int, address: str | None = None) -> list[str]:
    """The ``streamlit run`` command line for the dashboard.

    Examples
    --------
    >>> cmd = streamlit_command(8502)
    >>> cmd[1:4], cmd[cmd.index("--server.port") + 1]
    (['-m', 'streamlit', 'run'], '8502')
    """
    cmd = [sys.executable, "-m", "streamlit", "run", str(ASGI_APP), "--server.port", str(port)]
    for key, value in STREAMLIT_OPTIONS.items():
        cmd += [f"--{key}", value]
    if address:
        cmd += ["--server.address", address]
    return cmd


def serve(port: int, address: str | None = None) -> int:
    """Serve the dashboard until the server exits or this process is told to stop; returns the exit code."""
    proc = subprocess.Popen(streamlit_command(port, address))
    previous = {}
    forwarded: list[int] = []

    def forward(signum: int, _frame) -> None:
        forwarded.append(signum)
        if proc.poll() is None:
            log.info("forwarding %s to the Streamlit server (pid %d)", signal.Signals(signum).name, proc.pid)
            proc.send_signal(signum)

    for sig in FORWARDED:
        previous[sig] = signal.signal(sig, forward)
    try:
        while True:
            try:
                code = proc.wait()
                # stopped by a forwarded signal: the shell's 128 + N (the ASGI server exits with -N & 0xff)
                if forwarded and code in (-forwarded[-1], 256 - forwarded[-1], 128 + forwarded[-1]):
                    return 128 + forwarded[-1]
                return code
            except KeyboardInterrupt:  # a second Ctrl-C while waiting: keep waiting for the child
                continue
    finally:
        if proc.poll() is None:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["APP", "ASGI_APP", "STREAMLIT_OPTIONS", "serve", "streamlit_command"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve(int(os.environ.get("PORT", "8501"))))
