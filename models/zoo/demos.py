"""The bundled demo models and their data (``make demo-models`` runs ``python -m gatelens.models.zoo.demos``).

Each demo is a ``.keras`` model with its card (and vocabulary side-car for token models) in
``data/demo/``, plus a small data file that ``gatelens extract data/demo/<model>.keras data/demo/<data>``
reads out of the box. Retraining is deterministic given the seeds below (on the same platform and
library versions); ``make run`` never trains.

    python -m gatelens.models.zoo.demos                      # retrain every demo and rewrite the demo data
    python -m gatelens.models.zoo.demos --only char_lstm     # one demo
    python -m gatelens.models.zoo.demos --data-only          # rewrite the demo data files, train nothing

Examples
--------
>>> [d.name for d in DEMOS]
['char_lstm', 'char_gru', 'sunspots_lstm', 'brackets_lstm', 'recall_lstm', 'adding_lstm']
>>> demo("brackets_lstm").data, demo("brackets_lstm").features
('brackets_lstm.demo.npy', 'brackets_lstm.features.csv')
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatelens.models.zoo import datasets as ds
from gatelens.models.zoo import tasks as tk

log = logging.getLogger(__name__)

DEMO_DIR = ds.DATA_DIR / "demo"  # == gatelens.data.DEMO_DIR
#: Seed of the sequences in the demo task data files (distinct from the training/validation/test seeds).
DEMO_DATA_SEED = 12345
DEMO_DATA_SEQUENCES = 64
TEXT_EXCERPT_CHARS = 4000


@dataclass(frozen=True)
class Demo:
    """One demo model: how it is trained and which bundled data file it reads.

    Attributes
    ----------
    name : str
        File stem in ``data/demo/``.
    kind : {"text", "timeseries", "task"}
    kwargs : dict
        Arguments of the training function (:func:`gatelens.models.zoo.train.train_text`, ...).
    data : str
        The demo data file (in ``data/demo/``) for ``gatelens extract``.
    features : str or None
        Ground-truth features CSV for ``gatelens analyze --features`` (planted tasks).
    summary : str
        One line for the docs and the dashboard.
    """

    name: str
    kind: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = ""
    features: str | None = None
    summary: str = ""

    @property
    def model_path(self) -> Path:
        return DEMO_DIR / f"{self.name}.keras"


#: Training settings the two character models share (they differ in cell and width only).
_TEXT = dict(layers=2, embedding_dim=32, window=100, stride=50, dropout=0.25, epochs=16, patience=3, batch_size=32,
             learning_rate=4e-3, seed=0)  # fmt: skip

DEMOS: tuple[Demo, ...] = (
    Demo(
        "char_lstm", "text", dict(cell="lstm", units=96, **_TEXT), data="code_sample.txt",
        summary="2-layer character LSTM (2 x 96) on Python standard-library source",
    ),
    Demo(
        "char_gru", "text", dict(cell="gru", units=64, **_TEXT), data="code_sample.txt",
        summary="2-layer character GRU (2 x 64) on the same corpus",
    ),
    Demo(
        "sunspots_lstm", "timeseries",
        dict(columns=["sunspots"], target="sunspots", cell="lstm", units=32, window=24, seed=0),
        data="sunspots.csv",
        summary="LSTM (32) forecasting next year's sunspot number from the last 24 years",
    ),
    Demo(
        "brackets_lstm", "task", dict(name="brackets", cell="lstm", seed=1),
        data="brackets_lstm.demo.npy", features="brackets_lstm.features.csv",
        summary="LSTM (8) tracking bracket depth outside quoted strings (a counter and a flag)",
    ),
    Demo(
        "recall_lstm", "task", dict(name="recall", cell="lstm", seed=0),
        data="recall_lstm.demo.npy", features="recall_lstm.features.csv",
        summary="LSTM (4) holding the last marked value for 20-39 steps, forgetting at each new mark (delayed recall)",
    ),
    Demo(
        "adding_lstm", "task", dict(name="adding", cell="lstm", seed=0),
        data="adding_lstm.demo.npy", features="adding_lstm.features.csv",
        summary="LSTM (24) solving the adding problem (Hochreiter & Schmidhuber 1997)",
    ),
)  # fmt: skip


def demo(name: str) -> Demo:
    """The demo called ``name``."""
    for d in DEMOS:
        if d.name == name:
            return d
    raise ValueError(f"no demo {name!r}; the demos are {[d.name for d in DEMOS]}")


def text_excerpt(n_chars: int = TEXT_EXCERPT_CHARS) -> str:
    """About ``n_chars`` of held-out corpus text: whole lines from the start of the test part.

    Uses the default split of :func:`gatelens.models.zoo.train.train_text` (the last 10% of the corpus), so the
    demo text models never saw it in training.
    """
    text = ds.read_text(ds.CORPUS_PATH)
    _, test_start = ds.split_bounds(len(text), 0.1, 0.1)
    start = text.index("\n", test_start) + 1
    end = text.rfind("\n", start, start + n_chars) + 1
    return text[start:end]


def write_demo_data(out_dir: str | Path = DEMO_DIR) -> list[Path]:
    """Write the demo data files (text excerpt, sunspot CSV, task inputs and features). Returns their paths."""
    from gatelens.analysis.store import atomic_write_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    p = out / "code_sample.txt"
    atomic_write_bytes(p, text_excerpt().encode("utf-8"))
    written.append(p)
    values, _ = ds.read_series_csv(ds.SUNSPOTS_PATH, ["sunspots"])
    p = out / "sunspots.csv"
    atomic_write_bytes(p, ("sunspots\n" + "".join(f"{v:g}\n" for v in values[:, 0])).encode())
    written.append(p)
    for d in DEMOS:
        if d.kind != "task":
            continue
        data = tk.generate(d.kwargs["name"], DEMO_DATA_SEQUENCES, seed=DEMO_DATA_SEED)
        tk.write_task_data(data, out / d.data, out / d.features)
        written += [out / d.data, out / d.features]
    return written


def train_demo(d: Demo, out_dir: str | Path = DEMO_DIR, *, progress: Any = None):
    """Train one demo into ``out_dir``; returns the :class:`gatelens.models.zoo.train.TrainResult`."""
    from gatelens.models.zoo import train

    out = Path(out_dir) / f"{d.name}.keras"
    command = f"python -m gatelens.models.zoo.demos --only {d.name}"
    if d.kind == "text":
        return train.train_text(ds.CORPUS_PATH, out, progress=progress, command=command, **d.kwargs)
    if d.kind == "timeseries":
        return train.train_timeseries(ds.SUNSPOTS_PATH, out, progress=progress, command=command, **d.kwargs)
    kw = dict(d.kwargs)
    return train.train_task(kw.pop("name"), out, progress=progress, command=command, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``python -m gatelens.models.zoo.demos``."""
    from gatelens.models.zoo.cli import ProgressBar

    parser = argparse.ArgumentParser(prog="python -m gatelens.models.zoo.demos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=[d.name for d in DEMOS], help="train only these demos")
    parser.add_argument("--data-only", action="store_true", help="rewrite the demo data files, train nothing")
    parser.add_argument("--out", type=Path, default=DEMO_DIR, help="output folder (default data/demo)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for p in write_demo_data(args.out):
        log.info("data   %s", p)
    if args.data_only:
        return 0
    for d in DEMOS:
        if args.only and d.name not in args.only:
            continue
        t0 = time.perf_counter()
        r = train_demo(d, args.out, progress=ProgressBar(f"{d.name:14s}"))
        m = {k: round(v, 4) for k, v in r.card["metrics"].items() if isinstance(v, float)}
        log.info("model  %s  %.0f s  %s", r.model_path, time.perf_counter() - t0, m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
