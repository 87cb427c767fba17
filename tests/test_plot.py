"""gatelens.plot: each chart holds the data of the trace or analysis it was asked for, checked against references
computed here from the arrays (NumPy), identities (the decomposition sums to the stored state, the pre-activation
parts to the stored pre-activation) and planted values (a forget gate of exactly 1, padded steps).

Every chart is also turned into its Vega-Lite spec (``to_dict`` validates it against the schema).
"""

from __future__ import annotations

import numpy as np
import pytest

import gatelens
from gatelens import plot
from gatelens._examples import tiny_inputs, tiny_model
from gatelens.analysis.signals import label
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace
from gatelens.errors import UsageError

N, T = 8, 10


@pytest.fixture(scope="module")
def trace() -> Trace:
    return gatelens.extract(tiny_model(steps=T), tiny_inputs(n=N, steps=T))


@pytest.fixture(scope="module")
def result(trace):
    return gatelens.analyze(trace)


@pytest.fixture(scope="module")
def planted() -> Trace:
    """An LSTM of 2 units over 3 sequences: unit 0 never forgets (gate exactly 1), sequence 1 padded after step 2."""
    info = LayerInfo(name="mem", cell_type="lstm", units=2, input_dim=1)
    rng = np.random.default_rng(3)
    sig = {s: rng.uniform(0.05, 0.95, size=(3, 6, 2)).astype(np.float32) for s in info.signals}
    sig["forget_gate"][..., 0] = 1.0
    mask = np.ones((3, 6), bool)
    mask[1, 3:] = False
    return Trace({"mem": LayerTrace(info, sig, mask=mask, inputs=np.zeros((3, 6, 1), np.float32))})


def test_gates_strips_hold_the_signals_of_the_chosen_units(trace):
    chart = plot.gates(trace, "lstm", units=[2, 0], sequence=5)
    chart.to_dict()
    names = ["input_gate", "forget_gate", "output_gate", "candidate", "cell_state"]
    assert [c.title for c in chart.vconcat] == ["input", *map(label, names)]
    x = chart.vconcat[0].data
    assert len(x) == T * 2  # two input features, long form
    ref_x = np.asarray(trace.x[5], np.float64)
    for j, name in enumerate(trace.feature_names or ["x0", "x1"]):
        got = x[x["feature"] == name].sort_values("step")["value"].to_numpy()
        assert np.array_equal(got, ref_x[:, j])
    for signal, c in zip(names, chart.vconcat[1:]):
        d = c.data.sort_values(["step", "unit"])
        ref = np.asarray(trace["lstm"][signal][5], np.float64)[:, [0, 2]]
        assert list(d["unit"].unique()) == [0, 2]
        assert np.array_equal(d["value"].to_numpy(), ref.reshape(-1))


def test_gates_leave_padded_steps_out_and_take_signals(planted):
    chart = plot.gates(planted, "mem", sequence=1, signals=["forget_gate"])
    strip = chart.vconcat[1].data
    assert sorted(set(strip["step"])) == [0, 1, 2] and len(strip) == 3 * 2
    assert set(strip.loc[strip["unit"] == 0, "value"]) == {1.0}


def test_unit_lines_are_the_units_signals(trace):
    chart = plot.unit(trace, "lstm", 1, sequence=3)
    chart.to_dict()
    d = chart.data
    assert set(d["signal"]) == {"input_gate", "forget_gate", "output_gate", "cell_state", "hidden_state"}
    for s in set(d["signal"]):
        rows = d[d["signal"] == s].sort_values("step")
        assert np.array_equal(rows["value"].to_numpy(), np.asarray(trace["lstm"][s][3, :, 1]))


def test_decomposition_sums_to_the_stored_cell_state(trace):
    chart = plot.decomposition(trace, "lstm", 2, sequence=4, step=6)
    chart.to_dict()
    parts = chart.layer[0].data
    assert list(parts["source_step"]) == list(range(-1, 7))  # the initial state and the writes of steps 0..6
    stored = float(trace["lstm"]["cell_state"][4, 6, 2])
    assert abs(parts["contribution"].sum() - stored) < 1e-5
    # default step: the last real one
    last = plot.decomposition(trace, "lstm", 2, sequence=4).layer[0].data
    assert abs(last["contribution"].sum() - float(trace["lstm"]["cell_state"][4, T - 1, 2])) < 1e-5


