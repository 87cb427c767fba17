"""Safe loading of a user's Keras model.

Interim version (issue 2): ``safe_mode=True``, ``compile=False`` and a check of the layer classes.
The hardened loader of issue 6 (archive validation and an isolated worker) replaces its body.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

from models.errors import ModelFormatError, UnsafeModelError

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".keras", ".h5", ".hdf5")


def load_model(path: str | os.PathLike):
    """Load a ``.keras`` (or legacy ``.h5``) model safely, without compiling it.

    Parameters
    ----------
    path : path to the model file

    Returns
    -------
    keras.Model

    Raises
    ------
    UnsafeModelError
        The file holds a Lambda layer, a custom or unknown class.
    ModelFormatError
        The file is not a readable Keras model.

    Examples
    --------
    >>> import keras, tempfile, os
    >>> m = keras.Sequential([keras.Input((3, 2)), keras.layers.LSTM(4)])
    >>> p = os.path.join(tempfile.mkdtemp(), "m.keras"); m.save(p)
    >>> load_model(p).layers[0].__class__.__name__
    'LSTM'
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such model file")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise ModelFormatError(f"{path}: expected a .keras (or legacy .h5) model file, got {path.suffix or 'no extension'!r}")
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise ModelFormatError(f"{path}: not a .keras archive (a .keras file is a zip made by model.save)")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # Keras raises many types for unreadable or unsafe files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "lambda" in msg.lower() or "safe_mode" in msg.lower() or "unknown" in msg.lower() or "custom" in msg.lower():
            raise UnsafeModelError(f"{path}: refused: {msg}") from None
        raise ModelFormatError(f"{path}: cannot be read as a Keras model: {msg}") from None
    return model
