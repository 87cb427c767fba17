"""Import TensorFlow without its C++ start-up chatter on stderr.

TensorFlow 2.21 writes absl log lines at import and at device initialisation ("oneDNN custom
operations are on", "Could not find cuda drivers", "failed call to cuInit") that no environment
variable silences. The CLI promises one plain line on stderr for a user's mistake, so the import
runs with file descriptor 2 pointed at a temporary file; if the import fails, what was written
there is passed on (not when the import is interrupted: Ctrl-C leaves ``gatelens: interrupted`` alone).

Ctrl-C that lands inside TensorFlow's native initialisation can surface as an ``ImportError``
("initialization failed") rather than as ``KeyboardInterrupt``; a SIGINT seen during the import
therefore makes any failure of it a ``KeyboardInterrupt``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def _noting_sigint() -> Iterator[list[int]]:
    """Note each SIGINT in the yielded list while Python's default Ctrl-C handler is in place (main thread only)."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield seen
        return

    def note(signum: int, frame: object) -> None:
        seen.append(signum)
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, note)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def import_tensorflow_quietly() -> None:
    """Import tensorflow and keras (once), keeping their native start-up logs off stderr."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): import as usual
        import keras
        import tensorflow  # noqa: F401

        return
    with tempfile.TemporaryFile() as sink, _noting_sigint() as sigints:
        os.dup2(sink.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # device initialisation logs here, once
        except (KeyboardInterrupt, SystemExit):  # stopped by the user, not failed: nothing of TensorFlow's to show
            raise
        except BaseException as e:
            if sigints:  # interrupted in native code, reported as some other failure
                raise KeyboardInterrupt from e
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
