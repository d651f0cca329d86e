"""The three interfaces of the RL-NTM: input tape, memory tape, output tape (Section 2).

Each is a small batched object (one row per episode, no Python loop over rows) that the model
reads, asks which moves are feasible, and moves. Every decision is one categorical draw:

* a head move of the input or the memory tape: index 0, 1, 2 for a displacement of -1, 0, +1;
* the output decision: index 0 = stay (no prediction), 1 = predict and advance.

``allowed_moves()`` returns a ``(B, n)`` bool mask of the feasible choices. The model sets the
logits of infeasible choices to ``-inf``, so they have probability exactly 0: they are never
sampled, and an exact check neither branches on them nor spends rows on them.

**Edges.** By default the input tape does not wrap: a move off either end of a row's input is
infeasible, so the input head stays on the input; cells read outside it (by a read window wider
than one cell) read ``BLANK``. With ``circular=True`` (``ModelConfig.circular_input``, as the
authors' tapes) it wraps around the input: left of ``x1`` is ``EOS``. With a forward-only input
(ForwardReverse) only "stay" and "+1" exist, and it never wraps. The memory tape wraps around, as
in the authors' code, so every memory move is always feasible.

**Read window.** By default a head reads its current cell only, as in the paper; with
``window=k`` it reads cells ``head - k .. head + k`` (the authors' code read k = 2).

**Memory writes** are differentiable. :class:`MemoryTape` is the plain version: the controller's
new value for the current cell is blended in with a one-hot mask of the head, building a new
tensor at every step, so autograd sees every write. That touches every cell at every step, forward
and backward; :class:`~rlntm_demo.model.RLNTM`'s fused step (:mod:`rlntm_demo.fast.fused`) computes the
same values and gradients while touching only the cells read and written: it overwrites one
buffer in place, and the gradient of the whole tape travels with the LSTM state's.

**Output.** The output tape holds the position of the next target. Predicting emits the
controller's prediction for that target and advances. A prediction is *forced* when the targets
left equal the steps left (so that every target is emitted within the step bound, as the paper
prescribes), and *forbidden* once every target is emitted: the row is then finished.

>>> import torch
>>> tape = InputTape(torch.tensor([[2, 3, 1]]), torch.tensor([3]))
>>> tape.allowed_moves().tolist()  # at the left end: no -1
[[False, True, True]]
>>> tape.move(torch.tensor([MOVE_RIGHT])); tape.head.tolist(), tape.read().tolist()
([1], [[3]])
"""

from __future__ import annotations

import torch

from .config import BLANK

__all__ = [
    "InputTape",
    "MOVE_LEFT",
    "MOVE_RIGHT",
    "MemoryTape",
    "OUTPUT_PREDICT",
    "OUTPUT_STAY",
    "OutputTape",
    "STAY",
]

MOVE_LEFT, STAY, MOVE_RIGHT = 0, 1, 2
"""Indices of the head moves; the displacement is ``index - 1``."""
OUTPUT_STAY, OUTPUT_PREDICT = 0, 1
"""Indices of the output decision."""


def _displacement(action: torch.Tensor) -> torch.Tensor:
    return action.long() - 1


class InputTape:
    """The input tape of a batch: a read-only tape and a head per row, starting at cell 0.

    Arguments:
        symbols: (B, L) long, the tapes, padded with ``BLANK``.
        lengths: (B,) long, the length of each row's input (at least 1).
        forward_only: the head may only stay or move right.
        window: read cells ``head - window .. head + window``.
        circular: the head wraps around each row's input (ignored when ``forward_only``).
    """

    num_moves = 3

    def __init__(
        self, symbols: torch.Tensor, lengths: torch.Tensor, *, forward_only: bool = False, window: int = 0, circular: bool = False
    ) -> None:
        if bool((lengths < 1).any()):
            raise ValueError("every input must have at least one cell")
        self.symbols = symbols
        self.lengths = lengths
        self.forward_only = forward_only
        self.window = window
        self.circular = circular and not forward_only
        self.head = torch.zeros_like(lengths)

    def read(self) -> torch.Tensor:
        """The symbols under the read window: (B, 2 window + 1) long, ``BLANK`` outside the input
        (or, circular, the cells modulo the input's length)."""
        offsets = torch.arange(-self.window, self.window + 1)
        positions = self.head[:, None] + offsets
        if self.circular:
            return self.symbols.gather(1, positions % self.lengths[:, None])
        inside = (positions >= 0) & (positions < self.lengths[:, None])
        clamped = positions.clamp(0, self.symbols.shape[1] - 1)
        return torch.where(inside, self.symbols.gather(1, clamped), torch.full_like(clamped, BLANK))

    def allowed_moves(self) -> torch.Tensor:
        """(B, 3) bool: -1 unless at the first cell (or forward-only), 0 always, +1 unless at the last
        cell; all three when circular."""
        if self.circular:
            return torch.ones(self.head.shape[0], 3, dtype=torch.bool)
        left = (self.head > 0) & (not self.forward_only)
        right = self.head < self.lengths - 1
        return torch.stack([left, torch.ones_like(left), right], dim=1)

    def move(self, action: torch.Tensor) -> None:
        """Move every head by ``action - 1``.

        Raises:
            ValueError: a row's move is not allowed.
        """
        if not bool(self.allowed_moves().gather(1, action[:, None].long()).all()):
            raise ValueError("an input head was asked to make an infeasible move")
        self.head = self.head + _displacement(action)
        if self.circular:
            self.head = self.head.remainder(self.lengths)


