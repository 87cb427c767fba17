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


def is_text_model(x: np.ndarray, y: np.ndarray) -> bool:
    """A next-token model: integer token ids (N, T) in, a distribution over classes at each of the T steps out."""
    y = np.asarray(y)
    x = np.asarray(x)
    return x.ndim == 2 and np.issubdtype(x.dtype, np.integer) and y.ndim == 3 and y.shape[1] == x.shape[1] > 1


def what_if(model: Any, x: np.ndarray, layer: str, unit: int, action: tuple[str, str, float | None]) -> pd.DataFrame:
    """Per output step of the one sequence ``x`` (1, T, ...): ``step``, ``original``, ``intervened`` and
    ``change`` (``intervened - original``), the measure named in ``df.attrs["measure"]``:

    * ``"loss"`` for a next-token model (:func:`is_text_model`): the cross-entropy of the next token in nats
      (:func:`gatelens.analysis.effects.step_effects` with ``"next_token"`` targets; NaN at the last step and
      where the next token is padding), plus ``target``, the next token's id;
    * ``"output"`` otherwise: the model's output averaged over its features (``original``, ``intervened``) and
      ``change``, the mean ``|intervened - original|`` (the ``output_change`` metric).

    Examples
    --------
    >>> from gatelens._examples import tiny_model, tiny_inputs
    >>> df = what_if(tiny_model(), tiny_inputs(n=1), "lstm", 0, ("hidden_state", "zero", None))
    >>> list(df.columns), len(df), df.attrs["measure"]
    (['step', 'original', 'intervened', 'change'], 4, 'output')
    """
    from gatelens.analysis.effects import as_steps, step_effects
    from gatelens.models.intervene import Intervention, intervene, resolve_targets

    signal, op, value = action
    res = intervene(_intervener(model), x, Intervention(layer, signal, op, value, (int(unit),)))
    if is_text_model(x, res.original):
        targets = resolve_targets("next_token", x)
        targets[targets == 0] = -1  # the next token is padding: no loss there
        e = step_effects(res.original, res.intervened, "loss", targets)
        df = pd.DataFrame(
            {
                "step": np.arange(targets.shape[1]),
                "target": targets[0],
                "original": e["original"][0],
                "intervened": e["intervened"][0],
                "change": e["effect"][0],
            }
        )
        df.attrs["measure"] = "loss"
        return df
    change = step_effects(res.original, res.intervened)["effect"][0]
    o, i = as_steps(res.original)[0].mean(-1), as_steps(res.intervened)[0].mean(-1)
    df = pd.DataFrame({"step": np.arange(change.size), "original": o, "intervened": i, "change": change})
    df.attrs["measure"] = "output"
    return df


#: Up to this many steps the chart's x axis shows every token (about 8 px each on a wide page); beyond, step numbers.
MAX_TOKEN_LABELS = 120


def change_chart(df: pd.DataFrame, tokens: list[str] | None = None):
    """The page's bar chart of ``df["change"]`` per step (:func:`what_if`'s frame), under the input's tokens.

    The y title is short on purpose: Vega fits the whole chart, a rotated title taller than the plot included,
    into its height, so a long one squeezes the bars flat. A loss change is signed (red: the intervention makes the next token less likely, blue: more), on a scale
    centred at 0; an output change is a magnitude (blues). With ``tokens`` (one per step, at most
    :data:`MAX_TOKEN_LABELS`) the x axis shows every one, visible (a space as ␣, a newline as ↵); the step is in
    the tooltip.

    Examples
    --------
    >>> df = pd.DataFrame({"step": [0, 1], "original": [1.0, 1.0], "intervened": [1.0, 1.5], "change": [0.0, 0.5]})
    >>> df.attrs["measure"] = "output"
    >>> spec = change_chart(df, ["a", " "]).to_dict()
    >>> spec["encoding"]["y"]["title"], spec["encoding"]["x"]["title"]
    ('|Δ output|', 'input')
    """
    import altair as alt

    from gatelens.dashboards.render import visible_token

    data = df.copy()
    loss = df.attrs.get("measure") == "loss"
    tooltip = [alt.Tooltip(c, format=".6g") if data[c].dtype.kind == "f" else c for c in data.columns]
    shown = tokens is not None and len(tokens) == len(data)
    if shown:
        data.insert(1, "input", [visible_token(t).replace("\u00a0", "␣") or "∅" for t in tokens])
        tooltip.insert(1, "input")
    if shown and len(data) <= MAX_TOKEN_LABELS:
        data["key"] = [f"{s}\u241f{t}" for s, t in zip(data["step"], data["input"])]
        # every token shown (Vega would drop every other one, and the text would read wrong), in the order given
        # explicitly (with sort=None Chromium drew a step out of place: Vega's domain order)
        axis = alt.Axis(
            labelExpr="split(datum.label, '\u241f')[1]",
            labelAngle=0,
            labelFont="monospace",
            labelFontSize=11,
            labelOverlap=False,
            labelPadding=4,
        )
        x = alt.X("key:O", sort=list(data["key"]), title="input", axis=axis)
    else:
        x = alt.X("step:O", title="step", axis=alt.Axis(labelAngle=0, labelOverlap=True))
    if loss:
        y_title = "Δ loss (nats)"
        colour = alt.Scale(scheme="redblue", reverse=True, domainMid=0)
        title = "Change of the loss of the next token, per step (red: worse)"
    else:
        y_title = "|Δ output|"
        colour = alt.Scale(scheme="blues")
        title = "Change of the model's output, per step"
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=x,
            y=alt.Y("change:Q", title=y_title, axis=alt.Axis(format=".2~g")),
            color=alt.Color("change:Q", scale=colour, legend=None),
            tooltip=tooltip,
        )
        .properties(height=260, title=title)
    )


def silence_sweep(model: Any, x: np.ndarray, layer: str) -> pd.DataFrame:
    """The single-unit ablation sweep (hidden state zeroed) of ``layer`` on ``x``: :func:`gatelens.models.intervene.sweep`."""
    from gatelens.models.intervene import sweep

    return sweep(_intervener(model), x, layer, op="zero", signal="hidden_state", n_boot=200)
