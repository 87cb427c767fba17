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
The last line is ``N passed, N failed, N skipped`` over all files; the exit code is 0 only if every
file passed (pytest's "no tests collected" counts as passing for a file whose tests are all deselected).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
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
        "notebook",
        "partials",
        "pipeline_registry",
        "registry",
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
#: (name, files, extra environment) of each group of files run in one process.
BATCHES = (
    ("the TF-free batch", TF_FREE, {"GATELENS_TF_FREE_BATCH": "1"}),
    ("the small TensorFlow batch", SMALL_TF, {}),
)


def _groups(files: list[Path]) -> list[tuple[str, list[Path], dict[str, str]]]:
    """Each batch's files as one group (first), then every other file alone, in name order."""
    groups = []
    for name, members, env in BATCHES:
        batch = [p for p in files if p.name in members]
        if batch:
            groups.append((f"{name} ({len(batch)} files)", batch, env))
    batched = set().union(*(members for _, members, _ in BATCHES))
    return groups + [(p.name, [p], {}) for p in files if p.name not in batched]


def main(argv: list[str]) -> int:
    files = sorted(TESTS.glob("test_*.py"))
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    broken = []
    started = time.perf_counter()
    for name, group, extra in _groups(files):
        env = {**os.environ, **extra} if extra else None
        rel = [str(p.relative_to(TESTS.parent)) for p in group]
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *rel, *argv],
            cwd=TESTS.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        sys.stdout.write(proc.stdout)
        sys.stdout.flush()
        tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        for n, kind in COUNT.findall(tail):
            kind = "error" if kind.startswith("error") else kind
            if kind in totals:
                totals[kind] += int(n)
        if proc.returncode not in (0, 5):
            broken.append(f"{name} (exit {proc.returncode})")
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
