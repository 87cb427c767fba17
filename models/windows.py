"""Where each (sequence, step) of a run comes from (the library side of ``gatelens windows``, :mod:`gatelens.cli.windows`).

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

import os
from typing import Any


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

    Examples
    --------
    >>> from gatelens._examples import example_file
    >>> p = example_file("s.csv", "v,w\\n1,5\\n2,6\\n3,7\\n4,8\\n5,9\\n")   # 5 rows, no time column
    >>> w = windows(p, window=2)                                     # stride 2: rows 2-3, 4-5; row 6 is left over
    >>> list(w.columns), w.values.tolist()
    (['sequence', 'step', 'source_sequence', 'source_row'], [[0, 0, 0, 2], [0, 1, 0, 3], [1, 0, 0, 4], [1, 1, 0, 5]])
    """
    from gatelens.models.data import load_data, window_table
    from gatelens.models.spec import InputSpec

    spec = InputSpec(n_steps=int(window), n_features=None)
    return window_table(load_data(data, spec, window=window, stride=stride, time_column=time_column,
                                  columns=columns))  # fmt: skip
