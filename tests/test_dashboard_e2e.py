"""End to end: a real ``streamlit run dashboards/app.py`` server driven by Debian's headless Chromium (Playwright).

One server and one browser for the module. The tour opens the bundled demo (analysed on first open, no
upload), waits for each page's charts to be drawn and saves a screenshot of every page to
``docs/screenshots/<page>.png`` (the README shows them). The upload test sends a ``.keras`` model and an
``.npy`` file this test made with Keras, sees the verification badge pass, opens a unit, downloads the
export and checks its CSVs against :func:`gatelens.models.extract` and :func:`gatelens.analysis.stats.unit_stats` computed
here; then a broken model file must give its error message, not a traceback.

Chromium is ``/usr/bin/chromium`` (never downloaded). Outside CI the tests skip when it is missing; with
``CI`` set they run or fail.
"""

from __future__ import annotations

import re
from pathlib import Path

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
    upload,
    wait_charts,
    wait_idle,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOTS = REPO / "docs" / "screenshots"
UPLOAD_LIMIT_MB = 2
VIEWPORT = {"width": 1440, "height": 1000}
PAGES = {
    "model": "Model",
    "data": "Data",
    "gates": "Gates over the input",
    "units": "Units",
    "features": "Features",
    "memory": "Memory",
    "explain": "Unit explained",
    "whatif": "What if",
    "search": "Search",
    "export": "Export",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_chromium()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    # the real bundled demos (no GATELENS_DEMO_DIR); a small upload limit so that the test can exceed it
    with StreamlitServer(log_path=log, args=["--server.maxUploadSize", str(UPLOAD_LIMIT_MB)]) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(server):
    yield from browser_session()


@pytest.fixture
def page(browser, server):
    yield from page_session(browser, VIEWPORT)


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)


