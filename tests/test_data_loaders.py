"""Data loaders against real Keras models and real files: exact arrays, and one clear line per bad input."""

from __future__ import annotations

import dataclasses
import json
import re
import zipfile

import numpy as np
import pytest

from gatelens.errors import DataError
from gatelens.models.data import Dataset, check_array, load_data, window_series
from gatelens.models.spec import InputSpec, TokenList, input_spec, read_vocabulary, sidecar_vocabulary_path

keras = pytest.importorskip("keras")

VOCAB = ["", "[UNK]", "a", "b", "c", " ", "\n"]  # the zoo's layout: 0 padding, 1 OOV


# -- real models, saved and loaded through the project's safe loader --------------------------------


def _roundtrip(model, tmp_path_factory, name):
    """Save with Keras and load back through the project's safe loader (validated, rebuilt in a worker).

    Used for the Embedding and StringLookup models (what a user uploads: the vocabulary must survive the
    safe rebuild); the other models stay in memory to keep this file fast.
    """
    from gatelens.models import load_model

    path = tmp_path_factory.mktemp("models") / f"{name}.keras"
    model.save(path)
    return load_model(path), path


@pytest.fixture(scope="module")
def float_model():
    return keras.Sequential([keras.Input((4, 2)), keras.layers.LSTM(2)], name="float_model")


@pytest.fixture(scope="module")
def var_model():
    return keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(2)], name="var_model")


@pytest.fixture(scope="module")
def emb_model(tmp_path_factory):
    m = keras.Sequential(
        [keras.Input((5,), dtype="int32"), keras.layers.Embedding(7, 3, mask_zero=True), keras.layers.LSTM(2)],
        name="emb_model",
    )
    return _roundtrip(m, tmp_path_factory, "emb")


@pytest.fixture(scope="module")
def emb_nomask_model():
    # Input without a dtype: Keras makes it float32, the model still starts with an Embedding
    return keras.Sequential([keras.Input((4,)), keras.layers.Embedding(7, 3), keras.layers.LSTM(2)], name="nomask")


@pytest.fixture(scope="module")
def lookup_model(tmp_path_factory):
    inp = keras.Input((4,), dtype="string")
    ids = keras.layers.StringLookup(vocabulary=["a", "b", "c", " "], name="lookup")(inp)
    out = keras.layers.LSTM(2)(keras.layers.Embedding(5, 3)(ids))
    return _roundtrip(keras.Model(inp, out, name="lookup_model"), tmp_path_factory, "lookup")[0]


@pytest.fixture(scope="module")
def textvec_model():
    tv = keras.layers.TextVectorization(
        output_sequence_length=4, split="character", standardize=None, vocabulary=["a", "b", "c", " "], name="tv"
    )
    inp = keras.Input((1,), dtype="string")
    out = keras.layers.LSTM(2)(keras.layers.Embedding(6, 3, mask_zero=True)(tv(inp)))
    return keras.Model(inp, out, name="textvec_model")


@pytest.fixture(scope="module")
def float_spec(float_model):
    return input_spec(float_model)


@pytest.fixture(scope="module")
def var_spec(var_model):
    return input_spec(var_model)


@pytest.fixture(scope="module")
def emb_spec(emb_model):
    return input_spec(emb_model[0], vocabulary=VOCAB)


def _write(tmp_path, name, content):
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def _raises(path, spec, match, **kw):
    with pytest.raises(DataError) as e:
        load_data(path, spec, **kw)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    assert re.search(match, msg), msg
    return msg


# -- input_spec ----------------------------------------------------------------------------------------


def test_input_spec_float(float_spec, var_spec):
    assert float_spec == InputSpec(n_steps=4, n_features=2, input_shape=(None, 4, 2))
    assert not float_spec.integer_tokens and float_spec.level is None and float_spec.vocabulary is None
    assert var_spec.n_steps is None and var_spec.n_features == 2


def test_input_spec_embedding(emb_spec, emb_nomask_model):
    assert (emb_spec.n_steps, emb_spec.n_features, emb_spec.integer_tokens) == (5, None, True)
    assert (emb_spec.mask_zero, emb_spec.input_dim, emb_spec.oov_id, emb_spec.level) == (True, 7, 1, "char")
    assert emb_spec.vocabulary == VOCAB
    s = input_spec(emb_nomask_model, level="word")
    assert s.integer_tokens and not s.mask_zero and s.n_steps == 4 and s.vocabulary is None and s.level == "word"


