"""Hand-written NumPy reference cells that build a :class:`~gatelens.analysis.trace.Trace` (tests only).

Deliberately plain: one Python loop over sequences and one over steps, each step written out
exactly as the Keras 3 cell equations read (``keras/src/layers/rnn/{lstm,gru}.py``), in float64,
then stored as float32 like the extractor stores its signals. Masked steps are handled as Keras
and the extractor do: the gates and pre-activations are computed (and stored) from the carried
state and the step's input, but the state is carried unchanged.

Steps are stored in the input's own time order, also for ``go_backwards``.

Examples
--------
>>> import numpy as np
>>> u = 1
>>> t = reference_lstm_trace(np.ones((1, 3, 1)), np.zeros((1, 4)), np.zeros((1, 4)), np.zeros(4))
>>> t["lstm"]["forget_gate"][0, :, 0].tolist()
[0.5, 0.5, 0.5]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gatelens.analysis.signals import signals_for
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


ACTIVATIONS = {
    "sigmoid": _sigmoid,
    "hard_sigmoid": lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
    "softsign": lambda x: x / (np.abs(x) + 1.0),
}


def _prepare(x, embedding, mask, feature_names):
    """(inputs float64 (N, T, F), tokens or None, model x or None, mask bool (N, T), feature names)."""
    x = np.asarray(x)
    tokens = None
    model_x = None
    if embedding is not None:
        tokens = x.astype(np.int64)
        embedding = np.asarray(embedding, np.float32)
        inputs = embedding[tokens].astype(np.float64)
    else:
        model_x = np.asarray(x, np.float32)
        inputs = model_x.astype(np.float64)
    n, t = inputs.shape[:2]
    mask = np.ones((n, t), bool) if mask is None else np.asarray(mask, bool)
    if feature_names is None and embedding is None:
        feature_names = [f"x{k}" for k in range(inputs.shape[2])]
    return inputs, tokens, model_x, mask, feature_names


def _finish(info, signals, mask, inputs, weights, tokens, vocabulary, model_x, feature_names):
    lt = LayerTrace(
        info,
        {k: np.asarray(v, np.float32) for k, v in signals.items()},
        mask=mask,
        inputs=inputs.astype(np.float32),
        weights=weights,
    )
    return Trace(
        {info.name: lt},
        verification={info.name: 0.0},
        tokens=None if tokens is None else tokens.astype(np.int32),
        vocabulary=vocabulary,
        x=model_x,
        feature_names=None if tokens is not None else feature_names,
    )


def reference_lstm_trace(
    x,
    kernel,
    recurrent_kernel,
    bias=None,
    mask=None,
    name: str = "lstm",
    *,
    activation: str = "tanh",
    recurrent_activation: str = "sigmoid",
    go_backwards: bool = False,
    embedding=None,
    vocabulary: Sequence[str] | None = None,
    feature_names: Sequence[str] | None = None,
) -> Trace:
    """A Keras-3 LSTM run step by step.

    ``x`` is a float array (N, T, F), or integer token ids (N, T) when ``embedding`` (vocab, dim)
    is given (the layer then receives ``embedding[x]`` and the trace carries ``tokens``).
    ``bias`` None means ``use_bias=False`` (stored as zeros, as the extractor does).
    """
    inputs, tokens, model_x, mask, feature_names = _prepare(x, embedding, mask, feature_names)
    kernel = np.asarray(kernel, np.float32)
    recurrent_kernel = np.asarray(recurrent_kernel, np.float32)
    units = recurrent_kernel.shape[0]
    use_bias = bias is not None
    bias = np.zeros(4 * units, np.float32) if bias is None else np.asarray(bias, np.float32)
    W, U, b = kernel.astype(np.float64), recurrent_kernel.astype(np.float64), bias.astype(np.float64)
    a, ra = ACTIVATIONS[activation], ACTIVATIONS[recurrent_activation]
    n, t_len = mask.shape
    names = signals_for("lstm")
    out = {s: np.zeros((n, t_len, units)) for s in names}
    order = range(t_len - 1, -1, -1) if go_backwards else range(t_len)
    for s in range(n):
        h = np.zeros(units)
        c = np.zeros(units)
        for t in order:
            z = inputs[s, t] @ W + h @ U + b
            zi, zf, zc, zo = z[:units], z[units : 2 * units], z[2 * units : 3 * units], z[3 * units :]
            i, f, g, o = ra(zi), ra(zf), a(zc), ra(zo)
            if mask[s, t]:
                c = f * c + i * g
                h = o * a(c)
            for key, val in zip(names, (i, f, g, o, c, h, zi, zf, zc, zo)):
                out[key][s, t] = val
    info = LayerInfo(
        name=name,
        cell_type="lstm",
        units=units,
        input_dim=inputs.shape[2],
        activation=activation,
        recurrent_activation=recurrent_activation,
        use_bias=use_bias,
        go_backwards=go_backwards,
        keras_class="LSTM",
    )
    weights = {"kernel": kernel, "recurrent_kernel": recurrent_kernel, "bias": bias}
    if embedding is not None:
        weights["embedding"] = np.asarray(embedding, np.float32)
    return _finish(info, out, mask, inputs, weights, tokens, vocabulary, model_x, feature_names)


def reference_gru_trace(
    x,
    kernel,
    recurrent_kernel,
    bias=None,
    mask=None,
    name: str = "gru",
    *,
    reset_after: bool = True,
    activation: str = "tanh",
    recurrent_activation: str = "sigmoid",
    go_backwards: bool = False,
    embedding=None,
    vocabulary: Sequence[str] | None = None,
    feature_names: Sequence[str] | None = None,
) -> Trace:
    """A Keras-3 GRU run step by step.

    ``bias`` is (2, 3u) with ``reset_after`` (input bias, recurrent bias), else (3u,).
    ``h = z * h_prev + (1 - z) * hh``; candidate ``hh = a(x W_h + b_h + r * (h U_h + rb_h))``
    with ``reset_after``, else ``a(x W_h + b_h + (r * h) U_h)``.
    """
    inputs, tokens, model_x, mask, feature_names = _prepare(x, embedding, mask, feature_names)
    kernel = np.asarray(kernel, np.float32)
    recurrent_kernel = np.asarray(recurrent_kernel, np.float32)
    units = recurrent_kernel.shape[0]
    use_bias = bias is not None
    shape = (2, 3 * units) if reset_after else (3 * units,)
    bias = np.zeros(shape, np.float32) if bias is None else np.asarray(bias, np.float32).reshape(shape)
    W, U, b = kernel.astype(np.float64), recurrent_kernel.astype(np.float64), bias.astype(np.float64)
    b_in, b_rec = (b[0], b[1]) if reset_after else (b, np.zeros(3 * units))
    a, ra = ACTIVATIONS[activation], ACTIVATIONS[recurrent_activation]
    n, t_len = mask.shape
    names = signals_for("gru")
    out = {s: np.zeros((n, t_len, units)) for s in names}
    order = range(t_len - 1, -1, -1) if go_backwards else range(t_len)
    sl = [slice(0, units), slice(units, 2 * units), slice(2 * units, 3 * units)]
    for s in range(n):
        h = np.zeros(units)
        for t in order:
            xw = inputs[s, t] @ W + b_in
            z_pre = xw[sl[0]] + h @ U[:, sl[0]] + b_rec[sl[0]]
            r_pre = xw[sl[1]] + h @ U[:, sl[1]] + b_rec[sl[1]]
            z, r = ra(z_pre), ra(r_pre)
            if reset_after:
                hh_pre = xw[sl[2]] + r * (h @ U[:, sl[2]] + b_rec[sl[2]])
            else:
                hh_pre = xw[sl[2]] + (r * h) @ U[:, sl[2]]
            hh = a(hh_pre)
            if mask[s, t]:
                h = z * h + (1 - z) * hh
            for key, val in zip(names, (z, r, hh, h, z_pre, r_pre, hh_pre)):
                out[key][s, t] = val
    info = LayerInfo(
        name=name,
        cell_type="gru",
        units=units,
        input_dim=inputs.shape[2],
        activation=activation,
        recurrent_activation=recurrent_activation,
        use_bias=use_bias,
        go_backwards=go_backwards,
        reset_after=reset_after,
        keras_class="GRU",
    )
    weights = {"kernel": kernel, "recurrent_kernel": recurrent_kernel, "bias": bias}
    if embedding is not None:
        weights["embedding"] = np.asarray(embedding, np.float32)
    return _finish(info, out, mask, inputs, weights, tokens, vocabulary, model_x, feature_names)


def merge_traces(*traces: Trace) -> Trace:
    """One trace with the layers of several (which must share tokens / x), e.g. two directions."""
    first = traces[0]
    layers = {}
    for t in traces:
        for name in t.layers:
            if name in layers:
                raise ValueError(f"layer {name!r} appears twice")
            layers[name] = t[name]
    return Trace(
        layers,
        verification={k: v for t in traces for k, v in t.verification.items()},
        tokens=first.tokens,
        vocabulary=first.vocabulary,
        x=first.x,
        feature_names=first.feature_names,
    )


def write_store(trace: Trace, out, *, chunk_sequences: int = 3, dtype: str = "float32") -> Trace:
    """Write ``trace`` to a run store with :class:`gatelens.analysis.store.RunWriter`; return it opened lazily."""
    from gatelens.analysis.store import RunWriter, open_run

    infos = [trace[name].info for name in trace.layers]
    n, t = trace.n_sequences, trace.n_steps
    weights = {name: trace[name].weights for name in trace.layers}
    n_features = None if trace.x is None else int(np.asarray(trace.x).shape[2])
    with RunWriter(
        out,
        infos,
        n_sequences=n,
        n_steps=t,
        dtype=dtype,
        chunk_sequences=chunk_sequences,
        weights=weights,
        with_tokens=trace.tokens is not None,
        n_features=n_features,
    ) as w:
        for start in range(0, n, chunk_sequences):
            sl = slice(start, min(start + chunk_sequences, n))
            batch = {}
            for name in trace.layers:
                lt = trace[name]
                b = {s: np.asarray(lt[s])[sl] for s in lt.info.signals}
                b["mask"] = np.asarray(lt.mask)[sl]
                b["input"] = np.asarray(lt.inputs)[sl]
                batch[name] = b
            w.write_batch(
                start,
                batch,
                tokens=None if trace.tokens is None else np.asarray(trace.tokens)[sl],
                x=None if trace.x is None else np.asarray(trace.x)[sl],
            )
        w.finish(verification=trace.verification, vocabulary=trace.vocabulary, feature_names=trace.feature_names)
    return open_run(out)


def float32_sum_bound(abs_parts) -> np.ndarray:
    """``1e-5 * max(1, sum |parts|)``: how far a sum of float32 parts may lie from its exact value (the standard
    bound for a float32 sum, about 80 units in the last place of the sum of magnitudes, and never below 1e-5)."""
    return 1e-5 * np.maximum(1.0, np.asarray(abs_parts, np.float64))


def assert_sums_back(total, stored, abs_parts, err_msg: str = "") -> None:
    """``total`` (a decomposition's float64 sum) equals the ``stored`` float32 signal within
    :func:`float32_sum_bound` of the sum of the parts' absolute values, element by element."""
    total = np.asarray(total, np.float64)
    stored = np.asarray(stored, np.float64)
    bound = float32_sum_bound(abs_parts)
    excess = np.abs(total - stored) - bound
    worst = int(np.argmax(excess)) if excess.size else 0
    assert excess.size == 0 or excess.flat[worst] <= 0, (
        f"{err_msg}: |sum of parts - stored| = {np.abs(total - stored).flat[worst]:.3g} exceeds the float32 bound "
        f"{bound.flat[worst]:.3g} (1e-5 * max(1, sum |parts| = {np.asarray(abs_parts).flat[worst]:.3g}))"
    )
