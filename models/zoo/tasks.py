"""Planted-mechanism tasks: sequences whose solution needs a known mechanism, with per-step ground truth.

Pure NumPy (no TensorFlow): every generator is deterministic given ``seed`` and returns a
:class:`TaskData` with the model inputs ``x``, the targets ``y`` and ``features``, the ground-truth
per-step quantities a network must represent to solve the task, each an (N, T) array. They are
written by :func:`write_features_csv` in the contract's features format
(``sequence, step, <feature>...``) for ``gatelens analyze RUN --features FILE.csv``.

``brackets`` (a counter and a flag)
    A synthetic language over ``( ) " a b c`` and space. Outside a quoted string, ``(`` opens and
    ``)`` closes a bracket; inside one, brackets are plain text. The target at every step is the
    nesting depth after reading the token (0..``max_depth``). Solving it needs a counter (``depth``)
    gated by a flag (``inside_quote``), since a bracket in quotes must not move the counter.
``recall`` (memory over a known delay, overwritten at each mark)
    Two input channels: a value drawn uniformly from [-1, 1] at every step and a marker that is 1
    at one to ``max_marks`` steps in the first ``T - min_delay`` steps. The target, read at the last
    step, is the value seen at the most recent marker: each mark replaces the held value (forget the
    old one, write the new one), which is then held for ``steps_since_mark`` steps while new values
    keep arriving.
``adding`` (Hochreiter & Schmidhuber 1997)
    Two channels: values uniform in [0, 1] and a marker that is 1 at one step of the first half and
    one step of the second half. The target is the sum of the two marked values.

Examples
--------
>>> d = delayed_recall(3, length=6, min_delay=3, max_marks=1, seed=0)
>>> d.x.shape, d.y.shape, sorted(d.features)
((3, 6, 2), (3,), ['held_value', 'is_mark', 'marks_seen', 'seen_mark', 'steps_since_mark', 'value'])
>>> bool(np.all(d.y == d.x[np.arange(3), d.x[:, :, 1].argmax(1), 0]))  # one mark each (max_marks=1)
True
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Token strings of the brackets language, in id order (0 = padding, 1 = out-of-vocabulary).
BRACKET_TOKENS = ["", "[UNK]", " ", '"', "(", ")", "a", "b", "c"]
_SPACE, _QUOTE, _OPEN, _CLOSE = 2, 3, 4, 5
_LETTERS = np.array([2, 6, 7, 8])  # space, a, b, c


@dataclass(frozen=True)
class TaskData:
    """One generated data set.

    Attributes
    ----------
    name : str
        ``"brackets"``, ``"recall"`` or ``"adding"``.
    x : ndarray
        Model inputs: int32 token ids (N, T) or float32 (N, T, F).
    y : ndarray
        Targets: int32 (N, T) per-step classes, or float32 (N,) one value per sequence.
    features : dict of str to ndarray
        Ground truth per step, each (N, T); NaN where undefined.
    params : dict
        The generator's arguments (seed included), enough to regenerate the data.
    tokens : list of str or None
        Token strings by id for token inputs.
    input_names : list of str or None
        Names of the input channels for float inputs.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    features: dict[str, np.ndarray]
    params: dict[str, Any]
    tokens: list[str] | None = None
    input_names: list[str] | None = field(default=None)


def _check(n: int, length: int) -> None:
    if int(n) < 1:
        raise ValueError(f"n (number of sequences) must be >= 1, got {n!r}")
    if int(length) < 2:
        raise ValueError(f"length must be >= 2, got {length!r}")


