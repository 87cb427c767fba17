"""Pattern search over a whole run: where else do these units do this? (LSTMVis's Select/Match, generalised.)

Three kinds of query, each answered a chunk of sequences at a time (memory bounded by the chunk and by
``limit``, never by the number of sequences), each returning ranked **spans** ``[start, end)`` of
consecutive real (unmasked) steps of one sequence:

**Span** (:class:`SpanQuery`, CLI ``--span SEQ:START:END --threshold T``)
    The query's units are those whose signal (default ``hidden_state``) is ``>= threshold`` on every step
    of ``START:END`` of sequence ``SEQ`` (half-open, as a Python slice). A step of the data *matches* when
    at least ``min_overlap`` (default all) of those units are on there; a match is a maximal run of matching
    steps. ``overlap`` is the span's mean Jaccard index between the query's units and the units on at each
    step (1 when exactly the query's units are on; other units switching on lower it); ``score`` is
    ``overlap * min(length, L) / max(length, L)`` with ``L`` the query span's length (a span as long as the
    query's ranks first).
**Condition** (:class:`Condition`, CLI ``--where``)
    ``"SIGNAL of UNIT below|above X"`` or ``"SIGNAL of UNIT rising|falling by more than X"``; ``UNIT`` is
    ``LAYER:N``, ``unit N`` (in ``--layer``, default the first layer) or ``the memory unit`` (the unit whose
    memory gate -- LSTM forget, GRU update -- keeps longest on a typical step: the longest finite half-life
    of its median gate value, see :func:`memory_unit`). Several
    conditions joined by ``and`` must hold on the same step. Rising / falling compare a step with the
    previous real step in processing order (the change is the float32 difference, as in
    :mod:`gatelens.analysis.examples`) and mark the later step. ``score`` is the span's mean margin (how far
    past ``X`` the value is; with several conditions the smallest margin at each step).
**Pattern** (:class:`PatternQuery`): a short sequence of values of one unit's signal, matched by Pearson
    correlation over every window of its length (all steps real); windows with ``r >= min_r`` that are the
    best among the windows overlapping them (the earlier one on a tie) are the matches, ``score`` = ``r``.

Matches are ranked by ``score`` (descending), then ``length`` (descending), then ``(sequence, start)``;
``rank`` counts from 0 and ``limit`` keeps the best (``SearchResult.n_matches`` counts them all).

Examples
--------
>>> from gatelens.analysis.trace import Trace
>>> from gatelens._examples import example_layer
>>> lt, sig = example_layer("lstm", n=2, steps=6, units=2)
>>> sig["forget_gate"][:, :, 1] = [[0.9, 0.05, 0.9, 0.9, 0.02, 0.03], [0.9, 0.9, 0.9, 0.9, 0.9, 0.01]]
>>> trace = Trace({"lstm": lt})
>>> r = search(trace, "forget_gate of lstm:1 below 0.1")
>>> r.matches[["rank", "sequence", "start", "end"]].values.tolist()
[[0, 1, 5, 6], [1, 0, 4, 6], [2, 0, 1, 2]]
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gatelens.analysis._reading import compress_real, get_layer, processing, read, read_mask, to_time_index
from gatelens.analysis.trace import Trace, iter_chunks
from gatelens.errors import UsageError

MATCH_COLUMNS = ["rank", "layer", "signal", "sequence", "start", "end", "length", "score", "overlap"]
DEFAULT_SIGNAL = "hidden_state"
DEFAULT_THRESHOLD = 0.5
DEFAULT_LIMIT = 1000


class QueryError(UsageError):
    """A search query that does not fit the run (unknown layer, unit or signal, span outside the sequence, ...).

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> trace, _ = example_trace("lstm", n=2, steps=6, units=2)
    >>> search(trace, "forget_gate of lstm:7 below 0.1")
    Traceback (most recent call last):
    ...
    gatelens.analysis.search.QueryError: search query '...': layer 'lstm' has 2 units (0..1), not unit 7
    >>> issubclass(QueryError, UsageError) and issubclass(QueryError, ValueError)   # exit code 2
    True
    """


@dataclass(frozen=True)
class SpanQuery:
    """Steps ``start:end`` (half-open) of ``sequence``: find every span where the same units are on.

    Examples
    --------
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_layer
    >>> lt, sig = example_layer("lstm", n=2, steps=6, units=2)
    >>> sig["hidden_state"][:, :, 0] = [[0.9, 0.8, 0.1, 0.9, 0.7, 0.2], [0.1, 0.6, 0.9, 0.9, 0.0, 0.8]]
    >>> trace = Trace({"lstm": lt})
    >>> q = SpanQuery(0, 0, 2, threshold=0.5)               # the units >= 0.5 on steps 0 and 1 of sequence 0
    >>> q.describe()
    'span 0:0:2 of hidden_state >= 0.5'
    >>> r = search(trace, q)
    >>> r.units, r.matches[["sequence", "start", "end"]].values.tolist()
    ([0], [[0, 0, 2], [0, 3, 5], [1, 1, 4], [1, 5, 6]])
    """

    sequence: int
    start: int
    end: int
    threshold: float = DEFAULT_THRESHOLD
    layer: str | None = None
    signal: str = DEFAULT_SIGNAL
    min_overlap: float = 1.0

    def describe(self) -> str:
        return f"span {self.sequence}:{self.start}:{self.end} of {self.signal} >= {self.threshold:g}"


#: What a :class:`Condition` compares: its signal below / above ``value``, or rising / falling by more than it.
CONDITION_OPS = ("below", "above", "rising", "falling")


@dataclass(frozen=True)
class Condition:
    """One unit-signal condition: ``op`` one of ``below``, ``above``, ``rising``, ``falling``.

    Examples
    --------
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_layer
    >>> lt, sig = example_layer("lstm", n=2, steps=6, units=2)
    >>> sig["hidden_state"][:, :, 0] = [[0.9, 0.8, 0.1, 0.9, 0.7, 0.2], [0.1, 0.6, 0.9, 0.9, 0.0, 0.8]]
    >>> trace = Trace({"lstm": lt})
    >>> c = Condition("lstm", 0, "hidden_state", "rising", 0.5)
    >>> c.describe()
    'hidden_state of lstm:0 rising by more than 0.5'
    >>> search(trace, c).matches[["sequence", "start", "end"]].values.tolist()   # the later step of each rise
    [[1, 5, 6], [0, 3, 4]]
    >>> parse_conditions(trace, "hidden_state of lstm:0 above 0.5")
    [Condition(layer='lstm', unit=0, signal='hidden_state', op='above', value=0.5)]
    """

    layer: str
    unit: int
    signal: str
    op: str
    value: float

    def __post_init__(self) -> None:
        if self.op not in CONDITION_OPS:
            raise QueryError(f"Condition: op must be one of {list(CONDITION_OPS)}, got {self.op!r}")
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            raise QueryError(f"Condition: value must be a finite number, got {v!r}")

    def describe(self) -> str:
        if self.op in ("below", "above"):
            return f"{self.signal} of {self.layer}:{self.unit} {self.op} {self.value:g}"
        return f"{self.signal} of {self.layer}:{self.unit} {self.op} by more than {self.value:g}"


@dataclass(frozen=True)
class PatternQuery:
    """A short sequence of ``values`` of one unit's signal, matched by correlation.

    Examples
    --------
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_layer
    >>> lt, sig = example_layer("lstm", n=2, steps=6, units=2)
    >>> sig["hidden_state"][:, :, 0] = [[0.9, 0.8, 0.1, 0.9, 0.7, 0.2], [0.1, 0.6, 0.9, 0.9, 0.0, 0.8]]
    >>> trace = Trace({"lstm": lt})
    >>> q = PatternQuery((0.1, 0.9, 0.9), "lstm", 0)        # low, then high twice
    >>> q.describe()
    'pattern of 3 values of hidden_state of lstm:0, r >= 0.9'
    >>> r = search(trace, q)
    >>> r.kind, r.matches[["sequence", "start", "end"]].values.tolist(), r.matches["score"].round(3).tolist()
    ('pattern', [[1, 1, 4], [0, 2, 5]], [1.0, 0.971])
    """

    values: tuple[float, ...]
    layer: str
    unit: int
    signal: str = DEFAULT_SIGNAL
    min_r: float = 0.9

    def describe(self) -> str:
        return f"pattern of {len(self.values)} values of {self.signal} of {self.layer}:{self.unit}, r >= {self.min_r:g}"


@dataclass
class SearchResult:
    """What :func:`search` found.

    Attributes
    ----------
    query : str
        The query in words.
    kind : {"span", "condition", "pattern"}
    matches : DataFrame
        :data:`MATCH_COLUMNS`, best first, at most ``limit`` rows.
    n_matches : int
        Every match found (also those beyond ``limit``).
    layer, signal : str
    units : list of int
        The units of the query (for a span query: those on over the whole span).

    Examples
    --------
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_layer
    >>> lt, sig = example_layer("lstm", n=2, steps=6, units=2)
    >>> sig["hidden_state"][:, :, 0] = [[0.9, 0.8, 0.1, 0.9, 0.7, 0.2], [0.1, 0.6, 0.9, 0.9, 0.0, 0.8]]
    >>> trace = Trace({"lstm": lt})
    >>> r = search(trace, "hidden_state of lstm:0 above 0.5", limit=2)
    >>> r.kind, r.query, r.layer, r.signal, r.units
    ('condition', 'hidden_state of lstm:0 above 0.5', 'lstm', 'hidden_state', [0])
    >>> r.n_matches, len(r.matches), list(r.matches.columns) == MATCH_COLUMNS   # 4 found, the best 2 kept
    (4, 2, True)
    """

    query: str
    kind: str
    matches: pd.DataFrame
    n_matches: int
    layer: str
    signal: str
    units: list[int] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# parsing


_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_COND = re.compile(
    r"^\s*(?P<signal>[A-Za-z_]\w*)\s+of\s+(?P<unit>.+?)\s+"
    r"(?:(?P<cmp>below|under|above|over|<|>)\s*(?P<x>\S+)|(?P<dir>rising|rises|falling|falls|dropping|drops)"
    r"\s+by\s+more\s+than\s+(?P<dx>\S+))\s*$",
    re.IGNORECASE,
)
_OPS = {"below": "below", "under": "below", "<": "below", "above": "above", "over": "above", ">": "above",
        "rising": "rising", "rises": "rising", "falling": "falling", "falls": "falling", "dropping": "falling",
        "drops": "falling"}  # fmt: skip


def _number(text: str, what: str, query: str) -> float:
    if not re.fullmatch(_NUMBER, text.strip()):
        raise QueryError(f"search query {query!r}: {what} must be a number, got {text!r}")
    v = float(text)
    if not math.isfinite(v):
        raise QueryError(f"search query {query!r}: {what} must be finite, got {text!r}")
    return v


def _layer(trace: Trace, layer: str | None, query: str) -> str:
    if layer is None:
        return trace.layers[0]
    if layer not in trace.layer_traces:
        raise QueryError(f"search query {query!r}: unknown layer {layer!r}; the run has {trace.layers}")
    return layer


def _signal(trace: Trace, layer: str, signal: str, query: str) -> str:
    have = trace[layer].info.signals
    if signal not in have:
        raise QueryError(
            f"search query {query!r}: layer {layer!r} ({trace[layer].info.cell_type}) has no signal {signal!r}; "
            f"it has {', '.join(have)}"
        )
    return signal


def _unit(trace: Trace, layer: str, unit: Any, query: str) -> int:
    n = trace[layer].info.units
    try:
        u = int(str(unit).strip())
    except ValueError:
        raise QueryError(f"search query {query!r}: unit must be a whole number, got {unit!r}") from None
    if not 0 <= u < n:
        raise QueryError(f"search query {query!r}: layer {layer!r} has {n} units (0..{n - 1}), not unit {u}")
    return u


#: log-spaced bins of -log(gate) for the median gate of :func:`memory_unit` (about 2% wide in half-life)
_NEG_LOG_EDGES = np.geomspace(1e-7, 1e2, 1001)


def memory_unit(trace: Trace, layer: str, chunk: int = 256) -> int:
    """The unit of ``layer`` whose memory gate (LSTM forget, GRU update) keeps longest on a typical step:
    the longest half-life ``ln 0.5 / ln(median gate)`` over the real steps (``"the memory unit"``).

    The median, not the mean log gate of :func:`gatelens.analysis.memory.half_lives`: a memory that is
    reset now and then (the gate shut at a few steps, open elsewhere) is the one this names, and the mean log
    counts its resets. A unit whose median gate is exactly 1 (no finite half-life) is left out. The median is
    read from a histogram of ``-log(gate)`` in log-spaced bins (about 2% wide), streamed a chunk at a time.

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> trace, sig = example_trace("lstm", n=1, steps=5, units=2, fill=0.9)
    >>> sig["forget_gate"][0, :, 1] = [0.999, 0.999, 0.01, 0.999, 0.999]   # held, reset once: a memory
    >>> memory_unit(trace, "lstm")
    1
    """
    from gatelens.analysis._reading import retention_signal

    lt = get_layer(trace, layer)
    signal = retention_signal(lt.info.cell_type)
    if signal is None:
        raise QueryError(f"layer {layer!r} ({lt.info.cell_type}) has no memory gate: name the unit (LAYER:N)")
    u, nb = lt.info.units, len(_NEG_LOG_EDGES) + 1
    counts = np.zeros(u * nb, np.int64)
    exact_one = np.zeros(u, np.int64)
    for rows in iter_chunks(lt.shape[0], chunk):
        m = read_mask(lt, rows)
        if not m.any():
            continue
        g = np.abs(read(lt[signal], rows)[m])  # (k, units)
        with np.errstate(divide="ignore"):
            neg = -np.log(g)
        exact_one += (neg <= 0).sum(axis=0)
        b = np.searchsorted(_NEG_LOG_EDGES, neg, side="right")  # bin 0: below 1e-7 (or exactly 1)
        counts += np.bincount((b + nb * np.arange(u)).ravel(), minlength=u * nb)
    counts = counts.reshape(u, nb)
    total = counts.sum(axis=1)
    if total.sum() == 0:
        raise QueryError(f"layer {layer!r} has no unmasked step: name the unit (LAYER:N)")
    median_bin = (np.cumsum(counts, axis=1) >= (total[:, None] + 1) / 2).argmax(axis=1)
    finite = 2 * exact_one < total  # the median gate is not exactly 1
    if not finite.any():
        raise QueryError(f"layer {layer!r} has no memory gate with a finite half-life: name the unit (LAYER:N)")
    # a smaller -log(median gate) is a longer half-life; ties go to the lower unit
    return int(np.flatnonzero(finite)[np.argmin(median_bin[finite])])


def parse_conditions(trace: Trace, text: str, *, layer: str | None = None, chunk: int = 256) -> list[Condition]:
    """Parse ``"SIGNAL of UNIT below X [and ...]"`` (see the module docstring) against ``trace``.

    Raises
    ------
    QueryError
        One line naming the query and what is wrong: syntax, unknown layer, unit or signal, not a number.

    Examples
    --------
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_layer
    >>> lt, _ = example_layer("lstm", n=1, steps=2, units=3)
    >>> parse_conditions(Trace({"lstm": lt}), "cell_state of unit 2 rising by more than 1")
    [Condition(layer='lstm', unit=2, signal='cell_state', op='rising', value=1.0)]
    """
    if not isinstance(text, str) or not text.strip():
        raise QueryError("search query: empty condition; expected e.g. 'forget_gate of lstm:5 below 0.1'")
    out = []
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        m = _COND.match(part)
        if m is None:
            raise QueryError(
                f"search query {text!r}: cannot read {part!r}; expected 'SIGNAL of LAYER:UNIT below|above X' or "
                "'SIGNAL of unit N rising|falling by more than X'"
            )
        ref = m["unit"].strip()
        lname = _layer(trace, layer, text)
        if re.fullmatch(r"the\s+memory\s+unit", ref, re.IGNORECASE):
            unit = memory_unit(trace, lname, chunk)
        elif (um := re.fullmatch(r"unit\s+(\S+)", ref, re.IGNORECASE)) is not None:
            unit = _unit(trace, lname, um[1], text)
        elif ":" in ref:
            lname, _, u = ref.rpartition(":")
            lname = _layer(trace, lname, text)
            unit = _unit(trace, lname, u, text)
        else:
            raise QueryError(f"search query {text!r}: cannot read the unit {ref!r}; write LAYER:N or 'unit N'")
        sig = _signal(trace, lname, m["signal"], text)
        if m["cmp"] is not None:
            op, x = _OPS[m["cmp"].lower()], _number(m["x"], "the threshold", text)
        else:
            op, x = _OPS[m["dir"].lower()], _number(m["dx"], "the change", text)
        out.append(Condition(lname, unit, sig, op, x))
    layers = {c.layer for c in out}
    if len({trace[name].shape[1] for name in layers}) > 1:
        raise QueryError(f"search query {text!r}: its layers have different numbers of steps")
    return out


def parse_span(text: str) -> tuple[int, int, int]:
    """``"SEQ:START:END"`` -> three ints (checked against a run by :func:`search`).

    Examples
    --------
    >>> parse_span("3:10:20")
    (3, 10, 20)
    """
    parts = str(text).split(":")
    if len(parts) != 3 or not all(re.fullmatch(r"\s*\d+\s*", p) for p in parts):
        raise QueryError(f"search query: --span must be SEQ:START:END with whole numbers, got {text!r}")
    s, a, b = (int(p) for p in parts)
    return s, a, b


# ----------------------------------------------------------------------------------------------------------------
# spans of consecutive matching steps


def runs(hit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of True along axis 1 of ``hit`` (n, T): (row, start, end) with ``end`` exclusive.

    Examples
    --------
    >>> [a.tolist() for a in runs(np.array([[1, 1, 0, 1], [0, 0, 0, 0]], bool))]
    [[0, 0], [0, 3], [2, 4]]
    """
    n = hit.shape[0]
    pad = np.zeros((n, hit.shape[1] + 2), np.int8)
    pad[:, 1:-1] = hit
    d = np.diff(pad, axis=1)
    rs, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    return rs, starts, ends


