"""Untrusted models: every hostile file is refused before it can run code or exhaust memory; good ones load exactly.

Each hostile input is built here, from a real model Keras saved, by editing its archive, config or HDF5
file. Where the payload is live (a Lambda or a registered custom class that writes a canary file), a
control load with Keras itself shows the canary appearing, so the refusal is what keeps it away.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from gatelens.errors import ModelFormatError, UnsafeModelError
from gatelens.models import load_model
from gatelens.models.loading import load_model_with_report
from gatelens.models.safety import (
    ACTIVATIONS,
    CONSTRAINT_CLASSES,
    INITIALIZER_CLASSES,
    LAYER_CLASSES,
    OP_CLASSES,
    REGULARIZER_CLASSES,
    LoadLimits,
    iter_class_dicts,
)

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def read_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def write_members(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def with_config(src: Path, dst: Path, edit) -> Path:
    """Copy the .keras archive ``src`` to ``dst`` with ``edit(config)`` applied to config.json."""
    members = read_members(src)
    cfg = json.loads(members["config.json"])
    edit(cfg)
    members["config.json"] = json.dumps(cfg).encode()
    return write_members(dst, members)


def layer_named(cfg: dict, name: str) -> dict:
    for d in iter_class_dicts(cfg):
        if isinstance(d.get("config"), dict) and d["config"].get("name") == name:
            return d
    raise KeyError(name)


def own_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def assert_refused_cheaply(err: BaseException, limits: LoadLimits | None = None) -> None:
    """The refusal names the file; if the worker ran, it stayed under its memory limit."""
    limits = limits or LoadLimits()
    report = getattr(err, "load_report", None)
    if report is not None and report.worker_task:
        assert 0 < report.worker_peak_rss_bytes < limits.worker_memory_bytes
        assert report.worker_peak_vm_bytes <= limits.worker_memory_bytes


@pytest.fixture(scope="module")
def lstm_keras(tmp_path_factory) -> Path:
    """A small saved model: LSTM -> Dense (the base the hostile files are made from)."""
    model = keras.Sequential(
        [keras.Input((6, 3)), keras.layers.LSTM(4, return_sequences=True, name="lstm"), keras.layers.Dense(2)]
    )
    path = tmp_path_factory.mktemp("base") / "lstm.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def lstm_h5(tmp_path_factory) -> Path:
    model = keras.Sequential(
        [keras.Input((6, 3)), keras.layers.LSTM(4, return_sequences=True, name="lstm"), keras.layers.Dense(2)]
    )
    path = tmp_path_factory.mktemp("base_h5") / "lstm.h5"
    model.save(path)
    return path


# --------------------------------------------------------------------------------------------
# code in the config
# --------------------------------------------------------------------------------------------


def _lambda_model(canary: Path, tmp_path: Path, suffix: str) -> Path:
    # Keras serialises a lambda as marshalled bytecode (``__lambda__``); the path is a constant in it
    payload = eval(f"lambda x: (open({str(canary)!r}, 'w').close(), x)[1]")
    layer = keras.layers.Lambda(payload, name="lambda")
    model = keras.Sequential([keras.Input((3,)), layer])  # building the model runs it once
    canary.unlink()
    path = tmp_path / f"hostile{suffix}"
    model.save(path)
    assert not canary.exists()
    return path


def test_lambda_layer_whose_bytecode_writes_a_file_is_refused(tmp_path):
    canary = tmp_path / "canary"
    path = _lambda_model(canary, tmp_path, ".keras")
    # control: the payload is live (Keras runs it when asked to load unsafely)
    keras.saving.load_model(path, safe_mode=False)
    assert canary.exists()
    canary.unlink()

    with pytest.raises(
        UnsafeModelError, match=r"hostile\.keras: layer 'lambda' of class Lambda is not supported"
    ) as ei:
        load_model(path)
    assert not canary.exists()
    assert "supported: InputLayer" in str(ei.value)
    assert ei.value.load_report.worker_task == ""  # refused from the config: no process started, nothing loaded


def test_bytecode_hidden_in_an_allowed_layer_is_refused(tmp_path, lstm_keras):
    canary = tmp_path / "canary"
    lam = read_members(_lambda_model(canary, tmp_path, ".keras"))
    code = next(d for d in iter_class_dicts(json.loads(lam["config.json"])) if d["class_name"] == "__lambda__")

    def edit(cfg):
        layer_named(cfg, "lstm")["config"]["activation"] = code

    path = with_config(lstm_keras, tmp_path / "sneaky.keras", edit)
    with pytest.raises(UnsafeModelError, match=r"serialized Python bytecode"):
        load_model(path)
    assert not canary.exists()


def test_registered_custom_class_that_writes_a_file_is_refused(tmp_path):
    canary = tmp_path / "canary"

    @keras.saving.register_keras_serializable(package="GatelensTest")
    class Touch(keras.layers.Layer):
        def __init__(self, target="", **kwargs):
            super().__init__(**kwargs)
            self.target = target
            if target:
                Path(target).touch()

        def call(self, x):
            return x

        def get_config(self):
            return {**super().get_config(), "target": self.target}

    model = keras.Sequential([keras.Input((3,)), Touch(target=str(canary), name="touch")])
    canary.unlink()
    path = tmp_path / "custom.keras"
    model.save(path)
    # control: safe_mode does not stop a class registered in the loading process
    keras.saving.load_model(path, safe_mode=True)
    assert canary.exists()
    canary.unlink()

    with pytest.raises(UnsafeModelError, match=r"registered custom object 'GatelensTest>Touch'"):
        load_model(path)
    assert not canary.exists()


HOSTILE_EDITS = {
    "os.system as a layer": (
        lambda cfg, canary: cfg["config"]["layers"].insert(
            1,
            {
                "module": "os",
                "class_name": "system",
                "config": {"command": f"touch {canary}", "name": "evil"},
                "registered_name": None,
            },
        ),
        r"class 'system' from module 'os', which is not part of Keras",
    ),
    "builtins.exec as an initializer": (
        lambda cfg, canary: layer_named(cfg, "lstm")["config"].__setitem__(
            "kernel_initializer",
            {"module": "builtins", "class_name": "exec", "config": {"source": f"open({str(canary)!r}, 'w')"}},
        ),
        r"class 'exec' from module 'builtins'",
    ),
    "os.system as a function": (
        lambda cfg, canary: layer_named(cfg, "lstm")["config"].__setitem__(
            "activation",
            {"module": "os", "class_name": "function", "config": "system", "registered_name": "system"},
        ),
        r"references the function 'system' from module 'os'",
    ),
    "enable_unsafe_deserialization as a layer": (
        lambda cfg, canary: cfg["config"]["layers"].insert(
            1, {"module": "keras.config", "class_name": "enable_unsafe_deserialization", "config": {}}
        ),
        r"enable_unsafe_deserialization",
    ),
    "enable_unsafe_deserialization from keras.src": (
        lambda cfg, canary: cfg["config"]["layers"].insert(
            1,
            {
                "module": "keras.src.saving.serialization_lib",
                "class_name": "enable_unsafe_deserialization",
                "config": {"name": "x"},
            },
        ),
        r"enable_unsafe_deserialization",
    ),
    "enable_unsafe_deserialization as an activation function": (
        lambda cfg, canary: layer_named(cfg, "lstm")["config"].__setitem__(
            "recurrent_activation",
            {
                "module": "keras.config",
                "class_name": "function",
                "config": "enable_unsafe_deserialization",
                "registered_name": "enable_unsafe_deserialization",
            },
        ),
        r"references the function 'enable_unsafe_deserialization'",
    ),
    "enable_unsafe_deserialization as an activation name": (
        lambda cfg, canary: layer_named(cfg, "lstm")["config"].__setitem__(
            "activation", "enable_unsafe_deserialization"
        ),
        r"layer 'lstm': activation = 'enable_unsafe_deserialization' is not one of Keras's built-in activations",
    ),
    "unknown registered class": (
        lambda cfg, canary: layer_named(cfg, "lstm").__setitem__("registered_name", "Custom>Foo"),
        r"registered custom object 'Custom>Foo'",
    ),
    "registered name as class": (
        lambda cfg, canary: layer_named(cfg, "lstm").update(class_name="Custom>Foo", module=None),
        r"registered custom object 'Custom>Foo'",
    ),
    "Lambda naming a builtin function": (
        lambda cfg, canary: cfg["config"]["layers"].insert(
            1,
            {
                "module": "keras.layers",
                "class_name": "Lambda",
                "config": {
                    "name": "lam",
                    "function": {"module": "builtins", "class_name": "function", "config": "exec"},
                },
            },
        ),
        r"layer 'lam' of class Lambda is not supported",
    ),
    "TypeSpec reference": (
        lambda cfg, canary: layer_named(cfg, "lstm")["config"].__setitem__(
            "seed", {"class_name": "__typespec__", "spec_name": "TensorSpec", "module": "tensorflow", "config": []}
        ),
        r"TypeSpec",
    ),
    "Keras layer from a non-layer module": (
        lambda cfg, canary: layer_named(cfg, "lstm").__setitem__("module", "keras.src.utils.python_utils"),
        r"from module 'keras.src.utils.python_utils'",
    ),
    "unsupported Keras layer": (
        lambda cfg, canary: layer_named(cfg, "lstm").update(class_name="MultiHeadAttention"),
        r"of class 'MultiHeadAttention', which gatelens does not load",
    ),
    "object-dtype constant": (
        lambda cfg, canary: layer_named(cfg, "lstm")["config"].__setitem__(
            "seed", {"class_name": "__numpy__", "config": {"value": [1], "dtype": "object"}}
        ),
        r"constant of dtype 'object' refused",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_EDITS))
def test_config_naming_code_outside_keras_is_refused(case, tmp_path, lstm_keras):
    canary = tmp_path / "canary"
    edit, message = HOSTILE_EDITS[case]
    path = with_config(lstm_keras, tmp_path / "hostile.keras", lambda cfg: edit(cfg, canary))
    with pytest.raises(UnsafeModelError, match=message) as ei:
        load_model(path)
    assert str(ei.value).startswith(f"{path}: ")
    assert ei.value.load_report.worker_task == ""
    assert not canary.exists()


def test_layer_called_on_constants_only_is_refused(tmp_path):
    inp = keras.Input((3,))
    keras.Model(inp, keras.layers.Dense(2, name="dense")(inp)).save(tmp_path / "f.keras")

    def edit(cfg):
        node = layer_named(cfg, "dense")["inbound_nodes"][0]
        node["args"] = [{"class_name": "__numpy__", "config": {"value": [[1.0, 2.0, 3.0]], "dtype": "float32"}}]

    path = with_config(tmp_path / "f.keras", tmp_path / "const.keras", edit)
    with pytest.raises(UnsafeModelError, match=r"calls the layer on constants only"):
        load_model(path)


# --------------------------------------------------------------------------------------------
# the archive
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("member", ["../x", "/etc/x", "assets/../../x", "C:/x", "a\\..\\x", "./config.json"])
def test_member_names_pointing_outside_the_archive_are_refused(member, tmp_path, lstm_keras):
    members = read_members(lstm_keras) | {member: b"boom"}
    path = write_members(tmp_path / "slip.keras", members)
    with pytest.raises(UnsafeModelError, match=r"archive member .* refused"):
        load_model(path)
    assert not (tmp_path / "x").exists()


def test_duplicate_and_unexpected_members_are_refused(tmp_path, lstm_keras):
    members = read_members(lstm_keras)
    dup = tmp_path / "dup.keras"
    with zipfile.ZipFile(dup, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("config.json", b"{}")
    with pytest.raises(UnsafeModelError, match=r"'config.json' appears twice"):
        load_model(dup)
    extra = write_members(tmp_path / "extra.keras", members | {"payload.py": b"import os"})
    with pytest.raises(UnsafeModelError, match=r"unexpected archive member 'payload.py'"):
        load_model(extra)
    assets = write_members(tmp_path / "assets.keras", members | {"assets/x.txt": b"a"})
    with pytest.raises(UnsafeModelError, match=r"holds assets .* but no layer that keeps a vocabulary"):
        load_model(assets)


def test_not_a_model_archive_is_a_format_error(tmp_path, lstm_keras):
    notzip = tmp_path / "text.keras"
    notzip.write_text("hello")
    with pytest.raises(ModelFormatError, match=r"not a zip archive"):
        load_model(notzip)
    other = write_members(tmp_path / "other.keras", {"word/document.xml": b"<x/>"})
    with pytest.raises(ModelFormatError, match=r"not a Keras model archive: it lacks config.json"):
        load_model(other)
    npz = read_members(lstm_keras)
    npz["model.weights.npz"] = npz.pop("model.weights.h5")
    with pytest.raises(ModelFormatError, match=r"re-save the model"):
        load_model(write_members(tmp_path / "npz.keras", npz))
    with pytest.raises(ModelFormatError, match=r"no such model file"):
        load_model(tmp_path / "missing.keras")
    (tmp_path / "folder.keras").mkdir()
    with pytest.raises(ModelFormatError, match=r"folder.keras: a folder, not a model file"):  # was "no such model file"
        load_model(tmp_path / "folder.keras")
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(ModelFormatError, match=r"expected a .keras"):
        load_model(tmp_path / "m.pt")


def _deflated_member(path: Path, members: dict[str, bytes], name: str, size: int) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            if n != name:
                zf.writestr(n, data)
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as fh:
            chunk = b" " * MiB
            for _ in range(size // MiB):
                fh.write(chunk)
    return path


@pytest.mark.parametrize(("member", "mib"), [("config.json", 300), ("model.weights.h5", 200)])
def test_zip_bomb_is_refused_without_inflating_it(member, mib, tmp_path, lstm_keras):
    path = _deflated_member(tmp_path / "bomb.keras", read_members(lstm_keras), member, mib * MiB)
    assert path.stat().st_size < mib * MiB / 200
    before = own_peak_rss()
    with pytest.raises(UnsafeModelError, match=rf"'{member}' declares .* bytes") as ei:
        load_model(path)
    assert own_peak_rss() - before < 64 * MiB
    assert ei.value.load_report.worker_task == ""


def _lie_about_size(path: Path, member: str, size: int) -> None:
    """Patch the declared uncompressed size of ``member`` in its local header and central directory."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    struct.pack_into("<L", data, info.header_offset + 22, size)
    eocd = data.rfind(b"PK\x05\x06")
    cd_offset = struct.unpack_from("<L", data, eocd + 16)[0]
    pos = cd_offset
    while data[pos : pos + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack_from("<3H", data, pos + 28)
        if data[pos + 46 : pos + 46 + n].decode() == member:
            struct.pack_into("<L", data, pos + 24, size)
        pos += 46 + n + m + k
    path.write_bytes(bytes(data))


def test_zip_bomb_with_a_lying_header_is_read_only_up_to_its_declared_size(tmp_path, lstm_keras):
    members = read_members(lstm_keras)
    path = tmp_path / "liar.keras"
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            if n != "config.json":
                zf.writestr(n, data)
        zf.writestr("config.json", b'{"a": "' + b" " * (200 * MiB) + b'"}', compress_type=zipfile.ZIP_DEFLATED)
    _lie_about_size(path, "config.json", 1000)
    before = own_peak_rss()
    with pytest.raises((UnsafeModelError, ModelFormatError), match=r"liar\.keras"):
        load_model(path)
    assert own_peak_rss() - before < 64 * MiB


# --------------------------------------------------------------------------------------------
# size: parameters, memory, time
# --------------------------------------------------------------------------------------------


def test_lstm_with_50000_units_is_refused_before_anything_is_allocated(tmp_path, lstm_keras):
    path = with_config(
        lstm_keras, tmp_path / "huge.keras", lambda c: layer_named(c, "lstm")["config"].update(units=50_000)
    )
    before = own_peak_rss()
    with pytest.raises(
        UnsafeModelError, match=r"at least 10,00\d,\d{3},\d{3} parameters \(layer 'lstm' of class LSTM"
    ) as ei:
        load_model(path)
    assert own_peak_rss() - before < 64 * MiB
    assert ei.value.load_report.worker_task == ""
    # the cap is configurable
    small = replace(LoadLimits(), max_params=100)
    with pytest.raises(UnsafeModelError, match=r"up to 100 parameters"):
        load_model(lstm_keras, limits=small)


def test_huge_vocabulary_is_refused(tmp_path):
    model = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(10, 4, name="emb")])
    model.save(tmp_path / "e.keras")
    path = with_config(
        tmp_path / "e.keras",
        tmp_path / "vocab.keras",
        lambda c: layer_named(c, "emb")["config"].update(input_dim=10**9),
    )
    with pytest.raises(UnsafeModelError, match=r"layer 'emb' of class Embedding alone has 4,000,000,000"):
        load_model(path)


