"""Linear probes: which signal of which layer carries a feature, and through which units.

For every ``layer, signal, feature`` a :class:`SignalProbe` (standardise, then logistic
regression for a binary feature or ridge regression otherwise) is trained to predict the
feature at a step from the vector of all units' values of that signal at the same step.

Protocol (:func:`run_probes`)

* Rows are the layer's unmasked steps with a value for the feature. Above ``max_rows``
  steps a deterministic subsample (``random_state``) is used.
* **Held-out score, split by sequence**: a random ``test_size`` share of the sequences
  (at least one) is held out, so no step of a test sequence is seen in training (steps of
  one sequence are strongly dependent; a split by step would leak). With a single sequence
  the split is by time instead (the last ``test_size`` share of its steps), reported in the
  ``split`` column. The score is accuracy (classification) or R^2 (regression) on the test rows;
  ``baseline_score`` is the same metric for the majority class / the training mean.
* **Control task** (Hewitt & Liang 2019, "Designing and interpreting probes with control
  tasks"): every *type* of step gets a random but consistent label, drawn once per feature from
  the empirical distribution of the feature's real values in the training rows; a probe of the
  same kind is trained and tested on those labels with the same split. A step's type is its
  token id for text models, otherwise the combination of the decile bins of the model's
  numeric inputs at that step, otherwise (no inputs in the trace) the decile bin of the
  feature itself (``control_by``: ``"token"``, ``"binned input"``, ``"binned feature"``).
  ``selectivity = score - control_score``: a high score with a low selectivity means the probe
  could as well have memorised types, and says little about the representation.
* **Unit ranking** (as in NeuroX, Dalvi et al. 2019): the probe's coefficients on standardised
  inputs, ``|coef|`` per unit (the maximum over classes for a multi-class probe), rank 1 =
  largest. ``top_units`` in the report lists the ``top_k`` best units, comma-separated.

A feature with a single value (or a single class) in the training rows gets no probe: its
scores are empty and ``note`` says why.

Examples
--------
>>> import numpy as np
>>> from gatelens.analysis.probes import SignalProbe
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(200, 4))
>>> probe = SignalProbe().fit(X, X[:, 2] > 0)
>>> probe.task_, int(np.argmax(probe.unit_weights_)), probe.score(X, X[:, 2] > 0) > 0.95
('classification', 2, True)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from gatelens.analysis._reading import select_layers
from gatelens.analysis.correlate import _select_signals, layer_rows, subsample
from gatelens.analysis.features import as_feature_matrix, feature_kind
from gatelens.analysis.probe_fit import fit_logistic, fit_ridge, standardize
from gatelens.analysis.signals import not_pre
from gatelens.analysis.trace import Trace
from gatelens.errors import UsageError

if TYPE_CHECKING:
    from gatelens.analysis.probe_estimator import SignalProbe

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

REPORT_COLUMNS = [
    "layer", "signal", "feature", "task", "score", "control_score", "selectivity", "baseline_score",
    "n_train", "n_test", "split", "control_by", "top_units", "note",
]  # fmt: skip
RANKING_COLUMNS = ["layer", "signal", "feature", "unit", "weight", "rank"]
DEFAULT_MAX_ROWS = 20_000
#: Threads fitting the probes of different signals at once (each with one BLAS thread).
PROBE_THREADS = max(1, min(2, os.cpu_count() or 1))
N_BINS = 10


# ----------------------------------------------------------------------------------------------------------------
# the protocol


@dataclass
class ProbeResults:
    """What :func:`run_probes` returns: the report (one row per probe) and the unit ranking."""

    report: pd.DataFrame
    ranking: pd.DataFrame


def split_by_sequence(
    sequences: np.ndarray, steps: np.ndarray, *, test_size: float = 0.25, random_state: int | None = 0
) -> tuple[np.ndarray, str]:
    """Boolean test mask over rows: whole sequences held out, or (one sequence) the last steps.

    Returns
    -------
    (is_test, split) : (ndarray of bool, {"sequence", "time"})

    Examples
    --------
    >>> seq = np.repeat([0, 1, 2, 3], 3)
    >>> test, how = split_by_sequence(seq, np.tile([0, 1, 2], 4), test_size=0.25)
    >>> how, len(set(seq[test])), set(seq[test]) & set(seq[~test])
    ('sequence', 1, set())
    >>> split_by_sequence(np.zeros(4, int), np.arange(4), test_size=0.25)[0].tolist()
    [False, False, False, True]
    """
    if not 0.0 < test_size < 1.0:
        raise UsageError(f"test_size must be in (0, 1), got {test_size!r}")
    uniq = np.unique(sequences)
    if uniq.size >= 2:
        rng = np.random.default_rng([0 if random_state is None else random_state, 1])
        n_test = min(max(1, int(round(test_size * uniq.size))), uniq.size - 1)
        held = rng.permutation(uniq)[:n_test]
        return np.isin(sequences, held), "sequence"
    order = np.argsort(steps, kind="stable")
    n_test = max(1, int(round(test_size * len(steps)))) if len(steps) > 1 else 0
    is_test = np.zeros(len(steps), bool)
    if n_test:
        is_test[order[-n_test:]] = True
    return is_test, "time"


def control_labels(types: np.ndarray, y: np.ndarray, train: np.ndarray, *, random_state: int | None = 0) -> np.ndarray:
    """Hewitt & Liang control labels: one random label per type, drawn from the training rows' labels.

    Examples
    --------
    >>> types = np.array([5, 7, 5, 9, 7])
    >>> lab = control_labels(types, np.array([0, 1, 0, 1, 1]), np.ones(5, bool), random_state=0)
    >>> bool(lab[0] == lab[2] and lab[1] == lab[4])  # consistent per type
    True
    """
    uniq, inverse = np.unique(types, return_inverse=True)
    rng = np.random.default_rng([0 if random_state is None else random_state, 2])
    pool = y[train] if train.any() else y
    return pool[rng.integers(0, len(pool), size=uniq.size)][inverse.ravel()]


def _bin_ids(values: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """(rows, k) float -> (rows,) int64: the combination of per-column quantile bins."""
    values = np.atleast_2d(np.asarray(values, np.float64).T).T
    ids = np.zeros(values.shape[0], np.int64)
    for j in range(values.shape[1]):  # input columns, not units
        col = values[:, j]
        edges = np.unique(np.nanquantile(col, np.linspace(0, 1, n_bins + 1)[1:-1])) if np.isfinite(col).any() else []
        b = np.searchsorted(edges, col, side="right")
        b[np.isnan(col)] = n_bins
        ids = ids * (n_bins + 1) + b
    return ids


def run_probes(
    trace: Trace,
    features: pd.DataFrame,
    *,
    layers: Sequence[str] | None = None,
    signals: Sequence[str] | None = None,
    feature_columns: Sequence[str] | None = None,
    tasks: Mapping[str, str] | None = None,
    alpha: float = 1.0,
    C: float = 1.0,
    max_iter: int = 1000,
    test_size: float = 0.25,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    top_k: int = 5,
    random_state: int | None = 0,
    chunk_sequences: int = 256,
    progress: Progress | None = None,
) -> ProbeResults:
    """Train and test one probe per (layer, signal, feature), with control tasks and unit rankings.

    Parameters
    ----------
    trace : Trace
        In memory or from a run store (read in chunks of ``chunk_sequences`` sequences).
    features : pandas.DataFrame
        From :func:`gatelens.analysis.features.build_features`.
    layers : sequence of str, optional
        Default every layer.
    signals : sequence of str, optional
        Default every signal except pre-activations (the gates, the candidate and the states).
    feature_columns : sequence of str, optional
        Default every feature column (``step`` included).
    tasks : dict of str to str, optional
        Per feature, ``"classification"`` or ``"regression"``; default from
        :func:`gatelens.analysis.features.feature_kind` (binary -> classification, else regression).
    alpha, C, max_iter : float, float, int
        Passed to :class:`SignalProbe`.
    test_size : float
        Share of sequences held out.
    max_rows : int or None
        Most steps used per layer (deterministic subsample above it).
    top_k : int
        Units listed in ``top_units``.
    random_state : int or None
        Seeds the subsample, the split and the control labels.
    chunk_sequences : int
    progress : callable(done, total), optional
        Called after each (layer, signal).

    Returns
    -------
    ProbeResults
        ``report``: :data:`REPORT_COLUMNS`; ``ranking``: :data:`RANKING_COLUMNS`.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_states
    >>> h = np.random.default_rng(0).normal(size=(8, 20, 3)).astype(np.float32)
    >>> lt = example_states(h)
    >>> seq, step = np.divmod(np.arange(160), 20)
    >>> feats = pd.DataFrame({"sequence": seq, "step": step, "up": h[seq, step, 1] > 0})
    >>> res = run_probes(Trace({"rnn": lt}), feats, feature_columns=["up"])
    >>> r = res.report.iloc[0]
    >>> r.task, bool(r.score > 0.9), r.top_units.split(",")[0], int(r.n_train + r.n_test)
    ('classification', True, '1', 160)
    """
    names = select_layers(trace, layers)
    if signals is None:
        per_layer = {name: not_pre(trace[name].info.signals) for name in names}
    else:
        per_layer = _select_signals(trace, names, signals)
    fmat, fnames = as_feature_matrix(features, feature_columns)
    tasks = dict(tasks or {})
    bad = {k: v for k, v in tasks.items() if v not in ("classification", "regression")}
    if bad:
        raise UsageError(f"tasks must map features to 'classification' or 'regression', got {bad}")
    kinds = {
        f: tasks.get(f) or ("classification" if feature_kind(fmat[:, j]) == "binary" else "regression")
        for j, f in enumerate(fnames)
    }
    params = {"alpha": alpha, "C": C, "max_iter": max_iter}
    reports, rankings = [], []
    total = sum(len(v) for v in per_layer.values())
    done = 0
    # One BLAS thread: the fits are many small solves (<= max_rows x units) where a second OpenBLAS thread
    # buys little on an idle machine and costs 5-17x on a busy one (threads spin-waiting for a core). The signals'
    # fits run instead on PROBE_THREADS threads (NumPy and BLAS release the GIL; each fit is independent, so the
    # numbers are those of one thread), while this thread reads the next signal.
    pool = ThreadPoolExecutor(max_workers=PROBE_THREADS, thread_name_prefix="gatelens-probes")
    with threadpool_limits(limits=1, user_api="blas"), pool:
        for layer in names:
            rows = layer_rows(trace, layer, features, chunk_sequences=chunk_sequences)
            take = subsample(rows.total, max_rows, random_state)
            frow = np.concatenate([fr for _, _, fr in rows.chunks]) if rows.chunks else np.empty(0, np.int64)
            if take is not None:
                frow = frow[take]
            seqs = features["sequence"].to_numpy(np.int64)[frow]
            steps = features["step"].to_numpy(np.int64)[frow]
            is_test, split = split_by_sequence(seqs, steps, test_size=test_size, random_state=random_state)
            types, control_by = _types(trace, rows, take, fmat, frow)
            F = fmat[frow]
            plan = _plan(F, is_test, fnames, kinds, types, control_by, random_state)
            fits = [
                (
                    signal,
                    pool.submit(
                        _probe_signal,
                        _gather(trace[layer][signal], rows, take),
                        F, is_test, plan, params, types, control_by, random_state, top_k,
                    ),
                )
                for signal in per_layer[layer]
            ]  # fmt: skip
            for signal, fit in fits:
                for feat, (rep, rank) in zip(fnames, fit.result()):
                    reports.append({"layer": layer, "signal": signal, "feature": feat, "split": split, **rep})
                    if rank is not None:
                        rankings.append(((layer, signal, feat), rank))
                done += 1
                if progress is not None:
                    progress(done, total)
    report = pd.DataFrame(reports, columns=REPORT_COLUMNS)
    return ProbeResults(report, _ranking_frame(rankings))


def _ranking_frame(rankings: list) -> pd.DataFrame:
    """One frame from ``[((layer, signal, feature), {"unit", "weight", "rank"}), ...]``, built column-wise."""
    if not rankings:
        return pd.DataFrame({c: [] for c in RANKING_COLUMNS})
    sizes = [len(r["unit"]) for _, r in rankings]
    keys = {
        name: np.repeat([k[i] for k, _ in rankings], sizes) for i, name in enumerate(("layer", "signal", "feature"))
    }
    cols = {name: np.concatenate([r[name] for _, r in rankings]) for name in ("unit", "weight", "rank")}
    return pd.DataFrame({**keys, **cols}, columns=RANKING_COLUMNS)


def _gather(arr, rows, take) -> np.ndarray:
    units = int(arr.shape[2])
    parts = []
    offset = 0
    for sl, local, _ in rows.chunks:
        if local.size == 0:
            continue
        picked = local
        if take is not None:  # the subsample's rows picked first, converted after (not every row of the chunk)
            lo, hi = np.searchsorted(take, [offset, offset + local.size])
            picked = local[take[lo:hi] - offset]
        parts.append(np.asarray(arr[sl]).reshape(-1, units)[picked].astype(np.float32))
        offset += local.size
    return np.concatenate(parts) if parts else np.empty((0, units), np.float32)


def _types(trace: Trace, rows, take, fmat, frow) -> tuple[np.ndarray | None, str]:
    """Per selected row, the step's type for the control task, and how it was defined."""
    if trace.tokens is not None:
        tok = trace.tokens
        ids = _gather_2d(tok, rows, take, trace.n_steps)
        return ids.astype(np.int64), "token"
    if trace.x is not None:
        xs = _gather(trace.x, rows, take)
        return _bin_ids(xs), "binned input"
    return None, "binned feature"


