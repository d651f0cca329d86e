"""Running an episode once for every terminating action sequence.

Sequential mode (``episode()`` runs one episode) walks the tree of action sequences depth-first:
each run replays a prefix, takes the first feasible action at every later decision and records the
other feasible actions as new prefixes, so every run completes exactly one new sequence (as Pyro's
sequential enumeration does, but driven by the intercepted samplers, with no annotations).

Batched mode (``episode(batch_size)`` runs independent rows) runs in rounds. Round 0 is one free
row, run without gradient; it reveals the support of every decision along its path. Each later
round runs, as one batch, every pending prefix extended by the product of the supports seen so far
(see :mod:`reinforce_check.chooser`); round 0's own sequence is the first row of round 1, which
replays it in another episode call (the replay check of sequential mode, for one row). A tree whose
whole guess takes at most a few thousand rows is guessed whole in round 1, so a tree whose supports
do not depend on the history takes two episode calls. A larger tree is probed one slot deep first;
if all its guesses were feasible, the next round guesses as deep as the budget allows; a tree whose
supports depend on the history (stop actions, masks) then keeps guessing one slot deep. Every
sequence still completes in exactly one valid row. The rows' graphs are kept until the last round,
and the gradients come from one set of backward passes over all of them, or, when most guessed rows
proved infeasible, from one more batch that runs the sequences alone.

Once the sequences are known, :func:`evaluate_objective` forces all of them in a single batch
(the paper's "single minibatch whose size is #A†") to evaluate J at other parameter values.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from . import randomness
from .chooser import Pass, PrefixChooser, SequenceReplayer
from .errors import (
    EpisodeOutputError,
    NondeterministicEpisodeError,
    NoSamplerCallError,
    SequenceBudgetError,
    UninterceptedRandomnessError,
)
from . import patching
from .patching import ScopeDetected, intercept_samplers

__all__ = [
    "Enumeration",
    "enumerate_sequences",
    "evaluate_objective",
    "replay_all",
    "replay_sequence",
    "replaying",
    "verify_replay",
]

Episode = Callable[..., Any]


@dataclass(frozen=True)
class _Mode:
    """How passes run: in scoped mode, from a fixed generator state (None otherwise)."""

    replay_state: randomness.RandomState | None = None

    @property
    def scoped(self) -> bool:
        return self.replay_state is not None


_UNSCOPED = _Mode()


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
    no_grad_calls: int = 0
    """Sampler calls made under ``torch.no_grad()`` during the enumeration."""
    unscoped_calls: int = 0
    """In scoped mode, sampler calls outside @enumerate_actions code (sampled, not enumerated)."""
    mode: _Mode = field(default_factory=lambda: _UNSCOPED)
    """Whether the passes ran in scoped mode, and from which generator state."""
    replay_verified: bool = False
    """Whether the first sequence was already run twice, in two episode calls, with equal outputs."""

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


def _run_pass(
    episode: Episode,
    chooser: PrefixChooser,
    *,
    batched: bool,
    rows: int,
    mode: _Mode = _UNSCOPED,
    first: bool = False,
) -> tuple[Pass, torch.Tensor, torch.Tensor]:
    if mode.replay_state is not None:
        # Every run sees the same random numbers outside the enumerated draws.
        randomness.restore(mode.replay_state)
    with intercept_samplers(chooser, scoped=mode.scoped):
        output = episode(rows) if batched else episode()
    if first and chooser.cursor == 0:
        raise NoSamplerCallError(
            "the episode made no call to an intercepted sampler, so there is nothing to enumerate. "
            "Sample actions with torch.distributions.Categorical/OneHotCategorical/Bernoulli .sample(), "
            "torch.multinomial or torch.bernoulli; a policy that picks actions with argmax, a Gumbel-max "
            "trick or numpy cannot be checked."
        )
    if mode.replay_state is not None:
        _check_scoped_pass(mode.replay_state, batched=batched)
    objective, loss = _episode_outputs(output, rows=rows, batched=batched)
    result = chooser.finish()
    result.unscoped_calls = patching.unscoped_calls()[0]
    return result, objective, loss


def _check_scoped_pass(replay_state: randomness.RandomState, *, batched: bool) -> None:
    calls, with_grad = patching.unscoped_calls()
    if with_grad:
        raise UninterceptedRandomnessError(
            f"{with_grad} sampler call(s) outside @enumerate_actions code drew from probabilities that "
            "depend on the checked parameters (they require grad). Such draws are sampled, not enumerated, "
            "so J and its gradient would silently ignore them. Mark the code that makes them with "
            "@enumerate_actions too, or leave those parameters out of params."
        )
    if batched and randomness.moved_since(replay_state):
        raise UninterceptedRandomnessError(
            "in batched mode, random numbers were drawn outside @enumerate_actions code: which row gets "
            "which number depends on the batch's size and order, so the rows are not the same episodes from "
            "one run to the next. Check this episode in sequential mode (batched=False), where every run "
            "replays the same random numbers."
        )


def _episode_outputs(output: Any, *, rows: int, batched: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        raise EpisodeOutputError(
            f"the episode returned {type(output).__name__}; it must return a pair (objective, loss): "
            "the quantity whose expectation is maximized, and the scalar the implementation minimizes."
        )
    converted = []
    for name, value in zip(("objective", "loss"), output):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = torch.tensor(float(value), dtype=torch.float64)
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise EpisodeOutputError(
                f"the episode's {name} is {type(value).__name__}"
                + (f" of dtype {value.dtype}" if isinstance(value, torch.Tensor) else "")
                + "; it must be a floating-point tensor."
            )
        if batched:
            if value.shape != (rows,):
                raise EpisodeOutputError(
                    f"in batched mode episode({rows}) must return a {name} of shape ({rows},), one value "
                    f"per row; it returned shape {tuple(value.shape)}."
                )
        else:
            if value.numel() != 1:
                raise EpisodeOutputError(
                    f"the episode's {name} has shape {tuple(value.shape)}; it must be a scalar tensor. "
                    "If the episode runs a batch of independent episodes, call check_reinforce(..., batched=True) "
                    "and take the batch size as the episode's argument."
                )
            value = value.reshape(1)
        if not bool(torch.isfinite(value.detach()).all()):
            raise EpisodeOutputError(f"the episode's {name} is not finite ({value.detach().tolist()}).")
        # Exact quantities are accumulated on the CPU, whatever device the episode ran on.
        converted.append(value.to(device="cpu", dtype=torch.float64))
    return converted[0], converted[1]


class PassHook(Protocol):
    """Receives each pass's differentiable rows; ``reset`` forgets them if the enumeration restarts."""

    def __call__(self, log_prob: torch.Tensor, objective: torch.Tensor, loss: torch.Tensor) -> None: ...

    def reset(self) -> None: ...


