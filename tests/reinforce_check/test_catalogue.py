"""A catalogue of REINFORCE estimators: correct ones must pass the check, buggy ones must be caught.

Most problems share one tiny tabular environment: ``T`` steps, ``K`` actions, the policy's logits
and the reward depend on the step and the previous action (so the policy is history dependent and
every step's action changes what later steps see). ``K ** T`` = 27 action sequences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, OneHotCategorical

from reinforce_check import CheckReport, ReinforceCheckError, check_reinforce

K = 3
T = 3
START = K
"""Index of the "no previous action" state at the first step."""
STOP = 0
"""In variable-length episodes, the action that ends the episode."""

RTOL = 1e-7
ATOL = 1e-10


def fixed_table(*shape: int, seed: int) -> torch.Tensor:
    """A constant float64 table (no grad) drawn from a private generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64)


REWARD = fixed_table(T, K + 1, K, seed=101)
"""Reward of taking action a at step t after previous action prev: REWARD[t, prev, a]."""


@dataclass
class Rollout:
    """Per-step tensors of shape ``(batch_size, T)`` (``logits`` is ``(batch_size, T, K)``)."""

    action: torch.Tensor
    previous: torch.Tensor
    logits: torch.Tensor
    log_prob: torch.Tensor
    """Log-probability of each action under the distribution it was sampled from."""
    reward: torch.Tensor
    entropy: torch.Tensor


def rollout(theta: torch.Tensor, batch_size: int, *, temperature: float = 1.0) -> Rollout:
    """Run ``batch_size`` independent fixed-length episodes of the tabular policy ``theta[t, prev]``."""
    previous = torch.full((batch_size,), START, dtype=torch.long)
    steps: dict[str, list[torch.Tensor]] = {k: [] for k in ("action", "previous", "logits", "log_prob", "reward", "entropy")}
    for t in range(T):
        logits = theta[t, previous]
        dist = Categorical(logits=logits / temperature)
        action = dist.sample()
        steps["action"].append(action)
        steps["previous"].append(previous)
        steps["logits"].append(logits)
        steps["log_prob"].append(dist.log_prob(action))
        steps["reward"].append(REWARD[t, previous, action])
        steps["entropy"].append(dist.entropy())
        previous = action
    return Rollout(**{k: torch.stack(v, dim=1) for k, v in steps.items()})


