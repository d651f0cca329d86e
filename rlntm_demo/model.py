"""The RL-NTM: a controller driving three tapes, run as a batch of episodes.

:meth:`RLNTM.run_episode` runs one episode per row of a :class:`~rlntm_demo.tasks.Batch`, all
rows at once (a Python loop over steps, never over rows). Within a step, in this order (the
authors' order):

1. **read** the input window and the memory window;
2. the **controller** maps them and the previous actions to its state ``h_t``;
3. **sample** the three decisions, each from its own ``torch.distributions.Categorical``: input
   move, memory move (only with memory), output decision. Infeasible choices (see
   :mod:`~rlntm_demo.interfaces`) get logit ``-inf``, hence probability exactly 0;
4. **write** the new value of the current memory cell;
5. **predict** the next target from ``h_t`` (and, with direct access, the input symbol and the
   freshly written cell); if the output decision is "predict", the reward is
   ``r_t = log p(target at the output position)``, and 0 otherwise;
6. **move** the heads.

An episode ends when every target has been emitted, at the latest after the row's step bound T
(predictions are forced so that this happens). A finished row keeps running alongside the others
but is masked: every decision it is asked for has a single feasible choice ("stay"), so its
log-probabilities are exactly 0 and, under an exact check, it never branches; its rewards are 0.

Sampling uses plain ``Categorical(logits=...).sample()``, so ``reinforce_check`` intercepts it
with no special code. ``greedy=True`` takes the most probable choice instead (for evaluation and
traces).

**Baselines** (``ModelConfig.baseline``) are computed by the model, from information available
before the step's actions: the per-step moving average of R_t over past batches (a buffer, which
:meth:`RLNTM.update_online_baseline` updates between batches and never during an episode), and
the baseline LSTM of Appendix A (:class:`~rlntm_demo.controllers.OfflineBaseline`), which reads
the controller's inputs with their gradient blocked. With ``"both"``, ``b_t`` is their sum.

>>> import torch
>>> from rlntm_demo.config import ModelConfig
>>> from rlntm_demo.tasks import make_task
>>> task = make_task("copy", num_symbols=3)
>>> batch = task.sample(complexity=2, batch_size=4, generator=torch.Generator().manual_seed(0))
>>> model = RLNTM(ModelConfig(controller="lstm", interfaces=task.interfaces), generator=torch.Generator().manual_seed(0))
>>> rollout = model.run_episode(batch)
>>> rollout.rewards.shape == rollout.mask.shape == (4, rollout.rewards.shape[1])
True
>>> bool((rollout.emitted == batch.target_len).all())  # every target was emitted
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .config import ModelConfig
from .controllers import START, OfflineBaseline, make_controller
from .interfaces import OUTPUT_PREDICT, OUTPUT_STAY, STAY, InputTape, MemoryTape, OutputTape

if TYPE_CHECKING:
    from .tasks import Batch
    from .traces import Trace

__all__ = ["RLNTM", "Rollout"]

INPUT, MEMORY, OUTPUT = 0, 1, 2
"""Positions of the three decisions in ``Rollout.actions`` and ``Rollout.log_probs``."""


@dataclass
class Rollout:
    """What a batch of episodes did, step by step. ``T`` is the number of steps run (the longest
    episode of the batch); entries past a row's end are masked out (``mask`` False) and zero.
    """

    actions: torch.Tensor
    """(B, T, 3) long: the input move, the memory move (``STAY`` without memory) and the output
    decision of each step (see :mod:`~rlntm_demo.interfaces` for the indices)."""
    log_probs: torch.Tensor
    """(B, T, 3): log-probability of each of the three sampled decisions (0 where forced)."""
    rewards: torch.Tensor
    """(B, T): r_t = log p(target) at steps that predict, else 0. Differentiable: the pathwise
    part of the gradient flows through it to the predictions and the memory writes."""
    mask: torch.Tensor
    """(B, T) bool: the step belongs to the row's episode (the row was not finished before it)."""
    baselines: torch.Tensor
    """(B, T): the baseline b_t (0 without baseline; 0 at masked steps)."""
    input_heads: torch.Tensor
    """(B, T) long: the input head's position during the step."""
    memory_heads: torch.Tensor | None
    """(B, T) long: the memory head's position during the step (``None`` without memory)."""
    output_positions: torch.Tensor
    """(B, T) long: the index of the next target during the step."""
    predictions: torch.Tensor
    """(B, T) long: the most probable symbol at steps that predict, -1 elsewhere."""

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) the number of steps of each row's episode."""
        return self.mask.sum(1)

    @property
    def emitted(self) -> torch.Tensor:
        """(B,) the number of predictions each row made."""
        return (self.predictions >= 0).sum(1)


