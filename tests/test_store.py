"""The run store: round trip, lazy and out-of-core readers, checksums, atomic replacement, kill-safety."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatelens.analysis.store import RunStoreError, RunWriter, open_run, verify_run
from gatelens.analysis.trace import LayerInfo
from gatelens.models import extract, write_run

L = keras.layers


@pytest.fixture(scope="module")
def model():
    m = keras.Sequential(
        [
            keras.Input((11, 2)),
            L.Masking(0.0),
            L.LSTM(4, return_sequences=True, name="lstm"),
            L.Bidirectional(L.GRU(3, return_sequences=True), name="bidirectional"),
        ]
    )
    for layer in m.layers:
        for sub in getattr(layer, "_layers", [layer]):
            if isinstance(sub, L.RNN):
                sub.set_weights([w * 3 for w in sub.get_weights()])
    return m


@pytest.fixture(scope="module")
def x():
    x = np.random.default_rng(0).normal(size=(10, 11, 2)).astype(np.float32)
    x[2, 7:] = 0
    return x


def test_roundtrip_equals_in_memory(model, x, tmp_path):
    mem = extract(model, x, batch_size=4)
    run = write_run(model, x, tmp_path / "run", batch_size=4)
    assert run.layers == mem.layers == ["lstm", "bidirectional/forward", "bidirectional/backward"]
    for name in mem.layers:
        np.testing.assert_array_equal(run[name].mask[...], mem[name].mask)
        np.testing.assert_array_equal(run[name].inputs[...], mem[name].inputs)
        for sig in mem[name]:
            np.testing.assert_array_equal(run[name][sig][...], mem[name][sig])
        for w in ("kernel", "recurrent_kernel", "bias"):
            np.testing.assert_array_equal(run[name].weights[w], mem[name].weights[w])
    np.testing.assert_array_equal(run.x[...], x)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["n_sequences"] == 10 and manifest["dtype"] == "float32"
    assert set(manifest["verification"]) == set(mem.layers)
    assert manifest["keras_version"] == keras.__version__
    assert {d["name"] for d in manifest["layers"]} == set(mem.layers)


def test_float16_store_is_close(model, x, tmp_path):
    mem = extract(model, x)
    run = write_run(model, x, tmp_path / "run16", dtype="float16")
    arr = run["lstm"]["cell_state"]
    assert arr.dtype == np.float16
    np.testing.assert_allclose(arr[...].astype(np.float32), mem["lstm"]["cell_state"], rtol=1e-3, atol=1e-3)


def test_opens_with_dask_and_xarray_without_conversion(model, x, tmp_path):
    import dask.array as da
    import xarray as xr

    write_run(model, x, tmp_path / "run", batch_size=4)
    mem = extract(model, x, batch_size=4)  # the same batches: bit for bit (graph mode's round-off depends on them)
    arr = da.from_zarr(str(tmp_path / "run"), component="layers/lstm/forget_gate")
    assert arr.chunks[0] == (4, 4, 2)  # chunked along sequences, as written
    np.testing.assert_allclose(arr.mean(axis=(0, 1)).compute(), mem["lstm"]["forget_gate"].mean(axis=(0, 1)), rtol=1e-6)
    ds = xr.open_zarr(str(tmp_path / "run"), group="layers/bidirectional/backward", consolidated=False)
    assert "update_gate" in ds.data_vars
    np.testing.assert_array_equal(ds["update_gate"].values, mem["bidirectional/backward"]["update_gate"])


def test_checksums_detect_tampering(model, x, tmp_path):
    write_run(model, x, tmp_path / "run")
    chunk = next(
        p
        for p in (tmp_path / "run" / "layers" / "lstm" / "forget_gate").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(RunStoreError, match="checksum"):
        open_run(tmp_path / "run")
    (tmp_path / "run" / "extra.bin").write_bytes(b"x")
    with pytest.raises(RunStoreError):
        open_run(tmp_path / "run")


def test_missing_manifest_is_incomplete(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(RunStoreError, match="not a complete gatelens run"):
        open_run(tmp_path / "half")


def test_failure_midway_keeps_previous_run(model, x, tmp_path):
    out = tmp_path / "run"
    write_run(model, x[:3], out)
    before = (out / "manifest.json").read_bytes()

    def boom(done, total):
        if done >= 4:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_run(model, x, out, batch_size=4, progress=boom)
    assert (out / "manifest.json").read_bytes() == before
    assert open_run(out).n_sequences == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no partial directory left behind


WRITER = textwrap.dedent(
    """
    import sys, numpy as np, keras
    from gatelens.models import write_run
    m = keras.Sequential([keras.Input((11, 2)), keras.layers.LSTM(4, return_sequences=True, name="lstm")])
    m.set_weights([np.full(w.shape, 0.3, np.float32) for w in m.get_weights()])
    x = np.random.default_rng(int(sys.argv[2])).normal(size=(64, 11, 2)).astype(np.float32)
    np.save(sys.argv[1] + ".x.npy", x)
    print("ready", flush=True)
    write_run(m, x, sys.argv[1], batch_size=4)
    """
)


@pytest.mark.slow
def test_writer_killed_at_random_points_never_leaves_a_wrong_complete_run(tmp_path):
    """SIGKILL a writer at random moments: the run either reads as complete and right, or not at all,
    and a previous complete run survives every kill."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    out = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    rng = np.random.default_rng(0)
    ref = keras.Sequential([keras.Input((11, 2)), L.LSTM(4, return_sequences=True)])
    ref.set_weights([np.full(w.shape, 0.3, np.float32) for w in ref.get_weights()])
    had_complete = False
    kills = completes = 0
    duration = None
    for attempt in range(6):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(out), str(attempt)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert proc.stdout.readline().strip() == b"ready"
        t0 = time.perf_counter()
        if duration is None:  # the first writer runs to the end: a complete run to protect, and its duration
            assert proc.wait() == 0
            duration = time.perf_counter() - t0
        else:
            time.sleep(float(rng.uniform(0.0, 1.2 * duration)))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        try:
            run = open_run(out)  # verifies every checksum
        except RunStoreError:
            assert not had_complete, f"attempt {attempt}: a kill destroyed the previous complete run"
            continue
        had_complete = True
        completes += 1
        # whichever run is in place (old or new), its gates are right for the inputs it holds
        np.testing.assert_allclose(run["lstm"]["hidden_state"][...], ref.predict(run.x[...], verbose=0), atol=1e-5)
    assert kills >= 1 and completes == 6, (kills, completes)
    # a killed writer may leave hidden leftovers, never a visible half run; the next writer tidies them
    assert all(
        p.name.startswith((".run.partial-", ".run.old-", ".run.trash-"))  # trash: killed while deleting the old run
        for p in tmp_path.iterdir()
        if p.name != "run" and p.name.startswith(".")
    )
    proc = subprocess.run([sys.executable, str(script), str(out), "99"], capture_output=True, env=env)
    assert proc.returncode == 0
    assert not list(tmp_path.glob(".run.old-*"))


