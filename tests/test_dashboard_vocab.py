"""The dashboard's unknown-token summary: the numbers `gatelens extract` prints and records, for an upload.

A text with planted characters outside the tiny character model's vocabulary is uploaded (AppTest, real
model, real extraction); the Data page's counts are checked against a hand count of the planted characters
and against the manifest and summary line of `gatelens extract` run on the same file (a subprocess).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import build_tiny_demos
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "dashboards" / "app.py")
TIMEOUT = 240

# every character of the demo vocabulary but the planted ones: '\t' x6, '_' x3, '~' x2, '@' x1
TEXT = "def f(x):\t\treturn x_1\n" * 3 + "~~@ (x + 1)\n"
PLANTED = {"\t": 6, "_": 3, "~": 2, "@": 1}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("demos")
    paths = build_tiny_demos(d)
    old = os.environ.get("GATELENS_DEMO_DIR")
    os.environ["GATELENS_DEMO_DIR"] = str(d)
    yield paths
    if old is None:
        os.environ.pop("GATELENS_DEMO_DIR", None)
    else:
        os.environ["GATELENS_DEMO_DIR"] = old


def _no_exception(at: AppTest) -> None:
    assert not at.exception, "\n\n".join(f"{e.value}\n{''.join(e.stack_trace)}" for e in at.exception)
    assert not at.error, [e.value for e in at.error]


def test_data_page_shows_the_unknown_tokens_the_cli_records(demo_dir, tmp_path):
    vocab = set(json.loads(demo_dir["vocab"].read_text())["tokens"])
    assert {c for c in TEXT if c not in vocab} == set(PLANTED)  # the plant is what the model does not know
    text_file = tmp_path / "mine.txt"
    text_file.write_text(TEXT)

    # the CLI on the same model (its vocabulary file beside it) and the same file
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run(
        [sys.executable, "-m", "gatelens", "extract", demo_dir["text_model"], text_file, "--out", tmp_path / "run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    cli = json.loads((tmp_path / "run" / "manifest.json").read_text())["unknown_tokens"]
    assert cli["count"] == sum(PLANTED.values()) and cli["distinct"] == len(PLANTED)
    assert cli["n_tokens"] == len(TEXT)
    assert [tuple(t) for t in cli["top"]] == sorted(PLANTED.items(), key=lambda kv: (-kv[1], kv[0]))
    assert f"{cli['count']} of {cli['n_tokens']} tokens unknown" in r.stdout

    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _no_exception(at)
    at.switch_page("views/data.py").run()
    _no_exception(at)
    at.radio(key="data_source").set_value("Upload").run()
    at.file_uploader(key="data_upload").upload("mine.txt", TEXT.encode(), "text/plain").run()
    _no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Unknown tokens"] == str(cli["count"])
    assert metrics["Tokens in all"] == str(cli["n_tokens"])
    assert metrics["Distinct unknown tokens"] == str(cli["distinct"])
    table = next(d.value for d in at.dataframe if list(d.value.columns) == ["token", "count"])
    assert list(zip(table["token"], table["count"])) == [(repr(t), c) for t, c in cli["top"]]
    warning = " ".join(w.value for w in at.warning)
    assert f"{cli['count']} of {cli['n_tokens']} tokens unknown" in warning


def test_no_summary_when_every_token_is_known(demo_dir):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _no_exception(at)
    at.switch_page("views/data.py").run()  # the bundled demo text: every character in the vocabulary
    _no_exception(at)
    assert "Sequences analysed" in {m.label for m in at.metric}
    assert "Unknown tokens" not in {m.label for m in at.metric}
