"""A trace as an ``xarray.Dataset`` or as tidy pandas frames, for notebooks (``Trace.to_xarray``, ``Trace.to_frame``).

Both read a trace in memory and a run opened from the store (:func:`gatelens.open_run`) alike. From a store
:func:`to_xarray` stays lazy -- it opens the run's Zarr arrays through xarray and reads a chunk only when its
values are asked for -- and :func:`to_frame` reads only the sequences and signals asked for.

Examples
--------
>>> import gatelens
>>> from gatelens._examples import tiny_run
>>> run = gatelens.open_run(tiny_run())              # 6 sequences of 4 steps, one LSTM of 3 units
>>> ds = run.to_xarray("lstm")
>>> ds["forget_gate"].dims, ds.sizes["unit"]
(('sequence', 'step', 'unit'), 3)
>>> float(ds["forget_gate"][2, 3, 1]) == float(run["lstm"]["forget_gate"][2, 3, 1])
True
>>> df = run.to_frame("lstm", signals=["forget_gate"], sequences=[2])
>>> list(df.columns), len(df)                        # 1 sequence x 4 steps x 3 units x 1 signal
(['layer', 'sequence', 'step', 'unit', 'signal', 'value'], 12)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from gatelens.analysis._reading import get_layer, read, read_mask, read_tokens, row_numbers, select_sequences
from gatelens.analysis.trace import LayerTrace, Trace, as_numpy
from gatelens.errors import UsageError

__all__ = ["to_frame", "to_xarray"]


def _signal_names(lt: LayerTrace, signals: Sequence[str] | str | None) -> list[str]:
    """The layer's signals asked for, in contract order (all when None); an unknown name is a UsageError."""
    if signals is None:
        return list(lt.info.signals)
    wanted = [signals] if isinstance(signals, str) else list(signals)
    unknown = [s for s in wanted if s not in lt.info.signals]
    if unknown:
        raise UsageError(
            f"layer {lt.info.name!r} ({lt.info.cell_type}) has no signal(s) {unknown}; it has {list(lt.info.signals)}"
        )
    return [s for s in lt.info.signals if s in set(wanted)]


def _is_lazy(trace: Trace, lt: LayerTrace) -> bool:
    """True for a layer whose arrays are still the run store's Zarr arrays (not copied into memory)."""
    return trace.path is not None and not isinstance(lt[lt.info.signals[0]], np.ndarray)


def _open_group(trace: Trace, group: str, chunks: Any) -> Any:
    """One group of the run store as xarray opens it: lazy arrays, values exactly as stored (no CF decoding)."""
    import warnings

    import xarray as xr

    with warnings.catch_warnings():  # the run's manifest.json and analysis/ are not zarr nodes, as designed
        warnings.filterwarnings("ignore", message=r"Object at .* is not recognized", category=UserWarning)
        return xr.open_zarr(trace.path, group=group, chunks=chunks, consolidated=False, zarr_format=3, decode_cf=False)


def _attr(value: Any) -> Any:
    """An attribute value every xarray backend can write (bools as 0/1, None as "")."""
    if isinstance(value, bool):
        return int(value)
    return "" if value is None else value


def _layer_dataset(trace: Trace, name: str, signals: list[str], chunks: Any) -> Any:
    import xarray as xr

    lt = trace[name]
    info = lt.info
    if _is_lazy(trace, lt):
        key = next((d["store_key"] for d in (trace.meta or {}).get("layers", []) if d.get("name") == name), name)
        ds = _open_group(trace, f"layers/{key}", chunks)[[*signals, "mask", "input"]]
    else:
        dims3 = ("sequence", "step", "unit")
        data: dict[str, Any] = {s: (dims3, as_numpy(lt[s], lt[s].dtype)) for s in signals}
        data["mask"] = (("sequence", "step"), as_numpy(lt.mask, bool))
        data["input"] = (("sequence", "step", "input_dim"), as_numpy(lt.inputs, lt.inputs.dtype))
        ds = xr.Dataset(data)
    for s in signals:
        ds[s].attrs = {"layer": name, "signal": s, "cell_type": info.cell_type}
    ds["mask"].attrs = {"layer": name, "description": "True where the step was processed (False: padding)"}
    ds["input"].attrs = {"layer": name, "description": "the tensor the layer received inside the model"}
    ds.attrs = {k: _attr(v) for k, v in info.to_dict().items()}
    ds.attrs["layer"] = ds.attrs.pop("name")
    if name in trace.verification:
        ds.attrs["verification"] = float(trace.verification[name])
    return ds


