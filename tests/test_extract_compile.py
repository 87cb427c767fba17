"""Compile once: the per-model cache of compiled batch functions, its bucketing, its lifetime, its threads;
and the one place of private Keras calls (models/compat.py), with a fault injected into it."""

from __future__ import annotations

import gc
import importlib
import math
import threading
import weakref

import keras
import numpy as np
import pytest

from gatelens.models.extract import (
    VERIFY_MODES,
    Extractor,
    batch_spans,
    bucket,
    cached_models,
    compile_mode,
    extract,
    write_run,
)

extract_module = importlib.import_module("gatelens.models.extract")  # (gatelens.models.extract is the function)
L = keras.layers
T, F = 5, 3


def _model(name="compile_once"):
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [keras.Input((T, F)), L.Masking(0.0), L.LSTM(4, return_sequences=True), L.GRU(3, return_sequences=True)],
        name=name,
    )


def _x(n, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, T, F)).astype(np.float32)
    x[0, 3:] = 0  # a padded tail: the mask reaches both layers
    return x


@pytest.fixture(scope="module")
def model():
    return _model()


def test_bucket_is_the_next_power_of_two_capped_at_the_batch_size():
    assert [bucket(k, 256) for k in (1, 2, 3, 7, 8, 9, 44, 129, 255, 256, 257, 320)] == [
        1, 2, 4, 8, 8, 16, 64, 256, 256, 256, 320, 320
    ]  # fmt: skip
    assert {bucket(k, 100) for k in range(1, 126)} == {1, 2, 4, 8, 16, 32, 64, 100, 125}
    with pytest.raises(ValueError, match="at most 320 sequences"):
        bucket(321, 256)


def test_a_short_tail_joins_the_last_batch():
    """Full batches, and a last one of at most batch_size // 4 joined to the one before (one call, not two)."""
    assert batch_spans(256, 256) == [(0, 256)]
    assert batch_spans(300, 256) == [(0, 300)]  # 44 <= 64: one batch, run at 320
    assert batch_spans(320, 256) == [(0, 320)]
    assert batch_spans(321, 256) == [(0, 256), (256, 65)]
    assert batch_spans(1000, 256) == [(0, 256), (256, 256), (512, 256), (768, 232)]
    assert batch_spans(1030, 256) == [(0, 256), (256, 256), (512, 256), (768, 262)]
    assert (
        batch_spans(5, 4) == [(0, 5)]
        and batch_spans(7, 4) == [(0, 4), (4, 3)]
        and batch_spans(3, 2) == [(0, 2), (2, 1)]
    )
    for n in range(1, 700):  # every sequence once, in order, no batch above what bucket() allows
        spans = batch_spans(n, 256)
        assert [s for s, _ in spans] == list(np.cumsum([0] + [k for _, k in spans])[:-1])
        assert sum(k for _, k in spans) == n and all(bucket(k, 256) >= k for _, k in spans)


@pytest.mark.slow
def test_each_input_size_compiles_once_per_mode(model):
    """extract(model, x) twice for each N: the second call traces and compiles nothing; 7 runs at 8, not 256."""
    ex = Extractor(model)
    traces = ex.compile_stats()["traces"]
    sizes = (256, 300, 7, 1)
    for verify in VERIFY_MODES:
        for n in sizes:
            x = _x(n)
            first = extract(model, x, verify=verify, compile="xla")
            assert first.meta["compile"] == "xla"
            stats = ex.compile_stats()
            second = extract(model, x, verify=verify, compile="xla")
            assert ex.compile_stats() == stats, (verify, n)
            for name in first.layers:  # and the cached function gives the same numbers
                np.testing.assert_array_equal(second[name]["hidden_state"], first[name]["hidden_state"])
            assert first["lstm"]["hidden_state"].shape == (n, T, 4)
        shapes = ex.compile_stats()["shapes"][("xla", "float32", verify, 8)]
        # 256 (N=256), 320 (N=300: one batch, its tail of 44 joined), 8 (N=7), 1 (N=1)
        assert {s[0] for s in shapes} == {256, 320, 8, 1}, verify
        assert len(shapes) <= math.log2(256) + 2
    # one trace per mode: the input signature leaves the batch axis open, XLA compiles each bucket once
    assert ex.compile_stats()["traces"] - traces == len(VERIFY_MODES)