class RLNTM(nn.Module):
    """The RL-NTM of the paper: a controller, its tapes, and its baselines.

    Arguments:
        config: the model's configuration; take ``config.interfaces`` from the task.
        generator: where the initial weights are drawn from when ``config.init_std`` is set
            (torch's global generator when ``None``).
    """

    def __init__(self, config: ModelConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.controller = make_controller(config)
        self.baseline: OfflineBaseline | None = None
        if config.offline_baseline:
            self.baseline = OfflineBaseline(self.controller.input_size, config.baseline_hidden_size)
        self.online_baseline: torch.Tensor
        self.register_buffer("online_baseline", torch.zeros(config.max_steps))
        if config.init_std is not None:
            with torch.no_grad():
                for parameter in self.parameters():
                    parameter.normal_(0.0, config.init_std, generator=generator)

    def policy_parameters(self) -> dict[str, torch.Tensor]:
        """The controller's parameters, by name: what REINFORCE and backpropagation train."""
        return {f"controller.{n}": p for n, p in self.controller.named_parameters()}

    def baseline_parameters(self) -> dict[str, torch.Tensor]:
        """The baseline LSTM's parameters, by name (empty without it)."""
        if self.baseline is None:
            return {}
        return {f"baseline.{n}": p for n, p in self.baseline.named_parameters()}

    def run_episode(self, batch: Batch, *, greedy: bool = False, all_steps: bool = False) -> Rollout:
        """Run one episode per row of ``batch``.

        Arguments:
            batch: the instances; each row's episode lasts at most ``batch.steps`` steps.
            greedy: take the most probable choice at every decision instead of sampling.
            all_steps: run up to the largest step bound of the batch even once every row has
                finished, as the authors' code always did. Each row then makes the same number
                of decisions whatever the other rows do, which an exact check needs when it
                replays one action sequence on its own. By default the batch stops as soon as
                every row has finished.

        Returns:
            A :class:`Rollout`.
        """
        config = self.config
        dtype = self.controller.action_head.weight.dtype
        size = batch.batch_size
        spec = config.interfaces
        input_tape = InputTape(batch.input, batch.input_len, forward_only=spec.forward_only_input, window=config.read_window)
        memory = None
        if spec.memory:
            memory = MemoryTape(size, config.memory_cells, config.memory_width, window=config.read_window, dtype=dtype)
        output = OutputTape(batch.target, batch.target_len, batch.steps)
        state = self.controller.initial_state(size, dtype)
        previous = torch.full((size, 3), START, dtype=torch.long)
        centre = config.read_window

        record: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("actions", "log_probs", "rewards", "mask", "inputs", "baseline_inputs",
                            "input_heads", "memory_heads", "output_positions", "predictions")
        }
        for _ in range(int(batch.steps.max())):
            live = ~output.finished
            if not all_steps and not bool(live.any()):
                break
            input_window = input_tape.read()
            memory_window = memory.read() if memory is not None else None
            x = self.controller.encode(input_window, memory_window, previous)
            h, state = self.controller.step(x, state)

            feasible = [
                input_tape.allowed_moves(),
                memory.allowed_moves() if memory is not None else None,
                output.allowed_moves(),
            ]
            stay_only = [STAY, STAY, OUTPUT_STAY]
            actions, log_probs = [], []
            for logits, allowed, stay in zip(self.controller.action_logits(h), feasible, stay_only):
                if logits is None or allowed is None:  # no memory tape: no memory decision
                    actions.append(torch.full((size,), STAY, dtype=torch.long))
                    log_probs.append(torch.zeros(size, dtype=dtype))
                    continue
                # A finished row has one feasible choice, "stay", so it never branches.
                only_stay = nn.functional.one_hot(torch.tensor(stay), allowed.shape[1]).bool()
                allowed = torch.where(live[:, None], allowed, only_stay)
                action, log_prob = _decide(logits.masked_fill(~allowed, float("-inf")), greedy)
                actions.append(action)
                log_probs.append(log_prob)

            symbol = input_window[:, centre]
            cell = None
            if memory is not None:
                new = self.controller.memory_write(h, memory.cell(0), symbol, memory.cell(-1), memory.cell(1))
                memory.write(new, rows=live)
                cell = memory.cell(0)
            prediction_logits = self.controller.prediction_logits(h, symbol, cell)
            predicting = actions[OUTPUT] == OUTPUT_PREDICT
            target_log_prob = prediction_logits.log_softmax(-1).gather(1, output.current_target()[:, None])[:, 0]

            record["actions"].append(torch.stack(actions, 1))
            record["log_probs"].append(torch.stack(log_probs, 1))
            record["rewards"].append(torch.where(predicting, target_log_prob, torch.zeros_like(target_log_prob)))
            record["mask"].append(live)
            record["inputs"].append(x)
            record["input_heads"].append(input_tape.head)
            record["output_positions"].append(output.position)
            record["predictions"].append(torch.where(predicting, prediction_logits.argmax(-1), -1))
            if memory is not None:
                record["memory_heads"].append(memory.head)
            if config.bug == "baseline-sees-current-action":
                # Deliberately wrong: the baseline is told this step's actions instead of the last.
                record["baseline_inputs"].append(self.controller.encode(input_window, memory_window, torch.stack(actions, 1)))

            input_tape.move(actions[INPUT])
            if memory is not None:
                memory.move(actions[MEMORY])
            output.move(actions[OUTPUT])
            previous = torch.stack(actions, 1)

        mask = torch.stack(record["mask"], 1)
        inputs = torch.stack(record["baseline_inputs"] or record["inputs"], 1)
        return Rollout(
            actions=torch.stack(record["actions"], 1),
            log_probs=torch.stack(record["log_probs"], 1),
            rewards=torch.stack(record["rewards"], 1),
            mask=mask,
            baselines=self._baselines(batch, inputs, mask),
            input_heads=torch.stack(record["input_heads"], 1),
            memory_heads=torch.stack(record["memory_heads"], 1) if memory is not None else None,
            output_positions=torch.stack(record["output_positions"], 1),
            predictions=torch.stack(record["predictions"], 1),
        )

    def _baselines(self, batch: Batch, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """b_t of every step: moving average, baseline LSTM, or their sum; 0 at masked steps."""
        steps = mask.shape[1]
        baselines = torch.zeros(mask.shape, dtype=inputs.dtype)
        if self.config.online_baseline:
            if steps > self.config.max_steps:
                raise ValueError(f"an episode ran {steps} steps, more than max_steps = {self.config.max_steps}")
            baselines = baselines + self.online_baseline[:steps].to(inputs.dtype)
        if self.baseline is not None:
            if self.config.bug != "baseline-leaks-into-controller":
                inputs = inputs.detach()  # the baseline must not train the controller
            baselines = baselines + self.baseline(batch.input, batch.input_len, inputs)
        return baselines * mask

    @torch.no_grad()
    def update_online_baseline(self, returns: torch.Tensor, mask: torch.Tensor) -> None:
        """Move the per-step averages towards this batch's returns: call it after each update.

        For every step t that some row reached: ``b_t <- decay * b_t + (1 - decay) * mean R_t``,
        the mean over the rows that reached it.

        Arguments:
            returns: (B, T) the returns R_t the actions were reinforced with.
            mask: (B, T) bool, the steps that belong to an episode.
        """
        steps = returns.shape[1]
        count = mask.sum(0)
        reached = count > 0
        mean = (returns.detach() * mask).sum(0) / count.clamp(min=1)
        decay = self.config.online_decay
        current = self.online_baseline[:steps]
        self.online_baseline[:steps] = torch.where(reached, decay * current + (1 - decay) * mean.to(current.dtype), current)

    @torch.no_grad()
    def trace(self, batch: Batch, row: int = 0, greedy: bool = True) -> Trace:
        """What the model does on one instance, step by step, for display.

        Arguments:
            batch: the instances.
            row: which of them.
            greedy: most probable choices (default) or sampled ones.

        Returns:
            A :class:`rlntm_demo.traces.Trace` with one :class:`~rlntm_demo.traces.Step` per step
            of the episode.
        """
        from .traces import Step, Trace

        one = batch.select([row])
        rollout = self.run_episode(one, greedy=greedy)
        steps = []
        for t in range(int(rollout.lengths[0])):
            prediction = int(rollout.predictions[0, t])
            steps.append(
                Step(
                    input_head=int(rollout.input_heads[0, t]),
                    memory_head=int(rollout.memory_heads[0, t]) if rollout.memory_heads is not None else None,
                    output_position=int(rollout.output_positions[0, t]),
                    prediction=prediction if prediction >= 0 else None,
                )
            )
        return Trace(
            input_symbols=one.input[0, : int(one.input_len[0])].tolist(),
            target_symbols=one.target[0, : int(one.target_len[0])].tolist(),
            steps=steps,
            memory_cells=self.config.memory_cells if self.config.interfaces.memory else None,
        )


def _decide(logits: torch.Tensor, greedy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One decision per row from masked logits: ``(action, its log-probability)``."""
    if greedy:
        action = logits.argmax(-1)
        return action, logits.log_softmax(-1).gather(1, action[:, None])[:, 0]
    distribution = torch.distributions.Categorical(logits=logits)
    action = distribution.sample()
    return action, distribution.log_prob(action)
