"""Limits on what gatelens reads from a data or features file, checked before anything is allocated.

A CSV is scanned once, in blocks, with array operations (newline and comma positions), before pandas or
``csv`` parse it: a line longer than :attr:`ReadLimits.max_line_bytes`, more columns than allowed, more rows
or more cells than allowed is refused with a :class:`~gatelens.errors.DataError` (exit code 2) that names the
file, the line and the limit (and the environment variable that raises it). A compressed ``.npz`` member may
not inflate beyond :attr:`ReadLimits.max_npz_ratio` times its compressed size (members above
:attr:`ReadLimits.npz_ratio_from_bytes`), which refuses a deflate bomb from its header alone.

The defaults leave room on a 24 GiB machine: pandas keeps a CSV cell as a Python string (~60 bytes), so
50 million cells take about 3 GiB.

Examples
--------
>>> lim = ReadLimits(max_columns=3)
>>> scan_csv(b"a,b,c\\n1,2,3\\n", "x.csv", lim)
(2, 3)
>>> scan_csv(b"a,b,c,d\\n", "x.csv", lim)
Traceback (most recent call last):
...
gatelens.errors.DataError: x.csv: line 1 has 4 columns, more than the limit of 3 (GATELENS_MAX_COLUMNS)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from gatelens.errors import DataError, UsageError

_BLOCK = 8 << 20

_ENV = {
    "max_line_bytes": "GATELENS_MAX_LINE_BYTES",
    "max_columns": "GATELENS_MAX_COLUMNS",
    "max_rows": "GATELENS_MAX_ROWS",
    "max_cells": "GATELENS_MAX_CELLS",
    "max_feature_columns": "GATELENS_MAX_FEATURE_COLUMNS",
    "max_npz_ratio": "GATELENS_MAX_NPZ_RATIO",
}


def env_number(
    var: str, *, kind: type = int, minimum: float = 1, environ: Mapping[str, str] | None = None
) -> int | float | None:
    """The number an environment variable sets (None when unset or empty), checked: a user error names the
    variable, what it holds and what was expected.

    Examples
    --------
    >>> env_number("GATELENS_X", environ={"GATELENS_X": "12"}), env_number("GATELENS_X", environ={})
    (12, None)
    >>> env_number("GATELENS_X", environ={"GATELENS_X": "0"})
    Traceback (most recent call last):
    ...
    gatelens.errors.UsageError: GATELENS_X must be a whole number >= 1, got '0'
    """
    raw = (os.environ if environ is None else environ).get(var)
    if raw is None or raw.strip() == "":
        return None
    what = f"{'a whole number' if kind is int else 'a number'} >= {minimum:g}"
    try:
        value = kind(raw)
    except ValueError:
        raise UsageError(f"{var} must be {what}, got {raw!r}") from None
    if not value >= minimum:  # also NaN
        raise UsageError(f"{var} must be {what}, got {raw!r}")
    return value


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on a data or features file (every one overridable by its environment variable, see ``_ENV``).

    Examples
    --------
    >>> lim = ReadLimits()
    >>> lim.max_columns, lim.max_feature_columns, lim.max_cells, lim.max_line_bytes == 16 << 20
    (100000, 2000, 50000000, True)
    >>> ReadLimits(max_rows=10).max_rows, ReadLimits(max_rows=10).max_columns       # one bound changed
    (10, 100000)
    """

    max_line_bytes: int = 16 << 20
    max_columns: int = 100_000
    max_rows: int = 50_000_000
    max_cells: int = 50_000_000
    #: a features CSV (``analyze --features``): each column is one more analysis pass
    max_feature_columns: int = 2_000
    max_npz_ratio: int = 100
    npz_ratio_from_bytes: int = 64 << 20

    @classmethod
    def from_env(cls) -> ReadLimits:
        """The defaults, with every limit whose environment variable is set (a positive integer) replaced.

        >>> import os
        >>> os.environ["GATELENS_MAX_COLUMNS"] = "7"; ReadLimits.from_env().max_columns
        7
        >>> del os.environ["GATELENS_MAX_COLUMNS"]
        """
        kw = {}
        for f in fields(cls):
            v = env_number(_ENV[f.name]) if f.name in _ENV else None
            if v is not None:
                kw[f.name] = v
        return cls(**kw)


