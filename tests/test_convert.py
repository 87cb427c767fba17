"""Trace.to_xarray and Trace.to_frame: checked value for value against the trace's own arrays.

The reference trace is built by hand (two layers of different cell types and sizes, padded steps, token ids
and exact zeros, -0.0 and a subnormal among the values) and also written to a real run store with
:class:`RunWriter`; the store's copy is opened lazily, which a damaged chunk proves (reading it fails, every
other sequence still converts).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from gatelens.analysis.export import read_csv, write_activations_csv
from gatelens.analysis.store import RunWriter, open_run
from gatelens.analysis.trace import LayerInfo, LayerTrace, Trace
from gatelens.errors import UsageError

N, T = 6, 5
LSTM = LayerInfo(name="enc", cell_type="lstm", units=3, input_dim=2)
GRU = LayerInfo(name="bi/backward", cell_type="gru", units=2, input_dim=3, go_backwards=True)
VOCAB = ["", "a", "=b", "c"]


def _signals(info: LayerInfo, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for s in info.signals:
        a = rng.normal(size=(N, T, info.units)).astype(np.float32)
        a[0, 0, 0], a[1, 1, 0], a[2, 2, 0] = 0.0, -0.0, np.float32(1e-40)  # exact zeros and a subnormal
        out[s] = a
    return out


@pytest.fixture(scope="module")
def trace() -> Trace:
    rng = np.random.default_rng(7)
    mask = np.ones((N, T), bool)
    mask[1, 3:] = False  # padded steps
    mask[4, :2] = False
    layers = {}
    for info in (LSTM, GRU):
        inputs = rng.normal(size=(N, T, info.input_dim)).astype(np.float32)
        layers[info.name] = LayerTrace(info, _signals(info, rng), mask=mask, inputs=inputs)
    tokens = rng.integers(0, len(VOCAB), size=(N, T)).astype(np.int32)
    return Trace(layers, verification={"enc": 1e-7, "bi/backward": 2e-7}, tokens=tokens, vocabulary=VOCAB)


@pytest.fixture(scope="module")
def stored(trace, tmp_path_factory) -> Trace:
    out = tmp_path_factory.mktemp("convert") / "run"
    with RunWriter(out, [LSTM, GRU], n_sequences=N, n_steps=T, chunk_sequences=2, with_tokens=True) as w:
        for start in range(0, N, 2):
            rows = slice(start, start + 2)
            batch = {
                name: {**{s: lt[s][rows] for s in lt}, "mask": lt.mask[rows], "input": lt.inputs[rows]}
                for name, lt in trace.layer_traces.items()
            }
            w.write_batch(start, batch, tokens=trace.tokens[rows])
        w.finish(verification=trace.verification, vocabulary=VOCAB)
    return open_run(out)


def _same(a, b) -> None:
    """Bit for bit (so -0.0 differs from 0.0 and NaN equals NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("source", ["memory", "store"])
def test_one_layer_dataset_holds_the_arrays(trace, stored, source):
    t = trace if source == "memory" else stored
    for name, lt in trace.layer_traces.items():
        ds = t.to_xarray(name)
        assert set(ds.data_vars) == {*lt.info.signals, "mask", "input", "tokens", "vocabulary"}
        for s in lt.info.signals:
            assert ds[s].dims == ("sequence", "step", "unit")
            _same(ds[s].values, lt[s])
            assert ds[s].attrs["signal"] == s and ds[s].attrs["layer"] == name
        _same(ds["mask"].values, lt.mask)
        _same(ds["input"].values, lt.inputs)
        assert ds["input"].dims == ("sequence", "step", "input_dim")
        _same(ds["tokens"].values, trace.tokens)
        assert list(ds["unit"].values) == list(range(lt.info.units))
        assert list(ds["sequence"].values) == list(range(N)) and list(ds["step"].values) == list(range(T))
        assert ds.attrs["layer"] == name and ds.attrs["cell_type"] == lt.info.cell_type
        assert ds.attrs["units"] == lt.info.units and ds.attrs["verification"] == trace.verification[name]
        strings = ds["vocabulary"].isel(token_id=ds["tokens"]).values
        assert (strings == trace.token_strings()).all()
        # a selection by label picks the same element as the array
        assert float(ds["candidate"].sel(sequence=3, step=4, unit=1)) == float(lt["candidate"][3, 4, 1])


@pytest.mark.parametrize("source", ["memory", "store"])
def test_all_layers_dataset_names_each_layers_variables(trace, stored, source):
    ds = (trace if source == "memory" else stored).to_xarray()
    for name, lt in trace.layer_traces.items():
        for s in lt.info.signals:
            assert ds[f"{name}/{s}"].dims == ("sequence", "step", f"{name}/unit")
            _same(ds[f"{name}/{s}"].values, lt[s])
        _same(ds[f"{name}/mask"].values, lt.mask)
        assert ds.sizes[f"{name}/unit"] == lt.info.units
        assert ds.attrs[f"verification/{name}"] == trace.verification[name]
    n_vars = sum(len(lt.info.signals) + 2 for lt in trace.layer_traces.values()) + 2  # + tokens, vocabulary
    assert len(ds.data_vars) == n_vars


def test_signals_are_chosen_and_checked(trace):
    ds = trace.to_xarray("enc", signals=["cell_state", "forget_gate"])
    assert set(ds.data_vars) == {"forget_gate", "cell_state", "mask", "input", "tokens", "vocabulary"}
    with pytest.raises(UsageError, match="has no signal.*update_gate"):
        trace.to_xarray("enc", signals="update_gate")
    with pytest.raises(ValueError, match="No recurrent layer 'nope'"):
        trace.to_xarray("nope")
    with pytest.raises(UsageError, match="one layer's name"):
        trace.to_xarray(["enc"])


def test_a_model_input_gets_its_feature_names():
    info = LayerInfo(name="l", cell_type="simple_rnn", units=1, input_dim=2)
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    lt = LayerTrace(info, {s: x[..., :1] for s in info.signals}, mask=np.ones((2, 3), bool), inputs=x)
    ds = Trace({"l": lt}, x=x, feature_names=["price", "volume"]).to_xarray("l")
    assert list(ds["feature"].values) == ["price", "volume"]
    _same(ds["x"].values, x)
    assert float(ds["x"].sel(feature="volume")[1, 2]) == 11.0


def test_the_store_is_read_lazily(stored):
    """Damage the chunk of sequences 4-5 after opening: converting and reading 0-3 still work, 4-5 fail."""
    chunk = stored.path / "layers" / "enc" / "forget_gate" / "c" / "2" / "0" / "0"
    original = chunk.read_bytes()
    try:
        chunk.write_bytes(original[:7])  # a raw chunk of the wrong size cannot be decoded
        ds = stored.to_xarray("enc")
        _same(ds["forget_gate"].isel(sequence=slice(0, 4)).values, np.asarray(stored["enc"]["forget_gate"][:4]))
        df = stored.to_frame("enc", "forget_gate", sequences=[0, 3])
        assert set(df["sequence"]) == {0, 3}
        with pytest.raises(Exception):  # noqa: B017 - zarr's own decoding error, whatever its class
            ds["forget_gate"].isel(sequence=5).load()
        with pytest.raises(Exception):  # noqa: B017
            stored.to_frame("enc", "forget_gate", sequences=[5])
    finally:
        chunk.write_bytes(original)


def test_dask_chunks_on_request(stored):
    ds = stored.to_xarray("enc", chunks={})
    assert ds["forget_gate"].chunks is not None and ds["forget_gate"].chunks[0] == (2, 2, 2)
    _same(ds["forget_gate"].values, np.asarray(stored["enc"]["forget_gate"][...]))


def test_one_layer_dataset_round_trips_through_zarr(trace, tmp_path):
    ds = trace.to_xarray("bi/backward")
    ds.to_zarr(tmp_path / "ds.zarr", consolidated=False)
    back = xr.open_zarr(tmp_path / "ds.zarr", consolidated=False).load()
    for v in ds.data_vars:
        _same(back[v].values, ds[v].values)


@pytest.mark.parametrize("source", ["memory", "store"])
def test_long_frame_rows_are_the_array_elements(trace, stored, source):
    t = trace if source == "memory" else stored
    for name, lt in trace.layer_traces.items():
        df = t.to_frame(name)
        assert list(df.columns) == ["layer", "sequence", "step", "unit", "signal", "value", "token"]
        assert len(df) == lt.mask.sum() * lt.info.units * len(lt.info.signals)
        assert lt.mask[df["sequence"], df["step"]].all()  # no padded step
        assert (df["layer"] == name).all() and df["value"].dtype == np.float32
        for s in lt.info.signals:
            rows = df[df["signal"] == s]
            _same(rows["value"].to_numpy(), lt[s][rows["sequence"], rows["step"], rows["unit"]])
        assert (df["token"].to_numpy() == trace.token_strings()[df["sequence"], df["step"]]).all()
        order = df[["sequence", "step", "unit"]].to_numpy()
        assert (np.diff(order[:, 0] * 10_000 + order[:, 1] * 100 + order[:, 2]) >= 0).all()
        assert list(df["signal"][: len(lt.info.signals)]) == list(lt.info.signals)


def test_frame_selects_sequences_and_keeps_padding_on_request(trace):
    lt = trace["enc"]
    df = trace.to_frame("enc", signals=["output_gate"], sequences=slice(1, 2), drop_masked=False)
    assert len(df) == T * lt.info.units and set(df["sequence"]) == {1}
    _same(df["mask"].to_numpy(), np.repeat(lt.mask[1], lt.info.units))
    _same(df["value"].to_numpy(), lt["output_gate"][1].reshape(-1))
    one = trace.to_frame("enc", "output_gate", sequences=4)
    assert set(one["step"]) == {2, 3, 4}
    with pytest.raises(ValueError, match="sequence 6 is out of range"):
        trace.to_frame("enc", sequences=[6])
    with pytest.raises(UsageError, match="has no signal"):
        trace.to_frame("enc", signals=["reset_gate"])


def test_wide_frame_is_activations_csv(trace, tmp_path):
    """The wide frame holds what the export writes: an independent writer (Arrow's CSV path), read back."""
    csv = read_csv(write_activations_csv(trace, tmp_path / "activations.csv"), dtype={"token": str})
    for name, lt in trace.layer_traces.items():
        wide = trace.to_frame(name, wide=True)
        ref = csv[csv["layer"] == name].reset_index(drop=True)
        assert list(wide.columns) == ["layer", "sequence", "step", "unit", *lt.info.signals, "token"]
        for c in ("sequence", "step", "unit"):
            assert (wide[c].to_numpy() == ref[c].to_numpy()).all()
        for s in lt.info.signals:
            _same(wide[s].to_numpy(), ref[s].to_numpy(np.float64).astype(np.float32))
        # the CSV writes the empty token (id 0) as an empty cell, which reads back as missing
        assert (wide["token"].to_numpy() == ref["token"].fillna("").to_numpy()).all()
        long = trace.to_frame(name)
        pivot = long.pivot(index=["sequence", "step", "unit"], columns="signal", values="value")
        for s in lt.info.signals:
            _same(pivot[s].to_numpy(np.float32), wide[s].to_numpy())


def test_frame_of_an_extracted_trace_is_its_arrays():
    """A real Keras model's trace (not a hand-built one): the frame and the Dataset hold its arrays."""
    import gatelens
    from gatelens._examples import tiny_inputs, tiny_lstm_model

    trace = gatelens.extract(tiny_lstm_model(), tiny_inputs(n=3))
    df = trace.to_frame("lstm", "hidden_state")
    h = np.asarray(trace["lstm"]["hidden_state"])
    _same(df["value"].to_numpy(), h.reshape(-1))
    assert isinstance(df, pd.DataFrame) and len(df) == h.size
    _same(trace.to_xarray("lstm")["hidden_state"].values, h)
