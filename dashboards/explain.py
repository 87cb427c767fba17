"""A unit explained in plain language, with the numbers, from the tables of :func:`gatelens.analysis.pipeline.analyze`.

:func:`explain_unit` reads one unit's rows from the analysis -- half-life and retention, gate
saturation, forget/write events and what the input was there, correlations and probes, the
pre-activation drivers, its cluster -- and turns them into short paragraphs a newcomer can follow:
how long the unit remembers, what makes it forget, what it tracks, what drives its gates. Every
number in the text is one of the analysis's numbers (rounded for reading; :attr:`UnitSummary.numbers`
keeps them exact). Nothing is computed here that the analysis did not compute, except the gate
means read from ``units`` and a retention value read off the curve.

No Streamlit here.

Examples
--------
>>> print(describe_half_life(23.4, "forget_gate"))
half of what it stores is still there after about 23 steps (half-life 23.4 steps)
>>> print(describe_half_life(float("inf"), "forget_gate"))
its forget gate never lets the memory decay on this input (half-life: infinite)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from gatelens.analysis import signals as registry
from gatelens.errors import UsageError

#: |r| above which a feature is said to be tracked, and above which strongly.
TRACKS_R = 0.3
STRONG_R = 0.7


def _state_signals() -> tuple[str, ...]:
    """Signals whose correlations describe what a unit holds (the registry's states, in its order)."""
    return registry.state_names()


def _gate_words(signal: str) -> str:
    """``"forget gate (how much of its cell it keeps)"``: the registry's label and description."""
    record = registry.get(signal)
    return f"{record.label} ({record.description})" if record.description else record.label


@dataclass
class UnitSummary:
    """The explanation of one unit.

    Attributes
    ----------
    layer, unit, cell_type
    headline : str
        One sentence: what kind of unit it is and how long it remembers.
    sections : list of (title, text)
        "How long it remembers", "How its gates sit", "What makes it forget", "What it writes",
        "What it tracks", "What drives its gates", "Its group" (those with data).
    numbers : dict of str to float
        The exact values quoted in the text.
    """

    layer: str
    unit: int
    cell_type: str
    headline: str
    sections: list[tuple[str, str]] = field(default_factory=list)
    numbers: dict[str, float] = field(default_factory=dict)
    tracked: str = ""  # the feature it follows (|r| >= TRACKS_R), if any

    @property
    def text(self) -> str:
        """Headline and sections as plain text."""
        parts = [self.headline] + [f"{title}: {body}" for title, body in self.sections]
        return "\n\n".join(parts)


def primer(cell_type: str) -> str:
    """What the gates of a cell do, in two sentences (for readers new to LSTMs and GRUs).

    Examples
    --------
    >>> "c_t = f_t * c_(t-1) + i_t * g_t" in primer("lstm")
    True
    """
    if cell_type == "lstm":
        return (
            "An LSTM unit carries one number from step to step, its cell state c. At every step three gates, "
            "each between 0 and 1, decide what happens to it: the forget gate f how much of the old cell to keep, "
            "the input gate i how much of the new candidate g (between -1 and 1) to write, and the output gate o "
            "how much of the cell to show to the next layer: c_t = f_t * c_(t-1) + i_t * g_t and "
            "h_t = o_t * tanh(c_t)."
        )
    if cell_type == "gru":
        return (
            "A GRU unit carries one number from step to step, its hidden state h. At every step the update gate z "
            "(between 0 and 1) decides how much of the old state to keep, and the rest is filled with a new "
            "candidate, computed from the input and the old state as seen through the reset gate r: "
            "h_t = z_t * h_(t-1) + (1 - z_t) * candidate_t (Keras's convention)."
        )
    return "A SimpleRNN unit has no gates: its state is recomputed from the input and the previous state at every step."


def describe_half_life(half_life: float, signal: str) -> str:
    """The half-life in words (see the module examples)."""
    gate = registry.label(signal)
    if not math.isfinite(half_life):
        return f"its {gate} never lets the memory decay on this input (half-life: infinite)"
    if half_life < 1.0:
        return (
            f"it forgets most of what it holds at every step (half-life {half_life:.2f} steps): its state is "
            "mostly the current input"
        )
    steps = "step" if round(half_life) == 1 else "steps"
    return (
        f"half of what it stores is still there after about {half_life:.0f} {steps} (half-life {half_life:.1f} steps)"
    )


def _pct(v: float) -> str:
    return f"{100.0 * v:.0f}%"


def _rows(df: pd.DataFrame | None, layer: str, unit: int) -> pd.DataFrame:
    if df is None or df.empty or not {"layer", "unit"} <= set(df.columns):
        return pd.DataFrame()
    return df[(df["layer"] == layer) & (df["unit"] == unit)]


def _row(df: pd.DataFrame, **where: Any) -> pd.Series | None:
    if df.empty:
        return None
    sel = np.ones(len(df), bool)
    for k, v in where.items():
        sel &= (df[k] == v).to_numpy()
    hits = df[sel]
    return None if hits.empty else hits.iloc[0]


def _memory_section(summary: UnitSummary, analysis: Any, layer: str, unit: int) -> None:
    hl = _row(_rows(analysis.half_lives, layer, unit))
    if hl is None:
        if summary.cell_type == "simple_rnn":
            summary.sections.append(("How long it remembers", "A SimpleRNN unit has no keep gate to measure."))
        return
    signal = str(hl["signal"])
    half = float(hl["half_life_steps"])
    summary.numbers["half_life_steps"] = half
    units = _rows(analysis.units, layer, unit)
    gate = _row(units, signal=signal)
    text = describe_half_life(half, signal).capitalize() + "."
    if gate is not None:
        mean = float(gate["mean"])
        summary.numbers[f"{signal}:mean"] = mean
        text = f"Its {_gate_words(signal)} is {mean:.2f} on average. " + text[0].upper() + text[1:]
    ret = _rows(analysis.retention, layer, unit)
    if not ret.empty:
        lag = 10 if (ret["lag"] == 10).any() else int(ret["lag"].max())
        r = float(ret.loc[ret["lag"] == lag, "retention"].iloc[0])
        summary.numbers[f"retention_{lag}"] = r
        text += f" Over {lag} consecutive steps it keeps {_pct(r)} of its memory on average (retention curve)."
    summary.sections.append(("How long it remembers", text))


def _gate_state(hi: float, lo: float) -> str:
    if hi >= 0.9:
        return "almost always open"
    if lo >= 0.9:
        return "almost always shut"
    if hi + lo >= 0.5:
        return "mostly switched fully on or off"
    return "mostly in between"


def _gates_section(summary: UnitSummary, analysis: Any, layer: str, unit: int) -> None:
    units = _rows(analysis.units, layer, unit)
    if units.empty:
        return
    bits = []
    for signal in registry.gate_names():
        row = _row(units, signal=signal)
        if row is None:
            continue
        hi, lo = float(row["frac_above_0.9"]), float(row["frac_below_0.1"])
        summary.numbers[f"{signal}:frac_above_0.9"] = hi
        summary.numbers[f"{signal}:frac_below_0.1"] = lo
        name = registry.label(signal)
        bits.append(f"{name} {_pct(hi)} open, {_pct(lo)} shut ({_gate_state(hi, lo)})")
    if bits:
        text = "Share of steps with each gate open (> 0.9) and shut (< 0.1): " + "; ".join(bits) + "."
        summary.sections.append(("How its gates sit", text))


def _event_text(row: pd.Series, what: str, none: str) -> str:
    count, rate = int(row["count"]), float(row["rate"])
    if count == 0:
        return none
    text = f"It {what} {count} time{'s' if count != 1 else ''} ({rate:.1%} of steps)"
    driven = float(row["input_driven"])
    text += (
        f"; {_pct(driven)} of these moments come from the input rather than from its memory"
        " (the change of the gate's pre-activation, split exactly)"
    )
    tokens = str(row.get("top_tokens", "") or "")
    feats = str(row.get("top_features", "") or "")
    if tokens:
        text += f". Most over-represented tokens there: {tokens}"
    elif feats:
        text += f". The input there differs most in: {feats}"
    return text + "."


def _events_section(summary: UnitSummary, analysis: Any, layer: str, unit: int) -> None:
    ev = _rows(analysis.event_summary, layer, unit)
    if ev.empty:
        return
    forget = _row(ev, event="forget")
    if forget is not None:
        summary.numbers["forget_events"] = float(forget["count"])
        summary.numbers["forget_rate"] = float(forget["rate"])
        keep = registry.with_role(summary.cell_type, "keep")
        gate = registry.label(keep) if keep else "keep gate"
        what = f"forgets (its {gate} falls from above 0.9 to below 0.5)"
        none = f"It never forgets at once: its {gate} never falls from above 0.9 to below 0.5 on this input"
        half = summary.numbers.get("half_life_steps", float("inf"))
        none += "; its memory fades gradually instead, at the half-life above." if math.isfinite(half) else "."
        summary.sections.append(("What makes it forget", _event_text(forget, what, none)))
    write = _row(ev, event="write")
    if write is not None:
        summary.numbers["write_events"] = float(write["count"])
        what = (
            "writes (its input gate rises above 0.5)"
            if summary.cell_type == "lstm"
            else "writes (1 - z rises above 0.5)"
        )
        none = "Its write gate never rises past 0.5 from below on this input."
        summary.sections.append(("What it writes", _event_text(write, what, none)))


#: Built-in features that are true/false flags.
FLAG_PREFIXES = ("is_", "inside_")


def _direction(feature: str, r: float) -> str:
    """How the state moves with the feature, in words.

    Examples
    --------
    >>> _direction("is_alpha", -0.9), _direction("bracket_depth", 0.8)
    ('lower where is_alpha is true', 'higher where bracket_depth is larger')
    """
    word = "higher" if r > 0 else "lower"
    if feature.startswith(FLAG_PREFIXES):
        return f"{word} where {feature} is true"
    return f"{word} where {feature} is larger"


def _tracks_section(summary: UnitSummary, analysis: Any, layer: str, unit: int) -> None:
    corr = _rows(analysis.correlations, layer, unit)
    if corr.empty:
        return
    corr = corr.dropna(subset=["pearson_r"])
    state = corr[corr["signal"].isin(_state_signals())]
    pool = state if not state.empty else corr
    if pool.empty:
        summary.sections.append(("What it tracks", "No feature correlates with it (its signals are constant here)."))
        return
    order = pool.assign(_a=pool["pearson_r"].abs()).sort_values("_a", ascending=False, kind="stable")
    best = order.drop_duplicates("feature").head(3)
    top = best.iloc[0]
    r = float(top["pearson_r"])
    summary.numbers["top_feature_r"] = r
    summary.numbers["top_feature_n"] = float(top["n"])
    sig = str(top["signal"]).replace("_", " ")
    rho = float(top["spearman_rho"]) if pd.notna(top.get("spearman_rho")) else float("nan")
    rho_text = f", Spearman rho = {rho:+.2f}" if math.isfinite(rho) else ""
    if abs(r) >= TRACKS_R:
        strength = "closely" if abs(r) >= STRONG_R else "partly"
        summary.numbers["tracks"] = 1.0
        summary.tracked = str(top["feature"])
        text = (
            f"Its {sig} {strength} follows {top['feature']}: it is {_direction(str(top['feature']), r)} "
            f"(Pearson r = {r:+.2f}{rho_text}, over {int(top['n'])} steps)."
        )
    else:
        text = (
            f"None of the features explains its {sig} well: the closest is {top['feature']} "
            f"(Pearson r = {r:+.2f}{rho_text}). It may track something the built-in features do not describe; "
            "add your own features on the Data page."
        )
    others = [f"{row.feature} (r = {float(row.pearson_r):+.2f})" for row in best.iloc[1:].itertuples()]
    if others:
        text += " Next: " + ", ".join(others) + "."
    probes = analysis.probes
    if probes is not None and not probes.empty and "top_units" in probes.columns:
        p = probes[(probes["layer"] == layer) & (probes["feature"] == top["feature"]) & probes["score"].notna()]
        p = p[p["signal"] == top["signal"]] if (p["signal"] == top["signal"]).any() else p
        if not p.empty:
            pr = p.sort_values("score", ascending=False).iloc[0]
            ranked = [int(u) for u in str(pr["top_units"]).split(",") if u.strip().lstrip("-").isdigit()]
            text += (
                f" A linear probe reading {top['feature']} from all units' {str(pr['signal']).replace('_', ' ')} "
                f"in this layer scores {float(pr['score']):.2f} on held-out sequences "
                f"(control task {float(pr['control_score']):.2f})"
            )
            summary.numbers["probe_score"] = float(pr["score"])
            if unit in ranked:
                text += f", and this unit is its number {ranked.index(unit) + 1} by weight"
            text += "."
    summary.sections.append(("What it tracks", text))


def _drivers_section(summary: UnitSummary, analysis: Any, layer: str, unit: int) -> None:
    d = _rows(analysis.decomposition, layer, unit)
    if d.empty:
        return
    keep = registry.with_role(summary.cell_type, "keep")
    gates = registry.GATES.get(summary.cell_type, ())
    bits = []
    for gate in [keep, *(g for g in gates if g != keep)]:
        row = _row(d, gate=gate)
        if row is None or not pd.notna(row["input_share"]):
            continue
        share = float(row["input_share"])
        summary.numbers[f"{gate}:input_share"] = share
        bias = float(row["mean_bias"])
        summary.numbers[f"{gate}:bias"] = bias
        lean = "pushes it open" if bias >= 0.5 else "pushes it shut" if bias <= -0.5 else "about neutral"
        bits.append(f"{registry.label(gate)} {_pct(share)} input, {_pct(1 - share)} memory, bias {bias:+.2f} ({lean})")
    if bits:
        text = (
            "How much of each gate's movement comes from the current input (mean |x W|) and how much from the "
            "memory (mean |h U|): " + "; ".join(bits) + "."
        )
        summary.sections.append(("What drives its gates", text))


def _cluster_section(summary: UnitSummary, analysis: Any, layer: str, unit: int) -> str:
    cl = _rows(analysis.clusters, layer, unit)
    row = _row(cl)
    if row is None:
        return ""
    own = str(row.get("unit_archetype", "") or "")
    group = str(row.get("archetype", "") or "")
    cluster = int(row["cluster"])
    all_cl = analysis.clusters
    size = int((all_cl["cluster"] == cluster).sum())
    summary.numbers["cluster"] = float(cluster)
    text = f"It belongs to cluster {cluster} ({size} unit{'s' if size != 1 else ''} with similar statistics)"
    if group and group != "mixed":
        text += f", whose typical member is {with_article(group)}"
    elif group:
        text += ", whose typical member fits none of the named archetypes"
    traits = str(row.get("traits", "") or "")
    if traits and traits != "like the others":
        text += f"; what sets the group apart: {traits}"
    text += "."
    if own and own != group and own != "mixed":
        text += f" On its own statistics it reads as {with_article(own)}."
    summary.sections.append(("Its group", text))
    return own if own and own != "mixed" else group


def with_article(noun: str) -> str:
    """``noun`` with its indefinite article ("an input-driven", "a resetter").

    Examples
    --------
    >>> with_article("input-driven"), with_article("long-memory integrator"), with_article("always-on")
    ('an input-driven', 'a long-memory integrator', 'an always-on')
    """
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def explain_unit(trace: Any, analysis: Any, layer: str, unit: int) -> UnitSummary:
    """Explain one unit from the analysis of ``trace`` (see the module docstring).

    Parameters
    ----------
    trace : Trace
    analysis : gatelens.analysis.pipeline.Analysis
    layer : str
    unit : int

    Returns
    -------
    UnitSummary
    """
    if layer not in trace.layers:
        raise UsageError(f"unknown layer {layer!r}; the trace has {trace.layers}")
    info = trace[layer].info
    if not 0 <= int(unit) < info.units:
        raise UsageError(f"unit {unit!r} is out of range: layer {layer!r} has {info.units} units (0..{info.units - 1})")
    unit = int(unit)
    summary = UnitSummary(layer=layer, unit=unit, cell_type=info.cell_type, headline="")
    _memory_section(summary, analysis, layer, unit)
    _gates_section(summary, analysis, layer, unit)
    _events_section(summary, analysis, layer, unit)
    _tracks_section(summary, analysis, layer, unit)
    _drivers_section(summary, analysis, layer, unit)
    kind = _cluster_section(summary, analysis, layer, unit)
    head = f"Unit {unit} of layer {layer} ({info.cell_type.upper()}, {info.units} units)"
    if kind and kind != "mixed":
        head += f" is {with_article(kind)}"
    facts = []
    half = summary.numbers.get("half_life_steps")
    if half is not None:
        if not math.isfinite(half):
            facts.append("it never lets its memory decay here")
        elif half < 1.0:
            facts.append("it holds little beyond the current step")
        else:
            facts.append(f"it keeps half of its memory for about {half:.0f} step{'s' if round(half) != 1 else ''}")
    if summary.tracked:
        facts.append(f"it follows {summary.tracked} (r = {summary.numbers['top_feature_r']:+.2f})")
    if facts:
        head += (": " if not (kind and kind != "mixed") else "; ") + " and ".join(facts)
    summary.headline = head + "."
    return summary


def interesting_unit(trace: Any, analysis: Any) -> tuple[str, int]:
    """A unit worth opening first: the one whose state follows a feature best (else the longest memory).

    Features ``step`` and ``position_in_line`` are skipped (counters most units follow a little).
    """
    corr = getattr(analysis, "correlations", None) if analysis is not None else None
    if corr is not None and not corr.empty:
        c = corr[corr["signal"].isin(_state_signals()) & ~corr["feature"].isin(["step", "position_in_line"])]
        c = c.dropna(subset=["pearson_r"])
        if not c.empty:
            best = c.loc[c["pearson_r"].abs().idxmax()]
            return str(best["layer"]), int(best["unit"])
    hl = getattr(analysis, "half_lives", None) if analysis is not None else None
    if hl is not None and not hl.empty:
        finite = hl[np.isfinite(hl["half_life_steps"].to_numpy(float))]
        if not finite.empty:
            best = finite.loc[finite["half_life_steps"].idxmax()]
            return str(best["layer"]), int(best["unit"])
    return trace.layers[0], 0


def notable_units(analysis: Any, layer: str, n_units: int, k: int = 6) -> list[int]:
    """Up to ``k`` units of ``layer`` worth showing first: strongest correlation of their state with a feature.

    Falls back to the order of units when the analysis has no correlations.

    Examples
    --------
    >>> class A: correlations = pd.DataFrame({"layer": "l", "unit": [0, 1, 2], "signal": "cell_state",
    ...                                       "feature": "f", "pearson_r": [0.1, -0.9, 0.5]})
    >>> notable_units(A(), "l", 3, k=2)
    [1, 2]
    """
    corr = getattr(analysis, "correlations", None)
    order: list[int] = []
    if corr is not None and not corr.empty:
        c = corr[(corr["layer"] == layer) & corr["signal"].isin(_state_signals()) & (corr["feature"] != "step")]
        if not c.empty:
            best = c.assign(_a=c["pearson_r"].abs()).groupby("unit")["_a"].max().sort_values(ascending=False)
            order = [int(u) for u in best.index if np.isfinite(best[u])]
    order += [u for u in range(n_units) if u not in order]
    return order[:k]


def sweep_sentence(sweep: Any, unit: int) -> str:
    """One sentence on ``unit`` from a single-unit sweep (:func:`gatelens.models.intervene.sweep`'s table).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"unit": [4, 2], "op": ["zero"] * 2, "signal": ["hidden_state"] * 2,
    ...                    "metric": ["loss"] * 2, "effect": [0.31, 0.02], "rank": [1, 2]})
    >>> sweep_sentence(df, 2)
    'Silencing it raises the loss by 0.02 nats, rank 2 of 2.'
    """
    rows = sweep[sweep["unit"] == int(unit)]
    if rows.empty:
        return ""
    metric = "loss" if "loss" in set(rows["metric"]) else str(rows["metric"].iloc[0])
    row = rows[rows["metric"] == metric].iloc[0]
    n = int((sweep["metric"] == metric).sum())
    verb = {"zero": "Silencing", "mean": "Replacing its state by its mean", "resample": "Resampling its state"}.get(
        str(row["op"]), "Intervening on"
    )
    e = float(row["effect"])
    what = {"loss": ("the loss", " nats"), "mse": ("the squared error", ""), "accuracy": ("the accuracy", "")}
    name, unit_text = what.get(metric, ("the output" if metric == "output_change" else metric, ""))
    if metric == "output_change":
        return f"{verb} it changes the output by {e:.2g} on average, rank {int(row['rank'])} of {n}."
    direction = "raises" if e >= 0 else "lowers"
    return f"{verb} it {direction} {name} by {abs(e):.2g}{unit_text}, rank {int(row['rank'])} of {n}."
