"""CSV exports and the analysis pipeline: exact numbers, formula-safe text, atomic writes, lazy stores."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pandas as pd
import pytest
from helpers_reference import merge_traces, reference_gru_trace, reference_lstm_trace, write_store

from gatelens.analysis.export import (
    FORMULA_PREFIXES,
    activation_columns,
    export_csvs,
    neutralize_cell,
    read_csv,
    restore_cell,
    safe_frame,
    write_activations_csv,
    write_csv,
)
from gatelens.analysis.pipeline import STEPS, Analysis, analyze, load_analysis, read_events, save_analysis
from gatelens.analysis.store import RunStoreError
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace
from gatelens.errors import UsageError

NASTY = [
    '=HYPERLINK("http://x","y")',
    "+1",
    "@SUM(1)",
    "-2",
    "\tx",
    "\rx",
    "'quoted",
    "a,b",
    'say "hi"',
    "\n",
    "NA",
    "nan",
    "null",
    "ok",
]
VOCAB = ["", *NASTY]


def text_trace(seed=0, n=7, t=6):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, len(VOCAB), size=(n, t))
    mask = rng.random((n, t)) > 0.2
    mask[0] = True
    emb = rng.normal(size=(len(VOCAB), 3))
    a = reference_lstm_trace(
        ids, rng.normal(size=(3, 8)), rng.normal(size=(2, 8)), rng.normal(size=8), mask,
        embedding=emb, vocabulary=VOCAB,
    )  # fmt: skip
    b = reference_gru_trace(
        ids, rng.normal(size=(3, 9)), rng.normal(size=(3, 9)), rng.normal(size=(2, 9)), mask, name="=evil",
        embedding=emb, vocabulary=VOCAB, go_backwards=True,
    )  # fmt: skip
    return merge_traces(a, b)


def test_neutralize_cell():
    for s in ['=HYPERLINK("x")', "+1", "@SUM(1)", "-2", "\t1", "\r1", "'x"]:
        assert neutralize_cell(s) == "'" + s
        assert restore_cell(neutralize_cell(s)) == s
    for s in ["a=1", "1+1", "x-2", "", " =1", "ok"]:
        assert neutralize_cell(s) == s
        assert restore_cell(neutralize_cell(s)) == s
    assert neutralize_cell(-2) == "'-2"  # whatever reaches a text cell is treated as text


def test_safe_frame_touches_text_and_headers_only():
    df = pd.DataFrame({"token": ["-2", "+1", None, "a"], "value": [-2.0, 1.5, np.nan, -0.0], "=h": [1, -1, 2, 3]})
    out = safe_frame(df)
    assert list(out.columns) == ["token", "value", "'=h"]
    assert out["token"].tolist()[:2] == ["'-2", "'+1"] and pd.isna(out["token"][2])
    pd.testing.assert_series_equal(out["value"], df["value"])
    assert out["'=h"].tolist() == [1, -1, 2, 3]


def raw_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def assert_no_formula_text(path, text_columns):
    rows = raw_rows(path)
    header = rows[0]
    assert not any(h.startswith(FORMULA_PREFIXES) for h in header)
    idx = [header.index(c) for c in text_columns if c in header]
    for row in rows[1:]:
        for i in idx:
            assert not row[i].startswith(FORMULA_PREFIXES), (path.name, header[i], row[i])


def test_activations_csv_equals_the_arrays(tmp_path):
    trace = text_trace()
    path = write_activations_csv(trace, tmp_path / "activations.csv", chunk=3)
    cols = activation_columns(trace)
    df = read_csv(path)
    assert list(df.columns) == cols
    assert cols[:4] == ["layer", "sequence", "step", "unit"] and cols[-1] == "token"
    for name in trace.layers:
        lt = trace[name]
        mask = np.asarray(lt.mask)
        part = df[df.layer == name]
        s, t = np.nonzero(mask)
        u = lt.info.units
        assert len(part) == mask.sum() * u  # masked steps left out
        np.testing.assert_array_equal(part.sequence, np.repeat(s, u))
        np.testing.assert_array_equal(part.step, np.repeat(t, u))
        np.testing.assert_array_equal(part.unit, np.tile(np.arange(u), len(s)))
        for sig in lt.info.signals:  # exact: float32 text read back and cast to float32
            np.testing.assert_array_equal(part[sig].to_numpy().astype(np.float32), np.asarray(lt[sig])[mask].ravel())
        others = [c for c in cols[4:-1] if c not in lt.info.signals]
        assert part[others].isna().all().all()
        tokens = np.asarray(VOCAB, dtype=object)[np.asarray(trace.tokens)][mask]
        assert part.token.tolist() == np.repeat(tokens, u).tolist()  # the nasty tokens come back intact
    assert_no_formula_text(path, ["layer", "token"])
    raw = path.read_bytes().decode()
    assert "'=HYPERLINK(" in raw and "'=evil" in raw and "'@SUM(1)" in raw
    assert ',"\'-2"\r\n' in raw  # the *token* -2 is neutralised (and quoted, as every text cell here) ...
    rows = raw_rows(path)
    k = rows[0].index("candidate_pre")
    assert any(row[k].startswith("-") for row in rows[1:])  # ... negative numbers are not


def test_float32_and_float64_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(1)
    info = LayerInfo(name="rnn", cell_type="simple_rnn", units=3, input_dim=1, recurrent_activation=None)
    h = (rng.normal(size=(50, 20, 3)) * 10.0 ** rng.integers(-40, 38, size=(50, 20, 3))).astype(np.float32)
    h[0, 0] = [np.float32(1.4e-45), -np.float32(3.4028235e38), -0.0]  # denormal, extreme, negative zero
    lt = LayerTrace(info, {"hidden_state": h, "hidden_state_pre": -h}, mask=np.ones((50, 20), bool), inputs=h[..., :1])
    trace = Trace({"rnn": lt})
    df = read_csv(write_activations_csv(trace, tmp_path / "a.csv"))
    got = df.hidden_state.to_numpy().astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), h.ravel().view(np.uint32))  # bit-exact, -0.0 included
    wide = pd.DataFrame({"x": rng.normal(size=5000) * 10.0 ** rng.integers(-300, 300, size=5000), "t": "-"})
    back = read_csv(write_csv(wide, tmp_path / "w.csv"))
    np.testing.assert_array_equal(back.x.to_numpy(), wide.x.to_numpy())
    assert (back.t == "-").all()


def test_float16_store_round_trips_exactly(tmp_path):
    trace = text_trace(11)
    lazy = write_store(trace, tmp_path / "run", dtype="float16")
    df = read_csv(write_activations_csv(lazy, tmp_path / "a.csv"))
    lt = lazy["lstm"]
    mask = np.asarray(lt.mask[...])
    part = df[df.layer == "lstm"]
    for sig in lt.info.signals:
        stored = np.asarray(lt[sig][...])
        assert stored.dtype == np.float16
        np.testing.assert_array_equal(part[sig].to_numpy().astype(np.float16), stored[mask].ravel())


def test_lazy_store_activations_identical(tmp_path):
    trace = text_trace(2)
    lazy = write_store(trace, tmp_path / "run", chunk_sequences=2)
    a = write_activations_csv(trace, tmp_path / "mem.csv")
    b = write_activations_csv(lazy, tmp_path / "lazy.csv", chunk=3)
    assert a.read_bytes() == b.read_bytes()


def test_write_is_atomic(tmp_path):
    trace = text_trace(3)
    path = tmp_path / "activations.csv"
    path.write_text("previous complete file\n")

    def fail(done, total):
        if done == 2:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_activations_csv(trace, path, chunk=2, progress=fail)
    assert path.read_text() == "previous complete file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["activations.csv"]  # no temporary file left


def test_layer_selection_and_bad_layer(tmp_path):
    trace = text_trace(4)
    df = read_csv(write_activations_csv(trace, tmp_path / "a.csv", layers=["=evil"]))
    assert set(df.layer) == {"=evil"}
    assert "input_gate" not in df.columns and "update_gate" in df.columns
    with pytest.raises(ValueError, match="No recurrent layer"):
        write_activations_csv(trace, tmp_path / "b.csv", layers=["nope"])


# -- units.csv and the full export -------------------------------------------------------------------------


def test_export_without_analysis(tmp_path):
    trace = text_trace(5)
    files = export_csvs(trace, tmp_path / "out")
    assert sorted(files) == ["activations.csv", "units.csv"]
    units = read_csv(files["units.csv"])
    assert list(units.columns[:9]) == [
        "layer", "unit", "signal", "mean", "std", "frac_below_0.1", "frac_above_0.9", "half_life_steps", "cluster",
    ]  # fmt: skip
    assert units.cluster.isna().all()  # no clustering without an analysis
    has_hl = units.half_life_steps.notna()
    assert set(units[has_hl].signal) == {"forget_gate", "update_gate"}
    # numbers equal the statistics exactly
    lt = trace["lstm"]
    mask = np.asarray(lt.mask)
    c = np.asarray(lt["cell_state"], np.float64)[mask]
    rows = units[(units.layer == "lstm") & (units.signal == "cell_state")].sort_values("unit")
    np.testing.assert_allclose(rows["mean"], c.mean(0), rtol=1e-12)
    assert rows.frac_saturated.isna().all()  # a state has no activation curve: empty, by design
    gate_rows = units[(units.layer == "lstm") & (units.signal == "forget_gate")]
    assert gate_rows.frac_saturated.notna().all()
    assert_no_formula_text(files["units.csv"], ["layer", "signal", "activation", "archetype"])


@pytest.fixture(scope="module")
def full():
    """A text trace (LSTM + backward GRU named '=evil', nasty tokens) and its full analysis, with progress ticks."""
    trace = text_trace(6, n=12, t=10)
    ticks = []
    return trace, analyze(trace, progress=lambda d, t: ticks.append((d, t))), ticks


def test_full_analysis_export_and_round_trip(full, tmp_path):
    trace, result, ticks = full
    assert ticks == [(k, len(STEPS)) for k in range(1, len(STEPS) + 1)]
    assert not result.skipped, result.skipped
    for name in ("units", "signal_stats", "half_lives", "retention", "decomposition", "events", "event_summary",
                 "token_gates", "correlations", "probes", "clusters"):  # fmt: skip
        assert len(getattr(result, name)), name
    # token gates: only tokens seen at unmasked steps
    seen = set(np.asarray(trace.tokens)[np.asarray(trace["lstm"].mask)].tolist())
    assert set(result.token_gates.token_id) == seen
    files = export_csvs(trace, tmp_path / "csv", analysis=result)
    assert {"activations.csv", "units.csv", "correlations.csv", "probes.csv", "clusters.csv", "events.csv",
            "decomposition.csv", "token_gates.csv"} <= set(files)  # fmt: skip
    for name, path in files.items():
        if name != "activations.csv":
            assert_no_formula_text(path, [c for c in raw_rows(path)[0] if not _numeric_column(path, c)])
    units = read_csv(files["units.csv"])
    assert units.cluster.notna().all()  # clusters joined per unit
    events = read_csv(files["events.csv"])
    pd.testing.assert_frame_equal(
        events.drop(columns="token"), result.events.drop(columns="token").reset_index(drop=True), check_dtype=False
    )
    assert events.token.tolist() == result.events.token.tolist()
    tg = read_csv(files["token_gates.csv"])
    assert tg.token.tolist() == result.token_gates.token.tolist()
    # Parquet round trip under RUN/analysis
    run = tmp_path / "run"
    run.mkdir()
    save_analysis(result, run)
    back = load_analysis(run)
    assert back.events_file == str(run / "analysis" / "events.parquet") and back.events.empty  # left on disk
    assert list(back.events.columns) == list(result.events.columns)
    pd.testing.assert_frame_equal(read_events(back), result.events.reset_index(drop=True))
    for name in Analysis.tables():
        if name != "events":
            pd.testing.assert_frame_equal(getattr(back, name), getattr(result, name).reset_index(drop=True))
    # the CSVs of the loaded analysis (events streamed from the Parquet file) are the same files
    again = export_csvs(trace, tmp_path / "csv2", analysis=back)
    for name, path in files.items():
        assert again[name].read_bytes() == path.read_bytes(), name


def _numeric_column(path, column):
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    return pd.api.types.is_numeric_dtype(df[column]) or pd.api.types.is_bool_dtype(df[column])


def test_analysis_from_lazy_store_equals_in_memory(tmp_path):
    trace = text_trace(7, n=9, t=8)
    lazy = write_store(trace, tmp_path / "run", chunk_sequences=4)
    steps = ("stats", "memory", "drivers", "events", "token_gates")
    a = analyze(trace, steps=steps)
    b = analyze(lazy, steps=steps, chunk=3)
    for name in Analysis.tables():
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), rtol=1e-12)
    files = export_csvs(lazy, tmp_path / "csv", analysis=b)
    save_analysis(b, tmp_path / "run")
    assert read_events(load_analysis(tmp_path / "run")).equals(b.events)
    assert files["activations.csv"].exists()
    # the analysis directory does not break the run's own checksums
    from gatelens.analysis.store import open_run

    open_run(tmp_path / "run", verify=True)


def test_a_step_that_cannot_run_is_skipped_and_an_unknown_step_refused(caplog):
    trace = text_trace(8)
    result = analyze(trace, steps=("memory", "clusters"))  # no stats: nothing to cluster
    assert "the stats step did not run" in result.skipped["clusters"] and result.clusters.empty
    assert "analysis step 'clusters' skipped" in caplog.text
    with pytest.raises(UsageError, match="unknown analysis step"):
        analyze(trace, steps=("stats", "magic"))


def test_load_analysis_errors(tmp_path):
    with pytest.raises(RunStoreError, match="no complete analysis"):
        load_analysis(tmp_path)
    result = analyze(text_trace(9), steps=("stats",))
    out = save_analysis(result, tmp_path)
    (out / "units.parquet").write_bytes(b"garbage")
    with pytest.raises(RunStoreError, match="does not match its checksum"):
        load_analysis(tmp_path)
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == "gatelens-analysis" and set(index["tables"]) == set(Analysis.tables())
    (out / "index.json").write_text("{not json")
    with pytest.raises(RunStoreError, match="unreadable analysis index"):
        load_analysis(tmp_path)


def test_docs_describe_every_column_of_every_file(full, tmp_path):
    """docs/csv-columns.md has a section per exported file naming each of its columns."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "csv-columns.md").read_text()
    sections = {}
    for part in doc.split("\n## ")[1:]:
        title, _, body = part.partition("\n")
        sections[title.strip()] = body
    trace, result, _ = full
    files = export_csvs(trace, tmp_path, analysis=result)
    signals = set(activation_columns(trace)[4:-1])
    for name, path in files.items():
        assert name in sections, f"docs/csv-columns.md has no section for {name}"
        documented = set()
        for line in sections[name].splitlines():
            if line.startswith("| `"):
                cell = line.split("|")[1]
                documented.update(c.strip(" `") for c in cell.split(","))
        columns = [c for c in read_csv(path).columns if not (name == "activations.csv" and c in signals)]
        missing = [c for c in columns if c not in documented]
        assert not missing, f"{name}: columns {missing} are not documented"


