"""Every docstring example of the installed ``gatelens`` package runs and prints what it shows.

Modules are imported under their real names (``gatelens.analysis.stats``), not by file path, so the
examples see the same objects as a user. ``NUMBER`` and ``ELLIPSIS`` as in pytest's doctest options:
a float in the expected output matches to the precision it is written with.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
import tempfile
from pathlib import Path

import pytest
from test_api import NAMES, resolve

import gatelens

SKIP = {"gatelens.dashboards.app"}  # Streamlit scripts: they run as pages, not as importable modules
SKIP_PREFIX = ("gatelens.dashboards.views",)
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS

_NUMBER = re.compile(r"(?<![\w.])([-+]?(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])")


class _NumberChecker(doctest.OutputChecker):
    """Floats in ``want`` match ``got`` to the number of decimals written in ``want`` (pytest's NUMBER)."""

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        if super().check_output(want, got, optionflags):
            return True
        wants, gots = list(_NUMBER.finditer(want)), list(_NUMBER.finditer(got))
        if not wants or len(wants) != len(gots):
            return False
        offset = 0
        for w, g in zip(wants, gots):
            text = w.group(1)
            decimals = len(text.split(".")[1].split("e")[0].split("E")[0]) if "." in text else 0
            exp = re.search(r"[eE]([-+]?\d+)", text)
            scale = 10.0 ** (-decimals + (int(exp.group(1)) if exp else 0))
            if abs(float(g.group(1)) - float(text)) <= scale / 2 + 1e-12:
                start, end = g.start() + offset, g.end() + offset
                got = got[:start] + text + got[end:]
                offset += len(text) - (g.end() - g.start())
        return super().check_output(want, got, optionflags)


def _modules() -> list[str]:
    names = ["gatelens"]  # its own modules (its __path__ also holds a checkout's root: not walked)
    names += [i.name for i in pkgutil.iter_modules([str(Path(gatelens.__file__).parent)], "gatelens.")]
    for sub in ("analysis", "models", "dashboards", "data", "cli"):
        pkg = importlib.import_module(f"gatelens.{sub}")
        names += [i.name for i in pkgutil.walk_packages(pkg.__path__, f"gatelens.{sub}.")]
    return sorted({n for n in names if n not in SKIP and not n.startswith(SKIP_PREFIX)})


MODULES = _modules()
#: Modules with no docstring example: entry points (the console script, the ASGI app, the CLI's argument parsing,
#: run by tests/test_cli*.py), private helpers and the TensorFlow cell steps and graph code (run and checked against
#: Keras by tests/test_extract*.py). Every other module has at least one example, and its case fails if it has none.
WITHOUT_EXAMPLES = {
    "gatelens.__main__", "gatelens.analysis._reading", "gatelens.dashboards.asgi", "gatelens.dashboards.stages",
    "gatelens.models._quiet", "gatelens.models.cells",
    "gatelens.cli.search", "gatelens.models.graph",
}  # fmt: skip


def test_every_subpackage_is_walked():
    assert {
        "gatelens.analysis.stats",
        "gatelens.models.extract",
        "gatelens.dashboards.core",
        "gatelens.errors",
        "gatelens.cli.windows",
    } <= set(MODULES)


def test_the_modules_without_examples_are_real_modules():
    assert WITHOUT_EXAMPLES <= set(MODULES), sorted(WITHOUT_EXAMPLES - set(MODULES))


@pytest.mark.parametrize("name", [n for n in MODULES if n not in WITHOUT_EXAMPLES])
def test_docstring_examples(name, tmp_path, monkeypatch):
    # the examples' temporary folders (gatelens._examples, tempfile.mkdtemp) go to pytest's own, which it prunes:
    # they were left in /tmp, ~40 each run
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(checker=_NumberChecker(), optionflags=FLAGS)
    tests = [t for t in finder.find(module, name) if t.examples]
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"{name} has no docstring example (list it in WITHOUT_EXAMPLES if it should have none)"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name} (output above)"


