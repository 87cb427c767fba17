"""``gatelens windows DATA --window T --stride S``: where each (sequence, step) of a run comes from.

The same cut ``gatelens extract`` makes (:func:`gatelens.models.data.load_data`), without a model: one
row per window and step with the source sequence, the source row (a CSV row, the header being row 1)
and the time (when the CSV has a date/time column). Use it to build a features CSV keyed by
``sequence, step``, or give ``gatelens analyze --features`` a file keyed by ``source_row`` or ``time``.

Examples
--------
>>> from gatelens._examples import example_file
>>> p = example_file()  # date,v: 2024-01-01..03, 1..3
>>> windows(p, window=2, stride=1)[["sequence", "step", "time"]].values.tolist()
[[0, 0, '2024-01-01'], [0, 1, '2024-01-02'], [1, 0, '2024-01-02'], [1, 1, '2024-01-03']]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gatelens.errors import UsageError


def windows(
    data: str | os.PathLike,
    *,
    window: int,
    stride: int | None = None,
    time_column: str | None = None,
    columns: list[str] | None = None,
) -> Any:
    """The (sequence, step) -> source mapping of ``data`` cut into windows of ``window`` steps.

    Parameters
    ----------
    data : a ``.csv`` series (or ``.npy``/``.npz`` array; then ``source_row`` is the step)
    window, stride : as ``gatelens extract --window/--stride`` (stride default: the window)
    time_column, columns : as ``gatelens extract --time-column/--columns``

    Returns
    -------
    pandas.DataFrame
        ``sequence, step, source_sequence, source_row[, time]`` (see :func:`gatelens.models.data.window_table`).
    """
    from gatelens.models.data import load_data, window_table
    from gatelens.models.spec import InputSpec

    spec = InputSpec(n_steps=int(window), n_features=None)
    return window_table(load_data(data, spec, window=window, stride=stride, time_column=time_column,
                                  columns=columns))  # fmt: skip


def cmd_windows(args: argparse.Namespace) -> int:
    from gatelens.analysis.export import write_csv
    from gatelens.models.cli_output import check_replaceable

    if args.out:  # before reading the data: a user's file at --out is never replaced
        columns = ["sequence", "step", "source_sequence", "source_row"]
        check_replaceable(args.out, "gatelens windows --out", [columns, [*columns, "time"]])
    if Path(args.data).suffix.lower() in (".npy", ".npz"):
        raise UsageError(
            f"gatelens windows: {args.data} is an array, already cut into windows (each row a sequence, each step its "
            "own); windows maps the rows of a .csv series or the characters of a .txt file"
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
    w.add_argument("data", help="a .csv series or a .txt text (an .npy/.npz array is already cut: one row, one window)")
    w.add_argument("--window", type=positive_int, required=True, help="steps per window (the model's input length)")
    w.add_argument("--stride", type=positive_int, help="steps between window starts (default: the window)")
    w.add_argument("--time-column", help="the date/time column (default: detected)")
    w.add_argument("--columns", nargs="+", help="feature columns (as for extract)")
    w.add_argument("--out", help="write this CSV file instead of printing")
    w.set_defaults(func=cmd_windows)
