"""Gates over the input: text coloured by a signal (hover: every gate at that step), or a series with heat strips."""

from __future__ import annotations

import streamlit as st

from gatelens.analysis.sources import sequence_table, time_grid
from gatelens.dashboards import charts, continuous, core, render, signal_lists, state
from gatelens.dashboards.explain import notable_units

st.title("Gates over the input")
run = state.require_run()
trace = run.trace
sel_layer, sel_unit = state.selected_unit(run)

c1, c2 = st.columns([2, 1])
layer = c1.selectbox("Layer", trace.layers, index=trace.layers.index(sel_layer), key="gates_layer")
seq = c2.number_input(
    f"Sequence (0..{trace.n_sequences - 1})",
    min_value=0,
    max_value=trace.n_sequences - 1,
    value=state.selected_sequence(run),
    step=1,
    key="gates_sequence",
)
state.set_sequence(int(seq))
if (opened := st.session_state.pop("gatelens_step", None)) is not None:
    st.info(f"Opened from Search: sequence {int(seq)} at step {opened}.", icon=":material/search:")
st.caption(f"Sequence {int(seq)} of the analysed slice, {state.md_escape(core.sequence_origin(run, int(seq)))}.")
lt = trace[layer]
n_units = lt.info.units
signals = core.sequence_signals(trace, layer, int(seq))
mask = core.sequence_mask(trace, layer, int(seq))
start = [sel_unit] if layer == sel_layer else []
default_units = list(dict.fromkeys(start + notable_units(run.analysis, layer, n_units, k=6)))[:6]
tokens = core.sequence_tokens(trace, int(seq))

if tokens is not None:
    # the state by default: the units shown first are those whose state follows a feature best
    gate_first, keep = signal_lists.colour_options(list(signals))
    c1, c2, c3 = st.columns([1, 2, 1])
    color_by = c1.selectbox("Colour by", gate_first, index=gate_first.index(keep), key="gates_signal")
    units = c2.multiselect("Units", list(range(n_units)), default=default_units, key="gates_units")
    relative = c3.toggle("Relative scale", key="gates_relative", help="each unit from its own min to its own max")
    st.caption(
        "Each character is one step, its background the chosen signal there (blue: high; for signed signals "
        "red is negative). Hover a character to see every gate and state of that unit at that step."
    )
    if not units:
        st.info("Choose at least one unit.")
        st.stop()
    st.html(render.unit_rows_html(tokens, signals, color_by, units, mask=mask, layer=layer, relative=relative))
else:
    strip_names = signal_lists.strip_options(lt.info.cell_type, signals)
    c1, c2, c3 = st.columns([2, 2, 1.4])
    default = list(range(n_units)) if n_units <= 32 else notable_units(run.analysis, layer, n_units, k=12)
    units = c1.multiselect("Units", list(range(n_units)), default=sorted(default), key="gates_units")
    shown = c2.multiselect("Signals", strip_names, default=strip_names, key="gates_strips")
    relative = c3.toggle("Relative scale", key="gates_relative", help="each unit from its own min to its own max")
    table = sequence_table(trace)
    source = int(table["source_sequence"].to_numpy()[int(seq) * trace.n_steps])
    whole = source in continuous.stride1_sources(table) and c3.toggle(
        "Whole series", key="gates_whole", help="one strip over every window of this series, not one window"
    )
    if not units or not shown:
        st.info("Choose at least one unit and one signal.")
        st.stop()
    st.caption(
        "The input on top; below, one strip per signal with a row per unit and a column per step (gates from "
        "white, shut, to blue, open; candidate and cell state red below 0, blue above). Hover for values."
    )
    if whole:
        c = continuous.continuous_series(trace, layer, source, shown)
        st.caption(
            f"The whole series ({len(c.picks)} records{', the first ones' if c.truncated else ''}): each record "
            "at the latest step a window reaches it (the first window, then the last step of the window ending "
            "there, the state its forecast is made from)."
        )
        chart = charts.series_with_strips(c.x, c.strips, sorted(units), relative=relative, times=c.times)
    else:
        grid = time_grid(trace)
        chart = charts.series_with_strips(
            core.input_frame(trace, layer, int(seq)),
            {s: signals[s] for s in shown},
            sorted(units),
            mask=mask,
            relative=relative,
            times=None if grid is None else grid[int(seq)],
        )
    st.altair_chart(chart, width="content")
