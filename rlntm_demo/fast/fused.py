"""The RL-NTM's step loop as custom autograd functions: one graph node per step, backward by hand.

At the sizes of the paper a step of the RL-NTM costs the number of torch operations it runs, not
their arithmetic, and autograd adds its own cost to every operation it records (a node, saved
tensors, and a backward operation or several). So the step loop records only these nodes:

* :class:`_Start`, once per episode: takes every weight the loop uses (as arranged by
  :class:`~rlntm_demo.fast.episode._StepPlan`) and the initial LSTM state, and returns a *token*;
* :class:`_Step`, once per step: the controller (LSTM cell or tanh layer, the baseline LSTM's
  tandem part alongside), the decision logits and probabilities, and the memory write, computed
  with gradient recording off; takes the previous token and returns a new one and the
  probabilities (what ``torch.multinomial`` samples from, and what an exact check differentiates);
* :class:`_Finish`, once per episode: returns everything the loss needs from every step (the
  log-probabilities of the decisions taken, controller outputs, baseline LSTM states, written
  cells), stacked.

The tokens chain the nodes, so backward visits them in exactly the reverse order: ``_Finish``,
the steps from last to first, ``_Start``. A token carries no values; its gradient is the gradient
with respect to the loop's state after that step: the LSTM's ``h`` and ``c``, and the whole memory
tape, in one flat buffer that each step's
backward updates in place and hands on. The gradients with respect to the weights are accumulated
by the steps' backward into buffers of the pass (the decision logits' part, which does not depend
on the recursion, in one product over all steps), and ``_Start``'s backward, which autograd runs
after every step's, returns them. What the steps share lives in one :class:`Episode` object; it
keeps what backward needs until the graph is freed (so a graph may be differentiated twice, with
``retain_graph``, as the exact check does).

The episode also keeps the heads' course (:meth:`Episode.set_course`): the tables built by
:meth:`~rlntm_demo.model.RLNTM.run_episode`, from which :meth:`Episode.step` finds what each row
reads and may decide, and :meth:`Episode.advance` records the sampled decisions and moves the heads;
between the two, the model samples with ``torch.multinomial``. :func:`new_episode` returns the C++
twin of this class where :mod:`rlntm_demo.fast.native` is built: the same methods and values (up to
rounding), without Python inside a step or its backward pass.

The maths is that of :mod:`rlntm_demo.reference` (the controller's per-step methods and
:class:`~rlntm_demo.interfaces.MemoryTape`); ``tests/rlntm_demo/test_reference.py`` compares values
and gradients (of every output, the probabilities included) with it in float64, and the exact
check compares the whole model's gradient with the exact one. Nothing is saved for a second
differentiation (``create_graph`` raises).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from . import native
from ..config import NUM_SYMBOLS

__all__ = ["Episode", "argmax_last", "finish", "new_episode", "predict", "read_tape", "rewards_and_predictions", "start"]

_sigmoid_backward = torch.ops.aten.sigmoid_backward
_tanh_backward = torch.ops.aten.tanh_backward


class Episode:
    """The state of one batch of episodes in the fused loop: weights, tapes, saved values.

    Column layout of the pre-activations ``z`` (width ``G``): the sigmoid gates (input, forget,
    output) of the ``units`` LSTM units, then the tanh part: the LSTM candidates, then (for a
    feed-forward controller) the controller's units. The first ``controller_units`` LSTM units are
    the controller's (LSTM controllers), the others the baseline LSTM's. ``z`` is the sum of rows of
    the tables (one per window cell and one for the previous decisions), of the memory cells read
    times ``w_reads`` and of the previous ``h`` times ``w_h``.

    Head layout (width ``H``): the decision logits (3 per decision, already scaled), then with
    memory the keep gate of the write (``width``), the three direct-access gates of the write
    (direct access only) and the written value (``width``); with ``window_write``, the keep gates
    of every window cell (``n * width``, offsets ``-k .. k``), the ``2 n^2`` pair gates (memory
    offset major, then input offset, then ``p, p2``) and every cell's value (``n * width``).

    Arguments:
        size: rows of the batch.
        dtype: the dtype of the values.
        units: LSTM units (controller's and baseline LSTM's together; 0 for none).
        controller_units: how many of them are the controller's (0 unless an LSTM controller).
        decisions: 3 with memory, else 2.
        window: the read window's half width k (``2k + 1`` cells read on each tape).
        memory_cells, width: the memory tape (``memory_cells`` 0 for none).
        direct: the direct-access write (gated one-hot symbol and neighbour cells).
        window_write: the authors' direct access instead
            (:class:`~rlntm_demo.controllers.WindowedDirectAccessController`): every cell of the
            memory window written, then the pair gates add the window's one-hot symbols; the C++
            loop does not have it (:func:`new_episode` returns this class for it).
        grad: save what backward needs.
        want_windows: :meth:`stacked` also returns the memory windows read (for a baseline LSTM
            run after the episode: :attr:`~rlntm_demo.model.RLNTM.fuses_baseline`).
        memory_start_marker: each row's first memory cell, where its head starts, holds ones
            (:attr:`~rlntm_demo.config.ModelConfig.memory_start_marker`).
    """

    def __init__(
        self,
        *,
        size: int,
        dtype: torch.dtype,
        units: int,
        controller_units: int,
        decisions: int,
        window: int,
        memory_cells: int,
        width: int,
        direct: bool,
        grad: bool,
        want_windows: bool = False,
        memory_start_marker: bool = False,
        window_write: bool = False,
    ) -> None:
        self.size = size
        self.dtype = dtype
        self.units = units
        self.controller_units = controller_units
        self.decisions = decisions
        self.window_cells = 2 * window + 1
        self.centre = window
        self.memory = memory_cells > 0
        self.cells = memory_cells
        self.width = width if self.memory else 0
        self.direct = direct and self.memory
        self.window_write = window_write and self.memory
        if self.window_write and memory_cells < self.window_cells:
            raise ValueError(f"the window write needs the {self.window_cells} cells of the read window to be distinct: "
                             f"memory_cells must be at least {self.window_cells}, not {memory_cells}")
        self.reads = self.window_cells + (2 if self.direct else 0)
        self.grad = grad
        self.want_windows = want_windows
        self.tape = torch.zeros(size * memory_cells, self.width, dtype=dtype) if self.memory else None
        if self.tape is not None and memory_start_marker:
            self.tape.view(size, memory_cells, self.width)[:, 0] = 1.0
        self.token_size = 2 * size * units + size * memory_cells * self.width
        # Values of every step, in step order: outputs, and what backward needs.
        self.logits: list[torch.Tensor] = []
        self.hs: list[torch.Tensor] = []
        self.cs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []  # feed-forward controllers only (else in hs)
        self.written: list[torch.Tensor] = []
        self.reads_list: list[torch.Tensor] = []
        self.saved: list[tuple[Any, ...]] = []
        self.window_states: list[torch.Tensor] = []  # window write: each step's window before each input offset
        # One backward pass: the gradients that do not depend on the recursion (from _Finish's
        # outputs), and the weight gradients the steps' backward accumulates.
        self.external: list[tuple[torch.Tensor | None, ...]] = []
        self._grad_token: torch.Tensor | None = None
        self._grad_views: tuple[Any, ...] = ()
        self.grad_logits: torch.Tensor | None = None
        self.accumulators: dict[str, torch.Tensor] | None = None

    def last_logits(self) -> torch.Tensor:
        """The masked decision logits (B, D, 3) of the latest step."""
        return self.logits[-1]

    def token(self) -> torch.Tensor:
        # Only the token's shape matters (its gradient is the loop's state); no memory is allocated.
        return torch.zeros((), dtype=self.dtype).expand(self.token_size)

    # -- forward ---------------------------------------------------------------------------

    def begin(self, h0, c0, table, action_table, w_reads, w_h_controller, w_h_baseline, heads_w, heads_b) -> None:  # type: ignore[no-untyped-def]
        """Keep the weights and the initial state, and build the lookup tables.

        The weights' columns come in the plan's order (each LSTM in torch's gate order, see
        :class:`~rlntm_demo.fast.episode._StepPlan`); this loop regroups them by gate (the layout above)
        and :meth:`backward_start` maps the gradients back."""
        columns = action_table.shape[1]
        order = _gate_major_order(self.units, self.controller_units, columns)
        self.inverse = torch.argsort(order)
        table = table.index_select(1, order)
        action_table = action_table.index_select(1, order)
        self.table = table
        centre_rows = table[self.centre * NUM_SYMBOLS : (self.centre + 1) * NUM_SYMBOLS]
        # The previous decisions' rows plus the centre cell's symbol rows, every combination: one
        # gathered row per step instead of two and a sum.
        self.combined = (action_table[:, None, :] + centre_rows[None, :, :]).flatten(0, 1)
        self.action_rows = action_table.shape[0]
        self.w_reads = None if w_reads is None else w_reads.index_select(1, order)
        controller_columns = torch.zeros(columns, dtype=table.dtype)
        if self.controller_units:
            controller_columns[: 4 * self.controller_units] = 1
        else:
            controller_columns[4 * self.units :] = 1
        # The cells read get their gradient through the controller's columns only.
        self.w_reads_controller = None if self.w_reads is None else self.w_reads * controller_columns[order]
        self.w_h = None
        if self.units:
            # One matrix with a block per LSTM (zeros between them).
            w_h = table.new_zeros(self.units, columns)
            for offset, n, block in self._recurrent_parts(w_h_controller, w_h_baseline):
                w_h[offset : offset + n, 4 * offset : 4 * (offset + n)] = block
            self.w_h = w_h.index_select(1, order)
        self.heads_w = heads_w
        self.heads_b = heads_b
        logit_columns = 3 * self.decisions
        self.heads_w_logits_t = heads_w[:, :logit_columns].t().contiguous()
        self.heads_w_memory_t = heads_w[:, logit_columns:].t().contiguous()
        self.w_h_t = self.w_h.t().contiguous() if self.w_h is not None else None
        self.w_reads_controller_t = self.w_reads_controller.t().contiguous() if self.w_reads_controller is not None else None
        self.z_split = [3 * self.units, self.combined.shape[1] - 3 * self.units]
        n = self.window_cells
        if self.window_write:
            self.head_split = [logit_columns, n * self.width + 2 * n * n, n * self.width]
        else:
            self.head_split = [logit_columns, self.width + (3 if self.direct else 0), self.width]
        self.h = h0
        self.c = c0
        self.hs.append(h0)
        self.cs.append(c0)

    def _recurrent_parts(self, controller: Any, baseline: Any) -> list[tuple[int, int, Any]]:
        """(offset, units, its item) of each LSTM in the state: the controller's (an LSTM
        controller) with ``controller``, then the baseline's with ``baseline``."""
        parts = []
        if self.controller_units:
            parts.append((0, self.controller_units, controller))
        if self.units > self.controller_units:
            parts.append((self.controller_units, self.units - self.controller_units, baseline))
        return parts

    # -- the course: where the heads are, what they read, what may be decided -------------

    def set_course(
        self,
        padded: torch.Tensor,
        input_at: torch.Tensor,
        input_code: torch.Tensor,
        input_moves: torch.Tensor | None,
        output_at: torch.Tensor,
        output_end: torch.Tensor,
        stay_after: torch.Tensor,
        mask_table: torch.Tensor,
        previous: torch.Tensor,
        powers: torch.Tensor,
        other_cells: torch.Tensor,
        memory_at: torch.Tensor | None,
        read_table: torch.Tensor | None,
        memory_moves: torch.Tensor | None,
    ) -> None:
        """The tables of the episode's heads (built by :meth:`rlntm_demo.model.RLNTM.run_episode`)
        and their first positions; every argument is a long tensor but ``mask_table``.

        Arguments:
            padded: the input tapes, flat, ``window`` blank cells on each side of each row.
            input_at: (B,) the flat cell of each input head.
            input_code: the input part of each cell's feasibility code.
            input_moves: (cells * 3,) where each input move takes a circular head, or ``None``
                (the head moves by the decision minus one).
            output_at, output_end: (B,) the flat output position and the end of each row's targets.
            stay_after: (B,) the flat output position past which the output head may stay at the
                first step (one more at each step after it: a row must predict once its targets
                left equal its steps left).
            mask_table: (16, decisions * 3) the additive mask of each code.
            previous: (B,) the previous decisions' row of the combined table.
            powers: (decisions,) what each decision adds to that row.
            other_cells: the window cells other than the centre.
            memory_at: (B,) the flat memory cell of each head (``None`` without memory).
            read_table: (memory cells, reads) the cells read from each head position.
            memory_moves: (memory cells * 3,) where each memory move takes the head.
        """
        self.padded, self.input_at, self.input_code, self.input_moves = padded, input_at, input_code, input_moves
        self.output_at, self.output_end, self.stay_after, self.mask_table = output_at, output_end, stay_after, mask_table
        self.previous, self.powers = previous, powers
        self.other_cells = other_cells
        self.other_rows = other_cells * NUM_SYMBOLS
        self.window_offsets = torch.arange(-self.centre, self.centre + 1)
        self.memory_at, self.read_table, self.memory_moves = memory_at, read_table, memory_moves
        self.live = output_at < output_end
        self.records: dict[str, list[torch.Tensor]] = {k: [] for k in ("actions", "mask", "symbols", "input_at", "output_at", "memory_at")}

    def finished(self) -> bool:
        """Whether every row's episode is over."""
        return not bool(self.live.any())

    def step(self, token: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``t`` from the heads' positions, recorded as one graph node: ``(token, probabilities)``."""
        size, window = self.size, self.centre
        if window:
            cells = (self.input_at[:, None] + self.window_offsets).view(-1)
            symbols = self.padded.index_select(0, cells).view(size, self.window_cells)
            centre = symbols[:, window]
            extra = (symbols.index_select(1, self.other_cells) + self.other_rows).view(-1)
        else:
            symbols = centre = self.padded.index_select(0, self.input_at)
            extra = None
        code = self.input_code.index_select(0, self.input_at) + 2 * self.live + (self.output_at > self.stay_after + t)
        mask = self.mask_table.index_select(0, code).view(size, self.decisions, 3)
        read_rows = None
        if self.read_table is not None:
            assert self.memory_at is not None
            read_rows = self.read_table.index_select(0, self.memory_at).view(-1)
        self.symbols = symbols
        written_symbols = symbols.view(size, -1) if self.window_write else centre[:, None]
        return _Step.apply(token, self, t, self.previous + centre, extra, mask, self.live[:, None], written_symbols, self.memory_at, read_rows)

    def advance(self, actions: torch.Tensor) -> bool:
        """Record the step's decisions (B, D) and move the heads; returns :meth:`finished`."""
        record = self.records
        record["actions"].append(actions)
        record["mask"].append(self.live)
        record["symbols"].append(self.symbols)
        record["input_at"].append(self.input_at)
        record["output_at"].append(self.output_at)
        if self.input_moves is None:
            self.input_at = self.input_at + actions[:, 0] - 1
        else:
            self.input_at = self.input_moves.index_select(0, torch.add(actions[:, 0], self.input_at, alpha=3))
        self.output_at = self.output_at + actions[:, -1]
        if self.memory_moves is not None:
            assert self.memory_at is not None
            record["memory_at"].append(self.memory_at)
            self.memory_at = self.memory_moves.index_select(0, torch.add(actions[:, 1], self.memory_at, alpha=3))
        self.previous = (actions * self.powers).sum(1)
        self.live = self.output_at < self.output_end
        return self.finished()

    def stacked_records(self) -> tuple[torch.Tensor | None, ...]:
        """Every step's decisions (B, T, D), live rows (B, T), symbols read (B, T[, window cells])
        and flat head positions: input (B, T), output (B, T), memory (B, T; ``None`` without)."""
        record = self.records
        return tuple(torch.stack(record[k], 1) if record[k] else None for k in ("actions", "mask", "symbols", "input_at", "output_at", "memory_at"))

    def forward_step(
        self,
        table_index: torch.Tensor,
        extra_index: torch.Tensor | None,
        mask: torch.Tensor,
        live: torch.Tensor,
        symbol: torch.Tensor,
        write_row: torch.Tensor | None,
        read_rows: torch.Tensor | None,
    ) -> torch.Tensor:
        """One step; returns the decision probabilities (B, D, 3).

        Arguments:
            table_index: (B,) the row of the combined table (previous decisions, centre symbol).
            extra_index: (B * (window cells - 1),) the table rows of the other window cells, or ``None``.
            mask: (B, D, 3) additive feasibility mask (0 or -inf).
            live: (B, 1) bool, the rows whose episode is not over.
            symbol: (B, 1) long, the centre symbol; (B, n) the window's symbols with ``window_write``.
            write_row: (B,) the tape row of each memory head (``None`` without memory).
            read_rows: (B * cells read,) the tape rows read (``None`` without memory).
        """
        size, units, width = self.size, self.units, self.width
        z = self.combined.index_select(0, table_index)
        if extra_index is not None:
            z += self.table.index_select(0, extra_index).view(size, -1, z.shape[1]).sum(1)
        window = cells = None
        if self.memory:
            assert read_rows is not None and self.tape is not None
            reads = self.tape.index_select(0, read_rows)
            window = reads.view(size, -1)
            if self.reads > self.window_cells:
                window = window[:, : self.window_cells * width]
            z.addmm_(window, self.w_reads)
            if self.want_windows:
                self.reads_list.append(window)
            cells = reads.view(size, self.reads, width).unbind(1)
        sig = gates_ifo = candidate = tg = tc = None
        if units:
            z.addmm_(self.h, self.w_h)
            sig_in, tanh_in = z.split(self.z_split, 1)
            sig = sig_in.sigmoid()
            tg = tanh_in.tanh()
            gates_ifo = sig.chunk(3, 1)
            candidate = tg if self.controller_units else tg[:, :units]
            c = torch.addcmul(gates_ifo[1] * self.c, gates_ifo[0], candidate)
            tc = c.tanh()
            h = gates_ifo[2] * tc
            self.h, self.c = h, c
            self.hs.append(h)
            self.cs.append(c)
            if self.controller_units:
                output = h[:, : self.controller_units] if units > self.controller_units else h
            else:
                output = tg[:, units:]
                self.outputs.append(output)
        else:
            tg = output = z.tanh_()
            self.outputs.append(output)
        heads = torch.addmm(self.heads_b, output, self.heads_w)
        decisions = self.decisions
        gate_part = value_part = None
        if self.memory:
            logit_part, gate_part, value_part = heads.split(self.head_split, 1)
        else:
            logit_part = heads
        logits = logit_part.view(size, decisions, 3) + mask
        # The softmax of three entries, in five cheap operations (torch's own costs more here).
        probs = (logits - logits.amax(-1, keepdim=True)).exp_()
        probs /= probs.sum(-1, keepdim=True)
        self.logits.append(logits)
        gates = value = None
        if self.memory:
            assert cells is not None and gate_part is not None and value_part is not None and write_row is not None
            gates = gate_part.sigmoid()
            value = value_part.tanh()
            old = cells[self.centre]
            if self.window_write:
                assert window is not None and read_rows is not None
                self._write_window(window, gates, value, symbol, live, read_rows)
            elif self.direct:
                keep, symbol_gate, left_gate, right_gate = gates.split([width, 1, 1, 1], 1)
                new = torch.addcmul(value, keep, old)
                # Gated one-hot input symbol, then gated left and right neighbours.
                new.scatter_add_(1, symbol, symbol_gate)
                new.addcmul_(left_gate, cells[self.window_cells])
                new.addcmul_(right_gate, cells[self.window_cells + 1])
            else:
                new = torch.addcmul(value, gates, old)
            if not self.window_write:
                cell = torch.where(live, new, old)
                assert self.tape is not None
                self.tape.index_copy_(0, write_row, cell)
                if self.direct:
                    self.written.append(cell)
        if self.grad:
            # ``probs`` becomes an output of the step's node, so keeping it would make a reference
            # cycle (episode -> probs -> node -> ctx -> episode) that frees nothing of the episode
            # after backward; its detached alias shares the values without the node.
            self.saved.append(
                (table_index, extra_index, live, symbol, write_row, read_rows, window, cells, sig, gates_ifo, candidate, tg, tc, gates, value, probs.detach(), output)
            )
        return probs

    def _window_gates(self, gates: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The window write's activated heads, shaped: keep (B, n, width), pairs (B, n, n, 2) and
        value (B, n, width)."""
        size, n, width = self.size, self.window_cells, self.width
        keep, pairs = gates.split([n * width, 2 * n * n], 1)
        return keep.view(size, n, width), pairs.view(size, n, n, 2), value.view(size, n, width)

    def _pair_updates(self, base: torch.Tensor, pairs: torch.Tensor, symbols: torch.Tensor) -> list[torch.Tensor]:
        """The window after its keep-and-value write (``base``, (B, n, width)), then after each
        input offset's pair gates in turn: ``cell_i <- p2_ij * cell_i + p_ij * onehot(symbol_j)``."""
        size, n = self.size, self.window_cells
        states = [base]
        for j in range(n):
            index = symbols[:, j, None, None].expand(size, n, 1)
            states.append((states[-1] * pairs[:, :, j, 1:2]).scatter_add_(2, index, pairs[:, :, j, 0:1]))
        return states

    def _write_window(self, window: torch.Tensor, gates: torch.Tensor, value: torch.Tensor, symbols: torch.Tensor,
                      live: torch.Tensor, read_rows: torch.Tensor) -> None:
        """The authors' direct access: write every cell of the memory window (live rows only)."""
        size = self.size
        keep, pairs, values = self._window_gates(gates, value)
        old = window.view(size, self.window_cells, self.width)
        states = self._pair_updates(torch.addcmul(values, keep, old), pairs, symbols)
        if self.grad:
            self.window_states.append(torch.stack(states[:-1], 1))
        cells = torch.where(live[:, :, None], states[-1], old)
        assert self.tape is not None
        self.tape.index_copy_(0, read_rows, cells.view(-1, self.width))
        self.written.append(cells.view(size, -1))

    def _write_window_backward(self, t: int, grad_cells: torch.Tensor, window: torch.Tensor, gates: torch.Tensor,
                               value: torch.Tensor, symbols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backward through step ``t``'s :meth:`_write_window` update of live rows: from the
        gradient of the window it wrote (B, n, width), the gradients of the gates' and the value's
        activations (each as laid out in the heads) and of the cells read (B, n, width)."""
        size, n = self.size, self.window_cells
        keep, pairs, _ = self._window_gates(gates, value)
        # The gradient of the window after each input offset's update, last offset first.
        after = [grad_cells]
        for j in range(n - 1, 0, -1):
            after.append(after[-1] * pairs[:, :, j, 1:2])
        grad_base = after[-1] * pairs[:, :, 0, 1:2]
        after_each = torch.stack(after[::-1], 1)  # (B, input offset j, memory offset i, width)
        index = symbols[:, :, None, None].expand(size, n, n, 1)
        dp = after_each.gather(3, index)[..., 0]
        dp2 = (after_each * self.window_states[t]).sum(3)
        dpairs = torch.stack([dp, dp2], 3).transpose(1, 2)  # (B, i, j, (p, p2)), as the heads lay them out
        old = window.view(size, n, self.width)
        dgates = torch.cat([(grad_base * old).view(size, -1), dpairs.reshape(size, -1)], 1)
        return dgates, grad_base.view(size, -1), grad_base * keep

    def stacked(self) -> tuple[torch.Tensor | None, ...]:
        """Every step's log-probabilities of the decisions taken (B, T, D; the decisions
        :meth:`advance` recorded), controller outputs (B, T, hidden), baseline LSTM states (B, T,
        units), written cells (B, T, width; direct access) and memory windows read (B, T, window
        cells * width; when asked for), ``None`` for what does not exist."""
        logits = torch.stack(self.logits, 1)  # (B, T, D, 3), infeasible at -inf (never taken)
        actions = torch.stack(self.records["actions"], 1)
        # The chosen logit minus the log-sum-exp: cheaper than a log-softmax over three entries.
        chosen = logits.gather(3, actions[..., None])[..., 0] - logits.logsumexp(-1)
        self.chosen = (logits, actions)
        units, controller = self.units, self.controller_units
        outputs = baseline = None
        if units:
            states = torch.stack(self.hs[1:], 1)
            if controller:
                outputs = states[..., :controller].contiguous() if units > controller else states
            if units > controller:
                baseline = states[..., controller:].contiguous() if controller else states
        if not controller:
            outputs = torch.stack(self.outputs, 1)
        written = torch.stack(self.written, 1) if self.written else None
        windows = None
        if self.want_windows and self.memory:
            windows = torch.stack(self.reads_list, 1)
        return chosen, outputs, baseline, written, windows

    # -- backward --------------------------------------------------------------------------

    def begin_backward(self, grads: tuple[torch.Tensor | None, ...]) -> None:
        """Before the steps' backward: the gradients of _Finish's outputs, turned into what each
        step adds to the gradient of its ``h`` (and of a feed-forward controller's output)."""
        grad_chosen, grad_outputs, grad_baseline, grad_written, grad_windows = grads
        size, steps = self.size, len(self.logits)
        through_logits = grad_logits = None
        if grad_chosen is not None:
            # d log p(a) / d logits = onehot(a) - p.
            logits, actions = self.chosen
            grad_logits = torch.softmax(logits, -1).mul_(-grad_chosen[..., None])
            grad_logits.scatter_add_(3, actions[..., None], grad_chosen[..., None])
            grad_logits = grad_logits.reshape(size, steps, 3 * self.decisions)
            through_logits = grad_logits.matmul(self.heads_w_logits_t)
        if grad_outputs is not None:
            through_logits = grad_outputs if through_logits is None else through_logits + grad_outputs
        to_h = to_output = None
        controller = self.controller_units
        if controller:
            if grad_baseline is None:
                to_h = through_logits
                if to_h is not None and self.units > controller:
                    to_h = torch.cat([to_h, to_h.new_zeros(size, steps, self.units - controller)], 2)
            else:
                first = through_logits if through_logits is not None else grad_baseline.new_zeros(size, steps, controller)
                to_h = torch.cat([first, grad_baseline], 2)
        else:
            to_h, to_output = grad_baseline, through_logits
        # One tuple per step, from one unbind per tensor.
        per_step = [x.unbind(1) if x is not None else [None] * steps for x in (to_h, to_output, grad_written, grad_windows)]
        self.external = list(zip(*per_step))
        self.grad_logits = grad_logits
        self._begin_pass()

    def _begin_pass(self) -> None:
        """Zero the weight gradients the steps' backward accumulates into."""
        self.heads_w_grad = torch.zeros_like(self.heads_w)
        self.heads_b_grad = torch.zeros_like(self.heads_b)
        logit_columns = 3 * self.decisions
        self.accumulators = {
            "combined": torch.zeros_like(self.combined),
            "heads_w_logits": self.heads_w_grad[:, :logit_columns],
            "heads_w_memory": self.heads_w_grad[:, logit_columns:],
            "heads_b_logits": self.heads_b_grad[:logit_columns],
            "heads_b_memory": self.heads_b_grad[logit_columns:],
        }
        if self.window_cells > 1:
            self.accumulators["table"] = torch.zeros_like(self.table)
        if self.memory:
            self.accumulators["w_reads"] = torch.zeros_like(self.w_reads)
        if self.units:
            self.accumulators["w_h"] = torch.zeros_like(self.w_h)

    def backward_step(self, t: int, grad_token: torch.Tensor | None, grad_probs: torch.Tensor | None) -> torch.Tensor:
        """Backward through step ``t``: the gradient of the state before it (updates
        ``grad_token`` in place and returns it); the weights' gradients are accumulated."""
        size, units, width = self.size, self.units, self.width
        (table_index, extra_index, live, symbol, write_row, read_rows, window, cells, sig, gates_ifo, candidate, tg, tc, gates, value, probs, output) = self.saved[t]
        if grad_token is None:
            grad_token = torch.zeros(self.token_size, dtype=self.dtype)
        if grad_token is not self._grad_token:
            # Views of the state's gradient: h, c, the controller's part of h, the tape.
            self._grad_token = grad_token
            dh = grad_token[: size * units].view(size, units)
            self._grad_views = (
                dh,
                grad_token[size * units : 2 * size * units].view(size, units),
                dh[:, : self.controller_units],
                grad_token[2 * size * units :].view(-1, width) if self.memory else None,
            )
        dh, dc, dh_controller, tape_grad = self._grad_views
        if self.accumulators is None:  # a backward pass that does not go through _Finish
            self._begin_pass()
        accumulators = self.accumulators
        assert accumulators is not None
        to_h, to_output, written, grad_window = self.external[t] if self.external else (None, None, None, None)

        doutput = to_output
        if grad_probs is not None:
            dlogits = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype).view(size, -1)
            accumulators["heads_w_logits"].addmm_(output.t(), dlogits)
            accumulators["heads_b_logits"] += dlogits.sum(0)
            through = dlogits.mm(self.heads_w_logits_t)
            doutput = through if doutput is None else doutput + through
        if self.memory:
            assert tape_grad is not None and cells is not None and gates is not None and value is not None
            # The write: the written cell's gradient goes to the new value in live rows (the old
            # content did not survive), and stays with the old content in the others.
            if self.window_write:
                assert window is not None and read_rows is not None
                write_row, live = read_rows, live.repeat_interleave(self.window_cells, 0)
            after = tape_grad.index_select(0, write_row)
            if written is not None:
                written = written.reshape(after.shape)
            dnew = torch.where(live, after if written is None else after + written, 0.0)
            tape_grad.index_copy_(0, write_row, torch.where(live, 0.0, after))
            old = cells[self.centre]
            dvalue = dnew
            if self.window_write:
                dgates, dvalue, dold = self._write_window_backward(t, dnew.view(size, self.window_cells, width), window, gates, value, symbol)
                dold = dold.view(-1, width)
            elif self.direct:
                keep = gates[:, :width]
                dgates = torch.cat(
                    [dnew * old, dnew.gather(1, symbol), (dnew * cells[self.window_cells]).sum(1, keepdim=True),
                     (dnew * cells[self.window_cells + 1]).sum(1, keepdim=True)], 1)
                dneighbours = torch.stack([gates[:, width + 1 : width + 2] * dnew, gates[:, width + 2 :] * dnew], 1)
            else:
                keep = gates
                dgates = dnew * old
            if not self.window_write:
                dold = dnew * keep
            if written is not None:
                dold += torch.where(live, 0.0, written)
            dmemory = torch.cat([_sigmoid_backward(dgates, gates), _tanh_backward(dvalue, value)], 1)
            accumulators["heads_w_memory"].addmm_(output.t(), dmemory)
            accumulators["heads_b_memory"] += dmemory.sum(0)
            through = dmemory.mm(self.heads_w_memory_t)
            doutput = through if doutput is None else doutput + through
        controller = self.controller_units
        if units:
            if to_h is not None:
                dh += to_h
            if controller and doutput is not None:
                dh_controller += doutput
            input_gate, forget_gate, output_gate = gates_ifo
            dc += _tanh_backward(dh * output_gate, tc)
            dsig = torch.cat([dc * candidate, dc * self.cs[t], dh * tc], 1)
            dtanh = dc * input_gate
            if not controller:
                dtanh = torch.cat([dtanh, doutput if doutput is not None else dtanh.new_zeros(size, tg.shape[1] - units)], 1)
            dz = torch.cat([_sigmoid_backward(dsig, sig), _tanh_backward(dtanh, tg)], 1)
            dc.mul_(forget_gate)
            assert self.w_h_t is not None
            accumulators["w_h"].addmm_(self.hs[t].t(), dz)
            torch.mm(dz, self.w_h_t, out=dh)
        else:
            dz = _tanh_backward(doutput, tg) if doutput is not None else torch.zeros_like(tg)
        accumulators["combined"].index_add_(0, table_index, dz)
        if extra_index is not None:
            others = self.window_cells - 1
            accumulators["table"].index_add_(0, extra_index, dz[:, None, :].expand(-1, others, -1).reshape(-1, dz.shape[1]))
        if self.memory:
            assert window is not None and tape_grad is not None
            assert self.w_reads_controller_t is not None
            accumulators["w_reads"].addmm_(window.t(), dz)
            # The reads: their gradient adds into the cells read (a cell read twice gets both).
            dreads = dz.mm(self.w_reads_controller_t)
            if grad_window is not None:
                dreads += grad_window
            dreads = dreads.view(size, self.window_cells, width)
            if self.window_write:
                dreads += dold.view(size, self.window_cells, width)
            else:
                dreads[:, self.centre] += dold
            if self.direct:
                dreads = torch.cat([dreads, dneighbours], 1)
            tape_grad.index_add_(0, read_rows, dreads.view(-1, width))
        return grad_token

    def backward_start(self, grad_token: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        """The weights' gradients (accumulated by the steps' backward, plus the logits' part from
        _Finish's gradient, over all steps at once) and the initial state's. Ends the pass."""
        size, units = self.size, self.units
        if self.accumulators is None:
            self._begin_pass()
        accumulators = self.accumulators
        assert accumulators is not None
        grads: list[torch.Tensor | None] = [None] * 9
        if grad_token is not None and units:
            grads[0] = grad_token[: size * units].view(size, units)
            grads[1] = grad_token[size * units : 2 * size * units].view(size, units)
        combined = accumulators["combined"].view(self.action_rows, NUM_SYMBOLS, -1)
        dtable = accumulators.get("table")
        if dtable is None:
            dtable = torch.zeros_like(self.table)
        dtable[self.centre * NUM_SYMBOLS : (self.centre + 1) * NUM_SYMBOLS] += combined.sum(0)
        # Back to the plan's column order.
        grads[2] = dtable.index_select(1, self.inverse)
        grads[3] = combined.sum(1).index_select(1, self.inverse)
        if self.memory:
            grads[4] = accumulators["w_reads"].index_select(1, self.inverse)
        if units:
            w_h = accumulators["w_h"].index_select(1, self.inverse)
            for offset, n, slot in self._recurrent_parts(5, 6):
                grads[slot] = w_h[offset : offset + n, 4 * offset : 4 * (offset + n)]
        grads[7] = self.heads_w_grad
        grads[8] = self.heads_b_grad
        if self.grad_logits is not None:
            # The logits' part of the heads' gradient, over all steps at once.
            logit_columns = 3 * self.decisions
            steps = len(self.saved)
            if self.controller_units:
                outputs = torch.stack(self.hs[1 : steps + 1], 1)[..., : self.controller_units]
            else:
                outputs = torch.stack(self.outputs, 1)
            self.heads_w_grad[:, :logit_columns] += outputs.flatten(0, 1).T.mm(self.grad_logits.flatten(0, 1))
            self.heads_b_grad[:logit_columns] += self.grad_logits.sum((0, 1))
        self.accumulators = None
        self.external = []
        self.grad_logits = None
        self._grad_token = None
        return tuple(grads)


@functools.cache
def _gate_major_order(units: int, controller_units: int, columns: int) -> torch.Tensor:
    """The plan's columns (each LSTM in torch's gate order: input, forget, candidate, output; the
    controller's LSTM first; then feed-forward units) regrouped as this loop's product wants them:
    every LSTM's input gates, then forget gates, then output gates (the sigmoid part), then every
    LSTM's candidates and the feed-forward units (the tanh part). Cached: never modified."""
    parts = [(offset, n) for offset, n in ((0, controller_units), (controller_units, units - controller_units)) if n]
    order = []
    for gate in (0, 1, 3, 2):
        for offset, n in parts:
            order.extend(range(4 * offset + gate * n, 4 * offset + (gate + 1) * n))
    order.extend(range(4 * units, columns))
    return torch.tensor(order)


class _Start(torch.autograd.Function):
    @staticmethod
    def forward(ctx, episode, h0, c0, table, action_table, w_reads, w_h_controller, w_h_baseline, heads_w, heads_b):  # type: ignore[no-untyped-def, override]
        ctx.set_materialize_grads(False)
        ctx.episode = episode
        episode.begin(h0, c0, table, action_table, w_reads, w_h_controller, w_h_baseline, heads_w, heads_b)
        return episode.token()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_token):  # type: ignore[no-untyped-def, override]
        return (None, *ctx.episode.backward_start(grad_token))


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token, episode, t, table_index, extra_index, mask, live, symbol, write_row, read_rows):  # type: ignore[no-untyped-def, override]
        ctx.set_materialize_grads(False)
        ctx.episode = episode
        ctx.t = t
        probs = episode.forward_step(table_index, extra_index, mask, live, symbol, write_row, read_rows)
        return episode.token(), probs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_token, grad_probs):  # type: ignore[no-untyped-def, override]
        return (ctx.episode.backward_step(ctx.t, grad_token, grad_probs),) + (None,) * 9


