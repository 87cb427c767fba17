"""The whole analysis of a trace in one call, and its tables saved beside the run (``gatelens analyze``).

:func:`analyze` runs, in order: unit and signal statistics, half-lives, retention curves, gate
drivers (the pre-activation decomposition summarised per unit), events and their summary, the
per-token gate table (layers fed by an Embedding), then the feature-based analyses -- features,
correlations, probes, clusters (:mod:`analysis.features`, :mod:`analysis.correlate`,
:mod:`analysis.probes`, :mod:`analysis.clusters`). A step whose module is not available is skipped
with a logged warning and noted in ``Analysis.skipped``; its table stays empty. Errors in the data
(e.g. a malformed user feature file) are raised, not skipped.

:func:`save_analysis` writes every table as Parquet under ``RUN/analysis/`` (each file atomically,
then ``index.json`` last, listing the files with their sha256: a reader never sees a half-written
analysis as complete); :func:`load_analysis` reads it back and checks it.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> from analysis.trace import LayerInfo, LayerTrace, Trace
>>> info = LayerInfo(name="lstm", cell_type="lstm", units=2, input_dim=1)
>>> rng = np.random.default_rng(0)
>>> sig = {s: rng.uniform(0, 1, (3, 6, 2)).astype(np.float32) for s in info.signals}
>>> lt = LayerTrace(info, sig, mask=np.ones((3, 6), bool), inputs=np.zeros((3, 6, 1), np.float32))
>>> result = analyze(Trace({"lstm": lt}), steps=("stats", "memory"))
>>> result.half_lives[["unit", "signal"]].values.tolist()
[[0, 'forget_gate'], [1, 'forget_gate']]
>>> run = pathlib.Path(tempfile.mkdtemp())
>>> _ = save_analysis(result, run)
>>> load_analysis(run).half_lives.equals(result.half_lives)
True
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis._reading import read, read_mask
from analysis.store import ANALYSIS_DIR, RunStoreError, atomic_write_bytes
from analysis.trace import Trace, iter_chunks

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
INDEX = "index.json"
FORMAT = "gatelens-analysis"
FORMAT_VERSION = 1

#: The steps of :func:`analyze`, in order.
STEPS = ("stats", "memory", "drivers", "events", "token_gates", "features", "correlations", "probes", "clusters")


@dataclass
class Analysis:
    """Every table of one analysis (all pandas DataFrames; a table of a step not run is empty).

    Attributes
    ----------
    units : :func:`analysis.stats.unit_stats` (gates and candidates: moments and saturation)
    signal_stats : :func:`analysis.stats.signal_stats` (every signal: moments)
    half_lives : :func:`analysis.memory.half_lives`
    retention : :func:`analysis.memory.retention_curves` of every LSTM/GRU layer
    decomposition : :func:`analysis.decompose.gate_drivers` (input vs memory, per unit and gate)
    events, event_summary : :func:`analysis.events.detect_events`, :func:`analysis.events.summarize_events`
    token_gates : :func:`analysis.decompose.token_gate_table` of every Embedding-fed layer (observed tokens)
    correlations : :func:`analysis.correlate.correlations`
    probes : :func:`analysis.probes.probe_report`
    clusters : :func:`analysis.clusters.cluster_units`
    skipped : dict of str to str
        Step name -> why it was skipped.
    events_file : str, optional
        Set when :func:`analyze` streamed the events to a Parquet file (its ``events_path``) instead of
        keeping them in memory: ``events`` is then an empty frame with the event columns, and
        :func:`save_analysis` moves this file into place as ``events.parquet``
        (:func:`load_analysis` reads it back into ``events``).
    """

    units: pd.DataFrame = field(default_factory=pd.DataFrame)
    signal_stats: pd.DataFrame = field(default_factory=pd.DataFrame)
    half_lives: pd.DataFrame = field(default_factory=pd.DataFrame)
    retention: pd.DataFrame = field(default_factory=pd.DataFrame)
    decomposition: pd.DataFrame = field(default_factory=pd.DataFrame)
    events: pd.DataFrame = field(default_factory=pd.DataFrame)
    event_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    token_gates: pd.DataFrame = field(default_factory=pd.DataFrame)
    correlations: pd.DataFrame = field(default_factory=pd.DataFrame)
    probes: pd.DataFrame = field(default_factory=pd.DataFrame)
    clusters: pd.DataFrame = field(default_factory=pd.DataFrame)
    skipped: dict[str, str] = field(default_factory=dict)
    events_file: str | None = None

    @classmethod
    def tables(cls) -> tuple[str, ...]:
        """Names of the DataFrame attributes, in order."""
        return tuple(f.name for f in fields(cls) if f.name not in ("skipped", "events_file"))


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
    steps: Sequence[str] = STEPS,
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
    steps : sequence of str
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
    >>> import numpy as np
    >>> from analysis.trace import LayerInfo, LayerTrace, Trace
    >>> info = LayerInfo(name="gru", cell_type="gru", units=1, input_dim=1, reset_after=True)
    >>> sig = {s: np.full((2, 3, 1), 0.25, np.float32) for s in info.signals}
    >>> lt = LayerTrace(info, sig, mask=np.ones((2, 3), bool), inputs=np.zeros((2, 3, 1), np.float32))
    >>> a = analyze(Trace({"gru": lt}), steps=("stats", "memory", "events"))
    >>> float(a.half_lives["half_life_steps"].iloc[0]), len(a.events), sorted(a.skipped)
    (0.5, 0, [])
    """
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown analysis step(s) {unknown}; the steps are {list(STEPS)}")
    todo = [s for s in STEPS if s in steps]
    result = Analysis()
    feats: pd.DataFrame | None = None
    started = time.perf_counter()
    for done, step in enumerate(todo, start=1):
        t0 = time.perf_counter()
        if step == "stats":
            from analysis.stats import stats_tables

            result.units, result.signal_stats = stats_tables(trace, chunk=chunk)
        elif step == "memory":
            from analysis.memory import half_lives, retention_curves

            result.half_lives = half_lives(trace, chunk=chunk)
            curves = [
                retention_curves(trace, name, max_lag=max_lag, chunk=chunk)
                for name in trace.layers
                if trace[name].info.cell_type in ("lstm", "gru")
            ]
            result.retention = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
        elif step == "drivers":
            from analysis.decompose import gate_drivers

            with_weights = [n for n in trace.layers if {"kernel", "recurrent_kernel", "bias"} <= set(trace[n].weights)]
            if len(with_weights) < len(trace.layers):
                _skip(result, step, f"no weights stored for {sorted(set(trace.layers) - set(with_weights))}")
            if with_weights:
                result.decomposition = gate_drivers(trace, layers=with_weights, chunk=chunk)
        elif step == "events":
            from analysis.events import detect_events, summarize_events

            if events_path is None:
                result.events = detect_events(trace, chunk=chunk)
                result.event_summary = summarize_events(result.events, trace, chunk=chunk)
            else:
                result.events, result.event_summary = _stream_events(trace, Path(events_path), chunk)
                result.events_file = str(events_path)
        elif step == "token_gates":
            from analysis.decompose import token_gate_table

            fed = [n for n in trace.layers if "embedding" in trace[n].weights]
            if fed and trace.tokens is not None:
                result.token_gates = pd.concat(
                    [token_gate_table(trace, n, token_ids=_observed_tokens(trace, n, chunk)) for n in fed],
                    ignore_index=True,
                )
        elif step == "features":
            fn = _optional("analysis.features", "build_features", result, step)
            if fn is not None:
                feats = fn(trace, user_features=features)
        elif step in ("correlations", "probes"):
            if feats is None:
                _skip(result, step, "no features (the features step did not run)")
            else:
                name = (
                    ("analysis.correlate", "correlations")
                    if step == "correlations"
                    else ("analysis.probes", "probe_report")
                )
                fn = _optional(*name, result, step)
                if fn is not None:
                    setattr(result, step, fn(trace, feats))
        elif step == "clusters":
            fn = _optional("analysis.clusters", "cluster_units", result, step)
            if fn is not None and not result.units.empty:
                hl = result.half_lives if len(result.half_lives) else None
                corr = result.correlations if len(result.correlations) else None
                result.clusters = fn(result.units, hl, corr)
            elif fn is not None:
                _skip(result, step, "no unit statistics to cluster (the stats step did not run)")
        log.info("analysis step %s took %.2f s", step, time.perf_counter() - t0)
        if progress is not None:
            progress(done, len(todo))
    log.info("analysis of %d layer(s) took %.2f s", len(trace.layers), time.perf_counter() - started)
    return result


