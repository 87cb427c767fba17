"""The run manifest's schema and its checksum of its own content.

``RUN/manifest.json`` is the index of a run: its shapes, layers and the sha256 of every file. A manifest
that is edited by hand, truncated or written by something else must not reach the analysis as it is (a
renamed ``layers`` key, a changed ``units`` gave ``KeyError``/broadcasting errors before). Every reader
(:func:`gatelens.analysis.store.read_manifest`) therefore

1. validates the document against the schema below (types, ranges, unique names, safe store keys and
   file paths), raising :class:`~gatelens.errors.RunStoreError` (exit code 2) that names the key;
2. checks ``manifest_sha256``, the sha256 of the manifest's own canonical JSON without that key, so that
   any edit is detected, also one that keeps to the schema;
3. (:func:`check_arrays`, when the run is opened) compares the shapes and dtypes the manifest states with
   the arrays' own Zarr metadata.

Keys gatelens does not know are allowed (a caller's ``manifest=`` extras); the checksum covers them too.

Examples
--------
>>> doc = {"format": "gatelens-run", "n_steps": 3}
>>> sealed = json.loads(seal(doc))
>>> check_seal(sealed, "m.json")
>>> sealed["n_steps"] = 4
>>> check_seal(sealed, "m.json")
Traceback (most recent call last):
...
gatelens.errors.RunStoreError: m.json: the manifest was changed after gatelens wrote it ...
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from gatelens.errors import RunStoreError

SEAL_KEY = "manifest_sha256"
CELL_TYPES = ("lstm", "gru", "simple_rnn")
MAX_UNITS = 1 << 20
MAX_DIM = 1 << 24
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.~-]{0,99}")


def _canonical(doc: Mapping[str, Any], default: Callable[[Any], Any] | None = None) -> bytes:
    body = {k: v for k, v in doc.items() if k != SEAL_KEY}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=default).encode()


def seal(doc: Mapping[str, Any], *, default: Callable[[Any], Any] | None = None) -> bytes:
    """The manifest's bytes with ``manifest_sha256`` set to the checksum of everything else in it.

    The checksum is taken of the document as it reads back (a JSON round trip first: tuples become lists).

    Examples
    --------
    >>> import hashlib
    >>> json.loads(seal({"a": (1, 2)}))["manifest_sha256"] == hashlib.sha256(b'{"a":[1,2]}').hexdigest()
    True
    """
    plain = json.loads(json.dumps(dict(doc), default=default))
    plain[SEAL_KEY] = hashlib.sha256(_canonical(plain)).hexdigest()
    return json.dumps(plain, indent=2).encode()


def check_seal(doc: Mapping[str, Any], where: str, *, default: Callable[[Any], Any] | None = None) -> None:
    """Raise :class:`RunStoreError` unless ``doc[manifest_sha256]`` is the checksum of the rest of ``doc``.

    Examples
    --------
    >>> check_seal(json.loads(seal({"n_steps": 3})), "m.json") is None     # as written: passes
    True
    >>> check_seal({"n_steps": 3}, "m.json")                                # never sealed
    Traceback (most recent call last):
    ...
    gatelens.errors.RunStoreError: m.json: key 'manifest_sha256' is missing or not a sha256; ...
    """
    got = doc.get(SEAL_KEY)
    if not isinstance(got, str) or not _HEX64.fullmatch(got):
        raise RunStoreError(f"{where}: key {SEAL_KEY!r} is missing or not a sha256; the manifest cannot be trusted")
    if hashlib.sha256(_canonical(doc, default)).hexdigest() != got:
        raise RunStoreError(
            f"{where}: the manifest was changed after gatelens wrote it (its content does not match "
            f"{SEAL_KEY}); extract the run again"
        )


def _fail(where: str, key: str, what: str) -> None:
    raise RunStoreError(f"{where}: key {key!r} {what}")


def _int(doc: Mapping[str, Any], key: str, where: str, lo: int, hi: int, path: str | None = None) -> int:
    v = doc.get(key)
    name = path or key
    if key not in doc:
        _fail(where, name, "is missing")
    if isinstance(v, bool) or not isinstance(v, int):
        _fail(where, name, f"must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        _fail(where, name, f"must be in {lo}..{hi}, got {v}")
    return v


def _typed(doc: Mapping[str, Any], key: str, where: str, types: tuple[type, ...], *, required: bool = True,
           path: str | None = None, nullable: bool = False) -> Any:  # fmt: skip
    name = path or key
    if key not in doc:
        if required:
            _fail(where, name, "is missing")
        return None
    v = doc[key]
    if v is None and nullable:
        return None
    if not isinstance(v, types) or (bool not in types and isinstance(v, bool) and int in types):
        want = " or ".join(t.__name__ for t in types) + (" or null" if nullable else "")
        _fail(where, name, f"must be {want}, got {type(v).__name__}")
    return v


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_manifest(doc: Mapping[str, Any], where: str) -> None:
    """Check a run manifest against the schema; raise :class:`RunStoreError` naming the first bad key.

    Examples
    --------
    >>> validate_manifest({"format": "gatelens-run", "format_version": 2}, "m.json")
    Traceback (most recent call last):
    ...
    gatelens.errors.RunStoreError: m.json: key 'n_sequences' is missing
    """
    from gatelens.analysis.store import DTYPES, FORMAT, FORMAT_VERSION

    if doc.get("format") != FORMAT:
        _fail(where, "format", f"must be {FORMAT!r}")
    version = _int(doc, "format_version", where, 1, 1 << 30)
    if version != FORMAT_VERSION:
        _fail(
            where,
            "format_version",
            f"is {version}; this gatelens reads format {FORMAT_VERSION} (extract the run again with this version)",
        )
    _int(doc, "n_sequences", where, 1, 1 << 40)
    _int(doc, "n_steps", where, 1, 1 << 40)
    if doc.get("dtype") not in DTYPES:
        _fail(where, "dtype", f"must be one of {list(DTYPES)}, got {doc.get('dtype')!r}")
    layers = _typed(doc, "layers", where, (list,))
    if not layers:
        _fail(where, "layers", "must list at least one layer")
    names: set[str] = set()
    keys: set[str] = set()
    for i, d in enumerate(layers):
        p = f"layers[{i}]"
        if not isinstance(d, dict):
            _fail(where, p, f"must be an object, got {type(d).__name__}")
        name = _typed(d, "name", where, (str,), path=f"{p}.name")
        if len(name) > 4096:
            _fail(where, f"{p}.name", "must be a name of at most 4096 characters")
        if name in names:
            _fail(where, f"{p}.name", f"repeats the layer name {name!r}")
        names.add(name)
        key = _typed(d, "store_key", where, (str,), path=f"{p}.store_key")
        parts = key.split("/")
        if not (
            1 <= len(parts) <= 2
            and _KEY_PART.fullmatch(parts[0])
            and ".." not in parts[0]
            and (len(parts) == 1 or parts[1] in ("forward", "backward"))
        ):
            _fail(where, f"{p}.store_key", f"is not a safe store key: {key!r}")
        if key.lower() in keys:
            _fail(where, f"{p}.store_key", f"repeats the store key {key!r}")
        keys.add(key.lower())
        if d.get("cell_type") not in CELL_TYPES:
            _fail(where, f"{p}.cell_type", f"must be one of {list(CELL_TYPES)}, got {d.get('cell_type')!r}")
        _int(d, "units", where, 1, MAX_UNITS, path=f"{p}.units")
        _int(d, "input_dim", where, 1, MAX_DIM, path=f"{p}.input_dim")
        for k in ("activation", "keras_class"):
            _typed(d, k, where, (str,), required=False, path=f"{p}.{k}")
        _typed(
            d, "recurrent_activation", where, (str,), required=False, nullable=True, path=f"{p}.recurrent_activation"
        )
        for k in ("use_bias", "go_backwards", "return_sequences"):
            _typed(d, k, where, (bool,), required=False, path=f"{p}.{k}")
        _typed(d, "reset_after", where, (bool,), required=False, nullable=True, path=f"{p}.reset_after")
        v = d.get("verification_max_abs_error")
        if v is not None and not _number(v):
            _fail(where, f"{p}.verification_max_abs_error", f"must be a number, got {type(v).__name__}")
    ver = _typed(doc, "verification", where, (dict,))
    for k, v in ver.items():
        if k not in names or not _number(v):
            _fail(where, f"verification.{k}", "must be a number for a layer of the run")
    for k in ("has_tokens", "has_x"):
        _typed(doc, k, where, (bool,))
    files = _typed(doc, "files", where, (dict,))
    for rel, digest in files.items():
        parts = rel.split("/")
        if rel.startswith("/") or "\\" in rel or any(q in ("", ".", "..") for q in parts) or len(rel) > 4096:
            _fail(where, f"files[{rel[:80]!r}]", "is not a path inside the run")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            _fail(where, f"files[{rel[:80]!r}]", "must be a sha256 (64 hex digits)")
    n = doc["n_sequences"]
    for k in ("vocabulary", "feature_names"):
        v = _typed(doc, k, where, (list,), required=False, nullable=True)
        if v is not None and not all(isinstance(t, str) for t in v):
            _fail(where, k, "must be a list of strings")
    for k in ("sequence", "start"):
        v = _typed(doc, k, where, (list,), required=False, nullable=True)
        if v is not None and (len(v) != n or not all(isinstance(t, int) and not isinstance(t, bool) for t in v)):
            _fail(where, k, f"must be a list of {n} integers (one per sequence)")
    for k in ("tolerance",):
        v = doc.get(k)
        if v is not None and (not _number(v) or not math.isfinite(v) or v < 0):
            _fail(where, k, "must be a number >= 0")
    if doc.get("batch_size") is not None:
        _int(doc, "batch_size", where, 1, 1 << 40)
    for k in ("model", "data", "options"):
        _typed(doc, k, where, (dict,), required=False, nullable=True)
    shape = _typed(doc, "model_input_shape", where, (list,), required=False, nullable=True)
    if shape is not None and not all(s is None or (isinstance(s, int) and not isinstance(s, bool)) for s in shape):
        _fail(where, "model_input_shape", "must be a list of integers or nulls")


def check_arrays(manifest: Mapping[str, Any], layers: Mapping[str, Any], tokens: Any, x: Any, where: str) -> None:
    """Check that every array of an opened run has the shape and dtype its manifest states.

    Examples
    --------
    >>> from gatelens._examples import example_trace
    >>> trace, _ = example_trace("lstm", n=2, steps=3, units=2)
    >>> layer = {"name": "lstm", "cell_type": "lstm", "units": 2, "input_dim": 1}
    >>> m = {"n_sequences": 2, "n_steps": 3, "dtype": "float32", "layers": [layer]}
    >>> check_arrays(m, trace.layer_traces, None, None, "m.json") is None
    True
    >>> check_arrays({**m, "n_steps": 4}, trace.layer_traces, None, None, "m.json")
    Traceback (most recent call last):
    ...
    gatelens.errors.RunStoreError: m.json: layers[0] ('lstm') input_gate has shape (2, 3, 2) but ... states (2, 4, 2); ...
    """
    import numpy as np

    n, t, dtype = manifest["n_sequences"], manifest["n_steps"], np.dtype(manifest["dtype"])

    def check(label: str, arr: Any, shape: tuple[int, ...], dt: Any) -> None:
        if tuple(arr.shape) != shape:
            raise RunStoreError(
                f"{where}: {label} has shape {tuple(arr.shape)} but the manifest states {shape}; the run is inconsistent"
            )
        if dt is not None and np.dtype(arr.dtype) != np.dtype(dt):
            raise RunStoreError(f"{where}: {label} is {arr.dtype} but the manifest states {np.dtype(dt)}")

    for i, d in enumerate(manifest["layers"]):
        lt = layers[d["name"]]
        u, f = d["units"], d["input_dim"]
        for s in lt.info.signals:
            check(f"layers[{i}] ({d['name']!r}) {s}", lt[s], (n, t, u), dtype)
        check(f"layers[{i}] mask", lt.mask, (n, t), bool)
        check(f"layers[{i}] input", lt.inputs, (n, t, f), np.float32)
        k = {"lstm": 4, "gru": 3, "simple_rnn": 1}[d["cell_type"]]
        w = lt.weights
        if "kernel" in w and tuple(w["kernel"].shape) != (f, k * u):
            raise RunStoreError(f"{where}: layers[{i}] kernel has shape {w['kernel'].shape}, expected {(f, k * u)}")
        if "recurrent_kernel" in w and tuple(w["recurrent_kernel"].shape) != (u, k * u):
            raise RunStoreError(f"{where}: layers[{i}] recurrent_kernel has shape {w['recurrent_kernel'].shape}")
    if tokens is not None:
        check("tokens", tokens, (n, t), np.int32)
    if x is not None:
        names = manifest.get("feature_names")
        if len(x.shape) != 3 or x.shape[:2] != (n, t):
            raise RunStoreError(f"{where}: x has shape {tuple(x.shape)}, expected ({n}, {t}, F)")
        if names is not None and len(names) != x.shape[2]:
            raise RunStoreError(f"{where}: key 'feature_names' lists {len(names)} names for {x.shape[2]} features")
