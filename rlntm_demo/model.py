"""The RL-NTM: a controller driving three tapes, run as a batch of episodes.

:meth:`RLNTM.run_episode` runs one episode per row of a :class:`~rlntm_demo.tasks.Batch`, all
rows at once (a Python loop over steps, never over rows). Within a step, in this order (the
authors' order):

1. **read** the input window and the memory window;
2. the **controller** maps them and the previous actions to its state ``h_t``;
3. **sample** the three decisions: input move, memory move (only with memory), output decision.
   Infeasible choices (see :mod:`~rlntm_demo.interfaces`) get logit ``-inf``, hence probability
   exactly 0;
4. **write** the new value of the current memory cell;
5. **predict** the next target from ``h_t`` (and, with direct access, the input symbol and the
   freshly written cell); if the output decision is "predict", the reward is
   ``r_t = log p(target at the output position)``, and 0 otherwise;
6. **move** the heads.

An episode ends when every target has been emitted, at the latest after the row's step bound T
(predictions are forced so that this happens). A finished row keeps running alongside the others
but is masked: every decision it is asked for has a single feasible choice ("stay"), so its
log-probabilities are exactly 0 and, under an exact check, it never branches; its rewards are 0.

Sampling draws each decision with ``torch.multinomial`` on its (B, 3) probabilities (one call per
decision, in the order above), so ``reinforce_check`` intercepts it with no special code.
``greedy=True`` takes the most probable choice instead (for evaluation and traces).

**How a step is computed** (``ModelConfig.step_impl``): :mod:`rlntm_demo.reference` is the step
above written plainly, with the tapes of :mod:`~rlntm_demo.interfaces` and the controller's
per-step methods; it defines the model. :mod:`rlntm_demo.fast` (the default) computes the same
values, decisions and gradients in few operations per step (``tests/rlntm_demo/test_reference.py``
holds the two equal in float64).

**Baselines** (``ModelConfig.baseline``) are computed by the model, from information available
before the step's actions: the per-step moving average of R_t over past batches (a buffer, which
:meth:`RLNTM.update_online_baseline` updates between batches and never during an episode), and
the baseline LSTM of Appendix A (:class:`~rlntm_demo.controllers.OfflineBaseline`), which reads
the controller's inputs with their gradient blocked. With ``"both"``, ``b_t`` is their sum. The
fast step runs the baseline LSTM inside its loop, side by side with the controller in the same
products (its own columns, its own recurrent block, and memory weights through which no gradient
reaches the cells read), so that no gradient crosses. A subclass that sets :attr:`RLNTM.fuses_baseline`
to ``False`` runs it after the episode instead, over re-encoded inputs
(:meth:`RLNTM.baseline_decisions`, :meth:`RLNTM.baseline_reads`): the same values and gradients
(``tests/rlntm_demo/test_model.py``), and the place where the deliberate baseline bugs of
:mod:`rlntm_demo.bugs` change one thing. Greedy episodes
may run past ``ModelConfig.max_steps``; the moving average's last slot then stands for every later
step (evaluation does not use baselines; training episodes longer than ``max_steps`` raise).

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
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from .config import ModelConfig
from .controllers import START, OfflineBaseline, make_controller

if TYPE_CHECKING:
    from .tasks import Batch
    from .traces import Trace

__all__ = ["RLNTM", "Rollout", "sample_decisions"]

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
    decision_probs: torch.Tensor | None = None
    """(B, T, D, 3): the probabilities of every choice of the D decisions (3 with memory, 2
    without) at every step, infeasible choices 0, a finished row's "stay" 1; differentiable.
    What the per-step entropy (:func:`~rlntm_demo.objective.step_entropies`) is computed from."""

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

    fuses_baseline: ClassVar[bool] = True
    """Whether the baseline LSTM runs inside the step loop, beside the controller; ``False``: it
    runs after the episode over :meth:`baseline_reads` of the re-encoded inputs."""

    def __init__(self, config: ModelConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.controller = make_controller(config)
        self.baseline: OfflineBaseline | None = None
        if config.offline_baseline:
            self.baseline = OfflineBaseline(
                self.controller.input_size, config.baseline_hidden_size, initial_state=config.initial_state
            )
        self.online_baseline: torch.Tensor
        self.register_buffer("online_baseline", torch.zeros(config.max_steps))
        if config.init_std is not None:
            with torch.no_grad():
                for parameter in self.parameters():
                    parameter.normal_(0.0, config.init_std, generator=generator)
        self.controller.reset_extra_parameters()

    def policy_parameters(self) -> dict[str, torch.Tensor]:
        """The controller's parameters, by name: what REINFORCE and backpropagation train."""
        return {f"controller.{n}": p for n, p in self.controller.named_parameters()}

    def baseline_parameters(self) -> dict[str, torch.Tensor]:
        """The baseline LSTM's parameters, by name (empty without it)."""
        if self.baseline is None:
            return {}
        return {f"baseline.{n}": p for n, p in self.baseline.named_parameters()}

    def memory_cells_for(self, batch: Batch) -> int:
        """Cells of a memory tape that holds ``batch``'s longest input with room to spare:
        ``config.memory_cells``, or more where an instance is longer than training's.

        A policy that stores its input in memory needs a cell per input symbol, and its read
        window and a move past either end of what it wrote should not reach the other end round
        the tape: so at least the longest input plus ``2 * read_window + 2`` cells. The training
        lengths of every task fit in the default 30 cells (ForwardReverse at 15: 18); evaluation
        at 2x, 5x and 10x does not (ForwardReverse at 10x: 153).
        """
        needed = int(batch.input_len.max()) + int(self.config.input_start_marker) + 2 * self.config.read_window + 2
        return max(self.config.memory_cells, needed)

    def run_episode(self, batch: Batch, *, greedy: bool = False, all_steps: bool = False,
                    memory_cells: int | None = None) -> Rollout:
        """Run one episode per row of ``batch``.

        Arguments:
            batch: the instances; each row's episode lasts at most ``batch.steps`` steps. With
                ``config.input_start_marker`` the episode runs on
                :meth:`~rlntm_demo.tasks.Batch.with_start_marker` of it (one step more, and the
                input head's positions count the marker as cell 0).
            greedy: take the most probable choice at every decision instead of sampling.
                Greedy episodes may run longer than ``config.max_steps`` (evaluation at lengths
                far beyond training): past it, the moving-average baseline reuses its last slot.
            all_steps: run up to the largest step bound of the batch even once every row has
                finished, as the authors' code always did. Each row then makes the same number
                of decisions whatever the other rows do, which an exact check needs when it
                replays one action sequence on its own. By default the batch stops as soon as
                every row has finished.
            memory_cells: cells of the memory tape (default ``config.memory_cells``); evaluation
                passes :meth:`memory_cells_for` the batch, so that longer instances fit.

        Returns:
            A :class:`Rollout`.

        Raises:
            ValueError: a sampled (not greedy) episode ran more than ``config.max_steps`` steps
                with the moving-average baseline on.
        """
        if self.config.input_start_marker:
            batch = batch.with_start_marker()
        if self.config.step_impl == "reference":
            from . import reference

            return reference.run_episode(self, batch, greedy=greedy, all_steps=all_steps, memory_cells=memory_cells)
        from .fast.episode import run_episode

        return run_episode(self, batch, greedy=greedy, all_steps=all_steps, memory_cells=memory_cells)

    def _online_values(self, steps: int, greedy: bool) -> torch.Tensor:
        """The moving average's slots for ``steps`` steps; past ``max_steps`` (greedy episodes
        only) the last slot repeats."""
        slots = self.config.max_steps
        if steps <= slots:
            return self.online_baseline[:steps]
        if not greedy:
            raise ValueError(f"an episode ran {steps} steps, more than max_steps = {slots}")
        return torch.cat([self.online_baseline, self.online_baseline[-1:].expand(steps - slots)])

    def _baseline_after_episode(
        self, batch: Batch, windows: torch.Tensor, memory_windows: torch.Tensor | None, chosen: torch.Tensor
    ) -> torch.Tensor:
        """The baseline LSTM run after the episode over re-encoded inputs x_t (where
        :attr:`fuses_baseline` is ``False``).

        Arguments:
            windows: (B, T, window cells) long, the symbols read.
            memory_windows: (B, T, window cells * width), the memory cells read (``None`` without memory).
            chosen: (B, T, 3) the decisions.
        """
        assert self.baseline is not None
        size, steps = chosen.shape[:2]
        windows = windows.flatten(0, 1)
        if memory_windows is not None:
            memory_windows = memory_windows.flatten(0, 1).view(size * steps, windows.shape[1], -1)
        previous = self.baseline_decisions(chosen)
        inputs = self.controller.encode(windows, memory_windows, previous.flatten(0, 1)).view(size, steps, -1)
        return self.baseline(batch.input, batch.input_len, self.baseline_reads(inputs))

    def baseline_decisions(self, chosen: torch.Tensor) -> torch.Tensor:
        """The decisions the baseline is told at each step, (B, T, 3) from the decisions taken
        ``chosen``: those of the step before (``START`` at the first), as the controller is. A
        baseline that knew the step's own decisions would be biased."""
        start = torch.full_like(chosen[:, :1], START)
        return torch.cat([start, chosen[:, :-1]], 1)

    def baseline_reads(self, inputs: torch.Tensor) -> torch.Tensor:
        """What the baseline LSTM reads of the controller's inputs x_t (B, T, input size): the
        same values, with their gradient blocked, so that the baseline's regression loss never
        trains the controller."""
        return inputs.detach()

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
        if steps > self.config.max_steps:
            raise ValueError(f"returns cover {steps} steps, more than max_steps = {self.config.max_steps}")
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
        cells = self.memory_cells_for(one)
        rollout = self.run_episode(one, greedy=greedy, memory_cells=cells)
        if self.config.input_start_marker:
            one = one.with_start_marker()  # the tape the episode ran on, for display
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
            memory_cells=cells if self.config.interfaces.memory else None,
        )


def sample_decisions(probs: torch.Tensor) -> torch.Tensor:
    """The sampled decisions (B, D) from their probabilities (B, D, 3): how both steps
    (:mod:`rlntm_demo.reference` and :mod:`rlntm_demo.fast`) draw, so that a seed gives both the
    same decisions.

    One ``torch.multinomial`` call per step over the (B * D, 3) rows, each row's decisions
    together in the order input, memory, output: ``reinforce_check`` enumerates such a call in
    batched mode as D decisions per episode. Infeasible choices have probability exactly 0, so
    they are never drawn. (Greedy episodes take the largest masked logit instead.)
    """
    size, decisions, choices = probs.shape
    return torch.multinomial(probs.reshape(size * decisions, choices), 1).view(size, decisions)
