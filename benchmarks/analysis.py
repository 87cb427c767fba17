"""Time and peak memory of ``gatelens analyze`` on the 2x128 char-LSTM run, as the number of sequences grows.

For N, 2N and 4N windows of ``--steps`` characters of ``data/corpus/python_stdlib.txt``, the script
writes a run with ``models.write_run`` and then measures the real command line, ``gatelens analyze
RUN``, in a child process: wall time and peak resident memory (the highest sum of the RSS of that child
and of the worker processes it starts for a large run, :mod:`gatelens.analysis.parallel`, sampled every 0.1 s;
at least the child's own ``ru_maxrss`` from ``os.wait4``). A second child does what the command does before it analyses -- import the
command's modules and ``open_run`` (checksums verified) -- and gives the start-up baseline, so the
memory the analysis itself adds, and its growth with N, are visible. The analysis reads runs a chunk
of sequences at a time, so that part should stay flat as N grows.

The model is a 2x128 char LSTM demo from ``data/demo/`` when one is there (a model card with 2 LSTM
layers of 128 units), otherwise benchmarks/extract.py's ``char_model(2, 128, T)`` with fixed random
weights (seed 0); ``--model`` benchmarks any char-level ``.keras`` model with a vocabulary side-car.
The output says which.

``--profile-steps`` (Linux) adds a table per analysis step -- seconds, the step's own peak (above the
RSS it started from) and the RSS held after it -- from a child that runs ``gatelens.analysis.pipeline.analyze``
and ``save_analysis`` directly; the peak is VmHWM, reset between steps through ``/proc/self/clear_refs``.
RSS is what the kernel reports: memory freed by one step and kept by the allocator is reused by the next
without showing, so per-step numbers attribute growth roughly; the command's peak is exact. Nothing is
asserted.

    python benchmarks/analysis.py [--n 256] [--steps 200] [--dtype float16] [--profile-steps] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path and this file's name would shadow the
# `analysis` package: import from the repository root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
from gatelens._console import configure_process  # noqa: E402

configure_process()  # the console script's process settings, here and in every child, before NumPy is imported
CORPUS = ROOT / "data" / "corpus" / "python_stdlib.txt"
DEMO_DIR = ROOT / "data" / "demo"
MULTIPLES = (1, 2, 4)
QUICK_MULTIPLES = (1, 2)
MIB = 1024 * 1024

# What `gatelens analyze RUN` does before it analyses (gatelens/cli/main.py: main, then cmd_analyze).
BASELINE_CODE = """
import sys
import gatelens.cli.main
gatelens.cli.main.build_parser()
from gatelens.analysis.store import RunStoreError, open_run
from gatelens.errors import GatelensInputError
from gatelens.analysis.pipeline import analyze, save_analysis
open_run(sys.argv[1])
"""


# ----------------------------------------------------------------------------------------------------------------
# measuring a child process


@dataclass
class Measured:
    seconds: float
    peak_mib: float  # the command's process alone (ru_maxrss)
    stdout: str
    tree_mib: float  # the command and its worker processes together (sampled; at least peak_mib)


# On Linux a child's ru_maxrss starts from the RSS of the process it was forked from (the high-water mark
# survives exec), and this process holds TensorFlow and a model. So each command is started by a small
# fresh Python that reports the rusage of its own child alone.
# ``gatelens analyze`` of a large run also starts worker processes (gatelens.analysis.parallel): the launcher samples
# the RSS of the command and all its descendants together every 0.1 s, and reports the highest sum.
LAUNCHER = """
import json, os, subprocess, sys, threading, time
import psutil
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
tree_peak = 0
ended = threading.Event()
def sample():
    global tree_peak
    top = psutil.Process(proc.pid)
    while not ended.is_set():
        try:
            procs = [top, *top.children(recursive=True)]
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            tree_peak = max(tree_peak, total)
        except psutil.Error:
            return
        ended.wait(0.1)
threading.Thread(target=sample, daemon=True).start()
_, status, usage = os.wait4(proc.pid, 0)
ended.set()
seconds = time.perf_counter() - t0
with open(sys.argv[1], "w") as f:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "seconds": seconds, "maxrss": usage.ru_maxrss,
               "tree_peak": tree_peak}, f)
