"""The extractor against Keras itself, against the cell identities, and against hand-worked values."""

from __future__ import annotations

import math
import os
import zlib

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatelens.errors import UsageError
from gatelens.models import UnsupportedLayerError, VerificationError, extract, load_model, write_run
from gatelens.models.extract import VERIFY_MODES

L = keras.layers
T, F = 9, 3


def _saturate(model: keras.Model, scale: float, seed: int = 0) -> None:
    """Scale recurrent weights (and add a bias spread) so that gates reach their saturated tails."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, L.RNN):
            if layer.cell.activation.__name__ == "relu":
                continue  # unbounded: scaling would only make values explode, not saturate anything
            ws = layer.get_weights()
            layer.set_weights([w * scale + (rng.normal(0, 1.5, w.shape) if w.ndim == 1 else 0) for w in ws])


def _roundtrip(model: keras.Model, tmp_path) -> keras.Model:
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    return load_model(path)


def _data(n=6, t=T, f=F, seed=0, masked=False):
    x = np.random.default_rng(seed).normal(size=(n, t, f)).astype(np.float32) * 2
    if masked:  # padded steps at the end, at the start and in the middle, and one empty sequence
        x[0, 6:] = 0
        x[1, :3] = 0
        x[2, 4] = 0
        x[3, :] = 0
    return x


def seq(*layers, shape=(T, F), dtype="float32", name=None):
    return keras.Sequential([keras.Input(shape, dtype=dtype), *layers], name=name)


def functional_stack():
    inp = keras.Input((T, F))
    h = L.Conv1D(4, 3, padding="same", activation="relu")(inp)
    h = L.LSTM(5, return_sequences=True)(h)
    h = L.Dropout(0.5)(h)
    h = L.GRU(4, return_sequences=True)(h)
    out = L.TimeDistributed(L.Dense(2))(h)
    return keras.Model(inp, out, name="functional_stack")


def nested():
    inner = seq(L.TimeDistributed(L.Dense(4, activation="tanh")), L.LSTM(5, return_sequences=True), name="inner")
    inp = keras.Input((T, F))
    h = inner(inp)
    h = L.SimpleRNN(3)(h)
    return keras.Model(inp, L.Dense(1)(h), name="nested")


def embedding(mask_zero):
    return seq(
        L.Embedding(12, 6, mask_zero=mask_zero),
        L.LSTM(5, return_sequences=True),
        L.GRU(4),
        shape=(T,),
        dtype="int32",
        name=f"embedding_mask{mask_zero}",
    )


CONFIGS = {
    "lstm": lambda: seq(L.LSTM(5, return_sequences=True)),
    "lstm_last": lambda: seq(L.LSTM(5)),
    "lstm_nobias": lambda: seq(L.LSTM(5, use_bias=False, return_sequences=True)),
    "lstm_hard_sigmoid_relu": lambda: seq(
        L.LSTM(5, activation="relu", recurrent_activation="hard_sigmoid", return_sequences=True)
    ),
    "lstm_softsign_tanh_last": lambda: seq(L.LSTM(4, activation="softsign", recurrent_activation="tanh")),
    "lstm_go_backwards": lambda: seq(L.LSTM(5, go_backwards=True, return_sequences=True)),
    "lstm_go_backwards_last": lambda: seq(L.LSTM(5, go_backwards=True)),
    "lstm_implementation1": lambda: seq(L.LSTM(5, implementation=1, return_sequences=True)),
    "lstm_return_state": lambda: functional_return_state(),
    "rnn_lstmcell": lambda: seq(L.RNN(L.LSTMCell(4), return_sequences=True)),
    "gru_reset_after": lambda: seq(L.GRU(5, return_sequences=True)),
    "gru_reset_before": lambda: seq(L.GRU(5, reset_after=False, return_sequences=True)),
    "gru_nobias_last": lambda: seq(L.GRU(5, use_bias=False)),
    "gru_reset_before_backwards": lambda: seq(L.GRU(4, reset_after=False, go_backwards=True, return_sequences=True)),
    "gru_elu_sigmoid": lambda: seq(L.GRU(4, activation="elu", return_sequences=True)),
    "simple_rnn": lambda: seq(L.SimpleRNN(5, return_sequences=True)),
    "simple_rnn_relu_last": lambda: seq(L.SimpleRNN(5, activation="relu")),
    "stacked_lstm": lambda: seq(L.LSTM(6, return_sequences=True), L.LSTM(4, return_sequences=True), L.LSTM(3)),
    "functional_stack": functional_stack,
    "nested": nested,
    "masking_lstm": lambda: seq(L.Masking(0.0), L.LSTM(5, return_sequences=True)),
    "masking_gru_last": lambda: seq(L.Masking(0.0), L.GRU(5)),
    "masking_stack": lambda: seq(L.Masking(0.0), L.LSTM(4, return_sequences=True), L.GRU(3, return_sequences=True)),
    "embedding": lambda: embedding(False),
    "embedding_mask_zero": lambda: embedding(True),
    **{
        f"bidirectional_{mode}_{'seq' if rs else 'last'}": (
            lambda mode=mode, rs=rs: (
                seq(L.Masking(0.0), L.Bidirectional(L.LSTM(4, return_sequences=rs), merge_mode=mode))
                if mode is not None
                else bidi_none(rs)
            )
        )
        for mode in ("concat", "sum", "ave", "mul", None)
        for rs in (True, False)
    },
    "bidirectional_gru": lambda: seq(L.Bidirectional(L.GRU(4, return_sequences=True))),
}


def functional_return_state():
    inp = keras.Input((T, F))
    out, h, c = L.LSTM(5, return_sequences=True, return_state=True)(inp)
    return keras.Model(inp, [out, h, c], name="return_state")


def bidi_none(rs):
    inp = keras.Input((T, F))
    a, b = L.Bidirectional(L.GRU(4, return_sequences=rs), merge_mode=None)(L.Masking(0.0)(inp))
    return keras.Model(inp, [a, b], name=f"bidi_none_{rs}")


def _inputs_for(model, masked):
    if "int" in str(model.inputs[0].dtype):
        ids = np.random.default_rng(1).integers(1, 12, size=(6, T))
        if masked:
            ids[0, 6:] = 0
            ids[1, :2] = 0
        return ids
    return _data(masked=masked)


def _reference_outputs(model, x):
    """Every recurrent layer's own Keras output, from a plain Keras sub-model (independent of the extractor)."""
    out = {}
    for layer in model._flatten_layers():
        if isinstance(layer, (L.RNN, L.Bidirectional)) and not isinstance(layer, keras.Model):
            try:
                probe = keras.Model(model.inputs, layer.output)
            except (ValueError, AttributeError):  # inside a nested model or a Bidirectional: not reachable
                continue
            out[layer.name] = (layer, probe.predict(x, verbose=0))
    return out


