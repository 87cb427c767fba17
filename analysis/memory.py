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
    frames = []
    for name in select_layers(trace, layers):
        lt = trace[name]
        signal = retention_signal(lt.info.cell_type)
        if signal is None:
            continue
        u = lt.info.units
        shift, sums = None, (np.zeros(u, np.int64), np.zeros(u), 0)
        for rows in iter_chunks(lt.shape[0], chunk):
            m = read_mask(lt, rows)
            if not m.any():
                continue
            g = np.abs(read(lt[signal], rows)[m])
            if shift is None:
                shift = log_gate_shift(g)
            sums = tuple(a + b for a, b in zip(sums, log_gate_sums(g, shift)))
        frames.append(half_life_frame(name, signal, u, shift, *sums))
    if not frames:
        return pd.DataFrame(
            {c: pd.Series(dtype=object if c in ("layer", "signal") else float) for c in HALF_LIFE_COLUMNS}
        )
    return pd.concat(frames, ignore_index=True)[HALF_LIFE_COLUMNS]


def log_gate_shift(g: np.ndarray) -> np.ndarray:
    """The shift of the log-gate sums (units,): the largest finite log of the first chunk's gates ``g`` (rows,
    units), so that the mean of a constant gate is exact."""
    is_zero = g == 0.0
    with np.errstate(divide="ignore"):
        logs = np.log(g)
    return np.where(is_zero.all(axis=0), 0.0, np.max(np.where(is_zero, -np.inf, logs), axis=0))


def log_gate_sums(g: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The map step of :func:`half_lives`: ``(zeros, sum of shifted finite logs, rows)`` of the gates ``g``."""
    is_zero = g == 0.0
    with np.errstate(divide="ignore"):
        logs = np.log(g)
    return is_zero.sum(axis=0), np.where(is_zero, 0.0, logs - shift).sum(axis=0), g.shape[0]


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


def retention_sums(g: np.ndarray, mask: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """The map step of :func:`retention_curves`: per lag ``1..max_lag``, the sum over windows of real steps of
    the product of the gates ``g`` (chunk, T, units; absolute values) and the number of windows."""
    t_len, u = g.shape[1], g.shape[2]
    order, n_real = compress_real(mask)  # windows of real steps only (masked steps carry the state)
    g = np.take_along_axis(g, order[..., None], axis=1)
    sums = np.zeros((max_lag, u))
    counts = np.zeros(max_lag, np.int64)
    prod = g  # prod[:, j] = product over the window of length L ending at real step j + L - 1
    for lag in range(1, max_lag + 1):  # lags (a few dozen), each one array op over the chunk
        if lag > 1:
            prod = prod[:, 1:] * g[:, : t_len - lag + 1]
        ends = np.arange(lag - 1, t_len)
        valid = ends[None, :] < n_real[:, None]
        sums[lag - 1] = np.where(valid[..., None], prod, 0.0).sum(axis=(0, 1))
        counts[lag - 1] = int(valid.sum())
    return sums, counts


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
