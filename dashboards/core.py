"""The dashboard's work -- load, extract, analyse, export -- as the same library calls the CLI makes.

No Streamlit here: :mod:`gatelens.dashboards.state` runs these functions in background jobs and caches their
results by content hash. The steps mirror ``gatelens extract``, ``analyze`` and ``export``:

1. :func:`load_model_bundle`: :func:`gatelens.models.loading.load_model_with_report` (the safe loader: the
   user's file is validated and read in an isolated worker, never given to Keras directly), the
   vocabulary (:func:`gatelens.models.spec.read_vocabulary`, or the zoo side-car), :func:`gatelens.models.spec.input_spec`
   and a compiled :class:`gatelens.models.extract.Extractor` (reused for every input of the model).
2. :func:`load_data_bundle`: :func:`gatelens.models.data.load_data`, then the chosen slice of sequences.
3. :func:`run_analysis`: :func:`gatelens.models.extract.write_run` (every signal, verified against Keras, into a
   run directory with its manifest), the user's features (:func:`gatelens.analysis.features.load_user_features`)
   and :func:`gatelens.analysis.pipeline.analyze`.
4. :func:`export_zip`: :func:`gatelens.analysis.export.export_csvs` and the run's ``manifest.json`` in one zip.

Uploaded files are identified by their content (sha256) and shown by the name the user gave; that
name is never used as a path (see :mod:`gatelens.dashboards.state`). Error messages from the library name the
file by its path on the server; :func:`named_files` puts the user's file name in its place.

Examples
--------
>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "data.npy"
>>> _ = p.write_bytes(b"abc")
>>> ref = FileRef.of(p, name="my data.npy")
>>> ref.sha256[:8], ref.name
('ba7816bf', 'my data.npy')
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gatelens.analysis import signals as registry
from gatelens.analysis.pipeline import STEPS
from gatelens.analysis.store import MANIFEST, run_manifest, sha256_file
from gatelens.analysis.trace import LayerTrace, Trace, token_text
from gatelens.dashboards.tempdirs import owned_tempdir

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
StageProgress = Callable[[str], Progress]

#: Largest trace (bytes of all signals) copied into memory for fast pages; larger ones stay lazy (Zarr).
IN_MEMORY_BYTES = 512 * 1024**2
#: Extraction batch size.
BATCH_SIZE = 64


def _no_progress(stage: str) -> Progress:
    return lambda done, total: None


# ----------------------------------------------------------------------------------------------------------------
# what the user chose


@dataclass(frozen=True)
class FileRef:
    """A file the dashboard reads: its path on the server, its sha256, and the name to show.

    ``name`` is the user's file name (or the demo file's name): display text only, never a path.
    """

    path: Path
    sha256: str
    name: str

    @classmethod
    def of(cls, path: str | Path, *, name: str | None = None, sha256: str | None = None) -> FileRef:
        """A reference to ``path`` (hashing it unless ``sha256`` is given)."""
        p = Path(path)
        return cls(path=p, sha256=sha256 or sha256_file(p), name=name or p.name)


def _digest(*parts: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class ModelChoice:
    """A model (a demo or an upload) and its vocabulary file, if any."""

    model: FileRef
    vocabulary: FileRef | None = None
    demo: str | None = None

    @property
    def key(self) -> str:
        """Content hash of the model and the vocabulary: the cache key of the loaded model."""
        return _digest("model", self.model.sha256, self.vocabulary.sha256 if self.vocabulary else None)


@dataclass(frozen=True)
class DataChoice:
    """A data file, the options that cut it into sequences, the slice analysed and a features file."""

    data: FileRef
    features: FileRef | None = None
    window: int | None = None
    stride: int | None = None
    columns: tuple[str, ...] | None = None
    level: str | None = None
    first: int = 0
    count: int | None = None
    demo: bool = False

    @property
    def load_key(self) -> str:
        """Content hash of the data file and the options that read it (not the slice, not the features)."""
        return _digest("data", self.data.sha256, self.window, self.stride, self.columns, self.level)

    @property
    def key(self) -> str:
        """Content hash of everything that determines the analysed input."""
        return _digest(self.load_key, self.first, self.count, self.features.sha256 if self.features else None)


def run_key(model: ModelChoice, data: DataChoice) -> str:
    """Cache key of a run: model + data + options.

    Examples
    --------
    >>> m = ModelChoice(FileRef(Path("m.keras"), "aa", "m.keras"))
    >>> d = DataChoice(FileRef(Path("d.npy"), "bb", "d.npy"), count=4)
    >>> run_key(m, d) == run_key(m, replace(d, count=4)), run_key(m, d) == run_key(m, replace(d, count=5))
    (True, False)
    """
    return _digest("run", model.key, data.key, BATCH_SIZE)


@contextmanager
def named_files(*refs: FileRef | None) -> Iterator[None]:
    """Replace server paths by the user's file names in the message of an error raised inside.

    Examples
    --------
    >>> ref = FileRef(Path("/tmp/session/data-1.csv"), "x", "sales.csv")
    >>> try:
    ...     with named_files(ref):
    ...         raise ValueError("/tmp/session/data-1.csv: row 3: not a number")
    ... except ValueError as e:
    ...     print(e)
    sales.csv: row 3: not a number
    """
    try:
        yield
    except Exception as e:
        if e.args and isinstance(e.args[0], str):
            msg = e.args[0]
            for ref in refs:
                if ref is not None:
                    msg = msg.replace(str(ref.path), ref.name)
            e.args = (msg, *e.args[1:])
        raise


# ----------------------------------------------------------------------------------------------------------------
# errors the user can fix


def is_user_error(e: BaseException) -> bool:
    """True when ``e`` is shown as a message, never as a traceback: a user error
    (:func:`gatelens.errors.is_user_error`, the same test as the CLI's exit 2/3) or a failed verification.

    Examples
    --------
    >>> from gatelens.errors import DataError, VerificationError
    >>> is_user_error(DataError("x.csv: row 3")), is_user_error(VerificationError("h differs")), is_user_error(KeyError())
    (True, True, False)
    """
    from gatelens.errors import VerificationError
    from gatelens.errors import is_user_error as user_error

    return user_error(e) or isinstance(e, VerificationError)


#: Command-line flags named in library messages -> the dashboard control that does the same.
CONTROL_FOR_FLAG = {
    "pass --vocab FILE": "upload its vocabulary on the Data page (a JSON list of tokens)",
    "leave --vocab out": "remove the vocabulary upload on the Data page",
    "--vocab FILE": "the Data page's vocabulary upload",
    "--features": "the Data page's features upload",
    "--window": "the Data page's window field",
    "--stride": "the Data page's stride field",
    "--columns": "the Data page's column choice",
    "--level": "the Data page's text level",
}


def dashboard_message(e: BaseException) -> str:
    """A user error's message with command-line flags replaced by the dashboard controls that do the same.

    Examples
    --------
    >>> from gatelens.errors import DataError
    >>> dashboard_message(DataError("x.txt: the model has no vocabulary; pass --vocab FILE (a JSON list)"))
    'x.txt: the model has no vocabulary; upload its vocabulary on the Data page (a JSON list of tokens) (a JSON list)'
    """
    text = str(e)
    for flag, control in CONTROL_FOR_FLAG.items():  # longest phrases first (dict order above)
        text = text.replace(flag, control)
    return text


def error_title(e: BaseException) -> str:
    """A short heading for a user error.

    Examples
    --------
    >>> from gatelens.errors import UnsafeModelError
    >>> error_title(UnsafeModelError("m.keras: Lambda layer"))
    'The model was refused as unsafe'
    """
    names = {
        "UnsafeModelError": "The model was refused as unsafe",
        "ModelFormatError": "The file is not a readable Keras model",
        "UnsupportedLayerError": "The model has no layer gatelens can re-run",
        "DataError": "The data does not fit the model",
        "FeatureError": "The features file is not valid",
        "VerificationError": "Verification failed",
        "RunStoreError": "The run store is not valid",
    }
    for cls in type(e).__mro__:
        if cls.__name__ in names:
            return names[cls.__name__]
    return "Input error"


# ----------------------------------------------------------------------------------------------------------------
# the model


@dataclass
class ModelBundle:
    """A loaded model and what the pages show about it (read-only once built)."""

    choice: ModelChoice
    model: Any
    spec: Any  # gatelens.models.spec.InputSpec
    vocabulary: list[str] | None
    extractor: Any  # gatelens.models.extract.Extractor, compiled once per model
    architecture: pd.DataFrame
    recurrent: pd.DataFrame
    params: int
    load_seconds: float
    load_path: str  # how the safe loader read it ("keras_weights", "keras_trial", "h5")
    # the What-if page's interventions run one at a time per model (extraction needs no lock)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def needs_vocabulary(self) -> bool:
        """A text model (token ids) without a vocabulary: tokens cannot be shown or read from text."""
        return bool(self.spec.integer_tokens and self.spec.vocabulary is None)

    @property
    def is_text(self) -> bool:
        return bool(self.spec.is_text)


def _flat_layers(model: Any, prefix: str = "") -> list[tuple[str, Any]]:
    import keras

    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(_flat_layers(layer, prefix + layer.name + "/"))
        else:
            out.append((prefix + layer.name, layer))
    return out


def _shape(layer: Any) -> str:
    try:
        out = layer.output
    except Exception:  # a layer used more than once or never called has no single output
        return ""
    outs = out if isinstance(out, (list, tuple)) else [out]
    return ", ".join(str(tuple(o.shape)) for o in outs if hasattr(o, "shape"))


def architecture_table(model: Any) -> pd.DataFrame:
    """One row per layer (nested models expanded): ``layer, class, output_shape, parameters``."""
    rows = [
        {
            "layer": name,
            "class": type(layer).__name__,
            "output_shape": _shape(layer),
            "parameters": layer.count_params(),
        }
        for name, layer in _flat_layers(model)
    ]
    return pd.DataFrame(rows, columns=["layer", "class", "output_shape", "parameters"])


def recurrent_table(extractor: Any) -> pd.DataFrame:
    """One row per recurrent layer (direction) the extractor re-runs, with its cell's settings."""
    rows = []
    for d in extractor.directions:
        info = d.info
        rows.append(
            {
                "layer": info.name,
                "keras_class": info.keras_class,
                "cell": info.cell_type,
                "units": info.units,
                "input_dim": info.input_dim,
                "activation": info.activation,
                "recurrent_activation": info.recurrent_activation or "",
                "direction": "backward" if info.go_backwards else "forward",
                "return_sequences": info.return_sequences,
            }
        )
    return pd.DataFrame(rows)


def load_model_bundle(choice: ModelChoice, stage: StageProgress = _no_progress) -> ModelBundle:
    """Load a model safely, read its vocabulary and input, and compile its extractor."""
    from gatelens.models.extract import Extractor
    from gatelens.models.loading import load_model_with_report
    from gatelens.models.spec import input_spec, read_vocabulary

    progress = stage("Loading the model safely (validated, read in an isolated worker)")
    progress(0, 3)
    with named_files(choice.model, choice.vocabulary):
        model, report = load_model_with_report(choice.model.path, display_name=choice.model.name)
        progress(1, 3)
        vocab = read_vocabulary(choice.vocabulary.path) if choice.vocabulary is not None else None
        spec = input_spec(model, vocabulary=vocab)
        # The CLI's settings (compile="auto", the same rule on the same input): its numbers are `gatelens extract`'s.
        extractor = Extractor(model)
    progress(2, 3)
    bundle = ModelBundle(
        choice=choice,
        model=model,
        spec=spec,
        vocabulary=None if spec.vocabulary is None else list(spec.vocabulary),
        extractor=extractor,
        architecture=architecture_table(model),
        recurrent=recurrent_table(extractor),
        params=int(report.params or model.count_params()),
        load_seconds=float(report.seconds),
        load_path=report.worker_task,
    )
    progress(3, 3)
    return bundle


# ----------------------------------------------------------------------------------------------------------------
# the data


@dataclass
class DataBundle:
    """The analysed slice of a data file, ready for the model."""

    choice: DataChoice
    dataset: Any  # gatelens.models.data.Dataset (the slice)
    n_available: int  # sequences in the whole file, before slicing

    @property
    def n_sequences(self) -> int:
        return int(self.dataset.x.shape[0])


def load_data_bundle(model: ModelBundle, choice: DataChoice) -> DataBundle:
    """Read the data file against the model's input spec and keep the chosen slice of sequences."""
    from gatelens.errors import DataError
    from gatelens.models.data import load_data

    with named_files(choice.data):
        ds = load_data(
            choice.data.path,
            model.spec,
            columns=list(choice.columns) if choice.columns else None,
            window=choice.window,
            stride=choice.stride,
            level=choice.level,
        )
    n = int(ds.x.shape[0])
    first = int(choice.first)
    if not 0 <= first < n:
        raise DataError(f"{choice.data.name}: the first sequence must be in 0..{n - 1}, got {first}")
    stop = n if choice.count is None else min(n, first + int(choice.count))
    sl = slice(first, stop)
    source = dict(ds.source)
    if "path" in source:
        source["path"] = choice.data.name  # the user's name, not the server's temporary path
    source.update(first_sequence=first, sequences_analysed=stop - first, sequences_available=n)
    sub = replace(
        ds,
        x=ds.x[sl],
        tokens=None if ds.tokens is None else ds.tokens[sl],
        sequence=ds.sequence[sl],
        start=ds.start[sl],
        source=source,
    )
    return DataBundle(choice=choice, dataset=sub, n_available=n)


def preview_text(data: DataBundle, k: int = 3, max_chars: int = 2000) -> list[str]:
    """The first ``k`` sequences of a text input as strings (tokens joined; padding dropped)."""
    ds = data.dataset
    if ds.tokens is None or ds.vocabulary is None:
        return []
    vocab = np.asarray(ds.vocabulary, dtype=object)
    out = []
    for row in np.asarray(ds.tokens[:k]):
        ids = np.clip(row[row != 0], 0, len(vocab) - 1)
        out.append("".join(vocab[ids])[:max_chars])
    return out


def preview_frame(data: DataBundle, k: int = 2) -> pd.DataFrame:
    """Long table of the first ``k`` sequences of a numeric input: ``sequence, step`` and one column per feature."""
    ds = data.dataset
    x = np.asarray(ds.x[:k])
    if x.dtype.kind not in "fiu" or ds.tokens is not None:
        return pd.DataFrame()
    if x.ndim == 2:
        x = x[..., None]
    names = list(ds.feature_names or [f"x{j}" for j in range(x.shape[2])])
    n, t, f = x.shape
    df = pd.DataFrame(x.reshape(n * t, f), columns=names)
    df.insert(0, "step", np.tile(np.arange(t), n))
    df.insert(0, "sequence", np.repeat(np.arange(n), t))
    return df


# ----------------------------------------------------------------------------------------------------------------
# the run: extraction and analysis


#: The analysis steps run at once; the probes (many small model fits, the slow part) run after, in their own job.
FAST_STEPS = tuple(s for s in STEPS if s != "probes")


@dataclass
class RunResult:
    """A verified trace, its run directory and its analysis (read-only; arrays are not writeable).

    ``analysis`` holds every table of :func:`gatelens.analysis.pipeline.analyze` but the probes, which
    :func:`run_probes` adds (:func:`with_probes`). Its events are on disk, in the run's temporary
    directory (``analysis.events_file``; ``gatelens.analysis.events`` is empty): read them with
    :func:`gatelens.analysis.pipeline.read_events` (one unit's rows) or :func:`gatelens.analysis.pipeline.iter_event_batches`.
    """

    key: str
    trace: Trace
    run_dir: Path
    analysis: Any  # gatelens.analysis.pipeline.Analysis
    tolerance: float
    seconds: dict[str, float]
    user_features: pd.DataFrame | None = None
    _tmp: Any = field(default=None, repr=False)  # the TemporaryDirectory that holds run_dir
    live: Any = field(default=None, repr=False, compare=False)  # gatelens.dashboards.stages.Live behind it

    @property
    def verification(self) -> dict[str, float]:
        return dict(self.trace.verification)

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.run_dir / MANIFEST).read_text())

    def manifest_bytes(self) -> bytes:
        return (self.run_dir / MANIFEST).read_bytes()


