"""Models that take raw text or raw values: tokenised by the model's own lookup layer.

A model whose first layer is a ``StringLookup``, a ``TextVectorization`` or an ``IntegerLookup`` is
split in two by :class:`TextFront`: the lookup layer itself (run eagerly by Keras on the strings or
values: string ops do not compile with XLA) and the rest of the model from the lookup's output
(``tail``, sharing the same layer objects and weights), which takes the token ids the lookup layer
returns. The extractor re-runs the tail on those ids; the tokens a run shows are therefore the
model's own tokens (after its standardisation and split), and the ids are exactly what the model's
Embedding receives.

Unknown tokens (mapped to the layer's OOV id) are counted and the most frequent are named
(:class:`UnknownTokens`), so a user sees which characters or words the model never learned.

Examples
--------
>>> from gatelens._examples import string_lookup_model
>>> front = TextFront.of(string_lookup_model())
>>> ids, unknown = front.tokenize(np.array([["a", "b", "z", "z"]], dtype=object))
>>> ids.tolist(), unknown.count, unknown.top
([[2, 3, 1, 1]], 2, [('z', 2)])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gatelens.errors import DataError, UnsupportedLayerError

log = logging.getLogger(__name__)

#: Keras layers that turn raw strings or values into token ids.
LOOKUP_CLASSES = ("StringLookup", "TextVectorization", "IntegerLookup")
#: How many of the most frequent unknown tokens are named.
TOP_UNKNOWN = 5


@dataclass
class UnknownTokens:
    """Tokens the model's vocabulary does not hold (they became its OOV token).

    Attributes
    ----------
    count : int
        Unknown tokens in all.
    n_tokens : int
        Tokens in all (the denominator of the rate).
    top : list of (str, int)
        The most frequent unknown tokens with their counts, most frequent first.
    distinct : int
        Distinct unknown tokens.

    Examples
    --------
    >>> u = UnknownTokens(count=3, n_tokens=10, top=[("\\t", 2), ("_", 1)], distinct=2)
    >>> u.describe()
    "3 of 10 tokens unknown (most frequent: '\\\\t' x2, '_' x1)"
    """

    count: int = 0
    n_tokens: int = 0
    top: list[tuple[str, int]] = field(default_factory=list)
    distinct: int = 0

    def describe(self) -> str:
        """One phrase for a summary line."""
        if not self.count:
            return f"no unknown tokens ({self.n_tokens} tokens)"
        names = ", ".join(f"{t!r} x{c}" for t, c in self.top)
        return f"{self.count} of {self.n_tokens} tokens unknown (most frequent: {names})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the manifest's ``unknown_tokens``)."""
        return {"count": self.count, "n_tokens": self.n_tokens, "distinct": self.distinct,
                "top": [[t, c] for t, c in self.top]}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UnknownTokens:
        """Inverse of :meth:`to_dict`."""
        return cls(int(d.get("count", 0)), int(d.get("n_tokens", 0)), [(str(t), int(c)) for t, c in d.get("top", [])],
                   int(d.get("distinct", 0)))  # fmt: skip

    @classmethod
    def count_tokens(cls, tokens: np.ndarray, unknown: np.ndarray, n_tokens: int, k: int = TOP_UNKNOWN):
        """Count ``tokens[unknown]`` (an array of token strings/values and a bool mask of the same shape).

        Examples
        --------
        >>> UnknownTokens.count_tokens(np.array(["a", "_", "_", "\\t"]), np.array([0, 1, 1, 1], bool), 4).top
        [('_', 2), ('\\t', 1)]
        """
        bad = np.asarray(tokens)[np.asarray(unknown, bool)]
        if not bad.size:
            return cls(0, int(n_tokens))
        values, counts = np.unique(np.asarray([_text(t) for t in bad.tolist()], dtype=object), return_counts=True)
        order = np.lexsort((values.astype(str), -counts))[:k]  # most frequent first, ties by token
        return cls(int(bad.size), int(n_tokens), [(str(values[i]), int(counts[i])) for i in order], len(values))


def _text(t: Any) -> str:
    return t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)


def _model_layers(model: Any) -> list[Any]:
    return [la for la in model.layers if type(la).__name__ != "InputLayer"]


