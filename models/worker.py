"""The isolated worker: reads an untrusted model file in a separate process under memory and time limits.

The parent (:func:`run_worker`) starts ``python -c "<bootstrap>" MODELS_DIR JOB.json`` as a fresh process in its
own session, with a small environment (no GPU, one thread per pool, no HDF5 plugins). The worker
first lowers its own limits (``RLIMIT_AS``, ``RLIMIT_CPU``, ``RLIMIT_FSIZE``, no core dumps), then
does one task and writes ``result.json``:

``keras_weights``
    Re-validate the ``.keras`` archive (:func:`gatelens.models.safety.inspect_keras_archive`), extract
    ``model.weights.h5``, check every HDF5 link and dataset (:func:`gatelens.models.safety.read_h5_weights`)
    and write the weights as plain arrays to ``weights.npz``. No TensorFlow import.
``keras_trial``
    The same, then build the model with Keras from the validated config and those arrays (a clean
    archive, :func:`gatelens.models.safety.write_clean_archive`) and report its parameter count: a trial
    of what the parent will do, under the worker's limits.
``h5``
    A legacy HDF5 model: check all links and datasets, validate the ``model_config`` attribute,
    build the model from the validated config, read the weights (Keras's legacy reader), save it
    as ``converted.keras`` and extract its weights as for ``keras_weights``.

The parent waits with a wall-clock deadline (the process group is killed on timeout), collects the
child's resource usage with ``os.wait4`` (peak RSS) and turns every failure, crash or limit into a
:class:`~gatelens.errors.UnsafeModelError` or :class:`~gatelens.errors.ModelFormatError` that names the file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gatelens.errors import GatelensInputError, ModelFormatError, UnsafeModelError
from gatelens.models.safety import (
    LoadLimits,
    check_h5_tree,
    check_weight_keys,
    inspect_keras_archive,
    parse_config_json,
    read_h5_weights,
    validate_config,
    write_clean_archive,
)

log = logging.getLogger(__name__)

TASKS = ("keras_weights", "keras_trial", "h5")
#: The worker's entry: ``gatelens`` and ``gatelens.models`` as bare packages (their ``__init__``, which
#: imports TensorFlow for ``gatelens.models``, is not run), so the worker starts in a fraction of a second
#: and imports only what its task needs. Their folders are passed as arguments: the same in a checkout
#: (editable install) and in an installed wheel.
_BOOTSTRAP = (
    "import sys, types\n"
    "for name in ('gatelens', 'gatelens.models'):\n"
    "    pkg = types.ModuleType(name); pkg.__path__ = [sys.argv.pop(1)]; sys.modules[name] = pkg\n"
    "from gatelens.models.worker import main; sys.exit(main())"
)
_PACKAGE_DIRS = (
    str(Path(sys.modules["gatelens"].__path__[0]).resolve()),  # gatelens/ (errors, ...)
    str(Path(__file__).resolve().parent),  # gatelens.models
)


@dataclass
class WorkerResult:
    """What one worker run produced (parent side)."""

    ok: bool
    task: str
    error: str | None = None  # "UnsafeModelError" | "ModelFormatError"
    message: str | None = None
    weights_path: Path | None = None  # weights.npz (plain arrays, no pickle)
    converted_path: Path | None = None  # converted.keras (h5 task)
    params: int | None = None  # parameters of the model Keras built in the worker (trial and h5 tasks)
    peak_rss_bytes: int = 0  # the worker's peak resident memory since exec (VmHWM; wait4's ru_maxrss on a crash)
    peak_vm_bytes: int = 0  # the worker's peak address space (VmPeak), bounded by RLIMIT_AS
    seconds: float = 0.0
    returncode: int | None = None

    def raise_for_error(self) -> None:
        """Raise the error the worker reported (or its crash) as the matching gatelens error."""
        if self.ok:
            return
        cls = UnsafeModelError if self.error == "UnsafeModelError" else ModelFormatError
        err = cls(self.message or "the model loader failed")
        err.worker_result = self
        raise err


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "KERAS_BACKEND", "KERAS_HOME", "VIRTUAL_ENV")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONNOUSERSITE="1",
        TF_CPP_MIN_LOG_LEVEL="3",
        CUDA_VISIBLE_DEVICES="",  # the worker never needs a GPU (and GPU drivers map huge address space)
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TF_NUM_INTRAOP_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
        HDF5_PLUGIN_PATH="",  # no dynamically loaded HDF5 filters
    )
    return env


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def run_worker(
    task: str,
    model_path: str | os.PathLike,
    work_dir: str | os.PathLike,
    name: str,
    limits: LoadLimits,
    *,
    while_waiting: Callable[[], Any] | None = None,
) -> WorkerResult:
    """Run one worker task on ``model_path`` (a private copy); results go to ``work_dir``.

    Parameters
    ----------
    task : {"keras_weights", "keras_trial", "h5"}
    model_path : the model file (already copied to a private directory by the caller)
    work_dir : an empty private directory for the job, its outputs and the worker's log
    name : the file name for messages
    limits : LoadLimits
    while_waiting : callable, optional
        Run in this process once the worker has started, before waiting for it (the loader imports
        TensorFlow meanwhile, which touches nothing of the file). The worker's time limit counts from its
        start; if ``while_waiting`` raises, the worker is stopped and the error propagates.

    Returns
    -------
    WorkerResult
        ``ok`` False (with ``error`` and ``message``) for a refused file, a crash, a timeout or a limit;
        ``seconds``: from the worker's start to its result (it reports when it finished).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    work = Path(work_dir)
    job = {"task": task, "model": str(model_path), "out": str(work), "name": name, "limits": asdict(limits)}
    job_path = work / "job.json"
    job_path.write_text(json.dumps(job))
    result_path = work / "result.json"
    log_path = work / "worker.log"
    t0 = time.perf_counter()
    started = time.monotonic()
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-s", "-c", _BOOTSTRAP, *_PACKAGE_DIRS, str(job_path)],
            cwd=str(work),
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout kills it and nothing else
            close_fds=True,
        )
    if while_waiting is not None:
        try:
            while_waiting()
        except BaseException:
            _kill(proc)
            raise
    status, rusage, timed_out = _wait(proc, limits.worker_timeout_s, started)
    seconds = time.perf_counter() - t0
    peak = int(rusage.ru_maxrss) * 1024 if rusage is not None else 0
    res = WorkerResult(ok=False, task=task, peak_rss_bytes=peak, seconds=seconds)

    def too_long(what: str) -> WorkerResult:
        res.ok, res.weights_path, res.converted_path = False, None, None
        res.error = "UnsafeModelError"
        res.message = (
            f"{name}: loading the model took longer than {limits.worker_timeout_s:g} s ({what}); "
            "refused (LoadLimits.worker_timeout_s, GATELENS_WORKER_TIMEOUT_S)."
        )
        return res

    if timed_out:
        return too_long("the worker was stopped")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        res.returncode = -sig
        res.error = "UnsafeModelError"
        reason = {
            signal.SIGXCPU: "it used more CPU time than allowed",
            signal.SIGXFSZ: "it tried to write a file larger than allowed",
        }.get(sig, "it crashed")
        res.message = (
            f"{name}: the isolated model loader was stopped by {_signal_name(sig)} ({reason}) after {seconds:.1f} s "
            f"(memory limit {limits.worker_memory_bytes / 2**20:.0f} MiB); the file is corrupt or hostile, or "
            f"needs more than the loader's limits. {_log_tail(log_path)}"
        ).strip()
        return res
    res.returncode = os.WEXITSTATUS(status)
    try:
        out = json.loads(result_path.read_text())
    except (OSError, ValueError):
        res.error = "UnsafeModelError" if res.returncode else "ModelFormatError"
        res.message = (
            f"{name}: the isolated model loader exited with status {res.returncode} without a result "
            f"(memory limit {limits.worker_memory_bytes / 2**20:.0f} MiB). "
            f"{_log_tail(log_path)}"
        ).strip()
        return res
    # ru_maxrss from wait4 also counts the parent's pages the child had between fork and exec:
    # prefer the worker's own measurement since exec when it reports one
    if isinstance(out.get("peak_rss_bytes"), int):
        res.peak_rss_bytes = out["peak_rss_bytes"]
    if isinstance(out.get("peak_vm_bytes"), int):
        res.peak_vm_bytes = out["peak_vm_bytes"]
    finished = out.get("finished_monotonic")  # the worker's own clock: CLOCK_MONOTONIC is system-wide
    if isinstance(finished, float) and started <= finished <= time.monotonic():
        res.seconds = min(seconds, finished - started)
    if res.seconds > limits.worker_timeout_s:  # it finished late, while while_waiting ran: the limit still holds
        return too_long(f"{res.seconds:.2f} s")
    res.ok = bool(out.get("ok"))
    res.error = out.get("error")
    res.message = out.get("message")
    res.params = out.get("params")
    if out.get("weights"):
        res.weights_path = work / "weights.npz"
    if out.get("converted"):
        res.converted_path = work / "converted.keras"
    return res