def test_input_spec_takes_level_and_oov_from_a_sidecar(emb_model, tmp_path):
    model, model_path = emb_model
    assert sidecar_vocabulary_path(model_path) is None
    side = model_path.with_name(model_path.stem + ".vocab.json")
    side.write_text(json.dumps({"tokens": ["", "a", "?", "b"], "level": "word", "oov_token": "?"}))
    try:
        assert sidecar_vocabulary_path(model_path) == side
        v = read_vocabulary(side)
        s = input_spec(model, vocabulary=v)
        assert (s.vocabulary, s.level, s.oov_id) == (["", "a", "?", "b"], "word", 2)
        assert input_spec(model, vocabulary=v, level="char").level == "char"  # --level wins
    finally:
        side.unlink()


def test_input_spec_vocabulary_larger_than_embedding(emb_model):
    with pytest.raises(DataError, match=r"9 tokens.*ids 0\.\.6"):
        input_spec(emb_model[0], vocabulary=[str(i) for i in range(9)])


def test_input_spec_string_lookup(lookup_model):
    s = input_spec(lookup_model)
    assert s.string_input == "tokens" and not s.integer_tokens
    assert s.vocabulary == ["[UNK]", "a", "b", "c", " "] and s.oov_id == 0 and s.n_steps == 4
    with pytest.raises(DataError, match="has its own vocabulary"):
        input_spec(lookup_model, vocabulary=["x", "y"])


def test_input_spec_text_vectorization(textvec_model):
    s = input_spec(textvec_model)
    assert s.string_input == "text" and s.level == "char" and s.n_steps == 4 and s.mask_zero
    assert s.vocabulary == ["", "[UNK]", "a", "b", "c", " "] and s.oov_id == 1


# -- vocabulary files --------------------------------------------------------------------------------------


def test_read_vocabulary_list_and_object(tmp_path):
    p = _write(tmp_path, "v.json", json.dumps(VOCAB))
    v = read_vocabulary(p)
    assert isinstance(v, TokenList) and v == VOCAB and v.level is None and v.oov_token is None
    p2 = _write(tmp_path, "v2.json", json.dumps({"tokens": VOCAB, "level": "char", "oov_token": "[UNK]"}))
    v2 = read_vocabulary(p2)
    assert v2 == VOCAB and (v2.level, v2.oov_token) == ("char", "[UNK]")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[1, 2", "not valid JSON"),
        ('{"a": 1}', "needs a 'tokens' list"),
        ('"abc"', "expected a JSON list of tokens"),
        ('["a", 3]', "token 1 is a JSON number"),
        ('["a", "b", "a"]', r"'a' appears twice \(ids 0 and 2\)"),
        ("[]", "empty"),
        ('{"tokens": ["a"], "level": "sentence"}', "'level' must be one of"),
        ('{"tokens": ["a"], "oov_token": "[UNK]"}', "'oov_token' '\\[UNK\\]' is not one of the tokens"),
        ('{"tokens": ["a"], "pattern": "(a+)+$"}', "unsupported word 'pattern'"),
    ],
)
def test_read_vocabulary_errors(tmp_path, content, match):
    p = _write(tmp_path, "v.json", content)
    with pytest.raises(DataError, match=match) as e:
        read_vocabulary(p)
    assert str(p) in str(e.value)


def test_read_vocabulary_missing_and_not_utf8(tmp_path):
    with pytest.raises(DataError, match="no such vocabulary file"):
        read_vocabulary(tmp_path / "nope.json")
    with pytest.raises(DataError, match="not UTF-8 .byte 2"):
        read_vocabulary(_write(tmp_path, "v.json", b'["\xff"]'))


# -- window_series ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "window", "stride"), [(10, 3, 1), (10, 3, 2), (10, 3, 3), (10, 4, 5), (2, 3, 1)])
def test_window_series_matches_a_loop(length, window, stride):
    arr = np.arange(length * 2).reshape(length, 2)
    want = [arr[s : s + window] for s in range(0, length - window + 1, stride)]
    got = window_series(arr, window, stride)
    assert got.shape == (len(want), window, 2)
    np.testing.assert_array_equal(got, np.array(want).reshape(got.shape))


