"""The deterministic chooser that replaces random sampling during a check.

One :class:`PrefixChooser` serves one run of the episode (one *pass*). The episode runs ``rows``
independent episodes at once (one in sequential mode). Every categorical decision a row makes gets
a *slot*, numbered in call order. For each row the chooser holds a *forced path*:

* slots below ``real_len`` replay a prefix already known to be feasible (a *replayed* slot);
* slots from ``real_len`` up to the end of the forced path are *speculated*: the path guesses an
  action there without knowing whether it is feasible (batched mode guesses the whole product of
  supports seen so far, so a tree whose supports do not depend on the history is run in one batch);
* later slots are *free*: the row takes the first action of nonzero probability.

Whenever a decision offers actions that no row of the pass will take at that node, the chooser
records them as new prefixes (*spawns*) to run later: at a free slot every nonzero action other
than the one taken; at a speculated slot the nonzero actions outside the guessed set, and only from
the one row (the *canonical* row) whose guesses from that slot on are all first choices, so that
each node spawns once. A row whose guess turns out to have probability zero is *invalid*: it keeps running
(taking first actions, so the user's code sees only feasible actions) but contributes nothing.

Together these rules make every terminating action sequence complete in exactly one valid row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import InvalidProbabilitiesError, NondeterministicEpisodeError

__all__ = ["Pass", "PrefixChooser", "SequenceReplayer"]

# Probabilities replayed in another batch composition may differ in the last bits (BLAS blocking).
_REPLAY_RTOL = 1e-8
_REPLAY_ATOL = 1e-12
_SMALL_ROWS = 4
_SMALL_DECISIONS = 64


@dataclass
class Pass:
    """What one run of the episode produced, row by row."""

    actions: torch.Tensor
    """``(rows, slots)`` action taken at every slot."""
    probs: torch.Tensor
    """``(rows, slots)`` probability of that action (detached, float64)."""
    branching: torch.Tensor
    """``(rows, slots)`` whether the decision had more than one action of nonzero probability."""
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
    no_grad_calls: int = 0
    """Sampler calls made while gradient recording was off (their probabilities carry no gradient)."""
    unscoped_calls: int = 0
    """Sampler calls that sampled for real, outside @enumerate_actions code (scoped mode only)."""


class PrefixChooser:
    """Deterministic chooser for one pass over ``rows`` episodes.

    Arguments:
        rows: number of episodes in the pass (the batch size; 1 in sequential mode).
        forced: ``(rows, L)`` long tensor of forced actions, ``-1`` past each row's path.
        forced_len: ``(rows,)`` length of each forced path.
        real_len: ``(rows,)`` how many of the forced slots replay a known-feasible prefix.
        replay_probs: ``(rows, L)`` probabilities seen when the replayed slots were discovered,
            compared on replay to detect nondeterminism; ``None`` to skip (finite differences).
        guesses: for speculated slots, the set of actions guessed there (a bool mask per slot).
        speculation_index: ``(rows, L)`` index of each speculated action within its guess set
            (0 for the first guess), used to pick the canonical row of each node.
        record_supports: remember the support row 0 sees at each slot.
        spawn: whether to record alternatives (off when the set of sequences is already known).

    >>> chooser = PrefixChooser.free(rows=1)
    >>> chooser.choose(torch.tensor([[0.0, 0.3, 0.7]]), 1, True, "torch.multinomial")
    tensor([[1]])
    >>> [(slot, action) for _, slot, action, _ in chooser.finish().spawns]
    [(0, 2)]
    """

    def __init__(
        self,
        rows: int,
        forced: torch.Tensor,
        forced_len: torch.Tensor,
        real_len: torch.Tensor,
        replay_probs: torch.Tensor | None,
        guesses: dict[int, torch.Tensor] | None = None,
        speculation_index: torch.Tensor | None = None,
        record_supports: bool = False,
        spawn: bool = True,
    ) -> None:
        self.rows = rows
        self.forced = forced
        self.forced_len = forced_len
        self.real_len = real_len
        self.replay_probs = replay_probs
        self.guesses = guesses or {}
        self.record_supports = record_supports
        self.spawn = spawn
        self.cursor = 0
        self.no_grad_calls = 0
        # Passes that only replay known sequences (finite differences) take a short path.
        self._replaying_all = not spawn and replay_probs is None and rows > _SMALL_ROWS
        self._shortest = int(forced_len.min()) if rows else 0
        self._some_invalid = False
        self._no_branching: torch.Tensor | None = None
        self._last_site = ""
        self._layout: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.invalid = torch.zeros(rows, dtype=torch.bool)
        # Probability of the action taken at every decision, (rows, n) blocks in call order (1 for
        # rows that are invalid); their logs are summed once, when the pass ends, which keeps the
        # graph a backward pass walks small.
        self._factors: list[torch.Tensor] = []
        self._actions: list[torch.Tensor] = []
        self._probs: list[torch.Tensor] = []
        self._branching: list[torch.Tensor] = []
        self._sites: list[str] = []
        self._spawns: list[torch.Tensor] = []
        self._supports: dict[int, torch.Tensor] = {}
        # Small passes (sequential mode) decide in plain Python: a handful of tiny tensor ops per
        # decision would cost more than the user's own step.
        self._small = rows <= _SMALL_ROWS
        if self._small:
            self._forced_list = forced.tolist()
            self._forced_len_list = forced_len.tolist()
            self._real_len_list = real_len.tolist()
            self._replay_list = replay_probs.tolist() if replay_probs is not None else None
            self._spec_list = speculation_index.tolist() if speculation_index is not None else None
            self._guess_list = {slot: set(mask.nonzero().flatten().tolist()) for slot, mask in self.guesses.items()}
            self._invalid_list = [False] * rows
            self._spawn_list: list[tuple[int, int, int, float]] = []
            self._small_actions: list[list[int]] = [[] for _ in range(rows)]
            self._small_probs: list[list[float]] = [[] for _ in range(rows)]
            self._small_branching: list[list[bool]] = [[] for _ in range(rows)]
        if not self._small and rows:
            # Which kinds of rows exist at each slot, decided once per pass, so that a decision
            # runs only the tensor operations its rows need.
            self._bounds = (self._shortest, int(forced_len.max()), int(real_len.min()), int(real_len.max()))
            self._column_max = forced.max(dim=0).values.tolist() if forced.shape[1] else []
            # The tolerance of every replayed probability, infinite where nothing is replayed.
            self._replay_tolerance: torch.Tensor | None = None
            if replay_probs is not None and replay_probs.shape[1]:
                replayed = torch.arange(replay_probs.shape[1])[None, :] < real_len[:, None]
                tolerance = _REPLAY_ATOL + _REPLAY_RTOL * replay_probs.abs()
                self._replay_tolerance = tolerance.masked_fill(~replayed, math.inf)
        # canonical[r, s]: every speculated guess of row r from slot s on is a first guess. Rows that
        # share the node at slot s differ only from s on, so exactly one of them is canonical there.
        if speculation_index is not None and speculation_index.shape[1] > 0:
            suffix_max = speculation_index.flip(1).cummax(1).values.flip(1)
            self.canonical = suffix_max == 0
        else:
            self.canonical = torch.ones(rows, max(forced.shape[1], 1), dtype=torch.bool)

    @classmethod
    def free(cls, rows: int, record_supports: bool = False) -> PrefixChooser:
        """A chooser with no forced actions: every slot takes the first feasible action."""
        empty = torch.zeros(rows, 0, dtype=torch.long)
        zero = torch.zeros(rows, dtype=torch.long)
        return cls(rows, empty, zero, zero, empty.double(), record_supports=record_supports)

    def choose(self, weights: torch.Tensor, num_samples: int, replacement: bool, site: str) -> torch.Tensor:
        if weights.dim() != 2 or weights.shape[1] == 0:
            raise InvalidProbabilitiesError(
                f"{site} received probabilities of shape {tuple(weights.shape)}; expected (K,) or (rows, K) with K >= 1."
            )
        total_rows = weights.shape[0]
        if total_rows % self.rows:
            raise NondeterministicEpisodeError(
                f"{site} was called with {total_rows} probability rows in a batch of {self.rows} episodes. "
                "In batched mode every sampler call must have batch_size (or a multiple, for several "
                "decisions per episode) rows, the batch dimension first."
            )
        if not weights.is_floating_point():
            weights = weights.double()
        self._last_site = site
        if not torch.is_grad_enabled():
            self.no_grad_calls += 1
        per_row = total_rows // self.rows
        if self._small and total_rows <= _SMALL_DECISIONS:
            return self._choose_small(weights, num_samples, replacement, site, per_row)
        if self._replaying_all and per_row == 1 and num_samples == 1 and self.cursor < self._shortest:
            chosen = self._replay_column(weights)
            if chosen is not None:
                return chosen[:, None]
        available = weights
        chosen_columns = []
        for draw in range(num_samples):
            probs = self._normalize(available, site, replacement)
            chosen = self._decide(probs, per_row, site)
            chosen_columns.append(chosen)
            if not replacement and draw + 1 < num_samples:
                taken = torch.nn.functional.one_hot(chosen, probs.shape[1]).bool()
                available = available.masked_fill(taken, 0)
        if num_samples == 1:
            return chosen_columns[0][:, None]
        return torch.stack(chosen_columns, dim=1)

    @staticmethod
    def _row_totals(weights: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The row sums of ``weights`` (differentiable, (rows, 1)) and whether every row is valid:
        no negative weight and a finite, positive total."""
        # A product with a column of ones is a row sum several times faster than sum(dim=1) for
        # the few actions of a decision (and as exact: the same few additions).
        ones = torch.ones(weights.shape[1], 1, dtype=weights.dtype, device=weights.device)
        total = weights @ ones
        # A quick test for the common case (NaN fails every comparison, an infinite weight makes
        # its total infinite).
        smallest, largest = torch.aminmax(total.detach())
        valid = weights.detach().amin().item() >= 0 and smallest.item() > 0 and largest.item() < math.inf
        return total, valid

    @staticmethod
    def _normalize(weights: torch.Tensor, site: str, replacement: bool) -> torch.Tensor:
        total, valid = PrefixChooser._row_totals(weights)
        if valid:
            return weights / total
        # The diagnosis runs only on bad input.
        detached = weights.detach()
        checked = total.detach()
        if not bool(torch.isfinite(detached).all()):
            raise InvalidProbabilitiesError(
                f"{site} received NaN or infinite probabilities. Check the logits that feed it "
                "(an overflow, a division by zero, or log(0) upstream)."
            )
        if bool((detached < 0).any()):
            raise InvalidProbabilitiesError(
                f"{site} received negative probabilities (smallest {detached.min().item():.3g}). "
                "Pass softmax outputs or non-negative weights."
            )
        if not bool((checked > 0).all()):
            detail = (
                "no action left to draw without replacement"
                if not replacement
                else "every action has probability zero"
            )
            raise InvalidProbabilitiesError(
                f"{site} received a row whose probabilities are all zero ({detail}). "
                "Make sure each decision leaves at least one action possible."
            )
        return weights / total

    def _decide(self, probs: torch.Tensor, per_row: int, site: str) -> torch.Tensor:
        if self._replaying_all and per_row == 1 and self.cursor < self._shortest:
            chosen = self._decide_forced(probs)
            if chosen is not None:
                return chosen
        if per_row == 1 and not self._small and not self.record_supports:
            return self._decide_single(probs, site)
        return self._decide_rows(probs, per_row, site)

    def _decide_rows(self, probs: torch.Tensor, per_row: int, site: str) -> torch.Tensor:
        """Decide every row of a call, each row at its own slot (several decisions per episode)."""
        total_rows, num_actions = probs.shape
        key = (total_rows, per_row)
        if key not in self._layout:
            rows = torch.arange(total_rows)
            self._layout[key] = (rows // per_row, rows % per_row)
        episode, offset = self._layout[key]
        slot = self.cursor + offset
        self.cursor += per_row
        detached = probs.detach()
        support = detached > 0
        first = support.to(torch.int8).argmax(dim=1)

        width = self.forced.shape[1]
        in_forced = slot < self.forced_len[episode]
        replayed = slot < self.real_len[episode]
        column = slot.clamp(max=max(width - 1, 0))
        forced_action = self.forced[episode, column] if width else torch.full_like(slot, -1)
        forced_action = torch.where(in_forced, forced_action, torch.full_like(forced_action, -1))
        in_range = (forced_action >= 0) & (forced_action < num_actions)
        safe_action = forced_action.clamp(0, num_actions - 1)
        feasible = in_range & support.gather(1, safe_action[:, None]).squeeze(1)
        # A row is alive at a slot if no earlier guess of its path failed, including a guess at an
        # earlier slot of this same call: an invalid row must not spawn (its later slots follow
        # first actions, so its spawns would repeat prefixes that valid rows cover).
        fails = (in_forced & ~replayed & ~feasible).reshape(self.rows, per_row).to(torch.int8)
        failed_before = (fails.cumsum(1) - fails).reshape(-1) > 0
        alive = ~self.invalid[episode] & ~failed_before

        broken = replayed & ~feasible & alive
        if bool(broken.any()):
            index = int(broken.nonzero()[0, 0])
            self._raise_replay_broken(int(episode[index]), int(slot[index]), site)
        chosen = torch.where(in_forced & feasible, forced_action, first)
        chosen_prob = probs.gather(1, chosen[:, None]).squeeze(1)

        if self.replay_probs is not None and bool(replayed.any()):
            expected = self.replay_probs[episode, column]
            seen = chosen_prob.detach()
            differs = replayed & alive & ((seen - expected).abs() > _REPLAY_ATOL + _REPLAY_RTOL * expected.abs())
            if bool(differs.any()):
                index = int(differs.nonzero()[0, 0])
                self._raise_replay_changed(int(slot[index]), site, float(seen[index]), float(expected[index]))

        newly_invalid = in_forced & ~replayed & ~feasible & alive
        if self.spawn:
            self._record_spawns(probs, support, chosen, episode, slot, in_forced, replayed, alive, column)
        if self.record_supports:
            for index in range(total_rows):
                if int(episode[index]) == 0:
                    self._supports[int(slot[index])] = support[index].clone()
        if bool(newly_invalid.any()):
            self.invalid[episode[newly_invalid]] = True
            self._some_invalid = True

        dead = ~alive | newly_invalid
        safe_prob = torch.where(dead, torch.ones_like(chosen_prob), chosen_prob)
        self._factors.append(safe_prob.reshape(self.rows, per_row))
        actions = chosen.reshape(self.rows, per_row)
        chosen_probs = chosen_prob.detach().to(torch.float64).reshape(self.rows, per_row)
        branching = (support.sum(dim=1) > 1).reshape(self.rows, per_row)
        if self._small:
            # Keep one record in call order when a small pass makes an occasional large call.
            for row in range(self.rows):
                self._small_actions[row].extend(actions[row].tolist())
                self._small_probs[row].extend(chosen_probs[row].tolist())
                self._small_branching[row].extend(branching[row].tolist())
            self._invalid_list = self.invalid.tolist()
        else:
            self._actions.append(actions)
            self._probs.append(chosen_probs)
            self._branching.append(branching)
        self._sites.extend([site] * per_row)
        return chosen

    def _decide_single(self, probs: torch.Tensor, site: str) -> torch.Tensor:
        """:meth:`_decide` for a call with one decision per row, the common case of a batched pass.

        Every row is then at the same slot, so the forced paths are read one column at a time
        instead of gathered row by row, and which kinds of rows (forced, replayed, speculated,
        free, invalid) exist at the slot is known in Python: the tensor operations of a kind that
        is absent are skipped.
        """
        slot = self.cursor
        self.cursor += 1
        num_actions = probs.shape[1]
        detached = probs.detach()
        support = detached > 0
        alive = ~self.invalid if self._some_invalid else None
        shortest, longest, min_real, max_real = self._bounds
        newly_invalid: torch.Tensor | None = None
        if slot >= longest:
            # Past every forced path: every live row takes its first action and spawns the others.
            chosen = support.to(torch.int8).argmax(dim=1)
            chosen_prob = probs.gather(1, chosen[:, None]).squeeze(1)
            if self.spawn:
                alternatives = support.scatter(1, chosen[:, None], False)
                if alive is not None:
                    alternatives &= alive[:, None]
                self._spawn_from(alternatives, probs, slot)
        else:
            all_forced = slot < shortest
            in_forced = None if all_forced else slot < self.forced_len
            forced_action = self.forced[:, slot]
            if all_forced and 0 <= self._column_max[slot] < num_actions:
                # Forced actions are never -1 inside a path, so only the upper bound needed checking.
                feasible = support.gather(1, forced_action[:, None]).squeeze(1)
            else:
                if in_forced is not None:
                    forced_action = forced_action.masked_fill(~in_forced, -1)
                in_range = (forced_action >= 0) & (forced_action < num_actions)
                safe_action = forced_action.clamp(0, num_actions - 1)
                feasible = in_range & support.gather(1, safe_action[:, None]).squeeze(1)
            all_feasible = all_forced and bool(feasible.all())
            # Replayed rows are never invalid: a row turns invalid only past its replayed prefix.
            if slot < min_real:
                replayed: torch.Tensor | None = torch.ones_like(feasible)
            elif slot < max_real:
                replayed = slot < self.real_len
            else:
                replayed = None
            if replayed is not None and not all_feasible:
                broken = replayed & ~feasible
                if bool(broken.any()):
                    self._raise_replay_broken(int(broken.nonzero()[0, 0]), slot, site)
            if all_feasible:
                chosen = forced_action
            else:
                take = feasible if in_forced is None else in_forced & feasible
                chosen = torch.where(take, forced_action, support.to(torch.int8).argmax(dim=1))
            chosen_prob = probs.gather(1, chosen[:, None]).squeeze(1)
            if self.replay_probs is not None and replayed is not None and self._replay_tolerance is not None:
                expected = self.replay_probs[:, slot]
                seen = chosen_prob.detach()
                differs = (seen - expected).abs() > self._replay_tolerance[:, slot]
                if bool(differs.any()):
                    index = int(differs.nonzero()[0, 0])
                    self._raise_replay_changed(slot, site, float(seen[index]), float(expected[index]))
            guess = self.guesses.get(slot)
            covered = guess is not None and guess.shape[0] >= num_actions and bool(guess[:num_actions].all())
            # Speculated rows (forced past their known prefix, alive) matter only if a guess may
            # fail or spawn here.
            speculated = None
            if slot >= min_real and (not all_feasible or (self.spawn and not covered)):
                speculated = torch.ones_like(feasible) if in_forced is None else in_forced.clone()
                if replayed is not None:
                    speculated &= ~replayed
                if alive is not None:
                    speculated &= alive
            if speculated is not None and not all_feasible:
                newly_invalid = speculated & ~feasible
            if self.spawn:
                alternatives = None
                if in_forced is not None:
                    # Free rows spawn every feasible action but the one they take.
                    free = ~in_forced if alive is None else alive & ~in_forced
                    alternatives = (support & free[:, None]).scatter(1, chosen[:, None], False)
                if speculated is not None and not covered:
                    # At a speculated slot only the canonical row of each node spawns: the feasible
                    # actions outside the guessed set (the guessed ones have rows of their own).
                    canonical = self.canonical[:, slot] & speculated
                    extra = support & canonical[:, None] & ~self._guessed(slot, num_actions)[None, :]
                    alternatives = extra if alternatives is None else alternatives | extra
                if alternatives is not None:
                    self._spawn_from(alternatives, probs, slot)
            if newly_invalid is not None and bool(newly_invalid.any()):
                self.invalid |= newly_invalid
                self._some_invalid = True
            else:
                newly_invalid = None
        self._probs.append(chosen_prob.detach().to(torch.float64)[:, None])
        dead: torch.Tensor | None = None if alive is None else ~alive
        if newly_invalid is not None:
            dead = newly_invalid if dead is None else dead | newly_invalid
        if dead is not None:
            chosen_prob = chosen_prob.masked_fill(dead, 1.0)
        self._factors.append(chosen_prob[:, None])
        self._actions.append(chosen[:, None])
        self._branching.append((support.sum(dim=1) > 1)[:, None])
        self._sites.append(site)
        return chosen

    def _guessed(self, slot: int, num_actions: int) -> torch.Tensor:
        """(num_actions,) bool: the actions guessed at ``slot``."""
        guessed = torch.zeros(num_actions, dtype=torch.bool)
        guess = self.guesses.get(slot)
        if guess is not None:
            size = min(num_actions, guess.shape[0])
            guessed[:size] = guess[:size]
        return guessed

    def _spawn_from(
        self, alternatives: torch.Tensor, probs: torch.Tensor, slot: int | torch.Tensor, episode: torch.Tensor | None = None
    ) -> None:
        """Record a new prefix for every true entry (row, action) of ``alternatives``: the row's
        episode (``episode[row]``, or the row itself), its slot (``slot`` or ``slot[row]``), the
        action and its probability."""
        found = alternatives.nonzero()
        if found.shape[0]:
            rows, acts = found[:, 0], found[:, 1]
            slots = torch.full_like(rows, slot) if isinstance(slot, int) else slot[rows]
            episodes = rows if episode is None else episode[rows]
            self._spawns.append(
                torch.stack([episodes.double(), slots.double(), acts.double(), probs.detach()[rows, acts].double()], dim=1)
            )

    def _replay_column(self, weights: torch.Tensor) -> torch.Tensor | None:
        """Every row replays a known sequence through this slot (an evaluation of J): take the
        forced actions, normalizing only their weights.

        Returns None when anything is off (invalid weights, an infeasible action); the general
        path then says what is wrong.
        """
        if self._column_max[self.cursor] >= weights.shape[1]:
            return None
        chosen = self.forced[:, self.cursor]
        total, valid = self._row_totals(weights)
        chosen_weight = weights.gather(1, chosen[:, None])
        if not (valid and chosen_weight.detach().amin().item() > 0):
            return None
        factor = chosen_weight / total
        self.cursor += 1
        self._factors.append(factor)
        self._actions.append(chosen[:, None])
        self._probs.append(factor.detach().to(torch.float64))
        self._branching.append(self._no_branching_column())
        self._sites.append(self._last_site)
        return chosen

    def _no_branching_column(self) -> torch.Tensor:
        """The branching record of a replayed decision: decisions inside a replayed path never
        spawn; only branching past a path's end matters."""
        if self._no_branching is None:
            self._no_branching = torch.zeros(self.rows, 1, dtype=torch.bool)
        return self._no_branching

    def _decide_forced(self, probs: torch.Tensor) -> torch.Tensor | None:
        """Every row replays a known sequence through this slot: take the forced actions.

        Returns None (the general path then says what is wrong) if an action is infeasible.
        """
        if self._column_max[self.cursor] >= probs.shape[1]:
            return None
        chosen = self.forced[:, self.cursor]
        chosen_prob = probs.gather(1, chosen[:, None]).squeeze(1)
        detached = chosen_prob.detach()
        if not bool(detached.amin() > 0):
            return None
        self.cursor += 1
        self._factors.append(chosen_prob[:, None])
        self._actions.append(chosen[:, None])
        self._probs.append(detached.to(torch.float64)[:, None])
        self._branching.append(self._no_branching_column())
        self._sites.append(self._last_site)
        return chosen

    def _choose_small(
        self, weights: torch.Tensor, num_samples: int, replacement: bool, site: str, per_row: int
    ) -> torch.Tensor:
        raw = weights.detach().tolist()
        available = weights
        columns = []
        for draw in range(num_samples):
            totals = [sum(row) for row in raw]
            if any(not (total > 0 and math.isfinite(total)) or min(row) < 0 for row, total in zip(raw, totals)):
                self._normalize(available, site, replacement)  # raises, saying what is wrong
            chosen = self._decide_small(raw, totals, per_row, site)
            chosen_tensor = torch.tensor(chosen, dtype=torch.long)
            chosen_weight = available.gather(1, chosen_tensor[:, None])
            self._accumulate((chosen_weight / available.sum(dim=1, keepdim=True)).squeeze(1), per_row)
            columns.append(chosen_tensor)
            if not replacement and draw + 1 < num_samples:
                for row, action in zip(raw, chosen):
                    row[action] = 0.0
                taken = torch.nn.functional.one_hot(chosen_tensor, weights.shape[1]).bool()
                available = available.masked_fill(taken, 0)
        if num_samples == 1:
            return columns[0][:, None]
        return torch.stack(columns, dim=1)

    def _decide_small(self, raw: list[list[float]], totals: list[float], per_row: int, site: str) -> list[int]:
        chosen: list[int] = []
        probs: list[float] = []
        branching: list[bool] = []
        dead: list[bool] = []
        for index, (row, total) in enumerate(zip(raw, totals)):
            episode = index // per_row
            slot = self.cursor + index % per_row
            num_actions = len(row)
            support = [k for k, value in enumerate(row) if value > 0]
            in_forced = slot < self._forced_len_list[episode]
            replayed = slot < self._real_len_list[episode]
            forced_action = self._forced_list[episode][slot] if in_forced else -1
            feasible = 0 <= forced_action < num_actions and row[forced_action] > 0
            alive = not self._invalid_list[episode]
            if replayed and not feasible and alive:
                self._raise_replay_broken(episode, slot, site)
            action = forced_action if in_forced and feasible else support[0]
            prob = row[action] / total
            if replayed and alive and self._replay_list is not None:
                expected = self._replay_list[episode][slot]
                if abs(prob - expected) > _REPLAY_ATOL + _REPLAY_RTOL * abs(expected):
                    self._raise_replay_changed(slot, site, prob, expected)
            newly_invalid = in_forced and not replayed and not feasible and alive
            if self.spawn and alive:
                if not in_forced:
                    others = [k for k in support if k != action]
                elif not replayed and self._is_canonical(episode, slot):
                    guessed = self._guess_list.get(slot, set())
                    others = [k for k in support if k not in guessed]
                else:
                    others = []
                self._spawn_list.extend((episode, slot, k, row[k] / total) for k in others)
            if self.record_supports and episode == 0:
                self._supports[slot] = torch.tensor([value > 0 for value in row])
            if newly_invalid:
                self._invalid_list[episode] = True
                self.invalid[episode] = True
                self._some_invalid = True
            chosen.append(action)
            probs.append(prob)
            branching.append(len(support) > 1)
            dead.append(not alive or newly_invalid)
        self.cursor += per_row
        for episode in range(self.rows):
            block = slice(episode * per_row, (episode + 1) * per_row)
            self._small_actions[episode].extend(chosen[block])
            self._small_probs[episode].extend(probs[block])
            self._small_branching[episode].extend(branching[block])
        self._sites.extend([site] * per_row)
        self._dead = dead
        return chosen

    def _is_canonical(self, episode: int, slot: int) -> bool:
        if self._spec_list is None:
            return True
        return not any(self._spec_list[episode][slot:])

    def _accumulate(self, chosen_prob: torch.Tensor, per_row: int) -> None:
        if any(self._dead):
            dead = torch.tensor(self._dead)
            chosen_prob = torch.where(dead, torch.ones_like(chosen_prob), chosen_prob)
        self._factors.append(chosen_prob.reshape(self.rows, per_row))

    def _raise_replay_broken(self, row: int, slot: int, site: str) -> None:
        raise NondeterministicEpisodeError(
            f"replaying episode row {row}: at decision {slot} ({site}) the action "
            "taken before now has probability zero (or the decision has fewer actions). The episode "
            "does not behave the same way under replay: make it deterministic given its actions "
            "(no dependence on global state, wall-clock time or earlier checks)."
        )

    def _raise_replay_changed(self, slot: int, site: str, seen: float, expected: float) -> None:
        raise NondeterministicEpisodeError(
            f"replaying the same actions gave a different probability at decision {slot} "
            f"({site}): {seen:.17g} now, {expected:.17g} before. "
            "The episode must be a deterministic function of its actions: reset any state it keeps "
            "between calls (recurrent state, environment, counters) at the start of the episode."
        )

    def _record_spawns(
        self,
        probs: torch.Tensor,
        support: torch.Tensor,
        chosen: torch.Tensor,
        episode: torch.Tensor,
        slot: torch.Tensor,
        in_forced: torch.Tensor,
        replayed: torch.Tensor,
        alive: torch.Tensor,
        column: torch.Tensor,
    ) -> None:
        num_actions = probs.shape[1]
        actions = torch.arange(num_actions)
        free = alive & ~in_forced
        alternatives = support & free[:, None] & (actions[None, :] != chosen[:, None])
        speculated = alive & in_forced & ~replayed
        if bool(speculated.any()):
            canonical = self.canonical[episode, column] & speculated
            # A call covers few distinct slots (one per decision of an episode), so loop over those.
            for slot_value in torch.unique(slot[canonical]).tolist():
                here = canonical & (slot == slot_value)
                alternatives |= support & here[:, None] & ~self._guessed(int(slot_value), num_actions)[None, :]
        self._spawn_from(alternatives, probs, slot, episode)

    def finish(self) -> Pass:
        """Close the pass and return what it produced.

        Raises:
            NondeterministicEpisodeError: a row stopped before replaying its whole prefix.
        """
        slots = self.cursor
        short = (self.real_len > slots) & ~self.invalid
        if bool(short.any()):
            row = int(short.nonzero()[0, 0])
            raise NondeterministicEpisodeError(
                f"replaying episode row {row}: the episode made {slots} decisions, but the prefix being "
                f"replayed has {int(self.real_len[row])}. The same actions led to a shorter episode, so the "
                "episode is not a deterministic function of its actions."
            )
        if self._small:
            actions = torch.tensor(self._small_actions, dtype=torch.long)
            probs = torch.tensor(self._small_probs, dtype=torch.float64)
            branching = torch.tensor(self._small_branching, dtype=torch.bool)
        elif self._actions:
            actions = torch.cat(self._actions, dim=1)
            probs = torch.cat(self._probs, dim=1)
            branching = torch.cat(self._branching, dim=1)
        else:
            actions = torch.zeros(self.rows, 0, dtype=torch.long)
            probs = torch.zeros(self.rows, 0, dtype=torch.float64)
            branching = torch.zeros(self.rows, 0, dtype=torch.bool)
        spawns: list[tuple[int, int, int, float]] = list(self._spawn_list) if self._small else []
        for block in self._spawns:
            spawns.extend((int(r), int(s), int(a), float(p)) for r, s, a, p in block.tolist())
        if self._factors:
            factors = self._factors[0] if len(self._factors) == 1 else torch.cat(self._factors, dim=1)
            log_prob = torch.log(factors).sum(dim=1)
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
            no_grad_calls=self.no_grad_calls,
        )