@pytest.mark.slow
def test_shape_lie_is_caught_by_the_worker_memory_limit(tmp_path):
    """A functional layer with no build_config, whose recorded input shape lies: the config says 4 inputs,
    the graph gives it 200,000. The estimate cannot see it; the worker builds it under RLIMIT_AS first."""
    inp = keras.Input((4,))
    keras.Model(inp, keras.layers.Dense(3, name="dense")(inp)).save(tmp_path / "d.keras")

    def edit(cfg):
        next(d for d in iter_class_dicts(cfg) if d["class_name"] == "InputLayer")["config"]["batch_shape"] = [
            None,
            200_000,
        ]
        dense = layer_named(cfg, "dense")
        dense["config"]["units"] = 20_000
        dense.pop("build_config")

    path = with_config(tmp_path / "d.keras", tmp_path / "lie.keras", edit)
    limits = replace(LoadLimits(), worker_memory_bytes=3 << 30)
    with pytest.raises(UnsafeModelError, match=r"lie\.keras: .*memory") as ei:
        load_model(path, limits=limits)
    report = ei.value.load_report
    assert report.worker_task == "keras_trial" and not report.params_verified
    assert 0 < report.worker_peak_rss_bytes < limits.worker_memory_bytes
    assert report.worker_peak_vm_bytes <= limits.worker_memory_bytes