class TextFront:
    """The lookup layer a model starts with, and the rest of the model (``tail``) that takes its ids.

    Build it with :meth:`of` (None when the model takes numbers or ids already).

    Attributes
    ----------
    layer : the Keras StringLookup / TextVectorization / IntegerLookup layer
    tail : keras.Model from the lookup's output (int64 ids) to the model's outputs, same layer objects
    vocabulary : list of str
        The layer's own vocabulary in id order (``layer.get_vocabulary()``; IntegerLookup values as text).
    oov_ids : list of int
        Ids of the out-of-vocabulary token(s).
    kind : {"tokens", "text", "values"}
        (N, T) token strings (StringLookup), one text per sequence (TextVectorization), (N, T) integers.

    Examples
    --------
    >>> from gatelens._examples import string_lookup_model, tiny_model
    >>> front = TextFront.of(string_lookup_model())       # StringLookup "lookup" -> Embedding -> LSTM
    >>> front.kind, front.layer.name, front.vocabulary, front.oov_ids, front.takes_strings
    ('tokens', 'lookup', ['', '[UNK]', 'a', 'b', 'c'], [1], True)
    >>> [layer.name for layer in front.tail.layers], front.tail.inputs[0].dtype
    (['embedding', 'lstm'], 'int64')
    >>> front.tokenize([["a", "c", "", ""]])[0].tolist()    # '' is the padding, id 0
    [[2, 4, 0, 0]]
    >>> TextFront.of(tiny_model()) is None                 # a model of float inputs has no text front
    True
    """

    def __init__(self, model: Any, layer: Any, tail: Any) -> None:
        self.input_shape = tuple(model.inputs[0].shape)  # not the model itself: a plan holding a front stays weak
        self.layer = layer
        self.tail = tail
        self.cls = type(layer).__name__
        self.kind = {"StringLookup": "tokens", "TextVectorization": "text", "IntegerLookup": "values"}[self.cls]
        self.vocabulary = [_text(t) for t in layer.get_vocabulary()]
        cfg = layer.get_config()
        oov = cfg.get("oov_token", -1 if self.cls == "IntegerLookup" else "[UNK]")
        self.oov_token = _text(oov)
        self.oov_ids = [i for i, t in enumerate(self.vocabulary) if t == self.oov_token]
        self.mask_token = None if cfg.get("mask_token") is None else _text(cfg.get("mask_token"))
        if self.cls == "TextVectorization":
            self.mask_token = ""  # TextVectorization pads with id 0 ('')
        self.sequence_length = cfg.get("output_sequence_length") if self.cls == "TextVectorization" else None

    @classmethod
    def of(cls, model: Any) -> TextFront | None:
        """The front of ``model`` when its first layer is a lookup layer fed by the model's input, else None.

        Raises
        ------
        UnsupportedLayerError
            A lookup layer sits elsewhere (inside a nested model, or after other layers), or the layer
            returns something other than integer ids (``output_mode`` other than ``"int"``).
        """
        import keras

        layers = _model_layers(model)
        lookups = [la for la in _all_layers(model) if type(la).__name__ in LOOKUP_CLASSES]
        if not lookups:
            return None
        first = layers[0] if layers else None
        if first is None or type(first).__name__ not in LOOKUP_CLASSES or len(lookups) > 1:
            where = ", ".join(f"{type(la).__name__} {la.name!r}" for la in lookups)
            raise UnsupportedLayerError(
                f"model {model.name!r}: gatelens reads text models whose first layer is one StringLookup, "
                f"TextVectorization or IntegerLookup fed by the model's input; this model has {where} elsewhere"
            )
        mode = first.get_config().get("output_mode", "int")
        if mode != "int":
            raise UnsupportedLayerError(
                f"model {model.name!r}: layer {first.name!r} ({type(first).__name__}) has output_mode={mode!r}; "
                "gatelens follows token ids into an Embedding, so it reads output_mode='int' only"
            )
        if isinstance(model, keras.Sequential):
            shape = tuple(first.output.shape[1:])
            tail = keras.Sequential([keras.Input(shape, dtype="int64"), *layers[1:]], name=f"{model.name}_ids")
        else:
            tail = keras.Model(first.output, model.outputs, name=f"{model.name}_ids")
        return cls(model, first, tail)

    @property
    def takes_strings(self) -> bool:
        """True for StringLookup and TextVectorization (False for IntegerLookup)."""
        return self.kind != "values"

    def check(self, x: Any) -> np.ndarray:
        """``x`` as the lookup layer takes it: an (N, T) array of strings/integers, or N texts."""
        want = self.input_shape
        if self.kind == "text":
            if isinstance(x, str):
                raise DataError("give a list of texts (one per sequence), not a single string")
            a = np.asarray(x, dtype=object)
            if a.ndim == 1:
                a = a[:, None]
            if a.ndim != 2 or a.shape[1] != 1:
                raise DataError(f"the model takes one text per sequence; got an array of shape {a.shape}")
        else:
            a = np.asarray(x, dtype=object if self.takes_strings else None)
            if a.ndim != len(want):
                raise DataError(f"input has shape {a.shape}, but the model expects {len(want)} dimensions {want}")
            for i, (got, exp) in enumerate(zip(a.shape[1:], want[1:]), start=1):
                if exp is not None and got != exp:
                    raise DataError(f"input has shape {a.shape}, but the model expects {want} (axis {i}: {exp})")
            if not self.takes_strings and not np.issubdtype(a.dtype, np.integer):
                raise DataError(f"the model's IntegerLookup {self.layer.name!r} takes integers, got {a.dtype} values")
        if a.shape[0] == 0:
            raise DataError("input has no sequences")
        if self.takes_strings:
            flat = a.reshape(-1)
            bad = next((i for i, v in enumerate(flat.tolist()) if not isinstance(v, (str, bytes))), None)
            if bad is not None:
                pos = np.unravel_index(bad, a.shape)
                raise DataError(
                    f"the model takes strings; sequence {pos[0]}"
                    + (f", step {pos[1]}" if self.kind == "tokens" else "")
                    + f" holds a {type(flat[bad]).__name__} ({flat[bad]!r})"
                )
        return a

    def tokenize(self, x: Any, *, batch_size: int = 4096) -> tuple[np.ndarray, UnknownTokens]:
        """Token ids (int64, (N, T)) from the model's own lookup layer, and the unknown tokens counted.

        Parameters
        ----------
        x : (N, T) token strings (StringLookup), N texts or (N, 1) texts (TextVectorization),
            (N, T) integers (IntegerLookup)
        batch_size : int
            Rows looked up per call of the layer.
        """
        import tensorflow as tf

        a = self.check(x)
        ids_parts, unknown_parts, raw_parts = [], [], []
        n_tokens = 0
        oov = np.asarray(self.oov_ids, np.int64)
        for s in range(0, a.shape[0], batch_size):
            xb = a[s : s + batch_size]
            t = tf.constant(xb.tolist(), dtype=tf.string) if self.takes_strings else tf.constant(xb, tf.int64)
            ids = np.asarray(self.layer(t)).astype(np.int64)
            if self.kind == "text":
                raw, kept = self._split(t, ids.shape[1])
                flat_ids = ids[kept]
                raw_parts.append(raw)
                unknown_parts.append(np.isin(flat_ids, oov))
                n_tokens += int(kept.sum())
            else:
                raw = np.asarray(xb).reshape(-1)
                flat_ids = ids.reshape(-1)
                real = np.ones(raw.shape, bool) if self.mask_token is None else np.asarray(
                    [_text(v) != self.mask_token for v in raw.tolist()], bool)  # fmt: skip
                raw_parts.append(raw)
                unknown_parts.append(np.isin(flat_ids, oov) & real & np.asarray(
                    [_text(v) != self.oov_token for v in raw.tolist()], bool))  # fmt: skip
                n_tokens += int(real.sum())
            ids_parts.append(ids)
        width = max(p.shape[1] for p in ids_parts)  # output_sequence_length=None: each batch its own longest
        ids = np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in ids_parts], axis=0)
        raw = np.concatenate(raw_parts) if raw_parts else np.zeros(0, object)
        unknown = np.concatenate(unknown_parts) if unknown_parts else np.zeros(0, bool)
        return ids, UnknownTokens.count_tokens(raw, unknown, n_tokens)

    def _split(self, t: Any, length: int) -> tuple[np.ndarray, np.ndarray]:
        """TextVectorization: the tokens the layer keeps (after its standardisation and split), flat, and
        the (N, length) mask of the id positions they fill."""
        import tensorflow as tf

        pre = getattr(self.layer, "_preprocess", None)  # Keras 3's standardise + split (no public API for it)
        if pre is None:  # pragma: no cover - a Keras without it: ids only, unknown tokens not named
            ids = np.asarray(self.layer(t))
            kept = ids != 0
            return np.full(int(kept.sum()), self.oov_token, dtype=object), kept
        tokens = pre(t)
        if isinstance(tokens, tf.Tensor):  # split=None: one token per text
            tokens = tf.RaggedTensor.from_tensor(tokens)
        tokens = tokens[:, :length]  # what output_sequence_length keeps
        lengths = tokens.row_lengths().numpy()
        kept = np.arange(length)[None, :] < lengths[:, None]
        raw = np.array([v.decode("utf-8", "replace") for v in tokens.flat_values.numpy().tolist()], dtype=object)
        return raw, kept

    def describe(self) -> str:
        """The layer in words, for messages."""
        return f"{self.cls} {self.layer.name!r}"


