"""Returns, surrogate and losses, with numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlntm_demo.config import ObjectiveConfig
from rlntm_demo.model import Rollout
from rlntm_demo.objective import (
    baseline_loss,
    entropy_rewards,
    episode_losses,
    episode_objective,
    pathwise_loss,
    policy_surrogate,
    returns,
    reward_to_go,
    total_return,
)

REWARDS = torch.tensor([[-1.0, 0.0, -2.0, -0.5], [-3.0, -1.0, 0.0, 0.0]])
MASK = torch.tensor([[True, True, True, True], [True, True, False, False]])


def test_reward_to_go_by_hand() -> None:
    assert reward_to_go(REWARDS, MASK).tolist() == [[-3.5, -2.5, -2.5, -0.5], [-4.0, -1.0, 0.0, 0.0]]


def test_reward_to_go_ignores_masked_rewards() -> None:
    rewards = torch.tensor([[1.0, 2.0, 100.0]])
    assert reward_to_go(rewards, torch.tensor([[True, True, False]])).tolist() == [[3.0, 2.0, 0.0]]


def test_total_return_by_hand() -> None:
    assert total_return(REWARDS, MASK).tolist() == [[-3.5] * 4, [-4.0, -4.0, 0.0, 0.0]]
    assert returns(REWARDS, MASK, ObjectiveConfig(returns="total")).tolist() == total_return(REWARDS, MASK).tolist()


def test_policy_surrogate_by_hand() -> None:
    log_probs = torch.tensor([[[-1.0, 0.0, -0.5], [0.0, -2.0, 0.0]]], requires_grad=True)
    advantages = torch.tensor([[2.0, -1.0]])
    mask = torch.tensor([[True, True]])
    surrogate = policy_surrogate(log_probs, advantages, mask)
    # -( (-1.5) * 2 + (-2) * (-1) ) = -(-3 + 2) = 1
    assert surrogate.tolist() == [1.0]
    surrogate.sum().backward()
    assert log_probs.grad is not None
    assert log_probs.grad.tolist() == [[[-2.0, -2.0, -2.0], [1.0, 1.0, 1.0]]]
    assert policy_surrogate(log_probs, advantages, torch.tensor([[True, False]])).tolist() == [3.0]


def test_pathwise_and_baseline_losses() -> None:
    assert pathwise_loss(REWARDS, MASK).tolist() == [3.5, 4.0]
    to_go = reward_to_go(REWARDS, MASK).requires_grad_()
    baselines = torch.full_like(to_go, -1.0, requires_grad=True)
    loss = baseline_loss(to_go, baselines, MASK)
    # Row 0: (-2.5)^2 + (-1.5)^2 + (-1.5)^2 + 0.5^2 = 6.25 + 2.25 + 2.25 + 0.25; row 1: 9 + 0.
    assert loss.tolist() == [11.0, 9.0]
    loss.sum().backward()
    assert to_go.grad is None  # the returns are regression targets, not trained
    assert baselines.grad is not None and baselines.grad[1].tolist() == [6.0, 0.0, 0.0, 0.0]


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        baseline_loss(REWARDS, REWARDS[:, :2], MASK)


def hand_rollout(baselines: torch.Tensor) -> Rollout:
    log_probs = torch.full((2, 4, 3), -0.5).requires_grad_()
    size, steps = MASK.shape
    return Rollout(
        actions=torch.zeros(size, steps, 3, dtype=torch.long),
        log_probs=log_probs,
        rewards=REWARDS.clone().requires_grad_(),
        mask=MASK,
        baselines=baselines,
        input_heads=torch.zeros(size, steps, dtype=torch.long),
        memory_heads=None,
        output_positions=torch.zeros(size, steps, dtype=torch.long),
        predictions=torch.zeros(size, steps, dtype=torch.long),
    )


def test_episode_losses_by_hand() -> None:
    baselines = (torch.full((2, 4), -1.0) * MASK).requires_grad_()
    rollout = hand_rollout(baselines)
    losses = episode_losses(rollout)
    assert losses.objective.tolist() == episode_objective(rollout).tolist() == [-3.5, -4.0]
    # Advantages R_t - b_t: row 0 (-2.5, -1.5, -1.5, 0.5), row 1 (-3, 0); each step's log p is -1.5.
    assert losses.policy.tolist() == [-(1.5 * 5.0), -(1.5 * 3.0)]
    assert losses.pathwise.tolist() == [3.5, 4.0]
    assert losses.baseline.tolist() == [11.0, 9.0]
    torch.testing.assert_close(losses.total, losses.policy + losses.pathwise + losses.baseline)
    losses.policy.sum().backward()
    assert baselines.grad is None  # the surrogate does not train the baseline


def test_returns_must_be_a_known_kind() -> None:
    with pytest.raises(ValueError, match="unknown returns 'discounted'; choose one of: reward-to-go, total"):
        ObjectiveConfig(returns="discounted")


def test_entropy_bonus_is_reinforced_like_a_reward() -> None:
    # Each step's three decisions have log p = -0.5, so a live step earns 0.2 * 1.5 = 0.3.
    baselines = torch.zeros(2, 4)
    plain = episode_losses(hand_rollout(baselines))
    regularized = episode_losses(hand_rollout(baselines), ObjectiveConfig(entropy_bonus=0.2))
    assert plain.entropy.tolist() == [0.0, 0.0]
    assert regularized.entropy.tolist() == pytest.approx([1.2, 0.6])
    torch.testing.assert_close(regularized.returns, reward_to_go(REWARDS + 0.3, MASK))
    # Only the returns change: the bonus's own pathwise gradient has expectation zero.
    assert regularized.pathwise.tolist() == plain.pathwise.tolist()
    assert regularized.objective.tolist() == plain.objective.tolist()
    assert entropy_rewards(torch.zeros(2, 4, 3), MASK, 0.2).tolist() == [[0.0] * 4] * 2  # forced: no bonus
    with pytest.raises(ValueError, match="entropy_bonus must be a number >= 0"):
        ObjectiveConfig(entropy_bonus=-0.1)
    with pytest.raises(ValueError, match="entropy_bonus_at_top must be a number >= 0 or null"):
        ObjectiveConfig(entropy_bonus_at_top=-0.1)


def test_step_entropies_by_hand_with_infeasible_and_forced_choices() -> None:
    from rlntm_demo.objective import step_entropies

    probs = torch.tensor([[[[0.5, 0.5, 0.0], [0.25, 0.25, 0.5], [1.0, 0.0, 0.0]],
                           [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]]], requires_grad=True)
    mask = torch.tensor([[True, False]])
    entropies = step_entropies(probs, mask)
    expected = math.log(2) + (0.5 * math.log(4) + 0.5 * math.log(2))
    assert entropies[0, 0].item() == pytest.approx(expected, rel=1e-6) and entropies[0, 1].item() == 0.0
    entropies.sum().backward()
    assert probs.grad is not None and bool(torch.isfinite(probs.grad).all())
    # d(-p log p)/dp = -(log p + 1) at feasible choices; 0 at infeasible ones and masked steps.
    assert probs.grad[0, 0, 0, 2].item() == 0.0 and bool((probs.grad[0, 1] == 0).all())
    assert probs.grad[0, 0, 0, 0].item() == pytest.approx(-(math.log(0.5) + 1), rel=1e-6)


def test_the_per_step_entropy_term_joins_the_loss_not_the_returns() -> None:
    log_probs = torch.log(torch.tensor([[[0.5, 1.0, 0.25], [1.0, 1.0, 0.5]]]))
    probs = torch.tensor([[[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.25, 0.75, 0.0]],
                           [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]]])
    rollout = Rollout(actions=torch.zeros(1, 2, 3, dtype=torch.long), log_probs=log_probs,
                      rewards=torch.tensor([[0.0, -1.0]]), mask=torch.tensor([[True, True]]),
                      baselines=torch.zeros(1, 2), input_heads=torch.zeros(1, 2, dtype=torch.long), memory_heads=None,
                      output_positions=torch.zeros(1, 2, dtype=torch.long), predictions=torch.full((1, 2), -1),
                      decision_probs=probs)
    per_step = episode_losses(rollout, ObjectiveConfig(entropy_bonus=0.3, entropy_mode="per-step"))
    plain = episode_losses(rollout)
    assert torch.equal(per_step.returns, plain.returns)  # nothing paid through the returns
    assert per_step.regularizer is not None and plain.regularizer is None
    h = (math.log(2)) + (0.25 * math.log(4) + 0.75 * math.log(4 / 3)) + math.log(2)
    assert per_step.regularizer.item() == pytest.approx(-0.3 * h, rel=1e-6)
    assert per_step.entropy.item() == pytest.approx(0.3 * h, rel=1e-6)
    assert per_step.total.item() == pytest.approx(plain.total.item() - 0.3 * h, rel=1e-6)
    through_returns = episode_losses(rollout, ObjectiveConfig(entropy_bonus=0.3))
    assert not torch.equal(through_returns.returns, plain.returns)
    with pytest.raises(ValueError, match="unknown entropy_mode 'sometimes'"):
        ObjectiveConfig(entropy_mode="sometimes")
