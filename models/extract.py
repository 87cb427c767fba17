"""The extractor: re-run every recurrent layer's cell from its weights and capture every signal.

For each batch, one compiled TensorFlow function runs the Keras model's own layer graph and, at each
recurrent layer, recomputes all gates, pre-activations, cell and hidden states from the layer's weights
on exactly the tensor (and mask) that layer received (:mod:`gatelens.models.cells`), and checks them
against Keras's own code. How it checks is the verification mode (:data:`VERIFY_CHECKS` says exactly
what each checks; the manifest of a run records it):

* ``"cell"`` (the default): gatelens's float32 re-run, in Keras's order of operations, drives the model;
  Keras's own cell is called once on all ``N x T`` steps at once, teacher-forced from gatelens's states,
  and every ``h_t`` (and LSTM ``c_t``) of every sequence is compared with gatelens's; Keras's layer
  re-runs a sample of each batch end to end (masking, direction, merge mode, final states).
* ``"full"``: Keras's layer runs every sequence (a second full forward pass); each layer is recomputed
  from Keras's own previous hidden states and every step of every sequence is compared.
* ``"sample"``: as ``"cell"`` without the all-steps cell check (the fastest).

Above ``tolerance`` the extraction fails loudly (:class:`~gatelens.errors.VerificationError`).

**Compiled once.** The compiled function is built once per model (and layer selection, dtype, verification
mode) and kept in a per-model cache that :func:`extract`, :func:`write_run`, :func:`verification_errors`,
the CLI and the dashboard share without holding an :class:`Extractor`; the model is referenced weakly, so
a model that is garbage-collected frees its compiled functions. With XLA, batches are padded to a power of
two (at most ``batch_size``; a short last batch joins the one before, which then runs at ``batch_size +
batch_size // 4``: :func:`batch_spans`), so no input length traces the function again and at most
``log2(batch_size) + 2`` shapes are ever compiled per mode. It is safe to call from several threads.
**Small one-shot work runs uncompiled.** XLA's compilation costs seconds of CPU per model and batch shape; for
an input of at most :data:`GRAPH_MAX_WORK` sequences x steps x units that is more than it saves, so
``compile="auto"`` (the default) runs it in TensorFlow's plain graph mode (one trace, no compilation, no
padding) and larger inputs with XLA (:func:`compile_mode`; the mode is part of the cache key, and the
manifest's ``compile`` says which ran).

**The hook** (for code that builds on the extractor, e.g. interventions): :func:`capture` runs the model
once, inside a TensorFlow trace, and returns a :class:`Capture` -- the model's output, each captured
layer's signals (time-major, processing order, as :mod:`gatelens.models.cells` returns them) and the
Embedding layer feeding it. All per-call state is in that return value; nothing is stored on the
:class:`Extractor`. :func:`run_direction` re-runs one recurrent computation.
"""

from __future__ import annotations

import functools
import logging
import mmap
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gatelens.analysis.signals import PRE_ACTIVATION, WEIGHT_BLOCKS
from gatelens.analysis.store import RunWriter, check_output_path, open_run
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace
from gatelens.errors import GatelensError, GatelensInputError, UnsupportedLayerError, UsageError, VerificationError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
DEFAULT_TOLERANCE = 1e-4
#: The verification modes; :data:`DEFAULT_VERIFY` is the default.
VERIFY_MODES = ("cell", "full", "sample")
DEFAULT_VERIFY = "cell"
DEFAULT_SAMPLE_SIZE = 8
#: The most sequences of a batch the sampled check re-runs (``sample_size``): the sample is drawn from each batch, so
#: more than a batch holds repeats sequences, and the check's memory grows with it.
MAX_SAMPLE_SIZE = 4096
#: The largest ``batch_size`` (the CLI's ``--batch-size`` bound, ``gatelens.models.argtypes.MAX_BATCH_SIZE``): every
#: signal of a batch is held in memory, and more sequences than this per forward pass bring nothing but memory.
MAX_BATCH_SIZE = 1 << 16
#: Exactly what each verification mode checks (stored in the manifest as ``verify_checks``).
VERIFY_CHECKS = {
    "cell": (
        "every step of every sequence: Keras's own cell, called once on all steps teacher-forced from gatelens's "
        "states, gives each hidden state (and LSTM cell state), compared with gatelens's; and Keras's layer "
        "re-runs sample_size evenly spaced sequences of each batch plus its most-masked one end to end, "
        "compared output for output (sequence, final states; masking, direction, merge mode)"
    ),
    "full": (
        "every step of every sequence: Keras's layer runs every sequence (a second forward pass) and each "
        "layer is recomputed from Keras's own previous hidden states; every hidden state compared with Keras's "
        "(a layer returning only its last step: that step, after gatelens's own re-run)"
    ),
    "sample": (
        "a sample: Keras's layer re-runs sample_size evenly spaced sequences of each batch plus its most-masked "
        "one end to end, compared output for output (sequence, final states; masking, direction, merge mode)"
    ),
}
#: How the batch function runs: ``"xla"`` (compiled by XLA, once per padded batch shape: :func:`bucket`) or
#: ``"graph"`` (TensorFlow's plain graph mode: nothing compiled, one graph serves every batch size, no padding);
#: ``"auto"`` (the default) chooses by the size of the whole input (:func:`compile_mode`).
COMPILE_MODES = ("auto", "xla", "graph")
#: ``compile="auto"`` runs in graph mode when sequences x steps x units (summed over the captured directions)
#: of the whole input is at most this: below it XLA's compilation (seconds of CPU, per model and batch shape)
#: costs more than it saves on one pass (e.g. the ``char_lstm`` demo on ``code_sample.txt``: 40 x 100 x 192).
GRAPH_MAX_WORK = 1 << 22


def compile_mode(n_sequences: int, n_steps: int, units: int, compile: str = "auto") -> str:
    """``"xla"`` or ``"graph"``: how an input of ``n_sequences x n_steps`` runs through layers of ``units`` in all.

    ``compile`` ``"xla"`` or ``"graph"`` is taken as it is; ``"auto"`` is ``"graph"`` when
    ``n_sequences * n_steps * units <= GRAPH_MAX_WORK`` (small one-shot work: no XLA compilation to pay for)
    and ``"xla"`` above (the compiled function is kept per model and reused by later calls).

    Examples
    --------
    >>> compile_mode(40, 100, 192), compile_mode(256, 200, 256), compile_mode(40, 100, 192, "xla")
    ('graph', 'xla', 'xla')
    """
    if compile not in COMPILE_MODES:
        raise UsageError(f"compile must be one of {COMPILE_MODES}, got {compile!r}")
    if compile != "auto":
        return compile
    return "graph" if int(n_sequences) * int(n_steps) * int(units) <= GRAPH_MAX_WORK else "xla"


