"""The wheel as a user gets it: built from a copy of the repository, it holds only the ``gatelens`` package (with
the bundled data), declares every third-party package its code imports, and works when installed with
``--no-deps`` into a fresh virtual environment that sees the project venv's third-party packages but not the
source tree -- from a folder that has its own ``models/`` and ``analysis/`` packages, as many ML projects do.

The fresh venv reaches the project venv's site-packages through a plain ``.pth`` line: ``.pth`` files inside a
directory added that way are not run, so the editable install's finder (``__editable___gatelens_*_finder``)
stays out, and the test checks that every gatelens module came from the new venv.
"""

from __future__ import annotations

import ast
import email
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("build")

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "gatelens"
#: Imports that are no runtime dependency, each only inside one function of one file (checked below): the
#: maintainers' tools to rebuild the bundled data. Module -> (file in the wheel, why).
MAINTAINER_ONLY = {
    "statsmodels": (
        "gatelens/models/zoo/datasets.py",
        "build_series() rebuilds data/series/*.csv from statsmodels' copies of the NOAA series",
    ),
}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _env() -> dict[str, str]:
    """The environment of the subprocesses: no PYTHONPATH (it would point at a checkout), quiet TensorFlow."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _source_files() -> list[str]:
    """What a checkout holds (tracked and untracked-but-not-ignored files), without build outputs."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but the usual outputs
        skip = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}
        return [
            p.relative_to(ROOT).as_posix()
            for p in ROOT.rglob("*")
            if p.is_file() and not (set(p.relative_to(ROOT).parts) & skip) and ".egg-info" not in str(p)
        ]


def imported_top_level(sources: dict[str, str], *, module_level: bool = False) -> dict[str, set[str]]:
    """Top-level module name -> the files importing it (absolute imports only), from each file's AST.

    ``module_level``: only the imports that run when the module is imported (not inside a function).
    """
    found: dict[str, set[str]] = {}
    for path, text in sources.items():
        tree = ast.parse(text, filename=path)
        local = {
            id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)
        }
        for node in ast.walk(tree):
            if module_level and id(node) in local:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path)
    return found


def undeclared(imports: dict[str, set[str]], requires: set[str]) -> dict[str, str]:
    """Third-party imports no requirement covers: module -> the distributions that provide it (or "?")."""
    provided = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(imports):
        if module in sys.stdlib_module_names or module in (PACKAGE, "__future__"):
            continue
        dists = {_canonical(d) for d in provided.get(module, [])} or {_canonical(module)}  # not installed: its name
        if not dists & requires:
            missing[module] = ", ".join(sorted(dists))
    return missing


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``python -m build --wheel --no-isolation`` on a copy of the checkout (the checkout gets no build/)."""
    src = tmp_path_factory.mktemp("src")
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (whl,) = out.glob("gatelens-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (``--no-deps``) and the project venv's third-party packages."""
    home = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(home)], check=True, timeout=300)
    py = home / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
            env=_env(),
        ).stdout.strip()
    )
    project_site = sysconfig.get_paths()["purelib"]
    (site / "project-venv-packages.pth").write_text(project_site + "\n")  # a path line only: its .pth files do not run
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return home


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """A working folder with the user's own ``models`` and ``analysis`` packages."""
    folder = tmp_path_factory.mktemp("user")
    for name in ("models", "analysis"):
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(f'OWNER = "the user\'s own {name}"\n')
    return folder


@pytest.mark.slow
def test_the_wheel_holds_only_gatelens_and_the_bundled_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {PACKAGE, _dist_info(names)}, top
    for sub in ("analysis", "models", "models/zoo", "dashboards", "dashboards/views", "data"):
        assert f"{PACKAGE}/{sub}/__init__.py" in names, sub
    assert f"{PACKAGE}/plot.py" in names and f"{PACKAGE}/analysis/convert.py" in names
    bundled = {
        f"{PACKAGE}/data/{p.relative_to(ROOT / 'data').as_posix()}"
        for folder in ("demo", "corpus", "series")
        for p in (ROOT / "data" / folder).iterdir()
        if p.is_file()
    }
    assert bundled and bundled <= set(names), sorted(bundled - set(names))
    assert not [n for n in names if n.startswith(("tests/", f"{PACKAGE}/tests/")) or "/__pycache__/" in n]


