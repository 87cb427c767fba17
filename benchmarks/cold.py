"""Cold start: ``gatelens extract`` of a demo in a fresh process against a plain Keras load and predict.

Each pair runs, in fresh Python processes one after the other, (a) ``gatelens extract MODEL DATA --out RUN``
(the safe loader and its isolated worker, tokenising, compiling, verifying, writing the run, manifest last)
and (b) ``keras.saving.load_model(MODEL).predict(x)`` on the same token ids, saved once beforehand. Prints
the wall time and the CPU time (user + system of the process and its children) of each, the median of
``--repeats`` pairs and the median of the paired ratios. With ``--profile`` it also prints where the
extract process spends its time (``python -X importtime`` totals and a cProfile of the command). With
``--dashboard`` it also times, in a fresh ``streamlit run`` server and Debian's headless Chromium, an upload's
way to its first chart (``benchmarks/dashboard.py``'s flow and model, 256 sequences, without waiting for the
later stages). The load average is printed beside the numbers. Nothing is asserted: the numbers go into the
README.

    python benchmarks/cold.py [--repeats 5] [--model char_lstm] [--data code_sample.txt] [--profile] [--dashboard]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]
REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "data" / "demo"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}

PREDICT = """
import sys, numpy as np, keras
model = keras.saving.load_model(sys.argv[1], compile=False)
model.predict(np.load(sys.argv[2]), batch_size=256, verbose=0)
"""


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child and its children) of one command run to completion."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def token_ids(model: Path, data: Path, out: Path) -> tuple[int, ...]:
    """The model's input for ``data``, as ``gatelens extract`` reads it, saved to ``out`` (.npy)."""
    code = f"""
import numpy as np
from gatelens.models.loading import load_model
from gatelens.models.data import load_data
from gatelens.models.spec import input_spec, read_vocabulary, sidecar_vocabulary_path
m = load_model({str(model)!r})
side = sidecar_vocabulary_path({str(model)!r})
spec = input_spec(m, vocabulary=read_vocabulary(side) if side else None)
x = load_data({str(data)!r}, spec).x
np.save({str(out)!r}, x)
print(list(x.shape))
"""
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True)
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


def profile(model: Path, data: Path, tmp: Path) -> None:
    """Where a cold ``gatelens extract`` spends its time: imports (-X importtime) and the command (cProfile)."""
    out = tmp / "profiled"
    cmd = [sys.executable, "-X", "importtime", "-m", "gatelens", "extract", str(model), str(data), "--out", str(out)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=True)
    rows = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cum, name = (p.strip() for p in line[len("import time:") :].split("|"))
            if cum.isdigit():
                rows.append((int(cum), name))
    top = [r for r in rows if not r[1].startswith(" ")]  # top-level imports only (no indentation)
    print("\nslowest top-level imports (cumulative, ms):")
    for cum, name in sorted(top, reverse=True)[:8]:
        print(f"  {cum / 1000:8.0f}  {name}")
    stats = tmp / "extract.pstats"
    subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(stats), "-m", "gatelens", "extract", str(model), str(data),
         "--out", str(tmp / "profiled2")],
        env=ENV, capture_output=True, check=True,
    )  # fmt: skip
    import pstats

    print("\ncProfile of the command (cumulative, top 15):")
    pstats.Stats(str(stats)).sort_stats("cumulative").print_stats(15)


def dashboard_first_chart(n: int = 256) -> float:
    """Seconds from setting the data file on the Data page to the Units page's first chart (a fresh server)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_dashboard", Path(__file__).with_name("dashboard.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="gatelens-cold-dashboard-") as d:
        model_path, data = bench.build_inputs(Path(d), [n])
        with bench.StreamlitServer(log_path=Path(d) / "server.log", timeout=300) as server, sync_playwright() as pw:
            browser = bench.launch_browser(pw)
            try:
                timed = bench.upload_flow(browser, server.url, model_path, data[n], tour=False, until_ready=False)
                return timed["first"]
            finally:
                browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="char_lstm")
    ap.add_argument("--data", default="code_sample.txt")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--dashboard", action="store_true", help="also time an upload to its first chart (Chromium)")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    model, data = DEMO / f"{args.model}.keras", DEMO / args.data
    with tempfile.TemporaryDirectory(prefix="gatelens-cold-") as d:
        tmp = Path(d)
        shape = token_ids(model, data, tmp / "x.npy")
        extract = [sys.executable, "-m", "gatelens", "extract", str(model), str(data), "--out", str(tmp / "run")]
        predict = [sys.executable, "-c", PREDICT, str(model), str(tmp / "x.npy")]
        pairs = []
        for _ in range(args.repeats):
            pairs.append((timed(extract), timed(predict)))
        print(f"cold start, {args.model} on {args.data} {shape}: median of {args.repeats} paired fresh processes")
        print()
        print("| command | wall s | CPU s |")
        print("|---|---:|---:|")
        for i, label in enumerate(("gatelens extract (default verify)", "load_model + predict")):
            wall = statistics.median(p[i][0] for p in pairs)
            cpu = statistics.median(p[i][1] for p in pairs)
            print(f"| {label} | {wall:.2f} | {cpu:.2f} |")
        ratio_wall = statistics.median(a[0] / b[0] for a, b in pairs)
        ratio_cpu = statistics.median(a[1] / b[1] for a, b in pairs)
        print(f"| ratio (median of the paired ratios) | {ratio_wall:.2f}x | {ratio_cpu:.2f}x |")
        print(f"\nload average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; {os.cpu_count()} CPU(s)")
        if args.dashboard:
            first = dashboard_first_chart()
            print(f"dashboard: upload (256 sequences x 80 steps) to first chart {first:.1f} s "
                  f"(load average {os.getloadavg()[0]:.1f} after)")  # fmt: skip
        if args.profile:
            profile(model, data, tmp)


if __name__ == "__main__":
    main()