def _whole(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and lo <= value <= hi


def _check_verify(verify: str, sample_size: int) -> None:
    if verify not in VERIFY_MODES:
        raise UsageError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    if not _whole(sample_size, 1, MAX_SAMPLE_SIZE):
        raise UsageError(f"sample_size must be a whole number from 1 to {MAX_SAMPLE_SIZE}, got {sample_size!r}")


def _check_batch_size(batch_size: int) -> None:
    if not _whole(batch_size, 1, MAX_BATCH_SIZE):
        raise UsageError(f"batch_size must be a whole number from 1 to {MAX_BATCH_SIZE}, got {batch_size!r}")


def _verify_meta(verify: str, sample_size: int) -> dict[str, Any]:
    """How the run was verified, for ``trace.meta`` and the manifest."""
    return {
        "verify": verify,
        "verify_sample_size": int(sample_size) if verify != "full" else None,
        "verify_checks": VERIFY_CHECKS[verify],
    }


def _compile_meta(ex: Extractor, shape: tuple[int, ...], requested: str, mode: str, **key: Any) -> dict[str, Any]:
    """How the batch function ran, for ``trace.meta`` and the manifest: ``compile`` (``"xla"``, or ``"graph"``,
    also after an XLA failure) and ``compile_reason`` (the rule and the numbers it was applied to)."""
    ran = ex._plan.compiled(mode=mode, **key).ran_as if mode == "xla" else "graph"
    if ran != mode:
        why = "XLA could not compile the batch function: fell back to graph mode"
    elif requested != "auto" and ex._plan.jit:
        why = f"compile={requested!r} requested"
    elif not ex._plan.jit:
        why = "Extractor(jit_compile=False)"
    else:
        n, t = int(shape[0]), int(shape[1]) if len(shape) > 1 else 1
        work = n * t * ex._plan.units
        sign = "<=" if work <= GRAPH_MAX_WORK else ">"
        why = (
            f"auto: {n} sequences x {t} steps x {ex._plan.units} units = {work} {sign} GRAPH_MAX_WORK {GRAPH_MAX_WORK}"
        )
    return {"compile": ran, "compile_reason": why}


#: A last batch of at most ``batch_size // TAIL_SHARE`` sequences joins the batch before it: one call of the compiled
#: loop instead of two (each call pays every step's fixed cost whatever its batch, and an input that fits one batch is
#: handed over without copying; 300 sequences at batch 256 took 0.62 s as 256 + 44 and 0.39 s as one batch of 320,
#: 2x128 char LSTM, 200 steps). A batch so holds at most ``batch_size + batch_size // TAIL_SHARE`` sequences.
TAIL_SHARE = 4


def batch_spans(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, k)`` of each batch of ``n`` sequences: ``batch_size`` each, a short tail joined to the last one.

    Examples
    --------
    >>> batch_spans(300, 256), batch_spans(400, 256), batch_spans(7, 256), batch_spans(576, 256)
    ([(0, 300)], [(0, 256), (256, 144)], [(0, 7)], [(0, 256), (256, 320)])
    """
    bs = max(1, int(batch_size))
    spans = [(s, min(bs, n - s)) for s in range(0, n, bs)]
    if len(spans) >= 2 and spans[-1][1] <= bs // TAIL_SHARE:
        _, tail = spans.pop()
        start, k = spans[-1]
        spans[-1] = (start, k + tail)
    return spans


def bucket(k: int, batch_size: int) -> int:
    """The compiled batch size a batch of ``k`` sequences runs at: the next power of two, at most ``batch_size``;
    a batch that took in a short tail (:func:`batch_spans`) runs at ``batch_size + batch_size // TAIL_SHARE``.

    So at most ``log2(batch_size) + 2`` shapes are compiled per mode.

    Examples
    --------
    >>> [bucket(k, 256) for k in (1, 7, 44, 256)], bucket(300, 256), bucket(70, 100)
    ([1, 8, 64, 256], 320, 100)
    """
    merged = batch_size + batch_size // TAIL_SHARE
    if k > merged:
        raise ValueError(f"a batch holds at most {merged} sequences at batch_size {batch_size}, got {k}")
    if k > batch_size:
        return merged
    if k == batch_size:
        return batch_size
    return min(1 << max(0, int(k) - 1).bit_length(), batch_size)


@dataclass
class _Direction:
    """One captured recurrent computation: a layer, or one direction of a Bidirectional."""

    name: str
    info: LayerInfo
    rnn: Any  # the keras RNN layer (LSTM/GRU/SimpleRNN/RNN) whose cell we re-run
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def _check_strict(ex: Extractor, unknown: Any, strict: bool) -> None:
    from gatelens.errors import DataError

    if strict and unknown is not None and unknown.count:
        raise DataError(f"--strict-vocab: {unknown.describe()}: not in the vocabulary of {ex.front.describe()}")


def _front_meta(ex: Extractor, unknown: Any) -> dict[str, Any]:
    """The model's own tokeniser and the unknown tokens it met, for ``trace.meta`` and the manifest."""
    if ex.front is None:
        return {}
    return {
        "tokenizer": {"class": ex.front.cls, "name": ex.front.layer.name, "vocabulary_size": len(ex.front.vocabulary)},
        "unknown_tokens": unknown.to_dict() if unknown is not None else None,
    }


def _all_layers(model: Any) -> list[Any]:
    from gatelens.models.graph import iter_layers

    return list(iter_layers(model))


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


# -- the plan of a model and its compiled functions (the per-model cache) ----------------------------------------


class _Compiled:
    """One batch function (one key: code, compile mode, dtype, verification mode, sample size) and its shapes.

    ``"xla"``: ``fn`` is XLA-compiled per input shape, ``plain`` (graph mode) only its fallback, traced only if
    XLA fails; ``"graph"``: both are the one graph-mode function.
    """

    def __init__(self, mode: str, jit: Any, plain: Any) -> None:
        self.mode = mode
        self.fn = jit
        self.plain = plain
        self.shapes: set[tuple[int, ...]] = set()  # input shapes run so far (XLA: one compilation each)
        self.lock = threading.Lock()

    @property
    def ran_as(self) -> str:
        """How it runs now: ``"graph"`` once XLA failed and it fell back, else its mode."""
        return "graph" if self.fn is self.plain else "xla"

    def __call__(self, x: np.ndarray) -> Any:
        fn = self.fn
        try:
            out = fn(x)
        except Exception as e:  # XLA cannot compile some graphs: fall back to plain graph mode
            if fn is self.plain or isinstance(e, GatelensError):
                raise
            log.warning("XLA compilation failed (%s); falling back to graph mode", str(e).splitlines()[0][:200])
            with self.lock:
                self.fn = self.plain
            out = self.plain(x)
        with self.lock:
            self.shapes.add(tuple(x.shape))
        return out


class _Plan:
    """What gatelens re-runs in one model for one layer selection: its directions, and the compiled functions.

    Holds the model only weakly (the compiled functions close over the plan), so the per-model cache never
    keeps a model alive.
    """

    def __init__(self, model: Any, layers: Sequence[str] | None, jit_compile: bool) -> None:
        from gatelens.models.graph import recurrent_layers
        from gatelens.models.spec import input_spec

        if len(model.inputs) != 1:
            raise UnsupportedLayerError(
                f"model {model.name!r} has {len(model.inputs)} inputs; gatelens extracts from single-input models."
            )
        from gatelens.models.strings import TextFront

        self.model_ref = weakref.ref(model)
        self.model_name = model.name
        #: The model's own lookup layer (StringLookup, TextVectorization, IntegerLookup) when it starts with one:
        #: it tokenises the input (eagerly) and the rest of the model (``front.tail``, held here: it holds the
        #: model's layers, not the model) is what the compiled functions re-run, on its ids.
        self.front = TextFront.of(model)
        if self.front is not None:
            model = self.front.tail
        self.input_shape = tuple(model.inputs[0].shape)
        self.input_dtype = str(model.inputs[0].dtype)
        if "string" in self.input_dtype:
            raise UnsupportedLayerError(
                f"model {model.name!r} takes strings but does not start with a StringLookup or TextVectorization "
                "layer; gatelens reads text through the model's own lookup layer."
            )
        spec = input_spec(model)
        #: True when the model takes token ids (an int input, or a float input that feeds an Embedding).
        self.token_input = self.front is not None or "int" in self.input_dtype or spec.integer_tokens
        #: Valid ids are 0 .. input_dim - 1 (the first Embedding's input_dim; None without one).
        self.input_dim = spec.input_dim if self.token_input else None
        self._embedding_name = next((la.name for la in _all_layers(model) if type(la).__name__ == "Embedding"), None)
        rnns = recurrent_layers(model)
        if not rnns:
            raise UnsupportedLayerError(
                f"model {model.name!r} has no recurrent layer (LSTM, GRU, SimpleRNN or Bidirectional) to extract."
            )
        from gatelens.models.naming import check_layer_names

        check_layer_names(model)
        taken = {layer.name for layer in rnns}  # a de-duplicated nested name never takes another layer's name
        used: set[str] = set()
        self.by_layer: dict[int, list[_Direction]] = {}
        directions: list[_Direction] = []
        for layer in rnns:
            base = layer.name
            k = 0
            while base in used:
                k += 1
                base = f"{layer.name}_{k}"
                if base in taken:
                    base = layer.name  # taken by another layer: try the next number
            used.add(base)
            dim = _input_dim(layer)
            if type(layer).__name__ == "Bidirectional":
                ds = [
                    _direction(layer.forward_layer, f"{base}/forward", dim),
                    _direction(layer.backward_layer, f"{base}/backward", dim),
                ]
            else:
                ds = [_direction(layer, base, dim)]
            self.by_layer[id(layer)] = ds
            directions.extend(ds)
        available = [d.name for d in directions]
        if layers:
            wanted = set()
            for name in layers:
                match = [d for d in available if d == name or d.split("/")[0] == name]
                if not match:
                    raise GatelensInputError(f"no recurrent layer named {name!r}; the model has {available}")
                wanted.update(match)
        else:
            wanted = set(available)
        self.wanted = frozenset(wanted)
        self.directions = [d for d in directions if d.name in self.wanted]
        self.jit = jit_compile
        #: units of the captured directions, summed (the ``units`` of :func:`compile_mode`'s rule)
        self.units = sum(d.info.units for d in self.directions)
        #: direction name -> the Embedding layer feeding it; a static fact of the graph, found while tracing.
        self.embedding: dict[str, Any] = {}
        self.traced = False
        self._compiled: dict[tuple, _Compiled] = {}
        self._lock = threading.Lock()

    def model(self) -> Any:
        if self.front is not None:  # the model from its lookup layer's output on (held by the front)
            return self.front.tail
        model = self.model_ref()
        if model is None:  # pragma: no cover - only reachable through a plan kept past its model
            raise RuntimeError(f"model {self.model_name!r} was garbage-collected")
        return model

    def mode(self, n_sequences: int, n_steps: int, compile: str = "auto") -> str:
        """:func:`compile_mode` for an input of this size (always ``"graph"`` when built with ``jit_compile=False``)."""
        mode = compile_mode(n_sequences, n_steps, self.units, compile)
        return mode if self.jit else "graph"

    def compiled(self, dtype: str, verify: str, sample_size: int, mode: str = "xla") -> _Compiled:
        """The batch function for this key (``compile`` ``"xla"`` or ``"graph"``), built (not yet traced) on
        first use; thread-safe."""
        from gatelens.models import cells

        if mode not in ("xla", "graph"):
            raise ValueError(f"mode must be 'xla' or 'graph' here, got {mode!r}")
        mode = mode if self.jit else "graph"
        # the cell code is part of the key: a test or an intervention that swaps a cell function gets its own
        code = (cells.run_lstm, cells.run_gru, cells.run_simple_rnn)
        key = (code, mode, dtype, verify, int(sample_size))
        with self._lock:
            entry = self._compiled.get(key)
            if entry is None:
                entry = self._compiled[key] = self._build(mode, dtype, verify, int(sample_size))
            return entry

    def compiled_shapes(self) -> dict[tuple[str, str, str, int], set[tuple[int, ...]]]:
        """``(compile, dtype, verify, sample_size)`` -> the input shapes run with it: for ``"xla"`` the padded
        shapes compiled (the bucketing's record), for ``"graph"`` the batch shapes one graph served."""
        with self._lock:
            return {k[1:]: set(v.shapes) for k, v in self._compiled.items()}

    def tf_functions(self) -> list[Any]:
        """Every ``tf.function`` this plan built (their tracing counts are the tests' record of retracing)."""
        with self._lock:
            return [f for c in self._compiled.values() for f in {id(c.fn): c.fn, id(c.plain): c.plain}.values()]

    def _build(self, mode: str, dtype: str, verify: str, sample_size: int) -> _Compiled:
        import tensorflow as tf

        plan = self

        def fn(x):
            cap = capture(plan, x, verify=verify, sample_size=sample_size)
            plan.embedding.update(cap.embeddings)  # the same layers at every trace
            plan.traced = True
            out = {}
            for name, sig in cap.signals.items():
                d = {k: v for k, v in sig.items() if not k.startswith("_")}
                for k in list(d):
                    if k not in ("mask", "input", "error"):
                        d[k] = tf.cast(d[k], dtype)
                out[name] = d
            return out

        spec = tf.TensorSpec((None, *self.input_shape[1:]), self.input_dtype)
        # autograph off: the hook has no tensor-dependent Python control flow, and tracing is faster without it
        plain = tf.function(fn, input_signature=[spec], autograph=False)
        jit = tf.function(fn, input_signature=[spec], jit_compile=True, autograph=False) if mode == "xla" else plain
        return _Compiled(mode, jit, plain)

    def ensure_traced(self) -> None:
        """Trace the default function once (if nothing was traced yet), so that :attr:`embedding` is known."""
        if self.traced:
            return
        import tensorflow as tf

        c = self.compiled("float32", DEFAULT_VERIFY, DEFAULT_SAMPLE_SIZE)
        c.fn.get_concrete_function(tf.TensorSpec((None, *self.input_shape[1:]), self.input_dtype))


_CACHE: dict[int, dict[tuple, _Plan]] = {}  # id(model) -> {(layers, jit): plan}; entries leave with the model
_CACHE_LOCK = threading.Lock()


def _plan_for(model: Any, layers: Sequence[str] | None = None, jit_compile: bool = True) -> _Plan:
    """The cached plan of ``model`` for this layer selection (built once; freed when the model is collected)."""
    from gatelens.models._quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    from gatelens.models import compat

    compat.check()  # a missing private Keras API: one clear CompatError here, not an error inside a trace
    key = (tuple(layers) if layers else None, bool(jit_compile))
    with _CACHE_LOCK:
        plans = _CACHE.get(id(model))
        if plans is None:
            plans = _CACHE[id(model)] = {}
            weakref.finalize(model, _CACHE.pop, id(model), None)
        plan = plans.get(key)
        if plan is None or plan.model_ref() is not model:
            plan = plans[key] = _Plan(model, layers, jit_compile)
        return plan


def cached_models() -> int:
    """How many models the compile cache holds (a collected model leaves it).

    Examples
    --------
    >>> import gc
    >>> from gatelens._examples import tiny_model
    >>> _ = gc.collect()                                # models no longer referenced leave the cache first
    >>> before = cached_models()
    >>> model = tiny_model()
    >>> ex = Extractor(model)                           # extract(model, x) caches the same way
    >>> cached_models() - before
    1
    >>> del model, ex
    >>> _ = gc.collect()
    >>> cached_models() - before
    0
    """
    with _CACHE_LOCK:
        return len(_CACHE)


# -- the hook: plain functions, called while TensorFlow traces the batch function -------------------------------


class Capture(NamedTuple):
    """What one traced call of the model gives (all per-call state; see :func:`capture`).

    Examples
    --------
    >>> Capture._fields
    ('output', 'signals', 'embeddings')
    """

    output: Any  # what the model returns
    signals: dict[str, dict[str, Any]]  # direction name -> its signals, "mask", "input", "error"
    embeddings: dict[str, Any]  # direction name -> the Embedding layer feeding it


def capture(plan: _Plan, x: Any, *, verify: str = DEFAULT_VERIFY, sample_size: int = DEFAULT_SAMPLE_SIZE) -> Capture:
    """Run the model on the symbolic batch ``x`` with every captured recurrent layer re-run and checked.

    Call it inside a ``tf.function`` (that is what the compiled batch function does). Each entry of
    ``Capture.signals`` holds the cell's signals as :mod:`gatelens.models.cells` returns them (time-major, in
    processing order, pre-activations stacked as ``preactivations``), ``mask`` (B, T) and ``input`` (B, T, in)
    in time order, and ``error``: ``[max |diff|, max |diff| / (1 + |ref|)]`` of the verification. Keys that
    start with ``_`` are internal (what the layer received, in processing order).

    Examples
    --------
    >>> import tensorflow as tf
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> model, x = tiny_model(), tiny_inputs()
    >>> ex = Extractor(model)                           # ex._plan: the model's cached plan
    >>> cap = tf.function(lambda xb: capture(ex._plan, xb), autograph=False)(x)
    >>> type(cap).__name__, sorted(cap.signals), cap.embeddings, tuple(cap.output.shape)
    ('Capture', ['lstm'], {}, (2, 4, 1))
    >>> sig = cap.signals["lstm"]
    >>> tuple(sig["forget_gate"].shape), tuple(sig["preactivations"].shape), tuple(sig["mask"].shape)
    ((4, 2, 3), (4, 2, 12), (2, 4))
    >>> bool(np.asarray(sig["error"]).max() < 1e-5), bool(np.allclose(cap.output, model.predict(x, verbose=0)))
    (True, True)
    """
    from gatelens.models.graph import call_with_hook

    signals: dict[str, dict[str, Any]] = {}
    embeddings: dict[str, Any] = {}
    import tensorflow as tf

    hook = functools.partial(_hook, plan, verify, int(sample_size), signals, embeddings)
    # inside the model's own name scope, as Keras calls its layers: a layer name that may not open a root
    # scope (a leading "-" or "_") runs here as it runs in model.predict
    with tf.name_scope("gatelens"):
        output = call_with_hook(plan.model(), x, hook)
    return Capture(output, signals, embeddings)


def _hook(plan, verify, sample_size, signals, embeddings, layer, args, kwargs, call, ctx):
    """:func:`gatelens.models.graph.call_with_hook`'s hook: one recurrent layer, re-run and checked."""
    import tensorflow as tf

    from gatelens.models import compat

    dirs = [d for d in plan.by_layer.get(id(layer), []) if d.name in plan.wanted]
    if not dirs:
        return call(*args, **kwargs)
    seq = args[0]
    mask = kwargs.get("mask")
    if mask is None:
        mask = compat.get_mask(seq)
    if mask is not None:
        mask = tf.cast(mask, tf.bool)
    init = kwargs.get("initial_state")
    if verify == "full":
        out, got = _layer_full(plan, layer, args, kwargs, call, seq, mask, init)
    else:
        out, got = _layer_free(plan, layer, args, kwargs, call, seq, mask, init, verify, sample_size)
    emb = ctx.embedding_of.get(id(seq))
    for name, r in got.items():
        if name in plan.wanted:
            signals[name] = r
            if emb is not None:
                embeddings[name] = emb
    return out


def _rev(t):
    import tensorflow as tf

    return None if t is None else tf.reverse(t, axis=[1])


def _split_states(init, n):
    if init is None:
        return [None] * n
    half = len(init) // 2
    return [init[:half], init[half:]] if n == 2 else [init]


def run_direction(d: _Direction, seq: Any, mask: Any, ref_proc: Any = None, initial_state: Any = None) -> dict:
    """Re-run one recurrent computation on the tensor (and mask) its layer received.

    ``ref_proc`` (optional): Keras's own output sequence in processing order, to teacher-force from. Returns the
    cell's signals (:mod:`gatelens.models.cells`: time-major, processing order), ``mask`` and ``input`` (time
    order, batch-major) and what the checks need (``_x_proc``, ``_mask_proc``, ``_h0``, ``_c0``).

    Examples
    --------
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> model, x = tiny_model(), tiny_inputs()              # 2 sequences of 4 steps, an LSTM of 3 units
    >>> d = Extractor(model).directions[0]
    >>> r = run_direction(d, x, None)                       # eagerly here; the extractor calls it while tracing
    >>> sorted(k for k in r if not k.startswith("_"))
    ['candidate', 'cell_state', 'forget_gate', 'hidden_state', 'input', 'input_gate', 'mask', 'output_gate',
     'preactivations']
    >>> tuple(r["hidden_state"].shape), tuple(r["mask"].shape)   # time-major signals; mask batch-major
    ((4, 2, 3), (2, 4))
    >>> bool(np.allclose(np.swapaxes(r["hidden_state"], 0, 1), model.get_layer("lstm")(x), atol=1e-6))
    True
    """
    import tensorflow as tf

    from gatelens.models import cells

    w = _cell_weights(d.rnn)
    x = tf.cast(seq, tf.float32)
    b = tf.shape(x)[0]
    lstm = d.info.cell_type == "lstm"
    if initial_state is not None:
        states = [tf.cast(s, tf.float32) for s in initial_state]
    else:
        states = [tf.zeros(tf.stack([b, d.info.units]), tf.float32)] * (2 if lstm else 1)
    xp, mp = (_rev(x), _rev(mask)) if d.info.go_backwards else (x, mask)
    runner = getattr(cells, f"run_{d.info.cell_type}")  # looked up at trace time: a swapped cell is used
    sig = runner(w, xp, mp, *states[: 2 if lstm else 1], h_ref=ref_proc)
    out = dict(sig)
    out["mask"] = mask if mask is not None else tf.ones(tf.shape(x)[:2], tf.bool)
    out["input"] = x
    out["_x_proc"], out["_mask_proc"], out["_h0"] = xp, mp, states[0]
    if lstm:
        out["_c0"] = states[1]
    return out


def _max_errors(diff, ref):
    """(max |diff|, max |diff| / (1 + |ref|)): the reported error and the one checked against tolerance.

    A NaN or inf on either side counts as an infinite error (``reduce_max`` would skip a NaN)."""
    import tensorflow as tf

    bad = tf.logical_not(tf.math.is_finite(diff)) | tf.logical_not(tf.math.is_finite(ref))
    inf = tf.constant(float("inf"), diff.dtype)
    rel = tf.where(bad, inf, diff / (1.0 + tf.abs(ref)))
    return tf.stack([tf.reduce_max(tf.where(bad, inf, diff)), tf.reduce_max(rel)])


def _teacher_error(r: dict, ref: Any, last_only: bool):
    """:func:`_max_errors` of our hidden state against Keras's ``ref`` (batch-major, processing order)."""
    import tensorflow as tf

    from gatelens.models.cells import swap_batch_time

    h = r["hidden_state"]
    ref = tf.cast(ref, tf.float32)
    if last_only:
        return _max_errors(tf.abs(h[-1] - ref), ref)
    ref = swap_batch_time(ref)
    diff = tf.abs(h - ref)
    if r["_mask_proc"] is not None:
        keep = swap_batch_time(r["_mask_proc"])[..., None]
        diff, ref = tf.where(keep, diff, 0.0), tf.where(keep, ref, 0.0)  # masked steps are not compared
    return _max_errors(diff, ref)


def _emulated_output(rnn: Any, r: dict) -> Any:
    """What the Keras RNN layer ``rnn`` returns, built from our re-run ``r`` of it (Keras 3 ``RNN.call`` over
    ``backend.rnn``): outputs in processing order; a masked step repeats the previous output (zeros before the
    first unmasked step, or always zeros with ``zero_output_for_mask``); final states."""
    import tensorflow as tf

    from gatelens.models.cells import swap_batch_time

    h = r["hidden_state"]
    outputs = h
    if r["_mask_proc"] is not None:
        m = swap_batch_time(r["_mask_proc"])
        if not rnn.zero_output_for_mask:  # h carries over masked steps: it is the previous output once one came
            m = tf.cumsum(tf.cast(m, tf.int32), axis=0) > 0
        outputs = tf.where(m[..., None], h, 0.0)
    dt = rnn.compute_dtype
    output = tf.cast(swap_batch_time(outputs) if rnn.return_sequences else outputs[-1], dt)
    if not rnn.return_state:
        return output
    states = [h[-1]] + ([r["cell_state"][-1]] if "cell_state" in r else [])
    return (output, *(tf.cast(st, dt) for st in states))


def _bidirectional_output(layer: Any, yf: Any, yb: Any) -> Any:
    """Keras 3 ``Bidirectional.call`` (non-fused path) from its two layers' outputs."""
    import tensorflow as tf

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


def _sample_rows(batch: Any, mask: Any, sample_size: int):
    """``sample_size`` evenly spaced rows of the batch, plus its most-masked sequence."""
    import tensorflow as tf

    n = tf.shape(batch)[0]
    idx = tf.cast(tf.round(tf.linspace(0.0, tf.cast(n - 1, tf.float32), sample_size)), tf.int32)
    if mask is not None:
        most_masked = tf.argmin(tf.reduce_sum(tf.cast(mask, tf.int32), axis=1), output_type=tf.int32)
        idx = tf.concat([idx, most_masked[None]], axis=0)
    return idx


def _sample_errors(layer, args, kwargs, call, seq, mask, init, out, sample_size):
    """Keras's layer re-runs a sample of the batch end to end; every output compared with ours on it."""
    import keras
    import tensorflow as tf

    idx = _sample_rows(seq, mask, sample_size)
    s_kwargs = dict(kwargs)
    if mask is not None:
        s_kwargs["mask"] = tf.gather(mask, idx)
    if init is not None:
        s_kwargs["initial_state"] = [tf.gather(st, idx) for st in init]
    ref = call(tf.gather(seq, idx), *args[1:], **s_kwargs)
    flat_out, flat_ref = keras.tree.flatten(out), keras.tree.flatten(ref)
    if len(flat_out) != len(flat_ref):  # pragma: no cover - a Keras change in what RNN layers return
        raise UnsupportedLayerError(f"layer {layer.name!r}: unexpected output structure from Keras")
    worst = []
    for o, r in zip(flat_out, flat_ref):
        r = tf.cast(r, tf.float32)
        worst.append(_max_errors(tf.abs(tf.cast(tf.gather(o, idx), tf.float32) - r), r))
    return tf.reduce_max(tf.stack(worst), axis=0)


def _cell_errors(d: _Direction, r: dict):
    """Keras's own cell, called once on every step of every sequence (``T x B`` rows), teacher-forced from our
    states: its hidden state (and LSTM cell state) against ours at every unmasked step."""
    import tensorflow as tf

    from gatelens.models.cells import shift_in_time, swap_batch_time

    h = r["hidden_state"]

    def flat(t):
        return tf.reshape(t, tf.stack([-1, tf.shape(t)[-1]]))

    states = [flat(shift_in_time(h, r["_h0"]))]
    ours = [h]
    if "cell_state" in r:
        states.append(flat(shift_in_time(r["cell_state"], r["_c0"])))
        ours.append(r["cell_state"])
    x_tm = swap_batch_time(r["_x_proc"])
    y, new_states = d.rnn.cell(flat(x_tm), states, training=False)
    theirs = [y] + ([new_states[1]] if len(ours) == 2 else [])
    keep = None if r["_mask_proc"] is None else tf.reshape(swap_batch_time(r["_mask_proc"]), [-1, 1])
    worst = []
    for o, k in zip(ours, theirs):
        k = tf.cast(k, tf.float32)
        diff = tf.abs(flat(o) - k)
        if keep is not None:
            diff, k = tf.where(keep, diff, 0.0), tf.where(keep, k, 0.0)  # masked steps are not compared
        worst.append(_max_errors(diff, k))
    return tf.reduce_max(tf.stack(worst), axis=0)


def _layer_free(plan, layer, args, kwargs, call, seq, mask, init, verify, sample_size):
    """verify="cell" / "sample": our re-run is the layer's output; Keras checks it (see :data:`VERIFY_CHECKS`)."""
    import keras
    import tensorflow as tf

    from gatelens.models import compat

    ds = plan.by_layer[id(layer)]  # its directions (forward, backward for a Bidirectional)
    rs = [run_direction(d, seq, mask, None, i0) for d, i0 in zip(ds, _split_states(init, len(ds)))]
    if len(ds) == 2:
        out = _bidirectional_output(layer, *(_emulated_output(d.rnn, r) for d, r in zip(ds, rs)))
    else:
        out = _emulated_output(layer, rs[0])
    out_mask = layer.compute_mask(seq, mask)
    for o, om in zip(keras.tree.flatten(out), keras.tree.flatten(out_mask) if out_mask is not None else []):
        if om is not None:
            compat.set_mask(o, om)
    e = _sample_errors(layer, args, kwargs, call, seq, mask, init, out, sample_size)
    got = {}
    for d, r in zip(ds, rs):
        if d.name in plan.wanted:
            r["error"] = e if verify == "sample" else tf.maximum(e, _cell_errors(d, r))
            got[d.name] = r
    return out, got


def _layer_full(plan, layer, args, kwargs, call, seq, mask, init):
    """verify="full": Keras's layer runs the whole batch; each direction is recomputed from Keras's states."""
    import tensorflow as tf

    from gatelens.models.cells import swap_batch_time

    out = call(*args, **kwargs)
    ds = plan.by_layer[id(layer)]
    if len(ds) == 1:
        (d,) = ds
        y = out[0] if layer.return_state else out
        r = run_direction(d, seq, mask, y if layer.return_sequences else None, init)
        r["error"] = _teacher_error(r, y, not layer.return_sequences)
        return out, {d.name: r}
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
        fwd_ref, bwd_ref = parts[0], _rev(parts[1])
    fwd_d, bwd_d = ds  # built in this order by _Plan
    i_f, i_b = _split_states(init, 2)
    rf = run_direction(fwd_d, seq, mask, fwd_ref, i_f)
    rb = run_direction(bwd_d, seq, mask, bwd_ref, i_b)
    if parts is not None:  # concat or None: each direction against its own half
        ef = _teacher_error(rf, parts[0], not seqs)
        eb = _teacher_error(rb, bwd_ref if seqs else parts[1], not seqs)
    else:  # merged: each direction's hidden state in time order
        hf = rf["hidden_state"] if seqs else rf["hidden_state"][-1]
        hb = tf.reverse(rb["hidden_state"], axis=[0]) if seqs else rb["hidden_state"][-1]
        merged = {"sum": hf + hb, "ave": (hf + hb) / 2, "mul": hf * hb}[layer.merge_mode]
        yf = tf.cast(swap_batch_time(y) if seqs else y, tf.float32)
        diff = tf.abs(merged - yf)
        if seqs:
            diff = tf.where(swap_batch_time(rf["mask"])[..., None], diff, 0.0)
        ef = eb = _max_errors(diff, yf)
    rf["error"], rb["error"] = ef, eb
    return out, {fwd_d.name: rf, bwd_d.name: rb}


# -- the public objects ------------------------------------------------------------------------------------------


class Batch(NamedTuple):
    """One extracted batch: its first sequence, the signals of every captured layer, their verification errors.

    Examples
    --------
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> batches = list(Extractor(tiny_model()).iter_batches(tiny_inputs(n=3), batch_size=2))
    >>> [(b.start, b.signals["lstm"]["hidden_state"].shape) for b in batches]
    [(0, (2, 4, 3)), (2, (1, 4, 3))]
    >>> sorted(batches[0].signals["lstm"])[:5], all(e < 1e-5 for b in batches for e in b.errors.values())
    (['candidate', 'candidate_pre', 'cell_state', 'forget_gate', 'forget_gate_pre'], True)
    """

    start: int
    signals: dict[str, dict[str, np.ndarray]]
    errors: dict[str, float]  # layer -> max |hidden state recomputed - Keras| in this batch


class Extractor:
    """Compiled re-runner for one model (reusable across batches and inputs).

    Optional: :func:`extract`, :func:`write_run` and :func:`verification_errors` take the model itself and
    share the per-model cache of compiled functions that every ``Extractor`` of the model uses too. An
    ``Extractor`` holds no per-run state, so one can serve several threads.

    Parameters
    ----------
    model : keras.Model
        A Sequential or functional model (nested sub-models allowed) with one input.
    layers : str or sequence of str, optional
        Contract names to capture (a Bidirectional's plain name selects both directions);
        default all.
    jit_compile : bool
        Allow XLA (default True: inputs above :data:`GRAPH_MAX_WORK` compile with XLA, falling back to plain
        graph mode if XLA fails); False: always graph mode.

    Examples
    --------
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> model = tiny_model()
    >>> ex = Extractor(model)
    >>> ex.layer_names, Extractor(model).compile_stats() == ex.compile_stats()
    (['lstm'], True)
    """

    def __init__(self, model: Any, *, layers: Sequence[str] | str | None = None, jit_compile: bool = True) -> None:
        self.model = model
        if isinstance(layers, str):  # one layer's name, not a sequence of one-character names
            layers = [layers]
        self._plan = _plan_for(model, layers, jit_compile)
        self.input_shape = self._plan.input_shape
        self.input_dtype = self._plan.input_dtype
        self.token_input = self._plan.token_input
        self.directions = self._plan.directions
        #: The model's own lookup layer and the rest of the model (:class:`~gatelens.models.strings.TextFront`),
        #: None when the model takes numbers or ids.
        self.front = self._plan.front
        self.input_dim = self._plan.input_dim
        self._embedding_name = self._plan._embedding_name

    @property
    def by_layer(self) -> dict[int, list[_Direction]]:
        """``id(keras layer)`` -> its directions (one, or forward and backward of a Bidirectional), all of the
        model's recurrent layers (the hook's lookup; :mod:`gatelens.models.intervene` uses it too)."""
        return self._plan.by_layer

    _by_layer = by_layer  # the name gatelens.models.intervene reads

    @property
    def layer_names(self) -> list[str]:
        """Contract names of the captured layers, in model order."""
        return [d.name for d in self.directions]

    @property
    def integer_input(self) -> bool:
        """True when the model takes token ids."""
        return self.token_input

    def compile_stats(self) -> dict[str, Any]:
        """``traces``: how often TensorFlow traced this model's batch functions (all modes); ``shapes``:
        ``(compile, dtype, verify, sample_size)`` -> the input shapes run with it (``"xla"``: the padded shapes
        compiled; ``"graph"``: the batch shapes its one graph served).

        Examples
        --------
        >>> from gatelens._examples import tiny_model, tiny_inputs
        >>> ex = Extractor(tiny_model())
        >>> ex.compile_stats()
        {'traces': 0, 'shapes': {}}
        >>> _ = list(ex.iter_batches(tiny_inputs(n=3), batch_size=2))   # a small input: graph mode, traced once
        >>> stats = ex.compile_stats()
        >>> stats["traces"], {key: sorted(shapes) for key, shapes in stats["shapes"].items()}
        (1, {('graph', 'float32', 'cell', 8): [(1, 4, 2), (2, 4, 2)]})
        """
        traces = sum(f.experimental_get_tracing_count() for f in self._plan.tf_functions())
        return {"traces": int(traces), "shapes": self._plan.compiled_shapes()}

    def compile_mode(self, x: Any, compile: str = "auto") -> str:
        """How an input like ``x`` (an array, or its shape) runs: ``"xla"`` or ``"graph"`` (:func:`compile_mode`
        with this model's captured units; ``"graph"`` always for an ``Extractor(jit_compile=False)``).

        Examples
        --------
        >>> from gatelens._examples import tiny_model, tiny_inputs
        >>> model = tiny_model()
        >>> ex = Extractor(model)
        >>> ex.compile_mode(tiny_inputs()), ex.compile_mode((100_000, 400)), ex.compile_mode((2, 4), "xla")
        ('graph', 'xla', 'xla')
        >>> Extractor(model, jit_compile=False).compile_mode((100_000, 400))
        'graph'
        """
        shape = tuple(x) if isinstance(x, tuple) else np.shape(x)
        return self._plan.mode(shape[0], shape[1] if len(shape) > 1 else 1, compile)

    def run_batch(
        self,
        x: np.ndarray,
        *,
        dtype: str = "float32",
        verify: str = DEFAULT_VERIFY,
        sample_size: int = DEFAULT_SAMPLE_SIZE,
        compile: str = "auto",
    ) -> dict[str, dict[str, np.ndarray]]:
        """Signals (as ``dtype``), ``mask``, ``input`` and ``error`` of every captured layer (time order).

        ``x`` runs as it is (no padding): prefer :meth:`iter_batches`, which pads to the compiled shapes.
        ``compile`` as in :func:`extract` (``"auto"`` by the size of ``x``).
        """
        _check_verify(verify, sample_size)
        res = self._plan.compiled(dtype, verify, sample_size, self.compile_mode(x, compile))(x)
        # np.asarray shares the tensor's buffer (zero-copy on CPU); .numpy() would copy every signal
        return {name: self._present(name, sig) for name, sig in res.items()}

    def _present(self, name: str, sig: dict[str, Any]) -> dict[str, np.ndarray]:
        """A layer's outputs as (B, T, ...) arrays in time order: views of the compiled function's buffers
        (transposed from time-major, reversed for go_backwards, the stacked pre-activations split)."""
        info = next(d.info for d in self.directions if d.name == name)
        out: dict[str, np.ndarray] = {}
        for k, v in sig.items():
            a = np.asarray(v)
            if k in ("mask", "input", "error"):
                out[k] = a
                continue
            a = a.swapaxes(0, 1)
            if info.go_backwards:
                a = a[:, ::-1]
            if k == "preactivations":  # (B, T, k units) in Keras's block order
                blocks = WEIGHT_BLOCKS[info.cell_type]
                u = a.shape[-1] // len(blocks)
                for j, gate in enumerate(blocks):
                    out[PRE_ACTIVATION[info.cell_type][gate]] = a[..., j * u : (j + 1) * u]
            else:
                out[k] = a
        return out

    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        """Per captured layer: kernel, recurrent_kernel, bias (and embedding when fed by one)."""
        self._plan.ensure_traced()
        out = {}
        for d in self.directions:
            w = dict(d.weights)
            if d.name in self._plan.embedding:
                w["embedding"] = np.asarray(self._plan.embedding[d.name].embeddings.numpy(), np.float32)
            out[d.name] = w
        return out

    def prepare(
        self,
        dtype: str = "float32",
        verify: str = DEFAULT_VERIFY,
        sample_size: int = DEFAULT_SAMPLE_SIZE,
        compile: str = "xla",
    ):
        """Trace the batch function for this key now (no-op when done), e.g. to know :meth:`weights` early.

        ``compile``: ``"xla"`` or ``"graph"`` (:meth:`compile_mode` of the input to come)."""
        import tensorflow as tf

        c = self._plan.compiled(dtype, verify, sample_size, compile)
        c.fn.get_concrete_function(tf.TensorSpec((None, *self.input_shape[1:]), self.input_dtype))

    # -- batching ----------------------------------------------------------------------------
    def iter_batches(
        self,
        x: np.ndarray,
        *,
        batch_size: int = 256,
        tolerance: float = DEFAULT_TOLERANCE,
        progress: Progress | None = None,
        dtype: str = "float32",
        verify: str = DEFAULT_VERIFY,
        sample_size: int = DEFAULT_SAMPLE_SIZE,
        compile: str = "auto",
        _prepared: bool = False,
    ) -> Iterator[Batch]:
        """Yield a :class:`Batch` for consecutive batches; raise VerificationError above ``tolerance``.

        ``x`` as :meth:`to_ids` takes it (raw text for a model with a lookup layer). Signals come as
        ``dtype`` ("float32" or "float16"); ``mask`` bool and ``input`` float32.
        ``verify``, ``sample_size`` and ``compile``: see :func:`extract` (``"auto"`` by the size of the whole ``x``).
        With XLA a batch shorter than ``batch_size`` is padded to the next power of two (:func:`bucket`) and the
        padding dropped from what is yielded; in graph mode it runs as it is.
        """
        for start, k, res, errors in self._raw_batches(
            x,
            batch_size=batch_size,
            tolerance=tolerance,
            progress=progress,
            dtype=dtype,
            verify=verify,
            sample_size=sample_size,
            compile=compile,
            _prepared=_prepared,
        ):
            yield Batch(start, self._present_all(res, k), errors)

    def _present_all(self, res: dict[str, dict[str, Any]], k: int) -> dict[str, dict[str, np.ndarray]]:
        """:meth:`_present` of every layer of a compiled function's result, its first ``k`` sequences."""
        out = {}
        for name, sig in res.items():
            out[name] = {key: v[:k] for key, v in self._present(name, sig).items() if key != "error"}
        return out

    def _raw_batches(
        self,
        x: np.ndarray,
        *,
        batch_size: int,
        tolerance: float,
        progress: Progress | None,
        dtype: str,
        verify: str,
        sample_size: int,
        compile: str = "auto",
        _prepared: bool,
    ) -> Iterator[tuple[int, int, dict[str, dict[str, np.ndarray]], dict[str, float]]]:
        """(start, k, the compiled function's arrays as they are, errors) for each batch of ``x``, checked.

        The arrays are the padded batch's (time-major signals, batch-major ``mask`` and ``input``; the first
        ``k`` sequences are real) as NumPy views of TensorFlow's buffers.
        """
        _check_verify(verify, sample_size)
        _check_batch_size(batch_size)
        x = self.check_input(x) if _prepared else self.to_ids(x)[0]
        n = x.shape[0]
        mode = self.compile_mode(x, compile)
        compiled = self._plan.compiled(dtype, verify, sample_size, mode)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):  # NumPy beside TF: one BLAS thread avoids oversubscription
            for start, k in batch_spans(n, int(batch_size)):
                xb = x[start : start + k]
                size = bucket(k, int(batch_size)) if mode == "xla" else k  # graph mode: any size, no padding
                if k < size:
                    xb = np.concatenate([xb, np.repeat(xb[-1:], size - k, axis=0)], axis=0)
                # np.asarray shares the tensor's buffer (zero-copy on CPU); .numpy() would copy every signal
                res = {name: {key: np.asarray(v) for key, v in sig.items()} for name, sig in compiled(xb).items()}
                errors = {}
                for name in self.layer_names:
                    err, rel = (float(v) for v in res[name].pop("error"))
                    errors[name] = err
                    # float32 round-off grows with the magnitude of h (unbounded activations): the check
                    # scales the error by 1 + |h|; the reported number stays the plain max abs error.
                    if not (np.isfinite(err) and rel <= tolerance):
                        where = {"full": "sequences", "cell": "sequences", "sample": "a sample of sequences"}
                        h = res[name].get("hidden_state")
                        if h is not None and not np.isfinite(h).all():  # (only on this failure path)
                            raise VerificationError(
                                f"layer {name!r}: the recomputed hidden state is not finite (NaN or inf: float32 "
                                f"overflows) in {where[verify]} {start}..{start + k - 1}, so it cannot be compared "
                                f"with Keras's output; check the layer's weights and activations, or the input's scale."
                            )
                        raise VerificationError(
                            f"layer {name!r}: recomputed hidden state differs from Keras's output by {err:.3g} "
                            f"({rel:.3g} relative to 1 + |h|; tolerance {tolerance:g}; verify={verify!r}) in "
                            f"{where[verify]} {start}..{start + k - 1}; the extractor does not reproduce this layer."
                        )
                yield start, k, res, errors
                if progress is not None:
                    progress(start + k, n)

    @property
    def vocabulary(self) -> list[str] | None:
        """The model's own vocabulary (from its lookup layer), None when it has none."""
        return None if self.front is None else list(self.front.vocabulary)

    def to_ids(self, x: Any) -> tuple[np.ndarray, Any]:
        """``x`` as the user gives it -> (the checked array the compiled function takes, the unknown tokens).

        For a model that starts with a lookup layer, ``x`` is strings (or raw integers for
        IntegerLookup), tokenised by that layer itself, and the second item is the
        :class:`~gatelens.models.strings.UnknownTokens` it did not know. Other models:
        (:meth:`check_input` of ``x``, None).
        """
        if self.front is not None:
            ids, unknown = self.front.tokenize(x)
            return self.check_input(ids), unknown
        return self.check_input(x), None

    def check_input(self, x: Any) -> np.ndarray:
        """Validate ``x`` (ids for a model with a lookup layer) against the model's input; return it as NumPy.

        Token ids outside ``[0, input_dim)`` of the first Embedding raise :class:`~gatelens.errors.DataError`
        naming the first offending sequence, step and value (Keras refuses them too).
        """
        from gatelens.errors import DataError

        x = np.asarray(x)
        if self.front is not None and x.dtype.kind not in "iu":
            raise DataError(f"{self.front.describe()} ids expected; pass raw input through Extractor.to_ids")
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
            if self.input_dim is not None and x.size:
                bad = (x < 0) | (x >= self.input_dim)
                if bad.any():
                    s, t = (int(v) for v in np.argwhere(bad)[0][:2])
                    origin = f" (ids given by {self.front.describe()})" if self.front is not None else ""
                    raise DataError(
                        f"token id {int(x[s, t])} at sequence {s}, step {t} is outside [0, {self.input_dim}) of "
                        f"the Embedding {self._embedding_name!r}{origin}; {int(bad.sum())} id(s) in all are out "
                        "of range"
                    )
            return x.astype(self.input_dtype, copy=False)
        x = x.astype(np.float32, copy=False)
        if not np.all(np.isfinite(x)):
            bad = np.argwhere(~np.isfinite(x))
            raise DataError(f"input has {len(bad)} NaN/inf value(s), first at sequence {bad[0][0]}, step {bad[0][1]}")
        return x


