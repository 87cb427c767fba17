"""Training smoke tests (tiny models, one or two epochs): real .keras files, cards, side-cars, determinism."""

from __future__ import annotations

import io
import json
import zipfile

import h5py
import numpy as np
import pytest

from gatelens.errors import DataError, GatelensInputError
from gatelens.models import load_model
from gatelens.models.zoo import datasets as ds
from gatelens.models.zoo import tasks as tk
from gatelens.models.zoo import train as tr

pytestmark = pytest.mark.slow

TINY_TASK = dict(units=3, epochs=1, n_train=32, n_val=16, n_test=16)


def assert_same_metrics(got, card_metrics, rel=1e-5):
    assert set(got) == set(card_metrics)
    for k, v in card_metrics.items():
        if isinstance(v, float):
            assert got[k] == pytest.approx(v, rel=rel), k
        else:
            assert got[k] == v, k


def _weights(path):
    return [np.asarray(w) for w in load_model(path).get_weights()]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "tiny_text.keras"
    calls = []
    r = tr.train_text(
        out=out, units=4, layers=2, embedding_dim=4, window=20, epochs=1, max_chars=4000,
        progress=lambda d, t: calls.append((d, t)),
    )  # fmt: skip
    return r, calls


def test_text_model_files_card_and_side_car(text_model):
    r, calls = text_model
    model = load_model(r.model_path)  # the safe loader accepts what the zoo writes
    assert [type(layer).__name__ for layer in model.layers] == ["InputLayer", "Embedding", "LSTM", "LSTM", "Dense"]
    assert tuple(model.inputs[0].shape) == (None, 20) and "int" in str(model.inputs[0].dtype)
    with zipfile.ZipFile(r.model_path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5"))) as h5:
        assert "optimizer" not in h5  # uncompiled: no optimizer state to bloat the file
    card = json.loads(r.card_path.read_text())
    assert card == r.card
    assert card["format"] == tr.CARD_FORMAT and card["file"] == "tiny_text.keras"
    assert card["sha256"] == ds.sha256_file(r.model_path)
    assert card["data"]["source"]["path"] == "data/corpus/python_stdlib.txt"
    assert card["data"]["source"]["sha256"] == ds.sha256_file(ds.CORPUS_PATH)
    assert "PSF" in card["data"]["source"]["licence"]
    assert card["training"]["seed"] == 0 and card["versions"]["keras"]
    assert card["command"].startswith("gatelens.models.zoo.train.train_text(") and "units=4" in card["command"]
    m = card["metrics"]
    assert m["split"] == "test" and m["bits_per_char"] > 0 and m["unigram_bits_per_char"] > 0
    assert card["vocabulary"]["file"] == "tiny_text.vocab.json" and card["vocabulary"]["size"] == len(
        json.loads(r.vocabulary_path.read_text())["tokens"]
    )
    # progress: counted in batches, monotone, ending at (total, total)
    dones = [d for d, _ in calls]
    assert dones == sorted(dones) and calls[-1][0] == calls[-1][1] == calls[0][1]


def test_text_side_car_is_found_and_read_by_the_extract_loader(text_model):
    from gatelens.models.data import load_data
    from gatelens.models.spec import input_spec, read_vocabulary, sidecar_vocabulary_path

    r, _ = text_model
    side = sidecar_vocabulary_path(r.model_path)
    assert side == r.vocabulary_path
    vocab = read_vocabulary(side)
    assert vocab.level == "char" and vocab.oov_token == "[UNK]" and vocab[:2] == ["", "[UNK]"]
    model = load_model(r.model_path)
    spec = input_spec(model, vocabulary=vocab)
    path = r.model_path.parent / "snippet.txt"
    path.write_text("def f(x):\n    return (x, 'y')  # ok\n" * 3)
    data = load_data(path, spec)
    expected = ds.Vocabulary.load(side).encode(path.read_text())
    assert data.x.shape[1] == 20
    np.testing.assert_array_equal(data.x[0], expected[:20])


def test_word_level_model_and_its_side_car_agree_with_the_extract_loader(tmp_path):
    from gatelens.models.data import load_data
    from gatelens.models.spec import input_spec, read_vocabulary

    r = tr.train_text(out=tmp_path / "w.keras", level="word", units=3, layers=1, embedding_dim=3, window=12,
                      epochs=1, max_chars=8000, max_tokens=200)  # fmt: skip
    card = r.card
    assert card["vocabulary"]["level"] == "word" and card["vocabulary"]["size"] <= 200
    m = card["metrics"]
    assert m["bits_per_char"] < m["bits_per_token"]  # a word token is more than one character on average
    vocab = read_vocabulary(r.vocabulary_path)
    assert vocab.level == "word" and vocab.pattern == ds.WORD_PATTERN
    sample = tmp_path / "s.txt"
    sample.write_text(ds.CORPUS_PATH.read_text()[:3000])
    data = load_data(sample, input_spec(load_model(r.model_path), vocabulary=vocab))
    expected = ds.Vocabulary.load(r.vocabulary_path).encode(sample.read_text())
    np.testing.assert_array_equal(data.x[0], expected[:12])
    np.testing.assert_array_equal(data.x[1], expected[12:24])


def test_evaluate_reproduces_the_card(text_model):
    r, _ = text_model
    assert_same_metrics(tr.evaluate(r.model_path), r.card["metrics"])


@pytest.mark.parametrize("name", ["brackets", "recall", "adding"])
def test_task_models_load_and_reevaluate(tmp_path, name):
    r = tr.train_task(name, tmp_path / f"{name}.keras", task_params={"length": 12}, **TINY_TASK)
    model = load_model(r.model_path)
    assert tuple(model.inputs[0].shape) == ((None, 12) if name == "brackets" else (None, 12, 2))
    assert (r.vocabulary_path is not None) == (name == "brackets")
    card = r.card
    assert card["data"]["source"]["params"]["length"] == 12
    assert card["data"]["sequences"] == {"train": 32, "validation": 16, "test": 16}
    # the card lists the task's own features: those its generator makes (the same for any seed and size)
    assert card["data"]["features"] == sorted(tk.generate(name, 2, seed=1, length=12).features)
    assert card["data"]["features"], card["data"]
    assert_same_metrics(tr.evaluate(r.model_path), card["metrics"])


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = tr.train_task("recall", tmp_path / "a.keras", seed=3, **TINY_TASK)
    b = tr.train_task("recall", tmp_path / "b.keras", seed=3, **TINY_TASK)
    c = tr.train_task("recall", tmp_path / "c.keras", seed=4, **TINY_TASK)
    wa, wb, wc = _weights(a.model_path), _weights(b.model_path), _weights(c.model_path)
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(wa, wc, strict=True))
    assert a.card["metrics"] == b.card["metrics"]


