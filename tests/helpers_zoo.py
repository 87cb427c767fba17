"""The committed zoo models' known units, found by a rule the tool itself offers (no unit index written in tests).

A planted task's known unit is the unit whose cell or hidden state has the largest |Pearson r|
(``gatelens.analysis.correlate.correlations``) with the task's ground-truth feature: ``held_value`` on the steps
held at least the task's minimum delay for ``recall_lstm``, ``depth`` for the bracket counter and
``inside_quote`` for the quote flag of ``brackets_lstm``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from gatelens.analysis.correlate import correlations

STATES = ["cell_state", "hidden_state"]


def zoo_card(name: str) -> dict:
    from gatelens.models.zoo import demos

    return json.loads((demos.DEMO_DIR / f"{name}.card.json").read_text())


def zoo_test_data(name: str, n: int):
    """``n`` sequences of the model's own held-out test set (regenerated from the card's seed and parameters)."""
    from gatelens.models.zoo import tasks

    card = zoo_card(name)
    return tasks.generate(
        card["data"]["task"], n, seed=card["data"]["seeds"]["test"], **card["data"]["source"]["params"]
    )


def feature_frame(features: dict[str, np.ndarray], columns: list[str]) -> pd.DataFrame:
    """``sequence, step`` and the given (N, T) features as a long frame (the features CSV's layout)."""
    n, t = np.shape(features[columns[0]])
    df = pd.DataFrame({"sequence": np.repeat(np.arange(n), t), "step": np.tile(np.arange(t), n)})
    for c in columns:
        df[c] = np.asarray(features[c], np.float64).ravel()
    return df


def known_unit(trace, feats: pd.DataFrame, feature: str, signals=STATES) -> pd.Series:
    """The (unit, signal, pearson_r) row of the largest |r| of any unit's state with ``feature`` on ``feats``."""
    c = correlations(trace, feats, signals=list(signals), feature_columns=[feature]).dropna(subset=["pearson_r"])
    assert len(c), f"no defined correlation with {feature!r}"
    return c.loc[c["pearson_r"].abs().idxmax()]


def recall_memory_unit(trace, features: dict[str, np.ndarray], min_delay: int) -> int:
    """``recall_lstm``'s memory unit: the best |r| with ``held_value`` on steps held >= ``min_delay``."""
    feats = feature_frame(features, ["held_value", "steps_since_mark"])
    return int(known_unit(trace, feats[feats["steps_since_mark"] >= min_delay], "held_value").unit)
