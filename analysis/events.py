"""Events: the steps where a unit forgets, writes or reads, and what the input was there.

Events compare a step with the *previous unmasked step in processing order* (``t - 1``, or ``t + 1``
for a ``go_backwards`` layer; masked steps carry the state and are skipped). The first unmasked step
of a sequence has no previous step and can host no event. Thresholds are parameters:

``forget``
    The memory gate -- LSTM ``forget_gate``, GRU ``update_gate`` (the share of the state kept) --
    falls below ``forget_low`` (default 0.5) from above ``forget_high`` (default 0.9) at the
    previous step: the unit drops what it was holding.
``write``
    The write gate rises to ``>= write_threshold`` (default 0.5) from below it: LSTM ``input_gate``,
    GRU ``1 - update_gate`` (the candidate's share of the new state).
``read``
    LSTM only: ``output_gate`` rises to ``>= read_threshold`` (default 0.5) from below it.

``value`` is the gate at the event (for a GRU write: ``1 - update_gate``), ``previous_value`` the same
at the previous unmasked step. ``delta_input`` and ``delta_recurrent`` split the change of the gate's
pre-activation between the two steps exactly (see :mod:`gatelens.analysis.decompose`; the bias cancels):
"did the input or the memory move this gate?" (for a GRU write the pre-activation is the update
gate's, whose fall opens the write). They are NaN when the trace carries no weights.

:func:`summarize_events` gives one row per layer, unit and event type (zero counts included) with the
event ``rate`` per eligible step, ``input_driven`` (share of events with ``|delta_input| >
|delta_recurrent|``) and what the input looked like there: for text, the tokens most over-represented
at the unit's events (:func:`event_token_lift`: ``lift = share of the events / share of all eligible
steps``), for numeric inputs the features whose mean there differs most from their overall mean in
standard deviations (:func:`event_feature_shift`).

Examples
--------
>>> import numpy as np
>>> from gatelens.analysis.trace import Trace
>>> from gatelens._examples import example_layer
>>> lt, sig = example_layer("lstm", n=1, steps=5, units=1)
>>> sig["forget_gate"][0, :, 0] = [0.95, 0.2, 0.95, 0.97, 0.3]
>>> trace = Trace({"lstm": lt}, tokens=np.array([[1, 2, 1, 1, 2]]), vocabulary=["", "a", ";"])
>>> ev = detect_events(trace)
>>> ev[ev.event == "forget"][["step", "value", "token"]]
   step  value token
0     1    0.2     ;
1     4    0.3     ;
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from gatelens.analysis._reading import (
    compress_real,
    processing,
    read,
    read_mask,
    row_numbers,
    select_layers,
    to_time_index,
    token_strings,
)
from gatelens.analysis.signals import with_role
from gatelens.analysis.trace import LayerTrace, Trace, iter_chunks
from gatelens.errors import UsageError

#: The event types (see the module docstring); a cell type has those of its gates (:func:`event_rules`).
EVENT_TYPES = ("forget", "write", "read")
EVENT_COLUMNS = [
    "layer", "sequence", "step", "unit", "event", "value", "token",
    "previous_value", "delta_input", "delta_recurrent",
]  # fmt: skip
SUMMARY_COLUMNS = ["layer", "unit", "event", "count", "rate", "input_driven", "top_tokens", "top_features"]
LIFT_COLUMNS = ["layer", "unit", "event", "token", "count", "share", "base_share", "lift"]
SHIFT_COLUMNS = ["layer", "unit", "event", "feature", "mean_at_events", "mean", "std", "z"]


def event_rules(cell_type: str) -> dict[str, tuple[str, bool, str]]:
    """Event -> (gate signal, whether the event value is 1 - gate, kind of crossing), from the gates' roles.

    ``forget``: the ``keep`` gate drops; ``write``: the ``write`` gate rises (a cell without one, the GRU,
    writes the share ``1 - keep``); ``read``: the ``read`` gate rises.

    Examples
    --------
    >>> event_rules("gru")
    {'forget': ('update_gate', False, 'drop'), 'write': ('update_gate', True, 'rise_write')}
    >>> event_rules("simple_rnn")
    {}
    """
    keep, write, read_ = (with_role(cell_type, r) for r in ("keep", "write", "read"))
    rules: dict[str, tuple[str, bool, str]] = {}
    if keep is not None:
        rules["forget"] = (keep, False, "drop")
    if write is not None or keep is not None:
        rules["write"] = (write, False, "rise_write") if write is not None else (keep, True, "rise_write")
    if read_ is not None:
        rules["read"] = (read_, False, "rise_read")
    return rules


def _check_thresholds(forget_high: float, forget_low: float, write_threshold: float, read_threshold: float) -> None:
    if not 0.0 <= forget_low <= forget_high <= 1.0:
        raise UsageError(
            f"need 0 <= forget_low <= forget_high <= 1, got forget_low={forget_low!r}, forget_high={forget_high!r}"
        )
    for name, v in (("write_threshold", write_threshold), ("read_threshold", read_threshold)):
        if not 0.0 < v <= 1.0:
            raise UsageError(f"{name} must be in (0, 1], got {v!r}")


#: Sequences whose gate parts (float64 input and recurrent parts of the event gates) are held at once by the events.
PARTS_SEQUENCES = 64


def _f32_floor(t: float) -> np.float32:
    """The largest float32 <= ``t``: for a float32 ``v``, ``v > t`` exactly when ``v > _f32_floor(t)``."""
    f = np.float32(t)
    return np.nextafter(f, np.float32(-np.inf)) if float(f) > t else f


def _f32_ceil(t: float) -> np.float32:
    """The smallest float32 >= ``t``: for a float32 ``v``, ``v >= t`` (and ``v < t``) exactly as against it."""
    f = np.float32(t)
    return np.nextafter(f, np.float32(np.inf)) if float(f) < t else f


def _event_parts(lt: LayerTrace, rows: Any, gates: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per event gate, its (input, recurrent) pre-activation parts (n, T, u) in float64: the columns of
    :func:`gatelens.analysis.decompose._gate_parts` for those gates only (an event gate is never the GRU candidate,
    whose recurrent part differs), one matrix product each for the input and the recurrent side."""
    xw, hu = _event_part_matrices(lt, rows, gates)
    u = lt.info.units
    return {g: (xw[..., k * u : (k + 1) * u], hu[..., k * u : (k + 1) * u]) for k, g in enumerate(gates)}


