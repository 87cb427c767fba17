# ruff: noqa: E402  (the import path is set before the project's imports)
"""The dashboard's upload flow, timed in a real browser: upload to first chart, to every analysis stage ready.

A real ``streamlit run dashboards/app.py`` server (``tests/e2e_helpers.StreamlitServer``) driven by Debian's
headless Chromium (Playwright, ``/usr/bin/chromium``, never downloaded). The script builds a small Keras model
(LSTM, 16 units, 4 inputs, 80 steps, random weights: no training) and ``.npy`` inputs of 256 and 5,000
sequences, and for each size, in a fresh browser session:

1. uploads the model on the Model page and the data on the Data page (the clock starts when the file is set);
2. opens the Units page and waits for its first chart (the saturation scatter: extraction, verified against
   Keras, and the summary stage done): *upload to first chart*;
3. on the largest size, opens every page while the later stages (detail, features, probes) still run and
   times each from the click on its link to the page showing something of its own (its title and an element
   below it, a control counts), and to its content (a chart, table, coloured text, metric, a progress bar
   naming the stage it waits for, or a download);
4. waits for the sidebar to say every stage is ready: *upload to all analyses ready*.

Nothing is asserted (``--quick``, tiny sizes, is the smoke test's); the machine's load is printed with the
tables, since the dashboard shares the CPU with whatever else runs.

    python benchmarks/dashboard.py [--sizes 256,5000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# benchmarks/analysis.py would shadow the `analysis` package: drop this folder from the import path
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the browser tests' server and Chromium helpers

import numpy as np
from e2e_helpers import CHROMIUM, StreamlitServer, click_through, launch_browser, nav_link, wait_idle

STEPS, FEATURES, UNITS = 80, 4, 16
#: Longest wait for a page's content before the tour notes a timeout (``inf`` in the table) and goes on.
CONTENT_TIMEOUT_S = 120
#: Wait for a page to show anything of its own before the tour diagnoses it and clicks its link once more.
FIRST_SHOWS_TIMEOUT_S = 120
#: Wait after that second click before the benchmark stops, naming the page.
SHOWS_TIMEOUT_S = 300
#: The pages opened while the later stages run, by their navigation title.
PAGES = ["Gates over the input", "Units", "Features", "Memory", "Unit explained", "What if", "Search", "Export"]
#: The page's own title and, below it, any element of its own that is not stale (a control counts).
_SHOWS_JS = """t => {
    const main = document.querySelector('[data-testid="stMain"]');
    if (!main || ![...main.querySelectorAll('h1')].some(h => h.innerText.trim() === t)) return false;
    const own = [...main.querySelectorAll('[data-testid="stElementContainer"]')]
        .filter(e => e.getAttribute('data-stale') !== 'true' && !e.querySelector('h1'));
    return own.length > 0;
}"""
#: Its content: a drawn chart, a table, coloured text, a metric, a message, a progress bar naming the stage it
#: waits for, or a download (the Export page's content once every table is ready).
_CONTENT_JS = """t => {
    const main = document.querySelector('[data-testid="stMain"]');
    if (!main || ![...main.querySelectorAll('h1')].some(h => h.innerText.trim() === t)) return false;
    const sel = ['[data-testid="stVegaLiteChart"] canvas', '[data-testid="stVegaLiteChart"] svg.marks',
                 '[data-testid="stDataFrame"]', '[data-testid="stHtml"]', '[data-testid="stMetric"]',
                 '[data-testid="stProgress"]', '[data-testid="stAlert"]',
                 '[data-testid="stDownloadButton"]', '[data-testid="stLinkButton"]'];
    for (const s of sel) {
        for (const el of main.querySelectorAll(s)) {
            const box = el.closest('[data-testid="stElementContainer"]');
            if (!box || box.getAttribute('data-stale') !== 'true') return true;
        }
    }
    return false;
}"""


def build_inputs(directory: Path, sizes: list[int]) -> tuple[Path, dict[int, Path]]:
    """A small LSTM forecaster (random weights) and one ``.npy`` input per size."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((STEPS, FEATURES), name="series"),
            keras.layers.LSTM(UNITS, return_sequences=True, name="lstm"),
            keras.layers.Dense(1, name="forecast"),
        ],
        name="bench_lstm",
    )
    model_path = directory / "bench_lstm.keras"
    model.save(model_path)
    rng = np.random.default_rng(0)
    data = {}
    for n in sizes:
        t = np.arange(STEPS, dtype=np.float32)
        phase = rng.uniform(0, 2 * np.pi, (n, 1, FEATURES)).astype(np.float32)
        x = np.sin(t[None, :, None] / 7.0 + phase) + rng.normal(0, 0.3, (n, STEPS, FEATURES)).astype(np.float32)
        data[n] = directory / f"series_{n}.npy"
        np.save(data[n], x.astype(np.float32))
    return model_path, data


def _nav(page, title: str, diagnose: Callable[[], None] | None = None) -> tuple[float, float, str]:
    """Click a page's link; seconds until it shows something of its own, and until it shows its content.

    A page that shows nothing of its own within :data:`FIRST_SHOWS_TIMEOUT_S` is diagnosed (what the browser
    shows, and ``diagnose()``: the server's threads), clicked once more, and the third value says so (the times
    then include the wait); one that still shows nothing within :data:`SHOWS_TIMEOUT_S` stops the benchmark.
    """
    t0 = time.perf_counter()
    note = f"showed nothing of its own {FIRST_SHOWS_TIMEOUT_S} s after the click, clicked again"

    def second_click(seen: str) -> None:
        print(f"# the {title!r} page {note}; {seen}", file=sys.stderr, flush=True)
        if diagnose is not None:
            diagnose()

    again = click_through(
        page,
        title,
        _SHOWS_JS,
        first_wait_ms=FIRST_SHOWS_TIMEOUT_S * 1000,
        second_wait_ms=SHOWS_TIMEOUT_S * 1000,
        on_second_click=second_click,
        polling=50,
    )
    note = note if again else ""
    shows = time.perf_counter() - t0
    try:
        page.wait_for_function(_CONTENT_JS, arg=title, timeout=CONTENT_TIMEOUT_S * 1000, polling=50)
    except Exception:  # playwright's TimeoutError: reported as such, the tour goes on
        return shows, float("inf"), note
    return shows, time.perf_counter() - t0, note


