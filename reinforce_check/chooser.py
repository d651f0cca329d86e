"""The deterministic choosers that replace random sampling during a check.

One :class:`PrefixChooser` serves one run of the episode (one *pass*) over ``rows`` episodes at
once (one in sequential mode). Every categorical decision a row makes gets a *slot*, numbered in
call order. A :class:`Plan` gives each row a *forced path*:

* slots below ``replayed_len`` replay a prefix already known to be feasible (*replayed* slots);
* slots from ``replayed_len`` to the end of the path are *speculated*: the path guesses an action
  without knowing whether it is feasible (see :mod:`reinforce_check.speculation`);
* later slots are *free*.

Every decision goes through the rule of :mod:`reinforce_check.decision`; what the chooser adds is
which actions each row's node has covered elsewhere: nothing at a free slot; at a speculated slot
the guessed set, for the one row (the *canonical* row) that answers for the node, and everything
for the others; everything at a replayed slot. A row whose guess fails is *invalid*: it keeps
running (taking first actions, so the user's code sees only feasible actions) but contributes
nothing, and spawns nothing afterwards. Together these make every terminating action sequence
complete in exactly one valid row.

:class:`SequenceReplayer` forces known sequences one run at a time (finite differences in
sequential mode), through the same rule.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from . import recording
from .decision import decide, decide_rows, invalid_weights_error, weights_are_valid
from .errors import InvalidProbabilitiesError, NondeterministicEpisodeError

__all__ = ["Pass", "Plan", "PrefixChooser", "SequenceReplayer"]

# Probabilities replayed in another batch composition may differ in the last bits (BLAS blocking).
_REPLAY_RTOL = 1e-8
_REPLAY_ATOL = 1e-12


@dataclass
class Plan:
    """What each row of a pass is forced to do."""

    forced: torch.Tensor
    """``(rows, L)`` forced action at every slot of each row's path, ``-1`` past its end."""
    forced_len: torch.Tensor
    """``(rows,)`` length of each forced path."""
    replayed_len: torch.Tensor
    """``(rows,)`` how many slots of each path replay a prefix known to be feasible."""
    replay_probs: torch.Tensor | None = None
    """``(rows, L)`` probabilities seen when the replayed slots were discovered, compared on replay
    to detect nondeterminism; ``None`` to skip."""
    guessed: dict[int, torch.Tensor] = field(default_factory=dict)
    """Bool mask of the actions guessed at each speculated slot."""
    canonical: torch.Tensor | None = None
    """``(rows, L)`` whether the row answers for spawning at its speculated node (all, if None)."""
    spawn: bool = True
    """Whether the pass discovers the tree: it records the alternatives and the branching of every
    decision, and counts the sampler calls whose probabilities carry no gradient. Off when the set
    of sequences is already known: such a replay records branching only past each row's forced
    path, where a finished row must not branch, and counts nothing."""

    @property
    def rows(self) -> int:
        return int(self.forced.shape[0])

    @classmethod
    def free(cls, rows: int) -> Plan:
        """No forced action: every slot takes the first feasible action."""
        empty = torch.zeros(rows, 0, dtype=torch.long)
        zero = torch.zeros(rows, dtype=torch.long)
        return cls(empty, zero, zero, empty.double())

    @classmethod
    def prefix(cls, actions: Sequence[int], probs: Sequence[float]) -> Plan:
        """One row replaying a known-feasible prefix, then free."""
        length = len(actions)
        return cls(
            torch.tensor([list(actions)], dtype=torch.long).reshape(1, length),
            torch.tensor([length]),
            torch.tensor([length]),
            torch.tensor([list(probs)], dtype=torch.float64).reshape(1, length),
        )

    @classmethod
    def known(cls, paths: torch.Tensor, lengths: torch.Tensor, required: torch.Tensor) -> Plan:
        """Rows forcing known sequences; only their first ``required`` decisions must be replayed."""
        return cls(paths, lengths, required, spawn=False)


@dataclass
class Pass:
    """What one run of the episode produced, row by row."""

    actions: torch.Tensor
    """``(rows, slots)`` action taken at every slot."""
    probs: torch.Tensor
    """``(rows, slots)`` probability of that action (detached, float64)."""
    branching: torch.Tensor
    """``(rows, slots)`` whether the decision had more than one action of nonzero probability (False
    inside the forced paths of a plan that spawns nothing)."""
    log_prob: torch.Tensor
    """``(rows,)`` log-probability of each row's sequence, with gradient."""
    valid: torch.Tensor
    """``(rows,)`` False for rows whose speculated actions proved infeasible."""
    sites: list[str]
    """Entry point that made the decision at each slot."""
    spawns: list[tuple[int, int, int, float]] = field(default_factory=list)
    """New prefixes as ``(row, slot, action, probability)``: row's path up to ``slot``, then ``action``."""
    supports: dict[int, torch.Tensor] = field(default_factory=dict)
    """Support (nonzero mask) seen by row 0 at every slot, when asked for."""
    calls_without_gradient: int = 0
    """Sampler calls that could take more than one action from probabilities carrying no gradient
    (drawn under ``torch.no_grad()``, detached, or computed outside torch)."""
    calls_gradient_off: int = 0
    """Of those, calls made while gradient recording was off."""
    calls_inference_mode: int = 0
    """Of those, calls made under ``torch.inference_mode()``."""
    calls_recorded: int = 0
    """Sampler calls that could take more than one action, inside code marked with
    ``enumerate_actions``, from probabilities that carry gradient only because the check recorded
    the graph a run outside a check does not (see :mod:`reinforce_check.recording`)."""


