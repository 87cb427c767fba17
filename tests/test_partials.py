"""A failed or killed `gatelens analyze` / `export` leaves no file that a reader picks up; the next run tidies up.

Real subprocesses of the CLI are killed with SIGKILL while they write (the test polls until the partial file
has bytes in it); what pandas, pyarrow and DuckDB then see is checked, and the next run must succeed and leave
no partial. A features file that is bad half-way fails analyze after the events were streamed: nothing stays.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest

from gatelens.analysis.partials import PARTIAL_NAME, Partial, clean_partials
from gatelens.analysis.pipeline import analyze_run, load_analysis, read_events
from gatelens.analysis.store import RunWriter
from gatelens.analysis.trace import LayerInfo

N, T, UNITS, CHUNK = 512, 20, 8, 64  # small: the partial events file lives from the events step to the save


def _gatelens(*args: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, "-m", "gatelens", *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    """A stored LSTM run (no TensorFlow: written by the run store itself) with gates in (0, 1)."""
    out = tmp_path_factory.mktemp("big") / "run"
    info = LayerInfo(name="lstm", cell_type="lstm", units=UNITS, input_dim=2)
    rng = np.random.default_rng(0)
    with RunWriter(out, [info], n_sequences=N, n_steps=T, chunk_sequences=CHUNK, n_features=2) as w:
        for s in range(0, N, CHUNK):
            b = {k: rng.uniform(0, 1, size=(CHUNK, T, UNITS)).astype(np.float32) for k in info.signals}
            b["mask"] = np.ones((CHUNK, T), bool)
            b["input"] = rng.normal(size=(CHUNK, T, 2)).astype(np.float32)
            w.write_batch(s, {"lstm": b}, x=b["input"])
        w.finish(verification={"lstm": 0.0}, feature_names=["x0", "x1"])
    return out


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".partial" in p.name or ".tmp-" in p.name)


def _kill_when(proc: subprocess.Popen, folder: Path, pattern: str, timeout: float = 240.0) -> Path:
    """SIGKILL ``proc`` as soon as a partial matching ``pattern`` under ``folder`` holds bytes; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = [p for p in folder.glob(pattern) if p.is_file() and p.stat().st_size > 0]
        if hits:
            proc.send_signal(signal.SIGKILL)
            proc.wait(60)
            return hits[0]
        if proc.poll() is not None:
            pytest.fail(f"finished before the partial was seen: {proc.returncode} {proc.stderr.read()[-2000:]!r}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"no partial {pattern} within {timeout} s")


def _reader_files(folder: Path) -> dict[str, list[str]]:
    """The files each reader would take from ``folder``: a pyarrow dataset, a DuckDB glob and Python's glob."""
    seen = {"pyarrow": sorted(Path(f).name for f in pads.dataset(folder, format="parquet").files)}
    seen["glob"] = sorted(p.name for p in folder.glob("*.parquet"))
    try:
        import duckdb
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
    else:
        rows = duckdb.sql(f"select file from glob('{folder.as_posix()}/*.parquet')").fetchall()
        seen["duckdb"] = sorted(Path(r[0]).name for r in rows)
    return seen


def test_killed_analyze_leaves_the_previous_analysis_and_the_next_cleans_up(big_run):
    analysis = big_run / "analysis"
    first = analyze_run(big_run, steps=("stats", "events"))  # a complete analysis that a reader may be using
    before = read_events(load_analysis(big_run))
    assert len(before) > 0 and first.events_file == str(analysis / "events.parquet")
    tables = sorted(p.name for p in analysis.glob("*.parquet"))
    assert _partials(big_run) == []

    proc = _gatelens("analyze", big_run)
    left = _kill_when(proc, analysis, ".events.parquet.partial-*")
    assert proc.returncode == -signal.SIGKILL
    assert left.exists() and PARTIAL_NAME.match(left.name)  # killed mid-events: the partial is still there...
    for reader, names in _reader_files(analysis).items():  # ...and no reader takes it
        assert [n for n in names if n != "index.json"] == tables, reader  # pyarrow lists every visible file
    loaded = load_analysis(big_run)  # the previous analysis, whole and verified
    pd.testing.assert_frame_equal(read_events(loaded), before)

    again = _gatelens("analyze", big_run)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    assert _partials(big_run) == []
    pd.testing.assert_frame_equal(read_events(load_analysis(big_run)), before)


def test_a_bad_features_file_half_way_leaves_no_partial(big_run, tmp_path):
    rows = [f"{s},{t},{(s + t) % 7}" for s in range(N) for t in range(T)]
    rows[len(rows) // 2] = f"{N // 2},0,not-a-number"
    bad = tmp_path / "features.csv"
    bad.write_text("sequence,step,phase\n" + "\n".join(rows) + "\n")
    before = {p.name: p.stat().st_mtime_ns for p in (big_run / "analysis").iterdir()}
    proc = _gatelens("analyze", big_run, "--features", bad)
    _, err = proc.communicate(timeout=600)
    err = err.decode()
    assert proc.returncode == 2, err[-2000:]
    assert "Traceback" not in err and "features.csv" in err
    assert _partials(big_run) == []  # the events had been streamed: their partial is gone too
    after = {p.name: p.stat().st_mtime_ns for p in (big_run / "analysis").iterdir()}
    assert after == before  # the previous analysis untouched


def test_killed_parquet_export_leaves_nothing_a_reader_takes(big_run, tmp_path):
    out = tmp_path / "export"
    proc = _gatelens("export", big_run, "--out", out, "--format", "parquet", "--signals", "hidden_state")
    left = _kill_when(proc, out, ".activations.partial-*/layer=*/*")
    assert proc.returncode == -signal.SIGKILL
    assert left.exists() and not left.name.endswith(".parquet")  # not even a recursive *.parquet glob takes it
    assert pads.dataset(out, format="parquet").files == []
    assert sorted(p.name for p in out.rglob("*.parquet")) == []
    again = _gatelens("export", big_run, "--out", out, "--format", "parquet", "--signals", "hidden_state")
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    assert _partials(out) == []
    acts = pd.read_parquet(out / "activations")
    assert len(acts) == N * T * UNITS


def test_clean_partials_keeps_a_live_writers_partial(tmp_path):
    live = Partial(tmp_path / "units.parquet")
    dead = tmp_path / ".events.parquet.partial-0123456789ab"
    dead.write_bytes(b"PAR1")
    mine = tmp_path / ".notes.partial"  # not a gatelens partial name: never touched
    mine.write_bytes(b"mine")
    assert clean_partials(tmp_path) == [dead]
    assert live.path.exists() and mine.exists()
    live.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.partial"]