def _span_means(values: np.ndarray, rs: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Mean of ``values`` (n, T) over each run."""
    cs = np.zeros((values.shape[0], values.shape[1] + 1))
    np.cumsum(values, axis=1, out=cs[:, 1:])
    return (cs[rs, ends] - cs[rs, starts]) / np.maximum(ends - starts, 1)


class _Best:
    """The ``limit`` best matches seen so far (ranked as in the module docstring) and how many there were."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.frame = pd.DataFrame(columns=MATCH_COLUMNS[1:])
        self.count = 0

    def add(self, df: pd.DataFrame) -> None:
        if df.empty:
            return
        self.count += len(df)
        both = df if self.frame.empty else pd.concat([self.frame, df], ignore_index=True)
        self.frame = self._rank(both).head(self.limit)

    @staticmethod
    def _rank(df: pd.DataFrame) -> pd.DataFrame:
        order = np.lexsort((df["start"], df["sequence"], -df["length"], -df["score"].to_numpy(np.float64)))
        return df.iloc[order].reset_index(drop=True)

    def result(self) -> pd.DataFrame:
        out = self._rank(self.frame) if len(self.frame) else pd.DataFrame(columns=MATCH_COLUMNS[1:])
        out.insert(0, "rank", np.arange(len(out)))
        for c in ("sequence", "start", "end", "length"):
            out[c] = out[c].astype(np.int64)
        for c in ("score", "overlap"):
            out[c] = out[c].astype(np.float64)
        return out[MATCH_COLUMNS]


def _frame(layer: str, signal: str, seq: np.ndarray, starts, ends, score, overlap) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "layer": layer,
            "signal": signal,
            "sequence": seq,
            "start": starts,
            "end": ends,
            "length": ends - starts,
            "score": score,
            "overlap": overlap,
        }
    )


