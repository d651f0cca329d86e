"""The controllers' per-step maths: the authors' direct access over the read window."""

from __future__ import annotations

import pytest
import torch

from rlntm_demo.config import NUM_SYMBOLS, ModelConfig
from rlntm_demo.controllers import DirectAccessController, WindowedDirectAccessController, make_controller
from rlntm_demo.interfaces import MemoryTape
from rlntm_demo.tasks import make_task

AUTHORS = {"controller": "direct", "direct_access": "authors", "adjacent_memory": "off"}


def windowed(read_window: int = 1, **options: object) -> WindowedDirectAccessController:
    config = ModelConfig(hidden_size=2, embedding_size=2, read_window=read_window, memory_cells=5,
                         **{**AUTHORS, **options})  # type: ignore[arg-type]
    controller = make_controller(config)
    assert isinstance(controller, WindowedDirectAccessController)
    return controller


def test_make_controller_picks_the_windowed_controller_only_for_the_authors_direct_access() -> None:
    assert type(make_controller(ModelConfig(controller="direct"))) is DirectAccessController
    assert isinstance(make_controller(ModelConfig(**AUTHORS)), WindowedDirectAccessController)  # type: ignore[arg-type]
    # Without a memory tape only the symbols' gates into the prediction remain.
    controller = windowed(interfaces=make_task("reverse").interfaces)
    assert controller.gate_head.out_features == 3 and not hasattr(controller, "pair_gate_head")


@pytest.mark.parametrize("change,message", [
    ({"adjacent_memory": "open"}, "adjacent_memory='off'"),
    ({"memory_cells": 2, "read_window": 1}, "memory_cells must be at least 3"),
    ({"direct_access": "window"}, "unknown direct_access"),
])
def test_the_authors_direct_access_names_what_it_needs(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**AUTHORS, **change})  # type: ignore[arg-type]


def test_the_windowed_controller_is_not_one_linear_prediction_map() -> None:
    with pytest.raises(NotImplementedError, match="call window_prediction_logits"):
        windowed().prediction_weights()


@pytest.mark.parametrize("read_window", [0, 1, 2])
def test_the_offset_weights_give_each_offset_its_own_head(read_window: int) -> None:
    controller = windowed(read_window)
    h = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    weight, bias = controller.offset_weights(controller.keep_head, controller.side_keep_head)
    per_offset = torch.nn.functional.linear(h, weight, bias).view(3, 2 * read_window + 1, NUM_SYMBOLS)
    torch.testing.assert_close(per_offset[:, read_window], controller.keep_head(h), rtol=0, atol=0)
    if read_window:
        assert controller.side_keep_head is not None
        sides = controller.side_keep_head(h).view(3, 2 * read_window, NUM_SYMBOLS)
        torch.testing.assert_close(per_offset[:, :read_window], sides[:, :read_window], rtol=0, atol=0)
        torch.testing.assert_close(per_offset[:, read_window + 1 :], sides[:, read_window:], rtol=0, atol=0)


def _gates_only(controller: WindowedDirectAccessController) -> None:
    """Zero every weight the write and the prediction read, so only the biases below count."""
    with torch.no_grad():
        for head in (controller.keep_head, controller.value_head, controller.side_keep_head,
                     controller.side_value_head, controller.pair_gate_head, controller.gate_head,
                     controller.prediction_head):
            assert head is not None
            head.weight.zero_()
            head.bias.zero_()


def test_the_pair_gates_apply_the_input_offsets_in_increasing_order() -> None:
    controller = windowed()
    _gates_only(controller)
    big = 50.0  # sigmoid(50) = 1 and sigmoid(-50) = 0 in float32
    with torch.no_grad():
        assert controller.side_keep_head is not None
        controller.keep_head.bias.fill_(-big)
        controller.side_keep_head.bias.fill_(-big)  # forget every old cell; values tanh(0) = 0
        # Every pair writes its symbol over the cell (p = 1, p2 = 0): the last offset, +1, wins.
        pairs = controller.pair_gate_head.bias.view(3, 3, 2)
        pairs[..., 0] = big
        pairs[..., 1] = -big
    h = torch.zeros(1, 2)
    cells = torch.randn(1, 3, NUM_SYMBOLS)
    written = controller.window_write(h, cells, torch.tensor([[4, 5, 6]]))
    assert written.argmax(-1).tolist() == [[6, 6, 6]] and written.sum().item() == pytest.approx(3.0)
    # Keep the cells instead (p2 = 1), and let memory offset -1 take input offset 0 only.
    with torch.no_grad():
        pairs[..., 0] = -big
        pairs[..., 1] = big
        controller.keep_head.bias.fill_(big)
        controller.side_keep_head.bias.fill_(big)
        pairs[0, 1] = torch.tensor([big, big])
    written = controller.window_write(h, cells, torch.tensor([[4, 5, 6]]))
    expected = cells.clone()
    expected[0, 0, 5] += 1.0
    torch.testing.assert_close(written, expected)


def test_the_prediction_adds_each_gated_window_cell_and_symbol_times_its_scale() -> None:
    controller = windowed(shortcut_scale=3.0)
    _gates_only(controller)
    big = 50.0
    with torch.no_grad():
        controller.gate_head.bias.copy_(torch.tensor([big, -big, big, -big, -big, big]))  # symbols -1, +1; cell +1
    cells = torch.zeros(1, 3, NUM_SYMBOLS)
    cells[0, 2, 9] = 2.0
    cells[0, 1, 10] = 7.0  # the centre cell, gated out
    logits = controller.window_prediction_logits(torch.zeros(1, 2), torch.tensor([[4, 5, 6]]), cells)
    expected = torch.zeros(1, NUM_SYMBOLS)
    expected[0, 4] = expected[0, 6] = 3.0
    expected[0, 9] = 6.0
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_write_and_predict_writes_the_window_of_the_running_rows_only() -> None:
    controller = windowed()
    memory = MemoryTape(2, cells=5, width=NUM_SYMBOLS, window=1)
    h = torch.randn(2, 2)
    logits = controller.write_and_predict(h, torch.tensor([[4, 5, 6], [4, 5, 6]]), memory, torch.tensor([True, False]))
    assert logits.shape == (2, NUM_SYMBOLS)
    touched = memory.values.abs().sum(-1) > 0
    assert touched.tolist() == [[True, True, False, False, True], [False] * 5]
