"""The steps of one analysis in worker processes give the tables of one process, table by table."""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gatelens.analysis import parallel
from gatelens.analysis.pipeline import (
    STEP_REGISTRY,
    STEPS,
    Analysis,
    StepContext,
    analyze_run,
    load_analysis,
    run_step,
)
from gatelens.analysis.store import open_run
from gatelens.errors import RunStoreError, UsageError


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two copies of a run of a stacked LSTM -> GRU model (two layers: the probes run layer by layer), features."""
    import keras

    from gatelens.models.extract import write_run

    base = tmp_path_factory.mktemp("parallel")
    model = keras.Sequential(
        [
            keras.Input((6, 2)),
            keras.layers.LSTM(3, return_sequences=True, name="lstm"),
            keras.layers.GRU(2, return_sequences=True, name="gru"),
            keras.layers.Dense(1, name="head"),
        ]
    )
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") for w in model.get_weights()])
    one = base / "one"
    write_run(model, rng.normal(size=(10, 6, 2)).astype("float32"), one, batch_size=4)
    two = base / "two"
    shutil.copytree(one, two)
    features = base / "features.csv"
    steps = open_run(one).n_steps
    seq, step = np.divmod(np.arange(10 * steps), steps)
    pd.DataFrame({"sequence": seq, "step": step, "odd": (seq + step) % 2}).to_csv(features, index=False)
    return one, two, features


def test_worker_processes_give_the_tables_of_one_process(runs, caplog):
    one, two, features = runs
    seq = analyze_run(one, features=features, processes=1)
    with caplog.at_level(logging.DEBUG, logger="gatelens.analysis.parallel"):
        par = analyze_run(two, features=features, processes=2)
    lines = [r.getMessage() for r in caplog.records if "ran in worker process" in r.getMessage()]
    workers = {int(line.rsplit(" ", 1)[1]) for line in lines}
    assert len(workers) == 2 and os.getpid() not in workers  # the steps ran in two other processes
    assert {line.split()[2] for line in lines} == {
        s.name for s in STEP_REGISTRY if s.name != "features" and not s.reads
    }
    # the probes as one task per layer, their rows concatenated in layer order (compared below)
    assert sorted(line.split(" ran ")[0] for line in lines if " probes " in line) == [
        "analysis step probes (layer 'gru')",
        "analysis step probes (layer 'lstm')",
    ]
    assert list(seq.probes["layer"].unique()) == ["lstm", "gru"]
    assert par.skipped == seq.skipped and list(par.skipped) == list(seq.skipped)
    for name in Analysis.tables():
        if name != "events":
            pd.testing.assert_frame_equal(getattr(par, name), getattr(seq, name), check_exact=True, obj=name)
    assert len(par.clusters) and len(par.probes) and len(par.correlations)  # the feature steps had the features
    ev_seq, ev_par = pq.read_table(seq.events_file), pq.read_table(par.events_file)
    assert ev_par.num_rows == ev_seq.num_rows > 0 and ev_par.equals(ev_seq)
    saved = load_analysis(two)  # saved as one process saves it: index last, checksums that match
    pd.testing.assert_frame_equal(saved.examples, seq.examples)


def test_a_step_that_fails_in_a_worker_raises_its_error_here(runs, tmp_path):
    one, _, _ = runs
    run = tmp_path / "run"
    shutil.copytree(one, run)
    shutil.rmtree(run / "analysis", ignore_errors=True)
    trace = open_run(run)  # verified here; then a chunk of one signal is cut short, as a failing disk would
    chunk = _signal_chunk(run, "hidden_state")
    chunk.write_bytes(chunk.read_bytes()[:7])
    with pytest.raises(Exception) as one_process:
        run_step(StepContext(open_run(run, verify=False), Analysis()), STEP_REGISTRY[0])
    with pytest.raises(type(one_process.value)) as workers:
        parallel.analyze_processes(trace, processes=2, steps=("stats", "memory"), events_path=tmp_path / "e.parquet")
    assert str(workers.value) == str(one_process.value)
    assert not (tmp_path / "e.parquet").exists()


def test_steps_that_run_in_workers_read_no_earlier_table(runs):
    """A step run in a worker sees none of the other steps' tables: each step that does not declare ``reads``
    must read none (checked by running it on a result that records the tables read)."""
    one, _, _ = runs
    trace = open_run(one)
    features = StepContext(trace, Analysis())
    run_step(features, next(s for s in STEP_REGISTRY if s.name == "features"))

    class Recording(Analysis):
        def __getattribute__(self, name):
            if name in Analysis.tables():
                object.__getattribute__(self, "read").add(name)
            return object.__getattribute__(self, name)

    for step in STEP_REGISTRY:
        result = Recording()
        object.__setattr__(result, "read", set())
        run_step(StepContext(trace, result, feature_table=features.feature_table), step)
        assert result.read <= set(step.reads), (step.name, result.read)
        if step.name == "clusters":
            assert result.read  # the check sees a read


def test_default_processes_and_bad_counts(runs, monkeypatch):
    one, _, _ = runs
    trace = open_run(one)
    # from the manifest alone (before the run is verified), the bytes of the arrays the steps read
    stored = sum(trace[n][s].nbytes for n in trace.layers for s in trace[n].info.signals)
    assert parallel.signal_bytes(one) == parallel.signal_bytes(trace) == stored > 0
    assert parallel.default_processes(trace) == parallel.default_processes(one) == 1  # a tiny run: in this process
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", stored)
    cores = min(parallel.usable_cores(), parallel.MAX_PROCESSES)
    assert parallel.default_processes(trace) == parallel.default_processes(one) == cores
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", stored + 1)
    assert parallel.default_processes(one) == 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UsageError, match="processes must be a whole number"):
            analyze_run(one, processes=bad)


def _signal_chunk(run, signal):
    return next(p for p in sorted((run / "layers").rglob("*")) if p.is_file() and f"{signal}/c/" in p.as_posix())


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda f: f.write_bytes(f.read_bytes()[::-1]), id="reversed"),
        pytest.param(lambda f: f.write_bytes(f.read_bytes()[:7]), id="truncated"),
        pytest.param(lambda f: f.unlink(), id="removed"),  # (Zarr reads a missing chunk as fill values)
        pytest.param(lambda f: (Path(str(f).split("/c/")[0]) / "zarr.json").write_text("{"), id="open"),  # fails open
    ],
)
def test_workers_started_before_the_run_is_verified_stop_when_it_fails(runs, tmp_path, damage):
    """analyze_run starts its workers before it verifies the run, and verifies it while they compute; a run that
    fails its checksums (whatever the workers made of the damaged chunk meanwhile) raises the error of one process,
    no worker outlives the call, and nothing is written."""
    import psutil

    one, _, _ = runs
    run = tmp_path / "run"
    shutil.copytree(one, run)
    shutil.rmtree(run / "analysis", ignore_errors=True)  # (the first test analysed the run copied)
    damage(_signal_chunk(run, "forget_gate"))

    def alive() -> set[int]:
        return {c.pid for c in psutil.Process().children(recursive=True) if c.is_running() and c.status() != "zombie"}

    before = alive()  # (processes other tests of this pytest process may hold)
    errors = []
    for processes in (1, 2):
        with pytest.raises(RunStoreError) as e:
            analyze_run(run, processes=processes)
        errors.append(str(e.value))
    assert errors[0] == errors[1], errors
    assert any(m in errors[0] for m in ("does not match its checksum", "are missing")), errors[0]
    assert alive() <= before
    assert not (run / "analysis").exists()  # nothing written, not even the folder


def test_steps_without_features_run_while_the_run_is_verified(runs, tmp_path):
    """The check ``analyze_processes`` is given runs while the workers compute: the events step (no features)
    streams its file before the check returns, and the steps that need the features still get them."""
    import time

    one, _, features = runs
    trace = open_run(one)
    events = tmp_path / "events.parquet"
    seen = []

    def verify():  # returns once the events worker has written its file (or fails the test after a minute)
        deadline = time.monotonic() + 60
        while not (events.exists() and events.stat().st_size > 0):
            assert time.monotonic() < deadline, "no worker ran a step while the run was being verified"
            time.sleep(0.01)
        seen.append(events.stat().st_size)

    steps = ("features", "events", "correlations", "probes")
    par = parallel.analyze_processes(
        trace, processes=2, features=features, steps=steps, events_path=events, verify=verify
    )
    seq = analyze_run(trace, features=features, steps=steps)
    assert seen and len(par.probes) and len(par.correlations)
    for name in ("probes", "correlations"):
        pd.testing.assert_frame_equal(getattr(par, name), getattr(seq, name), check_exact=True, obj=name)


def test_a_failed_check_stops_the_workers_and_reads_none_of_their_results(runs, tmp_path):
    one, _, _ = runs
    trace = open_run(one)

    def verify():
        raise RunStoreError("the check failed")

    with pytest.raises(RunStoreError, match="the check failed"):
        parallel.analyze_processes(
            trace, processes=2, steps=("stats", "events"), events_path=tmp_path / "e.parquet", verify=verify
        )


def test_worker_tasks_and_step_modules():
    tasks = parallel.worker_tasks(("features", "probes", "stats", "clusters"), ["a", "b"])
    assert tasks == [("probes", "a"), ("probes", "b"), ("stats", None)]  # longest first; clusters in the parent
    assert len(parallel.worker_tasks(STEPS, ["a"])) == len([s for s in STEP_REGISTRY if not s.reads]) - 1
    for step in STEP_REGISTRY:  # the module a worker imports ahead is the one the step imports its code from
        assert f"from {step.module} import" in inspect.getsource(step.run), step.name


def test_a_worker_imports_no_scikit_learn():
    """A worker imports every step's module ahead (:func:`parallel._preload`); none of them pulls in scikit-learn
    (about a second of CPU per worker): the probes' one-by-one estimator lives apart (probe_estimator)."""
    import subprocess
    import sys

    code = (
        "import sys; from gatelens.analysis.parallel import _preload; "
        "from gatelens.analysis.pipeline import STEP_REGISTRY; "
        "_preload(s for s in STEP_REGISTRY if not s.reads); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'tensorflow', 'keras', 'dask'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_bad_features_file_found_while_the_workers_compute_leaves_nothing(runs, tmp_path):
    """The features are built while the workers run their first steps (the events stream into a partial file):
    a bad features file raises the error of one process, the workers are stopped before the partial is removed,
    and the run is left as it was."""
    one, _, _ = runs
    run = tmp_path / "run"
    shutil.copytree(one, run)
    shutil.rmtree(run / "analysis", ignore_errors=True)
    bad = tmp_path / "features.csv"
    bad.write_text("sequence,when,odd\n0,0,1\n")
    errors = []
    for processes in (1, 2):
        with pytest.raises(Exception) as e:
            analyze_run(run, features=bad, processes=processes)
        errors.append((type(e.value), str(e.value)))
        assert not (run / "analysis").exists()
    assert errors[0] == errors[1] and "step" in errors[0][1], errors
