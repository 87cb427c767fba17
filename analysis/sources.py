"""Where each (sequence, step) of a run came from: source sequence, source row and time.

A run written by ``gatelens extract`` keeps, in its manifest, how its data file was cut into windows
(:func:`gatelens.models.data.load_data`): the source sequence and start of each window and, for a CSV,
the file row and the date/time (``--time-column``, or detected) of every record. :func:`sequence_table`
gives the mapping as a table (the ``sequences`` export); :func:`rekey_features` turns a features table
keyed by ``source_row`` or ``time`` into one keyed by ``sequence, step`` (a source row that falls in
several overlapping windows gives a row for each).

Examples
--------
>>> src = {"window_record_start": [0, 1], "record_rows": [2, 3, 4], "record_times": ["d1", "d2", "d3"]}
>>> window_frame(src, [0, 0], [0, 1], 2).values.tolist()
[[0, 0, 0, 2, 'd1'], [0, 1, 0, 3, 'd2'], [1, 0, 0, 3, 'd2'], [1, 1, 0, 4, 'd3']]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from gatelens.errors import FeatureError

#: Columns a features table may be keyed by instead of ``sequence, step``.
SOURCE_KEYS = ("source_row", "time")


def window_frame(source: dict[str, Any], sequence: Any, start: Any, n_steps: int) -> Any:
    """:func:`window_table` from a run's manifest entries (``data`` source, ``sequence``, ``start``)."""
    sequence = np.asarray(sequence, np.int64)
    start = np.asarray(start, np.int64)
    n = len(sequence)
    steps = np.arange(n_steps, dtype=np.int64)
    out = {
        "sequence": np.repeat(np.arange(n, dtype=np.int64), n_steps),
        "step": np.tile(steps, n),
        "source_sequence": np.repeat(sequence, n_steps),
    }
    base = source.get("window_record_start")
    if base is not None and len(base) == n:
        rec = (np.asarray(base, np.int64)[:, None] + steps[None, :]).reshape(-1)
        out["source_row"] = np.asarray(source["record_rows"], np.int64)[rec]
        if source.get("record_times") is not None:
            out["time"] = np.asarray(source["record_times"], dtype=object)[rec]
    else:
        out["source_row"] = (start[:, None] + steps[None, :]).reshape(-1)
    return pd.DataFrame(out)


def sequence_table(trace: Any) -> pd.DataFrame:
    """The ``sequences`` table of a run: ``sequence, step, source_sequence, source_row[, time]``.

    From the manifest ``gatelens extract`` writes; a run written by the API without one maps
    sequence ``i`` to source sequence ``i`` and step ``t`` to source row ``t``.

    Examples
    --------
    >>> from gatelens.analysis.store import open_run
    >>> from gatelens._examples import tiny_run
    >>> sequence_table(open_run(tiny_run(n=2))).shape
    (8, 4)
    """
    meta = getattr(trace, "meta", None) or {}
    n, t = trace.n_sequences, trace.n_steps
    seq = meta.get("sequence")
    start = meta.get("start")
    if seq is None or len(seq) != n:
        seq, start = np.arange(n), np.zeros(n, np.int64)
    return window_frame(meta.get("data") or {}, seq, start, t)


def time_grid(trace: Any) -> np.ndarray | None:
    """The time of every (sequence, step) as an (N, T) object array, or None when the run has no time column."""
    table = sequence_table(trace)
    if "time" not in table.columns:
        return None
    return table["time"].to_numpy(dtype=object).reshape(trace.n_sequences, trace.n_steps)


def rekey_features(table: pd.DataFrame, trace: Any, source: str) -> pd.DataFrame:
    """A features table keyed by ``source_row`` or ``time`` -> keyed by ``sequence, step`` (other tables as given).

    Raises
    ------
    FeatureError
        The table has both kinds of key, the run has no time column, or a key value is not in the run.

    Examples
    --------
    >>> from gatelens.analysis.store import open_run
    >>> from gatelens._examples import tiny_run
    >>> run = open_run(tiny_run(n=2))
    >>> rekey_features(pd.DataFrame({"source_row": ["1"], "f": ["0.5"]}), run, "f.csv").values.tolist()
    [['0', '1', '0.5'], ['1', '1', '0.5']]
    """
    cols = list(table.columns)
    if "sequence" in cols or "step" in cols:
        return table
    keys = [k for k in SOURCE_KEYS if k in cols]
    if not keys:
        return table
    if len(keys) > 1:
        raise FeatureError(f"{source}: key the features by source_row or by time, not both")
    key = keys[0]
    m = sequence_table(trace)
    if key not in m.columns:
        raise FeatureError(f"{source}: features keyed by 'time', but the run has no time column (extract a CSV "
                           "with a date/time column, or --time-column)")  # fmt: skip
    left = m[["sequence", "step", key]].copy()
    right = table.copy()
    if key == "source_row":
        nums = pd.to_numeric(right[key].astype(str).str.strip(), errors="coerce")
        bad = nums.isna() | (nums != nums.round())
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise FeatureError(f"{source}: line {i + 2}: source_row {right[key].iloc[i]!r} is not a whole number")
        right[key] = nums.astype(np.int64)
    else:
        left[key] = left[key].astype(str)
        right[key] = right[key].astype(str).str.strip()
    missing = ~right[key].isin(left[key])
    if missing.any():
        i = int(np.argmax(missing.to_numpy()))
        raise FeatureError(f"{source}: line {i + 2}: {key} {right[key].iloc[i]!r} is not in the run's data")
    joined = left.merge(right, on=key, how="inner").drop(columns=[key])
    out = joined.sort_values(["sequence", "step"], kind="stable").reset_index(drop=True)
    out["sequence"] = out["sequence"].astype(str)
    out["step"] = out["step"].astype(str)
    return out