def test_writer_restores_a_run_orphaned_between_the_two_renames(model, x, tmp_path):
    out = tmp_path / "run"
    write_run(model, x[:2], out)
    os.replace(out, tmp_path / ".run.old-deadbeef")  # as if killed right after the first rename
    write_run(model, x[:5], tmp_path / "other")  # unrelated runs are left alone
    RunWriter(out, [], n_sequences=1, n_steps=1).abort()  # any new writer for this path recovers it
    assert open_run(out).n_sequences == 2


# --- the direct chunk writer: what it writes must be what zarr writes, byte for byte ---------------------------------

LSTM = LayerInfo(name="lstm", cell_type="lstm", units=3, input_dim=2)
GRU_F = LayerInfo(name="bi/forward", cell_type="gru", units=2, input_dim=4)
N_CHUNKED = len(LSTM.signals) + len(GRU_F.signals) + 2 * 2 + 1  # signals, masks, inputs, tokens or x


def _data(rng, n, t, in_dtype=np.float32, n_features=None):
    """One whole run's worth of write_batch inputs: signals, mask, inputs per layer; tokens or x."""
    batch = {}
    for info in (LSTM, GRU_F):
        d = {s: rng.normal(size=(n, t, info.units)).astype(in_dtype) for s in info.signals}
        d["mask"] = rng.random((n, t)) > 0.3
        d["input"] = rng.normal(size=(n, t, info.input_dim)).astype(np.float32)
        batch[info.name] = d
    if n_features:
        return batch, {"x": rng.normal(size=(n, t, n_features)).astype(np.float32)}
    return batch, {"tokens": rng.integers(0, 1000, (n, t)).astype(np.int32)}


