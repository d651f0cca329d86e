"""numpy's and Python's categorical samplers are intercepted like torch's.

``numpy.random.choice``, ``RandomState.choice`` and ``Generator.choice`` (generators made during the
check), ``random.choices`` and ``random.Random.choices`` go to the chooser, return what numpy and
random return, and leave every generator and every patched name as they were.
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from reinforce_check import (
    NondeterministicEpisodeError,
    NoSamplerCallError,
    ReinforceCheckError,
    UninterceptedRandomnessError,
    check_reinforce,
    enumerate_actions,
)
from reinforce_check.patching import intercept_samplers

REWARD = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
BASELINE = torch.tensor([0.5, -1.0, 0.25], dtype=torch.float64)  # depends on the action: biased
P3 = [0.2, 0.3, 0.5]
# The probabilities reach numpy detached, so central differences of the exact J (step 1e-6, float64,
# accurate to about 1e-9) are the ground truth: compare within fd_rtol=1e-6, fd_atol=1e-8. The
# elementwise tolerances apply where autograd decides (random.choices with tensor weights).
TOL = {"rtol": 1e-7, "atol": 1e-10, "fd_rtol": 1e-6, "fd_atol": 1e-8}

# Made before any check: Random.choices is replaced on the class, so it is reached all the same.
RANDOM_MADE_EARLIER = random.Random(5)


@pytest.fixture
def theta(make_param):
    return make_param(3, seed=7)


def _numpy_p(probs):
    return probs.detach().numpy()


# How each entry point draws one action from a torch probability vector.
DRAWS = {
    "numpy.random.choice": lambda probs: np.random.choice(3, p=_numpy_p(probs)),
    "numpy.random.RandomState.choice": lambda probs: np.random.RandomState(0).choice(3, p=_numpy_p(probs)),
    "numpy.random.Generator.choice(default_rng)": lambda probs: np.random.default_rng(0).choice(3, p=_numpy_p(probs)),
    "numpy.random.Generator.choice(Generator)": lambda probs: np.random.Generator(np.random.PCG64(1)).choice(
        3, p=_numpy_p(probs)
    ),
    "random.choices(weights)": lambda probs: random.choices(range(3), weights=probs.tolist())[0],
    "random.choices(cum_weights)": lambda probs: random.choices(range(3), cum_weights=probs.cumsum(0).tolist())[0],
    "random.Random.choices": lambda probs: random.Random(0).choices(range(3), weights=probs.tolist())[0],
    "random.Random.choices(made before the check)": lambda probs: RANDOM_MADE_EARLIER.choices(
        range(3), weights=probs.tolist()
    )[0],
}


def bandit(theta, draw, *, biased=False):
    """One decision drawn by ``draw``; REINFORCE loss, with an action-dependent baseline if ``biased``."""

    def episode():
        probs = torch.softmax(theta, 0)
        action = int(draw(probs))
        advantage = REWARD[action] - (BASELINE[action] if biased else 0.0)
        return REWARD[action], -torch.log(probs[action]) * advantage

    return episode


def exact_bandit_j(theta):
    return float((torch.softmax(theta.detach(), 0) * REWARD).sum())


# --- every entry point: a correct estimator passes, a biased one is caught ---------------------------


@pytest.mark.parametrize("entry", list(DRAWS))
def test_reinforce_with_numpy_or_random_sampler_passes_by_central_differences(theta, entry):
    """Within TOL: the probabilities carry no gradient, so central differences of the exact J decide."""
    report = check_reinforce(bandit(theta, DRAWS[entry]), {"theta": theta}, **TOL)
    assert report.ok
    assert report.num_sequences == 3
    assert report.total_probability == pytest.approx(1.0, abs=1e-12)
    assert report.objective == pytest.approx(exact_bandit_j(theta), abs=1e-12)
    # Autograd's -grad J is blind to probabilities that left torch: it must not be the judge.
    assert report.ground_truth == "finite differences"
    assert all(float(p.target.abs().max()) > 1e-3 for p in report.parameters)


@pytest.mark.parametrize("entry", list(DRAWS))
def test_action_dependent_baseline_with_numpy_or_random_sampler_is_caught(theta, entry):
    """Within TOL the bias (about 0.1) is far outside the tolerance."""
    with pytest.raises(ReinforceCheckError) as caught:
        check_reinforce(bandit(theta, DRAWS[entry], biased=True), {"theta": theta}, **TOL)
    assert caught.value.report.ground_truth == "finite differences"


def test_missing_log_prob_term_with_numpy_choice_is_caught(theta):
    """Within TOL: the surrogate -p(a) R(a) instead of -log p(a) R(a) is biased."""

    def episode():
        probs = torch.softmax(theta, 0)
        action = np.random.choice(3, p=_numpy_p(probs))
        return REWARD[action], -probs[action] * REWARD[action]

    with pytest.raises(ReinforceCheckError):
        check_reinforce(episode, {"theta": theta}, **TOL)


def test_random_choices_with_tensor_weights_keeps_their_gradient_and_autograd_decides(theta):
    """Within TOL: weights given as a torch tensor that requires grad keep it, so autograd's -grad J
    sees the dependence and decides, cross-checked by central differences."""

    def episode():
        probs = torch.softmax(theta, 0)
        action = random.choices(range(3), weights=probs)[0]
        return REWARD[action], -torch.log(probs[action]) * REWARD[action]

    report = check_reinforce(episode, {"theta": theta}, **TOL)
    assert report.ok and report.ground_truth == "autograd"
    assert report.objective == pytest.approx(exact_bandit_j(theta), abs=1e-12)


def test_random_choices_with_tensor_weights_and_a_biased_loss_is_caught_by_autograd(theta):
    """Within TOL: the action-dependent baseline is caught by autograd's -grad J."""

    def episode():
        probs = torch.softmax(theta, 0)
        action = random.choices(range(3), weights=probs)[0]
        return REWARD[action], -torch.log(probs[action]) * (REWARD[action] - BASELINE[action])

    with pytest.raises(ReinforceCheckError) as caught:
        check_reinforce(episode, {"theta": theta}, **TOL)
    assert caught.value.report.ground_truth == "autograd"
    # The sequences behind the bias name their decisions by the sampler that made them.
    assert caught.value.report.top_sequences[0].choices[0][0] == "random.choices"


