"""How long each unit remembers: forget-gate half-lives and retention curves.

The gate that multiplies the carried memory is the LSTM ``forget_gate`` (``c_t = f_t c_{t-1} + i_t g_t``)
and the GRU ``update_gate`` (Keras: ``h_t = z_t h_{t-1} + (1 - z_t) hh_t``, so ``z`` is the share
kept). After ``L`` consecutive real steps, the share of the memory still there is the product of
the ``L`` gates. SimpleRNN layers have no such gate and are skipped.

Half-life
    ``half_life_steps = ln(0.5) / mean(ln |g|)`` with the mean over all unmasked steps of all
    sequences: the number of steps after which a geometric decay at the unit's average log-rate
    keeps half of the memory. A gate fixed at 0.5 gives exactly 1.0; a gate that is always 1
    (``mean_log_gate == 0``, no decay) gives ``inf``; a gate that is exactly 0 at some step makes
    ``mean_log_gate = -inf`` and the half-life 0. For gates in [0, 1] (every sigmoid-like
    recurrent activation) ``|g| = g``; the absolute value only matters for exotic recurrent
    activations with negative outputs, where it measures the *magnitude* kept. A positive mean
    (gates above 1 on average: memory that grows) also reports ``inf``.

Retention curve
    ``retention(L)`` = mean, over every window of ``L`` consecutive *unmasked* steps of every
    sequence, of ``prod |g|`` over the window: the share of the memory at the window's start that
    survives the window. Masked steps carry the state unchanged, so they are skipped (a window
    runs over real steps only). Lags longer than every sequence have no row.

Examples
--------
>>> from gatelens._examples import example_trace
>>> trace, sig = example_trace("lstm", n=2, steps=6, units=2)
>>> sig["forget_gate"][..., 0] = 0.5
>>> sig["forget_gate"][..., 1] = 1.0
>>> half_lives(trace)[["unit", "half_life_steps"]]
   unit  half_life_steps
0     0              1.0
1     1              inf
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import pandas as pd

from gatelens.analysis._reading import compress_real, get_layer, read, read_mask, retention_signal, select_layers
from gatelens.analysis.trace import Trace, iter_chunks
from gatelens.errors import DataError, UsageError

HALF_LIFE_COLUMNS = ["layer", "unit", "signal", "mean_log_gate", "half_life_steps", "n"]
RETENTION_COLUMNS = ["layer", "unit", "lag", "retention", "signal", "n_windows"]


def half_lives(trace: Trace, *, layers: Sequence[str] | str | None = None, chunk: int = 256) -> pd.DataFrame:
    """Per unit, the half-life in steps of the memory under the forget gate (GRU: update gate).

    Parameters
    ----------
    trace : Trace
    layers : str or list of str, optional
        Default every LSTM and GRU layer.
    chunk : int
        Sequences read at a time.

    Returns
    -------
    DataFrame
        ``layer, unit, signal, mean_log_gate, half_life_steps, n`` (``signal`` is ``forget_gate``
        or ``update_gate``; ``n`` the number of unmasked steps). No NaN; ``inf`` and ``-inf`` as
        documented in the module docstring.

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> trace, sig = example_trace("gru", n=1, steps=4, units=1, fill=0.25, reset_after=True)
    >>> float(half_lives(trace)["half_life_steps"].iloc[0])   # 0.25 = 0.5 ** 2
    0.5
    """
    return _memory_pass(trace, select_layers(trace, layers), chunk, None)[0]


def memory_tables(trace: Trace, *, max_lag: int = 50, chunk: int = 256) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(half_lives(trace), retention curves of every LSTM and GRU layer)`` from one read of each keep gate.

    The same numbers as :func:`half_lives` and :func:`retention_curves` (the same sums, chunk by chunk); the
    retention table is empty (no columns) when no layer has a keep gate.

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> trace, sig = example_trace("lstm", n=2, steps=5, units=1)
    >>> sig["forget_gate"][...] = 0.5
    >>> half, ret = memory_tables(trace, max_lag=2)
    >>> float(half["half_life_steps"].iloc[0]), ret["retention"].tolist()
    (1.0, [0.5, 0.25])
    """
    if int(max_lag) < 1:
        raise UsageError(f"max_lag must be >= 1, got {max_lag!r}")
    return _memory_pass(trace, list(trace.layers), chunk, int(max_lag))


