# ruff: noqa: E402  (the import path and TF log level are set before the heavy imports)
"""Extraction speed of the documented calls, measured side by side with ``model.predict`` in one process.

For a 2x128 char-level LSTM and a 1x512 LSTM, on 256 and on 300 sequences x 200 steps (300 = one full batch
of 256 and a short one), it times the calls the README documents -- ``gatelens.extract(model, x)`` in memory
and ``gatelens.write_run(model, x, out, dtype="float16")`` into the store, no hand-held ``Extractor`` -- in
each verification mode, interleaved with ``model.predict`` (``--repeats`` rounds; the median is reported).
The first (cold) call of each, which traces and compiles, is reported separately. Each ``write_run`` writes
a new directory, removed right after its timing (untimed), so no call finds the page cache full of earlier
runs. The physical bound is the
recurrent step's matrix product alone, ``(B, units) @ (units, 4 units)`` sequentially ``T`` times per layer
(XLA-compiled), and ``bound %`` is that time as a share of each method's. Ratios are time / predict time.
Nothing is asserted: the numbers go into the README.

    python benchmarks/extract.py [--repeats 5] [--quick] [--modes cell,full,sample] [--dtypes float32,float16]

``--dtypes float32,float16`` times ``write_run`` with each storage type side by side (same rounds, same data).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

# benchmarks/analysis.py would shadow the `analysis` package: drop this folder from the import path
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

import gatelens

VOCAB = 96
MODES = ("cell", "full", "sample")


def char_model(layers: int, units: int, steps: int) -> keras.Model:
    inp = keras.Input((steps,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, 32)(inp)
    for _ in range(layers):
        h = keras.layers.LSTM(units, return_sequences=True)(h)
    out = keras.layers.Dense(VOCAB)(h)
    return keras.Model(inp, out, name=f"char_{layers}x{units}")


def recurrent_bound(model: keras.Model, n: int, steps: int, batch_size: int) -> float:
    """Seconds of the recurrent matrix products alone: per layer and batch, T dependent (B, u) @ (u, 4u)."""
    total = 0.0
    for layer in model.layers:
        if not isinstance(layer, keras.layers.LSTM):
            continue
        u = layer.units
        rk = tf.constant(layer.cell.recurrent_kernel.numpy())

        @tf.function(jit_compile=True)
        def chain(h, rk=rk, u=u):
            def step(h, _):
                return tf.matmul(h, rk)[:, :u]

            return tf.scan(step, tf.zeros((steps,)), initializer=h)[-1]

        sizes = [min(batch_size, n - s) for s in range(0, n, batch_size)]
        hs = [tf.random.normal((b, u)) for b in sizes]
        for h in hs:  # compile
            chain(h).numpy()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for h in hs:
                chain(h).numpy()
            best = min(best, time.perf_counter() - t0)
        total += best
    return total


def bench(
    model: keras.Model,
    x: np.ndarray,
    repeats: int,
    batch_size: int,
    tmp: str,
    modes: tuple[str, ...] = MODES,
    dtypes: tuple[str, ...] = ("float16",),
) -> tuple[dict, dict]:
    counter = iter(range(10**9))

    def out() -> str:  # a new run directory each call: replacing an earlier run (its rmtree) is not measured
        return os.path.join(tmp, f"run{next(counter)}")

    methods = {"model.predict": lambda: model.predict(x, batch_size=batch_size, verbose=0)}
    for mode in modes:
        methods[f"extract(model, x), verify={mode}"] = lambda m=mode: gatelens.extract(
            model, x, batch_size=batch_size, verify=m
        )
        for dtype in dtypes:  # --dtypes float32,float16: the two storage types side by side
            methods[f"write_run(model, x, out, {dtype}), verify={mode}"] = lambda m=mode, d=dtype: gatelens.write_run(
                model, x, out(), batch_size=batch_size, dtype=d, verify=m
            )

    def clear() -> None:
        """Remove the runs written so far, after the timing: a user's next call does not find gigabytes of
        just-written runs in the page cache (1x512, N = 300 took 3.5x `predict` when each fresh 1.2 GB
        array first had to be reclaimed from the up to 6 GB of runs the benchmark kept)."""
        for d in os.listdir(tmp):
            shutil.rmtree(os.path.join(tmp, d), ignore_errors=True)

    cold = {}
    for name, fn in methods.items():  # the first call: tracing and XLA compilation included
        t0 = time.perf_counter()
        fn()
        cold[name] = time.perf_counter() - t0
        clear()
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(repeats):  # interleaved, so drifts in machine load hit every method alike
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            clear()
    return {k: statistics.median(v) for k, v in times.items()}, cold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller inputs, 2 repeats (a smoke run)")
    ap.add_argument("--modes", default=",".join(MODES), help="verification modes, comma-separated (default: all)")
    ap.add_argument("--dtypes", default="float16", help="write_run storage types, comma-separated: float32,float16")
    args = ap.parse_args()
    modes, dtypes = tuple(args.modes.split(",")), tuple(args.dtypes.split(","))
    sizes, steps, repeats = ((256, 300), 200, args.repeats) if not args.quick else ((32, 40), 50, 2)
    batch_size = 256 if not args.quick else 32
    print(f"gatelens extraction: {sizes} sequences x {steps} steps, batch {batch_size}, median of {repeats} rounds")
    print(f"TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores, {platform.machine()}")
    print(f"load average at the start: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print()
    print("| model | N | method | seconds | x predict | bound % | first call s |")
    print("|---|---:|---|---:|---:|---:|---:|")
    tmp = tempfile.mkdtemp(prefix="gatelens-bench-")
    try:
        for layers, units in ((2, 128), (1, 512)):
            model = char_model(layers, units, steps)
            for n in sizes:
                x = np.random.default_rng(n).integers(0, VOCAB, size=(n, steps)).astype("int32")
                med, cold = bench(model, x, repeats, batch_size, tmp, modes, dtypes)
                bound = recurrent_bound(model, n, steps, batch_size)
                base = med["model.predict"]
                tag = f"{layers}x{units}"
                print(
                    f"| {tag} | {n} | recurrent matmul alone (the bound) | {bound:.3f} | {bound / base:.2f} | 100 | |"
                )
                for name, sec in med.items():
                    print(
                        f"| {tag} | {n} | {name} | {sec:.3f} | {sec / base:.2f} | {100 * bound / sec:.0f} "
                        f"| {cold[name]:.2f} |"
                    )
                sys.stdout.flush()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