# -- .npy / .npz ------------------------------------------------------------------------------------------


def test_npy_float_exact(tmp_path, float_spec, float_model):
    x = np.arange(24, dtype=np.float64).reshape(3, 4, 2) / 7
    p = tmp_path / "x.npy"
    np.save(p, x)
    d = load_data(p, float_spec)
    assert isinstance(d, Dataset) and d.x.dtype == np.float32
    np.testing.assert_array_equal(d.x, x.astype(np.float32))
    assert d.tokens is None and d.feature_names == ["x0", "x1"]
    np.testing.assert_array_equal(d.sequence, [0, 1, 2])
    np.testing.assert_array_equal(d.start, [0, 0, 0])
    assert d.source["kind"] == "npy" and d.source["n_rows"] == 3 and len(d.source["sha256"]) == 64
    assert float_model(d.x).shape == (3, 2)  # the model takes it


def test_npy_fortran_order_big_endian_and_max_sequences(tmp_path, float_spec):
    x = np.asfortranarray(np.arange(40, dtype=">f8").reshape(5, 4, 2))
    p = tmp_path / "x.npy"
    np.save(p, x)
    np.testing.assert_array_equal(load_data(p, float_spec).x, x.astype(np.float32))
    np.save(p, np.ascontiguousarray(x))
    d = load_data(p, float_spec, max_sequences=2)
    np.testing.assert_array_equal(d.x, x[:2].astype(np.float32))


def test_npz_key_x(tmp_path, emb_spec, emb_model):
    ids = np.array([[2, 3, 4, 5, 0], [6, 2, 2, 0, 0]], dtype=np.int64)
    p = tmp_path / "x.npz"
    np.savez_compressed(p, x=ids, y=np.zeros(2))
    d = load_data(p, emb_spec)
    assert d.x.dtype == np.int32
    np.testing.assert_array_equal(d.x, ids)
    np.testing.assert_array_equal(d.tokens, ids)
    assert d.vocabulary == VOCAB and d.feature_names is None and d.source["kind"] == "npz"
    assert emb_model[0](d.x).shape == (2, 2)


def test_npz_without_x_lists_keys(tmp_path, float_spec):
    p = tmp_path / "d.npz"
    np.savez(p, inputs=np.zeros((1, 4, 2)), labels=np.zeros(1))
    _raises(p, float_spec, r"no array 'x'.*2 key\(s\): 'inputs', 'labels'")


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.zeros((3, 4)), r"expected 3 dimensions, float \(N, T, F\) = \(N, 4, 2\), got shape \(3, 4\)"),
        (np.zeros((4, 2)), r"got shape \(4, 2\); for one sequence add a leading axis"),
        (np.zeros((3, 5, 2)), r"sequences of 5 steps, but the model takes 4 steps"),
        (np.zeros((3, 4, 3)), r"3 features per step, but the model takes 2"),
        (np.zeros((0, 4, 2)), r"no sequences \(shape \(0, 4, 2\)\)"),
        (np.zeros((3, 4), np.int64), r"integer data of shape \(3, 4\) looks like token ids.*no Embedding"),
        (np.zeros((2, 4, 2), np.complex64), r"unsupported array dtype complex64"),
        (np.array(1.0), r"expected 3 dimensions.*got shape \(\)"),
    ],
)
def test_npy_shape_errors_float_model(tmp_path, float_spec, arr, match):
    p = tmp_path / "x.npy"
    np.save(p, arr)
    _raises(p, float_spec, match)


def test_npy_zero_length_sequences(tmp_path, var_spec):
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((3, 0, 2)))
    _raises(p, var_spec, r"zero-length sequences \(shape \(3, 0, 2\)\)")


def test_npy_nan_and_float32_overflow_positions(tmp_path, float_spec):
    x = np.zeros((3, 4, 2))
    x[1, 2, 1] = np.nan
    x[2, 0, 0] = np.inf
    p = tmp_path / "x.npy"
    np.save(p, x)
    _raises(p, float_spec, r"2 NaN/inf value\(s\), first at sequence 1, step 2, feature 1 \(.*nan\)")
    x = np.zeros((3, 4, 2))
    x[0, 3, 0] = 1e300
    np.save(p, x)
    _raises(p, float_spec, r"1 NaN/inf value\(s\), first at sequence 0, step 3, feature 0 .*too large for float32")


