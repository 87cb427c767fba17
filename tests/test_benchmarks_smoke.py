"""The benchmark scripts still run: each with --quick (tiny sizes) exits 0 and prints its Markdown table.

Nothing about speed is asserted (benchmarks are measured, not asserted); this only keeps the scripts
from rotting as the code they measure changes. All run at once, as real subprocesses.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "extract": (
        ["--quick", "--modes", "cell", "--dtypes", "float32,float16"],  # the other modes: tests/test_extract*.py
        "| model | N | method | seconds | x predict | bound % | first call s |",
    ),
    "analysis": (
        ["--quick", "--profile-steps", "--widths", "2,20"],
        "| N (sequences) | run on disk (MiB) | extract s | analyze s | analyze / extract | peak RSS (MiB) ",
    ),
    "store": (["--quick"], "| what | seconds | MB/s | x before |"),
    "scale": (["--quick"], "| path | extract seq/s (first run) | extract seq/s (warm) |"),
    # a real server driven by Chromium (skipped outside CI without /usr/bin/chromium)
    "dashboard": (["--quick"], "| N (sequences) | steps analysed | upload to first chart (s) |"),
}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _rows(out: str, header: str) -> list[list[str]]:
    """Cells of the data rows of the Markdown table whose header line starts with ``header``."""
    lines = out.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(header)), None)
    assert start is not None, f"no table starting {header!r} in:\n{out}"
    width = len(_cells(lines[start]))
    assert set(lines[start + 1]) <= set("|-:") and len(_cells(lines[start + 1])) == width, lines[start + 1]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(_cells(line))
        assert len(rows[-1]) == width, f"row with {len(rows[-1])} cells under a {width}-column header: {line}"
    return rows


@pytest.fixture(scope="module")
def outputs() -> dict[str, subprocess.CompletedProcess]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, _) in SCRIPTS.items()
    }
    done = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_benchmark_quick_runs_and_prints_a_table(outputs, name):
    if name == "dashboard":
        from e2e_helpers import require_chromium

        require_chromium()
    res = outputs[name]
    assert res.returncode == 0, f"benchmarks/{name}.py --quick exited {res.returncode}:\n{res.stderr[-30000:]}"
    rows = _rows(res.stdout, SCRIPTS[name][1])
    assert rows, res.stdout
    for row in rows:
        assert any(re.fullmatch(r"-?[\d,]+(\.\d+)?", c) for c in row), f"a table row without numbers: {row}"


def test_extract_benchmark_times_both_storage_types_side_by_side(outputs):
    rows = _rows(outputs["extract"].stdout, SCRIPTS["extract"][1])
    methods = {r[2] for r in rows if r[0] == "2x128"}
    assert {f"write_run(model, x, out, {d}), verify=cell" for d in ("float32", "float16")} <= methods, methods
    assert not any("verify=full" in m or "verify=sample" in m for m in methods), methods  # --modes cell only


def test_analysis_benchmark_measures_every_size_and_says_a_verdict(outputs):
    out = outputs["analysis"].stdout
    rows = _rows(out, SCRIPTS["analysis"][1])
    assert [r[0] for r in rows] == ["4 (1x)", "8 (2x)"], rows
    for row in rows:
        extract, analyze, ratio = float(row[2]), float(row[3]), float(row[4])
        # the ratio is of the unrounded times; the seconds are shown to 0.1 s, the ratio to 0.01
        low, high = (analyze - 0.05) / (extract + 0.05), (analyze + 0.05) / max(extract - 0.05, 1e-9)
        assert low - 0.005 <= ratio <= high + 0.005, row
        peak, baseline = float(row[5]), float(row[6])
        assert peak >= baseline > 0, row  # the analysis cannot need less than its own start-up
    widths = _rows(out, "| feature columns | analyze s")
    assert [r[0] for r in widths] == ["2", "20"] and float(widths[0][2]) == 1.0, widths
    assert re.search(r"^verdict: .*N grows 2x", out, re.M), out
    steps = _rows(out, "| step | seconds")
    from gatelens.analysis.pipeline import STEPS

    assert [r[0] for r in steps] == ["open_run", *STEPS, "save_analysis"], steps


def test_analysis_benchmark_measures_examples_and_search_at_every_size(outputs):
    out = outputs["analysis"].stdout
    rows = _rows(out, "| N (sequences) | what | seconds | own peak (MiB)")
    assert [(r[0], r[1]) for r in rows] == [
        (n, what) for what in ("examples", "search_span", "search_where") for n in ("4 (1x)", "8 (2x)")
    ], rows
    for row in rows:
        assert float(row[2]) >= 0 and int(row[5]) >= 0, row
    # every step of the run is an example candidate: the examples table is never empty; with threshold -1 every
    # unit is on everywhere, so the span query matches at least the query span itself
    assert all(int(r[5]) > 0 for r in rows if r[1] in ("examples", "search_span")), rows


def test_dashboard_benchmark_times_every_page(outputs):
    from e2e_helpers import require_chromium

    require_chromium()
    out = outputs["dashboard"].stdout
    rows = _rows(out, "| page | s until it shows something |")
    assert [r[0] for r in rows] == [
        "Gates over the input", "Units", "Features", "Memory", "Unit explained", "What if", "Search", "Export"
    ], rows  # fmt: skip
    for row in rows:
        shows, content = float(row[1]), float(row[2])
        assert shows > 0, row
        # every page shows its content: the benchmark writes inf for a page whose content selector it never found
        assert content != float("inf"), row
        if row[4]:  # it showed only after a second click: the run goes on, the diagnosis is in its stderr
            err = outputs["dashboard"].stderr[-20000:]
            warnings.warn(f"benchmarks/dashboard.py: the {row[0]} page {row[4]}:\n{err}", stacklevel=1)
    (first, ready) = (float(c) for c in _rows(out, "| N (sequences) |")[0][2:4])
    assert 0 < first <= ready, out