# --- sequential episodes of several steps, and batched episodes ---------------------------------------


def two_step_episode(theta, draw, *, biased=False):
    """Two decisions, the second policy depending on the first action; reward-to-go weights, and
    with ``biased`` a baseline that depends on the action it weighs."""

    def episode():
        log_probs, actions = [], []
        for step in range(2):
            probs = torch.softmax(theta + 0.5 * step * (actions[0] if actions else 0), 0)
            action = int(draw(probs))
            log_probs.append(torch.log(probs[action]))
            actions.append(action)
        rewards = REWARD[actions]
        to_go = [rewards.sum(), rewards[1]]
        baselines = [BASELINE[a] if biased else 0.0 for a in actions]
        loss = sum(-lp * (g - b) for lp, g, b in zip(log_probs, to_go, baselines))
        return rewards.sum(), loss

    return episode


@pytest.mark.parametrize(
    "entry", ["numpy.random.choice", "numpy.random.Generator.choice(default_rng)", "random.choices(weights)"]
)
def test_two_step_episode_enumerates_nine_sequences_and_reward_to_go_passes(theta, entry):
    """Within TOL, by central differences."""
    report = check_reinforce(two_step_episode(theta, DRAWS[entry]), {"theta": theta}, **TOL)
    assert report.ok and report.num_sequences == 9
    assert report.total_probability == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("entry", ["numpy.random.choice", "random.choices(weights)"])
def test_two_step_episode_with_action_dependent_baseline_is_caught(theta, entry):
    """Within TOL, by central differences."""
    with pytest.raises(ReinforceCheckError):
        check_reinforce(two_step_episode(theta, DRAWS[entry], biased=True), {"theta": theta}, **TOL)


BATCHED_DRAWS = {
    "numpy.random.choice": lambda probs, rows: np.random.choice(3, size=rows, p=_numpy_p(probs)),
    "numpy.random.Generator.choice": lambda probs, rows: np.random.default_rng(0).choice(
        3, size=rows, p=_numpy_p(probs)
    ),
    "random.choices": lambda probs, rows: random.choices(range(3), weights=probs.tolist(), k=rows),
}