def test_npy_token_model_errors(tmp_path, emb_spec):
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((2, 5)))
    _raises(p, emb_spec, r"float data of shape \(2, 5\).*integer token ids \(N, T\) = \(N, 5\).*Embedding")
    ids = np.zeros((2, 5), np.int32)
    ids[1, 3] = 9
    ids[1, 4] = 7
    np.save(p, ids)
    _raises(p, emb_spec, r"2 token id\(s\) out of range 0\.\.6 .*first 9 at sequence 1, step 3")
    ids[1, 3:] = 0
    ids[0, 1] = -1
    np.save(p, ids)
    _raises(p, emb_spec, r"first -1 at sequence 0, step 1")
    np.save(p, np.zeros((2, 5, 1), np.int32))
    _raises(p, emb_spec, r"expected 2 dimensions")


def test_npy_ids_beyond_vocabulary(tmp_path, emb_model):
    spec = input_spec(emb_model[0], vocabulary=["", "[UNK]", "a"])
    p = tmp_path / "x.npy"
    np.save(p, np.array([[0, 1, 2, 3, 0]]))
    _raises(p, spec, r"out of range 0\.\.2 \(the vocabulary of 3 tokens\), first 3 at sequence 0, step 3")


def test_npy_object_array_is_never_unpickled(tmp_path, float_spec):
    p = tmp_path / "x.npy"
    np.save(p, np.array([[["a"]]], dtype=object), allow_pickle=True)
    _raises(p, float_spec, "holds Python objects .a pickle.; gatelens never unpickles")


def test_npy_huge_declared_shape_is_refused_before_reading(tmp_path, float_spec):
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 4, 2)})
    p = _write(tmp_path, "huge.npy", buf.getvalue() + b"\0" * 64)
    _raises(p, float_spec, r"declares shape \(1000000000000, 4, 2\) of float32 \(32000000000000 bytes\), more than")


def test_npy_truncated_and_corrupt(tmp_path, float_spec):
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((3, 4, 2)))
    raw = p.read_bytes()
    p.write_bytes(raw[:-10])
    _raises(p, float_spec, r"truncated: the header declares shape \(3, 4, 2\) of float64 \(192 bytes\) but only 182")
    p.write_bytes(b"hello world, not numpy")
    _raises(p, float_spec, "not a .npy file")
    p.write_bytes(raw[:12] + b"{garbage" + raw[20:])
    _raises(p, float_spec, "corrupt .npy header")
    p.write_bytes(b"")
    _raises(p, float_spec, "not a .npy file")


def test_npz_corrupt(tmp_path, float_spec):
    p = tmp_path / "x.npz"
    p.write_bytes(b"PK\x03\x04 this is not a zip")
    _raises(p, float_spec, "not a readable .npz archive")
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("x.npy", b"\x93NUMPY garbage")
    _raises(p, float_spec, r"x.npz \(x\): unsupported .npy format version 32.103")


def test_npy_options_that_do_not_apply(tmp_path, float_spec):
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((1, 4, 2)))
    _raises(p, float_spec, r"--window applies to .csv and .txt", window=4)


# -- .csv -------------------------------------------------------------------------------------------------


def test_csv_windows_exact(tmp_path, float_spec, float_model):
    rows = "\n".join(f"{2000 + i},{i},{10 * i}" for i in range(10))
    p = _write(tmp_path, "s.csv", "year,a,b\n" + rows + "\n")
    d = load_data(p, float_spec)  # year is taken as an index: the model takes 2 features
    assert d.feature_names == ["a", "b"]
    want = np.stack([np.arange(10), 10 * np.arange(10)], axis=1).astype(np.float32)
    np.testing.assert_array_equal(d.x, np.stack([want[0:4], want[4:8]]))
    np.testing.assert_array_equal(d.start, [0, 4])
    np.testing.assert_array_equal(d.sequence, [0, 0])
    assert d.source["dropped_tail_steps"] == 2 and d.source["ignored_columns"] == ["year"]
    d2 = load_data(p, float_spec, stride=3)
    np.testing.assert_array_equal(d2.start, [0, 3, 6])
    np.testing.assert_array_equal(d2.x[2], want[6:10])
    d3 = load_data(p, float_spec, columns=["b", "a"], stride=2, max_sequences=2)
    np.testing.assert_array_equal(d3.x, np.stack([want[0:4, ::-1], want[2:6, ::-1]]))
    assert d3.source["n_rows_total"] == 4
    assert float_model(d.x).shape == (2, 2)