def _check_identities(lt, atol=1e-5):
    info = lt.info
    m = np.asarray(lt.mask)
    act = {
        "tanh": np.tanh,
        "relu": lambda v: np.maximum(v, 0),
        "softsign": lambda v: v / (1 + np.abs(v)),
        "elu": lambda v: np.where(v > 0, v, np.expm1(np.minimum(v, 0))),
        "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
        "hard_sigmoid": lambda v: np.clip(v / 6 + 0.5, 0, 1),
        "linear": lambda v: v,
    }
    a = act[info.activation]
    order = slice(None, None, -1) if info.go_backwards else slice(None)

    def prev(arr):  # previous step in processing order, zeros before the first
        p = np.asarray(arr)[:, order]
        p = np.concatenate([np.zeros_like(p[:, :1]), p[:, :-1]], axis=1)
        return p[:, order]

    mm = m[..., None]
    if info.cell_type == "lstm":
        ra = act[info.recurrent_activation]
        for g, pre, fn in (
            ("input_gate", "input_gate_pre", ra),
            ("forget_gate", "forget_gate_pre", ra),
            ("output_gate", "output_gate_pre", ra),
            ("candidate", "candidate_pre", a),
        ):
            np.testing.assert_allclose(lt[g], fn(lt[pre]), atol=atol, err_msg=g)
        c, h = np.asarray(lt["cell_state"]), np.asarray(lt["hidden_state"])
        expect_c = lt["forget_gate"] * prev(c) + lt["input_gate"] * lt["candidate"]
        np.testing.assert_allclose(np.where(mm, c, 0), np.where(mm, expect_c, 0), atol=atol, err_msg="cell_state")
        np.testing.assert_allclose(np.where(mm, h, 0), np.where(mm, lt["output_gate"] * a(c), 0), atol=atol)
        # masked steps carry both states
        np.testing.assert_allclose(np.where(mm, 0, c), np.where(mm, 0, prev(c)), atol=atol)
        np.testing.assert_allclose(np.where(mm, 0, h), np.where(mm, 0, prev(h)), atol=atol)
    elif info.cell_type == "gru":
        ra = act[info.recurrent_activation]
        h = np.asarray(lt["hidden_state"])
        np.testing.assert_allclose(lt["update_gate"], ra(lt["update_gate_pre"]), atol=atol)
        np.testing.assert_allclose(lt["reset_gate"], ra(lt["reset_gate_pre"]), atol=atol)
        np.testing.assert_allclose(lt["candidate"], a(lt["candidate_pre"]), atol=atol)
        z = lt["update_gate"]
        expect = z * prev(h) + (1 - z) * lt["candidate"]
        np.testing.assert_allclose(np.where(mm, h, 0), np.where(mm, expect, 0), atol=atol)
        np.testing.assert_allclose(np.where(mm, 0, h), np.where(mm, 0, prev(h)), atol=atol)
    else:
        h = np.asarray(lt["hidden_state"])
        np.testing.assert_allclose(np.where(mm, h, 0), np.where(mm, a(lt["hidden_state_pre"]), 0), atol=atol)


