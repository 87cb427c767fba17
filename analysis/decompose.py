"""Exact decompositions: of every gate's pre-activation into input, memory and bias, and of the cell state into past steps.

Pre-activations (:func:`preactivation_decomposition`, :func:`input_contributions`, :func:`gate_drivers`)
    Keras computes each gate block ``k`` (order :data:`gatelens.analysis.signals.WEIGHT_BLOCKS`) from the
    layer's input ``x_t``, the previous hidden state ``h_{t-1}`` and the bias:

    * LSTM (``i, f, c, o``) and SimpleRNN: ``pre_k = x_t W_k + h_{t-1} U_k + b_k``, split as
      ``input = x_t W_k``, ``recurrent = h_{t-1} U_k``, ``bias = b_k``.
    * GRU, ``reset_after=True`` (bias ``(2, 3u)`` = input bias ``b``, recurrent bias ``rb``):
      ``pre_z = x W_z + b_z + h U_z + rb_z`` (likewise ``r``): ``input = x W_z``,
      ``recurrent = h U_z``, ``bias = b_z + rb_z``. Candidate ``pre_h = x W_h + b_h + r * (h U_h + rb_h)``:
      ``input = x W_h``, ``recurrent = r * (h U_h + rb_h)`` (the reset gate scales the recurrent
      bias too, so it is counted with the memory), ``bias = b_h``.
    * GRU, ``reset_after=False`` (bias ``(3u,)``): ``z, r`` as above without ``rb``; candidate
      ``pre_h = x W_h + b_h + (r * h) U_h``: ``recurrent = (r * h) U_h``.

    ``h_{t-1}`` is the stored ``hidden_state`` at the previous step *in processing order* (``t + 1``
    for a ``go_backwards`` layer, whose steps are stored in the input's own time order), zeros before
    the first processed step (Keras layers called without ``initial_state``). A masked step carries
    the state, so the stored hidden state there is the carried one and the rule holds across padding.
    ``r`` is the stored ``reset_gate`` of the same step. ``input + recurrent + bias`` equals the stored
    ``*_pre`` signal to float32 rounding (the tests hold it to 1e-5).

    For a layer fed straight by an Embedding, ``x_t = E[token_t]``: the ``input`` part *is* the
    token's push, which :func:`token_gate_table` lists for every token from the weights alone.

Cell state (:func:`cell_state_decomposition`)
    Unrolling ``c_t = f_t c_{t-1} + i_t g_t`` (processing order)::

        c_t = sum_{j <= t} (prod_{k=j+1..t} f_k) i_j g_j  +  (prod_{k=0..t} f_k) c_init

    Each term is how much of what step ``j`` wrote is still in the cell at step ``t``. A masked step
    carries the cell unchanged (its ``f`` counts as 1 and its write as 0). ``c_init = 0`` (Keras layers
    without ``initial_state``), reported as ``source_step = -1``. The products are running products
    (``numpy.cumprod``), never quotients, so the decomposition is exact and stable even where a gate is
    exactly 0 or 1; the parts sum back to the stored ``cell_state`` (tests: 1e-5). For a GRU the same
    holds for the hidden state with ``z`` in place of ``f`` and ``(1 - z) * candidate`` as the write.

Examples
--------
>>> from gatelens._examples import example_trace
>>> trace, sig = example_trace("lstm", n=1, steps=3, units=1)
>>> sig["forget_gate"][:] = 0.5; sig["input_gate"][:] = 1.0; sig["candidate"][:] = 1.0
>>> sig["cell_state"][0, :, 0] = [1.0, 1.5, 1.75]          # c_t = 0.5 c_{t-1} + 1
>>> df = cell_state_decomposition(trace, "lstm", 0, step=2)
>>> df[["source_step", "contribution"]]
   source_step  contribution
0           -1          0.00
1            0          0.25
2            1          0.50
3            2          1.00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from gatelens.analysis import _threads
from gatelens.analysis._reading import (
    get_layer,
    input_feature_names,
    iter_rows,
    processing,
    read,
    read_mask,
    read_tokens,
    row_numbers,
    select_layers,
    select_sequences,
    to_time_index,
    token_strings,
)
from gatelens.analysis._threads import ordered_map
from gatelens.analysis.signals import WEIGHT_BLOCKS
from gatelens.analysis.trace import LayerTrace, Trace, iter_chunks
from gatelens.errors import DataError, UsageError

PREACTIVATION_COLUMNS = ["layer", "sequence", "step", "unit", "gate", "input", "recurrent", "bias", "total"]
INPUT_CONTRIBUTION_COLUMNS = ["layer", "sequence", "step", "unit", "gate", "feature", "contribution"]
TOKEN_GATE_COLUMNS = ["layer", "token_id", "token", "unit", "gate", "push"]
CELL_DECOMPOSITION_COLUMNS = ["layer", "sequence", "step", "source_step", "unit", "contribution", "token"]
FEATURE_DRIVER_COLUMNS = [
    "layer", "unit", "gate", "feature", "weight", "mean_value", "mean_abs_value",
    "mean_contribution", "mean_abs_contribution", "input_push_share", "n",
]  # fmt: skip
GATE_DRIVER_COLUMNS = [
    "layer", "unit", "gate", "mean_input", "mean_recurrent", "mean_bias",
    "mean_abs_input", "mean_abs_recurrent", "input_share", "n",
]  # fmt: skip

#: Sequences whose gate parts :func:`gate_drivers` holds at once (at most ``chunk``).
PARTS_SEQUENCES = 64

#: Elements of the (targets x sources x units) product table computed at once.
_BLOCK_ELEMENTS = 1 << 22


def _weights(lt: LayerTrace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w = lt.weights
    missing = [k for k in ("kernel", "recurrent_kernel", "bias") if k not in w]
    if missing:
        raise DataError(
            f"layer {lt.info.name!r}: the trace has no {missing} weights (it has {sorted(w)}); "
            "decompositions need kernel, recurrent_kernel and bias"
        )
    kernel = np.asarray(w["kernel"], np.float64)
    rk = np.asarray(w["recurrent_kernel"], np.float64)
    bias = np.asarray(w["bias"], np.float64)
    k = len(WEIGHT_BLOCKS[lt.info.cell_type])
    u = lt.info.units
    if kernel.shape[1] != k * u or rk.shape != (u, k * u):
        raise DataError(
            f"layer {lt.info.name!r}: kernel {kernel.shape} / recurrent_kernel {rk.shape} do not fit "
            f"{lt.info.cell_type} with {u} units (expected (in, {k * u}) and ({u}, {k * u}))"
        )
    return kernel, rk, bias


def _matmul(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``a`` (n, T, i) times ``w`` (i, j) as one BLAS matrix product over all n * T rows (``np.einsum`` without
    ``optimize`` loops in C without BLAS: 4-10x slower at (256 * 200, 128) x (128, 512))."""
    n, t, i = a.shape
    # cast first: a float32 ``a`` times a float64 ``w`` goes through NumPy's buffered mixed-type loop, ~3x slower
    # than casting the whole block and calling dgemm once (0.074 s against 0.023 s at (12800, 128) x (128, 512))
    return (np.ascontiguousarray(a, dtype=np.result_type(a, w)).reshape(n * t, i) @ w).reshape(n, t, w.shape[1])


