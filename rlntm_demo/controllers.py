"""The controller networks of the RL-NTM, and the baseline LSTM of Appendix A.

**What a controller reads** at every step (Table 1 of the paper): the symbol under the input
head (a learned embedding; one per cell of the read window), the value of the current memory cell
(the raw real vector; one per cell of the window) and learned embeddings of the three actions of
the previous step. At the first step the previous actions are a dedicated ``START`` index.
:meth:`Controller.encode` concatenates them into one vector ``x_t``.

**What it produces** from its state ``h_t``:

* the logits of the three decisions (input move, memory move, output), from **one** linear layer
  split in three, multiplied by the inverse temperature (0.01 in the paper);
* the prediction logits over the ``NUM_SYMBOLS`` symbols;
* the new value of the current memory cell: ``sigmoid(W_k h) * old + tanh(W_v h)``, a gated
  overwrite, as the authors' code did (the paper only says the controller outputs the new value).

**The three controllers.**

* :class:`LSTMController`: one LSTM layer; its initial hidden and cell state are filled with
  ``ModelConfig.initial_state`` (the paper: zero).
* :class:`FeedForwardController`: one tanh layer, no recurrent state: it only sees the current
  reads and the previous actions.
* :class:`DirectAccessController` (Section 8.1): the LSTM plus additive shortcuts, each modulated
  by its own scalar sigmoid gate computed from ``h_t``: the one-hot current input symbol is added
  to the memory write and to the prediction logits, the (new) current memory cell is added to the
  prediction logits, and the two adjacent memory cells are added to the memory write. The paper
  says "the memory [is added] to the adjacent memories" without saying how; adding the neighbours'
  contents into the cell being written is the reading chosen here (the authors' code has no such
  path), so content can travel along the tape as the head moves. Adding a one-hot symbol to a
  memory cell is why a memory cell is ``NUM_SYMBOLS`` = 35 wide. Two options of
  :class:`~rlntm_demo.config.ModelConfig` change it (issue 19): ``shortcut_scale`` multiplies the
  two shortcuts into the prediction logits by learnable positive scales (each gate alone adds at
  most +1 logit), and ``adjacent_memory`` starts the neighbour gates closed or removes them.
  :class:`WindowedDirectAccessController` is the authors' version instead
  (``direct_access = "authors"``): gates over the whole read window, every cell of the memory
  window written.

**The baseline LSTM** (:class:`OfflineBaseline`, Appendix A, "offline baseline prediction") first
reads the whole input tape, then runs in tandem with the controller on the very inputs ``x_t`` the
controller received, with the gradient into them blocked, and outputs a baseline ``b_t`` for each
step before that step's actions are chosen. It never influences the controller, so running it
after the episode over the recorded inputs, as :class:`~rlntm_demo.model.RLNTM` does, computes
exactly what running it alongside would.

>>> import torch
>>> from rlntm_demo.config import ModelConfig
>>> controller = make_controller(ModelConfig(controller="lstm", hidden_size=4, embedding_size=3))
>>> controller.input_size  # 3 (symbol) + 35 (memory cell) + 3 * 3 (previous actions)
47
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from .config import NUM_SYMBOLS, ModelConfig

if TYPE_CHECKING:
    from .interfaces import MemoryTape

__all__ = [
    "Controller",
    "DirectAccessController",
    "FeedForwardController",
    "LSTMController",
    "OfflineBaseline",
    "START",
    "WindowedDirectAccessController",
    "make_controller",
]

START = 3
"""The "previous action" index fed at the first step (the actions themselves are 0..2)."""
CLOSED_GATE_BIAS = -6.0
"""Initial bias of the adjacent-memory gates with ``adjacent_memory="closed"`` (sigmoid: 0.0025)."""


class Controller(nn.Module):
    """The parts every controller shares: input encoding and the output heads.

    Subclasses implement :meth:`initial_state` and :meth:`step`, and may add to
    :meth:`memory_write` and :meth:`prediction_logits`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.memory = config.interfaces.memory
        window = 2 * config.read_window + 1
        e = config.embedding_size
        self.symbol_embedding = nn.Embedding(NUM_SYMBOLS, e)
        self.input_move_embedding = nn.Embedding(4, e)
        self.output_embedding = nn.Embedding(4, e)
        self.input_size = window * e + 2 * e
        if self.memory:
            self.memory_move_embedding = nn.Embedding(4, e)
            self.input_size += window * config.memory_width + e
        self.action_sizes = (3, 3, 2) if self.memory else (3, 2)
        self.action_head = nn.Linear(config.hidden_size, sum(self.action_sizes))
        self.prediction_head = nn.Linear(config.hidden_size, NUM_SYMBOLS)
        if self.memory:
            self.keep_head = nn.Linear(config.hidden_size, config.memory_width)
            self.value_head = nn.Linear(config.hidden_size, config.memory_width)

    def encode(self, input_window: torch.Tensor, memory_window: torch.Tensor | None, previous: torch.Tensor) -> torch.Tensor:
        """The controller's input x_t.

        Arguments:
            input_window: (B, 2k+1) long, the symbols under the input read window.
            memory_window: (B, 2k+1, width), the memory cells under the read window (``None``
                without memory).
            previous: (B, 3) long, the previous input move, memory move and output decision
                (``START`` at the first step).

        Returns:
            (B, input_size).
        """
        parts = [self.symbol_embedding(input_window).flatten(1)]
        if self.memory:
            assert memory_window is not None
            parts.append(memory_window.flatten(1))
        parts.append(self.input_move_embedding(previous[:, 0]))
        if self.memory:
            parts.append(self.memory_move_embedding(previous[:, 1]))
        parts.append(self.output_embedding(previous[:, 2]))
        return torch.cat(parts, dim=1)

    def initial_state(self, batch_size: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """The state before the first step."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One step: ``(h_t, new state)`` from x_t and the previous state."""
        raise NotImplementedError

    def action_logits(self, h: torch.Tensor) -> list[torch.Tensor | None]:
        """Logits of the input move (B, 3), memory move (B, 3) or ``None``, and output (B, 2).

        One linear layer, split in three, times the inverse temperature.
        """
        logits = self.action_head(h) * self.config.inverse_temperature
        parts: list[torch.Tensor | None] = list(torch.split(logits, list(self.action_sizes), dim=1))
        if not self.memory:
            parts.insert(1, None)
        return parts

    def memory_write(self, h: torch.Tensor, old: torch.Tensor, symbol: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """The new value of the current memory cell: ``sigmoid(W_k h) * old + tanh(W_v h)``.

        Arguments:
            h: (B, hidden), the controller's output.
            old: (B, width), the current cell before the write.
            symbol: (B,) long, the symbol under the input head.
            left, right: (B, width), the two adjacent cells.
        """
        return torch.sigmoid(self.keep_head(h)) * old + torch.tanh(self.value_head(h))

    def prediction_logits(self, h: torch.Tensor, symbol: torch.Tensor, cell: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, NUM_SYMBOLS) of the prediction for the next target.

        Arguments:
            h: (B, hidden), or (B, T, hidden) for all steps at once.
            symbol: (B,) long, the symbol under the input head (or (B, T)).
            cell: (B, width), the current memory cell after this step's write (``None`` without
                memory), or (B, T, width).
        """
        return self.prediction_head(h)

    def write_and_predict(self, h: torch.Tensor, input_window: torch.Tensor, memory: MemoryTape | None,
                          rows: torch.Tensor) -> torch.Tensor:
        """Steps 4 and 5 of the reference step: write the memory, then the prediction logits
        (B, NUM_SYMBOLS), which read the freshly written memory.

        Arguments:
            h: (B, hidden), the controller's output.
            input_window: (B, 2k+1) long, the symbols under the input read window.
            memory: the memory tape (``None`` without memory), written in place.
            rows: (B,) bool, the rows whose memory is written (those still running).
        """
        symbol = input_window[:, self.config.read_window]
        cell = None
        if memory is not None:
            memory.write(self.memory_write(h, memory.cell(0), symbol, memory.cell(-1), memory.cell(1)), rows=rows)
            cell = memory.cell(0)
        return self.prediction_logits(h, symbol, cell)

    def prediction_weights(self) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
        """:meth:`prediction_logits` as one linear map, a gate count and the gates' scales, for
        :func:`rlntm_demo.fast.fused.predict`: (weight, bias, gates, scales), where the weight's rows
        beyond the first ``NUM_SYMBOLS`` are the pre-activations of gates that add the one-hot
        symbol (the first gate) and the memory cell (the second) to the logits, and ``scales``
        (``None``: 1) multiplies what each adds."""
        return self.prediction_head.weight, self.prediction_head.bias, 0, None

    def reset_extra_parameters(self) -> None:
        """Set the parameters whose initial value the config prescribes (after the model has
        drawn every parameter N(0, init_std^2)); none here."""

    @property
    def shortcut_scales(self) -> torch.Tensor | None:
        """The positive scales of the direct-access shortcuts into the prediction logits (the
        symbols', then the memory cells'), ``softplus(shortcut_scale_raw)``, or ``None`` (no
        scale: 1)."""
        raw = getattr(self, "shortcut_scale_raw", None)
        return None if raw is None else nn.functional.softplus(raw)


class LSTMController(Controller):
    """A one-layer LSTM controller (Fig. 5 of the paper)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.cell = nn.LSTMCell(self.input_size, config.hidden_size)

    def initial_state(self, batch_size: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Hidden and cell states filled with ``config.initial_state`` (the paper: zero; the
        authors' code: 0.1)."""
        start = torch.full((batch_size, self.config.hidden_size), self.config.initial_state, dtype=dtype)
        return start, start

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        h, c = self.cell(x, (state[0], state[1]))
        return h, (h, c)


class FeedForwardController(Controller):
    """A one-hidden-layer tanh network: no state, it sees only the current reads and previous actions."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.layer = nn.Linear(self.input_size, config.hidden_size)

    def initial_state(self, batch_size: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """No state."""
        return ()

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        return torch.tanh(self.layer(x)), ()


class DirectAccessController(LSTMController):
    """The direct-access controller of Section 8.1: the LSTM plus gated shortcuts (Fig. 6).

    Gates, each ``sigmoid(w . h + b)``, one scalar per row of :attr:`gate_head`, in this order:
    input to memory, left neighbour to memory, right neighbour to memory (with memory; the two
    neighbour gates only unless ``config.adjacent_memory`` is ``"off"``); input to output; memory
    to output (with memory).

    With ``config.shortcut_scale`` set, what the two gates into the prediction logits add is
    further multiplied by :attr:`shortcut_scales` = ``softplus(shortcut_scale_raw)``, one learnable
    positive scale per gate, initialised to ``config.shortcut_scale``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.adjacent = self.memory and config.adjacent_memory != "off"
        write_gates = (3 if self.adjacent else 1) if self.memory else 0
        self.output_gates = slice(write_gates, write_gates + (2 if self.memory else 1))
        # The rows of gate_head of the gates into the prediction logits.
        self.gate_head = nn.Linear(config.hidden_size, self.output_gates.stop)
        self.shortcut_scale_raw: nn.Parameter | None = None
        if config.shortcut_scale is not None:
            self.shortcut_scale_raw = nn.Parameter(torch.empty(self.output_gates.stop - write_gates))
        self.reset_extra_parameters()

    def reset_extra_parameters(self) -> None:
        """The shortcut scales start at ``config.shortcut_scale``; with ``adjacent_memory =
        "closed"`` the neighbour gates' biases start at -6."""
        with torch.no_grad():
            if self.shortcut_scale_raw is not None:
                self.shortcut_scale_raw.fill_(_inverse_softplus(float(self.config.shortcut_scale)))  # type: ignore[arg-type]
            if self.adjacent and self.config.adjacent_memory == "closed":
                self.gate_head.bias[1:3].fill_(CLOSED_GATE_BIAS)

    def _gates(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate_head(h))

    def memory_write(self, h: torch.Tensor, old: torch.Tensor, symbol: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """The LSTM's write plus the gated one-hot input symbol and the gated adjacent cells
        (unless ``adjacent_memory`` is ``"off"``)."""
        gates = self._gates(h)
        onehot = nn.functional.one_hot(symbol, NUM_SYMBOLS).to(h.dtype)
        new = super().memory_write(h, old, symbol, left, right) + gates[..., 0:1] * onehot
        if self.adjacent:
            new = new + gates[..., 1:2] * left + gates[..., 2:3] * right
        return new

    def prediction_logits(self, h: torch.Tensor, symbol: torch.Tensor, cell: torch.Tensor | None) -> torch.Tensor:
        """The LSTM's logits plus the gated one-hot input symbol and the gated current memory
        cell, each times its scale where there is one."""
        gates = self._gates(h)[..., self.output_gates]
        scales = self.shortcut_scales
        if scales is not None:
            gates = gates * scales
        logits = super().prediction_logits(h, symbol, cell)
        # The gated one-hot symbol, added at the symbol's index only.
        if not self.memory:
            return logits.scatter_add(-1, symbol[..., None], gates[..., 0:1])
        assert cell is not None
        return torch.addcmul(logits, gates[..., 1:2], cell).scatter_add_(-1, symbol[..., None], gates[..., 0:1])

    def prediction_weights(self) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
        """The prediction head's rows, then the symbol gate's (and with memory the cell gate's),
        and the scales."""
        chosen = self.output_gates
        weight = torch.cat([self.prediction_head.weight, self.gate_head.weight[chosen]])
        bias = torch.cat([self.prediction_head.bias, self.gate_head.bias[chosen]])
        return weight, bias, 2 if self.memory else 1, self.shortcut_scales


class WindowedDirectAccessController(LSTMController):
    """The authors' direct access (``ModelConfig.direct_access = "authors"``): gated shortcuts over
    the whole read window of ``n = 2k + 1`` cells of each tape.

    At each step, with ``onehot_j`` the input symbol at offset ``j`` and ``cell_i`` the memory cell
    at offset ``i`` (offsets ``-k .. k``):

    1. every cell of the memory window is written, ``cell_i <- sigmoid(K_i h) * cell_i + tanh(V_i h)``
       (the centre's ``K_0, V_0`` are :attr:`keep_head` and :attr:`value_head`, the other offsets'
       :attr:`side_keep_head` and :attr:`side_value_head`);
    2. for every input offset ``j`` in increasing order, every cell becomes
       ``p2_ij * cell_i + p_ij * onehot_j`` (two gates per pair, rows of :attr:`pair_gate_head`);
    3. the prediction logits are ``W h + sum_j g_j * onehot_j + sum_i g'_i * cell_i``, the cells
       as written (gates: rows of :attr:`gate_head`, the symbols' then the cells'), each group
       times its scale of :attr:`shortcut_scales` where ``config.shortcut_scale`` is set.

    Without memory only the symbols' shortcuts into the prediction remain. The fast step runs
    steps 1 and 2 in its loop (the Python one of :mod:`rlntm_demo.fast.fused`; the C++ loop has no
    window write) and step 3 through :meth:`window_prediction_logits`, for all predicting steps at
    once.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.window = 2 * config.read_window + 1
        n, width, hidden = self.window, config.memory_width, config.hidden_size
        groups = 2 if self.memory else 1
        self.gate_head = nn.Linear(hidden, groups * n)
        self.side_keep_head: nn.Linear | None = None
        self.side_value_head: nn.Linear | None = None
        if self.memory and n > 1:
            self.side_keep_head = nn.Linear(hidden, (n - 1) * width)
            self.side_value_head = nn.Linear(hidden, (n - 1) * width)
        if self.memory:
            # Rows: memory offset i major, then input offset j, then (p, p2).
            self.pair_gate_head = nn.Linear(hidden, n * n * 2)
        self.shortcut_scale_raw: nn.Parameter | None = None
        if config.shortcut_scale is not None:
            self.shortcut_scale_raw = nn.Parameter(torch.empty(groups))
        self.reset_extra_parameters()

    def reset_extra_parameters(self) -> None:
        """The shortcut scales start at ``config.shortcut_scale``."""
        if self.shortcut_scale_raw is not None:
            with torch.no_grad():
                self.shortcut_scale_raw.fill_(_inverse_softplus(float(self.config.shortcut_scale)))  # type: ignore[arg-type]

    def window_write(self, h: torch.Tensor, cells: torch.Tensor, input_window: torch.Tensor) -> torch.Tensor:
        """The memory window after the write (steps 1 and 2): (B, n, width) from the window
        ``cells`` (B, n, width) before it and the input window (B, n) long."""
        size, n, _ = cells.shape
        keep = self._per_offset(h, self.keep_head, self.side_keep_head)
        value = self._per_offset(h, self.value_head, self.side_value_head)
        new = torch.sigmoid(keep) * cells + torch.tanh(value)
        pairs = torch.sigmoid(self.pair_gate_head(h)).view(size, n, n, 2)
        onehots = nn.functional.one_hot(input_window, NUM_SYMBOLS).to(h.dtype)
        for j in range(n):
            new = pairs[:, :, j, 1:2] * new + pairs[:, :, j, 0:1] * onehots[:, j : j + 1]
        return new

    def _per_offset(self, h: torch.Tensor, centre_head: nn.Linear, side_head: nn.Linear | None) -> torch.Tensor:
        """(B, n, width): the centre head's output at offset 0, the side head's at the others."""
        return nn.functional.linear(h, *self.offset_weights(centre_head, side_head)).view(h.shape[0], self.window, -1)

    def offset_weights(self, centre_head: nn.Linear, side_head: nn.Linear | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The keep (or value) heads of the whole window as one linear map: (weight, bias) whose
        rows are the offsets ``-k .. k`` in turn, ``width`` rows each (the centre head's at offset
        0, the side head's at the others)."""
        if side_head is None:
            return centre_head.weight, centre_head.bias
        cut = self.config.read_window * self.config.memory_width
        weight = torch.cat([side_head.weight[:cut], centre_head.weight, side_head.weight[cut:]])
        bias = torch.cat([side_head.bias[:cut], centre_head.bias, side_head.bias[cut:]])
        return weight, bias

    def window_prediction_logits(self, h: torch.Tensor, input_window: torch.Tensor, cells: torch.Tensor | None) -> torch.Tensor:
        """The prediction logits (step 3) from ``h``, the input window (B, n) long and the memory
        window as written (B, n, width), ``None`` without memory."""
        n = self.window
        gates = torch.sigmoid(self.gate_head(h))
        scales = self.shortcut_scales
        symbols = nn.functional.one_hot(input_window, NUM_SYMBOLS).to(h.dtype)
        symbol_gates = gates[:, :n] if scales is None else gates[:, :n] * scales[0]
        logits = self.prediction_head(h) + torch.einsum("bn,bns->bs", symbol_gates, symbols)
        if cells is None:
            return logits
        cell_gates = gates[:, n:] if scales is None else gates[:, n:] * scales[1]
        return logits + torch.einsum("bn,bnw->bw", cell_gates, cells)

    def write_and_predict(self, h: torch.Tensor, input_window: torch.Tensor, memory: MemoryTape | None,
                          rows: torch.Tensor) -> torch.Tensor:
        """Write the whole memory window, then predict from both windows."""
        cells = None
        if memory is not None:
            memory.write_window(self.window_write(h, memory.read(), input_window), rows=rows)
            cells = memory.read()
        return self.window_prediction_logits(h, input_window, cells)

    def prediction_weights(self) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
        """Not one linear map with one or two gates: the fast step calls
        :meth:`window_prediction_logits` instead."""
        raise NotImplementedError("the window's shortcuts are not one linear map: call window_prediction_logits")


def _inverse_softplus(value: float) -> float:
    """The raw parameter whose softplus is ``value``: log(exp(v) - 1), written to stay exact for large v."""
    return value + math.log(-math.expm1(-value))


def make_controller(config: ModelConfig) -> Controller:
    """The controller named by ``config.controller`` (and, for direct access, ``config.direct_access``)."""
    if config.controller == "direct" and config.direct_access == "authors":
        return WindowedDirectAccessController(config)
    classes: dict[str, type[Controller]] = {
        "lstm": LSTMController,
        "direct": DirectAccessController,
        "feedforward": FeedForwardController,
    }
    return classes[config.controller](config)


class OfflineBaseline(nn.Module):
    """The baseline LSTM of Appendix A: reads the input tape, then follows the controller's inputs.

    Arguments:
        input_size: the size of the controller's input x_t.
        hidden_size: the baseline LSTM's units.
    """

    def __init__(self, input_size: int, hidden_size: int, *, initial_state: float = 0.0) -> None:
        super().__init__()
        self.pre_reader = nn.LSTM(NUM_SYMBOLS, hidden_size, batch_first=True)
        self.tandem = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)
        self.initial_state = initial_state

    def read_tape(self, tape: torch.Tensor, tape_len: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The pre-reader's final ``(h, c)``, each (B, hidden), after each row's whole input tape.

        It starts from ``initial_state`` in every entry and reads one-hot symbols.
        """
        size, hidden = tape.shape[0], self.pre_reader.hidden_size
        onehot = torch.zeros(*tape.shape, NUM_SYMBOLS, dtype=dtype).scatter_(-1, tape[..., None], 1.0)
        packed = nn.utils.rnn.pack_padded_sequence(onehot, tape_len.cpu(), batch_first=True, enforce_sorted=False)
        start = torch.full((1, size, hidden), self.initial_state, dtype=dtype)
        _, (h, c) = self.pre_reader(packed, (start, start))
        return h[0], c[0]

    def forward(self, tape: torch.Tensor, tape_len: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Baselines b_t for every step.

        The pre-reader runs over each row's whole input tape (one-hot symbols); its final state
        starts the tandem LSTM, which reads x_1 .. x_T, and b_t is a linear function of its state
        after reading x_t (so b_t depends on the input and on the actions before step t only).
        :class:`~rlntm_demo.model.RLNTM` computes the same tandem inside its step loop instead;
        this is the reference.

        Arguments:
            tape: (B, L) long, the input tapes.
            tape_len: (B,) long, their lengths.
            inputs: (B, T, input_size), the controller's inputs (detach them first).

        Returns:
            (B, T) baselines.
        """
        h, c = self.read_tape(tape, tape_len, inputs.dtype)
        states, _ = self.tandem(inputs, (h[None], c[None]))
        return self.head(states).squeeze(-1)