@pytest.mark.parametrize("entry", list(BATCHED_DRAWS))
@pytest.mark.parametrize("biased", [False, True], ids=["unbiased", "biased"])
def test_batched_episode_draws_one_action_per_row_with_size_batch(theta, entry, biased):
    """Within TOL: ``size=batch_size`` (``k=batch_size``) draws one action per row from the shared
    probabilities; the correct estimator passes and the action-dependent baseline is caught."""

    def episode(rows):
        probs = torch.softmax(theta, 0)
        actions = torch.as_tensor(np.asarray(BATCHED_DRAWS[entry](probs, rows)), dtype=torch.long)
        advantage = REWARD[actions] - (BASELINE[actions] if biased else 0.0)
        return REWARD[actions], -torch.log(probs[actions]) * advantage

    if biased:
        with pytest.raises(ReinforceCheckError):
            check_reinforce(episode, {"theta": theta}, batched=True, **TOL)
        return
    report = check_reinforce(episode, {"theta": theta}, batched=True, **TOL)
    assert report.ok and report.num_sequences == 3
    assert report.objective == pytest.approx(exact_bandit_j(theta), abs=1e-12)


def test_batched_episode_calling_numpy_choice_once_per_row_is_refused(theta):
    """A call draws from one probability vector: per-row calls cannot be told apart by row."""

    def episode(rows):
        probs = torch.softmax(theta, 0)
        actions = torch.as_tensor([np.random.choice(3, p=_numpy_p(probs)) for _ in range(rows)])
        return REWARD[actions], -torch.log(probs[actions]) * REWARD[actions]

    with pytest.raises(NondeterministicEpisodeError, match=r"numpy\.random\.choice was called with 1 probability rows"):
        check_reinforce(episode, {"theta": theta}, batched=True, **TOL)


# --- size=, replace=False, a as a list ------------------------------------------------------------------


def test_choose_two_of_three_without_replacement_enumerates_six_ordered_sequences(theta):
    """Within TOL. J by hand: sum over ordered pairs i != j of p_i p_j / (1 - p_i) (R_i + 2 R_j)."""

    def episode():
        probs = torch.softmax(theta, 0)
        first, second = np.random.choice(3, size=2, replace=False, p=_numpy_p(probs))
        objective = REWARD[first] + 2 * REWARD[second]
        log_prob = torch.log(probs[first]) + torch.log(probs[second] / (1 - probs[first]))
        return objective, -log_prob * objective

    report = check_reinforce(episode, {"theta": theta}, **TOL)
    p = torch.softmax(theta.detach(), 0).tolist()
    by_hand = sum(
        p[i] * p[j] / (1 - p[i]) * (float(REWARD[i]) + 2 * float(REWARD[j]))
        for i, j in itertools.permutations(range(3), 2)
    )
    assert report.ok
    assert report.num_sequences == 6
    assert report.total_probability == pytest.approx(1.0, abs=1e-12)
    assert report.objective == pytest.approx(by_hand, abs=1e-12)


def test_draws_without_replacement_treated_as_independent_are_caught(theta):
    """Within TOL: a loss that ignores the renormalisation of the second draw is biased."""

    def episode():
        probs = torch.softmax(theta, 0)
        first, second = np.random.default_rng(0).choice(3, size=2, replace=False, p=_numpy_p(probs))
        objective = REWARD[first] + 2 * REWARD[second]
        log_prob = torch.log(probs[first]) + torch.log(probs[second])  # missing / (1 - p_first)
        return objective, -log_prob * objective

    with pytest.raises(ReinforceCheckError):
        check_reinforce(episode, {"theta": theta}, **TOL)


def test_tuple_size_draws_every_element_and_enumerates_all_grids(theta):
    """Within TOL: size=(2, 2) is four independent draws, 3**4 sequences."""

    def episode():
        probs = torch.softmax(theta, 0)
        grid = np.random.choice(3, size=(2, 2), p=_numpy_p(probs))
        assert grid.shape == (2, 2) and grid.dtype == np.dtype("l")
        actions = torch.as_tensor(grid.reshape(-1))
        objective = REWARD[actions].sum() + REWARD[actions[0]] * REWARD[actions[3]]
        return objective, -torch.log(probs[actions]).sum() * objective

    report = check_reinforce(episode, {"theta": theta}, **TOL)
    assert report.ok and report.num_sequences == 81
    assert report.total_probability == pytest.approx(1.0, abs=1e-12)


