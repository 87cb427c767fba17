"""Nothing lost, nothing crashes (issue 12): output paths, NaN weights, awkward layer names, edited manifests,
kills at every phase of the writer, bounded chunk padding. Every input is built here."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatelens.analysis.export import read_csv
from gatelens.analysis.manifest import seal
from gatelens.analysis.store import RunStoreError, RunWriter, open_run, store_key
from gatelens.analysis.trace import LayerInfo
from gatelens.cli.main import main
from gatelens.errors import UnsupportedLayerError, VerificationError
from gatelens.models import extract

L = keras.layers


def _snapshot(path):
    """Every file and link under ``path`` (or the file itself) with its bytes."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {
        p.relative_to(path).as_posix(): (os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None)
        for p in sorted(path.rglob("*"))
    }


def _cli(capsys, *args):
    """Run the CLI in-process: (exit code, stderr lines)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return rc, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("robust")
    m = keras.Sequential([keras.Input((6, 2)), L.LSTM(3, return_sequences=True, name="lstm")])
    m.save(d / "m.keras")
    np.save(d / "x.npy", np.random.default_rng(0).normal(size=(5, 6, 2)).astype(np.float32))
    return d


# --- 1. output paths -------------------------------------------------------------------------------------------


def _user_folder(path):
    path.mkdir()
    (path / "thesis.docx").write_bytes(b"my thesis " * 100)
    (path / "sub").mkdir()
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return _snapshot(path)


def test_extract_never_replaces_a_user_folder_file_or_link(files, tmp_path, capsys):
    folder = tmp_path / "mine"
    before = _user_folder(folder)
    rc, err = _cli(capsys, "extract", files / "m.keras", files / "x.npy", "--out", folder)
    assert rc == 2 and len(err) == 1 and "not a gatelens run" in err[0] and "'sub'" in err[0]
    assert _snapshot(folder) == before
    f = tmp_path / "notes.txt"
    f.write_bytes(b"do not lose me")
    rc, err = _cli(capsys, "extract", files / "m.keras", files / "x.npy", "--out", f)
    assert rc == 2 and len(err) == 1 and "not a directory" in err[0]
    assert f.read_bytes() == b"do not lose me"
    link = tmp_path / "link"
    link.symlink_to(folder)
    rc, err = _cli(capsys, "extract", files / "m.keras", files / "x.npy", "--out", link)
    assert rc == 2 and len(err) == 1 and "link" in err[0]
    assert _snapshot(folder) == before and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "mine", "notes.txt"]  # nothing hidden left


def test_extract_takes_an_empty_folder_and_replaces_only_a_pure_run(files, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    assert _cli(capsys, "extract", files / "m.keras", files / "x.npy", "--out", out)[0] == 0
    first = (out / "manifest.json").stat().st_ino  # (bytes may repeat: the same input within the same second)
    (out / "analysis").mkdir()
    (out / "analysis" / "t.parquet").write_bytes(b"gatelens wrote this")
    assert _cli(capsys, "extract", files / "m.keras", files / "x.npy", "--out", out)[0] == 0  # a run: replaced
    assert (out / "manifest.json").stat().st_ino != first and not (out / "analysis").exists()
    (out / "my_notes.txt").write_text("mine")  # a run with a user's file in it is no longer only gatelens's
    before = _snapshot(out)
    rc, err = _cli(capsys, "extract", files / "m.keras", files / "x.npy", "--out", out)
    assert rc == 2 and "my_notes.txt" in err[0]
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_export_never_writes_into_a_user_folder_unless_asked(files, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli(capsys, "extract", files / "m.keras", files / "x.npy", "--out", run)[0] == 0
    folder = tmp_path / "mine"
    before = _user_folder(folder)
    rc, err = _cli(capsys, "export", run, "--csv", folder)
    assert rc == 2 and len(err) == 1 and "not part of a gatelens export" in err[0]
    assert _snapshot(folder) == before
    f = tmp_path / "report.csv"
    f.write_text("mine")
    assert _cli(capsys, "export", run, "--csv", f)[0] == 2 and f.read_text() == "mine"
    out = tmp_path / "export"
    assert _cli(capsys, "export", run, "--csv", out)[0] == 0
    assert _cli(capsys, "export", run, "--csv", out)[0] == 0  # a previous export may be written again
    assert _cli(capsys, "export", run, "--csv", folder, "--add")[0] == 0  # told to add: theirs stay as they were
    after = _snapshot(folder)
    assert {k: v for k, v in after.items() if k in before} == before and "activations.csv" in after


# --- 2. non-finite values --------------------------------------------------------------------------------------


def test_nan_weight_is_refused_at_load_naming_layer_and_weight(tmp_path, capsys):
    m = keras.Sequential([keras.Input((6, 2)), L.LSTM(3, return_sequences=True, name="enc")])
    w = m.layers[0].get_weights()
    w[1][2, 5] = np.nan
    m.layers[0].set_weights(w)
    m.save(tmp_path / "nan.keras")
    np.save(tmp_path / "x.npy", np.zeros((2, 6, 2), np.float32))
    rc, err = _cli(capsys, "extract", tmp_path / "nan.keras", tmp_path / "x.npy", "--out", tmp_path / "run")
    assert rc == 3 and len(err) == 1
    assert "'enc'" in err[0] and "recurrent_kernel" in err[0] and "NaN" in err[0] and "(2, 5)" in err[0]
    assert not (tmp_path / "run").exists()


def test_non_finite_values_fail_verification_instead_of_being_skipped():
    """relu SimpleRNN with huge weights overflows float32: Keras's output is inf/NaN, and that is a failure."""
    m = keras.Sequential([keras.Input((3, 1)), L.SimpleRNN(2, activation="relu", return_sequences=True, name="r")])
    m.layers[0].set_weights([np.full((1, 2), 1e30, np.float32), np.full((2, 2), 1e30, np.float32), np.zeros(2)])
    x = np.full((2, 3, 1), 1e10, np.float32)
    assert not np.isfinite(m.predict(x, verbose=0)).all()  # the reference itself is not finite
    with pytest.raises(VerificationError):
        extract(m, x)