def example_names(names, *, skip=frozenset()) -> list[str]:
    """Those of ``names`` that resolve to a function, class or method whose own docstring has no ``>>>`` example
    (constants, modules and other objects are not checked)."""
    import inspect

    missing = []
    for name in names:
        obj = resolve(name)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)) or name in skip:
            continue
        if ">>>" not in (obj.__doc__ or ""):  # its own: a class's __doc__ is not inherited
            missing.append(name)
    return missing


#: Functions and classes of docs/api.md without a docstring example, on purpose. Every other function, class and
#: method listed there shows one (test_every_listed_function_has_an_example).
NO_EXAMPLE = {
    # exception classes and their top-level re-exports: a class and a message; the gatelens.errors module, its
    # exit_code_of and is_user_error and the functions that raise them show them in use
    "gatelens.errors.GatelensError", "gatelens.errors.GatelensInputError", "gatelens.errors.UsageError",
    "gatelens.errors.DataError", "gatelens.errors.FeatureError", "gatelens.errors.RunStoreError",
    "gatelens.errors.ModelFormatError", "gatelens.errors.UnsafeModelError", "gatelens.errors.UnsupportedLayerError",
    "gatelens.errors.VerificationError", "gatelens.errors.CompatError", "gatelens.DataError",
    "gatelens.UnsafeModelError",
    # the command line's entry points: run by tests/test_cli*.py (and `gatelens --help`)
    "gatelens.cli.main.main", "gatelens.cli.main.build_parser",
    # need a Dask cluster (a doctest would start one per example): tests/test_distributed.py
    "gatelens.analysis.distributed.analyze_distributed", "gatelens.analysis.distributed.correlations_distributed",
    "gatelens.analysis.distributed.local_cluster", "gatelens.analysis.distributed.local_client",
    "gatelens.analysis.distributed.cluster_client", "gatelens.models.distributed.write_run_distributed",
    # a Dask worker's task: writes into the partial run and ShardSpec that write_run_distributed prepares
    "gatelens.models.distributed.extract_shard",
    # TensorFlow cell steps, called on tensors while the extractor traces: checked against Keras (tests/test_extract*)
    "gatelens.models.cells.run_lstm", "gatelens.models.cells.run_gru", "gatelens.models.cells.run_simple_rnn",
    # the dashboard's staged analysis: a session's model and data bundles, Streamlit fragments and caches (a running
    # server): tests/test_dashboard_stages.py
    "gatelens.dashboards.stages.StagedRun", "gatelens.dashboards.stages.FeatureStages",
    "gatelens.dashboards.stages.need",
}  # fmt: skip


def test_every_listed_function_has_an_example():
    missing = example_names(NAMES, skip=NO_EXAMPLE)
    assert not missing, f"docs/api.md lists names whose docstring has no >>> example (add one): {missing}"


def test_the_names_without_examples_are_listed_and_lack_one():
    assert NO_EXAMPLE <= set(NAMES), sorted(NO_EXAMPLE - set(NAMES))  # not in docs/api.md (renamed?)
    have_one = sorted(NO_EXAMPLE - set(example_names(sorted(NO_EXAMPLE))))
    assert not have_one, f"these have an example now: take them out of NO_EXAMPLE: {have_one}"


def test_the_example_check_finds_a_function_without_one(monkeypatch):
    def no_example():
        """A docstring that shows nothing."""

    def with_example():
        """Examples
        --------
        >>> 1 + 1
        2
        """

    monkeypatch.setattr(gatelens, "_no_example", no_example, raising=False)
    monkeypatch.setattr(gatelens, "_with_example", with_example, raising=False)
    names = ["gatelens._no_example", "gatelens._with_example", "gatelens.__version__", "gatelens.Trace"]
    assert example_names(names) == ["gatelens._no_example"]
    assert example_names(names, skip={"gatelens._no_example"}) == []
