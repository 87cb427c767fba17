"""The bundled demo models: ``data/demo/<stem>.keras`` with a model card ``<stem>.card.json``.

Each demo is a model the zoo trained (:mod:`gatelens.models.zoo.train`), its card (what it was trained on, how
well it does beside a baseline) and, for text models, the vocabulary side-car ``<stem>.vocab.json``.
The demo's input is the data file the zoo's registry (:data:`gatelens.models.zoo.demos.DEMOS`) names for it --
held-out text, the sunspot series, planted-task inputs with their ground-truth features CSV -- else a
file ``<stem>.demo.<ext>`` beside the model, else the card's own data source. The whole input is analysed
by default (:data:`DEFAULT_SEQUENCES` is None: the dashboard's staged analysis shows the first pages while the
rest runs); from the card's source, the held-out test part when the card says where it starts.

The folder is ``data/demo`` in the repository, or the one named by the environment variable
``GATELENS_DEMO_DIR``.

Examples
--------
>>> import json, pathlib, tempfile
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "tiny.keras").write_bytes(b"zip")
>>> _ = (d / "tiny.card.json").write_text(json.dumps({"model": {"kind": "text", "task": "next character"}}))
>>> [(demo.name, demo.kind, demo.task) for demo in list_demos(d)]
[('tiny', 'text', 'next character')]
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatelens.data import DEMO_DIR as _DEMO_DIR
from gatelens.models.spec import sidecar_path

log = logging.getLogger(__name__)

DEMO_DIR = _DEMO_DIR
DATA_SUFFIXES = (".txt", ".csv", ".npy", ".npz")
#: Sequences of the demo input analysed by default: None, every one (a slice only when the user asks for it).
DEFAULT_SEQUENCES: int | None = None
#: Demo kinds listed first (the coloured-text view of a character model is the best first look).
KIND_ORDER = {"text": 0, "timeseries": 1}


def demo_dir() -> Path:
    """The folder of the bundled demos (``GATELENS_DEMO_DIR`` when set, else ``data/demo``)."""
    env = os.environ.get("GATELENS_DEMO_DIR")
    return Path(env) if env else DEMO_DIR


@dataclass(frozen=True)
class Demo:
    """One bundled demo model.

    Attributes
    ----------
    name : str
        The file stem, e.g. ``"char_lstm"``.
    model_path : Path
    card : dict
        The model card (empty when the card is missing or unreadable).
    vocabulary_path : Path or None
        The vocabulary side-car of a text model.
    data_path : Path or None
        The input analysed by default.
    """

    name: str
    model_path: Path
    card: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    vocabulary_path: Path | None = None
    data_path: Path | None = None
    features_path: Path | None = None
    summary: str = ""

    @property
    def kind(self) -> str:
        """``"text"``, ``"timeseries"`` or ``"task"`` (from the card; ``""`` when unknown)."""
        return str(self.card.get("model", {}).get("kind", ""))

    @property
    def task(self) -> str:
        """What the model was trained to do, in words (from the card)."""
        return str(self.card.get("model", {}).get("task", ""))

    @property
    def label(self) -> str:
        """A one-line label for a select box."""
        if self.summary:
            return f"{self.name} — {self.summary}"
        arch = self.card.get("model", {}).get("architecture", "")
        bits = [self.name]
        if self.task:
            bits.append(f"— {self.task}")
        if arch:
            bits.append(f"({arch})")
        return " ".join(bits)

    def default_window(self) -> dict[str, Any]:
        """Data options for the demo input: ``first`` sequence and ``count`` (see the module docstring)."""
        data = self.card.get("data", {})
        first = 0
        split = data.get("split", {})
        window = data.get("window")
        test = split.get("test")
        if (
            self.data_path is not None
            and self.data_path == _card_source(self.card)
            and self.data_path.suffix == ".txt"
            and split.get("unit") == "tokens"
            and isinstance(window, int)
            and window > 0
            and isinstance(test, list)
            and len(test) == 2
            and not data.get("max_chars")
        ):
            first = math.ceil(int(test[0]) / window)  # the first whole window inside the held-out part
        return {"first": first, "count": DEFAULT_SEQUENCES}


def _read_card(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        log.warning("demo card %s is unreadable: %s", path, e)
        return {}
    return doc if isinstance(doc, dict) else {}


def _card_source(card: dict[str, Any]) -> Path | None:
    source = card.get("data", {}).get("source", {})
    rel = source.get("path") if isinstance(source, dict) else None
    if not isinstance(rel, str) or not rel:
        return None
    from gatelens.models.zoo.datasets import resolve_data_path

    return resolve_data_path(rel)


def _zoo_registry() -> dict[str, Any]:
    """The zoo's demo registry by name (empty when the zoo has none)."""
    try:
        from gatelens.models.zoo.demos import DEMOS
    except ImportError:
        return {}
    return {d.name: d for d in DEMOS}


def _data_path(model_path: Path, card: dict[str, Any], entry: Any) -> Path | None:
    named = getattr(entry, "data", "") if entry is not None else ""
    if named and (model_path.parent / named).is_file():
        return model_path.parent / named
    for suffix in DATA_SUFFIXES:
        own = model_path.with_name(f"{model_path.stem}.demo{suffix}")
        if own.is_file():
            return own
    p = _card_source(card)
    return p if p is not None and p.is_file() and p.suffix in DATA_SUFFIXES else None


def _features_path(model_path: Path, entry: Any) -> Path | None:
    named = getattr(entry, "features", None) if entry is not None else None
    if named and (model_path.parent / named).is_file():
        return model_path.parent / named
    own = model_path.with_name(f"{model_path.stem}.features.csv")
    return own if own.is_file() else None


def list_demos(directory: str | os.PathLike | None = None) -> list[Demo]:
    """Every demo model in ``directory`` (default :func:`demo_dir`), text models first, then by name."""
    d = Path(directory) if directory is not None else demo_dir()
    if not d.is_dir():
        return []
    zoo = _zoo_registry()
    order = {name: k for k, name in enumerate(zoo)}
    demos = []
    for model_path in sorted(d.glob("*.keras")):
        if model_path.name.startswith("."):
            continue  # a temporary file of an interrupted write
        card_path = sidecar_path(model_path, "card")
        card = _read_card(card_path) if card_path.is_file() else {}
        vocab = sidecar_path(model_path, "vocab")
        entry = zoo.get(model_path.stem)
        demos.append(
            Demo(
                name=model_path.stem,
                model_path=model_path,
                card=card,
                vocabulary_path=vocab if vocab.is_file() else None,
                data_path=_data_path(model_path, card, entry),
                features_path=_features_path(model_path, entry),
                summary=str(getattr(entry, "summary", "") or ""),
            )
        )
    demos.sort(key=lambda m: (order.get(m.name, len(order)), KIND_ORDER.get(m.kind, 9), m.name))
    return demos


def card_metrics(card: dict[str, Any]) -> list[tuple[str, Any]]:
    """The held-out metrics of a model card as ``(name, value)`` pairs, for display.

    Examples
    --------
    >>> card_metrics({"metrics": {"split": "test", "mae": 0.5, "naive_last_value_mae": 0.8}})
    [('split', 'test'), ('mae', 0.5), ('naive_last_value_mae', 0.8)]
    """
    metrics = card.get("metrics", {})
    return list(metrics.items()) if isinstance(metrics, dict) else []