class SequenceReplayer:
    """Chooser that forces known sequences, one episode run at a time, and keeps only their probability.

    It serves the evaluations of J at shifted parameters in sequential mode, where every sequence
    is one run of the episode: each decision is a few Python operations on the run's handful of
    probabilities, instead of the tensor bookkeeping of :class:`PrefixChooser`, and one instance
    serves every run (call :meth:`start` before each run and :meth:`finish` after it). What a replay
    must verify is still verified: every forced action is feasible, a run makes at least the
    decisions up to its sequence's last choice, and no decision past the sequence's end offers a
    choice.

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
        if weights.dim() != 2 or weights.shape[1] == 0:
            raise InvalidProbabilitiesError(
                f"{site} received probabilities of shape {tuple(weights.shape)}; expected (K,) or (rows, K) with K >= 1."
            )
        raw = weights.detach().double().tolist()
        columns = []
        for _ in range(num_samples):
            taken = []
            for row in raw:
                total = sum(row)
                if not (0 < total < math.inf) or min(row) < 0:
                    PrefixChooser._normalize(torch.tensor([row], dtype=torch.float64), site, replacement)
                slot = self.cursor
                self.cursor += 1
                if slot < len(self.path):
                    action = self.path[slot]
                    if not (0 <= action < len(row) and row[action] > 0):
                        raise NondeterministicEpisodeError(
                            f"replaying a known action sequence at shifted parameters: at decision {slot} ({site}) "
                            "the action taken before now has probability zero (or the decision has fewer actions). "
                            "The episode does not behave the same way under replay: make it deterministic given its "
                            "actions, with the same feasible actions for nearby parameter values (mask infeasible "
                            "actions with -inf logits rather than with thresholds on probabilities)."
                        )
                else:
                    feasible = [k for k, value in enumerate(row) if value > 0]
                    if len(feasible) > 1:
                        raise NondeterministicEpisodeError(
                            f"replaying a known action sequence, the episode reached decision {slot} ({site}) with "
                            "several feasible actions after the end of that sequence: the same actions led to a "
                            "longer episode, so the episode is not a deterministic function of its actions."
                        )
                    action = feasible[0]
                self.log_prob += math.log(row[action] / total)
                taken.append(action)
                if not replacement:
                    row[action] = 0.0
            columns.append(taken)
        return torch.tensor(columns, dtype=torch.long).T

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