def test_first_visit_to_a_page_url_and_the_upload_limit(page, server, tmp_path):
    """Runs first on the fresh server: a first request straight to /data gets the app's own navigation."""
    big = tmp_path / "big.npy"
    np.save(big, np.zeros((UPLOAD_LIMIT_MB * 1024 * 1024 // 4 + 1000,), np.float32))
    goto(page, server.url, "data")
    assert page.locator('[data-testid="stMain"] h1').first.inner_text().strip() == "Data"
    nav = page.locator('[data-testid="stSidebarNavLink"]').all_inner_texts()
    assert [t.split("\n")[-1] for t in nav] == list(PAGES.values())  # app.py's st.navigation, not pages/ listing
    page.get_by_test_id("stRadioGroup").get_by_text("Upload", exact=True).click()
    wait_idle(page)
    assert page.get_by_text(f"Up to {UPLOAD_LIMIT_MB} MB per file").count() >= 1
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(big))
    page.get_by_text(re.compile(r"File must be .* or smaller")).wait_for(timeout=30_000)
    no_exception(page)


def test_demo_tour_draws_every_page(page, server):
    goto(page, server.url, "")
    no_exception(page)
    # the bundled demo is loaded, re-run, verified and analysed on first open: no upload needed
    badge = page.get_by_text(re.compile(r"Verification: PASS · max error \d\.\de[-+]\d\d"))
    badge.wait_for()
    assert page.locator('[data-testid="stMain"] h1').first.inner_text().strip() == "Model"
    _shot(page, "model")

    nav(page, "Data")
    assert page.get_by_text("Sequences analysed").count() == 1
    _shot(page, "data")

    nav(page, PAGES["gates"])
    tokens = page.locator("span.gl-tok")
    assert tokens.count() >= 100
    title = tokens.first.get_attribute("title")
    for signal in ("forget_gate", "input_gate", "output_gate", "cell_state"):
        assert signal in title
    assert page.locator('[data-testid="stMain"] script').count() == 0
    _shot(page, "gates")

    nav(page, "Units")
    wait_charts(page, 4)  # three saturation scatters and the half-life histogram
    _shot(page, "units")

    nav(page, "Features")
    wait_charts(page, 2, timeout=600_000)  # the heatmap, then the probes as their stage finishes (the page re-runs)
    _shot(page, "features")

    nav(page, "Memory")
    wait_charts(page, 3)
    _shot(page, "memory")

    nav(page, PAGES["explain"])
    wait_charts(page, 1)
    assert page.get_by_text("How long it remembers.").count() == 1
    _shot(page, "explain")

    for name in ("whatif", "search"):
        nav(page, PAGES[name])
        no_exception(page)
        _shot(page, name)

    nav(page, "Export")  # each table offered once its stage is done (units.csv after the summary stage)
    page.get_by_role("button", name=re.compile(r"^units\.csv · ")).wait_for(timeout=180_000)
    _shot(page, "export")

    # click a point of the forget-gate scatter: that unit opens, and the Unit explained page explains it
    nav(page, "Units")
    wait_charts(page, 4)
    point = page.locator('[data-testid="stVegaLiteChart"]').nth(1).locator(".mark-symbol path").nth(3)
    box = point.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    label = page.evaluate("([x, y]) => document.elementFromPoint(x, y).getAttribute('aria-label') || ''", [x, y])
    hit = re.search(r"layer: (\S+); unit: (\d+);", label)
    assert hit, label
    page.mouse.click(x, y)
    wait_idle(page)
    page.get_by_text(f"Opened: {hit.group(1)} · unit {hit.group(2)}").wait_for()
    nav(page, PAGES["explain"])
    assert page.get_by_text(re.compile(f"^Unit {hit.group(2)} of layer {hit.group(1)} ")).count() == 1
    no_exception(page)


def test_search_a_span_then_open_a_match(page, server):
    """Select a span by step numbers on the Search page, see the units on and the matches, click one to open it."""
    import math

    goto(page, server.url, "")
    page.get_by_text(re.compile(r"Verification: PASS")).wait_for()
    nav(page, PAGES["search"])
    for label, value in [("From step", "2"), ("To step", "6")]:
        box = page.get_by_label(re.compile(f"^{label} \\("))
        box.fill(value)
        box.press("Enter")
        wait_idle(page)
    error = page.locator('[data-testid="stAlertContentError"]')
    if error.count():  # no unit is that high over this span: the page says the highest minimum; go just below it
        low = float(re.search(r"highest minimum is (-?[\d.e+-]+)", error.inner_text()).group(1))
        box = page.get_by_label("On at >=", exact=True)
        box.fill(f"{math.floor(low * 100) / 100:.2f}")
        box.press("Enter")
        wait_idle(page)
    no_exception(page)
    assert error.count() == 0, error.first.inner_text()
    units = page.locator('[data-testid="stMarkdownContainer"] p').filter(has_text="Units on over the span").inner_text()
    assert re.search(r": \d+(, \d+)*$", units), units
    caption = page.get_by_text(re.compile(r"matching span\(s\) of span 0:2:6 of hidden_state")).inner_text()
    n_matches = int(re.match(r"(\d+) matching", caption).group(1))
    rows = grid_rows(page)
    assert rows[0] == ["rank", "sequence", "start", "end", "length", "score", "overlap"], rows[0]
    body = [r for r in rows[1:] if r]
    assert n_matches >= 1 and len(body) >= 1
    # the query span itself is one of the matches
    assert any(r[1:3] == ["0", "2"] and int(r[3]) >= 6 for r in rows[1:]) or n_matches > len(body)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "search_matches.png"), full_page=False)
    # click the checkbox of the second match (row marker column; header and rows 35 px high)
    pick = body[1] if len(body) > 1 else body[0]
    index = body.index(pick)
    page.locator('[data-testid="stDataFrame"]').first.scroll_into_view_if_needed()  # below the span chart
    grid = page.locator('[data-testid="stDataFrame"]').first.bounding_box()
    page.mouse.click(grid["x"] + 18, grid["y"] + 35 * (index + 1) + 17)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stMain\"] h1')].some(h => h.innerText.trim() === "
        f"{PAGES['gates']!r})",
        timeout=60_000,
    )
    wait_idle(page)
    seq, start = int(pick[1]), int(pick[2])
    page.get_by_text(f"Opened from Search: sequence {seq} at step {start}.").wait_for()
    assert page.get_by_label(re.compile(r"^Sequence \(")).input_value() == str(seq)
    assert page.locator("span.gl-tok").count() >= 100
    no_exception(page)


def test_explain_page_examples_and_histogram(page, server):
    goto(page, server.url, "")
    page.get_by_text(re.compile(r"Verification: PASS")).wait_for()
    nav(page, PAGES["explain"])
    # the examples and the scores fill in as their stages finish: the page re-runs itself, no reload
    page.locator("span.gl-mark").nth(4).wait_for(timeout=600_000)
    page.get_by_text(re.compile(r"score -?\d\.\d\d on held-out sequences")).wait_for(timeout=600_000)
    wait_charts(page, 2)  # the unit's lines and its histogram
    assert page.locator("span.gl-mark").count() == 5  # the five top examples, each step outlined
    no_exception(page)
    page.get_by_text("Where else it does this").scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "explain_examples.png"), full_page=True)


