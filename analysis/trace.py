"""Trace: every captured signal of every recurrent layer, indexed by stable names.

A :class:`Trace` is what :func:`gatelens.models.extract` returns and what :func:`gatelens.analysis.store.open_run`
reads back from a run directory. It is plain storage -- analysis lives in functions
elsewhere in :mod:`analysis` that take a trace.

Arrays are ``numpy.ndarray`` for an in-memory trace and lazy arrays for a trace opened from a run store
(:class:`gatelens.analysis.store.StoredArray` over a ``zarr.Array``, or the ``zarr.Array`` itself for a compressed
run); all support ``.shape``, ``.dtype`` and slicing, which yields NumPy. Use :func:`as_numpy` (or ``np.asarray``)
when a whole array is needed.

Examples
--------
>>> import numpy as np
>>> info = LayerInfo(name="lstm", cell_type="lstm", units=2, input_dim=1)
>>> sig = {s: np.zeros((1, 3, 2), np.float32) for s in info.signals}
>>> lt = LayerTrace(info, sig, mask=np.ones((1, 3), bool), inputs=np.zeros((1, 3, 1), np.float32))
>>> t = Trace({"lstm": lt}, verification={"lstm": 0.0})
>>> t.layers, t["lstm"]["forget_gate"].shape
(['lstm'], (1, 3, 2))
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gatelens.analysis.signals import signals_for
from gatelens.errors import UsageError


@dataclass(frozen=True)
class LayerInfo:
    """Static description of one recurrent layer (one direction of a Bidirectional).

    Attributes
    ----------
    name : str
        Contract name, e.g. ``"lstm"`` or ``"bidirectional/backward"``.
    cell_type : {"lstm", "gru", "simple_rnn"}
    units, input_dim : int
    activation, recurrent_activation : str
        Keras names of the activations (``recurrent_activation`` is None for SimpleRNN).
    use_bias, go_backwards : bool
    reset_after : bool or None
        GRU only.
    keras_class : str
        The Keras class of the layer (``"LSTM"``, ``"GRU"``, ...).
    return_sequences : bool
    """

    name: str
    cell_type: str
    units: int
    input_dim: int
    activation: str = "tanh"
    recurrent_activation: str | None = "sigmoid"
    use_bias: bool = True
    go_backwards: bool = False
    reset_after: bool | None = None
    keras_class: str = ""
    return_sequences: bool = True

    @property
    def signals(self) -> tuple[str, ...]:
        """Names of the signals captured for this layer's cell type."""
        return signals_for(self.cell_type)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (for the run manifest)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerInfo:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