def _extractor(model: Any, layers: Sequence[str] | None) -> Extractor:
    return model if isinstance(model, Extractor) else Extractor(model, layers=layers)


def _each_batch(ex: Extractor, x: np.ndarray, errors: dict[str, float], *, raw: bool = False, **options: Any):
    """``(start, k, arrays)`` of each batch of the prepared ``x`` (:meth:`Extractor._raw_batches`'s arrays when
    ``raw``, else presented: batch-major, the ``k`` real sequences); ``errors[layer]`` kept at the max so far."""
    for start, k, res, errs in ex._raw_batches(x, _prepared=True, **options):
        for name, e in errs.items():
            errors[name] = max(errors[name], e)
        yield start, k, (res if raw else ex._present_all(res, k))


def plain_pages_array(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array in fresh anonymous memory of ordinary pages (no transparent huge pages).

    NumPy advises the kernel to back every large allocation with huge pages (``madvise(MADV_HUGEPAGE)``). Where
    the kernel then compacts memory synchronously on the first touch of each huge page
    (``/sys/kernel/mm/transparent_hugepage/defrag`` = ``madvise``, a common default), filling a fresh
    1.2 GB array took 3.5-13.5 s on the benchmark machine against 0.7 s in ordinary pages (0.46 s populated). The assembled signals
    are written once and then read, so ordinary pages serve them. The memory is freed with the last array
    (or view) that uses it.

    Examples
    --------
    >>> a = plain_pages_array((2, 3), np.float32)
    >>> a[:] = 1.5
    >>> a.shape, a.dtype, float(a.sum()), a.flags.writeable
    ((2, 3), dtype('float32'), 9.0, True)
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes == 0 or not hasattr(mmap, "MAP_ANONYMOUS"):  # (Windows: NumPy's own allocation)
        return np.empty(shape, dtype)
    # populated at once where Linux allows it: one pass of the kernel, 0.46 s against 0.7 s of faults per 1.2 GB
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=flags), dtype).reshape(shape)


