"""Models that take raw strings (StringLookup, TextVectorization) or raw integers (IntegerLookup).

Real Keras models, saved by Keras and loaded through the safe loader; the hidden states gatelens captures
are compared with the Keras model's own output on the same strings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import replace

import keras
import numpy as np
import pytest
import tensorflow as tf

from gatelens.errors import DataError, UnsafeModelError
from gatelens.models import load_model
from gatelens.models.extract import extract
from gatelens.models.safety import LoadLimits

L = keras.layers
CORPUS = "The cat, SAT!\tdog the cat_sat on\nthe mat. A cat sat; the dog sat on the mat mat\n"


def gatelens(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "gatelens", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def _seeded(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.6, size=w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
                       for w in model.get_weights()])  # fmt: skip
    return model


def _string_lookup():
    lookup = L.StringLookup(name="lookup")
    lookup.adapt(np.array([list("the cat sat")]))  # adapted: the vocabulary goes to the archive's assets
    return keras.Sequential(
        [keras.Input((6,), dtype="string"), lookup, L.Embedding(12, 3, name="emb"),
         L.LSTM(4, return_sequences=True, name="lstm")], name="sl")  # fmt: skip


def _tv_char():
    tv = L.TextVectorization(split="character", standardize="lower", output_sequence_length=10, name="tv")
    tv.adapt(np.array(["the cat sat on the mat"]))
    inp = keras.Input((1,), dtype="string")
    h = L.GRU(4, return_sequences=True, name="gru")(L.Embedding(16, 3, mask_zero=True, name="emb")(tv(inp)))
    return keras.Model(inp, L.Dense(1)(h), name="tvc")


def _tv_words():
    tv = L.TextVectorization(split="whitespace", standardize="lower_and_strip_punctuation", output_sequence_length=5,
                             vocabulary=["the", "cat", "sat", "on"], name="tv")  # fmt: skip
    inp = keras.Input((1,), dtype="string")
    h = L.LSTM(4, return_sequences=True, name="lstm")(L.Embedding(6, 3, mask_zero=True, name="emb")(tv(inp)))
    return keras.Model(inp, h, name="tvw")


def _tv_plain():
    tv = L.TextVectorization(split="character", standardize=None, output_sequence_length=8,
                             vocabulary=list("abc "), name="tv")  # fmt: skip
    return keras.Sequential([keras.Input((1,), dtype="string"), tv, L.Embedding(6, 3, mask_zero=True),
                             L.SimpleRNN(3, return_sequences=True, name="rnn")], name="tvp")  # fmt: skip


def _int_lookup():
    il = L.IntegerLookup(name="ilookup")
    il.adapt(np.array([[10, 20, 30, 20]]))
    return keras.Sequential(
        [keras.Input((4,), dtype="int64"), il, L.Embedding(5, 3), L.LSTM(3, return_sequences=True, name="lstm")],
        name="il",
    )


MODELS = {
    "string_lookup": (_string_lookup, "lstm", np.array([list("the ca"), list("zz tat"), list("sat xy")], object)),
    "tv_char_lower": (_tv_char, "gru", ["The CAT sat", "on", "MAT_\tx"]),
    "tv_words_strip": (_tv_words, "lstm", ["The cat, SAT! dog", "cat", "on the mat..."]),
    "tv_char_none": (_tv_plain, "rnn", ["abc cab", "a", "cc_b"]),
    "int_lookup": (_int_lookup, "lstm", np.array([[10, 20, 30, 99], [20, 20, 10, 10]])),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("strings")
    keras.utils.set_random_seed(0)
    out = {}
    for name, (build, layer, x) in MODELS.items():
        m = _seeded(build())
        m.save(d / f"{name}.keras")
        out[name] = (d / f"{name}.keras", layer, x)
    return d, out


def _keras_hidden(model, layer, x):
    sub = keras.Model(model.inputs, model.get_layer(layer).output)
    if isinstance(x, list):
        x = np.array(x, object)[:, None]
    t = tf.constant(x.tolist(), dtype=tf.string) if x.dtype == object else tf.constant(x)
    return np.asarray(sub(t))


@pytest.mark.parametrize("name", list(MODELS))
def test_api_extract_on_raw_input_equals_keras(saved, name):
    _, models = saved
    path, layer, x = models[name]
    model = load_model(path)
    trace = extract(model, x)
    ref = _keras_hidden(model, layer, x)
    lt = trace[layer]
    assert lt["hidden_state"].shape == ref.shape
    np.testing.assert_allclose(lt["hidden_state"][lt.mask], ref[lt.mask], atol=1e-5, rtol=0)
    # the tokens shown are the model's own: its lookup layer's ids and vocabulary
    front = model.layers[1] if type(model.layers[0]).__name__ == "InputLayer" else model.layers[0]
    raw = np.array(x, object)[:, None] if isinstance(x, list) else x
    own_ids = np.asarray(front(tf.constant(raw.tolist(), dtype=tf.string) if raw.dtype == object else raw))
    np.testing.assert_array_equal(trace.tokens, own_ids)
    assert trace.vocabulary == [str(t) for t in front.get_vocabulary()]


def test_unknown_tokens_are_counted_and_named(saved):
    _, models = saved
    path, _, x = models["string_lookup"]
    trace = extract(load_model(path), x)
    u = trace.meta["unknown_tokens"]
    # vocabulary of "the cat sat": t h e ' ' c a s; unknown in the input: z z x y
    assert u["count"] == 4 and u["n_tokens"] == 18 and u["top"][0] == ["z", 2]
    assert sorted(t for t, _ in u["top"]) == ["x", "y", "z"]
    path, _, texts = models["tv_words_strip"]
    u = extract(load_model(path), texts).meta["unknown_tokens"]
    assert u["top"] == [["dog", 1], ["mat", 1]]  # after Keras's own lower_and_strip_punctuation: "SAT!" is known
    with pytest.raises(DataError, match="--strict-vocab: 2 of 8 tokens unknown"):
        extract(load_model(path), texts, strict_vocab=True)


def test_out_of_range_ids_are_a_data_error_with_the_position():
    model = keras.Sequential([keras.Input((80,), dtype="int32"), L.Embedding(85, 2, name="emb"), L.LSTM(2)])
    x = np.zeros((2, 80), np.int64)
    x[1, 7] = 500
    x[1, 9] = -1
    with pytest.raises(DataError, match=r"token id 500 at sequence 1, step 7 is outside \[0, 85\).*'emb'; 2 id"):
        extract(model, x)
    with pytest.raises(Exception, match="500"):  # Keras refuses the same input
        model(x)


def test_cli_extracts_raw_text_with_the_models_own_tokens(saved, tmp_path):
    from gatelens.analysis.store import open_run
    from gatelens.models.data import load_data
    from gatelens.models.spec import input_spec

    d, models = saved
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    for name in ("tv_words_strip", "string_lookup", "tv_char_lower"):
        path, layer, _ = models[name]
        r = gatelens("extract", path, corpus, "--out", tmp_path / name)
        assert r.returncode == 0, r.stderr
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        u = manifest["unknown_tokens"]
        assert f"{u['count']} of {u['n_tokens']} tokens unknown" in r.stdout
        run = open_run(tmp_path / name)
        model = load_model(path)
        data = load_data(corpus, input_spec(model))  # the windows the CLI cut
        ref = _keras_hidden(model, layer, data.x if data.x.ndim == 2 and data.x.shape[1] > 1 else
                            np.array(data.x, object).reshape(-1).tolist())  # fmt: skip
        lt = run[layer]
        mask = np.asarray(lt.mask)
        np.testing.assert_allclose(np.asarray(lt["hidden_state"])[mask], ref[mask], atol=1e-5, rtol=0)
    u = json.loads((tmp_path / "tv_words_strip" / "manifest.json").read_text())["unknown_tokens"]
    assert u["top"][0] == ["mat", 3] and ["dog", 2] in u["top"]
    r = gatelens("extract", models["tv_words_strip"][0], corpus, "--out", tmp_path / "strict", "--strict-vocab")
    assert r.returncode == 2 and "--strict-vocab" in r.stderr and "'mat' x3" in r.stderr
    assert not (tmp_path / "strict").exists()


def test_cli_out_of_range_ids_exit_2(tmp_path):
    m = keras.Sequential([keras.Input((6,), dtype="int32"), L.Embedding(10, 2), L.LSTM(2)])
    m.save(tmp_path / "ids.keras")
    x = np.ones((3, 6), np.int32)
    x[2, 4] = 12
    np.save(tmp_path / "x.npy", x)
    r = gatelens("extract", tmp_path / "ids.keras", tmp_path / "x.npy", "--out", tmp_path / "run")
    assert r.returncode == 2, r.stderr
    assert "12 at sequence 2, step 4" in r.stderr and "x.npy" in r.stderr and r.stderr.count("\n") == 1


def test_custom_standardize_is_refused_with_the_reason(tmp_path):
    def shout(x):
        return tf.strings.upper(x)

    tv = L.TextVectorization(split="whitespace", standardize=shout, output_sequence_length=4, vocabulary=["A"])
    m = keras.Sequential([keras.Input((1,), dtype="string"), tv, L.Embedding(4, 2), L.LSTM(2)])
    m.save(tmp_path / "custom.keras")
    (tmp_path / "t.txt").write_text("a b c d e")
    r = gatelens("extract", tmp_path / "custom.keras", tmp_path / "t.txt", "--out", tmp_path / "run")
    assert r.returncode == 3, r.stderr
    assert "standardize is the custom function 'shout'" in r.stderr and "never runs" in r.stderr


def _rewrite(src, dst, change):
    """Copy a .keras archive member by member; ``change(name, data)`` returns (name, data) or None to drop."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            out = change(info.filename, zin.read(info.filename))
            if out is not None:
                zout.writestr(out[0], out[1])
    return dst


