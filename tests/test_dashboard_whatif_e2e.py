"""End to end, the "What if" page: a real ``streamlit run`` on the tiny demos of :mod:`e2e_helpers`, in Debian's
headless Chromium. Clamp a unit's forget gate, the output-change chart is drawn, and its numbers equal
:func:`gatelens.intervene` on the same input, computed here:

* the chart's data as the server sent it to the browser (the Arrow dataset of the Vega-Lite chart element in the
  app's websocket messages), to float round-off;
* the bars Vega drew (one ``path`` per step in the chart's svg, its ``aria-label`` naming its step and change).

Chromium is ``/usr/bin/chromium`` (never downloaded); outside CI the test skips when it is missing.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from e2e_helpers import (
    StreamlitServer,
    build_tiny_demos,
    goto,
    launch_browser,
    require_chromium,
    wait_charts,
    wait_idle,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TITLE = "Change of the loss of the next token"


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    require_chromium()
    return build_tiny_demos(tmp_path_factory.mktemp("demos"))


@pytest.fixture(scope="module")
def server(demos, tmp_path_factory):
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    env = {"GATELENS_DEMO_DIR": str(demos["text_model"].parent)}
    # every message in full over the websocket (none replaced by a reference to the browser's cache)
    with StreamlitServer(log_path=log, env=env, args=["--global.minCachedMessageSize", str(1 << 30)]) as srv:
        yield srv


def _chart_messages(frames: list[bytes]) -> list[tuple[str, object]]:
    """(spec, data frame) of every Vega-Lite chart element in the server's messages, in order."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    out = []
    for payload in frames:
        msg = ForwardMsg.FromString(payload)
        assert not msg.HasField("ref_hash"), "a cached message reference: minCachedMessageSize did not apply"
        if msg.WhichOneof("type") != "delta" or msg.delta.WhichOneof("type") != "new_element":
            continue
        el = msg.delta.new_element
        if el.WhichOneof("type") != "vega_lite_chart":
            continue
        chart = el.vega_lite_chart
        frames_ = [convert_arrow_bytes_to_pandas_df(d.data.data) for d in chart.datasets]
        if chart.HasField("data"):
            frames_.append(convert_arrow_bytes_to_pandas_df(chart.data.data))
        out.append((chart.spec, max(frames_, key=len)))
    return out


def _set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(re.compile(label))
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)
    assert box.input_value() == str(value)


def test_whatif_clamp_draws_the_librarys_output_change(server, demos, tmp_path):
    from playwright.sync_api import sync_playwright

    from gatelens.analysis.effects import step_effects
    from gatelens.models import load_model
    from gatelens.models.data import load_data
    from gatelens.models.intervene import intervene, resolve_targets
    from gatelens.models.spec import input_spec, read_vocabulary

    frames: list[bytes] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = launch_browser(p)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.set_default_timeout(180_000)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on(
                "websocket",
                lambda ws: ws.on("framereceived", lambda f: frames.append(f) if isinstance(f, bytes) else None),
            )
            goto(page, server.url, "whatif")
            assert page.locator('[data-testid="stMain"] h1').first.inner_text().strip() == "What if"
            wait_charts(page, 1)
            # the page opens on the selected unit (the analysis' pick, which may sit in lstm_1): choose lstm
            page.get_by_test_id("stSelectbox").filter(has_text="Layer").click()
            page.get_by_role("option", name="lstm", exact=True).click()
            wait_idle(page)
            _set_number(page, r"^Unit \(0\.\.7\)", 3)
            _set_number(page, r"^Sequence \(0\.\.\d+\)", 1)  # every sequence of the demo is analysed
            page.get_by_test_id("stRadioGroup").get_by_text("forget now (f = 0)", exact=True).click()
            wait_idle(page)
            wait_charts(page, 1)
            # the page stands where the test put it (else the comparison below is with another intervention)
            assert page.get_by_label(re.compile(r"^Unit \(0\.\.7\)")).input_value() == "3"
            assert page.get_by_label(re.compile(r"^Sequence \(0\.\.\d+\)")).input_value() == "1"
            assert page.get_by_role("radio", name="forget now (f = 0)").is_checked()
            assert page.locator('[data-testid="stException"]').count() == 0
            chart = page.locator('[data-testid="stVegaLiteChart"]').filter(has_text=TITLE)
            bars = chart.locator("svg.marks .mark-rect path").evaluate_all(
                "els => els.map(e => [e.getAttribute('aria-label'), e.getBoundingClientRect().x])"
            )
            labels = chart.locator("svg.marks g[aria-label^='X-axis'] .role-axis-label text").evaluate_all(
                "els => els.map(e => [e.textContent, e.getBoundingClientRect().x])"
            )
            page.screenshot(path=str(tmp_path / "whatif.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, f"JavaScript errors in the page: {errors}"

    # the library's own numbers, on the same input (sequence 1 of the demo text)
    model = load_model(demos["text_model"])
    x = load_data(demos["text_data"], input_spec(model, vocabulary=read_vocabulary(demos["vocab"]))).x[1:2]
    res = intervene(model, x, "lstm:3:forget_gate=0")
    targets = resolve_targets("next_token", x)
    ref = step_effects(res.original, res.intervened, "loss", targets)
    assert np.nanmax(np.abs(ref["effect"])) > 1e-4  # the clamp changes the loss: the comparison is not of zeros

    sent = [df for spec, df in _chart_messages(frames) if TITLE in spec]
    assert sent, "no chart of the loss change reached the browser"
    data = sent[-1]  # the last one sent: the page as it stands after the clicks
    assert data["step"].tolist() == list(range(x.shape[1]))
    np.testing.assert_allclose(data["change"], ref["effect"][0], rtol=1e-9, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(data["original"], ref["original"][0], rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(data["intervened"], ref["intervened"][0], rtol=1e-9, equal_nan=True)

    # the bars drawn: one per step with a loss (the last step has no next token), each at its change
    drawn = {}
    for label, _ in sorted(bars, key=lambda b: b[1]):
        step = re.search(r"(?:^|; )step: (\d+)", label)
        change = re.search(r"(?:^|; )change: (-?[\d.e+-]+|−[\d.e+-]+)", label)
        assert step and change, label
        drawn[int(step.group(1))] = float(change.group(1).replace("−", "-"))
    defined = np.flatnonzero(np.isfinite(ref["effect"][0]))
    assert list(drawn) == defined.tolist()  # left to right in step order
    np.testing.assert_allclose([drawn[s] for s in defined], ref["effect"][0][defined], rtol=1e-5, atol=1e-9)

    # under the bars, the input: one label per step, left to right, each token made visible
    vocab = json.loads(demos["vocab"].read_text())["tokens"]
    visible = {" ": "␣", "\n": "↵", "\t": "→"}
    expected = [visible.get(vocab[i], vocab[i]) for i in x[0]]
    assert [t for t, _ in sorted(labels, key=lambda lab: lab[1])] == expected