def _part_matrices(lt: LayerTrace, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mask (n, T), input part (n, T, G*u), recurrent part (n, T, G*u) and bias (G*u,) of every gate block, in float64.

    The blocks are in the kernel's gate-major order (:data:`WEIGHT_BLOCKS`): block ``k`` of each part is the
    ``k``-th ``u`` columns, and ``input + recurrent + bias`` is the block's pre-activation.
    """
    info = lt.info
    kernel, rk, bias = _weights(lt)
    u = info.units
    m = read_mask(lt, rows)
    x = read(lt.inputs, rows)
    h = read(lt["hidden_state"], rows)
    h_prev = _previous_states(h, info.go_backwards)
    xw = _matmul(x, kernel)
    if info.cell_type != "gru":
        return m, xw, _matmul(h_prev, rk), bias.reshape(-1)
    reset_after, b_rec, gate_bias = _gru_biases(info, bias)
    cand = slice(2 * u, 3 * u)
    rec = np.empty_like(xw)
    rec[..., : 2 * u] = _matmul(h_prev, rk[:, : 2 * u])
    r = read(lt["reset_gate"], rows)
    if reset_after:
        rec[..., cand] = r * (_matmul(h_prev, rk[:, cand]) + b_rec[cand])
    else:
        rec[..., cand] = _matmul(r * h_prev, rk[:, cand])
    return m, xw, rec, gate_bias


def _previous_states(h: np.ndarray, go_backwards: bool) -> np.ndarray:
    """Each step's previous hidden state (n, T, u) in stored order: zeros before the first step processed."""
    hp = processing(h, go_backwards)
    return processing(np.concatenate([np.zeros_like(hp[:, :1]), hp[:, :-1]], axis=1), go_backwards)


def _gru_biases(info: Any, bias: np.ndarray) -> tuple[bool, np.ndarray, np.ndarray]:
    """A GRU's ``(reset_after, recurrent bias (3u,), the gate blocks' bias (3u,))``: the candidate's recurrent bias
    is left out of the latter, as it sits inside its (reset-scaled) recurrent part."""
    u = info.units
    reset_after = bool(info.reset_after) if info.reset_after is not None else bias.ndim == 2
    b_in, b_rec = (bias[0], bias[1]) if reset_after else (bias.reshape(-1), np.zeros(3 * u))
    cand = slice(2 * u, 3 * u)
    gate_bias = b_in + b_rec
    gate_bias[cand] = b_in[cand]
    return reset_after, b_rec, gate_bias


def _gate_parts(lt: LayerTrace, rows: np.ndarray | slice) -> tuple[np.ndarray, dict[str, tuple[Any, Any, Any]]]:
    """mask (n, T) and, per gate block, (input (n, T, u), recurrent (n, T, u), bias (u,)) as views of
    :func:`_part_matrices`."""
    m, xw, rec, bias = _part_matrices(lt, rows)
    u = lt.info.units
    blocks = WEIGHT_BLOCKS[lt.info.cell_type]
    cols = [slice(k * u, (k + 1) * u) for k in range(len(blocks))]
    return m, {gate: (xw[..., c], rec[..., c], bias[c]) for gate, c in zip(blocks, cols)}


def preactivation_decomposition(trace: Trace, layer: str, *, sequences: Any = None, chunk: int = 64) -> pd.DataFrame:
    """Every gate pre-activation split exactly into ``input + recurrent + bias``.

    Parameters
    ----------
    trace : Trace
    layer : str
    sequences : int, list of int or slice, optional
        Default all (one row per real step, unit and gate block: mind the size).
    chunk : int
        Sequences read at a time.

    Returns
    -------
    DataFrame
        ``layer, sequence, step, unit, gate, input, recurrent, bias, total``; ``gate`` names the
        block by its activated signal (LSTM ``input_gate, forget_gate, candidate, output_gate``; GRU
        ``update_gate, reset_gate, candidate``; SimpleRNN ``hidden_state``); ``total`` equals the
        stored ``<gate>_pre``. Masked steps are left out. Rows ordered by sequence, step, unit, gate.

    Examples
    --------
    >>> import numpy as np
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_states
    >>> x = np.array([[[1.0], [2.0]]], np.float32)
    >>> h = np.array([[[0.5], [0.25]]], np.float32)
    >>> w = {"kernel": np.array([[2.0]]), "recurrent_kernel": np.array([[4.0]]), "bias": np.array([0.1])}
    >>> lt = example_states(h, inputs=x, weights=w, recurrent_activation=None)
    >>> preactivation_decomposition(Trace({"rnn": lt}), "rnn")[["step", "input", "recurrent", "bias", "total"]]
       step  input  recurrent  bias  total
    0     0    2.0        0.0   0.1    2.1
    1     1    4.0        2.0   0.1    6.1
    """
    lt = get_layer(trace, layer)
    seqs = select_sequences(sequences, lt.shape[0])
    blocks = list(WEIGHT_BLOCKS[lt.info.cell_type])
    u, g = lt.info.units, len(blocks)
    frames = []
    for rows in iter_rows(lt.shape[0], chunk, seqs):
        m, parts = _gate_parts(lt, rows)
        s_idx, t_idx = np.nonzero(m)
        k = len(s_idx)
        if k == 0:
            continue
        inp = np.stack([parts[b][0][m] for b in blocks], axis=-1)  # (k, u, g)
        rec = np.stack([parts[b][1][m] for b in blocks], axis=-1)
        bia = np.stack([np.broadcast_to(parts[b][2], parts[b][0].shape)[m] for b in blocks], axis=-1)
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "sequence": np.repeat(row_numbers(rows)[s_idx], u * g),
                    "step": np.repeat(t_idx, u * g),
                    "unit": np.tile(np.repeat(np.arange(u), g), k),
                    "gate": np.tile(np.asarray(blocks, dtype=object), k * u),
                    "input": inp.reshape(-1),
                    "recurrent": rec.reshape(-1),
                    "bias": bia.reshape(-1),
                    "total": (inp + rec + bia).reshape(-1),
                }
            )
        )
    if not frames:
        return _empty(PREACTIVATION_COLUMNS, ("layer", "gate"))
    return pd.concat(frames, ignore_index=True)