class _Config:
    """One configuration's model, built once for all its cases, and its inputs' plain-Keras reference outputs."""

    def __init__(self, name: str, model: keras.Model) -> None:
        self.name = name
        self.model = model
        self._refs: dict[bool, tuple[np.ndarray, dict]] = {}

    def inputs_and_references(self, masked: bool) -> tuple[np.ndarray, dict]:
        if masked not in self._refs:
            x = _inputs_for(self.model, masked)
            self._refs[masked] = (x, _reference_outputs(self.model, x))
        return self._refs[masked]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def config(request, tmp_path_factory) -> _Config:
    """The configuration's model, built, saturated and round-tripped once for its dense and masked inputs in every
    verification mode (pytest runs a module-scoped parameter's tests together and frees the model before the next).

    The cases share what does not depend on them: the weights (seeded by the name, as they always were), the
    compiled function of each verification mode (traced from the input's shape and dtype, never its values: the
    mask is computed inside it), and the Keras reference outputs of each input (verification-mode independent).
    Every case still runs its own ``extract`` and every check below on its own trace.
    """
    name = request.param
    keras.utils.set_random_seed(zlib.crc32(name.encode()))  # the same weights on every run: reproducible
    model = CONFIGS[name]()
    _saturate(model, scale=4.0)
    model = _roundtrip(model, tmp_path_factory.mktemp(name))  # a real .keras file through the project's safe loader
    return _Config(name, model)


#: (masked, verify, compile): every verification mode on dense and masked inputs as ``compile="auto"`` runs these
#: tiny inputs (graph mode), and the default mode once more through XLA, the path of every larger input.
CASES = [(masked, verify, "auto") for masked in (False, True) for verify in VERIFY_MODES] + [(True, "cell", "xla")]