def test_worker_timeout_and_limits_become_clear_errors(lstm_keras):
    with pytest.raises(UnsafeModelError, match=r"lstm\.keras: loading the model took longer than 0.01 s") as ei:
        load_model(lstm_keras, limits=replace(LoadLimits(), worker_timeout_s=0.01))
    assert ei.value.load_report.worker_task == "keras_weights"
    tiny = replace(LoadLimits(), worker_memory_bytes=64 * MiB)
    with pytest.raises(UnsafeModelError, match=r"lstm\.keras: .*(limit|allowed)"):
        load_model(lstm_keras, limits=tiny)


# --------------------------------------------------------------------------------------------
# HDF5
# --------------------------------------------------------------------------------------------


def test_h5_with_a_lambda_is_refused(tmp_path):
    canary = tmp_path / "canary"
    path = _lambda_model(canary, tmp_path, ".h5")
    keras.saving.load_model(path, safe_mode=False)  # control: the payload is live
    assert canary.exists()
    canary.unlink()
    with pytest.raises(UnsafeModelError, match=r"hostile\.h5: layer 'lambda' of class Lambda is not supported") as ei:
        load_model(path)
    assert not canary.exists()
    assert ei.value.load_report.worker_task == "h5"  # the HDF5 file is parsed only in the worker
    assert_refused_cheaply(ei.value)


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["data"] = np.arange(12, dtype="float32")
    return secret


