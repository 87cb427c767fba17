"""The cell equations, written once, vectorised over batch and time (TensorFlow ops).

Each function takes a layer's weights and the sequence the layer received (in *processing*
order: reversed for ``go_backwards``) and returns every signal, ``(B, T, units)``.

Two ways to get the previous hidden state ``h_{t-1}``:

* ``h_ref=None`` -- *free-running*: a scan over time with our own state (the re-run proper);
* ``h_ref`` given -- *teacher-forced*: ``h_{t-1}`` is taken from the layer's own Keras output, so
  all gates of all steps come from one batched matrix product. Only the LSTM cell state, a
  linear recurrence, still needs a (cheap, element-wise) scan. The recomputed hidden state is
  then compared with Keras's output exactly as in the free-running case. For the LSTM this
  path's matrix product runs in float64 (from the float32 weights, inputs and Keras states) and
  is rounded once, and the cell state is the float64 recurrence of the gates *as they will be
  stored*, so the exact decompositions of :mod:`gatelens.analysis.decompose` sum back to the stored
  float32 signals to their own rounding (a float32 product over 100-200 terms is off by several
  units in the last place at large pre-activations, and a float32 cell state accumulates them
  over long memories). GRU and SimpleRNN stay in float32: their hidden state is the activation
  of the pre-activation itself, so an exact value would differ from Keras's own float32 rounding
  by up to ~1e-5 at saturating weights, the verification's scale. The free-running path stays in
  float32, in Keras's own order of operations, because it is compared step by step with Keras.

Equations (Keras 3, ``keras/src/layers/rnn/{lstm,gru,simple_rnn}.py``):

* LSTM: ``z = x W + h U + b``; ``i, f, o = ra(z_i), ra(z_f), ra(z_o)``; ``g = a(z_c)``;
  ``c = f c_{t-1} + i g``; ``h = o a(c)``.
* GRU: ``z = ra(x W_z + b_z + h U_z [+ rb_z])``, ``r`` likewise; candidate
  ``hh = a(x W_h + b_h + r * (h U_h + rb_h))`` (``reset_after``) or ``a(x W_h + b_h + (r h) U_h)``;
  ``h = z h_{t-1} + (1 - z) hh``.
* SimpleRNN: ``h = a(x W + b + h U)``.

Masked steps carry the state unchanged.

Free-running results stay time-major, (T, B, units) as ``tf.scan`` stacks them, and an LSTM's four
pre-activations stay stacked: transposing ten signals inside the compiled function cost more than the
recurrence itself at 512 units; the caller presents them batch-major as NumPy views (no copy).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import tensorflow as tf


@dataclass
class CellWeights:
    """A cell's parameters and activations, read from a Keras layer (never modified)."""

    cell_type: str
    units: int
    kernel: Any
    recurrent_kernel: Any
    bias: Any  # None when use_bias=False
    activation: Any
    recurrent_activation: Any  # None for SimpleRNN
    reset_after: bool = False


def _f64(t: tf.Tensor) -> tf.Tensor:
    return tf.cast(t, tf.float64)


def _float64(w: CellWeights) -> CellWeights:
    """The same cell with float64 weights (activations are dtype-generic)."""
    return replace(
        w,
        kernel=_f64(w.kernel),
        recurrent_kernel=_f64(w.recurrent_kernel),
        bias=None if w.bias is None else _f64(w.bias),
    )


def _split(z: tf.Tensor, k: int) -> list[tf.Tensor]:
    return tf.split(z, k, axis=-1)


def _carry(mask_t: tf.Tensor | None, new: tf.Tensor, old: tf.Tensor) -> tf.Tensor:
    return new if mask_t is None else tf.where(mask_t[..., None], new, old)


def previous_states(h: tf.Tensor, mask: tf.Tensor | None, h0: tf.Tensor) -> tf.Tensor:
    """``h_{t-1}`` for every step from a hidden sequence ``h`` (B, T, u) in processing order.

    Masked steps carry the state, so ``h_{t-1}`` is the output of the last unmasked step
    before ``t`` (``h0`` when there is none). Vectorised: a log-depth running maximum of indices.
    """
    t = tf.shape(h)[1]
    if mask is None:
        return tf.concat([h0[:, None, :], h[:, :-1]], axis=1)
    idx = tf.range(t)[None, :]
    last = tf.where(mask, idx, -1)
    if h.shape[1] is None:  # unknown length: a running maximum over time by scan
        last = tf.transpose(tf.scan(tf.maximum, tf.transpose(last)))
    else:  # Hillis-Steele running maximum: ceil(log2 T) element-wise steps
        shift = 1
        while shift < h.shape[1]:
            padded = tf.pad(last, [[0, 0], [shift, 0]], constant_values=-1)[:, :-shift]
            last = tf.maximum(last, padded)
            shift *= 2
    prev = tf.pad(last, [[0, 0], [1, 0]], constant_values=-1)[:, :-1]  # last unmasked index < t
    gathered = tf.gather(h, tf.maximum(prev, 0), batch_dims=1)
    return tf.where((prev >= 0)[..., None], gathered, h0[:, None, :])


