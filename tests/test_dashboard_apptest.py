"""One AppTest per dashboard page (streamlit.testing.v1), on tiny real Keras demos: no exception, the expected elements.

The app runs in this process; its caches are shared between the tests (keyed by content hash), so the
model is loaded and analysed once and each page test then opens its page in a fresh session. The
numbers a page shows are checked against the library's own (gatelens.models.extract, analysis.*) here.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import build_tiny_demos
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "dashboards" / "app.py")
TIMEOUT = 240  # the first run loads TensorFlow, the model (safe loader: a worker process) and analyses


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


def _open(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _no_exception(at)
    if page is not None:
        at.switch_page(f"views/{page}.py").run()
        _no_exception(at)
    return at


def _waiting(at: AppTest) -> list[str]:
    """Labels of the progress bars of sections that wait for a later analysis stage."""
    return [p.proto.text for p in at.get("progress") if "waits for the" in p.proto.text]


def _settle(at: AppTest, timeout: float = TIMEOUT) -> AppTest:
    """Re-run until no section waits for a later stage (a browser's fragment polls; AppTest does not)."""
    import time

    deadline = time.monotonic() + timeout
    while _waiting(at) and not at.exception:
        assert time.monotonic() < deadline, _waiting(at)
        time.sleep(0.25)
        at.run()
    return at


def _no_exception(at: AppTest) -> None:
    _settle(at)  # the later stages finish in the background; the checks below read the finished page
    assert not at.exception, "\n\n".join(f"{e.value}\n{''.join(e.stack_trace)}" for e in at.exception)
    assert not at.error, [e.value for e in at.error]


def _texts(at: AppTest, kind: str) -> list[str]:
    return [e.value for e in at.get(kind)]


def _plain(markdown: str) -> str:
    """Markdown text without the backslash escapes the app puts before user text's special characters."""
    return re.sub(r"\\(.)", r"\1", markdown)


def _errors(at: AppTest) -> list[str]:
    return [_plain(e.value) for e in at.error]


def _frame(at: AppTest, *columns: str):
    """The first dataframe shown that has all these columns."""
    for df in at.dataframe:
        value = df.value
        if all(c in value.columns for c in columns):
            return value
    raise AssertionError(f"no dataframe with columns {columns}; shown: {[list(d.value.columns) for d in at.dataframe]}")


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.get("vega_lite_chart")]