def _gather_2d(arr, rows, take, t) -> np.ndarray:
    parts = []
    offset = 0
    for sl, local, _ in rows.chunks:
        if local.size == 0:
            continue
        v = np.asarray(arr[sl]).reshape(-1)[local]
        if take is not None:
            lo, hi = np.searchsorted(take, [offset, offset + local.size])
            v = v[take[lo:hi] - offset]
        parts.append(v)
        offset += local.size
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def _empty_report(task: str, control_by: str, n_train: int, n_test: int) -> dict:
    return {
        "task": task, "score": np.nan, "control_score": np.nan, "selectivity": np.nan, "baseline_score": np.nan,
        "n_train": n_train, "n_test": n_test, "control_by": control_by, "top_units": "", "note": "",
    }  # fmt: skip


def _ranked(w: np.ndarray, top_k: int) -> tuple[str, dict]:
    order = np.argsort(-w, kind="stable")
    rank = np.empty(w.size, np.int64)
    rank[order] = np.arange(1, w.size + 1)
    return ",".join(str(int(u)) for u in order[:top_k]), {"unit": np.arange(w.size), "weight": w, "rank": rank}


@dataclass
class _Plan:
    """What the probes of one layer share across its signals: per feature, its rows, task and control labels."""

    fixed: dict  # feature index -> (report, None): no probe (and why)
    multiclass: list  # feature indices fitted one by one (SignalProbe)
    batches: list  # (task, ok rows, feature indices, Y = targets then control labels)