def test_list_of_strings_as_population_returns_its_elements(theta):
    """Within TOL: ``a`` a list of strings; the episode sees numpy strings from it."""
    names = ["left", "stay", "right"]
    seen = set()

    def episode():
        probs = torch.softmax(theta, 0)
        move = np.random.choice(names, p=_numpy_p(probs))
        assert isinstance(move, np.str_)
        seen.add(str(move))
        action = names.index(str(move))
        return REWARD[action], -torch.log(probs[action]) * REWARD[action]

    report = check_reinforce(episode, {"theta": theta}, **TOL)
    assert report.ok and seen == set(names)
    assert report.objective == pytest.approx(exact_bandit_j(theta), abs=1e-12)


def test_random_choices_of_a_string_population_returns_a_list_of_k_elements(theta):
    """Within TOL: k=2 independent draws from a string population (9 sequences)."""
    names = ["left", "stay", "right"]

    def episode():
        probs = torch.softmax(theta, 0)
        moves = random.Random(3).choices(names, weights=probs.tolist(), k=2)
        assert isinstance(moves, list) and len(moves) == 2 and set(moves) <= set(names)
        actions = torch.tensor([names.index(m) for m in moves])
        objective = REWARD[actions].sum()
        return objective, -torch.log(probs[actions]).sum() * objective

    report = check_reinforce(episode, {"theta": theta}, **TOL)
    assert report.ok and report.num_sequences == 9


def test_uniform_draws_without_probabilities_are_enumerated_with_uniform_probabilities(theta):
    """Within TOL: np.random.choice(2) and random.choices without weights are categorical draws of
    known uniform probabilities: enumerated, each sequence weighted 1/2 * 1/3."""

    def episode():
        probs = torch.softmax(theta, 0)
        coin = int(np.random.choice(2))
        die = random.choices(range(3))[0]
        action = int(np.random.choice(3, p=_numpy_p(probs)))
        objective = REWARD[action] * (1 + coin) + die
        return objective, -torch.log(probs[action]) * objective

    report = check_reinforce(episode, {"theta": theta}, **TOL)
    assert report.ok and report.num_sequences == 18
    assert report.objective == pytest.approx(1.5 * exact_bandit_j(theta) + 1.0, abs=1e-12)


# --- what the calls return, against numpy's and random's own results ----------------------------------


class Scripted:
    """A chooser taking, for every draw, the last action of nonzero weight (without replacement: the
    nonzero actions from the last down); it records what it was asked."""

    def __init__(self):
        self.calls = []

    def choose(self, weights, num_samples, replacement, site):
        self.calls.append((tuple(weights.shape), num_samples, replacement, site, weights.dtype, weights.requires_grad))
        rows = []
        for row in weights.detach().tolist():
            nonzero = [k for k, w in enumerate(row) if w > 0][::-1]
            rows.append([nonzero[0]] * num_samples if replacement else nonzero[:num_samples])
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), num_samples)


def _expected_indices(count, draws, replace, p):
    nonzero = [k for k in range(count) if p is None or p[k] > 0][::-1]
    return [nonzero[0]] * draws if replace else nonzero[:draws]


NUMPY_CASES = [
    # a, size, replace, p
    (3, None, True, P3),
    (3, None, True, None),
    (3, 4, True, P3),
    (3, (2, 2), True, None),
    (3, (), True, P3),
    (3, 2, False, P3),
    (3, (1, 2), False, None),
    (3, 0, True, P3),
    (["a", "bb", "c"], None, True, P3),
    (["a", "bb", "c"], (2,), False, P3),
    (["a", "bb", "c"], (), True, P3),
    (np.array([1.5, 2.5, 3.5]), 3, True, [0.5, 0.0, 0.5]),
    ([10, 20, 30], None, True, None),
]
MAKERS = {
    "numpy.random.choice": lambda: np.random,
    "numpy.random.RandomState.choice": lambda: np.random.RandomState(0),
    "numpy.random.Generator.choice": lambda: np.random.default_rng(0),
}


