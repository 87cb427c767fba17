"""Distributed extraction: the run store written by the workers of a Dask cluster, shard by shard.

:func:`write_run_distributed` is :func:`gatelens.models.extract.write_run` on a ``dask.distributed`` cluster
(a :class:`~distributed.LocalCluster` of single-threaded processes, or a real one given by its scheduler
address). How it works:

1. The client validates the data, traces the model once (layer names, weights, embeddings; no batch is
   run) and creates the run's partial directory with every array's metadata and the weights
   (:class:`gatelens.analysis.store.RunWriter`).
2. The sequences are cut into **shards of whole batches** (and so of whole chunks of the store: a shard
   starts where a batch of the single-process run starts, and the run's short last batch is padded as that
   run pads it, so every batch the workers compute is the batch the single-process run computes).
3. One task per shard: on its worker it checks the model file's sha256, loads the model through the safe
   loader (:func:`gatelens.models.loading.load_model`) **once per worker** (cached by path, checksum and
   layers), extracts the shard and writes its chunks straight into the partial directory (nothing of the
   output goes through the scheduler), hashing each chunk while it writes it. It returns the chunk
   checksums and the shard's verification errors.
4. Only when every shard has finished does the client write the manifest (the maximum verification error
   of every layer over all shards, every chunk's checksum) and move the run into place. A worker that dies
   has its shard rerun elsewhere (the scheduler's own rescheduling); a shard that raises is retried
   (``retries``); a shard that still fails fails the run with one line naming it, the partial directory
   is removed, and a previous run at ``out`` stays as it was.

Worker processes run TensorFlow, BLAS and OpenMP on one thread each (:data:`WORKER_ENV`; set before a
:class:`~distributed.LocalCluster` starts its processes, and applied again on a worker's first task).

Run directories are local paths or ``file://`` URLs on a file system every worker sees (NFS, Lustre, a
shared disk): the writer's atomic commit is a directory rename, which object stores do not have.

In Python::

    with local_client(2) as client:
        run = write_run_distributed(model, x, "runs/big", client=client, model_path="model.keras")

(tests/test_distributed.py runs it on a two-process cluster; a doctest would start one per example).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gatelens.analysis.distributed import WORKER_ENV, cluster_client, local_client, local_cluster, local_path
from gatelens.errors import GatelensError, GatelensInputError, UsageError
from gatelens.models.extract import batch_spans

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

#: How often a shard that raised is tried again before the run fails (a killed worker's shard is
#: rescheduled by the scheduler on its own, up to ``distributed.scheduler.allowed-failures`` times).
DEFAULT_RETRIES = 2
SHARD_PREFIX = "gatelens-shard"


class ShardError(GatelensError, RuntimeError):
    """A shard of a distributed run failed on every try (exit code 1); the message names the shard.

    Examples
    --------
    >>> from gatelens.errors import exit_code_of, is_user_error
    >>> e = ShardError("shard 3 (sequences 96:128) failed on every try: MemoryError")
    >>> exit_code_of(e), is_user_error(e), isinstance(e, RuntimeError)      # internal, not the user's input
    (1, False, True)
    """

    exit_code = 1


# ----------------------------------------------------------------------------------------------------------------
# clusters


def add_cluster_options(parser: Any) -> None:
    """``--workers N | --scheduler ADDRESS`` on a sub-command (``gatelens extract`` and ``gatelens analyze``)."""
    from gatelens.models.argtypes import MAX_WORKERS, scheduler_address, workers

    g = parser.add_mutually_exclusive_group()
    g.add_argument(
        "--workers",
        type=workers,
        help=f"run on a local Dask cluster of N single-threaded processes (at most {MAX_WORKERS})",
    )
    g.add_argument(
        "--scheduler", metavar="ADDRESS", type=scheduler_address,
        help="run on the Dask cluster of this scheduler (tcp://host:8786)",
    )  # fmt: skip


def wants_cluster(args: Any) -> bool:
    """Whether the parsed command line asked for a cluster."""
    return bool(getattr(args, "workers", None) or getattr(args, "scheduler", None))


# ----------------------------------------------------------------------------------------------------------------
# the plan


@dataclass(frozen=True)
class ShardSpec:
    """What a worker needs to extract and write one shard (picklable; no arrays of the run)."""

    model_path: str
    model_sha256: str
    layers: tuple[str, ...] | None
    partial: str  # the run's partial directory
    groups: dict[str, str]  # layer name -> group path of its arrays inside the run
    infos: tuple[Any, ...]  # LayerInfo of every captured layer
    n_sequences: int
    chunk: int
    batch: int  # sequences per batch of the single-process run (min(batch_size, N)): shards align to it
    batch_size: int  # the batch_size asked for (the extractor pads a short last batch by it)
    dtype: str
    tolerance: float
    verify: str
    sample_size: int
    with_tokens: bool
    with_x: bool
    compile: str = "xla"  # "xla" or "graph": the mode the client chose for the whole input, as write_run would


def shard_bounds(n: int, batch: int, chunk: int, n_workers: int, shard_sequences: int | None = None) -> list[range]:
    """The shards of ``n`` sequences: consecutive ranges of whole batches and whole chunks.

    Each shard holds a whole number of ``lcm(batch, chunk)`` sequences (only the last may be short), about
    four shards per worker unless ``shard_sequences`` says otherwise (rounded up to that unit).

    Examples
    --------
    >>> shard_bounds(10, 4, 4, 1)
    [range(0, 4), range(4, 8), range(8, 10)]
    >>> shard_bounds(10, 4, 2, 2, shard_sequences=5)
    [range(0, 8), range(8, 10)]
    >>> shard_bounds(9, 4, 4, 1)  # the ninth sequence is in the single-process run's last batch (4:9)
    [range(0, 4), range(4, 9)]
    """
    unit = math.lcm(max(1, int(batch)), max(1, int(chunk)))
    units = -(-n // unit)
    if shard_sequences is None:
        per = max(1, -(-units // max(1, 4 * int(n_workers))))
    else:
        if int(shard_sequences) < 1:
            raise UsageError(f"shard_sequences must be positive, got {shard_sequences!r}")
        per = -(-int(shard_sequences) // unit)
    size = per * unit
    shards = [range(s, min(s + size, n)) for s in range(0, n, size)]
    last_batch = batch_spans(n, batch)[-1][0]
    if len(shards) >= 2 and shards[-1].start > last_batch:
        # the last shard would start inside the single-process run's last batch (a short tail joins it): one shard
        shards[-2:] = [range(shards[-2].start, n)]
    return shards


# ----------------------------------------------------------------------------------------------------------------
# the worker side

#: (model path, sha256, layers) -> Extractor, in each worker process, the most recently used last. Bounded: a
#: long-lived cluster that extracts many models keeps only the last :data:`CACHED_MODELS` loaded.
_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHED_MODELS = 2


def _cap_threads() -> None:
    """One thread for BLAS, OpenMP and TensorFlow in this process (before TensorFlow starts its pools)."""
    for k, v in WORKER_ENV.items():
        os.environ.setdefault(k, v)
    from gatelens.models._quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # already initialised: the environment above applied
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def _extractor(spec: ShardSpec) -> tuple[Any, float]:
    """The worker's cached extractor for the spec's model, and the seconds it took to load now (0 if cached)."""
    from gatelens.analysis.store import sha256_file
    from gatelens.errors import ModelFormatError

    key = (spec.model_path, spec.model_sha256, spec.layers)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key], 0.0
        t0 = time.perf_counter()
        _cap_threads()
        try:
            digest = sha256_file(spec.model_path)
        except OSError as e:
            raise ModelFormatError(f"{spec.model_path}: the model file cannot be read on this worker ({e})") from None
        if digest != spec.model_sha256:
            raise ModelFormatError(f"{spec.model_path}: the model file changed after the run started (sha256 differs)")
        from gatelens.models.extract import Extractor
        from gatelens.models.loading import load_model

        ex = Extractor(load_model(spec.model_path), layers=list(spec.layers) if spec.layers else None)
        _CACHE[key] = ex
        while len(_CACHE) > CACHED_MODELS:  # the least recently used model (and its compiled functions) goes
            _CACHE.popitem(last=False)
        return ex, time.perf_counter() - t0


def _region_writer(spec: ShardSpec) -> Any:
    """The store's writer of this shard's chunks into the client's partial run (:class:`RegionWriter`)."""
    from gatelens.analysis.store import RegionWriter

    return RegionWriter(
        spec.partial,
        list(spec.infos),
        groups=spec.groups,
        n_sequences=spec.n_sequences,
        chunk_sequences=spec.chunk,
        with_tokens=spec.with_tokens,
        with_x=spec.with_x,
    )