@pytest.mark.parametrize(
    "masked,verify,compile", CASES, ids=[f"{'masked' if m else 'dense'}-{v}-{c}" for m, v, c in CASES]
)
def test_matches_keras_and_identities(config, masked, verify, compile):
    """Every verification mode: "full" recomputes from Keras's states; with "sample" our own re-run drives
    the model (its emulated layer outputs feed the next layers) and Keras checks 2 + 1 of each 4 sequences,
    so step 2 below (every sequence against plain Keras sub-models) is the independent check of the rest."""
    model = config.model
    x, references = config.inputs_and_references(masked)
    trace = extract(model, x.copy(), batch_size=4, verify=verify, sample_size=2, compile=compile)  # x stays as built
    assert trace.meta["verify"] == verify
    assert trace.meta["compile"] == ("graph" if compile == "auto" else "xla"), trace.meta["compile_reason"]

    # 1. the extractor's own verification
    assert set(trace.verification) == set(trace.layers)
    for lname, err in trace.verification.items():  # float32 round-off scales with |h| for unbounded activations
        assert err < 1e-5 * max(1.0, float(np.abs(trace[lname]["hidden_state"]).max())), lname

    # 2. independently: each layer's Keras output from a plain sub-model, within 1e-5 scaled by max(1, |h|) as
    # the extractor's own check: with unbounded activations (elu, relu) and saturating weights |h| reaches 5-10,
    # where float32 round-off alone (Keras's own, step after step) is ~2e-5 (measured: gru elu, |h| = 5.1).
    for lname, (layer, y) in references.items():
        if isinstance(layer, L.Bidirectional):
            dirs = [f"{lname}/forward", f"{lname}/backward"]
            if layer.merge_mode is None:  # the two directions come as two outputs (then the states, if any)
                y = list(y)[:2]
            elif layer.merge_mode == "concat":
                y = np.split(y if not layer.return_state else y[0], 2, axis=-1)
            else:
                continue  # sum/ave/mul cannot be split; covered by the extractor's merged check
        else:
            dirs, y = [lname], [y[0] if isinstance(y, list) else y]
        for d, ref in zip(dirs, y):
            lt = trace[d]
            h = np.asarray(lt["hidden_state"])
            m = np.asarray(lt.mask)
            backwards = lt.info.go_backwards
            atol = 1e-5 * max(1.0, float(np.abs(ref).max()))
            if ref.ndim == 2:  # return_sequences=False: the last processed step
                last = h[:, 0] if backwards else h[:, -1]
                np.testing.assert_allclose(last, ref, atol=atol, rtol=1e-6, err_msg=d)
            else:
                if backwards and not d.endswith("/backward"):
                    ref = ref[:, ::-1]  # a plain go_backwards layer returns steps in processing order
                np.testing.assert_allclose(
                    np.where(m[..., None], h, 0), np.where(m[..., None], ref, 0), atol=atol, rtol=1e-6
                )

    # 3. identities per step, saturation reached, gates in their activation's range
    saturated = 0.0
    for lname in trace.layers:
        lt = trace[lname]
        _check_identities(lt)
        for g in ("forget_gate", "update_gate"):
            if g in lt and lt.info.recurrent_activation == "sigmoid":
                v = np.asarray(lt[g])[np.asarray(lt.mask)]
                assert v.min() >= 0 and v.max() <= 1
                saturated = max(saturated, float(np.mean((v < 0.1) | (v > 0.9))))
    if any(lt.info.recurrent_activation == "sigmoid" for lt in trace.values()):
        assert saturated > 0.2, "weights should be scaled so gates saturate"
    masking = any(isinstance(lay, L.Masking) or getattr(lay, "mask_zero", False) for lay in model._flatten_layers())
    if masked and masking:
        assert not np.asarray(trace[trace.layers[0]].mask).all()


