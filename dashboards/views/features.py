"""Features: correlation of every unit with every feature, the top units per feature, probe scores by signal."""

from __future__ import annotations

import streamlit as st

from gatelens.analysis.correlate import top_units
from gatelens.dashboards import charts, signal_lists, stages, state

st.title("Features")
run = state.require_run()
a = run.analysis
corr = a.correlations
if not stages.need(run, "correlations", what="Correlations with the features"):
    st.stop()
if corr.empty:
    st.info(f"No correlations: {a.skipped.get('correlations', 'the step did not run')}.")
    st.stop()

signals = list(dict.fromkeys(corr["signal"]))
default = signal_lists.correlation_default(signals)
features = list(dict.fromkeys(corr["feature"]))
c1, c2 = st.columns(2)
signal = c1.selectbox("Signal", signals, index=signals.index(default), key="features_signal")
valid = corr[(corr["signal"] == signal) & corr["pearson_r"].notna()]
interesting = [f for f in features if f != "step" and (valid["feature"] == f).any()] or features
feature = c2.selectbox("Feature", features, index=features.index(interesting[0]), key="features_feature")

st.caption(
    "Built-in features (for text: bracket depth, inside quotes, position in line and word, character classes; for "
    "series: each input's value and change) and your own from the Data page. Pearson r over every analysed step; "
    "units are sorted by their r with the chosen feature; hover a cell for the unit, Spearman rho and the number "
    "of steps."
)
st.altair_chart(charts.correlation_heatmap(corr, signal, sort_by=feature), width="stretch")

st.subheader(f"Top units for {feature}")
top = top_units(corr, feature, signals=[signal], k=10)
st.dataframe(top[["rank", "layer", "unit", "signal", "pearson_r", "spearman_rho", "n", "note"]], hide_index=True)
if not top.empty and top["pearson_r"].notna().any():
    best = top.iloc[0]
    if st.button(f"Open unit {int(best['unit'])} of {best['layer']}", key="features_open"):
        state.open_unit(str(best["layer"]), int(best["unit"]))
        st.switch_page("views/explain.py")

st.subheader("Probes")
probes = a.probes
if not stages.need(run, "probes", what="Probes"):
    pass
elif probes.empty:
    st.info("No probes: no feature could be probed on these steps.")
else:
    st.caption(
        "A linear probe per layer, signal and feature reads the feature from all units at once, trained on some "
        "sequences and scored on held-out ones (accuracy or R^2). The tick is the same probe on a control task "
        "(random labels per token or input bin): a probe far above its control reads the feature, not the tokens."
    )
    if (probes["feature"] == feature).any() and probes.loc[probes["feature"] == feature, "score"].notna().any():
        st.altair_chart(charts.probe_chart(probes, feature), width="content")
    else:
        note = probes.loc[probes["feature"] == feature, "note"]
        st.info(f"No probe for {feature}: {note.iloc[0] if len(note) else 'not probed'}.")
    st.altair_chart(charts.selectivity_heatmap(probes), width="content")
    with st.expander("All probes"):
        st.dataframe(probes, hide_index=True)
