"""The Unit explained page's examples, histogram and scored explanation, from the analysis's tables.

Reads the ``examples``, ``histograms`` and ``explanations`` tables of :func:`gatelens.analysis.pipeline.analyze`
(:mod:`gatelens.analysis.examples`, :mod:`gatelens.analysis.explain_score`) and turns one unit's rows into
what the page shows: the examples of one kind as text coloured by the signal (the gates page's renderer,
:func:`gatelens.dashboards.render.colored_text_html`, the example's own step outlined) or, for numeric
inputs, as heat strips (one row per example, a column per step of its window); the unit's activation
histogram; the explanation with its score and shuffled control; the units ordered by that score.
Nothing is computed here that the analysis did not compute. No Streamlit here.

Examples
--------
>>> import pandas as pd
>>> e = pd.DataFrame({"layer": "l", "unit": [0, 1, 2], "score": [0.5, float("nan"), 0.9]})
>>> units_by_score(e, "l", 4)
[2, 0, 1, 3]
>>> kind_label("decile_3"), kind_label("rise")
('decile 3 (30-40% of its range)', 'rise (where it opens most)')
"""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from gatelens.analysis import signals as registry
from gatelens.analysis.examples import KINDS, unit_example_rows
from gatelens.dashboards import charts, render

__all__ = [
    "example_kinds",
    "examples_html",
    "examples_strips",
    "histogram_chart",
    "kind_label",
    "score_row",
    "score_text",
    "unit_examples",
    "unit_histogram",
    "units_by_score",
]

_KIND_WORDS = {
    "top": "top (its largest values)",
    "bottom": "bottom (its smallest values)",
    "rise": "rise (where it opens most)",
    "drop": "drop (where it shuts most)",
}


def kind_label(kind: str) -> str:
    """How a kind of example is named on the page (see the module examples)."""
    if kind.startswith("decile_"):
        j = int(kind.split("_")[1])
        return f"decile {j} ({10 * j}-{10 * (j + 1)}% of its range)"
    return _KIND_WORDS.get(kind, kind)


def _table(analysis: Any, name: str) -> pd.DataFrame | None:
    t = getattr(analysis, name, None) if analysis is not None else None
    return t if isinstance(t, pd.DataFrame) and not t.empty else None


def example_kinds(analysis: Any, layer: str, unit: int, signal: str) -> list[str]:
    """The kinds of examples the analysis holds for this unit and signal, in :data:`KINDS` order."""
    ex = _table(analysis, "examples")
    if ex is None:
        return []
    rows = ex[(ex["layer"] == layer) & (ex["unit"] == unit) & (ex["signal"] == signal)]
    present = set(rows["kind"])
    return [k for k in KINDS if k in present]


def unit_examples(analysis: Any, layer: str, unit: int, signal: str, kind: str) -> pd.DataFrame:
    """One unit's examples of one signal and kind, best first, with ``tokens`` and ``values`` decoded."""
    rows = unit_example_rows(_table(analysis, "examples"), layer, unit, signal)
    rows = rows[rows["kind"] == kind] if not rows.empty else rows
    return rows.sort_values("rank", kind="stable").reset_index(drop=True)


def unit_histogram(analysis: Any, layer: str, unit: int, signal: str) -> pd.DataFrame:
    """The unit's histogram of one signal (``bin, lo, hi, count``), by bin; empty when the analysis has none."""
    h = _table(analysis, "histograms")
    if h is None:
        return pd.DataFrame(columns=["bin", "lo", "hi", "count"])
    rows = h[(h["layer"] == layer) & (h["unit"] == unit) & (h["signal"] == signal)]
    return rows[["bin", "lo", "hi", "count"]].sort_values("bin").reset_index(drop=True)


def _max_abs(hist: pd.DataFrame, rows: pd.DataFrame) -> float:
    """The largest |value| of the unit's signal: the histogram's range, else the examples' windows."""
    if not hist.empty:
        m = float(max(abs(hist["lo"].min()), abs(hist["hi"].max())))
    else:
        vals = [v for vs in rows["values"] for v in vs if np.isfinite(v)] if not rows.empty else []
        m = float(np.max(np.abs(vals))) if vals else 1.0
    return m if math.isfinite(m) and m > 0 else 1.0