def test_csv_sequence_column_keeps_sequences_apart(tmp_path, float_spec):
    lines = ["sequence,a,b"]
    lines += [f"7,{i},{-i}" for i in range(5)]
    lines += [f"3,{100 + i},{-100 - i}" for i in range(4)]
    lines += ["7,5,-5"]  # a late row of sequence 7 stays in its sequence, in file order
    p = _write(tmp_path, "s.csv", "\n".join(lines))
    d = load_data(p, float_spec, stride=2)
    np.testing.assert_array_equal(d.sequence, [3, 7, 7])
    np.testing.assert_array_equal(d.start, [0, 0, 2])
    np.testing.assert_array_equal(d.x[0, :, 0], [100, 101, 102, 103])
    np.testing.assert_array_equal(d.x[2, :, 0], [2, 3, 4, 5])
    np.testing.assert_array_equal(d.x[2, :, 1], [-2, -3, -4, -5])


def test_csv_string_sequence_labels(tmp_path, float_spec):
    lines = ["sequence,a,b"] + [f"run-b,{i},0" for i in range(4)] + [f"run-a,{i},1" for i in range(4)]
    d = load_data(_write(tmp_path, "s.csv", "\n".join(lines)), float_spec)
    assert d.source["sequence_labels"] == ["run-b", "run-a"]
    np.testing.assert_array_equal(d.sequence, [0, 1])
    np.testing.assert_array_equal(d.x[1, :, 1], [1, 1, 1, 1])


def test_csv_variable_length_model(tmp_path, var_spec, var_model):
    lines = ["sequence,a,b"] + [f"{s},{s + i},{i}" for s in (0, 1) for i in range(6)]
    p = _write(tmp_path, "s.csv", "\n".join(lines))
    d = load_data(p, var_spec)
    assert d.x.shape == (2, 6, 2)
    np.testing.assert_array_equal(d.x[1, :, 0], np.arange(1, 7))
    assert load_data(p, var_spec, window=4, stride=2).x.shape == (4, 4, 2)
    assert var_model(d.x).shape == (2, 2)
    p2 = _write(tmp_path, "s2.csv", "\n".join(lines[:-1]))
    _raises(p2, var_spec, r"different lengths \(sequence 0: 6 rows, sequence 1: 5 rows\); pass --window")
    _raises(p, var_spec, r"--stride needs --window \(the model takes sequences of any length\)", stride=2)
    labelled = _write(tmp_path, "s3.csv", "\n".join(lines[:-1]).replace("\n1,", "\nrun-b,").replace("\n0,", "\nrun-a,"))
    _raises(labelled, var_spec, r"different lengths \(sequence 'run-a': 6 rows, sequence 'run-b': 5 rows\)")


def test_csv_headerless_and_blank_lines(tmp_path, float_spec):
    p = _write(tmp_path, "s.csv", "1,2\n3,4\n\n5,6\n7,8\n\n")
    d = load_data(p, float_spec)
    assert d.feature_names == ["x0", "x1"]
    np.testing.assert_array_equal(d.x[0], [[1, 2], [3, 4], [5, 6], [7, 8]])
    # a blank line keeps the row numbers of the file
    p = _write(tmp_path, "t.csv", "a,b\n1,2\n\n3,4\n5,oops\n")
    _raises(p, float_spec, r"row 5, column 'b': expected a number, got 'oops'")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("a,b\n1,2\n3,x\n5,6\n7,8\n", r"row 3, column 'b': expected a number, got 'x'"),
        ("a,b\n1,2\n3,\n5,6\n7,8\n", r"row 3, column 'b': empty cell"),
        ("a,b\n1,2\n3\n5,6\n7,8\n", r"row 3, column 'b': empty cell"),
        ("a,b\n1,2\n3,nan\n5,6\n7,inf\n", r"2 NaN/inf value\(s\), first at row 3, column 'b' \(nan\)"),
        ("a,b\n1,2\n3,1e300\n5,6\n7,8\n", r"row 3, column 'b' .*too large for float32"),
        ("a,b\n", r"no data rows \(only a header: \['a', 'b'\]\)"),
        ("", r"empty file"),
        ("\n\n  \n", r"empty file"),
        ("a,b\n1,2\n3,4,5\n", r"cannot be read as CSV: .*line 3"),
        ("a,a\n1,2\n", r"column 'a' appears more than once"),
        ("a;b\n1;2\n", r"no numeric column.*comma-separated"),
        ("a,b,c\n1,2,3\n", r"takes 2 feature\(s\) per step, but the file has 3 numeric column\(s\).*--columns"),
        ("a,b\n1,2\n3,4\n", r"the series has 2 rows, fewer than one window of 4 steps \(the model's input length\)"),
        ("sequence,a,b\n,1,2\n", r"row 2, column 'sequence': empty sequence id"),
    ],
)
def test_csv_errors(tmp_path, float_spec, content, match):
    _raises(_write(tmp_path, "bad.csv", content), float_spec, match)


