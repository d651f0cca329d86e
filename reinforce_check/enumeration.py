"""Running an episode once for every terminating action sequence, as a stream of passes.

A *runner* is chosen once, by the caller: :class:`SequentialRunner` for ``episode()`` (one episode
per call) or :class:`BatchedRunner` for ``episode(batch_size)`` (independent rows). Either one
offers the same things, and nothing below it asks which it is:

* :meth:`Runner.passes` yields the differentiable ``(log_prob, objective, loss)`` rows of the
  sequences each pass completed; when the stream ends, :attr:`Runner.found` holds every sequence;
* :meth:`Runner.replay` runs one known sequence again, with gradient, and :meth:`Runner.replay_blocks`
  all of them, in as few episode calls as the mode allows;
* :meth:`Runner.objective` evaluates the exact J at the current parameters by forcing the known
  sequences (inside :meth:`Runner.replaying`).

Sequential mode walks the tree depth-first: each run replays a prefix, takes the first feasible
action at every later decision and records the other feasible actions as new prefixes, so every run
completes exactly one new sequence (as Pyro's sequential enumeration does, but driven by the
intercepted samplers, with no annotations).

Batched mode runs in rounds. Round 0 is one free row, run without gradient; it reveals the support
of every decision along its path. Each later round runs, as one batch, every pending prefix
extended by guesses (:mod:`reinforce_check.speculation`); round 0's own sequence is the first row of
round 1, which replays it in another episode call (the replay check of sequential mode, for one
row). The rows' graphs are kept until the last round and handed on together, or, when most guessed
rows proved infeasible, replaced by one more batch that runs the sequences alone.

Once the sequences are known, a batched runner forces all of them in a single batch (the paper's
"single minibatch whose size is #A†") to evaluate J at other parameter values.

A runner intercepts every sampler. When the episode runs code marked with
:func:`~reinforce_check.enumerate_actions`, :func:`enumerate_with` starts again with the same kind
of runner in scoped mode, which enumerates only the marked draws and replays every other random
draw from the generator state the check started with.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import torch

from . import randomness
from .chooser import Pass, Plan, PrefixChooser, SequenceReplayer
from .errors import (
    EpisodeOutputError,
    NondeterministicEpisodeError,
    NoSamplerCallError,
    SequenceBudgetError,
    UninterceptedRandomnessError,
)
from .patching import intercept_samplers, no_sampler_call_message
from .scope import OutsideDraws, ScopeDetected
from .speculation import Prefix, Speculation

__all__ = [
    "BatchedRunner",
    "Enumeration",
    "Rows",
    "Runner",
    "SequentialRunner",
    "enumerate_sequences",
    "enumerate_with",
]

Episode = Callable[..., Any]
T = TypeVar("T")


class Rows(NamedTuple):
    """Differentiable per-sequence quantities, one row per sequence."""

    log_prob: torch.Tensor
    objective: torch.Tensor
    loss: torch.Tensor


@dataclass
class Enumeration:
    """Every terminating action sequence of an episode, with what each one produced."""

    paths: torch.Tensor
    """``(N, W)`` action taken at every decision of each sequence, padded with -1."""
    lengths: torch.Tensor
    """``(N,)`` number of decisions of each sequence."""
    branching: torch.Tensor
    """``(N, W)`` whether each decision offered more than one feasible action."""
    sites: list[list[str]]
    """Sampler entry point behind each decision, per sequence."""
    log_prob: torch.Tensor
    """``(N,)`` log-probability of each sequence (detached)."""
    objective: torch.Tensor
    """``(N,)`` the episode's objective for each sequence (detached)."""
    loss: torch.Tensor
    """``(N,)`` the episode's loss for each sequence (detached)."""
    passes: int = 0
    """How many times the episode function was called."""
    rows_run: int = 0
    """Episode rows run in all, including rows whose speculated actions proved infeasible."""
    calls_without_gradient: int = 0
    """Sampler calls of the enumeration that could take more than one action from probabilities
    carrying no gradient (drawn under ``torch.no_grad()`` or ``torch.inference_mode()``, detached, or
    computed outside torch); the runner's own gradient-free runs excluded."""
    calls_gradient_off: int = 0
    """Of those, calls made while gradient recording was off."""
    calls_inference_mode: int = 0
    """Of those, calls made under ``torch.inference_mode()``."""
    calls_recorded: int = 0
    """Sampler calls in code marked with @enumerate_actions whose probabilities carry gradient only
    because the check recorded their graph through a gradient-off region."""
    outside_calls: int = 0
    """In scoped mode, sampler calls outside @enumerate_actions code (sampled, not enumerated)."""
    scoped: bool = False
    """Whether only draws inside @enumerate_actions code were enumerated."""
    replay_verified: bool = False
    """Whether the first sequence was already run twice, in two episode calls, with equal outputs."""
    _required: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    """:meth:`required_decisions`, once computed (every replay forces the same sequences)."""

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def actions(self) -> list[torch.Tensor]:
        """The action sequences, one 1-D long tensor each."""
        return [path[:length] for path, length in zip(self.paths, self.lengths.tolist())]

    def choices(self, index: int) -> list[tuple[str, int]]:
        """The decisions of sequence ``index`` that had a choice, as ``(site, action)`` pairs."""
        length = int(self.lengths[index])
        branching = self.branching[index, :length].tolist()
        actions = self.paths[index, :length].tolist()
        return [(site, action) for site, action, b in zip(self.sites[index], actions, branching) if b]

    def required_decisions(self) -> torch.Tensor:
        """How many decisions of each sequence a replay must make: up to its last choice. Forced
        decisions recorded after it (a finished row in a batch that ran on) may be absent in another
        batch."""
        if self._required is None:
            if not self.paths.shape[1]:
                self._required = self.lengths
            else:
                positions = torch.arange(1, self.paths.shape[1] + 1)
                self._required = (self.branching.long() * positions).max(dim=1).values
        return self._required


