"""Scale-out on a real two-process Dask cluster: the same run store and the same tables as one process.

One module-scoped ``LocalCluster(n_workers=2, processes=True, threads_per_worker=1)`` serves every test.
Models are tiny and saved as real ``.keras`` files (the workers load them through the safe loader).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    from gatelens.models.distributed import local_cluster

    with local_cluster(2) as cluster, distributed.Client(cluster) as c:
        yield c


def _text_model(path: Path, seed: int = 0) -> Path:
    """Embedding (mask_zero) -> Bidirectional(LSTM) -> GRU -> Dense: text, masked, Bidirectional, LSTM and GRU."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((7,), dtype="int32"),
            keras.layers.Embedding(9, 3, mask_zero=True, name="emb"),
            keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True, name="lstm"), name="bi"),
            keras.layers.GRU(2, return_sequences=True, name="gru"),
            keras.layers.Dense(1, name="head"),
        ]
    )
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.7, size=w.shape).astype("float32") for w in model.get_weights()])
    model.save(path)
    return path


def _series_model(path: Path, seed: int = 0) -> Path:
    """A numeric series model: LSTM -> GRU -> Dense."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((6, 2)),
            keras.layers.LSTM(3, return_sequences=True, name="lstm"),
            keras.layers.GRU(2, return_sequences=True, name="gru"),
            keras.layers.Dense(1, name="head"),
        ]
    )
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.7, size=w.shape).astype("float32") for w in model.get_weights()])
    model.save(path)
    return path


def _tokens(n: int = 19, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 9, size=(n, 7)).astype(np.int32)
    lengths = rng.integers(2, 8, size=n)
    ids[np.arange(7)[None, :] >= lengths[:, None]] = 0  # padded tails: masked steps
    return ids


def _series(n: int = 21, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 6, 2)).astype(np.float32)


VOCAB = ["<pad>", "a", "b", "c", " ", ".", "d", "e", "f"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"text": _text_model(d / "text.keras"), "series": _series_model(d / "series.keras")}


def _inputs(kind: str) -> np.ndarray:
    return _tokens() if kind == "text" else _series()


def _arrays(run: Path) -> dict[str, np.ndarray]:
    import zarr

    root = zarr.open_group(store=str(run), mode="r")
    return {path: np.asarray(arr[...]) for path, arr in root.arrays()} | {
        f"{g}/{p}": np.asarray(a[...]) for g, grp in root.groups() for p, a in _walk(grp)
    }


def _walk(group):
    for p, a in group.arrays():
        yield p, a
    for g, sub in group.groups():
        for p, a in _walk(sub):
            yield f"{g}/{p}", a


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


@pytest.fixture(scope="module")
def runs(client, models, tmp_path_factory):
    """Per kind: the single-process run and the distributed run of the same model and data."""
    from gatelens.models.distributed import write_run_distributed
    from gatelens.models.extract import write_run
    from gatelens.models.loading import load_model

    d = tmp_path_factory.mktemp("runs")
    out = {}
    for kind, path in models.items():
        model = load_model(path)
        x = _inputs(kind)
        vocab = VOCAB if kind == "text" else None
        single = d / f"{kind}-single"
        write_run(model, x, single, batch_size=4, vocabulary=vocab)
        stats: dict = {}
        seen: list[tuple[int, int]] = []
        dist = d / f"{kind}-dist"
        target = f"file://{dist}" if kind == "series" else dist  # a file:// URL as well as a path
        write_run_distributed(
            model, x, target, client=client, model_path=path, batch_size=4, vocabulary=vocab,
            shard_sequences=8, stats=stats, progress=lambda a, b, seen=seen: seen.append((a, b)),
        )  # fmt: skip
        out[kind] = {"single": single, "dist": dist, "stats": stats, "progress": seen, "x": x}
    return out


@pytest.mark.parametrize("kind", ["text", "series"])
def test_distributed_run_is_byte_identical(runs, kind):
    r = runs[kind]
    single, dist = r["single"], r["dist"]
    a, b = _manifest(single), _manifest(dist)
    assert a["files"] == b["files"]  # every array chunk, metadata file and weight: the same sha256
    assert a["verification"] == b["verification"]
    assert set(a) == set(b) and all(a[k] == b[k] for k in a)
    sa, sb = _arrays(single), _arrays(dist)
    assert set(sa) == set(sb) and len(sa) > 10
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].tobytes() == sb[k].tobytes(), k
    for rel in a["files"]:  # the files themselves, byte for byte
        assert (single / rel).read_bytes() == (dist / rel).read_bytes(), rel
    st = r["stats"]
    assert st["workers"] == 2 and st["shards"] == -(-len(r["x"]) // 8)
    assert r["progress"][0] == (0, len(r["x"])) and r["progress"][-1] == (len(r["x"]), len(r["x"]))
    from gatelens.analysis.store import verify_run

    verify_run(dist)


def test_text_run_covers_masks_bidirectional_and_both_cells(runs):
    m = _manifest(runs["text"]["dist"])
    layers = {d["name"]: d["cell_type"] for d in m["layers"]}
    assert layers == {"bi/forward": "lstm", "bi/backward": "lstm", "gru": "gru"}
    from gatelens.analysis.store import open_run

    run = open_run(runs["text"]["dist"])
    mask = np.asarray(run["gru"].mask[...])
    assert (~mask).sum() > 10 and np.array_equal(mask, runs["text"]["x"] != 0)
    assert m["has_tokens"] and m["vocabulary"] == VOCAB


def test_workers_run_single_threaded(client, runs):
    def threads():
        import tensorflow as tf

        return (
            os.environ.get("OMP_NUM_THREADS"),
            os.environ.get("OPENBLAS_NUM_THREADS"),
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        )

    got = client.run(threads)
    assert len(got) == 2 and all(v == ("1", "1", 1, 1) for v in got.values())


def _assert_tables_equal(a, b) -> None:
    from gatelens.analysis.pipeline import Analysis

    for name in Analysis.tables():
        if name == "events":
            continue
        x, y = getattr(a, name), getattr(b, name)
        assert list(x.columns) == list(y.columns), name
        assert len(x) == len(y), name
        for col in x.columns:
            if pd.api.types.is_float_dtype(x[col]) and col not in ("min", "max", "n"):
                np.testing.assert_allclose(y[col].to_numpy(), x[col].to_numpy(), rtol=1e-9, atol=0, err_msg=name)
            else:  # counts, order statistics, labels: exactly
                assert x[col].equals(y[col]), (name, col)
    assert a.skipped == b.skipped


@pytest.mark.parametrize("kind", ["text", "series"])
def test_distributed_analysis_equals_single_process(client, runs, kind, tmp_path):
    from gatelens.analysis.distributed import analyze_distributed
    from gatelens.analysis.pipeline import analyze_run, load_analysis

    single = tmp_path / "single"
    dist = tmp_path / "dist"
    shutil.copytree(runs[kind]["single"], single)
    shutil.copytree(runs[kind]["dist"], dist)
    a = analyze_run(single)
    b = analyze_distributed(dist, client=client)
    assert len(a.units) and len(a.retention) and len(a.correlations) and len(a.half_lives)
    _assert_tables_equal(a, b)
    la, lb = load_analysis(single), load_analysis(dist)
    _assert_tables_equal(la, lb)
    ea, eb = pd.read_parquet(la.events_file), pd.read_parquet(lb.events_file)
    assert len(ea) > 0 and ea.equals(eb)
    assert not list((dist / "analysis").glob(".events-parts-*"))


def test_cli_extract_and_analyze_on_a_scheduler(client, models, runs, tmp_path, capsys):
    from gatelens.cli.main import main

    data = tmp_path / "x.npy"
    np.save(data, _series())
    addr = client.scheduler.address
    single, dist = tmp_path / "single", tmp_path / "dist"
    base = ["extract", str(models["series"]), str(data), "--batch-size", "4"]
    assert main([*base, "--out", str(single)]) == 0
    assert main([*base, "--out", f"file://{dist}", "--scheduler", addr]) == 0
    a, b = _manifest(single), _manifest(dist)
    assert a["files"] == b["files"] and a["verification"] == b["verification"]
    assert main(["analyze", str(single)]) == 0
    assert main(["analyze", str(dist), "--scheduler", addr]) == 0
    from gatelens.analysis.pipeline import load_analysis

    _assert_tables_equal(load_analysis(single), load_analysis(dist))
    assert main(["extract", *base[1:], "--out", str(dist), "--workers", "2", "--scheduler", addr]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def _worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def test_killed_worker_shard_is_retried_and_run_is_identical(client, tmp_path):
    """SIGKILL a worker process while it runs a shard: the shard reruns elsewhere; the run is the undisturbed one."""
    from gatelens.models.distributed import SHARD_PREFIX, write_run_distributed
    from gatelens.models.extract import write_run
    from gatelens.models.loading import load_model

    path = _series_model(tmp_path / "fresh.keras", seed=7)  # not cached on the workers: loading takes seconds
    model = load_model(path)
    x = _series(n=16, seed=3)
    write_run(model, x, tmp_path / "single", batch_size=4)
    killed: list[int] = []

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            busy = [w for w, keys in client.processing().items() if any(SHARD_PREFIX in str(k) for k in keys)]
            if busy:
                time.sleep(0.5)  # the shard is running (loading the model takes seconds)
                pid = _worker_pids(client)[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=killer)
    started = []

    def progress(done, total):
        if not started:
            started.append(1)
            thread.start()

    write_run_distributed(
        model, x, tmp_path / "dist", client=client, model_path=path, batch_size=4, shard_sequences=4,
        progress=progress,
    )  # fmt: skip
    thread.join()
    assert killed, "no worker was killed"
    assert _manifest(tmp_path / "single")["files"] == _manifest(tmp_path / "dist")["files"]
    client.wait_for_workers(2, timeout=120)  # the nanny restarted the killed worker
    assert killed[0] not in _worker_pids(client).values()


def test_failing_shard_fails_the_run_and_leaves_the_previous_run(client, runs, models, tmp_path, capsys):
    """A shard whose chunk file cannot be written (a directory stands there) fails on every try: exit 1, one
    line; the previous run at --out is intact; no complete-looking run appears."""
    from gatelens.analysis.store import verify_run
    from gatelens.cli.main import main

    out = tmp_path / "run"
    shutil.copytree(runs["series"]["single"], out)
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    data = tmp_path / "x.npy"
    np.save(data, _series())
    model = _series_model(tmp_path / "fresh.keras", seed=11)  # uncached: the workers take seconds to start
    planted: list[Path] = []

    def plant():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            partial = next(iter(tmp_path.glob(".run.partial-*")), None)
            if partial is not None and (partial / "layers/gru/update_gate/zarr.json").is_file():
                # sequences 16..20 (the 21st joins its batch): the last shard
                obstacle = partial / "layers/gru/update_gate/c/4/0/0"
                obstacle.mkdir(parents=True)
                planted.append(obstacle)
                return
            time.sleep(0.001)

    thread = threading.Thread(target=plant)
    thread.start()
    argv = ["extract", str(model), str(data), "--batch-size", "4", "--out", str(out)]
    code = main([*argv, "--scheduler", client.scheduler.address])
    thread.join()
    err = capsys.readouterr().err
    assert planted, (code, err)
    assert code == 1
    lines = err.strip().splitlines()
    assert (
        len(lines) == 1 and "sequences 16..20 failed on every try (3)" in lines[0] and "IsADirectoryError" in lines[0]
    )
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    verify_run(out)
    assert not list(tmp_path.glob(".run.partial-*"))  # the partial run is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.keras", "run", "x.npy"]  # no inputs left either


# --- models that take raw strings: tokenised once on the client, unknown tokens counted, --strict-vocab ---------

STRINGS = np.array([list("the ca"), list("zz tat"), list("sat xy"), list("a cat "), list("tea  s")], object)
UNKNOWN = {"z": 2, "x": 1, "y": 1}  # the characters of STRINGS outside the vocabulary of "the cat sat"


def _string_model(path: Path) -> Path:
    import keras

    lookup = keras.layers.StringLookup(name="lookup")
    lookup.adapt(np.array([list("the cat sat")]))  # adapted: the vocabulary goes to the archive's assets
    model = keras.Sequential(
        [keras.Input((6,), dtype="string"), lookup, keras.layers.Embedding(12, 3, name="emb"),
         keras.layers.LSTM(3, return_sequences=True, name="lstm")], name="sl")  # fmt: skip
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(scale=0.7, size=w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
                       for w in model.get_weights()])  # fmt: skip
    model.save(path)
    return path


def test_string_model_counts_unknown_tokens_and_honours_strict_vocab(client, tmp_path, capsys):
    from gatelens.cli.main import main
    from gatelens.errors import DataError
    from gatelens.models.distributed import write_run_distributed
    from gatelens.models.extract import write_run
    from gatelens.models.loading import load_model

    path = _string_model(tmp_path / "sl.keras")
    model = load_model(path)
    single, dist = tmp_path / "single", tmp_path / "dist"
    write_run(model, STRINGS, single, batch_size=2)
    write_run_distributed(model, STRINGS, dist, client=client, model_path=path, batch_size=2, shard_sequences=2)
    a, b = _manifest(single), _manifest(dist)
    assert a["files"] == b["files"] and a["vocabulary"] == b["vocabulary"]  # the same run, byte for byte
    assert b["tokenizer"] == a["tokenizer"] and b["tokenizer"]["class"] == "StringLookup"
    assert b["unknown_tokens"] == a["unknown_tokens"]
    u = b["unknown_tokens"]
    assert (u["count"], u["n_tokens"], u["distinct"]) == (sum(UNKNOWN.values()), STRINGS.size, len(UNKNOWN))
    assert [tuple(t) for t in u["top"]] == sorted(UNKNOWN.items(), key=lambda kv: (-kv[1], kv[0]))

    with pytest.raises(DataError, match="--strict-vocab: 4 of 30 tokens unknown"):
        write_run_distributed(model, STRINGS, tmp_path / "strict", client=client, model_path=path, strict_vocab=True)
    assert not (tmp_path / "strict").exists() and not list(tmp_path.glob(".strict*"))

    # the CLI on a scheduler: the summary line and --strict-vocab as in one process
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("on the mat sat cat")  # three windows of 6 characters; 'o', 'n', 'm' unknown
    addr = client.scheduler.address
    capsys.readouterr()
    assert main(["extract", str(path), str(corpus), "--out", str(tmp_path / "cli"), "--scheduler", addr]) == 0
    cli = _manifest(tmp_path / "cli")["unknown_tokens"]
    assert (cli["count"], cli["n_tokens"]) == (3, 18) and {t: c for t, c in cli["top"]} == {"o": 1, "n": 1, "m": 1}
    assert f"{cli['count']} of {cli['n_tokens']} tokens unknown" in capsys.readouterr().out
    strict = ["extract", str(path), str(corpus), "--out", str(tmp_path / "cli2"), "--scheduler", addr, "--strict-vocab"]
    assert main(strict) == 2
    assert "--strict-vocab" in capsys.readouterr().err and not (tmp_path / "cli2").exists()


def test_the_worker_keeps_the_last_two_models_loaded(tmp_path):
    """Each worker caches loaded models (a shard of the same run reuses them), at most CACHED_MODELS: a long-lived
    cluster that extracts many models does not hold every one of them."""
    import dataclasses

    from gatelens.analysis.store import sha256_file
    from gatelens.models import distributed as dist

    paths = [_series_model(tmp_path / f"m{i}.keras", seed=i) for i in range(3)]
    base = dist.ShardSpec(
        model_path="", model_sha256="", layers=None, partial="", groups={}, infos=(), n_sequences=1, chunk=1,
        batch=1, batch_size=1, dtype="float32", tolerance=1e-4, verify="sample", sample_size=1, with_tokens=False,
        with_x=False,
    )  # fmt: skip
    specs = [dataclasses.replace(base, model_path=str(p), model_sha256=sha256_file(p)) for p in paths]
    dist._CACHE.clear()
    first, _ = dist._extractor(specs[0])
    dist._extractor(specs[1])
    again, loaded = dist._extractor(specs[0])  # a hit: the same extractor, nothing loaded
    assert again is first and loaded == 0.0
    dist._extractor(specs[2])  # the least recently used (model 1) goes
    assert [k[0] for k in dist._CACHE] == [str(paths[0]), str(paths[2])]
    assert dist.CACHED_MODELS == 2
    dist._CACHE.clear()


def test_the_worker_keeps_the_last_runs_open(tmp_path):
    """The analysis worker's runs (opened lazily, once each) are bounded like its models: the last CACHED_RUNS."""
    from gatelens.analysis import distributed as adist
    from gatelens.models.extract import write_run
    from gatelens.models.loading import load_model

    model = load_model(_series_model(tmp_path / "m.keras"))
    x = np.random.default_rng(0).normal(size=(3, 6, 2)).astype(np.float32)
    runs = [str(write_run(model, x, tmp_path / f"run{i}").path) for i in range(adist.CACHED_RUNS + 1)]
    adist._TRACES.clear()
    first = adist._trace(runs[0])
    for r in runs[1:-1]:
        adist._trace(r)
    assert adist._trace(runs[0]) is first  # a hit, and now the most recent
    adist._trace(runs[-1])  # the least recently used (run 1) goes
    assert [k[0] for k in adist._TRACES] == [*runs[2:-1], runs[0], runs[-1]]
    adist._TRACES.clear()