def test_csv_column_choice_errors(tmp_path, float_spec):
    p = _write(tmp_path, "s.csv", "a,b,c\n" + "\n".join(f"{i},{i},{i}" for i in range(4)))
    _raises(p, float_spec, r"no column\(s\) \['z'\]; the file has columns \['a', 'b', 'c'\]", columns=["a", "z"])
    _raises(p, float_spec, r"takes 2 feature\(s\) per step, but 1 column\(s\) were chosen", columns=["a"])
    _raises(p, float_spec, r"column 'a' is chosen twice in --columns", columns=["a", "a"])
    q = _write(tmp_path, "q.csv", "sequence,a,b\n" + "\n".join(f"0,{i},{i}" for i in range(4)))
    _raises(q, float_spec, r"'sequence' holds sequence ids; it cannot be a feature column", columns=["sequence", "a"])
    _raises(p, float_spec, r"--window 3 does not match the model's input length of 4", window=3)
    _raises(p, float_spec, r"--level applies to .txt", level="char")


def test_csv_mixed_column_is_an_error_not_ignored(tmp_path, float_spec):
    rows = "\n".join(f"{i},{i}" for i in range(6)) + "\n6,seven\n"
    _raises(_write(tmp_path, "s.csv", "a,b\n" + rows), float_spec, r"row 8, column 'b': expected a number, got 'seven'")


def test_csv_not_utf8_says_byte_offset(tmp_path, float_spec):
    _raises(_write(tmp_path, "s.csv", b"a,b\n1,\xe92\n"), float_spec, r"not UTF-8 text: byte offset 6")


def test_csv_for_token_model(tmp_path, emb_spec):
    _raises(_write(tmp_path, "s.csv", "a\n1\n"), emb_spec, r"CSV series, but the model takes integer token ids")


# -- .txt -------------------------------------------------------------------------------------------------


def _ids(text):
    return [VOCAB.index(c) if c in VOCAB else 1 for c in text]


def test_txt_char_windows_padded_with_mask_zero(tmp_path, emb_spec, emb_model):
    text = "abc ab\nca"  # 9 chars, window 5: [0:5] full, [5:9] padded with one 0
    p = _write(tmp_path, "t.txt", text)
    d = load_data(p, emb_spec)
    np.testing.assert_array_equal(d.x, [_ids(text[:5]), _ids(text[5:]) + [0]])
    assert d.x is d.tokens and d.x.dtype == np.int32
    np.testing.assert_array_equal(d.start, [0, 5])
    assert d.source["padded_steps"] == 1 and d.source["n_tokens"] == 9 and d.source["n_oov"] == 0
    # the padding is what Keras masks
    emb = emb_model[0].layers[0]
    np.testing.assert_array_equal(np.asarray(emb.compute_mask(d.x)), d.x != 0)
    d2 = load_data(p, emb_spec, stride=2)  # windows at 0, 2, 4 cover all 9 chars: no padding
    np.testing.assert_array_equal(d2.x, [_ids(text[s : s + 5]) for s in (0, 2, 4)])
    assert d2.source["padded_steps"] == 0
    d3 = load_data(p, emb_spec, stride=3)  # 0, 3 full; the tail from 6 padded
    np.testing.assert_array_equal(d3.start, [0, 3, 6])
    np.testing.assert_array_equal(d3.x[2], _ids(text[6:]) + [0, 0])