# --- 3. any name Keras accepts ---------------------------------------------------------------------------------

NAMES = [
    "..",
    ".",
    "a" * 300,
    "new\nline",
    "bidi\u202eevil",
    "-lead",
    "=SUM(A1)",
    "+cmd|calc",
    "@at",
    "ünïcødé_层",
    "zarr.json",
    "manifest.json",
    "weights",
    "has space",
    "-2+3",
    "back\\slash",
    "x>y",
]
RUNNABLE = {n for n in NAMES if n.isascii() and not any(c in n for c in " \n=+@|\u202e\\")}


@pytest.mark.parametrize("name", NAMES, ids=[repr(n[:12]) for n in NAMES])
def test_awkward_layer_names_extract_correctly_or_are_refused_in_one_line(name, tmp_path, capsys):
    m = keras.Sequential([keras.Input((4, 2)), L.GRU(3, return_sequences=True, name=name)])
    m.save(tmp_path / "m.keras")
    x = np.random.default_rng(1).normal(size=(3, 4, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run = tmp_path / "run"
    rc, err = _cli(capsys, "extract", tmp_path / "m.keras", tmp_path / "x.npy", "--out", run)
    if name not in RUNNABLE:
        with pytest.raises(
            Exception, match="scope name|invalid characters"
        ):  # Keras itself cannot run it on TensorFlow
            m.predict(x, verbose=0)
        assert rc == 3 and len(err) == 1 and "cannot be run by TensorFlow" in err[0], err
        assert not run.exists()
        return
    assert rc == 0, err
    trace = open_run(run)
    assert trace.layers == [name]
    np.testing.assert_allclose(trace[name]["hidden_state"][...], m.predict(x, verbose=0), atol=1e-5)
    assert "/" not in store_key(name) and (run / "layers" / store_key(name) / "hidden_state").is_dir()
    assert _cli(capsys, "export", run, "--csv", tmp_path / "csv")[0] == 0
    raw = (tmp_path / "csv" / "activations.csv").read_text()
    cells = {c.strip('"') for line in raw.splitlines()[1:] for c in line.split(",")[:1]}
    assert all(not c.startswith(("=", "+", "-", "@")) for c in cells), cells
    assert set(read_csv(tmp_path / "csv" / "activations.csv")["layer"]) == {name}


def test_nested_names_that_collide_after_deduplication_stay_distinct(tmp_path, capsys):
    def sub():
        return keras.Sequential([keras.Input((4, 2)), L.LSTM(2, return_sequences=True, name="lstm")])

    inp = keras.Input((4, 2))
    a, b = sub()(inp), sub()(inp)
    c = L.LSTM(2, return_sequences=True, name="lstm_1")(inp)
    d = L.LSTM(2, return_sequences=True, name="LSTM")(inp)
    m = keras.Model(inp, L.Concatenate()([a, b, c, d]))
    m.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", np.random.default_rng(2).normal(size=(3, 4, 2)).astype(np.float32))
    rc, err = _cli(capsys, "extract", tmp_path / "m.keras", tmp_path / "x.npy", "--out", tmp_path / "run")
    assert rc == 0, err
    trace = open_run(tmp_path / "run")
    assert len(set(trace.layers)) == 4 and {"lstm", "lstm_1", "LSTM"} <= set(trace.layers)
    keys = [d["store_key"] for d in trace.meta["layers"]]
    assert len({k.lower() for k in keys}) == 4  # distinct also on a file system that ignores case


def test_our_scope_pattern_is_tensorflows():
    from tensorflow.python.framework import ops

    from gatelens.models.naming import SCOPE_NAME

    assert SCOPE_NAME.pattern == ops._VALID_SCOPE_NAME_REGEX.pattern


def test_unrunnable_name_is_refused_by_the_extractor_api():
    m = keras.Sequential([keras.Input((4, 2)), L.LSTM(2, name="a b")])
    with pytest.raises(UnsupportedLayerError, match="cannot be run by TensorFlow"):
        extract(m, np.zeros((1, 4, 2), np.float32))


# --- 6. edited or foreign runs ---------------------------------------------------------------------------------

INFO = LayerInfo(name="lstm", cell_type="lstm", units=2, input_dim=1)


def _synthetic_run(out, infos=(INFO,), n=3, t=4, chunk=2):
    rng = np.random.default_rng(0)
    with RunWriter(out, list(infos), n_sequences=n, n_steps=t, chunk_sequences=chunk, n_features=1) as w:
        batch = {}
        for info in infos:
            b = {s: rng.normal(size=(n, t, info.units)).astype(np.float32) for s in info.signals}
            b["mask"] = np.ones((n, t), bool)
            b["input"] = rng.normal(size=(n, t, info.input_dim)).astype(np.float32)
            batch[info.name] = b
        w.write_batch(0, batch, x=rng.normal(size=(n, t, 1)).astype(np.float32))
        w.finish(verification={i.name: 0.0 for i in infos}, feature_names=["x0"])
    return out


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return _synthetic_run(tmp_path_factory.mktemp("base") / "run")


def _edit(base_run, tmp_path, fn, reseal):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    doc = json.loads((run / "manifest.json").read_text())
    fn(doc)
    (run / "manifest.json").write_bytes(seal(doc) if reseal else json.dumps(doc).encode())
    return run


EDITS = {
    "layers removed": lambda d: d.pop("layers"),
    "layers renamed": lambda d: d.__setitem__("layer", d.pop("layers")),
    "units retyped": lambda d: d["layers"][0].__setitem__("units", "2"),
    "units inconsistent": lambda d: d["layers"][0].__setitem__("units", 5),
    "n_sequences inconsistent": lambda d: d.__setitem__("n_sequences", 4),
    "dtype unknown": lambda d: d.__setitem__("dtype", "float64"),
    "store key outside": lambda d: d["layers"][0].__setitem__("store_key", "../../etc"),
    "file outside": lambda d: d["files"].__setitem__("../x", "0" * 64),
    "has_x retyped": lambda d: d.__setitem__("has_x", "yes"),
    "files removed": lambda d: d.pop("files"),
    "verification retyped": lambda d: d.__setitem__("verification", [1]),
    "cell type unknown": lambda d: d["layers"][0].__setitem__("cell_type", "lstm2"),
    "feature names inconsistent": lambda d: d.__setitem__("feature_names", ["a", "b"]),
}


@pytest.mark.parametrize("reseal", [False, True], ids=["edited", "edited-and-resealed"])
@pytest.mark.parametrize("edit", list(EDITS))
def test_every_edited_manifest_gives_exit_2_naming_the_problem(base_run, tmp_path, capsys, edit, reseal):
    run = _edit(base_run, tmp_path, EDITS[edit], reseal)
    for cmd in (["analyze", run], ["export", run, "--csv", tmp_path / "csv"]):
        rc, err = _cli(capsys, *cmd)
        assert rc == 2 and len(err) == 1, (cmd, err)
        assert "key " in err[0] or "manifest states" in err[0] or "changed after" in err[0], err


def test_an_edit_that_keeps_to_the_schema_is_caught_by_the_manifest_checksum(base_run, tmp_path):
    run = _edit(base_run, tmp_path, lambda d: d["verification"].__setitem__("lstm", 1e-9), reseal=False)
    with pytest.raises(RunStoreError, match="changed after gatelens wrote it"):
        open_run(run)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=3), value=JSON, drop=st.booleans(), reseal=st.booleans())