def rewards_to_go(reward: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``G_t = sum_{t' >= t} gamma^(t'-t) r_t'`` along the last dimension."""
    out = torch.zeros_like(reward)
    running = torch.zeros_like(reward[..., 0])
    for t in reversed(range(reward.shape[-1])):
        running = reward[..., t] + gamma * running
        out[..., t] = running
    return out


EpisodeFactory = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


# ---------------------------------------------------------------------------------------------
# Correct estimators
# ---------------------------------------------------------------------------------------------


def test_total_return_estimator_passes(make_param, in_mode, batched):
    theta = make_param(T, K + 1, K, seed=1)

    def episode(batch_size):
        r = rollout(theta, batch_size)
        total = r.reward.sum(1)
        return total, -(r.log_prob.sum(1) * total.detach())

    report = check_reinforce(in_mode(episode), {"theta": theta}, batched=batched, rtol=RTOL, atol=ATOL)
    assert report.ok
    assert report.num_sequences == K**T
    assert report.parameters[0].mismatches == 0
    assert report.max_abs_error <= ATOL + RTOL * float(report.parameters[0].target.abs().max())


def test_reward_to_go_estimator_passes(make_param, in_mode, batched):
    theta = make_param(T, K + 1, K, seed=2)

    def episode(batch_size):
        r = rollout(theta, batch_size)
        return r.reward.sum(1), -(r.log_prob * rewards_to_go(r.reward).detach()).sum(1)

    report = check_reinforce(in_mode(episode), {"theta": theta}, batched=batched, rtol=RTOL, atol=ATOL)
    assert report.ok
    assert report.num_sequences == K**T


def test_discounted_reward_to_go_matches_discounted_objective(make_param, in_mode, batched):
    theta = make_param(T, K + 1, K, seed=3)
    gamma = 0.8
    discount = gamma ** torch.arange(T, dtype=torch.float64)

    def episode(batch_size):
        r = rollout(theta, batch_size)
        # The score of a_t is weighted by the discounted return from t, discounted back to time 0.
        weights = discount * rewards_to_go(r.reward, gamma)
        return (discount * r.reward).sum(1), -(r.log_prob * weights.detach()).sum(1)

    assert check_reinforce(in_mode(episode), {"theta": theta}, batched=batched, rtol=RTOL, atol=ATOL).ok


def test_constant_baseline_estimator_passes(make_param, in_mode, batched):
    theta = make_param(T, K + 1, K, seed=4)
    baseline = 0.7

    def episode(batch_size):
        r = rollout(theta, batch_size)
        total = r.reward.sum(1)
        return total, -(r.log_prob.sum(1) * (total - baseline).detach())

    assert check_reinforce(in_mode(episode), {"theta": theta}, batched=batched, rtol=RTOL, atol=ATOL).ok


class StateValue(torch.nn.Module):
    """A learned baseline b(s_t) from one-hot (step, previous action) features."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(T + K + 1, 1, dtype=torch.float64)
        with torch.no_grad():
            self.linear.weight.copy_(fixed_table(1, T + K + 1, seed=7) * 0.5)
            self.linear.bias.fill_(0.1)

    def forward(self, previous: torch.Tensor) -> torch.Tensor:
        """``(batch, T)`` previous actions -> ``(batch, T)`` baseline values."""
        batch = previous.shape[0]
        step = torch.nn.functional.one_hot(torch.arange(T), T).to(torch.float64).expand(batch, T, T)
        prev = torch.nn.functional.one_hot(previous, K + 1).to(torch.float64)
        return self.linear(torch.cat([step, prev], dim=-1)).squeeze(-1)


def learned_baseline_episode(
    theta: torch.Tensor, value: StateValue, *, objective: str, detach_baseline: bool = True
) -> EpisodeFactory:
    """Actor-critic style loss: policy term with ``G_t - b(s_t)`` plus the baseline's regression loss."""

    def episode(batch_size):
        r = rollout(theta, batch_size)
        returns = rewards_to_go(r.reward)
        b = value(r.previous)
        advantage = returns - (b.detach() if detach_baseline else b)
        regression = ((returns - b) ** 2).sum(1)
        loss = -(r.log_prob * advantage).sum(1) + regression
        if objective == "return":
            return r.reward.sum(1), loss
        return -regression, loss

    return episode


def test_learned_baseline_policy_gradient_passes(make_param, in_mode, batched):
    theta = make_param(T, K + 1, K, seed=5)
    value = StateValue()
    episode = learned_baseline_episode(theta, value, objective="return")
    report = check_reinforce(in_mode(episode), {"theta": theta}, batched=batched, rtol=RTOL, atol=ATOL)
    assert report.ok


def test_learned_baseline_regression_gradient_passes(make_param, in_mode, batched):
    # For the baseline network the objective is -(sum_t (G_t - b(s_t))^2): E[grad of the regression
    # loss] must equal -grad E[-(G - b)^2].
    theta = make_param(T, K + 1, K, seed=5)
    value = StateValue()
    episode = learned_baseline_episode(theta, value, objective="regression")
    report = check_reinforce(in_mode(episode), value, batched=batched, rtol=RTOL, atol=ATOL)
    assert report.ok
    assert [p.name for p in report.parameters] == ["linear.weight", "linear.bias"]
    assert all(float(p.target.abs().max()) > 0 for p in report.parameters)


def variable_length_sequential(theta: torch.Tensor) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Action STOP ends the episode (which also ends after T steps): the loop really breaks."""

    def episode():
        previous = START
        rewards, log_probs = [], []
        for t in range(T):
            dist = Categorical(logits=theta[t, previous])
            action = dist.sample()
            rewards.append(REWARD[t, previous, action])
            log_probs.append(dist.log_prob(action))
            if int(action) == STOP:
                break
            previous = int(action)
        reward = torch.stack(rewards)
        return reward.sum(), -(torch.stack(log_probs) * rewards_to_go(reward).detach()).sum()

    return episode


def variable_length_batched(theta: torch.Tensor) -> EpisodeFactory:
    """The same episode in batched form: finished rows get a distribution with only STOP possible."""

    def episode(batch_size):
        previous = torch.full((batch_size,), START, dtype=torch.long)
        alive = torch.ones(batch_size, dtype=torch.bool)
        rewards, log_probs = [], []
        for t in range(T):
            logits = theta[t, previous]
            forced = ~alive[:, None] & (torch.arange(K) != STOP)
            dist = Categorical(logits=logits.masked_fill(forced, float("-inf")))
            action = dist.sample()
            rewards.append(torch.where(alive, REWARD[t, previous, action], torch.zeros(())))
            log_probs.append(torch.where(alive, dist.log_prob(action), torch.zeros(())))
            alive = alive & (action != STOP)
            previous = torch.where(alive, action, previous)
        reward = torch.stack(rewards, dim=1)
        log_prob = torch.stack(log_probs, dim=1)
        return reward.sum(1), -(log_prob * rewards_to_go(reward).detach()).sum(1)

    return episode


# Stop at step 0 (1 sequence), at step 1 (2), or reach the last step and take any action (4 * 3).
VARIABLE_LENGTH_SEQUENCES = 1 + (K - 1) + (K - 1) ** 2 * K


def test_variable_length_episode_estimator_passes(make_param, batched):
    theta = make_param(T, K + 1, K, seed=6)
    episode = variable_length_batched(theta) if batched else variable_length_sequential(theta)
    report = check_reinforce(episode, {"theta": theta}, batched=batched, rtol=RTOL, atol=ATOL)
    assert report.ok
    assert report.num_sequences == VARIABLE_LENGTH_SEQUENCES


V = 4
TARGET = torch.tensor([1, 3])
"""Targets of the two output steps of the pathwise problem."""


def pathwise_episode(params: dict[str, torch.Tensor], *, loss_kind: str) -> EpisodeFactory:
    """RL-NTM style: the policy picks a memory row to read, the objective is the log-likelihood of a
    target under an output distribution computed from that row (so the objective depends on the
    parameters directly); the policy's logits share the memory too."""
    theta, memory, bias = params["theta"], params["memory"], params["bias"]

    def episode(batch_size):
        previous = torch.full((batch_size,), START, dtype=torch.long)
        log_probs, likelihoods = [], []
        for t in range(TARGET.shape[0]):
            logits = theta[t, previous] + 0.5 * memory.sum(1)
            dist = Categorical(logits=logits)
            action = dist.sample()
            log_probs.append(dist.log_prob(action))
            output = torch.log_softmax(memory[action] + bias[t], dim=-1)
            likelihoods.append(output[:, TARGET[t]])
            previous = action
        objective = torch.stack(likelihoods, 1).sum(1)
        log_prob = torch.stack(log_probs, 1).sum(1)
        if loss_kind == "correct":
            loss = -objective - log_prob * objective.detach()
        elif loss_kind == "missing pathwise":
            loss = -log_prob * objective.detach()
        elif loss_kind == "return not detached":
            loss = -objective - log_prob * objective
        else:  # pragma: no cover - the tests name only the kinds above
            raise ValueError(loss_kind)
        return objective, loss

    return episode


def pathwise_params(make_param) -> dict[str, torch.Tensor]:
    return {
        "theta": make_param(2, K + 1, K, seed=8),
        "memory": make_param(K, V, seed=9),
        "bias": make_param(2, V, seed=10, scale=0.5),
    }


def test_pathwise_plus_score_function_estimator_passes(make_param, in_mode, batched):
    params = pathwise_params(make_param)
    episode = in_mode(pathwise_episode(params, loss_kind="correct"))
    report = check_reinforce(
        episode, params, batched=batched, rtol=RTOL, atol=ATOL, finite_differences="tensor"
    )
    assert report.ok
    assert report.num_sequences == K**2
    assert [c.label for c in report.finite_differences] == ["theta", "memory", "bias"]
    assert all(c.ok for c in report.finite_differences)


def test_entropy_bonus_estimator_passes(make_param, in_mode, batched):
    theta = make_param(T, K + 1, K, seed=11)
    beta = 0.3

    def episode(batch_size):
        r = rollout(theta, batch_size)
        entropy = r.entropy.sum(1)
        objective = r.reward.sum(1) + beta * entropy
        # Later entropies depend on earlier actions, so they enter the score term; the entropy's
        # own (pathwise) gradient is the bonus term.
        loss = -(r.log_prob.sum(1) * objective.detach()) - beta * entropy
        return objective, loss

    report = check_reinforce(in_mode(episode), {"theta": theta}, batched=batched, rtol=RTOL, atol=ATOL)
    assert report.ok


def test_entropy_bonus_without_its_score_term_is_caught(make_param):
    # Regularizing with -beta * H alone, while the objective counts the entropy, misses the
    # dependence of later steps' entropy on earlier actions.
    theta = make_param(T, K + 1, K, seed=11)
    beta = 0.3

    def episode():
        r = rollout(theta, 1)
        objective = r.reward.sum() + beta * r.entropy.sum()
        loss = -(r.log_prob.sum() * r.reward.sum().detach()) - beta * r.entropy.sum()
        return objective, loss

    with pytest.raises(ReinforceCheckError):
        check_reinforce(episode, {"theta": theta}, rtol=RTOL, atol=ATOL)


G = 3
RLOO_REWARD = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)


