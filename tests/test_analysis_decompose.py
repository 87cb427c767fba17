"""Exact decompositions: pre-activations against the stored *_pre signals, cell states that sum back.

References: the step-by-step NumPy cells of tests/helpers_reference.py (hand-set and random weights,
random masks, both directions), the extractor on real Keras models, and a hand-built bracket counter.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers_reference import assert_sums_back, merge_traces, reference_gru_trace, reference_lstm_trace, write_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatelens.analysis.decompose import (
    cell_state_decomposition,
    gate_drivers,
    input_contributions,
    preactivation_decomposition,
    token_gate_table,
)
from gatelens.analysis.signals import PRE_ACTIVATION

ATOL = 1e-5


def random_mask(rng, n, t):
    mask = rng.random((n, t)) > 0.3
    mask[0] = True  # one full sequence
    if n > 1:
        mask[1, : t // 2] = False  # pre-padding
    if n > 2:
        mask[2, t // 2 :] = False  # post-padding
    return mask


def random_lstm(seed, n=5, t=7, f=3, u=4, masked=True, go_backwards=False, scale=1.0, **kw):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, f))
    mask = random_mask(rng, n, t) if masked else None
    return reference_lstm_trace(
        x, rng.normal(size=(f, 4 * u)) * scale, rng.normal(size=(u, 4 * u)) * scale, rng.normal(size=4 * u),
        mask, go_backwards=go_backwards, **kw,
    )  # fmt: skip


def random_gru(seed, n=5, t=7, f=3, u=4, masked=True, go_backwards=False, reset_after=True, scale=1.0, **kw):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, f))
    mask = random_mask(rng, n, t) if masked else None
    bias = rng.normal(size=(2, 3 * u) if reset_after else 3 * u)
    return reference_gru_trace(
        x, rng.normal(size=(f, 3 * u)) * scale, rng.normal(size=(u, 3 * u)) * scale, bias, mask,
        reset_after=reset_after, go_backwards=go_backwards, **kw,
    )  # fmt: skip


def stored_pre_long(trace, layer):
    """The stored *_pre signals at unmasked steps, in the decomposition's row order."""
    lt = trace[layer]
    pre = PRE_ACTIVATION[lt.info.cell_type]
    gates = list(pre)
    mask = np.asarray(lt.mask)
    arr = np.stack([np.asarray(lt[pre[g]]) for g in gates], axis=-1)  # (N, T, u, G)
    return arr[mask].reshape(-1)


def assert_preactivations_match(trace, layer):
    df = preactivation_decomposition(trace, layer)
    parts = df["input"].abs() + df["recurrent"].abs() + df["bias"].abs()
    assert_sums_back(df["total"], stored_pre_long(trace, layer), parts, err_msg=f"{layer} pre-activations")
    np.testing.assert_allclose(df["input"] + df["recurrent"] + df["bias"], df["total"], atol=1e-12, rtol=0)
    return df


def assert_cells_sum_back(trace, layer, sequences=None):
    lt = trace[layer]
    state = "cell_state" if lt.info.cell_type == "lstm" else "hidden_state"
    stored = np.asarray(lt[state], np.float64)
    mask = np.asarray(lt.mask)
    for s in range(lt.shape[0]) if sequences is None else sequences:
        df = cell_state_decomposition(trace, layer, s)
        if not mask[s].any():
            assert df.empty
            continue
        by_cell = df.assign(magnitude=df["contribution"].abs()).groupby(["step", "unit"])
        sums = by_cell["contribution"].sum().unstack("unit")
        np.testing.assert_array_equal(sums.index, np.nonzero(mask[s])[0])
        magnitude = by_cell["magnitude"].sum().unstack("unit")
        assert_sums_back(sums.to_numpy(), stored[s][mask[s]], magnitude.to_numpy(), err_msg=f"{layer} seq {s}")
        # no row for a masked source step, and no source after its target in processing order
        real = df[df.source_step >= 0]
        assert mask[s][real.source_step].all()
        later = real.source_step < real.step if lt.info.go_backwards else real.source_step > real.step
        assert not later.any()


# -- pre-activations ---------------------------------------------------------------------------------


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_lstm_preactivation_equals_stored(go_backwards, masked):
    trace = random_lstm(0, masked=masked, go_backwards=go_backwards)
    df = assert_preactivations_match(trace, "lstm")
    assert list(df.columns) == ["layer", "sequence", "step", "unit", "gate", "input", "recurrent", "bias", "total"]
    assert len(df) == np.asarray(trace["lstm"].mask).sum() * 4 * 4


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_gru_preactivation_equals_stored(reset_after, go_backwards):
    trace = random_gru(1, reset_after=reset_after, go_backwards=go_backwards)
    df = assert_preactivations_match(trace, "gru")
    assert set(df.gate) == {"update_gate", "reset_gate", "candidate"}


