"""Validation of untrusted model files, before Keras sees them. Pure Python (zipfile, json; h5py lazily).

A ``.keras`` file is a zip archive written by ``keras.saving.save_model`` (Keras 3.15.1,
``keras/src/saving/saving_lib.py``): ``metadata.json``, ``config.json``, ``model.weights.h5`` and,
for text layers that keep a vocabulary, files under ``assets/``. This module checks, without
importing TensorFlow or Keras:

* the archive: size, number of members, exact member names (no absolute or ``..`` names, no
  duplicates), declared sizes and compression ratios (zip bombs), encryption and compression method;
* the model config (``config.json``, or the ``model_config`` attribute of a legacy ``.h5``): every
  dict that names a class (``class_name``/``module``/``registered_name``) anywhere in the nested config
  must be a Keras built-in from an allowlist (:data:`ALLOWED_CLASSES`) and come from a ``keras`` module;
  Lambda layers, serialized bytecode (``__lambda__``), function references other than Keras's
  built-in activations, registered custom objects and non-Keras modules are refused; string
  identifiers (activations, initializers, regularizers, constraints, dtypes) must be built-ins;
* the parameter count implied by the config (units, input dimensions, vocabulary sizes), capped
  before anything is allocated (:attr:`LoadLimits.max_params`);
* HDF5 weights (in the isolated worker, :func:`read_h5_weights`): only hard links, no external or
  virtual storage, numeric datasets only, no unknown filters, bounded declared sizes.

Everything refused raises :class:`~gatelens.errors.UnsafeModelError`; a file that is not a readable
model raises :class:`~gatelens.errors.ModelFormatError`. Nothing else escapes the validator.

Examples
--------
>>> cfg = {"module": "keras", "class_name": "Sequential", "config": {"name": "s", "layers": [
...     {"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [None, 7, 3]}},
...     {"module": "keras.layers", "class_name": "LSTM", "config": {"name": "lstm", "units": 4},
...      "build_config": {"input_shape": [None, 7, 3]}}]}}
>>> validate_config(cfg, "m.keras").params
128
>>> bad = {"module": "os", "class_name": "system", "config": {}}
>>> validate_config(bad, "m.keras")
Traceback (most recent call last):
...
gatelens.errors.UnsafeModelError: m.keras: the config names class 'system' from module 'os', ...
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gatelens.errors import GatelensInputError, ModelFormatError, UnsafeModelError
from gatelens.limits import env_number

# --------------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------------

_MiB = 1 << 20


@dataclass(frozen=True)
class LoadLimits:
    """Bounds applied to an untrusted model file. Override any field with ``dataclasses.replace``.

    Parameters
    ----------
    max_params : int
        Most parameters (weights of all layers) a model may have, checked on the config before
        anything is allocated, and again on the model the worker built.
    max_file_bytes : int
        Largest model file accepted.
    max_config_bytes, max_metadata_bytes : int
        Largest ``config.json`` / ``metadata.json`` (uncompressed).
    max_assets_bytes, max_members : int
        Total size of ``assets/`` files; most archive members.
    max_vocabulary_tokens : int
        Most lines (tokens) of one vocabulary asset (``assets/.../vocabulary.txt``).
    max_compression_ratio : float
        Largest uncompressed/compressed ratio of a member above 1 MiB (Keras stores members
        uncompressed; DEFLATE of real weights or JSON stays far below 100).
    max_layers, max_config_depth : int
        Most layers (all nesting levels) and deepest nesting of the config JSON.
    worker_memory_bytes : int
        Address-space limit (``RLIMIT_AS``) of the worker process that reads the file.
    worker_timeout_s : float
        Wall-clock limit of the worker (CPU limit: the same plus 5 s).
    fast_path_max_params : int
        Models up to this many parameters whose every weighted layer has its input shape
        recorded in its own ``build_config`` (true of every file Keras writes) skip the
        TensorFlow import in the worker: the worker then only reads the weights. 0 disables.

    Examples
    --------
    >>> from dataclasses import replace
    >>> replace(LoadLimits(), max_params=1_000).max_params
    1000
    """

    max_params: int = 20_000_000
    max_file_bytes: int = 1 << 30
    max_config_bytes: int = 8 * _MiB
    max_metadata_bytes: int = 64 * 1024
    max_assets_bytes: int = 64 * _MiB
    max_vocabulary_tokens: int = 5_000_000
    max_members: int = 1000
    max_compression_ratio: float = 100.0
    max_layers: int = 2000
    max_config_depth: int = 100
    worker_memory_bytes: int = 4 << 30
    worker_timeout_s: float = 120.0
    fast_path_max_params: int = 2_000_000

    @property
    def max_weights_bytes(self) -> int:
        """Largest ``model.weights.h5``: float64 weights plus two optimizer slots, and slack."""
        return self.max_params * 8 * 3 + 64 * _MiB

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LoadLimits:
        """Defaults, overridden by ``GATELENS_MAX_PARAMS``, ``GATELENS_WORKER_MEMORY_MB``,
        ``GATELENS_WORKER_TIMEOUT_S`` and ``GATELENS_FAST_PATH_MAX_PARAMS`` where set.

        Examples
        --------
        >>> LoadLimits.from_env({"GATELENS_MAX_PARAMS": "5000"}).max_params
        5000
        """
        env = os.environ if environ is None else environ
        out = cls()
        spec = {
            "GATELENS_MAX_PARAMS": ("max_params", int, 1),
            "GATELENS_WORKER_MEMORY_MB": ("worker_memory_bytes", int, _MiB),
            "GATELENS_WORKER_TIMEOUT_S": ("worker_timeout_s", float, 1),
            "GATELENS_FAST_PATH_MAX_PARAMS": ("fast_path_max_params", int, 1),
        }
        for var, (name, typ, scale) in spec.items():
            value = env_number(var, kind=typ, minimum=0, environ=env)
            if value is not None:
                out = replace(out, **{name: typ(value * scale)})
        return out


# --------------------------------------------------------------------------------------------
# What is allowed
# --------------------------------------------------------------------------------------------

#: Layers gatelens re-runs (recurrent) or passes through, by Keras class name.
LAYER_CLASSES = frozenset(
    {
        # input, embedding, dense, masking, dropout/noise, activations
        "InputLayer", "Embedding", "Masking", "Dense", "Identity",
        "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
        "ActivityRegularization", "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax",
        # recurrent
        "LSTM", "GRU", "SimpleRNN", "RNN", "LSTMCell", "GRUCell", "SimpleRNNCell",
        "Bidirectional", "TimeDistributed",
        # convolution, normalisation, pooling
        "Conv1D",
        "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
        "RMSNormalization", "Normalization",
        "MaxPooling1D", "AveragePooling1D", "GlobalMaxPooling1D", "GlobalAveragePooling1D",
        # shape
        "Flatten", "Reshape", "Permute", "RepeatVector", "Cropping1D", "ZeroPadding1D", "UpSampling1D",
        # merge
        "Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Dot",
        # text input (the model's own vocabulary)
        "TextVectorization", "StringLookup", "IntegerLookup",
    }
)  # fmt: skip
MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})
INITIALIZER_CLASSES = frozenset(
    {
        "Constant", "GlorotNormal", "GlorotUniform", "HeNormal", "HeUniform", "Identity",
        "IdentityInitializer", "LecunNormal", "LecunUniform", "Ones", "Orthogonal",
        "OrthogonalInitializer", "RandomNormal", "RandomUniform", "TruncatedNormal",
        "VarianceScaling", "Zeros",
    }
)  # fmt: skip
REGULARIZER_CLASSES = frozenset({"L1", "L2", "L1L2", "OrthogonalRegularizer"})
CONSTRAINT_CLASSES = frozenset({"MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm"})
DTYPE_POLICY_CLASSES = frozenset({"DTypePolicy", "FloatDTypePolicy"})
#: Operations a functional model may apply between layers (``x[:, -1]``, ``a + b``, the mask of an
#: Embedding, ...): element-wise math, reductions and shape ops; nothing that builds arrays from
#: constants, loops or calls functions.
OP_CLASSES = frozenset(
    {
        "Abs", "Absolute", "Add", "All", "Any", "Amax", "Amin", "Argmax", "Argmin", "Average", "Clip",
        "Concatenate", "Cos", "Cumsum", "Divide", "DivideNoNan", "Einsum", "Equal", "Exp", "ExpandDims",
        "Flip", "Floor", "FloorDivide", "GetItem", "Greater", "GreaterEqual", "Less", "LessEqual", "Log",
        "Log1p", "LogicalAnd", "LogicalNot", "LogicalOr", "Matmul", "Max", "Maximum", "Mean", "Min",
        "Minimum", "Mod", "Moveaxis", "Multiply", "Negative", "NotEqual", "OnesLike", "Power", "Prod",
        "Reciprocal", "Reshape", "Round", "Sign", "Sin", "Sqrt", "Square", "Squeeze", "Stack", "Std",
        "Subtract", "Sum", "Swapaxes", "Take", "Tanh", "Transpose", "TrueDivide", "Var", "Where",
        "ZerosLike",
        # keras.src.ops.nn / math / core
        "Relu", "Relu6", "Sigmoid", "Softmax", "LogSoftmax", "Softplus", "Softsign", "Elu", "Selu",
        "Gelu", "Silu", "LeakyRelu", "HardSigmoid", "Logsumexp", "Rsqrt", "Erf", "Cast", "StopGradient",
    }
)  # fmt: skip

#: Keras's built-in activations (``keras.activations``), the only functions a config may name.
ACTIVATIONS = frozenset(
    {
        "celu", "elu", "exponential", "gelu", "glu", "hard_shrink", "hard_sigmoid", "hard_silu",
        "hard_swish", "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "log_softmax", "mish",
        "relu", "relu6", "selu", "sigmoid", "silu", "soft_shrink", "softmax", "softplus", "softsign",
        "sparse_plus", "sparse_sigmoid", "sparsemax", "squareplus", "swish", "tanh", "tanh_shrink",
        "threshold",
    }
)  # fmt: skip
INITIALIZER_IDS = frozenset(
    {
        "constant", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "identity",
        "lecun_normal", "lecun_uniform", "normal", "one", "ones", "orthogonal", "random_normal",
        "random_uniform", "truncated_normal", "uniform", "variance_scaling", "zero", "zeros",
    }
    | INITIALIZER_CLASSES
)  # fmt: skip
REGULARIZER_IDS = frozenset({"l1", "l2", "l1l2", "l1_l2", "orthogonal_regularizer"} | REGULARIZER_CLASSES)
CONSTRAINT_IDS = frozenset({"max_norm", "min_max_norm", "non_neg", "unit_norm"} | CONSTRAINT_CLASSES)
DTYPE_NAMES = frozenset(
    {
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "bfloat16", "float32", "float64", "string", "mixed_float16", "mixed_bfloat16",
    }
)  # fmt: skip
TEXT_STANDARDIZE = frozenset({"lower_and_strip_punctuation", "lower", "strip_punctuation"})
TEXT_SPLIT = frozenset({"whitespace", "character"})
#: Layers that keep a vocabulary in ``assets/`` of the archive.
ASSET_LAYERS = frozenset({"TextVectorization", "StringLookup", "IntegerLookup"})
#: Data, not code, that Keras serialises as a class dict.
_DATA_CLASSES = frozenset({"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__"})
_CODE_CLASSES = {
    "__lambda__": "serialized Python bytecode (a lambda function)",
    "__typespec__": "a TensorFlow TypeSpec class reference",
}

_CLASSES_BY_KIND = {
    "model": MODEL_CLASSES,
    "layer": LAYER_CLASSES,
    "dtype_policy": DTYPE_POLICY_CLASSES,
    "initializer": INITIALIZER_CLASSES,
    "regularizer": REGULARIZER_CLASSES,
    "constraint": CONSTRAINT_CLASSES,
    "op": OP_CLASSES,
}
#: Where Keras 3 (and legacy tf.keras) put each kind of class.
_MODULE_PREFIXES = {
    "model": ("keras.models", "keras.src.models", "keras.src.engine", "keras.engine"),
    "layer": ("keras.layers", "keras.src.layers"),
    "dtype_policy": ("keras.dtype_policies", "keras.src.dtype_policies", "keras.mixed_precision"),
    "initializer": ("keras.initializers", "keras.src.initializers"),
    "regularizer": ("keras.regularizers", "keras.src.regularizers"),
    "constraint": ("keras.constraints", "keras.src.constraints"),
    "op": ("keras.ops", "keras.src.ops.numpy", "keras.src.ops.nn", "keras.src.ops.math", "keras.src.ops.core"),
}
_FUNCTION_MODULES = ("builtins", "keras.activations", "keras.src.activations", "keras.ops", "keras.src.ops.nn")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

SUPPORTED_TEXT = (
    "InputLayer, Embedding, Masking, Dense, Dropout, LSTM, GRU, SimpleRNN (or RNN over their cells), "
    "Bidirectional, TimeDistributed, Conv1D, normalisation, 1-D pooling, Activation, shape and merge "
    "layers, TextVectorization/StringLookup/IntegerLookup, in Sequential or functional models (nested allowed), "
    "with Keras's built-in activations, initializers, regularizers and constraints"
)

KERAS_MEMBERS = ("config.json", "metadata.json", "model.weights.h5")


# --------------------------------------------------------------------------------------------
# Config validation
# --------------------------------------------------------------------------------------------


@dataclass
class LayerEstimate:
    """One weighted layer of the parameter estimate."""

    name: str
    class_name: str
    params: int
    verified: bool  # input shape taken from a build_config Keras builds the layer from


@dataclass
class ConfigReport:
    """What :func:`validate_config` found.

    ``config`` is the sanitised config (``compile_config`` removed at every level): the one to hand
    to Keras. ``params`` is the parameter count implied by the config; ``params_verified`` is True
    when every weighted layer's input shape comes from a ``build_config`` (then ``params`` is exactly
    what Keras allocates when it builds the config).
    """

    config: dict
    params: int
    params_verified: bool
    layers: list[str] = field(default_factory=list)
    class_names: set[str] = field(default_factory=set)
    estimates: list[LayerEstimate] = field(default_factory=list)

    @property
    def uses_assets(self) -> bool:
        """True when a layer keeps a vocabulary in the archive's ``assets/``."""
        return bool(self.class_names & ASSET_LAYERS)


