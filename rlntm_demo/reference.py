"""The reference step: the RL-NTM's episode as Sections 2 and 8 of the paper describe it.

This module is the definition of the model. Each step does what the paper says, in its order,
with the readable objects: the tapes of :mod:`rlntm_demo.interfaces` (:class:`InputTape`,
:class:`MemoryTape`, :class:`OutputTape`) and the controller's per-step methods
(:meth:`~rlntm_demo.controllers.Controller.encode`, ``step``, ``action_logits``,
``write_and_predict``), every operation recorded by autograd:

1. read the input window and the memory window;
2. the controller maps them and the previous decisions to ``h_t``;
3. the three decisions, infeasible choices masked to probability 0, are drawn with one
   ``torch.multinomial`` call (or, greedy, the most probable is taken);
4. the current memory cell is written (with the authors' direct access, every cell of the window);
5. the prediction for the next target is made; a predicting step's reward is the target's
   log-probability;
6. the heads move.

The baseline LSTM runs after the episode over the controller's inputs
(:meth:`~rlntm_demo.model.RLNTM.baseline_reads`). Select it with
``ModelConfig(step_impl="reference")``; the default, ``"fast"``, is :mod:`rlntm_demo.fast`, whose
values, sampled decisions and gradients equal these up to rounding
(``tests/rlntm_demo/test_reference.py``, float64, every controller and option). The exact check's
tests check this step (``tests/rlntm_demo/test_check.py``).

>>> import torch
>>> from rlntm_demo.config import ModelConfig
>>> from rlntm_demo.model import RLNTM
>>> from rlntm_demo.tasks import make_task
>>> task = make_task("copy", num_symbols=3)
>>> model = RLNTM(ModelConfig(controller="direct", interfaces=task.interfaces, step_impl="reference"))
>>> batch = task.sample(complexity=2, batch_size=4, generator=torch.Generator().manual_seed(0))
>>> rollout = model.run_episode(batch)
>>> rollout.actions.shape[0], bool((rollout.emitted == batch.target_len).all())
(4, True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .controllers import START
from .interfaces import OUTPUT_PREDICT, OUTPUT_STAY, STAY, InputTape, MemoryTape, OutputTape
from .model import Rollout, sample_decisions

if TYPE_CHECKING:
    from .model import RLNTM
    from .tasks import Batch

__all__ = ["run_episode"]


def run_episode(
    model: RLNTM,
    batch: Batch,
    *,
    greedy: bool = False,
    all_steps: bool = False,
    memory_cells: int | None = None,
    actions: torch.Tensor | None = None,
) -> Rollout:
    """Run one episode per row of ``batch`` the reference way.

    Arguments:
        model: the model whose controller, baselines and configuration are used.
        batch, greedy, all_steps, memory_cells: as for :meth:`~rlntm_demo.model.RLNTM.run_episode`.
        actions: (B, T, 3) long: take these decisions instead of drawing them (a replay of
            another episode; its decisions must be feasible here).

    Returns:
        The :class:`~rlntm_demo.model.Rollout`.
    """
    config, controller = model.config, model.controller
    dtype = controller.action_head.weight.dtype
    size = batch.batch_size
    memory_on = config.interfaces.memory
    tape = InputTape(batch.input, batch.input_len, forward_only=config.interfaces.forward_only_input,
                     window=config.read_window, circular=config.circular_input)
    memory = None
    if memory_on:
        cells = config.memory_cells if memory_cells is None else memory_cells
        memory = MemoryTape(size, cells, config.memory_width, window=config.read_window, dtype=dtype,
                            start_marker=config.memory_start_marker)
    output = OutputTape(batch.target, batch.target_len, batch.steps)
    state = controller.initial_state(size, dtype)
    previous = torch.full((size, 3), START, dtype=torch.long)
    steps_bound = int(batch.steps.max()) if actions is None else actions.shape[1]
    record: dict[str, list[torch.Tensor]] = {name: [] for name in (
        "actions", "log_probs", "rewards", "mask", "windows", "memory_windows", "input_heads", "memory_heads",
        "output_positions", "predictions", "decision_probs")}
    for t in range(steps_bound):
        if actions is None and bool(output.finished.all()) and not all_steps:
            break
        live = ~output.finished
        record["mask"].append(live)
        record["input_heads"].append(tape.head)
        record["output_positions"].append(output.position)
        if memory is not None:
            record["memory_heads"].append(memory.head)

        # 1-2: read, and the controller's step.
        input_window = tape.read()
        memory_window = memory.read() if memory is not None else None
        record["windows"].append(input_window)
        if memory_window is not None:
            record["memory_windows"].append(memory_window.flatten(1))
        h, state = controller.step(controller.encode(input_window, memory_window, previous), state)

        # 3: the decisions. A finished row may only stay; logits of infeasible choices are -inf.
        feasible = [tape.allowed_moves(), memory.allowed_moves() if memory is not None else None, output.allowed_moves()]
        masked, probs = [], []
        for logits, allowed, stay in zip(controller.action_logits(h), feasible, (STAY, STAY, OUTPUT_STAY)):
            if logits is None or allowed is None:
                continue
            only_stay = torch.nn.functional.one_hot(torch.tensor(stay), allowed.shape[1]).bool()
            allowed = torch.where(live[:, None], allowed, only_stay)
            log_p = logits.masked_fill(~allowed, float("-inf")).log_softmax(-1)
            # The output decision has two choices: a third, impossible one keeps the (B, D, 3) shape.
            missing = 3 - log_p.shape[1]
            masked.append(torch.cat([log_p, log_p.new_full((size, missing), float("-inf"))], 1))
            probs.append(torch.cat([log_p.exp(), log_p.new_zeros(size, missing)], 1))
        log_probs = torch.stack(masked, 1)  # (B, D, 3)
        record["decision_probs"].append(torch.stack(probs, 1))
        if actions is not None:
            drawn = actions[:, t, [0, 1, 2] if memory_on else [0, 2]]
        elif greedy:
            drawn = log_probs.detach().argmax(-1)
        else:
            # Differentiable: an exact check differentiates the probabilities of what it enumerates.
            drawn = sample_decisions(torch.stack(probs, 1))
        chosen_log_probs = log_probs.gather(2, drawn[..., None])[..., 0]
        if not memory_on:
            drawn = torch.stack([drawn[:, 0], torch.full_like(drawn[:, 0], STAY), drawn[:, 1]], 1)
            chosen_log_probs = torch.stack([chosen_log_probs[:, 0], torch.zeros_like(chosen_log_probs[:, 0]),
                                            chosen_log_probs[:, 1]], 1)

        # 4-5: the write, then the prediction, which reads the freshly written memory.
        prediction = controller.write_and_predict(h, input_window, memory, live).log_softmax(-1)
        predicting = drawn[:, 2] == OUTPUT_PREDICT
        target = prediction.gather(1, output.current_target()[:, None])[:, 0]
        record["rewards"].append(torch.where(predicting, target, torch.zeros_like(target)))
        record["predictions"].append(torch.where(predicting, prediction.detach().argmax(-1), -1))
        record["actions"].append(drawn)
        record["log_probs"].append(chosen_log_probs)

        # 6: the heads move.
        tape.move(drawn[:, 0])
        if memory is not None:
            memory.move(drawn[:, 1])
        output.move(drawn[:, 2])
        previous = drawn

    stacked = {name: torch.stack(values, 1) for name, values in record.items() if values}
    mask = stacked["mask"]
    steps = mask.shape[1]
    baselines = torch.zeros(size, steps, dtype=dtype)
    if config.online_baseline:
        baselines = baselines + model._online_values(steps, greedy).to(dtype)
    if model.baseline is not None:
        baselines = baselines + model._baseline_after_episode(batch, stacked["windows"], stacked.get("memory_windows"),
                                                              stacked["actions"])
    return Rollout(
        actions=stacked["actions"],
        log_probs=stacked["log_probs"],
        rewards=stacked["rewards"],
        mask=mask,
        baselines=baselines * mask,
        input_heads=stacked["input_heads"],
        memory_heads=stacked.get("memory_heads"),
        output_positions=stacked["output_positions"],
        predictions=stacked["predictions"],
        decision_probs=stacked["decision_probs"],
    )