def _caption(row: Any, signal: str) -> str:
    what = "change" if row.kind in ("rise", "drop") else registry.label(signal)
    sign = "+" if row.kind in ("rise", "drop") else ""
    return (
        f"#{int(row.rank)} · sequence {int(row.sequence)}, step {int(row.step)} · {what} {float(row.value):{sign}.3f}"
    )


def examples_html(rows: pd.DataFrame, signal: str, hist: pd.DataFrame | None = None) -> str:
    """The examples' windows as text coloured by ``signal``, exactly as the gates page colours it.

    One line per example (its caption above it: rank, sequence, step, value), the example's own step
    outlined. Gates and bounded states use the registry's fixed scale; an unbounded signal is scaled to
    the unit's largest ``|value|`` over the whole run (the histogram's range), the same for every line.

    Examples
    --------
    >>> rows = pd.DataFrame({"kind": ["top"], "rank": [0], "sequence": [2], "step": [5], "value": [0.9],
    ...                      "position": [1], "tokens": [["<", "a"]], "values": [[0.1, 0.9]]})
    >>> out = examples_html(rows, "forget_gate")
    >>> "&lt;" in out, out.count("gl-mark") >= 2, "sequence 2, step 5" in out
    (True, True, True)
    """
    hist = pd.DataFrame() if hist is None else hist
    fixed = registry.value_range(signal) is not None
    m = _max_abs(hist, rows)
    scale = render.signal_scale(signal, m)
    name = registry.label(signal)
    out = [render.STYLE, render.legend_html(scale, name if fixed else f"{name} (its largest |value| over the run)")]
    for row in rows.itertuples():
        values = np.asarray(row.values, np.float64)
        tokens = [str(t) for t in row.tokens]
        hover = [f"step {int(row.step) - int(row.position) + i} · {tok!r}: {v:.3f}" for i, (tok, v) in
                 enumerate(zip(tokens, values))]  # fmt: skip
        out.append(
            render.colored_text_html(
                tokens,
                values,
                scale=scale,
                hover=hover,
                mask=np.isfinite(values),
                label=_caption(row, signal),
                marked=int(row.position),
            )
        )
    return "".join(out)


def examples_strips(rows: pd.DataFrame, signal: str, hist: pd.DataFrame | None = None, width: int = 640) -> alt.Chart:
    """Numeric inputs: the examples as heat strips, a row per example, a column per step of its window.

    The x axis is the step relative to the example's own (0, outlined); the colour the signal on the
    dashboard's strip scale (:func:`gatelens.dashboards.charts.signal_colour_scale`, over the unit's range
    from the histogram); the tooltip has the step, the signal and the model's input there.

    Examples
    --------
    >>> rows = pd.DataFrame({"kind": ["top"], "rank": [0], "sequence": [1], "step": [3], "value": [0.9],
    ...                      "position": [1], "tokens": [[[0.5], [1.5]]], "values": [[0.2, 0.9]]})
    >>> spec = examples_strips(rows, "update_gate").to_dict()
    >>> sorted(spec["datasets"][spec["layer"][0]["data"]["name"]][1].items())[:3]
    [('example', '#0 · seq 1, step 3'), ('input', '1.5'), ('offset', 0)]
    """
    hist = pd.DataFrame() if hist is None else hist
    recs = []
    for row in rows.itertuples():
        label = f"#{int(row.rank)} · seq {int(row.sequence)}, step {int(row.step)}"
        for i, (v, x) in enumerate(zip(row.values, row.tokens)):
            xs = x if isinstance(x, list) else [x]
            recs.append(
                {
                    "example": label,
                    "offset": i - int(row.position),
                    "step": int(row.step) - int(row.position) + i,
                    "value": float(v),
                    "input": ", ".join(f"{float(a):.4g}" for a in xs),
                }
            )
    df = pd.DataFrame(recs, columns=["example", "offset", "step", "value", "input"])
    df = df[np.isfinite(df["value"].to_numpy(float))].assign(offset_end=lambda d: d["offset"] + 1)
    m = _max_abs(hist, rows)
    colour = charts.signal_colour_scale(signal, np.array([-m, m]) if not hist.empty else df["value"].to_numpy())
    order = list(dict.fromkeys(df["example"]))
    name = registry.label(signal)
    base = alt.Chart(df)
    rect = base.mark_rect().encode(
        x=alt.X("offset:Q", title="step relative to the example's", axis=alt.Axis(**charts.STEP_AXIS)),
        x2="offset_end:Q",
        y=alt.Y("example:N", sort=order, title=None, axis=charts.full_labels()),
        color=alt.Color("value:Q", scale=colour, legend=alt.Legend(title=name)),
        tooltip=["example:N", "step:Q", alt.Tooltip("value:Q", title=name, format=".3f"), "input:N"],
    )
    mark = (
        alt.Chart(pd.DataFrame({"offset": [0], "offset_end": [1]}))
        .mark_rect(fill=None, stroke="#e6550d", strokeWidth=2)
        .encode(x="offset:Q", x2="offset_end:Q")
    )
    return alt.layer(rect, mark).properties(width=width, height=max(60, 22 * len(order)))