class _Block(NamedTuple):
    """Completed sequences kept as tensors (detached), padded to the block's widest path."""

    actions: torch.Tensor
    """``(rows, width)`` actions, ``-1`` past each row's end."""
    branching: torch.Tensor
    """``(rows, width)`` whether each decision had a choice."""
    lengths: torch.Tensor
    """``(rows,)`` length of each path."""
    sites: list[list[str]]
    """Each row's sampler entry point at every decision."""
    log_prob: torch.Tensor
    objective: torch.Tensor
    loss: torch.Tensor


class _SingleRows:
    """Completed sequences of one-row passes, kept as Python values until they are needed as tensors.

    A sequential enumeration completes one sequence per pass. Keeping a few small tensors alive per
    pass, thousands of them, made the episode runs around them about 9% slower than keeping the
    same values as Python numbers, on 2,187 sequences (``benchmarks/kept_values.py``; presumably
    because the tensors share the episode's heap, where Python numbers do not; see
    ``docs/benchmarks.rst``, "What a sequential check keeps").
    """

    def __init__(self) -> None:
        self.actions: list[list[int]] = []
        self.branching: list[list[bool]] = []
        self.sites: list[list[str]] = []
        # Float64 tensors' values: a Python float holds a float64 exactly.
        self.log_prob: list[float] = []
        self.objective: list[float] = []
        self.loss: list[float] = []

    def add(self, actions: list[int], branching: list[bool], sites: list[str], values: Rows) -> None:
        self.actions.append(actions)
        self.branching.append(branching)
        self.sites.append(sites)
        self.log_prob.append(values.log_prob.item())
        self.objective.append(values.objective.item())
        self.loss.append(values.loss.item())

    def block(self) -> _Block | None:
        """The rows gathered as one block (None if there are none)."""
        if not self.actions:
            return None
        width = max(len(path) for path in self.actions)
        return _Block(
            actions=torch.tensor([path + [-1] * (width - len(path)) for path in self.actions], dtype=torch.long),
            branching=torch.tensor([row + [False] * (width - len(row)) for row in self.branching], dtype=torch.bool),
            lengths=torch.tensor([len(path) for path in self.actions], dtype=torch.long),
            sites=self.sites,
            log_prob=torch.tensor(self.log_prob, dtype=torch.float64),
            objective=torch.tensor(self.objective, dtype=torch.float64),
            loss=torch.tensor(self.loss, dtype=torch.float64),
        )


