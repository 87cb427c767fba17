"""Model: pick a bundled demo or upload a .keras model; architecture, recurrent layers, verification badge."""

from __future__ import annotations

import streamlit as st

from gatelens.dashboards import core, demos, state

st.title("Model")
st.caption(
    "A bundled demo, or your own Keras model. Uploaded models are checked and read by gatelens's safe loader "
    "(no code from the file ever runs); the recurrent layers are then re-run from their weights and checked "
    "against Keras's own output."
)

available = state.demo_list()
current = state.model_choice()
sources = ["Bundled demo", "Upload my own"] if available else ["Upload my own"]
source = st.radio(
    "Model source",
    sources,
    index=0 if (current is not None and current.demo and available) else len(sources) - 1,
    horizontal=True,
    key="model_source",
)

if source == "Bundled demo":
    names = [d.name for d in available]
    idx = names.index(current.demo) if current is not None and current.demo in names else 0
    name = st.selectbox(
        "Demo model", names, index=idx, format_func=lambda n: available[names.index(n)].label, key="demo_model"
    )
    demo = available[names.index(name)]
    state.set_model_choice(state.demo_model_choice(demo))
    with st.expander("Model card: how it was trained and how well it does", expanded=False):
        metrics = demos.card_metrics(demo.card)
        if metrics:
            st.dataframe([{"metric": k, "value": str(v)} for k, v in metrics], hide_index=True, width="content")
        st.json(demo.card, expanded=False)
else:
    limit = state.UPLOAD_HELP.format(mb=state.max_upload_mb())
    up = st.file_uploader("Your model (.keras, or legacy .h5)", type=["keras", "h5"], key="model_upload", help=limit)
    vocab_up = st.file_uploader(
        "Vocabulary (.json: a list of tokens in id order), for a text model that carries none",
        type=["json"],
        key="vocab_upload",
        help=limit,
    )
    st.caption(limit)
    if up is not None:
        try:
            ref = state.save_upload(up, "model")
            vref = state.save_upload(vocab_up, "vocabulary") if vocab_up is not None else None
        except Exception as e:
            if not core.is_user_error(e):
                raise
            state.show_error(e)
            st.stop()
        state.set_model_choice(core.ModelChoice(model=ref, vocabulary=vref))
    elif current is None or current.demo:
        st.info("Upload a `.keras` model file to analyse it.", icon=":material/upload_file:")
        st.stop()
    else:
        st.caption(f"Current model: **{state.md_escape(current.model.name)}** (uploaded earlier in this session).")

model = state.require_model()

st.subheader(state.md_escape(model.model.name))
c1, c2, c3, c4 = st.columns(4)
c1.metric("Parameters", f"{model.params:,}")
c2.metric("Recurrent layers", len(model.recurrent))
if model.spec.is_text:
    c3.metric("Vocabulary", "none" if model.vocabulary is None else f"{len(model.vocabulary):,} tokens")
else:
    c3.metric("Input features", model.spec.n_features or 1)
c4.metric("Loaded in", f"{model.load_seconds:.2f} s", help=f"safe loader path: {model.load_path}")
st.caption(f"Input: {state.md_escape(model.spec.describe())}")
if model.needs_vocabulary:
    st.warning(
        "This model takes token ids but carries no vocabulary: tokens will show as numbers and text files cannot "
        "be read. Upload its vocabulary (a JSON list of tokens in id order) above.",
        icon=":material/warning:",
    )

st.markdown("**Recurrent layers found** (each direction of a Bidirectional separately)")
st.dataframe(model.recurrent, hide_index=True, width="stretch")
with st.expander("Architecture: every layer", expanded=True):
    st.dataframe(model.architecture, hide_index=True, width="stretch")

st.markdown("**Verification**: the cells re-run from the weights against Keras's own hidden states")
if state.data_choice() is None:
    st.info("Verification needs input: upload data on the Data page.", icon=":material/info:")
    st.page_link("views/data.py", label="Go to the Data page", icon=":material/dataset:")
    st.stop()
run, err = state.try_run()
if err is not None:
    st.badge("Verification: FAIL", icon=":material/cancel:", color="red")
    state.show_error(err)
    st.stop()
worst = max(run.verification.values())
st.badge(f"Verification: PASS · max error {worst:.1e}", icon=":material/check_circle:", color="green")
st.dataframe(
    [
        {
            "layer": name,
            "max |h recomputed - h Keras|": f"{err_:.2e}",
            "status": "pass",
        }
        for name, err_ in run.verification.items()
    ],
    hide_index=True,
)
st.caption(
    f"On {run.trace.n_sequences} sequence(s) x {run.trace.n_steps} steps. A layer passes when the largest "
    f"difference, relative to 1 + |h|, is at most {run.tolerance:g}. Extraction took {run.seconds['extract']:.2f} s, "
    f"the analysis {run.seconds['analyze']:.2f} s."
)
