"""Causal interventions: re-run a Keras model with one gate, unit or state of a recurrent layer replaced.

An intervention is a small serialisable record (:class:`Intervention`): a layer, its unit(s) (or all), a
signal (a gate, the candidate, the cell or hidden state), the steps (all, a range, a list, or where a feature
holds) and an operation: ``set`` a value (clamp a gate: ``forget_gate=1`` never forget, ``forget_gate=0``
forget now, ``input_gate=0`` write nothing, ``output_gate=0`` read nothing), ``add`` a value (steering),
``zero``, ``mean`` (the signal's mean over the data, per unit), ``resample`` (the value the signal takes on
another sequence) or ``patch`` (the value it takes on a *source* input at the same step).

The model runs through its own Keras graph (:func:`gatelens.models.graph.call_with_hook`); each recurrent layer
that is intervened on (or whose signals are captured) is re-run step by step from its weights, in Keras's own
order of operations in float32 (the extractor's free-running re-run, :mod:`gatelens.models.cells`), with the
replacement applied inside the step: the changed value flows on through the recurrence (later steps see the
changed state) and through the rest of the model, which Keras runs as it always does. Every other layer is
Keras's own. With an identity intervention (a gate clamped to the value it already takes) the model's output is
Keras's own to float32 round-off (tests/test_intervene.py: within 1e-5 on every configuration of the
extractor's tests).

Several interventions in one call act together. :func:`sweep`, :func:`knockout` and :func:`ranking_check` run
many *variants* (each its own list of interventions) side by side: each data batch is tiled once per variant in
one call of one compiled function, so a sweep over 256 units costs 256 forward passes but compiles once and
holds at most ``batch_size`` rows of one batch at a time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from gatelens.errors import DataError, UsageError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

#: The signals an intervention can replace, per cell type (in the order the step computes them).
INTERVENABLE = {
    "lstm": ("input_gate", "forget_gate", "candidate", "output_gate", "cell_state", "hidden_state"),
    "gru": ("update_gate", "reset_gate", "candidate", "hidden_state"),
    "simple_rnn": ("hidden_state",),
}
#: Operations: ``set``/``add`` take ``value``; ``zero``, ``mean``, ``resample``, ``patch`` take none.
OPS = ("set", "add", "zero", "mean", "resample", "patch")
_STEPS_RE = re.compile(r"^(all|\d+|\d*:\d*|\d+(,\d+)+|where:[A-Za-z_][\w.\-]*)$")


def _parse_units(text: str, field: str = "units") -> tuple[int, ...] | None:
    t = text.strip()
    if t in ("all", "*", ""):
        return None
    try:
        units = tuple(int(u) for u in t.split(","))
    except ValueError:
        raise UsageError(f"{field} {text!r}: expected a unit number, a comma-separated list or 'all'") from None
    if any(u < 0 for u in units):
        raise UsageError(f"{field} {text!r}: unit numbers are >= 0")
    return units


@dataclass(frozen=True)
class Intervention:
    """One intervention: replace ``signal`` of ``units`` of ``layer`` at ``steps`` by ``op``.

    Parameters
    ----------
    layer : str
        The layer's contract name (as in a trace: ``"lstm"``, ``"bidirectional/forward"``).
    signal : str
        One of :data:`INTERVENABLE` for the layer's cell type.
    op : str
        One of :data:`OPS`.
    value : float, optional
        The value for ``set`` and ``add``.
    units : tuple of int, optional
        The units (default all).
    steps : str
        ``"all"``, ``"12"``, ``"10:20"`` (start inclusive, stop exclusive, either may be left out),
        ``"3,7,9"`` or ``"where:FEATURE"`` (the steps where that feature, passed as ``features``, is non-zero).

    Examples
    --------
    >>> iv = Intervention.parse("lstm:5:forget_gate=1@10:20")
    >>> iv.layer, iv.units, iv.signal, iv.op, iv.value, iv.steps
    ('lstm', (5,), 'forget_gate', 'set', 1.0, '10:20')
    >>> Intervention.from_dict(iv.to_dict()) == iv, iv.label
    (True, 'lstm:5:forget_gate=1@10:20')
    >>> Intervention.parse("lstm:all:cell_state+=0.5").op
    'add'
    """

    layer: str
    signal: str
    op: str
    value: float | None = None
    units: tuple[int, ...] | None = None
    steps: str = "all"

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise UsageError(f"op {self.op!r}: expected one of {', '.join(OPS)}")
        if self.op in ("set", "add"):
            if self.value is None or not np.isfinite(float(self.value)):
                raise UsageError(f"value {self.value!r}: op {self.op!r} needs a finite number")
            object.__setattr__(self, "value", float(self.value))
        elif self.value is not None:
            raise UsageError(f"value {self.value!r}: op {self.op!r} takes no value")
        if self.units is not None:
            units = tuple(int(u) for u in self.units)
            if not units or any(u < 0 for u in units):
                raise UsageError(f"units {self.units!r}: expected unit numbers >= 0 (or None for all)")
            object.__setattr__(self, "units", units)
        steps = str(self.steps).strip()
        if not _STEPS_RE.match(steps):
            raise UsageError(
                f"steps {self.steps!r}: expected 'all', a step '12', a range '10:20', a list '3,7,9' or 'where:FEATURE'"
            )
        object.__setattr__(self, "steps", steps)

    # -- serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (units as a list)."""
        d = asdict(self)
        d["units"] = None if self.units is None else list(self.units)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Intervention:
        """The inverse of :meth:`to_dict`."""
        units = d.get("units")
        return cls(
            layer=str(d["layer"]),
            signal=str(d["signal"]),
            op=str(d["op"]),
            value=d.get("value"),
            units=None if units is None else tuple(units),
            steps=str(d.get("steps", "all")),
        )

    @classmethod
    def parse(cls, text: str) -> Intervention:
        """Parse ``LAYER:UNITS:SIGNAL=VALUE[@STEPS]`` (``+=VALUE`` adds; VALUE also ``zero``, ``mean``,
        ``resample``, ``patch``); UNITS ``5``, ``3,5`` or ``all``."""
        s = str(text).strip()
        where = "all"
        if "@" in s:
            s, where = s.rsplit("@", 1)
        parts = s.rsplit(":", 2)
        if len(parts) != 3 or not parts[0] or ("=" not in parts[2]):
            raise UsageError(
                f"--do {text!r}: expected LAYER:UNITS:SIGNAL=VALUE[@STEPS], e.g. 'lstm:5:forget_gate=1@10:20'"
            )
        layer, units_text, assign = parts
        add = "+=" in assign
        signal, _, value_text = assign.partition("+=" if add else "=")
        signal, value_text = signal.strip(), value_text.strip()
        if not signal:
            raise UsageError(f"--do {text!r}: signal missing before '='")
        units = _parse_units(units_text)
        if value_text in ("zero", "mean", "resample", "patch"):
            if add:
                raise UsageError(f"--do {text!r}: '+=' takes a number, not {value_text!r}")
            return cls(layer, signal, value_text, None, units, where or "all")
        try:
            value = float(value_text)
        except ValueError:
            raise UsageError(
                f"--do {text!r}: value {value_text!r} is not a number, 'zero', 'mean', 'resample' or 'patch'"
            ) from None
        return cls(layer, signal, "add" if add else "set", value, units, where or "all")

    @property
    def label(self) -> str:
        """The intervention in ``--do`` syntax (parses back to itself)."""
        units = "all" if self.units is None else ",".join(str(u) for u in self.units)
        if self.op in ("set", "add"):
            v = f"{self.value:g}"  # short where that is exact, else every digit the value needs (repr)
            if float(v) != self.value:
                v = repr(float(self.value))
            rhs = f"+={v}" if self.op == "add" else f"={v}"
        else:
            rhs = f"={self.op}"
        at = "" if self.steps == "all" else f"@{self.steps}"
        return f"{self.layer}:{units}:{self.signal}{rhs}{at}"


