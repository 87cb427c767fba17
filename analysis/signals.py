"""The signal registry: the one place that names every captured signal and says what it is.

Every array in a :class:`~gatelens.analysis.trace.Trace`, every column of the CSV exports, every
chart label and every signal list of the dashboard comes from the records registered here: a
:class:`Signal` says the signal's ``kind`` (gate, candidate, state, pre-activation), its value range,
its ``role`` (``"keep"`` for the gate that multiplies the carried memory, ``"write"``, ``"read"``,
``"reset"``), a label and a sentence for readers, and which cell types have it. The tables below
(:data:`SIGNALS`, :data:`GATES`, :data:`PRE_ACTIVATION`, :data:`WEIGHT_BLOCKS`) and the helper
functions are derived from the records and rebuilt whenever one is registered or removed.

Shapes: every signal is ``(N, T, units)`` -- sequence, step, unit -- with ``step``
the 0-based index in the input's own time order, also for layers that run backwards.
Each layer also carries ``mask`` ``(N, T)`` (True where the step was really processed)
and ``input`` ``(N, T, input_dim)``, the tensor the layer received inside the model.

Adding a signal: :func:`register` a :class:`Signal` (the extractor must then produce an array of that
name for the cell types listed); :func:`unregister` removes it again.

Examples
--------
>>> from gatelens.analysis.signals import signals_for, GATES, get, with_role
>>> signals_for("lstm")[:4]
('input_gate', 'forget_gate', 'candidate', 'output_gate')
>>> GATES["gru"]
('update_gate', 'reset_gate')
>>> get("forget_gate").kind, get("forget_gate").value_range, with_role("gru", "keep")
('gate', (0.0, 1.0), 'update_gate')
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gatelens.errors import UsageError

CELL_TYPES = ("lstm", "gru", "simple_rnn")
KINDS = ("gate", "candidate", "state", "pre-activation")


@dataclass(frozen=True)
class Signal:
    """One captured signal.

    Attributes
    ----------
    name : str
        The array's name in a trace, the run store and the CSV columns.
    kind : {"gate", "candidate", "state", "pre-activation"}
    cells : tuple of str
        The cell types that have it (each in :data:`CELL_TYPES`).
    value_range : (float, float) or None
        Bounds for the default activations (gates in [0, 1], tanh outputs in [-1, 1]); None if unbounded.
    role : str or None
        What the gate does to the memory: ``"keep"`` (the share of the carried memory kept: LSTM forget,
        GRU update), ``"write"``, ``"read"``, ``"reset"``; ``"output"`` for the state the layer outputs
        (``hidden_state``); None for the others.
    label : str
        Short human name ("forget gate").
    description : str
        What it means for a unit, for plain-language text.
    pre_of : str or None
        For a pre-activation: the signal it is the pre-activation of.
    block : int or None
        For a signal with a pre-activation: the index of its block of columns in Keras's
        ``kernel``/``recurrent_kernel``/``bias``.

    Examples
    --------
    >>> f = get("forget_gate")
    >>> f.kind, f.cells, f.value_range, f.role, f.label, f.block
    ('gate', ('lstm',), (0.0, 1.0), 'keep', 'forget gate', 1)
    >>> Signal("dial", "knob", ("lstm",))
    Traceback (most recent call last):
    ...
    gatelens.errors.UsageError: signal 'dial': kind must be one of ('gate', 'candidate', ...), got 'knob'
    """

    name: str
    kind: str
    cells: tuple[str, ...]
    value_range: tuple[float, float] | None = None
    role: str | None = None
    label: str = ""
    description: str = ""
    pre_of: str | None = None
    block: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"signal {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        bad = [c for c in self.cells if c not in CELL_TYPES]
        if bad or not self.cells:
            raise UsageError(
                f"signal {self.name!r}: cells must be a non-empty subset of {CELL_TYPES}, got {self.cells}"
            )

    @property
    def bounded(self) -> bool:
        """True when the values have fixed bounds (a fixed colour scale fits every unit)."""
        return self.value_range is not None


_UNIT = (0.0, 1.0)
_SIGNED = (-1.0, 1.0)
_LG, _G, _LGR = ("lstm",), ("gru",), ("lstm", "gru")

# Registration order is the order of every signal list (per cell type: the records that cell has).
_BUILTIN: tuple[Signal, ...] = (
    Signal("input_gate", "gate", _LG, _UNIT, "write", "input gate", "how much of the new candidate it writes", block=0),
    Signal("forget_gate", "gate", _LG, _UNIT, "keep", "forget gate", "how much of its cell it keeps", block=1),
    Signal("update_gate", "gate", _G, _UNIT, "keep", "update gate", "how much of its old state it keeps", block=0),
    Signal(
        "reset_gate", "gate", _G, _UNIT, "reset", "reset gate", "how much of its old state the candidate sees", block=1
    ),
    Signal("candidate", "candidate", _LGR, _SIGNED, None, "candidate", "the new value it could write", block=2),
    Signal("output_gate", "gate", _LG, _UNIT, "read", "output gate", "how much of its cell it shows", block=3),
    Signal("cell_state", "state", _LG, None, None, "cell state", "the memory the cell carries"),
    Signal(
        "hidden_state",
        "state",
        ("lstm", "gru", "simple_rnn"),
        _SIGNED,
        "output",
        "hidden state",
        "what it outputs",
        block=0,
    ),  # fmt: skip
)
_PRE_CELLS = {"input_gate": _LG, "forget_gate": _LG, "update_gate": _G, "reset_gate": _G, "candidate": _LGR}
_PRE_CELLS.update({"output_gate": _LG, "hidden_state": ("simple_rnn",)})
_BUILTIN += tuple(
    Signal(
        f"{s}_pre",
        "pre-activation",
        cells,
        None,
        None,
        f"{s.replace('_', ' ')} pre-activation",
        f"the {s.replace('_', ' ')} before its activation",
        pre_of=s,
    )  # fmt: skip
    for s, cells in _PRE_CELLS.items()
)

_REGISTRY: dict[str, Signal] = {}

#: Cell type -> its signal names (derived from the registry; updated in place by :func:`register`).
SIGNALS: dict[str, tuple[str, ...]] = {}
#: Cell type -> its gates (outputs of the recurrent activation, normally a sigmoid in [0, 1]).
GATES: dict[str, tuple[str, ...]] = {}
#: Cell type -> {signal: its pre-activation signal}.
PRE_ACTIVATION: dict[str, dict[str, str]] = {}
#: Cell type -> order of the blocks of ``kernel``/``recurrent_kernel``/``bias`` columns in Keras.
WEIGHT_BLOCKS: dict[str, tuple[str, ...]] = {}


def _rebuild() -> None:
    records = list(_REGISTRY.values())
    for table in (SIGNALS, GATES, PRE_ACTIVATION, WEIGHT_BLOCKS):
        table.clear()
    for cell in CELL_TYPES:
        mine = [r for r in records if cell in r.cells]
        SIGNALS[cell] = tuple(r.name for r in mine)
        GATES[cell] = tuple(r.name for r in mine if r.kind == "gate")
        PRE_ACTIVATION[cell] = {r.pre_of: r.name for r in mine if r.kind == "pre-activation" and r.pre_of}
        blocks = sorted((r.block, r.name) for r in mine if r.block is not None and r.name in PRE_ACTIVATION[cell])
        WEIGHT_BLOCKS[cell] = tuple(name for _, name in blocks)


def register(signal: Signal) -> Signal:
    """Add ``signal`` to the registry (after those there are) and rebuild the derived tables.

    Raises
    ------
    UsageError
        When a signal of that name is registered already.

    Examples
    --------
    >>> s = register(Signal("write_share", "gate", ("gru",), (0.0, 1.0), label="write share"))
    >>> signals_for("gru")[-1], kind_of("write_share")
    ('write_share', 'gate')
    >>> unregister("write_share").name in signals_for("gru")
    False
    """
    if signal.name in _REGISTRY:
        raise UsageError(f"signal {signal.name!r} is registered already")
    _REGISTRY[signal.name] = signal
    _rebuild()
    return signal


def unregister(name: str) -> Signal:
    """Remove the signal ``name`` from the registry (returns its record).

    Examples
    --------
    >>> _ = register(Signal("write_share", "gate", ("gru",), (0.0, 1.0)))
    >>> "write_share" in signals_for("gru")
    True
    >>> unregister("write_share").cells, "write_share" in signals_for("gru")
    (('gru',), False)
    """
    record = get(name)
    del _REGISTRY[name]
    _rebuild()
    return record


def get(name: str) -> Signal:
    """The record of signal ``name``.

    Examples
    --------
    >>> get("cell_state").label
    'cell state'
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown signal {name!r}; the registered signals are {list(_REGISTRY)}") from None


