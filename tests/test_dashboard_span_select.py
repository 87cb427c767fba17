"""The Search page's mouse span selection without a browser: the brush's chart coordinates -> steps, and the chart.

Step ``t`` is drawn as the cell ``[t, t + 1)`` (x: ``step``, x2: ``step_end``); a brush from ``lo`` to ``hi`` selects
every step whose cell it touches. The Chromium test (tests/test_dashboard_readable_e2e.py) drags the real chart.
"""

from __future__ import annotations

import numpy as np
import pytest

from gatelens.dashboards.span_select import BRUSH, brushed_span, span_chart


@pytest.mark.parametrize(
    "lo, hi, want",
    [
        (2.5, 5.5, (2, 6)),  # from the middle of step 2 to the middle of step 5
        (5.5, 2.5, (2, 6)),  # dragged right to left
        (3.0, 4.0, (3, 4)),  # exactly one cell
        (0.1, 0.2, (0, 1)),
        (-4.0, 99.0, (0, 12)),  # clipped to the sequence
        (11.9, 14.0, (11, 12)),
    ],
)
def test_brush_to_steps(lo, hi, want):
    assert brushed_span({BRUSH: {"step": [lo, hi]}}, 12) == want


@pytest.mark.parametrize("sel", [{}, {BRUSH: {}}, {BRUSH: {"step": []}}, {BRUSH: {"step": [float("nan"), 1]}}, None])
def test_no_brush_is_no_span(sel):
    assert brushed_span(sel, 12) is None


def test_chart_draws_every_real_step_of_every_unit_with_its_value():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(7, 3)).astype(np.float32)
    mask = np.array([1, 1, 1, 1, 1, 0, 0], bool)
    spec = span_chart(values, "cell_state", mask=mask).to_dict()
    rows = next(iter(spec["datasets"].values()))
    got = {(r["step"], r["unit"]): r["value"] for r in rows}
    assert set(got) == {(t, u) for t in range(5) for u in range(3)}  # padded steps left out
    for (t, u), v in got.items():
        assert v == float(values[t, u])
    assert all(r["step_end"] == r["step"] + 1 for r in rows)
    assert spec["encoding"]["x"]["field"] == "step" and spec["encoding"]["x2"]["field"] == "step_end"
    assert spec["encoding"]["x"]["scale"]["domain"] == [0, 7]
    assert spec["params"] == [{"name": BRUSH, "select": {"type": "interval", "encodings": ["x"]}}]
