"""The quiet TensorFlow import (gatelens.models._quiet): Ctrl-C that native start-up code turns into an ImportError
is still Ctrl-C, and a real failure still shows what was logged. Run in a fresh interpreter with a finder that
stands in for TensorFlow's native initialisation (the real one cannot be interrupted on cue)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gatelens.models._quiet import _noting_sigint

ROOT = Path(__file__).resolve().parent.parent

# ``import keras`` runs find_spec below: it writes to fd 2 as native start-up code does, optionally takes a SIGINT
# and swallows it (as C++ initialisation can), then fails the way TensorFlow's pybind modules do
CHILD = """
import os, signal, sys
class Native:
    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        os.write(2, b"I0000 native start-up log line\\n")
        if INTERRUPT:
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                pass
        raise ImportError("initialization failed")
sys.meta_path.insert(0, Native())
from gatelens.models._quiet import import_tensorflow_quietly
try:
    import_tensorflow_quietly()
except KeyboardInterrupt:
    print("KeyboardInterrupt")
except ImportError as e:
    print("ImportError", e)
print("handler restored", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


def _child(interrupt: bool) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = f"INTERRUPT = {interrupt}\n" + CHILD
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_ctrl_c_inside_native_start_up_is_keyboard_interrupt_and_nothing_is_replayed():
    out = _child(interrupt=True)
    assert out.stdout.splitlines() == ["KeyboardInterrupt", "handler restored True"], out
    assert out.stderr == ""


def test_a_failed_import_still_shows_what_it_logged():
    out = _child(interrupt=False)
    assert out.stdout.splitlines() == ["ImportError initialization failed", "handler restored True"], out
    assert out.stderr == "I0000 native start-up log line\n"


def test_noting_sigint_records_and_restores():
    with _noting_sigint() as seen:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert seen == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