def clamp(layer: str, unit: int | Sequence[int] | None, gate: str, value: float, steps: str = "all") -> Intervention:
    """``Intervention(layer, gate, "set", value, units, steps)``: clamp a gate (or any signal) to ``value``.

    Examples
    --------
    >>> iv = clamp("lstm", 5, "forget_gate", 1, steps="10:20")     # never forget on steps 10..19
    >>> iv
    Intervention(layer='lstm', signal='forget_gate', op='set', value=1.0, units=(5,), steps='10:20')
    >>> iv == Intervention.parse("lstm:5:forget_gate=1@10:20"), clamp("gru", [0, 2], "update_gate", 0).label
    (True, 'gru:0,2:update_gate=0')
    """
    units = None if unit is None else ((int(unit),) if np.isscalar(unit) else tuple(unit))
    return Intervention(layer, gate, "set", value, units, steps)


def ablate(
    layer: str, unit: int | Sequence[int] | None, signal: str = "hidden_state", op: str = "zero", steps: str = "all"
) -> Intervention:
    """``Intervention(layer, signal, op, None, units, steps)`` with ``op`` in zero / mean / resample / patch.

    Examples
    --------
    >>> ablate("lstm", 3)
    Intervention(layer='lstm', signal='hidden_state', op='zero', value=None, units=(3,), steps='all')
    >>> ablate("lstm", None, "cell_state", "mean", steps="0:4").label       # every unit, its mean over the data
    'lstm:all:cell_state=mean@0:4'
    """
    units = None if unit is None else ((int(unit),) if np.isscalar(unit) else tuple(unit))
    return Intervention(layer, signal, op, None, units, steps)


# ---------------------------------------------------------------------------------------------------------------
# resolving the steps


def step_mask(
    steps: str, n: int, t: int, features: Mapping[str, np.ndarray] | None = None, start: int = 0
) -> np.ndarray:
    """The (n, t) bool mask of ``steps`` for sequences ``start .. start + n - 1`` (see :class:`Intervention`).

    Raises UsageError when the steps lie outside ``0 .. t - 1`` or a feature is unknown.

    Examples
    --------
    >>> step_mask("1:3", 1, 4).astype(int).tolist(), step_mask("0,3", 1, 4).astype(int).tolist()
    ([[0, 1, 1, 0]], [[1, 0, 0, 1]])
    """
    out = np.zeros((n, t), bool)
    if steps == "all":
        out[:] = True
        return out
    if steps.startswith("where:"):
        name = steps[6:]
        if not features or name not in features:
            have = sorted(features) if features else []
            raise UsageError(f"steps {steps!r}: no feature {name!r} given (features: {have or 'none'})")
        f = np.asarray(features[name])
        if f.ndim != 2 or f.shape[1] != t:
            raise DataError(f"feature {name!r} has shape {f.shape}; expected (sequences, {t})")
        part = f[start : start + n]
        if part.shape[0] != n:
            raise DataError(f"feature {name!r} has {f.shape[0]} sequences; the data has at least {start + n}")
        return np.isfinite(part) & (part != 0)
    if ":" in steps:
        a, b = steps.split(":")
        lo = int(a) if a else 0
        hi = int(b) if b else t
        if lo >= hi and 0 <= lo <= t and 0 <= hi <= t:
            raise UsageError(f"steps {steps!r}: an empty range (a range is start:stop, start < stop)")
        if not (0 <= lo < hi <= t):
            raise UsageError(f"steps {steps!r} lie outside the sequence (steps 0..{t - 1}; a range is start:stop)")
        out[:, lo:hi] = True
        return out
    idx = [int(s) for s in steps.split(",")]
    bad = [i for i in idx if not 0 <= i < t]
    if bad:
        raise UsageError(f"steps {steps!r}: step {bad[0]} lies outside the sequence (steps 0..{t - 1})")
    out[:, idx] = True
    return out


# ---------------------------------------------------------------------------------------------------------------
# the compiled re-run


def _apply(v, slot_tensors, t_index):
    """Apply the slots ``[(op, mask (T, B, u), value (T, B, u))]`` at step ``t_index`` to ``v`` (B, u), in order."""
    import tensorflow as tf

    for op, m, val in slot_tensors:
        m_t, val_t = m[t_index], val[t_index]
        if op == "add":
            v = v + tf.where(m_t, val_t, tf.zeros_like(val_t))
        else:
            v = tf.where(m_t, val_t, v)
    return v


def _processing_order(v, back: bool):
    """(B, T, u) in time order -> (T, B, u) in processing order."""
    from gatelens.models.cells import swap_batch_time

    return swap_batch_time(v[:, ::-1] if back else v)


