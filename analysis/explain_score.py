"""Explanations that are scored: explain a unit on some sequences, simulate it from the explanation on others.

After Bills et al. (2023, "Language models can explain neurons in language models"): an explanation is
worth what a simulation built only from it predicts of the real activations on data it was not made from.
Here an explanation of a unit is one **feature** (a column of the features table: built-in or the user's),
a **sign** and a **lag**: "its SIGNAL is higher (sign +1) or lower (-1) where FEATURE, ``lag`` steps
earlier, is larger". The simulation is ``sign * feature[t - lag]`` (steps in the input's time order) and
the **score** is the Pearson correlation of the simulation with the unit's real signal.

Sequences are split by parity: the explanation is chosen on the even sequences (the (signal, feature,
lag) with the largest ``|r|``, signals ``cell_state``/``hidden_state`` -- the state; ``lag`` 0..``max_lag``),
and scored on the odd ones (held out). The **control** scores the same explanation with the feature's
values shuffled across the held-out steps of each chunk (a seeded permutation): near 0 whenever the
score means anything. A step counts where the layer processed it and the lagged feature is defined.

Everything is accumulated as sums (n, sums, sums of squares and cross products, as matrix products over
every unit and feature at once), a chunk of sequences at a time.

Examples
--------
>>> import numpy as np, pandas as pd
>>> from gatelens._examples import example_trace
>>> rng = np.random.default_rng(0)
>>> f = rng.normal(size=(40, 30))
>>> trace, sig = example_trace("lstm", n=40, steps=30, units=2)
>>> sig["cell_state"][:, 1:, 0] = -f[:, :-1]                      # unit 0 follows f one step later, negated
>>> sig["cell_state"][..., 1] = rng.normal(size=(40, 30))          # unit 1 follows nothing
>>> feats = pd.DataFrame({"sequence": np.repeat(np.arange(40), 30), "step": np.tile(np.arange(30), 40),
...                       "f": f.ravel()})
>>> s = explanation_scores(trace, feats)
>>> row = s.iloc[0]
>>> row.feature, int(row.sign), int(row.lag), round(float(row.score), 3), bool(abs(row.control) < 0.1)
('f', -1, 1, 1.0, True)
>>> float(s.iloc[1].score) < 0.3
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from gatelens.analysis._reading import read_mask, select_layers
from gatelens.analysis.signals import state_names
from gatelens.analysis.trace import Trace, iter_chunks

SCORE_COLUMNS = [
    "layer", "unit", "signal", "feature", "sign", "lag", "fit_r", "score", "control", "n_fit", "n_heldout",
    "explanation",
]  # fmt: skip
STATE_SIGNALS = state_names()  # the registry's states, cell_state first


class _Sums:
    """Pairwise-complete sums for Pearson r between every column of X (rows) and every column of Y (columns).

    Each block of steps costs one matrix product ``[V, Y0].T @ X`` and one ``V.T @ (X * X)`` over every unit of
    every signal against every (lag, feature) column at once, where ``V`` holds only the *distinct* patterns of
    defined cells of the columns (the lags' patterns: a few), not one per feature. (The products are formed with the
    narrow side on the left: ~1.5x faster than ``X.T @ [V, Y0]``; the sums are kept as (columns, width).)
    """

    def __init__(self, width: int, columns: int) -> None:
        z = np.zeros((columns, width))
        self.sx, self.sxx, self.sxy = z, z.copy(), z.copy()
        self.n, self.sy, self.syy = (np.zeros(columns) for _ in range(3))

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """``x`` (M, width) real steps (float64, overwritten: squared in place), ``y`` (M, columns) with NaN where
        undefined."""
        v = ~np.isnan(y)
        y0 = np.where(v, y, 0.0)
        patterns: dict[bytes, int] = {}
        inv = np.empty(y.shape[1], np.intp)
        for j in range(y.shape[1]):  # columns (lags x features: a few dozen), not units
            inv[j] = patterns.setdefault(np.packbits(v[:, j]).tobytes(), len(patterns))
        first = np.unique(inv, return_index=True)[1]
        vu = v[:, first].astype(np.float64)  # one column per distinct pattern, in order of first use
        k = vu.shape[1]
        g = np.concatenate([vu, y0], axis=1).T @ x
        self.sx += g[:k][inv]
        self.sxy += g[k:]
        np.multiply(x, x, out=x)
        self.sxx += (vu.T @ x)[inv]
        self.n += v.sum(0)
        self.sy += y0.sum(0)
        self.syy += (y0 * y0).sum(0)

    def r(self) -> np.ndarray:
        """(width, columns) Pearson r; NaN with fewer than 3 steps or a constant column."""
        n, sx, sy, syy = self.n[:, None], self.sx, self.sy[:, None], self.syy[:, None]
        cov = n * self.sxy - sx * sy
        var = (n * self.sxx - sx**2) * (n * syy - sy**2)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = cov / np.sqrt(var)
        return np.where((n > 2) & (var > 0), np.clip(out, -1.0, 1.0), np.nan).T


def feature_grid(
    features: pd.DataFrame, n: int, t: int, columns: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """The features table as an (N, T, n_features) float64 grid (NaN where a feature is undefined)."""
    from gatelens.analysis.features import as_feature_matrix

    mat, names = as_feature_matrix(features, columns)
    grid = np.full((n, t, len(names)), np.nan)
    s = features["sequence"].to_numpy(np.int64)
    st = features["step"].to_numpy(np.int64)
    ok = (s >= 0) & (s < n) & (st >= 0) & (st < t)
    grid[s[ok], st[ok]] = mat[ok]
    return grid, names


def _lagged(grid: np.ndarray, lag: int) -> np.ndarray:
    if lag == 0:
        return grid
    out = np.full_like(grid, np.nan)
    out[:, lag:] = grid[:, :-lag]
    return out


def _accumulate(lt: Any, sigs: list[str], lags: list[np.ndarray], chunk: int, rng: np.random.Generator) -> dict:
    """The sums of one layer, a chunk of sequences at a time: ``"fit"`` (even sequences) of every unit of every signal
    against every lag's features, ``"held"`` (odd ones) against every lag's features and then the same permuted
    within the chunk (the control)."""
    units, nl, nf = lt.info.units, len(lags), lags[0].shape[2]
    sums = {"fit": _Sums(len(sigs) * units, nl * nf), "held": _Sums(len(sigs) * units, 2 * nl * nf)}
    buf = np.empty(0)
    # One BLAS thread: the products are narrow (a few dozen columns), where a second OpenBLAS thread spin-waiting for
    # a core costs more CPU than it saves on a shared machine (as in the correlations).
    with threadpool_limits(limits=1, user_api="blas"):
        for rows in iter_chunks(lt.shape[0], chunk):
            m = read_mask(lt, rows)
            seqs = np.arange(rows.start, rows.stop)
            raw = [np.asarray(lt[s][rows]).reshape(-1, units) for s in sigs]  # each signal read once, stored dtype
            ys = [lags[lag][rows].reshape(-1, nf) for lag in range(nl)]
            for split, parity in (("fit", 0), ("held", 1)):
                sel = (m & ((seqs % 2) == parity)[:, None]).ravel()
                if not sel.any():
                    continue
                idx = np.flatnonzero(sel)
                if buf.size < idx.size * len(sigs) * units:
                    buf = np.empty(idx.size * len(sigs) * units)  # reused: a fresh 50 MB array is faulted in anew
                x = buf[: idx.size * len(sigs) * units].reshape(idx.size, len(sigs) * units)
                for k, r in enumerate(raw):
                    x[:, k * units : (k + 1) * units] = r[idx]
                y = [yl[idx] for yl in ys]
                if split == "held":
                    perm = rng.permutation(idx.size)
                    y += [yl[perm] for yl in y]
                sums[split].add(x, np.concatenate(y, axis=1))
    return sums


def explanation_scores(
    trace: Trace,
    features: pd.DataFrame,
    *,
    layers: Sequence[str] | str | None = None,
    signals: Sequence[str] = STATE_SIGNALS,
    exclude: Sequence[str] = ("step",),
    max_lag: int = 2,
    chunk: int = 256,
    seed: int = 0,
) -> pd.DataFrame:
    """One scored explanation per unit (see the module docstring).

    Parameters
    ----------
    trace : Trace
    features : DataFrame
        ``sequence``, ``step`` and one numeric column per feature (:func:`gatelens.analysis.features.build_features`).
    layers : str or list of str, optional
    signals : list of str
        Signals an explanation may describe (those the layer has).
    exclude : list of str
        Features never used (default ``step``: a counter most units follow a little).
    max_lag : int
        Largest lag tried.
    chunk : int
    seed : int
        Seed of the control's permutations.

    Returns
    -------
    DataFrame
        :data:`SCORE_COLUMNS`, one row per layer and unit, ordered by layer then unit; ``explanation`` the
        sentence; NaN scores (and no feature) when nothing varies.

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> rng = np.random.default_rng(0)
    >>> f = rng.normal(size=(10, 20))
    >>> trace, sig = example_trace("gru", n=10, steps=20, units=1)
    >>> sig["hidden_state"][..., 0] = 0.5 * f + 0.1 * rng.normal(size=(10, 20))   # follows f, with noise
    >>> feats = pd.DataFrame({"sequence": np.repeat(np.arange(10), 20), "step": np.tile(np.arange(20), 10),
    ...                       "f": f.ravel(), "g": rng.normal(size=200)})
    >>> row = explanation_scores(trace, feats, max_lag=1).iloc[0]
    >>> row.signal, row.feature, int(row.sign), int(row.lag), int(row.n_fit), int(row.n_heldout)
    ('hidden_state', 'f', 1, 0, 100, 100)
    >>> round(float(row.score), 2), bool(abs(row.control) < 0.1)    # held out: even sequences fit, odd scored
    (0.98, True)
    >>> row.explanation
    'its hidden state is higher where f is larger'
    """
    if max_lag < 0:
        raise ValueError(f"max_lag must be >= 0, got {max_lag!r}")
    names_all = [c for c in features.columns if c != "sequence"]
    keep = [c for c in names_all if c not in set(exclude)]
    frames = []
    n_all, t_all = trace.n_sequences, trace.n_steps
    grid, gnames = feature_grid(features, n_all, t_all, keep)
    lags = [_lagged(grid, lag) for lag in range(max_lag + 1)]
    for name in select_layers(trace, layers):
        lt = trace[name]
        sigs = [s for s in signals if s in lt.info.signals]
        units = lt.info.units
        if not sigs or not gnames:
            continue
        nl, nf = max_lag + 1, len(gnames)
        sums = _accumulate(lt, sigs, lags, chunk, np.random.default_rng(seed))

        shape = (len(sigs), units, -1, nl, nf)  # (signals, units, part, lags, features)
        fit = sums["fit"].r().reshape(shape)[:, :, 0].transpose(0, 2, 1, 3)  # -> (signals, lags, units, features)
        held, ctrl = sums["held"].r().reshape(shape).transpose(2, 0, 3, 1, 4)  # part 0 held out, part 1 control
        n_fit = np.broadcast_to(sums["fit"].n.reshape(nl, 1, nf), fit.shape)
        n_held = np.broadcast_to(sums["held"].n[: nl * nf].reshape(nl, 1, nf), fit.shape)
        # (signals, lags, units, features) -> best per unit; ties: first signal, smallest lag, first feature
        a = np.where(np.isnan(fit), -1.0, np.abs(fit)).transpose(2, 0, 1, 3).reshape(units, -1)
        flat = np.argmax(a, axis=1)
        si, li, fi = np.unravel_index(flat, (len(sigs), max_lag + 1, len(gnames)))
        u = np.arange(units)
        r_fit = fit[si, li, u, fi]
        ok = np.isfinite(r_fit) & (a[u, flat] >= 0)
        sign = np.where(r_fit < 0, -1, 1)
        frames.append(
            pd.DataFrame(
                {
                    "layer": name,
                    "unit": u,
                    "signal": [sigs[i] if k else None for i, k in zip(si, ok)],
                    "feature": [gnames[i] if k else None for i, k in zip(fi, ok)],
                    "sign": np.where(ok, sign, 0),
                    "lag": np.where(ok, li, 0),
                    "fit_r": np.where(ok, r_fit, np.nan),
                    "score": np.where(ok, sign * held[si, li, u, fi], np.nan),
                    "control": np.where(ok, sign * ctrl[si, li, u, fi], np.nan),
                    "n_fit": np.where(ok, n_fit[si, li, u, fi], 0).astype(np.int64),
                    "n_heldout": np.where(ok, n_held[si, li, u, fi], 0).astype(np.int64),
                }
            )
        )
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in SCORE_COLUMNS})
    out = pd.concat(frames, ignore_index=True)
    out["explanation"] = [describe(r) for r in out.itertuples()]
    return out[SCORE_COLUMNS]


def describe(row: Any) -> str:
    """The explanation of a row of :func:`explanation_scores` in words.

    Examples
    --------
    >>> from types import SimpleNamespace as R
    >>> describe(R(signal="cell_state", feature="depth", sign=1, lag=0))
    'its cell state is higher where depth is larger'
    >>> describe(R(signal="hidden_state", feature="is_mark", sign=-1, lag=2))
    'its hidden state is lower where is_mark was larger 2 steps earlier'
    """
    if not isinstance(getattr(row, "feature", None), str):
        return "no feature explains it"
    word = "higher" if row.sign > 0 else "lower"
    sig = str(row.signal).replace("_", " ")
    if int(row.lag) == 0:
        return f"its {sig} is {word} where {row.feature} is larger"
    steps = int(row.lag)
    return f"its {sig} is {word} where {row.feature} was larger {steps} step{'s' if steps != 1 else ''} earlier"


def simulate(features: pd.DataFrame, feature: str, sign: int, lag: int, n: int, t: int) -> np.ndarray:
    """The simulation of an explanation: ``sign * feature[t - lag]`` as an (N, T) grid (NaN where undefined).

    Examples
    --------
    >>> f = pd.DataFrame({"sequence": [0, 0, 0], "step": [0, 1, 2], "x": [1.0, 2.0, 3.0]})
    >>> simulate(f, "x", -1, 1, 1, 3).tolist()
    [[nan, -1.0, -2.0]]
    """
    grid, _ = feature_grid(features, n, t, [feature])
    return sign * _lagged(grid, lag)[..., 0]