def test_text_training_is_deterministic(text_model, tmp_path):
    a, _ = text_model
    b = tr.train_text(out=tmp_path / "b.keras", units=4, layers=2, embedding_dim=4, window=20, epochs=1, max_chars=4000)
    assert all(np.array_equal(x, y) for x, y in zip(_weights(a.model_path), _weights(b.model_path), strict=True))
    assert a.vocabulary_path.read_text() == b.vocabulary_path.read_text()
    assert a.card["metrics"] == b.card["metrics"]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_standardisation_folds_exactly_into_the_weights(cell):
    """A model fed (x - m) / s and scaled by (y_s, y_m) equals the folded model fed raw x."""
    tr.set_seed(0)
    rng = np.random.default_rng(0)
    model = tr.build_series_model(6, 2, cell=cell, layers=2, units=5)
    for w in model.weights:  # non-trivial biases everywhere (GRU: both bias rows)
        w.assign(rng.normal(0, 0.5, size=tuple(w.shape)).astype(np.float32))
    mean, std, y_mean, y_std = np.array([100.0, -3.0]), np.array([40.0, 0.5]), 80.0, 35.0
    raw = (mean + std * rng.normal(size=(9, 6, 2))).astype(np.float32)
    expected = np.asarray(model((raw - mean) / std)).astype(np.float64) * y_std + y_mean
    tr._fold_standardisation(model, mean, std, y_mean, y_std)
    np.testing.assert_allclose(np.asarray(model(raw)), expected, rtol=1e-4, atol=1e-3)