def input_contributions(
    trace: Trace,
    layer: str,
    *,
    sequences: Any = None,
    units: Sequence[int] | None = None,
    gates: Sequence[str] | None = None,
    chunk: int = 64,
) -> pd.DataFrame:
    """The ``input`` part of each pre-activation split per input feature: ``x_t[f] * W[f, k]``.

    ``feature`` names the layer's input dimension: the trace's ``feature_names`` when the layer
    receives the model's numeric input unchanged, ``embedding[k]`` for a layer fed by an Embedding
    (the per-token view is :func:`token_gate_table`), ``input[k]`` otherwise. The contributions of a
    (step, unit, gate) sum to the ``input`` column of :func:`preactivation_decomposition`.

    Returns
    -------
    DataFrame
        ``layer, sequence, step, unit, gate, feature, contribution``; masked steps left out.

    Examples
    --------
    >>> import numpy as np
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_states
    >>> x = np.array([[[1.0, 3.0]]], np.float32)
    >>> w = {"kernel": np.array([[2.0], [-1.0]]), "recurrent_kernel": np.zeros((1, 1)), "bias": np.zeros(1)}
    >>> lt = example_states(np.zeros((1, 1, 1), np.float32), inputs=x, weights=w, input_dim=2, recurrent_activation=None)
    >>> t = Trace({"rnn": lt}, x=x, feature_names=["a", "b"])
    >>> input_contributions(t, "rnn")[["feature", "contribution"]]
      feature  contribution
    0       a           2.0
    1       b          -3.0
    """
    lt = get_layer(trace, layer)
    seqs = select_sequences(sequences, lt.shape[0])
    kernel, _, _ = _weights(lt)
    blocks = list(WEIGHT_BLOCKS[lt.info.cell_type])
    u = lt.info.units
    unit_idx = _select_units(units, u)
    gate_names = blocks if gates is None else list(gates)
    bad = [x for x in gate_names if x not in blocks]
    if bad:
        raise UsageError(f"unknown gate(s) {bad} for a {lt.info.cell_type} layer; its gates are {blocks}")
    cols = np.concatenate([blocks.index(gname) * u + unit_idx for gname in gate_names])  # gate-major
    wsel = kernel[:, cols]  # (in, G*U')
    feats = np.asarray(input_feature_names(trace, layer), dtype=object)
    n_in, n_u, n_g = len(feats), len(unit_idx), len(gate_names)
    frames = []
    for rows in iter_rows(lt.shape[0], chunk, seqs):
        m = read_mask(lt, rows)
        s_idx, t_idx = np.nonzero(m)
        k = len(s_idx)
        if k == 0:
            continue
        x = read(lt.inputs, rows)[m]  # (k, in)
        contrib = x[:, :, None] * wsel[None]  # (k, in, G*U')
        contrib = contrib.reshape(k, n_in, n_g, n_u).transpose(0, 3, 2, 1)  # (k, unit, gate, feature)
        per_row = n_u * n_g * n_in
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "sequence": np.repeat(row_numbers(rows)[s_idx], per_row),
                    "step": np.repeat(t_idx, per_row),
                    "unit": np.tile(np.repeat(unit_idx, n_g * n_in), k),
                    "gate": np.tile(np.repeat(np.asarray(gate_names, dtype=object), n_in), k * n_u),
                    "feature": np.tile(feats, k * n_u * n_g),
                    "contribution": contrib.reshape(-1),
                }
            )
        )
    if not frames:
        return _empty(INPUT_CONTRIBUTION_COLUMNS, ("layer", "gate", "feature"))
    return pd.concat(frames, ignore_index=True)


