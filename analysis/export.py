"""CSV exports (``gatelens export RUN --csv DIR``): streamed, atomic, and safe to open in a spreadsheet.

Every file is UTF-8 with a header row, one row per record, ``.`` as the decimal separator, no
index column and RFC 4180 line ends (CRLF; a cell holding a comma, a quote, a CR or an LF is quoted). Numbers are written by pandas with ``float_format=None``: the shortest text that reads
back to exactly the same value (float64 columns as float64; the float32 signals of
``activations.csv`` as the shortest float32 text, which ``float(text)`` cast to float32 gives back
exactly). Missing values are empty cells; infinities are ``inf`` / ``-inf``.

Formula injection: a text cell (or header) that starts with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return would be run as a formula by Excel, LibreOffice or Google Sheets. Such cells are
written with a single quote in front (``=1+1`` -> ``'=1+1``), and so is a text cell that itself
starts with a quote, so the rule is reversible: :func:`restore_cell` (or :func:`read_csv`) drops one
leading quote. Numeric columns are never touched: ``-2.5`` in a number column stays ``-2.5``, while
the *token* ``-2`` becomes ``'-2``.

Every column of every file is documented in ``docs/csv-columns.md``.

Examples
--------
>>> neutralize_cell("=HYPERLINK(\\"x\\")"), neutralize_cell("a=b"), neutralize_cell("'q")
('\\'=HYPERLINK("x")', 'a=b', "''q")
>>> restore_cell(neutralize_cell("-2"))
'-2'
"""

from __future__ import annotations

import csv
import io
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from gatelens.analysis._reading import read, read_mask, read_tokens, select_layers
from gatelens.analysis.correlate import COLUMNS as CORRELATION_COLUMNS
from gatelens.analysis.decompose import FEATURE_DRIVER_COLUMNS, GATE_DRIVER_COLUMNS, TOKEN_GATE_COLUMNS
from gatelens.analysis.events import EVENT_COLUMNS, SUMMARY_COLUMNS
from gatelens.analysis.examples import EXAMPLE_COLUMNS, HISTOGRAM_COLUMNS
from gatelens.analysis.explain_score import SCORE_COLUMNS
from gatelens.analysis.memory import HALF_LIFE_COLUMNS, RETENTION_COLUMNS
from gatelens.analysis.partials import clean_partials, partial_path
from gatelens.analysis.pipeline import EXPORT_FILES
from gatelens.analysis.probes import REPORT_COLUMNS
from gatelens.analysis.trace import Trace
from gatelens.errors import GatelensInputError, UsageError

if TYPE_CHECKING:
    from gatelens.analysis.pipeline import Analysis

log = logging.getLogger(__name__)

#: First characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_ESCAPED = (*FORMULA_PREFIXES, "'")

UNITS_COLUMNS = [
    "layer", "unit", "signal", "mean", "std", "frac_below_0.1", "frac_above_0.9", "half_life_steps", "cluster",
    "archetype", "frac_saturated", "frac_linear", "mean_slope", "activation", "min", "max", "n",
]  # fmt: skip

#: CSV file name -> the Analysis table it is written from (besides activations.csv and units.csv): the
#: ``files`` of the steps of :data:`gatelens.analysis.pipeline.STEP_REGISTRY`.
ANALYSIS_FILES = EXPORT_FILES


def neutralize_cell(value: Any) -> str:
    """The text of a CSV cell, made safe to open in a spreadsheet (see the module docstring).

    Examples
    --------
    >>> [neutralize_cell(s) for s in ["+1", "@SUM(1)", "-2", "\\tx", "ok", 3]]
    ["'+1", "'@SUM(1)", "'-2", "'\\tx", 'ok', '3']
    """
    s = str(value)
    return "'" + s if s.startswith(_ESCAPED) else s


def restore_cell(value: Any) -> Any:
    """Inverse of :func:`neutralize_cell` for text read back from an export (non-strings pass through).

    Examples
    --------
    >>> restore_cell("'=1"), restore_cell("''q"), restore_cell("plain"), restore_cell(2.5)
    ('=1', "'q", 'plain', 2.5)
    """
    if isinstance(value, str) and value.startswith("'"):
        return value[1:]
    return value


def _is_text(series: pd.Series) -> bool:
    return (
        pd.api.types.is_object_dtype(series.dtype)
        or pd.api.types.is_string_dtype(series.dtype)
        or isinstance(series.dtype, pd.CategoricalDtype)
    )


def _safe_text(series: pd.Series) -> pd.Series:
    """Neutralise the non-missing cells of a text column (each distinct value once)."""
    values = series.astype(object)
    present = values.notna()
    if not present.any():
        return values
    uniques = pd.unique(values[present])
    table = {u: neutralize_cell(u) for u in uniques}
    return values.where(~present, values.map(table))


