"""Speculation: how a batched round guesses past its known prefixes.

Round 0 of a batched enumeration runs one free row and records the support of every decision along
its path. Every later round runs each pending prefix extended by combinations of those supports,
guessed without knowing whether they are feasible elsewhere in the tree, so that a tree whose
supports do not depend on the history completes in one round. A guess that proves infeasible makes
its row invalid (see :mod:`reinforce_check.chooser`); of the rows that share a node, the one whose
guesses from that node on are all first guesses (the *canonical* row) answers for spawning there.

How deep to guess: a tree small enough to guess whole is guessed whole at once (a round costs about
as much as hundreds of rows, so a few wasted rows are cheaper than a probe). A larger tree is probed
one slot deep first, which tests whether round 0's supports hold elsewhere: if every guess was
feasible, the next round guesses as deep as the budget allows; once a guess fails (a stop action,
masking), guessing stays one slot deep, so wasted rows stay few.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .chooser import Plan

__all__ = ["Prefix", "Speculation"]

# A batched round costs about as much as several hundred rows (the episode's per-call overhead),
# so a tree whose full guess needs at most this many rows is guessed whole in round 1.
_EAGER_ROWS = 4096


@dataclass
class Prefix:
    """A path known to be feasible, with the probability of each of its actions."""

    actions: list[int]
    probs: list[float]


class Speculation:
    """The guesses of a batched enumeration and how deep each round takes them.

    Arguments:
        supports: bool mask of the feasible actions at every slot of round 0's path.
        pending: the prefixes round 1 will run.
        max_sequences: the sequence budget (the deepest a guess may go).

    >>> speculation = Speculation({0: torch.tensor([True, True])}, [Prefix([], [])], max_sequences=10)
    >>> speculation.plan([Prefix([], [])], cap=10).forced.tolist()
    [[0], [1]]
    """

    def __init__(self, supports: dict[int, torch.Tensor], pending: Sequence[Prefix], *, max_sequences: int) -> None:
        self.guessed = dict(supports)
        self.options = {slot: mask.nonzero().flatten() for slot, mask in self.guessed.items()}
        self.widths = {slot: int(actions.shape[0]) for slot, actions in self.options.items()}
        self.max_sequences = max_sequences
        self.max_depth = max_sequences if self._full_guess_rows(pending) <= _EAGER_ROWS else 1
        self.rounds = 0

    def update(self, all_valid: bool) -> None:
        """Adjust the depth after a round: deeper after a successful probe, one slot once a guess fails."""
        self.rounds += 1
        if all_valid and self.max_depth == 1 and self.rounds == 1:
            self.max_depth = self.max_sequences
        elif not all_valid:
            self.max_depth = 1

    def _full_guess_rows(self, pending: Sequence[Prefix]) -> int:
        """Rows that guessing every slot past every pending prefix would take."""
        total = 0
        for prefix in pending:
            rows = 1
            slot = len(prefix.actions)
            while slot in self.widths and rows <= _EAGER_ROWS:
                rows *= max(self.widths[slot], 1)
                slot += 1
            total += rows
            if total > _EAGER_ROWS:
                break
        return total

    def _depths(self, pending: Sequence[Prefix], cap: int) -> list[int]:
        """How many slots past its prefix each pending prefix guesses, keeping the rows within ``cap``."""
        depth = [0] * len(pending)
        sizes = [1] * len(pending)
        total = len(pending)
        grown = True
        while grown:
            grown = False
            for index, prefix in enumerate(pending):
                if depth[index] >= self.max_depth:
                    continue
                width = self.widths.get(len(prefix.actions) + depth[index], 0)
                if width == 0:
                    continue
                new_total = total + sizes[index] * (width - 1)
                if new_total > cap:
                    continue
                total = new_total
                sizes[index] *= width
                depth[index] += 1
                grown = True
        return depth

    def plan(self, pending: Sequence[Prefix], *, cap: int) -> Plan:
        """The rows of one round: each pending prefix followed by every combination of its guesses.

        Rows come prefix by prefix, in the order of ``pending``; the guesses of a prefix vary as
        mixed-radix digits, the last guessed slot fastest.
        """
        depths = self._depths(pending, cap)
        starts = [len(p.actions) for p in pending]
        ends = [start + depth for start, depth in zip(starts, depths)]
        width = max(ends, default=0)
        # Per prefix and column: the prefix's own actions (then -1), and the stride of each guessed
        # column's digit (the product of the widths of the guessed columns after it). An unguessed
        # column's stride is the prefix's number of rows, so that its digit reads 0.
        heads = [p.actions + [-1] * (width - len(p.actions)) for p in pending]
        head_probs = [p.probs + [0.0] * (width - len(p.probs)) for p in pending]
        strides = []
        counts = []
        for start, end in zip(starts, ends):
            row = [0] * width
            stride = 1
            for column in range(end - 1, start - 1, -1):
                row[column] = stride
                stride *= self.widths[column]
            strides.append([value or stride for value in row])
            counts.append(stride)
        count = torch.tensor(counts, dtype=torch.long)
        rows = int(count.sum())

        def per_row(values: torch.Tensor) -> torch.Tensor:
            """Each prefix's entry (or row of entries) repeated for each of its rows: a copy of
            contiguous blocks, where computing or indexing row by row would work element by element."""
            return torch.repeat_interleave(values, count, dim=0, output_size=rows)

        combination = torch.arange(rows) - per_row(torch.cumsum(count, 0) - count)
        columns = torch.arange(width)
        start_of_prefix = torch.tensor(starts, dtype=torch.long)
        end_of_prefix = torch.tensor(ends, dtype=torch.long)
        guessed = per_row((columns[None, :] >= start_of_prefix[:, None]) & (columns[None, :] < end_of_prefix[:, None]))
        # Actions guessed at each column, padded to the widest column (padding is never indexed).
        table = torch.zeros(width, max([self.widths.get(c, 1) for c in range(width)], default=1), dtype=torch.long)
        column_width = torch.ones(width, dtype=torch.long)
        for column in range(width):
            if column in self.options:
                table[column, : self.widths[column]] = self.options[column]
                column_width[column] = max(self.widths[column], 1)
        stride_of_row = per_row(torch.tensor(strides, dtype=torch.long).reshape(len(pending), width))
        digits = combination[:, None].div(stride_of_row, rounding_mode="floor").remainder(column_width[None, :])
        heads_of_row = per_row(torch.tensor(heads, dtype=torch.long).reshape(len(pending), width))
        # The action of digit d at column c is table[c, d].
        forced = torch.where(guessed, table.T.gather(0, digits), heads_of_row)
        replay_probs = per_row(torch.tensor(head_probs, dtype=torch.float64).reshape(len(pending), width))
        # Rows that share the node at a slot differ only from that slot on, so exactly one of them
        # has only first guesses (digit 0) from there on: the canonical row. Digits are non-negative,
        # so they are all 0 from a slot on where their sum from there on is.
        canonical = digits.flip(1).cumsum(1).flip(1) == 0 if width else None
        return Plan(
            forced=forced,
            forced_len=per_row(end_of_prefix),
            replayed_len=per_row(start_of_prefix),
            replay_probs=replay_probs,
            guessed=self.guessed,
            canonical=canonical,
        )
