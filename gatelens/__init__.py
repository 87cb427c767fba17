"""gatelens: see what the gates of a trained Keras LSTM (or GRU) learned to keep and to forget.

The public Python API. Names are imported lazily, so ``import gatelens`` (and ``gatelens.analysis``)
does not start TensorFlow; the first call that needs Keras does.

Examples
--------
>>> import gatelens
>>> from gatelens._examples import tiny_lstm_model
>>> model = tiny_lstm_model()                        # a saved .keras file, loaded back through the safe loader
>>> trace = gatelens.extract(model, [[[0.5, -1.0]] * 4] * 2)
>>> trace.layers, trace["lstm"]["forget_gate"].shape
(['lstm'], (2, 4, 3))
>>> trace.verification["lstm"] < 1e-5
True
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

# In a source checkout the subpackages keep the repository's layout: analysis/, models/, dashboards/ and
# data/ stand beside this folder, not inside it (an installed wheel has them inside). Searching the
# checkout's root too makes whichever checkout is imported self-contained: `gatelens.analysis` is the
# `analysis/` of the same checkout as this file, also in a second worktree or with PYTHONPATH pointing at one.
_ROOT = Path(__file__).resolve().parent.parent
if not (Path(__file__).resolve().parent / "analysis").is_dir() and (_ROOT / "analysis" / "__init__.py").is_file():
    __path__.append(str(_ROOT))  # the package's own __path__

#: Whether the user set TensorFlow's C++ log level (the console script then keeps it; else it hides C++ logs).
_TF_LOG_LEVEL_FROM_USER = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow itself is imported lazily, where it is needed

__version__ = "0.2.0"

#: Public name -> "module:attribute" (or "module" for a submodule). ``docs/api.md`` lists the same names
#: and ``tests/test_api.py`` checks that every name listed there exists.
_LAZY: dict[str, str] = {
    # models (Keras)
    "load_model": "gatelens.models.loading:load_model",
    "extract": "gatelens.models.extract:extract",
    "write_run": "gatelens.models.extract:write_run",
    "Extractor": "gatelens.models.extract:Extractor",
    "intervene": "gatelens.models.intervene:intervene",
    "Intervention": "gatelens.models.intervene:Intervention",
    # analysis (pandas + scikit-learn)
    "open_run": "gatelens.analysis.store:open_run",
    "analyze": "gatelens.analysis.pipeline:analyze_run",
    "load_analysis": "gatelens.analysis.pipeline:load_analysis",
    "export_csvs": "gatelens.analysis.export:export_csvs",
    "read_csv": "gatelens.analysis.export:read_csv",
    "Trace": "gatelens.analysis.trace:Trace",
    "LayerTrace": "gatelens.analysis.trace:LayerTrace",
    "Analysis": "gatelens.analysis.pipeline:Analysis",
    "SIGNALS": "gatelens.analysis.signals:SIGNALS",
    "signals_for": "gatelens.analysis.signals:signals_for",
    "search": "gatelens.analysis.search:search",
    # errors
    "GatelensError": "gatelens.errors:GatelensError",
    "GatelensInputError": "gatelens.errors:GatelensInputError",
    "DataError": "gatelens.errors:DataError",
    "FeatureError": "gatelens.errors:FeatureError",
    "RunStoreError": "gatelens.errors:RunStoreError",
    "ModelFormatError": "gatelens.errors:ModelFormatError",
    "UnsafeModelError": "gatelens.errors:UnsafeModelError",
    "UnsupportedLayerError": "gatelens.errors:UnsupportedLayerError",
    "UsageError": "gatelens.errors:UsageError",
    "VerificationError": "gatelens.errors:VerificationError",
    "CompatError": "gatelens.errors:CompatError",
    # submodules
    "errors": "gatelens.errors",
    "analysis": "gatelens.analysis",
    "models": "gatelens.models",
    "dashboards": "gatelens.dashboards",
    "plot": "gatelens.plot",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    try:
        target = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'gatelens' has no attribute {name!r}") from None
    module, _, attr = target.partition(":")
    value = importlib.import_module(module)
    if attr:
        value = getattr(value, attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
