"""Bundled real data (a Python source corpus, yearly sunspot numbers, Mauna Loa CO2) and the helpers that cut it.

Nothing here imports TensorFlow. The files under ``data/`` are committed; :func:`build_corpus` and
:func:`build_series` rebuild them deterministically from their sources (CPython's standard library
and the statsmodels copies of NOAA's public-domain series; statsmodels is needed only to rebuild).

Text is tokenised with a :class:`Vocabulary` that travels next to a model as ``<stem>.vocab.json``:
id 0 is the padding token ``""`` (masked by the model's ``Embedding(mask_zero=True)``), id 1 is the
out-of-vocabulary token ``"[UNK]"``, then the tokens seen in training, most frequent first.

Examples
--------
>>> v = Vocabulary.from_text("abracadabra", level="char")
>>> v.tokens[:4]
['', '[UNK]', 'a', 'b']
>>> v.encode("abz").tolist(), v.decode([2, 3, 1])
([2, 3, 1], 'ab[UNK]')
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gatelens.analysis.store import sha256_file
from gatelens.data import DATA_DIR as _DATA_DIR
from gatelens.errors import DataError, UsageError

#: The bundled data folder (``data/`` in a checkout, ``gatelens/data`` installed) and the folder holding it,
#: against which the paths in model cards and manifests are written (``data/corpus/...``).
DATA_DIR = _DATA_DIR
REPO_ROOT = DATA_DIR.parent
CORPUS_PATH = DATA_DIR / "corpus" / "python_stdlib.txt"
SUNSPOTS_PATH = DATA_DIR / "series" / "sunspots_yearly.csv"
CO2_PATH = DATA_DIR / "series" / "co2_mauna_loa_monthly.csv"

#: CPython 3.11 standard-library modules concatenated (in this order) into the corpus.
CORPUS_MODULES = (
    "argparse.py",
    "calendar.py",
    "contextlib.py",
    "csv.py",
    "dataclasses.py",
    "fractions.py",
    "heapq.py",
    "shlex.py",
    "string.py",
    "textwrap.py",
)
DEFAULT_STDLIB = Path("/root/.pyenv/versions/3.11.7/lib/python3.11")

#: Provenance of the bundled files, recorded in the model cards of models trained on them.
SOURCES = {
    "data/corpus/python_stdlib.txt": {
        "origin": "CPython 3.11.7 standard library: " + ", ".join(CORPUS_MODULES) + " (concatenated in this order)",
        "licence": "PSF License Agreement for Python 3.11 (data/corpus/LICENSE-PSF.txt)",
    },
    "data/series/sunspots_yearly.csv": {
        "origin": "Yearly sunspot numbers 1700-2008, NOAA National Geophysical Data Center (via statsmodels.datasets)",
        "licence": "public domain",
    },
    "data/series/co2_mauna_loa_monthly.csv": {
        "origin": "Mauna Loa CO2, Keeling & Whorf (2004), CDIAC/ORNL, weekly flask values averaged per month "
        "(via statsmodels.datasets)",
        "licence": "public domain",
    },
}

PAD_TOKEN = ""
OOV_TOKEN = "[UNK]"
#: Word-level tokens: a run of word characters, a run of whitespace, or one other character.
#: Joining the tokens gives back the text exactly.
WORD_PATTERN = r"\w+|\s+|[^\w\s]"
LEVELS = ("char", "word")


def repo_relative(path: str | os.PathLike) -> str:
    """``path`` relative to the repository root when it lies inside it (POSIX form), else absolute."""
    p = Path(path).resolve()
    try:
        return p.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(p)


def resolve_data_path(path: str | os.PathLike) -> Path:
    """Inverse of :func:`repo_relative`: a relative path is taken from the repository root."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


# -- text ---------------------------------------------------------------------------------------


def tokenize(text: str, level: str = "char") -> list[str]:
    """Split ``text`` into tokens: characters, or words/whitespace runs/punctuation (:data:`WORD_PATTERN`).

    Examples
    --------
    >>> tokenize("if (x):", "word")
    ['if', ' ', '(', 'x', ')', ':']
    """
    if level == "char":
        return list(text)
    if level == "word":
        return re.findall(WORD_PATTERN, text)
    raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


