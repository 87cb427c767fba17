"""The scikit-learn estimator of one probe, :class:`SignalProbe`, and the one-probe fit of the protocol.

:func:`gatelens.analysis.probes.run_probes` fits its probes batched (:mod:`gatelens.analysis.probe_fit`) and uses
these only for a multi-class feature; they are importable from :mod:`gatelens.analysis.probes` as before, but live
here so that importing that module does not import scikit-learn (about a second).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, r2_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import ClassifierTags, RegressorTags
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from gatelens.errors import UsageError

TASKS = ("auto", "classification", "regression")


class SignalProbe(BaseEstimator):
    """A linear probe: standardise the units, then logistic (classification) or ridge (regression).

    Parameters
    ----------
    task : {"auto", "classification", "regression"}
        ``"auto"`` picks classification when the target is not numeric, is bool, or has exactly
        two distinct values (sklearn's ``type_of_target == "binary"``), and regression otherwise.
    alpha : float
        Ridge penalty (regression).
    C : float
        Inverse L2 penalty of the logistic regression (classification).
    max_iter : int
        Iterations of the logistic regression's solver.

    Attributes
    ----------
    task_ : str
        The task actually fitted.
    pipeline_ : sklearn.pipeline.Pipeline
        ``StandardScaler`` then ``LogisticRegression`` or ``Ridge``.
    classes_ : ndarray
        Class labels (classification only).
    coef_ : ndarray (n_outputs, n_features_in_)
        Coefficients on standardised inputs (one row for binary classification and regression).
    unit_weights_ : ndarray (n_features_in_,)
        ``|coef_|``, the maximum over rows: the importance of each input (unit).
    n_iter_ : int
        Solver iterations of the logistic regression (1 for the closed-form ridge).
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> X = np.arange(20.0).reshape(10, 2)
    >>> SignalProbe(task="regression").fit(X, X[:, 0] * 3).predict(X[:2]).round(2).tolist()
    [1.29, 7.0]
    """

    def __init__(self, task: str = "auto", alpha: float = 1.0, C: float = 1.0, max_iter: int = 1000) -> None:
        self.task = task
        self.alpha = alpha
        self.C = C
        self.max_iter = max_iter

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        if self.task == "classification":
            tags.estimator_type = "classifier"
            tags.classifier_tags = ClassifierTags()
            tags.target_tags.required = True
        elif self.task == "regression":
            tags.estimator_type = "regressor"
            tags.regressor_tags = RegressorTags()
            tags.target_tags.required = True
        else:
            tags.target_tags.required = True
        return tags

    def _resolve_task(self, y: np.ndarray) -> str:
        if self.task not in TASKS:
            raise UsageError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task != "auto":
            return self.task
        if y.dtype.kind in "OUSb" or type_of_target(y) == "binary":
            return "classification"
        return "regression"

    def fit(self, X, y) -> SignalProbe:
        """Fit the probe on ``X`` (n_steps, n_units) and the feature ``y`` (n_steps,)."""
        X, y = validate_data(self, X, y, y_numeric=False, dtype=np.float64)
        self.task_ = self._resolve_task(np.asarray(y))
        if self.task_ == "classification":
            check_classification_targets(y)
            self.classes_ = np.unique(y)
            model = LogisticRegression(C=self.C, max_iter=self.max_iter)
        else:
            y = np.asarray(y, dtype=np.float64)
            model = Ridge(alpha=self.alpha)
        self.pipeline_ = Pipeline([("scale", StandardScaler()), ("model", model)]).fit(X, y)
        coef = np.asarray(self.pipeline_[-1].coef_, np.float64)
        self.coef_ = coef.reshape(1, -1) if coef.ndim == 1 else coef
        self.unit_weights_ = np.abs(self.coef_).max(axis=0)
        n_iter = getattr(self.pipeline_[-1], "n_iter_", None)
        self.n_iter_ = 1 if n_iter is None else int(np.max(n_iter))
        return self

    def predict(self, X) -> np.ndarray:
        """Predicted feature values (class labels for classification)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.pipeline_.predict(X)

    def _is_classifier(self) -> bool:
        check_is_fitted(self)
        return self.task_ == "classification"

    @available_if(_is_classifier)
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (classification only)."""
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.pipeline_.predict_proba(X)

    @available_if(_is_classifier)
    def decision_function(self, X) -> np.ndarray:
        """Logits (classification only)."""
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.pipeline_.decision_function(X)

    def score(self, X, y, sample_weight=None) -> float:
        """Accuracy (classification) or R^2 (regression) on ``X``, ``y``."""
        pred = self.predict(X)
        if self.task_ == "classification":
            return float(accuracy_score(y, pred, sample_weight=sample_weight))
        return float(r2_score(np.asarray(y, np.float64), pred, sample_weight=sample_weight))


def fit_score(task, Xtr, ytr, Xte, yte, params) -> tuple[float, float, SignalProbe | None]:
    """(score, baseline, probe); a single class/value in training gives a constant predictor.

    ``score`` is the held-out accuracy (classification) or R^2 (regression) of a :class:`SignalProbe` fitted
    with ``params``; ``baseline`` that of predicting the most frequent class (the mean).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 3))                                  # 60 steps of 3 units
    >>> y = (X[:, 0] > 0).astype(int)                                 # unit 0's sign
    >>> score, baseline, probe = fit_score("classification", X[:40], y[:40], X[40:], y[40:], {})
    >>> round(score, 2), round(baseline, 2), type(probe).__name__
    (0.95, 0.5, 'SignalProbe')
    >>> fit_score("classification", X[:40], np.zeros(40), X[40:], y[40:], {})   # one class in training
    (0.5, 0.5, None)
    """
    if task == "classification":
        baseline = float(accuracy_score(yte, DummyClassifier(strategy="most_frequent").fit(Xtr, ytr).predict(Xte)))
    else:
        baseline = float(r2_score(yte, DummyRegressor().fit(Xtr, ytr).predict(Xte))) if len(yte) >= 2 else np.nan
    if np.unique(ytr).size < 2:
        return baseline, baseline, None
    probe = SignalProbe(task=task, **params).fit(Xtr, ytr)
    score = probe.score(Xte, yte) if len(yte) >= (1 if task == "classification" else 2) else np.nan
    return score, baseline, probe


__all__ = ["TASKS", "SignalProbe", "fit_score"]
