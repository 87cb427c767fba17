"""The cell equations, written once, vectorised over batch and time (TensorFlow ops, float32).

Each ``run_*`` function takes a layer's weights and the sequence the layer received (batch-major
``(B, T, in)``, in *processing* order: reversed for ``go_backwards``) and returns every signal in one
form, whatever the mode: a dict of **time-major** ``(T, B, units)`` tensors in processing order (as
``tf.scan`` stacks them: transposing ten signals inside the compiled function cost more than the
recurrence itself at 512 units; the caller presents them batch-major as NumPy views), with the
pre-activations stacked as one ``preactivations`` ``(T, B, k units)`` tensor in Keras's block order
(:data:`gatelens.analysis.signals.WEIGHT_BLOCKS`).

Two ways to get the previous hidden state ``h_{t-1}``:

* ``h_ref=None`` -- *free-running*: a scan over time with our own state (the re-run proper). The input
  projection of all steps is one matrix product hoisted out of the loop; inside it, the operations
  follow Keras's own order (``x W``, then ``+ h U``, then ``+ b``), so round-off matches Keras's step
  by step.
* ``h_ref`` given -- *teacher-forced*: ``h_{t-1}`` is the layer's own Keras output, so all gates of all
  steps come from one batched matrix product; the LSTM cell state, a linear recurrence, is then a
  cheap element-wise scan.

Everything is float32, as Keras computes it: the decompositions of :mod:`gatelens.analysis.decompose`
hold for the stored signals to float32 round-off (``1e-5 * max(1, sum |parts|)``).

Equations (Keras 3, ``keras/src/layers/rnn/{lstm,gru,simple_rnn}.py``):

* LSTM: ``z = x W + h U + b``; ``i, f, o = ra(z_i), ra(z_f), ra(z_o)``; ``g = a(z_c)``;
  ``c = f c_{t-1} + i g``; ``h = o a(c)``.
* GRU: ``z = ra(x W_z + b_z + h U_z [+ rb_z])``, ``r`` likewise; candidate
  ``hh = a(x W_h + b_h + r * (h U_h + rb_h))`` (``reset_after``) or ``a(x W_h + b_h + (r h) U_h)``;
  ``h = z h_{t-1} + (1 - z) hh``.
* SimpleRNN: ``h = a(x W + b + h U)``.

Masked steps carry the state unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace  # noqa: F401  (replace: tests derive altered cells from a real one)
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


def _split(z: tf.Tensor, k: int) -> list[tf.Tensor]:
    return tf.split(z, k, axis=-1)


def _carry(mask_t: tf.Tensor | None, new: tf.Tensor, old: tf.Tensor) -> tf.Tensor:
    return new if mask_t is None else tf.where(mask_t[..., None], new, old)


def _matmul_last(a: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """``a @ w`` over the last axis of ``a`` (any leading dims)."""
    return tf.tensordot(a, w, axes=[[a.shape.rank - 1], [0]])


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
    """(B, T, ...) <-> (T, B, ...).

    A bool tensor (a mask) is moved as float32, by a select (Grappler's arithmetic optimizer moves a cast behind the
    transpose): TensorFlow's oneDNN transpose has no bool kernel without AVX-512 and logs an ERROR line on stderr for
    one ("oneDNN supports DT_BOOL only on platforms with AVX-512").
    """
    if t.dtype == tf.bool:
        return tf.experimental.numpy.swapaxes(tf.where(t, 1.0, 0.0), 0, 1) > 0.5
    return tf.experimental.numpy.swapaxes(t, 0, 1)


def shift_in_time(h_tm: tf.Tensor, h0: tf.Tensor) -> tf.Tensor:
    """``h_{t-1}`` for every step of a time-major state sequence that already carries over masked steps."""
    return tf.concat([h0[None], h_tm[:-1]], axis=0)


def _time_major_mask(x: tf.Tensor, mask: tf.Tensor | None) -> tf.Tensor:
    if mask is None:
        return tf.ones(tf.stack([tf.shape(x)[1], tf.shape(x)[0]]), tf.bool)
    return swap_batch_time(mask)


# -- LSTM -------------------------------------------------------------------------------------------------------


def lstm_gates(w: CellWeights, z: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """``i, f, g, o`` from the stacked pre-activations ``z`` (Keras's block order i, f, c, o)."""
    zi, zf, zc, zo = _split(z, 4)
    ra = w.recurrent_activation
    return ra(zi), ra(zf), w.activation(zc), ra(zo)


def lstm_cell_state(f: tf.Tensor, i: tf.Tensor, g: tf.Tensor, c_prev: tf.Tensor) -> tf.Tensor:
    """``c_t = f c_{t-1} + i g`` in Keras's order of operations."""
    return f * c_prev + i * g


def _lstm_z(w: CellWeights, xw: tf.Tensor, h_prev: tf.Tensor) -> tf.Tensor:
    """Keras's order: ``z = x W``; ``z += h U``; ``z += b`` (``xw`` is the hoisted ``x W``)."""
    z = xw + _matmul_last(h_prev, w.recurrent_kernel)
    return z if w.bias is None else z + w.bias


def run_lstm(
    w: CellWeights,
    x: tf.Tensor,
    mask: tf.Tensor | None,
    h0: tf.Tensor,
    c0: tf.Tensor,
    h_ref: tf.Tensor | None = None,
) -> dict[str, tf.Tensor]:
    """All LSTM signals for ``x`` (B, T, in) in processing order, time-major (see the module docstring)."""
    m = _time_major_mask(x, mask)
    xw = _matmul_last(swap_batch_time(x), w.kernel)  # (T, B, 4u): the input projection of every step at once
    if h_ref is None:

        def step(carry, inp):
            h, c, _ = carry
            xw_t, m_t = inp
            z = _lstm_z(w, xw_t, h)
            i, f, g, o = lstm_gates(w, z)
            c_new = lstm_cell_state(f, i, g, c)
            h_new = o * w.activation(c_new)
            return _carry(m_t, h_new, h), _carry(m_t, c_new, c), z

        h, c, z = tf.scan(step, (xw, m), initializer=(h0, c0, tf.zeros_like(xw[0])))
        i, f, g, o = lstm_gates(w, z)
    else:
        h_prev = swap_batch_time(previous_states(h_ref, mask, h0))
        z = _lstm_z(w, xw, h_prev)
        i, f, g, o = lstm_gates(w, z)

        def cstep(c, inp):
            f_t, i_t, g_t, m_t = inp
            return _carry(m_t, lstm_cell_state(f_t, i_t, g_t, c), c)

        c = tf.scan(cstep, (f, i, g, m), initializer=c0)
        h = tf.where(m[..., None], o * w.activation(c), h_prev)
    return {
        "input_gate": i,
        "forget_gate": f,
        "candidate": g,
        "output_gate": o,
        "cell_state": c,
        "hidden_state": h,
        "preactivations": z,
    }


# -- GRU --------------------------------------------------------------------------------------------------------


def _gru_parts(w: CellWeights, xw: tf.Tensor, h_prev: tf.Tensor):
    """GRU gates from input projections ``xw`` (bias included) and previous states (any leading dims)."""
    u = w.units
    rk = w.recurrent_kernel
    rb = None
    if w.bias is not None and w.reset_after:
        rb = w.bias[1]
    x_z, x_r, x_h = _split(xw, 3)
    if w.reset_after:
        inner = _matmul_last(h_prev, rk)
        if rb is not None:
            inner = inner + rb
        r_z, r_r, r_h = _split(inner, 3)
    else:
        inner = _matmul_last(h_prev, rk[:, : 2 * u])
        r_z, r_r = _split(inner, 2)
    z_pre = x_z + r_z
    r_pre = x_r + r_r
    z = w.recurrent_activation(z_pre)
    r = w.recurrent_activation(r_pre)
    if w.reset_after:
        rec_h = r * r_h
    else:
        rec_h = _matmul_last(r * h_prev, rk[:, 2 * u :])
    hh_pre = x_h + rec_h
    hh = w.activation(hh_pre)
    h = z * h_prev + (1 - z) * hh
    return z, r, hh, h, tf.concat([z_pre, r_pre, hh_pre], axis=-1)


def run_gru(
    w: CellWeights, x: tf.Tensor, mask: tf.Tensor | None, h0: tf.Tensor, h_ref: tf.Tensor | None = None
) -> dict[str, tf.Tensor]:
    """All GRU signals for ``x`` (B, T, in) in processing order, time-major (see the module docstring)."""
    input_bias = None if w.bias is None else (w.bias[0] if w.reset_after else w.bias)
    m = _time_major_mask(x, mask)
    xw = _matmul_last(swap_batch_time(x), w.kernel)  # Keras: matrix_x = inputs @ kernel + input_bias
    if input_bias is not None:
        xw = xw + input_bias
    if h_ref is None:

        def step(carry, inp):
            h, _ = carry
            xw_t, m_t = inp
            *_, h_new, pre = _gru_parts(w, xw_t, h)
            return _carry(m_t, h_new, h), pre

        h, pre = tf.scan(step, (xw, m), initializer=(h0, tf.zeros_like(xw[0])))
    else:
        h_prev = swap_batch_time(previous_states(h_ref, mask, h0))
        *_, h, pre = _gru_parts(w, xw, h_prev)
        h = tf.where(m[..., None], h, h_prev)
    z_pre, r_pre, hh_pre = _split(pre, 3)
    return {
        "update_gate": w.recurrent_activation(z_pre),
        "reset_gate": w.recurrent_activation(r_pre),
        "candidate": w.activation(hh_pre),
        "hidden_state": h,
        "preactivations": pre,
    }


# -- SimpleRNN --------------------------------------------------------------------------------------------------


def run_simple_rnn(
    w: CellWeights, x: tf.Tensor, mask: tf.Tensor | None, h0: tf.Tensor, h_ref: tf.Tensor | None = None
) -> dict[str, tf.Tensor]:
    """SimpleRNN hidden state and pre-activation for ``x`` (B, T, in), time-major (see the module docstring)."""
    m = _time_major_mask(x, mask)
    act = w.activation if w.activation is not None else (lambda v: v)
    xw = _matmul_last(swap_batch_time(x), w.kernel)  # Keras: h = inputs @ kernel + bias; h + prev @ recurrent
    if w.bias is not None:
        xw = xw + w.bias
    if h_ref is None:

        def step(carry, inp):
            h, _ = carry
            xw_t, m_t = inp
            pre = xw_t + tf.matmul(h, w.recurrent_kernel)
            return _carry(m_t, act(pre), h), pre

        h, pre = tf.scan(step, (xw, m), initializer=(h0, tf.zeros_like(h0)))
    else:
        h_prev = swap_batch_time(previous_states(h_ref, mask, h0))
        pre = xw + _matmul_last(h_prev, w.recurrent_kernel)
        h = tf.where(m[..., None], act(pre), h_prev)
    return {"hidden_state": h, "preactivations": pre}
