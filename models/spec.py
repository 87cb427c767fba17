"""What a model takes as input: :class:`InputSpec`, read off a Keras model by :func:`input_spec`.

The data loaders (:mod:`gatelens.models.data`) check and cut a user's data against an ``InputSpec``;
they never look at the model itself, so an ``InputSpec`` can also be built by hand (no
TensorFlow needed). Text models take their vocabulary from a ``StringLookup`` or
``TextVectorization`` layer inside the model, or from a JSON file (``--vocab FILE``, or the
``<model stem>.vocab.json`` side-car the model zoo writes next to a model).

This is the only data module that imports Keras, and only inside :func:`input_spec`.

Examples
--------
>>> spec = InputSpec(n_steps=5, n_features=None, integer_tokens=True, vocabulary=["", "[UNK]", "a", "b"],
...                  oov_id=1, mask_zero=True, level="char", input_dim=4)
>>> spec.is_text, spec.input_shape
(True, (None, 5))
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatelens.errors import DataError, UnsupportedLayerError, UsageError

#: Tokenisation levels of text data.
LEVELS = ("char", "word")
#: The out-of-vocabulary token of the zoo, StringLookup and TextVectorization.
OOV_TOKEN = "[UNK]"
#: Word-level tokens (the zoo's): a run of word characters, a run of whitespace, or one other character.
WORD_PATTERN = r"\w+|\s+|[^\w\s]"
#: Whitespace-separated words (TextVectorization's ``split="whitespace"``).
WHITESPACE_PATTERN = r"\S+"
#: The word patterns gatelens accepts (a side-car's ``pattern`` must be one of them: no arbitrary regexes).
WORD_PATTERNS = (WORD_PATTERN, WHITESPACE_PATTERN)
#: Largest vocabulary file read (bytes).
MAX_VOCABULARY_BYTES = 256 * 1024 * 1024


class TokenList(list):
    """A vocabulary read from a file: a ``list`` of tokens in id order, plus what the file said about them.

    Attributes
    ----------
    level : {"char", "word"} or None
        The tokenisation level the file declares (None: not declared).
    oov_token : str or None
        The out-of-vocabulary token the file declares (None: not declared).
    pattern : str or None
        The word-level regular expression the file declares (one of :data:`WORD_PATTERNS`).
    path : str or None
        The file it was read from.

    Examples
    --------
    >>> t = TokenList(["a", "b"], level="char")
    >>> t == ["a", "b"], t.level
    (True, 'char')
    """

    def __init__(
        self,
        tokens=(),
        *,
        level: str | None = None,
        oov_token: str | None = None,
        pattern: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(tokens)
        self.level = level
        self.oov_token = oov_token
        self.pattern = pattern
        self.path = path


@dataclass(frozen=True)
class InputSpec:
    """The input a model takes, as far as the data loaders need it.

    Attributes
    ----------
    n_steps : int or None
        The model's time length T (None when variable).
    n_features : int or None
        Features per step F for float inputs (None for token inputs, or when any F is accepted).
    integer_tokens : bool
        True when the model starts with an Embedding: its input is (N, T) integer token ids.
    vocabulary : list of str or None
        Token strings in id order.
    oov_id : int or None
        The id of the out-of-vocabulary token (e.g. ``"[UNK]"``) when the vocabulary has one.
    mask_zero : bool
        The model's Embedding has ``mask_zero=True``: id 0 is padding.
    level : {"char", "word"} or None
        How text is tokenised (None for numeric models).
    input_dim : int or None
        The Embedding's ``input_dim``: valid ids are ``0 .. input_dim - 1``.
    string_input : {"tokens", "text"} or None
        The model takes strings: ``"tokens"`` (N, T) token strings looked up by a ``StringLookup``,
        ``"text"`` one string per sequence split by a ``TextVectorization``; None for numeric inputs.
    pattern : str or None
        The regular expression that cuts words at level ``"word"`` (default :data:`WORD_PATTERN`).
    input_shape : tuple or None
        The model's input shape with None for free axes (derived from the fields above when not given).
    string_layer : dict or None
        Configuration of the model's StringLookup/TextVectorization layer (class, name, split, standardize).

    Examples
    --------
    >>> InputSpec(n_steps=None, n_features=3).input_shape
    (None, None, 3)
    """

    n_steps: int | None
    n_features: int | None
    integer_tokens: bool = False
    vocabulary: list[str] | None = field(default=None, hash=False)
    oov_id: int | None = None
    mask_zero: bool = False
    level: str | None = None
    input_dim: int | None = None
    string_input: str | None = None
    pattern: str | None = None
    input_shape: tuple[int | None, ...] | None = None
    string_layer: dict[str, Any] | None = field(default=None, hash=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("n_steps", "n_features", "input_dim", "oov_id"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "oov_id" else 1)):
                raise ValueError(f"InputSpec.{name} must be a positive int or None, got {v!r}")
        if self.level is not None and self.level not in LEVELS:
            raise ValueError(f"InputSpec.level must be one of {LEVELS} or None, got {self.level!r}")
        if self.string_input not in (None, "tokens", "text"):
            raise ValueError(f"InputSpec.string_input must be 'tokens', 'text' or None, got {self.string_input!r}")
        if self.vocabulary is not None and self.oov_id is not None and self.oov_id >= len(self.vocabulary):
            raise ValueError(
                f"InputSpec.oov_id {self.oov_id} is outside the vocabulary ({len(self.vocabulary)} tokens)"
            )
        if self.input_shape is None:
            if self.string_input == "text":
                shape: tuple[int | None, ...] = (None, 1)
            elif self.is_text:
                shape = (None, self.n_steps)
            else:
                shape = (None, self.n_steps, self.n_features)
            object.__setattr__(self, "input_shape", shape)
        else:
            object.__setattr__(self, "input_shape", tuple(self.input_shape))

    @property
    def is_text(self) -> bool:
        """True for models that take tokens (ids or strings)."""
        return self.integer_tokens or self.string_input is not None

    def describe(self) -> str:
        """The expected input in words, for error messages.

        Examples
        --------
        >>> InputSpec(n_steps=20, n_features=3).describe()
        'float (N, T, F) = (N, 20, 3)'
        """
        t = "T" if self.n_steps is None else str(self.n_steps)
        if self.string_input == "tokens":
            return f"token strings (N, T) = (N, {t})"
        if self.string_input == "text":
            return "one text string per sequence"
        if self.integer_tokens:
            ids = f", ids 0..{self.input_dim - 1}" if self.input_dim else ""
            return f"integer token ids (N, T) = (N, {t}){ids}"
        if len(self.input_shape) == 2:
            return f"float (N, T) = (N, {t})"
        f = "F" if self.n_features is None else str(self.n_features)
        return f"float (N, T, F) = (N, {t}, {f})"


# -- vocabulary files --------------------------------------------------------------------------------


def read_vocabulary(path: str | os.PathLike) -> TokenList:
    """Read a vocabulary file: a JSON list of tokens in id order, or a zoo side-car object.

    The side-car form is ``{"tokens": [...], "level": "char", "oov_token": "[UNK]"}`` (``level``,
    ``oov_token``, ``padding_token`` and ``pattern`` are optional).

    Parameters
    ----------
    path : path to the JSON file

    Returns
    -------
    TokenList
        The tokens (a ``list`` of str) with the ``level``, ``oov_token`` and ``pattern`` the file declares.

    Raises
    ------
    DataError
        The file is missing, not JSON, not a list of unique strings, or declares a bad level/OOV token.

    Examples
    --------
    >>> import json, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "v.json")
    >>> with open(p, "w") as f:
    ...     json.dump({"tokens": ["", "[UNK]", "a"], "level": "char", "oov_token": "[UNK]"}, f)
    >>> v = read_vocabulary(p)
    >>> list(v), v.level, v.oov_token
    (['', '[UNK]', 'a'], 'char', '[UNK]')
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_VOCABULARY_BYTES:
            raise DataError(f"{path}: vocabulary file of {size} bytes is larger than {MAX_VOCABULARY_BYTES} bytes")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such vocabulary file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a JSON vocabulary file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the vocabulary file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: vocabulary file is not UTF-8 (byte {e.start}: {e.reason})") from None
    try:
        doc = json.loads(text)
    except ValueError as e:  # json.JSONDecodeError, RecursionError is not a ValueError
        raise DataError(f"{path}: not valid JSON: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON: nested too deeply") from None
    level = oov = pattern = None
    if isinstance(doc, dict):
        if "tokens" not in doc:
            raise DataError(f"{path}: a vocabulary object needs a 'tokens' list; it has keys {sorted(doc)[:10]}")
        level, oov, pattern = doc.get("level"), doc.get("oov_token"), doc.get("pattern")
        tokens = doc["tokens"]
    else:
        tokens = doc
    if not isinstance(tokens, list):
        raise DataError(
            f"{path}: expected a JSON list of tokens (strings in id order), got a JSON {_json_type(tokens)}"
        )
    if not tokens:
        raise DataError(f"{path}: the vocabulary is empty")
    for i, t in enumerate(tokens):
        if not isinstance(t, str):
            raise DataError(f"{path}: token {i} is a JSON {_json_type(t)} ({_short(t)}), expected a string")
    first: dict[str, int] = {}
    for i, t in enumerate(tokens):
        j = first.setdefault(t, i)
        if j != i:
            raise DataError(f"{path}: token {t!r} appears twice (ids {j} and {i}); tokens must be unique")
    if level is not None and level not in LEVELS:
        raise DataError(f"{path}: 'level' must be one of {list(LEVELS)}, got {_short(level)}")
    if oov is not None and (not isinstance(oov, str) or oov not in first):
        raise DataError(f"{path}: 'oov_token' {_short(oov)} is not one of the tokens")
    if pattern is not None and pattern not in WORD_PATTERNS:
        raise DataError(
            f"{path}: unsupported word 'pattern' {_short(pattern)}; gatelens splits words with one of {list(WORD_PATTERNS)}"
        )
    return TokenList(tokens, level=level, oov_token=oov, pattern=pattern, path=str(path))


