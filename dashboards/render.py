"""Text coloured by a signal, one character (token) per step, as in Karpathy et al. (2015) and LSTMVis.

:func:`colored_text_html` returns an HTML fragment: one ``<span>`` per step whose background is
the signal's value at that step and whose ``title`` (shown on hover) lists every gate and state of
the unit at that step. Every piece of user text -- tokens, titles -- goes through ``html.escape``,
so a token such as ``<script>`` shows as text and never runs.

No Streamlit here.

Examples
--------
>>> import numpy as np
>>> html_ = colored_text_html(["<", "b", ">"], np.array([0.0, 0.5, 1.0]), scale=signal_scale("forget_gate", 1.0))
>>> "&lt;" in html_ and "<b>" not in html_
True
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gatelens.analysis import signals as registry
from gatelens.errors import UsageError

# sequential (0 -> 1): white to deep blue; diverging (-1 -> 1): red, white, blue
_SEQ = [(247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107)]
_DIV = [
    (178, 24, 43),
    (239, 138, 98),
    (253, 219, 199),
    (247, 247, 247),
    (209, 229, 240),
    (103, 169, 207),
    (33, 102, 172),
]


@dataclass(frozen=True)
class Scale:
    """How values map to colours: ``kind`` "sequential" on [lo, hi] or "diverging" on [-hi, hi]."""

    kind: str
    lo: float
    hi: float

    def unit(self, v: np.ndarray) -> np.ndarray:
        """Values mapped to [0, 1] along the colour ramp."""
        v = np.asarray(v, np.float64)
        if self.kind == "sequential":
            span = self.hi - self.lo or 1.0
            return np.clip((v - self.lo) / span, 0.0, 1.0)
        hi = self.hi or 1.0
        return np.clip(0.5 + 0.5 * v / hi, 0.0, 1.0)

    @property
    def ramp(self) -> list[tuple[int, int, int]]:
        return _SEQ if self.kind == "sequential" else _DIV


def signal_scale(signal: str, max_abs: float) -> Scale:
    """The colour scale of ``signal``: its fixed range from the signal registry (gates [0, 1], bounded states
    [-1, 1]), else symmetric around 0 up to ``max_abs``.

    Examples
    --------
    >>> signal_scale("forget_gate", 5.0), signal_scale("cell_state", 2.5)
    (Scale(kind='sequential', lo=0.0, hi=1.0), Scale(kind='diverging', lo=-2.5, hi=2.5))
    """
    bounds = registry.value_range(signal)
    if bounds is not None:
        lo, hi = bounds
        if lo >= 0.0:
            return Scale("sequential", lo, hi)
        return Scale("diverging", -max(-lo, hi), max(-lo, hi))
    m = float(max_abs) if np.isfinite(max_abs) and max_abs > 0 else 1.0
    return Scale("diverging", -m, m)


def _mix(ramp: list[tuple[int, int, int]], u: float) -> tuple[int, int, int]:
    pos = u * (len(ramp) - 1)
    i = min(int(pos), len(ramp) - 2)
    f = pos - i
    a, b = ramp[i], ramp[i + 1]
    return tuple(int(round(a[k] + (b[k] - a[k]) * f)) for k in range(3))  # type: ignore[return-value]


def colours(values: np.ndarray, scale: Scale) -> list[tuple[str, str]]:
    """``(background, text colour)`` CSS pairs for each value (text white on dark backgrounds).

    Examples
    --------
    >>> colours(np.array([0.0, 1.0]), Scale("sequential", 0.0, 1.0))
    [('rgb(247,251,255)', '#111'), ('rgb(8,48,107)', '#fff')]
    """
    out = []
    for u in scale.unit(values):
        if not np.isfinite(u):
            out.append(("transparent", "#999"))
            continue
        r, g, b = _mix(scale.ramp, float(u))
        light = 0.299 * r + 0.587 * g + 0.114 * b > 140
        out.append((f"rgb({r},{g},{b})", "#111" if light else "#fff"))
    return out


def visible_token(token: str) -> str:
    """How a token is drawn: whitespace made visible (the newline itself is added after it).

    Examples
    --------
    >>> visible_token("\\n"), visible_token(" "), visible_token("\\t"), visible_token("")
    ('↵', '\\xa0', '→', '∅')
    """
    if token == "":
        return "∅"
    return token.replace("\n", "↵").replace("\t", "→").replace(" ", "\u00a0").replace("\r", "␍")


def hover_text(step: int, token: str, values: Mapping[str, float]) -> str:
    """The hover text of one step: the step, its token and every value (one per line).

    Examples
    --------
    >>> print(hover_text(3, "a", {"forget_gate": 0.91234, "cell_state": -1.5}))
    step 3 · 'a'
    forget_gate 0.912
    cell_state -1.500
    """
    lines = [f"step {step} · {token!r}"]
    lines += [f"{k} {v:.3f}" for k, v in values.items()]
    return "\n".join(lines)


def colored_text_html(
    tokens: Sequence[str],
    values: np.ndarray,
    *,
    scale: Scale,
    hover: Sequence[str] | None = None,
    mask: np.ndarray | None = None,
    label: str | None = None,
    marked: int | None = None,
) -> str:
    """One line of text, each token's background coloured by ``values`` (see the module docstring).

    Parameters
    ----------
    tokens : sequence of str
        One token per step (user text: escaped here).
    values : array (T,)
    scale : Scale
    hover : sequence of str, optional
        Hover text per step (escaped here); default the value.
    mask : array (T,) of bool, optional
        False for padded steps (drawn faint, no colour).
    label : str, optional
        A caption before the text (escaped here).
    marked : int, optional
        The index of a token to outline (an example's own step).
    """
    values = np.asarray(values, np.float64)
    if len(tokens) != len(values):
        raise UsageError(f"{len(tokens)} tokens but {len(values)} values")
    cols = colours(values, scale)
    parts = []
    if label:
        parts.append(f'<div class="gl-label">{html.escape(label)}</div>')
    parts.append('<div class="gl-text">')
    for t, tok in enumerate(tokens):
        tok = str(tok)
        real = mask is None or bool(mask[t])
        title = hover[t] if hover is not None else f"step {t} · {tok!r}: {values[t]:.3f}"
        bg, fg = cols[t] if real else ("transparent", "#bbb")
        cls = "gl-tok gl-mark" if marked is not None and t == marked else "gl-tok"
        parts.append(
            f'<span class="{cls}" style="background:{bg};color:{fg}" title="{html.escape(str(title), quote=True)}">'
            f"{html.escape(visible_token(tok))}</span>"
        )
        if "\n" in tok:
            parts.append("<br>")
    parts.append("</div>")
    return "".join(parts)


STYLE = (
    "<style>"
    ".gl-text{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:14px;line-height:1.9;"
    "white-space:normal;word-break:break-all;margin:0 0 10px 0}"
    ".gl-tok{padding:2px 0;border-radius:2px;cursor:default}"
    ".gl-mark{outline:2px solid #e6550d;outline-offset:-1px}"
    ".gl-label{font-size:12px;color:#555;margin:6px 0 2px 0}"
    ".gl-legend{display:flex;align-items:center;gap:6px;font-size:12px;color:#555;margin:4px 0 10px 0}"
    ".gl-bar{width:180px;height:10px;border-radius:2px}"
    "</style>"
)


def legend_html(scale: Scale, title: str) -> str:
    """A small colour bar with its end values."""
    stops = ",".join(f"rgb({r},{g},{b})" for r, g, b in scale.ramp)
    lo, hi = (scale.lo, scale.hi) if scale.kind == "sequential" else (-scale.hi, scale.hi)
    return (
        f'<div class="gl-legend"><span>{html.escape(title)}</span><span>{lo:.3g}</span>'
        f'<span class="gl-bar" style="background:linear-gradient(90deg,{stops})"></span><span>{hi:.3g}</span></div>'
    )


def unit_rows_html(
    tokens: Sequence[str],
    signals: Mapping[str, np.ndarray],
    color_by: str,
    units: Sequence[int],
    *,
    mask: np.ndarray | None = None,
    layer: str = "",
    relative: bool = False,
) -> str:
    """The text once per unit, coloured by ``color_by``; hovering a token shows every signal of that unit there.

    Gates and bounded states share one fixed scale; an unbounded signal (the cell state, pre-activations)
    is scaled per unit to its own largest ``|value|`` on the real steps, given in the row's label. With
    ``relative``, every row is scaled from its own minimum to its own maximum on the real steps (a forget gate
    between 0.85 and 0.99 then spans the whole ramp), the range given in the row's label.

    Parameters
    ----------
    tokens : sequence of str (T,)
    signals : dict of str to array (T, units)
        The signals of one sequence of one layer.
    color_by : str
        A key of ``signals``.
    units : sequence of int
    mask : array (T,) of bool, optional
    layer : str
        For the labels.
    """
    arr = np.asarray(signals[color_by], np.float64)
    real = np.ones(arr.shape[0], bool) if mask is None else np.asarray(mask, bool)
    fixed = registry.value_range(color_by) is not None
    names = list(signals)
    out = [STYLE]
    name = registry.label(color_by)
    if relative:
        out.append(legend_html(Scale("sequential", 0.0, 1.0), f"{name}: each row from its own min (0) to max (1)"))
    elif fixed:
        out.append(legend_html(signal_scale(color_by, 1.0), name))
    else:
        out.append(legend_html(Scale("diverging", -1.0, 1.0), f"{name} / its largest |value| in the row"))
    for u in units:
        col = arr[:, u]
        if relative:
            lo, hi = (float(np.nanmin(col[real])), float(np.nanmax(col[real]))) if real.any() else (0.0, 1.0)
            scale = Scale("sequential", lo, hi if hi > lo else lo + 1.0)
            label = f"{layer} unit {u} · {name} ({lo:.3g} to {hi:.3g})"
        else:
            top = float(np.nanmax(np.abs(col[real]))) if real.any() else 1.0
            scale = signal_scale(color_by, top if top > 0 else 1.0)
            label = f"{layer} unit {u} · {name}" + ("" if fixed else f" (±{scale.hi:.3g})")
        hover = [hover_text(t, str(tokens[t]), {s: float(signals[s][t, u]) for s in names}) for t in range(len(tokens))]
        out.append(colored_text_html(tokens, col, scale=scale, hover=hover, mask=mask, label=label))
    return "".join(out)