class _Collector:
    """Gathers completed sequences pass by pass.

    Each pass's differentiable ``(log_prob, objective, loss)`` rows go to ``on_pass`` as soon as the
    pass ends, so that gradients are taken while the graph is small; only detached values are kept.
    With ``defer`` (batched mode, a few passes) they go to ``on_pass`` once, concatenated, when the
    enumeration ends: one set of backward passes over all rounds instead of one per round.
    """

    def __init__(self, on_pass: PassHook | None, mode: _Mode, *, defer: bool = False) -> None:
        self.on_pass = on_pass
        self.mode = mode
        self.deferred: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = [] if defer else None
        # Rows of the deferred graphs, wasted guesses included: what a backward pass over them costs.
        self.graph_rows = 0
        self.blocks: list[tuple[torch.Tensor, torch.Tensor, list[str]]] = []
        self.log_prob: list[torch.Tensor] = []
        self.objective: list[torch.Tensor] = []
        self.loss: list[torch.Tensor] = []
        self.count = 0
        self.no_grad_calls = 0
        self.unscoped_calls = 0
        self.passes = 0
        self.rows_run = 0

    def add(self, result: Pass, objective: torch.Tensor, loss: torch.Tensor) -> None:
        self.passes += 1
        self.rows_run += result.valid.shape[0]
        self.no_grad_calls += result.no_grad_calls
        self.unscoped_calls += result.unscoped_calls
        keep = result.valid.nonzero().flatten()
        kept = int(keep.shape[0])
        self.blocks.append((result.actions[keep], result.branching[keep], result.sites))
        log_prob, objective, loss = result.log_prob[keep], objective[keep], loss[keep]
        if self.deferred is not None:
            self.deferred.append((log_prob, objective, loss))
            self.graph_rows += result.valid.shape[0]
        elif self.on_pass is not None:
            self.on_pass(log_prob, objective, loss)
        self.log_prob.append(log_prob.detach())
        self.objective.append(objective.detach())
        self.loss.append(loss.detach())
        self.count += kept

    def add_discovery(self, result: Pass) -> None:
        """Count a pass run only to discover the tree (its sequences are run again later)."""
        self.passes += 1
        self.rows_run += result.valid.shape[0]
        self.unscoped_calls += result.unscoped_calls

    def __len__(self) -> int:
        return self.count

    def flush(self) -> None:
        """Hand the deferred rows to ``on_pass`` (deferred mode) and let their graphs go."""
        if self.deferred and self.on_pass is not None:
            if len(self.deferred) == 1:
                self.on_pass(*self.deferred[0])
            else:
                self.on_pass(*(torch.cat(parts) for parts in zip(*self.deferred)))
        self.deferred = None

    def build(self) -> Enumeration:
        width = max(block[0].shape[1] for block in self.blocks)
        paths = torch.full((self.count, width), -1, dtype=torch.long)
        branching = torch.zeros(self.count, width, dtype=torch.bool)
        lengths = torch.empty(self.count, dtype=torch.long)
        sites: list[list[str]] = []
        row = 0
        for actions, branches, names in self.blocks:
            count, length = actions.shape
            paths[row : row + count, :length] = actions
            branching[row : row + count, :length] = branches
            lengths[row : row + count] = length
            sites.extend([names] * count)
            row += count
        return Enumeration(
            paths=paths,
            lengths=lengths,
            branching=branching,
            sites=sites,
            log_prob=torch.cat(self.log_prob),
            objective=torch.cat(self.objective),
            loss=torch.cat(self.loss),
            passes=self.passes,
            rows_run=self.rows_run,
            no_grad_calls=self.no_grad_calls,
            unscoped_calls=self.unscoped_calls,
            mode=self.mode,
        )


