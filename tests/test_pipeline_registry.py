"""The analysis steps are one registry: the Analysis attributes, STEPS, saving/loading, the CSV export and the
docs all come from STEP_REGISTRY, and a step function is held to the tables its entry declares."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gatelens.analysis import export, pipeline
from gatelens.analysis.pipeline import STEP_REGISTRY, STEPS, Analysis, Step, analyze, load_analysis, save_analysis
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace

ROOT = Path(__file__).resolve().parent.parent


def _trace(n=3, t=6, units=2):
    info = LayerInfo(name="lstm", cell_type="lstm", units=units, input_dim=1)
    rng = np.random.default_rng(1)
    sig = {s: rng.uniform(0.0, 1.0, (n, t, units)).astype(np.float32) for s in info.signals}
    return Trace({"lstm": LayerTrace(info, sig, mask=np.ones((n, t), bool), inputs=np.zeros((n, t, 1), np.float32))})


def test_everything_is_derived_from_the_entries():
    assert STEPS == ("stats", "memory", "drivers", "events", "token_gates", "features", "correlations", "probes",
                     "clusters", "examples", "explanations")  # fmt: skip
    tables = [t for s in STEP_REGISTRY for t in s.tables]
    assert len(tables) == len(set(tables))
    assert Analysis.tables() == tuple(tables)
    assert [f.name for f in dataclasses.fields(Analysis)] == [*tables, "skipped", "events_file"]
    assert export.ANALYSIS_FILES == {f: t for s in STEP_REGISTRY for f, t in s.files.items()}
    assert set(export.ANALYSIS_FILES.values()) <= set(tables)
    for step in STEP_REGISTRY:
        assert step.doc and callable(step.run)
        assert f"From step ``{step.name}``" in Analysis.__doc__ or not step.tables
        assert f"- `{step.name}` -> " in pipeline.steps_markdown()


def test_every_exported_file_is_documented():
    text = (ROOT / "docs" / "csv-columns.md").read_text()
    headings = set(re.findall(r"^## (\S+\.csv)", text, flags=re.M))
    assert set(export.ANALYSIS_FILES) | {"activations.csv", "units.csv"} <= headings


def test_every_table_is_saved_and_loaded_back(tmp_path):
    a = Analysis(**{t: pd.DataFrame({"x": [i]}) for i, t in enumerate(Analysis.tables())})
    save_analysis(a, tmp_path)
    b = load_analysis(tmp_path)
    for i, t in enumerate(Analysis.tables()):
        if t == "events":
            assert pd.read_parquet(b.events_file)["x"].tolist() == [i]
        else:
            assert getattr(b, t)["x"].tolist() == [i], t


def test_each_step_fills_its_declared_tables():
    result = analyze(_trace(), steps=("stats", "memory"))
    filled = {t: not getattr(result, t).empty for t in Analysis.tables()}
    assert filled == {t: t in ("units", "signal_stats", "half_lives", "retention") for t in Analysis.tables()}


def test_a_new_step_is_one_function_and_one_entry(monkeypatch):
    calls = []

    def _extra(ctx):
        calls.append(ctx.result.units.empty)
        return {"token_gates": pd.DataFrame({"n_units": [len(ctx.result.units)]})}

    extra = Step("extra", _extra, ("token_gates",), {}, "a test step")
    monkeypatch.setattr(pipeline, "STEP_REGISTRY", (*STEP_REGISTRY, extra))
    monkeypatch.setattr(pipeline, "STEPS", (*STEPS, "extra"))
    result = analyze(_trace(), steps=("stats", "extra"))
    assert calls == [False]  # it ran after stats and saw its table
    assert result.token_gates["n_units"].tolist() == [len(result.units)]


def test_a_step_returning_an_undeclared_table_is_a_bug(monkeypatch):
    bad = Step("bad", lambda ctx: {"clusters": pd.DataFrame()}, ("probes",), {}, "returns the wrong table")
    monkeypatch.setattr(pipeline, "STEP_REGISTRY", (bad,))
    monkeypatch.setattr(pipeline, "STEPS", ("bad",))
    with pytest.raises(RuntimeError, match="undeclared table"):
        analyze(_trace(), steps=("bad",))


def test_misused_analyze_arguments_are_usage_errors_and_one_step_is_a_step():
    from gatelens._examples import example_trace
    from gatelens.analysis.pipeline import analyze_run
    from gatelens.errors import UsageError

    trace, _ = example_trace("lstm", n=2, steps=3, units=1, fill=0.5)
    # one step's name was split into its characters: "unknown analysis step(s) ['m', 'e', 'm', 'o', 'r', 'y']"
    assert analyze(trace, steps="memory").half_lives.equals(analyze(trace, steps=["memory"]).half_lives)
    assert not analyze_run(trace, steps="stats").units.empty
    for wrong in (np.zeros((2, 3)), object(), 3):  # a model, an array: a TypeError from pathlib before
        with pytest.raises(UsageError, match=r"analyze: expected a Trace \(gatelens.extract\) or a run directory"):
            analyze_run(wrong)
    with pytest.raises(UsageError, match="steps must be a step's name or a sequence of them, got 5"):
        analyze(trace, steps=5)


def test_a_numeric_trace_has_an_empty_token_gates_table_with_its_header():
    from gatelens._examples import example_trace
    from gatelens.analysis.decompose import TOKEN_GATE_COLUMNS

    trace, _ = example_trace("lstm", n=2, steps=3, units=1, fill=0.5)
    assert trace.tokens is None
    table = analyze(trace, steps=("token_gates",)).token_gates
    assert list(table.columns) == TOKEN_GATE_COLUMNS and table.empty  # it had no columns at all
