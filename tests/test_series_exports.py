"""A hand-made dated series through extract, windows, export (CSV and Parquet) and time-keyed features."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pandas as pd
import pytest

from gatelens.analysis.export import export_run, read_csv
from gatelens.analysis.features import build_features
from gatelens.analysis.pipeline import Analysis
from gatelens.analysis.store import open_run

DATES = [f"2024-01-{d:02d}" for d in range(1, 13)]
VALUES = [(3 * i) % 7 for i in range(12)]


def gatelens(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "gatelens", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("series")
    keras.utils.set_random_seed(1)
    keras.Sequential([keras.Input((4, 1)), keras.layers.LSTM(3, return_sequences=True, name="lstm")]).save(
        d / "fc.keras"
    )
    pd.DataFrame({"date": DATES, "load": VALUES}).to_csv(d / "ts.csv", index=False)
    r = gatelens("extract", d / "fc.keras", d / "ts.csv", "--stride", "1", "--out", d / "run")
    assert r.returncode == 0, r.stderr
    return d, open_run(d / "run")


def test_dates_are_kept_per_step(run):
    d, trace = run
    assert trace.n_sequences == 9  # 12 rows, windows of 4 every step
    r = gatelens("export", d / "run", "--csv", d / "csv")
    assert r.returncode == 0, r.stderr
    seq = read_csv(d / "csv" / "sequences.csv")
    assert seq["time"].tolist() == [DATES[s + t] for s in range(9) for t in range(4)]
    assert seq["source_row"].tolist() == [s + t + 2 for s in range(9) for t in range(4)]  # header is row 1
    act = read_csv(d / "csv" / "activations.csv")
    assert (act["time"] == [DATES[s + t] for s, t in zip(act["sequence"], act["step"])]).all()
    # the windows command gives the same mapping without a model
    w = gatelens("windows", d / "ts.csv", "--window", "4", "--stride", "1")
    assert w.returncode == 0, w.stderr
    pd.testing.assert_frame_equal(read_csv(io.StringIO(w.stdout)), seq)


def test_parquet_reads_back_equal_to_csv_with_selections(run):
    d, trace = run
    sel = ["--sequences", "2:5", "--signals", "hidden_state", "forget_gate"]
    assert gatelens("export", d / "run", "--csv", d / "c2", *sel).returncode == 0
    r = gatelens("export", d / "run", "--out", d / "p2", "--format", "parquet", *sel)
    assert r.returncode == 0, r.stderr
    csv_act = read_csv(d / "c2" / "activations.csv")
    assert sorted(csv_act["sequence"].unique()) == [2, 3, 4]
    assert [c for c in csv_act.columns if c not in ("layer", "sequence", "step", "unit", "time")] == [
        "forget_gate", "hidden_state"]  # fmt: skip
    pq_act = pd.read_parquet(d / "p2" / "activations")
    pq_act["layer"] = pq_act["layer"].astype(str)
    pq_act = pq_act[csv_act.columns].sort_values(["sequence", "step", "unit"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(pq_act, csv_act.astype({"forget_gate": "float32", "hidden_state": "float32"}))
    # the stored signals themselves, not only CSV == Parquet
    h = np.asarray(trace["lstm"]["hidden_state"])
    np.testing.assert_array_equal(pq_act["hidden_state"], h[pq_act["sequence"], pq_act["step"], pq_act["unit"]])
    for name in ("sequences", "units"):
        pd.testing.assert_frame_equal(pd.read_parquet(d / "p2" / f"{name}.parquet"), read_csv(d / "c2" / f"{name}.csv"),
                                      check_dtype=False)  # fmt: skip
    duckdb = pytest.importorskip("duckdb") if not os.environ.get("CI") else __import__("duckdb")
    got = duckdb.sql(
        f"select layer, sequence, step, unit, forget_gate, hidden_state, time from "
        f"read_parquet('{d / 'p2' / 'activations'}/**/*.parquet', hive_partitioning=true) order by sequence, step, unit"
    ).df()
    pd.testing.assert_frame_equal(got, csv_act.astype({"forget_gate": "float32", "hidden_state": "float32"}),
                                  check_dtype=False)  # fmt: skip


def test_empty_tables_have_their_header_and_failed_exports_leave_nothing(run, tmp_path, monkeypatch):
    _, trace = run
    a = Analysis(token_gates=pd.DataFrame(), correlations=pd.DataFrame())
    paths = export_run(trace, tmp_path / "e", analysis=a)
    assert (tmp_path / "e" / "token_gates.csv").read_text().startswith("layer,token_id,token,unit,gate,push")
    assert read_csv(paths["correlations"]).empty
    with pytest.raises(Exception, match="no signal"):
        export_run(trace, tmp_path / "f", signals=["nope"])
    assert not any((tmp_path / "f").iterdir())  # nothing written before the check, no temporary left

    import gatelens.analysis.export as ex

    orig = ex.activation_batches
    written_before_failing = []

    def first_then_disk_full(*a, **k):
        """The first batch, then a failure once the export has written it (a half-written file on disk)."""
        batches = orig(*a, **k)
        yield next(batches)
        written_before_failing.extend(p.name for p in (tmp_path / "g").rglob("*") if p.is_file())
        raise RuntimeError("disk full")

    monkeypatch.setattr(ex, "activation_batches", first_then_disk_full)
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(trace, tmp_path / "g", format="parquet")
    assert written_before_failing, "the failure should come after the export wrote its first batch"
    assert [p.name for p in (tmp_path / "g").iterdir()] == []


def test_features_keyed_by_time_or_source_row_are_joined(run, tmp_path):
    _, trace = run
    p = tmp_path / "f.csv"
    pd.DataFrame({"time": DATES, "dayindex": np.arange(12)}).to_csv(p, index=False)
    feats = build_features(trace, user_features=p)
    got = feats.set_index(["sequence", "step"])["dayindex"]
    assert len(got) == 36 and all(got[(s, t)] == s + t for s in range(9) for t in range(4))
    pd.DataFrame({"source_row": np.arange(2, 14), "rowf": np.arange(12) * 2.0}).to_csv(p, index=False)
    feats = build_features(trace, user_features=p).set_index(["sequence", "step"])["rowf"]
    assert all(feats[(s, t)] == 2.0 * (s + t) for s in range(9) for t in range(4))
    pd.DataFrame({"time": ["1999-01-01"], "x": [1]}).to_csv(p, index=False)
    with pytest.raises(Exception, match="1999-01-01.*not in the run"):
        build_features(trace, user_features=p)


def test_read_csv_takes_a_file_object_from_the_zip(tmp_path):
    from gatelens.analysis.export import write_csv

    write_csv(pd.DataFrame({"token": ["-", "=x"], "v": [1.5, -2.0]}), tmp_path / "t.csv")
    with zipfile.ZipFile(tmp_path / "e.zip", "w") as z:
        z.write(tmp_path / "t.csv", "t.csv")
    with zipfile.ZipFile(tmp_path / "e.zip") as z, z.open("t.csv") as f:
        assert read_csv(f).to_dict("list") == {"token": ["-", "=x"], "v": [1.5, -2.0]}
    plain = pd.read_csv(tmp_path / "t.csv", converters={"token": lambda s: s[1:] if s.startswith("'") else s})
    assert plain["token"].tolist() == ["-", "=x"]  # the README's recipe for plain pandas
