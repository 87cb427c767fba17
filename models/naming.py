"""Layer names that TensorFlow can run.

Keras accepts any layer name without a ``/``, but TensorFlow opens a name scope per layer call and refuses
scope names outside ``[A-Za-z0-9_.\\/>-]`` (spaces, line breaks, bidi controls, ``=``, ``+``, ``@``, any
non-ASCII letter): such a model cannot be run by Keras on TensorFlow at all (``model.predict`` fails too).
:func:`check_layer_names` says so in one line before anything is traced, instead of an error deep inside a
trace. Names TensorFlow accepts but that are unsafe as file names (``..``, ``zarr.json``, 300 characters)
are stored under escaped keys by the run store (:func:`gatelens.analysis.store.store_key`).

Examples
--------
>>> from gatelens._examples import tiny_model
>>> check_layer_names(tiny_model())
>>> runnable_name("bad name"), runnable_name("-ok.1")
(False, True)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from gatelens.errors import UnsupportedLayerError

#: TensorFlow's own pattern for a (nested) name scope (``tensorflow.python.framework.ops._VALID_SCOPE_NAME_REGEX``;
#: tests/test_names.py checks that the two agree).
SCOPE_NAME = re.compile(r"^[A-Za-z0-9_.\\/>-]*$")


def runnable_name(name: str) -> bool:
    """Whether TensorFlow accepts ``name`` as a name scope (what every Keras layer call opens).

    Examples
    --------
    >>> [runnable_name(n) for n in ("lstm", "bidirectional/forward", "lstm_1.v2", "lstm 1", "gät", "lstm\\n")]
    [True, True, True, False, False, False]
    """
    # TensorFlow's scope pattern allows a backslash, but the ops created under it are then refused
    # ("Node name contains invalid characters"); a trailing line break slips through ``$``
    return isinstance(name, str) and SCOPE_NAME.match(name) is not None and not any(c in name for c in "\\\n")


def all_layers(model: Any) -> Iterator[Any]:
    """Every layer Keras calls with a name scope: nested models, wrapped layers and RNN cells included."""
    stack = [model]
    seen: set[int] = set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        for attr in ("forward_layer", "backward_layer", "layer", "cell"):
            sub = getattr(layer, attr, None)
            if sub is not None and hasattr(sub, "name"):
                stack.append(sub)
        cells = getattr(getattr(layer, "cell", None), "cells", None)
        if isinstance(cells, (list, tuple)):
            stack.extend(cells)
        stack.extend(reversed(list(getattr(layer, "layers", None) or [])))


def check_layer_names(model: Any) -> None:
    """Raise :class:`UnsupportedLayerError` (exit code 3) for a layer name TensorFlow cannot run.

    The message names the layer (shown with :func:`repr`, so line breaks and bidi controls are visible)
    and says what TensorFlow accepts.

    Examples
    --------
    >>> import keras
    >>> model = keras.Sequential([keras.Input((4, 2)), keras.layers.LSTM(3, name="my lstm")])
    >>> check_layer_names(model)
    Traceback (most recent call last):
    ...
    gatelens.errors.UnsupportedLayerError: layer name 'my lstm' cannot be run by TensorFlow (a name scope ...
    """
    for layer in all_layers(model):
        name = layer.name
        if not runnable_name(name):
            raise UnsupportedLayerError(
                f"layer name {name[:120]!r}{'...' if len(name) > 120 else ''} cannot be run by TensorFlow (a name "
                "scope allows only ASCII letters, digits and _ . - / >; Keras's own predict fails on it too): "
                "rename the layer and save the model again"
            )
