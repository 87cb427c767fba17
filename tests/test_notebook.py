"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient + ipykernel) and prints numbers
that this test recomputes from the files the notebook wrote (the run's Zarr chunks read with zarr itself, its
manifest, the exported CSV), and shows its charts.

The kernel is this test's own Python (a kernelspec written into a temporary JUPYTER_PATH), so it imports the
same gatelens as the tests.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"
KERNEL = "gatelens-test-python3"
#: Altair's HTML output embeds the Vega-Lite spec as the first argument of its loader call.
SPEC = re.compile(r"\}\)\((\{.*\}), \{\"mode\": \"vega-lite\"\}\);", re.S)


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def _data(cell) -> dict:
    out = {}
    for o in cell.get("outputs", []):
        out.update(o.get("data", {}))
    return out


def _spec(cell) -> dict:
    html = _data(cell).get("text/html", "")
    m = SPEC.search(html)
    assert m, f"no Vega-Lite chart in the output of {cell.source!r}"
    return json.loads(m.group(1))


def _cell(nb, code: str):
    """The (only) code cell whose source contains ``code``."""
    found = [c for c in nb.cells if c.cell_type == "code" and code in c.source]
    assert len(found) == 1, code
    return found[0]


def _number(pattern: str, text: str) -> str:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in {text!r}"
    return m.group(1)


def test_the_committed_notebook_carries_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    home = tmp_path_factory.mktemp("jupyter")
    spec = home / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(home))
    mp.setenv("JUPYTER_RUNTIME_DIR", str(home / "runtime"))
    mp.setenv("IPYTHONDIR", str(home / "ipython"))
    mp.setenv("JUPYTER_PLATFORM_DIRS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    workdir = None
    try:
        client = nbclient.NotebookClient(
            nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(home)}}, allow_errors=False
        )
        client.execute()  # raises CellExecutionError on the first cell that fails
        workdir = Path(_number(r"working folder: (\S+)", _text(nb.cells[1])))
        yield nb, workdir
    finally:
        mp.undo()
        # the notebook's own temporary folder (made by tempfile.mkdtemp with its prefix): removed after the test
        if workdir is not None and workdir.name.startswith("gatelens-quickstart-"):
            if workdir.parent == Path(tempfile.gettempdir()):
                shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.slow
def test_every_cell_ran_without_an_error(executed):
    nb, _ = executed
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.get("output_type") == "error"]


@pytest.mark.slow
def test_printed_numbers_are_what_the_run_holds(executed):
    import zarr

    nb, workdir = executed
    run = workdir / "run"
    forget = np.asarray(zarr.open_array(run / "layers/lstm/forget_gate", mode="r")[...], np.float64)
    mask = np.asarray(zarr.open_array(run / "layers/lstm/mask", mode="r")[...], bool)
    manifest = json.loads((run / "manifest.json").read_text())
    n, t, units = forget.shape
    assert (n, t) == (8, 50)

    out = _text(_cell(nb, "write_run("))
    verification = float(_number(r"max \|h recomputed - h Keras\|: (\S+)", out))
    assert verification == pytest.approx(manifest["verification"]["lstm"], rel=1e-2)  # printed to 3 digits
    assert verification < 1e-4

    means = [
        float(v) for v in _number(r"mean forget gate per unit: ([-\d. ]+)", _text(_cell(nb, "mean_forget"))).split()
    ]
    expected = np.where(mask[..., None], forget, np.nan)
    assert np.allclose(means, np.nanmean(expected, axis=(0, 1)), atol=5e-5)  # printed to 4 decimals

    assert int(_number(r"rows of the frame: (\d+)", _text(_cell(nb, "to_frame(")))) == mask[0].sum() * units * 2

    # half-life, recomputed from the raw gate: ln(0.5) / mean over real steps of ln(forget gate)
    out = _text(_cell(nb, "half_lives.sort_values"))
    unit = int(_number(r"longest memory: unit (\d+)", out))
    half_life = float(_number(r"half-life ([\d.]+) steps", out))
    hl = np.log(0.5) / np.log(forget[mask]).mean(axis=0)
    assert unit == int(np.argmax(hl)) and half_life == pytest.approx(hl[unit], abs=5e-5)

    rows = int(_number(r"rows of activations.csv: (\d+)", _text(_cell(nb, "export_csvs("))))
    assert rows == mask.sum() * units
    with open(workdir / "csv" / "activations.csv", encoding="utf-8") as f:
        assert sum(1 for _ in f) == rows + 1  # the header


@pytest.mark.slow
def test_charts_and_the_dataset_are_shown(executed):
    nb, workdir = executed
    ds_html = _data(_cell(nb, 'run.to_xarray("lstm")')).get("text/html", "")
    assert "xarray.Dataset" in ds_html and "forget_gate" in ds_html
    assert "<table" in _data(_cell(nb, "frame.head()")).get("text/html", "")

    gates = _spec(_cell(nb, "gatelens.plot.gates("))
    assert len(gates["vconcat"]) == 6  # the input, then 5 strips
    strip = gates["datasets"][gates["vconcat"][2]["data"]["name"]]
    assert len(strip) == 50 * 3  # 50 steps x the 3 units asked for

    hist = _spec(_cell(nb, "gatelens.plot.half_lives("))
    counts = hist["datasets"][hist["data"]["name"]]
    units = int(np.asarray(json.loads((workdir / "run" / "manifest.json").read_text())["layers"][0]["units"]))
    assert sum(r["units"] for r in counts) == units  # every unit has a finite half-life here

    dec = _spec(_cell(nb, "gatelens.plot.decomposition("))
    bars = dec["datasets"][dec["layer"][0]["data"]["name"]]
    assert len(bars) == 51  # the initial state and the writes of the 50 steps
