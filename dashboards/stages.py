"""The dashboard's analysis in stages, in the background: pages show what is ready while the rest fills in.

A run of one model + data goes through the stages of :data:`gatelens.analysis.pipeline.STAGES`, each a group of
steps of :data:`gatelens.analysis.pipeline.STEP_REGISTRY` (a step's ``stage`` and ``needs_features`` say where
it goes; nothing is listed here):

1. extraction (verified against Keras) and the ``summary`` stage (statistics, saturation, memory): what the
   first charts need; a page waits for these with a progress bar;
2. the ``detail`` stage (gate drivers, events, examples), in the same background job;
3. the ``features`` stage (features, correlations, clusters, explanations) and then ``probes``, in a second job
   that starts once the summary is ready (clusters read the unit statistics).

The first two belong to a :class:`StagedRun`, keyed by model + data *without* the features file; the steps that
need features belong to a :class:`FeatureStages`, keyed by the run and the features file. Adding or changing a
features file therefore re-runs the steps with ``needs_features`` and nothing else: no extraction, no events.

Each finished step is published at once (a copy of the tables so far, swapped in under a lock): a page takes a
:class:`gatelens.dashboards.core.RunResult` snapshot (:meth:`Live.snapshot`) whose analysis holds every table
ready now; :func:`need` draws, for the steps a section waits for, a progress bar that names the stage and
re-runs the page (``st.fragment(run_every=...)``, no loop on the script thread) when they are ready.

Only the helpers at the end (:func:`live`, :func:`need`, :func:`wait_first`, :func:`wait_all`) use Streamlit.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import streamlit as st

from gatelens.analysis.pipeline import STAGES, Analysis, StepContext, run_step, stage_of, stage_steps, step_of_table
from gatelens.dashboards import core
from gatelens.dashboards.jobs import Job

log = logging.getLogger(__name__)

#: Stages of a :class:`StagedRun` (after the extraction) and of a :class:`FeatureStages`, in order.
RUN_STAGES = ("summary", "detail")
FEATURE_STAGES = ("features", "probes")
#: Seconds between two checks of a page section that waits for a stage (the page re-runs when it is ready).
POLL_SECONDS = 1.0


class _Staged:
    """What both kinds share: the steps done, the published tables, the stage running and its progress."""

    stages: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[str, Any] = {}
        self._skipped: dict[str, str] = {}
        self._events_file: str | None = None
        self.done: set[str] = set()  # steps finished (published)
        self.history: list[str] = []  # steps run, in order
        self.stage_done: set[str] = set()
        self.stage = ""  # stage running now
        self.step = ""  # step running now
        self.fraction = 0.0  # of the stage running now
        self.seconds: dict[str, float] = {}
        self.job: Job

    def _publish(self, result: Analysis, step: Any) -> None:
        with self._lock:
            for t in step.tables:
                self._tables[t] = getattr(result, t)
            if step.name in result.skipped:
                self._skipped[step.name] = result.skipped[step.name]
            if result.events_file is not None:
                self._events_file = result.events_file
            self.done.add(step.name)
            self.history.append(step.name)

    def _run_stage(self, name: str, ctx: StepContext, steps: tuple[Any, ...], progress: core.Progress) -> None:
        self.stage, self.fraction = name, 0.0
        t0 = time.perf_counter()
        for k, step in enumerate(steps):
            self.step = step.name

            def inner(done: int, total: int, k: int = k) -> None:
                self.fraction = (k + (done / total if total else 1.0)) / len(steps)
                progress(int(1000 * self.fraction), 1000)

            ctx.progress = inner
            run_step(ctx, step)
            self._publish(ctx.result, step)
            self.fraction = (k + 1) / len(steps)
            progress(k + 1, len(steps))
        self.seconds[name] = time.perf_counter() - t0
        with self._lock:
            self.stage_done.add(name)
        self.step = ""

    def tables(self) -> tuple[dict[str, Any], dict[str, str], str | None]:
        with self._lock:
            return dict(self._tables), dict(self._skipped), self._events_file

    @property
    def error(self) -> BaseException | None:
        return self.job.error


class StagedRun(_Staged):
    """Extraction, then the stages of :data:`RUN_STAGES` without the steps that need features (one job).

    ``data`` may carry a features file: it is not read here (the key leaves it out).
    """

    stages = RUN_STAGES

    def __init__(self, model: core.ModelBundle, data: core.DataBundle) -> None:
        super().__init__()
        self.model, self.data = model, data
        self.key = core.run_key(model.choice, replace(data.choice, features=None))
        self.run: core.RunResult | None = None  # once extracted
        self.summary_ready = threading.Event()
        self.failure: BaseException | None = None
        self._after_summary: list[Job] = []
        self.job = Job(self._work, n_stages=1 + len(self.stages))

    def _work(self, stage: core.StageProgress) -> core.RunResult:
        try:
            run = core.extract_run(self.model, self.data, stage)
            self.run = run
            ctx = StepContext(run.trace, Analysis(), events_path=Path(run._tmp.name) / "events.parquet")
            for name in self.stages:
                self._run_stage(name, ctx, stage_steps(name, features=False), stage(f"Analysing: {STAGES[name]}"))
                if name == "summary":
                    self._release()
            return run
        except BaseException as e:
            self.failure = e  # what the feature steps waiting for this run report (the job is not done yet)
            raise
        finally:
            self._release()  # also after a failure: the waiting jobs report it, never hang

    def _release(self) -> None:
        with self._lock:
            waiting, self._after_summary = self._after_summary, []
            self.summary_ready.set()
        for job in waiting:
            job.submit()

    def after_summary(self, job: Job) -> None:
        """Submit ``job`` once the summary stage is done (at once if it is); never holds a worker while waiting."""
        with self._lock:
            if not self.summary_ready.is_set():
                self._after_summary.append(job)
                return
        job.submit()

    def start(self) -> StagedRun:
        self.job.submit()
        return self


class FeatureStages(_Staged):
    """The steps that need features, for one run and one features file (or none: the built-in features)."""

    stages = FEATURE_STAGES

    def __init__(self, base: StagedRun, data: core.DataBundle) -> None:
        super().__init__()
        self.base, self.data = base, data
        self.key = core.run_key(base.model.choice, data.choice)
        self.user_features: Any = None
        self.job = Job(self._work, n_stages=len(self.stages))

    def _work(self, stage: core.StageProgress) -> None:
        run = self.base.run
        if run is None or "summary" not in self.base.stage_done:  # extraction or the summary failed
            raise self.base.failure or RuntimeError("the run's summary stage did not finish")
        ref = self.data.choice.features
        feats = None if ref is None else core.slice_features(ref, self.data, run.trace.n_steps)
        self.user_features = feats
        tables, skipped, _ = self.base.tables()
        ctx = StepContext(run.trace, Analysis(**tables, skipped=skipped), features=feats)
        for name in self.stages:
            self._run_stage(name, ctx, stage_steps(name, features=True), stage(f"Analysing: {STAGES[name]}"))

    def start(self) -> FeatureStages:
        self.base.after_summary(self.job)
        return self


class Live:
    """The staged run of the current choices: what is ready, what runs, and a snapshot of the run as it is now."""

    def __init__(self, base: StagedRun, feats: FeatureStages) -> None:
        self.base, self.feats = base, feats

    def owner(self, step: str) -> _Staged:
        return self.feats if stage_of(step) in FEATURE_STAGES else self.base

    def ready(self, *steps: str) -> bool:
        return all(s in self.owner(s).done for s in steps)

    def stage_ready(self, stage: str) -> bool:
        """Every step of the stage is done (as :meth:`ready` sees them: a page and the sidebar agree)."""
        part = self.feats if stage in FEATURE_STAGES else self.base
        return all(s.name in part.done for s in stage_steps(stage, features=part is self.feats))

    @property
    def first_ready(self) -> bool:
        """Extraction and the summary stage are done (the first charts can be drawn)."""
        return self.base.run is not None and self.stage_ready("summary")

    @property
    def all_ready(self) -> bool:
        return all(self.stage_ready(s) for s in (*RUN_STAGES, *FEATURE_STAGES))

    def error_for(self, *steps: str) -> BaseException | None:
        """The error of the job that would have made these steps (None while it runs or when it succeeded)."""
        for s in steps:
            part = self.owner(s)
            if part.error is not None and s not in part.done:
                return part.error
        return None

    def progress(self, stage: str) -> tuple[float, str]:
        """(fraction done, words) of one stage."""
        part = self.feats if stage in FEATURE_STAGES else self.base
        if self.stage_ready(stage):
            return 1.0, "ready"
        if part.stage == stage:
            step = f" ({part.step})" if part.step else ""
            return part.fraction, f"running{step}"
        if part is self.base and self.base.run is None:
            return 0.0, "waits for the extraction"
        if part is self.feats and not self.base.summary_ready.is_set():
            return 0.0, "waits for the summary stage"
        return 0.0, "queued"

    def snapshot(self) -> core.RunResult:
        """The run with every table ready now (those not ready yet are empty); only once :attr:`first_ready`."""
        run = self.base.run
        if run is None:
            raise RuntimeError("the run is not extracted yet")
        tables, skipped, events_file = self.base.tables()
        ftables, fskipped, _ = self.feats.tables()
        analysis = Analysis(**tables, **ftables, skipped={**skipped, **fskipped}, events_file=events_file)
        seconds = {**run.seconds, **self.base.seconds, **self.feats.seconds}
        seconds["analyze"] = self.base.seconds.get("summary", float("nan"))
        return replace(
            run, key=self.feats.key, analysis=analysis, seconds=seconds, user_features=self.feats.user_features,
            live=self,
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Streamlit: cached staged runs, waiting sections, the sidebar's status


def _keep(obj: _Staged) -> bool:
    """Keep a cached staged run unless it was cancelled (every session using it ended: gatelens.dashboards.sessions)
    or failed for a reason other than the user's input (then retry)."""
    if obj.job.cancelled:
        return False
    e = obj.job.error
    return e is None or core.is_user_error(e)