@dataclass(frozen=True)
class Vocabulary:
    """Tokens in id order; id 0 is padding, id 1 the out-of-vocabulary token.

    Attributes
    ----------
    tokens : list of str
    level : {"char", "word"}
    """

    tokens: list[str]
    level: str = "char"

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")
        if self.tokens[:2] != [PAD_TOKEN, OOV_TOKEN]:
            raise ValueError(f"a vocabulary starts with {[PAD_TOKEN, OOV_TOKEN]!r}, got {self.tokens[:2]!r}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary tokens must be unique")

    @classmethod
    def from_text(
        cls, text: str, level: str = "char", *, max_tokens: int | None = None, min_count: int = 1
    ) -> Vocabulary:
        """Tokens of ``text`` seen at least ``min_count`` times, most frequent first (ties by token).

        ``max_tokens`` bounds the size including the padding and OOV tokens.
        """
        return cls.from_tokens(tokenize(text, level), level, max_tokens=max_tokens, min_count=min_count)

    @classmethod
    def from_tokens(
        cls, tokens: Sequence[str], level: str = "char", *, max_tokens: int | None = None, min_count: int = 1
    ) -> Vocabulary:
        """Like :meth:`from_text` for an already tokenised stream."""
        counts = Counter(tokens)
        counts.pop(PAD_TOKEN, None)
        counts.pop(OOV_TOKEN, None)
        ranked = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        if max_tokens is not None:
            ranked = ranked[: max(0, int(max_tokens) - 2)]
        return cls([PAD_TOKEN, OOV_TOKEN, *ranked], level)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def oov_id(self) -> int:
        return 1

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int32) of ``text``; unknown tokens map to the OOV id."""
        return self.ids(tokenize(text, self.level))

    def ids(self, tokens: Sequence[str]) -> np.ndarray:
        """Token ids (int32) of already tokenised ``tokens``."""
        index = {t: i for i, t in enumerate(self.tokens)}
        return np.fromiter((index.get(t, 1) for t in tokens), dtype=np.int32, count=len(tokens))

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Join the token strings of ``ids``."""
        return "".join(self.tokens[int(i)] for i in np.asarray(ids).ravel())

    def to_json(self) -> dict[str, Any]:
        """The side-car document: ``{"tokens", "level", "oov_token", "padding_token"[, "pattern"]}``."""
        doc: dict[str, Any] = {
            "tokens": list(self.tokens),
            "level": self.level,
            "oov_token": OOV_TOKEN,
            "padding_token": PAD_TOKEN,
        }
        if self.level == "word":
            doc["pattern"] = WORD_PATTERN
        return doc

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a side-car written by :meth:`to_json` (or a plain JSON list of tokens)."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read the vocabulary: {e}") from None
        if isinstance(doc, list):
            doc = {"tokens": doc}
        if not isinstance(doc, dict) or not isinstance(doc.get("tokens"), list):
            raise DataError(f"{path}: expected a JSON list of tokens or an object with a 'tokens' list")
        try:
            return cls([str(t) for t in doc["tokens"]], doc.get("level", "char"))
        except ValueError as e:
            raise DataError(f"{path}: {e}") from None


def read_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file, with a clear error for a missing or undecodable file."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such text file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def split_bounds(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """End of train and end of validation for a contiguous train | validation | test split of ``n`` items.

    Examples
    --------
    >>> split_bounds(100, 0.1, 0.2)
    (70, 80)
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < f < 1.0:
            raise DataError(f"{name} must be in (0, 1), got {f!r}")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    test_start = n - round(n * test_fraction)
    val_start = test_start - round(n * val_fraction)
    return val_start, test_start


def text_windows(ids: np.ndarray, window: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cut a token stream into next-token pairs: ``x[k] = ids[s:s+T]``, ``y[k] = ids[s+1:s+T+1]``.

    Windows start every ``stride`` tokens (default ``window``); a tail shorter than a window is dropped.

    Examples
    --------
    >>> x, y = text_windows(np.arange(10), 4)
    >>> x.tolist(), y.tolist()
    ([[0, 1, 2, 3], [4, 5, 6, 7]], [[1, 2, 3, 4], [5, 6, 7, 8]])
    """
    ids = np.asarray(ids)
    stride = int(stride or window)
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window} and {stride}")
    n = (len(ids) - window - 1) // stride + 1 if len(ids) > window else 0
    if n <= 0:
        return np.zeros((0, window), ids.dtype), np.zeros((0, window), ids.dtype)
    starts = np.arange(n) * stride
    idx = starts[:, None] + np.arange(window)[None, :]
    return ids[idx], ids[idx + 1]


# -- time series ----------------------------------------------------------------------------------


def read_series_csv(path: str | os.PathLike, columns: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Numeric columns of a CSV as a float64 array (L, F) and their names.

    Without ``columns``, every numeric column is used except an index-like first column
    named ``year``, ``date``, ``time`` or ``month``. Missing or non-numeric cells raise
    :class:`models.DataError` naming the file, row and column.
    """
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such CSV file") from None
    except Exception as e:  # pandas raises several types for malformed files
        raise DataError(f"{path}: cannot be read as CSV: {str(e).splitlines()[0]}") from None
    if columns:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(f"{path}: no column(s) {missing}; the file has {list(df.columns)}")
        names = list(columns)
    else:
        names = [
            c
            for c in df.columns
            if pd.api.types.is_numeric_dtype(df[c]) and str(c).lower() not in ("year", "date", "time", "month")
        ]
        if not names:
            raise DataError(f"{path}: no numeric column; the file has {list(df.columns)}")
    out = np.empty((len(df), len(names)), np.float64)
    for j, c in enumerate(names):
        col = pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)
        bad = np.flatnonzero(~np.isfinite(col))
        if bad.size:
            r = int(bad[0])
            raise DataError(
                f"{path}: line {r + 2} (data row {r + 1}), column {c!r}: expected a number, got {df[c].iloc[r]!r}"
            )
        out[:, j] = col
    return out, names