def _rerun(cell_type: str, w: Any, x, mask, states, slots: dict[str, list], want_signals: bool) -> dict[str, Any]:
    """Step-by-step re-run of one direction (processing order, batch-major ``x`` (B, T, in)) in Keras's order of
    operations (:mod:`gatelens.models.cells`), each signal replaced by its slots inside the step.

    Returns ``_h_proc``, ``_c_proc`` (LSTM) batch-major in processing order and, with ``want_signals``, every
    signal of :data:`INTERVENABLE` (as intervened) batch-major in processing order.
    """
    import tensorflow as tf

    from gatelens.models.cells import swap_batch_time

    b = tf.shape(x)[0]
    t = tf.shape(x)[1]
    m = tf.ones(tf.stack([b, t]), tf.bool) if mask is None else mask
    xs = swap_batch_time(x)
    ms = swap_batch_time(m)
    idx = tf.range(t)
    ra, act = w.recurrent_activation, w.activation
    names = INTERVENABLE[cell_type]
    s = {k: slots.get(k, []) for k in names}

    def keep(m_t, new, old):
        return tf.where(m_t[:, None], new, old)

    if cell_type == "lstm":

        def step(carry, inp):
            h, c = carry[0], carry[1]
            x_t, m_t, k = inp
            z = tf.matmul(x_t, w.kernel) + tf.matmul(h, w.recurrent_kernel)
            if w.bias is not None:
                z = z + w.bias
            zi, zf, zc, zo = tf.split(z, 4, axis=-1)
            i = _apply(ra(zi), s["input_gate"], k)
            f = _apply(ra(zf), s["forget_gate"], k)
            g = _apply(act(zc), s["candidate"], k)
            o = _apply(ra(zo), s["output_gate"], k)
            c_new = _apply(f * c + i * g, s["cell_state"], k)
            h_new = _apply(o * act(c_new), s["hidden_state"], k)
            h_new, c_new = keep(m_t, h_new, h), keep(m_t, c_new, c)
            return (h_new, c_new, i, f, g, o) if want_signals else (h_new, c_new)

        init = (states[0], states[1]) + ((states[0],) * 4 if want_signals else ())
        out = tf.scan(step, (xs, ms, idx), initializer=init)
        keys = ("hidden_state", "cell_state", "input_gate", "forget_gate", "candidate", "output_gate")
    elif cell_type == "gru":
        u = w.units
        input_bias = None if w.bias is None else (w.bias[0] if w.reset_after else w.bias)
        rb = w.bias[1] if (w.bias is not None and w.reset_after) else None

        def step(carry, inp):
            h = carry[0]
            x_t, m_t, k = inp
            xw = tf.matmul(x_t, w.kernel)
            if input_bias is not None:
                xw = xw + input_bias
            x_z, x_r, x_h = tf.split(xw, 3, axis=-1)
            if w.reset_after:
                inner = tf.matmul(h, w.recurrent_kernel)
                if rb is not None:
                    inner = inner + rb
                r_z, r_r, r_h = tf.split(inner, 3, axis=-1)
            else:
                r_z, r_r = tf.split(tf.matmul(h, w.recurrent_kernel[:, : 2 * u]), 2, axis=-1)
            z = _apply(ra(x_z + r_z), s["update_gate"], k)
            r = _apply(ra(x_r + r_r), s["reset_gate"], k)
            rec_h = r * r_h if w.reset_after else tf.matmul(r * h, w.recurrent_kernel[:, 2 * u :])
            hh = _apply(act(x_h + rec_h), s["candidate"], k)
            h_new = _apply(z * h + (1 - z) * hh, s["hidden_state"], k)
            h_new = keep(m_t, h_new, h)
            return (h_new, z, r, hh) if want_signals else (h_new,)

        init = (states[0],) + ((states[0],) * 3 if want_signals else ())
        out = tf.scan(step, (xs, ms, idx), initializer=init)
        keys = ("hidden_state", "update_gate", "reset_gate", "candidate")
    else:
        a = act if act is not None else (lambda v: v)

        def step(carry, inp):
            h = carry[0]
            x_t, m_t, k = inp
            pre = tf.matmul(x_t, w.kernel)
            if w.bias is not None:
                pre = pre + w.bias
            pre = pre + tf.matmul(h, w.recurrent_kernel)
            h_new = keep(m_t, _apply(a(pre), s["hidden_state"], k), h)
            return (h_new,)

        out = tf.scan(step, (xs, ms, idx), initializer=(states[0],))
        keys = ("hidden_state",)
    res = {k: swap_batch_time(v) for k, v in zip(keys, out)}
    r = {"_h_proc": res["hidden_state"], "_c_proc": res.get("cell_state"), "_mask_proc": mask}
    if want_signals:
        r["signals"] = res
    return r


def _rnn_output(rnn, r):
    """What the Keras RNN layer ``rnn`` returns, from our re-run ``r`` of it (Keras 3 ``RNN.call`` over
    ``backend.rnn``; the same construction as the extractor's ``verify="sample"`` mode)."""
    import tensorflow as tf

    from gatelens.models import cells

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


Slot = tuple[str, str, str]  # (direction, signal, "set" | "add")


