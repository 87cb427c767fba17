"""The streamed top-k of the examples equals partitioning every key, whichever path a chunk takes.

``_stream_top`` keys only the entries that can enter (a bound from block maxima, then the running k-th) and falls
back to keying everything when most entries tie; ``_decile_draws`` replaces one partition per decile by two sorts.
Both must give the same sets as the plain partition of all keys (``_top_keys``), chunk after chunk.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gatelens.analysis import examples as ex


def _plain(running: np.ndarray, hi: np.ndarray, positions: np.ndarray, k: int) -> np.ndarray:
    keys = ex._key(hi.astype(np.uint64), np.broadcast_to(positions[:, None], hi.shape), descending=True)
    return ex._top_keys(running, keys, k)


def _as_set(keys: np.ndarray) -> list[list[int]]:
    return [sorted(int(v) for v in col if v != 0) for col in keys.T]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 3, 5])
def test_stream_top_equals_partitioning_every_key(seed, k):
    rng = np.random.default_rng(seed)
    units = 6
    running_new = running_old = np.zeros((0, units), np.uint64)
    start = 0
    for rows in (2, 40, 7, 300, 1, 64):  # fewer rows than k, ragged chunks, a large one
        v = rng.normal(size=(rows, units)).astype(np.float16).astype(np.float32)  # float16: many ties
        v[:, 0] = 1.0  # a constant unit: every entry ties (the fallback path)
        v[:, 1] = np.where(rng.uniform(size=rows) < 0.5, -0.0, 0.0)  # -0.0 ties +0.0
        v[:, 2] = np.round(v[:, 2])  # a few levels
        positions = np.arange(start, start + rows)
        start += rows
        for hi in (ex._ordered32(v), ~ex._ordered32(v)):  # top and bottom
            got = ex._stream_top(running_new, hi, positions, k)
            want = _plain(running_old, hi, positions, k)
            assert _as_set(got) == _as_set(want)
        running_new = ex._stream_top(running_new, ex._ordered32(v), positions, k)
        running_old = _plain(running_old, ex._ordered32(v), positions, k)
    assert np.array_equal(np.sort(running_new, axis=0), np.sort(running_old, axis=0))
    np.testing.assert_array_equal(ex._ordered32(v).astype(np.uint64), ex.ordered_bits(v))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 3, 5])
def test_stream_top_of_values_equals_partitioning_every_key(seed, k):
    """``_stream_top_values`` compares floats (NaN-free chunks) where ``_stream_top`` compares keys: the same sets,
    for the largest and the smallest, chunk after chunk -- with ties, -0.0, infinities, a running k-th that is NaN
    (from an earlier chunk with NaN, taken by ``_stream_top``), and a chunk whose values all pass the running k-th."""
    rng = np.random.default_rng(seed)
    units = 6
    got = {True: np.zeros((0, units), np.uint64), False: np.zeros((0, units), np.uint64)}
    want = dict(got)
    start = 0
    for i, rows in enumerate((2, 40, 7, 300, 1, 64, 500)):
        v = rng.normal(size=(rows, units)).astype(np.float16).astype(np.float32)
        v[:, 0] = 1.0
        v[:, 1] = np.where(rng.uniform(size=rows) < 0.5, -0.0, 0.0)
        v[:, 2] = np.round(v[:, 2])
        v[rows // 2, 3] = np.inf
        v[0, 4] = -np.inf
        if i == 6:
            v[:, 3:] += 100  # every entry beats the running k-th: the chunk's own bound applies
        positions = np.arange(start, start + rows)
        start += rows
        if i < 2:  # NaN (the key path): unit 5's first k are NaN of the sign that sorts below -inf, so its
            v[:, 5] = np.copysign(np.float32(np.nan), -1)  # running k-th of the largest is NaN, and all beat it
            v[:2, 4] = np.nan  # a NaN above +inf
        for largest in (True, False):
            hi = ex._ordered32(v) if largest else ~ex._ordered32(v)
            want[largest] = _plain(want[largest], hi, positions, k)
            if np.isnan(v).any():
                got[largest] = ex._stream_top(got[largest], hi, positions, k)
            else:
                got[largest] = ex._stream_top_values(got[largest], v, positions, k, largest)
            assert _as_set(got[largest]) == _as_set(want[largest]), (i, largest)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 2, 4])
def test_decile_draws_equal_one_partition_per_decile(seed, k):
    rng = np.random.default_rng(seed)
    m, units = 500, 5
    positions = rng.permutation(10_000)[:m]
    dkey = ((ex._LOW32 - ex.position_priority(positions)) << np.uint64(32)) | (ex._LOW32 - positions.astype(np.uint64))
    dec = rng.integers(0, 10, (m, units)).astype(np.int8)
    dec[:, 0] = 3  # one decile holds every step of unit 0; the others none
    dec[: m - 2, 1] = 9  # decile 0 of unit 1 has two steps only
    dec[m - 2 :, 1] = 0
    got = ex._decile_draws(dkey, dec, k)
    for j in range(10):
        keys = np.where(dec == j, dkey[:, None], np.uint64(0))
        want = ex._top_keys(np.zeros((0, units), np.uint64), keys, k)
        assert _as_set(got[:, j]) == _as_set(want), j


@pytest.mark.parametrize("back", [False, True])
def test_changes_of_unmasked_chunks_equal_the_masked_path(back):
    # a chunk with every step real takes a shortcut (no reordering); it must give the general path's changes
    rng = np.random.default_rng(int(back))
    v = rng.normal(size=(4, 9, 3)).astype(np.float32)
    full = np.ones((4, 9), bool)
    d, pos = ex._changes(v, full, back, 10)
    # the general path on the same chunk plus one masked step in an extra sequence (which alone has fewer changes)
    m = np.vstack([full, np.ones((1, 9), bool)])
    m[4, 3] = False
    d2, pos2 = ex._changes(np.concatenate([v, v[:1]]), m, back, 10)
    k = 4 * 8
    np.testing.assert_array_equal(d, d2[:k])
    np.testing.assert_array_equal(pos, pos2[:k])
    assert len(d2) == k + 7


def test_decile_draws_with_the_order_and_counts_given():
    rng = np.random.default_rng(11)
    positions = rng.permutation(5_000)[:300]
    dkey = ((ex._LOW32 - ex.position_priority(positions)) << np.uint64(32)) | (ex._LOW32 - positions.astype(np.uint64))
    dec = rng.integers(0, 10, (300, 4)).astype(np.int8)
    counts = np.stack([(dec == j).sum(axis=0) for j in range(10)])
    np.testing.assert_array_equal(
        ex._decile_draws(dkey, dec, 2, np.argsort(dkey)[::-1], counts), ex._decile_draws(dkey, dec, 2)
    )


def test_passes_hold_a_block_of_sequences_whatever_the_chunk(monkeypatch):
    from gatelens._examples import example_trace

    n = ex.PASS_SEQUENCES * 2 + 5
    trace, sig = example_trace("lstm", n=n, steps=6, units=3)
    rng = np.random.default_rng(3)
    for s in sig:
        sig[s][:] = rng.uniform(0, 1, sig[s].shape)
    want = ex.unit_examples(trace, k=3, context=2, chunk=7)  # small chunks: the same tables for any split
    held = []
    real_read = ex.read

    def counting_read(array, rows, *args, **kw):
        out = real_read(array, rows, *args, **kw)
        held.append(out.shape[0])
        return out

    monkeypatch.setattr(ex, "read", counting_read)
    got = ex.unit_examples(trace, k=3, context=2, chunk=1000)
    assert max(held) == ex.PASS_SEQUENCES  # every read (passes and contexts) is one block of sequences at most
    for a, b in zip(got, want):
        pd.testing.assert_frame_equal(a, b)


def _context_trace(numeric: str | None):
    from gatelens._examples import example_layer
    from gatelens.analysis.trace import Trace

    rng = np.random.default_rng(5)
    n, t = 5, 9
    mask = np.ones((n, t), bool)
    mask[1, 6:] = False
    mask[3, ::3] = False
    inputs = rng.normal(size=(n, t, 2)).astype(np.float32)
    lt, sig = example_layer("lstm", n, t, 2, mask=mask, inputs=inputs)
    for s in sig:
        sig[s][:] = rng.normal(size=sig[s].shape)
    sig["hidden_state"][0, 2:6, 0] = [np.nan, np.inf, -np.inf, -0.0]
    sig["cell_state"][2, :, 1] = np.float32(1e-30) * np.arange(t)
    if numeric is None:
        tokens = rng.integers(-1, 7, (n, t))
        return Trace({"lstm": lt}, tokens=tokens, vocabulary=['"', "a\\b", "é", "\n\t\x01", "日本", ""])
    if numeric == "x":
        x = rng.normal(size=(n, t, 3))
        x[0, :4, 0] = [np.nan, -0.0, 1e300, 12345678.123456789]
        return Trace({"lstm": lt}, x=x)
    return Trace({"lstm": lt})


@pytest.mark.parametrize("numeric", [None, "x", "inputs"])
def test_context_texts_are_json_dumps_of_the_windows(numeric):
    """The context columns are built from arrays (each distinct token, input step and value formatted once, every
    list laid out by one take): each text equals ``json.dumps`` of its window built here row by row -- tokens with
    quotes, escapes, non-ASCII and ids outside the vocabulary; numeric inputs (the model's or the layer's); NaN,
    infinities, -0.0, tiny values and masked (null) steps. Decile examples take their value from the window."""
    import json

    trace = _context_trace(numeric)
    got, _ = ex.unit_examples(trace, k=3, k_decile=2, context=3, chunk=2)
    lt = trace["lstm"]
    vocab = trace.vocabulary
    assert len(got) > 100 and got["context_values"].str.contains("NaN|Infinity|null").any()
    for r in got.itertuples():
        a, b = max(r.step - 3, 0), min(r.step + 4, lt.shape[1])
        assert (r.context_start, r.position) == (a, r.step - a)
        if numeric is None:
            want = [vocab[i] if 0 <= i < len(vocab) else str(i) for i in trace.tokens[r.sequence, a:b].tolist()]
        else:
            src = trace.x if numeric == "x" else lt.inputs
            want = np.asarray(src[r.sequence, a:b], np.float64).tolist()
        assert r.context == json.dumps(want)
        sig = lt[r.signal][r.sequence, a:b, r.unit]
        values = [float(v) if ok else None for v, ok in zip(sig.tolist(), lt.mask[r.sequence, a:b].tolist())]
        assert r.context_values == json.dumps(values)
        if r.kind.startswith("decile_"):
            assert np.float64(r.value).tobytes() == np.float64(sig[r.position]).tobytes()


def test_json_lists_join_the_items_of_each_list():
    items = ex._items(["1", '"a, b"', "null", ""])
    got = ex._json_lists(items, np.array([0, 1, 2, 3, 3, 0]), np.array([1, 3, 2]))
    got.validate(full=True)
    assert got.to_pylist() == ["[1]", '["a, b", null, ]', "[, 1]"]
    assert ex._json_lists(items, np.array([], np.int64), np.array([], np.int64)).to_pylist() == []
    with pytest.raises(ValueError, match="at least one item"):
        ex._json_lists(items, np.array([0]), np.array([1, 0]))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 2, 4])
def test_decile_draws_from_the_head_equal_the_full_sort(seed, k):
    """``_decile_draws_head`` sorts only the first rows in key order and draws the rarer deciles from all their rows:
    the same sets as ``_decile_draws`` -- deciles of many rows, of a few, of one, and empty ones; chunks smaller
    than the head."""
    rng = np.random.default_rng(seed)
    for m in (3, 200, 3000):
        units = 7
        positions = rng.permutation(50_000)[:m]
        dkey = ((ex._LOW32 - ex.position_priority(positions)) << np.uint64(32)) | (
            ex._LOW32 - positions.astype(np.uint64)
        )
        p = rng.dirichlet(np.full(10, 0.3), size=units)  # skewed: some deciles hold a handful of rows
        dec = np.stack([rng.choice(10, size=m, p=p[u]) for u in range(units)], axis=1).astype(np.int8)
        dec[:, 0] = 4  # one decile holds every row of unit 0
        dec[:, 1] = np.where(np.arange(m) == m // 2, 9, 2)  # unit 1: decile 9 has one row
        order = np.argsort(dkey)[::-1]
        counts = np.stack([(dec == j).sum(axis=0) for j in range(10)])
        got = ex._decile_draws_head(dkey, dec, k, order, counts)
        want = ex._decile_draws(dkey, dec, k)
        for j in range(10):
            assert _as_set(got[:, j]) == _as_set(want[:, j]), (m, j)


def test_small_unique_is_numpy_unique():
    rng = np.random.default_rng(0)
    for ids in (rng.integers(-3, 50, 1000), np.array([5]), np.array([], np.int64), np.array([0, 1 << 40, -7])):
        got, want = ex._small_unique(ids), np.unique(ids, return_inverse=True)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1].ravel())


@pytest.mark.parametrize("bins", [10, 20, 30, 70])
def test_bin_codes_and_float16_tables_equal_bin_index(bins):
    """``_bin_codes`` (blocks of values in reused buffers, deciles by a product where it truncates as the quotient)
    and ``_BinTable`` (each float16 pattern binned once, the chunk counted by its patterns) give the counts and
    deciles of ``bin_index``, the module's formula: ranges through zero with both zeros in the data, ends that are
    -0.0 or +0.0, a constant unit, negative values, subnormals, and more rows than one block."""
    rng = np.random.default_rng(7)
    units = 7
    m = ex._BIN_BLOCK // units + 5  # two blocks
    v = rng.uniform(-1, 1, (m, units))
    v[:, 0] = rng.choice([-0.0, 0.0, 0.25, 1.0], m)  # both zeros inside the range
    v[:, 1] = rng.choice([-0.0, 0.0, 0.5], m)  # lo is a zero
    v[:, 2] = rng.choice([-0.0, 0.0, -0.5], m)  # hi is a zero
    v[:, 3] = 0.75  # constant: every value in bin 0
    v[:, 4] = -np.abs(v[:, 4]) - 2.0  # negative only
    v[:, 5] = rng.integers(-40, 40, m) * 2.0**-24  # float16 subnormals
    v[:, 6] = rng.uniform(0.9, 1.1, m)  # (a few patterns, as a saturated gate)
    v16 = v.astype(np.float16)
    lo, hi = v16.astype(np.float32).min(axis=0), v16.astype(np.float32).max(axis=0)
    b = ex.bin_index(v16.astype(np.float32), lo, hi, bins)
    want_counts = np.bincount((b * units + np.arange(units)).ravel(), minlength=bins * units)
    want_dec = b // (bins // 10)
    scratch = np.empty(v16.size + 3, np.intp)
    codes, dec = ex._bin_codes(v16, lo, hi, bins, scratch)
    np.testing.assert_array_equal(np.bincount(codes, minlength=bins * units), want_counts)
    np.testing.assert_array_equal(dec, want_dec)
    assert ex._pattern_range(lo, hi)[1].sum() <= ex._BinTable.LIMIT
    counts, dec = ex._BinTable(lo, hi, bins)(v16, scratch)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(dec, want_dec)
    assert want_counts.reshape(bins, units)[:, 3].tolist() == [m] + [0] * (bins - 1)


def test_merged_draws_keep_the_top_keys_and_their_windows():
    """``_merge_draws`` keeps, chunk after chunk, the set ``_top_keys`` keeps (in descending order, zeros last), each
    key with the window ``_windows`` gathers for it from the block it came from -- checked against slicing the whole
    array at each kept position: windows clipped at both ends of a sequence, columns with fewer keys than k."""
    rng = np.random.default_rng(11)
    n, t_len, units, k, context, block = 9, 7, 4, 2, 2, 3
    raw_all = rng.normal(size=(n, t_len, units)).astype(np.float32)
    keys = np.zeros((0, 10, units), np.uint64)
    win = np.zeros((0, 10, units, 2 * context + 1), np.float32)
    plain = [np.zeros((0, units), np.uint64) for _ in range(10)]
    for start in range(0, n, block):
        pos = np.arange(start * t_len, (start + block) * t_len)
        new = np.zeros((k, 10, units), np.uint64)
        for j in range(10):
            for u in range(units):
                picked = rng.choice(pos, size=rng.integers(0, k + 1), replace=False)  # 0..k entries
                new[: len(picked), j, u] = np.sort((rng.integers(1, 1 << 20, len(picked)).astype(np.uint64) << 32) | (
                    ex._LOW32 - picked.astype(np.uint64)))[::-1]  # fmt: skip
        keys, win = ex._merge_draws(keys, win, new, raw_all[start : start + block], start, context)
        for j in range(10):
            plain[j] = ex._top_keys(plain[j], new[:, j], k)
            assert _as_set(keys[:, j]) == _as_set(plain[j])
        assert (np.diff(keys.astype(np.float64), axis=0) <= 0).all()
    for r, j, u in zip(*np.nonzero(keys)):
        p = int(ex._LOW32 - (keys[r, j, u] & ex._LOW32))
        s, step = divmod(p, t_len)
        a, b = max(step - context, 0), min(step + context + 1, t_len)
        np.testing.assert_array_equal(win[r, j, u, : b - a], raw_all[s, a:b, u])
