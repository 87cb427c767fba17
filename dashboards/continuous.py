"""One long strip over a whole series cut into stride-1 windows (instead of one window at a time).

A series of ``R`` records cut into windows of ``T`` steps with stride 1 gives ``R - T + 1`` windows, and every
record is a step of up to ``T`` of them. The continuous view shows each record once, at the latest step any
window reaches it: the first window's steps for the first ``T - 1`` records, then for every later record the
last step of the window that ends there (the state the model's forecast from that window is made from). Which
(window, step) shows each record is :func:`record_picks`, from the run's ``sequences`` table
(:func:`gatelens.analysis.sources.sequence_table`, kept in the run's manifest).

Examples
--------
>>> import pandas as pd
>>> table = pd.DataFrame({"sequence": [0, 0, 0, 1, 1, 1], "step": [0, 1, 2, 0, 1, 2],
...                       "source_sequence": 0, "source_row": [0, 1, 2, 1, 2, 3]})
>>> record_picks(table, 0)[["source_row", "sequence", "step"]].values.tolist()
[[0, 0, 0], [1, 0, 1], [2, 0, 2], [3, 1, 2]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from gatelens.analysis.sources import sequence_table

#: Records drawn at most (a strip of more cells than this is slow to draw and cannot be read).
MAX_RECORDS = 1200


def stride1_sources(table: pd.DataFrame) -> list[int]:
    """The source sequences cut into two or more windows with stride 1 (each window one record after the last).

    Examples
    --------
    >>> t = pd.DataFrame({"sequence": [0, 0, 1, 1, 2, 2], "step": [0, 1] * 3, "source_sequence": [0, 0, 0, 0, 1, 1],
    ...                   "source_row": [0, 1, 1, 2, 5, 6]})
    >>> stride1_sources(t)
    [0]
    """
    first = table[table["step"] == 0]
    out = []
    for src, g in first.groupby("source_sequence", sort=True):
        rows = np.sort(g["source_row"].to_numpy(np.int64))
        if len(rows) >= 2 and np.all(np.diff(rows) == 1):
            out.append(int(src))
    return out


def record_picks(table: pd.DataFrame, source_sequence: int) -> pd.DataFrame:
    """For each record of ``source_sequence``: the (window ``sequence``, ``step``) that shows it (the latest step).

    Columns ``source_row, sequence, step`` (and ``time`` when the run has one), ordered by ``source_row``.
    """
    rows = table[table["source_sequence"] == source_sequence]
    latest = rows.sort_values(["source_row", "step", "sequence"], ascending=[True, False, True], kind="stable")
    return latest.drop_duplicates("source_row", keep="first").reset_index(drop=True)


@dataclass
class Continuous:
    """The continuous view of one source sequence: what :func:`gatelens.dashboards.charts.series_with_strips` draws.

    Attributes
    ----------
    x : DataFrame
        ``step`` (the record's position in the series, from 0) and one column per input feature.
    strips : dict of str to array (records, units)
    times : array of str or None
        The date/time of each record, when the data had a time column.
    picks : DataFrame
        :func:`record_picks` (which window and step each record comes from).
    truncated : bool
        Only the first :data:`MAX_RECORDS` records are shown.
    """

    x: pd.DataFrame
    strips: dict[str, np.ndarray]
    times: np.ndarray | None
    picks: pd.DataFrame
    truncated: bool


def continuous_series(trace, layer: str, source_sequence: int, signals: list[str]) -> Continuous:
    """The records of ``source_sequence`` with the signals of ``layer`` at the step that shows each (see above).

    Reads only the windows it needs (one contiguous block of the run).

    Examples
    --------
    >>> from gatelens._examples import tiny_run
    >>> from gatelens.analysis.store import open_run
    >>> run = open_run(tiny_run(n=3))
    >>> c = continuous_series(run, "lstm", 0, ["forget_gate"])
    >>> c.strips["forget_gate"].shape[0] == len(c.picks) == len(c.x)
    True
    """
    picks = record_picks(sequence_table(trace), source_sequence)
    truncated = len(picks) > MAX_RECORDS
    picks = picks.iloc[:MAX_RECORDS]
    seq = picks["sequence"].to_numpy(np.int64)
    step = picks["step"].to_numpy(np.int64)
    lo, hi = int(seq.min()), int(seq.max()) + 1
    lt = trace[layer]
    strips = {s: np.asarray(lt[s][lo:hi], np.float32)[seq - lo, step] for s in signals}
    if trace.x is not None:
        xs = np.asarray(trace.x[lo:hi], np.float64)
        names = list(trace.feature_names or [])
    else:
        xs = np.asarray(lt.inputs[lo:hi], np.float64)
        names = []
    if xs.ndim == 2:
        xs = xs[..., None]
    xs = xs[seq - lo, step]
    if len(names) != xs.shape[-1]:
        names = [f"x{j}" for j in range(xs.shape[-1])]
    x = pd.DataFrame(xs[:, :8], columns=names[:8])  # a line chart of more than 8 inputs is unreadable
    x.insert(0, "step", np.arange(len(picks)))
    times = picks["time"].to_numpy(dtype=object) if "time" in picks.columns else None
    return Continuous(x=x, strips=strips, times=times, picks=picks, truncated=truncated)