def _frozen(a: Any) -> Any:
    if a is None:
        return None
    arr = np.array(a[...] if not isinstance(a, np.ndarray) else a, copy=True)
    arr.flags.writeable = False
    return arr


def trace_bytes(trace: Trace) -> int:
    """Bytes of all signals of a trace (as stored)."""
    total = 0
    for name in trace.layers:
        lt = trace[name]
        for s in lt.info.signals:
            a = lt[s]
            total += int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
    return total


def in_memory(trace: Trace) -> Trace:
    """A copy of ``trace`` with every array read into memory and made read-only."""
    layers = {}
    for name in trace.layers:
        lt = trace[name]
        layers[name] = LayerTrace(
            lt.info,
            {s: _frozen(lt[s]) for s in lt.info.signals},
            mask=_frozen(lt.mask),
            inputs=_frozen(lt.inputs),
            weights={k: _frozen(v) for k, v in lt.weights.items()},
        )
    return Trace(
        layers,
        verification=dict(trace.verification),
        tokens=_frozen(trace.tokens),
        vocabulary=None if trace.vocabulary is None else list(trace.vocabulary),
        x=_frozen(trace.x),
        feature_names=None if trace.feature_names is None else list(trace.feature_names),
        meta=dict(trace.meta),
    )


def slice_features(ref: FileRef, data: DataBundle, n_steps: int) -> pd.DataFrame:
    """A user's features CSV, validated against the whole data file, cut to the analysed slice.

    The file's ``sequence`` numbers the data file's sequences (windows) as ``gatelens extract`` does;
    rows of sequences outside the slice are dropped and the rest renumbered from 0, as the trace is.
    """
    from types import SimpleNamespace

    from gatelens.analysis.features import load_user_features

    whole = SimpleNamespace(n_sequences=data.n_available, n_steps=int(n_steps))  # the ranges it checks
    with named_files(ref):
        table = load_user_features(ref.path, whole)
    lo = int(data.choice.first)
    keep = (table["sequence"] >= lo) & (table["sequence"] < lo + data.n_sequences)
    out = table[keep].copy()
    out["sequence"] -= lo
    return out.reset_index(drop=True)