class Intervener:
    """Compiled intervened re-runs of one model (reusable across batches, inputs and interventions).

    Parameters
    ----------
    model : keras.Model
        A Sequential or functional model with one input (as :class:`gatelens.models.extract.Extractor`).
    jit_compile : bool
        Compile with XLA (falls back to graph mode when XLA fails). Default False: each new set of
        intervened signals is a new graph, and XLA's compile time dominates small runs.

    Examples
    --------
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> iv = Intervener(tiny_model())
    >>> iv.layers, iv.units("lstm"), iv.signals("lstm")[:2]
    (['lstm'], 3, ('input_gate', 'forget_gate'))
    """

    def __init__(self, model: Any, *, jit_compile: bool = False) -> None:
        from gatelens.models.extract import Extractor

        self.extractor = Extractor(model)  # layer discovery, contract names and input checks
        self.model = model
        self._dirs = {d.name: d for d in self.extractor.directions}
        self._jit = jit_compile
        self._fns: dict[tuple, Any] = {}

    @property
    def layers(self) -> list[str]:
        """Contract names of the recurrent layers (directions), in model order."""
        return list(self._dirs)

    def units(self, layer: str) -> int:
        return self._dirs[self._check_layer(layer)].info.units

    def cell_type(self, layer: str) -> str:
        return self._dirs[self._check_layer(layer)].info.cell_type

    def signals(self, layer: str) -> tuple[str, ...]:
        return INTERVENABLE[self.cell_type(layer)]

    def _check_layer(self, layer: str) -> str:
        if layer not in self._dirs:
            raise UsageError(f"layer {layer!r}: no such recurrent layer; the model has {', '.join(self._dirs)}")
        return layer

    def check(self, iv: Intervention, n_steps: int, features: Mapping[str, np.ndarray] | None = None) -> None:
        """Raise UsageError (one line naming the field) when ``iv`` does not fit this model and ``n_steps``."""
        layer = self._check_layer(iv.layer)
        sigs = self.signals(layer)
        if iv.signal not in sigs:
            raise UsageError(f"signal {iv.signal!r}: layer {layer!r} ({self.cell_type(layer)}) has {', '.join(sigs)}")
        u = self.units(layer)
        if iv.units is not None:
            bad = [k for k in iv.units if k >= u]
            if bad:
                raise UsageError(f"unit {bad[0]}: out of range for layer {layer!r} (units 0..{u - 1})")
        step_mask(iv.steps, 1, n_steps, features if iv.steps.startswith("where:") else None)

    # -- the compiled function -----------------------------------------------------------------------------------
    def _compiled(self, slots: tuple[Slot, ...], capture: tuple[str, ...]):
        key = (slots, capture)
        if key in self._fns:
            return self._fns[key]
        import tensorflow as tf
        from keras import tree

        from gatelens.models import compat
        from gatelens.models.extract import _bidirectional_output, _cell_weights, _split_states
        from gatelens.models.graph import call_with_hook

        by_layer = self.extractor._by_layer
        touched = {d for d, _, _ in slots} | set(capture)

        def fn(x, *slot_args):
            tensors: dict[str, dict[str, list]] = {}
            for j, (d, sig, op) in enumerate(slots):
                m, v = slot_args[2 * j], slot_args[2 * j + 1]
                tensors.setdefault(d, {}).setdefault(sig, []).append((op, m, v))
            captured: dict[str, dict[str, Any]] = {}

            def run_direction(d, seq, mask, init):
                xx = tf.cast(seq, tf.float32)
                b = tf.shape(xx)[0]
                u = d.info.units
                if init is not None:
                    states = [tf.cast(st, tf.float32) for st in init]
                else:
                    states = [tf.zeros(tf.stack([b, u]), tf.float32)] * (2 if d.info.cell_type == "lstm" else 1)
                back = d.info.go_backwards
                xp = tf.reverse(xx, [1]) if back else xx
                mp = None if mask is None else (tf.reverse(mask, [1]) if back else mask)
                sl = {}
                for sig, lst in tensors.get(d.name, {}).items():  # (B, T, u) in time order -> (T, B, u) processing
                    sl[sig] = [(op, _processing_order(m, back), _processing_order(v, back)) for op, m, v in lst]
                r = _rerun(d.info.cell_type, _cell_weights(d.rnn), xp, mp, states, sl, d.name in capture)
                if d.name in capture:
                    sigs = r.pop("signals")
                    captured[d.name] = {k: tf.reverse(v, [1]) if back else v for k, v in sigs.items()}
                    captured[d.name]["mask"] = tf.ones(tf.shape(xx)[:2], tf.bool) if mask is None else mask
                return r

            def hook(layer, args, kwargs, call, ctx):
                ds = by_layer.get(id(layer), [])
                if not any(d.name in touched for d in ds):
                    return call(*args, **kwargs)
                seq = args[0]
                mask = kwargs.get("mask")
                if mask is None:
                    mask = compat.get_mask(seq)  # as the extractor reads it
                if mask is not None:
                    mask = tf.cast(mask, tf.bool)
                init = kwargs.get("initial_state")
                if type(layer).__name__ == "Bidirectional":
                    rs = [run_direction(d, seq, mask, i0) for d, i0 in zip(ds, _split_states(init, 2))]
                    out = _bidirectional_output(layer, *(_rnn_output(d.rnn, r) for d, r in zip(ds, rs)))
                else:
                    out = _rnn_output(layer, run_direction(ds[0], seq, mask, init))
                out_mask = layer.compute_mask(seq, mask)
                for o, om in zip(tree.flatten(out), tree.flatten(out_mask) if out_mask is not None else []):
                    if om is not None:
                        compat.set_mask(o, om)
                return out

            y = call_with_hook(self.model, x, hook)
            return [tf.cast(o, tf.float32) for o in tree.flatten(y)], captured

        ex = self.extractor
        spec = [tf.TensorSpec((None, *ex.input_shape[1:]), ex.input_dtype)]
        for d, _, _ in slots:
            u = self._dirs[d].info.units
            spec += [tf.TensorSpec((None, None, u), tf.bool), tf.TensorSpec((None, None, u), tf.float32)]
        plain = tf.function(fn, input_signature=spec)
        compiled = tf.function(fn, input_signature=spec, jit_compile=True) if self._jit else plain
        self._fns[key] = [compiled, plain]
        return self._fns[key]

    def call(
        self, x: np.ndarray, slot_arrays: Mapping[Slot, tuple[np.ndarray, np.ndarray]], capture: Sequence[str] = ()
    ) -> tuple[list[np.ndarray], dict[str, dict[str, np.ndarray]]]:
        """One batch: model outputs (a list, float32) and the captured signals (time order) of ``capture``.

        ``slot_arrays[(direction, signal, op)] = (mask (B, T, u) bool, value (B, T, u) float32)``, ``op`` in
        ``set``/``add``; slots are applied in the mapping's order.
        """
        slots = tuple(slot_arrays)
        cap = tuple(sorted(set(capture)))
        for d in cap:
            self._check_layer(d)
        pair = self._compiled(slots, cap)
        args = [x]
        for k in slots:
            m, v = slot_arrays[k]
            args += [np.ascontiguousarray(m, bool), np.ascontiguousarray(v, np.float32)]
        try:
            outs, captured = pair[0](*args)
        except Exception as e:  # XLA cannot compile some graphs: graph mode
            if pair[0] is pair[1]:
                raise
            log.warning("XLA compilation failed (%s); falling back to graph mode", str(e).splitlines()[0][:200])
            pair[0] = pair[1]
            outs, captured = pair[1](*args)
        return [np.asarray(o) for o in outs], {d: {k: np.asarray(v) for k, v in s.items()} for d, s in captured.items()}

    # -- from interventions to slot arrays ---------------------------------------------------------------------
    def slot_arrays(
        self,
        variants: Sequence[Sequence[Intervention]],
        n: int,
        t: int,
        *,
        start: int = 0,
        features: Mapping[str, np.ndarray] | None = None,
        means: Mapping[tuple[str, str], np.ndarray] | None = None,
        sources: Mapping[tuple[str, str], np.ndarray] | None = None,
        resampled: Mapping[tuple[str, str], np.ndarray] | None = None,
    ) -> dict[Slot, tuple[np.ndarray, np.ndarray]]:
        """Masks and values for ``len(variants)`` replicas of a batch of ``n`` sequences (rows ``v * n + i``).

        ``means[(layer, signal)]`` (u,), ``sources[(layer, signal)]`` / ``resampled[...]`` (n, T, u): the
        values of ``mean``, ``patch`` and ``resample`` (from :meth:`call` with ``capture``).
        """
        k = len(variants)
        out: dict[Slot, tuple[np.ndarray, np.ndarray]] = {}
        for vi, ivs in enumerate(variants):
            rows = slice(vi * n, (vi + 1) * n)
            for iv in ivs:
                kind = "add" if iv.op == "add" else "set"
                key = (iv.layer, iv.signal, kind)
                u = self.units(iv.layer)
                if key not in out:
                    out[key] = (np.zeros((k * n, t, u), bool), np.zeros((k * n, t, u), np.float32))
                m, v = out[key]
                sel = step_mask(iv.steps, n, t, features, start)[..., None]
                cols = slice(None) if iv.units is None else list(iv.units)
                unit_sel = np.zeros(u, bool)
                unit_sel[cols] = True
                full = sel & unit_sel  # (n, t, u)
                if iv.op in ("set", "add", "zero"):
                    val = np.float32(0.0 if iv.op == "zero" else iv.value)
                elif iv.op == "mean":
                    val = means[(iv.layer, iv.signal)][None, None, :]
                elif iv.op == "patch":
                    val = sources[(iv.layer, iv.signal)]
                else:
                    val = resampled[(iv.layer, iv.signal)]
                vals = np.broadcast_to(np.asarray(val, np.float32), (n, t, u))
                if kind == "add":
                    v[rows] += np.where(full, vals, 0)
                else:
                    v[rows] = np.where(full, vals, v[rows])
                m[rows] |= full
        return out


