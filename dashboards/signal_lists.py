"""The signal lists of the dashboard's pages, all read from the signal registry (:mod:`gatelens.analysis.signals`).

Each page asks here which signals to offer and which to pick by default, so a signal registered in the
registry shows up on every page without a page edit. No Streamlit here.

Examples
--------
>>> from gatelens.analysis.signals import signals_for
>>> colour_options(signals_for("gru")[:4])
(['update_gate', 'reset_gate', 'candidate', 'hidden_state'], 'hidden_state')
>>> unit_line_signals(signals_for("lstm"))
['input_gate', 'forget_gate', 'output_gate', 'cell_state', 'hidden_state']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gatelens.analysis import signals as registry
from gatelens.dashboards.charts import strip_signals

__all__ = [
    "colour_options",
    "correlation_default",
    "memory_layers",
    "saturation_gates",
    "strip_options",
    "unit_line_signals",
]


def colour_options(signals: Sequence[str]) -> tuple[list[str], str]:
    """Gates page, text models: the "Colour by" options (gates first) and the default (the memory-carrying state)."""
    gates = registry.of_kind(signals, "gate")
    options = gates + [s for s in signals if s not in gates]
    return options, registry.preferred_state(signals) or options[0]


def strip_options(cell_type: str, signals: Iterable[str]) -> list[str]:
    """Gates page, numeric models: the heat strips offered (:func:`gatelens.dashboards.charts.strip_signals`)."""
    present = set(signals)
    return [s for s in strip_signals(cell_type) if s in present]


def unit_line_signals(signals: Iterable[str]) -> list[str]:
    """Unit explained page: the lines drawn for one unit (its gates, then its states)."""
    signals = list(signals)
    return registry.of_kind(signals, "gate") + [s for s in registry.state_names() if s in signals]


def saturation_gates(signals: Iterable[str]) -> list[str]:
    """Units page: one saturation scatter per gate present in the ``units`` table, in registry order."""
    present = set(signals)
    return [g for g in registry.gate_names() if g in present]


def correlation_default(signals: Sequence[str]) -> str:
    """Features page: the signal shown first (a state when there is one)."""
    return registry.preferred_state(signals) or signals[0]


def memory_layers(trace: Any) -> list[str]:
    """Memory page: the layers whose cell has a keep gate (a gated memory to decompose)."""
    return [n for n in trace.layers if registry.with_role(trace[n].info.cell_type, "keep")]