def swap_batch_time(t: tf.Tensor) -> tf.Tensor:
    """(B, T, ...) <-> (T, B, ...)."""
    return tf.experimental.numpy.swapaxes(t, 0, 1)


def _scan_time(fn, elems, initializer, *, time_major_in: bool = False, time_major_out: bool = False):
    """tf.scan over the time axis: axis 1 of batch-major tensors (axis 0 with ``time_major_in``); returns
    batch-major outputs, or time-major ones (T, B, ...) as the scan stacks them with ``time_major_out``."""
    out = tf.scan(
        fn, elems if time_major_in else tf.nest.map_structure(swap_batch_time, elems), initializer=initializer
    )
    return out if time_major_out else tf.nest.map_structure(swap_batch_time, out)


def run_lstm(
    w: CellWeights,
    x: tf.Tensor,
    mask: tf.Tensor | None,
    h0: tf.Tensor,
    c0: tf.Tensor,
    h_ref: tf.Tensor | None = None,
    *,
    exact_cell_state: bool = True,
) -> dict[str, tf.Tensor]:
    """All LSTM signals for ``x`` (B, T, in) in processing order.

    ``exact_cell_state``: store the cell state as the float64 recurrence of the gates as stored (always
    so when teacher-forced); False keeps the free-running scan's own float32 state, Keras's value.
    Free-running (``h_ref=None``), the signals are time-major (T, B, units) as the scan stacks them and
    the four pre-activations come as one stacked ``preactivations`` (T, B, 4 units) in gate order i, f, c, o;
    teacher-forced, each signal is (B, T, units).
    """
    m = tf.ones(tf.shape(x)[:2], tf.bool) if mask is None else mask
    if h_ref is None:
        # Free-running: the per-step operations in Keras's own order, so round-off matches step by step
        # (a hoisted input projection would differ in the last bit, which chaotic weights amplify).

        def step(carry, inp):
            h, c, _ = carry
            x_t, m_t = inp
            z = tf.matmul(x_t, w.kernel) + tf.matmul(h, w.recurrent_kernel)
            if w.bias is not None:
                z = z + w.bias
            zi, zf, zc, zo = _split(z, 4)
            c_new = w.recurrent_activation(zf) * c + w.recurrent_activation(zi) * w.activation(zc)
            h_new = w.recurrent_activation(zo) * w.activation(c_new)
            return _carry(m_t, h_new, h), _carry(m_t, c_new, c), z

        z0 = tf.zeros(tf.concat([tf.shape(x)[:1], tf.shape(w.kernel)[1:]], 0), x.dtype)
        h, c, z = _scan_time(step, (x, m), (h0, c0, z0), time_major_out=True)
    else:  # teacher-forced: the matrix product in float64, rounded once (see module docstring)
        w64 = _float64(w)
        h_prev = previous_states(h_ref, mask, h0)
        z = tf.einsum("bti,ij->btj", _f64(x), w64.kernel) + tf.einsum("btu,uj->btj", _f64(h_prev), w64.recurrent_kernel)
        if w64.bias is not None:
            z = z + w64.bias
        z = tf.cast(z, x.dtype)  # the stored pre-activations; the gates are their float32 activations
    zi, zf, zc, zo = _split(z, 4)
    i, f, g, o = (w.recurrent_activation(zi), w.recurrent_activation(zf), w.activation(zc), w.recurrent_activation(zo))
    extra = {}
    if h_ref is None:
        extra["_cell_state_carried"] = c  # the float32 state Keras itself carries (final states, outputs)

    if h_ref is not None or exact_cell_state:
        # The stored cell state is the recurrence of the gates *as stored* (float32), run in float64: then
        # c_t = f_t c_{t-1} + i_t g_t holds for the stored values to the rounding of c itself.
        def cstep(c, inp):
            f_t, ig_t, m_t = inp
            return _carry(m_t, f_t * c + ig_t, c)

        tm = h_ref is None  # free-running gates are time-major: scan them as they are
        elems = (_f64(f), _f64(i) * _f64(g), swap_batch_time(m) if tm else m)
        c = tf.cast(_scan_time(cstep, elems, _f64(c0), time_major_in=tm, time_major_out=tm), x.dtype)
    gates = {"input_gate": i, "forget_gate": f, "candidate": g, "output_gate": o, "cell_state": c}
    if h_ref is None:
        return {**extra, **gates, "hidden_state": h, "preactivations": z}
    h = tf.where(m[..., None], o * w.activation(c), h_prev)
    return {
        **gates,
        "hidden_state": h,
        "input_gate_pre": zi,
        "forget_gate_pre": zf,
        "candidate_pre": zc,
        "output_gate_pre": zo,
    }


