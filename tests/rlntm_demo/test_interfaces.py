"""Tapes: moves, masks, edges, forced prediction, differentiable memory."""

from __future__ import annotations

import pytest
import torch

from rlntm_demo.config import BLANK
from rlntm_demo.interfaces import (
    MOVE_LEFT,
    MOVE_RIGHT,
    OUTPUT_PREDICT,
    OUTPUT_STAY,
    STAY,
    InputTape,
    MemoryTape,
    OutputTape,
)


def test_input_tape_edges_do_not_wrap() -> None:
    tape = InputTape(torch.tensor([[5, 6, 1], [7, 1, 0]]), torch.tensor([3, 2]))
    assert tape.allowed_moves().tolist() == [[False, True, True], [False, True, True]]
    tape.move(torch.tensor([MOVE_RIGHT, MOVE_RIGHT]))
    assert tape.head.tolist() == [1, 1]
    assert tape.read().tolist() == [[6], [1]]
    # Row 1 is at its last cell: +1 is masked; row 0 can still go right.
    assert tape.allowed_moves().tolist() == [[True, True, True], [True, True, False]]
    with pytest.raises(ValueError, match="infeasible"):
        tape.move(torch.tensor([STAY, MOVE_RIGHT]))
    tape.move(torch.tensor([MOVE_LEFT, STAY]))
    assert tape.head.tolist() == [0, 1]


def test_circular_input_tape_wraps_around_each_rows_input() -> None:
    tape = InputTape(torch.tensor([[5, 6, 1], [7, 1, 0]]), torch.tensor([3, 2]), window=1, circular=True)
    assert tape.allowed_moves().all()
    assert tape.read().tolist() == [[1, 5, 6], [1, 7, 1]]  # left of x1 is EOS
    tape.move(torch.tensor([MOVE_LEFT, MOVE_LEFT]))
    assert tape.head.tolist() == [2, 1]
    tape.move(torch.tensor([MOVE_RIGHT, MOVE_RIGHT]))
    assert tape.head.tolist() == [0, 0]
    assert not InputTape(torch.tensor([[5, 1]]), torch.tensor([2]), forward_only=True, circular=True).circular


def test_input_tape_forward_only_and_window() -> None:
    tape = InputTape(torch.tensor([[5, 6, 1]]), torch.tensor([3]), forward_only=True, window=1)
    assert tape.read().tolist() == [[BLANK, 5, 6]]
    tape.move(torch.tensor([MOVE_RIGHT]))
    assert tape.allowed_moves().tolist() == [[False, True, True]]
    tape.move(torch.tensor([MOVE_RIGHT]))
    assert tape.read().tolist() == [[6, 1, BLANK]]
    assert tape.allowed_moves().tolist() == [[False, True, False]]


def test_memory_wraps_and_window() -> None:
    memory = MemoryTape(2, cells=3, width=2, window=1, dtype=torch.float64)
    assert memory.allowed_moves().all()
    memory.write(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64))
    memory.move(torch.tensor([MOVE_LEFT, MOVE_RIGHT]))
    assert memory.head.tolist() == [2, 1]
    window = memory.read()
    assert window.shape == (2, 3, 2)
    assert window[0, 2].tolist() == [1.0, 2.0]  # row 0 at cell 2: its right neighbour wraps to cell 0
    assert window[1, 0].tolist() == [3.0, 4.0]


def test_memory_write_is_differentiable_and_not_in_place() -> None:
    value = torch.tensor([[1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    memory = MemoryTape(1, cells=2, width=2, dtype=torch.float64)
    before = memory.values
    memory.write(value)
    memory.move(torch.tensor([MOVE_RIGHT]))
    memory.write(2 * memory.cell(-1))  # copy the first cell, doubled, into the second
    assert before.abs().sum() == 0  # the old tensor is untouched
    memory.values.sum().backward()
    assert value.grad is not None and value.grad.tolist() == [[3.0, 3.0]]


def test_memory_write_only_selected_rows() -> None:
    memory = MemoryTape(2, cells=2, width=1, dtype=torch.float64)
    memory.write(torch.ones(2, 1, dtype=torch.float64), rows=torch.tensor([True, False]))
    assert memory.values[:, 0, 0].tolist() == [1.0, 0.0]


def test_output_forced_and_forbidden() -> None:
    # Two targets; row 0 has 3 steps, row 1 exactly 2 (every prediction forced).
    out = OutputTape(torch.tensor([[4, 1], [5, 1]]), torch.tensor([2, 2]), torch.tensor([3, 2]))
    assert out.allowed_moves().tolist() == [[True, True], [False, True]]
    out.move(torch.tensor([OUTPUT_STAY, OUTPUT_PREDICT]))
    # Row 0: 2 targets left, 2 steps left: forced. Row 1: 1 left, 1 step left: forced.
    assert out.allowed_moves().tolist() == [[False, True], [False, True]]
    assert out.current_target().tolist() == [4, 1]
    with pytest.raises(ValueError, match="forced or forbidden"):
        out.move(torch.tensor([OUTPUT_STAY, OUTPUT_PREDICT]))
    out.move(torch.tensor([OUTPUT_PREDICT, OUTPUT_PREDICT]))
    assert out.finished.tolist() == [False, True]
    # Row 1 is done: predicting is forbidden, staying is its only move.
    assert out.allowed_moves().tolist() == [[False, True], [True, False]]
    assert out.current_target().tolist() == [1, BLANK]
    out.move(torch.tensor([OUTPUT_PREDICT, OUTPUT_STAY]))
    assert out.finished.all() and out.remaining.tolist() == [0, 0]


def test_output_rejects_too_many_targets() -> None:
    with pytest.raises(ValueError, match="more targets than steps"):
        OutputTape(torch.tensor([[4, 1]]), torch.tensor([2]), torch.tensor([1]))


def test_memory_write_window_replaces_the_window_cells_of_the_selected_rows() -> None:
    memory = MemoryTape(2, cells=4, width=1, window=1, dtype=torch.float64)
    memory.move(torch.tensor([MOVE_LEFT, STAY]))  # heads at cells 3 and 0
    values = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]]], dtype=torch.float64, requires_grad=True)
    memory.write_window(values, rows=torch.tensor([True, False]))
    # Row 0's window is cells 2, 3, 0 (wrapping); row 1 is not written.
    assert memory.values[..., 0].tolist() == [[3.0, 0.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0]]
    assert memory.read()[0, :, 0].tolist() == [1.0, 2.0, 3.0]
    memory.values.sum().backward()
    assert values.grad is not None and values.grad[..., 0].tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]


def test_memory_write_window_needs_distinct_cells() -> None:
    memory = MemoryTape(1, cells=2, width=1, window=1)
    with pytest.raises(ValueError, match="needs at least as many memory cells"):
        memory.write_window(torch.zeros(1, 3, 1))
