"""Altair (Vega-Lite) charts of the dashboard: plain functions from tables to charts, no Streamlit.

Examples
--------
>>> import pandas as pd
>>> u = pd.DataFrame({"layer": "lstm", "unit": [0, 1], "signal": "forget_gate", "mean": [0.5, 0.9],
...                   "frac_below_0.1": [0.1, 0.0], "frac_above_0.9": [0.5, 0.9]})
>>> spec = saturation_scatter(u, "forget_gate").to_dict()
>>> spec["layer"][1]["mark"]["type"], spec["layer"][1]["encoding"]["x"]["field"]
('circle', 'shut')
"""

from __future__ import annotations

import warnings

import altair as alt
import numpy as np
import pandas as pd

from gatelens.analysis import signals as registry

#: Name of the point selection of the saturation scatter (read back by the Units page).
UNIT_PICK = "unit_pick"
GATE_DOMAIN = [0.0, 1.0]

#: Layers in clearly different colours (the default theme's blues are hard to tell apart).
LAYER_COLOURS = alt.Scale(scheme="tableau10")
#: Integer step axes: no 0.5 ticks on a 12-step series.
STEP_AXIS = {"format": "d", "tickMinStep": 1}
#: Share of points within :data:`CROWD_RADIUS` of the origin above which the saturation scatter uses
#: square-root axes (the points of an unsaturated model otherwise all pile at (0, 0)).
CROWD_SHARE, CROWD_RADIUS = 0.5, 0.05


def layer_colours(layers) -> alt.Scale:
    """:data:`LAYER_COLOURS` with every layer in its domain, so each legend lists all of them, in order.

    Examples
    --------
    >>> layer_colours(["lstm", "bi/forward", "bi/backward"]).to_dict()["domain"]
    ['lstm', 'bi/forward', 'bi/backward']
    """
    return alt.Scale(scheme="tableau10", domain=[str(x) for x in dict.fromkeys(layers)])


def full_labels(**kw) -> alt.Axis:
    """An axis whose labels are never cut or dropped (long layer and feature names are shown in full)."""
    return alt.Axis(labelLimit=0, labelOverlap=False, **kw)


def unit_axis(n_units: int, height: float) -> alt.Axis:
    """The unit axis of a heat strip: every unit's label when rows are at least 10 px high, else every other one
    (Vega's parity rule) rather than labels drawn over each other.

    Examples
    --------
    >>> unit_axis(4, 60).to_dict()["labelOverlap"], unit_axis(64, 320).to_dict()["labelOverlap"]
    (False, 'parity')
    """
    if height / max(n_units, 1) >= 10:
        return full_labels()
    return alt.Axis(labelOverlap="parity", labelLimit=0)


alt.data_transformers.disable_max_rows()  # every chart below is built from bounded, aggregated tables


def strip_signals(cell_type: str) -> list[str]:
    """The heat strips shown by default for a cell type, from the signal registry: its gates, its candidate,
    then the state its memory lives in (LSTM ``cell_state``, GRU/SimpleRNN ``hidden_state``).

    Examples
    --------
    >>> strip_signals("lstm")
    ['input_gate', 'forget_gate', 'output_gate', 'candidate', 'cell_state']
    >>> strip_signals("gru")
    ['update_gate', 'reset_gate', 'candidate', 'hidden_state']
    """
    names = registry.signals_for(cell_type)
    return [*registry.of_kind(names, "gate"), *registry.of_kind(names, "candidate"), registry.memory_state(cell_type)]


def signal_colour_scale(signal: str, values: np.ndarray) -> alt.Scale:
    """The colour scale of a signal's heat strip: the registry's range for a signal in [0, 1] (blues), else
    red-blue symmetric around 0, at least the registry's bounds and wide enough for ``values``.

    Examples
    --------
    >>> signal_colour_scale("forget_gate", np.array([0.2])).to_dict()["domain"]
    [0.0, 1.0]
    >>> signal_colour_scale("cell_state", np.array([-3.0, 2.0])).to_dict()["domain"]
    [-3.0, 3.0]
    """
    bounds = registry.value_range(signal)
    if bounds is not None and bounds[0] >= 0.0:
        return alt.Scale(scheme="blues", domain=[float(bounds[0]), float(bounds[1])])
    m = float(np.nanmax(np.abs(values))) if values.size else 1.0
    m = m if np.isfinite(m) and m > 0 else 1.0
    if bounds is not None:
        m = max(m, -bounds[0], bounds[1])
    return alt.Scale(scheme="redblue", domain=[-m, m])


