"""Everything Keras: safe loading, the cell re-runner (extractor), the run store writer, the model zoo.

Examples
--------
>>> from models import load_model, extract  # doctest: +SKIP
>>> trace = extract(load_model("my.keras"), x)  # doctest: +SKIP
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from models._quiet import import_tensorflow_quietly

import_tensorflow_quietly()

from models.errors import (  # noqa: E402 - after the quiet TensorFlow import
    DataError,
    GatelensInputError,
    ModelFormatError,
    UnsafeModelError,
    UnsupportedLayerError,
    VerificationError,
)
from models.extract import Extractor, extract, write_run  # noqa: E402
from models.loading import load_model  # noqa: E402

__all__ = [
    "DataError",
    "Extractor",
    "GatelensInputError",
    "ModelFormatError",
    "UnsafeModelError",
    "UnsupportedLayerError",
    "VerificationError",
    "extract",
    "load_model",
    "write_run",
]