def _plan(F, is_test, fnames, kinds, types, control_by, random_state) -> _Plan:
    """Group the features of one layer into batches (same rows, same task); done once, used by every signal.

    Features whose rows (non-NaN values) and task agree form one batch (:mod:`gatelens.analysis.probe_fit`):
    the probes and their controls are the columns of one ridge solve or one vectorised logistic fit.
    Binary classification and regression take this path; a multi-class classification falls back to one
    :class:`SignalProbe` per feature (:func:`_probe_one`).
    """
    plan = _Plan({}, [], [])
    groups: dict[bytes, dict[str, list[int]]] = {}  # rows -> task -> features
    for j, feat in enumerate(fnames):
        y = F[:, j]
        ok = ~np.isnan(y)
        test = is_test[ok]
        n_train, n_test = int((~test).sum()), int(test.sum())
        task = kinds[feat]
        if n_train == 0 or n_test == 0:
            rep = _empty_report(task, control_by, n_train, n_test)
            rep["note"] = "no training rows" if n_train == 0 else "no test rows"
            plan.fixed[j] = (rep, None)
            continue
        yv = y[ok]
        if np.unique(yv[~test]).size < 2:
            rep = _empty_report(task, control_by, n_train, n_test)
            rep["note"] = "constant feature in the training rows"
            plan.fixed[j] = (rep, None)
            continue
        if task == "classification" and np.unique(yv).size != 2:
            plan.multiclass.append(j)
            continue
        groups.setdefault(ok.tobytes(), {}).setdefault(task, []).append(j)
    # the batches of the same rows adjacent: _probe_signal standardises once for them
    for task, cols in (tc for by_task in groups.values() for tc in by_task.items()):
        ok = ~np.isnan(F[:, cols[0]])
        train = ~is_test[ok]
        t = types[ok] if types is not None else None
        targets, controls = [], []
        for j in cols:
            y = F[ok, j]
            seed = None if random_state is None else random_state * 1_000_003 + j
            targets.append(y)
            controls.append(control_labels(t if t is not None else _bin_ids(y), y, train, random_state=seed))
        plan.batches.append((task, ok, cols, np.stack(targets + controls, axis=1)))
    return plan


