"""Unit clusters and archetypes on hand-set LSTM/GRU units whose behaviour is known; unit x token co-clusters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers_reference import merge_traces, reference_gru_trace, reference_lstm_trace, write_store
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import estimator_checks_generator

from gatelens.analysis.clusters import (
    ARCHETYPE_THRESHOLDS,
    CLUSTER_COLUMNS,
    COCLUSTER_COLUMNS,
    UnitClusterer,
    archetypes,
    cluster_units,
    cocluster_units_tokens,
    token_unit_matrix,
    unit_profiles,
)
from gatelens.analysis.correlate import correlations
from gatelens.analysis.features import build_features
from gatelens.analysis.memory import half_lives
from gatelens.analysis.stats import unit_stats

VOCAB = ["", "a", "r", "o", "x", "y"]
BIG = 10.0


def applicable_checks(estimators):
    """sklearn's checks for our estimators, without the array-API check (SciPy array-API mode is off here)."""
    for est in estimators:
        for e, check in estimator_checks_generator(est, legacy=True):
            name = getattr(check, "func", check).__name__
            if name != "check_array_api_input":
                yield pytest.param(e, check, id=f"{e!r}-{name}")


@pytest.mark.parametrize(
    "estimator, check", list(applicable_checks([UnitClusterer(), UnitClusterer(k_min=3, k_max=5)]))
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def archetype_lstm(seed=0, n=40, t=40):
    """8 units in 4 pairs: integrators, resetters, gated readers, input-driven (see each block)."""
    rng = np.random.default_rng(seed)
    v, u = len(VOCAB), 8
    tokens = rng.choice(np.arange(1, v), size=(n, t), p=[0.1, 0.1, 0.1, 0.35, 0.35])
    kernel = rng.normal(0, 0.05, size=(v, 4 * u))
    rec = rng.normal(0, 0.05, size=(u, 4 * u))
    bias = np.zeros(4 * u)
    i, f, c, o = (slice(k * u, (k + 1) * u) for k in range(4))
    a, r, op = VOCAB.index("a"), VOCAB.index("r"), VOCAB.index("o")
    # 0-1 integrators: keep everything, write only at "a", always expose
    bias[i][[0, 1]] = -BIG
    kernel[a, i][[0, 1]] = 2 * BIG
    bias[f][[0, 1]] = BIG
    kernel[:, c][a, [0, 1]] = 1.0
    bias[o][[0, 1]] = BIG
    # 2-3 resetters: keep, but wipe at every "r"
    bias[f][[2, 3]] = BIG
    kernel[r, f][[2, 3]] = -2 * BIG
    bias[o][[2, 3]] = BIG
    # 4-5 gated readers: leaky memory (f = sigmoid(2)), output closed except at "o"
    bias[f][[4, 5]] = 2.0
    bias[o][[4, 5]] = -BIG
    kernel[op, o][[4, 5]] = 2 * BIG
    # 6-7 input-driven: forget everything every step
    bias[f][[6, 7]] = -BIG
    bias[o][[6, 7]] = BIG
    return reference_lstm_trace(
        tokens, kernel, rec, bias, embedding=np.eye(v, dtype=np.float32), vocabulary=VOCAB, name="lstm"
    )


def test_hand_set_lstm_units_get_their_archetypes_and_clusters():
    trace = archetype_lstm()
    units, hl = unit_stats(trace), half_lives(trace)
    out = cluster_units(units, hl, random_state=0)
    assert list(out.columns) == CLUSTER_COLUMNS
    assert out.unit.tolist() == list(range(8))
    expected = ["long-memory integrator"] * 2 + ["resetter"] * 2 + ["gated reader"] * 2 + ["input-driven"] * 2
    assert out.unit_archetype.tolist() == expected
    assert out.archetype.tolist() == expected
    assert adjusted_rand_score(np.repeat(np.arange(4), 2), out.cluster) == 1.0
    assert out.cluster.tolist()[:2] == [0, 0]  # numbered by first appearance
    assert (out.silhouette > 0.4).all()
    assert np.isinf(out.half_life_steps[0]) or out.half_life_steps[0] > 1000
    assert out.top_feature.tolist() == [""] * 8 and out.top_abs_r.isna().all()


def test_correlation_profile_and_top_feature_on_a_run_store(tmp_path):
    trace = write_store(archetype_lstm(seed=1, n=12, t=30), tmp_path / "run")
    feats = build_features(trace)
    corr = correlations(trace, feats)
    prof = unit_profiles(unit_stats(trace), half_lives(trace), corr)
    assert {f"corr:{c}" for c in feats.columns[1:]} <= set(prof.columns)
    assert prof.filter(like="corr:").notna().all().all()
    out = cluster_units(unit_stats(trace), half_lives(trace), corr)
    # top_feature is a feature where the unit reaches its largest |r| over all signals (ties possible:
    # here every token is a letter, so position_in_word == step + 1)
    assert (out.top_abs_r > 0).all() and (out.top_feature != "").all()
    best = corr.assign(a=corr.pearson_r.abs()).groupby(["layer", "unit", "feature"], as_index=False)["a"].max()
    merged = out.merge(best, left_on=["layer", "unit", "top_feature"], right_on=["layer", "unit", "feature"])
    assert len(merged) == len(out)
    np.testing.assert_allclose(merged.top_abs_r, best.groupby(["layer", "unit"])["a"].max().to_numpy())
    np.testing.assert_allclose(merged.top_abs_r, merged.a)


def test_lstm_and_gru_layers_are_clustered_apart_with_unique_cluster_numbers():
    lstm = archetype_lstm(n=20, t=30)
    rng = np.random.default_rng(2)
    v, u = len(VOCAB), 4
    bias = np.zeros((2, 3 * u))
    bias[0, :u] = [BIG, BIG, -BIG, -BIG]  # update gate: units 0-1 keep (integrators), 2-3 overwrite every step
    gru = reference_gru_trace(
        np.asarray(lstm.tokens), rng.normal(0, 0.3, (v, 3 * u)), rng.normal(0, 0.3, (u, 3 * u)), bias,
        embedding=np.eye(v, dtype=np.float32), vocabulary=VOCAB, name="gru",
    )  # fmt: skip
    trace = merge_traces(lstm, gru)
    out = cluster_units(unit_stats(trace), half_lives(trace))
    g = out[out.layer == "gru"]
    assert g.unit_archetype.tolist() == ["long-memory integrator"] * 2 + ["input-driven"] * 2
    assert not set(g.cluster) & set(out[out.layer == "lstm"].cluster)
    assert g.cluster.nunique() == 2


def test_archetype_rules_at_their_thresholds():
    th = ARCHETYPE_THRESHOLDS
    p = pd.DataFrame(
        {
            "half_life_steps": [50, 50, th["integrator_half_life"], th["integrator_half_life"] - 1e-9, 5, 5, 1.99, 2.0],
            "input_gate:frac_above_0.9": [0.9, 0.89, 0, 0, 0, 0, 0, 0],
            "forget_gate:frac_above_0.9": [0.9, 0.9, 0.8, 0.8, 0.3, 0.29, 0.0, 0.0],
            "forget_gate:frac_below_0.1": [0, 0, 0, 0, 0.05, 0.05, 0.0, 0.0],
            "output_gate:frac_above_0.9": [0.9, 0.9, 1, 1, 1, 1, 1, 0.19],
            "output_gate:frac_below_0.1": [0, 0, 0, 0, 0, 0, 0, 0.5],
        }
    )
    assert archetypes(p).tolist() == [
        "always-on",
        "long-memory integrator",
        "long-memory integrator",
        "mixed",
        "resetter",
        "mixed",
        "input-driven",
        "gated reader",
    ]
    assert archetypes(p, {"input_driven_half_life": 6.0}).tolist()[5] == "input-driven"


def test_clusterer_edge_cases_and_errors():
    one = UnitClusterer().fit(np.ones((5, 3)))
    assert one.n_clusters_ == 1 and one.labels_.tolist() == [0] * 5 and np.isnan(one.silhouette_)
    assert one.predict(np.zeros((2, 3))).tolist() == [0, 0]
    two = UnitClusterer().fit(np.array([[0.0], [1.0]]))
    assert two.n_clusters_ == 1  # a silhouette needs k < n_samples
    X = np.r_[np.zeros((4, 2)), np.full((4, 2), 5.0), np.full((4, 2), [10.0, 0.0])]
    est = UnitClusterer(k_max=6).fit(X + np.random.default_rng(0).normal(0, 0.01, X.shape))
    assert est.n_clusters_ == 3 and set(est.silhouette_by_k_) == {2, 3, 4, 5, 6}
    assert max(est.silhouette_by_k_, key=est.silhouette_by_k_.get) == 3
    assert est.predict(np.array([[10.0, 0.1], [0.0, 0.1]])).tolist() == [2, 0]
    np.testing.assert_allclose(est.cluster_centers_[1], [5.0, 5.0], atol=0.05)
    with pytest.raises(ValueError, match=r"need 2 <= k_min <= k_max, got k_min=5, k_max=3"):
        UnitClusterer(k_min=5, k_max=3).fit(X)
    with pytest.raises(ValueError, match=r"units needs columns .* missing \['frac_above_0.9'\]"):
        cluster_units(pd.DataFrame(columns=["layer", "unit", "signal", "mean", "std", "frac_below_0.1"]), None)


def blocky_text_trace(seed=0, n=30, t=40):
    """Tokens 1-3 drive units 0-2, tokens 4-6 drive units 3-5 (mean |cell_state| high in those blocks)."""
    rng = np.random.default_rng(seed)
    vocab = ["", "a", "b", "c", "x", "y", "z"]
    v, u = len(vocab), 6
    tokens = rng.integers(1, v, size=(n, t))
    tokens[:, -3:] = 0
    mask = tokens > 0
    kernel = np.zeros((v, 4 * u))
    bias = np.zeros(4 * u)
    bias[u : 2 * u] = -BIG  # forget every step: the cell state is the current token's write
    bias[:u] = BIG  # input gate open
    bias[3 * u :] = BIG
    kernel[1:4, 2 * u : 2 * u + 3] = 2.0
    kernel[4:7, 2 * u + 3 : 3 * u] = 2.0
    kernel[:, 2 * u : 3 * u] += rng.normal(0, 0.1, size=(v, u))
    return reference_lstm_trace(
        tokens, kernel, np.zeros((u, 4 * u)), bias, mask=mask, embedding=np.eye(v, dtype=np.float32), vocabulary=vocab
    )


def test_coclusters_recover_planted_token_unit_blocks(tmp_path):
    trace = blocky_text_trace()
    out = cocluster_units_tokens(trace, layer="lstm", n_clusters=2)
    assert list(out.columns) == COCLUSTER_COLUMNS
    units = out[out.kind == "unit"].sort_values("id")
    toks = out[out.kind == "token"].sort_values("id")
    assert toks.id.tolist() == [1, 2, 3, 4, 5, 6]  # the padding token only occurs on masked steps
    assert toks.name.tolist() == list("abcxyz")
    assert adjusted_rand_score([0, 0, 0, 1, 1, 1], units.cluster) == 1.0
    assert adjusted_rand_score([0, 0, 0, 1, 1, 1], toks.cluster) == 1.0
    # the token block and the unit block of one co-cluster go together
    assert set(toks[toks.name == "a"].cluster) == set(units[units.id == 0].cluster)
    mask = np.asarray(trace["lstm"].mask)
    assert toks["count"].sum() == mask.sum() and (units["count"] == mask.sum()).all()
    stored = write_store(trace, tmp_path / "run")
    pd.testing.assert_frame_equal(cocluster_units_tokens(stored, layer="lstm", n_clusters=2, chunk_sequences=7), out)


def test_token_unit_matrix_is_the_mean_absolute_signal():
    trace = blocky_text_trace(n=5, t=10)
    means, counts = token_unit_matrix(trace, layer="lstm", signal="hidden_state", chunk_sequences=2)
    tok = np.asarray(trace.tokens)
    mask = np.asarray(trace["lstm"].mask)
    h = np.abs(np.asarray(trace["lstm"]["hidden_state"], np.float64))
    for k in range(len(VOCAB)):
        sel = (tok == k) & mask
        assert counts[k] == sel.sum()
        if sel.any():
            np.testing.assert_allclose(means[k], h[sel].mean(axis=0), rtol=1e-12)


def test_cocluster_errors():
    trace = blocky_text_trace(n=4, t=8)
    with pytest.raises(
        ValueError, match=r"n_clusters must be an integer from 2 to min\(tokens kept, units\) = 6, got 7"
    ):
        cocluster_units_tokens(trace, layer="lstm", n_clusters=7)
    with pytest.raises(ValueError, match="has no signal 'forget'"):
        cocluster_units_tokens(trace, layer="lstm", signal="forget")
    with pytest.raises(ValueError, match="unknown layer 'gru'"):
        cocluster_units_tokens(trace, layer="gru")
    numeric = reference_lstm_trace(np.zeros((2, 3, 1)), np.zeros((1, 8)), np.zeros((2, 8)), np.zeros(8))
    with pytest.raises(ValueError, match="need a text model"):
        cocluster_units_tokens(numeric, layer="lstm")
