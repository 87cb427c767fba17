"""Per-unit statistics of every signal: moments, gate saturation, and where pre-activations sit on the curve.

Two tables, so that every column of each applies to every row (no NaN by design):

:func:`unit_stats`
    One row per ``layer, unit, signal`` for every signal that is an *activation of a stored
    pre-activation* -- the gates and the candidate (and a SimpleRNN's hidden state) -- and whose
    activation gatelens knows (:data:`ACTIVATION_SLOPES`; a layer with a custom activation has no
    rows here, with a logged warning). Columns:

    ``mean``, ``std``
        Over all unmasked steps of all sequences (``std`` is the population std, ddof=0).
    ``frac_below_0.1``, ``frac_above_0.9``
        Share of unmasked steps where the signal is < 0.1, > 0.9 (the gate saturation of
        Karpathy, Johnson & Fei-Fei 2015, "Visualizing and understanding recurrent networks").
    ``frac_saturated``, ``frac_linear``, ``mean_slope``
        Where the pre-activation ``x`` falls on the activation's curve, from the local slope
        ``a'(x)`` (the exact Keras 3 formula of the layer's own activation, e.g. hard_sigmoid =
        relu6(x + 3) / 6 with slope 1/6 on (-3, 3) and 0 outside). ``frac_saturated``: share of
        steps with ``a'(x) <= 0.1 * max a'`` (a flat tail: the unit barely responds to its input
        there); ``frac_linear``: share with ``a'(x) >= 0.9 * max a'`` (the near-linear middle);
        ``mean_slope``: mean of ``a'(x)``. For the sigmoid that is |x| >= 3.64 saturated and
        |x| <= 0.65 linear; for tanh |x| >= 1.82 and |x| <= 0.33; a relu is saturated where x <= 0.
        The two thresholds are the parameters ``saturated_slope`` and ``linear_slope``.
    ``activation``, ``n``
        The activation's Keras name, and the number of unmasked steps summarised.

:func:`signal_stats`
    One row per ``layer, unit, signal`` for *every* signal (states and pre-activations included):
    ``mean, std, min, max, frac_below_0.1, frac_above_0.9, n``.

Both read the trace once, a chunk of sequences at a time (float64 shifted sums: exact for a
constant signal, stable otherwise), so memory is bounded by ``chunk``, not by N. Masked steps
are left out. A layer with no unmasked step at all is an error.

Examples
--------
>>> import numpy as np
>>> from gatelens._examples import example_trace
>>> trace, sig = example_trace("lstm", n=1, steps=4, units=1)
>>> sig["forget_gate"][0, :, 0] = [0.05, 0.5, 0.95, 0.95]
>>> sig["forget_gate_pre"][0, :, 0] = np.log(sig["forget_gate"][0, :, 0] / (1 - sig["forget_gate"][0, :, 0]))
>>> df = unit_stats(trace)
>>> row = df[df.signal == "forget_gate"].iloc[0]
>>> float(row["frac_below_0.1"]), float(row["frac_above_0.9"]), round(float(row["mean"]), 4)
(0.25, 0.5, 0.6125)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from gatelens.analysis._float16 import from_ordered16, ordered16
from gatelens.analysis._reading import read, read_mask, select_layers
from gatelens.analysis.signals import PRE_ACTIVATION, activation_of
from gatelens.analysis.trace import Trace, iter_chunks
from gatelens.errors import DataError, UsageError

log = logging.getLogger(__name__)

LOW, HIGH = 0.1, 0.9
UNIT_STATS_COLUMNS = [
    "layer", "unit", "signal", "mean", "std", "frac_below_0.1", "frac_above_0.9",
    "frac_saturated", "frac_linear", "mean_slope", "activation", "n",
]  # fmt: skip
SIGNAL_STATS_COLUMNS = ["layer", "unit", "signal", "mean", "std", "min", "max", "frac_below_0.1", "frac_above_0.9", "n"]

_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for any x


def _softplus(x: np.ndarray) -> np.ndarray:
    """``log(1 + exp(x))`` as ``max(x, 0) + log1p(exp(-|x|))``: ``np.logaddexp(0, x)`` to 1 ulp, without overflow,
    and 7x faster (0.5 ms against 3.6 ms on (14935, 11) float64: NumPy's ``exp`` and ``log1p`` are vectorised,
    its ``logaddexp`` is not); the probes' log-loss (:mod:`gatelens.analysis.probe_fit`) uses it too."""
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def _step(cond: np.ndarray, value: float) -> np.ndarray:
    return np.where(cond, value, 0.0)


