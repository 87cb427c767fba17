"""Small, seeded models, data and runs for the docstring examples and the notebook (one shared set-up).

Each helper builds a real Keras model with fixed names and seeded weights, so an example's output does
not depend on which other examples ran first (Keras's global name counter) or on a random draw.

Examples
--------
>>> from gatelens._examples import tiny_model, tiny_inputs
>>> tiny_model().layers[0].name, tiny_inputs().shape
('lstm', (2, 4, 2))
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def tiny_inputs(n: int = 2, steps: int = 4, features: int = 2, seed: int = 0) -> np.ndarray:
    """Float inputs ``(n, steps, features)`` drawn from a seeded normal distribution."""
    return np.random.default_rng(seed).normal(size=(n, steps, features)).astype("float32")


def tiny_model(cell: str = "lstm", units: int = 3, steps: int = 4, features: int = 2, seed: int = 0) -> Any:
    """A ``Sequential`` model of one recurrent layer named ``cell`` (``lstm``, ``gru`` or ``simple_rnn``)
    returning its whole sequence, then a ``Dense(1)`` named ``head``; weights drawn from a seeded generator."""
    import keras

    layer = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simple_rnn": keras.layers.SimpleRNN}[cell]
    model = keras.Sequential(
        [
            keras.Input((steps, features)),
            layer(units, return_sequences=True, name=cell),
            keras.layers.Dense(1, name="head"),
        ]
    )
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") for w in model.get_weights()])
    return model


def tiny_model_path(directory: str | os.PathLike | None = None, **kwargs: Any) -> Path:
    """:func:`tiny_model` saved as a real ``.keras`` file (in a new temporary folder by default)."""
    folder = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="gatelens-example-"))
    path = folder / "tiny.keras"
    tiny_model(**kwargs).save(path)
    return path


def tiny_lstm_model(**kwargs: Any) -> Any:
    """:func:`tiny_model` saved and loaded back through gatelens's safe loader."""
    from gatelens.models.loading import load_model

    return load_model(tiny_model_path(**kwargs))


def tiny_run(directory: str | os.PathLike | None = None, n: int = 6, **kwargs: Any) -> Path:
    """A run directory written by :func:`gatelens.write_run` for :func:`tiny_model` on ``n`` sequences."""
    from gatelens.models.extract import write_run

    folder = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="gatelens-example-"))
    out = folder / "run"
    write_run(tiny_model(**kwargs), tiny_inputs(n=n), out, batch_size=4)
    return out


#: a three-day series with a date column, for examples of time-keyed data
DATED_CSV = "date,v\n2024-01-01,1\n2024-01-02,2\n2024-01-03,3\n"


def example_file(name: str = "s.csv", text: str = DATED_CSV) -> str:
    """A new temporary file ``name`` holding ``text`` (default :data:`DATED_CSV`); its path.

    >>> open(example_file()).readline().strip()
    'date,v'
    """
    path = Path(tempfile.mkdtemp(prefix="gatelens-example-")) / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def example_layer(
    cell: str = "lstm",
    n: int = 1,
    steps: int = 4,
    units: int = 1,
    *,
    fill: float = 0.0,
    name: str | None = None,
    mask: np.ndarray | None = None,
    inputs: np.ndarray | None = None,
    weights: dict[str, np.ndarray] | None = None,
    **info,
) -> tuple[Any, dict[str, np.ndarray]]:
    """A hand-made layer trace for examples: every signal ``fill`` (float32, writable), every step real, inputs 0.

    Returns ``(layer_trace, signals)``; ``signals`` holds the layer's own arrays, so setting values in it sets
    them in the trace. ``mask``, ``inputs`` and ``weights`` replace the defaults (every step real, inputs 0, no
    weights); ``info`` goes to :class:`gatelens.analysis.trace.LayerInfo` (e.g. ``reset_after=True``).

    Examples
    --------
    >>> lt, sig = example_layer("gru", n=2, steps=3, units=1, fill=0.25, reset_after=True)
    >>> sig["update_gate"][0, 1, 0] = 0.9
    >>> lt.info.name, float(lt["update_gate"][0, 1, 0]), lt["reset_gate"].shape
    ('gru', 0.9, (2, 3, 1))
    """
    from gatelens.analysis.trace import LayerInfo

    info.setdefault("input_dim", 1)
    layer_info = LayerInfo(name=name or cell, cell_type=cell, units=units, **info)
    sig = {s: np.full((n, steps, units), fill, np.float32) for s in layer_info.signals}
    lt = _layer_trace(layer_info, sig, mask, inputs, weights)
    return lt, sig


