"""Errors raised for a user's mistakes. Each is a ValueError whose message names the file and the problem."""

from __future__ import annotations


class GatelensInputError(ValueError):
    """Base class: bad input from the user (CLI exit code 2 unless a subclass says otherwise)."""

    exit_code = 2


class ModelFormatError(GatelensInputError):
    """The model file cannot be read as a Keras model (not a zip/HDF5, corrupt, wrong extension)."""


class UnsafeModelError(GatelensInputError):
    """The model was refused: it holds code (Lambda, custom or unknown classes) or exceeds safety limits."""

    exit_code = 3


class UnsupportedLayerError(GatelensInputError):
    """The model holds a recurrent layer the extractor cannot re-run (named in the message)."""

    exit_code = 3


class DataError(GatelensInputError):
    """The data file does not fit the model: wrong rank, feature count, non-numeric cells, NaN, ..."""


class VerificationError(RuntimeError):
    """Recomputed hidden states differ from Keras's own output by more than the tolerance."""

    exit_code = 1
