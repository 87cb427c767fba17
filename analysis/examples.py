"""Top, bottom, rise, drop and decile examples of every unit, with their context, and activation histograms.

For every layer, unit and signal, over every real (unmasked) step of the whole run, streamed a chunk of
sequences at a time (memory bounded by the chunk and by ``k``, never by the number of sequences):

``top`` / ``bottom``
    The ``k`` steps with the largest / smallest value.
``rise`` / ``drop`` (gates only)
    The ``k`` largest increases / decreases from the previous real step in processing order (``t - 1``;
    ``t + 1`` for a ``go_backwards`` layer): where the gate opens / shuts. ``value`` is the change, the
    float32 difference of the two stored values; the first real step of a sequence has no change.
``decile_0`` ... ``decile_9``
    ``k_decile`` steps drawn from each tenth of the unit's range ``[min, max]`` of that signal
    (decile ``j`` holds the values of histogram bins ``j * bins/10`` to ``(j + 1) * bins/10 - 1``; the
    maximum is in the last). The draw is uniform and reproducible: each step's priority is a hash of its
    position, and the ``k_decile`` steps of lowest priority are kept.

**Ties** are broken by position: of equal values the earlier step wins, "earlier" meaning the smaller
``(sequence, step)``, sequence first. Ranks count from 0. Values are compared as the stored float32
(``-0.0`` equals ``0.0``); the selection is exact: it equals sorting every value of the run in memory
(``tests/test_examples_search.py`` checks this against NumPy's ``lexsort``).

**Histograms**: ``bins`` (default 50) equal-width bins over ``[min, max]`` of each unit's signal, the last
bin closed; bin of ``v`` = ``floor(bins * (v - min) / (max - min))`` in float64, clipped to the last bin
(all in bin 0 when ``min == max``). Counts sum to the unit's number of real steps.

Each example carries its **context**: the window of ``context`` steps either side (clipped to the
sequence) as a JSON list -- the tokens for text, the model's input vector (one value per feature) for
numeric inputs -- with ``context_start`` (the first step of the window), ``position`` (the example's
index in it) and ``context_values`` (that unit's signal over the window, JSON, ``null`` on masked steps).

Two passes over the run: the first finds the extremes and each unit's range, the second counts the
histograms, draws the decile examples and gathers every example's window of its signal from the block it has
read; the mask and the tokens (or inputs) of the windows are read last, a block of sequences at a time.

Examples
--------
>>> from gatelens._examples import example_trace
>>> trace, sig = example_trace("lstm", n=2, steps=4, units=1)
>>> sig["forget_gate"][:, :, 0] = [[0.9, 0.1, 0.8, 0.8], [0.2, 0.8, 0.3, 0.9]]
>>> ex, hist = unit_examples(trace, signals=["forget_gate"], k=2, context=1)
>>> ex[ex.kind == "top"][["rank", "sequence", "step"]].values.tolist()   # 0.9 twice: the earlier first
[[0, 0, 0], [1, 1, 3]]
>>> d = ex[ex.kind == "drop"].iloc[0]                               # 0.9 -> 0.1 at step 1
>>> int(d.sequence), int(d.step), round(float(d.value), 4)
(0, 1, -0.8)
>>> int(hist["count"].sum())
8
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from gatelens.analysis._float16 import from_ordered16, ordered16
from gatelens.analysis._reading import (
    compress_real,
    processing,
    read,
    read_mask,
    select_layers,
    to_time_index,
    token_strings,
)
from gatelens.analysis.signals import GATES, not_pre
from gatelens.analysis.trace import Trace, iter_chunks

log = logging.getLogger(__name__)

DECILES = tuple(f"decile_{j}" for j in range(10))
KINDS = ("top", "bottom", "rise", "drop", *DECILES)
EXAMPLE_COLUMNS = [
    "layer", "unit", "signal", "kind", "rank", "sequence", "step", "value",
    "context", "context_start", "position", "context_values",
]  # fmt: skip
HISTOGRAM_COLUMNS = ["layer", "unit", "signal", "bin", "lo", "hi", "count"]

#: Sequences the passes (and the context reads) hold at once, at most ``chunk``: every table is the same for any
#: split into blocks (top-k sets merged exactly, counts summed), and the work arrays of a block (the values as read,
#: int64 bin codes in one scratch array, int8 deciles, float32 changes, key orders) stay ~0.1 GB at 64 x 200 x 128
#: however many sequences a chunk has (unit_examples' peak: ~175 MB above the opened run at 256 and 1024 x 200).
PASS_SEQUENCES = 64

#: Values :func:`_bin_codes` bins at a time: its float64 buffers (0.5 MB each) stay in the CPU's cache.
_BIN_BLOCK = 1 << 16

_LOW32 = np.uint64(0xFFFFFFFF)
_MAX_POSITIONS = 0xFFFFFFFF  # positions sequence * T + step must fit in 32 bits (and never be all ones)


# ----------------------------------------------------------------------------------------------------------------
# exact, tie-free keys: (value order, position) packed into one uint64


def ordered_bits(values: np.ndarray) -> np.ndarray:
    """float32 values -> uint64 whose unsigned order is the values' order (``-0.0`` maps with ``0.0``).

    Examples
    --------
    >>> o = ordered_bits(np.array([-2.0, -0.0, 0.0, 1e-30, 3.0], np.float32))
    >>> bool(np.all(np.diff(o.astype(np.int64)) >= 0)), bool(o[1] == o[2])
    (True, True)
    """
    v = np.asarray(values, np.float32) + np.float32(0.0)  # -0.0 + 0.0 is +0.0
    b = v.view(np.uint32).astype(np.uint64)
    neg = (b >> np.uint64(31)) == 1
    return np.where(neg, (~b) & _LOW32, b | np.uint64(0x80000000))


def _from_ordered(o: np.ndarray) -> np.ndarray:
    o = np.asarray(o, np.uint64)
    pos = (o >> np.uint64(31)) == 1
    b = np.where(pos, o & np.uint64(0x7FFFFFFF), (~o) & _LOW32).astype(np.uint32)
    return b.view(np.float32)


def _key(order_bits: np.ndarray, positions: np.ndarray, *, descending: bool) -> np.ndarray:
    """uint64 keys, larger = ranked first: by value (descending or ascending), then by earlier position."""
    hi = order_bits if descending else (_LOW32 - order_bits)
    return (hi << np.uint64(32)) | (_LOW32 - positions.astype(np.uint64))


def _unkey(keys: np.ndarray, *, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    hi = keys >> np.uint64(32)
    bits = hi if descending else (_LOW32 - hi)
    return _from_ordered(bits), (_LOW32 - (keys & _LOW32)).astype(np.int64)


def position_priority(positions: np.ndarray) -> np.ndarray:
    """A reproducible pseudo-random 32-bit priority per position (splitmix64's finaliser, top bits).

    Examples
    --------
    >>> position_priority(np.array([0, 1, 2])).tolist() == position_priority(np.array([0, 1, 2])).tolist()
    True
    """
    z = np.asarray(positions, np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return z >> np.uint64(32)


def _top_keys(running: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest keys per column of ``running`` and ``keys`` together (unsorted)."""
    both = np.concatenate([running, keys], axis=0) if len(running) else keys
    if len(both) <= k:
        return both
    return np.partition(both, len(both) - k, axis=0)[len(both) - k :]


def _sorted_desc(keys: np.ndarray) -> np.ndarray:
    return np.sort(keys, axis=0)[::-1]


def _ordered32(values: np.ndarray) -> np.ndarray:
    """:func:`ordered_bits` as uint32 (the same numbers, half the bytes)."""
    b = (np.asarray(values, np.float32) + np.float32(0.0)).view(np.uint32)
    flip = (b.view(np.int32) >> 31).view(np.uint32)  # all ones where negative (arithmetic shift), else 0
    flip |= np.uint32(0x80000000)
    return np.bitwise_xor(b, flip, out=flip)  # negative: ~b; else b with the top bit set


def _group_top(keys: np.ndarray, groups: np.ndarray, n_groups: int, k: int) -> np.ndarray:
    """(k, n_groups) uint64: the ``k`` largest of ``keys`` (unique, non-zero) in each group, 0 where a group has fewer."""
    out = np.zeros((k, n_groups), np.uint64)
    if not len(keys):
        return out
    order = np.lexsort((~keys, groups))  # by group, then largest key first
    g = groups[order]
    starts = np.searchsorted(g, np.arange(n_groups))
    rank = np.arange(len(g)) - starts[g]
    keep = rank < k
    out[rank[keep], g[keep]] = keys[order[keep]]
    return out


def _stream_top(running: np.ndarray, hi: np.ndarray, positions: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest keys ``(hi << 32) | (2^32 - 1 - position)`` per column of ``running`` and of this chunk's
    ``hi`` (m, units; uint32 value order) at ``positions`` (m,), every position later than any in ``running``.

    The same set as :func:`_top_keys` of all the chunk's keys, without building or partitioning them: only the
    entries that can enter are keyed. An entry can enter only if its ``hi`` reaches a lower bound of the chunk's own
    k-th largest (the smallest of the maxima of ``k`` disjoint blocks of rows: ``k`` distinct entries at least that
    large) and, once ``running`` holds ``k`` keys, exceeds the ``hi`` of its k-th (on a tie the running key's earlier
    position wins). A zero key stands for no entry.
    """
    m, units = hi.shape
    cand = np.ones(hi.shape, bool)
    if m >= k:
        block = m // k
        bound = hi[: block * k].reshape(k, block, units).max(axis=1).min(axis=0)
        cand &= hi >= bound
    if len(running) >= k and not (running == 0).any():
        cand &= hi > (running.min(axis=0) >> np.uint64(32)).astype(np.uint32)
    r, u = np.divmod(np.flatnonzero(cand), units)  # (2-D nonzero costs ~30x more)
    if len(r) > hi.size // 4:  # mostly ties (a constant unit): keying all of them is no dearer
        return _top_keys(running, _key(hi.astype(np.uint64), np.broadcast_to(positions[:, None], hi.shape),
                                        descending=True), k)  # fmt: skip
    keys = (hi[r, u].astype(np.uint64) << np.uint64(32)) | (_LOW32 - positions[r].astype(np.uint64))
    return _top_keys(running, _group_top(keys, u, units, k), k)


def _stream_top_values(running: np.ndarray, v: np.ndarray, positions: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """:func:`_stream_top` of ``hi = _ordered32(v)`` (``largest``) or of ``~hi`` (the smallest first), for ``v`` (m,
    units) float32 without NaN: the bounds are compared as floats, and only the entries that pass are turned into
    keys (``_ordered32`` of every entry costs more than a comparison). Once ``running`` is full its k-th alone is the
    bound, unless more than ``16 k`` entries per unit pass it; then the chunk's own bound is applied as well."""
    m, units = v.shape
    above = np.greater if largest else np.less
    kth = None
    if len(running) >= k and not (running == 0).any():
        code = (running.min(axis=0) >> np.uint64(32)).astype(np.uint32)
        kth = _from_ordered(code if largest else ~code)  # -0.0 and 0.0 read as 0.0, as in the keys
        if np.isnan(kth).any():
            kth = None
    idx = np.flatnonzero(above(v, kth)) if kth is not None else None  # (2-D nonzero costs ~30x more)
    if (idx is None or len(idx) > 16 * k * units) and m >= k:
        blocks = v[: (m // k) * k].reshape(k, m // k, units)
        bound = blocks.max(axis=1).min(axis=0) if largest else blocks.min(axis=1).max(axis=0)
        if np.isfinite(bound).all():  # v >= bound is v beyond the float next to bound
            thr = np.nextafter(bound, np.float32(-np.inf if largest else np.inf))
            if kth is not None:
                thr = np.maximum(thr, kth) if largest else np.minimum(thr, kth)
            idx = np.flatnonzero(above(v, thr))
    if idx is None or len(idx) > v.size // 4:  # no bound, or mostly ties: as _stream_top
        o = _ordered32(v)
        return _stream_top(running, o if largest else ~o, positions, k)
    r, u = np.divmod(idx, units)
    o = _ordered32(v[r, u])
    keys = ((o if largest else ~o).astype(np.uint64) << np.uint64(32)) | (_LOW32 - positions[r].astype(np.uint64))
    return _top_keys(running, _group_top(keys, u, units, k), k)


# ----------------------------------------------------------------------------------------------------------------
# the two passes


def _default_signals(info: Any, signals: Sequence[str] | None) -> list[str]:
    if signals is None:
        return not_pre(info.signals)
    unknown = [s for s in signals if s not in info.signals]
    if len(unknown) == len(signals):
        raise ValueError(f"layer {info.name!r} has none of the signals {list(signals)}; it has {list(info.signals)}")
    return [s for s in info.signals if s in set(signals)]


def _chunk_real(lt: Any, rows: slice, t_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask (n, T), flat indices of the real steps in the chunk, their global positions)."""
    m = read_mask(lt, rows)
    flat = np.flatnonzero(m.ravel())
    seq = rows.start + flat // t_len
    return m, flat, seq * t_len + flat % t_len


def _changes(values: np.ndarray, m: np.ndarray, back: bool, start: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 changes from the previous real step (processing order) and the global positions of their steps."""
    n, t_len = m.shape
    if m.all():  # every step real: the previous step is the neighbour, no reordering
        comp = processing(values, back)
        delta = (comp[:, 1:] - comp[:, :-1]).reshape(-1, values.shape[2])  # float32 - float32, rows (s, pos)
        s, pos = np.divmod(np.arange(n * (t_len - 1)), t_len - 1)
        return delta, (start + s) * t_len + to_time_index(pos + 1, t_len, back)
    order, n_real = compress_real(processing(m, back))
    comp = np.take_along_axis(processing(values, back), order[..., None], axis=1)
    delta = comp[:, 1:] - comp[:, :-1]  # float32 - float32
    valid = np.arange(1, t_len)[None, :] < n_real[:, None]
    s, pos = np.nonzero(valid)
    step = to_time_index(order[s, pos + 1], t_len, back)
    return delta[s, pos], (start + s) * t_len + step


def unit_examples(
    trace: Trace,
    *,
    layers: Sequence[str] | str | None = None,
    signals: Sequence[str] | None = None,
    k: int = 5,
    k_decile: int = 2,
    context: int = 8,
    bins: int = 50,
    chunk: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The examples and histograms of every unit (see the module docstring).

    Parameters
    ----------
    trace : Trace
        In memory or opened from a run store (read ``chunk`` sequences at a time).
    layers : str or list of str, optional
        Default all layers.
    signals : list of str, optional
        Default every signal but the pre-activations. Signals a layer does not have are skipped.
    k : int
        Examples per unit and signal of each of ``top``, ``bottom``, ``rise``, ``drop``.
    k_decile : int
        Examples per decile.
    context : int
        Steps of context either side of each example.
    bins : int
        Histogram bins, a multiple of 10 (the deciles group them).
    chunk : int
        Sequences read at a time.
    progress : callable(done, total), optional
        Called after each chunk of each pass.

    Returns
    -------
    examples : DataFrame
        :data:`EXAMPLE_COLUMNS`, ordered by layer, signal, unit, kind (as in :data:`KINDS`), rank.
    histograms : DataFrame
        :data:`HISTOGRAM_COLUMNS`, ``lo``/``hi`` the bin's edges.

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> trace, sig = example_trace("lstm", n=2, steps=4, units=1)
    >>> sig["forget_gate"][:, :, 0] = [[0.9, 0.1, 0.8, 0.8], [0.2, 0.8, 0.3, 0.9]]
    >>> ex, hist = unit_examples(trace, signals=["forget_gate"], k=1, k_decile=0, context=1, bins=10)
    >>> ex[["kind", "sequence", "step", "context_start", "position"]].values.tolist()
    [['top', 0, 0, 0, 0], ['bottom', 0, 1, 0, 1], ['rise', 0, 2, 1, 1], ['drop', 0, 1, 0, 1]]
    >>> ex["value"].round(2).tolist()                   # rise and drop: the change from the step before
    [0.9, 0.1, 0.7, -0.8]
    >>> hist["count"].tolist()                          # 10 bins over [0.1, 0.9]: every real step counted once
    [1, 1, 1, 0, 0, 0, 0, 0, 3, 2]

    See the module docstring for the ties and the deciles.
    """
    if k < 1 or k_decile < 0 or context < 0:
        raise ValueError(f"need k >= 1, k_decile >= 0 and context >= 0, got {k!r}, {k_decile!r}, {context!r}")
    if bins < 10 or bins % 10:
        raise ValueError(f"bins must be a positive multiple of 10, got {bins!r}")
    names = select_layers(trace, layers)
    plans = []
    for name in names:
        lt = trace[name]
        plans.append((name, lt, _default_signals(lt.info, signals)))
    block = min(chunk, PASS_SEQUENCES)
    total = 2 * sum(len(list(iter_chunks(lt.shape[0], block))) for _, lt, _ in plans)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    ex_parts: list[tuple[str, list[str], np.ndarray, dict[str, np.ndarray], dict[str, Any]]] = []
    hist_parts: list[tuple[str, str, dict[str, np.ndarray]]] = []
    for name, lt, sigs in plans:
        n, t_len, units = lt.shape
        if n * t_len >= _MAX_POSITIONS:
            raise ValueError(f"layer {name!r}: {n} x {t_len} steps is more than examples can index (2^32 - 1)")
        best, lo, hi, n_real = _extremes(lt, sigs, block, k, tick)
        parts = _final_examples(best, sigs)
        counts, draw_keys, draw_win, fixed_win = _bins_and_draws(
            lt, sigs, block, lo, hi, bins, k_decile, context, parts, tick
        )
        windows = [fixed_win]
        for si, s in enumerate(sigs):
            for j in range(10):
                keys = draw_keys[s][:, j]  # in descending order, zeros (no entry) last
                r, u = np.nonzero(keys != 0)
                if not len(r):
                    continue
                pos = (_LOW32 - (keys[r, u] & _LOW32)).astype(np.int64)
                parts.append((si, KINDS.index(DECILES[j]), u, r, pos, np.full(len(r), np.nan)))
                windows.append(draw_win[s][r, j, u])
            if n_real:
                hist_parts.append((name, s, _histogram_columns(lo[s], hi[s], bins, counts[s])))
        if parts:
            ex_parts.append(_layer_examples(trace, names, name, lt, sigs, parts, windows, context, block))
    examples = _example_table(ex_parts)
    histograms = _histogram_table(hist_parts)
    return examples[EXAMPLE_COLUMNS], histograms[HISTOGRAM_COLUMNS]


def _extremes(
    lt: Any, sigs: list[str], block: int, k: int, tick: Callable[[], None]
) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """Pass 1 of :func:`unit_examples` over one layer: per (signal, kind) the keys of its ``k`` best examples of every
    unit (:func:`_stream_top_values`), each signal's lowest and highest value per unit, and the real steps' count."""
    n, t_len, units = lt.shape
    gates = set(GATES[lt.info.cell_type])
    back = lt.info.go_backwards
    empty = np.zeros((0, units), np.uint64)
    best = {(s, kind): empty for s in sigs for kind in ("top", "bottom", "rise", "drop")}
    lo = {s: np.full(units, np.inf, np.float32) for s in sigs}
    hi = {s: np.full(units, -np.inf, np.float32) for s in sigs}
    n_real = 0
    for rows in iter_chunks(n, block):
        m, flat, gpos = _chunk_real(lt, rows, t_len)
        n_real += len(flat)
        if len(flat):
            for s in sigs:
                v = read(lt[s], rows, np.float32)
                real = v.reshape(-1, units) if len(flat) == m.size else v.reshape(-1, units)[flat]
                low, high = real.min(axis=0), real.max(axis=0)  # NaN where a unit has one
                lo[s], hi[s] = np.minimum(lo[s], low), np.maximum(hi[s], high)
                finite = bool(np.isfinite(low).all() and np.isfinite(high).all())  # then no change is NaN
                pairs = [("top", "bottom", real, gpos)]
                if s in gates:
                    d, dpos = _changes(v, m, back, rows.start)
                    if len(d):
                        pairs.append(("rise", "drop", d, dpos))
                for up, down, values, positions in pairs:
                    if finite:
                        best[s, up] = _stream_top_values(best[s, up], values, positions, k, True)
                        best[s, down] = _stream_top_values(best[s, down], values, positions, k, False)
                    else:
                        o = _ordered32(values)
                        best[s, up] = _stream_top(best[s, up], o, positions, k)
                        best[s, down] = _stream_top(best[s, down], ~o, positions, k)
        tick()
    return best, lo, hi, n_real


def _final_examples(
    best: dict, sigs: list[str]
) -> list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The top/bottom/rise/drop examples of pass 1, final: ``(signal index, kind index, unit, rank, position,
    value)`` arrays per signal and kind; their context windows are gathered in pass 2 (no third read of the signals)."""
    parts: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for si, s in enumerate(sigs):
        for kind in ("top", "bottom", "rise", "drop"):
            keys = best[s, kind]
            if not len(keys):
                continue
            keys = _sorted_desc(keys)
            vals, pos = _unkey(keys, descending=kind in ("top", "rise"))
            r, u = np.nonzero(keys != 0)  # a zero key: fewer than k entries
            parts.append((si, KINDS.index(kind), u, r, pos[r, u], vals[r, u].astype(np.float64)))
    return parts


def _bins_and_draws(
    lt: Any,
    sigs: list[str],
    block: int,
    lo: dict[str, np.ndarray],
    hi: dict[str, np.ndarray],
    bins: int,
    k_decile: int,
    context: int,
    parts: list,
    tick: Callable[[], None],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Pass 2 of :func:`unit_examples` over one layer: each signal's histogram counts (bins, units), its decile draws'
    keys and windows, and the windows of the examples of pass 1 (``parts``), gathered by block of sequences and
    signal."""
    n, t_len, units = lt.shape
    fixed_sig = np.concatenate([np.full(len(p[2]), p[0]) for p in parts] + [np.zeros(0, np.int64)])
    fixed_pos = np.concatenate([p[4] for p in parts] + [np.zeros(0, np.int64)]).astype(np.int64)
    fixed_unit = np.concatenate([p[2] for p in parts] + [np.zeros(0, np.int64)]).astype(np.int64)
    fixed_win = np.zeros((len(fixed_pos), 2 * context + 1), np.float32)
    fixed_key = (fixed_pos // t_len // block) * len(sigs) + fixed_sig
    fixed_order = np.argsort(fixed_key, kind="stable")
    fixed_cuts = np.searchsorted(fixed_key[fixed_order], np.arange(-(-n // block) * len(sigs) + 1))
    counts = {s: np.zeros((bins, units), np.int64) for s in sigs}
    draw_keys = {s: np.zeros((0, 10, units), np.uint64) for s in sigs}
    draw_win = {s: np.zeros((0, 10, units, 2 * context + 1), np.float32) for s in sigs}
    per_decile = bins // 10
    tables = {}  # float16 signals of a few patterns per unit: counted by their patterns (see _BinTable)
    for s in sigs:
        if getattr(lt[s], "dtype", None) == np.float16 and np.isfinite(lo[s]).all() and np.isfinite(hi[s]).all():
            if _pattern_range(lo[s], hi[s])[1].sum() <= _BinTable.LIMIT:
                tables[s] = _BinTable(lo[s], hi[s], bins)
    scratch = np.empty(min(block, n) * t_len * units, np.intp)  # bin codes or pattern indices, chunk by chunk
    for rows in iter_chunks(n, block):
        m, flat, gpos = _chunk_real(lt, rows, t_len)
        if len(flat):
            prio = position_priority(gpos)
            dkey = ((_LOW32 - prio) << np.uint64(32)) | (_LOW32 - gpos.astype(np.uint64))
            by_key = np.argsort(dkey)[::-1]  # the same for every signal
            for si, s in enumerate(sigs):
                narrow = getattr(lt[s], "dtype", None) in (np.float16, np.float32)  # exact in float64 as stored
                raw = read(lt[s], rows, lt[s].dtype if narrow else np.float32)
                real = raw.reshape(-1, units)
                if len(flat) < m.size:
                    real = real[flat]
                here = rows.start // block * len(sigs) + si
                e = fixed_order[fixed_cuts[here] : fixed_cuts[here + 1]]
                if len(e):
                    fixed_win[e] = _windows(raw, rows.start, fixed_pos[e], fixed_unit[e], context)
                finite = bool(np.isfinite(lo[s]).all() and np.isfinite(hi[s]).all())
                if s in tables:
                    flat_counts, dec = tables[s](real, scratch)
                else:
                    if finite:
                        codes, dec = _bin_codes(real, lo[s], hi[s], bins, scratch)
                    else:  # NaN or infinite values: the integer path, as ever
                        b = bin_index(real, lo[s], hi[s], bins)
                        codes, dec = (b * units + np.arange(units)).ravel(), (b // per_decile).astype(np.int8)
                    flat_counts = np.bincount(codes, minlength=bins * units)
                chunk_counts = flat_counts.reshape(bins, units)
                counts[s] += chunk_counts
                if k_decile:
                    dec_counts = chunk_counts.reshape(10, per_decile, units).sum(axis=1)
                    draw = _decile_draws_head if finite else _decile_draws  # (deciles 0-9 only if finite)
                    new = draw(dkey, dec, k_decile, by_key, dec_counts)
                    draw_keys[s], draw_win[s] = _merge_draws(draw_keys[s], draw_win[s], new, raw, rows.start, context)
        tick()
    return counts, draw_keys, draw_win, fixed_win


def _histogram_columns(lo: np.ndarray, hi: np.ndarray, bins: int, counts: np.ndarray) -> dict[str, np.ndarray]:
    """One signal's histogram rows, by unit, then bin: unit, bin, its edges and its count."""
    edges = _edges(lo, hi, bins)
    units = counts.shape[1]
    return {
        "unit": np.repeat(np.arange(units), bins),
        "bin": np.tile(np.arange(bins), units),
        "lo": edges[:-1].T.ravel(),
        "hi": edges[1:].T.ravel(),
        "count": counts.T.ravel(),
    }


def _layer_examples(
    trace: Trace,
    names: list[str],
    name: str,
    lt: Any,
    sigs: list[str],
    parts: list,
    windows: list,
    context: int,
    block: int,
) -> tuple[str, list[str], np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """One layer's examples in the table's order (layers in turn; put in order before the contexts are added, so
    no sort after): ``(layer, signals, signal codes, columns, context columns)``."""
    t_len = lt.shape[1]
    sig_code = np.concatenate([np.full(len(p[2]), p[0]) for p in parts])
    cols = {
        "kind": np.concatenate([np.full(len(p[2]), p[1]) for p in parts]),
        "unit": np.concatenate([p[2] for p in parts]).astype(np.int64),
        "rank": np.concatenate([p[3] for p in parts]).astype(np.int64),
    }
    pos = np.concatenate([p[4] for p in parts]).astype(np.int64)
    value = np.concatenate([p[5] for p in parts])
    first_layer = {s: i for i, s in enumerate(trace[names[0]].info.signals)}
    sig_rank = np.array([first_layer.get(s, 99) for s in sigs])[sig_code]
    order = np.lexsort((cols["rank"], cols["kind"], cols["unit"], sig_rank))
    cols = {c: v[order] for c, v in cols.items()}
    sig_code, pos, value = sig_code[order], pos[order], value[order]
    window = np.concatenate(windows)[order]
    cols["sequence"], cols["step"] = pos // t_len, pos % t_len
    return name, sigs, sig_code, cols, _with_context(trace, lt, cols, value, window, context, block)


def _windows(raw: np.ndarray, start: int, positions: np.ndarray, unit: np.ndarray, context: int) -> np.ndarray:
    """(len(positions), 2 context + 1) float32: each example's unit's values over its window of steps, gathered from
    a block ``raw`` (n, T, units) of sequences ``start, start + 1, ...`` (steps beyond the sequence repeat its last;
    the window's length says how many count)."""
    t_len = raw.shape[1]
    seq, step = positions // t_len - start, positions % t_len
    steps = np.minimum(np.maximum(step - context, 0)[:, None] + np.arange(2 * context + 1), t_len - 1)
    return raw[seq[:, None], steps, unit[:, None]].astype(np.float32)


def _merge_draws(
    keys: np.ndarray, windows: np.ndarray, new: np.ndarray, raw: np.ndarray, start: int, context: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest of the running draw keys ``keys`` (r, 10, units; descending, with their ``windows``) and a
    chunk's ``new`` (k, 10, units), in descending order (zero: no entry) -- the set :func:`_top_keys` keeps -- with
    their windows: the running ones carried, those of the chunk's that enter gathered from its block ``raw``
    (sequences from ``start``; see :func:`_windows`)."""
    k = len(new)
    both = np.concatenate([keys, new]) if len(keys) else new
    order = np.argsort(both, axis=0)[::-1][:k]  # keys of a column are unique (positions), but for zeros
    out = np.take_along_axis(both, order, axis=0)
    win = np.zeros((*out.shape, windows.shape[-1]), np.float32)
    carried = order < len(keys)
    r, d, u = np.nonzero(carried)
    win[r, d, u] = windows[order[r, d, u], d, u]
    r, d, u = np.nonzero(~carried & (out != 0))
    if len(r):
        win[r, d, u] = _windows(raw, start, (_LOW32 - (out[r, d, u] & _LOW32)).astype(np.int64), u, context)
    return out, win


def _decile_draws(
    dkey: np.ndarray, dec: np.ndarray, k: int, order: np.ndarray | None = None, counts: np.ndarray | None = None
) -> np.ndarray:
    """(k, 10, units) uint64: per decile and unit, the ``k`` largest of the row keys ``dkey`` (m,) among the rows in
    that decile (``dec`` (m, units)), 0 where fewer: one sort of the rows by key and one stable (radix) sort of the
    deciles per unit, instead of a partition of the whole chunk per decile. ``order`` (the rows by descending key)
    and ``counts`` ((10, units) rows per decile) may be passed when known."""
    m, units = dec.shape
    if order is None:
        order = np.argsort(dkey)[::-1]  # keys are unique (they hold the position): largest first
    ds = np.ascontiguousarray(dec[order].T)  # (units, m): each unit's deciles in key order, one contiguous row
    idx = np.argsort(ds, axis=1, kind="stable")  # per unit: rows by decile, each decile's largest key first
    if counts is None:
        counts = np.bincount((ds.astype(np.int64) + 10 * np.arange(units)[:, None]).ravel(), minlength=10 * units)
        counts = counts.reshape(units, 10).T
    starts = np.cumsum(counts, axis=0) - counts
    keys_sorted = dkey[order]
    out = np.zeros((k, 10, units), np.uint64)
    cols = np.arange(units)[None, :]
    for r in range(k):  # k_decile (a few) ranks, each one gather over (10, units)
        valid = r < counts
        at = np.minimum(starts + r, m - 1)
        out[r] = np.where(valid, keys_sorted[idx[cols, at]], np.uint64(0))
    return out


def _decile_draws_head(dkey: np.ndarray, dec: np.ndarray, k: int, order: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """:func:`_decile_draws` (``order`` and ``counts`` given) sorting only the first eighth of the rows in key order:
    a decile with ``k`` rows there, or with all its rows there, has its ``k`` largest keys there. The other deciles
    (a few rows each, mostly) are drawn from all their rows, found with one shift of a per-unit 10-bit mask."""
    m, units = dec.shape
    head = order[: max(m // 8, min(m, 256))]
    dh = dec[head]
    counts_h = np.bincount((dh + np.arange(0, 10 * units, 10, dtype=np.int64)).ravel(), minlength=10 * units)
    counts_h = counts_h.reshape(units, 10).T
    out = _decile_draws(dkey[head], dh, k, np.arange(len(head)), counts_h)
    rest = (counts_h < k) & (counts_h < counts)  # (10, units): deciles whose k largest keys may lie beyond the head
    if rest.any():
        bits = (rest.astype(np.uint16) << np.arange(10, dtype=np.uint16)[:, None]).sum(axis=0, dtype=np.uint16)
        hit = np.right_shift(bits, dec.view(np.uint8), dtype=np.uint16)  # bit dec of the unit's mask
        np.bitwise_and(hit, 1, out=hit)
        r, u = np.divmod(np.flatnonzero(hit.astype(bool)), units)  # (nonzero of bool: ~1/10 of uint16's)
        group = dec[r, u].astype(np.int64) * units + u
        top = _group_top(dkey[r], group, 10 * units, k).reshape(k, 10, units)
        out = np.where(rest[None], top, out)
    return out


def bin_index(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """Histogram bin of each value (see the module docstring): ``values`` (m, units), ``lo``/``hi`` (units,).

    Examples
    --------
    >>> bin_index(np.array([[0.0], [0.5], [1.0]], np.float32), np.array([0.0]), np.array([1.0]), 10)[:, 0].tolist()
    [0, 5, 9]
    """
    return _bin_floats(values, lo, hi, bins).astype(np.int64)


def _bin_floats(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """:func:`bin_index` as float64 (whole numbers, before the cast)."""
    lo64, hi64 = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    width = hi64 - lo64
    f = np.array(values, np.float64)  # one float64 copy, then every step in place
    with np.errstate(invalid="ignore", divide="ignore"):
        np.subtract(f, lo64, out=f)
        np.multiply(f, bins, out=f)  # bins * (v - lo), as before: the same rounding
        np.divide(f, np.where(width > 0, width, 1.0), out=f)
        np.floor(f, out=f)
    f[:, ~(width > 0)] = 0.0
    np.clip(f, 0, bins - 1, out=f)
    return f


def _whole_bins(
    out: np.ndarray, values: np.ndarray, lo64: np.ndarray, divisor: np.ndarray, flat: np.ndarray, bins: int
):
    """:func:`_bin_floats`' steps into ``out`` (float64, whole numbers) for ``values`` within ``[lo, hi]``: ``lo64``,
    ``divisor`` (the width, 1 where it is 0) and ``flat`` (width 0: bin 0) broadcast against ``values``. Every step
    is elementwise, so any layout of the same values gives the same bins. ``v - lo >= 0`` (or ``-0.0``: the same
    whole number), so only the upper clip can act."""
    np.subtract(values, lo64, out=out)
    np.multiply(out, bins, out=out)  # bins * (v - lo), as in _bin_floats: the same rounding
    np.divide(out, divisor, out=out)
    np.floor(out, out=out)
    if flat.any():
        np.copyto(out, 0.0, where=flat)
    np.minimum(out, bins - 1, out=out)


def _bin_codes(
    values: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int, scratch: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For finite ``lo`` and ``hi`` (so every bin is a whole number): ``bin * units + unit`` of each value, raveled
    for one ``bincount``, and its decile (int8), computed on the float64 bins before one cast each.

    The steps of :func:`_bin_floats`, a block of ``_BIN_BLOCK`` values at a time in two reused float64 buffers that
    stay in cache (the whole chunk's float64 temporaries, ~13 MB each, went to memory at every step); the codes are
    written into ``scratch`` (int64, at least ``values.size``) when given (no new pages per chunk)."""
    m, units = values.shape
    lo64, hi64 = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    width = hi64 - lo64
    flat, divisor = ~(width > 0), np.where(width > 0, width, 1.0)
    unit = np.arange(units, dtype=np.float64)  # (an int64 operand would take the slow mixed-type loop)
    codes = (np.empty(m * units, np.int64) if scratch is None else scratch[: m * units]).reshape(m, units)
    dec = np.empty((m, units), np.int8)
    step = max(1, _BIN_BLOCK // max(units, 1))
    f = np.empty((min(step, m), units), np.float64)
    g = np.empty_like(f)
    decile = _decile_of(bins)
    for a in range(0, m, step):
        fb, gb = f[: min(step, m - a)], g[: min(step, m - a)]
        _whole_bins(fb, values[a : a + step], lo64, divisor, flat, bins)
        decile(fb, out=gb)
        dec[a : a + step] = gb  # whole numbers >= 0: the cast's truncation is bin // (bins // 10)
        np.multiply(fb, units, out=fb)
        np.add(fb, unit, out=fb)
        codes[a : a + step] = fb
    return codes.ravel(), dec


def _decile_of(bins: int) -> Callable[..., np.ndarray]:
    """A ufunc call ``f -> f / (bins // 10)`` whose truncation is ``bin // (bins // 10)`` for every whole bin: a product
    by the reciprocal where that holds for all of them (checked here, every bin), else the quotient."""
    per_decile = bins // 10
    whole = np.arange(bins, dtype=np.float64)
    if np.array_equal((whole * (1.0 / per_decile)).astype(np.int64), np.arange(bins) // per_decile):
        return lambda f, out: np.multiply(f, 1.0 / per_decile, out=out)
    return lambda f, out: np.divide(f, per_decile, out=out)


def _pattern_range(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per unit, the first and the number of the ordered float16 patterns from ``lo`` to ``hi`` (float16 values, both
    zeros inside where an end is zero)."""
    lo16 = np.asarray(lo, np.float16)
    lo16 = np.where(lo16 == 0, np.float16(-0.0), lo16)
    hi16 = np.asarray(hi, np.float16) + np.float16(0.0)  # -0.0 + 0.0 is +0.0
    first = ordered16(lo16.view(np.uint16)).astype(np.int64)
    return first, ordered16(hi16.view(np.uint16)).astype(np.int64) - first + 1


class _BinTable:
    """The bin and decile of every float16 in each unit's ``[lo, hi]``, computed once per signal by the steps of
    :func:`_bin_codes` (elementwise: the same numbers), so that a float16 chunk is counted without binning each value:
    one ``bincount`` of the values' patterns (each unit's run of patterns after the previous unit's), then of their
    bins weighted by those counts; the deciles are one lookup. For small tables (a few patterns per unit, as a
    saturated or slowly varying signal has): the counts array and the lookups stay in cache.
    """

    #: The most patterns a table holds (all units together).
    LIMIT = 1 << 16

    def __init__(self, lo: np.ndarray, hi: np.ndarray, bins: int):
        units = len(lo)
        first, sizes = _pattern_range(lo, hi)
        self.shift = (np.cumsum(sizes) - sizes - first).astype(np.intp)  # pattern + shift[unit]: its index
        unit = np.repeat(np.arange(units), sizes)
        ordered = np.arange(int(sizes.sum())) - self.shift[unit]
        bits = from_ordered16(ordered)
        lo64, hi64 = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        width = hi64 - lo64
        f = np.empty(len(unit), np.float64)
        _whole_bins(
            f, bits.view(np.float16), lo64[unit], np.where(width > 0, width, 1.0)[unit], ~(width > 0)[unit], bins
        )
        self.dec = (f / (bins // 10)).astype(np.int8)
        self.codes = (f * units + unit.astype(np.float64)).astype(np.int64)
        self.n_codes = bins * units

    def __call__(self, values: np.ndarray, scratch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``bincount`` of :func:`_bin_codes` (bins * units,) and the deciles (int8) of float16 ``values`` (m,
        units) in the range; ``scratch`` (intp, at least ``values.size``) holds the patterns' indices."""
        at = scratch[: values.size].reshape(values.shape)
        np.add(ordered16(values.view(np.uint16)), self.shift, out=at)
        per_pattern = np.bincount(at.ravel(), minlength=len(self.codes))
        counts = np.bincount(self.codes, weights=per_pattern, minlength=self.n_codes)
        return counts.astype(np.int64), self.dec.take(at, mode="clip")  # (every index is in the table)


def _edges(lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    lo64, hi64 = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    return lo64[None, :] + (hi64 - lo64)[None, :] * (np.arange(bins + 1)[:, None] / bins)


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


# ----------------------------------------------------------------------------------------------------------------
# the tables, their text columns built from arrays (no Python object per row)


def _text(values: pa.Array) -> Any:
    """A text column from an Arrow string array, of the dtype a column of Python strings gets (pandas 3: ``str``)."""
    dtype = pd.Series([""]).dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        return pd.array(values.cast(pa.large_string()), dtype=dtype)
    return pd.array(values.to_numpy(zero_copy_only=False), dtype=dtype)


def _names(names: Sequence[str], codes: np.ndarray) -> Any:
    return _text(pa.array(list(names), pa.large_string()).take(pa.array(codes, pa.int64())))


def _float_items(values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The JSON text of each distinct float64 of ``values`` (as ``json.dumps`` writes a float: its ``repr``, ``NaN``,
    ``Infinity``, ``-Infinity``) and, per value, the index of its text: each distinct value formatted once."""
    bits, inverse = np.unique(np.ascontiguousarray(values, np.float64).view(np.uint64), return_inverse=True)
    floats = bits.view(np.float64)
    texts = list(map(float.__repr__, floats.tolist()))
    for i in np.flatnonzero(~np.isfinite(floats)).tolist():
        texts[i] = "NaN" if np.isnan(floats[i]) else ("Infinity" if floats[i] > 0 else "-Infinity")
    return texts, inverse.ravel()


def _items(texts: Sequence[str] | pa.Array) -> pa.Array:
    """``texts`` each followed by the separator ``", "``: the items :func:`_json_lists` joins."""
    if isinstance(texts, pa.Array):
        return pc.binary_join_element_wise(
            texts.cast(pa.large_string()), pa.scalar(", ", pa.large_string()), pa.scalar("", pa.large_string())
        )
    return pa.array([t + ", " for t in texts], pa.large_string())


def _json_lists(items: pa.Array, index: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Arrow strings: list ``i`` is ``"[" + ", ".join(its items) + "]"``, its items being ``items[index[e]]`` for its
    ``lengths[i]`` (at least 1) consecutive entries ``e`` of ``index``; ``items`` (from :func:`_items`) end in ``", "``.

    One take of the items lays every list's text out in order, as ``"a, b, "``; shifted one byte right, with ``"["``
    over each list's first byte and ``"]"`` over its last, that is ``"[a, b]"``, of the same length.
    """
    n = len(lengths)
    if n == 0:
        return pa.array([], pa.large_string())
    if (lengths < 1).any():
        raise ValueError("every JSON list here has at least one item")
    taken = items.take(pa.array(index, pa.int64()))
    _, offset_buffer, data_buffer = taken.buffers()
    offsets = np.frombuffer(offset_buffer, np.int64, count=len(taken) + 1, offset=8 * taken.offset)
    bounds = offsets[np.concatenate([[0], np.cumsum(lengths)])] - offsets[0]
    data = np.frombuffer(data_buffer, np.uint8, count=int(bounds[-1]), offset=int(offsets[0]))
    out = np.empty(len(data), np.uint8)
    out[1:] = data[:-1]
    out[bounds[:-1]] = ord("[")
    out[bounds[1:] - 1] = ord("]")
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(bounds), pa.py_buffer(out))


def _with_context(
    trace: Trace,
    lt: Any,
    cols: dict[str, np.ndarray],
    value: np.ndarray,
    window: np.ndarray,
    context: int,
    chunk: int,
) -> dict[str, Any]:
    """The context columns of the examples ``cols`` (``unit``, ``kind`` code, ``sequence``, ``step``) and ``value``
    with the decile examples' values, from ``window`` (each example's signal over its window, gathered in pass 2)
    and the mask and tokens or inputs, read a chunk of sequences at a time. Every step of every window is gathered
    with array indexing, and the JSON texts are built by :func:`_json_lists` from the texts of the distinct tokens,
    input steps and values."""
    t_len = lt.shape[1]
    seq, step = cols["sequence"], cols["step"]
    start = np.maximum(step - context, 0)
    length = np.minimum(step + context + 1, t_len) - start
    row = np.repeat(np.arange(len(seq)), length)  # the windows' steps, one element each, row by row
    first = np.cumsum(length) - length
    el_seq, el_step = seq[row], start[row] + (np.arange(len(row)) - first[row])
    real = np.zeros(len(row), bool)
    vals = window[row, np.arange(len(row)) - first[row]]
    text = trace.tokens is not None
    ids = np.zeros(len(row), np.int64)
    if not text:  # numeric inputs: each step's vector formatted once
        steps, step_of = np.unique(el_seq * t_len + el_step, return_inverse=True)
    step_texts: list[pa.Array] = []
    # the elements by block of ``chunk`` sequences (the passes' blocks: one slice read of each array, no oindex of a
    # scattered list of rows); blocks without an example are not read
    n_seq = lt.shape[0]
    el_block = el_seq // chunk
    by_block = np.argsort(el_block, kind="stable")
    cuts = np.searchsorted(el_block[by_block], np.arange(-(-n_seq // chunk) + 1))
    for b in np.unique(seq // chunk).tolist():
        rows = slice(b * chunk, min((b + 1) * chunk, n_seq))
        sel = by_block[cuts[b] : cuts[b + 1]]
        local, t = el_seq[sel] - rows.start, el_step[sel]
        real[sel] = read_mask(lt, rows)[local, t]
        if text:
            ids[sel] = read(trace.tokens, rows, np.int64)[local, t]
        else:
            x = read(trace.x if trace.x is not None else lt.inputs, rows, np.float64)
            here = steps[np.searchsorted(steps, rows.start * t_len) : np.searchsorted(steps, rows.stop * t_len)]
            step_texts.append(_input_steps(x[here // t_len - rows.start, here % t_len]))
    value = value.copy()
    decile = cols["kind"] >= KINDS.index(DECILES[0])
    value[decile] = vals[first[decile] + step[decile] - start[decile]].astype(np.float64)
    texts, idx = _float_items(vals[real].astype(np.float64))
    index = np.full(len(row), len(texts))
    index[real] = idx
    context_values = _json_lists(_items([*texts, "null"]), index, length)
    if text:
        uid, inverse = _small_unique(ids)
        quoted = [json.dumps(str(tok)) for tok in token_strings(trace, uid).tolist()]
        ctx = _json_lists(_items(quoted), inverse.ravel(), length)
    else:
        table = pa.concat_arrays(step_texts) if step_texts else pa.array([], pa.large_string())
        ctx = _json_lists(_items(table), step_of.ravel(), length)
    return {
        "value": value,
        "context": ctx,
        "context_start": start,
        "position": step - start,
        "context_values": context_values,
    }


def _small_unique(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(ids, return_inverse=True)`` for int ids, by a table over their range when it is small (no sort)."""
    if not len(ids) or int(ids.max()) - int(ids.min()) > 1 << 22:
        uid, inverse = np.unique(ids, return_inverse=True)
        return uid, inverse.ravel()
    low = int(ids.min())
    present = np.zeros(int(ids.max()) - low + 1, bool)
    present[ids - low] = True
    return np.flatnonzero(present) + low, (np.cumsum(present) - 1)[ids - low]


def _input_steps(x: np.ndarray) -> pa.Array:
    """The JSON text of each step's input vector (rows of ``x`` (steps, F)), as ``json.dumps`` of its list."""
    if x.ndim == 1:  # one number per step
        texts, idx = _float_items(x)
        return _items(texts).take(pa.array(idx, pa.int64()))
    if x.shape[1] == 0:
        return pa.array(["[]"] * len(x), pa.large_string())
    texts, idx = _float_items(x.ravel())
    return _json_lists(_items(texts), idx, np.full(len(x), x.shape[1]))


def _example_table(
    parts: list[tuple[str, list[str], np.ndarray, dict[str, np.ndarray], dict[str, Any]]],
) -> pd.DataFrame:
    """The examples table from each layer's rows: (layer, its signals, signal codes, columns, context columns)."""
    if not parts:
        return _empty(EXAMPLE_COLUMNS)
    sizes = [len(p[2]) for p in parts]
    offsets = np.cumsum([0] + [len(p[1]) for p in parts])
    cols = {c: np.concatenate([p[3][c] for p in parts]) for c in ("unit", "rank", "sequence", "step")}
    ctx = {c: np.concatenate([p[4][c] for p in parts]) for c in ("value", "context_start", "position")}
    return pd.DataFrame(
        {
            "layer": _names([p[0] for p in parts], np.repeat(np.arange(len(parts)), sizes)),
            "unit": cols["unit"],
            "signal": _names(
                [s for p in parts for s in p[1]], np.concatenate([p[2] + o for p, o in zip(parts, offsets)])
            ),
            "kind": _names(KINDS, np.concatenate([p[3]["kind"] for p in parts])),
            "rank": cols["rank"],
            "sequence": cols["sequence"],
            "step": cols["step"],
            "value": ctx["value"],
            "context": _text(pa.concat_arrays([p[4]["context"] for p in parts])),
            "context_start": ctx["context_start"],
            "position": ctx["position"],
            "context_values": _text(pa.concat_arrays([p[4]["context_values"] for p in parts])),
        }
    )


def _histogram_table(parts: list[tuple[str, str, dict[str, np.ndarray]]]) -> pd.DataFrame:
    """The histograms table, ordered by layer, signal (by name), unit and bin."""
    if not parts:
        return _empty(HISTOGRAM_COLUMNS)
    parts = sorted(parts, key=lambda p: (p[0], p[1]))  # stable; each (layer, signal) once
    sizes = [len(p[2]["unit"]) for p in parts]
    cols = {c: np.concatenate([p[2][c] for p in parts]) for c in ("unit", "bin", "lo", "hi", "count")}
    code = np.repeat(np.arange(len(parts)), sizes)
    return pd.DataFrame(
        {
            "layer": _names([p[0] for p in parts], code),
            "unit": cols["unit"],
            "signal": _names([p[1] for p in parts], code),
            "bin": cols["bin"],
            "lo": cols["lo"],
            "hi": cols["hi"],
            "count": cols["count"],
        }
    )


def unit_example_rows(examples: pd.DataFrame, layer: str, unit: int, signal: str) -> pd.DataFrame:
    """One unit's examples of one signal, with ``context``/``context_values`` decoded to lists.

    Examples
    --------
    >>> ex = pd.DataFrame({"layer": ["l"], "unit": [0], "signal": ["s"], "kind": ["top"], "rank": [0],
    ...                    "context": ['["a", "b"]'], "context_values": ["[0.5, null]"]})
    >>> unit_example_rows(ex, "l", 0, "s")[["tokens", "values"]].iloc[0].tolist()
    [['a', 'b'], [0.5, nan]]
    """
    if examples is None or examples.empty:
        return pd.DataFrame(columns=[*EXAMPLE_COLUMNS, "tokens", "values"])
    rows = examples[(examples["layer"] == layer) & (examples["unit"] == unit) & (examples["signal"] == signal)]
    rows = rows.copy()
    rows["tokens"] = [json.loads(c) for c in rows["context"]]
    rows["values"] = [[np.nan if v is None else float(v) for v in json.loads(c)] for c in rows["context_values"]]
    return rows.reset_index(drop=True)