def _kill(proc: subprocess.Popen) -> None:
    """Stop ``proc``'s process group and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.wait4(proc.pid, 0)


def _wait(proc: subprocess.Popen, timeout_s: float, started: float | None = None):
    """Wait for ``proc`` until ``timeout_s`` after ``started`` (``time.monotonic()``; default now); return
    (status, rusage, timed_out). Kills its group on timeout."""
    deadline = (time.monotonic() if started is None else started) + timeout_s
    delay = 0.005
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return status, rusage, False
        if time.monotonic() >= deadline:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return status, rusage, True
        time.sleep(delay)
        delay = min(delay * 1.5, 0.05)


def _log_tail(path: Path, n: int = 300) -> str:
    try:
        data = path.read_bytes()[-4096:].decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln for ln in data.splitlines() if ln.strip()]
    if lines:
        log.debug("model worker log tail:\n%s", "\n".join(lines[-20:]))
    return f"Last log line: {lines[-1][-n:]}" if lines else ""


# --------------------------------------------------------------------------------------------
# Child side
# --------------------------------------------------------------------------------------------


def _apply_limits(limits: LoadLimits) -> None:
    import resource

    mem = int(limits.worker_memory_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    cpu = int(limits.worker_timeout_s) + 5
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    fsize = int(limits.max_weights_bytes + limits.max_file_bytes + (64 << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _extract_member(zip_path: str, member: str, dest: Path, limit: int) -> None:
    with zipfile.ZipFile(zip_path) as zf, zf.open(member) as src, open(dest, "wb") as out:
        copied = 0
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            copied += len(chunk)
            if copied > limit:
                raise UnsafeModelError(f"archive member {member!r} inflates past {limit:,} bytes")
            out.write(chunk)


def _weights_from_archive(path: str, out: Path, name: str, limits: LoadLimits):
    import h5py

    archive = inspect_keras_archive(path, name, limits)
    h5_path = out / "untrusted.weights.h5"
    try:
        _extract_member(path, archive.weights_member, h5_path, limits.max_weights_bytes)
    except UnsafeModelError as e:
        raise UnsafeModelError(f"{name}: {e}") from None
    try:
        with h5py.File(h5_path, "r") as h5:
            weights = read_h5_weights(h5, name, limits)
    except GatelensInputError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ModelFormatError(f"{name}: model.weights.h5 is not a readable HDF5 file ({e}).") from None
    finally:
        h5_path.unlink(missing_ok=True)
    check_weight_keys(weights, name)
    return archive, weights


def _save_npz(weights: dict, out: Path) -> None:
    import numpy as np

    tmp = out / "weights.tmp.npz"
    np.savez(tmp, **weights)
    os.replace(tmp, out / "weights.npz")


def _task_keras_weights(job: dict, limits: LoadLimits) -> dict:
    out = Path(job["out"])
    _, weights = _weights_from_archive(job["model"], out, job["name"], limits)
    _save_npz(weights, out)
    return {"weights": True}


def _build_clean(config: dict, weights: dict, assets: dict, out: Path, name: str, limits: LoadLimits) -> Any:
    import keras

    clean = write_clean_archive(out / "trial.keras", config, weights, assets, keras.__version__)
    try:
        model = keras.saving.load_model(clean, compile=False, safe_mode=True)
    finally:
        clean.unlink(missing_ok=True)
    params = int(model.count_params())
    if params > limits.max_params:
        raise UnsafeModelError(
            f"{name}: the model has {params:,} parameters; gatelens loads models up to {limits.max_params:,} "
            "(LoadLimits.max_params, GATELENS_MAX_PARAMS)."
        )
    return model, params


def _task_keras_trial(job: dict, limits: LoadLimits) -> dict:
    out = Path(job["out"])
    archive, weights = _weights_from_archive(job["model"], out, job["name"], limits)
    _, params = _build_clean(archive.report.config, weights, archive.assets, out, job["name"], limits)
    _save_npz(weights, out)
    return {"weights": True, "params": params}


def _task_h5(job: dict, limits: LoadLimits) -> dict:
    import h5py

    name = job["name"]
    out = Path(job["out"])
    try:
        f = h5py.File(job["model"], "r")
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"{name}: not a readable HDF5 file ({e}).") from None
    with f:
        check_h5_tree(f, name, limits, skip=("optimizer_weights",))
        if "model_config" not in f.attrs:
            raise ModelFormatError(
                f"{name}: this HDF5 file holds no model config (weights only?); gatelens needs a whole model "
                "saved with model.save('model.keras')."
            )
        attr_id = f.attrs.get_id("model_config")
        if attr_id.get_storage_size() > limits.max_config_bytes:
            raise UnsafeModelError(f"{name}: the model_config attribute exceeds {limits.max_config_bytes:,} bytes.")
        raw = f.attrs["model_config"]
        if hasattr(raw, "tobytes") and not isinstance(raw, (bytes, str)):
            raise ModelFormatError(f"{name}: the model_config attribute is not a JSON string.")
        config = parse_config_json(raw, name, limits)
        report = validate_config(config, name, limits)
        if "model_weights" not in f:
            raise ModelFormatError(f"{name}: the HDF5 file holds no model_weights group.")
        from gatelens.models.compat import legacy_h5  # Keras's private legacy reader, checked there

        legacy_h5_format, saving_options, saving_utils, serialization_lib = legacy_h5()

        with saving_options.keras_option_scope(use_legacy_config=True), serialization_lib.SafeModeScope(True):
            model = saving_utils.model_from_config(report.config, custom_objects={})
            legacy_h5_format.load_weights_from_hdf5_group(f["model_weights"], model)
    params = int(model.count_params())
    if params > limits.max_params:
        raise UnsafeModelError(
            f"{name}: the model has {params:,} parameters; gatelens loads models up to {limits.max_params:,}."
        )
    converted = out / "converted.keras"
    model.save(converted)
    _, weights = _weights_from_archive(str(converted), out, name, limits)
    _save_npz(weights, out)
    return {"weights": True, "converted": True, "params": params}


def _own_memory() -> dict[str, int]:
    """This process's peak resident and virtual memory since exec (VmHWM, VmPeak from /proc)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmPeak"):
                out["peak_rss_bytes" if key == "VmHWM" else "peak_vm_bytes"] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        import resource

        out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