def test_txt_short_text_padded_or_refused(tmp_path, emb_spec, emb_nomask_model):
    p = _write(tmp_path, "t.txt", "ab")
    np.testing.assert_array_equal(load_data(p, emb_spec).x, [[2, 3, 0, 0, 0]])
    nomask = input_spec(emb_nomask_model, vocabulary=VOCAB)
    _raises(p, nomask, r"the text has 2 char tokens, fewer than one window of 4 \(the model input length\)")


def test_txt_tail_dropped_without_mask(tmp_path, emb_nomask_model):
    spec = input_spec(emb_nomask_model, vocabulary=VOCAB)
    d = load_data(_write(tmp_path, "t.txt", "abcabcabc"), spec)
    np.testing.assert_array_equal(d.x, [_ids("abca"), _ids("bcab")])
    assert d.source["dropped_tail_steps"] == 1


def test_txt_oov(tmp_path, emb_spec, emb_model):
    p = _write(tmp_path, "t.txt", "ab\nczz!")
    d = load_data(p, emb_spec)
    assert d.source["n_oov"] == 3
    np.testing.assert_array_equal(d.x, [[2, 3, 6, 4, 1], [1, 1, 0, 0, 0]])
    no_oov = input_spec(emb_model[0], vocabulary=["", "a", "b", "c", "\n"])
    assert no_oov.oov_id is None
    _raises(p, no_oov, r"line 2, column 2: char token 'z' is not in the vocabulary \(5 tokens, no OOV token\); 3 token")


def test_txt_token_with_id_zero_under_mask_zero(tmp_path, emb_model):
    spec = input_spec(emb_model[0], vocabulary=["a", "[UNK]", "b"])
    _raises(_write(tmp_path, "t.txt", "bba"), spec, r"line 1, column 3: token 'a' has id 0.*mask_zero")


def test_txt_word_level(tmp_path, emb_model):
    vocab = ["", "[UNK]", "if", "x", " ", "(", ")", ":"]
    spec = input_spec(emb_model[0], vocabulary=vocab[:7])
    p = _write(tmp_path, "t.txt", "if (x):\n  if y")
    d = load_data(p, spec, level="word")
    toks = ["if", " ", "(", "x", ")", ":", "\n  ", "if", " ", "y"]  # a run of whitespace is one token
    want = [vocab.index(t) if t in vocab[:7] else 1 for t in toks]
    np.testing.assert_array_equal(d.x.ravel(), want)
    # without whitespace tokens in the vocabulary, whitespace only separates words
    d2 = load_data(p, input_spec(emb_model[0], vocabulary=["", "[UNK]", "if", "x", "y"], level="word"))
    np.testing.assert_array_equal(d2.x, [[2, 1, 3, 1, 1], [2, 4, 0, 0, 0]])


def test_txt_variable_length_model_one_sequence(tmp_path):
    m = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(7, 2), keras.layers.LSTM(2)])
    spec = input_spec(m, vocabulary=VOCAB)
    d = load_data(_write(tmp_path, "t.txt", "abcab"), spec)
    np.testing.assert_array_equal(d.x, [_ids("abcab")])
    assert load_data(_write(tmp_path, "t.txt", "abcab"), spec, window=2).x.shape == (2, 2)


def test_txt_errors(tmp_path, emb_nomask_model, float_spec, emb_spec):
    no_vocab = input_spec(emb_nomask_model)
    p = _write(tmp_path, "t.txt", "abcabc")
    _raises(p, no_vocab, r"has no vocabulary; pass --vocab FILE")
    _raises(p, float_spec, r"a text file, but the model takes float \(N, T, F\)")
    _raises(_write(tmp_path, "e.txt", ""), emb_spec, r"empty file")
    _raises(_write(tmp_path, "u.txt", b"abc\n\xff\xfeabc"), emb_spec, r"not UTF-8 text: byte offset 4")
    _raises(
        _write(tmp_path, "w.txt", "   \n "),
        dataclasses.replace(emb_spec, vocabulary=["", "[UNK]", "a"]),
        r"no word tokens",
        level="word",
    )


