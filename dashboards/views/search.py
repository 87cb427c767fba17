"""Search: drag over a span of steps on the chart (or type its step numbers), see the units on over it and every
span of the data where they are on.

Also a unit-signal condition ("forget_gate of lstm:5 below 0.1"). Select a match to open its sequence on the
gates page. The search is gatelens.analysis.search.search on the run's trace (streamed a chunk at a time).
"""

from __future__ import annotations

import streamlit as st

from gatelens.analysis import signals as registry
from gatelens.analysis.search import QueryError, SpanQuery, search
from gatelens.dashboards import core, span_select, state

st.title("Search")
run = state.require_run()
trace = run.trace
STEP = "gatelens_step"  # the step a match opens at (read by the gates page's caption)

mode = st.radio("Query", ["A span of a sequence", "A condition"], horizontal=True, key="search_mode")
layer = st.selectbox("Layer", trace.layers, key="search_layer")
lt = trace[layer]
n, t_len, _ = lt.shape
try:
    if mode == "A span of a sequence":
        c1, c2, c3 = st.columns(3)
        signals = registry.not_pre(lt.info.signals)
        output = registry.with_role(lt.info.cell_type, "output")
        default = signals.index(output) if output in signals else 0
        signal = c1.selectbox("Signal", signals, index=default, key="search_signal")
        seq = c2.number_input(f"Sequence (0..{n - 1})", 0, n - 1, value=state.selected_sequence(run), key="search_seq")
        thr = c3.number_input("On at >=", value=0.5, step=0.05, key="search_threshold")
        # the span: dragged over the chart (a new brush sets the step boxes below), or typed into them
        values = core.sequence_signals(trace, layer, int(seq), [signal])[signal]
        drawn = st.altair_chart(
            span_select.span_chart(values, signal, mask=core.sequence_mask(trace, layer, int(seq))),
            on_select="rerun",
            key="search_brush",
            width="content",
        )
        brushed = span_select.brushed_span(drawn.selection if drawn is not None else {}, t_len)
        if brushed is not None and brushed != st.session_state.get("search_brush_applied"):
            st.session_state["search_brush_applied"] = brushed
            st.session_state["search_start"], st.session_state["search_end"] = brushed
        st.session_state.setdefault("search_start", 0)
        st.session_state.setdefault("search_end", min(t_len, 5))
        st.session_state["search_start"] = min(int(st.session_state["search_start"]), t_len - 1)
        st.session_state["search_end"] = min(max(int(st.session_state["search_end"]), 1), t_len)
        c4, c5 = st.columns(2)
        start = c4.number_input(f"From step (0..{t_len - 1})", 0, t_len - 1, key="search_start")
        end = c5.number_input(f"To step (excl., ..{t_len})", 1, t_len, key="search_end")
        result = search(trace, SpanQuery(int(seq), int(start), int(end), float(thr), layer, signal))
        st.markdown(f"**Units on over the span** ({signal} >= {thr:g}): {', '.join(map(str, result.units))}")
    else:
        keep = registry.with_role(lt.info.cell_type, "keep") or registry.memory_state(lt.info.cell_type)
        text = st.text_input("Condition", value=f"{keep} of {layer}:0 below 0.1", key="search_where")
        result = search(trace, text, layer=layer)
except QueryError as e:
    state.show_error(e)
    st.stop()

st.caption(
    f"{result.n_matches} matching span(s) of {state.md_escape(result.query)}; the best {len(result.matches)} "
    "below, best first. Select a row to open that sequence at that step on the gates page."
)
table = result.matches[["rank", "sequence", "start", "end", "length", "score", "overlap"]]
event = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="single-row", key="search_matches")
rows = event.selection.get("rows", []) if event is not None else []
if rows:
    row = table.iloc[rows[0]]
    state.set_sequence(int(row["sequence"]))
    st.session_state["gates_sequence"] = int(row["sequence"])  # the gates page's own input follows
    st.session_state[STEP] = int(row["start"])
    st.switch_page("views/gates.py")
