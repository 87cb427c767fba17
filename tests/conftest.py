"""Shared test set-up: quiet TensorFlow, one BLAS thread (NumPy beside TF), artifacts folder.

Under ``GATELENS_TF_FREE_BATCH=1`` (tests/run_each.py's one process for its ``TF_FREE`` files) the session fails
if TensorFlow or Keras was imported in it, naming the first module or test after which it was.
"""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_NUM_THREADS", "1")

_TF_FREE_BATCH = os.environ.get("GATELENS_TF_FREE_BATCH") == "1"
_first_tf_import: list[str] = []  # the node id (module or test) after which TensorFlow was first seen


def _note_tf(nodeid: str) -> None:
    if _TF_FREE_BATCH and not _first_tf_import and ("tensorflow" in sys.modules or "keras" in sys.modules):
        _first_tf_import.append(nodeid)


def pytest_collectreport(report) -> None:
    _note_tf(report.nodeid or "collection")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    yield
    _note_tf(item.nodeid)


def pytest_sessionfinish(session, exitstatus) -> None:
    _note_tf("the end of the session")
    if _first_tf_import:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = (
            f"TensorFlow was imported in the TF-free batch of tests/run_each.py (first seen after "
            f"{_first_tf_import[0]}): remove that file from TF_FREE there, or keep TensorFlow out of it"
        )
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(msg, red=True)
        else:  # pragma: no cover - pytest always has one unless -p no:terminal
            sys.stderr.write(msg + "\n")