def _path_str(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out.lstrip(".") or "the top level"


def _where(path: tuple, layer: str | None) -> str:
    return f"layer {layer!r} ({_path_str(path)})" if layer else _path_str(path)


def _unsupported_class(name: str, cn: str, module: Any, registered: Any, path: tuple, layer: str | None) -> None:
    where = _where(path, layer)
    if cn == "Lambda":
        lname = layer or "?"
        raise UnsafeModelError(
            f"{name}: layer {lname!r} of class Lambda is not supported: a Lambda layer holds Python code, which "
            f"gatelens never runs; rebuild the model from built-in layers (supported: {SUPPORTED_TEXT})."
        )
    if (isinstance(registered, str) and ">" in registered) or ">" in cn:
        shown = registered if isinstance(registered, str) and ">" in registered else cn
        raise UnsafeModelError(
            f"{name}: {where} names the registered custom object {shown!r}: gatelens loads no custom code "
            f"(supported: {SUPPORTED_TEXT})."
        )
    if isinstance(module, str) and module != "keras" and not module.startswith("keras."):
        raise UnsafeModelError(
            f"{name}: the config names class {cn!r} from module {module!r}, which is not part of Keras "
            f"({where}); gatelens loads only built-in Keras classes (supported: {SUPPORTED_TEXT})."
        )
    raise UnsafeModelError(
        f"{name}: {where} is of class {cn!r}, which gatelens does not load: it re-runs only {SUPPORTED_TEXT}."
    )


def _resolve_kind(name: str, cn: str, module: Any, registered: Any, path: tuple, layer: str | None) -> str:
    """The kind of an allowed class ('layer', 'model', ...), or raise UnsafeModelError."""
    if registered is not None and registered != cn:
        _unsupported_class(name, cn, module, registered, path, layer)
    if module is None or module == "keras":  # legacy .h5 configs name no module; "keras" is the public API
        for kind, names in _CLASSES_BY_KIND.items():
            if cn in names:
                return kind
        _unsupported_class(name, cn, module, registered, path, layer)
    if not isinstance(module, str) or not _MODULE_RE.match(module):
        raise UnsafeModelError(f"{name}: {_where(path, layer)} names class {cn!r} from an invalid module {module!r}.")
    if not module.startswith("keras."):
        _unsupported_class(name, cn, module, registered, path, layer)
    for kind, prefixes in _MODULE_PREFIXES.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            if cn in _CLASSES_BY_KIND[kind]:
                return kind
            _unsupported_class(name, cn, module, registered, path, layer)
    raise UnsafeModelError(
        f"{name}: the config names {cn!r} from module {module!r} ({_where(path, layer)}); gatelens loads classes "
        "only from Keras's layers, models, ops, initializers, regularizers, constraints and dtype policies."
    )


def _check_identifier(name: str, key: str, value: str, path: tuple, layer: str | None) -> None:
    allowed = None
    what = ""
    if key in ("activation", "recurrent_activation"):
        allowed, what = ACTIVATIONS, "Keras's built-in activations"
    elif key.endswith("_initializer"):
        allowed, what = INITIALIZER_IDS, "Keras's built-in initializers"
    elif key.endswith("_regularizer"):
        allowed, what = REGULARIZER_IDS, "Keras's built-in regularizers"
    elif key.endswith("_constraint"):
        allowed, what = CONSTRAINT_IDS, "Keras's built-in constraints"
    elif key == "dtype":
        allowed, what = DTYPE_NAMES, "numeric, bool and string dtypes"
    elif key == "standardize":
        allowed, what = TEXT_STANDARDIZE, "the built-in standardizations"
    elif key == "split":
        allowed, what = TEXT_SPLIT, "the built-in splits"
    if allowed is not None and value not in allowed:
        shown = value if len(value) <= 80 else value[:77] + "..."
        where = f"layer {layer!r}: " if layer else ""
        raise UnsafeModelError(
            f"{name}: {where}{key} = {shown!r} is not one of {what} (at {_path_str(path + (key,))}; "
            f"supported: {', '.join(sorted(allowed))})."
        )


def _check_function(name: str, node: dict, path: tuple, layer: str | None) -> None:
    fn = node.get("config")
    module = node.get("module")
    registered = node.get("registered_name")
    if path and path[-1] in ("standardize", "split"):  # a TextVectorization given a Python callable
        key = path[-1]
        shown = fn if isinstance(fn, str) else type(fn).__name__
        allowed = TEXT_STANDARDIZE | {"None"} if key == "standardize" else TEXT_SPLIT | {"None"}
        raise UnsafeModelError(
            f"{name}: layer {layer or '?'!r}: {key} is the custom function {shown!r} (module {module!r}), which is "
            f"Python code gatelens never runs; save the layer with {key} one of {', '.join(sorted(allowed))} "
            f"and apply your own {key} to the text before gatelens reads it."
        )
    ok_module = module is None or (
        isinstance(module, str) and any(module == m or module.startswith(m + ".") for m in _FUNCTION_MODULES)
    )
    if isinstance(fn, str) and fn in ACTIVATIONS and ok_module and registered in (None, "function", fn):
        return
    shown = fn if isinstance(fn, str) else type(fn).__name__
    raise UnsafeModelError(
        f"{name}: {_where(path, layer)} references the function {shown!r} from module {module!r}: gatelens "
        f"runs no user functions; only Keras's built-in activations may be named "
        f"(supported: {', '.join(sorted(ACTIVATIONS))})."
    )


def _contains_keras_tensor(obj: Any, budget: int = 10_000) -> bool:
    stack = [obj]
    while stack and budget > 0:
        budget -= 1
        o = stack.pop()
        if isinstance(o, dict):
            if o.get("class_name") == "__keras_tensor__":
                return True
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return False


def _check_inbound_nodes(name: str, nodes: Any, path: tuple, layer: str | None) -> None:
    """Every node of a functional model must consume a tensor of the graph.

    Keras records a node only when a layer is called on a symbolic tensor; a node whose
    arguments are all constants would run eagerly while the model is rebuilt.
    """
    if not isinstance(nodes, list):
        raise ModelFormatError(f"{name}: {_where(path, layer)}: 'inbound_nodes' must be a list.")
    for i, node in enumerate(nodes):
        if isinstance(node, list):  # legacy format: [[layer_name, node_index, tensor_index, kwargs], ...]
            if not node or not all(isinstance(t, list) and t and isinstance(t[0], str) for t in node):
                raise ModelFormatError(f"{name}: {_where(path + ('inbound_nodes', i), layer)}: malformed node.")
        elif isinstance(node, dict):
            if not _contains_keras_tensor(node):
                raise UnsafeModelError(
                    f"{name}: {_where(path + ('inbound_nodes', i), layer)} calls the layer on constants only; "
                    "a saved functional model calls every layer on tensors of its graph."
                )
        else:
            raise ModelFormatError(f"{name}: {_where(path + ('inbound_nodes', i), layer)}: malformed node.")


def _walk_config(name: str, config: Any, limits: LoadLimits, report: ConfigReport) -> None:
    """Check every node of the config; remove ``compile_config`` (in place) everywhere."""
    # stack entries: (value, path, depth, enclosing layer name, parent is a Functional's layers list)
    stack: list[tuple[Any, tuple, int, str | None, bool]] = [(config, (), 0, None, False)]
    n_nodes = 0
    n_layers = 0
    while stack:
        value, path, depth, layer, in_functional = stack.pop()
        n_nodes += 1
        if depth > limits.max_config_depth:
            raise UnsafeModelError(
                f"{name}: the config nests deeper than {limits.max_config_depth} levels at {_path_str(path[:12])}..."
            )
        if isinstance(value, list):
            stack.extend((v, path + (i,), depth + 1, layer, False) for i, v in enumerate(value))
            continue
        if not isinstance(value, dict):
            continue
        value.pop("compile_config", None)
        if "class_name" in value:
            cn = value["class_name"]
            module = value.get("module")
            registered = value.get("registered_name")
            if not isinstance(cn, str):
                raise UnsafeModelError(f"{name}: {_where(path, layer)} has a non-string class_name {cn!r}.")
            if cn in _CODE_CLASSES:
                raise UnsafeModelError(
                    f"{name}: {_where(path, layer)} holds {_CODE_CLASSES[cn]} ({cn!r}); gatelens runs no code "
                    f"from a model file (supported: {SUPPORTED_TEXT})."
                )
            if cn in _DATA_CLASSES:
                if module is not None or registered is not None:
                    raise UnsafeModelError(f"{name}: {_where(path, layer)}: {cn!r} must not name a module.")
                inner = value.get("config")
                if cn in ("__tensor__", "__numpy__"):
                    dtype = inner.get("dtype") if isinstance(inner, dict) else None
                    if not isinstance(dtype, str) or dtype not in DTYPE_NAMES - {"string"}:
                        raise UnsafeModelError(
                            f"{name}: {_where(path, layer)}: constant of dtype {dtype!r} refused (numeric only)."
                        )
            elif cn == "function":
                _check_function(name, value, path, layer)
                continue
            else:
                cfg = value.get("config")
                cfg_name = cfg.get("name") if isinstance(cfg, dict) and isinstance(cfg.get("name"), str) else None
                kind = _resolve_kind(name, cn, module, registered, path, cfg_name or layer)
                if kind in ("layer", "model", "op"):
                    if not isinstance(cfg, dict):
                        raise ModelFormatError(f"{name}: {_where(path, layer)}: the config of {cn!r} must be a dict.")
                    lname = cfg.get("name")
                    layer = lname if isinstance(lname, str) else (value.get("name") or layer)
                    n_layers += 1
                    if n_layers > limits.max_layers:
                        raise UnsafeModelError(f"{name}: more than {limits.max_layers} layers and operations.")
                    report.class_names.add(cn)
                    if kind == "layer" and cn not in ("InputLayer",):
                        report.layers.append(str(layer))
                    for k, v in cfg.items():
                        if isinstance(v, str):
                            _check_identifier(name, k, v, path + ("config",), layer)
                    if in_functional and "inbound_nodes" in value:
                        _check_inbound_nodes(name, value["inbound_nodes"], path, layer)
                    if kind == "model" and cn != "Sequential" and isinstance(cfg.get("layers"), list):
                        for i, sub in enumerate(cfg["layers"]):
                            stack.append((sub, path + ("config", "layers", i), depth + 3, layer, True))
                        for k, v in cfg.items():
                            if k != "layers":
                                stack.append((v, path + ("config", k), depth + 2, layer, False))
                        for k, v in value.items():
                            if k != "config":
                                stack.append((v, path + (k,), depth + 1, layer, False))
                        continue
        elif "module" in value or "registered_name" in value:
            raise UnsafeModelError(
                f"{name}: {_where(path, layer)} names module {value.get('module')!r} / registered name "
                f"{value.get('registered_name')!r} without a class_name."
            )
        stack.extend((v, path + (k,), depth + 1, layer, False) for k, v in value.items())
        if n_nodes > 5_000_000:
            raise UnsafeModelError(f"{name}: the config has more than 5,000,000 entries.")


# ---- parameter estimate ---------------------------------------------------------------------

_Shape = list  # list[int | None]


def _shape(value: Any) -> _Shape | None:
    """A shape list from a config (``[null, 7, 3]``), or None when absent or malformed."""
    if isinstance(value, dict) and "input_shape" in value:
        value = value["input_shape"]
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        value = value[0]  # a multi-input layer: the first input
    if not isinstance(value, (list, tuple)) or len(value) > 64:
        return None
    out = []
    for d in value:
        if d is None:
            out.append(None)
        elif isinstance(d, int) and not isinstance(d, bool) and d >= 0:
            out.append(d)
        else:
            return None
    return out


def _int(cfg: dict, key: str, default: int | None = None) -> int:
    v = cfg.get(key, default)
    if isinstance(v, (list, tuple)) and len(v) == 1:
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ModelFormatError(f"expected a non-negative integer for {key!r}, got {v!r}")
    return v


_RNN_GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1, "LSTMCell": 4, "GRUCell": 3, "SimpleRNNCell": 1}
_SAME_SHAPE = frozenset(
    {
        "Masking", "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
        "ActivityRegularization", "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Identity",
        "UnitNormalization",
    }
)  # fmt: skip


