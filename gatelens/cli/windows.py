"""``gatelens windows DATA --window T --stride S``: the command over :func:`gatelens.models.windows.windows`.

Prints (or writes with ``--out``) one CSV row per window and step: the source sequence, the source row and the
time. Columns: docs/csv-columns.md.

Examples
--------
>>> import argparse, contextlib, io
>>> from gatelens._examples import example_file
>>> sub = argparse.ArgumentParser().add_subparsers()
>>> register(sub)
>>> args = sub.choices["windows"].parse_args([str(example_file()), "--window", "2"])
>>> out = io.StringIO()
>>> with contextlib.redirect_stdout(out):
...     code = cmd_windows(args)
>>> code, out.getvalue().splitlines()[:2]
(0, ['sequence,step,source_sequence,source_row,time', '0,0,0,2,2024-01-01'])
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gatelens.errors import UsageError
from gatelens.models.windows import windows


def cmd_windows(args: argparse.Namespace) -> int:
    from gatelens.analysis.export import write_csv
    from gatelens.models.cli_output import check_replaceable

    if args.out:  # before reading the data: a user's file at --out is never replaced
        columns = ["sequence", "step", "source_sequence", "source_row"]
        check_replaceable(args.out, "gatelens windows --out", [columns, [*columns, "time"]])
    suffix = Path(args.data).suffix.lower()
    if suffix in (".npy", ".npz"):
        raise UsageError(
            f"gatelens windows: {args.data} is an array, already cut into windows (each row a sequence, each step its "
            "own); windows maps the rows of a .csv series"
        )
    if suffix != ".csv":  # a text: the model's tokenizer cuts it (gatelens extract), not a table of rows
        raise UsageError(
            f"gatelens windows: {args.data} is not a .csv series; windows maps the rows of a CSV (a text is cut into "
            "windows of tokens by gatelens extract --window/--stride)"
        )
    table = windows(args.data, window=args.window, stride=args.stride, time_column=args.time_column,
                    columns=args.columns)  # fmt: skip
    if args.out:
        from gatelens.models.cli_output import say

        write_csv(table, args.out)
        say(f"wrote {args.out}: {table['sequence'].nunique() if len(table) else 0} windows, {len(table)} rows")
    else:
        from gatelens.analysis.export import safe_frame

        safe_frame(table).to_csv(sys.stdout, index=False)
    return 0


def register(sub: Any) -> None:
    """Add ``gatelens windows`` to the CLI's subparsers."""
    from gatelens.models.zoo.cli import positive_int

    w = sub.add_parser(
        "windows",
        help="print where each (sequence, step) comes from: source sequence, row and time of a CSV series",
        description="The windows 'gatelens extract' cuts: one row per window and step. Windows start every "
        "--stride steps (default: the window, non-overlapping; a forecaster that predicts every step wants --stride 1).",
    )
    w.add_argument("data", help="a .csv series (an .npy/.npz array is already cut: one row, one window)")
    w.add_argument("--window", type=positive_int, required=True, help="steps per window (the model's input length)")
    w.add_argument("--stride", type=positive_int, help="steps between window starts (default: the window)")
    w.add_argument("--time-column", help="the date/time column (default: detected)")
    w.add_argument("--columns", nargs="+", help="feature columns (as for extract)")
    w.add_argument("--out", help="write this CSV file instead of printing")
    w.set_defaults(func=cmd_windows)