#: Local slope ``a'(x)`` of each Keras 3 activation, by its Keras name (default arguments).
ACTIVATION_SLOPES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: np.ones_like(x),
    "sigmoid": lambda x: _sigmoid(x) * _sigmoid(-x),
    "hard_sigmoid": lambda x: _step((x > -3.0) & (x < 3.0), 1.0 / 6.0),
    "sparse_sigmoid": lambda x: _step((x > -1.0) & (x < 1.0), 0.5),
    "tanh": lambda x: 1.0 - np.tanh(x) ** 2,
    "hard_tanh": lambda x: _step((x > -1.0) & (x < 1.0), 1.0),
    "softsign": lambda x: 1.0 / (1.0 + np.abs(x)) ** 2,
    "relu": lambda x: _step(x > 0.0, 1.0),
    "relu6": lambda x: _step((x > 0.0) & (x < 6.0), 1.0),
    "leaky_relu": lambda x: np.where(x > 0.0, 1.0, 0.2),
    "elu": lambda x: np.where(x > 0.0, 1.0, np.exp(np.minimum(x, 0.0))),
    "celu": lambda x: np.where(x > 0.0, 1.0, np.exp(np.minimum(x, 0.0))),
    "selu": lambda x: _SELU_SCALE * np.where(x > 0.0, 1.0, _SELU_ALPHA * np.exp(np.minimum(x, 0.0))),
    "softplus": lambda x: _sigmoid(x),
    "log_sigmoid": lambda x: _sigmoid(-x),
    "silu": lambda x: _sigmoid(x) * (1.0 + x * _sigmoid(-x)),
    "hard_silu": lambda x: np.where(x <= -3.0, 0.0, np.where(x >= 3.0, 1.0, (2.0 * x + 3.0) / 6.0)),
    "mish": lambda x: np.tanh(_softplus(x)) + x * (1.0 - np.tanh(_softplus(x)) ** 2) * _sigmoid(x),
    "sparse_plus": lambda x: np.where(x <= -1.0, 0.0, np.where(x < 1.0, 0.5 * (x + 1.0), 1.0)),
    "squareplus": lambda x: 0.5 * (1.0 + x / np.sqrt(x * x + 4.0)),
    "tanh_shrink": lambda x: np.tanh(x) ** 2,
    "soft_shrink": lambda x: _step(np.abs(x) > 0.5, 1.0),
    "hard_shrink": lambda x: _step(np.abs(x) > 0.5, 1.0),
}
ACTIVATION_SLOPES["swish"] = ACTIVATION_SLOPES["silu"]
ACTIVATION_SLOPES["hard_swish"] = ACTIVATION_SLOPES["hard_silu"]

#: Supremum of the slope over the real line, where it has a closed form.
_MAX_SLOPE = {
    "linear": 1.0, "sigmoid": 0.25, "hard_sigmoid": 1.0 / 6.0, "sparse_sigmoid": 0.5, "tanh": 1.0,
    "hard_tanh": 1.0, "softsign": 1.0, "relu": 1.0, "relu6": 1.0, "leaky_relu": 1.0, "elu": 1.0, "celu": 1.0,
    "selu": _SELU_SCALE * _SELU_ALPHA, "softplus": 1.0, "log_sigmoid": 1.0, "hard_silu": 1.5, "hard_swish": 1.5,
    "sparse_plus": 1.0, "squareplus": 1.0, "tanh_shrink": 1.0, "soft_shrink": 1.0, "hard_shrink": 1.0,
}  # fmt: skip