def _chart_data(at: AppTest, contains: str):
    """The data of the one chart whose spec mentions ``contains`` (Streamlit ships it apart, as Arrow)."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    hits = [e for e in at.get("vega_lite_chart") if contains in e.proto.spec]
    assert len(hits) == 1, f"{len(hits)} charts mention {contains!r}"
    proto = hits[0].proto
    frames = [convert_arrow_bytes_to_pandas_df(d.data.data) for d in proto.datasets]
    if proto.HasField("data"):
        frames.append(convert_arrow_bytes_to_pandas_df(proto.data.data))
    return max(frames, key=len)


def _select_series_demo(at: AppTest) -> AppTest:
    at.selectbox(key="demo_model").set_value("tiny_series").run()
    _no_exception(at)
    return at


# ----------------------------------------------------------------------------------------------------------------
# one test per page


def test_model_page_shows_architecture_layers_and_a_passing_badge(demo_dir):
    at = _open()
    assert [t.value for t in at.title] == ["Model"]
    options = at.selectbox(key="demo_model").options  # labels: name, task, architecture; text demos first
    assert [o.split(" ")[0] for o in options] == ["tiny_char", "tiny_series"]
    assert options[0] == "tiny_char — next-character prediction (Embedding -> LSTM -> LSTM)"
    recurrent = _frame(at, "layer", "cell", "units")
    assert recurrent["layer"].tolist() == ["lstm", "lstm_1"]
    assert recurrent["units"].tolist() == [8, 6]
    arch = _frame(at, "layer", "class", "output_shape")
    assert [c for c in arch["class"] if c != "InputLayer"] == ["Embedding", "LSTM", "LSTM", "Dense"]
    v = len(json.loads(demo_dir["vocab"].read_text())["tokens"])
    assert arch["parameters"].sum() == v * 8 + 4 * 8 * (8 + 8 + 1) + 4 * 6 * (8 + 6 + 1) + (6 * v + v)
    assert _frame(at, "metric", "value")["metric"].tolist() == ["split", "bits_per_char", "unigram_bits_per_char"]
    badges = [m for m in _texts(at, "markdown") if "badge[" in m]
    assert len(badges) == 1 and "Verification: PASS" in badges[0] and badges[0].startswith(":green-badge[")
    verification = _frame(at, "layer", "status")
    assert verification["layer"].tolist() == ["lstm", "lstm_1"]
    assert all(float(v) <= 1e-5 for v in verification["max |h recomputed - h Keras|"])
    sidebar = _plain(" ".join(c.value for c in at.sidebar.caption))
    assert "**Model** · tiny_char.keras (demo)" in sidebar and "**Data** · tiny_char.demo.txt" in sidebar


def test_model_page_series_demo(demo_dir):
    at = _select_series_demo(_open())
    assert _frame(at, "layer", "cell")["cell"].tolist() == ["gru"]
    assert any("Verification: PASS" in m for m in _texts(at, "markdown"))


def test_data_page_previews_the_demo_text(demo_dir):
    at = _open("data")
    assert [t.value for t in at.title] == ["Data"]
    metrics = {m.label: m.value for m in at.metric}
    text = demo_dir["text_data"].read_text()
    assert metrics["Sequences analysed"] == str(-(-len(text) // 40))  # every window by default (the last one short)
    assert metrics["Steps per sequence"] == "40"
    code = [c.value for c in at.code]
    assert code[0] == text[:40]  # the first window, exactly as in the file
    assert at.toggle(key="data_slice_demo").value is False  # a slice only when asked for
    at.toggle(key="data_slice_demo").set_value(True).run()
    at.number_input(key="data_count_demo").set_value(8).run()
    _no_exception(at)
    assert {m.label: m.value for m in at.metric}["Sequences analysed"] == "8"
    assert [c.value for c in at.code][0] == text[:40]


def test_gates_page_colours_text_escapes_html_and_hovers_every_signal(demo_dir):
    at = _open("gates")
    assert [t.value for t in at.title] == ["Gates over the input"]
    (frag,) = [h.proto.body for h in at.get("html")]
    assert "<script" not in frag and "&lt;" in frag  # the user's text is shown, never run
    n_units = len(at.multiselect(key="gates_units").value)
    assert n_units >= 1
    shown = [html.unescape(t) for t in re.findall(r'<span class="gl-tok"[^>]*>(.*?)</span>', frag)]
    assert len(shown) == 40 * n_units  # one span per step per unit
    text = demo_dir["text_data"].read_text()[:40]
    assert "".join(shown[:40]) == text.replace(" ", "\xa0").replace("\n", "↵")  # every character, in order
    for signal in ("input_gate", "forget_gate", "candidate", "output_gate", "cell_state", "hidden_state"):
        assert f"{signal} " in frag  # every signal in the hover text
    assert 'title="step 0 · ' in frag


def test_gates_page_series_heat_strips(demo_dir):
    at = _select_series_demo(_open())
    at.switch_page("views/gates.py").run()
    _no_exception(at)
    (spec,) = _charts(at)
    titles = [c.get("title") for c in spec["vconcat"]]
    assert titles == ["input", "update gate", "reset gate", "candidate", "hidden state"]  # the registry's labels


def test_units_page_saturation_half_lives_clusters(demo_dir):
    at = _open("units")
    specs = _charts(at)
    titles = [s.get("title") if isinstance(s.get("title"), str) else s.get("title", {}).get("text") for s in specs]
    assert titles[:3] == ["input gate", "forget gate", "output gate"]
    assert "memory half-life of each unit" in titles
    clusters = _frame(at, "cluster", "members")
    assert {"cluster", "archetype", "units", "members"} <= set(clusters.columns)
    assert clusters["units"].sum() == 8 + 6
    assert any(m.startswith("Opened: **") for m in _texts(at, "markdown"))


def test_features_page_heatmap_top_units_probes(demo_dir):
    at = _open("features")
    titles = [str(s.get("title")) for s in _charts(at)]
    assert any("Pearson r of cell state with each feature" in t for t in titles)
    assert any("probe selectivity" in t for t in titles)
    top = _frame(at, "rank", "pearson_r")
    assert top["rank"].tolist()[:3] == [1, 2, 3]
    assert (top["signal"] == "cell_state").all()
    r = top["pearson_r"].abs().to_numpy()
    assert np.all(np.diff(r[np.isfinite(r)]) <= 0)  # strongest first


def test_memory_page_decomposition_sums_to_the_state(demo_dir):
    at = _open("memory")
    metrics = {m.label: float(m.value) for m in at.metric if m.label != "steps still present (> 1% of |state|)"}
    assert metrics["sum of the parts below"] == pytest.approx(metrics["stored cell_state"], rel=1e-5, abs=1e-6)
    assert len(_charts(at)) == 3  # decomposition, retention, pre-activations
    assert any("still in the state" in h.proto.body for h in at.get("html"))


def test_explain_page_summary(demo_dir):
    at = _open("explain")
    md = _texts(at, "markdown")
    headline = [m for m in md if m.startswith("#### Unit ")]
    assert len(headline) == 1
    for section in ("How long it remembers", "How its gates sit", "What makes it forget", "What it tracks"):
        assert any(m.startswith(f"**{section}.**") for m in md), section
    assert len(_charts(at)) == 2  # the unit's lines and its histogram


def _score_labels(at: AppTest) -> list[tuple[int, float]]:
    """The unit picker's options as (unit, score), in the order shown."""
    out = []
    for label in at.selectbox(key="explain_unit").options:
        m = re.fullmatch(r"(\d+) · score (-?\d\.\d\d)", label)
        assert m, label
        out.append((int(m.group(1)), float(m.group(2))))
    return out