def _held_dtype(array: Any) -> np.dtype:
    """The float type that holds ``array``'s values exactly: its own (float16 as float32), float64 if not a float."""
    dtype = np.dtype(getattr(array, "dtype", np.float64))
    return np.promote_types(dtype, np.float32) if dtype.kind == "f" else np.dtype(np.float64)


def _event_part_matrices(lt: LayerTrace, rows: Any, gates: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The parts of :func:`_event_parts` side by side: input and recurrent (n, T, len(gates) * u), C-contiguous."""
    from gatelens.analysis.decompose import _matmul, _weights
    from gatelens.analysis.signals import WEIGHT_BLOCKS, with_role

    info = lt.info
    kernel, rk, _ = _weights(lt)
    u = info.units
    blocks = list(WEIGHT_BLOCKS[info.cell_type])
    cols = np.concatenate([np.arange(blocks.index(g) * u, (blocks.index(g) + 1) * u) for g in gates])
    # read as held (float16 as float32, exactly), not float64: _matmul casts for the product
    x = read(lt.inputs, rows, _held_dtype(lt.inputs))
    out = lt[with_role(info.cell_type, "output")]  # the registry's h
    h = processing(read(out, rows, _held_dtype(out)), info.go_backwards)
    # the previous step's h (zeros before the first), shifted and made float64 in one pass
    h_prev = np.empty(h.shape, np.float64)
    shifted = processing(h_prev, info.go_backwards)
    shifted[:, 0] = 0.0
    shifted[:, 1:] = h[:, :-1]
    del h, shifted
    xw = _matmul(x, np.ascontiguousarray(kernel[:, cols]))
    del x
    hu = _matmul(h_prev, np.ascontiguousarray(rk[:, cols]))
    return xw, hu


def _layer_events(
    trace: Trace, lt: LayerTrace, rows: slice, thresholds: dict[str, float], events: Sequence[str]
) -> Iterator[tuple[slice, pd.DataFrame]]:
    """(rows, events of those rows ordered by sequence, step, unit, event), :data:`PARTS_SEQUENCES` sequences at
    a time (the gate parts of 256 sequences x 200 steps x 128 units are ~0.4 GB a layer); blocks without events are
    left out. Consecutive blocks in turn are in the global order of :func:`detect_events`."""
    for sub, block in _layer_blocks(trace, lt, rows, thresholds, events):
        yield sub, block.frame()


def _layer_blocks(
    trace: Trace, lt: LayerTrace, rows: slice, thresholds: dict[str, float], events: Sequence[str]
) -> Iterator[tuple[slice, _Block]]:
    """:func:`_layer_events` as :class:`_Block` (columns as arrays, no DataFrame)."""
    for a in range(rows.start, rows.stop, PARTS_SEQUENCES):
        sub = slice(a, min(a + PARTS_SEQUENCES, rows.stop))
        block = _block_events(trace, lt, sub, thresholds, events)
        if block is not None:
            yield sub, block


def _str_dtype() -> Any:
    """The dtype pandas gives a column of Python strings (its Arrow-backed ``str`` in pandas 3; object before)."""
    return pd.Series(np.array(["a"], dtype=object)).dtype


def _taken(strings: Any, codes: np.ndarray, dtype: Any) -> Any:
    """``strings[codes]`` as a pandas array of the string ``dtype``, taken by Arrow."""
    import pyarrow as pa

    return pd.array(_arrow_take([str(t) for t in strings], pa.large_string(), codes), dtype=dtype)


def _arrow_take(strings: list[str], text: Any, codes: np.ndarray) -> Any:
    """``strings[codes]`` as an Arrow array of type ``text``, in :func:`_arrow_pool`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.take(pa.array(strings, text), pa.array(codes), memory_pool=_arrow_pool())


def _arrow_pool() -> Any:
    """The Arrow memory pool for the events' columns and file: the system allocator's.

    Arrow's default pool (mimalloc) asks the kernel for transparent huge pages, and every new one is compacted and
    zeroed in the kernel: on the 256 x 200 run, taking the 3.3 M events' text columns (24 takes of 0.4 M rows, held)
    cost 1.7 s of system time in it against 0.06 s in the system allocator's.
    """
    import pyarrow as pa

    return pa.system_memory_pool()


class _Block:
    """The events of one block of sequences of one layer, a column an array (in the table's order).

    ``code`` indexes ``names`` (the block's event types), ``token_code`` indexes ``token_text`` (the strings of
    the block's distinct token ids; None for numeric inputs). :meth:`frame` is the DataFrame of
    :func:`detect_events`, :meth:`table` the same rows as a pyarrow table, built without Python objects per row.
    """

    __slots__ = ("layer", "columns", "code", "names", "token_code", "token_text")

    def __init__(
        self,
        layer: str,
        columns: dict[str, np.ndarray],
        code: np.ndarray,
        names: list[str],
        token_code: np.ndarray | None,
        token_text: np.ndarray | None,
    ) -> None:
        self.layer, self.columns, self.code, self.names = layer, columns, code, names
        self.token_code, self.token_text = token_code, token_text

    def __len__(self) -> int:
        return len(self.code)

    def frame(self, stop: int | None = None) -> pd.DataFrame:
        """The rows (the first ``stop`` only, when given) as :func:`detect_events` has them."""
        c = {k: v[:stop] for k, v in self.columns.items()}
        code = self.code[:stop]
        n = len(code)
        text = _str_dtype()
        if isinstance(text, np.dtype):  # pandas without its string dtype: object arrays, as pandas makes them
            names = np.asarray(self.names, dtype=object)
            token = None if self.token_code is None else self.token_text[self.token_code[:stop]]
            layer, event = self.layer, names[code]
        else:  # pandas' Arrow strings, taken by Arrow from the few distinct ones (no Python string per row)
            token = None if self.token_code is None else _taken(self.token_text, self.token_code[:stop], text)
            layer, event = _taken([self.layer], np.zeros(n, np.int8), text), _taken(self.names, code, text)
        return pd.DataFrame(
            {
                "layer": layer,
                "sequence": c["sequence"],
                "step": c["step"],
                "unit": c["unit"],
                "event": event,
                "value": c["value"],
                "token": token,
                "previous_value": c["previous_value"],
                "delta_input": c["delta_input"],
                "delta_recurrent": c["delta_recurrent"],
            },
            copy=False,  # one array per column, not copied into a 2-D block (detect_events frees a column at a time)
        )

    def table(self, schema: Any) -> Any:
        """The rows as a pyarrow table of ``schema`` (that of :meth:`frame` through ``pa.Table.from_pandas``): the
        text columns taken from their few distinct strings by Arrow, the numbers without a copy."""
        import pyarrow as pa

        n = len(self)
        text = schema.field("event").type

        def taken(strings: Any, codes: np.ndarray) -> Any:
            return _arrow_take(list(strings), text, codes)

        token = pa.nulls(n, schema.field("token").type)
        if self.token_code is not None:
            token = taken(self.token_text, self.token_code)
        arrays = {
            "layer": taken([self.layer], np.zeros(n, np.int8)),
            "event": taken(self.names, self.code),
            "token": token,
        }
        return pa.Table.from_arrays(
            [arrays[f.name] if f.name in arrays else pa.array(self.columns[f.name], f.type) for f in schema],
            schema=schema,
        )


def _block_events(
    trace: Trace, lt: LayerTrace, rows: slice, thresholds: dict[str, float], events: Sequence[str]
) -> _Block | None:
    """The events of sequences ``rows`` of one layer, in order; None when there are none.

    The gates are compared as float32 (what the store holds, or exactly converted from float16) against the float32
    neighbours of the thresholds that give the same answer as comparing in float64; ``1 - gate`` (GRU write) is
    formed in float64 as before. The hits of every event type go into one (sequence, step, unit, event) array, so
    one ``flatnonzero`` lists them in the table's order (no sort). The values and the gate parts at the events are
    read through flat indices into the gates (stacked) and the parts, one ``take`` each for all event types.
    """
    info = lt.info
    rules = [(e, r) for e, r in event_rules(info.cell_type).items() if e in events]
    if not rules:
        return None
    m = read_mask(lt, rows)
    if not m.any():
        return None
    back = info.go_backwards
    n, t_len = m.shape
    units = info.units
    if t_len < 2:
        return None
    full = bool(m.all())
    if full:  # every step real: processing index p, previous p - 1
        order = None
    else:
        order, n_real = compress_real(processing(m, back))
        pos_valid = np.arange(1, t_len)[None, :] < n_real[:, None]  # (n, T-1): a real step with a real predecessor

    def compressed(arr: np.ndarray) -> np.ndarray:
        a = processing(arr, back)
        return a if order is None else np.take_along_axis(a, order[..., None], axis=1)

    gates = list(dict.fromkeys(sig for _, (sig, _, _) in rules))
    raw = np.empty((len(gates), n, t_len, units), np.float32)  # the event gates in time order, stacked
    for j, signal in enumerate(gates):
        raw[j] = read(lt[signal], rows, np.float32)
    signals = {signal: compressed(raw[j]) for j, signal in enumerate(gates)}
    hits = np.empty((n, t_len - 1, units, len(rules)), bool)
    for k, (_, (signal, complement, kind)) in enumerate(rules):
        g = signals[signal]
        if complement:  # 1 - gate in float64, compared as before
            g = 1.0 - g.astype(np.float64)
            lo_prev = hi_cur = thresholds["write_threshold"]
            hit = (g[:, :-1] < lo_prev) & (g[:, 1:] >= hi_cur)
        elif kind == "drop":
            hit = (g[:, :-1] > _f32_floor(thresholds["forget_high"])) & (g[:, 1:] < _f32_ceil(thresholds["forget_low"]))
        else:
            thr = _f32_ceil(thresholds["write_threshold" if kind == "rise_write" else "read_threshold"])
            hit = (g[:, :-1] < thr) & (g[:, 1:] >= thr)
        if order is not None:
            hit &= pos_valid[..., None]
        hits[..., k] = hit[:, ::-1] if back else hit  # backward: processing positions run against time
        del hit, g
    del signals
    flat = np.flatnonzero(hits)
    del hits
    if not len(flat):
        return None
    flat, e_idx = np.divmod(flat, len(rules))
    flat, unit = np.divmod(flat, units)
    s, pos = np.divmod(flat, t_len - 1)
    del flat
    if back:
        pos = t_len - 2 - pos
    p_cur, p_prev = (pos + 1, pos) if order is None else (order[s, pos + 1], order[s, pos])
    step, prev_step = to_time_index(p_cur, t_len, back), to_time_index(p_prev, t_len, back)
    del p_cur, p_prev, pos
    code = e_idx.astype(np.int8)
    gate_of = np.asarray([gates.index(sig) for _, (sig, _, _) in rules], np.int64)[e_idx]
    del e_idx
    at = s * t_len + step  # (sequence, step) of the event, and of its previous real step, flat
    at_prev = s * t_len + prev_step
    cell = (gate_of * n * t_len) * units + unit  # gate and unit, flat in ``raw``
    value = raw.reshape(-1).take(cell + at * units).astype(np.float64)
    previous = raw.reshape(-1).take(cell + at_prev * units).astype(np.float64)
    del raw
    for k, (_, (_, complement, _)) in enumerate(rules):
        if complement:
            sel = code == k
            value[sel], previous[sel] = 1.0 - value[sel], 1.0 - previous[sel]
    has_weights = {"kernel", "recurrent_kernel", "bias"} <= set(lt.weights)
    if has_weights:
        inp, rec = _event_part_matrices(lt, rows, gates)
        width = len(gates) * units
        col = gate_of * units + unit  # the column of the event's gate and unit in the parts
        cur, prev = at * width + col, at_prev * width + col
        # the change between the event's step and the previous real one, as before
        d_in = inp.reshape(-1).take(cur) - inp.reshape(-1).take(prev)
        d_rec = rec.reshape(-1).take(cur) - rec.reshape(-1).take(prev)
        del inp, rec, cur, prev, col
    else:
        d_in = np.full(len(s), np.nan)
        d_rec = np.full(len(s), np.nan)
    del cell, gate_of, at_prev
    token_code = token_text = None
    if trace.tokens is not None:
        ids, inverse = np.unique(read(trace.tokens, rows, np.int64), return_inverse=True)
        token_code = inverse.reshape(-1).take(at).astype(np.int32)
        token_text = token_strings(trace, ids)  # the strings of the block's distinct ids only
    columns = {
        "sequence": row_numbers(rows)[s].astype(np.int32),
        "step": step.astype(np.int32),
        "unit": unit.astype(np.int32),
        "value": value,
        "previous_value": previous,
        "delta_input": d_in,
        "delta_recurrent": d_rec,
    }
    return _Block(info.name, columns, code, [e for e, _ in rules], token_code, token_text)


def detect_events(
    trace: Trace,
    *,
    layers: Sequence[str] | str | None = None,
    events: Sequence[str] = ("forget", "write", "read"),
    forget_high: float = 0.9,
    forget_low: float = 0.5,
    write_threshold: float = 0.5,
    read_threshold: float = 0.5,
    chunk: int = 256,
) -> pd.DataFrame:
    """Every forget, write and read event of every unit (vectorised, a chunk of sequences at a time).

    Parameters
    ----------
    trace : Trace
    layers : str or list of str, optional
        Default all layers (SimpleRNN layers have no gates and no events).
    events : sequence of {"forget", "write", "read"}
    forget_high, forget_low, write_threshold, read_threshold : float
        See the module docstring.
    chunk : int
        Sequences read at a time.

    Returns
    -------
    DataFrame
        ``layer, sequence, step, unit, event, value, token, previous_value, delta_input,
        delta_recurrent``; ``token`` is the token read at the event (None for numeric inputs).
        Ordered by layer, sequence, step, unit, event.

    Examples
    --------
    See the module docstring.
    """
    frames = list(
        iter_events(
            trace, layers=layers, events=events, forget_high=forget_high, forget_low=forget_low,
            write_threshold=write_threshold, read_threshold=read_threshold, chunk=chunk,
        )
    )  # fmt: skip
    return _joined(frames)


def _joined(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return _empty_events()
    # a column at a time, each block's piece dropped once joined: the blocks and the table are never held whole
    # together (pd.concat of the frames would hold both: twice the table)
    columns = {c: pd.concat([f.pop(c) for f in frames], ignore_index=True) for c in EVENT_COLUMNS}
    return pd.DataFrame(columns, copy=False)


def _detect_with_summary(trace: Trace, chunk: int = 256) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``detect_events(trace)`` and its summary, tallied from the blocks as they are found
    (:class:`EventSummaryBuilder`) instead of grouping the whole table by its text columns afterwards."""
    builder = EventSummaryBuilder(trace, chunk=chunk)
    thresholds = _thresholds(("forget", "write", "read"), 0.9, 0.5, 0.5, 0.5)
    frames = []
    for _, rows, block in _event_chunks(trace, None, ("forget", "write", "read"), thresholds, chunk):
        builder._add_block(block, rows)
        frames.append(block.frame())
    return _joined(frames), builder.result()


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series(dtype=object if c in ("layer", "event", "token") else float) for c in EVENT_COLUMNS}
    )


def _event_chunks(
    trace: Trace, layers: Any, events: Sequence[str], thresholds: dict[str, float], chunk: int
) -> Iterator[tuple[str, slice, _Block]]:
    """(layer, rows, events of those rows ordered by sequence, step, unit, event), a block of at most
    :data:`PARTS_SEQUENCES` sequences (and ``chunk``) at a time.

    Sequence is the first sort key and blocks are consecutive, so the blocks in turn are in the
    global order of :func:`detect_events`.
    """
    for name in select_layers(trace, layers):
        lt = trace[name]
        for rows in iter_chunks(lt.shape[0], chunk):
            for sub, block in _layer_blocks(trace, lt, rows, thresholds, events):
                yield name, sub, block


def _eligible(lt: LayerTrace, rows: Any) -> np.ndarray:
    """(n, T) bool: unmasked steps that have an unmasked predecessor in processing order."""
    m = read_mask(lt, rows)
    mp = processing(m, lt.info.go_backwards)
    first = np.cumsum(mp, axis=1) == 1
    return processing(mp & ~first, lt.info.go_backwards)


def _base_rates(trace: Trace, layer: str, chunk: int) -> tuple[int, pd.Series | None, pd.DataFrame | None]:
    """Eligible step count; token counts (by string) and feature mean/std over eligible steps."""
    lt = trace[layer]
    n_eligible = 0
    ids_count: dict[int, int] = {}
    x_sum = x_sq = None
    shift = None
    for rows in iter_chunks(lt.shape[0], chunk):
        el = _eligible(lt, rows)
        n_eligible += int(el.sum())
        if trace.tokens is not None:
            ids, counts = np.unique(read(trace.tokens, rows, np.int64)[el], return_counts=True)
            for i, c in zip(ids.tolist(), counts.tolist()):
                ids_count[i] = ids_count.get(i, 0) + c
        if trace.x is not None and el.any():
            x = read(trace.x, rows)[el]
            if shift is None:
                shift = x[0].copy()
                x_sum, x_sq = np.zeros(x.shape[1]), np.zeros(x.shape[1])
            d = x - shift
            x_sum += d.sum(0)
            x_sq += (d * d).sum(0)
    tokens = None
    if trace.tokens is not None:
        ids = np.asarray(sorted(ids_count), np.int64)
        tokens = pd.Series([ids_count[i] for i in ids.tolist()], index=token_strings(trace, ids), dtype=np.int64)
        tokens = tokens.groupby(level=0).sum()
    features = None
    if trace.x is not None and n_eligible > 0 and shift is not None:
        m1 = x_sum / n_eligible
        std = np.sqrt(np.maximum(x_sq / n_eligible - m1 * m1, 0.0))
        names = trace.feature_names or [f"x{k}" for k in range(len(shift))]
        features = pd.DataFrame({"feature": list(names), "mean": shift + m1, "std": std})
    return n_eligible, tokens, features


def event_token_lift(events: pd.DataFrame, trace: Trace, *, chunk: int = 256) -> pd.DataFrame:
    """Per layer, unit and event type, each token seen at the events with its lift over its base rate.

    ``share`` = the token's share of the unit's events of that type, ``base_share`` = its share of
    all eligible steps of the layer (unmasked steps with an unmasked predecessor), ``lift = share /
    base_share``. Empty for traces without tokens.

    Returns
    -------
    DataFrame
        ``layer, unit, event, token, count, share, base_share, lift``, by descending lift then count.

    Examples
    --------
    >>> import numpy as np
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_layer
    >>> lt, sig = example_layer("lstm", n=1, steps=5, units=1)
    >>> sig["forget_gate"][0, :, 0] = [0.95, 0.2, 0.95, 0.97, 0.3]
    >>> trace = Trace({"lstm": lt}, tokens=np.array([[1, 2, 1, 1, 2]]), vocabulary=["", "a", ";"])
    >>> event_token_lift(detect_events(trace, events=["forget"]), trace)[["token", "count", "base_share", "lift"]]
      token  count  base_share  lift
    0     ;      2         0.5   2.0
    """
    if trace.tokens is None or events.empty:
        return pd.DataFrame(
            {c: pd.Series(dtype=object if c in ("layer", "event", "token") else float) for c in LIFT_COLUMNS}
        )
    frames = []
    for layer, ev in events.groupby("layer", sort=False):
        n_eligible, base, _ = _base_rates(trace, str(layer), chunk)
        counts = ev.groupby(["unit", "event", "token"]).size().rename("count").reset_index()
        totals = counts.groupby(["unit", "event"])["count"].transform("sum")
        counts["share"] = counts["count"] / totals
        counts["base_share"] = counts["token"].map(base).to_numpy(float) / n_eligible
        counts["lift"] = counts["share"] / counts["base_share"]
        counts.insert(0, "layer", layer)
        frames.append(counts)
    df = pd.concat(frames, ignore_index=True)
    df = df.sort_values(["layer", "unit", "event", "lift", "count"], ascending=[True, True, True, False, False])
    return df[LIFT_COLUMNS].reset_index(drop=True)


def event_feature_shift(events: pd.DataFrame, trace: Trace, *, chunk: int = 256) -> pd.DataFrame:
    """Per layer, unit and event type, the mean of each input feature at the events vs overall.

    ``z = (mean_at_events - mean) / std`` with ``mean`` and ``std`` over the layer's eligible steps
    (features with ``std == 0`` are left out). Uses the model's numeric input (``trace.x``); empty
    for text traces.

    Returns
    -------
    DataFrame
        ``layer, unit, event, feature, mean_at_events, mean, std, z``, by descending ``|z|``.

    Examples
    --------
    >>> import numpy as np
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_layer
    >>> x = np.array([[[0.0], [5.0], [0.0], [5.0], [0.0]]], np.float32)
    >>> lt, sig = example_layer("lstm", n=1, steps=5, units=1, inputs=x)
    >>> sig["forget_gate"][0, :, 0] = [0.95, 0.2, 0.95, 0.2, 0.95]
    >>> trace = Trace({"lstm": lt}, x=x, feature_names=["load"])
    >>> event_feature_shift(detect_events(trace, events=["forget"]), trace)[["feature", "mean_at_events", "z"]]
      feature  mean_at_events    z
    0    load             5.0  1.0
    """
    if trace.x is None or events.empty:
        return pd.DataFrame(
            {c: pd.Series(dtype=object if c in ("layer", "event", "feature") else float) for c in SHIFT_COLUMNS}
        )
    frames = []
    for layer, ev in events.groupby("layer", sort=False):
        _, _, base = _base_rates(trace, str(layer), chunk)
        if base is None:
            continue
        lt = trace[str(layer)]
        values = np.empty((len(ev), len(base)))
        seqs = ev["sequence"].to_numpy()
        steps = ev["step"].to_numpy()
        for rows in iter_chunks(lt.shape[0], chunk):  # gather x at the events, a chunk of sequences at a time
            sel = np.nonzero((seqs >= rows.start) & (seqs < rows.stop))[0]
            if len(sel):
                x = read(trace.x, rows)
                values[sel] = x[seqs[sel] - rows.start, steps[sel]]
        means = (
            pd.DataFrame(values, columns=base["feature"].tolist())
            .assign(unit=ev["unit"].to_numpy(), event=ev["event"].to_numpy())
            .groupby(["unit", "event"])
            .mean()
            .stack()
            .rename("mean_at_events")
            .reset_index()
            .rename(columns={"level_2": "feature"})
        )
        means = means.merge(base, on="feature")
        means = means[means["std"] > 0]
        means["z"] = (means["mean_at_events"] - means["mean"]) / means["std"]
        means.insert(0, "layer", layer)
        frames.append(means)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SHIFT_COLUMNS)
    df = df.assign(_abs=df["z"].abs()).sort_values(
        ["layer", "unit", "event", "_abs"], ascending=[True, True, True, False]
    )
    return df[SHIFT_COLUMNS].reset_index(drop=True)


def summarize_events(
    events: pd.DataFrame,
    trace: Trace,
    *,
    layers: Sequence[str] | str | None = None,
    top: int = 5,
    min_count: int = 2,
    chunk: int = 256,
) -> pd.DataFrame:
    """What makes each unit forget, write or read: counts, rates and the input at its events.

    Parameters
    ----------
    events : DataFrame
        From :func:`detect_events` on ``trace``.
    trace : Trace
    layers : str or list of str, optional
        Layers to summarise (default all: pass the same layers as to :func:`detect_events`).
    top : int
        Tokens / features listed per row.
    min_count : int
        A token is listed only if seen at least this often at the unit's events (rare tokens have
        huge but meaningless lifts).
    chunk : int

    Returns
    -------
    DataFrame
        ``layer, unit, event, count, rate, input_driven, top_tokens, top_features``: one row per layer,
        unit and event type of the layer's cell (zero counts included). ``rate`` = count / eligible
        steps; ``input_driven`` the share of the events with ``|delta_input| > |delta_recurrent|``
        (0 when there are none); ``top_tokens`` like ``"(" n=12 lift=8.3; ...`` (text traces; tokens JSON-quoted),
        ``top_features`` like ``x0 +1.83 sd; ...`` (numeric traces); an empty string otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_layer
    >>> lt, sig = example_layer("lstm", n=1, steps=5, units=1)
    >>> sig["forget_gate"][0, :, 0] = [0.95, 0.2, 0.95, 0.97, 0.3]
    >>> trace = Trace({"lstm": lt}, tokens=np.array([[1, 2, 1, 1, 2]]), vocabulary=["", "a", ";"])
    >>> summarize_events(detect_events(trace), trace)[["event", "count", "rate", "top_tokens"]]
        event  count  rate             top_tokens
    0  forget      2   0.5  ";" n=2 lift=2.0
    1   write      0   0.0
    2    read      0   0.0
    """
    lift = event_token_lift(events, trace, chunk=chunk)
    shift = event_feature_shift(events, trace, chunk=chunk)
    agg = None
    if len(events):
        driven = (events["delta_input"].abs() > events["delta_recurrent"].abs()).astype(float)
        agg = (
            events.assign(_driven=driven.to_numpy())
            .groupby(["layer", "unit", "event"])
            .agg(count=("step", "size"), input_driven=("_driven", "mean"))
        )
    return _summary_table(trace, layers, agg, lift, shift, top, min_count, chunk)


def _summary_table(
    trace: Trace,
    layers: Sequence[str] | str | None,
    agg: pd.DataFrame | None,
    lift: pd.DataFrame,
    shift: pd.DataFrame,
    top: int,
    min_count: int,
    chunk: int,
) -> pd.DataFrame:
    """The rows of :func:`summarize_events` from ``agg`` ((layer, unit, event) -> count, input_driven) and the tables."""
    frames = []
    for name in select_layers(trace, layers):
        lt = trace[name]
        kinds = list(event_rules(lt.info.cell_type))
        if not kinds:
            continue
        u = lt.info.units
        n_eligible = sum(int(_eligible(lt, rows).sum()) for rows in iter_chunks(lt.shape[0], chunk))
        grid = pd.DataFrame({"layer": name, "unit": np.repeat(np.arange(u), len(kinds)), "event": kinds * u})
        layer_agg = agg.xs(name, level="layer") if agg is not None and name in agg.index.get_level_values(0) else None
        if layer_agg is not None and len(layer_agg):
            grid = grid.merge(layer_agg.reset_index(), on=["unit", "event"], how="left")
        else:
            grid["count"], grid["input_driven"] = 0, 0.0
        grid["count"] = grid["count"].fillna(0).astype(np.int64)
        grid["input_driven"] = grid["input_driven"].fillna(0.0).astype(float)
        grid["rate"] = grid["count"] / n_eligible if n_eligible else 0.0
        grid["top_tokens"] = _top_strings(
            lift[lift["layer"] == name],
            name,
            grid,
            top,
            lambda r: f"{json.dumps(str(r.token), ensure_ascii=False)} n={r.count} lift={r.lift:.1f}",
            lambda d: d[d["count"] >= min_count],
        )
        grid["top_features"] = _top_strings(
            shift[shift["layer"] == name], name, grid, top, lambda r: f"{r.feature} {r.z:+.2f} sd", lambda d: d
        )
        frames.append(grid[SUMMARY_COLUMNS])
    if not frames:
        return pd.DataFrame(
            {
                c: pd.Series(dtype=object if c in ("layer", "event", "top_tokens", "top_features") else float)
                for c in SUMMARY_COLUMNS
            }
        )
    return pd.concat(frames, ignore_index=True)


def _top_strings(table: pd.DataFrame, layer: str, grid: pd.DataFrame, top: int, fmt, keep) -> list[str]:
    if table.empty:
        return [""] * len(grid)
    # the first ``top`` rows of each (unit, event) in the table's order, formatted in one pass (not a frame a group)
    head = keep(table).groupby(["unit", "event"], sort=False).head(top)
    joined: dict[tuple[Any, Any], list[str]] = {}
    for key, text in zip(zip(head["unit"].tolist(), head["event"].tolist()), map(fmt, head.itertuples())):
        joined.setdefault(key, []).append(text)
    return ["; ".join(joined.get(k, ())) for k in zip(grid["unit"].tolist(), grid["event"].tolist())]


def iter_events(
    trace: Trace,
    *,
    layers: Sequence[str] | str | None = None,
    events: Sequence[str] = ("forget", "write", "read"),
    forget_high: float = 0.9,
    forget_low: float = 0.5,
    write_threshold: float = 0.5,
    read_threshold: float = 0.5,
    chunk: int = 256,
    summary: EventSummaryBuilder | None = None,
) -> Iterator[pd.DataFrame]:
    """The rows of :func:`detect_events`, one chunk of sequences of one layer at a time (memory bounded by ``chunk``).

    The frames, concatenated in turn, are :func:`detect_events` (same arguments). Chunks without events
    are not yielded. ``summary``, when given, is fed every chunk (see :class:`EventSummaryBuilder`).

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> trace, sig = example_trace("lstm", n=3, steps=5, units=1)
    >>> sig["forget_gate"][:, :, 0] = [0.95, 0.2, 0.95, 0.97, 0.3]
    >>> [len(df) for df in iter_events(trace, events=["forget"], chunk=2)]
    [4, 2]
    """
    thresholds = _thresholds(events, forget_high, forget_low, write_threshold, read_threshold)
    for name, rows, block in _event_chunks(trace, layers, events, thresholds, chunk):
        df = block.frame()
        if summary is not None:
            summary.add(df, name, rows)
        yield df


def check_event_types(events: Sequence[str]) -> None:
    """Raise :class:`~gatelens.errors.UsageError` naming the event types of ``events`` that are not :data:`EVENT_TYPES`.

    Examples
    --------
    >>> check_event_types(["forget", "read"])
    >>> check_event_types(["forgot"])
    Traceback (most recent call last):
    gatelens.errors.UsageError: unknown event type(s) ['forgot']; the event types are ['forget', 'read', 'write']
    """
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if unknown:
        raise UsageError(f"unknown event type(s) {unknown}; the event types are {sorted(EVENT_TYPES)}")


def _thresholds(
    events: Sequence[str], forget_high: float, forget_low: float, write_threshold: float, read_threshold: float
) -> dict[str, float]:
    _check_thresholds(forget_high, forget_low, write_threshold, read_threshold)
    check_event_types(events)
    return {
        "forget_high": forget_high, "forget_low": forget_low,
        "write_threshold": write_threshold, "read_threshold": read_threshold,
    }  # fmt: skip


def iter_event_tables(
    trace: Trace,
    *,
    layers: Sequence[str] | str | None = None,
    events: Sequence[str] = ("forget", "write", "read"),
    forget_high: float = 0.9,
    forget_low: float = 0.5,
    write_threshold: float = 0.5,
    read_threshold: float = 0.5,
    chunk: int = 256,
    summary: EventSummaryBuilder | None = None,
) -> Iterator[Any]:
    """The frames of :func:`iter_events` (same arguments) as pyarrow tables, made without the frames.

    Each table is what ``pa.Table.from_pandas(frame, preserve_index=False)`` makes of the frame (the same
    columns, types and pandas metadata, so a file of them reads back as the frames); the text columns are taken
    from the few distinct strings of each block by Arrow, not made a Python string per row. ``summary``, when
    given, is fed every block (without its frame).

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> trace, sig = example_trace("lstm", n=3, steps=5, units=1)
    >>> sig["forget_gate"][:, :, 0] = [0.95, 0.2, 0.95, 0.97, 0.3]
    >>> [t.num_rows for t in iter_event_tables(trace, events=["forget"], chunk=2)]
    [4, 2]
    """
    import pyarrow as pa

    thresholds = _thresholds(events, forget_high, forget_low, write_threshold, read_threshold)
    schema = None
    for _, rows, block in _event_chunks(trace, layers, events, thresholds, chunk):
        if schema is None:  # the frame's schema, from its first row (the types do not depend on the rows)
            schema = pa.Schema.from_pandas(block.frame(stop=1), preserve_index=False)
        if summary is not None:
            summary._add_block(block, rows)
        yield block.table(schema)


class EventSummaryBuilder:
    """:func:`summarize_events` built up from chunks of events (memory bounded by units, tokens and features).

    Feed it every chunk of :func:`iter_events` (``iter_events(..., summary=builder)``), then call
    :meth:`result`. The counts, rates and token lifts equal :func:`summarize_events` on the concatenated
    events; ``input_driven`` and the feature means are sums over chunks divided by counts.

    Parameters
    ----------
    trace : Trace
    layers, top, min_count, chunk
        As for :func:`summarize_events`.

    Examples
    --------
    >>> import numpy as np
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_layer
    >>> lt, sig = example_layer("lstm", n=1, steps=5, units=1)
    >>> sig["forget_gate"][0, :, 0] = [0.95, 0.2, 0.95, 0.97, 0.3]
    >>> trace = Trace({"lstm": lt}, tokens=np.array([[1, 2, 1, 1, 2]]), vocabulary=["", "a", ";"])
    >>> b = EventSummaryBuilder(trace)
    >>> _ = list(iter_events(trace, summary=b))
    >>> b.result().equals(summarize_events(detect_events(trace), trace))
    True
    """

    def __init__(
        self,
        trace: Trace,
        *,
        layers: Sequence[str] | str | None = None,
        top: int = 5,
        min_count: int = 2,
        chunk: int = 256,
    ) -> None:
        self.trace, self.layers, self.top, self.min_count, self.chunk = trace, layers, top, min_count, chunk
        self._tallies: dict[str, _Tally] = {}  # layer -> what its events added up to (in arrays, by group)

    def _tally(self, layer: str) -> _Tally:
        if layer not in self._tallies:
            info = self.trace[layer].info
            self._tallies[layer] = _Tally(info.units, list(event_rules(info.cell_type)))
        return self._tallies[layer]

    def add(self, ev: pd.DataFrame, layer: str, rows: slice) -> None:
        """Add one chunk of events of ``layer`` (sequences ``rows``)."""
        if ev.empty:
            return
        for name in pd.unique(ev["layer"]):  # one layer, the frames of iter_events
            part = ev if (ev["layer"] == name).all() else ev[(ev["layer"] == name).to_numpy()]
            tally = self._tally(str(name))
            codes, kinds = pd.factorize(part["event"])
            token = None
            if self.trace.tokens is not None:
                token = pd.factorize(part["token"])
            tally.add(
                self._x_at(part["sequence"].to_numpy(), part["step"].to_numpy(), rows),
                part["unit"].to_numpy(),
                np.asarray([tally.kinds.index(k) for k in kinds], np.int64)[codes],
                part["delta_input"].to_numpy(),
                part["delta_recurrent"].to_numpy(),
                None if token is None else (token[0], [str(t) for t in token[1]]),
            )

    def _add_block(self, block: _Block, rows: slice) -> None:
        """Add one :class:`_Block` (what :meth:`add` does with its frame, without making it)."""
        if not len(block):
            return
        tally = self._tally(block.layer)
        c = block.columns
        token = None
        if self.trace.tokens is not None and block.token_code is not None:
            token = (block.token_code, [str(t) for t in block.token_text])
        tally.add(
            self._x_at(c["sequence"], c["step"], rows),
            c["unit"],
            np.asarray([tally.kinds.index(k) for k in block.names], np.int64)[block.code],
            c["delta_input"],
            c["delta_recurrent"],
            token,
        )

    def _x_at(self, sequence: np.ndarray, step: np.ndarray, rows: slice) -> np.ndarray | None:
        if self.trace.x is None:
            return None
        return read(self.trace.x, rows)[sequence - rows.start, step].astype(np.float64)

    def result(self) -> pd.DataFrame:
        """The summary table (columns and meaning as :func:`summarize_events`)."""
        counts, tokens, xsums = _Tally.frames(self._tallies)
        lift_frames, shift_frames = [], []
        if counts is not None:
            counts = counts.sort_index()
            for layer in counts.index.get_level_values(0).unique():
                n_eligible, base, feats = _base_rates(self.trace, str(layer), self.chunk)
                if tokens is not None and base is not None:
                    c = tokens.sort_index().loc[layer].rename("count").reset_index()
                    c.columns = ["unit", "event", "token", "count"]
                    c["count"] = c["count"].astype(np.int64)
                    totals = c.groupby(["unit", "event"])["count"].transform("sum")
                    c["share"] = c["count"] / totals
                    c["base_share"] = c["token"].map(base).to_numpy(float) / n_eligible
                    c["lift"] = c["share"] / c["base_share"]
                    c.insert(0, "layer", layer)
                    lift_frames.append(c)
                if xsums is not None and feats is not None:
                    sums = xsums.sort_index().loc[layer]
                    n = counts.loc[layer, "count"].reindex(sums.index).to_numpy(float)
                    means = pd.DataFrame(sums.to_numpy() / n[:, None], index=sums.index, columns=feats["feature"])
                    m = means.stack().rename("mean_at_events").reset_index()
                    m.columns = ["unit", "event", "feature", "mean_at_events"]
                    m = m.merge(feats, on="feature")
                    m = m[m["std"] > 0]
                    m["z"] = (m["mean_at_events"] - m["mean"]) / m["std"]
                    m.insert(0, "layer", layer)
                    shift_frames.append(m)
        lift = (
            pd.concat(lift_frames, ignore_index=True)
            .sort_values(["layer", "unit", "event", "lift", "count"], ascending=[True, True, True, False, False])[
                LIFT_COLUMNS
            ]
            .reset_index(drop=True)
            if lift_frames
            else pd.DataFrame(columns=LIFT_COLUMNS)
        )
        shift = pd.concat(shift_frames, ignore_index=True) if shift_frames else pd.DataFrame(columns=SHIFT_COLUMNS)
        shift = (
            shift.assign(_abs=shift["z"].abs())
            .sort_values(["layer", "unit", "event", "_abs"], ascending=[True, True, True, False])[SHIFT_COLUMNS]
            .reset_index(drop=True)
        )
        agg = None
        if counts is not None:
            agg = counts.assign(input_driven=counts["driven"] / counts["count"])[["count", "input_driven"]]
        return _summary_table(self.trace, self.layers, agg, lift, shift, self.top, self.min_count, self.chunk)


class _Tally:
    """One layer's events added up by group ``g = unit * len(kinds) + kind`` (``kinds``: the cell's event types):
    counts, input-driven counts, counts per token (sparse: sorted keys ``token * groups + g``, the tokens by string
    in order of first sight) and per-feature sums (a chunk's sums by pandas, as the frames were added before)."""

    def __init__(self, units: int, kinds: list[str]) -> None:
        self.units, self.kinds = units, kinds
        self.groups = units * len(kinds)
        self.count = np.zeros(self.groups, np.int64)
        self.driven = np.zeros(self.groups)
        self.token_index: dict[str, int] = {}
        self.token_keys = np.zeros(0, np.int64)
        self.token_counts = np.zeros(0, np.int64)
        self.x: np.ndarray | None = None
        self.x_seen = np.zeros(self.groups, bool)

    def add(
        self,
        x: np.ndarray | None,
        unit: np.ndarray,
        kind: np.ndarray,
        d_in: np.ndarray,
        d_rec: np.ndarray,
        token: tuple[np.ndarray, list[str]] | None,
    ) -> None:
        g = unit.astype(np.int64) * len(self.kinds) + kind
        self.count += np.bincount(g, minlength=self.groups)
        self.driven += np.bincount(g, weights=np.abs(d_in) > np.abs(d_rec), minlength=self.groups)
        if token is not None:
            codes, strings = token
            index = self.token_index
            to_global = np.asarray([index.setdefault(t, len(index)) for t in strings], np.int64)
            keys = to_global[codes] * self.groups + g
            span = len(index) * self.groups
            if span <= max(1 << 20, 4 * len(keys)):  # few (token, group) cells: count them all
                counts = np.bincount(keys, minlength=span)
                keys = np.flatnonzero(counts)
                counts = counts[keys]
            else:
                keys, counts = np.unique(keys, return_counts=True)
            keys = np.concatenate([self.token_keys, keys])
            self.token_keys, inverse = np.unique(keys, return_inverse=True)
            self.token_counts = np.bincount(
                inverse, weights=np.concatenate([self.token_counts, counts]), minlength=len(self.token_keys)
            ).astype(np.int64)
        if x is not None:
            part = pd.DataFrame(x).groupby(g).sum()  # per group in row order, as the frames' groupby before
            idx = part.index.to_numpy()
            values = part.to_numpy()
            if self.x is None:
                self.x = np.zeros((self.groups, x.shape[1]))
            new = ~self.x_seen[idx]
            self.x[idx[new]] = values[new]
            self.x[idx[~new]] += values[~new]
            self.x_seen[idx] = True

    @staticmethod
    def frames(tallies: dict[str, _Tally]) -> tuple[pd.DataFrame | None, pd.Series | None, pd.DataFrame | None]:
        """The tables the summary is made from: (layer, unit, event) -> count, driven; (layer, unit, event, token)
        -> count; (layer, unit, event) -> feature sums (columns 0, 1, ...); None where nothing was added."""
        counts, tokens, xs = [], [], []
        for layer, t in tallies.items():
            seen = np.flatnonzero(t.count)
            kinds = np.asarray(t.kinds, dtype=object)
            k = len(t.kinds)

            def index(g: np.ndarray, *more: Any, layer: str = layer, kinds: np.ndarray = kinds, k: int = k) -> Any:
                levels = [np.full(len(g), layer, dtype=object), (g // k).astype(np.int32), kinds[g % k], *more]
                return pd.MultiIndex.from_arrays(levels, names=["layer", "unit", "event", "token"][: len(levels)])

            counts.append(pd.DataFrame({"count": t.count[seen], "driven": t.driven[seen]}, index=index(seen)))
            if len(t.token_keys):
                strings = np.asarray(list(t.token_index), dtype=object)
                g = t.token_keys % t.groups
                tokens.append(pd.Series(t.token_counts, index=index(g, strings[t.token_keys // t.groups])))
            if t.x is not None:
                xs.append(pd.DataFrame(t.x[seen], index=index(seen)))
        if not counts:
            return None, None, None
        return (
            pd.concat(counts),
            pd.concat(tokens) if tokens else None,
            pd.concat(xs) if xs else None,
        )
