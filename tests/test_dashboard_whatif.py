"""The "What if" page (AppTest, in this process, on the tiny real demos): clamp a unit, the output-change chart
appears, its numbers equal gatelens.intervene on the same input; the sweep rank and the explain page's sentence."""

from __future__ import annotations

import json

import numpy as np
from test_dashboard_apptest import _chart_data, _no_exception, _open, demo_dir  # noqa: F401 - demo_dir is a fixture

from gatelens.analysis.effects import step_effects
from gatelens.models import load_model
from gatelens.models.data import load_data
from gatelens.models.intervene import intervene, resolve_targets, sweep
from gatelens.models.spec import input_spec, read_vocabulary


def _demo_input(paths):
    model = load_model(paths["text_model"])
    spec = input_spec(model, vocabulary=read_vocabulary(paths["vocab"]))
    return model, load_data(paths["text_data"], spec).x


def test_whatif_page_clamps_a_unit_and_its_numbers_are_the_librarys(demo_dir):  # noqa: F811
    at = _open("whatif")
    at.selectbox(key="whatif_layer").set_value("lstm").run()
    at.number_input(key="whatif_unit").set_value(3).run()
    at.number_input(key="whatif_sequence").set_value(1).run()
    at.radio(key="whatif_action").set_value("forget now (f = 0)").run()
    _no_exception(at)
    model, x = _demo_input(demo_dir)
    res = intervene(model, x[1:2], "lstm:3:forget_gate=0")
    ref = step_effects(res.original, res.intervened, "loss", resolve_targets("next_token", x[1:2]))
    assert np.nanmax(np.abs(ref["effect"])) > 1e-4  # the clamp changed the loss: the comparison is not of zeros
    assert np.isnan(ref["effect"][0, -1])  # the last step has no next token
    # the chart's own data (the Arrow dataset Streamlit ships with its Vega-Lite spec) and the table
    chart = _chart_data(at, "Change of the loss of the next token")
    table = next(d.value for d in at.dataframe if "change" in d.value.columns)
    for shown in (chart, table):
        assert shown["step"].tolist() == list(range(x.shape[1]))
        for col in ("original", "intervened", "change"):
            key = "effect" if col == "change" else col
            np.testing.assert_allclose(shown[col].to_numpy(), ref[key][0], rtol=1e-9, equal_nan=True, err_msg=col)
    vocab = json.loads(demo_dir["vocab"].read_text())["tokens"]
    assert table["input"].tolist() == [vocab[i] for i in x[1]]
    assert table["target"].tolist()[:-1] == x[1, 1:].tolist()

    at.button(key="whatif_sweep").click().run()
    _no_exception(at)
    df = sweep(model, x, "lstm", op="zero", signal="hidden_state", n_boot=200)
    rank = int(df.loc[df["unit"] == 3, "rank"].iloc[0])
    sentence = [m.value for m in at.markdown if "rank" in m.value]
    assert sentence and f"rank {rank} of 8" in sentence[0], sentence
    # the unit explanation gains the sentence from the sweep (same session)
    at.switch_page("views/explain.py").run()
    _no_exception(at)
    assert any(
        m.value.startswith("**What silencing it does.**") and f"rank {rank} of 8" in m.value for m in at.markdown
    )


def test_whatif_page_on_a_regressor_draws_the_output_change(demo_dir):  # noqa: F811
    from test_dashboard_apptest import _select_series_demo

    at = _select_series_demo(_open())
    at.switch_page("views/whatif.py").run()
    _no_exception(at)
    at.number_input(key="whatif_unit").set_value(2).run()
    at.radio(key="whatif_action").set_value("overwrite now (z = 0)").run()
    _no_exception(at)
    model = load_model(demo_dir["series_model"])
    x = load_data(demo_dir["series_data"], input_spec(model), columns=["load", "temp"]).x[:1]
    res = intervene(model, x, "gru:2:update_gate=0")
    ref = step_effects(res.original, res.intervened)["effect"][0]
    assert ref.max() > 1e-4  # the clamp changed the forecast
    chart = _chart_data(at, "Change of the model's output")
    np.testing.assert_allclose(chart["change"].to_numpy(), ref, rtol=1e-9)
    np.testing.assert_allclose(chart["original"].to_numpy(), res.original[0, :, 0], rtol=1e-6)
    np.testing.assert_allclose(chart["intervened"].to_numpy(), res.intervened[0, :, 0], rtol=1e-6)