def _probe_signal(x, F, is_test, plan: _Plan, params, types, control_by, random_state, top_k):
    """Every feature's probe and control probe on one signal's unit values ``x``, batch by batch."""
    results: dict = dict(plan.fixed)
    for j in plan.multiclass:
        results[j] = _probe_one(
            x, F[:, j], is_test, "classification", params, types, control_by, j, random_state, top_k
        )
    scaled_for, scaled = None, None  # the batches of one row set are adjacent (see _plan): scaled once for them
    for task, ok, cols, Y in plan.batches:
        test = is_test[ok]
        train = ~test
        if scaled_for is None or not np.array_equal(scaled_for, ok):
            xo = x if ok.all() else x[ok]
            scaled_for, scaled = ok, standardize(xo[train], xo[test])
        xs_train, xs_test = scaled
        scores, baselines = _fit_and_score(task, xs_train, Y[train], xs_test, Y[test], params)
        fit_w = scores.pop("weights")
        k = len(cols)
        for c, j in enumerate(cols):
            rep = _empty_report(task, control_by, int(train.sum()), int(test.sum()))
            top, rank = _ranked(fit_w[:, c], top_k)
            s, cs = scores["score"][c], scores["score"][k + c]
            rep.update(score=s, control_score=cs, selectivity=s - cs, baseline_score=baselines[c], top_units=top)
            results[j] = (rep, rank)
    return [results[j] for j in range(F.shape[1])]


