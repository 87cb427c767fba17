"""The Export page's work: each table as soon as it is ready, with choices, written to disk and streamed from there.

The tables and their files are those of ``gatelens export RUN --out DIR`` (:func:`gatelens.analysis.export.export_table`,
one table of :func:`gatelens.analysis.export.export_run`): the same selection of layers, signals and
sequences, CSV or Parquet. Each file is written into the session's own folder (removed when the session
ends, :mod:`gatelens.dashboards.sessions`), under a folder named by the selection, and never held in memory.

Serving it: Streamlit's ``st.download_button`` (1.67) reads the whole file into the server's memory (its
media file storage keeps the bytes; even its deferred ``data=callable`` form converts the result to
bytes), so a 3.7 GB ``activations.csv`` would cost 3.7 GB of RAM. ``gatelens dashboard`` therefore
serves the app through ``st.App`` (:mod:`gatelens.dashboards.asgi`) with one extra route,
:data:`DOWNLOAD_ROUTE`, which streams a registered file from disk (Starlette's ``FileResponse``, 64 kB
at a time). A file is reachable only through an unguessable token (:func:`register`), given to the
session that wrote it and dropped with that session's folder. Under a plain ``streamlit run
dashboards/app.py`` (no route), files up to :data:`FALLBACK_MAX_BYTES` go through ``st.download_button``
(read from disk when clicked) and larger ones are refused with a pointer to ``gatelens dashboard``.

Parquet ``activations`` is a folder (hive-partitioned by layer); it is offered as one zip of that folder,
written to disk uncompressed (Parquet is compressed already).

Examples
--------
>>> Selection().key == Selection(layers=None).key, Selection(format="parquet").key == Selection().key
(True, False)
>>> download_name("activations", "parquet"), download_name("units", "csv")
('activations-parquet.zip', 'units.csv')
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: URL path of the streaming download route (``/<route>/<token>``).
DOWNLOAD_ROUTE = "/gatelens/download"
#: Largest file handed to ``st.download_button`` (in memory) when the streaming route is not served.
FALLBACK_MAX_BYTES = 200 * 1024**2
#: Tables written on demand (a button), not at once: they grow with sequences x steps x units.
LARGE_TABLES = frozenset({"activations", "events"})
FORMATS = ("csv", "parquet")


@dataclass(frozen=True)
class Selection:
    """What to export: layers and signals (None: all), sequences ``[first, stop)`` (None: all), the format.

    Examples
    --------
    >>> sel = Selection(layers=("lstm",), signals=("forget_gate",), sequences=(0, 10), format="parquet")
    >>> sel.sequence_range, Selection().sequence_range
    (range(0, 10), None)
    >>> len(sel.key), sel.key == Selection(("lstm",), ("forget_gate",), (0, 10), "parquet").key   # its folder
    (16, True)
    """

    layers: tuple[str, ...] | None = None
    signals: tuple[str, ...] | None = None
    sequences: tuple[int, int] | None = None
    format: str = "csv"

    @property
    def key(self) -> str:
        """Content hash of the selection: the name of its folder."""
        text = json.dumps([self.layers, self.signals, self.sequences, self.format])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def sequence_range(self) -> range | None:
        return None if self.sequences is None else range(*self.sequences)


def download_name(table: str, format: str) -> str:
    """The file name a table downloads under."""
    if table == "activations" and format == "parquet":
        return "activations-parquet.zip"
    return f"{table}.{'csv' if format == 'csv' else 'parquet'}"


def mime_type(name: str) -> str:
    return {".csv": "text/csv", ".zip": "application/zip", ".json": "application/json"}.get(
        Path(name).suffix, "application/octet-stream"
    )


#: Analysis tables each export table is made from, besides its own (``units`` joins the statistics, the
#: half-lives and the clusters); ``activations`` and ``sequences`` come from the trace alone.
TABLE_SOURCES = {"activations": (), "sequences": (), "units": ("signal_stats", "units", "half_lives", "clusters")}


def table_steps(table: str) -> list[str]:
    """The analysis steps an export table waits for.

    Examples
    --------
    >>> table_steps("activations"), table_steps("units"), table_steps("probes")
    ([], ['stats', 'memory', 'clusters'], ['probes'])
    """
    from gatelens.analysis.pipeline import step_of_table

    sources = TABLE_SOURCES.get(table, (table,))
    return list(dict.fromkeys(step_of_table(t) for t in sources))


def table_status(analysis: Any, ready: Callable[[str], bool] | None = None) -> dict[str, bool]:
    """``{table: ready}`` for every table of the export, in the export's order.

    A table is ready when the analysis holds it (``gatelens.analysis.export.export_tables``) and every step it
    waits for (:func:`table_steps`) is done: ``ready(step)`` (e.g. :meth:`gatelens.dashboards.stages.Live.ready`;
    default every step).

    Examples
    --------
    >>> from gatelens.analysis.pipeline import Analysis
    >>> status = table_status(Analysis(), ready=lambda step: step != "probes")
    >>> status["activations"], status["correlations"], status["probes"]
    (True, True, False)
    """
    from gatelens.analysis.export import ANALYSIS_FILES, export_tables

    there = set(export_tables(analysis))
    names = list(dict.fromkeys(["activations", "sequences", "units", *ANALYSIS_FILES.values()]))
    return {n: n in there and all(ready is None or ready(s) for s in table_steps(n)) for n in names}


def _zip_folder(folder: Path, path: Path) -> Path:
    """Zip a folder (stored, no compression) to ``path``, atomically, reading and writing in blocks."""
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    zf.write(f, arcname=str(Path(folder.name) / f.relative_to(folder)))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_table(
    trace: Any,
    analysis: Any,
    table: str,
    selection: Selection,
    folder: str | os.PathLike,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write one table of the export for ``selection`` under ``folder/<selection.key>/``; return the file to serve.

    Written once: a file already there (each is renamed into place only when complete) is returned as is.

    Examples
    --------
    >>> import tempfile
    >>> from gatelens.analysis.store import open_run
    >>> from gatelens._examples import tiny_run
    >>> from gatelens.analysis.export import read_csv
    >>> trace = open_run(tiny_run(n=4))
    >>> p = write_table(trace, None, "activations", Selection(sequences=(1, 3), signals=("hidden_state",)),
    ...                 tempfile.mkdtemp())
    >>> df = read_csv(p)
    >>> p.name, sorted(df["sequence"].unique().tolist()), list(df.columns)[4:]
    ('activations.csv', [1, 2], ['hidden_state'])
    """
    from gatelens.analysis.export import export_table

    out = Path(folder) / selection.key
    final = out / download_name(table, selection.format)
    if final.is_file():
        return final
    written = export_table(
        trace,
        table,
        out,
        format=selection.format,
        analysis=analysis,
        layers=list(selection.layers) if selection.layers is not None else None,
        signals=list(selection.signals) if selection.signals is not None else None,
        sequences=selection.sequence_range,
        progress=progress,
    )
    if written.is_dir():  # Parquet activations: one folder per layer
        return _zip_folder(written, final)
    return written