def example_trace(cell: str = "lstm", n: int = 1, steps: int = 4, units: int = 1, **kwargs) -> tuple[Any, dict]:
    """:func:`example_layer` as a one-layer :class:`gatelens.analysis.trace.Trace` (keyed by the layer's name):
    ``(trace, signals)``; the keyword arguments are :func:`example_layer`'s.

    Examples
    --------
    >>> trace, sig = example_trace("lstm", n=2, steps=3, units=1, fill=0.5)
    >>> trace.layers, float(trace["lstm"]["forget_gate"][1, 2, 0])
    (['lstm'], 0.5)
    """
    from gatelens.analysis.trace import Trace

    lt, sig = example_layer(cell, n, steps, units, **kwargs)
    return Trace({lt.info.name: lt}), sig


def example_states(
    h: np.ndarray,
    *,
    name: str = "rnn",
    mask: np.ndarray | None = None,
    inputs: np.ndarray | None = None,
    weights: dict[str, np.ndarray] | None = None,
    **info,
) -> Any:
    """A hand-made SimpleRNN layer trace whose hidden state and its pre-activation are both ``h`` ``(n, steps, units)``.

    ``inputs`` default ``h`` itself, ``mask`` every step real; ``info`` goes to
    :class:`gatelens.analysis.trace.LayerInfo` (``input_dim`` default 1).

    Examples
    --------
    >>> lt = example_states(np.array([[[0.2], [-0.7]]], np.float32))
    >>> lt.info.name, lt.info.cell_type, float(lt["hidden_state_pre"][0, 1, 0])
    ('rnn', 'simple_rnn', -0.7)
    """
    from gatelens.analysis.trace import LayerInfo

    info.setdefault("input_dim", 1)
    layer_info = LayerInfo(name=name, cell_type="simple_rnn", units=h.shape[-1], **info)
    return _layer_trace(
        layer_info, {s: h for s in layer_info.signals}, mask, inputs if inputs is not None else h, weights
    )


def example_hidden(
    seed: int = 0, n: int = 6, steps: int = 10, units: int = 2
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """A one-layer trace of seeded random hidden states for probe and correlation examples:
    ``(trace, h, sequence, step)``, ``h`` (n, steps, units) and the (sequence, step) of every row of ``h``
    flattened, so that ``pd.DataFrame({"sequence": seq, "step": step, "v": h[seq, step, 0]})`` is a feature.

    >>> trace, h, seq, step = example_hidden(units=3)
    >>> trace.layers, h.shape, seq[:3].tolist(), step[:3].tolist()
    (['rnn'], (6, 10, 3), [0, 0, 0], [0, 1, 2])
    """
    from gatelens.analysis.trace import Trace

    h = np.random.default_rng(seed).normal(size=(n, steps, units)).astype(np.float32)
    seq, step = np.divmod(np.arange(n * steps), steps)
    return Trace({"rnn": example_states(h)}), h, seq, step


def _layer_trace(layer_info: Any, sig: dict, mask: Any, inputs: Any, weights: Any) -> Any:
    from gatelens.analysis.trace import LayerTrace

    n, steps = next(iter(sig.values())).shape[:2]
    return LayerTrace(
        layer_info,
        sig,
        mask=np.ones((n, steps), bool) if mask is None else mask,
        inputs=np.zeros((n, steps, 1), np.float32) if inputs is None else inputs,
        weights=weights,
    )


def string_lookup_model(vocabulary: tuple[str, ...] = ("a", "b", "c"), steps: int = 4, units: int = 2,
                        seed: int = 0) -> Any:  # fmt: skip
    """A model that takes ``(N, steps)`` token strings: ``StringLookup`` (named ``lookup``) -> ``Embedding``
    -> ``LSTM`` (named ``lstm``), weights drawn from a seeded generator.

    The lookup has ``mask_token=""`` (id 0, the padding) and ``[UNK]`` id 1, then ``vocabulary``.
    """
    import keras

    model = keras.Sequential(
        [
            keras.Input((steps,), dtype="string"),
            keras.layers.StringLookup(vocabulary=list(vocabulary), mask_token="", name="lookup"),
            keras.layers.Embedding(len(vocabulary) + 2, 3, mask_zero=True, name="embedding"),
            keras.layers.LSTM(units, return_sequences=True, name="lstm"),
        ]
    )
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") for w in model.get_weights()])
    return model