def series_with_strips(
    x: pd.DataFrame,
    strips: dict[str, np.ndarray],
    units: list[int],
    *,
    mask: np.ndarray | None = None,
    width: int = 700,
    relative: bool = False,
    times=None,
    step_title: str = "step",
) -> alt.VConcatChart:
    """The input series on top, then one heat strip (unit x step) per signal, on one shared step axis.

    With ``times`` (the date/time of every step, as kept in the run's store) that all parse as dates, the shared
    axis is a time axis with those dates; else integer steps.

    With ``relative``, each unit's row of each strip is coloured from its own minimum (0) to its own maximum (1)
    over the shown steps (the tooltip keeps the value itself).

    Parameters
    ----------
    x : DataFrame
        ``step`` and one column per input feature of one sequence.
    strips : dict of str to array (T, units)
        The signals of one sequence of one layer.
    units : list of int
        Rows of the strips.
    mask : array (T,) of bool, optional
        Padded steps are left out.
    """
    t_len = len(x)
    when = time_index(times, t_len)
    if when is None:
        step_scale = alt.Scale(domain=[0, t_len], nice=False)
        x_type, axis_kw = "Q", STEP_AXIS
        begin, finish = np.arange(t_len, dtype=np.float64), np.arange(1, t_len + 1, dtype=np.float64)
    else:
        ends = time_ends(when)
        step_scale = alt.Scale(domain=[_ms(when[0]), _ms(ends[-1])], nice=False)
        x_type, axis_kw, step_title = "T", {"labelOverlap": True}, "date"
        begin, finish = when, ends
    mids = begin + (finish - begin) / 2
    if when is not None:  # the line's x in ms on the same scale (its axis is hidden; dates reach Vega as numbers)
        mids = mids.asi8 / 1e6
    long = x.assign(mid=mids).melt(id_vars=["step", "mid"], var_name="feature", value_name="value")
    top = (
        alt.Chart(long, title="input")
        .mark_line(point=alt.OverlayMarkDef(size=18))
        .encode(
            x=alt.X("mid:Q", scale=step_scale, title=None, axis=alt.Axis(labels=False, ticks=False)),
            y=alt.Y("value:Q", title="value"),
            color=alt.Color("feature:N", legend=alt.Legend(orient="top", title=None)),
            tooltip=["step:Q", "feature:N", alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(width=width, height=120)
    )
    charts: list[alt.Chart] = [top]
    keep = np.ones(t_len, bool) if mask is None else np.asarray(mask, bool)
    steps = np.arange(t_len)[keep]
    for i, (signal, arr) in enumerate(strips.items()):
        a = np.asarray(arr, np.float64)[keep][:, units]
        shown = a
        if relative and a.size:
            lo, hi = np.nanmin(a, axis=0), np.nanmax(a, axis=0)
            shown = (a - lo) / np.where(hi > lo, hi - lo, 1.0)
        df = pd.DataFrame(
            {
                "step": np.repeat(steps, len(units)),
                "x": np.repeat(begin[steps], len(units)),
                "x_end": np.repeat(finish[steps], len(units)),
                "unit": np.tile(np.asarray(units), len(steps)),
                "value": a.reshape(-1),
                "shade": shown.reshape(-1),
            }
        )
        colour_scale = alt.Scale(scheme="blues", domain=[0.0, 1.0]) if relative else signal_colour_scale(signal, a)
        legend_title = f"{registry.label(signal)} (per unit, min to max)" if relative else registry.label(signal)
        last = i == len(strips) - 1
        charts.append(
            alt.Chart(df, title=registry.label(signal))
            .mark_rect()
            .encode(
                x=alt.X(
                    f"x:{x_type}",
                    scale=step_scale,
                    title=step_title if last else None,
                    axis=alt.Axis(labels=last, ticks=last, **axis_kw),
                ),
                x2=f"x_end:{x_type}",
                y=alt.Y("unit:O", title="unit", axis=unit_axis(len(units), max(40, 11 * len(units)))),
                color=alt.Color("shade:Q", scale=colour_scale, legend=alt.Legend(title=legend_title, labelLimit=0)),
                tooltip=[
                    "step:Q",
                    *([alt.Tooltip("x:T", title="date")] if when is not None else []),
                    "unit:O",
                    alt.Tooltip("value:Q", format=".3f"),
                ],
            )
            .properties(width=width, height=max(40, 11 * len(units)))
        )
    return alt.vconcat(*charts, spacing=6).resolve_scale(color="independent")


def time_index(times, n: int) -> pd.DatetimeIndex | None:
    """The dates of ``n`` steps (strings kept in the run's store), or None when there are none, their number is
    not ``n``, or any does not parse as a date or time (the axis then shows integer steps).

    Examples
    --------
    >>> time_index(["2020-01-01", "2020-04-01"], 2).strftime("%Y-%m").tolist()
    ['2020-01', '2020-04']
    >>> time_index(["2020-01-01", "soon"], 2) is None, time_index(None, 2) is None, time_index(["1", "2"], 2) is None
    (True, True, True)
    """
    if times is None or len(times) != n or n == 0:
        return None
    text = pd.Series(np.asarray(times, dtype=object)).astype(str).str.strip()
    if text.str.fullmatch(r"[-+]?\d+(\.\d*)?").any():  # bare numbers are row labels or years, not dates
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not infer format": parsed element by element
        when = pd.to_datetime(text, errors="coerce", format="mixed")
    if when.isna().any():
        return None
    return pd.DatetimeIndex(when).as_unit("ns")


def time_ends(when: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """Where each dated step's cell ends: the next step's date, the last one a typical step (median gap) later.

    Examples
    --------
    >>> time_ends(pd.DatetimeIndex(["2020-01-01", "2020-01-03", "2020-01-05"])).day.tolist()
    [3, 5, 7]
    """
    if len(when) < 2:
        return when + pd.Timedelta(days=1)
    ns = when.as_unit("ns").asi8
    return pd.DatetimeIndex(np.append(ns[1:], ns[-1] + int(np.median(np.diff(ns)))).astype("datetime64[ns]"))


def _ms(t: pd.Timestamp) -> float:
    """A timestamp in milliseconds since the epoch (how Vega-Lite reads a temporal scale's domain)."""
    return float(pd.Timestamp(t).value // 1_000_000)


def saturation_scatter(units: pd.DataFrame, gate: str, *, scale: str = "auto") -> alt.Chart:
    """One point per unit: share of steps with the gate below 0.1 (x) against above 0.9 (y), coloured by layer.

    Left-saturated units sit on the x axis' right, right-saturated units at the top; units whose gate
    stays in between sit near the origin. ``scale`` is ``"linear"``, ``"sqrt"`` or ``"auto"`` (square-root
    axes when most units crowd the origin, so that they spread out); the chart zooms and pans (scroll,
    drag) and its legend lists every layer of ``units``. The point selection :data:`UNIT_PICK` returns
    ``layer`` and ``unit``.
    """
    df = units[units["signal"] == gate].rename(columns={"frac_below_0.1": "shut", "frac_above_0.9": "open"})
    if scale == "auto":
        near = (df["shut"].to_numpy(np.float64) < CROWD_RADIUS) & (df["open"].to_numpy(np.float64) < CROWD_RADIUS)
        scale = "sqrt" if len(df) and near.mean() > CROWD_SHARE else "linear"
    if scale not in ("linear", "sqrt"):
        raise ValueError(f"scale must be 'linear', 'sqrt' or 'auto', got {scale!r}")
    note = " (√ scale)" if scale == "sqrt" else ""
    pick = alt.selection_point(name=UNIT_PICK, fields=["layer", "unit"], on="click")
    diag = pd.DataFrame({"a": np.linspace(0.0, 1.0, 41), "b": 1.0 - np.linspace(0.0, 1.0, 41)})
    edge = alt.Chart(diag).mark_line(color="#ccc", strokeDash=[4, 4]).encode(x="a:Q", y="b:Q")
    axis_scale = alt.Scale(domain=[0, 1], type=scale)
    points = (
        alt.Chart(df)
        .mark_circle(size=70, opacity=0.8)
        .encode(
            x=alt.X("shut:Q", title="shut: share of steps < 0.1" + note, scale=axis_scale),
            y=alt.Y("open:Q", title="open: share of steps > 0.9" + note, scale=axis_scale),
            color=alt.Color(
                "layer:N",
                scale=layer_colours(units["layer"]),
                legend=alt.Legend(orient="bottom", title="layer", labelLimit=0, columns=1),
            ),
            size=alt.condition(pick, alt.value(140), alt.value(60)),
            tooltip=[
                "layer:N",
                "unit:Q",
                alt.Tooltip("shut:Q", format=".3f", title="share < 0.1"),
                alt.Tooltip("open:Q", format=".3f", title="share > 0.9"),
                alt.Tooltip("mean:Q", format=".3f"),
            ],
        )
        .add_params(pick)
    )
    return (
        (edge + points)
        .properties(title=registry.label(gate), height=240)
        # fit the width only: the plot keeps its 240 px whatever the legend and axis titles take
        .properties(autosize=alt.AutoSizeParams(type="fit-x", contains="padding"))
        .interactive()
    )


def half_life_histogram(half_lives: pd.DataFrame, *, bins: int = 24) -> tuple[alt.Chart, int]:
    """Histogram of finite half-lives on log-spaced bins, stacked by layer; also the count of infinite ones."""
    h = half_lives["half_life_steps"].to_numpy(np.float64)
    finite = np.isfinite(h) & (h > 0)
    n_inf = int(np.isinf(h).sum())
    df = half_lives[finite]
    if df.empty:
        return alt.Chart(pd.DataFrame({"x": []})).mark_bar(), n_inf
    lo, hi = np.log10(df["half_life_steps"].min()), np.log10(df["half_life_steps"].max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.logspace(lo, hi, bins + 1)
    idx = np.clip(np.searchsorted(edges, df["half_life_steps"].to_numpy(), side="right") - 1, 0, bins - 1)
    counts = (
        df.assign(bin=idx)
        .groupby(["bin", "layer"], sort=False)
        .size()
        .reset_index(name="units")
        .sort_values(["bin", "layer"], kind="stable")
    )
    counts["top"] = counts.groupby("bin")["units"].cumsum()  # stacked by hand: one rect per bin and layer
    counts["bottom"] = counts["top"] - counts["units"]
    counts["lo"], counts["hi"] = edges[counts["bin"]], edges[counts["bin"] + 1]
    chart = (
        alt.Chart(counts, title="memory half-life of each unit")
        .mark_rect(stroke="white", strokeWidth=0.5)
        .encode(
            x=alt.X("lo:Q", scale=alt.Scale(type="log"), title="half-life (steps, log scale)"),
            x2="hi:Q",
            y=alt.Y("bottom:Q", title="units"),
            y2="top:Q",
            color=alt.Color(
                "layer:N", scale=layer_colours(half_lives["layer"]), legend=alt.Legend(orient="right", labelLimit=0)
            ),
            tooltip=["layer:N", "units:Q", alt.Tooltip("lo:Q", format=".3g"), alt.Tooltip("hi:Q", format=".3g")],
        )
        .properties(width=560, height=200)
    )
    return chart, n_inf


def correlation_heatmap(corr: pd.DataFrame, signal: str, *, sort_by: str | None = None) -> alt.Chart:
    """Features (rows) x units (columns) coloured by Pearson r, for one signal.

    Units are ordered by their r with ``sort_by`` (strongest positive first) when given, else by layer and unit.
    """
    df = corr[corr["signal"] == signal].copy()
    df["unit_label"] = df["layer"].astype(str) + ":" + df["unit"].astype(str)
    labels = list(dict.fromkeys(df["unit_label"]))
    if sort_by is not None and (df["feature"] == sort_by).any():
        key = df[df["feature"] == sort_by].set_index("unit_label")["pearson_r"].fillna(0.0)
        labels = list(key.sort_values(ascending=False, kind="stable").index)
    n = len(labels)
    return (
        alt.Chart(df, title=f"Pearson r of {registry.label(signal)} with each feature ({n} units)")
        .mark_rect()
        .encode(
            x=alt.X(
                "unit_label:N",
                sort=labels,
                title="units" + (f", by r with {sort_by}" if sort_by else ""),
                axis=alt.Axis(labels=n <= 48, ticks=n <= 48, labelFontSize=9, labelLimit=0),
            ),
            y=alt.Y("feature:N", title=None, sort=None, axis=full_labels()),
            color=alt.Color("pearson_r:Q", scale=alt.Scale(scheme="redblue", domain=[-1, 1]), title="r"),
            tooltip=[
                "layer:N",
                "unit:Q",
                "feature:N",
                alt.Tooltip("pearson_r:Q", format=".3f"),
                alt.Tooltip("spearman_rho:Q", format=".3f"),
                "n:Q",
                "note:N",
            ],
        )
        .properties(height=alt.Step(18))  # one 18 px row per feature, whatever the container's height
    )


def _probe_tooltip(key: str, extra: list | None = None) -> list:
    """The tooltip of a probe's mark: layer, signal, ``key``, its scores (3 decimals), then ``extra``."""
    scores = [alt.Tooltip(f"{c}:Q", format=".3f") for c in ("score", "control_score", "selectivity")]
    return ["layer:N", "signal:N", key, *scores, *(extra or [])]


def probe_chart(probes: pd.DataFrame, feature: str) -> alt.LayerChart:
    """Held-out probe score by signal (bars, one per layer) with the control task's score (ticks) for one feature."""
    df = probes[(probes["feature"] == feature) & probes["score"].notna()]
    base = alt.Chart(df).encode(
        y=alt.Y("signal:N", title=None, axis=full_labels()),
        yOffset="layer:N",
        tooltip=_probe_tooltip("task:N", extra=[alt.Tooltip("baseline_score:Q", format=".3f"), "top_units:N"]),
    )
    bars = base.mark_bar().encode(
        x=alt.X("score:Q", title="held-out score"),
        color=alt.Color(
            "layer:N", scale=layer_colours(probes["layer"]), legend=alt.Legend(title="layer", labelLimit=0)
        ),
    )
    ticks = base.mark_tick(color="black", thickness=2, size=12).encode(x="control_score:Q")
    return (bars + ticks).properties(title=f"probes for {feature} (tick: control task)", width=520)


def selectivity_heatmap(probes: pd.DataFrame) -> alt.Chart:
    """Selectivity (score - control score) of every probe: signal x feature, one panel row per layer."""
    df = probes[probes["selectivity"].notna()].copy()
    df["row"] = df["layer"].astype(str) + " · " + df["signal"].astype(str)
    return (
        alt.Chart(df, title=alt.TitleParams(["probe selectivity", "(held-out score minus control task)"]))
        .mark_rect()
        .encode(
            x=alt.X("feature:N", title=None, axis=full_labels(labelAngle=-40)),
            y=alt.Y("row:N", title="layer · signal", axis=full_labels()),
            color=alt.Color("selectivity:Q", scale=alt.Scale(scheme="purplegreen", domainMid=0), title="selectivity"),
            tooltip=_probe_tooltip("feature:N"),
        )
        .properties(width=alt.Step(34), height=alt.Step(18))  # a cell per probe, labels outside it
    )


def retention_chart(retention: pd.DataFrame, layer: str, unit: int) -> alt.LayerChart:
    """Retention curves of every unit of ``layer`` (grey) with ``unit`` highlighted."""
    df = retention[retention["layer"] == layer]
    others = (
        alt.Chart(df[df["unit"] != unit])
        .mark_line(color="#ccc", strokeWidth=1)
        .encode(
            x=alt.X("lag:Q", title="steps later (lag)", axis=alt.Axis(**STEP_AXIS)),
            y=alt.Y("retention:Q", title="share kept"),
            detail="unit:N",
        )
    )
    mine = (
        alt.Chart(df[df["unit"] == unit])
        .mark_line(color="#d62728", strokeWidth=3, point=True)
        .encode(
            x="lag:Q",
            y=alt.Y("retention:Q", scale=alt.Scale(domain=[0, 1])),
            tooltip=["lag:Q", alt.Tooltip("retention:Q", format=".3f"), "n_windows:Q"],
        )
    )
    return (others + mine).properties(
        title=f"retention: {layer} unit {unit} (red) and the others", width=420, height=240
    )


def cell_decomposition_chart(df: pd.DataFrame, target: int) -> alt.LayerChart:
    """Contribution of each past step's write to the state at ``target`` (bars), with the token written there."""
    d = df.copy()
    d["token"] = d["token"].astype(object).where(d["token"].notna(), "")
    d["sign"] = np.where(d["contribution"] >= 0, "adds", "subtracts")
    bars = (
        alt.Chart(d)
        .mark_bar()
        .encode(
            x=alt.X("source_step:O", title="step whose write it is (-1: the initial state)"),
            y=alt.Y("contribution:Q", title="still in the state"),
            color=alt.Color(
                "sign:N", scale=alt.Scale(domain=["adds", "subtracts"], range=["#2166ac", "#b2182b"]), legend=None
            ),
            tooltip=["source_step:Q", "token:N", alt.Tooltip("contribution:Q", format=".4f")],
        )
    )
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="#888").encode(y="y:Q")
    return (bars + zero).properties(title=f"what the state at step {target} is made of", width=640, height=240)


def preactivation_chart(df: pd.DataFrame, gates: list[str]) -> alt.VConcatChart:
    """Per gate, the pre-activation at every step split into input, memory (recurrent) and bias, with the total."""
    charts = []
    for gate in gates:
        g = df[df["gate"] == gate]
        long = g.melt(id_vars=["step"], value_vars=["input", "recurrent", "bias"], var_name="part", value_name="value")
        long["part"] = long["part"].map({"input": "input", "recurrent": "memory", "bias": "bias"})
        bars = (
            alt.Chart(long)
            .mark_bar()
            .encode(
                x=alt.X("step:O", title="step"),
                y=alt.Y("value:Q", stack="zero", title="pre-activation"),
                color=alt.Color(
                    "part:N",
                    scale=alt.Scale(domain=["input", "memory", "bias"], range=["#1f77b4", "#ff7f0e", "#9e9e9e"]),
                    legend=alt.Legend(orient="top", title=None),
                ),
                tooltip=["step:Q", "part:N", alt.Tooltip("value:Q", format=".3f")],
            )
        )
        total = (
            alt.Chart(g)
            .mark_line(color="black", point=alt.OverlayMarkDef(color="black", size=12))
            .encode(x="step:O", y="total:Q", tooltip=["step:Q", alt.Tooltip("total:Q", format=".3f")])
        )
        charts.append((bars + total).properties(title=registry.label(gate), width=640, height=150))
    return alt.vconcat(*charts)


def unit_lines(df: pd.DataFrame, *, title: str) -> alt.VConcatChart:
    """Signals of one unit over the steps of one sequence (``step, signal, value``): one small panel per
    signal, each with its own y axis (a gate in [0, 1] is not flattened by a cell state of +-20), on one
    shared integer step axis."""
    signals = list(dict.fromkeys(df["signal"]))
    tooltip = ["step:Q", "signal:N", alt.Tooltip("value:Q", format=".3f")]
    if "token" in df.columns:
        tooltip.insert(2, "token:N")
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    panels = []
    for i, sig in enumerate(signals):
        last = i == len(signals) - 1
        panels.append(
            alt.Chart(title=alt.TitleParams(registry.label(sig), fontSize=12, anchor="start"))
            .transform_filter(alt.datum.signal == sig)
            .mark_line(point=alt.OverlayMarkDef(size=10), color=palette[i % len(palette)])
            .encode(
                x=alt.X("step:Q", title="step" if last else None, axis=alt.Axis(labels=last, **STEP_AXIS)),
                y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
                tooltip=tooltip,
            )
            .properties(width=640, height=70)
        )
    return alt.vconcat(*panels, data=df, spacing=4, title=title).resolve_scale(y="independent")