def _shared_dataset(trace: Trace, chunks: Any) -> Any:
    """``tokens``, ``x`` and ``vocabulary``: what every layer of the trace shares."""
    import xarray as xr

    lazy = trace.path is not None and any(
        a is not None and not isinstance(a, np.ndarray) for a in (trace.tokens, trace.x)
    )
    if lazy:
        ds = _open_group(trace, "", chunks)
        ds = ds[[v for v in ("tokens", "x") if v in ds.data_vars]]
    else:
        data: dict[str, Any] = {}
        if trace.tokens is not None:
            data["tokens"] = (("sequence", "step"), as_numpy(trace.tokens, np.int32))
        if trace.x is not None:
            data["x"] = (("sequence", "step", "feature"), as_numpy(trace.x, np.float32))
        ds = xr.Dataset(data)
    if "x" in ds.data_vars:
        names = list(trace.feature_names or [])
        if len(names) == ds.sizes["feature"]:
            ds = ds.assign_coords(feature=np.asarray(names, dtype=str))
    if trace.vocabulary is not None:
        ds["vocabulary"] = ("token_id", np.asarray(list(trace.vocabulary), dtype=str))
    return ds


def to_xarray(
    trace: Trace, layer: str | None = None, *, signals: Sequence[str] | str | None = None, chunks: Any = None
) -> Any:
    """The trace as an ``xarray.Dataset``: every signal with dimensions ``sequence, step, unit``.

    Parameters
    ----------
    trace : Trace
        In memory, or opened from a run directory (then nothing is read until values are asked for:
        the variables are xarray's lazy views of the run's Zarr arrays).
    layer : str, optional
        One layer: its signals are named as in the contract (``forget_gate``), with the dimensions
        ``sequence, step, unit`` (and ``input_dim`` for ``input``). When None, every layer: names and the
        layer's own dimensions carry the layer's name, ``lstm/forget_gate`` on ``sequence, step, lstm/unit``
        (the paths of the run store). netCDF and Zarr files cannot hold a ``/`` in a name: write one layer's
        Dataset at a time.
    signals : str or list of str, optional
        Signals to include (default all of the layer's; ``mask`` and ``input`` are always there).
    chunks : optional
        For a run from the store only: passed to ``xarray.open_zarr`` (``None``: lazy NumPy-backed arrays;
        ``{}`` or ``"auto"``: Dask arrays, which needs the ``[dask]`` extra).

    Returns
    -------
    xarray.Dataset
        Per layer: its signals (float32, or float16 as stored), ``mask`` (bool: True where the step was
        processed) and ``input``. Shared: ``tokens`` (int32, text models), ``x`` (the model's numeric input,
        dimension ``feature`` labelled by the feature names) and ``vocabulary`` (strings on ``token_id``:
        ``ds.vocabulary.isel(token_id=ds.tokens)`` gives the token strings). Coordinates ``sequence``,
        ``step``, ``unit``: 0-based integers. The attributes of a one-layer Dataset are the layer's
        description (``cell_type``, ``units``, ...) and ``verification`` (max |h recomputed - h Keras|).

    Examples
    --------
    >>> import gatelens
    >>> from gatelens._examples import tiny_inputs, tiny_lstm_model
    >>> trace = gatelens.extract(tiny_lstm_model(), tiny_inputs(n=2))
    >>> ds = trace.to_xarray()
    >>> ds["lstm/cell_state"].dims, ds["lstm/mask"].dtype
    (('sequence', 'step', 'lstm/unit'), dtype('bool'))
    >>> trace.to_xarray("lstm", signals="forget_gate")["forget_gate"].mean("step").shape
    (2, 3)
    """
    import xarray as xr

    if len(trace) == 0:
        raise UsageError("the trace holds no layer")
    if layer is not None and not isinstance(layer, str):
        raise UsageError(f"layer must be one layer's name (or None for all), got {layer!r}")
    names = trace.layers if layer is None else [get_layer(trace, layer).info.name]
    shared = _shared_dataset(trace, chunks)
    parts = []
    for name in names:
        ds = _layer_dataset(trace, name, _signal_names(trace[name], signals), chunks)
        if layer is None:
            ds = ds.rename_dims({"unit": f"{name}/unit", "input_dim": f"{name}/input_dim"})
            ds = ds.rename_vars({v: f"{name}/{v}" for v in ds.data_vars})
            ds = ds.assign_coords({f"{name}/unit": np.arange(ds.sizes[f"{name}/unit"])})
            ds.attrs = {}
        else:
            ds = ds.assign_coords(unit=np.arange(ds.sizes["unit"]))
        parts.append(ds)
    out = xr.merge([*parts, shared], compat="no_conflicts", join="exact", combine_attrs="override")
    out = out.assign_coords(sequence=np.arange(trace.n_sequences), step=np.arange(trace.n_steps))
    if layer is None:
        out.attrs = {f"verification/{k}": float(v) for k, v in trace.verification.items()}
    return out