def _hand_lstm():
    """1 unit, 1 input; kernel [i, f, c, o] = [1, 2, 0.5, -1], recurrent [0.5, -0.5, 1, 0.25], bias [0, 1, 0, 0]."""
    model = seq(L.LSTM(1, return_sequences=True, name="lstm"), shape=(2, 1))
    model.layers[0].set_weights(
        [np.array([[1.0, 2.0, 0.5, -1.0]]), np.array([[0.5, -0.5, 1.0, 0.25]]), np.array([0.0, 1.0, 0.0, 0.0])]
    )
    return model


def test_hand_set_lstm_values():
    trace = extract(_hand_lstm(), np.array([[[1.0], [-2.0]]], np.float32))
    lt = trace["lstm"]
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # step 0 (h0 = c0 = 0): pre-activations are kernel * 1 + bias
    i0, f0, g0, o0 = s(1.0), s(3.0), math.tanh(0.5), s(-1.0)
    c0 = i0 * g0  # 0.7310586 * 0.4621172 = 0.3378347
    h0 = o0 * math.tanh(c0)  # 0.2689414 * 0.3255429 = 0.0875520
    # step 1: x = -2, h_prev = h0
    i1 = s(-2.0 + 0.5 * h0)
    f1 = s(-4.0 + 1.0 - 0.5 * h0)
    g1 = math.tanh(-1.0 + h0)
    o1 = s(2.0 + 0.25 * h0)
    c1 = f1 * c0 + i1 * g1
    h1 = o1 * math.tanh(c1)
    assert c0 == pytest.approx(0.3378347, abs=1e-7) and h0 == pytest.approx(0.0875520, abs=1e-7)
    expected = {
        "input_gate": [i0, i1],
        "forget_gate": [f0, f1],
        "candidate": [g0, g1],
        "output_gate": [o0, o1],
        "cell_state": [c0, c1],
        "hidden_state": [h0, h1],
        "forget_gate_pre": [3.0, -3.0 - 0.5 * h0],
    }
    for sig, vals in expected.items():
        np.testing.assert_allclose(lt[sig][0, :, 0], vals, atol=1e-6, err_msg=sig)


def test_hand_set_gru_values():
    """GRU, 1 unit, reset_after: kernel [z, r, h] = [1, -1, 2], recurrent [1, 1, 1], bias [[0, 0, 0], [0, 0, 0.5]]."""
    model = seq(L.GRU(1, return_sequences=True, name="gru"), shape=(2, 1))
    model.layers[0].set_weights(
        [np.array([[1.0, -1.0, 2.0]]), np.array([[1.0, 1.0, 1.0]]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5]])]
    )
    lt = extract(model, np.array([[[1.0], [1.0]]], np.float32))["gru"]
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    z0, r0 = s(1.0), s(-1.0)
    hh0 = math.tanh(2.0 + r0 * 0.5)  # reset applied after the matmul, to (U h + recurrent bias)
    h0 = (1 - z0) * hh0
    z1, r1 = s(1.0 + h0), s(-1.0 + h0)
    hh1 = math.tanh(2.0 + r1 * (h0 + 0.5))
    h1 = z1 * h0 + (1 - z1) * hh1
    np.testing.assert_allclose(lt["update_gate"][0, :, 0], [z0, z1], atol=1e-6)
    np.testing.assert_allclose(lt["reset_gate"][0, :, 0], [r0, r1], atol=1e-6)
    np.testing.assert_allclose(lt["candidate"][0, :, 0], [hh0, hh1], atol=1e-6)
    np.testing.assert_allclose(lt["hidden_state"][0, :, 0], [h0, h1], atol=1e-6)


def test_constant_forget_gate_is_exactly_one_half():
    """Zero kernels and a zero forget bias: the forget gate is sigmoid(0) = 0.5 at every step."""
    model = seq(
        L.LSTM(
            3,
            return_sequences=True,
            unit_forget_bias=False,
            kernel_initializer="zeros",
            recurrent_initializer="zeros",
            name="lstm",
        )
    )
    lt = extract(model, _data())["lstm"]
    np.testing.assert_array_equal(lt["forget_gate"], 0.5)
    np.testing.assert_array_equal(lt["cell_state"], 0.0)  # candidate tanh(0) = 0 writes nothing


