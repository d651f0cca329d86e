"""The RL-NTM's rollout replayed the straightforward way, the reference the fast step loop and
its fused autograd functions are compared with (``test_model.py``, ``test_fused.py``)."""

from __future__ import annotations

import torch

from rlntm_demo.controllers import START
from rlntm_demo.interfaces import OUTPUT_PREDICT, OUTPUT_STAY, STAY, InputTape, MemoryTape, OutputTape
from rlntm_demo.model import RLNTM
from rlntm_demo.tasks import Batch


def reference_replay(model: RLNTM, batch: Batch, actions: torch.Tensor) -> dict[str, torch.Tensor]:
    """The rollout of given actions, computed the straightforward way: the controller's per-step
    API (encode, step, action_logits, memory_write, prediction_logits), the plain tapes, and the
    baseline LSTM run afterwards over the recorded inputs, every operation recorded by autograd.

    Returns ``probs`` (B, T, decisions, 3), the feasible-masked probabilities of each decision (what
    ``torch.multinomial`` samples from), ``log_probs`` (B, T, 3) of the chosen actions,
    ``rewards``, ``baselines`` (masked) and ``mask``."""
    config, controller = model.config, model.controller
    dtype = controller.action_head.weight.dtype
    size, steps = actions.shape[:2]
    tape = InputTape(batch.input, batch.input_len, forward_only=config.interfaces.forward_only_input, window=config.read_window,
                     circular=config.circular_input)
    memory = None
    if config.interfaces.memory:
        memory = MemoryTape(size, config.memory_cells, config.memory_width, window=config.read_window, dtype=dtype)
    output = OutputTape(batch.target, batch.target_len, batch.steps)
    state = controller.initial_state(size, dtype)
    previous = torch.full((size, 3), START, dtype=torch.long)
    probs, log_probs, rewards, inputs, masks = [], [], [], [], []
    for t in range(steps):
        live = ~output.finished
        input_window = tape.read()
        memory_window = memory.read() if memory is not None else None
        x = controller.encode(input_window, memory_window, previous)
        h, state = controller.step(x, state)
        chosen = actions[:, t]
        feasible = [tape.allowed_moves(), memory.allowed_moves() if memory is not None else None, output.allowed_moves()]
        step_probs, step_log_probs = [], []
        for k, (logits, allowed, stay) in enumerate(zip(controller.action_logits(h), feasible, [STAY, STAY, OUTPUT_STAY])):
            if logits is None or allowed is None:
                step_log_probs.append(torch.zeros(size, dtype=dtype))
                continue
            only_stay = torch.nn.functional.one_hot(torch.tensor(stay), allowed.shape[1]).bool()
            allowed = torch.where(live[:, None], allowed, only_stay)
            masked = logits.masked_fill(~allowed, float("-inf")).log_softmax(-1)
            step_probs.append(torch.cat([masked.exp(), masked.new_zeros(size, 3 - masked.shape[1])], 1))
            step_log_probs.append(masked.gather(1, chosen[:, k : k + 1])[:, 0])
        symbol = input_window[:, config.read_window]
        cell = None
        if memory is not None:
            new = controller.memory_write(h, memory.cell(0), symbol, memory.cell(-1), memory.cell(1))
            memory.write(new, rows=live)
            cell = memory.cell(0)
        target = controller.prediction_logits(h, symbol, cell).log_softmax(-1).gather(1, output.current_target()[:, None])[:, 0]
        rewards.append(torch.where(chosen[:, 2] == OUTPUT_PREDICT, target, torch.zeros_like(target)))
        probs.append(torch.stack(step_probs, 1))
        log_probs.append(torch.stack(step_log_probs, 1))
        inputs.append(x)
        masks.append(live)
        tape.move(chosen[:, 0])
        if memory is not None:
            memory.move(chosen[:, 1])
        output.move(chosen[:, 2])
        previous = chosen
    mask = torch.stack(masks, 1)
    baselines = torch.zeros(size, steps, dtype=dtype)
    if config.online_baseline:
        baselines = baselines + model.online_baseline[:steps]
    if model.baseline is not None:
        baselines = baselines + model.baseline(batch.input, batch.input_len, torch.stack(inputs, 1).detach())
    return {"probs": torch.stack(probs, 1), "log_probs": torch.stack(log_probs, 1), "rewards": torch.stack(rewards, 1), "baselines": baselines * mask, "mask": mask}
