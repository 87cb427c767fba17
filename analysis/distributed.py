"""Distributed analysis: the tables of ``gatelens analyze`` computed by the workers of a Dask cluster.

:func:`analyze_distributed` gives the tables :func:`gatelens.analysis.pipeline.analyze_run` gives, for the
same run, computed as Dask tasks over the run store (every worker opens the store itself; only small
partial results travel):

* the run's checksums: the files are hashed by the workers, a batch of files per task;
* **statistics, saturation, half-lives, retention** (one task per layer and chunk of sequences): each
  task returns its chunk's sums (shifted sums of the signals, counts below/above the thresholds and of
  saturated/linear steps, slope sums, min/max, log-gate sums, window products) and the client adds them
  up in chunk order, with the same shift as the single-process pass -- the same floating-point
  operations in the same order, so the tables are equal to it, not only close;
* **events**: the same task writes its chunk's events as one Parquet file (a dataset of parts); the
  client builds the event summary from the parts and joins them, in order, into the run's
  ``events.parquet`` (a part at a time, never the whole table in memory);
* **correlations**: one task per layer and chunk returns the chunk's centred moments (per group of
  features with the same missing cells) and its rows of the bounded Spearman subsample; the client
  merges the moments in chunk order with the update of Chan, Golub & LeVeque (the single-process
  merge) and ranks the gathered subsample;
* every other step of :data:`gatelens.analysis.pipeline.STEP_REGISTRY` (features, drivers, token table,
  probes, clusters, examples, explanations, and any step added later) runs on the client with its
  single-process code (reading the store a chunk at a time; probes fit on the bounded sample they gather).

``RUN`` may be a path or a ``file://`` URL that every worker sees.

Examples
--------
In Python::

    from gatelens.models.distributed import local_client
    with local_client(2) as client:
        result = analyze_distributed("runs/big", client=client)

(tests/test_distributed.py runs it on a two-process cluster and compares every table.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gatelens._console import PROCESS_ENV
from gatelens.analysis.partials import Partial, clean_partials
from gatelens.analysis.pipeline import STEPS, Analysis, save_analysis, write_event_tables
from gatelens.analysis.store import ANALYSIS_DIR, MANIFEST, read_manifest, sha256_file, verify_run
from gatelens.analysis.trace import Trace, iter_chunks
from gatelens.errors import UsageError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
#: Environment of every worker process: one thread for TensorFlow, BLAS and OpenMP (the cluster's
#: parallelism is its processes), and TensorFlow's start-up chatter off.
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    **PROCESS_ENV,  # no NumPy huge-page requests (gatelens._console)
}
_FILES_PER_TASK = 64
#: Per worker process: the runs opened lazily, by path and manifest time, the most recently used last; at most
#: :data:`CACHED_RUNS` (a long-lived cluster that analyses many runs keeps the last few open, not all).
_TRACES: OrderedDict[tuple[str, float], Trace] = OrderedDict()
_TRACES_LOCK = threading.Lock()
CACHED_RUNS = 4


def _trace(run: str) -> Trace:
    """The run opened lazily on this worker (once; the client has checked the checksums)."""
    from gatelens.analysis.store import open_run

    key = (run, os.stat(Path(run) / MANIFEST).st_mtime)
    with _TRACES_LOCK:
        if key in _TRACES:
            _TRACES.move_to_end(key)
        else:
            _TRACES[key] = open_run(run, verify=False)
            while len(_TRACES) > CACHED_RUNS:
                _TRACES.popitem(last=False)
        return _TRACES[key]


# ----------------------------------------------------------------------------------------------------------------
# clusters and paths


def local_cluster(n_workers: int, **kwargs: Any) -> Any:
    """A :class:`~distributed.LocalCluster` of ``n_workers`` single-threaded processes with :data:`WORKER_ENV`."""
    import dask
    from distributed import LocalCluster

    options = {"n_workers": int(n_workers), "threads_per_worker": 1, "processes": True, "dashboard_address": ":0"}
    options.update(kwargs)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": dict(WORKER_ENV)}):
        return LocalCluster(**options)


@contextlib.contextmanager
def local_client(n_workers: int, **kwargs: Any) -> Iterator[Any]:
    """A client of a fresh :func:`local_cluster`, closed (cluster and all) at the end of the block."""
    from distributed import Client

    with local_cluster(n_workers, **kwargs) as cluster, Client(cluster) as client:
        yield client


@contextlib.contextmanager
def cluster_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """The client the command line asked for: a local cluster of ``workers`` or the cluster at ``scheduler``."""
    from distributed import Client

    if workers:
        with local_client(workers) as client:
            yield client
        return
    if not scheduler:
        raise UsageError("give --workers N or --scheduler ADDRESS")
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as e:
        raise UsageError(f"--scheduler {scheduler}: no Dask scheduler answered ({' '.join(str(e).split())})") from None
    with client:
        yield client


def local_path(url: str | os.PathLike) -> Path:
    """A run location as a local path: a path, or a ``file://`` URL (what every worker must also see).

    Raises
    ------
    UsageError
        For another fsspec protocol (``s3://``, ``memory://``, ...): the run store commits a run with a
        directory rename, which object stores lack, and a ``memory://`` store is private to one process.

    Examples
    --------
    >>> str(local_path("file:///tmp/run")), str(local_path("/tmp/run"))
    ('/tmp/run', '/tmp/run')
    """
    text = os.fspath(url)
    if "://" not in text:
        return Path(text)
    import fsspec

    protocol, path = fsspec.core.split_protocol(text)
    fs = fsspec.filesystem(protocol)
    if not isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        raise UsageError(
            f"{text}: runs are written to and read from a file system every worker sees (a path or a file:// URL); "
            f"{protocol}:// is not supported"
        )
    return Path(fs._strip_protocol(path))


# ----------------------------------------------------------------------------------------------------------------
# worker tasks


def _hash_files(run: str, rels: list[str]) -> dict[str, str]:
    return {rel: sha256_file(Path(run) / rel) for rel in rels}


def _chunk_task(
    run: str, layer: str, start: int, stop: int, shifts: dict[str, Any], thresholds: dict[str, float] | None,
    events_dir: str | None, part: str, max_lag: int,
) -> dict[str, Any]:  # fmt: skip
    """One layer, sequences ``start:stop``: stats, saturation, half-life and retention sums; events to Parquet."""
    from gatelens.analysis._reading import read, read_mask, retention_signal
    from gatelens.analysis.memory import log_gate_sums, retention_sums
    from gatelens.analysis.stats import activated_signals, chunk_sums, saturation_counts

    trace = _trace(run)
    lt = trace[layer]
    info = lt.info
    rows = slice(start, stop)
    m = read_mask(lt, rows)
    out: dict[str, Any] = {"any": bool(m.any()), "stats": {}, "curve": {}, "half": None, "retention": None}
    if m.any():
        activated = activated_signals(info, warn=False)
        for sig in info.signals:
            v = read(lt[sig], rows)[m]
            out["stats"][sig] = chunk_sums(v, shifts["stats"][sig])
            for s, (pre, act) in activated.items():
                if pre == sig:
                    out["curve"][s] = saturation_counts(act, v)
        signal = retention_signal(info.cell_type)
        if signal is not None:
            g = np.abs(read(lt[signal], rows))
            out["half"] = log_gate_sums(g[m], shifts["half"])
            out["retention"] = retention_sums(g, m, min(int(max_lag), m.shape[1]))
    out["events"] = None
    if events_dir is not None and thresholds is not None:
        from gatelens.analysis.events import EVENT_COLUMNS, _layer_events

        frames = [df for _, df in _layer_events(trace, lt, rows, thresholds, ("forget", "write", "read"))]
        if frames:  # the blocks in turn are in the table's order
            df = pd.concat(frames, ignore_index=True)[EVENT_COLUMNS]
            path = Path(events_dir) / f"{part}.parquet"
            df.to_parquet(path, index=False)
            out["events"] = str(path)
    return out


def _corr_task(run: str, layer: str, start: int, stop: int, signals: list[str], local: np.ndarray,
               frow: np.ndarray, pick: np.ndarray | None, fmat: np.ndarray, groups: list[np.ndarray]) -> dict:  # fmt: skip
    """One layer, sequences ``start:stop``: per signal, the chunk's moments per feature group and its sampled rows."""
    from gatelens.analysis.correlate import chunk_moments, chunk_rows

    trace = _trace(run)
    valid = ~np.isnan(fmat)
    out, prepared = {}, {}  # the chunk's feature side formed once for every signal
    for signal in signals:
        arr = trace[layer][signal]
        x = chunk_rows(arr, slice(start, stop), local, int(arr.shape[2]))
        out[signal] = (chunk_moments(x, frow, fmat, valid, groups, prepared=prepared), x if pick is None else x[pick])
    return out


# ----------------------------------------------------------------------------------------------------------------
# the client


def _verify(client: Any, run: Path, manifest: dict[str, Any]) -> None:
    """:func:`gatelens.analysis.store.verify_run`, the hashing done by the workers."""

    def hash_files(rels: list[str]) -> Iterator[tuple[str, str]]:
        batches = [rels[i : i + _FILES_PER_TASK] for i in range(0, len(rels), _FILES_PER_TASK)]
        for digests in client.gather(client.map(_hash_files, [str(run)] * len(batches), batches, pure=False)):
            yield from digests.items()

    verify_run(run, manifest, hash_files=hash_files)


def _first_real(lt: Any, chunk: int) -> tuple[slice, tuple[int, int]] | None:
    """The first chunk with an unmasked step, and the first unmasked (sequence, step) in it."""
    from gatelens.analysis._reading import read_mask

    for rows in iter_chunks(lt.shape[0], chunk):
        m = read_mask(lt, rows)
        if m.any():
            s, t = np.argwhere(m)[0]
            return rows, (rows.start + int(s), int(t))
    return None


def _shifts(lt: Any, chunk: int) -> dict[str, Any] | None:
    """The shifts of the single-process pass: the first unmasked value of every signal; the largest finite
    log gate of the first chunk with an unmasked step (half-lives)."""
    from gatelens.analysis._reading import read, read_mask, retention_signal
    from gatelens.analysis.memory import log_gate_shift

    first = _first_real(lt, chunk)
    if first is None:
        return None
    rows, (s, t) = first
    stats = {sig: np.asarray(lt[sig][s, t], np.float64) for sig in lt.info.signals}
    half = None
    signal = retention_signal(lt.info.cell_type)
    if signal is not None:
        half = log_gate_shift(np.abs(read(lt[signal], rows)[read_mask(lt, rows)]))
    return {"stats": stats, "half": half}


def _stats_frames(
    name: str, info: Any, shifts: dict[str, np.ndarray], parts: list[dict]
) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """unit_stats and signal_stats rows of one layer from its chunks' sums (added in chunk order)."""
    from gatelens.analysis.stats import _Moments, activated_signals, layer_stats_frames

    mom = {s: _Moments(info.units, shift=shifts[s]) for s in info.signals}
    activated = activated_signals(info)
    curve = {s: np.zeros((3, info.units)) for s in activated}
    for p in parts:
        for sig, sums in p["stats"].items():
            mom[sig].add(sums)
        for s, c in p["curve"].items():
            curve[s] += c
    return layer_stats_frames(name, info, mom, curve, activated)


def _half_frame(name: str, info: Any, shift: np.ndarray, parts: list[dict]) -> pd.DataFrame:
    from gatelens.analysis._reading import retention_signal
    from gatelens.analysis.memory import half_life_frame

    sums = (np.zeros(info.units, np.int64), np.zeros(info.units), 0)
    for p in parts:
        if p["half"] is not None:
            sums = tuple(a + b for a, b in zip(sums, p["half"]))
    return half_life_frame(name, retention_signal(info.cell_type), info.units, shift, *sums)


def _retention_frame(name: str, info: Any, n_steps: int, max_lag: int, parts: list[dict]) -> pd.DataFrame:
    from gatelens.analysis._reading import retention_signal
    from gatelens.analysis.memory import retention_frame

    lags_n = min(int(max_lag), n_steps)
    sums = np.zeros((lags_n, info.units))
    counts = np.zeros(lags_n, np.int64)
    for p in parts:
        if p["retention"] is not None:
            sums += p["retention"][0]
            counts += p["retention"][1]
    return retention_frame(name, retention_signal(info.cell_type), sums, counts)


def correlations_distributed(
    client: Any, run: str, trace: Trace, features: pd.DataFrame, *, chunk_sequences: int = 256
) -> pd.DataFrame:
    """:func:`gatelens.analysis.correlate.correlations` (default arguments) with the chunks' moments on workers."""
    from gatelens.analysis._reading import select_layers
    from gatelens.analysis.correlate import (
        COLUMNS,
        DEFAULT_MAX_RANK_ROWS,
        Moments,
        _select_signals,
        correlation_frame,
        feature_groups,
        layer_rows,
        rank_pick,
        subsample,
    )
    from gatelens.analysis.features import as_feature_matrix

    names = select_layers(trace, None)
    per_layer = _select_signals(trace, names, None)
    fmat, fnames = as_feature_matrix(features, None)
    valid = ~np.isnan(fmat)
    groups = feature_groups(valid)
    fmat_f = client.scatter(fmat, broadcast=True)
    frames = []
    for layer in names:
        rows = layer_rows(trace, layer, features, chunk_sequences=chunk_sequences)
        take = subsample(rows.total, DEFAULT_MAX_RANK_ROWS, 0)
        futures, offset = [], 0
        for sl, local, frow in rows.chunks:
            if local.size == 0:
                continue
            pick = rank_pick(take, offset, local.size)
            offset += local.size
            futures.append(
                (
                    frow if pick is None else frow[pick],
                    client.submit(
                        _corr_task, run, layer, sl.start, sl.stop, per_layer[layer], local, frow, pick, fmat_f, groups,
                        pure=False,
                    ),
                )
            )  # fmt: skip
        parts = [(fr, fut.result()) for fr, fut in futures]
        for signal in per_layer[layer]:
            moments = [Moments() for _ in groups]
            for _, res in parts:
                for total, part in zip(moments, res[signal][0]):
                    total.merge(part)
            frames.append(
                correlation_frame(
                    layer, signal, int(trace[layer][signal].shape[2]), moments, [res[signal][1] for _, res in parts],
                    [fr for fr, _ in parts], fmat, valid, groups, fnames,
                )
            )  # fmt: skip
    if not frames:
        return pd.DataFrame({c: [] for c in COLUMNS})
    return pd.concat(frames, ignore_index=True)


def _join_events(trace: Trace, parts: list[tuple[str, slice, str | None]], path: Path, chunk: int):
    """The event summary from the parts (in order) and the parts joined into ``path``; (empty events, summary)."""
    import pyarrow.parquet as pq

    from gatelens.analysis.events import EventSummaryBuilder, _empty_events

    builder = EventSummaryBuilder(trace, chunk=chunk)

    def tables() -> Iterator[Any]:
        for layer, rows, part in parts:
            if part is not None:
                table = pq.read_table(part)
                builder.add(table.to_pandas(), layer, rows)
                yield table

    write_event_tables(tables(), path)
    return _empty_events(), builder.result()


class _ChunkPass:
    """The one pass of tasks over every layer and chunk that stats, memory and events share (run once)."""

    def __init__(self, client: Any, run_dir: Path, trace: Trace, chunk: int, max_lag: int, events: bool) -> None:
        from gatelens.analysis.events import _check_thresholds

        self.trace, self.chunk, self.max_lag = trace, chunk, max_lag
        self.thresholds = {"forget_high": 0.9, "forget_low": 0.5, "write_threshold": 0.5, "read_threshold": 0.5}
        _check_thresholds(**self.thresholds)
        self.parts_dir = None
        if events:
            out = run_dir / ANALYSIS_DIR
            out.mkdir(exist_ok=True)
            self._parts = Partial(out / "events-parts", directory=True)  # held by the client; the workers write in it
            self.parts_dir = self._parts.path
        self.shifts: dict[str, dict[str, Any]] = {}
        futures: dict[str, list[tuple[slice, Any]]] = {}
        for i, name in enumerate(trace.layers):
            lt = trace[name]
            shifts = _shifts(lt, chunk)
            if shifts is None:
                from gatelens.errors import DataError

                raise DataError(f"layer {name!r} has no unmasked step: every step of every sequence is padding")
            self.shifts[name] = shifts
            futures[name] = [
                (
                    rows,
                    client.submit(
                        _chunk_task, str(run_dir), name, rows.start, rows.stop, shifts,
                        self.thresholds if events else None, None if self.parts_dir is None else str(self.parts_dir),
                        f"{i:04d}-{j:08d}", max_lag, pure=False,
                    ),
                )
                for j, rows in enumerate(iter_chunks(lt.shape[0], chunk))
            ]  # fmt: skip
        try:
            self.parts = {name: [(rows, f.result()) for rows, f in items] for name, items in futures.items()}
        except BaseException:
            self.close()
            raise

    def real(self, name: str) -> list[dict]:
        return [p for _, p in self.parts[name] if p["any"]]

    def stats(self) -> dict[str, pd.DataFrame]:
        from gatelens.analysis.stats import SIGNAL_STATS_COLUMNS, UNIT_STATS_COLUMNS, _empty

        units, sigs = [], []
        for name in self.trace.layers:
            u, s = _stats_frames(name, self.trace[name].info, self.shifts[name]["stats"], self.real(name))
            if u is not None:
                units.append(u)
            sigs.append(s)
        return {
            "units": pd.concat(units, ignore_index=True) if units else _empty(UNIT_STATS_COLUMNS),
            "signal_stats": pd.concat(sigs, ignore_index=True)[SIGNAL_STATS_COLUMNS],
        }

    def memory(self) -> dict[str, pd.DataFrame]:
        from gatelens.analysis._reading import retention_signal
        from gatelens.analysis.memory import HALF_LIFE_COLUMNS, half_lives

        trace = self.trace
        gated = [n for n in trace.layers if retention_signal(trace[n].info.cell_type) is not None]
        frames = [_half_frame(n, trace[n].info, self.shifts[n]["half"], self.real(n)) for n in gated]
        curves = [
            _retention_frame(n, trace[n].info, trace.n_steps, self.max_lag, [p for _, p in self.parts[n]])
            for n in gated
        ]
        return {
            "half_lives": pd.concat(frames, ignore_index=True)[HALF_LIFE_COLUMNS]
            if frames
            else half_lives(trace, layers=[]),
            "retention": pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
        }

    def events(self, path: Path) -> dict[str, pd.DataFrame]:
        parts = [(name, rows, p["events"]) for name in self.trace.layers for rows, p in self.parts[name]]
        events, summary = _join_events(self.trace, parts, path, self.chunk)
        return {"events": events, "event_summary": summary}

    def close(self) -> None:
        if self.parts_dir is not None:
            self._parts.close()


#: The steps that run as Dask tasks; every other step of the registry runs on the client.
DISTRIBUTED_STEPS = ("stats", "memory", "events", "correlations")


def analyze_distributed(
    run: str | os.PathLike,
    *,
    client: Any,
    features: str | os.PathLike | pd.DataFrame | None = None,
    progress: Progress | None = None,
    steps: Sequence[str] = STEPS,
    chunk: int = 256,
    max_lag: int = 50,
    save: bool = True,
) -> Analysis:
    """:func:`gatelens.analysis.pipeline.analyze_run` of a run directory on the Dask cluster of ``client``.

    The steps of :data:`DISTRIBUTED_STEPS` run as tasks over the store (see the module docstring); every
    other step of :data:`gatelens.analysis.pipeline.STEP_REGISTRY` runs on the client, as in one process.

    Parameters
    ----------
    run : path or ``file://`` URL
        A run directory every worker sees. Its checksums are verified first (by the workers).
    client : distributed.Client
    features, progress, steps, chunk, max_lag
        As for :func:`gatelens.analysis.pipeline.analyze`.
    save : bool
        Save the tables under ``RUN/analysis/`` (default True), as ``gatelens analyze`` does.

    Returns
    -------
    Analysis
        Equal, table for table, to the single-process analysis of the run.
    """
    from gatelens.analysis.pipeline import STEP_REGISTRY, StepContext, _steps
    from gatelens.analysis.store import open_run

    steps = _steps(steps)
    todo = [step for step in STEP_REGISTRY if step.name in steps]
    run_dir = local_path(run).resolve()
    manifest = read_manifest(run_dir)
    _verify(client, run_dir, manifest)
    trace = open_run(run_dir, verify=False)
    result = Analysis()
    clean_partials(run_dir / ANALYSIS_DIR)  # what a killed analyze left
    events_partial = Partial(run_dir / ANALYSIS_DIR / "events.parquet")  # no reader picks it up; removed on failure
    events_path = events_partial.path
    ctx = StepContext(trace, result, features=features, chunk=chunk, max_lag=max_lag, events_path=events_path)
    names = {step.name for step in todo}
    shared = None
    try:
        if names & {"stats", "memory", "events"}:
            shared = _ChunkPass(client, run_dir, trace, chunk, max_lag, events="events" in names)
        for done, step in enumerate(todo, start=1):
            ctx.step = step.name
            if step.name == "stats":
                tables = shared.stats()
            elif step.name == "memory":
                tables = shared.memory()
            elif step.name == "events":
                tables = shared.events(events_path)
                result.events_file = str(events_path)
            elif step.name == "correlations" and ctx.feature_table is not None:
                tables = {"correlations": correlations_distributed(client, str(run_dir), trace, ctx.feature_table)}
            else:
                tables = step.run(ctx) or {}
            for name, table in tables.items():
                setattr(result, name, table)
            if progress is not None:
                progress(done, len(todo))
        if save:
            save_analysis(result, run_dir)
    finally:
        if shared is not None:
            shared.close()
        events_partial.close()
    return result


def cli_analyze_run(run: str | os.PathLike, *, workers: int | None, scheduler: str | None, **kwargs: Any) -> Analysis:
    """``gatelens analyze RUN --workers N | --scheduler ADDRESS``: :func:`analyze_distributed` on that cluster."""
    with cluster_client(workers, scheduler) as client:
        return analyze_distributed(run, client=client, **kwargs)