@pytest.mark.parametrize("site", list(MAKERS))
@pytest.mark.parametrize(("a", "size", "replace", "p"), NUMPY_CASES)
def test_numpy_choice_returns_what_numpy_returns_for_the_chosen_indices(site, a, size, replace, p):
    real = MAKERS[site]().choice(a, size=size, replace=replace, p=p)
    chooser = Scripted()
    with intercept_samplers(chooser):
        ours = MAKERS[site]().choice(a, size=size, replace=replace, p=p)
    assert type(ours) is type(real)
    assert np.shape(ours) == np.shape(real)
    if isinstance(real, np.ndarray):  # a numpy string scalar's dtype is its own length
        assert ours.dtype == real.dtype
    count = a if isinstance(a, int) else len(a)
    draws = math.prod(np.atleast_1d(size).tolist()) if size not in (None, ()) else 1
    indices = _expected_indices(count, draws, replace, p)
    population = np.asarray(a) if not isinstance(a, int) else np.arange(a)
    assert np.asarray(ours).reshape(-1).tolist() == population[indices].tolist()
    if draws:
        assert all(call[3] == site and call[4] == torch.float64 and not call[5] for call in chooser.calls)
        assert sum(call[0][0] * call[1] for call in chooser.calls) == draws
        assert all(call[2] == replace for call in chooser.calls)


def test_generator_choice_along_an_axis_returns_columns():
    table = np.arange(6).reshape(2, 3)
    real = np.random.default_rng(0).choice(table, size=2, p=P3, axis=1)
    with intercept_samplers(Scripted()):
        ours = np.random.default_rng(0).choice(table, size=2, p=P3, axis=1, shuffle=False)
    assert ours.shape == real.shape == (2, 2)
    assert ours.tolist() == [[2, 2], [5, 5]]


@pytest.mark.parametrize(
    "call",
    [
        lambda rng: rng.choices("abc", k=4),
        lambda rng: rng.choices("abc", weights=[1, 0, 3], k=2),
        lambda rng: rng.choices(["x", "y"], cum_weights=[0.25, 1.0]),
        lambda rng: rng.choices(range(3), weights=[2, 2, 0], k=0),
        lambda rng: rng.choices("abc", weights=iter([1, 0, 3]), k=2),
    ],
    ids=["uniform", "weights", "cum_weights", "k=0", "iterator weights"],
)
def test_random_choices_returns_a_list_of_population_elements_as_random_does(call):
    real = call(random.Random(0))
    chooser = Scripted()
    with intercept_samplers(chooser):
        ours = call(random.Random(0))
        module = call(random)
    assert type(ours) is type(real) is type(module) is list
    assert len(ours) == len(real) == len(module)
    assert ours == module
    if ours:
        assert {site for _, _, _, site, _, _ in chooser.calls} == {"random.Random.choices", "random.choices"}


@pytest.mark.parametrize(
    "call",
    [
        lambda: np.random.choice(3, p=[0.5, 0.6, 0.1]),
        lambda: np.random.choice(3, size=4, replace=False),
        lambda: np.random.choice(3, size=3, replace=False, p=[0.5, 0.5, 0.0]),
        lambda: np.random.RandomState(0).choice([[1, 2], [3, 4]]),
        lambda: np.random.default_rng(0).choice(3, p=[0.5, -0.5, 1.0]),
        lambda: random.choices("ab", weights=[1, 2], cum_weights=[1, 3]),
        lambda: random.choices("ab", weights=[1, 2, 3]),
    ],
    ids=["p-sum", "too-many", "too-few-nonzero", "2d-a", "negative-p", "both-weights", "length"],
)
def test_invalid_arguments_raise_what_numpy_and_random_raise(call):
    with pytest.raises(Exception) as real:
        call()
    with intercept_samplers(Scripted()), pytest.raises(type(real.value)) as ours:
        call()
    assert str(ours.value) == str(real.value)


def test_intercepted_calls_move_no_global_generator():
    numpy_before, python_before = np.random.get_state(), random.getstate()
    with intercept_samplers(Scripted()):
        np.random.choice(3, size=5, p=P3)
        np.random.choice(3, size=2, replace=False)
        random.choices("abc", k=3)
        rng = np.random.default_rng(4)
        rng.choice(3, p=P3)
    numpy_after = np.random.get_state()
    assert numpy_after[0] == numpy_before[0] and np.array_equal(numpy_after[1], numpy_before[1])
    assert numpy_after[2:] == numpy_before[2:]
    assert random.getstate() == python_before
    # The generator made in the block did not move either: it draws what a fresh one draws.
    assert rng.random() == np.random.default_rng(4).random()