def records(cell_type: str | None = None) -> tuple[Signal, ...]:
    """Every record (of ``cell_type`` when given), in registry order.

    Examples
    --------
    >>> [(r.name, r.kind) for r in records("simple_rnn")]
    [('hidden_state', 'state'), ('hidden_state_pre', 'pre-activation')]
    >>> len(records()) == len({name for cell in CELL_TYPES for name in signals_for(cell)})
    True
    """
    if cell_type is None:
        return tuple(_REGISTRY.values())
    names = signals_for(cell_type)
    return tuple(_REGISTRY[n] for n in names)


def signals_for(cell_type: str) -> tuple[str, ...]:
    """Return the signal names captured for ``cell_type``.

    Parameters
    ----------
    cell_type : {"lstm", "gru", "simple_rnn"}

    Returns
    -------
    tuple of str

    Examples
    --------
    >>> signals_for("simple_rnn")
    ('hidden_state', 'hidden_state_pre')
    """
    try:
        return SIGNALS[cell_type]
    except KeyError:
        raise UsageError(f"Unknown cell type {cell_type!r}; expected one of {CELL_TYPES}.") from None


def kind_of(name: str) -> str | None:
    """The kind of a registered signal, None for any other name."""
    record = _REGISTRY.get(name)
    return None if record is None else record.kind


