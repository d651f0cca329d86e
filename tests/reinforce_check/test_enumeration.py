"""Enumeration of action sequences: every terminating sequence exactly once, in both modes."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
from torch.distributions import Categorical

from reinforce_check import SequenceBudgetError, check_reinforce
from reinforce_check.enumeration import SequentialRunner, enumerate_sequences

Support = Callable[[int, tuple[int, ...]], list[bool]]
"""support(t, history) -> which of the K actions are possible at step t after ``history``."""


def tree_episode(
    theta: torch.Tensor, support: Support, *, batched: bool, stop: int | None = None
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """An episode of ``theta.shape[0]`` steps over ``theta.shape[1]`` actions.

    Masked actions get logit -inf. With ``stop`` set, that action ends the episode (sequential:
    the loop breaks; batched: finished rows are forced to take action ``stop`` again, which has
    probability one). The objective encodes the sequence, so each row's objective identifies the
    actions that produced it; the loss is the REINFORCE loss for that objective.
    """
    steps, num_actions = theta.shape

    def encode(t: int, action: torch.Tensor) -> torch.Tensor:
        return (action + 1).double() * float((num_actions + 1) ** t)

    def sequential():
        history: tuple[int, ...] = ()
        code = torch.zeros((), dtype=torch.float64)
        log_prob = torch.zeros((), dtype=torch.float64)
        for t in range(steps):
            mask = torch.tensor(support(t, history))
            dist = Categorical(logits=theta[t].masked_fill(~mask, float("-inf")))
            action = dist.sample()
            code = code + encode(t, action)
            log_prob = log_prob + dist.log_prob(action)
            history += (int(action),)
            if stop is not None and int(action) == stop:
                break
        return code, -log_prob * code

    def batch(batch_size: int):
        histories: list[tuple[int, ...]] = [() for _ in range(batch_size)]
        alive = torch.ones(batch_size, dtype=torch.bool)
        code = torch.zeros(batch_size, dtype=torch.float64)
        log_prob = torch.zeros(batch_size, dtype=torch.float64)
        for t in range(steps):
            masks = []
            for row in range(batch_size):
                if bool(alive[row]):
                    masks.append(support(t, histories[row]))
                else:
                    masks.append([k == stop for k in range(num_actions)])
            mask = torch.tensor(masks)
            dist = Categorical(logits=theta[t].expand(batch_size, num_actions).masked_fill(~mask, float("-inf")))
            action = dist.sample()
            code = code + torch.where(alive, encode(t, action), torch.zeros(()))
            log_prob = log_prob + torch.where(alive, dist.log_prob(action), torch.zeros(()))
            for row in range(batch_size):
                if bool(alive[row]):
                    histories[row] += (int(action[row]),)
            if stop is not None:
                alive = alive & (action != stop)
        return code, -log_prob * code

    return batch if batched else sequential


def expected_sequences(steps: int, num_actions: int, support: Support, stop: int | None = None) -> set[tuple[int, ...]]:
    found: set[tuple[int, ...]] = set()

    def walk(history: tuple[int, ...]) -> None:
        if len(history) == steps or (stop is not None and history and history[-1] == stop):
            found.add(history)
            return
        for action, possible in enumerate(support(len(history), history)):
            if possible:
                walk(history + (action,))

    walk(())
    return found


def sequence_log_prob(theta: torch.Tensor, support: Support, sequence: tuple[int, ...]) -> float:
    total = 0.0
    for t, action in enumerate(sequence):
        mask = torch.tensor(support(t, sequence[:t]))
        logits = theta[t].detach().masked_fill(~mask, float("-inf"))
        total += float(torch.log_softmax(logits, -1)[action])
    return total


def decode(code: float, num_actions: int) -> tuple[int, ...]:
    digits = []
    value = int(round(code))
    while value:
        value, digit = divmod(value, num_actions + 1)
        digits.append(digit - 1)
    return tuple(digits)


def as_tuples(found) -> list[tuple[int, ...]]:
    return [tuple(a.tolist()) for a in found.actions]


def full(num_actions: int) -> Support:
    """Every action possible at every step."""

    def support(t: int, history: tuple[int, ...]) -> list[bool]:
        return [True] * num_actions

    return support


def assert_enumeration_exact(found, theta, support, expected, *, stop=None):
    sequences = as_tuples(found)
    assert len(found) == len(sequences) == len(expected)
    assert len(set(sequences)) == len(sequences), "a sequence was enumerated twice"
    if stop is None:
        assert set(sequences) == expected
    else:
        # Batched rows keep taking the forced stop action after finishing; cut at the first stop.
        cut = {seq[: seq.index(stop) + 1] if stop in seq else seq for seq in sequences}
        assert cut == expected
    num_actions = theta.shape[1]
    for index, sequence in enumerate(sequences):
        real = sequence[: sequence.index(stop) + 1] if stop is not None and stop in sequence else sequence
        # Each row's objective came from the run that took exactly these actions.
        assert decode(float(found.objective[index]), num_actions) == real
        assert float(found.log_prob[index].detach()) == pytest.approx(sequence_log_prob(theta, support, real), abs=1e-12)
    assert float(found.log_prob.detach().exp().sum()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("num_actions", "steps"), [(1, 1), (1, 3), (2, 1), (2, 3), (3, 2), (4, 2), (2, 5)])
def test_bandit_enumerates_every_sequence_exactly_once(make_param, batched, num_actions, steps):
    theta = make_param(steps, num_actions, seed=50)

    support = full(num_actions)
    found = enumerate_sequences(tree_episode(theta, support, batched=batched), batched=batched, max_sequences=1000)
    assert len(found) == num_actions**steps
    assert set(as_tuples(found)) == set(itertools.product(range(num_actions), repeat=steps))
    assert_enumeration_exact(found, theta, support, expected_sequences(steps, num_actions, support))
    assert all(a.dtype == torch.long and a.dim() == 1 for a in found.actions)


def test_sequential_enumeration_runs_the_episode_once_per_sequence(make_param):
    theta = make_param(3, 3, seed=51)
    calls = []
    inner = tree_episode(theta, full(3), batched=False)

    def episode():
        calls.append(None)
        return inner()

    found = enumerate_sequences(episode, batched=False, max_sequences=100)
    assert len(found) == 27
    assert found.passes == len(calls) == 27
    assert found.rows_run == 27


def test_batched_enumeration_needs_few_episode_calls(make_param):
    theta = make_param(3, 3, seed=52)
    calls = []
    inner = tree_episode(theta, full(3), batched=True)

    def episode(batch_size):
        calls.append(batch_size)
        return inner(batch_size)

    found = enumerate_sequences(episode, batched=True, max_sequences=100)
    assert len(found) == 27
    assert found.passes == len(calls)
    # Rounds, not one call per sequence: at most one more round than the episode has decisions.
    assert found.passes <= 3 + 1
    assert found.rows_run == sum(calls) >= 27


def masked(t: int, history: tuple[int, ...]) -> list[bool]:
    # Step 0: action 1 impossible; step 1: only action 2; step 2: actions 0 and 3.
    return [[True, False, True, True], [False, False, True, False], [True, False, False, True]][t]


def test_zero_probability_actions_are_not_branched_on(make_param, batched):
    theta = make_param(3, 4, seed=53)
    found = enumerate_sequences(tree_episode(theta, masked, batched=batched), batched=batched, max_sequences=100)
    expected = expected_sequences(3, 4, masked)
    assert len(expected) == 3 * 1 * 2
    assert_enumeration_exact(found, theta, masked, expected)
    # The forced middle decision is recorded but offers no choice.
    for index in range(len(found)):
        assert found.branching[index][:3].tolist() == [True, False, True]
        assert [action for _, action in found.choices(index)] == [as_tuples(found)[index][0], as_tuples(found)[index][2]]


def test_zero_weights_in_multinomial_are_not_branched_on(make_param):
    weights_param = make_param(4, seed=54)

    def episode():
        weights = torch.exp(weights_param) * torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
        action = torch.multinomial(weights, 1)[0]
        return action.double(), -torch.log(weights[action] / weights.sum()) * action.double()

    found = enumerate_sequences(episode, batched=False, max_sequences=10)
    assert sorted(as_tuples(found)) == [(0,), (2,)]


def no_repeat(t: int, history: tuple[int, ...]) -> list[bool]:
    """History-dependent support: an action may not follow itself."""
    return [not history or history[-1] != k for k in range(3)]


def first_decides_width(t: int, history: tuple[int, ...]) -> list[bool]:
    """Support that grows with the first action: after action a, only actions <= a are possible."""
    if not history:
        return [True, True, True]
    return [k <= history[0] for k in range(3)]


@pytest.mark.parametrize("support", [no_repeat, first_decides_width], ids=["no-repeat", "first-decides-width"])
def test_history_dependent_supports_are_enumerated_exactly(make_param, batched, support):
    theta = make_param(3, 3, seed=55)
    found = enumerate_sequences(tree_episode(theta, support, batched=batched), batched=batched, max_sequences=100)
    assert_enumeration_exact(found, theta, support, expected_sequences(3, 3, support))


def test_variable_length_episodes_end_at_the_stop_action(make_param, batched):
    theta = make_param(3, 3, seed=56)
    stop = 0

    def support(t, history):
        return [True, True, True]

    found = enumerate_sequences(
        tree_episode(theta, support, batched=batched, stop=stop), batched=batched, max_sequences=100
    )
    expected = expected_sequences(3, 3, support, stop=stop)
    assert len(expected) == 1 + 2 + 4 * 3
    assert_enumeration_exact(found, theta, support, expected, stop=stop)
    if not batched:
        assert {len(seq) for seq in as_tuples(found)} == {1, 2, 3}


def test_a_sequential_enumeration_keeps_every_passs_values_bit_for_bit(make_param):
    """The sequences of one-row passes are kept as Python values until the enumeration ends: the
    tensors built from them hold exactly what the passes yielded, paths padded with -1."""
    theta = make_param(3, 3, seed=61)
    runner = SequentialRunner(tree_episode(theta, full(3), batched=False, stop=0), max_sequences=100)
    yielded = [[value.detach().clone() for value in rows] for rows in runner.passes()]
    found = runner.found
    for index, name in enumerate(("log_prob", "objective", "loss")):
        assert torch.equal(getattr(found, name), torch.cat([rows[index] for rows in yielded]))
    assert found.log_prob.dtype == found.objective.dtype == found.loss.dtype == torch.float64
    assert found.lengths.tolist() == [len(path) for path in as_tuples(found)]
    assert all(set(path[length:].tolist()) <= {-1} for path, length in zip(found.paths, found.lengths.tolist()))
    assert not any(found.branching[index, length:].any() for index, length in enumerate(found.lengths.tolist()))


def test_batched_rows_that_finish_with_a_forced_distribution_do_not_branch(make_param):
    theta = make_param(3, 3, seed=57)
    stop = 0
    found = enumerate_sequences(
        tree_episode(theta, full(3), batched=True, stop=stop), batched=True, max_sequences=100
    )
    assert len(found) == 15
    for index, sequence in enumerate(as_tuples(found)):
        assert len(sequence) == 3  # finished rows still make (forced) decisions
        finished_at = sequence.index(stop) if stop in sequence else len(sequence) - 1
        branching = found.branching[index][: len(sequence)].tolist()
        assert branching[: finished_at + 1] == [True] * (finished_at + 1)
        assert branching[finished_at + 1 :] == [False] * (len(sequence) - finished_at - 1)
        assert all(action == stop for action in sequence[finished_at + 1 :])
        assert len(found.choices(index)) == finished_at + 1


@pytest.mark.parametrize(
    "support", [full(3), no_repeat, first_decides_width, masked], ids=["full", "no-repeat", "widening", "masked"]
)
def test_batched_and_sequential_modes_agree(make_param, support):
    num_actions = 4 if support is masked else 3
    found, reports = {}, {}
    for batched in (False, True):
        theta = make_param(3, num_actions, seed=58)
        episode = tree_episode(theta, support, batched=batched)
        found[batched] = enumerate_sequences(episode, batched=batched, max_sequences=1000)
        reports[batched] = check_reinforce(
            episode, {"theta": theta}, batched=batched, rtol=1e-7, atol=1e-10, raise_exception=False
        )

    sequential, batched_found = as_tuples(found[False]), as_tuples(found[True])
    assert len(batched_found) == len(sequential)
    assert set(batched_found) == set(sequential)
    seq_probability = dict(zip(sequential, found[False].log_prob.detach().tolist()))
    bat_probability = dict(zip(batched_found, found[True].log_prob.detach().tolist()))
    for sequence, value in seq_probability.items():
        assert bat_probability[sequence] == pytest.approx(value, abs=1e-12)
    seq_report, bat_report = reports[False], reports[True]
    assert seq_report.ok and bat_report.ok
    assert seq_report.num_sequences == bat_report.num_sequences == len(sequential)
    assert bat_report.objective == pytest.approx(seq_report.objective, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(bat_report.parameters[0].target, seq_report.parameters[0].target, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        bat_report.parameters[0].estimate, seq_report.parameters[0].estimate, rtol=1e-10, atol=1e-12
    )


def test_exact_objective_is_the_probability_weighted_sum(make_param, batched):
    theta = make_param(2, 3, seed=59)
    reward = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], dtype=torch.float64)

    def episode(*batch):
        rows = batch[0] if batched else 1
        total = torch.zeros(rows, dtype=torch.float64)
        log_prob = torch.zeros(rows, dtype=torch.float64)
        for t in range(2):
            dist = Categorical(logits=theta[t].expand(rows, 3))
            action = dist.sample()
            total = total + reward[t, action]
            log_prob = log_prob + dist.log_prob(action)
        loss = -log_prob * total
        return (total, loss) if batched else (total[0], loss[0])

    report = check_reinforce(episode, {"theta": theta}, batched=batched, rtol=1e-7, atol=1e-10)
    probs = torch.softmax(theta.detach(), -1)
    expected = float((probs * reward).sum())  # independent steps: J is the sum of the per-step means
    assert report.objective == pytest.approx(expected, abs=1e-12)
    assert report.total_probability == pytest.approx(1.0, abs=1e-12)


def test_bernoulli_with_a_constant_probability_is_enumerated():
    def episode():
        x = torch.bernoulli(torch.zeros(2, dtype=torch.float64), 0.3)
        return x.sum(), torch.zeros((), dtype=torch.float64)

    found = enumerate_sequences(episode, batched=False, max_sequences=10)
    probability = dict(zip(as_tuples(found), found.log_prob.exp().tolist()))
    assert set(probability) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for sequence, value in probability.items():
        assert value == pytest.approx(math.prod(0.3 if bit else 0.7 for bit in sequence), abs=1e-15)


def test_a_single_possible_action_gives_one_sequence_of_probability_one(make_param):
    theta = make_param(3, seed=60)

    def episode():
        dist = Categorical(logits=theta.masked_fill(torch.tensor([True, False, True]), float("-inf")))
        action = dist.sample()
        return action.double(), -dist.log_prob(action)

    found = enumerate_sequences(episode, batched=False, max_sequences=1)
    assert as_tuples(found) == [(1,)]
    assert float(found.log_prob.detach()) == pytest.approx(0.0, abs=1e-15)
    assert found.branching[0][:1].tolist() == [False]
    assert found.choices(0) == []


@pytest.mark.parametrize(("num_actions", "steps"), [(3, 2), (2, 4), (3, 3)])
def test_budget_equal_to_the_number_of_sequences_suffices(make_param, batched, num_actions, steps):
    theta = make_param(steps, num_actions, seed=61)
    episode = tree_episode(theta, full(num_actions), batched=batched)
    found = enumerate_sequences(episode, batched=batched, max_sequences=num_actions**steps)
    assert len(found) == num_actions**steps
    assert len(set(as_tuples(found))) == num_actions**steps


@pytest.mark.parametrize(("num_actions", "steps"), [(3, 2), (2, 4), (3, 3)])
def test_budget_one_below_the_number_of_sequences_is_refused(make_param, batched, num_actions, steps):
    theta = make_param(steps, num_actions, seed=61)
    episode = tree_episode(theta, full(num_actions), batched=batched)
    limit = num_actions**steps - 1
    with pytest.raises(SequenceBudgetError) as caught:
        enumerate_sequences(episode, batched=batched, max_sequences=limit)
    message = str(caught.value)
    assert f"more than max_sequences={limit:,} action sequences" in message
    assert "completed" in message and "pending" in message
    assert f"max_sequences={10 * limit:,}" in message


def test_budget_message_counts_completed_and_pending_sequences(make_param):
    theta = make_param(2, 3, seed=62)
    episode = tree_episode(theta, full(3), batched=False)
    with pytest.raises(SequenceBudgetError) as caught:
        enumerate_sequences(episode, batched=False, max_sequences=3)
    # The first run completes one sequence and finds 2 + 2 alternatives: 1 + 4 > 3.
    assert "max_sequences=3 action sequences (1 completed and 4 more prefixes pending" in str(caught.value)


def test_batched_enumeration_of_a_small_tree_takes_two_calls(make_param):
    """Round 0 discovers one path without gradient; a tree small enough to guess whole then runs in
    one round, whose first row replays round 0's sequence in another call (the replay check)."""
    theta = make_param(3, 3, seed=63)
    calls = []
    inner = tree_episode(theta, full(3), batched=True)

    def episode(batch_size):
        calls.append((batch_size, torch.is_grad_enabled()))
        return inner(batch_size)

    found = enumerate_sequences(episode, batched=True, max_sequences=100)
    assert calls == [(1, False), (27, True)]
    assert len(found) == 27 and found.passes == 2 and found.rows_run == 28
    assert found.replay_verified
    assert as_tuples(found)[0] == (0, 0, 0)
    assert_enumeration_exact(found, theta, full(3), expected_sequences(3, 3, full(3)))