# ---------------------------------------------------------------------------------------------------------------
# running interventions over data


@dataclass
class InterventionResult:
    """What :func:`intervene` returns.

    Attributes
    ----------
    interventions : list of Intervention
        Applied together.
    original, intervened : ndarray
        The model's output without and with the interventions (its first output for multi-output models;
        all of them in ``original_all`` / ``intervened_all``).
    trace : dict or None
        With ``return_trace``: per layer, every signal of the intervened run, (N, T, units), time order.

    Examples
    --------
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> res = intervene(tiny_model(), tiny_inputs(n=4), [clamp("lstm", 0, "forget_gate", 0), ablate("lstm", 2)],
    ...                 return_trace=True)
    >>> [iv.label for iv in res.interventions], res.original.shape, res.intervened.shape, len(res.original_all)
    (['lstm:0:forget_gate=0', 'lstm:2:hidden_state=zero'], (4, 4, 1), (4, 4, 1), 1)
    >>> sorted(res.trace["lstm"])
    ['candidate', 'cell_state', 'forget_gate', 'hidden_state', 'input_gate', 'mask', 'output_gate']
    >>> sig = res.trace["lstm"]                                   # the intervened run: unit 0 forgets, unit 2 is 0
    >>> float(abs(sig["forget_gate"][..., 0]).max()), float(abs(sig["hidden_state"][..., 2]).max())
    (0.0, 0.0)
    >>> res.to_dict()["interventions"][1]
    {'layer': 'lstm', 'signal': 'hidden_state', 'op': 'zero', 'value': None, 'units': [2], 'steps': 'all'}
    """

    interventions: list[Intervention]
    original: np.ndarray
    intervened: np.ndarray
    original_all: list[np.ndarray]
    intervened_all: list[np.ndarray]
    trace: dict[str, dict[str, np.ndarray]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The interventions as dicts (the arrays are the caller's to store)."""
        return {"interventions": [iv.to_dict() for iv in self.interventions]}


def _needs(variants: Sequence[Sequence[Intervention]], op: str) -> list[tuple[str, str]]:
    return sorted({(iv.layer, iv.signal) for ivs in variants for iv in ivs if iv.op == op})


def _resample_rows(n: int, seed: int) -> np.ndarray:
    """For each sequence i, another sequence ``(i + s) % n`` with a seeded shift ``s`` in 1..n-1."""
    if n < 2:
        raise DataError("resample needs at least 2 sequences (it takes the value from another sequence)")
    s = int(np.random.default_rng(seed).integers(1, n))
    return (np.arange(n) + s) % n


class _Runner:
    """Streams variants of interventions over ``x`` in batches (shared by intervene, sweep, knockout)."""

    def __init__(
        self,
        iv: Intervener,
        x: np.ndarray,
        variants: Sequence[Sequence[Intervention]],
        *,
        source: np.ndarray | None,
        features: Mapping[str, np.ndarray] | None,
        seed: int,
        batch_size: int,
    ) -> None:
        self.iv = iv
        self.x = iv.extractor.check_input(x)
        n, t = self.x.shape[0], self.x.shape[1]
        self.n, self.t = n, t
        self.variants = [list(v) for v in variants]
        self.features = features
        for ivs in self.variants:
            for one in ivs:
                iv.check(one, t, features)
        if features:
            for name, f in features.items():
                if np.shape(f) != (n, t):
                    raise DataError(f"feature {name!r} has shape {np.shape(f)}; expected ({n}, {t}) like the data")
        self.source = None
        if _needs(self.variants, "patch"):
            if source is None:
                raise UsageError("patch needs a source input (source=..., --source FILE)")
            src = iv.extractor.check_input(source)
            if src.shape[0] == 1 and n > 1:
                src = np.repeat(src, n, axis=0)
            if src.shape != self.x.shape:
                raise DataError(f"source has shape {src.shape}; expected {self.x.shape} (or one sequence) like x")
            self.source = src
        self.perm = _resample_rows(n, seed) if _needs(self.variants, "resample") else None
        self.batch_size = max(1, int(batch_size))
        self.means = self._means() if _needs(self.variants, "mean") else None

    def _clean(self, xb: np.ndarray, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray]:
        _, cap = self.iv.call(xb, {}, capture=[d for d, _ in pairs])
        return {(d, s): cap[d][s] for d, s in pairs}

    def _means(self) -> dict[tuple[str, str], np.ndarray]:
        """Per unit, the mean of each needed signal over every unmasked step of the data (one streamed pass)."""
        pairs = _needs(self.variants, "mean")
        sums = {p: 0.0 for p in pairs}
        counts = {p: 0 for p in pairs}
        for start in range(0, self.n, self.batch_size):
            xb = self.x[start : start + self.batch_size]
            _, cap = self.iv.call(xb, {}, capture=[d for d, _ in pairs])
            for d, s in pairs:
                valid = cap[d]["mask"]
                sums[(d, s)] = sums[(d, s)] + np.where(valid[..., None], cap[d][s], 0).sum(
                    axis=(0, 1), dtype=np.float64
                )
                counts[(d, s)] += int(valid.sum())
        return {p: (sums[p] / max(counts[p], 1)).astype(np.float32) for p in pairs}

    def batches(
        self, capture: Sequence[str] = ()
    ) -> Iterator[tuple[int, np.ndarray, list[np.ndarray], list[tuple[list[np.ndarray], dict]]]]:
        """Yield ``(start, x_batch, original outputs, [(outputs, captured signals) of each variant])``.

        A batch holds ``b = min(N, batch_size)`` sequences; each call runs ``batch_size // b`` variants of it
        side by side (at least one), so no call holds more than ``max(batch_size, b)`` rows.
        """
        k_total = len(self.variants)
        b = min(self.n, self.batch_size)
        per_call = max(1, min(k_total, self.batch_size // b))
        patch, res_pairs = _needs(self.variants, "patch"), _needs(self.variants, "resample")
        for start in range(0, self.n, b):
            xb = self.x[start : start + b]
            nb = xb.shape[0]
            original, _ = self.iv.call(xb, {})
            sources = self._clean(self.source[start : start + nb], patch) if patch else None
            resampled = self._clean(self.x[self.perm[start : start + nb]], res_pairs) if res_pairs else None
            outs: list[tuple[list[np.ndarray], dict]] = []
            for v0 in range(0, k_total, per_call):
                chunk = self.variants[v0 : v0 + per_call]
                k = len(chunk)
                arrays = self.iv.slot_arrays(
                    chunk, nb, self.t, start=0, features=_rows(self.features, start, nb), means=self.means,
                    sources=sources, resampled=resampled,
                )  # fmt: skip
                xr = np.concatenate([xb] * k, axis=0) if k > 1 else xb
                res, cap = self.iv.call(xr, arrays, capture=capture)
                for j in range(k):
                    rows = slice(j * nb, (j + 1) * nb)
                    outs.append(
                        ([o[rows] for o in res], {d: {s: a[rows] for s, a in c.items()} for d, c in cap.items()})
                    )
            yield start, xb, original, outs


def _rows(features: Mapping[str, np.ndarray] | None, start: int, n: int) -> dict[str, np.ndarray] | None:
    return None if not features else {k: np.asarray(v)[start : start + n] for k, v in features.items()}


def intervene(
    model: Any,
    x: Any,
    interventions: Intervention | str | Sequence[Intervention | str],
    *,
    source: Any = None,
    features: Mapping[str, np.ndarray] | None = None,
    batch_size: int = 256,
    return_trace: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
) -> InterventionResult:
    """Run ``model`` on ``x`` with ``interventions`` applied together; the original and intervened outputs.

    Parameters
    ----------
    model : keras.Model or Intervener
    x : array (N, T, F) float, or (N, T) int token ids
    interventions : Intervention, ``--do`` string, or a list of them (applied together)
    source : array like ``x`` (or one sequence), optional
        The input ``patch`` takes its values from (the same step of the same sequence).
    features : dict of name -> (N, T) array, optional
        For ``steps="where:NAME"``: the steps where the feature is non-zero.
    batch_size : int
    return_trace : bool
        Also return every signal of the intervened run of the intervened layers (N, T, units).
    seed : int
        Picks the other sequence for ``resample``.
    progress : callable(done, total), optional

    Returns
    -------
    InterventionResult

    Examples
    --------
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> model, x = tiny_model(), tiny_inputs()
    >>> res = intervene(model, x, "lstm:all:output_gate=0")   # read nothing: h = 0, the output is the bias
    >>> import numpy as np
    >>> bool(np.allclose(res.intervened, model.get_layer("head").bias.numpy()))
    True
    >>> bool(np.allclose(res.original, model.predict(x, verbose=0), atol=1e-6))
    True
    """
    iv = model if isinstance(model, Intervener) else Intervener(model)
    ivs = _as_list(interventions)
    runner = _Runner(iv, np.asarray(x), [ivs], source=source, features=features, seed=seed, batch_size=batch_size)
    originals: list[list[np.ndarray]] = []
    intervened: list[list[np.ndarray]] = []
    traces: list[dict[str, dict[str, np.ndarray]]] = []
    layers = sorted({one.layer for one in ivs}) if return_trace else []
    for start, xb, orig, outs in runner.batches(capture=layers):
        originals.append(orig)
        intervened.append(outs[0][0])
        traces.append(outs[0][1])
        if progress is not None:
            progress(start + xb.shape[0], runner.n)
    orig_all = [np.concatenate([b[j] for b in originals]) for j in range(len(originals[0]))]
    int_all = [np.concatenate([b[j] for b in intervened]) for j in range(len(intervened[0]))]
    trace = None
    if return_trace:
        trace = {d: {s: np.concatenate([c[d][s] for c in traces]) for s in traces[0][d]} for d in layers}
    return InterventionResult(ivs, orig_all[0], int_all[0], orig_all, int_all, trace)


def _as_list(interventions: Any) -> list[Intervention]:
    if isinstance(interventions, (Intervention, str)):
        interventions = [interventions]
    out = [Intervention.parse(i) if isinstance(i, str) else i for i in interventions]
    if not out:
        raise UsageError("interventions: none given")
    for i in out:
        if not isinstance(i, Intervention):
            raise UsageError(f"interventions: expected Intervention records or --do strings, got {type(i).__name__}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# effects over many variants, streamed: sweeps, knock-out tables, ranking checks


def resolve_targets(targets: Any, x: np.ndarray) -> np.ndarray | None:
    """``"next_token"`` -> the next token id at every step (``-1`` at the last); arrays pass through."""
    if targets is None:
        return None
    if isinstance(targets, str):
        if targets not in ("next_token", "next-token"):
            raise UsageError(f"targets {targets!r}: expected an array, a file, or 'next_token'")
        x = np.asarray(x)
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
            raise UsageError("targets 'next_token' need a text model (integer token ids of shape (N, T))")
        return np.concatenate([x[:, 1:], np.full((x.shape[0], 1), -1)], axis=1).astype(np.int64)
    return np.asarray(targets)


@dataclass
class VariantEffects:
    """Per variant and metric, per-sequence values (N,) of the metric without/with the variant and the effect."""

    variants: list[list[Intervention]]
    metrics: list[str]
    original: dict[str, np.ndarray]  # metric -> (N,)  (the same for every variant)
    intervened: dict[str, np.ndarray]  # metric -> (V, N)
    effect: dict[str, np.ndarray]  # metric -> (V, N)

    def summary(self, *, n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
        """One row per (variant, metric): see :func:`gatelens.analysis.effects.summary_row`."""
        from gatelens.analysis.effects import summary_row

        rows = []
        for v in range(len(self.variants)):
            for m in self.metrics:
                row = summary_row(self.original[m], self.intervened[m][v], self.effect[m][v], n_boot=n_boot, seed=seed)
                rows.append({"variant": v, "metric": m, **row})
        return rows


StepsCallback = Callable[[int, int, str, dict[str, np.ndarray]], None]


def evaluate(
    model: Any,
    x: Any,
    variants: Sequence[Sequence[Intervention | str]],
    *,
    targets: Any = None,
    metrics: Sequence[str] | None = None,
    class_id: int | None = None,
    contrast: int | None = None,
    source: Any = None,
    features: Mapping[str, np.ndarray] | None = None,
    batch_size: int = 256,
    seed: int = 0,
    progress: Progress | None = None,
    on_steps: StepsCallback | None = None,
) -> VariantEffects:
    """Streamed effects of each variant (a list of interventions applied together) on ``x``.

    Only per-sequence values are kept (V x N per metric); per-step effects go to ``on_steps(variant, start,
    metric, {"original", "intervened", "effect"})`` batch by batch when given (the CLI writes them to a CSV).
    ``progress(done, total)`` counts forward passes over batches.

    Examples
    --------
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> model, x = tiny_model(), tiny_inputs(n=4)
    >>> ve = evaluate(model, x, [["lstm:0:hidden_state=zero"], ["lstm:all:output_gate=0"]])
    >>> ve.metrics, ve.original["output_change"].tolist(), ve.effect["output_change"].shape   # (variants, sequences)
    (['output_change'], [0.0, 0.0, 0.0, 0.0], (2, 4))
    >>> [(r["variant"], round(r["effect"], 3), r["n_sequences"]) for r in ve.summary(n_boot=50)]
    [(0, 0.041, 4), (1, 0.186, 4)]
    >>> evaluate(model, x, [["lstm:all:output_gate=0"]], targets=np.zeros((4, 4, 1))).metrics   # float targets
    ['mse']
    """
    from gatelens.analysis.effects import default_metrics, per_sequence, step_effects

    iv = model if isinstance(model, Intervener) else Intervener(model)
    vs = [_as_list(v) for v in variants]
    if not vs:
        raise UsageError("variants: none given")
    x = iv.extractor.check_input(x)
    tg = resolve_targets(targets, x)
    if tg is not None and tg.shape[0] != x.shape[0]:
        raise DataError(f"targets have {tg.shape[0]} sequences; the data has {x.shape[0]}")
    ms = list(metrics) if metrics else default_metrics(tg)
    n = x.shape[0]
    original = {m: np.full(n, np.nan) for m in ms}
    inter = {m: np.full((len(vs), n), np.nan) for m in ms}
    eff = {m: np.full((len(vs), n), np.nan) for m in ms}
    runner = _Runner(iv, x, vs, source=source, features=features, seed=seed, batch_size=batch_size)
    done = 0
    for start, xb, orig, outs in runner.batches():
        nb = xb.shape[0]
        tb = None if tg is None else tg[start : start + nb]
        for v, (res, _) in enumerate(outs):
            for m in ms:
                e = step_effects(orig[0], res[0], m, tb, class_id=class_id, contrast=contrast)
                if v == 0:
                    original[m][start : start + nb] = per_sequence(e["original"])
                inter[m][v, start : start + nb] = per_sequence(e["intervened"])
                eff[m][v, start : start + nb] = per_sequence(e["effect"])
                if on_steps is not None:
                    on_steps(v, start, m, e)
        done += nb
        if progress is not None:
            progress(done, n)
    return VariantEffects(vs, ms, original, inter, eff)


def _frame(rows: list[dict[str, Any]]):
    import pandas as pd

    return pd.DataFrame(rows)


def sweep(
    model: Any,
    x: Any,
    layer: str,
    *,
    op: str = "zero",
    signal: str = "hidden_state",
    value: float | None = None,
    units: Sequence[int] | None = None,
    steps: str = "all",
    targets: Any = None,
    metrics: Sequence[str] | None = None,
    batch_size: int = 256,
    n_boot: int = 1000,
    seed: int = 0,
    source: Any = None,
    features: Mapping[str, np.ndarray] | None = None,
    progress: Progress | None = None,
):
    """Single-unit interventions over every unit of ``layer`` (or ``units``), ranked by effect.

    Returns
    -------
    pandas.DataFrame
        ``layer, unit, signal, op, value, steps, metric, original, intervened, effect, ci_low, ci_high,
        n_sequences, rank`` (rank 1 = the largest ``|effect|`` per metric), sorted by metric and rank.

    Examples
    --------
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> df = sweep(tiny_model(), tiny_inputs(n=4), "lstm", n_boot=50)
    >>> df[["unit", "metric", "rank"]].shape, sorted(df["rank"].tolist())
    ((3, 3), [1, 2, 3])
    """
    from gatelens.analysis.effects import rank_by_effect

    iv = model if isinstance(model, Intervener) else Intervener(model)
    iv._check_layer(layer)
    unit_list = list(range(iv.units(layer))) if units is None else [int(u) for u in units]
    variants = [[Intervention(layer, signal, op, value, (u,), steps)] for u in unit_list]
    res = evaluate(
        iv, x, variants, targets=targets, metrics=metrics, batch_size=batch_size, seed=seed, source=source,
        features=features, progress=progress,
    )  # fmt: skip
    rows = []
    for row in res.summary(n_boot=n_boot, seed=seed):
        one = res.variants[row.pop("variant")][0]
        rows.append(
            {"layer": layer, "unit": one.units[0], "signal": signal, "op": op, "value": value, "steps": steps, **row}
        )
    df = rank_by_effect(_frame(rows))
    return df.sort_values(["metric", "rank", "unit"], kind="stable").reset_index(drop=True)


def knockout(
    model: Any,
    x: Any,
    layer: str,
    *,
    units: Sequence[int] | None = None,
    targets: Any = None,
    metrics: Sequence[str] | None = None,
    batch_size: int = 256,
    n_boot: int = 1000,
    seed: int = 0,
    progress: Progress | None = None,
):
    """The gate knock-out table: each gate of each unit clamped shut (0) and open (1), all steps.

    Returns a DataFrame ``layer, unit, gate, value, metric, original, intervened, effect, ci_low, ci_high,
    n_sequences, rank`` (rank over the whole table per metric).

    Examples
    --------
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> t = knockout(tiny_model("gru"), tiny_inputs(n=3), "gru", n_boot=20)
    >>> len(t), sorted(t["gate"].unique())
    (12, ['reset_gate', 'update_gate'])
    """
    from gatelens.analysis.effects import rank_by_effect

    iv = model if isinstance(model, Intervener) else Intervener(model)
    iv._check_layer(layer)
    gates = [s for s in iv.signals(layer) if s.endswith("_gate")]
    unit_list = list(range(iv.units(layer))) if units is None else [int(u) for u in units]
    keys = [(u, g, v) for u in unit_list for g in gates for v in (0.0, 1.0)]
    variants = [[Intervention(layer, g, "set", v, (u,))] for u, g, v in keys]
    res = evaluate(
        iv, x, variants, targets=targets, metrics=metrics, batch_size=batch_size, seed=seed, progress=progress
    )
    rows = []
    for row in res.summary(n_boot=n_boot, seed=seed):
        u, g, v = keys[row.pop("variant")]
        rows.append({"layer": layer, "unit": u, "gate": g, "value": v, **row})
    df = rank_by_effect(_frame(rows))
    return df.sort_values(["metric", "unit", "gate", "value"], kind="stable").reset_index(drop=True)


def ranking_check(
    model: Any,
    x: Any,
    layer: str,
    ranking: Sequence[int],
    ks: Sequence[int],
    *,
    op: str = "zero",
    signal: str = "hidden_state",
    n_random: int = 5,
    targets: Any = None,
    metrics: Sequence[str] | None = None,
    batch_size: int = 256,
    n_boot: int = 1000,
    seed: int = 0,
    progress: Progress | None = None,
):
    """The check of a ranking by causality: ablate its top k units, k random units and its bottom k, for each k.

    ``ranking``: units best first (e.g. by |correlation| or probe weight). Random-k draws ``n_random`` sets
    per k (seeded); their per-sequence effects are averaged before the bootstrap.

    Returns a DataFrame ``k, selection (top/random/bottom), units, metric, original, intervened, effect,
    ci_low, ci_high, n_sequences``.

    Examples
    --------
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> c = ranking_check(tiny_model(), tiny_inputs(n=3), "lstm", [2, 0, 1], [1, 3], n_random=2, n_boot=20)
    >>> c[["k", "selection"]].values.tolist()[:3]
    [[1, 'top'], [1, 'random'], [1, 'bottom']]
    """
    from gatelens.analysis.effects import summary_row

    iv = model if isinstance(model, Intervener) else Intervener(model)
    iv._check_layer(layer)
    rank = [int(u) for u in ranking]
    u_all = iv.units(layer)
    if len(set(rank)) != len(rank) or any(not 0 <= u < u_all for u in rank):
        raise UsageError(f"ranking: expected distinct units of layer {layer!r} in 0..{u_all - 1}")
    rng = np.random.default_rng(seed)
    sets: list[tuple[int, str, tuple[int, ...]]] = []
    for k in ks:
        if not 1 <= int(k) <= len(rank):
            raise UsageError(f"k {k}: expected 1..{len(rank)} (the ranking's length)")
        k = int(k)
        sets.append((k, "top", tuple(rank[:k])))
        for _ in range(n_random):
            sets.append((k, "random", tuple(int(u) for u in rng.choice(rank, k, replace=False))))
        sets.append((k, "bottom", tuple(rank[-k:])))
    variants = [[Intervention(layer, signal, op, None, units)] for _, _, units in sets]
    res = evaluate(
        iv, x, variants, targets=targets, metrics=metrics, batch_size=batch_size, seed=seed, progress=progress
    )
    rows = []
    for k in dict.fromkeys(int(k) for k in ks):
        for sel in ("top", "random", "bottom"):
            idx = [i for i, (kk, s, _) in enumerate(sets) if kk == k and s == sel]
            for m in res.metrics:
                inter = np.nanmean(res.intervened[m][idx], axis=0)
                eff = np.nanmean(res.effect[m][idx], axis=0)
                row = summary_row(res.original[m], inter, eff, n_boot=n_boot, seed=seed)
                units = ";".join(",".join(map(str, sets[i][2])) for i in idx)
                rows.append({"k": k, "selection": sel, "units": units, "metric": m, **row})
    return _frame(rows)