def safe_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with every text column and every header neutralised; numbers untouched.

    Examples
    --------
    >>> safe_frame(pd.DataFrame({"token": ["-2", "a"], "-x": [-2.0, 1.5]})).to_csv(index=False)
    "token,'-x\\n'-2,-2.0\\na,1.5\\n"
    """
    out = df.copy()
    for col in out.columns:
        if _is_text(out[col]):
            out[col] = _safe_text(out[col])
    out.columns = [neutralize_cell(c) for c in out.columns]
    return out


def _atomic_csv(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = False) -> Path:
    """Run ``write(f)`` on a partial file next to ``path`` (:mod:`gatelens.analysis.partials`), then rename it
    into place; a failure removes it, and a kill leaves a hidden partial that the next export removes."""
    path = Path(path)
    with partial_path(path) as tmp:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline="") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return path


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write one table as a safe CSV, atomically (temporary file, then rename).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = write_csv(pd.DataFrame({"token": ["=cmd()"], "x": [0.1]}), p)
    >>> p.read_text()
    "token,x\\n'=cmd(),0.1\\n"
    """
    safe = safe_frame(df)
    return _atomic_csv(path, lambda f: safe.to_csv(f, index=False, lineterminator="\r\n"))


def write_csv_batches(batches: Iterable[pd.DataFrame], path: str | os.PathLike, columns: Sequence[str]) -> Path:
    """Write a table that arrives a batch at a time as one safe CSV, atomically; memory holds one batch.

    The header (``columns``) first, then each batch formatted as :func:`write_csv` formats a table
    (every batch must have these columns, in this order). Batches with the same dtypes, as Parquet
    batches of one file have, give byte for byte the CSV that :func:`write_csv` gives for their
    concatenation.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> parts = [pd.DataFrame({"token": ["=a"], "x": [0.5]}), pd.DataFrame({"token": ["b"], "x": [-1.0]})]
    >>> _ = write_csv_batches(parts, p, ["token", "x"])
    >>> p.read_bytes() == write_csv(pd.concat(parts), p.with_name("whole.csv")).read_bytes()
    True
    """
    header = list(columns)

    def write(f: Any) -> None:
        safe_frame(pd.DataFrame(columns=header)).to_csv(f, index=False, lineterminator="\r\n")
        for k, df in enumerate(batches):
            if list(df.columns) != header:
                raise UsageError(f"{path}: batch {k} has columns {list(df.columns)}, expected {header}")
            safe_frame(df).to_csv(f, index=False, header=False, lineterminator="\r\n")

    return _atomic_csv(path, write)


def write_events_csv(analysis: Analysis, path: str | os.PathLike, *, batch_size: int = 65_536) -> Path:
    """Write ``events.csv`` from the events of ``analysis``, a batch at a time (see :func:`write_csv_batches`).

    Events on disk (``analysis.events_file``: a loaded or streamed analysis) are read with
    :func:`gatelens.analysis.pipeline.iter_event_batches`, so memory holds one Parquet row group or batch of
    ``batch_size`` rows, not the table; the file is the same as :func:`write_csv` of the whole table.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from gatelens.analysis.pipeline import Analysis
    >>> a = Analysis(events=pd.DataFrame({"layer": ["-x", "y"], "unit": [0, 1]}))
    >>> print(write_events_csv(a, pathlib.Path(tempfile.mkdtemp()) / "events.csv", batch_size=1).read_text())
    layer,unit
    '-x,0
    y,1
    <BLANKLINE>
    """
    from gatelens.analysis.pipeline import iter_event_batches

    if analysis.events_file is not None:
        import pyarrow.parquet as pq

        columns = pq.read_schema(analysis.events_file).names
    else:
        columns = list(analysis.events.columns)
    if not columns:  # the events step did not run: an empty table with its header
        return write_csv_batches([], path, TABLE_COLUMNS["events"])
    return write_csv_batches(iter_event_batches(analysis, batch_size=batch_size), path, columns)


#: Columns that hold text in the exports (everything else is numeric or bool).
TEXT_COLUMNS = frozenset(
    {
        "layer", "signal", "gate", "feature", "token", "event", "activation", "archetype", "unit_archetype",
        "top_feature", "top_tokens", "top_features", "top_units", "task", "split", "control_by", "note", "time",
    }
)  # fmt: skip


def read_csv(path: str | os.PathLike | Any, **kwargs: Any) -> pd.DataFrame:
    """Read a gatelens CSV back: text columns as text (a token ``NA`` stays ``"NA"``) with neutralised
    cells restored (:func:`restore_cell`), numbers exactly, empty cells as NaN.

    ``path`` is a path or a file object (text or binary UTF-8, e.g. ``zipfile.ZipFile.open(...)``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = write_csv(pd.DataFrame({"token": ["-2", "'q", "NA"], "v": [-2.0, float("inf"), None]}), p)
    >>> read_csv(p).to_dict("list")
    {'token': ['-2', "'q", 'NA'], 'v': [-2.0, inf, nan]}
    >>> with open(p, "rb") as f:
    ...     read_csv(f)["token"].tolist()
    ['-2', "'q", 'NA']
    """
    if hasattr(path, "read"):  # a file object (binary or text), e.g. a member of the downloaded zip
        raw = path.read()
        source: Any = io.StringIO(raw.decode("utf-8-sig") if isinstance(raw, bytes) else raw, newline="")
        header = next(csv.reader(source), [])
        source.seek(0)
    else:
        source = path
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    text = {c for c in header if restore_cell(c) in TEXT_COLUMNS}
    na = {c: ([""] if c in text else ["", "nan", "NaN"]) for c in header}
    options: dict[str, Any] = {"keep_default_na": False, "na_values": na, "dtype": {c: str for c in text}}
    df = pd.read_csv(source, **{**options, **kwargs})
    for col in df.columns:
        if _is_text(df[col]):
            df[col] = df[col].astype(object).where(df[col].notna(), None).map(restore_cell)
    df.columns = [restore_cell(c) for c in df.columns]
    return df