class _Sequences:
    """Completed sequences gathered pass by pass (detached values only), in the order found."""

    def __init__(self) -> None:
        self.blocks: list[_Block] = []
        self.single = _SingleRows()
        self.count = 0

    def add(self, result: Pass, rows: Rows) -> Rows:
        """Keep the valid rows of a pass; return their differentiable quantities."""
        actions, branching, kept = result.actions, result.branching, rows
        if not bool(result.valid.all()):
            keep = result.valid.nonzero().flatten()
            actions, branching = actions[keep], branching[keep]
            kept = Rows(rows.log_prob[keep], rows.objective[keep], rows.loss[keep])
        count = int(actions.shape[0])
        if count == 1:
            self.single.add(actions[0].tolist(), branching[0].tolist(), result.sites, kept)
        elif count:
            self._take_single()
            lengths = torch.full((count,), actions.shape[1], dtype=torch.long)
            detached = Rows(*(value.detach() for value in kept))
            self.blocks.append(_Block(actions, branching, lengths, [result.sites] * count, *detached))
        self.count += count
        return kept

    def _take_single(self) -> None:
        """Close the run of one-row passes gathered so far into a block, keeping the order found."""
        block = self.single.block()
        if block is not None:
            self.blocks.append(block)
            self.single = _SingleRows()

    def build(self) -> Enumeration:
        self._take_single()
        width = max(block.actions.shape[1] for block in self.blocks)
        paths = torch.full((self.count, width), -1, dtype=torch.long)
        branching = torch.zeros(self.count, width, dtype=torch.bool)
        sites: list[list[str]] = []
        row = 0
        for block in self.blocks:
            count, length = block.actions.shape
            paths[row : row + count, :length] = block.actions
            branching[row : row + count, :length] = block.branching
            sites.extend(block.sites)
            row += count
        return Enumeration(
            paths=paths,
            lengths=torch.cat([block.lengths for block in self.blocks]),
            branching=branching,
            sites=sites,
            log_prob=torch.cat([block.log_prob for block in self.blocks]),
            objective=torch.cat([block.objective for block in self.blocks]),
            loss=torch.cat([block.loss for block in self.blocks]),
        )


def _spawned(result: Pass) -> list[Prefix]:
    return [
        Prefix(result.actions[row, :slot].tolist() + [action], result.probs[row, :slot].tolist() + [prob])
        for row, slot, action, prob in result.spawns
    ]


def _budget_error(
    found: int, pending: int, max_sequences: int, *, first_path: float | None = None
) -> SequenceBudgetError:
    """The refusal of a tree found over budget. ``first_path``: in batched mode, the product of the
    numbers of feasible actions along round 0's path, Knuth's estimate of the tree's size from
    that one path (not a random one, so a rough estimate)."""
    suggested = max(10 * max_sequences, found + pending)
    estimate = ""
    if first_path is not None:
        estimate = (
            f"; along the first path the numbers of feasible actions multiply to {first_path:.3g}, "
            "Knuth's estimate of the tree's size from that one path"
        )
        suggested = max(suggested, _round_up(first_path))
    return SequenceBudgetError(
        f"the episode has more than max_sequences={max_sequences:,} action sequences ({found:,} completed "
        f"and {pending:,} more prefixes pending when the enumeration stopped{estimate}). Shrink the problem "
        f"(fewer steps, fewer actions, a shorter horizon) or pass a larger max_sequences, for example "
        f"max_sequences={suggested:,}. The check runs the episode once per sequence."
    )


def _path_widths(result: Pass, before: list[float]) -> list[float]:
    """The product of the numbers of feasible actions up to each decision of a sequential pass's
    path, given those products ``before`` along the prefix it replayed. Past the prefix, a
    decision's number of feasible actions is one plus the alternatives spawned there."""
    alternatives: dict[int, int] = {}
    for _, slot, _, _ in result.spawns:
        alternatives[slot] = alternatives.get(slot, 0) + 1
    widths = list(before)
    width = widths[-1] if widths else 1.0
    for slot in range(len(before), int(result.actions.shape[1])):
        width *= 1 + alternatives.get(slot, 0)
        widths.append(width)
    return widths


