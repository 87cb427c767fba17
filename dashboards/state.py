"""Per-session state, uploads, bounded caches and the "wait with a progress bar" helpers the pages call.

Isolation: every session gets its own temporary directory (removed when the session ends); an
upload is written there under a fixed name made of its kind and content hash
(``model-<sha>.keras``), never under the name the user gave, which is kept as display text only.
The choices (model, data) live in ``st.session_state``.

Caches, all keyed by content hash and bounded: loaded models (``st.cache_resource``, the model is
never mutated), data slices (``st.cache_data``) and runs -- extraction plus analysis --
(``st.cache_resource``: traces are large, read-only arrays). Two sessions that bring the same bytes
share the result; nothing is keyed by a file name.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import streamlit as st

from gatelens.dashboards import core, demos, sessions, stages
from gatelens.dashboards.jobs import Job
from gatelens.dashboards.tempdirs import owned_tempdir

log = logging.getLogger(__name__)

#: Accepted upload suffixes per kind of file.
UPLOAD_SUFFIXES: dict[str, tuple[str, ...]] = {
    "model": (".keras", ".h5"),
    "vocabulary": (".json",),
    "data": (".txt", ".csv", ".npy", ".npz"),
    "features": (".csv",),
}
UPLOAD_HELP = "Up to {mb} MB per file (the server's `server.maxUploadSize`)."

MODEL_CHOICE = "gatelens_model_choice"
DATA_CHOICE = "gatelens_data_choice"
UNIT = "gatelens_unit"  # (layer, unit) opened on the Units / Memory / Unit explained pages
SEQUENCE = "gatelens_sequence"
_SESSION_DIR = "_gatelens_session_dir"
_UPLOADS = "_gatelens_uploads"


# ----------------------------------------------------------------------------------------------------------------
# text shown through Markdown


_MD_SPECIAL = "\\`*_{}[]()<>#+-.!|~$"


def md_escape(text: Any) -> str:
    """Escape Markdown (and HTML) so that user text (file names, tokens, messages) shows as typed.

    Examples
    --------
    >>> md_escape("a_b *c* <script>")
    'a\\\\_b \\\\*c\\\\* \\\\<script\\\\>'
    """
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in str(text))


@st.cache_resource(show_spinner=False)
def sweep_orphans_once() -> int:
    """Remove the temporary folders of dead dashboard servers, once per server process."""
    from gatelens.dashboards.tempdirs import sweep_orphans

    return len(sweep_orphans())


def show_error(e: BaseException) -> None:
    """A user error as a readable message (no traceback)."""
    st.error(f"**{core.error_title(e)}**\n\n{md_escape(core.dashboard_message(e))}", icon=":material/error:")


# ----------------------------------------------------------------------------------------------------------------
# the session's own files


class _SessionDir:
    """A private temporary directory, removed when the session's state is dropped."""

    def __init__(self) -> None:
        self._tmp = owned_tempdir("gatelens-session-")
        self.path = Path(self._tmp.name)
        sessions.own_folder(self.path)  # removed when the session ends (gatelens.dashboards.sessions)


def session_dir() -> Path:
    """This session's private temporary directory."""
    d = st.session_state.get(_SESSION_DIR)
    if d is None or not d.path.is_dir():
        d = _SessionDir()
        st.session_state[_SESSION_DIR] = d
    return d.path


def max_upload_mb() -> int:
    """``server.maxUploadSize`` in MB."""
    return int(st.get_option("server.maxUploadSize"))


