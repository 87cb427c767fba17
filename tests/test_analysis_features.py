"""Built-in and user features: the vectorised rules against a plain step-by-step reference."""

from __future__ import annotations

import string

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatelens.analysis.features import (
    TEXT_FEATURES,
    FeatureError,
    as_feature_matrix,
    build_features,
    feature_kind,
    feature_names,
    load_user_features,
    numeric_features,
    step_mask,
    text_features,
)
from gatelens.analysis.store import RunWriter, open_run
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace

ALPHABET = "ab Z9_(){}[]'\"\\\n.,"


def reference_text_features(tokens: list[str], mask: list[bool]) -> dict[str, list]:
    """The documented rules, one step at a time (the independent reference)."""
    out = {k: [] for k in TEXT_FEATURES}
    depth, state, pos_line, pos_word = 0, "out", 0, 0
    prev_word_single = False
    newline_pending = False
    seen = False
    for tok, m in zip(tokens, mask):
        if not m:
            for k in TEXT_FEATURES:
                out[k].append(None)
            continue
        for ch in tok:
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth = max(0, depth - 1)
            if state == "out":
                state = {"'": "sq", '"': "dq"}.get(ch, "out")
            elif state in ("sq", "dq"):
                if ch == "\\":
                    state = state + "_esc"
                elif (ch == "'" and state == "sq") or (ch == '"' and state == "dq"):
                    state = "out"
            else:  # after a backslash: the character is literal
                state = state[:2]
        if not seen:
            pos_line = 0
        elif newline_pending:
            pos_line = 0
        else:
            pos_line += 1
        seen = True
        newline_pending = "\n" in tok
        word = bool(tok) and all(c.isalnum() or c == "_" for c in tok)
        single = len(tok) == 1
        if word and single and prev_word_single:
            pos_word += 1
        elif word:
            pos_word = 1
        else:
            pos_word = 0
        prev_word_single = word and single
        out["bracket_depth"].append(depth)
        out["inside_quotes"].append(state != "out")
        out["position_in_line"].append(pos_line)
        out["position_in_word"].append(pos_word)
        out["is_space"].append(tok.isspace())
        out["is_alpha"].append(tok.isalpha())
        out["is_digit"].append(tok.isdigit())
        out["is_upper"].append(tok.isupper())
        out["is_punct"].append(bool(tok) and all(c in string.punctuation for c in tok))
    return out


def make_trace(ids, vocab=None, mask=None, x=None, names=None, units=2):
    ids = np.asarray(ids)
    n, t = ids.shape
    mask = np.ones((n, t), bool) if mask is None else np.asarray(mask)
    info = LayerInfo(name="lstm", cell_type="lstm", units=units, input_dim=1)
    rng = np.random.default_rng(0)
    sig = {s: rng.normal(size=(n, t, units)).astype(np.float32) for s in info.signals}
    lt = LayerTrace(info, sig, mask=mask, inputs=np.zeros((n, t, 1), np.float32))
    return Trace({"lstm": lt}, tokens=ids if vocab is not None else None, vocabulary=vocab, x=x, feature_names=names)


def encode(texts: list[str]) -> tuple[np.ndarray, list[str]]:
    vocab = [""] + sorted(set("".join(texts)))
    t = max(len(s) for s in texts)
    ids = np.zeros((len(texts), t), np.int64)
    for i, s in enumerate(texts):
        ids[i, : len(s)] = [vocab.index(c) for c in s]
    return ids, vocab


