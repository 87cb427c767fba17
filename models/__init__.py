"""Everything Keras: safe loading, the cell re-runner (extractor), the run store writer, the model zoo.

Examples
--------
>>> import keras, numpy as np, os, tempfile
>>> from models import load_model, extract
>>> path = os.path.join(tempfile.mkdtemp(), "my.keras")
>>> keras.Sequential([keras.Input((4, 2)), keras.layers.LSTM(3, name="lstm")]).save(path)
>>> trace = extract(load_model(path), np.ones((2, 4, 2)))
>>> trace["lstm"]["cell_state"].shape
(2, 4, 3)
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow itself is imported lazily, where it is needed

from models.errors import (
    DataError,
    GatelensInputError,
    ModelFormatError,
    UnsafeModelError,
    UnsupportedLayerError,
    VerificationError,
)
from models.extract import Extractor, extract, write_run
from models.loading import load_model

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
