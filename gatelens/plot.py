"""The dashboard's charts for notebooks: each function picks its data from a Trace or an Analysis and returns
the same Altair chart the dashboard draws (:mod:`gatelens.dashboards.charts`), which Jupyter shows inline.

Charts of a sequence take the :class:`~gatelens.analysis.trace.Trace` (in memory or from the store: only
that sequence is read); charts of the whole run take the :class:`~gatelens.analysis.pipeline.Analysis` of
:func:`gatelens.analyze`. A bad layer, unit, sequence or signal raises :class:`gatelens.errors.UsageError`
with one line that names the choices there are.

==========================  ===========================================================================
:func:`gates`               the input on top, a heat strip per signal (unit x step): the Gates page
:func:`text`                text coloured by a signal, one row per unit (HTML): the Gates page of a text model
:func:`unit`                one unit's gates and states over one sequence: the Unit explained page
:func:`decomposition`       what the state of a unit at a step is made of, write by write: the Memory page
:func:`preactivations`      each gate's pre-activation split into input, memory and bias: the Memory page
:func:`retention`           retention curves of a layer's units, one highlighted: the Memory page
:func:`saturation`          share of steps each unit's gate is shut against open: the Units page
:func:`half_lives`          histogram of the units' memory half-lives: the Units page
:func:`correlations`        Pearson r of every unit with every feature: the Features page
:func:`probes`              held-out probe scores with their control tasks, for one feature: the Features page
:func:`selectivity`         probe selectivity, signal x feature: the Features page
==========================  ===========================================================================

Examples
--------
>>> import gatelens
>>> from gatelens._examples import tiny_inputs, tiny_lstm_model
>>> trace = gatelens.extract(tiny_lstm_model(), tiny_inputs(n=2))
>>> chart = gatelens.plot.gates(trace, "lstm", units=[0, 2], sequence=1)
>>> [c.title for c in chart.vconcat]
['input', 'input gate', 'forget gate', 'output gate', 'candidate', 'cell state']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gatelens.analysis import signals as registry
from gatelens.analysis.trace import LayerTrace, Trace
from gatelens.dashboards import charts, core, render, signal_lists
from gatelens.errors import UsageError

__all__ = [
    "Html",
    "correlations",
    "decomposition",
    "gates",
    "half_lives",
    "preactivations",
    "probes",
    "retention",
    "saturation",
    "selectivity",
    "text",
    "unit",
]


class Html(str):
    """An HTML fragment that Jupyter renders (``_repr_html_``); as a ``str`` it is the markup itself."""

    def _repr_html_(self) -> str:
        return str(self)


def _layer(trace: Trace, layer: str) -> LayerTrace:
    if not isinstance(trace, Trace):  # (an Analysis holds tables, not the signals of each step)
        raise UsageError(
            f"expected a Trace (gatelens.extract, gatelens.open_run or gatelens.write_run), got {type(trace).__name__}"
        )
    if layer not in trace.layer_traces:
        raise UsageError(f"no recurrent layer {layer!r}; the trace has {trace.layers}")
    return trace[layer]


def _sequence(trace: Trace, sequence: int) -> int:
    n = trace.n_sequences
    if not isinstance(sequence, (int, np.integer)) or isinstance(sequence, bool) or not 0 <= sequence < n:
        raise UsageError(f"sequence must be an integer in 0..{n - 1}, got {sequence!r}")
    return int(sequence)


def _units(lt: LayerTrace, units: Sequence[int] | int | None) -> list[int]:
    n = lt.info.units
    if units is None:
        return list(range(n))
    picked = [units] if isinstance(units, (int, np.integer)) else list(units)
    bad = [u for u in picked if not isinstance(u, (int, np.integer)) or not 0 <= u < n]
    if bad or not picked:
        raise UsageError(f"units must be integers in 0..{n - 1} of layer {lt.info.name!r}, got {units!r}")
    return sorted({int(u) for u in picked})


def _unit(lt: LayerTrace, unit: int) -> int:
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)):
        raise UsageError(f"unit must be one integer in 0..{lt.info.units - 1} of layer {lt.info.name!r}, got {unit!r}")
    return _units(lt, unit)[0]


def _signals(lt: LayerTrace, signals: Sequence[str] | str | None, default: Sequence[str]) -> list[str]:
    if signals is None:
        return [s for s in default if s in lt.info.signals]
    picked = [signals] if isinstance(signals, str) else list(signals)
    unknown = [s for s in picked if s not in lt.info.signals]
    if unknown or not picked:
        raise UsageError(
            f"layer {lt.info.name!r} ({lt.info.cell_type}) has no signal(s) {unknown or picked}; "
            f"it has {list(lt.info.signals)}"
        )
    return picked


def _table(analysis: Any, name: str, step: str | None = None) -> Any:
    """``analysis.<name>``, or a UsageError that says why the table is empty."""
    df = getattr(analysis, name, None)
    if df is None:
        raise UsageError(f"expected an Analysis (gatelens.analyze), got {type(analysis).__name__}")
    if df.empty:
        why = getattr(analysis, "skipped", {}).get(step or name, "the analysis step did not run or found nothing")
        raise UsageError(f"the analysis has no {name} table: {why}")
    return df


def gates(
    trace: Trace,
    layer: str,
    units: Sequence[int] | int | None = None,
    sequence: int = 0,
    *,
    signals: Sequence[str] | str | None = None,
    width: int = 700,
    relative: bool = False,
) -> Any:
    """The input of one sequence on top, then a heat strip per signal: a row per unit, a column per step.

    Parameters
    ----------
    trace : Trace
    layer : str
    units : int or list of int, optional
        Rows of the strips (default every unit).
    sequence : int
    signals : str or list of str, optional
        Default the gates, the candidate and the state (LSTM ``input_gate, forget_gate, candidate,
        output_gate, cell_state``; GRU ``update_gate, reset_gate, candidate, hidden_state``).
    width : int
        Of the plot area, in pixels.
    relative : bool
        Colour each unit's row from its own minimum to its own maximum over the shown steps (a gate between
        0.85 and 0.99 then spans the whole ramp); the tooltip keeps the value itself.

    Returns
    -------
    altair.VConcatChart
        Padded steps are left out; gates on a fixed [0, 1] scale, signed signals on a symmetric one.

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> trace, sig = example_trace("gru", n=2, steps=5, units=3, reset_after=True)
    >>> sig["update_gate"][:] = np.random.default_rng(0).uniform(size=(2, 5, 3))
    >>> chart = gates(trace, "gru", units=[0, 2], sequence=1)
    >>> type(chart).__name__, [c.title for c in chart.vconcat]
    ('VConcatChart', ['input', 'update gate', 'reset gate', 'candidate', 'hidden state'])
    >>> strip = chart.vconcat[1].data                           # the update gate: a row per unit, a cell per step
    >>> sorted(set(strip["unit"])), len(strip)
    ([0, 2], 10)
    >>> bool(np.allclose(strip.value[strip.unit == 2], sig["update_gate"][1, :, 2]))   # unit 2 of sequence 1
    True
    >>> [c.title for c in gates(trace, "gru", signals="reset_gate").vconcat]
    ['input', 'reset gate']
    """
    lt = _layer(trace, layer)
    seq = _sequence(trace, sequence)
    names = _signals(lt, signals, signal_lists.strip_options(lt.info.cell_type, lt.info.signals))
    strips = core.sequence_signals(trace, layer, seq, names)
    mask = core.sequence_mask(trace, layer, seq)
    return charts.series_with_strips(
        core.input_frame(trace, layer, seq), strips, _units(lt, units), mask=mask, width=width, relative=relative
    )


def text(
    trace: Trace,
    layer: str,
    units: Sequence[int] | int | None = None,
    sequence: int = 0,
    *,
    signal: str | None = None,
    relative: bool = False,
) -> Html:
    """The text of one sequence once per unit, each character coloured by ``signal`` (hover: every signal).

    Parameters
    ----------
    trace : Trace
        Of a text model (token inputs).
    layer : str
    units : int or list of int, optional
        Default the first 6.
    sequence : int
    signal : str, optional
        Default the state (``cell_state``, else ``hidden_state``).
    relative : bool
        Scale each row from its own minimum to its own maximum on the real steps.

    Returns
    -------
    Html
        Every token goes through ``html.escape``: a token such as ``<script>`` shows as text.

    Examples
    --------
    >>> import numpy as np
    >>> from gatelens._examples import example_states
    >>> lt = example_states(np.array([[[0.2], [-0.7]]], np.float32))
    >>> t = Trace({"rnn": lt}, tokens=np.array([[0, 1]]), vocabulary=["<b>", "x"])
    >>> page = text(t, "rnn")
    >>> "&lt;b&gt;" in page and "<b>" not in page
    True
    """
    lt = _layer(trace, layer)
    seq = _sequence(trace, sequence)
    tokens = core.sequence_tokens(trace, seq)
    if tokens is None:
        raise UsageError("text() needs a text model's trace (token inputs); for numeric inputs use gates()")
    color_by = _signals(lt, signal, ())[0] if signal is not None else signal_lists.colour_options(lt.info.signals)[1]
    signals = core.sequence_signals(trace, layer, seq)
    signals.setdefault(color_by, np.asarray(lt[color_by][seq], np.float32))
    picked = _units(lt, units) if units is not None else list(range(min(6, lt.info.units)))
    mask = core.sequence_mask(trace, layer, seq)
    return Html(render.unit_rows_html(tokens, signals, color_by, picked, mask=mask, layer=layer, relative=relative))


def unit(trace: Trace, layer: str, unit: int, sequence: int = 0) -> Any:
    """One unit's gates and states over the real steps of one sequence, a line per signal.

    Examples
    --------
    >>> import gatelens
    >>> from gatelens._examples import tiny_inputs, tiny_lstm_model
    >>> trace = gatelens.extract(tiny_lstm_model(), tiny_inputs(n=2))
    >>> chart = gatelens.plot.unit(trace, "lstm", 1, sequence=0)
    >>> sorted(set(chart.data["signal"])), len(chart.data)    # 3 gates + 2 states over 4 steps
    (['cell_state', 'forget_gate', 'hidden_state', 'input_gate', 'output_gate'], 20)
    """
    lt = _layer(trace, layer)
    seq = _sequence(trace, sequence)
    u = _unit(lt, unit)
    df = trace.to_frame(layer, signal_lists.unit_line_signals(lt.info.signals), [seq])
    df = df[df["unit"] == u].reset_index(drop=True)
    if "token" not in df:
        df["token"] = ""
    return charts.unit_lines(df[["step", "signal", "value", "token"]], title=f"unit {u} of {layer} on sequence {seq}")


def decomposition(trace: Trace, layer: str, unit: int, sequence: int = 0, step: int | None = None) -> Any:
    """What the state of ``unit`` at ``step`` holds from each past step's write (exact: the bars sum to it).

    LSTM: the cell state, ``c_t = sum_j (f_(j+1) ... f_t) i_j g_j``; GRU: the hidden state. ``step``
    defaults to the last real step of the sequence.

    Examples
    --------
    >>> import gatelens
    >>> from gatelens._examples import tiny_inputs, tiny_lstm_model
    >>> trace = gatelens.extract(tiny_lstm_model(), tiny_inputs(n=2))
    >>> chart = gatelens.plot.decomposition(trace, "lstm", unit=0, sequence=1)
    >>> parts = chart.layer[0].data                          # bars: the initial state and 4 writes
    >>> len(parts), bool(abs(parts["contribution"].sum() - trace["lstm"]["cell_state"][1, 3, 0]) < 1e-5)
    (5, True)
    """
    from gatelens.analysis.decompose import cell_state_decomposition

    lt = _layer(trace, layer)
    if registry.with_role(lt.info.cell_type, "keep") is None:
        raise UsageError(f"layer {layer!r} is a {lt.info.cell_type}: it has no gated memory to decompose")
    seq = _sequence(trace, sequence)
    u = _unit(lt, unit)
    real = np.nonzero(core.sequence_mask(trace, layer, seq))[0]
    if real.size == 0:
        raise UsageError(f"every step of sequence {seq} is padding")
    if step is None:
        step = int(real[-1])
    elif not isinstance(step, (int, np.integer)) or int(step) not in set(real.tolist()):
        raise UsageError(f"step must be a real step of sequence {seq} (0..{trace.n_steps - 1}, unpadded), got {step!r}")
    df = cell_state_decomposition(trace, layer, seq, step=int(step), units=[u])
    return charts.cell_decomposition_chart(df, int(step))


def preactivations(
    trace: Trace, layer: str, unit: int, sequence: int = 0, *, gates: Sequence[str] | str | None = None
) -> Any:
    """Per gate, the pre-activation of ``unit`` at every step split into input, memory and bias, and the total.

    ``gates`` defaults to every block of the layer (LSTM ``input_gate, forget_gate, candidate,
    output_gate``). Needs the layer's weights (a trace from :func:`gatelens.extract` or a run has them).

    Examples
    --------
    >>> import gatelens
    >>> from gatelens._examples import tiny_inputs, tiny_lstm_model
    >>> trace = gatelens.extract(tiny_lstm_model(), tiny_inputs(n=2))
    >>> chart = gatelens.plot.preactivations(trace, "lstm", 2, gates="forget_gate")
    >>> total = chart.vconcat[0].layer[1].data["total"].to_numpy()
    >>> bool(abs(total - trace["lstm"]["forget_gate_pre"][0, :, 2]).max() < 1e-5)
    True
    """
    from gatelens.analysis.decompose import preactivation_decomposition

    lt = _layer(trace, layer)
    seq = _sequence(trace, sequence)
    u = _unit(lt, unit)
    blocks = registry.WEIGHT_BLOCKS[lt.info.cell_type]
    picked = list(blocks) if gates is None else ([gates] if isinstance(gates, str) else list(gates))
    unknown = [g for g in picked if g not in blocks]
    if unknown or not picked:
        raise UsageError(f"layer {layer!r} has no gate(s) {unknown or picked}; it has {list(blocks)}")
    df = preactivation_decomposition(trace, layer, sequences=[seq])
    return charts.preactivation_chart(df[df["unit"] == u].reset_index(drop=True), picked)


def retention(analysis: Any, layer: str, unit: int) -> Any:
    """Retention curves (share of memory kept over L steps) of every unit of ``layer``, ``unit`` in red.

    Examples
    --------
    >>> import gatelens
    >>> from gatelens._examples import example_trace
    >>> trace, sig = example_trace("lstm", n=3, steps=8, units=2)
    >>> sig["forget_gate"][:] = np.random.default_rng(0).uniform(0.5, 1.0, size=(3, 8, 2))
    >>> chart = retention(gatelens.analyze(trace, steps=["memory"]), "lstm", 1)
    >>> type(chart).__name__, chart.title
    ('LayerChart', 'retention: lstm unit 1 (red) and the others')
    >>> [c.mark.color for c in chart.layer], chart.layer[1].encoding.x.shorthand, chart.layer[1].encoding.y.shorthand
    (['#ccc', '#d62728'], 'lag:Q', 'retention:Q')
    """
    df = _table(analysis, "retention", "memory")
    if not (df["layer"] == layer).any():
        raise UsageError(f"no retention curves for layer {layer!r}; there are for {sorted(set(df['layer']))}")
    units = set(df.loc[df["layer"] == layer, "unit"].tolist())
    if unit not in units:
        raise UsageError(f"layer {layer!r} has no unit {unit!r} (0..{max(units)})")
    return charts.retention_chart(df, layer, int(unit))


def saturation(analysis: Any, gate: str | None = None) -> Any:
    """One point per unit: share of steps with ``gate`` below 0.1 (shut) against above 0.9 (open).

    ``gate`` defaults to the memory gate (``forget_gate``, else ``update_gate``), else the first gate there is.
    Click a point to select a unit (the selection is named :data:`gatelens.dashboards.charts.UNIT_PICK`).

    Examples
    --------
    >>> import gatelens
    >>> from gatelens._examples import tiny_inputs, tiny_lstm_model
    >>> result = gatelens.analyze(gatelens.extract(tiny_lstm_model(), tiny_inputs(n=2)), steps=["stats"])
    >>> chart = gatelens.plot.saturation(result)
    >>> chart.title, len(chart.layer[1].data)                 # one point per unit
    ('forget gate', 3)
    """
    units = _table(analysis, "units", "stats")
    present = signal_lists.saturation_gates(units["signal"])
    if gate is None:
        keep = {registry.with_role(cell, "keep") for cell in registry.CELL_TYPES}
        memory = [g for g in present if g in keep]
        if not (memory or present):
            raise UsageError("these layers have no gates (SimpleRNN)")
        gate = (memory or present)[0]
    elif gate not in present:
        raise UsageError(f"no gate {gate!r} in the analysis; it has {present}")
    return charts.saturation_scatter(units, gate)


def half_lives(analysis: Any, *, bins: int = 24) -> Any:
    """Histogram of the units' memory half-lives (log-spaced bins, stacked by layer).

    Units with an infinite half-life (a keep gate of exactly 1) cannot be drawn on a log axis: their
    number is the chart's subtitle.

    Examples
    --------
    >>> import gatelens
    >>> from gatelens._examples import tiny_inputs, tiny_lstm_model
    >>> result = gatelens.analyze(gatelens.extract(tiny_lstm_model(), tiny_inputs(n=2)), steps=["memory"])
    >>> chart = gatelens.plot.half_lives(result)
    >>> int(chart.data["units"].sum())                         # all 3 units are finite
    3
    """
    import altair as alt

    df = _table(analysis, "half_lives", "memory")
    chart, n_inf = charts.half_life_histogram(df, bins=bins)
    if n_inf:
        chart = chart.properties(
            title=alt.Title(
                "memory half-life of each unit", subtitle=f"{n_inf} unit(s) with an infinite half-life not drawn"
            )
        )
    return chart


def correlations(analysis: Any, signal: str | None = None, *, sort_by: str | None = None) -> Any:
    """Features (rows) x units (columns) coloured by Pearson r of ``signal`` (default the state).

    ``sort_by`` (a feature) orders the units by their r with it, strongest positive first.

    Examples
    --------
    >>> import numpy as np, pandas as pd, gatelens
    >>> from gatelens._examples import example_hidden
    >>> trace, h, seq, step = example_hidden(units=2)           # one SimpleRNN layer "rnn" of 2 random units
    >>> noise = np.random.default_rng(1).normal(scale=0.1, size=seq.size)
    >>> feats = pd.DataFrame({"sequence": seq, "step": step, "follows_0": h[seq, step, 0] + noise})
    >>> result = gatelens.analyze(trace, features=feats, steps=["features", "correlations"])
    >>> chart = correlations(result, sort_by="follows_0")
    >>> enc = chart.to_dict()["encoding"]
    >>> type(chart).__name__, enc["x"]["field"], enc["y"]["field"], enc["color"]["field"], enc["x"]["sort"]
    ('Chart', 'unit_label', 'feature', 'pearson_r', ['rnn:0', 'rnn:1'])
    >>> chart.data[["unit_label", "feature"]].values.tolist()    # the state's r: a cell per unit and feature
    [['rnn:0', 'step'], ['rnn:0', 'follows_0'], ['rnn:1', 'step'], ['rnn:1', 'follows_0']]
    """
    df = _table(analysis, "correlations")
    present = list(dict.fromkeys(df["signal"]))
    if signal is None:
        signal = signal_lists.correlation_default(present)
    elif signal not in present:
        raise UsageError(f"no correlations of {signal!r}; there are of {present}")
    if sort_by is not None and not (df["feature"] == sort_by).any():
        raise UsageError(f"no feature {sort_by!r}; the features are {list(dict.fromkeys(df['feature']))}")
    return charts.correlation_heatmap(df, signal, sort_by=sort_by)


def probes(analysis: Any, feature: str) -> Any:
    """Held-out score of the linear probe of ``feature`` per layer and signal, a tick at its control task.

    Examples
    --------
    >>> import numpy as np, pandas as pd, gatelens
    >>> from gatelens._examples import example_hidden
    >>> trace, h, seq, step = example_hidden(units=2)           # one SimpleRNN layer "rnn" of 2 random units
    >>> noise = np.random.default_rng(1).normal(scale=0.1, size=seq.size)
    >>> feats = pd.DataFrame({"sequence": seq, "step": step, "follows_0": h[seq, step, 0] + noise})
    >>> result = gatelens.analyze(trace, features=feats, steps=["features", "probes"])
    >>> chart = probes(result, "follows_0")
    >>> type(chart).__name__, chart.title
    ('LayerChart', 'probes for follows_0 (tick: control task)')
    >>> [c.encoding.x.shorthand for c in chart.layer], chart.layer[0].mark    # bar: the score; tick: the control
    (['score:Q', 'control_score:Q'], 'bar')
    >>> row = chart.data.iloc[0]
    >>> row.signal, bool(row.score > 0.9), bool(abs(row.control_score) < 0.1)
    ('hidden_state', True, True)
    """
    df = _table(analysis, "probes")
    scored = df[(df["feature"] == feature) & df["score"].notna()]
    if scored.empty:
        have = list(dict.fromkeys(df.loc[df["score"].notna(), "feature"]))
        raise UsageError(f"no probe scores for feature {feature!r}; there are for {have}")
    return charts.probe_chart(df, feature)


def selectivity(analysis: Any) -> Any:
    """Selectivity (score minus control score) of every probe: signal x feature, a row per layer and signal.

    Examples
    --------
    >>> import numpy as np, pandas as pd, gatelens
    >>> from gatelens._examples import example_hidden
    >>> trace, h, seq, step = example_hidden(units=2)           # one SimpleRNN layer "rnn" of 2 random units
    >>> noise = np.random.default_rng(1).normal(scale=0.1, size=seq.size)
    >>> feats = pd.DataFrame({"sequence": seq, "step": step, "follows_0": h[seq, step, 0] + noise})
    >>> chart = selectivity(gatelens.analyze(trace, features=feats, steps=["features", "probes"]))
    >>> enc = chart.to_dict()["encoding"]
    >>> type(chart).__name__, chart.mark, enc["x"]["field"], enc["y"]["field"], enc["color"]["field"]
    ('Chart', 'rect', 'feature', 'row', 'selectivity')
    >>> chart.data[["row", "feature"]].values.tolist(), (chart.data["selectivity"] > 0.9).tolist()
    ([['rnn · hidden_state', 'step'], ['rnn · hidden_state', 'follows_0']], [False, True])
    """
    return charts.selectivity_heatmap(_table(analysis, "probes"))