def token_gate_table(trace: Trace, layer: str, *, token_ids: Sequence[int] | None = None) -> pd.DataFrame:
    """How each token pushes each gate of each unit, from the weights alone: ``push = (E[token] @ W)[gate]``.

    Only for a layer fed straight by an Embedding (its weights include ``embedding``). The push
    excludes the bias and the recurrent part; it equals the ``input`` column of
    :func:`preactivation_decomposition` wherever that token is the step's input.

    Parameters
    ----------
    trace : Trace
    layer : str
    token_ids : list of int, optional
        Default the whole vocabulary of the embedding.

    Returns
    -------
    DataFrame
        ``layer, token_id, token, unit, gate, push``, ordered by token id, unit, gate.

    Examples
    --------
    >>> import numpy as np
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_layer
    >>> w = {"kernel": np.array([[1.0, -2.0, 3.0]]), "recurrent_kernel": np.zeros((1, 3)),
    ...      "bias": np.zeros((2, 3)), "embedding": np.array([[0.0], [0.5]])}
    >>> lt, _ = example_layer("gru", n=1, steps=2, units=1, weights=w, reset_after=True)
    >>> t = Trace({"gru": lt}, tokens=np.array([[0, 1]]), vocabulary=["", "("])
    >>> token_gate_table(t, "gru", token_ids=[1])
      layer  token_id token  unit         gate  push
    0   gru         1     (     0  update_gate   0.5
    1   gru         1     (     0   reset_gate  -1.0
    2   gru         1     (     0    candidate   1.5
    """
    lt = get_layer(trace, layer)
    if "embedding" not in lt.weights:
        raise UsageError(
            f"layer {layer!r} is not fed straight by an Embedding layer (its weights are {sorted(lt.weights)}), "
            "so it has no per-token table; use preactivation_decomposition or input_contributions"
        )
    kernel, _, _ = _weights(lt)
    emb = np.asarray(lt.weights["embedding"], np.float64)
    vocab_size = emb.shape[0]
    ids = np.arange(vocab_size) if token_ids is None else np.unique(np.asarray(token_ids, np.int64))
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.size:
        raise UsageError(f"token id {int(bad[0])} is outside the embedding's vocabulary of {vocab_size} tokens")
    blocks = list(WEIGHT_BLOCKS[lt.info.cell_type])
    u, g = lt.info.units, len(blocks)
    push = (emb[ids] @ kernel).reshape(len(ids), g, u).transpose(0, 2, 1)  # (tokens, unit, gate)
    return pd.DataFrame(
        {
            "layer": layer,
            "token_id": np.repeat(ids, u * g),
            "token": np.repeat(token_strings(trace, ids), u * g),
            "unit": np.tile(np.repeat(np.arange(u), g), len(ids)),
            "gate": np.tile(np.asarray(blocks, dtype=object), len(ids) * u),
            "push": push.reshape(-1),
        }
    )


def _select_units(units: Sequence[int] | None, n_units: int) -> np.ndarray:
    if units is None:
        return np.arange(n_units)
    idx = np.atleast_1d(np.asarray(units))
    if idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise UsageError(f"units must be a non-empty list of integers, got {units!r}")
    bad = idx[(idx < 0) | (idx >= n_units)]
    if bad.size:
        raise UsageError(f"unit {int(bad[0])} is out of range: the layer has {n_units} units (0..{n_units - 1})")
    return np.unique(idx.astype(np.int64))


def _memory_terms(lt: LayerTrace, rows: Any) -> tuple[str, np.ndarray, np.ndarray]:
    """(memory signal, retention gate, write term), both (n, T, u) in time order."""
    if lt.info.cell_type == "lstm":
        write = read(lt["input_gate"], rows) * read(lt["candidate"], rows)
        return "cell_state", read(lt["forget_gate"], rows), write
    if lt.info.cell_type == "gru":
        z = read(lt["update_gate"], rows)
        return "hidden_state", z, (1.0 - z) * read(lt["candidate"], rows)
    raise UsageError(
        f"layer {lt.info.name!r} is a {lt.info.cell_type} layer: its state is not a gated sum of past writes, "
        "so it has no cell-state decomposition"
    )