def test_the_compile_rule_small_inputs_run_in_graph_mode(monkeypatch):
    """compile="auto": an input of at most GRAPH_MAX_WORK sequences x steps x units runs in graph mode (one trace
    for every N, batches unpadded, nothing compiled per shape), a larger one with XLA (its own cache entry,
    padded to the buckets); the second call of each N adds nothing; trace.meta says which ran and why."""
    units = 4 + 3
    assert compile_mode(10, 10, 10) == "graph" and compile_mode(10, 10, 10, "xla") == "xla"
    limit = extract_module.GRAPH_MAX_WORK
    assert compile_mode(limit, 1, 1) == "graph" and compile_mode(limit + 1, 1, 1) == "xla"
    assert compile_mode(1, limit // units + 1, units) == "xla"
    with pytest.raises(ValueError, match="compile must be one of"):
        compile_mode(1, 1, 1, "jit")
    model = _model("compile_rule")  # its own cache entry: the counts below are this test's alone
    ex = Extractor(model)
    traces = ex.compile_stats()["traces"]
    for n in (300, 7):
        first = extract(model, _x(n), verify="sample")
        assert first.meta["compile"] == "graph", first.meta
        assert (
            first.meta["compile_reason"]
            == f"auto: {n} sequences x {T} steps x {units} units = {n * T * units} <= GRAPH_MAX_WORK {limit}"
        )
        stats = ex.compile_stats()
        extract(model, _x(n), verify="sample")
        assert ex.compile_stats() == stats, n
    assert ex.compile_stats()["traces"] == traces + 1  # one graph serves every batch size
    assert ex.compile_stats()["shapes"][("graph", "float32", "sample", 8)] == {(300, T, F), (7, T, F)}
    assert ("xla", "float32", "sample", 8) not in ex.compile_stats()["shapes"]

    monkeypatch.setattr(extract_module, "GRAPH_MAX_WORK", 7 * T * units - 1)  # now N=7 is above the rule's limit
    big = extract(model, _x(7), verify="sample")
    assert big.meta["compile"] == "xla" and "> GRAPH_MAX_WORK" in big.meta["compile_reason"], big.meta
    assert ex.compile_stats()["shapes"][("xla", "float32", "sample", 8)] == {(8, T, F)}  # padded to its bucket
    assert ex.compile_stats()["traces"] == traces + 2
    assert extract(model, _x(6), verify="sample").meta["compile"] == "graph"  # 6 x T x units is under it
    assert Extractor(model, jit_compile=False).compile_mode(_x(7)) == "graph"


def _every_cell_model():
    keras.utils.set_random_seed(11)
    return keras.Sequential(
        [
            keras.Input((T, F)),
            L.Masking(0.0),
            L.LSTM(5, return_sequences=True, go_backwards=True),
            L.GRU(4, return_sequences=True, reset_after=False),
            L.Bidirectional(L.GRU(3, return_sequences=True)),
            L.SimpleRNN(4, return_sequences=True),
        ],
        name="every_cell",
    )


@pytest.mark.parametrize("verify", ["cell", pytest.param("full", marks=pytest.mark.slow)])
def test_graph_mode_and_xla_give_the_same_signals(verify):
    """The two ways the batch function runs agree on every signal of every cell type (masked steps, a go_backwards
    LSTM, a Bidirectional GRU, a GRU with reset_after=False), to float32 round-off; both pass the Keras check."""
    m = _every_cell_model()
    x = _x(9, seed=7)
    x[4, :2] = 0  # a masked head too
    graph = extract(m, x, verify=verify, compile="graph")
    xla = extract(m, x, verify=verify, compile="xla")
    assert (graph.meta["compile"], xla.meta["compile"]) == ("graph", "xla")
    assert graph.layers == xla.layers and len(graph.layers) == 5
    for name in graph.layers:
        np.testing.assert_array_equal(graph[name].mask, xla[name].mask)
        assert set(graph[name]) == set(xla[name]) and len(set(graph[name])) >= 2
        for sig in graph[name]:
            a, b = graph[name][sig], xla[name][sig]
            assert a.shape == b.shape == (9, T, graph[name].info.units)
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0, err_msg=f"{name} {sig}")  # seen: 2.4e-7
        assert graph.verification[name] < 1e-5 and xla.verification[name] < 1e-5