def activation_columns(
    trace: Trace, layers: Sequence[str] | str | None = None, signals: Sequence[str] | None = None
) -> list[str]:
    """The columns of ``activations.csv`` for these layers: keys, the union of their signals, ``token``.

    Examples
    --------
    >>> import numpy as np
    >>> from gatelens.analysis.trace import LayerInfo, LayerTrace
    >>> info = LayerInfo(name="gru", cell_type="gru", units=1, input_dim=1)
    >>> lt = LayerTrace(info, {s: np.zeros((1, 1, 1)) for s in info.signals}, mask=np.ones((1, 1), bool),
    ...                 inputs=np.zeros((1, 1, 1)))
    >>> activation_columns(Trace({"gru": lt}))[4:]
    ['update_gate', 'reset_gate', 'candidate', 'hidden_state', 'update_gate_pre', 'reset_gate_pre', 'candidate_pre']
    """
    names = select_layers(trace, layers)
    known: list[str] = []
    for name in names:
        for s in trace[name].info.signals:
            if s not in known:
                known.append(s)
    if signals is not None:
        unknown = [s for s in signals if s not in known]
        if unknown:
            raise GatelensInputError(f"--signals: no signal(s) {unknown} in layers {names}; they have {known}")
        known = [s for s in known if s in set(signals)]
    cols = ["layer", "sequence", "step", "unit", *known]
    if trace.tokens is not None:
        cols.append("token")
    if _has_time(trace):
        cols.append("time")
    return cols


def _has_time(trace: Trace) -> bool:
    meta = getattr(trace, "meta", None) or {}
    return bool((meta.get("data") or {}).get("record_times"))


def _rows(n: int, chunk: int, sequences: range | None) -> Iterable[slice]:
    lo, hi = (0, n) if sequences is None else (max(0, sequences.start), min(n, sequences.stop))
    for start in range(lo, hi, chunk):
        yield slice(start, min(start + chunk, hi))


def parse_sequences(text: str) -> range:
    """``"A:B"`` (either end may be left out) -> ``range(A, B)``; ``"K"`` -> ``range(K, K + 1)``.

    Examples
    --------
    >>> parse_sequences("0:100"), parse_sequences("5"), parse_sequences(":3")
    (range(0, 100), range(5, 6), range(0, 3))
    """
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            r = range(int(a) if a.strip() else 0, int(b) if b.strip() else 2**62)
        else:
            r = range(int(text), int(text) + 1)
    except ValueError:
        raise GatelensInputError(f"--sequences {text!r}: expected A:B (sequence numbers, B excluded)") from None
    if r.start < 0 or r.stop <= r.start:
        raise GatelensInputError(f"--sequences {text!r}: expected 0 <= A < B")
    return r


