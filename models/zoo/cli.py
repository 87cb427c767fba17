"""``gatelens train text|timeseries|task``: the training subcommand (registered by :mod:`gatelens.cli.main`).

TensorFlow is imported only when a command runs, so ``gatelens --help`` stays fast. Progress is a
bar on stderr; the result (files written, held-out metrics) goes to stdout.

Examples
--------
>>> import argparse
>>> parser = argparse.ArgumentParser(prog="gatelens")
>>> _ = register(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["train", "task", "adding", "--units", "8", "--no-train", "--emit-data", "x.npy"])
>>> args.what, args.name, args.units, args.no_train
('task', 'adding', 8, True)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from gatelens.errors import GatelensInputError, UsageError
from gatelens.models.argtypes import checked

positive_int = checked(int, lambda v: v >= 1, "a positive integer")  # also used by the ``gatelens`` CLI
_non_negative_int = checked(int, lambda v: v >= 0, "an integer >= 0")
_fraction = checked(float, lambda v: 0.0 < v < 1.0, "a number strictly between 0 and 1", "a number between 0 and 1")
_dropout = checked(float, lambda v: 0.0 <= v < 1.0, "a rate in [0, 1)")
_positive_float = checked(float, lambda v: v > 0, "a positive number")


def _written_by_gatelens(model: Path) -> bool:
    """Whether ``model`` is a model ``gatelens train`` wrote: its card beside it is a gatelens model card that names
    it and holds its sha256."""
    from gatelens.models.zoo import datasets as ds
    from gatelens.models.zoo.train import card_path

    try:
        card = json.loads(card_path(model).read_text(encoding="utf-8"))
        return (
            str(card.get("format", "")).startswith("gatelens.model_card")
            and card.get("file") == model.name
            and card.get("sha256") == ds.sha256_file(model)
        )
    except (OSError, ValueError, AttributeError):
        return False


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse (exit 2) to write over anything ``gatelens train`` did not write: ``--out`` and the card and vocabulary
    beside it (replaced only together, when the card says gatelens wrote that model), and the files of
    ``--emit-data`` (a .npy: any existing file is refused) and ``--emit-features`` (a features CSV)."""
    from gatelens.models.cli_output import check_replaceable
    from gatelens.models.zoo.train import card_path, vocabulary_path

    if args.what == "task":
        if args.emit_data:
            check_replaceable(args.emit_data, "gatelens train --emit-data")
        if args.emit_features:
            check_replaceable(args.emit_features, "gatelens train --emit-features", [_task_features_header(args)])
        if args.no_train:
            return
    out = args.out or _default_out(args)
    for p in (out, card_path(out), vocabulary_path(out)):
        if p.is_dir():
            raise UsageError(f"gatelens train --out {out}: {p} is a directory; expected a file to write")
    existing = [p for p in (out, card_path(out), vocabulary_path(out)) if os.path.lexists(p)]
    if existing and not (out.is_file() and _written_by_gatelens(out)):
        raise UsageError(
            f"gatelens train --out {out}: {existing[0]} exists and was not written by gatelens train (no model card of its own "
            "beside the model); not replacing it"
        )


def _task_features_header(args: argparse.Namespace) -> list[str]:
    """The header ``--emit-features`` writes for this task: ``sequence, step`` and the task's features."""
    from gatelens.models.zoo import tasks as tk

    try:
        names = list(tk.generate(args.name, 1, seed=args.emit_seed, **_task_params(args)).features)
    except ValueError as e:
        raise GatelensInputError(f"task {args.name!r}: {e}") from None
    return ["sequence", "step", *names]


def _default_out(args: argparse.Namespace) -> Path:
    """The model file ``gatelens train`` writes without ``--out``: ``<corpus, series or task>_<cell>.keras``."""
    from gatelens.models.zoo import datasets as ds

    if args.what == "text":
        return Path(f"{(Path(args.corpus) if args.corpus else ds.CORPUS_PATH).stem}_{args.cell}.keras")
    if args.what == "timeseries":
        return Path(f"{(Path(args.csv) if args.csv else ds.SUNSPOTS_PATH).stem}_{args.cell}.keras")
    return Path(f"{args.name}_{args.cell}.keras")


def _keras_path(s: str) -> Path:
    if not s.endswith(".keras"):
        raise argparse.ArgumentTypeError(f"the model file must end in .keras, got {s!r}")
    return Path(s)