def cell_state_decomposition(
    trace: Trace,
    layer: str,
    sequence: int,
    *,
    step: int | Sequence[int] | None = None,
    units: Sequence[int] | None = None,
) -> pd.DataFrame:
    """How much of each past step's write is still in each unit's cell at each step (exact).

    Parameters
    ----------
    trace : Trace
    layer : str
        An LSTM layer (cell state) or a GRU layer (its hidden state, see the module docstring).
    sequence : int
    step : int or list of int, optional
        Target step(s) in the input's time order; default every unmasked step (T^2/2 rows per unit).
    units : list of int, optional
        Default all units.

    Returns
    -------
    DataFrame
        ``layer, sequence, step, source_step, unit, contribution, token``: ``source_step`` is the
        step whose write it is (time order; ``-1`` the initial state, 0 for Keras layers without
        ``initial_state``), ``token`` the token read at ``source_step`` (None for the initial state and
        for numeric inputs). Summed over ``source_step`` it gives the stored state at ``step``.
        Masked steps (as target or source) have no rows; rows ordered by step, source_step, unit.

    Examples
    --------
    A GRU keeps ``z`` of its state and writes ``(1 - z) * candidate``:

    >>> from gatelens._examples import example_trace
    >>> trace, sig = example_trace("gru", n=1, steps=2, units=1, reset_after=True)
    >>> sig["update_gate"][:] = 0.5; sig["candidate"][:] = 1.0
    >>> sig["hidden_state"][0, :, 0] = [0.5, 0.75]
    >>> t = trace
    >>> cell_state_decomposition(t, "gru", 0, step=1)[["source_step", "contribution"]]
       source_step  contribution
    0           -1          0.00
    1            0          0.25
    2            1          0.50
    """
    lt = get_layer(trace, layer)
    n_seq, t_len, n_units = lt.shape
    if not isinstance(sequence, (int, np.integer)) or not 0 <= int(sequence) < n_seq:
        raise UsageError(f"sequence must be an integer in 0..{n_seq - 1}, got {sequence!r}")
    seq = int(sequence)
    unit_idx = _select_units(units, n_units)
    rows = slice(seq, seq + 1)
    _, gate, write = _memory_terms(lt, rows)
    m = read_mask(lt, rows)[0]
    back = lt.info.go_backwards
    f = processing(gate, back)[0][:, unit_idx]  # (T, u') processing order
    w = processing(write, back)[0][:, unit_idx]
    mp = processing(m[None], back)[0]
    f_eff = np.where(mp[:, None], f, 1.0)  # masked step: carry (f = 1, write = 0)
    w_eff = np.where(mp[:, None], w, 0.0)
    if step is None:
        targets_t = np.nonzero(m)[0]
    else:
        targets_t = np.unique(np.atleast_1d(np.asarray(step)))
        if targets_t.size == 0 or not np.issubdtype(targets_t.dtype, np.integer):
            raise UsageError(f"step must be an integer or a list of integers, got {step!r}")
        out = targets_t[(targets_t < 0) | (targets_t >= t_len)]
        if out.size:
            raise UsageError(f"step {int(out[0])} is out of range: sequences have {t_len} steps (0..{t_len - 1})")
        masked = targets_t[~m[targets_t]]
        if masked.size:
            raise UsageError(f"step {int(masked[0])} of sequence {seq} is masked (padding): it has no cell state")
    targets_p = to_time_index(targets_t, t_len, back)  # the map is its own inverse
    contrib, init = _unroll(f_eff, w_eff, targets_p, dense=step is None)  # (K, T, u'), (K, u')
    tokens = read_tokens(trace, rows)
    # rows: every (target, source) with source real and source <= target in processing order
    src = np.arange(t_len)
    valid = (src[None, :] <= targets_p[:, None]) & mp[None, :]
    k_idx, j_idx = np.nonzero(valid)
    n_u = len(unit_idx)
    src_t = to_time_index(j_idx, t_len, back)
    tok_src = None if tokens is None else tokens[0][src_t]
    parts = {
        "step": np.concatenate([targets_t, targets_t[k_idx]]),
        "source_step": np.concatenate([np.full(len(targets_t), -1), src_t]),
        "values": np.concatenate([init, contrib[k_idx, j_idx]]),  # (rows, u')
        "token": np.concatenate([np.full(len(targets_t), None, dtype=object), tok_src])
        if tok_src is not None
        else np.full(len(targets_t) + len(k_idx), None, dtype=object),
    }
    order = np.lexsort((parts["source_step"], parts["step"]))
    r = len(order)
    df = pd.DataFrame(
        {
            "layer": layer,
            "sequence": seq,
            "step": np.repeat(parts["step"][order], n_u),
            "source_step": np.repeat(parts["source_step"][order], n_u),
            "unit": np.tile(unit_idx, r),
            "contribution": parts["values"][order].reshape(-1),
            "token": np.repeat(parts["token"][order], n_u),
        }
    )
    return df[CELL_DECOMPOSITION_COLUMNS]


