"""Where gatelens may write: an export folder is new, empty, or a previous export (unless told to add).

The run store has the same rule for ``extract --out`` (:func:`gatelens.analysis.store.check_output_path`).
Nothing that gatelens did not write is ever deleted or replaced without being asked.

Examples
--------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> check_export_dir(d / "new")
>>> _ = (d / "units.csv").write_text("layer,unit\\n")
>>> check_export_dir(d)
>>> _ = (d / "thesis.docx").write_bytes(b"mine")
>>> check_export_dir(d)
Traceback (most recent call last):
...
gatelens.errors.UsageError: ...: the folder holds 'thesis.docx', which is not part of a gatelens export; ...
>>> check_export_dir(d, add=True)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from gatelens.errors import UsageError

#: The table names an export writes (``<name>.csv``, ``<name>.parquet`` or a ``<name>/`` Parquet folder).
EXPORT_TABLES = frozenset(
    {
        "activations",
        "units",
        "sequences",
        "correlations",
        "probes",
        "clusters",
        "events",
        "event_summary",
        "decomposition",
        "token_gates",
        "half_lives",
        "retention",
        "manifest",
    }
)
_TEMP = re.compile(r"^\..+\.(tmp|partial)[-.].*")


def export_tables() -> frozenset[str]:
    """:data:`EXPORT_TABLES` and the CSV file of every registered analysis step (``ANALYSIS_FILES``).

    Examples
    --------
    >>> tables = export_tables()
    >>> {"activations", "units", "half_lives", "examples"} <= tables, "thesis" in tables
    (True, False)
    """
    from gatelens.analysis.export import ANALYSIS_FILES

    return EXPORT_TABLES | {f.partition(".")[0] for f in ANALYSIS_FILES}


def _export_entry(name: str, tables: frozenset[str]) -> bool:
    stem, _, suffix = name.partition(".")
    return bool(_TEMP.match(name)) or (stem in tables and suffix in ("", "csv", "parquet", "json"))


def check_export_dir(path: str | os.PathLike, *, add: bool = False) -> None:
    """Refuse an export folder that holds something other than a previous export.

    Parameters
    ----------
    path : the folder ``export --csv`` writes
    add : bool
        Write into a folder that holds other files too (``--add``); files with an export's names are replaced,
        nothing else is touched.

    Raises
    ------
    UsageError
        ``path`` is a file or a link, or a folder with other files (exit code 2); it is left as it is.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> check_export_dir(d / "new") is None, check_export_dir(d) is None     # a new folder, an empty one
    (True, True)
    >>> _ = (d / "half_lives.csv").write_text("layer,unit\\n")               # a previous export: replaced
    >>> check_export_dir(d) is None
    True
    >>> _ = (d / "notes.txt").write_text("mine")
    >>> check_export_dir(d / "notes.txt")
    Traceback (most recent call last):
    ...
    gatelens.errors.UsageError: ...notes.txt: exists and is not a folder (a file of yours?); ...
    >>> check_export_dir(d, add=True) is None                                # --add: beside the user's files
    True
    """
    path = Path(path)
    hint = "choose a new or empty folder, or pass --add to write the export beside them"
    if path.is_symlink():
        raise UsageError(f"{path}: is a link; choose a new or empty folder for the export")
    if not path.exists():
        return
    if not path.is_dir():
        raise UsageError(f"{path}: exists and is not a folder (a file of yours?); choose a new or empty folder")
    if add:
        return
    try:
        entries = sorted(os.listdir(path))
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror or e})") from None
    tables = export_tables()
    for name in entries:
        if not _export_entry(name, tables) or (path / name).is_symlink():
            raise UsageError(f"{path}: the folder holds {name!r}, which is not part of a gatelens export; {hint}")