def test_explain_page_scored_explanation_examples_and_histogram(demo_dir):
    at = _open("explain")
    md = [_plain(m) for m in _texts(at, "markdown")]
    scored = [m for m in md if m.startswith("**Scored explanation.**")]
    assert len(scored) == 1 and re.search(r"score -?\d\.\d\d on held-out sequences \(shuffled control", scored[0])
    # units ordered by their explanation score, best first; the score shown is the one in the picker
    picked = _score_labels(at)
    assert sorted(u for u, _ in picked) == list(range(8))
    assert [s for _, s in picked] == sorted((s for _, s in picked), reverse=True)
    unit = int(at.selectbox(key="explain_unit").value)
    assert f"score {dict(picked)[unit]:.2f} on held-out" in scored[0]
    at.radio(key="explain_order").set_value("by number").run()
    assert [int(o.split(" ")[0]) for o in at.selectbox(key="explain_unit").options] == list(range(8))

    # top examples as coloured text: one line per example, best first, its own step outlined and hovering its value
    at.selectbox(key="explain_ex_signal").set_value("forget_gate").run()
    at.selectbox(key="explain_ex_kind").set_value("top").run()
    _no_exception(at)
    body = [h.proto.body for h in at.get("html") if "gl-mark" in h.proto.body]
    assert len(body) == 1
    captions = re.findall(
        r'<div class="gl-label">#(\d+) · sequence (\d+), step (\d+) · forget gate (-?[\d.]+)</div>', body[0]
    )
    assert [int(c[0]) for c in captions] == list(range(len(captions))) and len(captions) == 5
    values = [float(c[3]) for c in captions]
    assert values == sorted(values, reverse=True)
    marks = re.findall(r'class="gl-tok gl-mark"[^>]*title="step (\d+) · [^"]*: (-?[\d.]+)"', body[0])
    assert [int(m[0]) for m in marks] == [int(c[2]) for c in captions]
    assert [float(m[1]) for m in marks] == values
    # the histogram: every real step of the demo text (all of it is analysed by default), counted once
    hist = _chart_data(at, "steps of the run")
    assert hist["count"].sum() == len(demo_dir["text_data"].read_text()) and len(hist) == 50
    # the top value is the largest of the histogram's range
    assert values[0] == pytest.approx(float(hist["hi"].max()), abs=5e-4)

    # the same step on the gates page (read from the trace, not from the examples table) shows the same value
    rank0 = captions[0]
    at.session_state["gatelens_sequence"] = int(rank0[1])
    at.switch_page("views/gates.py").run()
    at.number_input(key="gates_sequence").set_value(int(rank0[1])).run()
    at.selectbox(key="gates_layer").set_value("lstm").run()
    at.multiselect(key="gates_units").set_value([unit]).run()
    gates = [h.proto.body for h in at.get("html") if "gl-tok" in h.proto.body][0]
    hovers = re.findall(r'title="step (\d+) · [^\n]*\n([^"]*)"', html.unescape(gates).replace("&#x27;", "'"))
    fg = {int(s): float(re.search(r"forget_gate (-?[\d.]+)", rest).group(1)) for s, rest in hovers}
    assert fg[int(rank0[2])] == pytest.approx(values[0], abs=1e-3)


def test_explain_page_series_examples_as_strips(demo_dir):
    at = _select_series_demo(_open())
    at.switch_page("views/explain.py").run()
    _no_exception(at)
    kinds = at.selectbox(key="explain_ex_kind").options  # of the hidden state: no rise/drop (gates only)
    deciles = [f"decile {j} ({10 * j}-{10 * (j + 1)}% of its range)" for j in range(10)]
    assert kinds[:2] == ["top (its largest values)", "bottom (its smallest values)"], kinds
    # then the deciles that hold values, in order; the first holds the unit's minimum and the last its maximum
    assert kinds[2:] == [d for d in deciles if d in kinds[2:]], kinds
    assert deciles[0] in kinds and deciles[-1] in kinds, kinds
    data = _chart_data(at, "relative to the example")
    examples = list(dict.fromkeys(data["example"]))
    assert len(examples) == 5 and all(re.fullmatch(r"#\d · seq \d+, step \d+", e) for e in examples)
    at0 = data[data["offset"] == 0]
    assert len(at0) == 5  # every example's own step is in its strip
    assert list(at0["value"]) == sorted(at0["value"], reverse=True)  # top examples, best first
    assert _chart_data(at, "steps of the run")["count"].sum() == 10 * 24  # all 10 windows of the series


