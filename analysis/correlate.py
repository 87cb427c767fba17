"""Correlation of every (layer, unit, signal) with every per-step feature.

:func:`correlations` returns one row per ``layer, unit, signal, feature`` with the Pearson
and the Spearman correlation over the layer's unmasked steps.

How it is computed

* **Pearson** uses every unmasked step of the layer that has a value for the feature (``n``).
  Signals are read in chunks of sequences; each chunk's centred moments (means, sums of
  squares, the cross-product matrix ``Xc.T @ Yc`` of all units against all features) are
  merged into running totals with the pairwise update of Chan, Golub & LeVeque (1979), so
  memory does not grow with the number of steps and no sum-of-squares cancellation occurs.
* **Spearman** is the Pearson correlation of average ranks (ties share their mean rank,
  as :func:`scipy.stats.rankdata`). Ranks need all values of a column at once, so above
  ``max_rank_rows`` (default 20,000) unmasked steps a deterministic subsample (``numpy.random.default_rng(random_state)``,
  steps drawn without replacement) is ranked instead; ``spearman_n`` says how many steps
  were used, and equals ``n`` when no subsample was needed.
* A feature with NaN cells (``delta:*`` on first steps, gaps in a user's CSV) is correlated
  over its own non-NaN steps: features are grouped by their pattern of missing cells and
  each group is processed with one matrix product.
* **Constant columns**: when a signal or a feature takes a single value over the steps used
  (checked exactly, ``min == max``), the correlation is undefined; ``pearson_r`` /
  ``spearman_rho`` are left empty (NaN) and ``note`` says ``"constant signal"``,
  ``"constant feature"`` or ``"constant signal and feature"``. With fewer than 3 steps the
  note is ``"fewer than 3 steps"``. ``note`` is ``""`` otherwise.

Examples
--------
>>> import numpy as np, pandas as pd
>>> from gatelens.analysis.trace import Trace
>>> from gatelens._examples import example_states
>>> h = np.stack([np.arange(6.0), np.ones(6)], -1).reshape(1, 6, 2).astype(np.float32)
>>> lt = example_states(h, inputs=h[..., :1])
>>> feats = pd.DataFrame({"sequence": 0, "step": np.arange(6), "twice": 2.0 * np.arange(6)})
>>> c = correlations(Trace({"rnn": lt}), feats, signals=["hidden_state"])
>>> c[["unit", "feature", "pearson_r", "spearman_rho", "n", "note"]]
   unit feature  pearson_r  spearman_rho  n             note
0     0    step        1.0           1.0  6
1     0   twice        1.0           1.0  6
2     1    step        NaN           NaN  6  constant signal
3     1   twice        NaN           NaN  6  constant signal
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from gatelens.analysis._reading import select_layers
from gatelens.analysis.features import FeatureError, as_feature_matrix, flat_keys
from gatelens.analysis.trace import Trace, iter_chunks
from gatelens.errors import UsageError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

COLUMNS = ["layer", "unit", "signal", "feature", "pearson_r", "spearman_rho", "n", "spearman_n", "note"]
#: Most steps ranked for Spearman per layer (default): 20,000 like the probes' sample (its standard error is
#: ~1/sqrt(20,000) = 0.007); ranking is ~half of the correlations' time and grew with N up to the cap (100,000 before).
DEFAULT_MAX_RANK_ROWS = 20_000
_RANK_BLOCK_ELEMENTS = 256 * 1024  # values ranked at a time (blocks of columns): 2 MB float64 arrays (see below)
#: the same for the integer-key ranks (counted as rows x (features + 1) a column): 1 M, a few columns of 20,000 rows a
#: block (one column a block cost ~0.2 ms of fixed work per column: 70 -> 48 ms a signal of 128 units x 20,000 rows)
_KEY_RANK_BLOCK_ELEMENTS = 1024 * 1024
#: from this many rows a float16 column is ranked by counting its keys (65,536 possible) instead of sorting them: the
#: count, its running sum and the lookup cost about a fixed 65,536-entry pass a column, a sort m log m
_COUNT_RANK_MIN_ROWS = 4096
#: float16 columns counted at a time: their (columns, 65,536) tables of counts and mean ranks stay at a few MB
_COUNT_RANK_COLUMNS = 8
#: signal values (rows x units) whose centred moments are formed at a time: 256 KB of float64, where the conversion,
#: centring and products run in L2 (3.9 ns a float16 value against 10 features; 5.6 ns in 2 MB blocks)
_MOMENT_BLOCK_VALUES = 32 * 1024
# Both blocks keep every temporary at a few MB, reused by the allocator: fresh arrays of tens of MB are faulted in
# page by page (with NumPy's huge-page advice, the kernel compacts memory first), which cost more than the work
# (20 x 128 units x 20,000 ranked rows: 8-11 s in blocks of 4 M values, 5.1 s in blocks of 256 K, idle machine).


# ----------------------------------------------------------------------------------------------------------------
# building blocks


@dataclass
class Moments:
    """Running centred moments of two column blocks X (rows, p) and Y (rows, q), merged chunk by chunk.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(100, 3)), rng.normal(size=(100, 2))
    >>> m = Moments()
    >>> for s in (slice(0, 30), slice(30, 100)):
    ...     m.update(x[s], y[s])
    >>> bool(np.allclose(m.pearson(), np.corrcoef(x.T, y.T)[:3, 3:]))
    True
    """

    n: int = 0
    mx: np.ndarray | None = None
    my: np.ndarray | None = None
    sxx: np.ndarray | None = None
    syy: np.ndarray | None = None
    sxy: np.ndarray | None = None
    min_x: np.ndarray | None = None
    max_x: np.ndarray | None = None
    min_y: np.ndarray | None = None
    max_y: np.ndarray | None = None

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        """Merge the rows of ``x`` (nb, p) and ``y`` (nb, q) into the totals."""
        if x.shape[0]:
            self.merge(_blocked_moments(x, _FeatureBlocks.of(y, _moment_step(x.shape[1]))))

    def merge(self, other: Moments) -> Moments:
        """Merge the totals of ``other`` (rows disjoint from these) into these (Chan et al.'s update); returns self.

        Examples
        --------
        >>> rng = np.random.default_rng(1)
        >>> x, y = rng.normal(size=(50, 2)), rng.normal(size=(50, 1))
        >>> a, b, whole = Moments(), Moments(), Moments()
        >>> a.update(x[:20], y[:20]); b.update(x[20:], y[20:]); whole.update(x, y)
        >>> bool(np.allclose(a.merge(b).pearson(), whole.pearson()))
        True
        """
        if other.n == 0:
            return self
        if self.n == 0:
            for f in fields(self):
                setattr(self, f.name, getattr(other, f.name))
            return self
        na, nb = self.n, other.n
        n = na + nb
        dx, dy = other.mx - self.mx, other.my - self.my
        f = na * nb / n
        self.mx = self.mx + dx * (nb / n)
        self.my = self.my + dy * (nb / n)
        self.sxx = self.sxx + other.sxx + dx * dx * f
        self.syy = self.syy + other.syy + dy * dy * f
        self.sxy = self.sxy + other.sxy + np.outer(dx, dy) * f
        self.min_x, self.max_x = np.minimum(self.min_x, other.min_x), np.maximum(self.max_x, other.max_x)
        self.min_y, self.max_y = np.minimum(self.min_y, other.min_y), np.maximum(self.max_y, other.max_y)
        self.n = n
        return self

    def constant_x(self) -> np.ndarray:
        """(p,) bool: the column took a single value (exactly)."""
        return self.min_x == self.max_x

    def constant_y(self) -> np.ndarray:
        """(q,) bool: the column took a single value (exactly)."""
        return self.min_y == self.max_y

    def pearson(self) -> np.ndarray:
        """(p, q) Pearson r; NaN where a column is constant or fewer than 3 rows were seen."""
        with np.errstate(invalid="ignore", divide="ignore"):
            r = self.sxy / np.sqrt(np.outer(self.sxx, self.syy))
        r = np.clip(r, -1.0, 1.0)
        bad = self.constant_x()[:, None] | self.constant_y()[None, :] | (self.n < 3)
        return np.where(bad, np.nan, r)


@dataclass
class _FeatureBlocks:
    """The feature side of :func:`_blocked_moments` for one chunk's rows ``y`` (n, q) cut in blocks of ``step`` rows:
    the same for every signal of a layer, so formed once per chunk."""

    step: int
    starts: np.ndarray  # first row of each block
    counts: np.ndarray  # rows of each block
    mean: np.ndarray  # (blocks, q) the blocks' means
    centred: np.ndarray  # (n, q) y centred within each block
    syy: np.ndarray  # (q,) sum of squares within the blocks
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def of(cls, y: np.ndarray, step: int) -> _FeatureBlocks:
        y = np.asarray(y, np.float64)
        starts = np.arange(0, y.shape[0], step)
        counts = np.diff(np.append(starts, y.shape[0]))
        mean = np.add.reduceat(y, starts, axis=0) / counts[:, None]
        centred = y - np.repeat(mean, counts, axis=0)
        syy = np.add.reduceat(centred * centred, starts, axis=0).sum(axis=0)
        return cls(step, starts, counts, mean, centred, syy, y.min(axis=0), y.max(axis=0))


def _moment_step(p: int) -> int:
    """Rows of a block of :func:`_blocked_moments` for ``p`` columns."""
    return max(1, _MOMENT_BLOCK_VALUES // max(1, p))


def _blocked_moments(x: np.ndarray, fb: _FeatureBlocks) -> Moments:
    """The centred moments of the rows of ``x`` (n, p) and of the features ``y`` (n, q) that ``fb`` was formed
    from, in float64.

    ``x`` is read in blocks of rows that stay in the core's cache (the float64 copy of a whole 256-sequence chunk is
    50 MB a signal), each converted into one reused buffer and centred there on its own mean; ``y`` (a few feature
    columns) is centred on the blocks' means at once (``fb``: :class:`_FeatureBlocks` of ``y``, in blocks of
    :func:`_moment_step` rows). The
    blocks' sums of squares and cross products are added up and merged with their means by Chan et al.'s update for
    all blocks at once (no moments object per block).
    """
    n, p = x.shape
    step, starts, counts, ym, yc = fb.step, fb.starts, fb.counts, fb.mean, fb.centred
    xm = np.empty((starts.size, p))
    buf = np.empty((counts[0], p))
    ones = np.ones(counts[0])
    sxx, sxy_t = np.zeros(p), np.zeros((yc.shape[1], p))
    for k, start in enumerate(starts):
        b = buf[: counts[k]]
        np.copyto(b, x[start : start + step], casting="unsafe")
        if k == 0:
            lo, hi = b.min(axis=0), b.max(axis=0)
        else:
            np.minimum(lo, b.min(axis=0), out=lo)
            np.maximum(hi, b.max(axis=0), out=hi)
        np.matmul(ones[: counts[k]], b, out=xm[k])  # a matrix-vector product: ~2x faster than mean
        xm[k] /= counts[k]
        b -= xm[k]
        sxx += np.einsum("ij,ij->j", b, b)
        sxy_t += yc[start : start + step].T @ b
    mx, my = (counts @ xm) / n, (counts @ ym) / n
    dx, dy = xm - mx, ym - my  # the blocks' means less the whole's
    sxx += counts @ (dx * dx)
    syy = fb.syy + counts @ (dy * dy)
    sxy = sxy_t.T + (dx * counts[:, None]).T @ dy
    return Moments(n, mx, my, sxx, syy, sxy, lo, hi, fb.lo.copy(), fb.hi.copy())


def constant_note(const_x: np.ndarray, const_y: np.ndarray, n: int | np.ndarray) -> np.ndarray:
    """(p, q) array of notes for constant columns (``""`` when none).

    Examples
    --------
    >>> constant_note(np.array([True, False]), np.array([False, True]), 10).tolist()
    [['constant signal', 'constant signal and feature'], ['', 'constant feature']]
    """
    cx = np.asarray(const_x, bool)[:, None]
    cy = np.asarray(const_y, bool)[None, :]
    code = cx.astype(np.int8) + 2 * cy.astype(np.int8)  # 0 none, 1 signal, 2 feature, 3 both
    code = np.where(np.broadcast_to(np.asarray(n) < 3, code.shape), 4, code)
    return _NOTES[code]  # one gather from five strings, not string arrays compared per cell


_NOTES = np.array(
    ["", "constant signal", "constant feature", "constant signal and feature", "fewer than 3 steps"], object
)


def _row_ranks(rows: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, float64) along axis 1 of a C-contiguous (p, m) array."""
    p, m = rows.shape
    order = np.argsort(rows, axis=1)
    s = np.take_along_axis(rows, order, axis=1)
    first = np.empty((p, m), bool)  # first element of a run of equal values (runs never cross rows)
    first[:, 0] = True
    np.not_equal(s[:, 1:], s[:, :-1], out=first[:, 1:])
    flat = first.ravel()
    if flat.all():  # no ties: the rank is the position in sorted order
        sorted_rank = np.broadcast_to(np.arange(1.0, m + 1.0), (p, m))
    else:
        starts = np.flatnonzero(flat)
        ends = np.empty_like(starts)
        ends[:-1] = starts[1:] - 1
        ends[-1] = p * m - 1
        mean_rank = (starts + ends) * 0.5 - (starts // m) * m + 1.0
        sorted_rank = np.repeat(mean_rank, ends - starts + 1).reshape(p, m)  # each run's rank, run length times
    ranks = np.empty((p, m))
    np.put_along_axis(ranks, order, sorted_rank, axis=1)
    return ranks


def average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks (1-based, float64) of every column of ``a`` (m, p); ties share their mean rank.

    The same numbers as ``scipy.stats.rankdata(a, axis=0)`` (method "average"), computed on
    contiguous rows with NumPy's SIMD sort.

    Examples
    --------
    >>> average_ranks(np.array([[3.0], [1.0], [3.0], [2.0]])).ravel().tolist()
    [3.5, 1.0, 3.5, 2.0]
    """
    return _row_ranks(np.ascontiguousarray(np.asarray(a).T)).T


def _feature_ranks(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The feature side of :func:`rank_pearson` for ``y`` (m, q): centred average ranks, their sums of squares, and
    which columns are constant."""
    ry = average_ranks(y) - (y.shape[0] + 1) / 2.0
    return ry, np.einsum("ij,ij->j", ry, ry), y.min(axis=0) == y.max(axis=0)


def rank_pearson(
    x: np.ndarray, y: np.ndarray, *, y_ranks: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Spearman correlation of every column of ``x`` (m, p) with every column of ``y`` (m, q).

    Average ranks for ties; NaN where a column is constant. A float16 or float32 ``x`` without NaN is ranked
    by sorting integer keys of its bits in blocks of columns (:func:`_key_rank_sums`); any other ``x`` is
    transposed once (in its own dtype) and ranked by :func:`average_ranks`' method in blocks of columns. Either
    way memory stays bounded, and the numbers are the same (exact ranks, float64 sums). ``y_ranks``:
    :func:`_feature_ranks` of ``y`` formed before (the same for every signal of a layer).

    Examples
    --------
    >>> x = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [10.0, 5.0]])
    >>> rank_pearson(x, np.array([[1.0], [4.0], [9.0], [16.0]])).ravel().tolist()
    [1.0, nan]
    >>> rank_pearson(x.astype(np.float16), np.array([[1.0], [4.0], [9.0], [16.0]])).ravel().tolist()
    [1.0, nan]
    """
    m = x.shape[0]
    centre = (m + 1) / 2.0
    ry, syy, const_y = _feature_ranks(y) if y_ranks is None else y_ranks
    sums = _key_rank_sums(np.asarray(x), ry) if np.asarray(x).dtype in _KEY_FORMATS else None
    if sums is not None:
        sxy, sxx, const_x = sums
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.clip(sxy / np.sqrt(np.outer(sxx, syy)), -1.0, 1.0)
        return np.where(const_x[:, None] | const_y[None, :] | (m < 3), np.nan, out)
    xt = np.ascontiguousarray(np.asarray(x).T)
    out = np.empty((x.shape[1], y.shape[1]))
    block = max(1, _RANK_BLOCK_ELEMENTS // max(m, 1))
    for sl in iter_chunks(x.shape[1], block):  # blocks of columns, not single units
        rx = _row_ranks(xt[sl]) - centre
        sxx = np.einsum("ij,ij->i", rx, rx)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[sl] = (rx @ ry) / np.sqrt(np.outer(sxx, syy))
    out = np.clip(out, -1.0, 1.0)
    const = (xt.min(axis=1) == xt.max(axis=1))[:, None] | const_y[None, :]
    return np.where(const | (m < 3), np.nan, out)


_KEY_FORMATS = {  # dtype -> (unsigned view, sign bit, exponent bits all set: larger magnitudes are NaN)
    np.dtype(np.float16): (np.uint16, 0x8000, 0x7C00),
    np.dtype(np.float32): (np.uint32, 0x80000000, 0x7F800000),
}


def _sortable_keys(bits: np.ndarray, width: int) -> np.ndarray:
    """In place: the ``width``-bit float bits held in the unsigned array ``bits`` become integer keys in the order
    of the values (equal exactly where the values are equal, -0 and +0 included); returns ``bits``.

    Positive values get their bits with the sign bit set, negative ones the two's complement of their bits
    (so -0 and +0 share the key ``sign``); larger keys are larger values, NaNs sort below -inf or above +inf.

    Examples
    --------
    >>> v = np.array([-2.0, -0.0, 0.0, 1e-7, 1.0, np.inf], np.float16)
    >>> k = _sortable_keys(v.view(np.uint16).astype(np.uint32), 16).astype(int)
    >>> bool((np.diff(k) >= 0).all()), bool(k[1] == k[2]), hex(int(k[2]))
    (True, True, '0x8000')
    """
    t = bits.dtype.type
    sign = 1 << (width - 1)
    neg = bits >> t(width - 1)  # 1 for negative values
    mask = neg * t(sign - 1)
    mask += t(sign)
    bits ^= mask  # positive: bits + sign; negative: the bits' complement ...
    bits += neg  # ... + 1 (the two's complement within ``width`` bits)
    return bits


_TRANSPOSE_ROWS = 256  # rows transposed at a time: a column-major read of the whole array is ~6x slower


def _transpose(a: np.ndarray, dtype: object = None) -> np.ndarray:
    """A C-contiguous copy of ``a.T`` (2-D; in ``dtype``, default ``a``'s), copied in blocks of rows that stay in
    cache."""
    out = np.empty(a.shape[::-1], a.dtype if dtype is None else dtype)
    for start in range(0, a.shape[0], _TRANSPOSE_ROWS):
        out[:, start : start + _TRANSPOSE_ROWS] = a[start : start + _TRANSPOSE_ROWS].T
    return out


def _key_rank_sums(x: np.ndarray, ry: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """For the columns of a float16 / float32 ``x`` (m, p) and centred ranks ``ry`` (m, q): ``(sum of centred
    average rank x ry (p, q), sum of squared centred ranks (p,), constant (p,))``, or None when ``x`` has a NaN.

    A block of columns at a time, each column's bits become sortable keys (:func:`_sortable_keys`) packed with
    their row number into one integer (key in the high bits) and sorted: the sorted integers give the order and,
    where the key changes, the runs of tied values (each run's rows share their mean rank). The block's arrays
    stay in the core's cache.
    """
    utype, sign, inf = _KEY_FORMATS[x.dtype]
    width = 8 * x.itemsize
    m, p = x.shape
    if width == 16 and m >= _COUNT_RANK_MIN_ROWS:
        return _counted_rank_sums(x, ry)
    q = ry.shape[1]
    centre = (m + 1) / 2.0
    index_bits = max(1, int(m - 1).bit_length())
    ctype = np.uint32 if width + index_bits <= 32 else np.uint64
    shift, low = ctype(index_bits), ctype((1 << index_bits) - 1)
    nan_below, nan_above = sign - inf, sign + inf  # keys of -inf and +inf
    rows = np.arange(m, dtype=ctype)
    ry_rows = np.ascontiguousarray(ry, np.float64)
    bits = _transpose(x.view(utype), ctype)  # (p, m): one column's bits a row, widened to hold the row numbers
    sxy, sxx = np.empty((p, q)), np.empty(p)
    const = np.empty(p, bool)
    block = max(1, _KEY_RANK_BLOCK_ELEMENTS // max(m * (q + 1), 1))
    order = np.empty((min(block, p), m), np.intp)
    for sl in iter_chunks(p, block):
        g = sl.stop - sl.start
        packed = bits[sl]  # changed in place
        _sortable_keys(packed, width)
        packed <<= shift
        packed |= rows
        packed.sort(axis=1)
        o = order[:g]
        np.bitwise_and(packed, low, out=o, casting="unsafe")
        packed >>= shift  # the sorted keys
        if (packed[:, 0] < nan_below).any() or (packed[:, -1] > nan_above).any():
            return None  # a NaN: ranked by the sorting path (NaNs last, each its own rank)
        first = np.empty((g, m), bool)  # first element of a run of equal keys (runs never cross rows)
        first[:, 0] = True
        np.not_equal(packed[:, 1:], packed[:, :-1], out=first[:, 1:])
        starts = np.flatnonzero(first)
        per_row = np.count_nonzero(first, axis=1)
        lengths = np.diff(starts, append=g * m)
        # each run's mean rank, centred, counted along the block's rows laid end to end: row i's ranks are off by
        # i * m, which adds i * m * sum(ry) = 0 to its sum (the centred ranks sum to exactly 0; every number here
        # is a multiple of 1/4 far below 2**50, so the float64 sums are exact whatever their order)
        mean_rank = lengths * 0.5
        mean_rank += starts
        mean_rank += 0.5 - centre
        ranks = np.repeat(mean_rank, lengths).reshape(g, m)  # in sorted order
        # the ranks put back in row order (one scatter), then one (g, m) x (m, q) product for every feature at once
        # (a take and an einsum per feature and column cost ~5x)
        in_rows = np.empty_like(ranks)
        np.put_along_axis(in_rows, o, ranks, axis=1)
        sxy[sl] = in_rows @ ry_rows
        # sum of squared centred average ranks: m (m^2 - 1) / 12 less (t^3 - t) / 12 for each run of t ties
        ties = (lengths**3 - lengths).astype(np.float64)
        sxx[sl] = (m * (m * m - 1.0) - np.add.reduceat(ties, np.cumsum(per_row) - per_row)) / 12.0
        const[sl] = per_row == 1
    return sxy, sxx, const


def _counted_rank_sums(x: np.ndarray, ry: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`_key_rank_sums` of a float16 ``x`` by counting: a column's keys (:func:`_sortable_keys`, 16 bits) are
    counted in a table of every possible key; a row's count and the table's running sum at its key give its mean rank
    (the rows up to its key, less half its other ties), looked up for every row. No sort and no scatter; the same
    ranks, so the same (exact) sums.

    Examples
    --------
    >>> x = np.array([[1.0], [-0.0], [0.0], [2.0], [1.0]], np.float16)
    >>> ry = np.array([[-2.0], [-1.0], [0.0], [1.0], [2.0]])
    >>> sxy, sxx, const = _counted_rank_sums(x, ry)   # ranks 3.5, 1.5, 1.5, 5, 3.5; centred 0.5, -1.5, -1.5, 2, 0.5
    >>> float(sxy[0, 0]), float(sxx[0]), bool(const[0])
    (3.5, 9.0, False)
    """
    utype, sign, inf = _KEY_FORMATS[np.dtype(np.float16)]
    m, p = x.shape
    q = ry.shape[1]
    size = 1 << 16
    centre = (m + 1) / 2.0
    ry_rows = np.ascontiguousarray(ry, np.float64)
    keys = _transpose(x.view(utype), np.intp)  # (p, m): one column's keys a row
    sxy, sxx = np.empty((p, q)), np.empty(p)
    const = np.empty(p, bool)
    offsets = (np.arange(_COUNT_RANK_COLUMNS, dtype=np.intp) * size)[:, None]
    for sl in iter_chunks(p, _COUNT_RANK_COLUMNS):
        g = sl.stop - sl.start
        k = keys[sl]  # changed in place
        _sortable_keys(k, 16)
        k += offsets[:g]  # each column's keys in its own row of the table
        counts = np.bincount(k.reshape(-1), minlength=g * size).reshape(g, size)
        if counts[:, : sign - inf].any() or counts[:, sign + inf + 1 :].any():
            return None  # a NaN: ranked by the sorting path (NaNs last, each its own rank)
        flat = k.reshape(-1)
        ties = counts.reshape(-1).take(flat).reshape(g, m)  # each row's run of equal keys: t of them
        np.cumsum(counts, axis=1, out=counts)  # the rows with a key up to each key
        # a row's mean rank: the t rows of its run end at the running count, so their mean is it less (t - 1) / 2
        rank = counts.reshape(-1).take(flat).reshape(g, m) - 0.5 * ties
        rank += 0.5 - centre  # centred, as the sorted path's (multiples of 1/2: exact)
        sxy[sl] = rank @ ry_rows
        const[sl] = ties[:, 0] == m
        # sum of squared centred ranks: m (m^2 - 1) / 12 less (t^3 - t) / 12 a run, t (t^2 - 1) summed over its rows
        sxx[sl] = (m * (m * m - 1.0) - (ties * ties - 1).sum(axis=1, dtype=np.float64)) / 12.0
    return sxy, sxx, const


def _select_signals(trace: Trace, layers: list[str], signals: Sequence[str] | None) -> dict[str, list[str]]:
    if signals is None:
        return {name: list(trace[name].info.signals) for name in layers}
    if isinstance(signals, str):
        signals = [signals]
    known = {s for name in layers for s in trace[name].info.signals}
    unknown = [s for s in signals if s not in known]
    if unknown:
        raise UsageError(f"unknown signal(s) {unknown}; the selected layers have {sorted(known)}")
    return {name: [s for s in signals if s in trace[name].info.signals] for name in layers}


@dataclass
class LayerRows:
    """The steps of one layer that have a feature row: per chunk of sequences, which flat steps and which rows."""

    chunks: list[tuple[slice, np.ndarray, np.ndarray]]  # (sequences, flat index within the chunk, feature row)
    total: int


def layer_rows(trace: Trace, layer: str, features: pd.DataFrame, *, chunk_sequences: int = 256) -> LayerRows:
    """Match a layer's unmasked steps to the rows of a features table (read in chunks of sequences).

    Raises
    ------
    FeatureError
        When the table has keys outside the trace or duplicate (sequence, step) keys.
    """
    n, t = trace.n_sequences, trace.n_steps
    seq = features["sequence"].to_numpy(np.int64)
    stp = features["step"].to_numpy(np.int64)
    out_of_range = (seq < 0) | (seq >= n) | (stp < 0) | (stp >= t)
    if out_of_range.any():
        i = int(np.argmax(out_of_range))
        raise FeatureError(
            f"features table: row {i} has (sequence={seq[i]}, step={stp[i]}), outside the trace's {n} sequences "
            f"x {t} steps"
        )
    keys = flat_keys(features, t)
    pos = np.full(n * t, -1, np.int64)
    pos[keys] = np.arange(len(keys))
    if (pos >= 0).sum() != len(keys):
        uniq, counts = np.unique(keys, return_counts=True)
        k = int(uniq[np.argmax(counts > 1)])
        raise FeatureError(f"features table: duplicate key (sequence={k // t}, step={k % t})")
    mask = trace[layer].mask
    chunks = []
    total = 0
    for sl in iter_chunks(n, chunk_sequences):
        m = np.asarray(mask[sl], bool).ravel()
        p = pos[sl.start * t : sl.stop * t]
        local = np.nonzero(m & (p >= 0))[0]
        chunks.append((sl, local, p[local]))
        total += local.size
    return LayerRows(chunks, total)


def subsample(total: int, cap: int | None, random_state: int | None) -> np.ndarray | None:
    """Sorted indices of a deterministic subsample of ``cap`` of ``total`` rows, or None when ``total <= cap``.

    Examples
    --------
    >>> subsample(5, 10, 0) is None, subsample(10, 3, 0).tolist() == subsample(10, 3, 0).tolist()
    (True, True)
    """
    if cap is None or total <= cap:
        return None
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(total, size=int(cap), replace=False))


# ----------------------------------------------------------------------------------------------------------------
# the table


def correlations(
    trace: Trace,
    features: pd.DataFrame,
    *,
    layers: Sequence[str] | None = None,
    signals: Sequence[str] | None = None,
    feature_columns: Sequence[str] | None = None,
    max_rank_rows: int | None = DEFAULT_MAX_RANK_ROWS,
    random_state: int | None = 0,
    chunk_sequences: int = 256,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Pearson and Spearman correlation of every (layer, unit, signal) with every feature.

    Parameters
    ----------
    trace : Trace
        In memory or from a run store; signals are read in chunks of ``chunk_sequences`` sequences.
    features : pandas.DataFrame
        ``sequence``, ``step`` and numeric or bool feature columns (:func:`gatelens.analysis.features.build_features`).
        Steps of the layer without a row are left out; NaN cells are left out per feature.
    layers, signals : sequence of str, optional
        Default: every layer, every signal it has.
    feature_columns : sequence of str, optional
        Default: every column but ``sequence`` (``step`` included).
    max_rank_rows : int or None
        Most steps ranked for Spearman per layer (deterministic subsample above it; None: no cap).
    random_state : int or None
        Seed of that subsample.
    chunk_sequences : int
    progress : callable(done, total), optional
        Called after each (layer, signal).

    Returns
    -------
    pandas.DataFrame
        Columns ``layer, unit, signal, feature, pearson_r, spearman_rho, n, spearman_n, note``;
        one row per layer, signal, unit, feature (in that order). ``n``: steps used for Pearson;
        ``spearman_n``: steps ranked for Spearman; ``note``: why a correlation is empty (see the
        module docstring).

    Raises
    ------
    FeatureError
        On a malformed features table. ValueError on an unknown layer or signal.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_states
    >>> t = Trace({"rnn": example_states(np.array([[[0.0], [0.5], [0.9], [0.95]]], np.float32))})
    >>> f = pd.DataFrame({"sequence": 0, "step": [0, 1, 2, 3]})
    >>> r = correlations(t, f, signals="hidden_state").iloc[0]
    >>> round(float(r.pearson_r), 4), float(r.spearman_rho), int(r.n)
    (0.9527, 1.0, 4)
    """
    names = select_layers(trace, layers)
    per_layer = _select_signals(trace, names, signals)
    fmat, fnames = as_feature_matrix(features, feature_columns)
    valid = ~np.isnan(fmat)
    groups = feature_groups(valid)
    frames = []
    total_work = sum(len(v) for v in per_layer.values())
    done = 0
    # One BLAS thread: the products are small (a block of rows x units against a few features), where a second
    # OpenBLAS thread spin-waiting for a core costs more CPU than it saves on a shared machine (as in the probes).
    with threadpool_limits(limits=1, user_api="blas"):
        for layer in names:
            rows = layer_rows(trace, layer, features, chunk_sequences=chunk_sequences)
            take = subsample(rows.total, max_rank_rows, random_state)
            for frame in _correlate_layer(trace, layer, per_layer[layer], rows, take, fmat, valid, groups, fnames):
                frames.append(frame)
                done += 1
                if progress is not None:
                    progress(done, total_work)
    if not frames:
        return pd.DataFrame({c: [] for c in COLUMNS})
    return pd.concat(frames, ignore_index=True)


def _correlate_layer(
    trace: Trace,
    layer: str,
    signals: list[str],
    rows: LayerRows,
    take: np.ndarray | None,
    fmat: np.ndarray,
    valid: np.ndarray,
    groups: list[np.ndarray],
    fnames: list[str],
) -> Iterator[pd.DataFrame]:
    """The rows of every signal of a layer, one frame per signal in turn. A chunk at a time, every signal is read once
    (its moments and its ranked rows from the same read), and the chunk's feature side is formed once for them all;
    the features' ranks too, once for the layer."""
    lt = trace[layer]
    units = {s: int(lt[s].shape[2]) for s in signals}
    moments = {s: [Moments() for _ in groups] for s in signals}
    sub_x: dict[str, list[np.ndarray]] = {s: [] for s in signals}
    sub_rows: list[np.ndarray] = []
    offset = 0
    for sl, local, frow in rows.chunks:
        if local.size == 0:
            continue
        pick = rank_pick(take, offset, local.size)
        offset += local.size
        prepared: dict = {}
        for s in signals:
            x = chunk_rows(lt[s], sl, local, units[s])
            for total, part in zip(moments[s], chunk_moments(x, frow, fmat, valid, groups, prepared=prepared)):
                total.merge(part)
            sub_x[s].append(x if pick is None else x[pick])
        sub_rows.append(frow if pick is None else frow[pick])
    ranks: dict = {}
    for s in signals:
        yield correlation_frame(
            layer, s, units[s], moments[s], sub_x.pop(s), sub_rows, fmat, valid, groups, fnames, feature_ranks=ranks
        )


def chunk_rows(arr: Any, sl: slice, local: np.ndarray, units: int) -> np.ndarray:
    """The rows ``local`` (flat steps within the chunk) of the sequences ``sl`` of a signal, (rows, units), in
    stored dtype when that is float16 (a float16 run store: ranked by its bits, moments in float64), float32
    otherwise (as the values have always been correlated)."""
    x = np.asarray(arr[sl]).reshape(-1, units)
    if x.dtype != np.float16:
        x = np.asarray(x, np.float32)
    if local.size == x.shape[0]:  # every step of the chunk (local is sorted and unique): no copy
        return x
    return x[local]


def feature_groups(valid: np.ndarray) -> list[np.ndarray]:
    """The feature columns grouped by their pattern of present cells (``valid``: rows x features, bool), so that
    one matrix product serves each group."""
    by_pattern: dict[bytes, list[int]] = {}
    for j in range(valid.shape[1]):  # features (a few), not units
        by_pattern.setdefault(np.packbits(valid[:, j]).tobytes(), []).append(j)
    return [np.asarray(cols) for cols in by_pattern.values()]


def rank_pick(take: np.ndarray | None, offset: int, size: int) -> np.ndarray | None:
    """The positions within a chunk of ``size`` rows, starting at row ``offset``, of the sorted ranked-row sample
    ``take`` (None: every row is ranked)."""
    if take is None:
        return None
    lo, hi = np.searchsorted(take, [offset, offset + size])
    return take[lo:hi] - offset


def chunk_moments(
    x: np.ndarray,
    frow: np.ndarray,
    fmat: np.ndarray,
    valid: np.ndarray,
    groups: list[np.ndarray],
    *,
    prepared: dict | None = None,
) -> list[Moments]:
    """The map step: one chunk's (rows, units) signal ``x`` against the features of its rows ``frow``, one
    :class:`Moments` per group of features that share a missing-value pattern. ``prepared``: a dict kept across the
    signals of one chunk (same ``frow``), where the feature side is formed once."""
    prepared = {} if prepared is None else prepared
    step = _moment_step(x.shape[1])
    out = []
    for g, cols in enumerate(groups):
        if (g, step) not in prepared:
            ok = valid[frow, cols[0]]
            ok = None if ok.all() else ok  # no missing cell in this chunk: no copy of the signal
            y = fmat[np.ix_(frow if ok is None else frow[ok], cols)]
            prepared[g, step] = ok, (_FeatureBlocks.of(y, step) if y.shape[0] else None)
        ok, fb = prepared[g, step]
        xs = x if ok is None else x[ok]
        out.append(Moments() if fb is None else _blocked_moments(xs, fb))
    return out


def correlation_frame(
    layer: str,
    signal: str,
    units: int,
    moments: list[Moments],
    sub_x: list[np.ndarray],
    sub_rows: list[np.ndarray],
    fmat: np.ndarray,
    valid: np.ndarray,
    groups: list[np.ndarray],
    fnames: list[str],
    *,
    feature_ranks: dict | None = None,
) -> pd.DataFrame:
    """The combine step: Pearson from the merged moments, Spearman from the ranked rows (``sub_x``, the signal at
    the feature rows ``sub_rows``, chunk by chunk), as the rows of :func:`correlate` for one layer and signal.
    ``feature_ranks``: a dict kept across the signals of one layer (same ``sub_rows``), where the features' ranks are
    formed once."""
    cache = {} if feature_ranks is None else feature_ranks
    xs = np.concatenate(sub_x) if sub_x else np.empty((0, units), np.float32)  # the stored dtype
    fr = np.concatenate(sub_rows) if sub_rows else np.empty(0, np.int64)
    n_feat = fmat.shape[1]
    pearson = np.full((units, n_feat), np.nan)
    spearman = np.full((units, n_feat), np.nan)
    n = np.zeros(n_feat, np.int64)
    sn = np.zeros(n_feat, np.int64)
    note = np.full((units, n_feat), "fewer than 3 steps", dtype=object)
    for g, cols in enumerate(groups):
        mo = moments[g]
        n[cols] = mo.n
        if mo.n == 0:
            continue
        pearson[:, cols] = mo.pearson()
        note[:, cols] = constant_note(mo.constant_x(), mo.constant_y(), mo.n)
        ok = valid[fr, cols[0]]
        sn[cols] = int(ok.sum())
        if ok.sum() >= 3:
            every = bool(ok.all())  # no missing cell among the ranked rows: no copy of the signal
            if g not in cache:
                y = fmat[np.ix_(fr if every else fr[ok], cols)]
                cache[g] = y, _feature_ranks(y)
            y, y_ranks = cache[g]
            spearman[:, cols] = rank_pearson(xs if every else xs[ok], y, y_ranks=y_ranks)
    lost = np.isnan(spearman) & ~np.isnan(pearson)  # constant only on the ranked subsample
    note[lost] = "spearman: constant on the ranked subsample"
    return pd.DataFrame(
        {
            "layer": layer,
            "unit": np.repeat(np.arange(units), n_feat),
            "signal": signal,
            "feature": np.tile(np.asarray(fnames, dtype=object), units),
            "pearson_r": pearson.ravel(),
            "spearman_rho": spearman.ravel(),
            "n": np.tile(n, units),
            "spearman_n": np.tile(sn, units),
            "note": note.ravel(),
        },
        columns=COLUMNS,
    )


def top_units(
    table: pd.DataFrame,
    feature: str,
    *,
    by: str = "pearson_r",
    signals: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    k: int | None = 10,
) -> pd.DataFrame:
    """The rows of a :func:`correlations` table for one feature, strongest ``|by|`` first.

    Adds ``abs_r`` and ``rank`` (1 = strongest); empty correlations sort last.

    Examples
    --------
    >>> t = pd.DataFrame({"layer": "l", "unit": [0, 1, 2], "signal": "cell_state", "feature": "f",
    ...                   "pearson_r": [0.2, -0.9, np.nan]})
    >>> top_units(t, "f")[["unit", "rank"]].values.tolist()
    [[1, 1], [0, 2], [2, 3]]
    """
    if by not in table.columns:
        raise UsageError(f"by must be a column of the table, got {by!r}")
    sel = table["feature"] == feature
    if not sel.any():
        raise UsageError(f"no rows for feature {feature!r}; the table has {sorted(table['feature'].unique())}")
    if signals is not None:
        sel &= table["signal"].isin([signals] if isinstance(signals, str) else list(signals))
    if layers is not None:
        sel &= table["layer"].isin([layers] if isinstance(layers, str) else list(layers))
    out = table[sel].assign(abs_r=lambda d: d[by].abs())
    out = out.sort_values("abs_r", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out if k is None else out.head(k)


__all__ = [
    "COLUMNS",
    "DEFAULT_MAX_RANK_ROWS",
    "LayerRows",
    "Moments",
    "constant_note",
    "correlations",
    "layer_rows",
    "average_ranks",
    "rank_pearson",
    "subsample",
    "top_units",
]
