"""The error for randomness outside the samplers names the fix (enumerate_actions) and the place of the draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Categorical

from reinforce_check import UninterceptedRandomnessError, check_reinforce

REWARD = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)


def shuffle_with_torch() -> torch.Tensor:
    return torch.randperm(4)  # the draw the message must point at


def shuffle_with_numpy() -> np.ndarray:
    return np.random.permutation(4)  # the draw the message must point at


def build_network() -> torch.nn.Linear:
    return torch.nn.Linear(2, 3)  # initialisation draws inside torch.nn.init


def episode_after(draw, theta):
    def episode():
        draw()
        dist = Categorical(logits=theta)
        action = dist.sample()
        return REWARD[action], -dist.log_prob(action) * REWARD[action]

    return episode


@pytest.mark.parametrize(
    ("draw", "label"),
    [(shuffle_with_torch, "torch.randperm"), (shuffle_with_numpy, "np.random.permutation")],
    ids=["torch.randperm", "np.random.permutation"],
)
def test_minibatch_shuffle_is_located_and_enumerate_actions_named(make_param, draw, label):
    theta = make_param(3, seed=1)
    with pytest.raises(UninterceptedRandomnessError) as caught:
        check_reinforce(episode_after(draw, theta), {"theta": theta}, rtol=1e-7, atol=1e-10)
    message = str(caught.value)
    assert f"Drawn by {label} at {__file__}:{draw.__code__.co_firstlineno + 1}." in message
    assert "enumerate_actions" in message
    assert "shuffles minibatches" in message


def test_network_initialisation_is_located_at_the_constructing_line(make_param):
    theta = make_param(3, seed=2)
    with pytest.raises(UninterceptedRandomnessError) as caught:
        check_reinforce(episode_after(build_network, theta), {"theta": theta}, rtol=1e-7, atol=1e-10)
    assert f"at {__file__}:{build_network.__code__.co_firstlineno + 1}" in str(caught.value)


def test_draws_from_a_private_generator_are_not_blamed(make_param):
    theta = make_param(3, seed=3)

    def draws():
        torch.randn(3, generator=torch.Generator().manual_seed(0))  # private: deterministic, allowed
        return shuffle_with_torch()

    with pytest.raises(UninterceptedRandomnessError) as caught:
        check_reinforce(episode_after(draws, theta), {"theta": theta}, rtol=1e-7, atol=1e-10)
    message = str(caught.value)
    assert f"Drawn by torch.randperm at {__file__}:{shuffle_with_torch.__code__.co_firstlineno + 1}." in message
    assert "torch.randn at" not in message


def test_draw_functions_are_restored_after_a_check(make_param):
    theta = make_param(3, seed=4)
    originals = (torch.randperm, np.random.permutation, torch.Tensor.uniform_, np.random.rand)
    with pytest.raises(UninterceptedRandomnessError):
        check_reinforce(episode_after(shuffle_with_torch, theta), {"theta": theta}, rtol=1e-7, atol=1e-10)
    assert check_reinforce(episode_after(lambda: None, theta), {"theta": theta}, rtol=1e-7, atol=1e-10).ok
    assert (torch.randperm, np.random.permutation, torch.Tensor.uniform_, np.random.rand) == originals
    assert "uniform_" not in vars(torch.Tensor)
