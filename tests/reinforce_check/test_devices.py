"""Policies on another device than the CPU (a GPU): the check enumerates and differentiates them too.

The chooser's bookkeeping runs on the CPU; the probabilities it is handed are copied there (a copy
autograd differentiates back to the device), the actions go back to the policy's device, and the
episode's outputs are accumulated on the CPU. Each case runs on the CPU everywhere and on CUDA where
a GPU is present. The check's default tolerances apply (rtol 1e-6, atol 1e-9, float64).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from reinforce_check import ReinforceCheckError, check_reinforce

ACTIONS, STEPS, HIDDEN = 3, 3, 6

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
]


class Policy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = torch.nn.LSTMCell(ACTIONS, HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, ACTIONS)
        self.stop = torch.nn.Linear(HIDDEN, 1)


def make_episode(
    policy: Policy, device: torch.device, *, batched: bool, sampler: str, standardized: bool
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """REINFORCE with reward-to-go (or, biased, returns standardized within the episode) for a
    recurrent policy on ``device``. A reward of 1 when the action equals the step modulo 3; with the
    ``bernoulli`` sampler a coin decides at each step whether the reward is doubled."""
    target = torch.arange(STEPS, device=device) % ACTIONS

    def episode(rows: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.zeros(rows, HIDDEN, dtype=torch.float64, device=device)
        c = torch.zeros_like(h)
        x = torch.zeros(rows, ACTIONS, dtype=torch.float64, device=device)
        log_probs, rewards = [], []
        for t in range(STEPS):
            h, c = policy.cell(x, (h, c))
            logits = policy.head(h)
            if sampler == "multinomial":
                probs = torch.softmax(logits, -1)
                action = torch.multinomial(probs, 1).squeeze(1)
                log_prob = probs.gather(1, action[:, None]).squeeze(1).log()
            else:
                dist = torch.distributions.Categorical(logits=logits)
                action = dist.sample()
                log_prob = dist.log_prob(action)
            assert action.device == target.device  # the policy's own device, as torch returns it
            reward = (action == target[t]).double()
            if sampler == "bernoulli":
                coin = torch.distributions.Bernoulli(logits=policy.stop(h).squeeze(1))
                doubled = coin.sample()
                log_prob = log_prob + coin.log_prob(doubled)
                reward = reward * (1 + doubled)
            log_probs.append(log_prob)
            rewards.append(reward)
            x = torch.nn.functional.one_hot(action, ACTIONS).double()
        reward_matrix = torch.stack(rewards, 1)
        to_go = reward_matrix.flip(1).cumsum(1).flip(1)
        if standardized:
            to_go = (to_go - to_go.mean(1, keepdim=True)) / (to_go.std(1, keepdim=True) + 1e-8)
        loss = -(torch.stack(log_probs, 1) * to_go.detach()).sum(1)
        objective = reward_matrix.sum(1)
        return (objective, loss) if batched else (objective[0], loss[0])

    return episode if batched else (lambda: episode())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("sampler", ["multinomial", "categorical", "bernoulli"])
def test_reward_to_go_passes_and_standardized_returns_are_caught_on_the_device(device: str, batched: bool, sampler: str) -> None:
    torch.manual_seed(0)
    policy = Policy().double().to(device)
    params = dict(policy.named_parameters())
    report = check_reinforce(make_episode(policy, torch.device(device), batched=batched, sampler=sampler, standardized=False),
                             params, batched=batched)
    assert report.num_sequences == (2 * ACTIONS) ** STEPS if sampler == "bernoulli" else ACTIONS**STEPS
    assert all(p.device.type == device for p in params.values())  # left where they were
    with pytest.raises(ReinforceCheckError, match="REINFORCE gradient mismatch"):
        check_reinforce(make_episode(policy, torch.device(device), batched=batched, sampler=sampler, standardized=True),
                        params, batched=batched)
