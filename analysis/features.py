"""Per-step input features: the built-ins of the contract and a user's own CSV.

:func:`build_features` returns one row per analysed step (``sequence``, ``step``, then one
column per feature). Only steps that some recurrent layer really processed are kept (a step
is dropped when every layer's ``mask`` is False there); analyses that work on one layer
(:mod:`gatelens.analysis.correlate`, :mod:`gatelens.analysis.probes`) further keep only that layer's own
unmasked steps. The ``step`` column is both a key and the built-in feature ``step``.

Text features (when the trace has ``tokens`` and a ``vocabulary``) are computed per token
*string*, so they work at character level (the usual case) and at word level. Every rule
below treats a masked step as absent: it does not move a counter and is not a line or word
boundary.

``bracket_depth``
    Nesting depth of ``( [ {`` after reading the step's token: each opening character adds
    1, each closing character ``) ] }`` subtracts 1, counted from the start of the sequence.
    Brackets of different kinds are not matched against each other, brackets inside string
    literals count like any other, and an unmatched closing bracket is ignored (the depth
    never goes below 0: ``d_t = max(0, d_{t-1} + delta_t)``, computed without a loop as
    ``S_t - min(0, min_{s<=t} S_s)`` with ``S`` the running sum of the deltas).
``inside_quotes``
    True when, after reading the step's token, the text is inside a ``'...'`` or ``"..."``
    string literal. A quote opens a literal outside one, and closes it only when it is the
    same kind of quote that opened it (the other kind is literal text inside). Inside a
    literal a backslash escapes the next character (so ``"a\\"b"`` is one literal); outside
    a literal a backslash is ordinary text. So the opening quote's own step is True and the
    closing quote's step is False. The rule is a five-state machine (outside, in ``'``,
    in ``"``, and the two "after a backslash" states) whose per-token transition maps are
    composed along the sequence by prefix doubling (log2 T array operations). Note that an
    apostrophe in English text (``don't``) opens a literal under this rule.
``position_in_line``
    0-based index of the step within its line: a line starts at the first step and after
    every token that contains a newline ``\\n``.
``position_in_word``
    1-based position of the step within the current word, 0 for a step that is not part of
    a word. A word is a run of consecutive single-character word tokens (letters, digits,
    ``_``); a multi-character word token (word-level models) is a word of its own, position 1.
``is_space``, ``is_alpha``, ``is_digit``, ``is_upper``, ``is_punct``
    Python's ``str.isspace``, ``str.isalpha``, ``str.isdigit``, ``str.isupper`` of the token;
    ``is_punct``: every character is Unicode punctuation or a symbol (categories ``P*`` and
    ``S*``: ``string.punctuation`` extended to Unicode). The padding token ``""`` is none of them.

Numeric features (when the trace has the model's numeric input ``x`` (N, T, F))

``value:<column>``
    The input value at the step.
``delta:<column>``
    ``x_t - x_{t'}`` with ``t'`` the previous unmasked step of the same sequence; NaN (an
    empty cell) on the first unmasked step of every sequence, where no previous value
    exists. Analyses skip NaN cells feature by feature, so ``n`` is one less per sequence.

Always: ``step``, the 0-based index of the step in the input's own time order.

Examples
--------
>>> import numpy as np
>>> from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace
>>> info = LayerInfo(name="lstm", cell_type="lstm", units=1, input_dim=1)
>>> text = '(a"b)"'
>>> vocab = [""] + sorted(set(text))
>>> ids = np.array([[vocab.index(c) for c in text]])
>>> sig = {s: np.zeros((1, len(text), 1), np.float32) for s in info.signals}
>>> lt = LayerTrace(info, sig, mask=np.ones(ids.shape, bool), inputs=np.zeros((1, len(text), 1), np.float32))
>>> trace = Trace({"lstm": lt}, tokens=ids, vocabulary=vocab)
>>> df = build_features(trace)
>>> df["bracket_depth"].tolist(), df["inside_quotes"].tolist()
([1, 1, 1, 1, 0, 0], [False, False, True, True, True, False])
"""

from __future__ import annotations

import csv
import logging
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gatelens.analysis.sources import rekey_features
from gatelens.analysis.trace import Trace, iter_chunks
from gatelens.errors import FeatureError, UsageError

