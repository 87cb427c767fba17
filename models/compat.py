"""Every private Keras API gatelens relies on, in one place, checked against the installed Keras.

gatelens re-runs a model's own layer graph (``Functional._run_through_graph``, what Keras itself calls),
reads and sets the masks Keras attaches to tensors, tells layers that take a ``training`` argument, and
reads legacy ``.h5`` files with Keras's legacy loader. None of that is public API, so a Keras release
may rename it. This module is the only one that touches those names: it probes them all at import and
raises :class:`~gatelens.errors.CompatError` naming the installed Keras version, the missing API and the
supported versions; each accessor checks again when it is used (a Keras patched at run time fails the
same way, never with an opaque ``AttributeError``).

Examples
--------
>>> from gatelens.models import compat
>>> compat.SUPPORTED_KERAS
('3.8', '3.16')
>>> compat.missing_apis()
[]
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import keras

from gatelens.errors import CompatError

log = logging.getLogger(__name__)

#: Keras versions gatelens is tested with: ``>= SUPPORTED_KERAS[0]`` and ``< SUPPORTED_KERAS[1]``
#: (the range pyproject.toml declares).
SUPPORTED_KERAS = ("3.8", "3.16")


#: The private attribute names gatelens reads, by role (a Keras release that renames one is caught by
#: :func:`check`; tests inject that fault by changing a name here).
NAMES = {
    "run_through_graph": "_run_through_graph",
    "standardize_inputs": "_standardize_inputs",
    "sequential_functional": "_functional",
    "call_has_training_arg": "_call_has_training_arg",
}


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def keras_version() -> str:
    """The installed Keras version string."""
    return str(getattr(keras, "__version__", "unknown"))


def supported() -> bool:
    """True when the installed Keras lies in :data:`SUPPORTED_KERAS`."""
    v = _version_tuple(keras_version())
    return _version_tuple(SUPPORTED_KERAS[0]) <= v < _version_tuple(SUPPORTED_KERAS[1])


def _error(api: str) -> CompatError:
    where = "within" if supported() else "outside"
    return CompatError(
        f"Keras {keras_version()} ({where} the supported versions >= {SUPPORTED_KERAS[0]}, "
        f"< {SUPPORTED_KERAS[1]}) lacks {api}, a private Keras API gatelens needs; install a supported "
        f"Keras (pip install 'keras>={SUPPORTED_KERAS[0]},<{SUPPORTED_KERAS[1]}')."
    )


def _functional_class():
    try:
        from keras.src.models.functional import Functional
    except ImportError:
        raise _error("keras.src.models.functional.Functional") from None
    return Functional


def _backend():
    try:
        from keras.src import backend
    except ImportError:
        raise _error("keras.src.backend") from None
    return backend


def _class_sets(cls: type, attr: str) -> bool:
    """True when ``attr`` is an attribute of ``cls`` or named in the code of one of its methods (an instance
    attribute set in ``__init__``): probed without creating a layer, which would advance Keras's name counters."""
    if hasattr(cls, attr):
        return True
    for klass in cls.__mro__:
        for value in vars(klass).values():
            code = getattr(getattr(value, "__func__", value), "__code__", None)
            if code is not None and attr in code.co_names:
                return True
    return False


#: What :func:`missing_apis` probes: (name in messages, a check that is True when it is there).
_PROBES: list[tuple[str, Callable[[], bool]]] = [
    ("keras.src.models.functional.Functional", lambda: _functional_class() is not None),
    ("Functional.<run_through_graph>", lambda: hasattr(_functional_class(), NAMES["run_through_graph"])),
    ("Functional.<standardize_inputs>", lambda: hasattr(_functional_class(), NAMES["standardize_inputs"])),
    ("keras.src.backend.get_keras_mask", lambda: hasattr(_backend(), "get_keras_mask")),
    ("keras.src.backend.set_keras_mask", lambda: hasattr(_backend(), "set_keras_mask")),
    ("Sequential.<sequential_functional>", lambda: _class_sets(keras.Sequential, NAMES["sequential_functional"])),
    ("Layer.<call_has_training_arg>", lambda: _class_sets(keras.layers.Layer, NAMES["call_has_training_arg"])),
]


def missing_apis() -> list[str]:
    """The private Keras APIs (of those gatelens uses) that the installed Keras lacks; ``[]`` when all are there.

    The legacy ``.h5`` reader is probed where it is used (:func:`legacy_h5`): importing it costs time on
    every start and only ``.h5`` files need it.

    Examples
    --------
    >>> missing_apis()
    []
    >>> saved = NAMES["run_through_graph"]
    >>> NAMES["run_through_graph"] = "_renamed"        # as if a Keras release renamed Functional._run_through_graph
    >>> try:
    ...     print(missing_apis())
    ... finally:
    ...     NAMES["run_through_graph"] = saved
    ['Functional._renamed']
    """
    out = []
    for label, probe in _PROBES:
        name = label
        for role, attr in NAMES.items():
            name = name.replace(f"<{role}>", attr)
        try:
            ok = probe()
        except CompatError:
            ok = False
        except Exception:  # a probe that cannot even run means the API is not what gatelens expects
            ok = False
        if not ok:
            out.append(name)
    return out