class _Estimator:
    """Parameter count implied by a config: exact for what Keras builds from ``build_config``."""

    def __init__(self, name: str, limits: LoadLimits):
        self.name = name
        self.limits = limits
        self.items: list[LayerEstimate] = []
        self.depth = 0

    def add(self, lname: str, cn: str, params: int, verified: bool) -> None:
        self.items.append(LayerEstimate(lname, cn, int(params), verified))
        self.check_cap()

    def check_cap(self) -> None:
        total = sum(e.params for e in self.items)
        if total > self.limits.max_params:
            worst = max(self.items, key=lambda e: e.params)
            raise UnsafeModelError(
                f"{self.name}: the config implies at least {total:,} parameters (layer {worst.name!r} of class "
                f"{worst.class_name} alone has {worst.params:,}); gatelens loads models up to "
                f"{self.limits.max_params:,} parameters (LoadLimits.max_params, GATELENS_MAX_PARAMS)."
            )

    def layer(self, node: Any, in_shape: _Shape | None, verified: bool) -> _Shape | None:
        """Add the parameters of one layer dict; return its output shape (None when unknown)."""
        if not isinstance(node, dict):
            return None
        cn = node.get("class_name")
        cfg = node.get("config")
        if not isinstance(cfg, dict) or not isinstance(cn, str):
            return None
        own = _shape(node.get("build_config"))
        if own is not None:
            in_shape, verified = own, True
        lname = str(cfg.get("name", cn))
        try:
            return self._layer(cn, cfg, lname, in_shape, verified)
        except ModelFormatError as e:
            raise ModelFormatError(f"{self.name}: layer {lname!r} ({cn}): {e}") from None

    def _layer(self, cn: str, cfg: dict, lname: str, in_shape: _Shape | None, verified: bool) -> _Shape | None:
        last = in_shape[-1] if in_shape else None
        known = isinstance(last, int)
        d_in = last if known else 1  # unknown input width: count 1 (a lower bound), mark unverified
        ok = verified and known
        if cn in MODEL_CLASSES:
            self.depth += 1
            if self.depth > 32:
                raise UnsafeModelError(f"{self.name}: models nested more than 32 levels deep.")
            try:
                return self.model(cn, cfg, in_shape, verified)
            finally:
                self.depth -= 1
        if cn == "InputLayer":
            return _shape(cfg.get("batch_shape", cfg.get("batch_input_shape")))
        if cn in _RNN_GATES:
            u = _int(cfg, "units")
            k = _RNN_GATES[cn]
            bias = 0
            if cfg.get("use_bias", True):
                bias = k * u * (2 if k == 3 and cfg.get("reset_after", True) else 1)
            self.add(lname, cn, k * u * (d_in + u) + bias, ok)
            if cn.endswith("Cell"):
                return [None, u]
            if in_shape and cfg.get("return_sequences", False):
                return in_shape[:-1] + [u]
            return [in_shape[0] if in_shape else None, u]
        if cn == "RNN":
            cell = cfg.get("cell")
            if not isinstance(cell, dict) or cell.get("class_name") not in ("LSTMCell", "GRUCell", "SimpleRNNCell"):
                cell_cn = cell.get("class_name") if isinstance(cell, dict) else type(cell).__name__
                raise UnsafeModelError(
                    f"{self.name}: layer {lname!r} (RNN) holds a cell of class {cell_cn!r}; gatelens re-runs RNN "
                    "layers over LSTMCell, GRUCell or SimpleRNNCell only."
                )
            out = self.layer(cell, in_shape, verified)
            u = out[-1] if out else None
            if in_shape and cfg.get("return_sequences", False):
                return in_shape[:-1] + [u]
            return [in_shape[0] if in_shape else None, u]
        if cn == "Bidirectional":
            fwd = cfg.get("layer")
            bwd = cfg.get("backward_layer") or fwd
            o1 = self.layer(fwd, in_shape, verified)
            o2 = self.layer(bwd, in_shape, verified)
            if not o1 or not o2 or not isinstance(o1[-1], int) or not isinstance(o2[-1], int):
                return None
            mode = cfg.get("merge_mode", "concat")
            return o1[:-1] + [o1[-1] + o2[-1] if mode == "concat" else o1[-1]]
        if cn == "TimeDistributed":
            inner_in = [in_shape[0]] + in_shape[2:] if in_shape and len(in_shape) >= 2 else None
            out = self.layer(cfg.get("layer"), inner_in, verified)
            if not in_shape or len(in_shape) < 2 or out is None:
                return None
            return in_shape[:2] + out[1:]
        if cn == "Dense":
            u = _int(cfg, "units")
            p = d_in * u + (u if cfg.get("use_bias", True) else 0)
            r = cfg.get("lora_rank")
            if isinstance(r, int) and r > 0:
                p += r * (d_in + u)
            self.add(lname, cn, p, ok)
            return (in_shape[:-1] if in_shape else [None]) + [u]
        if cn == "Embedding":
            v, d = _int(cfg, "input_dim"), _int(cfg, "output_dim")
            p = v * d
            r = cfg.get("lora_rank")
            if isinstance(r, int) and r > 0:
                p += r * (v + d)
            self.add(lname, cn, p, True)  # independent of the input shape
            return (in_shape if in_shape else [None, None]) + [d]
        if cn == "Conv1D":
            f, ks = _int(cfg, "filters"), _int(cfg, "kernel_size")
            groups = max(_int(cfg, "groups", 1), 1)
            self.add(lname, cn, ks * (d_in // groups if known else 1) * f + (f if cfg.get("use_bias", True) else 0), ok)
            return [in_shape[0] if in_shape else None, None, f]
        if cn in (
            "BatchNormalization",
            "LayerNormalization",
            "GroupNormalization",
            "RMSNormalization",
            "Normalization",
        ):
            per = {"BatchNormalization": 4, "LayerNormalization": 2, "GroupNormalization": 2, "RMSNormalization": 1,
                   "Normalization": 2}[cn]  # fmt: skip
            axis = cfg.get("axis", -1)
            width = d_in
            if isinstance(axis, (list, tuple)) and in_shape:
                width = 1
                for a in axis:
                    if isinstance(a, int) and -len(in_shape) <= a < len(in_shape) and isinstance(in_shape[a], int):
                        width *= in_shape[a]
            elif isinstance(axis, int) and in_shape and -len(in_shape) <= axis < len(in_shape):
                width = in_shape[axis] if isinstance(in_shape[axis], int) else d_in
            self.add(lname, cn, per * width + (1 if cn == "Normalization" else 0), ok)
            return in_shape
        if cn in _SAME_SHAPE:
            return in_shape
        if cn == "Flatten":
            if in_shape and all(isinstance(d, int) for d in in_shape[1:]):
                return [in_shape[0], math.prod(in_shape[1:])]
            return [in_shape[0] if in_shape else None, None]
        if cn == "Reshape":
            target = _shape(cfg.get("target_shape")) if not isinstance(cfg.get("target_shape"), int) else None
            raw = cfg.get("target_shape")
            if target is None and isinstance(raw, list) and all(isinstance(d, int) for d in raw):
                total = math.prod(in_shape[1:]) if in_shape and all(isinstance(d, int) for d in in_shape[1:]) else None
                known_part = math.prod(d for d in raw if d != -1)
                fill = total // known_part if total is not None and known_part else None
                target = [fill if d == -1 else d for d in raw]
            return [in_shape[0] if in_shape else None] + (target or [None])
        if cn == "Permute":
            dims = cfg.get("dims")
            if in_shape and isinstance(dims, list) and all(isinstance(d, int) and 0 < d < len(in_shape) for d in dims):
                return [in_shape[0]] + [in_shape[d] for d in dims]
            return None
        if cn == "RepeatVector":
            n = _int(cfg, "n")
            return [in_shape[0], n] + in_shape[1:] if in_shape else None
        if cn in ("MaxPooling1D", "AveragePooling1D", "Cropping1D", "ZeroPadding1D", "UpSampling1D"):
            return [in_shape[0], None, last] if in_shape else None
        if cn in ("GlobalMaxPooling1D", "GlobalAveragePooling1D"):
            if cfg.get("keepdims"):
                return [in_shape[0], 1, last] if in_shape else None
            return [in_shape[0], last] if in_shape else None
        if cn in ("TextVectorization", "StringLookup", "IntegerLookup"):
            length = cfg.get("output_sequence_length")
            return [in_shape[0] if in_shape else None, length if isinstance(length, int) else None]
        return None  # merge layers and ops: no parameters; output shape not tracked

    def model(self, cn: str, cfg: dict, in_shape: _Shape | None, verified: bool) -> _Shape | None:
        layers = cfg.get("layers")
        if not isinstance(layers, list):
            raise ModelFormatError(f"{self.name}: model of class {cn} has no 'layers' list.")
        if cn == "Sequential":
            shape = _shape(cfg.get("build_input_shape")) or in_shape
            for node in layers:
                shape = self.layer(node, shape, verified and shape is not None)
            return shape
        # Functional: each layer's input shape from its build_config, else from the (claimed) shape
        # of the first tensor it is called on: Keras builds it on the real tensor (not verified).
        for node in layers:
            claimed = None
            nodes = node.get("inbound_nodes") if isinstance(node, dict) else None
            if isinstance(nodes, list) and nodes and isinstance(nodes[0], dict):
                args = nodes[0].get("args")
                if isinstance(args, list) and args:
                    first = args[0][0] if isinstance(args[0], list) and args[0] else args[0]
                    if isinstance(first, dict) and first.get("class_name") == "__keras_tensor__":
                        inner = first.get("config")
                        claimed = _shape(inner.get("shape")) if isinstance(inner, dict) else None
            self.layer(node, claimed, False)
        return None


def validate_config(config: Any, name: str, limits: LoadLimits | None = None) -> ConfigReport:
    """Check a model config (the parsed ``config.json``) against the allowlist and the parameter cap.

    Parameters
    ----------
    config : dict
        The parsed config; it is modified in place (``compile_config`` removed at every level).
    name : str
        The file name used in error messages.
    limits : LoadLimits, optional

    Returns
    -------
    ConfigReport

    Raises
    ------
    UnsafeModelError
        A class, module, function or identifier outside the allowlist, or a limit exceeded.
    ModelFormatError
        The config is not a Keras model config.

    Examples
    --------
    >>> cfg = {"module": "keras", "class_name": "Sequential", "config": {"name": "s", "layers": [
    ...     {"module": "keras.layers", "class_name": "LSTM", "config": {"name": "big", "units": 50000},
    ...      "build_config": {"input_shape": [None, 7, 3]}}]}}
    >>> validate_config(cfg, "m.keras")
    Traceback (most recent call last):
    ...
    gatelens.errors.UnsafeModelError: m.keras: the config implies at least 10,000,800,000 parameters ...
    """
    limits = limits or LoadLimits()
    if not isinstance(config, dict):
        raise ModelFormatError(f"{name}: the model config is a JSON {type(config).__name__}, not an object.")
    report = ConfigReport(config=config, params=0, params_verified=False)
    _walk_config(name, config, limits, report)
    if config.get("class_name") not in MODEL_CLASSES:
        raise ModelFormatError(
            f"{name}: the config describes a {config.get('class_name')!r}, not a Sequential or functional Keras model."
        )
    est = _Estimator(name, limits)
    try:
        est.layer(config, None, False)
    except RecursionError:
        raise UnsafeModelError(f"{name}: the model config nests too deeply.") from None
    report.estimates = est.items
    report.params = sum(e.params for e in est.items)
    report.params_verified = all(e.verified for e in est.items)
    return report


def parse_config_json(data: bytes | str, name: str, limits: LoadLimits | None = None) -> Any:
    """Parse a config JSON document with bounded size and nesting.

    Examples
    --------
    >>> parse_config_json(b'{"a": [1, 2]}', "m.keras")
    {'a': [1, 2]}
    """
    limits = limits or LoadLimits()
    if len(data) > limits.max_config_bytes:
        raise UnsafeModelError(
            f"{name}: the model config is {len(data):,} bytes; the limit is {limits.max_config_bytes:,}."
        )
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelFormatError(
                f"{name}: the model config is not UTF-8 text ({e.reason} at byte {e.start})."
            ) from None
    try:
        return json.loads(data)
    except RecursionError:
        raise UnsafeModelError(f"{name}: the model config nests too deeply.") from None
    except ValueError as e:
        raise ModelFormatError(f"{name}: the model config is not valid JSON: {e}") from None


# --------------------------------------------------------------------------------------------
# The .keras archive
# --------------------------------------------------------------------------------------------


@dataclass
class KerasArchive:
    """The validated content of a ``.keras`` archive (the weights stay in the file)."""

    report: ConfigReport
    metadata: dict
    assets: dict[str, bytes]
    weights_member: str
    weights_bytes: int


def _eocd_summary(fh, file_size: int) -> tuple[int, int]:
    """(number of entries, size of the central directory) from the zip's end records."""
    tail_len = min(file_size, 22 + 65535)
    fh.seek(file_size - tail_len)
    tail = fh.read(tail_len)
    pos = -1
    if len(tail) >= 22 and tail[-22:-18] == b"PK\x05\x06" and tail[-2:] == b"\x00\x00":
        pos = len(tail) - 22
    else:
        pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + 22 > len(tail):
        raise ModelFormatError("not a zip archive (no end-of-central-directory record)")
    _, _, _, _, entries, cd_size, cd_offset, _ = struct.unpack("<4s4H2LH", tail[pos : pos + 22])
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        loc = pos - 20
        if loc < 0 or tail[loc : loc + 4] != b"PK\x06\x07":
            raise ModelFormatError("broken zip64 archive (no zip64 locator)")
        _, _, rec_offset, _ = struct.unpack("<4sLQL", tail[loc : loc + 20])
        if rec_offset + 56 > file_size:
            raise ModelFormatError("broken zip64 archive (record out of range)")
        fh.seek(rec_offset)
        rec = fh.read(56)
        if len(rec) < 56 or rec[:4] != b"PK\x06\x06":
            raise ModelFormatError("broken zip64 archive (bad zip64 record)")
        _, _, _, _, _, _, _, entries, cd_size, _ = struct.unpack("<4sQ2H2L4Q", rec)
    return entries, cd_size


_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,
    RuntimeError,
    ValueError,
    OSError,
    EOFError,
    struct.error,
    zlib.error,
    UnicodeError,
    KeyError,
    OverflowError,
    IndexError,
    TypeError,
)


def _member_kind(filename: str, name: str) -> str:
    """'file' (a required member), 'asset', 'asset_dir' or 'unexpected'; raise for a hostile name."""
    if (
        not filename
        or "\x00" in filename
        or "\\" in filename
        or filename.startswith("/")
        or re.match(r"^[A-Za-z]:", filename)
        or len(filename) > 512
    ):
        raise UnsafeModelError(f"{name}: archive member {filename!r} has an absolute or invalid name; refused.")
    parts = filename.split("/")
    body = parts[:-1] if filename.endswith("/") else parts
    if any(p in ("", ".", "..") for p in body) or any(ord(c) < 32 for c in filename):
        raise UnsafeModelError(
            f"{name}: archive member {filename!r} has a '..', '.' or empty path component; refused "
            "(a member name must not point outside the archive)."
        )
    if filename in KERAS_MEMBERS:
        return "file"
    if parts[0] == "assets" and len(parts) > 1:
        return "asset_dir" if filename.endswith("/") else "asset"
    if filename == "assets/":
        return "asset_dir"
    return "unexpected"


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, name: str) -> bytes:
    with zf.open(info) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnsafeModelError(f"{name}: archive member {info.filename!r} inflates past {limit:,} bytes; refused.")
    return data