_TASKS = {"keras_weights": _task_keras_weights, "keras_trial": _task_keras_trial, "h5": _task_h5}


def _out_of_memory(e: BaseException) -> bool:
    """True when ``e`` (or what caused it) is an allocation failure under the memory limit."""
    seen = 0
    while e is not None and seen < 10:
        text = str(e)[:4000].lower()
        if (
            isinstance(e, MemoryError)
            or "ResourceExhausted" in type(e).__name__
            or "oom when allocating" in text
            or "cannot allocate memory" in text
            or "failed to map segment" in text
            or "out of memory" in text
        ):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


#: Longest Keras message passed on (whole sentences are kept; only a runaway message is shortened).
MAX_REASON_CHARS = 2000


def keras_reason(e: BaseException, limit: int = MAX_REASON_CHARS) -> str:
    """A Keras error's whole message on one line: every line kept (Keras often gives its reason after a
    colon on the next line); a message longer than ``limit`` is cut after its last full sentence.

    Examples
    --------
    >>> keras_reason(ValueError("Example error message for object <TV>:\\n\\nVocabulary is empty."))
    'Example error message for object <TV>: Vocabulary is empty.'
    >>> keras_reason(ValueError("One. " * 10), limit=12)
    'One. One. (...)'
    """
    text = " ".join(str(e).split()) or type(e).__name__
    if len(text) <= limit:
        return text
    head = text[:limit]
    cut = max(head.rfind(". "), head.rfind("; "))
    return (head[: cut + 1] if cut > 0 else head.rstrip()) + " (...)"