def _cache(**kw):
    return st.cache_resource(show_spinner=False, validate=_keep, **kw)


@_cache(max_entries=3)
def _staged_run(key: str, _model: core.ModelBundle, _data: core.DataBundle) -> StagedRun:
    return StagedRun(_model, _data).start()


@_cache(max_entries=6)
def _feature_stages(key: str, _base: StagedRun, _data: core.DataBundle) -> FeatureStages:
    return FeatureStages(_base, _data).start()


def live(model: core.ModelBundle, data: core.DataBundle) -> Live:
    """The staged run of ``model`` + ``data`` (started in the background if it is not running)."""
    base = _staged_run(core.run_key(model.choice, replace(data.choice, features=None)), model, data)
    # keyed by this very run too: a run evicted and started again gets its feature steps again
    feats = _feature_stages(f"{core.run_key(model.choice, data.choice)}:{id(base)}", base, data)
    return Live(base, feats)


def wait_first(lv: Live) -> core.RunResult:
    """Wait for the extraction and the summary stage with a progress bar (the page has nothing to show before)."""
    if not lv.first_ready and lv.base.error is None:
        bar = st.progress(lv.base.job.overall, text=lv.base.job.label)
        while not lv.base.summary_ready.wait(0.2):
            bar.progress(lv.base.job.overall, text=f"{lv.base.job.label} · {lv.base.job.seconds:.0f} s")
        bar.empty()
    if not lv.first_ready:
        lv.base.job.wait()
        lv.base.job.result()  # raises the extraction's or the summary's error
        raise RuntimeError("the summary stage did not finish")
    return lv.snapshot()


