"""The committed demo models: safe loading, cards that the files reproduce, baselines beaten, extraction works."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gatelens.models import extract, load_model
from gatelens.models.zoo import datasets as ds
from gatelens.models.zoo import demos
from gatelens.models.zoo import train as tr

pytestmark = pytest.mark.slow

DEMO_NAMES = [d.name for d in demos.DEMOS]


def _metrics_match(got, card_metrics, rel=1e-5):
    assert set(got) == set(card_metrics)
    for k, v in card_metrics.items():
        if isinstance(v, float):
            assert got[k] == pytest.approx(v, rel=rel), k
        else:
            assert got[k] == v, k


@pytest.mark.parametrize("name", DEMO_NAMES)
def test_demo_files_are_small_and_consistent(name):
    d = demos.demo(name)
    model_path = d.model_path
    card = tr.read_card(model_path)
    size = model_path.stat().st_size
    assert size < 1_000_000, f"{model_path.name} is {size} bytes"
    assert card["sha256"] == ds.sha256_file(model_path), "the card describes another version of the model"
    assert card["file"] == model_path.name and card["training"]["seed"] == d.kwargs["seed"]
    assert card["versions"]["keras"] and card["command"] == f"python -m gatelens.models.zoo.demos --only {name}"
    if "path" in card["data"]["source"]:
        src = card["data"]["source"]
        assert ds.sha256_file(ds.resolve_data_path(src["path"])) == src["sha256"]
        assert src["licence"]
    model = load_model(model_path)  # the safe loader
    side = tr.vocabulary_path(model_path)
    assert side.is_file() == ("int" in str(model.inputs[0].dtype))
    assert (demos.DEMO_DIR / d.data).is_file()


@pytest.mark.parametrize("name", DEMO_NAMES)
def test_demo_card_metrics_are_reproduced_and_beat_their_baselines(name):
    card = tr.read_card(demos.demo(name).model_path)
    m = card["metrics"]
    _metrics_match(tr.evaluate(demos.demo(name).model_path), m)
    kind = card["model"]["kind"]
    if kind == "text":
        assert m["bits_per_char"] < m["unigram_bits_per_char"] - 1.5, m
    elif kind == "timeseries":
        assert m["mae"] < 0.8 * m["naive_last_value_mae"], m
    elif card["data"]["task"] == "brackets":
        assert m["accuracy"] > 0.99 and m["accuracy_where_quotes_matter"] > 0.98, m
        assert m["baseline_naive_counter_accuracy"] < 0.7, m
    else:
        assert m["mse"] < 0.02 * m["target_variance"] and m["mse"] < 0.02 * m["baseline_mse"], m


def test_char_lstm_bits_per_char_recomputed_independently():
    """From the corpus, the side-car JSON and the model alone (none of gatelens.models.zoo's text helpers)."""
    path = demos.demo("char_lstm").model_path
    card = tr.read_card(path)
    tokens = json.loads(tr.vocabulary_path(path).read_text())["tokens"]
    index = {t: i for i, t in enumerate(tokens)}
    text = ds.CORPUS_PATH.read_text(encoding="utf-8")
    start, end = card["data"]["split"]["test"]
    assert end == len(text)
    ids = np.array([index.get(c, 1) for c in text[start:]], np.int64)
    t = card["data"]["window"]
    n = (len(ids) - 1) // t
    x, y = ids[: n * t].reshape(n, t), ids[1 : n * t + 1].reshape(n, t)
    model = load_model(path)
    p = np.asarray(model.predict(x, batch_size=128, verbose=0), np.float64)
    bits = -np.log2(np.take_along_axis(p, y[..., None], -1)[..., 0])
    assert bits.mean() == pytest.approx(card["metrics"]["bits_per_char"], rel=1e-4)
    train_ids = np.array([index.get(c, 1) for c in text[: card["data"]["split"]["train"][1]]])
    counts = np.bincount(train_ids, minlength=len(tokens)) + 1.0
    counts[0] = 0
    unigram = -np.log2(counts[y] / counts.sum()).mean()
    assert unigram == pytest.approx(card["metrics"]["unigram_bits_per_char"], rel=1e-9)


def test_adding_lstm_metrics_recomputed_independently():
    """The targets from the inputs themselves (the sum of the two marked values), the metrics in NumPy from Keras's
    own predictions: nothing of gatelens.models.zoo.train's evaluation."""
    from gatelens.models.zoo import tasks as tk

    path = demos.demo("adding_lstm").model_path
    card = tr.read_card(path)
    d = card["data"]
    x = tk.generate(d["task"], d["sequences"]["test"], seed=d["seeds"]["test"], **d["source"]["params"]).x
    assert set(np.unique(x[..., 1])) == {0.0, 1.0} and (x[..., 1].sum(1) == 2).all()  # two marked steps each
    y = (x[..., 0].astype(np.float64) * x[..., 1]).sum(1)
    pred = np.asarray(load_model(path).predict(x, batch_size=256, verbose=0), np.float64)[:, 0]
    err = pred - y
    m = card["metrics"]
    assert m["n_sequences"] == len(y)
    assert (err**2).mean() == pytest.approx(m["mse"], rel=1e-4)
    assert np.abs(err).mean() == pytest.approx(m["mae"], rel=1e-4)
    assert 1 - (err**2).mean() / y.var() == pytest.approx(m["r2"], rel=1e-6)
    assert ((1.0 - y) ** 2).mean() == pytest.approx(m["baseline_mse"], rel=1e-6)  # the card summed in float32
    assert (np.abs(err) < 0.04).mean() == pytest.approx(m["fraction_within_0.04"], abs=2 / len(y))


def test_sunspots_lstm_metrics_recomputed_independently():
    """From the CSV with pandas: each test target's 24 preceding years as the window, the naive forecast the last
    of them, the baselines and errors in NumPy (nothing of gatelens's series helpers)."""
    path = demos.demo("sunspots_lstm").model_path
    card = tr.read_card(path)
    d = card["data"]
    values = pd.read_csv(ds.resolve_data_path(d["source"]["path"]))[d["target"]].to_numpy(np.float64)
    assert len(values) == d["steps"]
    w = d["window"]
    (_, a), (t0, t1) = d["split"]["train"], d["split"]["test"]
    targets = np.arange(t0, t1)
    x = np.stack([values[t - w : t] for t in targets])[..., None].astype(np.float32)
    y = values[targets]
    pred = np.asarray(load_model(path).predict(x, verbose=0), np.float64).reshape(len(y), -1)[:, 0]
    m = card["metrics"]
    assert m["n_windows"] == len(y) == t1 - t0
    assert np.abs(pred - y).mean() == pytest.approx(m["mae"], rel=1e-4)
    assert np.sqrt(((pred - y) ** 2).mean()) == pytest.approx(m["rmse"], rel=1e-4)
    assert np.abs(values[targets - 1] - y).mean() == pytest.approx(m["naive_last_value_mae"], rel=1e-9)
    assert np.abs(values[:a].mean() - y).mean() == pytest.approx(m["train_mean_mae"], rel=1e-9)


@pytest.mark.parametrize("name", DEMO_NAMES)
def test_demo_extracts_with_its_bundled_data(name):
    from gatelens.models.data import load_data
    from gatelens.models.spec import input_spec, read_vocabulary, sidecar_vocabulary_path

    d = demos.demo(name)
    model = load_model(d.model_path)
    side = sidecar_vocabulary_path(d.model_path)
    spec = input_spec(model, vocabulary=read_vocabulary(side) if side else None)
    data = load_data(demos.DEMO_DIR / d.data, spec)
    trace = extract(model, data.x[:8], batch_size=8)
    assert trace.layers and max(trace.verification.values()) < 1e-4
    if d.features:
        feats = pd.read_csv(demos.DEMO_DIR / d.features)
        assert len(feats) == data.x.shape[0] * data.x.shape[1]
        assert feats["sequence"].max() == data.x.shape[0] - 1


def test_gatelens_extract_runs_on_a_demo(tmp_path, capsys):
    from gatelens.cli.main import main

    out = tmp_path / "run"
    code = main(["extract", str(demos.DEMO_DIR / "brackets_lstm.keras"), str(demos.DEMO_DIR / "brackets_lstm.demo.npy"),
                 "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (out / "manifest.json").is_file()


def test_demo_data_files_are_what_the_generators_write(tmp_path):
    written = demos.write_demo_data(tmp_path)
    for p in written:
        assert p.read_bytes() == (demos.DEMO_DIR / p.name).read_bytes(), p.name
    excerpt = (demos.DEMO_DIR / "code_sample.txt").read_text()
    text = ds.CORPUS_PATH.read_text()
    test_start = tr.read_card(demos.demo("char_lstm").model_path)["data"]["split"]["test"][0]
    assert text.index(excerpt) >= test_start  # held-out text only
