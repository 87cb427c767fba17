"""analysis/effects.py against hand-worked values and independent references (scipy)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from gatelens.analysis.effects import (
    as_steps,
    bootstrap_ci,
    log_probs,
    per_sequence,
    rank_by_effect,
    step_effects,
    step_metric,
    summary_row,
)
from gatelens.errors import DataError, UsageError


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_probabilities_and_logits_give_the_same_metrics():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 5, 3)) * 3
    p = _softmax(z)
    tg = rng.integers(0, 3, size=(4, 5))
    for m in ("loss", "prob", "logit_diff", "accuracy"):
        np.testing.assert_allclose(step_metric(p, m, tg), step_metric(z, m, tg), atol=1e-9, err_msg=m)
    # cross-entropy by hand; logit difference is invariant to the softmax's constant
    np.testing.assert_allclose(step_metric(z, "loss", tg), -np.log(np.take_along_axis(p, tg[..., None], -1)[..., 0]))
    np.testing.assert_allclose(
        step_metric(z + 7.0, "logit_diff", tg, contrast=0), np.take_along_axis(z, tg[..., None], -1)[..., 0] - z[..., 0]
    )


def test_sigmoid_output_and_ignored_steps():
    p = np.array([[0.9], [0.2]])  # one output per sequence, p(class 1)
    loss = step_metric(p, "loss", np.array([1, -1]))
    assert loss[0, 0] == pytest.approx(-np.log(0.9)) and np.isnan(loss[1, 0])
    assert log_probs(as_steps(p)).shape == (2, 1, 2)


def test_regression_and_output_change():
    a, b = np.array([[1.0], [2.0]]), np.array([[1.5], [4.0]])
    e = step_effects(a, b, "mse", np.array([1.0, 3.0]))
    np.testing.assert_allclose(e["original"].ravel(), [0.0, 1.0])
    np.testing.assert_allclose(e["intervened"].ravel(), [0.25, 1.0])
    np.testing.assert_allclose(e["effect"].ravel(), [0.25, 0.0])
    oc = step_effects(np.zeros((2, 3, 2)), np.ones((2, 3, 2)) * [1.0, 3.0])
    np.testing.assert_allclose(oc["effect"], 2.0)


def test_per_sequence_ignores_missing_steps():
    v = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan]])
    out = per_sequence(v)
    assert out[0] == 2.0 and np.isnan(out[1])


def test_bootstrap_interval_matches_scipy_percentile():
    v = np.random.default_rng(3).exponential(size=200)
    mean, lo, hi = bootstrap_ci(v, n_boot=4000, seed=1)
    ref = stats.bootstrap((v,), np.mean, n_resamples=4000, method="percentile", random_state=2).confidence_interval
    assert mean == pytest.approx(v.mean())
    assert lo == pytest.approx(ref.low, abs=0.02) and hi == pytest.approx(ref.high, abs=0.02)
    assert bootstrap_ci(np.array([2.0])) == (2.0, 2.0, 2.0)
    assert all(np.isnan(bootstrap_ci(np.array([np.nan]))))


def test_rank_by_effect_per_metric():
    df = pd.DataFrame({"metric": ["a", "a", "b", "b"], "effect": [0.1, -0.3, 2.0, 1.0]})
    assert rank_by_effect(df)["rank"].tolist() == [2, 1, 1, 2]


def test_equal_per_sequence_effects_in_another_order_are_equal_and_share_a_rank():
    # the audit's sweep: two units with the same per-sequence effects in another order had means that differed in the
    # last bit (NumPy's pairwise sums), and ranks 1 and 2
    eff = np.array([-0.01, 0.0, 1 / 3, -0.35, 0.0, 0.02, -1 / 99, 0.0, 0.0, 1e-3] * 5)
    perm = np.random.default_rng(0).permutation(len(eff))
    assert eff.mean() != eff[perm].mean()  # the case: NumPy's mean depends on the order
    rows = [summary_row(eff * 0, eff, e, n_boot=50) for e in (eff, eff[perm])]
    assert rows[0]["effect"] == rows[1]["effect"]
    df = pd.DataFrame({"metric": ["acc"] * 3, "unit": [0, 1, 2], "effect": [r["effect"] for r in rows] + [0.5]})
    assert rank_by_effect(df)["rank"].tolist() == [2, 2, 1]


def test_bad_targets_name_the_row():
    p = _softmax(np.zeros((2, 3, 4)))
    with pytest.raises(DataError, match="class 7 at sequence 1, step 2"):
        step_metric(p, "loss", np.array([[0, 1, 2], [0, 1, 7]]))
    with pytest.raises(UsageError, match="needs targets"):
        step_metric(p, "loss")
    with pytest.raises(DataError, match="targets have shape"):
        step_metric(p, "loss", np.zeros((2, 5), int))
