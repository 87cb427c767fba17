"""argparse ``type=`` functions for the ``gatelens`` commands: parse, check a bound, or say what was expected.

One factory, :func:`checked`, builds them all, so every option of every subcommand rejects a bad value
with the same one-line message (``expected a positive integer, got '0'``) and exit 2.

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
