"""Every error class maps to its exit code with exactly one line on stderr, raised from inside a real command.

Table-driven over every class of gatelens.errors: the class is raised from inside ``gatelens analyze`` (its
``analyze_run`` replaced, the CLI mapping is what is tested) with a two-line message; then the same mapping
on real bad input, where analysis/ raises on its own (a run whose steps are all padding, a bad features file,
a missing run).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import gatelens.errors as errors
from gatelens.analysis import pipeline
from gatelens.analysis.store import RunWriter
from gatelens.analysis.trace import LayerInfo
from gatelens.models import cli

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