def extract_run(model: ModelBundle, data: DataBundle, stage: StageProgress = _no_progress) -> RunResult:
    """Extract (verified against Keras) into a run directory: ``gatelens extract``. The analysis is still empty.

    The run is keyed by model + data without the features file (extraction does not read it): the
    features only change the steps that depend on them (:mod:`gatelens.dashboards.stages`).
    """
    from gatelens.analysis.pipeline import Analysis
    from gatelens.models.extract import DEFAULT_TOLERANCE, write_run
    from gatelens.models.strings import record_unknown_tokens

    ds = data.dataset
    key = run_key(model.choice, replace(data.choice, features=None))
    tmp = owned_tempdir("gatelens-run-")
    out = Path(tmp.name) / "run"
    manifest = run_manifest(
        {
            "name": model.choice.model.name,
            "sha256": model.choice.model.sha256,
            "demo": model.choice.demo,
            "keras_name": model.model.name,
            "vocabulary": None if model.choice.vocabulary is None else model.choice.vocabulary.name,
        },
        ds,
        {
            "batch_size": BATCH_SIZE,
            "window": data.choice.window,
            "stride": data.choice.stride,
            "columns": list(data.choice.columns) if data.choice.columns else None,
            "level": data.choice.level,
            "first_sequence": data.choice.first,
            "sequences": data.n_sequences,
        },
        created_by="gatelens dashboard",
    )
    record_unknown_tokens(manifest, model.extractor.front)  # as `gatelens extract` records them
    t0 = time.perf_counter()
    # no lock: the extractor keeps no per-run state, and its compiled functions are shared and thread-safe
    trace = write_run(
        model.extractor,
        ds.x,
        out,
        batch_size=BATCH_SIZE,
        tolerance=DEFAULT_TOLERANCE,
        progress=stage("Re-running the cells from the weights (verified against Keras)"),
        vocabulary=ds.vocabulary,
        feature_names=ds.feature_names,
        manifest=manifest,
    )
    seconds = {"extract": time.perf_counter() - t0}
    if trace_bytes(trace) <= IN_MEMORY_BYTES:  # and within the server's byte budget for traces in memory
        from gatelens.dashboards.membudget import maybe_in_memory

        trace = maybe_in_memory(trace, trace_bytes(trace), in_memory)
    return RunResult(
        key=key, trace=trace, run_dir=out, analysis=Analysis(), tolerance=DEFAULT_TOLERANCE, seconds=seconds, _tmp=tmp
    )


