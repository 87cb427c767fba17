"""Events as Arrow tables (the streamed path of ``gatelens analyze``): the same rows, types and pandas metadata as the
frames, the summary fed blocks equal to the one from the whole table, the gate parts at the events those of the
decomposition, and the file's encodings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_reference import reference_gru_trace, reference_lstm_trace

from gatelens.analysis import pipeline
from gatelens.analysis.events import (
    EventSummaryBuilder,
    _event_parts,
    detect_events,
    iter_event_tables,
    iter_events,
    summarize_events,
)

# id 3 reads ";" and id 7 (outside the vocabulary) reads "7", as does id 4: two ids, one token string
VOCAB = ["<pad>", "a", "b", ";", "7"]


def _trace(kind: str, seed: int = 0, n: int = 24, t: int = 14, u: int = 3, f: int = 2):
    rng = np.random.default_rng(seed)
    mask = rng.random((n, t)) > 0.2
    mask[:, 0] = True
    k = 3 if kind.startswith("gru") else 4
    w = (rng.normal(size=(f, k * u)) * 3, rng.normal(size=(u, k * u)) * 3)
    if kind == "numeric":
        x = rng.normal(size=(n, t, f)).astype(np.float32)
        return reference_lstm_trace(x, *w, rng.normal(size=k * u), mask=mask, feature_names=["p", "q"])
    ids = rng.choice([1, 2, 3, 4, 7], size=(n, t))
    kw = dict(mask=mask, embedding=rng.normal(size=(8, f)), vocabulary=VOCAB, go_backwards=kind != "text")
    if kind == "text":
        return reference_lstm_trace(ids, *w, rng.normal(size=k * u), **kw)
    return reference_gru_trace(ids, *w, rng.normal(size=(2, k * u)), reset_after=True, **kw)


KINDS = ["text", "numeric", "gru_backward"]


@pytest.fixture(scope="module", params=KINDS)
def streamed(request):
    trace = _trace(request.param)
    by_frame, by_block = EventSummaryBuilder(trace, chunk=3), EventSummaryBuilder(trace, chunk=3)
    frames = list(iter_events(trace, chunk=3, summary=by_frame))
    tables = list(iter_event_tables(trace, chunk=3, summary=by_block))
    return request.param, trace, frames, tables, by_frame, by_block


def test_tables_are_the_frames(streamed):
    kind, _, frames, tables, _, _ = streamed
    assert len(frames) == len(tables) > 2 and sum(map(len, frames)) > 150
    for frame, table in zip(frames, tables):
        want = pa.Table.from_pandas(frame, preserve_index=False)
        assert table.schema.equals(want.schema, check_metadata=True)
        assert table.equals(want)
        pd.testing.assert_frame_equal(table.to_pandas(), frame)
    tokens = pd.concat(frames)["token"]
    if kind != "numeric":
        assert {"7", ";"} <= set(tokens)
    else:
        assert tokens.isna().all()


def test_summary_from_blocks_is_the_summary_of_the_table(streamed):
    kind, trace, _, _, by_frame, by_block = streamed
    got = by_block.result()
    pd.testing.assert_frame_equal(got, by_frame.result(), check_exact=True)
    want = summarize_events(detect_events(trace), trace)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)
    assert (got["count"] > 0).any() and (want["top_tokens" if kind != "numeric" else "top_features"] != "").any()
    if kind == "text":  # ids 4 and 7 both read "7": counted as one token, as in the table
        assert got["top_tokens"].str.contains('"7" n=').any()


def test_deltas_are_the_decomposition_parts_at_the_events():
    trace = _trace("gru_backward", seed=4)
    lt = trace[trace.layers[0]]
    ev = detect_events(trace)
    parts = _event_parts(lt, slice(0, lt.shape[0]), ["update_gate"])["update_gate"]
    mask = np.asarray(lt.mask)
    assert len(ev) > 200 and not mask.all()
    for r in ev.itertuples():
        later = [p for p in range(r.step + 1, mask.shape[1]) if mask[r.sequence, p]]  # backward: the step after
        prev = later[0]
        for got, part in ((r.delta_input, parts[0]), (r.delta_recurrent, parts[1])):
            assert got == part[r.sequence, r.step, r.unit] - part[r.sequence, prev, r.unit]


def test_event_file_keys_dictionary_deltas_plain(tmp_path):
    trace = _trace("text", seed=2, n=30)
    path = tmp_path / "events.parquet"
    pipeline.write_event_tables(iter_event_tables(trace, chunk=4), path)
    meta = pq.ParquetFile(path).metadata
    enc = {meta.schema.column(i).name: meta.row_group(0).column(i).encodings for i in range(meta.num_columns)}
    for col in ("layer", "sequence", "step", "unit", "event", "value", "token", "previous_value"):
        assert "RLE_DICTIONARY" in enc[col], (col, enc[col])
    for col in ("delta_input", "delta_recurrent"):
        assert "RLE_DICTIONARY" not in enc[col], (col, enc[col])
    pd.testing.assert_frame_equal(pd.read_parquet(path), detect_events(trace))


def test_a_stream_that_fails_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "EVENTS_ROW_GROUP", 50)
    tables = list(iter_event_tables(_trace("text", seed=2, n=30), chunk=4))
    assert sum(t.num_rows for t in tables[:3]) > 100  # row groups written (in flight) before the failure

    def failing():
        yield from tables[:3]
        raise RuntimeError("stopped after three tables")

    with pytest.raises(RuntimeError, match="stopped after three tables"):
        pipeline.write_event_tables(failing(), tmp_path / "e.parquet")
    assert not (tmp_path / "e.parquet").exists()


def test_float64_inputs_and_states_are_not_rounded_for_the_parts():
    from gatelens.analysis.decompose import _gate_parts
    from gatelens.analysis.trace import LayerTrace

    lt = _trace("numeric", seed=6)["lstm"]
    rng = np.random.default_rng(6)
    # values float32 cannot hold: reading them as float32 would change the parts
    sig = {s: np.asarray(lt[s], np.float64) for s in lt.info.signals}
    sig["hidden_state"] = sig["hidden_state"] + rng.normal(size=sig["hidden_state"].shape) * 1e-12
    x = np.asarray(lt.inputs, np.float64) + rng.normal(size=lt.inputs.shape) * 1e-12
    lt64 = LayerTrace(lt.info, sig, mask=np.asarray(lt.mask), inputs=x, weights=lt.weights)
    rows = slice(0, lt64.shape[0])
    full = _gate_parts(lt64, rows)[1]
    part = _event_parts(lt64, rows, ["forget_gate", "input_gate"])
    for g in ("forget_gate", "input_gate"):
        for k in (0, 1):
            np.testing.assert_array_equal(part[g][k], full[g][k])


@pytest.mark.parametrize("kind", KINDS)
def test_in_memory_step_gives_detect_events_and_its_summary(kind):
    from gatelens.analysis.events import _detect_with_summary

    trace = _trace(kind, seed=8)
    events, summary = _detect_with_summary(trace, chunk=5)
    want = detect_events(trace)
    assert len(want) > 150
    pd.testing.assert_frame_equal(events, want)
    # counts, rates, shares and lifts are exact; feature means are sums over blocks (here 5 of 24 sequences)
    pd.testing.assert_frame_equal(summary, summarize_events(want, trace), check_exact=kind != "numeric", rtol=1e-12)