def test_preactivation_parts_are_x_w_h_u_and_b(trace):
    chart = plot.preactivations(trace, "lstm", 1, sequence=2)
    chart.to_dict()
    lt = trace["lstm"]
    w = lt.weights
    u_n = lt.info.units
    x = np.asarray(lt.inputs[2], np.float64)
    h_prev = np.vstack([np.zeros((1, u_n)), np.asarray(lt["hidden_state"][2], np.float64)[:-1]])
    for k, (gate, panel) in enumerate(zip(("input_gate", "forget_gate", "candidate", "output_gate"), chart.vconcat)):
        col = k * u_n + 1
        bars = panel.layer[0].data
        parts = {
            p: bars[bars["part"] == p].sort_values("step")["value"].to_numpy() for p in ("input", "memory", "bias")
        }
        assert np.allclose(parts["input"], x @ w["kernel"][:, col], atol=1e-5)
        assert np.allclose(parts["memory"], h_prev @ w["recurrent_kernel"][:, col], atol=1e-5)
        assert np.allclose(parts["bias"], w["bias"][col], atol=0)
        total = panel.layer[1].data.sort_values("step")["total"].to_numpy()
        assert np.allclose(total, np.asarray(lt[f"{gate}_pre"][2, :, 1]), atol=1e-5)


def test_saturation_points_are_the_shares_of_steps(trace, result):
    chart = plot.saturation(result)
    chart.to_dict()
    assert chart.title == label("forget_gate")
    pts = chart.layer[1].data.sort_values("unit")
    f = np.asarray(trace["lstm"]["forget_gate"][...], np.float64).reshape(-1, 3)
    assert np.allclose(pts["shut"], (f < 0.1).mean(axis=0)) and np.allclose(pts["open"], (f > 0.9).mean(axis=0))
    assert plot.saturation(result, "output_gate").title == label("output_gate")


def test_half_lives_count_units_and_name_the_infinite_ones(trace, planted):
    a = gatelens.analyze(planted, steps=["memory"])
    chart = plot.half_lives(a)
    chart.to_dict()
    assert int(chart.data["units"].sum()) == 1  # unit 1; unit 0 never forgets
    assert "1 unit(s) with an infinite half-life" in chart.title.subtitle
    f = np.asarray(planted["mem"]["forget_gate"][...], np.float64)[..., 1][planted["mem"].mask]
    expected = np.log(0.5) / np.log(f).mean()
    hl = a.half_lives.set_index("unit")["half_life_steps"]
    assert np.isinf(hl[0]) and abs(hl[1] - expected) < 1e-9 * expected


def test_retention_highlights_the_unit(result):
    chart = plot.retention(result, "lstm", 2)
    chart.to_dict()
    assert set(chart.layer[1].data["unit"]) == {2} and 2 not in set(chart.layer[0].data["unit"])
    r = chart.layer[1].data.sort_values("lag")["retention"].to_numpy()
    assert (np.diff(r) <= 1e-12).all()  # a product of gates in [0, 1] only shrinks with the lag


def test_correlations_probes_and_selectivity(trace, result):
    chart = plot.correlations(result, sort_by="value:x0")
    chart.to_dict()
    d = chart.data
    assert set(d["signal"]) == {"cell_state"} and len(d) == 3 * d["feature"].nunique()
    # the r of unit 0's cell state with input 0, recomputed
    c = np.asarray(trace["lstm"]["cell_state"][...], np.float64)[..., 0].reshape(-1)
    x0 = np.asarray(trace.x[...], np.float64)[..., 0].reshape(-1)
    row = d[(d["unit"] == 0) & (d["feature"] == "value:x0")]
    assert abs(float(row["pearson_r"].iloc[0]) - np.corrcoef(c, x0)[0, 1]) < 1e-6
    feature = result.probes.loc[result.probes["score"].notna(), "feature"].iloc[0]
    p = plot.probes(result, feature)
    p.to_dict()
    assert set(p.data["feature"]) == {feature} and p.data["score"].notna().all()
    s = plot.selectivity(result)
    s.to_dict()
    assert len(s.data) == result.probes["selectivity"].notna().sum()