# ----------------------------------------------------------------------------------------------------------------
# the three searches


def span_units(trace: Trace, q: SpanQuery) -> tuple[str, list[int]]:
    """The query's layer and the units whose signal is ``>= q.threshold`` on every step of the span."""
    text = q.describe()
    layer = _layer(trace, q.layer, text)
    signal = _signal(trace, layer, q.signal, text)
    lt = trace[layer]
    n, t_len, _ = lt.shape
    if not 0 <= q.sequence < n:
        raise QueryError(f"search query {text!r}: sequence {q.sequence} is not in the run (0..{n - 1})")
    if not 0 <= q.start < q.end <= t_len:
        raise QueryError(
            f"search query {text!r}: steps {q.start}:{q.end} are outside sequence {q.sequence}, which has steps "
            f"0..{t_len - 1} (START < END <= {t_len})"
        )
    if not 0.0 < q.min_overlap <= 1.0:
        raise QueryError(f"search query {text!r}: min_overlap must be in (0, 1], got {q.min_overlap!r}")
    rows = np.array([q.sequence])
    m = read_mask(lt, rows)[0, q.start : q.end]
    if not m.all():
        bad = q.start + int(np.flatnonzero(~m)[0])
        raise QueryError(f"search query {text!r}: step {bad} of sequence {q.sequence} is masked (padding)")
    v = read(lt[signal], rows, np.float32)[0, q.start : q.end]
    low = v.min(axis=0)
    units = np.flatnonzero(low >= np.float32(q.threshold))
    if not len(units):
        best = int(np.argmax(low))
        raise QueryError(
            f"search query {text!r}: no unit's {signal} stays >= {q.threshold:g} over the span (the highest minimum "
            f"is {float(low[best]):.3g}, unit {best}); lower the threshold"
        )
    return layer, units.tolist()


