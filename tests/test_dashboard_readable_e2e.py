"""Chromium end to end (issues 15 and 17): mouse span selection, and every chart of two users' own models readable.

One real ``streamlit run`` server (tests/e2e_helpers.py) whose demo folder holds one tiny demo (a Keras LSTM on
6 sequences of a ``.npy`` array, all of them analysed), and one headless Chromium.

* Search by mouse (issue 15): drags with ``page.mouse`` over the drawn heat strip of the Search page, from the
  cell of step 2 to the cell of step 5; the step boxes then read 2 and 6, and the units on, the number of
  matches and the shown rows equal :func:`gatelens.analysis.search.search` on :func:`gatelens.models.extract`'s
  trace of the same model and data, computed here; clicking a match opens that sequence at that step.
* Readable charts (issue 17): a Bidirectional text model (``.keras``, vocabulary ``.json`` and a ``.txt``) and a
  multivariate forecaster (12 quarters x 5 series CSV with a ``date`` column, windows of 4 with stride 1), both
  built here, are uploaded; every page is visited and, in every drawn chart (Vega's SVG), no text is cut (no
  ellipsis) or hidden by label overlap, every legend titled ``layer`` lists every recurrent layer, and the series
  model's gates page has a date axis and its continuous whole-series view. Screenshots of every page of both go
  to ``docs/screenshots/text/`` and ``docs/screenshots/series/`` (the README shows them).
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from e2e_helpers import (
    REPO,
    StreamlitServer,
    browser_session,
    goto,
    grid_rows,
    nav,
    no_exception,
    page_session,
    require_chromium,
    small_screenshot,
    upload,
    wait_charts,
    wait_idle,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOTS = REPO / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 900}
PAGES = [
    ("model", "Model"),
    ("data", "Data"),
    ("gates", "Gates over the input"),
    ("units", "Units"),
    ("features", "Features"),
    ("memory", "Memory"),
    ("explain", "Unit explained"),
    ("whatif", "What if"),
    ("search", "Search"),
    ("export", "Export"),
]
SPAN_T, SPAN_N = 10, 6
SERIES = ["gdp_growth", "unemployment_rate", "consumer_prices", "policy_rate", "wage_growth"]
LICENCE = (
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
    "associated documentation files, to deal in the Software without restriction, including without "
    "limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies. "
    "THE SOFTWARE IS PROVIDED AS IS, WITHOUT WARRANTY OF ANY KIND (express or implied).\n"
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A tiny demo: an untrained LSTM (2 inputs, 4 units) on 6 sequences of 10 steps (``tiny_span.demo.npy``)."""
    import keras

    d = tmp_path_factory.mktemp("demo")
    keras.utils.set_random_seed(11)
    model = keras.Sequential(
        [keras.Input((SPAN_T, 2)), keras.layers.LSTM(4, return_sequences=True, name="lstm"), keras.layers.Dense(1)],
        name="tiny_span",
    )
    model.save(d / "tiny_span.keras")
    x = np.random.default_rng(2).normal(size=(SPAN_N, SPAN_T, 2)).astype(np.float32) * 2.0
    np.save(d / "tiny_span.demo.npy", x)
    card = {"format": "gatelens.model_card/1", "name": "tiny_span",
            "model": {"kind": "timeseries", "task": "a span-search test", "architecture": "LSTM -> Dense"}}  # fmt: skip
    (d / "tiny_span.card.json").write_text(json.dumps(card))
    return d, x


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo):
    require_chromium()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    with StreamlitServer(log_path=log, env={"GATELENS_DEMO_DIR": str(demo[0])}) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(server):
    yield from browser_session()


@pytest.fixture
def page(browser, server):
    yield from page_session(browser, VIEWPORT)


# ----------------------------------------------------------------------------------------------------------------
# issue 15: select a span with the mouse


