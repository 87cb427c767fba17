"""Run the test suite one file per pytest process, then print the totals (what ``make test`` runs).

Each file gets a fresh interpreter: TensorFlow/XLA state that hundreds of models leave behind in one
process (compiled executables, thread pools) cannot reach the next file, and a crash in one file is
reported as that file's failure instead of ending the whole run. Extra arguments go to every pytest call.
The last line is ``N passed, N failed, N skipped`` over all files; the exit code is 0 only if every
file passed (pytest's "no tests collected" counts as passing for a file whose tests are all deselected).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
COUNT = re.compile(r"(\d+) (passed|failed|skipped|error|errors|xfailed|xpassed|deselected)")


def main(argv: list[str]) -> int:
    files = sorted(TESTS.glob("test_*.py"))
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    broken = []
    started = time.perf_counter()
    for path in files:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(path.relative_to(TESTS.parent)), *argv],
            cwd=TESTS.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sys.stdout.write(proc.stdout)
        sys.stdout.flush()
        tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        for n, kind in COUNT.findall(tail):
            kind = "error" if kind.startswith("error") else kind
            if kind in totals:
                totals[kind] += int(n)
        if proc.returncode not in (0, 5):
            broken.append(f"{path.name} (exit {proc.returncode})")
            if not COUNT.search(tail):  # a crash: no summary line of its own
                totals["failed"] += 1
    seconds = time.perf_counter() - started
    if broken:
        print(f"files that failed: {', '.join(broken)}")
    print(f"suite: {len(files)} files in {seconds:.0f} s")
    print(f"{totals['passed']} passed, {totals['failed'] + totals['error']} failed, {totals['skipped']} skipped")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
