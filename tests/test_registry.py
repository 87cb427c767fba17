"""The signal registry is the one source of every signal list: a dummy signal registered here (and removed
after) shows up in the extractor's and the run store's signal lists, the CSV columns, the chart labels and
scales, and every dashboard page's signal list; and no consumer names a signal on its own."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np
import pytest

from gatelens.analysis import signals as registry
from gatelens.analysis.signals import Signal, signals_for
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace

ROOT = Path(__file__).resolve().parent.parent
DUMMY = "write_share"


@pytest.fixture
def dummy():
    before = {c: signals_for(c) for c in registry.CELL_TYPES}
    record = registry.register(
        Signal(DUMMY, "gate", ("lstm",), (0.0, 1.0), label="write share", description="the share it writes")
    )
    try:
        yield record
    finally:
        registry.unregister(DUMMY)
    assert {c: signals_for(c) for c in registry.CELL_TYPES} == before


def _trace(n=2, t=5, units=3, seed=0):
    rng = np.random.default_rng(seed)
    info = LayerInfo(name="lstm", cell_type="lstm", units=units, input_dim=1)
    sig = {s: rng.uniform(0.0, 1.0, (n, t, units)).astype(np.float32) for s in info.signals}
    return Trace({"lstm": LayerTrace(info, sig, mask=np.ones((n, t), bool), inputs=np.zeros((n, t, 1), np.float32))})


def test_builtin_tables_are_derived_from_the_records():
    assert signals_for("lstm") == (
        "input_gate", "forget_gate", "candidate", "output_gate", "cell_state", "hidden_state",
        "input_gate_pre", "forget_gate_pre", "candidate_pre", "output_gate_pre",
    )  # fmt: skip
    assert registry.WEIGHT_BLOCKS["gru"] == ("update_gate", "reset_gate", "candidate")
    assert registry.PRE_ACTIVATION["simple_rnn"] == {"hidden_state": "hidden_state_pre"}
    assert [registry.with_role(c, "keep") for c in registry.CELL_TYPES] == ["forget_gate", "update_gate", None]
    for cell in registry.CELL_TYPES:
        for name in signals_for(cell):
            record = registry.get(name)
            assert cell in record.cells
            assert (record.kind == "gate") == (name in registry.GATES[cell])
            assert (record.kind == "pre-activation") == (name in registry.PRE_ACTIVATION[cell].values())


def test_registering_twice_or_a_bad_record_is_refused(dummy):
    from gatelens.errors import UsageError

    with pytest.raises(UsageError, match="registered already"):
        registry.register(Signal(DUMMY, "gate", ("lstm",)))
    with pytest.raises(UsageError, match="kind must be"):
        Signal("x", "gatey", ("lstm",))
    with pytest.raises(UsageError, match="cells must be"):
        Signal("x", "gate", ("transformer",))


def test_dummy_is_in_the_extractor_and_store_signal_lists(dummy, tmp_path):
    assert signals_for("lstm")[-1] == DUMMY and DUMMY not in signals_for("gru")
    assert DUMMY in LayerInfo(name="l", cell_type="lstm", units=1, input_dim=1).signals
    assert registry.GATES["lstm"][-1] == DUMMY
    # a layer trace without it is incomplete (the extractor's and the store's check)
    info = LayerInfo(name="l", cell_type="lstm", units=1, input_dim=1)
    partial = {s: np.zeros((1, 1, 1)) for s in info.signals if s != DUMMY}
    with pytest.raises(ValueError, match=DUMMY):
        LayerTrace(info, partial, mask=np.ones((1, 1), bool), inputs=np.zeros((1, 1, 1)))
    # the run store writes and reads it back like every other signal
    from gatelens.analysis.store import RunWriter, open_run

    trace = _trace()
    lt = trace["lstm"]
    with RunWriter(tmp_path / "run", [lt.info], n_sequences=2, n_steps=5, chunk_sequences=2) as w:
        batch = {s: lt[s] for s in lt.info.signals} | {"mask": lt.mask, "input": lt.inputs}
        w.write_batch(0, {"lstm": batch})
        w.finish(verification={"lstm": 0.0})
    run = open_run(tmp_path / "run")
    assert (tmp_path / "run" / "layers" / "lstm" / DUMMY).is_dir()
    np.testing.assert_array_equal(np.asarray(run["lstm"][DUMMY]), lt[DUMMY])


def test_dummy_is_in_the_csv_columns_and_the_statistics(dummy, tmp_path):
    from gatelens.analysis.export import activation_columns, write_activations_csv
    from gatelens.analysis.stats import signal_stats

    trace = _trace()
    assert DUMMY in activation_columns(trace)
    path = write_activations_csv(trace, tmp_path / "activations.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert DUMMY in rows[0] and len(rows) == 2 * 5 * 3
    got = np.array([float(r[DUMMY]) for r in rows if r["sequence"] == "1" and r["unit"] == "2"])
    np.testing.assert_array_equal(got.astype(np.float32), trace["lstm"][DUMMY][1, :, 2])
    stats = signal_stats(trace)
    row = stats[(stats["signal"] == DUMMY) & (stats["unit"] == 0)].iloc[0]
    assert row["mean"] == pytest.approx(float(trace["lstm"][DUMMY][..., 0].astype(np.float64).mean()))


def test_dummy_gets_its_label_and_range_in_charts_and_text(dummy):
    import pandas as pd

    from gatelens.dashboards import charts, render

    trace = _trace()
    assert DUMMY in charts.strip_signals("lstm")
    assert charts.signal_colour_scale(DUMMY, np.array([0.3])).to_dict()["domain"] == [0.0, 1.0]
    assert render.signal_scale(DUMMY, 7.0) == render.Scale("sequential", 0.0, 1.0)
    strips = {s: np.asarray(trace["lstm"][s][0]) for s in charts.strip_signals("lstm")}
    spec = charts.series_with_strips(pd.DataFrame({"step": range(5), "x": 0.0}), strips, [0, 1]).to_dict()
    titles = [c.get("title") for c in spec["vconcat"]]
    assert "write share" in titles and "forget gate" in titles
    units = pd.DataFrame({"layer": "lstm", "unit": [0], "signal": DUMMY, "mean": [0.5],
                          "frac_below_0.1": [0.1], "frac_above_0.9": [0.2]})  # fmt: skip
    assert charts.saturation_scatter(units, DUMMY).to_dict()["title"] == "write share"
    html_ = render.unit_rows_html(list("abcde"), strips, DUMMY, [0], layer="lstm")
    assert "write share" in html_ and "lstm unit 0 · write share" in html_


def test_dummy_is_in_every_page_signal_list(dummy):
    from gatelens.dashboards import core, signal_lists

    trace = _trace()
    shown = core.sequence_signals(trace, "lstm", 0)
    assert DUMMY in shown and not any(registry.kind_of(s) == "pre-activation" for s in shown)
    options, default = signal_lists.colour_options(list(shown))  # gates page, text
    assert DUMMY in options[: len(registry.GATES["lstm"])] and default == "cell_state"
    assert DUMMY in signal_lists.strip_options("lstm", shown)  # gates page, series
    assert DUMMY in signal_lists.unit_line_signals(shown)  # unit explained page
    assert DUMMY in signal_lists.saturation_gates(["forget_gate", DUMMY])  # units page
    assert signal_lists.correlation_default([DUMMY, "cell_state"]) == "cell_state"  # features page
    assert signal_lists.memory_layers(trace) == ["lstm"]  # memory page


CONSUMERS = [
    "analysis/_reading.py", "analysis/events.py", "analysis/clusters.py", "analysis/probes.py",
    "dashboards/render.py", "dashboards/charts.py", "dashboards/explain.py", "dashboards/core.py",
    "dashboards/signal_lists.py", "gatelens/plot.py", "analysis/convert.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "dashboards" / "views").glob("*.py")),
]  # fmt: skip


def _literal_signal_names(path: Path) -> list[tuple[int, str]]:
    """String constants (not docstrings, not kind names passed to ``of_kind``) that name a signal."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            skip.add(id(body[0].value))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "of_kind":
            skip.update(id(a) for a in node.args[1:])
    names = {r.name for r in registry.records()}
    return sorted(
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
        and (node.value in names or node.value.endswith(("_gate", "_gate_pre")))
    )  # fmt: skip


@pytest.mark.parametrize("module", CONSUMERS)
def test_no_consumer_names_a_signal_itself(module):
    assert _literal_signal_names(ROOT / module) == []


def test_the_literal_check_catches_a_hard_coded_name(tmp_path):
    p = tmp_path / "page.py"
    p.write_text('"""doc: forget_gate."""\nx = [s for s in y if s.endswith("_gate")]\nz = "cell_state"\n')
    assert _literal_signal_names(p) == [(2, "_gate"), (3, "cell_state")]