def _dist_info(names: list[str]) -> str:
    (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    return info


@pytest.mark.slow
def test_the_metadata_requires_every_third_party_import(wheel):
    z = zipfile.ZipFile(wheel)
    meta = email.message_from_bytes(z.read(f"{_dist_info(z.namelist())}/METADATA"))
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
    base = {_canonical(r.name) for r in reqs if r.marker is None}
    extras = {_canonical(r.name) for r in reqs if r.marker is not None}
    sources = {n: z.read(n).decode("utf-8") for n in z.namelist() if n.endswith(".py")}
    imports = imported_top_level(sources)
    assert {"numpy", "keras", "zarr", "altair", "xarray", "streamlit"} <= set(imports)  # the walk sees imports
    at_import = imported_top_level(sources, module_level=True)
    for module, (path, _why) in MAINTAINER_ONLY.items():
        assert imports.get(module, set()) <= {path} and module not in at_import, (module, imports.get(module))
        imports.pop(module, None)
    missing = undeclared(imports, base | extras)
    assert not missing, {m: (d, sorted(imports[m])[:3]) for m, d in missing.items()}
    # only the optional scale-out may live in an extra; everything else is a runtime dependency
    optional = undeclared(imports, base)
    assert set(optional) <= {"dask", "distributed", "fsspec"}, optional
    # the check itself can fail: a requirement taken away is reported
    assert "numpy" in undeclared(imports, base - {"numpy"})


@pytest.mark.slow
def test_installed_wheel_extracts_from_a_folder_with_its_own_models_package(venv, user_folder, tmp_path):
    script = f"""
import json, sys
import numpy as np
import gatelens
from gatelens.data import DEMO_DIR
model = gatelens.load_model(DEMO_DIR / "adding_lstm.keras")
trace = gatelens.extract(model, np.load(DEMO_DIR / "adding_lstm.demo.npy")[:2])
np.save({str(tmp_path / "h.npy")!r}, np.asarray(trace["lstm"]["hidden_state"]))
import models, analysis
files = {{n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())}}
print(json.dumps({{
    "gatelens": gatelens.__file__, "extract": sys.modules["gatelens.models.extract"].__file__,
    "analysis": sys.modules["gatelens.analysis.trace"].__file__, "demo": str(DEMO_DIR),
    "models": models.OWNER, "user_analysis": analysis.OWNER, "verification": trace.verification["lstm"],
    "files": [f for f in files.values() if f], "finder": [n for n in files if "__editable__" in n],
}}))
"""
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script],
        cwd=user_folder,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("gatelens", "extract", "analysis", "demo"):
        assert Path(got[key]).is_relative_to(venv), (key, got[key])
    assert got["models"] == "the user's own models" and got["user_analysis"] == "the user's own analysis"
    assert not got["finder"], got["finder"]
    prefix = Path(sys.prefix).resolve()  # the project venv may live inside the checkout (.venv)
    source = [
        f
        for f in got["files"]
        if Path(f).resolve().is_relative_to(ROOT) and not Path(f).resolve().is_relative_to(prefix)
    ]
    assert not source, source[:5]  # nothing came from the checkout
    assert got["verification"] < 1e-4
    import numpy as np

    h = np.load(tmp_path / "h.npy")
    assert h.shape == (2, 50, 24) and np.isfinite(h).all()


@pytest.mark.slow
def test_installed_console_script_and_streamlit_app(venv, user_folder):
    script = venv / "bin" / "gatelens"
    assert script.read_text().splitlines()[0] == f"#!{venv / 'bin' / 'python'}"
    proc = subprocess.run(
        [str(script), "--help"], cwd=user_folder, capture_output=True, text=True, env=_env(), timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for command in ("extract", "analyze", "export", "dashboard"):
        assert command in proc.stdout

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = json.loads(
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                f"import json; from gatelens.dashboards.server import streamlit_command; "
                f"print(json.dumps(streamlit_command({port}, '127.0.0.1')))",
            ],
            cwd=user_folder,
            capture_output=True,
            text=True,
            env=_env(),
            check=True,
            timeout=300,
        ).stdout
    )
    app = Path(cmd[cmd.index("run") + 1])
    assert app.is_relative_to(venv) and app.is_file()
    server = subprocess.Popen(cmd, cwd=user_folder, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        health = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    health = r.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert health == "ok", server.communicate(timeout=10)[0][-3000:] if server.poll() is not None else health
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
