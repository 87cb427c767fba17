"""Property tests of the data loaders: any file gives a correct Dataset or one clear DataError, never a crash.

Specs are built by hand (no TensorFlow here), so these run in seconds.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gatelens.errors import DataError
from gatelens.models.data import Dataset, load_data, window_series
from gatelens.models.spec import InputSpec

#: Modest by default (CI budget); raise it to fuzz harder: GATELENS_FUZZ_EXAMPLES=5000 pytest tests/test_data_properties.py
EXAMPLES = int(os.environ.get("GATELENS_FUZZ_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
VOCAB = ["", "[UNK]", "a", "b", "c", " ", "\n", "é"]

FLOAT = InputSpec(n_steps=3, n_features=2)
FLOAT_VAR = InputSpec(n_steps=None, n_features=1)
TOKENS = InputSpec(
    n_steps=4,
    n_features=None,
    integer_tokens=True,
    vocabulary=VOCAB,
    oov_id=1,
    mask_zero=True,
    level="char",
    input_dim=len(VOCAB),
)
TOKENS_STRICT = InputSpec(
    n_steps=3, n_features=None, integer_tokens=True, vocabulary=VOCAB[2:], level="char", input_dim=10
)
SPECS = [FLOAT, FLOAT_VAR, TOKENS, TOKENS_STRICT]
CAP = 1 << 20  # 1 MiB: declared shapes beyond it are refused before reading


def _tmp(name: str, data: bytes) -> Path:
    d = Path(tempfile.mkdtemp(prefix="gl-prop-"))
    p = d / name
    p.write_bytes(data)
    return p


def _load(path: Path, spec: InputSpec, **kw) -> Dataset | DataError:
    """Load, and check the two allowed outcomes: a consistent Dataset, or a one-line DataError naming the file."""
    try:
        d = load_data(path, spec, max_bytes=CAP, **kw)
    except DataError as e:
        msg = str(e)
        assert msg and "\n" not in msg, msg
        assert str(path) in msg, msg
        assert "Traceback" not in msg
        return e
    _check_dataset(d, spec)
    return d


def _check_dataset(d: Dataset, spec: InputSpec) -> None:
    n = d.x.shape[0]
    assert n >= 1 and d.x.shape[1] >= 1
    assert d.sequence.shape == (n,) and d.sequence.dtype == np.int64
    assert d.start.shape == (n,) and d.start.dtype == np.int64 and (d.start >= 0).all()
    assert d.source["n_rows"] == n and len(d.source["sha256"]) == 64
    if spec.n_steps is not None:
        assert d.x.shape[1] == spec.n_steps
    if spec.integer_tokens:
        assert d.x.dtype == np.int32 and d.x.ndim == 2 and d.tokens is d.x
        assert ((d.x >= 0) & (d.x < spec.input_dim)).all()
    else:
        assert d.x.dtype == np.float32 and d.x.ndim == 3 and np.isfinite(d.x).all()
        assert len(d.feature_names) == d.x.shape[2]
        if spec.n_features is not None:
            assert d.x.shape[2] == spec.n_features


# -- arbitrary bytes ---------------------------------------------------------------------------------------


@SETTINGS
@given(
    data=st.binary(max_size=400), suffix=st.sampled_from([".npy", ".npz", ".csv", ".txt"]), spec=st.sampled_from(SPECS)
)
def test_arbitrary_bytes(data, suffix, spec):
    _load(_tmp("f" + suffix, data), spec)


@SETTINGS
@given(
    text=st.text(alphabet=st.sampled_from(list("0123456789.,-+eE \nnaifsequcx\"';\t\r")), max_size=200),
    spec=st.sampled_from([FLOAT, FLOAT_VAR]),
)
def test_csv_like_text(text, spec):
    _load(_tmp("f.csv", text.encode()), spec)


@SETTINGS
@given(
    descr=st.sampled_from(
        ["<f4", ">f8", "<i8", "|u1", "|b1", "<f2", "|O", "<c8", "<U3", "|V8", "<M8[s]", [("a", "<f4")], "<f4 garbage"]
    ),
    shape=st.lists(st.integers(0, 10**12), max_size=4).map(tuple) | st.sampled_from([(2, 3, 2), (1, 3, 1), (3, 4)]),
    fortran=st.booleans(),
    payload=st.binary(max_size=200),
    as_npz=st.booleans(),
    spec=st.sampled_from(SPECS),
)
def test_npy_fuzzed_headers(descr, shape, fortran, payload, as_npz, spec):
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": shape})
    except Exception:  # numpy refuses to write some of these headers; write one by hand then
        buf = io.BytesIO()
        header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode("latin1")
        header += b" " * (-(len(header) + 11) % 64) + b"\n"
        buf.write(np.lib.format.magic(1, 0) + len(header).to_bytes(2, "little") + header)
    raw = buf.getvalue() + payload
    if as_npz:
        zbuf = io.BytesIO()
        with zipfile.ZipFile(zbuf, "w") as zf:
            zf.writestr("x.npy", raw)
        p = _tmp("f.npz", zbuf.getvalue())
    else:
        p = _tmp("f.npy", raw)
    out = _load(p, spec)
    if isinstance(out, Dataset) and not as_npz:  # agrees with NumPy's own reader
        ref = np.load(p, allow_pickle=False)
        np.testing.assert_array_equal(out.x, ref.astype(out.x.dtype))


@SETTINGS
@given(dims=st.lists(st.integers(1, 10**9), min_size=3, max_size=3), dtype=st.sampled_from(["<f4", "<f8", "<i8"]))
def test_huge_declared_shape_refused_before_reading(dims, dtype):
    assume(math.prod(dims) * np.dtype(dtype).itemsize > CAP)
    buf = io.BytesIO()
    np.lib.format.write_array_header_2_0(buf, {"descr": dtype, "fortran_order": False, "shape": tuple(dims)})
    p = _tmp("f.npy", buf.getvalue() + b"\0" * 16)
    out = _load(p, FLOAT)
    assert isinstance(out, DataError) and "more than the limit" in str(out)


# -- valid arrays, NaN/inf, empty and zero-length -------------------------------------------------------------


@SETTINGS
@given(
    x=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=3, max_dims=3, min_side=0, max_side=4),
        elements=st.floats(allow_nan=True, allow_infinity=True, width=64),
    ),
    as_npz=st.booleans(),
)
def test_float_arrays(x, as_npz):
    spec = InputSpec(n_steps=None, n_features=None)
    bio = io.BytesIO()
    if as_npz:
        np.savez(bio, x=x)
    else:
        np.save(bio, x)
    p = _tmp("f.npz" if as_npz else "f.npy", bio.getvalue())
    out = _load(p, spec)
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    bad = ~np.isfinite(x32)
    if x.shape[0] == 0:
        assert "no sequences" in str(out)
    elif x.shape[1] == 0:
        assert "zero-length sequences" in str(out)
    elif x.shape[2] == 0:
        assert "zero features" in str(out)
    elif bad.any():
        i, t, f = np.argwhere(bad)[0]
        assert f"{int(bad.sum())} NaN/inf value(s), first at sequence {i}, step {t}, feature {f}" in str(out)
    else:
        np.testing.assert_array_equal(out.x, x32)


@SETTINGS
@given(
    ids=hnp.arrays(
        np.int64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5), elements=st.integers(-3, 12)
    )
)
def test_token_id_arrays(ids):
    bio = io.BytesIO()
    np.save(bio, ids)
    p = _tmp("f.npy", bio.getvalue())
    out = _load(p, TOKENS)
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] != 4:
        assert isinstance(out, DataError)
        return
    bad = (ids < 0) | (ids >= len(VOCAB))
    if bad.any():
        i, t = np.argwhere(bad)[0]
        assert f"first {ids[i, t]} at sequence {i}, step {t}" in str(out)
    else:
        np.testing.assert_array_equal(out.x, ids)


# -- CSV: correct windows or the right cell named ----------------------------------------------------------------


@SETTINGS
@given(
    values=hnp.arrays(
        np.float64, st.tuples(st.integers(0, 12), st.just(2)), elements=st.floats(-1e6, 1e6, allow_nan=False, width=32)
    ),
    junk=st.lists(
        st.tuples(st.integers(0, 11), st.integers(0, 1), st.sampled_from(["", "x", "nan", "inf", "1,2"])), max_size=3
    ),
    stride=st.none() | st.integers(1, 4),
)
def test_csv_values_or_the_bad_cell(values, junk, stride):
    cells = [[repr(float(v)) for v in row] for row in values]
    junk = [(r, c, j) for r, c, j in junk if r < len(cells)]
    for r, c, j in junk:
        cells[r][c] = f'"{j}"' if "," in j else j
    text = "a,b\n" + "".join(",".join(row) + "\n" for row in cells)
    p = _tmp("f.csv", text.encode())
    out = _load(p, FLOAT, stride=stride)
    kept = [r for r, row in enumerate(cells) if any(row)]  # fully blank rows are skipped
    bad = {(r + 2, "ab"[c]) for r, c, j in junk if r in kept}
    msg = str(out)
    if not kept:
        assert "no data rows" in msg
        return
    if bad:
        assert isinstance(out, DataError)
        named = [f"row {r}, column '{c}'" for r, c in bad] + [f"'{c}' (row {r}: " for r, c in bad]
        named += [f"'{c}' (empty)" for c in "ab"]  # a column with nothing but blank cells
        assert any(n in msg for n in named), msg
        return
    s = stride or 3
    starts = list(range(0, len(kept) - 3 + 1, s))
    if not starts:
        assert f"the series has {len(kept)} rows, fewer than one window of 3 steps" in msg
        return
    rows = values[kept]
    want = np.stack([rows[a : a + 3] for a in starts]).astype(np.float32)
    np.testing.assert_array_equal(out.x, want)
    np.testing.assert_array_equal(out.start, starts)


# -- text: correct windows, OOV and non-UTF-8 positions -------------------------------------------------------


@SETTINGS
@given(text=st.text(alphabet=st.sampled_from(list("abc \né") + ["z", "\r"]), max_size=30), stride=st.integers(1, 5))
def test_txt_windows_match_a_loop(text, stride):
    p = _tmp("f.txt", text.encode())
    out = _load(p, TOKENS, stride=stride)
    norm = text.replace("\r\n", "\n").replace("\r", "\n")
    if not norm:
        assert "empty file" in str(out)
        return
    ids = [VOCAB.index(ch) if ch in VOCAB else 1 for ch in norm]
    rows, a = [], 0
    while True:  # reference: full windows, then one padded window for a tail (mask_zero)
        rows.append((ids[a : a + 4] + [0] * 4)[:4])
        if a + 4 >= len(ids):
            break
        a += stride
    np.testing.assert_array_equal(out.x, rows)


@SETTINGS
@given(text=st.text(alphabet=st.sampled_from(list("abc \nxé")), min_size=1, max_size=30))
def test_txt_first_unknown_token_position(text):
    p = _tmp("f.txt", text.encode())
    out = _load(p, TOKENS_STRICT)
    unknown = [k for k, ch in enumerate(text) if ch not in VOCAB[2:]]
    if unknown:
        k = unknown[0]
        line = text.count("\n", 0, k) + 1
        col = k - (text.rfind("\n", 0, k) + 1) + 1
        assert f"line {line}, column {col}: char token {text[k]!r}" in str(out)
    elif len(text) < 3:
        assert "fewer than one window of 3" in str(out)
    else:
        n = (len(text) - 3) // 3 + 1
        assert out.x.shape == (n, 3)


@SETTINGS
@given(
    prefix=st.text(max_size=10),
    bad=st.sampled_from([b"\xff", b"\xc3", b"\xe9a", b"\xed\xa0\x80"]),
    suffix=st.binary(max_size=5),
    kind=st.sampled_from([".txt", ".csv"]),
)
def test_non_utf8_names_the_byte_offset(prefix, bad, suffix, kind):
    raw = prefix.encode() + bad + suffix
    try:
        raw.decode("utf-8")
        offset = None
    except UnicodeDecodeError as e:
        offset = e.start
    assume(offset is not None)  # "\xc3" + a continuation byte is valid UTF-8
    p = _tmp("f" + kind, raw)
    out = _load(p, TOKENS if kind == ".txt" else FLOAT)
    assert isinstance(out, DataError) and f"byte offset {offset} " in str(out)


# -- window_series ---------------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(length=st.integers(0, 30), window=st.integers(1, 8), stride=st.integers(1, 8), feats=st.integers(0, 3))
def test_window_series_matches_a_loop(length, window, stride, feats):
    arr = np.arange(length * max(feats, 1)).reshape((length, feats) if feats else (length,))
    got = window_series(arr, window, stride)
    want = [arr[a : a + window] for a in range(0, length - window + 1, stride)]
    assert got.shape == (len(want), window, *arr.shape[1:])
    if want:
        np.testing.assert_array_equal(got, np.stack(want))
