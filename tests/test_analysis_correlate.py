"""Correlations against NumPy/SciPy computed pair by pair, on in-memory and on-disk traces."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers_reference import write_store
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from gatelens.analysis.correlate import COLUMNS, Moments, correlations, rank_pearson, top_units
from gatelens.analysis.features import FeatureError, build_features
from gatelens.analysis.store import RunWriter, open_run
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace


def random_trace(n=6, t=9, units=3, seed=0, n_features=2, mask_frac=0.2):
    rng = np.random.default_rng(seed)
    layers = {}
    for name, cell in (("lstm", "lstm"), ("gru", "gru")):
        info = LayerInfo(name=name, cell_type=cell, units=units, input_dim=n_features)
        sig = {s: rng.normal(size=(n, t, units)).astype(np.float32) for s in info.signals}
        # ties and a constant unit in one signal
        sig["hidden_state"][..., 0] = np.round(sig["hidden_state"][..., 0])
        sig["candidate"][..., 1] = 0.25
        mask = rng.random((n, t)) > mask_frac
        mask[:, 0] = True
        layers[name] = LayerTrace(info, sig, mask=mask, inputs=np.zeros((n, t, n_features), np.float32))
    x = rng.normal(size=(n, t, n_features)).astype(np.float32)
    x[..., 1] = np.round(x[..., 1])
    return Trace(layers, x=x, feature_names=[f"f{j}" for j in range(n_features)])


def reference(trace, features, layer, signal, unit, feature):
    """One pair, the plain way: pandas joins, then numpy/scipy."""
    lt = trace[layer]
    n, t = lt.mask.shape
    seq, stp = np.nonzero(np.asarray(lt.mask))
    df = pd.DataFrame({"sequence": seq, "step": stp, "v": np.asarray(lt[signal])[seq, stp, unit]})
    f = features[["sequence", "step"]].assign(y=features[feature])
    df = df.merge(f, on=["sequence", "step"]).dropna()
    x, y = df["v"].to_numpy(np.float64), df["y"].to_numpy(np.float64)
    if x.min() == x.max() or y.min() == y.max():
        return np.nan, np.nan, len(df)
    return np.corrcoef(x, y)[0, 1], spearmanr(x, y).statistic, len(df)


def test_matches_pairwise_reference_with_masks_ties_and_nan_features():
    trace = random_trace()
    feats = build_features(trace)
    assert feats["delta:f0"].isna().any()
    table = correlations(trace, feats)
    assert list(table.columns) == COLUMNS
    n_feat = len(feats.columns) - 1
    assert len(table) == 3 * n_feat * (10 + 7)  # units x features x (LSTM + GRU signals)
    checked = 0
    for row in table.itertuples():
        r, rho, n = reference(trace, feats, row.layer, row.signal, row.unit, row.feature)
        assert row.n == n
        if np.isnan(r):
            assert np.isnan(row.pearson_r) and np.isnan(row.spearman_rho) and row.note.startswith("constant")
        else:
            np.testing.assert_allclose(row.pearson_r, r, atol=1e-12)
            np.testing.assert_allclose(row.spearman_rho, rho, atol=1e-12)
            assert row.note == ""
            checked += 1
    assert checked > 0.8 * len(table)
    const = table[(table.signal == "candidate") & (table.unit == 1)]
    assert (const.note == "constant signal").all() and const.pearson_r.isna().all()


def test_chunk_size_does_not_change_the_answer():
    trace = random_trace(n=7, seed=3)
    feats = build_features(trace)
    a = correlations(trace, feats, chunk_sequences=1)
    b = correlations(trace, feats, chunk_sequences=1000)
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-12, rtol=0)


def test_masked_steps_are_excluded():
    trace = random_trace(seed=5)
    feats = build_features(trace)
    before = correlations(trace, feats, layers=["lstm"], signals=["cell_state"])
    lt = trace["lstm"]
    garbage = np.asarray(lt["cell_state"]).copy()
    garbage[~lt.mask] = 1e6
    lt._signals["cell_state"] = garbage
    after = correlations(trace, feats, layers=["lstm"], signals=["cell_state"])
    pd.testing.assert_frame_equal(before, after)
    # and rows of the features table for steps the layer masks are ignored too
    assert (before.n <= lt.mask.sum()).all()


def test_constant_feature_and_too_few_steps():
    trace = random_trace(n=2, t=4)
    feats = build_features(trace, user_features=pd.DataFrame({"sequence": [0, 0, 1], "step": [0, 1, 0], "k": 3.0}))
    table = correlations(trace, feats, layers="lstm", signals="forget_gate")
    k = table[table.feature == "k"]
    assert (k.note == "constant feature").all() and k.pearson_r.isna().all() and (k.n == 3).all()
    feats2 = feats.assign(k=[1.0, 2.0] + [np.nan] * (len(feats) - 2))
    k2 = correlations(trace, feats2, layers="lstm", signals="forget_gate").query("feature == 'k'")
    assert (k2.note == "fewer than 3 steps").all() and (k2.n == 2).all() and k2.spearman_rho.isna().all()


def test_spearman_subsample_is_deterministic_and_reported():
    trace = random_trace(n=30, t=20, units=2, seed=1, mask_frac=0.0)
    lt = trace["lstm"]
    # a signal with a monotone but nonlinear link to the step: Spearman 1, Pearson < 1
    lt._signals["cell_state"][..., 0] = np.exp(np.arange(20) / 3.0)[None, :]
    feats = build_features(trace)
    kw = dict(layers=["lstm"], signals=["cell_state", "input_gate"])
    a = correlations(trace, feats, random_state=7, max_rank_rows=100, **kw)
    b = correlations(trace, feats, random_state=7, max_rank_rows=100, **kw)
    full = correlations(trace, feats, max_rank_rows=None, **kw)
    pd.testing.assert_frame_equal(a, b)
    whole = ~a.feature.str.startswith("delta:")  # delta:* has no value on each sequence's first step
    assert (a.spearman_n[whole] == 100).all() and (a.n[whole] == 600).all() and (full.spearman_n[whole] == 600).all()
    assert (a.spearman_n[~whole] < 100).all() and (a.n[~whole] == 570).all() and (full.spearman_n[~whole] == 570).all()
    np.testing.assert_array_equal(a.pearson_r, full.pearson_r)  # Pearson always uses every step
    step = a[(a.signal == "cell_state") & (a.unit == 0) & (a.feature == "step")].iloc[0]
    assert step.spearman_rho == pytest.approx(1.0) and step.pearson_r < 0.95
    # the subsample is a real subsample: a different seed gives different (but close) values elsewhere
    c = correlations(trace, feats, random_state=8, max_rank_rows=100, **kw)
    assert not np.allclose(a.spearman_rho, c.spearman_rho, equal_nan=True)
    assert np.nanmax(np.abs(c.spearman_rho - full.spearman_rho)) < 0.4


def test_run_store_gives_the_same_table(tmp_path):
    trace = random_trace(n=5, seed=2)
    infos = [trace[name].info for name in trace.layers]
    with RunWriter(tmp_path / "run", infos, n_sequences=5, n_steps=9, chunk_sequences=2, n_features=2) as w:
        batch = {}
        for name in trace.layers:
            lt = trace[name]
            batch[name] = {s: np.asarray(lt[s]) for s in lt.info.signals}
            batch[name]["mask"] = lt.mask
            batch[name]["input"] = np.asarray(lt.inputs)
        w.write_batch(0, batch, x=trace.x)
        w.finish(verification={}, feature_names=trace.feature_names)
    run = open_run(tmp_path / "run")
    feats = build_features(run)
    pd.testing.assert_frame_equal(feats, build_features(trace))
    pd.testing.assert_frame_equal(
        correlations(run, feats, chunk_sequences=2), correlations(trace, feats), check_exact=False, atol=1e-12
    )


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 10_000),
    st.floats(0.1, 100.0),
    st.floats(-50.0, 50.0),
)
def test_invariant_to_positive_affine_maps_and_odd_under_negation(seed, scale, shift):
    trace = random_trace(n=4, t=6, units=2, seed=seed)
    feats = build_features(trace)
    base = correlations(trace, feats, layers=["gru"], signals=["update_gate"])
    lt = trace["gru"]
    original = np.asarray(lt["update_gate"]).copy()
    lt._signals["update_gate"] = (original.astype(np.float64) * scale + shift).astype(np.float32)
    moved = correlations(trace, feats, layers=["gru"], signals=["update_gate"])
    np.testing.assert_allclose(moved.pearson_r, base.pearson_r, atol=1e-5)
    lt._signals["update_gate"] = -original
    neg = correlations(trace, feats, layers=["gru"], signals=["update_gate"])
    np.testing.assert_allclose(neg.pearson_r, -base.pearson_r, atol=1e-12)
    np.testing.assert_allclose(neg.spearman_rho, -base.spearman_rho, atol=1e-12)


def test_moments_merge_is_exact_for_large_offsets():
    rng = np.random.default_rng(0)
    x = 1e6 + rng.normal(size=(5000, 2))  # sum-of-squares formulas lose everything here
    y = rng.normal(size=(5000, 1)) + x[:, :1] * 1e-6
    m = Moments()
    for s in np.array_split(np.arange(5000), 13):
        m.update(x[s], y[s])
    np.testing.assert_allclose(m.pearson(), np.corrcoef(x.T, y.T)[:2, 2:], atol=1e-9)


def test_rank_pearson_matches_scipy_with_ties():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 4, size=(50, 6)).astype(float)
    y = rng.integers(0, 3, size=(50, 2)).astype(float)
    got = rank_pearson(x, y)
    for i in range(6):
        for j in range(2):
            np.testing.assert_allclose(got[i, j], spearmanr(x[:, i], y[:, j]).statistic, atol=1e-12)


def test_errors_quote_what_was_received():
    trace = random_trace()
    feats = build_features(trace)
    with pytest.raises(ValueError, match=r"No recurrent layer\(s\) \['nope'\]"):
        correlations(trace, feats, layers=["nope"])
    with pytest.raises(ValueError, match=r"unknown signal\(s\) \['forget_gate'\]"):
        correlations(trace, feats, layers=["gru"], signals=["forget_gate"])
    with pytest.raises(FeatureError, match=r"duplicate key \(sequence=0, step=0\)"):
        correlations(trace, pd.concat([feats, feats.head(1)]))
    with pytest.raises(FeatureError, match="outside the trace"):
        correlations(trace, feats.assign(step=feats.step + 100))
    with pytest.raises(FeatureError, match="not numeric"):
        correlations(trace, feats.assign(word="a"))


def test_top_units_orders_by_absolute_value():
    trace = random_trace()
    feats = build_features(trace)
    lt = trace["lstm"]
    lt._signals["hidden_state"][..., 2] = -np.asarray(trace.x)[..., 0] * 3
    table = correlations(trace, feats, layers=["lstm"])
    top = top_units(table, "value:f0", k=3)
    assert (top.layer.iloc[0], top.signal.iloc[0], top.unit.iloc[0]) == ("lstm", "hidden_state", 2)
    assert top.pearson_r.iloc[0] == pytest.approx(-1.0) and list(top["rank"]) == [1, 2, 3]
    with pytest.raises(ValueError, match="no rows for feature 'nope'"):
        top_units(table, "nope")


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_average_ranks_equal_scipy_rankdata(m, p, levels, seed):
    from scipy.stats import rankdata

    from gatelens.analysis.correlate import average_ranks

    x = np.random.default_rng(seed).integers(0, levels, size=(m, p)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(average_ranks(x), rankdata(x, axis=0))
    np.testing.assert_array_equal(
        average_ranks(x * 0.1 + np.arange(m)[:, None]), rankdata(np.arange(m))[:, None] * np.ones(p)
    )


def test_moments_merge_blocks_of_rows_like_the_whole(monkeypatch):
    # a chunk's moments are formed over blocks of rows (merged by Chan's update): force many blocks, one ragged
    import gatelens.analysis.correlate as corr

    rng = np.random.default_rng(3)
    x = (rng.normal(size=(1001, 4)) + 1e4).astype(np.float32)  # a large mean: no cancellation in the merge
    y = rng.normal(size=(1001, 2))
    whole = corr.Moments()
    whole.update(x, y)
    monkeypatch.setattr(corr, "_MOMENT_BLOCK_VALUES", 4 * 37)
    blocked = corr.Moments()
    blocked.update(x, y)
    ref = np.corrcoef(np.asarray(x, np.float64).T, y.T)[:4, 4:]
    np.testing.assert_allclose(blocked.pearson(), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(blocked.mx, whole.mx, rtol=1e-15)
    np.testing.assert_array_equal(blocked.min_x, x.min(axis=0))
    assert blocked.n == 1001


def test_rank_pearson_over_several_column_blocks_matches_scipy():
    # 3000 rows x 200 columns against 2 features: float32 keys ranked in blocks of 116 columns (the last one ragged)
    rng = np.random.default_rng(5)
    x = np.round(rng.normal(size=(3000, 200)), 1).astype(np.float32)  # many ties
    y = np.stack([x[:, 7] + rng.normal(size=3000), rng.integers(0, 4, 3000).astype(float)], axis=1)
    got = rank_pearson(x, y)
    ref = spearmanr(np.asarray(x, np.float64), y).statistic[:200, 200:]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_float16_store_ranks_its_bits_like_the_values(tmp_path):
    # a float16 store is ranked by integer keys of its bits (no float copy): the same correlations as the float64
    # values it holds, against the pairwise NumPy/SciPy reference, with -0/+0 ties, negatives and a constant unit
    trace = random_trace(n=8, t=9, seed=11)
    lt = trace["lstm"]
    lt._signals["cell_state"][..., 2] = np.where(np.arange(9) % 2, -0.0, 0.0)[None, :] * (np.arange(8) % 3)[:, None]
    lt._signals["cell_state"][0, :3, 2] = [-1.5, 2.0, -1.5]
    lazy = write_store(trace, tmp_path / "run", chunk_sequences=3, dtype="float16")
    assert lazy["lstm"]["cell_state"].dtype == np.float16
    held = Trace(
        {name: LayerTrace(lazy[name].info, {s: np.asarray(lazy[name][s], np.float64) for s in lazy[name].info.signals},
                          mask=np.asarray(lazy[name].mask), inputs=np.asarray(lazy[name].inputs))
         for name in lazy.layers},
        x=trace.x, feature_names=trace.feature_names,
    )  # fmt: skip
    feats = build_features(held)
    got = correlations(lazy, feats, max_rank_rows=40, chunk_sequences=3)
    ref = correlations(held, feats, max_rank_rows=40, chunk_sequences=3)
    pd.testing.assert_frame_equal(got, ref, check_exact=False, atol=1e-12, rtol=0)
    full = correlations(lazy, feats, max_rank_rows=None)
    for row in full[full.signal.isin(["cell_state", "forget_gate"])].itertuples():
        r, rho, n = reference(held, feats, row.layer, row.signal, row.unit, row.feature)
        assert row.n == n
        if np.isnan(r):
            assert np.isnan(row.spearman_rho)
        else:
            np.testing.assert_allclose([row.pearson_r, row.spearman_rho], [r, rho], atol=1e-12)


def test_rank_pearson_float_keys_match_the_sorting_path_with_nan_and_signed_zeros():
    # float16/float32 columns are ranked from integer keys of their bits; a NaN sends them to the sorting path
    rng = np.random.default_rng(6)
    x = np.round(rng.normal(size=(500, 9)), 1)
    x[::7, 2] = -0.0
    x[::5, 2] = 0.0
    x[:, 4] = -1.5
    y = np.stack([np.arange(500.0) % 17, rng.normal(size=500)], axis=1)
    ref = spearmanr(x, y).statistic[:9, 9:]
    ref[4] = np.nan  # a constant column
    for dtype in (np.float16, np.float32):
        np.testing.assert_allclose(rank_pearson(x.astype(dtype), y), ref, rtol=0, atol=1e-12)
        with_nan = x.astype(dtype)
        with_nan[3, 0] = np.nan
        np.testing.assert_array_equal(rank_pearson(with_nan, y), rank_pearson(with_nan.astype(np.float64), y))


def test_float16_ranks_by_counting_are_the_sorted_ranks(monkeypatch):
    """From _COUNT_RANK_MIN_ROWS rows a float16 column is ranked by counting its keys: the same numbers, bit for bit,
    as sorting them (ties, signed zeros, extremes, a constant column, over several blocks of columns), and scipy's."""
    from gatelens.analysis import correlate

    rng = np.random.default_rng(11)
    m = correlate._COUNT_RANK_MIN_ROWS + 123
    x = rng.normal(scale=3.0, size=(m, 2 * correlate._COUNT_RANK_COLUMNS + 3)).astype(np.float16)
    x[::3, 1] = -0.0
    x[1::3, 1] = 0.0
    x[:, 2] = 7.0  # constant
    x[::11, 3] = np.float16(65504.0)  # the largest and smallest finite float16, and the infinities
    x[1::11, 3] = np.float16(-65504.0)
    x[2::13, 4], x[3::13, 4] = np.inf, -np.inf
    y = np.stack([np.arange(m) % 29, rng.normal(size=m)], axis=1).astype(np.float64)
    counted = rank_pearson(x, y)
    monkeypatch.setattr(correlate, "_COUNT_RANK_MIN_ROWS", 10**12)  # the sorting path
    np.testing.assert_array_equal(counted, rank_pearson(x, y))
    ref = spearmanr(x.astype(np.float64), y).statistic[: x.shape[1], x.shape[1] :]
    ref[2] = np.nan
    np.testing.assert_allclose(counted, ref, rtol=0, atol=1e-12)
    monkeypatch.undo()
    calls = []
    real = correlate._counted_rank_sums
    monkeypatch.setattr(correlate, "_counted_rank_sums", lambda *a: calls.append(1) or real(*a))
    with_nan = x.copy()
    with_nan[5, 0] = np.nan  # found while counting: the sorting path ranks it
    np.testing.assert_array_equal(rank_pearson(with_nan, y), rank_pearson(with_nan.astype(np.float64), y))
    assert calls  # the counting path ran (and gave way)
