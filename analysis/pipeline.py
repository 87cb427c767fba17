"""The whole analysis of a trace in one call, and its tables saved beside the run (``gatelens analyze``).

:func:`analyze` runs the steps of :data:`STEP_REGISTRY` in order: unit and signal statistics, half-lives,
retention curves, gate drivers (the pre-activation decomposition summarised per unit), events and their
summary, the per-token gate table (layers fed by an Embedding), then the feature-based analyses --
features, correlations, probes, clusters (:mod:`gatelens.analysis.features`, :mod:`gatelens.analysis.correlate`,
:mod:`gatelens.analysis.probes`, :mod:`gatelens.analysis.clusters`). A step that cannot run on this trace
(no weights, no features, no unit statistics) notes why in ``Analysis.skipped``; its table stays empty.
Errors in the data (e.g. a malformed user feature file) are raised, not skipped.

Adding an analysis step: write one function ``_name(ctx: StepContext) -> dict[str, DataFrame]`` (the trace is
``ctx.trace``, earlier tables ``ctx.result.<table>``, the features ``ctx.feature_table``; ``ctx.skip(why)``
notes why it produced nothing) and add one :class:`Step` entry to :data:`STEP_REGISTRY` naming the step, the
function, the tables it fills, the CSV files they are exported as and a one-line description. From that
entry come the :class:`Analysis` attribute, :data:`STEPS`, saving and loading (``RUN/analysis/<table>.parquet``),
the CSV export (:data:`EXPORT_FILES`) and the docs (:func:`steps_markdown`, the ``Analysis`` docstring);
``tests/test_pipeline_registry.py`` checks that ``docs/csv-columns.md`` documents every exported file.

:func:`save_analysis` writes every table as Parquet under ``RUN/analysis/`` (each file atomically,
then ``index.json`` last, listing the files with their sha256: a reader never sees a half-written
analysis as complete); :func:`load_analysis` reads it back and checks it.

The events table can be far larger than everything else (one row per event of every unit, sequence
and step), so it is never read whole unless asked: :func:`analyze` can stream it to Parquet
(``events_path``), :func:`load_analysis` leaves it on disk (``Analysis.events_file``, with
``Analysis.events`` an empty frame with the event columns), and :func:`read_events` (one unit's,
layer's or sequence range's rows, filtered by Arrow while it reads), :func:`iter_event_batches`
(the whole table a bounded batch at a time) and :func:`count_events` read it, whether the table is in
memory or on disk.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> from gatelens._examples import example_trace
>>> trace, sig = example_trace("lstm", n=3, steps=6, units=2)
>>> rng = np.random.default_rng(0)
>>> for s in sig:
...     sig[s][:] = rng.uniform(0, 1, (3, 6, 2))
>>> result = analyze(trace, steps=("stats", "memory"))
>>> result.half_lives[["unit", "signal"]].values.tolist()
[[0, 'forget_gate'], [1, 'forget_gate']]
>>> run = pathlib.Path(tempfile.mkdtemp())
>>> _ = save_analysis(result, run)
>>> load_analysis(run).half_lives.equals(result.half_lives)
True
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gatelens.analysis._reading import read, read_mask
from gatelens.analysis.partials import clean_partials, partial_path
from gatelens.analysis.store import ANALYSIS_DIR, sha256_file, verify_run
from gatelens.analysis.trace import Trace, iter_chunks
from gatelens.errors import RunStoreError, UsageError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
INDEX = "index.json"
FORMAT = "gatelens-analysis"
FORMAT_VERSION = 1

#: Rows per Parquet row group of a saved events table (what a streamed read holds at once, at most).
EVENTS_ROW_GROUP = 65_536

# ----------------------------------------------------------------------------------------------------------------
# the steps: one function and one STEP_REGISTRY entry each


@dataclass
class StepContext:
    """What a step function receives: the trace, the tables of the steps before it, the options.

    A step returns ``{table: DataFrame}`` for the tables its entry declares (those it leaves out stay empty)
    and calls :meth:`skip` to note why it produced nothing. ``feature_table`` is the features step's output,
    read by the steps after it.

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> trace, _ = example_trace("lstm", n=2, steps=4, units=2, fill=0.5)
    >>> ctx = StepContext(trace, Analysis(), step="probes")
    >>> ctx.chunk, ctx.features, ctx.feature_table is None
    (256, None, True)
    >>> ctx.skip("no features")                               # also logged as a warning
    >>> ctx.result.skipped
    {'probes': 'no features'}
    """

    trace: Trace
    result: Analysis
    features: str | os.PathLike | pd.DataFrame | None = None
    chunk: int = 256
    max_lag: int = 50
    events_path: str | os.PathLike | None = None
    feature_table: pd.DataFrame | None = None
    step: str = ""
    #: ``progress(done, total)`` within a long step (the probes report theirs), for a caller that shows it.
    progress: Progress | None = None
    #: The layers a step declared ``by_layer`` covers in this call (None: every layer); its tables for the layers
    #: one by one, concatenated in the trace's layer order, are its tables for all of them.
    layers: Sequence[str] | None = None

    def skip(self, why: str) -> None:
        """Note (and log) why the current step produced nothing."""
        _skip(self.result, self.step, why)


@dataclass(frozen=True)
class Step:
    """One analysis step.

    Attributes
    ----------
    name : str
        The step's name (``analyze(steps=...)``).
    run : callable(StepContext) -> dict of str to DataFrame
    tables : tuple of str
        The :class:`Analysis` attributes it fills (saved as ``RUN/analysis/<table>.parquet``).
    files : dict of str to str
        CSV file of ``gatelens export --csv`` -> the table it is written from.
    doc : str
        One line for the docs: what the step computes.
    stage : str
        When a staged run (the dashboard's background analysis) runs it: one of :data:`STAGES`, in that
        order; ``analyze`` itself runs every step in registry order whatever its stage.
    needs_features : bool
        Whether its tables depend on the features (built-in and the user's): the steps that are run again,
        and only those, when a features file is added or changed (see :data:`FEATURE_STEPS`).
    reads : tuple of str
        The tables of earlier steps it reads (``ctx.result.<table>``); a step that reads none depends only on
        the trace and the features, and may run in a worker process (:mod:`gatelens.analysis.parallel`).
    by_layer : bool
        Whether it honours ``ctx.layers``: run for each layer alone, its tables concatenated in layer order are
        the tables of one run over every layer (so workers can share a long step layer by layer).
    module : str
        The module ``run`` imports its code from when first called (importing this package stays cheap); worker
        processes import it ahead, while the run is verified.

    Examples
    --------
    >>> step = STEP_REGISTRY[1]
    >>> step.name, step.tables, step.files["half_lives.csv"], step.stage, step.needs_features
    ('memory', ('half_lives', 'retention'), 'half_lives', 'summary', False)

    A step of one's own fills tables of :class:`Analysis` and is run with :func:`run_step`:

    >>> from gatelens._examples import example_trace
    >>> def layer_names(ctx):
    ...     return {"units": pd.DataFrame({"layer": ctx.trace.layers, "n": [ctx.trace.n_sequences]})}
    >>> mine = Step("layer_names", layer_names, ("units",), {}, "the layers and their number of sequences")
    >>> ctx = StepContext(example_trace("lstm", n=2)[0], Analysis())
    >>> run_step(ctx, mine)
    >>> ctx.result.units.values.tolist()
    [['lstm', 2]]
    """

    name: str
    run: Callable[[StepContext], dict[str, pd.DataFrame]]
    tables: tuple[str, ...]
    files: dict[str, str]
    doc: str
    stage: str = "summary"
    needs_features: bool = False
    reads: tuple[str, ...] = ()
    by_layer: bool = False
    module: str = ""


def _stats(ctx: StepContext) -> dict[str, pd.DataFrame]:
    from gatelens.analysis.stats import stats_tables

    units, signal_stats = stats_tables(ctx.trace, chunk=ctx.chunk)
    return {"units": units, "signal_stats": signal_stats}


def _memory(ctx: StepContext) -> dict[str, pd.DataFrame]:
    from gatelens.analysis.memory import memory_tables

    half, retention = memory_tables(ctx.trace, max_lag=ctx.max_lag, chunk=ctx.chunk)
    return {"half_lives": half, "retention": retention}


def _drivers(ctx: StepContext) -> dict[str, pd.DataFrame]:
    from gatelens.analysis.decompose import driver_tables

    trace = ctx.trace
    with_weights = [n for n in trace.layers if {"kernel", "recurrent_kernel", "bias"} <= set(trace[n].weights)]
    if len(with_weights) < len(trace.layers):
        ctx.skip(f"no weights stored for {sorted(set(trace.layers) - set(with_weights))}")
    if not with_weights:
        return {}
    gates, features = driver_tables(trace, layers=with_weights, chunk=ctx.chunk)  # one read of each layer
    return {"decomposition": gates, "gate_drivers": features}


def _events(ctx: StepContext) -> dict[str, pd.DataFrame]:
    from gatelens.analysis.events import _detect_with_summary

    if ctx.events_path is None:
        events, summary = _detect_with_summary(ctx.trace, chunk=ctx.chunk)
        return {"events": events, "event_summary": summary}
    events, summary = _stream_events(ctx.trace, Path(ctx.events_path), ctx.chunk)
    ctx.result.events_file = str(ctx.events_path)
    return {"events": events, "event_summary": summary}


def _token_gates(ctx: StepContext) -> dict[str, pd.DataFrame]:
    from gatelens.analysis.decompose import TOKEN_GATE_COLUMNS, token_gate_table

    trace = ctx.trace
    fed = [n for n in trace.layers if "embedding" in trace[n].weights]
    if not fed or trace.tokens is None:  # numeric inputs, or no layer fed by an embedding: no rows, the header kept
        return {"token_gates": pd.DataFrame({c: [] for c in TOKEN_GATE_COLUMNS})}
    tables = [token_gate_table(trace, n, token_ids=_observed_tokens(trace, n, ctx.chunk)) for n in fed]
    return {"token_gates": pd.concat(tables, ignore_index=True)}


def _features(ctx: StepContext) -> dict[str, pd.DataFrame]:
    from gatelens.analysis.features import build_features

    ctx.feature_table = build_features(ctx.trace, user_features=ctx.features)
    return {}


def _correlations(ctx: StepContext) -> dict[str, pd.DataFrame]:
    from gatelens.analysis.correlate import correlations

    if ctx.feature_table is None:
        ctx.skip("no features (the features step did not run)")
        return {}
    return {"correlations": correlations(ctx.trace, ctx.feature_table)}


def _probes(ctx: StepContext) -> dict[str, pd.DataFrame]:
    from gatelens.analysis.probes import probe_report

    if ctx.feature_table is None:
        ctx.skip("no features (the features step did not run)")
        return {}
    return {"probes": probe_report(ctx.trace, ctx.feature_table, layers=ctx.layers, progress=ctx.progress)}


def _clusters(ctx: StepContext) -> dict[str, pd.DataFrame]:
    from gatelens.analysis.clusters import cluster_units

    r = ctx.result
    if r.units.empty:
        ctx.skip("no unit statistics to cluster (the stats step did not run)")
        return {}
    hl = r.half_lives if len(r.half_lives) else None
    corr = r.correlations if len(r.correlations) else None
    return {"clusters": cluster_units(r.units, hl, corr)}


def _examples(ctx: StepContext) -> dict[str, pd.DataFrame]:
    from gatelens.analysis.examples import unit_examples

    examples, histograms = unit_examples(ctx.trace, chunk=ctx.chunk)
    return {"examples": examples, "histograms": histograms}


def _explanations(ctx: StepContext) -> dict[str, pd.DataFrame]:
    from gatelens.analysis.explain_score import explanation_scores

    if ctx.feature_table is None:
        ctx.skip("no features (the features step did not run)")
        return {}
    return {"explanations": explanation_scores(ctx.trace, ctx.feature_table, chunk=ctx.chunk)}


#: The steps of :func:`analyze`, in the order they run (see the module docstring to add one).
STEP_REGISTRY: tuple[Step, ...] = (
    Step("stats", _stats, ("units", "signal_stats"), {},
         "moments of every signal; saturation of every gate and candidate, per unit (`units.csv`)",
         module="gatelens.analysis.stats"),
    Step("memory", _memory, ("half_lives", "retention"), {"half_lives.csv": "half_lives", "retention.csv": "retention"},
         "memory half-life of every unit from its keep gate, and retention curves", module="gatelens.analysis.memory"),
    Step("drivers", _drivers, ("decomposition", "gate_drivers"),
         {"decomposition.csv": "decomposition", "gate_drivers.csv": "gate_drivers"},
         "each gate's pre-activation split into input, memory and bias, and its input part by input feature",
         stage="detail", module="gatelens.analysis.decompose"),
    Step("events", _events, ("events", "event_summary"),
         {"events.csv": "events", "event_summary.csv": "event_summary"},
         "forget, write and read events of every unit, and their summary", stage="detail",
         module="gatelens.analysis.events"),
    Step("token_gates", _token_gates, ("token_gates",), {"token_gates.csv": "token_gates"},
         "the gates' input part for every observed token (layers fed by an Embedding)",
         module="gatelens.analysis.decompose"),
    Step("features", _features, (), {}, "built-in and user features of every step (input of the next steps)",
         stage="features", needs_features=True, module="gatelens.analysis.features"),
    Step("correlations", _correlations, ("correlations",), {"correlations.csv": "correlations"},
         "Pearson and Spearman correlation of every unit and signal with every feature",
         stage="features", needs_features=True, module="gatelens.analysis.correlate"),
    Step("probes", _probes, ("probes",), {"probes.csv": "probes"},
         "held-out linear probes per layer, signal and feature, with control tasks",
         stage="probes", needs_features=True, by_layer=True, module="gatelens.analysis.probes"),
    Step("clusters", _clusters, ("clusters",), {"clusters.csv": "clusters"},
         "units clustered by behaviour, each cluster named by its archetype",
         stage="features", needs_features=True, reads=("units", "half_lives", "correlations"),
         module="gatelens.analysis.clusters"),
    Step("examples", _examples, ("examples", "histograms"),
         {"examples.csv": "examples", "histograms.csv": "histograms"},
         "top, bottom, rise, drop and decile examples of every unit with their context, and histograms",
         stage="detail", module="gatelens.analysis.examples"),
    Step("explanations", _explanations, ("explanations",), {"explanations.csv": "explanations"},
         "one explanation per unit (feature, sign, lag) scored on held-out sequences, with a shuffled control",
         stage="features", needs_features=True, module="gatelens.analysis.explain_score"),
)  # fmt: skip

#: The names of the steps of :func:`analyze`, in order.
STEPS = tuple(step.name for step in STEP_REGISTRY)
#: Every table of an :class:`Analysis`, in order.
TABLES = tuple(t for step in STEP_REGISTRY for t in step.tables)
#: CSV file of ``gatelens export --csv`` -> the table it is written from (besides activations.csv, units.csv).
EXPORT_FILES = {f: t for step in STEP_REGISTRY for f, t in step.files.items()}
#: The stages of a staged run, in the order they run, with what each holds (a :class:`Step`'s ``stage``):
#: the cheap statistics first, the per-step detail and the feature-based analyses after, the probes last.
STAGES: dict[str, str] = {
    "summary": "statistics, saturation and memory",
    "detail": "gate drivers, events and examples",
    "features": "features, correlations, clusters and explanations",
    "probes": "linear probes with control tasks",
}
#: The steps whose tables depend on the features: run again (and only they) when the features change.
FEATURE_STEPS = tuple(step.name for step in STEP_REGISTRY if step.needs_features)


def stage_steps(stage: str, *, features: bool | None = None) -> tuple[Step, ...]:
    """The steps of one stage, in registry order; only those that need features (True) or not (False).

    Examples
    --------
    >>> [s.name for s in stage_steps("summary")]
    ['stats', 'memory', 'token_gates']
    >>> [s.name for s in stage_steps("features")], FEATURE_STEPS[-1]
    (['features', 'correlations', 'clusters', 'explanations'], 'explanations')
    """
    if stage not in STAGES:
        raise UsageError(f"unknown stage {stage!r}; the stages are {list(STAGES)}")
    return tuple(s for s in STEP_REGISTRY if s.stage == stage and (features is None or s.needs_features == features))


def stage_of(step: str) -> str:
    """The stage of a step (see :data:`STAGES`).

    Examples
    --------
    >>> stage_of("clusters"), stage_of("stats")
    ('features', 'summary')
    """
    for s in STEP_REGISTRY:
        if s.name == step:
            return s.stage
    raise UsageError(f"unknown analysis step {step!r}; the steps are {list(STEPS)}")


def step_of_table(table: str) -> str:
    """The step that fills a table of :class:`Analysis`.

    Examples
    --------
    >>> step_of_table("clusters"), step_of_table("half_lives")
    ('clusters', 'memory')
    """
    for s in STEP_REGISTRY:
        if table in s.tables:
            return s.name
    raise UsageError(f"no analysis step fills a table {table!r}")


def steps_markdown() -> str:
    """The steps as a Markdown list, one line each (for the docs).

    Examples
    --------
    >>> print(steps_markdown().splitlines()[1])
    - `memory` -> `half_lives`, `retention`: memory half-life of every unit from its keep gate, and retention curves
    """
    lines = []
    for step in STEP_REGISTRY:
        tables = ", ".join(f"`{t}`" for t in step.tables) or "(no table)"
        lines.append(f"- `{step.name}` -> {tables}: {step.doc}")
    return "\n".join(lines)


class _AnalysisBase:
    @classmethod
    def tables(cls) -> tuple[str, ...]:
        """Names of the DataFrame attributes, in order."""
        return TABLES


def _analysis_doc() -> str:
    attrs = "\n".join(
        f"    {t} : DataFrame\n        From step ``{step.name}``: {step.doc}."
        for step in STEP_REGISTRY
        for t in step.tables
    )
    return f"""Every table of one analysis (all pandas DataFrames; a table of a step not run is empty).

    One attribute per table of :data:`STEP_REGISTRY`.

    Attributes
    ----------
{attrs}
    skipped : dict of str to str
        Step name -> why it was skipped.
    events_file : str, optional
        Set when the events are in a Parquet file instead of in memory: after :func:`analyze` with
        ``events_path`` (which :func:`save_analysis` moves into place as ``events.parquet``) and after
        :func:`load_analysis` (the run's ``events.parquet``). ``events`` is then an empty frame with
        the event columns; read the rows with :func:`read_events` or :func:`iter_event_batches`, which
        serve both cases.

    Examples
    --------
    >>> a = Analysis()
    >>> a.tables()[:4], a.units.empty, a.skipped, a.events_file
    (('units', 'signal_stats', 'half_lives', 'retention'), True, {{}}, None)
    >>> from gatelens._examples import example_trace
    >>> trace, _ = example_trace("lstm", n=2, steps=4, units=2, fill=0.5)
    >>> result = analyze(trace, steps=("stats",))
    >>> len(result.units), result.half_lives.empty           # 2 units x (3 gates, candidate); memory not run
    (8, True)
    """


#: Every table of one analysis: a dataclass with one DataFrame attribute per table of :data:`STEP_REGISTRY`.
Analysis = make_dataclass(
    "Analysis",
    [(t, pd.DataFrame, field(default_factory=pd.DataFrame)) for t in TABLES]
    + [("skipped", dict, field(default_factory=dict)), ("events_file", "str | None", None)],
    bases=(_AnalysisBase,),
    namespace={"__doc__": _analysis_doc(), "__module__": __name__},
)


def _observed_tokens(trace: Trace, layer: str, chunk: int) -> np.ndarray:
    lt = trace[layer]
    seen: set[int] = set()
    for rows in iter_chunks(lt.shape[0], chunk):
        m = read_mask(lt, rows)
        seen.update(np.unique(read(trace.tokens, rows, np.int64)[m]).tolist())
    return np.asarray(sorted(seen), np.int64)


def analyze(
    trace: Trace,
    *,
    features: str | os.PathLike | pd.DataFrame | None = None,
    progress: Progress | None = None,
    steps: Sequence[str] | str = STEPS,
    chunk: int = 256,
    max_lag: int = 50,
    events_path: str | os.PathLike | None = None,
) -> Analysis:
    """Run the analysis of ``trace`` (see the module docstring).

    Parameters
    ----------
    trace : Trace
        In memory or opened from a run store (read a chunk of sequences at a time).
    features : path or DataFrame, optional
        User features (``sequence``, ``step`` and one column per feature) added to the built-ins.
    progress : callable(done, total), optional
        Called after each step.
    steps : str or sequence of str
        A subset of :data:`STEPS` (default all).
    chunk : int
        Sequences read at a time.
    max_lag : int
        Longest lag of the retention curves.
    events_path : path, optional
        Stream the events, a chunk at a time, to this Parquet file instead of keeping them in memory
        (memory bounded by ``chunk``, not by the number of sequences): ``Analysis.events`` is then empty
        and ``Analysis.events_file`` names the file, which :func:`save_analysis` moves into the run.

    Returns
    -------
    Analysis

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> trace, sig = example_trace("gru", n=2, steps=3, units=1, fill=0.25, reset_after=True)
    >>> a = analyze(trace, steps=("stats", "memory", "events"))
    >>> float(a.half_lives["half_life_steps"].iloc[0]), len(a.events), sorted(a.skipped)
    (0.5, 0, [])
    """
    steps = _steps(steps)
    _check_events_path(events_path)
    todo = [step for step in STEP_REGISTRY if step.name in steps]
    result = Analysis()
    ctx = StepContext(trace, result, features=features, chunk=chunk, max_lag=max_lag, events_path=events_path)
    started = time.perf_counter()
    for done, step in enumerate(todo, start=1):
        run_step(ctx, step)
        if progress is not None:
            progress(done, len(todo))
    log.info("analysis of %d layer(s) took %.2f s", len(trace.layers), time.perf_counter() - started)
    return result


def _check_events_path(events_path: str | os.PathLike | None) -> None:
    """Refuse an ``events_path`` that holds something: the events are written there (and it is removed if they fail),
    so it must be new, or an empty file (the partial :func:`analyze_run` makes for them)."""
    if events_path is None or not os.path.lexists(events_path):
        return
    p = Path(events_path)
    if p.is_symlink() or not p.is_file() or p.stat().st_size:
        raise UsageError(
            f"events_path {str(events_path)!r}: exists and holds data; give a new path (the events are written there)"
        )


def _steps(steps: Sequence[str] | str) -> tuple[str, ...]:
    """``steps`` checked, as a tuple (one step's name alone is that step, not its characters)."""
    if isinstance(steps, str):
        steps = (steps,)
    try:
        steps = tuple(steps)
    except TypeError:
        raise UsageError(f"steps must be a step's name or a sequence of them, got {steps!r}") from None
    _check_steps(steps)
    return steps


def _check_steps(steps: Sequence[str]) -> None:
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise UsageError(f"unknown analysis step(s) {unknown}; the steps are {list(STEPS)}")


def run_step(ctx: StepContext, step: Step) -> None:
    """Run one step on ``ctx`` and set the tables it returns on ``ctx.result`` (what :func:`analyze` does per step).

    For callers that run the steps in their own order or at their own time (the dashboard's staged run):
    ``ctx`` carries the tables of the steps run before (``ctx.result``) and the features table once the
    ``features`` step ran. Logs one record per step (``analysis step NAME took S s``, logger
    ``gatelens.analysis.pipeline``, level INFO).

    Examples
    --------
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_layer
    >>> lt, _ = example_layer("lstm", n=2, steps=4, units=2, fill=0.5)
    >>> ctx = StepContext(Trace({"lstm": lt}), Analysis())
    >>> run_step(ctx, STEP_REGISTRY[0])
    >>> sorted(ctx.result.units["unit"].unique().tolist())
    [0, 1]
    """
    t0 = time.perf_counter()
    ctx.step = step.name
    tables = step.run(ctx) or {}
    undeclared = set(tables) - set(step.tables)
    if undeclared:
        raise RuntimeError(f"analysis step {step.name!r} returned undeclared table(s) {sorted(undeclared)}")
    for name, table in tables.items():
        setattr(ctx.result, name, table)
    log.info("analysis step %s took %.2f s", step.name, time.perf_counter() - t0)


def _stream_events(trace: Trace, path: Path, chunk: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the events of ``trace`` to ``path`` a chunk at a time; (empty events frame, event summary)."""
    from gatelens.analysis.events import EventSummaryBuilder, _empty_events, iter_event_tables

    builder = EventSummaryBuilder(trace, chunk=chunk)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_event_tables(iter_event_tables(trace, chunk=chunk, summary=builder), path)
    return _empty_events(), builder.result()


def write_event_tables(tables: Iterable[Any], path: Path) -> None:
    """Write the event tables (pyarrow, in order) to the Parquet file ``path`` in row groups of exactly
    :data:`EVENTS_ROW_GROUP` rows (the last one fewer), however the rows come split into tables (so the file is the
    same for any split); an empty events file when there are none; ``path`` removed on failure.

    Row groups are written by one worker thread while the next tables are made (Arrow writes without the GIL): at
    most one write in flight, so memory holds one more table, not more."""
    from concurrent.futures import Future, ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.parquet as pq

    from gatelens.analysis.events import _arrow_pool, _empty_events

    writer = None
    pending: list[Any] = []  # fewer than EVENTS_ROW_GROUP rows, held until a row group is full
    in_flight: Future | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatelens-events") as pool:
        try:
            for table in tables:
                if writer is None:
                    # no dictionary for the continuous deltas: theirs overflows its page, after hashing every value
                    keyed = [c for c in table.schema.names if c not in ("delta_input", "delta_recurrent")]
                    writer = pq.ParquetWriter(path, table.schema, use_dictionary=keyed, memory_pool=_arrow_pool())
                pending.append(table.cast(writer.schema))
                held = sum(len(t) for t in pending)
                if held >= EVENTS_ROW_GROUP:
                    joined = pa.concat_tables(pending)
                    full = held - held % EVENTS_ROW_GROUP
                    if in_flight is not None:
                        in_flight.result()
                    in_flight = pool.submit(writer.write_table, joined.slice(0, full), EVENTS_ROW_GROUP)
                    pending = [joined.slice(full)] if full < held else []
            if in_flight is not None:
                in_flight.result()
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=EVENTS_ROW_GROUP)
        except BaseException:
            if in_flight is not None:
                in_flight.exception()  # waits for it; the error that stopped the loop is the one raised
            if writer is not None:
                writer.close()
            path.unlink(missing_ok=True)
            raise
    if writer is None:
        _empty_events().to_parquet(path, index=False)
    else:
        writer.close()


def _skip(result: Analysis, step: str, why: str) -> None:
    log.warning("analysis step %r skipped: %s", step, why)
    result.skipped[step] = why


def _parquet_bytes(df: pd.DataFrame, row_group_size: int | None = None) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, row_group_size=row_group_size)
    return buf.getvalue()


def _write_partial_then_rename(path: Path, data: bytes) -> None:
    """``atomic_write_bytes`` through a held partial file (:mod:`gatelens.analysis.partials`): a killed save leaves
    nothing that a reader picks up, and the next analyze removes it."""
    with partial_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _is_saved_events(path: Path) -> bool:
    """Whether ``path`` is a run's saved events table (``RUN/analysis/events.parquet``), not a partial file."""
    return path.name == "events.parquet" and path.parent.name == ANALYSIS_DIR


def analyze_run(
    run: Trace | str | os.PathLike,
    *,
    features: str | os.PathLike | pd.DataFrame | None = None,
    progress: Progress | None = None,
    steps: Sequence[str] | str = STEPS,
    save: bool | None = None,
    processes: int | None = None,
) -> Analysis:
    """Analyse a trace or a run directory: the Python twin of ``gatelens analyze RUN``.

    Parameters
    ----------
    run : Trace or path
        A trace in memory, or a run directory (its checksums verified: with worker processes, while they run
        the steps that need no features, and before any of their results is used). For a directory
        the events stream to disk a chunk at a time and every table is saved under ``RUN/analysis/``
        (memory bounded by the chunk, not by the number of sequences); a failed analysis leaves no
        ``RUN/analysis/`` it made.
    features, progress, steps
        As for :func:`analyze`.
    save : bool, optional
        Save the tables into the run (default: True for a run directory; a trace in memory opened from a
        store is saved only when asked).
    processes : int, optional
        Worker processes running the steps of a run directory side by side
        (:func:`gatelens.analysis.parallel.analyze_processes`; the same tables); 1 runs them here, one after the
        other. Default :func:`gatelens.analysis.parallel.default_processes`: one per core (at most 4) for a run
        with at least 64 MiB of signals, else 1.

    Returns
    -------
    Analysis

    Examples
    --------
    >>> import gatelens
    >>> from gatelens._examples import tiny_run
    >>> result = gatelens.analyze(tiny_run())       # a run directory: analysed, saved beside the run
    >>> sorted(result.units["signal"].unique())[:2]
    ['candidate', 'forget_gate']
    """
    from gatelens.analysis.store import open_run

    steps = _steps(steps)
    if not isinstance(run, (Trace, str, os.PathLike)):
        raise UsageError(
            f"analyze: expected a Trace (gatelens.extract) or a run directory (gatelens.write_run), "
            f"got {type(run).__name__}"
        )
    if processes is not None and (not isinstance(processes, int) or isinstance(processes, bool) or processes < 1):
        raise UsageError(f"processes must be a whole number >= 1, got {processes!r}")
    from gatelens.analysis import parallel

    if isinstance(run, Trace):
        trace: Trace | None = run
        run_dir = run.path if save else None
        if save and run_dir is None:
            raise UsageError("analyze(save=True) needs a run directory or a trace opened from one")
    else:
        trace, run_dir = None, Path(run)
        if save is False:
            return analyze(open_run(run_dir), features=features, progress=progress, steps=steps)
    if run_dir is None:
        return analyze(trace, features=features, progress=progress, steps=steps)
    if processes is None:
        processes = parallel.default_processes(run_dir if trace is None else trace)
    layers = _manifest_layers(run_dir) if trace is None else trace.layers
    analysis_dir = run_dir / ANALYSIS_DIR
    made_dir = not os.path.lexists(analysis_dir)
    # the workers start first: they import the analysis while this process opens the run
    with parallel.started_workers(processes, len(parallel.worker_tasks(steps, layers))) as workers:
        try:
            verify = None
            if trace is None and workers is None:
                trace = open_run(run_dir)
            elif trace is None:  # its checksums verified while the workers run their first steps
                trace = _open_unverified(run_dir)
                verify = functools.partial(verify_run, run_dir, trace.meta)
            clean_partials(analysis_dir)  # what a killed analyze left
            # the events stream to a partial file that no reader picks up; save_analysis renames it into place, and
            # a failure on the way (a bad features file, a failed checksum, a kill) leaves no partial behind
            with partial_path(analysis_dir / "events.parquet") as events_path:
                if workers is not None:  # (trace.path is run_dir here: each worker opens it)
                    result = parallel.analyze_processes(
                        trace, processes=processes, features=features, progress=progress, steps=steps,
                        events_path=events_path, workers=workers, verify=verify,
                    )  # fmt: skip
                    workers.close()  # their memory freed before the save
                else:
                    result = analyze(trace, features=features, progress=progress, steps=steps, events_path=events_path)
                save_analysis(result, run_dir)
        except BaseException:
            if made_dir:  # nothing left behind: the folder this call made, if nothing else is in it
                with contextlib.suppress(OSError):
                    analysis_dir.rmdir()
            raise
    return result


def _open_unverified(run_dir: Path) -> Trace:
    """``open_run(run_dir, verify=False)``; when that fails, the error of a verifying open if there is one (a file
    missing or changed is named as such, not as arrays that do not match the manifest)."""
    from gatelens.analysis.store import open_run

    try:
        return open_run(run_dir, verify=False)
    except RunStoreError:
        verify_run(run_dir)
        raise


def _manifest_layers(run_dir: Path) -> list[str]:
    """The layer names of a run directory, from its manifest (checked, not yet verified against the files)."""
    from gatelens.analysis.store import read_manifest

    return [d["name"] for d in read_manifest(run_dir)["layers"]]


def save_analysis(analysis: Analysis, run_dir: str | os.PathLike) -> Path:
    """Write every table of ``analysis`` to ``RUN/analysis/<table>.parquet`` and ``index.json`` last.

    The previous ``index.json`` is removed first, each table is written atomically, and the new
    index (with each file's sha256) is written last: an interrupted save leaves no index, which
    :func:`load_analysis` reports, never a mix of old and new tables presented as complete.

    Events on disk (``analysis.events_file``) are not read into memory: the partial file that
    :func:`analyze` streamed is moved into place (a rename on the same file system), and another
    run's saved ``events.parquet`` (an analysis from :func:`load_analysis`) is copied, leaving that
    run intact. Events in memory are written in row groups of :data:`EVENTS_ROW_GROUP` rows.

    Returns
    -------
    Path
        The ``RUN/analysis`` directory.

    Examples
    --------
    >>> import tempfile
    >>> out = save_analysis(Analysis(skipped={"probes": "not run"}), tempfile.mkdtemp())
    >>> out.name, sorted(p.name for p in out.iterdir())[:2]
    ('analysis', ['clusters.parquet', 'correlations.parquet'])
    """
    out = Path(run_dir) / ANALYSIS_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX).unlink(missing_ok=True)
    files = {}
    for name in Analysis.tables():
        if name == "events" and analysis.events_file is not None:
            source, target = Path(analysis.events_file), out / "events.parquet"
            if source.resolve() != target.resolve():
                if _is_saved_events(source):  # another run's table: copy, then rename into place
                    with partial_path(target) as tmp:
                        shutil.copyfile(source, tmp)
                        os.replace(tmp, target)
                else:
                    shutil.move(source, target)  # a rename when on the same file system
                analysis.events_file = str(target)
            files[name] = {"file": target.name, "sha256": sha256_file(target)}
            continue
        data = _parquet_bytes(getattr(analysis, name), EVENTS_ROW_GROUP if name == "events" else None)
        _write_partial_then_rename(out / f"{name}.parquet", data)
        files[name] = {"file": f"{name}.parquet", "sha256": hashlib.sha256(data).hexdigest()}
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "tables": files, "skipped": dict(analysis.skipped)}
    _write_partial_then_rename(out / INDEX, json.dumps(doc, indent=2).encode())
    log.info("saved analysis to %s", out)
    return out


def load_analysis(run_dir: str | os.PathLike) -> Analysis:
    """Read the tables that :func:`save_analysis` wrote under ``RUN/analysis/``.

    Every table is read into memory but the events, which stay on disk: ``events_file`` names the
    run's ``events.parquet`` and ``events`` is an empty frame with its columns (read the rows with
    :func:`read_events`, :func:`iter_event_batches` or :func:`count_events`). Every file, the events
    included, is checked against its sha256 in the index (the events a block at a time).

    Raises
    ------
    gatelens.analysis.store.RunStoreError
        When the run has no complete analysis or a table does not match its checksum.

    Examples
    --------
    >>> import tempfile
    >>> run = tempfile.mkdtemp()
    >>> _ = save_analysis(Analysis(skipped={"probes": "not run"}), run)
    >>> loaded = load_analysis(run)
    >>> loaded.skipped, loaded.events_file is not None, loaded.events.empty
    ({'probes': 'not run'}, True, True)
    """
    out = Path(run_dir) / ANALYSIS_DIR
    index = out / INDEX
    if not index.is_file():
        raise RunStoreError(
            f"{run_dir}: no complete analysis (missing {ANALYSIS_DIR}/{INDEX}); run `gatelens analyze {run_dir}`"
        )
    try:
        doc = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunStoreError(f"{index}: unreadable analysis index ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RunStoreError(f"{index}: not a gatelens analysis index")
    result = Analysis(skipped=dict(doc.get("skipped", {})))
    for name, entry in doc.get("tables", {}).items():
        if name not in Analysis.tables():
            continue
        path = out / entry["file"]
        try:
            if name == "events":  # hashed a block at a time, left on disk
                data = None
                digest = sha256_file(path)
            else:
                data = path.read_bytes()
                digest = hashlib.sha256(data).hexdigest()
        except OSError as e:
            raise RunStoreError(
                f"{path}: missing analysis table ({e.strerror}); run `gatelens analyze` again"
            ) from None
        if digest != entry["sha256"]:
            raise RunStoreError(f"{path}: does not match its checksum in {INDEX}; run `gatelens analyze` again")
        if data is None:
            result.events = _events_schema(path).empty_table().to_pandas()
            result.events_file = str(path)
        else:
            setattr(result, name, pd.read_parquet(io.BytesIO(data)))
    return result


# ----------------------------------------------------------------------------------------------------------------
# reading the events table (in memory or on disk) without holding all of it


def _events_schema(path: str | os.PathLike) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path)
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise RunStoreError(f"{path}: unreadable events table ({e})") from None


def _as_list(value: Any, kind: type, what: str) -> list[Any] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, (str, int, np.integer)) else list(value)
    try:
        return [kind(v) for v in values]
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be {kind.__name__} or a list of them, got {value!r}") from None


def read_events(
    analysis: Analysis,
    *,
    layer: str | Sequence[str] | None = None,
    unit: int | Sequence[int] | None = None,
    sequences: int | Sequence[int] | range | None = None,
    event: str | Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The events of ``analysis`` that match every filter given, read from disk or memory.

    When the events are on disk (``analysis.events_file``) Arrow applies the filters while it reads
    the Parquet file, a batch at a time, skipping row groups whose statistics exclude them (one
    layer's or a range of sequences' rows): memory holds the matching rows, not the table. With no
    filter this reads the whole table; to go through all of it use :func:`iter_event_batches`.

    Parameters
    ----------
    analysis : Analysis
    layer : str or list of str, optional
    unit : int or list of int, optional
    sequences : int, list of int or range, optional
    event : {"forget", "write", "read"} or a list of them, optional
    columns : list of str, optional
        Default all (:data:`gatelens.analysis.events.EVENT_COLUMNS`).

    Returns
    -------
    DataFrame
        The rows in the table's order (layer, sequence, step, unit, event), index from 0.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from gatelens._examples import example_trace
    >>> trace, sig = example_trace("lstm", n=1, steps=4, units=2)
    >>> sig["forget_gate"][0] = [[0.95, 0.95], [0.2, 0.95], [0.95, 0.95], [0.95, 0.3]]
    >>> run = tempfile.mkdtemp()
    >>> _ = save_analysis(analyze(trace, steps=("events",)), run)
    >>> a = load_analysis(run)
    >>> read_events(a, unit=1, event="forget")[["layer", "step", "unit", "value"]]
      layer  step  unit  value
    0  lstm     3     1    0.3
    >>> count_events(a)
    2
    """
    layers = _as_list(layer, str, "layer")
    units = _as_list(unit, int, "unit")
    kinds = _as_list(event, str, "event")
    _check_event_filters(analysis, layers, units, kinds)
    seq_range = sequences if isinstance(sequences, range) and sequences.step == 1 else None
    seqs = None if seq_range is not None else _as_list(sequences, int, "sequences")
    cols = None if columns is None else list(columns)
    if analysis.events_file is None:
        df = analysis.events
        if df.empty:  # also a frame with no columns (the events step did not run)
            return (df if cols is None else df.reindex(columns=cols)).reset_index(drop=True)
        keep = np.ones(len(df), bool)
        for col, values in (("layer", layers), ("unit", units), ("event", kinds), ("sequence", seqs)):
            if values is not None:
                keep &= df[col].isin(values).to_numpy()
        if seq_range is not None:
            keep &= ((df["sequence"] >= seq_range.start) & (df["sequence"] < seq_range.stop)).to_numpy()
        out = df[keep] if cols is None else df.loc[keep, cols]
        return out.reset_index(drop=True)

    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    expr = None
    for col, values in (("layer", layers), ("unit", units), ("event", kinds), ("sequence", seqs)):
        if values is not None:
            term = pc.field(col).isin(values)
            expr = term if expr is None else expr & term
    if seq_range is not None:
        term = (pc.field("sequence") >= seq_range.start) & (pc.field("sequence") < seq_range.stop)
        expr = term if expr is None else expr & term
    table = pads.dataset(analysis.events_file, format="parquet").to_table(columns=cols, filter=expr)
    return table.to_pandas()


def iter_event_batches(
    analysis: Analysis, *, batch_size: int = EVENTS_ROW_GROUP, columns: Sequence[str] | None = None
) -> Iterator[pd.DataFrame]:
    """The whole events table of ``analysis``, in its order, as DataFrames of at most ``batch_size`` rows.

    On disk, the Parquet file is read a batch at a time (``pyarrow.parquet.ParquetFile.iter_batches``):
    memory holds a row group or a batch, never the table. Every batch has the same columns and dtypes
    (those of the file), so writing them one after the other gives what writing the whole table would.
    A table with no rows gives no batch.

    Examples
    --------
    >>> a = Analysis(events=pd.DataFrame({"layer": ["l"] * 5, "unit": range(5)}))
    >>> [b["unit"].tolist() for b in iter_event_batches(a, batch_size=2)]
    [[0, 1], [2, 3], [4]]
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size!r}")
    cols = None if columns is None else list(columns)
    if analysis.events_file is None:
        df = analysis.events if cols is None else analysis.events[cols]
        for start in range(0, len(df), batch_size):
            yield df.iloc[start : start + batch_size].reset_index(drop=True)
        return
    import pyarrow.parquet as pq

    # pre_buffer=False: with it, iter_batches reads ahead and holds the whole file (pyarrow's pool grew with the
    # events: 43 MB for 800,000 rows against 8 MB); without it, a row group at a time
    with pq.ParquetFile(analysis.events_file, pre_buffer=False) as pf:
        for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
            yield batch.to_pandas()


def _check_event_filters(
    analysis: Analysis, layers: list[str] | None, units: list[int] | None, kinds: list[str] | None
) -> None:
    """Refuse a layer, unit or event type the analysis has none of (a misspelt name would read as "no events"), by
    the event summary (a row per layer, unit and event type, zero counts included), when the events step ran."""
    from gatelens.analysis.events import check_event_types

    summary = analysis.event_summary
    if kinds is not None:
        check_event_types(kinds)
    if summary is None or summary.empty or not {"layer", "unit"} <= set(summary.columns):
        return
    size = summary.groupby("layer", sort=False)["unit"].max() + 1
    if layers is not None:
        bad = [name for name in layers if name not in size.index]
        if bad:
            raise UsageError(f"no events layer {bad[0]!r}; the analysis has events of {size.index.tolist()}")
    if units is not None:
        widest = int(size.loc[layers].max() if layers else size.max())
        bad = [u for u in units if not 0 <= u < widest]
        if bad:
            where = f"layer {layers[0]!r}" if layers and len(layers) == 1 else "the widest layer"
            raise UsageError(f"unit {bad[0]} is out of range: {where} has {widest} units (0..{widest - 1})")


def count_events(analysis: Analysis) -> int:
    """Rows of the events table (from the Parquet footer when on disk: nothing else is read).

    Examples
    --------
    >>> count_events(Analysis(events=pd.DataFrame({"unit": [0, 1]})))
    2
    """
    if analysis.events_file is None:
        return len(analysis.events)
    import pyarrow.parquet as pq

    with pq.ParquetFile(analysis.events_file) as pf:
        return int(pf.metadata.num_rows)