log = logging.getLogger(__name__)

TEXT_FEATURES = (
    "bracket_depth",
    "inside_quotes",
    "position_in_line",
    "position_in_word",
    "is_space",
    "is_alpha",
    "is_digit",
    "is_upper",
    "is_punct",
)
KEY_COLUMNS = ("sequence", "step")
OPEN_BRACKETS = "([{"
CLOSE_BRACKETS = ")]}"

# Quote state machine: 0 outside, 1 in '...', 2 in "...", 3 in '...' after a backslash, 4 in "..." after one.
_N_QUOTE_STATES = 5
_IDENTITY = np.arange(_N_QUOTE_STATES, dtype=np.int8)
_CHAR_MAPS = {
    "'": np.array([1, 0, 2, 1, 2], np.int8),
    '"': np.array([2, 1, 0, 1, 2], np.int8),
    "\\": np.array([0, 3, 4, 1, 2], np.int8),
}
_OTHER_MAP = np.array([0, 1, 2, 1, 2], np.int8)


# ----------------------------------------------------------------------------------------------------------------
# per-token properties (computed once per vocabulary entry, then gathered by token id)


def token_properties(vocabulary: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-vocabulary-entry properties used by the text features.

    Parameters
    ----------
    vocabulary : sequence of str
        Token strings in id order.

    Returns
    -------
    dict of str to ndarray
        ``bracket_delta`` (V,) int, ``quote_map`` (V, 5) int8 (the token's transition map of
        the quote state machine), ``newline``, ``word``, ``single`` (V,) bool, and the
        ``is_*`` flags (V,) bool.

    Examples
    --------
    >>> p = token_properties(["", "(", "a", "))"])
    >>> p["bracket_delta"].tolist(), p["word"].tolist()
    ([0, 1, 0, -2], [False, False, True, False])
    """
    vocab = ["" if v is None else str(v) for v in vocabulary]
    n = len(vocab)
    out: dict[str, np.ndarray] = {
        "bracket_delta": np.zeros(n, np.int64),
        "quote_map": np.tile(_IDENTITY, (n, 1)),
        "newline": np.zeros(n, bool),
        "word": np.zeros(n, bool),
        "single": np.zeros(n, bool),
        "is_space": np.zeros(n, bool),
        "is_alpha": np.zeros(n, bool),
        "is_digit": np.zeros(n, bool),
        "is_upper": np.zeros(n, bool),
        "is_punct": np.zeros(n, bool),
    }
    # A loop over the vocabulary (not over steps or units): each entry is a short string.
    for k, tok in enumerate(vocab):
        out["bracket_delta"][k] = sum(tok.count(c) for c in OPEN_BRACKETS) - sum(tok.count(c) for c in CLOSE_BRACKETS)
        m = _IDENTITY
        for ch in tok:
            m = _CHAR_MAPS.get(ch, _OTHER_MAP)[m]  # apply m first, then ch
        out["quote_map"][k] = m
        out["newline"][k] = "\n" in tok
        out["word"][k] = bool(tok) and all(ch.isalnum() or ch == "_" for ch in tok)
        out["single"][k] = len(tok) == 1
        out["is_space"][k] = tok.isspace()
        out["is_alpha"][k] = tok.isalpha()
        out["is_digit"][k] = tok.isdigit()
        out["is_upper"][k] = tok.isupper()
        out["is_punct"][k] = bool(tok) and all(unicodedata.category(ch)[0] in "PS" for ch in tok)
    return out


def _prev_unmasked(values: np.ndarray, mask: np.ndarray, fill: Any) -> np.ndarray:
    """For each step, ``values`` at the previous unmasked step of the same row (``fill`` if none)."""
    n, t = mask.shape
    idx = np.broadcast_to(np.arange(t), (n, t))
    last = np.maximum.accumulate(np.where(mask, idx, -1), axis=1)
    prev = np.concatenate([np.full((n, 1), -1), last[:, :-1]], axis=1)
    extra = values.ndim - 2
    idx_full = np.clip(prev, 0, None).reshape(prev.shape + (1,) * extra)
    gathered = np.take_along_axis(values, idx_full, axis=1)
    return np.where(prev.reshape(idx_full.shape) >= 0, gathered, fill)


def _compose_prefix(maps: np.ndarray) -> np.ndarray:
    """Prefix composition along axis 1: out[:, t] = maps[:, t] o maps[:, t-1] o ... o maps[:, 0]."""
    out = maps.copy()
    k = 1
    t = maps.shape[1]
    while k < t:
        nxt = out.copy()
        nxt[:, k:] = np.take_along_axis(out[:, k:], out[:, :-k].astype(np.intp), axis=2)
        out = nxt
        k *= 2
    return out


def text_features(
    token_ids: np.ndarray, vocabulary: Sequence[str], mask: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Compute the built-in text features for a block of sequences.

    Parameters
    ----------
    token_ids : int array (n, T)
    vocabulary : sequence of str
    mask : bool array (n, T), optional
        False for padded steps (they change no state); default all True.

    Returns
    -------
    dict of str to ndarray (n, T)
        One array per name in :data:`TEXT_FEATURES` (int32 or bool).

    Examples
    --------
    >>> vocab = ["", "a", "b", " ", "\\n", "'"]
    >>> ids = np.array([[1, 2, 3, 1, 4, 5, 1]])  # "ab a\\n'a"
    >>> f = text_features(ids, vocab)
    >>> f["position_in_word"].tolist(), f["position_in_line"].tolist()
    ([[1, 2, 0, 1, 0, 0, 1]], [[0, 1, 2, 3, 4, 0, 1]])
    >>> f["inside_quotes"].tolist()
    [[False, False, False, False, False, True, True]]
    """
    ids = np.asarray(token_ids)
    if ids.ndim != 2:
        raise UsageError(f"token_ids must be 2-D (sequences, steps), got shape {ids.shape}")
    mask = np.ones(ids.shape, bool) if mask is None else np.asarray(mask, bool)
    props = token_properties(vocabulary)
    ids = np.clip(ids, 0, len(props["word"]) - 1)
    n, t = ids.shape
    out: dict[str, np.ndarray] = {}

    delta = np.where(mask, props["bracket_delta"][ids], 0)
    s = np.cumsum(delta, axis=1)
    out["bracket_depth"] = (s - np.minimum(0, np.minimum.accumulate(s, axis=1))).astype(np.int32)

    maps = np.where(mask[..., None], props["quote_map"][ids], _IDENTITY)
    state = _compose_prefix(maps)[..., 0] if t else np.zeros((n, 0), np.int8)
    out["inside_quotes"] = state != 0

    k = np.cumsum(mask, axis=1) - 1  # index among the unmasked steps
    nl = mask & props["newline"][ids]
    last_nl = np.maximum.accumulate(np.where(nl, k, -1), axis=1)
    last_nl_before = np.concatenate([np.full((n, 1), -1), last_nl[:, :-1]], axis=1)
    out["position_in_line"] = (k - last_nl_before - 1).astype(np.int32)

    word = mask & props["word"][ids]
    single = props["single"][ids]
    cont = word & single & _prev_unmasked(word & single, mask, False)
    start = word & ~cont
    last_start = np.maximum.accumulate(np.where(start, k, -1), axis=1)
    out["position_in_word"] = np.where(word, k - last_start + 1, 0).astype(np.int32)

    for name in ("is_space", "is_alpha", "is_digit", "is_upper", "is_punct"):
        out[name] = mask & props[name][ids]
    return out


def numeric_features(x: np.ndarray, names: Sequence[str], mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``value:<name>`` and ``delta:<name>`` for a block of numeric inputs.

    Parameters
    ----------
    x : float array (n, T, F)
    names : sequence of F str
    mask : bool array (n, T), optional

    Returns
    -------
    dict of str to float64 ndarray (n, T)
        ``delta`` is NaN on each sequence's first unmasked step.

    Examples
    --------
    >>> f = numeric_features(np.array([[[1.0], [3.0], [2.0]]]), ["v"])
    >>> f["delta:v"].tolist()
    [[nan, 2.0, -1.0]]
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 3 or x.shape[2] != len(names):
        raise UsageError(f"x must have shape (n, T, {len(names)}) to match {list(names)}, got {x.shape}")
    mask = np.ones(x.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    prev = _prev_unmasked(x, mask, np.nan)
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(names):
        out[f"value:{name}"] = x[..., j]
        out[f"delta:{name}"] = x[..., j] - prev[..., j]
    return out


# ----------------------------------------------------------------------------------------------------------------
# whole traces


def step_mask(trace: Trace, *, chunk_sequences: int = 1024) -> np.ndarray:
    """(N, T) bool: True where at least one layer of ``trace`` processed the step.

    Examples
    --------
    >>> from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace
    >>> info = LayerInfo(name="l", cell_type="simple_rnn", units=1, input_dim=1)
    >>> z = np.zeros((1, 3, 1), np.float32)
    >>> lt = LayerTrace(info, {s: z for s in info.signals}, mask=np.array([[True, True, False]]), inputs=z)
    >>> step_mask(Trace({"l": lt})).tolist()
    [[True, True, False]]
    """
    n, t = trace.n_sequences, trace.n_steps
    out = np.zeros((n, t), bool)
    for name in trace.layers:
        m = trace[name].mask
        for sl in iter_chunks(n, chunk_sequences):
            out[sl] |= np.asarray(m[sl], bool)
    return out


def feature_names(trace: Trace) -> list[str]:
    """Names of the built-in features :func:`build_features` computes for ``trace``, in column order.

    Examples
    --------
    >>> from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace
    >>> info = LayerInfo(name="l", cell_type="simple_rnn", units=1, input_dim=2)
    >>> z = np.zeros((1, 3, 1), np.float32)
    >>> lt = LayerTrace(info, {s: z for s in info.signals}, mask=np.ones((1, 3), bool), inputs=z)
    >>> feature_names(Trace({"l": lt}, x=np.zeros((1, 3, 2)), feature_names=["a", "b"]))
    ['step', 'value:a', 'delta:a', 'value:b', 'delta:b']
    """
    names = ["step"]
    if trace.tokens is not None and trace.vocabulary is not None:
        names += list(TEXT_FEATURES)
    if trace.x is not None:
        for col in _x_names(trace):
            names += [f"value:{col}", f"delta:{col}"]
    return names


def _x_names(trace: Trace) -> list[str]:
    f = int(trace.x.shape[2])
    names = list(trace.feature_names or [])
    if len(names) != f:
        if names:
            log.warning("trace has %d feature names for %d input columns; using x0..x%d", len(names), f, f - 1)
        names = [f"x{j}" for j in range(f)]
    return names


def build_features(
    trace: Trace,
    *,
    user_features: str | os.PathLike | pd.DataFrame | None = None,
    chunk_sequences: int = 1024,
) -> pd.DataFrame:
    """One row per analysed step: ``sequence``, ``step`` and one column per feature.

    Parameters
    ----------
    trace : Trace
        In memory or opened from a run store (tokens and inputs are read in chunks of sequences).
    user_features : path or DataFrame, optional
        A CSV (see :func:`load_user_features`) or a DataFrame with ``sequence``, ``step`` and
        feature columns; joined on ``sequence`` and ``step``. Steps the file does not cover get
        NaN; rows for steps no layer processed are dropped.
    chunk_sequences : int
        Sequences read at a time.

    Returns
    -------
    pandas.DataFrame
        Sorted by ``sequence`` then ``step``; text flags are bool, counters int32, numeric
        values float64. See the module docstring for every feature's definition.

    Raises
    ------
    FeatureError
        When the user features are malformed or a user feature reuses a built-in name.

    Examples
    --------
    >>> from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace
    >>> info = LayerInfo(name="l", cell_type="simple_rnn", units=1, input_dim=1)
    >>> x = np.array([[[1.0], [4.0], [0.0]]], np.float32)
    >>> lt = LayerTrace(info, {s: x for s in info.signals}, mask=np.array([[True, True, False]]), inputs=x)
    >>> build_features(Trace({"l": lt}, x=x, feature_names=["load"]))
       sequence  step  value:load  delta:load
    0         0     0         1.0         NaN
    1         0     1         4.0         3.0
    """
    n, t = trace.n_sequences, trace.n_steps
    mask = step_mask(trace, chunk_sequences=chunk_sequences)
    text = trace.tokens is not None and trace.vocabulary is not None
    numeric = trace.x is not None
    x_names = _x_names(trace) if numeric else []
    columns: dict[str, list[np.ndarray]] = {"sequence": [], "step": []}
    steps = np.arange(t)
    for sl in iter_chunks(n, chunk_sequences):
        m = mask[sl]
        rows = np.nonzero(m)
        columns["sequence"].append((rows[0] + sl.start).astype(np.int64))
        columns["step"].append(steps[rows[1]].astype(np.int64))
        block: dict[str, np.ndarray] = {}
        if text:
            block.update(text_features(np.asarray(trace.tokens[sl]), trace.vocabulary, m))
        if numeric:
            block.update(numeric_features(np.asarray(trace.x[sl], np.float64), x_names, m))
        for name, arr in block.items():
            columns.setdefault(name, []).append(arr[rows])
    df = pd.DataFrame({k: np.concatenate(v) for k, v in columns.items()})
    if user_features is not None:
        df = _join_user(df, user_features, trace)
    return df


def _join_user(df: pd.DataFrame, user: str | os.PathLike | pd.DataFrame, trace: Trace) -> pd.DataFrame:
    if isinstance(user, pd.DataFrame):
        source = "user features table"
        table = _check_user_frame(rekey_features(user, trace, source), trace, source)
    else:
        table, source = load_user_features(user, trace), str(user)
    clash = [c for c in table.columns if c not in KEY_COLUMNS and c in df.columns]
    if clash:
        raise FeatureError(
            f"{source}: feature column(s) {clash} reuse built-in feature names; rename them (built-ins: {list(df.columns[2:])})"
        )
    joined = df.merge(table, on=list(KEY_COLUMNS), how="left", validate="one_to_one")
    dropped = len(table) - int(df.merge(table[list(KEY_COLUMNS)], on=list(KEY_COLUMNS)).shape[0])
    if dropped:
        log.info("%s: %d row(s) are for steps no layer processed (masked) and were left out", source, dropped)
    return joined


# ----------------------------------------------------------------------------------------------------------------
# user features


def load_user_features(path: str | os.PathLike, trace: Trace) -> pd.DataFrame:
    """Read and validate a user's features CSV for ``trace``.

    The file has a header row with ``sequence``, ``step`` (or ``source_row`` or ``time`` instead: see
    :func:`gatelens.analysis.sources.rekey_features`) and one column per feature, and one
    row per (sequence, step) it describes (rows may be in any order; steps it leaves out get
    NaN when joined). Empty cells and ``nan`` are missing values.

    Parameters
    ----------
    path : path to a CSV file
    trace : Trace
        Gives the valid ranges: ``0 <= sequence < N`` and ``0 <= step < T``.

    Returns
    -------
    pandas.DataFrame
        ``sequence``, ``step`` (int64) and the feature columns (float64), in file order.

    Raises
    ------
    FeatureError
        Naming the file, the line (the header is line 1) and the problem: unreadable file,
        missing ``sequence``/``step`` column or key cell, repeated column names, no feature
        column, a key that is not a non-negative integer or is out of range for the trace,
        a duplicate (sequence, step), a cell that is not a finite number.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace
    >>> info = LayerInfo(name="l", cell_type="simple_rnn", units=1, input_dim=1)
    >>> z = np.zeros((2, 3, 1), np.float32)
    >>> trace = Trace({"l": LayerTrace(info, {s: z for s in info.signals}, mask=np.ones((2, 3), bool), inputs=z)})
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.csv"
    >>> _ = p.write_text("sequence,step,flag\\n0,2,1\\n1,0,0\\n")
    >>> load_user_features(p, trace)
       sequence  step  flag
    0         0     2   1.0
    1         1     0   0.0
    >>> _ = p.write_text("sequence,step,flag\\n0,3,1\\n")
    >>> load_user_features(p, trace)
    Traceback (most recent call last):
    ...
    gatelens.errors.FeatureError: ...f.csv: line 2: step 3 is out of range; the trace has 3 steps (0..2)
    """
    path = Path(path)
    if not path.is_file():
        raise FeatureError(f"{path}: no such features file")
    _check_features_size(path)
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                if row:  # blank lines are skipped, as pandas does
                    rows.append(row)
                    line_numbers.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FeatureError(f"{path}: cannot read the features file as UTF-8 CSV ({e})") from None
    if not rows or not any(h.strip() for h in rows[0]):
        raise FeatureError(f"{path}: the file is empty; expected a header row: sequence, step, <feature>, ...")
    header = [h.strip() for h in rows[0]]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise FeatureError(f"{path}: line {line_numbers[0]}: column name(s) {dup} appear more than once")
    lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
    ragged = np.nonzero(lengths[1:] != len(header))[0]
    if ragged.size:
        i = int(ragged[0]) + 1
        raise FeatureError(
            f"{path}: line {line_numbers[i]}: not a valid CSV row: expected {len(header)} fields like the header, "
            f"found {lengths[i]}"
        )
    raw = pd.DataFrame(rows[1:], columns=header, dtype=str)
    keyed = rekey_features(raw, trace, str(path))  # keyed by source_row or time: mapped to (sequence, step)
    lines = np.asarray(line_numbers[1:], np.int64) if keyed is raw else None
    return _check_user_frame(keyed, trace, str(path), lines=lines)


def _check_features_size(path: Path) -> None:
    """Bound a features CSV before it is parsed: size, line length, columns (each one an analysis pass), cells."""
    from gatelens.errors import DataError
    from gatelens.limits import ReadLimits, scan_csv

    limits = ReadLimits.from_env()
    cap = limits.max_cells * 64  # bytes: far more than a file of max_cells short numbers
    size = path.stat().st_size
    if size > cap:
        raise FeatureError(f"{path}: the features file has {size:,} bytes, more than the limit of {cap:,}")
    with open(path, "rb") as f:
        raw = f.read(cap + 1)
    try:
        scan_csv(raw, str(path), limits, max_columns=limits.max_feature_columns + 2)  # + sequence, step
    except DataError as e:
        raise FeatureError(str(e)) from None


def _check_user_frame(
    table: pd.DataFrame, trace: Trace, source: str, *, lines: np.ndarray | None = None
) -> pd.DataFrame:
    """Validate keys and cells; ``lines`` (file line of each row) marks a table of text cells read from a CSV."""
    text_cells = lines is not None
    cols = [str(c) for c in table.columns]
    missing = [k for k in KEY_COLUMNS if k not in cols]
    if missing:
        raise FeatureError(
            f"{source}: missing column(s) {missing}; expected columns sequence, step and one column per feature, "
            f"found {cols}"
        )
    feats = [c for c in cols if c not in KEY_COLUMNS]
    if not feats:
        raise FeatureError(f"{source}: no feature columns; expected sequence, step and at least one feature column")
    if len(table) == 0:
        raise FeatureError(f"{source}: no data rows below the header")

    def where(i: int) -> str:
        return f"line {lines[i]}" if text_cells else f"row {i}"

    out: dict[str, np.ndarray] = {}
    limits = {"sequence": trace.n_sequences, "step": trace.n_steps}
    for key in KEY_COLUMNS:
        col = table[key]
        s = col.astype(str).str.strip() if text_cells else col
        if text_cells:
            empty = (s == "").to_numpy()
            if empty.any():
                i = int(np.argmax(empty))
                raise FeatureError(f"{source}: {where(i)}: empty {key!r} cell (every row needs sequence and step)")
        num = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(num) | (num != np.round(num)) | (num < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise FeatureError(f"{source}: {where(i)}: {key!r} must be a non-negative integer, got {col.iloc[i]!r}")
        vals = num.astype(np.int64)
        over = vals >= limits[key]
        if over.any():
            i = int(np.argmax(over))
            unit = "sequences" if key == "sequence" else "steps"
            raise FeatureError(
                f"{source}: {where(i)}: {key} {vals[i]} is out of range; the trace has {limits[key]} {unit} "
                f"(0..{limits[key] - 1})"
            )
        out[key] = vals
    flat = out["sequence"] * limits["step"] + out["step"]
    order = np.argsort(flat, kind="stable")
    same = np.nonzero(flat[order][1:] == flat[order][:-1])[0]
    if same.size:
        a, b = sorted((int(order[same[0]]), int(order[same[0] + 1])))
        raise FeatureError(
            f"{source}: {where(a)} and {where(b)}: duplicate key (sequence={out['sequence'][a]}, step={out['step'][a]})"
        )
    cells = table[feats]
    if text_cells:  # every feature cell parsed in one pass: strip, missing markers, numbers
        s = pd.Series(cells.to_numpy(dtype=object).ravel(order="F"), dtype=object).astype(str).str.strip()
        missing_cell = ((s == "") | s.str.lower().isin(["nan", "na", "null"])).to_numpy()
        num = pd.to_numeric(s.where(~missing_cell, "nan"), errors="coerce").to_numpy(np.float64, na_value=np.nan)
        bad = np.isnan(num) & ~missing_cell
    else:
        cols_num = [
            (cells[c].astype(np.float64) if cells[c].dtype == bool else pd.to_numeric(cells[c], errors="coerce"))
            for c in feats
        ]
        num = np.concatenate([c.to_numpy(np.float64, na_value=np.nan) for c in cols_num])
        bad = np.isnan(num) & cells.notna().to_numpy().ravel(order="F")
    n_rows = len(table)
    num = num.reshape(len(feats), n_rows)  # column-major: one row of `num` per feature column
    for mask, what in ((bad.reshape(len(feats), n_rows), "not a number"), (np.isinf(num), "not a finite number")):
        if mask.any():  # the first offending column, then its first offending row (file order)
            j = int(np.argmax(mask.any(axis=1)))
            i = int(np.argmax(mask[j]))
            raise FeatureError(f"{source}: {where(i)}, column {feats[j]!r}: {what}: {cells.iloc[i, j]!r}")
    return pd.DataFrame({**out, **dict(zip(feats, num))})


def feature_columns(features: pd.DataFrame) -> list[str]:
    """The feature columns of a features table: every column but ``sequence`` (``step`` is a feature too).

    Examples
    --------
    >>> feature_columns(pd.DataFrame(columns=["sequence", "step", "is_space"]))
    ['step', 'is_space']
    """
    return [str(c) for c in features.columns if c != "sequence"]


def feature_kind(values: Any) -> str:
    """``"binary"`` for a bool column or one whose values are all 0/1, else ``"continuous"``.

    NaN cells are ignored.

    Examples
    --------
    >>> feature_kind(np.array([0.0, 1.0, np.nan])), feature_kind([0, 1, 2])
    ('binary', 'continuous')
    """
    arr = np.asarray(values)
    if arr.dtype == bool:
        return "binary"
    arr = arr.astype(np.float64)
    arr = arr[~np.isnan(arr)]
    return "binary" if arr.size and np.isin(arr, (0.0, 1.0)).all() else "continuous"


def as_feature_matrix(features: pd.DataFrame, columns: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Validate a features table and return its feature columns as a float64 matrix (NaN = missing).

    Raises
    ------
    FeatureError
        On a missing ``sequence``/``step`` column, an unknown requested column, or a non-numeric column.

    Examples
    --------
    >>> m, names = as_feature_matrix(pd.DataFrame({"sequence": [0], "step": [1], "f": [True]}))
    >>> m.tolist(), names
    ([[1.0, 1.0]], ['step', 'f'])
    """
    for k in KEY_COLUMNS:
        if k not in features.columns:
            raise FeatureError(f"features table: missing column {k!r}; found {list(features.columns)}")
    names = feature_columns(features) if columns is None else list(columns)
    unknown = [c for c in names if c not in features.columns or c == "sequence"]
    if unknown:
        raise FeatureError(f"features table: unknown feature(s) {unknown}; it has {feature_columns(features)}")
    mats = []
    for c in names:
        col = features[c]
        if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
            raise FeatureError(f"features table: column {c!r} is not numeric (dtype {col.dtype})")
        mats.append(col.to_numpy(dtype=np.float64, na_value=np.nan))
    return (np.stack(mats, axis=1) if mats else np.empty((len(features), 0))), names


def flat_keys(features: pd.DataFrame, n_steps: int) -> np.ndarray:
    """``sequence * n_steps + step`` for every row of a features table (int64)."""
    return features["sequence"].to_numpy(np.int64) * int(n_steps) + features["step"].to_numpy(np.int64)


__all__ = [
    "KEY_COLUMNS",
    "TEXT_FEATURES",
    "FeatureError",
    "as_feature_matrix",
    "build_features",
    "feature_columns",
    "feature_kind",
    "feature_names",
    "flat_keys",
    "load_user_features",
    "numeric_features",
    "step_mask",
    "text_features",
    "token_properties",
]