def extract_shard(spec: ShardSpec, x: np.ndarray | str, start: int) -> dict[str, Any]:
    """Extract sequences ``start : start + len(x)`` and write their chunks into the partial run (a worker task).

    ``x`` is the shard's input, or the ``.npy`` file that holds it.

    Returns ``{"start", "stop", "errors" (per layer), "digests" (chunk file -> sha256), "load_seconds",
    "compute_seconds", "worker" (pid)}``; a user's error or a verification failure comes back as
    ``{"error": (class name, message)}`` (retrying would not change it).
    """
    from gatelens.errors import VerificationError

    t0 = time.perf_counter()
    try:
        ex, load_seconds = _extractor(spec)
        x = np.load(x, allow_pickle=False) if isinstance(x, str) else np.asarray(x)
        n = x.shape[0]
        stop = start + n
        writer = _region_writer(spec)
        errors = {name: 0.0 for name in ex.layer_names}
        try:
            # a shard starts on a batch boundary of the single-process run and iter_batches pads a short last
            # batch by its length and batch_size alone: every batch is the one a single process computes
            for s, res, errs in ex.iter_batches(
                x,
                batch_size=spec.batch_size,
                tolerance=spec.tolerance,
                dtype=spec.dtype,
                verify=spec.verify,
                sample_size=spec.sample_size,
                compile=spec.compile,
                _prepared=True,  # ids: the client tokenised raw text once with the model's own lookup layer
            ):
                errors = {name: max(v, errs[name]) for name, v in errors.items()}
                k = next(iter(res.values()))["mask"].shape[0]
                xb = x[s : s + k]
                writer.write_batch(
                    start + s,
                    res,
                    tokens=xb.astype(np.int32) if spec.with_tokens else None,
                    x=xb if spec.with_x else None,
                )
        finally:
            digests = writer.close()
    except (GatelensInputError, VerificationError) as e:
        return {"error": (type(e).__name__, _one_line(e))}
    return {
        "start": int(start),
        "stop": int(stop),
        "errors": {k: float(v) for k, v in errors.items()},
        "digests": digests,
        "load_seconds": load_seconds,
        "compute_seconds": time.perf_counter() - t0 - load_seconds,
        "worker": os.getpid(),
    }