_SPLIT_MODEL = {}


def _split_model():
    if not _SPLIT_MODEL:
        m = seq(L.Masking(0.0), L.LSTM(4, return_sequences=True), L.GRU(3, go_backwards=True))
        _saturate(m, 3.0)
        _SPLIT_MODEL["m"] = m
    return _SPLIT_MODEL["m"]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 9), b1=st.integers(1, 9), b2=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_batch_split_does_not_change_results(n, b1, b2, seed):
    x = _data(n=n, seed=seed)
    x[:, -2:][np.random.default_rng(seed).random(n) < 0.5] = 0  # some padded tails
    a = extract(_split_model(), x, batch_size=b1)
    b = extract(_split_model(), x, batch_size=b2)
    for name in a.layers:
        np.testing.assert_array_equal(a[name].mask, b[name].mask)
        for sig in a[name]:
            np.testing.assert_allclose(a[name][sig], b[name][sig], atol=1e-6, err_msg=f"{name}/{sig}")
            assert np.isfinite(a[name][sig]).all()
        for gate in ("input_gate", "forget_gate", "output_gate", "update_gate", "reset_gate"):
            if gate in a[name]:
                assert a[name][gate].min() >= 0 and a[name][gate].max() <= 1
        assert np.abs(a[name]["candidate"]).max() <= 1


def test_layer_selection_and_names():
    model = seq(L.LSTM(4, return_sequences=True), L.Bidirectional(L.GRU(3), name="bidirectional"))
    trace = extract(model, _data(), layers=["bidirectional"])
    assert trace.layers == ["bidirectional/forward", "bidirectional/backward"]
    with pytest.raises(ValueError, match="no recurrent layer named 'nope'"):
        extract(model, _data(), layers=["nope"])
    # one name alone is that layer, not its characters ("no recurrent layer named 'b'")
    assert extract(model, _data(), layers="bidirectional").layers == trace.layers


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: keras.Sequential([keras.Input((T, 4, 4, 1)), L.ConvLSTM2D(2, 3, padding="same")]), "ConvLSTM2D"),
        (lambda: seq(L.RNN(MinimalCell(3))), "MinimalCell"),
        (lambda: keras.Sequential([keras.Input(batch_shape=(2, T, F)), L.LSTM(3, stateful=True)]), "stateful"),
        (lambda: seq(L.Dense(3)), "no recurrent layer"),
        # a layer that does not compute in float32 (a float64 one failed deep in TensorFlow; a mixed-precision one
        # failed verification, blaming the extractor)
        (lambda: seq(L.LSTM(3, dtype="float64", name="rnn")), r"'rnn' computes in float64 .*policy 'float64'"),
        (lambda: seq(L.GRU(3, dtype="mixed_float16", name="g")), r"'g' computes in float16 .*'mixed_float16'"),
        (
            lambda: seq(L.Bidirectional(L.LSTM(3, dtype="mixed_bfloat16", name="fw"), name="bi")),
            r"'forward_fw' computes in bfloat16 with float32 weights \(dtype policy 'mixed_bfloat16'\)",
        ),
    ],
    ids=["convlstm", "custom_cell", "stateful", "no_rnn", "float64", "mixed_float16", "mixed_bfloat16"],
)
def test_unsupported_layers_are_named(build, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        extract(build(), np.zeros((2, T, F)))


class MinimalCell(L.Layer):
    def __init__(self, units, **kw):
        super().__init__(**kw)
        self.units = units
        self.state_size = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units))

    def call(self, inputs, states):
        h = keras.ops.matmul(inputs, self.kernel) + states[0]
        return h, [h]