def _fit_and_score(task, Xtr, Ytr, Xte, Yte, params):
    """Fit every column of ``Ytr`` on ``Xtr`` and score on the test rows, as :func:`~gatelens.analysis.probe_estimator.fit_score` does one probe.

    A column with a single class (value) in training is a constant predictor: its score is its baseline.
    Returns ``({"score": (k,), "weights": (d, k) |coef|}, baseline (k,))``.
    """
    k = Ytr.shape[1]
    weights = np.zeros((Xtr.shape[1], k))
    score = np.full(k, np.nan)
    if task == "classification":
        classes = [np.unique(Ytr[:, c]) for c in range(k)]
        # DummyClassifier(most_frequent): the most frequent training class, the smallest on ties
        majority = np.array([np.unique(Ytr[:, c], return_counts=True) for c in range(k)], dtype=object)
        base_cls = np.array([u[np.argmax(n)] for u, n in majority])
        baseline = (Yte == base_cls).mean(axis=0) if len(Yte) else np.full(k, np.nan)
        fit_cols = [c for c in range(k) if classes[c].size == 2]
        if fit_cols:
            hi = np.array([classes[c][1] for c in fit_cols])
            lo = np.array([classes[c][0] for c in fit_cols])
            fit = fit_logistic(Xtr, (Ytr[:, fit_cols] == hi).astype(np.float64), C=params["C"])
            pred = np.where(fit.decision(Xte) > 0, hi, lo)
            score[fit_cols] = (pred == Yte[:, fit_cols]).mean(axis=0) if len(Yte) >= 1 else np.nan
            weights[:, fit_cols] = np.abs(fit.coef)
        const = [c for c in range(k) if classes[c].size < 2]
        score[const] = baseline[const]
        return {"score": score, "weights": weights}, baseline
    mean = Ytr.mean(axis=0)
    ss_tot = ((Yte - Yte.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        baseline = 1.0 - ((Yte - mean) ** 2).sum(axis=0) / ss_tot if len(Yte) >= 2 else np.full(k, np.nan)
        fit = fit_ridge(Xtr, Ytr, alpha=params["alpha"])
        score = 1.0 - ((Yte - fit.decision(Xte)) ** 2).sum(axis=0) / ss_tot if len(Yte) >= 2 else np.full(k, np.nan)
    # r2_score's conventions for a constant test target: 1.0 when predicted exactly, else 0.0
    flat = ss_tot == 0
    if len(Yte) >= 2 and flat.any():
        exact = np.isclose(((Yte - fit.decision(Xte)) ** 2).sum(axis=0), 0.0)
        score[flat] = np.where(exact[flat], 1.0, 0.0)
        base_exact = np.isclose(((Yte - mean) ** 2).sum(axis=0), 0.0)
        baseline[flat] = np.where(base_exact[flat], 1.0, 0.0)
    const = np.array([np.unique(Ytr[:, c]).size < 2 for c in range(k)])
    score[const] = baseline[const]
    weights[:, ~const] = np.abs(fit.coef[:, ~const])
    return {"score": score, "weights": weights}, baseline


def _probe_one(x, y, is_test, task, params, types, control_by, j, random_state, top_k):
    ok = ~np.isnan(y)
    x, y, test = x[ok], y[ok], is_test[ok]
    train = ~test
    rep = {
        "task": task, "score": np.nan, "control_score": np.nan, "selectivity": np.nan, "baseline_score": np.nan,
        "n_train": int(train.sum()), "n_test": int(test.sum()), "control_by": control_by, "top_units": "", "note": "",
    }  # fmt: skip
    if train.sum() == 0 or test.sum() == 0:
        rep["note"] = "no training rows" if train.sum() == 0 else "no test rows"
        return rep, None
    if task == "classification":
        y = y.astype(np.int64) if np.all(y == np.round(y)) else y
    if np.unique(y[train]).size < 2:
        rep["note"] = "constant feature in the training rows"
        return rep, None
    from gatelens.analysis.probe_estimator import fit_score

    score, baseline, probe = fit_score(task, x[train], y[train], x[test], y[test], params)
    t = types[ok] if types is not None else _bin_ids(y)
    seed = None if random_state is None else random_state * 1_000_003 + j
    ctrl = control_labels(t, y, train, random_state=seed)
    cscore, _, _ = fit_score(task, x[train], ctrl[train], x[test], ctrl[test], params)
    w = probe.unit_weights_
    order = np.argsort(-w, kind="stable")
    rank = np.empty(w.size, np.int64)
    rank[order] = np.arange(1, w.size + 1)
    rep.update(
        score=score,
        control_score=cscore,
        selectivity=score - cscore,
        baseline_score=baseline,
        top_units=",".join(str(int(u)) for u in order[:top_k]),
    )
    return rep, {"unit": np.arange(w.size), "weight": w, "rank": rank}


def probe_report(trace: Trace, features: pd.DataFrame, **kwargs) -> pd.DataFrame:
    """One row per (layer, signal, feature) probe: the ``report`` of :func:`run_probes` (same keyword arguments).

    Columns: ``layer, signal, feature, task, score, control_score, selectivity, baseline_score,
    n_train, n_test, split, control_by, top_units, note``.

    Examples
    --------
    >>> from gatelens._examples import example_hidden
    >>> trace, h, seq, step = example_hidden(seed=1, units=2)
    >>> f = pd.DataFrame({"sequence": seq, "step": step, "v": 2 * h[seq, step, 0]})
    >>> probe_report(trace, f, feature_columns=["v"])[["task", "top_units", "n_test"]]
             task top_units  n_test
    0  regression       0,1      20
    """
    return run_probes(trace, features, **kwargs).report


def probe_unit_ranking(trace: Trace, features: pd.DataFrame, **kwargs) -> pd.DataFrame:
    """Units ranked by |standardised probe coefficient|: the ``ranking`` of :func:`run_probes`.

    Columns: ``layer, signal, feature, unit, weight, rank`` (rank 1 = largest weight).

    Examples
    --------
    >>> from gatelens._examples import example_hidden
    >>> trace, h, seq, step = example_hidden(seed=2, units=3)
    >>> f = pd.DataFrame({"sequence": seq, "step": step, "v": h[seq, step, 2] - 0.1 * h[seq, step, 0]})
    >>> probe_unit_ranking(trace, f, feature_columns=["v"]).sort_values("rank")["unit"].tolist()
    [2, 0, 1]
    """
    return run_probes(trace, features, **kwargs).ranking


def __getattr__(name: str):
    # SignalProbe (a scikit-learn estimator) lives in probe_estimator, imported on first use: scikit-learn takes ~1 s
    # to import, and the batched probes of run_probes do not use it (a worker process analysing a run is spared it)
    if name in ("SignalProbe", "TASKS"):
        from gatelens.analysis import probe_estimator

        return getattr(probe_estimator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RANKING_COLUMNS",
    "REPORT_COLUMNS",
    "ProbeResults",
    "SignalProbe",
    "control_labels",
    "probe_report",
    "probe_unit_ranking",
    "run_probes",
    "split_by_sequence",
]