# ----------------------------------------------------------------------------------------------------------------
# the client side


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _reraise(name: str, message: str, shard: range) -> None:
    import gatelens.errors as errors

    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, GatelensError)):
        cls = ShardError
    raise cls(message)


def _saved_model(model: Any, where: Path) -> Path:
    """``model`` saved as a ``.keras`` file beside the run (workers load it from there through the safe loader)."""
    path = where.parent / f".{where.name}.model-{uuid.uuid4().hex[:12]}.keras"
    model.save(path)
    return path


def _executing(dask_worker: Any) -> list[str]:
    return [ts.key for ts in dask_worker.state.executing]


def _n_workers(client: Any) -> int:
    return max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))


def _settle(client: Any, futures: list[Any], timeout: float = 60.0) -> None:
    """Cancel every shard not finished and wait until no shard of ours runs on any worker any more."""
    client.cancel(futures, force=True)
    keys = {f.key for f in futures}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:  # what the workers themselves still execute (the scheduler forgets a cancelled task at once)
            running = {k for ks in client.run(_executing).values() for k in ks}
        except Exception:  # a worker going away while asked: ask again
            running = keys
        if not running & keys:
            return
        time.sleep(0.1)
    log.warning("shards still running after %.0f s; removing the partial run anyway", timeout)


