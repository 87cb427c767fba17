"""Everything Keras: safe loading, the cell re-runner (extractor), the run store writer, the model zoo.

Examples
--------
>>> from gatelens.models import load_model, extract
>>> from gatelens._examples import tiny_model_path, tiny_inputs
>>> trace = extract(load_model(tiny_model_path()), tiny_inputs())
>>> trace["lstm"]["cell_state"].shape
(2, 4, 3)
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow itself is imported lazily, where it is needed

from gatelens.errors import (
    DataError,
    GatelensInputError,
    ModelFormatError,
    UnsafeModelError,
    UnsupportedLayerError,
    VerificationError,
)
from gatelens.models.extract import Extractor, extract, write_run
from gatelens.models.loading import load_model

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
