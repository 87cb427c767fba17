"""The "What if" page's computations (no Streamlit): one unit's intervention on one sequence, and the sweep rank.

Both call :mod:`gatelens.models.intervene` (the same functions as ``gatelens intervene`` and ``gatelens sweep``),
so the page's numbers are the library's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: The page's choices per cell type: label -> (signal, op, value).
ACTIONS = {
    "lstm": {
        "keep everything (f = 1)": ("forget_gate", "set", 1.0),
        "forget now (f = 0)": ("forget_gate", "set", 0.0),
        "write nothing (i = 0)": ("input_gate", "set", 0.0),
        "silence (h = 0)": ("hidden_state", "zero", None),
    },
    "gru": {
        "keep everything (z = 1)": ("update_gate", "set", 1.0),
        "overwrite now (z = 0)": ("update_gate", "set", 0.0),
        "ignore the past (r = 0)": ("reset_gate", "set", 0.0),
        "silence (h = 0)": ("hidden_state", "zero", None),
    },
    "simple_rnn": {"silence (h = 0)": ("hidden_state", "zero", None)},
}


_INTERVENERS: dict[int, Any] = {}


def _intervener(model: Any) -> Any:
    """One compiled :class:`gatelens.models.intervene.Intervener` per loaded model (a few models at most)."""
    from gatelens.models.intervene import Intervener

    if isinstance(model, Intervener):
        return model
    iv = _INTERVENERS.get(id(model))
    if iv is None or iv.model is not model:
        if len(_INTERVENERS) >= 4:
            _INTERVENERS.pop(next(iter(_INTERVENERS)))
        iv = _INTERVENERS[id(model)] = Intervener(model)
    return iv


def what_if(model: Any, x: np.ndarray, layer: str, unit: int, action: tuple[str, str, float | None]) -> pd.DataFrame:
    """Per output step of the one sequence ``x`` (1, T, ...): ``step``, ``original``, ``intervened`` (the model's
    output, its mean over output features) and ``change`` (mean ``|intervened - original|``).

    Examples
    --------
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> df = what_if(tiny_model(), tiny_inputs(n=1), "lstm", 0, ("hidden_state", "zero", None))
    >>> list(df.columns), len(df)
    (['step', 'original', 'intervened', 'change'], 4)
    """
    from gatelens.analysis.effects import as_steps, step_effects
    from gatelens.models.intervene import Intervention, intervene

    signal, op, value = action
    res = intervene(_intervener(model), x, Intervention(layer, signal, op, value, (int(unit),)))
    change = step_effects(res.original, res.intervened)["effect"][0]
    o, i = as_steps(res.original)[0].mean(-1), as_steps(res.intervened)[0].mean(-1)
    return pd.DataFrame({"step": np.arange(change.size), "original": o, "intervened": i, "change": change})


def silence_sweep(model: Any, x: np.ndarray, layer: str) -> pd.DataFrame:
    """The single-unit ablation sweep (hidden state zeroed) of ``layer`` on ``x``: :func:`gatelens.models.intervene.sweep`."""
    from gatelens.models.intervene import sweep

    return sweep(_intervener(model), x, layer, op="zero", signal="hidden_state", n_boot=200)