class MemoryTape:
    """A memory tape per row: ``cells`` real vectors of size ``width``, circular, starting at zero
    (but for the head's first cell with ``start_marker``).

    Arguments:
        batch_size: number of rows.
        cells: number of cells.
        width: real values per cell.
        window: read cells ``head - window .. head + window`` (wrapping around).
        dtype: the dtype of the values.
        start_marker: the head's first cell starts as all ones (the authors' initial memory).
    """

    num_moves = 3

    def __init__(
        self, batch_size: int, cells: int, width: int, *, window: int = 0, dtype: torch.dtype | None = None,
        start_marker: bool = False,
    ) -> None:
        self.values = torch.zeros(batch_size, cells, width, dtype=dtype)
        if start_marker:
            self.values[:, 0] = 1.0
        self.head = torch.zeros(batch_size, dtype=torch.long)
        self.window = window

    @property
    def cells(self) -> int:
        """Number of cells."""
        return int(self.values.shape[1])

    def cell(self, offset: int = 0) -> torch.Tensor:
        """The cell ``head + offset`` of each row (wrapping around): (B, width)."""
        position = (self.head + offset) % self.cells
        return self.values[torch.arange(self.values.shape[0]), position]

    def read(self) -> torch.Tensor:
        """The read window: (B, 2 window + 1, width)."""
        return torch.stack([self.cell(k) for k in range(-self.window, self.window + 1)], dim=1)

    def allowed_moves(self) -> torch.Tensor:
        """(B, 3) bool, all True: the tape is circular."""
        return torch.ones(self.values.shape[0], 3, dtype=torch.bool)

    def write(self, value: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Replace the current cell by ``value`` (B, width), in the rows where ``rows`` is True.

        Differentiable in ``value`` and in the old memory; no tensor is modified in place.
        """
        mask = torch.nn.functional.one_hot(self.head, self.cells).to(self.values.dtype)
        if rows is not None:
            mask = mask * rows[:, None].to(self.values.dtype)
        mask = mask[:, :, None]
        self.values = self.values * (1 - mask) + value[:, None, :] * mask

    def write_window(self, values: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Replace the cells of the read window by ``values`` (B, 2 window + 1, width), in the rows
        where ``rows`` is True. The window's cells must be distinct (``cells >= 2 window + 1``).

        Differentiable in ``values`` and in the old memory; no tensor is modified in place.
        """
        offsets = torch.arange(-self.window, self.window + 1)
        if self.cells < offsets.numel():
            raise ValueError(f"a window of {offsets.numel()} cells needs at least as many memory cells, not {self.cells}")
        positions = (self.head[:, None] + offsets) % self.cells
        mask = torch.nn.functional.one_hot(positions, self.cells).to(self.values.dtype)  # (B, window, cells)
        if rows is not None:
            mask = mask * rows[:, None, None].to(self.values.dtype)
        written = torch.einsum("bkc,bkw->bcw", mask, values)
        self.values = self.values * (1 - mask.sum(1))[:, :, None] + written

    def move(self, action: torch.Tensor) -> None:
        """Move every head by ``action - 1``, wrapping around."""
        self.head = (self.head + _displacement(action)) % self.cells


class OutputTape:
    """The output tape: the position of the next target, and the rule that bounds an episode.

    Arguments:
        targets: (B, L_out) long, the target symbols.
        lengths: (B,) long, the number of targets of each row.
        steps: (B,) long, the step bound T of each row.
    """

    num_moves = 2

    def __init__(self, targets: torch.Tensor, lengths: torch.Tensor, steps: torch.Tensor) -> None:
        if bool((lengths > steps).any()):
            raise ValueError("a row has more targets than steps")
        self.targets = targets
        self.lengths = lengths
        self.steps = steps
        self.position = torch.zeros_like(lengths)
        self.step = 0

    @property
    def remaining(self) -> torch.Tensor:
        """(B,) targets not yet emitted."""
        return self.lengths - self.position

    @property
    def finished(self) -> torch.Tensor:
        """(B,) bool: every target has been emitted."""
        return self.position >= self.lengths

    def current_target(self) -> torch.Tensor:
        """(B,) the target at the output position (``BLANK`` for finished rows)."""
        index = self.position.clamp(max=self.targets.shape[1] - 1)[:, None]
        return torch.where(self.finished, BLANK, self.targets.gather(1, index)[:, 0])

    def allowed_moves(self) -> torch.Tensor:
        """(B, 2) bool: stay unless a prediction is forced; predict unless every target is out.

        A prediction is forced when the targets left equal the steps left.
        """
        steps_left = self.steps - self.step
        stay = (self.remaining < steps_left) | self.finished
        predict = ~self.finished
        return torch.stack([stay, predict], dim=1)

    def move(self, action: torch.Tensor) -> None:
        """Advance the rows that predicted, and count one step.

        Raises:
            ValueError: a row's decision is not allowed.
        """
        if not bool(self.allowed_moves().gather(1, action[:, None].long()).all()):
            raise ValueError("an output decision was infeasible (a forced or forbidden prediction)")
        self.position = self.position + (action.long() == OUTPUT_PREDICT).long()
        self.step += 1