def save_upload(uploaded: Any, kind: str) -> core.FileRef:
    """Write an uploaded file into the session's directory under a fixed safe name; return its reference.

    The same upload (same widget file id) is written once. Raises DataError for a file type the kind
    does not take, or one above the upload limit.
    """
    from gatelens.errors import DataError

    allowed = UPLOAD_SUFFIXES[kind]
    name = str(uploaded.name)
    suffix = Path(name).suffix.lower()
    if suffix not in allowed:
        raise DataError(
            f"{name}: expected a file ending in {' or '.join(allowed)} for the {kind}, got {suffix or 'no extension'!r}"
        )
    uploads: dict[str, core.FileRef] = st.session_state.setdefault(_UPLOADS, {})
    file_id = f"{kind}:{getattr(uploaded, 'file_id', '')}:{name}:{uploaded.size}"
    if file_id in uploads and uploads[file_id].path.is_file():
        return uploads[file_id]
    limit = max_upload_mb() * 1024 * 1024
    if uploaded.size > limit:
        raise DataError(f"{name}: the file has {uploaded.size:,} bytes; uploads are limited to {max_upload_mb()} MB")
    data = uploaded.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    d = session_dir()
    path = d / f"{kind}-{sha[:16]}{suffix}"  # fixed safe name: kind + content hash, never the user's name
    if not path.is_file():
        tmp = d / f".{kind}-{sha[:16]}.part"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    ref = core.FileRef(path=path, sha256=sha, name=name)
    uploads[file_id] = ref
    return ref


# ----------------------------------------------------------------------------------------------------------------
# choices


def demo_list() -> list[demos.Demo]:
    """The bundled demos (re-read at each run: cheap, and new demos appear without a restart)."""
    return demos.list_demos()


@st.cache_data(max_entries=64, show_spinner=False)
def _hash_file(path: str, mtime_ns: int, size: int) -> str:
    return core.sha256_file(path)


def file_ref(path: Path) -> core.FileRef:
    """A reference to a bundled file (its hash cached by path, modification time and size)."""
    st_ = path.stat()
    return core.FileRef(path=path, sha256=_hash_file(str(path), st_.st_mtime_ns, st_.st_size), name=path.name)


def demo_model_choice(demo: demos.Demo) -> core.ModelChoice:
    vocab = file_ref(demo.vocabulary_path) if demo.vocabulary_path is not None else None
    return core.ModelChoice(model=file_ref(demo.model_path), vocabulary=vocab, demo=demo.name)


def demo_data_choice(demo: demos.Demo) -> core.DataChoice | None:
    if demo.data_path is None:
        return None
    opts = demo.default_window()
    features = file_ref(demo.features_path) if demo.features_path is not None else None
    return core.DataChoice(
        data=file_ref(demo.data_path), features=features, first=opts["first"], count=opts["count"], demo=True
    )


def find_demo(name: str | None) -> demos.Demo | None:
    return next((d for d in demo_list() if d.name == name), None)


def model_choice() -> core.ModelChoice | None:
    """The model this session looks at; the first demo until the user picks another."""
    choice = st.session_state.get(MODEL_CHOICE)
    if choice is None:
        available = demo_list()
        if not available:
            return None
        choice = demo_model_choice(available[0])
        st.session_state[MODEL_CHOICE] = choice
    return choice


def set_model_choice(choice: core.ModelChoice) -> None:
    """Switch model; demo data follows a demo model, an uploaded data file stays."""
    old = st.session_state.get(MODEL_CHOICE)
    if old == choice:
        return
    st.session_state[MODEL_CHOICE] = choice
    data = st.session_state.get(DATA_CHOICE)
    if data is None or data.demo:
        st.session_state[DATA_CHOICE] = None
    st.session_state.pop(UNIT, None)


def data_choice() -> core.DataChoice | None:
    """The data this session analyses: its own choice, else the demo model's bundled input."""
    choice = st.session_state.get(DATA_CHOICE)
    if choice is not None:
        return choice
    mc = model_choice()
    demo = find_demo(mc.demo) if mc is not None else None
    return demo_data_choice(demo) if demo is not None else None


def set_data_choice(choice: core.DataChoice | None) -> None:
    if st.session_state.get(DATA_CHOICE) != choice:
        st.session_state[DATA_CHOICE] = choice
        st.session_state.pop(UNIT, None)