def test_gru_candidate_split_follows_the_keras_formula():
    """reset_after: recurrent = r * (h U_h + rb_h), bias = b_h only; checked on one hand-computed step (one unit)."""
    kernel = np.array([[0.0, 0.0, 2.0]])
    rk = np.array([[0.0, 0.0, 3.0]])
    bias = np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 0.25]])  # input bias b_h = 0.5, recurrent bias rb_h = 0.25
    x = np.array([[[1.0], [1.0]]])
    trace = reference_gru_trace(x, kernel, rk, bias, reset_after=True)
    lt = trace["gru"]
    h0 = float(lt["hidden_state"][0, 0, 0])
    r1 = float(lt["reset_gate"][0, 1, 0])  # sigmoid(0) = 0.5
    assert r1 == 0.5
    df = preactivation_decomposition(trace, "gru").query("step == 1 and gate == 'candidate'").iloc[0]
    assert df["input"] == pytest.approx(2.0)
    assert df["recurrent"] == pytest.approx(r1 * (3.0 * h0 + 0.25), abs=1e-7)
    assert df["bias"] == pytest.approx(0.5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    cell=st.sampled_from(["lstm", "gru_after", "gru_before"]),
    backwards=st.booleans(),
    scale=st.sampled_from([0.1, 1.0, 3.0]),
    act=st.sampled_from(["sigmoid", "hard_sigmoid"]),
)
def test_preactivation_and_cells_random(seed, cell, backwards, scale, act):
    if cell == "lstm":
        trace = random_lstm(seed, go_backwards=backwards, scale=scale, recurrent_activation=act)
        layer = "lstm"
    else:
        trace = random_gru(
            seed, go_backwards=backwards, scale=scale, reset_after=cell == "gru_after", recurrent_activation=act
        )
        layer = "gru"
    assert_preactivations_match(trace, layer)
    assert_cells_sum_back(trace, layer)


def test_input_contributions_sum_to_input_part():
    trace = random_lstm(3, f=3, u=2)
    pre = preactivation_decomposition(trace, "lstm")
    parts = input_contributions(trace, "lstm")
    assert list(parts.columns) == ["layer", "sequence", "step", "unit", "gate", "feature", "contribution"]
    assert set(parts.feature) == {"x0", "x1", "x2"}
    summed = parts.groupby(["sequence", "step", "unit", "gate"], sort=False)["contribution"].sum()
    joined = pre.set_index(["sequence", "step", "unit", "gate"])["input"]
    np.testing.assert_allclose(summed.loc[joined.index].to_numpy(), joined.to_numpy(), atol=1e-12)
    # hand check one cell: x[s, t, f] * W[f, block * u + unit]
    row = parts.query("sequence == 0 and step == 2 and unit == 1 and gate == 'forget_gate' and feature == 'x2'")
    lt = trace["lstm"]
    expected = float(lt.inputs[0, 2, 2]) * float(lt.weights["kernel"][2, 1 * 2 + 1])
    assert row["contribution"].item() == pytest.approx(expected, abs=1e-12)


def test_input_contributions_filters_and_names():
    trace = random_gru(4, u=3)
    df = input_contributions(trace, "gru", sequences=[1], units=[2], gates=["reset_gate"])
    assert set(df.sequence) == {1} and set(df.unit) == {2} and set(df.gate) == {"reset_gate"}
    with pytest.raises(ValueError, match="forget_gate"):
        input_contributions(trace, "gru", gates=["forget_gate"])
    with pytest.raises(ValueError, match="unit 7 is out of range"):
        input_contributions(trace, "gru", units=[7])
    with pytest.raises(ValueError, match="sequence 99 is out of range"):
        preactivation_decomposition(trace, "gru", sequences=[99])


def test_sequence_selection_matches_full_table():
    trace = random_lstm(5, n=6)
    full = preactivation_decomposition(trace, "lstm")
    part = preactivation_decomposition(trace, "lstm", sequences=[4, 1], chunk=1)
    expected = full[full.sequence.isin([1, 4])].reset_index(drop=True)
    pd.testing.assert_frame_equal(part.reset_index(drop=True), expected)


# -- the bracket counter: hand-set weights, known answer ------------------------------------------------

VOCAB = ["a", "(", ")"]
TEXT = "a((a)(()a))a("