def _cell(page, step: int, unit: int):
    """The drawn rect of (step, unit) in the Search page's heat strip, found by its ARIA label."""
    chart = page.locator('[data-testid="stVegaLiteChart"]').first
    cell = chart.locator(f'path[aria-label^="step: {step}; unit: {unit};"]')
    assert cell.count() == 1, chart.locator("path[aria-label]").first.get_attribute("aria-label")
    box = cell.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_drag_a_span_see_the_matches_open_one(page, server, demo):
    import keras

    from gatelens.analysis.search import SpanQuery, search
    from gatelens.models import extract

    d, x = demo
    trace = extract(keras.saving.load_model(d / "tiny_span.keras"), x)
    h = np.asarray(trace["lstm"]["hidden_state"])
    start, end = 2, 6
    # a threshold just below the highest minimum over the span: at least one unit is on, not all of them
    thr = math.floor((h[0, start:end].min(axis=0).max() - 0.005) * 100) / 100
    want = search(trace, SpanQuery(0, start, end, thr, "lstm", "hidden_state"))
    assert want.units and want.n_matches >= 2

    goto(page, server.url, "")
    page.get_by_text(re.compile(r"Verification: PASS")).wait_for()
    nav(page, "Search")
    box = page.get_by_label("On at >=", exact=True)
    box.fill(f"{thr:.2f}")
    box.press("Enter")
    wait_idle(page)
    wait_charts(page, 1)
    # drag from the middle of step 2's cell to the middle of step 5's (the brush touches steps 2..5)
    x0, y0 = _cell(page, start, 0)
    x1, _ = _cell(page, end - 1, 0)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y0, steps=12)
    page.mouse.up()
    page.wait_for_function(
        "() => document.querySelector('input[aria-label^=\"To step\"]')?.value === '6'", timeout=60_000
    )
    wait_idle(page)
    no_exception(page)
    assert page.get_by_label(re.compile(r"^From step \(")).input_value() == str(start)
    assert page.get_by_label(re.compile(r"^To step \(")).input_value() == str(end)
    units = page.locator('[data-testid="stMarkdownContainer"] p').filter(has_text="Units on over the span").inner_text()
    assert units.endswith(": " + ", ".join(map(str, want.units))), (units, want.units)
    caption = page.get_by_text(re.compile(rf"matching span\(s\) of span 0:{start}:{end} of hidden_state")).inner_text()
    assert int(re.match(r"(\d+) matching", caption).group(1)) == want.n_matches
    rows = grid_rows(page)
    assert rows[0] == ["rank", "sequence", "start", "end", "length", "score", "overlap"], rows[0]
    body = [r for r in rows[1:] if r]
    assert len(body) == min(len(want.matches), len(body)) and len(body) >= 2
    for got, (_, ref) in zip(body, want.matches.iterrows()):
        assert [int(v) for v in got[:5]] == [int(ref[c]) for c in ("rank", "sequence", "start", "end", "length")]
        assert float(got[5]) == pytest.approx(float(ref["score"]), abs=1e-4)
    small_screenshot(page, SCREENSHOTS / "search_drag.png")

    # click the second match: that sequence opens at that step
    pick = body[1]
    page.locator('[data-testid="stDataFrame"]').first.scroll_into_view_if_needed()
    grid = page.locator('[data-testid="stDataFrame"]').first.bounding_box()
    page.mouse.click(grid["x"] + 18, grid["y"] + 35 * 2 + 17)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stMain\"] h1')].some(h => h.innerText.trim() === "
        "'Gates over the input')",
        timeout=60_000,
    )
    wait_idle(page)
    seq, step = int(pick[1]), int(pick[2])
    page.get_by_text(f"Opened from Search: sequence {seq} at step {step}.").wait_for()
    assert page.get_by_label(re.compile(r"^Sequence \(")).input_value() == str(seq)
    no_exception(page)


# ----------------------------------------------------------------------------------------------------------------
# issue 17: every chart of two own models readable


