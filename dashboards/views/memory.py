"""Memory: what a unit's cell still holds from each past step, its retention curve, and what drives its gates."""

from __future__ import annotations

import numpy as np
import streamlit as st

from gatelens.analysis import signals as registry
from gatelens.dashboards import charts, core, render, signal_lists, state

st.title("Memory")
run = state.require_run()
trace = run.trace
layers = signal_lists.memory_layers(trace)
if not layers:
    st.info("No LSTM or GRU layer: a SimpleRNN has no gated memory to decompose.")
    st.stop()
sel_layer, sel_unit = state.selected_unit(run)
if sel_layer not in layers:
    sel_layer, sel_unit = layers[0], 0

c1, c2, c3 = st.columns(3)
layer = c1.selectbox("Layer", layers, index=layers.index(sel_layer), key="memory_layer")
n_units = trace[layer].info.units
unit = c2.number_input(
    f"Unit (0..{n_units - 1})", 0, n_units - 1, value=min(sel_unit, n_units - 1) if layer == sel_layer else 0,
    step=1, key="memory_unit",
)  # fmt: skip
seq = c3.number_input(
    f"Sequence (0..{trace.n_sequences - 1})", 0, trace.n_sequences - 1, value=state.selected_sequence(run), step=1,
    key="memory_sequence",
)  # fmt: skip
unit, seq = int(unit), int(seq)
state.open_unit(layer, unit)
state.set_sequence(seq)
st.caption(f"Sequence {seq} of the analysed slice, {state.md_escape(core.sequence_origin(run, seq))}.")
mask = core.sequence_mask(trace, layer, seq)
real = np.nonzero(mask)[0]
if real.size == 0:
    st.info("Every step of this sequence is padding.")
    st.stop()
step = st.select_slider("Step", options=[int(s) for s in real], value=int(real[-1]), key="memory_step")

state_signal = registry.memory_state(trace[layer].info.cell_type)
dec = state.cell_decomposition(run.key, layer, seq, int(step), unit, run)
stored = float(np.asarray(trace[layer][state_signal][seq, step, unit]))
total = float(dec["contribution"].sum())
st.subheader(f"What the {registry.label(state_signal)} of unit {unit} holds at step {step}")
c1, c2, c3 = st.columns(3)
c1.metric(f"stored {state_signal}", f"{stored:+.6f}")
c2.metric(
    "sum of the parts below",
    f"{total:+.6f}",
    help=f"The decomposition is exact: the parts sum to the stored state (difference {abs(total - stored):.1e}, "
    "float32 rounding of the stored value).",
)
c3.metric("steps still present (> 1% of |state|)", int((dec["contribution"].abs() > 0.01 * abs(stored)).sum()))
st.caption(
    "Each bar: what one past step wrote (input gate x candidate) times every forget gate since: how much of that "
    "write is still in the cell now. c_t = sum over j of (f_(j+1) ... f_t) i_j g_j."
)
st.altair_chart(charts.cell_decomposition_chart(dec, int(step)), width="content")

tokens = core.sequence_tokens(trace, seq)
if tokens is not None:
    values = np.zeros(len(tokens))
    src = dec[dec["source_step"] >= 0]
    values[src["source_step"].to_numpy()] = src["contribution"].to_numpy()
    top = float(np.abs(values).max()) or 1.0
    scale = render.Scale("diverging", -top, top)  # a share of the state: scaled to its largest part
    hover = [f"step {t} · {tokens[t]!r}\nstill in the state: {values[t]:+.4f}" for t in range(len(tokens))]
    shown = np.arange(len(tokens)) <= step
    st.html(
        render.STYLE
        + render.legend_html(scale, "still in the state")
        + render.colored_text_html(tokens, np.where(shown, values, np.nan), scale=scale, hover=hover, mask=mask)
    )

st.subheader("Retention")
ret = run.analysis.retention
if not ret.empty and (ret["layer"] == layer).any():
    st.altair_chart(charts.retention_chart(ret, layer, unit), width="content")
    hl = run.analysis.half_lives
    row = hl[(hl["layer"] == layer) & (hl["unit"] == unit)]
    if not row.empty:
        st.caption(
            f"Retention(L): the mean share of the memory kept over L consecutive steps (product of the keep gate). "
            f"Half-life of this unit: {float(row['half_life_steps'].iloc[0]):.3g} steps."
        )

st.subheader("What drives its gates at each step")
pre = state.preactivations(run.key, layer, seq, unit, run)
gates = list(dict.fromkeys(pre["gate"]))
st.caption(
    "Each gate's pre-activation (before the sigmoid) split exactly into the input's part (x W), the memory's part "
    "(h_(t-1) U) and the bias; the black line is their sum."
)
st.altair_chart(charts.preactivation_chart(pre, gates), width="content")
