"""Effects of an intervention on a model's output, measured as the field reports them (NumPy only, no TensorFlow).

Every metric is computed per sequence and step from the model's original and intervened outputs
(:func:`gatelens.models.intervene.intervene` gives both), then averaged per sequence, and summarised over
sequences with a bootstrap confidence interval:

* ``output_change``: mean over the output's features of ``|intervened - original|`` (the default without
  targets; its "original" is 0);
* ``loss``: the cross-entropy ``-log p(target)`` in nats (classifiers, language models: integer targets, ``-1``
  where a step has none; ``"next_token"`` targets are built on the Keras side);
* ``prob``: the probability of ``class_id`` (default the target class);
* ``logit_diff``: ``log p(class) - log p(contrast)`` (default contrast: the most probable other class), which
  is the difference of the logits whatever the softmax's constant;
* ``accuracy``: 1 when the most probable class is the target;
* ``mse``: mean squared error against float targets (regressors; NaN where a step has none).

The ``effect`` is ``intervened - original`` of the metric (for ``output_change`` the change itself).
Outputs are probabilities when they lie in [0, 1] and sum to 1 over the last axis (a softmax; a single
column in [0, 1] is a sigmoid's p of class 1), otherwise logits (a log-softmax is applied).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from gatelens.errors import DataError, UsageError

METRICS = ("output_change", "loss", "prob", "logit_diff", "accuracy", "mse")
CLASS_METRICS = ("loss", "prob", "logit_diff", "accuracy")
#: Metrics where a larger value is worse (an increase is damage); for the others a drop is.
HIGHER_IS_WORSE = {
    "output_change": True,
    "loss": True,
    "mse": True,
    "prob": False,
    "logit_diff": False,
    "accuracy": False,
}


def as_steps(y: np.ndarray) -> np.ndarray:
    """Model outputs as (N, T, C): a per-sequence output (N, C) becomes (N, 1, C), (N,) becomes (N, 1, 1)."""
    y = np.asarray(y)
    if y.ndim == 1:
        return y[:, None, None]
    if y.ndim == 2:
        return y[:, None, :]
    if y.ndim == 3:
        return y
    raise DataError(f"model output has shape {y.shape}; expected (N,), (N, C) or (N, T, C)")


def is_classification(targets: np.ndarray | None) -> bool:
    """Integer targets are class ids; float targets are regression values."""
    return targets is not None and np.issubdtype(np.asarray(targets).dtype, np.integer)


def default_metrics(targets: np.ndarray | None) -> list[str]:
    """``output_change`` without targets; ``loss``, ``accuracy`` and ``prob`` for class targets; ``mse`` else."""
    if targets is None:
        return ["output_change"]
    return ["loss", "accuracy", "prob"] if is_classification(targets) else ["mse"]


def log_probs(y: np.ndarray) -> np.ndarray:
    """(N, T, C) log-probabilities from probabilities or logits (see the module docstring); float64."""
    y = np.asarray(y, np.float64)
    if y.shape[-1] == 1:
        if np.all((y >= 0) & (y <= 1)):
            p = np.clip(np.concatenate([1 - y, y], axis=-1), 1e-12, 1.0)
            return np.log(p)
        y = np.concatenate([np.zeros_like(y), y], axis=-1)  # a single logit of class 1
    elif np.all((y >= 0) & (y <= 1)) and np.allclose(y.sum(-1), 1.0, atol=1e-3):
        return np.log(np.clip(y, 1e-12, 1.0))
    y = y - y.max(-1, keepdims=True)
    return y - np.log(np.exp(y).sum(-1, keepdims=True))


def _targets_for(targets: np.ndarray, shape: tuple[int, int], what: str) -> np.ndarray:
    t = np.asarray(targets)
    n, steps = shape
    if t.ndim == 1 and steps == 1:
        t = t[:, None]
    if t.ndim == 1 or t.shape[:2] != (n, steps):
        raise DataError(f"targets have shape {t.shape}; the model's output needs {what} ({n}, {steps})")
    return t


def step_metric(
    y: np.ndarray,
    metric: str,
    targets: np.ndarray | None = None,
    *,
    class_id: int | None = None,
    contrast: int | None = None,
) -> np.ndarray:
    """The metric per sequence and step, (N, T) float64, NaN where undefined (no target).

    Examples
    --------
    >>> p = np.array([[[0.75, 0.25], [0.5, 0.5]]])            # 1 sequence, 2 steps, 2 classes
    >>> step_metric(p, "loss", np.array([[0, 1]])).round(4).tolist()
    [[0.2877, 0.6931]]
    >>> step_metric(p, "accuracy", np.array([[0, -1]])).tolist()
    [[1.0, nan]]
    """
    if metric not in METRICS or metric == "output_change":
        raise UsageError(f"metric {metric!r}: expected one of {', '.join(m for m in METRICS if m != 'output_change')}")
    y = as_steps(y)
    n, t, c = y.shape
    if metric == "mse":
        if targets is None:
            raise UsageError("metric 'mse' needs targets")
        tg = np.asarray(targets, np.float64)
        if tg.ndim == 1:
            tg = tg[:, None, None] if t == 1 else tg
        if tg.ndim == 2:
            tg = tg[:, :, None] if tg.shape == (n, t) else tg[:, None, :]
        if tg.shape != (n, t, c) and tg.shape != (n, t, 1):
            raise DataError(f"targets have shape {np.shape(targets)}; the model's output has shape {(n, t, c)}")
        return np.mean((y.astype(np.float64) - tg) ** 2, axis=-1)
    lp = log_probs(y)
    c = lp.shape[-1]
    tg = None
    if targets is not None:
        if not is_classification(targets):
            raise DataError(f"metric {metric!r} needs integer class targets, got {np.asarray(targets).dtype} values")
        tg = _targets_for(targets, (n, t), "one class id per sequence and step")
        bad = (tg >= c) | (tg < -1)
        if bad.any():
            i = np.argwhere(bad)[0]
            raise DataError(
                f"targets: class {tg[tuple(i)]} at sequence {i[0]}, step {i[1]} is outside 0..{c - 1} (-1: none)"
            )
    if metric in ("loss", "accuracy") and tg is None:
        raise UsageError(f"metric {metric!r} needs targets")
    if class_id is not None and not 0 <= class_id < c:
        raise UsageError(f"class {class_id}: outside the model's classes 0..{c - 1}")
    if contrast is not None and not 0 <= contrast < c:
        raise UsageError(f"contrast class {contrast}: outside the model's classes 0..{c - 1}")
    if class_id is None and tg is None:
        raise UsageError(f"metric {metric!r} needs targets or a class")
    cls = np.full((n, t), class_id) if class_id is not None else tg
    valid = cls >= 0
    safe = np.where(valid, cls, 0)
    picked = np.take_along_axis(lp, safe[..., None], axis=-1)[..., 0]
    if metric == "loss":
        out = -picked
    elif metric == "prob":
        out = np.exp(picked)
    elif metric == "accuracy":
        out = (lp.argmax(-1) == safe).astype(np.float64)
    else:
        if contrast is not None:
            other = lp[..., contrast]
        else:
            others = lp.copy()
            np.put_along_axis(others, safe[..., None], -np.inf, axis=-1)
            other = others.max(-1)
        out = picked - other
    return np.where(valid, out, np.nan)


def step_effects(
    original: np.ndarray,
    intervened: np.ndarray,
    metric: str = "output_change",
    targets: np.ndarray | None = None,
    *,
    class_id: int | None = None,
    contrast: int | None = None,
) -> dict[str, np.ndarray]:
    """``{"original", "intervened", "effect"}``, each (N, T) float64: the metric without and with the
    intervention and their difference (``output_change``: 0, the change, the change).

    Examples
    --------
    >>> e = step_effects(np.array([[1.0], [2.0]]), np.array([[1.5], [1.0]]))
    >>> e["effect"].tolist()
    [[0.5], [1.0]]
    """
    if metric == "output_change":
        a, b = as_steps(original).astype(np.float64), as_steps(intervened).astype(np.float64)
        if a.shape != b.shape:
            raise DataError(f"original and intervened outputs differ in shape: {a.shape} vs {b.shape}")
        change = np.abs(b - a).mean(-1)
        return {"original": np.zeros_like(change), "intervened": change, "effect": change}
    o = step_metric(original, metric, targets, class_id=class_id, contrast=contrast)
    i = step_metric(intervened, metric, targets, class_id=class_id, contrast=contrast)
    return {"original": o, "intervened": i, "effect": i - o}


def per_sequence(values: np.ndarray) -> np.ndarray:
    """The mean over each sequence's defined steps, (N,) (NaN for a sequence without any).

    Examples
    --------
    >>> per_sequence(np.array([[1.0, 3.0, np.nan], [np.nan, np.nan, np.nan]])).tolist()   # NaN steps left out
    [2.0, nan]
    """
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    cnt = ok.sum(1)
    tot = np.where(ok, v, 0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` (NaN ignored) and its percentile bootstrap interval over them.

    Resamples are drawn in blocks (at most ~4 M indices at a time), so memory stays bounded for many values.

    Examples
    --------
    >>> m, lo, hi = bootstrap_ci(np.arange(100.0))
    >>> m, bool(lo < m < hi), bool(hi - lo < 15)
    (49.5, True, True)
    """
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return (float("nan"),) * 3
    mean = _mean(v)
    if n == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    block = max(1, min(n_boot, 4_000_000 // n))
    means = np.empty(n_boot)
    for s in range(0, n_boot, block):
        k = min(block, n_boot - s)
        means[s : s + k] = v[rng.integers(0, n, (k, n))].mean(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return mean, float(lo), float(hi)


def _mean(v: np.ndarray) -> float:
    """The mean of ``v`` from its exactly rounded sum (``math.fsum``): the same for the same values in any order, so
    units with equal per-sequence effects get equal effects, and share a rank (:func:`rank_by_effect`)."""
    return math.fsum(np.asarray(v, np.float64).tolist()) / len(v)


def summary_row(
    seq_original: np.ndarray, seq_intervened: np.ndarray, seq_effect: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """``original``, ``intervened``, ``effect``, ``ci_low``, ``ci_high``, ``n_sequences`` from per-sequence values.

    Sequences whose effect is NaN are left out of every column.

    Examples
    --------
    >>> original, intervened = np.array([1.0, 2.0, 3.0, np.nan]), np.array([1.5, 2.5, 3.0, 1.0])
    >>> row = summary_row(original, intervened, intervened - original, n_boot=200)
    >>> {k: round(v, 3) for k, v in row.items()}
    {'original': 2.0, 'intervened': 2.333, 'effect': 0.333, 'ci_low': 0.0, 'ci_high': 0.5, 'n_sequences': 3}
    """
    effect, lo, hi = bootstrap_ci(seq_effect, n_boot=n_boot, seed=seed)
    ok = np.isfinite(seq_effect)
    return {
        "original": _mean(seq_original[ok]) if ok.any() else float("nan"),
        "intervened": _mean(seq_intervened[ok]) if ok.any() else float("nan"),
        "effect": effect,
        "ci_low": lo,
        "ci_high": hi,
        "n_sequences": int(ok.sum()),
    }


def rank_by_effect(df: pd.DataFrame, by: Sequence[str] = ("metric",)) -> pd.DataFrame:
    """Add ``rank`` within each group of ``by``: 1 = the largest ``|effect|`` (ties share the smaller rank).

    Examples
    --------
    >>> d = pd.DataFrame({"metric": ["mse"] * 3, "unit": [0, 1, 2], "effect": [0.1, -0.5, 0.3]})
    >>> rank_by_effect(d)["rank"].tolist()
    [3, 1, 2]
    """
    out = df.copy()
    out["rank"] = (
        out.groupby(list(by))["effect"].transform(lambda e: e.abs().rank(ascending=False, method="min")).astype(int)
    )
    return out