def test_h5_with_an_external_link_is_refused(tmp_path, lstm_h5):
    secret = _secret(tmp_path)
    path = tmp_path / "link.h5"
    path.write_bytes(lstm_h5.read_bytes())
    with h5py.File(path, "a") as f:
        f["model_weights/lstm/evil"] = h5py.ExternalLink(str(secret), "/data")
    with pytest.raises(UnsafeModelError, match=r"link\.h5: HDF5 external link 'model_weights/lstm/evil'") as ei:
        load_model(path)
    assert_refused_cheaply(ei.value)


@pytest.mark.parametrize("kind", ["external link", "soft link", "external storage", "virtual dataset"])
def test_keras_weights_pointing_outside_the_file_are_refused(kind, tmp_path, lstm_keras):
    secret = _secret(tmp_path)
    members = read_members(lstm_keras)
    h5_path = tmp_path / "w.h5"
    h5_path.write_bytes(members["model.weights.h5"])
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.arange(12, dtype="float32").tobytes())
    with h5py.File(h5_path, "a") as f:
        g = f["layers/dense/vars"]
        if kind == "external link":
            g["2"] = h5py.ExternalLink(str(secret), "/data")
        elif kind == "soft link":
            g["2"] = h5py.SoftLink("/layers/lstm/cell/vars/0")
        elif kind == "external storage":
            g.create_dataset("2", shape=(12,), dtype="float32", external=[(str(raw), 0, 48)])
        else:
            layout = h5py.VirtualLayout(shape=(12,), dtype="float32")
            layout[:] = h5py.VirtualSource(str(secret), "data", shape=(12,))
            g.create_virtual_dataset("2", layout)
    members["model.weights.h5"] = h5_path.read_bytes()
    path = write_members(tmp_path / "w.keras", members)
    with pytest.raises(UnsafeModelError, match=r"w\.keras: HDF5 .*(link|external|virtual)") as ei:
        load_model(path)
    assert ei.value.load_report.worker_task == "keras_weights"
    assert_refused_cheaply(ei.value)


