"""Throughput of extraction and analysis on a Dask LocalCluster of 1 and 2 workers against one process.

For a numeric LSTM(64) -> GRU(32) model on N sequences of T steps (fixed random weights, seed 0) the script
measures, in sequences per second:

* ``write_run`` in this process (the single-process path, after one warm-up run that compiles);
* ``write_run_distributed`` on a fresh ``LocalCluster`` of 1 and 2 single-threaded worker processes: the
  first run (every worker loads the model through the safe loader and compiles it) and a second, warm
  run (the models are cached per worker);
* ``analyze_run`` in this process and ``analyze_distributed`` on the same clusters.

It also reports the cost per shard of loading the model on a worker (the first shard a worker runs pays
it; later shards find the model cached), so that a reader can project: with W workers, S shards and a
per-shard compute time c, a run takes about ``load + (S / W) * c``. The cluster's start-up (processes,
imports) is reported apart. Nothing is asserted.

    python benchmarks/scale.py [--n 512] [--steps 100] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build_model(path: Path, steps: int, features: int = 4) -> Path:
    import keras
    import numpy as np

    model = keras.Sequential(
        [
            keras.Input((steps, features)),
            keras.layers.LSTM(64, return_sequences=True, name="lstm"),
            keras.layers.GRU(32, return_sequences=True, name="gru"),
            keras.layers.Dense(1, name="head"),
        ]
    )
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(scale=0.3, size=w.shape).astype("float32") for w in model.get_weights()])
    model.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=512, help="sequences")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.batch_size = 32, 10, 8
    import numpy as np
    from distributed import Client

    from gatelens.analysis.distributed import analyze_distributed, local_cluster
    from gatelens.analysis.pipeline import analyze_run
    from gatelens.models.distributed import write_run_distributed
    from gatelens.models.extract import write_run
    from gatelens.models.loading import load_model

    tmp = Path(tempfile.mkdtemp(prefix="gatelens-scale-"))
    rows = []
    try:
        path = build_model(tmp / "model.keras", args.steps)
        model = load_model(path)
        x = np.random.default_rng(1).normal(size=(args.n, args.steps, 4)).astype(np.float32)
        n = args.n
        write_run(model, x, tmp / "warm", batch_size=args.batch_size)  # compiles
        t0 = time.perf_counter()
        write_run(model, x, tmp / "single", batch_size=args.batch_size)
        single = time.perf_counter() - t0
        t0 = time.perf_counter()
        analyze_run(tmp / "single")
        single_an = time.perf_counter() - t0
        rows.append(("1 process", "-", f"{n / single:.0f}", "-", f"{n / single_an:.0f}", "-", "-"))
        for workers in (1, 2):
            t0 = time.perf_counter()
            with local_cluster(workers) as cluster, Client(cluster) as client:
                client.wait_for_workers(workers)
                startup = time.perf_counter() - t0
                first: dict = {}
                t0 = time.perf_counter()
                write_run_distributed(
                    model, x, tmp / f"d{workers}", client=client, model_path=path, batch_size=args.batch_size,
                    stats=first,
                )  # fmt: skip
                cold = time.perf_counter() - t0
                warm: dict = {}
                t0 = time.perf_counter()
                write_run_distributed(
                    model, x, tmp / f"d{workers}", client=client, model_path=path, batch_size=args.batch_size,
                    stats=warm,
                )  # fmt: skip
                hot = time.perf_counter() - t0
                t0 = time.perf_counter()
                analyze_distributed(tmp / f"d{workers}", client=client)
                an = time.perf_counter() - t0
            loads = [s for s in first["load_seconds"] if s > 0]
            per_shard = statistics.median(warm["compute_seconds"])
            rows.append(
                (
                    f"{workers} worker{'s' if workers > 1 else ''}",
                    f"{n / cold:.0f}",
                    f"{n / hot:.0f}",
                    f"{statistics.median(loads):.1f} s x {len(loads)}",
                    f"{n / an:.0f}",
                    f"{warm['shards']} x {per_shard:.2f} s",
                    f"{startup:.1f}",
                )
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"N={args.n} sequences x T={args.steps} steps, LSTM(64) -> GRU(32), batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print()
    print("| path | extract seq/s (first run) | extract seq/s (warm) | model load per worker | analyze seq/s "
          "| shards x compute | cluster start s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