_CHART_TEXT_JS = """() => [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')].map(el => {
    // what can be seen of the chart: its element, inside its column when it is in one
    const own = el.getBoundingClientRect();
    const col = el.closest('[data-testid="stColumn"]');
    const c = col ? col.getBoundingClientRect() : own;
    const view = {left: Math.max(own.left, c.left), right: Math.min(own.right, c.right),
                  top: Math.max(own.top, c.top), bottom: Math.min(own.bottom, c.bottom)};
    // 4 px of slack: a text's box holds its line spacing around the glyphs (19 px for a 12 px font)
    const cut = r => r.width > 0 && (r.left < view.left - 4 || r.right > view.right + 4
                                     || r.top < view.top - 4 || r.bottom > view.bottom + 4);
    const texts = sel => [...el.querySelectorAll(sel)].map(t => ({
        text: t.textContent, hidden: t.getAttribute('opacity') === '0' || getComputedStyle(t).opacity === '0',
        clipped: cut(t.getBoundingClientRect()) ? JSON.stringify([t.getBoundingClientRect(), view]) : ''}));
    const legends = [...el.querySelectorAll('g.role-legend')].map(g => ({
        title: [...g.querySelectorAll('.role-legend-title text')].map(t => t.textContent).join(' '),
        labels: [...g.querySelectorAll('.role-legend-label text')].map(t => t.textContent)}));
    return {
        svg: !!el.querySelector('svg.marks'),
        axisLabels: texts('.role-axis-label text'),
        axisTitles: texts('.role-axis-title text'),
        titles: texts('.role-title text'),
        legendLabels: texts('.role-legend-label text'),
        legends: legends,
    };
})"""


_MONTH = re.compile(r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\w*( \d+)?|\w{3} \d{1,2}|\d{4}")


def _is_name(text: str) -> bool:
    """A label that names something (a layer, a feature, a signal), not a tick number or a date."""
    return bool(re.search(r"[A-Za-z_]", text)) and not _MONTH.fullmatch(text.strip())


def _check_charts(page, layers: list[str], where: str) -> int:
    """Every chart on the page: drawn as SVG, nothing cut or hidden, every 'layer' legend lists every layer."""
    charts = page.evaluate(_CHART_TEXT_JS)
    for i, c in enumerate(charts):
        name = f"{where}, chart {i}"
        assert c["svg"], f"{name}: not drawn as SVG"
        for kind in ("axisLabels", "axisTitles", "titles", "legendLabels"):
            for t in c[kind]:
                assert not t["text"].rstrip().endswith(("…", "...")), f"{name}: {kind} cut: {t['text']!r}"
                assert not t["clipped"], f"{name}: {kind} drawn outside the chart's box: {t['text']!r} {t['clipped']}"
                # numbers and dates on a continuous axis may be thinned out; a name never is
                assert not (t["hidden"] and _is_name(t["text"])), f"{name}: {kind} hidden by overlap: {t['text']!r}"
        for legend in c["legends"]:
            if legend["title"].strip() == "layer":
                assert set(legend["labels"]) == set(layers), f"{name}: legend {legend['labels']} != {layers}"
    return len(charts)


def _tour(page, kind: str, layers: list[str]) -> dict[str, int]:
    """Visit every page, check its charts, save its screenshot; returns the charts checked per page."""
    out = SCREENSHOTS / kind
    out.mkdir(parents=True, exist_ok=True)
    seen = {}
    for name, title in PAGES:
        nav(page, title)
        if name in ("units", "features", "memory", "explain"):
            wait_charts(page, 1)
        if name == "export":
            page.get_by_role("button", name=re.compile(r"^units\.csv · ")).wait_for()  # offered once ready
        page.wait_for_timeout(400)  # the last chart's SVG is drawn after the script is idle
        no_exception(page)
        page.evaluate("window.scrollTo(0, 0)")
        small_screenshot(page, out / f"{name}.png")
        seen[name] = _check_charts(page, layers, f"{kind} {name}")
    return seen


def _set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def test_bidirectional_text_model_every_chart_readable(page, server, tmp_path):
    import keras

    keras.utils.set_random_seed(3)
    vocab = ["", "[UNK]", *sorted(set(LICENCE))]
    model = keras.Sequential(
        [
            keras.Input((48,), dtype="int32"),
            keras.layers.Embedding(len(vocab), 6, mask_zero=True, name="embedding"),
            keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), name="licence_bilstm"),
            keras.layers.GRU(3, return_sequences=True, name="licence_gru"),
            keras.layers.Dense(len(vocab), activation="softmax"),
        ],
        name="licence_chars",
    )
    model.save(tmp_path / "licence_chars.keras")
    (tmp_path / "licence_chars.vocab.json").write_text(json.dumps({"tokens": vocab, "level": "char"}))
    (tmp_path / "licences.txt").write_text(LICENCE * 3)

    goto(page, server.url, "")
    page.get_by_test_id("stRadioGroup").get_by_text("Upload my own").click()
    wait_idle(page)
    upload(page, 0, tmp_path / "licence_chars.keras")
    upload(page, 1, tmp_path / "licence_chars.vocab.json")
    nav(page, "Data")
    upload(page, 0, tmp_path / "licences.txt")
    page.get_by_text("Sequences analysed").wait_for()
    nav(page, "Model")
    page.get_by_text(re.compile(r"Verification: PASS")).wait_for()
    layers = ["licence_bilstm/forward", "licence_bilstm/backward", "licence_gru"]
    seen = _tour(page, "text", layers)
    assert seen["units"] >= 3 and seen["features"] >= 1 and seen["memory"] >= 1, seen