def _unroll(f: np.ndarray, w: np.ndarray, targets: np.ndarray, *, dense: bool) -> tuple[np.ndarray, np.ndarray]:
    """Contributions ``(prod_{k=j+1..t} f_k) w_j`` for targets ``t`` and all sources ``j`` (0 for j > t).

    ``f``, ``w``: (T, u) in processing order. Returns ``(K, T, u)`` and the initial state's share
    ``(prod_{k=0..t} f_k) c_init`` with ``c_init = 0`` ``(K, u)``. Running products only, no division.
    ``dense``: all targets from one cumulative product over a (T, T, units) table (in blocks of
    units); otherwise one suffix product per target.
    """
    t_len, u = f.shape
    src = np.arange(t_len)
    prods = np.empty((len(targets), t_len, u))
    if dense:
        later = src[:, None, None] > src[None, :, None]  # (t, j, 1): step t lies inside j's window
        block = max(1, _BLOCK_ELEMENTS // (t_len * t_len))
        for lo in range(0, u, block):  # chunks of units bound the table's memory
            a = np.where(later, f[:, None, lo : lo + block], 1.0)  # a[t, j] = f_t if t > j else 1
            prods[..., lo : lo + block] = np.cumprod(a, axis=0)[targets]
    else:
        for n, t in enumerate(targets):  # one suffix product per requested target step
            prods[n, :t] = np.cumprod(f[t:0:-1], axis=0)[::-1]  # [j] = prod_{k=j+1..t} f_k, j < t
            prods[n, t:] = 1.0
    keep = src[None, :, None] <= targets[:, None, None]
    c_init = 0.0
    init = np.cumprod(f, axis=0)[targets] * c_init
    return np.where(keep, prods * w[None], 0.0), init


#: Rows (steps) of the gate parts formed at a time by :func:`gate_drivers`: a (2048, 4u) float64 block of products
#: (4 MB at 128 units) stays in cache while its absolute values are summed, instead of whole-chunk parts in memory.
_DRIVER_ROWS = 2048


def _driver_chunk(lt: LayerTrace, rows: slice, tokens: Any = None) -> dict[str, np.ndarray] | None:
    """The signals of ``rows`` that :func:`_chunk_driver_sums` needs (None where every step is padding); ``tokens``:
    the trace's token ids when the layer is fed by an Embedding."""
    m = read_mask(lt, rows)
    if not m.any():
        return None
    data = {"mask": m, "x": read(lt.inputs, rows), "h": read(lt["hidden_state"], rows)}
    if lt.info.cell_type == "gru":
        data["r"] = read(lt["reset_gate"], rows)
    if tokens is not None:
        data["tokens"] = read(tokens, rows, np.int64)
    return data


def _chunk_driver_sums(
    info: Any, weights: tuple[np.ndarray, np.ndarray, np.ndarray], data: dict[str, np.ndarray]
) -> tuple[int, np.ndarray, np.ndarray]:
    """``(real steps, sums, input sums)`` of one chunk: ``sums`` (5, G*u) the column sums of the input, recurrent and
    bias parts and of the absolute input and recurrent parts over the real steps (gate-major columns), ``input sums``
    (2, in) those of the layer's input and of its absolute value.

    The parts are those of :func:`_part_matrices`. The signed sums of a linear part are the summed rows times the
    weights (``sum_t x_t W = (sum_t x_t) W``); the absolute sums need every product, formed :data:`_DRIVER_ROWS`
    rows at a time in a reused buffer (float64, as :func:`_part_matrices`).
    """
    kernel, rk, bias = weights
    u = info.units
    m = data["mask"]
    k = int(m.sum())
    real = None if k == m.size else m.reshape(-1)  # padded steps left out (their stored values are not read)

    def steps(a: np.ndarray) -> np.ndarray:  # (n, T, d) -> (real steps, d)
        flat = a.reshape(-1, a.shape[-1])
        return np.ascontiguousarray(flat if real is None else flat[real])

    x = steps(data["x"])
    h = steps(_previous_states(data["h"], info.go_backwards))
    sums = np.zeros((5, kernel.shape[1]))
    x_sum = x.sum(axis=0)
    inputs = np.stack([x_sum, np.abs(x).sum(axis=0)])
    ones = np.ones(min(k, _DRIVER_ROWS))
    sums[0] = x_sum @ kernel
    table = None if "tokens" not in data else _token_rows(steps(data["tokens"][..., None])[:, 0], x)
    if table is None:
        _abs_sums(x, kernel, sums[3], ones)
    else:  # every step's input is its token's row: |x W| summed over the distinct rows, times their counts
        rows, counts = table
        sums[3] = counts @ np.abs(rows @ kernel)
    if info.cell_type != "gru":
        sums[1] = h.sum(axis=0) @ rk
        _abs_sums(h, rk, sums[4], ones)
        sums[2] = k * bias.reshape(-1)
        return k, sums, inputs
    reset_after, b_rec, gate_bias = _gru_biases(info, bias)
    r = steps(data["r"])
    zr, cand = slice(0, 2 * u), slice(2 * u, 3 * u)
    sums[1, zr] = h.sum(axis=0) @ rk[:, zr]
    sums[2] = k * gate_bias
    if not reset_after:  # candidate: (r * h) U_h, linear in r * h
        rh = r * h
        sums[1, cand] = rh.sum(axis=0) @ rk[:, cand]
        _abs_sums(h, np.ascontiguousarray(rk[:, zr]), sums[4, zr], ones)
        _abs_sums(rh, np.ascontiguousarray(rk[:, cand]), sums[4, cand], ones)
        return k, sums, inputs
    buf = np.empty((len(ones), 3 * u))
    for start in range(0, k, _DRIVER_ROWS):  # candidate: r * (h U_h + rb_h), summed from the products
        stop = min(start + _DRIVER_ROWS, k)
        b = buf[: stop - start]
        np.matmul(h[start:stop], rk, out=b)
        c = b[:, cand]
        c += b_rec[cand]
        c *= r[start:stop]
        sums[1, cand] += ones[: stop - start] @ c
        sums[4] += ones[: stop - start] @ np.abs(b, out=b)
    return k, sums, inputs


def _token_rows(tokens: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(rows, counts)``: the distinct input rows of the steps' tokens (their first steps' rows) and how many steps
    read each, when every step's input ``x`` (k, d) equals its token's row bit for bit (an Embedding's lookup, as
    stored); None otherwise (a NaN, or inputs that are not a function of the token)."""
    _, first, inverse = np.unique(tokens, return_index=True, return_inverse=True)
    rows = x[first]
    if not np.array_equal(rows[inverse], x):
        return None
    return rows, np.bincount(inverse, minlength=len(first)).astype(np.float64)


def _abs_sums(a: np.ndarray, w: np.ndarray, out: np.ndarray, ones: np.ndarray) -> None:
    """``out += |a @ w|.sum(axis=0)``, :data:`_DRIVER_ROWS` rows of the product at a time (``ones``: that many 1s)."""
    buf = np.empty((len(ones), w.shape[1]))
    for start in range(0, a.shape[0], _DRIVER_ROWS):
        b = buf[: min(_DRIVER_ROWS, a.shape[0] - start)]
        np.matmul(a[start : start + _DRIVER_ROWS], w, out=b)
        out += ones[: b.shape[0]] @ np.abs(b, out=b)


def _driver_pass(trace: Trace, name: str, chunk: int) -> tuple[int, np.ndarray, np.ndarray]:
    """One layer's summed :func:`_chunk_driver_sums` over every chunk (on :data:`gatelens.analysis._threads.PASS_THREADS`
    threads, added in chunk order)."""
    lt = trace[name]
    weights = _weights(lt)
    tokens = trace.tokens
    if "embedding" not in lt.weights or tokens is None or tuple(tokens.shape) != tuple(lt.shape[:2]):
        tokens = None
    n, sums, inputs = 0, np.zeros((5, weights[0].shape[1])), np.zeros((2, weights[0].shape[0]))
    chunks = (_driver_chunk(lt, rows, tokens) for rows in iter_chunks(lt.shape[0], min(chunk, PARTS_SEQUENCES)))
    tasks = ((_chunk_driver_sums, (lt.info, weights, data)) for data in chunks if data is not None)
    for k, chunk_sums, chunk_inputs in ordered_map(tasks, _threads.PASS_THREADS):  # read here, formed on workers
        n += k
        sums += chunk_sums
        inputs += chunk_inputs
    return n, sums, inputs


def driver_tables(
    trace: Trace, *, layers: Sequence[str] | str | None = None, chunk: int = 256
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(gate_drivers(trace), feature_drivers(trace))`` from one read of each layer's inputs and hidden states.

    The feature means come from the same pass as the gate parts (the same numbers as :func:`feature_drivers`, summed
    in other chunks).

    Examples
    --------
    >>> import numpy as np
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_states
    >>> x = np.array([[[1.0, 3.0], [-1.0, 1.0]]], np.float32)
    >>> w = {"kernel": np.array([[2.0], [-1.0]]), "recurrent_kernel": np.zeros((1, 1)), "bias": np.zeros(1)}
    >>> lt = example_states(np.zeros((1, 2, 1), np.float32), inputs=x, weights=w, input_dim=2, recurrent_activation=None)
    >>> gates, features = driver_tables(Trace({"rnn": lt}, x=x, feature_names=["a", "b"]))
    >>> gates[["mean_input", "mean_abs_input"]]  # steps: 2 - 3 = -1 and -2 - 1 = -3
       mean_input  mean_abs_input
    0        -2.0             2.0
    >>> features[["feature", "mean_value", "mean_abs_contribution"]]
      feature  mean_value  mean_abs_contribution
    0       a         0.0                    2.0
    1       b         2.0                    2.0
    """
    gates, features = [], []
    for name in select_layers(trace, layers):
        lt = trace[name]
        n, sums, inputs = _driver_pass(trace, name, chunk)
        gates.append(_gate_frame(name, lt, sums, n))
        if "embedding" not in lt.weights:
            features.append(_feature_frame(trace, name, inputs[0], inputs[1], n))
    return _frames(gates, GATE_DRIVER_COLUMNS, ("layer", "gate")), _frames(
        [f for f in features if f is not None], FEATURE_DRIVER_COLUMNS, ("layer", "gate", "feature")
    )


