"""Private helpers shared by the analysis modules: chunked reading, processing order, tokens.

Every reader here accepts NumPy arrays and lazy Zarr arrays alike and reads only the
sequences asked for, so memory stays bounded by the chunk size, not by N.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from gatelens.analysis import signals
from gatelens.analysis.trace import LayerTrace, Trace, as_numpy, iter_chunks, token_text
from gatelens.errors import UsageError


def get_layer(trace: Trace, layer: str) -> LayerTrace:
    """``trace[layer]`` with an error that lists the layers there are."""
    if layer not in trace.layer_traces:
        raise UsageError(f"No recurrent layer {layer!r}; the trace has {trace.layers}.")
    return trace[layer]


def select_layers(trace: Trace, layers: Sequence[str] | str | None) -> list[str]:
    """Validated layer names (all layers when None), in model order."""
    if layers is None:
        return list(trace.layers)
    if isinstance(layers, str):
        layers = [layers]
    unknown = [name for name in layers if name not in trace.layer_traces]
    if unknown:
        raise UsageError(f"No recurrent layer(s) {unknown}; the trace has {trace.layers}.")
    return [name for name in trace.layers if name in set(layers)]


def select_sequences(sequences: Any, n: int) -> np.ndarray | None:
    """Sorted unique sequence indices from an int, a slice or a list; None means all."""
    if sequences is None:
        return None
    if isinstance(sequences, slice):
        return np.arange(n)[sequences]
    idx = np.atleast_1d(np.asarray(sequences))
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise UsageError(f"sequences must be integers, a slice or None, got {sequences!r}")
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise UsageError(f"sequence {int(bad[0])} is out of range: the trace has {n} sequences (0..{n - 1})")
    return np.unique(idx.astype(np.int64))


def iter_rows(n: int, chunk: int, sequences: np.ndarray | None = None) -> Iterator[np.ndarray | slice]:
    """Row selectors covering all sequences (slices) or the given ones (index arrays), ``chunk`` at a time."""
    if sequences is None:
        yield from iter_chunks(n, chunk)
        return
    if chunk < 1:
        raise UsageError(f"chunk must be >= 1, got {chunk!r}")
    for start in range(0, len(sequences), chunk):
        yield sequences[start : start + chunk]


def row_numbers(rows: np.ndarray | slice) -> np.ndarray:
    """The sequence indices a row selector stands for."""
    if isinstance(rows, slice):
        return np.arange(rows.start, rows.stop)
    return np.asarray(rows)


def read(array: Any, rows: np.ndarray | slice, dtype: Any = np.float64) -> np.ndarray:
    """Rows ``rows`` of a NumPy or Zarr array, as a NumPy array of ``dtype``."""
    if isinstance(rows, slice) or isinstance(array, np.ndarray):
        return as_numpy(array[rows], dtype)
    if hasattr(array, "oindex"):  # zarr: orthogonal selection of the wanted rows only
        return np.asarray(array.oindex[rows], dtype=dtype)
    return np.asarray(np.asarray(array)[rows], dtype=dtype)


def read_mask(lt: LayerTrace, rows: np.ndarray | slice) -> np.ndarray:
    """The layer's mask for ``rows`` as bool (N_rows, T)."""
    return read(lt.mask, rows, bool)


def processing(array: np.ndarray, go_backwards: bool) -> np.ndarray:
    """``array`` (n, T, ...) reordered into processing order (reversed in time for go_backwards)."""
    return array[:, ::-1] if go_backwards else array


def to_time_index(p: np.ndarray, n_steps: int, go_backwards: bool) -> np.ndarray:
    """Processing-order step index -> index in the input's own time order."""
    return n_steps - 1 - p if go_backwards else p


def compress_real(mask_proc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence, the processing indices of its real steps first (in order), and how many there are.

    Returns ``order`` (n, T): ``order[s, :k_s]`` are the real steps of sequence ``s`` in processing
    order, followed by its masked steps; and ``n_real`` (n,) = ``k_s``.
    """
    order = np.argsort(~mask_proc, axis=1, kind="stable")
    return order, mask_proc.sum(axis=1)


def token_strings(trace: Trace, ids: np.ndarray) -> np.ndarray:
    """Token strings for an int array of ids (object array); ids outside the vocabulary read as ``str(id)``."""
    return token_text(trace.vocabulary, ids)


def read_tokens(trace: Trace, rows: np.ndarray | slice) -> np.ndarray | None:
    """Token strings (n_rows, T) for text traces, None otherwise."""
    if trace.tokens is None:
        return None
    return token_strings(trace, read(trace.tokens, rows, np.int64))


def input_feature_names(trace: Trace, layer: str) -> list[str]:
    """Names of the input features of ``layer``.

    The trace's own ``feature_names`` when the layer receives the model's numeric input unchanged
    (checked on the first sequence), ``embedding[k]`` for a layer fed by an Embedding, and
    ``input[k]`` otherwise (e.g. a stacked layer, whose inputs are the previous layer's outputs).
    """
    lt = get_layer(trace, layer)
    dim = int(lt.inputs.shape[2])
    if "embedding" in lt.weights:
        return [f"embedding[{k}]" for k in range(dim)]
    names = trace.feature_names
    if (
        trace.x is not None
        and names is not None
        and len(names) == dim
        and tuple(trace.x.shape) == tuple(lt.inputs.shape)
    ):
        if np.array_equal(read(trace.x, slice(0, 1), np.float32), read(lt.inputs, slice(0, 1), np.float32)):
            return [str(s) for s in names]
    return [f"input[{k}]" for k in range(dim)]


def retention_signal(cell_type: str) -> str | None:
    """The gate that multiplies the carried memory (role ``"keep"``): LSTM forget gate, GRU update gate."""
    return signals.with_role(cell_type, "keep")
