"""The sequence budget: a tree far over ``max_sequences`` is refused early, by its estimated size,
and a tree within it never is."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch.distributions import Categorical

import reinforce_check.enumeration as enumeration
from reinforce_check import SequenceBudgetError, check_reinforce


def binary_tree_episode(theta: torch.Tensor):
    """``theta.shape[0]`` decisions of ``theta.shape[1]`` actions each: shape[1] ** shape[0] sequences."""

    def episode():
        total = torch.zeros((), dtype=torch.float64)
        log_prob = torch.zeros((), dtype=torch.float64)
        for t in range(theta.shape[0]):
            dist = Categorical(logits=theta[t])
            action = dist.sample()
            total = total + action
            log_prob = log_prob + dist.log_prob(action)
        return total, -log_prob * total

    return episode


def stop_chain_episode(theta: torch.Tensor, steps: int):
    """At each step action 0 continues and action 1 stops: ``steps + 1`` sequences, the first of them
    the longest, so the depth-first walk starts in its bushiest-looking branch."""

    def episode():
        total = torch.zeros((), dtype=torch.float64)
        log_prob = torch.zeros((), dtype=torch.float64)
        for t in range(steps):
            dist = Categorical(logits=theta)
            action = dist.sample()
            total = total + t * action
            log_prob = log_prob + dist.log_prob(action)
            if int(action) == 1:
                break
        return total, -log_prob * total

    return episode


def test_million_sequence_tree_is_refused_within_seconds_stating_its_estimate():
    theta = torch.zeros(20, 2, dtype=torch.float64, requires_grad=True)
    start = time.perf_counter()
    with pytest.raises(SequenceBudgetError) as caught:
        check_reinforce(binary_tree_episode(theta), {"theta": theta}, max_sequences=100_000)
    seconds = time.perf_counter() - start
    message = str(caught.value)
    assert "estimated 1.05e+06 action sequences" in message
    assert "Knuth's estimate" in message and "max_sequences=1,100,000" in message
    # The lower bound alone would need 100,000 episode runs; the estimate needs about a second of them.
    assert seconds < 15, seconds


def test_batched_million_sequence_tree_is_refused_stating_the_first_paths_estimate():
    # Batched rounds stop once completed plus pending sequences pass the budget (10,000 rows at
    # most), and the message states the product of the numbers of feasible actions along round 0's path.
    theta = torch.zeros(20, 2, dtype=torch.float64, requires_grad=True)

    def episode(rows):
        total = torch.zeros(rows, dtype=torch.float64)
        log_prob = torch.zeros(rows, dtype=torch.float64)
        for t in range(theta.shape[0]):
            dist = Categorical(logits=theta[t].expand(rows, 2))
            action = dist.sample()
            total = total + action
            log_prob = log_prob + dist.log_prob(action)
        return total, -log_prob * total

    with pytest.raises(SequenceBudgetError) as caught:
        check_reinforce(episode, {"theta": theta}, batched=True, max_sequences=10_000)
    message = str(caught.value)
    assert "the numbers of feasible actions multiply to 1.05e+06" in message
    assert "max_sequences=1,100,000" in message


def test_tree_just_within_budget_is_not_refused(monkeypatch):
    # 3 ** 6 = 729 sequences with max_sequences=729, the estimate checked from the 32nd run on.
    monkeypatch.setattr(enumeration, "_ESTIMATE_AFTER_SECONDS", 0.0)
    theta = torch.zeros(6, 3, dtype=torch.float64, requires_grad=True)
    report = check_reinforce(
        binary_tree_episode(theta), {"theta": theta}, max_sequences=729, rtol=1e-7, atol=1e-10,
        finite_differences="none",
    )
    assert report.ok and report.num_sequences == 729


def test_stop_chain_within_budget_is_not_refused_by_its_overestimate(monkeypatch):
    # The walk's first paths have products of 2 ** 60, but on the subtrees it completed the estimate
    # is far from the exact count, so the estimate is not trusted.
    monkeypatch.setattr(enumeration, "_ESTIMATE_AFTER_SECONDS", 0.0)
    theta = torch.tensor([0.2, -0.1], dtype=torch.float64, requires_grad=True)
    report = check_reinforce(
        stop_chain_episode(theta, 60), {"theta": theta}, max_sequences=100, rtol=1e-7, atol=1e-10,
        finite_differences="none",
    )
    assert report.ok and report.num_sequences == 61
    # Without the calibration the same walk would have been refused.
    monkeypatch.setattr(enumeration, "_CALIBRATION_RATIO", math.inf)
    with pytest.raises(SequenceBudgetError, match="estimated"):
        check_reinforce(stop_chain_episode(theta, 60), {"theta": theta}, max_sequences=100, finite_differences="none")
