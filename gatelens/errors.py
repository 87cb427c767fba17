"""The one error hierarchy of gatelens.

Every error gatelens raises on purpose derives from :class:`GatelensError` and carries the exit code
the command line returns for it. A *user error* (:class:`GatelensInputError` and its subclasses) is the
user's file, data, flag or model: its message is one line that names the file, row or step and what was
expected, and the CLI prints that line and exits with 2 (bad input) or 3 (refused model). Everything
else is internal (exit 1): a bug, or a Keras whose private API gatelens relies on has changed
(:class:`CompatError`).

The CLI and the dashboard both use :func:`exit_code_of` and :func:`is_user_error`.

Examples
--------
>>> from gatelens.errors import DataError, UnsafeModelError, exit_code_of, is_user_error
>>> exit_code_of(DataError("x.csv: line 3: expected a number, got 'abc'"))
2
>>> exit_code_of(UnsafeModelError("m.keras: Lambda layer 'f' holds code"))
3
>>> is_user_error(KeyError("layers")), exit_code_of(KeyError("layers"))
(False, 1)
"""

from __future__ import annotations

__all__ = [
    "CompatError",
    "DataError",
    "FeatureError",
    "GatelensError",
    "GatelensInputError",
    "ModelFormatError",
    "RunStoreError",
    "UnsafeModelError",
    "UnsupportedLayerError",
    "UsageError",
    "VerificationError",
    "exit_code_of",
    "is_user_error",
]


class GatelensError(Exception):
    """Base class of every error gatelens raises on purpose (``exit_code`` 1 unless a subclass says otherwise)."""

    exit_code = 1


class GatelensInputError(GatelensError, ValueError):
    """Bad input from the user: a file, data, flag or model (exit code 2 unless a subclass says otherwise)."""

    exit_code = 2


class UsageError(GatelensInputError):
    """Bad command-line usage or bad arguments to a public function (exit code 2)."""


class DataError(GatelensInputError):
    """The data do not fit the model: wrong rank, feature count, non-numeric cells, NaN, limits exceeded, ..."""


class FeatureError(DataError):
    """A features file or table is unusable; the message names the file, the line and the problem."""


class RunStoreError(GatelensInputError):
    """A run directory is missing, incomplete, edited, or does not match its manifest (exit code 2)."""


class ModelFormatError(GatelensInputError):
    """The model file cannot be read as a Keras model (not a zip/HDF5, corrupt, wrong extension)."""


class UnsafeModelError(GatelensInputError):
    """The model was refused: it holds code (Lambda, custom or unknown classes) or exceeds safety limits."""

    exit_code = 3


class UnsupportedLayerError(GatelensInputError):
    """The model holds a layer the extractor cannot re-run (named in the message)."""

    exit_code = 3


class VerificationError(GatelensError, RuntimeError):
    """Recomputed hidden states differ from Keras's own output by more than the tolerance (exit code 1)."""

    exit_code = 1


class CompatError(GatelensError, RuntimeError):
    """The installed Keras lacks a private API gatelens relies on (internal, exit code 1).

    The message names the Keras version, the missing API and the supported versions.
    """

    exit_code = 1


def is_user_error(exc: BaseException) -> bool:
    """True for errors that are the user's to fix (exit 2 or 3), False for internal ones.

    Examples
    --------
    >>> is_user_error(UsageError("--limit 0: expected >= 1")), is_user_error(UnsupportedLayerError("ConvLSTM1D"))
    (True, True)
    >>> is_user_error(VerificationError("lstm: 0.3 > 1e-4")), is_user_error(ValueError("not ours"))
    (False, False)
    """
    return isinstance(exc, GatelensInputError)


def exit_code_of(exc: BaseException) -> int:
    """The command line's exit code for ``exc``: its ``exit_code`` for gatelens errors, 1 for anything else.

    Examples
    --------
    >>> [exit_code_of(e("x")) for e in (UsageError, RunStoreError, UnsupportedLayerError, CompatError, OSError)]
    [2, 2, 3, 1, 1]
    """
    if isinstance(exc, GatelensError):
        return int(exc.exit_code)
    return 1