def _assemble(ex: Extractor, x: np.ndarray, errors: dict[str, float], **options: Any) -> dict[str, dict[str, Any]]:
    """Every batch of ``x`` in memory: per layer, each signal (N, T, ...) batch-major, in time order.

    One batch: its arrays as the compiled function returned them (views, no copy). Several: one time-major
    array per signal, as the compiled function lays it out, so each batch is copied in as contiguous rows of
    ``k x units`` (a batch-major store took a strided copy of every step), in ordinary pages
    (:func:`plain_pages_array`); a copier thread allocates and fills it while the next batch is computed. The
    arrays are then presented (as views) like a single batch.
    """
    n = x.shape[0]
    batches = _each_batch(ex, x, errors, raw=True, dtype="float32", **options)
    if len(batch_spans(n, int(options["batch_size"]))) == 1:
        ((_, k, res),) = list(batches)  # run to the end: the progress callback hears of the batch
        return ex._present_all(res, k)
    store: dict[str, dict[str, np.ndarray]] = {}

    def copy_in(start: int, k: int, res: dict[str, dict[str, np.ndarray]]) -> None:
        if not store:  # allocated (and its pages populated) here, while the main thread computes the next batch
            for name, sig in res.items():
                store[name] = {}
                for key, v in sig.items():
                    axis = 0 if key in ("mask", "input") else 1
                    store[name][key] = plain_pages_array((*v.shape[:axis], n, *v.shape[axis + 1 :]), v.dtype)
        for name, sig in res.items():
            for key, v in sig.items():
                if key in ("mask", "input"):  # batch-major
                    store[name][key][start : start + k] = v[:k]
                else:  # time-major (T, B, ...)
                    store[name][key][:, start : start + k] = v[:, :k]

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatelens-assemble")
    pending = None  # at most one batch is being copied while the next one is computed
    try:
        for start, k, res in batches:
            if pending is not None:
                pending.result()
            pending = pool.submit(copy_in, start, k, res)
        if pending is not None:
            pending.result()
    finally:
        if pending is not None:
            pending.cancel()
        pool.shutdown(wait=True)
    return ex._present_all(store, n)