@cache
def max_slope(activation: str) -> float:
    """Largest slope of ``activation`` over the real line (the reference for saturated / linear).

    Closed form where there is one; for silu and mish, the maximum on a 1e-5 grid over [-10, 10].

    Examples
    --------
    >>> max_slope("sigmoid"), max_slope("hard_sigmoid") == 1 / 6
    (0.25, True)
    >>> round(max_slope("silu"), 4)
    1.0998
    """
    if activation not in ACTIVATION_SLOPES:
        raise UsageError(f"unknown activation {activation!r}; gatelens knows {sorted(ACTIVATION_SLOPES)}")
    if activation in _MAX_SLOPE:
        return _MAX_SLOPE[activation]
    grid = np.linspace(-10.0, 10.0, 2_000_001)
    return float(ACTIVATION_SLOPES[activation](grid).max())


def activation_slope(activation: str, x: np.ndarray) -> np.ndarray:
    """Local slope ``a'(x)`` of the Keras activation named ``activation``.

    Examples
    --------
    >>> activation_slope("hard_sigmoid", np.array([-4.0, 0.0, 2.9])).round(4).tolist()
    [0.0, 0.1667, 0.1667]
    """
    try:
        fn = ACTIVATION_SLOPES[activation]
    except KeyError:
        raise UsageError(f"unknown activation {activation!r}; gatelens knows {sorted(ACTIVATION_SLOPES)}") from None
    return fn(np.asarray(x, np.float64))


#: Signal values (rows x units) converted to float64 at a time by the map steps: 512 KB, so that the block, its flags
#: and keys stay in a core's 2 MB L2 cache (2 MB blocks were 10-20% slower), instead of float64 copies of a whole
#: 256-sequence chunk (50 MB a signal at 200 steps x 128 units).
_BLOCK_VALUES = 64 * 1024