class _TreeEstimate:
    """Knuth's estimate of a tree's size (Knuth 1975, "Estimating the efficiency of backtrack
    programs"): the product of the numbers of feasible actions along a path is an unbiased estimate of
    the number of leaves when the path is drawn uniformly at each decision. Here the paths are the
    depth-first walk's own, not random ones, so their mean is only a guess. It refuses a tree early
    only when, after ``_ESTIMATE_AFTER_PASSES`` passes and ``_ESTIMATE_AFTER_SECONDS`` of enumeration,
    the guess is at least ``_ESTIMATE_MARGIN`` times the budget *and* it is calibrated: on the largest
    subtree the walk has completed (at least ``_CALIBRATION_LEAVES`` sequences), the same estimate is
    within ``_CALIBRATION_RATIO`` of the exact count. A tree whose first branches are much bushier than
    the rest (a stop action tried after "continue") fails the calibration and is not refused early."""

    def __init__(self, max_sequences: int) -> None:
        self.max_sequences = max_sequences
        self.total = 0.0
        self.paths: list[list[int]] = []
        self.widths: list[list[float]] = []
        self.start = time.perf_counter()

    def add(self, actions: list[int], widths: list[float], pending: list[tuple[Prefix, list[float]]], found: int) -> None:
        """Record a completed path and the products of feasible actions along it; raise
        :class:`SequenceBudgetError` when the estimate says the tree is far over budget."""
        self.total += widths[-1] if widths else 1.0
        self.paths.append(actions)
        self.widths.append(widths)
        count = len(self.paths)
        if count < _ESTIMATE_AFTER_PASSES or count % _ESTIMATE_AFTER_PASSES:
            return
        mean = self.total / count
        if mean < _ESTIMATE_MARGIN * self.max_sequences or time.perf_counter() - self.start < _ESTIMATE_AFTER_SECONDS:
            return
        calibration = self._calibration(pending)
        if calibration is None:
            return
        leaves, ratio = calibration
        raise SequenceBudgetError(
            f"the episode has an estimated {mean:.3g} action sequences, far more than max_sequences="
            f"{self.max_sequences:,}: over the first {count:,} sequences of the depth-first walk "
            f"({time.perf_counter() - self.start:.1f} s), the product of the numbers of feasible actions along "
            f"each sequence averages {mean:.3g} (Knuth's estimate of a tree's size; on a completed subtree of "
            f"{leaves:,} sequences the same estimate was {ratio:.2f} times the exact count; {found:,} sequences "
            f"completed and {len(pending):,} prefixes pending so far). Shrink the problem (fewer steps, fewer "
            f"actions, a shorter horizon) or, if the estimate is wrong, pass max_sequences={_round_up(mean):,} "
            f"or more. The check runs the episode once per sequence."
        )

    def _calibration(self, pending: list[tuple[Prefix, list[float]]]) -> tuple[int, float] | None:
        """``(leaves, estimate / leaves)`` on the largest completed subtree around the last path, or
        None when that subtree is too small or the estimate is off there."""
        last = self.paths[-1]
        # The subtree of last[:depth] is complete when no pending prefix shares those actions.
        shared = 0
        for prefix, _ in pending:
            common = 0
            for a, b in zip(prefix.actions, last):
                if a != b:
                    break
                common += 1
            shared = max(shared, common)
        depth = shared + 1
        if depth > len(last):
            return None
        leaves = 0
        estimate = 0.0
        # A depth-first walk completes a subtree's sequences one after another.
        for path, widths in zip(reversed(self.paths), reversed(self.widths)):
            if path[:depth] != last[:depth]:
                break
            leaves += 1
            estimate += widths[-1] / (widths[depth - 1] if depth > 0 else 1.0)
        if leaves < _CALIBRATION_LEAVES:
            return None
        ratio = estimate / leaves / leaves
        if not 1 / _CALIBRATION_RATIO <= ratio <= _CALIBRATION_RATIO:
            return None
        return leaves, ratio


def _round_up(value: float) -> int:
    """``value`` rounded up to two significant digits."""
    magnitude = 10 ** max(int(math.floor(math.log10(max(value, 1.0)))) - 1, 0)
    return int(math.ceil(value / magnitude) * magnitude)


# Refuse a tree by its estimated size only past this many passes and seconds, and this many times
# the budget: small trees finish first, and an estimate from a biased sample of paths needs room;
# and only when the estimate was right, within this ratio, on a completed subtree of this many sequences.
_ESTIMATE_AFTER_PASSES = 32
_ESTIMATE_AFTER_SECONDS = 1.0
_ESTIMATE_MARGIN = 10
_CALIBRATION_LEAVES = 16
_CALIBRATION_RATIO = 2.0


def _verify_same(
    objective: torch.Tensor, loss: torch.Tensor, objective_before: torch.Tensor, loss_before: torch.Tensor
) -> None:
    """Raise if a replay's outputs differ from the first run's (tensors of the same shape, one value
    per sequence, sequence 0 first)."""
    for name, now, before in (("objective", objective, objective_before), ("loss", loss, loss_before)):
        now, before = now.detach().reshape(-1), before.detach().reshape(-1)
        close = torch.isclose(now, before, rtol=1e-9, atol=1e-12)
        if not bool(close.all()):
            index = int((~close).nonzero()[0, 0])
            which = "the first action sequence" if index == 0 else f"action sequence {index}"
            raise NondeterministicEpisodeError(
                f"replaying {which} gave {name} {float(now[index]):.17g}; its first run gave "
                f"{float(before[index]):.17g}. The episode keeps state between runs that changes what it returns "
                "(a generator or a counter created outside the episode, a cache): create such state inside "
                "the episode, or seed it there."
            )