def series_windows(
    values: np.ndarray, target: np.ndarray, window: int, *, horizon: int = 1, mode: str = "one"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sliding windows (stride 1) of a multivariate series and their forecast targets.

    Parameters
    ----------
    values : (L, F) inputs
    target : (L,) the forecast series
    window : T
    horizon : steps ahead
    mode : ``"one"``: y[k] = target[k + T - 1 + horizon] (sequence-to-one);
        ``"sequence"``: y[k, t] = target[k + t + horizon] (sequence-to-sequence).

    Returns
    -------
    x : (N, T, F), y : (N,) or (N, T), last : (N,) index of the last forecast target of each window

    Examples
    --------
    >>> s = np.arange(6.0)
    >>> x, y, last = series_windows(s[:, None], s, 3)
    >>> x[:, :, 0].tolist(), y.tolist(), last.tolist()
    ([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]], [3.0, 4.0, 5.0], [3, 4, 5])
    """
    if mode not in ("one", "sequence"):
        raise ValueError(f"mode must be 'one' or 'sequence', got {mode!r}")
    n = len(values) - window - horizon + 1
    if n <= 0:
        raise DataError(f"a series of {len(values)} steps is too short for window {window} and horizon {horizon}")
    idx = np.arange(n)[:, None] + np.arange(window)[None, :]
    x = values[idx]
    if mode == "one":
        y = target[idx[:, -1] + horizon]
    else:
        y = target[idx + horizon]
    return x, y, idx[:, -1] + horizon


# -- rebuilding the bundled files (development time) ------------------------------------------------


def build_corpus(out: str | os.PathLike = CORPUS_PATH, stdlib: str | os.PathLike = DEFAULT_STDLIB) -> dict[str, Any]:
    """Concatenate :data:`CORPUS_MODULES` from a CPython standard library into ``out``.

    Returns a description (files, sizes, sha256) that the corpus README records.
    """
    from gatelens.analysis.store import atomic_write_bytes

    stdlib = Path(stdlib)
    parts, files = [], []
    for name in CORPUS_MODULES:
        data = (stdlib / name).read_bytes()
        if not data.endswith(b"\n"):
            data += b"\n"
        parts.append(data)
        files.append({"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    blob = b"".join(parts)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, blob)
    lic = stdlib / "LICENSE.txt"
    if lic.is_file():
        atomic_write_bytes(out.parent / "LICENSE-PSF.txt", lic.read_bytes())
    return {"source": str(stdlib), "files": files, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def build_series(out_dir: str | os.PathLike = DATA_DIR / "series") -> dict[str, str]:
    """Write the sunspot and CO2 CSVs from statsmodels' bundled copies (needs statsmodels; dev time only).

    CO2: weekly Mauna Loa values averaged per calendar month over the weeks present; months
    without any measurement are dropped.
    """
    try:
        from statsmodels.datasets import co2, sunspots
    except ImportError:
        raise UsageError(
            "rebuilding the series CSVs needs statsmodels (pip install statsmodels); gatelens itself reads the "
            f"committed copies in {DATA_DIR / 'series'}"
        ) from None

    from gatelens.analysis.store import atomic_write_bytes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = sunspots.load_pandas().data
    lines = ["year,sunspots"] + [f"{int(y)},{v:g}" for y, v in zip(s["YEAR"], s["SUNACTIVITY"])]
    atomic_write_bytes(out_dir / SUNSPOTS_PATH.name, ("\n".join(lines) + "\n").encode())
    c = co2.load_pandas().data["co2"].dropna()
    monthly = c.groupby([c.index.year, c.index.month]).mean()
    lines = ["month,co2_ppm"] + [f"{y:04d}-{m:02d},{v:.2f}" for (y, m), v in monthly.items()]
    atomic_write_bytes(out_dir / CO2_PATH.name, ("\n".join(lines) + "\n").encode())
    return {p.name: sha256_file(p) for p in (out_dir / SUNSPOTS_PATH.name, out_dir / CO2_PATH.name)}


if __name__ == "__main__":  # pragma: no cover - development helper: python -m gatelens.models.zoo.datasets
    import sys

    what = sys.argv[1:] or ["corpus", "series"]
    if "corpus" in what:
        sys.stdout.write(json.dumps(build_corpus(), indent=2) + "\n")
    if "series" in what:
        sys.stdout.write(json.dumps(build_series(), indent=2) + "\n")
