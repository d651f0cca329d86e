"""The algorithmic tasks of Section 6, and three the paper tried without success.

A task turns a *complexity* (the length of the sequence to process, Section 7) into a
:class:`Batch` of instances: input tapes, targets and a step bound per row. Tasks know nothing of
the model; the only thing they tell it is which interfaces they offer (Table 2), as
:attr:`Task.interfaces`.

=======================  ===============================  ============================  ===================
name                     input                            target                        interfaces
=======================  ===============================  ============================  ===================
``copy``                 x1 .. xC EOS                     x1 .. xC EOS                  input {-1,0,+1}
``duplicated-input``     x1 x1 x1 .. xC xC xC EOS         x1 .. xC EOS                  input {-1,0,+1}
``reverse``              x1 .. xC EOS                     xC .. x1 EOS                  input {-1,0,+1}
``repeat-copy``          m x1 .. xC EOS                   (x1 .. xC) m times, EOS       input {-1,0,+1}
``forward-reverse``      x1 .. xC EOS                     xC .. x1 EOS                  input {0,+1}, memory
``sort``                 x1 .. xC EOS                     the xi sorted, EOS            input, memory
``addition``             a1 .. aC PLUS b1 .. bC EOS       s1 .. s(C+1) EOS              input, memory
``repeat-copy-forward``  m x1 .. xC EOS                   (x1 .. xC) m times, EOS       input {0,+1}, memory
=======================  ===============================  ============================  ===================

Symbols are those of :mod:`rlntm_demo.config`: data symbols 2..31, ``EOS`` = 1, padding
``BLANK`` = 0; in RepeatCopy, m is written as ``REPEAT_2`` or ``REPEAT_3`` in the first input cell
(as the authors' code did; the paper only says m is given). The data symbols are drawn uniformly
from the first ``num_symbols`` of them (30 in the paper; 2 or 3 make tiny instances for the exact
check).

**Addition** is in base ``num_symbols`` (default 3, as in the paper), digit d written as data
symbol ``2 + d``, and **little-endian**: the least significant digit comes first, in both operands
and in the sum. A machine that reads left to right then meets the digits in the order the carry
propagates, which is the order a person adds in. Both operands have exactly C digits (leading
zeros allowed) and the sum exactly C + 1 (its last digit is the final carry, 0 or 1), so the
target length depends on the complexity only.

**The step bound.** The paper limits an episode to a fixed number of steps T and forces a
prediction whenever the targets left equal the steps left (the authors used T = 30 for
ForwardReverse and T = 44 for RepeatCopy, whatever the length). Here each row gets its own bound,
a function of its lengths, so that short curriculum levels do not run idle for the long ones'
budget and long levels are never starved:

* ``T = len(input) + len(target) + slack`` for tasks solved in one pass over the input and one
  over the output (copy, duplicated input, reverse, forward-reverse, addition): enough to read the
  whole input first and then write every target;
* ``T = len(input) + 2 len(target) + slack`` for the tasks that revisit the input or the memory
  between outputs (repeat copy, which rewinds between copies, its forward-only variant, and sort).

``slack`` defaults to 2 steps of room to spare.

>>> task = make_task("reverse", num_symbols=3)
>>> batch = task.sample(complexity=3, batch_size=2, generator=torch.Generator().manual_seed(0))
>>> batch.input.shape, batch.target.shape, batch.steps.tolist()
(torch.Size([2, 4]), torch.Size([2, 4]), [10, 10])
>>> row = batch.input[0, : int(batch.input_len[0])].tolist()
>>> batch.target[0].tolist() == row[-2::-1] + [EOS]
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .config import BLANK, EOS, FIRST_DATA_SYMBOL, NUM_DATA_SYMBOLS, PLUS, REPEAT_2, REPEAT_3, InterfaceSpec

__all__ = [
    "Addition",
    "Batch",
    "Copy",
    "DuplicatedInput",
    "ForwardReverse",
    "RepeatCopy",
    "RepeatCopyForward",
    "Reverse",
    "Sort",
    "TASKS",
    "Task",
    "make_task",
]

FREE_INPUT = InterfaceSpec(forward_only_input=False, memory=False)
"""Copy, DuplicatedInput, Reverse, RepeatCopy: an input tape the head moves on freely, no memory."""
FORWARD_INPUT_AND_MEMORY = InterfaceSpec(forward_only_input=True, memory=True)
"""ForwardReverse (and the forward-only RepeatCopy): the input is read once, so memory is needed."""
INPUT_AND_MEMORY = InterfaceSpec(forward_only_input=False, memory=True)
"""Sort and addition: every interface."""


@dataclass
class Batch:
    """A batch of task instances, padded with ``BLANK``.

    >>> batch = Batch.from_lists([[2, 3, EOS]], [[3, 2, EOS]], [7])
    >>> batch.input.tolist(), batch.target_len.tolist(), batch.batch_size
    ([[2, 3, 1]], [3], 1)
    """

    input: torch.Tensor
    """(B, L_in) long: the input tapes."""
    input_len: torch.Tensor
    """(B,) long: the length of each input (cells past it are ``BLANK``)."""
    target: torch.Tensor
    """(B, L_out) long: the symbols the output tape must receive, in order."""
    target_len: torch.Tensor
    """(B,) long: the number of targets of each row (always at least 1: the final ``EOS``)."""
    steps: torch.Tensor
    """(B,) long: the step bound T of each row; a prediction is forced when the targets left equal
    the steps left, so every target is emitted within T steps."""

    @property
    def batch_size(self) -> int:
        """Number of rows."""
        return int(self.input.shape[0])

    @classmethod
    def from_lists(cls, inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], steps: Sequence[int]) -> Batch:
        """Pad lists of symbols into a batch.

        Raises:
            ValueError: a row's step bound is smaller than its number of targets.
        """
        if not (len(inputs) == len(targets) == len(steps)) or not inputs:
            raise ValueError("inputs, targets and steps must be non-empty and of the same length")
        for target, bound in zip(targets, steps):
            if not 1 <= len(target) <= bound:
                raise ValueError(f"a row has {len(target)} targets but a step bound of {bound}")
        return cls(
            input=_pad(inputs),
            input_len=torch.tensor([len(x) for x in inputs], dtype=torch.long),
            target=_pad(targets),
            target_len=torch.tensor([len(y) for y in targets], dtype=torch.long),
            steps=torch.tensor(list(steps), dtype=torch.long),
        )

    def select(self, rows: Sequence[int] | torch.Tensor) -> Batch:
        """The batch made of the given rows (repeats allowed: ``batch.select([0] * 8)``)."""
        index = torch.as_tensor(rows, dtype=torch.long)
        return Batch(
            input=self.input[index],
            input_len=self.input_len[index],
            target=self.target[index],
            target_len=self.target_len[index],
            steps=self.steps[index],
        )

    def repeat(self, times: int) -> Batch:
        """Every row ``times`` times in a row: row i becomes rows ``i * times .. i * times + times - 1``.

        Several rollouts of one input (a leave-one-out baseline needs them) are consecutive rows.

        >>> Batch.from_lists([[2, EOS], [3, EOS]], [[2, EOS], [3, EOS]], [5, 5]).repeat(2).input[:, 0].tolist()
        [2, 2, 3, 3]
        """
        if times < 1:
            raise ValueError(f"times must be at least 1, not {times}")
        return self.select(torch.arange(self.batch_size).repeat_interleave(times))

    def with_steps(self, steps: int) -> Batch:
        """The same instances with the step bound ``steps`` for every row.

        Raises:
            ValueError: a row has more targets than ``steps``.
        """
        if steps < int(self.target_len.max()):
            raise ValueError(f"a step bound of {steps} is too small for {int(self.target_len.max())} targets")
        return Batch(self.input, self.input_len, self.target, self.target_len, torch.full_like(self.steps, steps))

    def with_start_marker(self) -> Batch:
        """The same instances with a visible left end: ``BLANK`` written before every input
        (``BLANK x1 .. xC EOS``), whose length grows by one, and one more step in every step
        bound (the head starts on the marker). The right end is visible already: ``EOS``.

        What :attr:`ModelConfig.input_start_marker <rlntm_demo.config.ModelConfig.input_start_marker>`
        does to every batch the model runs on. ``BLANK`` is the marker because it is what a read
        window sees past the tape's ends, and no task writes it inside an input.

        >>> Batch.from_lists([[2, 3, EOS]], [[3, 2, EOS]], [7]).with_start_marker().input.tolist()
        [[0, 2, 3, 1]]
        """
        marker = torch.full((self.batch_size, 1), BLANK, dtype=self.input.dtype)
        return Batch(torch.cat([marker, self.input], 1), self.input_len + 1, self.target, self.target_len,
                     self.steps + 1)


def _pad(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), BLANK, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
    return out


class Task:
    """Base class: a generator of instances at a given complexity.

    Subclasses set :attr:`name`, :attr:`interfaces` and :attr:`target_passes`, and implement
    :meth:`example`.

    Arguments:
        num_symbols: how many data symbols the x_i are drawn from (1..30; 30 in the paper).
        slack: spare steps added to the step bound.
    """

    name: ClassVar[str]
    """The name on the command line and in :data:`TASKS`."""
    interfaces: ClassVar[InterfaceSpec]
    """The interfaces the controller gets for this task (Table 2)."""
    target_passes: ClassVar[int] = 1
    """The step bound is ``len(input) + target_passes * len(target) + slack``."""
    training_complexity: ClassVar[int] = 20
    """The top of the curriculum: the complexity a model is trained up to and judged at (an
    output of 20 symbols for most tasks, as in the paper's experiments; see each task)."""

    def __init__(self, num_symbols: int = NUM_DATA_SYMBOLS, slack: int = 2) -> None:
        if not 1 <= num_symbols <= NUM_DATA_SYMBOLS:
            raise ValueError(f"num_symbols must be in 1..{NUM_DATA_SYMBOLS}, not {num_symbols}")
        if slack < 0:
            raise ValueError(f"slack must be at least 0, not {slack}")
        self.num_symbols = num_symbols
        self.slack = slack

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_symbols={self.num_symbols}, slack={self.slack})"

    def example(self, complexity: int, generator: torch.Generator) -> tuple[list[int], list[int]]:
        """One instance: ``(input symbols, target symbols)``, both ending with ``EOS``."""
        raise NotImplementedError

    def step_bound(self, input_len: int, target_len: int) -> int:
        """The number of steps T an instance with these lengths gets (see the module docstring)."""
        return input_len + self.target_passes * target_len + self.slack

    def sample(self, complexity: int, batch_size: int, generator: torch.Generator) -> Batch:
        """Draw ``batch_size`` independent instances of the given complexity.

        Arguments:
            complexity: the length C of the sequence to process (at least 1).
            batch_size: the number of rows.
            generator: the only source of randomness, so equal seeds give equal batches.

        Returns:
            A :class:`Batch` whose rows all have complexity ``complexity``.
        """
        if complexity < 1:
            raise ValueError(f"complexity must be at least 1, not {complexity}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        return self.sample_mixed([complexity] * batch_size, generator)

    def sample_mixed(self, complexities: Sequence[int] | torch.Tensor, generator: torch.Generator) -> Batch:
        """Draw one instance per entry of ``complexities`` (what a curriculum asks for).

        Arguments:
            complexities: the complexity of each row, each at least 1.
            generator: the only source of randomness.

        Returns:
            A :class:`Batch` with one row per complexity, in order.

        >>> batch = make_task("copy").sample_mixed([1, 3], torch.Generator().manual_seed(0))
        >>> batch.target_len.tolist()
        [2, 4]
        """
        values = [int(c) for c in (complexities.tolist() if isinstance(complexities, torch.Tensor) else complexities)]
        if not values:
            raise ValueError("complexities must not be empty")
        if min(values) < 1:
            raise ValueError(f"complexity must be at least 1, not {min(values)}")
        inputs, targets = zip(*(self.example(c, generator) for c in values))
        steps = [self.step_bound(len(x), len(y)) for x, y in zip(inputs, targets)]
        return Batch.from_lists(inputs, targets, steps)

    def _symbols(self, count: int, generator: torch.Generator) -> list[int]:
        """``count`` data symbols drawn uniformly from the first ``num_symbols``."""
        draws = torch.randint(self.num_symbols, (count,), generator=generator)
        return [FIRST_DATA_SYMBOL + int(d) for d in draws]


class Copy(Task):
    """Copy: the target is the input, x1 .. xC EOS."""

    name = "copy"
    interfaces = FREE_INPUT

    def example(self, complexity: int, generator: torch.Generator) -> tuple[list[int], list[int]]:
        x = self._symbols(complexity, generator)
        return x + [EOS], x + [EOS]


class DuplicatedInput(Task):
    """DuplicatedInput: each input symbol appears three times; the target keeps one of each."""

    name = "duplicated-input"
    interfaces = FREE_INPUT

    def example(self, complexity: int, generator: torch.Generator) -> tuple[list[int], list[int]]:
        x = self._symbols(complexity, generator)
        return [s for s in x for _ in range(3)] + [EOS], x + [EOS]


class Reverse(Task):
    """Reverse: the target is xC .. x1 EOS."""

    name = "reverse"
    interfaces = FREE_INPUT

    def example(self, complexity: int, generator: torch.Generator) -> tuple[list[int], list[int]]:
        x = self._symbols(complexity, generator)
        return x + [EOS], x[::-1] + [EOS]


REPEAT_SCHEDULES = ("mixed", "two-then-three")
"""How RepeatCopy's complexity sets m (:class:`RepeatCopy`)."""


class RepeatCopy(Task):
    """RepeatCopy: the input m x1 .. xC EOS asks for m copies of x1 .. xC, then EOS.

    Arguments:
        repeats: the values m is drawn from, uniformly (the paper: 2 or 3).
        schedule: ``"mixed"`` (default): the complexity is the phrase length, and m is drawn at
            every level. ``"two-then-three"`` (the authors' ``repeatCopyN``, which ran m = 2 at
            every length before m = 3): with L = :attr:`training_complexity` (8), complexity
            c <= L is m = 2 with a phrase of c symbols, L < c <= 2L is m = 3 with c - L symbols,
            so the curriculum has 2L levels (``curriculum.max_level = 16``); past 2L, where only
            evaluation goes (k times the top level), m = 3 with c / 2 symbols (k L).

    >>> task = RepeatCopy(schedule="two-then-three")
    >>> [(row[0] == REPEAT_3, len(row) - 2) for row in (task.example(c, torch.Generator())[0] for c in (3, 8, 9, 16, 32))]
    [(False, 3), (False, 8), (True, 1), (True, 8), (True, 16)]
    """

    name = "repeat-copy"
    interfaces = FREE_INPUT
    target_passes = 2
    training_complexity = 8
    """Phrases of up to 8 symbols, copied up to 3 times (the authors' runs: at most 8 symbols and '.')."""

    def __init__(self, num_symbols: int = NUM_DATA_SYMBOLS, slack: int = 2, repeats: Sequence[int] = (2, 3),
                 schedule: str = "mixed") -> None:
        super().__init__(num_symbols, slack)
        if not repeats or any(m not in (2, 3) for m in repeats):
            raise ValueError(f"repeats must be drawn from (2, 3), not {tuple(repeats)}")
        if schedule not in REPEAT_SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of: {', '.join(REPEAT_SCHEDULES)}")
        self.repeats = tuple(repeats)
        self.schedule = schedule

    def example(self, complexity: int, generator: torch.Generator) -> tuple[list[int], list[int]]:
        if self.schedule == "two-then-three":
            top = self.training_complexity
            m = 2 if complexity <= top else 3
            length = complexity if complexity <= top else complexity - top if complexity <= 2 * top else complexity // 2
        else:
            m = self.repeats[int(torch.randint(len(self.repeats), (), generator=generator))]
            length = complexity
        x = self._symbols(length, generator)
        return [REPEAT_2 if m == 2 else REPEAT_3] + x + [EOS], x * m + [EOS]


class ForwardReverse(Reverse):
    """ForwardReverse: Reverse with a forward-only input head, so the input must go through memory."""

    name = "forward-reverse"
    interfaces = FORWARD_INPUT_AND_MEMORY
    training_complexity = 15
    """Up to 15 symbols, as in the authors' runs."""


class Sort(Task):
    """Sort (tried in the paper, Section 9): the target is the xi in increasing order, then EOS."""

    name = "sort"
    interfaces = INPUT_AND_MEMORY
    target_passes = 2
    training_complexity = 10

    def example(self, complexity: int, generator: torch.Generator) -> tuple[list[int], list[int]]:
        x = self._symbols(complexity, generator)
        return x + [EOS], sorted(x) + [EOS]


class Addition(Task):
    """Addition of two C-digit numbers, little-endian (tried in the paper in base 3, Section 9).

    Input ``a1 .. aC PLUS b1 .. bC EOS``, target ``s1 .. s(C+1) EOS``, least significant digit
    first; digit d is the data symbol ``2 + d``.

    Arguments:
        num_symbols: the base (default 3), which is also the number of digit symbols.
    """

    name = "addition"
    interfaces = INPUT_AND_MEMORY
    training_complexity = 10
    """Two 10-digit numbers: an 11-digit sum."""

    def __init__(self, num_symbols: int = 3, slack: int = 2) -> None:
        if num_symbols < 2:
            raise ValueError(f"addition needs a base of at least 2, not {num_symbols}")
        super().__init__(num_symbols, slack)

    @property
    def base(self) -> int:
        """The base of the numbers (``num_symbols``)."""
        return self.num_symbols

    def example(self, complexity: int, generator: torch.Generator) -> tuple[list[int], list[int]]:
        a = self._symbols(complexity, generator)
        b = self._symbols(complexity, generator)
        total, carry = [], 0
        for x, y in zip(a, b):
            carry, digit = divmod((x - FIRST_DATA_SYMBOL) + (y - FIRST_DATA_SYMBOL) + carry, self.base)
            total.append(FIRST_DATA_SYMBOL + digit)
        total.append(FIRST_DATA_SYMBOL + carry)
        return a + [PLUS] + b + [EOS], total + [EOS]


class RepeatCopyForward(RepeatCopy):
    """RepeatCopy with a forward-only input head and memory (found too hard in the paper, Section 9)."""

    name = "repeat-copy-forward"
    interfaces = FORWARD_INPUT_AND_MEMORY
    training_complexity = 8


TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (Copy, DuplicatedInput, Reverse, RepeatCopy, ForwardReverse, Sort, Addition, RepeatCopyForward)
}
"""Every task by its command-line name."""


def make_task(name: str, **options: object) -> Task:
    """The task called ``name``, built with ``options`` (``num_symbols``, ``slack``, ...).

    Raises:
        ValueError: no task has that name; the message lists the valid ones.

    >>> make_task("copy", num_symbols=2)
    Copy(num_symbols=2, slack=2)
    >>> make_task("multiply")
    Traceback (most recent call last):
    ...
    ValueError: unknown task 'multiply'; choose one of: copy, duplicated-input, reverse, repeat-copy, forward-reverse, sort, addition, repeat-copy-forward
    """
    cls = TASKS.get(name)
    if cls is None:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return cls(**options)  # type: ignore[arg-type]