def test_leave_one_out_group_baseline_passes(make_param, in_mode, batched):
    theta = make_param(K, seed=12)

    def episode(batch_size):
        probs = torch.softmax(theta, -1).expand(batch_size * G, K)
        actions = torch.multinomial(probs, 1).reshape(batch_size, G)  # one (G, K) call per episode
        log_prob = torch.log_softmax(theta, -1)[actions]
        reward = RLOO_REWARD[actions]
        leave_one_out = (reward.sum(1, keepdim=True) - reward) / (G - 1)
        loss = -(log_prob * (reward - leave_one_out).detach()).sum(1) / G
        return reward.mean(1), loss

    report = check_reinforce(in_mode(episode), {"theta": theta}, batched=batched, rtol=RTOL, atol=ATOL)
    assert report.ok
    assert report.num_sequences == K**G


def test_group_baseline_including_own_sample_is_caught(make_param):
    # The group mean includes the sample itself: the baseline depends on the action it scores.
    theta = make_param(K, seed=12)

    def episode():
        probs = torch.softmax(theta, -1).expand(G, K)
        actions = torch.multinomial(probs, 1).reshape(G)
        log_prob = torch.log_softmax(theta, -1)[actions]
        reward = RLOO_REWARD[actions]
        loss = -(log_prob * (reward - reward.mean()).detach()).sum() / G
        return reward.mean(), loss

    report = check_reinforce(episode, {"theta": theta}, rtol=RTOL, atol=ATOL, raise_exception=False)
    assert not report.ok
    assert report.parameters[0].mismatches > 0