VOCAB = "assets/layers/string_lookup/vocabulary.txt"


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda n, b: (n.replace("vocabulary.txt", "run.sh"), b) if n == VOCAB else (n, b), "is not a vocabulary"),
        (lambda n, b: (n.replace("string_lookup", "../../etc"), b) if n == VOCAB else (n, b), "'..'"),
        (
            lambda n, b: (n.replace("layers/string_lookup", "layers/lstm"), b) if n == VOCAB else (n, b),
            "is not a vocabulary",
        ),
        (lambda n, b: (n, b + b"\n\xff\xfe") if n == VOCAB else (n, b), "not UTF-8"),
    ],
    ids=["other file name", "path trick", "not a lookup layer's folder", "non-UTF-8"],
)
def test_malicious_vocabulary_assets_are_refused(saved, tmp_path, change, needle):
    _, models = saved
    src = models["string_lookup"][0]
    with zipfile.ZipFile(src) as z:
        assert VOCAB in z.namelist()  # the adapted vocabulary is an asset of the archive
    bad = _rewrite(src, tmp_path / "bad.keras", change)
    with pytest.raises(UnsafeModelError, match=needle):
        load_model(bad)


def test_huge_vocabulary_assets_are_refused(saved, tmp_path):
    _, models = saved
    src = models["string_lookup"][0]
    extra = b"".join(b"\nq%d" % i for i in range(50))
    big = _rewrite(src, tmp_path / "big.keras", lambda n, b: (n, b + extra) if n == VOCAB else (n, b))
    with pytest.raises(UnsafeModelError, match="holds 58 tokens; the limit is 20"):
        load_model(big, limits=replace(LoadLimits(), max_vocabulary_tokens=20))
    with pytest.raises(UnsafeModelError, match="the assets declare"):
        load_model(big, limits=replace(LoadLimits(), max_assets_bytes=64))
    assert len(load_model(big).layers[0].get_vocabulary()) == 58  # within the default limits: accepted


def test_integer_lookup_vocabulary_holds_integers_only(saved, tmp_path):
    _, models = saved
    src = models["int_lookup"][0]
    name = "assets/layers/integer_lookup/vocabulary.txt"
    bad = _rewrite(src, tmp_path / "bad.keras", lambda n, b: (n, b + b"\nrm -rf") if n == name else (n, b))
    with pytest.raises(UnsafeModelError, match="holds integers only"):
        load_model(bad)


def test_keras_reason_is_passed_on_whole(saved, tmp_path):
    from gatelens.errors import ModelFormatError

    _, models = saved
    twice = _rewrite(models["string_lookup"][0], tmp_path / "twice.keras",
                     lambda n, b: (n, b + b"\nq\nq") if n == VOCAB else (n, b))  # fmt: skip
    with pytest.raises(ModelFormatError) as e:
        load_model(twice)
    msg = str(e.value)
    # Keras's reason comes after "Example error message for object <StringLookup ...>:" on the next line
    assert "Example error message for object" in msg and "repeated term" in msg and "\n" not in msg
