"""Safe loading of a user's Keras model: validated, isolated, rebuilt from plain data.

:func:`load_model` never hands the user's file to Keras. It

1. copies the file into a private temporary directory (so it cannot change while it is checked);
2. validates the archive and the whole nested config in pure Python (:mod:`gatelens.models.safety`):
   exact members, no path tricks, bounded sizes and compression ratios, allowlisted Keras classes
   only (no Lambda, bytecode, custom or non-Keras objects), parameter count capped from the config;
3. reads the weights in a separate worker process under memory and time limits
   (:mod:`gatelens.models.worker`): HDF5 links and datasets checked, weights returned as plain arrays
   (``.npz``, no pickle). A model whose size the config does not pin down exactly, or above
   :attr:`~gatelens.models.safety.LoadLimits.fast_path_max_params`, is also built once by Keras inside the
   worker (a trial under the limits) before the parent builds it; legacy ``.h5`` files are
   converted inside the worker and the result is validated again;
4. composes a fresh ``.keras`` archive from the validated config and the arrays, and only that is
   given to ``keras.saving.load_model(..., safe_mode=True, compile=False)``.

Refusals raise :class:`~gatelens.errors.UnsafeModelError` (CLI exit code 3), unreadable files
:class:`~gatelens.errors.ModelFormatError` (exit code 2); both name the file and what was found.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatelens.errors import GatelensInputError, ModelFormatError, UnsafeModelError
from gatelens.models.safety import (
    LoadLimits,
    check_weight_keys,
    inspect_keras_archive,
    write_clean_archive,
)
from gatelens.models.worker import WorkerResult, keras_reason, run_worker

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass
class LoadReport:
    """How a model was loaded: sizes, the path taken, and the worker's measured cost."""

    name: str
    format: str  # "keras" | "h5"
    params_estimate: int = 0  # from the config, before anything was allocated
    params_verified: bool = False  # the estimate is exactly what Keras allocates
    params: int | None = None  # of the loaded model
    worker_task: str = ""  # "keras_weights" (no TensorFlow in the worker), "keras_trial" or "h5"
    worker_peak_rss_bytes: int = 0
    worker_peak_vm_bytes: int = 0
    worker_seconds: float = 0.0
    seconds: float = 0.0
    layers: list[str] = field(default_factory=list)


def load_model(path: str | os.PathLike, *, limits: LoadLimits | None = None, display_name: str | None = None):
    """Load a ``.keras`` (or legacy ``.h5``) model safely, without compiling it.

    Parameters
    ----------
    path : path to the model file
    limits : LoadLimits, optional
        Size, parameter, memory and time limits (default: :meth:`LoadLimits.from_env`).
    display_name : str, optional
        The name used in error messages (default: ``path`` as given), e.g. an upload's file name.

    Returns
    -------
    keras.Model

    Raises
    ------
    UnsafeModelError
        The file holds a Lambda layer, code, a custom, unknown or non-Keras class, or exceeds a limit.
    ModelFormatError
        The file is not a readable Keras model.

    Examples
    --------
    >>> from gatelens._examples import tiny_model_path
    >>> load_model(tiny_model_path()).layers[0].__class__.__name__
    'LSTM'
    """
    model, _ = load_model_with_report(path, limits=limits, display_name=display_name)
    return model


def load_model_with_report(
    path: str | os.PathLike, *, limits: LoadLimits | None = None, display_name: str | None = None
) -> tuple[Any, LoadReport]:
    """:func:`load_model`, also returning a :class:`LoadReport` (path taken, sizes, worker cost).

    An error raised after the worker ran carries the partial report as ``err.load_report``.

    Examples
    --------
    >>> from gatelens._examples import tiny_model_path
    >>> model, report = load_model_with_report(tiny_model_path())
    >>> report.params, report.worker_task
    (76, 'keras_weights')
    """
    t0 = time.perf_counter()
    limits = limits or LoadLimits.from_env()
    name = display_name or str(path)
    path = Path(path)
    if not path.is_file():
        what = "a folder, not a model file" if path.is_dir() else "no such model file"
        raise ModelFormatError(f"{name}: {what}")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ModelFormatError(
            f"{name}: expected a .keras (or legacy .h5) model file, got {path.suffix or 'no extension'!r}"
        )
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise UnsafeModelError(f"{name}: the file is {size:,} bytes; the limit is {limits.max_file_bytes:,}.")
    fmt = "keras" if suffix == ".keras" else "h5"
    report = LoadReport(name=name, format=fmt)
    with tempfile.TemporaryDirectory(prefix="gatelens-load-") as tmp:
        tmp = Path(tmp)
        private = tmp / ("model" + suffix)
        shutil.copyfile(path, private)  # validated and read from here only: the file cannot change under us
        work = tmp / "worker"
        work.mkdir()
        try:
            model = _load_private(private, work, name, fmt, limits, report)
        except GatelensInputError as e:
            e.load_report = report
            raise
    report.seconds = time.perf_counter() - t0
    log.info(
        "loaded %s: %s parameters via %s (worker %.2f s, peak %.0f MiB), %.2f s in all",
        name,
        report.params,
        report.worker_task,
        report.worker_seconds,
        report.worker_peak_rss_bytes / 2**20,
        report.seconds,
    )
    return model, report