def bracket_depth(
    n: int,
    *,
    length: int = 60,
    max_depth: int = 5,
    p_open: float = 0.22,
    p_close: float = 0.2,
    p_quote: float = 0.08,
    p_quote_close: float = 0.15,
    p_quoted_bracket: float = 0.35,
    seed: int = 0,
) -> TaskData:
    """Bracket nesting depth in a language with quoted strings (a counter and a flag).

    Outside quotes, each step draws ``(`` (p_open, when depth < max_depth), ``)`` (p_close, when
    depth > 0), ``"`` (p_quote) or a letter/space. Inside quotes: ``"`` closes with p_quote_close,
    a bracket (either kind) appears with p_quoted_bracket, else a letter/space.

    Returns
    -------
    TaskData
        ``x`` int32 ids (N, T) into :data:`BRACKET_TOKENS`; ``y`` int32 depth (N, T) after each token;
        features ``depth``, ``inside_quote`` (1 after reading an opening quote up to the closing one,
        whose step is 0), ``is_open``, ``is_close``, ``is_quote``, ``quoted_bracket`` (a bracket read
        inside quotes) and ``naive_depth`` (the depth if quotes were ignored, clipped at 0).

    Examples
    --------
    >>> d = bracket_depth(2, length=12, seed=1)
    >>> text = "".join(BRACKET_TOKENS[i] for i in d.x[0])
    >>> len(text), int(d.y.max()) <= 5
    (12, True)
    """
    _check(n, length)
    rng = np.random.default_rng(seed)
    x = np.zeros((n, length), np.int32)
    depth = np.zeros((n, length), np.int32)
    quote = np.zeros((n, length), np.int8)
    d = np.zeros(n, np.int32)
    q = np.zeros(n, bool)
    for t in range(length):  # a bounded random walk: each step depends on the state, vectorised over sequences
        u = rng.random(n)
        letter = _LETTERS[rng.integers(0, len(_LETTERS), n)]
        bracket = np.where(rng.random(n) < 0.5, _OPEN, _CLOSE)
        out_tok = np.where(
            (u < p_open) & (d < max_depth),
            _OPEN,
            np.where(
                (u >= p_open) & (u < p_open + p_close) & (d > 0),
                _CLOSE,
                np.where((u >= p_open + p_close) & (u < p_open + p_close + p_quote), _QUOTE, letter),
            ),
        )
        in_tok = np.where(u < p_quote_close, _QUOTE, np.where(u < p_quote_close + p_quoted_bracket, bracket, letter))
        tok = np.where(q, in_tok, out_tok)
        d = d + np.where(~q & (tok == _OPEN), 1, 0) - np.where(~q & (tok == _CLOSE), 1, 0)
        q = q ^ (tok == _QUOTE)
        x[:, t], depth[:, t], quote[:, t] = tok, d, q
    is_open = (x == _OPEN).astype(np.int8)
    is_close = (x == _CLOSE).astype(np.int8)
    prev_quote = np.concatenate([np.zeros((n, 1), np.int8), quote[:, :-1]], axis=1)
    quoted_bracket = ((is_open | is_close) & prev_quote).astype(np.int8)
    s = np.cumsum(is_open.astype(np.int32) - is_close, axis=1)
    naive = s - np.minimum(0, np.minimum.accumulate(s, axis=1))
    features = {
        "depth": depth,
        "inside_quote": quote,
        "is_open": is_open,
        "is_close": is_close,
        "is_quote": (x == _QUOTE).astype(np.int8),
        "quoted_bracket": quoted_bracket,
        "naive_depth": naive.astype(np.int32),
    }
    params = dict(
        n=n, length=length, max_depth=max_depth, p_open=p_open, p_close=p_close, p_quote=p_quote,
        p_quote_close=p_quote_close, p_quoted_bracket=p_quoted_bracket, seed=seed,
    )  # fmt: skip
    return TaskData("brackets", x, depth.copy(), features, params, tokens=list(BRACKET_TOKENS))


def delayed_recall(
    n: int, *, length: int = 40, min_delay: int | None = None, max_marks: int = 3, seed: int = 0
) -> TaskData:
    """Remember the value at the most recent marked step and report it at the last step.

    Each sequence has between 1 and ``max_marks`` marks (uniformly many), at distinct steps drawn uniformly
    from ``0 .. length - 1 - min_delay``, so the last marked value must be held between ``min_delay``
    (default ``length // 2``) and ``length - 1`` steps. With several marks, each new mark replaces the
    value held so far: a memory has to forget the old value at the mark and write the new one.

    Returns
    -------
    TaskData
        ``x`` float32 (N, T, 2) channels ``value``, ``marker``; ``y`` float32 (N,) the last marked value;
        features ``value``, ``is_mark``, ``marks_seen`` (marks read so far), ``seen_mark`` (1 from the first
        mark on), ``steps_since_mark`` (steps since the most recent mark: 0 at a mark, NaN before the first)
        and ``held_value`` (the most recent marked value, NaN before the first mark).

    Examples
    --------
    >>> d = delayed_recall(1, length=5, min_delay=2, max_marks=1, seed=0)
    >>> d.features["steps_since_mark"].tolist()
    [[nan, 0.0, 1.0, 2.0, 3.0]]
    >>> d = delayed_recall(1, length=8, min_delay=3, max_marks=3, seed=4)
    >>> d.features["is_mark"].tolist(), bool(d.features["held_value"][0, -1] == d.y[0])
    ([[1, 0, 1, 1, 0, 0, 0, 0]], True)
    """
    _check(n, length)
    min_delay = length // 2 if min_delay is None else min_delay
    if not 0 <= min_delay < length:
        raise ValueError(f"min_delay must be in [0, length), got {min_delay!r} with length {length}")
    window = length - min_delay
    if not 1 <= int(max_marks) <= window:
        raise ValueError(f"max_marks must be in [1, length - min_delay] = [1, {window}], got {max_marks!r}")
    rng = np.random.default_rng(seed)
    values = rng.uniform(-1.0, 1.0, (n, length)).astype(np.float32)
    if max_marks == 1:  # one draw per sequence (the generator's original stream)
        marked = np.zeros((n, length), bool)
        marked[np.arange(n), rng.integers(0, window, n)] = True
    else:  # k distinct steps of the window: the k smallest of uniform keys
        k = rng.integers(1, max_marks + 1, n)
        keys = rng.random((n, window))
        ranks = np.argsort(np.argsort(keys, axis=1), axis=1)
        marked = np.zeros((n, length), bool)
        marked[:, :window] = ranks < k[:, None]
    steps = np.arange(length)[None, :]
    count = np.cumsum(marked, axis=1)
    last_mark = np.maximum.accumulate(np.where(marked, steps, -1), axis=1)  # most recent mark, -1 before the first
    seen = count > 0
    held = np.take_along_axis(values, np.maximum(last_mark, 0), axis=1)
    y = held[:, -1].copy()
    is_mark = marked.astype(np.float32)
    x = np.stack([values, is_mark], axis=-1)
    features = {
        "value": values,
        "is_mark": marked.astype(np.int8),
        "marks_seen": count.astype(np.int8),
        "seen_mark": seen.astype(np.int8),
        "steps_since_mark": np.where(seen, steps - last_mark, np.nan),
        "held_value": np.where(seen, held, np.nan),
    }
    params = dict(n=n, length=length, min_delay=min_delay, max_marks=int(max_marks), seed=seed)
    return TaskData("recall", x, y, features, params, input_names=["value", "marker"])