def main(argv: list[str] | None = None) -> int:
    """Worker entry point (argv: the job file). Always writes result.json if it can."""
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    limits = LoadLimits(**job["limits"])
    _apply_limits(limits)
    name = job["name"]
    out = Path(job["out"])
    try:
        result = _TASKS[job["task"]](job, limits)
        result["ok"] = True
    except GatelensInputError as e:
        cls = "UnsafeModelError" if isinstance(e, UnsafeModelError) else "ModelFormatError"
        result = {"ok": False, "error": cls, "message": str(e)}
    except (MemoryError, RecursionError) as e:
        result = {
            "ok": False,
            "error": "UnsafeModelError",
            "message": f"{name}: reading the model exceeded the loader's limits ({type(e).__name__}; memory limit "
            f"{limits.worker_memory_bytes / 2**20:.0f} MiB, LoadLimits.worker_memory_bytes); refused.",
        }
    except Exception as e:  # anything else Keras/h5py raise on a bad file: report, never crash the parent
        kind = type(e).__name__
        unsafe = _out_of_memory(e)
        if unsafe:
            log.debug("worker out of memory", exc_info=True)
            message = (
                f"{name}: loading the model needs more memory than the loader's limit "
                f"({limits.worker_memory_bytes / 2**20:.0f} MiB, LoadLimits.worker_memory_bytes, "
                f"GATELENS_WORKER_MEMORY_MB); refused ({kind})."
            )
        else:
            message = f"{name}: cannot be loaded as a Keras model: {kind}: {keras_reason(e)}"
        result = {"ok": False, "error": "UnsafeModelError" if unsafe else "ModelFormatError", "message": message}
    result.update(_own_memory())
    result["finished_monotonic"] = time.monotonic()
    tmp = out / "result.tmp.json"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, out / "result.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
