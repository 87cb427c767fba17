"""Unit explained: a plain-language summary of one unit with its scored explanation, its top and quantile examples
and its histogram, built by gatelens.dashboards.explain and gatelens.dashboards.unit_examples."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from gatelens import plot
from gatelens.dashboards import signal_lists, stages, state
from gatelens.dashboards import unit_examples as ux
from gatelens.dashboards.explain import explain_unit, primer

st.title("Unit explained")
run = state.require_run()
trace = run.trace
analysis = state.current_analysis(run)
explained = stages.need(run, "explanations", what="Scores of the explanations")
sel_layer, sel_unit = state.selected_unit(run)

c1, c2, c3 = st.columns([2, 2, 3])
layer = c1.selectbox("Layer", trace.layers, index=trace.layers.index(sel_layer), key="explain_layer")
n_units = trace[layer].info.units
by_score = c2.radio("Order units", ["by explanation score", "by number"], horizontal=True, key="explain_order")
explanations = getattr(analysis, "explanations", None)
order = ux.units_by_score(explanations, layer, n_units) if by_score == "by explanation score" else list(range(n_units))
scores = {u: ux.score_row(analysis, layer, u) for u in order}
current = min(sel_unit, n_units - 1) if layer == sel_layer else order[0]
unit = c3.selectbox(
    f"Unit (0..{n_units - 1})", order, index=order.index(current), key="explain_unit",
    format_func=lambda u: f"{u} · score {float(scores[u]['score']):.2f}"
    if scores[u] is not None and pd.notna(scores[u]["score"]) else f"{u}",
)  # fmt: skip
unit = int(unit)
state.open_unit(layer, unit)

summary = explain_unit(trace, analysis, layer, unit)
stages.need(run, "events", "drivers", "correlations", "clusters", "probes", what="The summary below fills in")
with st.expander("What the gates do", expanded=False):
    st.write(primer(summary.cell_type))
st.markdown(f"#### {state.md_escape(summary.headline)}")
st.markdown(f"**Scored explanation.** {state.md_escape(ux.score_text(scores[unit]))}")
st.caption(
    "The explanation is one feature, its sign and its lag, chosen on the even sequences; its score is the "
    "correlation of the simulation sign x feature with the unit's real signal on the odd (held-out) sequences; "
    "the control scores it again with the feature shuffled (near 0 when the score means anything)."
)
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

st.subheader("Where else it does this: examples over the whole run")
names = signal_lists.unit_line_signals(trace[layer].info.signals)
_, keep = signal_lists.colour_options(names)
c1, c2 = st.columns(2)
signal = c1.selectbox("Signal", names, index=names.index(keep) if keep in names else 0, key="explain_ex_signal")
kinds = ux.example_kinds(analysis, layer, unit, signal)
if not stages.need(run, "examples", what="Examples and histogram"):
    pass
elif not kinds:
    st.info("No examples: the analysis's examples step did not run.")
else:
    kind = c2.selectbox("Examples", kinds, format_func=ux.kind_label, key="explain_ex_kind")
    rows = ux.unit_examples(analysis, layer, unit, signal, kind)
    hist = ux.unit_histogram(analysis, layer, unit, signal)
    if trace.tokens is not None:
        st.caption(
            "Each line is the window around one example (its own step outlined), coloured by the signal as on the "
            "gates page; hover a character for its step and value."
        )
        st.html(ux.examples_html(rows, signal, hist))
    else:
        st.caption("One strip per example: the signal over its window, the example's own step outlined at 0.")
        st.altair_chart(ux.examples_strips(rows, signal, hist), width="content")
    if not hist.empty:
        title = f"{signal.replace('_', ' ')} of unit {unit}: {int(hist['count'].sum())} steps of the run"
        st.altair_chart(ux.histogram_chart(hist, signal, title), width="content")

with st.expander("The numbers quoted above"):
    st.dataframe(
        pd.DataFrame({"quantity": list(summary.numbers), "value": list(summary.numbers.values())}), hide_index=True
    )