"""


def measure(cmd: list[str]) -> Measured:
    """Run ``cmd``; its wall time and the peak RSS of that process alone, or exit with its stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rusage.json"
        rc = subprocess.call([sys.executable, "-c", LAUNCHER, str(report), *cmd], stdout=out, stderr=err, cwd=ROOT)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        doc = json.loads(report.read_text()) if rc == 0 and report.is_file() else {"rc": rc}
    if doc["rc"] != 0:
        sys.exit(f"benchmark: {' '.join(cmd)} exited with {doc['rc']}:\n{stderr[-4000:]}")
    peak = doc["maxrss"] / (MIB if sys.platform == "darwin" else 1024)  # Linux reports KiB, macOS bytes
    return Measured(doc["seconds"], peak, stdout, max(peak, doc["tree_peak"] / MIB))


def gatelens_command() -> list[str]:
    """The installed ``gatelens`` console script beside this Python, else ``python -m gatelens``."""
    script = Path(sys.executable).with_name("gatelens")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "gatelens"]


def dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / MIB


def event_rows(run: Path) -> int | None:
    """Rows of the saved events table (Parquet metadata only), or None."""
    try:
        import pyarrow.parquet as pq

        return int(pq.read_metadata(run / "analysis" / "events.parquet").num_rows)
    except (ImportError, OSError):
        return None


# ----------------------------------------------------------------------------------------------------------------
# per-step profile (runs in a child: `benchmarks/analysis.py --profile-child RUN`)


def _status_kib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return float("nan")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def profile_child(run: str) -> None:
    """Print JSON: RSS after open_run, then per step of the pipeline (and the save) seconds, peak and held RSS."""
    from gatelens.analysis.pipeline import STEPS, analyze, save_analysis
    from gatelens.analysis.store import open_run

    trace = open_run(run)
    open_mib = _status_kib("VmRSS") / 1024
    rows: list[dict] = []
    t0 = time.perf_counter()
    _reset_peak()

    def record(step: str) -> None:
        nonlocal t0
        rows.append(
            {
                "step": step,
                "seconds": time.perf_counter() - t0,
                "peak_mib": _status_kib("VmHWM") / 1024,
                "held_mib": _status_kib("VmRSS") / 1024,
            }
        )
        _reset_peak()
        t0 = time.perf_counter()

    result = analyze(trace, progress=lambda done, total: record(STEPS[done - 1]))
    save_analysis(result, run)
    record("save_analysis")
    print(json.dumps({"open_mib": open_mib, "steps": rows}))


def search_child(run: str) -> None:
    """Print JSON: seconds and own peak (above the RSS after open_run) of unit_examples and of two searches."""
    from gatelens.analysis.examples import unit_examples
    from gatelens.analysis.search import SpanQuery, search
    from gatelens.analysis.store import open_run

    trace = open_run(run)
    layer = trace.layers[0]
    gate = next(s for s in trace[layer].info.signals if s.endswith("_gate"))
    out: dict = {}
    jobs = {
        "examples": lambda: len(unit_examples(trace)[0]),
        # threshold -1: every unit is on over the span, the most work for the matcher
        "search_span": lambda: search(trace, SpanQuery(0, 2, 6, -1.0, layer, "hidden_state")).n_matches,
        "search_where": lambda: search(trace, f"{gate} of {layer}:0 below 0.1").n_matches,
    }
    linux = Path("/proc/self/clear_refs").exists()  # elsewhere the peaks are not measured (NaN)
    for name, job in jobs.items():
        before = _status_kib("VmRSS") / 1024 if linux else float("nan")
        if linux:
            _reset_peak()
        t0 = time.perf_counter()
        rows = job()
        out[name] = {
            "seconds": time.perf_counter() - t0,
            "own_peak_mib": (_status_kib("VmHWM") / 1024 if linux else float("nan")) - before,
            "rows": int(rows),
        }
    print(json.dumps(out))


# ----------------------------------------------------------------------------------------------------------------
# the model and the runs


def _find_demo(units: int = 128, layers: int = 2) -> Path | None:
    """A demo char LSTM with ``layers`` x ``units`` in data/demo/ (by its model card), if there is one."""
    for card in sorted(DEMO_DIR.glob("*.card.json")):
        try:
            m = json.loads(card.read_text()).get("model", {})
        except (OSError, ValueError):
            continue
        if (m.get("kind"), m.get("cell"), m.get("layers"), m.get("units")) == ("text", "lstm", layers, units):
            path = card.with_name(card.name.replace(".card.json", ".keras"))
            if path.is_file():
                return path
    return None


