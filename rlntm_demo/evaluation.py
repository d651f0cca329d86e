"""How well a model does: zero-one errors of a rollout, and greedy evaluation at longer lengths.

Training's curriculum listens to the *sampled* policy's errors (:func:`row_errors` of the
training rollout, as in the paper). What a user wants to know is what the model does when it
takes its most probable action at every step, on instances it has never seen, at the length it
was trained to and beyond: :func:`evaluate` runs the greedy policy on fresh instances at each
multiple of the training length and reports the exact-sequence accuracy (every target right) and
the per-symbol accuracy.

>>> import torch
>>> from rlntm_demo.config import ModelConfig
>>> from rlntm_demo.model import RLNTM
>>> from rlntm_demo.tasks import make_task
>>> task = make_task("copy", num_symbols=3)
>>> model = RLNTM(ModelConfig(controller="direct", interfaces=task.interfaces))
>>> results = evaluate(model, task, training_complexity=2, multipliers=(1, 2), instances=8, seed=0)
>>> sorted(results), results[2].complexity
([1, 2], 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .model import RLNTM, Rollout
    from .tasks import Batch, Task

__all__ = ["LengthResult", "evaluate", "row_errors"]


def row_errors(rollout: Rollout, batch: Batch) -> torch.Tensor:
    """The number of wrong predictions of each row (a prediction is the most probable symbol).

    Arguments:
        rollout: the episodes of ``batch``.
        batch: the instances.

    Returns:
        (B,) long: predictions that differ from their target, plus targets never emitted.
    """
    predicting = rollout.predictions >= 0
    positions = rollout.output_positions.clamp(max=batch.target.shape[1] - 1)
    targets = batch.target.gather(1, positions)
    wrong = (predicting & (rollout.predictions != targets)).sum(1)
    missing = (batch.target_len - predicting.sum(1)).clamp(min=0)
    return wrong + missing


@dataclass
class LengthResult:
    """Greedy accuracy at one test length."""

    multiplier: int
    """The test length as a multiple of the training length."""
    complexity: int
    """The complexity of the test instances."""
    instances: int
    """How many fresh instances were run."""
    exact: float
    """Fraction of instances with every target right."""
    per_symbol: float
    """Fraction of targets right, over all instances."""

    def to_dict(self) -> dict[str, float | int]:
        """Plain values."""
        return asdict(self)


@torch.no_grad()
def evaluate(
    model: RLNTM,
    task: Task,
    *,
    training_complexity: int,
    multipliers: Sequence[int] = (1, 2, 5, 10),
    instances: int = 1000,
    seed: int = 0,
    chunk: int = 500,
) -> dict[int, LengthResult]:
    """Greedy decoding on fresh instances at multiples of the training length.

    The instances come from their own generator, seeded by ``seed`` and the multiplier, so an
    evaluation never touches the random streams of training. The memory tape grows with the
    instances (:meth:`~rlntm_demo.model.RLNTM.memory_cells_for`): the 30 cells of training hold
    no ForwardReverse input longer than 30 symbols, so 2x the training length could not succeed.

    Arguments:
        model: the model (left in the mode it was in).
        task: the task.
        training_complexity: the complexity the model was trained up to.
        multipliers: test complexities, as multiples of ``training_complexity``.
        instances: fresh instances per test length.
        seed: seeds the instances.
        chunk: rows per greedy batch (bounds the memory of long episodes).

    Returns:
        A :class:`LengthResult` per multiplier, keyed by it.
    """
    results = {}
    for multiplier in multipliers:
        complexity = training_complexity * int(multiplier)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + int(multiplier))
        exact = correct = total = 0
        remaining = instances
        while remaining > 0:
            size = min(chunk, remaining)
            remaining -= size
            batch = task.sample(complexity, size, generator)
            rollout = model.run_episode(batch, greedy=True, memory_cells=model.memory_cells_for(batch))
            errors = row_errors(rollout, batch)
            exact += int((errors == 0).sum())
            correct += int((batch.target_len - errors).clamp(min=0).sum())
            total += int(batch.target_len.sum())
        results[int(multiplier)] = LengthResult(
            multiplier=int(multiplier), complexity=complexity, instances=instances,
            exact=exact / instances, per_symbol=correct / total,
        )
    return results