WEIGHTS = {
    "lstm": {
        "kernel": np.arange(24, dtype=np.float32).reshape(2, 12),
        "recurrent_kernel": np.ones((3, 12), np.float32),
        "bias": np.linspace(-1, 1, 12),  # float64: stored as float32
    }
}


def _write(out, batch, extra, splits, *, chunk, dtype, direct, n_features=None):
    n, t = batch["lstm"]["mask"].shape
    with RunWriter(
        out,
        [LSTM, GRU_F],
        n_sequences=n,
        n_steps=t,
        dtype=dtype,
        chunk_sequences=chunk,
        weights=WEIGHTS,
        with_tokens=n_features is None,
        n_features=n_features,
        direct_chunks=direct,
    ) as w:
        for lo, hi in splits:
            part = {layer: {k: v[lo:hi] for k, v in d.items()} for layer, d in batch.items()}
            w.write_batch(lo, part, **{k: v[lo:hi] for k, v in extra.items()})
        direct_written = len(w._digests)
        w.finish({"lstm": 0.0, "bi/forward": 0.0})
    return direct_written


def _files(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _split(n, cuts):
    edges = sorted({0, n, *(c for c in cuts if 0 < c < n)})
    return list(zip(edges[:-1], edges[1:]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 9),
    t=st.integers(1, 4),
    chunk=st.integers(1, 11),
    dtype=st.sampled_from(["float16", "float32"]),
    in_dtype=st.sampled_from([np.float32, np.float16, np.float64]),
    cuts=st.lists(st.integers(1, 8), max_size=3),
    aligned=st.booleans(),
    numeric=st.booleans(),
)
def test_direct_chunks_equal_zarrs_own_bytes(tmp_path_factory, n, t, chunk, dtype, in_dtype, cuts, aligned, numeric):
    """Whatever the batches (aligned with the chunks or not), the run's files are byte for byte those zarr's
    own writer leaves for the same data: edge chunks padded, float16/float32/bool/int32, metadata, weights."""
    tmp = tmp_path_factory.mktemp("direct")
    batch, extra = _data(np.random.default_rng(n * 100 + t), n, t, in_dtype, n_features=2 if numeric else None)
    c = min(chunk, n)
    splits = _split(n, [k * c for k in cuts] if aligned else cuts)
    kw = {"chunk": chunk, "dtype": dtype, "n_features": 2 if numeric else None}
    n_direct = _write(tmp / "direct", batch, extra, splits, direct=True, **kw)
    assert _write(tmp / "zarr", batch, extra, splits, direct=False, **kw) == 0
    if aligned:  # every chunk of every array went the direct way
        assert n_direct == N_CHUNKED * -(-n // c) + 3  # + the 3 weights
    a, b = _files(tmp / "direct"), _files(tmp / "zarr")
    assert a.keys() == b.keys()
    for rel in a.keys() - {"manifest.json"}:
        assert a[rel] == b[rel], rel
    manifest = json.loads(a["manifest.json"])
    assert manifest["files"] == {rel: hashlib.sha256(v).hexdigest() for rel, v in a.items() if rel != "manifest.json"}
    run = open_run(tmp / "direct")  # verifies every checksum
    for info in (LSTM, GRU_F):
        for s in info.signals:
            got = run[info.name][s][...]
            assert got.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(got, batch[info.name][s].astype(dtype))
        np.testing.assert_array_equal(run[info.name].mask[...], batch[info.name]["mask"])
        np.testing.assert_array_equal(run[info.name].inputs[...], batch[info.name]["input"])
    for k, v in extra.items():
        np.testing.assert_array_equal((run.x if k == "x" else run.tokens)[...], v)
    for k, v in WEIGHTS["lstm"].items():
        np.testing.assert_array_equal(run["lstm"].weights[k], v.astype(np.float32))


def test_edge_chunk_is_stored_padded_with_the_fill_value(tmp_path):
    batch, extra = _data(np.random.default_rng(1), 5, 2)
    _write(tmp_path / "run", batch, extra, [(0, 4), (4, 5)], chunk=4, dtype="float16", direct=True)
    path = tmp_path / "run" / "layers" / "lstm" / "forget_gate" / "c" / "1" / "0" / "0"
    raw = np.frombuffer(path.read_bytes(), "<f2").reshape(4, 2, 3)  # full chunk shape, as zarr stores it
    np.testing.assert_array_equal(raw[0], batch["lstm"]["forget_gate"][4].astype(np.float16))
    assert not raw[1:].any()  # the fill value 0.0
    mask = np.frombuffer((tmp_path / "run/layers/lstm/mask/c/1/0").read_bytes(), bool).reshape(4, 2)
    np.testing.assert_array_equal(mask[0], batch["lstm"]["mask"][4])
    assert not mask[1:].any()


def test_zarr_dask_and_xarray_read_direct_chunks_exactly(tmp_path):
    import dask.array as da
    import xarray as xr
    import zarr

    batch, extra = _data(np.random.default_rng(2), 7, 3)
    _write(tmp_path / "run", batch, extra, [(0, 3), (3, 6), (6, 7)], chunk=3, dtype="float16", direct=True)
    root = zarr.open_group(str(tmp_path / "run"), mode="r")
    ref = batch["bi/forward"]
    for s in GRU_F.signals:
        want = ref[s].astype(np.float16)
        np.testing.assert_array_equal(root[f"layers/bi/forward/{s}"][...], want)
        arr = da.from_zarr(str(tmp_path / "run"), component=f"layers/bi/forward/{s}")
        assert arr.chunks[0] == (3, 3, 1) and arr.dtype == np.float16
        np.testing.assert_array_equal(arr.compute(), want)
    ds = xr.open_zarr(str(tmp_path / "run"), group="layers/bi/forward", consolidated=False)
    assert ds["update_gate"].dims == ("sequence", "step", "unit")
    np.testing.assert_array_equal(ds["update_gate"].values, ref["update_gate"].astype(np.float16))
    np.testing.assert_array_equal(ds["mask"].values, ref["mask"])
    np.testing.assert_array_equal(ds["input"].values, ref["input"])
    top = xr.open_zarr(str(tmp_path / "run"), consolidated=False)
    np.testing.assert_array_equal(top["tokens"].values, extra["tokens"])


def test_rewriting_a_direct_chunk_through_zarr_rehashes_it(tmp_path):
    """An unaligned batch over a chunk written directly goes through zarr; the manifest has the new bytes."""
    batch, extra = _data(np.random.default_rng(3), 6, 2)
    with RunWriter(tmp_path / "run", [LSTM, GRU_F], n_sequences=6, n_steps=2, chunk_sequences=3, with_tokens=True) as w:
        w.write_batch(0, batch, **extra)
        assert len(w._digests) == 2 * N_CHUNKED  # both chunks of every array went the direct way
        part = {
            layer: {k: v[1:2] + (1 if v.dtype.kind == "f" else 0) for k, v in d.items()} for layer, d in batch.items()
        }
        w.write_batch(1, part, tokens=extra["tokens"][1:2] + 1)
        w.finish({})
    run = open_run(tmp_path / "run")  # verifies
    got = run["lstm"]["candidate"][...]
    np.testing.assert_array_equal(got[1], batch["lstm"]["candidate"][1] + 1)
    np.testing.assert_array_equal(np.delete(got, 1, axis=0), np.delete(batch["lstm"]["candidate"], 1, axis=0))
    np.testing.assert_array_equal(run.tokens[1], extra["tokens"][1] + 1)


@pytest.mark.parametrize("damage", ["flip padding byte", "truncate", "delete", "zarr.json"])
def test_verify_run_detects_a_damaged_direct_chunk(tmp_path, damage):
    batch, extra = _data(np.random.default_rng(4), 5, 2)
    _write(tmp_path / "run", batch, extra, [(0, 4), (4, 5)], chunk=4, dtype="float16", direct=True)
    verify_run(tmp_path / "run")
    path = tmp_path / "run" / "layers" / "bi" / "forward" / "candidate" / "c" / "1" / "0" / "0"
    if damage == "flip padding byte":  # in the edge chunk's padding: invisible to readers, not to the checksum
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))
        match = "checksum"
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-2])
        match = "checksum"
    elif damage == "delete":
        path.unlink()
        match = "missing"
    else:
        meta = path.parents[3] / "zarr.json"
        meta.write_text(meta.read_text().replace('"float16"', '"float32"'))
        match = "checksum"
    with pytest.raises(RunStoreError, match=match):
        verify_run(tmp_path / "run")
    with pytest.raises(RunStoreError, match=match):
        open_run(tmp_path / "run", verify=True)


