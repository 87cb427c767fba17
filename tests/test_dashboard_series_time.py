"""Dated step axes and the continuous (whole-series) view, through the dashboard's own load/extract path.

A real Keras GRU forecaster (4 quarters x 5 series in) and a CSV of 12 quarters with a ``date`` column, cut
with stride 1 into 9 windows: the run keeps every step's date (manifest), the gates page's chart puts those
dates on its x axis, and the continuous view shows each of the 12 records once, taken from the window and step
:func:`record_picks` names, with values equal to the trace at that (window, step) and inputs equal to the CSV row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gatelens.analysis.sources import sequence_table, time_grid
from gatelens.dashboards import charts, core
from gatelens.dashboards.continuous import continuous_series, record_picks, stride1_sources

SERIES = ["gdp", "unemp", "cpi", "rate", "wages"]
QUARTERS = pd.period_range("2021Q1", periods=12, freq="Q").to_timestamp().strftime("%Y-%m-%d").tolist()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import keras

    d = tmp_path_factory.mktemp("series")
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [keras.Input((4, 5)), keras.layers.GRU(3, return_sequences=True, name="gru"), keras.layers.Dense(1)],
        name="quarters",
    )
    model.save(d / "quarters.keras")
    rng = np.random.default_rng(1)
    values = rng.normal(size=(12, 5)).round(3)
    csv = pd.DataFrame(values, columns=SERIES).assign(date=QUARTERS)[["date", *SERIES]]
    csv.to_csv(d / "quarters.csv", index=False)
    bundle = core.load_model_bundle(core.ModelChoice(core.FileRef.of(d / "quarters.keras")))
    data = core.load_data_bundle(bundle, core.DataChoice(core.FileRef.of(d / "quarters.csv"), stride=1))
    result = core.run_analysis(bundle, data)
    yield result, values
    result._tmp.cleanup()


def test_the_run_keeps_the_date_of_every_step(run):
    result, _ = run
    grid = time_grid(result.trace)
    assert grid.shape == (9, 4)
    for w in range(9):
        assert list(grid[w]) == QUARTERS[w : w + 4]


def test_window_chart_has_a_date_axis(run):
    result, _ = run
    trace = result.trace
    strips = core.sequence_signals(trace, "gru", 2, ["update_gate"])
    spec = charts.series_with_strips(
        core.input_frame(trace, "gru", 2), strips, [0, 1, 2], times=time_grid(trace)[2]
    ).to_dict()
    strip = spec["vconcat"][1]
    assert strip["encoding"]["x"]["type"] == "temporal" and strip["encoding"]["x"]["title"] == "date"
    rows = spec["datasets"][strip["data"]["name"]]
    got = sorted({(r["x"][:10], r["x_end"][:10]) for r in rows})
    assert got == [(QUARTERS[2 + k], QUARTERS[3 + k]) for k in range(3)] + [
        (QUARTERS[5], "2022-07-02")
    ]  # last: + the median gap, 92 d
    for r in rows:  # each cell's value is the trace's
        assert r["value"] == pytest.approx(float(strips["update_gate"][r["step"], r["unit"]]), abs=0)
    # no date column: integer steps
    plain = charts.series_with_strips(core.input_frame(trace, "gru", 2), strips, [0]).to_dict()
    assert plain["vconcat"][1]["encoding"]["x"]["type"] == "quantitative"
    assert plain["vconcat"][1]["encoding"]["x"]["axis"]["format"] == "d"


def test_continuous_view_shows_each_record_once_from_the_latest_step(run):
    result, values = run
    trace = result.trace
    table = sequence_table(trace)
    assert stride1_sources(table) == [0]
    picks = record_picks(table, 0)
    # the first window's 4 steps, then the last step of each later window
    assert picks[["sequence", "step"]].values.tolist() == [[0, 0], [0, 1], [0, 2], [0, 3]] + [
        [w, 3] for w in range(1, 9)
    ]
    c = continuous_series(trace, "gru", 0, ["update_gate", "hidden_state"])
    assert not c.truncated and list(c.times) == QUARTERS
    np.testing.assert_array_equal(c.x[SERIES].to_numpy(), values.astype(np.float32).astype(np.float64))
    full = np.asarray(trace["gru"]["hidden_state"])
    for i, (w, t) in enumerate(picks[["sequence", "step"]].values):
        np.testing.assert_array_equal(c.strips["hidden_state"][i], full[w, t])
    spec = charts.series_with_strips(c.x, c.strips, [0, 1, 2], times=c.times).to_dict()
    rows = spec["datasets"][spec["vconcat"][1]["data"]["name"]]
    assert sorted({r["x"][:10] for r in rows}) == QUARTERS  # one long strip over all 12 quarters


def test_stride_other_than_one_has_no_continuous_view():
    t = pd.DataFrame({"sequence": [0, 0, 1, 1], "step": [0, 1, 0, 1], "source_sequence": 0, "source_row": [0, 1, 2, 3]})
    assert stride1_sources(t) == []


@pytest.mark.parametrize(
    "times",
    [None, ["2020-01-01"], ["2020-01-01", "later"], ["1800", "1801"], ["3", "4"]],
)
def test_not_dates_fall_back_to_steps(times):
    assert charts.time_index(times, 2) is None