def scan_csv(raw: bytes, where: str, limits: ReadLimits, *, max_columns: int | None = None) -> tuple[int, int]:
    """Check a CSV's line lengths, columns per line, rows and cells against ``limits``; return (lines, columns).

    Commas inside quoted cells are counted as separators, so the column count is an upper bound (a numeric
    series has no quoted commas). Runs in blocks of 8 MiB with array operations; memory stays a few times that.

    Examples
    --------
    >>> scan_csv(b"sequence,step,f\\n0,0,1", "f.csv", ReadLimits(), max_columns=3)   # the last line has no newline
    (2, 3)
    >>> scan_csv(b"sequence,step,f,g\\n", "f.csv", ReadLimits(), max_columns=3)     # a features file's bound
    Traceback (most recent call last):
    ...
    gatelens.errors.DataError: f.csv: line 1 has 4 columns, more than the limit of 3 (GATELENS_MAX_FEATURE_COLUMNS)
    >>> scan_csv(b"a,b\\n1,2\\n", "x.csv", ReadLimits(max_cells=3))
    Traceback (most recent call last):
    ...
    gatelens.errors.DataError: x.csv: the file has more than 3 cells, the limit (GATELENS_MAX_CELLS)
    >>> scan_csv(b"a\\n1\\n2\\n3", "x.csv", ReadLimits(max_rows=2))
    Traceback (most recent call last):
    ...
    gatelens.errors.DataError: x.csv: the file has more than 2 lines, the limit (GATELENS_MAX_ROWS)
    """
    import numpy as np  # here, not at import: the model validator imports this module and stays NumPy-free

    cap_cols = limits.max_columns if max_columns is None else max_columns
    col_key = "max_columns" if max_columns is None else "max_feature_columns"
    a = np.frombuffer(raw, np.uint8)
    n = a.size
    line = 0  # lines finished so far
    line_start = 0  # offset where the current line began
    carry = 0  # commas of the current (unfinished) line
    cells = 0
    widest = 0
    for off in range(0, n, _BLOCK):
        blk = a[off : off + _BLOCK]
        nl = np.flatnonzero(blk == 10)
        commas = np.flatnonzero(blk == 44)
        if nl.size:
            starts = np.concatenate(([line_start], off + nl[:-1] + 1))
            lengths = off + nl - starts
            long = np.flatnonzero(lengths > limits.max_line_bytes)
            if long.size:
                k = int(long[0])
                raise DataError(
                    f"{where}: line {line + k + 1} is {int(lengths[k]):,} bytes long, more than the limit of "
                    f"{limits.max_line_bytes:,} ({_ENV['max_line_bytes']})"
                )
            per_line = np.bincount(np.searchsorted(nl, commas), minlength=nl.size + 1)
            per_line[0] += carry
            cols = per_line[:-1] + 1
            wide = np.flatnonzero(cols > cap_cols)
            if wide.size:
                k = int(wide[0])
                raise DataError(
                    f"{where}: line {line + k + 1} has {int(cols[k]):,} columns, more than the limit of "
                    f"{cap_cols:,} ({_ENV[col_key]})"
                )
            cells += int(cols.sum())
            widest = max(widest, int(cols.max()))
            carry = int(per_line[-1])
            line += int(nl.size)
            line_start = off + int(nl[-1]) + 1
        else:
            carry += int(commas.size)
        # the unfinished line so far
        if off + blk.size - line_start > limits.max_line_bytes:
            raise DataError(
                f"{where}: line {line + 1} is longer than the limit of {limits.max_line_bytes:,} bytes "
                f"({_ENV['max_line_bytes']})"
            )
        if carry + 1 > cap_cols:
            raise DataError(f"{where}: line {line + 1} has more than {cap_cols:,} columns, the limit ({_ENV[col_key]})")
        if line > limits.max_rows:
            raise DataError(
                f"{where}: the file has more than {limits.max_rows:,} lines, the limit ({_ENV['max_rows']})"
            )
        if cells > limits.max_cells:
            raise DataError(
                f"{where}: the file has more than {limits.max_cells:,} cells, the limit ({_ENV['max_cells']})"
            )
    if line_start < n:  # a last line without a newline
        line += 1
        cells += carry + 1
        widest = max(widest, carry + 1)
    if line > limits.max_rows:
        raise DataError(f"{where}: the file has more than {limits.max_rows:,} lines, the limit ({_ENV['max_rows']})")
    if cells > limits.max_cells:
        raise DataError(f"{where}: the file has more than {limits.max_cells:,} cells, the limit ({_ENV['max_cells']})")
    return line, widest


def check_npz_member(where: str, file_size: int, compress_size: int, compressed: bool, limits: ReadLimits) -> None:
    """Refuse a compressed ``.npz`` member that declares more than ``max_npz_ratio`` times its stored size.

    >>> check_npz_member("x.npz (x)", 2 << 30, 1 << 20, True, ReadLimits())
    Traceback (most recent call last):
    ...
    gatelens.errors.DataError: x.npz (x): the member inflates 2048:1 (2,147,483,648 bytes from 1,048,576); ...
    """
    if not compressed or file_size <= limits.npz_ratio_from_bytes:
        return
    ratio = file_size / max(compress_size, 1)
    if ratio > limits.max_npz_ratio:
        raise DataError(
            f"{where}: the member inflates {ratio:.0f}:1 ({file_size:,} bytes from {compress_size:,}); the limit for "
            f"compressed members over {limits.npz_ratio_from_bytes:,} bytes is {limits.max_npz_ratio}:1 "
            f"({_ENV['max_npz_ratio']}; or save it with np.savez, uncompressed)"
        )