def _search_span(trace: Trace, q: SpanQuery, limit: int, min_length: int, chunk: int) -> SearchResult:
    layer, units = span_units(trace, q)
    lt = trace[layer]
    thr = np.float32(q.threshold)
    query_len = q.end - q.start
    need = math.ceil(q.min_overlap * len(units) - 1e-9)
    best = _Best(limit)
    sel = np.zeros(lt.info.units, bool)
    sel[units] = True
    for rows in iter_chunks(lt.shape[0], chunk):
        m = read_mask(lt, rows)
        on = read(lt[q.signal], rows, np.float32) >= thr
        inter = on[..., sel].sum(-1)
        others = on[..., ~sel].sum(-1)
        hit = m & (inter >= need)
        rs, starts, ends = runs(hit)
        keep = (ends - starts) >= min_length
        rs, starts, ends = rs[keep], starts[keep], ends[keep]
        if not len(rs):
            continue
        jacc = inter / (len(units) + others)
        overlap = _span_means(jacc, rs, starts, ends)
        length = ends - starts
        score = overlap * np.minimum(length, query_len) / np.maximum(length, query_len)
        best.add(_frame(layer, q.signal, rows.start + rs, starts, ends, score, overlap))
    return SearchResult(q.describe(), "span", best.result(), best.count, layer, q.signal, units)


