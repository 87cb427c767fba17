"""The steps of one analysis on every core: ``gatelens analyze RUN`` in worker processes.

The steps of :data:`~gatelens.analysis.pipeline.STEP_REGISTRY` read the run store and the features, not each
other's tables, except the few that declare ``reads`` (``clusters`` reads the tables of ``stats``, ``memory`` and
``correlations``). Their NumPy and pandas code holds the GIL most of the time (two steps on two threads ran slower
than one after the other), so :func:`analyze_processes` runs whole steps in worker processes instead:

* the parent starts the workers (fresh interpreters: no state of the parent is inherited, and the caller's script
  is not imported again); each opens the run by itself, caps BLAS at one thread (the workers share the cores), and is
  sent the next step whenever it is free, the steps longest first (:data:`COST_ORDER`), until none is left; a step
  declared ``by_layer`` (the probes, the longest) is one task per layer, its tables concatenated in the trace's layer
  order;
* while the workers run the steps that need no features, the parent checks the run (``verify``: its checksums, for
  :func:`~gatelens.analysis.pipeline.analyze_run`) and builds the features once (the ``features`` step); a step that
  needs them starts only then, on a worker that is free (the features are sent to each worker once, before its
  first such step). No worker's result is read before the check has passed: a run that fails it raises its error
  here, the workers are stopped, and nothing of theirs is used;
* the parent collects each step's tables, its ``skipped`` note and the events file, and runs the steps that read
  earlier tables itself once those are in.

Every table is what the same step computes in one process, the same functions on the same data:
``tests/test_analysis_parallel.py`` compares them table by table. A step that raises in a worker raises the same
exception in the parent, the other workers are stopped, and nothing is saved; a worker that dies (killed, out of
memory) is reported by its exit code. :func:`default_processes` says when it is worth it: below
:data:`MIN_PARALLEL_BYTES` of signals the start of a worker (a fresh interpreter importing NumPy, pandas and Zarr,
about a second of CPU) costs more than it saves.

Examples
--------
>>> from gatelens._examples import tiny_run
>>> from gatelens.analysis.store import open_run
>>> trace = open_run(tiny_run())
>>> default_processes(trace)  # a tiny run: analysed in this process
1
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gatelens.analysis.pipeline import STEP_REGISTRY, Analysis, Step, StepContext, _check_events_path, run_step
from gatelens.analysis.trace import LayerInfo, Trace

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
#: A worker's task: a step's name, and the layer it covers for a step run layer by layer (else None).
Task = tuple[str, "str | None"]

#: Signals (bytes as stored) from which :func:`default_processes` analyses in worker processes.
MIN_PARALLEL_BYTES = 64 << 20
#: At most this many worker processes (each holds its own chunk buffers: ~0.6 GB at 256 sequences of 2 x 128).
MAX_PROCESSES = 4
#: The steps, most expensive first (measured with ``benchmarks/analysis.py``): the order they are queued in, so the
#: long ones start first and the short ones fill the gaps. A step not named here is queued last.
COST_ORDER = (
    "probes", "examples", "correlations", "events", "drivers", "stats", "explanations", "memory", "token_gates",
)  # fmt: skip
#: The steps that need the features: queued until the parent has built them.
FEATURE_TASKS = frozenset(s.name for s in STEP_REGISTRY if s.needs_features)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity), at least 1.

    Examples
    --------
    >>> n = usable_cores()
    >>> isinstance(n, int) and 1 <= n <= (os.cpu_count() or 1)
    True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def signal_bytes(run: Trace | str | os.PathLike) -> int:
    """Bytes of every stored signal (the arrays the steps read) at their stored dtype: of a trace, or of a run
    directory from its manifest alone (nothing is opened or hashed, so it can be asked before the run is verified).

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> trace, _ = example_trace("lstm", n=2, steps=3, units=2)
    >>> signal_bytes(trace)                       # 2 x 3 x 2 values x 10 LSTM signals x 4 bytes (float32)
    480
    """
    if isinstance(run, Trace):
        return sum(int(run[n][s].nbytes) for n in run.layers for s in run[n].info.signals)
    from gatelens.analysis.store import read_manifest

    m = read_manifest(run)
    per_value = np.dtype(m["dtype"]).itemsize * m["n_sequences"] * m["n_steps"]
    return sum(per_value * d["units"] * len(LayerInfo.from_dict(d).signals) for d in m["layers"])


def default_processes(run: Trace | str | os.PathLike) -> int:
    """Worker processes for analysing ``run`` (a trace, or a run directory): one per usable core up to
    :data:`MAX_PROCESSES` for a run from a store with at least :data:`MIN_PARALLEL_BYTES` of signals, else 1
    (this process).

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> default_processes(example_trace("lstm", n=2, steps=3, units=2)[0])   # in memory: this process
    1
    >>> MIN_PARALLEL_BYTES, MAX_PROCESSES                                  # 64 MiB of signals, 4 workers at most
    (67108864, 4)
    """
    if isinstance(run, Trace) and run.path is None:
        return 1
    if signal_bytes(run) < MIN_PARALLEL_BYTES:
        return 1
    return min(usable_cores(), MAX_PROCESSES)


def worker_tasks(steps: Sequence[str], layers: Sequence[str]) -> list[Task]:
    """The tasks :func:`analyze_processes` sends to its workers for ``steps`` of a run with ``layers``, in the order
    they are queued: the steps that read no earlier table, longest first (:data:`COST_ORDER`), a ``by_layer`` step
    once per layer.

    Examples
    --------
    >>> worker_tasks(["stats", "clusters", "probes"], ["lstm", "gru"])   # clusters reads earlier tables: not sent
    [('probes', 'lstm'), ('probes', 'gru'), ('stats', None)]
    """
    rank = {name: i for i, name in enumerate(COST_ORDER)}
    queued = sorted(
        (s for s in STEP_REGISTRY if s.name in steps and s.name != "features" and not s.reads),
        key=lambda s: rank.get(s.name, len(rank)),
    )
    return [(s.name, layer) for s in queued for layer in (layers if s.by_layer else [None])]


@contextmanager
def started_workers(processes: int, tasks: int) -> Iterator[_Workers | None]:
    """``min(processes, tasks)`` worker processes started now, to be given to :func:`analyze_processes`; None when
    that is 1 (the caller analyses in its own process). They import the analysis while the caller goes on (opens
    the run), and open the run only once :func:`analyze_processes` sends it; all are stopped on leaving the
    block.

    Examples
    --------
    >>> with started_workers(4, 1) as workers:    # one task: no worker is started, the caller analyses itself
    ...     workers is None
    True
    """
    n = min(processes, tasks)
    if n <= 1:
        yield None
        return
    with _Workers(n) as workers:
        yield workers


def analyze_processes(
    trace: Trace,
    *,
    processes: int,
    features: str | os.PathLike | pd.DataFrame | None = None,
    progress: Progress | None = None,
    steps: Sequence[str],
    chunk: int = 256,
    max_lag: int = 50,
    events_path: str | os.PathLike,
    workers: _Workers | None = None,
    verify: Callable[[], None] | None = None,
) -> Analysis:
    """:func:`~gatelens.analysis.pipeline.analyze` of a run from a store, its steps run by ``processes`` workers.

    Parameters
    ----------
    trace : Trace
        Opened from a run directory (``trace.path``); every worker opens the same run.
    processes : int
        Worker processes (at least 1; at most one per task is started).
    features, progress, steps, chunk, max_lag
        As for :func:`~gatelens.analysis.pipeline.analyze`.
    events_path : path
        Where the events step streams its table (it is not sent back through a pipe).
    workers : optional
        Workers from :func:`started_workers` (started before the run was opened); default: started
        here, ``processes`` of them at most.
    verify : callable, optional
        A check of the run (:func:`~gatelens.analysis.pipeline.analyze_run` passes its checksum verification, for a
        run opened with ``verify=False``), called here while the workers run the steps that need no features, and
        before the features are built; whatever it raises is raised before any worker's result is read.

    Returns
    -------
    Analysis
        The same tables as :func:`~gatelens.analysis.pipeline.analyze` with the same arguments.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from gatelens._examples import tiny_run
    >>> from gatelens.analysis.store import open_run
    >>> trace = open_run(tiny_run())
    >>> events = pathlib.Path(tempfile.mkdtemp()) / "events.parquet"
    >>> a = analyze_processes(trace, processes=2, steps=("stats", "memory", "events"), events_path=events)
    >>> sorted(a.half_lives["signal"].unique()), a.events_file == str(events)
    (['forget_gate'], True)
    """
    if trace.path is None:
        raise ValueError("analyze_processes needs a trace opened from a run directory (trace.path)")
    _check_events_path(events_path)
    todo = [step for step in STEP_REGISTRY if step.name in steps]
    result = Analysis()
    ctx = StepContext(trace, result, features=features, chunk=chunk, max_lag=max_lag, events_path=events_path)
    done = 0

    def finished() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, len(todo))

    filled_by = {table: s.name for s in todo for table in s.tables}
    in_parent = [s for s in todo if s.reads]
    tasks = worker_tasks(steps, trace.layers)
    keys: dict[str, list[str | None]] = {}  # step -> its tasks' layers (None for a step run once)
    for name, key in tasks:
        keys.setdefault(name, []).append(key)
    parts: dict[str, dict[str | None, dict[str, pd.DataFrame]]] = {name: {} for name in keys}
    options = {"chunk": chunk, "max_lag": max_lag, "events_path": str(events_path)}
    with ExitStack() as stack:
        if workers is None:
            workers = stack.enter_context(_Workers(min(processes, max(1, len(tasks)))))
        stack.push(workers.stop_on_error)  # stopped before the error leaves: none writes (the events) after it
        workers.start(Path(trace.path), options)
        for task in tasks:  # those that need no features start now
            workers.submit(task)
        if verify is not None:
            verify()  # while the workers compute; none of their results is read before it passed
        for step in todo:  # the features, here: built once, sent to each worker before its first step that needs them
            if step.name == "features":
                run_step(ctx, step)
                finished()
        workers.features_ready(ctx.feature_table)
        _preload(in_parent)  # the parent's own steps' imports, while the workers compute
        ran: set[str] = set()
        pending = len(tasks)
        while pending or in_parent:
            for step in [s for s in in_parent if all(filled_by.get(t) in ran | {None} for t in s.reads)]:
                run_step(ctx, step)  # reads the tables of steps already in
                in_parent.remove(step)
                ran.add(step.name)
                finished()
            if not pending:
                continue
            (name, layer), tables, skipped, events_file = workers.result()
            pending -= 1
            result.skipped.update(skipped)
            if events_file is not None:
                result.events_file = events_file
            parts[name][layer] = tables
            if len(parts[name]) < len(keys[name]):
                continue
            for table in tables:  # every part in: the step's tables, its layers in the trace's order
                frames = [parts[name][key][table] for key in keys[name]]
                setattr(result, table, frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True))
            ran.add(name)
            finished()
    order = {s.name: i for i, s in enumerate(STEP_REGISTRY)}  # as one process notes them: in registry order
    result.skipped = dict(sorted(result.skipped.items(), key=lambda kv: order.get(kv[0], len(order))))
    return result


class _Workers:
    """Worker processes, each running the steps it is sent and sending back each step's tables.

    Each is a fresh ``python -c`` interpreter (:func:`_serve`) talking pickles over its stdin and stdout, not a
    ``multiprocessing`` child: those re-import the caller's ``__main__``, which runs a script's analysis again in
    every worker unless the script guards it with ``if __name__ == "__main__"``."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.procs: list[subprocess.Popen] = []
        self.running: dict[subprocess.Popen, Task] = {}  # worker -> the task it runs
        self.queued: list[Task] = []
        self.features: pd.DataFrame | None = None
        self.features_built = False  # until then, a step that needs the features stays queued
        self.sent_features: set[subprocess.Popen] = set()

    def __enter__(self) -> _Workers:
        code = "from gatelens.analysis.parallel import _serve; _serve()"
        try:
            for _ in range(self.n):  # all started first: they import side by side
                self.procs.append(subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                                   stdout=subprocess.PIPE))  # fmt: skip
        except BaseException:
            self._stop()
            raise
        return self

    def start(self, run: Path, options: dict[str, Any]) -> None:
        """Send every worker the run to open and the steps' options (before any task)."""
        hello = (str(run), options, logging.getLogger("gatelens").getEffectiveLevel())
        for p in self.procs:
            self._send(p, hello)

    def submit(self, task: Task) -> None:
        """Queue a task (a step, and its layer for a step run layer by layer); it starts once a worker is free (and,
        for a step that needs the features, once they are built: :meth:`features_ready`)."""
        self.queued.append(task)
        self._dispatch()

    def features_ready(self, features: pd.DataFrame | None) -> None:
        """The features are built (None: the features step did not run); the steps that need them may start."""
        self.features, self.features_built = features, True
        self._dispatch()

    def _dispatch(self) -> None:
        for p in self.procs:
            if p in self.running:
                continue
            task = next((t for t in self.queued if self.features_built or t[0] not in FEATURE_TASKS), None)
            if task is None:
                return
            self.queued.remove(task)
            if task[0] in FEATURE_TASKS and p not in self.sent_features:
                # p is idle (reading its stdin): sent to a busy worker, a large table could fill the pipe while that
                # worker waits for us to read its result
                if self.features is not None:
                    self._send(p, ("features", self.features))
                self.sent_features.add(p)
            self.running[p] = task
            self._send(p, ("task", task))

    def _send(self, p: subprocess.Popen, obj: Any) -> None:
        try:
            pickle.dump(obj, p.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            p.stdin.flush()
        except BrokenPipeError:  # it died (killed, out of memory) while idle
            raise RuntimeError(f"an analysis worker process stopped with exit code {p.wait()}") from None

    def result(self) -> tuple[Task, dict[str, pd.DataFrame], dict[str, str], str | None]:
        """The next finished task's ``(task, tables, skipped, events_file)``; its exception raised here."""
        ready = mp_connection.wait([p.stdout for p in self.running])
        p = next(p for p in self.running if p.stdout in ready)
        task = self.running.pop(p)
        try:
            kind, payload = pickle.load(p.stdout)
        except EOFError:  # it died: killed, out of memory
            raise RuntimeError(
                f"an analysis worker process stopped with exit code {p.wait()} while running the step {task[0]!r}"
            ) from None
        if kind == "error":
            raise payload
        self._dispatch()
        log.debug("analysis step %s%s ran in worker process %d", task[0], _of(task[1]), p.pid)
        return task, *payload

    def _stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()
            for f in (p.stdin, p.stdout):
                try:
                    f.close()
                except OSError:  # a broken pipe to a killed worker
                    pass

    def stop_on_error(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        """An exit callback (``ExitStack.push``): stop every worker at once if the block failed."""
        if exc_type is not None:
            self._stop()

    def close(self) -> None:
        """End the workers once their steps are done (each returns when its stdin closes); again, nothing."""
        for p in self.procs:
            if not p.stdin.closed:
                p.stdin.close()
        for p in self.procs:
            p.wait()
            p.stdout.close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:  # a step failed (or the parent was interrupted): stop the others at once
            self.stop_on_error(exc_type, exc, tb)
            return
        self.close()


def _serve() -> None:
    """A worker process (see :class:`_Workers`): open the run, then run each step sent on stdin until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops us
    inbox = sys.stdin.buffer
    outbox = os.fdopen(os.dup(1), "wb")  # the replies; whatever a library prints goes to stderr, not in them
    os.dup2(2, 1)
    from threadpoolctl import threadpool_limits

    from gatelens.analysis import _threads, probes
    from gatelens.analysis.store import open_run

    steps: dict[str, Step] = {s.name: s for s in STEP_REGISTRY}
    _preload(s for s in steps.values() if not s.reads)  # while the parent opens the run
    try:
        run, options, level = pickle.load(inbox)
    except EOFError:  # stopped before any work (a run that cannot be opened)
        return
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    threadpool_limits(limits=1, user_api="blas")  # the workers share the cores
    _threads.PASS_THREADS = 1  # and each worker's passes run on its own thread only
    probes.PROBE_THREADS = 1  # as do its probes' fits
    trace = feature_table = None
    while True:
        try:
            kind, payload = pickle.load(inbox)
        except EOFError:
            return
        if kind == "features":  # before the first step that needs them
            feature_table = payload
            continue
        task = payload
        name, layer = task
        try:
            if trace is None:
                trace = open_run(run, verify=False)  # verified by the parent, which reads no result before
            result = Analysis()
            layers = None if layer is None else [layer]
            run_step(StepContext(trace, result, feature_table=feature_table, layers=layers, **options), steps[name])
            reply: tuple = ("ok", ({t: getattr(result, t) for t in steps[name].tables}, dict(result.skipped),
                                   result.events_file))  # fmt: skip
        except Exception as e:  # sent to the parent, which raises it (and stops the workers)
            reply = ("error", _picklable(e))
        pickle.dump(reply, outbox, protocol=pickle.HIGHEST_PROTOCOL)
        outbox.flush()


def _preload(steps: Iterable[Step]) -> None:
    """Import the modules of ``steps`` (:attr:`Step.module`) now, where the wait costs nothing, instead of inside
    the first step that needs them."""
    for step in steps:
        if step.module:
            importlib.import_module(step.module)


def _of(layer: str | None) -> str:
    return "" if layer is None else f" (layer {layer!r})"


def _picklable(e: Exception) -> Exception:
    """``e`` if it survives pickling, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


__all__ = [
    "COST_ORDER",
    "FEATURE_TASKS",
    "MAX_PROCESSES",
    "MIN_PARALLEL_BYTES",
    "analyze_processes",
    "default_processes",
    "signal_bytes",
    "started_workers",
    "usable_cores",
    "worker_tasks",
]