# ----------------------------------------------------------------------------------------------------------------
# bounded caches, keyed by content hash


def _retry_internal_failures(job: Job) -> bool:
    """Keep a cached job unless it was cancelled (its sessions ended) or failed for a reason other than the
    user's input (then retry)."""
    if job.cancelled:
        return False
    return not (job.done and job.error is not None and not core.is_user_error(job.error))


@st.cache_resource(max_entries=4, show_spinner=False, validate=_retry_internal_failures)
def _model_job(key: str, _choice: core.ModelChoice) -> Job:
    return Job.start(lambda stage: core.load_model_bundle(_choice, stage))


@st.cache_data(max_entries=8, show_spinner=False)
def _data_bundle(model_key: str, load_key: str, first: int, count: int | None, _model: Any, _choice: Any):
    return core.load_data_bundle(_model, _choice)


def require_probes(run: core.RunResult):
    """The probe table of ``run`` (waiting for every stage of its analysis with a progress bar)."""
    try:
        return stages.wait_all(run).analysis.probes
    except Exception as e:
        _stop_with(e)
        raise


def current_analysis(run: core.RunResult):
    """The run's analysis as it is now: every table ready (see :mod:`gatelens.dashboards.stages`)."""
    return run.analysis


def wait_for(job: Job) -> Any:
    """Draw a progress bar while ``job`` runs (the script only polls), then return its result."""
    if not job.done:
        bar = st.progress(job.overall, text=job.label)
        while not job.wait(0.2):
            bar.progress(job.overall, text=f"{job.label} · {job.seconds:.0f} s")
        bar.empty()
    return job.result()


def _stop_with(e: BaseException) -> None:
    if core.is_user_error(e):
        show_error(e)
        st.stop()
    raise e


def require_model() -> core.ModelBundle:
    """The loaded model (waiting for it with a progress bar); stops the page with a message if there is none."""
    choice = model_choice()
    if choice is None:
        st.info("No model yet: pick a demo or upload a `.keras` file on the **Model** page.", icon=":material/info:")
        st.stop()
    try:
        return wait_for(_model_job(choice.key, choice))
    except Exception as e:
        _stop_with(e)
        raise


def require_data(model: core.ModelBundle) -> core.DataBundle:
    """The data slice for ``model``; stops the page with a message if there is none or it does not fit."""
    choice = data_choice()
    if choice is None:
        st.info("No data yet: upload a data file on the **Data** page.", icon=":material/info:")
        st.stop()
    try:
        with st.spinner("Reading the data…"):
            return _current_data(model, choice)
    except Exception as e:
        _stop_with(e)
        raise


def _current_data(model: core.ModelBundle, choice: core.DataChoice) -> core.DataBundle:
    """The cached slice for ``choice`` (cached without the features file), carrying ``choice`` itself."""
    from dataclasses import replace

    bundle = _data_bundle(model.choice.key, choice.load_key, choice.first, choice.count, model, choice)
    source = {**bundle.dataset.source, "path": choice.data.name}  # same bytes may come under another name
    return replace(bundle, choice=choice, dataset=replace(bundle.dataset, source=source))


def live_run() -> stages.Live | None:
    """The staged run of the current choices (started if needed), or None without model or data."""
    mc, dc = model_choice(), data_choice()
    if mc is None or dc is None:
        return None
    model_job = _model_job(mc.key, mc)
    if not model_job.done or model_job.error is not None:
        return None
    model = model_job.result()
    try:
        data = _current_data(model, dc)
    except Exception:
        return None
    return sessions.own_live(stages.live(model, data))


def require_run() -> core.RunResult:
    """The extracted run of the current choices with every table ready now (waiting for the first stage).

    Later stages fill in in the background: a page section that needs one asks :func:`gatelens.dashboards.stages.need`.
    """
    model = require_model()
    data = require_data(model)
    try:
        return stages.wait_first(sessions.own_live(stages.live(model, data)))
    except Exception as e:
        _stop_with(e)
        raise


