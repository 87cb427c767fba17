"""The plain-language unit summary: planted units whose memory, forgetting and tracking are known by construction.

The trace is hand-set (an LSTM layer of three units over random text), the analysis is the real
:func:`gatelens.analysis.pipeline.analyze`, and the expected answers are computed here independently:

* unit 0: forget gate fixed at 0.5 -> half-life exactly 1 step;
* unit 1: forget gate exactly 1 -> no decay, an infinite half-life;
* unit 2: forget gate 0.95, dropping to 0.1 at every ';' -> forget events exactly where a ';' follows
  a non-';', and a cell state equal to the bracket depth -> it "closely follows bracket_depth" (r = 1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gatelens.analysis.features import build_features
from gatelens.analysis.pipeline import analyze
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace
from gatelens.dashboards.explain import describe_half_life, explain_unit, interesting_unit, notable_units, primer

VOCAB = ["", "a", "b", "(", ")", ";", " "]
N, T = 6, 48


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p)).astype(np.float32)


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    tokens = rng.choice(np.arange(1, len(VOCAB)), size=(N, T), p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.1])
    info = LayerInfo(name="lstm", cell_type="lstm", units=3, input_dim=1)
    sig = {s: np.zeros((N, T, 3), np.float32) for s in info.signals}
    semi = tokens == VOCAB.index(";")
    sig["forget_gate"][..., 0] = 0.5
    sig["forget_gate"][..., 1] = 1.0
    sig["forget_gate"][..., 2] = np.where(semi, 0.1, 0.95)
    sig["input_gate"][...] = 0.5
    sig["output_gate"][...] = 0.5
    mask = np.ones((N, T), bool)
    base = Trace(
        {"lstm": LayerTrace(info, sig, mask=mask, inputs=np.zeros((N, T, 1), np.float32))},
        tokens=tokens,
        vocabulary=VOCAB,
    )
    depth = build_features(base)["bracket_depth"].to_numpy().reshape(N, T)
    sig["cell_state"][..., 2] = depth
    sig["hidden_state"][..., 2] = np.tanh(depth) * 0.5
    for gate in ("input_gate", "forget_gate", "output_gate"):
        sig[f"{gate}_pre"][...] = _logit(sig[gate])
    sig["forget_gate_pre"][..., 1] = 20.0  # sigmoid(20) is 1.0 in float32
    trace = Trace(
        {"lstm": LayerTrace(info, sig, mask=mask, inputs=np.zeros((N, T, 1), np.float32))},
        tokens=tokens,
        vocabulary=VOCAB,
    )
    analysis = analyze(trace, steps=("stats", "memory", "events", "features", "correlations", "clusters"))
    # independent count of the planted forget events: a ';' right after a step that was not a ';'
    expected_forgets = int((semi[:, 1:] & ~semi[:, :-1]).sum())
    return trace, analysis, expected_forgets


def test_half_life_of_one_step(planted):
    trace, analysis, _ = planted
    s = explain_unit(trace, analysis, "lstm", 0)
    assert s.numbers["half_life_steps"] == pytest.approx(1.0, rel=1e-6)
    assert s.numbers["forget_gate:mean"] == pytest.approx(0.5, rel=1e-6)
    memory = dict(s.sections)["How long it remembers"]
    assert "forget gate (how much of its cell it keeps) is 0.50 on average" in memory
    assert "after about 1 step (half-life 1.0 steps)" in memory
    # retention over 10 steps of a gate fixed at 0.5 is 0.5 ** 10
    assert s.numbers["retention_10"] == pytest.approx(0.5**10, rel=1e-5)
    assert "keeps 0% of its memory" in memory
    assert dict(s.sections)["What makes it forget"].endswith(
        "its memory fades gradually instead, at the half-life above."
    )
    assert s.headline.startswith("Unit 0 of layer lstm (LSTM, 3 units)")
    assert "it keeps half of its memory for about 1 step" in s.headline


def test_gate_stuck_open_never_decays(planted):
    trace, analysis, _ = planted
    s = explain_unit(trace, analysis, "lstm", 1)
    assert math.isinf(s.numbers["half_life_steps"])
    assert "never lets the memory decay" in dict(s.sections)["How long it remembers"]
    assert "forget gate 100% open, 0% shut (almost always open)" in dict(s.sections)["How its gates sit"]
    assert s.numbers["forget_events"] == 0
    assert dict(s.sections)["What makes it forget"] == (
        "It never forgets at once: its forget gate never falls from above 0.9 to below 0.5 on this input."
    )


def test_forgets_at_semicolons_and_tracks_bracket_depth(planted):
    trace, analysis, expected_forgets = planted
    s = explain_unit(trace, analysis, "lstm", 2)
    assert expected_forgets > 5
    assert s.numbers["forget_events"] == expected_forgets
    forget = dict(s.sections)["What makes it forget"]
    assert f"forgets (its forget gate falls from above 0.9 to below 0.5) {expected_forgets} times" in forget
    top_token = forget.split("Most over-represented tokens there:")[1].split(" n=")[0].strip()
    assert top_token.strip("'\"") == ";"
    tracks = dict(s.sections)["What it tracks"]
    assert s.numbers["top_feature_r"] == pytest.approx(1.0, abs=1e-6)
    assert tracks.startswith("Its cell state closely follows bracket_depth: it is higher where bracket_depth is larger")
    assert "it follows bracket_depth (r = +1.00)" in s.headline
    assert "Pearson r = +1.00" in tracks
    assert f"over {N * T} steps" in tracks


def test_interesting_and_notable_units(planted):
    trace, analysis, _ = planted
    assert interesting_unit(trace, analysis) == ("lstm", 2)
    assert notable_units(analysis, "lstm", 3, k=2)[0] == 2
    assert sorted(notable_units(analysis, "lstm", 3, k=5)) == [0, 1, 2]


def test_without_correlations_the_longest_finite_memory_is_opened(planted):
    trace, analysis, _ = planted
    from dataclasses import replace

    import pandas as pd

    bare = replace(analysis, correlations=pd.DataFrame())
    # unit 1 is infinite, unit 2 (0.95 mostly) remembers longer than unit 0 (0.5)
    assert interesting_unit(trace, bare) == ("lstm", 2)


def test_bad_unit_or_layer_is_refused(planted):
    trace, analysis, _ = planted
    with pytest.raises(ValueError, match="unit 3 is out of range: layer 'lstm' has 3 units"):
        explain_unit(trace, analysis, "lstm", 3)
    with pytest.raises(ValueError, match="unknown layer 'gru'"):
        explain_unit(trace, analysis, "gru", 0)


@pytest.mark.parametrize(
    "half_life, expected",
    [
        (0.4, "it forgets most of what it holds at every step (half-life 0.40 steps)"),
        (1.0, "half of what it stores is still there after about 1 step (half-life 1.0 steps)"),
        (37.25, "half of what it stores is still there after about 37 steps (half-life 37.2 steps)"),
        (math.inf, "its forget gate never lets the memory decay on this input (half-life: infinite)"),
    ],
)
def test_describe_half_life(half_life, expected):
    assert describe_half_life(half_life, "forget_gate").startswith(expected)


def test_primer_names_the_update_rule():
    assert "c_t = f_t * c_(t-1) + i_t * g_t" in primer("lstm")
    assert "h_t = z_t * h_(t-1) + (1 - z_t) * candidate_t" in primer("gru")