def _export_file(at: AppTest, table: str, fmt: str = "csv") -> Path:
    """The file the Export page wrote for ``table`` (in this session's folder, under its selection)."""
    from gatelens.dashboards import exporting

    root = at.session_state["_gatelens_session_dir"].path / "exports"
    name = exporting.download_name(table, fmt)
    found = sorted(root.rglob(name))
    assert len(found) == 1, (table, found)
    return found[0]


def _wait_written(at: AppTest, table: str, fmt: str = "csv", timeout: float = 120) -> AppTest:
    """Click the Export page's "Write" button of a large table and rerun until its download is offered."""
    import time

    from gatelens.dashboards import exporting

    at.button(key=f"write_{table}").click().run()
    _no_exception(at)
    deadline = time.monotonic() + timeout
    name = exporting.download_name(table, fmt)
    while not any(b.proto.label.startswith(name + " ") for b in at.get("download_button")):
        assert time.monotonic() < deadline, f"{table} was not written in {timeout} s"
        time.sleep(0.5)
        at.run()
        _no_exception(at)
    return at


def test_export_page_offers_each_table_with_choices(demo_dir, tmp_path):
    """Each table the library exports, with the page's layer/signal/sequence/format choices: the same bytes as
    gatelens.analysis.export.export_table on the same run, written to the session's folder (not into memory)."""
    import pandas as pd

    from gatelens.analysis.export import export_table, export_tables
    from gatelens.dashboards import core, exporting, state

    at = _settle(_open("export"))  # each table is offered once its stage is done (a progress bar until then)
    labels = [b.proto.label for b in at.get("download_button")]
    # the small tables at once; probes once their job is done (a progress bar until then)
    for name in ("units.csv", "sequences.csv", "correlations.csv", "clusters.csv", "manifest.json"):
        assert any(label.startswith(name) for label in labels), (name, labels)
    assert not any(label.startswith(("activations.", "events.")) for label in labels)  # on demand only
    doc = json.loads(at.get("json")[0].proto.body)
    assert doc["format"] == "gatelens-run" and doc["model"]["name"] == "tiny_char.keras"
    assert doc["data"]["path"] == "tiny_char.demo.txt"

    at.multiselect(key="export_layers").set_value(["lstm_1"]).run()
    at.multiselect(key="export_signals").set_value(["hidden_state", "cell_state"]).run()
    at.number_input(key="export_first").set_value(2).run()
    at.number_input(key="export_count").set_value(3).run()
    at.radio(key="export_format").set_value("Parquet").run()
    _no_exception(at)
    at = _wait_written(at, "activations", "parquet")

    job = next(iter(at.session_state["_gatelens_export_jobs"].values()))
    assert job.done and job.error is None
    got = _export_file(at, "activations", "parquet")
    with zipfile.ZipFile(got) as zf:
        assert zf.namelist() == ["activations/layer=lstm_1/part-0.parquet"]
        table = pd.read_parquet(io.BytesIO(zf.read("activations/layer=lstm_1/part-0.parquet")))
    assert sorted(table["sequence"].unique()) == [2, 3, 4]
    assert list(table.columns) == ["sequence", "step", "unit", "cell_state", "hidden_state", "token"]
    # against the library: the same model and data, extracted, analysed and exported here by export_table
    demo = state.demo_list()[0]
    model = core.load_model_bundle(state.demo_model_choice(demo))
    run = core.run_analysis(model, core.load_data_bundle(model, state.demo_data_choice(demo)))
    ref = export_table(run.trace, "activations", tmp_path / "ref", format="parquet", layers=["lstm_1"],
                       signals=["hidden_state", "cell_state"], sequences=range(2, 5))  # fmt: skip
    expected = pd.read_parquet(ref / "layer=lstm_1" / "part-0.parquet")
    pd.testing.assert_frame_equal(table, expected)
    # and a value against the trace itself
    row = table[(table.sequence == 3) & (table.step == 5) & (table.unit == 2)]
    assert np.float32(row["hidden_state"].iloc[0]) == run.trace["lstm_1"]["hidden_state"][3, 5, 2]

    # small tables follow the choices too: units of lstm_1, those two signals, Parquet; same bytes as the library
    units = _export_file(at, "units", "parquet")
    ref_units = export_table(run.trace, "units", tmp_path / "ref", format="parquet", analysis=run.analysis,
                             layers=["lstm_1"], signals=["hidden_state", "cell_state"], sequences=range(2, 5))  # fmt: skip
    assert units.read_bytes() == ref_units.read_bytes()
    assert set(pd.read_parquet(units)["layer"]) == {"lstm_1"}
    assert set(export_tables(run.analysis)) >= {"units", "sequences", "correlations", "events"}
    assert exporting.route_served() is False  # AppTest: no streaming route; small files via download_button