def value_range(name: str) -> tuple[float, float] | None:
    """The fixed bounds of a registered signal (None when unbounded or not registered)."""
    record = _REGISTRY.get(name)
    return None if record is None else record.value_range


def label(name: str) -> str:
    """The human label of a signal (its name with spaces when it is not registered).

    Examples
    --------
    >>> label("update_gate"), label("my_feature")
    ('update gate', 'my feature')
    """
    record = _REGISTRY.get(name)
    return record.label if record is not None and record.label else name.replace("_", " ")


def of_kind(names: Iterable[str], *kinds: str) -> list[str]:
    """The names (in the given order) whose kind is one of ``kinds``.

    Examples
    --------
    >>> of_kind(["cell_state", "forget_gate", "forget_gate_pre", "input_gate"], "gate")
    ['forget_gate', 'input_gate']
    """
    return [n for n in names if kind_of(n) in kinds]


def not_pre(names: Iterable[str]) -> list[str]:
    """The names that are not pre-activations (what the pages and probes show by default)."""
    return [n for n in names if kind_of(n) != "pre-activation"]


def gate_names() -> tuple[str, ...]:
    """Every registered gate, of any cell type, in registry order."""
    return tuple(r.name for r in _REGISTRY.values() if r.kind == "gate")


def state_names() -> tuple[str, ...]:
    """Every registered state, in registry order (the memory-carrying ``cell_state`` first)."""
    return tuple(r.name for r in _REGISTRY.values() if r.kind == "state")


def with_role(cell_type: str, role: str) -> str | None:
    """The signal of ``cell_type`` with ``role`` (e.g. ``"keep"``), None when the cell has none.

    Examples
    --------
    >>> with_role("lstm", "keep"), with_role("gru", "read"), with_role("simple_rnn", "keep")
    ('forget_gate', None, None)
    """
    return next((r.name for r in records(cell_type) if r.role == role), None)


def memory_state(cell_type: str) -> str:
    """The state the cell carries its memory in: its first state (LSTM ``cell_state``, else ``hidden_state``).

    Examples
    --------
    >>> memory_state("lstm"), memory_state("gru")
    ('cell_state', 'hidden_state')
    """
    return next(r.name for r in records(cell_type) if r.kind == "state")


def preferred_state(names: Iterable[str]) -> str | None:
    """The first of ``names`` that is a state, in registry order (``cell_state`` before ``hidden_state``)."""
    present = set(names)
    return next((s for s in state_names() if s in present), None)


def activation_of(cell_type: str, signal: str, activation: str, recurrent_activation: str | None) -> str | None:
    """Name of the activation function that produced ``signal`` (None for states and pre-activations).

    Examples
    --------
    >>> activation_of("lstm", "forget_gate", "tanh", "sigmoid")
    'sigmoid'
    >>> activation_of("lstm", "candidate", "tanh", "sigmoid")
    'tanh'
    """
    if signal in GATES.get(cell_type, ()):
        return recurrent_activation
    if signal in PRE_ACTIVATION.get(cell_type, {}):
        return activation
    return None


for _record in _BUILTIN:
    _REGISTRY[_record.name] = _record
_rebuild()
