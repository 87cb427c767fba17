"""Planted-task generators: determinism, ground truth checked against plain-Python references, features CSV."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatelens.models.zoo import tasks as tk


def _reference_brackets(text: str) -> tuple[list[int], list[int], list[int]]:
    """Depth ignoring quoted brackets, the quote flag, and the depth of a counter that ignores quotes."""
    depth, inside, naive = 0, False, 0
    ds, qs, ns = [], [], []
    for ch in text:
        if ch == '"':
            inside = not inside
        elif not inside and ch == "(":
            depth += 1
        elif not inside and ch == ")":
            depth -= 1
        if ch == "(":
            naive += 1
        elif ch == ")":
            naive = max(0, naive - 1)
        ds.append(depth)
        qs.append(int(inside))
        ns.append(naive)
    return ds, qs, ns


@pytest.mark.parametrize("name", sorted(tk.TASKS))
def test_same_seed_same_data_other_seed_other_data(name):
    a, b, c = tk.generate(name, 20, seed=7), tk.generate(name, 20, seed=7), tk.generate(name, 20, seed=8)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    for k in a.features:
        np.testing.assert_array_equal(a.features[k], b.features[k])
    assert not np.array_equal(a.x, c.x)
    assert a.params["seed"] == 7 and a.params["n"] == 20


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(2, 80), max_depth=st.integers(1, 6))
def test_brackets_ground_truth_matches_a_plain_python_reference(seed, length, max_depth):
    d = tk.bracket_depth(5, length=length, max_depth=max_depth, seed=seed)
    assert d.x.shape == d.y.shape == (5, length) and d.x.dtype == np.int32
    for i in range(5):
        text = "".join(d.tokens[j] for j in d.x[i])
        depth, inside, naive = _reference_brackets(text)
        assert d.y[i].tolist() == depth
        assert d.features["depth"][i].tolist() == depth
        assert d.features["inside_quote"][i].tolist() == inside
        assert d.features["naive_depth"][i].tolist() == naive
    assert d.y.min() >= 0 and d.y.max() <= max_depth
    assert set(np.unique(d.x)) <= set(range(2, len(tk.BRACKET_TOKENS)))  # never padding or [UNK]


def test_brackets_needs_the_quote_flag():
    d = tk.bracket_depth(2000, seed=0)
    qb = d.features["quoted_bracket"].astype(bool)
    assert qb.mean() > 0.05  # quoted brackets are common ...
    assert (d.features["naive_depth"] != d.y).mean() > 0.2  # ... and ignoring quotes gets the depth wrong often
    # a quoted bracket never moves the depth
    step = np.diff(np.concatenate([np.zeros((2000, 1), np.int32), d.y], axis=1), axis=1)
    assert np.all(step[qb] == 0)
    assert np.bincount(d.y.ravel()).min() > 1000  # every depth class is represented


def test_recall_ground_truth():
    d = tk.delayed_recall(500, length=30, min_delay=12, max_marks=1, seed=3)
    assert d.x.shape == (500, 30, 2) and d.x.dtype == np.float32
    marker = d.x[:, :, 1]
    assert np.all(marker.sum(1) == 1)
    mark = marker.argmax(1)
    assert mark.max() <= 30 - 1 - 12 and mark.min() == 0
    np.testing.assert_array_equal(d.y, d.x[np.arange(500), mark, 0])
    assert np.all((d.x[:, :, 0] >= -1) & (d.x[:, :, 0] <= 1))
    s = d.features["steps_since_mark"]
    for i in range(5):
        m = mark[i]
        assert np.all(np.isnan(s[i, :m])) and s[i, m:].tolist() == list(range(30 - m))
        assert np.all(d.features["held_value"][i, m:] == d.y[i])
    assert np.all(d.features["seen_mark"] == ~np.isnan(s))


def test_recall_with_several_marks_matches_a_plain_python_reference():
    """Each new mark replaces the held value; the features follow the most recent mark (a plain loop here)."""
    d = tk.delayed_recall(400, length=25, min_delay=10, max_marks=4, seed=5)
    marker = d.x[:, :, 1]
    counts = marker.sum(1).astype(int)
    assert set(counts.tolist()) == {1, 2, 3, 4} and marker[:, 15:].sum() == 0  # 1..4 marks, all in the first 15 steps
    for i in range(len(d.x)):
        held, since, seen = np.nan, np.nan, 0
        for t in range(25):
            if marker[i, t] == 1:
                held, since, seen = d.x[i, t, 0], 0, seen + 1
            elif seen:
                since += 1
            assert d.features["marks_seen"][i, t] == seen
            np.testing.assert_equal(d.features["held_value"][i, t], held)
            np.testing.assert_equal(d.features["steps_since_mark"][i, t], since)
        assert d.y[i] == held and since >= 10
    # the generator is deterministic and max_marks is checked
    np.testing.assert_array_equal(
        tk.delayed_recall(5, max_marks=3, seed=1).x, tk.delayed_recall(5, max_marks=3, seed=1).x
    )
    with pytest.raises(ValueError, match=r"max_marks must be in \[1, length - min_delay\] = \[1, 5\], got 6"):
        tk.delayed_recall(2, length=10, min_delay=5, max_marks=6)


def test_adding_ground_truth():
    d = tk.adding_problem(300, length=20, seed=1)
    marker = d.x[:, :, 1]
    assert np.all(marker[:, :10].sum(1) == 1) and np.all(marker[:, 10:].sum(1) == 1)
    expected = (d.x[:, :, 0] * marker).sum(1)
    np.testing.assert_allclose(d.y, expected, rtol=1e-6)
    np.testing.assert_array_equal(d.features["markers_seen"][:, -1], 2)
    np.testing.assert_allclose(d.features["marked_sum"][:, -1], d.y, rtol=1e-6)
    assert 0.15 < d.y.var() < 0.19  # the sum of two U(0, 1): variance 1/6


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: tk.delayed_recall(3, length=10, min_delay=10), "min_delay must be in [0, length), got 10"),
        (lambda: tk.adding_problem(0), "must be >= 1, got 0"),
        (lambda: tk.bracket_depth(2, length=1), "length must be >= 2, got 1"),
        (lambda: tk.generate("copying", 2), "unknown task 'copying'"),
    ],
)
def test_bad_parameters_are_named(call, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        call()


@pytest.mark.parametrize("name", sorted(tk.TASKS))
def test_features_csv_round_trips(tmp_path, name):
    d = tk.generate(name, 4, seed=0, length=9)
    path = tk.write_features_csv(tmp_path / "f.csv", d.features)
    df = pd.read_csv(path)
    assert list(df.columns) == ["sequence", "step", *d.features]
    assert len(df) == 4 * 9
    assert df["sequence"].tolist() == [i for i in range(4) for _ in range(9)]
    assert df["step"].tolist() == list(range(9)) * 4
    for k, v in d.features.items():
        np.testing.assert_allclose(df[k].to_numpy(np.float64), np.asarray(v, np.float64).ravel(), rtol=1e-7)


def test_features_csv_leaves_nan_cells_empty_and_checks_shapes():
    text = tk.features_csv_text({"a": np.array([[1.5, np.nan]]), "b": np.array([[True, False]])})
    assert text.splitlines() == ["sequence,step,a,b", "0,0,1.5,1", "0,1,,0"]
    with pytest.raises(ValueError, match=r"feature 'b' has shape \(1, 3\)"):
        tk.features_csv_text({"a": np.zeros((1, 2)), "b": np.zeros((1, 3))})


def test_write_task_data_writes_a_plain_npy(tmp_path):
    d = tk.generate("brackets", 3, seed=0, length=7)
    tk.write_task_data(d, tmp_path / "x.npy", tmp_path / "f.csv")
    x = np.load(tmp_path / "x.npy", allow_pickle=False)
    np.testing.assert_array_equal(x, d.x)
    assert pd.read_csv(tmp_path / "f.csv").shape == (21, 2 + len(d.features))


def test_tasks_module_does_not_import_tensorflow():
    code = "import sys, gatelens.models.zoo.tasks, gatelens.models.zoo.datasets, gatelens.models.zoo; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_emitted_csv_is_in_the_contract_format():
    d = tk.generate("recall", 2, seed=0, length=5, min_delay=2)
    df = pd.read_csv(io.StringIO(tk.features_csv_text(d.features)))
    assert df.columns[:2].tolist() == ["sequence", "step"]
    assert df.groupby("sequence").size().tolist() == [5, 5]
