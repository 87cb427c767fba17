"""The Parquet events export is streamed: equal to the CSV export, written a batch at a time, memory bounded.

The run is written by the run store itself (no TensorFlow) and analysed for real (its events streamed to
disk). Memory is measured in fresh subprocesses (tracemalloc's peak, which numpy and pandas report to, plus
pyarrow's own pool peak) for an events file of R and of 4R rows: a streamed export needs the same; one that
reads the table needs four times as much. Row groups are counted, never time.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gatelens.analysis.events import EVENT_COLUMNS
from gatelens.analysis.export import export_run, read_csv, write_events_parquet
from gatelens.analysis.pipeline import analyze_run, iter_event_batches, load_analysis
from gatelens.analysis.store import RunWriter, open_run
from gatelens.analysis.trace import LayerInfo

N, T = 96, 12


def read_events(analysis):
    """Every event of ``analysis`` (the test's reference, read batch by batch from its file)."""
    return pd.concat(list(iter_event_batches(analysis)), ignore_index=True)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    out = tmp_path_factory.mktemp("ev") / "run"
    infos = [LayerInfo(name="lstm", cell_type="lstm", units=5, input_dim=2),
             LayerInfo(name="gru", cell_type="gru", units=3, input_dim=5)]  # fmt: skip
    rng = np.random.default_rng(4)
    with RunWriter(out, infos, n_sequences=N, n_steps=T, chunk_sequences=32, n_features=2) as w:
        for s in range(0, N, 32):
            batch = {}
            for info in infos:
                b = {k: rng.uniform(0, 1, size=(32, T, info.units)).astype(np.float32) for k in info.signals}
                b["mask"] = np.ones((32, T), bool)
                b["input"] = rng.normal(size=(32, T, info.input_dim)).astype(np.float32)
                batch[info.name] = b
            w.write_batch(s, batch, x=batch["lstm"]["input"])
        w.finish(verification={i.name: 0.0 for i in infos}, feature_names=["x0", "x1"])
    analyze_run(out, steps=("stats", "memory", "events"))
    return open_run(out), load_analysis(out)


@pytest.mark.parametrize("sel", [{}, {"layers": ["gru"], "sequences": range(10, 50)}], ids=["all", "selected"])
def test_parquet_events_equal_the_csv_export(analysed, tmp_path, sel):
    trace, analysis = analysed
    n_events = len(read_events(analysis))
    assert n_events > 1000  # enough events for several batches below
    csv = export_run(trace, tmp_path / "csv", analysis=analysis, **sel)
    par = export_run(trace, tmp_path / "par", format="parquet", analysis=analysis, **sel)
    want = read_csv(csv["events.csv"] if "events.csv" in csv else csv["events"])
    got = pd.read_parquet(par["events"])
    assert list(got.columns) == EVENT_COLUMNS and len(got) == len(want) > 0
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    if sel:  # the selection itself, from the events as analysed
        ev = read_events(analysis)
        keep = ev[(ev["layer"] == "gru") & ev["sequence"].between(10, 49)].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, keep, check_dtype=False)


def test_each_batch_read_is_one_row_group(analysed, tmp_path):
    _, analysis = analysed
    n_events = len(read_events(analysis))
    path = write_events_parquet(analysis, tmp_path / "events.parquet", batch_size=500)
    meta = pq.ParquetFile(path).metadata
    rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert rows == [500] * (n_events // 500) + ([n_events % 500] if n_events % 500 else [])
    assert meta.num_row_groups == math.ceil(n_events / 500) > 2
    pd.testing.assert_frame_equal(pd.read_parquet(path), read_events(analysis), check_dtype=False)
    # keys and text dictionary-encoded, as in the other Parquet tables
    encodings = meta.row_group(0).column(EVENT_COLUMNS.index("layer")).encodings
    assert any("DICTIONARY" in e for e in encodings)


def test_no_events_give_the_header(analysed, tmp_path):
    _, analysis = analysed
    path = write_events_parquet(analysis, tmp_path / "none.parquet", sequences=range(N + 5, N + 9))
    got = pd.read_parquet(path)
    assert got.empty and list(got.columns) == EVENT_COLUMNS


PEAK = textwrap.dedent(
    """
    import json, sys, tracemalloc
    import pyarrow as pa
    from gatelens.analysis.export import write_events_parquet
    from gatelens.analysis.pipeline import Analysis
    tracemalloc.start()
    write_events_parquet(Analysis(events_file=sys.argv[1]), sys.argv[2], batch_size=int(sys.argv[3]))
    print(json.dumps({"python": tracemalloc.get_traced_memory()[1], "arrow": pa.default_memory_pool().max_memory()}))
    """
)


def _events_file(path, rows: int, batch: int) -> None:
    """A synthetic events table of ``rows`` rows (the events' columns and types), written a row group at a time."""
    rng = np.random.default_rng(rows)
    writer = None
    for start in range(0, rows, batch):
        k = min(batch, rows - start)
        df = pd.DataFrame({
            "layer": "lstm", "sequence": rng.integers(0, 10_000, k), "step": rng.integers(0, 80, k),
            "unit": rng.integers(0, 64, k), "event": rng.choice(["forget", "write", "read"], k),
            "value": rng.random(k), "token": rng.choice(["a", "b", "=x"], k), "previous_value": rng.random(k),
            "delta_input": rng.normal(size=k), "delta_recurrent": rng.normal(size=k),
        })  # fmt: skip
        table = pa.Table.from_pandas(df, preserve_index=False)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=batch)
    writer.close()


def test_peak_memory_does_not_grow_with_the_events(tmp_path):
    batch = 20_000
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    script = tmp_path / "peak.py"
    script.write_text(PEAK)
    peaks, groups = {}, {}
    for rows in (5 * batch, 20 * batch):
        src, dst = tmp_path / f"src-{rows}.parquet", tmp_path / f"dst-{rows}.parquet"
        _events_file(src, rows, batch)
        r = subprocess.run([sys.executable, str(script), str(src), str(dst), str(batch)], env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        peak = json.loads(r.stdout.strip().splitlines()[-1])
        peaks[rows] = peak["python"] + peak["arrow"]
        meta = pq.ParquetFile(dst).metadata
        groups[rows] = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        assert meta.num_rows == rows
    assert groups == {5 * batch: [batch] * 5, 20 * batch: [batch] * 20}  # one row group per batch read
    # the whole table of 20 batches is ~4x the 5 batches' table; a streamed export holds one batch either way
    table_bytes = pq.ParquetFile(tmp_path / f"src-{20 * batch}.parquet").read().nbytes
    assert peaks[20 * batch] < 1.3 * peaks[5 * batch], peaks
    assert peaks[20 * batch] < table_bytes / 3, (peaks, table_bytes)
