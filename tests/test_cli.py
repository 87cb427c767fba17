"""The command line through subprocess, on real .keras files saved by the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest

L = keras.layers
VOCAB = ["<pad>", "[UNK]", *list("abc ()'\"\n")]
NO_OOV = ["<pad>", *list("abc ()'\"\n")]


def gatelens(*args, cwd=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "gatelens", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    # a numeric model: Masking -> LSTM -> GRU
    num = keras.Sequential(
        [keras.Input((12, 3)), L.Masking(0.0), L.LSTM(5, return_sequences=True, name="lstm"), L.GRU(4, name="gru")]
    )
    for layer in num.layers:
        if isinstance(layer, L.RNN):
            layer.set_weights([w * 3 for w in layer.get_weights()])
    num.save(d / "num.keras")
    x = np.random.default_rng(0).normal(size=(7, 12, 3)).astype(np.float32)
    x[0, 9:] = 0  # padded tail
    np.save(d / "x.npy", x)
    # a char model with its vocabulary in a side-car file, and one without a vocabulary
    txt = keras.Sequential(
        [keras.Input((8,), dtype="int32"), L.Embedding(len(VOCAB), 4), L.LSTM(6, return_sequences=True, name="lstm")]
    )
    txt.save(d / "text.keras")
    (d / "text.vocab.json").write_text(json.dumps(VOCAB))
    txt.save(d / "novocab.keras")
    strict = keras.Sequential(
        [keras.Input((8,), dtype="int32"), L.Embedding(len(NO_OOV), 4), L.LSTM(3, return_sequences=True)]
    )
    strict.save(d / "strict.keras")
    (d / "strict.vocab.json").write_text(json.dumps(NO_OOV))
    (d / "code.txt").write_text("abc (a 'b') c\nab (c) 'a' b\n" * 3)
    return d, num, x


def test_extract_analyze_export_roundtrip(files, tmp_path):
    d, model, x = files
    run = tmp_path / "run"
    r = gatelens("extract", d / "num.keras", d / "x.npy", "--out", run, "--batch-size", "3")
    assert r.returncode == 0, r.stderr
    assert "lstm" in r.stdout and "gru" in r.stdout
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["n_sequences"] == 7 and manifest["model"]["sha256"]
    assert all(v < 1e-5 for v in manifest["verification"].values())

    r = gatelens("analyze", run)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "csv"
    r = gatelens("export", run, "--csv", out)
    assert r.returncode == 0, r.stderr
    act = pd.read_csv(out / "activations.csv")
    # hidden_state in the CSV equals Keras's own output of the layer (independent sub-model)
    probe = keras.Model(model.inputs, model.get_layer("lstm").output)
    h = probe.predict(x, verbose=0)
    lstm = act[act["layer"] == "lstm"].sort_values(["sequence", "step", "unit"])
    expect = h[lstm["sequence"], lstm["step"], lstm["unit"]]
    np.testing.assert_allclose(lstm["hidden_state"].to_numpy(), expect, atol=1e-5)
    # the padded steps of sequence 0 are left out
    assert set(lstm.loc[lstm["sequence"] == 0, "step"]) == set(range(9))
    assert {"units.csv", "correlations.csv"} <= {p.name for p in out.iterdir()}


def test_commands_on_masked_models_leave_stderr_empty(files, tmp_path):
    """Keras's masked layers make TensorFlow log a C++ ERROR line ("oneDNN supports DT_BOOL only on platforms with
    AVX-512") on CPUs without AVX-512; the console script keeps stderr for gatelens's own one-line messages (unless
    the user set TF_CPP_MIN_LOG_LEVEL)."""
    d, _, _ = files
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    commands = [
        ["extract", d / "num.keras", d / "x.npy", "--out", tmp_path / "run"],
        ["extract", d / "text.keras", d / "code.txt", "--out", tmp_path / "text_run"],
        ["intervene", d / "num.keras", d / "x.npy", "--do", "lstm:0:forget_gate=0", "--bootstrap", "10",
         "--out", tmp_path / "iv"],
        # the numeric run's analysis: NumPy's "All-NaN slice" warnings of the cluster traits reached stderr
        ["analyze", tmp_path / "run"],
    ]  # fmt: skip
    for args in commands:
        r = subprocess.run(
            [sys.executable, "-m", "gatelens", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
        )
        assert r.returncode == 0, r.stderr
        assert r.stderr == "", (args[0], r.stderr)
        assert r.stdout.startswith(("wrote", "lstm:0:forget_gate=0", "analysed")), r.stdout


def test_extract_with_sampled_verification(files, tmp_path):
    d, model, x = files
    run = tmp_path / "run"
    r = gatelens("extract", d / "num.keras", d / "x.npy", "--out", run, "--verify", "sample", "--sample-size", "2")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["verify"] == "sample" and manifest["verify_sample_size"] == 2
    assert all(v < 1e-5 for v in manifest["verification"].values())
    # every sequence, not only the sample, equals Keras's own output (independent sub-model)
    from gatelens.analysis.store import open_run

    h = keras.Model(model.inputs, model.get_layer("lstm").output).predict(x, verbose=0)
    trace = open_run(run)
    m = np.asarray(trace["lstm"].mask)[..., None]
    np.testing.assert_allclose(np.where(m, trace["lstm"]["hidden_state"][...], 0), np.where(m, h, 0), atol=1e-5)

    r = gatelens("extract", d / "num.keras", d / "x.npy", "--out", run, "--verify", "sample", "--sample-size", "0")
    assert r.returncode == 2 and "--sample-size: expected a whole number from 1 to 4096, got '0'" in r.stderr


def test_text_model_uses_sidecar_vocabulary(files, tmp_path):
    d, _, _ = files
    r = gatelens("extract", d / "text.keras", d / "code.txt", "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["vocabulary"] == VOCAB


def test_verify_prints_error_per_layer(files):
    d, _, _ = files
    r = gatelens("verify", d / "num.keras", d / "x.npy")
    assert r.returncode == 0, r.stderr
    lines = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines()[1:]}
    assert set(lines) == {"lstm", "gru"}
    assert all(float(v[1]) < 1e-5 and v[2] == "ok" for v in lines.values())


def _write(path, content):
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


BAD_INPUTS = [
    ("num", "rank.npy", np.zeros((4, 12), np.float32), ["rank.npy", "(N, 12, 3)"]),
    ("num", "features.npy", np.zeros((4, 12, 5), np.float32), ["features.npy", "3"]),
    ("num", "cells.csv", "a,b,c\n1,2,3\n4,x,6\n" + "1,2,3\n" * 20, ["cells.csv", "row 3", "b"]),
    ("num", "nan.npy", np.where(np.eye(12, 3)[None] > 0, np.nan, 0).astype(np.float32), ["nan.npy", "NaN"]),
    ("num", "empty.csv", "", ["empty.csv", "empty"]),
    ("num", "zero.npy", np.zeros((3, 0, 3), np.float32), ["zero.npy"]),
    ("novocab", "code.txt", "abc\n" * 10, ["vocab"]),
    ("strict", "oov.txt", "abcxyz abc abc abc\n", ["oov.txt", "'x'"]),
]


@pytest.mark.parametrize("model, name, content, needles", BAD_INPUTS, ids=[b[1] for b in BAD_INPUTS])
def test_bad_input_exit_2_with_one_clear_line(files, tmp_path, model, name, content, needles):
    d, _, _ = files
    data = _write(tmp_path / name, content)
    r = gatelens("extract", d / f"{model}.keras", data, "--out", tmp_path / "run")
    assert r.returncode == 2, (r.returncode, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle.lower() in err.lower(), (needle, err)
    assert not (tmp_path / "run").exists()


def test_oov_tokens_map_to_unk_when_the_vocabulary_has_one(files, tmp_path):
    d, _, _ = files
    data = _write(tmp_path / "oov.txt", "abcxyz abc abc abc\n")
    r = gatelens("extract", d / "text.keras", data, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    from gatelens.analysis.store import open_run

    tokens = np.asarray(open_run(tmp_path / "run").tokens)
    unk = VOCAB.index("[UNK]")
    # the first window, "abcxyz a": x, y and z are not in the vocabulary and become [UNK]; the rest keep their ids
    assert tokens[0].tolist() == [VOCAB.index(ch) if ch in VOCAB else unk for ch in "abcxyz a"], tokens[0]
    assert (tokens == unk).sum() == 3, tokens


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["extract", "missing.keras", "x.npy", "--out", "r"], 2, "missing.keras"),
        (["extract", "x.npy", "x.npy", "--out", "r"], 2, "x.npy"),
        (["frobnicate"], 2, "invalid choice"),
        (["analyze", "no-such-run"], 2, "no-such-run"),
    ],
    ids=["missing_model", "not_a_model", "usage", "missing_run"],
)
def test_usage_and_file_errors(files, args, code, needle):
    d, _, _ = files
    r = gatelens(*args, cwd=d)
    assert r.returncode == code, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("delay", [0.6, 1.5])
def test_ctrl_c_at_start_up_is_one_line(files, tmp_path, delay):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while TensorFlow is imported: stderr is exactly
    "gatelens: interrupted" (the quiet import passed TensorFlow's start-up log lines on as if the import had failed)
    and nothing is left at --out."""
    import signal
    import time

    d, _, _ = files
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user runs it
    proc = subprocess.Popen(
        [sys.executable, "-m", "gatelens", "extract", str(d / "num.keras"), str(d / "x.npy"), "--out", str(tmp_path / "r")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (130, "gatelens: interrupted\n"), (proc.returncode, err, out)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_extract_keeps_previous_run(files, tmp_path):
    """A failing extraction (bad data after a good run) leaves the earlier complete run untouched."""
    d, _, _ = files
    run = tmp_path / "run"
    assert gatelens("extract", d / "num.keras", d / "x.npy", "--out", run).returncode == 0
    before = (run / "manifest.json").read_bytes()
    bad = _write(tmp_path / "bad.npy", np.zeros((2, 12, 4), np.float32))
    assert gatelens("extract", d / "num.keras", bad, "--out", run).returncode == 2
    assert (run / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run")] == []


def test_a_local_cluster_run_leaves_stderr_empty(files, tmp_path):
    """`--workers N`: Dask's scheduler and workers logged 34 INFO lines of their start and stop to stderr."""
    d, _, _ = files
    run = tmp_path / "run"
    assert gatelens("extract", d / "num.keras", d / "x.npy", "--out", run).returncode == 0
    r = gatelens("analyze", run, "--workers", "1")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert (run / "analysis" / "index.json").is_file()
