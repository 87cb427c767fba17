"""Fuzzing the archive and config validator: whatever the bytes, it returns or refuses, never anything else.

Random zips (random member names, sizes, compression and contents), mutated valid archives (bytes
flipped, truncated, inserted) and random JSON configs (free-form and Keras-shaped, with allowed and
forbidden class names, modules and sizes). The validator must return normally or raise
UnsafeModelError / ModelFormatError, and import neither TensorFlow nor Keras. No example is timed (no Hypothesis
deadline: the tests never assert wall-clock times); the validator's work is bounded by its limits (sizes, counts),
which ``tests/test_security_models.py`` checks.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gatelens.errors import ModelFormatError, UnsafeModelError
from gatelens.models.safety import KERAS_MEMBERS, LoadLimits, inspect_keras_archive, parse_config_json, validate_config
from gatelens.models.worker import _PACKAGE_DIRS

ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(
    max_examples=50,
    deadline=None,  # no wall-clock limit per example (a shared 2-core machine): correctness only
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # the same examples on every run: a failure here reproduces
)
LIMITS = LoadLimits(max_config_bytes=256 * 1024, max_params=1_000_000)


def _layer(name: str, cls: str, config: dict, shape: list) -> dict:
    return {
        "module": "keras.layers",
        "class_name": cls,
        "config": {"name": name, "trainable": True, **config},
        "registered_name": None,
        "build_config": {"input_shape": shape},
    }


#: A config as Keras 3.15 writes it for Input((7, 3)) -> LSTM(4, return_sequences) -> Dense(2).
VALID_CONFIG = {
    "module": "keras",
    "class_name": "Sequential",
    "config": {
        "name": "sequential",
        "trainable": True,
        "dtype": {
            "module": "keras",
            "class_name": "DTypePolicy",
            "config": {"name": "float32"},
            "registered_name": None,
        },
        "layers": [
            {
                "module": "keras.layers",
                "class_name": "InputLayer",
                "config": {"batch_shape": [None, 7, 3], "dtype": "float32", "name": "input_layer"},
                "registered_name": None,
            },
            _layer(
                "lstm",
                "LSTM",
                {
                    "units": 4,
                    "return_sequences": True,
                    "activation": "tanh",
                    "recurrent_activation": "sigmoid",
                    "kernel_initializer": {
                        "module": "keras.initializers",
                        "class_name": "GlorotUniform",
                        "config": {"seed": None},
                        "registered_name": None,
                    },
                },
                [None, 7, 3],
            ),
            _layer("dense", "Dense", {"units": 2, "activation": "linear"}, [None, 7, 4]),
        ],
        "build_input_shape": [None, 7, 3],
    },
    "registered_name": None,
    "build_config": {"input_shape": [None, 7, 3]},
    "compile_config": {"optimizer": "adam", "loss": "mse"},
}


def _archive(members: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are part of the fuzz
        for name, data, method in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            zf.writestr(info, data)
    return buf.getvalue()


VALID_ARCHIVE = _archive(
    [
        ("metadata.json", b'{"keras_version": "3.15.1", "date_saved": "2026-01-01@00:00:00"}', zipfile.ZIP_STORED),
        ("config.json", json.dumps(VALID_CONFIG).encode(), zipfile.ZIP_STORED),
        ("model.weights.h5", b"\x89HDF\r\n\x1a\n" + bytes(200), zipfile.ZIP_STORED),
    ]
)


def _check_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.keras"
        path.write_bytes(data)
        try:
            archive = inspect_keras_archive(path, "fuzz.keras", LIMITS)
        except (UnsafeModelError, ModelFormatError) as e:
            assert str(e).startswith("fuzz.keras: "), e
        else:
            assert archive.report.params <= LIMITS.max_params


def _check_config(cfg) -> None:
    try:
        report = validate_config(cfg, "fuzz.keras", LIMITS)
    except (UnsafeModelError, ModelFormatError) as e:
        assert str(e).startswith("fuzz.keras"), e
    else:
        assert report.params <= LIMITS.max_params
        assert "compile_config" not in json.dumps(report.config)


def test_the_valid_base_archive_passes():
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ok.keras"
        path.write_bytes(VALID_ARCHIVE)
        archive = inspect_keras_archive(path, "ok.keras", LIMITS)
    assert archive.report.params == 4 * 4 * (3 + 4) + 16 + 4 * 2 + 2
    assert archive.report.params_verified


member_names = st.one_of(
    st.sampled_from(
        [*KERAS_MEMBERS, "assets/vocabulary.txt", "assets/", "../x", "/abs", "a/../b", "model.weights.npz"]
    ),
    st.text(min_size=1, max_size=30),
)
member_data = st.one_of(
    st.binary(max_size=3000),
    st.just(json.dumps(VALID_CONFIG).encode()),
    st.builds(lambda n: b"{" * n, st.integers(0, 5000)),
    st.builds(lambda n: b" " * n, st.integers(0, 2_000_000)),  # compresses well: ratio checks
)


@FUZZ
@given(
    st.lists(
        st.tuples(member_names, member_data, st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])),
        max_size=6,
    )
)
def test_random_zips(members):
    _check_bytes(_archive(members))


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(VALID_ARCHIVE) - 1), st.integers(0, 255)), max_size=20),
    st.integers(0, len(VALID_ARCHIVE)),
    st.binary(max_size=50),
)
def test_mutated_valid_archives(flips, cut, inserted):
    data = bytearray(VALID_ARCHIVE)
    for pos, byte in flips:
        data[pos] = byte
    data = bytes(data[:cut]) + inserted + bytes(data[cut:])
    _check_bytes(data)
    _check_bytes(bytes(data[: max(cut, 1)]))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=40,
)
class_names = st.sampled_from(
    ["Sequential", "Functional", "LSTM", "GRU", "Dense", "Embedding", "Bidirectional", "TimeDistributed", "RNN",
     "LSTMCell", "Conv1D", "Lambda", "function", "__lambda__", "__numpy__", "__keras_tensor__", "system", "Custom>Foo",
     "InputLayer", "Flatten", "Reshape", "BatchNormalization", "GlorotUniform", "DTypePolicy", "NotEqual"]
)  # fmt: skip
modules = st.sampled_from(
    [None, "keras", "keras.layers", "keras.src.models.functional", "keras.initializers", "os", "builtins",
     "keras.config", "keras.src.ops.numpy", 3]
)  # fmt: skip
sizes = st.one_of(st.integers(-3, 70_000), st.none(), st.booleans(), st.lists(st.integers(0, 10), max_size=2))
shapes = st.one_of(st.none(), st.lists(st.one_of(st.none(), st.integers(-2, 100_000)), max_size=4), json_values)

keras_like = st.deferred(
    lambda: st.fixed_dictionaries(
        {"class_name": class_names, "module": modules},
        optional={
            "registered_name": st.one_of(st.none(), class_names),
            "build_config": st.fixed_dictionaries({"input_shape": shapes}),
            "inbound_nodes": json_values,
            "config": st.fixed_dictionaries(
                {},
                optional={
                    "name": st.text(max_size=8),
                    "units": sizes,
                    "input_dim": sizes,
                    "output_dim": sizes,
                    "filters": sizes,
                    "kernel_size": sizes,
                    "activation": st.one_of(st.sampled_from(["tanh", "relu", "exec"]), json_values),
                    "layers": st.lists(keras_like, max_size=4),
                    "layer": keras_like,
                    "cell": keras_like,
                    "batch_shape": shapes,
                    "build_input_shape": shapes,
                    "target_shape": shapes,
                    "dims": shapes,
                    "axis": json_values,
                    "dtype": json_values,
                    "other": json_values,
                },
            ),
        },
    )
)


@FUZZ
@given(st.one_of(json_values, keras_like))
@example({"class_name": "__numpy__", "config": {"dtype": []}})  # unhashable values where names are expected
@example({"class_name": "function", "module": "builtins", "config": {"x": 1}})
@example({"class_name": ["Dense"], "config": {}})
@example({"class_name": "Sequential", "config": {"layers": [{"class_name": "Flatten", "config": {}}] * 3}})
def test_random_configs(cfg):
    _check_config(cfg)
    _check_bytes(
        _archive(
            [
                ("metadata.json", b"{}", zipfile.ZIP_STORED),
                ("config.json", json.dumps(cfg).encode(), zipfile.ZIP_DEFLATED),
                ("model.weights.h5", b"", zipfile.ZIP_STORED),
            ]
        )
    )


@FUZZ
@given(st.text(max_size=300), st.integers(0, 3000))
def test_random_json_text(text, depth):
    for doc in (text, "[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        try:
            cfg = parse_config_json(doc.encode("utf-8", "surrogatepass"), "fuzz.keras", LIMITS)
        except (UnsafeModelError, ModelFormatError):
            continue
        _check_config(cfg)


def test_validator_imports_neither_tensorflow_nor_keras(tmp_path):
    """Run in a fresh interpreter (``gatelens.models`` as a bare package, like the worker) on a real archive."""
    path = tmp_path / "ok.keras"
    path.write_bytes(VALID_ARCHIVE)
    code = (
        "import sys, types\n"
        "for i, name in ((1, 'gatelens'), (2, 'gatelens.models')):\n"
        "    pkg = types.ModuleType(name); pkg.__path__ = [sys.argv[i]]; sys.modules[name] = pkg\n"
        "from gatelens.models.safety import inspect_keras_archive; "
        "a = inspect_keras_archive(sys.argv[3]); "
        "bad = [m for m in ('tensorflow', 'keras', 'h5py', 'numpy') if m in sys.modules]; "
        "print(a.report.params, bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *_PACKAGE_DIRS, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["138", "[]"], out.stdout
