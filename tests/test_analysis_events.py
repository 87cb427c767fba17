"""Events: planted forget/write/read spikes, a step-by-step reference, and the per-unit summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers_reference import reference_gru_trace, reference_lstm_trace, write_store
from hypothesis import given, settings
from hypothesis import strategies as st

from gatelens.analysis.events import detect_events, event_feature_shift, event_token_lift, summarize_events
from gatelens.analysis.signals import PRE_ACTIVATION
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace

VOCAB = ["<pad>", "a", "b", ";", "="]


def planted(forget, input_gate=None, output_gate=None, mask=None, tokens=None, go_backwards=False):
    """One-unit LSTM trace whose gates are set by hand (other signals zero)."""
    forget = np.atleast_2d(np.asarray(forget, np.float32))
    n, t = forget.shape
    info = LayerInfo(name="lstm", cell_type="lstm", units=1, input_dim=1, go_backwards=go_backwards)
    sig = {s: np.zeros((n, t, 1), np.float32) for s in info.signals}
    sig["forget_gate"][..., 0] = forget
    for name, v in (("input_gate", input_gate), ("output_gate", output_gate)):
        if v is not None:
            sig[name][..., 0] = np.atleast_2d(v)
    mask = np.ones((n, t), bool) if mask is None else np.atleast_2d(np.asarray(mask, bool))
    lt = LayerTrace(info, sig, mask=mask, inputs=np.zeros((n, t, 1), np.float32))
    toks = None if tokens is None else np.atleast_2d(tokens)
    return Trace({"lstm": lt}, tokens=toks, vocabulary=VOCAB if tokens is not None else None)


def test_planted_forget_events_skip_masked_steps():
    #          0     1     2     3     4     5     6
    forget = [0.95, 0.3, 0.95, 0.1, 0.3, 0.92, 0.4]
    mask = [True, True, True, False, True, True, True]
    tokens = [1, 3, 1, 4, 3, 2, 3]
    trace = planted(forget, mask=mask, tokens=tokens)
    ev = detect_events(trace, events=["forget"])
    assert list(ev.columns) == [
        "layer", "sequence", "step", "unit", "event", "value", "token",
        "previous_value", "delta_input", "delta_recurrent",
    ]  # fmt: skip
    # step 3 is masked (its 0.1 is ignored); step 4 follows step 2 (0.95) and falls to 0.3: an event
    assert ev.step.tolist() == [1, 4, 6]
    assert ev.token.tolist() == [";", ";", ";"]
    np.testing.assert_allclose(ev.value, [0.3, 0.3, 0.4], rtol=1e-6)
    np.testing.assert_allclose(ev.previous_value, [0.95, 0.95, 0.92], rtol=1e-6)
    assert ev.delta_input.isna().all()  # hand-made trace: no weights to split the change with


def test_backward_layer_compares_with_the_next_step():
    forget = [0.3, 0.95, 0.2, 0.95]
    ev = detect_events(planted(forget, go_backwards=True), events=["forget"])
    # processing order is 3, 2, 1, 0: 0.95 -> 0.2 at step 2 and 0.95 -> 0.3 at step 0
    assert ev.step.tolist() == [0, 2]
    fwd = detect_events(planted(forget), events=["forget"])
    assert fwd.step.tolist() == [2]


def test_write_and_read_crossings_and_thresholds():
    gate = [0.1, 0.6, 0.7, 0.2, 0.5, 0.49, 0.51]
    trace = planted([0.5] * 7, input_gate=gate, output_gate=gate)
    ev = detect_events(trace)
    writes = ev[ev.event == "write"].step.tolist()
    reads = ev[ev.event == "read"].step.tolist()
    assert writes == reads == [1, 4, 6]  # >= threshold from below; 0.5 counts as open
    assert detect_events(trace, events=["write"], write_threshold=0.65).step.tolist() == [2]
    assert detect_events(trace, events=["forget"]).empty  # never above 0.9
    with pytest.raises(ValueError, match="forget_low=0.95"):
        detect_events(trace, forget_low=0.95, forget_high=0.9)
    with pytest.raises(ValueError, match="unknown event"):
        detect_events(trace, events=["sneeze"])


def brute_events(trace, layer, forget_high=0.9, forget_low=0.5, thr=0.5):
    """Step by step, in processing order, over real steps only."""
    lt = trace[layer]
    cell = lt.info.cell_type
    mask = np.asarray(lt.mask)
    n, t, u = lt.shape
    gates = {s: np.asarray(lt[s], np.float64) for s in lt.info.signals}
    rules = {"forget": ("forget_gate" if cell == "lstm" else "update_gate", False)}
    rules["write"] = ("input_gate", False) if cell == "lstm" else ("update_gate", True)
    if cell == "lstm":
        rules["read"] = ("output_gate", False)
    out = set()
    order = range(t - 1, -1, -1) if lt.info.go_backwards else range(t)
    for s in range(n):
        prev = None
        for step in order:
            if not mask[s, step]:
                continue
            if prev is not None:
                for k in range(u):
                    for event, (sig, comp) in rules.items():
                        a, b = gates[sig][s, prev, k], gates[sig][s, step, k]
                        if comp:
                            a, b = 1 - a, 1 - b
                        if event == "forget":
                            hit = a > forget_high and b < forget_low
                        else:
                            hit = a < thr <= b
                        if hit:
                            out.add((s, step, k, event, prev))
            prev = step
    return out


def random_trace(seed, cell, backwards, scale=3.0):
    rng = np.random.default_rng(seed)
    n, t, f, u = 4, 9, 2, 3
    k = 4 if cell == "lstm" else 3
    ids = rng.integers(1, len(VOCAB), size=(n, t))
    emb = rng.normal(size=(len(VOCAB), f))
    mask = rng.random((n, t)) > 0.25
    mask[0] = True
    args = (ids, rng.normal(size=(f, k * u)) * scale, rng.normal(size=(u, k * u)) * scale)
    kw = dict(mask=mask, go_backwards=backwards, embedding=emb, vocabulary=VOCAB)
    if cell == "lstm":
        return reference_lstm_trace(*args, rng.normal(size=k * u), **kw), "lstm"
    bias = rng.normal(size=(2, k * u) if cell == "gru" else k * u)
    return reference_gru_trace(*args, bias, reset_after=cell == "gru", **kw), "gru"


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 100_000), cell=st.sampled_from(["lstm", "gru", "gru_before"]), backwards=st.booleans())
def test_events_match_step_by_step_reference(seed, cell, backwards):
    trace, layer = random_trace(seed, cell, backwards)
    ev = detect_events(trace, chunk=3)
    expected = brute_events(trace, layer)
    got = set(zip(ev.sequence, ev.step, ev.unit, ev.event))
    assert got == {e[:4] for e in expected}
    # the change of the gate's pre-activation splits exactly into input and recurrent parts
    lt = trace[layer]
    prev_of = {e[:4]: e[4] for e in expected}
    sig = {"forget": "forget_gate" if lt.info.cell_type == "lstm" else "update_gate", "read": "output_gate"}
    sig["write"] = "input_gate" if lt.info.cell_type == "lstm" else "update_gate"
    for r in ev.itertuples():
        pre = np.asarray(lt[PRE_ACTIVATION[lt.info.cell_type][sig[r.event]]], np.float64)
        prev = prev_of[(r.sequence, r.step, r.unit, r.event)]
        delta = pre[r.sequence, r.step, r.unit] - pre[r.sequence, prev, r.unit]
        assert r.delta_input + r.delta_recurrent == pytest.approx(delta, abs=1e-5)
        assert r.token == VOCAB[int(trace.tokens[r.sequence, r.step])]


def test_gru_write_is_one_minus_update_gate():
    trace, _ = random_trace(3, "gru", False)
    ev = detect_events(trace, events=["write"])
    z = np.asarray(trace["gru"]["update_gate"])
    np.testing.assert_allclose(ev.value, 1 - z[ev.sequence, ev.step, ev.unit], rtol=1e-6)


def test_lazy_store_events_identical(tmp_path):
    trace, _ = random_trace(5, "lstm", True)
    lazy = write_store(trace, tmp_path / "run", chunk_sequences=3)
    pd.testing.assert_frame_equal(detect_events(lazy, chunk=2), detect_events(trace))
    ev = detect_events(trace)
    pd.testing.assert_frame_equal(summarize_events(ev, lazy, chunk=3), summarize_events(ev, trace))


# -- summaries -------------------------------------------------------------------------------------------


def test_summary_counts_rates_and_token_lift_by_hand():
    # unit forgets on ';' twice and on 'a' once; 8 eligible steps (9 real steps, the first has no predecessor)
    forget = [0.95, 0.2, 0.95, 0.1, 0.95, 0.95, 0.95, 0.3, 0.95]
    tokens = [1, 3, 1, 3, 2, 2, 2, 1, 2]
    trace = planted(forget, tokens=tokens)
    ev = detect_events(trace)
    summary = summarize_events(ev, trace, min_count=1)
    assert list(summary.columns) == [
        "layer", "unit", "event", "count", "rate", "input_driven", "top_tokens", "top_features",
    ]  # fmt: skip
    row = summary.set_index("event").loc["forget"]
    assert row["count"] == 3 and row["rate"] == 3 / 8
    # ';': 2 of 3 events, 2 of 8 eligible steps -> lift (2/3) / (2/8) = 2.67; 'a': (1/3) / (2/8) = 1.33
    assert row["top_tokens"] == '";" n=2 lift=2.7; "a" n=1 lift=1.3'
    assert row["top_features"] == ""
    lift = event_token_lift(ev, trace).query("event == 'forget'")
    assert lift.token.tolist() == [";", "a"]
    np.testing.assert_allclose(lift.lift, [(2 / 3) / (2 / 8), (1 / 3) / (2 / 8)])
    assert summarize_events(ev, trace).set_index("event").loc["forget", "top_tokens"] == '";" n=2 lift=2.7'
    assert set(summary.event) == {"forget", "write", "read"}


def test_summary_includes_units_without_events():
    trace = planted([[0.5, 0.5, 0.5]])
    s = summarize_events(detect_events(trace), trace)
    assert s["count"].tolist() == [0, 0, 0] and s["rate"].tolist() == [0, 0, 0]
    assert not s.isna().any().any()


def test_numeric_feature_shift_by_hand():
    # forget events at steps where x0 is large
    x = np.array([[[0.0, 1.0], [5.0, 1.0], [0.0, 1.0], [5.0, 1.0], [0.0, 1.0]]], np.float32)
    trace = planted([0.95, 0.2, 0.95, 0.2, 0.95])
    trace.x, trace.feature_names = x, ["x0", "x1"]
    ev = detect_events(trace, events=["forget"])
    shift = event_feature_shift(ev, trace)
    # eligible steps 1..4: x0 = 5, 0, 5, 0 -> mean 2.5, std 2.5; at the events 5 -> z = 1; x1 constant: left out
    assert shift.feature.tolist() == ["x0"]
    assert shift.z.tolist() == [1.0]
    summary = summarize_events(ev, trace)
    assert summary.set_index("event").loc["forget", "top_features"] == "x0 +1.00 sd"
    assert summary.set_index("event").loc["forget", "top_tokens"] == ""


def test_input_driven_share():
    trace, layer = random_trace(11, "lstm", False)
    ev = detect_events(trace)
    s = summarize_events(ev, trace).set_index(["unit", "event"])
    for (unit, event), grp in ev.groupby(["unit", "event"]):
        expect = (grp.delta_input.abs() > grp.delta_recurrent.abs()).mean()
        assert s.loc[(unit, event), "input_driven"] == pytest.approx(expect)
        assert s.loc[(unit, event), "count"] == len(grp)