@pytest.mark.parametrize("cell", [L.LSTM, L.GRU, L.SimpleRNN])
def test_variable_length_masked_input(cell):
    """Input((None,)) with Embedding(mask_zero=True): the time axis is unknown while tracing."""
    model = seq(L.Embedding(12, 4, mask_zero=True), cell(3, return_sequences=True), shape=(None,), dtype="int32")
    ids = np.random.default_rng(0).integers(1, 12, size=(4, 7))
    ids[0, 4:] = 0
    trace = extract(model, ids)
    (name,) = trace.layers
    assert trace.verification[name] < 1e-6
    assert trace[name].mask[0].tolist() == [True] * 4 + [False] * 3
    _check_identities(trace[name])


def test_float_input_feeding_an_embedding_records_tokens():
    """keras.Input((T,)) is float32 by default; an Embedding right after it makes the input token ids."""
    model = seq(L.Embedding(12, 4), L.LSTM(3, return_sequences=True), shape=(T,))
    ids = np.random.default_rng(0).integers(0, 12, size=(3, T))
    trace = extract(model, ids, vocabulary=[chr(97 + i) for i in range(12)])
    np.testing.assert_array_equal(trace.tokens, ids)
    assert trace.token_strings()[0, 0] == chr(97 + ids[0, 0])
    with pytest.raises(ValueError, match="integer token ids"):
        extract(model, ids + 0.5)


@pytest.mark.parametrize("verify", VERIFY_MODES)
@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
def test_a_wrong_re_run_fails_verification(verify, return_sequences, monkeypatch):
    """The check can fail: a re-run whose forget gate is off by 1e-3 (our code, not Keras, is altered)."""
    from gatelens.models import VerificationError, cells

    model = seq(L.LSTM(4, return_sequences=return_sequences))
    x = _data(n=6)
    assert max(extract(model, x, verify=verify, sample_size=2).verification.values()) < 1e-5
    real = cells.run_lstm

    def off(w, x, mask, h0, c0, h_ref=None, **kw):
        w = cells.replace(w, bias=w.bias + np.r_[np.zeros(4), np.full(4, 1e-3), np.zeros(8)].astype("float32"))
        return real(w, x, mask, h0, c0, h_ref=h_ref, **kw)

    monkeypatch.setattr(cells, "run_lstm", off)
    with pytest.raises(VerificationError, match="layer 'lstm.*differs from Keras's output"):
        extract(model, x, verify=verify, sample_size=2, tolerance=1e-6)


def test_a_layer_whose_arithmetic_overflows_is_refused_as_such():
    # linear gates with large weights: h grows past float32's range within a few steps, in Keras too; the error said
    # "the extractor does not reproduce this layer"
    model = seq(L.LSTM(3, activation=None, recurrent_activation="linear", name="rnn"))
    model.layers[-1].set_weights([np.full(w.shape, 10.0, np.float32) for w in model.layers[-1].get_weights()])
    assert not np.isfinite(model.predict(_data(), verbose=0)).all()
    with pytest.raises(VerificationError, match=r"layer 'rnn': the recomputed hidden state is not finite .*overflows"):
        extract(model, _data())


def test_verify_arguments_are_checked():
    model = seq(L.GRU(2))
    with pytest.raises(UsageError, match="verify must be one of .*got 'some'"):
        extract(model, _data(), verify="some")
    with pytest.raises(UsageError, match="sample_size must be a whole number from 1 to 4096, got 0"):
        extract(model, _data(), verify="sample", sample_size=0)
    with pytest.raises(UsageError, match=r"compile must be one of .*got 'nope'"):
        extract(model, _data(), compile="nope")


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, 1 << 17])
def test_batch_size_is_checked_before_any_work(bad, tmp_path):
    model = seq(L.GRU(2))
    with pytest.raises(UsageError, match=f"batch_size must be a whole number from 1 to 65536, got {bad!r}"):
        extract(model, _data(), batch_size=bad)
    out = tmp_path / "run"
    with pytest.raises(UsageError, match="batch_size must be a whole number"):
        write_run(model, _data(), out, batch_size=bad)
    assert not out.exists() and os.listdir(tmp_path) == []  # nothing left behind, no partial run