# --------------------------------------------------------------------------------------------
# the CLI (exit code 3, one line, no traceback)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_exits_3_on_an_unsafe_model(tmp_path):
    path = _lambda_model(tmp_path / "canary", tmp_path, ".keras")
    data = tmp_path / "x.npy"
    np.save(data, np.zeros((2, 6, 3), np.float32))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "gatelens", "verify", str(path), str(data)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 3, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("gatelens:")]
    assert len(lines) == 1 and path.name in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "canary").exists()


# --------------------------------------------------------------------------------------------
# good models load and predict exactly like the original
# --------------------------------------------------------------------------------------------


def _seq_lstm():
    m = keras.Sequential(
        [keras.Input((7, 3)), keras.layers.LSTM(5, return_sequences=True), keras.layers.LSTM(4), keras.layers.Dense(2)]
    )
    return m, np.random.default_rng(0).normal(size=(4, 7, 3)).astype("float32")


def _functional_gru_masked():
    inp = keras.Input((7,), dtype="int32")
    x = keras.layers.Embedding(12, 4, mask_zero=True)(inp)
    x = keras.layers.GRU(5, return_sequences=True)(x)
    x = keras.layers.GRU(3, reset_after=False)(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    ids = np.random.default_rng(1).integers(1, 12, size=(4, 7))
    ids[0, 5:] = 0
    return keras.Model(inp, out), ids.astype("int32")


def _bidirectional_time_distributed():
    m = keras.Sequential(
        [
            keras.Input((7, 3)),
            keras.layers.Masking(0.0),
            keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), merge_mode="concat"),
            keras.layers.TimeDistributed(keras.layers.Dense(2, activation="tanh")),
        ]
    )
    x = np.random.default_rng(2).normal(size=(3, 7, 3)).astype("float32")
    x[1, 4:] = 0.0
    return m, x