@dataclass
class _Prefix:
    actions: list[int]
    probs: list[float]


def _spawned(result: Pass) -> list[_Prefix]:
    prefixes = []
    for row, slot, action, prob in result.spawns:
        prefixes.append(
            _Prefix(result.actions[row, :slot].tolist() + [action], result.probs[row, :slot].tolist() + [prob])
        )
    return prefixes


def _budget_error(found: int, pending: int, max_sequences: int) -> SequenceBudgetError:
    return SequenceBudgetError(
        f"the episode has more than max_sequences={max_sequences:,} action sequences ({found:,} completed "
        f"and {pending:,} more prefixes pending when the enumeration stopped). Shrink the problem (fewer "
        f"steps, fewer actions, a shorter horizon) or pass a larger max_sequences, for example "
        f"max_sequences={max(10 * max_sequences, found + pending):,}. The check runs the episode once per sequence."
    )


def enumerate_sequences(
    episode: Episode, *, batched: bool, max_sequences: int, on_pass: PassHook | None = None
) -> Enumeration:
    """Run ``episode`` once for every terminating action sequence.

    Arguments:
        episode: ``episode()`` (sequential) or ``episode(batch_size)`` (batched) returning
            ``(objective, loss)``.
        batched: whether ``episode`` takes a batch size and returns per-row tensors.
        max_sequences: stop with :class:`SequenceBudgetError` past this many sequences.
        on_pass: called after every pass with the differentiable ``(log_prob, objective, loss)``
            of its completed sequences (one row per sequence), before their graph is dropped.

    >>> def episode():
    ...     coin = torch.distributions.Bernoulli(probs=torch.tensor(0.25)).sample()
    ...     return coin, torch.zeros(())
    >>> found = enumerate_sequences(episode, batched=False, max_sequences=10)
    >>> len(found), found.log_prob.exp().tolist()
    (2, [0.75, 0.25])
    """
    run = _enumerate_batched if batched else _enumerate_sequential
    before = randomness.capture()
    try:
        with randomness.watch(before):
            return run(episode, max_sequences, _Collector(on_pass, _UNSCOPED, defer=batched))
    except ScopeDetected:
        pass
    # The episode uses @enumerate_actions: start again, enumerating only the draws inside it and
    # replaying every other random draw from the generator state the check started with.
    if on_pass is not None:
        on_pass.reset()
    mode = _Mode(before)
    try:
        return run(episode, max_sequences, _Collector(on_pass, mode, defer=batched))
    finally:
        randomness.restore(before)


