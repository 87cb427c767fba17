"""What if: force one unit's gate or state and see the model's output before and after (gatelens.intervene)."""

from __future__ import annotations

import streamlit as st

from gatelens.dashboards import core, state, whatif

st.title("What if")
run = state.require_run()
model = state.require_model()
data = state.require_data(model)
trace = run.trace
sel_layer, sel_unit = state.selected_unit(run)

c1, c2, c3 = st.columns(3)
layer = c1.selectbox("Layer", trace.layers, index=trace.layers.index(sel_layer), key="whatif_layer")
n_units = trace[layer].info.units
unit = int(
    c2.number_input(
        f"Unit (0..{n_units - 1})", 0, n_units - 1, value=min(sel_unit, n_units - 1) if layer == sel_layer else 0,
        step=1, key="whatif_unit",
    )
)  # fmt: skip
seq = int(
    c3.number_input(
        f"Sequence (0..{trace.n_sequences - 1})", 0, trace.n_sequences - 1, value=state.selected_sequence(run),
        step=1, key="whatif_sequence",
    )
)  # fmt: skip
state.open_unit(layer, unit)
actions = whatif.ACTIONS[trace[layer].info.cell_type]
label = st.radio("Intervention", list(actions), horizontal=True, key="whatif_action")
action = actions[label]
x = data.dataset.x[seq : seq + 1]
with model.lock:
    df = whatif.what_if(model.model, x, layer, unit, action)
st.caption(
    f"The unit's {action[0].replace('_', ' ')} is forced at every step; the changed value flows on through the "
    "recurrence and the rest of the model. Below: "
    + (
        "the loss of the next token (−log p, nats) before and after, and its change per step."
        if df.attrs["measure"] == "loss"
        else "the model's output before and after, and its change per step."
    )
)
tokens = core.sequence_tokens(trace, seq)
st.altair_chart(whatif.change_chart(df, tokens), width="stretch")
if tokens is not None and len(tokens) == len(df):
    df.insert(1, "input", list(tokens))
st.dataframe(df, hide_index=True, key="whatif_table")

if st.button("Rank this unit: silence every unit of the layer in turn", key="whatif_sweep"):
    with model.lock, st.spinner("Sweeping…"):
        st.session_state[f"whatif_sweep::{run.key}::{layer}"] = whatif.silence_sweep(model.model, data.dataset.x, layer)
sweep = st.session_state.get(f"whatif_sweep::{run.key}::{layer}")
if sweep is not None:
    from gatelens.dashboards.explain import sweep_sentence

    st.markdown(state.md_escape(sweep_sentence(sweep, unit)))