class _Finish(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token, episode):  # type: ignore[no-untyped-def, override]
        ctx.set_materialize_grads(False)
        ctx.episode = episode
        return episode.stacked()

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):  # type: ignore[no-untyped-def, override]
        ctx.episode.begin_backward(grads)
        return None, None


def new_episode(**options: Any) -> Any:
    """An :class:`Episode` with these keyword arguments, or its C++ twin from :mod:`rlntm_demo.fast.native`
    where that is built (the same methods, values and gradients, fewer microseconds per operation).
    The window write (``window_write``) has no C++ twin: it always runs here."""
    module = native.extension()
    if module is None or options.get("window_write"):
        return Episode(**options)
    options.pop("window_write", None)
    options.pop("dtype")  # the C++ episode takes it from the weights
    return module.Episode(symbols=NUM_SYMBOLS, **options)


def read_tape(baseline: Any, tape: torch.Tensor, tape_len: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline's pre-reader over the input tapes (:meth:`~rlntm_demo.controllers.OfflineBaseline.read_tape`),
    in C++ where :mod:`rlntm_demo.fast.native` is built: the same final ``(h, c)`` up to rounding, for
    less than the ``torch.nn.LSTM`` over packed sequences costs at these sizes."""
    module = native.extension()
    if module is None:
        return baseline.read_tape(tape, tape_len, dtype)
    reader = baseline.pre_reader
    return module.pre_read(tape, tape_len, reader.weight_ih_l0, reader.weight_hh_l0, reader.bias_ih_l0 + reader.bias_hh_l0,
                           float(baseline.initial_state))


def start(episode: Episode, *tensors: torch.Tensor | None) -> torch.Tensor:
    """Begin the episode: the weights and initial state (see :meth:`Episode.begin`); returns the first token."""
    return _Start.apply(episode, *tensors)


def finish(episode: Episode, token: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """End the episode: :meth:`Episode.stacked`, differentiable."""
    return _Finish.apply(token, episode)


def predict(
    hidden: torch.Tensor,
    cells: torch.Tensor | None,
    symbols: torch.Tensor,
    rows: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    gates: int,
    scales: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prediction head at the predicting steps, with the rewards and predictions it gives.

    Arguments:
        hidden: (B, T, H), the controller's outputs.
        cells: (B, T, width), the current memory cells after each step's write (needed with two
            gates).
        symbols: (N,) long, the centre input symbol at each predicting step.
        rows: (N,) long, the predicting steps as flat indices ``b * T + t``.
        targets: (N,) long, the target at each of them.
        weight, bias: the head as one linear map, with ``gates`` gate rows after the
            ``NUM_SYMBOLS`` logit rows (:meth:`~rlntm_demo.controllers.Controller.prediction_weights`).
        gates: 0; 1 (a sigmoid gate adds the one-hot symbol to the logits); 2 (a second one adds
            the memory cell).
        scales: ``None``, or (gates,) positive factors, differentiable, that multiply what each
            gate adds (:attr:`~rlntm_demo.config.ModelConfig.shortcut_scale`).

    Returns:
        Rewards (B, T): the target's log-probability at the predicting steps, 0 elsewhere
        (differentiable); predictions (B, T) long: the most probable symbol there, -1 elsewhere.
        One C++ node where :mod:`rlntm_demo.fast.native` is built (fewer operations, forward and
        backward); the same values in torch otherwise.
    """
    module = native.extension()
    if module is not None:
        rewards, predictions = module.predict(hidden, cells, symbols, rows, targets, weight, bias, gates, scales)
        return rewards, predictions
    size, steps, units = hidden.shape
    out = torch.addmm(bias, hidden.reshape(size * steps, units).index_select(0, rows), weight.T)
    logits = out[:, :NUM_SYMBOLS]
    if gates:
        gate = out[:, NUM_SYMBOLS:].sigmoid()
        if scales is not None:
            gate = gate * scales
        if gates == 2:
            assert cells is not None
            logits = torch.addcmul(logits, gate[:, 1:2], cells.reshape(size * steps, -1).index_select(0, rows))
        logits = logits.scatter_add(1, symbols[:, None], gate[:, :1])
    return rewards_and_predictions(logits, rows, targets, size, steps)


def rewards_and_predictions(logits: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, size: int,
                            steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`predict`'s outputs from the prediction logits (N, NUM_SYMBOLS) at the predicting
    steps ``rows`` (flat ``b * steps + t``) and their ``targets``: rewards (B, T), the target's
    log-probability there and 0 elsewhere; predictions (B, T), the argmax there and -1 elsewhere."""
    # The target's logit minus the log-sum-exp: torch's log-softmax over a last dimension this
    # short costs several times more.
    log_probs = logits.gather(1, targets[:, None])[:, 0] - logits.logsumexp(-1)
    rewards = log_probs.new_zeros(size * steps).index_copy(0, rows, log_probs).view(size, steps)
    predictions = torch.full((size * steps,), -1, dtype=torch.long).index_copy_(0, rows, argmax_last(logits.detach()))
    return rewards, predictions.view(size, steps)


def argmax_last(values: torch.Tensor) -> torch.Tensor:
    """``values.argmax(-1)`` (the first of equal entries; a NaN counts as the largest), in one C++
    pass where :mod:`rlntm_demo.fast.native` is built: torch's argmax over a last dimension as short as
    the 35 prediction symbols costs several times more. Not differentiable (an index)."""
    module = native.extension()
    if module is None or values.device.type != "cpu" or values.dtype not in (torch.float32, torch.float64):
        return values.argmax(-1)
    return module.argmax_last(values.detach())