def verify_replay(episode: Episode, found: Enumeration, *, batched: bool) -> None:
    """Replay the first sequence and compare: catches state kept between runs that the chooser
    cannot see (a private generator or a counter created outside the episode).

    A batched enumeration has done this already (``found.replay_verified``); nothing is run then.
    """
    if found.replay_verified:
        return
    with torch.no_grad():
        log_prob, objective, loss = replay_sequence(episode, found, 0, batched=batched)
    _verify_same(objective, loss, found.objective[0], found.loss[0])


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


def _enumerate_sequential(episode: Episode, max_sequences: int, collector: _Collector) -> Enumeration:
    stack = [_Prefix([], [])]
    while stack:
        prefix = stack.pop()
        length = len(prefix.actions)
        chooser = PrefixChooser(
            1,
            forced=torch.tensor([prefix.actions], dtype=torch.long).reshape(1, length),
            forced_len=torch.tensor([length]),
            real_len=torch.tensor([length]),
            replay_probs=torch.tensor([prefix.probs], dtype=torch.float64).reshape(1, length),
        )
        result, objective, loss = _run_pass(
            episode, chooser, batched=False, rows=1, mode=collector.mode, first=not collector.passes
        )
        collector.add(result, objective, loss)
        # Deepest slot on top, smaller actions above larger: sequences come out in lexicographic order.
        spawned = _spawned(result)
        stack.extend(sorted(spawned, key=lambda p: (len(p.actions), -p.actions[-1])))
        if len(collector) + len(stack) > max_sequences:
            raise _budget_error(len(collector), len(stack), max_sequences)
    return collector.build()


def _speculate(pending: list[_Prefix], widths: dict[int, int], cap: int, max_depth: int) -> list[int]:
    """Choose how many slots past its prefix each pending prefix guesses (at most ``max_depth``),
    keeping the rows within ``cap``; ``widths`` holds how many actions are guessed at each slot."""
    depth = [0] * len(pending)
    sizes = [1] * len(pending)
    total = len(pending)
    grown = True
    while grown:
        grown = False
        for index, prefix in enumerate(pending):
            if depth[index] >= max_depth:
                continue
            width = widths.get(len(prefix.actions) + depth[index], 0)
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