def _all_layers(model: Any) -> list[Any]:
    import keras

    out = []
    for la in model.layers:
        out.append(la)
        if isinstance(la, keras.Model):
            out.extend(_all_layers(la))
    return out


def record_unknown_tokens(
    manifest: dict[str, Any], front: TextFront | None, *, strict: bool = False, where: str = "the data"
) -> UnknownTokens | None:
    """Settle which count of unknown tokens a run records: the CLI and the dashboard both call this.

    The data loader counts the tokens a vocabulary file does not hold (``manifest["data"]["unknown_tokens"]``);
    a model with its own lookup layer (``front``) counts them itself when the extractor tokenises, and that
    count is the one that holds (``write_run`` records it as the manifest's ``unknown_tokens``). Without a
    front, the loader's count is moved to the manifest's ``unknown_tokens`` here. ``manifest`` is changed in
    place.

    Parameters
    ----------
    manifest : the caller's manifest (:func:`gatelens.analysis.store.run_manifest`)
    front : the extractor's :class:`TextFront`, or None
    strict : bool
        ``--strict-vocab``: a loader count above zero is a DataError.
    where : str
        The data file, for the message.

    Returns
    -------
    UnknownTokens or None
        The loader's count when it holds (no front), else None (the extractor's count comes in the run).

    Raises
    ------
    DataError
        ``strict`` and the loader met unknown tokens (exit code 2).

    Examples
    --------
    >>> m = {"data": {"n_oov": 1, "unknown_tokens": {"count": 1, "n_tokens": 4, "distinct": 1, "top": [["z", 1]]}}}
    >>> record_unknown_tokens(m, None).describe(), m["unknown_tokens"]["count"], "unknown_tokens" in m["data"]
    ("1 of 4 tokens unknown (most frequent: 'z' x1)", 1, False)
    """
    data = manifest.setdefault("data", {})
    loader = data.pop("unknown_tokens", None)
    if front is not None:  # the model's own layer tokenises: its count is the one that holds
        data.pop("n_oov", None)
        return None
    if loader is None:
        return None
    manifest["unknown_tokens"] = loader
    unknown = UnknownTokens.from_dict(loader)
    if strict and unknown.count:
        raise DataError(f"{where}: --strict-vocab: {unknown.describe()}")
    return unknown


def recorded_unknown_tokens(meta: dict[str, Any]) -> UnknownTokens | None:
    """The unknown tokens a run recorded (``trace.meta`` or its manifest), or None when it took no tokens.

    Examples
    --------
    >>> recorded_unknown_tokens({"unknown_tokens": {"count": 2, "n_tokens": 9, "top": [["_", 2]]}}).top
    [('_', 2)]
    >>> recorded_unknown_tokens({}) is None
    True
    """
    d = meta.get("unknown_tokens")
    return UnknownTokens.from_dict(d) if d else None