#: Where Keras writes a lookup layer's vocabulary: ``assets/layers/<layer>/[_lookup_layer/]vocabulary.txt``
#: (``<layer>`` the snake-case class name, ``_N`` for the N-th; nested models add ``layers/<model>/``).
_VOCAB_ASSET_RE = re.compile(
    r"^assets/(?:layers/[a-z0-9_]{1,100}/){0,20}layers/(?P<layer>string_lookup|integer_lookup|text_vectorization)(?:_\d{1,6})?/"
    r"(?:_lookup_layer/)?vocabulary\.txt$"
)

_INT_TOKEN_RE = re.compile(r"^-?\d{1,19}$")


def check_vocabulary_assets(assets: Mapping[str, bytes], name: str, limits: LoadLimits | None = None) -> None:
    """Refuse assets that are not a lookup layer's vocabulary as Keras writes it: UTF-8 text, one token a line.

    Each member must be named ``assets/layers/<lookup layer>/[_lookup_layer/]vocabulary.txt`` (the
    names ``StringLookup``, ``IntegerLookup`` and ``TextVectorization`` save under), decode as UTF-8,
    and hold at most :attr:`LoadLimits.max_vocabulary_tokens` lines; an ``IntegerLookup`` vocabulary
    holds integers only. (Sizes are bounded by ``max_assets_bytes`` before anything is read.)

    Raises
    ------
    UnsafeModelError
        Naming the member and what was found.

    Examples
    --------
    >>> check_vocabulary_assets({"assets/layers/string_lookup/vocabulary.txt": b"[UNK]\\na"}, "m.keras")
    >>> check_vocabulary_assets({"assets/layers/string_lookup/run.sh": b"x"}, "m.keras")
    Traceback (most recent call last):
    ...
    gatelens.errors.UnsafeModelError: m.keras: asset 'assets/layers/string_lookup/run.sh' is not a vocabulary ...
    """
    limits = limits or LoadLimits()
    for fn, data in assets.items():
        m = _VOCAB_ASSET_RE.match(fn)
        if not m:
            raise UnsafeModelError(
                f"{name}: asset {fn!r} is not a vocabulary where Keras writes one "
                "(assets/layers/<string_lookup|integer_lookup|text_vectorization>/vocabulary.txt); refused."
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UnsafeModelError(
                f"{name}: vocabulary asset {fn!r} is not UTF-8 text (byte {e.start}: {e.reason}); refused."
            ) from None
        n = text.count("\n") + 1 if text else 0
        if n > limits.max_vocabulary_tokens:
            raise UnsafeModelError(
                f"{name}: vocabulary asset {fn!r} holds {n:,} tokens; the limit is {limits.max_vocabulary_tokens:,}."
            )
        if m.group("layer") == "integer_lookup":
            bad = next((i for i, t in enumerate(text.split("\n")) if not _INT_TOKEN_RE.match(t)), None)
            if bad is not None:
                raise UnsafeModelError(
                    f"{name}: vocabulary asset {fn!r}, line {bad + 1}: an IntegerLookup vocabulary holds integers "
                    "only; refused."
                )


def inspect_keras_archive(path: str | os.PathLike, name: str | None = None,
                          limits: LoadLimits | None = None) -> KerasArchive:  # fmt: skip
    """Validate a ``.keras`` archive and its config without importing Keras.

    Parameters
    ----------
    path : path of the archive
    name : str, optional
        The file name for messages (default: ``path`` as given).
    limits : LoadLimits, optional

    Returns
    -------
    KerasArchive
        The validated, sanitised config (``.report.config``), the metadata and the assets.

    Raises
    ------
    UnsafeModelError, ModelFormatError

    Examples
    --------
    >>> import tempfile, zipfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "evil.keras")
    >>> with zipfile.ZipFile(p, "w") as z:
    ...     z.writestr("../x", b"boom")
    >>> inspect_keras_archive(p, "evil.keras")
    Traceback (most recent call last):
    ...
    gatelens.errors.UnsafeModelError: evil.keras: archive member '../x' has a '..', ...
    """
    limits = limits or LoadLimits()
    name = name or str(path)
    try:
        return _inspect_keras_archive(Path(path), name, limits)
    except GatelensInputError:
        raise
    except RecursionError:
        raise UnsafeModelError(f"{name}: the archive nests too deeply.") from None
    except MemoryError:
        raise UnsafeModelError(f"{name}: reading the archive ran out of memory; refused.") from None
    except _ZIP_ERRORS as e:
        raise ModelFormatError(f"{name}: not a readable .keras archive ({type(e).__name__}: {e}).") from None


def _inspect_keras_archive(path: Path, name: str, limits: LoadLimits) -> KerasArchive:
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise UnsafeModelError(f"{name}: the file is {size:,} bytes; the limit is {limits.max_file_bytes:,}.")
    with open(path, "rb") as fh:
        try:
            entries, cd_size = _eocd_summary(fh, size)
        except ModelFormatError as e:
            raise ModelFormatError(
                f"{name}: {e}; a .keras file is the zip archive that model.save('model.keras') writes."
            ) from None
        if entries > limits.max_members or cd_size > limits.max_members * 1024:
            raise UnsafeModelError(
                f"{name}: the archive declares {entries:,} members ({cd_size:,} bytes of directory); "
                f"the limit is {limits.max_members:,}."
            )
        fh.seek(0)
        with zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
            if len(infos) > limits.max_members:
                raise UnsafeModelError(f"{name}: the archive has {len(infos):,} members; the limit is "
                                       f"{limits.max_members:,}.")  # fmt: skip
            seen: set[str] = set()
            by_name: dict[str, zipfile.ZipInfo] = {}
            assets: list[zipfile.ZipInfo] = []
            unexpected: list[str] = []
            total = 0
            for info in infos:
                fn = info.filename
                if fn in seen:
                    raise UnsafeModelError(f"{name}: archive member {fn!r} appears twice; refused.")
                seen.add(fn)
                kind = _member_kind(fn, name)
                if info.flag_bits & 0x1:
                    raise ModelFormatError(f"{name}: archive member {fn!r} is encrypted.")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise ModelFormatError(
                        f"{name}: archive member {fn!r} uses compression method {info.compress_type}; "
                        "expected stored or deflated."
                    )
                if info.file_size > (1 << 20) and info.file_size > limits.max_compression_ratio * max(
                    info.compress_size, 1
                ):
                    raise UnsafeModelError(
                        f"{name}: archive member {fn!r} declares {info.file_size:,} bytes stored in "
                        f"{info.compress_size:,} (ratio above {limits.max_compression_ratio:g}): a zip bomb; refused."
                    )
                total += info.file_size
                if kind == "unexpected":
                    unexpected.append(fn)
                elif kind == "file":
                    by_name[fn] = info
                elif kind == "asset":
                    assets.append(info)
                elif info.file_size:
                    raise UnsafeModelError(f"{name}: directory entry {fn!r} holds data; refused.")
            missing = [m for m in KERAS_MEMBERS if m not in by_name]
            if missing and any(u.startswith("model.weights") for u in unexpected):
                raise ModelFormatError(
                    f"{name}: the archive stores its weights as {unexpected[0]!r}; gatelens reads the default "
                    "weights format (model.weights.h5): re-save the model with model.save('model.keras')."
                )
            if missing:
                raise ModelFormatError(
                    f"{name}: not a Keras model archive: it lacks {', '.join(missing)} (a .keras file written by "
                    f"model.save holds {', '.join(KERAS_MEMBERS)})."
                )
            if unexpected:
                raise UnsafeModelError(
                    f"{name}: unexpected archive member {unexpected[0]!r}; a .keras file holds only "
                    f"{', '.join(KERAS_MEMBERS)} and, for text layers, assets/."
                )
            caps = {
                "config.json": limits.max_config_bytes,
                "metadata.json": limits.max_metadata_bytes,
                "model.weights.h5": limits.max_weights_bytes,
            }
            for fn, cap in caps.items():
                if fn in by_name and by_name[fn].file_size > cap:
                    raise UnsafeModelError(
                        f"{name}: archive member {fn!r} declares {by_name[fn].file_size:,} bytes; the limit is {cap:,}."
                    )
            asset_total = sum(i.file_size for i in assets)
            if asset_total > limits.max_assets_bytes:
                raise UnsafeModelError(
                    f"{name}: the assets declare {asset_total:,} bytes; the limit is {limits.max_assets_bytes:,}."
                )
            if total > limits.max_weights_bytes + limits.max_config_bytes + limits.max_assets_bytes + (1 << 20):
                raise UnsafeModelError(f"{name}: the archive declares {total:,} bytes in all; refused.")
            config = parse_config_json(_read_member(zf, by_name["config.json"], limits.max_config_bytes, name),
                                       name, limits)  # fmt: skip
            report = validate_config(config, name, limits)
            raw_meta = _read_member(zf, by_name["metadata.json"], limits.max_metadata_bytes, name)
            try:
                metadata = json.loads(raw_meta.decode("utf-8"))
            except (ValueError, RecursionError):
                raise ModelFormatError(f"{name}: metadata.json is not valid JSON.") from None
            if not isinstance(metadata, dict):
                raise ModelFormatError(f"{name}: metadata.json is not a JSON object.")
            if assets and not report.uses_assets:
                raise UnsafeModelError(
                    f"{name}: the archive holds assets ({assets[0].filename!r}, ...) but no layer that keeps a "
                    f"vocabulary ({', '.join(sorted(ASSET_LAYERS))}); refused."
                )
            asset_data = {i.filename: _read_member(zf, i, limits.max_assets_bytes, name) for i in assets}
            check_vocabulary_assets(asset_data, name, limits)
            return KerasArchive(
                report=report,
                metadata=metadata,
                assets=asset_data,
                weights_member="model.weights.h5",
                weights_bytes=by_name["model.weights.h5"].file_size,
            )


# --------------------------------------------------------------------------------------------
# HDF5 (used in the worker only)
# --------------------------------------------------------------------------------------------

#: HDF5 filters Keras or h5py may use: deflate, shuffle, fletcher32, szip, nbit, scaleoffset, lzf.
_H5_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000})


