r"""From an episode's rewards to the loss whose gradient trains the RL-NTM.

The objective (Section 2) is the expected log-probability of the targets,

.. math:: J(\theta) = \mathbb{E}_{a \sim p_\theta}\Big[\sum_t r_t\Big],
   \qquad r_t = [\text{the step predicts}]\,\log p_\theta(y_{\text{pos}_t} \mid \ldots),

and its gradient has two parts. The discrete decisions are trained by **REINFORCE** (score
function); the predictions and the memory writes, which ``r_t`` depends on directly, by
**backpropagation** (the pathwise part):

.. math:: \nabla J = \mathbb{E}\Big[\sum_t \nabla \log p_\theta(a_t \mid a_{<t})\,(R_t - b_t)
   + \sum_t \nabla r_t\Big], \qquad R_t = \sum_{s \ge t} r_s.

The functions here are pure: tensors in, tensors out, each one documented with what it computes.
:func:`episode_losses` puts them together, per row:

``total = policy + pathwise + baseline``, where

* ``policy = -sum_t log p(a_t) * (R_t - b_t)``, with ``R_t - b_t`` a constant (detached), and
  ``log p(a_t)`` the sum of the three decisions' log-probabilities;
* ``pathwise = -sum_t r_t``, differentiated through the predictions and memory writes;
* ``baseline = sum_t (R_t - b_t)^2`` with ``R_t`` detached: it trains the baseline LSTM only
  (the moving average is a buffer; the LSTM reads the controller's inputs detached).

Variance reduction (Appendix A), each one a named option:

1. **Reward-to-go** (``ObjectiveConfig.returns = "reward-to-go"``): the actions of step t are
   reinforced by ``R_t``, not by the whole episode's return, since they cannot change earlier
   rewards. ``"total"`` is plain REINFORCE (Section 4).
2. **Online baseline** (``ModelConfig.baseline = "online"``): ``b_t`` is a per-step exponential
   moving average of ``R_t`` over past batches, the "single scalar ... estimated as
   E R(a_{t:T})" that Appendix A ends on. It is updated between batches
   (:meth:`~rlntm_demo.model.RLNTM.update_online_baseline`), never from the batch it is applied
   to, so it is a constant for every episode and leaves the gradient unbiased. The authors' code
   had no such average; the paper lists it as one of the three techniques.
3. **Offline baseline** (``"offline"``): the baseline LSTM that first reads the whole input,
   then runs in tandem with the controller, trained on ``sum_t (R_t - b_t)^2``. The paper calls
   the resulting estimator biased; since ``b_t`` depends only on the input and on the actions
   before step t, the expectation of ``grad log p(a_t) * b_t`` is zero, and the exact check
   (:mod:`rlntm_demo.check`) confirms that the policy gradient stays exactly unbiased.

``"both"`` adds the two; the LSTM then learns what the moving average misses.

Not in the paper: an **entropy bonus** (``ObjectiveConfig.entropy_bonus = beta``, used by the
``fast`` preset). Each step's reward gets :func:`entropy_rewards`, ``-beta log p(a_t)``, inside the
returns only, so the loss is an unbiased estimate of ``-grad (J + beta H)``, H the entropy of the
action sequence; :attr:`Losses.entropy` is that term, for the exact check's objective. With
``ObjectiveConfig.entropy_mode = "per-step"`` the bonus is instead a term ``-beta sum_t H_t`` of
the loss (:func:`step_entropies`, :attr:`Losses.regularizer`), which pays nothing through the
returns; see :attr:`~rlntm_demo.config.ObjectiveConfig.entropy_mode` for the objective it is the
exact gradient of.

>>> import torch
>>> rewards = torch.tensor([[-1.0, 0.0, -2.0, 0.0]])
>>> mask = torch.tensor([[True, True, True, False]])
>>> reward_to_go(rewards, mask).tolist()
[[-3.0, -2.0, -2.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .config import ObjectiveConfig

if TYPE_CHECKING:
    from .model import Rollout

__all__ = [
    "LossTerms",
    "Losses",
    "advantages",
    "baseline_loss",
    "entropy_rewards",
    "episode_losses",
    "episode_objective",
    "leave_one_out",
    "pathwise_loss",
    "policy_surrogate",
    "returns",
    "reward_to_go",
    "step_entropies",
    "total_return",
]


def _check_shapes(*tensors: torch.Tensor) -> None:
    shape = tensors[0].shape
    for tensor in tensors[1:]:
        if tensor.shape != shape:
            raise ValueError(f"shape mismatch: {tuple(shape)} and {tuple(tensor.shape)}")


def reward_to_go(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reward-to-go ``R_t = sum_{s >= t} r_s`` of every step, row by row (undiscounted).

    Arguments:
        rewards: (B, T) per-step rewards.
        mask: (B, T) bool, the steps that belong to the episode.

    Returns:
        (B, T), 0 at masked steps.

    >>> reward_to_go(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[True, True, True]])).tolist()
    [[6.0, 5.0, 3.0]]
    """
    _check_shapes(rewards, mask)
    masked = rewards * mask
    return masked.flip(1).cumsum(1).flip(1) * mask


