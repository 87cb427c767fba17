"""Units: gate saturation per unit, memory half-lives, clusters with their archetypes; pick a unit to open it."""

from __future__ import annotations

import streamlit as st

from gatelens.dashboards import charts, signal_lists, stages, state

st.title("Units")
run = state.require_run()
a = run.analysis
trace = run.trace
OPEN_LAYER, OPEN_UNIT = "units_open_layer", "units_open_unit"


def _open(layer: str, unit: int) -> None:
    """Open a unit and show it in the "Open a unit" inputs."""
    state.open_unit(layer, unit)
    st.session_state[OPEN_LAYER] = layer
    st.session_state[OPEN_UNIT] = min(int(unit), trace[layer].info.units - 1)


def _on_pick(key: str) -> None:
    picked = st.session_state[key].selection.get(charts.UNIT_PICK) or []
    if picked:
        _open(str(picked[0]["layer"]), int(picked[0]["unit"]))


def _on_row(table) -> None:
    rows = st.session_state["units_table"].selection.get("rows", [])
    if rows:
        row = table.iloc[rows[0]]
        _open(str(row["layer"]), int(row["unit"]))


def _on_layer() -> None:
    _open(st.session_state[OPEN_LAYER], st.session_state.get(OPEN_UNIT, 0))


def _on_unit() -> None:
    state.open_unit(st.session_state[OPEN_LAYER], st.session_state[OPEN_UNIT])


if OPEN_LAYER not in st.session_state:
    _open(*state.selected_unit(run))

gates = signal_lists.saturation_gates(a.units["signal"])
st.markdown(
    "**Saturation**: one point per unit. Right: the gate is shut (< 0.1) on many steps; top: open (> 0.9) on many "
    "steps; near the origin it mostly sits in between. Click a point to open that unit."
)
if gates:
    per_row = min(len(gates), 2)  # narrower scatters cut their axis titles and legends
    cols = [c for i in range(0, len(gates), per_row) for c in st.columns(per_row)]
    for col, gate in zip(cols, gates):
        with col:
            st.altair_chart(
                charts.saturation_scatter(a.units, gate),
                on_select=lambda key=f"units_scatter_{gate}": _on_pick(key),
                selection_mode=charts.UNIT_PICK,
                key=f"units_scatter_{gate}",
                width="stretch",
            )
else:
    st.info("These layers have no gates (SimpleRNN).")

if not a.half_lives.empty:
    chart, n_inf = charts.half_life_histogram(a.half_lives)
    st.altair_chart(chart, width="content")
    note = (
        f"{n_inf} unit(s) have an infinite half-life (their keep gate is 1 on every step) and are not drawn. "
        if n_inf
        else ""
    )
    st.caption(
        note + "Half-life: steps after which a unit keeps half of its memory at its average forget (GRU: update) "
        "gate, ln(0.5) / mean ln(gate)."
    )

st.subheader("Clusters")
cl = a.clusters
if not stages.need(run, "clusters", what="Clusters"):
    pass
elif cl.empty:
    st.info(f"No clusters: {a.skipped.get('clusters', 'the clustering step did not run')}.")
else:
    summary = (
        cl.assign(member=cl["layer"].astype(str) + ":" + cl["unit"].astype(str))
        .assign(traits=cl["traits"] if "traits" in cl.columns else "")
        .groupby(["cluster", "archetype", "traits"], sort=True)
        .agg(
            units=("unit", "size"),
            members=("member", lambda s: ", ".join(list(s)[:24]) + (" …" if len(s) > 24 else "")),
        )
        .reset_index()
    )
    st.dataframe(summary, hide_index=True)
    st.caption(
        "Units clustered by their gate statistics, half-life and correlations (k-means, k by silhouette); each "
        "cluster is named by the archetype of its median member, and by what sets it apart from the other units "
        "(traits: its most distinctive statistics). Select a row below to open a unit."
    )
    table = cl[
        ["layer", "unit", "cluster", "archetype", "unit_archetype", "half_life_steps", "top_feature", "top_abs_r"]
    ]
    st.dataframe(
        table,
        hide_index=True,
        on_select=lambda: _on_row(table),
        selection_mode="single-row",
        key="units_table",
        height=280,
    )

st.subheader("Open a unit")
c1, c2 = st.columns(2)
layer = c1.selectbox("Layer", trace.layers, key=OPEN_LAYER, on_change=_on_layer)
n = trace[layer].info.units
unit = c2.number_input(f"Unit (0..{n - 1})", 0, n - 1, step=1, key=OPEN_UNIT, on_change=_on_unit)
st.markdown(f"Opened: **{state.md_escape(layer)} · unit {int(unit)}**")
rows = a.units[(a.units["layer"] == layer) & (a.units["unit"] == int(unit))]
st.dataframe(
    rows[["signal", "mean", "std", "frac_below_0.1", "frac_above_0.9", "frac_saturated", "mean_slope"]],
    hide_index=True,
)
c1, c2 = st.columns(2)
c1.page_link("views/explain.py", label="Unit explained", icon=":material/school:")
c2.page_link("views/memory.py", label="Its memory", icon=":material/history:")