def _memory_pass(trace: Trace, names: list[str], chunk: int, max_lag: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Half-lives (and, with ``max_lag``, retention curves) of the layers ``names`` that have a keep gate."""
    frames, curves = [], []
    for name in names:
        lt = trace[name]
        signal = retention_signal(lt.info.cell_type)
        if signal is None:
            continue
        n_seq, t_len, u = lt.shape
        lag = None if max_lag is None else min(max_lag, t_len)
        shift, sums = None, (np.zeros(u, np.int64), np.zeros(u), 0)
        ret_sums, ret_counts = (None, None) if lag is None else (np.zeros((lag, u)), np.zeros(lag, np.int64))
        for rows in iter_chunks(n_seq, chunk):
            m = read_mask(lt, rows)
            if not m.any():
                continue
            raw = np.abs(read(lt[signal], rows, _stored_dtype(lt[signal])))  # float16 stays float16 for the logs
            real = raw[m]
            if shift is None:
                shift = log_gate_shift(real)
            sums = tuple(a + b for a, b in zip(sums, log_gate_sums(real, shift)))
            if lag is not None:
                s, c = retention_sums(raw, m, lag)
                ret_sums += s
                ret_counts += c
        frames.append(half_life_frame(name, signal, u, shift, *sums))
        if lag is not None:
            curves.append(retention_frame(name, signal, ret_sums, ret_counts))
    if frames:
        half = pd.concat(frames, ignore_index=True)[HALF_LIFE_COLUMNS]
    else:
        half = pd.DataFrame(
            {c: pd.Series(dtype=object if c in ("layer", "signal") else float) for c in HALF_LIFE_COLUMNS}
        )
    return half, (pd.concat(curves, ignore_index=True) if curves else pd.DataFrame())


def _stored_dtype(array) -> np.dtype:
    """The array's own float dtype (float16 or float32 in a run store), float64 for anything else."""
    dtype = np.dtype(getattr(array, "dtype", np.float64))
    return dtype if dtype in (np.float16, np.float32, np.float64) else np.dtype(np.float64)


def log_gate_shift(g: np.ndarray) -> np.ndarray:
    """The shift of the log-gate sums (units,): the largest finite log of the first chunk's gates ``g`` (rows,
    units), so that the mean of a constant gate is exact.

    The log is increasing, so that is the log of the largest gate (0 where every gate is 0): one max over the
    rows in their own dtype, no float64 logs of the chunk. Non-negative float16 gates are ordered as their bits
    are: their max is that of the bits (as uint16, ~10x faster than NumPy's float16 max; a NaN is the max of both).
    """
    bits = g.view(np.uint16) if g.dtype == np.float16 else None
    if bits is not None and not (bits >= 0x8000).any():  # no sign bit set: the bits sort as the values
        top = np.asarray(bits.max(axis=0).view(np.float16), np.float64)
    else:
        top = np.asarray(g.max(axis=0), np.float64)
    with np.errstate(divide="ignore"):
        return np.where(top == 0.0, 0.0, np.log(top))


@cache
def _float16_logs() -> np.ndarray:
    """``log(x)`` of every float16 ``x`` (indexed by its bits), computed in float64 as for any input."""
    x = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


def log_gate_sums(g: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The map step of :func:`half_lives`: ``(zeros, sum of shifted finite logs, rows)`` of the gates ``g``.

    A float16 ``g`` (a float16 run store) looks its logs up in a table of the 65536 float16 values (the same
    float64 numbers as computing them); any other dtype is computed in float64.
    """
    zeros, s1 = np.zeros(g.shape[1:], np.int64), np.zeros(g.shape[1:])
    table = _float16_logs() if g.dtype == np.float16 else None
    step = max(1, _RETENTION_BLOCK_VALUES // max(1, int(np.prod(g.shape[1:]))))
    for start in range(0, g.shape[0], step):  # blocks of rows: the float64 logs stay in cache
        gb = g[start : start + step]
        if table is not None:  # from the bits: NumPy's float16 comparisons convert value by value
            bits = gb.view(np.uint16)
            is_zero = (bits & 0x7FFF) == 0  # +0.0 and -0.0
            logs = np.take(table, bits, mode="clip")  # every index is a float16's bits: clipping never applies
        else:
            is_zero = gb == 0.0
            with np.errstate(divide="ignore"):
                logs = np.log(np.asarray(gb, np.float64))
        logs -= shift
        if is_zero.any():
            logs[is_zero] = 0.0
            zeros += is_zero.sum(axis=0)
        s1 += logs.sum(axis=0)
    return zeros, s1, g.shape[0]


def half_life_frame(
    name: str, signal: str, units: int, shift: np.ndarray | None, zeros: np.ndarray, s1: np.ndarray, n: int
) -> pd.DataFrame:
    """The combine step of :func:`half_lives`: one layer's rows from its summed :func:`log_gate_sums`."""
    if n == 0:
        raise DataError(f"layer {name!r} has no unmasked step: every step of every sequence is padding")
    finite = n - zeros
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite > 0, shift + s1 / np.maximum(finite, 1), 0.0)
    mean = np.where(zeros > 0, -np.inf, mean)
    with np.errstate(divide="ignore"):
        half = np.where(mean < 0, np.log(0.5) / np.where(mean < 0, mean, -1.0), np.inf)
    half = np.abs(half)  # ln(0.5) / -inf is -0.0: report 0.0
    return pd.DataFrame(
        {"layer": name, "unit": np.arange(units), "signal": signal, "mean_log_gate": mean, "half_life_steps": half,
         "n": n}
    )  # fmt: skip


#: Values (sequences x steps x units) of a chunk whose window products are formed at a time in
#: :func:`retention_sums`: 2 sequences at 200 steps x 128 units, so the ``max_lag`` passes over the block's two float64
#: arrays (1 MB) stay in the core's L2 cache (blocks of 10 sequences, 4 MB, were twice as slow).
_RETENTION_BLOCK_VALUES = 64 * 1024


def retention_sums(g: np.ndarray, mask: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """The map step of :func:`retention_curves`: per lag ``1..max_lag``, the sum over windows of real steps of
    the product of the gates ``g`` (chunk, T, units; absolute values) and the number of windows.

    The real steps of each sequence are moved to its front and the steps after them set to 0, so a window that
    reaches past a sequence's real steps has product 0: every window of the block is summed and the number of
    windows is counted from the lengths. A block of a few sequences is laid out time-major (steps, sequences,
    units) in float64, so that the windows of length L starting at every step are one contiguous prefix of the
    block: one in-place product and one matrix-vector sum a lag. Where a sum is not finite (a gate of inf or NaN,
    whose product with a padding 0 is NaN) the chunk is summed window by valid window instead.
    """
    t_len, u = g.shape[1], g.shape[2]
    every = bool(mask.all())
    order, n_real = compress_real(mask)  # windows of real steps only (masked steps carry the state)
    lags = np.arange(1, max_lag + 1)
    counts = np.maximum(n_real[None, :] - lags[:, None] + 1, 0).sum(axis=1).astype(np.int64)
    sums = np.zeros((max_lag, u))
    padding = None if every else np.arange(t_len)[None, :] >= n_real[:, None]
    block = max(1, _RETENTION_BLOCK_VALUES // max(1, t_len * u))
    ones = np.ones(t_len * block)
    for start in range(0, g.shape[0], block):
        sl = slice(start, start + block)
        gb = g[sl] if every else np.take_along_axis(g[sl], order[sl, :, None], axis=1)
        gb = np.ascontiguousarray(gb.transpose(1, 0, 2), dtype=np.float64)  # (T, sequences, units): a copy
        if padding is not None:
            gb[padding[sl].T] = 0.0
        k = gb.shape[1]
        flat = gb.reshape(t_len * k, u)
        prod = flat.copy()  # prod[j * k + s] = product over the window of length L starting at real step j of s
        sums[0] += ones[: t_len * k] @ prod
        for lag in range(2, max_lag + 1):
            rows = (t_len - lag + 1) * k
            view = prod[:rows]
            view *= flat[(lag - 1) * k :]
            sums[lag - 1] += ones[:rows] @ view
    if not np.isfinite(sums).all():
        whole = np.asarray(np.take_along_axis(g, order[..., None], axis=1), np.float64)
        sums = _retention_sums_windowed(whole, n_real, max_lag)
    return sums, counts


def _retention_sums_windowed(g: np.ndarray, n_real: np.ndarray, max_lag: int) -> np.ndarray:
    """:func:`retention_sums`'s sums over the valid windows only (``g`` compressed, real steps first)."""
    t_len, u = g.shape[1], g.shape[2]
    sums = np.zeros((max_lag, u))
    prod = g
    for lag in range(1, max_lag + 1):
        if lag > 1:
            prod = prod[:, : t_len - lag + 1] * g[:, lag - 1 :]
        valid = np.arange(t_len - lag + 1)[None, :] + lag - 1 < n_real[:, None]
        sums[lag - 1] = np.where(valid[..., None], prod, 0.0).sum(axis=(0, 1))
    return sums


def retention_frame(layer: str, signal: str, sums: np.ndarray, counts: np.ndarray) -> pd.DataFrame:
    """The combine step of :func:`retention_curves`: one layer's rows from its summed :func:`retention_sums`."""
    u = sums.shape[1]
    keep = counts > 0
    lags = np.arange(1, len(counts) + 1)[keep]
    ret = (sums[keep] / counts[keep, None]).T  # (u, lags)
    k = len(lags)
    return pd.DataFrame(
        {
            "layer": layer,
            "unit": np.repeat(np.arange(u), k),
            "lag": np.tile(lags, u),
            "retention": ret.reshape(-1),
            "signal": signal,
            "n_windows": np.tile(counts[keep], u),
        }
    )[RETENTION_COLUMNS]


def retention_curves(trace: Trace, layer: str, *, max_lag: int = 50, chunk: int = 256) -> pd.DataFrame:
    """Per unit and lag ``L = 1..max_lag``, the mean share of memory kept over ``L`` real steps.

    Parameters
    ----------
    trace : Trace
    layer : str
        An LSTM or GRU layer.
    max_lag : int
    chunk : int
        Sequences read at a time.

    Returns
    -------
    DataFrame
        ``layer, unit, lag, retention, signal, n_windows`` (rows ordered by unit, then lag).

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> trace, sig = example_trace("lstm", n=1, steps=4, units=1)
    >>> sig["forget_gate"][0, :, 0] = [1.0, 0.5, 0.5, 1.0]
    >>> retention_curves(trace, "lstm", max_lag=3)[["lag", "retention", "n_windows"]]
       lag  retention  n_windows
    0    1     0.7500          4
    1    2     0.4167          3
    2    3     0.2500          2
    """
    lt = get_layer(trace, layer)
    signal = retention_signal(lt.info.cell_type)
    if signal is None:
        raise UsageError(
            f"layer {layer!r} is a {lt.info.cell_type} layer: it has no forget or update gate, so no retention curve"
        )
    if int(max_lag) < 1:
        raise UsageError(f"max_lag must be >= 1, got {max_lag!r}")
    n_seq, t_len, u = lt.shape
    max_lag = min(int(max_lag), t_len)
    sums = np.zeros((max_lag, u))
    counts = np.zeros(max_lag, np.int64)
    for rows in iter_chunks(n_seq, chunk):
        m = read_mask(lt, rows)
        if m.any():
            s, c = retention_sums(np.abs(read(lt[signal], rows)), m, max_lag)
            sums += s
            counts += c
    return retention_frame(layer, signal, sums, counts)