# ----------------------------------------------------------------------------------------------------------------
# the opened unit and sequence


def selected_unit(run: core.RunResult) -> tuple[str, int]:
    """The unit the user opened (valid for ``run``), else the most telling one of the analysis."""
    from gatelens.dashboards.explain import interesting_unit

    layer, unit = st.session_state.get(UNIT, (None, None))
    if layer in run.trace.layers and isinstance(unit, int) and 0 <= unit < run.trace[layer].info.units:
        return layer, unit
    return interesting_unit(run.trace, run.analysis)


def open_unit(layer: str, unit: int) -> None:
    st.session_state[UNIT] = (str(layer), int(unit))


def selected_sequence(run: core.RunResult) -> int:
    s = st.session_state.get(SEQUENCE, 0)
    return s if isinstance(s, int) and 0 <= s < run.trace.n_sequences else 0


def set_sequence(s: int) -> None:
    st.session_state[SEQUENCE] = int(s)


# ----------------------------------------------------------------------------------------------------------------
# the sidebar's status and the Model page's verification


def status_lines() -> list[str]:
    """Short Markdown lines for the sidebar: the model, the data and how far the analysis is.

    Starts the run of the current choices in the background if it is not running yet, so that the
    analysis is ready by the time the user opens a page that needs it.
    """
    mc, dc = model_choice(), data_choice()
    if mc is None:
        return ["No model yet."]
    lines = [f"**Model** · {md_escape(mc.model.name)}" + (" (demo)" if mc.demo else "")]
    if dc is None:
        lines.append("**Data** · none yet")
        return lines
    part = (
        "every sequence"
        if dc.count is None and not dc.first
        else f"up to {dc.count or 'all'} sequence(s) from #{dc.first}"
    )
    lines.append(f"**Data** · {md_escape(dc.data.name)} · {part}")
    lv = live_run()
    if lv is None:
        return lines
    return lines + stages.status_lines(lv)


def sidebar_status() -> None:
    """The sidebar's status lines; while stages run they update every 2 s (a fragment), and the page re-runs once
    when the last one is ready."""
    lv = live_run()
    running = lv is not None and not lv.all_ready and lv.base.error is None and lv.feats.error is None

    def _draw() -> None:
        for line in status_lines():
            st.caption(line)
        if running and (lv.all_ready or lv.base.error is not None or lv.feats.error is not None):
            st.rerun()

    st.fragment(_draw, run_every=2.0 if running else None)()


def try_run() -> tuple[core.RunResult | None, BaseException | None]:
    """Wait for the run of the current choices; return ``(run, None)`` or ``(None, user error)``."""
    model = require_model()
    data = require_data(model)
    try:
        return stages.wait_first(sessions.own_live(stages.live(model, data))), None
    except Exception as e:
        if core.is_user_error(e):
            return None, e
        raise


# ----------------------------------------------------------------------------------------------------------------
# per-page computations on a run (small tables, cached per run key)


@st.cache_data(max_entries=32, show_spinner=False)
def cell_decomposition(key: str, layer: str, sequence: int, step: int, unit: int, _run: core.RunResult):
    """:func:`gatelens.analysis.decompose.cell_state_decomposition` of one unit at one step."""
    from gatelens.analysis.decompose import cell_state_decomposition

    return cell_state_decomposition(_run.trace, layer, sequence, step=step, units=[unit])


@st.cache_data(max_entries=16, show_spinner=False)
def preactivations(key: str, layer: str, sequence: int, unit: int, _run: core.RunResult):
    """:func:`gatelens.analysis.decompose.preactivation_decomposition` of one sequence, one unit's rows."""
    from gatelens.analysis.decompose import preactivation_decomposition

    df = preactivation_decomposition(_run.trace, layer, sequences=[sequence])
    return df[df["unit"] == unit].reset_index(drop=True)