#: The side-car files the model zoo writes beside ``<stem>.keras``: ``<stem>.<kind>.json``.
SIDECAR_KINDS = ("vocab", "card")


def sidecar_path(model_path: str | os.PathLike, kind: str) -> Path:
    """``<stem>.<kind>.json`` beside the model file ``<stem>.keras`` (``kind`` "vocab" or "card"): the one place
    side-car names are built.

    Examples
    --------
    >>> sidecar_path("data/demo/char_lstm.keras", "card").as_posix()
    'data/demo/char_lstm.card.json'
    """
    if kind not in SIDECAR_KINDS:
        raise UsageError(f"side-car kind must be one of {SIDECAR_KINDS}, got {kind!r}")
    p = Path(model_path)
    return p.with_name(f"{p.stem}.{kind}.json")


def sidecar_vocabulary_path(model_path: str | os.PathLike) -> Path | None:
    """The zoo's vocabulary side-car ``<model stem>.vocab.json`` next to a model file, if it exists.

    Examples
    --------
    >>> sidecar_vocabulary_path("/nonexistent/model.keras") is None
    True
    """
    side = sidecar_path(model_path, "vocab")
    return side if side.is_file() else None


def _json_type(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(v), "number")


def _short(v: Any, n: int = 40) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


# -- reading a Keras model ---------------------------------------------------------------------------


