"""Gate statistics and memory: hand-computed values, independent formulas, brute-force references."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from helpers_reference import reference_gru_trace, reference_lstm_trace, write_store
from hypothesis import given, settings
from hypothesis import strategies as st

from gatelens.analysis.memory import half_lives, memory_tables, retention_curves
from gatelens.analysis.stats import (
    ACTIVATION_SLOPES,
    activation_slope,
    chunk_sums,
    max_slope,
    signal_stats,
    stats_tables,
    unit_stats,
)
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace


def hand_trace(values, pre=None, mask=None, cell_type="lstm", signal="forget_gate", recurrent_activation="sigmoid"):
    """One layer, one unit, one sequence: ``signal`` set to ``values`` (and its pre-activation to ``pre``)."""
    t = len(values)
    info = LayerInfo(
        name="layer", cell_type=cell_type, units=1, input_dim=1, recurrent_activation=recurrent_activation,
        reset_after=True if cell_type == "gru" else None,
    )  # fmt: skip
    sig = {s: np.zeros((1, t, 1), np.float32) for s in info.signals}
    sig[signal][0, :, 0] = values
    if pre is not None:
        sig[signal + "_pre"][0, :, 0] = pre
    mask = np.ones((1, t), bool) if mask is None else np.asarray([mask], bool)
    return Trace({"layer": LayerTrace(info, sig, mask=mask, inputs=np.zeros((1, t, 1), np.float32))})


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_unit_stats_hand_computed_with_masked_steps_left_out():
    # the masked step holds an extreme value that must not count anywhere
    values = [0.05, 0.5, 0.95, 0.99, 0.0]
    pre = [-5.0, 0.0, 0.5, 4.0, 100.0]
    trace = hand_trace(values, pre, mask=[True, True, True, True, False])
    df = unit_stats(trace)
    assert list(df.columns) == [
        "layer", "unit", "signal", "mean", "std", "frac_below_0.1", "frac_above_0.9",
        "frac_saturated", "frac_linear", "mean_slope", "activation", "n",
    ]  # fmt: skip
    assert df.signal.tolist() == ["input_gate", "forget_gate", "candidate", "output_gate"]
    row = df.set_index("signal").loc["forget_gate"]
    real = np.array(values[:4], np.float32).astype(np.float64)
    assert row["mean"] == pytest.approx(real.mean(), abs=1e-15)
    assert row["std"] == pytest.approx(real.std(), abs=1e-15)
    assert row["frac_below_0.1"] == 0.25 and row["frac_above_0.9"] == 0.5
    # sigmoid slope s(1-s) <= 0.1 * 0.25 at |x| >= 3.64 (pre -5 and 4); >= 0.9 * 0.25 at |x| <= 0.66 (0 and 0.5)
    assert row["frac_saturated"] == 0.5 and row["frac_linear"] == 0.5
    assert row["mean_slope"] == pytest.approx(np.mean([sigmoid(x) * (1 - sigmoid(x)) for x in pre[:4]]), abs=1e-15)
    assert row["activation"] == "sigmoid" and row["n"] == 4
    cand = df.set_index("signal").loc["candidate"]  # pre 0 everywhere under tanh: slope 1, all linear
    assert (cand["frac_linear"], cand["frac_saturated"], cand["mean_slope"], cand["activation"]) == (1, 0, 1, "tanh")
    assert not df.drop(columns=["layer", "signal", "activation"]).isna().any().any()


def test_unit_stats_hard_sigmoid_boundaries():
    pre = [-3.5, -3.0, -2.9, 0.0, 2.99, 3.0, 10.0]
    trace = hand_trace([0.0] * 7, pre, recurrent_activation="hard_sigmoid")
    row = unit_stats(trace).set_index("signal").loc["forget_gate"]
    # relu6(x + 3) / 6: slope 1/6 strictly inside (-3, 3), 0 outside (and at the kinks, like TF's gradient)
    assert row["frac_linear"] == pytest.approx(3 / 7) and row["frac_saturated"] == pytest.approx(4 / 7)
    assert row["mean_slope"] == pytest.approx(3 / 7 / 6)


def test_signal_stats_cover_states_and_pre_activations():
    trace = reference_lstm_trace(*_weights(0), mask=_mask(0))
    df = signal_stats(trace, chunk=2)
    lt = trace["lstm"]
    mask = np.asarray(lt.mask)
    assert set(df.signal) == set(lt.info.signals)
    for s in ("cell_state", "hidden_state", "forget_gate_pre"):
        real = np.asarray(lt[s], np.float64)[mask]  # (k, u)
        got = df[df.signal == s].set_index("unit")
        np.testing.assert_allclose(got["mean"], real.mean(0), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got["std"], real.std(0), rtol=1e-10, atol=1e-14)
        np.testing.assert_array_equal(got["min"], real.min(0))
        np.testing.assert_array_equal(got["max"], real.max(0))
        np.testing.assert_array_equal(got["frac_below_0.1"], (real < 0.1).mean(0))
        np.testing.assert_array_equal(got["frac_above_0.9"], (real > 0.9).mean(0))
        assert (got["n"] == mask.sum()).all()


def _weights(seed, f=2, u=3, k=4, scale=2.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(6, 8, f))
    return x, rng.normal(size=(f, k * u)) * scale, rng.normal(size=(u, k * u)) * scale, rng.normal(size=k * u)


def _mask(seed, n=6, t=8):
    rng = np.random.default_rng(seed + 100)
    m = rng.random((n, t)) > 0.3
    m[0] = True
    m[1, 5:] = False
    return m


def test_streaming_chunks_and_lazy_store_agree(tmp_path):
    trace = reference_lstm_trace(*_weights(1), mask=_mask(1))
    a_units, a_sig = stats_tables(trace, chunk=1)
    b_units, b_sig = stats_tables(trace, chunk=1000)
    pd.testing.assert_frame_equal(a_units, b_units, rtol=1e-12)
    pd.testing.assert_frame_equal(a_sig, b_sig, rtol=1e-12)
    lazy = write_store(trace, tmp_path / "run", chunk_sequences=4)
    pd.testing.assert_frame_equal(unit_stats(lazy, chunk=3), b_units, rtol=1e-12)
    pd.testing.assert_frame_equal(half_lives(lazy, chunk=5), half_lives(trace), rtol=1e-12)
    pd.testing.assert_frame_equal(retention_curves(lazy, "lstm", chunk=2), retention_curves(trace, "lstm"))


# -- activation slopes against the Keras 3 functions ------------------------------------------------------

KERAS_FORMULAS = {  # the activation values, written independently of the slopes under test
    "linear": lambda x: x,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "hard_sigmoid": lambda x: np.clip(x + 3, 0, 6) / 6,
    "sparse_sigmoid": lambda x: np.where(x <= -1, 0, np.where(x >= 1, 1, 0.5 * (x + 1))),
    "tanh": np.tanh,
    "hard_tanh": lambda x: np.clip(x, -1, 1),
    "softsign": lambda x: x / (np.abs(x) + 1),
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.2 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "celu": lambda x: np.maximum(x, 0) + np.expm1(np.minimum(x, 0)),
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x)),
    "softplus": lambda x: np.log1p(np.exp(x)),
    "log_sigmoid": lambda x: -np.log1p(np.exp(-x)),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "swish": lambda x: x / (1 + np.exp(-x)),
    "hard_silu": lambda x: x * np.clip(x + 3, 0, 6) / 6,
    "hard_swish": lambda x: x * np.clip(x + 3, 0, 6) / 6,
    "mish": lambda x: x * np.tanh(np.log1p(np.exp(x))),
    "sparse_plus": lambda x: np.where(x <= -1, 0, np.where(x < 1, 0.25 * (x + 1) ** 2, x)),
    "squareplus": lambda x: (x + np.sqrt(x * x + 4)) / 2,
    "tanh_shrink": lambda x: x - np.tanh(x),
    "soft_shrink": lambda x: np.where(x > 0.5, x - 0.5, np.where(x < -0.5, x + 0.5, 0)),
    "hard_shrink": lambda x: np.where(np.abs(x) > 0.5, x, 0),
}
KINKS = np.array([-6, -3, -1, -0.5, 0, 0.5, 1, 3, 6], float)


def test_every_supported_activation_is_checked():
    assert set(KERAS_FORMULAS) == set(ACTIVATION_SLOPES)


@pytest.mark.parametrize("name", sorted(KERAS_FORMULAS))
def test_slope_is_the_derivative_of_the_keras_activation(name):
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(0)
    x = rng.uniform(-8, 8, 4000)
    x = x[np.min(np.abs(x[:, None] - KINKS[None]), axis=1) > 1e-3]  # away from kinks
    # our formula of the activation is Keras's own (float32 there)
    keras_vals = np.asarray(keras.activations.get(name)(x.astype(np.float32)))
    np.testing.assert_allclose(KERAS_FORMULAS[name](x), keras_vals, atol=2e-6, rtol=2e-6)
    # and the slope is its derivative (central differences in float64)
    h = 1e-6
    numeric = (KERAS_FORMULAS[name](x + h) - KERAS_FORMULAS[name](x - h)) / (2 * h)
    np.testing.assert_allclose(activation_slope(name, x), numeric, atol=1e-6)
    # max_slope is the supremum
    grid = np.concatenate([np.linspace(-20, 20, 400_001), [-1e4, 1e4]])  # slow asymptotes (squareplus)
    top = activation_slope(name, grid).max()
    assert top <= max_slope(name) * (1 + 1e-9)
    assert top >= max_slope(name) * (1 - 1e-3)


def test_unknown_activation_has_no_curve_rows(caplog):
    trace = hand_trace([0.5, 0.5], [0.0, 0.0], recurrent_activation="my_custom_gate")
    with caplog.at_level(logging.WARNING):
        df = unit_stats(trace)
    assert df.signal.tolist() == ["candidate"]  # tanh is known; the three custom gates are not
    assert "my_custom_gate" in caplog.text
    assert "forget_gate" in set(signal_stats(trace).signal)
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        activation_slope("nope", np.zeros(1))


def test_all_masked_layer_is_a_clear_error():
    trace = hand_trace([0.5, 0.5], mask=[False, False])
    with pytest.raises(ValueError, match="no unmasked step"):
        unit_stats(trace)
    with pytest.raises(ValueError, match="no unmasked step"):
        half_lives(trace)


def test_bad_thresholds_are_rejected():
    with pytest.raises(ValueError, match="saturated_slope=0.9"):
        unit_stats(hand_trace([0.5]), saturated_slope=0.9, linear_slope=0.1)


# -- half-lives -----------------------------------------------------------------------------------------


def test_forget_gate_at_one_half_has_half_life_exactly_one():
    """Zero weights and bias ln(1) = 0: sigmoid(0) = 0.5 at every step."""
    x, _, _, _ = _weights(2)
    trace = reference_lstm_trace(x, np.zeros((2, 12)), np.zeros((3, 12)), np.zeros(12), mask=_mask(2))
    df = half_lives(trace)
    assert list(df.columns) == ["layer", "unit", "signal", "mean_log_gate", "half_life_steps", "n"]
    assert (df.half_life_steps == 1.0).all()
    assert (df.mean_log_gate == math.log(0.5)).all()
    assert (df.signal == "forget_gate").all() and (df.n == _mask(2).sum()).all()


def test_half_life_inf_zero_and_gru_update_gate():
    # hard_sigmoid forget bias +6: f = 1 exactly -> no decay -> inf
    x = np.ones((2, 5, 1))
    bias = np.array([0, 0, 6.0, -6.0, 0, 0, 0, 0])  # forget block: unit 0 f = 1, unit 1 f = 0 exactly
    trace = reference_lstm_trace(x, np.zeros((1, 8)), np.zeros((2, 8)), bias, recurrent_activation="hard_sigmoid")
    df = half_lives(trace)
    assert df.half_life_steps.tolist() == [math.inf, 0.0]
    assert df.mean_log_gate.tolist() == [0.0, -math.inf]
    # GRU: z is the share kept; z = 0.25 at every step -> half-life 0.5 steps
    gbias = np.zeros((2, 3))
    gbias[0, 0] = math.log(0.25 / 0.75)
    g = reference_gru_trace(np.ones((1, 4, 1)), np.zeros((1, 3)), np.zeros((1, 3)), gbias)
    got = half_lives(g)
    assert got.signal.tolist() == ["update_gate"]
    assert got.half_life_steps.iloc[0] == pytest.approx(0.5, rel=1e-6)


def test_half_life_is_mean_log_rate():
    trace = reference_gru_trace(*_weights(3, k=3)[:3], np.random.default_rng(3).normal(size=(2, 9)), mask=_mask(3))
    lt = trace["gru"]
    z = np.asarray(lt["update_gate"], np.float64)[np.asarray(lt.mask)]
    df = half_lives(trace, chunk=2)
    np.testing.assert_allclose(df.mean_log_gate, np.log(z).mean(0), rtol=1e-12)
    np.testing.assert_allclose(df.half_life_steps, np.log(0.5) / np.log(z).mean(0), rtol=1e-12)


def test_simple_rnn_has_no_memory_gate():
    info = LayerInfo(name="rnn", cell_type="simple_rnn", units=1, input_dim=1, recurrent_activation=None)
    z = np.zeros((1, 3, 1), np.float32)
    trace = Trace({"rnn": LayerTrace(info, {"hidden_state": z, "hidden_state_pre": z}, mask=np.ones((1, 3), bool),
                                     inputs=z)})  # fmt: skip
    assert half_lives(trace).empty
    with pytest.raises(ValueError, match="no forget or update gate"):
        retention_curves(trace, "rnn")


# -- retention curves against brute force ---------------------------------------------------------------


def brute_retention(gate, mask, max_lag):
    """Every window of L consecutive real steps, one at a time."""
    out = {}
    n, t, u = gate.shape
    for lag in range(1, max_lag + 1):
        prods = []
        for s in range(n):
            g = gate[s][mask[s]]
            for start in range(0, len(g) - lag + 1):
                prods.append(np.prod(np.abs(g[start : start + lag]), axis=0))
        if prods:
            out[lag] = (np.mean(prods, axis=0), len(prods))
    return out


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), max_lag=st.integers(1, 12), backwards=st.booleans())
def test_retention_curves_match_brute_force(seed, max_lag, backwards):
    x, k, rk, b = _weights(seed)
    trace = reference_lstm_trace(x, k, rk, b, mask=_mask(seed), go_backwards=backwards)
    lt = trace["lstm"]
    df = retention_curves(trace, "lstm", max_lag=max_lag, chunk=4)
    assert list(df.columns) == ["layer", "unit", "lag", "retention", "signal", "n_windows"]
    ref = brute_retention(np.asarray(lt["forget_gate"], np.float64), np.asarray(lt.mask), max_lag)
    assert sorted(set(df.lag)) == sorted(ref)
    for lag, (mean, count) in ref.items():
        rows = df[df.lag == lag].sort_values("unit")
        np.testing.assert_allclose(rows.retention, mean, rtol=1e-12)
        assert (rows.n_windows == count).all()


def test_retention_constant_gate_is_geometric():
    x = np.zeros((3, 10, 1))
    trace = reference_lstm_trace(x, np.zeros((1, 4)), np.zeros((1, 4)), np.zeros(4))
    df = retention_curves(trace, "lstm", max_lag=50)
    assert df.lag.max() == 10  # no window longer than the sequences
    np.testing.assert_array_equal(df.retention, 0.5 ** df.lag.to_numpy(float))


def test_retention_sums_an_infinite_gate_next_to_padding_is_not_nan():
    # padding steps are zeros in the fast path, and inf * 0 would be NaN: those sums are redone window by window
    from gatelens.analysis.memory import retention_sums

    g = np.array([[0.5, np.inf, 0.5, 0.7], [0.5, 0.5, 0.5, 0.5]])[..., None]
    mask = np.array([[True, True, True, False], [True, True, True, True]])
    sums, counts = retention_sums(g, mask, 3)
    assert counts.tolist() == [7, 5, 3]
    assert np.isposinf(sums[:, 0]).all()
    finite, _ = retention_sums(np.where(np.isinf(g), 0.25, g), mask, 3)
    np.testing.assert_allclose(finite[:, 0], [0.5 + 0.25 + 0.5 + 4 * 0.5, 0.125 + 0.125 + 3 * 0.25, 0.0625 + 2 * 0.125])


def test_float16_store_stats_are_the_float64_stats_of_its_values(tmp_path):
    # a float16 store is summed a block at a time and its slopes looked up in a table of the float16 values:
    # the same numbers as the float64 pass over the values it holds; float16(0.1) = 0.09998 is below 0.1
    trace = reference_lstm_trace(*_weights(4), mask=_mask(4))
    trace["lstm"]["forget_gate"][0, :3] = 0.1
    trace["lstm"]["input_gate"][1, :2] = 0.9 + 2**-12  # float16 rounds it to 0.90039: above 0.9
    lazy = write_store(trace, tmp_path / "run", chunk_sequences=4, dtype="float16")
    lt = lazy["lstm"]
    assert lt["forget_gate"].dtype == np.float16
    held = Trace(
        {"lstm": LayerTrace(lt.info, {s: np.asarray(lt[s], np.float64) for s in lt.info.signals},
                            mask=np.asarray(lt.mask), inputs=np.asarray(lt.inputs))}
    )  # fmt: skip
    got_units, got_sig = stats_tables(lazy, chunk=5)
    ref_units, ref_sig = stats_tables(held, chunk=5)
    pd.testing.assert_frame_equal(got_units, ref_units, rtol=1e-13)
    pd.testing.assert_frame_equal(got_sig, ref_sig, rtol=1e-13)
    fg = ref_sig[ref_sig.signal == "forget_gate"]
    assert (fg["frac_below_0.1"] * fg["n"] >= 3).all()  # the three planted steps are counted in every unit
    # the half-lives' logs of a float16 store come from a table of the float16 values: the same float64 numbers
    got_half, got_ret = memory_tables(lazy, max_lag=4, chunk=5)
    pd.testing.assert_frame_equal(got_half, half_lives(held, chunk=5), check_exact=True)
    pd.testing.assert_frame_equal(got_ret, retention_curves(held, "lstm", max_lag=4, chunk=5), check_exact=True)


def test_float16_chunk_sums_from_keys_are_the_float64_ones(monkeypatch):
    """chunk_sums of float16 rows (min, max and counts from the bits as ordered keys) against numpy's float64 min,
    max and comparisons of the same values: negatives, -0.0, subnormals, the float16 neighbours of 0.1 and 0.9,
    infinities, columns entirely on one side of a threshold, blocks that end inside the rows, and a NaN."""
    import gatelens.analysis.stats as stats

    monkeypatch.setattr(stats, "_BLOCK_VALUES", 64 * 16)  # blocks of 64 rows: the last one ends at row 700
    rng = np.random.default_rng(3)
    v = rng.normal(scale=2.0, size=(700, 16)).astype(np.float16)
    v[:8, 0] = [-np.inf, np.inf, -0.0, 0.0, 2.0**-24, -(2.0**-24), 0.1, 0.9]
    v[8:12, 0] = [np.nextafter(np.float16(x), np.float16(y)) for x in (0.1, 0.9) for y in (-1, 2)]
    v[:, 1] = 0.5  # between the thresholds in every row: no count compares
    v[:, 2] = -3.0  # below 0.1 everywhere
    v[:, 3] = rng.uniform(0.91, 40.0, 700)  # above 0.9 everywhere
    # columns at the keys that bound the counts: the smallest float16 >= 0.1, float16(0.1) = 0.09998 (below 0.1),
    # the smallest float16 above 0.9, float16(0.9) = 0.89990 (not above 0.9)
    v[:, 4:8] = [np.nextafter(np.float16(0.1), np.float16(1)), 0.1, np.nextafter(np.float16(0.9), np.float16(1)), 0.9]
    with_nan = v.copy()
    with_nan[333, ::2] = np.nan
    for values in (with_nan, v, v[:, 1:8].copy()):  # the last: every column decided by its key range alone
        want = values.astype(np.float64)
        shift = want[5]
        got = chunk_sums(values, shift)
        for g, r in zip(got, chunk_sums(want, shift)):
            np.testing.assert_array_equal(g, r)
        np.testing.assert_array_equal(got[3], want.min(axis=0))
        np.testing.assert_array_equal(got[4], want.max(axis=0))
        np.testing.assert_array_equal(got[5], (want < 0.1).sum(axis=0))
        np.testing.assert_array_equal(got[6], (want > 0.9).sum(axis=0))
        if values is with_nan:
            assert np.isnan(got[3][::2]).all() and not np.isnan(got[3][1::2]).any()
    plain = chunk_sums(v, v[0])
    assert plain[5][2] == plain[6][3] == 700 and plain[5][4:8].tolist() == [0, 700, 0, 0]
    assert plain[6][4:8].tolist() == [0, 0, 700, 0]


def test_float16_log_gate_sums_from_bits_are_the_float64_ones(monkeypatch):
    """log_gate_shift and log_gate_sums of float16 gates (their max, zeros and logs from the bits) against the same
    functions on the float64 values: exact gates of 0, -0.0 and 1, subnormals, a column of zeros, blocks of rows
    that end inside the gates, a NaN, and negative gates (the max from the values)."""
    from gatelens.analysis import memory

    monkeypatch.setattr(memory, "_RETENTION_BLOCK_VALUES", 64 * 8)  # blocks of 64 rows
    rng = np.random.default_rng(4)
    g = rng.uniform(0.0, 1.0, size=(1000, 8)).astype(np.float16)
    g[:5, 0] = [0.0, -0.0, 1.0, 2.0**-24, 2.0**-20]
    g[:, 1] = 0.0
    g[::7, 2] = 0.0
    for gates in (g, np.where(np.arange(1000)[:, None] == 500, np.float16(np.nan), g), -g):
        wide = gates.astype(np.float64)
        with np.errstate(invalid="ignore"):  # the logs of negative gates are NaN
            shift = memory.log_gate_shift(gates)
            np.testing.assert_array_equal(shift, memory.log_gate_shift(wide))
            got, want = memory.log_gate_sums(gates, shift), memory.log_gate_sums(wide, shift)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    assert memory.log_gate_sums(g, memory.log_gate_shift(g))[0].tolist() == [2, 1000, 143, 0, 0, 0, 0, 0]