def run_analysis(model: ModelBundle, data: DataBundle, stage: StageProgress = _no_progress) -> RunResult:
    """Extract, then analyse in one go: ``gatelens extract`` + ``analyze`` (every step but the probes).

    The dashboard itself runs the analysis in stages (:mod:`gatelens.dashboards.stages`); this is the same
    work in one call, for scripts and tests.
    """
    from gatelens.analysis.pipeline import analyze

    run = extract_run(model, data, stage)
    features = None
    if data.choice.features is not None:
        features = slice_features(data.choice.features, data, run.trace.n_steps)
    t0 = time.perf_counter()
    result = analyze(
        run.trace,
        features=features,
        steps=FAST_STEPS,
        progress=stage("Analysing (statistics, memory, events, correlations, clusters)"),
        # the events stream to the run's temporary directory a chunk at a time (memory bounded by the chunk, not
        # by the number of sequences); read them with gatelens.analysis.pipeline.read_events / iter_event_batches
        events_path=Path(run._tmp.name) / "events.parquet",
    )
    run.seconds["analyze"] = time.perf_counter() - t0
    return replace(run, key=run_key(model.choice, data.choice), analysis=result, user_features=features)


def run_probes(run: RunResult, progress: Progress | None = None) -> pd.DataFrame:
    """The probes step of :func:`gatelens.analysis.pipeline.analyze` (features, then ``probe_report``), with progress."""
    from gatelens.analysis.features import build_features
    from gatelens.analysis.probes import probe_report

    feats = build_features(run.trace, user_features=run.user_features)
    return probe_report(run.trace, feats, progress=progress)


