"""The decision rule: what a check does at every categorical decision, written once.

At a decision a row of a pass may have a *forced* action (it replays or guesses a path) or none
(it is *free*). The rule:

1. take the forced action if it is feasible (nonzero probability), else the first feasible action;
   a row whose forced action is infeasible has *failed*: it is no longer running the path it was
   meant to run;
2. spawn, as new prefixes to run later, the feasible actions that no valid row of the pass takes at
   this node: those outside ``covered`` (the actions sibling rows take there), other than the
   action this row takes itself unless it failed;
3. record the probability of the action taken.

``covered=None`` says the row is not responsible for spawning at its node (a replayed slot, a guess
whose node another row answers for, a row that failed earlier): it spawns nothing.

:func:`decide` applies the rule to one row in plain Python, :func:`decide_rows` to many rows with
tensor operations; tests hold them equal. Every chooser of the check (enumeration, speculation,
the finite-difference replayer) goes through one of them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .errors import InvalidProbabilitiesError

__all__ = ["Decision", "RowDecisions", "decide", "decide_rows", "invalid_weights_error", "weights_are_valid"]


class Decision(NamedTuple):
    """The rule's outcome for one row (a named tuple: one is made per decision of a pass)."""

    action: int
    """The action taken."""
    failed: bool
    """The row had a forced action and it was infeasible."""
    alternatives: tuple[int, ...]
    """Feasible actions to spawn as new prefixes, in increasing order."""
    branching: bool
    """The decision offered more than one feasible action."""


def decide(weights: Sequence[float], forced: int = -1, covered: Collection[int] | None = ()) -> Decision:
    """The decision rule for one row of non-negative ``weights`` (one per action).

    Arguments:
        weights: the row's weights; an action is feasible when its weight is positive.
        forced: the forced action, or ``-1`` for a free row.
        covered: the actions other rows of the pass take at this node, or ``None`` when this row
            spawns nothing.

    >>> decide([0.0, 0.3, 0.7])
    Decision(action=1, failed=False, alternatives=(2,), branching=True)
    >>> decide([0.0, 0.3, 0.7], forced=0, covered={0})
    Decision(action=1, failed=True, alternatives=(1, 2), branching=True)
    """
    support = [k for k, value in enumerate(weights) if value > 0]
    feasible = 0 <= forced < len(weights) and weights[forced] > 0
    action = forced if feasible else support[0]
    failed = forced >= 0 and not feasible
    if covered is None:
        alternatives: tuple[int, ...] = ()
    else:
        own = -1 if failed else action
        alternatives = tuple(k for k in support if k != own and k not in covered)
    return Decision(action, failed, alternatives, len(support) > 1)


@dataclass
class RowDecisions:
    """The rule's outcome for every row of a call, as tensors."""

    action: torch.Tensor
    """``(rows,)`` action taken."""
    failures: torch.Tensor | None
    """``(rows,)`` whether the row's forced action was infeasible; None when the rule already knows
    that no row failed (every forced action was feasible), which :attr:`none_failed` says."""
    alternatives: torch.Tensor | None
    """``(rows, K)`` actions to spawn (None when no row spawns)."""
    branching: torch.Tensor | None
    """``(rows,)`` whether the decision offered more than one feasible action (None when not asked for)."""
    weight: torch.Tensor
    """``(rows,)`` the weight of the action taken, with the gradient the weights carry: the rule's
    third part, the probability recorded, is this weight over the row's total."""

    @property
    def none_failed(self) -> bool:
        """True when the rule already knows that no row failed."""
        return self.failures is None

    @property
    def failed(self) -> torch.Tensor:
        """``(rows,)`` whether the row's forced action was infeasible."""
        if self.failures is None:
            return torch.zeros(self.action.shape, dtype=torch.bool)
        return self.failures