def test_text_features_known_example():
    text = 'f(a["x)\\"y"], \'it"s\')\nAb 12'
    ids, vocab = encode([text])
    f = text_features(ids, vocab)
    depth = f["bracket_depth"][0].tolist()
    # ( [ inside the string ) does count, so: f=0 (=1 a=1 [=2 "=2 x=2 )=1 ...
    assert depth[:8] == [0, 1, 1, 2, 2, 2, 1, 1]
    expected_inside = []
    state = None
    esc = False
    for ch in text:
        if state is None:
            state = ch if ch in "'\"" else None
        elif esc:
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == state:
            state = None
        expected_inside.append(state is not None)
    assert f["inside_quotes"][0].tolist() == expected_inside
    # the escaped quote does not close the "..." literal, the ' inside "..." is literal, the " inside '...' too
    assert f["inside_quotes"][0][text.index("y")]
    assert f["inside_quotes"][0][text.index("s'")]
    assert not f["inside_quotes"][0][text.index("\n")]
    line = f["position_in_line"][0].tolist()
    nl = text.index("\n")
    assert line[nl] == nl and line[nl + 1 :] == [0, 1, 2, 3, 4]
    assert f["position_in_word"][0].tolist()[-5:] == [1, 2, 0, 1, 2]
    assert f["is_upper"][0][nl + 1] and not f["is_upper"][0][nl + 2]
    assert f["is_digit"][0].tolist()[-2:] == [True, True]
    assert f["is_punct"][0][1] and not f["is_punct"][0][0]


def test_unmatched_closing_bracket_never_goes_negative():
    ids, vocab = encode(["))(()"])
    assert text_features(ids, vocab)["bracket_depth"][0].tolist() == [0, 0, 1, 2, 1]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=40), min_size=1, max_size=4),
    st.integers(0, 2**32 - 1),
)
def test_text_features_match_step_by_step_reference(texts, seed):
    ids, vocab = encode(texts)
    rng = np.random.default_rng(seed)
    mask = ids > 0
    mask &= rng.random(mask.shape) > 0.15  # masked steps in the middle too
    f = text_features(ids, vocab, mask)
    for i in range(len(texts)):
        toks = [vocab[k] for k in ids[i]]
        ref = reference_text_features(toks, mask[i].tolist())
        for name in TEXT_FEATURES:
            got = [v for v, m in zip(f[name][i].tolist(), mask[i]) if m]
            want = [v for v in ref[name] if v is not None]
            assert got == want, (name, texts[i], mask[i])


def test_word_level_tokens():
    vocab = ["", "[UNK]", "hello", "(world", ")", "don't", "\n", "ABC"]
    ids = np.array([[2, 3, 4, 5, 6, 7, 2]])
    f = text_features(ids, vocab)
    assert f["bracket_depth"][0].tolist() == [0, 1, 0, 0, 0, 0, 0]
    assert f["position_in_word"][0].tolist() == [1, 0, 0, 0, 0, 1, 1]  # each word token is its own word
    assert f["position_in_line"][0].tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert f["inside_quotes"][0].tolist() == [
        False,
        False,
        False,
        True,
        True,
        True,
        True,
    ]  # the documented apostrophe rule
    assert f["is_upper"][0].tolist() == [False] * 5 + [True, False]


def test_numeric_features_delta_skips_masked_steps():
    x = np.array([[[1.0, 10.0], [2.0, 0.0], [9.0, 9.0], [4.0, 5.0]]])
    mask = np.array([[True, True, False, True]])
    f = numeric_features(x, ["a", "b"], mask)
    np.testing.assert_array_equal(f["value:a"], x[..., 0])
    assert np.isnan(f["delta:a"][0, 0])
    assert f["delta:a"][0, 1] == 1.0 and f["delta:a"][0, 3] == 2.0  # 4 - 2: the masked step 2 is skipped
    assert f["delta:b"][0, 3] == 5.0
    # left padding: the first real step has no previous value
    f2 = numeric_features(x, ["a", "b"], np.array([[False, False, True, True]]))
    assert np.isnan(f2["delta:a"][0, 2]) and f2["delta:a"][0, 3] == -5.0