def _sidebar(page) -> str:
    return " · ".join(page.locator('[data-testid="stSidebar"] [data-testid="stCaptionContainer"]').all_inner_texts())


def _running_stages(page) -> str:
    text = _sidebar(page)
    if "all stages ready" in text:
        return "none"
    names = [s for s in ("Summary", "Detail", "Features", "Probes") if f"{s} · " in text and f"{s} · ready" not in text]
    return ", ".join(n.lower() for n in names) or "?"


def upload_flow(
    browser,
    url: str,
    model_path: Path,
    data_path: Path,
    *,
    tour: bool,
    until_ready: bool = True,
    diagnose: Callable[[], None] | None = None,
) -> dict:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(600_000)
    try:
        page.goto(f"{url}/", wait_until="domcontentloaded")
        wait_idle(page, 600_000)
        page.get_by_test_id("stRadioGroup").get_by_text("Upload my own", exact=True).click()
        wait_idle(page, 600_000)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(model_path))
        page.get_by_text("Verification needs input").wait_for()
        nav_link(page, "Data").click()
        page.get_by_test_id("stRadioGroup").get_by_text("Upload", exact=True).click()
        wait_idle(page, 600_000)
        t0 = time.perf_counter()
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(data_path))
        page.get_by_text("Sequences analysed").wait_for()  # the data is read: the analysis runs in the background
        _nav(page, "Units", diagnose)  # its first chart: the saturation scatter
        page.wait_for_function(
            """() => document.querySelectorAll('[data-testid="stVegaLiteChart"] canvas, '
                + '[data-testid="stVegaLiteChart"] svg.marks').length >= 1""",
            timeout=600_000,
            polling=50,
        )
        first = time.perf_counter() - t0
        pages = []
        if tour:
            for title in PAGES:
                running = _running_stages(page)
                pages.append((title, *_nav(page, title, diagnose), running))
        if not until_ready:  # the first chart only (benchmarks/cold.py)
            return {"first": first, "ready": float("nan"), "pages": pages}
        page.wait_for_function(
            """() => [...document.querySelectorAll('[data-testid="stSidebar"] [data-testid="stCaptionContainer"]')]
                .some(e => e.innerText.includes('all stages ready'))""",
            timeout=1_800_000,
            polling=100,
        )
        ready = time.perf_counter() - t0
        return {"first": first, "ready": ready, "pages": pages}
    finally:
        context.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="256,5000", help="sequences per upload, comma separated")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    args = p.parse_args()
    sizes = [16] if args.quick else [int(s) for s in args.sizes.split(",")]
    if not Path(CHROMIUM).is_file():
        print(f"{CHROMIUM} is missing (apt-get install chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gatelens-bench-dashboard-") as d:
        model_path, data = build_inputs(Path(d), sizes)
        results = {}
        with StreamlitServer(log_path=Path(d) / "server.log", timeout=300) as server, sync_playwright() as pw:
            browser = launch_browser(pw)

            def diagnose() -> None:
                """The server's log, with every thread's stack (gatelens.dashboards.sessions.install_stack_dump)."""
                if server.proc is not None and server.proc.poll() is None:
                    os.kill(server.proc.pid, signal.SIGUSR1)
                    time.sleep(2)
                print(f"the server's log, last lines:\n{server.log_tail(20_000)}", file=sys.stderr, flush=True)

            try:
                for n in sizes:
                    tour = n == max(sizes)
                    results[n] = upload_flow(browser, server.url, model_path, data[n], tour=tour, diagnose=diagnose)
                    r = results[n]
                    print(
                        f"# {n:,} sequences: first chart {r['first']:.1f} s, all ready {r['ready']:.1f} s", flush=True
                    )
            except Exception:
                diagnose()
                raise
            finally:
                browser.close()
    load_after = os.getloadavg()

    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s); load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after. Model: LSTM {UNITS} units, {FEATURES} inputs, {STEPS} steps (random weights).\n"
    )
    print("| N (sequences) | steps analysed | upload to first chart (s) | upload to all analyses ready (s) |")
    print("|---|---|---|---|")
    for n, r in results.items():
        print(f"| {n:,} | {n * STEPS:,} | {r['first']:.1f} | {r['ready']:.1f} |")
    n = max(sizes)
    print(f"\nPages opened while the later stages run ({n:,}-sequence upload):\n")
    print(
        "| page | s until it shows something | s until a chart, table or progress bar | stages running when opened "
        "| note |"
    )
    print("|---|---|---|---|---|")
    for title, shows, content, note, running in results[n]["pages"]:
        print(f"| {title} | {shows:.2f} | {content:.2f} | {running} | {note} |")
    worst = max((p[1] for p in results[n]["pages"]), default=float("nan"))
    worst_content = max((p[2] for p in results[n]["pages"]), default=float("nan"))
    print(f"\nslowest page: {worst:.2f} s to show something, {worst_content:.2f} s to its content (acceptance: 5 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