def test_write_batch_rejects_wrong_shapes_and_ranges(tmp_path):
    batch, extra = _data(np.random.default_rng(5), 4, 2)
    with RunWriter(tmp_path / "run", [LSTM, GRU_F], n_sequences=4, n_steps=2, chunk_sequences=2, with_tokens=True) as w:
        bad = {**batch, "lstm": {**batch["lstm"], "cell_state": batch["lstm"]["cell_state"][:, :, :2]}}
        with pytest.raises(ValueError, match=r"layer 'lstm': cell_state: got an array of shape \(4, 2, 2\), expected"):
            w.write_batch(0, bad, **extra)
        with pytest.raises(ValueError, match=r"sequences 2:6 are outside the run's 0:4"):
            w.write_batch(2, batch, **extra)
        with pytest.raises(ValueError, match="tokens="):
            w.write_batch(0, batch)
        with pytest.raises(ValueError, match=r"only 0 of 4 sequences"):
            w.finish({})
    assert not list(tmp_path.iterdir())  # the failed writer left nothing behind


def test_lz4_compression_still_writes_a_readable_verified_run(tmp_path):
    batch, extra = _data(np.random.default_rng(6), 5, 3)
    with RunWriter(
        tmp_path / "run",
        [LSTM, GRU_F],
        n_sequences=5,
        n_steps=3,
        chunk_sequences=2,
        with_tokens=True,
        compression="lz4",
    ) as w:
        w.write_batch(0, batch, **extra)
        # compressed chunks go through zarr and are hashed in finish; the raw mask and tokens go direct
        assert {k.split("/c/")[0] for k in w._digests} == {"layers/lstm/mask", "layers/bi/forward/mask", "tokens"}
        w.finish({})
    meta = json.loads((tmp_path / "run/layers/lstm/forget_gate/zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc"]
    run = open_run(tmp_path / "run")
    np.testing.assert_array_equal(run["lstm"]["forget_gate"][...], batch["lstm"]["forget_gate"])
    with pytest.raises(ValueError, match=r"compression must be one of \(None, 'lz4'\), got 'zip'"):
        RunWriter(tmp_path / "other", [LSTM], n_sequences=1, n_steps=1, compression="zip")


def test_a_manifest_open_run_would_refuse_is_never_moved_into_place(model, x, tmp_path):
    """The writer checks the manifest as open_run reads it before the run is moved to ``out``: a failing check (here
    an extra manifest key that overrides ``n_steps`` with a value open_run refuses) leaves nothing at ``out``, and
    an earlier run there intact."""
    out = tmp_path / "run"
    write_run(model, x, out)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(RunStoreError, match=r"manifest.json \(not written\): key 'n_steps' must be in 1\.\."):
        write_run(model, x, out, manifest={"n_steps": 0})
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the partial run removed
    with pytest.raises(RunStoreError, match=r"\(not written\): key 'n_steps'"):
        write_run(model, x, tmp_path / "new", manifest={"n_steps": 0})
    assert not (tmp_path / "new").exists()
    open_run(out)  # still the earlier, complete run


@pytest.mark.parametrize("mine", ["analysis/notes.txt", "analysis/mine/data.csv", "analysis/mine.parquet"])
def test_a_run_whose_analysis_folder_holds_the_users_files_is_not_replaced(model, x, tmp_path, mine):
    """``analysis/`` of a run may hold what ``gatelens analyze`` wrote (its index and the tables it lists, files being
    written); a re-extraction over a run with the user's notes or data in there deleted them with the run."""
    from gatelens.analysis.pipeline import analyze_run

    out = tmp_path / "run"
    write_run(model, x, out)
    analyze_run(out, steps=("stats", "memory"), processes=1)
    (out / "analysis" / ".events-parts.partial-0123456789ab").mkdir()  # what a killed distributed analysis leaves
    (out / "analysis" / ".events-parts.partial-0123456789ab" / "part-0.parquet").write_bytes(b"")
    write_run(model, x, out)  # an analysed run: replaced (with its analysis)
    assert not (out / "analysis").exists()
    analyze_run(out, steps=("stats",), processes=1)
    (out / mine).parent.mkdir(parents=True, exist_ok=True)
    (out / mine).write_text("mine")
    first = mine if mine.count("/") == 1 else mine.rsplit("/", 1)[0]  # a folder of the user's is named first
    with pytest.raises(RunStoreError, match=f"holds '{first}', which gatelens analyze did not write"):
        write_run(model, x, out)
    assert (out / mine).read_text() == "mine" and (out / "analysis" / "index.json").is_file()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 9),
    chunk=st.integers(1, 5),
    dtype=st.sampled_from(["float16", "float32"]),
    start=st.integers(-12, 12),
    stop=st.one_of(st.none(), st.integers(-12, 12)),
    step=st.sampled_from([None, 1, 2, -1]),
    index=st.integers(-10, 10),
)
def test_stored_arrays_read_what_zarr_reads(tmp_path_factory, n, chunk, dtype, start, stop, step, index):
    """open_run's arrays (StoredArray: rows read straight from the raw chunk files) give exactly Zarr's values and
    errors for every selection: slices of rows (edge chunks, empty, negative), a row, the whole array, trailing
    full slices, and what it passes to Zarr (steps other than 1, elements, index arrays: oindex)."""
    from gatelens.analysis.store import StoredArray

    tmp = tmp_path_factory.mktemp("stored")
    batch, extra = _data(np.random.default_rng(n * 10 + chunk), n, 3)
    _write(tmp / "run", batch, extra, [(0, n)], chunk=chunk, dtype=dtype, direct=True)
    run = open_run(tmp / "run")
    arrays = [run["lstm"]["forget_gate"], run["bi/forward"]["update_gate"], run["lstm"].mask, run["lstm"].inputs]
    arrays.append(run.tokens)
    rows = np.array(sorted({abs(index) % n, n - 1}))
    for a in arrays:
        assert isinstance(a, StoredArray)
        z = a.zarr_array
        for sel in (slice(start, stop, step), (slice(start, stop), Ellipsis), Ellipsis, slice(None), (index,),
                    index, (slice(start, stop), slice(None)), (index, 0)):  # fmt: skip
            try:
                want = z[sel]
            except (IndexError, ValueError) as e:
                with pytest.raises(type(e)):
                    a[sel]
                continue
            got = a[sel]
            assert type(got) is type(want) and np.shape(got) == np.shape(want)
            np.testing.assert_array_equal(got, want)
            if isinstance(got, np.ndarray):
                assert got.dtype == want.dtype
        np.testing.assert_array_equal(a.oindex[rows], z.oindex[rows])
        np.testing.assert_array_equal(np.asarray(a), z[...])
        assert len(a) == n and a.shape == z.shape and a.chunks == z.chunks


def test_stored_array_reads_a_missing_chunk_as_the_fill_value_and_names_a_short_one(tmp_path):
    """A chunk file Zarr never wrote reads as the fill value, as Zarr reads it; a chunk file cut short (a run opened
    unverified) is an error naming the file and the rows, not garbage."""
    batch, extra = _data(np.random.default_rng(4), 6, 2)
    _write(tmp_path / "run", batch, extra, [(0, 6)], chunk=2, dtype="float32", direct=True)
    gate = tmp_path / "run/layers/lstm/forget_gate/c"
    (gate / "1/0/0").unlink()
    run = open_run(tmp_path / "run", verify=False)
    a = run["lstm"]["forget_gate"]
    np.testing.assert_array_equal(a[...], a.zarr_array[...])
    assert not a[2:4].any()
    np.testing.assert_array_equal(a[4:6], batch["lstm"]["forget_gate"][4:6])
    last = gate / "2/0/0"
    last.write_bytes(last.read_bytes()[:30])
    with pytest.raises(RunStoreError, match=r"forget_gate/c/2/0/0: the chunk file ends at byte 30; rows 4\.\.5"):
        a[3:6]