def bracket_counter():
    """1 unit, hard_sigmoid gates, linear candidate: the cell state *is* the bracket depth.

    One-hot embedding; input gate 1 on brackets and 0 on 'a' (pre +-6, far outside hard_sigmoid's
    (-3, 3)), forget and output gates 1 (bias 6), candidate +1 on '(' and -1 on ')'.
    """
    emb = np.eye(3)
    kernel = np.zeros((3, 4))
    kernel[:, 0] = [-6, 6, 6]  # input gate
    kernel[:, 2] = [0, 1, -1]  # candidate
    bias = np.array([0.0, 6.0, 0.0, 6.0])
    ids = np.array([[VOCAB.index(c) for c in TEXT]])
    return reference_lstm_trace(
        ids, kernel, np.zeros((1, 4)), bias, activation="linear", recurrent_activation="hard_sigmoid",
        embedding=emb, vocabulary=VOCAB,
    )  # fmt: skip


def test_bracket_counter_cell_is_depth_and_decomposes_into_brackets():
    trace = bracket_counter()
    depth = np.cumsum([{"(": 1, ")": -1, "a": 0}[c] for c in TEXT])
    np.testing.assert_array_equal(trace["lstm"]["cell_state"][0, :, 0], depth)
    last = len(TEXT) - 1
    df = cell_state_decomposition(trace, "lstm", 0, step=last)
    nonzero = df[df.contribution != 0]
    assert nonzero.token.tolist() == [c for c in TEXT if c != "a"]
    assert nonzero.contribution.tolist() == [1.0 if c == "(" else -1.0 for c in TEXT if c != "a"]
    assert df.contribution.sum() == depth[-1]
    # every step, dense path: all sums are the depth exactly
    full = cell_state_decomposition(trace, "lstm", 0)
    np.testing.assert_array_equal(full.groupby("step")["contribution"].sum().to_numpy(), depth)


def test_bracket_counter_token_table_from_weights():
    trace = bracket_counter()
    table = token_gate_table(trace, "lstm")
    assert list(table.columns) == ["layer", "token_id", "token", "unit", "gate", "push"]
    push = table.pivot(index="token", columns="gate", values="push")
    assert push.loc["(", "candidate"] == 1.0 and push.loc[")", "candidate"] == -1.0
    assert push.loc["a", "input_gate"] == -6.0 and push.loc["(", "input_gate"] == 6.0
    # the push is the input part of the decomposition wherever the token is read
    pre = preactivation_decomposition(trace, "lstm")
    pre["token"] = np.repeat(list(TEXT), 4)
    merged = pre.merge(table, on=["layer", "token", "unit", "gate"])
    np.testing.assert_array_equal(merged["input"], merged["push"])
    assert set(token_gate_table(trace, "lstm", token_ids=[2]).token) == {")"}
    with pytest.raises(ValueError, match="outside the embedding"):
        token_gate_table(trace, "lstm", token_ids=[3])


def test_token_table_needs_an_embedding():
    with pytest.raises(ValueError, match="not fed straight by an Embedding"):
        token_gate_table(random_lstm(0), "lstm")


# -- cell-state decomposition ------------------------------------------------------------------------


@pytest.mark.parametrize("go_backwards", [False, True])
def test_cell_decomposition_sums_back_lstm_and_gru(go_backwards):
    assert_cells_sum_back(random_lstm(7, t=9, go_backwards=go_backwards), "lstm")
    assert_cells_sum_back(random_gru(8, t=9, go_backwards=go_backwards, reset_after=False), "gru")


def test_dense_and_per_step_paths_agree():
    trace = random_lstm(9, t=8, go_backwards=True)
    mask = np.asarray(trace["lstm"].mask)
    s = 2
    full = cell_state_decomposition(trace, "lstm", s)
    steps = np.nonzero(mask[s])[0]
    some = cell_state_decomposition(trace, "lstm", s, step=list(steps[::2]), units=[1, 3])
    expect = full[full.step.isin(steps[::2]) & full.unit.isin([1, 3])].reset_index(drop=True)
    pd.testing.assert_frame_equal(some, expect, atol=1e-12, rtol=0)


def test_forget_gate_exactly_zero_and_one_is_stable():
    """hard_sigmoid gates reach exactly 0 and 1: products must not produce NaN (no division, no logs)."""
    trace = random_lstm(11, scale=6.0, recurrent_activation="hard_sigmoid", masked=True)
    f = np.asarray(trace["lstm"]["forget_gate"])
    assert (f == 0).any() and (f == 1).any()
    df = cell_state_decomposition(trace, "lstm", 0)
    assert np.isfinite(df.contribution).all()
    assert_cells_sum_back(trace, "lstm")