def with_probes(run: RunResult, probes: pd.DataFrame) -> Any:
    """The run's full analysis: its tables plus the probes."""
    return replace(run.analysis, probes=probes)


# ----------------------------------------------------------------------------------------------------------------
# export


def export_zip(run: RunResult, analysis: Any, progress: Progress | None = None) -> tuple[bytes, dict[str, int]]:
    """Every CSV of the contract (``gatelens.analysis.export.export_csvs``) and ``manifest.json`` in one zip.

    ``analysis`` is the run's full analysis (:func:`with_probes`). Returns the zip's bytes and the
    size in bytes of each file in it.
    """
    from gatelens.analysis.export import export_csvs

    with owned_tempdir("gatelens-export-") as d:
        paths = export_csvs(run.trace, d, analysis=analysis, progress=progress)
        buf = io.BytesIO()
        sizes = {}
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, path in sorted(paths.items()):
                zf.write(path, arcname=name)
                sizes[name] = Path(path).stat().st_size
            zf.writestr(MANIFEST, run.manifest_bytes())
            sizes[MANIFEST] = len(run.manifest_bytes())
    return buf.getvalue(), sizes


def zip_member(archive: bytes, name: str) -> bytes:
    """One file of a zip made by :func:`export_zip`."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return zf.read(name)


def csv_header(path: str | Path, *, max_bytes: int = 1 << 16) -> list[str]:
    """Column names of a CSV file (its first non-blank line), for choosing input columns.

    Returns an empty list when the first line is all numbers (a file without a header) or unreadable;
    :func:`gatelens.models.data.load_data` reports the real problem, if any.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.csv"
    >>> _ = p.write_text("year,load,temp\\n2000,1,2\\n")
    >>> csv_header(p)
    ['year', 'load', 'temp']
    """
    import csv

    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            head = f.read(max_bytes)
    except OSError:
        return []
    for line in head.splitlines():
        if line.strip():
            names = [c.strip() for c in next(csv.reader([line]))]
            try:
                [float(c) for c in names]
            except ValueError:
                return names
            return []
    return []


# ----------------------------------------------------------------------------------------------------------------
# one sequence of a trace, for the per-sequence pages


def sequence_signals(
    trace: Trace, layer: str, sequence: int, signals: list[str] | None = None
) -> dict[str, np.ndarray]:
    """The signals of one sequence of one layer: ``{signal: (T, units) float32}`` (pre-activations left out by default)."""
    lt = trace[layer]
    names = signals or registry.not_pre(lt.info.signals)
    return {s: np.asarray(lt[s][sequence], np.float32) for s in names}


def sequence_mask(trace: Trace, layer: str, sequence: int) -> np.ndarray:
    """``(T,)`` bool: the steps of ``sequence`` the layer really processed."""
    return np.asarray(trace[layer].mask[sequence], bool)


def sequence_tokens(trace: Trace, sequence: int) -> list[str] | None:
    """Token strings of one sequence (``str(id)`` without a vocabulary); None for numeric inputs."""
    if trace.tokens is None:
        return None
    return token_text(trace.vocabulary, trace.tokens[sequence]).tolist()


def input_frame(trace: Trace, layer: str, sequence: int) -> pd.DataFrame:
    """The model's numeric input of one sequence (``step`` and one column per feature); the layer's input otherwise."""
    if trace.x is not None:
        x = np.asarray(trace.x[sequence], np.float64)
        names = list(trace.feature_names or [])
        if len(names) != x.shape[-1]:
            names = [f"x{j}" for j in range(x.shape[-1])]
    else:
        x = np.asarray(trace[layer].inputs[sequence], np.float64)
        names = [f"input[{j}]" for j in range(x.shape[-1])]
    if x.ndim == 1:
        x = x[:, None]
    df = pd.DataFrame(x[:, :8], columns=names[:8])  # a line chart of more than 8 inputs is unreadable
    df.insert(0, "step", np.arange(x.shape[0]))
    return df


def sequence_origin(run: RunResult, sequence: int) -> str:
    """Where analysed sequence ``sequence`` comes from in the data file, in words.

    Uses the run manifest's ``sequence`` (source sequence of each row) and ``start`` (its first step there).
    """
    m = run.manifest
    seqs, starts = m.get("sequence") or [], m.get("start") or []
    if not 0 <= sequence < len(seqs):
        return ""
    t = run.trace.n_steps
    name = m.get("data", {}).get("path", "the data")
    return f"from {name}: source sequence {seqs[sequence]}, steps {starts[sequence]}..{starts[sequence] + t - 1}"
