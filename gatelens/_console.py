"""The ``gatelens`` console script (and ``python -m gatelens``): process settings first, then the command line.

NumPy asks the kernel for transparent huge pages on every large array (``madvise(MADV_HUGEPAGE)``). Where the
kernel's THP ``defrag`` setting is ``madvise`` (a common default), a page fault in such a region may stall on a
synchronous compaction of memory (numpy/numpy#31590): on the 2-core machine of ``benchmarks/analysis.py`` that was
4-5 s of system time in a 23 s ``gatelens analyze``, and the first pass over a block of gate products took 3.9 s
instead of 1.8 s. The analysis allocates and frees large blocks all the time, so the console script turns that
request off -- through NumPy's documented ``NUMPY_MADVISE_HUGEPAGE`` variable, read once when NumPy is imported,
which is why this module sets it before anything imports NumPy. A value the user set is kept; child processes (the
dashboard's server, the model-loading worker) inherit it. Importing :mod:`gatelens` as a library changes nothing.

Arrow's default memory pool (mimalloc or jemalloc) asks for huge pages the same way: holding the 24 string columns
of a 400,000-row events block cost 1.7 s of system time there against 0.06 s in the system allocator's pool, so the
console script selects that pool (``ARROW_DEFAULT_MEMORY_POOL=system``, Arrow's documented variable, read when
pyarrow is imported).

Examples
--------
>>> PROCESS_ENV
{'NUMPY_MADVISE_HUGEPAGE': '0', 'ARROW_DEFAULT_MEMORY_POOL': 'system'}
"""

from __future__ import annotations

import os
import sys

__all__ = ["PROCESS_ENV", "configure_process", "interrupted", "main"]

#: Environment defaults of a gatelens process (the console script, the dashboard server it starts, Dask workers).
PROCESS_ENV = {"NUMPY_MADVISE_HUGEPAGE": "0", "ARROW_DEFAULT_MEMORY_POOL": "system"}


def configure_process() -> None:
    """Set :data:`PROCESS_ENV`'s variables the user has not set (effective only before NumPy and pyarrow are imported)."""
    for key, value in PROCESS_ENV.items():
        os.environ.setdefault(key, value)


def interrupted() -> int:
    """Report Ctrl-C in one line on stderr; return its exit code, 130.

    CPython (3.11) remembers a ``KeyboardInterrupt`` that passed through ``eval`` of a string -- as one does when
    it arrives in :func:`collections.namedtuple`, which TensorFlow's import calls -- even once it has been caught,
    and ``python -m gatelens`` then ends by SIGINT (status -2) instead of returning this exit code. Evaluating a
    string again clears that flag.
    """
    sys.stderr.write("gatelens: interrupted\n")
    eval("None")  # a constant: see above
    return 130


def main() -> int:
    """Entry point of the ``gatelens`` console script; returns the exit code."""
    configure_process()
    try:  # Ctrl-C while the command line's modules are imported (NumPy, pandas: about a second) is one line too
        from gatelens.cli.main import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        return interrupted()


if __name__ == "__main__":
    sys.exit(main())
