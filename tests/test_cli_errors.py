"""Every error class maps to its exit code with exactly one line on stderr, raised from inside a real command.

Table-driven over every class of gatelens.errors: the class is raised from inside ``gatelens analyze`` (its
``analyze_run`` replaced, the CLI mapping is what is tested) with a two-line message; then the same mapping
on real bad input, where analysis/ raises on its own (a run whose steps are all padding, a bad features file,
a missing run).
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

import gatelens.errors as errors
from gatelens.analysis import pipeline
from gatelens.analysis.store import RunWriter
from gatelens.analysis.trace import LayerInfo
from gatelens.cli import main as cli  # the module

CLASSES = sorted(
    (c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.GatelensError)),
    key=lambda c: c.__name__,
)
EXPECTED = {
    "GatelensError": 1, "GatelensInputError": 2, "UsageError": 2, "DataError": 2, "FeatureError": 2,
    "RunStoreError": 2, "ModelFormatError": 2, "UnsafeModelError": 3, "UnsupportedLayerError": 3,
    "VerificationError": 1, "CompatError": 1,
}  # fmt: skip


def _run(capsys, *argv):
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err


def test_the_table_covers_every_class():
    assert sorted(c.__name__ for c in CLASSES) == sorted(EXPECTED)
    for c in CLASSES:
        assert c.exit_code == EXPECTED[c.__name__]
        assert errors.is_user_error(c("x")) == (EXPECTED[c.__name__] in (2, 3))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_each_class_raised_inside_a_command(cls, monkeypatch, capsys, tmp_path):
    def fail(*args, **kwargs):
        raise cls(f"{tmp_path}/run: step 3: the thing that was wrong\n  and a second line")

    monkeypatch.setattr(pipeline, "analyze_run", fail)
    code, err = _run(capsys, "analyze", str(tmp_path / "run"))
    assert code == cls.exit_code == EXPECTED[cls.__name__]
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "the thing that was wrong and a second line" in err
    assert ("internal error" in err) == (code == 1 and cls is not errors.VerificationError)
    assert "Traceback" not in err


def _write_run(path, mask_value=True):
    info = LayerInfo(name="lstm", cell_type="lstm", units=2, input_dim=1)
    with RunWriter(path, [info], n_sequences=2, n_steps=3, chunk_sequences=2) as w:
        batch = {s: np.full((2, 3, 2), 0.5, np.float32) for s in info.signals}
        batch["mask"] = np.full((2, 3), mask_value, bool)
        batch["input"] = np.zeros((2, 3, 1), np.float32)
        w.write_batch(0, {"lstm": batch})
        w.finish(verification={"lstm": 0.0})
    return path


@pytest.mark.parametrize(
    "case, cls",
    [("all padding", errors.DataError), ("bad features", errors.FeatureError), ("no run", errors.RunStoreError)],
)
def test_real_bad_input_from_the_analysis_gives_exit_2_and_one_line(case, cls, capsys, tmp_path):
    if case == "all padding":  # raised by analysis.stats: "every step of every sequence is padding"
        argv, where = ["analyze", str(_write_run(tmp_path / "run", mask_value=False))], "padding"
    elif case == "bad features":  # raised by analysis.features while parsing the user's file
        (tmp_path / "f.csv").write_text("sequence,step,phase\n0,0,1\n0,9,2\n")
        argv, where = ["analyze", str(_write_run(tmp_path / "run")), "--features", str(tmp_path / "f.csv")], "f.csv"
    else:
        argv, where = ["export", str(tmp_path / "nothing"), "--csv", str(tmp_path / "out")], "nothing"
    with pytest.raises(cls):  # the library raises that class itself ...
        _raise_directly(argv)
    code, err = _run(capsys, *argv)  # ... and the CLI maps it
    assert code == 2 and err.count("\n") == 1 and where in err and "internal error" not in err, err


def _raise_directly(argv):
    from gatelens.analysis.pipeline import analyze_run
    from gatelens.analysis.store import open_run

    if argv[0] == "analyze":
        features = argv[3] if len(argv) > 2 else None
        analyze_run(argv[1], features=features, save=False)
    else:
        open_run(argv[1])


def test_an_internal_error_is_exit_1_with_one_line(monkeypatch, capsys, tmp_path):
    def fail(*args, **kwargs):
        raise KeyError("layers")

    monkeypatch.setattr(pipeline, "analyze_run", fail)
    code, err = _run(capsys, "analyze", str(tmp_path))
    assert code == 1 and err.count("\n") == 1 and err.startswith("gatelens: internal error: KeyError")


def _user_file(path, text="a user's own notes\n"):
    path.write_text(text)
    return path, text


@pytest.mark.parametrize("command", ["search", "windows", "train --emit-features", "train --emit-data", "train --out"])
def test_an_output_path_holding_a_users_file_is_refused_before_any_work(command, capsys, tmp_path):
    """Exit 2, one line naming the option and the path, the user's file byte for byte as it was and nothing written
    beside it; then a path gatelens wrote itself is replaced (the same command run again)."""
    series = tmp_path / "series.csv"
    series.write_text("value\n" + "".join(f"{v}\n" for v in range(12)))
    run = str(_write_run(tmp_path / "run"))
    name = {"train --emit-data": "mine.npy", "train --out": "mine.keras"}.get(command, "mine.csv")
    mine, text = _user_file(tmp_path / name)

    def argv(out):
        return {
            "search": ["search", run, "--where", "forget_gate of lstm:0 above 0.1", "--out", out],
            "windows": ["windows", str(series), "--window", "4", "--out", out],
            "train --emit-features": ["train", "task", "recall", "--no-train", "--emit-features", out],
            "train --emit-data": ["train", "task", "recall", "--no-train", "--emit-data", out],
            "train --out": ["train", "task", "recall", "--out", out, "--epochs", "1", "--units", "2"],
        }[command]

    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = _run(capsys, *argv(str(mine)))
    assert code == 2 and err.count("\n") == 1 and str(mine) in err and "not replacing it" in err, err
    assert command.split()[-1] in err, err  # the option (or the command) named
    assert mine.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing else written (no card, no temporary)
    if command in ("search", "windows", "train --emit-features"):  # cheap to run twice: its own file is replaced
        own = str(tmp_path / "own.csv")
        assert _run(capsys, *argv(own))[0] == 0
        assert _run(capsys, *argv(own))[0] == 0, capsys.readouterr()


def test_a_directory_at_a_file_output_is_named_as_one(capsys, tmp_path):
    (tmp_path / "adir").mkdir()
    code, err = _run(capsys, "search", str(_write_run(tmp_path / "run")), "--where", "forget_gate of lstm:0 above 0.1",
                     "--out", str(tmp_path / "adir"))  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "is a directory" in err and "partial" not in err, err


@pytest.mark.parametrize(
    "argv, option",
    [
        (["extract", "M.keras", "X.npy", "--out", "RUN", "--batch-size", "0"], "--batch-size"),
        (["extract", "M.keras", "X.npy", "--out", "RUN", "--batch-size", "-4"], "--batch-size"),
        (["extract", "M.keras", "X.npy", "--out", "RUN", "--batch-size", "100000"], "--batch-size"),
        (["extract", "M.keras", "X.npy", "--out", "RUN", "--sample-size", "10000000000"], "--sample-size"),
        (["extract", "M.keras", "X.npy", "--out", "RUN", "--tolerance", "-1"], "--tolerance"),
        (["verify", "M.keras", "X.npy", "--tolerance", "nan"], "--tolerance"),
        (["verify", "M.keras", "X.npy", "--batch-size", "0"], "--batch-size"),
        (["intervene", "M.keras", "X.npy", "--do", "lstm:0:forget_gate=1", "--out", "IV", "--seed", "-1"], "--seed"),
        (
            ["intervene", "M.keras", "X.npy", "--do", "lstm:0:forget_gate=1", "--out", "IV", "--bootstrap", "1e12"],
            "--bootstrap",
        ),  # fmt: skip
        (["sweep", "M.keras", "X.npy", "--layer", "lstm", "--out", "IV", "--bootstrap", "1000000000"], "--bootstrap"),
        (["dashboard", "--port", "99999"], "--port"),
    ],
)
def test_an_option_out_of_its_bounds_is_refused_before_anything_runs(argv, option, capsys, tmp_path, monkeypatch):
    """Exit 2, one line naming the option, before the model is read: a run already at --out stays as it was."""
    monkeypatch.chdir(tmp_path)
    run = _write_run(tmp_path / "RUN")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    code, err = _run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and option in err and "expected" in err, err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
    assert not (tmp_path / "IV").exists()


def test_the_clis_sample_size_bound_is_the_extractors():
    import importlib

    from gatelens.models import argtypes

    extract = importlib.import_module("gatelens.models.extract")

    assert argtypes.MAX_SAMPLE_SIZE == extract.MAX_SAMPLE_SIZE
    assert argtypes.MAX_BATCH_SIZE == extract.MAX_BATCH_SIZE
    with pytest.raises(ValueError, match="sample_size must be a whole number from 1 to 4096"):
        extract._check_verify("cell", extract.MAX_SAMPLE_SIZE + 1)


def test_a_busy_port_is_one_line_and_exit_2(capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, err = _run(capsys, "dashboard", "--port", str(port), "--address", "127.0.0.1")
    assert code == 2 and err.count("\n") == 1 and f"--port {port}" in err and "cannot listen" in err, err


def test_export_of_sequences_the_run_does_not_have_is_refused(capsys, tmp_path):
    run = str(_write_run(tmp_path / "run"))  # 2 sequences
    code, err = _run(capsys, "export", run, "--csv", str(tmp_path / "out"), "--sequences", "5:9")
    assert code == 2 and err.count("\n") == 1 and "--sequences 5:9" in err and "has 2 sequences" in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    code, err = _run(capsys, "export", run, "--csv", str(tmp_path / "out"), "--sequences", "1:9")  # overlaps: fine
    assert code == 0, err


@pytest.mark.parametrize("value", ["-1:3", ":-3", "-2"])
def test_a_negative_sequence_range_is_explained_not_taken_for_an_option(value, capsys, tmp_path):
    run = str(_write_run(tmp_path / "run"))
    code, err = _run(capsys, "export", run, "--sequences", value, "--csv", str(tmp_path / "out"))
    assert code == 2 and err == f"gatelens: --sequences {value!r}: expected 0 <= A < B\n", err
    assert not (tmp_path / "out").exists()


def test_version_prints_the_package_version_and_exits_0(capsys):
    import gatelens

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"gatelens {gatelens.__version__}\n"


def test_an_os_error_of_the_users_environment_is_one_line_and_exit_2(capsys, tmp_path):
    # a file name longer than the file system allows (ENAMETOOLONG: an OSError, not a PermissionError): it was an
    # "internal error" (exit 1); read-only file systems (EROFS) and full disks (ENOSPC) take the same path
    data = tmp_path / "series.csv"
    data.write_text("t,v\n" + "".join(f"{i},{i * 0.5}\n" for i in range(30)))
    out = tmp_path / ("w" * 300 + ".csv")
    code, err = _run(capsys, "windows", str(data), "--window", "4", "--out", str(out))
    assert code == 2 and err == f"gatelens: {out}: File name too long\n", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series.csv"]  # nothing left behind


def test_a_library_usage_error_is_prefixed_like_every_other_line(capsys, tmp_path):
    # "metric 'nope': expected one of ..." and "targets 'next_token' need a text model" came without "gatelens: "
    code, err = _run(capsys, "search", str(tmp_path / "no-run"), "--where", "x", "--out", str(tmp_path / "m.csv"))
    assert code == 2 and err.startswith("gatelens: ") and err.count("\n") == 1, err
    code, err = _run(capsys, "export")  # argparse's own line already names the command
    assert (
        code == 2 and err.startswith("gatelens export: the following arguments are required") and err.count("\n") == 1
    )


@pytest.mark.parametrize(
    "cut, words",
    [(0, "not a .npy file (no NumPy magic string at its start)"), (-4, "truncated: the header declares shape (4,)")],
)
def test_an_empty_or_truncated_targets_file_is_a_data_error(tmp_path, cut, words):
    from gatelens.cli.intervene import load_targets

    path = tmp_path / "t.npy"
    np.save(path, np.arange(4, dtype=np.float32))
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(errors.DataError, match=re.escape(words)):  # an empty one was an EOFError (exit 1)
        load_targets(str(path), 4, 3)
    empty_npz = tmp_path / "t.npz"
    empty_npz.write_bytes(b"")
    with pytest.raises(errors.DataError, match="t.npz: not a readable .npz archive: File is not a zip file"):
        load_targets(str(empty_npz), 4, 3)
    np.savez(tmp_path / "x_only.npz", x=np.zeros(4))  # read by the data loader's reader, under its own keys
    with pytest.raises(
        errors.DataError, match=r"x_only.npz: no array 'y' or 'targets' in the .npz; it holds 1 key\(s\): 'x'"
    ):
        load_targets(str(tmp_path / "x_only.npz"), 4, 3)
    np.savez(tmp_path / "t2.npz", targets=np.arange(4.0))
    assert load_targets(str(tmp_path / "t2.npz"), 4, 3).tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "option, value, words",
    [
        ("--scheduler", "nonsense", "expected a scheduler address [PROTOCOL://]HOST:PORT such as tcp://host:8786"),
        ("--scheduler", "tcp://host:notaport", "got 'tcp://host:notaport'"),
        ("--scheduler", "tcp://host:70000", "got 'tcp://host:70000'"),
        ("--workers", "100000", "expected a whole number from 1 to 256, got '100000'"),
    ],
)
def test_cluster_options_are_bounded(capsys, tmp_path, option, value, words):
    # a malformed address was a ValueError from distributed (exit 1); --workers 100000 started processes for minutes
    code, err = _run(capsys, "analyze", str(tmp_path), option, value)
    assert code == 2 and f"argument {option}: " in err and words in err and err.count("\n") == 1, err


def test_an_out_path_under_a_file_is_one_line(capsys, tmp_path):
    data = tmp_path / "series.csv"
    data.write_text("t,v\n" + "".join(f"{i},{i * 0.5}\n" for i in range(30)))
    (tmp_path / "afile").write_text("mine")
    code, err = _run(capsys, "windows", str(data), "--window", "4", "--out", str(tmp_path / "afile" / "w.csv"))
    assert (
        code == 2
        and err == f"gatelens: {tmp_path / 'afile'}: is a file, not a folder: nothing can be written inside it\n"
    )
    assert (tmp_path / "afile").read_text() == "mine"


def test_windows_of_a_text_is_refused_for_what_it_is(capsys, tmp_path):
    # a .txt (which the help offered) was refused as data "the model takes float (N, T, F)" of a model that is not there
    text = tmp_path / "code.txt"
    text.write_text("def f(x):\n    return x\n" * 20)
    code, err = _run(capsys, "windows", str(text), "--window", "10")
    assert code == 2 and err.count("\n") == 1 and "model" not in err, err
    assert err.startswith(f"gatelens windows: {text} is not a .csv series; windows maps the rows of a CSV"), err


def test_a_path_of_the_wrong_kind_is_named_as_such(capsys, tmp_path):
    # a file given as the run, a folder as the targets: both were reported as not existing
    (tmp_path / "a.txt").write_text("x")
    code, err = _run(capsys, "analyze", str(tmp_path / "a.txt"))
    assert code == 2 and err == f"gatelens: {tmp_path / 'a.txt'}: a file, not a run directory\n", err
    from gatelens.cli.intervene import load_targets

    with pytest.raises(errors.DataError, match="a folder, not a targets file"):
        load_targets(str(tmp_path), 4, 3)