def test_build_features_text_rows_and_columns():
    ids, vocab = encode(["(ab)", "x'y"])
    trace = make_trace(ids, vocab, mask=ids > 0)
    df = build_features(trace)
    assert list(df.columns) == ["sequence", "step", *TEXT_FEATURES]
    assert list(df.columns[1:]) == feature_names(trace)
    assert len(df) == 7  # the padded step of sequence 1 is left out
    assert df[["sequence", "step"]].values.tolist()[-3:] == [[1, 0], [1, 1], [1, 2]]
    assert df["bracket_depth"].tolist()[:4] == [1, 1, 1, 0]
    assert df["inside_quotes"].tolist()[4:] == [False, True, True]
    assert df["is_space"].dtype == bool and df["bracket_depth"].dtype == np.int32


def test_build_features_numeric_and_step():
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2) ** 2
    trace = make_trace(np.zeros((2, 3), int), x=x, names=["u", "v"])
    df = build_features(trace)
    assert list(df.columns) == ["sequence", "step", "value:u", "delta:u", "value:v", "delta:v"]
    np.testing.assert_allclose(df["value:v"], x[..., 1].ravel())
    np.testing.assert_allclose(
        df["delta:u"].to_numpy()[[1, 2, 4, 5]], [4, 12, 28, 36]
    )  # (2^2-0, 4^2-2^2, 8^2-6^2, 10^2-8^2)
    assert df["delta:u"].isna().tolist() == [True, False, False, True, False, False]
    # names missing or the wrong length: x0, x1, ...
    assert feature_names(make_trace(np.zeros((2, 3), int), x=x)) == [
        "step",
        "value:x0",
        "delta:x0",
        "value:x1",
        "delta:x1",
    ]


def test_build_features_reads_a_run_store_in_chunks(tmp_path):
    texts = ["{a(b)}", "'q'()", "zz\n(", "((x"]
    ids, vocab = encode(texts)
    mask = ids > 0
    trace = make_trace(ids, vocab, mask=mask, units=3)
    info = trace["lstm"].info
    with RunWriter(tmp_path / "run", [info], n_sequences=4, n_steps=ids.shape[1], chunk_sequences=3,
                   with_tokens=True) as w:  # fmt: skip
        batch = {s: np.asarray(trace["lstm"][s]) for s in info.signals}
        batch["mask"] = mask
        batch["input"] = np.zeros((4, ids.shape[1], 1), np.float32)
        w.write_batch(0, {"lstm": batch}, tokens=ids)
        w.finish(verification={"lstm": 0.0}, vocabulary=vocab)
    run = open_run(tmp_path / "run")
    assert not isinstance(run.tokens, np.ndarray)
    pd.testing.assert_frame_equal(build_features(run, chunk_sequences=3), build_features(trace, chunk_sequences=1))
    np.testing.assert_array_equal(step_mask(run, chunk_sequences=2), mask)


def test_user_features_join(tmp_path):
    ids, vocab = encode(["abc", "de"])
    trace = make_trace(ids, vocab, mask=ids > 0)
    p = tmp_path / "user.csv"
    p.write_text("step,sequence,marked,score\n2,0,1,0.5\n0,1,0,\n1,1,nan,-2e3\n2,1,1,7\n")
    df = build_features(trace, user_features=p)
    assert df["marked"].isna().tolist() == [True, True, False, False, True]
    assert np.isnan(df["score"].tolist()[3])  # empty cell -> NaN
    assert df["score"].tolist()[4] == -2000.0
    assert len(df) == 5  # the row for the padded step (1, 2) is dropped
    # DataFrame input too, and name clashes are refused
    table = load_user_features(p, trace)
    pd.testing.assert_frame_equal(build_features(trace, user_features=table), df)
    with pytest.raises(FeatureError, match=r"reuse built-in feature names.*is_space"):
        build_features(trace, user_features=pd.DataFrame({"sequence": [0], "step": [0], "is_space": [1.0]}))