def test_cell_decomposition_rows_and_errors():
    trace = random_lstm(12, n=3, t=6)
    mask = np.asarray(trace["lstm"].mask)
    df = cell_state_decomposition(trace, "lstm", 0, step=3)
    assert list(df.columns) == ["layer", "sequence", "step", "source_step", "unit", "contribution", "token"]
    assert df.source_step.tolist() == np.repeat([-1, 0, 1, 2, 3], 4).tolist()
    assert (df.query("source_step == -1").contribution == 0).all()
    assert df.token.isna().all()  # numeric input: no tokens
    masked_step = int(np.nonzero(~mask[1])[0][0])
    with pytest.raises(ValueError, match=f"step {masked_step} of sequence 1 is masked"):
        cell_state_decomposition(trace, "lstm", 1, step=masked_step)
    with pytest.raises(ValueError, match="out of range"):
        cell_state_decomposition(trace, "lstm", 0, step=6)
    with pytest.raises(ValueError, match="sequence must be an integer in 0..2"):
        cell_state_decomposition(trace, "lstm", 3)


def test_gate_drivers_summarise_the_decomposition():
    trace = random_gru(13, reset_after=True)
    pre = preactivation_decomposition(trace, "gru")
    drivers = gate_drivers(trace, chunk=2)
    g = pre.groupby(["unit", "gate"], sort=False)
    expect_in = g["input"].apply(lambda s: s.abs().mean())
    expect_rec = g["recurrent"].apply(lambda s: s.abs().mean())
    d = drivers.set_index(["unit", "gate"])
    np.testing.assert_allclose(d.loc[expect_in.index, "mean_abs_input"], expect_in, rtol=1e-12)
    np.testing.assert_allclose(d.loc[expect_rec.index, "mean_abs_recurrent"], expect_rec, rtol=1e-12)
    np.testing.assert_allclose(d["input_share"], d.mean_abs_input / (d.mean_abs_input + d.mean_abs_recurrent))
    np.testing.assert_allclose(d.loc[expect_in.index, "mean_recurrent"], g["recurrent"].mean(), rtol=1e-10)


