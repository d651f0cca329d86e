"""Misuse is refused with a specific error whose message says what to change."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import distributions
from torch.distributions import Bernoulli, Categorical

import reinforce_check
from reinforce_check import (
    CheckUsageError,
    EpisodeOutputError,
    InvalidProbabilitiesError,
    NoSamplerCallError,
    NondeterministicEpisodeError,
    ParameterError,
    ReinforceCheckError,
    SequenceBudgetError,
    UninterceptedRandomnessError,
    check_reinforce,
)
from reinforce_check import patching
from reinforce_check.patching import intercept_samplers, sampler_entry_points, samplers_installed

K = 3
REWARD = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)


@pytest.fixture
def theta(make_param):
    return make_param(K, seed=40)


def bandit(theta):
    """A correct one-step episode, for tests whose misuse lies elsewhere."""

    def episode():
        dist = Categorical(logits=theta)
        action = dist.sample()
        return REWARD[action], -dist.log_prob(action) * REWARD[action]

    return episode


def _owners():
    return [
        (torch, "multinomial"),
        (torch.Tensor, "multinomial"),
        (torch, "bernoulli"),
        (torch.Tensor, "bernoulli"),
        (distributions.Categorical, "sample"),
        (distributions.OneHotCategorical, "sample"),
        (distributions.Bernoulli, "sample"),
    ]


def _installed():
    return {(owner, name): vars(owner).get(name) for owner, name in _owners()}


@pytest.mark.parametrize(
    "error",
    [
        EpisodeOutputError,
        InvalidProbabilitiesError,
        NoSamplerCallError,
        NondeterministicEpisodeError,
        ParameterError,
        SequenceBudgetError,
        UninterceptedRandomnessError,
    ],
)
def test_usage_errors_derive_from_check_usage_error(error):
    assert issubclass(error, CheckUsageError)
    assert getattr(reinforce_check, error.__name__) is error


def test_reinforce_check_error_is_an_assertion_error_not_a_usage_error():
    assert issubclass(ReinforceCheckError, AssertionError)
    assert not issubclass(ReinforceCheckError, CheckUsageError)


# --- no sampler call ----------------------------------------------------------------------------


def test_episode_without_sampler_call_is_refused(theta, batched):
    def episode(*batch):
        action = torch.argmax(theta)  # a greedy policy: nothing to enumerate
        value = REWARD[action] + theta.sum()
        return (value.expand(*batch), value.expand(*batch)) if batched else (value, value)

    with pytest.raises(NoSamplerCallError, match="no call to an intercepted sampler") as caught:
        check_reinforce(episode, {"theta": theta}, batched=batched, rtol=1e-7, atol=1e-10)
    assert "Categorical" in str(caught.value)


# --- nondeterminism -----------------------------------------------------------------------------


def test_probabilities_changing_between_runs_are_refused(theta):
    calls = []

    def episode():
        calls.append(None)
        dist = Categorical(logits=theta * (1 + 0.1 * len(calls)))  # state kept between episodes
        action = dist.sample()
        return REWARD[action], -dist.log_prob(action) * REWARD[action]

    with pytest.raises(NondeterministicEpisodeError, match="different probability") as caught:
        check_reinforce(episode, {"theta": theta}, rtol=1e-7, atol=1e-10)
    assert "reset any state" in str(caught.value)


def test_shorter_episode_on_replay_is_refused(theta):
    calls = []

    def episode():
        calls.append(None)
        steps = 2 if len(calls) == 1 else 1  # the same actions lead to fewer decisions later
        total = torch.zeros((), dtype=torch.float64)
        log_prob = torch.zeros((), dtype=torch.float64)
        for _ in range(steps):
            dist = Categorical(logits=theta)
            action = dist.sample()
            total = total + REWARD[action]
            log_prob = log_prob + dist.log_prob(action)
        return total, -log_prob * total

    with pytest.raises(NondeterministicEpisodeError, match="shorter episode"):
        check_reinforce(episode, {"theta": theta}, rtol=1e-7, atol=1e-10)


def test_replayed_action_becoming_impossible_is_refused(theta):
    calls = []

    def episode():
        calls.append(None)
        # After the first run only action 0 remains possible: the replay of another action fails.
        mask = torch.tensor([False, True, True]) if len(calls) > 1 else torch.zeros(K, dtype=torch.bool)
        dist = Categorical(logits=theta.masked_fill(mask, float("-inf")))
        action = dist.sample()
        return REWARD[action], -dist.log_prob(action) * REWARD[action]

    with pytest.raises(NondeterministicEpisodeError, match="probability zero") as caught:
        check_reinforce(episode, {"theta": theta}, rtol=1e-7, atol=1e-10)
    assert "make it deterministic given its actions" in str(caught.value)


def test_batched_episode_ignoring_batch_size_is_refused(theta):
    def episode(batch_size):
        dist = Categorical(logits=theta.expand(1, K))  # always one row
        action = dist.sample()
        return REWARD[action].expand(batch_size), (-dist.log_prob(action) * REWARD[action]).expand(batch_size)

    with pytest.raises(NondeterministicEpisodeError, match="batch dimension first"):
        check_reinforce(episode, {"theta": theta}, batched=True, rtol=1e-7, atol=1e-10)


def test_batched_finished_rows_that_keep_branching_are_refused(make_param):
    theta = make_param(3, K, seed=41)

    def episode(batch_size):
        # Runs while any row is alive, and finished rows keep sampling from the full distribution:
        # a row's decisions then depend on the other rows of the batch.
        alive = torch.ones(batch_size, dtype=torch.bool)
        total = torch.zeros(batch_size, dtype=torch.float64)
        log_prob = torch.zeros(batch_size, dtype=torch.float64)
        step = 0
        while bool(alive.any()) and step < 3:
            dist = Categorical(logits=theta[step].expand(batch_size, K))
            action = dist.sample()
            total = total + alive * REWARD[action]
            log_prob = log_prob + alive * dist.log_prob(action)
            alive = alive & (action != 0)
            step += 1
        return total, -log_prob * total

    with pytest.raises(NondeterministicEpisodeError, match="rows that have finished must not branch") as caught:
        check_reinforce(episode, {"theta": theta}, batched=True, rtol=1e-7, atol=1e-10)
    assert "single action of nonzero probability" in str(caught.value)


# --- randomness outside the samplers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("draw", "named"),
    [
        (lambda: torch.rand(()), "torch's global generator"),
        (lambda: random.random(), "Python's random module"),
        (lambda: np.random.rand(), "numpy's global generator"),
        (lambda: distributions.Normal(0.0, 1.0).sample(), "torch's global generator"),
    ],
    ids=["torch.rand", "random.random", "np.random.rand", "Normal.sample"],
)
def test_uncaptured_randomness_is_refused(theta, draw, named):
    def episode():
        draw()
        return bandit(theta)()

    with pytest.raises(UninterceptedRandomnessError) as caught:
        check_reinforce(episode, {"theta": theta}, rtol=1e-7, atol=1e-10)
    message = str(caught.value)
    assert named in message
    assert "Sample actions through those entry points" in message


def test_gumbel_max_sampling_is_refused(theta):
    def episode():
        gumbel = -torch.log(-torch.log(torch.rand(K, dtype=torch.float64)))
        action = torch.argmax(theta + gumbel)
        dist = Categorical(logits=theta)
        dist.sample()  # a draw the check sees, so the failure is the uncaptured one
        return REWARD[action], -dist.log_prob(action) * REWARD[action]

    with pytest.raises(UninterceptedRandomnessError, match="not a Gumbel-max"):
        check_reinforce(episode, {"theta": theta}, rtol=1e-7, atol=1e-10)


def test_dropout_in_training_mode_is_refused(float64_default):
    dropout = torch.nn.Dropout(0.5)
    weights = torch.ones(K, requires_grad=True)

    def episode():
        dist = Categorical(logits=dropout(weights))
        action = dist.sample()
        return REWARD[action], -dist.log_prob(action) * REWARD[action]

    with pytest.raises(UninterceptedRandomnessError, match=r"model\.eval\(\)"):
        check_reinforce(episode, [weights], rtol=1e-7, atol=1e-10)
    dropout.eval()
    assert check_reinforce(episode, [weights], rtol=1e-7, atol=1e-10).ok


def test_privately_seeded_generator_inside_the_episode_is_allowed(theta):
    def episode():
        environment = np.random.default_rng(3)  # created and seeded inside the episode
        noise = float(environment.normal())
        dist = Categorical(logits=theta)
        action = dist.sample()
        reward = REWARD[action] + noise
        return reward, -dist.log_prob(action) * reward

    assert check_reinforce(episode, {"theta": theta}, rtol=1e-7, atol=1e-10).ok


# --- invalid probabilities ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probs", "phrase"),
    [
        ([float("nan"), 0.5, 0.5], "NaN or infinite"),
        ([float("inf"), 0.5, 0.5], "NaN or infinite"),
        ([-0.1, 0.6, 0.5], "negative probabilities"),
        ([0.0, 0.0, 0.0], "all zero"),
    ],
    ids=["nan", "inf", "negative", "all-zero"],
)
def test_invalid_probabilities_are_refused(theta, probs, phrase):
    def episode():
        p = torch.tensor(probs, dtype=torch.float64) + 0 * theta
        action = torch.multinomial(p, 1)[0]
        return REWARD[action], theta.sum()

    with pytest.raises(InvalidProbabilitiesError, match=phrase):
        check_reinforce(episode, {"theta": theta}, rtol=1e-7, atol=1e-10)


def test_too_many_draws_without_replacement_are_refused(theta):
    def episode():
        p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64) + 0 * theta
        actions = torch.multinomial(p, 3, replacement=False)  # only two actions are possible
        return REWARD[actions].sum(), theta.sum()

    with pytest.raises(InvalidProbabilitiesError, match="no action left to draw without replacement"):
        check_reinforce(episode, {"theta": theta}, rtol=1e-7, atol=1e-10)


def test_bernoulli_probability_above_one_is_refused(theta):
    def episode():
        x = torch.bernoulli(torch.tensor([1.5], dtype=torch.float64))
        return x.sum(), theta.sum()

    with pytest.raises(InvalidProbabilitiesError, match="negative"):
        check_reinforce(episode, {"theta": theta}, rtol=1e-7, atol=1e-10)


# --- sequence budget ----------------------------------------------------------------------------


def test_sequence_budget_is_enforced(make_param, batched):
    theta = make_param(3, K, seed=42)

    def episode(*batch):
        rows = batch[0] if batched else 1
        total = torch.zeros(rows, dtype=torch.float64)
        for t in range(3):
            action = Categorical(logits=theta[t].expand(rows, K)).sample()
            total = total + REWARD[action]
        return (total, total) if batched else (total[0], total[0])

    with pytest.raises(SequenceBudgetError, match="max_sequences=10") as caught:
        check_reinforce(episode, {"theta": theta}, batched=batched, max_sequences=10, rtol=1e-7, atol=1e-10)
    assert "pass a larger max_sequences" in str(caught.value)


# --- episode output -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_output", "phrase"),
    [
        (lambda r, loss: r, "must return a pair"),
        (lambda r, loss: (r, loss, loss), "must return a pair"),
        (lambda r, loss: (r.expand(2), loss), "must be a scalar tensor"),
        (lambda r, loss: (r, loss.expand(2, 1)), "must be a scalar tensor"),
        (lambda r, loss: (r, loss * float("inf")), "not finite"),
        (lambda r, loss: (r * float("nan"), loss), "not finite"),
        (lambda r, loss: (r.long(), loss), "floating-point tensor"),
        (lambda r, loss: ("reward", loss), "floating-point tensor"),
    ],
    ids=["single", "triple", "vector-objective", "matrix-loss", "inf-loss", "nan-objective", "int-tensor", "string"],
)
def test_bad_episode_output_is_refused(theta, make_output, phrase):
    def episode():
        dist = Categorical(logits=theta)
        action = dist.sample()
        reward = REWARD[action] + 1.0  # never zero, so inf and nan stay non-finite
        return make_output(reward, -dist.log_prob(action) * reward)

    with pytest.raises(EpisodeOutputError, match=phrase):
        check_reinforce(episode, {"theta": theta}, rtol=1e-7, atol=1e-10)


def test_vector_output_in_sequential_mode_suggests_batched_mode(theta):
    def episode():
        action = Categorical(logits=theta).sample()
        return REWARD[action].expand(2), theta.sum().expand(2)

    with pytest.raises(EpisodeOutputError, match=r"batched=True"):
        check_reinforce(episode, {"theta": theta}, rtol=1e-7, atol=1e-10)


def test_batched_output_of_wrong_shape_is_refused(theta):
    def episode(batch_size):
        dist = Categorical(logits=theta.expand(batch_size, K))
        action = dist.sample()
        reward = REWARD[action]
        return reward[:, None], (-dist.log_prob(action) * reward)[:, None]  # (batch_size, 1)

    with pytest.raises(EpisodeOutputError, match=r"shape \(1,\), one value per row"):
        check_reinforce(episode, {"theta": theta}, batched=True, rtol=1e-7, atol=1e-10)


def test_python_float_outputs_are_accepted(theta):
    def episode():
        dist = Categorical(logits=theta)
        action = dist.sample()
        reward = float(REWARD[action])
        return reward, -dist.log_prob(action) * reward

    report = check_reinforce(episode, {"theta": theta}, rtol=1e-7, atol=1e-10)
    assert report.ok
    assert report.objective == pytest.approx(float((torch.softmax(theta.detach(), 0) * REWARD).sum()), abs=1e-12)


# --- parameters ---------------------------------------------------------------------------------


def test_parameter_without_grad_is_refused():
    theta = torch.zeros(K, dtype=torch.float64)
    with pytest.raises(ParameterError, match=r"requires_grad_\(\)"):
        check_reinforce(bandit(theta), {"theta": theta}, rtol=1e-7, atol=1e-10)


def test_complex_parameter_is_refused():
    theta = torch.zeros(K, dtype=torch.complex128, requires_grad=True)
    with pytest.raises(ParameterError, match=r"torch\.complex128; the check handles real floating-point parameters"):
        check_reinforce(bandit(theta), {"theta": theta}, rtol=1e-7, atol=1e-10)


def test_non_leaf_parameter_is_refused(theta):
    derived = theta * 2
    with pytest.raises(ParameterError, match="not a leaf tensor"):
        check_reinforce(bandit(derived), {"derived": derived}, rtol=1e-7, atol=1e-10)


def test_duplicate_parameter_is_refused(theta):
    with pytest.raises(ParameterError, match="'a' and 'b' are the same tensor; list it once"):
        check_reinforce(bandit(theta), {"a": theta, "b": theta}, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("empty", [{}, [], torch.nn.Module()], ids=["dict", "list", "module"])
def test_empty_parameters_are_refused(theta, empty):
    with pytest.raises(ParameterError, match="params is empty"):
        check_reinforce(bandit(theta), empty, rtol=1e-7, atol=1e-10)


def test_non_tensor_parameter_is_refused(theta):
    with pytest.raises(ParameterError, match="not a tensor"):
        check_reinforce(bandit(theta), {"theta": theta, "scale": 2.0}, rtol=1e-7, atol=1e-10)


def test_non_iterable_parameters_are_refused(theta):
    with pytest.raises(ParameterError, match="pass a mapping name -> tensor"):
        check_reinforce(bandit(theta), 3, rtol=1e-7, atol=1e-10)


def test_parameters_are_refused_before_the_episode_runs(theta):
    calls = []

    def episode():
        calls.append(None)
        return bandit(theta)()

    with pytest.raises(ParameterError):
        check_reinforce(episode, {"theta": theta.detach()}, rtol=1e-7, atol=1e-10)
    assert calls == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"finite_differences": "central"},
        {"rtol": -1.0},
        {"atol": float("nan")},
        {"fd_rtol": float("inf")},
        {"fd_step": 0.0},
        {"max_sequences": 0},
    ],
    ids=["fd-mode", "rtol", "atol", "fd_rtol", "fd_step", "max_sequences"],
)
def test_invalid_options_are_refused(theta, kwargs):
    with pytest.raises(ValueError):
        check_reinforce(bandit(theta), {"theta": theta}, **kwargs)


# --- nesting and restoring the samplers ---------------------------------------------------------


def test_nested_check_is_refused_and_samplers_restored(theta):
    before = _installed()

    def episode():
        check_reinforce(bandit(theta), {"theta": theta}, rtol=1e-7, atol=1e-10)
        return bandit(theta)()

    with pytest.raises(CheckUsageError, match="cannot be nested"):
        check_reinforce(episode, {"theta": theta}, rtol=1e-7, atol=1e-10)
    assert _installed() == before
    assert check_reinforce(bandit(theta), {"theta": theta}, rtol=1e-7, atol=1e-10).ok


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("batched_mode", [False, True], ids=["sequential", "batched"])
def test_samplers_are_restored_after_an_exception_in_the_episode(theta, batched_mode):
    original_multinomial = torch.multinomial
    original_tensor_multinomial = torch.Tensor.multinomial
    original_bernoulli = torch.bernoulli
    original_sample = Categorical.sample
    original_bernoulli_sample = Bernoulli.sample
    before = _installed()
    seen = {}

    def episode(*batch):
        seen["inside"] = torch.multinomial
        Categorical(logits=theta).sample()
        raise Boom("the user's episode failed")

    with pytest.raises(Boom):
        check_reinforce(episode, {"theta": theta}, batched=batched_mode, rtol=1e-7, atol=1e-10)
    assert seen["inside"] is not original_multinomial  # it was intercepted while running
    assert torch.multinomial is original_multinomial
    assert torch.Tensor.multinomial is original_tensor_multinomial
    assert torch.bernoulli is original_bernoulli
    assert Categorical.sample is original_sample
    assert Bernoulli.sample is original_bernoulli_sample
    assert _installed() == before
    # Sampling works normally again and consumes torch's generator.
    state = torch.get_rng_state()
    torch.multinomial(torch.ones(4), 1)
    assert not torch.equal(state, torch.get_rng_state())


def test_samplers_are_restored_after_a_usage_error(theta):
    before = _installed()
    with pytest.raises(InvalidProbabilitiesError):
        check_reinforce(
            lambda: (torch.multinomial(torch.zeros(2), 1).double().sum(), theta.sum()), [theta], rtol=1e-7, atol=1e-10
        )
    with pytest.raises(UninterceptedRandomnessError):
        check_reinforce(lambda: (torch.rand(()).double(), bandit(theta)()[1]), [theta], rtol=1e-7, atol=1e-10)
    assert _installed() == before


def test_samplers_are_restored_after_a_mismatch(theta):
    before = _installed()

    def wrong():
        dist = Categorical(logits=theta)
        action = dist.sample()
        return REWARD[action], dist.log_prob(action) * REWARD[action]  # sign flipped

    with pytest.raises(ReinforceCheckError):
        check_reinforce(wrong, {"theta": theta}, rtol=1e-7, atol=1e-10)
    assert _installed() == before


def test_intercept_samplers_routes_draws_to_the_chooser_and_restores():
    decisions = []

    class Last:
        def choose(self, weights, num_samples, replacement, site):
            decisions.append((tuple(weights.shape), num_samples, replacement, site))
            return torch.full((weights.shape[0], num_samples), weights.shape[1] - 1, dtype=torch.long)

    before = _installed()
    with intercept_samplers(Last()):
        categorical = Categorical(probs=torch.tensor([0.2, 0.3, 0.5])).sample()
        multinomial = torch.multinomial(torch.ones(2, 4), 2, replacement=True)
        bernoulli = torch.bernoulli(torch.full((3,), 0.5))
    assert _installed() == before
    assert int(categorical) == 2
    assert multinomial.tolist() == [[3, 3], [3, 3]]
    assert bernoulli.tolist() == [1.0, 1.0, 1.0]
    assert decisions == [
        ((1, 3), 1, True, "Categorical.sample"),
        ((2, 4), 2, True, "torch.multinomial"),
        ((3, 2), 1, True, "torch.bernoulli"),
    ]


@pytest.mark.parametrize("batched_mode", [False, True], ids=["sequential", "batched"])
def test_a_check_installs_the_samplers_once_for_all_its_episode_runs(theta, monkeypatch, batched_mode):
    installs = []
    save = patching.save_attributes
    monkeypatch.setattr(patching, "save_attributes", lambda targets: installs.append(1) or save(targets))

    def two_draws(batch_size=None):
        dist = Categorical(logits=theta.expand(batch_size or 1, K))
        first, second = dist.sample(), dist.sample()
        reward = REWARD[first] + REWARD[second]
        loss = -(dist.log_prob(first) + dist.log_prob(second)) * reward
        return (reward, loss) if batch_size else (reward[0], loss[0])

    report = check_reinforce(two_draws, {"theta": theta}, batched=batched_mode, rtol=1e-7, atol=1e-10)
    assert report.ok and report.num_sequences == 9
    assert len(installs) == 1


def test_installed_samplers_draw_for_real_until_a_chooser_routes_them():
    torch.manual_seed(3)
    expected = torch.multinomial(torch.ones(5), 3)
    before = _installed()
    torch.manual_seed(3)
    with samplers_installed():
        assert _installed() != before
        drawn = torch.multinomial(torch.ones(5), 3)
    assert torch.equal(drawn, expected)
    assert _installed() == before


def test_sampler_entry_points_lists_every_intercepted_sampler():
    assert set(sampler_entry_points()) == {
        "torch.multinomial",
        "Tensor.multinomial",
        "torch.bernoulli",
        "Tensor.bernoulli",
        "Categorical.sample",
        "OneHotCategorical.sample",
        "Bernoulli.sample",
        "numpy.random.choice",
        "numpy.random.RandomState.choice",
        "numpy.random.Generator.choice",
        "random.choices",
        "random.Random.choices",
    }


def test_state_kept_between_runs_is_reported_as_nondeterminism():
    import numpy as np

    from reinforce_check import NondeterministicEpisodeError

    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    private = np.random.default_rng(0)  # created outside the episode: advances from run to run

    def episode():
        dist = torch.distributions.Categorical(logits=theta)
        action = dist.sample()
        reward = action.double() + float(private.random())
        return reward, -dist.log_prob(action) * reward

    with pytest.raises(NondeterministicEpisodeError, match="keeps state between runs"):
        check_reinforce(episode, {"theta": theta})


def test_batched_state_kept_between_calls_is_reported_as_nondeterminism(theta):
    import numpy as np

    private = np.random.default_rng(0)  # created outside the episode: advances from call to call

    def episode(batch_size):
        dist = Categorical(logits=theta.expand(batch_size, K))
        action = dist.sample()
        reward = action.double() + float(private.random())
        return reward, -dist.log_prob(action) * reward

    with pytest.raises(NondeterministicEpisodeError, match="keeps state between runs"):
        check_reinforce(episode, {"theta": theta}, batched=True)


def test_an_episode_that_changes_at_shifted_parameters_is_refused_by_finite_differences(theta, in_mode, batched):
    initial = theta.detach().clone()

    def episode(batch_size):
        # Fewer decisions whenever the parameters are not the ones the enumeration saw.
        steps = 2 if torch.equal(theta.detach(), initial) else 1
        total = torch.zeros(batch_size, dtype=torch.float64)
        log_prob = torch.zeros(batch_size, dtype=torch.float64)
        for _ in range(steps):
            dist = Categorical(logits=theta.expand(batch_size, K))
            action = dist.sample()
            total = total + REWARD[action]
            log_prob = log_prob + dist.log_prob(action)
        return total, -log_prob * total

    with pytest.raises(NondeterministicEpisodeError, match="shorter episode"):
        check_reinforce(in_mode(episode), {"theta": theta}, batched=batched, rtol=1e-7, atol=1e-10)


def test_an_action_impossible_at_shifted_parameters_is_refused_by_finite_differences(theta, in_mode, batched):
    initial = theta.detach().clone()

    def episode(batch_size):
        # Action 2 becomes impossible whenever the parameters are not the ones the enumeration saw.
        shifted = not torch.equal(theta.detach(), initial)
        mask = torch.tensor([False, False, shifted])
        dist = Categorical(logits=theta.masked_fill(mask, float("-inf")).expand(batch_size, K))
        action = dist.sample()
        return REWARD[action], -dist.log_prob(action) * REWARD[action]

    with pytest.raises(NondeterministicEpisodeError, match="probability zero"):
        check_reinforce(in_mode(episode), {"theta": theta}, batched=batched, rtol=1e-7, atol=1e-10)
