"""Check two REINFORCE estimators for a tiny LSTM policy, exactly.

The policy picks one of 3 actions at each of 5 steps (3**5 = 243 action sequences) and earns a
reward of 1 whenever its action matches a fixed target pattern. Two estimators are checked:

1. REINFORCE with reward-to-go, ``loss = -sum_t log pi(a_t) * G_t``: unbiased, so the check passes.
2. The same with the returns standardized within the episode (minus their mean, divided by their
   standard deviation, over the episode's own steps), as a widely copied tutorial does. The mean and
   standard deviation depend on the sampled actions, so the estimator is biased, and the check says so.

Run it with ``python examples/showcase.py``; it takes a few seconds on a CPU.
"""

from __future__ import annotations

import torch

from reinforce_check import check_reinforce

NUM_ACTIONS = 3
NUM_STEPS = 5
HIDDEN = 8
TARGET = torch.tensor([0, 1, 2, 1, 0])
"""The action that earns a reward at each step."""


class LSTMPolicy(torch.nn.Module):
    """An LSTM that reads the previous action and outputs logits over the next one."""

    def __init__(self, num_actions: int = NUM_ACTIONS, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.num_actions = num_actions
        self.cell = torch.nn.LSTMCell(num_actions + 1, hidden)
        self.head = torch.nn.Linear(hidden, num_actions)

    def rollout(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``batch_size`` independent episodes.

        Returns:
            ``(log_probs, rewards)``, both of shape ``(batch_size, NUM_STEPS)``.
        """
        h = torch.zeros(batch_size, self.cell.hidden_size, dtype=torch.float64)
        c = torch.zeros_like(h)
        # The input is the one-hot previous action; the extra last column marks the first step.
        previous = torch.zeros(batch_size, self.num_actions + 1, dtype=torch.float64)
        previous[:, -1] = 1.0
        log_probs, rewards = [], []
        for step in range(NUM_STEPS):
            h, c = self.cell(previous, (h, c))
            dist = torch.distributions.Categorical(logits=self.head(h))
            action = dist.sample()  # intercepted during a check
            log_probs.append(dist.log_prob(action))
            rewards.append((action == TARGET[step]).to(torch.float64))
            previous = torch.nn.functional.one_hot(action, self.num_actions + 1).to(torch.float64)
        return torch.stack(log_probs, dim=1), torch.stack(rewards, dim=1)


def rewards_to_go(rewards: torch.Tensor) -> torch.Tensor:
    """``G_t = r_t + r_{t+1} + ... + r_T`` for every step, row by row (undiscounted)."""
    return rewards.flip(1).cumsum(1).flip(1)


def make_episode(policy: LSTMPolicy, *, standardize: bool):
    """An ``episode(batch_size)`` for :func:`check_reinforce` in batched mode.

    It returns the per-row objective (the total reward, whose expectation REINFORCE maximizes) and
    the per-row loss the implementation minimizes.
    """

    def episode(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs, rewards = policy.rollout(batch_size)
        returns = rewards_to_go(rewards)
        if standardize:
            # The tutorial's normalization, over the episode's own steps: biased.
            mean = returns.mean(dim=1, keepdim=True)
            std = returns.std(dim=1, keepdim=True)
            returns = (returns - mean) / (std + 1e-8)
        loss = -(log_probs * returns.detach()).sum(dim=1)
        return rewards.sum(dim=1), loss

    return episode


def main() -> None:
    torch.manual_seed(0)
    policy = LSTMPolicy().double()
    params = dict(policy.named_parameters())

    print("1. REINFORCE with reward-to-go (batched mode, with the exact variance)")
    report = check_reinforce(make_episode(policy, standardize=False), params, batched=True, variance=True)
    print(report)

    print()
    print("2. The same, with returns standardized within each episode")
    report = check_reinforce(make_episode(policy, standardize=True), params, batched=True, raise_exception=False)
    print(report)
    print()
    if report.ok:
        print("Unexpected: the check did not detect the bias of standardized returns.")
        raise SystemExit(1)
    print(
        f"The check found the bias: over all {report.num_sequences} action sequences, the expected gradient of the "
        f"standardized loss differs from the exact -grad J (largest relative error {report.max_rel_error:.2g})."
    )


if __name__ == "__main__":
    main()