def histogram_chart(hist: pd.DataFrame, signal: str, title: str) -> alt.Chart:
    """The unit's activation histogram: one bar per bin (``lo`` to ``hi``), height the number of steps.

    Examples
    --------
    >>> h = pd.DataFrame({"bin": [0, 1], "lo": [0.0, 0.5], "hi": [0.5, 1.0], "count": [3, 1]})
    >>> histogram_chart(h, "forget_gate", "t").to_dict()["encoding"]["x2"]["field"]
    'hi'
    """
    name = registry.label(signal)
    return (
        alt.Chart(hist, title=title)
        .mark_bar(stroke="white", strokeWidth=0.5)
        .encode(
            x=alt.X("lo:Q", title=name, scale=alt.Scale(zero=False, nice=False)),
            x2="hi:Q",
            y=alt.Y("count:Q", title="steps"),
            tooltip=[
                alt.Tooltip("lo:Q", format=".3f", title="from"),
                alt.Tooltip("hi:Q", format=".3f", title="to"),
                alt.Tooltip("count:Q", title="steps"),
            ],
        )
        .properties(width=420, height=180)
    )


def score_row(analysis: Any, layer: str, unit: int) -> pd.Series | None:
    """The unit's row of the ``explanations`` table, or None."""
    e = _table(analysis, "explanations")
    if e is None:
        return None
    rows = e[(e["layer"] == layer) & (e["unit"] == unit)]
    return None if rows.empty else rows.iloc[0]


def score_text(row: pd.Series | None) -> str:
    """The scored explanation in one sentence (Markdown-safe: user feature names are escaped by the page).

    Examples
    --------
    >>> r = pd.Series({"explanation": "its cell state is higher where depth is larger", "score": 0.953,
    ...                "control": -0.012, "n_heldout": 400})
    >>> print(score_text(r))
    Its cell state is higher where depth is larger: score 0.95 on held-out sequences (shuffled control -0.01, 400 steps).
    """
    if row is None:
        return "No scored explanation (the explanations step did not run)."
    text = str(row["explanation"])
    text = text[:1].upper() + text[1:]
    score = float(row["score"]) if pd.notna(row["score"]) else float("nan")
    if not math.isfinite(score):
        return f"{text}: no score (too few held-out steps)."
    return (
        f"{text}: score {score:.2f} on held-out sequences "
        f"(shuffled control {float(row['control']):.2f}, {int(row['n_heldout'])} steps)."
    )


def units_by_score(explanations: pd.DataFrame | None, layer: str, n_units: int) -> list[int]:
    """The units of ``layer`` by explanation score, best first (ties by unit; unscored units last, by number)."""
    order: list[int] = []
    if explanations is not None and not explanations.empty:
        e = explanations[(explanations["layer"] == layer) & explanations["score"].notna()]
        e = e.assign(_s=-e["score"].astype(float)).sort_values(["_s", "unit"], kind="stable")
        order = [int(u) for u in e["unit"] if 0 <= int(u) < n_units]
    seen = set(order)
    return order + [u for u in range(n_units) if u not in seen]
