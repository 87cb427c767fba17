"""Run the test suite one file per pytest process, then print the totals (what ``make test`` runs).

Each file that uses TensorFlow gets a fresh interpreter: TensorFlow/XLA state that hundreds of models leave
behind in one process (compiled executables, thread pools) cannot reach the next file, and a crash in one file
is reported as that file's failure instead of ending the whole run. The files in ``TF_FREE`` never import
TensorFlow or Keras in the test process (their models, if any, run in subprocesses), so none of that state
exists there: they run together in one process first, which saves each of them a fresh interpreter and pytest
start (seconds apiece). That process is started with ``GATELENS_TF_FREE_BATCH=1``, under which tests/conftest.py
fails it, naming the first test or module that imported TensorFlow, if one does: the list cannot go stale.
The files in ``SMALL_TF`` do use TensorFlow, but each builds a handful of tiny models (each file ran in under
11 s in CI alone), a few dozen in all, far from the hundreds that broke one process: they run together in a
second process, which pays TensorFlow's import once instead of once per file.
A new test file runs in its own process until it is added here. Extra arguments go to every pytest call.

The groups run ``GATELENS_TEST_JOBS`` at a time (default: one per usable CPU core, at most 8; ``1`` runs them
one after another). Each test process keeps about one core busy (Python, tracing, one BLAS thread), so two at
once on the 2-core CI machine take about half the wall time of one after another (measured: test_store.py and
test_robust.py, 202 s one after the other, 113 s side by side). The files in ``SLOW_FIRST`` start first, the
slowest first, so that no long file starts last and runs alone; every other group follows in name order.
Each group's output is printed whole when it finishes (never interleaved), headed by its name and wall time.
The last line is ``N passed, N failed, N skipped`` over all files; the exit code is 0 only if every
file passed (pytest's "no tests collected" counts as passing for a file whose tests are all deselected).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

TESTS = Path(__file__).resolve().parent
COUNT = re.compile(r"(\d+) (passed|failed|skipped|error|errors|xfailed|xpassed|deselected)")

#: Test files whose test process never imports TensorFlow or Keras (checked on every run; see above).
TF_FREE = frozenset(
    f"test_{name}.py"
    for name in (
        "analysis_clusters",
        "analysis_correlate",
        "analysis_events",
        "analysis_events_stream",
        "analysis_export",
        "analysis_features",
        "analysis_probe_fit",
        "analysis_probes",
        "cli_errors",
        "console",
        "dashboard_explain",
        "dashboard_server",
        "dashboard_sessions",
        "dashboard_span_select",
        "dashboard_wording",
        "data_properties",
        "effects",
        "events_blocks",
        "events_parquet_stream",
        "explain_score",
        "layering",
        "notebook",
        "partials",
        "pipeline_registry",
        "registry",
        "run_each",
        "security_fuzz",
        "wheel",
        "zoo_datasets",
        "zoo_tasks",
    )
)


#: Small test files that use TensorFlow: a few tiny models each (see above).
SMALL_TF = frozenset(
    f"test_{name}.py"
    for name in (
        "analysis_decompose",
        "analysis_parallel",
        "analysis_feature_drivers",
        "analysis_stats",
        "api",
        "convert",
        "dashboard_series_time",
        "dashboard_stages",
        "data_loaders",
        "planted_mechanisms",
        "plot",
        "series_exports",
    )
)
#: The groups started first, slowest first (their seconds in CI, one after another, at the time of writing, are
#: in the comments). Only the order depends on this list, never what runs.
SLOW_FIRST = (
    "test_extract.py",  # 282
    "test_intervene.py",  # 132
    "test_dashboard_readable_e2e.py",  # 111
    "test_cli.py",  # 107
    "test_dashboard_e2e.py",  # 101
    "test_benchmarks_smoke.py",  # 100
    "the small TensorFlow batch",  # 82
    "test_dashboard_apptest.py",  # 80
    "test_store.py",  # 74
    "test_robust.py",  # 70
    "test_dashboard_tempdirs.py",  # 69
    "test_cli_intervene.py",  # 68
    "test_zoo_train.py",  # 66
    "test_extract_compile.py",  # 58
    "test_string_models.py",  # 57
    "test_distributed.py",  # 53
    "test_security_models.py",  # 52
    "the TF-free batch",  # 49
)
#: (name, files, extra environment) of each group of files run in one process.
BATCHES = (
    ("the TF-free batch", TF_FREE, {"GATELENS_TF_FREE_BATCH": "1"}),
    ("the small TensorFlow batch", SMALL_TF, {}),
)


def _groups(files: list[Path]) -> list[tuple[str, list[Path], dict[str, str]]]:
    """(name, files, extra environment) of each process, in start order.

    Each batch is one process, every other file another; the ``SLOW_FIRST`` ones start first, in that order,
    then the rest in name order.
    """
    groups = []
    for name, members, env in BATCHES:
        batch = [p for p in files if p.name in members]
        if batch:
            groups.append((name, batch, env))
    batched = set().union(*(members for _, members, _ in BATCHES))
    groups += [(p.name, [p], {}) for p in files if p.name not in batched]
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    groups.sort(key=lambda g: (rank.get(g[0], len(rank)), g[0]))
    batch_names = {name for name, _, _ in BATCHES}
    return [(f"{n} ({len(fs)} files)" if n in batch_names else n, fs, env) for n, fs, env in groups]


def _jobs() -> int:
    """How many groups run at once: ``GATELENS_TEST_JOBS``, else one per usable core (at most 8)."""
    raw = os.environ.get("GATELENS_TEST_JOBS", "").strip()
    if raw:
        try:
            jobs = int(raw)
        except ValueError:
            jobs = 0
        if jobs < 1:
            sys.exit(f"GATELENS_TEST_JOBS must be a whole number >= 1, got {raw!r}")
        return jobs
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _run(group: tuple[str, list[Path], dict[str, str]], argv: list[str]) -> tuple[str, int, str, float]:
    """Run one group's pytest process: (name, exit code, its whole output, wall seconds)."""
    name, files, extra = group
    env = {**os.environ, **extra} if extra else None
    rel = [str(p.relative_to(TESTS.parent)) for p in files]
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *rel, *argv],
        cwd=TESTS.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    return name, proc.returncode, proc.stdout, time.perf_counter() - started


def main(argv: list[str]) -> int:
    files = sorted(TESTS.glob("test_*.py"))
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    broken = []
    jobs = _jobs()
    groups = _groups(files)
    print(f"{len(files)} files in {len(groups)} processes, {jobs} at a time", flush=True)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = [pool.submit(_run, group, argv) for group in groups]
        for future in as_completed(results):
            name, code, out, seconds = future.result()
            sys.stdout.write(f"==== {name}: {seconds:.0f} s\n{out}")
            sys.stdout.flush()
            tail = out.strip().splitlines()[-1] if out.strip() else ""
            for n, kind in COUNT.findall(tail):
                kind = "error" if kind.startswith("error") else kind
                if kind in totals:
                    totals[kind] += int(n)
            if code not in (0, 5):
                broken.append(f"{name} (exit {code})")
                if not re.search(r"\d+ (failed|errors?)", tail):  # a crash, or the batch's TensorFlow check
                    totals["failed"] += 1
    seconds = time.perf_counter() - started
    if broken:
        print(f"files that failed: {', '.join(broken)}")
    print(f"suite: {len(files)} files in {seconds:.0f} s")
    print(f"{totals['passed']} passed, {totals['failed'] + totals['error']} failed, {totals['skipped']} skipped")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