def _asgi_get(app, path: str) -> tuple[int, dict[str, str], list[bytes]]:
    """GET ``path`` from an ASGI app in this process: status, headers and the body as the chunks it was sent in."""
    import asyncio

    messages: list[dict] = []
    requested = []

    async def receive():
        if not requested:
            requested.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected until the response is sent (then cancelled)

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [], "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 1), "root_path": ""}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    start = next(m for m in messages if m["type"] == "http.response.start")
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, [m.get("body", b"") for m in messages if m["type"] == "http.response.body"]


def test_export_route_streams_the_file_from_disk(demo_dir, monkeypatch, tmp_path):
    """With the route served (gatelens dashboard), the page links to it and the route streams the file from disk,
    a bounded chunk at a time; unknown tokens and files of an ended session are 404."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from gatelens.dashboards import exporting

    monkeypatch.setattr(exporting, "_route_served", True)  # as gatelens.dashboards.asgi.app does when it starts
    at = _settle(_open("export"))
    links = {b.proto.label.split(" · ")[0]: b.proto.url for b in at.get("link_button")}
    assert "units.csv" in links and links["units.csv"].startswith(exporting.DOWNLOAD_ROUTE + "/")
    assert not at.get("download_button") or all(
        not b.proto.label.startswith("units.csv") for b in at.get("download_button")
    )
    path = _export_file(at, "units")
    app = Starlette(routes=[Route(exporting.DOWNLOAD_ROUTE + "/{token}", exporting.download_endpoint)])
    status, headers, chunks = _asgi_get(app, links["units.csv"])
    assert status == 200 and b"".join(chunks) == path.read_bytes()
    assert headers["content-type"].startswith("text/csv")
    assert 'filename="units.csv"' in headers["content-disposition"]
    # a large file goes out in bounded chunks, read from disk as it is sent
    big = tmp_path / "big.csv"
    big.write_bytes(np.random.default_rng(0).bytes(3_000_000))
    status, _, chunks = _asgi_get(app, exporting.download_url(exporting.register(big)))
    assert status == 200 and b"".join(chunks) == big.read_bytes()
    assert len(chunks) > 10 and max(len(c) for c in chunks) <= 1024 * 1024
    assert _asgi_get(app, exporting.DOWNLOAD_ROUTE + "/not-a-token")[0] == 404
    path.unlink()  # its session's folder gone: the link dies with it
    assert _asgi_get(app, links["units.csv"])[0] == 404


# ----------------------------------------------------------------------------------------------------------------
# uploads: errors as messages, never tracebacks; a good upload runs end to end


def _upload_mode(at: AppTest) -> AppTest:
    at.radio(key="model_source").set_value("Upload my own").run()
    _no_exception(at)
    return at


def test_bad_model_upload_shows_a_readable_error(demo_dir):
    at = _upload_mode(_open())
    at.file_uploader(key="model_upload").upload("broken model.keras", b"this is not a zip", "application/zip").run()
    assert not at.exception
    (err,) = _errors(at)
    assert err.startswith("**The file is not a readable Keras model**\n\nbroken model.keras: not a zip archive")
    assert "gatelens-session-" not in err and "model-" not in err  # no server path
    assert "Traceback" not in err


def test_unsafe_model_upload_is_refused(demo_dir, tmp_path):
    import keras

    model = keras.Sequential(
        [keras.Input((5, 2)), keras.layers.Lambda(lambda x: x * 2), keras.layers.LSTM(3, name="lstm")]
    )
    path = tmp_path / "lambda.keras"
    model.save(path)
    at = _upload_mode(_open())
    at.file_uploader(key="model_upload").upload("lambda.keras", path.read_bytes(), "application/zip").run()
    assert not at.exception
    (err,) = _errors(at)
    assert err.startswith("**The model was refused as unsafe**\n\nlambda.keras: ") and "Lambda" in err


def test_uploaded_model_and_npy_data_run_and_verify(demo_dir, tmp_path):
    import keras

    from gatelens.models import extract

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((7, 3)), keras.layers.LSTM(4, return_sequences=True, name="lstm")], name="mine"
    )
    path = tmp_path / "mine.keras"
    model.save(path)
    x = np.random.default_rng(2).normal(size=(5, 7, 3)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, x)

    at = _upload_mode(_open())
    at.file_uploader(key="model_upload").upload("mine.keras", path.read_bytes(), "application/zip").run()
    _no_exception(at)
    assert any("Verification needs input" in i.value for i in at.info)
    at.switch_page("views/data.py").run()
    _no_exception(at)
    assert at.radio(key="data_source").options == ["Upload"]
    at.file_uploader(key="data_upload").upload("x.npy", buf.getvalue(), "application/octet-stream").run()
    _no_exception(at)
    assert {m.label: m.value for m in at.metric}["Sequences analysed"] == "5"
    at.switch_page("views/model.py").run()
    _no_exception(at)
    assert any("Verification: PASS" in m for m in _texts(at, "markdown"))
    # the Export page's activations equal the library's own extraction of the same model and data
    at.switch_page("views/export.py").run()
    _no_exception(at)
    ref = extract(keras.saving.load_model(path), x)
    doc = json.loads(at.get("json")[0].proto.body)
    assert doc["model"]["name"] == "mine.keras" and doc["n_sequences"] == 5
    at = _wait_written(at, "activations")
    from gatelens.analysis.export import read_csv

    acts = read_csv(_export_file(at, "activations"))
    got = acts[acts.layer == "lstm"].sort_values(["sequence", "step", "unit"])
    assert len(got) == 5 * 7 * 4
    np.testing.assert_array_equal(got["forget_gate"].to_numpy(np.float32), ref["lstm"]["forget_gate"].reshape(-1))


def test_data_that_does_not_fit_the_model_shows_a_readable_error(demo_dir):
    at = _open("data")
    at.radio(key="data_source").set_value("Upload").run()
    _no_exception(at)
    buf = io.BytesIO()
    np.save(buf, np.zeros((3, 5, 2), np.float32))  # the demo takes (N, 40) token ids
    at.file_uploader(key="data_upload").upload("wrong.npy", buf.getvalue(), "application/octet-stream").run()
    assert not at.exception
    (err,) = _errors(at)
    assert err.startswith("**The data does not fit the model**\n\nwrong.npy: ")
    assert "gatelens-session-" not in err


def test_sessions_do_not_see_each_others_uploads(demo_dir, tmp_path):
    a = _upload_mode(_open())
    a.file_uploader(key="model_upload").upload("private.keras", b"not a model", "application/zip").run()
    assert "private.keras" in _errors(a)[0]
    b = _open()  # a new session still sees the demo, not the other session's upload
    _no_exception(b)
    sidebar = _plain(" ".join(c.value for c in b.sidebar.caption))
    assert "tiny_char.keras" in sidebar and "private" not in sidebar


def test_export_zip_matches_the_library(demo_dir, tmp_path):
    """The export's CSVs are those of gatelens.analysis.export.export_csvs on the same run (same bytes)."""
    from gatelens.analysis.export import export_csvs, read_csv
    from gatelens.dashboards import core, demos

    demo = demos.list_demos()[0]
    mc = core.ModelChoice(core.FileRef.of(demo.model_path), core.FileRef.of(demo.vocabulary_path), demo=demo.name)
    model = core.load_model_bundle(mc)
    data = core.load_data_bundle(model, core.DataChoice(core.FileRef.of(demo.data_path), count=3))
    run = core.run_analysis(model, data)
    analysis = core.with_probes(run, core.run_probes(run))
    archive, sizes = core.export_zip(run, analysis)
    paths = export_csvs(run.trace, tmp_path / "csv", analysis=analysis)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        assert sorted(zf.namelist()) == sorted([*paths, "manifest.json"])
        for name, p in paths.items():
            if name != "probes.csv":  # probes are retrained (same seed, same data): compare values below
                assert zf.read(name) == p.read_bytes(), name
    acts = read_csv(paths["activations.csv"])  # byte-equal to the zip's copy (checked above)
    from gatelens.models import extract

    ref = extract(model.model, data.dataset.x)
    got = acts[(acts.layer == "lstm") & (acts.sequence == 1) & (acts.step == 7)].sort_values("unit")
    np.testing.assert_array_equal(got["forget_gate"].to_numpy(np.float32), ref["lstm"]["forget_gate"][1, 7])
    assert sizes["activations.csv"] == len(zipfile.ZipFile(io.BytesIO(archive)).read("activations.csv"))