class ProgressBar:
    """A one-line text bar, ``progress(done, total)``, redrawn when the shown percentage changes.

    Examples
    --------
    >>> import io
    >>> buf = io.StringIO()
    >>> bar = ProgressBar("training", stream=buf, width=10)
    >>> bar(5, 10); bar(10, 10)
    >>> buf.getvalue().splitlines()[-1].split("\\r")[-1]
    'training [##########] 100% 10/10'
    """

    def __init__(self, label: str, *, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self._shown: tuple[int, int] | None = None
        self._closed = False

    def __call__(self, done: int, total: int) -> None:
        if self._closed or total <= 0:
            return
        pct = int(100 * done / total)
        key = (pct, total)
        if key == self._shown and done < total:
            return
        self._shown = key
        filled = int(self.width * done / total)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {pct:3d}% {done}/{total}")
        if done >= total:
            self.stream.write("\n")
            self._closed = True
        self.stream.flush()


def _common(p: argparse.ArgumentParser, *, units: int | None, layers: int, epochs: int | None) -> None:
    p.add_argument(
        "--out", "-o", type=_keras_path, help="model file to write (.keras); the card and side-car go beside it"
    )
    p.add_argument("--cell", choices=["lstm", "gru"], default="lstm", help="recurrent cell (default lstm)")
    p.add_argument("--layers", type=positive_int, default=layers, help=f"stacked recurrent layers (default {layers})")
    p.add_argument("--units", type=positive_int, default=units, help="units per recurrent layer")
    p.add_argument("--epochs", type=positive_int, default=epochs, help="maximum epochs (early stopping may end sooner)")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--learning-rate", type=_positive_float, default=None)
    p.add_argument("--patience", type=positive_int, default=None, help="early-stopping patience in epochs")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same weights)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train`` (with ``text``, ``timeseries`` and ``task``) to a ``gatelens`` sub-parser set.

    Each leaf parser sets ``func`` to :func:`run`, which returns the exit code.
    """
    train = subparsers.add_parser(
        "train",
        help="train an LSTM/GRU on text, a time series or a planted task; writes .keras + model card",
        description="Train a Keras LSTM/GRU and write MODEL.keras, MODEL.card.json (and MODEL.vocab.json for text).",
    )
    what = train.add_subparsers(dest="what", metavar="{text,timeseries,task}")
    what.required = True

    t = what.add_parser("text", help="character- or word-level language model on a text file")
    t.add_argument("corpus", nargs="?", default=None, help="UTF-8 text file (default: the bundled Python corpus)")
    _common(t, units=96, layers=2, epochs=30)
    t.add_argument("--level", choices=["char", "word"], default="char")
    t.add_argument("--embedding-dim", type=positive_int, default=32)
    t.add_argument("--window", type=positive_int, default=100, help="tokens per input sequence (default 100)")
    t.add_argument("--stride", type=positive_int, default=None, help="training window stride (default: window)")
    t.add_argument("--dropout", type=_dropout, default=0.0, help="dropout between recurrent layers")
    t.add_argument("--val-fraction", type=_fraction, default=0.1)
    t.add_argument("--test-fraction", type=_fraction, default=0.1)
    t.add_argument("--min-count", type=positive_int, default=2, help="rarer tokens map to [UNK]")
    t.add_argument("--max-tokens", type=positive_int, default=None, help="vocabulary size limit")
    t.add_argument("--max-chars", type=positive_int, default=None, help="use only the first N characters")
    t.set_defaults(func=run)

    s = what.add_parser("timeseries", help="forecaster on a CSV series (sequence-to-one or sequence-to-sequence)")
    s.add_argument("csv", nargs="?", default=None, help="CSV file (default: the bundled yearly sunspot numbers)")
    _common(s, units=32, layers=1, epochs=300)
    s.add_argument("--columns", nargs="+", default=None, help="input columns (default: every numeric column)")
    s.add_argument("--target", default=None, help="column to forecast (default: the first input column)")
    s.add_argument("--mode", choices=["one", "sequence"], default="one", help="sequence-to-one or -to-sequence")
    s.add_argument("--horizon", type=positive_int, default=1, help="steps ahead (default 1)")
    s.add_argument("--window", type=positive_int, default=24, help="steps per input window (default 24)")
    s.add_argument("--dropout", type=_dropout, default=0.0)
    s.add_argument("--val-fraction", type=_fraction, default=0.15)
    s.add_argument("--test-fraction", type=_fraction, default=0.15)
    s.set_defaults(func=run)

    k = what.add_parser("task", help="planted-mechanism task: brackets, recall or adding")
    k.add_argument("name", choices=["brackets", "recall", "adding"])
    _common(k, units=None, layers=1, epochs=None)
    k.add_argument("--length", type=positive_int, default=None, help="sequence length")
    k.add_argument("--min-delay", type=_non_negative_int, default=None, help="recall: fewest steps to hold the value")
    k.add_argument("--max-marks", type=positive_int, default=None, help="recall: most marks per sequence (default 3)")
    k.add_argument("--max-depth", type=positive_int, default=None, help="brackets: deepest nesting")
    k.add_argument("--n-train", type=positive_int, default=None)
    k.add_argument("--n-val", type=positive_int, default=None)
    k.add_argument("--n-test", type=positive_int, default=None)
    k.add_argument("--emit-data", type=Path, default=None, help="write sample inputs as .npy (for gatelens extract)")
    k.add_argument("--emit-features", type=Path, default=None,
                   help="write their ground-truth per-step features as CSV (sequence, step, feature...)")  # fmt: skip
    k.add_argument("--emit-n", type=positive_int, default=64, help="sequences to emit (default 64)")
    k.add_argument("--emit-seed", type=int, default=12345, help="seed of the emitted sequences")
    k.add_argument("--no-train", action="store_true", help="only emit data/features, train nothing")
    k.set_defaults(func=run)
    return train


def _task_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.length is not None:
        params["length"] = args.length
    if args.min_delay is not None:
        if args.name != "recall":
            raise GatelensInputError(f"--min-delay applies to the recall task, not {args.name!r}")
        params["min_delay"] = args.min_delay
    if args.max_marks is not None:
        if args.name != "recall":
            raise GatelensInputError(f"--max-marks applies to the recall task, not {args.name!r}")
        params["max_marks"] = args.max_marks
    if args.max_depth is not None:
        if args.name != "brackets":
            raise GatelensInputError(f"--max-depth applies to the brackets task, not {args.name!r}")
        params["max_depth"] = args.max_depth
    return params


def _report(result: Any, stream: TextIO) -> None:
    card = result.card
    stream.write(f"model:  {result.model_path}\ncard:   {result.card_path}\n")
    if result.vocabulary_path is not None:
        stream.write(f"vocab:  {result.vocabulary_path}\n")
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in card["metrics"].items() if isinstance(v, float))
    tr = card["training"]
    stream.write(f"trained {tr['epochs_run']} epoch(s) (best {tr['best_epoch']}) in {tr['seconds']} s\n")
    stream.write(f"held-out: {metrics}\n")


_POSITIONAL = {"text": "corpus", "timeseries": "csv", "task": "name"}


def _command_line(args: argparse.Namespace) -> str:
    """The equivalent command line, every option spelled out (recorded in the model card)."""
    parts = ["gatelens", "train", args.what]
    pos = getattr(args, _POSITIONAL[args.what], None)
    if pos is not None:
        parts.append(str(pos))
    for key, value in sorted(vars(args).items()):
        if (
            key in ("func", "what", "quiet", "debug", "command", _POSITIONAL[args.what])
            or value is None
            or value is False
        ):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def run(args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    """Execute a parsed ``gatelens train ...`` command; returns the exit code (0).

    Bad input raises :class:`gatelens.errors.GatelensInputError` (the caller turns it into exit code 2).
    """
    stdout = stdout if stdout is not None else sys.stdout
    command = _command_line(args)
    bar = None if args.quiet else ProgressBar(f"train {args.what}")
    opt = {
        k: getattr(args, k)
        for k in ("batch_size", "learning_rate", "patience", "epochs")
        if getattr(args, k, None) is not None
    }
    common = dict(cell=args.cell, layers=args.layers, seed=args.seed, progress=bar, command=command, **opt)
    _check_outputs(args)  # before any work: nothing of the user's is replaced
    t0 = time.perf_counter()
    if args.what == "text":
        from gatelens.models.zoo import datasets as ds
        from gatelens.models.zoo.train import train_text

        corpus = Path(args.corpus) if args.corpus else ds.CORPUS_PATH
        out = args.out or _default_out(args)
        result = train_text(
            corpus, out, level=args.level, units=args.units, embedding_dim=args.embedding_dim, window=args.window,
            stride=args.stride, dropout=args.dropout, val_fraction=args.val_fraction,
            test_fraction=args.test_fraction, min_count=args.min_count, max_tokens=args.max_tokens,
            max_chars=args.max_chars, **common,
        )  # fmt: skip
    elif args.what == "timeseries":
        from gatelens.models.zoo import datasets as ds
        from gatelens.models.zoo.train import train_timeseries

        csv = Path(args.csv) if args.csv else ds.SUNSPOTS_PATH
        out = args.out or _default_out(args)
        result = train_timeseries(
            csv, out, columns=args.columns, target=args.target, mode=args.mode, horizon=args.horizon,
            units=args.units, window=args.window, dropout=args.dropout, val_fraction=args.val_fraction,
            test_fraction=args.test_fraction, **common,
        )  # fmt: skip
    else:
        from gatelens.models.zoo import tasks as tk

        params = _task_params(args)
        if args.emit_data or args.emit_features:
            try:
                data = tk.generate(args.name, args.emit_n, seed=args.emit_seed, **params)
            except ValueError as e:
                raise GatelensInputError(f"task {args.name!r}: {e}") from None
            if args.emit_data:
                tk.write_task_data(data, args.emit_data)
                stdout.write(f"data:     {args.emit_data} {tuple(data.x.shape)}\n")
            if args.emit_features:
                tk.write_features_csv(args.emit_features, data.features)
                stdout.write(f"features: {args.emit_features} ({', '.join(data.features)})\n")
        if args.no_train:
            if not (args.emit_data or args.emit_features):
                raise GatelensInputError("--no-train needs --emit-data and/or --emit-features")
            return 0
        from gatelens.models.zoo.train import train_task

        out = args.out or _default_out(args)
        try:  # the generator checks its own parameters (plain ValueError: tasks.py does not import models)
            tk.generate(args.name, 1, **params)
        except ValueError as e:
            raise GatelensInputError(f"task {args.name!r}: {e}") from None
        result = train_task(
            args.name, out, units=args.units, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
            task_params=params, **common,
        )  # fmt: skip
    _report(result, stdout)
    stdout.write(f"total {time.perf_counter() - t0:.1f} s\n")
    return 0