def test_write_run_records_the_mode_that_ran(model, tmp_path):
    """The manifest says how the batch function ran and why (auto on a small input: graph; asked for: xla)."""
    import json

    auto = write_run(model, _x(5), tmp_path / "auto", dtype="float16")
    asked = write_run(model, _x(5), tmp_path / "xla", dtype="float16", compile="xla")
    m_auto = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    m_xla = json.loads((tmp_path / "xla" / "manifest.json").read_text())
    assert (m_auto["compile"], m_xla["compile"]) == ("graph", "xla")
    assert m_auto["compile_reason"].startswith("auto: 5 sequences x 5 steps x 7 units")
    assert m_xla["compile_reason"] == "compile='xla' requested"
    np.testing.assert_allclose(
        np.asarray(auto["gru"]["hidden_state"], np.float32), np.asarray(asked["gru"]["hidden_state"], np.float32),
        atol=1e-3, rtol=0,  # float16 storage: one rounding step of values below 1
    )  # fmt: skip


def test_padding_does_not_change_values(model):
    """A batch padded to its bucket gives the values the same sequences give alone (and the short batch's)."""
    x = _x(12, seed=1)
    whole = extract(model, x, batch_size=8)  # batches of 8 and 4 (the 4 run at bucket 4)
    for i in (0, 9, 11):
        alone = extract(model, x[i : i + 1])
        for name in whole.layers:
            for sig in ("hidden_state", "forget_gate" if name == "lstm" else "update_gate"):
                np.testing.assert_allclose(alone[name][sig][0], whole[name][sig][i], atol=1e-6, rtol=0)


def test_batches_assemble_in_time_order_for_every_direction():
    """extract over several batches (the time-major store, filled by the copier thread) gives, for every signal
    of a go_backwards LSTM and both directions of a Bidirectional GRU, what each sequence gives alone; progress
    hears of every batch."""
    keras.utils.set_random_seed(5)
    m = keras.Sequential(
        [
            keras.Input((T, F)),
            L.Masking(0.0),
            L.LSTM(4, return_sequences=True, go_backwards=True),
            L.Bidirectional(L.GRU(3, return_sequences=True)),
        ],
        name="assemble_order",
    )
    x = _x(11, seed=4)
    x[5, :2] = 0  # a masked head too
    calls = []
    whole = extract(m, x, batch_size=4, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(4, 11), (8, 11), (11, 11)]
    lstm, fwd, bwd = whole.layers  # (Keras numbers the layer names per process)
    assert whole[lstm].info.go_backwards and fwd.endswith("/forward") and bwd.endswith("/backward")
    for i in (0, 3, 4, 5, 10):
        alone = extract(m, x[i : i + 1])
        for name in whole.layers:
            np.testing.assert_array_equal(whole[name].mask[i], alone[name].mask[0])
            np.testing.assert_allclose(whole[name].inputs[i], alone[name].inputs[0], atol=1e-6, rtol=0)
            for sig in alone[name]:
                np.testing.assert_allclose(whole[name][sig][i], alone[name][sig][0], atol=1e-6, rtol=0, err_msg=sig)
    one = []
    extract(m, x[:3], progress=lambda done, total: one.append((done, total)))
    assert one == [(3, 3)]
    del m, whole, alone
    gc.collect()  # this model leaves the cache now, not inside the next test's count


