"""Walk a Keras model's layer graph: find its recurrent layers and call it with a hook on them.

The model object is never modified: :func:`call_with_hook` runs the model's own graph
(``Functional._run_through_graph``, the function Keras itself calls, through :mod:`gatelens.models.compat`),
substituting a
callable for each recurrent layer, so the hook sees exactly the tensors and the mask
that layer receives inside the model, nested sub-models included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import keras

from gatelens.errors import UnsupportedLayerError
from gatelens.models import compat

#: Keras classes of recurrent layers gatelens re-runs, by the cell they hold.
CELL_TYPES = {"LSTMCell": "lstm", "GRUCell": "gru", "SimpleRNNCell": "simple_rnn"}
RECURRENT_CLASSES = ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional")
#: Layers that pass their input through unchanged at inference (an Embedding's output stays "an embedding").
PASS_THROUGH = ("Dropout", "SpatialDropout1D", "Masking", "GaussianNoise", "GaussianDropout", "AlphaDropout")


def _is_model(layer: Any) -> bool:
    return isinstance(layer, keras.Model)


def _cell_type(layer: Any) -> str | None:
    cell = getattr(layer, "cell", None)
    return CELL_TYPES.get(type(cell).__name__) if cell is not None else None


def check_supported(layer: Any) -> None:
    """Raise UnsupportedLayerError for a recurrent layer the extractor cannot re-run."""
    cls = type(layer).__name__
    supported = "LSTM, GRU, SimpleRNN (or keras.layers.RNN over their cells), and Bidirectional wrappers of them"
    if cls.startswith("ConvLSTM"):
        raise UnsupportedLayerError(f"layer {layer.name!r} is a {cls}; gatelens re-runs {supported}.")
    if cls == "Bidirectional":
        check_supported(layer.forward_layer)
        check_supported(layer.backward_layer)
        return
    if isinstance(layer, keras.layers.RNN):
        cell = layer.cell
        if type(cell).__name__ not in CELL_TYPES or type(cell).__module__.split(".")[0] != "keras":
            raise UnsupportedLayerError(
                f"layer {layer.name!r} holds a {type(cell).__name__} cell, which is not a Keras built-in; "
                f"gatelens re-runs {supported}."
            )
        if layer.stateful:
            raise UnsupportedLayerError(
                f"layer {layer.name!r} is stateful (it carries state between batches); gatelens re-runs "
                f"non-stateful layers only: re-create it with stateful=False and copy the weights."
            )
        for part in (layer, cell):
            policy = getattr(part, "dtype_policy", None)
            compute = getattr(part, "compute_dtype", None)
            variables = getattr(part, "variable_dtype", None)
            if (compute, variables) != ("float32", "float32"):
                name = getattr(policy, "name", None) or f"{compute}/{variables}"
                raise UnsupportedLayerError(
                    f"layer {layer.name!r} computes in {compute} with {variables} weights (dtype policy {name!r}); "
                    f"gatelens re-runs float32 layers only: build the model with dtype policy 'float32' and copy "
                    f"the weights."
                )


def is_recurrent(layer: Any) -> bool:
    """True for a layer the extractor captures (or must refuse)."""
    return (
        isinstance(layer, keras.layers.RNN)
        or type(layer).__name__ in ("Bidirectional",)
        or (type(layer).__name__.startswith("ConvLSTM"))
    )


def iter_layers(model: Any) -> Iterator[Any]:
    """All layers of ``model`` depth-first, descending into nested models (not into RNN cells)."""
    for layer in model.layers:
        yield layer
        if _is_model(layer):
            yield from iter_layers(layer)


def recurrent_layers(model: Any) -> list[Any]:
    """The recurrent layers of ``model`` in graph order; unsupported ones raise UnsupportedLayerError."""
    found = []
    for layer in iter_layers(model):
        if is_recurrent(layer):
            check_supported(layer)
            found.append(layer)
    return found


@dataclass
class CallContext:
    """What :func:`call_with_hook` tracks while it runs: tensors produced by an Embedding."""

    embedding_of: dict[int, Any]


Hook = Callable[[Any, tuple, dict, Any, CallContext], Any]


def call_with_hook(model: Any, inputs: Any, hook: Hook) -> Any:
    """Run ``model`` on ``inputs`` (inference mode); each recurrent layer is called through ``hook``.

    ``hook(layer, args, kwargs, call, ctx)`` must return what ``call(*args, **kwargs)`` returns
    (``call`` runs the Keras layer itself).
    """
    ctx = CallContext(embedding_of={})
    return _run(model, inputs, hook, ctx)


def _layer_call(layer: Any, hook: Hook, ctx: CallContext) -> Callable:
    cls = type(layer).__name__

    def call(*args, **kwargs):
        if compat.call_has_training_arg(layer):
            kwargs["training"] = False
        if is_recurrent(layer):
            return hook(layer, args, kwargs, layer, ctx)
        if _is_model(layer):
            out = _run(layer, args[0] if len(args) == 1 else list(args), hook, ctx)
        else:
            out = layer(*args, **kwargs)
        if cls == "Embedding":
            ctx.embedding_of[id(out)] = layer
        elif cls in PASS_THROUGH and args and id(args[0]) in ctx.embedding_of:
            ctx.embedding_of[id(out)] = ctx.embedding_of[id(args[0])]
        return out

    return call


def _run(model: Any, inputs: Any, hook: Hook, ctx: CallContext) -> Any:
    functional = compat.functional_of(model)
    if functional is not None:
        out = compat.run_through_graph(functional, inputs, lambda op: _layer_call(op, hook, ctx))
        return out[0] if isinstance(out, (list, tuple)) and len(out) == 1 else out
    if isinstance(model, keras.Sequential):
        x = inputs
        for layer in model.layers:
            x = _layer_call(layer, hook, ctx)(x)
        return x
    raise UnsupportedLayerError(
        f"model {getattr(model, 'name', '?')!r} of class {type(model).__name__} is a subclassed model; "
        "gatelens needs a Sequential or functional model (its layer graph is what it re-runs)."
    )
