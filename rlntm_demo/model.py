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

**How a step is computed.** The maths is the straightforward one above (the tests replay
episodes with the controller's per-step methods and :class:`~rlntm_demo.interfaces.MemoryTape`
and compare values and gradients), but the step loop is arranged to run few operations, since
at the sizes of the paper a step costs the number of operations, not their arithmetic:

* the embedding tables are mapped through the first layer once per episode, so the input part of
  a step is a sum of table rows instead of embeddings, a concatenation and a wide product; the
  memory cells read, the LSTM state and (see below) the baseline LSTM's state go through one
  matrix product (:class:`_StepPlan`);
* the memory (:class:`~rlntm_demo.interfaces.FastMemoryTape`) touches only the cells read and
  written, forward and backward;
* the decision heads and the memory write share one product; the decisions' feasibility is an
  additive mask of 0 and ``-inf``;
* what the loop does not need (the prediction head, rewards, log-probabilities, baselines) is
  computed after it, for all steps at once, from the recorded states.

**Baselines** (``ModelConfig.baseline``) are computed by the model, from information available
before the step's actions: the per-step moving average of R_t over past batches (a buffer, which
:meth:`RLNTM.update_online_baseline` updates between batches and never during an episode), and
the baseline LSTM of Appendix A (:class:`~rlntm_demo.controllers.OfflineBaseline`), which reads
the controller's inputs with their gradient blocked. With ``"both"``, ``b_t`` is their sum. The
baseline LSTM runs inside the step loop, side by side with the controller in the same products,
with zero blocks between the two so that no gradient crosses (the deliberate baseline bugs of the
exact check's tests run it after the episode instead, over re-encoded inputs). Greedy episodes
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
from typing import TYPE_CHECKING

import torch
from torch import nn

from .config import BLANK, NUM_SYMBOLS, ModelConfig
from .controllers import START, Controller, DirectAccessController, LSTMController, OfflineBaseline, make_controller
from .interfaces import OUTPUT_PREDICT, STAY, FastMemoryTape

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
            self.baseline = OfflineBaseline(
                self.controller.input_size, config.baseline_hidden_size, initial_state=config.initial_state
            )
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
                Greedy episodes may run longer than ``config.max_steps`` (evaluation at lengths
                far beyond training): past it, the moving-average baseline reuses its last slot.
            all_steps: run up to the largest step bound of the batch even once every row has
                finished, as the authors' code always did. Each row then makes the same number
                of decisions whatever the other rows do, which an exact check needs when it
                replays one action sequence on its own. By default the batch stops as soon as
                every row has finished.

        Returns:
            A :class:`Rollout`.

        Raises:
            ValueError: a sampled (not greedy) episode ran more than ``config.max_steps`` steps
                with the moving-average baseline on.
        """
        config = self.config
        controller = self.controller
        spec = config.interfaces
        dtype = controller.action_head.weight.dtype
        size = batch.batch_size
        window = config.read_window
        offsets = list(range(-window, window + 1))
        direct = isinstance(controller, DirectAccessController)
        # The fused step runs the baseline LSTM alongside the controller; the deliberate baseline
        # bugs need the reference path (baseline run after the episode on re-encoded inputs).
        fuse_baseline = self.baseline is not None and config.bug is None
        plan = _StepPlan(controller, self.baseline if fuse_baseline else None, config)
        num_decisions = 3 if spec.memory else 2

        # Input tape, with ``window`` blank cells on each side and blanks past each row's end (or,
        # circular, each cell index taken modulo the row's input length), so that the read window
        # is one gather.
        tape_width = batch.input.shape[1]
        wraps = config.circular_input and not spec.forward_only_input
        if wraps:
            padded = batch.input.gather(1, torch.arange(-window, tape_width + window)[None, :] % batch.input_len[:, None])
        else:
            inside = torch.arange(tape_width)[None, :] < batch.input_len[:, None]
            padded = torch.full((size, tape_width + 2 * window), BLANK, dtype=torch.long)
            padded[:, window : window + tape_width] = torch.where(inside, batch.input, BLANK)
        last_cell = batch.input_len - 1
        window_offsets = torch.arange(2 * window + 1)
        # The rule "predict when the targets left equal the steps left", as: stay is feasible
        # at step t iff position > t + (target_len - steps).
        forced_after = batch.target_len - batch.steps
        target_len = batch.target_len

        memory = FastMemoryTape(size, config.memory_cells, config.memory_width, dtype=dtype) if spec.memory else None
        # Cells to read: the window, then (direct access) the two neighbours the write adds in.
        read_offsets = offsets + ([-1, 1] if direct and memory is not None else [])
        num_window = len(offsets)

        input_head = torch.zeros(size, dtype=torch.long)
        position = torch.zeros(size, dtype=torch.long)
        previous = torch.full((size, num_decisions), START, dtype=torch.long)
        h, c = plan.initial_state(batch, size, dtype)
        true = torch.ones(size, dtype=torch.bool)
        false = torch.zeros(size, dtype=torch.bool)
        minus_inf = torch.tensor(float("-inf"), dtype=dtype)
        zero = torch.tensor(0.0, dtype=dtype)
        symbol_onehots = torch.eye(NUM_SYMBOLS, dtype=dtype) if direct else None

        record: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("actions", "logits", "mask", "symbols", "input_heads", "memory_heads", "output_positions",
                            "hidden", "baseline_hidden", "cells", "windows", "memory_windows")
        }
        steps_bound = int(batch.steps.max())
        for t in range(steps_bound):
            live = position < target_len
            if not all_steps and not bool(live.any()):
                break
            symbols = padded.gather(1, input_head[:, None] + window_offsets)
            reads = memory.read(read_offsets) if memory is not None else None
            memory_window = neighbours = None
            if reads is not None:
                # One split rather than slices: in backward, each slice fills a gradient of the
                # whole tensor, a split concatenates once.
                cells_read, neighbours = reads.split([num_window, len(read_offsets) - num_window], 1)
                memory_window = cells_read.flatten(1)
            h, c, hidden, baseline_hidden = plan.step(symbols, (previous * plan.action_powers).sum(1), memory_window, h, c)
            heads = plan.heads(hidden).split(plan.head_sizes, 1)

            # Feasible choices, as an additive mask: 0 or -inf. Finished rows may only stay.
            if wraps:
                left = right = live
            else:
                left = false if spec.forward_only_input else (input_head > 0) & live
                right = (input_head < last_cell) & live
            stay = (position > forced_after + t) | ~live
            columns = [left, true, right] + ([live, true, live] if memory is not None else []) + [stay, live, false]
            mask = torch.where(torch.stack(columns, 1).view(size, num_decisions, 3), zero, minus_inf)
            logits = heads[0].view(size, num_decisions, 3) + mask
            actions = _decide(logits, greedy)

            centre = symbols[:, window]
            if memory is not None:
                old = cells_read.view(size, -1) if num_window == 1 else cells_read[:, window]
                new = plan.memory_write(heads, old, neighbours, centre, symbol_onehots)
                memory.write(new, live)
                if direct:
                    record["cells"].append(torch.where(live[:, None], new, old))
                record["memory_heads"].append(memory.head)
                memory.move(actions[:, 1])
            if plan.reference_baseline:
                record["windows"].append(symbols)
                if memory_window is not None:
                    record["memory_windows"].append(memory_window)
            record["actions"].append(actions)
            record["logits"].append(logits)
            record["mask"].append(live)
            record["symbols"].append(centre)
            record["input_heads"].append(input_head)
            record["output_positions"].append(position)
            record["hidden"].append(hidden)
            if baseline_hidden is not None:
                record["baseline_hidden"].append(baseline_hidden)
            input_head = input_head + actions[:, 0] - 1
            if wraps:
                input_head = input_head.remainder(batch.input_len)
            position = position + actions[:, -1]
            previous = actions

        return self._finish(batch, plan, record, greedy)

    def _finish(self, batch: Batch, plan: _StepPlan, record: dict[str, list[torch.Tensor]], greedy: bool) -> Rollout:
        """Everything that need not be inside the step loop, computed for all steps at once:
        log-probabilities, predictions, rewards and baselines."""
        controller = self.controller
        size = batch.batch_size
        mask = torch.stack(record["mask"], 1)
        chosen = torch.stack(record["actions"], 1)  # (B, T, D)
        logits = torch.stack(record["logits"], 1)  # (B, T, D, 3), infeasible at -inf
        chosen_log_probs = logits.log_softmax(-1).gather(3, chosen[..., None])[..., 0]
        steps = mask.shape[1]
        if chosen.shape[2] == 2:  # no memory: the memory "decision" is a forced stay
            stay = torch.full((size, steps, 1), STAY, dtype=torch.long)
            chosen = torch.cat([chosen[..., :1], stay, chosen[..., 1:]], 2)
            chosen_log_probs = torch.cat(
                [chosen_log_probs[..., :1], torch.zeros_like(chosen_log_probs[..., :1]), chosen_log_probs[..., 1:]], 2
            )
        hidden = torch.stack(record["hidden"], 1)
        symbols = torch.stack(record["symbols"], 1)
        cells = torch.stack(record["cells"], 1) if record["cells"] else None
        prediction_logits = controller.prediction_logits(plan.controller_hidden(hidden), symbols, cells)
        positions = torch.stack(record["output_positions"], 1)
        index = positions.clamp(max=batch.target.shape[1] - 1)
        targets = torch.where(positions >= batch.target_len[:, None], BLANK, batch.target.gather(1, index))
        target_log_probs = prediction_logits.log_softmax(-1).gather(2, targets[..., None])[..., 0]
        predicting = chosen[..., OUTPUT] == OUTPUT_PREDICT
        rewards = torch.where(predicting, target_log_probs, torch.zeros_like(target_log_probs))
        predictions = torch.where(predicting, prediction_logits.argmax(-1), -1)

        baselines = torch.zeros(mask.shape, dtype=rewards.dtype)
        if self.config.online_baseline:
            baselines = baselines + self._online_values(steps, greedy).to(rewards.dtype)
        if self.baseline is not None:
            if plan.reference_baseline:
                baselines = baselines + self._reference_baseline(batch, record, chosen)
            else:
                if record["baseline_hidden"]:
                    states = torch.stack(record["baseline_hidden"], 1)
                else:
                    states = hidden[..., plan.controller_units :]
                baselines = baselines + self.baseline.head(states).squeeze(-1)
        return Rollout(
            actions=chosen,
            log_probs=chosen_log_probs,
            rewards=rewards,
            mask=mask,
            baselines=baselines * mask,
            input_heads=torch.stack(record["input_heads"], 1),
            memory_heads=torch.stack(record["memory_heads"], 1) if record["memory_heads"] else None,
            output_positions=positions,
            predictions=predictions,
        )

    def _online_values(self, steps: int, greedy: bool) -> torch.Tensor:
        """The moving average's slots for ``steps`` steps; past ``max_steps`` (greedy episodes
        only) the last slot repeats."""
        slots = self.config.max_steps
        if steps <= slots:
            return self.online_baseline[:steps]
        if not greedy:
            raise ValueError(f"an episode ran {steps} steps, more than max_steps = {slots}")
        return torch.cat([self.online_baseline, self.online_baseline[-1:].expand(steps - slots)])

    def _reference_baseline(self, batch: Batch, record: dict[str, list[torch.Tensor]], chosen: torch.Tensor) -> torch.Tensor:
        """The baseline LSTM run after the episode over re-encoded inputs x_t (only for the
        deliberate baseline bugs of the exact check's tests)."""
        assert self.baseline is not None
        size, steps = chosen.shape[:2]
        windows = torch.stack(record["windows"], 1).flatten(0, 1)
        memory_windows = None
        if record["memory_windows"]:
            memory_windows = torch.stack(record["memory_windows"], 1).flatten(0, 1).view(size * steps, windows.shape[1], -1)
        start = torch.full((size, 1, 3), START, dtype=torch.long)
        previous = torch.cat([start, chosen[:, :-1]], 1)
        if self.config.bug == "baseline-sees-current-action":
            # Deliberately wrong: the baseline is told this step's actions instead of the last.
            previous = chosen
        inputs = self.controller.encode(windows, memory_windows, previous.flatten(0, 1)).view(size, steps, -1)
        if self.config.bug != "baseline-leaks-into-controller":
            inputs = inputs.detach()  # the baseline must not train the controller
        return self.baseline(batch.input, batch.input_len, inputs)

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


def _decide(logits: torch.Tensor, greedy: bool) -> torch.Tensor:
    """The decisions (B, D) from masked logits (B, D, 3): the most probable, or sampled.

    One softmax for all decisions, then one ``torch.multinomial`` call per decision, in the
    order input, memory, output (each (B, 3), the batch first), which is what ``reinforce_check``
    enumerates in batched mode. (A single call over (B * D, 3) rows would be cheaper, but the
    check's batched enumeration then counts some sequences twice.) Infeasible choices have
    probability exactly 0, so they are never drawn.
    """
    if greedy:
        return logits.argmax(-1)
    probs = logits.softmax(-1)
    return torch.stack([torch.multinomial(probs[:, d], 1)[:, 0] for d in range(probs.shape[1])], 1)


class _StepPlan:
    """The weights of one step, rearranged once per episode so that a step costs few operations.

    The controller's input x_t is a concatenation of embeddings and memory cells, and every
    embedding only ever meets the first layer's weights. So the embedding tables are mapped
    through those weights once per episode, and a step multiplies a one-hot vector of the
    symbols read and the previous decisions by the mapped tables instead. The memory cells read
    and the recurrent state join the same vector: one matrix product gives every pre-activation.

    With the baseline LSTM (and no deliberate bug), its tandem part runs in the same product,
    side by side with the controller: the baseline reads the one-hot part through tables built
    from *detached* embeddings, its own copy of the memory cells *detached*, and its own state,
    and its columns of the product have zeros wherever the controller's inputs would reach it
    (and the other way round), so no gradient crosses from one to the other. The pre-reader runs
    before the episode and gives the tandem part its initial state.

    Column layout of the product: the sigmoid gates (input, forget, output) of every LSTM unit,
    controller's first, then the tanh parts (the LSTM candidates; the feed-forward units). When
    the controller is an LSTM as wide as the baseline LSTM (the default), the two instead run as
    one batched product of shape (2, B, .), controller first, without the zero blocks.

    The output heads the loop needs (decision logits, times the inverse temperature, and the
    memory write) are one more product. The prediction head waits until after the episode.
    """

    def __init__(self, controller: Controller, baseline: OfflineBaseline | None, config: ModelConfig) -> None:
        memory = config.interfaces.memory
        width = config.memory_width if memory else 0
        cells = 2 * config.read_window + 1
        decisions = 3 if memory else 2
        self.controller = controller
        self.baseline = baseline
        self.reference_baseline = baseline is None and config.offline_baseline
        self.memory = memory
        self.direct = isinstance(controller, DirectAccessController)
        self.lstm = isinstance(controller, LSTMController)
        self.initial = config.initial_state
        self.controller_units = config.hidden_size
        self.baseline_units = baseline.tandem.hidden_size if baseline is not None else 0
        self.lstm_units = (self.controller_units if self.lstm else 0) + self.baseline_units
        self.onehot_width = cells * NUM_SYMBOLS + 4 * decisions
        self.width = width
        self.actions = 3 * decisions

        actions = [controller.input_move_embedding.weight]
        if memory:
            actions.append(controller.memory_move_embedding.weight)
        actions.append(controller.output_embedding.weight)
        symbols = controller.symbol_embedding.weight
        recurrent: torch.Tensor | None = None
        if isinstance(controller, LSTMController):
            cell = controller.cell
            first, bias, recurrent = cell.weight_ih, cell.bias_ih + cell.bias_hh, cell.weight_hh.T
        else:
            first, bias = _tensor(controller, "layer.weight"), _tensor(controller, "layer.bias")
        fixed, reads = _input_rows(first, symbols, actions, cells, width)
        controller_rows = [fixed] + ([reads] if memory else [])
        units = first.shape[0]
        if baseline is not None:
            # Detached embeddings: the baseline's loss must not train the controller's tables.
            base_fixed, base_reads = _input_rows(
                _tensor(baseline, "tandem.weight_ih_l0"), symbols.detach(), [a.detach() for a in actions], cells, width
            )
            base_bias = _tensor(baseline, "tandem.bias_ih_l0") + _tensor(baseline, "tandem.bias_hh_l0")
            base_units = 4 * self.baseline_units
            baseline_rows = [base_fixed]
            if memory:
                controller_rows.append(first.new_zeros(cells * width, units))
                baseline_rows += [first.new_zeros(cells * width, base_units), base_reads]
            if recurrent is not None:
                baseline_rows.append(first.new_zeros(self.controller_units, base_units))
            baseline_rows.append(_tensor(baseline, "tandem.weight_hh_l0").T)
        if recurrent is not None:
            controller_rows.append(recurrent)
        if baseline is not None:
            controller_rows.append(first.new_zeros(self.baseline_units, units))
        controller_weight = torch.cat(controller_rows, 0)

        # Gate order of torch's LSTMs: input, forget, candidate, output.
        sigmoid_columns: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[], [], []]
        tanh_columns: list[tuple[torch.Tensor, torch.Tensor]] = []
        lstms: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        if recurrent is not None:
            lstms.append((controller_weight, bias, self.controller_units))
        if baseline is not None:
            lstms.append((torch.cat(baseline_rows, 0), base_bias, self.baseline_units))
        for gate, slot in ((0, 0), (1, 1), (3, 2)):
            for weight, b, n in lstms:
                sigmoid_columns[slot].append((weight[:, gate * n : (gate + 1) * n], b[gate * n : (gate + 1) * n]))
        for weight, b, n in lstms:
            tanh_columns.append((weight[:, 2 * n : 3 * n], b[2 * n : 3 * n]))
        if recurrent is None:
            tanh_columns.append((controller_weight, bias))
        columns = [pair for group in sigmoid_columns for pair in group] + tanh_columns
        weight = torch.cat([w for w, _ in columns], 1)
        bias = torch.cat([b for _, b in columns], 0)
        # The one-hot part is a sum of table rows, one per window cell and one per previous
        # decision; the bias joins the rows of the first decision, of which every sum has one.
        fixed_rows = self.onehot_width
        first_decision = cells * NUM_SYMBOLS
        self.table = torch.cat(
            [weight[:first_decision], weight[first_decision : first_decision + 4] + bias, weight[first_decision + 4 : fixed_rows]]
        )
        self.weight = weight[fixed_rows:]
        # Controller and baseline LSTM of the same size: rather than one product with zero
        # blocks, a batched product of the two (half the arithmetic), state shaped (2, B, units).
        self.paired = self.lstm and baseline is not None and self.baseline_units == self.controller_units
        if self.paired:
            n = self.controller_units
            blocks = torch.arange(8 * n).view(8, n)
            own, other = blocks[0::2].flatten(), blocks[1::2].flatten()  # (i, f, o, g) of each
            self.table = self.table[:, torch.cat([own, other])]
            reads_rows = cells * width if memory else 0
            rest = self.weight
            controller_part = torch.cat([rest[:reads_rows], rest[2 * reads_rows : 2 * reads_rows + n]])
            baseline_part = torch.cat([rest[reads_rows : 2 * reads_rows], rest[2 * reads_rows + n :]])
            self.weight = torch.stack([controller_part[:, own], baseline_part[:, other]])
        # Gathering one row per window cell and one row for the previous decisions together
        # (of 4 ** decisions combinations) moves less memory than a row per decision.
        table = self.table
        self.symbol_tables = list(table[:first_decision].split(NUM_SYMBOLS))
        combined = table[first_decision : first_decision + 4]
        for d in range(1, decisions):
            rows = table[first_decision + 4 * d : first_decision + 4 * (d + 1)]
            combined = (combined[:, None, :] + rows[None, :, :]).flatten(0, 1)
        self.action_table = combined
        self.action_powers = 4 ** torch.arange(decisions - 1, -1, -1)

        # Output heads used inside the loop, reading the controller's part of the state.
        tau = config.inverse_temperature
        head_w, head_b = [], []
        for weight, b in zip(
            controller.action_head.weight.split(list(controller.action_sizes)),
            controller.action_head.bias.split(list(controller.action_sizes)),
        ):
            if weight.shape[0] == 2:  # the output decision: a third, always infeasible, choice
                weight = torch.cat([weight, weight.new_zeros(1, weight.shape[1])])
                b = torch.cat([b, b.new_zeros(1)])
            head_w.append(weight * tau)
            head_b.append(b * tau)
        if memory:
            head_w.append(_tensor(controller, "keep_head.weight"))
            head_b.append(_tensor(controller, "keep_head.bias"))
            if isinstance(controller, DirectAccessController):
                head_w.append(controller.gate_head.weight[:3])
                head_b.append(controller.gate_head.bias[:3])
            head_w.append(_tensor(controller, "value_head.weight"))
            head_b.append(_tensor(controller, "value_head.bias"))
        heads = torch.cat(head_w, 0).T
        if self.lstm and baseline is not None and not self.paired:
            heads = torch.cat([heads, heads.new_zeros(self.baseline_units, heads.shape[1])])
        self.heads_weight = heads
        self.heads_bias = torch.cat(head_b)
        self.head_sizes = [self.actions] + ([width + (3 if self.direct else 0), width] if memory else [])

    def initial_state(self, batch: Batch, size: int, dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(h, c) of every LSTM unit before the first step (``None`` without any)."""
        if not self.lstm_units:
            return None, None
        h, c = [], []
        if self.lstm:
            start = torch.full((size, self.controller_units), self.initial, dtype=dtype)
            h.append(start)
            c.append(start)
        if self.baseline is not None:
            summary_h, summary_c = self.baseline.read_tape(batch.input, batch.input_len, dtype)
            h.append(summary_h)
            c.append(summary_c)
        if self.paired:
            return torch.stack(h), torch.stack(c)
        return torch.cat(h, 1), torch.cat(c, 1)

    def step(
        self, symbols: torch.Tensor, previous: torch.Tensor, reads: torch.Tensor | None, h: torch.Tensor | None, c: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """One step of every unit: ``(h, c, controller output, baseline LSTM output)``.

        The controller output is what the heads read: the whole LSTM state for LSTM controllers
        unless paired (the heads ignore the baseline's part). The baseline LSTM's output is
        ``None`` when it is part of the controller output.

        Arguments:
            symbols: (B, window cells) long, the symbols read.
            previous: (B,) long, the previous decisions as one index, ``sum_d a_d 4 ** (D - 1 - d)``.
            reads: (B, window cells * width), the memory cells read (``None`` without memory).
            h, c: the LSTM state (``None`` without LSTM units).
        """
        z = self.action_table.index_select(0, previous)
        for cell, table in enumerate(self.symbol_tables):
            z = z + table.index_select(0, symbols[:, cell])
        if self.paired:
            assert h is not None and c is not None
            n = self.controller_units
            if reads is not None:
                h = torch.cat([torch.stack([reads, reads.detach()]), h], 2)
            z = torch.baddbmm(z.view(-1, 2, 4 * n).transpose(0, 1), h, self.weight)
            gates, candidates = z.split([3 * n, n], 2)
            input_gate, forget_gate, output_gate = gates.sigmoid().chunk(3, 2)
            c = torch.addcmul(forget_gate * c, input_gate, candidates.tanh())
            h = output_gate * c.tanh()
            controller_h, baseline_h = h.unbind(0)
            return h, c, controller_h, baseline_h
        parts = []
        if reads is not None:
            parts.append(reads)
            if self.baseline is not None:
                parts.append(reads.detach())
        if h is not None:
            parts.append(h)
        if parts:
            z = torch.addmm(z, torch.cat(parts, 1) if len(parts) > 1 else parts[0], self.weight)
        n = self.lstm_units
        if not n:
            return None, None, z.tanh(), None
        gates, rest = z.split([3 * n, z.shape[1] - 3 * n], 1)
        input_gate, forget_gate, output_gate = gates.sigmoid().chunk(3, 1)
        if self.lstm:
            c = torch.addcmul(forget_gate * c, input_gate, rest.tanh())
            h = output_gate * c.tanh()
            return h, c, h, None
        candidates, units = rest.tanh().split([n, rest.shape[1] - n], 1)
        c = torch.addcmul(forget_gate * c, input_gate, candidates)
        h = output_gate * c.tanh()
        return h, c, units, (h if self.baseline is not None else None)

    def heads(self, output: torch.Tensor) -> torch.Tensor:
        """Decision logits (3 per decision) and, with memory, the write's pre-activations."""
        return torch.addmm(self.heads_bias, output, self.heads_weight)

    def memory_write(
        self,
        heads: tuple[torch.Tensor, ...],
        old: torch.Tensor,
        neighbours: torch.Tensor | None,
        symbol: torch.Tensor,
        onehots: torch.Tensor | None,
    ) -> torch.Tensor:
        """The new value of the current cell (see :meth:`Controller.memory_write`).

        Arguments:
            heads: the heads' outputs, split as :attr:`head_sizes` says.
            old: (B, width), the current cell.
            neighbours: (B, 2, width), the left and right cells (direct access only).
            symbol: (B,) long, the symbol under the input head.
            onehots: the identity matrix of the symbols (direct access only).
        """
        width = self.width
        if self.direct:
            keep, gates = heads[1].sigmoid().split([width, 3], 1)
        else:
            keep = heads[1].sigmoid()
        value = heads[2].tanh()
        new = torch.addcmul(value, keep, old)
        if self.direct:
            assert onehots is not None and neighbours is not None
            # Gated one-hot input symbol, left and right neighbours.
            added = torch.cat([onehots[symbol][:, None], neighbours], 1)
            new = new + (gates[:, :, None] * added).sum(1)
        return new

    def controller_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The controller's part of the recorded outputs (B, T, hidden_size)."""
        return hidden[..., : self.controller_units] if self.lstm and self.baseline is not None and not self.paired else hidden


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    """A parameter by its dotted name (typed: attribute access on a module is not)."""
    value = module.get_parameter(name)
    assert isinstance(value, torch.Tensor)
    return value


def _input_rows(
    weight: torch.Tensor, symbols: torch.Tensor, actions: list[torch.Tensor], cells: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A first layer's weights (units, input_size) seen from a one-hot input and the memory reads.

    Returns the rows for the one-hot part (each window cell's symbol, then each previous
    decision: the embedding tables mapped through the weights) and the rows for the memory cells.
    """
    units = weight.shape[0]
    e = symbols.shape[1]
    symbol_rows = torch.einsum("se,uje->jsu", symbols, weight[:, : cells * e].reshape(units, cells, e))
    rows = [symbol_rows.reshape(cells * NUM_SYMBOLS, units)]
    column = cells * e + cells * width
    for table in actions:
        rows.append(table @ weight[:, column : column + e].T)
        column += e
    return torch.cat(rows, 0), weight[:, cells * e : cells * e + cells * width].T
