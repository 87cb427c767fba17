# ruff: noqa: E402  (the import path is set before the project's imports)
"""Run-store write speed: ``RunWriter`` on the paths it can take, beside hashing and plain file writes.

The shape is what ``write_run`` stores for a 2x128 char-level LSTM on 256 sequences x 200 steps in
float16: per layer 10 signals (256, 200, 128) float16, the mask, the layer's float32 input (embedding
width 32, then 128), and the token ids; about 290 MB. The data (sigmoid-like values) are generated
once; every row is the median of ``--repeats`` runs, interleaved (one run of each row per round), in
one process, so that load from other processes hits every row alike. A ``RunWriter`` row is the whole
write: create the arrays and write the weights, one ``write_batch``, ``finish`` (hashes, manifest,
rename); a second table splits it into those three. Nothing is asserted.

    python benchmarks/store.py [--repeats 5] [--quick] [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

# benchmarks/analysis.py would shadow the `analysis` package: drop this folder from the import path
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

import numpy as np
import zarr

from gatelens.analysis.store import RunWriter
from gatelens.analysis.trace import LayerInfo

WRITERS = {  # label: RunWriter keyword arguments
    "RunWriter, zarr path, Blosc lz4 (the codec before)": {"compression": "lz4", "direct_chunks": False},
    "RunWriter, zarr path, raw chunks": {"compression": None, "direct_chunks": False},
    "RunWriter, direct raw chunks (default)": {"compression": None, "direct_chunks": True},
}


def make_data(n: int, t: int, units: int, embed: int, layers: int, seed: int = 0):
    """Layer infos, one batch as ``write_run`` hands it to ``RunWriter.write_batch`` (float16 signals), weights."""
    rng = np.random.default_rng(seed)
    infos, batch = [], {}
    for k in range(layers):
        name = "lstm" if k == 0 else f"lstm_{k}"
        info = LayerInfo(name=name, cell_type="lstm", units=units, input_dim=embed if k == 0 else units)
        sig = {}
        for s in info.signals:
            z = rng.standard_normal((n, t, units), np.float32)
            sig[s] = (z if s.endswith("_pre") or s == "cell_state" else 1 / (1 + np.exp(-2 * z))).astype(np.float16)
        sig["mask"] = np.ones((n, t), bool)
        sig["input"] = rng.standard_normal((n, t, info.input_dim), np.float32)
        infos.append(info)
        batch[name] = sig
    tokens = rng.integers(0, 96, (n, t), dtype=np.int32)
    weights = {
        info.name: {
            "kernel": rng.standard_normal((info.input_dim, 4 * units), np.float32),
            "recurrent_kernel": rng.standard_normal((units, 4 * units), np.float32),
            "bias": rng.standard_normal(4 * units, np.float32),
        }
        for info in infos
    }
    weights["lstm"]["embedding"] = rng.standard_normal((96, embed), np.float32)
    return infos, batch, tokens, weights


def buffers(batch, tokens) -> list[np.ndarray]:
    return [a for sig in batch.values() for a in sig.values()] + [tokens]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of the script)")
    ap.add_argument("--dir", default=None, help="where to write (default: the system's temporary directory)")
    args = ap.parse_args(argv)
    n, t, units, embed, layers = (16, 20, 8, 4, 2) if args.quick else (256, 200, 128, 32, 2)
    repeats = 2 if args.quick else args.repeats
    infos, batch, tokens, weights = make_data(n, t, units, embed, layers)
    bufs = buffers(batch, tokens)
    total = sum(b.nbytes for b in bufs)
    root = tempfile.mkdtemp(prefix="gatelens-bench-store-", dir=args.dir)
    pool = ThreadPoolExecutor(2)
    counter = iter(range(1 << 30))

    phases: dict[str, list[tuple[float, float, float]]] = {k: [] for k in WRITERS}

    def write_run_store(label: str) -> None:
        out = os.path.join(root, f"run{next(counter)}")
        t0 = time.perf_counter()
        w = RunWriter(
            out,
            infos,
            n_sequences=n,
            n_steps=t,
            dtype="float16",
            chunk_sequences=n,
            weights=weights,
            with_tokens=True,
            **WRITERS[label],
        )
        t1 = time.perf_counter()
        w.write_batch(0, batch, tokens=tokens)
        t2 = time.perf_counter()
        w.finish({})
        phases[label].append((t1 - t0, t2 - t1, time.perf_counter() - t2))
        shutil.rmtree(out)

    def sha256_all(threads: int) -> None:
        def h(b: np.ndarray) -> str:
            return hashlib.sha256(memoryview(b).cast("B")).hexdigest()

        list(pool.map(h, bufs)) if threads == 2 else [h(b) for b in bufs]

    def write_all(hash_too: bool, block: int = 0) -> None:
        d = os.path.join(root, f"raw{next(counter)}")
        os.mkdir(d)

        def put(k: int) -> None:
            data = memoryview(bufs[k]).cast("B")
            h = hashlib.sha256()
            with open(os.path.join(d, str(k)), "wb") as f:
                for o in range(0, len(data), block or len(data)):
                    f.write(data[o : o + (block or len(data))])
                    if hash_too and block:
                        h.update(data[o : o + block])
            if hash_too and not block:
                h.update(data)

        list(pool.map(put, range(len(bufs))))
        shutil.rmtree(d)

    rows: dict[str, Callable[[], None]] = {label: (lambda label=label: write_run_store(label)) for label in WRITERS}
    rows["reference: sha256 of the buffers, 1 thread"] = lambda: sha256_all(1)
    rows["reference: sha256 of the buffers, 2 threads"] = lambda: sha256_all(2)
    rows["reference: plain file writes, 2 threads"] = lambda: write_all(False)
    rows["reference: file writes, then sha256 of each, 2 threads"] = lambda: write_all(True)
    rows["reference: file writes + sha256 per 256 KiB block, 2 threads"] = lambda: write_all(True, 1 << 18)
    times: dict[str, list[float]] = {k: [] for k in rows}
    for f in rows.values():  # warm-up: imports, codecs, page cache
        f()
    for v in phases.values():
        v.clear()
    for _ in range(repeats):
        for k, f in rows.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    before = med[next(iter(WRITERS))]
    print(
        f"RunWriter: {layers} layers x {units} units, N={n}, T={t}, float16 signals, {total / 1e6:.0f} MB in "
        f"{len(bufs)} arrays; zarr {zarr.__version__}, numpy {np.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; median of {repeats} interleaved runs"
    )
    print()
    print("| what | seconds | MB/s | x before |")
    print("|---|---:|---:|---:|")
    for k, s in med.items():
        print(f"| {k} | {s:.3f} | {total / 1e6 / s:.0f} | {s / before:.2f} |")
    print()
    print("| RunWriter | create arrays s | write_batch s | finish s |")
    print("|---|---:|---:|---:|")
    for k, v in phases.items():
        init, write, finish = (statistics.median(x) for x in zip(*v))
        print(f"| {k.removeprefix('RunWriter, ')} | {init:.3f} | {write:.3f} | {finish:.3f} |")


if __name__ == "__main__":
    main()