def chunk_sums(v: np.ndarray, shift: np.ndarray) -> tuple[Any, ...]:
    """The map step of the moments: ``(n, sum, sum of squares, min, max, count < 0.1, count > 0.9)`` of the rows of
    ``v`` (k, units; any float dtype, summed in float64), the sums shifted by ``shift`` (units,).

    A float16 ``v`` (a float16 run store) takes its min, max and counts from its bits as ordered 16-bit keys
    (:func:`_float16_keys`: a quarter of the bytes of float64 copies, the same numbers), a block with a NaN from
    float64 as any other dtype.
    """
    shift = np.asarray(shift, np.float64)
    s1, s2 = np.zeros(v.shape[1:]), np.zeros(v.shape[1:])
    lo, hi = np.full(v.shape[1:], np.inf), np.full(v.shape[1:], -np.inf)
    below, above = np.zeros(v.shape[1:], np.int64), np.zeros(v.shape[1:], np.int64)
    step = max(1, _BLOCK_VALUES // max(1, int(np.prod(v.shape[1:]))))
    flags = np.empty((min(step, v.shape[0]), *v.shape[1:]), bool)
    ones = np.ones(min(step, v.shape[0]))
    half = v.dtype == np.float16 and v.ndim == 2
    if half:
        keys = np.empty(flags.shape, np.uint16)
        low_key, high_key = _float16_threshold_keys(LOW, HIGH)
    for start in range(0, v.shape[0], step):  # blocks of rows: float64 copies that stay in cache
        block = v[start : start + step]
        f = flags[: block.shape[0]]
        key = _float16_keys(block, keys[: block.shape[0]]) if half else None
        kmin = kmax = None
        if key is not None:
            kmin, kmax = key.min(axis=0), key.max(axis=0)
            if kmin.min() < _KEY_NEG_INF or kmax.max() > _KEY_POS_INF:  # a NaN: min and max are NaN as in float64
                key = None
        b = block.astype(np.float64)  # a copy (changed below)
        if key is None:  # min, max, comparisons in float64
            np.minimum(lo, b.min(axis=0), out=lo)
            np.maximum(hi, b.max(axis=0), out=hi)
            below += _count_true(np.less(b, LOW, out=f))
            above += _count_true(np.greater(b, HIGH, out=f))
        else:
            np.minimum(lo, _key_values(kmin), out=lo)
            np.maximum(hi, _key_values(kmax), out=hi)
            below += _count_keys(key, kmin, kmax, low_key, f, np.less)
            above += _count_keys(key, kmin, kmax, high_key, f, np.greater)
        b -= shift
        s1 += ones[: b.shape[0]] @ b  # a matrix-vector product: ~2x faster than the reduction
        s2 += np.einsum("ij,ij->j", b, b)
    return v.shape[0], s1, s2, lo, hi, below, above


def _count_keys(key: np.ndarray, kmin: np.ndarray, kmax: np.ndarray, bound: Any, f: np.ndarray, op: Any) -> Any:
    """Column counts of ``op(key, bound)`` (``np.less`` or ``np.greater``), without comparing where the columns' key
    ranges ``[kmin, kmax]`` decide it for every column (all on one side of ``bound``)."""
    every, none = (kmax < bound, kmin >= bound) if op is np.less else (kmin > bound, kmax <= bound)
    if (every | none).all():
        return np.where(every, key.shape[0], 0)
    return _count_true(op(key, bound, out=f))


#: Keys (:func:`_float16_keys`) of float16 -inf and +inf: every other non-NaN float16 lies between, every NaN outside.
_KEY_NEG_INF, _KEY_POS_INF = 0x03FF, 0xFC00


def _float16_keys(block: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The bits of a float16 array as uint16 keys in the order of the values (:func:`gatelens.analysis._float16.
    ordered16`: -0.0 sorts just below +0.0, NaNs outside the infinities), into ``out``.

    Examples
    --------
    >>> v = np.array([[-np.inf], [-2.0], [-0.0], [0.0], [1e-7], [0.5], [np.inf]], np.float16)
    >>> k = _float16_keys(v, np.empty(v.shape, np.uint16))
    >>> bool((np.diff(k.astype(int), axis=0) > 0).all()), bool((_key_values(k[:, 0]) == v[:, 0]).all())
    (True, True)
    """
    return ordered16(block.view(np.uint16), out)


def _key_values(key: np.ndarray) -> np.ndarray:
    """The float64 values of float16 keys (the inverse of :func:`_float16_keys`)."""
    return from_ordered16(key).view(np.float16).astype(np.float64)


@cache
def _float16_threshold_keys(low: float, high: float) -> tuple[np.uint16, np.uint16]:
    """Keys ``(a, b)`` such that a non-NaN float16 ``v`` has ``v < low`` exactly when its key is below ``a`` and
    ``v > high`` exactly when its key is above ``b`` (the comparisons made in float64)."""
    v = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    key = _float16_keys(v[:, None], np.empty((v.size, 1), np.uint16))[:, 0]
    x = v.astype(np.float64)
    return np.uint16(key[x >= low].min()), np.uint16(key[x <= high].max())


_BYTE_ROWS = 255  # rows of flags summed per byte lane before a lane could overflow


def _count_true(flags: np.ndarray) -> np.ndarray:
    """Column counts (int64) of a C-contiguous 2-D bool array.

    Eight columns of flags are one 64-bit word: words of up to 255 rows are summed as integers (each byte lane
    counts one column and cannot carry into the next), then the bytes are added up, instead of summing the
    flags cast to int64 one by one.

    Examples
    --------
    >>> f = np.random.default_rng(0).random((1000, 16)) < 0.3
    >>> bool((_count_true(f) == f.sum(axis=0)).all())
    True
    """
    rows, cols = flags.shape
    full = rows // _BYTE_ROWS * _BYTE_ROWS
    if cols % 8 or not flags.flags.c_contiguous or full == 0:
        return flags.sum(axis=0)
    words = flags[:full].view(np.uint64).reshape(-1, _BYTE_ROWS, cols // 8).sum(axis=1, dtype=np.uint64)
    out = words.view(np.uint8).reshape(-1, cols).sum(axis=0, dtype=np.int64)
    if full < rows:
        out += flags[full:].sum(axis=0)
    return out


@cache
def _float16_slopes(activation: str) -> np.ndarray:
    """``a'(x)`` of every float16 ``x`` (65536 values, indexed by the bits), computed in float64 as for any input."""
    x = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    with np.errstate(invalid="ignore", over="ignore"):
        return activation_slope(activation, x.astype(np.float64))


def saturation_counts(
    activation: str, pre: np.ndarray, saturated_slope: float = 0.1, linear_slope: float = 0.9
) -> np.ndarray:
    """The map step of the saturation curve: (3, units) = steps saturated, steps linear, sum of slopes.

    A float16 ``pre`` (a float16 run store) looks its slopes up in a table of the 65536 float16 values, the
    same float64 numbers as computing them; any other dtype is computed in float64, a block of rows at a time.
    """
    top = max_slope(activation)
    out = np.zeros((3, *pre.shape[1:]))
    table = _float16_slopes(activation) if pre.dtype == np.float16 else None
    step = max(1, _BLOCK_VALUES // max(1, int(np.prod(pre.shape[1:]))))
    flags = np.empty((min(step, pre.shape[0]), *pre.shape[1:]), bool)
    for start in range(0, pre.shape[0], step):
        block = pre[start : start + step]
        if table is not None:  # every index is a float16's bits: clipping never applies, and skips a bounds check
            slope = np.take(table, block.view(np.uint16), mode="clip")
        else:
            slope = activation_slope(activation, block)
        f = flags[: block.shape[0]]
        out[0] += _count_true(np.less_equal(slope, saturated_slope * top, out=f))
        out[1] += _count_true(np.greater_equal(slope, linear_slope * top, out=f))
        out[2] += slope.sum(axis=0)
    return out


class _Moments:
    """Streaming per-unit moments over rows of (k, units) blocks, in float64 shifted sums."""

    def __init__(self, units: int, shift: np.ndarray | None = None) -> None:
        self.n = 0
        self.shift = shift
        self.s1 = np.zeros(units)
        self.s2 = np.zeros(units)
        self.min = np.full(units, np.inf)
        self.max = np.full(units, -np.inf)
        self.below = np.zeros(units, np.int64)
        self.above = np.zeros(units, np.int64)

    def update(self, v: np.ndarray) -> None:
        if v.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = np.asarray(v[0], np.float64).copy()
        self.add(chunk_sums(v, self.shift))

    def add(self, sums: tuple[Any, ...]) -> None:
        """Merge the :func:`chunk_sums` of a chunk (taken with this shift)."""
        n, s1, s2, lo, hi, below, above = sums
        self.n += n
        self.s1 += s1
        self.s2 += s2
        self.min = np.minimum(self.min, lo)
        self.max = np.maximum(self.max, hi)
        self.below += below
        self.above += above

    def result(self) -> dict[str, np.ndarray]:
        m1 = self.s1 / self.n
        var = np.maximum(self.s2 / self.n - m1 * m1, 0.0)
        return {
            "mean": self.shift + m1,
            "std": np.sqrt(var),
            "min": self.min,
            "max": self.max,
            "frac_below_0.1": self.below / self.n,
            "frac_above_0.9": self.above / self.n,
        }


def activated_signals(info: Any, *, warn: bool = True) -> dict[str, tuple[str, str]]:
    """signal -> (its pre-activation signal, activation) for the gates and candidates whose activation gatelens
    knows the slope of (a warning names the others)."""
    activated: dict[str, tuple[str, str]] = {}
    for s, pre in PRE_ACTIVATION[info.cell_type].items():
        act = activation_of(info.cell_type, s, info.activation, info.recurrent_activation)
        if act in ACTIVATION_SLOPES:
            activated[s] = (pre, act)
        elif warn:
            log.warning(
                "layer %r: activation %r of %s is not one gatelens knows; no saturation statistics for it",
                info.name, act, s,
            )  # fmt: skip
    return activated


def layer_stats_frames(
    name: str, info: Any, mom: dict[str, _Moments], curve: dict[str, np.ndarray], activated: dict[str, tuple[str, str]]
) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """The combine step: ``(unit_stats rows or None, signal_stats rows)`` of one layer from its merged moments
    and saturation counts."""
    u = info.units
    signals = list(mom)
    n = mom[signals[0]].n
    if n == 0:
        raise DataError(f"layer {name!r} has no unmasked step: every step of every sequence is padding")
    res = {s: mom[s].result() for s in signals}
    cols = ["mean", "std", "min", "max", "frac_below_0.1", "frac_above_0.9"]
    sig_df = _long(name, signals, u, {c: np.stack([res[s][c] for s in signals]) for c in cols})
    sig_df["n"] = n
    act_signals = [s for s in signals if s in activated]
    if not act_signals:
        return None, sig_df
    columns = {c: np.stack([res[s][c] for s in act_signals]) for c in cols if c not in ("min", "max")}
    columns["frac_saturated"] = np.stack([curve[s][0] / n for s in act_signals])
    columns["frac_linear"] = np.stack([curve[s][1] / n for s in act_signals])
    columns["mean_slope"] = np.stack([curve[s][2] / n for s in act_signals])
    columns["activation"] = np.stack([np.full(u, activated[s][1], dtype=object) for s in act_signals])
    df = _long(name, act_signals, u, columns)
    df["n"] = n
    return df[UNIT_STATS_COLUMNS], sig_df


def _long(layer: str, signals: list[str], units: int, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """Stack per-signal (units,) arrays into rows ordered by unit, then signal."""
    k = len(signals)
    data = {
        "layer": np.full(units * k, layer, dtype=object),
        "unit": np.repeat(np.arange(units), k),
        "signal": np.tile(np.asarray(signals, dtype=object), units),
    }
    for name, arr in columns.items():  # arr: (k, units)
        data[name] = np.asarray(arr).T.reshape(-1)
    return pd.DataFrame(data)


def _scan(
    trace: Trace, layers: Sequence[str] | str | None, chunk: int, saturated_slope: float, linear_slope: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One pass over the trace: (unit_stats, signal_stats)."""
    if not 0.0 <= saturated_slope < linear_slope <= 1.0:
        raise UsageError(
            f"need 0 <= saturated_slope < linear_slope <= 1, got saturated_slope={saturated_slope!r}, "
            f"linear_slope={linear_slope!r}"
        )
    unit_frames, signal_frames = [], []
    for name in select_layers(trace, layers):
        lt = trace[name]
        info = lt.info
        mom = {s: _Moments(info.units) for s in info.signals}
        activated = activated_signals(info)
        curve = {s: np.zeros((3, info.units)) for s in activated}  # saturated count, linear count, slope sum
        for rows in iter_chunks(lt.shape[0], chunk):
            m = read_mask(lt, rows)
            if not m.any():
                continue
            every = bool(m.all())
            for sig in info.signals:  # one signal at a time: memory bounded by one (chunk, T, units) array
                values = read(lt[sig], rows, _stored_dtype(lt[sig]))  # converted to float64 a block at a time
                values = values.reshape(-1, values.shape[-1]) if every else values[m]  # no copy when unmasked
                mom[sig].update(values)
                for s, (pre, act) in activated.items():
                    if pre == sig:
                        curve[s] += saturation_counts(act, values, saturated_slope, linear_slope)
        unit_df, sig_df = layer_stats_frames(name, info, mom, curve, activated)
        signal_frames.append(sig_df)
        if unit_df is not None:
            unit_frames.append(unit_df)
    units = pd.concat(unit_frames, ignore_index=True) if unit_frames else _empty(UNIT_STATS_COLUMNS)
    sigs = pd.concat(signal_frames, ignore_index=True) if signal_frames else _empty(SIGNAL_STATS_COLUMNS)
    return units, sigs[SIGNAL_STATS_COLUMNS]


def _stored_dtype(array: Any) -> Any:
    """The array's own float dtype (float16 or float32 in a run store), float64 for anything else."""
    dtype = np.dtype(getattr(array, "dtype", np.float64))
    return dtype if dtype in (np.float16, np.float32, np.float64) else np.float64


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series(dtype=object if c in ("layer", "signal", "activation") else float) for c in columns}
    )


def unit_stats(
    trace: Trace,
    *,
    layers: Sequence[str] | str | None = None,
    chunk: int = 256,
    saturated_slope: float = 0.1,
    linear_slope: float = 0.9,
) -> pd.DataFrame:
    """Saturation and moments of every gate and candidate, per layer and unit.

    Parameters
    ----------
    trace : Trace
        In memory or opened lazily from a run store.
    layers : str or list of str, optional
        Default all layers.
    chunk : int
        Sequences read at a time.
    saturated_slope, linear_slope : float
        A step is *saturated* where ``a'(x) <= saturated_slope * max a'`` and *linear* where
        ``a'(x) >= linear_slope * max a'``.

    Returns
    -------
    DataFrame
        ``layer, unit, signal, mean, std, frac_below_0.1, frac_above_0.9, frac_saturated,
        frac_linear, mean_slope, activation, n`` (see the module docstring), no NaN.

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> trace, sig = example_trace("gru", n=3, steps=5, units=2, reset_after=True)
    >>> sig["update_gate_pre"][..., 1] = 8.0      # unit 1's update gate pinned in the sigmoid's flat tail
    >>> df = unit_stats(trace)
    >>> df[df.signal == "update_gate"][["unit", "frac_saturated", "frac_linear", "mean_slope"]].round(4)
       unit  frac_saturated  frac_linear  mean_slope
    0     0             0.0          1.0      0.2500
    3     1             1.0          0.0      0.0003
    """
    return _scan(trace, layers, chunk, saturated_slope, linear_slope)[0]


def signal_stats(trace: Trace, *, layers: Sequence[str] | str | None = None, chunk: int = 256) -> pd.DataFrame:
    """Moments of every signal (states and pre-activations included), per layer and unit.

    Returns
    -------
    DataFrame
        ``layer, unit, signal, mean, std, min, max, frac_below_0.1, frac_above_0.9, n``, no NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from gatelens._examples import example_trace
    >>> trace, sig = example_trace("lstm", n=1, steps=3, units=1, mask=np.array([[True, True, False]]))  # padded last
    >>> sig["cell_state"][0, :, 0] = [1.0, 2.0, 99.0]
    >>> row = signal_stats(trace).query("signal == 'cell_state'").iloc[0]
    >>> float(row["mean"]), float(row["std"]), float(row["max"]), int(row["n"])
    (1.5, 0.5, 2.0, 2)
    """
    return _scan(trace, layers, chunk, 0.1, 0.9)[1]


def stats_tables(trace: Trace, *, chunk: int = 256) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(unit_stats(trace), signal_stats(trace))`` from a single pass over the trace.

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> trace, sig = example_trace("lstm", n=2, steps=4, units=3)
    >>> units, signals = stats_tables(trace)
    >>> len(units), len(signals)      # 4 activated signals x 3 units; 10 signals x 3 units
    (12, 30)
    """
    return _scan(trace, None, chunk, 0.1, 0.9)
