"""The extractor: re-run every recurrent layer's cell from its weights and capture every signal.

For each batch, one compiled TensorFlow function runs the Keras model itself and, at each
recurrent layer, (1) calls the Keras layer as the model would, (2) recomputes all gates,
pre-activations, cell and hidden states from the layer's weights on exactly the tensor
(and mask) that layer received, and (3) measures max |recomputed hidden state - Keras
output|. Above ``tolerance`` the extraction fails loudly.

When a layer returns its whole sequence, ``h_{t-1}`` is read from Keras's own output and all
gates of all steps come out of one batched matrix product (see :mod:`gatelens.models.cells`); the
layer's cell state and hidden state are then recomputed and checked against Keras. A layer
that returns only its last step is re-run free (a scan over time) and checked on that step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gatelens.analysis.signals import PRE_ACTIVATION, WEIGHT_BLOCKS
from gatelens.analysis.store import RunWriter, open_run
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace
from gatelens.errors import GatelensInputError, UnsupportedLayerError, VerificationError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
DEFAULT_TOLERANCE = 1e-4
#: ``verify="full"``: Keras runs every sequence and each layer is recomputed from Keras's own states and checked
#: at every step; ``verify="sample"``: gatelens's own re-run drives the model and Keras re-runs a sample of each
#: batch (``sample_size`` evenly spaced sequences plus the most-masked one), compared output for output.
VERIFY_MODES = ("full", "sample")
DEFAULT_SAMPLE_SIZE = 8


def _check_verify(verify: str, sample_size: int) -> None:
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    if not isinstance(sample_size, (int, np.integer)) or isinstance(sample_size, bool) or sample_size < 1:
        raise ValueError(f"sample_size must be a positive integer, got {sample_size!r}")


@dataclass
class _Direction:
    """One captured recurrent computation: a layer, or one direction of a Bidirectional."""

    name: str
    info: LayerInfo
    rnn: Any  # the keras RNN layer (LSTM/GRU/SimpleRNN/RNN) whose cell we re-run
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def _verify_meta(verify: str, sample_size: int) -> dict[str, Any]:
    """How the run was verified, for ``trace.meta`` and the manifest."""
    return {"verify": verify, "verify_sample_size": int(sample_size) if verify == "sample" else None}


def _activation_name(fn: Any) -> str:
    if fn is None:
        return "linear"
    return getattr(fn, "__name__", type(fn).__name__)


def _direction(rnn: Any, name: str, input_dim: int) -> _Direction:
    from gatelens.models.graph import CELL_TYPES

    cell = rnn.cell
    cell_type = CELL_TYPES[type(cell).__name__]
    info = LayerInfo(
        name=name,
        cell_type=cell_type,
        units=int(cell.units),
        input_dim=int(input_dim),
        activation=_activation_name(cell.activation),
        recurrent_activation=_activation_name(getattr(cell, "recurrent_activation", None))
        if cell_type != "simple_rnn"
        else None,
        use_bias=bool(cell.use_bias),
        go_backwards=bool(rnn.go_backwards),
        reset_after=bool(cell.reset_after) if cell_type == "gru" else None,
        keras_class=type(rnn).__name__,
        return_sequences=bool(rnn.return_sequences),
    )
    k = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell_type]
    if cell.use_bias:
        bias = np.asarray(cell.bias.numpy(), np.float32)
    else:
        bias = np.zeros((2, k * info.units) if info.reset_after else (k * info.units,), np.float32)
    weights = {
        "kernel": np.asarray(cell.kernel.numpy(), np.float32),
        "recurrent_kernel": np.asarray(cell.recurrent_kernel.numpy(), np.float32),
        "bias": bias,
    }
    return _Direction(name=name, info=info, rnn=rnn, weights=weights)


def _cell_weights(rnn: Any):
    from gatelens.models.cells import CellWeights
    from gatelens.models.graph import CELL_TYPES

    cell = rnn.cell
    cell_type = CELL_TYPES[type(cell).__name__]
    return CellWeights(
        cell_type=cell_type,
        units=int(cell.units),
        kernel=cell.kernel,
        recurrent_kernel=cell.recurrent_kernel,
        bias=cell.bias if cell.use_bias else None,
        activation=cell.activation,
        recurrent_activation=getattr(cell, "recurrent_activation", None),
        reset_after=bool(getattr(cell, "reset_after", False)),
    )


def _input_dim(layer: Any) -> int:
    shape = layer.input.shape if not isinstance(layer.input, (list, tuple)) else layer.input[0].shape
    return int(shape[-1])


class Extractor:
    """Compiled re-runner for one model (reusable across batches and inputs).

    Parameters
    ----------
    model : keras.Model
        A Sequential or functional model (nested sub-models allowed) with one input.
    layers : sequence of str, optional
        Contract names to capture (a Bidirectional's plain name selects both directions);
        default all.
    jit_compile : bool
        Compile with XLA (default True; falls back to plain graph mode if XLA fails).
    """

    def __init__(self, model: Any, *, layers: Sequence[str] | None = None, jit_compile: bool = True) -> None:
        from gatelens.models._quiet import import_tensorflow_quietly

        import_tensorflow_quietly()
        from gatelens.models.graph import recurrent_layers

        if len(model.inputs) != 1:
            raise UnsupportedLayerError(
                f"model {model.name!r} has {len(model.inputs)} inputs; gatelens extracts from single-input models."
            )
        self.model = model
        self.input_shape = tuple(model.inputs[0].shape)
        self.input_dtype = str(model.inputs[0].dtype)
        if "string" in self.input_dtype:
            raise UnsupportedLayerError(
                f"model {model.name!r} takes strings (a StringLookup or TextVectorization layer); gatelens "
                "extracts from models that take token ids: save the model without the lookup layer and pass "
                "its vocabulary with --vocab."
            )
        from gatelens.models.spec import input_spec

        #: True when the model takes token ids (an int input, or a float input that feeds an Embedding).
        self.token_input = "int" in self.input_dtype or input_spec(model).integer_tokens
        rnns = recurrent_layers(model)
        if not rnns:
            raise UnsupportedLayerError(
                f"model {model.name!r} has no recurrent layer (LSTM, GRU, SimpleRNN or Bidirectional) to extract."
            )
        seen: dict[str, int] = {}
        self._by_layer: dict[int, list[_Direction]] = {}
        directions: list[_Direction] = []
        for layer in rnns:
            base = layer.name
            seen[base] = seen.get(base, 0) + 1
            if seen[base] > 1:
                base = f"{base}_{seen[base] - 1}"
            dim = _input_dim(layer)
            if type(layer).__name__ == "Bidirectional":
                ds = [
                    _direction(layer.forward_layer, f"{base}/forward", dim),
                    _direction(layer.backward_layer, f"{base}/backward", dim),
                ]
            else:
                ds = [_direction(layer, base, dim)]
            self._by_layer[id(layer)] = ds
            directions.extend(ds)
        available = [d.name for d in directions]
        if layers:
            wanted = set()
            for name in layers:
                match = [d for d in available if d == name or d.split("/")[0] == name]
                if not match:
                    raise GatelensInputError(f"no recurrent layer named {name!r}; the model has {available}")
                wanted.update(match)
            self._wanted = wanted
        else:
            self._wanted = set(available)
        self.directions = [d for d in directions if d.name in self._wanted]
        self._embedding: dict[str, Any] = {}  # direction name -> the Embedding layer feeding it
        self._jit = jit_compile
        self._fns: dict[tuple, tuple[Any, Any]] = {}
        self._layouts: dict[tuple, dict[str, tuple[bool, bool]]] = {}

    @property
    def layer_names(self) -> list[str]:
        """Contract names of the captured layers, in model order."""
        return [d.name for d in self.directions]

    @property
    def integer_input(self) -> bool:
        """True when the model takes token ids."""
        return self.token_input

    # -- the traced computation -------------------------------------------------------------
    def _hook(
        self,
        captures: dict[str, dict[str, Any]],
        layout: dict[str, tuple[bool, bool]],
        verify: str = "full",
        sample_size: int = DEFAULT_SAMPLE_SIZE,
    ):
        import tensorflow as tf
        from keras.src import backend, tree

        from gatelens.models import cells

        def rev(t):
            return None if t is None else tf.reverse(t, axis=[1])

        def run_direction(d: _Direction, seq, mask, ref_proc, initial_state, emb_layer):
            # verify="sample" keeps every signal as Keras's own float32 computation gives it (the fast mode)
            w = _cell_weights(d.rnn)
            x = tf.cast(seq, tf.float32)
            b = tf.shape(x)[0]
            units = d.info.units
            if initial_state is not None:
                states = [tf.cast(s, tf.float32) for s in initial_state]
            else:
                states = [tf.zeros((b, units), tf.float32)] * (2 if d.info.cell_type == "lstm" else 1)
            back = d.info.go_backwards
            xp, mp = (rev(x), rev(mask)) if back else (x, mask)
            if d.info.cell_type == "lstm":
                sig = cells.run_lstm(w, xp, mp, states[0], states[1], h_ref=ref_proc, exact_cell_state=verify == "full")
            elif d.info.cell_type == "gru":
                sig = cells.run_gru(w, xp, mp, states[0], h_ref=ref_proc)
            else:
                sig = cells.run_simple_rnn(w, xp, mp, states[0], h_ref=ref_proc)
            # Signals stay in processing order, time-major when free-running: run_batch presents them in
            # time order, batch-major, as NumPy views (a transpose or reversal here would copy each of them).
            time_major = ref_proc is None
            layout[d.name] = (time_major, back)
            carried = sig.pop("_cell_state_carried", sig.get("cell_state"))
            out = dict(sig)
            out["mask"] = mask if mask is not None else tf.ones(tf.shape(x)[:2], tf.bool)
            out["input"] = x
            out["_h_proc"] = cells.swap_batch_time(sig["hidden_state"]) if time_major else sig["hidden_state"]
            out["_c_proc"] = None if carried is None else cells.swap_batch_time(carried) if time_major else carried
            out["_mask_proc"] = mp
            if emb_layer is not None:
                self._embedding[d.name] = emb_layer
            return out

        def max_errors(diff, ref):
            """(max |diff|, max |diff| / (1 + |ref|)): the reported error and the one checked against tolerance."""
            return tf.stack([tf.reduce_max(diff), tf.reduce_max(diff / (1.0 + tf.abs(ref)))])

        def error(h_proc, mask_proc, ref, last_only):
            """:func:`max_errors` of h against ``ref`` over the compared (unmasked) steps."""
            ref = tf.cast(ref, h_proc.dtype)
            h = h_proc[:, -1] if last_only else h_proc
            diff = tf.abs(h - ref)
            if mask_proc is not None and not last_only:
                diff = tf.where(mask_proc[..., None], diff, 0.0)
            return max_errors(diff, ref)

        def rnn_output(rnn, r):
            """What the Keras RNN layer ``rnn`` returns, built from our re-run ``r`` of it (Keras 3 ``RNN.call``
            over ``backend.rnn``): outputs in processing order; a masked step repeats the previous output (zeros
            before the first unmasked step, or always zeros with ``zero_output_for_mask``); final states."""
            h, m = r["_h_proc"], r["_mask_proc"]
            outputs = h
            if m is not None:
                zeros = tf.zeros_like(h[:, 0])
                held = tf.zeros_like(h) if rnn.zero_output_for_mask else cells.previous_states(h, m, zeros)
                outputs = tf.where(m[..., None], h, held)
            dt = rnn.compute_dtype
            output = tf.cast(outputs if rnn.return_sequences else outputs[:, -1], dt)
            if not rnn.return_state:
                return output
            states = [h[:, -1]] + ([r["_c_proc"][:, -1]] if r["_c_proc"] is not None else [])
            return (output, *(tf.cast(st, dt) for st in states))

        def bidirectional_output(layer, yf, yb):
            """Keras 3 ``Bidirectional.call`` (non-fused path) from its two layers' outputs."""
            states = ()
            if layer.return_state:
                states = tuple(yf[1:]) + tuple(yb[1:])
                yf, yb = yf[0], yb[0]
            if layer.return_sequences:
                yb = tf.reverse(yb, axis=[1])
            mode = layer.merge_mode
            if mode is None:
                return (yf, yb) + states if states else (yf, yb)
            merged = {
                "concat": lambda: tf.concat([yf, yb], axis=-1),
                "sum": lambda: yf + yb,
                "ave": lambda: (yf + yb) / 2,
                "mul": lambda: yf * yb,
            }[mode]()
            return (merged,) + states if states else merged

        def sample_rows(batch, mask):
            """``sample_size`` evenly spaced rows of the batch, plus its most-masked sequence."""
            n = tf.shape(batch)[0]
            idx = tf.cast(tf.round(tf.linspace(0.0, tf.cast(n - 1, tf.float32), sample_size)), tf.int32)
            if mask is not None:
                most_masked = tf.argmin(tf.reduce_sum(tf.cast(mask, tf.int32), axis=1), output_type=tf.int32)
                idx = tf.concat([idx, most_masked[None]], axis=0)
            return idx

        def sampled(layer, args, kwargs, call, seq, mask, init, emb):
            """verify="sample": our re-run is the layer's output; Keras re-runs a sample of the batch."""
            ds = self._by_layer[id(layer)]  # its directions (forward, backward for a Bidirectional)
            if type(layer).__name__ == "Bidirectional":
                inits = [None, None]
                if init is not None:
                    half = len(init) // 2
                    inits = [init[:half], init[half:]]
                rs = [run_direction(d, seq, mask, None, i0, emb) for d, i0 in zip(ds, inits)]
                out = bidirectional_output(layer, *(rnn_output(d.rnn, r) for d, r in zip(ds, rs)))
            else:
                rs = [run_direction(ds[0], seq, mask, None, init, emb)]
                out = rnn_output(layer, rs[0])
            out_mask = layer.compute_mask(seq, mask)
            for o, om in zip(tree.flatten(out), tree.flatten(out_mask) if out_mask is not None else []):
                if om is not None:
                    backend.set_keras_mask(o, om)
            idx = sample_rows(seq, mask)
            s_kwargs = dict(kwargs)
            if mask is not None:
                s_kwargs["mask"] = tf.gather(mask, idx)
            if init is not None:
                s_kwargs["initial_state"] = [tf.gather(st, idx) for st in init]
            ref = call(tf.gather(seq, idx), *args[1:], **s_kwargs)
            flat_out, flat_ref = tree.flatten(out), tree.flatten(ref)
            if len(flat_out) != len(flat_ref):  # pragma: no cover - a Keras change in what RNN layers return
                raise UnsupportedLayerError(f"layer {layer.name!r}: unexpected output structure from Keras")
            worst = []
            for o, r in zip(flat_out, flat_ref):
                r = tf.cast(r, tf.float32)
                diff = tf.abs(tf.cast(tf.gather(o, idx), tf.float32) - r)
                worst.append(max_errors(diff, r))
            e = tf.reduce_max(tf.stack(worst), axis=0)
            for d, r in zip(ds, rs):
                if d.name in self._wanted:
                    r["error"] = e
                    captures[d.name] = r
            return out

        def hook(layer, args, kwargs, call, ctx):
            dirs = [d for d in self._by_layer.get(id(layer), []) if d.name in self._wanted]
            if not dirs:
                return call(*args, **kwargs)
            seq = args[0]
            mask = kwargs.get("mask")
            if mask is None:
                mask = backend.get_keras_mask(seq) if hasattr(seq, "_keras_mask") else None
            if mask is not None:
                mask = tf.cast(mask, tf.bool)
            init = kwargs.get("initial_state")
            emb = ctx.embedding_of.get(id(seq))
            if verify == "sample":
                return sampled(layer, args, kwargs, call, seq, mask, init, emb)
            out = call(*args, **kwargs)
            if type(layer).__name__ == "Bidirectional":
                y = out
                if layer.return_state:
                    y = out[:2] if layer.merge_mode is None else out[0]
                seqs = layer.return_sequences
                half = layer.forward_layer.cell.units
                if layer.merge_mode == "concat":
                    parts = [y[..., :half], y[..., half:]]
                elif layer.merge_mode is None:
                    parts = list(y)
                else:
                    parts = None
                fwd_ref = bwd_ref = None
                if seqs and parts is not None:
                    fwd_ref, bwd_ref = parts[0], rev(parts[1])
                inits = [None, None]
                if init is not None:
                    h = len(init) // 2
                    inits = [init[:h], init[h:]]
                fwd_d, bwd_d = self._by_layer[id(layer)]  # built in this order in __init__
                rf = run_direction(fwd_d, seq, mask, fwd_ref, inits[0], emb)
                rb = run_direction(bwd_d, seq, mask, bwd_ref, inits[1], emb)
                if parts is not None:  # concat or None: each direction against its own half
                    ef = error(rf["_h_proc"], rf["_mask_proc"], parts[0], not seqs)
                    eb = error(rb["_h_proc"], rb["_mask_proc"], bwd_ref if seqs else parts[1], not seqs)
                else:  # merged: each direction's hidden state in time order
                    hf = rf["_h_proc"] if seqs else rf["_h_proc"][:, -1]
                    hb = rev(rb["_h_proc"]) if seqs else rb["_h_proc"][:, -1]
                    merged = {"sum": hf + hb, "ave": (hf + hb) / 2, "mul": hf * hb}[layer.merge_mode]
                    yf = tf.cast(y, merged.dtype)
                    diff = tf.abs(merged - yf)
                    if seqs:
                        diff = tf.where(rf["mask"][..., None], diff, 0.0)
                    ef = eb = max_errors(diff, yf)
                for dd, r, e in ((fwd_d, rf, ef), (bwd_d, rb, eb)):
                    if dd.name in self._wanted:
                        r["error"] = e
                        captures[dd.name] = r
            else:
                (d,) = dirs
                y = out[0] if layer.return_state else out
                ref = y if layer.return_sequences else None
                r = run_direction(d, seq, mask, ref, init, emb)
                r["error"] = error(r["_h_proc"], r["_mask_proc"], y, not layer.return_sequences)
                captures[d.name] = r
            return out

        return hook

    def _compiled(self, dtype: str = "float32", verify: str = "full", sample_size: int = DEFAULT_SAMPLE_SIZE):
        """The compiled batch function; signals come out as ``dtype`` (cast inside the graph)."""
        key = (dtype, verify, int(sample_size))
        if key in self._fns:
            return self._fns[key]
        import tensorflow as tf

        from gatelens.models.graph import call_with_hook

        layout = self._layouts.setdefault(key, {})  # filled while tracing: name -> (time_major, go_backwards)

        def fn(x):
            captures: dict[str, dict[str, Any]] = {}
            call_with_hook(self.model, x, self._hook(captures, layout, verify, int(sample_size)))
            out = {}
            for name, sig in captures.items():
                d = {k: v for k, v in sig.items() if not k.startswith("_")}
                for k in list(d):
                    if k not in ("mask", "input", "error"):
                        d[k] = tf.cast(d[k], dtype)
                out[name] = d
            return out

        spec = tf.TensorSpec((None, *self.input_shape[1:]), self.input_dtype)
        plain = tf.function(fn, input_signature=[spec])
        self._fns[key] = (tf.function(fn, input_signature=[spec], jit_compile=True) if self._jit else plain, plain)
        return self._fns[key]

    def run_batch(
        self, x: np.ndarray, *, dtype: str = "float32", verify: str = "full", sample_size: int = DEFAULT_SAMPLE_SIZE
    ) -> dict[str, dict[str, np.ndarray]]:
        """Signals (as ``dtype``), ``mask``, ``input`` and ``error`` of every captured layer (time order)."""
        _check_verify(verify, sample_size)
        key = (dtype, verify, int(sample_size))
        fn, plain = self._compiled(dtype, verify, sample_size)
        try:
            res = fn(x)
        except Exception as e:  # XLA cannot compile some graphs: fall back to plain graph mode
            if fn is plain:
                raise
            log.warning("XLA compilation failed (%s); falling back to graph mode", str(e).splitlines()[0][:200])
            self._fns[key] = (plain, plain)
            res = plain(x)
        # np.asarray shares the tensor's buffer (zero-copy on CPU); .numpy() would copy every signal
        return {name: self._present(name, sig, self._layouts[key][name]) for name, sig in res.items()}

    def _present(self, name: str, sig: dict[str, Any], layout: tuple[bool, bool]) -> dict[str, np.ndarray]:
        """A layer's outputs as (B, T, ...) arrays in time order: views of the compiled function's buffers
        (transposed when time-major, reversed for go_backwards, the stacked LSTM pre-activations split)."""
        time_major, backwards = layout
        out: dict[str, np.ndarray] = {}
        for k, v in sig.items():
            a = np.asarray(v)
            if k in ("mask", "input", "error"):
                out[k] = a
                continue
            if time_major:
                a = a.swapaxes(0, 1)
            if backwards:
                a = a[:, ::-1]
            if k == "preactivations":  # LSTM, free-running: (B, T, 4 units) in Keras's gate order i, f, c, o
                u = a.shape[-1] // 4
                for j, gate in enumerate(WEIGHT_BLOCKS["lstm"]):
                    out[PRE_ACTIVATION["lstm"][gate]] = a[..., j * u : (j + 1) * u]
            else:
                out[k] = a
        return out

    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        """Per captured layer: kernel, recurrent_kernel, bias (and embedding when fed by one)."""
        out = {}
        for d in self.directions:
            w = dict(d.weights)
            if d.name in self._embedding:
                w["embedding"] = np.asarray(self._embedding[d.name].embeddings.numpy(), np.float32)
            out[d.name] = w
        return out

    # -- batching ----------------------------------------------------------------------------
    def iter_batches(
        self,
        x: np.ndarray,
        *,
        batch_size: int = 256,
        tolerance: float = DEFAULT_TOLERANCE,
        progress: Progress | None = None,
        dtype: str = "float32",
        verify: str = "full",
        sample_size: int = DEFAULT_SAMPLE_SIZE,
    ) -> Iterator[tuple[int, dict[str, dict[str, np.ndarray]]]]:
        """Yield ``(start, batch)`` for consecutive batches; raise VerificationError above ``tolerance``.

        Signals come as ``dtype`` ("float32" or "float16"); ``mask`` bool and ``input`` float32.
        ``verify`` and ``sample_size``: see :func:`extract`.
        """
        _check_verify(verify, sample_size)
        x = self.check_input(x)
        n = x.shape[0]
        bs = max(1, min(int(batch_size), n))
        self.errors = {name: 0.0 for name in self.layer_names}
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):  # NumPy beside TF: one BLAS thread avoids oversubscription
            for start in range(0, n, bs):
                xb = x[start : start + bs]
                k = xb.shape[0]
                if k < bs:  # pad the last batch: one compiled shape for the whole run
                    xb = np.concatenate([xb, np.repeat(xb[-1:], bs - k, axis=0)], axis=0)
                res = self.run_batch(xb, dtype=dtype, verify=verify, sample_size=sample_size)
                for name in self.layer_names:
                    sig = res[name]
                    err, rel = (float(v) for v in sig.pop("error"))
                    self.errors[name] = max(self.errors[name], err)
                    if k < bs:
                        for key in sig:
                            sig[key] = sig[key][:k]
                    # float32 round-off grows with the magnitude of h (unbounded activations): the check
                    # scales the error by 1 + |h|; the reported number stays the plain max abs error.
                    if not (np.isfinite(err) and rel <= tolerance):
                        where = "sequences" if verify == "full" else "a sample of sequences"
                        raise VerificationError(
                            f"layer {name!r}: recomputed hidden state differs from Keras's output by {err:.3g} "
                            f"({rel:.3g} relative to 1 + |h|; tolerance {tolerance:g}) in {where} "
                            f"{start}..{start + k - 1}; the extractor does not reproduce this layer."
                        )
                yield start, res
                if progress is not None:
                    progress(start + k, n)

    def check_input(self, x: Any) -> np.ndarray:
        """Validate ``x`` against the model's input shape; return it as a NumPy array."""
        from gatelens.errors import DataError

        x = np.asarray(x)
        want = self.input_shape
        if x.ndim != len(want):
            raise DataError(f"input has shape {x.shape}, but the model expects {len(want)} dimensions {want}")
        for i, (got, exp) in enumerate(zip(x.shape[1:], want[1:]), start=1):
            if exp is not None and got != exp:
                raise DataError(f"input has shape {x.shape}, but the model expects {want} (axis {i}: {exp})")
        if x.shape[0] == 0:
            raise DataError("input has no sequences")
        if x.ndim > 1 and x.shape[1] == 0:
            raise DataError("input sequences have zero length")
        if self.integer_input:
            if not np.issubdtype(x.dtype, np.integer):
                if not (np.issubdtype(x.dtype, np.floating) and np.all(np.isfinite(x)) and np.all(x == np.round(x))):
                    raise DataError(f"the model takes integer token ids, got {x.dtype} values")
            return x.astype(self.input_dtype, copy=False)
        x = x.astype(np.float32, copy=False)
        if not np.all(np.isfinite(x)):
            bad = np.argwhere(~np.isfinite(x))
            raise DataError(f"input has {len(bad)} NaN/inf value(s), first at sequence {bad[0][0]}, step {bad[0][1]}")
        return x