def _frames(frames: list[pd.DataFrame], columns: list[str], text: tuple[str, ...]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else _empty(columns, text)


def _gate_frame(name: str, lt: LayerTrace, sums: np.ndarray, n: int) -> pd.DataFrame:
    """:func:`gate_drivers`' rows of one layer from its summed :func:`_chunk_driver_sums`."""
    if n == 0:
        raise DataError(f"layer {name!r} has no unmasked step: every step of every sequence is padding")
    blocks = list(WEIGHT_BLOCKS[lt.info.cell_type])
    u, g = lt.info.units, len(blocks)
    means = sums.reshape(5, g, u).transpose(0, 2, 1) / n  # (5, u, g)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = means[3] / (means[3] + means[4])
    return pd.DataFrame(
        {
            "layer": name,
            "unit": np.repeat(np.arange(u), g),
            "gate": np.tile(np.asarray(blocks, dtype=object), u),
            "mean_input": means[0].reshape(-1),
            "mean_recurrent": means[1].reshape(-1),
            "mean_bias": means[2].reshape(-1),
            "mean_abs_input": means[3].reshape(-1),
            "mean_abs_recurrent": means[4].reshape(-1),
            "input_share": share.reshape(-1),
            "n": n,
        }
    )


def gate_drivers(trace: Trace, *, layers: Sequence[str] | str | None = None, chunk: int = 256) -> pd.DataFrame:
    """Per unit and gate: on average, how much of the pre-activation came from the input vs the memory.

    A streaming summary of :func:`preactivation_decomposition` over all unmasked steps.

    Returns
    -------
    DataFrame
        ``layer, unit, gate, mean_input, mean_recurrent, mean_bias, mean_abs_input,
        mean_abs_recurrent, input_share, n`` with ``input_share = mean_abs_input / (mean_abs_input +
        mean_abs_recurrent)`` (NaN only where both are exactly 0: neither drives the gate).

    Examples
    --------
    >>> import numpy as np
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_states
    >>> h = np.array([[[1.0], [1.0]]], np.float32)
    >>> w = {"kernel": np.array([[3.0]]), "recurrent_kernel": np.array([[2.0]]), "bias": np.zeros(1)}
    >>> lt = example_states(h, inputs=np.ones((1, 2, 1), np.float32), weights=w, recurrent_activation=None)
    >>> gate_drivers(Trace({"rnn": lt}))[["mean_abs_input", "mean_abs_recurrent", "input_share"]]
       mean_abs_input  mean_abs_recurrent  input_share
    0             3.0                 1.0         0.75
    """
    gates = []
    for name in select_layers(trace, layers):
        n, sums, _ = _driver_pass(trace, name, chunk)
        gates.append(_gate_frame(name, trace[name], sums, n))
    return _frames(gates, GATE_DRIVER_COLUMNS, ("layer", "gate"))


def feature_drivers(trace: Trace, *, layers: Sequence[str] | str | None = None, chunk: int = 256) -> pd.DataFrame:
    """Which input feature moves each gate: the input part of every pre-activation split by feature, averaged.

    The input part of gate block ``k`` of unit ``u`` at a step is ``sum_f x_t[f] W[f, k, u]`` exactly
    (:func:`input_contributions` gives it per step). Averaged over the layer's unmasked steps, feature
    ``f`` contributes ``mean_contribution = W[f, k, u] * mean(x[f])`` and pushes with
    ``mean_abs_contribution = |W[f, k, u]| * mean(|x[f]|)``; ``input_push_share`` is the feature's share of
    the summed pushes of all features (1 for a gate that reads one feature only). Layers fed by an
    Embedding are left out (their per-token view is :func:`token_gate_table`); a stacked layer's
    features are the previous layer's units (``input[k]``).

    Returns
    -------
    DataFrame
        :data:`FEATURE_DRIVER_COLUMNS`, one row per ``layer, unit, gate, feature``.

    Examples
    --------
    >>> import numpy as np
    >>> from gatelens.analysis.trace import Trace
    >>> from gatelens._examples import example_states
    >>> x = np.array([[[1.0, 3.0], [-1.0, 1.0]]], np.float32)
    >>> w = {"kernel": np.array([[2.0], [-1.0]]), "recurrent_kernel": np.zeros((1, 1)), "bias": np.zeros(1)}
    >>> lt = example_states(np.zeros((1, 2, 1), np.float32), inputs=x, weights=w, input_dim=2, recurrent_activation=None)
    >>> feature_drivers(Trace({"rnn": lt}, x=x, feature_names=["a", "b"]))[["feature", "mean_abs_contribution",
    ...                                                                      "input_push_share"]]
      feature  mean_abs_contribution  input_push_share
    0       a                    2.0               0.5
    1       b                    2.0               0.5
    """
    frames = []
    for name in select_layers(trace, layers):
        lt = trace[name]
        if "embedding" in lt.weights:
            continue
        n_in = int(lt.inputs.shape[2])
        s1 = np.zeros(n_in)
        s_abs = np.zeros(n_in)
        n = 0
        for rows in iter_chunks(lt.shape[0], chunk):
            m = read_mask(lt, rows)
            if not m.any():
                continue
            x = read(lt.inputs, rows)[m].astype(np.float64)  # (k, in)
            s1 += x.sum(0)
            s_abs += np.abs(x).sum(0)
            n += int(m.sum())
        frames.append(_feature_frame(trace, name, s1, s_abs, n))
    return _frames([f for f in frames if f is not None], FEATURE_DRIVER_COLUMNS, ("layer", "gate", "feature"))


def _feature_frame(trace: Trace, name: str, s1: np.ndarray, s_abs: np.ndarray, n: int) -> pd.DataFrame | None:
    """:func:`feature_drivers`' rows of one layer from the sums of its input and of its absolute value over its ``n``
    real steps (None when there are none)."""
    if n == 0:
        return None
    lt = trace[name]
    kernel, _, _ = _weights(lt)  # (in, G*U), gate-major blocks
    blocks = list(WEIGHT_BLOCKS[lt.info.cell_type])
    u, g = lt.info.units, len(blocks)
    feats = np.asarray(input_feature_names(trace, name), dtype=object)
    n_in = len(feats)
    mean_x, mean_abs_x = s1 / n, s_abs / n
    w = np.asarray(kernel, np.float64).reshape(n_in, g, u)  # (feature, gate, unit)
    contrib = w * mean_x[:, None, None]
    push = np.abs(w) * mean_abs_x[:, None, None]
    total = push.sum(axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, push / total, np.nan)
    order = (2, 1, 0)  # rows: unit, gate, feature
    return pd.DataFrame(
        {
            "layer": name,
            "unit": np.repeat(np.arange(u), g * n_in),
            "gate": np.tile(np.repeat(np.asarray(blocks, dtype=object), n_in), u),
            "feature": np.tile(feats, u * g),
            "weight": w.transpose(order).reshape(-1),
            "mean_value": np.tile(mean_x, u * g),
            "mean_abs_value": np.tile(mean_abs_x, u * g),
            "mean_contribution": contrib.transpose(order).reshape(-1),
            "mean_abs_contribution": push.transpose(order).reshape(-1),
            "input_push_share": share.transpose(order).reshape(-1),
            "n": n,
        }
    )


def _empty(columns: list[str], text: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object if c in text else float) for c in columns})