def activation_batches(
    trace: Trace,
    *,
    layers: Sequence[str] | str | None = None,
    signals: Sequence[str] | None = None,
    sequences: range | None = None,
    chunk: int = 256,
    safe: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Iterable[Any]:
    """The rows of ``activations`` as Arrow tables, a chunk of sequences of one layer at a time.

    Columns as :func:`activation_columns`; ``safe`` neutralises the text cells (CSV), else they are
    kept as they are (Parquet). Only unmasked steps; only the chosen layers, signals and sequences.

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> mask = np.array([[True, True, True, False]] * 3)               # the last step of each sequence is padding
    >>> trace, _ = example_trace("lstm", n=3, steps=4, units=2, fill=0.5, mask=mask)
    >>> tables = list(activation_batches(trace, signals=["forget_gate"], chunk=2))
    >>> [t.num_rows for t in tables], tables[0].column_names          # 2 and 1 sequences x 3 real steps x 2 units
    ([12, 6], ['layer', 'sequence', 'step', 'unit', 'forget_gate'])
    >>> tables[0].slice(0, 3).to_pydict()
    {'layer': ['lstm', 'lstm', 'lstm'], 'sequence': [0, 0, 0], 'step': [0, 0, 1], 'unit': [0, 1, 0],
     'forget_gate': [0.5, 0.5, 0.5]}
    """
    import pyarrow as pa

    names = select_layers(trace, layers)
    columns = activation_columns(trace, names, signals)
    chosen = [c for c in columns[4:] if c not in ("token", "time")]
    schema = activation_schema(columns)
    times = None
    if "time" in columns:
        from gatelens.analysis.sources import time_grid

        times = time_grid(trace)
    total = sum(len(list(_rows(trace[n].shape[0], chunk, sequences))) for n in names)
    done = 0
    for name in names:
        lt = trace[name]
        u = lt.info.units
        layer = neutralize_cell(name) if safe else name
        for rows in _rows(lt.shape[0], chunk, sequences):
            m = read_mask(lt, rows)
            s_idx, t_idx = np.nonzero(m)
            k = len(s_idx)
            if k:
                data: list[Any] = [
                    pa.array(np.full(k * u, layer, dtype=object), pa.string()),
                    np.repeat(s_idx + rows.start, u).astype(np.int64),
                    np.repeat(t_idx, u).astype(np.int64),
                    np.tile(np.arange(u, dtype=np.int64), k),
                ]
                for sig in chosen:  # float16 widens to float32 exactly; other cell types: empty
                    data.append(
                        read(lt[sig], rows, np.float32)[m].reshape(-1)
                        if sig in lt.info.signals
                        else pa.nulls(k * u, pa.float32())
                    )
                if trace.tokens is not None:
                    tok = pd.Series(np.repeat(read_tokens(trace, rows)[m], u))
                    data.append(pa.array((_safe_text(tok) if safe else tok.astype(object)).to_numpy(), pa.string()))
                if times is not None:
                    tm = pd.Series(np.repeat(times[rows][m], u))
                    data.append(pa.array((_safe_text(tm) if safe else tm).to_numpy(), pa.string()))
                yield pa.Table.from_arrays(data, schema=schema)
            done += 1
            if progress is not None:
                progress(done, total)


def activation_schema(columns: Sequence[str]) -> Any:
    """The Arrow schema of ``activations`` with these columns (keys int64, signals float32, text string)."""
    import pyarrow as pa

    ints = {"sequence", "step", "unit"}
    return pa.schema(
        [
            (c, pa.string() if c in ("layer", "token", "time") else pa.int64() if c in ints else pa.float32())
            for c in columns
        ]  # fmt: skip
    )


def write_activations_csv(
    trace: Trace,
    path: str | os.PathLike,
    *,
    layers: Sequence[str] | str | None = None,
    chunk: int = 256,
    progress: Callable[[int, int], None] | None = None,
    signals: Sequence[str] | None = None,
    sequences: range | None = None,
) -> Path:
    """Write ``activations.csv``: one row per layer, sequence, unmasked step and unit.

    Columns ``layer, sequence, step, unit``, then every signal of the chosen layers (a layer's row
    leaves the signals of other cell types empty), then ``token`` for text inputs and ``time`` for a
    series with a date/time column. ``signals`` and ``sequences`` (a range) choose what is written. Values are written
    as stored (float32, float16 widened exactly: the shortest text that reads back to the same
    float32). Text cells are always quoted. Streamed a chunk of sequences at a time (formatted by
    Arrow's CSV writer, several times faster than pandas) into a temporary file that replaces ``path``
    only when complete.

    Parameters
    ----------
    trace : Trace
    path : path
    layers : str or list of str, optional
        Default all layers.
    chunk : int
        Sequences per chunk (bounds memory).
    progress : callable(done, total), optional
        Called after each chunk with chunks written so far.

    Returns
    -------
    Path

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from gatelens.analysis.trace import LayerInfo, LayerTrace
    >>> info = LayerInfo(name="rnn", cell_type="simple_rnn", units=1, input_dim=1)
    >>> h = np.array([[[0.1], [-0.25]]], np.float32)
    >>> lt = LayerTrace(info, {"hidden_state": h, "hidden_state_pre": h}, mask=np.array([[True, False]]),
    ...                 inputs=h)
    >>> t = Trace({"rnn": lt}, tokens=np.array([[1, 0]]), vocabulary=["", "=1"])
    >>> p = write_activations_csv(t, pathlib.Path(tempfile.mkdtemp()) / "a.csv")
    >>> print(p.read_text())
    layer,sequence,step,unit,hidden_state,hidden_state_pre,token
    "rnn",0,0,0,0.1,0.1,"'=1"
    <BLANKLINE>
    """
    import pyarrow.csv as pa_csv

    columns = activation_columns(trace, layers, signals)
    header = [neutralize_cell(c) for c in columns]
    options = pa_csv.WriteOptions(include_header=False, eol="\r\n", quoting_style="needed")

    def write(f: Any) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerow(header)
        f.write(buf.getvalue().encode("utf-8"))
        with pa_csv.CSVWriter(f, activation_schema(columns), write_options=options) as writer:
            for table in activation_batches(trace, layers=layers, signals=signals, sequences=sequences, chunk=chunk,
                                            progress=progress):  # fmt: skip
                writer.write_table(table)

    return _atomic_csv(path, write, binary=True)


def units_table(analysis: Analysis) -> pd.DataFrame:
    """The ``units.csv`` table: :func:`~gatelens.analysis.stats.signal_stats` rows joined with the rest.

    One row per layer, unit and signal (every signal, states and pre-activations included):
    the moments, ``half_life_steps`` on the memory gate's rows (LSTM ``forget_gate``, GRU
    ``update_gate``), the unit's ``cluster`` and ``archetype`` (from the clusters table: empty when
    clustering was not run), and the saturation columns of :func:`~gatelens.analysis.stats.unit_stats` on the
    gate and candidate rows. Cells that do not apply to a row are empty.

    Examples
    --------
    >>> import numpy as np
    >>> from gatelens.analysis.trace import LayerInfo, LayerTrace
    >>> from gatelens.analysis.pipeline import analyze
    >>> info = LayerInfo(name="lstm", cell_type="lstm", units=1, input_dim=1)
    >>> lt = LayerTrace(info, {s: np.full((1, 3, 1), 0.5, np.float32) for s in info.signals},
    ...                 mask=np.ones((1, 3), bool), inputs=np.zeros((1, 3, 1), np.float32))
    >>> table = units_table(analyze(Trace({"lstm": lt}), steps=("stats", "memory")))
    >>> table.set_index("signal").loc[["forget_gate", "cell_state"], ["half_life_steps", "frac_linear"]]
                 half_life_steps  frac_linear
    signal
    forget_gate              1.0          1.0
    cell_state               NaN          NaN
    """
    base = analysis.signal_stats.copy()
    if base.empty:
        return pd.DataFrame(columns=UNITS_COLUMNS)
    curve = analysis.units[["layer", "unit", "signal", "frac_saturated", "frac_linear", "mean_slope", "activation"]]
    df = base.merge(curve, on=["layer", "unit", "signal"], how="left")
    hl = analysis.half_lives
    if hl is not None and len(hl):
        df = df.merge(hl[["layer", "unit", "signal", "half_life_steps"]], on=["layer", "unit", "signal"], how="left")
    else:
        df["half_life_steps"] = np.nan
    cl = analysis.clusters
    if cl is not None and len(cl) and {"layer", "unit", "cluster"} <= set(cl.columns):
        keep = ["layer", "unit", "cluster"] + (["archetype"] if "archetype" in cl.columns else [])
        df = df.merge(cl[keep].drop_duplicates(["layer", "unit"]), on=["layer", "unit"], how="left")
        df["cluster"] = df["cluster"].astype("Int64")
    else:
        df["cluster"] = pd.array([pd.NA] * len(df), dtype="Int64")
    if "archetype" not in df.columns:
        df["archetype"] = None
    return df[UNITS_COLUMNS]


def export_csvs(
    trace: Trace,
    out_dir: str | os.PathLike,
    *,
    analysis: Analysis | None = None,
    chunk: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Path]:
    """Write every CSV of the contract into ``out_dir``; return ``{file name: path}``.

    ``activations.csv`` and ``units.csv`` always (``units.csv`` from ``analysis`` when given, else
    computed from the trace, without clusters). With an :class:`~gatelens.analysis.pipeline.Analysis`, also
    ``correlations.csv``, ``probes.csv``, ``clusters.csv``, ``events.csv``, ``event_summary.csv``,
    ``decomposition.csv`` (the per-unit gate drivers), ``token_gates.csv``, ``half_lives.csv`` and
    ``retention.csv`` (a table that is empty is written with its header only). Each file is written
    atomically. ``events.csv`` is written a batch at a time (:func:`write_events_csv`): events kept on
    disk (:func:`gatelens.analysis.pipeline.load_analysis`, or ``analyze(..., events_path=...)``) are never
    read whole.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from gatelens.analysis.trace import LayerInfo, LayerTrace
    >>> info = LayerInfo(name="lstm", cell_type="lstm", units=1, input_dim=1)
    >>> lt = LayerTrace(info, {s: np.full((1, 2, 1), 0.5, np.float32) for s in info.signals},
    ...                 mask=np.ones((1, 2), bool), inputs=np.zeros((1, 2, 1), np.float32))
    >>> sorted(export_csvs(Trace({"lstm": lt}), tempfile.mkdtemp()))
    ['activations.csv', 'units.csv']
    """
    from gatelens.analysis.pipeline import Analysis

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    written["activations.csv"] = write_activations_csv(trace, out / "activations.csv", chunk=chunk)
    if progress is not None:
        progress(1, 2 + (len(ANALYSIS_FILES) if analysis is not None else 0))
    if analysis is None:
        from gatelens.analysis.memory import half_lives
        from gatelens.analysis.stats import stats_tables

        units, sig = stats_tables(trace, chunk=chunk)
        table = units_table(Analysis(units=units, signal_stats=sig, half_lives=half_lives(trace, chunk=chunk)))
    else:
        table = units_table(analysis)
    written["units.csv"] = write_csv(table, out / "units.csv")
    if analysis is not None:
        done = 2
        for fname, attr in ANALYSIS_FILES.items():
            df = getattr(analysis, attr)
            if df is None:
                continue
            if attr == "events":
                written[fname] = write_events_csv(analysis, out / fname)
            else:
                written[fname] = write_csv(_with_header(df, attr), out / fname)
            done += 1
            if progress is not None:
                progress(done, 2 + len(ANALYSIS_FILES))
    log.info("wrote %d CSV files to %s", len(written), out)
    return written


#: Export formats of :func:`export_run`.
EXPORT_FORMATS = ("csv", "parquet")
#: The documented columns of each table (docs/csv-columns.md), written as the header of an empty table: the column
#: lists of the modules that make the tables, so a header never differs from a full table's (the clusters' written out:
#: their module imports scikit-learn, which an export does not need; tests/test_analysis_export.py compares them).
TABLE_COLUMNS = {
    "units": UNITS_COLUMNS,
    "correlations": CORRELATION_COLUMNS,
    "probes": REPORT_COLUMNS,
    "clusters": ["layer", "unit", "cluster", "archetype", "silhouette", "unit_archetype", "half_life_steps",
                 "top_feature", "top_abs_r", "traits"],
    "events": EVENT_COLUMNS,
    "event_summary": SUMMARY_COLUMNS,
    "decomposition": GATE_DRIVER_COLUMNS,
    "gate_drivers": FEATURE_DRIVER_COLUMNS,
    "token_gates": TOKEN_GATE_COLUMNS,
    "half_lives": HALF_LIFE_COLUMNS,
    "retention": RETENTION_COLUMNS,
    "examples": EXAMPLE_COLUMNS,
    "histograms": HISTOGRAM_COLUMNS,
    "explanations": SCORE_COLUMNS,
    "sequences": ["sequence", "step", "source_sequence", "source_row", "time"],
}  # fmt: skip


def _select(df: pd.DataFrame, layers: Sequence[str] | None, signals: Sequence[str] | None,
            sequences: range | None) -> pd.DataFrame:  # fmt: skip
    """The rows of a table that the selections keep (a table without that column is kept whole)."""
    keep = np.ones(len(df), bool)
    if layers is not None and "layer" in df.columns:
        keep &= df["layer"].isin(list(layers)).to_numpy()
    if signals is not None and "signal" in df.columns:
        keep &= df["signal"].isin(list(signals)).to_numpy()
    if sequences is not None and "sequence" in df.columns:
        seq = pd.to_numeric(df["sequence"], errors="coerce")
        keep &= ((seq >= sequences.start) & (seq < sequences.stop)).to_numpy()
    return df if keep.all() else df[keep].reset_index(drop=True)


def _with_header(df: pd.DataFrame | None, name: str) -> pd.DataFrame:
    if df is not None and (len(df.columns) or name not in TABLE_COLUMNS):
        return df
    return pd.DataFrame(columns=TABLE_COLUMNS[name])


def _atomic_parquet(table: Any, path: Path) -> Path:
    import pyarrow.parquet as pq

    with partial_path(path) as tmp:
        pq.write_table(table, tmp, use_dictionary=[c for c in table.column_names if c in _DICT_COLUMNS])
        os.replace(tmp, path)
    return path


#: Key and text columns that Parquet stores dictionary-encoded.
_DICT_COLUMNS = frozenset({"layer", "sequence", "step", "unit", "signal", "token", "time", "gate", "event", "feature"})


def _write_activations_parquet(trace: Trace, out: Path, **sel: Any) -> Path:
    """``activations/layer=<name>/part-0.parquet`` (hive-partitioned by layer), replaced only when complete."""
    import shutil
    from urllib.parse import quote

    import pyarrow.parquet as pq

    final = out / "activations"
    if final.exists() and not (final.is_dir() and all(p.name.startswith("layer=") for p in final.iterdir())):
        raise GatelensInputError(f"{final}: exists and is not a gatelens activations export; not overwritten")
    held = partial_path(final, directory=True)
    tmp = held.path
    try:
        writers: dict[str, Any] = {}
        names = select_layers(trace, sel.get("layers"))
        columns = activation_columns(trace, names, sel.get("signals"))
        schema = activation_schema([c for c in columns if c != "layer"])
        try:
            for table in activation_batches(trace, safe=False, **sel):
                name = table.column("layer")[0].as_py()
                if name not in writers:
                    d = tmp / f"layer={quote(name, safe='')}"
                    d.mkdir(parents=True)
                    writers[name] = pq.ParquetWriter(  # not *.parquet until whole: no recursive glob takes it
                        d / "part-0.parquet.partial", schema,
                        use_dictionary=[c for c in schema.names if c in _DICT_COLUMNS],
                    )  # fmt: skip
                writers[name].write_table(table.drop_columns(["layer"]))
        finally:
            for w in writers.values():
                w.close()
        for part in tmp.glob("layer=*/part-0.parquet.partial"):
            os.replace(part, part.with_name("part-0.parquet"))
        for name in names:  # a layer without unmasked rows (or outside the sequences chosen): an empty file
            if name not in writers:
                d = tmp / f"layer={quote(name, safe='')}"
                d.mkdir(parents=True)
                pq.write_table(schema.empty_table(), d / "part-0.parquet")
        if final.exists():
            old = out / f".activations.old.partial-{uuid.uuid4().hex[:12]}"  # next export removes it if killed
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
    finally:
        held.close()  # removes the partial folder unless it was renamed into place
    return final


def write_events_parquet(
    analysis: Analysis,
    path: str | os.PathLike,
    layers: Sequence[str] | None = None,
    signals: Sequence[str] | None = None,
    sequences: range | None = None,
    *,
    batch_size: int | None = None,
) -> Path:
    """The events of ``analysis`` as one Parquet file, streamed: a batch read, selected and written as a row group.

    Memory holds one batch of ``batch_size`` rows (default :data:`~gatelens.analysis.pipeline.EVENTS_ROW_GROUP`),
    never the table: the events on disk (``analysis.events_file``) are read with
    :func:`~gatelens.analysis.pipeline.iter_event_batches`. Every row group has at most ``batch_size`` rows; keys
    and text are dictionary-encoded; no rows give a file with the events' columns. Written as a partial file,
    renamed into place when whole.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import pyarrow.parquet as pq
    >>> from gatelens.analysis.pipeline import Analysis
    >>> ev = pd.DataFrame({"layer": ["a", "b", "a", "a", "a"], "sequence": [0, 0, 1, 2, 3], "unit": range(5)})
    >>> p = write_events_parquet(Analysis(events=ev), pathlib.Path(tempfile.mkdtemp()) / "events.parquet", ["a"],
    ...                          batch_size=2)
    >>> f = pq.ParquetFile(p)
    >>> [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)], f.read().column("unit").to_pylist()
    ([1, 2, 1], [0, 2, 3, 4])
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gatelens.analysis.pipeline import EVENTS_ROW_GROUP, iter_event_batches

    batch_size = EVENTS_ROW_GROUP if batch_size is None else int(batch_size)
    path = Path(path)
    if analysis.events_file is not None:
        schema = pq.read_schema(analysis.events_file)
    else:
        schema = pa.Schema.from_pandas(_with_header(analysis.events, "events"), preserve_index=False)
    schema = schema.remove_metadata()
    with partial_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, schema, use_dictionary=[c for c in schema.names if c in _DICT_COLUMNS])
        try:
            for batch in iter_event_batches(analysis, batch_size=batch_size):
                batch = _select(batch, layers, signals, sequences)
                if len(batch):
                    table = pa.Table.from_pandas(batch, preserve_index=False).select(schema.names)
                    writer.write_table(table.cast(schema), row_group_size=batch_size)
        finally:
            writer.close()
        os.replace(tmp, path)
    return path


def export_tables(analysis: Analysis | None = None) -> list[str]:
    """The tables :func:`export_run` writes for ``analysis``: ``activations``, ``sequences``, ``units`` and each
    analysis table that is there (not None; ``events`` also when it is on disk).

    Examples
    --------
    >>> from gatelens.analysis.pipeline import Analysis
    >>> export_tables(), "correlations" in export_tables(Analysis(correlations=pd.DataFrame()))
    (['activations', 'sequences', 'units'], True)
    """
    names = ["activations", "sequences", "units"]
    if analysis is None:
        return names
    for attr in ANALYSIS_FILES.values():
        if attr == "events":
            if analysis.events is not None or analysis.events_file is not None:
                names.append("events")
        elif getattr(analysis, attr) is not None:
            names.append(attr)
    return names


def export_table(
    trace: Trace,
    name: str,
    out_dir: str | os.PathLike,
    *,
    format: str = "csv",
    analysis: Analysis | None = None,
    layers: Sequence[str] | None = None,
    signals: Sequence[str] | None = None,
    sequences: range | None = None,
    chunk: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write one table of :func:`export_run` (one of :func:`export_tables`), the same file it writes for it.

    ``activations`` and CSV ``events`` are streamed (a chunk or batch at a time); the other tables are small.
    ``progress(done, total)`` is called per chunk of ``activations``.

    Examples
    --------
    >>> import tempfile
    >>> from gatelens.analysis.store import open_run
    >>> from gatelens._examples import tiny_run
    >>> p = export_table(open_run(tiny_run(n=4)), "sequences", tempfile.mkdtemp(), sequences=range(1, 2))
    >>> p.name, read_csv(p)["sequence"].unique().tolist()
    ('sequences.csv', [1])
    """
    if format not in EXPORT_FORMATS:
        raise GatelensInputError(f"--format {format!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    if name not in export_tables(analysis):
        raise UsageError(f"no table {name!r} to export; there are {export_tables(analysis)}")
    from gatelens.analysis.pipeline import Analysis
    from gatelens.analysis.sources import sequence_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = select_layers(trace, layers)
    if name == "activations":
        sel = {"layers": names, "signals": signals, "sequences": sequences, "chunk": chunk}
        if format == "csv":
            return write_activations_csv(trace, out / "activations.csv", progress=progress, **sel)
        return _write_activations_parquet(trace, out, progress=progress, **sel)
    if name == "events":
        from gatelens.analysis.pipeline import iter_event_batches

        assert analysis is not None  # export_tables lists events only with an analysis
        if format == "csv":
            cols = list(analysis.events.columns) if analysis.events_file is None else None
            if cols is None:
                import pyarrow.parquet as pq

                cols = pq.read_schema(analysis.events_file).names
            cols = cols or TABLE_COLUMNS["events"]
            return write_csv_batches(
                (_select(b, names, signals, sequences)[cols] for b in iter_event_batches(analysis) if len(b.columns)),
                out / "events.csv", cols)  # fmt: skip
        return write_events_parquet(analysis, out / "events.parquet", names, signals, sequences)
    if name == "sequences":
        df = _select(sequence_table(trace), None, None, sequences)
    elif name == "units":
        if analysis is None:
            from gatelens.analysis.memory import half_lives
            from gatelens.analysis.stats import stats_tables

            units, sig = stats_tables(trace, chunk=chunk)
            analysis = Analysis(units=units, signal_stats=sig, half_lives=half_lives(trace, chunk=chunk))
        df = units_table(analysis)
    else:
        df = getattr(analysis, name)
    df = _with_header(_select(df, names if layers is not None else None, signals, sequences), name)
    if format == "csv":
        return write_csv(df, out / f"{name}.csv")
    import pyarrow as pa

    return _atomic_parquet(pa.Table.from_pandas(df, preserve_index=False), out / f"{name}.parquet")


def export_run(
    trace: Trace,
    out_dir: str | os.PathLike,
    *,
    format: str = "csv",
    analysis: Analysis | None = None,
    layers: Sequence[str] | None = None,
    signals: Sequence[str] | None = None,
    sequences: range | None = None,
    chunk: int = 256,
) -> dict[str, Path]:
    """Export a run as CSV files or Parquet, only the layers, signals and sequences asked for.

    ``activations`` (CSV streamed; Parquet hive-partitioned by layer: ``activations/layer=<name>/part-0.parquet``,
    keys and text dictionary-encoded), ``sequences`` (each (sequence, step)'s source sequence, row and
    time), ``units`` and, with ``analysis``, every analysis table. A table that is empty is written with
    its header (its documented columns). Every file is written under a partial name that no reader picks up
    (``.name.partial-*``) and renamed into place when complete; a killed export's partials are removed by the
    next. ``manifest.json`` is written last (:data:`EXPORT_MANIFEST`: the run, the selection, each file and its
    size), and removed first: an export is complete when it is there. Parquet files hold text as it is (no
    spreadsheet guard).

    Parameters
    ----------
    trace : Trace
    out_dir : path
    format : {"csv", "parquet"}
    analysis : Analysis, optional
    layers, signals : list of str, optional
        Keep only these (tables without a layer/signal column are kept whole).
    sequences : range, optional
        Keep only these sequences (:func:`parse_sequences`).

    Returns
    -------
    dict
        ``{table name: path}``.

    Examples
    --------
    >>> import tempfile
    >>> import pyarrow.parquet as pq
    >>> from gatelens.analysis.store import open_run
    >>> from gatelens._examples import tiny_run
    >>> paths = export_run(open_run(tiny_run(n=4)), tempfile.mkdtemp(), format="parquet", sequences=range(1, 3),
    ...                    signals=["hidden_state"])
    >>> t = pd.read_parquet(paths["activations"])
    >>> sorted(t["sequence"].unique().tolist()), list(t.columns)
    ([1, 2], ['sequence', 'step', 'unit', 'hidden_state', 'layer'])
    """
    if format not in EXPORT_FORMATS:
        raise GatelensInputError(f"--format {format!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_partials(out)  # what a killed export left
    (out / EXPORT_MANIFEST).unlink(missing_ok=True)  # a previous export's: this one is not complete until its own
    names = select_layers(trace, layers)
    activation_columns(trace, names, signals)  # checks the signals before anything is written
    tables = export_tables(analysis)
    order = ["activations"] + (["events"] if "events" in tables else [])
    order += [t for t in tables if t not in order]
    written: dict[str, Path] = {}
    for name in order:
        written[name] = export_table(
            trace, name, out, format=format, analysis=analysis, layers=layers, signals=signals, sequences=sequences,
            chunk=chunk,
        )  # fmt: skip
    _write_export_manifest(out, trace, written, format=format, layers=names, signals=signals, sequences=sequences)
    log.info("exported %d tables (%s) to %s", len(written), format, out)
    return written


#: The file :func:`export_run` writes last: an export is complete when it is there (a killed one has none).
EXPORT_MANIFEST = "manifest.json"


def _write_export_manifest(
    out: Path,
    trace: Trace,
    written: dict[str, Path],
    *,
    format: str,
    layers: Sequence[str],
    signals: Sequence[str] | None,
    sequences: range | None,
) -> None:
    """``manifest.json``: what was exported, from which run, and each file's size (written atomically, last)."""
    import json

    from gatelens import __version__
    from gatelens.analysis.store import atomic_write_bytes

    def size(path: Path) -> int:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size

    doc = {
        "gatelens_export": 1,
        "gatelens_version": __version__,
        "format": format,
        "run": None if trace.path is None else str(trace.path),
        "run_manifest_sha256": trace.meta.get("manifest_sha256"),  # which version of the run
        "layers": list(layers),
        "signals": None if signals is None else list(signals),
        "sequences": None if sequences is None else [sequences.start, min(sequences.stop, trace.n_sequences)],
        "files": {name: {"path": path.name, "bytes": size(path)} for name, path in written.items()},
    }
    atomic_write_bytes(out / EXPORT_MANIFEST, json.dumps(doc, indent=1).encode())