def _conv_simple_rnn():
    m = keras.Sequential(
        [
            keras.Input((9, 2)),
            keras.layers.Conv1D(4, 3, padding="causal", activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.SimpleRNN(3, return_sequences=True),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    return m, np.random.default_rng(3).normal(size=(3, 9, 2)).astype("float32")


def _nested_functional():
    inner = keras.Sequential(
        [keras.Input((6, 3)), keras.layers.LSTM(4, return_sequences=True), keras.layers.Dropout(0.2)], name="inner"
    )
    inp = keras.Input((6, 3))
    h = inner(inp)
    last = h[:, -1]
    x = keras.layers.RNN(keras.layers.LSTMCell(3))(keras.layers.LayerNormalization()(h))
    out = keras.layers.Dense(2)(keras.layers.Concatenate()([last, x]) + 1.0)
    return keras.Model(inp, out), np.random.default_rng(4).normal(size=(3, 6, 3)).astype("float32")


def _text_vectorization():
    tv = keras.layers.TextVectorization(split="character", output_sequence_length=8, standardize="lower")
    tv.adapt(np.array(["hello world", "gates keep and forget"]))
    inp = keras.Input((1,), dtype="string")
    x = keras.layers.Embedding(tv.vocabulary_size(), 4, mask_zero=True)(tv(inp))
    out = keras.layers.Dense(1)(keras.layers.LSTM(3)(x))
    return keras.Model(inp, out), np.array([["hello"], ["forget it"], ["gate"]])


GOOD = {
    "sequential LSTM": _seq_lstm,
    "functional GRU with Embedding mask": _functional_gru_masked,
    "Bidirectional + TimeDistributed + Masking": _bidirectional_time_distributed,
    "Conv1D + SimpleRNN": _conv_simple_rnn,
    "nested Sequential, RNN(LSTMCell), ops": _nested_functional,
    "TextVectorization with assets": _text_vectorization,
}


def _predict(model, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind == "U":  # string inputs go in as a string tensor
        import tensorflow as tf

        return model.predict(tf.constant(x), verbose=0)
    return model.predict(x, verbose=0)


def _randomise(model) -> None:
    rng = np.random.default_rng(5)
    model.set_weights([rng.uniform(0.05, 0.6, size=w.shape).astype(w.dtype) for w in model.get_weights()])


@pytest.mark.parametrize("case", list(GOOD))
def test_good_models_load_and_predict_identically(case, tmp_path):
    model, x = GOOD[case]()
    _randomise(model)
    path = tmp_path / "good.keras"
    model.save(path)
    loaded, report = load_model_with_report(path)
    assert report.worker_task == "keras_weights" and report.params_verified
    assert report.params == report.params_estimate == model.count_params()
    assert type(loaded) is type(model)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    for got, want in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_predict(loaded, x), _predict(model, x))


@pytest.mark.slow
def test_trial_path_and_legacy_h5_load_identically(tmp_path):
    model, x = _bidirectional_time_distributed()
    _randomise(model)
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")
    trial, report = load_model_with_report(tmp_path / "m.keras", limits=replace(LoadLimits(), fast_path_max_params=0))
    assert report.worker_task == "keras_trial"
    assert 0 < report.worker_peak_rss_bytes < LoadLimits().worker_memory_bytes
    np.testing.assert_array_equal(trial.predict(x, verbose=0), expected)
    legacy, report = load_model_with_report(tmp_path / "m.h5")
    assert report.worker_task == "h5" and report.params == model.count_params()
    np.testing.assert_array_equal(legacy.predict(x, verbose=0), expected)


def test_compiled_model_loads_without_its_training_config(tmp_path):
    model, x = _seq_lstm()
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)  # optimizer state is saved in model.weights.h5
    model.save(tmp_path / "trained.keras")
    loaded = load_model(tmp_path / "trained.keras")
    assert loaded.compiled is False
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


# --------------------------------------------------------------------------------------------
# the allowlist itself
# --------------------------------------------------------------------------------------------


def test_every_allowlisted_name_is_a_keras_builtin():
    from keras.src.ops import core, math, nn
    from keras.src.ops import numpy as knp

    for cls in LAYER_CLASSES:
        assert isinstance(getattr(keras.layers, cls), type), cls
    for cls in INITIALIZER_CLASSES:
        assert isinstance(getattr(keras.initializers, cls), type), cls
    for cls in REGULARIZER_CLASSES:
        assert isinstance(getattr(keras.regularizers, cls), type), cls
    for cls in CONSTRAINT_CLASSES:
        assert isinstance(getattr(keras.constraints, cls), type), cls
    for cls in OP_CLASSES:
        assert any(isinstance(getattr(mod, cls, None), type) for mod in (knp, nn, math, core)), cls
    for name in ACTIVATIONS:
        assert callable(keras.activations.get(name)), name
    for bad in ("Lambda", "ConvLSTM1D", "MultiHeadAttention", "TFSMLayer"):
        assert bad not in LAYER_CLASSES
