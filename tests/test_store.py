"""The run store: round trip, lazy and out-of-core readers, checksums, atomic replacement, kill-safety."""

from __future__ import annotations

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

from analysis.store import RunStoreError, open_run
from models import extract, write_run

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
    mem = extract(model, x)
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
    from models import write_run
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
        p.name.startswith((".run.partial-", ".run.old-"))
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
    from analysis.store import RunWriter

    RunWriter(out, [], n_sequences=1, n_steps=1).abort()  # any new writer for this path recovers it
    assert open_run(out).n_sequences == 2
