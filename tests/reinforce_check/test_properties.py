"""Property tests over random small policies: exact enumeration and a passing check."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Categorical

from reinforce_check import ReinforceCheckError, check_reinforce
from reinforce_check.chooser import PrefixChooser


def brute_force(log_policy: torch.Tensor, mask: torch.Tensor, reward: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Number of feasible sequences and the exact J of a policy given as (T, K + 1, D, K) tables
    indexed by step, previous first decision (K at the start), decision and action: every step
    takes D decisions, and a sequence is feasible when every decision of it is allowed."""
    steps, _, decisions, actions = mask.shape
    count, total = 0, torch.zeros((), dtype=torch.float64)
    for sequence in itertools.product(itertools.product(range(actions), repeat=decisions), repeat=steps):
        previous, log_prob, value = actions, 0.0, 0.0
        feasible = True
        for t, chosen in enumerate(sequence):
            for d, action in enumerate(chosen):
                feasible = feasible and bool(mask[t, previous, d, action])
                log_prob = log_prob + log_policy[t, previous, d, action]
                value = value + reward[t, previous, d, action]
            previous = chosen[0]
        if feasible:
            count += 1
            total = total + torch.exp(log_prob) * value
    return count, total


@dataclass
class Problem:
    """A policy over ``K`` actions for ``T`` steps whose logits, support and reward depend on the step
    and the previous action (index ``K`` at the first step)."""

    K: int
    T: int
    logits: torch.Tensor  # (T, K + 1, K), requires grad
    mask: torch.Tensor  # (T, K + 1, K) bool, at least one True per row
    reward: torch.Tensor  # (T, K + 1, K)

    def masked_logits(self) -> torch.Tensor:
        return self.logits.masked_fill(~self.mask, float("-inf"))

    def episode(self, *, batched: bool, sign: float = 1.0):
        def run(rows: int):
            previous = torch.full((rows,), self.K, dtype=torch.long)
            logits = self.masked_logits()
            log_probs, rewards = [], []
            for t in range(self.T):
                dist = Categorical(logits=logits[t, previous])
                action = dist.sample()
                log_probs.append(dist.log_prob(action))
                rewards.append(self.reward[t, previous, action])
                previous = action
            reward = torch.stack(rewards, 1)
            to_go = reward.flip(1).cumsum(1).flip(1)
            loss = -sign * (torch.stack(log_probs, 1) * to_go.detach()).sum(1)
            return reward.sum(1), loss

        if batched:
            return run

        def sequential():
            objective, loss = run(1)
            return objective[0], loss[0]

        return sequential

    def brute_force(self) -> tuple[int, torch.Tensor]:
        """Number of feasible sequences and the exact J, by summing over every sequence."""
        # One decision per step: the multi-decision sum with D = 1.
        log_policy = torch.log_softmax(self.masked_logits(), -1)
        return brute_force(log_policy[:, :, None], self.mask[:, :, None], self.reward[:, :, None])


@st.composite
def problems(draw) -> Problem:
    K = draw(st.integers(1, 4))
    T = draw(st.integers(1, 3))
    cells = T * (K + 1) * K
    finite = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False)
    logits = torch.tensor(draw(st.lists(finite, min_size=cells, max_size=cells)), dtype=torch.float64)
    reward = torch.tensor(draw(st.lists(finite, min_size=cells, max_size=cells)), dtype=torch.float64)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=cells, max_size=cells))).reshape(T, K + 1, K)
    keep = torch.tensor(draw(st.lists(st.integers(0, K - 1), min_size=T * (K + 1), max_size=T * (K + 1))))
    mask = mask | torch.nn.functional.one_hot(keep, K).bool().reshape(T, K + 1, K)  # never all masked
    return Problem(
        K=K,
        T=T,
        logits=logits.reshape(T, K + 1, K).requires_grad_(),
        mask=mask,
        reward=reward.reshape(T, K + 1, K),
    )


MODES = pytest.mark.parametrize("batched", [False, True], ids=["sequential", "batched"])

# Every pass decides small calls in plain Python and large ones with tensor operations, a column
# at a time for one decision per row; forcing one path everywhere holds each of them, alone, to the
# brute-force sums.
PATHS = {
    "scalar": (10**9, 10**9, True),
    "tensor": (0, 0, True),
    "general tensor": (0, 0, False),
    "default": (PrefixChooser.small_rows, PrefixChooser.small_decisions, PrefixChooser.column_decisions),
}

DECISION_PATHS = pytest.mark.parametrize("decision_path", list(PATHS))


@contextlib.contextmanager
def deciding_by(path: str) -> Iterator[None]:
    saved = PrefixChooser.small_rows, PrefixChooser.small_decisions, PrefixChooser.column_decisions
    PrefixChooser.small_rows, PrefixChooser.small_decisions, PrefixChooser.column_decisions = PATHS[path]
    try:
        yield
    finally:
        PrefixChooser.small_rows, PrefixChooser.small_decisions, PrefixChooser.column_decisions = saved


@MODES
@DECISION_PATHS
@settings(max_examples=25, deadline=None)
@given(problem=problems())
def test_total_probability_is_one(batched, decision_path, problem):
    with deciding_by(decision_path):
        report = check_reinforce(
            problem.episode(batched=batched), {"logits": problem.logits}, batched=batched, rtol=1e-6, atol=1e-9,
            raise_exception=False, finite_differences="none",
        )
    count, objective = problem.brute_force()
    assert report.num_sequences == count
    assert abs(report.total_probability - 1.0) <= 1e-12
    assert report.objective == pytest.approx(float(objective.detach()), rel=1e-10, abs=1e-12)


