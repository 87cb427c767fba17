# ruff: noqa: E402  (the import path and TF log level are set before the heavy imports)
"""Extraction speed, measured side by side with ``model.predict`` in one process.

Prints, for a 2x128 char-level LSTM (256 sequences x 200 steps) and a 1x512 LSTM, the median of
``--repeats`` interleaved runs of: ``model.predict``; ``extract`` in memory and ``write_run`` into the
store (float16), each with ``verify="full"`` (the default: every step of every sequence checked against
Keras) and ``verify="sample"`` (Keras re-runs 8 + 1 sequences per batch); a naive baseline (a Python loop
calling each layer's cell step by step). Ratios are time / predict time. Nothing is asserted: the numbers
go into the README.

    python benchmarks/extract.py [--repeats 5] [--quick]
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

from gatelens.models.extract import Extractor, extract, write_run

VOCAB = 96


def char_model(layers: int, units: int, steps: int) -> keras.Model:
    inp = keras.Input((steps,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, 32)(inp)
    for _ in range(layers):
        h = keras.layers.LSTM(units, return_sequences=True)(h)
    out = keras.layers.Dense(VOCAB)(h)
    return keras.Model(inp, out, name=f"char_{layers}x{units}")


def naive_extract(model: keras.Model, x: np.ndarray) -> dict:
    """The obvious approach: call each LSTM cell step by step from Python, keeping every state."""
    h = model.layers[1](x)  # the embedding
    out = {}
    for layer in model.layers[2:-1]:
        cell = layer.cell
        b = h.shape[0]
        state = [tf.zeros((b, cell.units)), tf.zeros((b, cell.units))]
        hs, cs = [], []
        for t in range(h.shape[1]):
            y, state = cell(h[:, t], state)
            hs.append(y)
            cs.append(state[1])
        h = tf.stack(hs, axis=1)
        out[layer.name] = (h.numpy(), tf.stack(cs, axis=1).numpy())
    return out


def bench(model: keras.Model, x: np.ndarray, repeats: int, batch_size: int) -> dict:
    ex = Extractor(model)
    tmp = tempfile.mkdtemp(prefix="gatelens-bench-")
    naive_n = min(32, x.shape[0])
    methods = {
        "model.predict": lambda: model.predict(x, batch_size=batch_size, verbose=0),
        "extract, in memory (verify=full)": lambda: extract(ex, x, batch_size=batch_size),
        "extract, in memory (verify=sample)": lambda: extract(ex, x, batch_size=batch_size, verify="sample"),
        "extract into the store, float16 (verify=full)": lambda: write_run(
            ex, x, os.path.join(tmp, "run"), batch_size=batch_size, dtype="float16"
        ),
        "extract into the store, float16 (verify=sample)": lambda: write_run(
            ex, x, os.path.join(tmp, "run"), batch_size=batch_size, dtype="float16", verify="sample"
        ),
        "naive Python loop over the cell": lambda: naive_extract(model, x[:naive_n]),
    }
    for fn in methods.values():  # warm-up: tracing and XLA compilation are not what we measure
        fn()
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(repeats):  # interleaved, so drifts in machine load hit every method alike
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    med["naive Python loop over the cell"] *= x.shape[0] / naive_n  # ran on a slice: scaled to the input
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller inputs, 2 repeats (a smoke run)")
    args = ap.parse_args()
    n, steps, repeats = (256, 200, args.repeats) if not args.quick else (32, 50, 2)
    x = np.random.default_rng(0).integers(0, VOCAB, size=(n, steps)).astype("int32")
    print(f"gatelens extraction: {n} sequences x {steps} steps, median of {repeats} interleaved runs")
    print(f"TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores, {platform.machine()}")
    print()
    print("| model | method | seconds | x predict |")
    print("|---|---|---:|---:|")
    for layers, units in ((2, 128), (1, 512)):
        med = bench(char_model(layers, units, steps), x, repeats, batch_size=256)
        base = med["model.predict"]
        for name, sec in med.items():
            print(f"| {layers}x{units} | {name} | {sec:.3f} | {sec / base:.2f} |")


if __name__ == "__main__":
    main()