def _stream_events(trace: Trace, path: Path, chunk: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the events of ``trace`` to ``path`` a chunk at a time; (empty events frame, event summary)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from analysis.events import EventSummaryBuilder, _empty_events, iter_events

    empty = _empty_events()
    builder = EventSummaryBuilder(trace, chunk=chunk)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for df in iter_events(trace, chunk=chunk, summary=builder):
            table = pa.Table.from_pandas(df, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table.cast(writer.schema))
    except BaseException:
        if writer is not None:
            writer.close()
        path.unlink(missing_ok=True)
        raise
    if writer is None:
        empty.to_parquet(path, index=False)
    else:
        writer.close()
    return empty, builder.result()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _skip(result: Analysis, step: str, why: str) -> None:
    log.warning("analysis step %r skipped: %s", step, why)
    result.skipped[step] = why


def _optional(module: str, name: str, result: Analysis, step: str) -> Callable[..., Any] | None:
    """``module.name`` or None (with a warning and a note in ``result.skipped``) when it is not there."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        _skip(result, step, f"{module}.{name} is not available ({e})")
        return None


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def save_analysis(analysis: Analysis, run_dir: str | os.PathLike) -> Path:
    """Write every table of ``analysis`` to ``RUN/analysis/<table>.parquet`` and ``index.json`` last.

    The previous ``index.json`` is removed first, each table is written atomically, and the new
    index (with each file's sha256) is written last: an interrupted save leaves no index, which
    :func:`load_analysis` reports, never a mix of old and new tables presented as complete.

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
            target = out / "events.parquet"
            if Path(analysis.events_file).resolve() != target.resolve():
                shutil.move(analysis.events_file, target)  # a rename when on the same file system
                analysis.events_file = str(target)
            files[name] = {"file": target.name, "sha256": _file_sha256(target)}
            continue
        data = _parquet_bytes(getattr(analysis, name))
        atomic_write_bytes(out / f"{name}.parquet", data)
        files[name] = {"file": f"{name}.parquet", "sha256": hashlib.sha256(data).hexdigest()}
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "tables": files, "skipped": dict(analysis.skipped)}
    atomic_write_bytes(out / INDEX, json.dumps(doc, indent=2).encode())
    log.info("saved analysis to %s", out)
    return out


def load_analysis(run_dir: str | os.PathLike) -> Analysis:
    """Read the tables that :func:`save_analysis` wrote under ``RUN/analysis/``.

    Raises
    ------
    analysis.store.RunStoreError
        When the run has no complete analysis or a table does not match its checksum.

    Examples
    --------
    >>> import tempfile
    >>> run = tempfile.mkdtemp()
    >>> _ = save_analysis(Analysis(skipped={"probes": "not run"}), run)
    >>> load_analysis(run).skipped
    {'probes': 'not run'}
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
            data = path.read_bytes()
        except OSError as e:
            raise RunStoreError(
                f"{path}: missing analysis table ({e.strerror}); run `gatelens analyze` again"
            ) from None
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise RunStoreError(f"{path}: does not match its checksum in {INDEX}; run `gatelens analyze` again")
        setattr(result, name, pd.read_parquet(io.BytesIO(data)))
    return result