@MODES
@settings(max_examples=25, deadline=None)
@given(problem=problems())
def test_correct_estimator_passes_for_random_policies(batched, problem):
    report = check_reinforce(
        problem.episode(batched=batched), {"logits": problem.logits}, batched=batched, rtol=1e-6, atol=1e-9
    )
    assert report.ok
    _, objective = problem.brute_force()
    (grad,) = torch.autograd.grad(objective, [problem.logits], allow_unused=True)
    expected = torch.zeros_like(problem.logits) if grad is None else -grad
    torch.testing.assert_close(report.parameters[0].target, expected, rtol=1e-9, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(problem=problems())
def test_sign_flipped_estimator_fails_whenever_the_gradient_is_not_zero(problem):
    episode = problem.episode(batched=False, sign=-1.0)
    report = check_reinforce(episode, {"logits": problem.logits}, rtol=1e-6, atol=1e-9, raise_exception=False)
    gradient = report.parameters[0].target
    # The flipped estimate is -(-grad J): it differs from the target by 2|target| elementwise.
    detectable = bool((2 * gradient.abs() > 1e-9 + 1e-6 * gradient.abs()).any())
    if detectable:
        assert not report.ok
        assert report.parameters[0].mismatches > 0
        with pytest.raises(ReinforceCheckError):
            check_reinforce(episode, {"logits": problem.logits}, rtol=1e-6, atol=1e-9)
    else:
        assert report.ok  # a (numerically) zero gradient is its own negative


@dataclass
class MultiDecisionProblem:
    """``D`` decisions per step drawn in one ``torch.multinomial`` call over ``(rows * D, K)``
    probabilities (the episode's rows first), each with logits, support and reward depending on the
    step and the first decision of the previous step (index ``K`` at the first step)."""

    K: int
    T: int
    D: int
    logits: torch.Tensor  # (T, K + 1, D, K), requires grad
    mask: torch.Tensor  # (T, K + 1, D, K) bool, at least one True per row
    reward: torch.Tensor  # (T, K + 1, D, K)

    def episode(self, rows: int):
        previous = torch.full((rows,), self.K, dtype=torch.long)
        policy = torch.softmax(self.logits.masked_fill(~self.mask, float("-inf")), -1)
        log_probs, rewards = [], []
        for t in range(self.T):
            probs = policy[t, previous]  # (rows, D, K)
            actions = torch.multinomial(probs.reshape(rows * self.D, self.K), 1).view(rows, self.D)
            log_probs.append(torch.log(probs.gather(2, actions[..., None])).sum((1, 2)))
            rewards.append(self.reward[t, previous[:, None], torch.arange(self.D), actions].sum(1))
            previous = actions[:, 0]
        reward = torch.stack(rewards, 1)
        to_go = reward.flip(1).cumsum(1).flip(1)
        return reward.sum(1), -(torch.stack(log_probs, 1) * to_go.detach()).sum(1)

    def brute_force(self) -> tuple[int, torch.Tensor]:
        """Number of feasible sequences and the exact J, by summing over every sequence."""
        return brute_force(torch.log_softmax(self.logits.masked_fill(~self.mask, float("-inf")), -1), self.mask, self.reward)


@st.composite
def multi_decision_problems(draw) -> MultiDecisionProblem:
    K = draw(st.integers(1, 3))
    T = draw(st.integers(1, 3))
    D = draw(st.integers(2, 3))
    shape = (T, K + 1, D, K)
    cells = T * (K + 1) * D * K
    finite = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False)
    logits = torch.tensor(draw(st.lists(finite, min_size=cells, max_size=cells)), dtype=torch.float64)
    reward = torch.tensor(draw(st.lists(finite, min_size=cells, max_size=cells)), dtype=torch.float64)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=cells, max_size=cells))).reshape(shape)
    keep = torch.tensor(draw(st.lists(st.integers(0, K - 1), min_size=cells // K, max_size=cells // K)))
    mask = mask | torch.nn.functional.one_hot(keep, K).bool().reshape(shape)  # never all masked
    return MultiDecisionProblem(
        K=K, T=T, D=D, logits=logits.reshape(shape).requires_grad_(), mask=mask, reward=reward.reshape(shape)
    )


@DECISION_PATHS
@settings(max_examples=40, deadline=None)
@given(problem=multi_decision_problems())
def test_several_decisions_per_call_enumerate_every_sequence_once(decision_path, problem):
    # A speculated guess that fails at one decision of a call must stop that row's spawns at the
    # call's later decisions, or some sequences are counted twice (total probability above 1).
    with deciding_by(decision_path):
        report = check_reinforce(problem.episode, {"logits": problem.logits}, batched=True, rtol=1e-6, atol=1e-9)
    count, objective = problem.brute_force()
    assert report.num_sequences == count
    assert abs(report.total_probability - 1.0) <= 1e-12
    assert report.objective == pytest.approx(float(objective.detach()), rel=1e-10, abs=1e-12)
    (grad,) = torch.autograd.grad(objective, [problem.logits], allow_unused=True)
    expected = torch.zeros_like(problem.logits) if grad is None else -grad
    torch.testing.assert_close(report.parameters[0].target, expected, rtol=1e-9, atol=1e-12)
