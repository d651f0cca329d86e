"""The fast step loop: :meth:`RLNTM.run_episode <rlntm_demo.model.RLNTM.run_episode>` with
``step_impl="fast"``, arranged to run few operations per step.

The maths is that of :mod:`rlntm_demo.reference`, the readable step that defines the model
(``tests/rlntm_demo/test_reference.py`` holds the two equal in float64, for every controller and
option); this module arranges it so that a step costs few operations, since at the sizes of the
paper a step costs the number of operations, not their arithmetic:

* the embedding tables are mapped through the first layer once per episode, so the input part of
  a step is one gathered row of a table of (previous decisions, centre symbol) combinations
  (plus one per other window cell); the memory cells read and the LSTM states (the controller's
  and the baseline LSTM's, see below) go through a matrix product each (:class:`_StepPlan`);
* a step is one node of the autograd graph (:mod:`rlntm_demo.fast.fused`, in C++ with
  :mod:`rlntm_demo.fast.native`): the controller, the decision heads, the probabilities and the
  memory write are computed without recording, and backward is written by hand; the memory
  touches only the cells read and written, forward and backward;
* the head positions are rows of flat per-episode tables, so reading, masking infeasible
  decisions (an additive mask of 0 and ``-inf``, one gathered row) and moving are a few gathers;
* what the loop does not need (the prediction head, rewards, log-probabilities, baselines) is
  computed after it, for all steps at once, from the recorded states; the prediction head runs
  only at the predicting steps, as one node (:func:`~rlntm_demo.fast.fused.predict`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import BLANK, NUM_SYMBOLS, ModelConfig
from ..controllers import (START, Controller, DirectAccessController, LSTMController, OfflineBaseline,
                           WindowedDirectAccessController)
from ..interfaces import OUTPUT_PREDICT, STAY
from ..model import OUTPUT, Rollout, sample_decisions
from . import fused

if TYPE_CHECKING:
    from ..model import RLNTM
    from ..tasks import Batch

__all__ = ["run_episode"]


def run_episode(model: RLNTM, batch: Batch, *, greedy: bool = False, all_steps: bool = False,
                memory_cells: int | None = None) -> Rollout:
    """The episode of :meth:`RLNTM.run_episode <rlntm_demo.model.RLNTM.run_episode>` (same
    arguments), computed the fast way."""
    config = model.config
    controller = model.controller
    spec = config.interfaces
    dtype = controller.action_head.weight.dtype
    size = batch.batch_size
    window = config.read_window
    window_cells = 2 * window + 1
    direct = isinstance(controller, DirectAccessController)
    memory = spec.memory
    plan = _StepPlan(controller, model.baseline if model.fuses_baseline else None, config)
    decisions = 3 if memory else 2
    rows = torch.arange(size)

    # The head positions are kept as rows of flat per-episode tables, so that a step reads,
    # masks and moves with a few gathers. Input tape: ``window`` blank cells on each side and
    # blanks past each row's end, flattened; ``input_at`` is the row of the head's cell.
    tape_width = batch.input.shape[1]
    padded_width = tape_width + 2 * window
    # A circular input (``config.circular_input``) holds, in the same layout, the symbol of
    # each cell index modulo the row's input length; its moves wrap through a table.
    wraps = config.circular_input and not spec.forward_only_input
    if wraps:
        padded = batch.input.gather(1, (torch.arange(padded_width) - window)[None, :] % batch.input_len[:, None])
    else:
        inside = torch.arange(tape_width)[None, :] < batch.input_len[:, None]
        padded = torch.full((size, padded_width), BLANK, dtype=torch.long)
        padded[:, window : window + tape_width] = torch.where(inside, batch.input, BLANK)
    padded = padded.view(-1)
    input_origin = rows * padded_width + window
    # Feasibility of the decisions, as a code per row: 4 * (input left ok + 2 * input right
    # ok) + 2 * live + (output may stay before the forced predictions), and one additive mask
    # row (0 or -inf) per code. The input part is a table over the input cells; the output
    # part a table over (step, row, output position), where the rule "predict when the
    # targets left equal the steps left" says: stay is feasible at step t iff
    # position > t + target_len - steps. Finished rows may only stay.
    head = torch.arange(padded_width) - window
    input_move_table = None
    if wraps:
        left_ok = right_ok = torch.ones(size, padded_width, dtype=torch.bool)
        moved = (head[None, :, None] + torch.arange(-1, 2)) % batch.input_len[:, None, None]
        input_move_table = (input_origin[:, None, None] + moved).view(-1)
    else:
        left_ok = (head > 0)[None, :] & (not spec.forward_only_input)
        right_ok = head[None, :] < (batch.input_len - 1)[:, None]
    input_code = (4 * (left_ok.long() + 2 * right_ok.long())).view(-1)
    target_len = batch.target_len
    positions = int(target_len.max()) + 1
    output_origin = rows * positions
    output_end = output_origin + target_len
    steps_bound = int(batch.steps.max())
    stay_after = output_origin + target_len - batch.steps
    mask_table = _mask_table(decisions, dtype)  # cached: never modified

    cells = config.memory_cells if memory_cells is None else memory_cells
    memory_at = read_table = move_table = None
    if memory:
        memory_at = rows * cells
        read_table, move_table = _memory_tables(size, cells, window, direct)
    episode = fused.new_episode(
        size=size,
        dtype=dtype,
        units=plan.lstm_units,
        controller_units=plan.controller_units if plan.lstm else 0,
        decisions=decisions,
        window=window,
        memory_cells=cells if memory else 0,
        width=config.memory_width,
        direct=direct,
        window_write=isinstance(controller, WindowedDirectAccessController),
        grad=torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters()),
        want_windows=plan.baseline_after_episode,
        memory_start_marker=config.memory_start_marker,
    )
    h, c = plan.initial_state(batch, size, dtype)
    token = fused.start(episode, h, c, *plan.weights())

    # The previous decisions and the centre symbol index one row of a combined table:
    # 35 * sum_d a_d 4 ** (D - 1 - d) + symbol (START for every decision at the first step).
    powers = NUM_SYMBOLS * 4 ** torch.arange(decisions - 1, -1, -1)
    episode.set_course(
        padded, input_origin, input_code, input_move_table, output_origin, output_end, stay_after, mask_table,
        (START * powers).sum().expand(size).contiguous(), powers,
        torch.tensor([k for k in range(window_cells) if k != window], dtype=torch.long),
        memory_at, read_table, move_table,
    )
    finished = episode.finished()
    step_probs = []
    for t in range(steps_bound):
        if finished and not all_steps:
            break
        token, probs = episode.step(token, t)
        step_probs.append(probs)
        finished = episode.advance(episode.last_logits().argmax(-1) if greedy else sample_decisions(probs))

    chosen_log_probs, outputs, baseline_states, written, memory_windows = fused.finish(episode, token)
    assert chosen_log_probs is not None and outputs is not None
    actions, live, symbols, input_at, output_at, memory_at = episode.stacked_records()
    assert actions is not None and live is not None and symbols is not None and input_at is not None and output_at is not None
    stacked = {"actions": actions, "mask": live, "symbols": symbols, "input_heads": input_at - input_origin[:, None],
               "output_positions": output_at - output_origin[:, None]}
    if memory_at is not None:
        stacked["memory_heads"] = memory_at % cells
    rollout = _finish(model, batch, plan, stacked, chosen_log_probs, outputs, baseline_states, written, memory_windows, greedy)
    rollout.decision_probs = torch.stack(step_probs, 1)
    return rollout



def _finish(
    model: RLNTM,
    batch: Batch,
    plan: _StepPlan,
    record: dict[str, torch.Tensor],
    chosen_log_probs: torch.Tensor,
    hidden: torch.Tensor,
    baseline_states: torch.Tensor | None,
    cells: torch.Tensor | None,
    memory_windows: torch.Tensor | None,
    greedy: bool,
) -> Rollout:
    """Everything that need not be inside the step loop, computed for all steps at once:
    predictions, rewards and baselines (the decisions' log-probabilities come from the
    finish node)."""
    controller = model.controller
    size = batch.batch_size
    mask = record["mask"]
    chosen = record["actions"]  # (B, T, D), with chosen_log_probs (B, T, D) from the finish node
    steps = mask.shape[1]
    if chosen.shape[2] == 2:  # no memory: the memory "decision" is a forced stay
        stay = torch.full((size, steps, 1), STAY, dtype=torch.long)
        chosen = torch.cat([chosen[..., :1], stay, chosen[..., 1:]], 2)
        chosen_log_probs = torch.cat(
            [chosen_log_probs[..., :1], torch.zeros_like(chosen_log_probs[..., :1]), chosen_log_probs[..., 1:]], 2
        )
    symbols = record["symbols"]
    centre = symbols[..., model.config.read_window] if symbols.dim() == 3 else symbols
    # The prediction head runs only where a prediction is made (about half the steps): the
    # reward there is the target's log-probability, 0 elsewhere.
    predicting = chosen[..., OUTPUT] == OUTPUT_PREDICT
    rows = predicting.flatten().nonzero().squeeze(1)
    positions = record["output_positions"]
    index = positions.clamp(max=batch.target.shape[1] - 1)
    targets = torch.where(positions >= batch.target_len[:, None], BLANK, batch.target.gather(1, index))
    target_rows = targets.reshape(-1).index_select(0, rows)
    if isinstance(controller, WindowedDirectAccessController):
        # The window's shortcuts are no single linear map: the controller's own prediction,
        # over the predicting steps at once.
        windows = symbols if symbols.dim() == 3 else symbols[..., None]
        window_cells = None if cells is None else cells.flatten(0, 1).index_select(0, rows).view(len(rows), controller.window, -1)
        logits = controller.window_prediction_logits(
            hidden.flatten(0, 1).index_select(0, rows), windows.flatten(0, 1).index_select(0, rows), window_cells)
        rewards, predictions = fused.rewards_and_predictions(logits, rows, target_rows, size, steps)
    else:
        weight, bias, gates, scales = controller.prediction_weights()
        rewards, predictions = fused.predict(
            hidden, cells, centre.reshape(-1).index_select(0, rows), rows, target_rows, weight, bias, gates, scales)

    baselines = torch.zeros(mask.shape, dtype=rewards.dtype)
    if model.config.online_baseline:
        baselines = baselines + model._online_values(steps, greedy).to(rewards.dtype)
    if model.baseline is not None:
        if plan.baseline_after_episode:
            windows = symbols if symbols.dim() == 3 else symbols[..., None]
            baselines = baselines + model._baseline_after_episode(batch, windows, memory_windows, chosen)
        else:
            assert baseline_states is not None
            baselines = baselines + model.baseline.head(baseline_states).squeeze(-1)
    return Rollout(
        actions=chosen,
        log_probs=chosen_log_probs,
        rewards=rewards,
        mask=mask,
        baselines=baselines * mask,
        input_heads=record["input_heads"],
        memory_heads=record.get("memory_heads"),
        output_positions=positions,
        predictions=predictions,
    )


@functools.cache
def _mask_table(decisions: int, dtype: torch.dtype) -> torch.Tensor:
    """(16, decisions * 3) additive masks (0 feasible, -inf not) by feasibility code:
    ``4 * (input left ok + 2 * input right ok) + 2 * live + output may stay``."""
    code = torch.arange(16)
    left, right, live, stay = (code >> 2) & 1, (code >> 3) & 1, (code >> 1) & 1, code & 1
    live, stay = live.bool(), stay.bool()
    always = torch.ones(16, dtype=torch.bool)
    columns = [left.bool() & live, always, right.bool() & live]
    if decisions == 3:
        columns += [live, always, live]
    columns += [stay | ~live, live, ~always]
    feasible = torch.stack(columns, 1)
    return torch.zeros(feasible.shape, dtype=dtype).masked_fill(~feasible, float("-inf"))


class _StepPlan:
    """The weights of one step, rearranged once per episode so that a step costs few operations.

    The controller's input x_t is a concatenation of embeddings and memory cells, and every
    embedding only ever meets the first layer's weights. So the embedding tables are mapped
    through those weights once per episode (one product with a block-diagonal matrix of the
    tables, whose identity block for the memory cells passes their weights through), and a step
    multiplies a one-hot vector of the symbols read and the previous decisions by the mapped tables
    instead. The memory cells read and the recurrent state are two more products.

    With the baseline LSTM (fused: :attr:`RLNTM.fuses_baseline`), its tandem part runs in the same products,
    side by side with the controller: the baseline reads the one-hot part through tables built
    from *detached* embeddings, the memory cells through its own weights (the loop sends the
    cells' gradient through the controller's columns only, so the baseline reads them
    *detached*), and its own state (a recurrent block of its own), so no gradient crosses from one
    to the other. The pre-reader runs before the episode and gives the tandem part its initial
    state.

    Column layout of the products: the controller's LSTM (an LSTM controller), the baseline LSTM,
    each in torch's gate order (input, forget, candidate, output), then the controller's
    feed-forward units (other controllers). Rows of the one-hot part: every window cell's
    symbols (:attr:`symbol_table`), then every combination of the previous decisions
    (:attr:`action_table`, one row per combination, the bias included).

    The output heads the loop needs (decision logits, times the inverse temperature, and the
    memory write) are one more product. The prediction head waits until after the episode.
    :meth:`weights` hands all of them to :func:`rlntm_demo.fast.fused.start`.
    """

    def __init__(self, controller: Controller, baseline: OfflineBaseline | None, config: ModelConfig) -> None:
        memory = config.interfaces.memory
        width = config.memory_width if memory else 0
        cells = 2 * config.read_window + 1
        decisions = 3 if memory else 2
        self.controller = controller
        self.baseline = baseline
        self.baseline_after_episode = baseline is None and config.offline_baseline
        self.memory = memory
        self.direct = isinstance(controller, DirectAccessController)
        self.lstm = isinstance(controller, LSTMController)
        self.initial = config.initial_state
        self.controller_units = config.hidden_size
        self.baseline_units = baseline.tandem.hidden_size if baseline is not None else 0
        self.lstm_units = (self.controller_units if self.lstm else 0) + self.baseline_units

        # The rows a one-hot input meets, in the input's order: each window cell's symbol
        # embedding, the memory cells (an identity: their rows are the weights themselves), each
        # previous decision's embedding.
        actions = [controller.input_move_embedding.weight]
        if memory:
            actions.append(controller.memory_move_embedding.weight)
        actions.append(controller.output_embedding.weight)
        symbols = controller.symbol_embedding.weight
        blocks = [symbols] * cells + ([_identity(cells * width, symbols.dtype)] if memory else []) + actions
        inputs = torch.block_diag(*blocks)

        # Side by side, in the layout above: (rows, first layer's weight, bias) of each part. The
        # baseline's one-hot rows come from detached embeddings: its loss must not train them.
        parts = []
        controller_recurrent = baseline_recurrent = None
        if isinstance(controller, LSTMController):
            cell = controller.cell
            parts.append((inputs, cell.weight_ih, cell.bias_ih + cell.bias_hh))
            controller_recurrent = cell.weight_hh.T
        if baseline is not None:
            base_bias = _tensor(baseline, "tandem.bias_ih_l0") + _tensor(baseline, "tandem.bias_hh_l0")
            parts.append((inputs.detach(), _tensor(baseline, "tandem.weight_ih_l0"), base_bias))
            baseline_recurrent = _tensor(baseline, "tandem.weight_hh_l0").T
        if controller_recurrent is None:
            parts.append((inputs, _tensor(controller, "layer.weight"), _tensor(controller, "layer.bias")))
        rows = torch.cat([rows_in @ weight.T for rows_in, weight, _ in parts], 1)
        bias = torch.cat([part_bias for _, _, part_bias in parts])

        symbol_rows = cells * NUM_SYMBOLS
        reads_rows = cells * width
        self.symbol_table = rows[:symbol_rows]
        self.w_reads = rows[symbol_rows : symbol_rows + reads_rows] if memory else None
        # Every combination of the previous decisions, one row each (a step gathers one row for
        # them together instead of one per decision); the bias joins the first decision's rows,
        # of which every combination has one.
        first_decision = symbol_rows + reads_rows
        combined = rows[first_decision : first_decision + 4] + bias
        for d in range(1, decisions):
            decision_rows = rows[first_decision + 4 * d : first_decision + 4 * (d + 1)]
            combined = (combined[:, None, :] + decision_rows[None, :, :]).flatten(0, 1)
        self.action_table = combined
        self.w_h_controller = controller_recurrent
        self.w_h_baseline = baseline_recurrent

        # Output heads used inside the loop, reading the controller's output: the decision logits
        # times the inverse temperature (the output decision, last, gets a third, always
        # infeasible, choice: a zero row), then the memory write's heads.
        tau = config.inverse_temperature
        action_w, action_b = controller.action_head.weight, controller.action_head.bias
        assert controller.action_sizes[-1] == 2  # the output decision is the last one
        head_w = [action_w * tau, action_w.new_zeros(1, action_w.shape[1])]
        head_b = [action_b * tau, action_b.new_zeros(1)]
        if memory and isinstance(controller, WindowedDirectAccessController):
            # Every window cell's keep gates, the pair gates, every cell's value.
            keep_w, keep_b = controller.offset_weights(controller.keep_head, controller.side_keep_head)
            value_w, value_b = controller.offset_weights(controller.value_head, controller.side_value_head)
            head_w += [keep_w, controller.pair_gate_head.weight, value_w]
            head_b += [keep_b, controller.pair_gate_head.bias, value_b]
        elif memory:
            head_w.append(_tensor(controller, "keep_head.weight"))
            head_b.append(_tensor(controller, "keep_head.bias"))
            if isinstance(controller, DirectAccessController):
                gate_w, gate_b = controller.gate_head.weight, controller.gate_head.bias
                if controller.adjacent:
                    head_w.append(gate_w[:3])
                    head_b.append(gate_b[:3])
                else:
                    # No neighbour paths (adjacent_memory "off"): the loop's two neighbour gates
                    # become constants shut exactly (sigmoid(-inf) = 0, with zero gradient).
                    head_w += [gate_w[:1], gate_w.new_zeros(2, gate_w.shape[1])]
                    head_b += [gate_b[:1], gate_b.new_full((2,), float("-inf"))]
            head_w.append(_tensor(controller, "value_head.weight"))
            head_b.append(_tensor(controller, "value_head.bias"))
        self.heads_weight = torch.cat(head_w, 0).T
        self.heads_bias = torch.cat(head_b)

    def weights(self) -> tuple[torch.Tensor | None, ...]:
        """What :func:`rlntm_demo.fast.fused.start` takes after the initial state: the symbol rows of
        the one-hot table, the previous decisions' combined rows, the memory reads' rows, the
        recurrent blocks (controller's, baseline's), the heads' weight and bias."""
        return (
            self.symbol_table, self.action_table, self.w_reads, self.w_h_controller, self.w_h_baseline,
            self.heads_weight, self.heads_bias,
        )

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
            summary_h, summary_c = fused.read_tape(self.baseline, batch.input, batch.input_len, dtype)
            h.append(summary_h)
            c.append(summary_c)
        return torch.cat(h, 1), torch.cat(c, 1)


@functools.lru_cache(maxsize=32)
def _memory_tables(size: int, cells: int, window: int, direct: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """For the flat memory tapes of ``size`` rows: the cells read from each head position (the
    window, then with direct access the two neighbours the write adds in), and where each move
    takes the head (wrapping around). Cached: they depend on the sizes only, and are never modified."""
    cell = torch.arange(size * cells)
    first = cell - cell % cells
    read_offsets = list(range(-window, window + 1)) + ([-1, 1] if direct else [])
    read_table = first[:, None] + (cell[:, None] + torch.tensor(read_offsets)) % cells
    move_table = (first[:, None] + (cell[:, None] + torch.arange(-1, 2)) % cells).view(-1)
    return read_table, move_table


@functools.cache
def _identity(size: int, dtype: torch.dtype) -> torch.Tensor:
    """An identity matrix (cached: a constant, never modified)."""
    return torch.eye(size, dtype=dtype)


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    """A parameter by its dotted name (typed: attribute access on a module is not)."""
    value = module.get_parameter(name)
    assert isinstance(value, torch.Tensor)
    return value