def to_frame(
    trace: Trace,
    layer: str,
    signals: Sequence[str] | str | None = None,
    sequences: Any = None,
    *,
    wide: bool = False,
    drop_masked: bool = True,
) -> pd.DataFrame:
    """One layer's signals as a tidy pandas frame: one row per sequence, step, unit (and signal).

    Parameters
    ----------
    trace : Trace
        In memory or from the store (only the sequences and signals asked for are read).
    layer : str
    signals : str or list of str, optional
        Default every signal of the layer, in contract order.
    sequences : int, list of int or slice, optional
        Default all.
    wide : bool
        False (default): long form, columns ``layer, sequence, step, unit, signal, value`` (what Altair
        and seaborn take). True: one column per signal, the layout of ``activations.csv``.
    drop_masked : bool
        Leave out padded steps (default, as every export does). False keeps them and adds a bool
        column ``mask`` (True where the step was processed).

    Returns
    -------
    DataFrame
        Ordered by sequence, step, unit (then signal, in contract order); ``value`` (or each signal's
        column) is the stored value as float32; ``token`` (the token string read at the step) for text
        models.

    Examples
    --------
    >>> import numpy as np
    >>> from gatelens.analysis.trace import LayerInfo, LayerTrace
    >>> info = LayerInfo(name="rnn", cell_type="simple_rnn", units=2, input_dim=1)
    >>> h = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    >>> t = Trace({"rnn": LayerTrace(info, {"hidden_state": h, "hidden_state_pre": -h},
    ...                              mask=np.array([[True, True], [True, False]]), inputs=h[..., :1])})
    >>> to_frame(t, "rnn", "hidden_state", sequences=1)
      layer  sequence  step  unit        signal  value
    0   rnn         1     0     0  hidden_state    4.0
    1   rnn         1     0     1  hidden_state    5.0
    >>> to_frame(t, "rnn", wide=True).shape          # 3 real steps x 2 units; keys + 2 signals
    (6, 6)
    """
    lt = get_layer(trace, layer)
    names = _signal_names(lt, signals)
    n, t_len, u = lt.shape
    picked = select_sequences(sequences, n)
    rows: np.ndarray | slice = slice(0, n) if picked is None else picked
    mask = read_mask(lt, rows)
    keep = mask if drop_masked else np.ones_like(mask)
    s_idx, t_idx = np.nonzero(keep)
    k = len(s_idx)
    values = np.stack([read(lt[s], rows, np.float32)[s_idx, t_idx] for s in names], axis=-1)  # (k, units, signals)
    keys: dict[str, Any] = {
        "layer": np.full(k * u, lt.info.name, dtype=object),
        "sequence": np.repeat(row_numbers(rows)[s_idx], u).astype(np.int64),
        "step": np.repeat(t_idx, u).astype(np.int64),
        "unit": np.tile(np.arange(u, dtype=np.int64), k),
    }
    extra: dict[str, Any] = {}
    if not drop_masked:
        extra["mask"] = np.repeat(mask[s_idx, t_idx], u)
    tokens = read_tokens(trace, rows)
    if tokens is not None:
        extra["token"] = np.repeat(tokens[s_idx, t_idx], u)
    if wide:
        flat = values.reshape(k * u, len(names))
        return pd.DataFrame({**keys, **{s: flat[:, j] for j, s in enumerate(names)}, **extra})
    rep = len(names)
    long = {c: np.repeat(v, rep) for c, v in keys.items()}
    long["signal"] = np.tile(np.asarray(names, dtype=object), k * u)
    long["value"] = values.reshape(-1)
    return pd.DataFrame({**long, **{c: np.repeat(v, rep) for c, v in extra.items()}})