def test_analysis_never_imports_tensorflow_or_keras():
    import subprocess

    code = (
        "import sys, numpy as np\n"
        "import gatelens.analysis.pipeline, gatelens.analysis.export, gatelens.analysis.stats, gatelens.analysis.memory, gatelens.analysis.decompose\n"
        "import gatelens.analysis.events, gatelens.analysis.store\n"
        "from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace\n"
        "info = LayerInfo(name='lstm', cell_type='lstm', units=1, input_dim=1)\n"
        "lt = LayerTrace(info, {s: np.full((1, 3, 1), 0.5, np.float32) for s in info.signals},\n"
        "                mask=np.ones((1, 3), bool), inputs=np.zeros((1, 3, 1), np.float32))\n"
        "gatelens.analysis.pipeline.analyze(Trace({'lstm': lt}), steps=('stats', 'memory', 'events'))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_every_table_has_its_documented_header_full_or_empty(tmp_path):
    """A full table's columns are TABLE_COLUMNS' (the header an empty one gets), and both exports write that header
    for an empty table: export_run (the CLI) and export_csvs (the dashboard's zip)."""
    from gatelens.analysis.clusters import CLUSTER_COLUMNS
    from gatelens.analysis.export import TABLE_COLUMNS, export_csvs, export_run
    from gatelens.analysis.pipeline import EXPORT_FILES

    assert TABLE_COLUMNS["clusters"] == CLUSTER_COLUMNS
    trace = write_store(text_trace(11), tmp_path / "store")  # no TensorFlow: this file runs in the TF-free batch
    full = analyze(trace)
    for table in EXPORT_FILES.values():
        assert list(getattr(full, table).columns) == TABLE_COLUMNS[table], table
    empty = Analysis()
    export_run(trace, tmp_path / "run", analysis=empty)
    export_csvs(trace, tmp_path / "csvs", analysis=empty)
    for name in ("run", "csvs"):
        for fname, table in EXPORT_FILES.items():
            with open(tmp_path / name / fname, newline="") as f:
                rows = list(csv.reader(f))
            assert rows == [TABLE_COLUMNS[table]], (name, fname, rows)


def test_export_run_writes_its_manifest_last_and_removes_it_first(tmp_path, monkeypatch):
    """manifest.json says an export is complete: it lists every file written (with its size on disk), is written
    after them, and a later export into the same folder removes it before writing anything (so a killed export
    never leaves the previous export's manifest beside half of its own files)."""
    import gatelens.analysis.export as ex

    trace = write_store(text_trace(12), tmp_path / "store")
    out = tmp_path / "out"
    paths = ex.export_run(trace, out, format="parquet", signals=["hidden_state"], sequences=range(2, 99))
    doc = json.loads((out / ex.EXPORT_MANIFEST).read_text())
    assert doc["format"] == "parquet" and doc["signals"] == ["hidden_state"]
    assert doc["sequences"] == [2, trace.n_sequences] and doc["layers"] == list(trace.layers)
    assert doc["run"] == str(trace.path) and doc["run_manifest_sha256"] == trace.meta["manifest_sha256"]
    assert set(doc["files"]) == set(paths)
    for name, entry in doc["files"].items():
        p = paths[name]
        on_disk = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
        assert entry == {"path": p.name, "bytes": on_disk}
    newest = max(f.stat().st_mtime_ns for f in out.rglob("*") if f.is_file() and f.name != ex.EXPORT_MANIFEST)
    assert (out / ex.EXPORT_MANIFEST).stat().st_mtime_ns >= newest

    def fail(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(ex, "export_table", fail)
    with pytest.raises(RuntimeError, match="killed"):
        ex.export_run(trace, out, format="parquet")
    assert not (out / ex.EXPORT_MANIFEST).exists()  # the earlier files are there, but no manifest vouches for them
    assert (out / "units.parquet").exists()