@pytest.mark.parametrize(
    "content, message",
    [
        ("", r"empty"),
        ("sequence,flag\n0,1\n", r"missing column\(s\) \['step'\]"),
        ("sequence,step\n0,1\n", r"no feature columns"),
        ("sequence,step,a,a\n0,1,2,3\n", r"line 1: column name\(s\) \['a'\] appear more than once"),
        ("sequence,step,a\n", r"no data rows"),
        ("sequence,step,a\n\n0,0,1\n\n0,1,x\n", r"line 5, column .a.: not a number"),
        ("sequence,step,a\n0,1,2\n,2,3\n", r"line 3: empty 'sequence' cell"),
        ("sequence,step,a\n0,1.5,2\n", r"line 2: 'step' must be a non-negative integer, got '1.5'"),
        ("sequence,step,a\n0,-1,2\n", r"line 2: 'step' must be a non-negative integer, got '-1'"),
        ("sequence,step,a\n0,0,1\n2,0,2\n", r"line 3: sequence 2 is out of range; the trace has 2 sequences \(0..1\)"),
        ("sequence,step,a\n0,0,1\n1,3,2\n", r"line 3: step 3 is out of range; the trace has 3 steps \(0..2\)"),
        ("sequence,step,a\n0,0,1\n1,1,2\n0,0,3\n", r"lines? 2 and line 4: duplicate key \(sequence=0, step=0\)"),
        ("sequence,step,a\n0,0,1\n0,1,yes\n", r"line 3, column 'a': not a number: 'yes'"),
        ("sequence,step,a\n0,0,inf\n", r"line 2, column 'a': not a finite number"),
        ("sequence,step,a\n0,0,1,4\n", r"line 2: not a valid CSV row: expected 3 fields like the header, found 4"),
        ("sequence,step,a\n0,0,1\n0,1\n", r"line 3: not a valid CSV row: expected 3 fields like the header, found 2"),
    ],
)
def test_user_features_errors_name_file_line_and_problem(tmp_path, content, message):
    trace = make_trace(np.zeros((2, 3), int), ["", "a"])
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(FeatureError, match=message) as e:
        load_user_features(p, trace)
    assert str(p) in str(e.value)
    assert isinstance(e.value, ValueError) and e.value.exit_code == 2


def test_user_features_missing_file_and_bad_encoding(tmp_path):
    trace = make_trace(np.zeros((1, 2), int), ["", "a"])
    with pytest.raises(FeatureError, match="no such features file"):
        load_user_features(tmp_path / "nope.csv", trace)
    p = tmp_path / "latin.csv"
    p.write_bytes("sequence,step,caf\xe9\n0,0,1\n".encode("latin-1"))
    with pytest.raises(FeatureError, match="UTF-8"):
        load_user_features(p, trace)


def test_user_features_with_a_byte_order_mark_read_like_without(tmp_path):
    """Excel's "CSV UTF-8" starts the file with a byte order mark: it is not part of the first column's name."""
    trace = make_trace(np.zeros((2, 3), int), ["", "a"])
    text = "sequence,step,flag\r\n0,2,1\r\n1,0,0\r\n"
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_text(text, newline="")
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    pd.testing.assert_frame_equal(load_user_features(bom, trace), load_user_features(plain, trace))
    assert load_user_features(bom, trace).columns.tolist() == ["sequence", "step", "flag"]


def test_feature_kind_and_matrix():
    assert feature_kind(np.array([True, False])) == "binary"
    assert feature_kind(np.array([0.0, 1.0, 1.0])) == "binary"
    assert feature_kind(np.array([0.0, 2.0])) == "continuous"
    assert feature_kind(np.array([np.nan])) == "continuous"
    df = pd.DataFrame({"sequence": [0, 0], "step": [0, 1], "f": [True, False], "g": [0.5, np.nan]})
    m, names = as_feature_matrix(df)
    assert names == ["step", "f", "g"]
    np.testing.assert_array_equal(m[:, :2], [[0, 1], [1, 0]])
    assert np.isnan(m[1, 2])
    with pytest.raises(FeatureError, match="not numeric"):
        as_feature_matrix(df.assign(h=["a", "b"]))
    with pytest.raises(FeatureError, match=r"unknown feature\(s\) \['zzz'\]"):
        as_feature_matrix(df, ["zzz"])