def _series_data_upload(at: AppTest, name: str, content: bytes) -> AppTest:
    at.switch_page("views/data.py").run()
    _no_exception(at)
    at.radio(key="data_source").set_value("Upload").run()
    _no_exception(at)
    at.file_uploader(key="data_upload").upload(name, content, "text/csv").run()
    return at


def test_csv_upload_with_windowing_options_and_user_features(demo_dir):
    at = _select_series_demo(_open())
    csv = demo_dir["series_data"].read_bytes()  # year, load, temp: 240 rows
    at = _series_data_upload(at, "my series.csv", csv)
    _no_exception(at)
    at.multiselect(key="data_columns").set_value(["load", "temp"]).run()
    at.number_input(key="data_stride").set_value(12).run()
    _no_exception(at)
    assert {m.label: m.value for m in at.metric}["Sequences analysed"] == str((240 - 24) // 12 + 1)
    assert at.number_input(key="data_window_fixed").value == 24
    # a features file of the user's own: correlated on the Features page
    rows = ["sequence,step,phase"] + [f"{s},{t},{np.sin((12 * s + t) / 5.0):.6f}" for s in range(19) for t in range(24)]
    at.file_uploader(key="features_upload").upload("phase.csv", "\n".join(rows).encode(), "text/csv").run()
    _no_exception(at)
    assert any("features: phase.csv" in _plain(s.value) for s in at.success)
    at.switch_page("views/features.py").run()
    _no_exception(at)
    assert "phase" in at.selectbox(key="features_feature").options


def test_malformed_features_file_shows_a_readable_error(demo_dir):
    at = _select_series_demo(_open())
    at.switch_page("views/data.py").run()
    _no_exception(at)
    bad = b"sequence,step,phase\n0,0,1.0\n0,999,2.0\n"  # step 999: the series has 24 steps
    at.file_uploader(key="features_upload").upload("bad features.csv", bad, "text/csv").run()
    assert not at.exception
    (err,) = _errors(at)
    assert err.startswith("**The features file is not valid**\n\nbad features.csv")
    assert "999" in err and "gatelens-session-" not in err


def test_server_config_limits_uploads_and_runs_headless():
    import tomllib

    cfg = tomllib.loads((Path(APP).parent.parent / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["maxUploadSize"] == 100
    assert cfg["server"]["headless"] is True
    assert cfg["browser"]["gatherUsageStats"] is False


def test_demo_features_are_cut_to_the_analysed_slice(demo_dir):
    """The series demo's features CSV covers all 10 windows; the slice of 8 from #1 uses windows 1..8."""
    at = _select_series_demo(_open())
    at.switch_page("views/data.py").run()
    _no_exception(at)
    at.toggle(key="data_slice_demo").set_value(True).run()
    at.number_input(key="data_first_demo").set_value(1).run()
    at.number_input(key="data_count_demo").set_value(8).run()
    _no_exception(at)
    assert any("features: tiny_series.features.csv" in _plain(s.value) for s in at.success)
    at.switch_page("views/features.py").run()
    _no_exception(at)
    assert "phase" in at.selectbox(key="features_feature").options
    from gatelens.dashboards import core, state  # noqa: F401  (the same slice, computed by the library here)

    feats = core.slice_features(
        core.FileRef.of(demo_dir["series_features"]),
        type(
            "D",
            (),
            {
                "n_available": 10,
                "n_sequences": 8,
                "choice": core.DataChoice(core.FileRef.of(demo_dir["series_data"]), first=1, count=8),
            },
        )(),
        24,
    )
    assert feats["sequence"].min() == 0 and feats["sequence"].max() == 7
    # window k of the slice is window k + 1 of the file: phase = (24 * (k + 1) + t) % 31
    row = feats[(feats.sequence == 2) & (feats.step == 5)]
    assert float(row["phase"].iloc[0]) == (24 * 3 + 5) % 31


def test_search_page_span_units_and_matches(demo_dir):
    at = _open()
    at.switch_page("views/search.py").run()
    assert not at.exception
    if at.error:  # no unit of the tiny demo is on over the default span at 0.5: a bad query is one readable line
        assert "lower the threshold" in _errors(at)[0]
        at.number_input(key="search_threshold").set_value(-1.0).run()  # every unit is on at >= -1
    _no_exception(at)
    assert "Units on over the span" in " ".join(_texts(at, "markdown"))
    table = _frame(at, "rank", "sequence", "start", "end", "score")
    assert len(table) >= 1 and list(table["rank"]) == list(range(len(table)))
    seq = int(at.number_input(key="search_seq").value)
    # the query span itself is inside one of the matches
    hit = table[(table["sequence"] == seq) & (table["start"] <= 0) & (table["end"] >= 5)]
    assert len(hit) == 1
    at.radio(key="search_mode").set_value("A condition").run()
    at.text_input(key="search_where").set_value("nosuch of lstm:0 below 0.1").run()
    assert any("no signal 'nosuch'" in e for e in _errors(at)) or any("unknown layer" in e for e in _errors(at))


# ----------------------------------------------------------------------------------------------------------------
# the staged analysis: pages show what is ready while later stages run; a features file re-runs only its steps


def _series_slice(at: AppTest, first: int, count: int) -> AppTest:
    """The series demo on a slice no other test analyses (a fresh run, not one from the cache)."""
    at = _select_series_demo(at)
    at.switch_page("views/data.py").run()
    at.toggle(key="data_slice_demo").set_value(True).run()
    at.number_input(key="data_first_demo").set_value(first).run()
    at.number_input(key="data_count_demo").set_value(count).run()
    return at


def test_a_page_shows_what_is_ready_and_a_progress_bar_for_a_running_stage(demo_dir, monkeypatch):
    import dataclasses
    import threading

    from gatelens.analysis import pipeline

    gate, entered = threading.Event(), threading.Event()
    original = {s.name: s for s in pipeline.STEP_REGISTRY}["probes"].run

    def held(ctx):  # the probes stage of this test's run (5 sequences) stays running until the test lets it go
        if ctx.trace.n_sequences == 5:
            entered.set()
            assert gate.wait(120)
        return original(ctx)

    registry = tuple(dataclasses.replace(s, run=held) if s.name == "probes" else s for s in pipeline.STEP_REGISTRY)
    monkeypatch.setattr(pipeline, "STEP_REGISTRY", registry)
    try:
        at = _series_slice(_open(), 2, 5)
        assert not at.exception
        assert entered.wait(TIMEOUT), "the probes stage never started"
        at.switch_page("views/features.py").run()
        assert not at.exception and not at.error
        titles = [str(s.get("title")) for s in _charts(at)]
        assert any("Pearson r of" in t for t in titles), (titles, _waiting(at))
        assert not any("probe selectivity" in t for t in titles)  # ... the probes not yet
        assert _waiting(at) == [
            "Probes: waits for the **probes** stage (linear probes with control tasks) · running (probes)"
        ]
        assert len(_frame(at, "rank", "pearson_r")) >= 1
        sidebar = _plain(" ".join(c.value for c in at.sidebar.caption))
        assert "**Probes** · running (0%)" in sidebar and "**Summary** · ready" in sidebar
        at.switch_page("views/units.py").run()  # every other page opens too, with what it has
        assert not at.exception and not at.error and _charts(at)
    finally:
        gate.set()
    at.switch_page("views/features.py").run()
    _no_exception(at)  # settles: the page re-runs once the probes are ready
    assert not _waiting(at)
    probes_shown = any("probe selectivity" in str(s.get("title")) for s in _charts(at))
    assert probes_shown or any(i.value.startswith("No probe") for i in at.info), [i.value for i in at.info]
    _all_ready(at)  # the sidebar is drawn before the page: it may have seen the probes running one run earlier


def test_adding_a_features_file_reruns_only_the_steps_that_need_features(demo_dir):
    import logging

    from gatelens.analysis.pipeline import FEATURE_STEPS

    steps: list[str] = []

    class StepLog(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if msg.startswith("analysis step ") and " took " in msg:
                steps.append(msg.split()[2])

    logger = logging.getLogger("gatelens.analysis.pipeline")
    handler, level = StepLog(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        _all_ready(_open())  # the text demo, then the whole series demo, then the slice: each analysed to the end
        _all_ready(_select_series_demo(_open()))
        at = _all_ready(_series_slice(_open(), 1, 6))
        steps.clear()
        at.switch_page("views/data.py").run()
        rows = ["sequence,step,wave"] + [
            f"{s},{t},{np.cos((24 * s + t) / 5.0):.6f}" for s in range(10) for t in range(24)
        ]
        at.file_uploader(key="features_upload").upload("wave.csv", "\n".join(rows).encode(), "text/csv").run()
        _no_exception(at)
        assert any("features: wave.csv" in _plain(s.value) for s in at.success)
        at.switch_page("views/features.py").run()
        _no_exception(at)
        assert "wave" in at.selectbox(key="features_feature").options
        _all_ready(at)
        assert sorted(steps) == sorted(FEATURE_STEPS)  # no extraction, no statistics, events or examples again
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _all_ready(at: AppTest, timeout: float = TIMEOUT) -> AppTest:
    """Re-run until the sidebar says every stage of the current choice's analysis is ready."""
    import time

    deadline = time.monotonic() + timeout
    while "all stages ready" not in " ".join(c.value for c in at.sidebar.caption):
        assert not at.exception and time.monotonic() < deadline, [c.value for c in at.sidebar.caption]
        time.sleep(0.25)
        at.run()
    return at
