"""The dependency direction of the brief, read from every module's imports (AST, nothing imported).

``dashboards -> analysis, models``; ``models -> analysis`` only for the shared types; ``analysis`` never imports
TensorFlow, Keras, ``models`` or ``dashboards``; nothing below the command line (:mod:`gatelens.cli`) imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: What ``models`` may use of ``analysis``: the trace and run-store types and the names of signals and sources
#: (shared by both), the Dask client both sides' distributed code starts, and ``effects`` (the NumPy metrics of an
#: intervention's outputs, which ``models.intervene`` computes batch by batch as it runs the modified model).
MODELS_MAY_USE = {"trace", "store", "signals", "sources", "distributed", "effects"}

#: (folder, forbidden module prefixes): each module under the folder must import none of them.
FORBIDDEN = {
    "analysis": ("tensorflow", "keras", "gatelens.models", "gatelens.dashboards", "gatelens.cli"),
    "models": ("gatelens.dashboards", "gatelens.cli"),
    "dashboards": ("gatelens.cli",),
}


def imported(source: str) -> set[str]:
    """Every module ``source`` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``), at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(str(node.args[0].value))
    return found


def violations(folder: str, source: str) -> list[str]:
    """The imports of a module under ``folder`` that break the direction."""
    bad = [m for m in imported(source) if any(m == p or m.startswith(p + ".") for p in FORBIDDEN.get(folder, ()))]
    if folder == "models":
        bad += [
            m for m in imported(source) if m.startswith("gatelens.analysis.") and m.split(".")[2] not in MODELS_MAY_USE
        ]
    return sorted(set(bad))


#: Private APIs of the libraries gatelens builds on, each allowed in one compat module only.
PRIVATE = {
    ("keras.src", "tensorflow.python"): "models/compat.py",
    ("streamlit.runtime", "streamlit.web"): "dashboards/compat.py",
}


def private_uses(where: str, source: str) -> list[str]:
    """The private-API imports of the module at ``where`` (a path from the repository root) outside its compat module."""
    return sorted(
        m
        for m in imported(source)
        for prefixes, home in PRIVATE.items()
        if where != home and any(m == p or m.startswith(p + ".") for p in prefixes)
    )


MODULES = sorted(p for folder in FORBIDDEN for p in (ROOT / folder).rglob("*.py"))


ALL_MODULES = sorted(p for folder in (*FORBIDDEN, "gatelens") for p in (ROOT / folder).rglob("*.py"))


def test_every_layer_is_read():
    folders = {p.relative_to(ROOT).parts[0] for p in MODULES}
    assert folders == set(FORBIDDEN) and len(MODULES) > 80


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_dependency_direction(path):
    folder = path.relative_to(ROOT).parts[0]
    assert not violations(folder, path.read_text(encoding="utf-8")), (
        f"{path.relative_to(ROOT)} imports against the direction"
    )


@pytest.mark.parametrize("path", [p for p in ALL_MODULES], ids=lambda p: str(p.relative_to(ROOT)))
def test_private_apis_only_in_the_compat_modules(path):
    where = str(path.relative_to(ROOT))
    assert not private_uses(where, path.read_text(encoding="utf-8")), (
        f"{where}: a private API outside its compat module"
    )


def test_the_private_api_check_finds_a_use():
    source = "def f():\n    from streamlit.runtime.scriptrunner import get_script_run_ctx\n"
    assert private_uses("dashboards/sessions.py", source) == [
        "streamlit.runtime.scriptrunner",
        "streamlit.runtime.scriptrunner.get_script_run_ctx",
    ]
    assert private_uses("dashboards/compat.py", source) == []
    assert private_uses("models/intervene.py", "from keras.src import backend\n") == ["keras.src", "keras.src.backend"]


@pytest.mark.parametrize(
    ("folder", "source", "found"),
    [
        ("analysis", "def f():\n    import tensorflow as tf\n", ["tensorflow"]),
        ("analysis", "from gatelens.models.extract import extract\n", ["gatelens.models.extract",
                                                                      "gatelens.models.extract.extract"]),
        ("models", "def f():\n    from gatelens.dashboards.server import serve\n",
         ["gatelens.dashboards.server", "gatelens.dashboards.server.serve"]),
        ("models", "from gatelens.analysis.probes import fit\n", ["gatelens.analysis.probes",
                                                                 "gatelens.analysis.probes.fit"]),
        ("models", "from gatelens.analysis import probes\n", ["gatelens.analysis.probes"]),
        ("models", "from gatelens.analysis.store import open_run\n", []),
        ("dashboards", "__import__('gatelens.cli.main')\n", ["gatelens.cli.main"]),
    ],
)  # fmt: skip
def test_the_check_finds_what_breaks_the_direction(folder, source, found):
    assert violations(folder, source) == found