def _live_of(run: core.RunResult) -> Live:
    lv = getattr(run, "live", None)
    if lv is None:
        raise RuntimeError("this run has no staged analysis (not made by gatelens.dashboards.stages)")
    return lv


def need(run: core.RunResult, *names: str, what: str = "") -> bool:
    """Whether the steps (or tables) ``names`` of ``run`` are ready; if not, a progress bar for their stage.

    The bar names the stage the section waits for and its progress, and updates every :data:`POLL_SECONDS`
    (``st.fragment(run_every=...)``); once the steps are ready the whole page re-runs and shows them. A user
    error of that stage (e.g. a features file that does not fit) is shown instead. ``what`` names the section.
    """
    from gatelens.analysis.pipeline import STEPS

    lv = _live_of(run)
    steps = [n if n in STEPS else step_of_table(n) for n in names]
    if lv.ready(*steps):
        return True
    err = lv.error_for(*steps)
    if err is not None:
        if core.is_user_error(err):
            from gatelens.dashboards.state import show_error

            show_error(err)
            return False
        raise err
    stage = next(stage_of(s) for s in steps if not lv.ready(s))

    def _draw() -> None:
        if lv.ready(*steps) or lv.error_for(*steps) is not None:
            st.rerun()
        fraction, words = lv.progress(stage)
        label = f"{what + ': ' if what else ''}waits for the **{stage}** stage ({STAGES[stage]}) · {words}"
        st.progress(fraction, text=label)

    st.fragment(_draw, run_every=POLL_SECONDS)()
    return False