def _check_shape(weights: torch.Tensor, site: str) -> None:
    if weights.dim() != 2 or weights.shape[1] == 0:
        raise InvalidProbabilitiesError(
            f"{site} received probabilities of shape {tuple(weights.shape)}; expected (K,) or (rows, K) with K >= 1."
        )


def _row_totals(weights: torch.Tensor, site: str, replacement: bool) -> torch.Tensor:
    """``(rows, 1)`` differentiable row sums of ``weights``, after checking they form distributions."""
    total, valid = weights_are_valid(weights)
    if not valid:
        error = invalid_weights_error(weights, site, replacement)
        if error is not None:
            raise error
    return total


class _PlanTables:
    """A plan as the tensor paths read it, built at a pass's first call that needs it (a small pass
    may never make one)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        rows, width = plan.forced.shape
        self.width = width
        self.shortest_replay = int(plan.replayed_len.min()) if rows else 0
        self.longest_replay = int(plan.replayed_len.max()) if rows else 0
        self.shortest_path = int(plan.forced_len.min()) if rows else 0
        self.longest_path = int(plan.forced_len.max()) if rows else 0
        self.column_max = plan.forced.max(dim=0).values.tolist() if rows and width else []
        self.guessed: dict[tuple[int, int], torch.Tensor] = {}
        self.guessed_all: dict[tuple[int, int], bool] = {}
        self.episode_of_row: dict[tuple[int, int], torch.Tensor] = {}

    @functools.cached_property
    def forced(self) -> torch.Tensor:
        """``(rows, width + 1)``: the forced actions, padded by one column of -1 so that every slot
        past the paths reads "free" (the plan holds -1 past each path's end already)."""
        free = torch.full((self.plan.rows, 1), -1, dtype=torch.long)
        return torch.cat([self.plan.forced, free], dim=1)

    def forced_column(self, slot: int) -> torch.Tensor:
        """``(rows,)``: the forced actions at ``slot``."""
        if slot < self.width:
            return self.plan.forced[:, slot]
        return self.forced[:, self.width]

    @functools.cached_property
    def answers(self) -> torch.Tensor:
        """``(rows, width + 1)``: whether the row answers for spawning at its node, slot by slot: a
        speculated slot (forced, not replayed) where the row is canonical."""
        plan = self.plan
        width = plan.forced.shape[1]
        answers = (self.forced >= 0) & (torch.arange(width + 1)[None, :] >= plan.replayed_len[:, None])
        if plan.canonical is not None and plan.canonical.shape[1]:
            # A slot past the canonical table reads its last column.
            last = plan.canonical.shape[1] - 1
            answers &= plan.canonical[:, torch.arange(width + 1).clamp(max=last)]
        return answers

    @functools.cached_property
    def replay_tolerance(self) -> torch.Tensor:
        """``(rows, width)``: how far a replayed probability may be from the one seen when its slot
        was discovered; infinite where the slot is not replayed."""
        plan = self.plan
        assert plan.replay_probs is not None
        tolerance = _REPLAY_ATOL + _REPLAY_RTOL * plan.replay_probs.abs()
        replayed = torch.arange(plan.replay_probs.shape[1])[None, :] < plan.replayed_len[:, None]
        return tolerance.masked_fill(~replayed, math.inf)

    @functools.cached_property
    def no_branching(self) -> torch.Tensor:
        """``(rows, 1)`` False: the branching a replay records inside its forced paths."""
        return torch.zeros(self.plan.rows, 1, dtype=torch.bool)


class _CallRows(NamedTuple):
    """Where the rows of one call stand in a pass's plan."""

    episode: torch.Tensor
    slot: torch.Tensor
    forced: torch.Tensor
    replayed: torch.Tensor | None
    """Whether each row's slot is replayed; None when none is."""


class _Deferred(NamedTuple):
    """A small call whose probability factors are taken when the pass ends."""

    weights: torch.Tensor
    version: int
    """The weights' version counter at the call: an in-place change afterwards is refused."""
    actions: list[int]
    dead: list[bool]
    per_row: int
    site: str


def _as_samples(columns: list[list[int]]) -> torch.Tensor:
    """``(rows, num_samples)`` long tensor from the actions of each draw, contiguous as
    torch.multinomial's own result (code may ``.view`` it)."""
    if len(columns) == 1:
        if len(columns[0]) == 1:
            return torch.full((1, 1), columns[0][0], dtype=torch.long)  # the usual call, made cheapest
        return torch.tensor([[action] for action in columns[0]], dtype=torch.long)
    return torch.tensor(columns, dtype=torch.long).T.contiguous()


def _replay_broken(row: int, slot: int, site: str) -> NondeterministicEpisodeError:
    return NondeterministicEpisodeError(
        f"replaying episode row {row}: at decision {slot} ({site}) the action "
        "taken before now has probability zero (or the decision has fewer actions). The episode "
        "does not behave the same way under replay: make it deterministic given its actions "
        "(no dependence on global state, wall-clock time or earlier checks)."
    )


def _replay_changed(slot: int, site: str, seen: float, expected: float) -> NondeterministicEpisodeError:
    return NondeterministicEpisodeError(
        f"replaying the same actions gave a different probability at decision {slot} "
        f"({site}): {seen:.17g} now, {expected:.17g} before. "
        "The episode must be a deterministic function of its actions: reset any state it keeps "
        "between calls (recurrent state, environment, counters) at the start of the episode."
    )


class PrefixChooser:
    """Deterministic chooser for one pass over ``plan.rows`` episodes.

    Arguments:
        plan: what each row is forced to do.
        record_supports: remember the support row 0 sees at each slot.

    >>> chooser = PrefixChooser(Plan.free(rows=1))
    >>> chooser.choose(torch.tensor([[0.0, 0.3, 0.7]]), 1, True, "torch.multinomial")
    tensor([[1]])
    >>> [(slot, action) for _, slot, action, _ in chooser.finish().spawns]
    [(0, 2)]
    """

    small_rows = 4
    """Passes of at most this many rows keep Python records and decide small calls in plain Python:
    a handful of tiny tensor operations per decision would cost more than the user's own step."""
    small_decisions = 64
    """Calls of at most this many decisions in such a pass decide in plain Python."""
    column_decisions = True
    """Calls of one decision per row read the plan one column at a time (:meth:`_decide_column`);
    off, they take the general tensor path, which tests hold it equal to."""

    def __init__(self, plan: Plan, *, record_supports: bool = False) -> None:
        self.plan = plan
        self.rows = plan.rows
        self.record_supports = record_supports
        self.cursor = 0
        self.calls_without_gradient = 0
        self.calls_gradient_off = 0
        self.calls_inference_mode = 0
        self.calls_recorded = 0
        self.invalid = torch.zeros(self.rows, dtype=torch.bool)
        # Whether any row has turned invalid yet (until then no row needs a liveness mask).
        self._some_invalid = False
        # Probability of the action taken at every decision, (rows, n) blocks in call order (1 for
        # rows that are invalid); their logs are summed once, when the pass ends.
        self._factors: list[torch.Tensor] = []
        self._sites: list[str] = []
        self._spawns: list[tuple[int, int, int, float]] = []
        self._spawn_blocks: list[torch.Tensor] = []
        self._supports: dict[int, torch.Tensor] = {}
        # Small calls' probability factors, taken together when the pass ends.
        self._deferred: list[_Deferred] = []
        self._small = self.rows <= self.small_rows
        if self._small:
            # Small passes keep their records as Python lists.
            self._forced = plan.forced.tolist()
            self._forced_len = plan.forced_len.tolist()
            self._replayed_len = plan.replayed_len.tolist()
            self._replay = plan.replay_probs.tolist() if plan.replay_probs is not None else None
            self._canonical = plan.canonical.tolist() if plan.canonical is not None else None
            self._guessed = {slot: set(mask.nonzero().flatten().tolist()) for slot, mask in plan.guessed.items()}
            self._invalid = [False] * self.rows
            self._dead: list[bool] = []
            self._actions: list[list[int]] = [[] for _ in range(self.rows)]
            self._probs: list[list[float]] = [[] for _ in range(self.rows)]
            self._branching: list[list[bool]] = [[] for _ in range(self.rows)]
        else:
            self._action_blocks: list[torch.Tensor] = []
            self._prob_blocks: list[torch.Tensor] = []
            self._branching_blocks: list[torch.Tensor] = []
        self._tables: _PlanTables | None = None

    @recording.draws
    def choose(self, weights: torch.Tensor, num_samples: int, replacement: bool, site: str) -> torch.Tensor:
        _check_shape(weights, site)
        total_rows = weights.shape[0]
        if total_rows % self.rows:
            raise NondeterministicEpisodeError(
                f"{site} was called with {total_rows} probability rows in a batch of {self.rows} episodes. "
                "In batched mode every sampler call must have batch_size (or a multiple, for several "
                "decisions per episode) rows, the batch dimension first."
            )
        if not weights.is_floating_point():
            weights = weights.double()
        per_row = total_rows // self.rows
        if self._small and total_rows <= self.small_decisions:
            samples, branching = self._choose_small(weights, num_samples, replacement, site, per_row)
        else:
            samples, branching = self._choose_tensors(weights, num_samples, replacement, site, per_row)
        self._count(weights, branching)
        return samples

    def _count(self, weights: torch.Tensor, branching: torch.Tensor | bool | None) -> None:
        """Count a call whose probabilities carry no gradient, or carry it only because marked code
        recorded their graph, if it could take more than one action (``branching``: whether each
        decision of its first draw had a choice): a call whose every row is forced contributes a
        factor 1 whatever its weights' gradient. A replay of known sequences counts nothing."""
        if not self.plan.spawn:
            return
        without_gradient = not weights.requires_grad
        if not (without_gradient or recording.draw_recorded()):
            return
        if not (bool(branching.any()) if isinstance(branching, torch.Tensor) else branching):
            return
        if without_gradient:
            self.calls_without_gradient += 1
            self.calls_gradient_off += not torch.is_grad_enabled()
            self.calls_inference_mode += torch.is_inference_mode_enabled()
        else:
            self.calls_recorded += 1

    def _choose_tensors(
        self, weights: torch.Tensor, num_samples: int, replacement: bool, site: str, per_row: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`choose` with tensor operations: the samples, and the branching of the first draw."""
        available = weights
        columns = []
        first_branching = None
        for draw in range(num_samples):
            total = _row_totals(available, site, replacement)
            chosen, factor, dead, branching = self._decide_tensors(available, total, per_row, site)
            if draw == 0:
                first_branching = branching
            self._record_factor(factor, dead, per_row, site)
            columns.append(chosen)
            if not replacement and draw + 1 < num_samples:
                available = available.masked_fill(torch.nn.functional.one_hot(chosen, weights.shape[1]).bool(), 0)
        return (columns[0][:, None] if num_samples == 1 else torch.stack(columns, dim=1)), first_branching

    def _choose_small(
        self, weights: torch.Tensor, num_samples: int, replacement: bool, site: str, per_row: int
    ) -> tuple[torch.Tensor, bool]:
        """:meth:`choose` for a small call of a small pass: the checks and decisions in plain
        Python on the call's few weights. The probability factors, a few tensor operations each,
        are taken for all such calls at once when the pass ends (:meth:`_deferred_log_prob`).
        Returns the samples and whether a decision of the first draw had a choice."""
        raw = weights.detach().tolist()
        available = weights
        columns: list[list[int]] = []
        first_branching = False
        for draw in range(num_samples):
            totals = [sum(row) for row in raw]
            if not all(0 < total < math.inf for total in totals) or any(v < 0 for row in raw for v in row):
                _row_totals(available, site, replacement)  # raises, saying what is wrong
            chosen, branching = self._decide_small([[v / total for v in row] for row, total in zip(raw, totals)], per_row, site)
            if draw == 0:
                first_branching = branching
            self._deferred.append(_Deferred(available, available._version, chosen, self._dead, per_row, site))
            self._sites.extend([site] * per_row)
            columns.append(chosen)
            if not replacement and draw + 1 < num_samples:
                for row, action in zip(raw, chosen):
                    row[action] = 0.0
                taken = torch.nn.functional.one_hot(torch.tensor(chosen, dtype=torch.long), weights.shape[1])
                available = available.masked_fill(taken.bool(), 0)
        return _as_samples(columns), first_branching

    def _record_factor(self, factor: torch.Tensor, dead: torch.Tensor | None, per_row: int, site: str) -> None:
        """Keep the ``(rows * per_row,)`` probabilities of a call's actions (1 for dead rows)."""
        if dead is not None:
            factor = factor.masked_fill(dead, 1.0)
        self._factors.append(factor.reshape(self.rows, per_row))
        self._sites.extend([site] * per_row)

    def _decide_small(self, probs: list[list[float]], per_row: int, site: str) -> tuple[list[int], bool]:
        """Every decision of the call by :func:`~reinforce_check.decision.decide`, row by row: the
        actions, and whether some decision had a choice; which rows are dead (invalid, or failing
        now) is left in ``self._dead``."""
        chosen: list[int] = []
        dead: list[bool] = []
        branches = False
        for index, row in enumerate(probs):
            episode, slot = divmod(index, per_row)
            slot += self.cursor
            forced = self._forced[episode][slot] if slot < self._forced_len[episode] else -1
            replayed = slot < self._replayed_len[episode]
            alive = not self._invalid[episode]
            decision = decide(row, forced, self._covered(episode, slot, forced, replayed, alive))
            prob = row[decision.action]
            if replayed and alive:
                if decision.failed:
                    raise _replay_broken(episode, slot, site)
                if self._replay is not None:
                    expected = self._replay[episode][slot]
                    if abs(prob - expected) > _REPLAY_ATOL + _REPLAY_RTOL * abs(expected):
                        raise _replay_changed(slot, site, prob, expected)
            if decision.alternatives:
                self._spawns.extend((episode, slot, k, row[k]) for k in decision.alternatives)
            if decision.failed and alive:
                self._invalid[episode] = True
                self.invalid[episode] = True
                self._some_invalid = True
            if self.record_supports and episode == 0:
                self._supports[slot] = torch.tensor([value > 0 for value in row])
            self._actions[episode].append(decision.action)
            self._probs[episode].append(prob)
            self._branching[episode].append(decision.branching and (self.plan.spawn or forced < 0))
            branches = branches or decision.branching
            chosen.append(decision.action)
            dead.append(not alive or decision.failed)
        self.cursor += per_row
        self._dead = dead
        return chosen, branches

    def _covered(self, episode: int, slot: int, forced: int, replayed: bool, alive: bool) -> set[int] | tuple[()] | None:
        """What a row's node has covered elsewhere (see the module docstring)."""
        if not (self.plan.spawn and alive) or replayed:
            return None
        if forced < 0:
            return ()
        if self._canonical is not None and not self._canonical[episode][slot]:
            return None
        return self._guessed.get(slot, set())

    def _decide_tensors(
        self, weights: torch.Tensor, total: torch.Tensor, per_row: int, site: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Every decision of the call by :func:`~reinforce_check.decision.decide_rows`, for weights
        with row sums ``total``: the actions, their differentiable probabilities, which rows are
        dead (None if none is), and whether each decision had a choice (None where the pass records
        no branching).

        This is the general path, which reads every row's place in the plan with gathers; a call of
        one decision per row takes :meth:`_decide_column`, which tests hold equal to it.
        """
        if per_row == 1 and self.column_decisions:
            return self._decide_column(weights, total, site)
        plan = self.plan
        total_rows, num_actions = weights.shape
        rows = self._rows_of_call(per_row, total_rows)
        decision = decide_rows(weights, rows.forced, self._covered_rows(rows, num_actions))
        chosen = decision.action
        # Only the chosen weights are normalized: a row sum is all the rest of the row is needed for.
        factor = decision.weight / total[:, 0]
        chosen_prob = factor.detach().to(torch.float64)
        # A row is alive at a slot if no earlier guess of its path failed, including a guess at an
        # earlier slot of this same call: an invalid row must not spawn (its later slots follow
        # first actions, so its spawns would repeat prefixes that valid rows cover).
        fails = decision.failed.reshape(self.rows, per_row).to(torch.int8)
        alive = ~self.invalid[rows.episode] & ((fails.cumsum(1) - fails).reshape(-1) == 0)
        if rows.replayed is not None:
            broken = rows.replayed & decision.failed & alive
            if bool(broken.any()):
                index = int(broken.nonzero()[0, 0])
                raise _replay_broken(index // per_row, int(rows.slot[index]), site)
            if plan.replay_probs is not None:
                expected = plan.replay_probs[rows.episode, rows.slot.clamp(max=max(self._plan_tables().width - 1, 0))]
                differs = rows.replayed & ((chosen_prob - expected).abs() > _REPLAY_ATOL + _REPLAY_RTOL * expected.abs())
                differs &= alive
                if bool(differs.any()):
                    index = int(differs.nonzero()[0, 0])
                    raise _replay_changed(int(rows.slot[index]), site, float(chosen_prob[index]), float(expected[index]))
        if decision.alternatives is not None:
            self._spawn_from(decision.alternatives & alive[:, None], weights, total, rows.slot, per_row)
        newly_invalid = decision.failed & alive
        if bool(newly_invalid.any()):
            self.invalid[rows.episode[newly_invalid]] = True
            self._some_invalid = True
        dead: torch.Tensor | None = ~alive | decision.failed
        if not bool(dead.any()):
            dead = None
        if self.record_supports:
            for index in range(per_row):
                self._supports[int(rows.slot[index])] = weights.detach()[index] > 0
        self.cursor += per_row
        assert decision.branching is not None
        branching = decision.branching if plan.spawn else decision.branching & (rows.forced < 0)
        self._record(chosen.reshape(self.rows, per_row), chosen_prob.reshape(self.rows, per_row), branching.reshape(self.rows, per_row))
        return chosen, factor, dead, decision.branching

    def _decide_column(
        self, weights: torch.Tensor, total: torch.Tensor, site: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """:meth:`_decide_tensors` for a call of one decision per row, the common case of a batched
        pass. Every row is then at the same slot: the plan is read one column at a time, and which
        kinds of rows are present there (replayed, forced, free, invalid) is known in Python, so
        that the tensor operations of a kind that is absent are skipped."""
        plan = self.plan
        tables = self._plan_tables()
        slot = self.cursor
        num_actions = weights.shape[1]
        forced = tables.forced_column(slot)
        inside = slot < tables.shortest_path  # every row is inside its forced path
        all_forced = inside and tables.column_max[slot] < num_actions
        decision = decide_rows(
            weights,
            forced,
            self._covered_column(forced, slot, num_actions, inside),
            all_forced=all_forced,
            branching=plan.spawn or not inside,
        )
        chosen = decision.action
        # Only the chosen weights are normalized: a row sum is all the rest of the row is needed for.
        factor = decision.weight / total[:, 0]
        chosen_prob = factor.detach().to(torch.float64)
        alive = ~self.invalid if self._some_invalid else None
        failed = decision.failures  # None when no row failed
        # Replayed rows are never invalid: a row turns invalid only past its replayed prefix.
        if slot < tables.longest_replay:
            if failed is not None:
                broken = failed if slot < tables.shortest_replay else failed & (slot < plan.replayed_len)
                if bool(broken.any()):
                    raise _replay_broken(int(broken.nonzero()[0, 0]), slot, site)
            if plan.replay_probs is not None and slot < plan.replay_probs.shape[1]:
                expected = plan.replay_probs[:, slot]
                differs = (chosen_prob - expected).abs() > tables.replay_tolerance[:, slot]
                if bool(differs.any()):
                    index = int(differs.nonzero()[0, 0])
                    raise _replay_changed(slot, site, float(chosen_prob[index]), float(expected[index]))
        if decision.alternatives is not None:
            alternatives = decision.alternatives if alive is None else decision.alternatives & alive[:, None]
            self._spawn_from(alternatives, weights, total, slot, 1)
        dead = None if alive is None else ~alive
        if failed is not None:
            newly_invalid = failed if alive is None else failed & alive
            if bool(newly_invalid.any()):
                self.invalid |= newly_invalid
                self._some_invalid = True
                dead = failed if dead is None else dead | failed
        if dead is not None and not bool(dead.any()):
            dead = None
        if self.record_supports:
            self._supports[slot] = weights.detach()[0] > 0
        self.cursor += 1
        if plan.spawn:
            assert decision.branching is not None
            branching = decision.branching[:, None]
        elif inside:
            branching = tables.no_branching
        else:
            assert decision.branching is not None
            branching = (decision.branching & (forced < 0))[:, None]
        self._record(chosen[:, None], chosen_prob[:, None], branching)
        return chosen, factor, dead, decision.branching

    def _plan_tables(self) -> _PlanTables:
        if self._tables is None:
            self._tables = _PlanTables(self.plan)
        return self._tables

    def _rows_of_call(self, per_row: int, total_rows: int) -> _CallRows:
        """Where every row of a call stands in the plan: its episode, slot, forced action, and
        whether the slot is replayed (None when no row's is)."""
        plan = self.plan
        tables = self._plan_tables()
        key = (per_row, total_rows)
        if key not in tables.episode_of_row:
            tables.episode_of_row[key] = torch.arange(total_rows) // per_row
        episode = tables.episode_of_row[key]
        slot = self.cursor + torch.arange(total_rows) % per_row
        forced = tables.forced[episode, slot.clamp(max=tables.width)]
        replayed = slot < plan.replayed_len[episode]
        return _CallRows(episode, slot, forced, replayed if bool(replayed.any()) else None)

    def _covered_rows(self, rows: _CallRows, num_actions: int) -> torch.Tensor | None:
        """``(rows, K)``: :meth:`_covered` for every row of a call (everything for rows that do not
        spawn; dead rows are masked by the caller), or None when no row spawns."""
        plan = self.plan
        if not plan.spawn:
            return None
        free = rows.forced < 0
        covered = ~free[:, None].expand(-1, num_actions)
        answers = ~free if rows.replayed is None else ~free & ~rows.replayed
        if not bool(answers.any()):
            return covered
        if plan.canonical is not None:
            width = plan.canonical.shape[1]
            answers = answers & plan.canonical[rows.episode, rows.slot.clamp(max=max(width - 1, 0))]
        first, last = int(rows.slot.min()), int(rows.slot.max())
        table = torch.stack([self._guessed_mask(s, num_actions) for s in range(first, last + 1)])
        return torch.where(answers[:, None], table[rows.slot - first], covered)

    def _covered_column(self, forced: torch.Tensor, slot: int, num_actions: int, inside: bool) -> torch.Tensor | None:
        """:meth:`_covered_rows` for a call of one decision per row, at ``slot``."""
        plan = self.plan
        if not plan.spawn:
            return None
        tables = self._plan_tables()
        if slot >= tables.longest_path:
            return torch.zeros(forced.shape[0], num_actions, dtype=torch.bool)  # every row is free
        if inside and self._guessed_everything(slot, num_actions):
            return None  # no row is free, and a row that answers for its node has every action guessed
        answers = tables.answers[:, slot]
        return torch.where(answers[:, None], self._guessed_mask(slot, num_actions), (forced >= 0)[:, None])

    def _guessed_mask(self, slot: int, num_actions: int) -> torch.Tensor:
        """``(K,)`` bool: the actions guessed at ``slot``."""
        key = (slot, num_actions)
        cache = self._plan_tables().guessed
        if key not in cache:
            mask = torch.zeros(num_actions, dtype=torch.bool)
            guess = self.plan.guessed.get(slot)
            if guess is not None:
                size = min(num_actions, guess.shape[0])
                mask[:size] = guess[:size]
            cache[key] = mask
        return cache[key]

    def _guessed_everything(self, slot: int, num_actions: int) -> bool:
        """Whether every action is guessed at ``slot``."""
        key = (slot, num_actions)
        cache = self._plan_tables().guessed_all
        if key not in cache:
            cache[key] = bool(self._guessed_mask(slot, num_actions).all())
        return cache[key]

    def _spawn_from(
        self, alternatives: torch.Tensor, weights: torch.Tensor, total: torch.Tensor, slot: torch.Tensor | int, per_row: int
    ) -> None:
        """Record a new prefix for every true entry (row, action) of ``alternatives``, at the slot of
        each row (``slot[row]``, or ``slot`` for every row)."""
        found = alternatives.nonzero()
        if found.shape[0]:
            rows, actions = found[:, 0], found[:, 1]
            probs = weights.detach()[rows, actions] / total.detach()[rows, 0]
            slots = torch.full_like(rows, slot) if isinstance(slot, int) else slot[rows]
            block = torch.stack([(rows // per_row).double(), slots.double(), actions.double(), probs.double()], dim=1)
            self._spawn_blocks.append(block)

    def _record(self, actions: torch.Tensor, probs: torch.Tensor, branching: torch.Tensor) -> None:
        if self._small:
            # A small pass that makes an occasional large call keeps one record in call order.
            for row in range(self.rows):
                self._actions[row].extend(actions[row].tolist())
                self._probs[row].extend(probs[row].tolist())
                self._branching[row].extend(branching[row].tolist())
            self._invalid = self.invalid.tolist()
        else:
            self._action_blocks.append(actions)
            self._prob_blocks.append(probs)
            self._branching_blocks.append(branching)

    def _deferred_log_prob(self) -> torch.Tensor:
        """``(rows,)`` sum of the logs of the deferred calls' factors, with gradient: the weights of
        every call with the same number of actions in one batch of tensor operations."""
        groups: dict[tuple[int, torch.dtype, torch.device], list[_Deferred]] = {}
        for call in self._deferred:
            if call.weights._version != call.version:
                raise InvalidProbabilitiesError(
                    f"the episode changed, in place, the probabilities it passed to {call.site} after drawing "
                    "from them; the check reads them again when the episode ends. Modify a copy instead "
                    "(probs.clone())."
                )
            groups.setdefault((call.weights.shape[1], call.weights.dtype, call.weights.device), []).append(call)
        total: torch.Tensor | None = None
        for calls in groups.values():
            weights = calls[0].weights if len(calls) == 1 else torch.cat([c.weights for c in calls])
            # The sums are exact only in float64, whatever precision the episode samples in.
            weights = weights.to(torch.float64)
            # (n, 1) columns throughout: each reshape would be one more node in the pass's graph.
            actions = torch.tensor([[a] for c in calls for a in c.actions], dtype=torch.long)
            log_factor = torch.log(weights.gather(1, actions) / weights.sum(dim=1, keepdim=True))
            dead = [d for c in calls for d in c.dead]
            if any(dead):
                log_factor = log_factor.masked_fill(torch.tensor(dead)[:, None], 0.0)
            if self.rows == 1:
                summed = log_factor.sum(dim=0)
            else:
                episode = torch.tensor([i // c.per_row for c in calls for i in range(len(c.actions))])
                summed = torch.zeros(self.rows, dtype=torch.float64).index_add(0, episode, log_factor[:, 0])
            total = summed if total is None else total + summed
        assert total is not None
        return total

    def finish(self) -> Pass:
        """Close the pass and return what it produced.

        Raises:
            NondeterministicEpisodeError: a row stopped before replaying its whole prefix.
        """
        if self._small:
            short = [r for r, (length, invalid) in enumerate(zip(self._replayed_len, self._invalid)) if length > self.cursor and not invalid]
        else:
            short = ((self.plan.replayed_len > self.cursor) & ~self.invalid).nonzero().flatten().tolist()
        if short:
            row = short[0]
            raise NondeterministicEpisodeError(
                f"replaying episode row {row}: the episode made {self.cursor} decisions, but the prefix being "
                f"replayed has {int(self.plan.replayed_len[row])}. The same actions led to a shorter episode, so the "
                "episode is not a deterministic function of its actions."
            )
        if self._small:
            actions = torch.tensor(self._actions, dtype=torch.long).reshape(self.rows, self.cursor)
            probs = torch.tensor(self._probs, dtype=torch.float64).reshape(self.rows, self.cursor)
            branching = torch.tensor(self._branching, dtype=torch.bool).reshape(self.rows, self.cursor)
        elif self._action_blocks:
            actions = torch.cat(self._action_blocks, dim=1)
            probs = torch.cat(self._prob_blocks, dim=1)
            branching = torch.cat(self._branching_blocks, dim=1)
        else:
            actions = torch.zeros(self.rows, 0, dtype=torch.long)
            probs = torch.zeros(self.rows, 0, dtype=torch.float64)
            branching = torch.zeros(self.rows, 0, dtype=torch.bool)
        spawns = list(self._spawns)
        for block in self._spawn_blocks:
            spawns.extend((int(r), int(s), int(a), float(p)) for r, s, a, p in block.tolist())
        if self._factors:
            factors = self._factors[0] if len(self._factors) == 1 else torch.cat(self._factors, dim=1)
            log_prob = torch.log(factors).sum(dim=1)
            if self._deferred:
                log_prob = log_prob + self._deferred_log_prob()
        elif self._deferred:
            log_prob = self._deferred_log_prob()
        else:
            log_prob = torch.zeros(self.rows, dtype=torch.float64)
        return Pass(
            actions=actions,
            probs=probs,
            branching=branching,
            log_prob=log_prob,
            valid=~self.invalid,
            sites=list(self._sites),
            spawns=spawns,
            supports=self._supports,
            calls_without_gradient=self.calls_without_gradient,
            calls_gradient_off=self.calls_gradient_off,
            calls_inference_mode=self.calls_inference_mode,
            calls_recorded=self.calls_recorded,
        )


class SequenceReplayer:
    """Chooser that forces known sequences, one episode run at a time, and keeps only their probability.

    It serves the evaluations of J at shifted parameters in sequential mode, where every sequence
    is one run of the episode: each decision is a few Python operations on the run's handful of
    probabilities, and one instance serves every run (call :meth:`start` before each run and
    :meth:`finish` after it). What a replay must verify is still verified: every forced action is
    feasible, a run makes at least the decisions up to its sequence's last choice, and no decision
    past the sequence's end offers a choice.

    Arguments:
        paths: the actions of every sequence (a list per sequence).
        required: how many decisions of each sequence must be replayed (up to its last choice).

    >>> replayer = SequenceReplayer([[1]], [1])
    >>> replayer.start(0)
    >>> replayer.choose(torch.tensor([[0.0, 0.25, 0.75]]), 1, True, "torch.multinomial")
    tensor([[1]])
    >>> replayer.finish(); round(math.exp(replayer.log_prob), 12)
    0.25
    """

    def __init__(self, paths: list[list[int]], required: list[int]) -> None:
        self.paths = paths
        self.required = required
        self.path: list[int] = []
        self.needed = 0
        self.cursor = 0
        self.log_prob = 0.0

    def start(self, index: int) -> None:
        """Force sequence ``index`` in the next run."""
        self.path = self.paths[index]
        self.needed = self.required[index]
        self.cursor = 0
        self.log_prob = 0.0

    def choose(self, weights: torch.Tensor, num_samples: int, replacement: bool, site: str) -> torch.Tensor:
        _check_shape(weights, site)
        raw = weights.detach().tolist()
        columns = []
        for _ in range(num_samples):
            taken = []
            for row in raw:
                total = sum(row)
                if not (0 < total < math.inf) or min(row) < 0:
                    _row_totals(torch.tensor([row], dtype=torch.float64), site, replacement)
                slot = self.cursor
                self.cursor += 1
                forced = self.path[slot] if slot < len(self.path) else -1
                decision = decide(row, forced, None)
                if decision.failed:
                    raise NondeterministicEpisodeError(
                        f"replaying a known action sequence at shifted parameters: at decision {slot} ({site}) "
                        "the action taken before now has probability zero (or the decision has fewer actions). "
                        "The episode does not behave the same way under replay: make it deterministic given its "
                        "actions, with the same feasible actions for nearby parameter values (mask infeasible "
                        "actions with -inf logits rather than with thresholds on probabilities)."
                    )
                if forced < 0 and decision.branching:
                    raise NondeterministicEpisodeError(
                        f"replaying a known action sequence, the episode reached decision {slot} ({site}) with "
                        "several feasible actions after the end of that sequence: the same actions led to a "
                        "longer episode, so the episode is not a deterministic function of its actions."
                    )
                self.log_prob += math.log(row[decision.action] / total)
                taken.append(decision.action)
                if not replacement:
                    row[decision.action] = 0.0
            columns.append(taken)
        return _as_samples(columns)

    def finish(self) -> None:
        """Close a run.

        Raises:
            NondeterministicEpisodeError: the run stopped before its sequence's last choice.
        """
        if self.cursor < self.needed:
            raise NondeterministicEpisodeError(
                f"replaying a known action sequence, the episode made {self.cursor} decisions, but the sequence "
                f"has {self.needed} up to its last choice. The same actions led to a shorter episode, so the "
                "episode is not a deterministic function of its actions."
            )
