"""Unit explained: a plain-language summary of one unit, with the numbers, built by gatelens.dashboards.explain."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from gatelens import plot
from gatelens.dashboards import state
from gatelens.dashboards.explain import explain_unit, primer

st.title("Unit explained")
run = state.require_run()
trace = run.trace
sel_layer, sel_unit = state.selected_unit(run)

c1, c2 = st.columns(2)
layer = c1.selectbox("Layer", trace.layers, index=trace.layers.index(sel_layer), key="explain_layer")
n_units = trace[layer].info.units
unit = c2.number_input(
    f"Unit (0..{n_units - 1})", 0, n_units - 1, value=min(sel_unit, n_units - 1) if layer == sel_layer else 0,
    step=1, key="explain_unit",
)  # fmt: skip
unit = int(unit)
state.open_unit(layer, unit)

summary = explain_unit(trace, state.current_analysis(run), layer, unit)
with st.expander("What the gates do", expanded=False):
    st.write(primer(summary.cell_type))
st.markdown(f"#### {state.md_escape(summary.headline)}")
for title, body in summary.sections:
    st.markdown(f"**{state.md_escape(title)}.** {state.md_escape(body)}")
_sweep = st.session_state.get(f"whatif_sweep::{run.key}::{layer}")  # from the What if page's sweep
if _sweep is not None:
    from gatelens.dashboards.explain import sweep_sentence

    st.markdown(f"**What silencing it does.** {state.md_escape(sweep_sentence(_sweep, unit))}")

seq = state.selected_sequence(run)
st.altair_chart(plot.unit(trace, layer, unit, seq), width="content")  # the chart gatelens.plot.unit draws
c1, c2 = st.columns(2)
c1.page_link("views/memory.py", label="What its memory holds, step by step", icon=":material/history:")
over = "text" if trace.tokens is not None else "series"
c2.page_link("views/gates.py", label=f"Its gates over the {over}", icon=":material/text_fields:")
with st.expander("The numbers quoted above"):
    st.dataframe(
        pd.DataFrame({"quantity": list(summary.numbers), "value": list(summary.numbers.values())}), hide_index=True
    )