def extract(
    model: Any,
    x: Any,
    *,
    batch_size: int = 256,
    layers: Sequence[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Progress | None = None,
    vocabulary: list[str] | None = None,
    feature_names: list[str] | None = None,
    verify: str = "full",
    sample_size: int = DEFAULT_SAMPLE_SIZE,
) -> Trace:
    """Re-run every recurrent layer of ``model`` on ``x`` and capture all its signals in memory.

    Parameters
    ----------
    model : keras.Model
        Sequential or functional (nested sub-models allowed), as returned by :func:`models.load_model`.
    x : array (N, T, F) float, or (N, T) int token ids for models that start with an Embedding
    batch_size : int
    layers : sequence of str, optional
        Capture only these layers (contract names).
    tolerance : float
        Largest accepted max |hidden state recomputed - Keras output|; above it VerificationError.
    progress : callable(done, total), optional
    vocabulary, feature_names : optional
        Stored on the trace (token strings for text models, input feature names otherwise).
    verify : {"full", "sample"}
        ``"full"`` (default): Keras runs every sequence; each sequence-returning layer is recomputed
        from Keras's own previous hidden states (one batched product for all steps; for LSTMs in
        float64, see :mod:`gatelens.models.cells`) and every step of every sequence is compared with Keras's
        output. ``"sample"``: faster (about one forward pass instead of two): gatelens's own float32
        re-run, in Keras's order of operations, drives the model, and Keras re-runs ``sample_size``
        evenly spaced sequences of each batch plus its most-masked one; every output of the layer
        (sequence, final states) is compared on those sequences.
    sample_size : int
        Sequences per batch that Keras re-runs when ``verify="sample"``.

    Returns
    -------
    Trace
        ``trace[layer][signal]`` float32 (N, T, units); ``trace.verification[layer]`` the max error.

    Examples
    --------
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> trace = extract(tiny_model(), tiny_inputs())
    >>> trace.layers, trace["lstm"]["forget_gate"].shape, trace.verification["lstm"] < 1e-5
    (['lstm'], (2, 4, 3), True)
    """
    ex = model if isinstance(model, Extractor) else Extractor(model, layers=layers)
    x = ex.check_input(x)
    n = x.shape[0]
    store: dict[str, dict[str, np.ndarray]] = {}
    for start, res in ex.iter_batches(
        x, batch_size=batch_size, tolerance=tolerance, progress=progress, verify=verify, sample_size=sample_size
    ):
        if start == 0 and n <= batch_size:  # one batch: keep its arrays as they are, no copy
            store = res
            break
        for name, sig in res.items():
            if name not in store:
                store[name] = {k: np.empty((n, *v.shape[1:]), v.dtype) for k, v in sig.items()}
            for k, v in sig.items():
                store[name][k][start : start + v.shape[0]] = v
    weights = ex.weights()
    traces = {}
    for d in ex.directions:
        s = store[d.name]
        mask = s.pop("mask")
        inputs = s.pop("input")
        traces[d.name] = LayerTrace(d.info, s, mask=mask, inputs=inputs, weights=weights[d.name])
    return Trace(
        traces,
        verification=dict(ex.errors),
        tokens=x.astype(np.int32) if ex.integer_input else None,
        vocabulary=vocabulary,
        x=None if ex.integer_input else x,
        feature_names=feature_names,
        meta={"tolerance": tolerance, "batch_size": batch_size, **_verify_meta(verify, sample_size)},
    )


def write_run(
    model: Any,
    x: Any,
    out: str | os.PathLike,
    *,
    batch_size: int = 256,
    layers: Sequence[str] | None = None,
    dtype: str = "float32",
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Progress | None = None,
    vocabulary: list[str] | None = None,
    feature_names: list[str] | None = None,
    manifest: dict[str, Any] | None = None,
    verify: str = "full",
    sample_size: int = DEFAULT_SAMPLE_SIZE,
) -> Trace:
    """Extract like :func:`extract`, streaming batch by batch into a run directory; return it opened lazily.

    Memory is bounded by ``batch_size``, not by N. The run appears at ``out`` only once complete
    (manifest last); an earlier run at ``out`` is replaced only then. ``verify`` and ``sample_size``
    as in :func:`extract`; the manifest records them.

    Examples
    --------
    >>> import os, tempfile
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> out = os.path.join(tempfile.mkdtemp(), "run")
    >>> run = write_run(tiny_model("gru"), tiny_inputs(n=3), out, batch_size=2, dtype="float16")
    >>> run["gru"]["update_gate"].shape, run.meta["dtype"]
    ((3, 4, 3), 'float16')
    """
    import keras

    ex = model if isinstance(model, Extractor) else Extractor(model, layers=layers)
    x = ex.check_input(x)
    n, t = x.shape[0], x.shape[1]
    infos = [d.info for d in ex.directions]
    writer = None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatelens-writer")
    pending = None  # at most one batch is being written while the next one is computed
    try:
        for start, res in ex.iter_batches(
            x,
            batch_size=batch_size,
            tolerance=tolerance,
            progress=progress,
            dtype=dtype,
            verify=verify,
            sample_size=sample_size,
        ):
            if writer is None:  # weights (incl. embeddings) are known after the first batch is traced
                writer = RunWriter(
                    out,
                    infos,
                    n_sequences=n,
                    n_steps=t,
                    dtype=dtype,
                    chunk_sequences=batch_size,
                    weights=ex.weights(),
                    with_tokens=ex.integer_input,
                    n_features=None if ex.integer_input else int(x.shape[2]) if x.ndim == 3 else None,
                )
            xb = x[start : start + next(iter(res.values()))["mask"].shape[0]]
            if pending is not None:
                pending.result()
            pending = pool.submit(
                writer.write_batch,
                start,
                res,
                tokens=xb.astype(np.int32) if ex.integer_input else None,
                x=None if ex.integer_input else xb,
            )
        if pending is not None:
            pending.result()
        import tensorflow as tf

        writer.finish(
            ex.errors,
            tolerance=tolerance,
            batch_size=batch_size,
            keras_version=keras.__version__,
            tensorflow_version=tf.__version__,
            vocabulary=vocabulary,
            feature_names=feature_names or (None if ex.integer_input else [f"x{i}" for i in range(x.shape[-1])]),
            model_input_shape=list(ex.input_shape),
            **_verify_meta(verify, sample_size),
            **(manifest or {}),
        )
    except BaseException:
        if pending is not None:
            pending.cancel()
            try:
                pending.result()
            except BaseException:  # the first error is the one to report
                pass
        if writer is not None:
            writer.abort()
        raise
    finally:
        pool.shutdown(wait=True)
    return open_run(Path(out), verify=False)
