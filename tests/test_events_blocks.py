"""Events a block of sequences at a time: exact float32 threshold tests, order without a sort, bounded blocks,
and an events file that is the same however the rows arrive."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gatelens.analysis import events as events_mod
from gatelens.analysis import pipeline
from gatelens.analysis.events import PARTS_SEQUENCES, detect_events, iter_events
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace


def _trace(n, t, units, seed=0, go_backwards=False, masked=False):
    rng = np.random.default_rng(seed)
    info = LayerInfo(name="lstm", cell_type="lstm", units=units, input_dim=1, go_backwards=go_backwards)
    sig = {s: rng.uniform(0, 1, (n, t, units)).astype(np.float32) for s in info.signals}
    mask = rng.random((n, t)) > 0.2 if masked else np.ones((n, t), bool)
    lt = LayerTrace(info, sig, mask=mask, inputs=np.zeros((n, t, 1), np.float32))
    return Trace({"lstm": lt}), sig, mask


def _reference(sig, mask, back, thresholds):
    """Every event by a plain loop in float64 (the rules of the module docstring), in the table's order."""
    fh, fl, wt, rt = thresholds
    rules = [("forget", "forget_gate"), ("write", "input_gate"), ("read", "output_gate")]
    out = []
    n, t, units = sig["forget_gate"].shape
    for s in range(n):
        steps = [p for p in (range(t - 1, -1, -1) if back else range(t)) if mask[s, p]]
        for prev, cur in zip(steps, steps[1:]):
            for u in range(units):
                for name, gate in rules:
                    a, b = float(sig[gate][s, prev, u]), float(sig[gate][s, cur, u])
                    hit = a > fh and b < fl if name == "forget" else a < (wt if name == "write" else rt) <= b
                    if hit:
                        out.append((s, cur, u, name, b, a))
    df = pd.DataFrame(out, columns=["sequence", "step", "unit", "event", "value", "previous_value"])
    rank = df["event"].map({"forget": 0, "write": 1, "read": 2})
    return df.assign(_r=rank).sort_values(["sequence", "step", "unit", "_r"]).drop(columns="_r").reset_index(drop=True)


def test_float32_gates_against_thresholds_between_float32_values():
    # 0.3 rounds up to float32 (0.300000012 > 0.3), 0.9 rounds down (0.899999976 < 0.9): comparing the float32 gate
    # with float32(threshold) would get these wrong; the events must be those of the float64 comparison
    up, down = np.float32(0.3), np.float32(0.9)
    assert float(up) > 0.3 and float(down) < 0.9
    info = LayerInfo(name="lstm", cell_type="lstm", units=4, input_dim=1)
    sig = {s: np.zeros((1, 2, 4), np.float32) for s in info.signals}
    # forget_high=0.3: previous float32(0.3) IS above 0.3 (unit 0), its float32 neighbour below is not (unit 1)
    sig["forget_gate"][0, :, 0] = [up, 0.0]
    sig["forget_gate"][0, :, 1] = [np.nextafter(up, np.float32(0)), 0.0]
    # write_threshold=0.9: float32(0.9) is NOT >= 0.9 (unit 2); its neighbour above is (unit 3)
    sig["input_gate"][0, :, 2] = [0.0, down]
    sig["input_gate"][0, :, 3] = [0.0, np.nextafter(down, np.float32(1))]
    trace = Trace({"lstm": LayerTrace(info, sig, mask=np.ones((1, 2), bool), inputs=np.zeros((1, 2, 1)))})
    ev = detect_events(trace, forget_high=0.3, forget_low=0.3, write_threshold=0.9, read_threshold=0.9)
    assert ev[["unit", "event"]].values.tolist() == [[0, "forget"], [3, "write"]]


def test_blocks_are_bounded_and_in_order_masked_and_backward():
    n = PARTS_SEQUENCES * 2 + 9
    for back in (False, True):
        trace, sig, mask = _trace(n, 7, 3, seed=int(back), go_backwards=back, masked=True)
        frames = list(iter_events(trace, chunk=1000))
        assert len(frames) == 3  # one per block of PARTS_SEQUENCES sequences, not one per chunk
        for df in frames:
            assert df["sequence"].max() - df["sequence"].min() < PARTS_SEQUENCES
        got = pd.concat(frames, ignore_index=True)
        want = _reference(sig, mask, back, (0.9, 0.5, 0.5, 0.5))
        assert len(want) > 100
        assert (
            got[["sequence", "step", "unit", "event"]]
            .astype(object)
            .equals(want[["sequence", "step", "unit", "event"]].astype(object))
        )
        np.testing.assert_array_equal(got["value"], want["value"])
        np.testing.assert_array_equal(got["previous_value"], want["previous_value"])


def test_event_file_is_the_same_for_any_split(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "EVENTS_ROW_GROUP", 50)
    trace, _, _ = _trace(40, 9, 2, seed=3)
    ev = detect_events(trace)
    assert len(ev) > 200
    table = pa.Table.from_pandas(ev, preserve_index=False)
    cuts = [0, 7, 8, 90, 91, 170, len(ev)]
    pipeline.write_event_tables([table], tmp_path / "one.parquet")
    pipeline.write_event_tables([table.slice(a, b - a) for a, b in zip(cuts, cuts[1:])], tmp_path / "cut.parquet")
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "cut.parquet").read_bytes()
    meta = pq.ParquetFile(tmp_path / "cut.parquet").metadata
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert groups == [50] * (len(ev) // 50) + ([len(ev) % 50] if len(ev) % 50 else [])
    assert pd.read_parquet(tmp_path / "cut.parquet").equals(ev)


def test_event_parts_are_the_decomposition_columns():
    from helpers_reference import reference_lstm_trace

    from gatelens.analysis.decompose import _gate_parts

    rng = np.random.default_rng(5)
    u, f = 3, 2
    trace = reference_lstm_trace(
        rng.normal(size=(5, 8, f)),
        rng.normal(size=(f, 4 * u)),
        rng.normal(size=(u, 4 * u)),
        rng.normal(size=4 * u),
        go_backwards=True,
    )
    lt = trace[trace.layers[0]]
    rows = slice(0, lt.shape[0])
    full = _gate_parts(lt, rows)[1]
    part = events_mod._event_parts(lt, rows, ["forget_gate", "output_gate"])
    for g in ("forget_gate", "output_gate"):
        for k in (0, 1):
            np.testing.assert_array_equal(part[g][k], full[g][k])


def _numeric_bytes(df):
    return sum(df[c].to_numpy().nbytes for c in df.columns if df[c].dtype.kind in "if")


def test_event_table_is_compact_and_joined_a_column_at_a_time():
    import tracemalloc

    trace, _, _ = _trace(PARTS_SEQUENCES * 8, 12, 8, seed=7)
    ev = detect_events(trace)
    assert len(ev) > 20_000
    assert ev[["sequence", "step", "unit"]].dtypes.tolist() == [np.dtype(np.int32)] * 3
    # 3 x 4 bytes of position, 4 x 8 of values, and 2 text columns (short strings; no tokens in this trace)
    assert ev.drop(columns="token").memory_usage(deep=True).sum() / len(ev) < 72
    table = _numeric_bytes(ev)
    assert table == len(ev) * (3 * 4 + 4 * 8)
    tracemalloc.start()
    try:
        detect_events(trace)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # NumPy's buffers are traced: the blocks joined a column at a time hold the table and one column's pieces
    # (plus one block's work arrays: ~1.5x here), never the blocks and the table whole together (pd.concat: ~2.5x)
    assert peak < 1.8 * table, (peak, table)
