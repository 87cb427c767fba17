"""Export: each table as soon as it is ready, with the choices of ``gatelens export`` (layers, signals, sequences,
CSV or Parquet), written to the session's folder and streamed from disk (see gatelens.dashboards.exporting)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from gatelens.analysis.pipeline import STAGES, STEPS, stage_of
from gatelens.dashboards import core, exporting, sessions, state
from gatelens.dashboards.jobs import Job

_JOBS = "_gatelens_export_jobs"
_TOKENS = "_gatelens_export_tokens"

st.title("Export")
run = state.require_run()
live = run.live  # the staged analysis (gatelens.dashboards.stages): tables fill in while this page is open
st.caption(
    "The tables of `gatelens export RUN --out DIR`: CSV (a header row, one record per row, '.' as the decimal "
    "separator, text cells that cannot start a spreadsheet formula) or Parquet. Each table is offered as soon as "
    "its part of the analysis is ready; the large ones are written when you ask for them."
)

trace = run.trace
layers = list(trace.layers)
signals = list(dict.fromkeys(s for name in layers for s in trace[name].info.signals))
n = int(trace.n_sequences)
with st.container(border=True):
    c1, c2 = st.columns(2)
    chosen_layers = c1.multiselect("Layers", layers, default=layers, key="export_layers")
    chosen_signals = c2.multiselect("Signals (activations, units)", signals, default=signals, key="export_signals")
    c3, c4, c5 = st.columns(3)
    first = c3.number_input(f"First sequence (0..{n - 1})", 0, n - 1, 0, key="export_first")
    count = c4.number_input("Sequences", 1, n, n, key="export_count")
    fmt = c5.radio("Format", ["CSV", "Parquet"], horizontal=True, key="export_format")
if not chosen_layers or not chosen_signals:
    st.info("Choose at least one layer and one signal.", icon=":material/info:")
    st.stop()
stop = min(n, int(first) + int(count))
selection = exporting.Selection(
    layers=None if len(chosen_layers) == len(layers) else tuple(chosen_layers),
    signals=None if len(chosen_signals) == len(signals) else tuple(chosen_signals),
    sequences=None if (int(first), stop) == (0, n) else (int(first), stop),
    format=fmt.lower(),
)
folder = state.session_dir() / "exports" / run.key[:16]
jobs: dict[tuple[str, str], Job] = st.session_state.setdefault(_JOBS, {})
tokens: dict[str, str] = st.session_state.setdefault(_TOKENS, {})


def _write(table: str, analysis, progress=None) -> Path:
    return exporting.write_table(trace, analysis, table, selection, folder, progress)


def _offer(table: str, path: Path, col) -> None:
    name = exporting.download_name(table, selection.format)
    size = path.stat().st_size
    label = f"{name} · {size / 1e6:,.2f} MB" if size >= 1e5 else f"{name} · {size / 1e3:,.1f} kB"
    if exporting.route_served():  # streamed from disk by the server's download route
        token = tokens.get(str(path)) or exporting.register(path)
        tokens[str(path)] = token
        url = exporting.download_url(token, st.get_option("server.baseUrlPath"))
        col.link_button(label, url, icon=":material/download:", key=f"export_{table}")
    elif size <= exporting.FALLBACK_MAX_BYTES:  # plain `streamlit run app.py`: read from disk when clicked
        col.download_button(label, data=path.read_bytes, file_name=name, mime=exporting.mime_type(name),
                            icon=":material/download:", on_click="ignore", key=f"export_{table}")  # fmt: skip
    else:
        col.warning(f"{label}: too large to serve without streaming; start the dashboard with `gatelens dashboard`.")


writing = any(not j.done for j in jobs.values())
filling = not live.all_ready


@st.fragment(run_every=1.0 if writing or filling else None)
def tables() -> None:
    steps_done = {step for step in STEPS if live.ready(step)}  # before the snapshot: each of these is in it
    analysis = live.snapshot().analysis
    if (writing or filling) and all(j.done for j in jobs.values()) and live.all_ready:
        st.rerun()  # everything ready and written: draw the page once more, without the timer
    status = exporting.table_status(analysis, steps_done.__contains__)
    for table, ready in status.items():
        c1, c2 = st.columns([1, 3], vertical_alignment="center")
        c1.markdown(f"**{table}**")
        if not ready:
            waiting = [s for s in exporting.table_steps(table) if s not in steps_done]
            error = live.error_for(*waiting)
            if error is not None:
                c2.caption(f"Not available: {state.md_escape(core.error_title(error))}")
                continue
            stage = stage_of(waiting[0])
            fraction, words = live.progress(stage)
            c2.progress(fraction, text=f"waits for the **{stage}** stage ({STAGES[stage]}) · {words}")
            continue
        key = (selection.key, table)
        job = jobs.get(key)
        if table in exporting.LARGE_TABLES and job is None:
            done = folder / selection.key / exporting.download_name(table, selection.format)
            if done.is_file():
                _offer(table, done, c2)
            elif c2.button(f"Write {exporting.download_name(table, selection.format)}", key=f"write_{table}"):
                job = jobs[key] = sessions.own_job(
                    Job.start(lambda stage, t=table, a=analysis: _write(t, a, stage(f"Writing {t}")))
                )
                st.rerun()
            continue
        if job is not None and not job.done:
            c2.progress(job.overall, text=f"{job.label} · {job.seconds:.0f} s")
            continue
        if job is not None and job.error is not None:
            jobs.pop(key)
            if not core.is_user_error(job.error):
                raise job.error
            with c2:
                state.show_error(job.error)
            continue
        _offer(table, job.result() if job is not None else _write(table, analysis), c2)


tables()
if writing or filling:
    st.caption("Analysis or writing in the background: this list updates every second.")

st.download_button(
    "manifest.json (the run's model, data, options, versions and verification)",
    data=run.manifest_bytes(),
    file_name="manifest.json",
    mime="application/json",
    icon=":material/description:",
    on_click="ignore",
    key="export_manifest",
)
with st.expander("Run manifest"):
    st.json(run.manifest, expanded=1)
