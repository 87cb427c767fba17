"""The probes fitted together equal scikit-learn's estimators fitted one at a time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from gatelens.analysis import probes
from gatelens.analysis.probe_fit import fit_logistic, fit_ridge, standardize
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(600, 7)) * np.array([1, 5, 0.1, 1, 1, 2, 1]) + 3
    X[:, 6] = 2.0  # a constant column: scaled by 1, as StandardScaler does
    return rng, X


def test_standardize_is_standard_scaler(data):
    _, X = data
    ours = standardize(X[:400], X[400:])
    sc = StandardScaler().fit(X[:400])
    np.testing.assert_allclose(ours[0], sc.transform(X[:400]), atol=1e-12)
    np.testing.assert_allclose(ours[1], sc.transform(X[400:]), atol=1e-12)


@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("solver", ["exact", "cg"])
@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_logistic_equals_sklearn_per_target(data, C, solver, warm, monkeypatch):
    """Both Newton steps -- each probe's Hessian solved exactly (few units) or by conjugate gradients (many) --
    reach scikit-learn's optimum, from the constant predictor or from the warm start on every 6th row."""
    from gatelens.analysis import probe_fit

    monkeypatch.setattr(probe_fit, "EXACT_NEWTON_MAX_DIM", 10_000 if solver == "exact" else 0)
    monkeypatch.setattr(probe_fit, "WARM_START_ROWS", 100 if warm else 0)  # 600 rows: a start on 100 of them
    runs = []
    real = probe_fit._newton
    monkeypatch.setattr(probe_fit, "_newton", lambda A, *a: runs.append(len(A)) or real(A, *a))
    rng, X = data
    Xs = standardize(X)[0]
    z = Xs[:, :4] @ rng.normal(size=(4, 5)) + rng.normal(size=(600, 5)) * 0.5
    Y = (z > 0).astype(float)
    Y[:, 4] = Xs[:, 1] > 0  # perfectly separable: bounded only by the penalty
    fit = fit_logistic(Xs, Y, C=C)
    assert fit.converged.all()
    assert runs == ([100, 600] if warm else [600])
    for j in range(Y.shape[1]):
        ref = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(Xs, Y[:, j])
        np.testing.assert_allclose(fit.coef[:, j], ref.coef_[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fit.intercept[j], ref.intercept_[0], rtol=1e-5, atol=1e-6)


def test_kept_hessians_reach_the_same_optimum_with_fewer_factorisations(data, monkeypatch):
    """A Hessian kept while the gradient falls fast changes the path, not the optimum: the same coefficients as
    refreshing it at every step (pure Newton), with fewer Hessians formed."""
    from gatelens.analysis import probe_fit

    rng, X = data
    Xs = standardize(X)[0]
    Y = (Xs[:, :4] @ rng.normal(size=(4, 6)) + rng.normal(size=(600, 6)) * 0.5 > 0).astype(float)
    formed = []
    real = probe_fit._newton_steps

    def counting(*args):
        refresh = args[7]
        formed.append(int(refresh.sum()))
        return real(*args)

    monkeypatch.setattr(probe_fit, "_newton_steps", counting)
    kept = fit_logistic(Xs, Y, C=1.0)
    n_kept = sum(formed)
    formed.clear()
    monkeypatch.setattr(probe_fit, "HESSIAN_REUSE_RATE", 0.0)  # every step refreshes: exact Newton
    newton = fit_logistic(Xs, Y, C=1.0)
    assert kept.converged.all() and newton.converged.all()
    assert sum(formed) == newton.n_iter.sum() and n_kept < sum(formed)
    # both stop at the same gradient tolerance (tol * n), the tolerance the comparison with scikit-learn uses
    np.testing.assert_allclose(kept.coef, newton.coef, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kept.intercept, newton.intercept, rtol=1e-5, atol=1e-6)


def test_the_warm_start_saves_newton_steps_on_all_rows(monkeypatch):
    """Started from the optimum of every (n // m)-th row (its penalty scaled to its share of rows), the fit on all
    rows takes fewer steps to the same optimum than from the constant predictor."""
    from gatelens.analysis import probe_fit

    rng = np.random.default_rng(5)
    Xs = standardize(rng.normal(size=(4000, 12)))[0]
    Y = (Xs[:, :6] @ rng.normal(size=(6, 8)) + rng.normal(size=(4000, 8)) > 0).astype(float)
    Y[:, 7] = 0.0
    Y[[1, 2, 3, 10], 7] = 1.0  # a rare class none of the warm start's rows (every 8th) holds
    monkeypatch.setattr(probe_fit, "WARM_START_ROWS", 0)
    cold = fit_logistic(Xs, Y)
    monkeypatch.setattr(probe_fit, "WARM_START_ROWS", 500)
    warm = fit_logistic(Xs, Y)
    assert cold.converged.all() and warm.converged.all()
    assert warm.n_iter[:7].sum() < cold.n_iter[:7].sum(), (warm.n_iter, cold.n_iter)
    assert warm.n_iter[7] == cold.n_iter[7]  # started from the constant predictor, as without the warm start
    np.testing.assert_allclose(warm.coef, cold.coef, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(warm.intercept, cold.intercept, rtol=1e-5, atol=1e-6)


def test_ridge_equals_sklearn(data):
    rng, X = data
    Xs = standardize(X)[0]
    Y = Xs[:, :3] @ rng.normal(size=(3, 4)) + rng.normal(size=(600, 4))
    fit = fit_ridge(Xs, Y, alpha=2.5)
    ref = Ridge(alpha=2.5).fit(Xs, Y)
    np.testing.assert_allclose(fit.coef, ref.coef_.T, atol=1e-10)
    np.testing.assert_allclose(fit.intercept, ref.intercept_, atol=1e-10)


def test_run_probes_equals_the_one_at_a_time_reference():
    """Every row of the batched report equals _probe_one (one SignalProbe pipeline per feature)."""
    rng = np.random.default_rng(7)
    n, t, u = 12, 30, 5
    h = rng.normal(size=(n, t, u)).astype(np.float32)
    info = LayerInfo(name="rnn", cell_type="simple_rnn", units=u, input_dim=1)
    mask = np.ones((n, t), bool)
    mask[0, 20:] = False
    lt = LayerTrace(info, {"hidden_state": h, "hidden_state_pre": h}, mask=mask, inputs=h[..., :1])
    trace = Trace({"rnn": lt}, x=h[..., :1])
    seq, step = np.divmod(np.arange(n * t), t)
    hv = h[seq, step]
    partial = hv[:, 3] + rng.normal(size=n * t) * 0.3
    partial[::7] = np.nan  # rows of its own: a batch of its own
    feats = pd.DataFrame(
        {
            "sequence": seq,
            "step": step,
            "up": hv[:, 1] > 0,
            "noisy": (hv[:, 2] + rng.normal(size=n * t)) > 0.5,
            "lin": 2 * hv[:, 0] - hv[:, 4],
            "partial": partial,
            "const": np.ones(n * t),
        }
    )
    cols = ["up", "noisy", "lin", "partial", "const"]
    got = probes.run_probes(trace, feats, feature_columns=cols)
    # the reference: the same protocol, one scikit-learn pipeline per probe
    rows = probes.layer_rows(trace, "rnn", feats)
    frow = np.concatenate([fr for _, _, fr in rows.chunks])
    is_test, _ = probes.split_by_sequence(seq[frow], step[frow], test_size=0.25, random_state=0)
    types, control_by = probes._types(trace, rows, None, None, frow)
    x = probes._gather(h, rows, None)
    fmat, fnames = probes.as_feature_matrix(feats, cols)
    kinds = dict(zip(got.report["feature"], got.report["task"]))
    assert kinds["up"] == kinds["noisy"] == "classification" and kinds["lin"] == kinds["partial"] == "regression"
    params = {"alpha": 1.0, "C": 1.0, "max_iter": 1000}
    for j, f in enumerate(fnames):
        rep, rank = probes._probe_one(x, fmat[frow, j], is_test, kinds[f], params, types, control_by, j, 0, 5)
        row = got.report.set_index(["signal", "feature"]).loc[("hidden_state", f)]
        assert row["note"] == rep["note"] and row["task"] == rep["task"]
        for col in ("score", "control_score", "baseline_score", "selectivity"):
            np.testing.assert_allclose(row[col], rep[col], atol=1e-6, err_msg=f"{f} {col}")
        assert row["n_train"] == rep["n_train"] and row["n_test"] == rep["n_test"]
        if rank is not None:
            assert row["top_units"] == rep["top_units"], f
            ours = got.ranking.query("signal == 'hidden_state' and feature == @f").sort_values("unit")
            # the reference stops at scikit-learn's default tol=1e-4 (the batched solver at the optimum: see
            # test_logistic_equals_sklearn_per_target at tol=1e-12), so weights agree to that solver's precision
            np.testing.assert_allclose(ours["weight"], rank["weight"], rtol=1e-2, atol=1e-3)