class LayerTrace(Mapping):
    """Signals of one layer: ``layer_trace["forget_gate"]`` -> array ``(N, T, units)``.

    Attributes
    ----------
    info : LayerInfo
    mask : array (N, T) of bool
        True where the step was processed; False for padded (masked) steps, which carry
        the state unchanged and are left out of statistics and exports.
    inputs : array (N, T, input_dim)
        The tensor this layer received inside the model.
    weights : dict of str to ndarray
        ``kernel`` (input_dim, k*units), ``recurrent_kernel`` (units, k*units) and
        ``bias`` (k*units,) or, for GRU with ``reset_after``, (2, 3*units); zeros when
        the layer has no bias.

    Examples
    --------
    >>> import numpy as np
    >>> info = LayerInfo(name="gru", cell_type="gru", units=1, input_dim=1)
    >>> sig = {s: np.full((2, 3, 1), 0.25, np.float32) for s in info.signals}
    >>> lt = LayerTrace(info, sig, mask=np.ones((2, 3), bool), inputs=np.zeros((2, 3, 1), np.float32))
    >>> lt
    LayerTrace('gru', gru, shape=(2, 3, 1))
    >>> list(lt)[:3], float(lt["update_gate"][1, 2, 0]), lt.mask.shape
    (['update_gate', 'reset_gate', 'candidate'], 0.25, (2, 3))
    """

    def __init__(
        self,
        info: LayerInfo,
        signals: Mapping[str, Any],
        *,
        mask: Any,
        inputs: Any,
        weights: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        missing = [s for s in info.signals if s not in signals]
        if missing:
            raise UsageError(f"Layer {info.name!r}: missing signals {missing}.")
        self.info = info
        self._signals = dict(signals)
        self.mask = mask
        self.inputs = inputs
        self.weights = dict(weights or {})

    def __getitem__(self, signal: str) -> Any:
        try:
            return self._signals[signal]
        except KeyError:
            raise KeyError(
                f"Layer {self.info.name!r} ({self.info.cell_type}) has no signal {signal!r}; "
                f"it has {list(self.info.signals)}."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.info.signals)

    def __len__(self) -> int:
        return len(self.info.signals)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(N, T, units)``."""
        return tuple(self[self.info.signals[0]].shape)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"LayerTrace({self.info.name!r}, {self.info.cell_type}, shape={self.shape})"


@dataclass
class Trace(Mapping):
    """All captured layers of one model on one input.

    Parameters
    ----------
    layer_traces : dict of str to LayerTrace
        In model order.
    verification : dict of str to float
        Per layer, max |hidden state recomputed - the layer's own Keras output|.
    tokens : array (N, T) of int, optional
        Token ids of the model input, for text models.
    vocabulary : list of str, optional
        Token strings in id order.
    x : array (N, T, F), optional
        The model's own numeric input (None for token models: see ``tokens``).
    feature_names : list of str, optional
        Names of the F input features (CSV column names, or ``x0, x1, ...``).
    path : Path, optional
        The run directory, for a trace opened from a run store (None in memory).
    meta : dict
        Free-form provenance (model and data hashes, versions, options).

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> trace, _ = example_trace("lstm", n=2, steps=3, units=2, fill=0.5)   # one hand-made LSTM layer
    >>> trace.layers, trace.n_sequences, trace.n_steps
    (['lstm'], 2, 3)
    >>> trace["lstm"], trace["lstm"]["forget_gate"].shape
    (LayerTrace('lstm', lstm, shape=(2, 3, 2)), (2, 3, 2))
    """

    layer_traces: dict[str, LayerTrace]
    verification: dict[str, float] = field(default_factory=dict)
    tokens: Any = None
    vocabulary: list[str] | None = None
    x: Any = None
    feature_names: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def layers(self) -> list[str]:
        """Layer names in model order."""
        return list(self.layer_traces)

    def __getitem__(self, layer: str) -> LayerTrace:
        try:
            return self.layer_traces[layer]
        except KeyError:
            raise KeyError(f"No recurrent layer {layer!r}; the trace has {self.layers}.") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.layer_traces)

    def __len__(self) -> int:
        return len(self.layer_traces)

    def __hash__(self) -> int:  # dataclass(eq=True) would make it unhashable
        return id(self)

    @property
    def n_sequences(self) -> int:
        """N, the number of sequences."""
        first = next(iter(self.layer_traces.values()))
        return first.shape[0]

    @property
    def n_steps(self) -> int:
        """T, the number of steps."""
        first = next(iter(self.layer_traces.values()))
        return first.shape[1]

    def to_xarray(self, layer: str | None = None, *, signals: Any = None, chunks: Any = None) -> Any:
        """The trace as an ``xarray.Dataset`` (lazy for a run from the store): see :func:`gatelens.analysis.convert.to_xarray`.

        Examples
        --------
        >>> from gatelens._examples import example_trace
        >>> trace, _ = example_trace("lstm", n=2, steps=3, units=2, fill=0.5)
        >>> ds = trace.to_xarray("lstm")
        >>> dict(ds.sizes), ds["forget_gate"].dims, ds["mask"].dtype
        ({'sequence': 2, 'step': 3, 'unit': 2, 'input_dim': 1}, ('sequence', 'step', 'unit'), dtype('bool'))
        >>> trace.to_xarray()["lstm/forget_gate"].dims                   # every layer: names prefixed by the layer
        ('sequence', 'step', 'lstm/unit')
        """
        from gatelens.analysis.convert import to_xarray

        return to_xarray(self, layer, signals=signals, chunks=chunks)

    def to_frame(
        self, layer: str, signals: Any = None, sequences: Any = None, *, wide: bool = False, drop_masked: bool = True
    ) -> Any:
        """One layer's signals as a tidy ``pandas.DataFrame``: see :func:`gatelens.analysis.convert.to_frame`.

        Examples
        --------
        >>> from gatelens._examples import example_trace
        >>> trace, _ = example_trace("lstm", n=2, steps=3, units=2, fill=0.5)
        >>> df = trace.to_frame("lstm", ["forget_gate"], [1])            # sequence 1: 3 steps x 2 units
        >>> list(df.columns), len(df), float(df["value"].iloc[0])
        (['layer', 'sequence', 'step', 'unit', 'signal', 'value'], 6, 0.5)
        >>> list(trace.to_frame("lstm", ["forget_gate", "input_gate"], wide=True).columns)
        ['layer', 'sequence', 'step', 'unit', 'input_gate', 'forget_gate']
        """
        from gatelens.analysis.convert import to_frame

        return to_frame(self, layer, signals, sequences, wide=wide, drop_masked=drop_masked)

    def token_strings(self) -> np.ndarray | None:
        """``(N, T)`` array of token strings, or None when the model input is not text."""
        if self.tokens is None or self.vocabulary is None:
            return None
        return token_text(self.vocabulary, self.tokens[...] if not isinstance(self.tokens, np.ndarray) else self.tokens)


def token_text(vocabulary: Sequence[str] | None, ids: Any) -> np.ndarray:
    """Token strings (object array, the shape of ``ids``) for integer token ids; an id outside the vocabulary,
    or any id when there is no vocabulary, reads as its number.

    Examples
    --------
    >>> token_text(["a", "b"], [[1, 0, 7]]).tolist(), token_text(None, [3]).tolist()
    ([['b', 'a', '7']], ['3'])
    """
    ids = np.asarray(ids, np.int64)
    numbers = ids.astype(str).astype(object)
    if vocabulary is None:
        return numbers
    table = np.asarray(list(vocabulary), dtype=object)
    inside = (ids >= 0) & (ids < len(table))
    return np.where(inside, table[np.where(inside, ids, 0)] if len(table) else numbers, numbers).astype(object)


def as_numpy(array: Any, dtype: Any = np.float32) -> np.ndarray:
    """Read a whole (possibly lazy) array into memory as ``dtype``.

    Examples
    --------
    >>> as_numpy([[1, 2]]).dtype
    dtype('float32')
    """
    if isinstance(array, np.ndarray):
        return array.astype(dtype, copy=False)
    if hasattr(array, "shape") and hasattr(array, "__getitem__") and not isinstance(array, list):
        return np.asarray(array[...], dtype=dtype)
    return np.asarray(array, dtype=dtype)


def iter_chunks(n: int, chunk: int) -> Iterator[slice]:
    """Slices ``[0:chunk], [chunk:2*chunk], ...`` covering ``range(n)``.

    Examples
    --------
    >>> list(iter_chunks(5, 2))
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    if chunk < 1:
        raise UsageError(f"chunk must be >= 1, got {chunk!r}")
    for start in range(0, n, chunk):
        yield slice(start, min(start + chunk, n))