_warned = False


def check() -> None:
    """Raise :class:`~gatelens.errors.CompatError` if the installed Keras lacks an API gatelens needs.

    Examples
    --------
    >>> check() is None                                  # the installed Keras has every API
    True
    >>> saved = NAMES["standardize_inputs"]
    >>> NAMES["standardize_inputs"] = "_renamed"
    >>> try:
    ...     check()
    ... except CompatError as e:
    ...     print(str(e).split(") ", 1)[1])
    ... finally:
    ...     NAMES["standardize_inputs"] = saved
    lacks Functional._renamed, a private Keras API gatelens needs;
    install a supported Keras (pip install 'keras>=3.8,<3.16').
    """
    missing = missing_apis()
    if missing:
        raise _error(", ".join(missing))
    global _warned
    if not supported() and not _warned:
        _warned = True
        log.warning(
            "Keras %s is outside the versions gatelens is tested with (>= %s, < %s); its private APIs are present",
            keras_version(),
            *SUPPORTED_KERAS,
        )


# -- the accessors (each checks its API where it is used) -----------------------------------------------------


def functional_of(model: Any) -> Any | None:
    """The ``Functional`` graph that runs ``model``: itself, a built Sequential's inner graph, or None."""
    functional = _functional_class()
    if isinstance(model, functional):
        return model
    if isinstance(model, keras.Sequential):
        attr = NAMES["sequential_functional"]
        if attr not in vars(model):
            raise _error(f"Sequential.{attr}")
        return getattr(model, attr)
    return None


def get_mask(x: Any) -> Any | None:
    """The mask Keras attached to tensor ``x`` (None when it has none)."""
    backend = _backend()
    if not hasattr(backend, "get_keras_mask"):
        raise _error("keras.src.backend.get_keras_mask")
    return backend.get_keras_mask(x)


def set_mask(x: Any, mask: Any) -> None:
    """Attach ``mask`` to tensor ``x`` as Keras does (the next layer reads it)."""
    backend = _backend()
    if not hasattr(backend, "set_keras_mask"):
        raise _error("keras.src.backend.set_keras_mask")
    backend.set_keras_mask(x, mask)


def run_through_graph(functional: Any, inputs: Any, operation_fn: Callable[[Any], Callable]) -> Any:
    """Run ``functional``'s layer graph on ``inputs`` as ``Functional.call`` does, each operation called through
    ``operation_fn(op)``; the inputs' masks are kept (``_standardize_inputs`` makes new tensors)."""
    standardize, run = NAMES["standardize_inputs"], NAMES["run_through_graph"]
    for api in (standardize, run):
        if not hasattr(functional, api):
            raise _error(f"Functional.{api}")
    flat_in = keras.tree.flatten(inputs)
    std = getattr(functional, standardize)(inputs)
    for x, y in zip(flat_in, std):
        m = get_mask(x)
        if m is not None:
            set_mask(y, m)
    return getattr(functional, run)(std, operation_fn=operation_fn)


def call_has_training_arg(layer: Any) -> bool:
    """True when ``layer.call`` takes a ``training`` argument (Keras passes ``training=False`` at inference).

    False for graph operations that are not layers (``keras.ops`` calls in a functional model)."""
    if not isinstance(layer, keras.layers.Layer):
        return False
    attr = NAMES["call_has_training_arg"]
    if not hasattr(layer, attr):
        raise _error(f"Layer.{attr}")
    return bool(getattr(layer, attr))


def legacy_h5() -> tuple[Any, Any, Any, Any]:
    """Keras's legacy HDF5 reader: ``(legacy_h5_format, saving_options, saving_utils, serialization_lib)``."""
    try:
        from keras.src.legacy.saving import legacy_h5_format, saving_options, saving_utils
        from keras.src.saving import serialization_lib
    except ImportError as e:
        raise _error(f"keras.src.legacy.saving ({e})") from None
    for mod, api in (
        (legacy_h5_format, "load_weights_from_hdf5_group"),
        (saving_options, "keras_option_scope"),
        (saving_utils, "model_from_config"),
        (serialization_lib, "SafeModeScope"),
    ):
        if not hasattr(mod, api):
            raise _error(f"{mod.__name__}.{api}")
    return legacy_h5_format, saving_options, saving_utils, serialization_lib


check()
