"""tests/run_each.py, the runner of ``make test``: every test file runs exactly once, its start-order list names
only real groups, and its job count reads ``GATELENS_TEST_JOBS``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_each

FILES = sorted(run_each.TESTS.glob("test_*.py"))


def test_every_test_file_runs_in_exactly_one_process():
    groups = run_each._groups(FILES)
    ran = [p for _, files, _ in groups for p in files]
    assert sorted(ran) == FILES
    assert len(ran) == len(set(ran))


def test_batches_name_only_existing_files_and_do_not_overlap():
    names = {p.name for p in FILES}
    for name, members, _ in run_each.BATCHES:
        assert members <= names, f"{name} lists files that do not exist: {sorted(members - names)}"
    assert not run_each.TF_FREE & run_each.SMALL_TF


def test_slow_first_names_real_groups_and_they_start_first_in_its_order():
    groups = run_each._groups(FILES)
    base = [name.split(" (")[0] for name, _, _ in groups]
    missing = [name for name in run_each.SLOW_FIRST if name not in base]
    assert not missing, f"SLOW_FIRST names no file or batch: {missing}"
    assert base[: len(run_each.SLOW_FIRST)] == list(run_each.SLOW_FIRST)
    rest = base[len(run_each.SLOW_FIRST) :]
    assert rest == sorted(rest)


@pytest.mark.parametrize(("raw", "jobs"), [("1", 1), ("3", 3), (" 2 ", 2)])
def test_jobs_reads_the_environment(monkeypatch, raw, jobs):
    monkeypatch.setenv("GATELENS_TEST_JOBS", raw)
    assert run_each._jobs() == jobs


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5"])
def test_jobs_refuses_what_is_not_a_positive_whole_number(monkeypatch, raw):
    monkeypatch.setenv("GATELENS_TEST_JOBS", raw)
    with pytest.raises(SystemExit, match="GATELENS_TEST_JOBS must be a whole number >= 1"):
        run_each._jobs()


def test_jobs_defaults_to_the_usable_cores_at_most_eight(monkeypatch):
    monkeypatch.delenv("GATELENS_TEST_JOBS", raising=False)
    assert run_each._jobs() == max(1, min(len(run_each.os.sched_getaffinity(0)), 8))
