"""Bundled data (checked against its manifests) and the text/series helpers of gatelens.models.zoo.datasets."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatelens.errors import DataError
from gatelens.models.zoo import datasets as ds


def test_corpus_is_the_listed_stdlib_modules_concatenated():
    manifest = json.loads((ds.DATA_DIR / "corpus" / "manifest.json").read_text())
    blob = ds.CORPUS_PATH.read_bytes()
    assert len(blob) == manifest["bytes"] > 250_000
    assert hashlib.sha256(blob).hexdigest() == manifest["sha256"]
    assert [f["file"] for f in manifest["files"]] == list(ds.CORPUS_MODULES)
    offset = 0
    for f in manifest["files"]:
        part = blob[offset : offset + f["bytes"]]
        assert hashlib.sha256(part).hexdigest() == f["sha256"], f["file"]
        offset += f["bytes"]
    assert offset == len(blob)
    readme = (ds.DATA_DIR / "corpus" / "README.md").read_text()
    assert manifest["sha256"] in readme and all(f["sha256"] in readme for f in manifest["files"])
    lic = (ds.DATA_DIR / "corpus" / "LICENSE-PSF.txt").read_text()
    assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in lic
    text = blob.decode("utf-8")
    assert text.count('"""') > 300 and text.count("(") > 3000  # docstrings and brackets galore


def test_series_files_match_their_readme_and_known_values():
    readme = (ds.DATA_DIR / "series" / "README.md").read_text()
    for p in (ds.SUNSPOTS_PATH, ds.CO2_PATH):
        assert ds.sha256_file(p) in readme, p.name
    values, names = ds.read_series_csv(ds.SUNSPOTS_PATH)
    assert names == ["sunspots"] and values.shape == (309, 1)  # the year column is an index, not a feature
    assert values[:5, 0].tolist() == [5.0, 11.0, 16.0, 23.0, 36.0]  # NGDC yearly numbers, 1700-1704
    co2, names = ds.read_series_csv(ds.CO2_PATH)
    assert names == ["co2_ppm"] and 310 < co2.min() < 320 and 365 < co2.max() < 375


def test_vocabulary_order_encoding_and_side_car_round_trip(tmp_path):
    v = ds.Vocabulary.from_text("aab c", min_count=1)
    assert v.tokens == ["", "[UNK]", "a", " ", "b", "c"]  # padding, OOV, then by frequency, ties by token
    assert v.encode("abz").tolist() == [2, 4, 1]
    assert v.decode(v.encode("cab")) == "cab"
    assert ds.Vocabulary.from_text("aab c", min_count=2).tokens == ["", "[UNK]", "a"]
    assert ds.Vocabulary.from_text("aab c", max_tokens=3).tokens == ["", "[UNK]", "a"]
    p = tmp_path / "m.vocab.json"
    p.write_text(json.dumps(v.to_json()))
    doc = json.loads(p.read_text())
    assert doc["level"] == "char" and doc["oov_token"] == "[UNK]" and doc["padding_token"] == ""
    assert ds.Vocabulary.load(p) == v
    p.write_text(json.dumps(["", "[UNK]", "x"]))
    assert ds.Vocabulary.load(p).tokens == ["", "[UNK]", "x"]
    p.write_text(json.dumps({"tok": []}))
    with pytest.raises(DataError, match="m.vocab.json: expected a JSON list of tokens"):
        ds.Vocabulary.load(p)
    with pytest.raises(ValueError, match="starts with"):
        ds.Vocabulary(["a", "b"])


def test_word_vocabulary_side_car_is_read_by_the_extract_loader(tmp_path):
    from gatelens.models.spec import read_vocabulary

    v = ds.Vocabulary.from_text("def f(x):\n    return x\n", level="word")
    p = tmp_path / "m.vocab.json"
    p.write_text(json.dumps(v.to_json()))
    tokens = read_vocabulary(p)
    assert list(tokens) == v.tokens and tokens.level == "word" and tokens.pattern == ds.WORD_PATTERN


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=200))
def test_word_tokens_join_back_to_the_text(text):
    tokens = ds.tokenize(text, "word")
    assert "".join(tokens) == text
    assert all(re.fullmatch(ds.WORD_PATTERN, t) for t in tokens)


def test_text_windows_and_splits():
    x, y = ds.text_windows(np.arange(11), 3, stride=2)
    assert x.tolist() == [[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 8]]
    np.testing.assert_array_equal(y, x + 1)
    assert ds.text_windows(np.arange(3), 3)[0].shape == (0, 3)  # no room for the shifted target
    assert ds.split_bounds(1000, 0.1, 0.1) == (800, 900)
    with pytest.raises(DataError, match=r"val_fraction \+ test_fraction must be < 1, got 0.5 \+ 0.5"):
        ds.split_bounds(10, 0.5, 0.5)


@pytest.mark.parametrize("mode", ["one", "sequence"])
def test_series_windows_match_a_loop(mode):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(30, 2))
    x, y, last = ds.series_windows(values, values[:, 1], 5, horizon=3, mode=mode)
    assert len(x) == 30 - 5 - 3 + 1
    for k in range(len(x)):
        np.testing.assert_array_equal(x[k], values[k : k + 5])
        if mode == "one":
            assert y[k] == values[k + 4 + 3, 1] and last[k] == k + 7
        else:
            np.testing.assert_array_equal(y[k], values[k + 3 : k + 8, 1])
    with pytest.raises(DataError, match="a series of 4 steps is too short for window 5"):
        ds.series_windows(values[:4], values[:4, 0], 5)


def test_series_csv_errors_name_the_file_line_and_column(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("year,a,b\n2000,1,2\n2001,3,oops\n")
    with pytest.raises(DataError, match=r"s.csv: line 3 \(data row 2\), column 'b': expected a number, got 'oops'"):
        ds.read_series_csv(p, ["a", "b"])
    with pytest.raises(DataError, match=r"s.csv: no column\(s\) \['c'\]; the file has \['year', 'a', 'b'\]"):
        ds.read_series_csv(p, ["c"])
    values, names = ds.read_series_csv(p)  # 'b' is not numeric: only 'a' qualifies
    assert names == ["a"] and values[:, 0].tolist() == [1.0, 3.0]
    with pytest.raises(DataError, match="no such CSV file"):
        ds.read_series_csv(tmp_path / "missing.csv")
