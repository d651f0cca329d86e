"""Greedy evaluation (:mod:`rlntm_demo.evaluation`): the memory tape fits the instances it runs on."""

from __future__ import annotations

import pytest
import torch

from rlntm_demo.config import ModelConfig
from rlntm_demo.evaluation import evaluate
from rlntm_demo.interfaces import MOVE_RIGHT
from rlntm_demo.model import RLNTM, Rollout
from rlntm_demo.tasks import Batch, make_task


def rightward_model(task_name: str) -> RLNTM:
    """A model whose greedy input and memory heads move right at every step they can: it stores
    the k-th input symbol's step in memory cell k, unless the tape is too short and wraps."""
    task = make_task(task_name)
    model = RLNTM(ModelConfig(controller="lstm", interfaces=task.interfaces, read_window=1),
                  generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.controller.action_head.weight.zero_()
        model.controller.action_head.bias.zero_()
        model.controller.action_head.bias[MOVE_RIGHT] = 100.0
        model.controller.action_head.bias[3 + MOVE_RIGHT] = 100.0
    return model


@pytest.mark.parametrize("multiplier", [1, 2, 5, 10])
def test_memory_cells_fit_forward_reverse_instances_at_every_test_length(multiplier: int) -> None:
    model = rightward_model("forward-reverse")
    task = make_task("forward-reverse")
    batch = task.sample(task.training_complexity * multiplier, 3, torch.Generator().manual_seed(1))
    cells = model.memory_cells_for(batch)
    longest = int(batch.input_len.max())
    assert longest == task.training_complexity * multiplier + 1
    assert cells == max(30, longest + 2 * 1 + 2)
    if multiplier == 1:
        assert cells == model.config.memory_cells  # training lengths keep the configured tape


@pytest.mark.parametrize("multiplier", [2, 5, 10])
def test_evaluation_at_2x_5x_and_10x_forward_reverse_never_wraps_the_memory_while_reading_the_input(
    multiplier: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heads move right at every step: over the steps that read the input (and the read
    window's cell past its end), each visits a memory cell no earlier step visited. With the
    training tape of 30 cells, the memory head came back to cell 0 at step 30."""
    model = rightward_model("forward-reverse")
    task = make_task("forward-reverse")
    seen: list[tuple[Batch, Rollout]] = []
    run_episode = model.run_episode

    def recorded(batch: Batch, **options: object) -> Rollout:
        rollout = run_episode(batch, **options)  # type: ignore[arg-type]
        seen.append((batch, rollout))
        return rollout

    monkeypatch.setattr(model, "run_episode", recorded)
    results = evaluate(model, task, training_complexity=task.training_complexity, multipliers=[multiplier], instances=4)
    assert results[multiplier].complexity == task.training_complexity * multiplier
    [(batch, rollout)] = seen
    assert rollout.memory_heads is not None
    reading = int(batch.input_len.max()) + 1
    assert rollout.memory_heads.shape[1] >= reading
    for row in rollout.memory_heads[:, :reading]:
        assert row.tolist() == list(range(reading))


def test_a_trace_at_10x_forward_reverse_shows_a_tape_that_holds_the_input() -> None:
    model = rightward_model("forward-reverse")
    task = make_task("forward-reverse")
    batch = task.sample(10 * task.training_complexity, 1, torch.Generator().manual_seed(2))
    trace = model.trace(batch)
    length = int(batch.input_len[0])
    assert trace.memory_cells == length + 4
    assert [step.memory_head for step in trace.steps[:length]] == list(range(length))