def test_generated_manifests_give_a_correct_run_or_exit_2_never_1(
    base_run, tmp_path_factory, capsys, path, value, drop, reseal
):
    """Any change at any place of the manifest: export exits 0 with the run's true data, or 2 in one line."""
    tmp = tmp_path_factory.mktemp("gen")

    def mutate(d):
        node = d
        for i, k in enumerate(path):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                return
            key = keys[k % len(keys)]
            if i == len(path) - 1 or not isinstance(node[key], (dict, list)) or not node[key]:
                if drop:
                    del node[key]
                else:
                    node[key] = value
                return
            node = node[key]

    run = _edit(base_run, tmp, mutate, reseal)
    rc, err = _cli(capsys, "export", run, "--csv", tmp / "csv")
    assert rc in (0, 2), err
    if rc == 2:
        assert len(err) == 1
    else:  # accepted: it must read as the run it is, value for value
        got = read_csv(tmp / "csv" / "activations.csv").drop(columns="layer")
        ref = _reference_export(base_run, tmp_path_factory).drop(columns="layer")
        assert got.equals(ref)


_REF = {}


def _reference_export(run, factory):
    if "ref" not in _REF:
        from gatelens.analysis.export import export_csvs

        d = factory.mktemp("ref")
        export_csvs(open_run(run), d)
        _REF["ref"] = read_csv(d / "activations.csv")
    return _REF["ref"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.text(min_size=0, max_size=300).filter(lambda s: "/" not in s), min_size=1, max_size=3,
                      unique=True))  # fmt: skip
