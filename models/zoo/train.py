"""Train Keras LSTM/GRU models on text, time series and the planted tasks; write each with a model card.

Every function here writes three things next to each other, atomically, the card last:

``<stem>.keras``
    The model, uncompiled, built only from layers the safe loader accepts (Input, Embedding,
    LSTM/GRU, Dropout, Dense) and taking fixed-length inputs: ``(T,)`` token ids or ``(T, F)`` floats.
``<stem>.vocab.json``
    For token models: the vocabulary side-car (see :class:`gatelens.models.zoo.datasets.Vocabulary`).
``<stem>.card.json``
    The model card: data source and sha256, split, command, seed, versions, training history and
    the held-out metrics beside their baselines. :func:`evaluate` recomputes those metrics from
    the files alone.

Training is deterministic given ``seed`` (``keras.utils.set_random_seed`` and TensorFlow's op
determinism, which stays enabled for the rest of the process). Keras runs with ``verbose=0``;
progress goes to an optional callback ``progress(done, total)`` counted in batches.

Time-series models take the CSV's raw values: they are trained on standardised data and the
standardisation is then folded exactly into the first recurrent layer's input kernel and bias and
into the output layer, so no normalisation layer is needed and the gates see the data as it is.

Examples
--------
>>> import tempfile, os
>>> out = os.path.join(tempfile.mkdtemp(), "tiny.keras")
>>> r = train_task("adding", out, units=2, epochs=1, n_train=64, n_val=32, n_test=32, task_params={"length": 8})
>>> sorted(r.card["metrics"])
['baseline_mse', 'fraction_within_0.04', 'mae', 'mse', 'n_sequences', 'r2', 'split', 'target_variance']
>>> sorted(p.name for p in r.model_path.parent.iterdir())
['tiny.card.json', 'tiny.keras']
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gatelens.errors import DataError, GatelensInputError
from gatelens.models.spec import sidecar_path
from gatelens.models.zoo import datasets as ds
from gatelens.models.zoo import tasks as tk

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
CARD_FORMAT = "gatelens.model_card/1"
CELLS = ("lstm", "gru")

#: Per-task defaults of :func:`train_task` (any of them can be overridden by keyword).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    # brackets: 8 units and an L1 penalty on the read-out, so the count is not held redundantly (docs/zoo.md)
    "brackets": dict(units=8, embedding_dim=8, epochs=40, n_train=6000, n_val=600, n_test=1000,
                     batch_size=64, learning_rate=1e-2, patience=8, chrono_init=False,
                     kernel_l1=None, recurrent_l1=None, readout_l1=3e-3),
    # recall: 4 units, chrono-initialised, L1 on the input kernel and (strongly) on the recurrent kernel, so one
    # unit holds the value behind its own forget gate (no loop through other units), shut at each mark (docs/zoo.md)
    "recall": dict(units=4, embedding_dim=None, epochs=100, n_train=6000, n_val=600, n_test=1000,
                   batch_size=64, learning_rate=1e-2, patience=12, chrono_init=True,
                   kernel_l1=1e-4, recurrent_l1=1e-2, readout_l1=None),
    "adding": dict(units=24, embedding_dim=None, epochs=60, n_train=8000, n_val=800, n_test=1000,
                   batch_size=64, learning_rate=1e-2, patience=8, chrono_init=False,
                   kernel_l1=None, recurrent_l1=None, readout_l1=None),
}  # fmt: skip


@dataclass(frozen=True)
class TrainResult:
    """What a training function wrote.

    Attributes
    ----------
    model_path, card_path : Path
    vocabulary_path : Path or None
        The side-car for token models, None for float-input models.
    card : dict
        The model card as written.
    """

    model_path: Path
    card_path: Path
    vocabulary_path: Path | None
    card: dict[str, Any]


def card_path(model_path: str | os.PathLike) -> Path:
    """``<stem>.card.json`` beside ``<stem>.keras``.

    Examples
    --------
    >>> card_path("data/demo/char_lstm.keras").as_posix()
    'data/demo/char_lstm.card.json'
    """
    return sidecar_path(model_path, "card")


def vocabulary_path(model_path: str | os.PathLike) -> Path:
    """``<stem>.vocab.json`` beside ``<stem>.keras``."""
    return sidecar_path(model_path, "vocab")


def read_card(model_path: str | os.PathLike) -> dict[str, Any]:
    """The model card of ``model_path`` (a ``.keras`` file or the card itself)."""
    p = Path(model_path)
    p = p if p.name.endswith(".card.json") else card_path(p)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{p}: no model card next to the model") from None
    except ValueError as e:
        raise DataError(f"{p}: not a JSON model card: {e}") from None


# -- shared machinery --------------------------------------------------------------------------------


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow's ops deterministic (process-wide)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()


class _QuietTensorFlow:
    """Silence TensorFlow's retracing warnings while Keras fits or predicts (one new function per model)."""

    def __enter__(self) -> None:
        self._logger = logging.getLogger("tensorflow")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: Any) -> None:
        self._logger.setLevel(self._level)