def build_model(model_path: str | None, steps: int):
    """(model, vocabulary tokens, steps, description)."""
    from gatelens.models.zoo.datasets import Vocabulary, read_text

    path = Path(model_path) if model_path else _find_demo()
    if path is not None:
        from gatelens.models import load_model

        model = load_model(path)
        side = path.with_name(path.stem + ".vocab.json")
        if not side.is_file():
            sys.exit(f"benchmark: {path} has no vocabulary side-car {side.name}: only char-level text models")
        vocab = Vocabulary.load(side)
        fixed = model.input_shape[1]
        steps = int(fixed) if fixed else steps
        lstm = [layer for layer in model.layers if layer.__class__.__name__ in ("LSTM", "GRU")]
        arch = " + ".join(f"{layer.__class__.__name__}({layer.units})" for layer in lstm)
        return model, vocab, steps, f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({arch}, trained)"
    import keras

    spec = importlib.util.spec_from_file_location("bench_extract", ROOT / "benchmarks" / "extract.py")
    bench_extract = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_extract)
    keras.utils.set_random_seed(0)
    model = bench_extract.char_model(2, 128, steps)
    vocab = Vocabulary.from_text(read_text(CORPUS), max_tokens=bench_extract.VOCAB)
    return model, vocab, steps, "char_model(2, 128) of benchmarks/extract.py, fixed random weights (seed 0)"


