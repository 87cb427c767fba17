"""Probes: the estimator passes sklearn's checks; the protocol finds planted units, does not leak, and its
control tasks separate a representation of a feature from one of token identity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.utils.estimator_checks import estimator_checks_generator

from gatelens.analysis.features import build_features
from gatelens.analysis.probes import (
    RANKING_COLUMNS,
    REPORT_COLUMNS,
    SignalProbe,
    control_labels,
    probe_report,
    probe_unit_ranking,
    run_probes,
    split_by_sequence,
)
from gatelens.analysis.store import RunWriter, open_run
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace


def applicable_checks(estimators):
    """sklearn's checks for our estimators, without the array-API check (SciPy array-API mode is off here)."""
    for est in estimators:
        for e, check in estimator_checks_generator(est, legacy=True):
            name = getattr(check, "func", check).__name__
            if name != "check_array_api_input":
                yield pytest.param(e, check, id=f"{e!r}-{name}")


@pytest.mark.parametrize(
    "estimator, check",
    list(applicable_checks([SignalProbe(), SignalProbe(task="classification"), SignalProbe(task="regression")])),
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def rnn_trace(h, **trace_kw):
    h = np.asarray(h, np.float32)
    n, t, u = h.shape
    info = LayerInfo(name="rnn", cell_type="simple_rnn", units=u, input_dim=1)
    lt = LayerTrace(
        info, {"hidden_state": h, "hidden_state_pre": np.tanh(h)}, mask=np.ones((n, t), bool), inputs=h[..., :1]
    )
    return Trace({"rnn": lt}, **trace_kw)


def keyed(n, t, **cols):
    seq, step = np.divmod(np.arange(n * t), t)
    return pd.DataFrame({"sequence": seq, "step": step, **{k: np.asarray(v).ravel() for k, v in cols.items()}})


def test_estimator_task_selection_and_weights():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    assert SignalProbe().fit(X, X[:, 1] > 0).task_ == "classification"
    assert SignalProbe().fit(X, np.where(X[:, 1] > 0, "a", "b")).task_ == "classification"
    reg = SignalProbe().fit(X, 4 * X[:, 3] + 0.5 * X[:, 0])
    assert reg.task_ == "regression" and np.argmax(reg.unit_weights_) == 3
    # weights are coefficients on standardised inputs: rescaling a unit does not change its weight
    X2 = X * [1, 1, 1, 1000, 1]
    reg2 = SignalProbe().fit(X2, 4 * X[:, 3] + 0.5 * X[:, 0])
    np.testing.assert_allclose(reg2.unit_weights_, reg.unit_weights_, rtol=1e-6)
    multi = SignalProbe(task="classification").fit(X, np.digitize(X[:, 4], [-0.5, 0.5]))
    assert multi.coef_.shape == (3, 5) and np.argmax(multi.unit_weights_) == 4
    assert not hasattr(SignalProbe(task="regression").fit(X, X[:, 0]), "predict_proba")
    with pytest.raises(ValueError, match=r"task must be one of .* got 'ridge'"):
        SignalProbe(task="ridge").fit(X, X[:, 0])


def test_finds_the_unit_that_carries_each_feature():
    rng = np.random.default_rng(1)
    n, t, u = 24, 30, 6
    h = rng.normal(size=(n, t, u))
    feats = keyed(n, t, flag=h[..., 4] > 0.3, level=2.0 * h[..., 1] + 0.2 * rng.normal(size=(n, t)))
    trace = rnn_trace(h)
    res = run_probes(trace, feats, feature_columns=["flag", "level"])
    assert list(res.report.columns) == REPORT_COLUMNS and list(res.ranking.columns) == RANKING_COLUMNS
    rep = res.report.set_index(["signal", "feature"])
    flag, level = rep.loc[("hidden_state", "flag")], rep.loc[("hidden_state", "level")]
    assert flag.task == "classification" and flag.score > 0.95 and flag.top_units.split(",")[0] == "4"
    assert level.task == "regression" and level.score > 0.95 and level.top_units.split(",")[0] == "1"
    assert flag.n_train + flag.n_test == n * t and flag.split == "sequence"
    top = res.ranking.query("signal == 'hidden_state' and feature == 'level' and rank == 1")
    assert top.unit.tolist() == [1]
    r = res.ranking.query("signal == 'hidden_state' and feature == 'level'")
    assert sorted(r["rank"]) == list(range(1, u + 1))
    assert (np.diff(r.sort_values("rank").weight.to_numpy()) <= 0).all()
    # the pre-activations are left out by default, and can be asked for
    assert set(res.report.signal) == {"hidden_state"}
    assert set(probe_report(trace, feats, signals=["hidden_state_pre"], feature_columns=["flag"]).signal) == {
        "hidden_state_pre"
    }


def test_split_by_sequence_prevents_leakage():
    # each sequence has one random label and one random signature in the units: a split by step would
    # score ~100% by recognising sequences; held-out sequences score like chance
    rng = np.random.default_rng(2)
    n, t, u = 40, 25, 64  # more units than sequences: any labelling of the sequences is linearly separable
    signature = rng.normal(size=(n, 1, u))
    h = signature + 0.01 * rng.normal(size=(n, t, u))
    label = np.repeat(rng.random(n) > 0.5, t).reshape(n, t)
    trace = rnn_trace(h)
    rep = probe_report(trace, keyed(n, t, label=label), feature_columns=["label"]).iloc[0]
    assert rep.split == "sequence"
    assert rep.score < 0.8
    # the same probe scored on a split by step would look excellent (this is what the protocol avoids)
    X, y = h.reshape(-1, u), label.ravel()
    test = rng.random(len(y)) < 0.25
    assert SignalProbe(C=100.0).fit(X[~test], y[~test]).score(X[test], y[test]) > 0.95
    test_mask, how = split_by_sequence(np.repeat(np.arange(n), t), np.tile(np.arange(t), n))
    assert how == "sequence" and not set(np.nonzero(test_mask)[0] // t) & set(np.nonzero(~test_mask)[0] // t)


def test_control_task_separates_feature_from_token_identity():
    rng = np.random.default_rng(3)
    n, t, vocab = 40, 30, 12
    tokens = rng.integers(0, vocab, size=(n, t))
    feature = np.isin(tokens, [1, 4, 7])
    # "identity" units: a one-hot code of the token (a linear probe can memorise any labelling of tokens)
    identity = np.eye(vocab)[tokens] + 0.01 * rng.normal(size=(n, t, vocab))
    # "feature" unit: only the feature, the rest noise
    only = np.concatenate([feature[..., None] + 0.01 * rng.normal(size=(n, t, 1)), rng.normal(size=(n, t, 3))], -1)
    names = [f"t{k}" for k in range(vocab)]
    rep_id = probe_report(rnn_trace(identity, tokens=tokens, vocabulary=names), keyed(n, t, f=feature), C=100.0)
    rep_only = probe_report(rnn_trace(only, tokens=tokens, vocabulary=names), keyed(n, t, f=feature), C=100.0)
    a = rep_id.query("feature == 'f'").iloc[0]
    b = rep_only.query("feature == 'f'").iloc[0]
    assert a.control_by == "token" and a.score > 0.99 and b.score > 0.99
    assert a.control_score > 0.95  # the identity code memorises the control labelling too
    assert b.control_score < a.control_score - 0.1  # one feature unit cannot
    assert b.selectivity > a.selectivity + 0.1
    np.testing.assert_allclose(a.selectivity, a.score - a.control_score)


def test_control_labels_follow_the_empirical_distribution():
    types = np.arange(20000) % 5000
    y = np.r_[np.zeros(15000), np.ones(5000)]
    lab = control_labels(types, y, np.ones(len(y), bool), random_state=0)
    per_type = pd.Series(lab).groupby(types).nunique()
    assert (per_type == 1).all()
    assert 0.2 < lab.mean() < 0.3  # 25 % ones in y
    assert not np.array_equal(lab, control_labels(types, y, np.ones(len(y), bool), random_state=1))


def test_binned_input_and_binned_feature_controls_and_time_split():
    rng = np.random.default_rng(4)
    h = rng.normal(size=(1, 200, 3))
    x = rng.normal(size=(1, 200, 2))
    feats = keyed(1, 200, v=h[..., 0] * 2)
    rep = probe_report(rnn_trace(h, x=x, feature_names=["a", "b"]), feats, feature_columns=["v"]).iloc[0]
    assert rep.split == "time" and rep.control_by == "binned input" and rep.n_test == 50 and rep.score > 0.99
    rep2 = probe_report(rnn_trace(h), feats, feature_columns=["v"]).iloc[0]
    assert rep2.control_by == "binned feature" and np.isfinite(rep2.control_score)


def test_constant_and_missing_features_are_reported_not_fitted():
    rng = np.random.default_rng(5)
    h = rng.normal(size=(6, 10, 2))
    feats = keyed(6, 10, k=np.ones((6, 10)), gap=np.where(np.arange(60) % 2, np.nan, h[..., 0].ravel()))
    res = run_probes(rnn_trace(h), feats, feature_columns=["k", "gap"])
    k = res.report.query("feature == 'k'").iloc[0]
    assert np.isnan(k.score) and k.note == "constant feature in the training rows" and k.top_units == ""
    gap = res.report.query("feature == 'gap'").iloc[0]
    assert gap.n_train + gap.n_test == 30 and gap.score > 0.9
    assert set(res.ranking.feature) == {"gap"}


def test_run_store_subsample_tasks_and_progress(tmp_path):
    rng = np.random.default_rng(6)
    n, t, u = 12, 15, 4
    h = rng.normal(size=(n, t, u)).astype(np.float32)
    trace = rnn_trace(h)
    info = trace["rnn"].info
    with RunWriter(tmp_path / "run", [info], n_sequences=n, n_steps=t, chunk_sequences=5) as w:
        w.write_batch(
            0,
            {
                "rnn": {
                    "hidden_state": h,
                    "hidden_state_pre": np.tanh(h),
                    "mask": np.ones((n, t), bool),
                    "input": h[..., :1],
                }
            },
        )
        w.finish(verification={})
    run = open_run(tmp_path / "run")
    feats = keyed(n, t, level=np.round(h[..., 2] * 3))
    calls = []
    kw = dict(feature_columns=["level"], max_rows=120, chunk_sequences=5)
    a = run_probes(run, feats, progress=lambda d, tot: calls.append((d, tot)), **kw)
    b = run_probes(trace, feats, **kw)
    pd.testing.assert_frame_equal(a.report, b.report)
    pd.testing.assert_frame_equal(a.ranking, b.ranking)
    assert calls == [(1, 1)]
    assert a.report.n_train.iloc[0] + a.report.n_test.iloc[0] == 120
    # a multi-valued integer feature is a regression unless the caller says otherwise
    assert a.report.task.iloc[0] == "regression"
    c = probe_report(trace, feats, tasks={"level": "classification"}, **kw).iloc[0]
    assert c.task == "classification" and c.top_units.split(",")[0] == "2"
    with pytest.raises(ValueError, match=r"'classification' or 'regression', got \{'level': 'ridge'\}"):
        run_probes(trace, feats, tasks={"level": "ridge"}, **kw)
    assert probe_unit_ranking(trace, feats, **kw).query("rank == 1").unit.tolist() == [2]


def test_with_built_in_text_features():
    rng = np.random.default_rng(7)
    vocab = ["", "a", "(", ")", " "]
    tokens = rng.choice([1, 2, 3, 4], size=(20, 30), p=[0.5, 0.2, 0.2, 0.1])
    trace = rnn_trace(rng.normal(size=(20, 30, 3)), tokens=tokens, vocabulary=vocab)
    feats = build_features(trace)
    depth = feats.bracket_depth.to_numpy().reshape(20, 30)
    trace["rnn"]._signals["hidden_state"][..., 1] = depth
    rep = probe_report(trace, feats, feature_columns=["bracket_depth", "is_space"])
    d = rep.query("feature == 'bracket_depth'").iloc[0]
    assert d.task == "regression" and d.score > 0.999 and d.top_units.startswith("1")


def test_signals_fitted_on_threads_give_one_threads_tables_in_order(monkeypatch):
    """The signals' probes fitted on PROBE_THREADS threads: the tables of a single thread, rows in signal order,
    progress in order."""
    from gatelens.analysis import probes as probes_module

    rng = np.random.default_rng(9)
    n, t, u = 10, 12, 3
    h = rng.normal(size=(n, t, u)).astype(np.float32)
    trace = rnn_trace(h)  # hidden_state h, hidden_state_pre tanh(h)
    feats = keyed(n, t, up=h[..., 1] > 0, level=h[..., 0] * 2.0)
    signals = ["hidden_state_pre", "hidden_state"]
    runs = {}
    for threads in (1, 2):
        monkeypatch.setattr(probes_module, "PROBE_THREADS", threads)
        seen: list[int] = []
        res = run_probes(
            trace, feats, signals=signals, feature_columns=["up", "level"], progress=lambda d, _, s=seen: s.append(d)
        )
        runs[threads] = (res, seen)
    (one, seen1), (two, seen2) = runs[1], runs[2]
    pd.testing.assert_frame_equal(one.report, two.report)
    pd.testing.assert_frame_equal(one.ranking, two.ranking)
    assert two.report.signal.tolist() == ["hidden_state_pre"] * 2 + ["hidden_state"] * 2 and seen1 == seen2 == [1, 2]
    assert two.report.set_index(["signal", "feature"]).loc[("hidden_state", "up"), "score"] > 0.75
