"""Which input feature moves each gate (issue 17.4): exact splits of the input part, on a real Keras model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from gatelens.analysis.decompose import feature_drivers, input_contributions, preactivation_decomposition
from gatelens.models import extract

FEATURES = ["gdp", "unemp", "rate"]


@pytest.fixture(scope="module")
def trace():
    """An LSTM(2) on 3 series whose forget gate reads only ``unemp`` (hand-set kernel), other gates all three."""
    model = keras.Sequential([keras.Input((12, 3)), keras.layers.LSTM(2, return_sequences=True, name="lstm")])
    rng = np.random.default_rng(5)
    kernel = rng.normal(scale=0.7, size=(3, 8)).astype("float32")
    kernel[:, 2:4] = 0.0  # forget-gate block (i, f, c, o), both units
    kernel[1, 2:4] = [1.5, -2.0]
    rec = rng.normal(scale=0.5, size=(2, 8)).astype("float32")
    bias = rng.normal(scale=0.2, size=8).astype("float32")
    model.layers[0].set_weights([kernel, rec, bias])
    x = rng.normal(size=(5, 12, 3)).astype("float32") * np.array([1.0, 2.0, 0.5], np.float32)
    return extract(model, x, feature_names=FEATURES)


def test_a_gate_that_reads_one_feature_gets_all_its_push(trace):
    d = feature_drivers(trace)
    f = d[d["gate"] == "forget_gate"]
    assert set(f["unit"]) == {0, 1}
    for _, row in f.iterrows():
        assert row["input_push_share"] == (1.0 if row["feature"] == "unemp" else 0.0), row.to_dict()
    other = d[d["gate"] == "input_gate"].groupby("unit")["input_push_share"]
    np.testing.assert_allclose(other.sum(), 1.0, atol=1e-12)
    assert (d[d["gate"] == "input_gate"]["input_push_share"] > 0).all()


def test_feature_contributions_sum_back_to_the_input_part(trace):
    """Per step: sum over features of x[f] W[f] == the input column of the pre-activation decomposition."""
    per = input_contributions(trace, "lstm")
    total = per.groupby(["sequence", "step", "unit", "gate"], sort=True)["contribution"]
    summed, scale = (
        total.sum(),
        per.assign(a=per["contribution"].abs()).groupby(["sequence", "step", "unit", "gate"], sort=True)["a"].sum(),
    )
    dec = preactivation_decomposition(trace, "lstm").set_index(["sequence", "step", "unit", "gate"]).sort_index()
    inp = dec["input"].loc[summed.index].to_numpy(np.float64)
    bound = 1e-5 * np.maximum(1.0, scale.to_numpy())
    assert np.all(np.abs(summed.to_numpy() - inp) <= bound)


def test_means_equal_the_per_step_contributions_averaged(trace):
    per = input_contributions(trace, "lstm")
    ref = per.assign(a=per["contribution"].abs()).groupby(["unit", "gate", "feature"])[["contribution", "a"]].mean()
    d = feature_drivers(trace).set_index(["unit", "gate", "feature"]).loc[ref.index]
    np.testing.assert_allclose(d["mean_contribution"], ref["contribution"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(d["mean_abs_contribution"], ref["a"], rtol=1e-6, atol=1e-7)
    assert (d["n"] == 5 * 12).all()


def test_embedding_fed_layers_are_left_out():
    model = keras.Sequential(
        [keras.Input((6,), dtype="int32"), keras.layers.Embedding(9, 3), keras.layers.LSTM(2, name="lstm")]
    )
    t = extract(model, np.arange(12).reshape(2, 6) % 9)
    assert feature_drivers(t).empty and list(feature_drivers(t).columns)[:4] == ["layer", "unit", "gate", "feature"]


def test_driver_tables_are_both_tables_from_one_pass(trace, monkeypatch):
    """driver_tables (the pipeline's one pass) against gate_drivers and feature_drivers on their own, and the same
    to the bit on one thread as on two (chunks of one sequence: five chunks in flight)."""
    import pandas as pd

    import gatelens.analysis.decompose as dec
    from gatelens.analysis import _threads

    gates, features = dec.driver_tables(trace, chunk=1)
    pd.testing.assert_frame_equal(gates, dec.gate_drivers(trace), check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(features, feature_drivers(trace), check_exact=False, rtol=1e-12)
    monkeypatch.setattr(_threads, "PASS_THREADS", 1)
    one_gates, one_features = dec.driver_tables(trace, chunk=1)
    pd.testing.assert_frame_equal(one_gates, gates, check_exact=True)
    pd.testing.assert_frame_equal(one_features, features, check_exact=True)