def test_a_collected_model_frees_its_compiled_functions():
    m = _model("collected")
    extract(m, _x(3))
    ref = weakref.ref(m)
    before = cached_models()
    del m
    gc.collect()
    assert ref() is None, "the cache must not keep the model alive"
    assert cached_models() == before - 1


def test_threads_share_one_compiled_function(model):
    """Several threads extracting from one model at once: the same numbers as one by one, no extra trace."""
    xs = [_x(n, seed=n) for n in (5, 6, 7, 8)]  # buckets 8 (three of them) and 8: one shape
    expected = [extract(model, x)["lstm"]["cell_state"] for x in xs]
    traces = Extractor(model).compile_stats()["traces"]
    got: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i):
        try:
            for _ in range(3):
                got[i] = extract(model, xs[i])["lstm"]["cell_state"]
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(got[i], want)
    assert Extractor(model).compile_stats()["traces"] == traces


def test_layer_selection_and_dtype_are_separate_cache_entries(model):
    ex_all, ex_gru = Extractor(model), Extractor(model, layers=["gru"])
    x = _x(4)
    a = extract(model, x, layers=["gru"])
    assert a.layers == ["gru"]
    b = extract(model, x)
    np.testing.assert_array_equal(a["gru"]["hidden_state"], b["gru"]["hidden_state"])
    assert ex_gru._plan is not ex_all._plan  # the layer selection: its own compiled functions
    shapes_all, shapes_gru = ex_all.compile_stats()["shapes"], ex_gru.compile_stats()["shapes"]
    assert shapes_all and shapes_gru, (shapes_all, shapes_gru)
    # the dtype: a float16 batch gets its own entry beside the float32 one, which it leaves as it was (a model of
    # its own: the module's model has run both dtypes in other tests)
    ex = Extractor(_model("dtype_entries"))
    ex.run_batch(x)
    before = ex.compile_stats()["shapes"]
    ex.run_batch(x, dtype="float16")
    after = ex.compile_stats()["shapes"]
    assert {key[1] for key in before} == {"float32"}, before
    assert {key[1] for key in after} == {"float32", "float16"}, after
    assert {k: v for k, v in after.items() if k[1] == "float32"} == before


# -- models/compat.py ----------------------------------------------------------------------------------------------


def test_compat_finds_every_api_of_the_installed_keras():
    from gatelens.models import compat

    assert compat.missing_apis() == []
    assert compat.supported()


@pytest.mark.parametrize(
    "role, attr, api",
    [
        # Keras itself is left as it is (no test patches Keras): each private attribute is "renamed" as gatelens
        # sees it, the name compat looks for on the real, installed Keras classes
        ("standardize_inputs", "_standardize_inputs_v2", "Functional._standardize_inputs_v2"),
        ("run_through_graph", "_run_through_graph_v2", "Functional._run_through_graph_v2"),
        ("call_has_training_arg", "_call_takes_training", "Layer._call_takes_training"),
    ],
)
def test_a_renamed_private_keras_api_exits_1_naming_version_and_api(role, attr, api, tmp_path, monkeypatch, capsys):
    """A Keras that renamed a private attribute: `gatelens extract` exits 1 with one line naming the Keras
    version and the missing API (the real CLI entry point, a real .keras file through the safe loader)."""
    from gatelens.cli.main import main
    from gatelens.models import compat

    m = _model("compat_fault")
    m.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", _x(3))
    assert hasattr(compat._functional_class() if role != "call_has_training_arg" else keras.layers.Layer, attr) is False
    monkeypatch.setitem(compat.NAMES, role, attr)
    rc = main(["extract", str(tmp_path / "m.keras"), str(tmp_path / "x.npy"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert f"Keras {keras.__version__}" in lines[0] and api in lines[0], lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()