def decide_rows(
    weights: torch.Tensor,
    forced: torch.Tensor,
    covered: torch.Tensor | None,
    *,
    all_forced: bool = False,
    branching: bool = True,
) -> RowDecisions:
    """The decision rule of :func:`decide` for every row at once.

    Arguments:
        weights: ``(rows, K)`` non-negative weights of each row (bool for a bare support); an action
            is feasible when its weight is positive. They may carry gradient, which
            :attr:`RowDecisions.weight` keeps.
        forced: ``(rows,)`` long, each row's forced action (``-1`` for a free row; any value past
            ``K - 1`` is infeasible).
        covered: ``(rows, K)`` bool, the actions other rows take at each row's node (all True for
            a row that spawns nothing), or ``None`` when no row spawns.
        all_forced: the caller knows that every row has a forced action below ``K``; when all of
            them prove feasible (a replay of known sequences), the fallback is skipped, and so is the
            support when neither ``covered`` nor ``branching`` needs it: the weights of the forced
            actions, which the recorded probabilities need anyway, say whether they are feasible.
        branching: compute :attr:`RowDecisions.branching` (a replay of known sequences needs it only
            where some row is past its sequence's end).

    >>> out = decide_rows(torch.tensor([[False, True, True]]), torch.tensor([-1]), torch.zeros(1, 3, dtype=torch.bool))
    >>> out.action.tolist(), out.alternatives.tolist()
    ([1], [[False, False, True]])
    """
    num_actions = weights.shape[1]
    if all_forced:
        forced_weight = weights.gather(1, forced[:, None]).squeeze(1)
        # The weights are non-negative: the smallest forced weight is positive when every one is.
        if forced_weight.detach().amin().item() > 0:
            support = weights.detach() > 0 if covered is not None or branching else None
            return _with_alternatives(support, forced, None, forced_weight, covered, branching)
        # Every row has a forced action in range: it failed where its weight is zero.
        support = weights.detach() > 0
        feasible = forced_weight.detach() > 0
        action = torch.where(feasible, forced, support.to(torch.int8).argmax(dim=1))
        weight = weights.gather(1, action[:, None]).squeeze(1)
        return _with_alternatives(support, action, ~feasible, weight, covered, branching)
    support = weights.detach() > 0
    first = support.to(torch.int8).argmax(dim=1)
    has_forced = forced >= 0
    in_range = has_forced & (forced < num_actions)
    feasible = in_range & support.gather(1, forced.clamp(0, num_actions - 1)[:, None]).squeeze(1)
    action = torch.where(feasible, forced, first)
    weight = weights.gather(1, action[:, None]).squeeze(1)
    return _with_alternatives(support, action, has_forced & ~feasible, weight, covered, branching)


def _with_alternatives(
    support: torch.Tensor | None,
    action: torch.Tensor,
    failed: torch.Tensor | None,
    weight: torch.Tensor,
    covered: torch.Tensor | None,
    branching: bool,
) -> RowDecisions:
    """The rule's second half, once the actions are taken (``failed`` None when no row failed):
    what each row spawns."""
    alternatives = None
    if covered is not None:
        assert support is not None
        # The action a row takes is not its alternative, unless the row failed (its fallback is not
        # the node's guess, so no sibling row covers it).
        own = _actions(support.shape[1]) == action[:, None]
        if failed is not None:
            own &= ~failed[:, None]
        alternatives = support & ~covered & ~own
    branches = None
    if branching:
        assert support is not None
        branches = support.sum(dim=1) > 1
    return RowDecisions(action, failed, alternatives, branches, weight)


@functools.lru_cache(maxsize=64)
def _actions(num_actions: int) -> torch.Tensor:
    """``(1, K)``: the action indices, to compare with a column of actions."""
    return torch.arange(num_actions)[None, :]


def weights_are_valid(weights: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The row sums of ``weights`` (differentiable, ``(rows, 1)``) and whether every row is a valid
    distribution: no negative weight and a finite, positive total.

    >>> weights_are_valid(torch.tensor([[1.0, 3.0]]))[1]
    True
    """
    # A product with a column of ones is a row sum several times faster than sum(dim=1) for the
    # few actions of a decision (and as exact: the same few additions).
    total = weights @ _ones(weights.shape[1], weights.dtype, weights.device)
    # NaN fails every comparison; an infinite weight makes its total infinite.
    smallest, largest = torch.aminmax(total.detach())
    valid = weights.detach().amin().item() >= 0 and smallest.item() > 0 and largest.item() < math.inf
    return total, valid


@functools.lru_cache(maxsize=64)
def _ones(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.ones(size, 1, dtype=dtype, device=device)


def invalid_weights_error(weights: torch.Tensor, site: str, replacement: bool) -> InvalidProbabilitiesError | None:
    """The error that says what is wrong with weights that :func:`weights_are_valid` refused, or
    None if nothing is (finite weights whose total overflowed).

    >>> print(invalid_weights_error(torch.tensor([[-1.0, 2.0]]), "torch.multinomial", True))
    torch.multinomial received negative probabilities (smallest -1). Pass softmax outputs or non-negative weights.
    """
    detached = weights.detach()
    if not bool(torch.isfinite(detached).all()):
        return InvalidProbabilitiesError(
            f"{site} received NaN or infinite probabilities. Check the logits that feed it "
            "(an overflow, a division by zero, or log(0) upstream)."
        )
    if bool((detached < 0).any()):
        return InvalidProbabilitiesError(
            f"{site} received negative probabilities (smallest {detached.min().item():.3g}). "
            "Pass softmax outputs or non-negative weights."
        )
    if bool((detached.sum(dim=1) > 0).all()):
        return None
    detail = "no action left to draw without replacement" if not replacement else "every action has probability zero"
    return InvalidProbabilitiesError(
        f"{site} received a row whose probabilities are all zero ({detail}). "
        "Make sure each decision leaves at least one action possible."
    )