def _gru_parts(w: CellWeights, xw: tf.Tensor, h_prev: tf.Tensor):
    """GRU gates from input projections ``xw`` (bias included) and previous states (any leading dims)."""
    u = w.units
    rk = w.recurrent_kernel
    rb = None
    if w.bias is not None and w.reset_after:
        rb = w.bias[1]
    x_z, x_r, x_h = _split(xw, 3)
    if w.reset_after:
        inner = tf.tensordot(h_prev, rk, axes=[[h_prev.shape.rank - 1], [0]])
        if rb is not None:
            inner = inner + rb
        r_z, r_r, r_h = _split(inner, 3)
    else:
        inner = tf.tensordot(h_prev, rk[:, : 2 * u], axes=[[h_prev.shape.rank - 1], [0]])
        r_z, r_r = _split(inner, 2)
    z_pre = x_z + r_z
    r_pre = x_r + r_r
    z = w.recurrent_activation(z_pre)
    r = w.recurrent_activation(r_pre)
    if w.reset_after:
        rec_h = r * r_h
    else:
        rec_h = tf.tensordot(r * h_prev, rk[:, 2 * u :], axes=[[h_prev.shape.rank - 1], [0]])
    hh_pre = x_h + rec_h
    hh = w.activation(hh_pre)
    h = z * h_prev + (1 - z) * hh
    return z, r, hh, h, z_pre, r_pre, hh_pre


def run_gru(
    w: CellWeights, x: tf.Tensor, mask: tf.Tensor | None, h0: tf.Tensor, h_ref: tf.Tensor | None = None
) -> dict[str, tf.Tensor]:
    """All GRU signals for ``x`` (B, T, in) in processing order; time-major (T, B, units) when free-running."""
    input_bias = None if w.bias is None else (w.bias[0] if w.reset_after else w.bias)

    def project(inputs):  # Keras: matrix_x = inputs @ kernel + input_bias
        xw = tf.tensordot(inputs, w.kernel, axes=[[inputs.shape.rank - 1], [0]])
        return xw if input_bias is None else xw + input_bias

    m = tf.ones(tf.shape(x)[:2], tf.bool) if mask is None else mask
    if h_ref is None:  # free-running, per step in Keras's order (see run_lstm)

        def step(carry, inp):
            h, *_ = carry
            x_t, m_t = inp
            z, r, hh, h_new, z_pre, r_pre, hh_pre = _gru_parts(w, project(x_t), h)
            return (_carry(m_t, h_new, h), z_pre, r_pre, hh_pre)

        zeros = tf.zeros_like(h0)
        h, z_pre, r_pre, hh_pre = _scan_time(step, (x, m), (h0, zeros, zeros, zeros), time_major_out=True)
        z, r, hh = (w.recurrent_activation(z_pre), w.recurrent_activation(r_pre), w.activation(hh_pre))
    else:
        h_prev = previous_states(h_ref, mask, h0)
        z, r, hh, h, z_pre, r_pre, hh_pre = _gru_parts(w, project(x), h_prev)
        h = tf.where(m[..., None], h, h_prev)
    return {
        "update_gate": z,
        "reset_gate": r,
        "candidate": hh,
        "hidden_state": h,
        "update_gate_pre": z_pre,
        "reset_gate_pre": r_pre,
        "candidate_pre": hh_pre,
    }


def run_simple_rnn(
    w: CellWeights, x: tf.Tensor, mask: tf.Tensor | None, h0: tf.Tensor, h_ref: tf.Tensor | None = None
) -> dict[str, tf.Tensor]:
    """SimpleRNN hidden state and pre-activation for ``x`` (B, T, in) in processing order; time-major (T, B,
    units) when free-running."""

    def project(inputs):  # Keras: h = inputs @ kernel + bias
        xw = tf.tensordot(inputs, w.kernel, axes=[[inputs.shape.rank - 1], [0]])
        return xw if w.bias is None else xw + w.bias

    m = tf.ones(tf.shape(x)[:2], tf.bool) if mask is None else mask
    act = w.activation if w.activation is not None else (lambda v: v)
    if h_ref is None:  # free-running, per step in Keras's order (see run_lstm)

        def step(carry, inp):
            h, _ = carry
            x_t, m_t = inp
            pre = project(x_t) + tf.matmul(h, w.recurrent_kernel)
            return _carry(m_t, act(pre), h), pre

        h, pre = _scan_time(step, (x, m), (h0, tf.zeros_like(h0)), time_major_out=True)
    else:
        h_prev = previous_states(h_ref, mask, h0)
        pre = project(x) + tf.einsum("btu,uj->btj", h_prev, w.recurrent_kernel)
        h = tf.where(m[..., None], act(pre), h_prev)
    return {"hidden_state": h, "hidden_state_pre": pre}
