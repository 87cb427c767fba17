"""``gatelens intervene`` and ``gatelens sweep`` through subprocess, on real .keras files saved by the test."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest
from test_cli import gatelens

from gatelens.analysis.effects import bootstrap_ci, per_sequence, step_effects
from gatelens.models import load_model
from gatelens.models.intervene import intervene, sweep

L = keras.layers
VOCAB = ["<pad>", "[UNK]", *"ab()"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_iv")
    keras.utils.set_random_seed(1)
    num = keras.Sequential([keras.Input((10, 2)), L.LSTM(4, return_sequences=True, name="lstm"), L.Dense(1)])
    num.save(d / "num.keras")
    x = np.random.default_rng(0).normal(size=(6, 10, 2)).astype(np.float32)
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", np.random.default_rng(1).normal(size=(6, 10)).astype(np.float32))
    txt = keras.Sequential(
        [
            keras.Input((8,), dtype="int32"),
            L.Embedding(len(VOCAB), 4),
            L.GRU(5, return_sequences=True, name="gru"),
            L.Dense(len(VOCAB), activation="softmax"),
        ]
    )
    txt.save(d / "text.keras")
    (d / "text.vocab.json").write_text(json.dumps(VOCAB))
    (d / "code.txt").write_text("ab(a)b(ab)a" * 4)
    return d, x


def test_intervene_writes_what_the_python_api_computes(files, tmp_path):
    d, x = files
    out = tmp_path / "iv"
    r = gatelens(
        "intervene", d / "num.keras", d / "x.npy", "--do", "lstm:1:forget_gate=1@2:8", "--do",
        "lstm:all:output_gate=0", "--targets", d / "y.npy", "--out", out, "--bootstrap", "300",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = pd.read_csv(out / "interventions.csv")
    steps = pd.read_csv(out / "intervention_steps.csv")
    assert list(summary["metric"]) == ["mse", "mse"]
    model = load_model(d / "num.keras")
    y = np.load(d / "y.npy")
    for label in ("lstm:1:forget_gate=1@2:8", "lstm:all:output_gate=0"):
        res = intervene(model, x, label)
        e = step_effects(res.original, res.intervened, "mse", y)
        row = summary.set_index("intervention").loc[label]
        mean, lo, hi = bootstrap_ci(per_sequence(e["effect"]), n_boot=300)
        assert row["effect"] == pytest.approx(mean, abs=1e-9)
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(lo, abs=1e-9), pytest.approx(hi, abs=1e-9))
        s = steps[steps["intervention"] == label].sort_values(["sequence", "step"])
        assert len(s) == x.shape[0] * x.shape[1]
        np.testing.assert_allclose(s["effect"].to_numpy(), e["effect"].ravel(), atol=1e-9)
    assert summary.set_index("intervention").loc["lstm:1:forget_gate=1@2:8", "steps"] == "2:8"


def test_steer_and_a_number_with_an_exponent_parse_on_the_command_line(files, tmp_path):
    """'+=' (steer) and '1e+0' hold a '+' that joins nothing: one --do of two interventions, '+' joining them, gives
    what the Python API gives for the two applied together."""
    d, x = files
    out = tmp_path / "steer"
    do = "lstm:1:hidden_state+=0.5+lstm:0:forget_gate=1e+0@2:8"
    r = gatelens("intervene", d / "num.keras", d / "x.npy", "--do", do, "--targets", d / "y.npy", "--out", out)
    assert r.returncode == 0, r.stderr
    summary = pd.read_csv(out / "interventions.csv")
    assert summary["intervention"].tolist() == ["lstm:1:hidden_state+=0.5+lstm:0:forget_gate=1@2:8"]
    res = intervene(load_model(d / "num.keras"), x, ["lstm:1:hidden_state+=0.5", "lstm:0:forget_gate=1@2:8"])
    e = step_effects(res.original, res.intervened, "mse", np.load(d / "y.npy"))
    assert summary["effect"].iloc[0] == pytest.approx(float(np.mean(per_sequence(e["effect"]))), abs=1e-9)
    assert summary["effect"].iloc[0] != 0


def test_intervene_on_a_text_model_with_next_token_loss(files, tmp_path):
    d, _ = files
    r = gatelens(
        "intervene", d / "text.keras", d / "code.txt", "--do", "gru:2:update_gate=0", "--targets", "next-token",
        "--out", tmp_path / "t", "--no-steps",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = pd.read_csv(tmp_path / "t" / "interventions.csv")
    assert set(s["metric"]) == {"loss", "accuracy", "prob"}
    assert not (tmp_path / "t" / "intervention_steps.csv").exists()
    assert s["original"].notna().all() and (s.loc[s.metric == "loss", "original"] > 0).all()


def test_sweep_csv_ranks_like_the_python_api(files, tmp_path):
    d, x = files
    r = gatelens("sweep", d / "num.keras", d / "x.npy", "--layer", "lstm", "--op", "mean", "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(tmp_path / "s" / "sweep.csv")
    ref = sweep(load_model(d / "num.keras"), x, "lstm", op="mean")
    assert list(df.columns[:7]) == ["layer", "unit", "signal", "op", "value", "steps", "metric"]
    assert df["unit"].tolist() == ref["unit"].tolist() and df["rank"].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(df["effect"], ref["effect"], atol=1e-9)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--do", "lstm_x:0:forget_gate=1"], "layer 'lstm_x'"),
        (["--do", "lstm:4:forget_gate=1"], "unit 4: out of range for layer 'lstm' (units 0..3)"),
        (["--do", "lstm:0:reset_gate=1"], "signal 'reset_gate'"),
        (["--do", "lstm:0:forget_gate=1@5:11"], "steps '5:11' lie outside the sequence (steps 0..9"),
        (["--do", "lstm:0:forget_gate"], "--do 'lstm:0:forget_gate': expected LAYER:UNITS:SIGNAL=VALUE"),
        (["--do", "lstm:0:forget_gate=1", "--targets", "nope.npy"], "nope.npy: no such targets file"),
        # audit: a reversed range was "outside the sequence"; a trailing '+' quoted an empty piece ("--do ''")
        (["--do", "lstm:0:forget_gate=1@8:3"], "steps '8:3': an empty range (a range is start:stop, start < stop)"),
        (["--do", "lstm:0:forget_gate=1+"], "--do 'lstm:0:forget_gate=1+': an empty intervention after or before"),
    ],
)
def test_bad_input_exit_2_with_one_line_naming_the_field(files, tmp_path, args, needle):
    d, _ = files
    r = gatelens("intervene", d / "num.keras", d / "x.npy", *args, "--out", tmp_path / "bad")
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("I0000", "E0000", "WARNING"))]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "bad" / "interventions.csv").exists()


def test_sweep_refuses_to_replace_a_file_it_did_not_write(files, tmp_path):
    d, _ = files
    out = tmp_path / "mine"
    out.mkdir()
    (out / "sweep.csv").write_text("my,own,data\n")
    r = gatelens("sweep", d / "num.keras", d / "x.npy", "--layer", "lstm", "--out", out)
    assert r.returncode == 2 and "not written by gatelens" in r.stderr
    assert (out / "sweep.csv").read_text() == "my,own,data\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("sequence,target\n", "no rows after the header"),
        ("sequence,target\n0,0.5\n1,0.7\n0,0.2\n", "line 2 and line 4: sequence 0 given twice"),
        ("sequence,step,target\n0,1,1\n1,1,0\n1,1,1\n", "line 3 and line 4: sequence 1, step 1 given twice"),
        ("sequence,step,target\n0,70,0.5\n", "line 2: step 70 is not in 0..9"),
    ],
)
def test_a_targets_csv_without_one_target_per_key_is_refused_naming_the_lines(text, message, tmp_path):
    from gatelens.cli.intervene import load_targets
    from gatelens.errors import DataError

    path = tmp_path / "targets.csv"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        load_targets(str(path), 4, 10)
    assert str(e.value) == f"{path}: {message}" or str(e.value).startswith(f"{path}: {message}"), str(e.value)


def test_sweep_set_without_a_value_names_the_missing_option(files, tmp_path):
    d, _ = files
    r = gatelens("sweep", d / "num.keras", d / "x.npy", "--layer", "lstm", "--op", "set", "--out", tmp_path / "s")
    assert r.returncode == 2 and r.stderr == "gatelens sweep: --op set needs --value V (the value to set)\n", r.stderr