def test_txt_string_lookup_model(tmp_path, lookup_model):
    import tensorflow as tf

    spec = input_spec(lookup_model)
    d = load_data(_write(tmp_path, "t.txt", "ab cz ba"), spec)
    assert d.x.shape == (2, 4) and d.x.dtype == object
    np.testing.assert_array_equal(d.x, [["a", "b", " ", "c"], ["z", " ", "b", "a"]])
    lookup = lookup_model.get_layer("lookup")
    np.testing.assert_array_equal(lookup(tf.constant(d.x.astype(str))).numpy(), d.tokens)  # Keras's own ids
    assert lookup_model(tf.constant(d.x.astype(str))).shape == (2, 2)


def test_txt_text_vectorization_model(tmp_path, textvec_model):
    import tensorflow as tf

    spec = input_spec(textvec_model)
    d = load_data(_write(tmp_path, "t.txt", "abcab z"), spec)
    assert d.x.shape == (2, 1)
    assert d.x[:, 0].tolist() == ["abca", "b z"]
    tv = textvec_model.get_layer("tv")
    np.testing.assert_array_equal(tv(tf.constant(d.x.astype(str))).numpy(), d.tokens)


# -- dispatch --------------------------------------------------------------------------------------------


def test_unknown_suffix_and_missing_file(tmp_path, float_spec):
    p = _write(tmp_path, "x.parquet", "x")
    _raises(p, float_spec, r"unsupported data file type '.parquet'; gatelens reads .npy, .npz, .csv, .txt")
    _raises(tmp_path / "missing.npy", float_spec, "no such data file")
    _raises(p.with_suffix(".csv"), float_spec, "no such data file")
    (tmp_path / "dir.npy").mkdir()
    _raises(tmp_path / "dir.npy", float_spec, "not a regular file")


def test_bad_options(tmp_path, float_spec):
    p = _write(tmp_path, "s.csv", "a,b\n1,2\n")
    _raises(p, float_spec, r"--stride must be a whole number >= 1, got 0", stride=0)
    _raises(p, float_spec, r"--max-sequences must be a whole number >= 1, got -1", max_sequences=-1)


def test_size_cap_for_text_files(tmp_path, emb_spec):
    p = _write(tmp_path, "t.txt", "abc" * 100)
    _raises(p, emb_spec, r"the file has 300 bytes, more than the limit of 100 bytes", max_bytes=100)


def test_check_array_in_memory():
    spec = InputSpec(n_steps=None, n_features=1)
    np.testing.assert_array_equal(check_array(np.ones((1, 3, 1), np.int16), spec), np.ones((1, 3, 1), np.float32))
    with pytest.raises(DataError, match=r"^input: 1 NaN/inf"):
        check_array(np.array([[[np.nan]]]), spec)


# -- agreement with the model zoo's own tokeniser (an independent reference) ---------------------------------------


@pytest.mark.parametrize(("level", "window"), [("char", 16), ("word", 8)])
def test_txt_matches_the_zoo_vocabulary(tmp_path, level, window):
    from gatelens.models.zoo.datasets import Vocabulary

    text = 'def f(x):\n    return x + 1  # ok\n\nclass C:\n    """Doc."""\n    y = f(2) * 3\n'
    vocab = Vocabulary.from_text(text[:40], level)  # the rest holds tokens outside the vocabulary
    side = _write(tmp_path, "m.vocab.json", json.dumps(vocab.to_json()))
    m = keras.Sequential(
        [
            keras.Input((window,), dtype="int32"),
            keras.layers.Embedding(len(vocab), 2, mask_zero=True),
            keras.layers.LSTM(2),
        ]
    )
    spec = input_spec(m, vocabulary=read_vocabulary(side))
    assert spec.level == level and spec.oov_id == 1
    d = load_data(_write(tmp_path, "t.txt", text), spec)
    ref = vocab.encode(text)
    n = len(ref)
    assert d.source["n_tokens"] == n and d.source["n_oov"] == int((ref == 1).sum()) > 0
    flat = d.x.ravel()
    np.testing.assert_array_equal(flat[:n], ref)
    np.testing.assert_array_equal(flat[n:], 0)
    assert len(flat) - n == d.source["padded_steps"] < window