def adding_problem(n: int, *, length: int = 50, seed: int = 0) -> TaskData:
    """The adding problem: output the sum of the two marked values (one per half of the sequence).

    Returns
    -------
    TaskData
        ``x`` float32 (N, T, 2) channels ``value``, ``marker``; ``y`` float32 (N,) the sum; features
        ``value``, ``is_marked``, ``markers_seen`` (0, 1, 2 after reading the step) and ``marked_sum``
        (sum of the marked values read so far).

    Examples
    --------
    >>> d = adding_problem(4, length=10, seed=0)
    >>> bool(np.allclose(d.y, d.features["marked_sum"][:, -1]))
    True
    """
    _check(n, length)
    rng = np.random.default_rng(seed)
    half = length // 2
    values = rng.uniform(0.0, 1.0, (n, length)).astype(np.float32)
    first = rng.integers(0, half, n)
    second = rng.integers(half, length, n)
    steps = np.arange(length)[None, :]
    marked = (steps == first[:, None]) | (steps == second[:, None])
    x = np.stack([values, marked.astype(np.float32)], axis=-1)
    y = (values[np.arange(n), first] + values[np.arange(n), second]).astype(np.float32)
    features = {
        "value": values,
        "is_marked": marked.astype(np.int8),
        "markers_seen": np.cumsum(marked, axis=1).astype(np.int8),
        "marked_sum": np.cumsum(np.where(marked, values, 0.0), axis=1, dtype=np.float64).astype(np.float32),
    }
    params = dict(n=n, length=length, seed=seed)
    return TaskData("adding", x, y, features, params, input_names=["value", "marker"])


#: Task name -> generator ``f(n, *, seed, **params) -> TaskData``.
TASKS: dict[str, Callable[..., TaskData]] = {
    "brackets": bracket_depth,
    "recall": delayed_recall,
    "adding": adding_problem,
}


def generate(name: str, n: int, *, seed: int = 0, **params: Any) -> TaskData:
    """Generate ``n`` sequences of task ``name`` (one of :data:`TASKS`).

    Examples
    --------
    >>> generate("adding", 2, length=8).x.shape
    (2, 8, 2)
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name](n, seed=seed, **params)


def _format_column(a: np.ndarray) -> np.ndarray:
    """Strings for one CSV column: integers as integers, floats with 9 significant digits, NaN empty."""
    if np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
        return a.astype(np.int64).astype(str)
    s = np.char.mod("%.9g", a.astype(np.float64))
    return np.where(np.isnan(a), "", s)


def features_csv_text(features: dict[str, np.ndarray]) -> str:
    """The features as CSV text: ``sequence, step`` then one column per feature (sorted by name as given).

    Examples
    --------
    >>> print(features_csv_text({"depth": np.array([[0, 1]]), "held": np.array([[np.nan, 0.5]])}), end="")
    sequence,step,depth,held
    0,0,0,
    0,1,1,0.5
    """
    names = list(features)
    if not names:
        raise ValueError("no features to write")
    shape = np.shape(features[names[0]])
    for k, v in features.items():
        if np.shape(v) != shape or len(shape) != 2:
            raise ValueError(f"feature {k!r} has shape {np.shape(v)}; every feature must be (N, T) = {shape}")
    n, t = shape
    cols = [np.repeat(np.arange(n), t).astype(str), np.tile(np.arange(t), n).astype(str)]
    cols += [_format_column(np.asarray(features[k]).ravel()) for k in names]
    table = np.stack(cols, axis=1)
    lines = [",".join(["sequence", "step", *names])] + [",".join(row) for row in table.tolist()]
    return "\n".join(lines) + "\n"


def write_features_csv(path: str | os.PathLike, features: dict[str, np.ndarray]) -> Path:
    """Write ``features`` (each (N, T)) as a features CSV, atomically. Returns the path."""
    from gatelens.analysis.store import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, features_csv_text(features).encode())
    return path


def write_task_data(data: TaskData, x_path: str | os.PathLike, features_path: str | os.PathLike | None = None) -> None:
    """Save ``data.x`` as ``.npy`` (for ``gatelens extract``) and, optionally, its features CSV."""
    import io

    from gatelens.analysis.store import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, data.x, allow_pickle=False)
    Path(x_path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(x_path), buf.getvalue())
    if features_path is not None:
        write_features_csv(features_path, data.features)