def test_multivariate_series_model_every_chart_readable(page, server, tmp_path):
    import keras
    import pandas as pd

    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [
            keras.Input((4, 5)),
            keras.layers.LSTM(4, return_sequences=True, name="quarterly_encoder"),
            keras.layers.LSTM(3, return_sequences=True, name="quarterly_decoder"),
            keras.layers.Dense(1),
        ],
        name="quarters",
    )
    model.save(tmp_path / "quarters.keras")
    dates = pd.period_range("2021Q1", periods=12, freq="Q").to_timestamp().strftime("%Y-%m-%d")
    values = np.random.default_rng(8).normal(size=(12, 5)).round(3)
    pd.DataFrame(values, columns=SERIES).assign(date=dates)[["date", *SERIES]].to_csv(
        tmp_path / "quarters.csv", index=False
    )

    goto(page, server.url, "")
    page.get_by_test_id("stRadioGroup").get_by_text("Upload my own").click()
    wait_idle(page)
    upload(page, 0, tmp_path / "quarters.keras")
    nav(page, "Data")
    upload(page, 0, tmp_path / "quarters.csv")
    _set_number(page, "Stride (steps between window starts)", 1)
    page.get_by_text("Sequences analysed").wait_for()
    assert page.locator('[data-testid="stMetricValue"]').first.inner_text().strip() == "9"
    nav(page, "Model")
    page.get_by_text(re.compile(r"Verification: PASS")).wait_for()
    layers = ["quarterly_encoder", "quarterly_decoder"]
    seen = _tour(page, "series", layers)
    assert seen["gates"] >= 1 and seen["units"] >= 3, seen

    # the gates page: dates on the axis, and the whole series as one strip
    nav(page, "Gates over the input")
    wait_charts(page, 1)
    labels = page.evaluate(_CHART_TEXT_JS)[0]["axisLabels"]
    assert any(re.search(r"20(21|22)", t["text"]) for t in labels), labels
    page.get_by_text("Whole series", exact=True).click()
    wait_idle(page)
    page.get_by_text(re.compile(r"The whole series \(12 records\)")).wait_for()
    page.wait_for_timeout(400)
    _check_charts(page, layers, "series gates, whole series")
    labels = page.evaluate(_CHART_TEXT_JS)[0]["axisLabels"]
    assert any("2023" in t["text"] or "Oct" in t["text"] for t in labels), labels
    page.set_viewport_size({"width": VIEWPORT["width"], "height": 2000})  # the page scrolls inside: grow it
    page.wait_for_timeout(600)
    chart = page.locator('[data-testid="stVegaLiteChart"]').first
    small_screenshot(chart, SCREENSHOTS / "series" / "gates_whole_series.png")  # the whole chart, dates below