# --- scoped mode ---------------------------------------------------------------------------------------


def test_scoped_mode_enumerates_marked_numpy_draws_and_replays_the_others(theta):
    """Within TOL: the marked policy's np.random.choice is enumerated; the environment's own
    np.random.choice and random.choices outside it sample for real, the same in every run."""

    @enumerate_actions
    def act(probs):
        return int(np.random.choice(3, p=_numpy_p(probs)))

    def episode():
        probs = torch.softmax(theta, 0)
        noise = float(np.random.choice([0.0, 0.25, 0.5])) + random.choices([0.0, 1.0])[0]
        action = act(probs)
        objective = REWARD[action] + noise
        return objective, -torch.log(probs[action]) * objective

    report = check_reinforce(episode, {"theta": theta}, **TOL)
    assert report.ok and report.num_sequences == 3
    assert report.total_probability == pytest.approx(1.0, abs=1e-12)
    # Two draws outside marked code in every run of the enumeration, counted like torch's.
    assert any(f"{2 * report.rows_run} other sampler call(s)" in note for note in report.notes)


def test_scoped_mode_with_a_biased_marked_numpy_policy_is_caught(theta):
    """Within TOL, by central differences."""

    @enumerate_actions
    def act(probs):
        return int(np.random.default_rng(2).choice(3, p=_numpy_p(probs)))

    def episode():
        np.random.permutation(4)  # a trainer's shuffle outside marked code: replayed, allowed
        probs = torch.softmax(theta, 0)
        action = act(probs)
        return REWARD[action], -torch.log(probs[action]) * (REWARD[action] - BASELINE[action])

    with pytest.raises(ReinforceCheckError):
        check_reinforce(episode, {"theta": theta}, **TOL)


# --- restoration -----------------------------------------------------------------------------------------


def _patched_names():
    return (
        np.random.choice,
        np.random.RandomState,
        np.random.Generator,
        np.random.default_rng,
        random.choices,
        vars(random.Random)["choices"],
    )


def _generator_states():
    state = np.random.get_state()
    return (state[0], state[1].tolist(), *state[2:]), random.getstate()


class EpisodeFailure(Exception):
    pass


def _raising(theta):
    def episode():
        np.random.choice(3, p=_numpy_p(torch.softmax(theta, 0)))
        raise EpisodeFailure("the environment crashed")

    return episode


def _shuffling(theta):
    def episode():
        np.random.shuffle(np.arange(3))  # the watch's wrapper records it; the check refuses it
        return bandit(theta, DRAWS["random.choices(weights)"])()

    return episode


@pytest.mark.parametrize(
    ("make", "raised"),
    [
        (lambda theta: bandit(theta, DRAWS["numpy.random.choice"]), None),
        (lambda theta: bandit(theta, DRAWS["random.choices(weights)"], biased=True), ReinforceCheckError),
        (_raising, EpisodeFailure),
        (_shuffling, UninterceptedRandomnessError),
    ],
    ids=["passing", "failing", "raising", "randomness refused"],
)
def test_generators_and_patched_names_are_restored_after_a_check(theta, make, raised):
    names, states = _patched_names(), _generator_states()
    if raised is None:
        check_reinforce(make(theta), {"theta": theta}, **TOL)
    else:
        with pytest.raises(raised):
            check_reinforce(make(theta), {"theta": theta}, **TOL)
    assert _patched_names() == names
    assert all(a is b for a, b in zip(_patched_names(), names))
    if make is not _shuffling:  # the refused shuffle drew from numpy's global generator itself
        assert _generator_states() == states


def test_outside_a_check_the_samplers_draw_exactly_as_numpy_and_random(theta):
    np.random.seed(11)
    random.seed(11)
    expected = (np.random.choice(3, size=20, p=P3).tolist(), random.choices("abc", weights=P3, k=20))
    kept = []

    def episode():
        kept.append(np.random.default_rng(11))  # made during the check: the intercepted subclass
        return bandit(theta, DRAWS["numpy.random.choice"])()

    check_reinforce(episode, {"theta": theta}, **TOL)
    np.random.seed(11)
    random.seed(11)
    assert (np.random.choice(3, size=20, p=P3).tolist(), random.choices("abc", weights=P3, k=20)) == expected
    # A generator made during the check and kept draws as numpy's own from the same seed.
    assert kept[0].choice(3, size=20, p=P3).tolist() == np.random.default_rng(11).choice(3, size=20, p=P3).tolist()
    assert isinstance(kept[0], np.random.Generator)