def _speculated_rows(
    pending: list[_Prefix], guesses: dict[int, torch.Tensor], cap: int, max_depth: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows for one batched round: each pending prefix followed by every combination of guesses.

    Rows come prefix by prefix, in the order of ``pending``; the guesses of a prefix vary as
    mixed-radix digits, the last guessed slot fastest. Returns ``forced``, ``forced_len``,
    ``real_len``, ``replay_probs`` and ``speculation_index`` as
    :class:`~reinforce_check.chooser.PrefixChooser` takes them.
    """
    options = {slot: mask.nonzero().flatten() for slot, mask in guesses.items()}
    widths = {slot: int(actions.shape[0]) for slot, actions in options.items()}
    depths = _speculate(pending, widths, cap, max_depth)
    starts = [len(p.actions) for p in pending]
    ends = [start + depth for start, depth in zip(starts, depths)]
    width = max(ends, default=0)
    # Per prefix and column: the prefix's own actions (then -1), and the stride of each guessed
    # column's digit (the product of the widths of the guessed columns after it).
    heads = [p.actions + [-1] * (width - len(p.actions)) for p in pending]
    head_probs = [p.probs + [0.0] * (width - len(p.probs)) for p in pending]
    strides = []
    counts = []
    for start, end in zip(starts, ends):
        row = [0] * width
        stride = 1
        for column in range(end - 1, start - 1, -1):
            row[column] = stride
            stride *= widths[column]
        strides.append(row)
        counts.append(stride)
    count = torch.tensor(counts, dtype=torch.long)
    prefix_of_row = torch.repeat_interleave(torch.arange(len(pending)), count)
    offsets = torch.cumsum(count, 0) - count
    combination = torch.arange(int(count.sum())) - offsets[prefix_of_row]
    columns = torch.arange(width)
    start_of_row = torch.tensor(starts, dtype=torch.long)[prefix_of_row]
    end_of_row = torch.tensor(ends, dtype=torch.long)[prefix_of_row]
    guessed = (columns[None, :] >= start_of_row[:, None]) & (columns[None, :] < end_of_row[:, None])
    # Actions guessed at each column, padded to the widest column (padding is never indexed).
    table = torch.zeros(width, max([widths.get(c, 1) for c in range(width)], default=1), dtype=torch.long)
    column_width = torch.ones(width, dtype=torch.long)
    for column in range(width):
        if column in options:
            table[column, : widths[column]] = options[column]
            column_width[column] = max(widths[column], 1)
    stride_of_row = torch.tensor(strides, dtype=torch.long).reshape(len(pending), width)[prefix_of_row]
    digits = torch.where(guessed, combination[:, None].div(stride_of_row.clamp(min=1), rounding_mode="floor"), 0)
    digits = digits.remainder(column_width[None, :])
    heads_of_row = torch.tensor(heads, dtype=torch.long).reshape(len(pending), width)[prefix_of_row]
    forced = torch.where(guessed, table[columns[None, :], digits], heads_of_row)
    replay_probs = torch.tensor(head_probs, dtype=torch.float64).reshape(len(pending), width)[prefix_of_row]
    speculation_index = torch.where(guessed, digits, 0)
    return forced, end_of_row, start_of_row, replay_probs, speculation_index


def _enumerate_batched(episode: Episode, max_sequences: int, collector: _Collector) -> Enumeration:
    # Round 0 only discovers: one free row, run without gradient. Its sequence is run again, with
    # gradient, as the first row of round 1, which therefore also replays it in another episode call
    # (what verify_replay does in sequential mode) at the cost of one row instead of one more call.
    chooser = PrefixChooser.free(1, record_supports=True)
    with torch.no_grad():
        result, first_objective, first_loss = _run_pass(
            episode, chooser, batched=True, rows=1, mode=collector.mode, first=True
        )
    collector.add_discovery(result)
    guesses = dict(result.supports)
    pending = [_Prefix(result.actions[0].tolist(), result.probs[0].tolist()), *_spawned(result)]
    # How deep each round guesses past its prefixes. A tree small enough to guess whole is guessed
    # whole at once: a round costs about as much as hundreds of rows, so a few wasted rows are
    # cheaper than a probe. A larger tree is probed one slot deep first, which tests whether round
    # 0's supports hold elsewhere: if every guess was feasible, the next round guesses as deep as the
    # budget allows; once a guess fails (a stop action, masking), guessing stays one slot deep, so
    # wasted rows stay few.
    max_depth = max_sequences if _full_guess_rows(pending, guesses) <= _EAGER_ROWS else 1
    round_index = 0
    while pending:
        round_index += 1
        if len(collector) + len(pending) > max_sequences:
            raise _budget_error(len(collector), len(pending), max_sequences)
        cap = max(max_sequences - len(collector), len(pending))
        forced, forced_len, real_len, replay_probs, speculation_index = _speculated_rows(
            pending, guesses, cap, max_depth
        )
        rows = forced.shape[0]
        chooser = PrefixChooser(
            rows,
            forced=forced,
            forced_len=forced_len,
            real_len=real_len,
            replay_probs=replay_probs,
            guesses=guesses,
            speculation_index=speculation_index,
        )
        result, objective, loss = _run_pass(episode, chooser, batched=True, rows=rows, mode=collector.mode)
        if round_index == 1:
            # Row 0 replayed round 0's whole sequence (the first pending prefix, whose rows come first).
            _verify_same(objective[0], loss[0], first_objective[0], first_loss[0])
        collector.add(result, objective, loss)
        pending = _spawned(result)
        all_valid = bool(result.valid.all())
        if all_valid and max_depth == 1 and round_index == 1:
            max_depth = max_sequences
        elif not all_valid:
            max_depth = 1
    found = collector.build()
    found.replay_verified = True
    if collector.on_pass is not None and collector.graph_rows > _WASTE * len(found):
        # Most rows were guesses that proved infeasible (stop actions, masks): a backward pass over
        # them would cost more than running the sequences again, with gradient, in one batch.
        collector.deferred = None
        log_prob, objective, loss = replay_all(episode, found)
        _verify_same(objective, loss, found.objective, found.loss)
        found.passes += 1
        found.rows_run += len(found)
        collector.on_pass(log_prob, objective, loss)
    else:
        collector.flush()
    return found


# Above this many graph rows per sequence, the gradients come from a replay of the sequences alone.
_WASTE = 2


# A batched round costs about as much as several hundred rows (the episode's per-call overhead),
# so a tree whose full guess needs at most this many rows is guessed whole in round 1.
_EAGER_ROWS = 4096


def _full_guess_rows(pending: list[_Prefix], guesses: dict[int, torch.Tensor]) -> int:
    """Rows that guessing every slot past every pending prefix would take (round 0's supports)."""
    widths = {slot: int(mask.sum()) for slot, mask in guesses.items()}
    total = 0
    for prefix in pending:
        rows = 1
        slot = len(prefix.actions)
        while slot in widths and rows <= _EAGER_ROWS:
            rows *= max(widths[slot], 1)
            slot += 1
        total += rows
        if total > _EAGER_ROWS:
            break
    return total


def _forced_chooser(found: Enumeration, rows: slice) -> PrefixChooser:
    """Force known sequences. Only decisions up to a sequence's last choice must be replayed: forced
    decisions recorded after it (a finished row in a batch that ran on) may be absent in another batch."""
    paths, lengths = found.paths[rows], found.lengths[rows]
    required = _required_decisions(paths, found.branching[rows], lengths)
    return PrefixChooser(paths.shape[0], paths, lengths, required, replay_probs=None, spawn=False)


def _required_decisions(paths: torch.Tensor, branching: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """How many decisions of each sequence a replay must make: up to its last choice."""
    if not paths.shape[1]:
        return lengths
    positions = torch.arange(1, paths.shape[1] + 1)
    return (branching.long() * positions).max(dim=1).values


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


def evaluate_objective(episode: Episode, found: Enumeration, *, batched: bool, guarded: bool = True) -> float:
    """Exact J = sum_a p(a) objective(a) at the current parameters, forcing the known sequences.

    Runs under ``no_grad``: one batch of all sequences in batched mode, one run per sequence otherwise.
    With ``guarded=False`` the caller runs it inside :func:`replaying`, which several evaluations
    can then share.
    """
    with torch.no_grad(), (replaying(found) if guarded else contextlib.nullcontext()):
        if batched:
            chooser = _forced_chooser(found, slice(None))
            result, objective, _ = _run_pass(episode, chooser, batched=True, rows=len(found), mode=found.mode)
            _check_complete(result, chooser.forced_len)
            return float((result.log_prob.exp() * objective).sum())
        # One run per sequence: a light chooser and one interception for all the runs keep the
        # check's own cost per run small next to the episode's.
        replayer = _sequence_replayer(found)
        total = 0.0
        with intercept_samplers(replayer, scoped=found.mode.scoped):
            for index in range(len(found)):
                if found.mode.replay_state is not None:
                    randomness.restore(found.mode.replay_state)
                replayer.start(index)
                objective, _ = _episode_outputs(episode(), rows=1, batched=False)
                replayer.finish()
                total += math.exp(replayer.log_prob) * float(objective)
        return total


def _sequence_replayer(found: Enumeration) -> SequenceReplayer:
    lengths = found.lengths.tolist()
    required = _required_decisions(found.paths, found.branching, found.lengths).tolist()
    paths = [path[:length] for path, length in zip(found.paths.tolist(), lengths)]
    return SequenceReplayer(paths, required)


@contextlib.contextmanager
def replaying(found: Enumeration) -> Iterator[None]:
    """The context in which known sequences are replayed: it watches the global generators
    (unscoped mode), or leaves them as the check found them (scoped mode)."""
    replay_state = found.mode.replay_state
    if replay_state is None:
        with randomness.watch():
            yield
        return
    try:
        yield
    finally:
        randomness.restore(replay_state)


def replay_all(episode: Episode, found: Enumeration) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run every known sequence in one batch (batched mode), with gradient: ``(log_prob, objective, loss)``."""
    chooser = _forced_chooser(found, slice(None))
    with replaying(found):
        result, objective, loss = _run_pass(episode, chooser, batched=True, rows=len(found), mode=found.mode)
        _check_complete(result, chooser.forced_len)
    return result.log_prob, objective, loss


def replay_sequence(
    episode: Episode, found: Enumeration, index: int, *, batched: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run sequence ``index`` alone, with gradient: ``(log_prob, objective, loss)`` as scalars."""
    chooser = _forced_chooser(found, slice(index, index + 1))
    with replaying(found):
        result, objective, loss = _run_pass(episode, chooser, batched=batched, rows=1, mode=found.mode)
        _check_complete(result, chooser.forced_len)
    return result.log_prob[0], objective[0], loss[0]
