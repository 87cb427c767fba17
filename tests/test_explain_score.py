"""Scored explanations against a pair-by-pair NumPy reference: masks, NaN cells in several patterns, ragged chunks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gatelens._examples import example_trace
from gatelens.analysis.explain_score import explanation_scores

N, T, UNITS, CHUNK, MAX_LAG = 11, 14, 5, 4, 2


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(7)
    mask = rng.random((N, T)) > 0.2
    mask[:, 0] = True
    trace, sig = example_trace("lstm", n=N, steps=T, units=UNITS, mask=mask)
    f = {"a": rng.normal(size=(N, T)), "b": (rng.random((N, T)) > 0.5).astype(float), "c": rng.normal(size=(N, T))}
    f["a"][rng.random((N, T)) < 0.15] = np.nan  # two different patterns of missing cells, one feature complete
    f["c"][rng.random((N, T)) < 0.3] = np.nan
    for s in ("cell_state", "hidden_state"):
        sig[s][:] = rng.normal(size=(N, T, UNITS))
    sig["hidden_state"][..., 1] += 3 * np.nan_to_num(f["c"])  # unit 1 follows c (where it is defined)
    sig["cell_state"][:, 2:, 3] -= 2 * f["b"][:, :-2]  # unit 3 follows b two steps later, negated
    sig["cell_state"][..., 4] = sig["hidden_state"][..., 4] = 0.5  # constant: nothing explains it
    feats = pd.DataFrame({"sequence": np.repeat(np.arange(N), T), "step": np.tile(np.arange(T), N)})
    for k, v in f.items():
        feats[k] = v.ravel()
    return trace, sig, mask, f, feats, explanation_scores(trace, feats, chunk=CHUNK, max_lag=MAX_LAG)


def _lag(v, lag):
    out = np.full_like(v, np.nan)
    out[:, lag:] = v[:, : T - lag]
    return out


def _r(x, y):
    ok = ~np.isnan(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or x.min() == x.max() or y.min() == y.max():
        return np.nan, len(x)
    return np.corrcoef(x, y)[0, 1], len(x)


def test_scores_match_the_pairwise_reference(case):
    trace, sig, mask, f, feats, table = case
    seqs = np.arange(N)[:, None]
    fit_sel, held_sel = mask & (seqs % 2 == 0), mask & (seqs % 2 == 1)
    # the control: the held-out steps of each chunk paired with their features permuted (the seeded permutations)
    rng = np.random.default_rng(0)
    perms = []
    for start in range(0, N, CHUNK):
        part = held_sel[start : start + CHUNK]
        assert part.any()  # every chunk holds an odd sequence with a real step
        perms.append(rng.permutation(int(part.sum())))
    for unit in range(UNITS):
        best = None
        for s in ("cell_state", "hidden_state"):
            for lag in range(MAX_LAG + 1):
                for name in ("a", "b", "c"):
                    y = _lag(f[name], lag)
                    r, n = _r(sig[s][..., unit][fit_sel], y[fit_sel])
                    if np.isfinite(r) and (best is None or abs(r) > abs(best[3])):
                        best = (s, lag, name, r, n)
        row = table.iloc[unit]
        if best is None:
            assert pd.isna(row.feature) and np.isnan(row.score) and row.explanation == "no feature explains it"
            continue
        s, lag, name, r, n = best
        assert (row.signal, int(row.lag), row.feature, int(row.sign)) == (s, lag, name, 1 if r > 0 else -1)
        x, y = sig[s][..., unit], _lag(f[name], lag)
        held_r, held_n = _r(x[held_sel], y[held_sel])
        xs, ys = [], []
        for c, start in enumerate(range(0, N, CHUNK)):
            part = held_sel[start : start + CHUNK]
            xs.append(x[start : start + CHUNK][part])
            ys.append(y[start : start + CHUNK][part][perms[c]])
        ctrl_r, _ = _r(np.concatenate(xs), np.concatenate(ys))
        np.testing.assert_allclose([row.fit_r, row.score, row.control], [r, row.sign * held_r, row.sign * ctrl_r],
                                   rtol=0, atol=1e-12)  # fmt: skip
        assert (row.n_fit, row.n_heldout) == (n, held_n)
    # the planted units are found
    assert table.iloc[1][["signal", "feature", "lag"]].tolist() == ["hidden_state", "c", 0]
    assert table.iloc[3][["signal", "feature", "lag", "sign"]].tolist() == ["cell_state", "b", 2, -1]
    assert pd.isna(table.iloc[4].feature)
