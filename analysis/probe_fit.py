"""Many linear probes on the same inputs, fitted together.

:func:`run_probes <gatelens.analysis.probes.run_probes>` trains, for one ``(layer, signal)``, a probe and a
control probe per feature, all on the same matrix of unit values. Fitting them one by one (a scikit-learn
pipeline each) spent most of ``gatelens analyze`` in Python and solver overhead; here every probe of a
kind is one column of a single problem:

* **ridge** (regression): one Cholesky solve of ``(X'X + alpha I) W = X'Y`` for all targets at once, on
  the standardised training rows (``X`` centred, so the intercept is the targets' mean) -- the closed form
  that :class:`sklearn.linear_model.Ridge` computes;
* **binary logistic regression**: Newton's method with a per-probe step halving, vectorised over probes
  (one ``A @ W`` product for all of them; a ``(d+1) x (d+1)`` Hessian per probe), minimising
  ``sum(log-loss) + ||w||^2 / (2C)`` with the intercept unpenalised: the objective of
  :class:`sklearn.linear_model.LogisticRegression` (``penalty="l2"``), solved to a tighter tolerance.

The standardisation is :class:`sklearn.preprocessing.StandardScaler`'s (mean and population std of the
training rows, a constant column scaled by 1). ``tests/test_analysis_probe_fit.py`` checks both solvers
against the scikit-learn estimators probe by probe.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(300, 4))
>>> Y = np.stack([X[:, 1] > 0, X[:, 3] < 0.5], axis=1).astype(float)
>>> fit = fit_logistic(standardize(X, X)[0], Y, C=1.0)
>>> np.abs(fit.coef).argmax(axis=0).tolist(), bool(fit.converged.all())
([1, 3], True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.special import expit

from gatelens.analysis.stats import _softplus

__all__ = ["LinearFit", "fit_logistic", "fit_ridge", "standardize"]


@dataclass(frozen=True)
class LinearFit:
    """Fitted probes, one per column: ``decision = X @ coef + intercept``.

    Attributes
    ----------
    coef : ndarray (d, k)
        Coefficients on the standardised inputs.
    intercept : ndarray (k,)
    n_iter : ndarray (k,) of int
        Newton iterations on all rows, a warm start's not counted (1 for the closed-form ridge).
    converged : ndarray (k,) of bool
    """

    coef: np.ndarray
    intercept: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray

    def decision(self, X: np.ndarray) -> np.ndarray:
        """``X @ coef + intercept`` (n, k)."""
        return X @ self.coef + self.intercept


def standardize(X_train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Scale by the training rows' mean and population std (a constant column by 1), as StandardScaler does.

    Returns the scaled training rows, then each of ``others`` scaled the same way, all float64.
    """
    Xtr = np.asarray(X_train)
    mean = Xtr.mean(axis=0, dtype=np.float64)
    centred = np.subtract(Xtr, mean, dtype=np.float64)  # the training rows' output, scaled in place below
    with np.errstate(invalid="ignore", divide="ignore"):  # no rows: NaN, as Xtr.std(axis=0) gives
        scale = np.sqrt(np.einsum("ij,ij->j", centred, centred) / len(centred))
    scale[scale < 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean))] = 1.0
    centred /= scale
    return (centred, *((np.subtract(a, mean, dtype=np.float64) / scale) for a in others))


def fit_ridge(X: np.ndarray, Y: np.ndarray, *, alpha: float = 1.0) -> LinearFit:
    """Ridge regressions of every column of ``Y`` (n, k) on the (standardised, centred) ``X`` (n, d).

    Minimises ``||y - X w - b||^2 + alpha ||w||^2`` per column, the objective of scikit-learn's ``Ridge``.
    """
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64).reshape(len(X), -1)
    x_mean = X.mean(axis=0)
    y_mean = Y.mean(axis=0)
    Xc = X - x_mean
    gram = Xc.T @ Xc
    gram[np.diag_indices_from(gram)] += alpha
    coef = cho_solve(cho_factor(gram), Xc.T @ (Y - y_mean))
    k = Y.shape[1]
    return LinearFit(coef, y_mean - x_mean @ coef, np.ones(k, np.int64), np.ones(k, bool))