def _condition_margin(lt: Any, c: Condition, rows: slice, m: np.ndarray) -> np.ndarray:
    """(n, T) float64: how far past its threshold the condition is at each step (NaN where it cannot hold)."""
    v = read(lt[c.signal], rows, np.float32)[..., c.unit]
    if c.op == "below":
        return np.where(m, np.float64(c.value) - v, np.nan)
    if c.op == "above":
        return np.where(m, v - np.float64(c.value), np.nan)
    back = lt.info.go_backwards
    t_len = m.shape[1]
    order, n_real = compress_real(processing(m, back))
    comp = np.take_along_axis(processing(v, back), order, axis=1)
    delta = (comp[:, 1:] - comp[:, :-1]).astype(np.float64)  # float32 difference
    valid = np.arange(1, t_len)[None, :] < n_real[:, None]
    s, pos = np.nonzero(valid)
    out = np.full(m.shape, np.nan)
    d = delta[s, pos]
    out[s, to_time_index(order[s, pos + 1], t_len, back)] = d - c.value if c.op == "rising" else -d - c.value
    return out


def _search_conditions(
    trace: Trace, conds: list[Condition], text: str, limit: int, min_length: int, chunk: int
) -> SearchResult:
    layer = conds[0].layer
    n = trace[layer].shape[0]
    best = _Best(limit)
    for rows in iter_chunks(n, chunk):
        margin = None
        for c in conds:
            lt = trace[c.layer]
            mg = _condition_margin(lt, c, rows, read_mask(lt, rows))
            margin = mg if margin is None else np.minimum(margin, mg)  # NaN where any cannot hold
        with np.errstate(invalid="ignore"):
            hit = margin > 0
        rs, starts, ends = runs(hit)
        keep = (ends - starts) >= min_length
        rs, starts, ends = rs[keep], starts[keep], ends[keep]
        if not len(rs):
            continue
        score = _span_means(np.where(hit, margin, 0.0), rs, starts, ends)
        best.add(_frame(layer, conds[0].signal, rows.start + rs, starts, ends, score, np.nan))
    units = sorted({c.unit for c in conds if c.layer == layer})
    return SearchResult(text, "condition", best.result(), best.count, layer, conds[0].signal, units)