def write_run_distributed(
    model: Any,
    x: Any,
    out: str | os.PathLike,
    *,
    client: Any,
    model_path: str | os.PathLike | None = None,
    batch_size: int = 256,
    layers: Sequence[str] | None = None,
    dtype: str = "float32",
    tolerance: float | None = None,
    progress: Progress | None = None,
    vocabulary: list[str] | None = None,
    feature_names: list[str] | None = None,
    manifest: Mapping[str, Any] | None = None,
    verify: str | None = None,
    sample_size: int | None = None,
    shard_sequences: int | None = None,
    retries: int = DEFAULT_RETRIES,
    stats: dict[str, Any] | None = None,
    strict_vocab: bool = False,
    compile: str = "auto",
) -> Any:
    """:func:`gatelens.models.extract.write_run` on the Dask cluster of ``client``; the same run, byte for byte.

    Parameters
    ----------
    model : keras.Model
        The model (the client traces it once; the workers load their own copy from ``model_path``).
    x, out, batch_size, layers, dtype, tolerance, progress, vocabulary, feature_names, manifest, verify, sample_size
    compile
        As for :func:`~gatelens.models.extract.write_run` (``compile="auto"`` decided on the whole input, as there). ``out`` may be a ``file://`` URL.
    client : distributed.Client
    model_path : path, optional
        The model's ``.keras`` file on a file system every worker sees; default: ``model`` is saved beside
        ``out`` for the run and removed afterwards.
    shard_sequences : int, optional
        Sequences per task (rounded up to whole batches and chunks); default about four shards per worker.
    retries : int
        Tries again of a shard that raised before the run fails.
    stats : dict, optional
        Filled with ``shards``, ``workers``, ``load_seconds`` (per shard: 0 where the worker had the model
        cached) and ``compute_seconds`` (per shard), for benchmarks.
    strict_vocab : bool
        As for :func:`~gatelens.models.extract.write_run`: a model with its own lookup layer tokenises on the
        client (once, before any shard), and the unknown tokens it met are counted in the manifest's
        ``unknown_tokens`` (or, with ``strict_vocab``, are a DataError before anything is written).

    Returns
    -------
    Trace
        The run, opened lazily.

    Raises
    ------
    ShardError
        A shard failed on every try (the message names its sequences and the error).
    """
    from distributed import as_completed

    from gatelens.analysis.store import RunWriter, open_run, sha256_file
    from gatelens.models.extract import (
        DEFAULT_SAMPLE_SIZE,
        DEFAULT_TOLERANCE,
        DEFAULT_VERIFY,
        Extractor,
        _check_strict,
        _check_verify,
        _compile_meta,
        _finish_run,
    )

    tolerance = DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
    verify = DEFAULT_VERIFY if verify is None else verify
    sample_size = DEFAULT_SAMPLE_SIZE if sample_size is None else int(sample_size)
    out = local_path(out)
    ex = model if isinstance(model, Extractor) else Extractor(model, layers=layers)
    _check_verify(verify, sample_size)
    x, unknown = ex.to_ids(x)  # raw text through the model's own lookup layer, as write_run does; the shards get ids
    _check_strict(ex, unknown, strict_vocab)
    n, t = int(x.shape[0]), int(x.shape[1])
    mode = ex.compile_mode(x, compile)  # for the whole input, as write_run decides: the shards run the same batches
    ex.prepare(dtype, verify, sample_size, mode)  # traced, not run: the weights (embeddings included) are known
    infos = [d.info for d in ex.directions]
    with_tokens = bool(ex.integer_input)
    n_features = None if with_tokens else int(x.shape[2]) if x.ndim == 3 else None
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = None
    if model_path is None:
        saved = _saved_model(ex.model, out)
        model_path = saved
    model_path = local_path(model_path).resolve()
    writer = None
    inputs = None
    futures: list[Any] = []
    try:
        writer = RunWriter(
            out,
            infos,
            n_sequences=n,
            n_steps=t,
            dtype=dtype,
            chunk_sequences=batch_size,
            weights=ex.weights(),
            with_tokens=with_tokens,
            n_features=n_features,
        )
        keys = getattr(writer, "keys", None) or {}
        spec = ShardSpec(
            model_path=str(model_path),
            model_sha256=sha256_file(model_path),
            layers=tuple(layers) if layers else None,
            partial=str(writer.tmp.resolve()),
            groups={info.name: f"layers/{keys.get(info.name, info.name)}" for info in infos},
            infos=tuple(infos),
            n_sequences=n,
            chunk=writer.chunk,
            batch=max(1, min(int(batch_size), n)),
            batch_size=int(batch_size),
            dtype=dtype,
            tolerance=tolerance,
            verify=verify,
            sample_size=sample_size,
            with_tokens=with_tokens,
            with_x=n_features is not None,
            compile=mode,
        )
        workers = _n_workers(client)
        shards = shard_bounds(n, spec.batch, spec.chunk, workers, shard_sequences)
        if progress is not None:
            progress(0, n)
        token = uuid.uuid4().hex[:12]
        # the inputs of every shard as .npy files beside the run: a worker reads its own (nothing goes through
        # the scheduler), and a shard rerun after its worker died finds them again (scattered data would die
        # with the worker)
        inputs = out.parent / f".{out.name}.inputs-{token}"
        inputs.mkdir()
        by_key: dict[str, range] = {}
        for i, r in enumerate(shards):
            data = inputs / f"shard-{i:06d}.npy"
            np.save(data, x[r.start : r.stop], allow_pickle=False)
            key = f"{SHARD_PREFIX}-{token}-{i}"
            futures.append(client.submit(extract_shard, spec, str(data), r.start, key=key, retries=retries, pure=False))
            by_key[key] = r
        errors = {name: 0.0 for name in ex.layer_names}
        digests: dict[str, str] = {}
        loads, computes = [], []
        done = 0
        for fut in as_completed(futures):
            r = by_key[fut.key]
            try:
                res = fut.result()
            except Exception as e:
                raise ShardError(
                    f"shard of sequences {r.start}..{r.stop - 1} failed on every try ({retries + 1}): "
                    f"{type(e).__name__}: {_one_line(e)}; no run was written to {out}"
                ) from None
            if "error" in res:
                _reraise(*res["error"], r)
            for name, err in res["errors"].items():
                errors[name] = max(errors[name], err)
            digests.update(res["digests"])
            loads.append(res["load_seconds"])
            computes.append(res["compute_seconds"])
            done += r.stop - r.start
            if progress is not None:
                progress(done, n)
        writer._digests.update(digests)  # the chunk files the workers wrote and hashed
        writer._written = n
        _finish_run(
            writer,
            ex,
            x,
            errors,
            tolerance=tolerance,
            batch_size=batch_size,
            vocabulary=vocabulary,
            feature_names=feature_names,
            verify=verify,
            sample_size=sample_size,
            unknown=unknown,
            manifest=dict(manifest or {}),
            compile_meta=_compile_meta(ex, x.shape, compile, mode, dtype=dtype, verify=verify, sample_size=sample_size),
        )
        if stats is not None:
            stats.update(shards=len(shards), workers=workers, load_seconds=loads, compute_seconds=computes)
    except BaseException:
        if futures:
            _settle(client, futures)
        if writer is not None:
            writer.abort()
        raise
    finally:
        if saved is not None:
            saved.unlink(missing_ok=True)
        if inputs is not None:
            for p in inputs.glob("shard-*.npy"):
                p.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                inputs.rmdir()
    return open_run(out, verify=False)


__all__ = [
    "WORKER_ENV",
    "ShardError",
    "ShardSpec",
    "add_cluster_options",
    "cluster_client",
    "extract_shard",
    "local_client",
    "local_cluster",
    "local_path",
    "shard_bounds",
    "wants_cluster",
    "write_run_distributed",
]


def cli_write_run(
    model: Any, x: Any, out: str | os.PathLike, *, workers: int | None, scheduler: str | None, **kwargs: Any
) -> Any:
    """``gatelens extract ... --workers N | --scheduler ADDRESS``: :func:`write_run_distributed` on that cluster."""
    with cluster_client(workers, scheduler) as client:
        return write_run_distributed(model, x, out, client=client, **kwargs)
