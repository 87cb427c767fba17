"""Data: the demo's bundled input or an upload (.txt, .csv, .npy, .npz), an optional features CSV, and a preview."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from gatelens.dashboards import core, stages, state
from gatelens.models.strings import recorded_unknown_tokens

st.title("Data")
model = state.require_model()
spec = model.spec
st.caption(f"The model takes {state.md_escape(spec.describe())}.")

current = state.data_choice()
demo = state.find_demo(model.choice.demo)
has_demo_data = demo is not None and demo.data_path is not None
sources = (["Bundled demo data"] if has_demo_data else []) + ["Upload"]
source = st.radio(
    "Data source",
    sources,
    index=0 if (has_demo_data and (current is None or current.demo)) else len(sources) - 1,
    horizontal=True,
    key="data_source",
)
limit = state.UPLOAD_HELP.format(mb=state.max_upload_mb())


def _slice_inputs(first: int, count: int | None, which: str) -> tuple[int, int | None]:
    """Every sequence by default; a slice (first, count) only when the user turns it on."""
    sliced = st.toggle(
        "Analyse a slice only",
        value=count is not None,
        key=f"data_slice_{which}",
        help="By default every sequence of the file is analysed, in the background with progress; the pages show "
        "what is ready as the analysis goes on. A slice is analysed sooner.",
    )
    if not sliced:
        return 0, None
    c1, c2 = st.columns(2)
    first = c1.number_input("First sequence", min_value=0, value=int(first), step=1, key=f"data_first_{which}")
    count = c2.number_input(
        "Sequences to analyse",
        min_value=1,
        max_value=100_000,
        value=int(count or 256),
        step=1,
        key=f"data_count_{which}",
        help="Few sequences analyse in seconds; the statistics get steadier with more.",
    )
    return int(first), int(count)


choice: core.DataChoice | None = None
if source == "Bundled demo data":
    base = state.demo_data_choice(demo)
    keep = current if current is not None and current.demo and current.data == base.data else base
    st.markdown(f"**{state.md_escape(base.data.name)}** · the data this demo was trained on")
    origin = demo.card.get("data", {}).get("source", {}).get("origin")
    if origin:
        st.caption(state.md_escape(origin))
    first, count = _slice_inputs(keep.first, keep.count, "demo")
    choice = replace(base, first=first, count=count, features=keep.features)
else:
    up = st.file_uploader(
        "Data file (.txt text, .csv series, .npy / .npz arrays)",
        type=["txt", "csv", "npy", "npz"],
        key="data_upload",
        help=limit,
    )
    st.caption(limit)
    prev = current if current is not None and not current.demo else None
    ref = None
    if up is not None:
        try:
            ref = state.save_upload(up, "data")
        except Exception as e:
            if not core.is_user_error(e):
                raise
            state.show_error(e)
            st.stop()
    elif prev is not None:
        ref = prev.data
        st.caption(f"Current data: **{state.md_escape(ref.name)}** (uploaded earlier in this session).")
    if ref is None:
        st.info("Upload a data file for the model.", icon=":material/upload_file:")
        st.stop()
    same = prev is not None and prev.data == ref
    suffix = Path(ref.path).suffix.lower()
    window = stride = level = None
    columns: tuple[str, ...] | None = None
    if suffix in (".csv", ".txt"):
        st.markdown("**Windowing**: long series and texts are cut into windows of the model's length")
        c1, c2, c3 = st.columns(3)
        if spec.n_steps is not None:
            c1.number_input("Window (steps)", value=int(spec.n_steps), disabled=True, key="data_window_fixed")
        else:
            w = c1.number_input(
                "Window (steps, 0: each sequence whole)", min_value=0, value=int((same and prev.window) or 0), step=1,
                key="data_window",
            )  # fmt: skip
            window = int(w) or None
        default_stride = (same and prev.stride) or spec.n_steps or 0
        s = c2.number_input(
            "Stride (steps between window starts)", min_value=0, value=int(default_stride), step=1, key="data_stride"
        )
        stride = int(s) or None
        if suffix == ".csv":
            header = [h for h in core.csv_header(ref.path) if h != "sequence"]
            if header:
                chosen = c3.multiselect(
                    "Input columns, in order (default: every numeric column)",
                    header,
                    default=[c for c in ((same and prev.columns) or ()) if c in header],
                    key="data_columns",
                )
                columns = tuple(chosen) or None
        else:
            levels = ["char", "word"]
            lv = (same and prev.level) or spec.level or "char"
            level = c3.radio("Tokens", levels, index=levels.index(lv), horizontal=True, key="data_level")
    first, count = _slice_inputs(prev.first if same else 0, prev.count if same else None, "upload")
    choice = core.DataChoice(
        data=ref,
        window=window,
        stride=stride,
        columns=columns,
        level=level,
        first=first,
        count=count,
        features=prev.features if prev is not None else None,
    )

feat_up = st.file_uploader(
    "Optional features (.csv with columns sequence, step and one column per feature; sequence numbers the file's "
    "sequences, of which the analysed slice is used)",
    type=["csv"],
    key="features_upload",
    help=limit,
)
if feat_up is not None:
    try:
        choice = replace(choice, features=state.save_upload(feat_up, "features"))
    except Exception as e:
        if not core.is_user_error(e):
            raise
        state.show_error(e)
        st.stop()
elif choice.features is not None:
    c1, c2 = st.columns([4, 1])
    c1.caption(f"Features: **{state.md_escape(choice.features.name)}**")
    if c2.button("Remove", key="features_remove"):
        choice = replace(choice, features=None)
state.set_data_choice(choice)

data = state.require_data(model)
ds = data.dataset
if data.choice.features is not None:  # checked now, before any analysis: a bad file is one message at once
    try:
        stages.check_features(data)
    except Exception as e:
        if not core.is_user_error(e):
            raise
        state.show_error(e)
        st.stop()
st.subheader("Preview")
c1, c2, c3 = st.columns(3)
c1.metric("Sequences analysed", f"{data.n_sequences:,}", help=f"of {data.n_available:,} in the file")
c2.metric("Steps per sequence", ds.n_steps)
if ds.vocabulary is not None:
    c3.metric("Vocabulary", f"{len(ds.vocabulary):,} tokens")
elif ds.feature_names:
    c3.metric("Input features", len(ds.feature_names))

texts = core.preview_text(data)
if texts:
    for k, t in enumerate(texts):
        st.caption(f"sequence {data.choice.first + k}")
        st.code(t, language=None, wrap_lines=True)
else:
    frame = core.preview_frame(data)
    if not frame.empty:
        first_seq = frame[frame["sequence"] == 0].drop(columns="sequence")
        long = first_seq.melt(id_vars="step", var_name="feature", value_name="value")
        st.altair_chart(
            alt.Chart(long, title=f"sequence {data.choice.first}")
            .mark_line(point=True)
            .encode(x="step:Q", y="value:Q", color="feature:N", tooltip=["step", "feature", "value"])
            .properties(height=220),
            width="stretch",
        )
        st.dataframe(frame.head(200), hide_index=True)
    else:
        st.write(f"Array of shape {tuple(ds.x.shape)}, dtype {ds.x.dtype}.")
with st.expander("Where the data came from"):
    st.json(ds.source)

st.subheader("Analysis")
run, err = state.try_run()
if err is not None:
    state.show_error(err)
else:
    st.success(
        f"Extracted and verified in {run.seconds['extract']:.2f} s, statistics in {run.seconds['analyze']:.2f} s "
        f"({run.trace.n_sequences:,} sequences x {run.trace.n_steps} steps"
        + (f", features: {state.md_escape(data.choice.features.name)}" if data.choice.features else "")
        + "). The other pages show what is ready; the later stages fill in below.",
        icon=":material/check_circle:",
    )
    unknown = recorded_unknown_tokens(run.trace.meta)  # the count `gatelens extract` prints and records
    if unknown is not None and unknown.count:
        st.warning(
            f"Tokens not in the model's vocabulary (they became its unknown token): {state.md_escape(unknown.describe())}",
            icon=":material/help:",
        )
        c1, c2, c3 = st.columns(3)
        c1.metric("Unknown tokens", f"{unknown.count:,}")
        c2.metric("Tokens in all", f"{unknown.n_tokens:,}")
        c3.metric("Distinct unknown tokens", f"{unknown.distinct:,}")
        st.dataframe(
            pd.DataFrame({"token": [repr(t) for t, _ in unknown.top], "count": [c for _, c in unknown.top]}),
            hide_index=True,
        )
    # plain lines, no polling here (the sidebar shows the stages live): a page that re-ran itself while the user
    # picks the data source or uploads would race their click
    for stage, label in stages.STAGES.items():
        fraction, words = run.live.progress(stage)
        done = f"ready in {run.seconds.get(stage, 0.0):.2f} s" if fraction >= 1.0 and words == "ready" else words
        st.caption(f"**{stage.capitalize()}** ({label}) · {done}")