def test_generators_made_before_a_check_pass_isinstance_during_it(theta):
    earlier = (np.random.default_rng(0), np.random.RandomState(0))

    def episode():
        assert isinstance(earlier[0], np.random.Generator)
        assert isinstance(earlier[1], np.random.RandomState)
        assert issubclass(type(earlier[0]), np.random.Generator)
        return bandit(theta, DRAWS["numpy.random.Generator.choice(default_rng)"])()

    assert check_reinforce(episode, {"theta": theta}, **TOL).ok


# --- randomness that is not a choice, and draws the check cannot reach -----------------------------------


@pytest.mark.parametrize(
    ("draw", "label"),
    [
        (lambda: np.random.randint(3), "np.random.randint"),
        (lambda: np.random.permutation(3), "np.random.permutation"),
        (lambda: np.random.shuffle(np.arange(3)), "np.random.shuffle"),
        (lambda: random.random(), "random.random"),
        (lambda: random.choice("abc"), "random.choice"),
    ],
    ids=["randint", "permutation", "shuffle", "random.random", "random.choice"],
)
def test_draws_that_are_not_choices_stay_randomness_outside_the_samplers(theta, draw, label):
    def episode():
        draw()
        return bandit(theta, DRAWS["numpy.random.choice"])()

    with pytest.raises(UninterceptedRandomnessError) as caught:
        check_reinforce(episode, {"theta": theta}, **TOL)
    assert f"Drawn by {label} at {__file__}" in str(caught.value)


GENERATOR_MADE_EARLIER = np.random.default_rng(0)


class Environment:
    def __init__(self):
        self.rng = np.random.RandomState(1)


ENVIRONMENT = Environment()


@pytest.mark.parametrize(
    ("draw", "named"),
    [
        (
            lambda p: GENERATOR_MADE_EARLIER.choice(3, p=p),
            "GENERATOR_MADE_EARLIER, a numpy Generator made before the check",
        ),
        (lambda p: ENVIRONMENT.rng.choice(3, p=p), "ENVIRONMENT.rng, a numpy RandomState made before the check"),
    ],
    ids=["global Generator", "attribute RandomState"],
)
def test_a_generator_made_before_the_check_is_refused_with_the_fix(theta, draw, named):
    def episode():
        probs = torch.softmax(theta, 0)
        action = draw(_numpy_p(probs))
        return REWARD[action], -torch.log(probs[action]) * REWARD[action]

    with pytest.raises(NoSamplerCallError) as caught:
        check_reinforce(episode, {"theta": theta}, **TOL)
    message = str(caught.value)
    assert named in message
    assert "Make the generator inside the episode through the module's name, np.random.default_rng(seed)" in message


def test_default_rng_imported_by_name_is_refused_with_the_fix(theta):
    # Holds numpy's own function: the check cannot reach it.
    from numpy.random import default_rng

    def episode():
        probs = torch.softmax(theta, 0)
        action = default_rng(0).choice(3, p=_numpy_p(probs))
        return REWARD[action], -torch.log(probs[action]) * REWARD[action]

    with pytest.raises(NoSamplerCallError) as caught:
        check_reinforce(episode, {"theta": theta}, **TOL)
    assert "default_rng, numpy.random.default_rng imported by name before the check" in str(caught.value)
    assert "Call np.random.default_rng(...) through the module instead" in str(caught.value)


def test_numpy_choice_imported_by_name_moves_the_global_generator_and_is_refused(theta):
    # Bound to numpy's global generator before the check.
    from numpy.random import choice

    def episode():
        probs = torch.softmax(theta, 0)
        action = choice(3, p=_numpy_p(probs))
        dist = torch.distributions.Categorical(probs=probs)
        dist.sample()  # a draw the check sees, so the refusal is the global generator's
        return REWARD[action], -torch.log(probs[action]) * REWARD[action]

    with pytest.raises(UninterceptedRandomnessError) as caught:
        check_reinforce(episode, {"theta": theta}, **TOL)
    message = str(caught.value)
    assert "numpy's global generator" in message
    assert "imported by name before the check draws for real" in message