def embedded_lstm(seed, nudge=False):
    """An LSTM fed by an Embedding of 5 tokens (its input part summed per distinct token row); ``nudge``: one stored
    input no longer its token's row (summed step by step instead)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 5, size=(6, 9))
    trace = reference_lstm_trace(
        tokens, rng.normal(size=(3, 16)), rng.normal(size=(4, 16)), rng.normal(size=16),
        random_mask(rng, 6, 9), embedding=rng.normal(size=(5, 3)),
    )  # fmt: skip
    if nudge:
        trace["lstm"].inputs[0, 4, 1] += 0.25
    return trace


@pytest.mark.parametrize(
    "make",
    [
        lambda: random_lstm(21, n=6, t=9, go_backwards=True),
        lambda: random_gru(22, n=6, t=9, reset_after=False),
        lambda: random_gru(23, n=6, t=9, reset_after=True, go_backwards=True),
        lambda: random_lstm(24, n=4, t=6, masked=False),
        lambda: embedded_lstm(25),
        lambda: embedded_lstm(26, nudge=True),
    ],
    ids=[
        "lstm-backwards",
        "gru-reset-before",
        "gru-reset-after-backwards",
        "lstm-unmasked",
        "embedding",
        "embedding-not-a-lookup",
    ],
)
def test_gate_drivers_are_the_means_of_the_per_step_parts(make, monkeypatch):
    """Every column of gate_drivers against the per-step decomposition averaged by pandas, the products formed in
    blocks of 5 rows (so blocks end inside sequences) and chunks of 2 sequences."""
    import gatelens.analysis.decompose as dec

    monkeypatch.setattr(dec, "_DRIVER_ROWS", 5)
    trace = make()
    layer = trace.layers[0]
    pre = preactivation_decomposition(trace, layer)
    g = pre.assign(ai=pre["input"].abs(), ar=pre["recurrent"].abs()).groupby(["unit", "gate"], sort=False)
    want = g[["input", "recurrent", "bias", "ai", "ar"]].mean()
    got = gate_drivers(trace, chunk=2).set_index(["unit", "gate"]).loc[want.index]
    cols = ["mean_input", "mean_recurrent", "mean_bias", "mean_abs_input", "mean_abs_recurrent"]
    scale = want[["ai", "ar"]].to_numpy().max()
    np.testing.assert_allclose(got[cols].to_numpy(), want.to_numpy(), rtol=1e-12, atol=1e-14 * scale)
    assert (got["n"] == int(np.asarray(trace[layer].mask).sum())).all()


# -- lazy run store ------------------------------------------------------------------------------------


def test_lazy_store_gives_identical_tables(tmp_path):
    fwd = random_lstm(14, n=7, name="bi/forward")
    bwd = random_lstm(15, n=7, name="bi/backward", go_backwards=True)
    mem = merge_traces(fwd, bwd)
    mem.x = np.asarray(fwd.x)
    lazy = write_store(mem, tmp_path / "run", chunk_sequences=3)
    assert not isinstance(lazy["bi/forward"]["forget_gate"], np.ndarray)
    for layer in lazy.layers:
        pd.testing.assert_frame_equal(
            preactivation_decomposition(lazy, layer, chunk=2), preactivation_decomposition(mem, layer)
        )
        pd.testing.assert_frame_equal(
            preactivation_decomposition(lazy, layer, sequences=[6, 0, 4], chunk=2),
            preactivation_decomposition(mem, layer, sequences=[0, 4, 6]),
        )
        pd.testing.assert_frame_equal(cell_state_decomposition(lazy, layer, 5), cell_state_decomposition(mem, layer, 5))
        pd.testing.assert_frame_equal(gate_drivers(lazy, layers=layer, chunk=3), gate_drivers(mem, layers=layer))
        assert_preactivations_match(lazy, layer)
    assert set(input_contributions(lazy, "bi/forward").feature) == {"x0", "x1", "x2"}


# -- real Keras models through the extractor ------------------------------------------------------------


def test_against_the_extractor_on_keras_models():
    """The decompositions hold on real extracted traces (masking, bidirectional, GRU both ways, embedding)."""
    keras = pytest.importorskip("keras")
    from gatelens.models import extract

    L = keras.layers
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 9, size=(5, 8))
    ids[1, 5:] = 0
    ids[2, :3] = 0
    model = keras.Sequential(
        [
            keras.Input((8,), dtype="int32"),
            L.Embedding(9, 4, mask_zero=True, name="dec_embedding"),
            L.Bidirectional(L.LSTM(3, return_sequences=True, name="dec_lstm"), name="dec_bi"),
            L.GRU(3, reset_after=False, return_sequences=True, go_backwards=True, name="dec_gru_back"),
            L.GRU(2, return_sequences=True, name="dec_gru"),
        ],
        name="dec_model",
    )
    trace = extract(model, ids, vocabulary=[str(i) for i in range(9)])
    assert len(trace.layers) == 4
    for layer in trace.layers:
        assert_preactivations_match(trace, layer)
        assert_cells_sum_back(trace, layer)
    first = trace.layers[0]
    table = token_gate_table(trace, first)
    pre = preactivation_decomposition(trace, first, sequences=[0])
    tok = np.asarray(trace.tokens)[0]
    pre["token_id"] = tok[pre.step]
    merged = pre.merge(table, on=["layer", "token_id", "unit", "gate"])
    assert len(merged) == len(pre)
    np.testing.assert_allclose(merged["input"], merged["push"], atol=1e-6)


def test_reference_cells_match_keras():
    """The NumPy reference cells reproduce Keras (via the extractor) to 1e-5: they are a valid reference."""
    keras = pytest.importorskip("keras")
    from gatelens.models import extract

    L = keras.layers
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 6, 3)).astype(np.float32)
    x[1, 4:] = 0.0  # masked by Masking(0.0)
    for layer, ref in [
        (L.LSTM(3, return_sequences=True, recurrent_activation="hard_sigmoid", name="ref_lstm"), "lstm"),
        (L.GRU(3, return_sequences=True, go_backwards=True, name="ref_gru_after"), "gru_after"),
        (L.GRU(3, return_sequences=True, reset_after=False, name="ref_gru_before"), "gru_before"),
    ]:
        model = keras.Sequential([keras.Input((6, 3)), L.Masking(0.0, name=f"mask_{ref}"), layer], name=f"m_{ref}")
        for w in layer.weights:
            w.assign(rng.normal(size=w.shape).astype(np.float32))
        got = extract(model, x)
        name = got.layers[0]
        kernel, rk, bias = (v.numpy() for v in layer.weights)
        mask = np.any(x != 0, axis=-1)
        if ref == "lstm":
            want = reference_lstm_trace(x, kernel, rk, bias, mask, name, recurrent_activation="hard_sigmoid")
        else:
            want = reference_gru_trace(
                x, kernel, rk, bias, mask, name, reset_after=ref == "gru_after", go_backwards=layer.go_backwards
            )
        np.testing.assert_array_equal(np.asarray(got[name].mask), mask)
        for s in want[name].info.signals:
            np.testing.assert_allclose(got[name][s], want[name][s], atol=ATOL, rtol=0, err_msg=f"{ref} {s}")