# ---------------------------------------------------------------------------------------------
# Every sampler entry point
# ---------------------------------------------------------------------------------------------

ENTRY_REWARD = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
BIT_REWARD = torch.tensor([0.7, -1.3], dtype=torch.float64)


def _bernoulli_log_prob(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return (x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum()


def entry_multinomial_1d(theta, bits):
    p = torch.softmax(theta, -1)
    a = torch.multinomial(p, 1)[0]
    r = ENTRY_REWARD[a]
    return r, -torch.log(p[a]) * r


def entry_multinomial_2d(theta, bits):
    logits = torch.stack([theta, 0.5 * theta.flip(0)])
    p = torch.softmax(logits, -1)
    a = torch.multinomial(p, 1)[:, 0]
    r = ENTRY_REWARD[a[0]] + 0.3 * ENTRY_REWARD[a[1]] * a[0]
    return r, -torch.log(p[torch.arange(2), a]).sum() * r


def entry_multinomial_with_replacement(theta, bits):
    p = torch.softmax(theta, -1)
    a = torch.multinomial(p, 2, replacement=True)
    r = ENTRY_REWARD[a[0]] - 0.4 * ENTRY_REWARD[a[1]] * a[0]
    return r, -torch.log(p[a]).sum() * r


def entry_multinomial_without_replacement(theta, bits):
    p = torch.softmax(theta, -1)
    a = torch.multinomial(p, 2, replacement=False)
    log_prob = torch.log(p[a[0]]) + torch.log(p[a[1]]) - torch.log1p(-p[a[0]])
    r = ENTRY_REWARD[a[0]] - 0.4 * ENTRY_REWARD[a[1]]
    return r, -log_prob * r


def entry_multinomial_2d_without_replacement(theta, bits):
    logits = torch.stack([theta, 0.5 * theta.flip(0)])
    p = torch.softmax(logits, -1)
    a = torch.multinomial(p, 2, replacement=False)  # (2 rows, 2 draws)
    rows = torch.arange(2)
    first, second = p[rows, a[:, 0]], p[rows, a[:, 1]]
    log_prob = (torch.log(first) + torch.log(second) - torch.log1p(-first)).sum()
    r = ENTRY_REWARD[a[0, 0]] + 0.5 * ENTRY_REWARD[a[1, 1]] - 0.25 * ENTRY_REWARD[a[1, 0]] * a[0, 1]
    return r, -log_prob * r


def entry_tensor_multinomial(theta, bits):
    p = torch.softmax(theta, -1)
    a = p.multinomial(1)[0]
    r = ENTRY_REWARD[a]
    return r, -torch.log(p[a]) * r


def entry_torch_bernoulli(theta, bits):
    p = torch.sigmoid(bits)
    x = torch.bernoulli(p)
    r = (x * BIT_REWARD).sum() + 0.5 * x[0] * x[1]
    return r, -_bernoulli_log_prob(x, p) * r


def entry_tensor_bernoulli(theta, bits):
    p = torch.sigmoid(bits)
    x = p.bernoulli()
    r = (x * BIT_REWARD).sum() + 0.5 * x[0] * x[1]
    return r, -_bernoulli_log_prob(x, p) * r


def entry_categorical_sample_shape(theta, bits):
    dist = Categorical(logits=theta)
    a = dist.sample((2,))
    r = ENTRY_REWARD[a[0]] - 0.4 * ENTRY_REWARD[a[1]] * a[0]
    return r, -dist.log_prob(a).sum() * r


def entry_one_hot_categorical(theta, bits):
    dist = OneHotCategorical(logits=theta)
    x = dist.sample()
    r = (x * ENTRY_REWARD).sum()
    return r, -dist.log_prob(x) * r


def entry_bernoulli_logits(theta, bits):
    dist = Bernoulli(logits=bits)
    x = dist.sample()
    r = (x * BIT_REWARD).sum() + 0.5 * x[0] * x[1]
    return r, -dist.log_prob(x).sum() * r


def entry_bernoulli_probs(theta, bits):
    dist = Bernoulli(probs=torch.sigmoid(bits))
    x = dist.sample()
    r = (x * BIT_REWARD).sum() + 0.5 * x[0] * x[1]
    return r, -dist.log_prob(x).sum() * r


ENTRY_POINTS = {
    "torch.multinomial-1d": (entry_multinomial_1d, K, "theta"),
    "torch.multinomial-2d": (entry_multinomial_2d, K**2, "theta"),
    "torch.multinomial-2-samples-with-replacement": (entry_multinomial_with_replacement, K**2, "theta"),
    "torch.multinomial-2-samples-without-replacement": (entry_multinomial_without_replacement, K * (K - 1), "theta"),
    "torch.multinomial-2d-2-samples-without-replacement": (
        entry_multinomial_2d_without_replacement,
        (K * (K - 1)) ** 2,
        "theta",
    ),
    "Tensor.multinomial": (entry_tensor_multinomial, K, "theta"),
    "torch.bernoulli": (entry_torch_bernoulli, 4, "bits"),
    "Tensor.bernoulli": (entry_tensor_bernoulli, 4, "bits"),
    "Categorical.sample-sample_shape": (entry_categorical_sample_shape, K**2, "theta"),
    "OneHotCategorical.sample": (entry_one_hot_categorical, K, "theta"),
    "Bernoulli.sample-logits": (entry_bernoulli_logits, 4, "bits"),
    "Bernoulli.sample-probs": (entry_bernoulli_probs, 4, "bits"),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS), ids=list(ENTRY_POINTS))
def test_every_sampler_entry_point_gives_exact_gradient(entry, make_param):
    function, num_sequences, used = ENTRY_POINTS[entry]
    params = {"theta": make_param(K, seed=13), "bits": make_param(2, seed=14)}
    param = params[used]

    report = check_reinforce(
        lambda: function(params["theta"], params["bits"]), {used: param}, rtol=RTOL, atol=ATOL, raise_exception=False
    )
    # The exact -grad J is not zero (the policy's probabilities carry gradient) and the correct
    # estimator matches it; central differences of J agree with both.
    assert report.num_sequences == num_sequences
    assert abs(report.total_probability - 1) <= 1e-12
    assert float(report.parameters[0].target.abs().max()) > 1e-3, "-grad J lost the score-function term"
    assert report.ok, str(report)


def test_bernoulli_sample_probability_carries_gradient(make_param):
    # Bernoulli.sample draws under torch.no_grad(); the probability the check records must still be
    # differentiable, or -grad J misses the score-function term entirely.
    bits = make_param(2, seed=14)

    def episode():
        x = Bernoulli(logits=bits).sample()
        return x.sum(), torch.zeros((), dtype=torch.float64)

    report = check_reinforce(
        episode, {"bits": bits}, rtol=RTOL, atol=ATOL, raise_exception=False, finite_differences="none"
    )
    assert report.num_sequences == 4
    # J = sigmoid(b0) + sigmoid(b1), so -grad J = -sigmoid(b) * (1 - sigmoid(b)).
    p = torch.sigmoid(bits.detach())
    torch.testing.assert_close(report.parameters[0].target, -p * (1 - p), rtol=1e-10, atol=1e-14)


def test_entry_points_in_batched_mode(make_param):
    theta = make_param(K, seed=15)
    bits = make_param(2, seed=16)

    def episode(batch_size):
        p = torch.softmax(theta, -1).expand(batch_size, K)
        a = torch.multinomial(p, 1)[:, 0]
        dist = Categorical(logits=theta.expand(batch_size, K))
        b = dist.sample()
        q = torch.sigmoid(bits).expand(batch_size, 2)
        x = q.bernoulli()
        r = ENTRY_REWARD[a] + 0.5 * ENTRY_REWARD[b] * a + (x * BIT_REWARD).sum(1)
        log_prob = torch.log(p.gather(1, a[:, None]))[:, 0] + dist.log_prob(b)
        log_prob = log_prob + (x * torch.log(q) + (1 - x) * torch.log1p(-q)).sum(1)
        return r, -log_prob * r

    report = check_reinforce(
        episode, {"theta": theta, "bits": bits}, batched=True, rtol=RTOL, atol=ATOL, finite_differences="tensor"
    )
    assert report.ok
    assert report.num_sequences == K * K * 4


def test_sample_shape_draws_in_batched_mode_pass(make_param):
    # torch puts sample_shape before the batch dimensions: Categorical.sample((2,)) and
    # Bernoulli.sample((2,)) of a (batch_size, ...) distribution return (2, batch_size, ...).
    theta = make_param(K, seed=18)
    bits = make_param(2, seed=19)

    def episode(batch_size):
        dist = Categorical(logits=theta.expand(batch_size, K))
        a = dist.sample((2,))  # (2, batch_size)
        coins = Bernoulli(logits=bits.expand(batch_size, 2))
        x = coins.sample((2,))  # (2, batch_size, 2)
        r = ENTRY_REWARD[a[0]] + 0.5 * ENTRY_REWARD[a[1]] * a[0] + (x * BIT_REWARD).sum((0, 2)) + x[0, :, 0] * x[1, :, 1]
        log_prob = dist.log_prob(a).sum(0) + coins.log_prob(x).sum((0, 2))
        return r, -log_prob * r

    report = check_reinforce(
        episode, {"theta": theta, "bits": bits}, batched=True, rtol=RTOL, atol=ATOL, raise_exception=False
    )
    assert report.num_sequences == K**2 * 2**4
    assert abs(report.total_probability - 1) <= 1e-12
    assert report.ok, str(report)


def test_user_replaced_categorical_sample_is_used_and_restored(make_param):
    original = Categorical.sample

    def replacement(self, *args, **kwargs):
        return original(self, *args, **kwargs).unsqueeze(-1)

    theta = make_param(K, seed=17)
    calls = []

    def episode():
        dist = Categorical(logits=theta)
        action = dist.sample()
        calls.append(tuple(action.shape))
        a = action.squeeze(-1)
        r = ENTRY_REWARD[a]
        return r, -dist.log_prob(a) * r

    Categorical.sample = replacement
    try:
        report = check_reinforce(episode, {"theta": theta}, rtol=RTOL, atol=ATOL)
        assert report.ok
        assert report.num_sequences == K
        assert set(calls) == {(1,)}, "the user's replacement was not called during the check"
        assert Categorical.sample is replacement
    finally:
        Categorical.sample = original
    assert Categorical.sample is original


class LSTMPolicy(torch.nn.Module):
    def __init__(self, num_actions: int, hidden: int) -> None:
        super().__init__()
        self.num_actions = num_actions
        self.cell = torch.nn.LSTMCell(num_actions + 1, hidden)
        self.head = torch.nn.Linear(hidden, num_actions)

    def forward(self, batch_size: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.zeros(batch_size, self.cell.hidden_size)
        c = torch.zeros_like(h)
        x = torch.zeros(batch_size, self.num_actions + 1)
        x[:, -1] = 1.0
        log_probs, rewards = [], []
        for t in range(steps):
            h, c = self.cell(x, (h, c))
            dist = Categorical(logits=self.head(h))
            action = dist.sample()
            log_probs.append(dist.log_prob(action))
            rewards.append((action == t % self.num_actions).double() + 0.25 * action)
            x = torch.nn.functional.one_hot(action, self.num_actions + 1).double()
        return torch.stack(log_probs, 1), torch.stack(rewards, 1)


def test_lstm_policy_reward_to_go_passes(float64_default, in_mode, batched):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        policy = LSTMPolicy(num_actions=2, hidden=4)
    assert all(p.dtype == torch.float64 for p in policy.parameters())

    def episode(batch_size):
        log_prob, reward = policy(batch_size, steps=3)
        return reward.sum(1), -(log_prob * rewards_to_go(reward).detach()).sum(1)

    report = check_reinforce(in_mode(episode), policy, batched=batched, rtol=RTOL, atol=ATOL)
    assert report.ok
    assert report.num_sequences == 2**3
    assert [p.name for p in report.parameters] == [n for n, _ in policy.named_parameters()]


# ---------------------------------------------------------------------------------------------
# Buggy estimators
# ---------------------------------------------------------------------------------------------


def _bug_sign_flip(params):
    def episode(batch_size):
        r = rollout(params["theta"], batch_size)
        total = r.reward.sum(1)
        return total, (r.log_prob.sum(1) * total.detach())

    return episode, {"theta": params["theta"]}


def _bug_action_dependent_baseline(params):
    table = fixed_table(T, K, seed=21)

    def episode(batch_size):
        r = rollout(params["theta"], batch_size)
        baseline = table[torch.arange(T), r.action]  # uses the action being scored
        return r.reward.sum(1), -(r.log_prob * (rewards_to_go(r.reward) - baseline).detach()).sum(1)

    return episode, {"theta": params["theta"]}


def _bug_off_by_one_reward_to_go(params):
    def episode(batch_size):
        r = rollout(params["theta"], batch_size)
        later = rewards_to_go(r.reward) - r.reward  # G_{t+1}: drops the reward of the scored step
        return r.reward.sum(1), -(r.log_prob * later.detach()).sum(1)

    return episode, {"theta": params["theta"]}


def _bug_standardized_returns(params):
    def episode(batch_size):
        r = rollout(params["theta"], batch_size)
        returns = rewards_to_go(r.reward)
        returns = (returns - returns.mean(1, keepdim=True)) / (returns.std(1, keepdim=True) + 1e-8)
        return r.reward.sum(1), -(r.log_prob * returns.detach()).sum(1)

    return episode, {"theta": params["theta"]}


def _bug_log_prob_of_wrong_action(params):
    def episode(batch_size):
        r = rollout(params["theta"], batch_size)
        wrong = (r.action + 1) % K
        log_prob = torch.log_softmax(r.logits, -1).gather(2, wrong[..., None]).squeeze(-1)
        return r.reward.sum(1), -(log_prob * rewards_to_go(r.reward).detach()).sum(1)

    return episode, {"theta": params["theta"]}


def _bug_probabilities_for_log_probabilities(params):
    def episode(batch_size):
        r = rollout(params["theta"], batch_size)
        return r.reward.sum(1), -(r.log_prob.exp() * rewards_to_go(r.reward).detach()).sum(1)

    return episode, {"theta": params["theta"]}


def _bug_discount_mismatch(params):
    def episode(batch_size):
        r = rollout(params["theta"], batch_size)
        return r.reward.sum(1), -(r.log_prob * rewards_to_go(r.reward, 0.9).detach()).sum(1)

    return episode, {"theta": params["theta"]}


def _bug_temperature_missing_from_log_prob(params):
    def episode(batch_size):
        r = rollout(params["theta"], batch_size, temperature=2.0)  # sampled at temperature 2
        log_prob = torch.log_softmax(r.logits, -1).gather(2, r.action[..., None]).squeeze(-1)
        return r.reward.sum(1), -(log_prob * rewards_to_go(r.reward).detach()).sum(1)

    return episode, {"theta": params["theta"]}


def _bug_baseline_not_detached(params):
    value = StateValue()
    return learned_baseline_episode(params["theta"], value, objective="regression", detach_baseline=False), value


def _bug_return_not_detached(params):
    return pathwise_episode(params, loss_kind="return not detached"), params


def _bug_missing_pathwise_term(params):
    return pathwise_episode(params, loss_kind="missing pathwise"), params


BUGS = {
    # name: (builder, parameter names the check must flag)
    "sign-flip": (_bug_sign_flip, {"theta"}),
    "return-not-detached": (_bug_return_not_detached, {"memory", "bias"}),
    "action-dependent-baseline": (_bug_action_dependent_baseline, {"theta"}),
    "off-by-one-reward-to-go": (_bug_off_by_one_reward_to_go, {"theta"}),
    "returns-standardized-within-episode": (_bug_standardized_returns, {"theta"}),
    "log-prob-of-wrong-action": (_bug_log_prob_of_wrong_action, {"theta"}),
    "probabilities-for-log-probabilities": (_bug_probabilities_for_log_probabilities, {"theta"}),
    "discount-mismatch": (_bug_discount_mismatch, {"theta"}),
    "temperature-missing-from-log-prob": (_bug_temperature_missing_from_log_prob, {"theta"}),
    "baseline-not-detached": (_bug_baseline_not_detached, {"linear.weight", "linear.bias"}),
    "missing-pathwise-term": (_bug_missing_pathwise_term, {"memory", "bias"}),
}


def _bug_params(name, make_param):
    if name in ("return-not-detached", "missing-pathwise-term"):
        return pathwise_params(make_param)
    return {"theta": make_param(T, K + 1, K, seed=31)}


@pytest.mark.parametrize("bug", list(BUGS), ids=list(BUGS))
def test_buggy_estimator_raises(bug, make_param, in_mode, batched):
    builder, flagged = BUGS[bug]
    episode, params = builder(_bug_params(bug, make_param))
    with pytest.raises(ReinforceCheckError) as caught:
        check_reinforce(in_mode(episode), params, batched=batched, rtol=RTOL, atol=ATOL)
    report = caught.value.report
    assert isinstance(report, CheckReport)
    assert not report.ok
    bad = {p.name for p in report.parameters if p.mismatches}
    assert bad == flagged
    # The error is a real bias, far above the tolerance: not a rounding artefact.
    assert report.max_abs_error > 1e-4


@pytest.mark.parametrize("bug", list(BUGS), ids=list(BUGS))
def test_buggy_estimator_report_without_raising(bug, make_param):
    builder, flagged = BUGS[bug]
    episode, params = builder(_bug_params(bug, make_param))

    def sequential():
        objective, loss = episode(1)
        return objective[0], loss[0]

    report = check_reinforce(sequential, params, rtol=RTOL, atol=ATOL, raise_exception=False)
    assert report.ok is False
    assert {p.name for p in report.parameters if not p.ok} == flagged
    # The gradient the loss follows is not -grad J, but autograd's -grad J itself is right:
    # central differences of the exact J agree with it along every direction.
    for check in report.finite_differences:
        assert check.numeric == pytest.approx(check.autograd, rel=1e-5, abs=1e-7)


def test_baseline_not_detached_leaves_policy_gradient_correct(make_param):
    # The undetached baseline corrupts only the baseline network's gradient; the policy's is intact.
    theta = make_param(T, K + 1, K, seed=31)
    episode = learned_baseline_episode(theta, StateValue(), objective="return", detach_baseline=False)

    def sequential():
        objective, loss = episode(1)
        return objective[0], loss[0]

    assert check_reinforce(sequential, {"theta": theta}, rtol=RTOL, atol=ATOL).ok