def _search_pattern(trace: Trace, q: PatternQuery, limit: int, chunk: int) -> SearchResult:
    from numpy.lib.stride_tricks import sliding_window_view

    text = q.describe()
    layer = _layer(trace, q.layer, text)
    signal = _signal(trace, layer, q.signal, text)
    unit = _unit(trace, layer, q.unit, text)
    lt = trace[layer]
    pat = np.asarray(q.values, np.float64)
    if pat.ndim != 1 or len(pat) < 2 or not np.isfinite(pat).all():
        raise QueryError(f"search query {text!r}: the pattern needs at least 2 finite values")
    if len(pat) > lt.shape[1]:
        raise QueryError(f"search query {text!r}: the pattern is longer than the sequences ({lt.shape[1]} steps)")
    pc = pat - pat.mean()
    if not np.any(pc):
        raise QueryError(f"search query {text!r}: the pattern is constant; correlation needs it to vary")
    pc /= np.linalg.norm(pc)
    w = len(pat)
    best = _Best(limit)
    for rows in iter_chunks(lt.shape[0], chunk):
        m = read_mask(lt, rows)
        v = read(lt[signal], rows, np.float64)[..., unit]
        win = sliding_window_view(v, w, axis=1)  # (n, T - w + 1, w)
        ok = sliding_window_view(m, w, axis=1).all(-1)
        c = win - win.mean(-1, keepdims=True)
        norm = np.linalg.norm(c, axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(ok & (norm > 0), (c @ pc) / norm, np.nan)
        filled = np.where(np.isnan(r), -np.inf, r)
        # a window is kept when no overlapping window is better (an earlier equal one wins)
        pad = np.full((filled.shape[0], w - 1), -np.inf)
        after = sliding_window_view(np.concatenate([filled, pad], axis=1), w, axis=1).max(-1)
        prev = sliding_window_view(np.concatenate([pad, filled], axis=1), w - 1, axis=1)[:, : filled.shape[1]].max(-1)
        peak = (filled >= after) & (filled > prev) & (filled >= q.min_r)
        rs, starts = np.nonzero(peak)
        if not len(rs):
            continue
        best.add(_frame(layer, signal, rows.start + rs, starts, starts + w, r[rs, starts], np.nan))
    return SearchResult(text, "pattern", best.result(), best.count, layer, signal, [unit])


def search(
    run: Trace | str | Path,
    query: str | SpanQuery | PatternQuery | Condition | Sequence[Condition],
    *,
    layer: str | None = None,
    signal: str | None = None,
    threshold: float | None = None,
    limit: int = DEFAULT_LIMIT,
    min_length: int = 1,
    chunk: int = 256,
) -> SearchResult:
    """Find every span of ``run`` that matches ``query`` (see the module docstring), ranked, a chunk at a time.

    Parameters
    ----------
    run : Trace or path
        A trace, or a run directory (opened with its checksums verified).
    query : str, SpanQuery, PatternQuery, Condition or list of Condition
        A string is a span ``"SEQ:START:END"`` or a condition ``"forget_gate of lstm:5 below 0.1"``.
    layer, signal, threshold
        For a span given as a string: the layer (default the first), the signal (default ``hidden_state``)
        and the threshold (default 0.5); ``layer`` is also the layer of a condition's ``unit N``.
    limit : int
        Matches kept (the best).
    min_length : int
        Shortest span returned (span and condition queries).
    chunk : int
        Sequences read at a time.

    Returns
    -------
    SearchResult

    Raises
    ------
    QueryError
        (exit code 2) for an unknown layer, unit or signal, a span outside its sequence, a threshold that is
        not a number: one line that names the query.

    Examples
    --------
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_layer
    >>> lt, sig = example_layer("lstm", n=2, steps=6, units=2)
    >>> sig["hidden_state"][:, :, 0] = [[0.9, 0.8, 0.1, 0.9, 0.7, 0.2], [0.1, 0.6, 0.9, 0.9, 0.0, 0.8]]
    >>> trace = Trace({"lstm": lt})
    >>> r = search(trace, "0:0:2", threshold=0.5)            # where else are the units on over 0:0:2 on?
    >>> r.query, r.n_matches
    ('span 0:0:2 of hidden_state >= 0.5', 4)
    >>> r.matches[["rank", "sequence", "start", "end", "length"]].values.tolist()
    [[0, 0, 0, 2, 2], [1, 0, 3, 5, 2], [2, 1, 1, 4, 3], [3, 1, 5, 6, 1]]
    >>> r.matches["score"].round(2).tolist()                  # overlap x length ratio to the query's span
    [1.0, 1.0, 0.67, 0.5]
    >>> long = search(trace, "hidden_state of lstm:0 above 0.5", min_length=3)    # spans of 3 steps or more
    >>> long.matches[["sequence", "start", "end"]].values.tolist()
    [[1, 1, 4]]
    """
    trace = run if isinstance(run, Trace) else _open(run)
    if limit < 1 or min_length < 1:
        raise QueryError(f"search: limit and min_length must be >= 1, got {limit!r}, {min_length!r}")
    if isinstance(query, str) and re.fullmatch(r"\s*\d+\s*:\s*\d+\s*:\s*\d+\s*", query):
        s, a, b = parse_span(query)
        query = SpanQuery(s, a, b, DEFAULT_THRESHOLD if threshold is None else threshold, layer,
                          signal or DEFAULT_SIGNAL)  # fmt: skip
    if isinstance(query, SpanQuery):
        if not isinstance(query.threshold, (int, float)) or not math.isfinite(query.threshold):
            raise QueryError(f"search query: the threshold must be a finite number, got {query.threshold!r}")
        return _search_span(trace, query, limit, min_length, chunk)
    if isinstance(query, PatternQuery):
        return _search_pattern(trace, query, limit, chunk)
    if isinstance(query, Condition):
        query = [query]
    if isinstance(query, str):
        conds = parse_conditions(trace, query, layer=layer, chunk=chunk)
        text = query.strip()
    else:
        conds = list(query) if isinstance(query, (list, tuple)) else []
        if not conds or not all(isinstance(c, Condition) for c in conds):
            raise QueryError(
                f"search: not a query: {query!r} (expected a span or condition string, a SpanQuery, a PatternQuery, "
                "a Condition or a list of Conditions)"
            )
        for c in conds:
            _signal(trace, _layer(trace, c.layer, c.describe()), c.signal, c.describe())
            _unit(trace, c.layer, c.unit, c.describe())
        text = " and ".join(c.describe() for c in conds)
    return _search_conditions(trace, conds, text, limit, min_length, chunk)


def _open(run: str | Path) -> Trace:
    from gatelens.analysis.store import open_run

    return open_run(run)


def span_profile(values: np.ndarray, matches: pd.DataFrame) -> np.ndarray:
    """Mean of a per-step table ``values`` (N, T) over each match's span (e.g. a feature's profile).

    Examples
    --------
    >>> span_profile(np.arange(8.0).reshape(2, 4), pd.DataFrame({"sequence": [1], "start": [0], "end": [2]}))
    array([4.5])
    """
    v = np.asarray(values, np.float64)
    rs = matches["sequence"].to_numpy(np.int64)
    return _span_means(np.nan_to_num(v), rs, matches["start"].to_numpy(np.int64), matches["end"].to_numpy(np.int64))