def test_upload_verify_open_unit_export(page, server, tmp_path):
    import keras

    from gatelens.analysis.export import read_csv
    from gatelens.analysis.stats import unit_stats
    from gatelens.models import extract

    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [keras.Input((9, 2)), keras.layers.LSTM(5, return_sequences=True, name="lstm"), keras.layers.Dense(1)],
        name="e2e_model",
    )
    model_path = tmp_path / "e2e model.keras"
    model.save(model_path)
    x = np.random.default_rng(3).normal(size=(6, 9, 2)).astype(np.float32)
    data_path = tmp_path / "inputs.npy"
    np.save(data_path, x)

    goto(page, server.url, "")
    page.get_by_test_id("stRadioGroup").get_by_text("Upload my own").click()
    wait_idle(page)
    upload(page, 0, model_path)
    page.get_by_text("Verification needs input").wait_for()

    nav(page, "Data")
    upload(page, 0, data_path)
    page.get_by_text("Sequences analysed").wait_for()
    assert page.locator('[data-testid="stMetricValue"]').first.inner_text().strip() == "6"

    nav(page, "Model")
    page.get_by_text(re.compile(r"Verification: PASS")).wait_for()
    assert page.get_by_text("e2e_model").count() >= 1
    no_exception(page)

    # open a unit: pick unit 3 in the "Open a unit" box of the Units page, then read its explanation
    nav(page, "Units")
    wait_charts(page, 4)
    unit_input = page.get_by_label(re.compile(r"Unit \(0\.\.4\)"))
    unit_input.fill("3")
    unit_input.press("Enter")
    wait_idle(page)
    page.get_by_text("Opened: lstm · unit 3").wait_for()
    nav(page, PAGES["explain"])
    assert page.get_by_text(re.compile(r"^Unit 3 of layer lstm \(LSTM, 5 units\)")).count() == 1

    # the export: each table offered on its own (activations written on demand), read from disk when clicked
    nav(page, "Export")
    (tmp_path / "csv").mkdir()
    page.get_by_role("button", name="Write activations.csv").click()
    for name in ("activations.csv", "units.csv"):
        button = page.get_by_role("button", name=re.compile(rf"^{re.escape(name)} · "))
        button.wait_for(timeout=180_000)
        with page.expect_download() as dl:
            button.click()
        Path(dl.value.path()).rename(tmp_path / "csv" / name)
    acts = read_csv(tmp_path / "csv" / "activations.csv")
    units = read_csv(tmp_path / "csv" / "units.csv")

    ref = extract(keras.saving.load_model(model_path), x)  # the library's own numbers, computed here
    for seq, step, unit in [(0, 0, 0), (2, 5, 3), (5, 8, 4)]:
        row = acts[(acts.layer == "lstm") & (acts.sequence == seq) & (acts.step == step) & (acts.unit == unit)]
        assert len(row) == 1
        for signal in ("forget_gate", "input_gate", "cell_state", "hidden_state"):
            assert np.float32(row[signal].iloc[0]) == ref["lstm"][signal][seq, step, unit], (signal, seq, step, unit)
    assert len(acts) == 6 * 9 * 5
    stats = unit_stats(ref)
    for signal in ("forget_gate", "output_gate"):
        exp = stats[stats.signal == signal].sort_values("unit")
        got = units[(units.layer == "lstm") & (units.signal == signal)].sort_values("unit")
        np.testing.assert_allclose(got["mean"], exp["mean"], rtol=1e-6)
        np.testing.assert_allclose(got["frac_above_0.9"], exp["frac_above_0.9"], rtol=0, atol=0)


def test_bad_model_file_shows_its_error(page, server, tmp_path):
    bad = tmp_path / "not a model.keras"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    goto(page, server.url, "")
    page.get_by_test_id("stRadioGroup").get_by_text("Upload my own").click()
    wait_idle(page)
    upload(page, 0, bad)
    alert = page.locator('[data-testid="stAlertContentError"]')
    alert.wait_for()
    text = alert.inner_text()
    assert "The file is not a readable Keras model" in text
    assert "not a model.keras" in text
    assert "Traceback" not in text and "gatelens-session-" not in text
    no_exception(page)