def check_h5_tree(h5, name: str, limits: LoadLimits, skip: tuple[str, ...] = ()) -> list[str]:
    """Refuse soft/external links and external, virtual, filtered-by-plugin or non-numeric datasets.

    Returns the paths of all datasets (outside ``skip`` groups). Links are inspected without
    being followed (``visititems_links``).
    """
    import h5py

    problems: list[str] = []
    count = [0]

    def on_link(path: str, link) -> None:
        count[0] += 1
        if count[0] > 200_000:
            raise UnsafeModelError(f"{name}: the HDF5 file has more than 200,000 links; refused.")
        if isinstance(link, h5py.ExternalLink):
            problems.append(
                f"{name}: HDF5 external link {path!r} -> {link.filename!r}:{link.path!r} refused: gatelens reads "
                "only data stored inside the file."
            )
        elif isinstance(link, h5py.SoftLink):
            problems.append(f"{name}: HDF5 soft link {path!r} -> {link.path!r} refused.")
        elif not isinstance(link, h5py.HardLink):
            problems.append(f"{name}: HDF5 link {path!r} of type {type(link).__name__} refused.")

    h5.visititems_links(on_link)
    if problems:
        raise UnsafeModelError(problems[0])
    datasets: list[str] = []
    budget = [limits.max_weights_bytes]

    def on_object(path: str, obj) -> None:
        if any(path == s or path.startswith(s + "/") for s in skip):
            return
        if isinstance(obj, h5py.Group):
            return
        if not isinstance(obj, h5py.Dataset):
            raise UnsafeModelError(f"{name}: HDF5 object {path!r} of type {type(obj).__name__} refused.")
        if obj.external:
            raise UnsafeModelError(f"{name}: HDF5 dataset {path!r} is stored in external files {obj.external!r}.")
        if obj.is_virtual:
            raise UnsafeModelError(f"{name}: HDF5 dataset {path!r} is a virtual dataset (data from other files).")
        dt = obj.dtype
        if dt.kind not in "biuf" or dt.fields is not None or dt.subdtype is not None or dt.itemsize > 8:
            raise ModelFormatError(f"{name}: HDF5 dataset {path!r} has dtype {dt}; weights must be numeric.")
        plist = obj.id.get_create_plist()
        for i in range(plist.get_nfilters()):
            fid = plist.get_filter(i)[0]
            if fid not in _H5_FILTERS:
                raise UnsafeModelError(f"{name}: HDF5 dataset {path!r} needs filter plugin {fid}; refused.")
        declared = math.prod(obj.shape or ()) * dt.itemsize
        budget[0] -= declared
        if budget[0] < 0:
            raise UnsafeModelError(
                f"{name}: the HDF5 datasets declare more than {limits.max_weights_bytes:,} bytes; refused."
            )
        datasets.append(path)

    h5.visititems(on_object)
    return datasets