def windows(vocab, steps: int, n: int):
    """``n`` windows of ``steps`` token ids of the corpus (non-overlapping while the corpus lasts)."""
    import numpy as np

    from gatelens.models.zoo.datasets import read_text, text_windows

    ids = vocab.encode(read_text(CORPUS))
    while len(ids) < steps + n + 1:  # only for huge N: repeat the corpus
        ids = np.concatenate([ids, ids])
    stride = max(1, min(steps, (len(ids) - steps - 1) // max(1, n - 1)))
    return text_windows(ids, steps, stride)[0][:n].astype("int32"), stride


# ----------------------------------------------------------------------------------------------------------------
# main


def _ratio(values: list[float]) -> list[str]:
    return [f"{v / values[0]:.2f}" if values[0] > 0 else "-" for v in values]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="sequences at 1x (default 256; runs 1x, 2x, 4x)")
    ap.add_argument("--steps", type=int, default=200, help="characters per sequence (default 200)")
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="run store dtype")
    ap.add_argument("--model", help="a char-level .keras model with a .vocab.json side-car (default: see above)")
    ap.add_argument("--profile-steps", action="store_true", help="also time and measure every analysis step")
    ap.add_argument("--workdir", help="where to write the runs (default: a temporary directory, removed)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run): N=4 and 8, 20 steps")
    ap.add_argument(
        "--widths",
        type=lambda s: [int(w) for w in s.split(",") if w],
        default=[10, 100, 1000],
        help="feature-column counts of the width table, on a 4 x 10 run (default 10,100,1000; '' to skip)",
    )
    ap.add_argument("--profile-child", metavar="RUN", help=argparse.SUPPRESS)
    ap.add_argument("--search-child", metavar="RUN", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.profile_child:
        profile_child(args.profile_child)
        return
    if args.search_child:
        search_child(args.search_child)
        return
    if args.profile_steps and not Path("/proc/self/clear_refs").exists():
        sys.exit("benchmark: --profile-steps needs Linux (/proc/self/clear_refs to reset the peak RSS)")
    started = time.perf_counter()
    multiples = QUICK_MULTIPLES if args.quick else MULTIPLES
    if args.quick:
        args.n, args.steps = 4, 20

    from gatelens.models._quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras
    import numpy as np
    import tensorflow as tf

    model, vocab, steps, described = build_model(args.model, args.steps)
    x_all, stride = windows(vocab, steps, args.n * multiples[-1])
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gatelens-bench-analysis-"))
    work.mkdir(parents=True, exist_ok=True)
    cli = gatelens_command()
    print(f"gatelens analyze: peak memory and time as N grows ({', '.join(f'{m}x' for m in multiples)})")
    print(f"model: {described}")
    print(
        f"data: {len(x_all)} windows of {steps} characters of {CORPUS.relative_to(ROOT)} (stride {stride}); "
        f"runs written with models.write_run(batch_size=256, dtype={args.dtype!r})"
    )
    print(
        f"Python {platform.python_version()}, NumPy {np.__version__}, TF {tf.__version__}, Keras {keras.__version__}, "
        f"{os.cpu_count()} CPU cores, {platform.machine()}"
    )
    print(f"command: {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cli))} analyze RUN")
    print()
    rows, profiles, searches = [], [], []
    model_path = work / "model.keras"
    model.save(model_path)
    vocab_path = work / "vocab.json"
    vocab_path.write_text(json.dumps(list(vocab.tokens)))
    try:
        for mult in multiples:
            n = args.n * mult
            run = work / f"run_{n}"
            data = work / f"x_{n}.npy"
            np.save(data, x_all[:n])
            ext = measure(
                [*cli, "extract", str(model_path), str(data), "--out", str(run), "--dtype", args.dtype,
                 "--vocab", str(vocab_path)]
            )  # fmt: skip
            base = measure([sys.executable, "-c", BASELINE_CODE, str(run)])
            size = dir_mib(run)
            res = measure([*cli, "analyze", str(run)])
            rows.append(
                {
                    "mult": mult,
                    "n": n,
                    "size": size,
                    "seconds": res.seconds,
                    "extract": ext.seconds,
                    "peak": res.tree_mib,
                    "base": base.peak_mib,
                    "events": event_rows(run),
                }
            )
            found = measure([sys.executable, str(Path(__file__).resolve()), "--search-child", str(run)])
            searches.append(json.loads(found.stdout.strip().splitlines()[-1]))
            if args.profile_steps:
                prof = measure([sys.executable, str(Path(__file__).resolve()), "--profile-child", str(run)])
                profiles.append(json.loads(prof.stdout.strip().splitlines()[-1]))
            shutil.rmtree(run, ignore_errors=True)
        widths = measure_widths(work, cli, args.widths) if args.widths else None
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    peaks = [r["peak"] for r in rows]
    above = [r["peak"] - r["base"] for r in rows]
    print(
        "| N (sequences) | run on disk (MiB) | extract s | analyze s | analyze / extract | peak RSS (MiB) "
        "| start-up + open_run RSS (MiB) | analysis above start-up (MiB) | peak vs 1x | above start-up vs 1x "
        "| event rows |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r, pr, ar, a in zip(rows, _ratio(peaks), _ratio(above), above):
        ev = "-" if r["events"] is None else f"{r['events']:,}"
        print(
            f"| {r['n']} ({r['mult']}x) | {r['size']:.1f} | {r['extract']:.1f} | {r['seconds']:.1f} "
            f"| {r['seconds'] / r['extract']:.2f} | {r['peak']:.0f} | {r['base']:.0f} | {a:.0f} | {pr} | {ar} | {ev} |"
        )
    print()
    print(verdict(rows))
    print()
    print_searches(rows, searches)
    if widths:
        print()
        print_widths(widths)
    if profiles:
        print()
        print_profiles(rows, profiles)
    print()
    print(f"(the whole benchmark took {time.perf_counter() - started:.0f} s)")


def measure_widths(work: Path, cli: list[str], widths) -> dict:
    """``gatelens analyze RUN --features F.csv`` on a small run (a 1 x 8 LSTM on 4 sequences x 10 steps, as in the
    issue) with 10, 100 and 1,000 random feature columns; the time is the whole command's."""
    import numpy as np
    import pandas as pd

    from gatelens._examples import tiny_inputs, tiny_model_path

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tmp = Path(tmp)
        model_path = tiny_model_path(tmp, units=8, steps=10, features=2)
        data = tmp / "x.npy"
        np.save(data, tiny_inputs(n=4, steps=10, features=2))
        steps = 10
        rng = np.random.default_rng(0)
        seq, step = np.divmod(np.arange(4 * steps), steps)
        run = tmp / "run"
        measure([*cli, "extract", str(model_path), str(data), "--out", str(run)])
        times = []
        for w in widths:
            csv = tmp / f"features_{w}.csv"
            cols = {f"f{i}": rng.normal(size=seq.size).round(4) for i in range(w)}
            pd.DataFrame({"sequence": seq, "step": step, **cols}).to_csv(csv, index=False)
            times.append(measure([*cli, "analyze", str(run), "--features", str(csv)]).seconds)
    return {"steps": steps, "widths": list(widths), "seconds": times}


def print_widths(res: dict) -> None:
    steps, widths, times = res["steps"], res["widths"], res["seconds"]
    print(f"Feature columns (gatelens analyze RUN --features F.csv; a 1 x 8 LSTM on 4 sequences x {steps} steps):")
    print()
    print("| feature columns | analyze s | vs the narrowest |")
    print("|---:|---:|---:|")
    for w, s in zip(widths, times):
        print(f"| {w} | {s:.1f} | {s / times[0]:.2f} |")


def print_searches(rows: list[dict], searches: list[dict]) -> None:
    """Examples and search at each N: seconds, own peak above the RSS after open_run, rows found."""
    print(
        "Examples and search (gatelens.analysis.examples.unit_examples; analysis.search with a span of sequence 0, "
        "steps 2:6, hidden_state >= -1, and with 'GATE of LAYER:0 below 0.1'; in a child, after open_run):"
    )
    print()
    print("| N (sequences) | what | seconds | own peak (MiB) | own peak vs 1x | rows or matches |")
    print("|---:|---|---:|---:|---:|---:|")
    for name in ("examples", "search_span", "search_where"):
        peaks = [max(s[name]["own_peak_mib"], 1.0) for s in searches]
        for r, s, pr in zip(rows, searches, _ratio(peaks)):
            m = s[name]
            print(
                f"| {r['n']} ({r['mult']}x) | {name} | {m['seconds']:.2f} | {m['own_peak_mib']:.0f} | {pr} | {m['rows']} |"
            )


def verdict(rows: list[dict]) -> str:
    """One line, computed from the numbers: does the analysis's memory grow with N?"""
    n_growth = rows[-1]["n"] / rows[0]["n"]
    peak_growth = rows[-1]["peak"] / rows[0]["peak"]
    a0, a1 = (max(r["peak"] - r["base"], 1.0) for r in (rows[0], rows[-1]))
    growth = a1 / a0
    exponent = math.log(growth) / math.log(n_growth)
    what = (
        f"peak RSS grows {peak_growth:.2f}x and the analysis's memory above start-up {growth:.2f}x "
        f"({a0:.0f} -> {a1:.0f} MiB) while N grows {n_growth:.0f}x"
    )
    if exponent < 0.15:
        return f"verdict: {what}: bounded by the chunk size, not by N."
    return f"verdict: NOT bounded by the chunk size: {what} (about N^{exponent:.2f})."


def print_profiles(rows: list[dict], profiles: list[dict]) -> None:
    """Per step: seconds, the step's own peak (above the RSS it started from) and the RSS held after it, at each N."""
    ns = " / ".join(f"{r['mult']}x" for r in rows)
    for p in profiles:
        before = p["open_mib"]
        for s in p["steps"]:
            s["own_peak_mib"] = s["peak_mib"] - before
            before = s["held_mib"]
    print(f"Per analysis step (gatelens.analysis.pipeline.analyze in a child; values at {ns}):")
    print()
    print(
        f"| step | seconds ({ns}) | peak above the RSS at the step's start, MiB ({ns}) | RSS held after, MiB ({ns}) |"
    )
    print("|---|---:|---:|---:|")
    opened = " / ".join(f"{p['open_mib']:.0f}" for p in profiles)
    print(f"| open_run | | | {opened} |")
    steps = [s["step"] for s in profiles[0]["steps"]]
    for i, step in enumerate(steps):
        cells = [" / ".join(f"{p['steps'][i][k]:{fmt}}" for p in profiles) for k, fmt in
                 (("seconds", ".1f"), ("own_peak_mib", ".0f"), ("held_mib", ".0f"))]  # fmt: skip
        print(f"| {step} | {' | '.join(cells)} |")
    grow = []
    for i, step in enumerate(steps):
        first, last = profiles[0]["steps"][i], profiles[-1]["steps"][i]
        grow.append((last["own_peak_mib"] - first["own_peak_mib"], step, first["own_peak_mib"], last["own_peak_mib"]))
    d, step, first, last = max(grow)
    held = profiles[-1]["steps"][-1]["held_mib"] - profiles[0]["steps"][-1]["held_mib"]
    print()
    print(
        f"step whose own peak grows most from {rows[0]['mult']}x to {rows[-1]['mult']}x: {step} "
        f"({first:.0f} -> {last:.0f} MiB); RSS held at the end grows by {held:.0f} MiB"
    )


if __name__ == "__main__":
    main()
