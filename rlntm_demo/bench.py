"""How long one training update of the RL-NTM takes, next to a bare LSTM of the same size.

What is measured:

* ``seconds_per_update``: one training update on a batch of a task at a fixed complexity:
  :meth:`~rlntm_demo.model.RLNTM.run_episode` (sampled, not greedy), the losses of
  :func:`~rlntm_demo.objective.episode_losses`, ``losses.total.mean().backward()`` and an SGD
  step, with the model's default configuration (both baselines) apart from the controller;
* ``bare_lstm_seconds``: a bare ``nn.LSTMCell(input_size, hidden_size)`` of the controller's sizes,
  unrolled in a Python loop over the same number of steps at the same batch size, forward and
  backward, on a fixed random input;
* where an update's time goes (medians over the same repeats, so they need not add up exactly):
  ``rollout_seconds`` (the episode, sampling included, recording the graph), ``loss_seconds``
  (the losses) and ``backward_seconds`` (the backward pass and the optimizer step); and
  ``sampling_seconds``, timed on its own: as many ``torch.multinomial`` calls as the rollout makes
  (one per step, over every decision of every row) on probabilities of the same shape.

**Why the bare LSTM is the yardstick.** The RL-NTM is, at its core, that LSTM run step by step in
Python (the next input depends on the sampled actions, so no fused sequence kernel can run it).
What an update costs beyond the bare loop is the overhead of the tapes, the sampling, the heads,
the baselines and the loss: the ratio says how much that overhead is, independently of the
machine, the thread count or the torch version, which change both numbers together. Both are
timed in the same process, alternately, and each figure is the median over the repeats, so that a
burst of load on the machine affects both alike.

>>> result = run_benchmark(batch_size=4, complexity=2, repeats=1, warmup=0)
>>> result["seconds_per_update"] > 0 and result["bare_lstm_seconds"] > 0 and result["steps"] > 0
True
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from .fast import native
from .config import ModelConfig
from .model import RLNTM
from .objective import episode_losses
from .tasks import make_task

__all__ = ["run_benchmark"]


def run_benchmark(
    *,
    task: str = "forward-reverse",
    controller: str = "direct",
    batch_size: int = 200,
    complexity: int | None = None,
    repeats: int = 10,
    warmup: int = 2,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Time one training update and the bare LSTM loop, alternately, in this process.

    Arguments:
        task: a task name.
        controller: ``"lstm"``, ``"direct"`` or ``"feedforward"``.
        batch_size: rows of the batch.
        complexity: the task's complexity; ``None`` for the top of its curriculum
            (:attr:`~rlntm_demo.tasks.Task.training_complexity`: 15 for forward-reverse).
        repeats: timed runs of each; the figures are medians.
        warmup: untimed runs of each first.
        seed: draws the batch, the weights and the sampled actions.
        threads: torch's intra-op threads during the benchmark (restored after); ``None`` keeps
            the current setting.

    Returns:
        A JSON-ready dict: ``seconds_per_update``, ``bare_lstm_seconds``, ``ratio`` (their
        quotient), ``rollout_seconds``, ``loss_seconds``, ``backward_seconds``,
        ``sampling_seconds``, ``batch_size``, ``steps`` (the episode's number of steps, which the bare loop
        runs too), ``task``, ``controller``, ``complexity``, ``repeats``, ``torch_version``,
        ``threads`` and ``step_loop`` (``"native"`` or ``"python"``: which implementation of the
        step loop ran, see :mod:`rlntm_demo.fast.native`).

    Raises:
        ValueError: ``repeats`` below 1, ``warmup`` below 0 or ``batch_size`` below 1.
    """
    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0 and batch_size >= 1, not {repeats}, {warmup}, {batch_size}")
    if complexity is None:
        complexity = make_task(task).training_complexity  # refuses an unknown task by name
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return _measure(task, controller, batch_size, int(complexity), repeats, warmup, seed)
    finally:
        torch.set_num_threads(previous_threads)


def _measure(task_name: str, controller: str, batch_size: int, complexity: int, repeats: int, warmup: int, seed: int) -> dict[str, Any]:
    task = make_task(task_name)
    batch = task.sample(complexity, batch_size, torch.Generator().manual_seed(seed))
    model = RLNTM(ModelConfig(controller=controller, interfaces=task.interfaces), generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    steps_taken: list[int] = []

    phases: dict[str, list[float]] = {"rollout": [], "loss": [], "backward": []}

    def update() -> None:
        started = time.perf_counter()
        optimizer.zero_grad()
        rollout = model.run_episode(batch)
        rolled = time.perf_counter()
        loss = episode_losses(rollout).total.mean()
        lost = time.perf_counter()
        loss.backward()
        optimizer.step()
        phases["rollout"].append(rolled - started)
        phases["loss"].append(lost - rolled)
        phases["backward"].append(time.perf_counter() - lost)
        steps_taken.append(int(rollout.mask.shape[1]))

    # What the rollout's sampling alone costs: as many torch.multinomial calls as it makes (one
    # per step, over the (batch_size * decisions, 3) rows), on probabilities of the same shape.
    decisions = 3 if task.interfaces.memory else 2
    probabilities = torch.full((batch_size * decisions, 3), 1 / 3)

    def sampling() -> None:
        for _ in range(steps):
            torch.multinomial(probabilities, 1)

    # The bare loop runs as many steps as the longest episode may (the batch's step bound); a
    # sampled episode stops when its last row finishes, which is the bound for most batches.
    steps = int(batch.steps.max())
    hidden = model.config.hidden_size
    cell = nn.LSTMCell(model.controller.input_size, hidden)
    inputs = torch.randn(batch_size, model.controller.input_size, generator=torch.Generator().manual_seed(seed))

    def bare() -> None:
        cell.zero_grad()
        h = torch.zeros(batch_size, hidden)
        c = torch.zeros(batch_size, hidden)
        total = torch.zeros(())
        for _ in range(steps):
            h, c = cell(inputs, (h, c))
            total = total + h.sum()
        total.backward()

    for _ in range(warmup):
        update()
        bare()
        sampling()
    for times in phases.values():
        times.clear()
    update_times, bare_times, sampling_times = [], [], []
    for _ in range(repeats):
        update_times.append(_timed(update))
        bare_times.append(_timed(bare))
        sampling_times.append(_timed(sampling))
    seconds_per_update = statistics.median(update_times)
    bare_seconds = statistics.median(bare_times)
    return {
        "seconds_per_update": seconds_per_update,
        "bare_lstm_seconds": bare_seconds,
        "ratio": seconds_per_update / bare_seconds,
        "rollout_seconds": statistics.median(phases["rollout"]),
        "loss_seconds": statistics.median(phases["loss"]),
        "backward_seconds": statistics.median(phases["backward"]),
        "sampling_seconds": statistics.median(sampling_times),
        "batch_size": batch_size,
        "steps": steps,
        "episode_steps": statistics.median(steps_taken),
        "task": task_name,
        "controller": controller,
        "complexity": complexity,
        "repeats": repeats,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "step_loop": "python" if native.extension() is None else "native",
    }


def _timed(function: Any) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start