def test_batched_gradients_come_from_a_replay_when_most_guessed_rows_were_infeasible(make_param):
    theta = make_param(4, 3, seed=64)
    calls = []
    inner = tree_episode(theta, full(3), batched=True, stop=2)

    def episode(batch_size):
        calls.append((batch_size, torch.is_grad_enabled()))
        return inner(batch_size)

    report = check_reinforce(episode, {"theta": theta}, batched=True, finite_differences="none")
    # Round 0, the whole guess (81 rows for 31 sequences), then the 31 sequences alone, with gradient.
    assert report.num_sequences == 31
    assert calls == [(1, False), (81, True), (31, True)]
    assert report.passes == 3 and report.rows_run == 113
    sequential = check_reinforce(tree_episode(theta, full(3), batched=False, stop=2), {"theta": theta})
    for batched_param, sequential_param in zip(report.parameters, sequential.parameters):
        torch.testing.assert_close(batched_param.target, sequential_param.target, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(batched_param.estimate, sequential_param.estimate, rtol=1e-12, atol=1e-14)


def test_batched_replay_of_every_sequence_must_reproduce_its_outputs(make_param):
    from reinforce_check import NondeterministicEpisodeError

    theta = make_param(4, 3, seed=65)
    calls = []
    inner = tree_episode(theta, full(3), batched=True, stop=2)

    def episode(batch_size):
        calls.append(batch_size)
        objective, loss = inner(batch_size)
        # From the third call on (the replay that gives the gradients), outputs change.
        return objective + (len(calls) >= 3), loss

    with pytest.raises(NondeterministicEpisodeError, match="keeps state between runs"):
        check_reinforce(episode, {"theta": theta}, batched=True)


@pytest.mark.parametrize("batched", [False, True], ids=["sequential", "batched"])
def test_a_call_with_more_decisions_than_the_python_path_takes_is_enumerated_exactly(make_param, batched):
    # 70 decisions per episode in one torch.multinomial call: a sequential pass decides it with
    # tensor operations. Two decisions branch; the others have a single feasible action.
    theta = make_param(2, 2, seed=71)
    forced = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(68, 2)

    def run(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.cat([torch.softmax(theta, -1), forced]).repeat(rows, 1)
        actions = torch.multinomial(probs, 1).view(rows, 70)
        log_prob = torch.log(probs.gather(1, actions.reshape(-1, 1))).view(rows, 70).sum(1)
        reward = actions[:, :2].double().sum(1)
        return reward, -log_prob * reward

    episode = run if batched else (lambda: tuple(value[0] for value in run(1)))
    report = check_reinforce(episode, {"theta": theta}, batched=batched)
    p = torch.softmax(theta.detach(), -1)[:, 1]
    assert report.num_sequences == 4
    assert report.total_probability == pytest.approx(1.0, abs=1e-12)
    assert report.objective == pytest.approx(float(p.sum()), rel=1e-12)