def _check_complete(result: Pass, lengths: torch.Tensor) -> None:
    if not bool(result.valid.all()):
        raise NondeterministicEpisodeError(
            "forcing a known action sequence, the episode offered no probability to one of its actions: "
            "the episode does not behave the same way when its sequences are replayed."
        )
    past = torch.arange(result.branching.shape[1])[None, :] >= lengths[:, None]
    if bool((result.branching & past).any()):
        raise NondeterministicEpisodeError(
            "forcing a known action sequence, the episode reached a decision with several feasible actions "
            "after the end of that sequence. In batched mode, rows that have finished must not branch: give "
            "them a distribution with a single action of nonzero probability (for example "
            "logits.masked_fill(done[:, None] & (actions != 0), float('-inf'))), or stop sampling for them. "
            "Otherwise the sequences of a row depend on the other rows of the batch."
        )


def _as_float64(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(float(value), dtype=torch.float64)
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise EpisodeOutputError(
            f"the episode's {name} is {type(value).__name__}"
            + (f" of dtype {value.dtype}" if isinstance(value, torch.Tensor) else "")
            + "; it must be a floating-point tensor."
        )
    return value


def _finite_on_cpu(value: torch.Tensor, name: str) -> torch.Tensor:
    if not bool(torch.isfinite(value.detach()).all()):
        raise EpisodeOutputError(f"the episode's {name} is not finite ({value.detach().tolist()}).")
    # Exact quantities are accumulated on the CPU, whatever device the episode ran on.
    return value.to(device="cpu", dtype=torch.float64)


def _pair(output: Any) -> tuple[Any, Any]:
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        raise EpisodeOutputError(
            f"the episode returned {type(output).__name__}; it must return a pair (objective, loss): "
            "the quantity whose expectation is maximized, and the scalar the implementation minimizes."
        )
    return output[0], output[1]


class Runner:
    """Runs an episode's passes: the base of :class:`SequentialRunner` and :class:`BatchedRunner`.

    Arguments:
        episode: the user's episode function.
        max_sequences: stop with :class:`~reinforce_check.SequenceBudgetError` past this many sequences.
        replay_state: in scoped mode, the generator state every run starts from (None otherwise).
    """

    def __init__(
        self, episode: Episode, *, max_sequences: int, replay_state: randomness.RandomState | None = None
    ) -> None:
        self.episode = episode
        self.max_sequences = max_sequences
        self.replay_state = replay_state
        self.start_state: randomness.RandomState | None = replay_state
        self.passes_run = 0
        self.rows_run = 0
        self.calls_without_gradient = 0
        self.calls_gradient_off = 0
        self.calls_inference_mode = 0
        self.calls_recorded = 0
        self.outside_calls = 0
        self._found: Enumeration | None = None

    # What each mode says for itself.

    def _call(self, rows: int) -> Any:
        raise NotImplementedError

    def _outputs(self, output: Any, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def passes(self) -> Iterator[Rows]:
        """Differentiable rows of the sequences completed, pass by pass; :attr:`found` afterwards."""
        raise NotImplementedError

    def replay_blocks(self) -> Iterator[Rows]:
        """Every known sequence again, with gradient, in as few episode calls as the mode allows."""
        raise NotImplementedError

    def objective(self) -> float:
        """Exact J = sum_a p(a) objective(a) at the current parameters (call inside :meth:`replaying`)."""
        raise NotImplementedError

    # Shared by both modes.

    @property
    def scoped(self) -> bool:
        return self.replay_state is not None

    def in_scoped_mode(self) -> Runner:
        """A runner of the same kind that enumerates only draws inside @enumerate_actions code and
        replays every other draw from the generator state this runner started from."""
        assert self.start_state is not None, "in_scoped_mode() is for a runner whose passes have started"
        return type(self)(self.episode, max_sequences=self.max_sequences, replay_state=self.start_state)

    @property
    def found(self) -> Enumeration:
        """Every sequence, once :meth:`passes` is exhausted."""
        if self._found is None:
            raise RuntimeError("the enumeration has not finished: exhaust passes() first")
        return self._found

    def _enumerating(self) -> contextlib.AbstractContextManager[None]:
        """Around a whole enumeration: :meth:`replaying`, from the generator state it starts with
        (kept for a scoped restart)."""
        if self.replay_state is None:
            self.start_state = randomness.capture()
        return self.replaying(self.start_state)

    @contextlib.contextmanager
    def replaying(self, before: randomness.RandomState | None = None) -> Iterator[None]:
        """The context in which episodes run: it watches the global generators (unscoped mode; from
        ``before``, a snapshot just taken, if given), or leaves them as the check found them when it
        ends (scoped mode)."""
        if self.replay_state is None:
            with randomness.watch(before):
                yield
            return
        try:
            yield
        finally:
            randomness.restore(self.replay_state)

    def _run(self, chooser: Any, rows: int, *, first: bool = False) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """One episode call under intercepted samplers: the chooser and ``(objective, loss)``."""
        outside = None
        if self.replay_state is not None:
            # Every run sees the same random numbers outside the enumerated draws.
            randomness.restore(self.replay_state)
            outside = OutsideDraws()
        with intercept_samplers(chooser, outside=outside):
            output = self._call(rows)
        if first and chooser.cursor == 0:
            raise NoSamplerCallError(no_sampler_call_message(self.episode))
        if outside is not None:
            self._check_outside(outside)
        objective, loss = self._outputs(output, rows)
        return chooser, objective, loss

    def _check_outside(self, outside: OutsideDraws) -> None:
        self.outside_calls += outside.calls
        if outside.with_grad:
            raise UninterceptedRandomnessError(
                f"{outside.with_grad} sampler call(s) outside @enumerate_actions code drew from probabilities that "
                "depend on the checked parameters (they require grad). Such draws are sampled, not enumerated, "
                "so J and its gradient would silently ignore them. Mark the code that makes them with "
                "@enumerate_actions too, or leave those parameters out of params."
            )

    def _pass(
        self, plan: Plan, *, first: bool = False, record_supports: bool = False, own_gradient_off: bool = False
    ) -> tuple[Pass, Rows]:
        """Run one pass of the enumeration and count it. ``own_gradient_off``: the runner itself runs the
        pass without gradient, so its sampler calls say nothing about the episode's."""
        chooser = PrefixChooser(plan, record_supports=record_supports)
        _, objective, loss = self._run(chooser, plan.rows, first=first)
        result = chooser.finish()
        self.passes_run += 1
        self.rows_run += plan.rows
        if not own_gradient_off:
            self.calls_without_gradient += result.calls_without_gradient
            self.calls_gradient_off += result.calls_gradient_off
            self.calls_inference_mode += result.calls_inference_mode
            self.calls_recorded += result.calls_recorded
        return result, Rows(result.log_prob, objective, loss)

    def _finish(self, sequences: _Sequences, *, replay_verified: bool) -> Enumeration:
        found = sequences.build()
        found.passes = self.passes_run
        found.rows_run = self.rows_run
        found.calls_without_gradient = self.calls_without_gradient
        found.calls_gradient_off = self.calls_gradient_off
        found.calls_inference_mode = self.calls_inference_mode
        found.calls_recorded = self.calls_recorded
        found.outside_calls = self.outside_calls
        found.scoped = self.scoped
        found.replay_verified = replay_verified
        self._found = found
        return found

    def _forced(self, rows: slice) -> tuple[PrefixChooser, torch.Tensor]:
        """A chooser forcing known sequences, and their lengths."""
        found = self.found
        paths, lengths = found.paths[rows], found.lengths[rows]
        required = found.required_decisions()[rows]
        return PrefixChooser(Plan.known(paths, lengths, required)), lengths

    def _replay_rows(self, rows: slice) -> Rows:
        with self.replaying():
            return self._forced_rows(rows)

    def _forced_rows(self, rows: slice) -> Rows:
        """Run the known sequences ``rows`` again, with gradient (inside :meth:`replaying`)."""
        chooser, lengths = self._forced(rows)
        _, objective, loss = self._run(chooser, int(lengths.shape[0]))
        result = chooser.finish()
        _check_complete(result, lengths)
        return Rows(result.log_prob, objective, loss)

    def replay(self, index: int) -> Rows:
        """Run sequence ``index`` alone, with gradient (one row)."""
        return self._replay_rows(slice(index, index + 1))

    def verify_replay(self) -> None:
        """Replay the first sequence and compare: catches state kept between runs that the chooser
        cannot see (a private generator or a counter created outside the episode). Nothing is run
        when the enumeration has done this already."""
        found = self.found
        if found.replay_verified:
            return
        with torch.no_grad():
            rows = self.replay(0)
        _verify_same(rows.objective, rows.loss, found.objective[0], found.loss[0])


class SequentialRunner(Runner):
    """``episode()`` runs one episode; one pass completes one sequence.

    >>> def episode():
    ...     coin = torch.distributions.Bernoulli(probs=torch.tensor(0.25)).sample()
    ...     return coin, torch.zeros(())
    >>> runner = SequentialRunner(episode, max_sequences=10)
    >>> [float(rows.log_prob.exp()) for rows in runner.passes()]
    [0.75, 0.25]
    """

    def _call(self, rows: int) -> Any:
        return self.episode()

    def _outputs(self, output: Any, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        objective, loss = _pair(output)
        return self._scalar(objective, "objective"), self._scalar(loss, "loss")

    @staticmethod
    def _scalar(value: Any, name: str) -> torch.Tensor:
        """One of the episode's outputs as a ``(1,)`` float64 CPU tensor, after checking it."""
        value = _as_float64(value, name)
        if value.numel() != 1:
            raise EpisodeOutputError(
                f"the episode's {name} has shape {tuple(value.shape)}; it must be a scalar tensor. "
                "If the episode runs a batch of independent episodes, call check_reinforce(..., batched=True) "
                "and take the batch size as the episode's argument."
            )
        # One conversion to a Python number checks a scalar more cheaply than isfinite().all().
        if not math.isfinite(value.item()):
            raise EpisodeOutputError(f"the episode's {name} is not finite ({value.item()}).")
        # Exact quantities are accumulated on the CPU, whatever device the episode ran on.
        return value.reshape(1).to(device="cpu", dtype=torch.float64)

    def passes(self) -> Iterator[Rows]:
        sequences = _Sequences()
        estimate = _TreeEstimate(self.max_sequences)
        with self._enumerating():
            # Each pending prefix with the products of the numbers of feasible actions along it.
            stack: list[tuple[Prefix, list[float]]] = [(Prefix([], []), [])]
            while stack:
                prefix, before = stack.pop()
                result, rows = self._pass(Plan.prefix(prefix.actions, prefix.probs), first=self.passes_run == 0)
                yield sequences.add(result, rows)
                spawned = _spawned(result)
                widths = _path_widths(result, before)
                # Deepest slot on top, smaller actions above larger: sequences come out in lexicographic order.
                order = sorted(range(len(spawned)), key=lambda i: (len(spawned[i].actions), -spawned[i].actions[-1]))
                stack.extend((spawned[i], widths[: len(spawned[i].actions)]) for i in order)
                if sequences.count + len(stack) > self.max_sequences:
                    raise _budget_error(sequences.count, len(stack), self.max_sequences)
                estimate.add(result.actions[0].tolist(), widths, stack, sequences.count)
        self._finish(sequences, replay_verified=False)

    def replay_blocks(self) -> Iterator[Rows]:
        for index in range(len(self.found)):
            yield self.replay(index)

    def objective(self) -> float:
        # One run per sequence: a light chooser and one interception for all the runs keep the
        # check's own cost per run small next to the episode's.
        found = self.found
        lengths = found.lengths.tolist()
        paths = [path[:length] for path, length in zip(found.paths.tolist(), lengths)]
        replayer = SequenceReplayer(paths, found.required_decisions().tolist())
        outside = OutsideDraws() if self.scoped else None
        total = 0.0
        with torch.no_grad(), intercept_samplers(replayer, outside=outside):
            for index in range(len(found)):
                if self.replay_state is not None:
                    randomness.restore(self.replay_state)
                replayer.start(index)
                objective = self._scalar(_pair(self.episode())[0], "objective")
                replayer.finish()
                total += math.exp(replayer.log_prob) * float(objective)
        return total


class BatchedRunner(Runner):
    """``episode(batch_size)`` runs independent rows; passes run in batched rounds.

    >>> def episode(rows):
    ...     coins = torch.distributions.Bernoulli(probs=torch.full((rows,), 0.25, dtype=torch.float64)).sample()
    ...     return coins, torch.zeros(rows)
    >>> runner = BatchedRunner(episode, max_sequences=10)
    >>> [rows.log_prob.exp().tolist() for rows in runner.passes()]
    [[0.75, 0.25]]
    """

    def _call(self, rows: int) -> Any:
        return self.episode(rows)

    def _outputs(self, output: Any, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        converted = []
        for name, value in zip(("objective", "loss"), _pair(output)):
            value = _as_float64(value, name)
            if value.shape != (rows,):
                raise EpisodeOutputError(
                    f"in batched mode episode({rows}) must return a {name} of shape ({rows},), one value "
                    f"per row; it returned shape {tuple(value.shape)}."
                )
            converted.append(_finite_on_cpu(value, name))
        return converted[0], converted[1]

    def _run(self, chooser: Any, rows: int, *, first: bool = False) -> tuple[Any, torch.Tensor, torch.Tensor]:
        result = super()._run(chooser, rows, first=first)
        if self.replay_state is not None and randomness.moved_since(self.replay_state):
            raise UninterceptedRandomnessError(
                "in batched mode, random numbers were drawn outside @enumerate_actions code: which row gets "
                "which number depends on the batch's size and order, so the rows are not the same episodes "
                "from one run to the next. Check this episode in sequential mode (batched=False), where every "
                "run replays the same random numbers."
            )
        return result

    def passes(self) -> Iterator[Rows]:
        sequences = _Sequences()
        with self._enumerating():
            # Round 0 only discovers: one free row, run without gradient. Its sequence is run again,
            # with gradient, as the first row of round 1, which therefore also replays it in another
            # episode call (what verify_replay does in sequential mode) at the cost of one row.
            with torch.no_grad():
                first, first_rows = self._pass(Plan.free(1), first=True, record_supports=True, own_gradient_off=True)
            pending = [Prefix(first.actions[0].tolist(), first.probs[0].tolist()), *_spawned(first)]
            speculation = Speculation(first.supports, pending, max_sequences=self.max_sequences)
            kept: list[Rows] = []
            graph_rows = 0
            while pending:
                if sequences.count + len(pending) > self.max_sequences:
                    first_path = math.prod(float(mask.sum()) for mask in first.supports.values())
                    raise _budget_error(sequences.count, len(pending), self.max_sequences, first_path=first_path)
                cap = max(self.max_sequences - sequences.count, len(pending))
                plan = speculation.plan(pending, cap=cap)
                result, rows = self._pass(plan)
                if not kept:
                    # Row 0 replayed round 0's whole sequence (the first pending prefix comes first).
                    _verify_same(rows.objective[0], rows.loss[0], first_rows.objective[0], first_rows.loss[0])
                kept.append(sequences.add(result, rows))
                graph_rows += plan.rows
                pending = _spawned(result)
                speculation.update(bool(result.valid.all()))
            found = self._finish(sequences, replay_verified=True)
            if graph_rows > _WASTE * len(found):
                # Most rows were guesses that proved infeasible (stop actions, masks): a backward pass
                # over them would cost more than running the sequences again, with gradient, in one
                # batch (under the same watch of the generators as the rounds).
                replayed = self._forced_rows(slice(None))
                _verify_same(replayed.objective, replayed.loss, found.objective, found.loss)
                found.passes += 1
                found.rows_run += len(found)
                kept = [replayed]
        yield kept[0] if len(kept) == 1 else Rows(*(torch.cat(parts) for parts in zip(*kept)))

    def replay_blocks(self) -> Iterator[Rows]:
        yield self._replay_rows(slice(None))

    def objective(self) -> float:
        chooser, lengths = self._forced(slice(None))
        with torch.no_grad():
            _, objective, _ = self._run(chooser, len(self.found))
            result = chooser.finish()
            _check_complete(result, lengths)
        return float((result.log_prob.exp() * objective).sum())


# Above this many graph rows per sequence, the gradients come from a replay of the sequences alone.
_WASTE = 2


def enumerate_with(runner: Runner, consume: Callable[[Iterator[Rows]], T]) -> tuple[Runner, T]:
    """Hand ``runner``'s passes to ``consume``; if the episode turns out to mark its policy with
    @enumerate_actions, start again with a runner of the same kind in scoped mode.

    Returns the runner that finished and what ``consume`` returned.
    """
    try:
        return runner, consume(runner.passes())
    except ScopeDetected:
        pass
    scoped = runner.in_scoped_mode()
    return scoped, consume(scoped.passes())


def enumerate_sequences(episode: Episode, *, batched: bool, max_sequences: int) -> Enumeration:
    """Run ``episode`` once for every terminating action sequence and return them.

    >>> def episode():
    ...     coin = torch.distributions.Bernoulli(probs=torch.tensor(0.25)).sample()
    ...     return coin, torch.zeros(())
    >>> found = enumerate_sequences(episode, batched=False, max_sequences=10)
    >>> len(found), found.log_prob.exp().tolist()
    (2, [0.75, 0.25])
    """
    kind = BatchedRunner if batched else SequentialRunner
    runner, _ = enumerate_with(kind(episode, max_sequences=max_sequences), lambda passes: sum(1 for _ in passes))
    return runner.found
