"""Acceptance: planted mechanisms are found by the correlation table and by the probes.

A character-level LSTM with hand-set weights (gate pre-activations of +/-20, so every gate is
saturated at exactly 0 or 1 in float32) computes three known quantities in three known units:

* unit 0 is an exact bracket counter: ``c_t = c_{t-1} + [x_t == "("] - [x_t == ")"]``;
* unit 1 is an exact inside-quotes flag: at ``"`` it forgets and writes ``1 - flag`` (read back
  through its own hidden state), elsewhere it keeps;
* unit 2 is an exact memory of a marked value: at the step after ``#`` it forgets and writes
  ``digit / 10``, elsewhere it keeps. Unit 3 is its helper ("the previous token was #").

Units 4-7 are distractors with random weights that read every unit. For each feature the
planted unit must rank first in the correlation table with ``|r| > 0.95`` and rank first in its
probe. The same weights run (1) through the NumPy reference cell of tests/helpers_reference.py,
(2) as a real Keras model saved to a ``.keras`` file, loaded with the safe loader and extracted
with ``gatelens.models.extract`` (padded batch with ``mask_zero``), and (3) streamed into a run store
with ``models.write_run`` and analysed lazily.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers_reference import reference_lstm_trace

from gatelens.analysis.correlate import correlations, top_units
from gatelens.analysis.features import build_features
from gatelens.analysis.probes import run_probes

B = 20.0
VOCAB = ["", "a", "b", " ", "(", ")", '"', "#", *"0123456789"]
V = len(VOCAB)
U = 8
T = 70
COUNTER, QUOTE, MEMORY, HELPER = 0, 1, 2, 3
PLANTED = {"bracket_depth": COUNTER, "inside_quotes": QUOTE, "marked_value": MEMORY}


def planted_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keras LSTM weights: kernel (V, 4U), recurrent_kernel (U, 4U), bias (4U,), gate blocks i, f, c, o."""
    rng = np.random.default_rng(seed)
    kernel = np.zeros((V, 4 * U), np.float32)
    rec = np.zeros((U, 4 * U), np.float32)
    bias = np.zeros(4 * U, np.float32)
    gi, gf, gc, go = (lambda u, k=k: k * U + u for k in range(4))
    tok = VOCAB.index
    h_on = np.tanh(1.0)  # hidden state of a unit whose cell holds 1 behind an open output gate

    for u in (COUNTER, QUOTE, MEMORY, HELPER):
        bias[go(u)] = B  # output gates open: h = tanh(c)
    # bracket counter: keep everything, write +1 at "(" and -1 at ")"
    bias[gi(COUNTER)], bias[gf(COUNTER)] = B, B
    kernel[tok("("), gc(COUNTER)], kernel[tok(")"), gc(COUNTER)] = B, -B
    # quote flag: only at '"' the input gate opens and the forget gate closes; candidate = 1 - flag
    bias[gi(QUOTE)], kernel[tok('"'), gi(QUOTE)] = -B, 2 * B
    bias[gf(QUOTE)], kernel[tok('"'), gf(QUOTE)] = B, -2 * B
    bias[gc(QUOTE)], rec[QUOTE, gc(QUOTE)] = B, -B / h_on
    # helper: cell = [token is "#"] (forgets every step)
    bias[gi(HELPER)], bias[gf(HELPER)] = B, -B
    kernel[tok("#"), gc(HELPER)] = B
    # marked memory: when the helper was on at the previous step, forget and write digit / 10
    bias[gi(MEMORY)], rec[HELPER, gi(MEMORY)] = -B, 2 * B / h_on
    bias[gf(MEMORY)], rec[HELPER, gf(MEMORY)] = B, -2 * B / h_on
    for d in range(10):
        kernel[tok(str(d)), gc(MEMORY)] = np.arctanh(d / 10)
    # distractors: random weights, reading the input and every unit
    for k in range(4):
        cols = [k * U + u for u in range(4, U)]
        kernel[:, cols] = rng.normal(0, 1.0, (V, 4))
        rec[:, cols] = rng.normal(0, 0.5, (U, 4))
        bias[cols] = rng.normal(0, 0.5, 4)
    return kernel, rec, bias


def make_text(rng: np.random.Generator, length: int) -> str:
    """Letters and spaces with balanced brackets, paired quotes and '#<digit>' markers."""
    out: list[str] = []
    depth = 0
    while len(out) < length:
        r = rng.random()
        if r < 0.12 and depth < 5:
            out.append("(")
            depth += 1
        elif r < 0.24 and depth > 0:
            out.append(")")
            depth -= 1
        elif r < 0.30:
            out.append('"')
        elif r < 0.36:
            out += ["#", str(rng.integers(0, 10))]
        elif r < 0.40:
            out.append(str(rng.integers(0, 10)))  # digits that are not marked must not be remembered
        else:
            out.append(rng.choice(["a", "b", " "]))
    return "".join(out[:length])