def test_sequence_forecaster_on_a_two_column_csv(tmp_path):
    t = np.arange(120)
    csv = tmp_path / "two.csv"
    lines = ["time,a,b"] + [f"{i},{np.sin(i / 5):.6f},{np.cos(i / 7):.6f}" for i in t]
    csv.write_text("\n".join(lines) + "\n")
    r = tr.train_timeseries(csv, tmp_path / "seq.keras", mode="sequence", target="b", cell="gru", units=3, window=10,
                            epochs=2, horizon=2)  # fmt: skip
    model = load_model(r.model_path)
    assert tuple(model.inputs[0].shape) == (None, 10, 2) and tuple(model.outputs[0].shape) == (None, 10, 1)
    card = r.card
    assert card["data"]["columns"] == ["a", "b"] and card["data"]["target"] == "b"
    # the naive baseline, computed here independently: each step forecasts b[t + 2] by b[t]
    values = np.loadtxt(csv, delimiter=",", skiprows=1)[:, 1:]
    a, b = card["data"]["split"]["test"][0], len(values)
    errs = [abs(values[k + s + 2, 1] - values[k + s, 1]) for k in range(b - 10 - 2 + 1) if k + 9 + 2 >= a
            for s in range(10)]  # fmt: skip
    assert card["metrics"]["naive_last_value_mae"] == pytest.approx(np.mean(errs), rel=1e-9)
    assert tr.evaluate(r.model_path)["mae"] == pytest.approx(card["metrics"]["mae"], rel=1e-5)


def test_bad_input_is_named(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("print('hi')\n" * 5)
    with pytest.raises(DataError, match=r"short.txt: the training part has \d+ char tokens, fewer than window"):
        tr.train_text(short, tmp_path / "m.keras", window=50)
    with pytest.raises(DataError, match=r"sunspots_yearly.csv: a series of 309 steps is too short for window 400"):
        tr.train_timeseries(ds.SUNSPOTS_PATH, tmp_path / "m.keras", window=400)
    with pytest.raises(DataError, match=r"sunspots_yearly.csv: the target column 'co2' is not among"):
        tr.train_timeseries(ds.SUNSPOTS_PATH, tmp_path / "m.keras", target="co2")
    with pytest.raises(GatelensInputError, match=r"must end in .keras, got '.*m.h5'"):
        tr.train_task("adding", tmp_path / "m.h5", **TINY_TASK)
    with pytest.raises(GatelensInputError, match=r"cell must be one of \['lstm', 'gru'\], got 'rnn'"):
        tr.train_task("adding", tmp_path / "m.keras", cell="rnn")
    with pytest.raises(DataError, match="no model card"):
        tr.read_card(tmp_path / "none.keras")


def test_cli_trains_a_task_and_emits_features(tmp_path, capsys):
    from gatelens.cli.main import main

    out, feats, data = tmp_path / "t.keras", tmp_path / "f.csv", tmp_path / "x.npy"
    code = main(["train", "task", "adding", "--units", "2", "--epochs", "1", "--n-train", "32", "--n-val", "16",
                 "--n-test", "16", "--length", "10", "--out", str(out), "--emit-features", str(feats),
                 "--emit-data", str(data), "--emit-n", "5", "-q"])  # fmt: skip
    assert code == 0
    stdout = capsys.readouterr().out
    assert str(out) in stdout and "held-out:" in stdout
    card = tr.read_card(out)
    assert card["command"].startswith("gatelens train task adding") and "--units 2" in card["command"]
    x = np.load(data)
    assert x.shape == (5, 10, 2)
    import pandas as pd

    df = pd.read_csv(feats)
    assert list(df.columns) == ["sequence", "step", "value", "is_marked", "markers_seen", "marked_sum"]
    np.testing.assert_allclose(df["value"].to_numpy(), x[:, :, 0].ravel(), rtol=1e-6)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "task", "recall", "--no-train"], "--no-train needs --emit-data and/or --emit-features"),
        (["train", "task", "adding", "--min-delay", "3", "--no-train", "--emit-data", "x.npy"], "applies to the recall"),
        (["train", "task", "recall", "--length", "5", "--min-delay", "9", "--no-train", "--emit-data", "x.npy"],
         "task 'recall': min_delay must be in [0, length), got 9"),
        (["train", "task", "brackets", "--max-marks", "2", "--no-train", "--emit-data", "x.npy"],
         "--max-marks applies to the recall task, not 'brackets'"),
        (["train", "task", "recall", "--length", "10", "--min-delay", "5", "--max-marks", "6", "--no-train",
          "--emit-data", "x.npy"], "max_marks must be in [1, length - min_delay] = [1, 5], got 6"),
        (["train", "text", "--out", "m.h5"], "the model file must end in .keras, got 'm.h5'"),
        (["train", "timeseries", "--val-fraction", "1.5"], "expected a number strictly between 0 and 1, got '1.5'"),
        (["train", "text", "missing.txt", "--out", "m.keras"], "missing.txt: no such text file"),
    ],
)  # fmt: skip
def test_cli_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    from gatelens.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