def test_text_colours_each_token_and_escapes_it():
    info = LayerInfo(name="rnn", cell_type="gru", units=2, input_dim=1)
    sig = {s: np.full((1, 3, 2), 0.5, np.float32) for s in info.signals}
    t = Trace(
        {"rnn": LayerTrace(info, sig, mask=np.ones((1, 3), bool), inputs=np.zeros((1, 3, 1)))},
        tokens=np.array([[0, 1, 2]]),
        vocabulary=["<script>", "a", "b"],
    )
    page = plot.text(t, "rnn", units=[1], signal="update_gate")
    assert page._repr_html_() == str(page)
    assert "&lt;script&gt;" in page and "<script>" not in page and page.count('class="gl-tok"') == 3


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda t, a: plot.gates(t, "nope"), r"no recurrent layer 'nope'; the trace has \['lstm'\]"),
        (lambda t, a: plot.gates(t, "lstm", units=[3]), r"units must be integers in 0..2"),
        (lambda t, a: plot.gates(t, "lstm", sequence=N), rf"sequence must be an integer in 0..{N - 1}"),
        (lambda t, a: plot.gates(t, "lstm", signals=["update_gate"]), r"has no signal\(s\) \['update_gate'\]"),
        (lambda t, a: plot.unit(t, "lstm", [0, 1]), r"unit must be one integer"),
        (lambda t, a: plot.decomposition(t, "lstm", 0, step=T), r"step must be a real step"),
        (lambda t, a: plot.preactivations(t, "lstm", 0, gates="reset_gate"), r"no gate\(s\) \['reset_gate'\]"),
        (lambda t, a: plot.text(t, "lstm"), r"needs a text model"),
        (lambda t, a: plot.saturation(a, "update_gate"), r"no gate 'update_gate'"),
        (lambda t, a: plot.correlations(a, sort_by="nope"), r"no feature 'nope'"),
        (lambda t, a: plot.probes(a, "nope"), r"no probe scores for feature 'nope'"),
        (lambda t, a: plot.retention(a, "lstm", 9), r"no unit 9"),
        (lambda t, a: plot.saturation(gatelens.Analysis()), r"no units table"),
        (lambda t, a: plot.half_lives(t), r"expected an Analysis"),
        (lambda t, a: plot.gates(a, "lstm"), r"expected a Trace \(gatelens.extract, .*got Analysis"),
        (lambda t, a: plot.unit(a, "lstm", 0), r"expected a Trace .*got Analysis"),
        (lambda t, a: plot.decomposition(np.zeros(3), "lstm", 0), r"expected a Trace .*got ndarray"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(trace, result, call, message):
    with pytest.raises(UsageError, match=message) as e:
        call(trace, result)
    assert "\n" not in str(e.value)


def test_plot_works_on_a_run_from_the_store(tmp_path, trace):
    """A lazily opened run gives the same charts as the trace in memory."""
    run = gatelens.write_run(tiny_model(steps=T), tiny_inputs(n=N, steps=T), tmp_path / "run", batch_size=4)
    a = plot.gates(run, "lstm", units=[1], sequence=6).vconcat[2].data
    b = plot.gates(trace, "lstm", units=[1], sequence=6).vconcat[2].data
    assert np.array_equal(a["value"].to_numpy(), b["value"].to_numpy())
    assert gatelens.plot is plot


def test_a_registered_signal_shows_up_in_the_charts_and_conversions():
    """Charts and conversions take their signal lists and labels from the registry (no list of their own)."""
    from gatelens.analysis import signals as registry

    record = registry.register(registry.Signal("write_share", "gate", ("lstm",), (0.0, 1.0), label="write share"))
    try:
        info = LayerInfo(name="lstm", cell_type="lstm", units=2, input_dim=1)
        rng = np.random.default_rng(0)
        sig = {s: rng.uniform(size=(2, 4, 2)).astype(np.float32) for s in info.signals}
        t = Trace({"lstm": LayerTrace(info, sig, mask=np.ones((2, 4), bool), inputs=np.zeros((2, 4, 1), np.float32))})
        assert "write share" in [c.title for c in plot.gates(t, "lstm").vconcat]
        assert "write_share" in set(plot.unit(t, "lstm", 0).data["signal"])
        assert "write_share" in t.to_xarray("lstm") and "write_share" in set(t.to_frame("lstm")["signal"])
    finally:
        registry.unregister(record.name)


def test_relative_strips_shade_each_unit_from_its_min_to_its_max(trace):
    strip = plot.gates(trace, "lstm", units=[0, 1], sequence=2, signals="forget_gate", relative=True).vconcat[1].data
    for u in (0, 1):
        rows = strip[strip["unit"] == u].sort_values("step")
        v = np.asarray(trace["lstm"]["forget_gate"][2, :, u], np.float64)
        assert np.array_equal(rows["value"].to_numpy(), v)  # the value itself is kept for the tooltip
        assert np.allclose(rows["shade"].to_numpy(), (v - v.min()) / (v.max() - v.min()))
    text_trace = Trace({"lstm": trace["lstm"]}, tokens=np.zeros((N, T), np.int32), vocabulary=["a"])
    html = plot.text(text_trace, "lstm", units=[0], relative=True)
    assert html.count('class="gl-tok"') == T