def _load_private(private: Path, work: Path, name: str, fmt: str, limits: LoadLimits, report: LoadReport):
    if fmt == "keras":
        archive = inspect_keras_archive(private, name, limits)
        report.params_estimate = archive.report.params
        report.params_verified = archive.report.params_verified
        report.layers = archive.report.layers
        fast = archive.report.params_verified and archive.report.params <= limits.fast_path_max_params
        task = "keras_weights" if fast else "keras_trial"
        result = _run(task, private, work, name, limits, report)
    else:
        result = _run("h5", private, work, name, limits, report)
        # the worker converted the legacy file: validate what it wrote like any untrusted archive
        archive = inspect_keras_archive(result.converted_path, name, limits)
        report.params_estimate = archive.report.params
        report.params_verified = archive.report.params_verified
        report.layers = archive.report.layers
    if result.params is not None and result.params > limits.max_params:  # the worker checks too
        raise UnsafeModelError(
            f"{name}: the model has {result.params:,} parameters; the limit is {limits.max_params:,}."
        )
    weights = _read_npz(result.weights_path, name, limits)
    return _build(archive, weights, work, name, limits, report)


def _run(task: str, private: Path, work: Path, name: str, limits: LoadLimits, report: LoadReport) -> WorkerResult:
    from gatelens.models._quiet import import_tensorflow_quietly

    # TensorFlow (seconds; needed to build the model) is imported while the worker reads the weights
    result = run_worker(task, private, work, name, limits, while_waiting=import_tensorflow_quietly)
    report.worker_task = task
    report.worker_peak_rss_bytes = result.peak_rss_bytes
    report.worker_peak_vm_bytes = result.peak_vm_bytes
    report.worker_seconds = result.seconds
    result.raise_for_error()
    if result.weights_path is None or not result.weights_path.is_file():
        raise ModelFormatError(f"{name}: the model loader returned no weights.")
    return result


def _read_npz(path: Path, name: str, limits: LoadLimits) -> dict[str, Any]:
    """The worker's arrays, read without pickle and within the size limit."""
    import zipfile

    import numpy as np

    if path.stat().st_size > limits.max_weights_bytes + (16 << 20):
        raise UnsafeModelError(f"{name}: the weights exceed {limits.max_weights_bytes:,} bytes.")
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ModelFormatError(f"{name}: unexpected compressed weights from the loader.")
    out = {}
    with np.load(path, allow_pickle=False) as npz:
        for key in npz.files:
            arr = npz[key]
            if arr.dtype.kind not in "biuf":
                raise ModelFormatError(f"{name}: weight {key!r} has dtype {arr.dtype}; expected numbers.")
            out[key] = arr
    check_weight_keys(out, name)
    return out


def check_finite_weights(model: Any, name: str) -> None:
    """Refuse a model whose weights hold NaN or inf: every signal computed from them would be NaN.

    Raises
    ------
    UnsafeModelError
        Naming the file, the layer, the weight and how many values are not finite (exit code 3).

    Examples
    --------
    >>> import numpy as np
    >>> from gatelens._examples import tiny_model
    >>> m = tiny_model()
    >>> check_finite_weights(m, "m.keras")
    >>> w = m.layers[0].get_weights(); w[1][0, 0] = np.nan; m.layers[0].set_weights(w)
    >>> check_finite_weights(m, "m.keras")
    Traceback (most recent call last):
    ...
    gatelens.errors.UnsafeModelError: m.keras: layer 'lstm': weight 'lstm_cell/recurrent_kernel' holds 1 NaN/inf value(s) ...
    """
    import numpy as np

    for layer in _weighted_layers(model):
        for v in layer.weights:
            a = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
            if a.dtype.kind != "f":
                continue
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            if bad:
                where = np.argwhere(~np.isfinite(a))[0]
                raise UnsafeModelError(
                    f"{name}: layer {layer.name!r}: weight {_weight_name(v, layer)!r} holds {bad} NaN/inf value(s) "
                    f"(first at index {tuple(int(i) for i in where)}); every gate computed from it would be NaN"
                )


def _weight_name(v: Any, layer: Any) -> str:
    path = str(getattr(v, "path", None) or getattr(v, "name", "weight"))
    parts = path.split("/")
    return "/".join(parts[parts.index(layer.name) + 1 :]) if layer.name in parts[:-1] else parts[-1]


def _weighted_layers(model: Any):
    """The outermost layers that are not models, with weights (an LSTM before its cell: the name a user gave)."""
    from gatelens.models.naming import all_layers

    for layer in all_layers(model):
        if not hasattr(layer, "layers") and layer.weights:
            yield layer


def _build(archive, weights: dict, work: Path, name: str, limits: LoadLimits, report: LoadReport):
    from gatelens.models._quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras

    clean = write_clean_archive(work / "clean.keras", archive.report.config, weights, archive.assets, keras.__version__)
    try:
        model = keras.saving.load_model(clean, compile=False, safe_mode=True)
    except GatelensInputError:
        raise
    except Exception as e:  # Keras raises many types for configs/weights that do not fit together
        raise ModelFormatError(f"{name}: cannot be loaded as a Keras model: {keras_reason(e)}") from None
    check_finite_weights(model, name)
    report.params = int(model.count_params())
    if report.params > limits.max_params:
        raise UnsafeModelError(
            f"{name}: the model has {report.params:,} parameters; the limit is {limits.max_params:,}."
        )
    if not isinstance(model, keras.Model):
        raise ModelFormatError(f"{name}: the file holds a {type(model).__name__}, not a Keras model.")
    return model