def make_data(seed: int = 0, n: int = 40, t: int = T, pad: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (N, T) (0 = padding after the text when ``pad``) and the marked value per step (N, T)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, t), np.int32)
    marked = np.full((n, t), np.nan)
    for i in range(n):
        length = int(rng.integers(t // 2, t + 1)) if pad else t
        text = make_text(rng, length)
        ids[i, :length] = [VOCAB.index(c) for c in text]
        value = 0.0
        for s, c in enumerate(text):  # the plain definition: the digit after the latest "#"
            if s > 0 and text[s - 1] == "#":
                value = float(c)
            marked[i, s] = value
    return ids, marked


def write_marked_csv(path, marked: np.ndarray) -> None:
    seq, step = np.nonzero(~np.isnan(marked))
    pd.DataFrame({"sequence": seq, "step": step, "marked_value": marked[seq, step]}).to_csv(path, index=False)


def check_planted(trace, csv_path) -> None:
    feats = build_features(trace, user_features=csv_path)
    corr = correlations(trace, feats, feature_columns=list(PLANTED))
    for feature, unit in PLANTED.items():
        top = top_units(corr, feature, k=3)
        assert top.unit.iloc[0] == unit, (feature, top)
        assert top.abs_r.iloc[0] > 0.95, (feature, top)
        assert (top.abs_r.iloc[0] - 1.0) ** 2 < 1e-6  # exact mechanisms: r is 1 to within float32 noise
        best_other = corr[(corr.feature == feature) & (corr.unit != unit)].pearson_r.abs().max()
        assert best_other < top.abs_r.iloc[0] - 0.01
    res = run_probes(trace, feats, signals=["cell_state", "hidden_state"], feature_columns=list(PLANTED))
    rep, rank = res.report, res.ranking
    for feature, unit in PLANTED.items():
        for signal in ("cell_state", "hidden_state"):
            row = rep[(rep.feature == feature) & (rep.signal == signal)].iloc[0]
            assert int(row.top_units.split(",")[0]) == unit, row
            assert row.split == "sequence" and row.n_test > 0
            first = rank[(rank.feature == feature) & (rank.signal == signal) & (rank["rank"] == 1)]
            assert first.unit.tolist() == [unit]
        # the cell state holds the quantity itself (the hidden state holds tanh of it): a linear probe is exact
        assert rep[(rep.feature == feature) & (rep.signal == "cell_state")].score.iloc[0] > 0.99
    kinds = res.report.drop_duplicates("feature").set_index("feature").task
    assert kinds.to_dict() == {
        "bracket_depth": "regression",
        "inside_quotes": "classification",
        "marked_value": "regression",
    }


def reference_trace(ids: np.ndarray, mask: np.ndarray | None = None):
    kernel, rec, bias = planted_weights()
    return reference_lstm_trace(
        ids, kernel, rec, bias, mask=mask, embedding=np.eye(V, dtype=np.float32), vocabulary=VOCAB
    )


def test_the_hand_set_cell_is_exact():
    ids, marked = make_data(n=10)
    trace = reference_trace(ids)
    feats = build_features(trace)
    c = np.asarray(trace["lstm"]["cell_state"])
    np.testing.assert_allclose(c[..., COUNTER].ravel(), feats.bracket_depth, atol=1e-5)
    np.testing.assert_allclose(c[..., QUOTE].ravel(), feats.inside_quotes, atol=1e-4)
    np.testing.assert_allclose(c[..., MEMORY], marked / 10, atol=1e-5)


def test_planted_units_found_on_the_numpy_reference(tmp_path):
    ids, marked = make_data()
    write_marked_csv(tmp_path / "marked.csv", marked)
    check_planted(reference_trace(ids), tmp_path / "marked.csv")


@pytest.fixture(scope="module")
def keras_model_file(tmp_path_factory):
    keras = pytest.importorskip("keras")
    kernel, rec, bias = planted_weights()
    model = keras.Sequential(
        [
            keras.Input((T,), dtype="int32"),
            keras.layers.Embedding(V, V, mask_zero=True),
            keras.layers.LSTM(U, return_sequences=True, name="lstm"),
        ]
    )
    model.layers[0].set_weights([np.eye(V, dtype=np.float32)])
    model.layers[1].set_weights([kernel, rec, bias])
    path = tmp_path_factory.mktemp("model") / "planted.keras"
    model.save(path)
    return path


def test_planted_units_found_in_a_real_keras_model(keras_model_file, tmp_path):
    from gatelens.models import extract, load_model

    ids, marked = make_data(seed=1, pad=True)
    model = load_model(keras_model_file)
    trace = extract(model, ids, vocabulary=VOCAB, batch_size=16)
    mask = np.asarray(trace["lstm"].mask)
    np.testing.assert_array_equal(mask, ids > 0)  # padded steps are masked ...
    assert trace.verification["lstm"] < 1e-5
    # ... and the Keras run agrees with the NumPy reference cell on every real step
    ref = reference_trace(ids, mask)
    for signal in ("cell_state", "hidden_state", "forget_gate", "input_gate"):
        np.testing.assert_allclose(np.asarray(trace["lstm"][signal])[mask], ref["lstm"][signal][mask], atol=1e-5)
    write_marked_csv(tmp_path / "marked.csv", marked)
    check_planted(trace, tmp_path / "marked.csv")


def test_planted_units_found_in_a_run_store_written_by_the_extractor(keras_model_file, tmp_path):
    from gatelens.models import load_model, write_run

    ids, marked = make_data(seed=2, pad=True)
    run = write_run(load_model(keras_model_file), ids, tmp_path / "run", batch_size=16, vocabulary=VOCAB)
    assert not isinstance(run["lstm"]["cell_state"], np.ndarray)  # lazy zarr arrays
    write_marked_csv(tmp_path / "marked.csv", marked)
    check_planted(run, tmp_path / "marked.csv")
