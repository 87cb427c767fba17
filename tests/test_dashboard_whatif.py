"""The "What if" page (AppTest, in this process, on the tiny real demos): clamp a unit, the output-change chart
appears, its numbers equal gatelens.intervene on the same input; the sweep rank and the explain page's sentence."""

from __future__ import annotations

import json

import numpy as np
from test_dashboard_apptest import _charts, _no_exception, _open, demo_dir  # noqa: F401 - demo_dir is a fixture

from gatelens.analysis.effects import step_effects
from gatelens.models import load_model
from gatelens.models.data import load_data
from gatelens.models.intervene import intervene, sweep
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
    charts = [c for c in _charts(at) if json.dumps(c).find("Output change per step") >= 0]
    assert len(charts) == 1
    table = next(d.value for d in at.dataframe if "change" in d.value.columns)
    model, x = _demo_input(demo_dir)
    res = intervene(model, x[1:2], "lstm:3:forget_gate=0")
    ref = step_effects(res.original, res.intervened)["effect"][0]
    np.testing.assert_allclose(table["change"].to_numpy(), ref, atol=1e-7)
    assert ref.max() > 0  # the clamp changed the output: the comparison is not of zeros

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
