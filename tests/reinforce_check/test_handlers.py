"""enumerate_actions: scoped enumeration for code the user did not write."""

from __future__ import annotations

import random

import pytest
import torch
from torch.distributions import Categorical

from reinforce_check import UninterceptedRandomnessError, check_reinforce, enumerate_actions

RTOL, ATOL = 1e-9, 1e-12
REWARD = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)


def make_theta(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, generator=generator, dtype=torch.float64).requires_grad_()


class Policy(torch.nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(make_theta(seed).detach())

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        dist = Categorical(logits=self.logits)
        action = dist.sample()
        return action, dist.log_prob(action)

    def act(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward()


def noisy_episode(act, environment_draw):
    """One action from the policy, then the environment's own randomness shifts the reward."""

    def episode():
        action, log_prob = act()
        reward = REWARD[action] + environment_draw()
        return reward, -log_prob * reward

    return episode


def test_outside_a_check_decorated_code_samples_from_the_same_rng_stream():
    policy = Policy(seed=1)
    torch.manual_seed(123)
    plain = [int(policy.act()[0]) for _ in range(20)]
    scoped_act = enumerate_actions(policy.act)
    torch.manual_seed(123)
    scoped = [int(scoped_act()[0]) for _ in range(20)]
    assert scoped == plain
    assert len(set(plain)) > 1


@pytest.mark.parametrize(
    "environment_draw",
    [
        lambda: torch.rand((), dtype=torch.float64),
        lambda: torch.tensor(random.random(), dtype=torch.float64),
        lambda: Categorical(probs=torch.tensor([0.5, 0.5])).sample().double(),
    ],
    ids=["torch.rand", "python-random", "unscoped-categorical"],
)
def test_only_draws_inside_decorated_code_are_enumerated(environment_draw):
    policy = Policy(seed=2)
    episode = noisy_episode(enumerate_actions(policy.act), environment_draw)
    report = check_reinforce(episode, dict(policy.named_parameters()), rtol=RTOL, atol=ATOL)
    assert report.ok
    assert report.num_sequences == 3
    assert abs(report.total_probability - 1) < 1e-12
    assert any("enumerate_actions" in note for note in report.notes)


def test_replayed_randomness_is_the_same_for_every_sequence_and_the_rng_is_left_untouched():
    policy = Policy(seed=3)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    noise = float(torch.rand((), dtype=torch.float64))
    torch.set_rng_state(state)
    episode = noisy_episode(enumerate_actions(policy.act), lambda: torch.rand((), dtype=torch.float64))
    report = check_reinforce(episode, dict(policy.named_parameters()), rtol=RTOL, atol=ATOL)
    probs = torch.softmax(policy.logits.detach(), 0)
    assert report.objective == pytest.approx(float((probs * (REWARD + noise)).sum()), rel=1e-12)
    assert torch.equal(torch.get_rng_state(), state)


def test_without_decorated_code_environment_randomness_is_refused():
    policy = Policy(seed=4)
    episode = noisy_episode(policy.act, lambda: torch.rand((), dtype=torch.float64))
    with pytest.raises(UninterceptedRandomnessError, match="outside the intercepted samplers"):
        check_reinforce(episode, dict(policy.named_parameters()))


@pytest.mark.parametrize("form", ["module", "class", "context-manager", "method-of-instance"])
def test_every_form_of_enumerate_actions_scopes_the_policy(form):
    if form == "class":

        @enumerate_actions
        class ScopedPolicy(Policy):
            def act(self) -> tuple[torch.Tensor, torch.Tensor]:
                return self.forward()

        policy = ScopedPolicy(seed=5)
        act = policy.act
    else:
        policy = Policy(seed=5)
        if form == "module":
            enumerate_actions(policy)
            act = policy
        elif form == "method-of-instance":
            policy.act = enumerate_actions(policy.act)
            act = policy.act
        else:

            def act():
                with enumerate_actions():
                    return policy.act()

    environment = Categorical(probs=torch.tensor([0.25, 0.75]))
    episode = noisy_episode(act, lambda: environment.sample().double())
    report = check_reinforce(episode, dict(policy.named_parameters()), rtol=RTOL, atol=ATOL)
    assert report.ok
    assert report.num_sequences == 3


def test_a_bias_inside_scoped_code_is_still_caught():
    policy = Policy(seed=6)
    act = enumerate_actions(policy.act)

    def episode():
        action, log_prob = act()
        reward = REWARD[action] + torch.rand((), dtype=torch.float64)
        return reward, -log_prob * (reward - REWARD[action])  # baseline that depends on the action

    report = check_reinforce(episode, dict(policy.named_parameters()), raise_exception=False)
    assert not report.ok
    assert report.parameters[0].mismatches > 0


def test_enumerate_actions_rejects_what_it_cannot_wrap():
    with pytest.raises(TypeError, match="takes a function, a method, an nn.Module, a class"):
        enumerate_actions(42)


def test_decorating_twice_wraps_once():
    def act():
        return 1

    once = enumerate_actions(act)
    assert enumerate_actions(once) is once


def test_an_unmarked_draw_whose_probabilities_depend_on_a_parameter_is_refused():
    policy = Policy(seed=7)
    phi = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    act = enumerate_actions(policy.act)

    def episode():
        action, log_prob = act()
        reward = REWARD[action] + Categorical(logits=phi).sample().double()
        return reward, -log_prob * reward

    with pytest.raises(UninterceptedRandomnessError, match="depend on the checked parameters"):
        check_reinforce(episode, {**dict(policy.named_parameters()), "phi": phi})


def test_batched_scoped_mode_refuses_unmarked_random_numbers():
    theta = make_theta(seed=8)

    @enumerate_actions
    def act(rows):
        dist = Categorical(logits=theta.expand(rows, 3))
        action = dist.sample()
        return action, dist.log_prob(action)

    def episode(rows):
        action, log_prob = act(rows)
        reward = REWARD[action] + torch.rand(rows, dtype=torch.float64)
        return reward, -log_prob * reward

    with pytest.raises(UninterceptedRandomnessError, match="sequential mode"):
        check_reinforce(episode, {"theta": theta}, batched=True)
