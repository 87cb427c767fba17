"""The one place that names every captured signal, its cell type and its shape.

Every array in a :class:`~gatelens.analysis.trace.Trace`, every column of the CSV exports and
every label in the dashboard uses these names (see ``CONTRACT.md``).

Shapes: every signal is ``(N, T, units)`` -- sequence, step, unit -- with ``step``
the 0-based index in the input's own time order, also for layers that run backwards.
Each layer also carries ``mask`` ``(N, T)`` (True where the step was really processed)
and ``input`` ``(N, T, input_dim)``, the tensor the layer received inside the model.

Examples
--------
>>> from gatelens.analysis.signals import signals_for, GATES
>>> signals_for("lstm")[:4]
('input_gate', 'forget_gate', 'candidate', 'output_gate')
>>> GATES["gru"]
('update_gate', 'reset_gate')
"""

from __future__ import annotations

CELL_TYPES = ("lstm", "gru", "simple_rnn")

LSTM_SIGNALS = (
    "input_gate",
    "forget_gate",
    "candidate",
    "output_gate",
    "cell_state",
    "hidden_state",
    "input_gate_pre",
    "forget_gate_pre",
    "candidate_pre",
    "output_gate_pre",
)
GRU_SIGNALS = (
    "update_gate",
    "reset_gate",
    "candidate",
    "hidden_state",
    "update_gate_pre",
    "reset_gate_pre",
    "candidate_pre",
)
SIMPLE_RNN_SIGNALS = ("hidden_state", "hidden_state_pre")

SIGNALS: dict[str, tuple[str, ...]] = {
    "lstm": LSTM_SIGNALS,
    "gru": GRU_SIGNALS,
    "simple_rnn": SIMPLE_RNN_SIGNALS,
}

#: Gates (outputs of the recurrent activation, normally a sigmoid in [0, 1]).
GATES: dict[str, tuple[str, ...]] = {
    "lstm": ("input_gate", "forget_gate", "output_gate"),
    "gru": ("update_gate", "reset_gate"),
    "simple_rnn": (),
}

#: Signal -> its pre-activation signal, per cell type.
PRE_ACTIVATION: dict[str, dict[str, str]] = {
    "lstm": {
        "input_gate": "input_gate_pre",
        "forget_gate": "forget_gate_pre",
        "candidate": "candidate_pre",
        "output_gate": "output_gate_pre",
    },
    "gru": {
        "update_gate": "update_gate_pre",
        "reset_gate": "reset_gate_pre",
        "candidate": "candidate_pre",
    },
    "simple_rnn": {"hidden_state": "hidden_state_pre"},
}

#: Order of the blocks of ``kernel``/``recurrent_kernel``/``bias`` columns in Keras.
WEIGHT_BLOCKS: dict[str, tuple[str, ...]] = {
    "lstm": ("input_gate", "forget_gate", "candidate", "output_gate"),
    "gru": ("update_gate", "reset_gate", "candidate"),
    "simple_rnn": ("hidden_state",),
}


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
        raise ValueError(f"Unknown cell type {cell_type!r}; expected one of {CELL_TYPES}.") from None


def activation_of(cell_type: str, signal: str, activation: str, recurrent_activation: str | None) -> str | None:
    """Name of the activation function that produced ``signal`` (None for states).

    Examples
    --------
    >>> activation_of("lstm", "forget_gate", "tanh", "sigmoid")
    'sigmoid'
    >>> activation_of("lstm", "candidate", "tanh", "sigmoid")
    'tanh'
    """
    if signal in GATES.get(cell_type, ()):
        return recurrent_activation
    if signal == "candidate" or (cell_type == "simple_rnn" and signal == "hidden_state"):
        return activation
    return None