def test_generated_layer_names_store_and_read_back(tmp_path_factory, names):
    out = tmp_path_factory.mktemp("names") / "run"
    infos = [LayerInfo(name=n, cell_type="gru", units=1, input_dim=1) for n in names]
    try:
        _synthetic_run(out, infos)
    except ValueError as e:  # only names that collide as store keys (impossible for distinct names)
        pytest.fail(f"refused {names!r}: {e}")
    trace = open_run(out)
    assert trace.layers == names
    for p in out.rglob("*"):  # every path stays inside the run, short, and plain
        rel = p.relative_to(out)
        assert all(len(part.encode()) <= 120 for part in rel.parts), rel


# --- 5. clean recovery: a kill at every phase of the writer ----------------------------------------------------

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from gatelens.analysis import store
    from gatelens.analysis.trace import LayerInfo
    phase, nth = sys.argv[2], int(sys.argv[3])
    seen = {}
    def die(name):
        seen[name] = seen.get(name, 0) + 1
        if name == phase and seen[name] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    store._phase = die
    info = LayerInfo(name="lstm", cell_type="lstm", units=3, input_dim=2)
    n, t = 40, 5
    rng = np.random.default_rng(int(sys.argv[4]))
    with store.RunWriter(sys.argv[1], [info], n_sequences=n, n_steps=t, chunk_sequences=8) as w:
        for s in range(0, n, 8):
            b = {k: rng.normal(size=(8, t, 3)).astype(np.float32) for k in info.signals}
            b["mask"] = np.ones((8, t), bool)
            b["input"] = rng.normal(size=(8, t, 2)).astype(np.float32)
            w.write_batch(s, {"lstm": b})
        w.finish(verification={"lstm": 0.0})
    """
)
PHASES = [
    ("partial-created", 1),
    ("batch-written", 3),
    ("manifest-written", 1),
    ("old-moved", 1),
    ("new-moved", 1),
    ("old-trashed", 1),
    ("removing", 20),
]


@pytest.mark.parametrize("phase,nth", PHASES, ids=[p for p, _ in PHASES])
def test_a_kill_at_every_phase_then_a_new_writer_leaves_one_verified_run(tmp_path, phase, nth):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first = subprocess.run([sys.executable, str(script), str(out), "none", "0", "1"], env=env, capture_output=True)
    assert first.returncode == 0, first.stderr[-2000:]
    previous = (out / "manifest.json").read_bytes()
    killed = subprocess.run([sys.executable, str(script), str(out), phase, str(nth), "2"], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    if out.exists():  # the old run or the new one, complete either way
        open_run(out)
    # the next writer (here the same script, to the end) tidies up: no hidden directory, one verified run
    again = subprocess.run([sys.executable, str(script), str(out), "none", "0", "3"], env=env, capture_output=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killer.py", "run"]
    open_run(out)
    assert (out / "manifest.json").read_bytes() != previous


def test_recovery_restores_a_moved_aside_run_only_when_every_checksum_verifies(tmp_path):
    good = _synthetic_run(tmp_path / "run")
    os.replace(good, tmp_path / ".run.old-000000000001")  # killed between the two renames
    half = _synthetic_run(tmp_path / "other")
    chunk = next(p for p in half.rglob("*") if p.is_file() and "/c/" in p.as_posix())
    chunk.unlink()  # a run half deleted
    os.replace(half, tmp_path / ".run.old-000000000002")
    os.utime(tmp_path / ".run.old-000000000002")  # the newest: tried first, and refused
    RunWriter(tmp_path / "run", [INFO], n_sequences=1, n_steps=1).abort()
    assert open_run(tmp_path / "run").n_sequences == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_live_writers_partial_directory_is_left_alone(tmp_path):
    a = RunWriter(tmp_path / "run", [INFO], n_sequences=1, n_steps=1)
    b = RunWriter(tmp_path / "run", [INFO], n_sequences=1, n_steps=1)  # recovers, but a is alive
    assert a.tmp.is_dir() and b.tmp.is_dir()
    a.abort()
    b.abort()
    assert list(tmp_path.iterdir()) == []


# --- issue 13: chunks sized so the last chunk's padding is bounded ---------------------------------------------


def test_300_sequences_at_batch_256_take_at_most_1_25x_their_bytes(tmp_path):
    info = LayerInfo(name="lstm", cell_type="lstm", units=4, input_dim=2)
    n, t = 300, 3
    rng = np.random.default_rng(0)
    with RunWriter(tmp_path / "run", [info], n_sequences=n, n_steps=t, chunk_sequences=256) as w:
        for s in (0, 256):
            k = min(256, n - s)
            b = {x: rng.normal(size=(k, t, 4)).astype(np.float32) for x in info.signals}
            b["mask"] = np.ones((k, t), bool)
            b["input"] = rng.normal(size=(k, t, 2)).astype(np.float32)
            w.write_batch(s, {"lstm": b})
        w.finish(verification={"lstm": 0.0})
    data = n * t * (4 * 4 * len(info.signals) + 1 + 4 * 2)
    chunks = [p for p in (tmp_path / "run" / "layers").rglob("*") if p.is_file() and "/c/" in p.as_posix()]
    stored = sum(p.stat().st_size for p in chunks)
    assert data <= stored <= 1.25 * data, (stored, data)
    np.testing.assert_array_equal(open_run(tmp_path / "run")["lstm"].mask[...], np.ones((n, t), bool))


def test_manifest_checksum_is_of_the_canonical_content(base_run):
    doc = json.loads((base_run / "manifest.json").read_text())
    got = doc.pop("manifest_sha256")
    assert got == hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --- 4. bounded reads: data bombs, small on disk, refused in one line with exit 2 -------------------------------

PEAK = textwrap.dedent(
    """
    import resource, subprocess, sys
    rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=open(sys.argv[0] + ".err", "wb"))
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    sys.exit(rc)
    """
)


def _peak(tmp_path, *args):
    """(exit code, stderr lines, peak RSS in bytes of the largest process of the gatelens process tree)."""
    script = tmp_path / "peak.py"
    script.write_text(PEAK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, str(script), sys.executable, "-m", "gatelens", *map(str, args)],
        capture_output=True,
        env=env,
    )
    err = [ln for ln in (tmp_path / "peak.py.err").read_text().splitlines() if ln.startswith("gatelens")]
    return proc.returncode, err, int(proc.stdout.split()[-1])


def _npz_bomb(path, nbytes=1_200_000_000):
    import zipfile

    rows = nbytes // (100 * 10 * 4)
    header = np.lib.format.header_data_from_array_1_0(np.zeros((0, 100, 10), np.float32))
    header["shape"] = (rows, 100, 10)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            block = bytes(64 << 20)
            left = rows * 100 * 10 * 4
            while left:
                f.write(block[: min(left, len(block))])
                left -= min(left, len(block))


BOMBS = {
    "npz deflate bomb": ("bomb.npz", _npz_bomb, "inflates"),
    "50M-column line": ("line.csv", lambda p: p.write_bytes(b"0," * 50_000_000 + b"0\n"), "columns"),
    "1M columns": (
        "wide.csv",
        lambda p: p.write_bytes(
            ",".join(f"c{i}" for i in range(10**6)).encode() + b"\n" + b"0," * (10**6 - 1) + b"0\n"
        ),
        "columns",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("bomb", list(BOMBS))
def test_data_bombs_are_refused_with_exit_2_under_1_gb(files, tmp_path, bomb):
    name, build, needle = BOMBS[bomb]
    build(tmp_path / name)
    assert (tmp_path / name).stat().st_size < 120 << 20  # small on disk
    rc, err, peak = _peak(tmp_path, "extract", files / "m.keras", tmp_path / name, "--out", tmp_path / "run")
    assert rc == 2 and len(err) == 1 and needle in err[0] and "GATELENS_MAX_" in err[0], err
    assert peak < 1 << 30, peak
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_5000_column_features_csv_is_refused_with_exit_2_under_1_gb(tmp_path, capsys):
    m = keras.Sequential([keras.Input((10, 1)), L.LSTM(2, return_sequences=True, name="lstm")])
    m.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(4, 10, 1)).astype(np.float32))
    assert _cli(capsys, "extract", tmp_path / "m.keras", tmp_path / "x.npy", "--out", tmp_path / "run")[0] == 0
    cols = [f"f{i}" for i in range(5000)]
    lines = ["sequence,step," + ",".join(cols)]
    lines += [f"{s},{t}," + ",".join(["1"] * 5000) for s in range(4) for t in range(10)]
    (tmp_path / "f.csv").write_text("\n".join(lines) + "\n")
    rc, err, peak = _peak(tmp_path, "analyze", tmp_path / "run", "--features", tmp_path / "f.csv")
    assert rc == 2 and len(err) == 1 and "GATELENS_MAX_FEATURE_COLUMNS" in err[0], err
    assert peak < 1 << 30, peak


def test_limits_are_overridable(tmp_path, monkeypatch):
    from gatelens.errors import DataError
    from gatelens.models.data import load_data
    from gatelens.models.spec import InputSpec

    (tmp_path / "s.csv").write_text("a,b,c\n1,2,3\n4,5,6\n")
    monkeypatch.setenv("GATELENS_MAX_COLUMNS", "2")
    with pytest.raises(DataError, match="3 columns, more than the limit of 2"):
        load_data(tmp_path / "s.csv", InputSpec(n_steps=2, n_features=3))
    monkeypatch.setenv("GATELENS_MAX_COLUMNS", "3")
    assert load_data(tmp_path / "s.csv", InputSpec(n_steps=2, n_features=3)).x.shape == (1, 2, 3)
