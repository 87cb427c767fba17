"""argparse pieces the ``gatelens`` commands share: bounded ``type=`` functions and the model/data options.

One factory, :func:`checked`, builds the types, so every option of every subcommand rejects a bad value
with the same one-line message (``expected a positive integer, got '0'``) and exit 2. :func:`add_input_options`
declares the model, data and windowing options once for every subcommand that runs a model over data.

Examples
--------
>>> import argparse
>>> rate = checked(float, lambda v: 0.0 <= v < 1.0, "a rate in [0, 1)")
>>> rate("0.25")
0.25
>>> try:
...     rate("1.5")
... except argparse.ArgumentTypeError as e:
...     print(e)
expected a rate in [0, 1), got '1.5'
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


def checked(
    convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str, unparsable: str | None = None
) -> Callable[[str], Any]:
    """An argparse type: ``convert(text)``, accepted when ``ok(value)``.

    Parameters
    ----------
    convert : callable
        ``int``, ``float``...; a ``ValueError`` from it means the text is not such a value.
    ok : callable
        The bound the value must meet.
    expected : str
        What was expected, as in ``expected {expected}, got '...'`` (for a value out of bounds).
    unparsable : str, optional
        The same for a text ``convert`` cannot read (default ``expected``).

    Returns
    -------
    callable
        ``str -> value``, raising :class:`argparse.ArgumentTypeError` with that one-line message.

    Examples
    --------
    >>> count = checked(int, lambda v: v >= 1, "a number >= 1", "a whole number")
    >>> count("3")
    3
    >>> count("x")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: expected a whole number, got 'x'
    """

    def parse(text: str) -> Any:
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {unparsable or expected}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return v

    return parse


#: The largest ``--batch-size``: memory grows with it (every signal of a batch is held), and more sequences than this
#: per forward pass bring nothing but memory.
MAX_BATCH_SIZE = 1 << 16
batch_size = checked(
    int, lambda v: 1 <= v <= MAX_BATCH_SIZE, f"a whole number from 1 to {MAX_BATCH_SIZE}", "a whole number"
)
#: The most processes ``--workers`` starts on this machine: each is a Python interpreter with its own model and
#: buffers, and more than this many on one machine only contend (a mistyped 100000 started processes for minutes).
MAX_WORKERS = 256
workers = checked(int, lambda v: 1 <= v <= MAX_WORKERS, f"a whole number from 1 to {MAX_WORKERS}", "a whole number")


def scheduler_address(text: str) -> str:
    """An argparse type for ``--scheduler``: a Dask scheduler address ``[PROTOCOL://]HOST:PORT`` (port 1..65535).

    Examples
    --------
    >>> scheduler_address("tcp://10.0.0.5:8786"), scheduler_address("localhost:8786")
    ('tcp://10.0.0.5:8786', 'localhost:8786')
    >>> scheduler_address("nonsense")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: expected a scheduler address [PROTOCOL://]HOST:PORT such as tcp://host:8786, got 'nonsense'
    """
    import re

    m = re.fullmatch(
        r"(?:(?P<proto>[a-z][a-z0-9+.-]*)://)?(?P<host>\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(?P<port>\d{1,5})", text
    )
    if m is None or not 1 <= int(m["port"]) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected a scheduler address [PROTOCOL://]HOST:PORT such as tcp://host:8786, got {text!r}"
        )
    return text


#: The most sequences per batch the sampled check re-runs (``gatelens.models.extract.MAX_SAMPLE_SIZE``, which
#: ``tests/test_cli_errors.py`` compares: this module does not import the extractor, nor TensorFlow).
MAX_SAMPLE_SIZE = 4096
sample_size = checked(
    int, lambda v: 1 <= v <= MAX_SAMPLE_SIZE, f"a whole number from 1 to {MAX_SAMPLE_SIZE}", "a whole number"
)
#: A TCP port.
port = checked(int, lambda v: 1 <= v <= 65535, "a port from 1 to 65535", "a whole number")
#: A seed for NumPy's generators.
seed = checked(int, lambda v: v >= 0, "a whole number >= 0", "a whole number")
#: The most bootstrap resamples (memory grows with them, and the time with them times the sequences).
MAX_BOOTSTRAP = 100_000
bootstrap = checked(
    int, lambda v: 1 <= v <= MAX_BOOTSTRAP, f"a whole number from 1 to {MAX_BOOTSTRAP}", "a whole number"
)
#: A finite tolerance >= 0 (a negative or NaN one would fail every check, reported as a failed verification).
tolerance = checked(float, lambda v: math.isfinite(v) and v >= 0.0, "a finite number >= 0", "a number")


def add_input_options(sp: argparse.ArgumentParser) -> None:
    """The model file, the data and how the data is read (tokens, windows, columns), for one subcommand.

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> add_input_options(p)
    >>> a = p.parse_args(["m.keras", "x.csv", "--columns", "a", "b", "--window", "8"])
    >>> a.model, a.columns, a.window, a.batch_size
    ('m.keras', ['a', 'b'], 8, 256)
    """
    sp.add_argument("model", help="a .keras (or legacy .h5) model file")
    sp.add_argument("data", help="input data: .npy, .npz (key x), .csv or .txt")
    sp.add_argument(
        "--batch-size",
        type=batch_size,
        default=256,
        help=f"rows per forward pass (bounds memory; at most {MAX_BATCH_SIZE})",
    )
    sp.add_argument("--vocab", help="JSON list of tokens in id order (text models without a vocabulary)")
    sp.add_argument("--level", choices=["char", "word"], default=None, help="text tokenisation (default char)")
    sp.add_argument("--window", type=int, help="steps per sequence for long series/text (default: model length)")
    sp.add_argument(
        "--stride",
        type=int,
        help="steps between window starts (default: the window, non-overlapping; a forecaster wants --stride 1)",
    )
    sp.add_argument("--time-column", help="the CSV's date/time column, kept per step (default: detected)")
    sp.add_argument("--columns", nargs="+", help="CSV columns to use as input features, in order")
    sp.add_argument("--max-sequences", type=int, help="use only the first N sequences (windows)")
