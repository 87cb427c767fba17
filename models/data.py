"""Read a user's data file (``.npy``, ``.npz``, ``.csv``, ``.txt``) into the arrays a model takes.

:func:`load_data` checks the data against an :class:`~gatelens.models.spec.InputSpec` (what the model takes)
and cuts long series and texts into windows of the model's length. Every user mistake raises
:class:`gatelens.errors.DataError` with one plain line naming the file and the problem (row, column,
step, what was expected); nothing here imports TensorFlow or Keras.

- ``.npy``: float (N, T, F) for float models, integer (N, T) token ids for models that start with
  an Embedding. The header is checked (dtype, shape, size cap) before any data is read; pickled
  (object) arrays are refused.
- ``.npz``: the same array under key ``x``.
- ``.csv``: a header row, then one row per step. Numeric columns are the features in order (or
  ``columns``); an optional ``sequence`` column keeps sequences apart. Each sequence is cut into
  windows of the model's length (``window``, ``stride``).
- ``.txt``: UTF-8 text, tokenised with the vocabulary at level ``char`` or ``word`` and cut into windows.

Examples
--------
>>> import os, tempfile
>>> from gatelens.models.spec import InputSpec
>>> p = os.path.join(tempfile.mkdtemp(), "series.csv")
>>> with open(p, "w") as f:
...     _ = f.write("year,value\\n2000,1\\n2001,2\\n2002,3\\n2003,4\\n2004,5\\n")
>>> d = load_data(p, InputSpec(n_steps=2, n_features=1))
>>> d.x[:, :, 0].tolist(), d.start.tolist(), d.feature_names
([[1.0, 2.0], [3.0, 4.0]], [0, 2], ['value'])
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gatelens.analysis.store import sha256_file
from gatelens.errors import DataError
from gatelens.limits import ReadLimits, check_npz_member, scan_csv
from gatelens.models.spec import WORD_PATTERN, InputSpec

log = logging.getLogger(__name__)

#: File kinds :func:`load_data` reads, by suffix.
SUPPORTED_SUFFIXES = (".npy", ".npz", ".csv", ".txt")
#: Default cap on the bytes of an array (declared or produced) and of a text/CSV file: 2 GiB.
#: Override with the environment variable ``GATELENS_MAX_DATA_BYTES`` or ``load_data(max_bytes=...)``.
DEFAULT_MAX_BYTES = 2 * 1024**3
#: The CSV column that keeps sequences apart.
SEQUENCE_COLUMN = "sequence"
#: Column names taken for an index (time, date, counter) rather than a feature when the model's
#: feature count says one column too many.
INDEX_COLUMNS = frozenset(
    {"", "step", "t", "time", "date", "datetime", "timestamp", "year", "month", "day", "index", "idx"}
)
_NPY_KINDS = {
    "b": "bool",
    "i": "int",
    "u": "uint",
    "f": "float",
    "c": "complex",
    "M": "datetime",
    "m": "timedelta",
    "O": "object",
    "S": "bytes",
    "U": "str",
    "V": "void/structured",
}


@dataclass
class Dataset:
    """Model-ready data and where each row came from.

    Attributes
    ----------
    x : ndarray
        What the model takes: float32 (N, T, F); int32 (N, T) token ids for models that start with an
        Embedding; token strings (object, (N, T)) or texts (object, (N, 1)) for models that take strings.
    tokens : ndarray or None
        int32 (N, T) token ids for text models (the ids the Embedding sees), else None.
    vocabulary : list of str or None
        Token strings in id order for text models.
    sequence : ndarray
        int64 (N,): the source sequence of each row (CSV ``sequence`` column, the row of an array, 0 for a text).
    start : ndarray
        int64 (N,): the first step of each row in its source sequence.
    source : dict
        JSON-ready provenance: ``path``, ``kind``, ``sha256``, ``n_rows`` and what was done (window, stride, ...).
    feature_names : list of str or None
        Names of the F input features for numeric inputs (CSV columns, or ``x0, x1, ...``); None for text.
    """

    x: np.ndarray
    tokens: np.ndarray | None
    vocabulary: list[str] | None
    sequence: np.ndarray
    start: np.ndarray
    source: dict[str, Any] = field(default_factory=dict)
    feature_names: list[str] | None = None

    @property
    def n_sequences(self) -> int:
        """Number of rows N."""
        return int(self.x.shape[0])

    @property
    def n_steps(self) -> int:
        """Steps per row T (the token count for texts given as one string per row)."""
        return int(self.tokens.shape[1] if self.tokens is not None else self.x.shape[1])


def max_data_bytes() -> int:
    """The size cap in bytes: ``GATELENS_MAX_DATA_BYTES`` when set, else :data:`DEFAULT_MAX_BYTES`."""
    env = os.environ.get("GATELENS_MAX_DATA_BYTES")
    if env:
        try:
            v = int(env)
        except ValueError:
            raise DataError(f"GATELENS_MAX_DATA_BYTES must be a number of bytes, got {env!r}") from None
        if v > 0:
            return v
    return DEFAULT_MAX_BYTES


def window_series(arr: np.ndarray, window: int, stride: int | None = None) -> np.ndarray:
    """Windows ``arr[s:s + window]`` for ``s = 0, stride, 2*stride, ...`` as a read-only view (no copy).

    A tail shorter than a window is left out. ``np.ascontiguousarray`` of the result makes a copy.

    Parameters
    ----------
    arr : array (L, ...)
    window : steps per window (>= 1)
    stride : steps between window starts (>= 1, default ``window``)

    Returns
    -------
    ndarray (n, window, ...) with ``n = (L - window) // stride + 1`` (0 when ``L < window``)

    Examples
    --------
    >>> window_series(np.arange(7), 3, 2).tolist()
    [[0, 1, 2], [2, 3, 4], [4, 5, 6]]
    >>> window_series(np.arange(6).reshape(3, 2), 2).shape
    (1, 2, 2)
    """
    arr = np.asarray(arr)
    stride = window if stride is None else stride
    if int(window) < 1 or int(stride) < 1:
        raise ValueError(f"window and stride must be >= 1, got {window} and {stride}")
    if arr.ndim == 0:
        raise ValueError("window_series needs an array with a time axis, got a scalar")
    if arr.shape[0] < window:
        return np.zeros((0, window, *arr.shape[1:]), arr.dtype)
    view = np.lib.stride_tricks.sliding_window_view(arr, int(window), axis=0)[:: int(stride)]
    return np.moveaxis(view, -1, 1)  # sliding_window_view puts the window axis last


# -- entry point ----------------------------------------------------------------------------------


def load_data(
    path: str | os.PathLike,
    spec: InputSpec,
    *,
    columns: Sequence[str] | None = None,
    window: int | None = None,
    stride: int | None = None,
    level: str | None = None,
    max_sequences: int | None = None,
    max_bytes: int | None = None,
    time_column: str | None = None,
) -> Dataset:
    """Read a data file into the arrays ``spec``'s model takes.

    Parameters
    ----------
    path : a ``.npy``, ``.npz`` (key ``x``), ``.csv`` or ``.txt`` file
    spec : what the model takes (see :func:`gatelens.models.spec.input_spec`)
    columns : CSV columns to use as features, in order (default: the numeric columns)
    window : steps per row when cutting a CSV series or a text (default: the model's length; a
        model of variable length takes each sequence whole)
    stride : steps between window starts (default: ``window``)
    level : ``"char"`` or ``"word"`` tokens for text (default: ``spec.level``, else ``"char"``)
    max_sequences : keep only the first rows
    max_bytes : size cap on files and arrays (default :func:`max_data_bytes`, 2 GiB)
    time_column : the CSV column that holds each row's date/time (default: a column named ``date``,
        ``datetime``, ``time`` or ``timestamp``, or a text column whose every cell is a date); kept as
        written, per step, in ``source["record_times"]`` (see :func:`window_table`)

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        Any problem with the file or its fit to the model, in one line naming the file.

    Examples
    --------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.npy")
    >>> np.save(p, np.ones((2, 4, 3)))
    >>> d = load_data(p, InputSpec(n_steps=4, n_features=3))
    >>> d.x.dtype, d.x.shape, d.feature_names
    (dtype('float32'), (2, 4, 3), ['x0', 'x1', 'x2'])
    """
    try:
        return _load_data(path, spec, columns, window, stride, level, max_sequences, max_bytes, time_column)
    except DataError as e:
        msg = str(e)
        if "\n" in msg or "\r" in msg:  # one line, also when a file or column name holds a line break
            raise DataError(msg.replace("\r", "\\r").replace("\n", "\\n")) from None
        raise


def _load_data(path, spec, columns, window, stride, level, max_sequences, max_bytes, time_column=None) -> Dataset:
    path = Path(path)
    cap = int(max_bytes) if max_bytes is not None else max_data_bytes()
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"{path}: unsupported data file type {suffix or '(no extension)'!r}; "
            f"gatelens reads {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if not path.exists():
        raise DataError(f"{path}: no such data file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    _positive(path, "--max-sequences", max_sequences)
    _positive(path, "--window", window)
    _positive(path, "--stride", stride)
    if level is not None and level not in ("char", "word"):
        raise DataError(f"{path}: --level must be 'char' or 'word', got {level!r}")
    if suffix in (".npy", ".npz"):
        for opt, v in (("--window", window), ("--stride", stride), ("--columns", columns), ("--level", level)):
            if v:
                raise DataError(f"{path}: {opt} applies to .csv and .txt files, not to {suffix} arrays")
        arr, sha = (_read_npy_file if suffix == ".npy" else _read_npz_file)(path, cap, max_sequences)
        return _array_dataset(arr, spec, path, suffix[1:], sha, max_sequences)
    if window is not None and spec.n_steps is not None and window != spec.n_steps:
        raise DataError(f"{path}: --window {window} does not match the model's input length of {spec.n_steps} steps")
    raw = _read_bytes(path, cap)
    if suffix == ".csv":  # line lengths, columns, rows and cells bounded before pandas allocates anything
        scan_csv(raw, str(path), ReadLimits.from_env())
    text = _decode(path, raw)
    sha = hashlib.sha256(raw).hexdigest()
    del raw
    if suffix == ".csv":
        if level is not None:
            raise DataError(f"{path}: --level applies to .txt files, not to .csv series")
        return _load_csv(path, text, sha, spec, columns, window, stride, max_sequences, cap, time_column)
    if columns or time_column:
        raise DataError(f"{path}: --columns and --time-column apply to .csv files, not to .txt text")
    return _load_txt(path, text, sha, spec, level, window, stride, max_sequences, cap)


def _positive(path: Path, name: str, v: Any) -> None:
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise DataError(f"{path}: {name} must be a whole number >= 1, got {v!r}")


def _read_bytes(path: Path, cap: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > cap:
            raise DataError(f"{path}: the file has {size} bytes, more than the limit of {cap} bytes")
        return path.read_bytes()
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read: {e.strerror or e}") from None


def _decode(path: Path, raw: bytes) -> str:
    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[bom + e.start : bom + e.start + 4]
        raise DataError(f"{path}: not UTF-8 text: byte offset {bom + e.start} ({bad!r}...): {e.reason}") from None
    if "\r" in text:  # universal newlines, as Python's text mode (and the zoo's training) reads text
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


# -- .npy / .npz --------------------------------------------------------------------------------------


def _read_npy_stream(fp: BinaryIO, where: str, available: int, cap: int, max_rows: int | None) -> np.ndarray:
    """Read one .npy array from ``fp`` after checking its header; ``available`` is the stream's byte count."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
    except (ValueError, EOFError, OSError):
        raise DataError(f"{where}: not a .npy file (no NumPy magic string at its start)") from None
    try:
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fp)
        else:
            raise DataError(f"{where}: unsupported .npy format version {version[0]}.{version[1]} (expected 1.0 or 2.0)")
    except DataError:
        raise
    except (ValueError, SyntaxError, TypeError, EOFError, OSError, MemoryError, RecursionError) as e:
        raise DataError(
            f"{where}: corrupt .npy header: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    if dtype.hasobject:
        raise DataError(f"{where}: the array holds Python objects (a pickle); gatelens never unpickles data files")
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biuf":
        raise DataError(
            f"{where}: unsupported array dtype {dtype} ({_NPY_KINDS.get(dtype.kind, dtype.kind)}); expected numbers"
        )
    if not isinstance(shape, tuple) or any(not isinstance(d, int) or d < 0 for d in shape):
        raise DataError(f"{where}: corrupt .npy header: shape {shape!r}")
    rows = shape[0] if shape else 1
    if max_rows is not None and shape and not fortran and max_rows < rows:
        read_shape = (max_rows, *shape[1:])
    else:
        read_shape = shape
    count = 1
    for d in read_shape:
        count *= d
    nbytes = count * dtype.itemsize
    total = nominal = 1
    for d in shape:
        total *= d
        nominal *= max(d, 1)  # an empty array with huge other axes is refused too: NumPy cannot even shape it
    if nbytes > cap or nominal * dtype.itemsize > cap:
        nbytes = max(nbytes, nominal * dtype.itemsize)
        raise DataError(
            f"{where}: the array declares shape {shape} of {dtype} ({nbytes} bytes), more than the limit of {cap} bytes"
        )
    header_end = fp.tell()
    full = total * dtype.itemsize
    if available - header_end < full:
        raise DataError(
            f"{where}: truncated: the header declares shape {shape} of {dtype} ({full} bytes) "
            f"but only {max(available - header_end, 0)} bytes follow"
        )
    buf = bytearray(nbytes)
    view = memoryview(buf)
    got = 0
    while got < nbytes:
        n = fp.readinto(view[got:])
        if not n:
            break
        got += n
    if got < nbytes:
        raise DataError(f"{where}: truncated: expected {nbytes} bytes of data, found {got}")
    arr = np.frombuffer(buf, dtype=dtype, count=count).reshape(read_shape, order="F" if fortran else "C")
    return arr


def _read_npy_file(path: Path, cap: int, max_rows: int | None) -> tuple[np.ndarray, str]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            arr = _read_npy_stream(f, str(path), size, cap, max_rows)
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read: {e.strerror or e}") from None
    return arr, sha256_file(path)


def _read_npz_file(path: Path, cap: int, max_rows: int | None, keys: Sequence[str] = ("x",)) -> tuple[np.ndarray, str]:
    """The first of ``keys`` in the ``.npz`` at ``path`` (within ``cap`` bytes and the archive limits), and the file's
    sha256; every malformed archive one :class:`DataError`."""
    import lzma

    where = f"{path}"
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            names = [i.filename for i in infos]
            by_name = {i.filename: i for i in infos}
            key = next((k for k in keys if k + ".npy" in by_name or k in by_name), None)
            if key is None:
                held = [n[:-4] if n.endswith(".npy") else n for n in names]
                shown = ", ".join(repr(k) for k in held[:20]) + (", ..." if len(held) > 20 else "")
                wanted = " or ".join(repr(k) for k in keys)
                raise DataError(
                    f"{path}: no array {wanted} in the .npz; it holds {len(held)} key(s): {shown or 'none'}"
                )
            info = by_name.get(key + ".npy") or by_name[key]
            where = f"{path} ({key})"
            check_npz_member(
                where,
                info.file_size,
                info.compress_size,
                info.compress_type != zipfile.ZIP_STORED,
                ReadLimits.from_env(),
            )
            with zf.open(info) as member:
                arr = _read_npy_stream(member, where, info.file_size, cap, max_rows)
                member.read(1 << 16)  # reach the end of the member (if near) so that its CRC is checked
    except DataError:
        raise
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except (
        zipfile.BadZipFile,
        zlib.error,
        lzma.LZMAError,
        EOFError,
        OSError,
        ValueError,
        NotImplementedError,
        RuntimeError,
        KeyError,
    ) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{where}: not a readable .npz archive: {msg}") from None
    return arr, sha256_file(path)


def _array_dataset(arr: np.ndarray, spec: InputSpec, path: Path, kind: str, sha: str, max_rows: int | None) -> Dataset:
    if max_rows is not None and arr.ndim >= 1:
        arr = arr[:max_rows]
    x = check_array(arr, spec, where=str(path))
    n = x.shape[0]
    source = {"path": str(path), "kind": kind, "sha256": sha, "n_rows": int(n), "shape": list(x.shape)}
    tokens = x if spec.integer_tokens else None
    names = None if spec.is_text else [f"x{i}" for i in range(x.shape[2] if x.ndim == 3 else 1)]
    return Dataset(
        x=x,
        tokens=tokens,
        vocabulary=None if spec.vocabulary is None else list(spec.vocabulary),
        sequence=np.arange(n, dtype=np.int64),
        start=np.zeros(n, np.int64),
        source=source,
        feature_names=names,
    )


def check_array(arr: np.ndarray, spec: InputSpec, *, where: str = "input") -> np.ndarray:
    """Check an in-memory array against ``spec``; return it as float32, or int32 token ids.

    Parameters
    ----------
    arr : the data (N, T, F) or (N, T)
    spec : what the model takes
    where : the name used in error messages (a file name)

    Raises
    ------
    DataError
        Wrong rank, length or feature count, wrong kind (float for token ids or the reverse),
        ids outside the Embedding, NaN/inf, no sequences, zero-length sequences.

    Examples
    --------
    >>> check_array(np.array([[1, 2]]), InputSpec(n_steps=2, n_features=None, integer_tokens=True, input_dim=3))
    array([[1, 2]], dtype=int32)
    """
    arr = np.asarray(arr)
    shape = tuple(arr.shape)
    want = spec.input_shape
    if spec.string_input is not None:
        raise DataError(
            f"{where}: the model takes {spec.describe()} (it looks tokens up itself); give a .txt text file"
        )
    kind = arr.dtype.kind
    if kind not in "biuf":
        raise DataError(f"{where}: unsupported array dtype {arr.dtype}; expected {spec.describe()}")
    if spec.integer_tokens and kind == "f":
        raise DataError(
            f"{where}: float data of shape {shape}, but the model takes {spec.describe()} (it starts with an "
            f"Embedding); save token ids as integers"
        )
    if spec.integer_tokens and kind == "b":
        raise DataError(f"{where}: boolean data, but the model takes {spec.describe()}")
    if not spec.integer_tokens and kind in "iub" and arr.ndim == 2 and len(want) == 3:
        raise DataError(
            f"{where}: integer data of shape {shape} looks like token ids, but the model takes {spec.describe()} "
            f"(it has no Embedding)"
        )
    if arr.ndim != len(want):
        hint = ""
        if arr.ndim == len(want) - 1 and len(want) == 3 and shape and shape[-1] == (spec.n_features or shape[-1]):
            hint = "; for one sequence add a leading axis (x[None])"
        raise DataError(f"{where}: expected {len(want)} dimensions, {spec.describe()}, got shape {shape}{hint}")
    if shape[0] == 0:
        raise DataError(f"{where}: no sequences (shape {shape})")
    if shape[1] == 0:
        raise DataError(f"{where}: zero-length sequences (shape {shape}); expected {spec.describe()}")
    if spec.n_steps is not None and shape[1] != spec.n_steps:
        raise DataError(
            f"{where}: sequences of {shape[1]} steps, but the model takes {spec.n_steps} steps: "
            f"expected {spec.describe()}, got shape {shape}"
        )
    if arr.ndim == 3:
        if shape[2] == 0:
            raise DataError(f"{where}: zero features per step (shape {shape}); expected {spec.describe()}")
        if spec.n_features is not None and shape[2] != spec.n_features:
            raise DataError(
                f"{where}: {shape[2]} features per step, but the model takes {spec.n_features}: "
                f"expected {spec.describe()}, got shape {shape}"
            )
    if spec.integer_tokens:
        return _check_ids(arr, spec, where)
    with np.errstate(over="ignore", invalid="ignore"):
        x = arr.astype(np.float32)
    _check_finite(x, arr, where)
    return x


def _check_ids(arr: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    limits = []
    if spec.input_dim is not None:
        limits.append((spec.input_dim, f"the Embedding's input_dim {spec.input_dim}"))
    if spec.vocabulary is not None:
        limits.append((len(spec.vocabulary), f"the vocabulary of {len(spec.vocabulary)} tokens"))
    hi = min((v for v, _ in limits), default=np.iinfo(np.int32).max + 1)
    bad = (arr < 0) | (arr >= hi)
    if bad.any():
        flat = int(np.argmax(bad))
        i, t = np.unravel_index(flat, arr.shape)
        value = int(arr[i, t])
        why = next((w for v, w in sorted(limits) if value >= v), "int32") if value >= 0 else "ids are >= 0"
        raise DataError(
            f"{where}: {int(bad.sum())} token id(s) out of range 0..{hi - 1} ({why}), "
            f"first {value} at sequence {int(i)}, step {int(t)}"
        )
    return arr.astype(np.int32)


def _check_finite(x: np.ndarray, orig: np.ndarray, where: str, label=None) -> None:
    ok = np.isfinite(x)
    if ok.all():
        return
    bad = ~ok
    flat = int(np.argmax(bad))
    pos = np.unravel_index(flat, x.shape)
    v = orig[pos].item()
    what = f"{v!r}" if not np.isfinite(v) else f"{v!r} is too large for float32"
    if label is None:
        at = f"sequence {int(pos[0])}, step {int(pos[1])}" + (f", feature {int(pos[2])}" if x.ndim == 3 else "")
    else:
        at = label(pos)
    raise DataError(f"{where}: {int(bad.sum())} NaN/inf value(s), first at {at} ({what})")


# -- .csv ----------------------------------------------------------------------------------------------


def _load_csv(path, text, sha, spec: InputSpec, columns, window, stride, max_rows, cap, time_column=None) -> Dataset:
    """A CSV series as model inputs: its cells (:func:`_csv_cells`), the feature columns
    (:func:`_feature_columns`) as float32 (:func:`_feature_values`), grouped by the ``sequence`` column if there is
    one (:func:`_sequence_ids`) and cut into windows (:func:`_csv_windows`); the source records how each window maps
    back to the file's rows."""
    if spec.is_text:
        raise DataError(
            f"{path}: a CSV series, but the model takes {spec.describe()}; give a .txt text file "
            f"(or a .npy of integer token ids)"
        )
    names, rows, cols = _csv_cells(path, text)
    feats, ignored = _feature_columns(path, spec, names, rows, cols, columns)
    tcol = _time_column(path, cols, feats, names, time_column)
    if tcol is not None and tcol in ignored:
        ignored.remove(tcol)
    want_f = spec.n_features if len(spec.input_shape) == 3 else 1
    if want_f is not None and len(feats) != want_f:
        raise DataError(
            f"{path}: the model takes {want_f} feature(s) per step, but {len(feats)} column(s) were chosen: {feats}"
        )
    x32 = _feature_values(path, rows, cols, feats)
    seq_ids, seq_labels = _sequence_ids(path, rows, cols)
    has_seq = SEQUENCE_COLUMN in cols
    order = np.argsort(seq_ids, kind="stable")
    uniq, offsets, lengths = np.unique(seq_ids[order], return_index=True, return_counts=True)

    def name(k: int) -> str:  # of the k-th sequence, for a message
        if not has_seq:
            return "the series"
        return f"sequence {(seq_labels[int(uniq[k])] if seq_labels is not None else int(uniq[k]))!r}"

    w, s, n_win = _csv_windows(path, lengths, name, spec, window, stride)
    total = int(n_win.sum())
    total_kept = total if max_rows is None else min(total, int(max_rows))
    out_bytes = total_kept * w * len(feats) * 4
    if out_bytes > cap:
        raise DataError(
            f"{path}: {total_kept} windows of {w} steps x {len(feats)} features need {out_bytes} bytes, more than "
            f"the limit of {cap} bytes; use a larger --stride"
        )
    win_seq = np.repeat(np.arange(len(uniq)), n_win)[:total_kept]
    first_win = np.cumsum(n_win) - n_win
    local = (np.arange(total_kept) - first_win[win_seq]) * s
    # windows never cross sequences: each starts within its sequence and ends before the next one
    view = np.lib.stride_tricks.sliding_window_view(x32[order], w, axis=0)  # (L - w + 1, F, w), no copy
    x = view[offsets[win_seq] + local].transpose(0, 2, 1)  # (N, w, F)
    if len(spec.input_shape) == 2:
        x = x[:, :, 0]
    source: dict[str, Any] = {
        "path": str(path),
        "kind": "csv",
        "sha256": sha,
        "n_rows": int(total_kept),
        "n_records": int(rows.size),
        "columns": list(feats),
        "ignored_columns": ignored,
        "n_sequences_in_file": int(len(uniq)),
        "window": int(w),
        "stride": int(s),
        "dropped_tail_steps": int((lengths - ((n_win - 1) * s + w)).sum()),
    }
    if seq_labels is not None:
        source["sequence_labels"] = seq_labels
    if total_kept < total:
        source["n_rows_total"] = total
    # (window i, step t) -> the file row and time of record window_record_start[i] + t (records sorted by sequence)
    source["window_record_start"] = (offsets[win_seq] + local).astype(np.int64).tolist()
    source["record_rows"] = rows[order].tolist()
    if tcol is not None:
        source["time_column"] = tcol
        source["record_times"] = cols[tcol].cells.iloc[order].astype(str).tolist()
    return Dataset(
        x=np.ascontiguousarray(x, dtype=np.float32),
        tokens=None,
        vocabulary=None,
        sequence=uniq[win_seq].astype(np.int64),
        start=local.astype(np.int64),
        source=source,
        feature_names=list(feats),
    )


def _csv_cells(path: Path, text: str) -> tuple[list[str], np.ndarray, dict[str, _Column]]:
    """The CSV's column names (its header, or ``x0, x1, ...`` when the first row is all numbers), the file's row
    number of each data row (header = row 1, blank lines before it counted; blank rows left out) and each column's
    stripped cells, as text: nothing is parsed as a number yet."""
    import pandas as pd

    body = text.lstrip("\n")
    lead = len(text) - len(body)  # blank lines before the header
    if not body.strip():
        raise DataError(f"{path}: empty file")
    try:  # the C parser raises several types for malformed files; all mean "not a readable CSV"
        df = pd.read_csv(
            io.StringIO(body),
            header=None,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,
            index_col=False,
            engine="c",
        )
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = re.sub(r"line (\d+)", lambda m: f"line {int(m.group(1)) + lead}", msg)
        raise DataError(f"{path}: cannot be read as CSV: {msg}") from None
    df.columns = range(df.shape[1])
    header = [str(c).strip() for c in df.iloc[0]]
    if all(_is_number(h) for h in header):  # no header row: the first row is data
        names = [f"x{j}" for j in range(len(header))]
        first_row = 1 + lead
    else:
        names = header
        df = df.iloc[1:]
        first_row = 2 + lead
        dup = next((h for k, h in enumerate(names) if h in names[:k]), None)
        if dup is not None:
            raise DataError(f"{path}: column {dup!r} appears more than once in the header")
    rows = np.arange(df.shape[0], dtype=np.int64) + first_row  # row number in the file, header = row 1
    cols = {n: _Column(df[j].str.strip()) for j, n in enumerate(names)}
    del df
    if rows.size:
        blank = np.logical_and.reduce([c.empty for c in cols.values()])
        if blank.any():
            keep = np.flatnonzero(~blank)
            rows = rows[keep]
            cols = {n: _Column(c.cells.iloc[keep]) for n, c in cols.items()}
    if rows.size == 0:
        raise DataError(f"{path}: no data rows (only a header: {names})")
    return names, rows, cols


def _feature_columns(
    path: Path, spec: InputSpec, names: list[str], rows: np.ndarray, cols: dict[str, _Column], columns
) -> tuple[list[str], list[str]]:
    """The feature columns (``columns`` as given, checked; else the numeric ones, :func:`_choose_features`) and the
    columns left out as not numeric."""
    ignored: list[str] = []
    if columns:
        columns = [str(c) for c in columns]
        missing = [c for c in columns if c not in cols]
        if missing:
            raise DataError(f"{path}: no column(s) {missing}; the file has columns {names}")
        if SEQUENCE_COLUMN in columns:
            raise DataError(f"{path}: {SEQUENCE_COLUMN!r} holds sequence ids; it cannot be a feature column")
        dup = next((c for k, c in enumerate(columns) if c in columns[:k]), None)
        if dup is not None:
            raise DataError(f"{path}: column {dup!r} is chosen twice in --columns")
        return columns, ignored
    numeric = []
    why: dict[str, str] = {}  # columns that are not numeric, with their first text cell
    for n, c in cols.items():
        if n == SEQUENCE_COLUMN:
            continue
        filled = ~c.empty
        if filled.any() and c.ok[filled].mean() >= 0.5:
            numeric.append(n)
        else:
            ignored.append(n)
            text_cells = filled & ~c.ok
            if text_cells.any():
                r = int(np.argmax(text_cells))
                why[n] = f"{n!r} (row {rows[r]}: {_cell(c.cell(r))})"
            else:
                why[n] = f"{n!r} (empty)"
    return _choose_features(path, spec, numeric, ignored, names, why), ignored


def _feature_values(path: Path, rows: np.ndarray, cols: dict[str, _Column], feats: list[str]) -> np.ndarray:
    """The feature columns as float32 (records, features); the first empty, non-numeric or non-finite cell (or one
    too large for float32) is reported by its row and column."""
    values = np.empty((rows.size, len(feats)), np.float64)
    for k, n in enumerate(feats):
        c = cols[n]
        if c.empty.any():
            r = int(np.argmax(c.empty))
            raise DataError(f"{path}: row {rows[r]}, column {n!r}: empty cell, expected a number")
        bad = ~c.ok
        if bad.any():
            r = int(np.argmax(bad))
            raise DataError(f"{path}: row {rows[r]}, column {n!r}: expected a number, got {_cell(c.cell(r))}")
        values[:, k] = c.values
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = values.astype(np.float32)
    labels = np.asarray(feats, dtype=object)
    _check_finite(x32, values, str(path), label=lambda p: f"row {rows[p[0]]}, column {labels[p[1]]!r}")
    return x32


def _sequence_ids(path: Path, rows: np.ndarray, cols: dict[str, _Column]) -> tuple[np.ndarray, list[str] | None]:
    """Each record's sequence (int64) and the sequences' labels: the ``sequence`` column's integers as they are
    (labels None), other ids numbered in order of appearance (labels their text); one sequence without the column."""
    import pandas as pd

    if SEQUENCE_COLUMN not in cols:
        return np.zeros(rows.size, np.int64), None
    c = cols[SEQUENCE_COLUMN]
    if c.empty.any():
        r = int(np.argmax(c.empty))
        raise DataError(f"{path}: row {rows[r]}, column {SEQUENCE_COLUMN!r}: empty sequence id")
    seq_num = c.values
    if np.all(np.isfinite(seq_num)) and np.all(seq_num == np.round(seq_num)) and np.all(np.abs(seq_num) < 2**53):
        return seq_num.astype(np.int64), None
    codes, uniques = pd.factorize(c.cells, sort=False)
    return codes.astype(np.int64), [str(u) for u in uniques]


def _csv_windows(
    path: Path, lengths: np.ndarray, name: Callable[[int], str], spec: InputSpec, window, stride
) -> tuple[int, int, np.ndarray]:
    """``(window, stride, windows of each sequence)`` for sequences of ``lengths`` records: ``--window`` or the
    model's input length; a model of variable length takes each sequence whole (all of one length). ``name(k)``
    names the ``k``-th sequence in a message."""
    w = window or spec.n_steps
    if w is None:  # a model of variable length takes each sequence whole
        if stride is not None:
            raise DataError(f"{path}: --stride needs --window (the model takes sequences of any length)")
        if np.any(lengths != lengths[0]):
            k = int(np.argmax(lengths != lengths[0]))
            raise DataError(
                f"{path}: sequences have different lengths ({name(0)}: {int(lengths[0])} rows, "
                f"{name(k)}: {int(lengths[k])} rows); pass --window T to cut them into windows of T steps"
            )
        w = s = int(lengths[0])
    else:
        s = int(stride or w)
    short = lengths < w
    if short.any():
        k = int(np.argmax(short))
        need = "the model's input length" if window is None else "--window"
        raise DataError(f"{path}: {name(k)} has {int(lengths[k])} rows, fewer than one window of {w} steps ({need})")
    return int(w), s, (lengths - w) // s + 1


#: Column names taken for a date/time column when ``--time-column`` is not given.
TIME_COLUMNS = ("date", "datetime", "time", "timestamp")


def _time_column(path: Path, cols: dict, feats: list[str], names: list[str], given: str | None) -> str | None:
    """The CSV's date/time column: ``given``, else one named like :data:`TIME_COLUMNS`, else the first text
    column whose every cell pandas reads as a date; None when there is none."""
    import pandas as pd

    if given is not None:
        if given not in cols:
            raise DataError(f"{path}: --time-column {given!r}: no such column; the file has columns {names}")
        if given in feats or given == SEQUENCE_COLUMN:
            raise DataError(f"{path}: --time-column {given!r} is also a feature or the sequence column")
        empty = cols[given].empty
        if empty.any():
            raise DataError(f"{path}: row {int(np.argmax(empty)) + 2}, column {given!r}: empty time cell")
        return given
    candidates = [n for n in names if n not in feats and n != SEQUENCE_COLUMN]
    for n in candidates:
        if n.strip().lower() in TIME_COLUMNS and not cols[n].empty.any():
            return n
    for n in candidates:
        c = cols[n]
        if c.empty.any() or c.ok.mean() > 0:  # numbers (a year, a counter) are an index, not a date
            continue
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "could not infer format": then it is not a date column
            parsed = pd.to_datetime(c.cells.iloc[:1000], errors="coerce")
        if parsed.notna().all():
            return n
    return None


def window_table(data: Dataset) -> Any:
    """Where each (sequence, step) of ``data`` came from: a DataFrame with ``sequence``, ``step``,
    ``source_sequence``, ``source_row`` and ``time`` (when the file has a date/time column).

    ``source_row`` is the row of a CSV file (its header is row 1), the token index of a text, the step
    of an array row. This is what ``gatelens windows`` prints and what the ``sequences`` export holds.

    Examples
    --------
    >>> from gatelens._examples import example_file
    >>> p = example_file()  # date,v: 2024-01-01..03, 1..3
    >>> window_table(load_data(p, InputSpec(n_steps=2, n_features=1), stride=1))
       sequence  step  source_sequence  source_row        time
    0         0     0                0           2  2024-01-01
    1         0     1                0           3  2024-01-02
    2         1     0                0           3  2024-01-02
    3         1     1                0           4  2024-01-03
    """
    from gatelens.analysis.sources import window_frame

    return window_frame(data.source, data.sequence, data.start, data.n_steps)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


_NAN_WORDS = frozenset({"nan", "-nan", "+nan", "inf", "-inf", "+inf", "infinity", "-infinity", "+infinity"})


class _Column:
    """One CSV column: its stripped cells (a pandas str Series) and, computed once, their numbers."""

    def __init__(self, cells) -> None:
        self.cells = cells.reset_index(drop=True)

    @cached_property
    def empty(self) -> np.ndarray:
        return (self.cells == "").to_numpy(dtype=bool)

    @cached_property
    def values(self) -> np.ndarray:
        """float64 of each cell; NaN where a cell is empty or not a number."""
        import pandas as pd

        try:  # Arrow parses a whole column of numbers 10x faster than pandas; it fails on any text cell
            import pyarrow as pa
            import pyarrow.compute as pc

            a = pa.array(self.cells.array)
            a = pc.if_else(pc.equal(a, ""), pa.scalar(None, a.type), a)
            return np.asarray(pc.cast(a, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        except (ImportError, ValueError, TypeError, NotImplementedError):  # pa.ArrowInvalid is a ValueError
            pass
        v = pd.to_numeric(self.cells, errors="coerce")
        return np.asarray(v.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)

    @cached_property
    def ok(self) -> np.ndarray:
        """True where a cell is a number (NaN/inf spelled out count as numbers: they are reported later)."""
        nan = np.isnan(self.values)
        ok = ~nan
        idx = np.flatnonzero(nan & ~self.empty)
        if idx.size:
            ok[idx] = self.cells.iloc[idx].str.lower().isin(_NAN_WORDS).to_numpy(dtype=bool)
        return ok

    def cell(self, r: int) -> str:
        return str(self.cells.iloc[r])


def _cell(s: str, n: int = 30) -> str:
    r = repr(str(s))
    return r if len(r) <= n else r[: n - 4] + "...'"


def _choose_features(
    path: Path, spec: InputSpec, numeric: list[str], ignored: list[str], names: list[str], why: dict[str, str]
) -> list[str]:
    want = spec.n_features if len(spec.input_shape) == 3 else 1
    not_numeric = f"; not numeric: {', '.join(why.values())}" if why else ""
    if not numeric:
        hint = " (is it comma-separated?)" if len(names) == 1 and any(c in names[0] for c in ";\t|") else ""
        raise DataError(f"{path}: no numeric column{hint}; the file has columns {names}{not_numeric}")
    not_index = [n for n in numeric if n.strip().lower() not in INDEX_COLUMNS]
    if want is None:
        return not_index or numeric
    if len(numeric) == want:
        return numeric
    if len(not_index) == want:
        skipped = [n for n in numeric if n not in not_index]
        ignored.extend(skipped)
        log.info("%s: columns %s taken as an index, not as features", path, skipped)
        return not_index
    raise DataError(
        f"{path}: the model takes {want} feature(s) per step, but the file has {len(numeric)} numeric "
        f"column(s) {numeric}{not_numeric}; choose {want} with --columns"
    )


# -- .txt ----------------------------------------------------------------------------------------------


def _position(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {col}"


def _tokenize(text: str, spec: InputSpec, level: str) -> tuple[np.ndarray, Callable[[int], int], Any]:
    """Token ids (int32, -1 where not in the vocabulary), a function from token index to character offset,
    and the token strings (a list at word level; ``text`` itself at char level).
    """
    vocab = list(spec.vocabulary)
    if level == "char":
        cps = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # one code point per character
        single = sorted((ord(t), i) for i, t in enumerate(vocab) if len(t) == 1)
        if single:
            keys, vals = (np.array(v, dtype=np.int64) for v in zip(*single))
            pos = np.minimum(np.searchsorted(keys, cps), len(keys) - 1)
            ids = np.where(keys[pos] == cps, vals[pos], -1).astype(np.int32)
        else:
            ids = np.full(len(cps), -1, np.int32)
        return ids, int, text
    rx = re.compile(spec.pattern or WORD_PATTERN)
    drop_space = rx.pattern == WORD_PATTERN and not any(t and t.isspace() for t in vocab)
    strings = rx.findall(text)
    if drop_space:  # the vocabulary has no whitespace tokens: whitespace only separates words
        strings = [t for t in strings if not t.isspace()]
    index = {t: i for i, t in enumerate(vocab)}
    ids = np.fromiter(map(index.get, strings, itertools.repeat(-1)), dtype=np.int32, count=len(strings))

    def offset(k: int) -> int:  # only for error messages: scan again up to token k
        kept = (m for m in rx.finditer(text) if not (drop_space and m.group().isspace()))
        return next(itertools.islice(kept, k, None)).start()

    return ids, offset, strings


def _unknown_tokens(strings: Any, unknown: np.ndarray, n_tokens: int) -> dict[str, Any]:
    """The manifest's ``unknown_tokens``: count and the most frequent of the tokens not in the vocabulary."""
    from gatelens.models.strings import UnknownTokens

    idx = np.flatnonzero(unknown)
    bad = np.array([strings[k] for k in idx.tolist()], dtype=object)
    return UnknownTokens.count_tokens(bad, np.ones(len(bad), bool), n_tokens).to_dict()


def _load_txt(path, text, sha, spec: InputSpec, level, window, stride, max_rows, cap) -> Dataset:
    if not spec.is_text:
        raise DataError(f"{path}: a text file, but the model takes {spec.describe()}; give a .csv, .npy or .npz file")
    if spec.vocabulary is None:
        raise DataError(
            f"{path}: the model takes token ids but has no vocabulary; pass --vocab FILE "
            f"(a JSON list of tokens in id order)"
        )
    lvl = level or spec.level or "char"
    if spec.string_input == "text":
        cfg = spec.string_layer or {}
        tv_level = {"character": "char", "whitespace": "word"}.get(cfg.get("split"))
        if tv_level is None or cfg.get("ngrams"):
            raise DataError(
                f"{path}: the model's TextVectorization {cfg.get('name', '')!r} (split={cfg.get('split')!r}, "
                f"ngrams={cfg.get('ngrams')!r}) does not cut the text into one token per step; gatelens reads "
                f"split='character' or 'whitespace' without ngrams"
            )
        if level is not None and level != tv_level:
            raise DataError(
                f"{path}: --level {level} contradicts the model's TextVectorization split={cfg.get('split')!r}"
            )
        lvl = tv_level
    if not text:
        raise DataError(f"{path}: empty file")
    ids, offset_of, strings = _tokenize(text, spec, lvl)
    n = len(ids)
    if n == 0:
        raise DataError(f"{path}: no {lvl} tokens in the text (only whitespace)")
    unknown = ids < 0
    n_oov = int(unknown.sum())
    unknown_tokens = _unknown_tokens(strings, unknown, n)
    if n_oov:
        k = int(np.argmax(unknown))
        tok = strings[k]
        if spec.oov_id is None:
            raise DataError(
                f"{path}: {_position(text, offset_of(k))}: {lvl} token {tok!r} is not in the vocabulary "
                f"({len(spec.vocabulary)} tokens, no OOV token); {n_oov} token(s) in all are unknown"
            )
        ids[unknown] = spec.oov_id
    if spec.integer_tokens and spec.mask_zero:
        zero = ids == 0
        if zero.any():
            k = int(np.argmax(zero))
            tok = strings[k]
            raise DataError(
                f"{path}: {_position(text, offset_of(k))}: token {tok!r} has id 0, which the model's "
                f"Embedding(mask_zero=True) treats as padding"
            )
    if spec.input_dim is not None and spec.integer_tokens and len(spec.vocabulary) > spec.input_dim:
        raise DataError(
            f"{path}: the vocabulary has {len(spec.vocabulary)} tokens, but the model's Embedding takes ids "
            f"0..{spec.input_dim - 1}"
        )

    # windows
    w = window or spec.n_steps
    can_pad = spec.mask_zero or spec.string_input == "text"
    if w is None:
        if stride is not None:
            raise DataError(f"{path}: --stride needs --window (the model takes sequences of any length)")
        w = s = n
    else:
        s = int(stride or w)
    if n < w and not can_pad:
        raise DataError(
            f"{path}: the text has {n} {lvl} tokens, fewer than one window of {w} "
            f"({'--window' if window else 'the model input length'}); give at least {w} tokens"
        )
    n_full = (n - w) // s + 1 if n >= w else 0
    covered = (n_full - 1) * s + w if n_full else 0
    pad = 0
    if covered < n and can_pad:
        next_start = n_full * s
        pad = next_start + w - n
        n_win = n_full + 1
    else:
        n_win = n_full
    kept = n_win if max_rows is None else min(n_win, int(max_rows))
    if kept * w * 4 > cap:
        raise DataError(
            f"{path}: {kept} windows of {w} tokens need {kept * w * 4} bytes, more than the limit of {cap} bytes; "
            f"use a larger --stride"
        )
    ids_p = np.concatenate([ids, np.zeros(pad, np.int32)]) if pad else ids
    tokens = np.ascontiguousarray(window_series(ids_p, w, s)[:kept], dtype=np.int32)
    starts = np.arange(kept, dtype=np.int64) * s
    padded = int(max(0, starts[-1] + w - n)) if kept and pad and kept == n_win else 0
    source: dict[str, Any] = {
        "path": str(path),
        "kind": "txt",
        "sha256": sha,
        "n_rows": int(kept),
        "n_chars": len(text),
        "n_tokens": int(n),
        "level": lvl,
        "n_oov": n_oov,
        "unknown_tokens": unknown_tokens,
        "window": int(w),
        "stride": int(s),
        "padded_steps": padded,
        "dropped_tail_steps": int(n - covered) if not pad else 0,
    }
    if kept < n_win:
        source["n_rows_total"] = int(n_win)
    if spec.string_input is None:
        x = tokens
    else:
        tok_strings = np.array(list(text) if lvl == "char" else strings, dtype=object)
        if spec.string_input == "tokens":
            pad_token = spec.vocabulary[0]
            tok_p = np.concatenate([tok_strings, np.full(pad, pad_token, dtype=object)]) if pad else tok_strings
            x = np.ascontiguousarray(window_series(tok_p, w, s)[:kept])
        else:
            sep = "" if lvl == "char" else " "
            x = np.empty((kept, 1), dtype=object)
            x[:, 0] = [sep.join(tok_strings[a : min(a + w, n)]) for a in starts.tolist()]
            if len(spec.input_shape) == 1:
                x = x[:, 0]
    return Dataset(
        x=x,
        tokens=tokens,
        vocabulary=list(spec.vocabulary),
        sequence=np.zeros(kept, np.int64),
        start=starts,
        source=source,
        feature_names=None,
    )
