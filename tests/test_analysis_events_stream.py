"""Events streamed a chunk at a time: the same rows and summary as the in-memory path, and the saved tables equal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers_reference import reference_gru_trace, reference_lstm_trace, write_store

from analysis.events import EventSummaryBuilder, detect_events, iter_events, summarize_events
from analysis.pipeline import analyze, load_analysis, save_analysis

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
    assert len(b.events) == len(in_memory.events) > 0
    pd.testing.assert_frame_equal(b.events, a.events)
    pd.testing.assert_frame_equal(b.event_summary, a.event_summary, check_exact=False, rtol=1e-12)