def _flat_layers(model: Any) -> list[Any]:
    """Layers in model order, nested models expanded (InputLayers dropped)."""
    import keras

    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(_flat_layers(layer))
        elif type(layer).__name__ != "InputLayer":
            out.append(layer)
    return out


def _dim(v: Any) -> int | None:
    return None if v is None else int(v)


def input_spec(model: Any, *, vocabulary: list[str] | None = None, level: str | None = None) -> InputSpec:
    """Read what ``model`` takes as input.

    Parameters
    ----------
    model : keras.Model
        A loaded model (see :func:`models.load_model`) with one input.
    vocabulary : list of str, optional
        Tokens in id order for a text model without its own vocabulary layer (``--vocab FILE``);
        a :class:`TokenList` also brings its level and OOV token.
    level : {"char", "word"}, optional
        Tokenisation of text (default: the vocabulary file's level, the TextVectorization's split, else ``"char"``).

    Returns
    -------
    InputSpec

    Raises
    ------
    DataError
        The vocabulary does not fit the model (more tokens than the Embedding takes, or it contradicts
        the model's own vocabulary layer), or ``level`` is not char/word.
    UnsupportedLayerError
        The model has more than one input.

    Examples
    --------
    >>> import keras
    >>> m = keras.Sequential([keras.Input((7,), dtype="int32"), keras.layers.Embedding(5, 2, mask_zero=True),
    ...                       keras.layers.LSTM(3)])
    >>> s = input_spec(m, vocabulary=["", "[UNK]", "a", "b", "c"])
    >>> s.n_steps, s.integer_tokens, s.mask_zero, s.oov_id, s.level, s.input_dim
    (7, True, True, 1, 'char', 5)
    """
    if level is not None and level not in LEVELS:
        raise DataError(f"--level must be one of {list(LEVELS)}, got {level!r}")
    inputs = list(getattr(model, "inputs", None) or [])
    if len(inputs) != 1:
        raise UnsupportedLayerError(
            f"model {getattr(model, 'name', '?')!r} has {len(inputs)} inputs; gatelens reads data for single-input models"
        )
    shape = tuple(_dim(d) for d in inputs[0].shape)
    dtype = str(inputs[0].dtype)
    layers = _flat_layers(model)
    first = layers[0] if layers else None
    first_cls = type(first).__name__ if first is not None else None
    embedding = next((la for la in layers if type(la).__name__ == "Embedding"), None)
    lookup = next((la for la in layers if type(la).__name__ in ("StringLookup", "TextVectorization")), None)
    mask_zero = bool(getattr(embedding, "mask_zero", False)) if embedding is not None else False
    input_dim = int(embedding.input_dim) if embedding is not None else None

    if lookup is not None and dtype == "string":
        return _string_spec(model, lookup, shape, embedding, mask_zero, input_dim, vocabulary, level)

    if first_cls == "Embedding":
        n_steps = shape[1] if len(shape) > 1 else None
        tokens = _check_vocabulary_size(vocabulary, input_dim, model)
        return InputSpec(
            n_steps=n_steps,
            n_features=None,
            integer_tokens=True,
            vocabulary=None if tokens is None else list(tokens),
            oov_id=_oov_id(tokens),
            mask_zero=mask_zero,
            level=level or getattr(tokens, "level", None) or "char",
            input_dim=input_dim,
            pattern=getattr(tokens, "pattern", None) or WORD_PATTERN,
            input_shape=shape,
        )
    n_steps = shape[1] if len(shape) > 1 else None
    n_features = shape[2] if len(shape) > 2 else None
    return InputSpec(n_steps=n_steps, n_features=n_features, input_shape=shape)


