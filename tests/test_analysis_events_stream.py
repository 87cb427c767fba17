"""Events streamed a chunk at a time: the same rows and summary as the in-memory path, the saved tables equal, and
the events of a saved run read back (filtered, or exported to CSV) without holding the whole table."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers_reference import merge_traces, reference_gru_trace, reference_lstm_trace, write_store

from gatelens.analysis.events import EVENT_COLUMNS, EventSummaryBuilder, detect_events, iter_events, summarize_events
from gatelens.analysis.export import export_csvs, read_csv, write_csv, write_events_csv
from gatelens.analysis.pipeline import (
    Analysis,
    analyze,
    count_events,
    iter_event_batches,
    load_analysis,
    read_events,
    save_analysis,
)
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace
from gatelens.errors import UsageError

VOCAB = ["<pad>", "a", "b", ";", "="]


def trace_of(kind, seed=0, n=7, t=11, u=3, f=2):
    rng = np.random.default_rng(seed)
    mask = rng.random((n, t)) > 0.2
    mask[:, 0] = True
    k = 3 if kind == "gru" else 4
    w = (rng.normal(size=(f, k * u)) * 3, rng.normal(size=(u, k * u)) * 3)
    if kind == "text":
        kw = dict(mask=mask, embedding=rng.normal(size=(len(VOCAB), f)), vocabulary=VOCAB)
        return reference_lstm_trace(rng.integers(1, len(VOCAB), (n, t)), *w, rng.normal(size=k * u), **kw)
    x = rng.normal(size=(n, t, f)).astype(np.float32)
    if kind == "gru":
        return reference_gru_trace(x, *w, rng.normal(size=(2, k * u)), mask=mask, reset_after=True)
    return reference_lstm_trace(x, *w, rng.normal(size=k * u), mask=mask, feature_names=["p", "q"])


@pytest.mark.parametrize("kind", ["text", "numeric", "gru"])
def test_chunks_concatenate_to_detect_events_and_summary_matches(kind):
    trace = trace_of(kind)
    builder = EventSummaryBuilder(trace, chunk=2)
    chunks = list(iter_events(trace, chunk=2, summary=builder))
    assert len(chunks) > 1 and all(len(c) for c in chunks)
    ev = detect_events(trace)
    assert len(ev) > 0 and (ev.delta_input.abs() > ev.delta_recurrent.abs()).any()  # input_driven not all 0
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), ev)
    expected = summarize_events(ev, trace)
    assert (expected["top_tokens" if kind == "text" else "top_features"] != "").any()
    pd.testing.assert_frame_equal(builder.result(), expected, check_exact=False, rtol=1e-12)


def test_empty_builder_gives_zero_counts():
    trace = trace_of("numeric")
    got = EventSummaryBuilder(trace).result()
    assert (got["count"] == 0).all() and len(got) == 3 * 3
    pd.testing.assert_frame_equal(got, summarize_events(detect_events(trace, events=[]), trace))


@pytest.mark.parametrize("kind", ["text", "numeric"])
def test_streamed_analysis_saves_the_same_tables(tmp_path, kind):
    trace = write_store(trace_of(kind, seed=3), tmp_path / "store", chunk_sequences=2)
    steps = ("stats", "events")
    in_memory = analyze(trace, steps=steps, chunk=3)
    save_analysis(in_memory, tmp_path / "a")
    partial = tmp_path / "b" / "analysis" / ".events.partial.parquet"
    streamed = analyze(trace, steps=steps, chunk=3, events_path=partial)
    assert streamed.events.empty and list(streamed.events.columns) == list(in_memory.events.columns)
    assert partial.is_file()
    save_analysis(streamed, tmp_path / "b")
    assert not partial.exists() and streamed.events_file == str(tmp_path / "b" / "analysis" / "events.parquet")
    a, b = load_analysis(tmp_path / "a"), load_analysis(tmp_path / "b")
    assert count_events(b) == len(in_memory.events) > 0
    pd.testing.assert_frame_equal(read_events(b), read_events(a))
    pd.testing.assert_frame_equal(read_events(b), in_memory.events)
    pd.testing.assert_frame_equal(b.event_summary, a.event_summary, check_exact=False, rtol=1e-12)


def _events_run(tmp_path):
    """A stored LSTM (text) + backward GRU (numeric-free, same tokens) run, analysed with its events streamed."""
    trace = merge_traces(
        trace_of("text", seed=5, n=9, t=12),
        reference_gru_trace(
            np.random.default_rng(6).integers(1, len(VOCAB), (9, 12)),
            *(np.random.default_rng(7).normal(size=(2, 9)) * 3, np.random.default_rng(8).normal(size=(3, 9)) * 3),
            np.random.default_rng(9).normal(size=(2, 9)),
            mask=np.ones((9, 12), bool),
            embedding=np.random.default_rng(10).normal(size=(len(VOCAB), 2)),
            vocabulary=VOCAB,
            name="=gru",
            go_backwards=True,
        ),
    )
    return write_store(trace, tmp_path / "run", chunk_sequences=2)


def test_export_of_streamed_run_equals_in_memory_export(tmp_path, monkeypatch):
    import gatelens.analysis.pipeline as pipeline

    trace = _events_run(tmp_path)
    steps = ("stats", "memory", "events")
    in_memory = analyze(trace, steps=steps)
    monkeypatch.setattr(pipeline, "EVENTS_ROW_GROUP", 40)
    streamed = analyze(trace, steps=steps, chunk=2, events_path=tmp_path / "run" / "analysis" / ".partial.parquet")
    meta = pq.ParquetFile(streamed.events_file).metadata
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    # written in pieces (chunks of 2 sequences), re-cut into full row groups whatever the pieces' sizes
    assert len(groups) > 2 and groups[:-1] == [40] * (len(groups) - 1) and 0 < groups[-1] <= 40
    assert sum(groups) == len(in_memory.events)
    save_analysis(streamed, tmp_path / "run")
    loaded = load_analysis(tmp_path / "run")
    assert loaded.events.empty and list(loaded.events.columns) == EVENT_COLUMNS
    a = export_csvs(trace, tmp_path / "mem", analysis=in_memory)
    b = export_csvs(trace, tmp_path / "disk", analysis=loaded)
    want, got = read_csv(a["events.csv"]), read_csv(b["events.csv"])
    assert len(want) == len(in_memory.events) > 50 and set(want.layer) == {"lstm", "=gru"}
    keys = ["layer", "sequence", "step", "unit", "event"]
    pd.testing.assert_frame_equal(
        got.sort_values(keys).reset_index(drop=True), want.sort_values(keys).reset_index(drop=True)
    )
    assert b["events.csv"].read_bytes() == a["events.csv"].read_bytes()  # same order, same text, CRLF
    assert b["events.csv"].read_bytes().startswith(b"layer,sequence,step,unit,event,value,token,")
    assert b"\r\n'=gru," in b["events.csv"].read_bytes()  # formula-safe text cells, as every export
    assert not list((tmp_path / "disk").glob(".*tmp*"))  # the temporary file was renamed into place


@pytest.mark.parametrize(
    "filters",
    [
        {"layer": "lstm", "unit": 1},
        {"layer": "=gru", "unit": [0, 2]},
        {"unit": 2, "event": "forget"},
        {"sequences": range(3, 6)},
        {"sequences": [0, 8], "layer": ["lstm"]},
        {"sequences": [99]},  # no such sequence: no rows
    ],
)
def test_filtered_read_returns_exactly_those_rows(tmp_path, filters):
    trace = _events_run(tmp_path)
    full = detect_events(trace)
    a = analyze(trace, steps=("events",), chunk=2, events_path=tmp_path / "e.parquet")
    keep = np.ones(len(full), bool)
    for col, key in (("layer", "layer"), ("unit", "unit"), ("event", "event"), ("sequence", "sequences")):
        if key in filters:
            v = filters[key]
            keep &= full[col].isin([v] if isinstance(v, (str, int)) else list(v)).to_numpy()
    want = full[keep].reset_index(drop=True)
    got = read_events(a, **filters)
    pd.testing.assert_frame_equal(got, want)
    pd.testing.assert_frame_equal(read_events(Analysis(events=full), **filters), want)  # in memory: the same
    if "unit" in filters and len(want):
        assert len(want) < len(full)  # the filter really leaves rows out
    cols = read_events(a, columns=["layer", "unit"], **filters)
    assert list(cols.columns) == ["layer", "unit"] and len(cols) == len(want)


@pytest.mark.parametrize(
    "filters, words",
    [
        ({"layer": "no such layer"}, "no events layer 'no such layer'; the analysis has events of ['lstm', '=gru']"),
        ({"layer": ["lstm", "lstn"]}, "no events layer 'lstn'"),
        ({"layer": "lstm", "unit": 3}, "unit 3 is out of range: layer 'lstm' has 3 units (0..2)"),
        ({"unit": [0, -1]}, "unit -1 is out of range"),
        ({"event": "forgot"}, "unknown event type(s) ['forgot']; the event types are ['forget', 'read', 'write']"),
    ],
)
def test_a_filter_naming_what_the_analysis_lacks_is_refused(tmp_path, filters, words):
    # a misspelt layer, a unit past the end or an unknown event type read as "no events"
    trace = _events_run(tmp_path)
    a = analyze(trace, steps=("events",), chunk=2, events_path=tmp_path / "e.parquet")
    with pytest.raises(UsageError) as e:
        read_events(a, **filters)
    assert words in str(e.value)


def test_iter_event_batches_and_count(tmp_path):
    trace = _events_run(tmp_path)
    a = analyze(trace, steps=("events",), chunk=2, events_path=tmp_path / "e.parquet")
    full = detect_events(trace)
    batches = list(iter_event_batches(a, batch_size=7))
    assert max(len(b) for b in batches) <= 7 and count_events(a) == len(full)
    pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), full)
    assert [len(b) for b in iter_event_batches(Analysis(events=full), batch_size=7)] == [len(b) for b in batches]
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        next(iter_event_batches(a, batch_size=0))
    with pytest.raises(ValueError, match="unit must be int"):
        read_events(a, unit="x")


def test_saving_a_loaded_analysis_elsewhere_copies_its_events(tmp_path):
    trace = _events_run(tmp_path)
    save_analysis(analyze(trace, steps=("events",), chunk=2, events_path=tmp_path / "e.parquet"), tmp_path / "one")
    loaded = load_analysis(tmp_path / "one")
    save_analysis(loaded, tmp_path / "two")
    assert (tmp_path / "one" / "analysis" / "events.parquet").is_file()  # the first run keeps its table
    pd.testing.assert_frame_equal(
        read_events(load_analysis(tmp_path / "one")), read_events(load_analysis(tmp_path / "two"))
    )
    (tmp_path / "two" / "analysis" / "events.parquet").write_bytes(b"not parquet")
    from gatelens.analysis.store import RunStoreError

    with pytest.raises(RunStoreError, match="events.parquet: does not match its checksum"):
        load_analysis(tmp_path / "two")


def _many_events_trace(n, t=64, units=16):
    """Gates that flip every step: a forget, write and read event of every unit at every other step."""
    info = LayerInfo(name="lstm", cell_type="lstm", units=units, input_dim=1)
    flip = np.where(np.arange(t) % 2 == 0, 0.95, 0.2).astype(np.float32)
    sig = {s: np.zeros((n, t, units), np.float32) for s in info.signals}
    sig["forget_gate"][:] = flip[None, :, None]
    sig["input_gate"][:] = 1.0 - flip[None, :, None]
    sig["output_gate"][:] = 1.0 - flip[None, :, None]
    lt = LayerTrace(info, sig, mask=np.ones((n, t), bool), inputs=np.zeros((n, t, 1), np.float32))
    tokens = np.random.default_rng(0).integers(1, len(VOCAB), (n, t))
    return Trace({"lstm": lt}, tokens=tokens, vocabulary=VOCAB)


def _peak_python_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_export_memory_is_bounded_by_the_batch_not_the_table(tmp_path):
    peaks = {}
    for n in (6, 24):  # 4x the sequences and events, the same batch
        a = analyze(_many_events_trace(n), steps=("events",), chunk=2, events_path=tmp_path / f"{n}.parquet")
        save_analysis(a, tmp_path / f"run{n}")
        loaded = load_analysis(tmp_path / f"run{n}")
        assert count_events(loaded) == n * 32 * 16 * 3  # every other step, every unit, three event types
        path = tmp_path / f"streamed{n}.csv"
        peaks[n] = _peak_python_bytes(lambda: write_events_csv(loaded, path, batch_size=512))  # noqa: B023
    whole = _peak_python_bytes(lambda: write_csv(read_events(loaded), tmp_path / "whole.csv"))
    table_bytes = int(read_events(loaded).memory_usage(deep=True).sum())
    assert (tmp_path / "streamed24.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    # peak Python allocations (numpy's and pandas' included): the same for 4x the events, a small fraction of the
    # table in memory, and of the export that holds the whole table
    assert peaks[24] < 1.3 * peaks[6], peaks
    assert peaks[24] * 4 < table_bytes, (peaks, table_bytes)
    assert peaks[24] * 10 < whole, (peaks, whole)


def test_an_events_path_that_holds_data_is_refused_and_kept(tmp_path):
    """analyze writes the events at events_path and removes it if they fail: a file there that holds anything (or a
    folder) is refused before any step runs, and left as it was; a new path, or an empty file, is written."""
    from gatelens._examples import example_trace
    from gatelens.analysis.pipeline import analyze
    from gatelens.errors import UsageError

    trace, _ = example_trace("lstm", n=2, steps=4, units=2)
    mine = tmp_path / "mine.parquet"
    mine.write_bytes(b"a user's own file")
    (tmp_path / "adir").mkdir()
    for path in (mine, tmp_path / "adir"):
        with pytest.raises(UsageError, match="exists and holds data"):
            analyze(trace, steps=("events",), events_path=path)
    assert mine.read_bytes() == b"a user's own file"
    empty = tmp_path / "empty.parquet"
    empty.touch()
    for path in (empty, tmp_path / "new.parquet"):
        a = analyze(trace, steps=("events",), events_path=path)
        assert a.events_file == str(path) and path.stat().st_size > 0