def extract(
    model: Any,
    x: Any,
    *,
    batch_size: int = 256,
    layers: Sequence[str] | str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Progress | None = None,
    vocabulary: list[str] | None = None,
    feature_names: list[str] | None = None,
    verify: str = DEFAULT_VERIFY,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    strict_vocab: bool = False,
    compile: str = "auto",
) -> Trace:
    """Re-run every recurrent layer of ``model`` on ``x`` and capture all its signals in memory.

    The compiled function is built on the first call for a model and reused by every later call (any ``x``,
    any N: see the module docstring).

    Parameters
    ----------
    model : keras.Model
        Sequential or functional (nested sub-models allowed), as returned by :func:`models.load_model`.
    x : array (N, T, F) float, or (N, T) int token ids for models that start with an Embedding
    batch_size : int
    layers : str or sequence of str, optional
        Capture only these layers (contract names).
    tolerance : float
        Largest accepted max |hidden state recomputed - Keras output| (scaled by 1 + |h|); above it
        VerificationError.
    progress : callable(done, total), optional
    vocabulary, feature_names : optional
        Stored on the trace (token strings for text models, input feature names otherwise).
    verify : {"cell", "full", "sample"}
        What is checked against Keras's own code (:data:`VERIFY_CHECKS`). ``"cell"`` (default): gatelens's
        float32 re-run drives the model; Keras's own cell, called once on every step of every sequence
        teacher-forced from gatelens's states, checks each hidden state (and LSTM cell state), and Keras's
        layer re-runs ``sample_size`` sequences of each batch (plus its most-masked one) end to end.
        ``"full"``: Keras's layer runs every sequence (a second forward pass) and each layer is recomputed
        from Keras's states and compared at every step. ``"sample"``: ``"cell"`` without the all-steps cell
        check (the fastest).
    sample_size : int
        Sequences per batch that Keras's layer re-runs (``"cell"`` and ``"sample"``).
    strict_vocab : bool
        For a model that starts with a lookup layer (``x`` then raw strings, or integers for
        IntegerLookup): raise :class:`~gatelens.errors.DataError` when a token is not in its vocabulary
        (by default unknown tokens become the OOV token and are counted in ``trace.meta["unknown_tokens"]``).
    compile : {"auto", "xla", "graph"}
        How the batch function runs (:data:`COMPILE_MODES`): ``"xla"`` compiled by XLA (the fastest per batch,
        kept for later calls), ``"graph"`` TensorFlow's graph mode (no compilation); ``"auto"`` (default):
        ``"graph"`` when N x T x units of the whole input is at most :data:`GRAPH_MAX_WORK`
        (:func:`compile_mode`). Both give the same signals within float32 round-off; ``trace.meta["compile"]``
        says which ran.

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
    _check_verify(verify, sample_size)
    _check_batch_size(batch_size)
    ex = _extractor(model, layers)
    x, unknown = ex.to_ids(x)
    _check_strict(ex, unknown, strict_vocab)
    mode = ex.compile_mode(x, compile)
    errors = {name: 0.0 for name in ex.layer_names}
    store = _assemble(
        ex,
        x,
        errors,
        batch_size=batch_size,
        tolerance=tolerance,
        progress=progress,
        verify=verify,
        sample_size=sample_size,
        compile=mode,
    )
    weights = ex.weights()
    traces = {}
    for d in ex.directions:
        s = store[d.name]
        mask = s.pop("mask")
        inputs = s.pop("input")
        traces[d.name] = LayerTrace(d.info, s, mask=mask, inputs=inputs, weights=weights[d.name])
    return Trace(
        traces,
        verification=errors,
        tokens=x.astype(np.int32) if ex.integer_input else None,
        vocabulary=ex.vocabulary if ex.vocabulary is not None else vocabulary,
        x=None if ex.integer_input else x,
        feature_names=feature_names,
        meta={
            "tolerance": tolerance,
            "batch_size": batch_size,
            **_verify_meta(verify, sample_size),
            **_compile_meta(ex, x.shape, compile, mode, dtype="float32", verify=verify, sample_size=sample_size),
            **_front_meta(ex, unknown),
        },
    )


def verification_errors(
    model: Any,
    x: Any,
    *,
    batch_size: int = 256,
    layers: Sequence[str] | str | None = None,
    verify: str = "full",
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    progress: Progress | None = None,
    compile: str = "auto",
) -> dict[str, float]:
    """Per captured layer, the max |hidden state recomputed - Keras's own| over ``x`` (nothing is kept).

    ``verify`` and ``compile`` as in :func:`extract` (default ``"full"``: Keras's layer runs every sequence). Never raises
    :class:`~gatelens.errors.VerificationError`: the numbers are the answer.

    Examples
    --------
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> errs = verification_errors(tiny_model(), tiny_inputs())
    >>> list(errs), errs["lstm"] < 1e-5
    (['lstm'], True)
    """
    ex = _extractor(model, layers)
    errors = {name: 0.0 for name in ex.layer_names}
    for batch in ex.iter_batches(
        x,
        batch_size=batch_size,
        tolerance=float("inf"),
        progress=progress,
        verify=verify,
        sample_size=sample_size,
        compile=compile,
    ):
        errors = {k: max(v, batch.errors[k]) for k, v in errors.items()}
    return errors


def write_run(
    model: Any,
    x: Any,
    out: str | os.PathLike,
    *,
    batch_size: int = 256,
    layers: Sequence[str] | str | None = None,
    dtype: str = "float32",
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Progress | None = None,
    vocabulary: list[str] | None = None,
    feature_names: list[str] | None = None,
    manifest: dict[str, Any] | None = None,
    verify: str = DEFAULT_VERIFY,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    strict_vocab: bool = False,
    compile: str = "auto",
) -> Trace:
    """Extract like :func:`extract`, streaming batch by batch into a run directory; return it opened lazily.

    Memory is bounded by ``batch_size`` (a batch holds at most 1.25 times it: :func:`batch_spans`), not by N.
    Writing and hashing a batch (a writer thread) overlaps the computation of the next one. The run appears at
    ``out`` only once complete (manifest last); an earlier run at ``out`` is replaced only then. ``verify`` and ``sample_size`` as in :func:`extract`; the manifest
    records them and what they check (``verify_checks``); ``compile`` as in :func:`extract` (the manifest's
    ``compile`` says which ran, ``compile_rule`` why). ``strict_vocab`` as in
    :func:`extract`; the unknown tokens a model's own lookup layer met are in the manifest's ``unknown_tokens``.

    Examples
    --------
    >>> import os, tempfile
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> out = os.path.join(tempfile.mkdtemp(), "run")
    >>> run = write_run(tiny_model("gru"), tiny_inputs(n=3), out, batch_size=2, dtype="float16")
    >>> run["gru"]["update_gate"].shape, run.meta["dtype"], run.meta["verify"]
    ((3, 4, 3), 'float16', 'cell')
    """
    check_output_path(out)  # before any work: a path that holds something else is refused, and left as it is
    _check_verify(verify, sample_size)
    _check_batch_size(batch_size)
    ex = _extractor(model, layers)
    x, unknown = ex.to_ids(x)
    _check_strict(ex, unknown, strict_vocab)
    n, t = x.shape[0], x.shape[1]
    mode = ex.compile_mode(x, compile)
    ex.prepare(
        dtype, verify, sample_size, mode
    )  # traced (not compiled) now: the weights, embeddings included, are known
    writer = RunWriter(
        out,
        [d.info for d in ex.directions],
        n_sequences=n,
        n_steps=t,
        dtype=dtype,
        chunk_sequences=batch_size,
        weights=ex.weights(),
        with_tokens=ex.integer_input,
        n_features=None if ex.integer_input else int(x.shape[2]) if x.ndim == 3 else None,
    )
    errors = {name: 0.0 for name in ex.layer_names}
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatelens-writer")
    pending = None  # at most one batch is being written while the next one is computed
    try:
        for start, k, res in _each_batch(
            ex,
            x,
            errors,
            batch_size=batch_size,
            tolerance=tolerance,
            progress=progress,
            dtype=dtype,
            verify=verify,
            sample_size=sample_size,
            compile=mode,
        ):
            xb = x[start : start + k]
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
        _finish_run(
            writer,
            ex,
            x,
            errors,
            tolerance=tolerance,
            batch_size=batch_size,
            vocabulary=vocabulary,
            feature_names=feature_names,
            verify=verify,
            sample_size=sample_size,
            unknown=unknown,
            manifest=manifest,
            compile_meta=_compile_meta(ex, x.shape, compile, mode, dtype=dtype, verify=verify, sample_size=sample_size),
        )
    except BaseException:
        if pending is not None:
            pending.cancel()
            try:
                pending.result()
            except BaseException:  # the first error is the one to report
                pass
        writer.abort()
        raise
    finally:
        pool.shutdown(wait=True)
    return open_run(Path(out), verify=False)


def _finish_run(
    writer: RunWriter,
    ex: Extractor,
    x: np.ndarray,
    errors: dict[str, float],
    *,
    tolerance: float,
    batch_size: int,
    vocabulary: list[str] | None,
    feature_names: list[str] | None,
    verify: str,
    sample_size: int,
    unknown: Any = None,
    manifest: dict[str, Any] | None = None,
    compile_meta: dict[str, Any] | None = None,
) -> None:
    """Seal a run written from ``ex`` on ``x`` (its manifest, last): what :func:`write_run` and the
    distributed writer (:func:`gatelens.models.distributed.write_run_distributed`) record alike."""
    import keras
    import tensorflow as tf

    writer.finish(
        errors,
        tolerance=tolerance,
        batch_size=batch_size,
        keras_version=keras.__version__,
        tensorflow_version=tf.__version__,
        vocabulary=ex.vocabulary if ex.vocabulary is not None else vocabulary,
        feature_names=feature_names or (None if ex.integer_input else [f"x{i}" for i in range(x.shape[-1])]),
        model_input_shape=list(ex.input_shape),
        **{
            **_verify_meta(verify, sample_size),
            **(compile_meta or {}),
            **_front_meta(ex, unknown),
            **(manifest or {}),
        },
    )