def _oov_id(tokens: list[str] | None) -> int | None:
    if tokens is None:
        return None
    oov = getattr(tokens, "oov_token", None) or OOV_TOKEN
    try:
        return list(tokens).index(oov)
    except ValueError:
        return None


def _check_vocabulary_size(tokens: list[str] | None, input_dim: int | None, model: Any) -> list[str] | None:
    if tokens is None:
        return None
    where = getattr(tokens, "path", None) or "the vocabulary"
    if not isinstance(tokens, TokenList):
        if not all(isinstance(t, str) for t in tokens):
            raise DataError(f"{where}: tokens must be strings")
        tokens = TokenList(tokens)
    if input_dim is not None and len(tokens) > input_dim:
        raise DataError(
            f"{where}: the vocabulary has {len(tokens)} tokens, but the Embedding of model "
            f"{getattr(model, 'name', '?')!r} takes ids 0..{input_dim - 1} ({input_dim} tokens)"
        )
    return tokens


def _string_spec(model, lookup, shape, embedding, mask_zero, input_dim, vocabulary, level) -> InputSpec:
    cls = type(lookup).__name__
    own = [str(t) for t in lookup.get_vocabulary()]
    if vocabulary is not None and list(vocabulary) != own:
        where = getattr(vocabulary, "path", None) or "the vocabulary given"
        raise DataError(
            f"{where}: model {getattr(model, 'name', '?')!r} has its own vocabulary ({cls} {lookup.name!r}, "
            f"{len(own)} tokens) and the vocabulary given differs; leave --vocab out"
        )
    cfg = lookup.get_config()
    oov_token = cfg.get("oov_token", OOV_TOKEN)
    n_oov = int(cfg.get("num_oov_indices", 1))
    oov_id = own.index(oov_token) if n_oov == 1 and oov_token in own else None
    info = {"class": cls, "name": lookup.name}
    if cls == "TextVectorization":
        split, standardize = cfg.get("split"), cfg.get("standardize")
        info.update(split=split, standardize=standardize, ngrams=cfg.get("ngrams"))
        lvl = {"character": "char", "whitespace": "word"}.get(split) if isinstance(split, str) else None
        if level is not None and lvl is not None and level != lvl:
            raise DataError(
                f"--level {level} contradicts the model's TextVectorization {lookup.name!r} (split={split!r})"
            )
        seq = cfg.get("output_sequence_length")
        return InputSpec(
            n_steps=None if seq is None else int(seq),
            n_features=None,
            vocabulary=own,
            oov_id=oov_id,
            mask_zero=mask_zero,
            level=lvl or level or "char",
            input_dim=input_dim,
            string_input="text",
            pattern=WHITESPACE_PATTERN,
            input_shape=shape,
            string_layer=info,
        )
    info.update(mask_token=cfg.get("mask_token"), num_oov_indices=n_oov)
    return InputSpec(
        n_steps=shape[1] if len(shape) > 1 else None,
        n_features=None,
        vocabulary=own,
        oov_id=oov_id,
        mask_zero=mask_zero,
        level=level or "char",
        input_dim=input_dim,
        string_input="tokens",
        pattern=WORD_PATTERN,
        input_shape=shape,
        string_layer=info,
    )