def check_features(data: core.DataBundle) -> Any:
    """The data's features file read and checked against the data (:func:`gatelens.dashboards.core.slice_features`),
    cached by content; raises its FeatureError at once, before any stage runs."""
    ref = data.choice.features
    return _features_table(ref.sha256, data.choice.load_key, data.choice.first, data.n_sequences, ref, data)


@st.cache_data(max_entries=8, show_spinner=False)
def _features_table(sha: str, load_key: str, first: int, n: int, _ref: core.FileRef, _data: core.DataBundle) -> Any:
    return core.slice_features(_ref, _data, _data.dataset.n_steps)


def wait_all(run: core.RunResult) -> core.RunResult:
    """Wait (progress bar, polling) until every stage is done; the run with every table."""
    lv = _live_of(run)
    if not lv.all_ready:
        bar = st.progress(0.0, text="Waiting for every analysis stage")
        while not (lv.all_ready or lv.base.job.done and lv.base.error or lv.feats.job.done and lv.feats.error):
            pending = [s for s in (*RUN_STAGES, *FEATURE_STAGES) if not lv.stage_ready(s)]
            fraction, words = lv.progress(pending[0])
            bar.progress(fraction, text=f"Waiting for the {pending[0]} stage ({STAGES[pending[0]]}) · {words}")
            lv.feats.job.wait(0.2)
        bar.empty()
        for part in (lv.base, lv.feats):
            if part.job.done:
                part.job.result()
    return lv.snapshot()


def status_lines(lv: Live) -> list[str]:
    """Sidebar lines: the extraction and each stage, ready / running with its percentage / waiting / failed."""
    if lv.base.run is None:
        if lv.base.error is not None:
            return [f"**Analysis** · failed: {core.error_title(lv.base.error)}"]
        return [f"**Extraction** · running ({100 * lv.base.job.overall:.0f}%)"]
    run = lv.base.run
    worst = max(run.verification.values()) if run.verification else float("nan")
    lines = [f"**Extraction** · verified, max error {worst:.1e}"]
    if lv.all_ready:
        return [*lines, "**Analysis** · all stages ready"]
    for stage in (*RUN_STAGES, *FEATURE_STAGES):
        part = lv.feats if stage in FEATURE_STAGES else lv.base
        fraction, words = lv.progress(stage)
        if part.error is not None and not lv.stage_ready(stage):
            words = f"failed: {core.error_title(part.error)}"
        elif words.startswith("running"):
            words = f"running ({100 * fraction:.0f}%)"
        lines.append(f"**{stage.capitalize()}** · {words}")
    return lines