# ----------------------------------------------------------------------------------------------------------------
# the streaming route: token -> file


_files: dict[str, Path] = {}
_files_lock = threading.Lock()
_route_served = False


def register(path: str | os.PathLike) -> str:
    """A new unguessable token for ``path`` (the download link's last part).

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = p.write_text("a\\n1\\n")
    >>> token = register(p)
    >>> resolve(token) == p, resolve("nope")
    (True, None)
    """
    token = secrets.token_urlsafe(32)
    with _files_lock:
        _files[token] = Path(path)
    return token


def resolve(token: str) -> Path | None:
    """The registered file of ``token`` if it still exists (its session's folder may be gone)."""
    with _files_lock:
        path = _files.get(token)
        if path is not None and not path.is_file():
            del _files[token]
            path = None
    return path


def forget(paths_under: Sequence[str | os.PathLike]) -> int:
    """Drop the tokens of files under these folders (a session that ended); returns how many."""
    roots = [Path(p) for p in paths_under]
    with _files_lock:
        dead = [t for t, p in _files.items() if any(p.is_relative_to(r) for r in roots)]
        for t in dead:
            del _files[t]
    return len(dead)


def route_served() -> bool:
    """True when this server process serves :data:`DOWNLOAD_ROUTE` (started through ``gatelens dashboard``)."""
    return _route_served


def mark_route_served(served: bool = True) -> None:
    """Called by :mod:`gatelens.dashboards.asgi` when its app starts (and stops) serving the route."""
    global _route_served
    _route_served = bool(served)


async def download_endpoint(request: Any) -> Any:
    """The Starlette endpoint of :data:`DOWNLOAD_ROUTE`: the registered file, streamed from disk; else 404.

    Examples
    --------
    >>> import asyncio, tempfile
    >>> from types import SimpleNamespace
    >>> p = Path(tempfile.mkdtemp()) / "units.csv"
    >>> _ = p.write_text("layer,unit\\n")
    >>> def get(token):                                   # a request as Starlette routes it: only the token is read
    ...     return asyncio.run(download_endpoint(SimpleNamespace(path_params={"token": token})))
    >>> r = get(register(p))
    >>> type(r).__name__, r.status_code, r.media_type, r.headers["content-disposition"]
    ('FileResponse', 200, 'text/csv', 'attachment; filename="units.csv"')
    >>> get("no-such-token").status_code
    404
    """
    from starlette.responses import FileResponse, PlainTextResponse

    path = resolve(str(request.path_params.get("token", "")))
    if path is None:
        return PlainTextResponse("no such download (it may have expired with its session)", status_code=404)
    return FileResponse(path, filename=path.name, media_type=mime_type(path.name))


def download_url(token: str, base_url_path: str = "") -> str:
    """The relative URL of a registered download.

    Examples
    --------
    >>> download_url("abc"), download_url("abc", "/lens/")
    ('/gatelens/download/abc', '/lens/gatelens/download/abc')
    """
    base = "/" + base_url_path.strip("/") if base_url_path.strip("/") else ""
    return f"{base}{DOWNLOAD_ROUTE}/{token}"


__all__ = [
    "DOWNLOAD_ROUTE",
    "FALLBACK_MAX_BYTES",
    "FORMATS",
    "LARGE_TABLES",
    "Selection",
    "download_endpoint",
    "download_name",
    "download_url",
    "register",
    "resolve",
    "route_served",
    "table_status",
    "write_table",
]
