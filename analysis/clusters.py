"""Clusters of units with similar behaviour, plain-language archetypes, and unit x token co-clusters.

Behaviour profile of a unit (one row per ``layer, unit``), built by :func:`unit_profiles` from
:func:`gatelens.analysis.stats.unit_stats`, :func:`gatelens.analysis.memory.half_lives` and, optionally,
:func:`gatelens.analysis.correlate.correlations`:

* for every signal in the stats table (the gates and the candidate): ``<signal>:mean``,
  ``<signal>:std``, ``<signal>:frac_below_0.1``, ``<signal>:frac_above_0.9``;
* ``log_half_life``: ``log1p`` of the memory half-life in steps, capped at :data:`HALF_LIFE_CAP`
  (an infinite half-life -- a gate stuck at 1 -- counts as the cap);
* with correlations, ``corr:<feature>``: the largest ``|pearson_r|`` of the unit over its signals
  (an empty correlation counts as 0).

:class:`UnitClusterer` standardises the profile columns and runs k-means for every ``k`` from
``k_min`` to ``k_max`` (at most the number of distinct profiles, and fewer than the number of
units), keeping the ``k`` with the best mean silhouette (ties: the smaller ``k``). Units of
layers with different cell types have different profile columns, so :func:`cluster_units`
clusters each group of layers that share their signals separately; cluster numbers are unique
across groups.

Archetypes (:func:`archetypes`) are rules on the raw statistics, checked in this order; the
first that holds names the unit. ``open`` is ``frac_above_0.9``, ``closed`` is ``frac_below_0.1``
of the gate; the *keep* gate is the LSTM forget gate or the GRU update gate (Keras GRU:
``h = z h_prev + (1 - z) candidate``, so a high ``z`` keeps).

1. ``"always-on"`` (LSTM): input, forget and output gates each open on >= 90 % of steps.
2. ``"long-memory integrator"``: half-life >= 20 steps and keep gate open on >= 80 % of steps.
3. ``"resetter"``: keep gate closed on >= 5 % of steps yet open on >= 30 %: it holds a memory,
   then wipes it at specific moments.
4. ``"gated reader"`` (LSTM): output gate closed on >= 50 % of steps and open on < 20 %:
   the memory is exposed only rarely.
5. ``"input-driven"``: half-life < 2 steps: the state is mostly the current input's.
6. ``"mixed"``: none of the above.

``cluster_units`` gives each unit its own archetype (``unit_archetype``) and each cluster the
archetype of its members' median statistics (``archetype``). Thresholds are the module
constants :data:`ARCHETYPE_THRESHOLDS`.

Examples
--------
>>> import numpy as np
>>> X = np.r_[np.zeros((5, 2)), np.ones((5, 2)) * 10] + np.random.default_rng(0).normal(0, 0.1, (10, 2))
>>> est = UnitClusterer(k_max=4).fit(X)
>>> est.n_clusters_, len(set(est.labels_[:5])), round(est.silhouette_, 2)
(2, 1, 0.99)
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans, SpectralCoclustering
from sklearn.metrics import silhouette_samples, silhouette_score
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from gatelens.analysis.signals import kind_of, label, memory_state, records
from gatelens.analysis.trace import Trace, iter_chunks
from gatelens.errors import DataError, UsageError

log = logging.getLogger(__name__)

HALF_LIFE_CAP = 1000.0
STATS = ("mean", "std", "frac_below_0.1", "frac_above_0.9")
CLUSTER_COLUMNS = [
    "layer", "unit", "cluster", "archetype", "silhouette", "unit_archetype", "half_life_steps", "top_feature", "top_abs_r",
    "traits",
]  # fmt: skip
#: How many traits :func:`cluster_traits` names per cluster.
N_TRAITS = 2
#: A trait needs the cluster's median at least this many standard deviations (over all units of the group)
#: from the group's median.
TRAIT_MIN_Z = 0.5
COCLUSTER_COLUMNS = ["layer", "signal", "kind", "id", "name", "cluster", "count"]

#: Thresholds of the archetype rules (fractions of unmasked steps; half-lives in steps).
ARCHETYPE_THRESHOLDS = {
    "always_on_open": 0.9,
    "integrator_half_life": 20.0,
    "integrator_keep_open": 0.8,
    "resetter_keep_closed": 0.05,
    "resetter_keep_open": 0.3,
    "reader_closed": 0.5,
    "reader_open": 0.2,
    "input_driven_half_life": 2.0,
}
ARCHETYPES = ("always-on", "long-memory integrator", "resetter", "gated reader", "input-driven", "mixed")


# ----------------------------------------------------------------------------------------------------------------
# the estimator


class UnitClusterer(ClusterMixin, BaseEstimator):
    """K-means over standardised behaviour profiles, ``k`` chosen by the silhouette.

    Parameters
    ----------
    k_min, k_max : int
        Range of cluster counts tried (clipped to the data: ``k <= distinct rows`` and ``k < n_samples``).
    n_init : int
        K-means restarts per ``k``.
    random_state : int or None

    Attributes
    ----------
    scaler_ : StandardScaler
    kmeans_ : KMeans or None
        None when fewer than 3 samples or fewer than 2 distinct profiles left no ``k`` to try
        (then every sample is cluster 0 and the silhouette is NaN).
    n_clusters_ : int
    labels_ : ndarray (n_samples,)
        Clusters numbered in order of first appearance in ``X``.
    label_map_ : ndarray (n_clusters_,)
        K-means label -> cluster number.
    cluster_centers_ : ndarray (n_clusters_, n_features_in_)
        In the original (unstandardised) units.
    silhouette_ : float
        Mean silhouette of the chosen clustering.
    silhouette_samples_ : ndarray (n_samples,)
    silhouette_by_k_ : dict of int to float
    n_features_in_ : int

    Examples
    --------
    >>> X = np.array([[0.0, 0], [0, 1], [9, 9], [9, 10], [20, 0], [20, 1]])
    >>> UnitClusterer(random_state=0).fit(X).labels_.tolist()
    [0, 0, 1, 1, 2, 2]
    """

    def __init__(self, k_min: int = 2, k_max: int = 8, n_init: int = 10, random_state: int | None = 0) -> None:
        self.k_min = k_min
        self.k_max = k_max
        self.n_init = n_init
        self.random_state = random_state

    def fit(self, X, y=None) -> UnitClusterer:
        """Cluster the rows of ``X`` (n_units, n_profile_columns)."""
        X = validate_data(self, X, dtype=np.float64)
        if not (isinstance(self.k_min, int | np.integer) and isinstance(self.k_max, int | np.integer)):
            raise UsageError(f"k_min and k_max must be integers, got {self.k_min!r} and {self.k_max!r}")
        if not 2 <= self.k_min <= self.k_max:
            raise UsageError(f"need 2 <= k_min <= k_max, got k_min={self.k_min!r}, k_max={self.k_max!r}")
        n = X.shape[0]
        self.scaler_ = StandardScaler().fit(X)
        Z = self.scaler_.transform(X)
        distinct = np.unique(Z, axis=0).shape[0]
        ks = range(self.k_min, min(self.k_max, distinct, n - 1) + 1)
        self.silhouette_by_k_: dict[int, float] = {}
        best = None
        for k in ks:  # a handful of cluster counts
            km = KMeans(n_clusters=k, n_init=self.n_init, random_state=self.random_state).fit(Z)
            if np.unique(km.labels_).size < 2:
                continue
            s = float(silhouette_score(Z, km.labels_))
            self.silhouette_by_k_[k] = s
            if best is None or s > best[0] + 1e-12:
                best = (s, km)
        if best is None:
            self.kmeans_ = None
            self.label_map_ = np.zeros(1, np.int64)
            self.n_clusters_ = 1
            self.labels_ = np.zeros(n, np.int64)
            self.cluster_centers_ = X.mean(axis=0, keepdims=True)
            self.silhouette_ = float("nan")
            self.silhouette_samples_ = np.full(n, np.nan)
            return self
        self.silhouette_, self.kmeans_ = best
        self.n_clusters_ = int(self.kmeans_.n_clusters)
        # number clusters by first appearance, so that the numbering does not depend on k-means' internals
        raw = self.kmeans_.labels_
        first = np.unique(raw, return_index=True)[1]
        self.label_map_ = np.empty(self.n_clusters_, np.int64)
        self.label_map_[raw[np.sort(first)]] = np.arange(self.n_clusters_)
        self.labels_ = self.label_map_[raw]
        centers = np.empty_like(self.kmeans_.cluster_centers_)
        centers[self.label_map_] = self.kmeans_.cluster_centers_
        self.cluster_centers_ = self.scaler_.inverse_transform(centers)
        self.silhouette_samples_ = silhouette_samples(Z, self.labels_)
        return self

    def predict(self, X) -> np.ndarray:
        """Nearest cluster of each row of ``X``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        if self.kmeans_ is None:
            return np.zeros(X.shape[0], np.int64)
        return self.label_map_[self.kmeans_.predict(self.scaler_.transform(X))]