def _times(A: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``A @ V`` for the tall ``A`` (n, d) and a few columns ``V`` (d, k), computed as ``(V' A')'``: the same
    product, which OpenBLAS runs about twice as fast in that orientation (1.5-1.8 ms against 3.2-5.1 ms at
    (14935, 129) x (129, 11), one thread)."""
    return (V.T @ A.T).T


def _t_times(A: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``A' @ M`` for the tall ``A`` (n, d) and ``M`` (n, k), computed as ``(M' A)'`` (2.6 ms against 4.7-6.4 ms at
    (14935, 129) and (14935, 11), one thread; see :func:`_times`)."""
    return (M.T @ A).T


def _logistic_loss(Z: np.ndarray, Y: np.ndarray, W: np.ndarray, lam: float) -> np.ndarray:
    """The penalised log-loss of every column, from its decisions ``Z = A @ W`` (n, k)."""
    return (_softplus(Z) - Y * Z).sum(axis=0) + 0.5 * lam * (W[:-1] ** 2).sum(axis=0)


def _cg(hvp, g: np.ndarray, max_iter: int, rtol: np.ndarray) -> np.ndarray:
    """Solve ``H p = g`` for every column at once by conjugate gradients (``hvp(V)`` gives ``H V``)."""
    p = np.zeros_like(g)
    r = g.copy()
    d = r.copy()
    rr = (r * r).sum(axis=0)
    stop = np.sqrt(rr) * rtol
    for _ in range(max_iter):
        live = np.sqrt(rr) > stop
        if not live.any():
            break
        Hd = hvp(d)
        dHd = (d * Hd).sum(axis=0)
        a = np.where(live & (dHd > 0), rr / np.where(dHd > 0, dHd, 1.0), 0.0)
        p += a * d
        r -= a * Hd
        rr_new = (r * r).sum(axis=0)
        d = r + np.where(rr > 0, rr_new / np.where(rr > 0, rr, 1.0), 0.0) * d
        rr = rr_new
    return p


#: Up to this many coefficients (units + 1) a Newton step solves each probe's Hessian exactly (one ``(d+1) x n x (d+1)``
#: product and a Cholesky per probe); above it, conjugate gradients on Hessian-vector products. The exact step costs
#: ``n d^2`` per probe against ``4 n d`` per CG iteration, and CG took ~60 iterations a step on a 2x128 char LSTM's
#: probes (correlated units): below ~4 x 60 coefficients the exact step is cheaper, and a BLAS-3 product besides (the
#: Hessian ``b' b`` is one float32 matrix product; written as a symmetric rank-n update, ``ssyrk``, it would take half
#: the flops, but measured slower: see :func:`_newton_steps`).
EXACT_NEWTON_MAX_DIM = 257


#: A probe's Hessian factorisation is kept for its next Newton step while its gradient keeps falling at least this
#: fast (its largest entry at most this share of the step before's): near the optimum the Hessian barely changes, a
#: step with the kept one is as good, and forming it (``n d^2``) is most of a step's cost. A slower fall refreshes it.
#: The optimum is the same: the gradient, the loss and the stopping test are always exact. On the probes of a 2x128
#: char LSTM's layer (0.1 / 0.3 / 0.5): 125 / 101 / 83 Hessians for 172 / 221 / 313 steps; fitting 1.55 s -> 1.29 s.
HESSIAN_REUSE_RATE = 0.3


def _newton_steps(
    A: np.ndarray,
    A32: np.ndarray,
    S: np.ndarray,
    reg: np.ndarray,
    grad: np.ndarray,
    factors: list,
    idx: np.ndarray,
    refresh: np.ndarray,
    buf: np.ndarray,
) -> np.ndarray:
    """Per column ``j`` (probe ``idx[j]``), ``H^-1 grad_j`` with ``H = A' diag(S_j) A + diag(reg)`` formed and
    factorised exactly where ``refresh[j]`` (kept in ``factors[idx[j]]``), else with the factorisation kept there.

    ``A32`` is ``A`` in float32 and ``buf`` an array of its shape and dtype (the scaled rows of one probe): both
    made once per fit, not per step or per probe."""
    out = np.empty_like(grad)
    ridge = reg[:, 0]
    if refresh.any():
        root = np.sqrt(S).astype(np.float32)
    for j in range(grad.shape[1]):  # probes of one batch (a few dozen); each one BLAS-3 product
        if refresh[j]:
            b = np.multiply(A32, root[:, j : j + 1], out=buf)
            # b' b in float32 (the Hessian only steers the step; the gradient, the loss and the stopping test stay
            # float64, so the optimum is the same). NumPy's ``b.T @ b`` (one BLAS call, both triangles) took 5.1 ms at
            # (14978, 129) against 6.1 ms for SciPy's ``ssyrk(1.0, b.T)`` (the upper triangle only), one BLAS thread
            h = (b.T @ b).astype(np.float64)
            h[np.diag_indices_from(h)] += ridge
            try:
                factors[idx[j]] = ("cholesky", cho_factor(h, lower=False, overwrite_a=True))
            except np.linalg.LinAlgError:  # singular (an unpenalised intercept on a saturated probe): least squares
                factors[idx[j]] = ("lstsq", (A * S[:, j : j + 1]).T @ A + np.diag(ridge))
        kind, f = factors[idx[j]]
        out[:, j] = cho_solve(f, grad[:, j]) if kind == "cholesky" else np.linalg.lstsq(f, grad[:, j], rcond=None)[0]
    return out


def fit_logistic(X: np.ndarray, Y: np.ndarray, *, C: float = 1.0, max_iter: int = 100, tol: float = 1e-8) -> LinearFit:
    """L2-penalised binary logistic regressions of every 0/1 column of ``Y`` (n, k) on ``X`` (n, d).

    Minimises ``sum_i log(1 + exp(-s_i z_i)) + ||w||^2 / (2 C)`` per column (intercept unpenalised) by
    Newton's method with a per-probe step halving: up to :data:`EXACT_NEWTON_MAX_DIM` coefficients each probe's
    Hessian is factorised exactly (and kept for the next step while the gradient falls fast:
    :data:`HESSIAN_REUSE_RATE`), above it each step is solved by conjugate gradients on Hessian-vector products.
    Stops when every probe's largest gradient entry is below ``tol * n``.

    Above ``4 *`` :data:`WARM_START_ROWS` rows the iterations start from the optimum of the same problem on every
    ``(n // WARM_START_ROWS)``-th row (its penalty scaled by their share of the rows, solved to
    :data:`WARM_START_TOL`; a probe keeps the constant start where that has the lower loss on all rows): near the
    optimum Newton's steps converge fast, and the steps on all rows, each forming
    a Hessian of every row, are fewer (on the probes of the analysis benchmark's 2x128 run, 14935 rows: 145 -> 107
    steps for 11 probes, the fits in 0.64x the time). The optimum is the same: the steps on all rows stop at the
    same test.

    The decisions ``A @ W`` are kept from step to step: a step ``W - t p`` moves them by ``t (A @ p)``, one product
    per step for the line search and the next gradient together (recomputing ``A @ W`` for the gradient cost a
    second one: 15% of the fits on a 2x128 char LSTM's probes; the optimum is the same to 1e-14).
    """
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64).reshape(len(X), -1)
    n, d = X.shape
    k = Y.shape[1]
    A = np.hstack([X, np.ones((n, 1))])
    lam = 1.0 / C
    W = np.zeros((d + 1, k))
    # start from the best constant predictor (coefficients 0, the intercept at the log-odds of the classes): the
    # optimum is the same, and the first Newton step (from the intercept 0) is saved
    p = np.clip(Y.mean(axis=0), 1e-12, 1.0 - 1e-12) if n else np.full(k, 0.5)
    W[-1] = np.log(p) - np.log1p(-p)
    m = WARM_START_ROWS
    if m and n >= 4 * m:
        # the same problem on every (n // m)-th row, its penalty scaled by the share of rows: its optimum is near the
        # whole one, where Newton's steps converge fast; the whole problem's steps then start from it
        rows = slice(0, None, n // m)
        a, y = np.ascontiguousarray(A[rows]), np.ascontiguousarray(Y[rows])
        warm = _newton(a, y, W, lam * len(a) / n, WARM_START_TOL, max_iter)[0]
        # a probe whose rows there say little of the whole (a rare class absent from them) keeps the constant start
        better = _logistic_loss(_times(A, warm), Y, warm, lam) < _logistic_loss(_times(A, W), Y, W, lam)
        W = np.where(better, warm, W)
    W, n_iter, converged = _newton(A, Y, W, lam, tol, max_iter)
    return LinearFit(W[:-1].copy(), W[-1].copy(), n_iter, converged)


#: Rows of the warm start of :func:`fit_logistic` (0: none). 1024 and 4096 rows measured slower on the analysis
#: benchmark's probes (1.09x and 1.32x the fits' time at 2048).
WARM_START_ROWS = 2048
#: Its stopping tolerance (relative to its rows, as ``tol``): 1e-3 and 1e-6 measured the same as 1e-4.
WARM_START_TOL = 1e-4


def _newton(
    A: np.ndarray, Y: np.ndarray, W: np.ndarray, lam: float, tol: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`fit_logistic`'s Newton iterations on ``A = [X 1]`` from ``W``: ``(W, iterations, converged)``."""
    n, d1 = A.shape
    d = d1 - 1
    k = Y.shape[1]
    W = W.copy()
    reg = np.full((d + 1, 1), lam)
    reg[-1] = 0.0
    Z = _times(A, W)  # the decisions of every probe, kept up to date with W
    loss = _logistic_loss(Z, Y, W, lam)
    active = np.ones(k, bool)
    n_iter = np.zeros(k, np.int64)
    factors: list = [None] * k  # per probe, the Hessian factorisation of its last refresh (exact Newton steps)
    last_gmax = np.zeros(k)  # an active probe's gradient is above 0 * rate: its first step forms its Hessian
    exact = d + 1 <= EXACT_NEWTON_MAX_DIM
    A32 = A.astype(np.float32) if exact else None
    buf = np.empty_like(A32) if exact else None
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        P = expit(Z[:, idx])
        grad = _t_times(A, P - Y[:, idx]) + reg * W[:, idx]
        gmax = np.abs(grad).max(axis=0)
        done = gmax <= tol * n
        active[idx[done]] = False
        keep = ~done
        idx, grad, P, gmax = idx[keep], grad[:, keep], P[:, keep], gmax[keep]
        if idx.size == 0:
            break
        S = P * (1.0 - P)
        if exact:
            refresh = ~(gmax <= HESSIAN_REUSE_RATE * last_gmax[idx])  # (a NaN gradient refreshes too)
            step = _newton_steps(A, A32, S, reg, grad, factors, idx, refresh, buf)
            last_gmax[idx] = gmax
        else:
            step = _cg(
                lambda V, S=S: _t_times(A, S * _times(A, V)) + reg * V,
                grad,
                max_iter=d + 1,
                rtol=np.minimum(0.5, np.sqrt(gmax / n)) * 0.1,  # inexact early, exact near the optimum
            )
        moved = _times(A, step)  # how the decisions move along the step
        t = np.ones(idx.size)
        for _ in range(40):  # halve each probe's step until its loss does not rise
            trial = W[:, idx] - t * step
            z_trial = Z[:, idx] - t * moved
            new = _logistic_loss(z_trial, Y[:, idx], trial, lam)
            worse = new > loss[idx] + 1e-12 * np.abs(loss[idx])
            if not worse.any():
                break
            t[worse] *= 0.5
        W[:, idx] = trial
        Z[:, idx] = z_trial
        loss[idx] = new
        n_iter[idx] += 1
    return W, n_iter, ~active