def read_h5_weights(h5, name: str, limits: LoadLimits, skip: tuple[str, ...] = ("optimizer",)) -> dict[str, Any]:
    """All datasets of a checked Keras weights file as numpy arrays, keyed by HDF5 path."""
    import numpy as np

    out: dict[str, Any] = {}
    n_values = 0
    for path in check_h5_tree(h5, name, limits, skip):
        ds = h5[path]
        n_values += math.prod(ds.shape or ())
        if n_values > limits.max_params + 1_000_000:
            raise UnsafeModelError(
                f"{name}: the weights hold more than {limits.max_params:,} values; gatelens loads models up to "
                f"{limits.max_params:,} parameters."
            )
        out[path] = np.asarray(ds[()])
    return out


_WEIGHT_KEY_RE = re.compile(r"^[^\x00-\x1f/][^\x00-\x1f]*$")


def check_weight_keys(weights: Mapping[str, Any], name: str) -> None:
    """Weight keys must be plain relative HDF5 paths."""
    for key in weights:
        if (
            not isinstance(key, str)
            or not _WEIGHT_KEY_RE.match(key)
            or any(p in ("", ".", "..") for p in key.split("/"))
        ):
            raise UnsafeModelError(f"{name}: weight path {key!r} refused.")


def write_clean_archive(dest: str | os.PathLike, config: dict, weights: Mapping[str, Any],
                        assets: Mapping[str, bytes], keras_version: str = "") -> Path:  # fmt: skip
    """Compose a fresh ``.keras`` archive from validated parts: the one Keras is given.

    The config is the sanitised dict re-serialised by ``json.dumps``; the weights are plain numeric
    arrays written to a new HDF5 file; assets are bytes under ``assets/``.
    """
    import h5py
    import numpy as np

    dest = Path(dest)
    h5_path = dest.with_name(dest.name + ".weights.h5")
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        with h5py.File(h5_path, "w") as h5:
            for key, arr in weights.items():
                a = np.asarray(arr)
                if a.dtype.kind not in "biuf":
                    raise ModelFormatError(f"weight {key!r} has dtype {a.dtype}; expected numbers")
                h5.create_dataset(key, data=a)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            meta = {"keras_version": keras_version, "date_saved": "gatelens-safe-loader"}
            zf.writestr("metadata.json", json.dumps(meta))
            zf.writestr("config.json", json.dumps(config))
            zf.write(h5_path, "model.weights.h5")
            for fn, data in assets.items():
                zf.writestr(fn, data)
    finally:
        h5_path.unlink(missing_ok=True)
    os.replace(tmp, dest)
    return dest


def iter_class_dicts(config: Any) -> Iterator[dict]:
    """Every dict with a ``class_name`` in a config (used by tests and reports).

    Examples
    --------
    >>> [d["class_name"] for d in iter_class_dicts({"class_name": "A", "config": {"x": {"class_name": "B"}}})]
    ['A', 'B']
    """
    stack = [config]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if "class_name" in v:
                yield v
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, list):
            stack.extend(reversed(v))