def total_return(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The episode's whole return ``R_1 = sum_s r_s``, repeated at every step of the episode.

    Returns:
        (B, T), 0 at masked steps.

    >>> total_return(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[True, True, False]])).tolist()
    [[3.0, 3.0, 0.0]]
    """
    _check_shapes(rewards, mask)
    return (rewards * mask).sum(1, keepdim=True) * mask


def returns(rewards: torch.Tensor, mask: torch.Tensor, config: ObjectiveConfig) -> torch.Tensor:
    """The returns that reinforce each step's actions, as ``config.returns`` says."""
    if config.returns == "total":
        return total_return(rewards, mask)
    return reward_to_go(rewards, mask)


def advantages(returns: torch.Tensor, baselines: torch.Tensor) -> torch.Tensor:
    """``R_t - b_t``, detached: the surrogate's weights are constants, so that REINFORCE trains
    the policy only (the baseline has its own loss, :func:`baseline_loss`)."""
    return (returns - baselines).detach()


def leave_one_out(values: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """For each row, the mean of ``values`` over the *other* rows of its group, step by step.

    Rows come in consecutive groups of ``group_size`` rollouts of one input
    (:meth:`~rlntm_demo.tasks.Batch.repeat`). At step t, row i gets the average of ``values[j, t]``
    over the rows j != i of its group whose episode reached step t (0 if none did). It depends on
    the other rollouts only, which are independent of row i's actions, so subtracting it from
    row i's returns leaves the policy gradient unbiased: the leave-one-out baseline (RLOO; Kool et
    al., 2019), applied per step to the reward-to-go.

    Arguments:
        values: (B, T), B a multiple of ``group_size``.
        mask: (B, T) bool.
        group_size: rollouts per input, at least 2.

    Returns:
        (B, T), 0 at masked steps.

    >>> values = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 6.0]])
    >>> mask = torch.tensor([[True, True], [True, False], [True, True]])
    >>> leave_one_out(values, mask, 3).tolist()
    [[4.0, 6.0], [3.0, 0.0], [2.0, 2.0]]
    """
    _check_shapes(values, mask)
    if group_size < 2:
        raise ValueError(f"a leave-one-out baseline needs at least 2 rollouts per input, not {group_size}")
    rows, steps = values.shape
    if rows % group_size:
        raise ValueError(f"{rows} rows do not split into groups of {group_size} rollouts")
    live = mask.to(values.dtype)
    masked = (values * live).view(-1, group_size, steps)
    counts = live.view(-1, group_size, steps)
    others = (masked.sum(1, keepdim=True) - masked).view(rows, steps)
    others_count = (counts.sum(1, keepdim=True) - counts).view(rows, steps)
    return others / others_count.clamp(min=1) * mask


def policy_surrogate(log_probs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The REINFORCE surrogate ``-sum_t log p(a_t) * A_t`` of each row.

    Its gradient is the score-function estimate of ``-grad J`` when ``A_t`` is a constant
    (detached) return minus a baseline that does not depend on ``a_t``.

    Arguments:
        log_probs: (B, T, K) log-probabilities of the K decisions of each step.
        advantages: (B, T) ``R_t - b_t``, detached by the caller.
        mask: (B, T) bool.

    Returns:
        (B,).
    """
    _check_shapes(log_probs[..., 0], advantages, mask)
    return -(log_probs.sum(-1) * advantages * mask).sum(1)


def pathwise_loss(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``-sum_t r_t`` per row: backpropagated, it trains the predictions and the memory writes.

    Returns:
        (B,).
    """
    _check_shapes(rewards, mask)
    return -(rewards * mask).sum(1)


def baseline_loss(returns: torch.Tensor, baselines: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The baseline's regression loss ``sum_t (R_t - b_t)^2`` per row, with ``R_t`` detached.

    Returns:
        (B,).
    """
    _check_shapes(returns, baselines, mask)
    return ((returns.detach() - baselines) ** 2 * mask).sum(1)


def entropy_rewards(log_probs: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """The entropy bonus of every step: ``-beta log p(a_t)``, the sum over its three decisions.

    Its expectation over the action sequences is ``beta`` times the entropy of the sequence given
    the input, so adding it to the rewards maximizes ``J + beta H``. Forced decisions have
    ``log p = 0`` and earn nothing.

    Arguments:
        log_probs: (B, T, K) log-probabilities of the K decisions of each step.
        mask: (B, T) bool.
        beta: the weight, >= 0.

    Returns:
        (B, T), differentiable, 0 at masked steps.

    >>> log_probs = torch.log(torch.tensor([[[0.5, 1.0, 0.25]]]))
    >>> entropy_rewards(log_probs, torch.tensor([[True]]), 0.1)
    tensor([[0.2079]])
    """
    _check_shapes(log_probs[..., 0], mask)
    return -beta * log_probs.sum(-1) * mask


def step_entropies(decision_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The entropy H_t of every step's decisions: ``-sum p log p`` over the choices of each of
    them, summed over the decisions (they are drawn independently given the step's state).

    Infeasible choices (probability exactly 0) add 0, with a zero gradient; a forced decision
    has entropy 0.

    Arguments:
        decision_probs: (B, T, D, 3), :attr:`Rollout.decision_probs <rlntm_demo.model.Rollout.decision_probs>`.
        mask: (B, T) bool.

    Returns:
        (B, T), differentiable, 0 at masked steps.

    >>> probs = torch.tensor([[[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]]])
    >>> step_entropies(probs, torch.tensor([[True]]))
    tensor([[0.6931]])
    """
    _check_shapes(decision_probs[..., 0, 0], mask)
    positive = decision_probs > 0
    log_p = torch.where(positive, decision_probs, torch.ones_like(decision_probs)).log()
    return -(decision_probs * log_p).sum((-1, -2)) * mask


def episode_objective(rollout: Rollout) -> torch.Tensor:
    """``sum_t r_t`` per row: the log-likelihood of the targets along the episode, whose
    expectation over action sequences is the RL-NTM's objective J.

    Returns:
        (B,).
    """
    return (rollout.rewards * rollout.mask).sum(1)


@dataclass(frozen=True)
class LossTerms:
    """The functions :func:`episode_losses` puts together, as one value: a deliberate bug
    (:mod:`rlntm_demo.bugs`) is this with one of them replaced."""

    returns: Callable[[torch.Tensor, torch.Tensor, ObjectiveConfig], torch.Tensor] = returns
    """The returns ``R_t`` from the rewards and the mask (:func:`returns`)."""
    advantages: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = advantages
    """``R_t - b_t`` as the surrogate weighs it (:func:`advantages`)."""
    pathwise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = pathwise_loss
    """The part trained by backpropagation (:func:`pathwise_loss`)."""


@dataclass
class Losses:
    """The per-row parts of the loss of a batch of episodes, each of shape (B,)."""

    objective: torch.Tensor
    """``sum_t r_t``: what the model maximizes in expectation (not a loss; for logging and checks)."""
    entropy: torch.Tensor
    """``-beta sum_t log p(a_t)``, differentiable: the entropy bonus the episode earned (0 without
    one). The regularized objective ``objective + entropy`` is what the loss is the gradient of.
    With ``entropy_mode = "per-step"``: ``beta sum_t H_t`` (:func:`step_entropies`) instead."""
    policy: torch.Tensor
    """The REINFORCE surrogate ``-sum_t log p(a_t) (R_t - b_t)``."""
    pathwise: torch.Tensor
    """``-sum_t r_t``, for backpropagation into the predictions and memory writes."""
    baseline: torch.Tensor
    """``sum_t (R_t - b_t)^2``, which trains the baseline LSTM."""
    returns: torch.Tensor
    """(B, T) the returns used (for :meth:`~rlntm_demo.model.RLNTM.update_online_baseline`)."""
    regularizer: torch.Tensor | None = None
    """``-beta sum_t H_t`` with ``entropy_mode = "per-step"`` (``None`` otherwise): the
    per-step entropy term of the loss."""

    @property
    def total(self) -> torch.Tensor:
        """``policy + pathwise + baseline`` (+ ``regularizer``): the loss to minimize, per row (B,)."""
        total = self.policy + self.pathwise + self.baseline
        return total if self.regularizer is None else total + self.regularizer


def episode_losses(rollout: Rollout, config: ObjectiveConfig | None = None, *, group_size: int = 1,
                   terms: LossTerms = LossTerms()) -> Losses:
    """Every part of the loss of a batch of episodes.

    Arguments:
        rollout: what :meth:`~rlntm_demo.model.RLNTM.run_episode` returned.
        config: the returns and the entropy bonus.
        group_size: with more than 1, the rows are groups of this many rollouts of one input, and
            each row's advantage ``R_t - b_t`` is further reduced by the :func:`leave_one_out`
            mean of the others' ``R_t - b_t``.
        terms: the functions used (the tests of the exact check replace one with a deliberate bug).

    Returns:
        :class:`Losses`; average ``losses.total`` over the rows to train (the paper normalizes
        by the batch size, not by the sequence length).
    """
    config = config or ObjectiveConfig()
    mask = rollout.mask
    regularizer = None
    if config.entropy_mode == "per-step" and config.entropy_bonus:
        if rollout.decision_probs is None:
            raise ValueError("entropy_mode 'per-step' needs the rollout's decision_probs")
        entropy = config.entropy_bonus * step_entropies(rollout.decision_probs, mask).sum(1)
        regularizer = -entropy
        r = terms.returns(rollout.rewards, mask, config)
    else:
        bonus = entropy_rewards(rollout.log_probs, mask, config.entropy_bonus)
        entropy = bonus.sum(1)
        # The bonus is reinforced like any reward; its own pathwise gradient, -beta grad log p(a_t),
        # has expectation zero given the step's past, so it is left out (the exact check agrees).
        r = terms.returns(rollout.rewards + bonus.detach(), mask, config)
    baselines = rollout.baselines
    weights = terms.advantages(r, baselines)
    if group_size > 1:
        weights = weights - leave_one_out(weights, mask, group_size)
    return Losses(
        objective=episode_objective(rollout),
        entropy=entropy,
        policy=policy_surrogate(rollout.log_probs, weights, mask),
        pathwise=terms.pathwise(rollout.rewards, mask),
        baseline=baseline_loss(r, baselines, mask),
        returns=r.detach(),
        regularizer=regularizer,
    )
