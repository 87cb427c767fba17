"""Select a span of steps with the mouse: a heat strip (unit x step) of one sequence with an interval brush on x.

The Search page draws :func:`span_chart` with ``st.altair_chart(on_select="rerun")``; Streamlit returns the
brush as ``{"span": {"step": [lo, hi]}}`` in chart coordinates (step ``t`` is drawn from ``t`` to ``t + 1``),
and :func:`brushed_span` turns it into the half-open step range ``start:end`` of every step the brush touches.
No Streamlit here: plain functions, tested without a browser.

Examples
--------
>>> import numpy as np
>>> chart = span_chart(np.zeros((6, 2), np.float32), "hidden_state")
>>> spec = chart.to_dict()
>>> spec["params"][0]["name"], spec["params"][0]["select"]["encodings"]
('span', ['x'])
>>> brushed_span({"span": {"step": [1.5, 3.2]}}, 6)
(1, 4)
"""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from gatelens.analysis import signals as registry
from gatelens.dashboards.charts import STEP_AXIS, signal_colour_scale, unit_axis

#: Name of the interval selection of :func:`span_chart` (the key of the brush in the returned selection).
BRUSH = "span"


def span_chart(values: np.ndarray, signal: str, *, mask: np.ndarray | None = None, width: int = 700) -> alt.Chart:
    """One sequence's ``signal`` as a heat strip (a row per unit, a column per step) with a brush on the steps.

    Parameters
    ----------
    values : array (T, units)
        The signal of one sequence of one layer.
    signal : str
        Its name (colour scale and title).
    mask : array (T,) of bool, optional
        Padded steps are left out.
    """
    a = np.asarray(values, np.float64)
    t_len, n_units = a.shape
    keep = np.ones(t_len, bool) if mask is None else np.asarray(mask, bool)
    steps = np.flatnonzero(keep)
    df = pd.DataFrame(
        {
            "step": np.repeat(steps, n_units),
            "unit": np.tile(np.arange(n_units), len(steps)),
            "value": a[steps].reshape(-1),
        }
    ).assign(step_end=lambda d: d["step"] + 1)
    brush = alt.selection_interval(name=BRUSH, encodings=["x"])
    height = max(60, min(14 * n_units, 320))
    return (
        alt.Chart(df, title=f"{registry.label(signal)}: drag over the steps of a span")
        .mark_rect()
        .encode(
            x=alt.X("step:Q", scale=alt.Scale(domain=[0, t_len], nice=False), title="step", axis=alt.Axis(**STEP_AXIS)),
            x2="step_end:Q",
            y=alt.Y("unit:O", title="unit", axis=unit_axis(n_units, height)),
            color=alt.Color(
                "value:Q",
                scale=signal_colour_scale(signal, a[steps]),
                legend=alt.Legend(title=registry.label(signal), labelLimit=0),
            ),
            tooltip=["step:Q", "unit:O", alt.Tooltip("value:Q", format=".3f")],
        )
        .add_params(brush)
        .properties(width=width, height=height)
        .properties(autosize=alt.AutoSizeParams(type="pad", contains="padding"))  # axes and legend outside its height
    )


def brushed_span(selection: Any, t_len: int) -> tuple[int, int] | None:
    """The steps ``(start, end)`` (half-open) a brush of :func:`span_chart` covers, or None without one.

    A step counts when the brush touches its cell ``[t, t + 1)``; the range is clipped to ``0..t_len``.

    Examples
    --------
    >>> brushed_span({"span": {"step": [2.4, 2.6]}}, 10)
    (2, 3)
    >>> brushed_span({"span": {"step": [-3, 40]}}, 10)
    (0, 10)
    >>> brushed_span({"span": {}}, 10) is None
    True
    """
    try:
        lo, hi = (float(v) for v in selection[BRUSH]["step"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    lo, hi = min(lo, hi), max(lo, hi)
    start = min(max(int(math.floor(lo)), 0), t_len - 1)
    end = min(max(int(math.ceil(hi)), start + 1), t_len)
    return start, end