def _predict(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    with _QuietTensorFlow():
        return np.asarray(model.predict(x, batch_size=batch_size, verbose=0))


def _check_out(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.suffix != ".keras":
        raise GatelensInputError(f"the output model path must end in .keras, got {str(out)!r}")
    return out


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise GatelensInputError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_positive(**kw: Any) -> None:
    for k, v in kw.items():
        if v is None or int(v) < 1 or int(v) != v:
            raise GatelensInputError(f"{k} must be a positive integer, got {v!r}")


def _rnn(
    cell: str,
    units: int,
    *,
    return_sequences: bool,
    name: str,
    l1: float | None = None,
    recurrent_l1: float | None = None,
):
    import keras

    cls = keras.layers.LSTM if cell == "lstm" else keras.layers.GRU
    return cls(
        units,
        return_sequences=return_sequences,
        name=name,
        kernel_regularizer=_l1(l1),
        recurrent_regularizer=_l1(recurrent_l1),
    )


def chrono_initialize(model: Any, t_max: int, *, seed: int = 0) -> None:
    """Chrono initialisation (Tallec & Ollivier 2018, "Can recurrent neural networks warp time?").

    Every LSTM's forget-gate bias is set to ``log(u)``, ``u ~ U(1, t_max - 1)``, and its input-gate bias to
    the negative, so the units start with memory time scales spread up to ``t_max`` steps instead of ~1.
    A GRU's update-gate bias (its "keep" gate) gets the same ``log(u)``. Other weights are left as built.

    Examples
    --------
    >>> import keras, numpy as np
    >>> m = keras.Sequential([keras.Input((5, 1)), keras.layers.LSTM(3)])
    >>> chrono_initialize(m, 40)
    >>> b = m.layers[0].get_weights()[2]
    >>> bool(np.all((b[3:6] >= 0) & (b[3:6] <= np.log(39)))), bool(np.allclose(b[:3], -b[3:6]))
    (True, True)
    """
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not isinstance(layer, (keras.layers.LSTM, keras.layers.GRU)) or not layer.cell.use_bias:
            continue
        u = layer.cell.units
        weights = layer.get_weights()
        bias = weights[2]
        timescale = np.log(rng.uniform(1.0, t_max - 1.0, size=u)).astype(bias.dtype)
        if isinstance(layer, keras.layers.LSTM):  # gate order i, f, c, o
            bias[u : 2 * u] = timescale
            bias[:u] = -timescale
        else:  # GRU gate order z, r, h; bias (2, 3u) with reset_after
            bias[..., :u] = timescale if bias.ndim == 1 else timescale / 2  # input + recurrent bias sum
        layer.set_weights(weights)


def _recurrent_stack(
    x,
    *,
    cell: str,
    layers: int,
    units: int,
    dropout: float,
    last_sequences: bool,
    l1: float | None = None,
    recurrent_l1: float | None = None,
):
    """``layers`` recurrent layers named like Keras's defaults (``lstm``, ``lstm_1``, ...), each followed by
    Dropout(``dropout``) when ``dropout`` > 0 (active in training only)."""
    import keras

    for i in range(layers):
        suffix = "" if i == 0 else f"_{i}"
        x = _rnn(
            cell,
            units,
            return_sequences=last_sequences or i < layers - 1,
            name=cell + suffix,
            l1=l1,
            recurrent_l1=recurrent_l1,
        )(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name="dropout" + suffix)(x)
    return x


def build_text_model(
    vocab_size: int,
    window: int,
    *,
    cell: str = "lstm",
    layers: int = 2,
    units: int = 96,
    embedding_dim: int = 32,
    dropout: float = 0.0,
    name: str = "text_model",
):
    """Embedding(mask_zero) -> ``layers`` x LSTM/GRU(``units``, sequences) -> Dense(vocab, softmax) per step.

    Examples
    --------
    >>> m = build_text_model(10, 5, layers=1, units=3)
    >>> [layer.__class__.__name__ for layer in m.layers], m.output.shape
    (['InputLayer', 'Embedding', 'LSTM', 'Dense'], (None, 5, 10))
    """
    import keras

    _check_choice("cell", cell, CELLS)
    _check_positive(vocab_size=vocab_size, window=window, layers=layers, units=units, embedding_dim=embedding_dim)
    inp = keras.Input((window,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(vocab_size, embedding_dim, mask_zero=True, name="embedding")(inp)
    x = _recurrent_stack(x, cell=cell, layers=layers, units=units, dropout=dropout, last_sequences=True)
    out = keras.layers.Dense(vocab_size, activation="softmax", name="next_token")(x)
    return keras.Model(inp, out, name=name)


def build_series_model(
    window: int,
    n_features: int,
    *,
    cell: str = "lstm",
    layers: int = 1,
    units: int = 32,
    dropout: float = 0.0,
    sequence_output: bool = False,
    name: str = "forecaster",
):
    """(T, F) floats -> ``layers`` x LSTM/GRU -> Dense(1): one forecast, or one per step (``sequence_output``).

    Examples
    --------
    >>> build_series_model(7, 2, units=3).output.shape
    (None, 1)
    """
    import keras

    _check_choice("cell", cell, CELLS)
    _check_positive(window=window, n_features=n_features, layers=layers, units=units)
    inp = keras.Input((window, n_features), name="series")
    x = _recurrent_stack(x=inp, cell=cell, layers=layers, units=units, dropout=dropout, last_sequences=sequence_output)
    out = keras.layers.Dense(1, name="forecast")(x)
    return keras.Model(inp, out, name=name)


def _progress_callback(progress: Progress | None, total: int):
    import keras

    class _Cb(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.done = 0

        def on_train_batch_end(self, batch, logs=None):
            self.done += 1
            if progress is not None:
                progress(min(self.done, total), total)

    return _Cb()


def _fit(
    model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    *,
    loss: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    patience: int,
    progress: Progress | None,
) -> dict[str, Any]:
    import keras

    _check_positive(epochs=epochs, batch_size=batch_size, patience=patience)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, clipnorm=1.0), loss=loss)
    steps = -(-len(train[0]) // batch_size)
    total = steps * epochs
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    t0 = time.perf_counter()
    with _QuietTensorFlow():
        hist = model.fit(
            train[0], train[1], validation_data=val, epochs=epochs, batch_size=batch_size, shuffle=True,
            callbacks=[stop, _progress_callback(progress, total)], verbose=0,
        )  # fmt: skip
    seconds = time.perf_counter() - t0
    if progress is not None:
        progress(total, total)
    val_loss = [float(v) for v in hist.history["val_loss"]]
    return {
        "epochs": epochs,
        "epochs_run": len(val_loss),
        "best_epoch": int(np.argmin(val_loss)) + 1,
        "batch_size": batch_size,
        "optimizer": "Adam",
        "learning_rate": learning_rate,
        "clipnorm": 1.0,
        "loss": loss,
        "early_stopping": {"monitor": "val_loss", "patience": patience, "restore_best_weights": True},
        "history": {"loss": [float(v) for v in hist.history["loss"]], "val_loss": val_loss},
        "seconds": round(seconds, 1),
    }


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    try:
        from importlib.metadata import version

        gatelens = version("gatelens")
    except Exception:  # not installed (running from a checkout)
        gatelens = "unknown"
    return {
        "gatelens": gatelens,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _architecture(model) -> str:
    parts = []
    for layer in model.layers:
        cls = type(layer).__name__
        if cls == "InputLayer":
            continue
        if cls == "Embedding":
            parts.append(f"Embedding({layer.input_dim}, {layer.output_dim}, mask_zero={layer.mask_zero})")
        elif cls in ("LSTM", "GRU"):
            parts.append(f"{cls}({layer.units}, return_sequences={layer.return_sequences})")
        elif cls == "Dense":
            act = getattr(layer.activation, "__name__", "linear")
            parts.append(f"Dense({layer.units}{', ' + act if act != 'linear' else ''})")
        elif cls == "Dropout":
            parts.append(f"Dropout({layer.rate})")
        else:
            parts.append(cls)
    return " -> ".join(parts)


def _model_section(model, kind: str, task: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "task": task,
        "architecture": _architecture(model),
        "parameters": int(model.count_params()),
        "input": {"shape": list(model.inputs[0].shape), "dtype": str(model.inputs[0].dtype)},
        "output": {"shape": list(model.outputs[0].shape)},
        **extra,
    }


def _save(model, out: Path, card: dict[str, Any], vocabulary: ds.Vocabulary | None) -> TrainResult:
    """Write model (uncompiled, no optimizer state), side-car and card, each atomically, card last."""
    import keras

    from gatelens.analysis.store import atomic_write_bytes

    out = _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = model.get_config()
    for layer in config["layers"]:  # regularizers are training-only: the saved model carries none
        for key in layer["config"]:
            if key.endswith("_regularizer"):
                layer["config"][key] = None
    clean = keras.Model.from_config(config)  # uncompiled: no optimizer state in the file
    clean.set_weights(model.get_weights())
    tmp = out.with_name(f".{out.stem}.tmp-{uuid.uuid4().hex[:8]}.keras")
    try:
        clean.save(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    vpath = None
    if vocabulary is not None:
        vpath = vocabulary_path(out)
        atomic_write_bytes(vpath, (json.dumps(vocabulary.to_json(), ensure_ascii=False, indent=1) + "\n").encode())
        card["vocabulary"] = {"file": vpath.name, "size": len(vocabulary), **card.get("vocabulary", {})}
    card = {
        "format": CARD_FORMAT,
        "name": out.stem,
        "file": out.name,
        "sha256": ds.sha256_file(out),
        **card,
        "versions": _versions(),
    }
    cpath = card_path(out)
    atomic_write_bytes(cpath, (json.dumps(card, indent=2, ensure_ascii=False) + "\n").encode())
    log.info("wrote %s (%s)", out, card.get("metrics"))
    return TrainResult(out, cpath, vpath, card)


def _source(path: Path) -> dict[str, Any]:
    rel = ds.repo_relative(path)
    return {"path": rel, "sha256": ds.sha256_file(path), **ds.SOURCES.get(rel, {})}


def _command(name: str, kwargs: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k not in ("progress", "command"))
    return f"gatelens.models.zoo.train.{name}({args})"


# -- text ---------------------------------------------------------------------------------------------


def _text_splits(
    path: Path, level: str, max_chars: int | None, val_fraction: float, test_fraction: float
) -> dict[str, Any]:
    text = ds.read_text(path)
    if max_chars is not None:
        text = text[: int(max_chars)]
    tokens = ds.tokenize(text, level)
    a, b = ds.split_bounds(len(tokens), val_fraction, test_fraction)
    return {"tokens": tokens, "bounds": (a, b), "n": len(tokens)}


def _text_metrics(model, x: np.ndarray, y: np.ndarray, lengths: np.ndarray, unigram: np.ndarray) -> dict[str, Any]:
    """Bits per token (and per character) of ``model`` and of a unigram model on next-token pairs."""
    p = _predict(model, x, batch_size=128)
    p_true = np.take_along_axis(p, y[..., None].astype(np.int64), axis=-1)[..., 0].astype(np.float64)
    bits = -np.log2(np.clip(p_true, 1e-12, 1.0))
    ubits = -np.log2(unigram[y])
    chars = float(lengths.sum())
    return {
        "split": "test",
        "n_predictions": int(y.size),
        "bits_per_token": float(bits.mean()),
        "unigram_bits_per_token": float(ubits.mean()),
        "bits_per_char": float(bits.sum() / chars),
        "unigram_bits_per_char": float(ubits.sum() / chars),
        "accuracy": float((p.argmax(-1) == y).mean()),
        "oov_rate": float((y == 1).mean()),
    }


def _unigram(train_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Add-one smoothed unigram distribution over the vocabulary (padding excluded)."""
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + 1.0
    counts[0] = 0.0
    return counts / counts.sum()


def train_text(
    corpus: str | os.PathLike = ds.CORPUS_PATH,
    out: str | os.PathLike = "text_model.keras",
    *,
    level: str = "char",
    cell: str = "lstm",
    layers: int = 2,
    units: int = 96,
    embedding_dim: int = 32,
    window: int = 100,
    stride: int | None = None,
    dropout: float = 0.0,
    epochs: int = 30,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    patience: int = 3,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    min_count: int = 2,
    max_tokens: int | None = None,
    max_chars: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    command: str | None = None,
) -> TrainResult:
    """Train a next-token language model (character or word level) on a text file.

    The text is split contiguously into train | validation | test by tokens; the vocabulary
    (tokens seen ``min_count`` times in the training part, at most ``max_tokens``) is built from
    the training part only. Windows of ``window`` tokens start every ``stride`` tokens (default
    ``window``) in training and every ``window`` tokens in validation and test; each predicts the
    next token at every step, with the context reset at each window start.

    Parameters
    ----------
    corpus : path to a UTF-8 text file (default: the bundled Python source corpus)
    out : path of the ``.keras`` file to write
    level : {"char", "word"}
    cell : {"lstm", "gru"}
    layers, units, embedding_dim, window, stride, dropout : architecture and windowing
    epochs, batch_size, learning_rate, patience : training (early stopping on validation loss)
    val_fraction, test_fraction, min_count, max_tokens, max_chars : data
    seed : int
    progress : callable(done, total), optional
    command : str, optional
        Recorded in the card (the CLI passes its command line).

    Returns
    -------
    TrainResult
        The card's ``metrics`` hold held-out ``bits_per_token`` and ``bits_per_char`` beside the
        unigram baseline's.

    Examples
    --------
    >>> import tempfile, os
    >>> r = train_text(out=os.path.join(tempfile.mkdtemp(), "t.keras"), units=4, layers=1, window=20,
    ...                epochs=1, max_chars=3000)  # doctest: +SKIP
    >>> r.card["metrics"]["bits_per_char"] > 0  # doctest: +SKIP
    True
    """
    kwargs = dict(locals())
    _check_out(out)
    _check_choice("level", level, ds.LEVELS)
    _check_choice("cell", cell, CELLS)
    _check_positive(window=window, layers=layers, units=units, embedding_dim=embedding_dim)
    stride = int(stride or window)
    corpus = Path(corpus)
    sp = _text_splits(corpus, level, max_chars, val_fraction, test_fraction)
    tokens, (a, b) = sp["tokens"], sp["bounds"]
    vocab = ds.Vocabulary.from_tokens(tokens[:a], level, max_tokens=max_tokens, min_count=min_count)
    ids = vocab.ids(tokens)
    lengths = np.fromiter((len(t) for t in tokens), np.int64, count=len(tokens))
    xt, yt = ds.text_windows(ids[:a], window, stride)
    xv, yv = ds.text_windows(ids[a:b], window)
    xs, ys = ds.text_windows(ids[b:], window)
    for split, xx, lo, hi in (("training", xt, 0, a), ("validation", xv, a, b), ("test", xs, b, len(tokens))):
        if len(xx) == 0:
            raise DataError(
                f"{corpus}: the {split} part has {hi - lo} {level} tokens, fewer than window + 1 = {window + 1}; "
                "use a longer text, a shorter --window or a larger split fraction"
            )
    set_seed(seed)
    model = build_text_model(
        len(vocab), window, cell=cell, layers=layers, units=units, embedding_dim=embedding_dim, dropout=dropout,
        name=Path(out).stem,
    )  # fmt: skip
    training = _fit(
        model, (xt, yt), (xv, yv), loss="sparse_categorical_crossentropy", epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, patience=patience, progress=progress,
    )  # fmt: skip
    training["seed"] = seed
    test_lengths = ds.text_windows(lengths[b:], window)[1]
    metrics = _text_metrics(model, xs, ys, test_lengths, _unigram(ids[:a], len(vocab)))
    card = {
        "model": _model_section(
            model,
            "text",
            f"next-{'character' if level == 'char' else 'word'} prediction",
            cell=cell,
            layers=layers,
            units=units,
            embedding_dim=embedding_dim,
            dropout=dropout,
            window=window,
        ),  # fmt: skip
        "data": {
            "source": _source(corpus),
            "level": level,
            "max_chars": max_chars,
            "tokens": len(tokens),
            "split": {"unit": "tokens", "train": [0, a], "validation": [a, b], "test": [b, len(tokens)]},
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "window": window,
            "stride": stride,
            "windows": {"train": len(xt), "validation": len(xv), "test": len(xs)},
        },
        "vocabulary": {
            "level": level,
            "oov_token": ds.OOV_TOKEN,
            "padding_token": ds.PAD_TOKEN,
            "min_count": min_count,
            "max_tokens": max_tokens,
        },  # fmt: skip
        "training": training,
        "metrics": metrics,
        "command": command or _command("train_text", kwargs),
    }
    return _save(model, Path(out), card, vocab)


def _evaluate_text(model, card: dict[str, Any], vocab: ds.Vocabulary) -> dict[str, Any]:
    d = card["data"]
    path = ds.resolve_data_path(d["source"]["path"])
    sp = _text_splits(path, d["level"], d["max_chars"], d["val_fraction"], d["test_fraction"])
    tokens, (a, b) = sp["tokens"], sp["bounds"]
    ids = vocab.ids(tokens)
    lengths = np.fromiter((len(t) for t in tokens), np.int64, count=len(tokens))
    xs, ys = ds.text_windows(ids[b:], d["window"])
    return _text_metrics(model, xs, ys, ds.text_windows(lengths[b:], d["window"])[1], _unigram(ids[:a], len(vocab)))


# -- time series -----------------------------------------------------------------------------------------


def _series_data(path: Path, columns: Sequence[str] | None, target: str | None) -> tuple[np.ndarray, list[str], int]:
    values, names = ds.read_series_csv(path, columns)
    target = target or names[0]
    if target not in names:
        raise DataError(f"{path}: the target column {target!r} is not among the input columns {names}")
    return values, names, names.index(target)


def _fold_standardisation(model, mean: np.ndarray, std: np.ndarray, y_mean: float, y_std: float) -> None:
    """Make a model trained on ``(x - mean) / std`` -> ``(y - y_mean) / y_std`` take and give raw values.

    For the first recurrent layer, ``W (x - m) / s + b = (W / s) x + (b - (m / s) W)``; for the
    output layer, ``y_std (V h + c) + y_mean = (y_std V) h + (y_std c + y_mean)``.
    """
    rnn = next(layer for layer in model.layers if type(layer).__name__ in ("LSTM", "GRU"))
    cell = rnn.cell
    kernel = cell.kernel.numpy().astype(np.float64)
    bias = cell.bias.numpy().astype(np.float64)
    shift = (mean / std) @ kernel
    if bias.ndim == 2:  # GRU with reset_after: row 0 is the input bias
        bias[0] -= shift
    else:
        bias -= shift
    cell.kernel.assign((kernel / std[:, None]).astype(np.float32))
    cell.bias.assign(bias.astype(np.float32))
    dense = model.layers[-1]
    dense.kernel.assign((dense.kernel.numpy().astype(np.float64) * y_std).astype(np.float32))
    dense.bias.assign((dense.bias.numpy().astype(np.float64) * y_std + y_mean).astype(np.float32))


def _series_metrics(model, x: np.ndarray, y: np.ndarray, naive: np.ndarray, train_mean: float) -> dict[str, Any]:
    pred = _predict(model, x.astype(np.float32)).reshape(y.shape).astype(np.float64)
    err = pred - y
    mae = float(np.abs(err).mean())
    naive_mae = float(np.abs(naive - y).mean())
    return {
        "split": "test",
        "n_windows": int(len(x)),
        "n_predictions": int(y.size),
        "mae": mae,
        "rmse": float(np.sqrt((err**2).mean())),
        "naive_last_value_mae": naive_mae,
        "naive_last_value_rmse": float(np.sqrt(((naive - y) ** 2).mean())),
        "train_mean_mae": float(np.abs(train_mean - y).mean()),
        "mae_skill_vs_naive": 1.0 - mae / naive_mae if naive_mae > 0 else None,
    }


def _series_splits(values, ti, window, horizon, mode, val_fraction, test_fraction):
    x, y, last = ds.series_windows(values, values[:, ti], window, horizon=horizon, mode=mode)
    a, b = ds.split_bounds(len(values), val_fraction, test_fraction)
    if mode == "one":
        naive = values[last - horizon, ti]
    else:
        idx = (last - horizon - window + 1)[:, None] + np.arange(window)[None, :]
        naive = values[idx, ti]
    parts = {"train": last < a, "validation": (last >= a) & (last < b), "test": last >= b}
    return x, y, naive, parts, (a, b)


def train_timeseries(
    csv: str | os.PathLike = ds.SUNSPOTS_PATH,
    out: str | os.PathLike = "forecaster.keras",
    *,
    columns: Sequence[str] | None = None,
    target: str | None = None,
    mode: str = "one",
    horizon: int = 1,
    cell: str = "lstm",
    layers: int = 1,
    units: int = 32,
    window: int = 24,
    dropout: float = 0.0,
    epochs: int = 300,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    patience: int = 30,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    progress: Progress | None = None,
    command: str | None = None,
) -> TrainResult:
    """Train a forecaster on a CSV series: sequence-to-one (``mode="one"``) or sequence-to-sequence.

    Windows of ``window`` steps (stride 1) of the input ``columns`` (default: every numeric column
    but a ``year``/``date``/``time``/``month`` index) forecast ``target`` (default: the first input
    column) ``horizon`` steps after the window's last step (``"one"``) or after each step
    (``"sequence"``). The series is split contiguously by the time of the forecast target; the
    standardisation uses the training part only and is folded into the weights, so the saved
    model takes raw values.

    Returns
    -------
    TrainResult
        The card's ``metrics`` hold the held-out ``mae`` beside ``naive_last_value_mae``, the error
        of forecasting the last observed value.

    Examples
    --------
    >>> import tempfile, os
    >>> r = train_timeseries(out=os.path.join(tempfile.mkdtemp(), "f.keras"), units=4, epochs=1)  # doctest: +SKIP
    >>> r.card["metrics"]["mae"] > 0  # doctest: +SKIP
    True
    """
    kwargs = dict(locals())
    _check_out(out)
    _check_choice("mode", mode, ("one", "sequence"))
    _check_choice("cell", cell, CELLS)
    _check_positive(window=window, horizon=horizon, layers=layers, units=units)
    csv = Path(csv)
    values, names, ti = _series_data(csv, columns, target)
    try:
        x, y, naive, parts, (a, b) = _series_splits(values, ti, window, horizon, mode, val_fraction, test_fraction)
    except DataError as e:
        raise DataError(f"{csv}: {e}; use a longer series or a shorter --window") from None
    for split, m in parts.items():
        if not m.any():
            raise DataError(
                f"{csv}: {len(values)} steps leave no {split} window for window {window} and horizon {horizon}; "
                "use a longer series or a shorter --window"
            )
    mean, std = values[:a].mean(0), values[:a].std(0)
    std = np.where(std > 0, std, 1.0)
    y_mean, y_std = float(mean[ti]), float(std[ti])

    def norm(p):
        return ((x[p] - mean) / std).astype(np.float32), ((y[p] - y_mean) / y_std).astype(np.float32)

    set_seed(seed)
    model = build_series_model(
        window, len(names), cell=cell, layers=layers, units=units, dropout=dropout,
        sequence_output=mode == "sequence", name=Path(out).stem,
    )  # fmt: skip
    training = _fit(
        model, norm(parts["train"]), norm(parts["validation"]), loss="mse", epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, patience=patience, progress=progress,
    )  # fmt: skip
    training["seed"] = seed
    training["standardisation"] = {"mean": mean.tolist(), "std": std.tolist(), "folded_into_weights": True}
    _fold_standardisation(model, mean, std, y_mean, y_std)
    t = parts["test"]
    metrics = _series_metrics(model, x[t], y[t], naive[t], float(values[:a, ti].mean()))
    card = {
        "model": _model_section(
            model,
            "timeseries",
            f"forecast {names[ti]!r} {horizon} step(s) ahead "
            + ("after the window" if mode == "one" else "at every step"),
            cell=cell,
            layers=layers,
            units=units,
            dropout=dropout,
            window=window,
            mode=mode,
            horizon=horizon,
            input_columns=names,
            target=names[ti],
        ),  # fmt: skip
        "data": {
            "source": _source(csv),
            "columns": names,
            "target": names[ti],
            "steps": len(values),
            "split": {
                "unit": "steps (time of the forecast target)",
                "train": [0, a],
                "validation": [a, b],
                "test": [b, len(values)],
            },  # fmt: skip
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "window": window,
            "horizon": horizon,
            "mode": mode,
            "windows": {k: int(m.sum()) for k, m in parts.items()},
        },
        "training": training,
        "metrics": metrics,
        "command": command or _command("train_timeseries", kwargs),
    }
    return _save(model, Path(out), card, None)


def _evaluate_series(model, card: dict[str, Any]) -> dict[str, Any]:
    d = card["data"]
    path = ds.resolve_data_path(d["source"]["path"])
    values, names, ti = _series_data(path, d["columns"], d["target"])
    x, y, naive, parts, (a, _) = _series_splits(
        values, ti, d["window"], d["horizon"], d["mode"], d["val_fraction"], d["test_fraction"]
    )
    t = parts["test"]
    return _series_metrics(model, x[t], y[t], naive[t], float(values[:a, ti].mean()))


# -- planted tasks ---------------------------------------------------------------------------------------


def _task_seeds(seed: int) -> tuple[int, int, int]:
    s = np.random.SeedSequence(int(seed)).generate_state(3)
    return int(s[0]), int(s[1]), int(s[2])


def _task_metrics(model, data: tk.TaskData) -> dict[str, Any]:
    if data.name == "brackets":
        p = _predict(model, data.x)
        pred = p.argmax(-1)
        y = data.y
        matters = data.features["naive_depth"] != y
        inside = data.features["inside_quote"].astype(bool)
        return {
            "split": "test",
            "n_sequences": int(len(y)),
            "accuracy": float((pred == y).mean()),
            "accuracy_where_quotes_matter": float((pred == y)[matters].mean()),
            "accuracy_inside_quotes": float((pred == y)[inside].mean()),
            "sequence_accuracy": float((pred == y).all(axis=1).mean()),
            "baseline_naive_counter_accuracy": float((data.features["naive_depth"] == y).mean()),
            "baseline_majority_accuracy": float((y == np.bincount(y.ravel()).argmax()).mean()),
            "fraction_where_quotes_matter": float(matters.mean()),
        }
    pred = _predict(model, data.x).reshape(-1).astype(np.float64)
    y = data.y.astype(np.float64)
    err = pred - y
    mse = float((err**2).mean())
    var = float(y.var())
    out = {
        "split": "test",
        "n_sequences": int(len(y)),
        "mse": mse,
        "mae": float(np.abs(err).mean()),
        "target_variance": var,
        "r2": 1.0 - mse / var,
    }
    if data.name == "adding":
        out["baseline_mse"] = float(((1.0 - y) ** 2).mean())  # always answer 1.0, the expected sum
        out["fraction_within_0.04"] = float((np.abs(err) < 0.04).mean())  # Hochreiter & Schmidhuber's criterion
    else:
        out["baseline_mse"] = float((y**2).mean())  # always answer 0, the expected value
        out["fraction_within_0.05"] = float((np.abs(err) < 0.05).mean())
    return out


def train_task(
    name: str,
    out: str | os.PathLike,
    *,
    cell: str = "lstm",
    layers: int = 1,
    units: int | None = None,
    embedding_dim: int | None = None,
    epochs: int | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    patience: int | None = None,
    task_params: dict[str, Any] | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    command: str | None = None,
    chrono_init: bool | None = None,
    kernel_l1: float | None = None,
    recurrent_l1: float | None = None,
    readout_l1: float | None = None,
) -> TrainResult:
    """Train a model on a planted-mechanism task of :mod:`gatelens.models.zoo.tasks`.

    ``brackets``: Embedding -> LSTM/GRU (sequences) -> Dense(max_depth + 1, softmax), the depth at
    each step. ``recall`` and ``adding``: (T, 2) floats -> LSTM/GRU -> Dense(1), one value per
    sequence. Train, validation and test sets are drawn with three seeds derived from ``seed``;
    ``None`` arguments take :data:`TASK_DEFAULTS`; ``task_params`` go to the generator
    (e.g. ``{"length": 40, "min_delay": 20, "max_marks": 3}``). ``chrono_init`` (default on for recall)
    starts the gates with :func:`chrono_initialize`, so memories can be kept by slow gates from the start.
    ``kernel_l1``, ``recurrent_l1`` and ``readout_l1`` put an L1 penalty on the recurrent layers' input
    kernels, their recurrent kernels and the output Dense kernel during training (0 for none; the saved
    model carries no regularizer): recall's defaults make one unit carry the memory on its own.

    Returns
    -------
    TrainResult
        The card's ``metrics``: for brackets per-step ``accuracy`` (also where a quote changes the
        answer, beside a counter that ignores quotes); for recall and adding ``mse`` beside
        ``target_variance`` and ``baseline_mse``.

    Examples
    --------
    >>> import tempfile, os
    >>> r = train_task("recall", os.path.join(tempfile.mkdtemp(), "r.keras"), units=2, epochs=1,
    ...                n_train=32, n_val=16, n_test=16)  # doctest: +SKIP
    >>> r.card["metrics"]["mse"] >= 0  # doctest: +SKIP
    True
    """
    kwargs = dict(locals())
    _check_out(out)
    _check_choice("task", name, sorted(tk.TASKS))
    _check_choice("cell", cell, CELLS)
    cfg = {**TASK_DEFAULTS[name]}
    for k in (
        "units",
        "embedding_dim",
        "epochs",
        "n_train",
        "n_val",
        "n_test",
        "batch_size",
        "learning_rate",
        "patience",
        "chrono_init",
        "kernel_l1",
        "recurrent_l1",
        "readout_l1",
    ):
        if kwargs[k] is not None:
            cfg[k] = kwargs[k]
    _check_positive(layers=layers, units=cfg["units"], n_train=cfg["n_train"], n_val=cfg["n_val"], n_test=cfg["n_test"])
    params = dict(task_params or {})
    s_train, s_val, s_test = _task_seeds(seed)
    train = tk.generate(name, cfg["n_train"], seed=s_train, **params)
    val = tk.generate(name, cfg["n_val"], seed=s_val, **params)
    test = tk.generate(name, cfg["n_test"], seed=s_test, **params)
    params = {k: v for k, v in test.params.items() if k not in ("n", "seed")}
    set_seed(seed)
    import keras

    length = train.x.shape[1]
    stack = dict(cell=cell, layers=layers, units=cfg["units"], dropout=0.0, l1=cfg["kernel_l1"],
                 recurrent_l1=cfg["recurrent_l1"])  # fmt: skip
    if name == "brackets":
        inp = keras.Input((length,), dtype="int32", name="tokens")
        h = keras.layers.Embedding(len(tk.BRACKET_TOKENS), cfg["embedding_dim"] or 8, mask_zero=True, name="embedding")(
            inp
        )
        h = _recurrent_stack(h, last_sequences=True, **stack)
        outp = keras.layers.Dense(
            params["max_depth"] + 1, activation="softmax", name="depth", kernel_regularizer=_l1(cfg["readout_l1"])
        )(h)
        loss = "sparse_categorical_crossentropy"
        vocab = ds.Vocabulary(list(tk.BRACKET_TOKENS), "char")
    else:
        inp = keras.Input((length, 2), name="value_and_marker")
        h = _recurrent_stack(inp, last_sequences=False, **stack)
        outp = keras.layers.Dense(
            1, name="recalled" if name == "recall" else "sum", kernel_regularizer=_l1(cfg["readout_l1"])
        )(h)
        loss = "mse"
        vocab = None
    model = keras.Model(inp, outp, name=Path(out).stem)
    if cfg["chrono_init"]:
        chrono_initialize(model, length, seed=seed)
    training = _fit(
        model, (train.x, train.y), (val.x, val.y), loss=loss, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
        learning_rate=cfg["learning_rate"], patience=cfg["patience"], progress=progress,
    )  # fmt: skip
    training["seed"] = seed
    training["l1"] = {
        "input_kernel": cfg["kernel_l1"],
        "recurrent_kernel": cfg["recurrent_l1"],
        "readout_kernel": cfg["readout_l1"],
    }
    training["initialization"] = (
        f"chrono (Tallec & Ollivier 2018), T_max = {length}" if cfg["chrono_init"] else "Keras defaults"
    )
    metrics = _task_metrics(model, test)
    description = {
        "brackets": "bracket nesting depth at every step, brackets inside quotes not counted (a counter and a flag)",
        "recall": "report at the last step the value seen at the marked step (memory over a known delay)",
        "adding": "sum of the two marked values (Hochreiter & Schmidhuber 1997)",
    }[name]
    card = {
        "model": _model_section(
            model,
            "task",
            description,
            cell=cell,
            layers=layers,
            units=cfg["units"],
            task_name=name,
            input_names=test.input_names,
        ),  # fmt: skip
        "data": {
            "source": {"generator": f"gatelens.models.zoo.tasks.{tk.TASKS[name].__name__}", "params": params},
            "task": name,
            "seeds": {"train": s_train, "validation": s_val, "test": s_test},
            "sequences": {"train": cfg["n_train"], "validation": cfg["n_val"], "test": cfg["n_test"]},
            "features": sorted(test.features),
        },
        "training": training,
        "metrics": metrics,
        "command": command or _command("train_task", kwargs),
    }
    return _save(model, Path(out), card, vocab)


def _l1(weight: float | None):
    """An L1 weight penalty (training only: :func:`_save` writes the model without it)."""
    import keras

    return keras.regularizers.L1(float(weight)) if weight else None


def _evaluate_task(model, card: dict[str, Any]) -> dict[str, Any]:
    d = card["data"]
    test = tk.generate(d["task"], d["sequences"]["test"], seed=d["seeds"]["test"], **d["source"]["params"])
    return _task_metrics(model, test)


# -- re-evaluation --------------------------------------------------------------------------------------


def evaluate(model_path: str | os.PathLike) -> dict[str, Any]:
    """Recompute the held-out metrics of a trained model from its files (model, card, side-car, data).

    The model is loaded with the safe loader; the data source's sha256 must match the card's.

    Returns
    -------
    dict
        The same keys as the card's ``metrics``.
    """
    from gatelens.models.loading import load_model

    model_path = Path(model_path)
    card = read_card(model_path)
    src = card["data"]["source"]
    if "path" in src:
        p = ds.resolve_data_path(src["path"])
        if not p.is_file():
            raise DataError(f"{model_path}: the card's data source {src['path']!r} is missing")
        if ds.sha256_file(p) != src["sha256"]:
            raise DataError(f"{model_path}: the data source {src['path']!r} changed since training (sha256 differs)")
    model = load_model(model_path)
    kind = card["model"]["kind"]
    if kind == "text":
        return _evaluate_text(model, card, ds.Vocabulary.load(vocabulary_path(model_path)))
    if kind == "timeseries":
        return _evaluate_series(model, card)
    if kind == "task":
        return _evaluate_task(model, card)
    raise DataError(f"{model_path}: unknown model kind {kind!r} in the card")