# ----------------------------------------------------------------------------------------------------------------
# profiles and archetypes


def _require(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UsageError(f"{what} needs columns {list(columns)}; missing {missing} (it has {list(table.columns)})")


def unit_profiles(
    units: pd.DataFrame, half_lives: pd.DataFrame | None = None, correlations: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The behaviour profile of every (layer, unit): one row each, columns described in the module docstring.

    Parameters
    ----------
    units : DataFrame
        :func:`gatelens.analysis.stats.unit_stats` (``layer, unit, signal, mean, std, frac_below_0.1, frac_above_0.9``).
    half_lives : DataFrame, optional
        :func:`gatelens.analysis.memory.half_lives` (``layer, unit, half_life_steps``).
    correlations : DataFrame, optional
        :func:`gatelens.analysis.correlate.correlations` (``layer, unit, feature, pearson_r``).

    Returns
    -------
    DataFrame
        Index-free; columns ``layer, unit, half_life_steps``, then the profile columns. Columns a
        layer does not have (another cell type's gates) are NaN.

    Examples
    --------
    >>> u = pd.DataFrame({"layer": "l", "unit": [0, 1], "signal": "forget_gate", "mean": [0.9, 0.2],
    ...                   "std": 0.1, "frac_below_0.1": [0.0, 0.5], "frac_above_0.9": [0.6, 0.0]})
    >>> p = unit_profiles(u, pd.DataFrame({"layer": "l", "unit": [0, 1], "half_life_steps": [np.inf, 0.5]}))
    >>> p[["unit", "half_life_steps", "log_half_life", "forget_gate:frac_above_0.9"]].round(3)
       unit  half_life_steps  log_half_life  forget_gate:frac_above_0.9
    0     0              inf          6.909                         0.6
    1     1              0.5          0.405                         0.0
    """
    _require(units, ["layer", "unit", "signal", *STATS], "units")
    order = list(dict.fromkeys(units["layer"]))
    wide = units.pivot_table(index=["layer", "unit"], columns="signal", values=list(STATS), aggfunc="first", sort=False)
    wide.columns = [f"{sig}:{stat}" for stat, sig in wide.columns]
    sig_order = list(dict.fromkeys(units["signal"]))
    cols = [f"{s}:{stat}" for s in sig_order for stat in STATS if f"{s}:{stat}" in wide.columns]
    prof = wide[cols].reset_index()
    if half_lives is not None and len(half_lives):
        _require(half_lives, ["layer", "unit", "half_life_steps"], "half_lives")
        hl = half_lives.groupby(["layer", "unit"], sort=False)["half_life_steps"].first().reset_index()
        prof = prof.merge(hl, on=["layer", "unit"], how="left")
    else:
        prof["half_life_steps"] = np.nan
    h = prof["half_life_steps"].to_numpy(np.float64)
    prof["log_half_life"] = np.log1p(np.clip(np.where(np.isnan(h), np.nan, h), 0.0, HALF_LIFE_CAP))
    if correlations is not None and len(correlations):
        _require(correlations, ["layer", "unit", "feature", "pearson_r"], "correlations")
        best = _max_abs_r(correlations)
        prof = prof.merge(best, on=["layer", "unit"], how="left")
        corr_cols = [c for c in best.columns if c.startswith("corr:")]
        prof[corr_cols] = prof[corr_cols].fillna(0.0)
    prof["_order"] = prof["layer"].map({name: k for k, name in enumerate(order)})
    prof = prof.sort_values(["_order", "unit"], kind="stable").drop(columns="_order").reset_index(drop=True)
    lead = ["layer", "unit", "half_life_steps"]
    return prof[lead + [c for c in prof.columns if c not in lead]]


def _max_abs_r(correlations: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, unit), the largest |pearson_r| over signals for each feature: columns ``corr:<feature>``.

    A gather into a (units x features) array (``np.maximum.at``), in order of first appearance of the keys,
    instead of a pivot table: a correlations table has units x signals x features rows.
    """
    lu = correlations.groupby(["layer", "unit"], sort=False).ngroup().to_numpy()  # first-appearance order
    lu_first = np.unique(lu, return_index=True)[1]
    lu_keys = correlations[["layer", "unit"]].iloc[lu_first]
    f, f_uniq = pd.factorize(correlations["feature"], sort=False)
    table = np.full((len(lu_first), len(f_uniq)), -np.inf)
    np.maximum.at(table, (lu, f), np.nan_to_num(np.abs(correlations["pearson_r"].to_numpy(np.float64)), nan=0.0))
    table[np.isneginf(table)] = np.nan
    out = pd.DataFrame(table, columns=[f"corr:{name}" for name in f_uniq])
    out.insert(0, "unit", lu_keys["unit"].to_numpy())
    out.insert(0, "layer", lu_keys["layer"].to_numpy())
    return out


def _col(p: pd.DataFrame, name: str) -> np.ndarray:
    return p[name].to_numpy(np.float64) if name in p.columns else np.full(len(p), np.nan)


def _role_col(p: pd.DataFrame, role: str, stat: str) -> np.ndarray:
    """``<gate>:<stat>`` of the gate with ``role`` (registry): per row the first gate of that role it has."""
    out = np.full(len(p), np.nan)
    for gate in (r.name for r in records() if r.role == role):
        out = np.where(np.isnan(out), _col(p, f"{gate}:{stat}"), out)
    return out


def archetypes(profiles: pd.DataFrame, thresholds: dict[str, float] | None = None) -> np.ndarray:
    """The archetype of each row of a profile table (rules and thresholds in the module docstring).

    Parameters
    ----------
    profiles : DataFrame
        From :func:`unit_profiles` (or any table with its column names).
    thresholds : dict, optional
        Overrides of :data:`ARCHETYPE_THRESHOLDS`.

    Returns
    -------
    ndarray of str

    Examples
    --------
    >>> p = pd.DataFrame({"half_life_steps": [50.0, 1.0, 8.0],
    ...                   "forget_gate:frac_above_0.9": [0.95, 0.0, 0.5],
    ...                   "forget_gate:frac_below_0.1": [0.0, 0.7, 0.1]})
    >>> archetypes(p).tolist()
    ['long-memory integrator', 'input-driven', 'resetter']
    """
    th = {**ARCHETYPE_THRESHOLDS, **(thresholds or {})}
    hl = _col(profiles, "half_life_steps")
    keep_open, keep_closed = (
        _role_col(profiles, "keep", "frac_above_0.9"),
        _role_col(profiles, "keep", "frac_below_0.1"),
    )
    i_open = _role_col(profiles, "write", "frac_above_0.9")
    o_open, o_closed = _role_col(profiles, "read", "frac_above_0.9"), _role_col(profiles, "read", "frac_below_0.1")
    with np.errstate(invalid="ignore"):
        conditions = [
            (i_open >= th["always_on_open"]) & (keep_open >= th["always_on_open"]) & (o_open >= th["always_on_open"]),
            (hl >= th["integrator_half_life"]) & (keep_open >= th["integrator_keep_open"]),
            (keep_closed >= th["resetter_keep_closed"]) & (keep_open >= th["resetter_keep_open"]),
            (o_closed >= th["reader_closed"]) & (o_open < th["reader_open"]),
            hl < th["input_driven_half_life"],
        ]
    return np.select(conditions, list(ARCHETYPES[:-1]), default=ARCHETYPES[-1]).astype(object)


def _trait(column: str, high: bool) -> str | None:
    """Plain words for a profile column that is high (or low) in a cluster, or None for columns not described."""
    if column == "log_half_life":
        return "long memory" if high else "short memory"
    if column.startswith("corr:"):
        return f"follows {column[5:]}" if high else None
    signal, _, stat = column.partition(":")
    if kind_of(signal) is None:
        return None
    name = label(signal)
    if stat == "frac_above_0.9":
        return f"{name} often open" if high else f"{name} rarely open"
    if stat == "frac_below_0.1":
        return f"{name} often shut" if high else f"{name} rarely shut"
    if stat == "mean":
        return f"{name} high" if high else f"{name} low"
    if stat == "std":
        return f"{name} switching" if high else f"{name} steady"
    return None


def cluster_traits(profiles: pd.DataFrame, labels: np.ndarray) -> dict[int, str]:
    """What sets each cluster apart, in words: its :data:`N_TRAITS` most distinctive profile columns.

    For every profile column, the cluster's median is compared with the median of all the rows, in units
    of the rows' standard deviation (a robust z); the columns furthest from 0 (at least :data:`TRAIT_MIN_Z`)
    name the cluster, e.g. ``"long memory, output gate often shut"``. A cluster that differs in nothing
    is ``"like the others"``. Unlike the archetypes, this says something on any model.

    Examples
    --------
    >>> p = pd.DataFrame({"log_half_life": [4.0, 4.2, 0.1, 0.2], "forget_gate:frac_above_0.9": [0.9, 0.8, 0.1, 0.0]})
    >>> cluster_traits(p, np.array([0, 0, 1, 1]))
    {0: 'long memory, forget gate often open', 1: 'forget gate rarely open, short memory'}
    """
    cols = [c for c in profiles.columns if c not in ("layer", "unit", "half_life_steps") and _trait(c, True)]
    X = profiles[cols].to_numpy(np.float64)
    with warnings.catch_warnings():  # a column with no value (e.g. no finite half-life): NaN, made 0 below
        warnings.simplefilter("ignore", RuntimeWarning)
        center = np.nanmedian(X, axis=0) if len(X) else np.zeros(len(cols))
        spread = np.nanstd(X, axis=0) if len(X) else np.ones(len(cols))
    spread = np.where(spread > 0, spread, np.inf)
    out: dict[int, str] = {}
    for c in np.unique(labels):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            z = (np.nanmedian(X[labels == c], axis=0) - center) / spread
        z = np.nan_to_num(z, nan=0.0)
        order = np.argsort(-np.abs(z), kind="stable")
        words = []
        for j in order:
            if abs(z[j]) < TRAIT_MIN_Z or len(words) == N_TRAITS:
                break
            w = _trait(cols[j], bool(z[j] > 0))
            if w and w not in words:
                words.append(w)
        out[int(c)] = ", ".join(words) or "like the others"
    return out


def cluster_units(
    units: pd.DataFrame,
    half_lives: pd.DataFrame | None,
    correlations: pd.DataFrame | None = None,
    *,
    random_state: int | None = 0,
    k_min: int = 2,
    k_max: int = 8,
    thresholds: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Cluster units by behaviour profile and name the clusters.

    Parameters
    ----------
    units : DataFrame
        :func:`gatelens.analysis.stats.unit_stats`.
    half_lives : DataFrame or None
        :func:`gatelens.analysis.memory.half_lives` (None for models without a keep gate).
    correlations : DataFrame, optional
        :func:`gatelens.analysis.correlate.correlations`; adds the correlation profile and ``top_feature``.
    random_state : int or None
    k_min, k_max : int
        Cluster counts tried (see :class:`UnitClusterer`).
    thresholds : dict, optional
        Overrides of :data:`ARCHETYPE_THRESHOLDS`.

    Returns
    -------
    DataFrame
        ``layer, unit, cluster, archetype, silhouette, unit_archetype, half_life_steps, top_feature,
        top_abs_r``: ``cluster`` numbered from 0 across all layers; ``archetype`` of the cluster's
        median statistics; ``silhouette`` the unit's own silhouette value (NaN when no clustering
        into 2 or more groups was possible); ``unit_archetype`` from the unit's own statistics;
        ``top_feature``/``top_abs_r`` the feature with the largest ``|pearson_r|`` ("" and NaN
        without correlations).

    Examples
    --------
    >>> rows = []
    >>> for u in range(6):
    ...     keep = u < 3
    ...     rows.append({"layer": "lstm", "unit": u, "signal": "forget_gate", "mean": 0.97 if keep else 0.05,
    ...                  "std": 0.01, "frac_below_0.1": 0.0 if keep else 1.0, "frac_above_0.9": 1.0 if keep else 0.0})
    >>> hl = pd.DataFrame({"layer": "lstm", "unit": range(6), "half_life_steps": [60, 70, 80, 0.2, 0.3, 0.25]})
    >>> cluster_units(pd.DataFrame(rows), hl)[["unit", "cluster", "archetype"]]
       unit  cluster                archetype
    0     0        0  long-memory integrator
    1     1        0  long-memory integrator
    2     2        0  long-memory integrator
    3     3        1             input-driven
    4     4        1             input-driven
    5     5        1             input-driven
    """
    prof = unit_profiles(units, half_lives, correlations)
    out = prof[["layer", "unit", "half_life_steps"]].copy()
    out["cluster"] = -1
    out["silhouette"] = np.nan
    out["archetype"] = ""
    out["unit_archetype"] = archetypes(prof, thresholds)
    out["traits"] = ""
    feature_cols = [c for c in prof.columns if c not in ("layer", "unit", "half_life_steps")]
    signature = units.groupby("layer", sort=False)["signal"].agg(lambda s: tuple(sorted(set(s))))
    offset = 0
    for sig in dict.fromkeys(signature):  # one group per set of signals (cell type), a few at most
        layers = signature.index[signature == sig]
        rows = prof["layer"].isin(layers).to_numpy()
        sub = prof.loc[rows, feature_cols]
        cols = [c for c in feature_cols if sub[c].notna().all()]
        est = UnitClusterer(k_min=k_min, k_max=max(k_min, k_max), random_state=random_state).fit(sub[cols].to_numpy())
        labels = est.labels_ + offset
        out.loc[rows, "cluster"] = labels
        out.loc[rows, "silhouette"] = est.silhouette_samples_
        med = prof.loc[rows].assign(_c=labels).groupby("_c").median(numeric_only=True)
        names = dict(zip(med.index, archetypes(med, thresholds)))
        out.loc[rows, "archetype"] = [names[c] for c in labels]
        traits = cluster_traits(prof.loc[rows], labels)
        out.loc[rows, "traits"] = [traits[c] for c in labels]
        offset += est.n_clusters_
    if correlations is not None and len(correlations):
        c = correlations.assign(abs_r=correlations["pearson_r"].abs()).dropna(subset=["abs_r"])
        best = c.loc[c.groupby(["layer", "unit"], sort=False)["abs_r"].idxmax()]  # the first of equal maxima
        best = best[["layer", "unit", "feature", "abs_r"]].rename(
            columns={"feature": "top_feature", "abs_r": "top_abs_r"}
        )
        out = out.merge(best, on=["layer", "unit"], how="left")
        out["top_feature"] = out["top_feature"].fillna("")
    else:
        out["top_feature"] = ""
        out["top_abs_r"] = np.nan
    out["cluster"] = out["cluster"].astype(np.int64)
    return out[CLUSTER_COLUMNS]


# ----------------------------------------------------------------------------------------------------------------
# co-clusters of units and tokens


def token_unit_matrix(
    trace: Trace, *, layer: str, signal: str | None = None, chunk_sequences: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``|signal|`` per (token id, unit) over the layer's unmasked steps, and each token's count.

    ``signal`` defaults to the state the layer's memory lives in (LSTM ``cell_state``, else ``hidden_state``).

    Returns
    -------
    (means, counts) : ndarray (V, units), ndarray (V,)
        Rows of tokens that never occur are 0 with count 0.

    Examples
    --------
    >>> from gatelens._examples import example_states
    >>> h = np.array([[[1.0, -2.0], [3.0, 0.0], [5.0, 1.0]]], np.float32)
    >>> t = Trace({"rnn": example_states(h)}, tokens=np.array([[0, 1, 0]]), vocabulary=["a", "b"])
    >>> m, c = token_unit_matrix(t, layer="rnn", signal="hidden_state")
    >>> m.tolist(), c.tolist()
    ([[3.0, 1.5], [3.0, 0.0]], [2, 1])
    """
    if trace.tokens is None:
        raise DataError("co-clusters of units and tokens need a text model: this trace has no token ids")
    if layer not in trace.layers:
        raise UsageError(f"unknown layer {layer!r}; the trace has {trace.layers}")
    lt = trace[layer]
    signal = signal or memory_state(lt.info.cell_type)
    if signal not in lt.info.signals:
        raise UsageError(
            f"layer {layer!r} ({lt.info.cell_type}) has no signal {signal!r}; it has {list(lt.info.signals)}"
        )
    arr = lt[signal]
    units = int(arr.shape[2])
    vocab_size = len(trace.vocabulary) if trace.vocabulary is not None else 0
    sums = None
    counts = None
    for sl in iter_chunks(trace.n_sequences, chunk_sequences):
        m = np.asarray(lt.mask[sl], bool).ravel()
        ids = np.asarray(trace.tokens[sl]).ravel()[m].astype(np.int64)
        vals = np.abs(np.asarray(arr[sl], np.float64).reshape(-1, units)[m])
        v = max(vocab_size, int(ids.max()) + 1 if ids.size else 0)
        onehot = sparse.csr_matrix((np.ones(ids.size), (ids, np.arange(ids.size))), shape=(v, ids.size))
        s, c = onehot @ vals, np.bincount(ids, minlength=v)
        if sums is None:
            sums, counts = s, c
        else:
            if v > sums.shape[0]:
                sums = np.vstack([sums, np.zeros((v - sums.shape[0], units))])
                counts = np.r_[counts, np.zeros(v - counts.shape[0], np.int64)]
            sums[: s.shape[0]] += s
            counts[: c.shape[0]] += c
    if sums is None:
        return np.zeros((vocab_size, units)), np.zeros(vocab_size, np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.0)
    return means, counts


def cocluster_units_tokens(
    trace: Trace,
    *,
    layer: str,
    signal: str | None = None,
    n_clusters: int = 4,
    min_count: int = 1,
    random_state: int | None = 0,
    chunk_sequences: int = 256,
) -> pd.DataFrame:
    """Co-clusters of units and tokens: which tokens drive which units (text models).

    Spectral co-clustering (Dhillon 2001, :class:`sklearn.cluster.SpectralCoclustering`) of the
    matrix of mean ``|signal|`` per token type (rows: tokens seen at least ``min_count`` times on
    the layer's unmasked steps) and unit (columns). Each co-cluster ``k`` pairs a group of tokens
    with a group of units whose values are high together. A tiny constant (1e-9 of the largest
    entry) is added so that a unit or token that is 0 everywhere does not divide by zero.

    Parameters
    ----------
    trace : Trace
        A text model's trace (``tokens`` and ``vocabulary``).
    layer : str
    signal : str, optional
        Default: the state the layer's memory lives in (LSTM ``cell_state``, else ``hidden_state``).
    n_clusters : int
        At most the number of tokens kept and the number of units.
    min_count : int
    random_state : int or None
    chunk_sequences : int

    Returns
    -------
    DataFrame
        ``layer, signal, kind, id, name, cluster, count``: one row per unit (``kind="unit"``,
        ``id`` the unit, ``count`` the steps summarised) and per token kept (``kind="token"``,
        ``id`` the token id, ``name`` its string, ``count`` its occurrences).

    Examples
    --------
    >>> from gatelens._examples import example_states
    >>> tok = np.random.default_rng(0).integers(0, 4, size=(10, 30))
    >>> h = np.where(np.isin(tok, [0, 1])[..., None], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0])
    >>> t = Trace({"rnn": example_states(h)}, tokens=tok, vocabulary=list("abcd"))
    >>> cc = cocluster_units_tokens(t, layer="rnn", signal="hidden_state", n_clusters=2)
    >>> cc.groupby("cluster")["name"].apply(lambda s: "".join(sorted(s.astype(str)))).tolist()
    ['01ab', '23cd']
    """
    means, counts = token_unit_matrix(trace, layer=layer, signal=signal, chunk_sequences=chunk_sequences)
    keep = np.nonzero(counts >= max(1, int(min_count)))[0]
    units = means.shape[1]
    if not isinstance(n_clusters, int | np.integer) or not 2 <= n_clusters <= min(keep.size, units):
        raise UsageError(
            f"n_clusters must be an integer from 2 to min(tokens kept, units) = {min(keep.size, units)}, got {n_clusters!r}"
        )
    mat = means[keep]
    mat = mat + 1e-9 * max(float(mat.max()), 1e-300)
    model = SpectralCoclustering(n_clusters=int(n_clusters), random_state=random_state).fit(mat)
    vocab = trace.vocabulary
    names = [str(vocab[i]) if vocab is not None and i < len(vocab) else str(i) for i in keep]
    unit_rows = pd.DataFrame(
        {"kind": "unit", "id": np.arange(units), "name": [str(u) for u in range(units)],
         "cluster": model.column_labels_.astype(np.int64), "count": int(counts.sum())}
    )  # fmt: skip
    token_rows = pd.DataFrame(
        {
            "kind": "token",
            "id": keep,
            "name": names,
            "cluster": model.row_labels_.astype(np.int64),
            "count": counts[keep],
        }
    )
    out = pd.concat([unit_rows, token_rows], ignore_index=True)
    out.insert(0, "signal", signal or memory_state(trace[layer].info.cell_type))
    out.insert(0, "layer", layer)
    return out[COCLUSTER_COLUMNS]


__all__ = [
    "ARCHETYPES",
    "ARCHETYPE_THRESHOLDS",
    "CLUSTER_COLUMNS",
    "COCLUSTER_COLUMNS",
    "HALF_LIFE_CAP",
    "UnitClusterer",
    "archetypes",
    "cluster_units",
    "cocluster_units_tokens",
    "token_unit_matrix",
    "unit_profiles",
]
